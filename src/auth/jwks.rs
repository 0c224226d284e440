//! Background JWKS refresh, and on-demand refetch for unknown key ids.
//!
//! One [`JwksRefresher`] task per `jwks_url` issuer owns every fetch of that
//! issuer's JWKS: at start, every `jwks_refresh`, after a failure with a
//! backoff, and when the request path asks for one because a token names an
//! unknown `kid`. Those requests go through `Refetch`:
//!
//! * **throttled** — at most one new request per `jwks_min_refetch`, so a
//!   flood of tokens with made-up `kid`s costs at most one fetch per period;
//! * **single-flight** — a request made while another is queued or in flight
//!   joins it instead of asking again, so N concurrent requests for the same
//!   new key cause one fetch, and all of them see its outcome;
//! * **bounded** — a request waits at most a fixed time for the outcome.
//!
//! A failed fetch (connect error, timeout, non-2xx, over 1 MiB, not a JWKS,
//! no usable key) leaves the last good set in place and is counted; it is
//! logged with the issuer's name and the reason, never key material.

use std::error::Error as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::keys::{IssuerKeys, KeySet};
use crate::config::model::{IssuerConfig, KeySource};

/// Timeout of one JWKS fetch (connect, headers and body).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document accepted.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// How long a request waits for the refetch it asked for.
pub const REFETCH_WAIT: Duration = Duration::from_secs(2);
/// First retry delay after a failed fetch; doubles up to the issuer's
/// `min(jwks_refresh, jwks_min_refetch)` (at least this).
pub const RETRY_BASE: Duration = Duration::from_secs(1);

// === impl Refetch ===

/// The request path's side of on-demand refetches (lives in [`IssuerKeys`]).
///
/// Requests are numbered: `requested` is the number of the latest request,
/// and `done` publishes the highest number covered by a completed fetch (a
/// fetch covers the requests made before it started). A request whose
/// predecessor is still uncovered joins it.
pub(crate) struct Refetch {
    state: Mutex<RefetchState>,
    /// Wakes the refresher; a permit is stored if it is busy fetching.
    wake: Notify,
    done: watch::Sender<u64>,
}

struct RefetchState {
    requested: u64,
    last_request: Option<Instant>,
}

/// What became of a refetch request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefetchOutcome {
    /// A fetch covering the request completed (successfully or not).
    Completed,
    /// Refused: the previous request was less than `jwks_min_refetch` ago.
    Throttled,
    /// No fetch completed within the wait bound.
    TimedOut,
}

impl Refetch {
    pub(crate) fn new() -> Refetch {
        Refetch {
            state: Mutex::new(RefetchState {
                requested: 0,
                last_request: None,
            }),
            wake: Notify::new(),
            done: watch::Sender::new(0),
        }
    }

    /// Asks the refresher for a fetch and waits (at most `wait`) until one
    /// that started after this request has completed.
    pub(crate) async fn request(&self, min_interval: Duration, wait: Duration) -> RefetchOutcome {
        let mut done = self.done.subscribe();
        let target = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.requested > *done.borrow_and_update() {
                // A request is queued or in flight: join it.
                state.requested
            } else {
                let now = Instant::now();
                if state
                    .last_request
                    .is_some_and(|last| now.saturating_duration_since(last) < min_interval)
                {
                    return RefetchOutcome::Throttled;
                }
                state.requested += 1;
                state.last_request = Some(now);
                self.wake.notify_one();
                state.requested
            }
        };
        let completed = tokio::time::timeout(wait, done.wait_for(|&covered| covered >= target))
            .await
            .is_ok_and(|r| r.is_ok());
        if completed {
            RefetchOutcome::Completed
        } else {
            RefetchOutcome::TimedOut
        }
    }

    /// Refresher: a fetch starts; returns the request number it covers.
    fn begin(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .requested
    }

    /// Refresher: the fetch that covers requests up to `covered` completed.
    fn finish(&self, covered: u64) {
        self.done.send_if_modified(|done| {
            let newer = covered > *done;
            if newer {
                *done = covered;
            }
            newer
        });
    }

    /// Whether a request is waiting for a fetch.
    fn pending(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.requested > *self.done.borrow()
    }
}

// === impl JwksRefresher ===

