//! The gateway's Prometheus metrics, in a registry of its own.
//!
//! Request metrics are recorded as requests finish. Key-set and client-cache
//! metrics are read from the live state when `/metrics` is scraped: their
//! sources keep plain atomic counters, and the difference since the last
//! scrape is added here, so a reload that replaces a source never makes a
//! counter go backwards. Label values are bounded: route names from the
//! config, issuer names, error codes — never paths or client ids.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::proxy::state::GatewayState;

/// Latency buckets in seconds: a gateway's answers are sub-millisecond, an
/// upstream's up to its read timeout.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    refusals: IntCounterVec,
    redactions: IntCounterVec,
    jwks_refreshes: IntCounterVec,
    jwks_age: prometheus::GaugeVec,
    jwks_keys: IntGaugeVec,
    issuer_ready: IntGaugeVec,
    introspection_requests: IntCounterVec,
    introspection_cache_hits: IntCounterVec,
    cache_requests: IntCounterVec,
    cache_loads: IntCounterVec,
    cache_stale: IntCounter,
    cache_entries: IntGauge,
    reloads: IntCounterVec,
    config_info: IntGaugeVec,
    token_cache_entries: IntGauge,
    signature_checks: IntCounter,
    connections_refused: IntCounterVec,
    connections_open: IntGauge,
    /// Raw source counters as seen at the previous scrape, by series.
    last_seen: Mutex<HashMap<String, u64>>,
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<HistogramVec> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
        labels,
    )?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

/// One finished request, as the metrics see it.
pub struct RequestRecord<'a> {
    pub route: &'a str,
    pub method: &'a str,
    pub status: u16,
    /// The refusal code when the gateway refused.
    pub refusal: Option<&'a str>,
    pub duration_seconds: f64,
    pub upstream_seconds: Option<f64>,
    /// Members removed from the answer (`[routes.response] redact`).
    pub redacted: usize,
    /// The route's series, once looked up (`None`: looked up by label).
    pub series: Option<&'a RouteSeries>,
}

/// Methods with a label of their own; any other is `other`.
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
/// Status classes, as labelled.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];
/// Label combinations of `portcullis_requests_total` for one route:
/// method (7 and `other`) × class × decision.
const REQUEST_SERIES: usize = (METHODS.len() + 1) * CLASSES.len() * 2;

/// The per-request series of one route (same index as `config.routes`, in
/// the live state), each looked up by its label values on the route's first
/// request that needs it and kept: a request then costs no label hashing
/// and no lookup under the metric's lock. Looking up on first use (not at
/// state build) keeps `/metrics` as it was: a series appears once counted.
pub struct RouteSeries {
    requests: [OnceLock<IntCounter>; REQUEST_SERIES],
    duration: OnceLock<Histogram>,
    upstream: OnceLock<Histogram>,
}

impl RouteSeries {
    pub fn new() -> RouteSeries {
        RouteSeries {
            requests: std::array::from_fn(|_| OnceLock::new()),
            duration: OnceLock::new(),
            upstream: OnceLock::new(),
        }
    }
}

