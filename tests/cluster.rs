//! Issue 16 with `[cluster]`: gateway PROCESSES (the `portcullis` binary,
//! each with its own ports) sharing one real `redis-server` on loopback.
//!
//! * three replicas hammered round-robin admit together what one would:
//!   at most burst + rate × elapsed (+ 2), at least the burst, and the
//!   upstream sees exactly the admitted requests (nothing on a 429). That
//!   test uses `on_redis_error = "deny"` and `timeout_ms = 250`: with
//!   "local" and 50 ms, one slow Redis answer on a loaded machine rightly
//!   lets that replica count in process for a while (its own full burst);
//! * an invalidation on replica 1 (admin endpoint, a 2xx write on a route
//!   with `invalidates_client`, invalidate-all) reaches replicas 2 and 3
//!   within 1 s (measured and printed);
//! * Redis killed mid-test: `on_redis_error = "local"` keeps deciding in
//!   process (each replica its own burst, then 429), `/readyz` stays 200,
//!   the fallback metric rises; after a restart on the same port shared
//!   counting resumes within 5 s, the subscription comes back (the client
//!   cache is dropped once) and invalidations converge again;
//! * `on_redis_error = "deny"`: a frozen (`SIGSTOP`) or killed Redis gives
//!   503 `quota_unavailable`, forwards nothing, and never holds a request
//!   much past `timeout_ms`; a restart brings 200s back;
//! * a password from `redis_password_env` (and a wrong one: on_redis_error
//!   applies), never logged;
//! * `portcullis explain` with `[cluster]` spends no quota in Redis;
//! * `rediss://`: TLS to Redis with the CA from `SSL_CERT_FILE`; the same
//!   replica without it never gets a decision from Redis (503 with deny).
//!
//! `redis-server` must be installed (`make test-deps`): without it these
//! tests fail, they never skip. The tests run one at a time (each starts a
//! Redis and up to four gateway processes on a 2-core machine).

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::child::{explain_quota_line, GatewayProcess, Scratch};
use common::redis::{RedisServer, RedisTls};
use common::*;
use serde_json::json;

/// The admin token of every replica (`[admin] token_env`).
const ADMIN_TOKEN: &str = "cluster-admin-token-7Qx2";
const ADMIN_TOKEN_ENV: &str = "PORTCULLIS_TEST_CLUSTER_ADMIN_TOKEN";
const REDIS_PW_ENV: &str = "PORTCULLIS_TEST_CLUSTER_REDIS_PASSWORD";

/// What "answered quickly" means while Redis is away (`timeout_ms` = 50).
const QUICK: Duration = Duration::from_secs(1);
/// The contract's bound for an invalidation to reach every replica.
const CONVERGENCE: Duration = Duration::from_secs(1);
/// The contract's bound for shared counting to resume after Redis returns.
const RESUME: Duration = Duration::from_secs(5);

/// Quotas and routes of every replica.
///
/// * `hammer`: 5/s, burst 10 (the aggregate test);
/// * `q`: 0.5/s, burst 3 — no token comes back within 2 s, so a short
///   sequence admits exactly 3;
/// * `probe`: 100/s, burst 100 — requests that only show where counting
///   happens;
/// * `/read/{id}` has no quota; `PUT /v1.0/apiclients/{id}` invalidates
///   the client it names.
const ROUTES: &str = r#"
[[quotas]]
name = "hammer"
key = "client"
rate_per_second = 5.0
burst = 10

[[quotas]]
name = "q"
key = "client"
rate_per_second = 0.5
burst = 3

[[quotas]]
name = "probe"
key = "client"
rate_per_second = 100.0
burst = 100

[[routes]]
name = "hammer"
methods = ["GET"]
path = "/hammer/{id}"
upstream = "app"
quota = "hammer"

[[routes]]
name = "q"
methods = ["GET"]
path = "/q/{id}"
upstream = "app"
quota = "q"

[[routes]]
name = "probe"
methods = ["GET"]
path = "/probe/{id}"
upstream = "app"
quota = "probe"

[[routes]]
name = "read"
methods = ["GET"]
path = "/read/{id}"
upstream = "app"

[[routes]]
name = "update-client"
methods = ["PUT"]
path = "/v1.0/apiclients/{id}"
upstream = "app"
invalidates_client = "id"
"#;

/// One test at a time (see the module comment).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn token(client: &str) -> String {
    TokenBuilder::new(&TestKey::rsa())
        .client_id(client)
        .entitlements(&["manageAPIClients"])
        .build()
}

/// The contract's default `timeout_ms`, used where a test is about how
/// long a request may wait on Redis.
const TIMEOUT_MS: u64 = 50;
/// `timeout_ms` of tests whose point is exact shared counting: on a loaded
/// 2-core machine a Redis answer now and then takes more than 50 ms, and
/// with `on_redis_error = "local"` that request is (rightly) counted in
/// process, admitting more than one shared bucket would.
const RELAXED_TIMEOUT_MS: u64 = 250;

/// `[cluster]` for `redis`, with `on_redis_error`, `timeout_ms` and extra lines.
fn cluster_toml(redis: &RedisServer, on_redis_error: &str, timeout_ms: u64, extra: &str) -> String {
    format!(
        "[cluster]\nredis_url = {}\non_redis_error = {}\ntimeout_ms = {timeout_ms}\n{extra}\n",
        toml_str(&redis.url()),
        toml_str(on_redis_error)
    )
}

// === the mock IAM service ===

