//! The pingora glue. Each phase calls pure policy code and either passes the
//! request on or answers it through [`respond::send`].
//!
//! Phases, in the order pingora runs them:
//!
//! ```text
//! request_filter           1. request target, path, framing, header limits  (routing::target)
//!                          2. route lookup → 404 / 405                        (routing::table)
//!                          3. client IP, route ip_allow / ip_deny             (policy::client_ip, policy::ip)
//!                          4. bearer token → verified claims                   (auth)
//!                          6. entitlements require_all / require_any          (policy::entitlements)
//!                          8. the upstream's client_credentials token, if any (clients::oauth)
//! upstream_peer            8. the route's upstream, timeouts from the config
//! upstream_request_filter  8. header hygiene and identity headers              (proxy::headers)
//! response_filter             X-Request-Id on every response
//! fail_to_proxy               upstream errors → 502 / 504 through the responder
//! logging                  9. invalidation after a write, metrics, one audit line
//! ```
//! Nothing after a refusal runs, and a refused request never reaches
//! `upstream_peer`, so it never opens an upstream connection.
//!
//! A route with `[routes.response] redact` leaves this loop at the end of
//! `request_filter`: `redaction::forward` runs the rest (upstream_peer …
//! response_filter) in a pingora subrequest and writes the buffered,
//! redacted answer itself (see `proxy::redaction` for why).

pub mod body;
pub mod ctx;
pub mod headers;
pub mod redaction;
pub mod respond;
pub mod state;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::audit::{self, AuditLog, AuditRecord};
use crate::edge::throttle::LogThrottle;
use crate::error::GatewayError;
use crate::metrics::{Metrics, RequestRecord};
use crate::pipeline::{self, NoTrace, RequestHead};
use crate::policy::ip::canonical;
use crate::shutdown::InFlight;
use ctx::RequestCtx;
use state::GatewayState;

/// The gateway service: holds the live state, swapped whole on reload.
pub struct Gateway {
    state: Arc<ArcSwap<GatewayState>>,
    metrics: Arc<Metrics>,
    audit: Arc<AuditLog>,
    in_flight: Arc<InFlight>,
}

impl Gateway {
    pub fn new(
        state: Arc<ArcSwap<GatewayState>>,
        metrics: Arc<Metrics>,
        audit: Arc<AuditLog>,
    ) -> Gateway {
        Gateway {
            state,
            metrics,
            audit,
            in_flight: InFlight::new(),
        }
    }

    /// The requests this gateway has in flight (a shutdown waits for them).
    pub fn in_flight(&self) -> Arc<InFlight> {
        self.in_flight.clone()
    }

    /// Steps 1–7: decide whether this request may go upstream.
    async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        state: &GatewayState,
    ) -> Result<(), GatewayError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let raw_headers = session
            .as_downstream()
            .as_http1()
            .map(|h1| h1.get_headers_raw_bytes());
        let req = session.req_header();
        let head = RequestHead {
            method: &req.method,
            raw_target: req.raw_path(),
            headers: &req.headers,
            raw_header_block: raw_headers.as_deref(),
            peer: ctx.peer,
        };
        pipeline::admit_head(state, &head, now, &mut ctx.progress, &mut NoTrace).await?;

        // Quota: after every head check (a refused request spends none),
        // before any body byte is read.
        if let Some((index, route)) = ctx.progress.route.and_then(|r| {
            let quota = state.config.routes.get(r)?.quota?;
            Some((quota, r))
        }) {
            let verdict = state.quotas.check(index, route, &ctx.progress).await?;
            ctx.rate_limit = Some(verdict);
        }

        // 7b. The body policy (or a form body's check): read the whole body
        //     (bounded) before anything goes upstream, then check it.
        let content_type = req
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let Some(route) = ctx
            .progress
            .route
            .and_then(|r| state.config.routes.get(r))
            .filter(|r| pipeline::reads_body(r, content_type))
        else {
            return Ok(());
        };
        let content_type = content_type.map(str::to_string);
        // A form on a route without a body policy is bounded by what can be
        // replayed (pingora's retry buffer).
        let max_bytes = route.body.as_ref().map_or(
            state
                .config
                .server
                .max_body_bytes
                .min(body::MAX_INSPECTED_BODY),
            |p| p.max_bytes,
        );
        let body = body::read_bounded(session, max_bytes, ctx.body_deadline).await?;
        pipeline::check_body(
            state,
            &ctx.progress,
            content_type.as_deref(),
            &body,
            &mut NoTrace,
        )?;
        ctx.inspected_body_len = Some(body.len());
        Ok(())
    }
}

