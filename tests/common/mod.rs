//! The shared harness of the black-box integration tests.
//!
//! Everything here talks to the gateway through real loopback sockets:
//!
//! * [`free_port`], [`wait_until`] — ports and bounded waiting;
//! * [`MockServer`] — a tiny recording HTTP/1.1 server, the base of
//!   [`MockUpstream`] (the protected API) and [`MockJwks`] (an issuer's key set);
//! * [`send_raw`], [`request`], [`RawResponse`] — a raw HTTP/1.1 client that
//!   writes exactly the bytes it is given (no path normalisation);
//! * [`TestKey`], [`TokenBuilder`], [`raw_token`] — keys from
//!   `tests/fixtures/keys/` and tokens with any header and claims;
//! * [`ConfigBuilder`], [`standard_config`], [`TestGateway`] — a gateway
//!   started in a thread from TOML text in the format of `config.md`;
//! * [`assert_refused`], [`refusal_problems`], [`Cases`] — the assertions every
//!   refusal test makes (status, `error` code, `X-Request-Id`, nothing upstream).
//!
//! Every address is 127.0.0.1 and every wait is bounded.

#![allow(dead_code)]

/// The `portcullis` binary in child processes (several gateways at once).
pub mod child;
/// A real `redis-server` on a free loopback port (the cluster tests).
pub mod redis;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdTcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `iss` of tokens minted by default, and of the `main` issuer of [`ConfigBuilder::issuer`].
pub const DEFAULT_ISSUER: &str = "https://idp.test";
/// `aud` of tokens minted by default, and the `audiences` of the standard issuer.
pub const DEFAULT_AUDIENCE: &str = "https://api.test";
/// `client_id` of tokens minted by default.
pub const DEFAULT_CLIENT_ID: &str = "client-1";
/// `sub` of tokens minted by default.
pub const DEFAULT_SUBJECT: &str = "subject-1";
/// The asymmetric algorithms the standard issuer accepts.
pub const STANDARD_ALGORITHMS: &str = r#"["RS256", "PS256", "ES256", "ES384", "EdDSA"]"#;

/// How long the raw client waits for a response.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

// === ports and waiting ===

/// Sockets that hold the ports [`free_port`] handed out, for the life of the
/// test process.
static RESERVED_PORTS: Mutex<Vec<tokio::net::TcpSocket>> = Mutex::new(Vec::new());

/// A TCP port on 127.0.0.1 for a listener the test starts later (a gateway,
/// in this process or a spawned binary), or for an address where nothing
/// listens (connecting is refused).
///
/// The port stays reserved until the test process exits: a socket bound to
/// it with `SO_REUSEADDR` and never listening. Linux then hands it to no
/// other `bind(:0)` or `connect()` (in any process), while a listener that
/// also sets `SO_REUSEADDR` — pingora's does — can still bind it. Binding
/// `:0` and dropping the socket instead left a window in which another
/// gateway or mock of the suite got the same port: a gateway whose proxy and
/// admin ports coincided shared one fd between its two listeners (pingora's
/// fd table is keyed by the address text; both close it, and the process
/// aborted with "owned file descriptor already closed"), and a gateway given
/// another's port talked to the wrong gateway, then refused connections when
/// that one stopped.
pub fn free_port() -> u16 {
    let socket = tokio::net::TcpSocket::new_v4().expect("reserve a port: socket");
    socket
        .set_reuseaddr(true)
        .expect("reserve a port: SO_REUSEADDR");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("reserve a port: bind 127.0.0.1:0");
    let port = socket
        .local_addr()
        .expect("reserve a port: local_addr")
        .port();
    lock(&RESERVED_PORTS).push(socket);
    port
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// `s` as a TOML basic string (with quotes).
pub fn toml_str(s: &str) -> String {
    // A JSON string literal is a valid TOML basic string.
    serde_json::to_string(s).expect("string serialises")
}

/// Locks a mutex, ignoring poisoning (a panicking test must not hide the next failure).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// === HTTP/1.1 parsing shared by the mocks and the client ===

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Splits a message head (without the final blank line) into its start line
/// and its headers, keeping order, duplicates and the original case.
fn parse_head(head: &[u8]) -> (Vec<u8>, Vec<(String, String)>) {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let start = lines.next().unwrap_or_default().to_vec();
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let text = String::from_utf8_lossy(line);
        match text.split_once(':') {
            Some((name, value)) => headers.push((name.to_string(), value.trim().to_string())),
            None => headers.push((text.to_string(), String::new())),
        }
    }
    (start, headers)
}

fn header_in<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn header_all_in<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

