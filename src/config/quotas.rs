//! `[[quotas]]` and `[cluster]`: raw → typed, with key paths in every error.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::model::{ClusterConfig, OnRedisError, QuotaConfig, QuotaKey, QuotaLimit};
use super::raw::{RawCluster, RawNumber, RawQuota};
use super::validate::{env_secret, Errors};

/// The highest rate a quota may name: beyond it the emission interval
/// (nanoseconds) loses its meaning, and no admin API takes that much.
const MAX_RATE: f64 = 1e9;
/// The largest burst: GCRA arithmetic stays far from overflow.
const MAX_BURST: i64 = 1_000_000_000;
/// The longest per-call Redis timeout.
const MAX_TIMEOUT_MS: i64 = 60_000;

/// The quotas, and name → index (`None` for an entry already reported
/// invalid, so routes naming it add no second error).
pub(super) fn quotas(
    raw: Vec<Option<RawQuota>>,
    errs: &mut Errors,
) -> (Vec<Arc<QuotaConfig>>, HashMap<String, Option<usize>>) {
    let mut quotas = Vec::new();
    let mut names: HashMap<String, Option<usize>> = HashMap::new();
    for (i, raw) in raw.into_iter().enumerate() {
        let Some(raw) = raw else { continue };
        let path = format!("quotas[{i}]");
        if names.contains_key(&raw.name) {
            errs.push(
                format!("{path}.name"),
                format!("duplicate quota name {:?}", raw.name),
            );
            continue;
        }
        let name = raw.name.clone();
        let valid = quota(raw, &path, errs).map(|q| {
            quotas.push(Arc::new(q));
            quotas.len() - 1
        });
        names.insert(name, valid);
    }
    (quotas, names)
}

fn quota(raw: RawQuota, path: &str, errs: &mut Errors) -> Option<QuotaConfig> {
    let before = errs.len();
    // The name travels in the RateLimit headers (a structured-field string)
    // and in Redis key names: keep it to a plain token.
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if raw.name.is_empty() || !raw.name.chars().all(plain) {
        errs.push(
            format!("{path}.name"),
            format!(
                "must be non-empty and only letters, digits, '_', '-' and '.', not {:?}",
                raw.name
            ),
        );
    }
    let key = match raw.key.as_deref().unwrap_or("client") {
        "client" => QuotaKey::Client,
        "subject" => QuotaKey::Subject,
        "ip" => QuotaKey::Ip,
        other => {
            errs.push(
                format!("{path}.key"),
                format!("must be \"client\", \"subject\" or \"ip\", not {other:?}"),
            );
            QuotaKey::Client
        }
    };
    let base = limit(raw.rate_per_second, raw.burst, path, errs);
    let mut overrides = HashMap::new();
    for (value, o) in raw.overrides {
        let p = format!("{path}.overrides.{value}");
        if let Some(l) = limit(o.rate_per_second, o.burst, &p, errs) {
            overrides.insert(value, l);
        }
    }
    if errs.len() != before {
        return None;
    }
    Some(QuotaConfig {
        name: raw.name,
        key,
        limit: base?,
        overrides,
    })
}

fn limit(rate: RawNumber, burst: Option<i64>, path: &str, errs: &mut Errors) -> Option<QuotaLimit> {
    let rate = rate.as_f64();
    let rate_ok = rate.is_finite() && rate > 0.0 && rate <= MAX_RATE;
    if !rate_ok {
        errs.push(
            format!("{path}.rate_per_second"),
            format!("must be a number above 0 and at most {MAX_RATE}, not {rate}"),
        );
    }
    // Default: the rate rounded up, at least 1 (config.md).
    let default_burst = if rate_ok {
        rate.ceil().max(1.0) as i64
    } else {
        1
    };
    let burst = burst.unwrap_or(default_burst.min(MAX_BURST));
    let burst_ok = (1..=MAX_BURST).contains(&burst);
    if !burst_ok {
        errs.push(
            format!("{path}.burst"),
            format!("must be between 1 and {MAX_BURST}, not {burst}"),
        );
    }
    (rate_ok && burst_ok).then_some(QuotaLimit {
        rate_per_second: rate,
        burst: burst as u32,
    })
}

