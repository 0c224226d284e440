//! Signing keys and tokens for local development, tests and the demo:
//! `portcullis keygen` and `portcullis token`.
//!
//! Keys are generated with aws-lc-rs and kept as PKCS#8; tokens are signed
//! with jsonwebtoken, the same library that verifies them. This is a
//! developer tool, not an identity provider: whoever holds the private key
//! file can mint any claims.
//!
//! A key is read from a PEM file (`PRIVATE KEY` = PKCS#8, `EC PRIVATE KEY` =
//! SEC 1, `RSA PRIVATE KEY` = PKCS#1; never encrypted) or from a private JWK
//! (RFC 7517: an object with `d`, or a `{"keys": [...]}` set holding exactly
//! one private key). Its public JWK is built here from the public key itself
//! (EC: the uncompressed point's `x` and `y`; RSA: `n` and `e`; OKP: `x`):
//! jsonwebtoken's `Jwk::from_encoding_key` panics for Ed25519.
//!
//! Errors name the file and what is wrong with it, and never contain key
//! material (nor any other part of the file).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{KeyPairComponents, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{
    EcdsaKeyPair, EcdsaSigningAlgorithm, Ed25519KeyPair, KeyPair as _, RsaKeyPair,
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::auth::keys::algorithm_from_name;

/// The largest key file read (a 8192-bit RSA private JWK is well under).
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// The longest token lifetime `token` mints (one year).
pub const MAX_TTL_SECONDS: u64 = 366 * 24 * 3600;

/// Names of the files `keygen` writes.
pub const PRIVATE_KEY_FILE: &str = "private.pem";
pub const PUBLIC_KEY_FILE: &str = "public.pem";
pub const JWKS_FILE: &str = "jwks.json";

/// What went wrong; [`MintError::exit_code`] maps it to sysexits.h.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// A command-line value is wrong (EX_USAGE, 64).
    #[error("{0}")]
    Usage(String),
    /// The key file cannot be used (EX_USAGE, 64: it is an argument too).
    #[error("{}: {reason}", path.display())]
    KeyFile { path: PathBuf, reason: String },
    /// An output file cannot be written (EX_CANTCREAT, 73).
    #[error("{}: {reason}", path.display())]
    Write { path: PathBuf, reason: String },
    /// The crypto library failed where it should not (EX_SOFTWARE, 70).
    #[error("{0}")]
    Crypto(String),
}

impl MintError {
    /// The process exit status for this error (sysexits.h).
    pub fn exit_code(&self) -> u8 {
        match self {
            MintError::Usage(_) | MintError::KeyFile { .. } => 64,
            MintError::Write { .. } => 73,
            MintError::Crypto(_) => 70,
        }
    }
}

fn usage(message: impl Into<String>) -> MintError {
    MintError::Usage(message.into())
}

// === KeyKind ===

/// The kind of key material, which decides the algorithms it can sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcP256,
    EcP384,
    Rsa,
    Ed25519,
}

impl KeyKind {
    /// The kind of key an algorithm signs with; `None` for HS* (a shared
    /// secret is not a key pair).
    pub fn for_alg(alg: Algorithm) -> Option<KeyKind> {
        use Algorithm::*;
        match alg {
            ES256 => Some(KeyKind::EcP256),
            ES384 => Some(KeyKind::EcP384),
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Some(KeyKind::Rsa),
            EdDSA => Some(KeyKind::Ed25519),
            HS256 | HS384 | HS512 => None,
        }
    }

    /// The algorithm used when none is named (RSA: RS256).
    pub fn default_alg(self) -> Algorithm {
        match self {
            KeyKind::EcP256 => Algorithm::ES256,
            KeyKind::EcP384 => Algorithm::ES384,
            KeyKind::Rsa => Algorithm::RS256,
            KeyKind::Ed25519 => Algorithm::EdDSA,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            KeyKind::EcP256 => "an EC P-256 key",
            KeyKind::EcP384 => "an EC P-384 key",
            KeyKind::Rsa => "an RSA key",
            KeyKind::Ed25519 => "an Ed25519 key",
        }
    }

    fn ec_algorithm(self) -> Option<&'static EcdsaSigningAlgorithm> {
        match self {
            KeyKind::EcP256 => Some(&ECDSA_P256_SHA256_FIXED_SIGNING),
            KeyKind::EcP384 => Some(&ECDSA_P384_SHA384_FIXED_SIGNING),
            _ => None,
        }
    }
}

/// The JOSE name of `alg` (`ES256`, `EdDSA`, ...).
pub fn alg_name(alg: Algorithm) -> &'static str {
    use Algorithm::*;
    match alg {
        HS256 => "HS256",
        HS384 => "HS384",
        HS512 => "HS512",
        ES256 => "ES256",
        ES384 => "ES384",
        RS256 => "RS256",
        RS384 => "RS384",
        RS512 => "RS512",
        PS256 => "PS256",
        PS384 => "PS384",
        PS512 => "PS512",
        EdDSA => "EdDSA",
    }
}

