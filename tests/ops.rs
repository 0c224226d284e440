//! Operations through the socket: the Prometheus exposition on the admin
//! listener (and `promtool check metrics` on it), readiness while an issuer's
//! key set is down, hot reload under load (`POST /admin/reload`), the audit
//! log (JSON and text), HTTPS on the proxy listener, graceful shutdown on
//! SIGTERM and the zero-downtime binary upgrade (SIGQUIT + `run --upgrade`),
//! the last two against the real `portcullis` binary in a subprocess.
//!
//! Every address is loopback and every wait is bounded.

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};

/// Where the mock IAM service serves API clients.
const IAM_PREFIX: &str = "/v1.0/apiclients/";

/// The calling client of most tests: distinctive, so a label or a log line
/// that contains it is easy to spot.
const CID: &str = "ops-client-7f3a9c";

/// A read without entitlements and a read needing `manageAPIClients`.
const ROUTES: &str = r#"
[[routes]]
name = "read-client"
methods = ["GET"]
path = "/v1.0/apiclients/{id}"
upstream = "app"

[[routes]]
name = "manage"
methods = ["GET"]
path = "/manage/{id}"
upstream = "app"
require_all = ["manageAPIClients"]
"#;

// === helpers: names, files, env ===

fn unique(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(unique(&format!("portcullis-ops-{tag}")));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `text` to `path` through a temporary file and a rename, so a
/// reader never sees half a config.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

/// A fresh env var holding `value` (tests run in parallel threads of one process).
fn unique_env(prefix: &str, value: &str) -> String {
    let name = format!("PORTCULLIS_TEST_OPS_{prefix}_{}", unique("v")).replace('-', "_");
    std::env::set_var(&name, value);
    name
}

fn token(entitlements: &[&str]) -> String {
    TokenBuilder::new(&TestKey::rsa())
        .client_id(CID)
        .entitlements(entitlements)
        .build()
}

/// A token no cache can have seen (its own `jti`).
fn fresh_token(entitlements: &[&str]) -> String {
    TokenBuilder::new(&TestKey::rsa())
        .client_id(CID)
        .entitlements(entitlements)
        .claim("jti", json!(unique("jti")))
        .build()
}

fn get(addr: SocketAddr, target: &str, token: Option<&str>) -> RawResponse {
    let auth = token.map(bearer);
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    request(addr, "GET", target, &headers, None)
}

fn admin_post(admin: SocketAddr, path: &str, admin_token: Option<&str>) -> RawResponse {
    let auth = admin_token.map(bearer);
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    request(admin, "POST", path, &headers, None)
}

/// An IBM Verify API-client endpoint that knows only [`CID`].
fn mock_iam() -> MockServer {
    let body = json!({
        "id": "rec-ops-1",
        "clientId": CID,
        "clientName": "ops client",
        "enabled": true,
        "entitlements": ["readAPIClients"],
        "ipFilterOp": null,
        "ipFilters": [],
        "overrideSettings": {"restrictScopes": false},
    })
    .to_string();
    MockServer::start(move |req| {
        if req.path() == format!("{IAM_PREFIX}{CID}") {
            MockResponse::json(200, body.clone())
        } else {
            MockResponse::json(404, r#"{"messageId":"CSIAH0625E"}"#)
        }
    })
}

fn http_clients(iam: &MockServer) -> String {
    format!(
        "[clients]\nsource = \"http\"\nurl = {}\n",
        toml_str(&format!("{}{IAM_PREFIX}{{client_id}}", iam.url()))
    )
}

/// Polls `GET /readyz` on `admin` until 200 (bounded).
fn wait_ready(admin: SocketAddr, timeout: Duration) -> bool {
    wait_until(timeout, || {
        try_send_raw(admin, &build_request("GET", "/readyz", &[], None))
            .map(|r| r.status == 200)
            .unwrap_or(false)
    })
}

// === helpers: the Prometheus text exposition ===

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses `name{label="value",...} value [timestamp]` lines; `#` lines and
/// blank lines are skipped. Errors name the line.
fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |m: &str| format!("line {}: {m}: {line:?}", n + 1);
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .ok_or_else(|| err("no value"))?;
        let name = line[..name_end].to_string();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        {
            return Err(err("bad metric name"));
        }
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let mut consumed = None;
            loop {
                while chars.peek().is_some_and(|(_, c)| *c == ',' || *c == ' ') {
                    chars.next();
                }
                match chars.peek() {
                    Some((i, '}')) => {
                        consumed = Some(*i + 1);
                        break;
                    }
                    None => break,
                    _ => {}
                }
                let mut key = String::new();
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err(err("label value not quoted"));
                }
                let mut value = String::new();
                let mut closed = false;
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('n') => value.push('\n'),
                            Some(other) => value.push(other),
                            None => return Err(err("dangling escape")),
                        },
                        '"' => {
                            closed = true;
                            break;
                        }
                        other => value.push(other),
                    }
                }
                if !closed {
                    return Err(err("unterminated label value"));
                }
                labels.insert(key.trim().to_string(), value);
            }
            let used = consumed.ok_or_else(|| err("unterminated label set"))?;
            rest = &body[used..];
        }
        let value_text = rest
            .split_whitespace()
            .next()
            .ok_or_else(|| err("no value"))?;
        let value = match value_text {
            "+Inf" | "Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().map_err(|_| err("bad value"))?,
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    Ok(out)
}

#[derive(Debug, Clone)]
struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

impl Scrape {
    /// The sample with exactly these labels.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// Like [`Scrape::get`], 0 when absent (a counter not yet created).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    fn series(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    /// The lines of `name`, for failure messages.
    fn show(&self, name: &str) -> String {
        self.text
            .lines()
            .filter(|l| l.starts_with(name))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn scrape(admin: SocketAddr) -> Scrape {
    let resp = request(admin, "GET", "/metrics", &[], None);
    assert_eq!(resp.status, 200, "GET /metrics: {}", resp.describe());
    let ct = resp.header("content-type").unwrap_or_default().to_string();
    assert!(
        ct.starts_with("text/plain"),
        "GET /metrics content-type {ct:?} (expected the text exposition)"
    );
    let text = resp.body_str();
    let samples =
        parse_exposition(&text).unwrap_or_else(|e| panic!("unparsable exposition ({e}):\n{text}"));
    Scrape { text, samples }
}

/// What a metric must have done between two scrapes.
enum Expect {
    /// after − before == n
    Delta(f64),
    /// after − before >= n
    DeltaAtLeast(f64),
    /// after == n
    Value(f64),
    /// after >= n
    AtLeast(f64),
}

struct Check<'a> {
    name: &'a str,
    labels: Vec<(&'a str, &'a str)>,
    expect: Expect,
}

fn check<'a>(name: &'a str, labels: &[(&'a str, &'a str)], expect: Expect) -> Check<'a> {
    Check {
        name,
        labels: labels.to_vec(),
        expect,
    }
}