pub(super) fn cluster(raw: RawCluster, errs: &mut Errors) -> Option<ClusterConfig> {
    let before = errs.len();
    let url = raw.redis_url.trim();
    let scheme_ok = url.starts_with("redis://") || url.starts_with("rediss://");
    if !scheme_ok {
        errs.push(
            "cluster.redis_url",
            "must be a redis:// or rediss:// (TLS) URL",
        );
    } else if let Err(e) = redis::Client::open(url) {
        errs.push(
            "cluster.redis_url",
            // The kind only: the error text may quote the URL and its password.
            format!("not a usable Redis URL ({:?})", e.kind()),
        );
    }
    let on_redis_error = match raw.on_redis_error.as_deref().unwrap_or("local") {
        "local" => OnRedisError::Local,
        "deny" => OnRedisError::Deny,
        other => {
            errs.push(
                "cluster.on_redis_error",
                format!("must be \"local\" or \"deny\", not {other:?}"),
            );
            OnRedisError::Local
        }
    };
    let timeout_ms = raw.timeout_ms.unwrap_or(50);
    if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
        errs.push(
            "cluster.timeout_ms",
            format!("must be between 1 and {MAX_TIMEOUT_MS}, not {timeout_ms}"),
        );
    }
    let key_prefix = raw.key_prefix.unwrap_or_else(|| "portcullis:".to_string());
    let password = raw
        .redis_password_env
        .as_deref()
        .and_then(|env| env_secret(env, "cluster.redis_password_env", errs));
    if password
        .as_ref()
        .is_some_and(|p| std::str::from_utf8(&p.0).is_err())
    {
        errs.push("cluster.redis_password_env", "the password must be UTF-8");
    }
    if errs.len() != before {
        return None;
    }
    Some(ClusterConfig {
        redis_url: url.to_string(),
        password_env: raw.redis_password_env,
        password,
        key_prefix,
        on_redis_error,
        timeout: Duration::from_millis(timeout_ms as u64),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::model::{OnRedisError, QuotaKey};
    use crate::config::{load_str, Config};

    const BASE: &str = r#"
[[upstreams]]
name = "app"
url = "http://127.0.0.1:9"
"#;

    fn load(extra: &str) -> Result<Config, Vec<String>> {
        load_str(&format!("{BASE}{extra}"), Path::new("/tmp/q.toml"))
            .map(|l| l.config)
            .map_err(|e| {
                e.errors
                    .iter()
                    .map(|e| format!("{}: {}", e.path, e.message))
                    .collect()
            })
    }

    fn route(auth: &str, quota: &str) -> String {
        format!(
            "[[routes]]\nname = \"r\"\npath = \"/x\"\nupstream = \"app\"\nauth = \"{auth}\"\nquota = \"{quota}\"\n"
        )
    }

    #[test]
    fn a_quota_with_defaults_and_overrides() {
        let c = load(&format!(
            r#"
[[quotas]]
name = "writes"
rate_per_second = 2.5
overrides = {{ "batch" = {{ rate_per_second = 50, burst = 100 }} }}

[[quotas]]
name = "by-ip"
key = "ip"
rate_per_second = 0.5
{}"#,
            route("none", "by-ip")
        ))
        .unwrap();
        let w = &c.quotas[0];
        assert_eq!(w.key, QuotaKey::Client);
        assert_eq!(w.limit.burst, 3, "burst defaults to the rate rounded up");
        assert_eq!(w.overrides["batch"].burst, 100);
        assert_eq!(c.quotas[1].limit.burst, 1, "and at least 1");
        assert_eq!(c.routes[0].quota, Some(1));
        assert!(c.cluster.is_none());
    }

    #[test]
    fn bad_quotas_are_refused_with_their_key_path() {
        let errors = load(&format!(
            r#"
[[quotas]]
name = "a"
rate_per_second = 0
[[quotas]]
name = "b b"
rate_per_second = 1
burst = 0
[[quotas]]
name = "c"
key = "tenant"
rate_per_second = 1
overrides = {{ "x" = {{ rate_per_second = -1 }} }}
[[quotas]]
name = "c"
rate_per_second = 1
{}"#,
            route("required", "nope")
        ))
        .unwrap_err()
        .join("\n");
        for expected in [
            "quotas[0].rate_per_second",
            "quotas[1].name",
            "quotas[1].burst",
            "quotas[2].key",
            "quotas[2].overrides.x.rate_per_second",
            "quotas[3].name: duplicate quota name",
            "routes[0].quota: no quota named \"nope\"",
        ] {
            assert!(
                errors.contains(expected),
                "{expected} missing in:\n{errors}"
            );
        }
    }

    #[test]
    fn an_unauthenticated_route_can_only_count_by_ip() {
        let errors = load(&format!(
            "[[quotas]]\nname = \"q\"\nrate_per_second = 1\n{}",
            route("none", "q")
        ))
        .unwrap_err()
        .join("\n");
        assert!(errors.contains("routes[0].quota"), "{errors}");
        assert!(errors.contains("key = \"ip\""), "{errors}");
    }

    #[test]
    fn the_cluster_section() {
        let c = load("[cluster]\nredis_url = \"rediss://cache.internal:6380/2\"\non_redis_error = \"deny\"\n")
            .unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.key_prefix, "portcullis:");
        assert_eq!(cluster.on_redis_error, OnRedisError::Deny);
        assert_eq!(cluster.timeout.as_millis(), 50);
        let errors = load(
            "[cluster]\nredis_url = \"http://x\"\non_redis_error = \"retry\"\ntimeout_ms = 0\nredis_password_env = \"PORTCULLIS_TEST_UNSET_REDIS_PW\"\n",
        )
        .unwrap_err()
        .join("\n");
        for expected in [
            "cluster.redis_url: must be a redis:// or rediss://",
            "cluster.on_redis_error",
            "cluster.timeout_ms",
            "cluster.redis_password_env",
        ] {
            assert!(
                errors.contains(expected),
                "{expected} missing in:\n{errors}"
            );
        }
    }
}
