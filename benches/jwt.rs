//! Step 4: JWT verification per algorithm without the verified-token cache
//! (`Verifier::verify_uncached`), and a cache hit (`Verifier::verify` on a
//! token verified before).
//!
//! The verifier is async (an unknown `kid` may wait for a JWKS refetch), so
//! each iteration runs it with `block_on` on a current-thread tokio runtime;
//! `jwt/block_on_overhead` measures what that adds to every number.
//!
//! `token_cache/get_hit/{token_cache,moka}`: the cache lookup alone, on a
//! cache holding 100,000 tokens, cycling over 4,096 of them — `TokenCache`
//! against the moka cache it replaced (issue 17; same key and value, moka's
//! per-entry expiry), in one run.

mod common;
#[path = "common/moka_token_cache.rs"]
mod moka_token_cache;

use common::{claims, jwks, load_config, scratch_dir, Key, ISSUER};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use jsonwebtoken::Algorithm;
use portcullis::auth::strict_json;
use portcullis::auth::token_cache::{TokenCache, TokenCacheSettings};
use portcullis::auth::{VerifiedToken, Verifier};
use std::sync::Arc;
use std::time::Duration;

const HMAC_ENV: &str = "PORTCULLIS_BENCH_HMAC_SECRET";
const HMAC_ISSUER: &str = "vcf-sddc-manager";

fn bench(c: &mut Criterion) {
    let keys = [
        Key::rsa(Algorithm::RS256, "rsa-1"),
        Key::rsa(Algorithm::PS256, "rsa-pss-1"),
        Key::ec256("ec256-1"),
        Key::ed25519("ed25519-1"),
    ];
    let hmac = Key::hmac("hmac-1");

    let dir = scratch_dir("jwt");
    std::fs::write(
        dir.join("jwks.json"),
        jwks(&keys.iter().collect::<Vec<_>>()),
    )
    .unwrap();
    std::env::set_var(HMAC_ENV, std::str::from_utf8(common::HMAC_SECRET).unwrap());
    let config = load_config(
        &dir,
        &format!(
            r#"
[server]
listen = ["127.0.0.1:8080"]

[[issuers]]
name = "verify"
issuer = "{ISSUER}"
audiences = ["portcullis"]
algorithms = ["RS256", "PS256", "ES256", "EdDSA"]
jwks_file = "jwks.json"
entitlements_claim = "entitlements"

[[issuers]]
name = "vcf"
issuer = "{HMAC_ISSUER}"
algorithms = ["HS256"]
hmac_secret_env = "{HMAC_ENV}"
entitlements_claim = "entitlements"
"#
        ),
    );
    let _ = std::fs::remove_dir_all(&dir);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let verifier = Verifier::with_cache(&config.issuers, config.server.token_cache);
    let accepted = [0, 1];
    let now = common::now();

    let mut group = c.benchmark_group("jwt");
    group.bench_function("block_on_overhead", |b| {
        b.iter(|| rt.block_on(async { black_box(1u64) }))
    });

    let mut cases: Vec<(String, String)> = keys
        .iter()
        .map(|k| {
            let name = serde_json::to_value(k.alg).unwrap();
            (
                name.as_str().unwrap().to_owned(),
                k.mint(&claims(ISSUER, 1)),
            )
        })
        .collect();
    cases.push(("HS256".into(), hmac.mint(&claims(HMAC_ISSUER, 1))));
    for (name, token) in &cases {
        // A bench of a refusal would be meaningless: check first.
        let ok = rt
            .block_on(verifier.verify_uncached(token, &accepted, now))
            .unwrap();
        assert_eq!(ok.client_id.as_deref(), Some(common::CLIENT_ID));
        group.bench_function(format!("verify_uncached/{name}"), |b| {
            b.iter(|| {
                rt.block_on(verifier.verify_uncached(black_box(token), &accepted, now))
                    .unwrap()
            })
        });
    }

    let token = &cases[0].1;
    let before = verifier.signature_checks();
    rt.block_on(verifier.verify(token, &accepted, now)).unwrap();
    rt.block_on(verifier.verify(token, &accepted, now)).unwrap();
    assert_eq!(verifier.signature_checks(), before + 1, "second verify hit");
    group.bench_function("cache_hit", |b| {
        b.iter(|| {
            rt.block_on(verifier.verify(black_box(token), &accepted, now))
                .unwrap()
        })
    });
    assert_eq!(verifier.signature_checks(), before + 1, "every verify hit");
    // Part of every hit: the SHA-256 of the token (the cache key).
    group.bench_function("cache_key_digest", |b| {
        b.iter(|| TokenCache::digest(black_box(token)))
    });
    // Part of every verification: the strict parse of the claims (here 40
    // entitlements, ~1 KiB of JSON) into a tree.
    let claims_json = claims(ISSUER, 1).to_string().into_bytes();
    group.bench_function("claims_strict_json_parse", |b| {
        b.iter(|| {
            strict_json::parse_object(black_box(&claims_json))
                .unwrap()
                .len()
        })
    });
    group.finish();
}

fn cache_get(c: &mut Criterion) {
    const ENTRIES: u64 = 100_000;
    const PROBED: usize = 4_096;
    let digests: Vec<[u8; 32]> = (0..ENTRIES)
        .map(|i| TokenCache::digest(&format!("token-{i}")))
        .collect();
    let token = Arc::new(VerifiedToken {
        issuer: 0,
        claims: Default::default(),
        subject: Some("bench-user".into()),
        client_id: Some("bench-client".into()),
        entitlements: Default::default(),
        expires_at: 4_000_000_000,
    });
    let settings = TokenCacheSettings {
        max_entries: ENTRIES,
        max_ttl: Duration::from_secs(300),
    };
    let cache = TokenCache::new(settings).unwrap();
    let moka = moka_token_cache::new(ENTRIES);
    for d in &digests {
        cache.insert(
            *d,
            Arc::clone(&token),
            [1; 32],
            4_000_000_000,
            1_000_000_000,
        );
        moka.insert(*d, moka_token_cache::entry(Arc::clone(&token), [1; 32]));
    }
    moka.run_pending_tasks();
    // Spread over the whole cache, not one hot line.
    let probed: Vec<[u8; 32]> = digests.iter().step_by(24).take(PROBED).copied().collect();
    assert!(probed.iter().all(|d| cache.get(d).is_some()));
    assert!(probed.iter().all(|d| moka.get(d).is_some()));

    let mut group = c.benchmark_group("token_cache");
    let mut i = 0;
    group.bench_function("get_hit/token_cache", |b| {
        b.iter(|| {
            i = (i + 1) % PROBED;
            cache.get(black_box(&probed[i])).map(|h| h.valid_until)
        })
    });
    group.bench_function("get_hit/moka", |b| {
        b.iter(|| {
            i = (i + 1) % PROBED;
            moka.get(black_box(&probed[i])).map(|h| h.valid_until)
        })
    });
    group.finish();
}

criterion_group!(benches, bench, cache_get);
criterion_main!(benches);
