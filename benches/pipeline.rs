//! The whole decision pipeline without sockets: `admit_head` (request and
//! header checks, route, client IP through a trusted load balancer, route
//! `ip_allow`, RS256 token, static client metadata, entitlements) and
//! `check_body` (the IBM Verify API-client update policy on a 2 KiB body),
//! exactly as the proxy calls them, from a `GatewayState` built as the server
//! builds it.
//!
//! * `admit_head/token_cache_hit` — the same token every request;
//! * `admit_head/token_cache_miss` — a distinct valid token every request
//!   (a pool of pre-minted tokens; the state, and so the cache, is rebuilt
//!   outside the timing whenever the pool wraps), cache on: digest, miss,
//!   full verification, insert;
//! * `admit_head/token_cache_off` — `[server] token_cache_entries = 0`;
//! * `admit_head/auth_none` — a route with `auth = "none"` (the gateway's
//!   passthrough), for comparison;
//! * `admit_head_and_body` — a PUT with the body policy, token cached.
//!
//! Each iteration runs `block_on` on a current-thread tokio runtime
//! (`jwt/block_on_overhead` measures that).

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    api_client_update_body, claims, jwks, load_config, repo_path, scratch_dir, Key,
    CALLER_ENTITLEMENTS, CLIENT_ID, ISSUER, TARGET_ID,
};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use jsonwebtoken::Algorithm;
use portcullis::config::Config;
use portcullis::pipeline::{admit_head, check_body, NoTrace, Progress, RequestHead};
use portcullis::proxy::state::GatewayState;
use tokio::runtime::Runtime;

/// Distinct tokens for the miss bench (each costs an RSA signature to mint).
const MISS_POOL: usize = 1024;

const READ_TARGET: &str = "/v1.0/apiclients/abc-123?x=1";

fn config_text(token_cache_entries: u64) -> String {
    let catalog = repo_path("config/catalogs/verify-entitlements.tsv")
        .display()
        .to_string();
    let held = toml_list(&CALLER_ENTITLEMENTS);
    format!(
        r#"
[server]
listen = ["127.0.0.1:8080"]
trusted_proxies = ["10.0.0.0/8"]
token_cache_entries = {token_cache_entries}

[catalogs.verify]
file = "{catalog}"
offerings = ["CIC"]

[clients]
source = "static"
entitlements_from = "both"

[[clients.static]]
client_id = "{CLIENT_ID}"
id = "7c1de0b2-3f4a-4b5c-8d9e-0f1a2b3c4d5e"
enabled = true
entitlements = {held}
ip_filter_op = "allow"
ip_filters = ["192.168.0.0/16", "10.0.0.0/8"]

[[issuers]]
name = "verify"
issuer = "{ISSUER}"
audiences = ["portcullis"]
algorithms = ["RS256"]
jwks_file = "jwks.json"
entitlements_claim = "entitlements"

[[upstreams]]
name = "verify"
url = "http://127.0.0.1:9"
catalog = "verify"

[[routes]]
name = "verify-apiclients-list"
methods = ["GET"]
path = "/v1.0/apiclients"
upstream = "verify"
require_any = ["readAPIClients", "manageAPIClients"]

[[routes]]
name = "verify-apiclient-read"
methods = ["GET"]
path = "/v1.0/apiclients/{{id}}"
upstream = "verify"
require_all = ["readAPIClients"]
ip_allow = ["10.0.0.0/8", "192.168.0.0/16"]

[[routes]]
name = "verify-apiclient-update"
methods = ["PUT"]
path = "/v1.0/apiclients/{{id}}"
upstream = "verify"
require_all = ["manageAPIClients"]
ip_allow = ["10.0.0.0/8", "192.168.0.0/16"]
deny_self = "id"
invalidates_client = "id"

[routes.body]
json = true
max_bytes = 16384
path_params = {{ "/id" = "id" }}
deny = ["/clientId"]
subset_of_caller = ["/entitlements"]
catalog = {{ "/entitlements" = "verify" }}
enums = {{ "/ipFilterOp" = ["allow", "deny"] }}
cidrs = ["/ipFilters"]
field_requires = {{ "/jwkUri" = ["manageAPIClients"], "/additionalConfig" = ["manageAPIClients"] }}

[[routes]]
name = "verify-discovery"
methods = ["GET"]
path = "/.well-known/{{*rest}}"
upstream = "verify"
auth = "none"
"#
    )
}

fn toml_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The state as `server::assemble` builds it.
fn state(config: &Arc<Config>) -> GatewayState {
    GatewayState::build(Arc::clone(config), None)
}

/// A request as pingora hands it over: parsed headers and the raw head.
struct Request {
    method: Method,
    target: String,
    headers: HeaderMap,
    block: Vec<u8>,
}