fn problems(before: &Scrape, after: &Scrape, checks: &[Check<'_>]) -> Vec<String> {
    let mut out = Vec::new();
    for c in checks {
        let b = before.value(c.name, &c.labels);
        let a = after.get(c.name, &c.labels);
        let shown = format!("{}{:?}", c.name, c.labels);
        let av = a.unwrap_or(0.0);
        let ok = match c.expect {
            Expect::Delta(n) => (av - b - n).abs() < 1e-9,
            Expect::DeltaAtLeast(n) => av - b >= n - 1e-9,
            Expect::Value(n) => a.is_some() && (av - n).abs() < 1e-9,
            Expect::AtLeast(n) => a.is_some() && av >= n,
        };
        if !ok {
            let wanted = match c.expect {
                Expect::Delta(n) => format!("+{n}"),
                Expect::DeltaAtLeast(n) => format!("+{n} or more"),
                Expect::Value(n) => format!("= {n}"),
                Expect::AtLeast(n) => format!(">= {n}"),
            };
            out.push(format!(
                "{shown}: before {b}, after {} (expected {wanted}); series now:\n{}",
                a.map_or("absent".to_string(), |v| v.to_string()),
                after.show(c.name)
            ));
        }
    }
    out
}

/// Scrapes until every check holds (metrics are recorded just after the
/// response is written, so allow a moment), at most 5 s; panics listing what
/// still does not hold.
#[track_caller]
fn assert_metrics(admin: SocketAddr, before: &Scrape, checks: &[Check<'_>]) -> Scrape {
    let mut last = scrape(admin);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let p = problems(before, &last, checks);
        if p.is_empty() {
            return last;
        }
        if Instant::now() >= deadline {
            panic!("{} metric check(s) failed:\n{}", p.len(), p.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
        last = scrape(admin);
    }
}

// === 1. metrics move ===

struct MetricsEnv {
    up: MockUpstream,
    _jwks: MockJwks,
    iam: MockServer,
    gw: TestGateway,
    hash: String,
}

fn start_metrics_env() -> MetricsEnv {
    let up = MockUpstream::start();
    let jwks = MockJwks::start(standard_jwks());
    let iam = mock_iam();
    let config = ConfigBuilder::new()
        .issuer("main", DEFAULT_ISSUER, &jwks.url(), "")
        .upstream("app", &up.url(), "")
        .raw(&http_clients(&iam))
        .raw(ROUTES)
        .build();
    let hash = portcullis::config::load_str(&config, &inline_config_origin())
        .unwrap_or_else(|e| panic!("config rejected: {e}"))
        .config
        .hash;
    let gw = TestGateway::start(&config);
    MetricsEnv {
        up,
        _jwks: jwks,
        iam,
        gw,
        hash,
    }
}

#[test]
fn metrics_move_with_requests_keys_and_client_cache() {
    let env = start_metrics_env();
    let admin = env.gw.admin_addr().expect("admin listener");
    let proxy = env.gw.addr();
    let before = scrape(admin);

    // One allowed request and three refusals.
    let read = format!("{IAM_PREFIX}target-1");
    let ok = get(proxy, &read, Some(&token(&["readAPIClients"])));
    assert_eq!(ok.status, 200, "allowed request: {}", ok.describe());
    let missing = get(proxy, &read, None);
    assert_eq!(missing.status, 401, "no token: {}", missing.describe());
    let weak = get(proxy, "/manage/target-1", Some(&token(&["readAPIClients"])));
    assert_eq!(weak.status, 403, "insufficient: {}", weak.describe());
    assert_eq!(
        weak.error_code().as_deref(),
        Some("insufficient_entitlements")
    );
    let lost = get(proxy, "/nothing/here", Some(&token(&["readAPIClients"])));
    assert_eq!(lost.status, 404, "no route: {}", lost.describe());
    assert_eq!(env.up.count(), 1, "only the allowed request goes upstream");
    assert_eq!(env.iam.count(), 1, "one metadata lookup (then cached)");

    let version = env!("CARGO_PKG_VERSION");
    let after = assert_metrics(
        admin,
        &before,
        &[
            check(
                "portcullis_requests_total",
                &[
                    ("route", "read-client"),
                    ("method", "GET"),
                    ("status_class", "2xx"),
                    ("decision", "allow"),
                ],
                Expect::Delta(1.0),
            ),
            check(
                "portcullis_requests_total",
                &[
                    ("route", "read-client"),
                    ("method", "GET"),
                    ("status_class", "4xx"),
                    ("decision", "refuse"),
                ],
                Expect::Delta(1.0),
            ),
            check(
                "portcullis_requests_total",
                &[
                    ("route", "none"),
                    ("method", "GET"),
                    ("status_class", "4xx"),
                    ("decision", "refuse"),
                ],
                Expect::Delta(1.0),
            ),
            check(
                "portcullis_refusals_total",
                &[("route", "read-client"), ("reason", "missing_token")],
                Expect::Delta(1.0),
            ),
            check(
                "portcullis_refusals_total",
                &[("route", "manage"), ("reason", "insufficient_entitlements")],
                Expect::Delta(1.0),
            ),
            check(
                "portcullis_refusals_total",
                &[("route", "none"), ("reason", "no_route")],
                Expect::Delta(1.0),
            ),
            check(
                "portcullis_request_duration_seconds_count",
                &[("route", "read-client")],
                Expect::Delta(2.0),
            ),
            check(
                "portcullis_request_duration_seconds_count",
                &[("route", "manage")],
                Expect::Delta(1.0),
            ),
            check(
                "portcullis_upstream_duration_seconds_count",
                &[("route", "read-client")],
                Expect::Delta(1.0),
            ),
            check(
                "portcullis_jwks_refreshes_total",
                &[("issuer", "main"), ("result", "success")],
                Expect::AtLeast(1.0),
            ),
            check(
                "portcullis_jwks_keys",
                &[("issuer", "main")],
                Expect::Value(5.0),
            ),
            check(
                "portcullis_issuer_ready",
                &[("issuer", "main")],
                Expect::Value(1.0),
            ),
            check(
                "portcullis_jwks_age_seconds",
                &[("issuer", "main")],
                Expect::AtLeast(0.0),
            ),
            check(
                "portcullis_build_info",
                &[("version", version)],
                Expect::Value(1.0),
            ),
            check(
                "portcullis_config_info",
                &[("hash", env.hash.as_str())],
                Expect::Value(1.0),
            ),
            // The client cache: a miss and a load for the first request, a
            // hit for the second token-bearing request on a route.
            check(
                "portcullis_client_cache_requests_total",
                &[("result", "miss")],
                Expect::Delta(1.0),
            ),
            check(
                "portcullis_client_cache_requests_total",
                &[("result", "hit")],
                Expect::DeltaAtLeast(1.0),
            ),
            check(
                "portcullis_client_cache_loads_total",
                &[("result", "success")],
                Expect::Delta(1.0),
            ),
            check(
                "portcullis_client_cache_loads_total",
                &[("result", "error")],
                Expect::Delta(0.0),
            ),
            check("portcullis_client_cache_entries", &[], Expect::Value(1.0)),
        ],
    );

    // The histogram is complete: +Inf bucket = count.
    let inf = after.value(
        "portcullis_request_duration_seconds_bucket",
        &[("route", "read-client"), ("le", "+Inf")],
    );
    let count = after.value(
        "portcullis_request_duration_seconds_count",
        &[("route", "read-client")],
    );
    assert_eq!(inf, count, "+Inf bucket differs from _count");
    assert_eq!(
        after.series("portcullis_config_info").len(),
        1,
        "exactly one config_info series:\n{}",
        after.show("portcullis_config_info")
    );

    // Bounded label values: never a path or a client id.
    let mut bad = Vec::new();
    for s in &after.samples {
        for (k, v) in &s.labels {
            if [
                "/v1.0",
                "/manage",
                "/nothing",
                "target-1",
                CID,
                DEFAULT_SUBJECT,
            ]
            .iter()
            .any(|needle| v.contains(needle))
            {
                bad.push(format!("{}{{{k}={v:?}}}", s.name));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "label values with a path or a client id: {bad:?}"
    );
    assert!(
        !after.text.contains(CID),
        "the exposition mentions the client id"
    );
}

// === 2. promtool ===

#[test]
fn exposition_passes_promtool_check_metrics() {
    let env = start_metrics_env();
    let admin = env.gw.admin_addr().expect("admin listener");
    let proxy = env.gw.addr();
    // Traffic of several kinds so that every family has samples.
    let read = format!("{IAM_PREFIX}target-1");
    assert_eq!(
        get(proxy, &read, Some(&token(&["readAPIClients"]))).status,
        200
    );
    assert_eq!(get(proxy, &read, None).status, 401);
    assert_eq!(
        get(proxy, "/manage/x", Some(&token(&["readAPIClients"]))).status,
        403
    );
    assert_eq!(get(proxy, "/nothing", None).status, 404);
    let before = scrape(admin);
    let text = assert_metrics(
        admin,
        &before,
        &[check(
            "portcullis_client_cache_requests_total",
            &[("result", "hit")],
            Expect::AtLeast(1.0),
        )],
    )
    .text;

    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("promtool not installed: skipping exposition lint");
            return;
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(text.as_bytes())
        .expect("write the exposition to promtool");
    // promtool reads stdin to its end (stdin was dropped above) and exits.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match child.try_wait().expect("promtool wait") {
            Some(_) => break,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("promtool check metrics did not finish within 20 s");
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let out = child.wait_with_output().expect("promtool output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "promtool check metrics: {}\nstdout:\n{stdout}\nstderr:\n{stderr}\n--- exposition ---\n{text}",
        out.status
    );
}

// === 3. readiness ===

#[test]
fn readiness_follows_the_key_set_and_health_does_not() {
    let up = MockUpstream::start();
    let jwks = MockJwks::start_failing();
    let config = ConfigBuilder::new()
        .issuer(
            "main",
            DEFAULT_ISSUER,
            &jwks.url(),
            "jwks_refresh_seconds = 1\njwks_min_refetch_seconds = 1",
        )
        .upstream("app", &up.url(), "")
        .raw(ROUTES)
        .build();
    let gw = TestGateway::start_unready(&config);
    let admin = gw.admin_addr().expect("admin listener");

    // Give the first fetch time to fail, then look.
    assert!(
        wait_until(Duration::from_secs(5), || jwks.fetch_count() >= 1),
        "the gateway never asked the JWKS endpoint"
    );
    let ready = request(admin, "GET", "/readyz", &[], None);
    assert_eq!(
        ready.status,
        503,
        "/readyz without keys: {}",
        ready.describe()
    );
    let body = ready.json();
    assert_eq!(body["status"], "not_ready", "{body}");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("main"),
        "the reason must name the issuer `main`: {body}"
    );
    let health = request(admin, "GET", "/healthz", &[], None);
    assert_eq!(health.status, 200, "/healthz: {}", health.describe());

    // Fail closed meanwhile.
    let resp = get(
        gw.addr(),
        &format!("{IAM_PREFIX}x"),
        Some(&token(&["readAPIClients"])),
    );
    assert_refused(&resp, 503, "keys_unavailable", &up);
    let not_ready = scrape(admin);
    assert_eq!(
        not_ready.get("portcullis_issuer_ready", &[("issuer", "main")]),
        Some(0.0),
        "{}",
        not_ready.show("portcullis_issuer_ready")
    );
    assert!(
        not_ready.value(
            "portcullis_jwks_refreshes_total",
            &[("issuer", "main"), ("result", "failure")]
        ) >= 1.0,
        "{}",
        not_ready.show("portcullis_jwks_refreshes_total")
    );

    // The endpoint recovers: the refresher retries (1 s backoff cap here).
    jwks.set_jwks(standard_jwks());
    jwks.set_failing(false);
    let start = Instant::now();
    assert!(
        wait_ready(admin, Duration::from_secs(8)),
        "/readyz still not 200 8 s after the JWKS endpoint recovered (fetches: {}): {}",
        jwks.fetch_count(),
        request(admin, "GET", "/readyz", &[], None).describe()
    );
    let waited = start.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "ready only after {waited:?} (retry every 1 s expected)"
    );
    let body = request(admin, "GET", "/readyz", &[], None).json();
    assert_eq!(body["status"], "ready", "{body}");
    let resp = get(
        gw.addr(),
        &format!("{IAM_PREFIX}x"),
        Some(&token(&["readAPIClients"])),
    );
    assert_eq!(resp.status, 200, "after recovery: {}", resp.describe());
    let m = scrape(admin);
    assert_eq!(
        m.get("portcullis_issuer_ready", &[("issuer", "main")]),
        Some(1.0)
    );
}

// === 4. hot reload ===

const NEW_ROUTE: &str = r#"
[[routes]]
name = "added"
methods = ["GET"]
path = "/added/{id}"
upstream = "app"
"#;

#[test]
fn reload_swaps_config_without_losing_requests_keys_or_cache() {
    let dir = TempDir::new("reload");
    let up = MockUpstream::start();
    let jwks = MockJwks::start(standard_jwks());
    let iam = mock_iam();
    let admin_token = format!("admin-{}", unique("tok"));
    let admin_env = unique_env("ADMIN", &admin_token);
    let builder = ConfigBuilder::new()
        // The first raw section continues [admin].
        .raw(&format!("token_env = {}\n", toml_str(&admin_env)))
        .issuer("main", DEFAULT_ISSUER, &jwks.url(), "")
        .upstream("app", &up.url(), "")
        .raw(&http_clients(&iam))
        .raw(ROUTES);
    let v1 = builder.build();
    let v2 = builder.clone().raw(NEW_ROUTE).build();
    let path = dir.path("portcullis.toml");
    write_atomically(&path, &v1);
    let loaded =
        portcullis::config::load_file(&path).unwrap_or_else(|e| panic!("v1 rejected: {e}\n{v1}"));
    let hash1 = loaded.config.hash.clone();
    let handle = portcullis::server::start_in_thread(loaded.config)
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    let proxy = handle.listen[0];
    let admin: SocketAddr = format!("127.0.0.1:{}", builder.admin_port)
        .parse()
        .expect("admin addr");
    assert!(
        wait_ready(admin, Duration::from_secs(5)),
        "gateway never ready"
    );

    let read = format!("{IAM_PREFIX}target-1");
    let tok = token(&["readAPIClients"]);
    let first = get(proxy, &read, Some(&tok));
    assert_eq!(first.status, 200, "before reload: {}", first.describe());
    let before_new = get(proxy, "/added/1", Some(&tok));
    assert_eq!(
        before_new.status,
        404,
        "the new route must not exist yet: {}",
        before_new.describe()
    );
    let base = scrape(admin);
    assert_eq!(
        base.value("portcullis_config_info", &[("hash", &hash1)]),
        1.0
    );

    // A steady stream of requests on the existing route.
    let stop = Arc::new(AtomicBool::new(false));
    type Outcome = (Instant, Instant, Result<u16, String>);
    let results: Arc<Mutex<Vec<Outcome>>> = Arc::new(Mutex::new(Vec::new()));
    let stream = {
        let (stop, results, read, tok) = (stop.clone(), results.clone(), read.clone(), tok.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            let req = build_request(
                "GET",
                &read,
                &[("Authorization", bearer(&tok).as_str())],
                None,
            );
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let t0 = Instant::now();
                let r = try_send_raw(proxy, &req).map(|r| r.status);
                results
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((t0, Instant::now(), r));
            }
        })
    };
    // Enough requests before the reload that the stream straddles it (on a
    // loaded machine 300 ms once gave only 4); bounded by the stream's own 10 s.
    assert!(
        wait_until(Duration::from_secs(5), || {
            results.lock().unwrap_or_else(|e| e.into_inner()).len() >= 8
        }),
        "the request stream did not get going"
    );

    // The JWKS endpoint goes down just before the reload: the key set must
    // carry over, not be fetched again.
    jwks.set_failing(true);
    let iam_calls = iam.count();
    write_atomically(&path, &v2);
    let hash2 = portcullis::config::load_file(&path)
        .unwrap_or_else(|e| panic!("v2 rejected: {e}"))
        .config
        .hash;
    assert_ne!(hash1, hash2);
    let reload_start = Instant::now();
    let resp = admin_post(admin, "/admin/reload", Some(&admin_token));
    let reload_end = Instant::now();
    assert_eq!(resp.status, 200, "POST /admin/reload: {}", resp.describe());
    let body = resp.json();
    assert_eq!(body["reloaded"], true, "{body}");
    assert_eq!(body["hash"], hash2.as_str(), "{body}");

    // Right after: a token the gateway has never seen verifies (keys carried
    // over), the new route answers, and the cached client is not looked up again.
    let added = get(proxy, "/added/1", Some(&fresh_token(&["readAPIClients"])));
    assert_eq!(
        added.status,
        200,
        "the added route right after the reload (JWKS endpoint failing): {}",
        added.describe()
    );
    // (The stream keeps the upstream busy: look for it among the requests.)
    assert_eq!(
        up.requests()
            .iter()
            .filter(|r| r.path() == "/added/1")
            .count(),
        1,
        "the upstream did not receive GET /added/1 once"
    );
    let again = get(proxy, &read, Some(&fresh_token(&["readAPIClients"])));
    assert_eq!(
        again.status,
        200,
        "old route after reload: {}",
        again.describe()
    );
    assert_eq!(
        iam.count(),
        iam_calls,
        "the metadata cache of an unchanged [clients] must survive the reload \
         (the metadata source was asked again)"
    );

    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    stream.join().expect("request stream thread");
    let results = results.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let failed: Vec<String> = results
        .iter()
        .enumerate()
        .filter(|(_, (_, _, r))| r.as_ref().map_or(true, |s| *s != 200))
        .map(|(i, (t0, _, r))| {
            format!(
                "#{i} at {:?} from the reload: {r:?}",
                t0.saturating_duration_since(reload_start)
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests in the stream failed across the reload: {failed:?}",
        failed.len(),
        results.len()
    );
    let before_reload = results.iter().filter(|(_, e, _)| *e < reload_start).count();
    let after_reload = results.iter().filter(|(s, _, _)| *s > reload_end).count();
    assert!(
        before_reload >= 5 && after_reload >= 5,
        "the stream must straddle the reload: {before_reload} request(s) before, \
         {after_reload} after ({} in all)",
        results.len()
    );

    let m = scrape(admin);
    assert_eq!(
        m.get("portcullis_config_info", &[("hash", &hash2)]),
        Some(1.0),
        "{}",
        m.show("portcullis_config_info")
    );
    assert_eq!(m.series("portcullis_config_info").len(), 1);
    jwks.set_failing(false);

    // An invalid config is refused with its reason; the old one keeps serving.
    let invalid = format!("mystery_key = 1\n{v2}");
    write_atomically(&path, &invalid);
    let resp = admin_post(admin, "/admin/reload", Some(&admin_token));
    assert_eq!(resp.status, 422, "invalid config: {}", resp.describe());
    let body = resp.json();
    assert_eq!(body["reloaded"], false, "{body}");
    assert_eq!(body["error"], "invalid_config", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("mystery_key"),
        "the reason must name the unknown key: {body}"
    );
    let still = get(proxy, "/added/2", Some(&tok));
    assert_eq!(
        still.status,
        200,
        "the previous config keeps serving: {}",
        still.describe()
    );

    // Without (or with a wrong) admin token: 401, nothing reloaded.
    let anon = admin_post(admin, "/admin/reload", None);
    assert_eq!(
        anon.status,
        401,
        "reload without token: {}",
        anon.describe()
    );
    assert!(
        anon.header("www-authenticate").is_some(),
        "401 without a challenge: {}",
        anon.describe()
    );
    let wrong = admin_post(admin, "/admin/reload", Some("not-the-admin-token"));
    assert_eq!(
        wrong.status,
        401,
        "reload with a wrong token: {}",
        wrong.describe()
    );

    let m = assert_metrics(
        admin,
        &base,
        &[
            check(
                "portcullis_config_reloads_total",
                &[("result", "success")],
                Expect::Delta(1.0),
            ),
            check(
                "portcullis_config_reloads_total",
                &[("result", "failure")],
                Expect::Delta(1.0),
            ),
            check(
                "portcullis_config_info",
                &[("hash", hash2.as_str())],
                Expect::Value(1.0),
            ),
        ],
    );
    assert_eq!(m.series("portcullis_config_info").len(), 1);
    handle.stop();
}

/// A reload gives every issuer a fresh key-set source whose fetch counters
/// start again from zero; the exported counter must still count every fetch
/// (here: the one the new refresher makes at once), even when no scrape
/// happened in between.
#[test]
fn jwks_refresh_counter_counts_the_fetch_after_a_reload() {
    let dir = TempDir::new("reload-counter");
    let up = MockUpstream::start();
    let jwks = MockJwks::start(standard_jwks());
    let builder = ConfigBuilder::new()
        .issuer("main", DEFAULT_ISSUER, &jwks.url(), "")
        .upstream("app", &up.url(), "")
        .raw(ROUTES);
    let path = dir.path("portcullis.toml");
    write_atomically(&path, &builder.build());
    let loaded = portcullis::config::load_file(&path).unwrap_or_else(|e| panic!("{e}"));
    let handle = portcullis::server::start_in_thread(loaded.config)
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    let admin: SocketAddr = format!("127.0.0.1:{}", builder.admin_port)
        .parse()
        .expect("admin addr");
    assert!(wait_ready(admin, Duration::from_secs(5)), "never ready");
    let ok = [("issuer", "main"), ("result", "success")];
    let before = scrape(admin);
    assert_eq!(
        before.value("portcullis_jwks_refreshes_total", &ok),
        1.0,
        "one fetch at start:\n{}",
        before.show("portcullis_jwks_refreshes_total")
    );
    let fetched = jwks.fetch_count();
    handle
        .reloader
        .reload()
        .expect("reload of the unchanged file");
    assert!(
        wait_until(Duration::from_secs(5), || jwks.fetch_count() > fetched),
        "no JWKS fetch after the reload"
    );
    // No scrape until the new source has counted its fetch.
    std::thread::sleep(Duration::from_millis(300));
    assert_metrics(
        admin,
        &before,
        &[check(
            "portcullis_jwks_refreshes_total",
            &ok,
            Expect::Delta((jwks.fetch_count() - fetched) as f64),
        )],
    );
    handle.stop();
}

// === 5. audit log ===

fn audit_env(format: &str, dir: &TempDir) -> (MockUpstream, MockJwks, TestGateway, PathBuf) {
    let up = MockUpstream::start();
    let jwks = MockJwks::start(standard_jwks());
    let log = dir.path("audit.log");
    let config = ConfigBuilder::new()
        .issuer("main", DEFAULT_ISSUER, &jwks.url(), "")
        .upstream("app", &up.url(), "")
        .raw(&format!(
            "[log]\nformat = {}\naudit = {}\n",
            toml_str(format),
            toml_str(&log.to_string_lossy())
        ))
        .raw(ROUTES)
        .build();
    let gw = TestGateway::start(&config);
    (up, jwks, gw, log)
}

/// Polls the log file (at most 5 s) for a line containing `needle`.
fn wait_for_line(log: &Path, needle: &str) -> String {
    let mut found = None;
    wait_until(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        found = text
            .lines()
            .find(|l| l.contains(needle))
            .map(str::to_string);
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "no audit line with {needle:?} within 5 s; the file holds:\n{}",
            std::fs::read_to_string(log).unwrap_or_else(|e| format!("({e})"))
        )
    })
}

#[test]
fn audit_log_json_records_decisions_and_never_tokens() {
    let dir = TempDir::new("audit-json");
    let (up, _jwks, gw, log) = audit_env("json", &dir);
    let weak = TokenBuilder::new(&TestKey::rsa())
        .client_id(CID)
        .sub("audit-subject-1")
        .entitlements(&["readAPIClients"])
        .build();
    let resp = gw.request_with_token(
        "GET",
        "/manage/item-9?page=2&filter=secretish",
        &weak,
        &[],
        None,
    );
    assert_refused(&resp, 403, "insufficient_entitlements", &up);
    let rid = resp
        .header("x-request-id")
        .expect("X-Request-Id")
        .to_string();
    let line = wait_for_line(&log, &rid);
    let rec: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {line}"));
    let mut cases = Cases::new();
    for (field, want) in [
        ("request_id", json!(rid)),
        ("route", json!("manage")),
        ("method", json!("GET")),
        ("path", json!("/manage/item-9")),
        ("client_id", json!(CID)),
        ("subject", json!("audit-subject-1")),
        ("client_ip", json!("127.0.0.1")),
        ("decision", json!("refuse")),
        ("reason", json!("insufficient_entitlements")),
        ("status", json!(403)),
    ] {
        if rec.get(field) != Some(&want) {
            cases.fail(
                "refused request",
                format!("{field} = {:?} (expected {want})", rec.get(field)),
            );
        }
    }
    if line.contains("secretish") || line.contains('?') {
        cases.fail(
            "refused request",
            format!("the query string is logged: {line}"),
        );
    }

    let good = TokenBuilder::new(&TestKey::rsa())
        .client_id(CID)
        .entitlements(&["readAPIClients"])
        .build();
    let ok = gw.request_with_token("GET", "/v1.0/apiclients/item-9", &good, &[], None);
    assert_eq!(ok.status, 200, "allowed request: {}", ok.describe());
    let rid_ok = ok.header("x-request-id").expect("X-Request-Id").to_string();
    let line_ok = wait_for_line(&log, &rid_ok);
    let rec_ok: Value = serde_json::from_str(&line_ok)
        .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {line_ok}"));
    for (field, want) in [
        ("decision", json!("allow")),
        ("status", json!(200)),
        ("route", json!("read-client")),
        ("reason", Value::Null),
    ] {
        if rec_ok.get(field).unwrap_or(&Value::Null) != &want {
            cases.fail(
                "allowed request",
                format!("{field} = {:?} (expected {want})", rec_ok.get(field)),
            );
        }
    }
    if !rec_ok
        .get("upstream_latency_ms")
        .is_some_and(|v| v.as_f64().is_some_and(|ms| ms >= 0.0))
    {
        cases.fail(
            "allowed request",
            format!(
                "upstream_latency_ms is not a number: {:?}",
                rec_ok.get("upstream_latency_ms")
            ),
        );
    }

    // No token, and no part of one, anywhere in the file.
    let text = std::fs::read_to_string(&log).expect("read the audit log");
    for t in [&weak, &good] {
        let sig = t.rsplit('.').next().unwrap_or_default();
        let payload = t.split('.').nth(1).unwrap_or_default();
        if text.contains(t.as_str()) || text.contains(sig) || text.contains(payload) {
            cases.fail(
                "audit log",
                "a token (or its signature / payload) is in the file".into(),
            );
        }
    }
    cases.finish();
}

#[test]
fn audit_log_text_format_is_a_human_line() {
    let dir = TempDir::new("audit-text");
    let (up, _jwks, gw, log) = audit_env("text", &dir);
    let weak = token(&["readAPIClients"]);
    let resp = gw.request_with_token("GET", "/manage/item-3", &weak, &[], None);
    assert_refused(&resp, 403, "insufficient_entitlements", &up);
    let rid = resp
        .header("x-request-id")
        .expect("X-Request-Id")
        .to_string();
    let line = wait_for_line(&log, &rid);
    assert!(
        serde_json::from_str::<Value>(&line).is_err() && !line.trim_start().starts_with('{'),
        "format = \"text\" wrote JSON: {line}"
    );
    assert!(
        line.contains("insufficient_entitlements"),
        "the text line lacks the reason: {line}"
    );
    let text = std::fs::read_to_string(&log).expect("read the audit log");
    let sig = weak.rsplit('.').next().unwrap_or_default();
    assert!(
        !text.contains(&weak) && !text.contains(sig),
        "the token is in the text audit log"
    );
}

// === 6. TLS ===

#[test]
fn https_listener_serves_with_its_certificate_and_refuses_plain_http() {
    let dir = TempDir::new("tls");
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("generate a self-signed certificate");
    let cert_pem = certified.cert.pem();
    let (cert_file, key_file) = (dir.path("cert.pem"), dir.path("key.pem"));
    std::fs::write(&cert_file, &cert_pem).expect("write cert.pem");
    std::fs::write(&key_file, certified.key_pair.serialize_pem()).expect("write key.pem");

    let up = MockUpstream::start();
    let jwks = MockJwks::start(standard_jwks());
    let config = ConfigBuilder::new()
        .server(&format!(
            "tls = {{ cert_file = {}, key_file = {} }}",
            toml_str(&cert_file.to_string_lossy()),
            toml_str(&key_file.to_string_lossy())
        ))
        .issuer("main", DEFAULT_ISSUER, &jwks.url(), "")
        .upstream("app", &up.url(), "")
        .raw(ROUTES)
        .build();
    let gw = TestGateway::start(&config);
    let addr = gw.addr();
    let tok = token(&["readAPIClients"]);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(cert_pem.as_bytes()).expect("certificate PEM"),
        )
        .tls_built_in_root_certs(false)
        .resolve("localhost", addr)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTPS client");
    for host in ["localhost".to_string(), "127.0.0.1".to_string()] {
        let url = format!("https://{host}:{}/v1.0/apiclients/tls-1", addr.port());
        let (status, body) = rt.block_on(async {
            let resp = client
                .get(&url)
                .bearer_auth(&tok)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap_or_default())
        });
        assert_eq!(status, 200, "GET {url}: {body}");
        assert_eq!(body, r#"{"upstream":"ok"}"#, "GET {url}");
        let seen = up.last();
        assert_eq!(seen.path(), "/v1.0/apiclients/tls-1");
        assert_eq!(
            seen.header("x-forwarded-proto"),
            Some("https"),
            "X-Forwarded-Proto upstream; headers: {:?}",
            seen.headers
        );
    }

    // Plain HTTP on the TLS port gets no HTTP answer and reaches nothing.
    up.clear();
    let plain = try_send_raw(
        addr,
        &build_request(
            "GET",
            "/v1.0/apiclients/tls-1",
            &[("Authorization", bearer(&tok).as_str())],
            None,
        ),
    );
    assert!(
        plain.as_ref().map_or(true, |r| r.status != 200),
        "plain HTTP on the TLS listener was answered: {:?}",
        plain.map(|r| r.describe())
    );
    assert_eq!(up.count(), 0, "a plain-HTTP request reached the upstream");
}

