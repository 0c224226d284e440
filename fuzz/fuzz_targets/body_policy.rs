//! `[routes.body]` rules (`policy::body::BodyPolicy::evaluate`) on arbitrary
//! bodies, with a policy compiled from a config the way the gateway loads
//! it: every rule kind, the shipped entitlement catalogue.
//!
//! Input: one byte choosing the content type and the caller's
//! entitlements, then the body.
//!
//! Invariants: no panic; a refusal has a 4xx status; an accepted body is a
//! strict JSON object that satisfies each rule, re-checked here
//! independently (denied fields absent, only allowed top-level names,
//! required fields present, enum values in their set, CIDR lists parse,
//! granted entitlements held by the caller, the body id equal to the path
//! id); a refusal message never quotes the value of a member whose name
//! says secret or password.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis::auth::strict_json;
use portcullis::policy::body::{BodyPolicy, BodyRequest};
use portcullis::policy::ip::parse_entry;
use serde_json::Value;

/// The route under test; the constants below repeat its rules for the
/// independent re-check.
const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:18080"]

[admin]
listen = "127.0.0.1:19090"

[catalogs.verify]
file = "../config/catalogs/verify-entitlements.tsv"
offerings = ["CIC"]

[[issuers]]
name = "main"
issuer = "https://idp.test"
algorithms = ["HS256"]
hmac_secret_env = "PORTCULLIS_FUZZ_HMAC"

[[upstreams]]
name = "verify"
url = "http://127.0.0.1:18081"
catalog = "verify"

[[routes]]
name = "apiclient-update"
methods = ["PUT"]
path = "/v1.0/apiclients/{id}"
upstream = "verify"
require_all = ["manageAPIClients"]

[routes.body]
json = true
max_bytes = 16384
path_params = { "/id" = "id" }
deny = ["/clientId", "/owner/admin"]
only = ["id", "clientName", "clientSecret", "enabled", "entitlements", "ipFilterOp", "ipFilters", "jwkUri", "redirectUris", "owner", "password"]
require = ["/clientName"]
field_requires = { "/jwkUri" = ["manageAPIClients"] }
subset_of_caller = ["/entitlements"]
catalog = { "/entitlements" = "verify" }
enums = { "/ipFilterOp" = ["allow", "deny"] }
cidrs = ["/ipFilters"]
"#;

const PATH_ID: &str = "abc%2D1";
const PATH_ID_DECODED: &str = "abc-1";
const DENY: [&str; 2] = ["/clientId", "/owner/admin"];
const ONLY: [&str; 11] = [
    "id",
    "clientName",
    "clientSecret",
    "enabled",
    "entitlements",
    "ipFilterOp",
    "ipFilters",
    "jwkUri",
    "redirectUris",
    "owner",
    "password",
];
const REQUIRE: [&str; 1] = ["/clientName"];
const CONTENT_TYPES: [Option<&str>; 4] = [
    Some("application/json"),
    Some("application/json; charset=utf-8"),
    Some("text/plain"),
    None,
];

fn policy() -> &'static BodyPolicy {
    static POLICY: OnceLock<BodyPolicy> = OnceLock::new();
    POLICY.get_or_init(|| {
        std::env::set_var(
            "PORTCULLIS_FUZZ_HMAC",
            "fuzz-secret-fuzz-secret-fuzz-secret-0123",
        );
        let origin = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz.toml");
        let loaded = portcullis::config::load_str(CONFIG, &origin)
            .unwrap_or_else(|e| panic!("fuzz config rejected: {e}"));
        loaded.config.routes[0]
            .body
            .clone()
            .expect("route has a body policy")
    })
}

fn callers() -> [Vec<String>; 4] {
    let v = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    [
        v(&["manageAPIClients", "readAPIClients"]),
        v(&[]),
        v(&[
            "manageAPIClients",
            "readAPIClients",
            "manageUsers",
            "readUsers",
            "manageGroups",
        ]),
        v(&["readAPIClients"]),
    ]
}

