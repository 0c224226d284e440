//! The connection layer through real sockets: head, keep-alive and body
//! deadlines, connection caps (clients bound to several 127.x.y.z source
//! addresses), one answer shape for what pingora's parser would refuse, TLS
//! still served, and no ERROR log line for what a client can do at will.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;

const ROUTES: &str = r#"
[[routes]]
name = "open"
methods = ["GET"]
path = "/open/{id}"
upstream = "app"
auth = "none"

[[routes]]
name = "stream"
methods = ["POST"]
path = "/stream/{id}"
upstream = "app"
auth = "none"

[[routes]]
name = "checked"
methods = ["POST"]
path = "/checked/{id}"
upstream = "app"
auth = "none"

[routes.body]
json = true
max_bytes = 1024
"#;

const HEADER_TIMEOUT_MS: u64 = 600;
const BODY_TIMEOUT_MS: u64 = 600;
const KEEPALIVE_TIMEOUT_MS: u64 = 500;
/// The slack every deadline gets in these tests.
const SLACK: Duration = Duration::from_secs(1);
/// How often a dribbling client sends its next byte.
const DRIBBLE: Duration = Duration::from_millis(200);

fn gateway(up: &MockUpstream, server_lines: &[&str]) -> TestGateway {
    log_capture();
    let mut b = ConfigBuilder::new();
    for (key, value) in [
        ("header_timeout_ms", HEADER_TIMEOUT_MS),
        ("body_timeout_ms", BODY_TIMEOUT_MS),
        ("keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ] {
        if !server_lines.iter().any(|l| l.starts_with(key)) {
            b = b.server(&format!("{key} = {value}"));
        }
    }
    for l in server_lines {
        b = b.server(l);
    }
    let config = b.upstream("app", &up.url(), "").raw(ROUTES).build();
    TestGateway::start(&config)
}

fn ms(d: u64) -> Duration {
    Duration::from_millis(d)
}

// === a client that reads while it writes ===

/// A connection whose answer is collected by a reader thread while the test
/// writes (or dribbles) on it.
struct Conn {
    stream: TcpStream,
    opened: Instant,
    got: Arc<Mutex<(Vec<u8>, Option<Instant>)>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        Conn::wrap(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect"))
    }

    fn wrap(stream: TcpStream) -> Conn {
        let mut rd = stream.try_clone().expect("clone the socket");
        rd.set_read_timeout(Some(Duration::from_secs(20))).ok();
        let got = Arc::new(Mutex::new((Vec::new(), None)));
        let sink = got.clone();
        let reader = std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match rd.read(&mut chunk) {
                    Ok(n) if n > 0 => sink.lock().unwrap().0.extend_from_slice(&chunk[..n]),
                    _ => {
                        sink.lock().unwrap().1 = Some(Instant::now());
                        return;
                    }
                }
            }
        });
        Conn {
            stream,
            opened: Instant::now(),
            got,
            reader: Some(reader),
        }
    }

    fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// Sends `bytes` one at a time every [`DRIBBLE`] until they are all sent,
    /// the connection closes, or `limit` passes.
    fn dribble(&mut self, bytes: &[u8], limit: Duration) {
        let until = Instant::now() + limit;
        for b in bytes {
            if self.closed_at().is_some() || Instant::now() > until || !self.send(&[*b]) {
                return;
            }
            std::thread::sleep(DRIBBLE);
        }
    }

    fn closed_at(&self) -> Option<Instant> {
        self.got.lock().unwrap().1
    }

    fn received(&self) -> Vec<u8> {
        self.got.lock().unwrap().0.clone()
    }

    /// Waits (at most `limit`) for the server to close; returns when it did.
    fn wait_closed(&self, limit: Duration) -> Option<Instant> {
        wait_until(limit, || self.closed_at().is_some());
        self.closed_at()
    }

    /// Waits for `n` complete responses (at most `limit`).
    fn wait_responses(&self, n: usize, limit: Duration) -> Vec<RawResponse> {
        let mut out = Vec::new();
        wait_until(limit, || {
            out = parse_all(&self.received());
            out.len() >= n
        });
        out
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// Every complete response in `buf` (Content-Length framed, interim 1xx skipped).
fn parse_all(mut buf: &[u8]) -> Vec<RawResponse> {
    let mut out = Vec::new();
    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.to_string(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let start = end + 4;
        if (100..200).contains(&status) {
            buf = &buf[start..];
            continue;
        }
        if buf.len() < start + len {
            break;
        }
        out.push(RawResponse {
            status,
            headers,
            body: buf[start..start + len].to_vec(),
        });
        buf = &buf[start + len..];
    }
    out
}

/// A TCP connection to `addr` from the source address `src` (any of 127/8
/// is loopback on Linux).
fn connect_from(src: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    let ip: IpAddr = src.parse().expect("source address");
    sock.bind(&SocketAddr::new(ip, 0).into())?;
    sock.connect_timeout(&addr.into(), Duration::from_secs(2))?;
    Ok(sock.into())
}

/// One GET from `src`, answered within `limit`.
fn get_from(
    src: &str,
    addr: SocketAddr,
    target: &str,
    limit: Duration,
) -> Result<RawResponse, String> {
    let stream = connect_from(src, addr).map_err(|e| format!("connect from {src}: {e}"))?;
    let mut c = Conn::wrap(stream);
    c.send(&build_request("GET", target, &[], None));
    c.wait_responses(1, limit)
        .into_iter()
        .next()
        .ok_or_else(|| {
            format!(
                "no answer from {src} within {limit:?}: {:?}",
                String::from_utf8_lossy(&c.received())
            )
        })
}

/// Whether the server closed `stream` without a byte of answer within `limit`.
fn closed_unanswered(stream: &mut TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(limit)).ok();
    let mut b = [0u8; 64];
    match stream.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
        ),
    }
}