// === 7 and 8: the binary in a subprocess ===

/// A `portcullis run` child, killed (SIGKILL) and reaped on drop.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(config: &Path, upgrade: bool, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("create the child's log");
        let err = out.try_clone().expect("clone the log handle");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        cmd.arg("run").arg("--config").arg(config);
        if upgrade {
            cmd.arg("--upgrade");
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn portcullis");
        Proc {
            child: Some(child),
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {} failed", self.pid());
    }

    /// The exit status if the process ended within `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// A public route (no token needed) over `app`, for the subprocess tests.
const PUBLIC_ROUTE: &str = r#"
[[routes]]
name = "public"
methods = ["GET"]
path = "/public/{id}"
upstream = "app"
auth = "none"
"#;

/// A config file for a subprocess gateway (`shutdown_timeout_seconds = 5`);
/// returns (file, proxy, admin).
fn subprocess_config(
    dir: &TempDir,
    up: &MockUpstream,
    jwks: &MockJwks,
) -> (PathBuf, SocketAddr, SocketAddr) {
    subprocess_config_with(dir, up, jwks, 5)
}

/// Like [`subprocess_config`] with another `shutdown_timeout_seconds`.
fn subprocess_config_with(
    dir: &TempDir,
    up: &MockUpstream,
    jwks: &MockJwks,
    shutdown_timeout_seconds: u64,
) -> (PathBuf, SocketAddr, SocketAddr) {
    let b = ConfigBuilder::new()
        .server(&format!(
            "shutdown_timeout_seconds = {shutdown_timeout_seconds}"
        ))
        .server(&format!(
            "upgrade_sock = {}",
            toml_str(&dir.path("upgrade.sock").to_string_lossy())
        ))
        .server(&format!(
            "pid_file = {}",
            toml_str(&dir.path("portcullis.pid").to_string_lossy())
        ))
        .issuer("main", DEFAULT_ISSUER, &jwks.url(), "")
        .upstream("app", &up.url(), "")
        .raw(PUBLIC_ROUTE);
    let path = dir.path("portcullis.toml");
    write_atomically(&path, &b.build());
    let proxy = format!("127.0.0.1:{}", b.proxy_port).parse().expect("addr");
    let admin = format!("127.0.0.1:{}", b.admin_port).parse().expect("addr");
    (path, proxy, admin)
}

/// Whether the gateway is ready (`/readyz` 200) and its proxy listener
/// accepts, within `timeout`. Readiness alone is not enough: pingora starts
/// the admin service before the proxy, so `/readyz` can answer before the
/// proxy port is bound. (The port is reserved by `free_port`: an accepted
/// connection is this gateway's.)
fn serving(proxy: SocketAddr, admin: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    wait_ready(admin, timeout)
        && wait_until(deadline.saturating_duration_since(Instant::now()), || {
            std::net::TcpStream::connect_timeout(&proxy, Duration::from_millis(200)).is_ok()
        })
}

/// A keep-alive connection that has had one request answered and now sits
/// idle between requests.
fn idle_keepalive_connection(proxy: SocketAddr) -> std::net::TcpStream {
    use std::io::Read as _;
    let mut conn = std::net::TcpStream::connect_timeout(&proxy, Duration::from_secs(2))
        .expect("connect to the proxy");
    conn.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    conn.write_all(b"GET /public/keepalive HTTP/1.1\r\nHost: gw\r\n\r\n")
        .expect("write a request");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .expect("a Content-Length on the answer");
            if body.len() >= length {
                assert!(
                    head.starts_with("HTTP/1.1 200"),
                    "keep-alive request: {head}"
                );
                assert!(
                    !head.to_ascii_lowercase().contains("connection: close"),
                    "the gateway closes the keep-alive connection: {head}"
                );
                return conn;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no complete answer on the keep-alive connection: {text:?}"
        );
        match conn.read(&mut chunk) {
            Ok(0) => panic!("the keep-alive connection closed early: {text:?}"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => {}
        }
    }
}

/// Whether the peer closes `conn` within `timeout` (EOF or reset).
fn closed_within(conn: &mut std::net::TcpStream, timeout: Duration) -> bool {
    use std::io::Read as _;
    let deadline = Instant::now() + timeout;
    let mut chunk = [0u8; 1024];
    while Instant::now() < deadline {
        match conn.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// How many connections wait in the accept queue of the IPv4 listener on
/// `addr` (Linux `/proc/net/tcp`: `rx_queue` of a socket in state LISTEN);
/// `None` when there is no such listener or the table cannot be read.
fn accept_queue(addr: SocketAddr) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let std::net::IpAddr::V4(ip) = addr.ip() else {
        return None;
    };
    // /proc/net/tcp prints the address as the 32-bit value in host order.
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(ip.octets()),
        addr.port()
    );
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (address, state, queues) = (fields.get(1)?, fields.get(3)?, fields.get(4)?);
        if *address != local || *state != "0A" {
            return None;
        }
        u64::from_str_radix(queues.split(':').nth(1)?, 16).ok()
    })
}

