//! The buffered path for routes with `[routes.response] redact`.
//!
//! # Why a subrequest
//!
//! Redaction must be able to turn an upstream `200` into a `502` after the
//! whole body was read (it may not parse, or may pass `max_bytes`), and the
//! rewritten answer needs an exact `Content-Length`. In pingora 0.9's proxy
//! loop (`proxy_h1.rs`, `process_upstream_tasks`) the upstream header task
//! goes through `response_filter` and is written downstream in the same
//! batch, before any body task arrives: `response_filter` can change the
//! header but cannot hold it back, `response_body_filter` can hold chunks
//! back (`*body = None`) but by then the status line is on the wire, and
//! the downstream modules (`HttpModule::response_header_filter`) run on the
//! same write path. Holding the header is not possible there.
//!
//! So a redacting route never runs that loop on the caller's session.
//! After every check of `request_filter` passed, the request is handed to
//! a pingora *subrequest* of this same gateway ([`pingora_proxy::SubrequestSpawner`]):
//! it runs `upstream_peer`, `upstream_request_filter` (header hygiene,
//! identity headers, `Accept-Encoding: identity`) and pingora's own
//! upstream I/O, timeouts and retries exactly as a streamed request would,
//! but its answer arrives here as `HttpTask`s on a channel instead of on
//! the caller's socket. This module then decides, with nothing sent yet:
//!
//! * a `2xx` (not `204` / `205`) answer declared JSON is buffered up to
//!   `max_bytes` (a larger declared `Content-Length` is refused at once),
//!   checked to be identity-encoded, redacted by [`crate::policy::redact`],
//!   and written with an exact `Content-Length`, without `ETag`,
//!   `Content-MD5`, `Digest`, `Content-Digest`, `Repr-Digest`; anything it
//!   cannot read is answered `502 response_not_redactable` — the upstream's
//!   bytes never reach the caller;
//! * any other answer (non-2xx, not JSON) streams through unchanged, chunk
//!   by chunk, as on a route without redaction.
//!
//! `HEAD` is sent upstream as `GET` on a redacting route, so the `HEAD`
//! answer carries the `Content-Length` the redacted `GET` answer has.
//! `Range` / `If-Range` are not forwarded (a byte range of a secret would
//! slip past a JSON parser). A request body on a redacting route is read
//! whole first (bounded like a checked body) and replayed into the
//! subrequest with its exact length.
//!
//! Routes without `redact` never come here: their answers stream through
//! pingora's loop untouched, with no buffering; the only per-request cost
//! left is the subrequest spawner pingora hands every top-level session
//! (`allow_spawning_subrequest`: one `Arc` clone).
//!
//! Upstream failures inside the subrequest are not answered there: its
//! `fail_to_proxy` stays silent and pingora passes the error over the
//! handle (`subreq_proxy_error`), so the caller gets the gateway's own
//! 502 / 504 from this request, which also logs and audits it once.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode};
use pingora_core::protocols::http::HttpTask;
use pingora_http::ResponseHeader;
use pingora_proxy::subrequest::{BodyMode, Ctx as SubrequestCtx};
use pingora_proxy::Session;

use super::body;
use super::ctx::RequestCtx;
use super::headers::RequestId;
use super::state::GatewayState;
use crate::config::model::RouteConfig;
use crate::error::GatewayError;
use crate::policy::redact::{self, ResponsePolicy};

/// Response headers that describe the upstream's bytes, not the rewritten
/// ones: dropped from a redacted answer.
const STALE_HEADERS: &[&str] = &[
    "etag",
    "content-md5",
    "digest",
    "content-digest",
    "repr-digest",
];

