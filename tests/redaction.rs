//! `[routes.response] redact` through the socket: IBM Verify API-client
//! answers (a single client with `clientSecret`, a list `{"apiClients":[...]}`)
//! read by a caller holding `readAPIClients` only (the secret is removed)
//! and by one holding `readAPIClientsAndClientSecret` (it is kept).
//!
//! Every rewritten answer is checked byte for byte (member order, number
//! text) with its exact `Content-Length`; every refusal asserts the status,
//! the JSON `error` code, and that the secret's value is nowhere in what
//! the caller got. The upstream is a scripted raw socket, so it can answer
//! chunked, gzip-encoded, oversized or invalid JSON exactly as a real one
//! might.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const SECRET: &str = "S3cr3t-Value-0f-The-Client";
const SECRET_B: &str = "An0ther-S3cret-Value";
const READER: &str = "readAPIClients";
const SECRET_READER: &str = "readAPIClientsAndClientSecret";

/// The single-client answer: the secret in the middle, numbers whose text
/// must survive (`1.0`, `1e2`, an integer beyond 64 bits).
fn single_client() -> String {
    format!(
        r#"{{"id":"6f1a0c2e","clientId":"cid-1","clientName":"batch","clientSecret":"{SECRET}","enabled":true,"ratio":1.0,"limit":1e2,"serial":123456789012345678901234567890,"entitlements":["readAPIClients"]}}"#
    )
}

fn single_client_redacted() -> String {
    r#"{"id":"6f1a0c2e","clientId":"cid-1","clientName":"batch","enabled":true,"ratio":1.0,"limit":1e2,"serial":123456789012345678901234567890,"entitlements":["readAPIClients"]}"#.to_string()
}

fn client_list() -> String {
    format!(
        "{{\n  \"apiClients\": [\n    {{\"id\": \"a\", \"clientSecret\": \"{SECRET}\", \"n\": 1.50}},\n    {{\"id\": \"b\"}},\n    {{\"clientSecret\": \"{SECRET_B}\", \"id\": \"c\"}}\n  ],\n  \"total\": 3\n}}"
    )
}

fn client_list_redacted() -> String {
    "{\n  \"apiClients\": [\n    {\"id\": \"a\", \"n\": 1.50},\n    {\"id\": \"b\"},\n    {\"id\": \"c\"}\n  ],\n  \"total\": 3\n}".to_string()
}

// === a scripted upstream ===

/// One request as the scripted upstream read it.
#[derive(Debug, Clone)]
struct Seen {
    head: String,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }
}

type Script = dyn Fn(&Seen, &mut TcpStream) + Send + Sync;

