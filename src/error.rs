//! The one error type of the request path.
//!
//! Every refusal the gateway produces is a [`GatewayError`]. Each variant has
//! exactly one HTTP status, one stable `error` code (the JSON body's `error`
//! field, also the metric label) and a human message. `proxy::respond` is the
//! only place that turns one into bytes on the wire.

use std::fmt;

/// Why a request was refused. The `&'static str` / `String` payloads are
/// human-readable detail for the `message` field; they never contain a token,
/// key or secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    // --- step 1: request target, path and framing (400 / 431) ---
    /// Request target not in origin-form (absolute-form, authority-form, `*`).
    #[error("request target must be origin-form (a path): {0}")]
    InvalidRequestTarget(&'static str),
    /// The path could be read two ways (dot segments, encoded slashes, ...).
    #[error("path rejected: {0}")]
    InvalidPath(&'static str),
    /// Ambiguous message framing (Content-Length with Transfer-Encoding, ...).
    #[error("ambiguous message framing: {0}")]
    InvalidFraming(&'static str),
    /// A header that would change the method or path behind the router's back.
    #[error("header not allowed: {0}")]
    OverrideHeader(String),
    /// A header that must appear at most once appeared more often.
    #[error("duplicate header: {0}")]
    DuplicateHeader(&'static str),
    /// Any other header the gateway refuses (`Upgrade`, underscore aliases, bad values).
    #[error("header not allowed: {0}")]
    ForbiddenHeader(String),
    /// A bearer token in the query string (`access_token=`), RFC 6750 §2.3.
    #[error("tokens in the query string are not accepted; use the Authorization header")]
    TokenInQuery,
    /// Request headers over `server.max_header_bytes` / `server.max_headers`.
    #[error("request headers too large: {0}")]
    HeadersTooLarge(&'static str),
    /// Body over `server.max_body_bytes` or the route's `body.max_bytes`.
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(u64),
    /// The client sent the body too slowly (`server.body_timeout_ms`).
    #[error("request body not received in time")]
    RequestTimeout,
    /// The client sent the request head too slowly (`server.header_timeout_ms`).
    #[error("request head not received in time")]
    HeadTimeout,

    // --- step 2: routing ---
    #[error("no route for this path")]
    NoRoute,
    /// The path matches, the method does not; carries the `Allow` header value.
    #[error("method not allowed")]
    MethodNotAllowed { allow: String },

    // --- step 3: client IP ---
    #[error("client address not allowed on this route")]
    IpDenied,

    // --- step 4: token (401 unless noted) ---
    #[error("bearer token required")]
    MissingToken,
    #[error("{0}")]
    InvalidToken(TokenFault),
    /// No keys were ever loaded for the token's issuer (503, fail closed).
    #[error("signing keys for this issuer are not available")]
    KeysUnavailable,
    /// The introspection endpoint could not give a usable answer (down,
    /// timeout, non-200, not an RFC 7662 answer) and no cached answer
    /// applies (503, fail closed).
    #[error("token introspection is unavailable")]
    IntrospectionUnavailable,

    // --- step 5: client metadata ---
    /// The token names no client, or the metadata source does not know it.
    #[error("unknown API client")]
    UnknownClient,
    /// The client exists but is disabled.
    #[error("API client is disabled")]
    ClientDisabled,
    /// The client's own IP filter (`ipFilterOp` / `ipFilters`) refuses the address.
    #[error("client address not allowed by the API client's IP filter")]
    ClientIpDenied,
    /// The metadata source answered, but not with a usable record of this
    /// client (wrong types, a bad `ipFilters` entry, another client's record).
    /// An answer is not an outage: never served stale, never cached.
    #[error("the API client's metadata record is not usable")]
    InvalidClientRecord,
    /// The metadata source failed and no usable cached entry exists (fail closed).
    #[error("client metadata is unavailable")]
    MetadataUnavailable,

    // --- step 6: entitlements (403) ---
    #[error("missing entitlements: {missing}")]
    InsufficientEntitlements {
        /// Space-separated entitlements the route requires (the `scope` attribute).
        required: String,
        /// What the caller lacks, for the message.
        missing: String,
    },

    // --- step 7: body policy ---
    /// A `[routes.body]` rule refused the update; names the rule and pointer.
    #[error("{0}")]
    BodyRule(BodyRefusal),

    // --- step 8: forwarding ---
    #[error("upstream unreachable")]
    UpstreamUnreachable,
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The answer on a route with `[routes.response] redact` could not be
    /// redacted (declared JSON but not valid, over `max_bytes`, or
    /// content-encoded): it is not passed on. Gateway-authored reason.
    #[error("the upstream's answer could not be redacted: {0}")]
    ResponseNotRedactable(&'static str),
    /// The gateway could not obtain its own client_credentials token for the
    /// upstream (503): the request is not sent without it.
    #[error("the gateway's credential for the upstream is unavailable")]
    UpstreamCredentialUnavailable,

    // --- quotas (after every head check, before the body) ---
    /// Over the route's quota (429, with `Retry-After` and the rate-limit headers).
    #[error("rate limit exceeded; retry later")]
    RateLimited(Box<RateLimitHeaders>),
    /// `[cluster]` Redis could not decide and `on_redis_error = "deny"`.
    #[error("the quota service is unavailable")]
    QuotaUnavailable,

    #[error("internal error")]
    Internal,
}

/// The headers of a 429 (IETF HTTPAPI rate-limit-headers draft).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitHeaders {
    /// `Retry-After`, whole seconds.
    pub retry_after: u64,
    /// `RateLimit-Policy`
    pub policy: String,
    /// `RateLimit`
    pub state: String,
}

/// Why a body rule refused an update: which rule, where in the document,
/// and what the caller should fix. `message` is built from the gateway's
/// own text, the JSON pointer and entitlement/field names — never from
/// secret values in the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyRefusal {
    /// Stable code: `unsupported_media_type`, `invalid_json`,
    /// `path_param_mismatch`, `field_denied`, `field_not_allowed`,
    /// `field_required`, `field_requires_entitlement`,
    /// `privilege_escalation`, `unknown_entitlement`, `invalid_enum_value`,
    /// `invalid_cidr`, `self_modification`, `pinned_header_mismatch`.
    pub code: &'static str,
    /// The config rule that refused (`json`, `path_params`, `deny`, `only`,
    /// `require`, `field_requires`, `subset_of_caller`, `catalog`, `enums`,
    /// `cidrs`, `deny_self`, `pin_headers`): the metric label.
    pub rule: &'static str,
    /// JSON pointer (or header name / path parameter) the refusal is about.
    pub pointer: String,
    pub status: u16,
    pub message: String,
}

impl fmt::Display for BodyRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} at {:?})", self.message, self.rule, self.pointer)
    }
}

