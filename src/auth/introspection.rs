//! RFC 7662 token introspection: opaque access tokens (IBM Verify, OneLogin,
//! SlashID client-credentials tokens) are checked by asking the issuer.
//!
//! The token is POSTed as `token=…&token_type_hint=access_token` with the
//! gateway's own HTTP Basic credentials (RFC 7662 §2.1, each part
//! form-urlencoded first, RFC 6749 §2.3.1). Only an HTTP 200 JSON object
//! whose `active` is `true` can admit: then `iss` (when present) must equal
//! the issuer, `exp` / `nbf` / `iat` (when present) must hold with leeway,
//! and `aud` must match the configured audiences. The answer becomes the
//! same [`VerifiedToken`] a JWT would, so nothing after step 4 knows how the
//! token was checked.
//!
//! Answers are cached by the SHA-256 of the token (never the token): an
//! active one for at most `introspection_cache_seconds` and never past its
//! `exp`, a refusal for [`REFUSAL_TTL`]. A miss is loaded under moka's
//! per-key lock, so N concurrent requests with one new token make one call.
//! An outage (unreachable, timeout, non-200, an answer that is not an RFC
//! 7662 object) is never cached and never "allow": 503.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::Expiry;
use serde_json::{Map, Value};

use super::strict_json;
use super::token_cache::{TokenCache, TokenDigest};
use super::verifier::{check_audience, check_times_optional, identity, VerifiedToken};
use crate::clients::oauth::{basic_authorization, form_urlencode};
use crate::config::model::{IntrospectionConfig, IssuerConfig};
use crate::edge::throttle::LogThrottle;
use crate::error::{GatewayError, TokenFault};

/// How long a refusing answer (`active: false`, or active but expired, for
/// another issuer or audience) is remembered.
pub const REFUSAL_TTL: Duration = Duration::from_secs(10);
/// The most an introspection answer may weigh.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Outcome labels of `portcullis_introspection_requests_total`.
pub const RESULTS: [&str; 4] = ["active", "inactive", "refused", "error"];

/// Counters of one issuer's introspection calls (read by the metrics).
#[derive(Debug, Default)]
pub struct IntrospectionStats {
    /// Calls answered `active: true` and usable.
    pub active: AtomicU64,
    /// Calls answered `active: false`.
    pub inactive: AtomicU64,
    /// Calls answered active, but expired / not yet valid / another `iss` or `aud`.
    pub refused: AtomicU64,
    /// Calls that gave no usable answer (unreachable, timeout, non-200, bad JSON).
    pub error: AtomicU64,
    /// Requests answered from the cache.
    pub cache_hits: AtomicU64,
}

impl IntrospectionStats {
    /// Calls by [`RESULTS`] label, in that order.
    pub fn calls(&self) -> [u64; 4] {
        [
            self.active.load(Ordering::Relaxed),
            self.inactive.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.error.load(Ordering::Relaxed),
        ]
    }
}

/// What an issuer said about a token, as cached.
#[derive(Debug, Clone)]
enum Answer {
    Active {
        token: Arc<VerifiedToken>,
        /// `exp` in unix seconds (`u64::MAX` without one).
        expires_at: u64,
        ttl: Duration,
    },
    Refused(TokenFault),
}

impl Answer {
    fn ttl(&self) -> Duration {
        match self {
            Answer::Active { ttl, .. } => *ttl,
            Answer::Refused(_) => REFUSAL_TTL,
        }
    }
}

struct PerAnswer;

impl Expiry<(usize, TokenDigest), Answer> for PerAnswer {
    fn expire_after_create(
        &self,
        _key: &(usize, TokenDigest),
        value: &Answer,
        _now: Instant,
    ) -> Option<Duration> {
        Some(value.ttl())
    }
}

/// One issuer a route accepts opaque tokens from.
pub struct Candidate<'a> {
    /// Index of the issuer entry.
    pub index: usize,
    pub issuer: &'a IssuerConfig,
    pub introspection: &'a IntrospectionConfig,
    /// Never asked (see `Verifier::withhold_introspection`): an outage.
    pub withheld: bool,
}