impl Default for RouteSeries {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let r = Registry::new();
        let m = Metrics {
            requests: counter_vec(
                &r,
                "portcullis_requests_total",
                "Requests by route, method, status class and decision.",
                &["route", "method", "status_class", "decision"],
            )?,
            request_duration: histogram_vec(
                &r,
                "portcullis_request_duration_seconds",
                "Time from request head to the end of the response.",
                &["route"],
            )?,
            upstream_duration: histogram_vec(
                &r,
                "portcullis_upstream_duration_seconds",
                "Time from choosing the upstream to the end of the response.",
                &["route"],
            )?,
            refusals: counter_vec(
                &r,
                "portcullis_refusals_total",
                "Requests the gateway refused, by route and reason (error code).",
                &["route", "reason"],
            )?,
            redactions: counter_vec(
                &r,
                "portcullis_response_redactions_total",
                "Members removed from answers by [routes.response] redact, by route.",
                &["route"],
            )?,
            jwks_refreshes: counter_vec(
                &r,
                "portcullis_jwks_refreshes_total",
                "JWKS fetches per issuer by result.",
                &["issuer", "result"],
            )?,
            jwks_age: {
                let g = prometheus::GaugeVec::new(
                    Opts::new(
                        "portcullis_jwks_age_seconds",
                        "Seconds since the issuer's key set was last loaded successfully.",
                    ),
                    &["issuer"],
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            jwks_keys: gauge_vec(
                &r,
                "portcullis_jwks_keys",
                "Usable verification keys per issuer.",
                &["issuer"],
            )?,
            issuer_ready: gauge_vec(
                &r,
                "portcullis_issuer_ready",
                "1 when the issuer can decide tokens (a key set loaded, or introspection), else 0.",
                &["issuer"],
            )?,
            introspection_requests: counter_vec(
                &r,
                "portcullis_introspection_requests_total",
                "RFC 7662 introspection calls per issuer by result: active, inactive, refused (active but expired, not yet valid, another iss or aud), error (no usable answer).",
                &["issuer", "result"],
            )?,
            introspection_cache_hits: counter_vec(
                &r,
                "portcullis_introspection_cache_hits_total",
                "Opaque tokens decided from the introspection cache, per issuer.",
                &["issuer"],
            )?,
            cache_requests: counter_vec(
                &r,
                "portcullis_client_cache_requests_total",
                "Client metadata lookups by cache result.",
                &["result"],
            )?,
            cache_loads: counter_vec(
                &r,
                "portcullis_client_cache_loads_total",
                "Client metadata loads from the source by result.",
                &["result"],
            )?,
            cache_stale: {
                let c = IntCounter::new(
                    "portcullis_client_cache_stale_serves_total",
                    "Expired client metadata served because the source failed.",
                )?;
                r.register(Box::new(c.clone()))?;
                c
            },
            cache_entries: {
                let g = IntGauge::new(
                    "portcullis_client_cache_entries",
                    "Client metadata entries in the cache.",
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            reloads: counter_vec(
                &r,
                "portcullis_config_reloads_total",
                "Configuration reloads by result.",
                &["result"],
            )?,
            config_info: gauge_vec(
                &r,
                "portcullis_config_info",
                "The loaded configuration (hash of the file), always 1.",
                &["hash"],
            )?,
            token_cache_entries: {
                let g = IntGauge::new(
                    "portcullis_token_cache_entries",
                    "Verified tokens in the token cache (approximate).",
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            signature_checks: {
                let c = IntCounter::new(
                    "portcullis_token_signature_checks_total",
                    "Token signatures verified (cache misses).",
                )?;
                r.register(Box::new(c.clone()))?;
                c
            },
            connections_refused: counter_vec(
                &r,
                "portcullis_connections_refused_total",
                "Client connections closed unread because a connection cap was reached, by cap.",
                &["reason"],
            )?,
            connections_open: {
                let g = IntGauge::new(
                    "portcullis_connections_open",
                    "Client connections open on the proxy listeners.",
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            last_seen: Mutex::new(HashMap::new()),
            registry: {
                let build = gauge_vec(
                    &r,
                    "portcullis_build_info",
                    "Build of the running gateway, always 1.",
                    &["version"],
                )?;
                build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
                r
            },
        };
        Ok(m)
    }

    /// Count one finished request.
    pub fn record(&self, r: &RequestRecord<'_>) {
        let class_index = match r.status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            500..=599 => 4,
            _ => 5,
        };
        let class = CLASSES[class_index];
        let (decision_index, decision) = if r.refusal.is_some() {
            (1, "refuse")
        } else {
            (0, "allow")
        };
        let method_index = METHODS
            .iter()
            .position(|m| *m == r.method)
            .unwrap_or(METHODS.len());
        let method = METHODS.get(method_index).copied().unwrap_or("other");
        let requests = || {
            self.requests
                .with_label_values(&[r.route, method, class, decision])
        };
        let duration = || self.request_duration.with_label_values(&[r.route]);
        let upstream = || self.upstream_duration.with_label_values(&[r.route]);
        match r.series {
            Some(series) => {
                let index = (method_index * CLASSES.len() + class_index) * 2 + decision_index;
                match series.requests.get(index) {
                    Some(counter) => counter.get_or_init(requests).inc(),
                    None => requests().inc(),
                }
                series
                    .duration
                    .get_or_init(duration)
                    .observe(r.duration_seconds);
                if let Some(up) = r.upstream_seconds {
                    series.upstream.get_or_init(upstream).observe(up);
                }
            }
            None => {
                requests().inc();
                duration().observe(r.duration_seconds);
                if let Some(up) = r.upstream_seconds {
                    upstream().observe(up);
                }
            }
        }
        if let Some(reason) = r.refusal {
            self.refusals.with_label_values(&[r.route, reason]).inc();
        }
        if r.redacted > 0 {
            self.redactions
                .with_label_values(&[r.route])
                .inc_by(r.redacted as u64);
        }
    }

    /// Count a connection closed unread by a cap (`reason`: the cap's key).
    pub fn connection_refused(&self, reason: &str) {
        self.connections_refused.with_label_values(&[reason]).inc();
    }

    /// Count an open client connection until the returned value is dropped.
    pub fn connection_opened(&self) -> OpenConnection {
        self.connections_open.inc();
        OpenConnection(self.connections_open.clone())
    }

    pub fn reload(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
    }

    /// Mark `hash` as the loaded configuration.
    pub fn set_config(&self, hash: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[hash]).set(1);
    }

    /// Add what a source counter gained since the last scrape. `key` names
    /// the source object itself (its address), so a source replaced by a
    /// reload starts from a zero baseline and none of its counts are lost.
    fn advance(
        &self,
        seen: &mut HashMap<String, u64>,
        key: String,
        raw: u64,
        counter: &IntCounter,
    ) {
        let last = self
            .last_seen
            .lock()
            .ok()
            .and_then(|m| m.get(&key).copied())
            .unwrap_or(0);
        counter.inc_by(raw.saturating_sub(last));
        seen.insert(key, raw.max(last));
    }

    /// Read key-set and cache state from the live gateway.
    fn observe_state(&self, state: &GatewayState) {
        let now = SystemTime::now();
        // Baselines of the sources alive now; those of replaced ones are dropped.
        let mut seen = HashMap::new();
        for (i, issuer) in state.config.issuers.iter().enumerate() {
            let name = issuer.name.as_str();
            let Some(keys) = state.verifier.issuer_keys(i) else {
                continue;
            };
            let (ok, failed) = keys.refresh_counts();
            let id = Arc::as_ptr(keys) as usize;
            self.advance(
                &mut seen,
                format!("jwks_ok/{id:x}"),
                ok,
                &self.jwks_refreshes.with_label_values(&[name, "success"]),
            );
            self.advance(
                &mut seen,
                format!("jwks_failed/{id:x}"),
                failed,
                &self.jwks_refreshes.with_label_values(&[name, "failure"]),
            );
            let set = keys.current();
            self.jwks_keys
                .with_label_values(&[name])
                .set(set.as_ref().map_or(0, |s| s.len() as i64));
            self.issuer_ready
                .with_label_values(&[name])
                .set(i64::from(state.verifier.issuer_ready(i)));
            if let Some(stats) = state.verifier.introspection_stats(i) {
                let verifier = Arc::as_ptr(&state.verifier) as usize;
                let calls = stats.calls();
                for (result, raw) in crate::auth::introspection::RESULTS.iter().zip(calls) {
                    self.advance(
                        &mut seen,
                        format!("introspection/{result}/{i}/{verifier:x}"),
                        raw,
                        &self
                            .introspection_requests
                            .with_label_values(&[name, result]),
                    );
                }
                self.advance(
                    &mut seen,
                    format!("introspection/hit/{i}/{verifier:x}"),
                    stats.cache_hits.load(std::sync::atomic::Ordering::Relaxed),
                    &self.introspection_cache_hits.with_label_values(&[name]),
                );
            }
            if let Some(age) = keys.last_success().and_then(|t| now.duration_since(t).ok()) {
                self.jwks_age
                    .with_label_values(&[name])
                    .set(age.as_secs_f64());
            }
        }
        self.token_cache_entries
            .set(state.verifier.cached_tokens_blocking() as i64);
        self.advance(
            &mut seen,
            format!(
                "signature_checks/{:x}",
                Arc::as_ptr(&state.verifier) as usize
            ),
            state.verifier.signature_checks(),
            &self.signature_checks,
        );
        if let Some(dir) = &state.clients {
            use std::sync::atomic::Ordering::Relaxed;
            let s = &dir.stats;
            for (key, raw, counter) in [
                (
                    "hit",
                    s.hits.load(Relaxed),
                    self.cache_requests.with_label_values(&["hit"]),
                ),
                (
                    "miss",
                    s.misses.load(Relaxed),
                    self.cache_requests.with_label_values(&["miss"]),
                ),
                (
                    "load_ok",
                    s.loads
                        .load(Relaxed)
                        .saturating_sub(s.load_errors.load(Relaxed)),
                    self.cache_loads.with_label_values(&["success"]),
                ),
                (
                    "load_error",
                    s.load_errors.load(Relaxed),
                    self.cache_loads.with_label_values(&["error"]),
                ),
                (
                    "stale",
                    s.stale_serves.load(Relaxed),
                    self.cache_stale.clone(),
                ),
            ] {
                self.advance(
                    &mut seen,
                    format!("cache/{key}/{:x}", Arc::as_ptr(dir) as usize),
                    raw,
                    &counter,
                );
            }
            self.cache_entries.set(dir.entry_count() as i64);
        }
        if let Ok(mut last) = self.last_seen.lock() {
            *last = seen;
        }
    }

    /// The Prometheus text exposition of everything. Settle the client
    /// directory first (`ClientDirectory::settle`) for an exact cache size.
    pub fn render(&self, state: &GatewayState) -> Vec<u8> {
        self.observe_state(state);
        let mut families = self.registry.gather();
        // Quota and cluster metrics live with the quotas (they outlive reloads).
        families.extend(state.quotas.metrics.gather());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::with_capacity(8192);
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// An open connection in `portcullis_connections_open`.
pub struct OpenConnection(IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Methods outside the usual set share one label value (bounded cardinality).
#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(m: &Metrics) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&m.registry.gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    fn record(
        m: &Metrics,
        method: &str,
        status: u16,
        refusal: Option<&str>,
        series: Option<&RouteSeries>,
    ) {
        m.record(&RequestRecord {
            route: "r1",
            method,
            status,
            refusal,
            duration_seconds: 0.001,
            upstream_seconds: refusal.is_none().then_some(0.0005),
            redacted: 0,
            series,
        });
    }

    #[test]
    fn kept_route_series_count_the_same_series_as_a_label_lookup() {
        let m = Metrics::new().unwrap();
        let series = RouteSeries::new();
        // Nothing counted yet: no series for the route (as without the cache).
        assert!(!exposition(&m).contains("route=\"r1\""));
        record(&m, "GET", 200, None, Some(&series));
        record(&m, "GET", 200, None, None);
        record(&m, "GET", 204, None, Some(&series));
        record(&m, "BREW", 401, Some("missing_token"), Some(&series));
        record(&m, "PUT", 503, Some("upstream_unreachable"), Some(&series));
        let text = exposition(&m);
        for line in [
            "portcullis_requests_total{decision=\"allow\",method=\"GET\",route=\"r1\",status_class=\"2xx\"} 3",
            "portcullis_requests_total{decision=\"refuse\",method=\"other\",route=\"r1\",status_class=\"4xx\"} 1",
            "portcullis_requests_total{decision=\"refuse\",method=\"PUT\",route=\"r1\",status_class=\"5xx\"} 1",
            "portcullis_request_duration_seconds_count{route=\"r1\"} 5",
            "portcullis_upstream_duration_seconds_count{route=\"r1\"} 3",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