const IAM_PREFIX: &str = "/v1.0/apiclients/";

/// The IAM API-client endpoint: every client id exists and is enabled
/// (record id `rec-ID`, entitlement `manageAPIClients`) unless disabled here.
struct MockIam {
    server: MockServer,
    disabled: Arc<Mutex<HashSet<String>>>,
}

fn iam_client_id(req: &RecordedRequest) -> Option<String> {
    req.path().strip_prefix(IAM_PREFIX).map(str::to_string)
}

impl MockIam {
    fn start() -> MockIam {
        let disabled = Arc::new(Mutex::new(HashSet::new()));
        let d = disabled.clone();
        let server = MockServer::start(move |req| {
            let Some(id) = iam_client_id(req) else {
                return MockResponse::json(404, r#"{"messageId":"CSIAH0625E"}"#);
            };
            let enabled = !d.lock().unwrap_or_else(|e| e.into_inner()).contains(&id);
            MockResponse::json(
                200,
                json!({
                    "id": format!("rec-{id}"),
                    "clientId": id,
                    "enabled": enabled,
                    "entitlements": ["manageAPIClients"],
                    "ipFilterOp": null,
                    "ipFilters": [],
                })
                .to_string(),
            )
        });
        MockIam { server, disabled }
    }

    fn set_enabled(&self, client_id: &str, enabled: bool) {
        let mut d = self.disabled.lock().unwrap_or_else(|e| e.into_inner());
        if enabled {
            d.remove(client_id);
        } else {
            d.insert(client_id.to_string());
        }
    }

    fn calls_for(&self, client_id: &str) -> usize {
        self.server
            .requests()
            .iter()
            .filter(|r| iam_client_id(r).as_deref() == Some(client_id))
            .count()
    }

    fn clients_section(&self) -> String {
        format!(
            "[clients]\nsource = \"http\"\nurl = {}\nttl_seconds = 60\n",
            toml_str(&format!("{}{IAM_PREFIX}{{client_id}}", self.server.url()))
        )
    }
}

// === the cluster ===

/// One Redis, one mock upstream, one JWKS, optionally one IAM, and gateway
/// processes.
struct Cluster {
    redis: RedisServer,
    up: MockUpstream,
    jwks: MockJwks,
    iam: Option<MockIam>,
    replicas: Vec<GatewayProcess>,
}

/// What one request got, and whether it reached the upstream.
struct Sent {
    resp: RawResponse,
    forwarded: usize,
    took: Duration,
}

impl Cluster {
    fn new(redis: RedisServer, with_iam: bool) -> Cluster {
        Cluster {
            redis,
            up: MockUpstream::start(),
            jwks: MockJwks::start(standard_jwks()),
            iam: with_iam.then(MockIam::start),
            replicas: Vec::new(),
        }
    }

    /// `n` replicas with the same `[cluster]`, started together, ready.
    fn start(redis: RedisServer, with_iam: bool, n: usize, cluster: &str) -> Cluster {
        let mut c = Cluster::new(redis, with_iam);
        for _ in 0..n {
            c.spawn(cluster, &[]);
        }
        for r in &mut c.replicas {
            r.wait_ready();
        }
        c
    }

    /// The config of a replica (fresh ports each time).
    fn config(&self, cluster: &str) -> ConfigBuilder {
        // The first raw section lands in [admin].
        let mut b = ConfigBuilder::new()
            .raw(&format!("token_env = {}\n", toml_str(ADMIN_TOKEN_ENV)))
            .issuer("main", DEFAULT_ISSUER, &self.jwks.url(), "")
            .upstream("app", &self.up.url(), "");
        if let Some(iam) = &self.iam {
            b = b.raw(&iam.clients_section());
        }
        b.raw(ROUTES).raw(cluster)
    }

    /// Spawns one more replica (not waiting); returns its index.
    fn spawn(&mut self, cluster: &str, env: &[(&str, &str)]) -> usize {
        let mut all = vec![(ADMIN_TOKEN_ENV, ADMIN_TOKEN)];
        all.extend_from_slice(env);
        let i = self.replicas.len();
        let gw = GatewayProcess::spawn(&format!("replica{i}"), &self.config(cluster), &all);
        self.replicas.push(gw);
        i
    }

    fn get(&self, replica: usize, target: &str, token: &str) -> Sent {
        let before = self.up.count();
        let (resp, took) = self.replicas[replica].timed_get(target, token);
        Sent {
            resp,
            forwarded: self.up.count() - before,
            took,
        }
    }

    fn iam(&self) -> &MockIam {
        self.iam.as_ref().expect("this cluster has no IAM mock")
    }

    /// Every replica's `metric` (summed over matching series).
    fn metric_each(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.replicas
            .iter()
            .map(|r| r.metric(name, labels))
            .collect()
    }

    /// The last lines of every replica's log and of Redis's.
    fn logs(&self) -> String {
        let mut out = String::new();
        for (i, r) in self.replicas.iter().enumerate() {
            out.push_str(&format!("--- replica {i} ---\n{}\n", r.log_text()));
        }
        out.push_str(&format!("--- redis ---\n{}", self.redis.log_text()));
        out
    }

