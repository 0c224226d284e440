//! Verification keys: an immutable [`KeySet`] snapshot per issuer, and the
//! live [`IssuerKeys`] slot that the request path reads and the JWKS
//! refresher replaces.
//!
//! Only what can verify a signature makes it into a set: public RSA (≥ 2048
//! bits), EC P-256 / P-384 and Ed25519 keys from a JWKS, or the issuer's HMAC
//! secret from the config. Symmetric (`oct`) keys published in a JWKS are
//! never used — a JWKS is public, so an HMAC key in it is no secret.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use aws_lc_rs::signature::{self as lc, ParsedPublicKey, RsaPublicKeyComponents};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::jwks::Refetch;
use super::strict_json::{self, StrictJsonError};

/// Parses a JOSE `alg` name (case-sensitive, RFC 7518 §3.1 / RFC 8037).
/// Names the gateway cannot verify (`none`, `ES512`, `RSA-OAEP`, ...) are
/// `None`.
pub fn algorithm_from_name(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        _ => return None,
    })
}

/// Whether `alg` is one of the HMAC algorithms.
pub fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// The kind of one usable key; decides which algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
    Hmac,
}

impl KeyKind {
    fn suits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::EcP256 => alg == ES256,
            KeyKind::EcP384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
            KeyKind::Hmac => is_hmac(alg),
        }
    }

    fn tag(self) -> u8 {
        match self {
            KeyKind::Rsa => 1,
            KeyKind::EcP256 => 2,
            KeyKind::EcP384 => 3,
            KeyKind::Ed25519 => 4,
            KeyKind::Hmac => 5,
        }
    }
}

/// The largest signature a usable key produces: RSA 8192 bits (aws-lc's
/// upper bound for RSA verification).
const MAX_SIGNATURE_BYTES: usize = 1024;

/// One usable key.
pub struct KeyEntry {
    kid: Option<String>,
    kind: KeyKind,
    /// The JWK's own `alg`, when it names one.
    alg: Option<Algorithm>,
    key: DecodingKey,
    /// The public key parsed once per algorithm it may verify, so that a
    /// verification does no key parsing: jsonwebtoken rebuilt the RSA key from
    /// `n`/`e` (and its Montgomery constants) for every token, about a fifth of
    /// `jwt/verify_uncached/RS256` (benches/jwt.rs). Empty for the HMAC secret.
    parsed: Vec<(Algorithm, ParsedPublicKey)>,
}

impl KeyEntry {
    fn suits(&self, alg: Algorithm) -> bool {
        self.kind.suits(alg) && self.alg.is_none_or(|own| own == alg)
    }

    /// Whether `signature` (base64url, unpadded, as in the token) is a valid
    /// `alg` signature over `signed` by this key.
    pub fn verify(&self, alg: Algorithm, signed: &[u8], signature: &str) -> bool {
        if !self.suits(alg) {
            return false;
        }
        if self.kind == KeyKind::Hmac {
            // Constant-time comparison inside jsonwebtoken.
            return matches!(
                jsonwebtoken::crypto::verify(signature, signed, &self.key, alg),
                Ok(true)
            );
        }
        let Some((_, key)) = self.parsed.iter().find(|(a, _)| *a == alg) else {
            return false;
        };
        let mut raw = [0u8; MAX_SIGNATURE_BYTES];
        match URL_SAFE_NO_PAD.decode_slice(signature, &mut raw) {
            Ok(len) => key.verify_sig(signed, &raw[..len]).is_ok(),
            Err(_) => false,
        }
    }
}

/// The aws-lc RSA parameters for a JOSE `alg` (RFC 7518 §3.3, §3.5).
fn lc_rsa_params(alg: Algorithm) -> Option<&'static lc::RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &lc::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &lc::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &lc::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &lc::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &lc::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &lc::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

