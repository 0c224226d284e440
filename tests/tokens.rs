//! Step 4 (token) through the socket: one happy path per algorithm family,
//! every refusal with its own `error` code and an RFC 6750 challenge, and the
//! key-set lifecycle (rotation, throttled refetch, outages, never loaded).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

const HS_ISSUER: &str = "https://hs.test";
const STRICT_ISSUER: &str = "https://strict.test";
const HMAC_SECRET: &str = "portcullis-test-hmac-secret-0123456789abcdef";

const ANY_ISSUER_ROUTE: &str = r#"
[[routes]]
name = "any-issuer"
methods = ["GET"]
path = "/r/{id}"
upstream = "app"
"#;

const ROUTES: &str = r#"
[[routes]]
name = "any-issuer"
methods = ["GET"]
path = "/r/{id}"
upstream = "app"

[[routes]]
name = "hs-only"
methods = ["GET"]
path = "/hs/{id}"
upstream = "app"
issuers = ["hs"]
"#;

/// A fresh env var name holding the HMAC secret (unique per test: tests run
/// in parallel threads of one process).
fn hmac_env() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "PORTCULLIS_TEST_HMAC_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    std::env::set_var(&name, HMAC_SECRET);
    name
}

/// Issuers `main` (JWKS, the standard algorithms), `hs` (HS256) and `strict`
/// (same JWKS, `token_types = ["at+jwt"]`); `main_extra` goes into `main`.
fn setup_with(main_extra: &str, jwks_doc: String) -> (MockUpstream, MockJwks, TestGateway) {
    let up = MockUpstream::start();
    let jwks = MockJwks::start(jwks_doc);
    let config = ConfigBuilder::new()
        .issuer("main", DEFAULT_ISSUER, &jwks.url(), main_extra)
        .hmac_issuer("hs", HS_ISSUER, &hmac_env(), "")
        .issuer(
            "strict",
            STRICT_ISSUER,
            &jwks.url(),
            "token_types = [\"at+jwt\"]",
        )
        .upstream("app", &up.url(), "")
        .raw(ROUTES)
        .build();
    let gw = TestGateway::start(&config);
    (up, jwks, gw)
}

fn setup() -> (MockUpstream, MockJwks, TestGateway) {
    setup_with("", standard_jwks())
}

/// The token with one bit of its signature flipped.
fn corrupt_signature(token: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let (message, sig) = token.rsplit_once('.').expect("three parts");
    let mut bytes = URL_SAFE_NO_PAD.decode(sig).expect("base64url signature");
    bytes[5] ^= 0x01;
    format!("{message}.{}", URL_SAFE_NO_PAD.encode(bytes))
}

fn rsa_token() -> String {
    TokenBuilder::new(&TestKey::rsa()).build()
}

#[test]
fn every_algorithm_family_is_accepted() {
    let (up, _jwks, gw) = setup();
    gw.warm_up("/r/warm", &rsa_token(), &up);
    let hs = TestKey::hmac(HMAC_SECRET.as_bytes());
    let tokens: Vec<(&str, String)> = vec![
        ("RS256", TokenBuilder::new(&TestKey::rsa()).build()),
        ("PS256", TokenBuilder::new(&TestKey::rsa_pss()).build()),
        ("ES256", TokenBuilder::new(&TestKey::ec256()).build()),
        ("ES384", TokenBuilder::new(&TestKey::ec384()).build()),
        ("EdDSA", TokenBuilder::new(&TestKey::ed25519()).build()),
        (
            "HS256",
            TokenBuilder::new(&hs).no_kid().iss(HS_ISSUER).build(),
        ),
        (
            "HS256 on an hs-only route",
            TokenBuilder::new(&hs).no_kid().iss(HS_ISSUER).build(),
        ),
        (
            "aud as an array",
            TokenBuilder::new(&TestKey::rsa())
                .aud(json!(["https://x.test", DEFAULT_AUDIENCE]))
                .build(),
        ),
        (
            "expired within the leeway",
            TokenBuilder::new(&TestKey::rsa()).exp_in(-10).build(),
        ),
        (
            "typ at+jwt",
            TokenBuilder::new(&TestKey::ec256())
                .header("typ", json!("at+jwt"))
                .build(),
        ),
        (
            "no typ",
            TokenBuilder::new(&TestKey::ec256())
                .without_header("typ")
                .build(),
        ),
        (
            "strict issuer with at+jwt",
            TokenBuilder::new(&TestKey::rsa())
                .iss(STRICT_ISSUER)
                .header("typ", json!("at+jwt"))
                .build(),
        ),
    ];
    let mut cases = Cases::new();
    for (label, token) in &tokens {
        up.clear();
        let target = if label.contains("hs-only") {
            "/hs/1"
        } else {
            "/r/1"
        };
        let resp = gw.request_with_token("GET", target, token, &[], None);
        if resp.status != 200 {
            cases.fail(
                label,
                format!("status {}: {}", resp.status, resp.describe()),
            );
        } else if up.count() != 1 {
            cases.fail(label, format!("upstream saw {} requests", up.count()));
        }
    }
    // The scheme is case-insensitive (RFC 7235 §2.1).
    for scheme in ["bearer", "BEARER"] {
        up.clear();
        let auth = format!("{scheme} {}", rsa_token());
        let resp = gw.request("GET", "/r/1", &[("Authorization", &auth)], None);
        if resp.status != 200 {
            cases.fail(&format!("scheme {scheme}"), resp.describe());
        }
    }
    cases.finish();
}