/// A raw HTTP/1.1 upstream on 127.0.0.1: reads one request per connection,
/// records it, and lets `script` write any bytes it likes as the answer
/// (then closes). Stopped on drop; every wait is bounded.
struct ScriptedUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ScriptedUpstream {
    fn start(script: impl Fn(&Seen, &mut TcpStream) + Send + Sync + 'static) -> ScriptedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let script: Arc<Script> = Arc::new(script);
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let (seen, script) = (seen2.clone(), script.clone());
                        std::thread::spawn(move || {
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                            let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
                            if let Some(req) = read_request(&mut stream) {
                                seen.lock().unwrap().push(req.clone());
                                script(&req, &mut stream);
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        ScriptedUpstream {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream saw no request")
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_request(stream: &mut TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut body = buf[end + 4..].to_vec();
    let seen = Seen {
        head,
        body: Vec::new(),
    };
    let len: usize = seen
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while body.len() < len {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Seen { body, ..seen })
}

/// A complete answer with `Content-Length`.
fn answer(stream: &mut TcpStream, status: &str, headers: &[(&str, &str)], body: &[u8]) {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let _ = stream.write_all(out.as_bytes());
    let _ = stream.write_all(body);
}

/// A chunked answer, `parts` as separate chunks (flushed one by one).
fn answer_chunked(stream: &mut TcpStream, headers: &[(&str, &str)], parts: &[&[u8]]) {
    let mut out = "HTTP/1.1 200 OK\r\n".to_string();
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(out.as_bytes());
    for p in parts {
        let _ = stream.write_all(format!("{:x}\r\n", p.len()).as_bytes());
        let _ = stream.write_all(p);
        let _ = stream.write_all(b"\r\n");
        let _ = stream.flush();
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = stream.write_all(b"0\r\n\r\n");
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

// === the gateway ===

fn catalog_file() -> String {
    format!(
        "{}/config/catalogs/verify-entitlements.tsv",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn routes() -> String {
    format!(
        r#"
[catalogs.verify]
file = {catalog}
offerings = ["CIC"]

[[routes]]
name = "verify-apiclient-get"
methods = ["GET", "HEAD"]
path = "/v1.0/apiclients/{{id}}"
upstream = "verify"
require_any = ["readAPIClients", "readAPIClientsAndClientSecret"]

[routes.response]
redact = {{ "/clientSecret" = ["readAPIClientsAndClientSecret"] }}

[[routes]]
name = "verify-apiclient-list"
methods = ["GET", "POST"]
path = "/v1.0/apiclients"
upstream = "verify"
require_any = ["readAPIClients", "readAPIClientsAndClientSecret"]

[routes.response]
redact = {{ "/apiClients/*/clientSecret" = ["readAPIClientsAndClientSecret"] }}
max_bytes = 4096

[[routes]]
name = "idps"
methods = ["GET"]
path = "/idps"
upstream = "verify"

[routes.response]
redact = {{ "/*/client_secret" = [], "/data/*/credentials/*/secret" = [] }}

[[routes]]
name = "files"
methods = ["GET"]
path = "/files/{{*rest}}"
upstream = "verify"
"#,
        catalog = toml_str(&catalog_file())
    )
}

struct Env {
    up: ScriptedUpstream,
    _jwks: MockJwks,
    gw: TestGateway,
    reader: String,
    secret_reader: String,
}

fn env_with(script: impl Fn(&Seen, &mut TcpStream) + Send + Sync + 'static, extra: &str) -> Env {
    let up = ScriptedUpstream::start(script);
    let jwks = MockJwks::start(standard_jwks());
    let config = ConfigBuilder::new()
        .issuer("main", DEFAULT_ISSUER, &jwks.url(), "")
        .upstream("verify", &up.url(), "catalog = \"verify\"")
        .raw(extra)
        .raw(&routes())
        .build();
    let gw = TestGateway::start(&config);
    let token = |e: &[&str]| {
        TokenBuilder::new(&TestKey::rsa())
            .client_id("reader-client")
            .entitlements(e)
            .build()
    };
    Env {
        up,
        _jwks: jwks,
        gw,
        reader: token(&[READER]),
        secret_reader: token(&[SECRET_READER]),
    }
}

fn env(script: impl Fn(&Seen, &mut TcpStream) + Send + Sync + 'static) -> Env {
    env_with(script, "")
}

/// The answer on the one path every test uses, retried while the key set
/// loads (the first requests may find no keys yet).
fn get(env: &Env, method: &str, target: &str, token: &str) -> RawResponse {
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let r = env.gw.request_with_token(method, target, token, &[], None);
        if r.status != 503 && r.status != 401 {
            return r;
        }
        last = Some(r);
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("no usable answer: {:?}", last.map(|r| r.describe()));
}

fn assert_no_secret(resp: &RawResponse) {
    let text = resp.body_str();
    let head = format!("{:?}", resp.headers);
    for s in [SECRET, SECRET_B] {
        assert!(!text.contains(s), "the secret leaked: {}", resp.describe());
        assert!(!head.contains(s), "the secret leaked: {}", resp.describe());
    }
}

fn assert_exact_length(resp: &RawResponse) {
    assert_eq!(
        resp.header("content-length"),
        Some(resp.body.len().to_string().as_str()),
        "{}",
        resp.describe()
    );
    assert!(
        resp.header("transfer-encoding").is_none(),
        "a rewritten answer is never chunked: {}",
        resp.describe()
    );
}

fn assert_refused_not_redactable(resp: &RawResponse) {
    assert_eq!(resp.status, 502, "{}", resp.describe());
    assert_eq!(
        resp.error_code().as_deref(),
        Some("response_not_redactable"),
        "{}",
        resp.describe()
    );
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert!(resp.header("x-request-id").is_some());
    assert_no_secret(resp);
}

fn single_client_script(seen: &Seen, s: &mut TcpStream) {
    let _ = seen;
    answer(
        s,
        "200 OK",
        &[
            JSON,
            ("ETag", "\"v1-abc\""),
            ("Content-MD5", "Q2hlY2sgSW50ZWdyaXR5IQ=="),
            (
                "Digest",
                "sha-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=",
            ),
            ("Cache-Control", "no-store"),
        ],
        single_client().as_bytes(),
    );
}

// === the allowed paths ===

#[test]
fn reader_loses_the_secret_of_a_single_client_and_nothing_else() {
    let env = env(single_client_script);
    let resp = get(&env, "GET", "/v1.0/apiclients/6f1a0c2e", &env.reader);
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert_eq!(resp.body_str(), single_client_redacted());
    assert_exact_length(&resp);
    assert_no_secret(&resp);
    for gone in ["etag", "content-md5", "digest"] {
        assert!(
            resp.header(gone).is_none(),
            "{gone} kept: {}",
            resp.describe()
        );
    }
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert!(resp.header("x-request-id").is_some());
    // The upstream was asked for an identity-encoded answer.
    let seen = env.up.last();
    assert_eq!(seen.header("accept-encoding").as_deref(), Some("identity"));
    assert!(seen
        .request_line()
        .starts_with("GET /v1.0/apiclients/6f1a0c2e "));
}

#[test]
fn secret_reader_keeps_the_secret_byte_for_byte() {
    let env = env(single_client_script);
    let resp = get(&env, "GET", "/v1.0/apiclients/6f1a0c2e", &env.secret_reader);
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert_eq!(resp.body_str(), single_client());
    assert_exact_length(&resp);
    // The answer went through the redactor (nothing removed): validators
    // of the upstream's bytes are still dropped, as on every rewritten answer.
    assert!(resp.header("etag").is_none(), "{}", resp.describe());
}

#[test]
fn every_secret_of_a_chunked_list_goes_and_the_rest_keeps_its_bytes() {
    let env = env(|_, s| {
        let body = client_list();
        // Split inside the first secret and inside a member name.
        let b = body.as_bytes();
        let cut1 = body.find("Value-0f").unwrap();
        let cut2 = body.find("Secret\": \"An0").unwrap();
        answer_chunked(
            s,
            &[
                ("Content-Type", "application/json; charset=utf-8"),
                ("ETag", "W/\"x\""),
            ],
            &[&b[..cut1], &b[cut1..cut2], &b[cut2..]],
        );
    });
    let resp = get(&env, "GET", "/v1.0/apiclients", &env.reader);
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert_eq!(resp.body_str(), client_list_redacted());
    assert_exact_length(&resp);
    assert_no_secret(&resp);
    assert!(resp.header("etag").is_none());
    assert_eq!(
        resp.header("content-type"),
        Some("application/json; charset=utf-8")
    );

    let resp = get(&env, "GET", "/v1.0/apiclients", &env.secret_reader);
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert_eq!(resp.body_str(), client_list());
    assert_exact_length(&resp);
}

#[test]
fn an_empty_list_always_removes_and_wildcards_nest() {
    let body = r#"{"okta":{"client_id":"x","client_secret":"S3cr3t-Value-0f-The-Client"},"entra":{"client_id":"y"},"data":[{"credentials":[{"secret":"An0ther-S3cret-Value","kid":"k1"},{"kid":"k2"}]}]}"#;
    let env = env(move |_, s| answer(s, "200 OK", &[JSON], body.as_bytes()));
    // No entitlement lets a caller keep these, not even the secret reader.
    for token in [&env.reader, &env.secret_reader] {
        let resp = get(&env, "GET", "/idps", token);
        assert_eq!(resp.status, 200, "{}", resp.describe());
        assert_eq!(
            resp.body_str(),
            r#"{"okta":{"client_id":"x"},"entra":{"client_id":"y"},"data":[{"credentials":[{"kid":"k1"},{"kid":"k2"}]}]}"#
        );
        assert_exact_length(&resp);
        assert_no_secret(&resp);
    }
}

#[test]
fn head_answers_with_the_redacted_length_and_no_body() {
    let env = env(single_client_script);
    let get_resp = get(&env, "GET", "/v1.0/apiclients/6f1a0c2e", &env.reader);
    let resp = get(&env, "HEAD", "/v1.0/apiclients/6f1a0c2e", &env.reader);
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert!(resp.body.is_empty());
    assert_eq!(
        resp.header("content-length"),
        get_resp.header("content-length"),
        "HEAD and GET disagree"
    );
    assert!(resp.header("etag").is_none());
    // A HEAD is asked as GET upstream: the length is that of the redacted body.
    assert!(env.up.last().request_line().starts_with("GET "));
    // Nothing else followed on the connection (HEAD has no body).
    let raw = send_raw_collect(
        env.gw.addr(),
        &build_request(
            "HEAD",
            "/v1.0/apiclients/6f1a0c2e",
            &[("Authorization", &bearer(&env.reader))],
            None,
        ),
        Duration::from_secs(2),
    );
    // (The collector cannot know the request was HEAD, so it sees an
    // unfinished body: what matters is that only the head came.)
    let text = String::from_utf8_lossy(&raw.leftover).into_owned();
    assert!(raw.closed, "{text}");
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(
        text.ends_with("\r\n\r\n"),
        "a body followed the head: {text:?}"
    );
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text}");
}

#[test]
fn non_2xx_and_non_json_answers_pass_through_unchanged() {
    let error_body = format!(r#"{{"messageId":"CSIAK2004E","clientSecret":"{SECRET}"}}"#);
    let text_body = format!("clientSecret={SECRET}\n");
    let (eb, tb) = (error_body.clone(), text_body.clone());
    let env = env(move |seen, s| {
        if seen.request_line().contains("/missing") {
            answer(
                s,
                "404 Not Found",
                &[JSON, ("ETag", "\"e\"")],
                eb.as_bytes(),
            );
        } else {
            answer(
                s,
                "200 OK",
                &[("Content-Type", "text/plain"), ("ETag", "\"t\"")],
                tb.as_bytes(),
            );
        }
    });
    let resp = get(&env, "GET", "/v1.0/apiclients/missing", &env.reader);
    assert_eq!(resp.status, 404, "{}", resp.describe());
    assert_eq!(resp.body_str(), error_body);
    assert_eq!(resp.header("etag"), Some("\"e\""));
    let resp = get(&env, "GET", "/v1.0/apiclients/text", &env.reader);
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert_eq!(resp.body_str(), text_body);
    assert_eq!(resp.header("etag"), Some("\"t\""));
}

#[test]
fn a_request_body_on_a_redacting_route_reaches_the_upstream() {
    let env = env(|seen, s| {
        let _ = seen;
        answer(s, "200 OK", &[JSON], client_list().as_bytes())
    });
    let query = br#"{"filter":"clientName eq \"batch\""}"#;
    // Chunked from the caller: forwarded with its exact length.
    let mut chunked = format!("{:x}\r\n", query.len()).into_bytes();
    chunked.extend_from_slice(query);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let auth = bearer(&env.reader);
    get(&env, "GET", "/v1.0/apiclients", &env.reader); // keys loaded
    let resp = env.gw.request(
        "POST",
        "/v1.0/apiclients",
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
        ],
        Some(&chunked),
    );
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert_eq!(resp.body_str(), client_list_redacted());
    let seen = env.up.last();
    assert!(seen.request_line().starts_with("POST "));
    assert_eq!(seen.body, query);
    assert_eq!(
        seen.header("content-length").as_deref(),
        Some(query.len().to_string().as_str())
    );
    assert!(seen.header("transfer-encoding").is_none());
}

#[test]
fn range_requests_are_not_forwarded_on_redacting_routes() {
    let env = env(single_client_script);
    get(&env, "GET", "/v1.0/apiclients/x", &env.reader);
    let auth = bearer(&env.reader);
    let resp = env.gw.request(
        "GET",
        "/v1.0/apiclients/x",
        &[
            ("Authorization", auth.as_str()),
            ("Range", "bytes=60-90"),
            ("Accept-Encoding", "gzip, br"),
        ],
        None,
    );
    assert_eq!(resp.status, 200, "{}", resp.describe());
    assert_eq!(resp.body_str(), single_client_redacted());
    let seen = env.up.last();
    assert!(seen.header("range").is_none(), "{}", seen.head);
    assert_eq!(seen.header("accept-encoding").as_deref(), Some("identity"));
}

// === fail closed ===

#[test]
fn invalid_json_is_502_and_never_the_secret() {
    let bodies: Vec<String> = vec![
        format!(r#"{{"clientSecret":"{SECRET}","#),
        format!(r#"{{"clientSecret":"{SECRET}"}} trailing"#),
        format!(r#"{{'clientSecret':'{SECRET}'}}"#),
        format!("{{\"clientSecret\":\"{SECRET}\u{1}\"}}"),
    ];
    let shared = Arc::new(bodies.clone());
    let env = env(move |seen, s| {
        let i: usize = seen
            .request_line()
            .split('/')
            .nth(3)
            .and_then(|p| p.split(' ').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        answer(s, "200 OK", &[JSON], shared[i].as_bytes());
    });
    for i in 0..bodies.len() {
        let resp = get(&env, "GET", &format!("/v1.0/apiclients/{i}"), &env.reader);
        assert_refused_not_redactable(&resp);
        // Even the caller entitled to the secret: a document the gateway
        // cannot read is not passed on.
        let resp = get(
            &env,
            "GET",
            &format!("/v1.0/apiclients/{i}"),
            &env.secret_reader,
        );
        assert_refused_not_redactable(&resp);
    }
}

#[test]
fn oversized_answers_are_502_declared_or_chunked() {
    // The list route's max_bytes is 4096.
    let big = format!(
        r#"{{"apiClients":[{{"clientSecret":"{SECRET}","pad":"{}"}}]}}"#,
        "x".repeat(5000)
    );
    let b2 = big.clone();
    let env = env(move |seen, s| {
        if seen.request_line().contains("chunked") {
            let b = b2.as_bytes();
            answer_chunked(s, &[JSON], &[&b[..2000], &b[2000..4000], &b[4000..]]);
        } else {
            answer(s, "200 OK", &[JSON], b2.as_bytes());
        }
    });
    let resp = get(&env, "GET", "/v1.0/apiclients", &env.reader);
    assert_refused_not_redactable(&resp);
    let resp = get(&env, "GET", "/v1.0/apiclients?chunked=1", &env.reader);
    assert_refused_not_redactable(&resp);
    // Just under the limit is fine.
    assert!(big.len() > 4096);
}

#[test]
fn a_compressed_answer_is_refused_and_identity_is_asked_for() {
    use flate2::write::GzEncoder;
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(single_client().as_bytes()).unwrap();
    let compressed = gz.finish().unwrap();
    let env = env(move |_, s| {
        answer(
            s,
            "200 OK",
            &[JSON, ("Content-Encoding", "gzip")],
            &compressed,
        )
    });
    let auth = bearer(&env.reader);
    get(&env, "GET", "/v1.0/apiclients/x", &env.reader);
    let resp = env.gw.request(
        "GET",
        "/v1.0/apiclients/x",
        &[
            ("Authorization", auth.as_str()),
            ("Accept-Encoding", "gzip"),
        ],
        None,
    );
    assert_refused_not_redactable(&resp);
    // Decompressed, the body would not carry the secret either.
    let mut plain = Vec::new();
    let _ = flate2::read::GzDecoder::new(&resp.body[..]).read_to_end(&mut plain);
    assert!(!String::from_utf8_lossy(&plain).contains(SECRET));
    assert_eq!(
        env.up.last().header("accept-encoding").as_deref(),
        Some("identity")
    );
}

#[test]
fn an_unreachable_upstream_is_502_upstream_unreachable() {
    // A port that was free a moment ago: nothing listens there.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let jwks = MockJwks::start(standard_jwks());
    let config = ConfigBuilder::new()
        .issuer("main", DEFAULT_ISSUER, &jwks.url(), "")
        .upstream(
            "verify",
            &dead,
            "catalog = \"verify\"\nconnect_timeout_ms = 500",
        )
        .raw(&routes())
        .build();
    let gw = TestGateway::start(&config);
    let token = TokenBuilder::new(&TestKey::rsa())
        .entitlements(&[READER])
        .build();
    let mut resp = None;
    wait_until(Duration::from_secs(5), || {
        let r = gw.request_with_token("GET", "/v1.0/apiclients/x", &token, &[], None);
        let done = r.status == 502;
        resp = Some(r);
        done
    });
    let resp = resp.unwrap();
    assert_eq!(resp.status, 502, "{}", resp.describe());
    assert_eq!(resp.error_code().as_deref(), Some("upstream_unreachable"));
}

// === routes without redact stream ===

#[test]
fn a_route_without_redact_streams_a_large_chunked_answer() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 64; // 4 MiB: far past any redaction buffer
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    // Set when the caller's signal (not the 5 s timeout) released the rest.
    let released_by_caller = Arc::new(AtomicBool::new(false));
    let flag = released_by_caller.clone();
    let env = env(move |seen, s| {
        if !seen.request_line().contains("/files/") {
            return answer(s, "200 OK", &[JSON], b"{}");
        }
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        let _ = s.write_all(head.as_bytes());
        let chunk = vec![b'a'; CHUNK];
        let write_chunk = |s: &mut TcpStream| {
            let _ = s.write_all(format!("{CHUNK:x}\r\n").as_bytes());
            let _ = s.write_all(&chunk);
            let _ = s.write_all(b"\r\n");
            let _ = s.flush();
        };
        write_chunk(s);
        // Hold the rest back until the caller has seen the first chunk.
        let signalled = release_rx
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(5))
            .is_ok();
        flag.store(signalled, Ordering::SeqCst);
        for _ in 1..CHUNKS {
            write_chunk(s);
        }
        let _ = s.write_all(b"0\r\n\r\n");
    });
    // Keys loaded.
    get(&env, "GET", "/v1.0/apiclients/warm", &env.reader);

    let mut stream = TcpStream::connect(env.gw.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    stream
        .write_all(&build_request(
            "GET",
            "/files/big.json",
            &[("Authorization", &bearer(&env.reader))],
            None,
        ))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let mut released = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut complete = false;
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if !released && got.windows(CHUNK / 2).any(|w| w.iter().all(|b| *b == b'a')) {
            // Half of the first chunk arrived while the upstream still holds
            // the rest: the gateway is not buffering this answer.
            released = true;
            release_tx.send(()).unwrap();
        }
        if got.ends_with(b"0\r\n\r\n") {
            complete = true;
            break;
        }
    }
    assert!(released, "the first chunk never arrived");
    assert!(
        released_by_caller.load(Ordering::SeqCst),
        "the first chunk reached the caller only after the upstream gave up waiting: buffered"
    );
    assert!(complete, "the answer did not complete");
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let body_bytes = got[head_end..].iter().filter(|b| **b == b'a').count();
    assert_eq!(body_bytes, CHUNK * CHUNKS);
}

// === audit and metrics ===

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "portcullis-redaction-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn metric(admin: SocketAddr, line_start: &str) -> f64 {
    let resp = request(admin, "GET", "/metrics", &[], None);
    resp.body_str()
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn audit_and_metrics_count_the_redacted_members() {
    let dir = TempDir::new("audit");
    let log = dir.0.join("audit.log");
    let list = client_list();
    let env = env_with(
        move |seen, s| {
            if seen.request_line().contains("/bad") {
                answer(
                    s,
                    "200 OK",
                    &[JSON],
                    format!("{{\"clientSecret\":\"{SECRET}\"").as_bytes(),
                );
            } else {
                answer(s, "200 OK", &[JSON], list.as_bytes());
            }
        },
        &format!(
            "[log]\nformat = \"json\"\naudit = {}\n",
            toml_str(&log.to_string_lossy())
        ),
    );
    let admin = env.gw.admin_addr().unwrap();
    let series = "portcullis_response_redactions_total{route=\"verify-apiclient-list\"}";
    let before = metric(admin, series);
    let resp = get(&env, "GET", "/v1.0/apiclients", &env.reader);
    assert_eq!(resp.status, 200);
    let resp = get(&env, "GET", "/v1.0/apiclients", &env.secret_reader);
    assert_eq!(resp.status, 200);
    let resp = get(&env, "GET", "/v1.0/apiclients/bad", &env.reader);
    assert_refused_not_redactable(&resp);

    let mut lines = Vec::new();
    wait_until(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        lines = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .collect();
        lines.len() >= 3
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains(SECRET) && !text.contains(SECRET_B), "{text}");
    let list_lines: Vec<_> = lines
        .iter()
        .filter(|l| l["route"] == "verify-apiclient-list")
        .collect();
    assert_eq!(list_lines.len(), 2, "{text}");
    let mut counts: Vec<i64> = list_lines
        .iter()
        .map(|l| l["redacted"].as_i64().unwrap_or(-1))
        .collect();
    counts.sort_unstable();
    assert_eq!(counts, [0, 2], "{text}");
    let bad = lines
        .iter()
        .find(|l| l["route"] == "verify-apiclient-get")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(bad["status"], 502);
    assert_eq!(bad["decision"], "refuse");
    assert_eq!(bad["reason"], "response_not_redactable");
    assert_eq!(bad["redacted"], 0);

    let after = metric(admin, series);
    assert_eq!(after - before, 2.0);
    let refused = metric(
        admin,
        "portcullis_refusals_total{reason=\"response_not_redactable\",route=\"verify-apiclient-get\"}",
    );
    assert_eq!(refused, 1.0);
}

// === config ===

fn config_errors(response: &str) -> String {
    let config = ConfigBuilder::new()
        .issuer("main", DEFAULT_ISSUER, "http://127.0.0.1:9/jwks", "")
        .upstream("verify", "http://127.0.0.1:9", "catalog = \"verify\"")
        .raw(&format!(
            r#"
[catalogs.verify]
file = {}
offerings = ["CIC"]

[[routes]]
name = "r"
path = "/v1.0/apiclients"
upstream = "verify"

[routes.response]
{response}
"#,
            toml_str(&catalog_file())
        ))
        .build();
    match portcullis::config::load_str(&config, &inline_config_origin()) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn config_checks_pointers_entitlements_and_limits_with_key_paths() {
    assert_eq!(
        config_errors(
            r#"redact = { "/apiClients/*/clientSecret" = ["readAPIClientsAndClientSecret"] }"#
        ),
        ""
    );
    let cases = [
        (
            r#"redact = { "clientSecret" = [] }"#,
            "routes[0].response.redact.clientSecret",
        ),
        (
            r#"redact = { "/a~2b" = [] }"#,
            "routes[0].response.redact./a~2b",
        ),
        (r#"redact = { "" = [] }"#, "routes[0].response.redact."),
        (
            r#"redact = { "/clientSecret" = ["readAPIClientsAndClientSecrets"] }"#,
            "routes[0].response.redact./clientSecret[0]",
        ),
        (
            r#"redact = { "/clientSecret" = ["has space"] }"#,
            "routes[0].response.redact./clientSecret[0]",
        ),
        (
            "redact = { \"/clientSecret\" = [] }\nmax_bytes = 0",
            "routes[0].response.max_bytes",
        ),
        (
            "redact = { \"/clientSecret\" = [] }\nmax_bytes = 100000000",
            "routes[0].response.max_bytes",
        ),
        ("redact = {}", "routes[0].response.redact"),
        (
            "redact = { \"/clientSecret\" = [] }\nunknown = 1",
            "unknown",
        ),
    ];
    for (response, key) in cases {
        let errors = config_errors(response);
        assert!(
            errors.contains(key),
            "{response:?}: expected an error at {key:?}, got {errors:?}"
        );
    }
    // The catalogue offers a hint.
    let errors =
        config_errors(r#"redact = { "/clientSecret" = ["readAPIClientsAndClientSecrets"] }"#);
    assert!(
        errors.contains("did you mean \"readAPIClientsAndClientSecret\""),
        "{errors}"
    );
}

// === portcullis explain ===

#[test]
fn explain_says_which_members_a_route_removes_for_the_caller() {
    use clap::Parser;
    use portcullis::explain::{explain, ExplainArgs, EXIT_ALLOW};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ExplainArgs,
    }

    let dir = TempDir::new("explain");
    let jwks = dir.0.join("jwks.json");
    std::fs::write(&jwks, standard_jwks()).unwrap();
    let config = ConfigBuilder::new()
        .raw(&format!(
            "[[issuers]]\nname = \"main\"\nissuer = {}\naudiences = [{}]\nalgorithms = {STANDARD_ALGORITHMS}\njwks_file = {}\n",
            toml_str(DEFAULT_ISSUER),
            toml_str(DEFAULT_AUDIENCE),
            toml_str(&jwks.display().to_string()),
        ))
        .upstream("verify", "https://tenant.verify.test", "catalog = \"verify\"")
        .raw(&routes())
        .build();
    let path = dir.0.join("portcullis.toml");
    std::fs::write(&path, config).unwrap();
    let run = |entitlements: &[&str], target: &str| {
        let token = TokenBuilder::new(&TestKey::rsa())
            .client_id("reader-client")
            .entitlements(entitlements)
            .build();
        let list = [
            "explain",
            "--config",
            path.to_str().unwrap(),
            "--token",
            token.as_str(),
            "GET",
            target,
        ];
        let out = explain(&Cli::try_parse_from(list).unwrap().args);
        assert_eq!(out.code, EXIT_ALLOW, "{}{}", out.stdout, out.stderr);
        out.stdout
    };
    let out = run(&[READER], "/v1.0/apiclients/abc");
    assert!(
        out.contains(
            "removes /clientSecret (the caller holds none of readAPIClientsAndClientSecret)"
        ),
        "{out}"
    );
    assert!(out.contains("1 of 1 member pointers removed"), "{out}");
    let out = run(&[SECRET_READER], "/v1.0/apiclients/abc");
    assert!(
        out.contains("keeps /clientSecret (the caller holds readAPIClientsAndClientSecret)"),
        "{out}"
    );
    let out = run(&[SECRET_READER], "/idps");
    assert!(out.contains("removes /*/client_secret (always)"), "{out}");
    // A route without redaction says nothing about answers.
    let out = run(&[READER], "/files/x");
    assert!(!out.contains("response"), "{out}");
}

#[test]
fn keep_alive_holds_on_both_sides_of_a_redacting_route() {
    // A keep-alive upstream that records the gateway's source address.
    let body = single_client();
    let up = MockServer::start(move |_| MockResponse::json(200, body.clone()));
    let jwks = MockJwks::start(standard_jwks());
    let config = ConfigBuilder::new()
        .issuer("main", DEFAULT_ISSUER, &jwks.url(), "")
        .upstream("verify", &up.url(), "catalog = \"verify\"")
        .raw(&routes())
        .build();
    let gw = TestGateway::start(&config);
    let token = TokenBuilder::new(&TestKey::rsa())
        .entitlements(&[READER])
        .build();
    wait_until(Duration::from_secs(5), || {
        gw.request_with_token("GET", "/v1.0/apiclients/a", &token, &[], None)
            .status
            == 200
    });
    up.clear();
    // Two requests, one after the other, on one client connection.
    let auth = bearer(&token);
    let mut stream = TcpStream::connect(gw.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    for (target, connection) in [
        ("/v1.0/apiclients/a", "keep-alive"),
        ("/v1.0/apiclients/b", "close"),
    ] {
        stream
            .write_all(&build_request(
                "GET",
                target,
                &[("Authorization", &auth), ("Connection", connection)],
                None,
            ))
            .unwrap();
        let (head, body) = read_response(&mut stream);
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert_eq!(String::from_utf8_lossy(&body), single_client_redacted());
    }
    // The upstream connection went back to the pool after the first answer.
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].peer, seen[1].peer,
        "a new upstream connection for each request"
    );
}

/// One response with a `Content-Length` body off `stream` (bounded by its read timeout).
fn read_response(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => panic!(
                "connection ended in the head: {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no Content-Length: {head}"));
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).unwrap();
    (head, body)
}