/// Decodes a complete chunked body at the start of `buf`: `Ok(None)` when more
/// bytes are needed, else the body and the number of bytes consumed (trailers included).
fn decode_chunked(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut pos = 0;
    let mut body = Vec::new();
    loop {
        let Some(i) = find(&buf[pos..], b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&buf[pos..pos + i]).to_string();
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size line {line:?}"))?;
        pos += i + 2;
        if size == 0 {
            loop {
                let Some(j) = find(&buf[pos..], b"\r\n") else {
                    return Ok(None);
                };
                pos += j + 2;
                if j == 0 {
                    return Ok(Some((body, pos)));
                }
            }
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
}

/// Extracts one complete body of the given framing from the start of `buf`.
/// `closed`: the peer closed, so `UntilClose` is complete.
fn take_body(
    framing: Framing,
    buf: &[u8],
    closed: bool,
) -> Result<Option<(Vec<u8>, usize)>, String> {
    match framing {
        Framing::None => Ok(Some((Vec::new(), 0))),
        Framing::Length(n) => Ok((buf.len() >= n).then(|| (buf[..n].to_vec(), n))),
        Framing::Chunked => decode_chunked(buf),
        Framing::UntilClose => Ok(closed.then(|| (buf.to_vec(), buf.len()))),
    }
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    header_all_in(headers, "transfer-encoding")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("chunked"))
}

fn content_length(headers: &[(String, String)]) -> Option<usize> {
    header_in(headers, "content-length").and_then(|v| v.split(',').next()?.trim().parse().ok())
}

// === mock HTTP server ===

/// One request as a mock server received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// The request-target exactly as received, byte for byte.
    pub target: Vec<u8>,
    pub version: String,
    /// Every header line in order, duplicates and original case kept.
    pub headers: Vec<(String, String)>,
    /// The decoded body (Content-Length or chunked).
    pub body: Vec<u8>,
    /// Address of the peer that sent it (the gateway).
    pub peer: SocketAddr,
}

impl RecordedRequest {
    /// The first value of `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }

    /// Every value of `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        header_all_in(&self.headers, name)
    }

    /// The request-target as text (lossy).
    pub fn target_str(&self) -> String {
        String::from_utf8_lossy(&self.target).into_owned()
    }

    /// The path part of the target (before `?`).
    pub fn path(&self) -> String {
        let t = self.target_str();
        t.split('?').next().unwrap_or("").to_string()
    }

    fn wants_close(&self) -> bool {
        self.header_all("connection")
            .iter()
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
            || self.version == "HTTP/1.0"
    }
}

/// What a mock server answers.
#[derive(Debug, Clone)]
pub struct MockResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Waited before answering (after the request was recorded).
    pub delay: Duration,
}

