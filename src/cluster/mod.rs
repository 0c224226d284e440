//! The link to Redis that replicas share (`[cluster]`): quota decisions and
//! client-metadata invalidations. Nothing else in the gateway talks to Redis.
//!
//! * Quotas: one `EVALSHA` per request of a GCRA script that reads Redis's own
//!   clock, so every replica decides against one counter and one time.
//! * Invalidations: published on `{key_prefix}invalidate`; [`sync`] keeps a
//!   subscription and applies what other replicas publish.
//!
//! The connection is pingora-independent: a `redis` `ConnectionManager`
//! (multiplexed, reconnecting with backoff), made on first use inside the
//! runtime. No call waits longer than `timeout_ms`; after a failure, calls
//! skip Redis for [`RETRY_AFTER_FAILURE`] (the caller applies
//! `on_redis_error` at once) and then try again, so a Redis that comes back
//! is used again within a second.

pub mod sync;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, Script};

use crate::config::model::ClusterConfig;
use crate::quota::gcra::{Decision, Gcra};
use crate::quota::metrics::QuotaMetrics;

/// After a failed call, Redis is not asked again for this long.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(500);
/// A connection attempt (TCP, TLS, AUTH) may take this long; no request
/// waits for it beyond `timeout_ms`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const MICROSECOND: Duration = Duration::from_micros(1);

/// GCRA in microseconds of Redis's clock. `KEYS[1]` the key; `ARGV[1]` the
/// emission interval, `ARGV[2]` the tolerance. One integer comes back (no
/// array to allocate and parse): when admitted, how far ahead of now the new
/// TAT is (at least one interval, so > 0); when refused, minus the wait
/// until admission (< 0). The key expires when its bucket would be full
/// again.
const GCRA_SCRIPT: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - tolerance
if now < allow_at then
  return now - allow_at
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return new_tat - now
"#;

/// Why Redis gave no decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisFailure {
    /// A recent call failed: not tried (see [`RETRY_AFTER_FAILURE`]).
    Resting,
    Timeout,
    Error,
}

/// One `[cluster]` link.
pub struct Cluster {
    pub config: ClusterConfig,
    client: redis::Client,
    /// The connection quota decisions use. Its driver task lives on the
    /// runtime that made it, and every call from another runtime costs two
    /// cross-thread wake-ups (measured: 2.5 extra syscalls and ~8 µs per
    /// request), so it is made on the proxy's runtime ([`Cluster::warm_up`]
    /// from the proxy service's start, or the first request).
    decide_conn: OnceLock<ConnectionManager>,
    /// Publishing (admin endpoints, writes) uses a connection of its own.
    publish_conn: OnceLock<ConnectionManager>,
    script: Script,
    /// Identifies this process's messages on the channel.
    replica: String,
    channel: String,
    /// Monotonic µs before which Redis is not tried (0: try).
    resting_until: AtomicU64,
    pub metrics: Arc<QuotaMetrics>,
    /// `portcullis_redis_duration_seconds{op="quota"}`, resolved once.
    quota_duration: prometheus::Histogram,
}

impl Cluster {
    /// A link for `config` (validated: the URL parses). Nothing connects
    /// until the first call.
    pub fn new(config: ClusterConfig, metrics: Arc<QuotaMetrics>) -> Result<Cluster, String> {
        let client = client(&config)?;
        Ok(Cluster {
            channel: format!("{}invalidate", config.key_prefix),
            client,
            decide_conn: OnceLock::new(),
            publish_conn: OnceLock::new(),
            script: Script::new(GCRA_SCRIPT),
            replica: hex::encode(rand::random::<[u8; 8]>()),
            resting_until: AtomicU64::new(0),
            quota_duration: metrics.redis_duration.with_label_values(&["quota"]),
            config,
            metrics,
        })
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// One GCRA decision in Redis (`gcra` in microseconds).
    pub async fn decide(&self, key: &str, gcra: &Gcra) -> Result<Decision, RedisFailure> {
        let mut conn = self.connection(&self.decide_conn, "quota")?;
        let started = Instant::now();
        let mut invocation = self.script.key(key);
        invocation.arg(gcra.interval).arg(gcra.tolerance);
        let call = invocation.invoke_async::<i64>(&mut conn);
        let answer = crate::timer::within(self.config.timeout, call).await;
        self.quota_duration.observe(started.elapsed().as_secs_f64());
        match answer {
            Ok(Ok(answer)) => Ok(read_answer(gcra, answer)),
            Ok(Err(e)) => Err(self.failed("quota", RedisFailure::Error, &e.to_string())),
            Err(_) => Err(self.failed("quota", RedisFailure::Timeout, "timed out")),
        }
    }

    /// Publish `message` on the invalidation channel (bounded by `timeout_ms`).
    pub async fn publish(&self, message: &str) -> Result<(), RedisFailure> {
        let mut conn = self.connection(&self.publish_conn, "publish")?;
        let started = Instant::now();
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(&self.channel).arg(message);
        let call = cmd.query_async::<i64>(&mut conn);
        let answer = crate::timer::within(self.config.timeout, call).await;
        self.observe("publish", started);
        match answer {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.failed("publish", RedisFailure::Error, &e.to_string())),
            Err(_) => Err(self.failed("publish", RedisFailure::Timeout, "timed out")),
        }
    }

