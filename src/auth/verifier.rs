//! JWT verification: the entry point the proxy calls for step 4.
//!
//! A token that is not JWT-shaped ([`looks_like_jwt`]) goes to the route's
//! introspection issuers instead ([`super::introspection`]), when it has
//! any; a JWT-shaped one never does. A JWT is taken apart and checked in
//! this order, each step refusing with its own [`TokenFault`]:
//!
//! 1. shape — three base64url parts (no padding), at most 16 KiB;
//! 2. header — strict JSON (no duplicate members); `alg` a string and never
//!    `none`; no `crit`; `kid` a string when present; `jwk`, `jku`, `x5u`,
//!    `x5c` ignored — keys never come from the token;
//! 3. claims — strict JSON; the unverified `iss` picks the issuer entry,
//!    which the route must accept;
//! 4. `alg` in that issuer's list (HS* only with an HMAC secret, never with a
//!    JWKS), then `typ` against its `token_types`;
//! 5. key by `kid` from the issuer's current set, with one throttled,
//!    single-flight refetch for an unknown `kid`;
//! 6. signature over `header.claims`;
//! 7. `exp` (required), `nbf`, `iat` with leeway — only after the signature,
//!    so an unsigned token cannot probe them;
//! 8. `aud` against the issuer's audiences;
//! 9. entitlements, client id and subject for the later steps.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use std::sync::atomic::{AtomicU64, Ordering};

use super::bearer::MAX_TOKEN_BYTES;
use super::introspection::{Candidate, IntrospectionStats, Introspector};
use super::jwks::{JwksRefresher, RefetchOutcome, REFETCH_WAIT};
use super::keys::{algorithm_from_name, is_hmac, IssuerKeys, KeySet};
use super::strict_json::{self, StrictJsonError};
use super::token_cache::{CachedToken, TokenCache, TokenCacheSettings};
use crate::config::model::{IssuerConfig, KeySource};
use crate::error::{GatewayError, TokenFault};
use crate::policy::entitlement_sets::{self, EntitlementSet};

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    /// Index of the issuer entry that verified it.
    pub issuer: usize,
    /// The claims later steps may read (all of them unless the verifier
    /// was told to keep only some; see [`Verifier::keep_only_claims`]).
    pub claims: Map<String, Value>,
    /// `sub`, when it is a string. Boxed, as the other strings here: a
    /// cached token keeps no spare capacity.
    pub subject: Option<Box<str>>,
    /// The first of the issuer's `client_id_claims` present as a string.
    pub client_id: Option<Box<str>>,
    /// From the issuer's `entitlements_claim`, shared with every token and
    /// client holding the same list ([`entitlement_sets`]).
    pub entitlements: EntitlementSet,
    /// `exp`, in unix seconds (rounded down).
    pub expires_at: u64,
}

struct IssuerEntry {
    config: Arc<IssuerConfig>,
    keys: Arc<IssuerKeys>,
}

/// Verifies JWTs for the configured issuers. Built once per config.
pub struct Verifier {
    issuers: Vec<IssuerEntry>,
    /// How long a request waits for an unknown-`kid` refetch.
    refetch_wait: Duration,
    /// Verified tokens by digest (None when turned off).
    cache: Option<TokenCache>,
    /// Signatures checked (the work the cache saves), for metrics and tests.
    signature_checks: AtomicU64,
    /// Top-level claims kept in a [`VerifiedToken`] besides the parsed
    /// fields (those `pin_headers` reads); `None` keeps them all. Keeping
    /// only these makes a cached token a few hundred bytes, not kilobytes.
    kept_claims: Option<Vec<String>>,
    /// RFC 7662 introspection, when any issuer has `introspection_url`.
    introspector: Option<Introspector>,
    /// Introspection issuers never asked (their secret is not set where
    /// `explain` runs): their tokens are undecided, answered as an outage.
    withheld: Vec<usize>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.issuers.iter().map(|e| &e.keys))
            .finish()
    }
}

fn fault(fault: TokenFault) -> GatewayError {
    GatewayError::InvalidToken(fault)
}

impl Verifier {
    /// Builds the verifier. Keys from a JWKS file or an HMAC secret are
    /// loaded here; `jwks_url` issuers start without keys (their requests
    /// answer [`GatewayError::KeysUnavailable`]) until their refresher's
    /// first successful fetch — see [`Verifier::refreshers`].
    pub fn new(issuers: &[Arc<IssuerConfig>]) -> Verifier {
        Verifier::with_cache(issuers, TokenCacheSettings::default())
    }