/// Parses an asymmetric signing algorithm name (case-sensitive, as in JOSE).
pub fn parse_alg(name: &str) -> Result<Algorithm, MintError> {
    const KNOWN: &str = "ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512, EdDSA";
    match algorithm_from_name(name) {
        Some(alg) if KeyKind::for_alg(alg).is_some() => Ok(alg),
        Some(_) => Err(usage(format!(
            "--alg {name}: HMAC algorithms use a shared secret, not a key pair; use one of {KNOWN}"
        ))),
        None => {
            let hint = KNOWN
                .split(", ")
                .find(|k| k.eq_ignore_ascii_case(name))
                .map(|k| format!(" (did you mean {k}?)"))
                .unwrap_or_default();
            Err(usage(format!(
                "--alg {name:?} is not supported{hint}; use one of {KNOWN}"
            )))
        }
    }
}

// === SigningKey ===

/// A private signing key with its algorithm and key id.
///
/// `Debug` shows the algorithm and kid only.
pub struct SigningKey {
    alg: Algorithm,
    kid: String,
    kind: KeyKind,
    /// PKCS#8 v1 DER of the private key.
    pkcs8: Vec<u8>,
    /// SPKI DER of the public key.
    spki: Vec<u8>,
    /// The public JWK members that identify the key (RFC 7638 §3.2).
    public_members: Vec<(&'static str, String)>,
    encoding: EncodingKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &alg_name(self.alg))
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Drop for SigningKey {
    fn drop(&mut self) {
        self.pkcs8.fill(0);
        std::hint::black_box(&self.pkcs8);
    }
}

/// What a key source said about itself besides the key material.
#[derive(Default)]
struct Declared {
    alg: Option<Algorithm>,
    kid: Option<String>,
}

impl SigningKey {
    /// A fresh key pair for `alg` (RSA keys are 2048 bits). The kid is the
    /// key's RFC 7638 thumbprint.
    pub fn generate(alg: Algorithm) -> Result<SigningKey, MintError> {
        let kind = KeyKind::for_alg(alg).ok_or_else(|| {
            usage(format!(
                "{}: HMAC algorithms use a shared secret, not a key pair",
                alg_name(alg)
            ))
        })?;
        let crypto = |what: &str| MintError::Crypto(format!("cannot generate {what}"));
        let pkcs8 = match kind {
            KeyKind::EcP256 | KeyKind::EcP384 => {
                let ec = kind.ec_algorithm().ok_or_else(|| crypto("the EC key"))?;
                let pair = EcdsaKeyPair::generate(ec).map_err(|_| crypto("the EC key"))?;
                pair.to_pkcs8v1()
                    .map_err(|_| crypto("the EC key"))?
                    .as_ref()
                    .to_vec()
            }
            KeyKind::Ed25519 => {
                let pair = Ed25519KeyPair::generate().map_err(|_| crypto("the Ed25519 key"))?;
                pair.to_pkcs8v1()
                    .map_err(|_| crypto("the Ed25519 key"))?
                    .as_ref()
                    .to_vec()
            }
            KeyKind::Rsa => {
                let pair =
                    RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| crypto("the RSA key"))?;
                let der: Pkcs8V1Der<'static> = pair.as_der().map_err(|_| crypto("the RSA key"))?;
                der.as_ref().to_vec()
            }
        };
        let mut key = SigningKey::from_pkcs8(&pkcs8).map_err(MintError::Crypto)?;
        key.set_alg(alg)?;
        Ok(key)
    }

