//! Resident memory per cache entry: what bounds the issue-7 memory target
//! (100,000 cached tokens and 100,000 cached clients within 128 MiB).
//!
//! Not a criterion bench: it inserts `N` entries and reports the growth of
//! the process's `VmRSS` per entry, with the same allocator as the gateway.
//!
//! * `moka entry`: a bare moka entry (32-byte key, 8-byte value, per-entry
//!   expiry) — moka's own bookkeeping, the floor of any moka-backed cache;
//! * `token cache entry`: [`TokenCache`] holding a token like the load
//!   harness's memory phase (subject, client id, two entitlements, no kept
//!   claims);
//! * `moka token cache entry`: the same tokens in the moka cache that
//!   `TokenCache` was before issue 17 (the same value, per-entry expiry),
//!   mirrored here for the old-vs-new comparison;
//! * `client cache entry`: a client record as `ClientDirectory` caches it —
//!   a moka `future::Cache` keyed by the client id (`Arc<str>`, which the
//!   record's `client_id` shares), holding the fetch time and a
//!   `Lookup::Found(Arc<ClientMeta>)` (the directory's private `Entry` and
//!   `share_key`, mirrored here: keep the two alike), the record read
//!   by `clients::meta::from_json` from an IBM Verify API client (UUID
//!   `clientId` and `id`, 2–4 entitlements, an allow filter of 1–2 CIDRs).
//!
//! `cargo bench --bench cache_memory` (`N` from `PORTCULLIS_BENCH_ENTRIES`,
//! default 100,000; `cargo test` runs it with 1,000).

#[path = "common/moka_token_cache.rs"]
mod moka_token_cache;

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::auth::token_cache::{TokenCache, TokenCacheSettings};
use portcullis::auth::VerifiedToken;
use portcullis::clients::meta::from_json;
use portcullis::clients::{FieldPointers, Lookup};
use portcullis::policy::entitlement_sets;

// The gateway's allocator (src/main.rs), so the figures match its RSS.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

struct FiveMinutes;

impl moka::Expiry<[u8; 32], u64> for FiveMinutes {
    fn expire_after_create(&self, _: &[u8; 32], _: &u64, _: Instant) -> Option<Duration> {
        Some(Duration::from_secs(300))
    }
}