    /// Waits until `portcullis_cluster_subscribed` is `want` on every
    /// replica; returns how long that took, `None` past `timeout`.
    fn wait_subscribed(&self, want: f64, timeout: Duration) -> Option<Duration> {
        let started = Instant::now();
        wait_until(timeout, || {
            self.metric_each("portcullis_cluster_subscribed", &[])
                .iter()
                .all(|&v| v == want)
        })
        .then(|| started.elapsed())
    }
}

/// Asserts 200 forwarded once.
#[track_caller]
fn assert_admitted(s: &Sent, what: &str) {
    assert!(
        s.resp.status == 200 && s.forwarded == 1,
        "{what}: expected 200 forwarded once, got {} forwarded {} time(s): {}",
        s.resp.status,
        s.forwarded,
        s.resp.describe()
    );
}

/// Asserts a refusal `status` `code` that reached nothing upstream.
#[track_caller]
fn assert_refusal(s: &Sent, status: u16, code: &str, what: &str) {
    assert!(
        s.resp.status == status
            && s.resp.error_code().as_deref() == Some(code)
            && s.forwarded == 0
            && s.resp.header("x-request-id").is_some(),
        "{what}: expected {status} {code:?} with X-Request-Id, forwarded to nothing; got {} {:?}, forwarded {}: {}",
        s.resp.status,
        s.resp.error_code(),
        s.forwarded,
        s.resp.describe()
    );
}

/// Asserts 429 `rate_limited` with `Retry-After`, never forwarded.
#[track_caller]
fn assert_limited(s: &Sent, what: &str) {
    assert_refusal(s, 429, "rate_limited", what);
    assert!(
        s.resp
            .header("retry-after")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n >= 1),
        "{what}: Retry-After: {}",
        s.resp.describe()
    );
}

/// `n` GETs on `/q/…` (0.5/s, burst 3) for `client`, round-robin over
/// `replicas`; asserts every answer is 200 or 429 `rate_limited` and that
/// the upstream saw exactly the 200s; returns how many were admitted. A 503
/// `quota_unavailable` (`on_redis_error = "deny"`, Redis slower than
/// `timeout_ms`: nothing counted, nothing forwarded) is sent again.
fn round_robin_q(c: &Cluster, replicas: &[usize], client: &str, n: usize) -> usize {
    let t = token(client);
    let mut admitted = 0;
    for k in 0..n {
        let i = replicas[k % replicas.len()];
        let what = format!("{client} request {k} on replica {i}");
        let mut s = c.get(i, &format!("/q/{k}"), &t);
        for _ in 0..20 {
            if s.resp.status != 503 {
                break;
            }
            assert_refusal(&s, 503, "quota_unavailable", &what);
            eprintln!("{what}: 503 quota_unavailable, sent again");
            std::thread::sleep(Duration::from_millis(100));
            s = c.get(i, &format!("/q/{k}"), &t);
        }
        if s.resp.status == 200 {
            assert_admitted(&s, &what);
            admitted += 1;
        } else {
            assert_limited(&s, &what);
        }
    }
    admitted
}

/// What a replica should answer once an invalidation reached it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    /// 200, forwarded.
    Admitted,
    /// 403 `client_disabled`, not forwarded.
    Disabled,
}

/// Polls `GET /read/…` with `token` on `replicas` every 50 ms until each
/// answers `want` (3 s at most); asserts each took less than
/// [`CONVERGENCE`] from `t0` and returns the figures.
fn converge(
    c: &Cluster,
    replicas: &[usize],
    token: &str,
    want: Want,
    t0: Instant,
    what: &str,
) -> Vec<Duration> {
    let mut done: Vec<Option<Duration>> = vec![None; replicas.len()];
    let deadline = t0 + Duration::from_secs(3);
    loop {
        for (k, &i) in replicas.iter().enumerate() {
            if done[k].is_some() {
                continue;
            }
            let s = c.get(i, "/read/converge", token);
            let got = match s.resp.status {
                200 => {
                    assert_admitted(&s, what);
                    Want::Admitted
                }
                _ => {
                    assert_refusal(&s, 403, "client_disabled", what);
                    Want::Disabled
                }
            };
            if got == want {
                done[k] = Some(t0.elapsed());
            }
        }
        if done.iter().all(Option::is_some) || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "{what}: converged on replicas {replicas:?} after {:?}",
        done
    );
    let figures: Vec<Duration> = done
        .iter()
        .zip(replicas)
        .map(|(d, i)| {
            d.unwrap_or_else(|| {
                panic!(
                    "{what}: replica {i} did not converge within 3 s\n{}",
                    c.logs()
                )
            })
        })
        .collect();
    for (d, i) in figures.iter().zip(replicas) {
        assert!(
            *d < CONVERGENCE,
            "{what}: replica {i} took {d:?} (contract: < {CONVERGENCE:?})"
        );
    }
    figures
}

