//! Quotas (`[[quotas]]`, route key `quota`): how often a caller may come.
//!
//! A decision is GCRA ([`gcra`]) over one counter per quota and key value
//! (client id, subject or client IP): in-process ([`local`]) by default, in
//! Redis with `[cluster]` ([`crate::cluster`]) so that replicas share it.
//! The proxy asks after every head check and before reading the body, so a
//! request refused for any other reason never spends quota; `explain` only
//! describes the step.

pub mod gcra;
pub mod local;
pub mod metrics;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;

use crate::cluster::{Cluster, RedisFailure};
use crate::config::model::{ClusterConfig, OnRedisError, QuotaConfig, QuotaKey, QuotaLimit};
use crate::config::Config;
use crate::edge::throttle::LogThrottle;
use crate::error::{GatewayError, RateLimitHeaders};
use crate::pipeline::Progress;
use gcra::{Decision, Gcra};
use local::LocalStore;
use metrics::QuotaMetrics;

/// The key value of requests that lack the one a quota counts by (a token
/// without a client id, say): they share one bucket, so leaving the value
/// out never escapes the quota.
pub const MISSING_KEY: &str = "";

/// One quota, compiled.
struct Quota {
    config: Arc<QuotaConfig>,
    /// In nanoseconds (in-process) and microseconds (Redis).
    local_limit: Gcra,
    redis_limit: Gcra,
    overrides: HashMap<String, (Gcra, Gcra, QuotaLimit)>,
    store: Arc<LocalStore>,
    /// `{key_prefix}quota:{name}:{key}:` (with `[cluster]`).
    redis_prefix: String,
}

impl Quota {
    fn new(
        config: Arc<QuotaConfig>,
        store: Option<Arc<LocalStore>>,
        cluster: Option<&ClusterConfig>,
    ) -> Quota {
        let local_limit = Gcra::new(config.limit, 1e9);
        let redis_limit = Gcra::new(config.limit, 1e6);
        let overrides: HashMap<_, _> = config
            .overrides
            .iter()
            .map(|(k, l)| (k.clone(), (Gcra::new(*l, 1e9), Gcra::new(*l, 1e6), *l)))
            .collect();
        let longest = overrides
            .values()
            .map(|(l, _, _)| l.tolerance)
            .fold(local_limit.tolerance, u64::max);
        let store =
            store.unwrap_or_else(|| Arc::new(LocalStore::new(Duration::from_nanos(longest))));
        let redis_prefix = cluster.map_or_else(String::new, |c| {
            format!(
                "{}quota:{}:{}:",
                c.key_prefix,
                config.name,
                config.key.name()
            )
        });
        Quota {
            config,
            local_limit,
            redis_limit,
            overrides,
            store,
            redis_prefix,
        }
    }

    /// The limit for `value`: its override, or the quota's own.
    fn limits(&self, value: &str) -> (&Gcra, &Gcra, QuotaLimit) {
        match self.overrides.get(value) {
            Some((l, r, limit)) => (l, r, *limit),
            None => (&self.local_limit, &self.redis_limit, self.config.limit),
        }
    }
}

/// The outcome of a quota check, for the response headers.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub decision: Decision,
    /// `RateLimit-Policy` value.
    pub policy: String,
    /// `RateLimit` value.
    pub state: String,
}

impl Verdict {
    fn new(name: &str, limit: QuotaLimit, decision: Decision) -> Verdict {
        let window = (f64::from(limit.burst) / limit.rate_per_second)
            .ceil()
            .max(1.0);
        let mut policy = String::with_capacity(name.len() + 24);
        let _ = write!(policy, "\"{name}\";q={};w={window}", limit.burst);
        let mut state = String::with_capacity(name.len() + 24);
        let _ = write!(
            state,
            "\"{name}\";r={};t={}",
            decision.remaining,
            whole_seconds(decision.reset)
        );
        Verdict {
            decision,
            policy,
            state,
        }
    }

    /// `Retry-After`: whole seconds, rounded up, at least 1.
    pub fn retry_after_seconds(&self) -> u64 {
        whole_seconds(self.decision.retry_after).max(1)
    }
}

impl From<Refusal> for GatewayError {
    fn from(r: Refusal) -> GatewayError {
        match r {
            Refusal::Limited(v) => GatewayError::RateLimited(Box::new(RateLimitHeaders {
                retry_after: v.retry_after_seconds(),
                policy: v.policy,
                state: v.state,
            })),
            Refusal::Unavailable => GatewayError::QuotaUnavailable,
        }
    }
}

fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Why a request was not admitted by its quota.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// Over the quota: 429.
    Limited(Verdict),
    /// Redis could not decide and `on_redis_error = "deny"`: 503.
    Unavailable,
}

/// `portcullis_quota_decisions_total` of one route, resolved once per
/// config (no label lookup per request): allowed, limited, unavailable.
struct Outcomes([IntCounter; 3]);

/// Every quota of a config, with its counters.
pub struct Quotas {
    quotas: Vec<Quota>,
    /// Per route (same index as `config.routes`), for routes with a quota.
    outcomes: Vec<Option<Outcomes>>,
    cluster: Option<Arc<Cluster>>,
    pub metrics: Arc<QuotaMetrics>,
}

