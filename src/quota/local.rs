//! In-process quota counting: one TAT per key in a bounded moka cache.
//!
//! A key's TAT is an `AtomicU64` updated by compare-and-swap, so requests of
//! different keys share no lock and requests of one key never wait for each
//! other's critical section. Keys expire after being idle for the longest
//! tolerance the quota allows: by then their bucket is full again, so
//! forgetting them is exact. The capacity bounds memory under a flood of
//! distinct keys (a key evicted early simply starts with a full bucket).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use moka::sync::Cache;

use super::gcra::{Decision, Gcra};

/// Keys kept per quota.
pub const MAX_KEYS_PER_QUOTA: u64 = 100_000;

const NANOSECOND: Duration = Duration::from_nanos(1);

/// The TATs of one quota.
pub struct LocalStore {
    tats: Cache<Box<str>, Arc<AtomicU64>>,
}

impl LocalStore {
    /// A store whose keys live at least `longest_tolerance` after their last use.
    pub fn new(longest_tolerance: Duration) -> LocalStore {
        LocalStore {
            tats: Cache::builder()
                .max_capacity(MAX_KEYS_PER_QUOTA)
                .time_to_idle(longest_tolerance.saturating_add(Duration::from_secs(1)))
                .build(),
        }
    }

    /// Decide one request for `key` under `gcra` (in nanoseconds).
    pub fn decide(&self, key: &str, gcra: &Gcra) -> Decision {
        let tat = match self.tats.get(key) {
            Some(t) => t,
            None => self
                .tats
                .get_with(Box::from(key), || Arc::new(AtomicU64::new(0))),
        };
        let now = now_ns();
        let mut current = tat.load(Ordering::Acquire);
        loop {
            let (decision, new) = gcra.decide(current, now, NANOSECOND);
            let Some(new) = new else {
                return decision;
            };
            match tat.compare_exchange_weak(current, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return decision,
                Err(seen) => current = seen,
            }
        }
    }

    /// Keys held (for tests and the memory bench).
    pub fn len(&self) -> u64 {
        self.tats.run_pending_tasks();
        self.tats.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Nanoseconds on a monotonic clock that starts well above zero (a TAT of 0
/// means "never seen"); also the clock of `crate::cluster`'s back-off.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .saturating_add(1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gcra(rate: f64, burst: u32) -> Gcra {
        Gcra::per_second_ns(rate, burst)
    }

    #[test]
    fn keys_are_counted_apart() {
        let store = LocalStore::new(Duration::from_secs(10));
        let g = gcra(0.001, 2);
        assert!(store.decide("a", &g).allowed);
        assert!(store.decide("a", &g).allowed);
        assert!(!store.decide("a", &g).allowed);
        assert!(store.decide("b", &g).allowed);
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn concurrent_requests_of_one_key_admit_exactly_the_burst() {
        let store = Arc::new(LocalStore::new(Duration::from_secs(10)));
        let g = gcra(0.001, 1000);
        let admitted = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..500 {
                        if store.decide("k", &g).allowed {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 1000);
    }

    #[test]
    fn memory_is_bounded_under_a_flood_of_keys() {
        let store = LocalStore::new(Duration::from_secs(10));
        let g = gcra(1.0, 1);
        for i in 0..(MAX_KEYS_PER_QUOTA + 20_000) {
            store.decide(&i.to_string(), &g);
        }
        assert!(store.len() <= MAX_KEYS_PER_QUOTA, "{}", store.len());
    }
}