    /// Reads a private key from a PEM or private-JWK file.
    ///
    /// The algorithm is the JWK's `alg` when it has one, else the natural one
    /// for the key (RSA: RS256). The kid is the JWK's `kid`; for a PEM file,
    /// the `kid` of the matching key in a `jwks.json` beside it (as `keygen`
    /// writes), else the RFC 7638 thumbprint — which is also what `keygen`
    /// uses when not given `--kid`.
    pub fn from_file(path: &Path) -> Result<SigningKey, MintError> {
        let bad = |reason: String| MintError::KeyFile {
            path: path.to_path_buf(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        if !meta.is_file() {
            return Err(bad("is not a file".into()));
        }
        if meta.len() > MAX_KEY_FILE_BYTES {
            return Err(bad(format!(
                "is {} bytes; a key file is at most {MAX_KEY_FILE_BYTES}",
                meta.len()
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|_| {
            bad("is not text: expected a PEM or JWK file (convert DER with `openssl pkey -inform DER`)".into())
        })?;
        let (mut key, declared) = if text.trim_start().starts_with('{') {
            SigningKey::parse_jwk(&text).map_err(bad)?
        } else {
            let key = SigningKey::from_pem(&text).map_err(bad)?;
            let declared = sibling_jwks_entry(path, &key).unwrap_or_default();
            (key, declared)
        };
        if let Some(alg) = declared.alg {
            key.set_alg(alg).map_err(|e| bad(e.to_string()))?;
        }
        if let Some(kid) = declared.kid {
            key.kid = kid;
        }
        Ok(key)
    }

    /// Reads a PEM private key (`PRIVATE KEY`, `EC PRIVATE KEY` or `RSA
    /// PRIVATE KEY`). The algorithm is the key's natural one, the kid its
    /// thumbprint. The error says what is wrong, never what is in the text.
    pub fn from_pem(text: &str) -> Result<SigningKey, String> {
        let blocks = pem_blocks(text)?;
        if blocks.is_empty() {
            return Err("holds no PEM block: expected a PEM private key or a private JWK".into());
        }
        for block in &blocks {
            match block.label.as_str() {
                "EC PARAMETERS" => continue,
                "PRIVATE KEY" => return SigningKey::from_pkcs8(&block.der),
                "EC PRIVATE KEY" => return SigningKey::from_pkcs8(&sec1_to_pkcs8(&block.der)?),
                "RSA PRIVATE KEY" => {
                    let pair = RsaKeyPair::from_der(&block.der).map_err(|e| {
                        format!("the RSA PRIVATE KEY block is not a usable PKCS#1 RSA key ({e})")
                    })?;
                    let der: Pkcs8V1Der<'static> = pair
                        .as_der()
                        .map_err(|_| "cannot re-encode the RSA key as PKCS#8".to_string())?;
                    return SigningKey::from_pkcs8(der.as_ref());
                }
                "ENCRYPTED PRIVATE KEY" => {
                    return Err("holds an encrypted private key; decrypt it first \
                                (`openssl pkey -in FILE -out plain.pem`)"
                        .into())
                }
                "PUBLIC KEY" | "RSA PUBLIC KEY" => {
                    return Err("holds a public key; signing needs the private key".into())
                }
                "CERTIFICATE" => {
                    return Err("holds a certificate; signing needs the private key".into())
                }
                other => return Err(format!("holds an unsupported PEM block {other:?}")),
            }
        }
        Err("holds EC parameters but no private key".into())
    }

    /// Reads a private JWK (or a JWKS holding exactly one private key).
    pub fn from_jwk_json(text: &str) -> Result<SigningKey, String> {
        let (mut key, declared) = SigningKey::parse_jwk(text)?;
        if let Some(alg) = declared.alg {
            key.set_alg(alg).map_err(|e| e.to_string())?;
        }
        if let Some(kid) = declared.kid {
            key.kid = kid;
        }
        Ok(key)
    }

    fn parse_jwk(text: &str) -> Result<(SigningKey, Declared), String> {
        let doc: Value = serde_json::from_str(text)
            .map_err(|e| format!("is not valid JSON (line {})", e.line()))?;
        let jwk = match doc.get("keys") {
            None => doc
                .as_object()
                .ok_or("is not a JWK (a JSON object)")?
                .clone(),
            Some(Value::Array(keys)) => {
                let private: Vec<&Map<String, Value>> = keys
                    .iter()
                    .filter_map(Value::as_object)
                    .filter(|k| k.contains_key("d"))
                    .collect();
                match private.as_slice() {
                    [one] => (*one).clone(),
                    [] => {
                        return Err(
                            "is a JWKS without a private key (no member \"d\"); signing needs the private key"
                                .into(),
                        )
                    }
                    more => {
                        return Err(format!(
                            "is a JWKS with {} private keys; pass a file with one",
                            more.len()
                        ))
                    }
                }
            }
            Some(_) => return Err("has a \"keys\" member that is not an array".into()),
        };
        jwk_to_key(&jwk)
    }

    /// Builds the key from PKCS#8 DER, finding out what kind it is.
    fn from_pkcs8(der: &[u8]) -> Result<SigningKey, String> {
        for kind in [KeyKind::EcP256, KeyKind::EcP384] {
            let Some(ec) = kind.ec_algorithm() else {
                continue;
            };
            if let Ok(pair) = EcdsaKeyPair::from_pkcs8(ec, der) {
                let pkcs8 = pair
                    .to_pkcs8v1()
                    .map_err(|_| "cannot re-encode the EC key".to_string())?;
                let spki: PublicKeyX509Der<'static> = pair
                    .public_key()
                    .as_der()
                    .map_err(|_| "cannot encode the EC public key".to_string())?;
                let members = ec_members(kind, pair.public_key().as_ref())?;
                return SigningKey::assemble(kind, pkcs8.as_ref(), spki.as_ref(), members);
            }
        }
        if let Ok(pair) = Ed25519KeyPair::from_pkcs8(der) {
            let pkcs8 = pair
                .to_pkcs8v1()
                .map_err(|_| "cannot re-encode the Ed25519 key".to_string())?;
            let spki: PublicKeyX509Der<'static> = pair
                .public_key()
                .as_der()
                .map_err(|_| "cannot encode the Ed25519 public key".to_string())?;
            let members = vec![
                ("crv", "Ed25519".to_string()),
                ("kty", "OKP".to_string()),
                ("x", URL_SAFE_NO_PAD.encode(pair.public_key().as_ref())),
            ];
            return SigningKey::assemble(KeyKind::Ed25519, pkcs8.as_ref(), spki.as_ref(), members);
        }
        match RsaKeyPair::from_pkcs8(der) {
            Ok(pair) => {
                let pkcs8: Pkcs8V1Der<'static> = pair
                    .as_der()
                    .map_err(|_| "cannot re-encode the RSA key".to_string())?;
                let public = pair.public_key();
                let spki: PublicKeyX509Der<'static> = public
                    .as_der()
                    .map_err(|_| "cannot encode the RSA public key".to_string())?;
                let members = vec![
                    (
                        "e",
                        URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
                    ),
                    ("kty", "RSA".to_string()),
                    (
                        "n",
                        URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
                    ),
                ];
                SigningKey::assemble(KeyKind::Rsa, pkcs8.as_ref(), spki.as_ref(), members)
            }
            Err(_) => Err(
                "is not an unencrypted PKCS#8 EC P-256, EC P-384, RSA (2048-8192 bits) or Ed25519 private key"
                    .into(),
            ),
        }
    }

    fn assemble(
        kind: KeyKind,
        pkcs8: &[u8],
        spki: &[u8],
        public_members: Vec<(&'static str, String)>,
    ) -> Result<SigningKey, String> {
        let pem = pem_encode("PRIVATE KEY", pkcs8);
        let encoding = match kind {
            KeyKind::EcP256 | KeyKind::EcP384 => EncodingKey::from_ec_pem(pem.as_bytes()),
            KeyKind::Rsa => EncodingKey::from_rsa_pem(pem.as_bytes()),
            KeyKind::Ed25519 => EncodingKey::from_ed_pem(pem.as_bytes()),
        }
        .map_err(|e| format!("the signing library refuses the key ({e})"))?;
        let mut key = SigningKey {
            alg: kind.default_alg(),
            kid: String::new(),
            kind,
            pkcs8: pkcs8.to_vec(),
            spki: spki.to_vec(),
            public_members,
            encoding,
        };
        key.kid = key.thumbprint();
        Ok(key)
    }

    fn set_alg(&mut self, alg: Algorithm) -> Result<(), MintError> {
        if KeyKind::for_alg(alg) != Some(self.kind) {
            return Err(usage(format!(
                "{} does not fit {} (use {})",
                alg_name(alg),
                self.kind.describe(),
                alg_name(self.kind.default_alg())
            )));
        }
        self.alg = alg;
        Ok(())
    }

    /// The same key signing with `alg` (e.g. PS256 for an RSA key); an
    /// error when `alg` does not fit the key.
    pub fn with_alg(mut self, alg: Algorithm) -> Result<SigningKey, MintError> {
        self.set_alg(alg)?;
        Ok(self)
    }

    /// The same key with another `kid`.
    pub fn with_kid(mut self, kid: &str) -> Result<SigningKey, MintError> {
        if kid.is_empty() || kid.len() > 256 || kid.chars().any(char::is_control) {
            return Err(usage(
                "--kid must be 1-256 characters without control characters",
            ));
        }
        self.kid = kid.to_string();
        Ok(self)
    }

    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The RFC 7638 JWK thumbprint (SHA-256, base64url).
    pub fn thumbprint(&self) -> String {
        // Members in lexicographic order, no whitespace; the values are
        // base64url or fixed names, so they need no JSON escaping.
        let canonical = self
            .public_members
            .iter()
            .map(|(name, value)| format!("\"{name}\":\"{value}\""))
            .collect::<Vec<_>>()
            .join(",");
        URL_SAFE_NO_PAD.encode(Sha256::digest(format!("{{{canonical}}}").as_bytes()))
    }

    /// The public JWK with `kid`, `alg` and `use: "sig"`.
    pub fn public_jwk(&self) -> Value {
        let mut jwk = Map::new();
        for (name, value) in &self.public_members {
            jwk.insert((*name).to_string(), Value::String(value.clone()));
        }
        jwk.insert("kid".into(), Value::String(self.kid.clone()));
        jwk.insert("alg".into(), Value::String(alg_name(self.alg).into()));
        jwk.insert("use".into(), Value::String("sig".into()));
        Value::Object(jwk)
    }

    /// A JWKS document with this key's public JWK (pretty-printed).
    pub fn jwks_json(&self) -> String {
        serde_json::to_string_pretty(&json!({ "keys": [self.public_jwk()] }))
            .unwrap_or_else(|_| String::from("{\"keys\":[]}"))
    }

    /// The private key as PKCS#8 PEM (what `keygen` writes to `private.pem`).
    pub fn private_pem(&self) -> String {
        pem_encode("PRIVATE KEY", &self.pkcs8)
    }

    /// The public key as SPKI PEM.
    pub fn public_pem(&self) -> String {
        pem_encode("PUBLIC KEY", &self.spki)
    }

    /// Signs `claims` (a JSON object) as a JWT with header `{alg, typ: "JWT", kid}`.
    pub fn sign(&self, claims: &Value) -> Result<String, MintError> {
        if !claims.is_object() {
            return Err(usage("the claims must be a JSON object"));
        }
        let mut header = Header::new(self.alg);
        header.typ = Some("JWT".into());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| MintError::Crypto(format!("signing failed: {e}")))
    }
}

// === JWK → key ===

fn jwk_to_key(jwk: &Map<String, Value>) -> Result<(SigningKey, Declared), String> {
    let text = |name: &str| -> Result<Option<&str>, String> {
        match jwk.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("JWK member {name:?} is not a string")),
        }
    };
    let bytes = |name: &str| -> Result<Vec<u8>, String> {
        let value = text(name)?.ok_or_else(|| format!("JWK member {name:?} is missing"))?;
        URL_SAFE_NO_PAD
            .decode(value)
            .map_err(|_| format!("JWK member {name:?} is not unpadded base64url"))
    };
    if jwk.get("d").is_none() {
        return Err("is a public JWK (no member \"d\"); signing needs the private key".into());
    }
    let declared = Declared {
        alg: match text("alg")? {
            None => None,
            Some(name) => Some(parse_alg(name).map_err(|_| {
                format!("JWK \"alg\" {name:?} is not an asymmetric signing algorithm")
            })?),
        },
        kid: text("kid")?.map(str::to_string),
    };
    let kty = text("kty")?.ok_or("JWK member \"kty\" is missing")?;
    let pkcs8 = match kty {
        "EC" => {
            let kind = match text("crv")? {
                Some("P-256") => KeyKind::EcP256,
                Some("P-384") => KeyKind::EcP384,
                Some(other) => {
                    return Err(format!(
                        "JWK curve {other:?} is not supported (P-256, P-384)"
                    ))
                }
                None => return Err("JWK member \"crv\" is missing".into()),
            };
            let ec = kind.ec_algorithm().ok_or("unsupported curve")?;
            let (x, y, d) = (bytes("x")?, bytes("y")?, bytes("d")?);
            let mut point = Vec::with_capacity(1 + x.len() + y.len());
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let pair = EcdsaKeyPair::from_private_key_and_public_key(ec, &d, &point)
                .map_err(|_| "the JWK's EC members do not form a valid key pair".to_string())?;
            pair.to_pkcs8v1()
                .map_err(|_| "cannot encode the EC key".to_string())?
                .as_ref()
                .to_vec()
        }
        "OKP" => {
            if text("crv")? != Some("Ed25519") {
                return Err("only OKP keys on curve Ed25519 are supported".into());
            }
            let pair = Ed25519KeyPair::from_seed_and_public_key(&bytes("d")?, &bytes("x")?)
                .map_err(|_| {
                    "the JWK's Ed25519 members do not form a valid key pair".to_string()
                })?;
            pair.to_pkcs8v1()
                .map_err(|_| "cannot encode the Ed25519 key".to_string())?
                .as_ref()
                .to_vec()
        }
        "RSA" => {
            for name in ["p", "q", "dp", "dq", "qi"] {
                if jwk.get(name).is_none() {
                    return Err(format!(
                        "RSA JWK lacks {name:?}: the CRT members p, q, dp, dq and qi are needed"
                    ));
                }
            }
            let components = KeyPairComponents {
                public_key: PublicKeyComponents {
                    n: bytes("n")?,
                    e: bytes("e")?,
                },
                d: bytes("d")?,
                p: bytes("p")?,
                q: bytes("q")?,
                dP: bytes("dp")?,
                dQ: bytes("dq")?,
                qInv: bytes("qi")?,
            };
            let pair = RsaKeyPair::from_components(&components)
                .map_err(|_| "the JWK's RSA members do not form a valid key".to_string())?;
            let der: Pkcs8V1Der<'static> = pair
                .as_der()
                .map_err(|_| "cannot encode the RSA key".to_string())?;
            der.as_ref().to_vec()
        }
        "oct" => return Err("is a symmetric (oct) JWK; keys for HS* are not key pairs".into()),
        other => {
            return Err(format!(
                "JWK key type {other:?} is not supported (EC, RSA, OKP)"
            ))
        }
    };
    Ok((SigningKey::from_pkcs8(&pkcs8)?, declared))
}

/// `crv`, `kty`, `x`, `y` of an uncompressed EC point.
fn ec_members(kind: KeyKind, point: &[u8]) -> Result<Vec<(&'static str, String)>, String> {
    let (crv, len) = match kind {
        KeyKind::EcP256 => ("P-256", 32),
        KeyKind::EcP384 => ("P-384", 48),
        _ => return Err("not an EC key".into()),
    };
    if point.len() != 1 + 2 * len || point[0] != 4 {
        return Err("unexpected EC public key encoding".into());
    }
    Ok(vec![
        ("crv", crv.to_string()),
        ("kty", "EC".to_string()),
        ("x", URL_SAFE_NO_PAD.encode(&point[1..1 + len])),
        ("y", URL_SAFE_NO_PAD.encode(&point[1 + len..])),
    ])
}

/// A SEC 1 `EC PRIVATE KEY` as PKCS#8.
fn sec1_to_pkcs8(der: &[u8]) -> Result<Vec<u8>, String> {
    for kind in [KeyKind::EcP256, KeyKind::EcP384] {
        let Some(ec) = kind.ec_algorithm() else {
            continue;
        };
        if let Ok(pair) = EcdsaKeyPair::from_private_key_der(ec, der) {
            return pair
                .to_pkcs8v1()
                .map(|d| d.as_ref().to_vec())
                .map_err(|_| "cannot re-encode the EC key".to_string());
        }
    }
    Err("the EC PRIVATE KEY block is not a P-256 or P-384 key".into())
}

/// The `kid` and `alg` of the key in `jwks.json` beside `path` whose public
/// members equal `key`'s, if there is one.
fn sibling_jwks_entry(path: &Path, key: &SigningKey) -> Option<Declared> {
    let jwks_path = path.parent()?.join(JWKS_FILE);
    let meta = std::fs::metadata(&jwks_path).ok()?;
    if meta.len() > 1024 * 1024 {
        return None;
    }
    let doc: Value = serde_json::from_slice(&std::fs::read(&jwks_path).ok()?).ok()?;
    let entry = doc.get("keys")?.as_array()?.iter().find(|jwk| {
        key.public_members
            .iter()
            .all(|(name, value)| jwk.get(*name).and_then(Value::as_str) == Some(value.as_str()))
    })?;
    Some(Declared {
        alg: entry
            .get("alg")
            .and_then(Value::as_str)
            .and_then(|name| parse_alg(name).ok())
            .filter(|alg| KeyKind::for_alg(*alg) == Some(key.kind)),
        kid: entry.get("kid").and_then(Value::as_str).map(str::to_string),
    })
}

// === PEM ===

struct PemBlock {
    label: String,
    der: Vec<u8>,
}

/// Every `-----BEGIN X-----` ... `-----END X-----` block of `text`.
fn pem_blocks(text: &str) -> Result<Vec<PemBlock>, String> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut b64 = String::new();
        let mut closed = false;
        for line in lines.by_ref() {
            if line == end {
                closed = true;
                break;
            }
            if line.contains(':') {
                // RFC 1421 headers: only legacy encrypted keys have them.
                return Err(format!(
                    "the {label} block has PEM headers (an encrypted key?); decrypt it first"
                ));
            }
            b64.push_str(line);
        }
        if !closed {
            return Err(format!("the {label} block has no END line"));
        }
        let der = STANDARD
            .decode(b64.as_bytes())
            .map_err(|_| format!("the {label} block is not valid base64"))?;
        blocks.push(PemBlock {
            label: label.to_string(),
            der,
        });
    }
    Ok(blocks)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

// === keygen ===

/// The files `keygen` wrote.
#[derive(Debug, Clone)]
pub struct KeyFiles {
    pub private_pem: PathBuf,
    pub public_pem: PathBuf,
    pub jwks: PathBuf,
}

/// Writes `DIR/private.pem` (PKCS#8, mode 0600, never overwritten),
/// `DIR/public.pem` and `DIR/jwks.json` (one key with kid, alg, use=sig).
pub fn write_key_files(key: &SigningKey, dir: &Path) -> Result<KeyFiles, MintError> {
    let werr = |path: &Path, e: std::io::Error| MintError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    if dir.exists() && !dir.is_dir() {
        return Err(usage(format!(
            "--out {}: exists and is not a directory",
            dir.display()
        )));
    }
    create_private_dir(dir).map_err(|e| werr(dir, e))?;
    let files = KeyFiles {
        private_pem: dir.join(PRIVATE_KEY_FILE),
        public_pem: dir.join(PUBLIC_KEY_FILE),
        jwks: dir.join(JWKS_FILE),
    };
    write_private(&files.private_pem, key.private_pem().as_bytes()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            usage(format!(
                "{}: already exists; not overwriting a private key (choose another --out)",
                files.private_pem.display()
            ))
        } else {
            werr(&files.private_pem, e)
        }
    })?;
    std::fs::write(&files.public_pem, key.public_pem()).map_err(|e| werr(&files.public_pem, e))?;
    std::fs::write(&files.jwks, format!("{}\n", key.jwks_json()))
        .map_err(|e| werr(&files.jwks, e))?;
    Ok(files)
}

