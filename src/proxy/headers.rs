//! Header hygiene for the request that goes upstream.
//!
//! Order matters: hop-by-hop headers — including every name the client
//! nominated in `Connection` — are removed first, then client-sent identity
//! and forwarding headers, and only then does the gateway add its own. So a
//! client can neither forge an identity header nor nominate one for removal.

use std::fmt;
use std::net::IpAddr;

use http::header::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;

use crate::config::model::{RouteConfig, UpstreamAuth, UpstreamConfig};
use crate::policy::client_ip::{believed_chain, ClientIpHeader};
use crate::policy::ip::IpList;
use crate::routing::target::alias_eq;

/// Standard hop-by-hop fields (RFC 9110 §7.6.1) plus legacy ones. Framing
/// (`Transfer-Encoding`, `Content-Length`) is left to pingora, which reframes
/// the body itself.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Names a client may never remove by nominating them in `Connection`:
/// removing them would change framing or routing, not hop-by-hop metadata.
const NOT_NOMINATABLE: &[&str] = &["content-length", "transfer-encoding", "host"];

/// Client-controlled forwarding headers: removed in every spelling (`_` for
/// `-`, which CGI-style servers read alike), then the gateway sets its own
/// `X-Forwarded-For` or `Forwarded` (per `server.client_ip_header`),
/// `X-Forwarded-Proto` and `X-Forwarded-Host`. The rest are client-address
/// and routing claims some upstream framework might believe; the gateway
/// never vouches for them.
const FORWARDING: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-original-forwarded-for",
    "x-forwarded-scheme",
    "x-forwarded-server",
    "x-forwarded-prefix",
    "x-forwarded-port",
    "x-cluster-client-ip",
    "fastly-client-ip",
];

pub const CLIENT_ID: &str = "x-portcullis-client-id";
pub const SUBJECT: &str = "x-portcullis-subject";
pub const ROUTE: &str = "x-portcullis-route";
pub const REQUEST_ID: &str = "x-request-id";

/// What the gateway knows about the request, to stamp on it.
pub struct Forwarding<'a> {
    pub route: &'a RouteConfig,
    pub upstream: &'a UpstreamConfig,
    /// `route.name` as a header value, made at state build (`None`: made here).
    pub route_name: Option<&'a HeaderValue>,
    /// `upstream.host_header` as a header value, made at state build.
    pub host: Option<&'a HeaderValue>,
    pub request_id: &'a RequestId,
    pub client_id: Option<&'a str>,
    pub subject: Option<&'a str>,
    /// Socket peer (canonical).
    pub peer: Option<IpAddr>,
    /// Whether the peer is a trusted proxy (what its chain vouches for is kept).
    pub peer_trusted: bool,
    pub trusted_proxies: &'a IpList,
    pub client_ip_header: ClientIpHeader,
    /// Headers pinned to token claims (`pin_headers`): set last, always.
    pub pinned: &'a [(HeaderName, String)],
    /// The upstream's client_credentials token as an `Authorization` value,
    /// obtained before connecting (`auth = { token_url, ... }`).
    pub brokered_authorization: Option<&'a str>,
    /// `http` or `https`, from the listener.
    pub proto: &'static str,
}