/// Every string value under a member named like a secret, at any depth.
fn secret_values<'v>(value: &'v Value, under_secret: bool, out: &mut Vec<&'v str>) {
    match value {
        Value::String(s) if under_secret => out.push(s),
        Value::Array(items) => items
            .iter()
            .for_each(|v| secret_values(v, under_secret, out)),
        Value::Object(map) => {
            for (name, v) in map {
                let lower = name.to_ascii_lowercase();
                let secret = lower.contains("secret") || lower.contains("password");
                secret_values(v, under_secret || secret, out);
            }
        }
        _ => {}
    }
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    if needle.is_empty() {
        return 0;
    }
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let callers = callers();
    let held = &callers[usize::from(selector & 3)];
    let content_type = CONTENT_TYPES[usize::from(selector >> 2) & 3];
    let params = [("id", PATH_ID)];
    let req = BodyRequest {
        content_type,
        body,
        path_params: &params,
        entitlements: held,
    };
    let outcome = policy().evaluate(&req);
    let parsed = strict_json::parse_object(body).ok().map(Value::Object);

    let refusal = match outcome {
        Err(refusal) => refusal,
        Ok(()) => {
            let doc = parsed.expect("an accepted body is a strict JSON object");
            assert!(matches!(content_type, Some(ct) if ct.starts_with("application/json")));
            for p in DENY {
                assert!(doc.pointer(p).is_none(), "denied {p} accepted");
            }
            for name in doc.as_object().expect("object").keys() {
                assert!(
                    ONLY.contains(&name.as_str()),
                    "field {name:?} outside `only` accepted"
                );
            }
            for p in REQUIRE {
                assert!(doc.pointer(p).is_some(), "required {p} missing");
            }
            match doc.pointer("/ipFilterOp") {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) => assert!(s == "allow" || s == "deny", "enum {s:?}"),
                Some(other) => panic!("ipFilterOp {other} accepted"),
            }
            match doc.pointer("/ipFilters") {
                None | Some(Value::Null) => {}
                Some(Value::Array(items)) => {
                    for item in items {
                        let s = item.as_str().expect("CIDR item is a string");
                        assert!(parse_entry(s).is_ok(), "CIDR {s:?} accepted");
                    }
                }
                Some(other) => panic!("ipFilters {other} accepted"),
            }
            if let Some(Value::Array(items)) = doc.pointer("/entitlements") {
                for item in items {
                    let name = item.as_str().expect("entitlement is a string");
                    assert!(held.iter().any(|h| h == name), "grants {name:?} not held");
                }
            }
            if doc.pointer("/jwkUri").is_some() {
                assert!(held.iter().any(|h| h == "manageAPIClients"));
            }
            match doc.pointer("/id") {
                None => {}
                Some(Value::String(s)) => assert_eq!(s, PATH_ID_DECODED),
                Some(other) => panic!("body id {other} accepted"),
            }
            return;
        }
    };

    assert!(
        (400..500).contains(&refusal.status),
        "refusal status {}",
        refusal.status
    );
    if let Some(doc) = &parsed {
        let mut secrets = Vec::new();
        secret_values(doc, false, &mut secrets);
        for secret in secrets {
            // A value that also appears elsewhere in the body may be quoted
            // for that other place; a short or plain one may be a word of
            // the gateway's own text. Secrets look like neither.
            let secret_like = secret.len() >= 16
                && secret.bytes().any(|b| b.is_ascii_digit())
                && secret.bytes().any(|b| b.is_ascii_uppercase());
            if secret_like && count(body, secret.as_bytes()) == 1 {
                assert!(
                    !refusal.message.contains(secret) && !refusal.pointer.contains(secret),
                    "refusal quotes a secret value: {refusal:?}"
                );
            }
        }
    }
});
