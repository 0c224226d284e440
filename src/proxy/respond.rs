//! The one place a refusal becomes an HTTP response.
//!
//! Every answer the gateway produces itself has a JSON body
//! `{"error": CODE, "message": TEXT, "request_id": ID}`, `X-Request-Id`, and
//! for 401/403 the RFC 6750 `WWW-Authenticate` challenge. Nothing written
//! here ever contains a token, key or secret: messages come from
//! [`GatewayError`]'s `Display`, which only holds gateway-authored text.

use bytes::Bytes;
use http::HeaderValue;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use serde::Serialize;

use super::headers::RequestId;
use crate::error::{GatewayError, TokenFault};

pub const REALM: &str = "portcullis";
/// RFC 6750 §3.1: no credentials at all, so no `error` attribute.
const MISSING_TOKEN_CHALLENGE: &str = "Bearer realm=\"portcullis\"";

/// The JSON body, serialized straight from borrowed fields (members in
/// this order: `error`, `message`, `request_id`).
#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    #[serde(serialize_with = "as_text")]
    message: &'a GatewayError,
    request_id: &'a str,
}

/// `err`'s `Display`, written into the JSON string without a String of its own.
fn as_text<S: serde::Serializer>(err: &&GatewayError, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(*err)
}

/// The response header and body for `err`; pure, so it is unit-testable.
pub fn render(
    err: &GatewayError,
    request_id: &str,
) -> pingora_error::Result<(ResponseHeader, Bytes)> {
    let id = HeaderValue::from_str(request_id).map_err(|_| {
        pingora_error::Error::explain(
            pingora_error::ErrorType::InvalidHTTPHeader,
            "invalid value while insert",
        )
    })?;
    render_with_id(err, request_id, id)
}

/// [`render`] with the request id's header value already made (a request's
/// [`RequestId`]: shared, not copied).
///
/// Allocations (`examples/alloc_per_request.rs`): the body (one buffer),
/// the header maps pingora builds, the copies of the names outside
/// pingora's standard set (`x-request-id`, `ratelimit*`) and of the
/// per-request values (length, challenge); constant values are not copied.
fn render_with_id(
    err: &GatewayError,
    request_id: &str,
    id_header: HeaderValue,
) -> pingora_error::Result<(ResponseHeader, Bytes)> {
    let mut body = Vec::with_capacity(160 + request_id.len());
    let json = Body {
        error: err.code(),
        message: err,
        request_id,
    };
    serde_json::to_writer(&mut body, &json).map_err(|_| {
        pingora_error::Error::explain(
            pingora_error::ErrorType::InternalError,
            "cannot serialize the error body",
        )
    })?;
    let body = Bytes::from(body);
    let mut resp = ResponseHeader::build(err.status(), Some(6))?;
    resp.insert_header("content-type", HeaderValue::from_static("application/json"))?;
    resp.insert_header("content-length", HeaderValue::from(body.len()))?;
    resp.insert_header("x-request-id", id_header)?;
    resp.insert_header("cache-control", HeaderValue::from_static("no-store"))?;
    if let Some(challenge) = challenge(err) {
        resp.insert_header("www-authenticate", challenge)?;
    }
    if let GatewayError::MethodNotAllowed { allow } = err {
        resp.insert_header("allow", allow.as_str())?;
    }
    if let GatewayError::RateLimited(limit) = err {
        resp.insert_header("retry-after", limit.retry_after.to_string())?;
        resp.insert_header("ratelimit-policy", limit.policy.as_str())?;
        resp.insert_header("ratelimit", limit.state.as_str())?;
    }
    Ok((resp, body))
}

/// RFC 6750 §3 challenge for 401 / 403-insufficient-scope, else None.
/// The most common refusal's (no token) is a constant, not copied.
fn challenge(err: &GatewayError) -> Option<HeaderValue> {
    let text = match err {
        // No credentials at all: no `error` attribute (RFC 6750 §3.1).
        GatewayError::MissingToken => {
            return Some(HeaderValue::from_static(MISSING_TOKEN_CHALLENGE))
        }
        GatewayError::InvalidToken(fault) => format!(
            "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
            description(*fault)
        ),
        GatewayError::InsufficientEntitlements { required, .. } => format!(
            "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", scope=\"{}\"",
            quoted_safe(required)
        ),
        _ => return None,
    };
    // Quoted-safe text of the gateway's own: always a header value.
    HeaderValue::try_from(text).ok()
}

fn description(fault: TokenFault) -> &'static str {
    // Gateway-authored constant text: never contains `"` or `\`.
    fault.description()
}

/// Entitlement names come from the config, which validation restricts to
/// non-space, non-quote characters; strip anything that could still break
/// out of the quoted-string.
fn quoted_safe(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect()
}

/// Write the refusal to the client. The connection is closed when the
/// refusal concerns framing, or when request body bytes may be left unread
/// (they would otherwise be parsed as the next request).
pub async fn send(session: &mut Session, err: &GatewayError, request_id: &RequestId) {
    let (resp, body) = match render_with_id(err, request_id.as_str(), request_id.header()) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot build error response");
            let _ = session.respond_error(500).await;
            return;
        }
    };
    if err.closes_connection() || !session.is_body_empty() {
        session.set_keepalive(None);
    }
    if let Err(e) = session.write_response_header(Box::new(resp), false).await {
        tracing::debug!(error = %e, "client went away before the error response");
        return;
    }
    if let Err(e) = session.write_response_body(Some(body), true).await {
        tracing::debug!(error = %e, "client went away during the error response");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(resp: &'a ResponseHeader, name: &str) -> Option<&'a str> {
        resp.headers.get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn missing_token_challenge_has_no_error_attribute() {
        let (resp, body) = render(&GatewayError::MissingToken, "rid-1").unwrap();
        assert_eq!(resp.status.as_u16(), 401);
        assert_eq!(
            header(&resp, "www-authenticate"),
            Some("Bearer realm=\"portcullis\"")
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "missing_token");
        assert_eq!(v["request_id"], "rid-1");
        assert_eq!(header(&resp, "content-type"), Some("application/json"));
    }

    #[test]
    fn invalid_token_and_insufficient_scope_challenges() {
        let (resp, _) = render(&GatewayError::InvalidToken(TokenFault::Expired), "r").unwrap();
        let c = header(&resp, "www-authenticate").unwrap();
        assert!(c.contains("error=\"invalid_token\""), "{c}");
        assert!(
            c.contains("error_description=\"the token has expired\""),
            "{c}"
        );

        let err = GatewayError::InsufficientEntitlements {
            required: "manageAPIClients readAPIClients".into(),
            missing: "manageAPIClients".into(),
        };
        let (resp, body) = render(&err, "r").unwrap();
        assert_eq!(resp.status.as_u16(), 403);
        assert_eq!(
            header(&resp, "www-authenticate"),
            Some("Bearer realm=\"portcullis\", error=\"insufficient_scope\", scope=\"manageAPIClients readAPIClients\"")
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "insufficient_entitlements");
    }

    #[test]
    fn method_not_allowed_carries_allow() {
        let err = GatewayError::MethodNotAllowed {
            allow: "GET, PUT".into(),
        };
        let (resp, _) = render(&err, "r").unwrap();
        assert_eq!(resp.status.as_u16(), 405);
        assert_eq!(header(&resp, "allow"), Some("GET, PUT"));
        assert!(resp.headers.get("www-authenticate").is_none());
    }
}