/// Parses `key` once for every algorithm of its kind; `None` when aws-lc
/// rejects the material (the key is then skipped, like any unusable JWK).
/// ECDSA uses the `_FIXED` forms: JWS carries `r || s`, not DER (RFC 7518 §3.4).
fn parse_for_kind(kind: KeyKind, key: &DecodingKey) -> Option<Vec<(Algorithm, ParsedPublicKey)>> {
    use Algorithm::*;
    let one = |alg: Algorithm, algorithm: &'static dyn lc::VerificationAlgorithm| {
        let DecodingKeyKind::SecretOrDer(bytes) = key.kind() else {
            return None;
        };
        ParsedPublicKey::new(algorithm, bytes)
            .ok()
            .map(|parsed| vec![(alg, parsed)])
    };
    match kind {
        KeyKind::Rsa => {
            let DecodingKeyKind::RsaModulusExponent { n, e } = key.kind() else {
                return None;
            };
            let components = RsaPublicKeyComponents { n, e };
            [RS256, RS384, RS512, PS256, PS384, PS512]
                .into_iter()
                .map(|alg| {
                    let params = lc_rsa_params(alg)?;
                    components
                        .to_parsed_public_key(params)
                        .ok()
                        .map(|p| (alg, p))
                })
                .collect()
        }
        KeyKind::EcP256 => one(ES256, &lc::ECDSA_P256_SHA256_FIXED),
        KeyKind::EcP384 => one(ES384, &lc::ECDSA_P384_SHA384_FIXED),
        KeyKind::Ed25519 => one(EdDSA, &lc::ED25519),
        KeyKind::Hmac => Some(Vec::new()),
    }
}

// === impl KeySet ===

/// An immutable snapshot of the usable keys of one issuer.
pub struct KeySet {
    keys: Vec<KeyEntry>,
    skipped: usize,
    fingerprint: [u8; 32],
}

impl KeySet {
    /// Parses a JWKS document (RFC 7517 §5).
    ///
    /// Keys that cannot or must not verify signatures are skipped and counted
    /// ([`KeySet::skipped`]): `use` other than `sig`, `key_ops` without
    /// `verify`, `oct` keys, unsupported `kty` / `crv` / `alg`, RSA moduli
    /// under 2048 bits, malformed members. The error case is only for a
    /// document that is not a JWKS object (bad or duplicate-member JSON, no
    /// `keys` array); the message never contains key material. An empty
    /// result is `Ok` — the caller decides whether to use it.
    pub fn from_jwks_json(json: &[u8]) -> Result<KeySet, String> {
        let doc = strict_json::parse_object(json).map_err(|e| match e {
            StrictJsonError::Duplicate => "JWKS repeats a JSON member name".to_owned(),
            StrictJsonError::Malformed => "JWKS is not a JSON object".to_owned(),
        })?;
        let Some(Value::Array(items)) = doc.get("keys") else {
            return Err("JWKS has no \"keys\" array".to_owned());
        };
        let mut keys = Vec::with_capacity(items.len());
        let mut skipped = 0;
        for item in items {
            match item.as_object().and_then(usable_jwk) {
                Some(entry) => keys.push(entry),
                None => skipped += 1,
            }
        }
        Ok(KeySet::build(keys, skipped))
    }

    /// A set holding only the issuer's HMAC secret (usable for HS* only).
    pub fn from_hmac_secret(secret: &[u8]) -> KeySet {
        let entry = KeyEntry {
            kid: None,
            kind: KeyKind::Hmac,
            alg: None,
            key: DecodingKey::from_secret(secret),
            parsed: Vec::new(),
        };
        KeySet::build(vec![entry], 0)
    }

