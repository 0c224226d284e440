//! Opaque tokens checked by RFC 7662 introspection, and the upstream
//! credential the gateway obtains by OAuth 2.0 client_credentials — through
//! real sockets, against a mock introspection endpoint and a mock token
//! endpoint that record every request.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

/// The gateway's own client at the introspection endpoint: an id with `:`
/// and a secret with `%` and `+`, which RFC 6749 §2.3.1 form-urlencodes
/// before the Basic encoding.
const INTRO_CLIENT_ID: &str = "gw:intro";
const INTRO_SECRET_ENV: &str = "PORTCULLIS_TEST_INTRO_SECRET";
const INTRO_SECRET: &str = "s%cr+t 1";
/// `Basic base64("gw%3Aintro:s%25cr%2Bt+1")`.
fn intro_basic() -> String {
    format!("Basic {}", STANDARD.encode("gw%3Aintro:s%25cr%2Bt+1"))
}
const INTRO_PATH: &str = "/v1.0/endpoint/default/introspect";

const TOKEN_SECRET_ENV: &str = "PORTCULLIS_TEST_UPSTREAM_CC_SECRET";
const TOKEN_SECRET: &str = "cc%secret";

fn set_secrets() {
    // The same value every time: tests running in parallel agree.
    std::env::set_var(INTRO_SECRET_ENV, INTRO_SECRET);
    std::env::set_var(TOKEN_SECRET_ENV, TOKEN_SECRET);
}

/// An answer of the mock introspection endpoint.
#[derive(Clone)]
struct Answer {
    status: u16,
    body: String,
    delay: Duration,
}

fn active(extra: Value) -> Answer {
    let mut body = json!({
        "active": true,
        "iss": DEFAULT_ISSUER,
        "aud": DEFAULT_AUDIENCE,
        "client_id": "intro-client",
        "sub": "intro-subject",
        "scope": "readAPIClients manageAPIClients",
        "exp": now() + 300,
        "token_type": "Bearer",
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            if v.is_null() {
                b.remove(k);
            } else {
                b.insert(k.clone(), v.clone());
            }
        }
    }
    Answer {
        status: 200,
        body: body.to_string(),
        delay: Duration::ZERO,
    }
}

fn raw_answer(status: u16, body: &str) -> Answer {
    Answer {
        status,
        body: body.to_string(),
        delay: Duration::ZERO,
    }
}

/// A mock RFC 7662 endpoint: answers by the `token` form field (unknown
/// tokens are inactive) and records every request.
struct MockIntrospection {
    server: MockServer,
    answers: Arc<Mutex<HashMap<String, Answer>>>,
}

/// `application/x-www-form-urlencoded` value decoding.
fn form_decode(v: &str) -> String {
    let spaced = v.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

fn form_field(body: &[u8], name: &str) -> Option<String> {
    String::from_utf8_lossy(body).split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| form_decode(v))
    })
}

impl MockIntrospection {
    fn start() -> MockIntrospection {
        let answers: Arc<Mutex<HashMap<String, Answer>>> = Arc::default();
        let map = answers.clone();
        let server = MockServer::start(move |req| {
            let token = form_field(&req.body, "token").unwrap_or_default();
            let answer = map
                .lock()
                .unwrap()
                .get(&token)
                .cloned()
                .unwrap_or_else(|| raw_answer(200, r#"{"active":false}"#));
            let mut resp = MockResponse::json(answer.status, answer.body.into_bytes());
            resp.delay = answer.delay;
            resp
        });
        MockIntrospection { server, answers }
    }

    fn set(&self, token: &str, answer: Answer) {
        self.answers
            .lock()
            .unwrap()
            .insert(token.to_string(), answer);
    }

    fn url(&self) -> String {
        format!("{}{INTRO_PATH}", self.server.url())
    }

    fn count(&self) -> usize {
        self.server.count()
    }

    /// Calls that carried `token`.
    fn calls_for(&self, token: &str) -> usize {
        self.server
            .requests()
            .iter()
            .filter(|r| form_field(&r.body, "token").as_deref() == Some(token))
            .count()
    }
}

/// An introspection issuer for [`DEFAULT_ISSUER`]; `extra` adds lines.
fn intro_issuer(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[[issuers]]\nname = {}\nissuer = {}\naudiences = [{}]\nintrospection_url = {}\nintrospection_client_id = {}\nintrospection_client_secret_env = {}\nentitlements_claim = \"scope\"\nintrospection_timeout_ms = 500\n{extra}\n",
        toml_str(name),
        toml_str(DEFAULT_ISSUER),
        toml_str(DEFAULT_AUDIENCE),
        toml_str(url),
        toml_str(INTRO_CLIENT_ID),
        toml_str(INTRO_SECRET_ENV),
    )
}

const ROUTES: &str = r#"
[[routes]]
name = "read"
methods = ["GET"]
path = "/v1.0/apiclients"
upstream = "app"
require_all = ["readAPIClients"]

[[routes]]
name = "manage"
methods = ["GET", "DELETE"]
path = "/v1.0/apiclients/{id}"
upstream = "app"
require_all = ["manageAPIClients"]
deny_self = "id"

[[routes]]
name = "pinned"
methods = ["GET"]
path = "/pinned"
upstream = "app"
pin_headers = { "SlashID-OrgID" = "oid" }
"#;

/// A route for the JWT issuer `main` only.
const JWT_ONLY_ROUTE: &str = r#"
[[routes]]
name = "jwt-only"
methods = ["GET"]
path = "/jwt-only"
upstream = "app"
issuers = ["main"]
"#;

/// A gateway with a JWT issuer `main` and an introspection issuer `opaque`
/// sharing [`DEFAULT_ISSUER`], upstream `app`, [`ROUTES`] and `extra`.
struct Env {
    up: MockUpstream,
    intro: MockIntrospection,
    _jwks: MockJwks,
    gw: TestGateway,
}

impl Env {
    fn start(intro_extra: &str, extra: &str) -> Env {
        set_secrets();
        let up = MockUpstream::start();
        let intro = MockIntrospection::start();
        let jwks = MockJwks::start(standard_jwks());
        let config = ConfigBuilder::new()
            .issuer("main", DEFAULT_ISSUER, &jwks.url(), "")
            .raw(&intro_issuer("opaque", &intro.url(), intro_extra))
            .upstream("app", &up.url(), "")
            .raw(ROUTES)
            .raw(JWT_ONLY_ROUTE)
            .raw(extra)
            .build();
        let gw = TestGateway::start(&config);
        Env {
            up,
            intro,
            _jwks: jwks,
            gw,
        }
    }

