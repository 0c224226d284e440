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
//!
//! # Why not moka
//!
//! moka (used for the other caches) spends about 380 bytes of bookkeeping
//! per entry — more than the entry itself — and issue 17 bounds the RSS of
//! 100,000 cached tokens and clients. This cache needs none of moka's
//! machinery: the key is already a uniform digest (no hashing), every entry
//! has one fixed deadline (no timer wheel), and a miss is just verified
//! again (no loader de-duplication). So it is a small structure of its own,
//! with std only:
//!
//! * **Shards** by digest bits, each an `RwLock` over a fixed-capacity ring
//!   of slots and an index `HashMap` from the digest's first 8 bytes to a
//!   slot. Reads share the lock; an insert holds it for a few stores.
//! * **CLOCK (second chance) eviction** within a shard: a hit sets the
//!   slot's referenced bit (an atomic, under the read lock); when the cache
//!   or the shard is full, the shard's hand clears set bits and takes the
//!   first slot that is expired or not referenced since the hand last
//!   passed.
//! * **One bound for the whole cache**: an atomic count of entries never
//!   exceeds `max_entries`. Shards may hold a little more than their even
//!   share (an eighth more, or 4 √share) so that a cache of `max_entries` distinct
//!   tokens holds them all although the digests spread unevenly over the
//!   shards; with one fixed capacity per shard, a full cache of 100,000
//!   held 99,330.
//! * **Deadlines** are whole seconds since the cache was built (`u32`),
//!   rounded so that an entry may expire up to a second early, never late.
//!
//! A slot is 88 bytes (digest, key-set fingerprint, the `Arc`, `exp`,
//! deadline, referenced bit) and the index about 22 bytes per entry at the
//! map's load factor, against moka's ~380 + the value.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

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

/// What a hit returns (a clone of the `Arc` and two copies).
#[derive(Clone)]
pub struct CachedToken {
    pub token: Arc<VerifiedToken>,
    /// Fingerprint of the issuer's key set at verification time.
    pub key_set: [u8; 32],
    /// Latest unix second at which the token is still acceptable (`exp` + leeway).
    pub valid_until: u64,
}

/// At most this many shards: enough that the tokio workers of a 2-64 core
/// host rarely meet on one lock, few enough that each shard's CLOCK still
/// sees a useful share of the traffic.
const MAX_SHARDS: usize = 32;
/// A shard holds at least this many entries (when `max_entries` allows):
/// a small cache is split less, so its eviction stays close to a global
/// CLOCK's.
const MIN_SHARD_ENTRIES: u64 = 64;
/// A shard's index and ring are allocated up front up to this many entries
/// (no rehash or regrowth on the request path: the default 100,000 entries
/// are 3,125 per shard). Only the index's control bytes (1 per bucket) are
/// touched at start; the rest is paid as entries arrive. Larger shards (a
/// cache configured beyond ~500,000 entries) grow on demand instead of
/// reserving their full size at start.
const PRESIZE_SHARD_ENTRIES: usize = 16_384;

pub struct TokenCache {
    shards: Box<[Shard]>,
    /// Entries in all shards (changed under a shard's write lock), ≤ `max_entries`.
    entries: Occupancy,
    /// `shards.len() - 1` (the count is a power of two).
    shard_mask: usize,
    /// Whole seconds (`max_ttl` as configured is whole seconds).
    max_ttl_secs: u64,
    /// Time zero of the slots' deadlines.
    epoch: Instant,
}

