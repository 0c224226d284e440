//! Issue 12, the security review's findings, through the socket: one test
//! (or a few) per finding, written from its reproduction.
//!
//! 1. the client IP never falls back to the trusted proxy (header bytes that
//!    do not parse make the client unknown, and IP rules fail closed);
//! 2. one forwarding header, chosen by `server.client_ip_header`, and the
//!    other client-address headers stripped in every spelling;
//! 3. pinned and upstream-credential headers can be neither nominated in
//!    `Connection` nor aliased with `_`, and are always set from the claim;
//! 4. a metadata answer is an answer (disabled, or `invalid_client_record`),
//!    only outages are served stale;
//! 5. the record must name the client asked for (`fields.client_id`);
//! 6. the token cache does not outlive the key that verified a token;
//! 7. a hostile `expires_in` at the token endpoint does not break anything;
//! 8. ids compared as the upstream compares them (UUIDs, `ids_case_insensitive`);
//! 9. the smaller leaks: duplicate `Content-Type`, encoded checked bodies, the
//!    text audit log, the admin token, form `_method`, the demo's `only` lists.
//!
//! Every address is loopback and every wait is bounded.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};

// === helpers: names, env, raw requests ===

/// One header line of a raw request: its name and value bytes.
type Header<'a> = (&'a str, &'a [u8]);

/// A name no other test (thread) of this process uses.
fn unique(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{tag}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A fresh env var holding `value` (tests run in parallel threads of one process).
fn unique_env(prefix: &str, value: &str) -> String {
    let name = unique(&format!("PORTCULLIS_TEST_TRUST_{prefix}"));
    std::env::set_var(&name, value);
    name
}

/// A token of `client_id` (no entitlements).
fn token(client_id: &str) -> String {
    TokenBuilder::new(&TestKey::rsa())
        .client_id(client_id)
        .build()
}

/// The bytes of one HTTP/1.1 request whose header values may hold any byte
/// (`\xff` included). Adds `Host`, `Authorization` (with `token`),
/// `Content-Length` (with a body) and `Connection: close` unless given.
fn raw_request(
    method: &str,
    target: &str,
    token: Option<&str>,
    headers: &[(&str, &[u8])],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n").into_bytes();
    if let Some(t) = token {
        out.extend_from_slice(format!("Authorization: Bearer {t}\r\n").as_bytes());
    }
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(b) = body {
        out.extend_from_slice(format!("Content-Length: {}\r\n", b.len()).as_bytes());
    }
    if !has("connection") {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if let Some(b) = body {
        out.extend_from_slice(b);
    }
    out
}

/// What is wrong with `resp` as a forwarded 200 that `up` saw exactly once.
fn forwarded_problems(resp: &RawResponse, up: &MockUpstream) -> Vec<String> {
    let mut problems = Vec::new();
    if resp.status != 200 {
        problems.push(format!("status {} (expected 200)", resp.status));
    }
    if up.count() != 1 {
        problems.push(format!(
            "the upstream saw {} request(s), expected 1",
            up.count()
        ));
    }
    problems
}

#[track_caller]
fn assert_forwarded(resp: &RawResponse, up: &MockUpstream, what: &str) {
    let problems = forwarded_problems(resp, up);
    assert!(
        problems.is_empty(),
        "{what}: {}\nresponse: {}",
        problems.join("; "),
        resp.describe()
    );
}

/// `name` with `_` read as `-`, lowercase (how CGI-style servers see it).
fn normalised(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// Every header of `req` whose name, `_` read as `-`, is `name`.
fn aliased<'a>(req: &'a RecordedRequest, name: &str) -> Vec<(&'a str, &'a str)> {
    req.headers
        .iter()
        .filter(|(n, _)| normalised(n) == name)
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect()
}

// === the world: a gateway, its upstream and its key set ===

struct World {
    up: MockUpstream,
    jwks: MockJwks,
    gw: TestGateway,
}

/// What goes into a world's config besides the standard issuer `main` and
/// the upstream `app`.
#[derive(Default)]
struct Spec<'a> {
    /// Extra `[server]` lines.
    server: &'a [&'a str],
    /// Extra `[admin]` lines.
    admin: &'a str,
    /// Extra lines of the issuer `main`.
    issuer: &'a str,
    /// Extra lines of the upstream `app`.
    upstream: &'a str,
    /// `[clients]` (with its header) or `[log]`, before the routes.
    sections: String,
    routes: &'a str,
}

impl World {
    fn start(spec: Spec<'_>) -> World {
        Self::start_with_keys(spec, standard_jwks())
    }

    fn start_with_keys(spec: Spec<'_>, keys: String) -> World {
        let up = MockUpstream::start();
        let jwks = MockJwks::start(keys);
        let mut b = ConfigBuilder::new();
        // The first raw section lands in `[admin]`, written just before them.
        b = b.raw(spec.admin);
        for line in spec.server {
            b = b.server(line);
        }
        let config = b
            .issuer("main", DEFAULT_ISSUER, &jwks.url(), spec.issuer)
            .upstream("app", &up.url(), spec.upstream)
            .raw(&spec.sections)
            .raw(spec.routes)
            .build();
        let gw = TestGateway::start(&config);
        World { up, jwks, gw }
    }

    fn send(&self, bytes: &[u8]) -> RawResponse {
        self.gw.send_raw(bytes)
    }

    fn get(&self, target: &str, token: &str, headers: &[(&str, &[u8])]) -> RawResponse {
        self.send(&raw_request("GET", target, Some(token), headers, None))
    }
}

// === a metadata source (IAM) of our own ===

/// Where the mock IAM service serves API clients by path.
const IAM_PREFIX: &str = "/v1.0/apiclients/";

#[derive(Default)]
struct IamState {
    /// Answer (status, body) per client id asked for; 404 for others.
    answers: HashMap<String, (u16, String)>,
    /// When set, every lookup gets this answer, whatever client it names
    /// (a search endpoint that ignores its filter).
    fixed: Option<(u16, String)>,
    /// When set, any other `Authorization` gets 401.
    require_auth: Option<String>,
}

/// The IAM service: answers `GET /v1.0/apiclients/{id}` and the search
/// form `GET /v1.0/apiclients?clientId={id}` from a table.
struct Iam {
    server: MockServer,
    state: Arc<Mutex<IamState>>,
}