/// `portcullis keygen`: a fresh key for `alg` (with `kid`, else its
/// thumbprint) written to `out`.
pub fn keygen(
    alg: &str,
    out: &Path,
    kid: Option<&str>,
) -> Result<(SigningKey, KeyFiles), MintError> {
    let alg = parse_alg(alg)?;
    let mut key = SigningKey::generate(alg)?;
    if let Some(kid) = kid {
        key = key.with_kid(kid)?;
    }
    let files = write_key_files(&key, out)?;
    Ok((key, files))
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// Creates `path` (never overwriting) readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

// === token ===

/// What `portcullis token` puts in a token.
#[derive(Debug, Clone, Default)]
pub struct TokenClaims {
    pub iss: String,
    pub sub: String,
    pub client_id: Option<String>,
    /// `entitlements` claim (an array); absent when `None`.
    pub entitlements: Option<Vec<String>>,
    /// `aud`: absent when empty, a string for one, an array for several.
    pub audiences: Vec<String>,
    pub ttl_seconds: u64,
    /// More claims, set last (they may replace the ones above).
    pub extra: Vec<(String, Value)>,
}

impl TokenClaims {
    /// The claims as of `now` (Unix seconds): `iat` = `nbf` = now, `exp` =
    /// now + ttl, a random `jti`.
    pub fn to_json(&self, now: u64) -> Result<Value, MintError> {
        if self.iss.is_empty() {
            return Err(usage("--iss must not be empty"));
        }
        if self.sub.is_empty() {
            return Err(usage("--sub must not be empty"));
        }
        if self.ttl_seconds == 0 || self.ttl_seconds > MAX_TTL_SECONDS {
            return Err(usage(format!(
                "--ttl {}: must be 1 to {MAX_TTL_SECONDS} seconds",
                self.ttl_seconds
            )));
        }
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.iss));
        claims.insert("sub".into(), json!(self.sub));
        match self.audiences.as_slice() {
            [] => {}
            [one] => {
                claims.insert("aud".into(), json!(one));
            }
            many => {
                claims.insert("aud".into(), json!(many));
            }
        }
        if let Some(client_id) = &self.client_id {
            claims.insert("client_id".into(), json!(client_id));
        }
        if let Some(entitlements) = &self.entitlements {
            claims.insert("entitlements".into(), json!(entitlements));
        }
        claims.insert("iat".into(), json!(now));
        claims.insert("nbf".into(), json!(now));
        claims.insert("exp".into(), json!(now + self.ttl_seconds));
        claims.insert("jti".into(), json!(hex::encode(rand::random::<[u8; 16]>())));
        for (name, value) in &self.extra {
            claims.insert(name.clone(), value.clone());
        }
        Ok(Value::Object(claims))
    }
}

