//! `ClientDirectory`: client metadata by client id, cached.
//!
//! A moka cache holds what the source said and when. A fresh entry answers
//! at once. A missing or expired one is (re)loaded under moka's per-key
//! compute lock, so N concurrent requests for the same client make one
//! source call and the rest reuse its answer. When the source fails, an
//! expired entry keeps serving for `stale_if_error`; with nothing usable the
//! gateway fails closed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::ops::compute::{CompResult, Op};

use super::meta::ids_equal;
use super::source::{HttpSource, Lookup, Source};
use crate::edge::throttle::LogThrottle;

/// While a source is down every request may hit it: one warning per
/// interval (with the count of those suppressed), the rest in the metrics.
static FAILURE_WARNINGS: LogThrottle = LogThrottle::new(Duration::from_secs(5));
static REFUSED_WARNINGS: LogThrottle = LogThrottle::new(Duration::from_secs(5));

/// Cache lifetimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub stale_if_error: Duration,
    pub max_entries: u64,
}

/// Held by value (a clone is an `Instant` and one `Arc` increment): no
/// second allocation per cached client.
#[derive(Debug, Clone)]
struct Entry {
    fetched: Instant,
    lookup: Lookup,
}

impl Entry {
    fn age(&self) -> Duration {
        self.fetched.elapsed()
    }
}

/// Counters for the metrics endpoint.
#[derive(Debug, Default)]
pub struct DirectoryStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub loads: AtomicU64,
    pub load_errors: AtomicU64,
    pub stale_serves: AtomicU64,
}

pub struct ClientDirectory {
    source: Source,
    policy: CachePolicy,
    /// Keyed by the client id the record's `client_id` shares (one copy
    /// of the string per cached client, see [`share_key`]).
    cache: Cache<Arc<str>, Entry>,
    /// When the last load of a client failed, and why: requests that were
    /// already waiting for that load share its failure instead of each
    /// asking the failing source again.
    failures: Cache<String, (Instant, String)>,
    pub stats: DirectoryStats,
}

/// Why a lookup could not be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFailure(pub String);

impl ClientDirectory {
    pub fn new(source: Source, policy: CachePolicy) -> ClientDirectory {
        let keep = policy.ttl.max(policy.negative_ttl) + policy.stale_if_error;
        let cache = Cache::builder()
            .max_capacity(policy.max_entries)
            .time_to_live(keep.max(Duration::from_millis(1)))
            .build();
        let failures = Cache::builder()
            .max_capacity(policy.max_entries)
            .time_to_live(Duration::from_secs(60))
            .build();
        ClientDirectory {
            source,
            policy,
            cache,
            failures,
            stats: DirectoryStats::default(),
        }
    }

    /// Apply the cache's pending maintenance, so [`entry_count`](Self::entry_count) is exact.
    pub async fn settle(&self) {
        self.cache.run_pending_tasks().await;
    }

