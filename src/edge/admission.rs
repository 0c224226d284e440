//! The connection caps, applied inside pingora's accept loop.
//!
//! Pingora spawns a task per accepted connection and only then calls
//! [`super::EdgeApp`]. Capping there let a burst fill the file-descriptor
//! table before the over-cap connections were closed, and pingora's accept
//! loop sleeps a whole second on every `EMFILE`: a flood from one address
//! delayed everyone. [`Admission`] is pingora's `ConnectionFilter` instead,
//! called by the accept loop itself right after `accept()`: an over-cap
//! connection is closed there, before the next `accept()`, so the flood never
//! holds more descriptors than the caps allow.
//!
//! The filter takes the connection's slot (a [`ConnectionGuard`]) and parks it
//! under the peer's socket address; the edge task claims it a moment later.
//! A slot whose connection never reaches the edge (pingora failed to set a
//! socket option and dropped it) is swept after [`UNCLAIMED_AFTER`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::listeners::ConnectionFilter;

use super::fd_budget;
use super::limits::{CapExceeded, ConnectionGuard, ConnectionLimits};
use super::throttle::LogThrottle;
use crate::metrics::Metrics;
use crate::policy::ip::canonical;
use crate::proxy::state::GatewayState;

/// A parked slot older than this belongs to a connection pingora dropped.
const UNCLAIMED_AFTER: Duration = Duration::from_secs(5);
/// Parked slots are swept only when there are more than this many, so the
/// usual map (one or two entries) costs no scan.
const SWEEP_ABOVE: usize = 64;

/// Connections refused by a cap: one warning per interval at most.
static CAP_WARNINGS: LogThrottle = LogThrottle::new(Duration::from_secs(10));

/// The caps of the proxy listeners.
pub struct Admission {
    limits: Arc<ConnectionLimits>,
    state: Arc<ArcSwap<GatewayState>>,
    metrics: Arc<Metrics>,
    /// Slots taken in the accept loop, not yet claimed by the edge task.
    parked: Mutex<HashMap<SocketAddr, (ConnectionGuard, Instant)>>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("open", &self.limits.open())
            .finish_non_exhaustive()
    }
}

impl Admission {
    pub fn new(state: Arc<ArcSwap<GatewayState>>, metrics: Arc<Metrics>) -> Arc<Admission> {
        Arc::new(Admission {
            limits: ConnectionLimits::new(),
            state,
            metrics,
            parked: Mutex::new(HashMap::new()),
        })
    }

    /// Take a slot for a connection from `peer`, or count and log the refusal.
    pub fn admit(&self, peer: Option<IpAddr>) -> Option<ConnectionGuard> {
        let state = self.state.load();
        let server = &state.config.server;
        let counted = peer.filter(|ip| !server.trusted_proxies.contains(*ip));
        let max_total = server.max_connections.min(fd_budget::max_connections());
        match self
            .limits
            .admit(counted, max_total, server.max_connections_per_ip)
        {
            Ok(slot) => Some(slot),
            Err(cap) => {
                self.refused(cap);
                None
            }
        }
    }

    /// The slot the accept loop took for `peer`; for a connection that did
    /// not pass the filter (no socket address), a slot taken now.
    pub fn claim(&self, peer: Option<SocketAddr>) -> Option<ConnectionGuard> {
        if let Some(addr) = peer {
            if let Some((slot, _)) = self.parked().remove(&addr) {
                return Some(slot);
            }
        }
        self.admit(peer.map(|a| canonical(a.ip())))
    }

    fn refused(&self, cap: CapExceeded) {
        self.metrics.connection_refused(cap.label());
        crate::warn_throttled!(
            CAP_WARNINGS,
            cap = cap.label(),
            "connection refused: over a connection cap"
        );
    }

    fn parked(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, (ConnectionGuard, Instant)>> {
        // The map holds only guards: a panic elsewhere leaves it consistent.
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn park(&self, addr: SocketAddr, slot: ConnectionGuard) {
        let now = Instant::now();
        let mut parked = self.parked();
        if parked.len() > SWEEP_ABOVE {
            parked.retain(|_, (_, at)| now.duration_since(*at) < UNCLAIMED_AFTER);
        }
        // A stale entry for the same address (its connection was dropped
        // unclaimed and the port reused) is replaced: its slot is released.
        parked.insert(addr, (slot, now));
    }
}

#[async_trait]
impl ConnectionFilter for Admission {
    async fn should_accept(&self, addr: Option<&SocketAddr>) -> bool {
        let Some(addr) = addr else {
            // No inet address (never on a TCP listener): the edge task caps it.
            return true;
        };
        match self.admit(Some(canonical(addr.ip()))) {
            Some(slot) => {
                self.park(*addr, slot);
                true
            }
            None => false,
        }
    }
}
