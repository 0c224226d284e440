//! The in-process quota check (issue 16: at most 1 µs per request added):
//! `Quotas::check` as the proxy calls it, for a client-id quota and a
//! client-IP quota (which formats the address), on a key seen before and
//! across 10,000 keys. The rate is high enough that every request is
//! admitted, as on a busy but well-behaved gateway (asserted).

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use common::{load_config, scratch_dir};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use portcullis::auth::VerifiedToken;
use portcullis::pipeline::Progress;
use portcullis::proxy::state::GatewayState;

const CONFIG: &str = r#"
[[upstreams]]
name = "app"
url = "http://127.0.0.1:9"

[[quotas]]
name = "by-client"
key = "client"
rate_per_second = 1000000000
burst = 1000000000

[[quotas]]
name = "by-ip"
key = "ip"
rate_per_second = 1000000000
burst = 1000000000

[[routes]]
name = "open"
path = "/x"
upstream = "app"
auth = "none"
quota = "by-ip"
"#;

fn progress(client: &str, ip: IpAddr) -> Progress {
    Progress {
        client_ip: Some(ip),
        token: Some(Arc::new(VerifiedToken {
            issuer: 0,
            claims: Default::default(),
            subject: Some("sub".into()),
            client_id: Some(client.into()),
            entitlements: Vec::new().into(),
            expires_at: u64::MAX,
        })),
        ..Progress::default()
    }
}

fn bench(c: &mut Criterion) {
    let dir = scratch_dir("quota");
    let state = GatewayState::build(Arc::new(load_config(&dir, CONFIG)), None);
    let quotas = state.quotas.clone();
    // Not awaiting anything in-process: one poll decides.
    let check = |index: usize, p: &Progress| {
        quotas
            .check(index, 0, p)
            .now_or_never()
            .expect("the in-process check completes without waiting")
            .expect("admitted")
    };

    let one = progress("client-1", IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    c.bench_function("quota/client id, one key", |b| {
        b.iter(|| black_box(check(0, black_box(&one))))
    });
    c.bench_function("quota/client ip, one key", |b| {
        b.iter(|| black_box(check(1, black_box(&one))))
    });
    let many: Vec<Progress> = (0..10_000u32)
        .map(|i| {
            progress(
                &format!("client-{i}"),
                IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
            )
        })
        .collect();
    let mut i = 0;
    c.bench_function("quota/client id, 10k keys", |b| {
        b.iter(|| {
            i = (i + 1) % many.len();
            black_box(check(0, &many[i]))
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