/// `--entitlements a,b,c` → `["a", "b", "c"]` (blanks dropped; `""` → `[]`).
pub fn parse_entitlements(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// `--claim NAME=text` (a string) or `--claim NAME:=json` (any JSON value).
pub fn parse_claim(arg: &str) -> Result<(String, Value), MintError> {
    let bad = || {
        usage(format!(
            "--claim {arg:?}: expected NAME=string or NAME:=json (e.g. oid=org-1, admin:=true, roles:='[\"a\"]')"
        ))
    };
    let (name, value) = match (arg.find(":="), arg.find('=')) {
        (Some(i), Some(j)) if i + 1 == j => {
            let text = &arg[i + 2..];
            let value: Value = serde_json::from_str(text).map_err(|_| {
                usage(format!(
                    "--claim {}: the value after := is not JSON",
                    &arg[..i]
                ))
            })?;
            (&arg[..i], value)
        }
        (_, Some(j)) => (&arg[..j], Value::String(arg[j + 1..].to_string())),
        _ => return Err(bad()),
    };
    if name.is_empty() || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad());
    }
    Ok((name.to_string(), value))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `portcullis token`: reads the key, applies `alg` / `kid` when given, and
/// signs `claims` as of now.
pub fn token(
    key_file: &Path,
    alg: Option<&str>,
    kid: Option<&str>,
    claims: &TokenClaims,
) -> Result<String, MintError> {
    // Check the arguments before touching the key file.
    let alg = alg.map(parse_alg).transpose()?;
    let claims = claims.to_json(unix_now())?;
    let mut key = SigningKey::from_file(key_file)?;
    if let Some(alg) = alg {
        key = key
            .with_alg(alg)
            .map_err(|e| MintError::Usage(format!("--alg {e}")))?;
    }
    if let Some(kid) = kid {
        key = key.with_kid(kid)?;
    }
    key.sign(&claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_part(token: &str, i: usize) -> Value {
        let part = token.split('.').nth(i).expect("part");
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("b64")).expect("json")
    }

    #[test]
    fn every_algorithm_generates_signs_and_round_trips_through_pem() {
        for name in ["ES256", "ES384", "RS256", "PS256", "PS512", "EdDSA"] {
            let alg = parse_alg(name).expect("alg");
            let key = SigningKey::generate(alg).expect("generate");
            assert_eq!(key.alg(), alg);
            assert_eq!(key.kid(), key.thumbprint());
            let jwk = key.public_jwk();
            assert_eq!(jwk["alg"], name);
            assert_eq!(jwk["use"], "sig");
            assert_eq!(jwk["kid"], key.kid());
            // The JWKS is one the gateway accepts.
            let set = crate::auth::KeySet::from_jwks_json(key.jwks_json().as_bytes())
                .expect("jwks parses");
            assert_eq!(set.len(), 1, "{name}");

            let token = key.sign(&json!({"sub": "x", "exp": 1})).expect("sign");
            assert_eq!(decode_part(&token, 0)["alg"], name);
            assert_eq!(decode_part(&token, 0)["kid"], key.kid());

            let again = SigningKey::from_pem(&key.private_pem()).expect("reparse");
            assert_eq!(again.public_jwk()["x"], jwk["x"], "{name}");
            assert_eq!(again.public_jwk()["n"], jwk["n"], "{name}");
            assert_eq!(again.kid(), key.kid());
            assert!(key.public_pem().starts_with("-----BEGIN PUBLIC KEY-----\n"));
        }
    }

    #[test]
    fn algorithm_must_fit_the_key() {
        let key = SigningKey::generate(Algorithm::ES256).expect("generate");
        let err = key.with_alg(Algorithm::RS256).expect_err("mismatch");
        assert_eq!(err.exit_code(), 64);
        assert!(err.to_string().contains("EC P-256"), "{err}");
        assert!(parse_alg("HS256").is_err());
        assert!(parse_alg("none").is_err());
        let err = parse_alg("es256").expect_err("case");
        assert!(err.to_string().contains("did you mean ES256"), "{err}");
    }

    #[test]
    fn pem_errors_say_what_is_wrong_without_the_content() {
        let key = SigningKey::generate(Algorithm::ES256).expect("generate");
        let public = key.public_pem();
        let cases = [
            ("", "no PEM block"),
            (public.as_str(), "public key"),
            (
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
                "encrypted",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n",
                "base64",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "PKCS#8",
            ),
            ("-----BEGIN PRIVATE KEY-----\nAAAA\n", "no END"),
        ];
        for (text, expected) in cases {
            let err = SigningKey::from_pem(text).expect_err(expected);
            assert!(err.contains(expected), "{expected}: {err}");
            assert!(!err.contains("AAAA"), "{err}");
        }
    }

    #[test]
    fn claims_and_claim_arguments() {
        let claims = TokenClaims {
            iss: "https://idp".into(),
            sub: "me".into(),
            client_id: Some("c1".into()),
            entitlements: Some(parse_entitlements("a, b,,c")),
            audiences: vec!["x".into()],
            ttl_seconds: 60,
            extra: vec![
                parse_claim("oid=org-1").expect("string"),
                parse_claim("admin:=true").expect("json"),
                parse_claim("url=https://x/?a=b").expect("string with ="),
            ],
        }
        .to_json(1000)
        .expect("claims");
        assert_eq!(claims["entitlements"], json!(["a", "b", "c"]));
        assert_eq!(claims["aud"], "x");
        assert_eq!(claims["exp"], 1060);
        assert_eq!(claims["oid"], "org-1");
        assert_eq!(claims["admin"], true);
        assert_eq!(claims["url"], "https://x/?a=b");
        assert!(parse_claim("novalue").is_err());
        assert!(parse_claim("=x").is_err());
        assert!(parse_claim("a:=nojson").is_err());
        let zero = TokenClaims {
            iss: "i".into(),
            sub: "s".into(),
            ..TokenClaims::default()
        };
        assert!(zero.to_json(0).is_err(), "ttl 0");
    }

    #[test]
    fn debug_never_shows_key_material() {
        let key = SigningKey::generate(Algorithm::EdDSA).expect("generate");
        let shown = format!("{key:?}");
        assert!(
            shown.contains("EdDSA") && !shown.contains("pkcs8"),
            "{shown}"
        );
    }
}