impl Quotas {
    /// The quotas of `config`. With `previous` (a reload), an unchanged
    /// quota keeps its counters, an unchanged `[cluster]` its connection,
    /// and the metrics carry on.
    pub fn build(config: &Config, previous: Option<&Quotas>) -> Quotas {
        let metrics = previous.map_or_else(|| Arc::new(QuotaMetrics::new()), |p| p.metrics.clone());
        let quotas = config
            .quotas
            .iter()
            .map(|q| {
                let kept = previous.and_then(|p| {
                    p.quotas
                        .iter()
                        .find(|old| *old.config == **q)
                        .map(|old| old.store.clone())
                });
                Quota::new(q.clone(), kept, config.cluster.as_ref())
            })
            .collect();
        let cluster = config.cluster.as_ref().and_then(|c| {
            let kept = previous
                .and_then(|p| p.cluster.as_ref())
                .filter(|old| old.config == *c)
                .cloned();
            kept.or_else(|| new_cluster(c, &metrics))
        });
        let outcomes = config
            .routes
            .iter()
            .map(|r| {
                r.quota.map(|_| {
                    let c = |outcome: &str| {
                        metrics
                            .decisions
                            .with_label_values(&[r.name.as_str(), outcome])
                    };
                    Outcomes([c("allowed"), c("limited"), c("unavailable")])
                })
            })
            .collect();
        Quotas {
            quotas,
            outcomes,
            cluster,
            metrics,
        }
    }

    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// Count one request of route `route` (an index into `config.routes`)
    /// against quota `index` for the caller `progress` identifies.
    pub async fn check(
        &self,
        index: usize,
        route: usize,
        progress: &Progress,
    ) -> Result<Verdict, Refusal> {
        let Some(quota) = self.quotas.get(index) else {
            return Err(Refusal::Unavailable);
        };
        let mut ip = String::new();
        let value = key_value(quota.config.key, progress, &mut ip);
        let (local, remote, limit) = quota.limits(value);
        let decision = match &self.cluster {
            None => quota.store.decide(value, local),
            Some(cluster) => {
                let mut key = String::with_capacity(quota.redis_prefix.len() + value.len());
                key.push_str(&quota.redis_prefix);
                key.push_str(value);
                match cluster.decide(&key, remote).await {
                    Ok(d) => d,
                    Err(failure) => match cluster.config.on_redis_error {
                        OnRedisError::Local => {
                            self.fell_back(failure);
                            quota.store.decide(value, local)
                        }
                        OnRedisError::Deny => {
                            self.count(route, 2);
                            return Err(Refusal::Unavailable);
                        }
                    },
                }
            }
        };
        let verdict = Verdict::new(&quota.config.name, limit, decision);
        if decision.allowed {
            self.count(route, 0);
            Ok(verdict)
        } else {
            self.count(route, 1);
            Err(Refusal::Limited(verdict))
        }
    }

    /// What `explain` shows for quota `index`: the quota, the key and the
    /// limit that would apply, without counting anything.
    pub fn describe(&self, index: usize, progress: &Progress) -> Option<String> {
        let quota = self.quotas.get(index)?;
        let mut ip = String::new();
        let value = key_value(quota.config.key, progress, &mut ip);
        let (_, _, limit) = quota.limits(value);
        Some(format!(
            "{:?}: {} {:?}, {}/s, burst {}{}, counted {} (explain spends none)",
            quota.config.name,
            quota.config.key.name(),
            value,
            limit.rate_per_second,
            limit.burst,
            if quota.config.overrides.contains_key(value) {
                " (override)"
            } else {
                ""
            },
            if self.cluster.is_some() {
                "in Redis ([cluster])"
            } else {
                "in-process"
            }
        ))
    }

    /// `outcome`: 0 allowed, 1 limited, 2 unavailable.
    fn count(&self, route: usize, outcome: usize) {
        if let Some(Some(Outcomes(counters))) = self.outcomes.get(route) {
            counters[outcome].inc();
        }
    }

    fn fell_back(&self, failure: RedisFailure) {
        static FALLBACK: LogThrottle = LogThrottle::new(Duration::from_secs(10));
        self.metrics.fallbacks.inc();
        crate::warn_throttled!(
            FALLBACK,
            reason = ?failure,
            "redis unavailable: quotas counted in-process (on_redis_error = \"local\")"
        );
    }
}

fn new_cluster(config: &ClusterConfig, metrics: &Arc<QuotaMetrics>) -> Option<Arc<Cluster>> {
    match Cluster::new(config.clone(), metrics.clone()) {
        Ok(c) => Some(Arc::new(c)),
        // Validation checked the URL; should it still not parse, quotas
        // stay in-process and say so.
        Err(e) => {
            tracing::error!(error = %e, "cluster disabled");
            None
        }
    }
}

/// The value a quota counts by; [`MISSING_KEY`] when the request has none.
fn key_value<'a>(key: QuotaKey, progress: &'a Progress, ip: &'a mut String) -> &'a str {
    match key {
        QuotaKey::Client => progress.client_id().unwrap_or(MISSING_KEY),
        QuotaKey::Subject => progress.subject().unwrap_or(MISSING_KEY),
        QuotaKey::Ip => match progress.client_ip {
            Some(addr) => {
                let _ = write!(ip, "{addr}");
                ip.as_str()
            }
            None => MISSING_KEY,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_follow_the_ietf_draft() {
        let limit = QuotaLimit {
            rate_per_second: 0.5,
            burst: 3,
        };
        let d = Decision {
            allowed: false,
            remaining: 0,
            retry_after: Duration::from_millis(1200),
            reset: Duration::from_millis(5500),
        };
        let v = Verdict::new("writes", limit, d);
        assert_eq!(v.policy, "\"writes\";q=3;w=6");
        assert_eq!(v.state, "\"writes\";r=0;t=6");
        assert_eq!(v.retry_after_seconds(), 2);
        let d = Decision {
            retry_after: Duration::ZERO,
            ..d
        };
        assert_eq!(Verdict::new("w", limit, d).retry_after_seconds(), 1);
    }
}
