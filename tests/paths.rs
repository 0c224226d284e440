//! Step 1 (parse & normalise) and step 2 (route) through the socket: every
//! request that could be read two ways is refused with 400 (431 / 413 for
//! sizes) before anything reaches the upstream, and an accepted path goes
//! upstream byte for byte.

mod common;

use std::time::Duration;

use common::*;

const ROUTES: &str = r#"
[[routes]]
name = "apiclient"
methods = ["GET", "PUT", "DELETE"]
path = "/v1.0/apiclients/{id}"
upstream = "app"
auth = "none"

[[routes]]
name = "apiclients"
methods = ["GET", "POST"]
path = "/v1.0/apiclients"
upstream = "app"
auth = "none"

[[routes]]
name = "guarded"
methods = ["GET"]
path = "/guarded/{id}"
upstream = "app"
"#;

/// Upstream, JWKS and a gateway with `max_body_bytes = 1024` and the default
/// header limits (32 KiB, 100 headers).
fn setup() -> (MockUpstream, MockJwks, TestGateway) {
    let up = MockUpstream::start();
    let jwks = MockJwks::start(standard_jwks());
    let config = ConfigBuilder::new()
        .server("max_body_bytes = 1024")
        .issuer("main", DEFAULT_ISSUER, &jwks.url(), "")
        .upstream("app", &up.url(), "")
        .raw(ROUTES)
        .build();
    let gw = TestGateway::start(&config);
    (up, jwks, gw)
}

/// A labelled case: extra headers and one more value (body or error code).
type HeaderCase<'a, T> = (&'a str, Vec<(&'a str, &'a str)>, T);

/// A GET of `target` with `Host` and `Connection: close`.
fn get(target: &str) -> Vec<u8> {
    build_request("GET", target, &[], None)
}

#[test]
fn ambiguous_paths_are_refused_with_invalid_path() {
    let (up, _jwks, gw) = setup();
    let targets = [
        // dot segments, plain and percent-encoded in any case
        "/v1.0/apiclients/..",
        "/v1.0/apiclients/../apiclients/x",
        "/v1.0/apiclients/%2e%2e",
        "/v1.0/apiclients/%2E%2e/x",
        "/v1.0/apiclients/%2e%2E",
        "/v1.0/apiclients/.%2e",
        "/v1.0/apiclients/%2e.",
        "/v1.0/apiclients/.",
        "/v1.0/./apiclients/x",
        "/v1.0/apiclients/%2e",
        "/v1.0/apiclients/%2E",
        // encoded slashes and backslashes, raw backslash
        "/v1.0/apiclients/a%2Fb",
        "/v1.0/apiclients/a%2fb",
        "/v1.0/apiclients/a%5Cb",
        "/v1.0/apiclients/a%5cb",
        "/v1.0/apiclients/a\\b",
        "/v1.0/apiclients\\x",
        // parameters, fragments
        "/v1.0/apiclients/a;b",
        "/v1.0/apiclients;x=1/a",
        "/v1.0/apiclients/a#b",
        // empty segments
        "/v1.0//apiclients/x",
        "//v1.0/apiclients/x",
        "/v1.0/apiclients//",
        // NUL, LF, CR
        "/v1.0/apiclients/a%00b",
        "/v1.0/apiclients/a%0ab",
        "/v1.0/apiclients/a%0Ab",
        "/v1.0/apiclients/a%0db",
        "/v1.0/apiclients/a%0Db",
        // double encoding
        "/v1.0/apiclients/%252e%252e",
        "/v1.0/apiclients/%252e",
        "/v1.0/apiclients/a%252Fb",
        // ... also with the hex digits after %25 encoded themselves
        // (found by tests/properties.rs): %2e%2e once decoded, .. twice
        "/v1.0/apiclients/%25%32%65%25%32%65",
        "/v1.0/apiclients/%25%32e%25%32E/x",
        "/v1.0/apiclients/a%25%32%46b",
        // invalid escapes
        "/v1.0/apiclients/a%zzb",
        "/v1.0/apiclients/a%2",
        "/v1.0/apiclients/a%",
        "/v1.0/apiclients/a%g1",
        "/v1.0/apiclients/a%%41",
        // overlong and invalid UTF-8
        "/v1.0/apiclients/%C0%AE",
        "/v1.0/apiclients/%C0%AE%C0%AE",
        "/v1.0/apiclients/%c0%ae%c0%ae/x",
        "/v1.0/apiclients/%C0%AF",
        "/v1.0/apiclients/%E0%80%AE",
        "/v1.0/apiclients/%FF",
        "/v1.0/apiclients/%C3",
        "/v1.0/apiclients/%ED%A0%80",
    ];
    let mut cases = Cases::new();
    for target in targets {
        let resp = gw.send_raw(&get(target));
        cases.refused(&format!("GET {target}"), &resp, 400, "invalid_path", &up);
    }
    cases.finish();
}