impl MockResponse {
    /// A JSON answer.
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> MockResponse {
        MockResponse {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    fn to_bytes(&self, close: bool) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status)).into_bytes();
        for (n, v) in &self.headers {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

type Handler = dyn Fn(&RecordedRequest) -> MockResponse + Send + Sync;

struct MockShared {
    requests: Mutex<Vec<RecordedRequest>>,
    handler: Box<Handler>,
}

/// A recording HTTP/1.1 server on 127.0.0.1 with its own tokio runtime in a
/// background thread. Supports keep-alive, Content-Length and chunked bodies.
/// `handler` decides each answer; it runs after the request is recorded and
/// must not block (use [`MockResponse::delay`] to be slow).
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<MockShared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockServer {
    pub fn start(
        handler: impl Fn(&RecordedRequest) -> MockResponse + Send + Sync + 'static,
    ) -> MockServer {
        let listener = StdTcpListener::bind("127.0.0.1:0").expect("mock: bind");
        listener.set_nonblocking(true).expect("mock: nonblocking");
        let addr = listener.local_addr().expect("mock: local_addr");
        let shared = Arc::new(MockShared {
            requests: Mutex::new(Vec::new()),
            handler: Box::new(handler),
        });
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let conn_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("mock-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("mock: runtime");
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("mock: listener");
                    loop {
                        tokio::select! {
                            _ = &mut rx => break,
                            accepted = listener.accept() => {
                                if let Ok((stream, peer)) = accepted {
                                    tokio::spawn(serve_connection(stream, peer, conn_shared.clone()));
                                }
                            }
                        }
                    }
                });
                rt.shutdown_timeout(Duration::from_millis(200));
            })
            .expect("mock: spawn thread");
        MockServer {
            addr,
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// How many requests were received.
    pub fn count(&self) -> usize {
        lock(&self.shared.requests).len()
    }

    /// Forgets the recorded requests.
    pub fn clear(&self) {
        lock(&self.shared.requests).clear();
    }

    /// The most recent request; panics when there is none.
    pub fn last(&self) -> RecordedRequest {
        lock(&self.shared.requests)
            .last()
            .cloned()
            .expect("the mock server received no request")
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve_connection(
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    shared: Arc<MockShared>,
) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let req = match read_request(&mut stream, &mut buf, peer).await {
            Some(r) => r,
            None => return,
        };
        lock(&shared.requests).push(req.clone());
        let resp = (shared.handler)(&req);
        if !resp.delay.is_zero() {
            tokio::time::sleep(resp.delay).await;
        }
        let close = req.wants_close();
        if stream.write_all(&resp.to_bytes(close)).await.is_err() || close {
            return;
        }
    }
}

/// Reads one request from `stream` (bytes beyond it stay in `buf`); `None`
/// on close, timeout (60 s idle) or garbage.
async fn read_request(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    peer: SocketAddr,
) -> Option<RecordedRequest> {
    let mut closed = false;
    let idle = Duration::from_secs(60);
    let mut chunk = [0u8; 16 * 1024];
    // Head.
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        if closed || buf.len() > 1 << 20 {
            return None;
        }
        match tokio::time::timeout(idle, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => closed = true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let (start, headers) = parse_head(&buf[..head_end]);
    let start = start.as_slice();
    let mut parts = start.splitn(3, |&b| b == b' ');
    let method = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let target = parts.next().unwrap_or_default().to_vec();
    let version = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    buf.drain(..head_end + 4);
    let framing = if is_chunked(&headers) {
        Framing::Chunked
    } else if let Some(n) = content_length(&headers) {
        Framing::Length(n)
    } else {
        Framing::None
    };
    // Body.
    let body = loop {
        match take_body(framing, buf, closed) {
            Ok(Some((body, used))) => {
                buf.drain(..used);
                break body;
            }
            Ok(None) if !closed => {}
            _ => return None,
        }
        match tokio::time::timeout(idle, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => closed = true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    Some(RecordedRequest {
        method,
        target,
        version,
        headers,
        body,
        peer,
    })
}

// === the mock upstream ===

struct UpstreamBehaviour {
    status: u16,
    body: Vec<u8>,
    delay: Duration,
}

/// The protected API: records every request and answers `200`
/// `{"upstream":"ok"}` (configurable status, body and delay).
pub struct MockUpstream {
    server: MockServer,
    behaviour: Arc<Mutex<UpstreamBehaviour>>,
}

impl MockUpstream {
    pub fn start() -> MockUpstream {
        Self::start_with(200, br#"{"upstream":"ok"}"#)
    }

    /// Answers every request with `status` and a JSON `body`.
    pub fn start_with(status: u16, body: &[u8]) -> MockUpstream {
        let behaviour = Arc::new(Mutex::new(UpstreamBehaviour {
            status,
            body: body.to_vec(),
            delay: Duration::ZERO,
        }));
        let b = behaviour.clone();
        let server = MockServer::start(move |_req| {
            let b = lock(&b);
            let mut resp = MockResponse::json(b.status, b.body.clone());
            resp.delay = b.delay;
            resp
        });
        MockUpstream { server, behaviour }
    }

    /// Answers every request after waiting `delay` (to provoke 504).
    pub fn start_slow(delay: Duration) -> MockUpstream {
        let up = Self::start();
        up.set_delay(delay);
        up
    }

    pub fn set_response(&self, status: u16, body: &[u8]) {
        let mut b = lock(&self.behaviour);
        b.status = status;
        b.body = body.to_vec();
    }

    pub fn set_delay(&self, delay: Duration) {
        lock(&self.behaviour).delay = delay;
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.server.requests()
    }

    pub fn count(&self) -> usize {
        self.server.count()
    }

    pub fn clear(&self) {
        self.server.clear()
    }

    /// The most recent request; panics when there is none.
    pub fn last(&self) -> RecordedRequest {
        self.server.last()
    }
}

// === the mock JWKS endpoint ===

/// An issuer's JWKS endpoint (answers on any path, e.g. `/jwks`).
pub struct MockJwks {
    server: MockServer,
    jwks: Arc<Mutex<String>>,
    failing: Arc<AtomicBool>,
    fetches: Arc<AtomicUsize>,
}

impl MockJwks {
    pub fn start(jwks_json: String) -> MockJwks {
        let jwks = Arc::new(Mutex::new(jwks_json));
        let failing = Arc::new(AtomicBool::new(false));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (j, f, n) = (jwks.clone(), failing.clone(), fetches.clone());
        let server = MockServer::start(move |_req| {
            n.fetch_add(1, Ordering::SeqCst);
            if f.load(Ordering::SeqCst) {
                MockResponse::json(500, r#"{"error":"down"}"#)
            } else {
                MockResponse::json(200, lock(&j).clone())
            }
        });
        MockJwks {
            server,
            jwks,
            failing,
            fetches,
        }
    }

    /// A JWKS endpoint that answers 500 from the start.
    pub fn start_failing() -> MockJwks {
        let m = Self::start(jwks(&[]));
        m.set_failing(true);
        m
    }

    pub fn set_jwks(&self, jwks_json: String) {
        *lock(&self.jwks) = jwks_json;
    }

    /// While failing, every fetch gets 500.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Requests received (successful or not).
    pub fn fetch_count(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// `http://127.0.0.1:PORT/jwks`
    pub fn url(&self) -> String {
        format!("{}/jwks", self.server.url())
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.server.requests()
    }
}

// === the raw client ===

/// One response as read off the socket.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        header_all_in(&self.headers, name)
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics (showing the response) when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {}", self.describe()))
    }

    /// The `error` member of a JSON body.
    pub fn error_code(&self) -> Option<String> {
        let v: Value = serde_json::from_slice(&self.body).ok()?;
        v.get("error")?.as_str().map(str::to_string)
    }

    /// Status, headers and (truncated) body, for failure messages.
    pub fn describe(&self) -> String {
        let mut body = self.body_str();
        if body.len() > 600 {
            body.truncate(600);
            body.push_str("...");
        }
        format!("{} {:?} {}", self.status, self.headers, body)
    }
}

fn parse_response(
    buf: &[u8],
    closed: bool,
    head_request: bool,
) -> Result<Option<(RawResponse, usize)>, String> {
    let mut offset = 0;
    loop {
        let Some(end) = find(&buf[offset..], b"\r\n\r\n") else {
            return Ok(None);
        };
        let (start, headers) = parse_head(&buf[offset..offset + end]);
        let start = String::from_utf8_lossy(&start).into_owned();
        let status: u16 = start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {start:?}"))?;
        let body_start = offset + end + 4;
        if (100..200).contains(&status) {
            offset = body_start; // skip interim responses
            continue;
        }
        let framing = if head_request || status == 204 || status == 304 {
            Framing::None
        } else if is_chunked(&headers) {
            Framing::Chunked
        } else if let Some(n) = content_length(&headers) {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        };
        return Ok(
            take_body(framing, &buf[body_start..], closed)?.map(|(body, used)| {
                (
                    RawResponse {
                        status,
                        headers,
                        body,
                    },
                    body_start + used,
                )
            }),
        );
    }
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    stream.set_write_timeout(Some(RESPONSE_TIMEOUT))?;
    Ok(stream)
}

/// Connects, writes exactly `bytes`, reads one response (10 s timeout).
pub fn try_send_raw(addr: SocketAddr, bytes: &[u8]) -> Result<RawResponse, String> {
    let mut stream = connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    // A refusal may come (and the socket close) before every byte is written:
    // a write error is not the end, the answer may already be waiting.
    let write_error = stream.write_all(bytes).err();
    let head_request = bytes.starts_with(b"HEAD ");
    let deadline = Instant::now() + RESPONSE_TIMEOUT;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut closed = false;
    loop {
        if let Some((resp, _)) = parse_response(&buf, closed, head_request)? {
            return Ok(resp);
        }
        if closed {
            return Err(format!(
                "connection closed before a complete response (write error: {write_error:?}); got {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no complete response within {RESPONSE_TIMEOUT:?}; got {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
        match stream.read(&mut chunk) {
            Ok(0) => closed = true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => closed = true,
        }
    }
}

/// Like [`try_send_raw`], panicking (with the request) when no response comes.
pub fn send_raw(addr: SocketAddr, bytes: &[u8]) -> RawResponse {
    try_send_raw(addr, bytes).unwrap_or_else(|e| {
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(400)]).into_owned();
        panic!("no response to {shown:?}: {e}")
    })
}

/// Everything one connection produced: the responses in order, and whether
/// the server closed the connection within the wait.
#[derive(Debug)]
pub struct RawExchange {
    pub responses: Vec<RawResponse>,
    pub closed: bool,
    /// Bytes after the last complete response.
    pub leftover: Vec<u8>,
}

/// Writes `bytes` (possibly several pipelined requests) and reads until the
/// server closes or `wait` passes; parses every complete response.
pub fn send_raw_collect(addr: SocketAddr, bytes: &[u8], wait: Duration) -> RawExchange {
    let mut stream = connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let _ = stream.write_all(bytes);
    let deadline = Instant::now() + wait;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut closed = false;
    while !closed && Instant::now() < deadline {
        match stream.read(&mut chunk) {
            Ok(0) => closed = true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => closed = true,
        }
    }
    let mut responses = Vec::new();
    let mut pos = 0;
    while let Ok(Some((resp, used))) = parse_response(&buf[pos..], closed, false) {
        if used == 0 {
            break;
        }
        responses.push(resp);
        pos += used;
    }
    RawExchange {
        responses,
        closed,
        leftover: buf[pos..].to_vec(),
    }
}

/// Builds the bytes of an HTTP/1.1 request. Adds `Host: 127.0.0.1`,
/// `Connection: close` and (with a body) `Content-Length` unless `headers`
/// already has them.
pub fn build_request(
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut out = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
    if !has("host") {
        out.extend_from_slice(b"Host: 127.0.0.1\r\n");
    }
    for (n, v) in headers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    if let Some(b) = body {
        if !has("content-length") && !has("transfer-encoding") {
            out.extend_from_slice(format!("Content-Length: {}\r\n", b.len()).as_bytes());
        }
    }
    if !has("connection") {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if let Some(b) = body {
        out.extend_from_slice(b);
    }
    out
}

/// Sends one request built by [`build_request`] and reads the response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> RawResponse {
    send_raw(addr, &build_request(method, target, headers, body))
}

/// `Bearer <token>`
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

// === keys and tokens ===

/// `tests/fixtures/keys/`
pub fn keys_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys")
}

fn read_key_file(file: &str) -> Vec<u8> {
    let path = keys_dir().join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("test key {}: {e}", path.display()))
}

/// The DER bytes inside a PEM file.
fn pem_to_der(pem: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(pem);
    let b64: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    STANDARD.decode(b64).expect("PEM base64")
}

/// A signing key with its `kid` and `alg`.
#[derive(Clone)]
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    /// Fixture base name (`rsa2048`), for the public key file.
    file: Option<&'static str>,
}

impl TestKey {
    fn from_fixture(file: &'static str, kid: &str, alg: Algorithm) -> TestKey {
        let pem = read_key_file(&format!("{file}.pem"));
        let encoding = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => EncodingKey::from_rsa_pem(&pem),
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
            _ => panic!("no fixture for {alg:?}"),
        }
        .unwrap_or_else(|e| panic!("test key {file}.pem: {e}"));
        TestKey {
            kid: kid.to_string(),
            alg,
            encoding,
            file: Some(file),
        }
    }

    /// RSA 2048 (`rsa2048.pem`), kid `rsa-1`, RS256.
    pub fn rsa() -> TestKey {
        Self::from_fixture("rsa2048", "rsa-1", Algorithm::RS256)
    }

    /// The same RSA key as [`TestKey::rsa`] for PS256, kid `rsa-pss-1`.
    pub fn rsa_pss() -> TestKey {
        Self::from_fixture("rsa2048", "rsa-pss-1", Algorithm::PS256)
    }

    /// A second RSA 2048 key (`rsa2048-b.pem`), kid `rsa-b`, RS256.
    pub fn rsa_b() -> TestKey {
        Self::from_fixture("rsa2048-b", "rsa-b", Algorithm::RS256)
    }

    /// EC P-256, kid `ec256-1`, ES256.
    pub fn ec256() -> TestKey {
        Self::from_fixture("ec256", "ec256-1", Algorithm::ES256)
    }

    /// EC P-384, kid `ec384-1`, ES384.
    pub fn ec384() -> TestKey {
        Self::from_fixture("ec384", "ec384-1", Algorithm::ES384)
    }

    /// Ed25519, kid `ed25519-1`, EdDSA.
    pub fn ed25519() -> TestKey {
        Self::from_fixture("ed25519", "ed25519-1", Algorithm::EdDSA)
    }

    /// An HMAC key (HS256), kid `hmac-1`.
    pub fn hmac(secret: &[u8]) -> TestKey {
        TestKey {
            kid: "hmac-1".into(),
            alg: Algorithm::HS256,
            encoding: EncodingKey::from_secret(secret),
            file: None,
        }
    }

    pub fn with_kid(mut self, kid: &str) -> TestKey {
        self.kid = kid.to_string();
        self
    }

    /// Same key material, another algorithm of its family (e.g. RS384, PS256).
    pub fn with_alg(mut self, alg: Algorithm) -> TestKey {
        self.alg = alg;
        self
    }

    /// The public key PEM (SPKI) from `tests/fixtures/keys/NAME.pub.pem`.
    pub fn public_pem(&self) -> Vec<u8> {
        let file = self.file.expect("an HMAC key has no public key");
        read_key_file(&format!("{file}.pub.pem"))
    }

    /// The public JWK, with `kid` and `alg`.
    pub fn jwk_json(&self) -> Value {
        if self.alg == Algorithm::EdDSA {
            // jsonwebtoken cannot derive an OKP JWK from a private key: the
            // raw public key is the last 32 bytes of the SPKI DER.
            let der = pem_to_der(&self.public_pem());
            let x = &der[der.len() - 32..];
            return json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(x),
                "kid": self.kid,
                "alg": "EdDSA",
                "use": "sig",
            });
        }
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&self.encoding, self.alg)
            .unwrap_or_else(|e| panic!("JWK for {}: {e}", self.kid));
        jwk.common.key_id = Some(self.kid.clone());
        serde_json::to_value(&jwk).expect("JWK serialises")
    }

    /// Signs `message` with this key's algorithm; base64url signature.
    pub fn sign(&self, message: &[u8]) -> String {
        self.sign_as(message, self.alg)
    }

    fn sign_as(&self, message: &[u8], alg: Algorithm) -> String {
        jsonwebtoken::crypto::sign(message, &self.encoding, alg)
            .unwrap_or_else(|e| panic!("signing with {} as {alg:?}: {e}", self.kid))
    }
}