/// Step 8, before connecting: on a route that strips the caller's token,
/// an upstream with `auth = { token_url, ... }` gets the gateway's own
/// client_credentials token (cached, renewed before it expires). Without it
/// the request does not go upstream at all.
async fn brokered_credential(
    ctx: &mut RequestCtx,
    state: &GatewayState,
) -> Result<(), GatewayError> {
    let Some(route) = ctx.progress.route.and_then(|r| state.config.routes.get(r)) else {
        return Ok(());
    };
    if !route.strip_authorization {
        return Ok(());
    }
    let Some(source) = state.upstream_token(route.upstream) else {
        return Ok(());
    };
    match source.header(&state.token_http, false).await {
        // A token that cannot travel in a header is no credential.
        Ok(Some(value)) if http::HeaderValue::from_str(&value).is_ok() => {
            ctx.brokered_authorization = Some(value);
            Ok(())
        }
        Ok(_) => Err(GatewayError::UpstreamCredentialUnavailable),
        Err(reason) => {
            static FAILED: LogThrottle = LogThrottle::new(Duration::from_secs(5));
            crate::warn_throttled!(
                FAILED,
                upstream = %state.config.upstreams[route.upstream].name,
                reason = %reason,
                "cannot obtain the upstream's client_credentials token"
            );
            Err(GatewayError::UpstreamCredentialUnavailable)
        }
    }
}

async fn invalidate_after_write(req: &RequestHeader, ctx: &RequestCtx) {
    if matches!(
        req.method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    ) {
        return;
    }
    let (Some(state), Some(route_index)) = (ctx.state.as_ref(), ctx.progress.route) else {
        return;
    };
    let (Some(param), Some(directory)) = (
        state.config.routes[route_index].invalidates_client.as_ref(),
        state.clients.as_ref(),
    ) else {
        return;
    };
    if let Some(raw) = ctx.progress.param(param) {
        let name = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map(|c| c.into_owned())
            .unwrap_or_else(|_| raw.to_string());
        let route = &state.config.routes[route_index];
        let evicted = directory
            .invalidate(&name, route.ids_case_insensitive)
            .await;
        tracing::debug!(client = %name, evicted, "client metadata invalidated after write");
        if let Some(cluster) = state.quotas.cluster() {
            crate::cluster::sync::publish_invalidation(
                cluster,
                Some(&name),
                route.ids_case_insensitive,
            );
        }
    }
}

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a: &SocketAddr| canonical(a.ip()))
}

/// Map an upstream failure to the gateway's error: timeouts are 504, any
/// other failure to reach or read the upstream is 502.
fn upstream_error(e: &Error) -> Option<GatewayError> {
    use ErrorType::*;
    if e.esource() == &ErrorSource::Downstream && matches!(e.etype(), ReadTimedout) {
        // The client stopped sending its body (server.body_timeout_ms).
        return Some(GatewayError::RequestTimeout);
    }
    match e.etype() {
        ReadTimedout | WriteTimedout => Some(GatewayError::UpstreamTimeout),
        ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError | ConnectionClosed
        | ConnectProxyFailure | TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert
        | HandshakeError => Some(GatewayError::UpstreamUnreachable),
        HTTPStatus(408) => Some(GatewayError::RequestTimeout),
        HTTPStatus(_) => Some(GatewayError::Internal),
        _ => match e.esource() {
            ErrorSource::Upstream => Some(GatewayError::UpstreamUnreachable),
            ErrorSource::Downstream => match e.etype() {
                // The client is gone: nothing to answer.
                ReadError | WriteError | ConnectionClosed => None,
                _ => Some(GatewayError::InvalidFraming("malformed request")),
            },
            ErrorSource::Internal | ErrorSource::Unset => Some(GatewayError::Internal),
        },
    }
}

