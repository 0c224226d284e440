//! Step 4 for an opaque token: an RFC 7662 introspection cache hit
//! (`Verifier::verify` on a token introspected before). The one call that
//! fills the cache goes to a one-shot endpoint on loopback; every measured
//! iteration must be a hit (asserted by the introspection counters).

mod common;

use std::sync::atomic::Ordering;

use common::{load_config, scratch_dir, ISSUER};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use portcullis::auth::Verifier;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET_ENV: &str = "PORTCULLIS_BENCH_INTROSPECTION_SECRET";
/// An opaque token of the usual size of an IBM Verify access token.
const TOKEN: &str = "x7Kq2LmN9pR4sT6vW8yZ0aB1cD3eF5gH7jK9lM2nP4qR6sT8uV0wX2yZ4aB6cD8e";

/// Answers one introspection request with an active answer, then closes.
async fn one_shot_endpoint(listener: tokio::net::TcpListener, now: u64) {
    let Ok((mut stream, _)) = listener.accept().await else {
        return;
    };
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // Head and the (short) form body; the request is small.
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.ends_with(b"token_type_hint=access_token") {
            break;
        }
    }
    let body = serde_json::json!({
        "active": true, "iss": ISSUER, "aud": "portcullis", "client_id": common::CLIENT_ID,
        "sub": common::CLIENT_ID, "exp": now + 3600,
        "scope": common::CALLER_ENTITLEMENTS.join(" "),
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!(
        "http://{}/v1.0/endpoint/default/introspect",
        listener.local_addr().unwrap()
    );
    std::env::set_var(SECRET_ENV, "bench-only-introspection-secret");
    let dir = scratch_dir("introspection");
    let config = load_config(
        &dir,
        &format!(
            r#"
[server]
listen = ["127.0.0.1:8080"]

[[issuers]]
name = "verify-opaque"
issuer = "{ISSUER}"
audiences = ["portcullis"]
introspection_url = "{url}"
introspection_client_id = "portcullis-gateway"
introspection_client_secret_env = "{SECRET_ENV}"
entitlements_claim = "scope"
"#
        ),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let verifier = Verifier::with_cache(&config.issuers, config.server.token_cache);
    let now = common::now();
    rt.spawn(one_shot_endpoint(listener, now));

    let first = rt.block_on(verifier.verify(TOKEN, &[0], now)).unwrap();
    assert_eq!(first.client_id.as_deref(), Some(common::CLIENT_ID));
    let stats = verifier.introspection_stats(0).unwrap();
    assert_eq!(stats.calls()[0], 1, "one active call filled the cache");

    let mut group = c.benchmark_group("introspection");
    group.bench_function("cache_hit", |b| {
        b.iter(|| {
            rt.block_on(verifier.verify(black_box(TOKEN), &[0], now))
                .unwrap()
        })
    });
    group.finish();
    assert_eq!(stats.calls()[0], 1, "every measured verify was a hit");
    assert!(stats.cache_hits.load(Ordering::Relaxed) > 0);
}

criterion_group!(benches, bench);
criterion_main!(benches);
