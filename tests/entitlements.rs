//! Step 6 (entitlements) through the socket: `require_all` and `require_any`
//! against entitlements read from an array claim, a space-delimited `scope`
//! string, and a dotted path into nested claims.

mod common;

use common::*;
use serde_json::json;

const SCOPED_ISSUER: &str = "https://scoped.test";
const REALM_ISSUER: &str = "https://realm.test";

const ROUTES: &str = r#"
[[routes]]
name = "update-client"
methods = ["PUT"]
path = "/v1.0/apiclients/{id}"
upstream = "app"
require_all = ["manageAPIClients", "readAPIClients"]

[[routes]]
name = "delete-client"
methods = ["DELETE"]
path = "/v1.0/apiclients/{id}"
upstream = "app"
require_all = ["manageAPIClients"]
require_any = ["deleteAPIClients", "superAdmin"]

[[routes]]
name = "list-clients"
methods = ["GET"]
path = "/v1.0/apiclients"
upstream = "app"
require_any = ["readAPIClients", "manageAPIClients"]
"#;

/// Issuers `main` (claim `entitlements`), `scoped` (claim `scope`) and
/// `realm` (claim `realm_access.roles`), all on one JWKS.
fn setup() -> (MockUpstream, MockJwks, TestGateway) {
    let up = MockUpstream::start();
    let jwks = MockJwks::start(standard_jwks());
    let config = ConfigBuilder::new()
        .issuer("main", DEFAULT_ISSUER, &jwks.url(), "")
        .issuer(
            "scoped",
            SCOPED_ISSUER,
            &jwks.url(),
            "entitlements_claim = \"scope\"",
        )
        .issuer(
            "realm",
            REALM_ISSUER,
            &jwks.url(),
            "entitlements_claim = \"realm_access.roles\"",
        )
        .upstream("app", &up.url(), "")
        .raw(ROUTES)
        .build();
    let gw = TestGateway::start(&config);
    let warm = TokenBuilder::new(&TestKey::rsa())
        .entitlements(&["readAPIClients"])
        .build();
    gw.warm_up("/v1.0/apiclients", &warm, &up);
    (up, jwks, gw)
}

fn token(ents: &[&str]) -> String {
    TokenBuilder::new(&TestKey::rsa())
        .entitlements(ents)
        .build()
}

/// The value of `scope="..."` in a challenge.
fn challenge_scope(challenge: &str) -> Option<Vec<String>> {
    let start = challenge.find("scope=\"")? + "scope=\"".len();
    let end = challenge[start..].find('"')? + start;
    Some(
        challenge[start..end]
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    )
}