impl TokenCache {
    /// None when the settings turn the cache off.
    pub fn new(settings: TokenCacheSettings) -> Option<TokenCache> {
        let max_ttl_secs = settings.max_ttl.as_secs();
        if settings.max_entries == 0 || max_ttl_secs == 0 {
            return None;
        }
        let wanted = settings.max_entries / MIN_SHARD_ENTRIES;
        let count = if wanted >= MAX_SHARDS as u64 {
            MAX_SHARDS
        } else {
            // The largest power of two not above `wanted` (at least 1).
            1usize << wanted.max(1).ilog2()
        };
        // An even share plus some slack for the uneven spread of digests
        // over shards: an eighth, at least four standard deviations of a
        // shard's share (√share), and a few. The share of 100,000 is 3,125
        // (slack 390), whose index is sized for up to 3,584 anyway (4,096
        // buckets at 7/8 load); the ring only reserves address space.
        let share = settings.max_entries.div_ceil(count as u64);
        let capacity = share + (share / 8).max(4 * share.isqrt()) + 8;
        // ≤ 10,000,000 (config bound) + slack: fits a usize and a u32 slot index.
        let share = usize::try_from(share).unwrap_or(usize::MAX);
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX);
        let shards = (0..count).map(|_| Shard::new(share, capacity)).collect();
        Some(TokenCache {
            shards,
            entries: Occupancy {
                count: AtomicU64::new(0),
                max: settings.max_entries,
            },
            shard_mask: count - 1,
            max_ttl_secs,
            epoch: Instant::now(),
        })
    }

    pub fn digest(token: &str) -> TokenDigest {
        Sha256::digest(token.as_bytes()).into()
    }

    pub fn get(&self, digest: &TokenDigest) -> Option<CachedToken> {
        self.get_at(digest, self.tick())
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
        self.insert_at(digest, token, key_set, valid_until, now, self.tick());
    }

    /// Entries held (exact; expired ones count until dropped: see [`Self::sync`]).
    pub fn entry_count(&self) -> u64 {
        self.entries.count.load(Ordering::Relaxed)
    }

    /// Drop expired entries, so that [`Self::entry_count`] counts only
    /// usable ones.
    pub fn sync(&self) {
        let tick = self.tick();
        for shard in self.shards.iter() {
            let dropped = shard.write().drop_expired(tick, &self.entries);
            drop(dropped);
        }
    }

    /// Seconds since `epoch`, saturated (after 136 years every entry is expired).
    fn tick(&self) -> u32 {
        u32::try_from(self.epoch.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    fn shard(&self, digest: &TokenDigest) -> &Shard {
        // Bytes 8.. choose the shard, bytes 0..8 the index bucket: independent
        // bits of a SHA-256 digest, so both spread evenly.
        &self.shards[usize::from(digest[8]) & self.shard_mask]
    }

    fn get_at(&self, digest: &TokenDigest, tick: u32) -> Option<CachedToken> {
        let shard = self.shard(digest);
        {
            let inner = shard.read();
            let slot = inner.find(digest)?;
            if tick < slot.deadline {
                // Store only when not set yet: a hot entry's cache line is
                // then only read by the workers hitting it.
                if !slot.referenced.load(Ordering::Relaxed) {
                    slot.referenced.store(true, Ordering::Relaxed);
                }
                return Some(CachedToken {
                    token: Arc::clone(&slot.token),
                    key_set: slot.key_set,
                    valid_until: slot.valid_until,
                });
            }
        }
        // Expired: drop it now (rare; the write lock is taken only here).
        let dropped = shard.write().remove_if_expired(digest, tick, &self.entries);
        drop(dropped);
        None
    }

    fn insert_at(
        &self,
        digest: TokenDigest,
        token: Arc<VerifiedToken>,
        key_set: [u8; 32],
        valid_until: u64,
        now: u64,
        tick: u32,
    ) {
        let ttl = valid_until.saturating_sub(now).min(self.max_ttl_secs);
        if ttl == 0 {
            return;
        }
        // `ttl` ≤ max_ttl ≤ 86,400 (config bound); saturate anyway.
        let ttl = u32::try_from(ttl).unwrap_or(u32::MAX);
        let slot = Slot {
            digest,
            key_set,
            token,
            valid_until,
            deadline: tick.saturating_add(ttl),
            referenced: AtomicBool::new(false),
        };
        // The entry this one displaces is freed after the lock is released.
        let displaced = self
            .shard(&digest)
            .write()
            .insert(slot, tick, &self.entries);
        drop(displaced);
    }
}

/// One cached verification.
struct Slot {
    digest: TokenDigest,
    key_set: [u8; 32],
    token: Arc<VerifiedToken>,
    valid_until: u64,
    /// Usable while the cache's tick is below this.
    deadline: u32,
    /// Set by a hit, cleared by the CLOCK hand.
    referenced: AtomicBool,
}

/// Cache-line aligned so that two shards' locks never share a line.
#[repr(align(128))]
struct Shard(RwLock<ShardInner>);

impl Shard {
    fn new(share: usize, capacity: usize) -> Shard {
        Shard(RwLock::new(ShardInner::new(share, capacity)))
    }

    // Nothing panics while a shard is locked (no allocation beyond a
    // pre-sized map, no user code), and every update leaves the shard
    // consistent before the next store: a poisoned lock's data is sound.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, ShardInner> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ShardInner> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How many entries the cache holds, against its bound.
struct Occupancy {
    count: AtomicU64,
    max: u64,
}

impl Occupancy {
    /// Room for one more entry: take it.
    fn reserve(&self) -> bool {
        self.count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                (c < self.max).then_some(c + 1)
            })
            .is_ok()
    }

    fn release(&self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The index's key: the digest's first 8 bytes. Two digests sharing them
/// (about 1 in 2^64 per pair; a client cannot aim at one without a
/// preimage of SHA-256) share an index entry: the slot holds the whole
/// digest, so the second is a miss and its insert replaces the first.
fn index_key(digest: &TokenDigest) -> u64 {
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(prefix)
}

/// Passes a `u64` key through as its hash: the key is already uniform
/// (digest bits), so SipHash would be wasted work.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    // Only `u64` keys are hashed; anything else is folded in, correct if slow.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
}

struct ShardInner {
    /// Digest prefix → position in `slots`. Invariant: `index[k] == i` iff
    /// `slots[i]` is occupied by a digest whose prefix is `k`.
    index: HashMap<u64, u32, BuildHasherDefault<PassThrough>>,
    /// The CLOCK ring; `None` is a vacant slot (an entry dropped on expiry).
    /// Grows to `capacity`, never beyond.
    slots: Vec<Option<Slot>>,
    capacity: usize,
    hand: usize,
}

impl ShardInner {
    /// `share`: the entries this shard holds when the cache is full and
    /// evenly spread (what the index is sized for); `capacity`: its limit.
    fn new(share: usize, capacity: usize) -> ShardInner {
        ShardInner {
            index: HashMap::with_capacity_and_hasher(
                share.min(PRESIZE_SHARD_ENTRIES),
                Default::default(),
            ),
            // Reserved address space only: pages are touched as slots fill.
            slots: Vec::with_capacity(capacity.min(PRESIZE_SHARD_ENTRIES)),
            capacity,
            hand: 0,
        }
    }

    fn find(&self, digest: &TokenDigest) -> Option<&Slot> {
        let &i = self.index.get(&index_key(digest))?;
        self.slots
            .get(i as usize)?
            .as_ref()
            .filter(|s| s.digest == *digest)
    }

    /// Store `slot`, evicting when the cache or this shard is full;
    /// returns what it displaced. Keeps `entries` equal to the number of
    /// occupied slots of all shards.
    fn insert(&mut self, slot: Slot, tick: u32, entries: &Occupancy) -> Option<Slot> {
        let key = index_key(&slot.digest);
        // The same digest again (its key set changed, say), or one sharing
        // the prefix: reuse its place.
        if let Some(&i) = self.index.get(&key) {
            return self.slots.get_mut(i as usize)?.replace(slot);
        }
        let reserved = entries.reserve();
        let place = if reserved && self.slots.len() < self.capacity {
            self.slots.push(None);
            Some(self.slots.len() - 1)
        } else {
            // Without room in the cache only an occupied slot will do.
            self.victim(tick, reserved)
        };
        let Some((i, position)) = place.and_then(|i| Some((i, u32::try_from(i).ok()?))) else {
            // Nothing of this shard's to evict while other shards fill the
            // cache: the token is simply not cached.
            if reserved {
                entries.release();
            }
            return None;
        };
        let displaced = self.slots.get_mut(i)?.replace(slot);
        if let Some(old) = &displaced {
            self.index.remove(&index_key(&old.digest));
            if reserved {
                entries.release();
            }
        }
        self.index.insert(key, position);
        displaced
    }

    /// The CLOCK hand: the first slot from the hand on that is vacant (when
    /// `vacant_ok`), expired, or not referenced; referenced slots it passes
    /// lose their bit. One turn clears every bit, so two turns find one
    /// unless no slot qualifies.
    fn victim(&mut self, tick: u32, vacant_ok: bool) -> Option<usize> {
        let len = self.slots.len();
        if len == 0 {
            return None;
        }
        for _ in 0..2 * len {
            let i = self.hand % len;
            self.hand = (i + 1) % len;
            match self.slots.get_mut(i)? {
                None if vacant_ok => return Some(i),
                None => {}
                Some(s) if tick >= s.deadline => return Some(i),
                Some(s) if s.referenced.load(Ordering::Relaxed) => {
                    *s.referenced.get_mut() = false;
                }
                Some(_) => return Some(i),
            }
        }
        None
    }

    fn remove_if_expired(
        &mut self,
        digest: &TokenDigest,
        tick: u32,
        entries: &Occupancy,
    ) -> Option<Slot> {
        let key = index_key(digest);
        let &i = self.index.get(&key)?;
        let slot = self.slots.get_mut(i as usize)?;
        if slot
            .as_ref()
            .is_some_and(|s| s.digest == *digest && tick >= s.deadline)
        {
            self.index.remove(&key);
            entries.release();
            return slot.take();
        }
        None
    }

    fn drop_expired(&mut self, tick: u32, entries: &Occupancy) -> Vec<Slot> {
        let mut dropped = Vec::new();
        for slot in &mut self.slots {
            if slot.as_ref().is_some_and(|s| tick >= s.deadline) {
                if let Some(old) = slot.take() {
                    self.index.remove(&index_key(&old.digest));
                    entries.release();
                    dropped.push(old);
                }
            }
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn cache(max_entries: u64) -> TokenCache {
        TokenCache::new(TokenCacheSettings {
            max_entries,
            max_ttl: Duration::from_secs(300),
        })
        .unwrap()
    }

    fn token(n: u64) -> Arc<VerifiedToken> {
        Arc::new(VerifiedToken {
            issuer: 0,
            claims: Default::default(),
            subject: Some(format!("user-{n}").into()),
            client_id: None,
            entitlements: Default::default(),
            expires_at: n,
        })
    }

    fn key(n: u64) -> TokenDigest {
        TokenCache::digest(&format!("token-{n}"))
    }

    /// Insert token `n` valid for an hour, at tick `tick`.
    fn put(c: &TokenCache, n: u64, tick: u32) {
        c.insert_at(key(n), token(n), [7; 32], NOW + 3600, NOW, tick);
    }

    #[test]
    fn a_hit_returns_the_same_token_and_what_was_stored() {
        let c = cache(100);
        let t = token(1);
        c.insert(key(1), Arc::clone(&t), [9; 32], NOW + 100, NOW);
        let hit = c.get(&key(1)).unwrap();
        assert!(Arc::ptr_eq(&hit.token, &t));
        assert_eq!(hit.key_set, [9; 32]);
        assert_eq!(hit.valid_until, NOW + 100);
        assert!(c.get(&key(2)).is_none());
        assert_eq!(c.entry_count(), 1);
    }

    #[test]
    fn inserting_the_same_digest_again_replaces_the_entry() {
        let c = cache(100);
        c.insert(key(1), token(1), [1; 32], NOW + 100, NOW);
        c.insert(key(1), token(2), [2; 32], NOW + 100, NOW);
        let hit = c.get(&key(1)).unwrap();
        assert_eq!((hit.token.expires_at, hit.key_set), (2, [2; 32]));
        assert_eq!(c.entry_count(), 1);
    }

    #[test]
    fn shards_are_a_power_of_two_and_share_the_bound_with_some_slack() {
        for max in [
            1, 2, 63, 64, 100, 256, 1_000, 2_047, 2_048, 100_000, 100_003,
        ] {
            let c = cache(max);
            let shards = c.shards.len();
            assert!(shards.is_power_of_two() && shards <= MAX_SHARDS);
            let total: usize = c.shards.iter().map(|s| s.read().capacity).sum();
            assert!(total as u64 >= max, "max_entries {max}");
            assert_eq!(c.entries.max, max);
        }
        assert_eq!(cache(100_000).shards.len(), MAX_SHARDS);
        assert_eq!(cache(256).shards.len(), 4);
        assert_eq!(cache(63).shards.len(), 1);
    }

    /// Every shard's bookkeeping agrees with itself and with the count.
    fn assert_consistent(c: &TokenCache) {
        let mut held = 0;
        for shard in c.shards.iter() {
            let inner = shard.read();
            assert!(inner.slots.len() <= inner.capacity);
            let occupied = inner.slots.iter().flatten().count();
            assert_eq!(inner.index.len(), occupied);
            for (i, slot) in inner.slots.iter().enumerate() {
                if let Some(s) = slot {
                    assert_eq!(inner.index.get(&index_key(&s.digest)), Some(&(i as u32)));
                }
            }
            held += occupied;
        }
        assert_eq!(c.entry_count(), held as u64);
    }

    #[test]
    fn a_flood_of_distinct_tokens_never_exceeds_the_bound() {
        for max in [1, 10, 256, 5_000] {
            let c = cache(max);
            for n in 0..max * 10 {
                put(&c, n, 0);
                assert!(c.entry_count() <= max, "max_entries {max}, after {n}");
            }
            // Full, or within a shard's slack of full.
            assert!(c.entry_count() >= max - max / 8, "max_entries {max}");
            // The newest entry is always there.
            assert!(c.get(&key(max * 10 - 1)).is_some());
            assert_consistent(&c);
        }
    }

    #[test]
    fn a_cache_of_n_holds_n_distinct_tokens() {
        // Digests spread unevenly over the shards; the slack absorbs it.
        for max in [1_000, 10_000, 100_000] {
            let c = cache(max);
            for n in 0..max {
                put(&c, n, 0);
            }
            assert_eq!(c.entry_count(), max);
            assert!((0..max).all(|n| c.get_at(&key(n), 0).is_some()));
            assert_consistent(&c);
        }
    }

    #[test]
    fn an_entry_past_its_deadline_is_a_miss_and_is_dropped() {
        let c = cache(100);
        // exp in 10 s, max_ttl 300 s: the deadline is 10 s after insertion.
        c.insert_at(key(1), token(1), [0; 32], NOW + 10, NOW, 5);
        assert!(c.get_at(&key(1), 14).is_some());
        assert!(c.get_at(&key(1), 15).is_none());
        assert_eq!(c.entry_count(), 0, "dropped on read");
        // exp in an hour: max_ttl (300 s) bounds it.
        c.insert_at(key(2), token(2), [0; 32], NOW + 3600, NOW, 0);
        assert!(c.get_at(&key(2), 299).is_some());
        assert!(c.get_at(&key(2), 300).is_none());
        // Already expired: not stored at all.
        c.insert_at(key(3), token(3), [0; 32], NOW, NOW, 0);
        assert!(c.get_at(&key(3), 0).is_none());
        assert_eq!(c.entry_count(), 0);
    }

    #[test]
    fn with_a_real_clock_a_one_second_ttl_runs_out() {
        let c = cache(100);
        c.insert(key(1), token(1), [0; 32], NOW + 1, NOW);
        // Rounded so that an entry expires up to a second early, never late.
        std::thread::sleep(Duration::from_millis(1_100));
        assert!(c.get(&key(1)).is_none());
    }

    #[test]
    fn sync_drops_expired_entries_from_the_count() {
        let c = cache(100);
        for n in 0..10 {
            c.insert_at(key(n), token(n), [0; 32], NOW + 1 + n, NOW, 0);
        }
        assert_eq!(c.entry_count(), 10);
        let dropped: usize = c
            .shards
            .iter()
            .map(|s| s.write().drop_expired(5, &c.entries).len())
            .sum();
        assert_eq!(dropped, 5);
        assert_eq!(c.entry_count(), 5);
        assert_consistent(&c);
    }

    #[test]
    fn expired_entries_are_taken_before_live_ones() {
        let c = cache(8); // one shard of 8
        assert_eq!(c.shards.len(), 1);
        for n in 0..8 {
            // Entries 0..4 live an hour, 4..8 ten seconds.
            let valid_until = if n < 4 { NOW + 3600 } else { NOW + 10 };
            c.insert_at(key(n), token(n), [0; 32], valid_until, NOW, 0);
            // All referenced: plain second chance would clear every bit,
            // go round and take entries 0..4.
            assert!(c.get_at(&key(n), 0).is_some());
        }
        for n in 100..104 {
            put(&c, n, 20);
        }
        for n in 0..4 {
            assert!(
                c.get_at(&key(n), 20).is_some(),
                "live entry {n} was evicted"
            );
        }
        assert_eq!(c.entry_count(), 8);
        assert_consistent(&c);
    }

    /// The load harness's distinct-token workload: a pool of 20,000 cycled
    /// through a cache of 256 must miss every time (its `sig/req` ≥ 0.95).
    #[test]
    fn a_pool_cycled_through_a_far_smaller_cache_never_hits() {
        let c = cache(256);
        let mut hits = 0;
        for _pass in 0..3 {
            for n in 0..20_000 {
                if c.get_at(&key(n), 0).is_some() {
                    hits += 1;
                } else {
                    put(&c, n, 0);
                }
            }
        }
        assert_eq!(hits, 0);
        assert_eq!(c.entry_count(), 256);
    }

    #[test]
    fn a_recently_hit_entry_survives_eviction_that_a_never_hit_one_does_not() {
        let c = cache(64); // one shard of 64
        assert_eq!(c.shards.len(), 1);
        for n in 0..64 {
            put(&c, n, 0);
        }
        assert!(c.get_at(&key(0), 0).is_some());
        // 63 newcomers: the hand spares entry 0 once and takes 1..=63.
        for n in 1_000..1_063 {
            put(&c, n, 0);
        }
        assert!(c.get_at(&key(0), 0).is_some(), "the hit entry survived");
        assert!((1..64).all(|n| c.get_at(&key(n), 0).is_none()));
        assert_eq!(c.entry_count(), 64);
        assert_consistent(&c);
    }

    #[test]
    fn concurrent_inserts_and_gets_stay_consistent_and_bounded() {
        const MAX: u64 = 1_000;
        let c = Arc::new(cache(MAX));
        let threads: Vec<_> = (0..6u64)
            .map(|t| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || {
                    let mut hits = 0u64;
                    for i in 0..5_000u64 {
                        // Threads overlap on half of their keys.
                        let n = if i % 2 == 0 { i } else { t * 1_000_000 + i };
                        c.insert(key(n), token(n), [0; 32], NOW + 3600, NOW);
                        for m in [n, i / 2, i.saturating_sub(7)] {
                            if let Some(hit) = c.get(&key(m)) {
                                // An entry always holds the token of its own key.
                                assert_eq!(hit.token.expires_at, m);
                                hits += 1;
                            }
                        }
                        assert!(c.entry_count() <= MAX);
                    }
                    hits
                })
            })
            .collect();
        let hits: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(hits > 0);
        assert!(c.entry_count() >= MAX - MAX / 8);
        assert_consistent(&c);
    }

    /// The size the module documentation and the README state.
    #[test]
    fn a_slot_is_88_bytes() {
        assert_eq!(std::mem::size_of::<Option<Slot>>(), 88);
    }

    #[test]
    fn a_zero_size_or_zero_ttl_turns_the_cache_off() {
        let off = |max_entries, max_ttl| {
            TokenCache::new(TokenCacheSettings {
                max_entries,
                max_ttl,
            })
        };
        assert!(off(0, Duration::from_secs(300)).is_none());
        assert!(off(100, Duration::ZERO).is_none());
        assert!(off(100, Duration::from_millis(500)).is_none());
    }
}
