//! Issue 16 in one process (no `[cluster]`): `[[quotas]]` and the route key
//! `quota`, through real sockets on loopback.
//!
//! * a burst passes at once, the next request gets 429 `rate_limited` with
//!   `Retry-After` (whole seconds, rounded up) and the `RateLimit-Policy` /
//!   `RateLimit` headers of the contract, and is never forwarded; after
//!   `Retry-After` one more passes;
//! * fractional rates, the default burst, keys `client` / `subject` / `ip`,
//!   per-key overrides, quotas shared by routes, routes without a quota;
//! * a request refused by an earlier step (token, entitlements, client
//!   metadata, IP rules, `deny_self`, `pin_headers`) never spends quota;
//! * the quota is decided before the body is read;
//! * `portcullis check` refuses bad `[[quotas]]` / `[cluster]` settings
//!   (exit 64, naming the key), `portcullis explain` shows the quota step
//!   without spending quota, and `/metrics` counts the decisions.
//!
//! Rates are chosen so that no token is refilled while a test sends its
//! burst (one request takes milliseconds; the refill interval is ≥ 1 s)
//! except where a refill is the point.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::child::{explain_quota_line, metric_value, run_portcullis, BinaryOutcome, Scratch};
use common::*;

// === the gateway under test ===

/// A gateway (standard issuer `main`, upstream `app`) in front of a mock
/// upstream.
struct Env {
    up: MockUpstream,
    _jwks: MockJwks,
    gw: TestGateway,
}

/// One request and how many requests it made the upstream see.
struct Sent {
    resp: RawResponse,
    forwarded: usize,
}

impl Env {
    fn start(sections: &str) -> Env {
        Self::start_with(&[], sections)
    }

    /// `server` holds extra `[server]` lines; `sections` the quotas, routes
    /// and anything else.
    fn start_with(server: &[&str], sections: &str) -> Env {
        let up = MockUpstream::start();
        let jwks = MockJwks::start(standard_jwks());
        let mut b = ConfigBuilder::new();
        for l in server {
            b = b.server(l);
        }
        let config = b
            .issuer("main", DEFAULT_ISSUER, &jwks.url(), "")
            .upstream("app", &up.url(), "")
            .raw(sections)
            .build();
        let gw = TestGateway::start(&config);
        Env {
            up,
            _jwks: jwks,
            gw,
        }
    }

    /// Sends bytes on a fresh connection and counts what reached the upstream.
    fn send_bytes(&self, bytes: &[u8]) -> Sent {
        let before = self.up.count();
        let resp = self.gw.send_raw(bytes);
        Sent {
            resp,
            forwarded: self.up.count() - before,
        }
    }

    fn send(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Sent {
        self.send_bytes(&build_request(method, target, headers, body))
    }

    fn get(&self, target: &str, token: &str) -> Sent {
        self.get_with(target, token, &[])
    }

    fn get_with(&self, target: &str, token: &str, extra: &[(&str, &str)]) -> Sent {
        let auth = bearer(token);
        let mut headers = vec![("Authorization", auth.as_str())];
        headers.extend_from_slice(extra);
        self.send("GET", target, &headers, None)
    }

    fn metrics(&self) -> String {
        let admin = self.gw.admin_addr().expect("an admin listener");
        request(admin, "GET", "/metrics", &[], None).body_str()
    }
}

fn token(client: &str) -> String {
    TokenBuilder::new(&TestKey::rsa()).client_id(client).build()
}

// === the rate-limit headers ===

/// A structured-field item `"NAME";k=v;k=v` (the shape of `RateLimit` and
/// `RateLimit-Policy`): the name and the parameters.
fn sf_item(value: &str) -> Option<(String, Vec<(String, String)>)> {
    let v = value.trim().strip_prefix('"')?;
    let end = v.find('"')?;
    let name = v[..end].to_string();
    let mut params = Vec::new();
    for p in v[end + 1..]
        .split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (k, val) = p.split_once('=')?;
        params.push((k.trim().to_string(), val.trim().to_string()));
    }
    Some((name, params))
}

/// The integer parameter `key` of the item in header `header`.
fn sf_param(resp: &RawResponse, header: &str, key: &str) -> Result<(String, u64), String> {
    let value = resp
        .header(header)
        .ok_or_else(|| format!("no {header} header"))?;
    let (name, params) = sf_item(value).ok_or_else(|| format!("{header} {value:?} unparsable"))?;
    let raw = params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .ok_or_else(|| format!("{header} {value:?} has no `{key}`"))?;
    let n = raw
        .parse()
        .map_err(|_| format!("{header} {value:?}: `{key}` is not a non-negative integer"))?;
    Ok((name, n))
}

/// Asserts `RateLimit-Policy: "NAME";q=Q;w=W`.
#[track_caller]
fn assert_policy(resp: &RawResponse, name: &str, q: u64, w: u64, what: &str) {
    let got = (|| -> Result<(String, u64, u64), String> {
        let (n, q) = sf_param(resp, "ratelimit-policy", "q")?;
        let (_, w) = sf_param(resp, "ratelimit-policy", "w")?;
        Ok((n, q, w))
    })();
    assert_eq!(
        got,
        Ok((name.to_string(), q, w)),
        "{what}: RateLimit-Policy (name, q, w) expected {:?}; response: {}",
        format!("\"{name}\";q={q};w={w}"),
        resp.describe()
    );
}

