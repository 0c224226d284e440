//! Fixtures shared by the benches: the TEST-ONLY keys of
//! `tests/fixtures/keys/`, token minting, a scratch directory for config and
//! JWKS files, and a 2 KiB IBM Verify API-client update body.
//!
//! Each bench includes this with `mod common;` and uses only part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use portcullis::config::{load_str, Config};
use serde_json::{json, Value};

/// `iss` of the IBM Verify-like issuer.
pub const ISSUER: &str = "https://tenant.verify.ibm.com/oidc/endpoint/default";
/// `aud` the gateway expects.
pub const AUDIENCE: &str = "portcullis";
/// The calling API client (`client_id` claim).
pub const CLIENT_ID: &str = "ci-provisioning-bot";
/// The API client being updated (path parameter and body `id`).
pub const TARGET_ID: &str = "0fd9e3a4-7b4e-4f5b-9b3a-1b2c3d4e5f60";
/// HMAC secret of the HS256 issuer (TEST ONLY).
pub const HMAC_SECRET: &[u8] = b"bench-only-hmac-secret-0123456789abcdef";

/// What the caller (an admin API client) holds: the 30 entitlements its
/// update body grants, and more.
pub const CALLER_ENTITLEMENTS: [&str; 40] = [
    "manageAPIClients",
    "readAPIClients",
    "manageUserGroups",
    "readUserGroups",
    "manageAccessPolicies",
    "readAccessPolicies",
    "manageAttributes",
    "readAttributes",
    "manageCerts",
    "readCerts",
    "manageFederations",
    "readFederations",
    "manageIdentitySources",
    "readIdentitySources",
    "manageMFAMethods",
    "readMFAMethods",
    "manageTemplates",
    "readTemplates",
    "manageWebhooks",
    "readWebhooks",
    "manageRelyingParty",
    "readRelyingParty",
    "manageEntitlements",
    "readEntitlements",
    "manageReports",
    "readReports",
    "managePwdPolicy",
    "readPwdPolicy",
    "manageTenantProperties",
    "readTenantProperties",
    "manageOIDCGrants",
    "readOIDCGrants",
    "manageDevices",
    "readDevices",
    "managePushCreds",
    "readPushCreds",
    "manageNotificationProviders",
    "readNotificationProviders",
    "revokeSession",
    "listSessions",
];

/// The entitlements the update body grants (all held by the caller, all in
/// the catalogue for offering CIC).
pub const GRANTED_ENTITLEMENTS: [&str; 30] = [
    "readAPIClients",
    "readUserGroups",
    "manageUserGroups",
    "readAccessPolicies",
    "readAttributes",
    "manageAttributes",
    "readCerts",
    "readFederations",
    "readIdentitySources",
    "readMFAMethods",
    "manageMFAMethods",
    "readTemplates",
    "manageTemplates",
    "readWebhooks",
    "manageWebhooks",
    "readRelyingParty",
    "readEntitlements",
    "readReports",
    "manageReports",
    "readPwdPolicy",
    "readTenantProperties",
    "readOIDCGrants",
    "manageOIDCGrants",
    "readDevices",
    "readPushCreds",
    "readNotificationProviders",
    "manageNotificationProviders",
    "revokeSession",
    "listSessions",
    "manageDevices",
];

