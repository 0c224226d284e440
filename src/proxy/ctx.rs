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
    /// Path parameters of the matched route, copied only for routes whose
    /// rules need them after the request head is released.
    pub params: Vec<(String, String)>,
    /// Headers the gateway sets from token claims (`pin_headers`).
    pub pinned: Vec<(http::HeaderName, String)>,
    /// Length of a body read and checked by the body policy.
    pub inspected_body_len: Option<usize>,
    /// Body bytes streamed so far (routes without a body policy).
    pub streamed_body_bytes: u64,
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
            params: Vec::new(),
            pinned: Vec::new(),
            inspected_body_len: None,
            streamed_body_bytes: 0,
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