/// Whether a new connection to `addr` is refused (bounded wait of 1 s).
fn connect_refused(addr: SocketAddr) -> bool {
    matches!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

#[test]
fn sigterm_on_an_idle_gateway_exits_within_a_second() {
    let dir = TempDir::new("sigterm-idle");
    let up = MockUpstream::start();
    let jwks = MockJwks::start(standard_jwks());
    // A long timeout: exiting at once must not be the timeout expiring.
    let (config, proxy, admin) = subprocess_config_with(&dir, &up, &jwks, 30);
    let mut gw = Proc::spawn(&config, false, dir.path("gateway.log"));
    assert!(
        serving(proxy, admin, Duration::from_secs(10)),
        "the gateway was not ready and listening within 10 s; log:\n{}",
        gw.log_text()
    );
    // Neither a keep-alive connection idle between requests nor one that
    // has not sent a byte yet is a request in flight.
    let mut keepalive = idle_keepalive_connection(proxy);
    let _silent = std::net::TcpStream::connect_timeout(&proxy, Duration::from_secs(2))
        .expect("connect to the proxy");

    let signalled = Instant::now();
    gw.signal("TERM");
    let exit = gw.wait_exit(Duration::from_secs(10));
    let took = signalled.elapsed();
    let log = gw.log_text();
    let status = exit.unwrap_or_else(|| {
        panic!("the idle gateway was still running 10 s after SIGTERM; log:\n{log}")
    });
    assert!(
        status.success(),
        "exit status after SIGTERM: {status}; log:\n{log}"
    );
    println!("idle gateway: exited {took:?} after SIGTERM");
    assert!(
        took < Duration::from_secs(1),
        "an idle gateway took {took:?} to exit after SIGTERM (limit 1 s, \
         shutdown_timeout_seconds = 30); log:\n{log}"
    );
    assert!(
        closed_within(&mut keepalive, Duration::from_secs(1)),
        "the idle keep-alive connection is still open after the exit"
    );
    assert!(
        connect_refused(proxy),
        "the proxy port still accepts after the exit"
    );
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_then_exits() {
    let dir = TempDir::new("sigterm");
    let up = MockUpstream::start();
    let jwks = MockJwks::start(standard_jwks());
    // The timeout is far above the slow request: the exit must follow the
    // request, not the timeout.
    let (config, proxy, admin) = subprocess_config_with(&dir, &up, &jwks, 30);
    let mut gw = Proc::spawn(&config, false, dir.path("gateway.log"));
    assert!(
        serving(proxy, admin, Duration::from_secs(10)),
        "the gateway was not ready and listening within 10 s; log:\n{}",
        gw.log_text()
    );
    let mut keepalive = idle_keepalive_connection(proxy);
    up.set_delay(Duration::from_millis(2000));
    up.clear();

    let in_flight = std::thread::spawn(move || {
        let r = try_send_raw(proxy, &build_request("GET", "/public/slow", &[], None));
        (r, Instant::now())
    });
    assert!(
        wait_until(Duration::from_secs(5), || up.count() >= 1),
        "the request never reached the upstream; log:\n{}",
        gw.log_text()
    );
    let signalled = Instant::now();
    gw.signal("TERM");

    // During the drain: not ready, no new connection, idle keep-alive closed.
    let mut readyz = None;
    let drained = wait_until(Duration::from_secs(1), || {
        readyz = try_send_raw(admin, &build_request("GET", "/readyz", &[], None)).ok();
        readyz.as_ref().is_some_and(|r| r.status == 503)
    });
    let readyz_at = signalled.elapsed();
    let refused = wait_until(Duration::from_secs(1), || connect_refused(proxy));
    let keepalive_closed = closed_within(&mut keepalive, Duration::from_secs(1));
    let still_running = gw.running();

    let (resp, answered_at) = in_flight.join().expect("request thread");
    let exit = gw.wait_exit(Duration::from_secs(40));
    let exited_at = Instant::now();
    let log = gw.log_text();
    assert!(
        drained,
        "/readyz during the drain: {:?}; log:\n{log}",
        readyz.map(|r| r.describe())
    );
    let ready_body = readyz.map(|r| r.json()).unwrap_or_default();
    assert_eq!(
        ready_body,
        json!({"status": "not_ready", "reason": "shutting down"}),
        "/readyz body during the drain"
    );
    assert!(
        readyz_at < Duration::from_millis(1900) && still_running,
        "/readyz was 503 only after {readyz_at:?}, or the gateway had already exited: \
         not during the drain; log:\n{log}"
    );
    assert!(
        refused,
        "new connections to the proxy are still accepted during the drain; log:\n{log}"
    );
    assert!(
        keepalive_closed,
        "an idle keep-alive connection stayed open during the drain; log:\n{log}"
    );
    match &resp {
        Ok(r) => assert_eq!(
            r.status,
            200,
            "the request in flight at SIGTERM: {}\nlog:\n{log}",
            r.describe()
        ),
        Err(e) => panic!(
            "the request in flight at SIGTERM was cut off ({e}) {:?} after the signal; \
             a graceful shutdown must let it finish\nlog:\n{log}",
            signalled.elapsed()
        ),
    }
    let status = exit
        .unwrap_or_else(|| panic!("the gateway was still running 40 s after SIGTERM; log:\n{log}"));
    assert!(
        status.success(),
        "exit status after SIGTERM: {status}; log:\n{log}"
    );
    let after_answer = exited_at.saturating_duration_since(answered_at);
    println!(
        "busy gateway: /readyz 503 {readyz_at:?} after SIGTERM, request answered 200 {:?} \
         after SIGTERM, exit {after_answer:?} after that",
        answered_at.saturating_duration_since(signalled)
    );
    assert!(
        after_answer < Duration::from_secs(1),
        "the gateway exited {after_answer:?} after the last request was answered \
         ({:?} after SIGTERM; shutdown_timeout_seconds = 30); log:\n{log}",
        signalled.elapsed()
    );
    assert_eq!(
        up.count(),
        1,
        "the upstream saw another request during the drain"
    );
}

#[test]
fn sigterm_answers_the_first_request_of_a_connection_accepted_before_it() {
    use std::io::Read as _;
    let dir = TempDir::new("sigterm-fresh");
    let up = MockUpstream::start();
    let jwks = MockJwks::start(standard_jwks());
    let (config, proxy, admin) = subprocess_config_with(&dir, &up, &jwks, 30);
    let mut gw = Proc::spawn(&config, false, dir.path("gateway.log"));
    assert!(
        serving(proxy, admin, Duration::from_secs(10)),
        "the gateway was not ready and listening within 10 s; log:\n{}",
        gw.log_text()
    );
    // Connected (and accepted by the gateway) before the signal; the
    // request head only follows it — as when a client's bytes are a moment
    // behind its connect.
    let mut conn = std::net::TcpStream::connect_timeout(&proxy, Duration::from_secs(2))
        .expect("connect to the proxy");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    // A connection still in the kernel's accept queue when the listener
    // closes is reset: that is not the case under test.
    assert!(
        wait_until(Duration::from_secs(5), || accept_queue(proxy) == Some(0)),
        "the gateway did not accept the connection within 5 s (accept queue {:?})",
        accept_queue(proxy)
    );
    gw.signal("TERM");
    std::thread::sleep(Duration::from_millis(50));
    let written = conn.write_all(b"GET /public/late HTTP/1.1\r\nHost: gw\r\n\r\n");
    let mut answer = Vec::new();
    let read = conn.read_to_end(&mut answer);
    let exit = gw.wait_exit(Duration::from_secs(10));
    let log = gw.log_text();
    let text = String::from_utf8_lossy(&answer);
    assert!(
        written.is_ok() && text.starts_with("HTTP/1.1 200"),
        "the request sent 50 ms after SIGTERM on a connection accepted before it: \
         write {written:?}, read {read:?}, answer {text:?}; log:\n{log}"
    );
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "the answer during the drain keeps the connection alive: {text:?}"
    );
    assert_eq!(
        up.count(),
        1,
        "the upstream did not get the late request once"
    );
    let status = exit
        .unwrap_or_else(|| panic!("the gateway was still running 10 s after SIGTERM; log:\n{log}"));
    assert!(
        status.success(),
        "exit status after SIGTERM: {status}; log:\n{log}"
    );
}

#[test]
fn sigterm_gives_up_on_requests_still_in_flight_at_the_shutdown_timeout() {
    let dir = TempDir::new("sigterm-timeout");
    let up = MockUpstream::start();
    up.set_delay(Duration::from_secs(5));
    let jwks = MockJwks::start(standard_jwks());
    let (config, proxy, admin) = subprocess_config_with(&dir, &up, &jwks, 1);
    let mut gw = Proc::spawn(&config, false, dir.path("gateway.log"));
    assert!(
        serving(proxy, admin, Duration::from_secs(10)),
        "the gateway was not ready and listening within 10 s; log:\n{}",
        gw.log_text()
    );
    let in_flight = std::thread::spawn(move || {
        try_send_raw(proxy, &build_request("GET", "/public/stuck", &[], None))
    });
    assert!(
        wait_until(Duration::from_secs(5), || up.count() >= 1),
        "the request never reached the upstream; log:\n{}",
        gw.log_text()
    );
    let signalled = Instant::now();
    gw.signal("TERM");
    let exit = gw.wait_exit(Duration::from_secs(10));
    let took = signalled.elapsed();
    let resp = in_flight.join().expect("request thread");
    let log = gw.log_text();
    let status = exit
        .unwrap_or_else(|| panic!("the gateway was still running 10 s after SIGTERM; log:\n{log}"));
    assert!(
        status.success(),
        "exit status after SIGTERM: {status}; log:\n{log}"
    );
    println!("stuck request: gateway exited {took:?} after SIGTERM (shutdown_timeout_seconds = 1)");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(2500),
        "exited {took:?} after SIGTERM; expected about shutdown_timeout_seconds = 1; log:\n{log}"
    );
    assert!(
        resp.is_err(),
        "the request slower than the shutdown timeout was answered: {:?}",
        resp.map(|r| r.describe())
    );
}

