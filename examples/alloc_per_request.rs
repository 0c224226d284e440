//! Heap allocations per request on the gateway's request path (issue 17).
//!
//! One process holds everything, on 127.0.0.1 ephemeral ports: a minimal
//! upstream and a client that allocate nothing per request (fixed buffers,
//! pre-built request bytes, keep-alive std sockets), the gateway
//! (`server::start_in_thread`, audit off, one thread) and a bare pingora
//! proxy (the `ProxyHttp` of `examples/bare_pingora.rs`). The global allocator
//! is mimalloc, as in `src/main.rs`, wrapped in relaxed atomic counters. For
//! each target the client warms up, the counters are read, N requests are
//! sent, the counters are read again: the difference divided by N is what one
//! request costs the process. A control run of the client straight against
//! the upstream shows the harness's own share (~0).
//!
//! `cargo run --release --example alloc_per_request [N]` (default 20000).
//! `ALLOC_TRACE=1` also samples one allocation in 197 during each measured
//! window with its backtrace and prints the most frequent call sites per
//! target (15, or `ALLOC_TOP`), each under its owner: the innermost frame in
//! Portcullis or in pingora-proxy / pingora-core. Slow (symbolising a
//! backtrace takes milliseconds): use a smaller N, e.g. 4000.

#[path = "../benches/common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use jsonwebtoken::Algorithm;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

// === the counting allocator ===

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);
/// Bytes asked for: the size of each allocation, the new size of each realloc.
static BYTES: AtomicU64 = AtomicU64::new(0);

/// Backtrace sampling is on (ALLOC_TRACE=1, measured window only).
static TRACING: AtomicBool = AtomicBool::new(false);
static SAMPLE: AtomicU64 = AtomicU64::new(0);
/// Prime, so that a request's fixed pattern of allocations is sampled at
/// every position alike.
const SAMPLE_EVERY: u64 = 197;
static SITES: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);

thread_local! {
    /// Set while this thread records a sample: the recording's own
    /// allocations are neither counted nor sampled.
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
}

struct Counting;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

impl Counting {
    fn count(&self, size: usize, realloc: bool) {
        if IN_TRACE.with(Cell::get) {
            return;
        }
        if realloc {
            REALLOCS.fetch_add(1, Relaxed);
        } else {
            ALLOCS.fetch_add(1, Relaxed);
        }
        BYTES.fetch_add(size as u64, Relaxed);
        if TRACING.load(Relaxed) && SAMPLE.fetch_add(1, Relaxed).is_multiple_of(SAMPLE_EVERY) {
            IN_TRACE.with(|t| t.set(true));
            record_site();
            IN_TRACE.with(|t| t.set(false));
        }
    }
}

// SAFETY: every call is forwarded unchanged to mimalloc; the counters are
// atomics that never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.count(layout.size(), false);
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.count(layout.size(), false);
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.count(new_size, true);
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

/// Frames that say nothing about who asked for the memory.
fn is_plumbing(function: &str) -> bool {
    const SKIP: [&str; 12] = [
        "std::backtrace",
        "alloc_per_request::",
        "__rustc",
        "__rust_",
        "alloc::alloc",
        "alloc::raw_vec",
        "core::ops::function",
        "std::rt::",
        "alloc::vec::",
        "alloc::boxed::",
        "alloc::string::",
        "core::ptr::",
    ];
    SKIP.iter().any(|s| function.contains(s))
}

