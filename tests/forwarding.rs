//! Step 3 (client IP) and step 8 (forward) through the socket: what each seed
//! API's upstream receives, which headers the gateway removes and sets, and
//! how upstream failures and IP filters are answered.

mod common;

use std::time::{Duration, Instant};

use common::*;

const ROUTES: &str = r#"
[[routes]]
name = "verify-update-client"
methods = ["PUT"]
path = "/v1.0/apiclients/{id}"
upstream = "verify"
require_all = ["manageAPIClients"]

[[routes]]
name = "verify-list-clients"
methods = ["GET"]
path = "/v1.0/apiclients"
upstream = "verify"
require_any = ["readAPIClients", "manageAPIClients"]

[[routes]]
name = "onelogin-update-app"
methods = ["PUT"]
path = "/api/2/apps/{id}"
upstream = "onelogin"
require_all = ["manage_all"]

[[routes]]
name = "slashid-update-oidc-credentials"
methods = ["PATCH"]
path = "/organizations/sso/oidc/provider-credentials/{oauth_client_id}"
upstream = "slashid"
require_all = ["admin"]

[[routes]]
name = "vmware-update-idp"
methods = ["PATCH"]
path = "/v1/identity-providers/{id}"
upstream = "vmware"
require_all = ["ADMIN"]

[[routes]]
name = "stripped"
methods = ["GET"]
path = "/stripped/{id}"
upstream = "verify"
strip_authorization = true

[[routes]]
name = "dead"
path = "/dead/{*rest}"
upstream = "dead"
auth = "none"

[[routes]]
name = "slow-route-timeout"
path = "/slow/{id}"
upstream = "slow"
auth = "none"
read_timeout_ms = 500

[[routes]]
name = "slow-upstream-timeout"
path = "/slow-upstream/{id}"
upstream = "slow-500"
auth = "none"

[[routes]]
name = "allow-ten"
path = "/allow-ten/{id}"
upstream = "verify"
ip_allow = ["10.0.0.0/8"]

[[routes]]
name = "deny-loopback"
path = "/deny-loopback/{id}"
upstream = "verify"
ip_deny = ["127.0.0.0/8"]

[[routes]]
name = "allow-loopback"
path = "/allow-loopback/{id}"
upstream = "verify"
auth = "none"
ip_allow = ["127.0.0.1", "::1"]

[[routes]]
name = "public"
methods = ["GET"]
path = "/.well-known/{*rest}"
upstream = "verify"
auth = "none"
"#;

/// One mock per seed family plus a slow one; `dead` is a closed port.
struct World {
    verify: MockUpstream,
    onelogin: MockUpstream,
    slashid: MockUpstream,
    vmware: MockUpstream,
    slow: MockUpstream,
    _jwks: MockJwks,
    gw: TestGateway,
}

impl World {
    fn start() -> World {
        let verify = MockUpstream::start();
        let onelogin = MockUpstream::start();
        let slashid = MockUpstream::start();
        let vmware = MockUpstream::start();
        let slow = MockUpstream::start_slow(Duration::from_secs(3));
        let jwks = MockJwks::start(standard_jwks());
        let config = ConfigBuilder::new()
            .issuer("main", DEFAULT_ISSUER, &jwks.url(), "")
            .upstream("verify", &verify.url(), "")
            .upstream("onelogin", &onelogin.url(), "")
            .upstream("slashid", &slashid.url(), "")
            .upstream("vmware", &vmware.url(), "")
            .upstream(
                "dead",
                &format!("http://127.0.0.1:{}", free_port()),
                "connect_timeout_ms = 1000",
            )
            .upstream("slow", &slow.url(), "")
            .upstream("slow-500", &slow.url(), "read_timeout_ms = 500")
            .raw(ROUTES)
            .build();
        let gw = TestGateway::start(&config);
        gw.warm_up(
            "/v1.0/apiclients",
            &token_with(&["readAPIClients"]),
            &verify,
        );
        World {
            verify,
            onelogin,
            slashid,
            vmware,
            slow,
            _jwks: jwks,
            gw,
        }
    }

