//! The decision pipeline, shared by the proxy and `portcullis explain`.
//!
//! [`admit_head`] runs steps 1–6 and the body-less update guards on what is
//! known once the request head has arrived; [`check_body`] runs step 7 on a
//! complete body. Both are plain async functions over a [`GatewayState`]:
//! the proxy feeds them from a pingora session, `explain` from the command
//! line, and benchmarks from memory. A [`Trace`] observes every step.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method};

use crate::auth::VerifiedToken;
use crate::clients::{ClientMeta, Lookup};
use crate::config::model::{AuthMode, EntitlementsFrom, RouteConfig};
use crate::error::BodyRefusal;
use crate::error::GatewayError;
use crate::policy::body::BodyRequest;
use crate::policy::client_ip::client_ip;
use crate::policy::route_guards;
use crate::proxy::state::GatewayState;
use crate::routing::target::{
    check_form_body, check_protected_headers, check_request, is_form_urlencoded, RequestLimits,
};
use crate::routing::RouteLookup;

/// What is known of a request before any body byte is read.
pub struct RequestHead<'a> {
    pub method: &'a Method,
    /// The request-target exactly as sent.
    pub raw_target: &'a [u8],
    pub headers: &'a HeaderMap,
    /// Request line and headers as read from the wire (HTTP/1), if known.
    pub raw_header_block: Option<&'a [u8]>,
    /// The socket peer.
    pub peer: Option<IpAddr>,
}

/// The steps of the pipeline, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Request,
    Route,
    ClientIp,
    Token,
    Client,
    Entitlements,
    DenySelf,
    PinHeaders,
    Quota,
    Body,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Request => "request",
            Step::Route => "route",
            Step::ClientIp => "client ip",
            Step::Token => "token",
            Step::Client => "client",
            Step::Entitlements => "entitlements",
            Step::DenySelf => "deny_self",
            Step::PinHeaders => "pin_headers",
            Step::Quota => "quota",
            Step::Body => "body",
        }
    }
}

/// Observes each step that passed. The proxy uses [`NoTrace`], which
/// compiles to nothing; `explain` prints.
pub trait Trace {
    /// When false the details are never even formatted.
    const ENABLED: bool = true;
    fn passed(&mut self, _step: Step, _detail: fmt::Arguments<'_>) {}
}

/// A trace that records nothing.
pub struct NoTrace;
impl Trace for NoTrace {
    const ENABLED: bool = false;
}

/// Report a passed step, evaluating the detail only when someone listens.
macro_rules! passed {
    ($trace:expr, $step:expr, $($fmt:tt)+) => {
        if T::ENABLED {
            $trace.passed($step, format_args!($($fmt)+));
        }
    };
}

/// What the pipeline established so far. Filled step by step, so a refused
/// request still carries the route and identity for the log.
#[derive(Debug, Default, Clone)]
pub struct Progress {
    pub route: Option<usize>,
    /// Path parameters, copied only for routes whose rules need them later.
    pub params: Vec<(String, String)>,
    pub client_ip: Option<IpAddr>,
    /// The verified token, shared with the token cache (no per-request copy
    /// of its client id, subject or entitlements).
    pub token: Option<Arc<VerifiedToken>>,
    /// Where the caller's effective entitlements come from (see
    /// [`Progress::entitlements`]).
    pub effective: Effective,
    /// Headers to set upstream from token claims (`pin_headers`).
    pub pinned: Vec<(HeaderName, String)>,
}

/// Where the caller's effective entitlements come from: the token or the
/// client record when one of them decides alone (shared, not copied), a list
/// of its own only for the intersection (`entitlements_from = "both"`).
#[derive(Debug, Clone, Default)]
pub enum Effective {
    /// Decided before step 6, or without a token: none.
    #[default]
    Unknown,
    Token,
    Client(Arc<ClientMeta>),
    Both(Vec<String>),
}

impl Progress {
    /// The caller's effective entitlements (for the body policy).
    pub fn entitlements(&self) -> &[String] {
        match &self.effective {
            Effective::Unknown => &[],
            Effective::Token => self.token.as_ref().map_or(&[], |t| &t.entitlements),
            Effective::Client(c) => &c.entitlements,
            Effective::Both(list) => list,
        }
    }

    /// The API client the token names.
    pub fn client_id(&self) -> Option<&str> {
        self.token.as_ref()?.client_id.as_deref()
    }