    /// Like [`new`](Self::new) with explicit token-cache settings.
    pub fn with_cache(issuers: &[Arc<IssuerConfig>], cache: TokenCacheSettings) -> Verifier {
        let issuers: Vec<IssuerEntry> = issuers
            .iter()
            .map(|config| {
                let keys = match &config.keys {
                    KeySource::JwksUrl(_) | KeySource::Introspection(_) => {
                        IssuerKeys::new(&config.name)
                    }
                    KeySource::HmacSecret { secret, .. } => {
                        IssuerKeys::with_set(&config.name, KeySet::from_hmac_secret(&secret.0))
                    }
                    KeySource::JwksFile { document, .. } => {
                        let keys = IssuerKeys::new(&config.name);
                        match KeySet::from_jwks_json(document.as_bytes()) {
                            Ok(set) if !set.is_empty() => {
                                keys.install(set);
                            }
                            Ok(set) => {
                                keys.record_failure();
                                tracing::warn!(
                                    issuer = %config.name,
                                    skipped = set.skipped(),
                                    "JWKS file has no usable key"
                                );
                            }
                            Err(reason) => {
                                keys.record_failure();
                                tracing::warn!(
                                    issuer = %config.name,
                                    reason = %reason,
                                    "JWKS file unusable"
                                );
                            }
                        }
                        keys
                    }
                };
                IssuerEntry {
                    config: Arc::clone(config),
                    keys: Arc::new(keys),
                }
            })
            .collect();
        let introspector = issuers
            .iter()
            .any(|e: &IssuerEntry| matches!(e.config.keys, KeySource::Introspection(_)))
            .then(|| Introspector::new(issuers.len(), cache.max_entries));
        Verifier {
            issuers,
            refetch_wait: REFETCH_WAIT,
            cache: TokenCache::new(cache),
            signature_checks: AtomicU64::new(0),
            kept_claims: None,
            introspector,
            withheld: Vec::new(),
        }
    }

    /// Never call the introspection endpoint of the issuer at `index`: its
    /// opaque tokens get [`GatewayError::IntrospectionUnavailable`] (for
    /// `explain` without the issuer's client secret).
    pub fn withhold_introspection(&mut self, index: usize) {
        self.withheld.push(index);
    }

    /// Whether the issuer at `index` checks opaque tokens by introspection.
    pub fn introspects(&self, index: usize) -> bool {
        self.issuers
            .get(index)
            .is_some_and(|e| matches!(e.config.keys, KeySource::Introspection(_)))
    }

    /// Introspection counters of the issuer at `index` (None for a JWT issuer).
    pub fn introspection_stats(&self, index: usize) -> Option<&IntrospectionStats> {
        if !self.introspects(index) {
            return None;
        }
        self.introspector.as_ref()?.stats(index)
    }

    /// Keep only these top-level claims in verified tokens (see `kept_claims`).
    pub fn keep_only_claims(&mut self, names: Vec<String>) {
        self.kept_claims = Some(names);
    }