/// What the parent request established, handed to its subrequest so that
/// it forwards without deciding anything again.
pub struct Admitted {
    state: Arc<GatewayState>,
    progress: crate::pipeline::Progress,
    request_id: RequestId,
    peer: Option<std::net::IpAddr>,
    peer_trusted: bool,
    body_len: Option<usize>,
    /// The caller asked `HEAD`: the subrequest asks `GET`.
    as_get: bool,
    /// The gateway's client_credentials token for the upstream, if any.
    brokered_authorization: Option<String>,
    /// The quota's verdict: its headers go on the answer like any other.
    rate_limit: Option<crate::quota::Verdict>,
}

/// How the buffered path ended when it did not write a complete answer.
pub enum Failure {
    /// Nothing was sent yet: answer with this refusal.
    Refuse(GatewayError),
    /// The answer had started (a streamed pass-through) when the upstream
    /// failed: the connection must be dropped without finishing the body.
    Abort(Box<pingora_error::Error>),
}

/// In a subrequest: take over what the parent established. Returns false
/// when `session` is not one of ours.
pub fn adopt(session: &mut Session, ctx: &mut RequestCtx) -> bool {
    let Some(admitted) = session
        .subrequest_ctx
        .as_mut()
        .and_then(|c| c.user_ctx_mut())
        .and_then(|u| u.downcast_mut::<Admitted>())
    else {
        return false;
    };
    ctx.subrequest = true;
    ctx.state = Some(admitted.state.clone());
    ctx.progress = std::mem::take(&mut admitted.progress);
    ctx.request_id = std::mem::take(&mut admitted.request_id);
    ctx.peer = admitted.peer;
    ctx.peer_trusted = admitted.peer_trusted;
    ctx.inspected_body_len = admitted.body_len;
    ctx.brokered_authorization = admitted.brokered_authorization.take();
    ctx.rate_limit = admitted.rate_limit.take();
    let as_get = admitted.as_get;
    let body_len = admitted.body_len;
    let req = session.req_header_mut();
    if as_get {
        req.set_method(Method::GET);
    }
    if let Some(len) = body_len {
        // The body arrives whole on the channel: frame it by its length.
        req.remove_header(&http::header::TRANSFER_ENCODING);
        let _ = req.insert_header(http::header::CONTENT_LENGTH, len.to_string());
    }
    true
}

/// Headers of the upstream request on a redacting route: an identity-
/// encoded, whole answer.
pub fn prepare_upstream(upstream_request: &mut pingora_http::RequestHeader) {
    upstream_request.remove_header(&http::header::RANGE);
    upstream_request.remove_header(&http::header::IF_RANGE);
    let _ = upstream_request.insert_header(http::header::ACCEPT_ENCODING, "identity");
}