/// The precise reason a token was refused. Each has its own error code so
/// refusals can be counted per token rule; all of them are `401` with
/// `WWW-Authenticate: Bearer error="invalid_token"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFault {
    /// `Authorization` present but not `Bearer <token>`.
    BadScheme,
    /// Not three base64url parts, bad JSON, wrong types.
    Malformed,
    /// A JSON member appears twice in the header or claims.
    DuplicateMember,
    /// No configured issuer has this `iss` (or `iss` missing).
    UnknownIssuer,
    /// The issuer is configured but this route does not accept it.
    IssuerNotAccepted,
    /// `alg` not in the issuer's list (including `none`).
    AlgorithmNotAllowed,
    /// `typ` not in the issuer's `token_types`.
    TypeNotAllowed,
    /// `crit` names an extension the gateway does not understand.
    UnsupportedCritical,
    /// No key with this `kid` (after the throttled refetch).
    UnknownKey,
    /// Signature does not verify.
    BadSignature,
    /// `exp` claim absent.
    MissingExpiry,
    /// `exp` in the past (beyond leeway).
    Expired,
    /// `nbf` in the future (beyond leeway).
    NotYetValid,
    /// `iat` in the future (beyond leeway).
    IssuedInFuture,
    /// `aud` does not contain any configured audience.
    BadAudience,
    /// The introspection endpoint says the token is not active.
    Inactive,
}

impl TokenFault {
    /// Stable error code, used in the JSON body and as a metric label.
    pub fn code(self) -> &'static str {
        match self {
            TokenFault::BadScheme => "invalid_authorization_scheme",
            TokenFault::Malformed => "malformed_token",
            TokenFault::DuplicateMember => "duplicate_json_member",
            TokenFault::UnknownIssuer => "unknown_issuer",
            TokenFault::IssuerNotAccepted => "issuer_not_accepted",
            TokenFault::AlgorithmNotAllowed => "algorithm_not_allowed",
            TokenFault::TypeNotAllowed => "token_type_not_allowed",
            TokenFault::UnsupportedCritical => "unsupported_critical_header",
            TokenFault::UnknownKey => "unknown_key",
            TokenFault::BadSignature => "bad_signature",
            TokenFault::MissingExpiry => "missing_exp",
            TokenFault::Expired => "token_expired",
            TokenFault::NotYetValid => "token_not_yet_valid",
            TokenFault::IssuedInFuture => "token_issued_in_future",
            TokenFault::BadAudience => "audience_mismatch",
            TokenFault::Inactive => "token_inactive",
        }
    }

    /// Text for `error_description` and the JSON `message`.
    pub fn description(self) -> &'static str {
        match self {
            TokenFault::BadScheme => "the Authorization scheme must be Bearer",
            TokenFault::Malformed => "the token is not a well-formed JWT",
            TokenFault::DuplicateMember => "the token repeats a JSON member",
            TokenFault::UnknownIssuer => "the token's issuer is not trusted",
            TokenFault::IssuerNotAccepted => "the token's issuer is not accepted on this route",
            TokenFault::AlgorithmNotAllowed => "the token's algorithm is not allowed",
            TokenFault::TypeNotAllowed => "the token's type is not allowed",
            TokenFault::UnsupportedCritical => "the token has an unsupported critical header",
            TokenFault::UnknownKey => "the token's signing key is unknown",
            TokenFault::BadSignature => "the token's signature is invalid",
            TokenFault::MissingExpiry => "the token has no expiry",
            TokenFault::Expired => "the token has expired",
            TokenFault::NotYetValid => "the token is not yet valid",
            TokenFault::IssuedInFuture => "the token was issued in the future",
            TokenFault::BadAudience => "the token's audience is not accepted",
            TokenFault::Inactive => "the token is not active",
        }
    }
}

