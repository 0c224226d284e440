//! The moka-based verified-token cache as it was before issue 17, kept so
//! that `jwt` (lookup time) and `cache_memory` (bytes per entry) compare the
//! sharded CLOCK cache with it in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::auth::VerifiedToken;

/// The moka-based `TokenCache`'s value.
#[derive(Clone)]
#[allow(dead_code)] // held for its size, and copied out on a hit, as before
pub struct MokaCachedToken {
    token: Arc<VerifiedToken>,
    key_set: [u8; 32],
    pub valid_until: u64,
    ttl: Duration,
}

struct MokaPerEntry;

impl moka::Expiry<[u8; 32], MokaCachedToken> for MokaPerEntry {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        value: &MokaCachedToken,
        _: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

pub type MokaTokenCache = moka::sync::Cache<[u8; 32], MokaCachedToken>;

/// A cache of at most `entries`, each living its own TTL, as before.
pub fn new(entries: u64) -> MokaTokenCache {
    moka::sync::Cache::builder()
        .max_capacity(entries)
        .expire_after(MokaPerEntry)
        .build()
}

/// An entry for `token` as the old cache stored it (five-minute TTL).
pub fn entry(token: Arc<VerifiedToken>, key_set: [u8; 32]) -> MokaCachedToken {
    MokaCachedToken {
        token,
        key_set,
        valid_until: 4_000_000_000,
        ttl: Duration::from_secs(300),
    }
}