/// What is wrong with `resp` as a 403 `insufficient_entitlements` whose
/// challenge names every entitlement in `named`.
fn insufficient_problems(resp: &RawResponse, named: &[&str], up: &MockUpstream) -> Vec<String> {
    let mut problems = refusal_problems(resp, 403, "insufficient_entitlements", up);
    match resp.header("www-authenticate") {
        None => problems.push("no WWW-Authenticate".into()),
        Some(c) => {
            if !(c.starts_with("Bearer") && c.contains(r#"error="insufficient_scope""#)) {
                problems.push(format!(
                    "challenge {c:?} lacks Bearer error=\"insufficient_scope\""
                ));
            }
            match challenge_scope(c) {
                None => problems.push(format!("challenge {c:?} has no scope=\"...\"")),
                Some(scope) => {
                    for n in named {
                        if !scope.iter().any(|s| s == n) {
                            problems.push(format!("scope {scope:?} does not name {n}"));
                        }
                    }
                }
            }
        }
    }
    problems
}

#[test]
fn require_all_grants_only_with_every_entitlement() {
    let (up, _jwks, gw) = setup();
    let mut cases = Cases::new();
    for ents in [
        &["manageAPIClients", "readAPIClients"][..],
        &["readAPIClients", "x", "manageAPIClients"][..],
    ] {
        up.clear();
        let resp = gw.request_with_token(
            "PUT",
            "/v1.0/apiclients/abc",
            &token(ents),
            &[],
            Some(b"{}"),
        );
        if resp.status != 200 || up.count() != 1 {
            cases.fail(
                &format!("{ents:?}"),
                format!(
                    "status {}, upstream saw {}: {}",
                    resp.status,
                    up.count(),
                    resp.describe()
                ),
            );
        }
    }
    up.clear();
    let refused: [(&str, String); 5] = [
        ("lacks readAPIClients", token(&["manageAPIClients"])),
        (
            "lacks manageAPIClients",
            token(&["readAPIClients", "readUsers"]),
        ),
        ("empty array", token(&[])),
        (
            "no entitlements claim",
            TokenBuilder::new(&TestKey::rsa()).build(),
        ),
        (
            "case differs",
            token(&["manageapiclients", "READAPICLIENTS"]),
        ),
    ];
    for (label, t) in &refused {
        let resp = gw.request_with_token("PUT", "/v1.0/apiclients/abc", t, &[], Some(b"{}"));
        cases.check(
            label,
            insufficient_problems(&resp, &["manageAPIClients", "readAPIClients"], &up),
            Some(&resp),
        );
        up.clear();
    }
    cases.finish();
}

#[test]
fn require_any_grants_with_one_of_them() {
    let (up, _jwks, gw) = setup();
    let mut cases = Cases::new();
    for ents in [
        &["readAPIClients"][..],
        &["manageAPIClients"][..],
        &["x", "manageAPIClients", "readAPIClients"][..],
    ] {
        up.clear();
        let resp = gw.request_with_token("GET", "/v1.0/apiclients", &token(ents), &[], None);
        if resp.status != 200 || up.count() != 1 {
            cases.fail(
                &format!("{ents:?}"),
                format!(
                    "status {}, upstream saw {}: {}",
                    resp.status,
                    up.count(),
                    resp.describe()
                ),
            );
        }
    }
    up.clear();
    for (label, t) in [
        ("none of them", token(&["readUsers"])),
        ("empty", token(&[])),
    ] {
        let resp = gw.request_with_token("GET", "/v1.0/apiclients", &t, &[], None);
        cases.check(
            label,
            insufficient_problems(&resp, &["readAPIClients", "manageAPIClients"], &up),
            Some(&resp),
        );
        up.clear();
    }
    cases.finish();
}

#[test]
fn require_all_and_require_any_combine() {
    let (up, _jwks, gw) = setup();
    let mut cases = Cases::new();
    let resp = gw.request_with_token(
        "DELETE",
        "/v1.0/apiclients/abc",
        &token(&["manageAPIClients", "superAdmin"]),
        &[],
        None,
    );
    if resp.status != 200 {
        cases.fail("all + one of any", resp.describe());
    }
    up.clear();
    let resp = gw.request_with_token(
        "DELETE",
        "/v1.0/apiclients/abc",
        &token(&["manageAPIClients"]),
        &[],
        None,
    );
    cases.check(
        "all but none of any",
        insufficient_problems(&resp, &[], &up),
        Some(&resp),
    );
    up.clear();
    let resp = gw.request_with_token(
        "DELETE",
        "/v1.0/apiclients/abc",
        &token(&["deleteAPIClients", "superAdmin"]),
        &[],
        None,
    );
    cases.check(
        "any but not all",
        insufficient_problems(&resp, &["manageAPIClients"], &up),
        Some(&resp),
    );
    cases.finish();
}

#[test]
fn entitlements_from_a_space_delimited_scope_claim() {
    let (up, _jwks, gw) = setup();
    let mut cases = Cases::new();
    let scoped = |scope: serde_json::Value| {
        TokenBuilder::new(&TestKey::ec256())
            .iss(SCOPED_ISSUER)
            .claim("scope", scope)
            .build()
    };
    for (label, t) in [
        (
            "scope string with both",
            scoped(json!("openid manageAPIClients readAPIClients")),
        ),
        (
            "scope string, other order",
            scoped(json!("readAPIClients manageAPIClients")),
        ),
        (
            "scope as an array",
            scoped(json!(["manageAPIClients", "readAPIClients"])),
        ),
    ] {
        up.clear();
        let resp = gw.request_with_token("PUT", "/v1.0/apiclients/abc", &t, &[], Some(b"{}"));
        if resp.status != 200 || up.count() != 1 {
            cases.fail(
                label,
                format!(
                    "status {}, upstream saw {}: {}",
                    resp.status,
                    up.count(),
                    resp.describe()
                ),
            );
        }
    }
    up.clear();
    let refused = [
        (
            "scope string lacking one",
            scoped(json!("openid readAPIClients")),
        ),
        (
            "both names glued in one word",
            scoped(json!("manageAPIClients,readAPIClients")),
        ),
        (
            "entitlements claim ignored for the scoped issuer",
            TokenBuilder::new(&TestKey::ec256())
                .iss(SCOPED_ISSUER)
                .entitlements(&["manageAPIClients", "readAPIClients"])
                .build(),
        ),
        (
            "scope claim ignored for the main issuer",
            TokenBuilder::new(&TestKey::rsa())
                .claim("scope", json!("manageAPIClients readAPIClients"))
                .build(),
        ),
    ];
    for (label, t) in &refused {
        let resp = gw.request_with_token("PUT", "/v1.0/apiclients/abc", t, &[], Some(b"{}"));
        cases.check(
            label,
            insufficient_problems(&resp, &["manageAPIClients", "readAPIClients"], &up),
            Some(&resp),
        );
        up.clear();
    }
    cases.finish();
}

#[test]
fn entitlements_from_a_dotted_claim_path() {
    let (up, _jwks, gw) = setup();
    let mut cases = Cases::new();
    let realm = |claims: serde_json::Value| {
        TokenBuilder::new(&TestKey::ed25519())
            .iss(REALM_ISSUER)
            .claim("realm_access", claims)
            .build()
    };
    up.clear();
    let resp = gw.request_with_token(
        "PUT",
        "/v1.0/apiclients/abc",
        &realm(json!({"roles": ["manageAPIClients", "readAPIClients"], "other": 1})),
        &[],
        Some(b"{}"),
    );
    if resp.status != 200 || up.count() != 1 {
        cases.fail(
            "realm_access.roles with both",
            format!("status {}: {}", resp.status, resp.describe()),
        );
    }
    up.clear();
    let refused = [
        (
            "realm_access.roles lacking one",
            realm(json!({"roles": ["manageAPIClients"]})),
        ),
        (
            "realm_access without roles",
            realm(json!({"groups": ["manageAPIClients", "readAPIClients"]})),
        ),
        (
            "top-level roles claim",
            TokenBuilder::new(&TestKey::ed25519())
                .iss(REALM_ISSUER)
                .claim("roles", json!(["manageAPIClients", "readAPIClients"]))
                .build(),
        ),
        (
            "entitlements claim ignored for the realm issuer",
            TokenBuilder::new(&TestKey::ed25519())
                .iss(REALM_ISSUER)
                .entitlements(&["manageAPIClients", "readAPIClients"])
                .build(),
        ),
    ];
    for (label, t) in &refused {
        let resp = gw.request_with_token("PUT", "/v1.0/apiclients/abc", t, &[], Some(b"{}"));
        cases.check(
            label,
            insufficient_problems(&resp, &["manageAPIClients", "readAPIClients"], &up),
            Some(&resp),
        );
        up.clear();
    }
    cases.finish();
}
