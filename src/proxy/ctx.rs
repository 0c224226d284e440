//! Per-request state carried across pingora's phases.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::state::GatewayState;
use crate::error::GatewayError;

/// What one request has established so far. A snapshot of the live state is
/// taken at the start, so a reload never changes the rules mid-request.
pub struct RequestCtx {
    pub started: Instant,
    pub state: Option<Arc<GatewayState>>,
    pub request_id: String,
    /// Index of the matched route in `state.config.routes`.
    pub route: Option<usize>,
    /// Canonical socket peer and the client address policy uses.
    pub peer: Option<IpAddr>,
    pub peer_trusted: bool,
    pub client_ip: Option<IpAddr>,
    pub client_id: Option<String>,
    pub subject: Option<String>,
    /// The refusal the gateway answered with, if any.
    pub refusal: Option<GatewayError>,
    /// Upstream address attempts (bounded retries on connect failure).
    pub attempts: usize,
    pub upstream_started: Option<Instant>,
}

impl RequestCtx {
    pub fn new() -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            state: None,
            request_id: String::new(),
            route: None,
            peer: None,
            peer_trusted: false,
            client_ip: None,
            client_id: None,
            subject: None,
            refusal: None,
            attempts: 0,
            upstream_started: None,
        }
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}