/// A JWKS document (`{"keys":[...]}`) with the public JWKs of `keys`.
pub fn jwks(keys: &[&TestKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk_json()).collect::<Vec<_>>() }).to_string()
}

/// The JWKS of the standard issuer: rsa, rsa_pss, ec256, ec384, ed25519
/// (not rsa_b, which stays unknown until a test publishes it).
pub fn standard_jwks() -> String {
    jwks(&[
        &TestKey::rsa(),
        &TestKey::rsa_pss(),
        &TestKey::ec256(),
        &TestKey::ec384(),
        &TestKey::ed25519(),
    ])
}

fn alg_name(alg: Algorithm) -> String {
    serde_json::to_value(alg)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{alg:?}"))
}

/// Mints a JWT with any header and claims.
///
/// Defaults: header `{"alg": key.alg, "typ": "JWT", "kid": key.kid}`; claims
/// `iss` = [`DEFAULT_ISSUER`], `sub` = [`DEFAULT_SUBJECT`], `aud` =
/// [`DEFAULT_AUDIENCE`], `client_id` = [`DEFAULT_CLIENT_ID`], `iat` = now,
/// `exp` = now + 300.
pub struct TokenBuilder {
    key: TestKey,
    sign_alg: Algorithm,
    header: Map<String, Value>,
    claims: Map<String, Value>,
}

