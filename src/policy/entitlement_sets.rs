//! Entitlement lists as cached tokens and client records hold them: one
//! shared, immutable allocation per distinct list.
//!
//! A gateway caches up to 100,000 verified tokens and as many client
//! records, and most of them carry one of a handful of lists
//! (`["manageAPIClients", "readAPIClients"]`): a `Vec<String>` per entry
//! would hold the same names a hundred thousand times. [`intern`] hands out
//! one [`EntitlementSet`] per distinct list instead. It runs where a list is
//! read — a token verified or introspected, a client record loaded or
//! configured — never on a cache hit.
//!
//! The interner is bounded, since token contents are the caller's: at most
//! [`MAX_SETS`] lists of [`MAX_SET_BYTES`] or less, [`MAX_TOTAL_BYTES`] in
//! all. When it is full, lists nobody holds any longer are swept out (at most
//! once per [`SWEEP_EVERY`] lists it could not take, so a stream of unique
//! lists costs no sweep each); a list that still does not fit gets an
//! allocation of its own, exactly as before interning: the same contents,
//! only unshared.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex};

/// An immutable list of entitlement names, shared by every holder of the
/// same list. Compares (and reads, as `&[String]`) by contents: order and
/// duplicates are kept exactly as given.
pub type EntitlementSet = Arc<[String]>;

/// Most distinct lists held at once.
pub const MAX_SETS: usize = 4096;
/// Largest list interned (names' bytes plus 24 per name); a larger one is
/// never shared.
pub const MAX_SET_BYTES: usize = 4096;
/// Most bytes of names held by the interner in all.
pub const MAX_TOTAL_BYTES: usize = 1024 * 1024;
/// Lists refused for lack of room between two sweeps.
pub const SWEEP_EVERY: usize = 256;

/// A bounded set of shared lists.
#[derive(Debug, Default)]
pub struct Interner {
    sets: HashSet<EntitlementSet>,
    bytes: usize,
    refused_since_sweep: usize,
}

/// The process's interner: tokens and client records share their lists
/// (a token's entitlements are often its client's).
static SHARED: LazyLock<Mutex<Interner>> = LazyLock::new(|| Mutex::new(Interner::default()));

/// The shared set equal to `list`, interned in the process's interner
/// when there is room (see the module documentation).
pub fn intern(list: Vec<String>) -> EntitlementSet {
    match SHARED.lock() {
        Ok(mut interner) => interner.intern(list),
        // A panic while holding the lock cannot leave the set unsound, but
        // there is no need to rely on it: share nothing.
        Err(_) => EntitlementSet::from(list),
    }
}

/// What a list costs the interner: its names plus a `String` per name.
fn weight(list: &[String]) -> usize {
    list.iter()
        .map(|name| name.len() + std::mem::size_of::<String>())
        .sum()
}

impl Interner {
    /// The interned set equal to `list`, or `list` as a set of its own when
    /// it cannot be interned.
    pub fn intern(&mut self, list: Vec<String>) -> EntitlementSet {
        if let Some(shared) = self.sets.get(list.as_slice()) {
            return Arc::clone(shared);
        }
        let set = EntitlementSet::from(list);
        let weight = weight(&set);
        if weight > MAX_SET_BYTES {
            return set;
        }
        if !self.has_room(weight) {
            self.refused_since_sweep += 1;
            if self.refused_since_sweep < SWEEP_EVERY {
                return set;
            }
            self.sweep();
            if !self.has_room(weight) {
                return set;
            }
        }
        self.bytes += weight;
        self.sets.insert(Arc::clone(&set));
        set
    }

    fn has_room(&self, weight: usize) -> bool {
        self.sets.len() < MAX_SETS && self.bytes + weight <= MAX_TOTAL_BYTES
    }

