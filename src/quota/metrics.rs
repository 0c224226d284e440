//! Metrics of quotas and of the Redis cluster link.
//!
//! They live in a registry of their own, carried from state to state across
//! reloads (so counters never restart) and merged into `/metrics` by
//! [`crate::metrics::Metrics::render`]. A state built on its own (`explain`,
//! benchmarks) gets a fresh, unscraped set.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Redis round trips on loopback are tens of microseconds; a timeout is
/// tens of milliseconds.
const REDIS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

pub struct QuotaMetrics {
    registry: Registry,
    /// `route`, `outcome` (`allowed`, `limited`, `unavailable`).
    pub decisions: IntCounterVec,
    /// Decisions made in-process because Redis failed (`on_redis_error = "local"`).
    pub fallbacks: IntCounter,
    /// `op` (`quota`, `publish`).
    pub redis_duration: HistogramVec,
    /// `op` (`quota`, `publish`, `subscribe`).
    pub redis_errors: IntCounterVec,
    /// `direction` (`sent`, `received`).
    pub invalidations: IntCounterVec,
    pub resubscriptions: IntCounter,
    pub subscribed: IntGauge,
}

impl QuotaMetrics {
    pub fn new() -> QuotaMetrics {
        // Names and labels are constants: registration cannot fail, except
        // by a programming error that every test run would show at once.
        Self::try_new().unwrap_or_else(|e| panic!("quota metrics: {e}"))
    }

    fn try_new() -> prometheus::Result<QuotaMetrics> {
        let registry = Registry::new();
        let decisions = IntCounterVec::new(
            Opts::new(
                "portcullis_quota_decisions_total",
                "Quota decisions by route and outcome (allowed, limited, unavailable).",
            ),
            &["route", "outcome"],
        )?;
        let fallbacks = IntCounter::new(
            "portcullis_quota_fallbacks_total",
            "Quota decisions counted in-process because Redis failed (on_redis_error = \"local\").",
        )?;
        let redis_duration = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_redis_duration_seconds",
                "Redis calls by operation (quota, publish), successful or not.",
            )
            .buckets(REDIS_BUCKETS.to_vec()),
            &["op"],
        )?;
        let redis_errors = IntCounterVec::new(
            Opts::new(
                "portcullis_redis_errors_total",
                "Failed or timed-out Redis calls by operation (quota, publish, subscribe).",
            ),
            &["op"],
        )?;
        let invalidations = IntCounterVec::new(
            Opts::new(
                "portcullis_cluster_invalidations_total",
                "Client-metadata invalidations published to (sent) or applied from (received) the other replicas.",
            ),
            &["direction"],
        )?;
        let resubscriptions = IntCounter::new(
            "portcullis_cluster_resubscriptions_total",
            "Times the invalidation channel was subscribed again after a loss; each drops the whole client cache once.",
        )?;
        let subscribed = IntGauge::new(
            "portcullis_cluster_subscribed",
            "1 while the invalidation channel is subscribed.",
        )?;
        registry.register(Box::new(decisions.clone()))?;
        registry.register(Box::new(fallbacks.clone()))?;
        registry.register(Box::new(redis_duration.clone()))?;
        registry.register(Box::new(redis_errors.clone()))?;
        registry.register(Box::new(invalidations.clone()))?;
        registry.register(Box::new(resubscriptions.clone()))?;
        registry.register(Box::new(subscribed.clone()))?;
        Ok(QuotaMetrics {
            registry,
            decisions,
            fallbacks,
            redis_duration,
            redis_errors,
            invalidations,
            resubscriptions,
            subscribed,
        })
    }

    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }
}

impl Default for QuotaMetrics {
    fn default() -> Self {
        Self::new()
    }
}