/// A path inside the repository.
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Unix seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh scratch directory for this bench process.
pub fn scratch_dir(bench: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-bench-{bench}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Validates `text` as `dir/bench.toml` (relative paths resolve in `dir`).
pub fn load_config(dir: &Path, text: &str) -> Config {
    let origin = dir.join("bench.toml");
    match load_str(text, &origin) {
        Ok(loaded) => loaded.config,
        Err(errors) => panic!("bench config does not validate:\n{errors}\n---\n{text}"),
    }
}

/// A signing key with its `kid` and algorithm.
pub struct Key {
    pub alg: Algorithm,
    pub kid: String,
    encoding: EncodingKey,
    /// Fixture base name, for the public key file.
    file: Option<&'static str>,
}

fn fixture(file: &str) -> Vec<u8> {
    std::fs::read(repo_path("tests/fixtures/keys").join(file)).unwrap()
}

impl Key {
    /// `rsa2048.pem` for RS256 or PS256.
    pub fn rsa(alg: Algorithm, kid: &str) -> Key {
        Key {
            alg,
            kid: kid.to_owned(),
            encoding: EncodingKey::from_rsa_pem(&fixture("rsa2048.pem")).unwrap(),
            file: Some("rsa2048"),
        }
    }

    /// `ec256.pem`, ES256.
    pub fn ec256(kid: &str) -> Key {
        Key {
            alg: Algorithm::ES256,
            kid: kid.to_owned(),
            encoding: EncodingKey::from_ec_pem(&fixture("ec256.pem")).unwrap(),
            file: Some("ec256"),
        }
    }

    /// `ed25519.pem`, EdDSA.
    pub fn ed25519(kid: &str) -> Key {
        Key {
            alg: Algorithm::EdDSA,
            kid: kid.to_owned(),
            encoding: EncodingKey::from_ed_pem(&fixture("ed25519.pem")).unwrap(),
            file: Some("ed25519"),
        }
    }

    /// [`HMAC_SECRET`], HS256.
    pub fn hmac(kid: &str) -> Key {
        Key {
            alg: Algorithm::HS256,
            kid: kid.to_owned(),
            encoding: EncodingKey::from_secret(HMAC_SECRET),
            file: None,
        }
    }

    /// The public JWK (with `kid` and `alg`).
    pub fn jwk(&self) -> Value {
        if self.alg == Algorithm::EdDSA {
            // jsonwebtoken cannot derive an OKP JWK from a private key: the
            // raw public key is the last 32 bytes of the SPKI DER.
            let pem = String::from_utf8(fixture("ed25519.pub.pem")).unwrap();
            let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            let der = STANDARD.decode(b64).unwrap();
            return json!({
                "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA",
                "kid": self.kid, "x": URL_SAFE_NO_PAD.encode(&der[der.len() - 32..]),
            });
        }
        assert!(self.file.is_some(), "an HMAC key has no JWK");
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&self.encoding, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        serde_json::to_value(&jwk).unwrap()
    }

    /// A compact JWS of `claims`, header `{"alg", "typ": "JWT", "kid"}`.
    pub fn mint(&self, claims: &Value) -> String {
        let alg = serde_json::to_value(self.alg).unwrap();
        let header = json!({"alg": alg, "typ": "JWT", "kid": self.kid});
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &self.encoding, self.alg).unwrap();
        format!("{message}.{signature}")
    }
}

/// `{"keys": [...]}` of the public JWKs.
pub fn jwks(keys: &[&Key]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() }).to_string()
}

/// Claims of an IBM Verify-like access token for [`CLIENT_ID`] holding
/// [`CALLER_ENTITLEMENTS`], valid for an hour; `jti` makes tokens distinct.
pub fn claims(iss: &str, jti: u64) -> Value {
    let now = now();
    json!({
        "iss": iss,
        "sub": CLIENT_ID,
        "aud": AUDIENCE,
        "client_id": CLIENT_ID,
        "grant_type": "client_credentials",
        "scope": "openid",
        "tenantId": "a1b2c3d4-0000-4000-8000-123456789abc",
        "jti": format!("bench-{jti:016x}"),
        "iat": now - 10,
        "exp": now + 3600,
        "entitlements": &CALLER_ENTITLEMENTS[..],
    })
}

/// A PUT /v1.0/apiclients/{id} body of exactly 2048 bytes: the client's
/// name, 30 granted entitlements, an IP allow-list of 12 networks, a JWK
/// URI and additional config (both `field_requires`), override settings.
pub fn api_client_update_body() -> Vec<u8> {
    let mut body = json!({
        "id": TARGET_ID,
        "clientName": "ci-provisioning-bot (build farm, eu-de)",
        "enabled": true,
        "entitlements": &GRANTED_ENTITLEMENTS[..],
        "ipFilterOp": "allow",
        "ipFilters": [
            "10.0.0.0/8", "10.20.30.0/24", "172.16.0.0/12", "192.168.0.0/16",
            "192.168.10.7", "198.51.100.0/24", "203.0.113.16/28", "100.64.0.0/10",
            "2001:db8::/32", "2001:db8:10::/48", "fd00:1234::/64", "2001:db8::7",
        ],
        "jwkUri": "https://ci.example.com/.well-known/jwks.json",
        "additionalConfig": {
            "clientAuthMethod": "private_key_jwt",
            "validateClientAssertionJti": true,
            "allowedClientAssertionVerificationKeys": ["ci-2024", "ci-2025"],
        },
        "overrideSettings": {
            "restrictScopes": true,
            "scopes": [
                {"name": "openid", "description": "OpenID Connect"},
                {"name": "profile", "description": "Basic profile"},
            ],
        },
        "description": "",
    });
    let len = body.to_string().len();
    assert!(len < 2048, "body base is {len} bytes");
    let filler = "Provisions API clients for the CI pipelines of the build farm. ";
    body["description"] = json!(filler.repeat(40)[..2048 - len].to_string());
    let text = body.to_string().into_bytes();
    assert_eq!(text.len(), 2048);
    text
}
