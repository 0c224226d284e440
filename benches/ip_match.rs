//! Client-IP matching: the compiled `IpList` (merged ranges, binary search)
//! against the linear scan it replaces, for 1 … 10,000 networks.

use std::net::IpAddr;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use ipnet::IpNet;
use portcullis::policy::ip::IpList;

/// `n` disjoint /24 networks spread over 10.0.0.0/8 and a few IPv6 ones.
fn networks(n: usize) -> Vec<IpNet> {
    (0..n)
        .map(|i| {
            if i % 10 == 9 {
                format!("2001:db8:{:x}::/48", i).parse().unwrap()
            } else {
                let i = i as u32 * 3;
                format!("10.{}.{}.0/24", (i >> 8) & 0xff, i & 0xff)
                    .parse()
                    .unwrap()
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("ip_match");
    // A miss is the worst case for a linear scan.
    let miss: IpAddr = "192.0.2.1".parse().unwrap();
    let hit: IpAddr = "10.0.3.7".parse().unwrap();
    for n in [1usize, 100, 1_000, 10_000] {
        let nets = networks(n);
        let list = IpList::new(nets.iter().copied());
        group.bench_with_input(BenchmarkId::new("ip_list_miss", n), &n, |b, _| {
            b.iter(|| list.contains(black_box(miss)))
        });
        group.bench_with_input(BenchmarkId::new("ip_list_hit", n), &n, |b, _| {
            b.iter(|| list.contains(black_box(hit)))
        });
        group.bench_with_input(BenchmarkId::new("linear_scan_miss", n), &n, |b, _| {
            b.iter(|| nets.iter().any(|net| net.contains(&black_box(miss))))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
