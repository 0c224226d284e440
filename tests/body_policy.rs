//! Step 7 (update guards and body policy) through the socket: `deny_self`,
//! `pin_headers` and every `[routes.body]` rule on routes shaped like the seed
//! APIs (IBM Verify API clients with the real entitlement catalogue, SlashID
//! OIDC provider credentials, VMware identity providers), the size and time
//! limits on a buffered body, and the config validation of body policies.
//!
//! Every refusal asserts the status, the JSON `error` code and that the
//! upstream saw nothing; every allowed update asserts that the upstream got
//! the body byte for byte, framed by its exact `Content-Length`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The real IBM Verify entitlement catalogue shipped with the gateway.
fn catalog_file() -> String {
    format!(
        "{}/config/catalogs/verify-entitlements.tsv",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// `[server]` limits of the test gateway.
const SERVER_MAX_BODY: usize = 32768;
/// `[routes.body] max_bytes` of the IBM Verify routes.
const ROUTE_MAX_BYTES: usize = 16384;
const BODY_TIMEOUT_MS: u64 = 500;

/// Three values of `federatedIdpSourceType` from seed page 002.
const FED_IDP_SOURCE_TYPES: [&str; 3] = ["OKTA", "MICROSOFT_ENTRA_ID", "PING_FEDERATE"];

/// The top-level request body fields of seed page 003 (SlashID).
const SLASHID_FIELDS: [&str; 6] = [
    "client_secret",
    "label",
    "external_cred",
    "external_cred_id",
    "options",
    "enable_in_slashid_oidc_authz_server",
];

fn routes() -> String {
    let only = SLASHID_FIELDS
        .iter()
        .map(|f| toml_str(f))
        .collect::<Vec<_>>()
        .join(", ");
    let fed = FED_IDP_SOURCE_TYPES
        .iter()
        .map(|f| toml_str(f))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[[routes]]
name = "verify-apiclient-list"
methods = ["GET"]
path = "/v1.0/apiclients"
upstream = "verify"
require_any = ["readAPIClients", "manageAPIClients"]

[[routes]]
name = "verify-apiclient-create"
methods = ["POST"]
path = "/v1.0/apiclients"
upstream = "verify"
require_all = ["manageAPIClients"]

[routes.body]
json = true
max_bytes = {ROUTE_MAX_BYTES}
subset_of_caller = ["/entitlements"]
catalog = {{ "/entitlements" = "verify" }}
enums = {{ "/ipFilterOp" = ["allow", "deny"] }}
cidrs = ["/ipFilters"]

[[routes]]
name = "verify-apiclient-update"
methods = ["PUT"]
path = "/v1.0/apiclients/{{id}}"
upstream = "verify"
require_all = ["manageAPIClients"]
deny_self = "id"

[routes.body]
json = true
max_bytes = {ROUTE_MAX_BYTES}
path_params = {{ "/id" = "id" }}
subset_of_caller = ["/entitlements"]
catalog = {{ "/entitlements" = "verify" }}
enums = {{ "/ipFilterOp" = ["allow", "deny"] }}
cidrs = ["/ipFilters"]
deny = ["/clientId"]
field_requires = {{ "/jwkUri" = ["manageAPIClients"], "/additionalConfig" = ["manageAPIClients"] }}

# A test-only variant that admits readers, so that field_requires is the
# rule that stops them from writing credential fields.
[[routes]]
name = "verify-apiclient-patch-limited"
methods = ["PATCH"]
path = "/v1.0/apiclients/{{id}}"
upstream = "verify"
require_all = ["readAPIClients"]

[routes.body]
json = true
max_bytes = {ROUTE_MAX_BYTES}
path_params = {{ "/id" = "id" }}
subset_of_caller = ["/entitlements"]
field_requires = {{ "/jwkUri" = ["manageAPIClients"], "/additionalConfig" = ["manageAPIClients"] }}

[[routes]]
name = "slashid-oidc-credentials-update"
methods = ["PATCH"]
path = "/organizations/sso/oidc/provider-credentials/{{oauth_client_id}}"
upstream = "slashid"
require_all = ["admin"]
pin_headers = {{ "SlashID-OrgID" = "oid" }}

[routes.body]
json = true
only = [{only}]
require = ["/label"]

[[routes]]
name = "vmware-idp-update"
methods = ["PATCH"]
path = "/v1/identity-providers/{{id}}"
upstream = "vmware"
require_all = ["ADMIN"]

[routes.body]
json = true
enums = {{ "/ldap/type" = ["OpenLdap", "ActiveDirectory"], "/fedIdpSpec/directory/federatedIdpSourceType" = [{fed}] }}

# No body policy: only server.max_body_bytes applies.
[[routes]]
name = "onelogin-app-update"
methods = ["PUT"]
path = "/api/2/apps/{{id}}"
upstream = "onelogin"
require_all = ["manage_all"]
"#
    )
}

/// The whole test config: one mock upstream per seed family.
fn config(verify: &str, slashid: &str, vmware: &str, onelogin: &str, jwks: &str) -> String {
    ConfigBuilder::new()
        .server(&format!("max_body_bytes = {SERVER_MAX_BODY}"))
        .server(&format!("body_timeout_ms = {BODY_TIMEOUT_MS}"))
        .raw(&format!(
            "[catalogs.verify]\nfile = {}\nofferings = [\"CIC\"]\n",
            toml_str(&catalog_file())
        ))
        .issuer("main", DEFAULT_ISSUER, jwks, "")
        .upstream("verify", verify, "catalog = \"verify\"")
        .upstream("slashid", slashid, "")
        .upstream("vmware", vmware, "")
        .upstream("onelogin", onelogin, "")
        .raw(&routes())
        .build()
}

struct World {
    verify: MockUpstream,
    slashid: MockUpstream,
    vmware: MockUpstream,
    onelogin: MockUpstream,
    _jwks: MockJwks,
    gw: TestGateway,
}

impl World {
    fn start() -> World {
        let verify = MockUpstream::start();
        let slashid = MockUpstream::start();
        let vmware = MockUpstream::start();
        let onelogin = MockUpstream::start();
        let jwks = MockJwks::start(standard_jwks());
        let gw = TestGateway::start(&config(
            &verify.url(),
            &slashid.url(),
            &vmware.url(),
            &onelogin.url(),
            &jwks.url(),
        ));
        gw.warm_up("/v1.0/apiclients", &token(&["readAPIClients"]), &verify);
        World {
            verify,
            slashid,
            vmware,
            onelogin,
            _jwks: jwks,
            gw,
        }
    }

    /// A JSON request with `token`.
    fn send(&self, method: &str, target: &str, token: &str, body: &[u8]) -> RawResponse {
        self.gw.request_with_token(
            method,
            target,
            token,
            &[("Content-Type", "application/json")],
            Some(body),
        )
    }
}

/// A token of [`DEFAULT_CLIENT_ID`] with these entitlements.
fn token(ents: &[&str]) -> String {
    TokenBuilder::new(&TestKey::rsa())
        .entitlements(ents)
        .build()
}

/// What the Verify admin in most tests holds: API-client management, a few
/// `any` entitlements, one of `CIC,CIV` (licensed, the tenant has CIC) and
/// two of other offerings only (`ISC`, `CIV`: not licensed).
const ADMIN: [&str; 7] = [
    "manageAPIClients",
    "readAPIClients",
    "readUserGroups",
    "readCerts",
    "managePwdVault",
    "manageSubscriptions",
    "authnAnyUser",
];

fn admin_token() -> String {
    token(&ADMIN)
}

const CLIENT_TARGET: &str = "/v1.0/apiclients/0fd9e3a4-7b4e-4f5b-9b3a-1b2c3d4e5f60";

/// The `message` of a gateway refusal ("" when there is none).
fn message(resp: &RawResponse) -> String {
    serde_json::from_slice::<Value>(&resp.body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default()
}

/// What is wrong with an allowed request: not 200 with the upstream's body,
/// or the upstream did not receive exactly one request with exactly `body`,
/// framed by `Content-Length: body.len()` and without `Transfer-Encoding`.
fn forwarded_problems(
    resp: &RawResponse,
    upstream: &MockUpstream,
    method: &str,
    target: &str,
    body: &[u8],
) -> Vec<String> {
    let mut problems = Vec::new();
    if resp.status != 200 {
        problems.push(format!("status {} (expected 200)", resp.status));
    }
    if resp.body != br#"{"upstream":"ok"}"# {
        problems.push("response body is not the upstream's".into());
    }
    let seen = upstream.requests();
    if seen.len() != 1 {
        problems.push(format!("upstream saw {} requests (expected 1)", seen.len()));
    }
    if let Some(got) = seen.first() {
        if got.method != method || got.target != target.as_bytes() {
            problems.push(format!("upstream got {} {}", got.method, got.target_str()));
        }
        if got.body != body {
            problems.push(format!(
                "upstream body {:?} differs from the sent {:?}",
                String::from_utf8_lossy(&got.body),
                String::from_utf8_lossy(body)
            ));
        }
        let len = body.len().to_string();
        if got.header_all("content-length") != [len.as_str()] {
            problems.push(format!(
                "upstream Content-Length {:?} (expected [{len:?}])",
                got.header_all("content-length")
            ));
        }
        if !got.header_all("transfer-encoding").is_empty() {
            problems.push(format!(
                "upstream Transfer-Encoding {:?} (expected none)",
                got.header_all("transfer-encoding")
            ));
        }
    }
    problems
}

/// `body` in chunked encoding, cut into pieces of at most `size` bytes, with
/// the final zero-size chunk.
fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in body.chunks(size) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A JSON object of exactly `len` bytes: `{"description":"xxx..."}`.
fn json_of_len(len: usize) -> Vec<u8> {
    let overhead = r#"{"description":""}"#.len();
    assert!(len >= overhead);
    format!(r#"{{"description":"{}"}}"#, "x".repeat(len - overhead)).into_bytes()
}

// === allowed updates ===

#[test]
fn an_allowed_update_reaches_the_upstream_byte_identical() {
    let w = World::start();
    let tok = admin_token();
    let auth = bearer(&tok);
    // Insignificant whitespace, key order and a non-ASCII name are kept as sent.
    let body: &[u8] = "{ \"id\": \"0fd9e3a4-7b4e-4f5b-9b3a-1b2c3d4e5f60\",\n  \"clientName\": \"ci-bot \u{e9}t\u{e9}\",\n  \"entitlements\": [\"readUserGroups\", \"readCerts\", \"managePwdVault\"],\n  \"enabled\": true, \"ipFilterOp\": \"allow\", \"ipFilters\": [\"10.0.0.0/8\", \"192.168.1.7\", \"2001:db8::/32\"],\n  \"description\": null }"
        .as_bytes();
    let mut cases = Cases::new();

    let resp = w.send("PUT", CLIENT_TARGET, &tok, body);
    cases.check(
        "PUT with Content-Length",
        forwarded_problems(&resp, &w.verify, "PUT", CLIENT_TARGET, body),
        Some(&resp),
    );
    w.verify.clear();

    for piece in [1, 7, 64, 4096] {
        let raw = build_request(
            "PUT",
            CLIENT_TARGET,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
                ("Transfer-Encoding", "chunked"),
            ],
            Some(&chunked(body, piece)),
        );
        let resp = w.gw.send_raw(&raw);
        cases.check(
            &format!("PUT chunked in pieces of {piece} bytes"),
            forwarded_problems(&resp, &w.verify, "PUT", CLIENT_TARGET, body),
            Some(&resp),
        );
        w.verify.clear();
    }

    // Chunk extensions and trailers are framing: neither reaches the upstream.
    let small: &[u8] = br#"{"a":1}"#;
    let mut raw = build_request(
        "PUT",
        CLIENT_TARGET,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
        ],
        None,
    );
    raw.extend_from_slice(b"5;ext=1\r\n{\"a\":\r\n2\r\n1}\r\n0\r\nX-Trailer: evil\r\n\r\n");
    let resp = w.gw.send_raw(&raw);
    let mut problems = forwarded_problems(&resp, &w.verify, "PUT", CLIENT_TARGET, small);
    if w.verify
        .requests()
        .iter()
        .any(|r| r.header("x-trailer").is_some())
    {
        problems.push("the trailer reached the upstream as a header".into());
    }
    cases.check(
        "PUT chunked with extension and trailer",
        problems,
        Some(&resp),
    );
    w.verify.clear();

    // Creating a client: the same rules without an id in the path.
    let create: &[u8] = br#"{"clientName":"ci-bot","entitlements":["readAPIClients"],"enabled":true,"ipFilterOp":null,"ipFilters":[]}"#;
    let resp = w.send("POST", "/v1.0/apiclients", &tok, create);
    cases.check(
        "POST create",
        forwarded_problems(&resp, &w.verify, "POST", "/v1.0/apiclients", create),
        Some(&resp),
    );
    w.verify.clear();

    // A body of exactly max_bytes is allowed, with either framing.
    let exact = json_of_len(ROUTE_MAX_BYTES);
    let resp = w.send("PUT", CLIENT_TARGET, &tok, &exact);
    cases.check(
        "PUT of exactly max_bytes",
        forwarded_problems(&resp, &w.verify, "PUT", CLIENT_TARGET, &exact),
        Some(&resp),
    );
    w.verify.clear();
    let raw = build_request(
        "PUT",
        CLIENT_TARGET,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
        ],
        Some(&chunked(&exact, 1000)),
    );
    let resp = w.gw.send_raw(&raw);
    cases.check(
        "PUT of exactly max_bytes, chunked",
        forwarded_problems(&resp, &w.verify, "PUT", CLIENT_TARGET, &exact),
        Some(&resp),
    );
    cases.finish();
}

