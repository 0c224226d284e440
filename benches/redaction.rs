//! `[routes.response] redact` on IBM Verify API-client answers, without
//! sockets: a 2 KiB single client (`/clientSecret`) and a 256 KiB list
//! (`/apiClients/*/clientSecret`), each for a caller who loses the secret
//! and for one who keeps it (the answer is still read strictly). A plain
//! `serde_json` parse of the same bytes is measured for comparison.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use portcullis::policy::redact::{redact, Pointer};

/// One API client as IBM Verify answers it, padded with a description.
fn client(i: usize, pad: usize) -> String {
    format!(
        r#"{{"id":"{i:08x}-6f1a-4c2e-9b1d-1f2e3d4c5b6a","clientId":"cid-{i}","clientName":"batch job {i}","clientSecret":"S3cr3t-{i:016x}","enabled":true,"entitlements":["readAPIClients","manageUsers"],"ipFilterOp":"allow","ipFilters":["10.0.0.0/8"],"overrideSettings":{{"restrictScopes":false,"scopes":[]}},"description":"{}","additionalConfig":{{"clientAuthMethod":"client_secret_basic","validateClientAssertionJti":false}},"accessTokenLifetime":7200.0}}"#,
        "x".repeat(pad)
    )
}

fn single() -> Bytes {
    let mut body = client(1, 0);
    let pad = 2048usize.saturating_sub(body.len());
    body = client(1, pad);
    Bytes::from(body)
}

fn list() -> Bytes {
    let mut out = String::from(r#"{"total":0,"apiClients":["#);
    let mut i = 0;
    while out.len() < 256 * 1024 - 600 {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&client(i, 64));
        i += 1;
    }
    out.push_str("]}");
    Bytes::from(out)
}

fn bench(c: &mut Criterion) {
    let single_ptr = Pointer::parse("/clientSecret").unwrap();
    let list_ptr = Pointer::parse("/apiClients/*/clientSecret").unwrap();
    for (name, body, pointer) in [
        ("2KiB", single(), &single_ptr),
        ("256KiB", list(), &list_ptr),
    ] {
        let mut group = c.benchmark_group(format!("redact_{name}"));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function("secret_removed", |b| {
            b.iter(|| redact(black_box(&body), &[pointer]).unwrap())
        });
        group.bench_function("secret_kept", |b| {
            b.iter(|| redact(black_box(&body), &[]).unwrap())
        });
        group.bench_function("serde_json_parse_only", |b| {
            b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&body)).unwrap())
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