/// Failures a client can cause at will (hang-ups, slow or bad bodies, our
/// refusals) are debug lines; upstream and internal failures are warnings,
/// at most one per interval each.
fn log_failure(e: &Error, refused: bool) {
    static UPSTREAM: LogThrottle = LogThrottle::new(Duration::from_secs(5));
    static INTERNAL: LogThrottle = LogThrottle::new(Duration::from_secs(5));
    match e.esource() {
        _ if refused => tracing::debug!(error = %e, "request refused"),
        ErrorSource::Downstream => tracing::debug!(error = %e, "client failed the request"),
        ErrorSource::Upstream => {
            crate::warn_throttled!(UPSTREAM, error = %e, "upstream request failed")
        }
        ErrorSource::Internal | ErrorSource::Unset => {
            crate::warn_throttled!(INTERNAL, error = %e, "request failed inside the gateway")
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        // pingora makes the context once the request head is read, and drops
        // it after `logging`: exactly a request in flight.
        RequestCtx {
            in_flight: Some(self.in_flight.enter()),
            ..RequestCtx::new()
        }
    }

    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {
        // pingora's default adds a response-compression module, disabled,
        // whose context is still built for every request: the gateway never
        // compresses (a redacting route asks its upstream for an identity
        // answer), so it adds none.
    }

    fn allow_spawning_subrequest(&self, session: &Session, _ctx: &RequestCtx) -> bool {
        // The redaction path forwards through a subrequest; one level only.
        session.subrequest_ctx.is_none()
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora_error::Result<bool> {
        // A redacting route's forwarding subrequest: admitted by its parent.
        if redaction::adopt(session, ctx) {
            return Ok(false);
        }
        let state = self.state.load_full();
        // The whole body, streamed or inspected, must be in by this deadline;
        // each read waits at most until then (updated as the body comes).
        ctx.body_deadline =
            tokio::time::Instant::from_std(ctx.started) + state.config.server.body_timeout;
        session.set_read_timeout(Some(state.config.server.body_timeout));
        ctx.request_id = headers::request_id(session.req_header());
        ctx.peer = peer_ip(session);
        ctx.peer_trusted = ctx
            .peer
            .is_some_and(|p| state.config.server.trusted_proxies.contains(p));
        let mut verdict = self.admit(session, ctx, &state).await;
        if verdict.is_ok() {
            // The gateway's own upstream credential, before anything is sent.
            verdict = brokered_credential(ctx, &state).await;
        }
        ctx.state = Some(state.clone());
        let policy = ctx
            .progress
            .route
            .and_then(|r| state.config.routes.get(r))
            .and_then(|r| r.response.as_ref().map(|p| (r, p)));
        match (verdict, policy) {
            (Ok(()), None) => Ok(false),
            (Ok(()), Some((route, policy))) => {
                match redaction::forward(session, ctx, &state, route, policy).await {
                    Ok(removed) => ctx.redacted = removed,
                    Err(redaction::Failure::Refuse(err)) => {
                        respond::send(session, &err, &ctx.request_id).await;
                        ctx.refusal = Some(err);
                    }
                    // The answer had started: drop the connection unfinished.
                    Err(redaction::Failure::Abort(e)) => return Err(e),
                }
                Ok(true)
            }
            (Err(err), _) => {
                respond::send(session, &err, &ctx.request_id).await;
                ctx.refusal = Some(err);
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora_error::Result<Box<HttpPeer>> {
        let (Some(state), Some(route_index)) = (ctx.state.as_ref(), ctx.progress.route) else {
            return Error::e_explain(ErrorType::InternalError, "no route selected");
        };
        let route = &state.config.routes[route_index];
        let upstream = &state.config.upstreams[route.upstream];
        let address = state
            .next_address(route.upstream)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "upstream has no address"))?;
        ctx.attempts += 1;
        let mut peer = address.peer(upstream);
        peer.options.read_timeout = Some(route.read_timeout);
        peer.options.write_timeout = Some(route.read_timeout);
        ctx.upstream_started = Some(Instant::now());
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was sent yet: trying the next endpoint is safe for any
        // method. Bounded by the number of addresses.
        let addresses = ctx
            .state
            .as_ref()
            .zip(ctx.progress.route)
            .map(|(s, r)| {
                s.config.upstreams[s.config.routes[r].upstream]
                    .addresses
                    .len()
            })
            .unwrap_or(1);
        e.set_retry(ctx.attempts < addresses);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora_error::Result<()> {
        let (Some(state), Some(route_index)) = (ctx.state.as_ref(), ctx.progress.route) else {
            return Error::e_explain(ErrorType::InternalError, "no route selected");
        };
        let route = &state.config.routes[route_index];
        let forwarding = headers::Forwarding {
            route,
            upstream: &state.config.upstreams[route.upstream],
            route_name: state.route_name_header(route_index),
            host: state.host_header(route.upstream),
            request_id: &ctx.request_id,
            client_id: ctx.progress.client_id(),
            subject: ctx.progress.subject(),
            peer: ctx.peer,
            peer_trusted: ctx.peer_trusted,
            trusted_proxies: &state.config.server.trusted_proxies,
            client_ip_header: state.config.server.client_ip_header,
            pinned: &ctx.progress.pinned,
            brokered_authorization: ctx.brokered_authorization.as_deref(),
            proto: if state.config.server.tls.is_some() {
                "https"
            } else {
                "http"
            },
        };
        headers::prepare(session.req_header(), upstream_request, &forwarding)?;
        if ctx.inspected_body_len.is_none() {
            // A streamed body is read from here on: its reads end at the deadline.
            let left = body::remaining(ctx.body_deadline).unwrap_or(Duration::from_millis(1));
            session.set_read_timeout(Some(left));
        }
        if route.response.is_some() {
            redaction::prepare_upstream(upstream_request);
        }
        if let Some(len) = ctx.inspected_body_len {
            // The checked body is replayed whole: frame it with its exact length,
            // and send it at once (the client's 100-continue was answered here).
            upstream_request.remove_header(&http::header::TRANSFER_ENCODING);
            upstream_request.remove_header(&http::header::EXPECT);
            upstream_request.insert_header(http::header::CONTENT_LENGTH, len.to_string())?;
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora_error::Result<()> {
        if ctx.inspected_body_len.is_some() {
            return Ok(());
        }
        // The whole streamed body within body_timeout_ms of the head: a
        // client dribbling bytes is cut off, and the upstream request with it.
        if body.is_some() || !end_of_stream {
            match body::remaining(ctx.body_deadline) {
                Ok(left) => session.set_read_timeout(Some(left)),
                Err(late) => {
                    ctx.refusal = Some(late);
                    return Error::e_explain(
                        ErrorType::HTTPStatus(408),
                        "request body not received within body_timeout_ms",
                    );
                }
            }
        }
        // A streamed (chunked) body is cut off once it passes the server limit.
        let max = ctx
            .state
            .as_ref()
            .map(|s| s.config.server.max_body_bytes)
            .unwrap_or(0);
        ctx.streamed_body_bytes = ctx
            .streamed_body_bytes
            .saturating_add(body.as_ref().map_or(0, |b| b.len() as u64));
        if ctx.streamed_body_bytes > max {
            ctx.refusal = Some(GatewayError::BodyTooLarge(max));
            return Error::e_explain(
                ErrorType::HTTPStatus(413),
                "request body over max_body_bytes",
            );
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora_error::Result<()> {
        // The upstream refused the gateway's own token: forget it so the
        // next request obtains a new one. This request is not retried (its
        // body may already be gone); the caller gets the upstream's 401.
        if upstream_response.status == http::StatusCode::UNAUTHORIZED {
            if let Some(sent) = &ctx.brokered_authorization {
                if let Some(source) = ctx
                    .state
                    .as_ref()
                    .zip(ctx.progress.route)
                    .and_then(|(s, r)| s.upstream_token(s.config.routes[r].upstream))
                {
                    source.discard(sent).await;
                    tracing::info!("upstream refused the gateway's client_credentials token; it is renewed on the next request");
                }
            }
        }
        // Allocates: the name (not in pingora's standard set) and its
        // case-map clone, and the growth of the answer's two header maps
        // (pingora cannot reserve them); the id's value is shared.
        upstream_response.insert_header(headers::REQUEST_ID, ctx.request_id.header())?;
        // The caller's quota, not whatever the upstream says about its own.
        if let Some(verdict) = &ctx.rate_limit {
            upstream_response.insert_header("ratelimit-policy", verdict.policy.as_str())?;
            upstream_response.insert_header("ratelimit", verdict.state.as_str())?;
        }
        Ok(())
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        // `fail_to_proxy` logs every failure itself, at a level that does not
        // let a client write one ERROR line per connection.
        true
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        // A refusal decided in a body filter takes precedence over its transport error.
        log_failure(e, ctx.refusal.is_some());
        let Some(err) = ctx.refusal.clone().or_else(|| upstream_error(e)) else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        // A forwarding subrequest reports to its parent (which answers), and
        // an answer already under way cannot become an error response: the
        // connection is dropped with the body unfinished.
        if ctx.subrequest || session.response_written().is_some() {
            return FailToProxy {
                error_code: err.status(),
                can_reuse_downstream: false,
            };
        }
        if ctx.request_id.is_empty() {
            ctx.request_id = headers::request_id(session.req_header());
        }
        if session.response_written().is_some() {
            // The upstream's answer has begun: all that is left is to close.
            ctx.refusal = Some(err);
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        // The connection is not reused after a failed proxy attempt (the
        // request body may be half-read): the answer must say so, or a client
        // sends its next request on a connection about to close.
        session.set_keepalive(None);
        respond::send(session, &err, &ctx.request_id).await;
        let code = err.status();
        ctx.refusal = Some(err);
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.subrequest {
            return; // its parent logs the request once
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        // 9. A forwarded write that succeeded changes the client: forget it.
        if ctx.refusal.is_none() && (200..300).contains(&status) {
            invalidate_after_write(session.req_header(), ctx).await;
        }
        let route = ctx
            .state
            .as_ref()
            .zip(ctx.progress.route)
            .map(|(s, r)| s.config.routes[r].name.as_str())
            .unwrap_or("none");
        let reason = ctx.refusal.as_ref().map(GatewayError::code);
        let req = session.req_header();
        let method = req.method.as_str();
        let duration = ctx.started.elapsed().as_secs_f64();
        let upstream = ctx.upstream_started.map(|t| t.elapsed().as_secs_f64());
        self.metrics.record(&RequestRecord {
            route,
            method,
            status,
            refusal: reason,
            duration_seconds: duration,
            upstream_seconds: upstream,
            redacted: ctx.redacted,
            series: ctx
                .state
                .as_ref()
                .zip(ctx.progress.route)
                .and_then(|(s, r)| s.route_series(r)),
        });
        if self.audit.enabled() {
            self.audit.write(&AuditRecord {
                time: audit::rfc3339(SystemTime::now()),
                request_id: &ctx.request_id,
                route,
                method,
                path: req.uri.path(),
                client_id: ctx.progress.client_id(),
                subject: ctx.progress.subject(),
                client_ip: ctx.progress.client_ip.map(|i| i.to_string()),
                decision: if ctx.refusal.is_some() {
                    "refuse"
                } else {
                    "allow"
                },
                reason,
                status,
                duration_ms: duration * 1000.0,
                upstream_latency_ms: upstream.map(|s| s * 1000.0),
                redacted: ctx.redacted,
            });
        }
    }
}
