//! The connection layer, before a request exists.
//!
//! [`EdgeApp`] is the pingora `ServerApp` of the proxy listeners. It wraps
//! pingora's `HttpProxy<Gateway>` and owns each connection from accept to
//! close:
//!
//! ```text
//! accept ─ caps (max_connections, max_connections_per_ip) ── over: close, unread
//!        ─ TLS handshake (within header_timeout_ms)
//!        ┌ wait for the first byte (header_timeout_ms, then keepalive_timeout_ms)
//!        │ read the whole head within header_timeout_ms of its first byte
//!        │ check what pingora's parser would refuse bare  (routing::target::check_raw_head)
//!        │ hand the bytes read to pingora (set_pipelined_prefix) → Gateway phases
//!        └ pingora gives the connection back for keep-alive ─┘
//! ```
//!
//! Refusals here (408 head timeout, 431, 400 for what pingora would refuse)
//! get the gateway's JSON answer from the one responder; idle and vanished
//! clients are closed with at most a debug line.

pub mod admission;
pub mod answer;
pub mod fd_budget;
pub mod head;
pub mod limits;
pub mod throttle;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::listening::Service;
use pingora_proxy::HttpProxy;

use crate::audit::{self, AuditLog, AuditRecord};
use crate::config::Config;
use crate::error::GatewayError;
use crate::metrics::{Metrics, RequestRecord};
use crate::policy::ip::canonical;
use crate::proxy::state::GatewayState;
use crate::proxy::Gateway;
use crate::routing::target::RequestLimits;
use crate::shutdown::{DrainGrace, FRESH_CONNECTION_GRACE};
use admission::Admission;
use head::HeadEnd;

/// Log targets of pingora that write a line per client mishap (a hang-up
/// while the response is sent, a body longer than declared, a hang-up on the
/// admin listener); the edge and the gateway log those cases themselves at
/// debug. Added to the `[log] level` filter (not when `RUST_LOG` is set).
pub const QUIET_PINGORA_TARGETS: &[&str] = &[
    "pingora_proxy::proxy_h1=off",
    "pingora_core::protocols::http::v1=error",
    "pingora_core::apps::http_app=off",
];

/// The proxy listeners' application: the edge around pingora's proxy.
pub struct EdgeApp {
    proxy: Arc<HttpProxy<Gateway>>,
    state: Arc<ArcSwap<GatewayState>>,
    metrics: Arc<Metrics>,
    audit: Arc<AuditLog>,
    admission: Arc<Admission>,
    tls: Option<Acceptor>,
}

/// The proxy service for `config`: the edge around `gateway`, listening on
/// every `server.listen` address (TLS, when configured, is the edge's).
pub fn service(
    conf: &Arc<ServerConf>,
    config: &Config,
    gateway: Gateway,
    state: Arc<ArcSwap<GatewayState>>,
    metrics: Arc<Metrics>,
    audit: Arc<AuditLog>,
) -> Result<Service<DrainGrace<EdgeApp>>, String> {
    let tls = config.server.tls.as_ref().map(tls::acceptor).transpose()?;
    log_fd_budget(config);
    let admission = Admission::new(state.clone(), metrics.clone());
    let app = EdgeApp {
        proxy: Arc::new(pingora_proxy::http_proxy(conf, gateway)),
        state,
        metrics,
        audit,
        admission: admission.clone(),
        tls,
    };
    // Pingora's cleanup of the app runs after the fresh-connection grace
    // (see `crate::shutdown`).
    let mut service = Service::new(
        "portcullis proxy".to_string(),
        DrainGrace::new(app, FRESH_CONNECTION_GRACE),
    );
    for addr in &config.server.listen {
        service.add_tcp(addr);
    }
    // The caps run in pingora's accept loop (see `admission`).
    service.set_connection_filter(admission);
    Ok(service)
}

/// Raise the file limit and say what it allows, loudly when the configured
/// `max_connections` does not fit in it.
fn log_fd_budget(config: &Config) {
    let Some(limit) = fd_budget::raise_and_measure() else {
        return;
    };
    let budget = fd_budget::max_connections();
    if config.server.max_connections > budget {
        tracing::warn!(
            soft_limit = limit.soft,
            hard_limit = limit.hard,
            max_connections = config.server.max_connections,
            effective = budget,
            "server.max_connections is above what the file limit allows; \
             capping client connections at the effective value (raise LimitNOFILE)"
        );
    } else {
        tracing::debug!(soft_limit = limit.soft, budget, "file limit");
    }
}