    /// Connect the decision connection now, on the calling runtime (a PING
    /// through it), so that the first request does not pay for TCP, TLS and
    /// AUTH within `timeout_ms`. Failures are left for the request path.
    pub async fn warm_up(&self) {
        let Ok(mut conn) = self.connection(&self.decide_conn, "quota") else {
            return;
        };
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(CONNECT_TIMEOUT, ping).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "redis not reachable yet"),
            Err(_) => tracing::debug!("redis not reachable yet: timed out"),
        }
    }

    /// The shared connection, unless Redis is resting after a failure.
    fn connection(
        &self,
        slot: &OnceLock<ConnectionManager>,
        op: &str,
    ) -> Result<ConnectionManager, RedisFailure> {
        let until = self.resting_until.load(Ordering::Relaxed);
        if until != 0 && monotonic_us() < until {
            return Err(RedisFailure::Resting);
        }
        if let Some(m) = slot.get() {
            return Ok(m.clone());
        }
        // Made inside the runtime (the manager spawns its reconnect task);
        // a race makes two lazy managers and keeps one, which is harmless.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.config.timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        match ConnectionManager::new_lazy_with_config(self.client.clone(), config) {
            Ok(m) => Ok(slot.get_or_init(|| m).clone()),
            Err(e) => Err(self.failed(op, RedisFailure::Error, &e.to_string())),
        }
    }

    fn observe(&self, op: &str, started: Instant) {
        self.metrics
            .redis_duration
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
    }

    fn failed(&self, op: &str, failure: RedisFailure, detail: &str) -> RedisFailure {
        self.metrics.redis_errors.with_label_values(&[op]).inc();
        let rest = u64::try_from(RETRY_AFTER_FAILURE.as_micros()).unwrap_or(u64::MAX);
        self.resting_until
            .store(monotonic_us().saturating_add(rest), Ordering::Relaxed);
        static FAILED: crate::edge::throttle::LogThrottle =
            crate::edge::throttle::LogThrottle::new(Duration::from_secs(10));
        crate::warn_throttled!(
            FAILED,
            op,
            // Redis's error text names the command, never the password.
            error = %detail,
            "redis call failed; on_redis_error applies"
        );
        failure
    }
}

/// The decision the script's one integer stands for (see [`GCRA_SCRIPT`]).
fn read_answer(gcra: &Gcra, answer: i64) -> Decision {
    if answer > 0 {
        return gcra.admitted(answer.unsigned_abs(), MICROSECOND);
    }
    // Refused at `now < allow_at = tat + interval - tolerance`: the TAT is
    // `retry + tolerance - interval` ahead of now.
    let retry = answer.unsigned_abs();
    let ahead = retry
        .saturating_add(gcra.tolerance)
        .saturating_sub(gcra.interval);
    gcra.refused(retry, ahead, MICROSECOND)
}

/// A client for `config`: the URL with the password from the environment.
fn client(config: &ClusterConfig) -> Result<redis::Client, String> {
    let mut info = config
        .redis_url
        .as_str()
        .into_connection_info()
        .map_err(|e| format!("cluster.redis_url: not a usable Redis URL ({:?})", e.kind()))?;
    if let Some(secret) = &config.password {
        let password = std::str::from_utf8(&secret.0)
            .map_err(|_| "cluster.redis_password_env: the password must be UTF-8".to_string())?;
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    redis::Client::open(info)
        .map_err(|e| format!("cluster.redis_url: not a usable Redis URL ({:?})", e.kind()))
}

/// Microseconds on the quotas' monotonic clock (never 0).
fn monotonic_us() -> u64 {
    crate::quota::local::now_ns() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::QuotaLimit;

    /// The script's arithmetic, in Rust: what `read_answer` must agree with.
    fn script(gcra: &Gcra, tat: u64, now: u64) -> (i64, Option<u64>) {
        let tat = tat.max(now);
        let new_tat = tat + gcra.interval;
        let allow_at = new_tat.saturating_sub(gcra.tolerance);
        if now < allow_at {
            return (now as i64 - allow_at as i64, None);
        }
        ((new_tat - now) as i64, Some(new_tat))
    }

    #[test]
    fn the_one_integer_answer_means_what_the_in_process_decision_means() {
        let limit = QuotaLimit {
            rate_per_second: 4.0,
            burst: 3,
        };
        let gcra = Gcra::new(limit, 1e6);
        let mut tat_script = 0;
        let mut tat_local = 0;
        for step in 0..40u64 {
            let now = 1_000_000 + step * 70_000; // a request every 70 ms
            let (answer, stored) = script(&gcra, tat_script, now);
            let (expected, new) = gcra.decide(tat_local, now, MICROSECOND);
            assert_eq!(read_answer(&gcra, answer), expected, "step {step}");
            tat_script = stored.unwrap_or(tat_script);
            tat_local = new.unwrap_or(tat_local);
            // And a burst at once, now and then.
            if step % 10 == 0 {
                for _ in 0..3 {
                    let (answer, stored) = script(&gcra, tat_script, now);
                    let (expected, new) = gcra.decide(tat_local, now, MICROSECOND);
                    assert_eq!(read_answer(&gcra, answer), expected);
                    tat_script = stored.unwrap_or(tat_script);
                    tat_local = new.unwrap_or(tat_local);
                }
            }
        }
    }
}
