//! Self-tests of the harness in `common/` (no gateway involved): the mocks
//! record what they receive, the raw client reads what it is sent, and the
//! minted tokens verify with the published JWKs.

mod common;

use std::time::Duration;

use common::*;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

#[test]
fn mock_upstream_records_raw_target_headers_and_bodies() {
    let up = MockUpstream::start();
    let r = request(
        up.addr(),
        "PUT",
        "/a/../b%2F?x=%20",
        &[
            ("X-Dup", "1"),
            ("x-dup", "2"),
            ("Content-Type", "application/json"),
        ],
        Some(b"{\"k\":1}"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"upstream": "ok"}));
    let got = up.last();
    assert_eq!(got.method, "PUT");
    assert_eq!(got.target, b"/a/../b%2F?x=%20");
    assert_eq!(got.header_all("X-DUP"), vec!["1", "2"]);
    assert_eq!(got.headers[1].0, "X-Dup");
    assert_eq!(got.headers[2].0, "x-dup");
    assert_eq!(got.body, b"{\"k\":1}");

    // Chunked body and keep-alive: two requests on one connection.
    let two = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nTrailer: t\r\n\r\nGET /d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let ex = send_raw_collect(up.addr(), two, Duration::from_secs(3));
    assert_eq!(ex.responses.len(), 2, "{ex:?}");
    assert!(ex.closed);
    let reqs = up.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[1].body, b"abcde");
    assert_eq!(reqs[2].target_str(), "/d");

    up.clear();
    assert_eq!(up.count(), 0);
    up.set_response(418, b"{\"x\":1}");
    let r = request(up.addr(), "GET", "/", &[], None);
    assert_eq!(r.status, 418);
    assert_eq!(r.error_code(), None);
}

#[test]
fn mock_upstream_delay_is_applied() {
    let up = MockUpstream::start_slow(Duration::from_millis(300));
    let t = std::time::Instant::now();
    let r = request(up.addr(), "GET", "/", &[], None);
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[test]
fn mock_jwks_serves_counts_and_fails() {
    let jwks_doc = standard_jwks();
    let m = MockJwks::start(jwks_doc.clone());
    let addr: std::net::SocketAddr = m
        .url()
        .trim_start_matches("http://")
        .trim_end_matches("/jwks")
        .parse()
        .unwrap();
    let r = request(addr, "GET", "/jwks", &[], None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["keys"].as_array().unwrap().len(), 5);
    m.set_failing(true);
    assert_eq!(request(addr, "GET", "/jwks", &[], None).status, 500);
    m.set_failing(false);
    m.set_jwks(jwks(&[&TestKey::rsa_b()]));
    let r = request(addr, "GET", "/jwks", &[], None);
    assert_eq!(r.json()["keys"][0]["kid"], "rsa-b");
    assert_eq!(m.fetch_count(), 3);
}

fn verify_with_jwk(token: &str, key: &TestKey) -> Value {
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.jwk_json()).unwrap();
    let dk = DecodingKey::from_jwk(&jwk).unwrap();
    let mut v = Validation::new(key.alg);
    v.set_audience(&[DEFAULT_AUDIENCE]);
    v.set_issuer(&[DEFAULT_ISSUER]);
    jsonwebtoken::decode::<Value>(token, &dk, &v)
        .unwrap_or_else(|e| panic!("{} token does not verify: {e}", key.kid))
        .claims
}

#[test]
fn minted_tokens_verify_with_their_jwk() {
    for key in [
        TestKey::rsa(),
        TestKey::rsa_pss(),
        TestKey::rsa_b(),
        TestKey::ec256(),
        TestKey::ec384(),
        TestKey::ed25519(),
    ] {
        let token = TokenBuilder::new(&key).entitlements(&["a", "b"]).build();
        let claims = verify_with_jwk(&token, &key);
        assert_eq!(claims["entitlements"], json!(["a", "b"]));
        assert_eq!(claims["client_id"], DEFAULT_CLIENT_ID);
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(key.kid.as_str()));
        assert_eq!(header.alg, key.alg);
    }
    let hs = TestKey::hmac(b"0123456789abcdef0123456789abcdef");
    let token = TokenBuilder::new(&hs).no_kid().build();
    let mut v = Validation::new(Algorithm::HS256);
    v.set_audience(&[DEFAULT_AUDIENCE]);
    jsonwebtoken::decode::<Value>(
        &token,
        &DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        &v,
    )
    .unwrap();
}

#[test]
fn raw_tokens_keep_duplicate_members() {
    let key = TestKey::rsa();
    let token = raw_token(
        r#"{"alg":"RS256","alg":"RS256","kid":"rsa-1"}"#,
        &default_claims_json(),
        &key,
    );
    let header = token.split('.').next().unwrap();
    use base64::Engine as _;
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    assert_eq!(text, br#"{"alg":"RS256","alg":"RS256","kid":"rsa-1"}"#);
    assert!(unsigned_token(r#"{"alg":"none"}"#, "{}").ends_with('.'));
}

#[test]
fn config_builder_fills_ports_and_sections() {
    let c = ConfigBuilder::new()
        .server("max_body_bytes = 1024")
        .issuer(
            "main",
            DEFAULT_ISSUER,
            "http://127.0.0.1:1/jwks",
            "leeway_seconds = 5",
        )
        .upstream("app", "http://127.0.0.1:2", "")
        .raw("[[routes]]\nname = \"r\"\npath = \"/x\"\nupstream = \"app\"\n");
    let text = c.build();
    assert!(text.contains(&format!("listen = [\"127.0.0.1:{}\"]", c.proxy_port)));
    assert!(text.contains(&format!("listen = \"127.0.0.1:{}\"", c.admin_port)));
    let server_part = text.split("[admin]").next().unwrap();
    assert!(server_part.contains("max_body_bytes = 1024"));
    assert!(text.contains("leeway_seconds = 5"));
}

/// The ports `free_port` hands out stay out of the kernel's hands: no later
/// `bind(:0)` in this process lands on one (with a port that is bound and
/// dropped, about 1 bind in 140 did for a hundred ports), nobody can connect
/// before a listener binds it, and a listener with `SO_REUSEADDR` (pingora's
/// bind) can still take it. A gateway then owns its ports alone.
#[test]
fn free_ports_stay_reserved_for_the_process() {
    let ports: Vec<u16> = (0..100).map(|_| free_port()).collect();
    let distinct: std::collections::HashSet<u16> = ports.iter().copied().collect();
    assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
    let mut landed = Vec::new();
    for _ in 0..10_000 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind :0");
        let p = l.local_addr().expect("local_addr").port();
        if distinct.contains(&p) {
            landed.push(p);
        }
    }
    assert!(
        landed.is_empty(),
        "bind(:0) was given reserved ports {landed:?}"
    );

    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], ports[0]));
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "something accepted a connection on a reserved port"
    );
    // What pingora's listener does: SO_REUSEADDR, bind, listen.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(addr).expect("a listener binds a reserved port");
    let _listener = socket.listen(16).expect("and listens on it");
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok(),
        "the listener on the reserved port does not accept"
    );
}