    /// Number of cached clients (approximate, as moka counts).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    fn fresh(&self, entry: &Entry) -> bool {
        entry.age() < self.ttl(entry)
    }

    fn ttl(&self, entry: &Entry) -> Duration {
        match entry.lookup {
            Lookup::Found(_) => self.policy.ttl,
            Lookup::NotFound => self.policy.negative_ttl,
            // Never cached (see `load`); expired at once if it ever were.
            Lookup::Invalid(_) | Lookup::SourceRefused(_) => Duration::ZERO,
        }
    }

    /// The metadata of `client_id`.
    pub async fn lookup(&self, client_id: &str) -> Result<Lookup, SourceFailure> {
        let http = match &self.source {
            Source::Static(map) => {
                return Ok(map
                    .get(client_id)
                    .map(|m| Lookup::Found(m.clone()))
                    .unwrap_or(Lookup::NotFound))
            }
            Source::Http(http) => http,
        };
        if let Some(entry) = self.cache.get(client_id).await {
            if self.fresh(&entry) {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(entry.lookup);
            }
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        self.load(http, client_id).await
    }

    async fn load(&self, http: &HttpSource, client_id: &str) -> Result<Lookup, SourceFailure> {
        let arrival = Instant::now();
        let mut served_stale = false;
        let mut refused: Option<Lookup> = None;
        // The key is made only here, on a load, never on a hit.
        let key: Arc<str> = Arc::from(client_id);
        let result = self
            .cache
            .entry(Arc::clone(&key))
            .and_try_compute_with(|current| {
                let served_stale = &mut served_stale;
                let refused = &mut refused;
                async move {
                    if let Some(current) = &current {
                        // Someone else refreshed it while we waited for the key lock.
                        if self.fresh(current.value()) {
                            return Ok(Op::Nop);
                        }
                    }
                    // A load that failed while this request waited for the key
                    // lock answers it too: one source call per wave of requests.
                    let shared = self
                        .failures
                        .get(client_id)
                        .await
                        .filter(|(at, _)| *at >= arrival)
                        .map(|(_, reason)| reason);
                    let outcome = match shared {
                        Some(reason) => Err(reason),
                        None => {
                            self.stats.loads.fetch_add(1, Ordering::Relaxed);
                            http.fetch(client_id).await
                        }
                    };
                    match outcome {
                        // The source answered with nothing usable: refuse this
                        // request, cache nothing, and drop the older record so
                        // it can never be served stale in the answer's place.
                        Ok(lookup) if lookup.refusal().is_some() => {
                            let reason = lookup.refusal().unwrap_or_default();
                            crate::warn_throttled!(
                                REFUSED_WARNINGS,
                                client_id,
                                reason,
                                "client metadata answer refused"
                            );
                            *refused = Some(lookup);
                            Ok(if current.is_some() {
                                Op::Remove
                            } else {
                                Op::Nop
                            })
                        }
                        Ok(lookup) => {
                            // An entry kept by a refresh keeps its key.
                            let key = current.as_ref().map_or(&key, |c| c.key());
                            Ok(Op::Put(Entry {
                                fetched: Instant::now(),
                                lookup: share_key(lookup, key),
                            }))
                        }
                        Err(reason) => {
                            if shared_failure_is_new(&self.failures, client_id, arrival).await {
                                self.stats.load_errors.fetch_add(1, Ordering::Relaxed);
                                crate::warn_throttled!(
                                    FAILURE_WARNINGS,
                                    client_id,
                                    %reason,
                                    "client metadata load failed"
                                );
                                self.failures
                                    .insert(client_id.to_string(), (Instant::now(), reason.clone()))
                                    .await;
                            }
                            match current {
                                Some(cur) if cur.value().age() < self.stale_limit(cur.value()) => {
                                    *served_stale = true;
                                    Ok(Op::Nop)
                                }
                                _ => Err(SourceFailure(reason)),
                            }
                        }
                    }
                }
            })
            .await?;
        if served_stale {
            self.stats.stale_serves.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(lookup) = refused {
            return Ok(lookup);
        }
        match result {
            CompResult::Inserted(e) | CompResult::ReplacedWith(e) | CompResult::Unchanged(e) => {
                Ok(e.into_value().lookup)
            }
            CompResult::StillNone(_) | CompResult::Removed(_) => {
                Err(SourceFailure("no metadata entry after load".into()))
            }
        }
    }

    fn stale_limit(&self, entry: &Entry) -> Duration {
        match entry.lookup {
            Lookup::Invalid(_) | Lookup::SourceRefused(_) => Duration::ZERO,
            _ => self.ttl(entry) + self.policy.stale_if_error,
        }
    }

    /// Evict the client named `name` — by client id, or by the record id its
    /// metadata carries, compared as the IAM service compares them (see
    /// [`ids_equal`]). Returns how many entries went.
    pub async fn invalidate(&self, name: &str, case_insensitive: bool) -> usize {
        let mut keys: Vec<Arc<str>> = Vec::new();
        if self.cache.contains_key(name) {
            keys.push(Arc::from(name));
        }
        for (key, entry) in self.cache.iter() {
            if &**key == name {
                continue;
            }
            let by_key = ids_equal(&key, name, case_insensitive);
            let by_record = matches!(&entry.lookup, Lookup::Found(meta)
                if meta.id.as_deref().is_some_and(|id| ids_equal(id, name, case_insensitive)));
            if by_key || by_record {
                keys.push(key.as_ref().clone());
            }
        }
        for key in &keys {
            self.cache.invalidate(&**key).await;
        }
        keys.len()
    }

    /// Evict everything.
    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
    }
}

/// A found record names its client with the cache key's string itself, not
/// a second copy of it. The record was just read, so it is not shared yet.
fn share_key(lookup: Lookup, key: &Arc<str>) -> Lookup {
    match lookup {
        Lookup::Found(mut meta) => {
            if let Some(meta) = Arc::get_mut(&mut meta) {
                if meta.client_id == *key {
                    meta.client_id = Arc::clone(key);
                }
            }
            Lookup::Found(meta)
        }
        other => other,
    }
}

/// Whether the failure being handled is this request's own (not one it
/// shares from a load that finished while it waited).
async fn shared_failure_is_new(
    failures: &Cache<String, (Instant, String)>,
    client_id: &str,
    arrival: Instant,
) -> bool {
    failures
        .get(client_id)
        .await
        .is_none_or(|(at, _)| at < arrival)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::meta::{from_json, FieldPointers};

    fn found(client_id: &str) -> Lookup {
        let record = serde_json::json!({"clientId": client_id, "enabled": true});
        Lookup::Found(Arc::new(
            from_json(client_id, &record, &FieldPointers::default()).unwrap(),
        ))
    }

    #[test]
    fn a_loaded_record_shares_the_cache_key_string() {
        let key: Arc<str> = Arc::from("c1");
        let Lookup::Found(meta) = share_key(found("c1"), &key) else {
            panic!("still found");
        };
        assert!(Arc::ptr_eq(&meta.client_id, &key));
        // Another spelling (a UUID in other case) keeps its own string.
        let uuid = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let upper: Arc<str> = Arc::from(uuid.to_uppercase());
        let Lookup::Found(meta) = share_key(found(uuid), &upper) else {
            panic!("still found");
        };
        assert_eq!(&*meta.client_id, uuid);
        assert_eq!(share_key(Lookup::NotFound, &key), Lookup::NotFound);
    }
}