/// Introspects opaque tokens for the introspection issuers of one config.
pub struct Introspector {
    http: reqwest::Client,
    /// Answers by (issuer index, token digest).
    cache: Cache<(usize, TokenDigest), Answer>,
    /// By issuer index (every issuer of the config; zeros for JWT ones).
    stats: Vec<IntrospectionStats>,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("cached", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl Introspector {
    /// `issuers` is the number of issuer entries; `max_entries` bounds the
    /// cache (the token cache's capacity; at least 1).
    pub fn new(issuers: usize, max_entries: u64) -> Introspector {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Introspector {
            http,
            cache: Cache::builder()
                .max_capacity(max_entries.max(1))
                .expire_after(PerAnswer)
                .build(),
            stats: (0..issuers)
                .map(|_| IntrospectionStats::default())
                .collect(),
        }
    }

    pub fn stats(&self, index: usize) -> Option<&IntrospectionStats> {
        self.stats.get(index)
    }

    /// Cached answers (moka counts lazily: approximate).
    pub fn cached(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Decides an opaque `token` with the `candidates` in order (the route's
    /// introspection issuers, in config order): the first active, usable
    /// answer admits. Otherwise an outage of any endpoint asked is a 503
    /// (the token may be that issuer's), and refusals give the most precise
    /// fault (`token_expired`, `audience_mismatch`, ... before
    /// `token_inactive`). At most one call per candidate.
    pub async fn introspect(
        &self,
        token: &str,
        candidates: &[Candidate<'_>],
        now: u64,
        kept_claims: Option<&[String]>,
    ) -> Result<Arc<VerifiedToken>, GatewayError> {
        let digest = TokenCache::digest(token);
        let mut outage = false;
        let mut refusal: Option<TokenFault> = None;
        for c in candidates {
            if c.withheld {
                outage = true;
                continue;
            }
            match self.answer(c, token, digest, now, kept_claims).await {
                Ok(Answer::Active { token, .. }) => return Ok(token),
                Ok(Answer::Refused(fault)) => {
                    if refusal.is_none_or(|f| f == TokenFault::Inactive) {
                        refusal = Some(fault);
                    }
                }
                Err(_) => outage = true,
            }
        }
        if outage {
            return Err(GatewayError::IntrospectionUnavailable);
        }
        Err(GatewayError::InvalidToken(
            refusal.unwrap_or(TokenFault::Inactive),
        ))
    }

    /// One issuer's answer: from the cache while it holds, else from its
    /// endpoint (single-flight per token and issuer).
    async fn answer(
        &self,
        c: &Candidate<'_>,
        token: &str,
        digest: TokenDigest,
        now: u64,
        kept_claims: Option<&[String]>,
    ) -> Result<Answer, Arc<GatewayError>> {
        let key = (c.index, digest);
        if let Some(hit) = self.cache.get(&key).await {
            let fresh = match &hit {
                Answer::Active { expires_at, .. } => now < *expires_at,
                Answer::Refused(_) => true,
            };
            if fresh {
                self.count(c.index, |s| &s.cache_hits);
                return Ok(hit);
            }
            self.cache.invalidate(&key).await;
        }
        self.cache
            .try_get_with(key, self.call(c, token, now, kept_claims))
            .await
    }

    fn count(&self, index: usize, field: impl Fn(&IntrospectionStats) -> &AtomicU64) {
        if let Some(stats) = self.stats.get(index) {
            field(stats).fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Asks the endpoint once and judges the answer.
    async fn call(
        &self,
        c: &Candidate<'_>,
        token: &str,
        now: u64,
        kept_claims: Option<&[String]>,
    ) -> Result<Answer, GatewayError> {
        let judged = match self.fetch(c.introspection, token).await {
            Ok(object) => judge(c, object, now, kept_claims),
            Err(reason) => Err(reason),
        };
        match &judged {
            Ok(Answer::Active { .. }) => self.count(c.index, |s| &s.active),
            Ok(Answer::Refused(TokenFault::Inactive)) => self.count(c.index, |s| &s.inactive),
            Ok(Answer::Refused(_)) => self.count(c.index, |s| &s.refused),
            Err(reason) => {
                self.count(c.index, |s| &s.error);
                static FAILED: LogThrottle = LogThrottle::new(Duration::from_secs(5));
                crate::warn_throttled!(
                    FAILED,
                    issuer = %c.issuer.name,
                    reason = %reason,
                    "token introspection failed"
                );
            }
        }
        judged.map_err(|_| GatewayError::IntrospectionUnavailable)
    }

    /// The endpoint's answer as a JSON object, or why there is none. The
    /// reason never contains the token.
    async fn fetch(
        &self,
        intro: &IntrospectionConfig,
        token: &str,
    ) -> Result<Map<String, Value>, String> {
        let authorization = basic_authorization(&intro.client_id, &intro.client_secret.0)?;
        let body = format!(
            "token={}&token_type_hint=access_token",
            form_urlencode(token.as_bytes())
        );
        let call = async {
            let mut resp = self
                .http
                .post(&intro.url)
                .header(http::header::AUTHORIZATION, authorization)
                .header(http::header::ACCEPT, "application/json")
                .header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(body)
                .send()
                .await
                .map_err(|e| format!("endpoint unreachable: {}", e.without_url()))?;
            if resp.status() != reqwest::StatusCode::OK {
                return Err(format!("endpoint answered {}", resp.status().as_u16()));
            }
            let mut bytes = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| format!("answer cut short: {}", e.without_url()))?
            {
                if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(format!("answer larger than {MAX_ANSWER_BYTES} bytes"));
                }
                bytes.extend_from_slice(&chunk);
            }
            strict_json::parse_object(&bytes)
                .map_err(|_| "answer is not a JSON object (or repeats a member)".to_string())
        };
        tokio::time::timeout(intro.timeout, call)
            .await
            .map_err(|_| format!("no answer within {} ms", intro.timeout.as_millis()))?
    }
}

/// Judges an RFC 7662 answer. `Err` means the answer is not one (no boolean
/// `active`, wrong member types): an outage, never "allow".
fn judge(
    c: &Candidate<'_>,
    answer: Map<String, Value>,
    now: u64,
    kept_claims: Option<&[String]>,
) -> Result<Answer, String> {
    match answer.get("active") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => return Ok(Answer::Refused(TokenFault::Inactive)),
        _ => return Err("answer has no boolean `active`".into()),
    }
    let config = c.issuer;
    let bad = |what: &str| format!("answer has a malformed `{what}`");
    match answer.get("iss") {
        None => {}
        Some(Value::String(iss)) if *iss == config.issuer => {}
        Some(Value::String(_)) => return Ok(Answer::Refused(TokenFault::Inactive)),
        Some(_) => return Err(bad("iss")),
    }
    let expires_at = match check_times_optional(&answer, now, config.leeway_seconds) {
        Ok(exp) => exp,
        Err(GatewayError::InvalidToken(TokenFault::Malformed)) => {
            return Err(bad("exp / nbf / iat"))
        }
        Err(GatewayError::InvalidToken(fault)) => return Ok(Answer::Refused(fault)),
        Err(_) => return Err(bad("exp / nbf / iat")),
    };
    match check_audience(&answer, &config.audiences) {
        Ok(()) => {}
        Err(GatewayError::InvalidToken(TokenFault::BadAudience)) => {
            return Ok(Answer::Refused(TokenFault::BadAudience))
        }
        Err(_) => return Err(bad("aud")),
    }
    let token = identity(c.index, config, answer, expires_at, kept_claims)
        .map_err(|_| bad(&config.entitlements_claim.join(".")))?;
    // Cached at most `introspection_cache_seconds`, never past `exp`.
    let remaining = Duration::from_secs(expires_at.saturating_sub(now));
    Ok(Answer::Active {
        token: Arc::new(token),
        expires_at,
        ttl: c.introspection.cache_ttl.min(remaining),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::looks_like_jwt;
    use crate::config::model::{KeySource, Secret, TokenTypes};
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;

    fn intro() -> IntrospectionConfig {
        IntrospectionConfig {
            url: "http://127.0.0.1:9/introspect".into(),
            client_id: "gw".into(),
            client_secret: Secret(b"secret".to_vec()),
            client_secret_env: "X".into(),
            cache_ttl: Duration::from_secs(60),
            timeout: Duration::from_millis(100),
        }
    }

    fn issuer(intro: &IntrospectionConfig) -> IssuerConfig {
        IssuerConfig {
            name: "opaque".into(),
            issuer: "https://idp.test".into(),
            audiences: vec!["api".into()],
            algorithms: Vec::new(),
            token_types: TokenTypes::default(),
            keys: KeySource::Introspection(Arc::new(intro.clone())),
            jwks_refresh: Duration::from_secs(300),
            jwks_min_refetch: Duration::from_secs(30),
            leeway_seconds: 30,
            client_id_claims: vec!["client_id".into()],
            entitlements_claim: vec!["scope".into()],
            client_metadata: true,
        }
    }

    fn judged(answer: serde_json::Value) -> Result<Answer, String> {
        let intro = intro();
        let issuer = issuer(&intro);
        let c = Candidate {
            index: 3,
            issuer: &issuer,
            introspection: &intro,
            withheld: false,
        };
        let Value::Object(map) = answer else {
            panic!("an object")
        };
        judge(&c, map, NOW, None)
    }

    #[test]
    fn an_active_answer_becomes_a_verified_token() {
        let answer = judged(json!({
            "active": true, "iss": "https://idp.test", "aud": ["x", "api"],
            "client_id": "c1", "sub": "s1", "scope": "a b", "exp": NOW + 10,
        }));
        let Ok(Answer::Active {
            token,
            expires_at,
            ttl,
        }) = answer
        else {
            panic!("{answer:?}")
        };
        assert_eq!(token.issuer, 3);
        assert_eq!(token.client_id.as_deref(), Some("c1"));
        assert_eq!(token.subject.as_deref(), Some("s1"));
        assert_eq!(*token.entitlements, ["a", "b"]);
        assert_eq!(expires_at, NOW + 10);
        // Never cached past `exp`.
        assert_eq!(ttl, Duration::from_secs(10));
    }

    #[test]
    fn refusals_and_broken_answers() {
        let base =
            || json!({"active": true, "iss": "https://idp.test", "aud": "api", "exp": NOW + 100});
        let with = |k: &str, v: Value| {
            let mut a = base();
            a[k] = v;
            a
        };
        let refused = |a: Value| match judged(a) {
            Ok(Answer::Refused(f)) => Some(f),
            _ => None,
        };
        assert_eq!(
            refused(json!({"active": false})),
            Some(TokenFault::Inactive)
        );
        assert_eq!(
            refused(with("iss", json!("https://other"))),
            Some(TokenFault::Inactive)
        );
        assert_eq!(
            refused(with("exp", json!(NOW - 31))),
            Some(TokenFault::Expired)
        );
        assert_eq!(
            refused(with("nbf", json!(NOW + 31))),
            Some(TokenFault::NotYetValid)
        );
        assert_eq!(
            refused(with("aud", json!(["other"]))),
            Some(TokenFault::BadAudience)
        );
        // Not an RFC 7662 answer: an outage, never "allow".
        for broken in [
            json!({}),
            json!({"active": "true"}),
            json!({"active": 1}),
            with("iss", json!(7)),
            with("exp", json!("soon")),
            with("aud", json!({"a": 1})),
            with("scope", json!(["a", 1])),
        ] {
            assert!(judged(broken.clone()).is_err(), "{broken}");
        }
        // Without `exp` an answer is good for the cache lifetime.
        let mut no_exp = base();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert!(
            matches!(judged(no_exp), Ok(Answer::Active { ttl, .. }) if ttl == Duration::from_secs(60))
        );
    }

    #[test]
    fn only_jwt_shaped_tokens_are_jwts() {
        // {"alg":"RS256"} . {} . sig
        assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.e30.c2ln"));
        for opaque in [
            "opaque-token",
            "a.b.c",
            "e30.e30",
            "e30.e30.e30.e30",
            // A header that is JSON but no object.
            "WzFd.e30.c2ln",
            "ZZZ+/=",
        ] {
            assert!(!looks_like_jwt(opaque), "{opaque}");
        }
    }
}
