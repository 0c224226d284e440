//! Verified-token cache: a token whose signature was verified is not
//! verified again while cached.
//!
//! Keyed by the SHA-256 of the token, so the cache never holds a usable
//! token. An entry lives no longer than the token's `exp` (plus leeway) and
//! the configured maximum, and records the fingerprint of the key set that
//! verified it: when the issuer's key set changes (a key rotated out), the
//! entry is no longer used and the token is verified afresh against the new
//! set. Only signature and claim parsing work is saved — routes, client
//! metadata and IP rules still apply to every request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;
use sha2::{Digest, Sha256};

use super::verifier::VerifiedToken;

/// `[server] token_cache_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCacheSettings {
    /// 0 turns the cache off.
    pub max_entries: u64,
    pub max_ttl: Duration,
}

impl Default for TokenCacheSettings {
    fn default() -> Self {
        TokenCacheSettings {
            max_entries: 100_000,
            max_ttl: Duration::from_secs(300),
        }
    }
}

pub type TokenDigest = [u8; 32];

/// Held by value in the cache (a clone is one `Arc` increment): a second
/// allocation per entry would cost memory for nothing.
#[derive(Clone)]
pub struct CachedToken {
    pub token: Arc<VerifiedToken>,
    /// Fingerprint of the issuer's key set at verification time.
    pub key_set: [u8; 32],
    /// Latest unix second at which the token is still acceptable (`exp` + leeway).
    pub valid_until: u64,
    /// How long the entry may live.
    ttl: Duration,
}

struct PerEntry;

impl Expiry<TokenDigest, CachedToken> for PerEntry {
    fn expire_after_create(
        &self,
        _key: &TokenDigest,
        value: &CachedToken,
        _now: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

pub struct TokenCache {
    cache: Cache<TokenDigest, CachedToken>,
    max_ttl: Duration,
}

impl TokenCache {
    /// None when the settings turn the cache off.
    pub fn new(settings: TokenCacheSettings) -> Option<TokenCache> {
        (settings.max_entries > 0 && !settings.max_ttl.is_zero()).then(|| TokenCache {
            cache: Cache::builder()
                .max_capacity(settings.max_entries)
                .expire_after(PerEntry)
                .build(),
            max_ttl: settings.max_ttl,
        })
    }

    pub fn digest(token: &str) -> TokenDigest {
        Sha256::digest(token.as_bytes()).into()
    }

    pub fn get(&self, digest: &TokenDigest) -> Option<CachedToken> {
        self.cache.get(digest)
    }

    /// Remember a verified token until `valid_until` (unix seconds), at most
    /// the configured maximum.
    pub fn insert(
        &self,
        digest: TokenDigest,
        token: Arc<VerifiedToken>,
        key_set: [u8; 32],
        valid_until: u64,
        now: u64,
    ) {
        let remaining = Duration::from_secs(valid_until.saturating_sub(now));
        let ttl = remaining.min(self.max_ttl);
        if ttl.is_zero() {
            return;
        }
        self.cache.insert(
            digest,
            CachedToken {
                token,
                key_set,
                valid_until,
                ttl,
            },
        );
    }

    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Apply pending maintenance so counts are exact.
    pub fn sync(&self) {
        self.cache.run_pending_tasks();
    }
}