    fn get(&self, target: &str, token: &str) -> RawResponse {
        self.gw.request_with_token("GET", target, token, &[], None)
    }
}

#[test]
fn an_active_opaque_token_is_introspected_once_and_forwarded() {
    let env = Env::start("", "");
    // Characters that need form-urlencoding in the introspection body.
    let token = "opaque+tok/en.v1~=";
    env.intro.set(token, active(json!({})));

    let resp = env.get("/v1.0/apiclients", token);
    assert_eq!(resp.status, 200, "{}", resp.describe());
    let seen = env.up.last();
    assert_eq!(seen.header("x-portcullis-client-id"), Some("intro-client"));
    assert_eq!(seen.header("x-portcullis-subject"), Some("intro-subject"));
    assert_eq!(seen.header("x-portcullis-route"), Some("read"));
    // Not stripped on this route: the caller's own token goes on.
    assert_eq!(seen.header("authorization"), Some(bearer(token).as_str()));

    // The RFC 7662 request, exactly.
    assert_eq!(env.intro.count(), 1);
    let call = env.intro.server.last();
    assert_eq!(call.method, "POST");
    assert_eq!(call.target_str(), INTRO_PATH);
    assert_eq!(
        String::from_utf8_lossy(&call.body),
        "token=opaque%2Btok%2Fen.v1%7E%3D&token_type_hint=access_token"
    );
    assert_eq!(
        call.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(call.header("authorization"), Some(intro_basic().as_str()));
    assert_eq!(call.header("accept"), Some("application/json"));

    // Cached: the second request makes no call.
    let again = env.get("/v1.0/apiclients", token);
    assert_eq!(again.status, 200, "{}", again.describe());
    assert_eq!(env.intro.count(), 1, "a cached answer is not asked again");

    // The metrics count the call and the cache hit, never the token.
    let metrics = request(
        env.gw.admin_addr().expect("admin"),
        "GET",
        "/metrics",
        &[],
        None,
    )
    .body_str();
    assert!(
        metrics.contains(
            r#"portcullis_introspection_requests_total{issuer="opaque",result="active"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"portcullis_introspection_cache_hits_total{issuer="opaque"} 1"#),
        "{metrics}"
    );
    assert!(!metrics.contains("opaque+tok"));
}

#[test]
fn unusable_answers_are_refused_and_nothing_goes_upstream() {
    let env = Env::start("", "");
    let cases: Vec<(&str, Answer, u16, &str)> = vec![
        (
            "inactive",
            raw_answer(200, r#"{"active":false}"#),
            401,
            "token_inactive",
        ),
        (
            "expired",
            active(json!({"exp": now() - 100})),
            401,
            "token_expired",
        ),
        (
            "not yet valid",
            active(json!({"nbf": now() + 600})),
            401,
            "token_not_yet_valid",
        ),
        (
            "another issuer",
            active(json!({"iss": "https://other.test"})),
            401,
            "token_inactive",
        ),
        (
            "another audience",
            active(json!({"aud": ["https://elsewhere.test"]})),
            401,
            "audience_mismatch",
        ),
        (
            "scope without the entitlement",
            active(json!({"scope": "readAPIClients"})),
            403,
            "insufficient_entitlements",
        ),
        (
            "not JSON",
            raw_answer(200, "active=true"),
            503,
            "introspection_unavailable",
        ),
        (
            "500",
            raw_answer(500, r#"{"active":true}"#),
            503,
            "introspection_unavailable",
        ),
        (
            "401 from the endpoint",
            raw_answer(401, r#"{"error":"invalid_client"}"#),
            503,
            "introspection_unavailable",
        ),
        (
            "active missing",
            raw_answer(200, r#"{"client_id":"intro-client"}"#),
            503,
            "introspection_unavailable",
        ),
        (
            "active as a string",
            raw_answer(200, r#"{"active":"true","client_id":"intro-client"}"#),
            503,
            "introspection_unavailable",
        ),
        (
            "active twice",
            raw_answer(200, r#"{"active":false,"active":true}"#),
            503,
            "introspection_unavailable",
        ),
        (
            "exp as a string",
            active(json!({"exp": "tomorrow"})),
            503,
            "introspection_unavailable",
        ),
        (
            "timeout",
            Answer {
                delay: Duration::from_millis(1500),
                ..active(json!({}))
            },
            503,
            "introspection_unavailable",
        ),
    ];
    let mut check = Cases::new();
    for (i, (label, answer, status, code)) in cases.into_iter().enumerate() {
        let token = format!("opaque-refusal-{i}");
        env.intro.set(&token, answer);
        let resp = env.get("/v1.0/apiclients/some-other", &token);
        check.refused(label, &resp, status, code, &env.up);
        if status == 401 {
            let challenge = resp.header("www-authenticate").unwrap_or_default();
            if !challenge.starts_with(r#"Bearer realm="portcullis", error="invalid_token""#) {
                check.fail(label, format!("WWW-Authenticate {challenge:?}"));
            }
        }
        if env.intro.calls_for(&token) != 1 {
            check.fail(
                label,
                format!("{} introspection calls", env.intro.calls_for(&token)),
            );
        }
    }
    check.finish();
}

#[test]
fn refusals_are_cached_ten_seconds_and_outages_not_at_all() {
    let env = Env::start("", "");
    let inactive = "opaque-inactive";
    env.intro
        .set(inactive, raw_answer(200, r#"{"active":false}"#));
    let first = env.get("/v1.0/apiclients", inactive);
    assert_refused(&first, 401, "token_inactive", &env.up);
    // Even if it became active now, the refusal holds for 10 s.
    env.intro.set(inactive, active(json!({})));
    let second = env.get("/v1.0/apiclients", inactive);
    assert_refused(&second, 401, "token_inactive", &env.up);
    assert_eq!(env.intro.calls_for(inactive), 1);

    // An outage is asked again on the next request.
    let flaky = "opaque-flaky";
    env.intro.set(flaky, raw_answer(503, "down"));
    assert_refused(
        &env.get("/v1.0/apiclients", flaky),
        503,
        "introspection_unavailable",
        &env.up,
    );
    env.intro.set(flaky, active(json!({})));
    assert_eq!(env.get("/v1.0/apiclients", flaky).status, 200);
    assert_eq!(env.intro.calls_for(flaky), 2);

    // After 10 s the refusal is forgotten and the endpoint asked again.
    std::thread::sleep(Duration::from_millis(10_500));
    let later = env.get("/v1.0/apiclients", inactive);
    assert_eq!(later.status, 200, "{}", later.describe());
    assert_eq!(env.intro.calls_for(inactive), 2);
}

#[test]
fn a_revoked_token_stops_working_after_the_cache_lifetime() {
    let env = Env::start("introspection_cache_seconds = 1", "");
    let token = "opaque-revoked-later";
    env.intro.set(token, active(json!({})));
    assert_eq!(env.get("/v1.0/apiclients", token).status, 200);
    env.intro.set(token, raw_answer(200, r#"{"active":false}"#));
    env.up.clear();
    let mut last = None;
    let revoked = wait_until(Duration::from_secs(5), || {
        let r = env.get("/v1.0/apiclients", token);
        let done = r.status == 401;
        last = Some(r);
        done
    });
    assert!(revoked, "still admitted: {:?}", last.map(|r| r.describe()));
    env.up.clear();
    let resp = env.get("/v1.0/apiclients", token);
    assert_refused(&resp, 401, "token_inactive", &env.up);
}

#[test]
fn an_active_answer_is_never_cached_past_its_exp() {
    // A token with 2 s to live under a 60 s cache: refused once expired,
    // without asking the endpoint again (the answer itself says so).
    let env = Env::start("leeway_seconds = 0", "");
    let token = "opaque-short-lived";
    env.intro.set(token, active(json!({"exp": now() + 2})));
    assert_eq!(env.get("/v1.0/apiclients", token).status, 200);
    std::thread::sleep(Duration::from_millis(3100));
    env.up.clear();
    let resp = env.get("/v1.0/apiclients", token);
    // Asked again (the entry expired with the token), and refused.
    assert_refused(&resp, 401, "token_expired", &env.up);
    assert_eq!(env.intro.calls_for(token), 2);
}

#[test]
fn fifty_concurrent_first_requests_make_one_introspection_call() {
    let env = Env::start("", "");
    let token = "opaque-stampede";
    env.intro.set(
        token,
        Answer {
            delay: Duration::from_millis(300),
            ..active(json!({}))
        },
    );
    let addr = env.gw.addr();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|_| {
                s.spawn(move || {
                    let auth = bearer(token);
                    request(
                        addr,
                        "GET",
                        "/v1.0/apiclients",
                        &[("Authorization", auth.as_str())],
                        None,
                    )
                    .status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
    });
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(env.intro.calls_for(token), 1);
    assert_eq!(env.up.count(), 50);
}

#[test]
fn a_jwt_is_never_sent_to_introspection() {
    let env = Env::start("", "");
    let good = TokenBuilder::new(&TestKey::rsa())
        .entitlements(&["readAPIClients"])
        .build();
    let resp = env.get("/v1.0/apiclients", &good);
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert_eq!(
        env.up.last().header("x-portcullis-client-id"),
        Some(DEFAULT_CLIENT_ID)
    );
    env.up.clear();

    let mut check = Cases::new();
    // A JWT with a bad signature, an expired one, and one of an unknown
    // issuer: refused as JWTs, never introspected.
    let mut forged = good.clone();
    forged.pop();
    forged.push(if good.ends_with('A') { 'B' } else { 'A' });
    let expired = TokenBuilder::new(&TestKey::rsa())
        .entitlements(&["readAPIClients"])
        .exp_in(-3600)
        .build();
    let stranger = TokenBuilder::new(&TestKey::rsa())
        .iss("https://stranger.test")
        .build();
    for (label, token, code) in [
        ("bad signature", forged.as_str(), "bad_signature"),
        ("expired", expired.as_str(), "token_expired"),
        ("unknown issuer", stranger.as_str(), "unknown_issuer"),
    ] {
        let resp = env.get("/v1.0/apiclients", token);
        check.refused(label, &resp, 401, code, &env.up);
    }
    // An opaque token on a route that accepts JWTs only: malformed, as
    // before introspection existed, and not introspected either.
    let resp = env.get("/jwt-only", "opaque-on-a-jwt-route");
    check.refused("opaque on jwt-only", &resp, 401, "malformed_token", &env.up);
    check.finish();
    assert_eq!(env.intro.count(), 0, "{:?}", env.intro.server.requests());
}

#[test]
fn entitlements_come_from_an_array_claim_too() {
    set_secrets();
    let up = MockUpstream::start();
    let intro = MockIntrospection::start();
    let config = ConfigBuilder::new()
        .raw(&intro_issuer("opaque", &intro.url(), "").replace(
            "entitlements_claim = \"scope\"",
            "entitlements_claim = \"ext.entitlements\"",
        ))
        .upstream("app", &up.url(), "")
        .raw(ROUTES)
        .build();
    let gw = TestGateway::start(&config);
    intro.set(
        "opaque-array",
        active(json!({"ext": {"entitlements": ["readAPIClients"]}, "scope": null})),
    );
    intro.set(
        "opaque-array-none",
        active(json!({"ext": {"entitlements": ["other"]}})),
    );
    let ok = gw.request_with_token("GET", "/v1.0/apiclients", "opaque-array", &[], None);
    assert_eq!(ok.status, 200, "{}", ok.describe());
    up.clear();
    let no = gw.request_with_token("GET", "/v1.0/apiclients", "opaque-array-none", &[], None);
    assert_refused(&no, 403, "insufficient_entitlements", &up);
}

#[test]
fn metadata_deny_self_and_pins_apply_to_an_introspected_caller() {
    let clients = r#"
[clients]
source = "static"
entitlements_from = "both"

[[clients.static]]
client_id = "intro-client"
id = "rec-intro"
enabled = true
entitlements = ["readAPIClients", "manageAPIClients"]

[[clients.static]]
client_id = "disabled-client"
enabled = false
entitlements = ["readAPIClients"]
"#;
    let env = Env::start("", clients);
    env.intro
        .set("opaque-caller", active(json!({"oid": "org-1"})));
    env.intro.set(
        "opaque-disabled",
        active(json!({"client_id": "disabled-client"})),
    );
    env.intro.set(
        "opaque-stranger",
        active(json!({"client_id": "nobody-knows"})),
    );
    let ok = env.get("/v1.0/apiclients/rec-other", "opaque-caller");
    assert_eq!(ok.status, 200, "{}", ok.describe());
    let pinned = env.get("/pinned", "opaque-caller");
    assert_eq!(pinned.status, 200, "{}", pinned.describe());
    assert_eq!(env.up.last().header("slashid-orgid"), Some("org-1"));
    env.up.clear();

    let mut check = Cases::new();
    for (label, token, target, headers, status, code) in [
        (
            "deletes itself by record id",
            "opaque-caller",
            "/v1.0/apiclients/rec-intro",
            vec![],
            403,
            "self_modification",
        ),
        (
            "deletes itself by client id",
            "opaque-caller",
            "/v1.0/apiclients/intro-client",
            vec![],
            403,
            "self_modification",
        ),
        (
            "pinned header of another org",
            "opaque-caller",
            "/pinned",
            vec![("SlashID-OrgID", "org-2")],
            403,
            "pinned_header_mismatch",
        ),
        (
            "disabled client",
            "opaque-disabled",
            "/v1.0/apiclients",
            vec![],
            403,
            "client_disabled",
        ),
        (
            "unknown client",
            "opaque-stranger",
            "/v1.0/apiclients",
            vec![],
            403,
            "unknown_client",
        ),
    ] {
        let method = if target.starts_with("/v1.0/apiclients/") {
            "DELETE"
        } else {
            "GET"
        };
        let resp = env
            .gw
            .request_with_token(method, target, token, &headers, None);
        check.refused(label, &resp, status, code, &env.up);
    }
    check.finish();
}

#[test]
fn an_endpoint_outage_fails_closed_except_for_cached_answers() {
    let env = Env::start("", "");
    env.intro.set("opaque-cached", active(json!({})));
    assert_eq!(env.get("/v1.0/apiclients", "opaque-cached").status, 200);
    env.up.clear();
    // The endpoint now fails everything.
    env.intro.set("opaque-cached", raw_answer(500, "{}"));
    env.intro.set("opaque-new", raw_answer(500, "{}"));
    assert_eq!(env.get("/v1.0/apiclients", "opaque-cached").status, 200);
    env.up.clear();
    assert_refused(
        &env.get("/v1.0/apiclients", "opaque-new"),
        503,
        "introspection_unavailable",
        &env.up,
    );

    // An endpoint nobody listens on.
    set_secrets();
    let up = MockUpstream::start();
    let closed = format!("http://127.0.0.1:{}{INTRO_PATH}", free_port());
    let gw = TestGateway::start(
        &ConfigBuilder::new()
            .raw(&intro_issuer("opaque", &closed, ""))
            .upstream("app", &up.url(), "")
            .raw(ROUTES)
            .build(),
    );
    let resp = gw.request_with_token("GET", "/v1.0/apiclients", "opaque-x", &[], None);
    assert_refused(&resp, 503, "introspection_unavailable", &up);
}

#[test]
fn an_introspection_only_gateway_is_ready_at_once() {
    set_secrets();
    let up = MockUpstream::start();
    let intro = MockIntrospection::start();
    let gw = TestGateway::start_unready(
        &ConfigBuilder::new()
            .raw(&intro_issuer("opaque", &intro.url(), ""))
            .upstream("app", &up.url(), "")
            .raw(ROUTES)
            .build(),
    );
    assert!(
        gw.wait_ready(Duration::from_secs(5)),
        "an issuer without keys to load must not hold /readyz back"
    );
    let ready = request(gw.admin_addr().expect("admin"), "GET", "/readyz", &[], None);
    assert_eq!(ready.status, 200, "{}", ready.describe());
}

#[test]
fn several_introspection_issuers_are_tried_in_order_until_one_is_active() {
    set_secrets();
    let up = MockUpstream::start();
    let first = MockIntrospection::start();
    let second = MockIntrospection::start();
    let gw = TestGateway::start(
        &ConfigBuilder::new()
            .raw(&intro_issuer("first", &first.url(), ""))
            .raw(&intro_issuer("second", &second.url(), ""))
            .upstream("app", &up.url(), "")
            .raw(ROUTES)
            .build(),
    );
    second.set("opaque-of-second", active(json!({})));
    let resp = gw.request_with_token("GET", "/v1.0/apiclients", "opaque-of-second", &[], None);
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert_eq!(
        (first.count(), second.count()),
        (1, 1),
        "one call to each, in order"
    );
    first.set("opaque-of-first", active(json!({})));
    let resp = gw.request_with_token("GET", "/v1.0/apiclients", "opaque-of-first", &[], None);
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert_eq!(
        second.calls_for("opaque-of-first"),
        0,
        "the first said active"
    );
    up.clear();
    // Neither knows it: inactive after one call each.
    let resp = gw.request_with_token("GET", "/v1.0/apiclients", "opaque-of-nobody", &[], None);
    assert_refused(&resp, 401, "token_inactive", &up);
    assert_eq!(
        (
            first.calls_for("opaque-of-nobody"),
            second.calls_for("opaque-of-nobody")
        ),
        (1, 1)
    );
}

// === the upstream's client_credentials credential ===

/// An OAuth 2.0 token endpoint issuing `cc-1`, `cc-2`, ... with
/// `expires_in`, or failing with 503 while `down`.
struct MockTokenEndpoint {
    server: MockServer,
    issued: Arc<AtomicUsize>,
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl MockTokenEndpoint {
    fn start(expires_in: u64) -> MockTokenEndpoint {
        let issued = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (n, d) = (issued.clone(), down.clone());
        let server = MockServer::start(move |_req| {
            if d.load(Ordering::SeqCst) {
                return MockResponse::json(503, r#"{"error":"temporarily_unavailable"}"#);
            }
            let k = n.fetch_add(1, Ordering::SeqCst) + 1;
            MockResponse::json(
                200,
                json!({"access_token": format!("cc-{k}"), "token_type": "Bearer", "expires_in": expires_in})
                    .to_string(),
            )
        });
        MockTokenEndpoint {
            server,
            issued,
            down,
        }
    }

    fn url(&self) -> String {
        format!("{}/oauth2/token", self.server.url())
    }

    fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }
}

struct CcEnv {
    up: MockUpstream,
    tokens: MockTokenEndpoint,
    _jwks: MockJwks,
    gw: TestGateway,
}

impl CcEnv {
    fn start(expires_in: u64) -> CcEnv {
        set_secrets();
        let up = MockUpstream::start();
        let tokens = MockTokenEndpoint::start(expires_in);
        let jwks = MockJwks::start(standard_jwks());
        let config = ConfigBuilder::new()
            .issuer("main", DEFAULT_ISSUER, &jwks.url(), "")
            .upstream(
                "iam",
                &up.url(),
                &format!(
                    "auth = {{ token_url = {}, client_id = \"gw:cc\", client_secret_env = {}, scope = \"api admin\" }}",
                    toml_str(&tokens.url()),
                    toml_str(TOKEN_SECRET_ENV)
                ),
            )
            .raw(
                r#"
[[routes]]
name = "brokered"
path = "/v1.0/apiclients"
upstream = "iam"
strip_authorization = true

[[routes]]
name = "passed"
path = "/passed"
upstream = "iam"
"#,
            )
            .build();
        let gw = TestGateway::start(&config);
        CcEnv {
            up,
            tokens,
            _jwks: jwks,
            gw,
        }
    }
}

fn caller_token() -> String {
    TokenBuilder::new(&TestKey::rsa()).build()
}

#[test]
fn the_upstream_sees_the_brokered_token_never_the_callers() {
    let env = CcEnv::start(3600);
    let caller = caller_token();
    for _ in 0..3 {
        let resp = env
            .gw
            .request_with_token("GET", "/v1.0/apiclients", &caller, &[], None);
        assert_eq!(resp.status, 200, "{}", resp.describe());
    }
    let seen = env.up.requests();
    assert_eq!(seen.len(), 3);
    for r in &seen {
        assert_eq!(r.header_all("authorization"), vec!["Bearer cc-1"]);
        assert!(!format!("{:?}", r.headers).contains(&caller));
    }
    // One token for all three (cached), obtained as RFC 6749 §4.4 says.
    assert_eq!(env.tokens.issued(), 1);
    let grant = env.tokens.server.last();
    assert_eq!(grant.method, "POST");
    assert_eq!(
        grant.header("authorization"),
        Some(format!("Basic {}", STANDARD.encode("gw%3Acc:cc%25secret")).as_str())
    );
    assert_eq!(
        String::from_utf8_lossy(&grant.body),
        "grant_type=client_credentials&scope=api+admin"
    );

    // A route that does not strip: the caller's token, and no brokered one.
    env.up.clear();
    let passed = env
        .gw
        .request_with_token("GET", "/passed", &caller, &[], None);
    assert_eq!(passed.status, 200, "{}", passed.describe());
    assert_eq!(
        env.up.last().header("authorization"),
        Some(bearer(&caller).as_str())
    );
}

#[test]
fn the_brokered_token_is_renewed_before_it_expires_and_after_a_401() {
    // `expires_in = 2`: renewed after half its life.
    let env = CcEnv::start(2);
    let caller = caller_token();
    let get = || {
        env.gw
            .request_with_token("GET", "/v1.0/apiclients", &caller, &[], None)
    };
    assert_eq!(get().status, 200);
    assert_eq!(env.up.last().header("authorization"), Some("Bearer cc-1"));
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(get().status, 200);
    assert_eq!(env.up.last().header("authorization"), Some("Bearer cc-2"));

    // The upstream refuses the token: the caller gets that 401 (no retry:
    // the request may have carried a body), and the next request gets a
    // new token at once.
    env.up.set_response(401, br#"{"error":"invalid_token"}"#);
    let started = Instant::now();
    let refused = get();
    assert_eq!(refused.status, 401, "{}", refused.describe());
    assert_eq!(env.up.count(), 3, "not retried");
    env.up.set_response(200, b"{}");
    assert_eq!(get().status, 200);
    assert_eq!(env.up.last().header("authorization"), Some("Bearer cc-3"));
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "renewed at once, not by age"
    );
}

#[test]
fn no_brokered_token_means_nothing_goes_upstream() {
    let env = CcEnv::start(3600);
    env.tokens.down.store(true, Ordering::SeqCst);
    let caller = caller_token();
    let resp = env
        .gw
        .request_with_token("GET", "/v1.0/apiclients", &caller, &[], None);
    assert_refused(&resp, 503, "upstream_credential_unavailable", &env.up);
    // Once the endpoint is back, so is the route.
    env.tokens.down.store(false, Ordering::SeqCst);
    let ok = env
        .gw
        .request_with_token("GET", "/v1.0/apiclients", &caller, &[], None);
    assert_eq!(ok.status, 200, "{}", ok.describe());
    assert_eq!(env.up.last().header("authorization"), Some("Bearer cc-1"));
}

// === explain ===

fn explain_opaque(config: &str, token: &str) -> portcullis::explain::Explained {
    use portcullis::explain::{explain, ExplainArgs, TokenArg};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "portcullis-introspection-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, config).expect("write config");
    let out = explain(&ExplainArgs {
        config: path,
        token: Some(TokenArg(token.to_string())),
        token_file: None,
        from: "127.0.0.1".parse().expect("ip"),
        headers: Vec::new(),
        no_metadata: false,
        body: None,
        content_type: None,
        method: "GET".into(),
        path: "/v1.0/apiclients".into(),
    });
    let _ = std::fs::remove_dir_all(&dir);
    out
}

#[test]
fn explain_introspects_an_opaque_token_and_says_so() {
    set_secrets();
    let intro = MockIntrospection::start();
    let token = "opaque-explained-token";
    intro.set(token, active(json!({})));
    let config = ConfigBuilder::new()
        .raw(&intro_issuer("opaque", &intro.url(), ""))
        .upstream("app", "http://127.0.0.1:9", "")
        .raw(ROUTES)
        .build();
    let out = explain_opaque(&config, token);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, portcullis::explain::EXIT_ALLOW, "{all}");
    assert!(all.contains("opaque tokens introspected at"), "{all}");
    assert!(all.contains("introspected (RFC 7662"), "{all}");
    assert!(all.contains("\"intro-client\""), "{all}");
    assert!(!all.contains(token), "the token is never printed:\n{all}");
    assert_eq!(intro.calls_for(token), 1);

    intro.set(token, raw_answer(200, r#"{"active":false}"#));
    let out = explain_opaque(&config, token);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, portcullis::explain::EXIT_REFUSE, "{all}");
    assert!(all.contains("401 token_inactive"), "{all}");
    assert!(all.contains("an opaque token: introspected"), "{all}");
}

#[test]
fn explain_without_the_introspection_secret_does_not_ask_and_is_undecided() {
    let intro = MockIntrospection::start();
    let config = ConfigBuilder::new()
        .raw(
            &intro_issuer("opaque", &intro.url(), "")
                .replace(INTRO_SECRET_ENV, "PORTCULLIS_TEST_INTRO_SECRET_NEVER_SET"),
        )
        .upstream("app", "http://127.0.0.1:9", "")
        .raw(ROUTES)
        .build();
    let out = explain_opaque(&config, "opaque-undecided");
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, portcullis::explain::EXIT_UNDECIDED, "{all}");
    assert!(
        all.contains("PORTCULLIS_TEST_INTRO_SECRET_NEVER_SET is not set"),
        "{all}"
    );
    assert!(all.contains("DECISION: unknown"), "{all}");
    assert_eq!(intro.count(), 0, "a placeholder secret is never sent");
}

// === config validation ===

fn errors_of(toml: &str) -> Vec<String> {
    match portcullis::config::load_str(toml, &inline_config_origin()) {
        Ok(_) => Vec::new(),
        Err(e) => e
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect(),
    }
}

#[track_caller]
fn assert_error(errors: &[String], path: &str, fragment: &str) {
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&format!("{path}: ")) && e.contains(fragment)),
        "no error at {path} containing {fragment:?} in:\n{}",
        errors.join("\n")
    );
}

#[test]
fn introspection_and_client_credentials_keys_are_validated_with_key_paths() {
    set_secrets();
    let base = ConfigBuilder::new().upstream("app", "http://127.0.0.1:9", "");
    // Two sources at once; JWT-only keys with introspection; a bad URL and
    // cache lifetime; missing credentials.
    let errors = errors_of(
        &base
            .clone()
            .raw(
                r#"
[[issuers]]
name = "both"
issuer = "https://idp.test"
jwks_url = "http://127.0.0.1:9/jwks"
introspection_url = "http://127.0.0.1:9/introspect"
introspection_client_id = "gw"
introspection_client_secret_env = "PORTCULLIS_TEST_INTRO_SECRET"

[[issuers]]
name = "mixed"
issuer = "https://idp.test"
algorithms = ["RS256"]
token_types = ["at+jwt"]
introspection_url = "ftp://idp.test/introspect"
introspection_client_secret_env = "PORTCULLIS_TEST_INTRO_SECRET"
introspection_cache_seconds = -1

[[issuers]]
name = "stray"
issuer = "https://idp.test"
algorithms = ["RS256"]
jwks_url = "http://127.0.0.1:9/jwks"
introspection_client_id = "gw"
introspection_cache_seconds = 5

[[upstreams]]
name = "cc"
url = "http://127.0.0.1:9"
auth = { token_url = "not a url", client_secret_env = "PORTCULLIS_TEST_UPSTREAM_CC_SECRET", scope = "" }

[[upstreams]]
name = "cc-mixed"
url = "http://127.0.0.1:9"
auth = { bearer_env = "PORTCULLIS_TEST_UPSTREAM_CC_SECRET", token_url = "http://127.0.0.1:9/token", client_id = "gw", client_secret_env = "PORTCULLIS_TEST_UPSTREAM_CC_SECRET" }

[[upstreams]]
name = "cc-typo"
url = "http://127.0.0.1:9"
auth = { token_url = "http://127.0.0.1:9/token", client_id = "gw", client_secret_env = "PORTCULLIS_TEST_UPSTREAM_CC_SECRET", scopes = "x" }
"#,
            )
            .build(),
    );
    assert_error(
        &errors,
        "issuers[0]",
        "exactly one of jwks_url, jwks_file, hmac_secret_env, introspection_url",
    );
    assert_error(
        &errors,
        "issuers[1].algorithms",
        "not used with introspection_url",
    );
    assert_error(
        &errors,
        "issuers[1].token_types",
        "not used with introspection_url",
    );
    assert_error(
        &errors,
        "issuers[1].introspection_url",
        "http:// or https://",
    );
    assert_error(&errors, "issuers[1].introspection_client_id", "is required");
    assert_error(
        &errors,
        "issuers[1].introspection_cache_seconds",
        "out of range",
    );
    assert_error(
        &errors,
        "issuers[2].introspection_client_id",
        "only applies with introspection_url",
    );
    assert_error(
        &errors,
        "issuers[2].introspection_cache_seconds",
        "only applies with introspection_url",
    );
    assert_error(&errors, "upstreams[1].auth.token_url", "not a URL");
    assert_error(&errors, "upstreams[1].auth.client_id", "is required");
    assert_error(&errors, "upstreams[1].auth.scope", "must not be empty");
    assert_error(&errors, "upstreams[2].auth", "use one form");
    assert_error(&errors, "upstreams[3].auth.scopes", "unknown field");
}

#[test]
fn a_missing_introspection_secret_is_an_error_at_run_and_a_warning_in_check() {
    use portcullis::config::{load_str_with, EnvMode};
    let toml = ConfigBuilder::new()
        .raw(&intro_issuer("opaque", "http://127.0.0.1:9/introspect", "").replace(
            INTRO_SECRET_ENV,
            "PORTCULLIS_TEST_INTRO_SECRET_NEVER_SET",
        ))
        .upstream(
            "app",
            "http://127.0.0.1:9",
            "auth = { token_url = \"http://127.0.0.1:9/token\", client_id = \"gw\", client_secret_env = \"PORTCULLIS_TEST_CC_NEVER_SET\" }",
        )
        .raw(ROUTES)
        .build();
    let strict = errors_of(&toml);
    assert_error(
        &strict,
        "issuers[0].introspection_client_secret_env",
        "PORTCULLIS_TEST_INTRO_SECRET_NEVER_SET is not set",
    );
    assert_error(
        &strict,
        "upstreams[0].auth.client_secret_env",
        "PORTCULLIS_TEST_CC_NEVER_SET is not set",
    );
    assert_eq!(strict.len(), 2, "nothing else: {strict:?}");

    let loaded = load_str_with(&toml, &inline_config_origin(), EnvMode::Structural)
        .expect("check mode validates the config, not the environment");
    let unset: Vec<&str> = loaded
        .config
        .unset_secrets
        .iter()
        .map(|u| u.path.as_str())
        .collect();
    assert_eq!(
        unset,
        [
            "issuers[0].introspection_client_secret_env",
            "upstreams[0].auth.client_secret_env"
        ]
    );
    assert!(loaded.config.ensure_servable().is_err());
}

#[test]
fn the_metadata_source_and_an_upstream_with_one_credential_share_one_token() {
    set_secrets();
    let up = MockUpstream::start();
    let tokens = MockTokenEndpoint::start(3600);
    let jwks = MockJwks::start(standard_jwks());
    let iam = MockServer::start(|_req| {
        MockResponse::json(
            200,
            json!({"id": "rec-1", "clientId": DEFAULT_CLIENT_ID, "enabled": true,
                   "entitlements": [], "ipFilterOp": null, "ipFilters": []})
            .to_string(),
        )
    });
    let credential = format!(
        "token_url = {}, client_id = \"gw:cc\", client_secret_env = {}, scope = \"api admin\"",
        toml_str(&tokens.url()),
        toml_str(TOKEN_SECRET_ENV)
    );
    let config = ConfigBuilder::new()
        .issuer("main", DEFAULT_ISSUER, &jwks.url(), "")
        .upstream("iam", &up.url(), &format!("auth = {{ {credential} }}"))
        .raw(&format!(
            "[clients]\nsource = \"http\"\nurl = {}\nentitlements_from = \"token\"\n{}\n",
            toml_str(&format!("{}/v1.0/apiclients/{{client_id}}", iam.url())),
            credential.replace(", ", "\n"),
        ))
        .raw(
            r#"
[[routes]]
name = "brokered"
path = "/v1.0/apiclients"
upstream = "iam"
strip_authorization = true
"#,
        )
        .build();
    let gw = TestGateway::start(&config);
    let resp = gw.request_with_token("GET", "/v1.0/apiclients", &caller_token(), &[], None);
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert_eq!(iam.last().header("authorization"), Some("Bearer cc-1"));
    assert_eq!(up.last().header("authorization"), Some("Bearer cc-1"));
    assert_eq!(
        tokens.issued(),
        1,
        "one token for both users of the credential"
    );
}