impl TokenBuilder {
    pub fn new(key: &TestKey) -> TokenBuilder {
        let mut header = Map::new();
        header.insert("alg".into(), Value::String(alg_name(key.alg)));
        header.insert("typ".into(), json!("JWT"));
        header.insert("kid".into(), json!(key.kid));
        let t = now();
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(DEFAULT_ISSUER));
        claims.insert("sub".into(), json!(DEFAULT_SUBJECT));
        claims.insert("aud".into(), json!(DEFAULT_AUDIENCE));
        claims.insert("client_id".into(), json!(DEFAULT_CLIENT_ID));
        claims.insert("iat".into(), json!(t));
        claims.insert("exp".into(), json!(t + 300));
        TokenBuilder {
            key: key.clone(),
            sign_alg: key.alg,
            header,
            claims,
        }
    }

    pub fn iss(self, iss: &str) -> Self {
        self.claim("iss", json!(iss))
    }

    pub fn sub(self, sub: &str) -> Self {
        self.claim("sub", json!(sub))
    }

    pub fn client_id(self, id: &str) -> Self {
        self.claim("client_id", json!(id))
    }

    /// The `entitlements` claim as a JSON array.
    pub fn entitlements(self, names: &[&str]) -> Self {
        self.claim("entitlements", json!(names))
    }

    /// `aud`: a string (`json!("x")`) or an array (`json!(["x", "y"])`).
    pub fn aud(self, aud: impl Into<Value>) -> Self {
        self.claim("aud", aud.into())
    }

    /// `exp` = now + `secs` (negative: in the past).
    pub fn exp_in(self, secs: i64) -> Self {
        self.claim("exp", json!(now() + secs))
    }

    /// `nbf` as an absolute Unix time.
    pub fn nbf(self, at: i64) -> Self {
        self.claim("nbf", json!(at))
    }

    /// `iat` as an absolute Unix time.
    pub fn iat(self, at: i64) -> Self {
        self.claim("iat", json!(at))
    }

    pub fn claim(mut self, name: &str, value: Value) -> Self {
        self.claims.insert(name.into(), value);
        self
    }

    /// Removes a claim (e.g. `exp`).
    pub fn without(mut self, name: &str) -> Self {
        self.claims.remove(name);
        self
    }

    /// Sets a header member (a lie about `alg` included: signing is unchanged).
    pub fn header(mut self, name: &str, value: Value) -> Self {
        self.header.insert(name.into(), value);
        self
    }

    pub fn without_header(mut self, name: &str) -> Self {
        self.header.remove(name);
        self
    }

    pub fn no_kid(self) -> Self {
        self.without_header("kid")
    }

    /// Signs with `alg` (the key's material) and says so in the header.
    pub fn sign_as(mut self, alg: Algorithm) -> Self {
        self.sign_alg = alg;
        self.header
            .insert("alg".into(), Value::String(alg_name(alg)));
        self
    }

    pub fn build(&self) -> String {
        let header = serde_json::to_string(&self.header).expect("header serialises");
        let claims = serde_json::to_string(&self.claims).expect("claims serialise");
        sign_parts(&header, &claims, &self.key, self.sign_alg)
    }
}

