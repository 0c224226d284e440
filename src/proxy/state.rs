//! The live, immutable state the request path reads: a validated config and
//! what was built from it. Swapped whole (arc-swap), never mutated.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::auth::Verifier;
use crate::config::Config;

pub struct GatewayState {
    pub config: Arc<Config>,
    pub verifier: Arc<Verifier>,
    /// Round-robin cursor per upstream (same index as `config.upstreams`).
    cursors: Vec<AtomicUsize>,
}

impl GatewayState {
    pub fn new(config: Arc<Config>, verifier: Arc<Verifier>) -> GatewayState {
        let cursors = config
            .upstreams
            .iter()
            .map(|_| AtomicUsize::new(0))
            .collect();
        GatewayState {
            config,
            verifier,
            cursors,
        }
    }

    /// Next address of upstream `index`, round-robin.
    pub fn next_address(&self, index: usize) -> Option<&str> {
        let upstream = self.config.upstreams.get(index)?;
        let n = upstream.addresses.len();
        if n == 0 {
            return None;
        }
        let i = self.cursors.get(index)?.fetch_add(1, Ordering::Relaxed) % n;
        upstream.addresses.get(i).map(String::as_str)
    }
}