/// Sends `GET /probe/…` (burst 100) on each of `replicas` as client
/// `{tag}-{i}` every 100 ms until Redis holds that client's key, i.e. the
/// replica decides in Redis; returns how long each took from `since`, and
/// panics past `limit`. (The connection to Redis is made on first use: until
/// it stands, a replica falls back to `on_redis_error`.)
fn wait_counting_in_redis(
    c: &Cluster,
    replicas: &[usize],
    tag: &str,
    since: Instant,
    limit: Duration,
) -> Vec<Duration> {
    let mut done: Vec<Option<Duration>> = vec![None; replicas.len()];
    while done.iter().any(Option::is_none) && since.elapsed() < limit + Duration::from_secs(2) {
        for (slot, &i) in done.iter_mut().zip(replicas) {
            if slot.is_some() {
                continue;
            }
            let client = format!("{tag}-{i}");
            let s = c.get(i, "/probe/x", &token(&client));
            let what = format!("{client} probe on replica {i}");
            if s.resp.status == 200 {
                assert_admitted(&s, &what);
            } else {
                assert_refusal(&s, 503, "quota_unavailable", &what);
            }
            if !c.redis.keys(&format!("portcullis:*:{client}")).is_empty() {
                *slot = Some(since.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done.iter()
        .zip(replicas)
        .map(|(d, i)| match d {
            Some(d) if *d < limit => *d,
            _ => panic!(
                "{tag}: replica {i} did not decide in Redis within {limit:?}: {d:?}; keys {:?}\n{}",
                c.redis.keys("portcullis:*"),
                c.logs()
            ),
        })
        .collect()
}

// === the tests ===

#[test]
fn three_replicas_together_admit_what_one_would_and_forward_nothing_over_it() {
    let _one = serial();
    let redis = RedisServer::start();
    // "deny": a Redis answer slower than timeout_ms is a 503, never a
    // request admitted by a replica's own counter.
    let cluster = cluster_toml(&redis, "deny", RELAXED_TIMEOUT_MS, "");
    let c = Cluster::start(redis, false, 3, &cluster);
    let first = wait_counting_in_redis(&c, &[0, 1, 2], "warm", Instant::now(), RESUME);
    eprintln!("first decision in Redis after readiness: {first:?}");
    let t = token("client-1");
    let (rate, burst) = (5.0_f64, 10usize);

    let up_before = c.up.count();
    let mut admitted = 0usize;
    let mut limited = 0usize;
    let mut unavailable = 0usize;
    let mut per_replica = [0usize; 3];
    let mut first = Vec::new();
    let started = Instant::now();
    let mut k = 0usize;
    while started.elapsed() < Duration::from_secs(3) {
        let i = k % 3;
        let s = c.get(i, &format!("/hammer/{k}"), &t);
        let what = format!("hammer request {k} on replica {i}");
        let decided = match s.resp.status {
            200 => {
                assert_admitted(&s, &what);
                admitted += 1;
                per_replica[i] += 1;
                true
            }
            503 => {
                assert_refusal(&s, 503, "quota_unavailable", &what);
                unavailable += 1;
                false
            }
            _ => {
                assert_limited(&s, &what);
                limited += 1;
                true
            }
        };
        if decided && first.len() < burst {
            first.push(s.resp.status);
        }
        k += 1;
        std::thread::sleep(Duration::from_millis(3));
    }
    let elapsed = started.elapsed();
    let bound = burst as f64 + rate * elapsed.as_secs_f64() + 2.0;
    eprintln!(
        "hammer: {k} requests over {elapsed:?} round-robin on 3 replicas: {admitted} admitted \
         (bound {bound:.1}; one replica alone would allow the same), {limited} limited, \
         {unavailable} 503 (Redis slower than timeout_ms); admitted per replica {per_replica:?}; \
         redis errors per replica {:?}",
        c.metric_each("portcullis_redis_errors_total", &[("op", "quota")])
    );
    assert_eq!(
        first,
        vec![200; burst],
        "the first {burst} decided requests (a burst across the replicas) all pass"
    );
    assert!(
        admitted as f64 <= bound,
        "{admitted} admitted in {elapsed:?}: more than burst + rate × elapsed + 2 = {bound:.1} \
         (each replica counting alone would admit up to ~{:.0})\n{}",
        3.0 * (burst as f64 + rate * elapsed.as_secs_f64()),
        c.logs()
    );
    assert!(admitted >= burst, "only {admitted} admitted");
    assert!(
        per_replica.iter().all(|&n| n >= 1),
        "every replica admitted some: {per_replica:?}"
    );
    assert_eq!(
        c.up.count() - up_before,
        admitted,
        "the upstream saw exactly the admitted requests"
    );

    // The counters live in Redis under the contract's key, with an expiry.
    let key = "portcullis:quota:hammer:client:client-1";
    let keys = c.redis.keys("portcullis:*");
    assert!(
        keys.iter().any(|k| k == key),
        "Redis has no key {key:?}; keys: {keys:?}"
    );
    let ttl = c.redis.pttl(key);
    assert!(ttl > 0, "{key} has no expiry (PTTL {ttl})");

    // The decision metrics add up across the replicas.
    let sum = |outcome: &str| -> f64 {
        c.metric_each(
            "portcullis_quota_decisions_total",
            &[("route", "hammer"), ("outcome", outcome)],
        )
        .iter()
        .sum()
    };
    assert_eq!(
        (sum("allowed"), sum("limited"), sum("unavailable")),
        (admitted as f64, limited as f64, unavailable as f64),
        "portcullis_quota_decisions_total{{route=\"hammer\"}} summed over the replicas (allowed, limited, unavailable)"
    );
    let calls: f64 = c
        .metric_each(
            "portcullis_redis_duration_seconds_count",
            &[("op", "quota")],
        )
        .iter()
        .sum();
    let decided = admitted + limited;
    assert!(
        calls >= decided as f64,
        "portcullis_redis_duration_seconds{{op=\"quota\"}} counts {calls} calls for {decided} decisions in Redis"
    );
}

#[test]
fn an_invalidation_on_one_replica_reaches_the_others_within_a_second() {
    let _one = serial();
    let redis = RedisServer::start();
    let cluster = cluster_toml(&redis, "local", TIMEOUT_MS, "");
    let c = Cluster::start(redis, true, 3, &cluster);
    let subscribed = c.wait_subscribed(1.0, Duration::from_secs(5));
    assert!(
        subscribed.is_some(),
        "portcullis_cluster_subscribed never 1 on every replica: {:?}\n{}",
        c.metric_each("portcullis_cluster_subscribed", &[]),
        c.logs()
    );
    let t2 = token("client-2");
    let admin = token("admin-1");
    let iam = c.iam();

    for i in 0..3 {
        assert_admitted(&c.get(i, "/read/warm", &t2), &format!("warm replica {i}"));
    }
    assert_eq!(iam.calls_for("client-2"), 3, "one lookup per replica");
    // A change at the source alone is not seen: each replica has it cached.
    iam.set_enabled("client-2", false);
    for i in 0..3 {
        assert_admitted(
            &c.get(i, "/read/cached", &t2),
            &format!("replica {i} serves its cached record"),
        );
    }

    // 1. POST /admin/clients/{id}/invalidate on replica 0 only.
    let t0 = Instant::now();
    let r = c.replicas[0].admin_post("/admin/clients/client-2/invalidate", ADMIN_TOKEN);
    assert_eq!(r.status, 200, "admin invalidate: {}", r.describe());
    assert_refusal(
        &c.get(0, "/read/now", &t2),
        403,
        "client_disabled",
        "replica 0 evicted at once",
    );
    let by_admin = converge(&c, &[1, 2], &t2, Want::Disabled, t0, "admin invalidate");

    // 2. A 2xx write on a route with invalidates_client, on replica 0.
    iam.set_enabled("client-2", true);
    for i in [1, 2] {
        assert_refusal(
            &c.get(i, "/read/still-cached", &t2),
            403,
            "client_disabled",
            &format!("replica {i} keeps its cached (disabled) record"),
        );
    }
    let t0 = Instant::now();
    let auth = bearer(&admin);
    let r = c.replicas[0].request(
        "PUT",
        "/v1.0/apiclients/client-2",
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        Some(br#"{"enabled":true}"#),
    );
    assert_eq!(r.status, 200, "the write: {}", r.describe());
    let by_write = converge(&c, &[1, 2], &t2, Want::Admitted, t0, "write invalidate");

    // 3. POST /admin/clients/invalidate-all on replica 0.
    iam.set_enabled("client-2", false);
    for i in [1, 2] {
        assert_admitted(
            &c.get(i, "/read/cached-again", &t2),
            &format!("replica {i} serves its cached (enabled) record"),
        );
    }
    let t0 = Instant::now();
    let r = c.replicas[0].admin_post("/admin/clients/invalidate-all", ADMIN_TOKEN);
    assert_eq!(r.status, 200, "invalidate-all: {}", r.describe());
    let by_all = converge(&c, &[1, 2], &t2, Want::Disabled, t0, "invalidate-all");
    eprintln!(
        "invalidation convergence (replicas 2, 3): admin {by_admin:?}, write {by_write:?}, all {by_all:?}"
    );

    let sent = c.replicas[0].metric(
        "portcullis_cluster_invalidations_total",
        &[("direction", "sent")],
    );
    assert!(sent >= 3.0, "replica 0 sent {sent} invalidations");
    for i in [1, 2] {
        let received = c.replicas[i].metric(
            "portcullis_cluster_invalidations_total",
            &[("direction", "received")],
        );
        assert!(
            received >= 3.0,
            "replica {i} received {received} invalidations"
        );
    }
}

/// Five `GET /q/…` for `client` on each replica while Redis is away under
/// `on_redis_error = "local"`: each replica admits its own burst of 3, then
/// 429, each answer quick.
fn assert_decided_locally(c: &Cluster, client: &str) {
    let t = token(client);
    for i in 0..c.replicas.len() {
        for k in 0..5 {
            let s = c.get(i, &format!("/q/{client}-{k}"), &t);
            let what = format!("{client} #{k} on replica {i} without Redis");
            assert!(s.took < QUICK, "{what}: answered after {:?}", s.took);
            if k < 3 {
                assert_admitted(&s, &what);
            } else {
                assert_limited(&s, &what);
            }
        }
    }
}

#[test]
fn redis_killed_with_local_fallback_then_shared_counting_and_subscription_resume() {
    let _one = serial();
    let redis = RedisServer::start();
    let cluster = cluster_toml(&redis, "local", RELAXED_TIMEOUT_MS, "");
    let mut c = Cluster::start(redis, true, 3, &cluster);
    wait_counting_in_redis(&c, &[0, 1, 2], "warm", Instant::now(), RESUME);
    assert!(
        c.wait_subscribed(1.0, Duration::from_secs(5)).is_some(),
        "not subscribed at start: {:?}\n{}",
        c.metric_each("portcullis_cluster_subscribed", &[]),
        c.logs()
    );
    // Shared before the outage: 6 requests over 3 replicas admit 3.
    assert_eq!(
        round_robin_q(&c, &[0, 1, 2], "before", 6),
        3,
        "shared quota"
    );
    let t2 = token("client-2");
    for i in 0..3 {
        assert_admitted(&c.get(i, "/read/warm", &t2), &format!("warm {i}"));
    }
    assert_eq!(c.iam().calls_for("client-2"), 3);

    // Redis crashes.
    c.redis.kill();
    assert_decided_locally(&c, "down");
    for (i, r) in c.replicas.iter().enumerate() {
        assert_eq!(r.readyz(), Some(200), "replica {i} /readyz without Redis");
    }
    // A warning says so, rate-limited: not a line per request (each
    // replica decided at least 5 requests without Redis).
    for (i, r) in c.replicas.iter().enumerate() {
        let warnings: Vec<String> = r
            .log_all()
            .lines()
            .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains(" WARN "))
            .filter(|l| l.to_ascii_lowercase().contains("redis"))
            .map(str::to_string)
            .collect();
        assert!(
            (1..=5).contains(&warnings.len()),
            "replica {i}: {} WARN lines about Redis (expected 1 to 5, rate-limited):\n{}",
            warnings.len(),
            warnings.join("\n")
        );
    }
    let fallbacks = c.metric_each("portcullis_quota_fallbacks_total", &[]);
    assert!(
        fallbacks.iter().all(|&v| v >= 5.0),
        "portcullis_quota_fallbacks_total per replica: {fallbacks:?} (5 local decisions each)"
    );
    assert!(
        c.wait_subscribed(0.0, Duration::from_secs(5)).is_some(),
        "portcullis_cluster_subscribed still {:?} with Redis down",
        c.metric_each("portcullis_cluster_subscribed", &[])
    );

    // Redis returns on the same port, empty.
    c.redis.restart();
    let back = Instant::now();
    let resumed = wait_counting_in_redis(&c, &[0, 1, 2], "resumed", back, RESUME);
    eprintln!("shared counting resumed after Redis came back: {resumed:?}");
    assert_eq!(
        round_robin_q(&c, &[0, 1, 2], "after", 6),
        3,
        "the aggregate limit holds again"
    );

    // The subscription comes back, counted as a resubscription.
    let resubscribed = wait_until(RESUME.saturating_sub(back.elapsed()), || {
        c.metric_each("portcullis_cluster_subscribed", &[])
            .iter()
            .all(|&v| v == 1.0)
            && c.metric_each("portcullis_cluster_resubscriptions_total", &[])
                .iter()
                .all(|&v| v >= 1.0)
    });
    eprintln!("resubscribed {:?} after Redis came back", back.elapsed());
    assert!(
        resubscribed,
        "within {RESUME:?} of Redis's return: subscribed {:?}, resubscriptions {:?}\n{}",
        c.metric_each("portcullis_cluster_subscribed", &[]),
        c.metric_each("portcullis_cluster_resubscriptions_total", &[]),
        c.logs()
    );
    // Messages may have been missed: each replica dropped its client cache
    // once (client-2 is looked up again), and only once.
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..3 {
        assert_admitted(&c.get(i, "/read/after", &t2), &format!("client-2 on {i}"));
    }
    assert_eq!(
        c.iam().calls_for("client-2"),
        6,
        "every replica looked client-2 up again after resubscribing"
    );
    for i in 0..3 {
        assert_admitted(&c.get(i, "/read/again", &t2), &format!("client-2 on {i}"));
    }
    assert_eq!(
        c.iam().calls_for("client-2"),
        6,
        "the cache was dropped once"
    );

    // An invalidation published after the restart converges.
    c.iam().set_enabled("client-2", false);
    let t0 = Instant::now();
    let r = c.replicas[0].admin_post("/admin/clients/client-2/invalidate", ADMIN_TOKEN);
    assert_eq!(r.status, 200, "{}", r.describe());
    let figures = converge(
        &c,
        &[1, 2],
        &t2,
        Want::Disabled,
        t0,
        "admin invalidate after Redis restarted",
    );
    eprintln!("invalidation after the restart: {figures:?}");
}

/// Two `GET /q/…` for `client` on each replica while Redis does not answer
/// under `on_redis_error = "deny"`: 503 `quota_unavailable`, nothing
/// forwarded, each answer quick; a route without a quota still serves.
fn assert_denied_quickly(c: &Cluster, client: &str, why: &str) -> Duration {
    let t = token(client);
    let mut slowest = Duration::ZERO;
    for i in 0..c.replicas.len() {
        for k in 0..2 {
            let s = c.get(i, &format!("/q/{client}-{k}"), &t);
            let what = format!("{client} #{k} on replica {i}, Redis {why}");
            assert_refusal(&s, 503, "quota_unavailable", &what);
            assert!(s.took < QUICK, "{what}: answered after {:?}", s.took);
            slowest = slowest.max(s.took);
        }
        assert_admitted(
            &c.get(i, "/read/x", &t),
            &format!("a route without a quota on replica {i}, Redis {why}"),
        );
    }
    slowest
}

/// Polls `GET /q/…` on each replica (a fresh client each) until it is
/// admitted; returns how long each took from `since`.
fn wait_admitted_again(c: &Cluster, tag: &str, since: Instant) -> Vec<Duration> {
    let mut done: Vec<Option<Duration>> = vec![None; c.replicas.len()];
    while done.iter().any(Option::is_none) && since.elapsed() < RESUME + Duration::from_secs(2) {
        for (i, slot) in done.iter_mut().enumerate() {
            if slot.is_none() {
                let s = c.get(i, "/q/again", &token(&format!("{tag}-{i}")));
                if s.resp.status == 200 {
                    assert_admitted(&s, tag);
                    *slot = Some(since.elapsed());
                } else {
                    assert_refusal(&s, 503, "quota_unavailable", tag);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done.iter()
        .enumerate()
        .map(|(i, d)| match d {
            Some(d) if *d < RESUME => *d,
            _ => panic!(
                "{tag}: replica {i} not admitting within {RESUME:?}: {d:?}\n{}",
                c.logs()
            ),
        })
        .collect()
}

#[test]
fn redis_frozen_or_killed_with_deny_answers_503_quickly_and_forwards_nothing() {
    let _one = serial();
    let redis = RedisServer::start();
    let cluster = cluster_toml(&redis, "deny", TIMEOUT_MS, "");
    let mut c = Cluster::start(redis, false, 3, &cluster);
    let first = wait_counting_in_redis(&c, &[0, 1, 2], "warm", Instant::now(), RESUME);
    eprintln!("deny: first decision in Redis after readiness: {first:?}");
    for i in 0..3 {
        assert_admitted(
            &c.get(i, "/q/ok", &token(&format!("ok-{i}"))),
            &format!("replica {i} with Redis up"),
        );
    }

    // Slower than timeout_ms: the process is stopped, connections hang.
    c.redis.freeze();
    let slowest_frozen = assert_denied_quickly(&c, "frozen", "frozen");
    c.redis.thaw();
    let thawed = Instant::now();
    let after_thaw = wait_admitted_again(&c, "thawed", thawed);

    // Killed.
    c.redis.kill();
    let slowest_killed = assert_denied_quickly(&c, "killed", "killed");
    let unavailable = c.metric_each(
        "portcullis_quota_decisions_total",
        &[("route", "q"), ("outcome", "unavailable")],
    );
    assert!(
        unavailable.iter().all(|&v| v >= 4.0),
        "outcome=\"unavailable\" per replica: {unavailable:?}"
    );
    let errors: Vec<f64> = c.metric_each("portcullis_redis_errors_total", &[("op", "quota")]);
    assert!(
        errors.iter().all(|&v| v >= 1.0),
        "portcullis_redis_errors_total{{op=\"quota\"}} per replica: {errors:?}"
    );
    c.redis.restart();
    let back = Instant::now();
    let after_restart = wait_admitted_again(&c, "restarted", back);
    assert_eq!(
        round_robin_q(&c, &[0, 1, 2], "after", 6),
        3,
        "the aggregate limit holds again"
    );
    eprintln!(
        "deny: slowest 503 with Redis frozen {slowest_frozen:?}, killed {slowest_killed:?}; \
         admitting again after thaw {after_thaw:?}, after restart {after_restart:?}"
    );
}

#[test]
fn a_password_from_redis_password_env_is_used_and_a_wrong_one_triggers_on_redis_error() {
    let _one = serial();
    let password = "Redis-pw-6f1c2a";
    let wrong = "wrong-pw-93ab7";
    let redis = RedisServer::start_with_password(password);
    let pw_line = format!("redis_password_env = {}", toml_str(REDIS_PW_ENV));
    let deny = cluster_toml(&redis, "deny", RELAXED_TIMEOUT_MS, &pw_line);
    let local = cluster_toml(&redis, "local", RELAXED_TIMEOUT_MS, &pw_line);
    let mut c = Cluster::new(redis, false);
    let good_a = c.spawn(&deny, &[(REDIS_PW_ENV, password)]);
    let good_b = c.spawn(&deny, &[(REDIS_PW_ENV, password)]);
    let bad_deny = c.spawn(&deny, &[(REDIS_PW_ENV, wrong)]);
    let bad_local = c.spawn(&local, &[(REDIS_PW_ENV, wrong)]);
    let warm = token("warm");
    for r in &mut c.replicas {
        r.wait_serving("/read/warm", &warm);
    }
    wait_counting_in_redis(&c, &[good_a, good_b], "warm", Instant::now(), RESUME);

    // The right password: counted in Redis, shared by two replicas.
    assert_eq!(
        round_robin_q(&c, &[good_a, good_b], "pw", 5),
        3,
        "two replicas with the password share the quota"
    );
    let keys = c.redis.keys("portcullis:*");
    assert!(
        keys.iter().any(|k| k == "portcullis:quota:q:client:pw"),
        "no quota key in Redis: {keys:?}"
    );

    // A wrong password, deny: 503, nothing forwarded.
    let s = c.get(bad_deny, "/q/x", &token("pw-deny"));
    assert_refusal(&s, 503, "quota_unavailable", "wrong password, deny");
    assert!(s.took < QUICK, "wrong password, deny: {:?}", s.took);
    // A wrong password, local: counted in process.
    let t = token("pw-local");
    for k in 0..4 {
        let s = c.get(bad_local, &format!("/q/{k}"), &t);
        let what = format!("wrong password, local, #{k}");
        assert!(s.took < QUICK, "{what}: {:?}", s.took);
        if k < 3 {
            assert_admitted(&s, &what);
        } else {
            assert_limited(&s, &what);
        }
    }
    assert!(
        c.redis.keys("portcullis:*pw-local*").is_empty(),
        "the replica with a wrong password wrote to Redis"
    );
    assert!(
        c.replicas[bad_local].metric("portcullis_quota_fallbacks_total", &[]) >= 4.0,
        "fallbacks on the replica with a wrong password"
    );
    for (i, r) in c.replicas.iter().enumerate() {
        let log = r.log_all();
        assert!(
            !log.contains(password) && !log.contains(wrong),
            "replica {i} logged a Redis password:\n{log}"
        );
    }
}

#[test]
fn explain_with_a_cluster_spends_no_quota_in_redis() {
    let _one = serial();
    let redis = RedisServer::start();
    let dir = Scratch::new("cluster-explain");
    let jwks = dir.write("jwks.json", standard_jwks().as_bytes());
    let up = MockUpstream::start();
    let builder = ConfigBuilder::new()
        .raw(&format!(
            "[[issuers]]\nname = \"main\"\nissuer = {}\naudiences = [{}]\nalgorithms = {STANDARD_ALGORITHMS}\njwks_file = {}\n",
            toml_str(DEFAULT_ISSUER),
            toml_str(DEFAULT_AUDIENCE),
            toml_str(&jwks.display().to_string()),
        ))
        .upstream("app", &up.url(), "")
        .raw(ROUTES)
        .raw(&cluster_toml(&redis, "local", RELAXED_TIMEOUT_MS, ""));
    let config = dir.write("portcullis.toml", builder.build().as_bytes());
    let t = token("explainer");
    for i in 0..5 {
        let (quota_line, stdout) = explain_quota_line(&config, &t, "/q/x");
        // The line names the quota (`q`), its rate (0.5) and burst (3).
        let names = |l: &str| {
            let words: Vec<&str> = l
                .split(|ch: char| !(ch.is_alphanumeric() || ch == '.'))
                .collect();
            ["q", "0.5", "3"].iter().all(|w| words.contains(w))
        };
        assert!(
            quota_line.as_deref().is_some_and(names),
            "explain #{i}: no quota step line naming quota q, 0.5 and 3:\n{stdout}"
        );
    }
    let keys = quota_keys(&redis);
    assert!(keys.is_empty(), "explain wrote to Redis: {keys:?}");

    // A gateway on the same config still has the whole burst for that client.
    let mut gw = GatewayProcess::start("explain-check", &builder, &[]);
    // Until its connection to Redis stands, the gateway counts in process.
    let warm = token("explain-warm");
    assert!(
        wait_until(RESUME, || {
            gw.get("/probe/x", &warm);
            !redis.keys("portcullis:*:explain-warm").is_empty()
        }),
        "the gateway never counted in Redis"
    );
    for k in 0..3 {
        let before = up.count();
        let r = gw.get(&format!("/q/{k}"), &t);
        assert!(
            r.status == 200 && up.count() == before + 1,
            "burst #{k} after explaining: {}",
            r.describe()
        );
    }
    let before = up.count();
    let r = gw.get("/q/over", &t);
    assert!(
        r.status == 429
            && r.error_code().as_deref() == Some("rate_limited")
            && up.count() == before,
        "the 4th: {}",
        r.describe()
    );
    let keys = quota_keys(&redis);
    assert!(
        keys.iter()
            .any(|k| k == "portcullis:quota:q:client:explainer"),
        "the gateway counted the burst in Redis (positive control): {keys:?}"
    );
    gw.kill();
}

fn quota_keys(redis: &RedisServer) -> Vec<String> {
    redis.keys("portcullis:*")
}

/// A CA and a certificate for 127.0.0.1 it signed, written to `dir`.
fn tls_files(dir: &Scratch) -> RedisTls {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "portcullis test redis CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("self-sign the CA");
    let key = KeyPair::generate().expect("server key");
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server params");
    leaf.distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let cert = leaf
        .signed_by(&key, &ca_cert, &ca_key)
        .expect("sign the server certificate");
    RedisTls {
        ca: dir.write("ca.pem", ca_cert.pem().as_bytes()),
        cert: dir.write("redis.pem", cert.pem().as_bytes()),
        key: dir.write("redis.key", key.serialize_pem().as_bytes()),
    }
}

#[test]
fn rediss_with_the_ca_from_ssl_cert_file_and_refused_without_it() {
    let _one = serial();
    let dir = Scratch::new("redis-tls");
    let tls = tls_files(&dir);
    let ca = tls.ca.to_string_lossy().into_owned();
    let redis = RedisServer::start_tls(tls);
    assert!(redis.url().starts_with("rediss://"));
    let deny = cluster_toml(&redis, "deny", RELAXED_TIMEOUT_MS, "");
    let mut c = Cluster::new(redis, false);
    let trusted_a = c.spawn(&deny, &[("SSL_CERT_FILE", ca.as_str())]);
    let trusted_b = c.spawn(&deny, &[("SSL_CERT_FILE", ca.as_str())]);
    // Without the CA, the system roots do not know the server's certificate.
    let untrusted = c.spawn(&deny, &[]);
    let warm = token("warm");
    for r in &mut c.replicas {
        r.wait_serving("/read/warm", &warm);
    }
    let first = wait_counting_in_redis(&c, &[trusted_a, trusted_b], "warm", Instant::now(), RESUME);
    eprintln!("rediss: first decision in Redis after readiness: {first:?}");
    assert_eq!(
        round_robin_q(&c, &[trusted_a, trusted_b], "tls", 5),
        3,
        "two replicas share the quota over TLS\n{}",
        c.logs()
    );
    let keys = c.redis.keys("portcullis:*");
    assert!(
        keys.iter().any(|k| k == "portcullis:quota:q:client:tls"),
        "no quota key in Redis: {keys:?}"
    );
    // Not a slow first connection: still refused after Redis was given
    // time (the gateway rests 500 ms after a failure).
    for k in 0..2 {
        if k > 0 {
            std::thread::sleep(Duration::from_millis(700));
        }
        let s = c.get(untrusted, "/q/x", &token("tls-untrusted"));
        assert_refusal(
            &s,
            503,
            "quota_unavailable",
            &format!("#{k}: rediss:// with a certificate the replica does not trust, deny"),
        );
        assert!(s.took < QUICK, "#{k}: answered after {:?}", s.took);
    }
    assert!(
        c.redis.keys("portcullis:*tls-untrusted*").is_empty(),
        "the replica that does not trust the certificate reached Redis"
    );
}