    fn mocks(&self) -> [(&'static str, &MockUpstream); 4] {
        [
            ("verify", &self.verify),
            ("onelogin", &self.onelogin),
            ("slashid", &self.slashid),
            ("vmware", &self.vmware),
        ]
    }

    fn clear(&self) {
        for (_, m) in self.mocks() {
            m.clear();
        }
        self.slow.clear();
    }
}

fn token_with(ents: &[&str]) -> String {
    TokenBuilder::new(&TestKey::rsa())
        .entitlements(ents)
        .build()
}

/// The gateway's identity headers, forged by the client in several cases.
const FORGED: [(&str, &str); 6] = [
    ("X-Portcullis-Client-Id", "forged-client"),
    ("x-portcullis-client-id", "forged-client-2"),
    ("X-PORTCULLIS-SUBJECT", "root"),
    ("X-Portcullis-Route", "some-other-route"),
    ("x-portcullis-route", "another-route"),
    ("X-Portcullis-Anything", "x"),
];

#[test]
fn each_seed_api_receives_exactly_what_was_sent_plus_identity_headers() {
    let w = World::start();
    struct Case {
        family: &'static str,
        method: &'static str,
        target: &'static str,
        route: &'static str,
        entitlement: &'static str,
        body: Option<&'static [u8]>,
        extra: &'static [(&'static str, &'static str)],
    }
    let table = [
        Case {
            family: "verify",
            method: "PUT",
            target: "/v1.0/apiclients/0fd9e3a4-7b4e-4f5b-9b3a-1b2c3d4e5f60",
            route: "verify-update-client",
            entitlement: "manageAPIClients",
            body: Some(br#"{"clientName":"ci-bot","entitlements":["readUsers"],"enabled":true,"ipFilterOp":null,"ipFilters":[]}"#),
            extra: &[("Content-Type", "application/json")],
        },
        Case {
            family: "verify",
            method: "GET",
            target: "/v1.0/apiclients?search=clientName%20%3D%20%22ci-bot%22&limit=5",
            route: "verify-list-clients",
            entitlement: "readAPIClients",
            body: None,
            extra: &[("Accept", "application/json")],
        },
        Case {
            family: "onelogin",
            method: "PUT",
            target: "/api/2/apps/1234567",
            route: "onelogin-update-app",
            entitlement: "manage_all",
            body: Some(br#"{"name":"Payroll","description":"updated","visible":false}"#),
            extra: &[("Content-Type", "application/json")],
        },
        Case {
            family: "slashid",
            method: "PATCH",
            target: "/organizations/sso/oidc/provider-credentials/903c1ff9-f2cc-435c-b242-9d8a690fcf0a",
            route: "slashid-update-oidc-credentials",
            entitlement: "admin",
            body: Some(br#"{"label":"Google prod","client_secret":"s3cr3t"}"#),
            extra: &[("Content-Type", "application/json"), ("SlashID-OrgID", "af5fbd30-7ce7-4548-8b30-4cd59cb2aba1")],
        },
        Case {
            family: "vmware",
            method: "PATCH",
            target: "/v1/identity-providers/8ee3a4c0-2f59-4c1a-a8b4-7a5e1d8f0c11",
            route: "vmware-update-idp",
            entitlement: "ADMIN",
            body: Some(br#"{"name":"corp-ldap","ldap":{"domainName":"corp.example","sourceDetails":{"sslEnabled":true}}}"#),
            extra: &[("Content-Type", "application/json")],
        },
    ];

    let mut cases = Cases::new();
    for case in &table {
        w.clear();
        let client_id = format!("{}-client", case.family);
        let subject = format!("{}-subject", case.family);
        let token = TokenBuilder::new(&TestKey::rsa())
            .client_id(&client_id)
            .sub(&subject)
            .entitlements(&[case.entitlement])
            .build();
        let auth = bearer(&token);
        let mut headers: Vec<(&str, &str)> = vec![("Authorization", &auth)];
        headers.extend_from_slice(case.extra);
        headers.extend_from_slice(&FORGED);
        let label = format!("{} {}", case.method, case.target);
        let resp = w.gw.request(case.method, case.target, &headers, case.body);

        let mut problems = Vec::new();
        if resp.status != 200 {
            problems.push(format!("status {}", resp.status));
        }
        if resp.body != br#"{"upstream":"ok"}"# {
            problems.push(format!(
                "response body {:?} is not the upstream's",
                resp.body_str()
            ));
        }
        if resp.header("x-request-id").is_none() {
            problems.push("no X-Request-Id on the response".into());
        }
        for (name, mock) in w.mocks() {
            let expected = usize::from(name == case.family);
            if mock.count() != expected {
                problems.push(format!(
                    "upstream {name} saw {} requests (expected {expected})",
                    mock.count()
                ));
            }
        }
        let mock = w
            .mocks()
            .into_iter()
            .find(|(n, _)| *n == case.family)
            .map(|(_, m)| m)
            .expect("family");
        if let Some(got) = mock.requests().first() {
            if got.method != case.method {
                problems.push(format!("method {}", got.method));
            }
            if got.target != case.target.as_bytes() {
                problems.push(format!("target {:?}", got.target_str()));
            }
            if got.body != case.body.unwrap_or_default() {
                problems.push(format!("body {:?}", String::from_utf8_lossy(&got.body)));
            }
            for (name, want) in [
                ("X-Portcullis-Client-Id", client_id.as_str()),
                ("X-Portcullis-Subject", subject.as_str()),
                ("X-Portcullis-Route", case.route),
            ] {
                if got.header_all(name) != [want] {
                    problems.push(format!(
                        "{name} upstream {:?} (expected [{want:?}])",
                        got.header_all(name)
                    ));
                }
            }
            if !got.header_all("X-Portcullis-Anything").is_empty() {
                problems.push("a client-sent X-Portcullis-Anything reached the upstream".into());
            }
            for (name, value) in case.extra {
                if got.header(name) != Some(value) {
                    problems.push(format!(
                        "{name} upstream {:?} (expected {value:?})",
                        got.header(name)
                    ));
                }
            }
            if got.header("authorization") != Some(auth.as_str()) {
                problems.push("Authorization not passed unchanged".into());
            }
        }
        cases.check(&label, problems, Some(&resp));
    }
    cases.finish();
}

#[test]
fn hop_by_hop_headers_are_removed() {
    let w = World::start();
    let token = TokenBuilder::new(&TestKey::rsa())
        .client_id("hop-client")
        .entitlements(&["readAPIClients"])
        .build();
    let auth = bearer(&token);
    let resp = w.gw.request(
        "GET",
        "/v1.0/apiclients",
        &[
            ("Authorization", &auth),
            ("Connection", "close, X-Foo"),
            ("Keep-Alive", "timeout=5, max=100"),
            ("TE", "trailers"),
            ("Proxy-Authorization", "Basic cHJveHk6c2VjcmV0"),
            ("Proxy-Connection", "keep-alive"),
            ("X-Foo", "hop-only"),
            ("X-Bar", "end-to-end"),
        ],
        None,
    );
    assert_eq!(resp.status, 200, "{}", resp.describe());
    let got = w.verify.last();
    let mut problems = Vec::new();
    for name in [
        "Keep-Alive",
        "TE",
        "Proxy-Authorization",
        "Proxy-Connection",
        "X-Foo",
    ] {
        if got.header(name).is_some() {
            problems.push(format!("hop-by-hop {name} reached the upstream"));
        }
    }
    for c in got.header_all("connection") {
        if c.to_ascii_lowercase().contains("x-foo") {
            problems.push(format!(
                "the client's Connection list reached the upstream: {c:?}"
            ));
        }
    }
    if got.header("X-Bar") != Some("end-to-end") {
        problems.push("end-to-end X-Bar was dropped".into());
    }
    if got.header("X-Portcullis-Client-Id") != Some("hop-client") {
        problems.push(format!(
            "X-Portcullis-Client-Id {:?}",
            got.header("X-Portcullis-Client-Id")
        ));
    }
    assert!(
        problems.is_empty(),
        "{}\nupstream headers: {:?}",
        problems.join("\n"),
        got.headers
    );
}

#[test]
fn connection_cannot_nominate_a_gateway_header_for_removal() {
    let w = World::start();
    let token = TokenBuilder::new(&TestKey::rsa())
        .client_id("hop-client")
        .entitlements(&["readAPIClients"])
        .build();
    let auth = bearer(&token);
    let mut cases = Cases::new();
    for name in [
        "X-Portcullis-Client-Id",
        "X-Portcullis-Subject",
        "X-Portcullis-Route",
        "X-Request-Id",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
    ] {
        w.verify.clear();
        let connection = format!("close, {name}");
        let resp = w.gw.request(
            "GET",
            "/v1.0/apiclients",
            &[("Authorization", &auth), ("Connection", &connection)],
            None,
        );
        let label = format!("Connection: {connection}");
        if resp.status != 200 {
            cases.fail(
                &label,
                format!("status {}: {}", resp.status, resp.describe()),
            );
            continue;
        }
        let got = w.verify.last();
        let want = match name {
            "X-Portcullis-Client-Id" => Some("hop-client".to_string()),
            "X-Portcullis-Subject" => Some(DEFAULT_SUBJECT.to_string()),
            "X-Portcullis-Route" => Some("verify-list-clients".to_string()),
            "X-Forwarded-For" => Some("127.0.0.1".to_string()),
            "X-Forwarded-Proto" => Some("http".to_string()),
            _ => None,
        };
        match (got.header(name), want) {
            (None, _) => cases.fail(&label, format!("{name} missing upstream")),
            (Some(v), Some(w)) if v != w => {
                cases.fail(&label, format!("{name} upstream {v:?}, expected {w:?}"))
            }
            _ => {}
        }
    }
    // Framing, media type, credential and routing headers cannot even be
    // nominated: 400, nothing upstream (trust_boundaries.rs covers pinned
    // and upstream-credential headers).
    for name in [
        "Host",
        "Authorization",
        "Content-Type",
        "Content-Length",
        "authorization",
        "Content_Type",
    ] {
        w.verify.clear();
        let connection = format!("close, {name}");
        let resp = w.gw.request(
            "GET",
            "/v1.0/apiclients",
            &[("Authorization", &auth), ("Connection", &connection)],
            None,
        );
        cases.refused(
            &format!("Connection: {connection}"),
            &resp,
            400,
            "forbidden_header",
            &w.verify,
        );
    }
    cases.finish();
}

#[test]
fn forwarded_headers_from_an_untrusted_peer_are_replaced() {
    let w = World::start();
    let auth = bearer(&token_with(&["readAPIClients"]));
    let resp = w.gw.request(
        "GET",
        "/v1.0/apiclients",
        &[
            ("Authorization", &auth),
            ("X-Forwarded-For", "6.6.6.6, 7.7.7.7"),
            ("x-forwarded-for", "8.8.8.8"),
            ("Forwarded", "for=6.6.6.6;proto=https"),
            ("X-Forwarded-Proto", "https"),
        ],
        None,
    );
    assert_eq!(resp.status, 200, "{}", resp.describe());
    let got = w.verify.last();
    assert_eq!(
        got.header_all("X-Forwarded-For"),
        ["127.0.0.1"],
        "X-Forwarded-For must be the peer only"
    );
    assert_eq!(got.header_all("X-Forwarded-Proto"), ["http"]);
    for f in got.header_all("Forwarded") {
        assert!(
            !f.contains("6.6.6.6"),
            "a client-sent Forwarded reached the upstream: {f:?}"
        );
    }
}

#[test]
fn request_ids_are_kept_when_sane_and_replaced_otherwise() {
    let w = World::start();
    let auth = bearer(&token_with(&["readAPIClients"]));
    let send = |id: Option<&str>| {
        w.verify.clear();
        let mut headers = vec![("Authorization", auth.as_str())];
        if let Some(id) = id {
            headers.push(("X-Request-Id", id));
        }
        let resp = w.gw.request("GET", "/v1.0/apiclients", &headers, None);
        assert_eq!(resp.status, 200, "{}", resp.describe());
        let got = w.verify.last();
        let upstream: Vec<String> = got
            .header_all("x-request-id")
            .iter()
            .map(|s| s.to_string())
            .collect();
        (resp.header("x-request-id").map(str::to_string), upstream)
    };
    let mut cases = Cases::new();

    let max = "r".repeat(128);
    for sane in [
        "req-abc-123",
        "0fd9e3a4-7b4e-4f5b-9b3a-1b2c3d4e5f60",
        max.as_str(),
    ] {
        let (resp_id, up_ids) = send(Some(sane));
        if up_ids != [sane] || resp_id.as_deref() != Some(sane) {
            cases.fail(
                &format!("sane id of {} chars", sane.len()),
                format!("upstream {up_ids:?}, response {resp_id:?}"),
            );
        }
    }
    let too_long = "x".repeat(129);
    let huge = "y".repeat(300);
    for (label, insane) in [
        ("129 chars", too_long.as_str()),
        ("300 chars", huge.as_str()),
        ("with spaces", "has spaces in it"),
        ("with a quote", "abc\"def"),
    ] {
        let (resp_id, up_ids) = send(Some(insane));
        let ok = up_ids.len() == 1
            && up_ids[0] != insane
            && !up_ids[0].is_empty()
            && up_ids[0].len() <= 128
            && !up_ids[0].contains(' ')
            && resp_id.as_deref() == Some(up_ids[0].as_str());
        if !ok {
            cases.fail(label, format!("upstream {up_ids:?}, response {resp_id:?}"));
        }
    }
    let (first, up_first) = send(None);
    let (second, _) = send(None);
    if first.is_none() || up_first.len() != 1 || first.as_deref() != Some(up_first[0].as_str()) {
        cases.fail(
            "generated",
            format!("upstream {up_first:?}, response {first:?}"),
        );
    }
    if first == second {
        cases.fail(
            "generated",
            format!("two requests got the same id {first:?}"),
        );
    }
    cases.finish();
}

#[test]
fn authorization_is_passed_by_default_and_stripped_on_request() {
    let w = World::start();
    let token = token_with(&["readAPIClients"]);
    let resp =
        w.gw.request_with_token("GET", "/v1.0/apiclients", &token, &[], None);
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert_eq!(
        w.verify.last().header_all("authorization"),
        [bearer(&token).as_str()]
    );

    w.clear();
    let resp =
        w.gw.request_with_token("GET", "/stripped/1", &token, &[], None);
    assert_eq!(resp.status, 200, "{}", resp.describe());
    let got = w.verify.last();
    assert!(
        got.header("authorization").is_none(),
        "Authorization reached the upstream of a strip_authorization route"
    );
    assert_eq!(
        got.header("X-Portcullis-Client-Id"),
        Some(DEFAULT_CLIENT_ID)
    );
}

#[test]
fn unreachable_upstream_is_502() {
    let w = World::start();
    let resp = w.gw.request("GET", "/dead/x", &[], None);
    assert_refused(&resp, 502, "upstream_unreachable", &w.verify);
}

/// A failed proxy attempt closes the client's connection (its request body
/// may be half-read), so the answer must say `Connection: close`: a client
/// that believed `keep-alive` would send its next request into a closing
/// connection and lose it (found by the soak, `make soak`).
#[test]
fn an_upstream_failure_on_a_keep_alive_connection_says_close_and_closes() {
    use std::io::{Read, Write};
    let w = World::start();
    for target in ["/dead/x", "/slow/3"] {
        let mut conn = std::net::TcpStream::connect(w.gw.addr()).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let head =
            format!("GET {target} HTTP/1.1\r\nHost: gw.test\r\nConnection: keep-alive\r\n\r\n");
        conn.write_all(head.as_bytes()).expect("write");
        let mut answer = Vec::new();
        // Read to the end: the gateway must close after the answer (a
        // timeout here means it kept the connection open).
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) => panic!(
                    "{target}: connection left open after the answer ({e}): {}",
                    String::from_utf8_lossy(&answer)
                ),
            }
        }
        let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        assert!(
            text.starts_with("http/1.1 502") || text.starts_with("http/1.1 504"),
            "{target}: {text}"
        );
        assert!(
            text.contains("\r\nconnection: close\r\n"),
            "{target}: {text}"
        );
        assert!(!text.contains("keep-alive"), "{target}: {text}");
    }
}

#[test]
fn slow_upstream_is_504_and_writes_are_not_retried() {
    let w = World::start();
    let mut cases = Cases::new();
    for (label, method, target) in [
        ("route read_timeout_ms", "GET", "/slow/1"),
        ("upstream read_timeout_ms", "GET", "/slow-upstream/1"),
        ("PUT", "PUT", "/slow/2"),
    ] {
        w.slow.clear();
        let start = Instant::now();
        let resp = w.gw.request(
            method,
            target,
            &[],
            if method == "PUT" { Some(b"{}") } else { None },
        );
        let took = start.elapsed();
        // The request did reach the (slow) upstream, so check it by hand.
        let mut problems = refusal_problems(&resp, 504, "upstream_timeout", &w.verify);
        if took > Duration::from_millis(2500) {
            problems.push(format!(
                "answered after {took:?} with a 500 ms read timeout"
            ));
        }
        if method == "PUT" {
            std::thread::sleep(Duration::from_millis(300));
            if w.slow.count() != 1 {
                problems.push(format!(
                    "the PUT reached the upstream {} times (never retry a write)",
                    w.slow.count()
                ));
            }
        }
        cases.check(label, problems, Some(&resp));
    }
    cases.finish();
}

#[test]
fn route_ip_filters_refuse_before_the_token_is_checked() {
    let w = World::start();
    let token = token_with(&["readAPIClients"]);
    let mut cases = Cases::new();
    let resp =
        w.gw.request_with_token("GET", "/allow-ten/1", &token, &[], None);
    cases.refused(
        "ip_allow 10.0.0.0/8 from loopback",
        &resp,
        403,
        "ip_denied",
        &w.verify,
    );
    let resp = w.gw.request("GET", "/allow-ten/1", &[], None);
    cases.refused(
        "ip_allow 10.0.0.0/8 from loopback, no token",
        &resp,
        403,
        "ip_denied",
        &w.verify,
    );
    let resp = w.gw.request_with_token(
        "GET",
        "/allow-ten/1",
        &token,
        &[("X-Forwarded-For", "10.1.2.3")],
        None,
    );
    cases.refused(
        "ip_allow with a forged X-Forwarded-For",
        &resp,
        403,
        "ip_denied",
        &w.verify,
    );
    let resp =
        w.gw.request_with_token("GET", "/deny-loopback/1", &token, &[], None);
    cases.refused("ip_deny 127.0.0.0/8", &resp, 403, "ip_denied", &w.verify);
    let resp = w.gw.request("GET", "/allow-loopback/1", &[], None);
    if resp.status != 200 || w.verify.count() != 1 {
        cases.fail(
            "ip_allow 127.0.0.1",
            format!("status {}, upstream saw {}", resp.status, w.verify.count()),
        );
    }
    cases.finish();
}

#[test]
fn auth_none_routes_forward_without_a_token() {
    let w = World::start();
    let resp = w.gw.request(
        "GET",
        "/.well-known/openid-configuration",
        &[("X-Portcullis-Client-Id", "forged-client")],
        None,
    );
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert!(resp.header("x-request-id").is_some());
    let got = w.verify.last();
    assert_eq!(got.target_str(), "/.well-known/openid-configuration");
    assert!(
        !got.header_all("X-Portcullis-Client-Id")
            .contains(&"forged-client"),
        "a forged identity header reached the upstream of a public route: {:?}",
        got.headers
    );
}

#[test]
fn refusals_carry_the_documented_json_body() {
    let w = World::start();
    let resp = w.gw.request(
        "GET",
        "/v1.0/apiclients",
        &[("X-Request-Id", "trace-me-42")],
        None,
    );
    assert_refused(&resp, 401, "missing_token", &w.verify);
    assert!(
        resp.header("content-type")
            .unwrap_or_default()
            .starts_with("application/json"),
        "Content-Type {:?}",
        resp.header("content-type")
    );
    let body = resp.json();
    assert!(body["message"].is_string(), "no message: {body}");
    assert_eq!(body["request_id"], "trace-me-42", "{body}");
    assert_eq!(resp.header("x-request-id"), Some("trace-me-42"));
}