impl fmt::Display for TokenFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

impl GatewayError {
    /// The HTTP status of this refusal.
    pub fn status(&self) -> u16 {
        use GatewayError::*;
        match self {
            InvalidRequestTarget(_)
            | InvalidPath(_)
            | InvalidFraming(_)
            | OverrideHeader(_)
            | DuplicateHeader(_)
            | ForbiddenHeader(_)
            | TokenInQuery => 400,
            HeadersTooLarge(_) => 431,
            BodyTooLarge(_) => 413,
            RequestTimeout | HeadTimeout => 408,
            NoRoute => 404,
            MethodNotAllowed { .. } => 405,
            IpDenied => 403,
            MissingToken | InvalidToken(_) => 401,
            KeysUnavailable | IntrospectionUnavailable => 503,
            UnknownClient | ClientDisabled | ClientIpDenied | InvalidClientRecord => 403,
            MetadataUnavailable => 503,
            InsufficientEntitlements { .. } => 403,
            BodyRule(r) => r.status,
            UpstreamUnreachable => 502,
            UpstreamTimeout => 504,
            ResponseNotRedactable(_) => 502,
            UpstreamCredentialUnavailable => 503,
            RateLimited(_) => 429,
            QuotaUnavailable => 503,
            Internal => 500,
        }
    }

    /// The stable `error` code of the JSON body; also the metric label.
    pub fn code(&self) -> &'static str {
        use GatewayError::*;
        match self {
            InvalidRequestTarget(_) => "invalid_request_target",
            InvalidPath(_) => "invalid_path",
            InvalidFraming(_) => "invalid_framing",
            OverrideHeader(_) => "override_header",
            DuplicateHeader(_) => "duplicate_header",
            ForbiddenHeader(_) => "forbidden_header",
            TokenInQuery => "token_in_query",
            HeadersTooLarge(_) => "headers_too_large",
            BodyTooLarge(_) => "body_too_large",
            RequestTimeout | HeadTimeout => "request_timeout",
            NoRoute => "no_route",
            MethodNotAllowed { .. } => "method_not_allowed",
            IpDenied => "ip_denied",
            MissingToken => "missing_token",
            InvalidToken(fault) => fault.code(),
            KeysUnavailable => "keys_unavailable",
            IntrospectionUnavailable => "introspection_unavailable",
            UnknownClient => "unknown_client",
            ClientDisabled => "client_disabled",
            ClientIpDenied => "client_ip_denied",
            InvalidClientRecord => "invalid_client_record",
            MetadataUnavailable => "metadata_unavailable",
            InsufficientEntitlements { .. } => "insufficient_entitlements",
            BodyRule(r) => r.code,
            UpstreamUnreachable => "upstream_unreachable",
            UpstreamTimeout => "upstream_timeout",
            ResponseNotRedactable(_) => "response_not_redactable",
            UpstreamCredentialUnavailable => "upstream_credential_unavailable",
            RateLimited(_) => "rate_limited",
            QuotaUnavailable => "quota_unavailable",
            Internal => "internal_error",
        }
    }

    /// Whether the connection must be closed after answering (a refusal of
    /// the request line or framing leaves the byte stream untrustworthy).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            GatewayError::InvalidFraming(_)
                | GatewayError::HeadersTooLarge(_)
                | GatewayError::BodyTooLarge(_)
                | GatewayError::RequestTimeout
                | GatewayError::HeadTimeout
                | GatewayError::InvalidRequestTarget(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_faults_are_401_with_distinct_codes() {
        let faults = [
            TokenFault::BadScheme,
            TokenFault::Malformed,
            TokenFault::DuplicateMember,
            TokenFault::UnknownIssuer,
            TokenFault::IssuerNotAccepted,
            TokenFault::AlgorithmNotAllowed,
            TokenFault::TypeNotAllowed,
            TokenFault::UnsupportedCritical,
            TokenFault::UnknownKey,
            TokenFault::BadSignature,
            TokenFault::MissingExpiry,
            TokenFault::Expired,
            TokenFault::NotYetValid,
            TokenFault::IssuedInFuture,
            TokenFault::BadAudience,
            TokenFault::Inactive,
        ];
        let mut codes: Vec<_> = faults.iter().map(|f| f.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), faults.len());
        for f in faults {
            assert_eq!(GatewayError::InvalidToken(f).status(), 401);
        }
    }
}