/// RSS growth per entry (bytes) while `fill` inserts `n` entries.
fn per_entry(n: u64, fill: impl FnOnce()) -> Option<u64> {
    let before = rss_kib()?;
    fill();
    let after = rss_kib()?;
    Some(after.saturating_sub(before) * 1024 / n.max(1))
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test` does not: keep that run short.
    let bench = std::env::args().any(|a| a == "--bench");
    let n: u64 = std::env::var("PORTCULLIS_BENCH_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 100_000 } else { 1_000 });

    let moka: moka::sync::Cache<[u8; 32], u64> = moka::sync::Cache::builder()
        .max_capacity(n)
        .expire_after(FiveMinutes)
        .build();
    let moka_entry = per_entry(n, || {
        for i in 0..n {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&i.to_le_bytes());
            moka.insert(key, i);
        }
        moka.run_pending_tasks();
    });
    assert_eq!(moka.entry_count(), n, "every moka entry stays cached");

    let moka_tokens = moka_token_cache::new(n);
    let moka_token_entry = per_entry(n, || {
        for i in 0..n {
            let digest = TokenCache::digest(&format!("token-{i}"));
            moka_tokens.insert(
                digest,
                moka_token_cache::entry(Arc::new(bench_token(i)), [0; 32]),
            );
        }
        moka_tokens.run_pending_tasks();
    });
    assert_eq!(moka_tokens.entry_count(), n, "every token stays cached");

    let tokens = TokenCache::new(TokenCacheSettings {
        max_entries: n,
        max_ttl: Duration::from_secs(300),
    })
    .expect("a non-zero cache is on");
    let token_entry = per_entry(n, || {
        for i in 0..n {
            let token = bench_token(i);
            let digest = TokenCache::digest(&format!("token-{i}"));
            tokens.insert(
                digest,
                Arc::new(token),
                [0; 32],
                4_000_000_000,
                1_000_000_000,
            );
        }
        tokens.sync();
    });
    assert_eq!(tokens.entry_count(), n, "every token stays cached");

    let clients = client_cache_entry(n);

    let show = |v: Option<u64>| v.map_or("n/a (no /proc)".to_string(), |b| format!("{b} bytes"));
    println!("cache_memory: {n} entries each, VmRSS growth per entry");
    println!(
        "  moka entry (32-byte key, u64 value, per-entry expiry)  {}",
        show(moka_entry)
    );
    println!(
        "  token cache entry (harness memory-phase token)        {}",
        show(token_entry)
    );
    println!(
        "  moka token cache entry (before issue 17, same tokens)  {}",
        show(moka_token_entry)
    );
    println!(
        "  client cache entry (IBM Verify API client record)     {}",
        show(clients)
    );
}

/// A token like the load harness's memory phase.
fn bench_token(i: u64) -> VerifiedToken {
    VerifiedToken {
        issuer: 0,
        claims: Default::default(),
        subject: Some("bench-user".into()),
        client_id: Some(format!("client-{i:07}").into()),
        // Interned, as verification does.
        entitlements: entitlement_sets::intern(vec![
            "manageAPIClients".into(),
            "readAPIClients".into(),
        ]),
        expires_at: 4_000_000_000,
    }
}

/// A UUID-shaped id, distinct for each `i` and `salt`.
fn uuid(i: u64, salt: u64) -> String {
    let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt;
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        (x >> 32) as u32,
        (x >> 16) as u16,
        (x >> 4) as u16 & 0xfff,
        i as u16 & 0xfff,
        i
    )
}

/// The IBM Verify API client record number `i`: 2, 3 or 4 entitlements, an
/// allow filter of one or two networks.
fn verify_client(i: u64) -> (String, serde_json::Value) {
    const ENTITLEMENTS: [&str; 4] = [
        "manageAPIClients",
        "readAPIClients",
        "manageUsers",
        "readUsers",
    ];
    let client_id = uuid(i, 0x5eed);
    let filters: &[&str] = if i.is_multiple_of(2) {
        &["10.0.0.0/8"]
    } else {
        &["10.0.0.0/8", "192.0.2.0/24"]
    };
    let record = serde_json::json!({
        "id": uuid(i, 0x1d),
        "clientId": client_id,
        "clientName": format!("automation-{i}"),
        "enabled": true,
        "entitlements": ENTITLEMENTS[..2 + (i % 3) as usize],
        "ipFilterOp": "allow",
        "ipFilters": filters,
    });
    (client_id, record)
}

/// RSS growth per cached client record, held as `ClientDirectory` holds it.
fn client_cache_entry(n: u64) -> Option<u64> {
    // The directory's `Entry`: when fetched, and what the source said.
    type Entry = (Instant, Lookup);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let cache: moka::future::Cache<Arc<str>, Entry> = moka::future::Cache::builder()
        .max_capacity(n)
        .time_to_live(Duration::from_secs(300 + 60))
        .build();
    let fields = FieldPointers::default();
    let per = runtime.block_on(async {
        let before = rss_kib()?;
        for i in 0..n {
            let (client_id, record) = verify_client(i);
            let mut meta = from_json(&client_id, &record, &fields).expect("a valid record");
            drop(record);
            // The directory's key, made from the `&str` asked for, and
            // shared by the record it loads.
            let key: Arc<str> = Arc::from(client_id.as_str());
            meta.client_id = Arc::clone(&key);
            cache
                .insert(key, (Instant::now(), Lookup::Found(Arc::new(meta))))
                .await;
        }
        cache.run_pending_tasks().await;
        let after = rss_kib()?;
        Some(after.saturating_sub(before) * 1024 / n.max(1))
    });
    assert_eq!(cache.entry_count(), n, "every client stays cached");
    per
}
