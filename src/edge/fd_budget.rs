//! The file-descriptor budget: how many client connections the process can
//! hold without `accept()` failing with `EMFILE`.
//!
//! Pingora's accept loop sleeps a whole second after every `EMFILE`, during
//! which nobody is served: running out of descriptors must not happen. At
//! start the soft `RLIMIT_NOFILE` is raised to the hard limit (what nginx's
//! `worker_rlimit_nofile` and Go's runtime do), and `max_connections` is
//! capped at what that limit can carry: each client connection may hold one
//! upstream connection too, and [`RESERVED`] descriptors stay free for
//! listeners, the runtime, log files and JWKS, metadata and token fetches.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Descriptors kept out of the client budget.
pub const RESERVED: usize = 64;
/// Descriptors one client connection may need: itself and one upstream.
pub const PER_CONNECTION: usize = 2;

/// `usize::MAX` until [`raise_and_measure`] ran.
static MAX_CONNECTIONS: AtomicUsize = AtomicUsize::new(usize::MAX);

/// The most client connections the file limit allows (see the module docs).
pub fn max_connections() -> usize {
    MAX_CONNECTIONS.load(Ordering::Relaxed)
}

/// The descriptor limits after raising the soft one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub soft: u64,
    pub hard: u64,
}

/// Connections a soft limit of `soft` descriptors can carry.
pub fn connections_for(soft: u64) -> usize {
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    soft.saturating_sub(RESERVED) / PER_CONNECTION
}

/// Raise the soft descriptor limit to the hard one and record the connection
/// budget. Returns the limits in force, or `None` where they cannot be read
/// (the budget then stays unlimited).
pub fn raise_and_measure() -> Option<FdLimit> {
    let limit = raise()?;
    MAX_CONNECTIONS.store(connections_for(limit.soft), Ordering::Relaxed);
    Some(limit)
}

#[cfg(unix)]
fn raise() -> Option<FdLimit> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (mut soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    // On failure (e.g. a hard limit of RLIM_INFINITY above the kernel's
    // nr_open) the soft limit is left as it was, and that is what counts.
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        soft = hard;
    }
    Some(FdLimit { soft, hard })
}

#[cfg(not(unix))]
fn raise() -> Option<FdLimit> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_leaves_a_reserve_and_an_upstream_descriptor_per_connection() {
        assert_eq!(connections_for(256), 96);
        assert_eq!(connections_for(1024), 480);
        assert_eq!(connections_for(65_536), 32_736);
        assert_eq!(connections_for(10), 0);
        assert_eq!(connections_for(u64::MAX), (usize::MAX - RESERVED) / 2);
    }

    #[test]
    fn raising_never_lowers_the_soft_limit() {
        let before = raise().expect("getrlimit works on this platform");
        let after = raise_and_measure().expect("getrlimit works on this platform");
        assert!(after.soft >= before.soft);
        assert_eq!(after.hard, before.hard);
        assert_eq!(max_connections(), connections_for(after.soft));
    }
}
