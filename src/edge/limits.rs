//! Connection caps: all listeners together, and per client address.
//!
//! Counting is exact and cheap: one atomic for the total, and per-address
//! counts in a sharded map whose zero entries are removed, so a flood from
//! many addresses leaves nothing behind. A [`ConnectionGuard`] gives its slot
//! back when the connection ends, however it ends.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Independent locks for the per-address counts: connections from different
/// addresses rarely wait for each other.
const SHARDS: usize = 32;

/// Why a connection was refused (also the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapExceeded {
    /// `server.max_connections`
    Total,
    /// `server.max_connections_per_ip`
    PerIp,
}

impl CapExceeded {
    pub fn label(self) -> &'static str {
        match self {
            CapExceeded::Total => "max_connections",
            CapExceeded::PerIp => "max_connections_per_ip",
        }
    }
}

/// The open connections of one proxy service.
pub struct ConnectionLimits {
    total: AtomicUsize,
    per_ip: Vec<Mutex<HashMap<IpAddr, usize>>>,
}

/// One admitted connection; its slot is released on drop.
pub struct ConnectionGuard {
    limits: Arc<ConnectionLimits>,
    /// The address counted against the per-IP cap (`None` when exempt).
    counted: Option<IpAddr>,
}

impl ConnectionLimits {
    pub fn new() -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            total: AtomicUsize::new(0),
            per_ip: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        })
    }

    /// Admit a connection from `ip` (`None` when unknown, or exempt from the
    /// per-IP cap), or say which cap it would exceed.
    pub fn admit(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<ConnectionGuard, CapExceeded> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(CapExceeded::Total);
        }
        // From here the slot is held by the guard: any early return releases it.
        let mut guard = ConnectionGuard {
            limits: self.clone(),
            counted: None,
        };
        if let Some(ip) = ip {
            let mut shard = self.shard(ip);
            let count = shard.entry(ip).or_insert(0);
            if *count >= max_per_ip {
                if *count == 0 {
                    shard.remove(&ip);
                }
                return Err(CapExceeded::PerIp);
            }
            *count += 1;
            guard.counted = Some(ip);
        }
        Ok(guard)
    }

    /// Open connections, all addresses.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Open connections counted for `ip`.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.shard(ip).get(&ip).copied().unwrap_or(0)
    }

    /// Addresses with at least one counted connection.
    pub fn tracked_addresses(&self) -> usize {
        self.per_ip
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    fn shard(&self, ip: IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        ip.hash(&mut h);
        let i = (h.finish() as usize) % SHARDS;
        // A panic while holding the lock leaves counts that are still exact.
        self.per_ip[i].lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Some(ip) = self.counted {
            let mut shard = self.limits.shard(ip);
            if let Some(count) = shard.get_mut(&ip) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    shard.remove(&ip);
                }
            }
        }
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn per_ip_cap_counts_each_address_and_releases_on_drop() {
        let limits = ConnectionLimits::new();
        let a1 = limits.admit(ip("10.0.0.1"), 100, 2).unwrap();
        let a2 = limits.admit(ip("10.0.0.1"), 100, 2).unwrap();
        assert_eq!(
            limits.admit(ip("10.0.0.1"), 100, 2).err(),
            Some(CapExceeded::PerIp)
        );
        let b = limits.admit(ip("10.0.0.2"), 100, 2).unwrap();
        assert_eq!(limits.open(), 3);
        drop(a1);
        let a3 = limits.admit(ip("10.0.0.1"), 100, 2).unwrap();
        drop((a2, a3, b));
        assert_eq!(limits.open(), 0);
        assert_eq!(limits.tracked_addresses(), 0, "zero entries are removed");
    }

    #[test]
    fn total_cap_applies_to_every_address_and_exempt_ones() {
        let limits = ConnectionLimits::new();
        let held: Vec<_> = (0..3)
            .map(|i| limits.admit(ip(&format!("10.0.1.{i}")), 3, 10).unwrap())
            .collect();
        assert_eq!(
            limits.admit(ip("10.0.9.9"), 3, 10).err(),
            Some(CapExceeded::Total)
        );
        assert_eq!(limits.admit(None, 3, 10).err(), Some(CapExceeded::Total));
        assert_eq!(limits.open(), 3, "a refused connection holds no slot");
        drop(held);
        assert_eq!(limits.open(), 0);
        let exempt: Vec<_> = (0..5).map(|_| limits.admit(None, 10, 1).unwrap()).collect();
        assert_eq!(limits.open(), 5);
        assert_eq!(limits.tracked_addresses(), 0);
        drop(exempt);
    }

    #[test]
    fn counts_stay_exact_under_concurrency() {
        let limits = ConnectionLimits::new();
        std::thread::scope(|s| {
            for t in 0..8 {
                let limits = limits.clone();
                s.spawn(move || {
                    for i in 0..2000 {
                        let addr = ip(&format!("10.1.{}.{}", t, i % 7));
                        if let Ok(g) = limits.admit(addr, 1000, 3) {
                            drop(g);
                        }
                    }
                });
            }
        });
        assert_eq!(limits.open(), 0);
        assert_eq!(limits.tracked_addresses(), 0);
    }
}