// === json: media type and shape ===

#[test]
fn the_body_must_be_a_json_object_sent_as_application_json() {
    let w = World::start();
    let tok = admin_token();
    let auth = bearer(&tok);
    let good: &[u8] = br#"{"clientName":"ci-bot"}"#;
    let mut cases = Cases::new();

    for (label, content_type) in [
        ("text/plain", Some("text/plain")),
        ("no Content-Type", None),
        ("application/jsonp", Some("application/jsonp")),
        ("text/json", Some("text/json")),
        (
            "charset latin1",
            Some("application/json; charset=iso-8859-1"),
        ),
        ("form", Some("application/x-www-form-urlencoded")),
    ] {
        let mut headers = vec![("Authorization", auth.as_str())];
        if let Some(ct) = content_type {
            headers.push(("Content-Type", ct));
        }
        let resp = w.gw.request("PUT", CLIENT_TARGET, &headers, Some(good));
        cases.refused(label, &resp, 415, "unsupported_media_type", &w.verify);
    }

    for (label, content_type) in [
        ("with charset utf-8", "application/json; charset=utf-8"),
        ("quoted charset", "application/json;charset=\"UTF-8\""),
        ("any case", "Application/JSON"),
    ] {
        let resp = w.gw.request(
            "PUT",
            CLIENT_TARGET,
            &[("Authorization", &auth), ("Content-Type", content_type)],
            Some(good),
        );
        cases.check(
            label,
            forwarded_problems(&resp, &w.verify, "PUT", CLIENT_TARGET, good),
            Some(&resp),
        );
        w.verify.clear();
    }

    let nest =
        |n: usize| format!(r#"{{"description":{}{}}}"#, "[".repeat(n), "]".repeat(n)).into_bytes();
    let refused: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", br#"{"clientName":"#.to_vec()),
        ("not JSON", b"clientName=ci-bot".to_vec()),
        ("empty", Vec::new()),
        ("an array", br#"[{"clientName":"ci-bot"}]"#.to_vec()),
        ("a string", br#""ci-bot""#.to_vec()),
        ("null", b"null".to_vec()),
        ("duplicate keys", br#"{"a":1,"a":2}"#.to_vec()),
        (
            "duplicate entitlements key",
            br#"{"entitlements":["readCerts"],"entitlements":["manageUserGroups"]}"#.to_vec(),
        ),
        (
            "nested duplicate keys",
            br#"{"additionalConfig":{"x":1,"x":2}}"#.to_vec(),
        ),
        ("trailing data", br#"{"a":1} {"a":2}"#.to_vec()),
        ("invalid UTF-8", b"{\"a\":\"\xff\"}".to_vec()),
        // The object plus 64 arrays: 65 levels.
        ("nested 65 deep", nest(64)),
        // Still within max_bytes (2 bytes a level).
        ("nested 5000 deep", nest(5_000)),
    ];
    for (label, body) in &refused {
        let resp = w.send("PUT", CLIENT_TARGET, &tok, body);
        cases.refused(label, &resp, 400, "invalid_json", &w.verify);
    }

    // 64 levels (the object plus 63 arrays) is the deepest allowed.
    let deepest = nest(63);
    let resp = w.send("PUT", CLIENT_TARGET, &tok, &deepest);
    cases.check(
        "nested 64 deep",
        forwarded_problems(&resp, &w.verify, "PUT", CLIENT_TARGET, &deepest),
        Some(&resp),
    );
    cases.finish();
}

// === path_params and deny ===

#[test]
fn the_body_cannot_retarget_another_client_or_send_a_denied_field() {
    let w = World::start();
    let tok = admin_token();
    let mut cases = Cases::new();

    for (label, target, body) in [
        (
            "another id",
            CLIENT_TARGET,
            br#"{"id":"11111111-2222-3333-4444-555555555555","clientName":"x"}"#.as_slice(),
        ),
        (
            "id differs in case",
            CLIENT_TARGET,
            br#"{"id":"0FD9E3A4-7B4E-4F5B-9B3A-1B2C3D4E5F60"}"#,
        ),
        ("id is a bool", CLIENT_TARGET, br#"{"id":true}"#),
        (
            "id is an array",
            CLIENT_TARGET,
            br#"{"id":["0fd9e3a4-7b4e-4f5b-9b3a-1b2c3d4e5f60"]}"#,
        ),
        ("id is null", CLIENT_TARGET, br#"{"id":null}"#),
        ("number differs", "/v1.0/apiclients/42", br#"{"id":43}"#),
    ] {
        let resp = w.send("PUT", target, &tok, body);
        cases.refused(label, &resp, 400, "path_param_mismatch", &w.verify);
    }

    for (label, target, body) in [
        (
            "same id",
            CLIENT_TARGET,
            br#"{"id":"0fd9e3a4-7b4e-4f5b-9b3a-1b2c3d4e5f60","clientName":"x"}"#.as_slice(),
        ),
        ("no id", CLIENT_TARGET, br#"{"clientName":"x"}"#),
        ("same number", "/v1.0/apiclients/42", br#"{"id":42}"#),
        (
            "percent-encoded path",
            "/v1.0/apiclients/a%20b",
            br#"{"id":"a b"}"#,
        ),
    ] {
        let resp = w.send("PUT", target, &tok, body);
        cases.check(
            label,
            forwarded_problems(&resp, &w.verify, "PUT", target, body),
            Some(&resp),
        );
        w.verify.clear();
    }

    for (label, body) in [
        ("clientId", br#"{"clientId":"new-client-id"}"#.as_slice()),
        ("clientId null", br#"{"clientId":null}"#),
        ("clientId empty", br#"{"clientName":"x","clientId":""}"#),
    ] {
        let resp = w.send("PUT", CLIENT_TARGET, &tok, body);
        cases.refused(label, &resp, 400, "field_denied", &w.verify);
        if !message(&resp).contains("/clientId") {
            cases.fail(label, format!("message does not name /clientId: {resp:?}"));
        }
    }
    // A field of the same name deeper down is not the denied pointer.
    let nested: &[u8] = br#"{"additionalConfig":{"clientId":"x"}}"#;
    let resp = w.send("PUT", CLIENT_TARGET, &tok, nested);
    cases.check(
        "nested clientId",
        forwarded_problems(&resp, &w.verify, "PUT", CLIENT_TARGET, nested),
        Some(&resp),
    );
    cases.finish();
}

// === subset_of_caller and catalog ===

#[test]
fn granting_entitlements_the_caller_lacks_is_privilege_escalation() {
    let w = World::start();
    let caller = token(&["manageAPIClients", "readAPIClients", "readCerts"]);
    let body: &[u8] = br#"{"entitlements":["readCerts","manageUserGroups","manageAPIClients","manageCerts","readReports"]}"#;
    for (method, target) in [("PUT", CLIENT_TARGET), ("POST", "/v1.0/apiclients")] {
        let resp = w.send(method, target, &caller, body);
        assert_refused(&resp, 403, "privilege_escalation", &w.verify);
        let msg = message(&resp);
        // "...does not hold: a, b, c (subset_of_caller at \"/entitlements\")"
        let listed = msg
            .split_once("hold:")
            .map(|(_, rest)| rest.split(" (").next().unwrap_or_default())
            .unwrap_or_default();
        for missing in ["manageUserGroups", "manageCerts", "readReports"] {
            assert!(
                listed.split(',').any(|n| n.trim() == missing),
                "{method}: message does not list {missing}: {msg:?}"
            );
        }
        for held in ["readCerts", "manageAPIClients"] {
            assert!(
                !listed.split(',').any(|n| n.trim() == held),
                "{method}: message lists {held}, which the caller holds: {msg:?}"
            );
        }
    }

    // Not an array of strings: refused, not skipped.
    for body in [
        br#"{"entitlements":"manageCerts"}"#.as_slice(),
        br#"{"entitlements":[1]}"#,
        br#"{"entitlements":{"a":"readCerts"}}"#,
    ] {
        let resp = w.send("PUT", CLIENT_TARGET, &caller, body);
        assert!(
            resp.status == 400 || resp.status == 403,
            "{}: {}",
            String::from_utf8_lossy(body),
            resp.describe()
        );
        assert_eq!(w.verify.count(), 0, "{}", String::from_utf8_lossy(body));
    }

    // A subset (or the empty list) is allowed.
    for body in [
        br#"{"entitlements":["readCerts","readAPIClients"]}"#.as_slice(),
        br#"{"entitlements":[]}"#,
    ] {
        let resp = w.send("PUT", CLIENT_TARGET, &caller, body);
        let problems = forwarded_problems(&resp, &w.verify, "PUT", CLIENT_TARGET, body);
        assert!(problems.is_empty(), "{problems:?}: {}", resp.describe());
        w.verify.clear();
    }
}

#[test]
fn entitlements_must_be_in_the_catalogue_and_licensed() {
    let w = World::start();
    let mut cases = Cases::new();

    // The caller holds the misspelt names too, so subset_of_caller passes and
    // the catalogue is the rule that refuses.
    let typo = token(&[
        "manageAPIClients",
        "manageAPIClient",
        "frobnicateEverything",
    ]);
    let resp = w.send(
        "PUT",
        CLIENT_TARGET,
        &typo,
        br#"{"entitlements":["manageAPIClient"]}"#,
    );
    cases.refused("near miss", &resp, 400, "unknown_entitlement", &w.verify);
    let msg = message(&resp);
    if !(msg.contains("manageAPIClient") && msg.contains("did you mean manageAPIClients")) {
        cases.fail("near miss", format!("no \"did you mean\" hint: {msg:?}"));
    }
    let resp = w.send(
        "POST",
        "/v1.0/apiclients",
        &typo,
        br#"{"entitlements":["frobnicateEverything","manageAPIClients"]}"#,
    );
    cases.refused("unknown name", &resp, 400, "unknown_entitlement", &w.verify);
    let msg = message(&resp);
    if !msg.contains("frobnicateEverything") || msg.contains("did you mean") {
        cases.fail(
            "unknown name",
            format!("message should name it without a hint: {msg:?}"),
        );
    }

    // The tenant is licensed for CIC only: ISC- and CIV-only entitlements are
    // refused even though the caller holds them.
    let admin = admin_token();
    for (label, name) in [
        ("ISC only", "manageSubscriptions"),
        ("CIV only", "authnAnyUser"),
    ] {
        let body = format!(r#"{{"entitlements":["readCerts","{name}"]}}"#);
        let resp = w.send("PUT", CLIENT_TARGET, &admin, body.as_bytes());
        cases.refused(label, &resp, 400, "unknown_entitlement", &w.verify);
        let msg = message(&resp);
        if !msg.contains(name) || !msg.contains("licensed") {
            cases.fail(
                label,
                format!("message does not explain the licence: {msg:?}"),
            );
        }
    }

    // `any` and `CIC,CIV` entitlements are valid for a CIC tenant.
    let body: &[u8] = br#"{"entitlements":["readCerts","managePwdVault","manageAPIClients"]}"#;
    let resp = w.send("PUT", CLIENT_TARGET, &admin, body);
    cases.check(
        "any and CIC,CIV",
        forwarded_problems(&resp, &w.verify, "PUT", CLIENT_TARGET, body),
        Some(&resp),
    );
    cases.finish();
}

// === enums and cidrs ===

#[test]
fn ip_filter_op_and_ip_filters_must_be_valid() {
    let w = World::start();
    let tok = admin_token();
    let mut cases = Cases::new();

    for (label, body) in [
        ("maybe", br#"{"ipFilterOp":"maybe"}"#.as_slice()),
        ("wrong case", br#"{"ipFilterOp":"Allow"}"#),
        ("empty", br#"{"ipFilterOp":""}"#),
        ("a number", br#"{"ipFilterOp":1}"#),
        ("an array", br#"{"ipFilterOp":["allow"]}"#),
    ] {
        let resp = w.send("PUT", CLIENT_TARGET, &tok, body);
        cases.refused(label, &resp, 400, "invalid_enum_value", &w.verify);
    }
    let resp = w.send(
        "POST",
        "/v1.0/apiclients",
        &tok,
        br#"{"ipFilterOp":"maybe"}"#,
    );
    cases.refused(
        "maybe on create",
        &resp,
        400,
        "invalid_enum_value",
        &w.verify,
    );

    for (label, body) in [
        (
            "prefix too long",
            br#"{"ipFilters":["10.0.0.0/33"]}"#.as_slice(),
        ),
        (
            "one bad among good",
            br#"{"ipFilterOp":"allow","ipFilters":["10.0.0.0/8","not-an-ip"]}"#,
        ),
        ("host bits set", br#"{"ipFilters":["10.0.0.1/8"]}"#),
        ("v6 prefix too long", br#"{"ipFilters":["2001:db8::/129"]}"#),
        ("a string, not a list", br#"{"ipFilters":"10.0.0.0/8"}"#),
        ("a number", br#"{"ipFilters":[10]}"#),
    ] {
        let resp = w.send("PUT", CLIENT_TARGET, &tok, body);
        cases.refused(label, &resp, 400, "invalid_cidr", &w.verify);
    }

    for (label, body) in [
        (
            "allow",
            br#"{"ipFilterOp":"allow","ipFilters":["10.0.0.0/8"]}"#.as_slice(),
        ),
        (
            "deny",
            br#"{"ipFilterOp":"deny","ipFilters":["192.168.1.7","2001:db8::/32","::1"]}"#,
        ),
        (
            "null clears the filter",
            br#"{"ipFilterOp":null,"ipFilters":null}"#,
        ),
        ("empty list", br#"{"ipFilters":[]}"#),
    ] {
        let resp = w.send("PUT", CLIENT_TARGET, &tok, body);
        cases.check(
            label,
            forwarded_problems(&resp, &w.verify, "PUT", CLIENT_TARGET, body),
            Some(&resp),
        );
        w.verify.clear();
    }
    cases.finish();
}

// === field_requires ===

#[test]
fn writing_credential_fields_needs_the_extra_entitlement() {
    let w = World::start();
    let reader = token(&["readAPIClients"]);
    let manager = token(&["readAPIClients", "manageAPIClients"]);
    let mut cases = Cases::new();

    for (label, body) in [
        (
            "jwkUri",
            br#"{"jwkUri":"https://attacker.example/jwks"}"#.as_slice(),
        ),
        ("jwkUri null", br#"{"jwkUri":null}"#),
        (
            "additionalConfig",
            br#"{"additionalConfig":{"clientAuthMethod":"private_key_jwt"}}"#,
        ),
    ] {
        let resp = w.send("PATCH", CLIENT_TARGET, &reader, body);
        cases.refused(label, &resp, 403, "field_requires_entitlement", &w.verify);
        if !message(&resp).contains("manageAPIClients") {
            cases.fail(
                label,
                format!("message does not name manageAPIClients: {resp:?}"),
            );
        }
    }

    let plain: &[u8] = br#"{"description":"read-only bot"}"#;
    let resp = w.send("PATCH", CLIENT_TARGET, &reader, plain);
    cases.check(
        "reader, other fields",
        forwarded_problems(&resp, &w.verify, "PATCH", CLIENT_TARGET, plain),
        Some(&resp),
    );
    w.verify.clear();

    let jwk: &[u8] = br#"{"jwkUri":"https://idp.example/jwks","additionalConfig":{}}"#;
    let resp = w.send("PATCH", CLIENT_TARGET, &manager, jwk);
    cases.check(
        "manager, credential fields",
        forwarded_problems(&resp, &w.verify, "PATCH", CLIENT_TARGET, jwk),
        Some(&resp),
    );
    cases.finish();
}

// === only and require (SlashID) ===

const SLASHID_TARGET: &str =
    "/organizations/sso/oidc/provider-credentials/903c1ff9-f2cc-435c-b242-9d8a690fcf0a";
const ORG: &str = "af5fbd30-7ce7-4548-8b30-4cd59cb2aba1";

fn slashid_token(oid: Option<&str>) -> String {
    let b = TokenBuilder::new(&TestKey::rsa())
        .client_id("slashid-admin-bot")
        .entitlements(&["admin"]);
    match oid {
        Some(o) => b.claim("oid", serde_json::json!(o)),
        None => b,
    }
    .build()
}

#[test]
fn slashid_updates_may_only_send_documented_fields() {
    let w = World::start();
    let tok = slashid_token(Some(ORG));
    let auth = bearer(&tok);
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
        ("SlashID-OrgID", ORG),
    ];
    let mut cases = Cases::new();

    for (label, body) in [
        (
            "undocumented key",
            br#"{"label":"Google prod","client_id":"other"}"#.as_slice(),
        ),
        ("case differs", br#"{"label":"Google prod","Label":"x"}"#),
        ("pointer-like key", br#"{"label":"x","options/google":{}}"#),
    ] {
        let resp = w.gw.request("PATCH", SLASHID_TARGET, &headers, Some(body));
        cases.refused(label, &resp, 400, "field_not_allowed", &w.slashid);
    }

    for (label, body) in [
        ("no label", br#"{"client_secret":"s3cr3t"}"#.as_slice()),
        ("empty object", br#"{}"#),
    ] {
        let resp = w.gw.request("PATCH", SLASHID_TARGET, &headers, Some(body));
        cases.refused(label, &resp, 400, "field_required", &w.slashid);
        if message(&resp).contains("s3cr3t") {
            cases.fail(label, "the message echoes the client secret".into());
        }
    }

    let all_fields: &[u8] = br#"{"label":"Google prod","client_secret":"s3cr3t","external_cred":"c","external_cred_id":"ci","options":{"google":{"authorize_scopes":["openid"]},"okta":{"organization_url":"https://org.okta.com"}},"enable_in_slashid_oidc_authz_server":true}"#;
    let resp =
        w.gw.request("PATCH", SLASHID_TARGET, &headers, Some(all_fields));
    cases.check(
        "every documented field",
        forwarded_problems(&resp, &w.slashid, "PATCH", SLASHID_TARGET, all_fields),
        Some(&resp),
    );
    cases.finish();
}

// === pin_headers ===

#[test]
fn the_org_header_is_pinned_to_the_token() {
    let w = World::start();
    let body: &[u8] = br#"{"label":"Google prod"}"#;
    let with_org = bearer(&slashid_token(Some("org-1")));
    let without_org = bearer(&slashid_token(None));
    let mut cases = Cases::new();

    let send = |auth: &str, org: &[&str]| {
        let mut headers = vec![
            ("Authorization", auth),
            ("Content-Type", "application/json"),
        ];
        for o in org {
            headers.push(("SlashID-OrgID", *o));
        }
        w.gw.request("PATCH", SLASHID_TARGET, &headers, Some(body))
    };
    let org_seen = |label: &str, cases: &mut Cases| {
        if let Some(got) = w.slashid.requests().first() {
            if got.header_all("slashid-orgid") != ["org-1"] {
                cases.fail(
                    label,
                    format!(
                        "upstream SlashID-OrgID {:?} (expected [\"org-1\"])",
                        got.header_all("slashid-orgid")
                    ),
                );
            }
        }
    };

    let resp = send(&with_org, &["org-1"]);
    cases.check(
        "matching header",
        forwarded_problems(&resp, &w.slashid, "PATCH", SLASHID_TARGET, body),
        Some(&resp),
    );
    org_seen("matching header", &mut cases);
    w.slashid.clear();

    let resp = send(&with_org, &[]);
    cases.check(
        "header absent",
        forwarded_problems(&resp, &w.slashid, "PATCH", SLASHID_TARGET, body),
        Some(&resp),
    );
    org_seen("header absent", &mut cases);
    w.slashid.clear();

    // Header names are case-insensitive.
    let resp = w.gw.request(
        "PATCH",
        SLASHID_TARGET,
        &[
            ("Authorization", &with_org),
            ("Content-Type", "application/json"),
            ("slashid-orgid", "org-1"),
        ],
        Some(body),
    );
    cases.check(
        "lower-case header name",
        forwarded_problems(&resp, &w.slashid, "PATCH", SLASHID_TARGET, body),
        Some(&resp),
    );
    org_seen("lower-case header name", &mut cases);
    w.slashid.clear();

    for (label, auth, org) in [
        ("another org", &with_org, vec!["org-2"]),
        ("differs in case", &with_org, vec!["ORG-1"]),
        ("empty header", &with_org, vec![""]),
        ("two headers", &with_org, vec!["org-1", "org-2"]),
        ("the same header twice", &with_org, vec!["org-1", "org-1"]),
        (
            "token without oid, header sent",
            &without_org,
            vec!["org-1"],
        ),
        ("token without oid, no header", &without_org, vec![]),
    ] {
        let resp = send(auth, &org);
        cases.refused(label, &resp, 403, "pinned_header_mismatch", &w.slashid);
    }
    cases.finish();
}

// === nested enums (VMware) ===

#[test]
fn vmware_identity_provider_types_are_closed_sets_at_nested_pointers() {
    let w = World::start();
    let tok = token(&["ADMIN"]);
    let target = "/v1/identity-providers/8ee3a4c0-2f59-4c1a-a8b4-7a5e1d8f0c11";
    let mut cases = Cases::new();

    let mut allowed: Vec<(String, Vec<u8>)> = vec![
        (
            "ldap OpenLdap".into(),
            br#"{"name":"corp-ldap","type":"Embedded","ldap":{"type":"OpenLdap","domainName":"corp.example"}}"#.to_vec(),
        ),
        (
            "ldap ActiveDirectory".into(),
            br#"{"ldap":{"type":"ActiveDirectory","sourceDetails":{"usersBaseDn":"dc=corp"}}}"#.to_vec(),
        ),
        ("ldap type null".into(), br#"{"ldap":{"type":null}}"#.to_vec()),
        ("no ldap".into(), br#"{"name":"x","type":"anything"}"#.to_vec()),
        (
            "ldap without type".into(),
            br#"{"ldap":{"domainName":"corp.example"}}"#.to_vec(),
        ),
        // ldap is not an object: the pointer resolves to nothing.
        ("ldap is a string".into(), br#"{"ldap":"OpenLdap"}"#.to_vec()),
    ];
    for t in FED_IDP_SOURCE_TYPES {
        allowed.push((
            format!("federated {t}"),
            format!(
                r#"{{"fedIdpSpec":{{"name":"fed","directory":{{"directoryId":"d1","federatedIdpSourceType":"{t}"}}}}}}"#
            )
            .into_bytes(),
        ));
    }
    for (label, body) in &allowed {
        let resp = w.send("PATCH", target, &tok, body);
        cases.check(
            label,
            forwarded_problems(&resp, &w.vmware, "PATCH", target, body),
            Some(&resp),
        );
        w.vmware.clear();
    }

    for (label, body) in [
        ("ldap lower case", br#"{"ldap":{"type":"openldap"}}"#.as_slice()),
        ("ldap unknown", br#"{"ldap":{"type":"Kerberos"}}"#),
        ("ldap number", br#"{"ldap":{"type":1}}"#),
        (
            "federated unknown",
            br#"{"fedIdpSpec":{"directory":{"federatedIdpSourceType":"GOOGLE"}}}"#,
        ),
        (
            "federated lower case",
            br#"{"fedIdpSpec":{"directory":{"federatedIdpSourceType":"okta"}}}"#,
        ),
        (
            "federated with spaces",
            br#"{"fedIdpSpec":{"directory":{"federatedIdpSourceType":" OKTA"}}}"#,
        ),
        (
            "one good, one bad",
            br#"{"ldap":{"type":"OpenLdap"},"fedIdpSpec":{"directory":{"federatedIdpSourceType":"ADFS"}}}"#,
        ),
    ] {
        let resp = w.send("PATCH", target, &tok, body);
        cases.refused(label, &resp, 400, "invalid_enum_value", &w.vmware);
    }
    cases.finish();
}

// === sizes ===

#[test]
fn a_declared_length_over_max_bytes_is_refused_before_the_body() {
    let w = World::start();
    let auth = bearer(&admin_token());
    for (method, target) in [("PUT", CLIENT_TARGET), ("POST", "/v1.0/apiclients")] {
        // Only the head is sent: the gateway must answer on the declared length.
        let len = (ROUTE_MAX_BYTES + 1).to_string();
        let head = build_request(
            method,
            target,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
                ("Content-Length", &len),
            ],
            None,
        );
        let started = Instant::now();
        let ex = send_raw_collect(w.gw.addr(), &head, Duration::from_secs(3));
        assert!(
            !ex.responses.is_empty(),
            "{method}: no answer to a declared length of {len}: {ex:?}"
        );
        assert_refused(&ex.responses[0], 413, "body_too_large", &w.verify);
        assert!(
            ex.closed,
            "{method}: connection left open with the body unread"
        );
        assert!(
            started.elapsed() < Duration::from_millis(2 * BODY_TIMEOUT_MS),
            "{method}: the answer waited for the body ({:?})",
            started.elapsed()
        );
    }
}

#[test]
fn a_chunked_body_is_cut_off_once_it_passes_max_bytes() {
    let w = World::start();
    let auth = bearer(&admin_token());
    // Two chunks that together pass the limit by one byte, and no final
    // chunk: the gateway must not wait for the rest (that would be 408).
    let mut raw = build_request(
        "PUT",
        CLIENT_TARGET,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
        ],
        None,
    );
    let first = ROUTE_MAX_BYTES / 2;
    let second = ROUTE_MAX_BYTES - first + 1;
    for (n, fill) in [(first, b'{'), (second, b' ')] {
        raw.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        raw.extend(std::iter::repeat_n(fill, n));
        raw.extend_from_slice(b"\r\n");
    }
    let started = Instant::now();
    let ex = send_raw_collect(w.gw.addr(), &raw, Duration::from_secs(3));
    assert!(!ex.responses.is_empty(), "no answer: {ex:?}");
    assert_refused(&ex.responses[0], 413, "body_too_large", &w.verify);
    assert!(ex.closed, "connection left open after the cut-off");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the cut-off took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_declared_length_over_the_server_limit_is_refused_without_a_body_policy() {
    let w = World::start();
    let auth = bearer(&token(&["manage_all"]));
    let target = "/api/2/apps/1234567";
    let len = (SERVER_MAX_BODY + 1).to_string();
    let head = build_request(
        "PUT",
        target,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("Content-Length", &len),
        ],
        None,
    );
    let ex = send_raw_collect(w.gw.addr(), &head, Duration::from_secs(3));
    assert!(!ex.responses.is_empty(), "no answer: {ex:?}");
    assert_refused(&ex.responses[0], 413, "body_too_large", &w.onelogin);
    assert!(ex.closed, "connection left open with the body unread");

    // Just within the limit it is forwarded as is, even though it is larger
    // than the body policies' max_bytes elsewhere.
    let body = json_of_len(SERVER_MAX_BODY);
    let resp = w.send("PUT", target, &token(&["manage_all"]), &body);
    let problems = forwarded_problems(&resp, &w.onelogin, "PUT", target, &body);
    assert!(problems.is_empty(), "{problems:?}: {}", resp.describe());
}

#[test]
fn a_chunked_body_over_the_server_limit_is_cut_off_without_a_body_policy() {
    let w = World::start();
    let auth = bearer(&token(&["manage_all"]));
    // Streamed upstream: three chunks of 12000 bytes pass 32768 in the third.
    let mut raw = build_request(
        "PUT",
        "/api/2/apps/1234567",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
        ],
        None,
    );
    for _ in 0..3 {
        raw.extend_from_slice(format!("{:x}\r\n", 12000).as_bytes());
        raw.extend(std::iter::repeat_n(b' ', 12000));
        raw.extend_from_slice(b"\r\n");
    }
    let ex = send_raw_collect(w.gw.addr(), &raw, Duration::from_secs(3));
    assert!(!ex.responses.is_empty(), "no answer: {ex:?}");
    // The upstream may have seen the head and the first chunks, but never a
    // complete (truncated) request.
    assert_refused(&ex.responses[0], 413, "body_too_large", &w.onelogin);
    assert!(ex.closed, "connection left open after the cut-off");
}

#[test]
fn a_refused_body_does_not_leak_into_a_pipelined_request() {
    let w = World::start();
    let auth = bearer(&admin_token());
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
        ("Connection", "keep-alive"),
    ];
    let second: &[u8] = br#"{"clientName":"y"}"#;
    let mut raw = build_request("PUT", CLIENT_TARGET, &headers, Some(br#"{"clientId":"x"}"#));
    raw.extend(build_request("PUT", CLIENT_TARGET, &headers, Some(second)));
    let ex = send_raw_collect(w.gw.addr(), &raw, Duration::from_secs(2));
    assert!(!ex.responses.is_empty(), "no answer: {ex:?}");
    assert_refused(&ex.responses[0], 400, "field_denied", &w.verify);
    // The second request is either answered on its own or dropped with the
    // connection; it never carries the first one's body.
    match ex.responses.get(1) {
        None => assert_eq!(w.verify.count(), 0),
        Some(resp) => {
            let problems = forwarded_problems(resp, &w.verify, "PUT", CLIENT_TARGET, second);
            assert!(problems.is_empty(), "{problems:?}: {}", resp.describe());
        }
    }
}

// === body timeout ===

#[test]
fn a_body_sent_too_slowly_gets_408() {
    let w = World::start();
    let auth = bearer(&admin_token());
    let mut raw = build_request(
        "PUT",
        CLIENT_TARGET,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("Content-Length", "100"),
        ],
        None,
    );
    raw.extend_from_slice(br#"{"clientNa"#);
    let started = Instant::now();
    let ex = send_raw_collect(w.gw.addr(), &raw, Duration::from_secs(3));
    let elapsed = started.elapsed();
    assert!(
        !ex.responses.is_empty(),
        "no answer within 3 s to a stalled body: {ex:?}"
    );
    assert_refused(&ex.responses[0], 408, "request_timeout", &w.verify);
    assert!(ex.closed, "connection left open after the body timeout");
    assert!(
        elapsed >= Duration::from_millis(BODY_TIMEOUT_MS * 8 / 10),
        "answered after {elapsed:?}, before body_timeout_ms = {BODY_TIMEOUT_MS}"
    );
}

#[test]
fn a_body_sent_too_slowly_gets_408_without_a_body_policy() {
    // body_timeout_ms is a server setting: it also bounds streamed bodies,
    // which must not hold an upstream connection until its read timeout.
    let w = World::start();
    let auth = bearer(&token(&["manage_all"]));
    let mut raw = build_request(
        "PUT",
        "/api/2/apps/1234567",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("Content-Length", "100"),
        ],
        None,
    );
    raw.extend_from_slice(br#"{"name":"P"#);
    let started = Instant::now();
    let ex = send_raw_collect(w.gw.addr(), &raw, Duration::from_secs(3));
    assert!(
        !ex.responses.is_empty(),
        "no answer within 3 s ({:?}) to a stalled body with body_timeout_ms = {BODY_TIMEOUT_MS}: {ex:?}",
        started.elapsed()
    );
    assert_refused(&ex.responses[0], 408, "request_timeout", &w.onelogin);
    assert!(ex.closed, "connection left open after the body timeout");
}

#[test]
fn an_expect_100_continue_body_is_invited_before_it_is_read() {
    // The gateway reads a checked body itself before anything goes upstream,
    // so it is the one to answer `Expect: 100-continue` (RFC 9110 §10.1.1);
    // a client waiting for 100 must not run into body_timeout_ms.
    use std::io::{Read, Write};
    let w = World::start();
    let auth = bearer(&admin_token());
    let body: &[u8] = br#"{"clientName":"ci-bot"}"#;
    let len = body.len().to_string();
    let head = build_request(
        "PUT",
        CLIENT_TARGET,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("Content-Length", &len),
            ("Expect", "100-continue"),
        ],
        None,
    );
    let mut stream = std::net::TcpStream::connect(w.gw.addr()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("read timeout");
    stream.write_all(&head).expect("write head");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_millis(BODY_TIMEOUT_MS * 8 / 10);
    while Instant::now() < deadline && !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let interim = String::from_utf8_lossy(&got).into_owned();
    assert!(
        interim.starts_with("HTTP/1.1 100"),
        "no 100 Continue within {} ms of the head; got {interim:?}",
        BODY_TIMEOUT_MS * 8 / 10
    );
    stream.write_all(body).expect("write body");
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut rest = Vec::new();
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => rest.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.1 200"), "final response {text:?}");
    let seen = w.verify.requests();
    assert_eq!(seen.len(), 1, "upstream requests");
    assert_eq!(seen[0].body, body);
}

// === deny_self ===

#[test]
fn a_client_cannot_update_itself() {
    let w = World::start();
    let tok = admin_token();
    let body: &[u8] = br#"{"entitlements":["readCerts"]}"#;
    let mut cases = Cases::new();

    for (label, target, body) in [
        (
            "own client id",
            format!("/v1.0/apiclients/{DEFAULT_CLIENT_ID}"),
            body.to_vec(),
        ),
        (
            "own client id, percent-encoded",
            "/v1.0/apiclients/client%2D1".to_string(),
            body.to_vec(),
        ),
        (
            "own client id, body naming it too",
            format!("/v1.0/apiclients/{DEFAULT_CLIENT_ID}"),
            format!(r#"{{"id":"{DEFAULT_CLIENT_ID}","enabled":true}}"#).into_bytes(),
        ),
    ] {
        let resp = w.send("PUT", &target, &tok, &body);
        cases.refused(label, &resp, 403, "self_modification", &w.verify);
    }

    // Another client's id, and a token naming another client, pass.
    let other = "/v1.0/apiclients/client-2";
    let resp = w.send("PUT", other, &tok, body);
    cases.check(
        "another client",
        forwarded_problems(&resp, &w.verify, "PUT", other, body),
        Some(&resp),
    );
    w.verify.clear();
    let own = format!("/v1.0/apiclients/{DEFAULT_CLIENT_ID}");
    let other_caller = TokenBuilder::new(&TestKey::rsa())
        .client_id("client-2")
        .entitlements(&ADMIN)
        .build();
    let resp = w.send("PUT", &own, &other_caller, body);
    cases.check(
        "another caller",
        forwarded_problems(&resp, &w.verify, "PUT", &own, body),
        Some(&resp),
    );
    cases.finish();
}

// === config validation ===

/// A complete config around `upstream_extra` and `routes`, with the Verify
/// catalogue and `[server] max_body_bytes = max_body`.
fn validation_config(max_body: Option<usize>, upstream_extra: &str, routes: &str) -> String {
    let mut b = ConfigBuilder::new();
    if let Some(n) = max_body {
        b = b.server(&format!("max_body_bytes = {n}"));
    }
    b.raw(&format!(
        "[catalogs.verify]\nfile = {}\nofferings = [\"CIC\"]\n",
        toml_str(&catalog_file())
    ))
    .issuer("main", DEFAULT_ISSUER, "http://127.0.0.1:9/jwks", "")
    .upstream("verify", "http://127.0.0.1:9", upstream_extra)
    .raw(routes)
    .build()
}

fn load_errors(toml: &str) -> String {
    match portcullis::config::load_str(toml, &inline_config_origin()) {
        Ok(_) => panic!("config loaded, but should fail:\n{toml}"),
        Err(e) => e.to_string(),
    }
}

fn load_ok(toml: &str) {
    if let Err(e) = portcullis::config::load_str(toml, &inline_config_origin()) {
        panic!("config rejected:\n{e}\n--- config ---\n{toml}");
    }
}

const UPDATE_ROUTE: &str = r#"
[[routes]]
name = "verify-apiclient-update"
methods = ["PUT"]
path = "/v1.0/apiclients/{id}"
upstream = "verify"
require_all = ["REQUIRED"]
deny_self = "id"

[routes.body]
json = true
max_bytes = MAX_BYTES
path_params = { "/id" = "id" }
subset_of_caller = ["/entitlements"]
catalog = { "/entitlements" = "CATALOG" }
enums = { "/ipFilterOp" = ["allow", "deny"] }
cidrs = ["/ipFilters"]
deny = ["/clientId"]
field_requires = { "/jwkUri" = ["manageAPIClients"], "/additionalConfig" = ["manageAPIClients"] }
"#;

fn update_route(required: &str, max_bytes: usize, catalog: &str) -> String {
    UPDATE_ROUTE
        .replace("REQUIRED", required)
        .replace("MAX_BYTES", &max_bytes.to_string())
        .replace("CATALOG", catalog)
}

#[test]
fn the_test_policy_is_a_valid_config() {
    load_ok(&config(
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        "http://127.0.0.1:9/jwks",
    ));
    load_ok(&validation_config(
        None,
        "catalog = \"verify\"",
        &update_route("manageAPIClients", 16384, "verify"),
    ));
}

#[test]
fn a_required_entitlement_missing_from_the_catalogue_fails_with_a_hint() {
    let errors = load_errors(&validation_config(
        None,
        "catalog = \"verify\"",
        &update_route("manageAPIClient", 16384, "verify"),
    ));
    assert!(
        errors.contains("routes[0].require_all[0]")
            && errors.contains("manageAPIClient")
            && errors.contains("did you mean \"manageAPIClients\""),
        "{errors}"
    );
    // Without a catalogue on the upstream, any well-formed name loads.
    load_ok(&validation_config(
        None,
        "",
        &update_route("manageAPIClient", 16384, "verify"),
    ));
}

#[test]
fn max_bytes_above_the_inspectable_limit_fails() {
    // The server allows large streamed bodies, but a checked body is replayed
    // from pingora's 64 KiB buffer.
    let errors = load_errors(&validation_config(
        Some(1 << 20),
        "catalog = \"verify\"",
        &update_route("manageAPIClients", 65537, "verify"),
    ));
    assert!(
        errors.contains("routes[0].body.max_bytes") && errors.contains("65536"),
        "{errors}"
    );
    load_ok(&validation_config(
        Some(1 << 20),
        "catalog = \"verify\"",
        &update_route("manageAPIClients", 65536, "verify"),
    ));
    // Nor above server.max_body_bytes.
    let errors = load_errors(&validation_config(
        Some(8192),
        "catalog = \"verify\"",
        &update_route("manageAPIClients", 8193, "verify"),
    ));
    assert!(errors.contains("routes[0].body.max_bytes"), "{errors}");
}

#[test]
fn an_unknown_catalogue_name_fails() {
    let errors = load_errors(&validation_config(
        None,
        "catalog = \"verify\"",
        &update_route("manageAPIClients", 16384, "verfy"),
    ));
    assert!(
        errors.contains("routes[0].body.catalog") && errors.contains("verfy"),
        "{errors}"
    );
    let errors = load_errors(&validation_config(
        None,
        "catalog = \"verfy\"",
        &update_route("manageAPIClients", 16384, "verify"),
    ));
    assert!(
        errors.contains("upstreams[0].catalog") && errors.contains("verfy"),
        "{errors}"
    );
}