    /// Drops the lists only the interner still holds. A count of one cannot
    /// grow meanwhile: every other holder got its clone through `intern`,
    /// which needs `&mut self`.
    fn sweep(&mut self) {
        self.refused_since_sweep = 0;
        let mut freed = 0;
        self.sets.retain(|set| {
            let held = Arc::strong_count(set) > 1;
            if !held {
                freed += weight(set);
            }
            held
        });
        self.bytes -= freed;
    }

    /// Distinct lists held.
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn equal_lists_share_one_allocation_and_keep_their_contents() {
        let mut interner = Interner::default();
        let a = interner.intern(list(&["manageAPIClients", "readAPIClients"]));
        let b = interner.intern(list(&["manageAPIClients", "readAPIClients"]));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(*a, ["manageAPIClients", "readAPIClients"]);
        // Order and duplicates are part of the list.
        let c = interner.intern(list(&["readAPIClients", "manageAPIClients"]));
        let d = interner.intern(list(&["readAPIClients", "readAPIClients"]));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(*c, ["readAPIClients", "manageAPIClients"]);
        assert_eq!(*d, ["readAPIClients", "readAPIClients"]);
        let empty = interner.intern(Vec::new());
        assert!(Arc::ptr_eq(&empty, &interner.intern(Vec::new())));
        assert!(empty.is_empty());
        assert_eq!(interner.len(), 4);
    }

    #[test]
    fn a_full_interner_stays_bounded_and_still_answers_every_list() {
        let mut interner = Interner::default();
        let mut held = Vec::new();
        for i in 0..MAX_SETS + 1000 {
            let set = interner.intern(vec![format!("unique-{i}")]);
            assert_eq!(*set, [format!("unique-{i}")]);
            held.push(set);
        }
        assert_eq!(interner.len(), MAX_SETS);
        // Lists beyond the bound are unshared, with the same contents.
        let late = interner.intern(vec![format!("unique-{}", MAX_SETS + 10)]);
        assert!(!Arc::ptr_eq(&late, &held[MAX_SETS + 10]));
        assert_eq!(late, held[MAX_SETS + 10]);
        // An interned one is still shared.
        assert!(Arc::ptr_eq(
            &interner.intern(vec!["unique-7".into()]),
            &held[7]
        ));
    }

    #[test]
    fn lists_nobody_holds_are_swept_when_room_is_needed() {
        let mut interner = Interner::default();
        for i in 0..MAX_SETS {
            drop(interner.intern(vec![format!("gone-{i}")]));
        }
        let kept = interner.intern(vec!["gone-1".into()]);
        assert_eq!(interner.len(), MAX_SETS);
        // Full: the next lists are refused until a sweep is due.
        for i in 0..SWEEP_EVERY - 1 {
            drop(interner.intern(vec![format!("new-{i}")]));
        }
        assert_eq!(interner.len(), MAX_SETS);
        let fresh = interner.intern(vec!["fresh".into()]);
        // The sweep kept the held list and took the new one.
        assert_eq!(interner.len(), 2);
        assert!(Arc::ptr_eq(&kept, &interner.intern(vec!["gone-1".into()])));
        assert!(Arc::ptr_eq(&fresh, &interner.intern(vec!["fresh".into()])));
    }

    #[test]
    fn large_lists_and_the_byte_bound_are_never_exceeded() {
        let mut interner = Interner::default();
        let big = vec!["x".repeat(MAX_SET_BYTES); 1];
        let a = interner.intern(big.clone());
        let b = interner.intern(big);
        assert!(!Arc::ptr_eq(&a, &b));
        assert!(interner.is_empty());
        // Lists of ~4 KiB each: the byte bound stops them before the count.
        let mut held = Vec::new();
        for i in 0..MAX_SETS {
            held.push(interner.intern(vec![format!("{i:04}{}", "y".repeat(4000))]));
        }
        assert!(interner.bytes <= MAX_TOTAL_BYTES);
        assert!(interner.len() < MAX_SETS);
        assert_eq!(
            interner.bytes,
            held[..interner.len()]
                .iter()
                .map(|s| weight(s))
                .sum::<usize>()
        );
    }
}