/// Rewrite `upstream` (a copy of the downstream request) for forwarding.
/// `downstream` is the request exactly as the client sent it.
///
/// Allocations here (counted by `examples/alloc_per_request.rs`), each
/// needed: pingora's `insert_header` turns every name into a `HeaderName`
/// through its bytes, so a name outside the standard set (`X-Forwarded-*`,
/// `X-Request-Id`, `X-Portcullis-*`) costs a copy plus the shared buffer of
/// its clone into the case map; the request's two header maps (values and
/// case) grow as the gateway's headers are added, and pingora has no way to
/// reserve them. Values made once (the route name, the upstream `Host`, the
/// protocol) are shared, not copied; per-request values (client address,
/// request id, claims) are one copy each, as a `HeaderValue` owns its bytes.
pub fn prepare(
    downstream: &RequestHeader,
    upstream: &mut RequestHeader,
    f: &Forwarding<'_>,
) -> pingora_error::Result<()> {
    // 1. Names nominated in Connection (read from the client's request: pingora
    //    may already have dropped `Connection` from the upstream copy). The
    //    pipeline already refused nominations of pinned, credential and
    //    framing headers; whatever else is nominated goes.
    for name in nominated(downstream) {
        if !NOT_NOMINATABLE.contains(&name.as_str()) {
            upstream.remove_header(&name);
        }
    }
    // 2. Hop-by-hop.
    for name in HOP_BY_HOP {
        upstream.remove_header(*name);
    }
    // 3. Client-sent identity headers (every copy; HeaderMap names are lowercase).
    if upstream
        .headers
        .keys()
        .any(|n| n.as_str().starts_with("x-portcullis-"))
    {
        let forged: Vec<HeaderName> = upstream
            .headers
            .keys()
            .filter(|n| n.as_str().starts_with("x-portcullis-"))
            .cloned()
            .collect();
        for name in forged {
            upstream.remove_header(&name);
        }
    }
    // 4. Forwarding headers: from a trusted proxy, what its chain vouches
    //    for (parsed, never copied byte for byte); from anyone else, nothing.
    let believed = f
        .peer_trusted
        .then(|| believed_chain(&downstream.headers, f.trusted_proxies, f.client_ip_header));
    // A HeaderValue clone shares the bytes: no copy.
    let forwarded_host = downstream.headers.get(http::header::HOST).cloned();
    remove_aliased(upstream, FORWARDING);
    if let Some(peer) = f.peer {
        // Formatted on the stack; the header value is its one copy.
        let mut text = StackText::new();
        if write_forwarding_value(&mut text, f.client_ip_header, believed.as_ref(), peer).is_ok() {
            upstream.insert_header(f.client_ip_header.name(), text.as_bytes())?;
        } else {
            // A chain of trusted hops longer than the stack buffer.
            let mut long = String::new();
            let _ = write_forwarding_value(&mut long, f.client_ip_header, believed.as_ref(), peer);
            upstream.insert_header(f.client_ip_header.name(), long)?;
        }
    }
    upstream.insert_header("x-forwarded-proto", HeaderValue::from_static(f.proto))?;
    if let Some(host) = forwarded_host {
        upstream.insert_header("x-forwarded-host", host)?;
    }
    // 5. The gateway's own identity headers.
    upstream.insert_header(REQUEST_ID, f.request_id.header())?;
    match f.route_name {
        Some(name) => upstream.insert_header(ROUTE, name.clone())?,
        None => upstream.insert_header(ROUTE, f.route.name.as_str())?,
    }
    set_optional(upstream, CLIENT_ID, f.client_id)?;
    set_optional(upstream, SUBJECT, f.subject)?;
    // 6. Host and credentials.
    match f.host {
        Some(host) => upstream.insert_header(http::header::HOST, host.clone())?,
        None => upstream.insert_header(http::header::HOST, f.upstream.host_header.as_str())?,
    }
    if f.route.strip_authorization {
        upstream.remove_header(&http::header::AUTHORIZATION);
        match &f.upstream.auth {
            Some(UpstreamAuth::Bearer { token, .. }) => {
                let mut value = b"Bearer ".to_vec();
                value.extend_from_slice(&token.0);
                let mut v = HeaderValue::from_bytes(&value).map_err(|_| {
                    pingora_error::Error::explain(
                        pingora_error::ErrorType::InternalError,
                        "upstream bearer token is not a valid header value",
                    )
                })?;
                v.set_sensitive(true);
                upstream.insert_header(http::header::AUTHORIZATION, v)?;
            }
            Some(UpstreamAuth::Header { name, value, .. }) => {
                let mut v = HeaderValue::from_bytes(&value.0).map_err(|_| {
                    pingora_error::Error::explain(
                        pingora_error::ErrorType::InternalError,
                        "upstream credential is not a valid header value",
                    )
                })?;
                v.set_sensitive(true);
                upstream.insert_header(name.clone(), v)?;
            }
            Some(UpstreamAuth::ClientCredentials { .. }) => {
                // Obtained in request_filter; never go upstream without it.
                let value = f.brokered_authorization.ok_or_else(|| {
                    pingora_error::Error::explain(
                        pingora_error::ErrorType::InternalError,
                        "no client_credentials token for the upstream",
                    )
                })?;
                let mut v = HeaderValue::from_str(value).map_err(|_| {
                    pingora_error::Error::explain(
                        pingora_error::ErrorType::InternalError,
                        "the upstream's client_credentials token is not a valid header value",
                    )
                })?;
                v.set_sensitive(true);
                upstream.insert_header(http::header::AUTHORIZATION, v)?;
            }
            None => {}
        }
    }
    // 7. Pinned headers, from the token's claims: after every removal, so
    //    nothing the client sent (a `Connection` nomination, an alias) can
    //    leave the upstream without them.
    for (name, value) in f.pinned {
        upstream.insert_header(name.clone(), value.as_str())?;
    }
    Ok(())
}

/// The header names the client nominated in `Connection`, read as bytes
/// (a value that is not valid text still nominates its valid tokens).
pub fn nominated(req: &RequestHeader) -> impl Iterator<Item = HeaderName> + '_ {
    req.headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|token| {
            let token = token.trim_ascii();
            (!token.is_empty())
                .then(|| HeaderName::from_bytes(token).ok())
                .flatten()
        })
}

/// Remove every header whose name is one of `names` once `_` is read as `-`.
fn remove_aliased(upstream: &mut RequestHeader, names: &[&str]) {
    let doomed: Vec<HeaderName> = upstream
        .headers
        .keys()
        .filter(|n| names.iter().any(|want| alias_eq(n.as_str(), want)))
        .cloned()
        .collect();
    for name in doomed {
        upstream.remove_header(&name);
    }
}