impl Request {
    fn new(method: Method, target: &str, token: Option<&str>, body: bool) -> Request {
        let mut headers: Vec<(&str, String)> = vec![
            ("host", "gateway.example.com".into()),
            ("user-agent", "ci-provisioning-bot/2.4".into()),
            ("accept", "application/json".into()),
            ("accept-encoding", "gzip, deflate, br".into()),
            (
                "x-request-id",
                "6f1c2e9a-5b7d-4c1e-9a3f-2d8b7e6c5a41".into(),
            ),
            ("x-forwarded-for", "192.168.10.7".into()),
            ("x-forwarded-proto", "https".into()),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            ),
        ];
        if let Some(token) = token {
            headers.push(("authorization", format!("Bearer {token}")));
        }
        if body {
            headers.push(("content-type", "application/json".into()));
            headers.push(("content-length", "2048".into()));
        } else {
            headers.push(("accept-language", "en-GB,en;q=0.9".into()));
        }
        let mut map = HeaderMap::new();
        let mut block = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
        for (name, value) in &headers {
            map.append(
                HeaderName::from_static(name),
                HeaderValue::from_str(value).unwrap(),
            );
            block.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        block.extend_from_slice(b"\r\n");
        Request {
            method,
            target: target.to_owned(),
            headers: map,
            block,
        }
    }

    fn head(&self) -> RequestHead<'_> {
        RequestHead {
            method: &self.method,
            raw_target: self.target.as_bytes(),
            headers: &self.headers,
            raw_header_block: Some(&self.block),
            // The load balancer; the client is its X-Forwarded-For.
            peer: Some(IpAddr::from([10, 1, 2, 3])),
        }
    }
}

fn admit(rt: &Runtime, state: &GatewayState, request: &Request, now: u64) -> Progress {
    let mut progress = Progress::default();
    rt.block_on(admit_head(
        state,
        black_box(&request.head()),
        now,
        &mut progress,
        &mut NoTrace,
    ))
    .unwrap();
    progress
}

fn bench(c: &mut Criterion) {
    let key = Key::rsa(Algorithm::RS256, "rsa-1");
    let dir = scratch_dir("pipeline");
    std::fs::write(dir.join("jwks.json"), jwks(&[&key])).unwrap();
    let cached = Arc::new(load_config(&dir, &config_text(100_000)));
    let uncached = Arc::new(load_config(&dir, &config_text(0)));
    let _ = std::fs::remove_dir_all(&dir);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let now = common::now();
    let token = key.mint(&claims(ISSUER, 0));
    let read = Request::new(Method::GET, READ_TARGET, Some(&token), false);
    eprintln!(
        "token {} bytes, request head {} bytes, {} headers",
        token.len(),
        read.block.len(),
        read.headers.len()
    );

    let mut group = c.benchmark_group("pipeline");

    // Same token: verified once, then a cache hit.
    let hit_state = state(&cached);
    let p = admit(&rt, &hit_state, &read, now);
    assert_eq!(p.client_id(), Some(CLIENT_ID));
    assert_eq!(p.client_ip, Some(IpAddr::from([192, 168, 10, 7])));
    let checks = hit_state.verifier.signature_checks();
    group.bench_function("admit_head/token_cache_hit", |b| {
        b.iter(|| admit(&rt, &hit_state, &read, now))
    });
    assert_eq!(hit_state.verifier.signature_checks(), checks, "all hits");

    // A distinct token every request, cache on.
    // Minted on first use, so a filtered run that skips this bench does not
    // pay for 1024 RSA signatures.
    let mut pool: Vec<Request> = Vec::new();
    group.bench_function("admit_head/token_cache_miss", |b| {
        if pool.is_empty() {
            pool = (1..=MISS_POOL as u64)
                .map(|jti| {
                    let token = key.mint(&claims(ISSUER, jti));
                    Request::new(Method::GET, READ_TARGET, Some(&token), false)
                })
                .collect();
        }
        let pool = &pool;
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let n = left.min(pool.len());
                let fresh = state(&cached);
                let start = Instant::now();
                for request in &pool[..n] {
                    black_box(admit(&rt, &fresh, request, now));
                }
                total += start.elapsed();
                assert_eq!(fresh.verifier.signature_checks(), n as u64, "all misses");
                left -= n;
            }
            total
        })
    });

    // The cache turned off: the same token is verified every time.
    let off_state = state(&uncached);
    group.bench_function("admit_head/token_cache_off", |b| {
        b.iter(|| admit(&rt, &off_state, &read, now))
    });

    // The gateway's own passthrough: auth = "none".
    let open = Request::new(
        Method::GET,
        "/.well-known/openid-configuration",
        None,
        false,
    );
    admit(&rt, &hit_state, &open, now);
    group.bench_function("admit_head/auth_none", |b| {
        b.iter(|| admit(&rt, &hit_state, &open, now))
    });

    // An update: head (token cached) and the body policy.
    let target = format!("/v1.0/apiclients/{TARGET_ID}");
    let update = Request::new(Method::PUT, &target, Some(&token), true);
    let body = api_client_update_body();
    let p = admit(&rt, &hit_state, &update, now);
    check_body(
        &hit_state,
        &p,
        Some("application/json"),
        &body,
        &mut NoTrace,
    )
    .unwrap();
    group.bench_function("admit_head_and_body", |b| {
        b.iter(|| {
            let progress = admit(&rt, &hit_state, &update, now);
            check_body(
                &hit_state,
                &progress,
                Some("application/json"),
                black_box(&body),
                &mut NoTrace,
            )
            .unwrap();
            progress
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
