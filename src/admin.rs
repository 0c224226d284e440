//! The admin listener: health, readiness and the mutating admin endpoints.
//!
//! `GET /metrics` — Prometheus text format. `GET /healthz` — the process is alive. `GET /readyz` — a config is loaded
//! and every issuer has keys (an introspection issuer has none and is ready
//! from the start), and no shutdown has begun (503 with a JSON reason
//! otherwise).
//! `POST /admin/clients/{client_id}/invalidate` and
//! `POST /admin/clients/invalidate-all` — evict cached client metadata;
//! `POST /admin/reload` — re-read the config file (as SIGHUP does). They
//! need `Authorization: Bearer <admin token>` and are off (404) without
//! `[admin] token_env`.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::metrics::Metrics;
use crate::proxy::state::GatewayState;
use crate::reload::Reloader;
use crate::shutdown::Drain;

pub struct AdminApp {
    state: Arc<ArcSwap<GatewayState>>,
    metrics: Arc<Metrics>,
    reloader: Arc<Reloader>,
    drain: Option<Arc<Drain>>,
}

impl AdminApp {
    pub fn new(
        state: Arc<ArcSwap<GatewayState>>,
        metrics: Arc<Metrics>,
        reloader: Arc<Reloader>,
    ) -> AdminApp {
        AdminApp {
            state,
            metrics,
            reloader,
            drain: None,
        }
    }

    /// `/readyz` answers 503 once `drain` has begun (SIGTERM).
    pub fn with_drain(mut self, drain: Arc<Drain>) -> AdminApp {
        self.drain = Some(drain);
        self
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Vec<u8>> {
    let body = body.to_string().into_bytes();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_default()
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Vec<u8>> {
    json(
        status,
        serde_json::json!({"error": code, "message": message}),
    )
}

/// Compare in constant time, revealing neither a matching prefix nor the
/// expected length: both sides are hashed to 32 bytes first, and the digests
/// are compared without an early exit.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Whether the request carries the admin token.
fn authorized(session: &ServerSession, state: &GatewayState) -> Option<bool> {
    let expected = state.config.admin.token.as_ref()?;
    let presented = session
        .req_header()
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    Some(presented.is_some_and(|t| constant_time_eq(t.as_bytes(), &expected.0)))
}

impl AdminApp {
    async fn route(&self, session: &ServerSession) -> Response<Vec<u8>> {
        let state = self.state.load_full();
        let req = session.req_header();
        let path = req.uri.path();
        let method = &req.method;
        match (method.as_str(), path) {
            ("GET", "/metrics") => {
                if let Some(dir) = &state.clients {
                    dir.settle().await;
                }
                let body = self.metrics.render(&state);
                Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                    .header("content-length", body.len())
                    .body(body)
                    .unwrap_or_default()
            }
            ("GET", "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
            ("GET", "/readyz") if self.drain.as_ref().is_some_and(|d| d.is_draining()) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"status": "not_ready", "reason": "shutting down"}),
            ),
            ("GET", "/readyz") => {
                let missing: Vec<&str> = state
                    .config
                    .issuers
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !state.verifier.issuer_ready(*i))
                    .map(|(_, iss)| iss.name.as_str())
                    .collect();
                if missing.is_empty() {
                    json(StatusCode::OK, serde_json::json!({"status": "ready"}))
                } else {
                    json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        serde_json::json!({
                            "status": "not_ready",
                            "reason": format!("no signing keys loaded for issuer(s): {}", missing.join(", ")),
                        }),
                    )
                }
            }
            ("POST", p) if p.starts_with("/admin/") => {
                match authorized(session, &state) {
                    None => {
                        return error(
                            StatusCode::NOT_FOUND,
                            "not_found",
                            "admin endpoints are off (no [admin] token_env)",
                        )
                    }
                    Some(false) => {
                        let mut resp = error(
                            StatusCode::UNAUTHORIZED,
                            "missing_token",
                            "admin token required",
                        );
                        if let Ok(v) =
                            http::HeaderValue::from_str("Bearer realm=\"portcullis-admin\"")
                        {
                            resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
                        }
                        return resp;
                    }
                    Some(true) => {}
                }
                self.admin_action(&state, p).await
            }
            _ => error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
        }
    }

    async fn admin_action(&self, state: &GatewayState, path: &str) -> Response<Vec<u8>> {
        if path == "/admin/reload" {
            let reloader = self.reloader.clone();
            return match tokio::task::spawn_blocking(move || reloader.reload()).await {
                Ok(Ok(hash)) => json(
                    StatusCode::OK,
                    serde_json::json!({"reloaded": true, "hash": hash}),
                ),
                Ok(Err(reason)) => json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    serde_json::json!({"reloaded": false, "error": "invalid_config", "message": reason}),
                ),
                Err(_) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "reload task failed",
                ),
            };
        }
        let Some(dir) = state.clients.as_ref() else {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no [clients] configured",
            );
        };
        // With [cluster], every replica evicts the same (crate::cluster::sync).
        let share = |client: Option<&str>| {
            if let Some(cluster) = state.quotas.cluster() {
                crate::cluster::sync::publish_invalidation(cluster, client, false);
            }
        };
        if path == "/admin/clients/invalidate-all" {
            dir.invalidate_all();
            share(None);
            return json(StatusCode::OK, serde_json::json!({"invalidated": "all"}));
        }
        let id = path
            .strip_prefix("/admin/clients/")
            .and_then(|rest| rest.strip_suffix("/invalidate"))
            .filter(|id| !id.is_empty() && !id.contains('/'));
        match id {
            Some(raw) => {
                let id = percent_encoding::percent_decode_str(raw)
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .unwrap_or_else(|_| raw.to_string());
                let n = dir.invalidate(&id, false).await;
                share(Some(&id));
                json(StatusCode::OK, serde_json::json!({"invalidated": n}))
            }
            None => error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        self.route(session).await
    }
}