#[test]
fn a_missing_token_gets_a_challenge_without_error_attribute() {
    let (up, _jwks, gw) = setup();
    let resp = gw.request("GET", "/r/1", &[], None);
    assert_refused(&resp, 401, "missing_token", &up);
    let challenge = resp
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("no WWW-Authenticate: {}", resp.describe()));
    assert!(challenge.starts_with("Bearer"), "challenge {challenge:?}");
    assert!(
        challenge.contains(r#"realm="portcullis""#),
        "challenge {challenge:?}"
    );
    assert!(
        !challenge.contains("error"),
        "a missing token must not carry an error attribute (RFC 6750 §3.1): {challenge:?}"
    );
}

#[test]
fn invalid_tokens_are_refused_with_specific_codes() {
    let (up, _jwks, gw) = setup();
    gw.warm_up("/r/warm", &rsa_token(), &up);
    let rsa = TestKey::rsa();
    let t = now();
    let claims = default_claims_json();

    // An attacker's own key set, advertised through `jku` / `x5u`.
    let attacker = TestKey::rsa_b().with_kid("attacker-1");
    let attacker_jwks = MockJwks::start(jwks(&[&attacker]));

    // A validly signed token, then its claims swapped for others.
    let tampered = {
        let good = rsa_token();
        let evil = TokenBuilder::new(&rsa).sub("admin").build();
        let g: Vec<&str> = good.split('.').collect();
        let e: Vec<&str> = evil.split('.').collect();
        format!("{}.{}.{}", g[0], e[1], g[2])
    };
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };

    let table: Vec<(&str, String, &str)> = vec![
        (
            "Basic scheme",
            "Basic dXNlcjpwYXNz".into(),
            "invalid_authorization_scheme",
        ),
        (
            "Digest scheme",
            "Digest username=\"x\"".into(),
            "invalid_authorization_scheme",
        ),
        (
            "garbage three parts",
            bearer("abc.def.ghi"),
            "malformed_token",
        ),
        (
            "header not JSON",
            bearer(&format!("{}.{}.c2ln", b64("not json"), b64(&claims))),
            "malformed_token",
        ),
        (
            "claims not JSON",
            bearer(&format!(
                "{}.{}.c2ln",
                b64(r#"{"alg":"RS256","kid":"rsa-1"}"#),
                b64("[1,2")
            )),
            "malformed_token",
        ),
        (
            "alg none",
            bearer(&unsigned_token(r#"{"alg":"none","typ":"JWT"}"#, &claims)),
            "algorithm_not_allowed",
        ),
        (
            "alg none with a kid",
            bearer(&unsigned_token(r#"{"alg":"none","kid":"rsa-1"}"#, &claims)),
            "algorithm_not_allowed",
        ),
        (
            "alg not in the issuer's list (RS384)",
            bearer(&TokenBuilder::new(&rsa).sign_as(Algorithm::RS384).build()),
            "algorithm_not_allowed",
        ),
        (
            "HS256 signed with the RSA public key",
            bearer(&TokenBuilder::new(&TestKey::hmac(&rsa.public_pem()).with_kid("rsa-1")).build()),
            "algorithm_not_allowed",
        ),
        (
            "duplicate alg in the header",
            bearer(&raw_token(
                r#"{"alg":"HS256","typ":"JWT","kid":"rsa-1","alg":"RS256"}"#,
                &claims,
                &rsa,
            )),
            "duplicate_json_member",
        ),
        (
            "duplicate exp in the claims",
            bearer(&raw_token(
                r#"{"alg":"RS256","typ":"JWT","kid":"rsa-1"}"#,
                &format!(
                    r#"{{"iss":"{DEFAULT_ISSUER}","sub":"s","aud":"{DEFAULT_AUDIENCE}","client_id":"c","iat":{t},"exp":{},"exp":{}}}"#,
                    t - 3600,
                    t + 300
                ),
                &rsa,
            )),
            "duplicate_json_member",
        ),
        (
            "duplicate sub in the claims",
            bearer(&raw_token(
                r#"{"alg":"RS256","typ":"JWT","kid":"rsa-1"}"#,
                &format!(
                    r#"{{"iss":"{DEFAULT_ISSUER}","sub":"s","aud":"{DEFAULT_AUDIENCE}","client_id":"c","iat":{t},"exp":{},"sub":"admin"}}"#,
                    t + 300
                ),
                &rsa,
            )),
            "duplicate_json_member",
        ),
        (
            "unknown issuer",
            bearer(&TokenBuilder::new(&rsa).iss("https://evil.test").build()),
            "unknown_issuer",
        ),
        (
            "issuer with a trailing slash",
            bearer(
                &TokenBuilder::new(&rsa)
                    .iss(&format!("{DEFAULT_ISSUER}/"))
                    .build(),
            ),
            "unknown_issuer",
        ),
        (
            "no iss",
            bearer(&TokenBuilder::new(&rsa).without("iss").build()),
            "unknown_issuer",
        ),
        (
            "expired",
            bearer(&TokenBuilder::new(&rsa).exp_in(-3600).build()),
            "token_expired",
        ),
        (
            "expired beyond the leeway",
            bearer(&TokenBuilder::new(&rsa).exp_in(-90).build()),
            "token_expired",
        ),
        (
            "nbf in the future",
            bearer(&TokenBuilder::new(&rsa).nbf(t + 3600).build()),
            "token_not_yet_valid",
        ),
        (
            "iat in the future",
            bearer(&TokenBuilder::new(&rsa).iat(t + 3600).build()),
            "token_issued_in_future",
        ),
        (
            "no exp",
            bearer(&TokenBuilder::new(&rsa).without("exp").build()),
            "missing_exp",
        ),
        (
            "wrong aud",
            bearer(
                &TokenBuilder::new(&rsa)
                    .aud("https://other-api.test")
                    .build(),
            ),
            "audience_mismatch",
        ),
        (
            "aud array without ours",
            bearer(
                &TokenBuilder::new(&rsa)
                    .aud(json!(["https://a.test", "https://b.test"]))
                    .build(),
            ),
            "audience_mismatch",
        ),
        (
            "no aud",
            bearer(&TokenBuilder::new(&rsa).without("aud").build()),
            "audience_mismatch",
        ),
        (
            "crit with an unknown extension",
            bearer(
                &TokenBuilder::new(&rsa)
                    .header("crit", json!(["x-custom"]))
                    .header("x-custom", json!(1))
                    .build(),
            ),
            "unsupported_critical_header",
        ),
        (
            "typ not accepted",
            bearer(
                &TokenBuilder::new(&rsa)
                    .header("typ", json!("secevent+jwt"))
                    .build(),
            ),
            "token_type_not_allowed",
        ),
        (
            "typ JWT on an at+jwt-only issuer",
            bearer(&TokenBuilder::new(&rsa).iss(STRICT_ISSUER).build()),
            "token_type_not_allowed",
        ),
        (
            "signed by another key",
            bearer(&TokenBuilder::new(&TestKey::rsa_b().with_kid("rsa-1")).build()),
            "bad_signature",
        ),
        (
            "claims swapped after signing",
            bearer(&tampered),
            "bad_signature",
        ),
        (
            "ES256 signature corrupted",
            bearer(&corrupt_signature(
                &TokenBuilder::new(&TestKey::ec256()).build(),
            )),
            "bad_signature",
        ),
        (
            "EdDSA signature corrupted",
            bearer(&corrupt_signature(
                &TokenBuilder::new(&TestKey::ed25519()).build(),
            )),
            "bad_signature",
        ),
        (
            "unknown kid",
            bearer(&TokenBuilder::new(&rsa.clone().with_kid("nope")).build()),
            "unknown_key",
        ),
        (
            "embedded jwk with the attacker's key",
            bearer(
                &TokenBuilder::new(&attacker)
                    .header("jwk", attacker.jwk_json())
                    .build(),
            ),
            "unknown_key",
        ),
        (
            "embedded jwk under a trusted kid",
            bearer(
                &TokenBuilder::new(&TestKey::rsa_b().with_kid("rsa-1"))
                    .header("jwk", TestKey::rsa_b().with_kid("rsa-1").jwk_json())
                    .build(),
            ),
            "bad_signature",
        ),
        (
            "jku to the attacker's JWKS",
            bearer(
                &TokenBuilder::new(&attacker)
                    .header("jku", json!(attacker_jwks.url()))
                    .build(),
            ),
            "unknown_key",
        ),
        (
            "x5u to the attacker's server",
            bearer(
                &TokenBuilder::new(&attacker)
                    .header("x5u", json!(attacker_jwks.url()))
                    .build(),
            ),
            "unknown_key",
        ),
    ];

    let mut cases = Cases::new();
    for (label, authorization, code) in &table {
        let resp = gw.request("GET", "/r/1", &[("Authorization", authorization)], None);
        let mut problems = refusal_problems(&resp, 401, code, &up);
        match resp.header("www-authenticate") {
            Some(c) if c.starts_with("Bearer") && c.contains(r#"error="invalid_token""#) => {}
            other => problems.push(format!(
                "WWW-Authenticate {other:?} lacks error=\"invalid_token\""
            )),
        }
        let token = authorization.split_once(' ').map(|(_, t)| t).unwrap_or("");
        if token.len() > 20 && resp.body_str().contains(token) {
            problems.push("the response body echoes the token".into());
        }
        cases.check(label, problems, Some(&resp));
        up.clear();
    }

    // The route accepts only the `hs` issuer.
    let resp = gw.request_with_token("GET", "/hs/1", &rsa_token(), &[], None);
    let mut problems = refusal_problems(&resp, 401, "issuer_not_accepted", &up);
    if !resp
        .header("www-authenticate")
        .unwrap_or_default()
        .contains(r#"error="invalid_token""#)
    {
        problems.push("WWW-Authenticate lacks error=\"invalid_token\"".into());
    }
    cases.check("issuer not accepted on the route", problems, Some(&resp));

    if attacker_jwks.fetch_count() != 0 {
        cases.fail(
            "jku / x5u",
            format!(
                "the gateway fetched the attacker's URL {} time(s)",
                attacker_jwks.fetch_count()
            ),
        );
    }
    cases.finish();
}

#[test]
fn a_new_kid_is_accepted_after_the_jwks_rotates() {
    let (up, keys, gw) = setup_with("jwks_min_refetch_seconds = 1", jwks(&[&TestKey::rsa()]));
    gw.warm_up("/r/warm", &rsa_token(), &up);
    let before = keys.fetch_count();
    keys.set_jwks(jwks(&[&TestKey::rsa(), &TestKey::rsa_b()]));
    // Out of the refetch window opened by the start-up fetch.
    std::thread::sleep(Duration::from_millis(1100));
    let token = TokenBuilder::new(&TestKey::rsa_b()).build();
    let resp = gw.request_with_token("GET", "/r/1", &token, &[], None);
    assert_eq!(
        resp.status,
        200,
        "token under the new kid: {}",
        resp.describe()
    );
    assert!(
        keys.fetch_count() > before,
        "the unknown kid did not trigger a refetch"
    );
    assert_eq!(up.count(), 1);
    // The old key still works.
    let resp = gw.request_with_token("GET", "/r/1", &rsa_token(), &[], None);
    assert_eq!(resp.status, 200, "{}", resp.describe());
}

#[test]
fn unknown_kid_refetches_are_throttled() {
    let (up, keys, gw) = setup_with(
        "jwks_min_refetch_seconds = 3600\njwks_refresh_seconds = 3600",
        jwks(&[&TestKey::rsa()]),
    );
    gw.warm_up("/r/warm", &rsa_token(), &up);
    let c0 = keys.fetch_count();

    let first = TokenBuilder::new(&TestKey::rsa_b().with_kid("new-1")).build();
    let resp = gw.request_with_token("GET", "/r/1", &first, &[], None);
    assert_refused(&resp, 401, "unknown_key", &up);
    let c1 = keys.fetch_count();
    assert!(c1 <= c0 + 1, "one unknown kid caused {} fetches", c1 - c0);

    // Even once the key is published, a second unknown kid within the
    // window must not cause another fetch.
    keys.set_jwks(jwks(&[
        &TestKey::rsa(),
        &TestKey::rsa_b().with_kid("new-2"),
    ]));
    let second = TokenBuilder::new(&TestKey::rsa_b().with_kid("new-2")).build();
    let resp = gw.request_with_token("GET", "/r/1", &second, &[], None);
    assert_refused(&resp, 401, "unknown_key", &up);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        keys.fetch_count(),
        c1,
        "a second unknown kid within jwks_min_refetch_seconds fetched the JWKS again"
    );
}

#[test]
fn concurrent_unknown_kids_make_at_most_one_fetch() {
    let (up, keys, gw) = setup_with("jwks_min_refetch_seconds = 1", jwks(&[&TestKey::rsa()]));
    gw.warm_up("/r/warm", &rsa_token(), &up);
    std::thread::sleep(Duration::from_millis(1100));
    let c0 = keys.fetch_count();
    let addr = gw.addr();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let token =
                TokenBuilder::new(&TestKey::rsa_b().with_kid(&format!("burst-{i}"))).build();
            std::thread::spawn(move || {
                request(
                    addr,
                    "GET",
                    "/r/1",
                    &[("Authorization", &bearer(&token))],
                    None,
                )
            })
        })
        .collect();
    for t in threads {
        let resp = t.join().expect("client thread");
        assert_refused(&resp, 401, "unknown_key", &up);
    }
    let fetched = keys.fetch_count() - c0;
    assert!(
        fetched <= 1,
        "8 concurrent unknown kids caused {fetched} JWKS fetches"
    );
}

#[test]
fn loaded_keys_survive_a_failing_jwks() {
    let (up, keys, gw) = setup_with(
        "jwks_refresh_seconds = 1\njwks_min_refetch_seconds = 1",
        jwks(&[&TestKey::rsa()]),
    );
    gw.warm_up("/r/warm", &rsa_token(), &up);
    keys.set_failing(true);
    let c0 = keys.fetch_count();
    assert!(
        wait_until(Duration::from_millis(2500), || keys.fetch_count() > c0),
        "no background refresh within 2.5 s with jwks_refresh_seconds = 1"
    );
    let resp = gw.request_with_token("GET", "/r/1", &rsa_token(), &[], None);
    assert_eq!(
        resp.status,
        200,
        "a loaded key stopped working when the JWKS failed: {}",
        resp.describe()
    );
}

#[test]
fn loaded_keys_survive_an_empty_or_broken_jwks_answer() {
    let (up, keys, gw) = setup_with(
        "jwks_refresh_seconds = 1\njwks_min_refetch_seconds = 1",
        jwks(&[&TestKey::rsa()]),
    );
    gw.warm_up("/r/warm", &rsa_token(), &up);
    for (label, doc) in [
        ("empty key set", r#"{"keys":[]}"#),
        ("not JSON", "<html>oops</html>"),
    ] {
        keys.set_jwks(doc.to_string());
        let c0 = keys.fetch_count();
        assert!(
            wait_until(Duration::from_millis(2500), || keys.fetch_count() > c0),
            "no background refresh within 2.5 s"
        );
        std::thread::sleep(Duration::from_millis(50));
        let resp = gw.request_with_token("GET", "/r/1", &rsa_token(), &[], None);
        assert_eq!(
            resp.status,
            200,
            "after an answer with {label}: {}",
            resp.describe()
        );
    }
}

/// Issuers whose JWKS never answered: one failing with 500, one on a closed port.
fn never_loaded() -> (MockUpstream, MockJwks, TestGateway) {
    let up = MockUpstream::start();
    let down = MockJwks::start_failing();
    let config = ConfigBuilder::new()
        .issuer(
            "down",
            "https://down.test",
            &down.url(),
            "jwks_refresh_seconds = 1\njwks_min_refetch_seconds = 1",
        )
        .issuer(
            "gone",
            "https://gone.test",
            &format!("http://127.0.0.1:{}/jwks", free_port()),
            "",
        )
        .upstream("app", &up.url(), "")
        .raw(ANY_ISSUER_ROUTE)
        .build();
    let gw = TestGateway::start_unready(&config);
    (up, down, gw)
}

#[test]
fn an_issuer_whose_keys_never_loaded_fails_closed_with_503() {
    let (up, down, gw) = never_loaded();
    // Let the first fetches fail.
    wait_until(Duration::from_secs(2), || down.fetch_count() > 0);
    let mut cases = Cases::new();
    for iss in ["https://down.test", "https://gone.test"] {
        let token = TokenBuilder::new(&TestKey::rsa()).iss(iss).build();
        let resp = gw.request_with_token("GET", "/r/1", &token, &[], None);
        cases.refused(iss, &resp, 503, "keys_unavailable", &up);
    }
    cases.finish();
}

#[test]
fn readyz_is_not_ready_while_an_issuer_has_no_keys() {
    let (_up, _down, gw) = never_loaded();
    std::thread::sleep(Duration::from_millis(300));
    let admin = gw.admin_addr().expect("admin listener");
    let resp = send_raw(admin, &build_request("GET", "/readyz", &[], None));
    assert_eq!(
        resp.status,
        503,
        "/readyz with an issuer that never had keys: {}",
        resp.describe()
    );
}
