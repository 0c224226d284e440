//! Bounded buffering of a request body before anything goes upstream.
//!
//! Used only on routes with `[routes.body]`: the whole body is read inside
//! `request_filter` into pingora's retry buffer (64 KiB, which is why a
//! body policy's `max_bytes` is capped there), checked, and — when allowed —
//! replayed upstream by pingora unchanged.

use tokio::time::Instant;

use bytes::Bytes;
use pingora_proxy::Session;

use crate::error::GatewayError;

/// Pingora's retry buffer size: the most a body policy can inspect and replay.
pub const MAX_INSPECTED_BODY: u64 = 64 * 1024;

/// Read the whole request body, refusing as soon as it passes `max_bytes`
/// (without reading the rest) or when it is not complete by `deadline`
/// (`server.body_timeout_ms` after the end of the head: the whole body, not
/// each read, so a client dribbling a byte at a time is cut off too).
pub async fn read_bounded(
    session: &mut Session,
    max_bytes: u64,
    deadline: Instant,
) -> Result<Bytes, GatewayError> {
    if let Some(declared) = declared_length(session) {
        if declared > max_bytes {
            return Err(GatewayError::BodyTooLarge(max_bytes));
        }
    }
    // A client waiting for permission to send (RFC 9110 §10.1.1) gets it
    // only now, after the request head passed every other check.
    if expects_continue(session) {
        if let Err(e) = session.write_continue_response().await {
            tracing::debug!(error = %e, "client went away before 100 Continue");
            return Err(GatewayError::InvalidFraming(
                "request body could not be read",
            ));
        }
    }
    session.enable_retry_buffering();
    let mut total: u64 = 0;
    loop {
        // Pingora's own per-read timer ends at the deadline too.
        session.set_read_timeout(Some(remaining(deadline)?));
        let chunk = match tokio::time::timeout_at(deadline, session.read_request_body()).await {
            Err(_) => return Err(GatewayError::RequestTimeout),
            // pingora's own read timeout (set to the same limit) may fire first.
            Ok(Err(e)) if e.etype() == &pingora_error::ErrorType::ReadTimedout => {
                return Err(GatewayError::RequestTimeout);
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "request body read failed");
                return Err(GatewayError::InvalidFraming(
                    "request body could not be read",
                ));
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => chunk,
        };
        total = total.saturating_add(chunk.len() as u64);
        if total > max_bytes {
            return Err(GatewayError::BodyTooLarge(max_bytes));
        }
    }
    if session.retry_buffer_truncated() {
        // Cannot happen while max_bytes ≤ MAX_INSPECTED_BODY; fail closed if it does.
        return Err(GatewayError::BodyTooLarge(max_bytes));
    }
    Ok(session.get_retry_buffer().unwrap_or_default())
}

/// Time left until `deadline`; a body still unread at the deadline is late.
pub fn remaining(deadline: Instant) -> Result<std::time::Duration, GatewayError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(GatewayError::RequestTimeout);
    }
    Ok(left)
}

fn expects_continue(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

fn declared_length(session: &Session) -> Option<u64> {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}