fn sign_parts(header_json: &str, claims_json: &str, key: &TestKey, alg: Algorithm) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header_json),
        URL_SAFE_NO_PAD.encode(claims_json)
    );
    let sig = key.sign_as(message.as_bytes(), alg);
    format!("{message}.{sig}")
}

/// A token from literal JSON texts (e.g. with duplicate members), signed with
/// `key` using `key.alg`.
pub fn raw_token(header_json: &str, claims_json: &str, key: &TestKey) -> String {
    sign_parts(header_json, claims_json, key, key.alg)
}

/// `header.claims.` with an empty signature (for `alg: none`).
pub fn unsigned_token(header_json: &str, claims_json: &str) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header_json),
        URL_SAFE_NO_PAD.encode(claims_json)
    )
}

/// Standard valid claims as JSON text (for [`raw_token`]).
pub fn default_claims_json() -> String {
    let t = now();
    json!({
        "iss": DEFAULT_ISSUER,
        "sub": DEFAULT_SUBJECT,
        "aud": DEFAULT_AUDIENCE,
        "client_id": DEFAULT_CLIENT_ID,
        "iat": t,
        "exp": t + 300,
    })
    .to_string()
}

// === configuration ===

/// Builds a config in the TOML format of `config.md`, with free loopback
/// ports for the proxy and admin listeners.
///
/// ```ignore
/// let toml = ConfigBuilder::new()
///     .server("max_body_bytes = 1024")
///     .issuer("main", DEFAULT_ISSUER, &jwks.url(), "")
///     .upstream("app", &upstream.url(), "")
///     .raw(r#"
/// [[routes]]
/// name = "r"
/// path = "/x"
/// upstream = "app"
/// "#)
///     .build();
/// ```
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    pub proxy_port: u16,
    pub admin_port: u16,
    server_lines: Vec<String>,
    sections: Vec<String>,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigBuilder {
    pub fn new() -> ConfigBuilder {
        ConfigBuilder {
            proxy_port: free_port(),
            admin_port: free_port(),
            server_lines: Vec::new(),
            sections: Vec::new(),
        }
    }

    /// An extra `key = value` line in `[server]`.
    pub fn server(mut self, line: &str) -> Self {
        self.server_lines.push(line.to_string());
        self
    }

    /// A JWKS issuer accepting [`STANDARD_ALGORITHMS`] with `audiences =
    /// [DEFAULT_AUDIENCE]`; `extra` holds more `key = value` lines.
    pub fn issuer(self, name: &str, iss: &str, jwks_url: &str, extra: &str) -> Self {
        self.raw(&format!(
            "[[issuers]]\nname = {}\nissuer = {}\naudiences = [{}]\nalgorithms = {STANDARD_ALGORITHMS}\njwks_url = {}\n{extra}\n",
            toml_str(name),
            toml_str(iss),
            toml_str(DEFAULT_AUDIENCE),
            toml_str(jwks_url),
        ))
    }

    /// An HS256 issuer whose secret is in the env var `secret_env`.
    pub fn hmac_issuer(self, name: &str, iss: &str, secret_env: &str, extra: &str) -> Self {
        self.raw(&format!(
            "[[issuers]]\nname = {}\nissuer = {}\naudiences = [{}]\nalgorithms = [\"HS256\"]\nhmac_secret_env = {}\n{extra}\n",
            toml_str(name),
            toml_str(iss),
            toml_str(DEFAULT_AUDIENCE),
            toml_str(secret_env),
        ))
    }

    pub fn upstream(self, name: &str, url: &str, extra: &str) -> Self {
        self.raw(&format!(
            "[[upstreams]]\nname = {}\nurl = {}\n{extra}\n",
            toml_str(name),
            toml_str(url)
        ))
    }

    /// Appends TOML as is (routes, more issuers or upstreams).
    pub fn raw(mut self, toml: &str) -> Self {
        self.sections.push(toml.to_string());
        self
    }

    pub fn build(&self) -> String {
        // Keep test output readable: no audit lines on stdout unless a test
        // configures its own [log]. (Written first: the raw sections that
        // follow [admin] may continue that table.)
        let log = if self.sections.iter().any(|s| s.contains("[log]")) {
            ""
        } else {
            "[log]\naudit = \"off\"\n\n"
        };
        let mut out = format!(
            "{log}[server]\nlisten = [\"127.0.0.1:{}\"]\nthreads = 1\n",
            self.proxy_port
        );
        for l in &self.server_lines {
            out.push_str(l);
            out.push('\n');
        }
        out.push_str(&format!(
            "\n[admin]\nlisten = \"127.0.0.1:{}\"\n\n",
            self.admin_port
        ));
        for s in &self.sections {
            out.push_str(s.trim_start_matches('\n'));
            out.push('\n');
        }
        out
    }
}

