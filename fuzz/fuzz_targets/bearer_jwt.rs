//! The bearer/JWT front end: `auth::bearer_token` on an `Authorization`
//! value, `auth::strict_json::parse_object`, and `Verifier::verify` with a
//! static key set (an HS256 secret and an RS256 key from a JWKS file), up to
//! and — for HS256 tokens the target signs itself — past the signature.
//!
//! Input: one byte choosing the mode, then
//! * mode 0: an `Authorization` header value; its token, if any, is verified;
//! * mode 1: JOSE header JSON, a 0xFF byte, claims JSON: encoded and signed
//!   with the HS256 secret, so header and claims rules after the signature
//!   (`exp`, `nbf`, `iat`, `aud`, entitlements, client id) are reached;
//! * mode 2: bytes for the strict JSON parser alone.
//!
//! Invariants: no panic; the token cache never changes a decision (cached
//! and uncached verification agree, also on a second, cached call); a
//! verified token has a string `iss` of a configured issuer, an `exp` not
//! past `now` + leeway, an `aud` with the configured audience, and the
//! entitlements and client id its claims hold; strict JSON accepts exactly
//! what serde_json accepts as an object, minus duplicate names and nesting
//! deeper than `MAX_DEPTH`.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portcullis::auth::strict_json::{self, StrictJsonError, MAX_DEPTH};
use portcullis::auth::{bearer_token, entitlements_from_claims, Verifier};
use portcullis::config::Config;
use serde_json::{Map, Value};

const SECRET: &str = "fuzz-secret-fuzz-secret-fuzz-secret-0123";
const NOW: u64 = 1_700_000_000;
const LEEWAY: u64 = 30;
const AUDIENCE: &str = "https://api.test";
const HS_ISSUER: &str = "https://hs.test";
const RS_ISSUER: &str = "https://rs.test";

const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:18080"]

[admin]
listen = "127.0.0.1:19090"

[[issuers]]
name = "hs"
issuer = "https://hs.test"
audiences = ["https://api.test"]
algorithms = ["HS256"]
hmac_secret_env = "PORTCULLIS_FUZZ_HMAC"
leeway_seconds = 30
entitlements_claim = "realm.roles"

[[issuers]]
name = "rs"
issuer = "https://rs.test"
audiences = ["https://api.test"]
algorithms = ["RS256", "PS256", "ES256"]
jwks_file = "fixtures/jwks.json"
leeway_seconds = 30

[[upstreams]]
name = "app"
url = "http://127.0.0.1:18081"

[[routes]]
name = "all"
path = "/{*rest}"
upstream = "app"
"#;

struct Setup {
    config: Config,
    cached: Verifier,
    uncached: Verifier,
    runtime: tokio::runtime::Runtime,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        std::env::set_var("PORTCULLIS_FUZZ_HMAC", SECRET);
        let origin = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz.toml");
        let config = portcullis::config::load_str(CONFIG, &origin)
            .unwrap_or_else(|e| panic!("fuzz config rejected: {e}"))
            .config;
        let cached = Verifier::new(&config.issuers);
        let uncached = Verifier::new(&config.issuers);
        assert!(cached.all_ready(), "static keys loaded");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        Setup {
            config,
            cached,
            uncached,
            runtime,
        }
    })
}

fn hs256(message: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET.as_bytes());
    URL_SAFE_NO_PAD.encode(aws_lc_rs::hmac::sign(&key, message).as_ref())
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn check_strict_json(bytes: &[u8]) {
    let strict = strict_json::parse_object(bytes);
    let lenient = serde_json::from_slice::<Value>(bytes);
    match (&strict, &lenient) {
        (Ok(map), Ok(value)) => assert_eq!(&Value::Object(map.clone()), value),
        (Ok(_), Err(e)) => panic!("strict JSON accepted what serde_json refuses: {e}"),
        (Err(StrictJsonError::Malformed), Ok(Value::Object(map))) => {
            // Only depth (serde_json's own limit is 128) may explain it —
            // or a duplicate hidden by a deeper problem, which is Malformed
            // only if there is no duplicate: check by depth.
            let d = depth(&Value::Object(map.clone()));
            assert!(
                d > MAX_DEPTH,
                "strict JSON refused a valid object of depth {d}"
            );
        }
        _ => {}
    }
}

fn verify_all(token: &str) {
    let s = setup();
    let accepted = [0usize, 1];
    let uncached = s
        .runtime
        .block_on(s.uncached.verify_uncached(token, &accepted, NOW));
    let first = s.runtime.block_on(s.cached.verify(token, &accepted, NOW));
    let second = s.runtime.block_on(s.cached.verify(token, &accepted, NOW));
    match (&uncached, &first, &second) {
        (Ok(u), Ok(a), Ok(b)) => {
            assert_eq!(u, &**a);
            assert_eq!(a, b);
        }
        (Err(u), Err(a), Err(b)) => {
            assert_eq!(u, a);
            assert_eq!(a, b);
        }
        _ => panic!("cache changed the decision: {uncached:?} / {first:?} / {second:?}"),
    }
    let Ok(verified) = uncached else {
        return;
    };
    // Re-derive what the verifier claims from the claims it returns.
    let claims: &Map<String, Value> = &verified.claims;
    let issuer = &s.config.issuers[verified.issuer];
    assert_eq!(
        claims.get("iss").and_then(Value::as_str),
        Some(issuer.issuer.as_str())
    );
    assert!([HS_ISSUER, RS_ISSUER].contains(&issuer.issuer.as_str()));
    let exp = claims
        .get("exp")
        .and_then(Value::as_f64)
        .expect("exp is a number");
    assert!(NOW as f64 <= exp + LEEWAY as f64, "expired token accepted");
    assert_eq!(verified.expires_at, exp.floor() as u64);
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == AUDIENCE,
        Some(Value::Array(items)) => items.iter().any(|a| a.as_str() == Some(AUDIENCE)),
        _ => false,
    };
    assert!(aud_ok, "token without the audience accepted");
    if let Some(nbf) = claims.get("nbf").and_then(Value::as_f64) {
        assert!(NOW as f64 + LEEWAY as f64 >= nbf);
    }
    assert_eq!(
        entitlements_from_claims(claims, &issuer.entitlements_claim).as_deref(),
        Ok(&*verified.entitlements)
    );
    let client_id = issuer
        .client_id_claims
        .iter()
        .find_map(|name| claims.get(name).and_then(Value::as_str));
    assert_eq!(verified.client_id.as_deref(), client_id);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let Ok(value) = HeaderValue::from_bytes(rest) else {
                return;
            };
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, value);
            if let Ok(Some(token)) = bearer_token(&headers) {
                assert!(!token.is_empty() && !token.contains(' '));
                verify_all(token);
            }
        }
        1 => {
            let split = rest.iter().position(|&b| b == 0xFF).unwrap_or(rest.len());
            let header = &rest[..split];
            let claims = rest.get(split + 1..).unwrap_or_default();
            check_strict_json(header);
            check_strict_json(claims);
            let mut token = URL_SAFE_NO_PAD.encode(header);
            token.push('.');
            token.push_str(&URL_SAFE_NO_PAD.encode(claims));
            let signature = hs256(token.as_bytes());
            token.push('.');
            token.push_str(&signature);
            verify_all(&token);
        }
        _ => check_strict_json(rest),
    }
});