/// Forward the admitted request through a subrequest and answer the caller
/// with the (redacted) result. `Ok(redacted members)` when an answer was
/// written.
pub async fn forward(
    session: &mut Session,
    ctx: &mut RequestCtx,
    state: &Arc<GatewayState>,
    route: &RouteConfig,
    policy: &ResponsePolicy,
) -> Result<usize, Failure> {
    let body = request_body(session, ctx, state).await?;
    let is_head = session.req_header().method == Method::HEAD;
    let admitted = Admitted {
        state: state.clone(),
        progress: ctx.progress.clone(),
        request_id: ctx.request_id.clone(),
        peer: ctx.peer,
        peer_trusted: ctx.peer_trusted,
        body_len: body.as_ref().map(Bytes::len),
        as_get: is_head,
        brokered_authorization: ctx.brokered_authorization.clone(),
        rate_limit: ctx.rate_limit.clone(),
    };
    let Some(spawner) = session.subrequest_spawner.as_ref() else {
        return Err(Failure::Refuse(GatewayError::Internal));
    };
    let sub_ctx = SubrequestCtx::builder()
        .user_ctx(Box::new(admitted))
        .body_mode(if body.is_some() {
            BodyMode::ExpectBody
        } else {
            BodyMode::NoBody
        })
        .build();
    let (prepared, mut handle) = spawner.create_subrequest(session.as_downstream(), sub_ctx);
    ctx.upstream_started = Some(std::time::Instant::now());
    let running = AbortOnDrop(tokio::spawn(prepared.run()));
    if let Some(body) = body {
        // The channel holds a few tasks: this never waits on the upstream.
        let _ = handle.tx.send(HttpTask::Body(Some(body), true)).await;
    }

    // The final header (informational ones are the gateway's business).
    let (header, mut ended) = loop {
        match handle.rx.recv().await {
            Some(HttpTask::Header(h, _)) if h.status.is_informational() => continue,
            Some(HttpTask::Header(h, end)) => break (h, end),
            Some(HttpTask::Failed(e)) => return Err(Failure::Refuse(upstream_failure(&e))),
            Some(_) => continue,
            None => {
                drop(running);
                let err = match handle.subreq_proxy_error.await {
                    Ok(e) => upstream_failure(&e),
                    Err(_) => GatewayError::UpstreamUnreachable,
                };
                return Err(Failure::Refuse(err));
            }
        }
    };

    let pointers = policy.pointers_for(ctx.progress.entitlements());
    if !redactable(&header) {
        // Not ours to rewrite: stream it through as it comes.
        return pass_through(session, header, ended, is_head, &mut handle.rx)
            .await
            .map(|()| 0);
    }
    let refuse = |reason: &'static str| {
        tracing::warn!(
            route = %route.name,
            status = header.status.as_u16(),
            reason,
            "upstream answer not redactable; answering 502"
        );
        Failure::Refuse(GatewayError::ResponseNotRedactable(reason))
    };
    if !identity_encoded(&header.headers) {
        return Err(refuse("the answer is content-encoded"));
    }
    let declared = header
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > policy.max_bytes) {
        return Err(refuse("the answer is larger than max_bytes"));
    }
    let mut buffer = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    while !ended {
        match handle.rx.recv().await {
            Some(HttpTask::Body(data, end)) => {
                if let Some(data) = data {
                    if (buffer.len() + data.len()) as u64 > policy.max_bytes {
                        return Err(refuse("the answer is larger than max_bytes"));
                    }
                    buffer.extend_from_slice(&data);
                }
                ended = end;
            }
            Some(HttpTask::Done) | Some(HttpTask::Trailer(_)) => ended = true,
            Some(HttpTask::Failed(e)) => return Err(Failure::Refuse(upstream_failure(&e))),
            Some(HttpTask::Header(..)) | Some(HttpTask::UpgradedBody(..)) => {
                return Err(refuse("unexpected message in the answer"))
            }
            None => {
                drop(running);
                let err = match handle.subreq_proxy_error.await {
                    Ok(e) => upstream_failure(&e),
                    Err(_) => GatewayError::UpstreamUnreachable,
                };
                return Err(Failure::Refuse(err));
            }
        }
    }
    drop(running);
    let redacted = match redact::redact(&buffer.freeze(), &pointers) {
        Ok(r) => r,
        Err(e) => return Err(refuse(e.reason)),
    };
    let mut out = *header;
    for name in STALE_HEADERS {
        out.remove_header(*name);
    }
    out.remove_header(&http::header::TRANSFER_ENCODING);
    out.insert_header(
        http::header::CONTENT_LENGTH,
        redacted.body.len().to_string(),
    )
    .map_err(Failure::Abort)?;
    let empty = is_head || redacted.body.is_empty();
    session
        .write_response_header(Box::new(out), empty)
        .await
        .map_err(Failure::Abort)?;
    if !empty {
        session
            .write_response_body(Some(redacted.body), true)
            .await
            .map_err(Failure::Abort)?;
    }
    Ok(redacted.removed)
}