/// The value of a metric series on the admin listener (0 when absent).
fn metric(gw: &TestGateway, series: &str) -> f64 {
    let admin = gw.admin_addr().expect("admin listener");
    let text = request(admin, "GET", "/metrics", &[], None).body_str();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

fn assert_no_pingora_server_header(resp: &RawResponse) {
    for v in resp.header_all("server") {
        assert!(
            !v.to_ascii_lowercase().contains("pingora"),
            "Server: {v} in {}",
            resp.describe()
        );
    }
}

// === 1. head deadline ===

const SLOW_HEAD: &[u8] =
    b"GET /open/a HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: abcdefghijklmnopqrstuvwxyz\r\n\r\n";

#[test]
fn a_dribbled_head_is_answered_408_and_closed_within_the_header_timeout() {
    let up = MockUpstream::start();
    let gw = gateway(&up, &[]);
    let mut c = Conn::open(gw.addr());
    let started = Instant::now();
    c.dribble(SLOW_HEAD, ms(HEADER_TIMEOUT_MS) + SLACK * 3);
    let closed = c.wait_closed(ms(HEADER_TIMEOUT_MS) + SLACK * 2);
    let closed = closed.expect("the connection was never closed");
    assert!(
        closed - started <= ms(HEADER_TIMEOUT_MS) + SLACK,
        "closed after {:?}",
        closed - started
    );
    let resps = parse_all(&c.received());
    assert_eq!(
        resps.len(),
        1,
        "{:?}",
        String::from_utf8_lossy(&c.received())
    );
    assert_refused(&resps[0], 408, "request_timeout", &up);
    assert_no_pingora_server_header(&resps[0]);
}

#[test]
fn the_head_of_a_second_request_on_a_keep_alive_connection_is_bound_too() {
    let up = MockUpstream::start();
    let gw = gateway(&up, &[]);
    let mut c = Conn::open(gw.addr());
    c.send(b"GET /open/first HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let first = c.wait_responses(1, SLACK * 3);
    assert_eq!(first.first().map(|r| r.status), Some(200), "{first:?}");
    assert_eq!(up.count(), 1);
    up.clear();
    let started = Instant::now();
    c.dribble(SLOW_HEAD, ms(HEADER_TIMEOUT_MS) + SLACK * 3);
    let closed = c.wait_closed(SLACK * 3).expect("never closed");
    assert!(
        closed - started <= ms(HEADER_TIMEOUT_MS) + SLACK,
        "closed after {:?}",
        closed - started
    );
    let resps = parse_all(&c.received());
    assert_eq!(
        resps.len(),
        2,
        "{:?}",
        String::from_utf8_lossy(&c.received())
    );
    assert_refused(&resps[1], 408, "request_timeout", &up);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout() {
    let up = MockUpstream::start();
    let gw = gateway(&up, &[]);
    let mut c = Conn::open(gw.addr());
    c.send(b"GET /open/a HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert_eq!(c.wait_responses(1, SLACK * 3).len(), 1);
    let answered = Instant::now();
    std::thread::sleep(ms(KEEPALIVE_TIMEOUT_MS / 2));
    assert!(
        c.closed_at().is_none(),
        "closed before the keep-alive timeout"
    );
    // Still usable before the timeout.
    c.send(b"GET /open/b HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert_eq!(c.wait_responses(2, SLACK * 3).len(), 2);
    let answered = answered.max(Instant::now());
    let closed = c
        .wait_closed(ms(KEEPALIVE_TIMEOUT_MS) + SLACK * 2)
        .expect("never closed");
    assert!(closed - answered >= ms(KEEPALIVE_TIMEOUT_MS) - ms(100));
    assert!(closed - answered <= ms(KEEPALIVE_TIMEOUT_MS) + SLACK);
    // Idle is not a timed-out request: no 408 after the two answers.
    assert_eq!(parse_all(&c.received()).len(), 2);
    assert_eq!(up.count(), 2);
}

#[test]
fn a_silent_new_connection_is_closed_without_an_answer() {
    let up = MockUpstream::start();
    let gw = gateway(&up, &[]);
    let c = Conn::open(gw.addr());
    let closed = c
        .wait_closed(ms(HEADER_TIMEOUT_MS) + SLACK * 2)
        .expect("never closed");
    assert!(closed - c.opened <= ms(HEADER_TIMEOUT_MS) + SLACK);
    assert!(c.received().is_empty(), "{:?}", c.received());
}

#[test]
fn keep_alive_and_expect_100_continue_still_work() {
    let up = MockUpstream::start();
    let gw = gateway(&up, &[]);
    let mut c = Conn::open(gw.addr());
    for i in 0..3 {
        c.send(format!("GET /open/k{i} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes());
        let got = c.wait_responses(i + 1, SLACK * 3);
        assert_eq!(got.len(), i + 1, "request {i} unanswered");
        assert_eq!(got[i].status, 200, "{}", got[i].describe());
        assert_no_pingora_server_header(&got[i]);
    }
    assert_eq!(up.count(), 3);
    assert!(c.closed_at().is_none(), "keep-alive connection closed");

    // A checked body is invited with 100 Continue, then forwarded.
    let body = br#"{"name":"x"}"#;
    let mut c = Conn::open(gw.addr());
    c.send(
        format!(
            "POST /checked/a HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    assert!(
        wait_until(SLACK * 3, || c.received().starts_with(b"HTTP/1.1 100")),
        "no 100 Continue: {:?}",
        String::from_utf8_lossy(&c.received())
    );
    c.send(body);
    let got = c.wait_responses(1, SLACK * 3);
    assert_eq!(got.first().map(|r| r.status), Some(200), "{got:?}");
    assert_eq!(up.last().body, body);
}

// === 2. body deadline ===

fn dribbled_body_is_cut_off(target: &str) {
    let up = MockUpstream::start();
    let gw = gateway(&up, &[]);
    let mut c = Conn::open(gw.addr());
    let body = br#"{"name":"a dribbled body that never ends in time"}"#;
    c.send(
        format!(
            "POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let head_sent = Instant::now();
    c.dribble(body, ms(BODY_TIMEOUT_MS) + SLACK * 3);
    let got = c.wait_responses(1, SLACK * 2);
    let answered = Instant::now();
    assert_eq!(got.len(), 1, "{:?}", String::from_utf8_lossy(&c.received()));
    assert!(
        answered - head_sent <= ms(BODY_TIMEOUT_MS) + SLACK + DRIBBLE,
        "answered after {:?}",
        answered - head_sent
    );
    // The upstream never saw a complete request (a streamed one was aborted).
    assert_refused(&got[0], 408, "request_timeout", &up);
    assert!(c.wait_closed(SLACK * 2).is_some(), "connection left open");
    std::thread::sleep(ms(300));
    assert_eq!(up.count(), 0, "the upstream received the request");
}

#[test]
fn a_dribbled_body_is_answered_408_on_a_body_policy_route() {
    dribbled_body_is_cut_off("/checked/a");
}

#[test]
fn a_dribbled_body_is_answered_408_on_a_streaming_route() {
    dribbled_body_is_cut_off("/stream/a");
}

// === 3. connection caps ===

#[test]
fn the_per_ip_cap_closes_extra_connections_unread_and_spares_other_addresses() {
    let up = MockUpstream::start();
    let gw = gateway(
        &up,
        &["max_connections_per_ip = 3", "header_timeout_ms = 10000"],
    );
    let before = metric(
        &gw,
        "portcullis_connections_refused_total{reason=\"max_connections_per_ip\"}",
    );
    let held: Vec<TcpStream> = (0..3)
        .map(|_| connect_from("127.0.0.2", gw.addr()).expect("connect"))
        .collect();
    std::thread::sleep(ms(100));
    let mut extra = connect_from("127.0.0.2", gw.addr()).expect("connect");
    let _ = extra.write_all(&build_request("GET", "/open/x", &[], None));
    assert!(
        closed_unanswered(&mut extra, SLACK),
        "the fourth connection was not closed"
    );
    let after = metric(
        &gw,
        "portcullis_connections_refused_total{reason=\"max_connections_per_ip\"}",
    );
    assert_eq!(after - before, 1.0);
    // Another address is served.
    let r = get_from("127.0.0.3", gw.addr(), "/open/y", SLACK).expect("127.0.0.3 served");
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), 1, "only 127.0.0.3's request went upstream");
    // A slot given back is usable again.
    drop(held);
    assert!(wait_until(SLACK * 2, || get_from(
        "127.0.0.2",
        gw.addr(),
        "/open/z",
        SLACK
    )
    .is_ok_and(|r| r.status == 200)));
}

#[test]
fn the_global_cap_counts_every_address_and_trusted_proxies_are_exempt_from_the_per_ip_cap() {
    let up = MockUpstream::start();
    let gw = gateway(
        &up,
        &[
            "max_connections = 4",
            "max_connections_per_ip = 1",
            "trusted_proxies = [\"127.0.0.9\"]",
            "header_timeout_ms = 10000",
        ],
    );
    // A trusted proxy may hold more than max_connections_per_ip.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from("127.0.0.9", gw.addr()).expect("connect");
        s.write_all(b"GET /open/p HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .expect("write");
        s.set_read_timeout(Some(SLACK * 2)).ok();
        let mut b = [0u8; 12];
        s.read_exact(&mut b).expect("the trusted proxy is answered");
        assert_eq!(&b, b"HTTP/1.1 200", "{:?}", String::from_utf8_lossy(&b));
        held.push(s);
    }
    for src in ["127.0.0.4", "127.0.0.5"] {
        held.push(connect_from(src, gw.addr()).expect("connect"));
    }
    std::thread::sleep(ms(100));
    let before = metric(
        &gw,
        "portcullis_connections_refused_total{reason=\"max_connections\"}",
    );
    let mut fifth = connect_from("127.0.0.6", gw.addr()).expect("connect");
    assert!(
        closed_unanswered(&mut fifth, SLACK),
        "the fifth connection was not closed"
    );
    assert_eq!(
        metric(
            &gw,
            "portcullis_connections_refused_total{reason=\"max_connections\"}"
        ) - before,
        1.0
    );
    held.pop();
    assert!(wait_until(SLACK * 2, || get_from(
        "127.0.0.6",
        gw.addr(),
        "/open/q",
        SLACK
    )
    .is_ok_and(|r| r.status == 200)));
}

#[test]
fn a_legitimate_client_is_served_quickly_during_a_slow_flood_from_one_address() {
    let up = MockUpstream::start();
    let gw = gateway(
        &up,
        &["max_connections_per_ip = 20", "header_timeout_ms = 10000"],
    );
    let stop = Arc::new(AtomicBool::new(false));
    // 1,000 connections from one address, each sending a head a line at a time.
    let flooders: Vec<_> = (0..4)
        .map(|t| {
            let stop = stop.clone();
            let addr = gw.addr();
            std::thread::spawn(move || {
                let mut socks = Vec::new();
                for _ in 0..250 {
                    if let Ok(mut s) = connect_from("127.0.1.1", addr) {
                        let _ = s.write_all(b"GET /open/flood HTTP/1.1\r\n");
                        socks.push(s);
                    }
                }
                let mut line = 0;
                while !stop.load(Ordering::Relaxed) {
                    for s in &mut socks {
                        let _ = s.write_all(format!("X-{t}-{line}: slow\r\n").as_bytes());
                    }
                    line += 1;
                    std::thread::sleep(ms(300));
                }
                socks.len()
            })
        })
        .collect();
    std::thread::sleep(ms(500));
    let started = Instant::now();
    let r = get_from("127.0.2.2", gw.addr(), "/open/legit", SLACK);
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let connected: usize = flooders.into_iter().map(|f| f.join().unwrap_or(0)).sum();
    let r = r.expect("the legitimate request was not answered");
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(connected, 1000, "the flood did not open its connections");
    assert!(
        metric(
            &gw,
            "portcullis_connections_refused_total{reason=\"max_connections_per_ip\"}"
        ) >= 980.0
    );
    let flooded: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|r| r.path() == "/open/flood")
        .collect();
    assert!(flooded.is_empty(), "a flood request was forwarded");
}

// === 5. one answer shape ===

#[test]
fn what_pingora_would_refuse_bare_gets_the_gateway_json_answer() {
    let up = MockUpstream::start();
    let gw = gateway(&up, &[]);
    let cases: [(&str, &[u8], &str); 8] = [
        (
            "absolute-form naming another host",
            b"GET http://other.example/open/a HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            "invalid_request_target",
        ),
        (
            "conflicting Content-Length",
            b"POST /stream/a HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            "invalid_framing",
        ),
        (
            "Transfer-Encoding: gzip",
            b"POST /stream/a HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip\r\n\r\nabc",
            "invalid_framing",
        ),
        (
            "two Host headers",
            b"GET /open/a HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: other.example\r\n\r\n",
            "duplicate_header",
        ),
        (
            "non-UTF-8 target",
            b"GET /open/a\xC3\x28 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            "invalid_path",
        ),
        (
            "CONNECT",
            b"CONNECT other.example:443 HTTP/1.1\r\nHost: other.example:443\r\n\r\n",
            "invalid_request_target",
        ),
        (
            "a quote in the query",
            b"GET /open/a?q=\"x\" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            "invalid_request_target",
        ),
        (
            "not HTTP at all",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 garbage\r\n\r\n",
            "invalid_request_target",
        ),
    ];
    let mut checks = Cases::new();
    for (label, bytes, code) in cases {
        let mut with_id = bytes.to_vec();
        if let Some(i) = with_id.windows(4).position(|w| w == b"\r\n\r\n") {
            if !label.contains("HTTP") {
                with_id.splice(
                    i + 2..i + 2,
                    b"X-Request-Id: edge-case-1\r\n".iter().copied(),
                );
            }
        }
        match try_send_raw(gw.addr(), &with_id) {
            Ok(resp) => {
                let mut problems = refusal_problems(&resp, 400, code, &up);
                if resp
                    .header_all("server")
                    .iter()
                    .any(|v| v.to_ascii_lowercase().contains("pingora"))
                {
                    problems.push("Server: Pingora".into());
                }
                if !label.contains("HTTP") && resp.header("x-request-id") != Some("edge-case-1") {
                    problems.push("the client's X-Request-Id was not kept".into());
                }
                checks.check(label, problems, Some(&resp));
                up.clear();
            }
            Err(e) => checks.fail(label, format!("no response: {e}")),
        }
    }
    checks.finish();
}

// === TLS ===

#[test]
fn a_tls_listener_still_serves_and_bounds_the_handshake() {
    let dir = std::env::temp_dir().join(format!("portcullis-edge-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .expect("self-signed certificate");
    let cert_pem = certified.cert.pem();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &cert_pem).expect("write cert");
    std::fs::write(&key, certified.key_pair.serialize_pem()).expect("write key");
    let up = MockUpstream::start();
    let tls = format!(
        "tls = {{ cert_file = {}, key_file = {} }}",
        toml_str(&cert.to_string_lossy()),
        toml_str(&key.to_string_lossy())
    );
    let gw = gateway(&up, &[&tls]);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).expect("PEM"))
        .tls_built_in_root_certs(false)
        .resolve("localhost", gw.addr())
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let url = format!("https://localhost:{}/open/tls", gw.addr().port());
    let statuses: Vec<u16> = rt.block_on(async {
        let mut out = Vec::new();
        // Two on one pooled connection: keep-alive over TLS.
        for _ in 0..2 {
            let r = client.get(&url).send().await.expect("HTTPS GET");
            out.push(r.status().as_u16());
            let _ = r.bytes().await;
        }
        out
    });
    assert_eq!(statuses, vec![200, 200]);
    assert_eq!(up.count(), 2);

    // A client that never completes its handshake is let go in time.
    let c = Conn::open(gw.addr());
    let closed = c
        .wait_closed(ms(HEADER_TIMEOUT_MS) + SLACK * 2)
        .expect("never closed");
    assert!(closed - c.opened <= ms(HEADER_TIMEOUT_MS) + SLACK);
    let _ = std::fs::remove_dir_all(&dir);
}

// === 4. no log amplification ===

type Captured = Mutex<Vec<(tracing::Level, String)>>;

fn captured() -> &'static Captured {
    static LOG: OnceLock<Captured> = OnceLock::new();
    LOG.get_or_init(|| Mutex::new(Vec::new()))
}

struct Capture;

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut text = format!("{}: ", event.metadata().target());
        event.record(&mut Fields(&mut text));
        captured()
            .lock()
            .unwrap()
            .push((*event.metadata().level(), text));
    }
}

/// Every WARN and ERROR event of this test process, pingora's `log` records
/// included, from the first gateway on.
fn log_capture() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        use tracing_subscriber::Layer;
        let _ = tracing_subscriber::registry()
            .with(Capture.with_filter(tracing_subscriber::filter::LevelFilter::WARN))
            .try_init();
    });
}