#[test]
fn sigquit_hands_the_listeners_to_an_upgraded_process() {
    let help = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--help"])
        .output()
        .expect("portcullis run --help");
    let help_text = String::from_utf8_lossy(&help.stdout).into_owned();
    if !help_text.contains("--upgrade") {
        println!("`portcullis run --help` has no --upgrade flag: skipping the upgrade test");
        return;
    }

    let dir = TempDir::new("upgrade");
    let up = MockUpstream::start();
    let jwks = MockJwks::start(standard_jwks());
    let (config, proxy, admin) = subprocess_config(&dir, &up, &jwks);
    let sock = dir.path("upgrade.sock");
    let mut a = Proc::spawn(&config, false, dir.path("a.log"));
    assert!(
        serving(proxy, admin, Duration::from_secs(10)),
        "instance A was not ready and listening within 10 s; log:\n{}",
        a.log_text()
    );

    // Requests all along the hand-over.
    let stop = Arc::new(AtomicBool::new(false));
    type Outcome = (Instant, Result<u16, String>);
    let results: Arc<Mutex<Vec<Outcome>>> = Arc::new(Mutex::new(Vec::new()));
    let stream = {
        let (stop, results) = (stop.clone(), results.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(25);
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                n += 1;
                let r = try_send_raw(
                    proxy,
                    &build_request("GET", &format!("/public/{n}"), &[], None),
                )
                .map(|r| r.status);
                results
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((Instant::now(), r));
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));

    let mut b = Proc::spawn(&config, true, dir.path("b.log"));
    // B waits on upgrade_sock for the listeners (pingora retries 5 × 1 s).
    let listening = wait_until(Duration::from_secs(5), || sock.exists());
    if !listening {
        stop.store(true, Ordering::SeqCst);
        let _ = stream.join();
        panic!(
            "instance B (`run --upgrade`) never created {}; B log:\n{}",
            sock.display(),
            b.log_text()
        );
    }
    let quit_at = Instant::now();
    a.signal("QUIT");

    // A sends its sockets, keeps serving for pingora's close timeout (5 s),
    // then exits; B serves from then on.
    let a_exit = a.wait_exit(Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    stream.join().expect("request stream thread");
    let results = results.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (a_log, b_log) = (a.log_text(), b.log_text());
    let logs = format!("--- A log ---\n{a_log}\n--- B log ---\n{b_log}");

    assert!(
        a_exit.is_some(),
        "instance A still running 20 s after SIGQUIT\n{logs}"
    );
    assert!(
        b.running(),
        "instance B (pid {}) is not running after the hand-over\n{logs}",
        b.pid()
    );
    assert_ne!(a.pid(), b.pid());
    let failed: Vec<String> = results
        .iter()
        .filter(|(_, r)| r.as_ref().map_or(true, |s| *s != 200))
        .map(|(t, r)| {
            format!(
                "{:?} after SIGQUIT: {r:?}",
                t.saturating_duration_since(quit_at)
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the upgrade: {:?}\n{logs}",
        failed.len(),
        results.len(),
        &failed[..failed.len().min(10)]
    );
    let after = results.iter().filter(|(t, _)| *t > quit_at).count();
    assert!(
        after >= 10,
        "too few requests after SIGQUIT ({after}) to say anything\n{logs}"
    );
    println!(
        "upgrade: {} requests, {after} after SIGQUIT, all 200; A (pid {}) exited {:?}, B (pid {}) serving",
        results.len(),
        a.pid(),
        a_exit,
        b.pid()
    );
    // B, alone now, answers on the same addresses (proxy and admin).
    let resp = request(proxy, "GET", "/public/after", &[], None);
    assert_eq!(
        resp.status,
        200,
        "B on the proxy port: {}\n{logs}",
        resp.describe()
    );
    assert!(
        wait_ready(admin, Duration::from_secs(5)),
        "B's admin listener is not ready\n{logs}"
    );
    b.signal("TERM");
    assert!(
        b.wait_exit(Duration::from_secs(15)).is_some(),
        "instance B did not exit after SIGTERM\n{}",
        b.log_text()
    );
}