    /// How many signatures this verifier has checked.
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks.load(Ordering::Relaxed)
    }

    /// Verified tokens currently cached (expired ones included until dropped).
    pub fn cached_tokens(&self) -> u64 {
        self.cache.as_ref().map_or(0, TokenCache::entry_count)
    }

    /// Count of usable entries: expired ones dropped first (tests, metrics).
    pub fn cached_tokens_blocking(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| {
            c.sync();
            c.entry_count()
        })
    }

    /// On a config reload: lets `jwks_url` issuers that have no keys yet use
    /// the current keys of the `previous` verifier's issuer with the same
    /// `issuer` value and the same URL, until their own first fetch. Call
    /// before spawning the refreshers.
    pub fn inherit_keys(&self, previous: &Verifier) {
        for entry in &self.issuers {
            let KeySource::JwksUrl(url) = &entry.config.keys else {
                continue;
            };
            let old = previous.issuers.iter().find(|old| {
                old.config.issuer == entry.config.issuer
                    && matches!(&old.config.keys, KeySource::JwksUrl(u) if u == url)
            });
            if let Some(set) = old.and_then(|old| old.keys.current()) {
                entry.keys.seed(set);
            }
        }
    }

    /// The JWKS refresh loops, one per `jwks_url` issuer. Spawn each
    /// [`JwksRefresher::run`] for the lifetime of this verifier (or use
    /// [`Verifier::run_refreshers`]); call this once per verifier, since two
    /// refreshers would fetch twice.
    pub fn refreshers(&self) -> Vec<JwksRefresher> {
        self.issuers
            .iter()
            .filter_map(|e| JwksRefresher::new(&e.config, Arc::clone(&e.keys)))
            .collect()
    }

    /// Runs all refresh loops until `shutdown` turns `true` (or its sender is
    /// dropped); pingora's `ShutdownWatch` is this type. Dropping the future
    /// stops the loops too.
    pub async fn run_refreshers(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        for refresher in self.refreshers() {
            tasks.spawn(refresher.run());
        }
        // Dropping the JoinSet aborts the loops.
        let _ = shutdown.wait_for(|&stop| stop).await;
        tasks.abort_all();
    }

    /// How long a request waits for the refetch its unknown `kid` asked for
    /// (default [`REFETCH_WAIT`]).
    pub fn set_refetch_wait(&mut self, wait: Duration) {
        self.refetch_wait = wait;
    }

    /// The live keys of the issuer at `index`.
    pub fn issuer_keys(&self, index: usize) -> Option<&Arc<IssuerKeys>> {
        self.issuers.get(index).map(|e| &e.keys)
    }

    /// Whether every issuer has a key set loaded (for `/readyz`);
    /// introspection issuers have none and are always ready.
    pub fn all_ready(&self) -> bool {
        (0..self.issuers.len()).all(|i| self.issuer_ready(i))
    }

    /// Whether the issuer at `index` can decide tokens: keys loaded, or
    /// introspection (which needs no keys; an outage is per request).
    pub fn issuer_ready(&self, index: usize) -> bool {
        self.issuers.get(index).is_some_and(|e| {
            matches!(e.config.keys, KeySource::Introspection(_)) || e.keys.current().is_some()
        })
    }

    /// Verifies `token` for a route that accepts the issuers at the indices
    /// `accepted` (into the slice given to [`Verifier::new`]); `now` is unix
    /// seconds.
    pub async fn verify(
        &self,
        token: &str,
        accepted: &[usize],
        now: u64,
    ) -> Result<Arc<VerifiedToken>, GatewayError> {
        // A JWT is verified, never sent to an introspection endpoint; any
        // other token goes to the route's introspection issuers, if any.
        // (Shape is only asked where an introspector could take the token:
        // the check decodes and parses the header, which allocates.)
        let introspector = self.introspector.as_ref();
        if let Some(introspector) = introspector.filter(|_| !looks_like_jwt(token)) {
            let candidates = self.introspection_candidates(accepted);
            if !candidates.is_empty() {
                return introspector
                    .introspect(token, &candidates, now, self.kept_claims.as_deref())
                    .await;
            }
        }
        let Some(cache) = &self.cache else {
            return self
                .verify_uncached(token, accepted, now)
                .await
                .map(Arc::new);
        };
        let digest = TokenCache::digest(token);
        if let Some(hit) = cache.get(&digest) {
            if self.hit_still_valid(&hit, accepted, now) {
                return Ok(hit.token);
            }
        }
        // Miss, or a hit that no longer applies: verify in full (which also
        // produces the precise refusal) and remember the result.
        // The entry records the fingerprint of the key set that verified the
        // token, not whatever set is current afterwards: a refresh landing
        // in between must not vouch for a key it removed.
        let (verified, key_set) = self.verify_with_key_set(token, accepted, now).await?;
        let verified = Arc::new(verified);
        if let Some(entry) = self.issuers.get(verified.issuer) {
            let valid_until = verified
                .expires_at
                .saturating_add(entry.config.leeway_seconds);
            cache.insert(digest, verified.clone(), key_set, valid_until, now);
        }
        Ok(verified)
    }

    /// A cached verification still holds when the route accepts its issuer,
    /// the token has not expired, and the issuer's key set is the one that
    /// verified it (a rotated-out key stops being accepted at once).
    fn hit_still_valid(&self, hit: &CachedToken, accepted: &[usize], now: u64) -> bool {
        now <= hit.valid_until
            && accepted.contains(&hit.token.issuer)
            && self
                .issuers
                .get(hit.token.issuer)
                .is_some_and(|e| e.keys.current_fingerprint_is(&hit.key_set))
    }

    /// Full verification, without the cache.
    pub async fn verify_uncached(
        &self,
        token: &str,
        accepted: &[usize],
        now: u64,
    ) -> Result<VerifiedToken, GatewayError> {
        self.verify_with_key_set(token, accepted, now)
            .await
            .map(|(verified, _)| verified)
    }

    /// Full verification; also returns the fingerprint of the key set whose
    /// key checked the signature.
    async fn verify_with_key_set(
        &self,
        token: &str,
        accepted: &[usize],
        now: u64,
    ) -> Result<(VerifiedToken, [u8; 32]), GatewayError> {
        let parts = TokenParts::split(token)?;
        let mut decoded = Vec::with_capacity((parts.header.len() + parts.claims.len()) * 3 / 4 + 2);
        let header = decode_object(parts.header, &mut decoded)?;
        let head = Header::read(&header, parts.signature.is_empty())?;
        decoded.clear();
        let claims = decode_object(parts.claims, &mut decoded)?;
        drop(decoded);

        // 3-4: issuer by the unverified `iss`, then its algorithms and types.
        let (index, entry) = self.pick_issuer(&claims, head.alg, accepted)?;
        let config = &*entry.config;
        check_type(config, head.typ)?;

        // 5: the key.
        let mut set = entry.keys.current().ok_or(GatewayError::KeysUnavailable)?;
        if set.select(head.kid, head.alg).is_none() {
            if !matches!(config.keys, KeySource::JwksUrl(_)) {
                return Err(fault(TokenFault::UnknownKey));
            }
            drop(set);
            let outcome = entry
                .keys
                .refetch
                .request(config.jwks_min_refetch, self.refetch_wait)
                .await;
            if outcome != RefetchOutcome::Completed {
                tracing::debug!(issuer = %config.name, ?outcome, "no refetch for an unknown kid");
            }
            set = entry.keys.current().ok_or(GatewayError::KeysUnavailable)?;
        }
        let key = set
            .select(head.kid, head.alg)
            .ok_or(fault(TokenFault::UnknownKey))?;

        // 6: the signature.
        self.signature_checks.fetch_add(1, Ordering::Relaxed);
        let signed = &token.as_bytes()[..parts.header.len() + 1 + parts.claims.len()];
        if !key.verify(head.alg, signed, parts.signature) {
            return Err(fault(TokenFault::BadSignature));
        }
        let key_set = set.fingerprint();
        drop(set);

        // 7-8: time and audience, now that the claims are known to be signed.
        let expires_at = check_times(&claims, now, config.leeway_seconds)?;
        check_audience(&claims, &config.audiences)?;

        // 9: what the later steps need.
        let verified = identity(
            index,
            config,
            claims,
            expires_at,
            self.kept_claims.as_deref(),
        )
        .map_err(fault)?;
        Ok((verified, key_set))
    }

    /// The route's introspection issuers, in config order.
    fn introspection_candidates(&self, accepted: &[usize]) -> Vec<Candidate<'_>> {
        self.issuers
            .iter()
            .enumerate()
            .filter(|(index, _)| accepted.contains(index))
            .filter_map(|(index, e)| match &e.config.keys {
                KeySource::Introspection(intro) => Some(Candidate {
                    index,
                    issuer: &e.config,
                    introspection: intro,
                    withheld: self.withheld.contains(&index),
                }),
                _ => None,
            })
            .collect()
    }

    /// The first issuer entry with this `iss` that the route accepts and
    /// whose algorithms include `alg`. Introspection entries are skipped: a
    /// JWT is never theirs, even when they share its `iss`.
    fn pick_issuer(
        &self,
        claims: &Map<String, Value>,
        alg: Algorithm,
        accepted: &[usize],
    ) -> Result<(usize, &IssuerEntry), GatewayError> {
        let iss = match claims.get("iss") {
            Some(Value::String(iss)) => iss.as_str(),
            Some(_) => return Err(fault(TokenFault::Malformed)),
            None => return Err(fault(TokenFault::UnknownIssuer)),
        };
        let mut known = false;
        let mut route_accepts = false;
        for (index, entry) in self.issuers.iter().enumerate() {
            if entry.config.issuer != iss
                || matches!(entry.config.keys, KeySource::Introspection(_))
            {
                continue;
            }
            known = true;
            if !accepted.contains(&index) {
                continue;
            }
            route_accepts = true;
            if allows_algorithm(&entry.config, alg) {
                return Ok((index, entry));
            }
        }
        Err(fault(if !known {
            TokenFault::UnknownIssuer
        } else if !route_accepts {
            TokenFault::IssuerNotAccepted
        } else {
            TokenFault::AlgorithmNotAllowed
        }))
    }
}