/// The `(r, t)` of `RateLimit: "NAME";r=R;t=T`, asserting the name.
#[track_caller]
fn ratelimit(resp: &RawResponse, name: &str, what: &str) -> (u64, u64) {
    let got = (|| -> Result<(String, u64, u64), String> {
        let (n, r) = sf_param(resp, "ratelimit", "r")?;
        let (_, t) = sf_param(resp, "ratelimit", "t")?;
        Ok((n, r, t))
    })();
    match got {
        Ok((n, r, t)) if n == name => (r, t),
        other => panic!(
            "{what}: RateLimit for {name:?} expected, got {other:?}; response: {}",
            resp.describe()
        ),
    }
}

// === outcomes ===

/// Asserts a 200 that went upstream exactly once.
#[track_caller]
fn assert_admitted(s: &Sent, what: &str) {
    assert!(
        s.resp.status == 200 && s.forwarded == 1,
        "{what}: expected 200 forwarded once, got {} forwarded {} time(s): {}",
        s.resp.status,
        s.forwarded,
        s.resp.describe()
    );
}

/// Asserts a refusal `status` `code` with an `X-Request-Id` that reached
/// nothing upstream.
#[track_caller]
fn assert_refusal(s: &Sent, status: u16, code: &str, what: &str) {
    let mut problems = Vec::new();
    if s.resp.status != status {
        problems.push(format!("status {} (expected {status})", s.resp.status));
    }
    if s.resp.error_code().as_deref() != Some(code) {
        problems.push(format!(
            "error code {:?} (expected {code:?})",
            s.resp.error_code()
        ));
    }
    if s.resp.header("x-request-id").is_none_or(str::is_empty) {
        problems.push("no X-Request-Id".into());
    }
    if s.forwarded != 0 {
        problems.push(format!("the upstream saw {} request(s)", s.forwarded));
    }
    assert!(
        problems.is_empty(),
        "{what}: {}\nresponse: {}",
        problems.join("; "),
        s.resp.describe()
    );
}

/// Asserts 429 `rate_limited`, never forwarded, with an integer
/// `Retry-After` ≥ 1; returns it.
#[track_caller]
fn assert_limited(s: &Sent, what: &str) -> u64 {
    assert_refusal(s, 429, "rate_limited", what);
    let retry: Option<u64> = s
        .resp
        .header("retry-after")
        .and_then(|v| v.trim().parse().ok());
    match retry {
        Some(n) if n >= 1 => n,
        _ => panic!(
            "{what}: Retry-After must be whole seconds >= 1: {}",
            s.resp.describe()
        ),
    }
}

/// Sends `GET target` with `token` until the first 429 (at most `max`);
/// returns how many were admitted and how long that took.
fn admitted_until_limited(env: &Env, target: &str, token: &str, max: usize) -> (usize, Duration) {
    let started = Instant::now();
    for i in 0..max {
        let s = env.get(target, token);
        if s.resp.status == 429 {
            assert_limited(&s, &format!("{target} #{i}"));
            return (i, started.elapsed());
        }
        assert_admitted(&s, &format!("{target} #{i}"));
    }
    panic!("{max} requests to {target} were all admitted");
}

// === burst, refusal, refill ===

const BURST_3: &str = r#"
[[quotas]]
name = "writes"
key = "client"
rate_per_second = 1.0
burst = 3

[[routes]]
name = "limited"
methods = ["GET"]
path = "/limited/{id}"
upstream = "app"
quota = "writes"
"#;

#[test]
fn a_burst_passes_then_429_with_retry_after_and_ratelimit_headers_then_one_more_after_retry_after()
{
    let env = Env::start(BURST_3);
    let t = token("client-1");

    // rate 1/s, burst 3: W = ceil(3 / 1) = 3 s.
    for i in 0..3u64 {
        let s = env.get(&format!("/limited/{i}"), &t);
        let what = format!("burst request {}", i + 1);
        assert_admitted(&s, &what);
        assert_policy(&s.resp, "writes", 3, 3, &what);
        // After the (i+1)-th request, 2 - i remain, and the bucket is full
        // again i + 1 emission intervals (of 1 s) later.
        assert_eq!(
            ratelimit(&s.resp, "writes", &what),
            (2 - i, i + 1),
            "{what}: RateLimit (r, t); response: {}",
            s.resp.describe()
        );
    }
    assert_eq!(env.up.count(), 3, "the upstream saw exactly the burst");

    let s = env.get("/limited/over", &t);
    let retry = assert_limited(&s, "4th request");
    assert_eq!(
        retry,
        1,
        "Retry-After: the next token comes within 1 s: {}",
        s.resp.describe()
    );
    assert_policy(&s.resp, "writes", 3, 3, "the 429");
    assert_eq!(
        ratelimit(&s.resp, "writes", "the 429"),
        (0, 3),
        "RateLimit of the 429 (r, t): nothing left, full again in 3 s: {}",
        s.resp.describe()
    );
    // A refused request does not push the limit further away.
    let s = env.get("/limited/over-again", &t);
    assert_eq!(assert_limited(&s, "5th request"), 1);
    assert_eq!(env.up.count(), 3, "nothing forwarded on a 429");

    std::thread::sleep(Duration::from_secs(retry));
    let s = env.get("/limited/after-wait", &t);
    assert_admitted(&s, "after waiting Retry-After");
    assert_policy(&s.resp, "writes", 3, 3, "after waiting");
    let s = env.get("/limited/after-wait-2", &t);
    assert_limited(&s, "right after the refilled one");
    assert_eq!(env.up.count(), 4);
}