/// A complete config: issuer `main` ([`DEFAULT_ISSUER`]) on `jwks_url`,
/// upstream `app` at `upstream_url`, then `routes` (TOML `[[routes]]` text).
pub fn standard_config(upstream_url: &str, jwks_url: &str, routes: &str) -> String {
    ConfigBuilder::new()
        .issuer("main", DEFAULT_ISSUER, jwks_url, "")
        .upstream("app", upstream_url, "")
        .raw(routes)
        .build()
}

// === the gateway under test ===

/// A gateway running in a background thread (stopped on drop).
pub struct TestGateway {
    handle: Option<portcullis::server::GatewayHandle>,
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    pub warnings: Vec<String>,
}

/// Where inline test configs pretend to live: relative paths resolve in `tests/`.
pub fn inline_config_origin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/inline-config.toml")
}

impl TestGateway {
    /// Loads `config_toml` (panicking with every error if it is invalid),
    /// starts the gateway and waits (at most 5 s) for `/readyz`.
    pub fn start(config_toml: &str) -> TestGateway {
        let gw = Self::start_unready(config_toml);
        gw.wait_ready(Duration::from_secs(5));
        gw
    }

    /// Like [`TestGateway::start`] without waiting for readiness (for
    /// gateways that are expected never to become ready).
    pub fn start_unready(config_toml: &str) -> TestGateway {
        Self::try_start(config_toml)
            .unwrap_or_else(|e| panic!("{e}\n--- config ---\n{config_toml}"))
    }

    pub fn try_start(config_toml: &str) -> Result<TestGateway, String> {
        let loaded = portcullis::config::load_str(config_toml, &inline_config_origin())
            .map_err(|e| format!("test config rejected:\n{e}"))?;
        let addr: SocketAddr = loaded
            .config
            .server
            .listen
            .first()
            .ok_or("test config has no listener")?
            .parse()
            .map_err(|e| format!("listener address: {e}"))?;
        let admin_addr = loaded.config.admin.listen.parse().ok();
        let warnings = loaded.warnings;
        let handle = portcullis::server::start_in_thread(loaded.config)
            .map_err(|e| format!("gateway did not start: {e}"))?;
        Ok(TestGateway {
            handle: Some(handle),
            addr,
            admin_addr,
            warnings,
        })
    }