/// `alg` is in the issuer's list and fits its key source: HS* only with an
/// HMAC secret, asymmetric algorithms only with a JWKS (so a public key can
/// never be used as an HMAC secret).
fn allows_algorithm(config: &IssuerConfig, alg: Algorithm) -> bool {
    let hmac_source = matches!(config.keys, KeySource::HmacSecret { .. });
    config.algorithms.contains(&alg) && is_hmac(alg) == hmac_source
}

fn check_type(config: &IssuerConfig, typ: Option<&str>) -> Result<(), GatewayError> {
    let types = &config.token_types;
    let ok = match typ {
        Some(typ) => types.values.iter().any(|v| v.eq_ignore_ascii_case(typ)),
        None => types.allow_absent,
    };
    if ok {
        Ok(())
    } else {
        Err(fault(TokenFault::TypeNotAllowed))
    }
}

// === token parts ===

/// The three base64url parts of a compact JWS.
struct TokenParts<'t> {
    header: &'t str,
    claims: &'t str,
    signature: &'t str,
}

impl<'t> TokenParts<'t> {
    fn split(token: &'t str) -> Result<TokenParts<'t>, GatewayError> {
        let malformed = || fault(TokenFault::Malformed);
        if token.len() > MAX_TOKEN_BYTES {
            return Err(malformed());
        }
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        // An empty signature is let through only for the header step to
        // name `alg: none` precisely; anything else with it is malformed.
        if header.is_empty()
            || claims.is_empty()
            || ![header, claims, signature].iter().all(|p| is_b64url(p))
        {
            return Err(malformed());
        }
        Ok(TokenParts {
            header,
            claims,
            signature,
        })
    }
}

/// Whether `token` is shaped like a JWS: three base64url parts whose first
/// decodes to a JSON object. Only such tokens are verified as JWTs; any
/// other goes to introspection (where a route has it), so a JWT never
/// reaches an introspection endpoint. The header is parsed leniently here:
/// the verifier's strict parse then names a duplicate member precisely.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    if header.is_empty() || !is_b64url(header) || header.len() > MAX_TOKEN_BYTES {
        return false;
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Map<String, Value>>(&bytes).ok())
        .is_some()
}