#[test]
fn non_origin_form_targets_are_refused() {
    let (up, _jwks, gw) = setup();
    let requests: [(&str, &[u8]); 5] = [
        ("absolute-form", b"GET http://other/x HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n"),
        (
            "absolute-form to a routed path",
            b"GET http://127.0.0.1/v1.0/apiclients/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        ),
        (
            "absolute-form https",
            b"GET https://other/v1.0/apiclients HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n",
        ),
        ("asterisk-form", b"OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
        ("relative path", b"GET v1.0/apiclients HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
    ];
    let mut cases = Cases::new();
    for (label, bytes) in requests {
        match try_send_raw(gw.addr(), bytes) {
            Ok(resp) => cases.refused(label, &resp, 400, "invalid_request_target", &up),
            Err(e) => cases.fail(label, format!("no response: {e}")),
        }
    }
    cases.finish();
}

#[test]
fn ambiguous_framing_is_refused() {
    let (up, _jwks, gw) = setup();
    let chunked_body: &[u8] = b"3\r\nabc\r\n0\r\n\r\n";
    let cases_table: Vec<HeaderCase<&[u8]>> = vec![
        (
            "Content-Length then Transfer-Encoding",
            vec![("Content-Length", "13"), ("Transfer-Encoding", "chunked")],
            chunked_body,
        ),
        (
            "Transfer-Encoding then Content-Length",
            vec![("Transfer-Encoding", "chunked"), ("Content-Length", "13")],
            chunked_body,
        ),
        (
            "lower-case names",
            vec![("content-length", "13"), ("transfer-encoding", "chunked")],
            chunked_body,
        ),
        (
            "upper-case names and value",
            vec![("TRANSFER-ENCODING", "Chunked"), ("CONTENT-LENGTH", "13")],
            chunked_body,
        ),
        (
            "duplicate Content-Length",
            vec![("Content-Length", "3"), ("Content-Length", "3")],
            b"abc",
        ),
        (
            "differing Content-Length",
            vec![("Content-Length", "3"), ("Content-Length", "4")],
            b"abcd",
        ),
        (
            "comma-listed Content-Length",
            vec![("Content-Length", "3, 3")],
            b"abc",
        ),
        (
            "Transfer-Encoding: gzip",
            vec![("Transfer-Encoding", "gzip")],
            b"abc",
        ),
        (
            "Transfer-Encoding: chunked, gzip",
            vec![("Transfer-Encoding", "chunked, gzip")],
            chunked_body,
        ),
        (
            "Transfer-Encoding: identity",
            vec![("Transfer-Encoding", "identity")],
            b"abc",
        ),
    ];
    // Some of these pingora's own parser would refuse with a bare 400; the
    // edge checks the head first, so every one gets the gateway's answer.
    let mut cases = Cases::new();
    for (label, headers, body) in cases_table {
        let bytes = build_request("POST", "/v1.0/apiclients", &headers, Some(body));
        match try_send_raw(gw.addr(), &bytes) {
            Ok(resp) => cases.refused(label, &resp, 400, "invalid_framing", &up),
            Err(e) => cases.fail(label, format!("no response: {e}")),
        }
    }
    cases.finish();
}

#[test]
fn framing_refusal_closes_the_connection_and_smuggles_nothing() {
    let (up, _jwks, gw) = setup();
    // A classic CL.TE smuggling attempt on a keep-alive connection: whichever
    // length a server believes, the second request must never run.
    let smuggled = b"0\r\n\r\nGET /v1.0/apiclients/smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let mut bytes = format!(
        "POST /v1.0/apiclients HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        smuggled.len()
    )
    .into_bytes();
    bytes.extend_from_slice(smuggled);
    let ex = send_raw_collect(gw.addr(), &bytes, Duration::from_secs(3));
    assert!(!ex.responses.is_empty(), "no response at all: {ex:?}");
    assert_refused(&ex.responses[0], 400, "invalid_framing", &up);
    assert_eq!(ex.responses.len(), 1, "more than one response: {ex:?}");
    assert!(ex.closed, "connection left open after a framing refusal");
}

#[test]
fn override_alias_and_duplicate_headers_are_refused() {
    let (up, _jwks, gw) = setup();
    let target = "/v1.0/apiclients/abc";
    let table: Vec<HeaderCase<&str>> = vec![
        (
            "Upgrade: websocket",
            vec![("Connection", "Upgrade"), ("Upgrade", "websocket")],
            "forbidden_header",
        ),
        (
            "Upgrade: h2c",
            vec![
                ("Connection", "Upgrade, HTTP2-Settings"),
                ("Upgrade", "h2c"),
                ("HTTP2-Settings", "AAMAAABkAAQAAP__"),
            ],
            "forbidden_header",
        ),
        (
            "Upgrade without Connection",
            vec![("Upgrade", "websocket")],
            "forbidden_header",
        ),
        (
            "two Host headers",
            vec![("Host", "127.0.0.1"), ("Host", "other.example")],
            "duplicate_header",
        ),
        (
            "x_forwarded_for",
            vec![("x_forwarded_for", "10.1.2.3")],
            "forbidden_header",
        ),
        (
            "X_Forwarded_For",
            vec![("X_Forwarded_For", "10.1.2.3")],
            "forbidden_header",
        ),
        (
            "X-Forwarded_For",
            vec![("X-Forwarded_For", "10.1.2.3")],
            "forbidden_header",
        ),
        (
            "X_Forwarded_Proto",
            vec![("X_Forwarded_Proto", "https")],
            "forbidden_header",
        ),
        (
            "X_Portcullis_Client_Id",
            vec![("X_Portcullis_Client_Id", "admin")],
            "forbidden_header",
        ),
        (
            "x-portcullis_subject",
            vec![("x-portcullis_subject", "root")],
            "forbidden_header",
        ),
        (
            "X-HTTP-Method-Override",
            vec![("X-HTTP-Method-Override", "DELETE")],
            "override_header",
        ),
        (
            "x-http-method-override",
            vec![("x-http-method-override", "PUT")],
            "override_header",
        ),
        (
            "X-HTTP-Method",
            vec![("X-HTTP-Method", "DELETE")],
            "override_header",
        ),
        (
            "X-Method-Override",
            vec![("X-Method-Override", "DELETE")],
            "override_header",
        ),
        (
            "X-Original-URL",
            vec![("X-Original-URL", "/v1.0/apiclients/other")],
            "override_header",
        ),
        (
            "X-Rewrite-URL",
            vec![("X-Rewrite-URL", "/v1.0/apiclients/other")],
            "override_header",
        ),
        (
            "x-original-url",
            vec![("x-original-url", "/admin")],
            "override_header",
        ),
        (
            "two Authorization headers",
            vec![
                ("Authorization", "Bearer a.b.c"),
                ("Authorization", "Bearer d.e.f"),
            ],
            "duplicate_header",
        ),
        (
            "two Authorization headers, differing case",
            vec![
                ("Authorization", "Bearer a.b.c"),
                ("authorization", "Bearer d.e.f"),
            ],
            "duplicate_header",
        ),
    ];
    let mut cases = Cases::new();
    for (label, headers, code) in table {
        let resp = gw.send_raw(&build_request("GET", target, &headers, None));
        cases.refused(label, &resp, 400, code, &up);
    }
    let queries = [
        ("?_method=DELETE", "override_header"),
        ("?x=1&_method=DELETE", "override_header"),
        ("?access_token=abc", "token_in_query"),
        (
            "?a=1&access_token=eyJhbGciOiJSUzI1NiJ9.e30.x",
            "token_in_query",
        ),
    ];
    for (query, code) in queries {
        let resp = gw.send_raw(&get(&format!("{target}{query}")));
        cases.refused(&format!("GET {target}{query}"), &resp, 400, code, &up);
    }
    cases.finish();
}

#[test]
fn oversized_headers_get_431() {
    let (up, _jwks, gw) = setup();
    let mut cases = Cases::new();

    let big = "a".repeat(40 * 1024);
    let resp = gw.send_raw(&build_request(
        "GET",
        "/v1.0/apiclients/abc",
        &[("X-Big", &big)],
        None,
    ));
    cases.refused("one 40 KiB header", &resp, 431, "headers_too_large", &up);

    let piece = "b".repeat(1024);
    let names: Vec<String> = (0..40).map(|i| format!("X-Piece-{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), piece.as_str())).collect();
    let resp = gw.send_raw(&build_request(
        "GET",
        "/v1.0/apiclients/abc",
        &headers,
        None,
    ));
    cases.refused("40 headers of 1 KiB", &resp, 431, "headers_too_large", &up);

    let names: Vec<String> = (0..120).map(|i| format!("X-H-{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let resp = gw.send_raw(&build_request(
        "GET",
        "/v1.0/apiclients/abc",
        &headers,
        None,
    ));
    cases.refused("120 small headers", &resp, 431, "headers_too_large", &up);
    cases.finish();
}

#[test]
fn headers_within_the_limits_are_forwarded() {
    let (up, _jwks, gw) = setup();
    let value = "c".repeat(200);
    let names: Vec<String> = (0..80).map(|i| format!("X-H-{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), value.as_str())).collect();
    let resp = gw.send_raw(&build_request(
        "GET",
        "/v1.0/apiclients/abc",
        &headers,
        None,
    ));
    assert_eq!(resp.status, 200, "{}", resp.describe());
    let got = up.last();
    assert_eq!(got.header("X-H-79"), Some(value.as_str()));
}

#[test]
fn declared_body_over_the_limit_gets_413_before_the_body_is_sent() {
    let (up, _jwks, gw) = setup();
    // Only the head is sent: the gateway must answer on the declared length.
    let head = b"POST /v1.0/apiclients HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 2048\r\n\r\n";
    let ex = send_raw_collect(gw.addr(), head, Duration::from_secs(3));
    assert!(
        !ex.responses.is_empty(),
        "no answer to an oversized declared body: {ex:?}"
    );
    assert_refused(&ex.responses[0], 413, "body_too_large", &up);
    assert!(ex.closed, "connection left open with the body unread");

    let body = vec![b'x'; 1024];
    let resp = gw.request("POST", "/v1.0/apiclients", &[], Some(&body));
    assert_eq!(
        resp.status,
        200,
        "a body of exactly max_body_bytes is allowed: {}",
        resp.describe()
    );
    assert_eq!(up.last().body, body);
}

#[test]
fn no_route_is_404_and_wrong_method_is_405_with_allow() {
    let (up, _jwks, gw) = setup();
    let mut cases = Cases::new();
    for target in [
        "/",
        "/v2/apiclients",
        "/v1.0/apiclients/a/b",
        "/v1.0/apiclientsx",
        "/V1.0/apiclients",
    ] {
        let resp = gw.send_raw(&get(target));
        cases.refused(&format!("GET {target}"), &resp, 404, "no_route", &up);
    }

    let resp = gw.request("PATCH", "/v1.0/apiclients/abc", &[], Some(b"{}"));
    cases.refused(
        "PATCH /v1.0/apiclients/abc",
        &resp,
        405,
        "method_not_allowed",
        &up,
    );
    let allow: Vec<String> = resp
        .header("allow")
        .unwrap_or_default()
        .split(',')
        .map(|m| m.trim().to_ascii_uppercase())
        .collect();
    for m in ["GET", "PUT", "DELETE"] {
        if !allow.iter().any(|a| a == m) {
            cases.fail(
                "PATCH /v1.0/apiclients/abc",
                format!("Allow {allow:?} lacks {m}"),
            );
        }
    }
    if allow.iter().any(|a| a == "PATCH" || a == "POST") {
        cases.fail(
            "PATCH /v1.0/apiclients/abc",
            format!("Allow {allow:?} lists a method the route refuses"),
        );
    }

    let resp = gw.request("DELETE", "/v1.0/apiclients", &[], None);
    cases.refused(
        "DELETE /v1.0/apiclients",
        &resp,
        405,
        "method_not_allowed",
        &up,
    );
    let allow = resp
        .header("allow")
        .unwrap_or_default()
        .to_ascii_uppercase();
    if !(allow.contains("GET") && allow.contains("POST")) {
        cases.fail(
            "DELETE /v1.0/apiclients",
            format!("Allow {allow:?} should list GET and POST"),
        );
    }
    cases.finish();
}

#[test]
fn path_checks_run_before_authentication() {
    let (up, _jwks, gw) = setup();
    let mut cases = Cases::new();
    // The "guarded" route needs a token; none is sent. Step 1 must answer first.
    let resp = gw.send_raw(&get("/guarded/a%2Fb"));
    cases.refused(
        "GET /guarded/a%2Fb without a token",
        &resp,
        400,
        "invalid_path",
        &up,
    );
    let resp = gw.send_raw(&get("/guarded/%2e%2e"));
    cases.refused(
        "GET /guarded/%2e%2e without a token",
        &resp,
        400,
        "invalid_path",
        &up,
    );
    let resp = gw.send_raw(&get("/guarded/x?access_token=abc"));
    cases.refused(
        "GET /guarded/x?access_token=abc",
        &resp,
        400,
        "token_in_query",
        &up,
    );
    let resp = gw.send_raw(&get("/guarded/x"));
    cases.refused(
        "GET /guarded/x without a token",
        &resp,
        401,
        "missing_token",
        &up,
    );
    cases.finish();
}

#[test]
fn allowed_paths_are_forwarded_byte_identical() {
    let (up, _jwks, gw) = setup();
    let targets = [
        "/v1.0/apiclients/a%20b?x=1&y=%2F",
        "/v1.0/apiclients/caf%c3%a9",
        "/v1.0/apiclients/caf%C3%A9",
        "/v1.0/apiclients/%41bc",
        "/v1.0/apiclients/A-z_0.9~x",
        "/v1.0/apiclients/...",
        "/v1.0/apiclients/a.b",
        "/v1.0/apiclients?filter=name%20eq%20%22x%22&count=10",
        "/v1.0/apiclients?q=a/b&r=%252e",
        "/v1.0/apiclients/abc?",
    ];
    let mut cases = Cases::new();
    for target in targets {
        up.clear();
        let resp = gw.send_raw(&get(target));
        if resp.status != 200 {
            cases.fail(
                target,
                format!("status {} ({})", resp.status, resp.describe()),
            );
            continue;
        }
        match up.requests().as_slice() {
            [one] if one.target == target.as_bytes() && one.method == "GET" => {}
            [one] => cases.fail(
                target,
                format!("upstream got {} {:?}", one.method, one.target_str()),
            ),
            many => cases.fail(target, format!("upstream got {} requests", many.len())),
        }
    }

    // Bodies: Content-Length and chunked arrive unchanged.
    up.clear();
    let body = br#"{"clientName":"x","entitlements":["readAPIClients"]}"#;
    let resp = gw.request(
        "PUT",
        "/v1.0/apiclients/abc",
        &[("Content-Type", "application/json")],
        Some(body),
    );
    if resp.status != 200 {
        cases.fail("PUT with body", resp.describe());
    } else {
        let got = up.last();
        if got.method != "PUT" || got.target != b"/v1.0/apiclients/abc" || got.body != body {
            cases.fail(
                "PUT with body",
                format!(
                    "upstream got {} {} {:?}",
                    got.method,
                    got.target_str(),
                    got.body
                ),
            );
        }
    }
    up.clear();
    let resp = gw.request(
        "POST",
        "/v1.0/apiclients",
        &[
            ("Transfer-Encoding", "chunked"),
            ("Content-Type", "application/json"),
        ],
        Some(b"5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n"),
    );
    if resp.status != 200 {
        cases.fail("chunked POST", resp.describe());
    } else if up.last().body != b"{\"a\":1}" {
        cases.fail(
            "chunked POST",
            format!(
                "upstream body {:?}",
                String::from_utf8_lossy(&up.last().body)
            ),
        );
    }
    cases.finish();
}

#[test]
fn raw_control_and_invalid_utf8_bytes_in_the_target_are_refused() {
    let (up, _jwks, gw) = setup();
    let targets: [(&str, &[u8]); 4] = [
        ("raw overlong UTF-8 C0 AE", b"/v1.0/apiclients/\xC0\xAE"),
        ("raw invalid byte FF", b"/v1.0/apiclients/a\xFFb"),
        ("raw DEL", b"/v1.0/apiclients/a\x7Fb"),
        ("raw TAB", b"/v1.0/apiclients/a\tb"),
    ];
    let mut cases = Cases::new();
    for (label, target) in targets {
        let mut bytes = b"GET ".to_vec();
        bytes.extend_from_slice(target);
        bytes.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        match try_send_raw(gw.addr(), &bytes) {
            Ok(resp) => cases.refused(label, &resp, 400, "invalid_path", &up),
            Err(e) => cases.fail(label, format!("no response: {e}")),
        }
    }
    // Pingora would answer CONNECT with a bare 405; the edge refuses it as
    // the non-origin-form target it is.
    let resp =
        gw.send_raw(b"CONNECT other.example:443 HTTP/1.1\r\nHost: other.example:443\r\n\r\n");
    cases.refused(
        "authority-form CONNECT",
        &resp,
        400,
        "invalid_request_target",
        &up,
    );
    cases.finish();
}