#[test]
fn clients_that_hang_up_time_out_or_send_garbage_cost_no_error_lines() {
    let up = MockUpstream::start();
    let gw = gateway(&up, &[]);
    let start = captured().lock().unwrap().len();
    for i in 0..30 {
        // Hang up mid-head, mid-body, and right after connecting.
        let mut s = TcpStream::connect(gw.addr()).expect("connect");
        match i % 5 {
            0 => drop(s.write_all(b"GET /open/a HTTP/1.1\r\nHost: 1")),
            1 => drop(s.write_all(
                b"POST /stream/a HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nabc",
            )),
            2 => drop(s.write_all(
                b"POST /checked/a HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
            )),
            3 => drop(s.write_all(b"\x00\x01garbage\r\n\r\n")),
            _ => {}
        }
        drop(s);
    }
    // Time out: a stalled head and a stalled body.
    let mut stalled: Vec<TcpStream> = Vec::new();
    for bytes in [
        &b"GET /open/a HTTP/1.1\r\n"[..],
        b"POST /stream/a HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\nab",
    ] {
        let mut s = TcpStream::connect(gw.addr()).expect("connect");
        s.write_all(bytes).expect("write");
        stalled.push(s);
    }
    std::thread::sleep(ms(HEADER_TIMEOUT_MS.max(BODY_TIMEOUT_MS)) + SLACK);
    drop(stalled);
    // The gateway is still fine.
    let r = gw.request("GET", "/open/after", &[], None);
    assert_eq!(r.status, 200, "{}", r.describe());
    std::thread::sleep(ms(200));
    let log = captured().lock().unwrap();
    let errors: Vec<&String> = log[start..]
        .iter()
        .filter(|(level, _)| *level == tracing::Level::ERROR)
        .map(|(_, t)| t)
        .collect();
    assert!(errors.is_empty(), "ERROR lines: {errors:#?}");
    let warnings = log[start..].len();
    assert!(
        warnings <= 5,
        "{warnings} warnings for 32 misbehaving clients: {:#?}",
        &log[start..]
    );
}

// === config ===

#[test]
fn the_edge_keys_are_validated_with_their_key_paths() {
    for (line, path) in [
        ("keepalive_timeout_ms = 0", "server.keepalive_timeout_ms"),
        ("max_connections = 0", "server.max_connections"),
        (
            "max_connections_per_ip = -1",
            "server.max_connections_per_ip",
        ),
        ("max_connection = 5", "max_connection"),
    ] {
        let config = ConfigBuilder::new().server(line).build();
        let err = portcullis::config::load_str(&config, &inline_config_origin())
            .err()
            .unwrap_or_else(|| panic!("{line:?} was accepted"))
            .to_string();
        assert!(err.contains(path), "{line:?}: {err}");
    }
    let loaded =
        portcullis::config::load_str(&ConfigBuilder::new().build(), &inline_config_origin())
            .unwrap_or_else(|e| panic!("{e}"));
    let server = &loaded.config.server;
    assert_eq!(server.keepalive_timeout, Duration::from_secs(60));
    assert_eq!(server.max_connections, 10_000);
    assert_eq!(server.max_connections_per_ip, 256);
}