    fn build(keys: Vec<KeyEntry>, skipped: usize) -> KeySet {
        let mut digest = Sha256::new();
        let mut field = |bytes: &[u8]| {
            digest.update((bytes.len() as u64).to_be_bytes());
            digest.update(bytes);
        };
        for entry in &keys {
            field(entry.kid.as_deref().unwrap_or("").as_bytes());
            field(&[
                u8::from(entry.kid.is_some()),
                entry.kind.tag(),
                entry.alg.map_or(0, |a| a as u8 + 1),
            ]);
            match entry.key.kind() {
                DecodingKeyKind::SecretOrDer(bytes) => field(bytes),
                DecodingKeyKind::RsaModulusExponent { n, e } => {
                    field(n);
                    field(e);
                }
            }
        }
        KeySet {
            keys,
            skipped,
            fingerprint: digest.finalize().into(),
        }
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Number of JWKS entries that were skipped as unusable.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// The key ids in the set (for logs and the admin API; never material).
    pub fn key_ids(&self) -> impl Iterator<Item = Option<&str>> {
        self.keys.iter().map(|k| k.kid.as_deref())
    }

    /// The key for a token with this `kid` and `alg`.
    ///
    /// By `kid`; when the token has no `kid` and the set holds exactly one
    /// key, that key; when the set holds exactly one key and that key has no
    /// `kid`, that key whatever `kid` the token names. The key must suit
    /// `alg`: RSA for RS*/PS*, P-256 for ES256, P-384 for ES384, Ed25519 for
    /// EdDSA, the HMAC secret (never a JWKS key) for HS*; a JWK's own `alg`,
    /// when present, must equal `alg`. `None` otherwise.
    pub fn select(&self, kid: Option<&str>, alg: Algorithm) -> Option<&KeyEntry> {
        let entry = match (&self.keys[..], kid) {
            ([only], None) => Some(only),
            ([only], Some(_)) if only.kid.is_none() => Some(only),
            (keys, Some(kid)) => keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid) && k.suits(alg)),
            (_, None) => None,
        };
        entry.filter(|k| k.suits(alg))
    }

    /// SHA-256 over the key ids, kinds and public material, in order: equal
    /// fingerprints mean the same keys. For an HMAC set it is a digest of the
    /// secret — compare it, never log it.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<_> = self
            .keys
            .iter()
            .map(|k| (k.kid.as_deref(), k.kind))
            .collect();
        f.debug_struct("KeySet")
            .field("keys", &keys)
            .field("skipped", &self.skipped)
            .finish()
    }
}

/// The usable key described by one JWK, or `None` to skip it.
fn usable_jwk(jwk: &Map<String, Value>) -> Option<KeyEntry> {
    let text = |name: &str| -> Option<Option<&str>> {
        match jwk.get(name) {
            None => Some(None),
            Some(Value::String(s)) => Some(Some(s)),
            Some(_) => None,
        }
    };
    // RFC 7517 §4.2: only "sig" keys verify signatures.
    if text("use")?.is_some_and(|u| u != "sig") {
        return None;
    }
    // RFC 7517 §4.3: with key_ops, "verify" must be among them.
    if let Some(ops) = jwk.get("key_ops") {
        let ops = ops.as_array()?;
        if !ops.iter().any(|op| op.as_str() == Some("verify")) {
            return None;
        }
    }
    let kid = text("kid")?.map(str::to_owned);
    let alg = match text("alg")? {
        Some(name) => Some(algorithm_from_name(name)?),
        None => None,
    };
    let component = |name: &str, len: std::ops::RangeInclusive<usize>| -> Option<&str> {
        let value = text(name)??;
        let decoded_len = b64url_decoded_len(value)?;
        len.contains(&decoded_len).then_some(value)
    };
    let (kind, key) = match text("kty")?? {
        "RSA" => {
            let n = component("n", 256..=1025)?;
            let e = component("e", 1..=8)?;
            if rsa_modulus_bits(n)? < 2048 {
                return None;
            }
            (KeyKind::Rsa, DecodingKey::from_rsa_components(n, e).ok()?)
        }
        "EC" => {
            let (kind, len) = match text("crv")?? {
                "P-256" => (KeyKind::EcP256, 32),
                "P-384" => (KeyKind::EcP384, 48),
                _ => return None,
            };
            let x = component("x", len..=len)?;
            let y = component("y", len..=len)?;
            (kind, DecodingKey::from_ec_components(x, y).ok()?)
        }
        "OKP" => {
            if text("crv")?? != "Ed25519" {
                return None;
            }
            let x = component("x", 32..=32)?;
            (KeyKind::Ed25519, DecodingKey::from_ed_components(x).ok()?)
        }
        // "oct" included: a published symmetric key is no secret.
        _ => return None,
    };
    let parsed = parse_for_kind(kind, &key)?;
    let entry = KeyEntry {
        kid,
        kind,
        alg,
        key,
        parsed,
    };
    entry.alg.is_none_or(|a| kind.suits(a)).then_some(entry)
}

/// Decoded length of unpadded base64url text, `None` if it is not that.
fn b64url_decoded_len(s: &str) -> Option<usize> {
    let valid = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (valid && s.len() % 4 != 1).then_some(s.len() * 3 / 4)
}