/// Records one sampled allocation by its owner — the innermost frame in
/// Portcullis or in pingora's proxy/core crates (libraries they call, such
/// as `http`, `bytes` or `serde_json`, are not owners) — with the frames
/// between the allocator and the owner.
fn record_site() {
    let trace = std::backtrace::Backtrace::force_capture().to_string();
    let mut below: Vec<String> = Vec::new();
    let mut owner = None;
    let mut lines = trace.lines().peekable();
    while let Some(line) = lines.next() {
        let line = line.trim();
        let Some((_, function)) = line.split_once(": ") else {
            continue;
        };
        if !line.starts_with(|c: char| c.is_ascii_digit()) || is_plumbing(function) {
            continue;
        }
        let at = match lines.peek() {
            Some(next) if next.trim().starts_with("at ") => {
                let loc = next.trim().trim_start_matches("at ");
                // `crate-x.y.z/src/file.rs:line`: the crate directory and the rest.
                let (krate, short) = loc.rsplit_once("/src/").map_or(("", loc), |(head, tail)| {
                    (head.rsplit('/').next().unwrap_or(""), tail)
                });
                format!(" ({krate}/{short})")
            }
            _ => String::new(),
        };
        // Drop the hash suffix of a symbol.
        let name = function
            .rsplit_once("::h")
            .filter(|(_, h)| h.len() == 16)
            .map_or(function, |(n, _)| n);
        let frame = format!("{name}{at}");
        let bare = name.trim_start_matches('<');
        if ["portcullis::", "pingora_proxy::", "pingora_core::"]
            .iter()
            .any(|p| bare.starts_with(p))
        {
            owner = Some(frame);
            break;
        }
        if below.len() < 3 {
            below.push(frame);
        }
    }
    let owner = owner.unwrap_or_else(|| "(no portcullis or pingora frame)".to_string());
    let key = if below.is_empty() {
        owner
    } else {
        format!("{owner}\n        via {}", below.join("\n        via "))
    };
    let mut sites = SITES.lock().unwrap_or_else(|e| e.into_inner());
    *sites
        .get_or_insert_with(HashMap::new)
        .entry(key)
        .or_insert(0) += 1;
}

#[derive(Clone, Copy)]
struct Snapshot {
    allocs: u64,
    reallocs: u64,
    bytes: u64,
}

fn snapshot() -> Snapshot {
    Snapshot {
        allocs: ALLOCS.load(Relaxed),
        reallocs: REALLOCS.load(Relaxed),
        bytes: BYTES.load(Relaxed),
    }
}

// === the upstream: a fixed answer, no allocation per request ===

const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let addr = listener.local_addr().expect("upstream address");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_nodelay(true);
            std::thread::spawn(move || {
                // Requests here have no body: a head ends at the blank line.
                let mut buf = [0u8; 16384];
                let mut filled = 0;
                loop {
                    let Ok(n) = conn.read(&mut buf[filled..]) else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    filled += n;
                    while let Some(end) = find(&buf[..filled], b"\r\n\r\n") {
                        if conn.write_all(ANSWER).is_err() {
                            return;
                        }
                        buf.copy_within(end + 4..filled, 0);
                        filled -= end + 4;
                    }
                    if filled == buf.len() {
                        return; // a head over 16 KiB: not from this harness
                    }
                }
            });
        }
    });
    addr
}

// === the client: pre-built requests, fixed buffers ===

struct Client {
    addr: SocketAddr,
    conns: Vec<TcpStream>,
    request: Vec<u8>,
    expect_status: &'static [u8],
    reconnects: u64,
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

/// The value of `Content-Length` in a response head, without allocating.
fn content_length(head: &[u8]) -> usize {
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if line[..colon].eq_ignore_ascii_case(b"content-length") {
            return line[colon + 1..]
                .iter()
                .filter(|b| b.is_ascii_digit())
                .fold(0, |n, &d| n * 10 + usize::from(d - b'0'));
        }
    }
    0
}

