//! Per-request state carried across pingora's phases.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::headers::RequestId;
use super::state::GatewayState;
use crate::error::GatewayError;
use crate::pipeline::Progress;
use crate::shutdown::InFlightGuard;

/// What one request has established so far. A snapshot of the live state is
/// taken at the start, so a reload never changes the rules mid-request.
pub struct RequestCtx {
    pub started: Instant,
    pub state: Option<Arc<GatewayState>>,
    pub request_id: RequestId,
    /// What the decision pipeline established (route, client, identity).
    pub progress: Progress,
    /// Canonical socket peer.
    pub peer: Option<IpAddr>,
    pub peer_trusted: bool,
    /// The refusal the gateway answered with, if any.
    pub refusal: Option<GatewayError>,
    /// Length of a body read and checked by the body policy.
    pub inspected_body_len: Option<usize>,
    /// Body bytes streamed so far (routes without a body policy).
    pub streamed_body_bytes: u64,
    /// Upstream address attempts (bounded retries on connect failure).
    pub attempts: usize,
    /// The `Authorization` value of the upstream's client_credentials token,
    /// obtained after admission (never logged).
    pub brokered_authorization: Option<String>,
    pub upstream_started: Option<Instant>,
    /// When the whole body must be in (`server.body_timeout_ms` after the
    /// end of the head, which is when the context is made).
    pub body_deadline: tokio::time::Instant,
    /// Held for the request's life: a shutdown waits for it.
    pub in_flight: Option<InFlightGuard>,
    /// This is the subrequest that forwards for a redacting route
    /// (`proxy::redaction`): it decides nothing and logs nothing itself.
    pub subrequest: bool,
    /// Members removed from the answer (`[routes.response] redact`).
    pub redacted: usize,
    /// The quota's verdict on an admitted request (its headers go on the answer).
    pub rate_limit: Option<crate::quota::Verdict>,
}

impl RequestCtx {
    pub fn new() -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            state: None,
            request_id: RequestId::default(),
            progress: Progress::default(),
            peer: None,
            peer_trusted: false,
            refusal: None,
            inspected_body_len: None,
            streamed_body_bytes: 0,
            attempts: 0,
            brokered_authorization: None,
            upstream_started: None,
            body_deadline: tokio::time::Instant::now(),
            in_flight: None,
            subrequest: false,
            redacted: 0,
            rate_limit: None,
        }
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}