fn peer_addr(stream: &Stream) -> Option<SocketAddr> {
    let digest = stream.get_socket_digest()?;
    digest.peer_addr()?.as_inet().copied()
}

#[async_trait]
impl ServerApp for EdgeApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let peer_addr = peer_addr(&stream);
        let peer = peer_addr.map(|a| canonical(a.ip()));
        // Dropping the stream closes it, unread.
        let _slot = self.admission.claim(peer_addr)?;
        let state = self.state.load_full();
        let server = &state.config.server;
        let _open = self.metrics.connection_opened();
        let handshake_limit = server.header_timeout;
        drop(state);
        let stream = match &self.tls {
            None => stream,
            Some(acceptor) => tls::handshake(acceptor, stream, handshake_limit).await?,
        };
        self.serve(stream, peer, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.proxy).await;
    }
}

impl EdgeApp {
    /// Requests on one connection, one head at a time, until it closes.
    async fn serve(
        self: &Arc<Self>,
        mut stream: Stream,
        peer: Option<IpAddr>,
        shutdown: &ShutdownWatch,
    ) {
        let mut watch = shutdown.clone();
        let mut persistent: Option<HttpPersistentSettings> = None;
        let mut first = true;
        loop {
            let state = self.state.load_full();
            let server = &state.config.server;
            let limits = RequestLimits {
                max_header_bytes: server.max_header_bytes,
                max_headers: server.max_headers,
                max_body_bytes: server.max_body_bytes,
            };
            // A new connection gets header_timeout_ms for its first byte too.
            let idle = if first {
                server.header_timeout
            } else {
                server.keepalive_timeout
            };
            let started = Instant::now();
            // One allocation per request: the head is read here and handed
            // to pingora whole (`set_pipelined_prefix` takes it by value).
            let mut buf = BytesMut::new();
            // At a shutdown, an idle keep-alive connection closes at once; a
            // connection accepted just before it gets a short grace for the
            // first request it may already have sent.
            let stop_grace = if first {
                FRESH_CONNECTION_GRACE
            } else {
                Duration::ZERO
            };
            let end = head::read_head(
                &mut stream,
                &mut buf,
                head::Waits {
                    idle,
                    head: server.header_timeout,
                    stop_grace,
                },
                &limits,
                &mut watch,
            )
            .await;
            match end {
                HeadEnd::Complete => {}
                HeadEnd::Nothing(why) | HeadEnd::Gone(why) => {
                    tracing::debug!(why, "connection closed without a request");
                    return;
                }
                HeadEnd::Refuse(err, request_id) => {
                    tracing::debug!(error = err.code(), "request refused at the edge");
                    self.record(&err, &request_id, peer, started);
                    answer::refuse(&mut stream, &err, &request_id).await;
                    return;
                }
            }
            drop(state);
            let mut session = ServerSession::new_http1(stream);
            match persistent.take() {
                // The gateway never enables pipelining, so these settings
                // carry no pipelined prefix of their own.
                Some(settings) => settings.apply_to_session(&mut session),
                // What pingora does for the first request of a connection.
                None if first && !*shutdown.borrow() => session.set_keepalive(Some(60)),
                None => session.set_keepalive(None),
            }
            session.set_pipelined_prefix(buf);
            // pingora's `HttpServerApp` is an async_trait: its future is boxed
            // once per request (as are the ProxyHttp phases' futures).
            let Some(reused) = self.proxy.process_new_http(session, shutdown).await else {
                return;
            };
            let (next, settings) = reused.consume();
            stream = next;
            persistent = settings;
            first = false;
        }
    }

    /// Metrics and the audit line of a request refused at the edge.
    fn record(&self, err: &GatewayError, request_id: &str, peer: Option<IpAddr>, started: Instant) {
        let duration = started.elapsed().as_secs_f64();
        self.metrics.record(&RequestRecord {
            route: "none",
            method: "",
            status: err.status(),
            refusal: Some(err.code()),
            duration_seconds: duration,
            upstream_seconds: None,
            redacted: 0,
            series: None,
        });
        if self.audit.enabled() {
            self.audit.write(&AuditRecord {
                time: audit::rfc3339(SystemTime::now()),
                request_id,
                route: "none",
                method: "",
                path: "",
                client_id: None,
                subject: None,
                client_ip: peer.map(|ip| ip.to_string()),
                decision: "refuse",
                reason: Some(err.code()),
                status: err.status(),
                duration_ms: duration * 1000.0,
                upstream_latency_ms: None,
                redacted: 0,
            });
        }
    }
}