    /// The token's `sub`.
    pub fn subject(&self) -> Option<&str> {
        self.token.as_ref()?.subject.as_deref()
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Steps 1–6 and the body-less guards. `now` is unix seconds.
pub async fn admit_head<T: Trace>(
    state: &GatewayState,
    head: &RequestHead<'_>,
    now: u64,
    progress: &mut Progress,
    trace: &mut T,
) -> Result<(), GatewayError> {
    let config = &state.config;
    // Known before anything can fail, so every refusal is logged with it.
    progress.client_ip = client_ip(
        head.peer,
        head.headers,
        &config.server.trusted_proxies,
        config.server.client_ip_header,
    );
    let limits = RequestLimits {
        max_header_bytes: config.server.max_header_bytes,
        max_headers: config.server.max_headers,
        max_body_bytes: config.server.max_body_bytes,
    };
    // 1. Request target, path, framing.
    let target = check_request(
        head.method,
        head.raw_target,
        head.headers,
        head.raw_header_block,
        &limits,
    )?;
    passed!(
        trace,
        Step::Request,
        "path {:?} is unambiguous",
        target.path
    );

    // 2. Route.
    let route_index = match config.route_table.lookup(head.method, target.path) {
        RouteLookup::Matched { index, params } => {
            let needs_params = config.routes.get(index).is_some_and(|r| {
                r.deny_self.is_some() || r.body.is_some() || r.invalidates_client.is_some()
            });
            if needs_params {
                progress.params = params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
            }
            index
        }
        RouteLookup::MethodNotAllowed { allow } => {
            return Err(GatewayError::MethodNotAllowed { allow })
        }
        RouteLookup::NotFound => return Err(GatewayError::NoRoute),
    };
    progress.route = Some(route_index);
    let route = config
        .routes
        .get(route_index)
        .ok_or(GatewayError::Internal)?;
    passed!(
        trace,
        Step::Route,
        "{:?} ({} {})",
        route.name,
        head.method,
        route.path.as_str()
    );

    // Headers the gateway sets (pinned to claims, or its own credential)
    // cannot be nominated for removal or aliased with `_`.
    check_protected_headers(
        head.headers,
        config.protected_headers.iter().map(String::as_str),
    )?;
    // A body the gateway inspects must be checked as the upstream will read it.
    let content_type = head
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if reads_body(route, content_type) {
        check_content_encoding(head.headers)?;
    }

    // 3. The route's own IP rules, before any token work.
    if route.ip_allow.is_some() || route.ip_deny.is_some() {
        // No address (unix socket) fails closed.
        let ip = progress.client_ip.ok_or(GatewayError::IpDenied)?;
        if route.ip_allow.as_ref().is_some_and(|l| !l.contains(ip))
            || route.ip_deny.as_ref().is_some_and(|l| l.contains(ip))
        {
            return Err(GatewayError::IpDenied);
        }
    }
    passed!(
        trace,
        Step::ClientIp,
        "{}{}",
        progress
            .client_ip
            .map_or_else(|| "unknown".to_string(), |i| i.to_string()),
        if route.ip_allow.is_some() || route.ip_deny.is_some() {
            " passes the route's ip_allow / ip_deny"
        } else {
            " (the route has no IP rules)"
        }
    );

    if route.auth == AuthMode::None {
        passed!(trace, Step::Token, "not required (auth = \"none\")");
        trace_quota(state, route, progress, trace);
        return Ok(());
    }
    // 4. Token.
    let token =
        crate::auth::bearer::bearer_token(head.headers)?.ok_or(GatewayError::MissingToken)?;
    let verified = state.verifier.verify(token, &route.issuers, now).await?;
    progress.token = Some(verified.clone());
    passed!(
        trace,
        Step::Token,
        "{}: issuer {:?}, subject {:?}, client {:?}, entitlements {:?}",
        if state.verifier.introspects(verified.issuer) {
            "introspected (RFC 7662: active, iss / exp / nbf / aud accepted)"
        } else {
            "verified"
        },
        config
            .issuers
            .get(verified.issuer)
            .map_or("?", |i| i.name.as_str()),
        verified.subject.as_deref().unwrap_or("-"),
        verified.client_id.as_deref().unwrap_or("-"),
        verified.entitlements
    );

    // 5. Client metadata: the client must exist, be enabled, and accept
    //    this address.
    let uses_metadata = config
        .issuers
        .get(verified.issuer)
        .is_some_and(|i| i.client_metadata);
    let meta = match &state.clients {
        Some(directory) if uses_metadata => {
            let id = verified
                .client_id
                .as_deref()
                .ok_or(GatewayError::UnknownClient)?;
            match directory.lookup(id).await {
                Ok(Lookup::Found(meta)) => {
                    meta.admit(progress.client_ip)?;
                    passed!(trace, Step::Client,
                            "{id:?} exists, is enabled, its IP filter admits the client; entitlements {:?}",
                            meta.entitlements
                        );
                    Some(meta)
                }
                Ok(Lookup::NotFound) => return Err(GatewayError::UnknownClient),
                Ok(Lookup::Invalid(_)) => return Err(GatewayError::InvalidClientRecord),
                Ok(Lookup::SourceRefused(_)) => return Err(GatewayError::MetadataUnavailable),
                Err(_) => return Err(GatewayError::MetadataUnavailable),
            }
        }
        _ => {
            passed!(trace, Step::Client, "no client metadata applies");
            None
        }
    };

    // 6. Entitlements: the token's, the client's, or both at once.
    let from = config
        .clients
        .as_ref()
        .map_or(EntitlementsFrom::Token, |c| c.entitlements_from);
    progress.effective = match (&meta, from) {
        (None, _) | (Some(_), EntitlementsFrom::Token) => Effective::Token,
        (Some(m), EntitlementsFrom::Metadata) => Effective::Client(m.clone()),
        (Some(m), EntitlementsFrom::Both) => Effective::Both(
            verified
                .entitlements
                .iter()
                .filter(|e| m.entitlements.contains(e))
                .cloned()
                .collect(),
        ),
    };
    route.entitlements.check(progress.entitlements())?;
    passed!(
        trace,
        Step::Entitlements,
        "required all {:?} / any {:?}; effective {:?}",
        route.entitlements.all,
        route.entitlements.any,
        progress.entitlements()
    );

    // 7a. Update guards that need no body.
    if let Some(param) = &route.deny_self {
        let ids: Vec<&str> = progress
            .client_id()
            .into_iter()
            .chain(meta.iter().flat_map(|m| m.names()))
            .collect();
        route_guards::deny_self(
            param,
            progress.param(param),
            &ids,
            route.ids_case_insensitive,
        )?;
        passed!(trace, Step::DenySelf, "{{{param}}} is not the caller");
    }
    if !route.pin_headers.is_empty() {
        progress.pinned =
            route_guards::check_pins(&route.pin_headers, head.headers, &verified.claims)?;
        passed!(trace, Step::PinHeaders, "pinned headers match the token");
    }
    trace_quota(state, route, progress, trace);
    Ok(())
}

/// Show the quota that applies. The proxy counts it after [`admit_head`]
/// (`Quotas::check`); a trace only describes it, so `explain` spends none.
fn trace_quota<T: Trace>(
    state: &GatewayState,
    route: &RouteConfig,
    progress: &Progress,
    trace: &mut T,
) {
    if !T::ENABLED {
        return;
    }
    // A route without a quota has no such step to show.
    if let Some(text) = route.quota.and_then(|q| state.quotas.describe(q, progress)) {
        trace.passed(Step::Quota, format_args!("{text}"));
    }
}

/// Whether the gateway reads the whole body of this request before it goes
/// upstream: on routes with a body policy, and for a form-encoded body on
/// any other route (where frameworks would read `_method` from it).
pub fn reads_body(route: &RouteConfig, content_type: Option<&str>) -> bool {
    route.body.is_some() || is_form_urlencoded(content_type)
}

/// A body that is read and checked must be checked as sent: a compressed one
/// would be checked as bytes and decompressed upstream, unseen.
fn check_content_encoding(headers: &HeaderMap) -> Result<(), GatewayError> {
    let encoded = headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|coding| !coding.trim_ascii().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return Err(GatewayError::BodyRule(BodyRefusal {
            code: "unsupported_media_type",
            rule: "content_encoding",
            pointer: String::new(),
            status: 415,
            message: "a checked body must not be content-encoded (identity only)".into(),
        }));
    }
    Ok(())
}

/// Step 7: the route's body policy on a complete body, and the form check
/// of [`reads_body`] (no-op when neither applies).
pub fn check_body<T: Trace>(
    state: &GatewayState,
    progress: &Progress,
    content_type: Option<&str>,
    body: &[u8],
    trace: &mut T,
) -> Result<(), GatewayError> {
    let policy = progress
        .route
        .and_then(|r| state.config.routes.get(r))
        .and_then(|r| r.body.as_ref());
    if is_form_urlencoded(content_type) && !policy.is_some_and(|p| p.json) {
        check_form_body(body)?;
        passed!(
            trace,
            Step::Body,
            "the form body carries no override or token"
        );
    }
    let Some(policy) = policy else {
        return Ok(());
    };
    let params: Vec<(&str, &str)> = progress
        .params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    policy
        .evaluate(&BodyRequest {
            content_type,
            body,
            path_params: &params,
            entitlements: progress.entitlements(),
        })
        .map_err(GatewayError::BodyRule)?;
    passed!(
        trace,
        Step::Body,
        "{} bytes pass every body rule",
        body.len()
    );
    Ok(())
}