/// The client id a request to the IAM asks for (path or `clientId=`).
fn asked_id(req: &RecordedRequest) -> Option<String> {
    let target = req.target_str();
    let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
    let raw = match path.strip_prefix(IAM_PREFIX) {
        Some(id) => id,
        None => query.split('&').find_map(|p| p.strip_prefix("clientId="))?,
    };
    Some(
        percent_encoding::percent_decode_str(raw)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

impl Iam {
    fn start() -> Iam {
        let state = Arc::new(Mutex::new(IamState::default()));
        let s = state.clone();
        let server = MockServer::start(move |req| {
            let st = s.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(expected) = &st.require_auth {
                if req.header("authorization") != Some(expected.as_str()) {
                    return MockResponse::json(401, r#"{"messageId":"CSIAH0617E"}"#);
                }
            }
            if let Some((status, body)) = &st.fixed {
                return MockResponse::json(*status, body.clone());
            }
            match asked_id(req).and_then(|id| st.answers.get(&id).cloned()) {
                Some((status, body)) => MockResponse::json(status, body),
                None => MockResponse::json(404, r#"{"messageId":"CSIAH0625E"}"#),
            }
        });
        Iam { server, state }
    }

    fn state(&self) -> MutexGuard<'_, IamState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers `body` (200) for `client_id`.
    fn put(&self, client_id: &str, body: Value) {
        self.put_raw(client_id, 200, &body.to_string());
    }

    fn put_raw(&self, client_id: &str, status: u16, body: &str) {
        self.state()
            .answers
            .insert(client_id.to_string(), (status, body.to_string()));
    }

    fn set_fixed(&self, answer: Option<Value>) {
        self.state().fixed = answer.map(|v| (200, v.to_string()));
    }

    /// `[clients]` asking `GET /v1.0/apiclients/{client_id}`, with `extra` lines.
    fn by_path(&self, extra: &str) -> String {
        format!(
            "[clients]\nsource = \"http\"\nurl = {}\n{extra}\n",
            toml_str(&format!("{}{IAM_PREFIX}{{client_id}}", self.server.url()))
        )
    }

    /// `[clients]` asking the search form, `response_pointer = "/apiClients/0"`.
    fn by_search(&self, extra: &str) -> String {
        format!(
            "[clients]\nsource = \"http\"\nurl = {}\nresponse_pointer = \"/apiClients/0\"\n{extra}\n",
            toml_str(&format!(
                "{}/v1.0/apiclients?clientId={{client_id}}",
                self.server.url()
            ))
        )
    }

    fn count(&self) -> usize {
        self.server.count()
    }

    /// Requests received for `client_id`.
    fn calls_for(&self, client_id: &str) -> usize {
        self.server
            .requests()
            .iter()
            .filter(|r| asked_id(r).as_deref() == Some(client_id))
            .count()
    }
}

/// An enabled IBM Verify API client without IP filter.
fn record(client_id: &str, record_id: &str) -> Value {
    json!({
        "id": record_id,
        "clientId": client_id,
        "clientName": format!("{client_id} name"),
        "enabled": true,
        "entitlements": [],
        "ipFilterOp": null,
        "ipFilters": [],
    })
}

/// A read route without entitlements (most client tests).
const READ_ROUTE: &str = r#"
[[routes]]
name = "read"
methods = ["GET"]
path = "/read/{id}"
upstream = "app"
"#;

// === 1. the client IP never falls back to the trusted proxy ===

const IP_ROUTES: &str = r#"
[[routes]]
name = "allow-ten"
path = "/allow-ten/{id}"
upstream = "app"
ip_allow = ["10.0.0.0/8"]

[[routes]]
name = "allow-internal"
path = "/allow-internal/{id}"
upstream = "app"
ip_allow = ["10.0.0.0/8", "127.0.0.0/8"]

[[routes]]
name = "deny-doc"
path = "/deny-doc/{id}"
upstream = "app"
ip_deny = ["203.0.113.0/24"]

[[routes]]
name = "open"
path = "/open/{id}"
upstream = "app"
"#;

/// `client-1` (the default token's) without IP filter, and `internal-only`,
/// whose own filter admits 10.0.0.0/8 and the proxy's network.
const IP_CLIENTS: &str = r#"
[clients]
source = "static"

[[clients.static]]
client_id = "client-1"
enabled = true

[[clients.static]]
client_id = "internal-only"
enabled = true
ip_filter_op = "allow"
ip_filters = ["10.0.0.0/8", "127.0.0.0/8"]
"#;

/// Behind a trusted proxy (every loopback address), reading `header`
/// (`None`: the default, X-Forwarded-For).
fn proxied(header: Option<&str>) -> World {
    let header_line = header.map(|h| format!("client_ip_header = {}", toml_str(h)));
    let mut server = vec!["trusted_proxies = [\"127.0.0.0/8\"]"];
    if let Some(l) = &header_line {
        server.push(l);
    }
    World::start(Spec {
        server: &server,
        sections: IP_CLIENTS.to_string(),
        routes: IP_ROUTES,
        ..Spec::default()
    })
}

/// The IP rules an unknown client (or 203.0.113.5) must not pass: label,
/// target, calling client, refusal code. The rules that admit the proxy's
/// own network are the reproduction: there the proxy's address, standing
/// in for a client it could not name, was admitted.
const IP_RULES: [(&str, &str, &str, &str); 4] = [
    (
        "route ip_allow 10/8",
        "/allow-ten/1",
        "client-1",
        "ip_denied",
    ),
    (
        "route ip_allow 10/8 and the proxy's network",
        "/allow-internal/1",
        "client-1",
        "ip_denied",
    ),
    (
        "route with ip_deny only",
        "/deny-doc/1",
        "client-1",
        "ip_denied",
    ),
    (
        "the client's own allow filter (10/8 and the proxy's network)",
        "/open/1",
        "internal-only",
        "client_ip_denied",
    ),
];

/// Sends every value of `refused` (header lines of `header`) against every
/// rule of [`IP_RULES`], expecting the refusal; then every value of
/// `admitted` (which name 10.1.2.3), expecting 200 and the upstream to
/// receive exactly the given value of `header`.
fn check_client_ip(w: &World, header: &str, refused: &[&[&[u8]]], admitted: &[(&[u8], &str)]) {
    let mut cases = Cases::new();
    for lines in refused {
        let shown: Vec<String> = lines
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        let headers: Vec<(&str, &[u8])> = lines.iter().map(|l| (header, *l)).collect();
        for (rule, target, client, code) in IP_RULES {
            let resp = w.get(target, &token(client), &headers);
            cases.refused(
                &format!("{header}: {shown:?} on {rule}"),
                &resp,
                403,
                code,
                &w.up,
            );
        }
    }
    for (value, upstream) in admitted {
        let shown = String::from_utf8_lossy(value);
        for (rule, target, client, _) in IP_RULES {
            let resp = w.get(target, &token(client), &[(header, value)]);
            let mut problems = forwarded_problems(&resp, &w.up);
            if let Some(req) = w.up.requests().first() {
                let got = req.header_all(header);
                if got != vec![*upstream] {
                    problems.push(format!("upstream {header} {got:?} (expected {upstream:?})"));
                }
            }
            cases.check(
                &format!("{header}: {shown:?} on {rule}"),
                problems,
                Some(&resp),
            );
            w.up.clear();
        }
    }
    cases.finish();
}

#[test]
fn garbage_in_x_forwarded_for_makes_the_client_unknown_never_the_proxy() {
    let w = proxied(None);
    check_client_ip(
        &w,
        "X-Forwarded-For",
        &[
            &[b"\xff, 203.0.113.5"],
            &[b"203.0.113.5"],
            &[b"10.1.2.3, \xff"],
            &[b"\xff"],
            &[b"10.1.2.3, unknown"],
            &[b"10.1.2.3, 127.0.0.9, \xff"],
            // Two lines: the later one holds the right-most hops.
            &[b"10.1.2.3", b"\xff"],
            // No header from the trusted proxy: nobody is named.
            &[],
        ],
        &[
            (b"10.1.2.3", "10.1.2.3, 127.0.0.1"),
            (b"\xff, 10.1.2.3", "10.1.2.3, 127.0.0.1"),
            (b"203.0.113.5, 10.1.2.3", "10.1.2.3, 127.0.0.1"),
            (b"10.1.2.3, 127.0.0.9", "10.1.2.3, 127.0.0.9, 127.0.0.1"),
        ],
    );
}

#[test]
fn garbage_in_forwarded_makes_the_client_unknown_never_the_proxy() {
    let w = proxied(Some("forwarded"));
    check_client_ip(
        &w,
        "Forwarded",
        &[
            &[b"for=\xff, for=203.0.113.5"],
            &[b"for=203.0.113.5"],
            &[b"for=10.1.2.3, for=\xff"],
            &[b"for=10.1.2.3, for=\"\xff\""],
            &[b"for=10.1.2.3, for=unknown"],
            &[b"for=10.1.2.3, proto=https"],
            &[b"for=10.1.2.3", b"for=\xff"],
            &[],
        ],
        &[
            (b"for=10.1.2.3", "for=10.1.2.3, for=127.0.0.1"),
            (
                b"for=\xff, for=\"10.1.2.3:4711\";proto=https",
                "for=10.1.2.3, for=127.0.0.1",
            ),
            (
                b"for=10.1.2.3;proto=https, for=127.0.0.9",
                "for=10.1.2.3, for=127.0.0.9, for=127.0.0.1",
            ),
        ],
    );
}

/// What the upstream received of every forwarding header, for messages.
fn forwarding_seen(req: &RecordedRequest) -> Vec<(String, String)> {
    req.headers
        .iter()
        .filter(|(n, _)| {
            let n = normalised(n);
            n == "forwarded" || n.starts_with("x-forwarded")
        })
        .cloned()
        .collect()
}

#[test]
fn the_chain_sent_upstream_holds_only_what_was_verified() {
    let mut cases = Cases::new();
    let t = token("client-1");
    for (header, cases_of_header) in [
        (
            None,
            [
                (&b"6.6.6.6, \xff, 10.1.2.3"[..], "10.1.2.3, 127.0.0.1"),
                (&b"10.1.2.3, \xff"[..], "unknown, 127.0.0.1"),
                (
                    &b"6.6.6.6, 10.1.2.3, 127.0.0.9"[..],
                    "10.1.2.3, 127.0.0.9, 127.0.0.1",
                ),
            ],
        ),
        (
            Some("forwarded"),
            [
                (
                    &b"for=6.6.6.6, for=\xff, for=10.1.2.3"[..],
                    "for=10.1.2.3, for=127.0.0.1",
                ),
                (&b"for=10.1.2.3, for=\xff"[..], "for=unknown, for=127.0.0.1"),
                (
                    &b"for=6.6.6.6, for=10.1.2.3, for=127.0.0.9"[..],
                    "for=10.1.2.3, for=127.0.0.9, for=127.0.0.1",
                ),
            ],
        ),
    ] {
        let w = proxied(header);
        let name = header.unwrap_or("x-forwarded-for");
        let other = if header.is_some() {
            "x-forwarded-for"
        } else {
            "forwarded"
        };
        for (sent, expected) in cases_of_header {
            let label = format!("{name}: {}", String::from_utf8_lossy(sent));
            let resp = w.get("/open/1", &t, &[(name, sent)]);
            let mut problems = forwarded_problems(&resp, &w.up);
            if let Some(req) = w.up.requests().first() {
                if req.header_all(name) != vec![expected] {
                    problems.push(format!(
                        "upstream {name} {:?} (expected {expected:?})",
                        req.header_all(name)
                    ));
                }
                if !req.header_all(other).is_empty() {
                    problems.push(format!("upstream has {other}: {:?}", req.header_all(other)));
                }
                let seen = forwarding_seen(req);
                if seen
                    .iter()
                    .any(|(_, v)| v.contains('\u{fffd}') || v.contains("6.6.6.6"))
                {
                    problems.push(format!("unverifiable or raw bytes passed on: {seen:?}"));
                }
            }
            cases.check(&label, problems, Some(&resp));
            w.up.clear();
        }
    }
    cases.finish();
}

// === 2. one forwarding header, chosen by config; the others stripped ===

#[test]
fn only_the_configured_forwarding_header_names_the_client() {
    let t = token("client-1");
    let mut cases = Cases::new();

    // Default: X-Forwarded-For. A client's `Forwarded` is ignored and removed.
    let w = proxied(None);
    let resp = w.get(
        "/allow-ten/1",
        &t,
        &[
            ("Forwarded", b"for=10.1.2.3"),
            ("X-Forwarded-For", b"203.0.113.5"),
        ],
    );
    cases.refused(
        "xff: Forwarded cannot override",
        &resp,
        403,
        "ip_denied",
        &w.up,
    );
    let resp = w.get("/allow-ten/1", &t, &[("Forwarded", b"for=10.1.2.3")]);
    cases.refused(
        "xff: Forwarded alone names nobody",
        &resp,
        403,
        "ip_denied",
        &w.up,
    );
    let resp = w.get(
        "/open/1",
        &t,
        &[
            ("Forwarded", b"for=10.1.2.3"),
            ("X-Forwarded-For", b"10.1.2.3"),
        ],
    );
    let mut problems = forwarded_problems(&resp, &w.up);
    if let Some(req) = w.up.requests().first() {
        if !req.header_all("forwarded").is_empty() {
            problems.push(format!(
                "upstream Forwarded {:?}",
                req.header_all("forwarded")
            ));
        }
        if req.header_all("x-forwarded-for") != vec!["10.1.2.3, 127.0.0.1"] {
            problems.push(format!(
                "upstream X-Forwarded-For {:?}",
                req.header_all("x-forwarded-for")
            ));
        }
    }
    cases.check("xff: Forwarded removed upstream", problems, Some(&resp));
    w.up.clear();
    drop(w);

    // `forwarded`: a client's X-Forwarded-For is ignored and removed.
    let w = proxied(Some("forwarded"));
    let resp = w.get(
        "/allow-ten/1",
        &t,
        &[
            ("X-Forwarded-For", b"10.1.2.3"),
            ("Forwarded", b"for=203.0.113.5"),
        ],
    );
    cases.refused(
        "forwarded: XFF cannot override",
        &resp,
        403,
        "ip_denied",
        &w.up,
    );
    let resp = w.get("/allow-ten/1", &t, &[("X-Forwarded-For", b"10.1.2.3")]);
    cases.refused(
        "forwarded: XFF alone names nobody",
        &resp,
        403,
        "ip_denied",
        &w.up,
    );
    let resp = w.get(
        "/allow-ten/1",
        &t,
        &[
            ("X-Forwarded-For", b"203.0.113.5"),
            ("Forwarded", b"for=10.1.2.3"),
        ],
    );
    let mut problems = forwarded_problems(&resp, &w.up);
    if let Some(req) = w.up.requests().first() {
        if !req.header_all("x-forwarded-for").is_empty() {
            problems.push(format!(
                "upstream X-Forwarded-For {:?}",
                req.header_all("x-forwarded-for")
            ));
        }
        if req.header_all("forwarded") != vec!["for=10.1.2.3, for=127.0.0.1"] {
            problems.push(format!(
                "upstream Forwarded {:?}",
                req.header_all("forwarded")
            ));
        }
    }
    cases.check("forwarded: XFF removed upstream", problems, Some(&resp));
    cases.finish();
}

#[test]
fn client_ip_header_accepts_only_its_two_values() {
    let config = |value: &str| {
        ConfigBuilder::new()
            .server(&format!("client_ip_header = {}", toml_str(value)))
            .issuer("main", DEFAULT_ISSUER, "http://127.0.0.1:9/jwks", "")
            .upstream("app", "http://127.0.0.1:9", "")
            .raw(READ_ROUTE)
            .build()
    };
    for good in ["x-forwarded-for", "forwarded"] {
        let loaded = portcullis::config::load_str(&config(good), &inline_config_origin());
        assert!(
            loaded.is_ok(),
            "{good:?} refused: {}",
            loaded.err().map(|e| e.to_string()).unwrap_or_default()
        );
    }
    for bad in ["x-real-ip", "true-client-ip", ""] {
        match portcullis::config::load_str(&config(bad), &inline_config_origin()) {
            Ok(_) => panic!("client_ip_header = {bad:?} was accepted"),
            Err(e) => assert!(
                e.errors.iter().any(|e| e.path == "server.client_ip_header"),
                "{bad:?}: no error at server.client_ip_header: {e}"
            ),
        }
    }
}

/// The client-address and routing claims the gateway never passes on.
const CLIENT_ADDRESS_HEADERS: [&str; 9] = [
    "X-Real-IP",
    "X-Client-IP",
    "True-Client-IP",
    "CF-Connecting-IP",
    "X-Original-Forwarded-For",
    "X-Forwarded-Scheme",
    "X-Forwarded-Server",
    "X-Forwarded-Prefix",
    "X-Forwarded-Port",
];

#[test]
fn client_address_headers_are_stripped_in_every_spelling() {
    for header in [None, Some("forwarded")] {
        let w = proxied(header);
        let t = token("client-1");
        // Every name with `-`, and with `_` where the gateway strips (rather
        // than refuses) that spelling.
        let underscored: Vec<String> = CLIENT_ADDRESS_HEADERS
            .iter()
            .filter(|n| **n != "X-Real-IP")
            .map(|n| n.replace('-', "_"))
            .collect();
        let mut sent: Vec<(&str, &[u8])> = CLIENT_ADDRESS_HEADERS
            .iter()
            .map(|n| (*n, &b"6.6.6.6"[..]))
            .collect();
        sent.extend(underscored.iter().map(|n| (n.as_str(), &b"6.6.6.6"[..])));
        // The client, named in the configured header.
        sent.push(match header {
            None => ("X-Forwarded-For", b"10.1.2.3"),
            Some(_) => ("Forwarded", b"for=10.1.2.3"),
        });
        let resp = w.get("/allow-ten/1", &t, &sent);
        assert_forwarded(
            &resp,
            &w.up,
            &format!("{header:?}: every client-address header"),
        );
        let req = w.up.last();
        for name in CLIENT_ADDRESS_HEADERS {
            let found = aliased(&req, &name.to_ascii_lowercase());
            assert!(
                found.is_empty(),
                "{header:?}: {name} reached the upstream: {found:?}"
            );
        }
        assert!(
            !req.headers.iter().any(|(_, v)| v.contains("6.6.6.6")),
            "{header:?}: a forged address reached the upstream: {:?}",
            req.headers
        );
        w.up.clear();

        // The `_` spellings of names the gateway itself reads are refused.
        let mut cases = Cases::new();
        for name in [
            "X_Real_IP",
            "x_real_ip",
            "X_Forwarded_For",
            "x_forwarded_host",
            "X_Forwarded_Proto",
        ] {
            let resp = w.get("/open/1", &t, &[(name, b"10.1.2.3")]);
            cases.refused(
                &format!("{header:?}: {name}"),
                &resp,
                400,
                "forbidden_header",
                &w.up,
            );
        }
        cases.finish();
    }
}

// === 3. pinned headers can be neither removed nor aliased ===

const PIN_ROUTES: &str = r#"
[[routes]]
name = "slashid-oidc-credentials-list"
methods = ["GET"]
path = "/organizations/sso/oidc/provider-credentials"
upstream = "app"
strip_authorization = true
pin_headers = { "SlashID-OrgID" = "oid" }

[[routes]]
name = "unpinned"
methods = ["GET"]
path = "/unpinned"
upstream = "app"
"#;

const PIN_TARGET: &str = "/organizations/sso/oidc/provider-credentials";

#[test]
fn pinned_and_credential_headers_cannot_be_nominated_or_aliased() {
    let api_key = "slashid-api-key-9f2e";
    let env = unique_env("SLASHID_KEY", api_key);
    let upstream = format!(
        "auth = {{ header = \"SlashID-API-Key\", value_env = {} }}",
        toml_str(&env)
    );
    let w = World::start(Spec {
        upstream: &upstream,
        routes: PIN_ROUTES,
        ..Spec::default()
    });
    let t = TokenBuilder::new(&TestKey::rsa())
        .claim("oid", json!("org-1"))
        .build();
    let mut cases = Cases::new();
    let refusals: [(&str, &[Header]); 10] = [
        (
            "Connection nominates the pin",
            &[
                ("SlashID-OrgID", b"org-1"),
                ("Connection", b"SlashID-OrgID"),
            ],
        ),
        (
            "Connection nominates the pin, `_` spelling",
            &[
                ("SlashID-OrgID", b"org-1"),
                ("Connection", b"slashid_orgid"),
            ],
        ),
        (
            "Connection nominates the pin among others",
            &[
                ("SlashID-OrgID", b"org-1"),
                ("Connection", b"close, x-trace, SLASHID-ORGID"),
            ],
        ),
        (
            "Connection nominates the pin, header not sent",
            &[("Connection", b"SlashID-OrgID")],
        ),
        (
            "Connection nominates the credential",
            &[
                ("SlashID-OrgID", b"org-1"),
                ("Connection", b"SlashID-API-Key"),
            ],
        ),
        (
            "Connection nominates the credential, `_` spelling",
            &[("Connection", b"close, slashid_api_key")],
        ),
        (
            "`_` alias of the pin beside it",
            &[
                ("SlashID-OrgID", b"org-1"),
                ("SlashID_OrgID", b"victim-org"),
            ],
        ),
        (
            "`_` alias of the pin alone",
            &[("SlashID_OrgID", b"victim-org")],
        ),
        ("`_` alias of the credential", &[("SlashID_API_Key", b"x")]),
        (
            "`_` alias of the credential, lowercase",
            &[("slashid_api_key", b"x")],
        ),
    ];
    for (label, headers) in refusals {
        let resp = w.get(PIN_TARGET, &t, headers);
        cases.refused(label, &resp, 400, "forbidden_header", &w.up);
        // The protection is config-wide: a route that pins nothing (and uses
        // no credential) refuses the same nominations and aliases, so no
        // path leads a protected name to an upstream that reads it.
        let resp = w.get("/unpinned", &t, headers);
        cases.refused(
            &format!("{label} (unpinned route)"),
            &resp,
            400,
            "forbidden_header",
            &w.up,
        );
    }
    for (label, headers) in [
        ("another org", &[("SlashID-OrgID", &b"victim-org"[..])][..]),
        (
            "the pin twice",
            &[
                ("SlashID-OrgID", &b"org-1"[..]),
                ("SlashID-OrgID", &b"org-1"[..]),
            ][..],
        ),
    ] {
        let resp = w.get(PIN_TARGET, &t, headers);
        cases.refused(label, &resp, 403, "pinned_header_mismatch", &w.up);
    }

    // Admitted: the upstream gets exactly one pin, from the claim, and the
    // gateway's credential instead of the caller's token.
    let admitted: [(&str, &[Header]); 3] = [
        ("matching pin sent", &[("SlashID-OrgID", b"org-1")]),
        ("no pin sent", &[]),
        (
            "another header nominated",
            &[
                ("SlashID-OrgID", b"org-1"),
                ("X-Trace", b"t-1"),
                ("Connection", b"close, X-Trace"),
            ],
        ),
    ];
    for (label, headers) in admitted {
        let resp = w.get(PIN_TARGET, &t, headers);
        let mut problems = forwarded_problems(&resp, &w.up);
        if let Some(req) = w.up.requests().first() {
            let pins = aliased(req, "slashid-orgid");
            if pins.len() != 1 || pins[0].1 != "org-1" {
                problems.push(format!("upstream pins {pins:?} (expected one org-1)"));
            }
            let keys = aliased(req, "slashid-api-key");
            if keys.len() != 1 || keys[0].1 != api_key {
                problems.push(format!("upstream credential headers {keys:?}"));
            }
            if req.header("authorization").is_some() {
                problems.push("the caller's Authorization reached the upstream".into());
            }
            if req.header("x-trace").is_some() {
                problems.push("a nominated X-Trace reached the upstream".into());
            }
        }
        cases.check(label, problems, Some(&resp));
        w.up.clear();
    }
    cases.finish();
}

// === 4. a delivered answer is an answer, not an outage ===

#[test]
fn a_delivered_answer_is_final_and_only_outages_are_served_stale() {
    let iam = Iam::start();
    for id in ["c-disabled", "c-invalid", "c-outage"] {
        iam.put(id, record(id, &format!("rec-{id}")));
    }
    let w = World::start(Spec {
        sections: iam.by_path("ttl_seconds = 1\nstale_if_error_seconds = 300"),
        routes: READ_ROUTE,
        ..Spec::default()
    });
    for id in ["c-disabled", "c-invalid", "c-outage"] {
        assert_forwarded(&w.get("/read/1", &token(id), &[]), &w.up, id);
        w.up.clear();
    }

    // The IAM changes its answers; the cached (enabled) entries expire.
    iam.put(
        "c-disabled",
        json!({"clientId": "c-disabled", "enabled": false, "ipFilters": ["10.1.2.3/8"], "ipFilterOp": "allow"}),
    );
    iam.put(
        "c-invalid",
        json!({"clientId": "c-invalid", "enabled": true, "ipFilterOp": "maybe"}),
    );
    iam.put_raw("c-outage", 503, r#"{"messageId":"down"}"#);
    std::thread::sleep(Duration::from_millis(1200));

    let mut cases = Cases::new();
    let before = iam.calls_for("c-disabled");
    let resp = w.get("/read/1", &token("c-disabled"), &[]);
    cases.refused(
        "disabled, with a bad filter",
        &resp,
        403,
        "client_disabled",
        &w.up,
    );
    if iam.calls_for("c-disabled") != before + 1 {
        cases.fail("disabled", "the source was not asked".into());
    }
    for round in 1..=2 {
        let before = iam.calls_for("c-invalid");
        let resp = w.get("/read/1", &token("c-invalid"), &[]);
        let label = format!("invalid record, request {round}");
        cases.refused(&label, &resp, 403, "invalid_client_record", &w.up);
        if iam.calls_for("c-invalid") != before + 1 {
            cases.fail(
                &label,
                "the source was not asked (an invalid answer was cached)".into(),
            );
        }
    }
    // The valid record the invalid answer replaced is gone: an outage now
    // has nothing to serve stale.
    iam.put_raw("c-invalid", 503, r#"{"messageId":"down"}"#);
    let resp = w.get("/read/1", &token("c-invalid"), &[]);
    cases.refused(
        "outage after an invalid answer",
        &resp,
        503,
        "metadata_unavailable",
        &w.up,
    );

    // An outage (5xx) with a valid expired entry: served stale.
    let before = iam.calls_for("c-outage");
    let resp = w.get("/read/1", &token("c-outage"), &[]);
    let mut problems = forwarded_problems(&resp, &w.up);
    if iam.calls_for("c-outage") <= before {
        problems.push("the source was not asked".into());
    }
    cases.check("5xx with an expired entry: stale", problems, Some(&resp));
    w.up.clear();

    // The disabled client's record turns invalid while enabled: refused,
    // never the earlier record, and asked each time.
    iam.put(
        "c-disabled",
        json!({"clientId": "c-disabled", "enabled": true, "ipFilterOp": "maybe"}),
    );
    std::thread::sleep(Duration::from_millis(1200));
    for round in 1..=2 {
        let before = iam.calls_for("c-disabled");
        let resp = w.get("/read/1", &token("c-disabled"), &[]);
        let label = format!("disabled, then invalid, request {round}");
        cases.refused(&label, &resp, 403, "invalid_client_record", &w.up);
        if iam.calls_for("c-disabled") != before + 1 {
            cases.fail(&label, "the source was not asked".into());
        }
    }
    // Fixed at the source: admitted at once (nothing cached in between).
    iam.put("c-disabled", record("c-disabled", "rec-c-disabled"));
    let resp = w.get("/read/1", &token("c-disabled"), &[]);
    cases.check(
        "repaired record",
        forwarded_problems(&resp, &w.up),
        Some(&resp),
    );
    cases.finish();
}

#[test]
fn invalid_answers_without_a_cached_entry_are_invalid_client_record() {
    let iam = Iam::start();
    let answers = [
        ("not JSON", "<html>oops</html>".to_string()),
        ("enabled not a boolean", json!({"clientId": "c", "enabled": "yes"}).to_string()),
        ("host bits in an allow filter", json!({"clientId": "c", "enabled": true, "ipFilterOp": "allow", "ipFilters": ["10.1.2.3/8"]}).to_string()),
        ("entitlements not a list", json!({"clientId": "c", "enabled": true, "entitlements": "manageAPIClients"}).to_string()),
        ("no clientId", json!({"enabled": true}).to_string()),
    ];
    for (i, (_, body)) in answers.iter().enumerate() {
        // Each answer names the client it is served for.
        iam.put_raw(
            &format!("c-{i}"),
            200,
            &body.replace("\"c\"", &format!("\"c-{i}\"")),
        );
    }
    let w = World::start(Spec {
        sections: iam.by_path(""),
        routes: READ_ROUTE,
        ..Spec::default()
    });
    let mut cases = Cases::new();
    for (i, (label, _)) in answers.iter().enumerate() {
        let resp = w.get("/read/1", &token(&format!("c-{i}")), &[]);
        cases.refused(label, &resp, 403, "invalid_client_record", &w.up);
    }
    cases.finish();
}

// === 5. the record must be the client asked for ===

#[test]
fn a_search_answer_naming_another_client_is_refused_uncached() {
    let iam = Iam::start();
    let w = World::start(Spec {
        sections: iam.by_search(""),
        routes: READ_ROUTE,
        ..Spec::default()
    });
    let caller = token("caller-1");
    // An IAM that ignores the filter: the first client is a powerful one.
    let mut admin = record("victim-admin", "rec-victim");
    admin["entitlements"] = json!(["manageAPIClients"]);
    iam.set_fixed(Some(
        json!({"total": 2, "apiClients": [admin, record("caller-1", "rec-caller")]}),
    ));
    let mut cases = Cases::new();
    for round in 1..=2 {
        let label = format!("another client's record first, request {round}");
        let resp = w.get("/read/1", &caller, &[]);
        cases.refused(&label, &resp, 403, "invalid_client_record", &w.up);
        if iam.calls_for("caller-1") != round {
            cases.fail(
                &label,
                format!(
                    "{} lookups (expected {round}: never cached)",
                    iam.calls_for("caller-1")
                ),
            );
        }
    }
    // Loose matches are other clients too; so is a disabled record of one.
    for (label, named) in [
        (
            "case variant",
            json!({"clientId": "CALLER-1", "enabled": true}),
        ),
        (
            "prefix match",
            json!({"clientId": "caller-10", "enabled": true}),
        ),
        (
            "disabled record of another client",
            json!({"clientId": "other", "enabled": false}),
        ),
        (
            "client id not a string",
            json!({"clientId": 1, "enabled": true}),
        ),
    ] {
        iam.set_fixed(Some(json!({"apiClients": [named]})));
        let resp = w.get("/read/1", &caller, &[]);
        cases.refused(label, &resp, 403, "invalid_client_record", &w.up);
    }
    // The IAM that honours the filter: admitted.
    iam.set_fixed(None);
    iam.put(
        "caller-1",
        json!({"apiClients": [record("caller-1", "rec-caller")]}),
    );
    let resp = w.get("/read/1", &caller, &[]);
    cases.check(
        "the caller's own record",
        forwarded_problems(&resp, &w.up),
        Some(&resp),
    );
    cases.finish();
}

#[test]
fn a_custom_client_id_pointer_is_checked() {
    let iam = Iam::start();
    let w = World::start(Spec {
        sections: iam.by_search("[clients.fields]\nclient_id = \"/app/id\""),
        routes: READ_ROUTE,
        ..Spec::default()
    });
    iam.put(
        "app-1",
        json!({"apiClients": [{"app": {"id": "app-1"}, "enabled": true}]}),
    );
    iam.put(
        "app-2",
        json!({"apiClients": [{"app": {"id": "app-9"}, "enabled": true}]}),
    );
    // Only the configured pointer counts, not the default `/clientId`.
    iam.put(
        "app-3",
        json!({"apiClients": [{"clientId": "app-3", "enabled": true}]}),
    );
    let resp = w.get("/read/1", &token("app-1"), &[]);
    assert_forwarded(&resp, &w.up, "/app/id names the caller");
    w.up.clear();
    let mut cases = Cases::new();
    let resp = w.get("/read/1", &token("app-2"), &[]);
    cases.refused(
        "/app/id names another client",
        &resp,
        403,
        "invalid_client_record",
        &w.up,
    );
    let resp = w.get("/read/1", &token("app-3"), &[]);
    cases.refused(
        "/app/id missing",
        &resp,
        403,
        "invalid_client_record",
        &w.up,
    );
    cases.finish();
}

// === 6. the token cache does not outlive the key that verified a token ===

/// The issuer publishes key A (`rsa-1`) only, then key B (`rsa-b`) only.
fn rotate_away_from_a(issuer: &str) -> (World, String) {
    let w = World::start_with_keys(
        Spec {
            issuer,
            routes: READ_ROUTE,
            ..Spec::default()
        },
        jwks(&[&TestKey::rsa()]),
    );
    let token_a = TokenBuilder::new(&TestKey::rsa())
        .claim("jti", json!(unique("a")))
        .build();
    w.gw.warm_up("/read/1", &token_a, &w.up);
    // Verified and cached.
    assert_forwarded(&w.get("/read/1", &token_a, &[]), &w.up, "token A, cached");
    w.up.clear();
    w.jwks.set_jwks(jwks(&[&TestKey::rsa_b()]));
    (w, token_a)
}

#[test]
fn a_cached_token_is_refused_once_its_key_is_gone_after_an_unknown_kid_refetch() {
    let (w, token_a) =
        rotate_away_from_a("jwks_min_refetch_seconds = 0\njwks_refresh_seconds = 3600");
    let before = w.jwks.fetch_count();
    // A token under B's (unknown) kid makes the gateway fetch the new set.
    let token_b = TokenBuilder::new(&TestKey::rsa_b()).build();
    assert_forwarded(
        &w.get("/read/1", &token_b, &[]),
        &w.up,
        "token B after the refetch",
    );
    assert!(
        w.jwks.fetch_count() > before,
        "the unknown kid caused no refetch"
    );
    w.up.clear();
    let mut cases = Cases::new();
    for round in 1..=2 {
        let resp = w.get("/read/1", &token_a, &[]);
        cases.refused(
            &format!("token A, request {round}"),
            &resp,
            401,
            "unknown_key",
            &w.up,
        );
    }
    cases.finish();
}

#[test]
fn a_cached_token_is_refused_once_a_background_refresh_removed_its_key() {
    let (w, token_a) =
        rotate_away_from_a("jwks_refresh_seconds = 1\njwks_min_refetch_seconds = 3600");
    let before = w.jwks.fetch_count();
    assert!(
        wait_until(Duration::from_millis(3000), || w.jwks.fetch_count()
            > before),
        "no background refresh within 3 s with jwks_refresh_seconds = 1"
    );
    // The refresh is applied once its answer is read: give it a moment.
    let mut last = None;
    let gone = wait_until(Duration::from_secs(2), || {
        let resp = w.get("/read/1", &token_a, &[]);
        let refused = resp.status == 401;
        last = Some(resp);
        refused
    });
    let last = last.expect("one request");
    assert!(
        gone,
        "token A still admitted after its key was removed: {}",
        last.describe()
    );
    w.up.clear();
    let resp = w.get("/read/1", &token_a, &[]);
    assert_refused(&resp, 401, "unknown_key", &w.up);
}

// === 7. no panic on a hostile token endpoint ===

#[test]
fn a_hostile_expires_in_is_capped_and_the_token_kept() {
    let endpoint = MockServer::start(|_req| {
        MockResponse::json(
            200,
            r#"{"access_token":"t","token_type":"Bearer","expires_in":18446744073709551615}"#,
        )
    });
    let iam = Iam::start();
    iam.state().require_auth = Some("Bearer t".into());
    let ids: Vec<String> = (0..6).map(|i| format!("svc-{i}")).collect();
    for id in &ids {
        iam.put(id, record(id, &format!("rec-{id}")));
    }
    let clients = iam.by_path(&format!(
        "token_url = {}\nclient_id = \"gw-client\"\nclient_secret_env = {}",
        toml_str(&format!("{}/oauth2/token", endpoint.url())),
        toml_str(&unique_env("OAUTH_SECRET", "gw-secret")),
    ));
    let w = World::start(Spec {
        sections: clients,
        routes: READ_ROUTE,
        ..Spec::default()
    });
    for id in &ids {
        // Each a different client: each needs a lookup, with the token.
        let resp = w.get("/read/1", &token(id), &[]);
        assert_forwarded(&resp, &w.up, id);
        w.up.clear();
    }
    assert_eq!(iam.count(), 6, "one lookup per client");
    assert_eq!(
        endpoint.count(),
        1,
        "the token endpoint was asked {} times for 6 lookups",
        endpoint.count()
    );
}

// === 8. ids compared as the upstream compares them ===

const ID_ROUTES: &str = r#"
[[routes]]
name = "update"
methods = ["PUT"]
path = "/v1.0/apiclients/{id}"
upstream = "app"
deny_self = "id"

[[routes]]
name = "update-ci"
methods = ["PUT"]
path = "/ci/apiclients/{id}"
upstream = "app"
deny_self = "id"
ids_case_insensitive = true

[[routes]]
name = "write"
methods = ["PUT"]
path = "/inv/apiclients/{id}"
upstream = "app"
invalidates_client = "id"

[[routes]]
name = "write-ci"
methods = ["PUT"]
path = "/inv-ci/apiclients/{id}"
upstream = "app"
invalidates_client = "id"
ids_case_insensitive = true

[[routes]]
name = "read"
methods = ["GET"]
path = "/read/{id}"
upstream = "app"
"#;

const UUID_CLIENT: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
const UUID_RECORD: &str = "6ba7b810-9dad-11d1-80b4-00c04fd430c8";

fn id_world(iam: &Iam) -> World {
    iam.put(UUID_CLIENT, record(UUID_CLIENT, "rec-uuid-client"));
    iam.put("bob", record("bob", UUID_RECORD));
    iam.put("alice", record("alice", "rec-alice"));
    iam.put("writer", record("writer", "rec-writer"));
    World::start(Spec {
        sections: iam.by_path("ttl_seconds = 60"),
        routes: ID_ROUTES,
        ..Spec::default()
    })
}

fn put(w: &World, target: &str, token: &str) -> RawResponse {
    w.send(&raw_request(
        "PUT",
        target,
        Some(token),
        &[("Content-Type", b"application/json")],
        Some(br#"{"clientName":"renamed"}"#),
    ))
}

#[test]
fn deny_self_compares_uuids_and_opted_in_ids_ignoring_case() {
    let iam = Iam::start();
    let w = id_world(&iam);
    let upper_client = UUID_CLIENT.to_uppercase();
    let upper_record = UUID_RECORD.to_uppercase();
    let encoded_mixed = format!("%30{}", &upper_client[1..]);
    let mut cases = Cases::new();
    for (label, target, caller) in [
        (
            "own UUID client id, uppercase",
            format!("/v1.0/apiclients/{upper_client}"),
            UUID_CLIENT,
        ),
        (
            "own UUID client id, encoded",
            format!("/v1.0/apiclients/{encoded_mixed}"),
            UUID_CLIENT,
        ),
        (
            "own UUID record id, uppercase",
            format!("/v1.0/apiclients/{upper_record}"),
            "bob",
        ),
        (
            "own record id, case-insensitive route",
            "/ci/apiclients/REC-ALICE".to_string(),
            "alice",
        ),
        (
            "own client id, case-insensitive route",
            "/ci/apiclients/Alice".to_string(),
            "alice",
        ),
    ] {
        let resp = put(&w, &target, &token(caller));
        cases.refused(label, &resp, 403, "self_modification", &w.up);
    }
    for (label, target, caller) in [
        (
            "non-UUID id, case-sensitive route",
            "/v1.0/apiclients/REC-ALICE".to_string(),
            "alice",
        ),
        (
            "another client's UUID",
            format!("/v1.0/apiclients/{upper_client}"),
            "alice",
        ),
        (
            "another record, case-insensitive route",
            "/ci/apiclients/REC-BOB".to_string(),
            "alice",
        ),
    ] {
        let resp = put(&w, &target, &token(caller));
        let mut problems = forwarded_problems(&resp, &w.up);
        if let Some(req) = w.up.requests().first() {
            if req.path() != target {
                problems.push(format!("upstream path {:?}", req.path()));
            }
        }
        cases.check(label, problems, Some(&resp));
        w.up.clear();
    }
    cases.finish();
}

/// Whether a read by `caller` makes the directory ask for `client` again
/// within 2 s (invalidation after a write runs once the answer is on its way).
fn refetched(w: &World, iam: &Iam, caller: &str, before: usize) -> bool {
    let t = token(caller);
    let again = wait_until(Duration::from_secs(2), || {
        let r = w.get("/read/1", &t, &[]);
        assert_eq!(r.status, 200, "{}", r.describe());
        iam.calls_for(caller) > before
    });
    w.up.clear();
    again
}

#[test]
fn invalidates_client_compares_uuids_and_opted_in_ids_ignoring_case() {
    let iam = Iam::start();
    let w = id_world(&iam);
    let writer = token("writer");
    for caller in ["alice", UUID_CLIENT] {
        for _ in 0..2 {
            assert_forwarded(&w.get("/read/1", &token(caller), &[]), &w.up, caller);
            w.up.clear();
        }
        assert_eq!(
            iam.calls_for(caller),
            1,
            "{caller}: loaded once, then cached"
        );
    }

    // A case-sensitive route does not evict `rec-alice` for `REC-ALICE`.
    assert_forwarded(
        &put(&w, "/inv/apiclients/REC-ALICE", &writer),
        &w.up,
        "write",
    );
    w.up.clear();
    std::thread::sleep(Duration::from_millis(300));
    assert_forwarded(&w.get("/read/1", &token("alice"), &[]), &w.up, "alice");
    w.up.clear();
    assert_eq!(
        iam.calls_for("alice"),
        1,
        "a case-sensitive route evicted REC-ALICE"
    );

    // With ids_case_insensitive it does.
    assert_forwarded(
        &put(&w, "/inv-ci/apiclients/REC-ALICE", &writer),
        &w.up,
        "write-ci",
    );
    w.up.clear();
    assert!(
        refetched(&w, &iam, "alice", 1),
        "after a 2xx PUT on /inv-ci/apiclients/REC-ALICE, alice (record rec-alice) was not fetched again"
    );
    // And by client id in another case.
    let before = iam.calls_for("alice");
    assert_forwarded(
        &put(&w, "/inv-ci/apiclients/ALICE", &writer),
        &w.up,
        "write-ci by client id",
    );
    w.up.clear();
    assert!(
        refetched(&w, &iam, "alice", before),
        "ALICE did not evict alice"
    );
    w.up.clear();

    // A UUID is evicted in any case, even on the case-sensitive route.
    let upper = UUID_CLIENT.to_uppercase();
    assert_forwarded(
        &put(&w, &format!("/inv/apiclients/{upper}"), &writer),
        &w.up,
        "write uuid",
    );
    w.up.clear();
    assert!(
        refetched(&w, &iam, UUID_CLIENT, 1),
        "after a 2xx PUT on the uppercase UUID, the client was not fetched again"
    );
}

// === 9. smaller leaks ===

const BODY_ROUTES: &str = r#"
[[routes]]
name = "checked"
methods = ["POST"]
path = "/checked/{id}"
upstream = "app"

[routes.body]
json = true

[[routes]]
name = "plain"
methods = ["POST"]
path = "/plain/{id}"
upstream = "app"
"#;

fn body_world() -> World {
    World::start(Spec {
        routes: BODY_ROUTES,
        ..Spec::default()
    })
}

const FORM: &[u8] = b"application/x-www-form-urlencoded";

#[test]
fn two_content_types_are_refused() {
    let w = body_world();
    let t = token("client-1");
    let mut cases = Cases::new();
    for (label, target, types) in [
        (
            "JSON twice, checked route",
            "/checked/1",
            [&b"application/json"[..], b"application/json"],
        ),
        (
            "JSON and form, plain route",
            "/plain/1",
            [&b"application/json"[..], FORM],
        ),
        (
            "form and JSON, plain route",
            "/plain/1",
            [FORM, &b"application/json"[..]],
        ),
    ] {
        let resp = w.send(&raw_request(
            "POST",
            target,
            Some(&t),
            &[("Content-Type", types[0]), ("content-type", types[1])],
            Some(br#"{"a":1}"#),
        ));
        cases.refused(label, &resp, 400, "duplicate_header", &w.up);
    }
    cases.finish();
}

#[test]
fn a_checked_body_must_not_be_content_encoded() {
    let w = body_world();
    let t = token("client-1");
    let mut cases = Cases::new();
    for (label, target, ctype, encoding, body) in [
        (
            "gzip on a JSON policy route",
            "/checked/1",
            &b"application/json"[..],
            &b"gzip"[..],
            &br#"{"a":1}"#[..],
        ),
        (
            "identity, gzip",
            "/checked/1",
            b"application/json",
            b"identity, gzip",
            br#"{"a":1}"#,
        ),
        (
            "deflate on a form body",
            "/plain/1",
            FORM,
            b"deflate",
            b"a=1",
        ),
    ] {
        let resp = w.send(&raw_request(
            "POST",
            target,
            Some(&t),
            &[("Content-Type", ctype), ("Content-Encoding", encoding)],
            Some(body),
        ));
        cases.refused(label, &resp, 415, "unsupported_media_type", &w.up);
    }
    let resp = w.send(&raw_request(
        "POST",
        "/checked/1",
        Some(&t),
        &[
            ("Content-Type", b"application/json"),
            ("Content-Encoding", b"identity"),
        ],
        Some(br#"{"a":1}"#),
    ));
    let mut problems = forwarded_problems(&resp, &w.up);
    if let Some(req) = w.up.requests().first() {
        if req.body != br#"{"a":1}"# {
            problems.push(format!(
                "upstream body {:?}",
                String::from_utf8_lossy(&req.body)
            ));
        }
    }
    cases.check("identity passes", problems, Some(&resp));
    cases.finish();
}

#[test]
fn a_form_body_cannot_carry_a_method_override_or_a_token() {
    let w = body_world();
    let t = token("client-1");
    let mut cases = Cases::new();
    for (label, body, code) in [
        ("_method", &b"a=1&_method=DELETE"[..], "override_header"),
        ("%5Fmethod", b"a=1&%5Fmethod=PUT", "override_header"),
        ("_METHOD first", b"_METHOD=PATCH&a=1", "override_header"),
        ("_method after ;", b"a=1;_method=DELETE", "override_header"),
        (
            "access_token",
            b"a=1&access_token=abc.def.ghi",
            "token_in_query",
        ),
    ] {
        let resp = w.send(&raw_request(
            "POST",
            "/plain/1",
            Some(&t),
            &[("Content-Type", FORM)],
            Some(body),
        ));
        cases.refused(label, &resp, 400, code, &w.up);
    }
    let resp = w.send(&raw_request(
        "POST",
        "/plain/1",
        Some(&t),
        &[(
            "Content-Type",
            b"Application/X-WWW-Form-Urlencoded; charset=utf-8",
        )],
        Some(b"_method=DELETE"),
    ));
    cases.refused(
        "content type in another case",
        &resp,
        400,
        "override_header",
        &w.up,
    );

    for body in [&b"a=1&b=2"[..], b"name=x%20y&method=PUT"] {
        let resp = w.send(&raw_request(
            "POST",
            "/plain/1",
            Some(&t),
            &[("Content-Type", FORM)],
            Some(body),
        ));
        let mut problems = forwarded_problems(&resp, &w.up);
        if let Some(req) = w.up.requests().first() {
            if req.body != body {
                problems.push(format!(
                    "upstream body {:?}",
                    String::from_utf8_lossy(&req.body)
                ));
            }
        }
        cases.check(&String::from_utf8_lossy(body), problems, Some(&resp));
        w.up.clear();
    }
    cases.finish();
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(unique(&format!("portcullis-trust-{tag}")));
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

/// `line` with every double-quoted field (its `\"` escapes included) removed.
fn unquoted(line: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in line.chars() {
        if quoted {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
            }
        } else if c == '"' {
            quoted = true;
        } else {
            out.push(c);
        }
    }
    out
}

fn read_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_token_cannot_forge_fields_of_the_text_audit_log() {
    let dir = TempDir::new("audit");
    let log = dir.path("audit.log");
    let w = World::start(Spec {
        sections: format!(
            "[log]\nformat = \"text\"\naudit = {}\n",
            toml_str(&log.to_string_lossy())
        ),
        routes: READ_ROUTE,
        ..Spec::default()
    });
    let forged = TokenBuilder::new(&TestKey::rsa())
        .sub("x ip=6.6.6.6\nGET / 200")
        .client_id("c ip=7.7.7.7\r\nx")
        .build();
    let resp = w.get("/read/1", &forged, &[]);
    assert_forwarded(&resp, &w.up, "the forged subject is still a valid token");
    let rid = resp
        .header("x-request-id")
        .expect("X-Request-Id")
        .to_string();
    assert!(
        wait_until(Duration::from_secs(5), || read_lines(&log)
            .iter()
            .any(|l| l.contains(&rid))),
        "no audit line for {rid} within 5 s: {:?}",
        read_lines(&log)
    );
    // Give a split line the chance to show up too.
    std::thread::sleep(Duration::from_millis(200));
    let lines = read_lines(&log);
    assert_eq!(lines.len(), 1, "one request, one line: {lines:?}");
    let line = &lines[0];
    assert!(line.contains(&rid), "{line}");
    let outside = unquoted(line);
    let ip_fields: Vec<&str> = outside
        .split(' ')
        .filter(|f| f.starts_with("ip="))
        .collect();
    assert_eq!(
        ip_fields,
        vec!["ip=127.0.0.1"],
        "unquoted ip= fields of {line:?}"
    );
    assert!(
        !outside.contains("6.6.6.6") && !outside.contains("7.7.7.7"),
        "a forged value is outside a quoted field: {line:?}"
    );
    assert!(
        line.contains("6.6.6.6") && line.contains("7.7.7.7"),
        "the token's values are not logged at all: {line:?}"
    );
}

#[test]
fn the_admin_token_is_matched_exactly() {
    let admin_token = "admin-Tk-4f8a2c91";
    let env = unique_env("ADMIN", admin_token);
    let w = World::start(Spec {
        admin: &format!("token_env = {}", toml_str(&env)),
        sections: "[clients]\nsource = \"static\"\n\n[[clients.static]]\nclient_id = \"client-1\"\nenabled = true\n".into(),
        routes: READ_ROUTE,
        ..Spec::default()
    });
    let admin = w.gw.admin_addr().expect("admin listener");
    let post = |auth: Option<String>| {
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        request(
            admin,
            "POST",
            "/admin/clients/invalidate-all",
            &headers,
            None,
        )
    };
    let same_length_wrong = format!("{}X", &admin_token[..admin_token.len() - 1]);
    for (label, presented) in [
        ("same length, last byte differs", same_length_wrong.as_str()),
        ("same length, first byte differs", "Xdmin-Tk-4f8a2c91"),
        ("a prefix", &admin_token[..admin_token.len() - 3]),
        ("one byte", "a"),
        ("longer", &format!("{admin_token}0")),
        ("twice", &format!("{admin_token}{admin_token}")),
    ] {
        let resp = post(Some(bearer(presented)));
        assert_eq!(resp.status, 401, "{label}: {}", resp.describe());
    }
    let resp = post(None);
    assert_eq!(resp.status, 401, "no token: {}", resp.describe());
    let resp = post(Some(bearer(admin_token)));
    assert_eq!(resp.status, 200, "the right token: {}", resp.describe());
}

// === 9. the shipped demo config: Verify updates use `only` lists ===

/// `config/demo.toml`, rewritten onto free ports, the mocks and no audit.
fn demo_config(iam_url: &str, upstream_url: &str, port: u16, admin_port: u16) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text =
        std::fs::read_to_string(root.join("config/demo.toml")).expect("read config/demo.toml");
    let catalog = root.join("config/catalogs/verify-entitlements.tsv");
    let rewritten = text
        .replace(
            "url = \"http://127.0.0.1:8081\"\n",
            &format!("url = {}\n", toml_str(upstream_url)),
        )
        .replace("http://127.0.0.1:8081", iam_url)
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:9090", &format!("127.0.0.1:{admin_port}"))
        .replace("audit = \"stdout\"", "audit = \"off\"")
        .replace(
            "file = \"catalogs/verify-entitlements.tsv\"",
            &format!("file = {}", toml_str(&catalog.to_string_lossy())),
        );
    let settings: String = rewritten
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    for gone in [
        "127.0.0.1:8081",
        "127.0.0.1:8080",
        "\"stdout\"",
        "\"catalogs/",
    ] {
        assert!(!settings.contains(gone), "demo.toml still has {gone}");
    }
    rewritten
}

#[test]
fn the_demo_verify_routes_refuse_unknown_and_case_variant_keys() {
    let key = TestKey::ec256();
    let jwks_doc = jwks(&[&key]);
    let iam = MockServer::start(move |req| {
        let target = req.target_str();
        if target.ends_with("/jwks") {
            return MockResponse::json(200, jwks_doc.clone());
        }
        match target.split_once("?clientId=") {
            Some((_, id)) => {
                let mut client = record(id, &format!("rec-{id}"));
                client["entitlements"] = json!(["manageAPIClients", "readAPIClients"]);
                MockResponse::json(200, json!({"apiClients": [client]}).to_string())
            }
            None => MockResponse::json(404, "{}"),
        }
    });
    let up = MockUpstream::start();
    let config = demo_config(&iam.url(), &up.url(), free_port(), free_port());
    let gw = TestGateway::start(&config);
    let t = TokenBuilder::new(&key)
        .iss(&format!("{}/oidc/endpoint/default", iam.url()))
        .aud(json!("portcullis-demo"))
        .client_id("demo-admin")
        .entitlements(&["manageAPIClients", "readAPIClients"])
        .build();
    let send = |method: &str, target: &str, body: &[u8]| {
        gw.send_raw(&raw_request(
            method,
            target,
            Some(&t),
            &[("Content-Type", b"application/json")],
            Some(body),
        ))
    };
    // The world works: a documented key passes.
    let resp = send(
        "PUT",
        "/v1.0/apiclients/rec-other",
        br#"{"clientName":"renamed"}"#,
    );
    assert_forwarded(&resp, &up, "a documented key on the update route");
    up.clear();
    let mut cases = Cases::new();
    for (label, method, target, body) in [
        (
            "update, Entitlements",
            "PUT",
            "/v1.0/apiclients/rec-other",
            &br#"{"Entitlements":["manageAPIClients"]}"#[..],
        ),
        (
            "update, ENTITLEMENTS",
            "PUT",
            "/v1.0/apiclients/rec-other",
            br#"{"ENTITLEMENTS":["manageAPIClients"]}"#,
        ),
        (
            "update, IpFilters",
            "PUT",
            "/v1.0/apiclients/rec-other",
            br#"{"IpFilters":["0.0.0.0/0"]}"#,
        ),
        (
            "update, unknown key",
            "PUT",
            "/v1.0/apiclients/rec-other",
            br#"{"clientName":"x","isAdmin":true}"#,
        ),
        (
            "create, Entitlements",
            "POST",
            "/v1.0/apiclients",
            br#"{"clientName":"n","Entitlements":["manageAPIClients"]}"#,
        ),
    ] {
        let resp = send(method, target, body);
        cases.refused(label, &resp, 400, "field_not_allowed", &up);
    }
    cases.finish();
}