#[test]
fn a_fractional_rate_rounds_retry_after_up_and_burst_defaults_to_the_rate_rounded_up() {
    let env = Env::start(
        r#"
[[quotas]]
name = "slow"
rate_per_second = 0.5

[[quotas]]
name = "odd"
rate_per_second = 2.5

[[routes]]
name = "slow"
path = "/slow/{id}"
upstream = "app"
quota = "slow"

[[routes]]
name = "odd"
path = "/odd/{id}"
upstream = "app"
quota = "odd"
"#,
    );
    let t = token("client-1");

    // 0.5/s: default burst ceil(0.5) = 1, W = ceil(1 / 0.5) = 2 s.
    let s = env.get("/slow/1", &t);
    assert_admitted(&s, "slow #1");
    assert_policy(&s.resp, "slow", 1, 2, "slow #1");
    let s = env.get("/slow/2", &t);
    let retry = assert_limited(&s, "slow #2");
    assert_eq!(
        retry,
        2,
        "Retry-After rounds 2 s - ε up to 2: {}",
        s.resp.describe()
    );
    assert_eq!(
        ratelimit(&s.resp, "slow", "slow #2"),
        (0, 2),
        "{}",
        s.resp.describe()
    );

    // 2.5/s: default burst ceil(2.5) = 3, W = ceil(3 / 2.5) = 2 s.
    let s = env.get("/odd/0", &t);
    assert_admitted(&s, "odd #0");
    assert_policy(&s.resp, "odd", 3, 2, "odd #0");
    let (admitted, took) = admitted_until_limited(&env, "/odd/n", &t, 10);
    let admitted = admitted + 1;
    // A token comes back every 0.4 s: allow for a slow machine.
    let refilled = (took.as_secs_f64() * 2.5).floor() as usize;
    assert!(
        (3..=3 + refilled).contains(&admitted),
        "default burst 3: {admitted} admitted in {took:?}"
    );
}

// === keys ===

#[test]
fn the_client_key_keeps_a_bucket_per_client_and_one_for_tokens_without_a_client_id() {
    let env = Env::start(
        r#"
[[quotas]]
name = "per-client"
key = "client"
rate_per_second = 0.2
burst = 2

[[routes]]
name = "r"
path = "/r/{id}"
upstream = "app"
quota = "per-client"
"#,
    );
    let a = token("client-a");
    let b = token("client-b");
    for i in 0..2 {
        assert_admitted(&env.get("/r/x", &a), &format!("client-a #{i}"));
    }
    assert_limited(&env.get("/r/x", &a), "client-a over its burst");
    for i in 0..2 {
        assert_admitted(
            &env.get("/r/x", &b),
            &format!("client-b #{i}, after client-a ran out"),
        );
    }
    assert_limited(&env.get("/r/x", &b), "client-b over its burst");

    // Tokens without a client id share one bucket, whatever their subject.
    let anon = |sub: &str| {
        TokenBuilder::new(&TestKey::rsa())
            .without("client_id")
            .sub(sub)
            .build()
    };
    assert_admitted(&env.get("/r/x", &anon("s-1")), "no client id, sub s-1");
    assert_admitted(&env.get("/r/x", &anon("s-2")), "no client id, sub s-2");
    assert_limited(
        &env.get("/r/x", &anon("s-3")),
        "no client id, sub s-3: the shared bucket is spent",
    );
    assert_eq!(env.up.count(), 6);
}