/// Stream a non-redactable answer to the caller as it arrives.
async fn pass_through(
    session: &mut Session,
    header: Box<ResponseHeader>,
    ended: bool,
    is_head: bool,
    rx: &mut tokio::sync::mpsc::Receiver<HttpTask>,
) -> Result<(), Failure> {
    // The upstream was asked GET for a HEAD: send the head only.
    let done = ended || is_head;
    session
        .write_response_header(header, done)
        .await
        .map_err(Failure::Abort)?;
    if done {
        return Ok(());
    }
    loop {
        match rx.recv().await {
            Some(HttpTask::Body(data, end)) => {
                session
                    .write_response_body(data, end)
                    .await
                    .map_err(Failure::Abort)?;
                if end {
                    return Ok(());
                }
            }
            Some(HttpTask::Done) | Some(HttpTask::Trailer(_)) => {
                session
                    .write_response_body(None, true)
                    .await
                    .map_err(Failure::Abort)?;
                return Ok(());
            }
            Some(HttpTask::Failed(e)) => return Err(Failure::Abort(e)),
            Some(_) | None => {
                return Err(Failure::Abort(pingora_error::Error::explain(
                    pingora_error::ErrorType::ConnectionClosed,
                    "upstream answer ended early",
                )))
            }
        }
    }
}

/// A `2xx` answer with a body, declared JSON.
fn redactable(header: &ResponseHeader) -> bool {
    header.status.is_success()
        && !matches!(
            header.status,
            StatusCode::NO_CONTENT | StatusCode::RESET_CONTENT
        )
        && header
            .headers
            .get_all(http::header::CONTENT_TYPE)
            .iter()
            .any(|v| redact::is_json_media_type(v.as_bytes()))
}

/// No `Content-Encoding`, or only `identity`.
fn identity_encoded(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .all(|coding| {
            let coding = coding.trim_ascii();
            coding.is_empty() || coding.eq_ignore_ascii_case(b"identity")
        })
}

/// The whole request body, when there is one: the checked body of a body
/// policy, or read now (bounded like one).
async fn request_body(
    session: &mut Session,
    ctx: &mut RequestCtx,
    state: &GatewayState,
) -> Result<Option<Bytes>, Failure> {
    if ctx.inspected_body_len.is_some() {
        return Ok(Some(session.get_retry_buffer().unwrap_or_default()));
    }
    if session.is_body_empty() {
        return Ok(None);
    }
    let max = state
        .config
        .server
        .max_body_bytes
        .min(body::MAX_INSPECTED_BODY);
    let bytes = body::read_bounded(session, max, ctx.body_deadline)
        .await
        .map_err(Failure::Refuse)?;
    ctx.inspected_body_len = Some(bytes.len());
    Ok(Some(bytes))
}

fn upstream_failure(e: &pingora_error::Error) -> GatewayError {
    super::upstream_error(e).unwrap_or(GatewayError::UpstreamUnreachable)
}

/// The subrequest task, stopped when the caller's request is done with it
/// (an abandoned upstream answer is not read to its end).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_identity_encoding_is_redactable() {
        let mut h = HeaderMap::new();
        assert!(identity_encoded(&h));
        h.insert("content-encoding", "identity".parse().unwrap());
        assert!(identity_encoded(&h));
        h.append("content-encoding", "gzip".parse().unwrap());
        assert!(!identity_encoded(&h));
        let mut h = HeaderMap::new();
        h.insert("content-encoding", "identity, br".parse().unwrap());
        assert!(!identity_encoded(&h));
    }

    #[test]
    fn redactable_answers_are_2xx_json_with_a_body() {
        let mk = |status: u16, ct: Option<&str>| {
            let mut h = ResponseHeader::build(status, None).unwrap();
            if let Some(ct) = ct {
                h.insert_header("content-type", ct).unwrap();
            }
            h
        };
        assert!(redactable(&mk(200, Some("application/json"))));
        assert!(redactable(&mk(201, Some("application/scim+json"))));
        assert!(!redactable(&mk(204, Some("application/json"))));
        assert!(!redactable(&mk(404, Some("application/json"))));
        assert!(!redactable(&mk(200, Some("text/plain"))));
        assert!(!redactable(&mk(200, None)));
    }
}