/// Unpadded base64url text of a length that can decode.
fn is_b64url(part: &str) -> bool {
    part.len() % 4 != 1
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Decodes one base64url part into `buf` (cleared first by the caller) and
/// parses it as a strict JSON object.
fn decode_object(part: &str, buf: &mut Vec<u8>) -> Result<Map<String, Value>, GatewayError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode_vec(part, buf)
        .map_err(|_| fault(TokenFault::Malformed))?;
    strict_json::parse_object(buf).map_err(|e| match e {
        StrictJsonError::Duplicate => fault(TokenFault::DuplicateMember),
        StrictJsonError::Malformed => fault(TokenFault::Malformed),
    })
}

/// The JOSE header fields the gateway uses.
struct Header<'h> {
    alg: Algorithm,
    kid: Option<&'h str>,
    typ: Option<&'h str>,
}

impl<'h> Header<'h> {
    fn read(header: &'h Map<String, Value>, unsigned: bool) -> Result<Header<'h>, GatewayError> {
        let Some(Value::String(alg)) = header.get("alg") else {
            return Err(fault(TokenFault::Malformed));
        };
        if alg.eq_ignore_ascii_case("none") {
            return Err(fault(TokenFault::AlgorithmNotAllowed));
        }
        if unsigned {
            return Err(fault(TokenFault::Malformed));
        }
        let alg = algorithm_from_name(alg).ok_or(fault(TokenFault::AlgorithmNotAllowed))?;
        // RFC 7515 §4.1.11: the gateway understands no extension, so any
        // `crit` (also an empty or non-array one, which is invalid) refuses.
        if header.contains_key("crit") {
            return Err(fault(TokenFault::UnsupportedCritical));
        }
        let optional_str = |name: &str| match header.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(fault(TokenFault::Malformed)),
        };
        Ok(Header {
            alg,
            kid: optional_str("kid")?,
            typ: optional_str("typ")?,
        })
    }
}

// === claims ===

/// A NumericDate claim as seconds: `None` when absent, `Malformed` when not
/// a JSON number.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, GatewayError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or(fault(TokenFault::Malformed)),
        Some(_) => Err(fault(TokenFault::Malformed)),
    }
}

/// Checks `exp` (required), `nbf` and `iat` against `now` with `leeway`;
/// returns `exp` in whole seconds.
fn check_times(claims: &Map<String, Value>, now: u64, leeway: u64) -> Result<u64, GatewayError> {
    numeric_date(claims, "exp")?.ok_or(fault(TokenFault::MissingExpiry))?;
    check_times_optional(claims, now, leeway)
}