/// The forwarding header sent upstream: the client the gateway believes
/// (`unknown` when it could not tell, never a trusted proxy in its place),
/// the trusted hops after it, and the socket peer.
fn write_forwarding_value(
    out: &mut impl fmt::Write,
    header: ClientIpHeader,
    believed: Option<&(Option<IpAddr>, Vec<IpAddr>)>,
    peer: IpAddr,
) -> fmt::Result {
    let mut first = true;
    let mut push = |hop: Option<IpAddr>| -> fmt::Result {
        if !first {
            out.write_str(", ")?;
        }
        first = false;
        match (header, hop) {
            (ClientIpHeader::XForwardedFor, Some(ip)) => write!(out, "{ip}"),
            (ClientIpHeader::XForwardedFor, None) => out.write_str("unknown"),
            (ClientIpHeader::Forwarded, Some(IpAddr::V6(ip))) => write!(out, "for=\"[{ip}]\""),
            (ClientIpHeader::Forwarded, Some(ip)) => write!(out, "for={ip}"),
            (ClientIpHeader::Forwarded, None) => out.write_str("for=unknown"),
        }
    };
    if let Some((client, hops)) = believed {
        push(*client)?;
        for hop in hops {
            push(Some(*hop))?;
        }
    }
    push(Some(peer))
}

/// Text formatted into a fixed buffer: `fmt::Error` once it is full.
struct StackText {
    buf: [u8; 256],
    len: usize,
}

impl StackText {
    fn new() -> StackText {
        StackText {
            buf: [0; 256],
            len: 0,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Set a gateway header from a claim value. A value that cannot be a header
/// (control characters) is left out rather than mangled; the forged copies
/// were already removed, so the upstream never sees a client-chosen value.
fn set_optional(
    upstream: &mut RequestHeader,
    name: &'static str,
    value: Option<&str>,
) -> pingora_error::Result<()> {
    if let Some(value) = value {
        // One copy of the claim's text: a HeaderValue owns its bytes.
        match HeaderValue::from_str(value) {
            Ok(v) => {
                upstream.insert_header(name, v)?;
            }
            Err(_) => tracing::warn!(
                header = name,
                "claim value not representable as a header; omitted"
            ),
        }
    }
    Ok(())
}

/// A request's id, held as the header value it is sent as (upstream and
/// back to the client): a clone shares its bytes, so the id costs one
/// allocation per request when the gateway makes it, none when the client's
/// is kept (a clone of the value pingora parsed).
#[derive(Clone, Debug)]
pub struct RequestId(HeaderValue);

impl RequestId {
    pub fn as_str(&self) -> &str {
        // Made from visible ASCII only (`request_id`), so never empty here
        // unless it is the not-yet-set default.
        self.0.to_str().unwrap_or_default()
    }

    /// The `X-Request-Id` value.
    pub fn header(&self) -> HeaderValue {
        self.0.clone()
    }
}

impl Default for RequestId {
    /// Not set yet (an empty id).
    fn default() -> RequestId {
        RequestId(HeaderValue::from_static(""))
    }
}

impl PartialEq<&str> for RequestId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::ops::Deref for RequestId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

/// A client's `X-Request-Id` is kept when it is a sane token: 1..=128
/// visible ASCII characters. Otherwise the gateway makes a new one.
pub fn request_id(downstream: &RequestHeader) -> RequestId {
    let mut values = downstream.headers.get_all(REQUEST_ID).iter();
    if let (Some(v), None) = (values.next(), values.next()) {
        if is_sane_request_id(v.as_bytes()) {
            return RequestId(v.clone());
        }
    }
    let mut hex = [0u8; 32];
    new_request_id_into(&mut hex);
    // Owned by a reference-counted buffer from the start: this is the id's
    // one allocation, and its clones (upstream, answer) share it.
    RequestId(
        HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(hex))
            .unwrap_or_else(|_| HeaderValue::from_static("")),
    )
}

fn is_sane_request_id(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_graphic() && *c != b'"' && *c != b'\\')
}

/// [`request_id`] over the raw values of every `X-Request-Id` field (the
/// edge answers before pingora has parsed the head).
pub fn request_id_from<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> String {
    if let (Some(b), None) = (values.next(), values.next()) {
        if is_sane_request_id(b) {
            if let Ok(s) = std::str::from_utf8(b) {
                return s.to_string();
            }
        }
    }
    new_request_id()
}

/// For an answer at the edge, before there is a request to carry a `RequestId`.
fn new_request_id() -> String {
    let mut hex = [0u8; 32];
    new_request_id_into(&mut hex);
    String::from_utf8_lossy(&hex).into_owned()
}

/// 128 random bits as 32 lowercase hex digits.
fn new_request_id_into(out: &mut [u8; 32]) {
    let n: u128 = rand::random();
    // Cannot fail: 16 bytes always fit 32 hex digits.
    let _ = hex::encode_to_slice(n.to_be_bytes(), out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_request_ids_are_kept_others_replaced() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header(REQUEST_ID, "abc-123").unwrap();
        assert_eq!(request_id(&req), "abc-123");
        req.insert_header(REQUEST_ID, "has space").unwrap();
        assert_ne!(request_id(&req), "has space");
        req.insert_header(REQUEST_ID, "x".repeat(129)).unwrap();
        assert_eq!(request_id(&req).len(), 32);
    }
}