#[test]
fn the_subject_key_keeps_a_bucket_per_subject_across_clients() {
    let env = Env::start(
        r#"
[[quotas]]
name = "per-subject"
key = "subject"
rate_per_second = 0.2
burst = 2

[[routes]]
name = "r"
path = "/r/{id}"
upstream = "app"
quota = "per-subject"
"#,
    );
    let tok = |client: &str, sub: &str| {
        TokenBuilder::new(&TestKey::rsa())
            .client_id(client)
            .sub(sub)
            .build()
    };
    assert_admitted(&env.get("/r/x", &tok("client-1", "alice")), "alice via 1");
    assert_admitted(&env.get("/r/x", &tok("client-2", "alice")), "alice via 2");
    assert_limited(
        &env.get("/r/x", &tok("client-3", "alice")),
        "alice via a third client: one bucket per subject",
    );
    assert_admitted(&env.get("/r/x", &tok("client-1", "bob")), "bob #1");
    assert_admitted(&env.get("/r/x", &tok("client-1", "bob")), "bob #2");
    assert_limited(&env.get("/r/x", &tok("client-1", "bob")), "bob #3");

    let no_sub = |client: &str| {
        TokenBuilder::new(&TestKey::rsa())
            .client_id(client)
            .without("sub")
            .build()
    };
    assert_admitted(&env.get("/r/x", &no_sub("client-7")), "no sub #1");
    assert_admitted(&env.get("/r/x", &no_sub("client-8")), "no sub #2");
    assert_limited(
        &env.get("/r/x", &no_sub("client-9")),
        "tokens without sub share one bucket",
    );
    assert_eq!(env.up.count(), 6);
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

/// `GET target` (with `Connection: close`) from `src`, read to the end
/// (10 s at most).
fn get_from(env: &Env, src: &str, target: &str) -> Sent {
    let before = env.up.count();
    let mut s = connect_from(src, env.gw.addr()).unwrap_or_else(|e| panic!("connect: {e}"));
    s.set_read_timeout(Some(Duration::from_millis(200))).ok();
    s.write_all(&build_request("GET", target, &[], None))
        .expect("write");
    let deadline = Instant::now() + RESPONSE_TIMEOUT;
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    while Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response from {src}: {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line from {src}: {text:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let resp = RawResponse {
        status,
        headers,
        body: body.as_bytes().to_vec(),
    };
    Sent {
        resp,
        forwarded: env.up.count() - before,
    }
}

#[test]
fn the_ip_key_keeps_a_bucket_per_client_address() {
    let env = Env::start(
        r#"
[[quotas]]
name = "per-ip"
key = "ip"
rate_per_second = 0.2
burst = 2

[[routes]]
name = "public"
methods = ["GET"]
path = "/public/{id}"
upstream = "app"
auth = "none"
quota = "per-ip"
"#,
    );
    for i in 0..2 {
        assert_admitted(
            &get_from(&env, "127.0.0.2", "/public/x"),
            &format!("127.0.0.2 #{i}"),
        );
    }
    let s = get_from(&env, "127.0.0.2", "/public/x");
    assert_limited(&s, "127.0.0.2 over its burst");
    assert_policy(&s.resp, "per-ip", 2, 10, "127.0.0.2 429");
    for i in 0..2 {
        assert_admitted(
            &get_from(&env, "127.0.0.3", "/public/x"),
            &format!("127.0.0.3 #{i}, after 127.0.0.2 ran out"),
        );
    }
    assert_limited(
        &get_from(&env, "127.0.0.3", "/public/x"),
        "127.0.0.3 over its burst",
    );
    assert_eq!(env.up.count(), 4);
}

// === overrides, shared quotas, routes without a quota ===

#[test]
fn an_override_gives_a_named_client_its_own_limits() {
    // Integers for rate_per_second, as in the contract's example.
    let env = Env::start(
        r#"
[[quotas]]
name = "tiered"
key = "client"
rate_per_second = 1
burst = 2
overrides = { "batch-job" = { rate_per_second = 0.2, burst = 6 } }

[[routes]]
name = "r"
path = "/r/{id}"
upstream = "app"
quota = "tiered"
"#,
    );
    let batch = token("batch-job");
    for i in 0..6 {
        let s = env.get("/r/x", &batch);
        assert_admitted(&s, &format!("batch-job #{i}"));
        if i == 0 {
            // W = ceil(6 / 0.2) = 30 s.
            assert_policy(&s.resp, "tiered", 6, 30, "batch-job");
        }
    }
    assert_limited(&env.get("/r/x", &batch), "batch-job over its own burst");

    let other = token("client-1");
    let s = env.get("/r/x", &other);
    assert_admitted(&s, "client-1 #0");
    assert_policy(&s.resp, "tiered", 2, 2, "client-1");
    assert_admitted(&env.get("/r/x", &other), "client-1 #1");
    assert_limited(&env.get("/r/x", &other), "client-1 over the default burst");
    assert_eq!(env.up.count(), 8);
}

#[test]
fn routes_sharing_a_quota_share_its_counters_and_a_route_without_one_is_never_limited() {
    let env = Env::start(
        r#"
[[quotas]]
name = "shared"
rate_per_second = 0.2
burst = 3

[[quotas]]
name = "twin"
rate_per_second = 0.2
burst = 3

[[routes]]
name = "a"
path = "/a/{id}"
upstream = "app"
quota = "shared"

[[routes]]
name = "b"
path = "/b/{id}"
upstream = "app"
quota = "shared"

[[routes]]
name = "c"
path = "/c/{id}"
upstream = "app"
quota = "twin"

[[routes]]
name = "free"
path = "/free/{id}"
upstream = "app"
"#,
    );
    let t = token("client-1");
    assert_admitted(&env.get("/a/1", &t), "a #1");
    let s = env.get("/b/1", &t);
    assert_admitted(&s, "b #1");
    assert_eq!(
        ratelimit(&s.resp, "shared", "b #1").0,
        1,
        "route b sees what route a spent: {}",
        s.resp.describe()
    );
    assert_admitted(&env.get("/a/2", &t), "a #2");
    assert_limited(&env.get("/b/2", &t), "b after the shared burst");
    assert_limited(&env.get("/a/3", &t), "a after the shared burst");

    // Another quota with the same limits has counters of its own.
    assert_admitted(&env.get("/c/1", &t), "c, on its own quota");

    for i in 0..20 {
        let s = env.get(&format!("/free/{i}"), &t);
        assert_admitted(&s, &format!("free #{i}"));
        assert!(
            s.resp.header("ratelimit").is_none() && s.resp.header("ratelimit-policy").is_none(),
            "a route without a quota carries no rate-limit headers: {}",
            s.resp.describe()
        );
    }
    assert_eq!(env.up.count(), 24);
}

// === refused earlier: never spends quota ===

/// Flips one bit of the signature.
fn corrupt_signature(token: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let (msg, sig) = token.rsplit_once('.').expect("a JWT");
    let mut bytes = URL_SAFE_NO_PAD.decode(sig).expect("base64url signature");
    bytes[0] ^= 1;
    format!("{msg}.{}", URL_SAFE_NO_PAD.encode(bytes))
}

#[test]
fn a_request_refused_by_an_earlier_step_never_spends_quota() {
    let env = Env::start_with(
        &["trusted_proxies = [\"127.0.0.1/32\"]"],
        r#"
[[quotas]]
name = "strict"
key = "client"
rate_per_second = 0.1
burst = 3

[clients]
source = "static"

[[clients.static]]
client_id = "client-1"
id = "rec-1"
enabled = true
entitlements = ["manageAPIClients"]
ip_filter_op = "deny"
ip_filters = ["10.66.0.0/16"]

[[clients.static]]
client_id = "off"
enabled = false
entitlements = ["manageAPIClients"]

[[routes]]
name = "guarded"
methods = ["GET"]
path = "/guarded/{id}"
upstream = "app"
require_all = ["manageAPIClients"]
deny_self = "id"
ip_deny = ["10.77.0.0/16"]
pin_headers = { "X-Org" = "oid" }
quota = "strict"
"#,
    );
    let claims = |b: TokenBuilder| {
        b.client_id("client-1")
            .entitlements(&["manageAPIClients"])
            .claim("oid", serde_json::json!("org-1"))
    };
    let good = claims(TokenBuilder::new(&TestKey::rsa())).build();
    let expired = claims(TokenBuilder::new(&TestKey::rsa()))
        .iat(now() - 600)
        .exp_in(-300)
        .build();
    let unentitled = TokenBuilder::new(&TestKey::rsa())
        .client_id("client-1")
        .entitlements(&[])
        .claim("oid", serde_json::json!("org-1"))
        .build();
    let bad_sig = corrupt_signature(&good);
    let other_client = |id: &str| {
        claims(TokenBuilder::new(&TestKey::rsa()))
            .client_id(id)
            .build()
    };
    let (ghost, off) = (other_client("ghost"), other_client("off"));
    let org = ("X-Org", "org-1");
    // The peer (127.0.0.1) is a trusted proxy: every request names its
    // client, an allowed address unless the case is about IP rules.
    let fine_ip = ("X-Forwarded-For", "192.0.2.10");

    let mut cases = Cases::new();
    // Every refusal but the last two is client-1's, so each would spend
    // client-1's bucket if the quota came first; the metrics below show
    // that none of them reached the quota step.
    let refusals: Vec<(&str, Sent, u16, &str)> = (0..4)
        .flat_map(|_| {
            vec![
                (
                    "bad signature",
                    env.get_with("/guarded/other", &bad_sig, &[org, fine_ip]),
                    401,
                    "bad_signature",
                ),
                (
                    "expired token",
                    env.get_with("/guarded/other", &expired, &[org, fine_ip]),
                    401,
                    "token_expired",
                ),
                (
                    "missing entitlement",
                    env.get_with("/guarded/other", &unentitled, &[org, fine_ip]),
                    403,
                    "insufficient_entitlements",
                ),
                (
                    "client IP filter",
                    env.get_with(
                        "/guarded/other",
                        &good,
                        &[org, ("X-Forwarded-For", "10.66.1.1")],
                    ),
                    403,
                    "client_ip_denied",
                ),
                (
                    "route ip_deny",
                    env.get_with(
                        "/guarded/other",
                        &good,
                        &[org, ("X-Forwarded-For", "10.77.1.1")],
                    ),
                    403,
                    "ip_denied",
                ),
                (
                    "deny_self",
                    env.get_with("/guarded/client-1", &good, &[org, fine_ip]),
                    403,
                    "self_modification",
                ),
                (
                    "unknown client",
                    env.get_with("/guarded/other", &ghost, &[org, fine_ip]),
                    403,
                    "unknown_client",
                ),
                (
                    "disabled client",
                    env.get_with("/guarded/other", &off, &[org, fine_ip]),
                    403,
                    "client_disabled",
                ),
                (
                    "pin_headers",
                    env.get_with("/guarded/other", &good, &[("X-Org", "org-2"), fine_ip]),
                    403,
                    "pinned_header_mismatch",
                ),
            ]
        })
        .collect();
    for (label, s, status, code) in &refusals {
        let mut problems = Vec::new();
        if s.resp.status != *status {
            problems.push(format!("status {} (expected {status})", s.resp.status));
        }
        if s.resp.error_code().as_deref() != Some(*code) {
            problems.push(format!(
                "error {:?} (expected {code:?})",
                s.resp.error_code()
            ));
        }
        if s.forwarded != 0 {
            problems.push("forwarded".into());
        }
        cases.check(label, problems, Some(&s.resp));
    }
    cases.finish();

    // client-1's whole burst is still there.
    for i in 0..3 {
        let s = env.get_with("/guarded/other", &good, &[org, fine_ip]);
        assert_admitted(&s, &format!("valid request #{i} after 36 refusals"));
    }
    assert_limited(
        &env.get_with("/guarded/other", &good, &[org, fine_ip]),
        "over the burst",
    );
    // The quota step decided four requests, no more.
    let m = env.metrics();
    let decided = |outcome: &str| {
        metric_value(
            &m,
            "portcullis_quota_decisions_total",
            &[("route", "guarded"), ("outcome", outcome)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(
        (decided("allowed"), decided("limited")),
        (3.0, 1.0),
        "quota decisions on route guarded (allowed, limited):\n{m}"
    );
}

// === before the body ===

#[test]
fn over_quota_is_refused_before_the_body_is_read() {
    let env = Env::start_with(
        &["body_timeout_ms = 5000"],
        r#"
[[quotas]]
name = "uploads"
rate_per_second = 0.1
burst = 1

[[routes]]
name = "upload"
methods = ["PUT"]
path = "/upload/{id}"
upstream = "app"
quota = "uploads"

[routes.body]
json = true
"#,
    );
    let t = token("client-1");
    let auth = bearer(&t);
    let s = env.send(
        "PUT",
        "/upload/1",
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        Some(br#"{"name":"one"}"#),
    );
    assert_admitted(&s, "the burst of one");

    let head = |extra: &str| {
        format!(
            "PUT /upload/2 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n\
             Content-Type: application/json\r\n{extra}\r\n"
        )
        .into_bytes()
    };
    let mut partial_large = head("Content-Length: 60000\r\n");
    partial_large.extend_from_slice(&[b' '; 1000]);
    let mut unfinished_chunked = head("Transfer-Encoding: chunked\r\n");
    unfinished_chunked.extend_from_slice(b"5\r\n{\"a\":\r\n");
    for (label, bytes) in [
        (
            "head announcing 100 bytes, no body sent",
            head("Content-Length: 100\r\n"),
        ),
        ("1,000 of 60,000 announced bytes", partial_large),
        ("a chunked body that never ends", unfinished_chunked),
    ] {
        let started = Instant::now();
        let s = env.send_bytes(&bytes);
        let took = started.elapsed();
        assert_limited(&s, label);
        // Waiting for the body would take body_timeout_ms (5 s) and end in 408.
        assert!(
            took < Duration::from_secs(1),
            "{label}: the 429 took {took:?}: the gateway waited for the body"
        );
    }
    assert_eq!(env.up.count(), 1);
}

// === portcullis check ===

/// A config from its `[[quotas]]`, `[[routes]]` and `[cluster]` parts (the
/// `CHECK_*` constants make a valid one; the cases break one part).
fn check_config(quotas: &str, routes: &str, cluster: &str) -> String {
    ConfigBuilder::new()
        .issuer("main", DEFAULT_ISSUER, "http://127.0.0.1:1/jwks", "")
        .upstream("app", "http://127.0.0.1:1", "")
        .raw(quotas)
        .raw(routes)
        .raw(cluster)
        .build()
}

const CHECK_QUOTA: &str = r#"
[[quotas]]
name = "q"
key = "client"
rate_per_second = 2.0
burst = 5
overrides = { "batch-job" = { rate_per_second = 50, burst = 100 } }
"#;

const CHECK_ROUTES: &str = r#"
[[routes]]
name = "r"
path = "/r/{id}"
upstream = "app"
quota = "q"

[[routes]]
name = "open"
path = "/open"
upstream = "app"
auth = "none"
"#;

const CHECK_CLUSTER: &str = r#"
[cluster]
redis_url = "redis://127.0.0.1:6379/0"
redis_password_env = "PORTCULLIS_TEST_NEVER_SET_REDIS_PW"
key_prefix = "portcullis:"
on_redis_error = "local"
timeout_ms = 50
"#;

/// A broken config for `check`: label, `[[quotas]]`, `[[routes]]`,
/// `[cluster]`, and the words one stderr line must hold (any of the lists).
type BadConfig<'a> = (&'a str, String, String, String, Vec<Vec<&'a str>>);

fn check(dir: &Scratch, name: &str, toml: &str) -> BinaryOutcome {
    let path = dir.write(name, toml.as_bytes());
    run_portcullis(
        &["check".as_ref(), "--config".as_ref(), path.as_os_str()],
        &[],
        Duration::from_secs(30),
    )
}

#[test]
fn check_refuses_bad_quota_and_cluster_settings_naming_the_key() {
    let dir = Scratch::new("quota-check");
    let valid = check_config(CHECK_QUOTA, CHECK_ROUTES, CHECK_CLUSTER);
    let out = check(&dir, "valid.toml", &valid);
    assert_eq!(
        out.code,
        Some(0),
        "the valid quota + cluster config must pass check:\n{}\n--- config ---\n{valid}",
        out.all()
    );
    let rs = |from: &str, to: &str| CHECK_ROUTES.replacen(from, to, 1);
    let qs = |from: &str, to: &str| CHECK_QUOTA.replacen(from, to, 1);
    let cs = |from: &str, to: &str| CHECK_CLUSTER.replacen(from, to, 1);
    let client_on_public = format!(
        "{CHECK_ROUTES}\n[[routes]]\nname = \"open-limited\"\npath = \"/open2\"\nupstream = \"app\"\nauth = \"none\"\nquota = \"q\"\n"
    );
    let subject_on_public = client_on_public.clone();
    let cases: Vec<BadConfig> = vec![
        (
            "route quota naming no [[quotas]]",
            CHECK_QUOTA.into(),
            rs("quota = \"q\"", "quota = \"nope\""),
            CHECK_CLUSTER.into(),
            vec![vec!["routes[0].quota"]],
        ),
        (
            "two quotas with one name",
            format!("{CHECK_QUOTA}\n[[quotas]]\nname = \"q\"\nrate_per_second = 1.0\n"),
            CHECK_ROUTES.into(),
            CHECK_CLUSTER.into(),
            vec![vec!["quotas[1].name"]],
        ),
        (
            "rate 0",
            qs("rate_per_second = 2.0", "rate_per_second = 0.0"),
            CHECK_ROUTES.into(),
            CHECK_CLUSTER.into(),
            vec![vec!["quotas[0].rate_per_second"]],
        ),
        (
            "negative rate",
            qs("rate_per_second = 2.0", "rate_per_second = -1.0"),
            CHECK_ROUTES.into(),
            CHECK_CLUSTER.into(),
            vec![vec!["quotas[0].rate_per_second"]],
        ),
        (
            "rate nan",
            qs("rate_per_second = 2.0", "rate_per_second = nan"),
            CHECK_ROUTES.into(),
            CHECK_CLUSTER.into(),
            vec![vec!["quotas[0].rate_per_second"]],
        ),
        (
            "rate inf",
            qs("rate_per_second = 2.0", "rate_per_second = inf"),
            CHECK_ROUTES.into(),
            CHECK_CLUSTER.into(),
            vec![vec!["quotas[0].rate_per_second"]],
        ),
        (
            "burst 0",
            qs("burst = 5", "burst = 0"),
            CHECK_ROUTES.into(),
            CHECK_CLUSTER.into(),
            vec![vec!["quotas[0].burst"]],
        ),
        (
            "unknown key",
            qs("key = \"client\"", "key = \"tenant\""),
            CHECK_ROUTES.into(),
            CHECK_CLUSTER.into(),
            vec![vec!["quotas[0]", "key"]],
        ),
        (
            "key client on an auth = none route",
            CHECK_QUOTA.into(),
            client_on_public,
            CHECK_CLUSTER.into(),
            vec![vec!["routes[2].quota"], vec!["quotas[0].key"]],
        ),
        (
            "key subject on an auth = none route",
            qs("key = \"client\"", "key = \"subject\""),
            subject_on_public,
            CHECK_CLUSTER.into(),
            vec![vec!["routes[2].quota"], vec!["quotas[0].key"]],
        ),
        (
            "redis_url with an http scheme",
            CHECK_QUOTA.into(),
            CHECK_ROUTES.into(),
            cs("redis://127.0.0.1:6379/0", "http://127.0.0.1:6379/0"),
            vec![vec!["cluster.redis_url"]],
        ),
        (
            "redis_url not a URL",
            CHECK_QUOTA.into(),
            CHECK_ROUTES.into(),
            cs("redis://127.0.0.1:6379/0", "127.0.0.1:6379"),
            vec![vec!["cluster.redis_url"]],
        ),
        (
            "on_redis_error neither local nor deny",
            CHECK_QUOTA.into(),
            CHECK_ROUTES.into(),
            cs("\"local\"", "\"ignore\""),
            vec![vec!["cluster", "on_redis_error"]],
        ),
        (
            "timeout_ms 0",
            CHECK_QUOTA.into(),
            CHECK_ROUTES.into(),
            cs("timeout_ms = 50", "timeout_ms = 0"),
            vec![vec!["cluster.timeout_ms"]],
        ),
        // Not listed in the contract: an override is held to the same
        // limits as the quota (a zero burst would admit nothing).
        (
            "override with burst 0",
            qs("burst = 100", "burst = 0"),
            CHECK_ROUTES.into(),
            CHECK_CLUSTER.into(),
            vec![vec!["quotas[0].overrides"]],
        ),
    ];
    let mut failures = Vec::new();
    for (i, (label, quotas, routes, cluster, wanted)) in cases.iter().enumerate() {
        let toml = check_config(quotas, routes, cluster);
        let out = check(&dir, &format!("bad-{i}.toml"), &toml);
        let named = wanted.iter().any(|all| {
            out.stderr
                .lines()
                .any(|l| all.iter().all(|needle| l.contains(needle)))
        });
        if out.code != Some(64) || !named {
            failures.push(format!(
                "  {label}: exit {:?} (expected 64); a stderr line naming one of {wanted:?}: {named}\n    output: {}",
                out.code,
                out.all().trim().replace('\n', "\n    ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad configs not refused as expected:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

// === portcullis explain ===

#[test]
fn explain_shows_the_quota_step_and_spends_nothing() {
    let dir = Scratch::new("quota-explain");
    let jwks = dir.write("jwks.json", standard_jwks().as_bytes());
    let up = MockUpstream::start();
    let config_text = ConfigBuilder::new()
        .raw(&format!(
            "[[issuers]]\nname = \"main\"\nissuer = {}\naudiences = [{}]\nalgorithms = {STANDARD_ALGORITHMS}\njwks_file = {}\n",
            toml_str(DEFAULT_ISSUER),
            toml_str(DEFAULT_AUDIENCE),
            toml_str(&jwks.display().to_string()),
        ))
        .upstream("app", &up.url(), "")
        .raw(
            r#"
[[quotas]]
name = "explained"
key = "client"
rate_per_second = 0.7
burst = 13

[[routes]]
name = "limited"
methods = ["GET"]
path = "/limited/{id}"
upstream = "app"
quota = "explained"
"#,
        )
        .build();
    let config = dir.write("portcullis.toml", config_text.as_bytes());
    let t = token("client-1");
    for i in 0..15 {
        let (line, stdout) = explain_quota_line(&config, &t, "/limited/x");
        let line =
            line.unwrap_or_else(|| panic!("explain #{i} prints no quota step line:\n{stdout}"));
        for needle in ["explained", "client", "0.7", "13"] {
            assert!(
                line.contains(needle),
                "the quota line does not name {needle:?} (quota, key, rate, burst): {line:?}"
            );
        }
        assert!(!stdout.contains(&t), "explain printed the token:\n{stdout}");
    }
    // 15 explanations later, a gateway on the same config admits the
    // whole burst of 13.
    let gw = TestGateway::start(&config_text);
    let env_like = |target: &str| {
        let before = up.count();
        let resp = gw.request_with_token("GET", target, &t, &[], None);
        Sent {
            resp,
            forwarded: up.count() - before,
        }
    };
    for i in 0..13 {
        assert_admitted(&env_like("/limited/x"), &format!("burst #{i}"));
    }
    assert_limited(&env_like("/limited/x"), "14th");
}

// === metrics ===

#[test]
fn quota_decisions_are_counted_by_route_and_outcome() {
    let env = Env::start(
        r#"
[[quotas]]
name = "counted"
rate_per_second = 0.1
burst = 2

[[routes]]
name = "m-a"
path = "/m-a/{id}"
upstream = "app"
quota = "counted"

[[routes]]
name = "m-b"
path = "/m-b/{id}"
upstream = "app"
quota = "counted"

[[routes]]
name = "m-free"
path = "/m-free/{id}"
upstream = "app"
"#,
    );
    let t = token("client-1");
    assert_admitted(&env.get("/m-a/1", &t), "m-a #1");
    assert_admitted(&env.get("/m-a/2", &t), "m-a #2");
    assert_limited(&env.get("/m-a/3", &t), "m-a #3");
    assert_limited(&env.get("/m-b/1", &t), "m-b #1");
    assert_limited(&env.get("/m-b/2", &t), "m-b #2");
    assert_admitted(&env.get("/m-free/1", &t), "m-free");

    let m = env.metrics();
    let v = |route: &str, outcome: &str| {
        metric_value(
            &m,
            "portcullis_quota_decisions_total",
            &[("route", route), ("outcome", outcome)],
        )
        .unwrap_or(0.0)
    };
    let got = [
        v("m-a", "allowed"),
        v("m-a", "limited"),
        v("m-b", "allowed"),
        v("m-b", "limited"),
        v("m-free", "allowed"),
        v("m-a", "unavailable"),
    ];
    assert_eq!(
        got,
        [2.0, 1.0, 0.0, 2.0, 0.0, 0.0],
        "portcullis_quota_decisions_total (m-a allowed, m-a limited, m-b allowed, m-b limited, m-free allowed, m-a unavailable):\n{}",
        m.lines()
            .filter(|l| l.contains("quota"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with("# TYPE portcullis_quota_decisions_total counter")),
        "portcullis_quota_decisions_total is declared a counter"
    );
}

/// A route that redacts its answers (`[routes.response]`, answered through
/// the redaction path) counts its quota like any other and carries the
/// rate-limit headers on the redacted answer too.
#[test]
fn a_redacting_route_counts_its_quota_and_carries_the_headers() {
    let env = Env::start(
        r#"
[[quotas]]
name = "reads"
rate_per_second = 1
burst = 2

[[routes]]
name = "secret-reads"
methods = ["GET"]
path = "/secrets/{id}"
upstream = "app"
quota = "reads"

[routes.response]
redact = { "/clientSecret" = [] }
"#,
    );
    env.up
        .set_response(200, br#"{"clientId":"c1","clientSecret":"s3cr3t"}"#);
    let tok = token("redactor");
    for remaining in [1, 0] {
        let sent = env.get("/secrets/c1", &tok);
        assert_eq!(sent.resp.status, 200, "{}", sent.resp.describe());
        assert_eq!(sent.forwarded, 1);
        let body = sent.resp.body_str();
        assert!(!body.contains("s3cr3t"), "not redacted: {body}");
        assert!(body.contains("\"clientId\":\"c1\""), "{body}");
        let (name, r) = sf_param(&sent.resp, "ratelimit", "r").unwrap();
        assert_eq!((name.as_str(), r), ("reads", remaining));
        let (name, q) = sf_param(&sent.resp, "ratelimit-policy", "q").unwrap();
        assert_eq!((name.as_str(), q), ("reads", 2));
    }
    let over = env.get("/secrets/c1", &tok);
    assert_eq!(over.resp.status, 429, "{}", over.resp.describe());
    assert_eq!(over.resp.error_code().as_deref(), Some("rate_limited"));
    assert_eq!(over.forwarded, 0, "a 429 reached the upstream");
}