/// Bit length of a base64url big-endian modulus (leading zero bytes ignored).
fn rsa_modulus_bits(n: &str) -> Option<usize> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(n)
        .ok()?;
    let first = bytes.iter().position(|&b| b != 0)?;
    let lead = bytes[first];
    Some((bytes.len() - first - 1) * 8 + (8 - lead.leading_zeros() as usize))
}

// === impl IssuerKeys ===

/// The live keys of one issuer, shared by the request path and the JWKS
/// refresher.
pub struct IssuerKeys {
    /// Issuer `name` from the config (for logs).
    name: String,
    set: ArcSwapOption<KeySet>,
    /// Unix milliseconds; 0 = never.
    last_success_ms: AtomicU64,
    last_attempt_ms: AtomicU64,
    refreshes_ok: AtomicU64,
    refreshes_failed: AtomicU64,
    /// Coordination of on-demand refetches (unknown `kid`).
    pub(crate) refetch: Refetch,
}

impl IssuerKeys {
    /// An issuer whose keys were never loaded.
    pub fn new(name: impl Into<String>) -> IssuerKeys {
        IssuerKeys {
            name: name.into(),
            set: ArcSwapOption::empty(),
            last_success_ms: AtomicU64::new(0),
            last_attempt_ms: AtomicU64::new(0),
            refreshes_ok: AtomicU64::new(0),
            refreshes_failed: AtomicU64::new(0),
            refetch: Refetch::new(),
        }
    }

    /// An issuer with a set loaded once (JWKS file, HMAC secret).
    pub fn with_set(name: impl Into<String>, set: KeySet) -> IssuerKeys {
        let keys = IssuerKeys::new(name);
        keys.install(set);
        keys
    }

    /// The issuer's `name` in the config.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current set; `None` when no set was ever loaded.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.set.load_full()
    }

    /// Whether the current set has this fingerprint (no `Arc` clone: this
    /// runs on every token-cache hit).
    pub fn current_fingerprint_is(&self, fingerprint: &[u8; 32]) -> bool {
        self.set
            .load()
            .as_ref()
            .is_some_and(|set| set.fingerprint == *fingerprint)
    }

    /// When the set was last loaded or refreshed successfully.
    pub fn last_success(&self) -> Option<SystemTime> {
        from_unix_ms(self.last_success_ms.load(Ordering::Relaxed))
    }

    /// When a fetch was last attempted (successful or not).
    pub fn last_attempt(&self) -> Option<SystemTime> {
        from_unix_ms(self.last_attempt_ms.load(Ordering::Relaxed))
    }

    /// `(successful, failed)` refreshes so far.
    pub fn refresh_counts(&self) -> (u64, u64) {
        (
            self.refreshes_ok.load(Ordering::Relaxed),
            self.refreshes_failed.load(Ordering::Relaxed),
        )
    }

    /// Makes `set` current (a successful load). Returns whether the keys
    /// differ from the previous set.
    pub(crate) fn install(&self, set: KeySet) -> bool {
        let fingerprint = set.fingerprint();
        let previous = self.set.swap(Some(Arc::new(set)));
        self.last_success_ms.store(unix_ms_now(), Ordering::Relaxed);
        self.refreshes_ok.fetch_add(1, Ordering::Relaxed);
        previous.is_none_or(|p| p.fingerprint() != fingerprint)
    }

    /// Records a failed load; the current set (if any) stays.
    pub(crate) fn record_failure(&self) {
        self.refreshes_failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the start of a fetch.
    pub(crate) fn record_attempt(&self) {
        self.last_attempt_ms.store(unix_ms_now(), Ordering::Relaxed);
    }

    /// Seeds a never-loaded issuer with another one's set (config reload:
    /// keep serving with the previous keys until the first fetch).
    pub(crate) fn seed(&self, set: Arc<KeySet>) {
        let _ = self.set.compare_and_swap(&None::<Arc<KeySet>>, Some(set));
    }
}

impl fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuerKeys")
            .field("name", &self.name)
            .field("keys", &self.current().map(|s| s.len()))
            .field("refresh_counts", &self.refresh_counts())
            .finish_non_exhaustive()
    }
}

fn unix_ms_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
    })
}

fn from_unix_ms(ms: u64) -> Option<SystemTime> {
    (ms != 0)
        .then(|| UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
        .flatten()
}
