//! Steps 3, 5, 6 and 9 through the socket: the client IP behind trusted
//! proxies, client metadata (`[clients]`, http and static sources) with its
//! cache (TTL, negative TTL, single-flight, stale-if-error), the gateway's own
//! credential for the metadata source (bearer / OAuth client_credentials),
//! entitlements from token / metadata / both, `deny_self`, and invalidation
//! (after a write, and through the admin endpoints).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

/// Where the mock IAM service serves API clients.
const IAM_PREFIX: &str = "/v1.0/apiclients/";

/// The gateway's OAuth client at the mock token endpoint.
const GW_CLIENT_ID: &str = "gw-client";
const GW_CLIENT_SECRET: &str = "gw-secret-0123456789";

/// Routes of most tests: a read without entitlements, a read needing
/// `manageAPIClients`, and an update that invalidates the client it names.
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

[[routes]]
name = "update-client"
methods = ["PUT"]
path = "/v1.0/apiclients/{id}"
upstream = "app"
invalidates_client = "id"
"#;

const READ: &str = "/v1.0/apiclients/some-client";

// === helpers ===

/// A fresh env var holding `value` (unique per call: tests run in parallel
/// threads of one process).
fn unique_env(prefix: &str, value: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "PORTCULLIS_TEST_CLIENTS_{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    std::env::set_var(&name, value);
    name
}

/// A token for `client_id` with `entitlements`.
fn token(client_id: &str, entitlements: &[&str]) -> String {
    TokenBuilder::new(&TestKey::rsa())
        .client_id(client_id)
        .entitlements(entitlements)
        .build()
}

/// An IBM Verify API client as `GET /v1.0/apiclients/{id}` returns it.
fn api_client(
    record_id: &str,
    client_id: &str,
    enabled: bool,
    entitlements: &[&str],
    op: Option<&str>,
    filters: &[&str],
) -> Value {
    json!({
        "id": record_id,
        "clientId": client_id,
        "clientName": format!("{client_id} name"),
        "enabled": enabled,
        "entitlements": entitlements,
        "ipFilterOp": op,
        "ipFilters": filters,
        "overrideSettings": {"restrictScopes": false},
    })
}

/// An enabled client without IP filter.
fn plain_client(record_id: &str, client_id: &str, entitlements: &[&str]) -> Value {
    api_client(record_id, client_id, true, entitlements, None, &[])
}