/// Sends one request on `conn` and reads its answer. `false` when the
/// connection was closed (the caller reconnects and sends again).
fn exchange(conn: &mut TcpStream, request: &[u8], expect_status: &[u8]) -> bool {
    if conn.write_all(request).is_err() {
        return false;
    }
    let mut buf = [0u8; 8192];
    let mut filled = 0;
    let total = loop {
        let n = match conn.read(&mut buf[filled..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        filled += n;
        if let Some(end) = find(&buf[..filled], b"\r\n\r\n") {
            break end + 4 + content_length(&buf[..end]);
        }
        assert!(filled < buf.len(), "response head over 8 KiB");
    };
    assert!(
        buf[9..12] == *expect_status,
        "unexpected answer: {}",
        String::from_utf8_lossy(&buf[..filled])
    );
    assert!(total <= buf.len(), "response over 8 KiB");
    while filled < total {
        match conn.read(&mut buf[filled..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => filled += n,
        }
    }
    // A closing answer: this connection is done after it.
    find(&buf[..total], b"onnection: close").is_none()
}

impl Client {
    fn new(addr: SocketAddr, path: &str, token: Option<&str>, expect: &'static [u8]) -> Client {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: api.example.com\r\nAccept: */*\r\n{auth}\r\n")
                .into_bytes();
        Client {
            addr,
            conns: (0..CONNECTIONS).map(|_| connect(addr)).collect(),
            request,
            expect_status: expect,
            reconnects: 0,
        }
    }

    /// `n` requests spread over the connections, one thread per connection.
    fn run(&mut self, n: usize) {
        let per_conn = n / self.conns.len();
        let (addr, request, expect) = (self.addr, &self.request, self.expect_status);
        let reconnects: u64 = std::thread::scope(|scope| {
            let workers: Vec<_> = self
                .conns
                .iter_mut()
                .map(|conn| {
                    scope.spawn(move || {
                        let mut reconnects = 0;
                        for _ in 0..per_conn {
                            while !exchange(conn, request, expect) {
                                *conn = connect(addr);
                                reconnects += 1;
                                assert!(reconnects < 1_000_000, "cannot keep a connection");
                            }
                        }
                        reconnects
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().expect("client")).sum()
        });
        self.reconnects += reconnects;
    }
}

const CONNECTIONS: usize = 4;
const WARMUP: usize = 2_000;

// === the bare pingora proxy (examples/bare_pingora.rs) ===

struct Bare {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_error::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn start_bare(listen: SocketAddr, upstream: SocketAddr) {
    let conf = ServerConf {
        threads: 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(
        &server.configuration,
        Bare {
            upstream: upstream.to_string(),
        },
    );
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);
    std::thread::spawn(move || server.run(RunArgs::default()));
}

// === the gateway ===

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_listening(addr: SocketAddr) {
    for _ in 0..200 {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{addr} never listened");
}

fn gateway_config(listen: SocketAddr, admin: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = ["{listen}"]
threads = 1

[admin]
listen = "{admin}"

[log]
level = "warn"
audit = "off"

[[issuers]]
name = "rs"
issuer = "{iss}"
audiences = ["{aud}"]
algorithms = ["RS256"]
jwks_file = "jwks.json"

[[upstreams]]
name = "fast"
url = "http://{upstream}"

[[routes]]
name = "pass"
path = "/pass/{{*rest}}"
upstream = "fast"
auth = "none"

[[routes]]
name = "full-rs"
path = "/rs/{{*rest}}"
upstream = "fast"
issuers = ["rs"]
require_all = ["manageAPIClients"]
ip_allow = ["127.0.0.1/32"]
"#,
        iss = common::ISSUER,
        aud = common::AUDIENCE,
    )
}

// === measuring ===

struct Row {
    name: &'static str,
    allocs: f64,
    reallocs: f64,
    bytes: f64,
}

fn measure(name: &'static str, client: &mut Client, n: usize, trace: bool) -> Row {
    client.run(WARMUP);
    let before = snapshot();
    if trace {
        *SITES.lock().unwrap_or_else(|e| e.into_inner()) = Some(HashMap::new());
        TRACING.store(true, Relaxed);
    }
    client.run(n);
    TRACING.store(false, Relaxed);
    let after = snapshot();
    let per = |a: u64, b: u64| (b - a) as f64 / n as f64;
    if trace {
        print_sites(name, n);
    }
    Row {
        name,
        allocs: per(before.allocs, after.allocs),
        reallocs: per(before.reallocs, after.reallocs),
        bytes: per(before.bytes, after.bytes),
    }
}

fn print_sites(name: &str, n: usize) {
    let sites = SITES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .unwrap_or_default();
    let top = std::env::var("ALLOC_TOP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let mut sites: Vec<_> = sites.into_iter().collect();
    sites.sort_by_key(|s| std::cmp::Reverse(s.1));
    println!("\n== {name}: top call sites (1 sample per {SAMPLE_EVERY} allocations; ≈ per request = samples × {SAMPLE_EVERY} / {n}) ==");
    for (site, count) in sites.iter().take(top) {
        let per_request = *count as f64 * SAMPLE_EVERY as f64 / n as f64;
        println!("{count:6} samples ≈ {per_request:5.2}/req {site}");
    }
    // Every Portcullis owner, however rare: the list to justify or remove.
    let mut owners: HashMap<&str, u64> = HashMap::new();
    for (site, count) in &sites {
        let owner = site.split('\n').next().unwrap_or(site);
        if owner.contains("portcullis::") {
            *owners.entry(owner).or_insert(0) += count;
        }
    }
    let mut owners: Vec<_> = owners.into_iter().collect();
    owners.sort_by_key(|o| std::cmp::Reverse(o.1));
    println!("-- {name}: every Portcullis owner --");
    for (owner, count) in owners {
        let per_request = count as f64 * SAMPLE_EVERY as f64 / n as f64;
        println!("{count:6} samples ≈ {per_request:5.2}/req {owner}");
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("N: a number of requests"))
        .unwrap_or(20_000);
    let n = n.div_ceil(CONNECTIONS) * CONNECTIONS;
    let trace = std::env::var("ALLOC_TRACE").is_ok_and(|v| v == "1");

    let upstream = start_upstream();

    let dir = common::scratch_dir("alloc_per_request");
    let key = common::Key::rsa(Algorithm::RS256, "rs-1");
    std::fs::write(dir.join("jwks.json"), common::jwks(&[&key])).expect("write jwks");
    let token = key.mint(&common::claims(common::ISSUER, 1));
    let gw: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let config = common::load_config(&dir, &gateway_config(gw, admin, upstream));
    let _gateway = portcullis::server::start_in_thread(config).expect("gateway");
    wait_listening(gw);

    let bare: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    start_bare(bare, upstream);
    wait_listening(bare);

    let mut rows = Vec::new();
    let mut control = Client::new(upstream, "/pass/x", None, b"200");
    rows.push(measure(
        "control: client ↔ upstream",
        &mut control,
        n,
        trace,
    ));
    let mut bare_client = Client::new(bare, "/pass/v1.0/apiclients", None, b"200");
    rows.push(measure("bare pingora (floor)", &mut bare_client, n, trace));
    let mut pass = Client::new(gw, "/pass/v1.0/apiclients", None, b"200");
    rows.push(measure("gateway passthrough", &mut pass, n, trace));
    let mut rs = Client::new(gw, "/rs/v1.0/apiclients", Some(&token), b"200");
    rows.push(measure("gateway RS256 (cached)", &mut rs, n, trace));
    let mut refused = Client::new(gw, "/rs/v1.0/apiclients", None, b"401");
    rows.push(measure("gateway refusal (401)", &mut refused, n, trace));

    println!("\n{n} requests per target over {CONNECTIONS} keep-alive connections, after {WARMUP} to warm up");
    println!(
        "{:<28} {:>12} {:>12} {:>12}",
        "target", "allocs/req", "reallocs/req", "bytes/req"
    );
    for r in &rows {
        println!(
            "{:<28} {:>12.2} {:>12.2} {:>12.0}",
            r.name, r.allocs, r.reallocs, r.bytes
        );
    }
    let floor = &rows[1];
    let share = &rows[2];
    println!(
        "{:<28} {:>12.2} {:>12.2} {:>12.0}",
        "passthrough − floor",
        share.allocs - floor.allocs,
        share.reallocs - floor.reallocs,
        share.bytes - floor.bytes
    );
    let reconnects = [
        ("control", control.reconnects),
        ("bare", bare_client.reconnects),
        ("passthrough", pass.reconnects),
        ("rs256", rs.reconnects),
        ("refusal", refused.reconnects),
    ];
    println!("client reconnects: {reconnects:?}");
    std::fs::remove_dir_all(&dir).ok();
    // The bare pingora server runs until the process ends.
    std::process::exit(0);
}