/// The refresh loop of one `jwks_url` issuer. Build with
/// [`JwksRefresher::new`], then spawn [`JwksRefresher::run`].
pub struct JwksRefresher {
    keys: Arc<IssuerKeys>,
    url: String,
    refresh: Duration,
    retry_cap: Duration,
    client: Result<reqwest::Client, String>,
}

impl std::fmt::Debug for JwksRefresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksRefresher")
            .field("issuer", &self.keys.name())
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl JwksRefresher {
    /// The refresher for `issuer`, or `None` unless its keys come from a
    /// `jwks_url`.
    pub fn new(issuer: &IssuerConfig, keys: Arc<IssuerKeys>) -> Option<JwksRefresher> {
        let KeySource::JwksUrl(url) = &issuer.keys else {
            return None;
        };
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {}", describe(&e)));
        let refresh = issuer.jwks_refresh.max(RETRY_BASE);
        Some(JwksRefresher {
            keys,
            url: url.clone(),
            refresh,
            retry_cap: refresh.min(issuer.jwks_min_refetch).max(RETRY_BASE),
            client,
        })
    }

    /// The issuer's live keys.
    pub fn keys(&self) -> &Arc<IssuerKeys> {
        &self.keys
    }

    /// Fetches at once, then every `jwks_refresh` (sooner, with backoff,
    /// after a failure) and whenever the request path asks. Never returns;
    /// cancel by dropping (or aborting its task) — it holds no lock across an
    /// await, so it can be dropped at any point.
    pub async fn run(self) {
        let mut failures: u32 = 0;
        loop {
            let covered = self.keys.refetch.begin();
            let ok = self.refresh_once().await.is_ok();
            self.keys.refetch.finish(covered);
            let delay = if ok {
                failures = 0;
                self.refresh
            } else {
                failures = failures.saturating_add(1);
                RETRY_BASE
                    .saturating_mul(1 << failures.saturating_sub(1).min(16))
                    .min(self.retry_cap)
            };
            let now = Instant::now();
            let next = now.checked_add(delay).unwrap_or(now);
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(next) => break,
                    () = self.keys.refetch.wake.notified() => {
                        if self.keys.refetch.pending() {
                            break;
                        }
                    }
                }
            }
        }
    }

    /// One fetch: on success the new set replaces the current one; on
    /// failure the current set stays. Either way it is counted, and a failure
    /// is logged at warn. Returns the number of usable keys, or the reason.
    pub async fn refresh_once(&self) -> Result<usize, String> {
        self.keys.record_attempt();
        let outcome = self.fetch().await.and_then(|body| {
            let set = KeySet::from_jwks_json(&body)?;
            if set.is_empty() {
                return Err(format!(
                    "JWKS has no usable key ({} skipped)",
                    set.skipped()
                ));
            }
            Ok(set)
        });
        match outcome {
            Ok(set) => {
                let (count, skipped) = (set.len(), set.skipped());
                let changed = self.keys.install(set);
                tracing::debug!(
                    issuer = %self.keys.name(),
                    keys = count,
                    skipped,
                    changed,
                    "JWKS refreshed"
                );
                if changed && skipped > 0 {
                    tracing::info!(
                        issuer = %self.keys.name(),
                        skipped,
                        "JWKS has keys the gateway cannot use"
                    );
                }
                Ok(count)
            }
            Err(reason) => {
                self.keys.record_failure();
                tracing::warn!(
                    issuer = %self.keys.name(),
                    reason = %reason,
                    keeping_previous = self.keys.current().is_some(),
                    "JWKS refresh failed"
                );
                Err(reason)
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<u8>, String> {
        let client = self.client.as_ref().map_err(Clone::clone)?;
        let mut response = client
            .get(&self.url)
            .header(
                reqwest::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("JWKS endpoint answered HTTP {}", status.as_u16()));
        }
        let too_large = || format!("JWKS larger than {MAX_JWKS_BYTES} bytes");
        if response
            .content_length()
            .is_some_and(|len| len > MAX_JWKS_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// A reqwest error as text: its kind and the causes (connection refused,
/// certificate errors, ...), without the URL.
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_body() || error.is_decode() {
        "reading the body failed"
    } else {
        "request failed"
    };
    let mut text = kind.to_owned();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