    /// Polls `GET /readyz` on the admin listener until 200 or `timeout`.
    /// Gives up early when there is no admin listener or no `/readyz`
    /// (404), so tests do not depend on it.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let Some(admin) = self.admin_addr else {
            return false;
        };
        let deadline = Instant::now() + timeout;
        let mut refused_since: Option<Instant> = None;
        loop {
            match try_send_raw(admin, &build_request("GET", "/readyz", &[], None)) {
                Ok(r) if r.status == 200 => return true,
                Ok(r) if r.status == 404 || r.status == 405 => return false,
                Ok(_) => refused_since = None,
                Err(_) => {
                    let since = *refused_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_millis(500) {
                        return false;
                    }
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// See [`request`].
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> RawResponse {
        request(self.addr, method, target, headers, body)
    }

    /// A request with `Authorization: Bearer <token>` (and extra headers).
    pub fn request_with_token(
        &self,
        method: &str,
        target: &str,
        token: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> RawResponse {
        let auth = bearer(token);
        let mut all: Vec<(&str, &str)> = vec![("Authorization", auth.as_str())];
        all.extend_from_slice(headers);
        request(self.addr, method, target, &all, body)
    }

    pub fn send_raw(&self, bytes: &[u8]) -> RawResponse {
        send_raw(self.addr, bytes)
    }

    /// Sends `GET target` with `token` until it is answered 200 (at most
    /// 5 s; keys may still be loading), then forgets what `upstream` saw.
    /// Panics with the last response if it never succeeds.
    pub fn warm_up(&self, target: &str, token: &str, upstream: &MockUpstream) {
        let mut last = None;
        let ok = wait_until(Duration::from_secs(5), || {
            let r = self.request_with_token("GET", target, token, &[], None);
            let ok = r.status == 200;
            last = Some(r);
            ok
        });
        assert!(
            ok,
            "warm-up GET {target} never succeeded; last response: {}",
            last.map(|r| r.describe()).unwrap_or_default()
        );
        upstream.clear();
    }

    /// Stops the gateway now (also done on drop).
    pub fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.stop();
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.stop();
        }
    }
}

// === assertions ===

/// What is wrong with `resp` as a refusal with `status` and `code` that
/// `upstream` never saw (empty: nothing).
pub fn refusal_problems(
    resp: &RawResponse,
    status: u16,
    code: &str,
    upstream: &MockUpstream,
) -> Vec<String> {
    let mut problems = Vec::new();
    if resp.status != status {
        problems.push(format!("status {} (expected {status})", resp.status));
    }
    match resp.error_code() {
        Some(c) if c == code => {}
        Some(c) => problems.push(format!("error code {c:?} (expected {code:?})")),
        None => problems.push(format!("no JSON `error` member (expected {code:?})")),
    }
    match resp.header("x-request-id") {
        None => problems.push("no X-Request-Id header".into()),
        Some("") => problems.push("empty X-Request-Id header".into()),
        Some(id) => {
            if let Ok(body) = serde_json::from_slice::<Value>(&resp.body) {
                if let Some(rid) = body.get("request_id").and_then(Value::as_str) {
                    if rid != id {
                        problems.push(format!(
                            "body request_id {rid:?} differs from X-Request-Id {id:?}"
                        ));
                    }
                }
            }
        }
    }
    let seen = upstream.count();
    if seen != 0 {
        let targets: Vec<String> = upstream
            .requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.target_str()))
            .collect();
        problems.push(format!("upstream received {seen} request(s): {targets:?}"));
    }
    problems
}

/// Asserts a refusal: `status`, JSON `error` = `code`, an `X-Request-Id`, and
/// nothing reached `upstream`.
#[track_caller]
pub fn assert_refused(resp: &RawResponse, status: u16, code: &str, upstream: &MockUpstream) {
    let problems = refusal_problems(resp, status, code, upstream);
    assert!(
        problems.is_empty(),
        "refusal {status} {code} expected: {}\nresponse: {}",
        problems.join("; "),
        resp.describe()
    );
}

/// Collects failures of many table-driven cases so one run reports them all.
#[derive(Default)]
pub struct Cases {
    failures: Vec<String>,
}

impl Cases {
    pub fn new() -> Cases {
        Cases::default()
    }

    /// Records `problems` of the case `label` (nothing when empty).
    pub fn check(&mut self, label: &str, problems: Vec<String>, resp: Option<&RawResponse>) {
        if !problems.is_empty() {
            let shown = resp
                .map(|r| format!("\n      response: {}", r.describe()))
                .unwrap_or_default();
            self.failures
                .push(format!("  {label}: {}{shown}", problems.join("; ")));
        }
    }

    /// Checks a refusal (see [`refusal_problems`]) and clears `upstream` so
    /// one wrongly forwarded request does not fail the following cases.
    pub fn refused(
        &mut self,
        label: &str,
        resp: &RawResponse,
        status: u16,
        code: &str,
        upstream: &MockUpstream,
    ) {
        let problems = refusal_problems(resp, status, code, upstream);
        self.check(label, problems, Some(resp));
        upstream.clear();
    }

    /// Checks a request that pingora's HTTP/1 parser itself refuses before
    /// the gateway sees it (conflicting `Content-Length`, a non-`chunked`
    /// `Transfer-Encoding`, two `Host` headers, non-UTF-8 target bytes,
    /// `CONNECT`): the status is pingora's and there is no JSON body, but the
    /// connection is closed and nothing reaches the upstream.
    pub fn refused_by_parser(
        &mut self,
        label: &str,
        resp: &RawResponse,
        status: u16,
        upstream: &MockUpstream,
    ) {
        let mut problems = Vec::new();
        if resp.status != status {
            problems.push(format!("status {} (expected {status})", resp.status));
        }
        let seen = upstream.count();
        if seen != 0 {
            problems.push(format!("upstream saw {seen} request(s)"));
        }
        self.check(label, problems, Some(resp));
        upstream.clear();
    }

    /// Records a failure directly.
    pub fn fail(&mut self, label: &str, problem: String) {
        self.failures.push(format!("  {label}: {problem}"));
    }

    /// Panics listing every failed case.
    #[track_caller]
    pub fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{} case(s) failed:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}