/// The percent-decoded client id of a request to the mock IAM service.
fn iam_client_id(req: &RecordedRequest) -> Option<String> {
    let path = req.path();
    let raw = path.strip_prefix(IAM_PREFIX)?;
    Some(
        percent_encoding::percent_decode_str(raw)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

#[derive(Clone)]
struct Canned {
    status: u16,
    body: Vec<u8>,
    delay: Duration,
}

#[derive(Default)]
struct IamState {
    clients: HashMap<String, Canned>,
    /// Answer 500 to every request.
    failing: bool,
    /// When set, any other `Authorization` gets 401.
    require_auth: Option<String>,
}

/// The IAM service's API-client endpoint: answers `GET /v1.0/apiclients/{id}`
/// from a table (404 for unknown ids), switchable to failing.
struct MockIam {
    server: MockServer,
    state: Arc<Mutex<IamState>>,
}

impl MockIam {
    fn start() -> MockIam {
        let state = Arc::new(Mutex::new(IamState::default()));
        let s = state.clone();
        let server = MockServer::start(move |req| {
            let st = s.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(expected) = &st.require_auth {
                if req.header("authorization") != Some(expected.as_str()) {
                    return MockResponse::json(401, r#"{"messageId":"CSIAH0617E"}"#);
                }
            }
            if st.failing {
                return MockResponse::json(500, r#"{"messageId":"internal"}"#);
            }
            let canned = iam_client_id(req).and_then(|id| st.clients.get(&id).cloned());
            match canned {
                Some(c) => {
                    let mut r = MockResponse::json(c.status, c.body);
                    r.delay = c.delay;
                    r
                }
                None => MockResponse::json(404, r#"{"messageId":"CSIAH0625E"}"#),
            }
        });
        MockIam { server, state }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, IamState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves `client` (JSON) for `client_id`.
    fn put(&self, client_id: &str, client: Value) {
        self.put_raw(
            client_id,
            200,
            client.to_string().as_bytes(),
            Duration::ZERO,
        );
    }

    fn put_raw(&self, client_id: &str, status: u16, body: &[u8], delay: Duration) {
        self.state().clients.insert(
            client_id.to_string(),
            Canned {
                status,
                body: body.to_vec(),
                delay,
            },
        );
    }

    fn set_failing(&self, failing: bool) {
        self.state().failing = failing;
    }

    fn require_auth(&self, value: &str) {
        self.state().require_auth = Some(value.to_string());
    }

    /// `http://127.0.0.1:PORT/v1.0/apiclients/{client_id}`
    fn url_template(&self) -> String {
        format!("{}{IAM_PREFIX}{{client_id}}", self.server.url())
    }

    fn count(&self) -> usize {
        self.server.count()
    }

    /// Requests received for `client_id`.
    fn calls_for(&self, client_id: &str) -> usize {
        self.server
            .requests()
            .iter()
            .filter(|r| iam_client_id(r).as_deref() == Some(client_id))
            .count()
    }

    fn requests(&self) -> Vec<RecordedRequest> {
        self.server.requests()
    }
}

/// An OAuth 2.0 token endpoint for the gateway's own client: checks HTTP
/// Basic credentials and the grant, issues `tok-1`, `tok-2`, ...
struct MockTokenEndpoint {
    server: MockServer,
    issued: Arc<AtomicUsize>,
}

impl MockTokenEndpoint {
    fn start() -> MockTokenEndpoint {
        let issued = Arc::new(AtomicUsize::new(0));
        let n = issued.clone();
        let expected = format!(
            "Basic {}",
            STANDARD.encode(format!("{GW_CLIENT_ID}:{GW_CLIENT_SECRET}"))
        );
        let server = MockServer::start(move |req| {
            let body = String::from_utf8_lossy(&req.body).into_owned();
            let grant_ok = body
                .split('&')
                .any(|p| p == "grant_type=client_credentials");
            if req.method != "POST"
                || req.header("authorization") != Some(expected.as_str())
                || !grant_ok
            {
                return MockResponse::json(401, r#"{"error":"invalid_client"}"#);
            }
            let k = n.fetch_add(1, Ordering::SeqCst) + 1;
            MockResponse::json(
                200,
                json!({"access_token": format!("tok-{k}"), "token_type": "Bearer", "expires_in": 3600})
                    .to_string(),
            )
        });
        MockTokenEndpoint { server, issued }
    }

    fn url(&self) -> String {
        format!("{}/oauth2/token", self.server.url())
    }

    /// Tokens issued (successful requests).
    fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }
}

/// A gateway with `[clients]` in front of a mock upstream.
struct Env {
    up: MockUpstream,
    _jwks: MockJwks,
    gw: TestGateway,
}

/// What goes into the config besides the standard issuer and upstream `app`.
#[derive(Default)]
struct Setup<'a> {
    /// The whole `[clients]` section (with its header), or empty for none.
    clients: String,
    routes: &'a str,
    /// Extra `[server]` lines.
    server: &'a [&'a str],
    /// `[admin] token_env`.
    admin_token_env: Option<String>,
}

impl Env {
    fn start(setup: Setup<'_>) -> Env {
        let up = MockUpstream::start();
        let jwks = MockJwks::start(standard_jwks());
        let mut b = ConfigBuilder::new();
        if let Some(env) = &setup.admin_token_env {
            // The first raw section lands in `[admin]`, which `build` writes
            // just before the sections.
            b = b.raw(&format!("token_env = {}\n", toml_str(env)));
        }
        for line in setup.server {
            b = b.server(line);
        }
        let config = b
            .issuer("main", DEFAULT_ISSUER, &jwks.url(), "")
            .upstream("app", &up.url(), "")
            .raw(&setup.clients)
            .raw(setup.routes)
            .build();
        let gw = TestGateway::start(&config);
        Env {
            up,
            _jwks: jwks,
            gw,
        }
    }

    fn get(&self, target: &str, token: &str) -> RawResponse {
        self.gw.request_with_token("GET", target, token, &[], None)
    }

    fn get_with(&self, target: &str, token: &str, headers: &[(&str, &str)]) -> RawResponse {
        self.gw
            .request_with_token("GET", target, token, headers, None)
    }

    fn put(&self, target: &str, token: &str) -> RawResponse {
        self.gw.request_with_token(
            "PUT",
            target,
            token,
            &[("Content-Type", "application/json")],
            Some(br#"{"clientName":"renamed"}"#),
        )
    }
}

/// `[clients]` with the http source at `iam` and `extra` lines.
fn http_clients(iam: &MockIam, extra: &str) -> String {
    format!(
        "[clients]\nsource = \"http\"\nurl = {}\n{extra}\n",
        toml_str(&iam.url_template())
    )
}

fn start_http(iam: &MockIam, extra: &str) -> Env {
    Env::start(Setup {
        clients: http_clients(iam, extra),
        routes: ROUTES,
        ..Setup::default()
    })
}

#[track_caller]
fn assert_ok(resp: &RawResponse, up: &MockUpstream, what: &str) {
    assert_eq!(resp.status, 200, "{what}: {}", resp.describe());
    assert!(up.count() >= 1, "{what}: the upstream saw nothing");
}

/// Admin POST to the gateway's admin listener.
fn admin_post(gw: &TestGateway, path: &str, admin_token: Option<&str>) -> RawResponse {
    let addr: SocketAddr = gw.admin_addr().expect("admin listener");
    let auth = admin_token.map(bearer);
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    request(addr, "POST", path, &headers, None)
}

// === http source: allowed requests and what the metadata source sees ===

#[test]
fn allowed_client_is_forwarded_after_one_metadata_lookup() {
    let iam = MockIam::start();
    iam.put(
        "client-1",
        plain_client("rec-1", "client-1", &["readAPIClients"]),
    );
    let env = start_http(&iam, "");
    let resp = env.get(READ, &token("client-1", &["readAPIClients"]));
    assert_ok(&resp, &env.up, "known enabled client");
    assert_eq!(env.up.last().path(), READ);
    assert_eq!(
        env.up.last().header("x-portcullis-client-id"),
        Some("client-1")
    );
    let calls = iam.requests();
    assert_eq!(calls.len(), 1, "exactly one metadata lookup");
    assert_eq!(calls[0].method, "GET");
    assert_eq!(calls[0].target_str(), "/v1.0/apiclients/client-1");
    assert_eq!(
        calls[0].header("authorization"),
        None,
        "without bearer_env / token_url the gateway sends no credential \
         (and never the caller's token) to the metadata source"
    );
}

#[test]
fn client_id_is_percent_encoded_into_one_path_segment() {
    let iam = MockIam::start();
    let id = "team/ops svc";
    iam.put(id, plain_client("rec-odd", id, &[]));
    let env = start_http(&iam, "");
    let resp = env.get(READ, &token(id, &[]));
    assert_ok(&resp, &env.up, "client id with '/' and ' '");
    let calls = iam.requests();
    assert_eq!(calls.len(), 1, "exactly one metadata lookup");
    let target = calls[0].target_str();
    assert_eq!(target, "/v1.0/apiclients/team%2Fops%20svc");
    let segment = target.strip_prefix(IAM_PREFIX).unwrap_or_default();
    assert!(
        segment.contains("%2F") && segment.contains("%20") && !segment.contains('/'),
        "the client id must stay one encoded segment: {target}"
    );
}

#[test]
fn bearer_env_is_sent_to_the_metadata_source() {
    let iam = MockIam::start();
    iam.put("client-1", plain_client("rec-1", "client-1", &[]));
    let secret = "iam-api-token-42";
    iam.require_auth(&format!("Bearer {secret}"));
    let env = start_http(
        &iam,
        &format!("bearer_env = {}", toml_str(&unique_env("BEARER", secret))),
    );
    let resp = env.get(READ, &token("client-1", &[]));
    assert_ok(&resp, &env.up, "metadata source with bearer_env");
    assert_eq!(iam.count(), 1);
    assert_eq!(
        iam.requests()[0].header("authorization"),
        Some("Bearer iam-api-token-42")
    );
}

// === http source: refusals ===

#[test]
fn unknown_or_unnamed_client_is_refused() {
    let iam = MockIam::start();
    let env = start_http(&iam, "");
    let mut cases = Cases::new();

    let resp = env.get(READ, &token("nobody", &[]));
    cases.refused("metadata 404", &resp, 403, "unknown_client", &env.up);
    if iam.calls_for("nobody") != 1 {
        cases.fail(
            "metadata 404",
            format!("{} metadata calls (expected 1)", iam.calls_for("nobody")),
        );
    }

    let before = iam.count();
    let no_id = TokenBuilder::new(&TestKey::rsa())
        .without("client_id")
        .build();
    let resp = env.get(READ, &no_id);
    cases.refused(
        "token without client id claim",
        &resp,
        403,
        "unknown_client",
        &env.up,
    );
    if iam.count() != before {
        cases.fail(
            "token without client id claim",
            "the metadata source was asked although there is no client id".into(),
        );
    }
    cases.finish();
}

#[test]
fn client_rules_enabled_and_ip_filter() {
    let iam = MockIam::start();
    iam.put(
        "disabled",
        api_client("rec-d", "disabled", false, &[], None, &[]),
    );
    iam.put(
        "allow-ten",
        api_client(
            "rec-a",
            "allow-ten",
            true,
            &[],
            Some("allow"),
            &["10.0.0.0/8", "192.0.2.7"],
        ),
    );
    iam.put(
        "allow-empty",
        api_client("rec-e", "allow-empty", true, &[], Some("allow"), &[]),
    );
    iam.put(
        "allow-loopback",
        api_client(
            "rec-l",
            "allow-loopback",
            true,
            &[],
            Some("allow"),
            &["127.0.0.0/8"],
        ),
    );
    iam.put(
        "deny-loopback",
        api_client(
            "rec-x",
            "deny-loopback",
            true,
            &[],
            Some("deny"),
            &["127.0.0.1"],
        ),
    );
    iam.put(
        "deny-other",
        api_client(
            "rec-o",
            "deny-other",
            true,
            &[],
            Some("deny"),
            &["10.0.0.0/8"],
        ),
    );
    let env = start_http(&iam, "");
    let mut cases = Cases::new();
    for (client, code) in [
        ("disabled", "client_disabled"),
        ("allow-ten", "client_ip_denied"),
        ("allow-empty", "client_ip_denied"),
        ("deny-loopback", "client_ip_denied"),
    ] {
        let resp = env.get(READ, &token(client, &[]));
        cases.refused(client, &resp, 403, code, &env.up);
    }
    for client in ["allow-loopback", "deny-other"] {
        let resp = env.get(READ, &token(client, &[]));
        let mut problems = Vec::new();
        if resp.status != 200 {
            problems.push(format!("status {} (expected 200)", resp.status));
        }
        if env.up.count() != 1 {
            problems.push(format!(
                "upstream saw {} request(s), expected 1",
                env.up.count()
            ));
        }
        cases.check(client, problems, Some(&resp));
        env.up.clear();
    }
    cases.finish();
}

/// A 2xx answer that is not a usable record of the client asked for is a
/// refusal of that client (403 `invalid_client_record`); a source that does
/// not answer (5xx, timeout) or refuses the gateway's question (other 4xx)
/// fails closed with 503. Neither is ever cached.
#[test]
fn invalid_or_failing_metadata_fails_closed() {
    let iam = MockIam::start();
    let record = |id: &str, extra: Value| {
        let mut v = json!({"clientId": id, "id": "r"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v.to_string().into_bytes()
    };
    let invalid: Vec<(&str, Vec<u8>)> = vec![
        (
            "bad-cidr",
            record(
                "bad-cidr",
                json!({"enabled": true, "ipFilterOp": "allow", "ipFilters": ["10.0.0.0/33"]}),
            ),
        ),
        (
            "host-bits",
            record(
                "host-bits",
                json!({"enabled": true, "ipFilterOp": "allow", "ipFilters": ["10.1.2.3/8"]}),
            ),
        ),
        (
            "enabled-yes",
            record("enabled-yes", json!({"enabled": "yes", "entitlements": []})),
        ),
        (
            "no-enabled",
            record("no-enabled", json!({"entitlements": []})),
        ),
        (
            "bad-op",
            record(
                "bad-op",
                json!({"enabled": true, "ipFilterOp": "maybe", "ipFilters": []}),
            ),
        ),
        (
            "ents-string",
            record(
                "ents-string",
                json!({"enabled": true, "entitlements": "readAPIClients"}),
            ),
        ),
        (
            "other-client",
            record("someone-else", json!({"enabled": true})),
        ),
        (
            "no-client-id",
            json!({"id": "r", "enabled": true}).to_string().into_bytes(),
        ),
        ("array", b"[1, 2]".to_vec()),
        ("not-json", b"<html>maintenance</html>".to_vec()),
        ("truncated", br#"{"id": "r", "enabled": tr"#.to_vec()),
    ];
    for (id, body) in &invalid {
        iam.put_raw(id, 200, body, Duration::ZERO);
    }
    iam.put_raw("err-500", 500, br#"{"messageId":"x"}"#, Duration::ZERO);
    iam.put_raw("err-503", 503, b"", Duration::ZERO);
    iam.put_raw("err-400", 400, br#"{"messageId":"x"}"#, Duration::ZERO);
    iam.put_raw(
        "slow",
        200,
        plain_client("rec-s", "slow", &[]).to_string().as_bytes(),
        Duration::from_millis(1500),
    );
    let env = start_http(&iam, "timeout_ms = 300");
    let mut cases = Cases::new();
    let expected = invalid
        .iter()
        .map(|(id, _)| (*id, 403, "invalid_client_record"))
        .chain([
            ("err-500", 503, "metadata_unavailable"),
            ("err-503", 503, "metadata_unavailable"),
            ("err-400", 503, "metadata_unavailable"),
            ("slow", 503, "metadata_unavailable"),
        ]);
    for (id, status, code) in expected {
        // Twice: an unusable answer is never cached, each request asks again.
        for round in 1..=2 {
            let resp = env.get(READ, &token(id, &[]));
            cases.refused(id, &resp, status, code, &env.up);
            if iam.calls_for(id) != round {
                cases.fail(
                    id,
                    format!(
                        "round {round}: the source was asked {} time(s)",
                        iam.calls_for(id)
                    ),
                );
            }
        }
    }
    cases.finish();
}

#[test]
fn failing_source_with_nothing_cached_is_503() {
    let iam = MockIam::start();
    iam.put("client-1", plain_client("rec-1", "client-1", &[]));
    iam.set_failing(true);
    let env = start_http(&iam, "");
    let resp = env.get(READ, &token("client-1", &[]));
    assert_refused(&resp, 503, "metadata_unavailable", &env.up);
    assert_eq!(iam.calls_for("client-1"), 1);
    // A failure is not cached: the source recovers, the next request passes.
    iam.set_failing(false);
    let resp = env.get(READ, &token("client-1", &[]));
    assert_ok(&resp, &env.up, "after the source recovered");
    assert_eq!(iam.calls_for("client-1"), 2);
}

#[test]
fn unreachable_source_is_503() {
    let env = Env::start(Setup {
        clients: format!(
            "[clients]\nsource = \"http\"\nurl = {}\ntimeout_ms = 500\n",
            toml_str(&format!(
                "http://127.0.0.1:{}/v1.0/apiclients/{{client_id}}",
                free_port()
            ))
        ),
        routes: ROUTES,
        ..Setup::default()
    });
    let resp = env.get(READ, &token("client-1", &[]));
    assert_refused(&resp, 503, "metadata_unavailable", &env.up);
}

// === the cache ===

#[test]
fn cache_ttl_one_lookup_within_ttl_and_another_after() {
    let iam = MockIam::start();
    iam.put("client-1", plain_client("rec-1", "client-1", &[]));
    let env = start_http(&iam, "ttl_seconds = 1");
    let t = token("client-1", &[]);
    assert_ok(&env.get(READ, &t), &env.up, "first");
    assert_ok(&env.get(READ, &t), &env.up, "second, within ttl");
    assert_eq!(
        iam.calls_for("client-1"),
        1,
        "two requests within ttl: one lookup"
    );
    std::thread::sleep(Duration::from_millis(1150));
    assert_ok(&env.get(READ, &t), &env.up, "third, after ttl");
    assert_eq!(iam.calls_for("client-1"), 2, "after ttl: a second lookup");
}

#[test]
fn changes_at_the_source_apply_after_ttl() {
    let iam = MockIam::start();
    iam.put("client-1", plain_client("rec-1", "client-1", &[]));
    let env = start_http(&iam, "ttl_seconds = 1");
    let t = token("client-1", &[]);
    assert_ok(&env.get(READ, &t), &env.up, "while enabled");
    env.up.clear();
    iam.put(
        "client-1",
        api_client("rec-1", "client-1", false, &[], None, &[]),
    );
    std::thread::sleep(Duration::from_millis(1150));
    let resp = env.get(READ, &t);
    assert_refused(&resp, 403, "client_disabled", &env.up);
}

#[test]
fn not_found_is_cached_for_negative_ttl() {
    let iam = MockIam::start();
    let env = start_http(&iam, "ttl_seconds = 60\nnegative_ttl_seconds = 1");
    let t = token("ghost", &[]);
    let resp = env.get(READ, &t);
    assert_refused(&resp, 403, "unknown_client", &env.up);
    let resp = env.get(READ, &t);
    assert_refused(&resp, 403, "unknown_client", &env.up);
    assert_eq!(iam.calls_for("ghost"), 1, "404 cached within negative_ttl");
    // The client now exists; after negative_ttl it is looked up again.
    iam.put("ghost", plain_client("rec-g", "ghost", &[]));
    std::thread::sleep(Duration::from_millis(1150));
    let resp = env.get(READ, &t);
    assert_ok(&resp, &env.up, "after negative_ttl, the client exists");
    assert_eq!(iam.calls_for("ghost"), 2);
}

#[test]
fn concurrent_misses_make_one_metadata_call() {
    let iam = MockIam::start();
    iam.put_raw(
        "busy",
        200,
        plain_client("rec-b", "busy", &[]).to_string().as_bytes(),
        Duration::from_millis(400),
    );
    let env = start_http(&iam, "");
    let addr = env.gw.addr();
    let t = token("busy", &[]);
    let n = 20;
    let barrier = Barrier::new(n);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let (t, barrier) = (&t, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let auth = bearer(t);
                    request(addr, "GET", READ, &[("Authorization", auth.as_str())], None).status
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every concurrent request must pass: {statuses:?}"
    );
    assert_eq!(env.up.count(), n);
    assert_eq!(
        iam.calls_for("busy"),
        1,
        "{n} concurrent misses must make one metadata call"
    );
}

#[test]
fn stale_entry_is_served_while_the_source_fails() {
    let iam = MockIam::start();
    iam.put("client-1", plain_client("rec-1", "client-1", &[]));
    let env = start_http(&iam, "ttl_seconds = 1\nstale_if_error_seconds = 60");
    let t = token("client-1", &[]);
    assert_ok(&env.get(READ, &t), &env.up, "load");
    assert_eq!(iam.calls_for("client-1"), 1);
    iam.set_failing(true);
    std::thread::sleep(Duration::from_millis(1150));
    let resp = env.get(READ, &t);
    assert_ok(&resp, &env.up, "stale entry while the source answers 500");
    assert!(
        iam.calls_for("client-1") >= 2,
        "after ttl the gateway must try the source again (calls: {})",
        iam.calls_for("client-1")
    );
}

#[test]
fn without_stale_if_error_an_expired_entry_fails_closed() {
    let iam = MockIam::start();
    iam.put("client-1", plain_client("rec-1", "client-1", &[]));
    let env = start_http(&iam, "ttl_seconds = 1\nstale_if_error_seconds = 0");
    let t = token("client-1", &[]);
    assert_ok(&env.get(READ, &t), &env.up, "load");
    env.up.clear();
    iam.set_failing(true);
    std::thread::sleep(Duration::from_millis(1150));
    let resp = env.get(READ, &t);
    assert_refused(&resp, 503, "metadata_unavailable", &env.up);
    assert_eq!(iam.calls_for("client-1"), 2);
}

// === entitlements_from ===

fn entitlements_env(iam: &MockIam, from: Option<&str>) -> Env {
    let extra = from
        .map(|f| format!("entitlements_from = {}", toml_str(f)))
        .unwrap_or_default();
    start_http(iam, &extra)
}

#[test]
fn entitlements_default_both_revocation_at_the_source_wins() {
    let iam = MockIam::start();
    iam.put(
        "revoked",
        plain_client("rec-r", "revoked", &["readAPIClients"]),
    );
    iam.put(
        "granted",
        plain_client("rec-g", "granted", &["readAPIClients", "manageAPIClients"]),
    );
    let env = entitlements_env(&iam, None);
    let resp = env.get("/manage/x", &token("revoked", &["manageAPIClients"]));
    assert_refused(&resp, 403, "insufficient_entitlements", &env.up);
    // Metadata alone does not grant what the token lacks.
    let resp = env.get("/manage/x", &token("granted", &["readAPIClients"]));
    assert_refused(&resp, 403, "insufficient_entitlements", &env.up);
    // Both agree.
    let resp = env.get("/manage/x", &token("granted", &["manageAPIClients"]));
    assert_ok(&resp, &env.up, "token and metadata both grant it");
}

#[test]
fn entitlements_explicit_both_behaves_as_default() {
    let iam = MockIam::start();
    iam.put(
        "revoked",
        plain_client("rec-r", "revoked", &["readAPIClients"]),
    );
    let env = entitlements_env(&iam, Some("both"));
    let resp = env.get("/manage/x", &token("revoked", &["manageAPIClients"]));
    assert_refused(&resp, 403, "insufficient_entitlements", &env.up);
}

#[test]
fn entitlements_from_token() {
    let iam = MockIam::start();
    iam.put(
        "revoked",
        plain_client("rec-r", "revoked", &["readAPIClients"]),
    );
    iam.put(
        "granted",
        plain_client("rec-g", "granted", &["manageAPIClients"]),
    );
    let env = entitlements_env(&iam, Some("token"));
    let resp = env.get("/manage/x", &token("revoked", &["manageAPIClients"]));
    assert_ok(&resp, &env.up, "token grants it, metadata ignored");
    env.up.clear();
    let resp = env.get("/manage/x", &token("granted", &["readAPIClients"]));
    assert_refused(&resp, 403, "insufficient_entitlements", &env.up);
}

#[test]
fn entitlements_from_metadata() {
    let iam = MockIam::start();
    iam.put(
        "revoked",
        plain_client("rec-r", "revoked", &["readAPIClients"]),
    );
    iam.put(
        "granted",
        plain_client("rec-g", "granted", &["manageAPIClients"]),
    );
    let env = entitlements_env(&iam, Some("metadata"));
    let resp = env.get("/manage/x", &token("granted", &["readAPIClients"]));
    assert_ok(&resp, &env.up, "metadata grants it, token lacks it");
    env.up.clear();
    let resp = env.get("/manage/x", &token("revoked", &["manageAPIClients"]));
    assert_refused(&resp, 403, "insufficient_entitlements", &env.up);
}

// === OAuth client_credentials towards the metadata source ===

fn oauth_clients(iam: &MockIam, tokens: &MockTokenEndpoint, extra: &str) -> String {
    http_clients(
        iam,
        &format!(
            "token_url = {}\nclient_id = {}\nclient_secret_env = {}\nscope = \"apiclients.read\"\n{extra}",
            toml_str(&tokens.url()),
            toml_str(GW_CLIENT_ID),
            toml_str(&unique_env("OAUTH_SECRET", GW_CLIENT_SECRET)),
        ),
    )
}

#[test]
fn oauth_token_is_obtained_once_and_sent_to_the_source() {
    let iam = MockIam::start();
    let tokens = MockTokenEndpoint::start();
    iam.require_auth("Bearer tok-1");
    for id in ["c-a", "c-b", "c-c"] {
        iam.put(id, plain_client(&format!("rec-{id}"), id, &[]));
    }
    let env = Env::start(Setup {
        clients: oauth_clients(&iam, &tokens, ""),
        routes: ROUTES,
        ..Setup::default()
    });
    for id in ["c-a", "c-b", "c-c"] {
        let resp = env.get(READ, &token(id, &[]));
        assert_ok(&resp, &env.up, id);
    }
    assert_eq!(iam.count(), 3, "three different clients: three lookups");
    for req in iam.requests() {
        assert_eq!(req.header("authorization"), Some("Bearer tok-1"));
    }
    assert_eq!(tokens.issued(), 1, "one token for several lookups");
    let token_reqs = tokens.server.requests();
    assert_eq!(token_reqs.len(), 1);
    let form = String::from_utf8_lossy(&token_reqs[0].body).into_owned();
    assert!(
        form.split('&').any(|p| p == "scope=apiclients.read"),
        "scope in the token request: {form:?}"
    );
}

#[test]
fn oauth_token_is_renewed_once_after_a_401() {
    let iam = MockIam::start();
    let tokens = MockTokenEndpoint::start();
    iam.put("client-1", plain_client("rec-1", "client-1", &[]));
    // tok-1 is refused (revoked at the IAM service); tok-2 is accepted.
    iam.require_auth("Bearer tok-2");
    let env = Env::start(Setup {
        clients: oauth_clients(&iam, &tokens, ""),
        routes: ROUTES,
        ..Setup::default()
    });
    let resp = env.get(READ, &token("client-1", &[]));
    assert_ok(&resp, &env.up, "after one renewal");
    assert_eq!(
        tokens.issued(),
        2,
        "the token endpoint is asked again after 401"
    );
    let auths: Vec<Option<String>> = iam
        .requests()
        .iter()
        .map(|r| r.header("authorization").map(str::to_string))
        .collect();
    assert_eq!(
        auths,
        vec![
            Some("Bearer tok-1".to_string()),
            Some("Bearer tok-2".to_string())
        ],
        "one retry with the renewed token"
    );
}

#[test]
fn oauth_401_twice_is_not_retried_forever() {
    let iam = MockIam::start();
    let tokens = MockTokenEndpoint::start();
    iam.put("client-1", plain_client("rec-1", "client-1", &[]));
    iam.require_auth("Bearer never-issued");
    let env = Env::start(Setup {
        clients: oauth_clients(&iam, &tokens, ""),
        routes: ROUTES,
        ..Setup::default()
    });
    let resp = env.get(READ, &token("client-1", &[]));
    assert_refused(&resp, 503, "metadata_unavailable", &env.up);
    assert_eq!(iam.count(), 2, "one attempt and one retry");
    assert_eq!(tokens.issued(), 2);
}

#[test]
fn oauth_token_endpoint_refusing_the_gateway_fails_closed() {
    let iam = MockIam::start();
    let tokens = MockTokenEndpoint::start();
    iam.put("client-1", plain_client("rec-1", "client-1", &[]));
    let clients = http_clients(
        &iam,
        &format!(
            "token_url = {}\nclient_id = {}\nclient_secret_env = {}\n",
            toml_str(&tokens.url()),
            toml_str(GW_CLIENT_ID),
            toml_str(&unique_env("OAUTH_WRONG", "wrong-secret")),
        ),
    );
    let env = Env::start(Setup {
        clients,
        routes: ROUTES,
        ..Setup::default()
    });
    let resp = env.get(READ, &token("client-1", &[]));
    assert_refused(&resp, 503, "metadata_unavailable", &env.up);
    assert_eq!(iam.count(), 0, "no lookup without a token");
}

// === invalidation ===

/// Waits (≤ 2 s) until a request by `t` makes the directory look `client`
/// up again; returns whether it did. Invalidation after a write runs once
/// the response is on its way, so the first request may still beat it.
fn refetched(env: &Env, iam: &MockIam, t: &str, client: &str, before: usize) -> bool {
    wait_until(Duration::from_secs(2), || {
        let r = env.get(READ, t);
        assert_eq!(r.status, 200, "{}", r.describe());
        iam.calls_for(client) > before
    })
}

#[test]
fn successful_write_invalidates_the_named_client() {
    let iam = MockIam::start();
    iam.put(
        "admin-1",
        plain_client("rec-admin", "admin-1", &["manageAPIClients"]),
    );
    iam.put("client-2", plain_client("rec-2", "client-2", &[]));
    let env = start_http(&iam, "ttl_seconds = 60");
    let admin = token("admin-1", &["manageAPIClients"]);
    let t2 = token("client-2", &[]);

    assert_ok(&env.get(READ, &t2), &env.up, "client-2 loads");
    assert_ok(&env.get(READ, &t2), &env.up, "client-2 cached");
    assert_eq!(iam.calls_for("client-2"), 1);

    // A failed write does not invalidate.
    env.up.set_response(500, br#"{"messageId":"boom"}"#);
    let resp = env.put("/v1.0/apiclients/rec-2", &admin);
    assert_eq!(resp.status, 500, "{}", resp.describe());
    env.up.set_response(400, br#"{"messageId":"bad"}"#);
    let resp = env.put("/v1.0/apiclients/rec-2", &admin);
    assert_eq!(resp.status, 400, "{}", resp.describe());
    env.up.set_response(200, br#"{"upstream":"ok"}"#);
    std::thread::sleep(Duration::from_millis(200));
    assert_ok(&env.get(READ, &t2), &env.up, "client-2 after failed writes");
    assert_eq!(
        iam.calls_for("client-2"),
        1,
        "a non-2xx write must not invalidate"
    );

    // A write to another record does not invalidate client-2.
    let resp = env.put("/v1.0/apiclients/rec-other", &admin);
    assert_eq!(resp.status, 200, "{}", resp.describe());
    std::thread::sleep(Duration::from_millis(200));
    assert_ok(
        &env.get(READ, &t2),
        &env.up,
        "client-2 after unrelated write",
    );
    assert_eq!(
        iam.calls_for("client-2"),
        1,
        "unrelated write kept the entry"
    );

    // A 2xx write to client-2's record id does.
    let resp = env.put("/v1.0/apiclients/rec-2", &admin);
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert!(
        refetched(&env, &iam, &t2, "client-2", 1),
        "after a 2xx PUT on rec-2, client-2's metadata must be fetched again (calls: {})",
        iam.calls_for("client-2")
    );
}

#[test]
fn successful_write_by_client_id_also_invalidates() {
    let iam = MockIam::start();
    iam.put(
        "admin-1",
        plain_client("rec-admin", "admin-1", &["manageAPIClients"]),
    );
    iam.put("client-2", plain_client("rec-2", "client-2", &[]));
    let env = start_http(&iam, "ttl_seconds = 60");
    let t2 = token("client-2", &[]);
    assert_ok(&env.get(READ, &t2), &env.up, "client-2 loads");
    assert_eq!(iam.calls_for("client-2"), 1);
    let resp = env.put(
        "/v1.0/apiclients/client-2",
        &token("admin-1", &["manageAPIClients"]),
    );
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert!(
        refetched(&env, &iam, &t2, "client-2", 1),
        "a 2xx PUT naming the client id must invalidate it too"
    );
}

#[test]
fn admin_invalidation_endpoints() {
    let admin_token = "admin-token-Zq83";
    let iam = MockIam::start();
    iam.put("client-1", plain_client("rec-1", "client-1", &[]));
    iam.put("client-2", plain_client("rec-2", "client-2", &[]));
    let env = Env::start(Setup {
        clients: http_clients(&iam, "ttl_seconds = 60"),
        routes: ROUTES,
        admin_token_env: Some(unique_env("ADMIN", admin_token)),
        ..Setup::default()
    });
    let t1 = token("client-1", &[]);
    let t2 = token("client-2", &[]);
    assert_ok(&env.get(READ, &t1), &env.up, "client-1 loads");
    assert_ok(&env.get(READ, &t2), &env.up, "client-2 loads");
    assert_eq!(iam.count(), 2);

    // Without the token, or with a wrong one: 401, nothing evicted.
    for (label, tok) in [
        ("no token", None),
        ("wrong token", Some("admin-token-Zq84")),
    ] {
        for path in [
            "/admin/clients/client-1/invalidate",
            "/admin/clients/invalidate-all",
        ] {
            let r = admin_post(&env.gw, path, tok);
            assert_eq!(r.status, 401, "{label} {path}: {}", r.describe());
        }
    }
    assert_ok(&env.get(READ, &t1), &env.up, "client-1 still cached");
    assert_eq!(
        iam.calls_for("client-1"),
        1,
        "a refused admin call evicts nothing"
    );

    // One client, by client id.
    let r = admin_post(
        &env.gw,
        "/admin/clients/client-1/invalidate",
        Some(admin_token),
    );
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_ok(&env.get(READ, &t1), &env.up, "client-1 after invalidate");
    assert_eq!(iam.calls_for("client-1"), 2, "client-1 fetched again");
    assert_ok(&env.get(READ, &t2), &env.up, "client-2 untouched");
    assert_eq!(iam.calls_for("client-2"), 1, "client-2 kept");

    // One client, by record id.
    let r = admin_post(
        &env.gw,
        "/admin/clients/rec-2/invalidate",
        Some(admin_token),
    );
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_ok(
        &env.get(READ, &t2),
        &env.up,
        "client-2 after invalidate by record id",
    );
    assert_eq!(iam.calls_for("client-2"), 2, "client-2 fetched again");

    // Everything.
    let r = admin_post(&env.gw, "/admin/clients/invalidate-all", Some(admin_token));
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_ok(
        &env.get(READ, &t1),
        &env.up,
        "client-1 after invalidate-all",
    );
    assert_ok(
        &env.get(READ, &t2),
        &env.up,
        "client-2 after invalidate-all",
    );
    assert_eq!(iam.calls_for("client-1"), 3, "client-1 fetched again");
    assert_eq!(iam.calls_for("client-2"), 3, "client-2 fetched again");
}

#[test]
fn admin_endpoints_are_off_without_token_env() {
    let iam = MockIam::start();
    iam.put("client-1", plain_client("rec-1", "client-1", &[]));
    let env = start_http(&iam, "");
    assert_ok(&env.get(READ, &token("client-1", &[])), &env.up, "load");
    for path in [
        "/admin/clients/client-1/invalidate",
        "/admin/clients/invalidate-all",
    ] {
        for tok in [None, Some("anything")] {
            let r = admin_post(&env.gw, path, tok);
            assert_eq!(r.status, 404, "{path} ({tok:?}): {}", r.describe());
        }
    }
    assert_ok(
        &env.get(READ, &token("client-1", &[])),
        &env.up,
        "still cached",
    );
    assert_eq!(iam.calls_for("client-1"), 1);
}

// === static source ===

const STATIC_CLIENTS: &str = r#"
[clients]
source = "static"

[[clients.static]]
client_id = "static-on"
id = "rec-on"
enabled = true
entitlements = ["readAPIClients", "manageAPIClients"]

[[clients.static]]
client_id = "static-reader"
enabled = true
entitlements = ["readAPIClients"]

[[clients.static]]
client_id = "static-off"
enabled = false
entitlements = ["manageAPIClients"]

[[clients.static]]
client_id = "static-allow-ten"
enabled = true
ip_filter_op = "allow"
ip_filters = ["10.0.0.0/8"]

[[clients.static]]
client_id = "static-allow-loopback"
enabled = true
ip_filter_op = "allow"
ip_filters = ["127.0.0.1"]

[[clients.static]]
client_id = "static-deny-loopback"
enabled = true
ip_filter_op = "deny"
ip_filters = ["127.0.0.0/8"]

[[clients.static]]
client_id = "static-deny-other"
enabled = true
ip_filter_op = "deny"
ip_filters = ["192.0.2.0/24"]
"#;

#[test]
fn static_source_rules() {
    let env = Env::start(Setup {
        clients: STATIC_CLIENTS.to_string(),
        routes: ROUTES,
        ..Setup::default()
    });
    let mut cases = Cases::new();
    let all = ["readAPIClients", "manageAPIClients"];
    for (label, client, target, code) in [
        ("unknown", "static-nobody", READ, "unknown_client"),
        ("disabled", "static-off", READ, "client_disabled"),
        (
            "allow 10/8 from loopback",
            "static-allow-ten",
            READ,
            "client_ip_denied",
        ),
        (
            "deny loopback",
            "static-deny-loopback",
            READ,
            "client_ip_denied",
        ),
        (
            "metadata lacks manageAPIClients",
            "static-reader",
            "/manage/x",
            "insufficient_entitlements",
        ),
    ] {
        let resp = env.get(target, &token(client, &all));
        cases.refused(label, &resp, 403, code, &env.up);
    }
    let no_id = TokenBuilder::new(&TestKey::rsa())
        .without("client_id")
        .build();
    let resp = env.get(READ, &no_id);
    cases.refused("no client id claim", &resp, 403, "unknown_client", &env.up);
    for (label, client, target) in [
        ("enabled", "static-on", READ),
        ("enabled, manage", "static-on", "/manage/x"),
        ("allow loopback", "static-allow-loopback", READ),
        ("deny other", "static-deny-other", READ),
    ] {
        let resp = env.get(target, &token(client, &all));
        let mut problems = Vec::new();
        if resp.status != 200 {
            problems.push(format!("status {} (expected 200)", resp.status));
        }
        if env.up.count() != 1 {
            problems.push(format!(
                "upstream saw {} request(s), expected 1",
                env.up.count()
            ));
        }
        cases.check(label, problems, Some(&resp));
        env.up.clear();
    }
    cases.finish();
}

// === client IP and trusted proxies ===

const IP_ROUTES: &str = r#"
[[routes]]
name = "allow-doc-net"
methods = ["GET"]
path = "/allow-doc/{id}"
upstream = "app"
ip_allow = ["203.0.113.0/24"]

[[routes]]
name = "allow-other-doc-net"
methods = ["GET"]
path = "/allow-doc2/{id}"
upstream = "app"
ip_allow = ["198.51.100.0/24"]

[[routes]]
name = "deny-doc-net"
methods = ["GET"]
path = "/deny-doc/{id}"
upstream = "app"
ip_deny = ["203.0.113.0/24"]

[[routes]]
name = "read-client"
methods = ["GET"]
path = "/v1.0/apiclients/{id}"
upstream = "app"
"#;

fn ip_env(iam: &MockIam, trusted: bool) -> Env {
    let server: &[&str] = if trusted {
        &["trusted_proxies = [\"127.0.0.0/8\"]"]
    } else {
        &[]
    };
    Env::start(Setup {
        clients: http_clients(iam, ""),
        routes: IP_ROUTES,
        server,
        ..Setup::default()
    })
}

#[test]
fn trusted_proxy_forwarded_for_names_the_client() {
    let iam = MockIam::start();
    iam.put("client-1", plain_client("rec-1", "client-1", &[]));
    let env = ip_env(&iam, true);
    let t = token("client-1", &[]);

    let resp = env.get_with("/allow-doc/1", &t, &[("X-Forwarded-For", "203.0.113.9")]);
    assert_ok(&resp, &env.up, "client 203.0.113.9 via a trusted proxy");
    assert_eq!(
        env.up.last().header_all("x-forwarded-for"),
        vec!["203.0.113.9, 127.0.0.1"],
        "a trusted proxy's chain is kept and the peer appended"
    );
    env.up.clear();

    // The right-most untrusted hop is the client, not the left-most.
    let chain = [("X-Forwarded-For", "198.51.100.1, 203.0.113.9")];
    let resp = env.get_with("/allow-doc/1", &t, &chain);
    assert_ok(&resp, &env.up, "right-most untrusted hop 203.0.113.9");
    env.up.clear();
    let resp = env.get_with("/allow-doc2/1", &t, &chain);
    assert_refused(&resp, 403, "ip_denied", &env.up);

    // Trusted hops are skipped.
    let resp = env.get_with(
        "/allow-doc/1",
        &t,
        &[("X-Forwarded-For", "203.0.113.9, 127.0.0.5")],
    );
    assert_ok(&resp, &env.up, "trusted hop skipped");
    env.up.clear();

    // RFC 7239 `Forwarded` is not the configured header (the default is
    // X-Forwarded-For): it names nobody, and the client is unknown.
    let forwarded = [(
        "Forwarded",
        "for=198.51.100.1, for=\"203.0.113.9:4711\";proto=https",
    )];
    let resp = env.get_with("/allow-doc/1", &t, &forwarded);
    assert_refused(&resp, 403, "ip_denied", &env.up);

    // ip_deny uses the same address.
    let resp = env.get_with("/deny-doc/1", &t, &[("X-Forwarded-For", "203.0.113.9")]);
    assert_refused(&resp, 403, "ip_denied", &env.up);
    // A trusted proxy that names no client: unknown, so IP rules fail
    // closed (never "the proxy is the client").
    let resp = env.get("/deny-doc/1", &t);
    assert_refused(&resp, 403, "ip_denied", &env.up);
    drop(env);

    // With client_ip_header = "forwarded", `Forwarded` names the client.
    let env = Env::start(Setup {
        clients: http_clients(&iam, ""),
        routes: IP_ROUTES,
        server: &[
            "trusted_proxies = [\"127.0.0.0/8\"]",
            "client_ip_header = \"forwarded\"",
        ],
        ..Setup::default()
    });
    let resp = env.get_with("/allow-doc/1", &t, &forwarded);
    assert_ok(&resp, &env.up, "Forwarded: right-most untrusted hop");
    assert_eq!(
        env.up.last().header_all("forwarded"),
        vec!["for=203.0.113.9, for=127.0.0.1"],
        "the believed chain is sent upstream in the same header"
    );
    assert!(env.up.last().header("x-forwarded-for").is_none());
}

#[test]
fn untrusted_peer_forwarded_for_is_ignored() {
    let iam = MockIam::start();
    iam.put("client-1", plain_client("rec-1", "client-1", &[]));
    let env = ip_env(&iam, false);
    let t = token("client-1", &[]);
    let resp = env.get_with("/allow-doc/1", &t, &[("X-Forwarded-For", "203.0.113.9")]);
    assert_refused(&resp, 403, "ip_denied", &env.up);
    assert_eq!(
        iam.count(),
        0,
        "route IP rules apply before any token or metadata work"
    );
    let resp = env.get_with("/deny-doc/1", &t, &[("X-Forwarded-For", "203.0.113.9")]);
    assert_ok(
        &resp,
        &env.up,
        "ip_deny 203.0.113.0/24, real client is loopback",
    );
    assert_eq!(
        env.up.last().header_all("x-forwarded-for"),
        vec!["127.0.0.1"],
        "an untrusted peer's X-Forwarded-For is replaced"
    );
}

#[test]
fn client_ip_filter_uses_the_resolved_client_ip() {
    let iam = MockIam::start();
    iam.put(
        "doc-only",
        api_client(
            "rec-d",
            "doc-only",
            true,
            &[],
            Some("allow"),
            &["203.0.113.0/24"],
        ),
    );
    iam.put(
        "no-doc",
        api_client("rec-n", "no-doc", true, &[], Some("deny"), &["203.0.113.9"]),
    );
    let xff = [("X-Forwarded-For", "203.0.113.9")];

    let env = ip_env(&iam, true);
    let resp = env.get_with(READ, &token("doc-only", &[]), &xff);
    assert_ok(&resp, &env.up, "allow filter matches the forwarded client");
    env.up.clear();
    let resp = env.get(READ, &token("doc-only", &[]));
    assert_refused(&resp, 403, "client_ip_denied", &env.up);
    let resp = env.get_with(READ, &token("no-doc", &[]), &xff);
    assert_refused(&resp, 403, "client_ip_denied", &env.up);
    // The trusted peer itself names no client: unknown, and a client's
    // deny filter fails closed as well.
    let resp = env.get(READ, &token("no-doc", &[]));
    assert_refused(&resp, 403, "client_ip_denied", &env.up);
    drop(env);

    // Without trusted proxies the header is ignored for the client's filter too.
    let env = ip_env(&iam, false);
    let resp = env.get_with(READ, &token("doc-only", &[]), &xff);
    assert_refused(&resp, 403, "client_ip_denied", &env.up);
    let resp = env.get_with(READ, &token("no-doc", &[]), &xff);
    assert_ok(
        &resp,
        &env.up,
        "forged X-Forwarded-For does not trip the deny filter",
    );
}

// === deny_self ===

const DENY_SELF_ROUTES: &str = r#"
[[routes]]
name = "update-client"
methods = ["PUT", "DELETE"]
path = "/v1.0/apiclients/{id}"
upstream = "app"
require_all = ["manageAPIClients"]
deny_self = "id"
"#;

#[test]
fn deny_self_refuses_the_callers_own_record() {
    let iam = MockIam::start();
    iam.put(
        "client-1",
        plain_client("rec-1", "client-1", &["manageAPIClients"]),
    );
    iam.put(
        "svc one",
        plain_client("rec-svc", "svc one", &["manageAPIClients"]),
    );
    let env = Env::start(Setup {
        clients: http_clients(&iam, ""),
        routes: DENY_SELF_ROUTES,
        ..Setup::default()
    });
    let t = token("client-1", &["manageAPIClients"]);
    let mut cases = Cases::new();
    for (label, method, target) in [
        ("own record id", "PUT", "/v1.0/apiclients/rec-1"),
        ("own client id", "PUT", "/v1.0/apiclients/client-1"),
        ("own record id, DELETE", "DELETE", "/v1.0/apiclients/rec-1"),
        ("own record id, encoded", "PUT", "/v1.0/apiclients/rec%2D1"),
    ] {
        let resp = env.gw.request_with_token(
            method,
            target,
            &t,
            &[("Content-Type", "application/json")],
            Some(b"{}"),
        );
        cases.refused(label, &resp, 403, "self_modification", &env.up);
    }
    let svc = token("svc one", &["manageAPIClients"]);
    let resp = env.put("/v1.0/apiclients/svc%20one", &svc);
    cases.refused(
        "own client id with a space, percent-encoded",
        &resp,
        403,
        "self_modification",
        &env.up,
    );
    cases.finish();

    let resp = env.put("/v1.0/apiclients/rec-2", &t);
    assert_ok(&resp, &env.up, "another client's record");
    assert_eq!(env.up.last().path(), "/v1.0/apiclients/rec-2");
    env.up.clear();
    let resp = env.put("/v1.0/apiclients/rec-1", &svc);
    assert_ok(&resp, &env.up, "svc one updating rec-1");
}

// === more sources of the client id, other answer shapes ===

#[test]
fn client_id_from_azp_or_cid_is_looked_up() {
    let iam = MockIam::start();
    iam.put("azp-client", plain_client("rec-azp", "azp-client", &[]));
    iam.put("cid-client", plain_client("rec-cid", "cid-client", &[]));
    let env = start_http(&iam, "");
    let azp = TokenBuilder::new(&TestKey::rsa())
        .without("client_id")
        .claim("azp", json!("azp-client"))
        .build();
    assert_ok(&env.get(READ, &azp), &env.up, "client id from azp");
    let cid = TokenBuilder::new(&TestKey::rsa())
        .without("client_id")
        .claim("cid", json!("cid-client"))
        .build();
    assert_ok(&env.get(READ, &cid), &env.up, "client id from cid");
    assert_eq!(iam.calls_for("azp-client"), 1);
    assert_eq!(iam.calls_for("cid-client"), 1);
}

#[test]
fn dot_segment_client_ids_are_unknown_without_asking_the_source() {
    let iam = MockIam::start();
    // Were `..` sent, the URL would resolve to /v1.0/ — make that a "client".
    iam.put("", plain_client("rec-root", "", &[]));
    let env = start_http(&iam, "");
    let mut cases = Cases::new();
    for id in [".", "..", ""] {
        let resp = env.get(READ, &token(id, &[]));
        cases.refused(
            &format!("client id {id:?}"),
            &resp,
            403,
            "unknown_client",
            &env.up,
        );
    }
    cases.finish();
    let targets: Vec<String> = iam.requests().iter().map(|r| r.target_str()).collect();
    assert!(targets.is_empty(), "the source was asked: {targets:?}");
}

#[test]
fn response_pointer_and_custom_fields() {
    let iam = MockIam::start();
    let wrap = |client: Value| json!({"total": 1, "apiClients": [client]});
    iam.put(
        "c-on",
        wrap(
            json!({"uuid": "u-1", "app": {"client": "c-on"}, "status": {"active": true}, "grants": ["manageAPIClients"],
                    "filter": {"op": "allow", "list": ["127.0.0.1"]}}),
        ),
    );
    iam.put(
        "c-off",
        wrap(
            json!({"uuid": "u-2", "app": {"client": "c-off"}, "status": {"active": false}, "grants": [],
                    "filter": {"op": null, "list": []}}),
        ),
    );
    iam.put(
        "c-far",
        wrap(
            json!({"uuid": "u-3", "app": {"client": "c-far"}, "status": {"active": true}, "grants": [],
                    "filter": {"op": "allow", "list": ["10.0.0.0/8"]}}),
        ),
    );
    // The IBM names are absent here: with the default pointers this would be invalid.
    iam.put("c-empty", json!({"total": 0, "apiClients": []}));
    let env = start_http(
        &iam,
        r#"response_pointer = "/apiClients/0"
[clients.fields]
enabled = "/status/active"
entitlements = "/grants"
ip_filter_op = "/filter/op"
ip_filters = "/filter/list"
id = "/uuid"
client_id = "/app/client"
"#,
    );
    let resp = env.get("/manage/x", &token("c-on", &["manageAPIClients"]));
    assert_ok(&resp, &env.up, "client read through custom pointers");
    env.up.clear();
    let mut cases = Cases::new();
    let resp = env.get(READ, &token("c-off", &[]));
    cases.refused(
        "status.active false",
        &resp,
        403,
        "client_disabled",
        &env.up,
    );
    let resp = env.get(READ, &token("c-far", &[]));
    cases.refused("filter allow 10/8", &resp, 403, "client_ip_denied", &env.up);
    let resp = env.get(READ, &token("c-empty", &[]));
    // A search answer with no match (nothing at the pointer) means "no such
    // client", like a 404.
    cases.refused(
        "nothing at the response pointer",
        &resp,
        403,
        "unknown_client",
        &env.up,
    );
    cases.finish();
}

#[test]
fn admin_invalidation_of_a_percent_encoded_client_id() {
    let admin_token = "admin-token-enc-77";
    let iam = MockIam::start();
    let id = "team/ops svc";
    iam.put(id, plain_client("rec-odd", id, &[]));
    let env = Env::start(Setup {
        clients: http_clients(&iam, "ttl_seconds = 60"),
        routes: ROUTES,
        admin_token_env: Some(unique_env("ADMIN_ENC", admin_token)),
        ..Setup::default()
    });
    let t = token(id, &[]);
    assert_ok(&env.get(READ, &t), &env.up, "load");
    let r = admin_post(
        &env.gw,
        "/admin/clients/team%2Fops%20svc/invalidate",
        Some(admin_token),
    );
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_ok(&env.get(READ, &t), &env.up, "after invalidate");
    assert_eq!(iam.calls_for(id), 2, "the encoded id names the client");
}

/// Single-flight must hold when the source fails too: during an outage a
/// burst of requests for one client must not queue up behind each other,
/// each making its own (slow) source call under the per-key lock.
#[test]
fn concurrent_misses_share_one_failing_call() {
    let iam = MockIam::start();
    iam.put_raw(
        "busy",
        200,
        plain_client("rec-b", "busy", &[]).to_string().as_bytes(),
        Duration::from_millis(1500),
    );
    // Every attempt times out after 300 ms.
    let env = start_http(&iam, "timeout_ms = 300");
    let addr = env.gw.addr();
    let t = token("busy", &[]);
    let n = 8;
    let barrier = Barrier::new(n);
    let started = std::time::Instant::now();
    let results: Vec<(u16, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let (t, barrier) = (&t, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let auth = bearer(t);
                    let status =
                        request(addr, "GET", READ, &[("Authorization", auth.as_str())], None)
                            .status;
                    (status, started.elapsed())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    assert!(
        results.iter().all(|(s, _)| *s == 503),
        "every request must fail closed: {results:?}"
    );
    assert_eq!(env.up.count(), 0);
    let slowest = results.iter().map(|(_, d)| *d).max().unwrap_or_default();
    assert!(
        iam.calls_for("busy") == 1 && slowest < Duration::from_millis(1200),
        "{n} concurrent misses against a failing source made {} source calls and the \
         slowest answer took {slowest:?} (expected 1 call, each answer within about one \
         timeout_ms = 300 ms)",
        iam.calls_for("busy")
    );
}