/// Like [`check_times`] with `exp` optional (an introspection answer need
/// not carry one): `u64::MAX` when absent.
pub(super) fn check_times_optional(
    claims: &Map<String, Value>,
    now: u64,
    leeway: u64,
) -> Result<u64, GatewayError> {
    let (now, leeway) = (now as f64, leeway as f64);
    let exp = numeric_date(claims, "exp")?;
    if exp.is_some_and(|exp| now > exp + leeway) {
        return Err(fault(TokenFault::Expired));
    }
    if numeric_date(claims, "nbf")?.is_some_and(|nbf| now + leeway < nbf) {
        return Err(fault(TokenFault::NotYetValid));
    }
    if numeric_date(claims, "iat")?.is_some_and(|iat| iat > now + leeway) {
        return Err(fault(TokenFault::IssuedInFuture));
    }
    // `as` saturates: a negative `exp` (already refused unless within
    // leeway of 0) becomes 0, a huge one u64::MAX.
    Ok(exp.map_or(u64::MAX, |exp| exp.floor() as u64))
}

/// With configured `audiences`, `aud` (a string or an array of strings) must
/// contain one of them.
pub(super) fn check_audience(
    claims: &Map<String, Value>,
    audiences: &[String],
) -> Result<(), GatewayError> {
    if audiences.is_empty() {
        return Ok(());
    }
    let wanted = |aud: &str| audiences.iter().any(|a| a == aud);
    let ok = match claims.get("aud") {
        None => false,
        Some(Value::String(aud)) => wanted(aud),
        Some(Value::Array(auds)) => {
            let mut found = false;
            for aud in auds {
                let aud = aud.as_str().ok_or(fault(TokenFault::Malformed))?;
                found |= wanted(aud);
            }
            found
        }
        Some(_) => return Err(fault(TokenFault::Malformed)),
    };
    if ok {
        Ok(())
    } else {
        Err(fault(TokenFault::BadAudience))
    }
}

/// What the later steps read from checked claims (a JWT's or an
/// introspection answer's): the client id (first of the issuer's
/// `client_id_claims` present as a string), `sub`, the entitlements, and the
/// claims `kept` (all when `None`).
pub(super) fn identity(
    index: usize,
    config: &IssuerConfig,
    claims: Map<String, Value>,
    expires_at: u64,
    kept: Option<&[String]>,
) -> Result<VerifiedToken, TokenFault> {
    // Interned here, where a token is verified (or introspected) and about
    // to be cached, never on a cache hit.
    let entitlements = entitlement_sets::intern(entitlements_from_claims(
        &claims,
        &config.entitlements_claim,
    )?);
    let client_id = config
        .client_id_claims
        .iter()
        .find_map(|name| claims.get(name).and_then(Value::as_str))
        .map(Box::from);
    let subject = claims.get("sub").and_then(Value::as_str).map(Box::from);
    let claims = match kept {
        None => claims,
        // A fresh map, not `retain`: an emptied BTreeMap keeps its node
        // (~600 bytes), which every cached token would carry.
        Some(names) => {
            let mut all = claims;
            let mut kept = Map::new();
            for name in names {
                if let Some((name, value)) = all.remove_entry(name) {
                    kept.insert(name, value);
                }
            }
            kept
        }
    };
    Ok(VerifiedToken {
        issuer: index,
        claims,
        subject,
        client_id,
        entitlements,
        expires_at,
    })
}

/// The entitlements in `claims` at the dotted `path` (segments already
/// split): a JSON array of strings, or a space-delimited string (as OAuth
/// `scope`). An absent (or `null`) claim gives none; any other shape — an
/// array with a non-string, a number, an object, a path through a
/// non-object — is [`TokenFault::Malformed`].
pub fn entitlements_from_claims(
    claims: &Map<String, Value>,
    path: &[String],
) -> Result<Vec<String>, TokenFault> {
    let Some((last, parents)) = path.split_last() else {
        return Ok(Vec::new());
    };
    let mut object = claims;
    for segment in parents {
        match object.get(segment) {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Object(inner)) => object = inner,
            Some(_) => return Err(TokenFault::Malformed),
        }
    }
    match object.get(last) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s.split_ascii_whitespace().map(str::to_owned).collect()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or(TokenFault::Malformed))
            .collect(),
        Some(_) => Err(TokenFault::Malformed),
    }
}
