//! Tests of the whole token path: real keys (TEST ONLY, from
//! `tests/fixtures/keys/`), real signatures, hand-made attack tokens, and a
//! loopback JWKS server for the refresh logic.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde_json::{json, Value};

use super::keys::KeySet;
use super::verifier::{entitlements_from_claims, VerifiedToken, Verifier};
use crate::config::model::{IssuerConfig, KeySource, Secret, TokenTypes};
use crate::error::{GatewayError, TokenFault};

const RSA_PEM: &[u8] = include_bytes!("../../tests/fixtures/keys/rsa2048.pem");
const RSA_PUB_PEM: &[u8] = include_bytes!("../../tests/fixtures/keys/rsa2048.pub.pem");
const RSA_B_PEM: &[u8] = include_bytes!("../../tests/fixtures/keys/rsa2048-b.pem");
const EC256_PEM: &[u8] = include_bytes!("../../tests/fixtures/keys/ec256.pem");
const EC384_PEM: &[u8] = include_bytes!("../../tests/fixtures/keys/ec384.pem");
const ED_PEM: &[u8] = include_bytes!("../../tests/fixtures/keys/ed25519.pem");
const ED_PUB_PEM: &[u8] = include_bytes!("../../tests/fixtures/keys/ed25519.pub.pem");

const NOW: u64 = 1_700_000_000;
const ISS: &str = "https://idp.example.test";
const HMAC_SECRET: &[u8] = b"test-only-hmac-secret-0123456789abcdef";

// === fixtures ===

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PEM).unwrap()
}
fn rsa_b() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_B_PEM).unwrap()
}
fn ec256() -> EncodingKey {
    EncodingKey::from_ec_pem(EC256_PEM).unwrap()
}
fn ec384() -> EncodingKey {
    EncodingKey::from_ec_pem(EC384_PEM).unwrap()
}
fn ed() -> EncodingKey {
    EncodingKey::from_ed_pem(ED_PEM).unwrap()
}
fn hmac() -> EncodingKey {
    EncodingKey::from_secret(HMAC_SECRET)
}

fn b64(data: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

fn name(alg: Algorithm) -> String {
    format!("{alg:?}")
}

/// A public JWK for `key` (with `alg` set), optionally with a `kid`.
fn jwk(key: &EncodingKey, alg: Algorithm, kid: Option<&str>) -> Value {
    let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = kid.map(str::to_owned);
    serde_json::to_value(jwk).unwrap()
}

/// `jsonwebtoken` cannot derive an Ed25519 JWK from a private key.
fn ed_jwk(kid: Option<&str>) -> Value {
    let public = DecodingKey::from_ed_pem(ED_PUB_PEM).unwrap();
    let mut jwk =
        json!({"kty": "OKP", "crv": "Ed25519", "x": b64(public.as_bytes()), "use": "sig"});
    if let Some(kid) = kid {
        jwk["kid"] = json!(kid);
    }
    jwk
}

fn jwks(keys: &[Value]) -> Value {
    json!({ "keys": keys })
}

/// A token from raw header and claims JSON text, signed with `key`.
fn sign_raw(header: &str, claims: &str, key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!("{}.{}", b64(header), b64(claims));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

fn header(alg: Algorithm, kid: Option<&str>) -> Value {
    let mut h = json!({"alg": name(alg), "typ": "JWT"});
    if let Some(kid) = kid {
        h["kid"] = json!(kid);
    }
    h
}

fn mint(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    sign_raw(&header(alg, kid).to_string(), &claims.to_string(), key, alg)
}

fn claims() -> Value {
    json!({
        "iss": ISS,
        "sub": "alice",
        "client_id": "app-1",
        "exp": NOW + 600,
        "iat": NOW - 10,
        "entitlements": ["readUsers", "manageAPIClients"],
    })
}

fn claims_with(changes: Value) -> Value {
    let mut c = claims();
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn issuer(name: &str, algorithms: &[Algorithm], keys: KeySource) -> IssuerConfig {
    IssuerConfig {
        name: name.to_owned(),
        issuer: ISS.to_owned(),
        audiences: Vec::new(),
        algorithms: algorithms.to_vec(),
        token_types: TokenTypes::default(),
        keys,
        jwks_refresh: Duration::from_secs(300),
        jwks_min_refetch: Duration::from_secs(30),
        leeway_seconds: 30,
        client_id_claims: vec!["client_id".into(), "azp".into(), "cid".into()],
        entitlements_claim: vec!["entitlements".into()],
        client_metadata: true,
    }
}

fn file_keys(doc: &Value) -> KeySource {
    KeySource::JwksFile {
        path: "test-jwks.json".into(),
        document: doc.to_string(),
    }
}

fn hmac_keys() -> KeySource {
    KeySource::HmacSecret {
        env: "TEST_SECRET".into(),
        secret: Secret(HMAC_SECRET.to_vec()),
    }
}

/// The usual issuer: one RS256 key `k1` from a JWKS file.
fn rsa_issuer() -> IssuerConfig {
    issuer(
        "idp",
        &[Algorithm::RS256],
        file_keys(&jwks(&[jwk(&rsa(), Algorithm::RS256, Some("k1"))])),
    )
}

fn verifier(issuers: Vec<IssuerConfig>) -> Verifier {
    let issuers: Vec<_> = issuers.into_iter().map(Arc::new).collect();
    Verifier::new(&issuers)
}

async fn verify(v: &Verifier, token: &str) -> Result<VerifiedToken, GatewayError> {
    v.verify_uncached(token, &[0, 1, 2, 3], NOW).await
}

#[track_caller]
fn refused(result: Result<VerifiedToken, GatewayError>, expected: TokenFault) {
    match result {
        Err(GatewayError::InvalidToken(fault)) => assert_eq!(fault, expected),
        other => panic!("expected {expected:?}, got {other:?}"),
    }
}

// === the happy path, every algorithm ===

#[tokio::test]
async fn rs256_token_verifies_with_all_fields() {
    let v = verifier(vec![rsa_issuer()]);
    assert!(v.all_ready());
    let t = mint(Algorithm::RS256, Some("k1"), &claims(), &rsa());
    let ok = verify(&v, &t).await.unwrap();
    assert_eq!(ok.issuer, 0);
    assert_eq!(ok.subject.as_deref(), Some("alice"));
    assert_eq!(ok.client_id.as_deref(), Some("app-1"));
    assert_eq!(*ok.entitlements, ["readUsers", "manageAPIClients"]);
    assert_eq!(ok.expires_at, NOW + 600);
    assert_eq!(ok.claims.get("iss"), Some(&json!(ISS)));
}

#[tokio::test]
async fn every_supported_algorithm_verifies() {
    let cases: Vec<(Algorithm, EncodingKey, Value)> = vec![
        (
            Algorithm::RS256,
            rsa(),
            jwk(&rsa(), Algorithm::RS256, Some("k")),
        ),
        (
            Algorithm::RS384,
            rsa(),
            jwk(&rsa(), Algorithm::RS384, Some("k")),
        ),
        (
            Algorithm::RS512,
            rsa(),
            jwk(&rsa(), Algorithm::RS512, Some("k")),
        ),
        (
            Algorithm::PS256,
            rsa(),
            jwk(&rsa(), Algorithm::PS256, Some("k")),
        ),
        (
            Algorithm::PS384,
            rsa(),
            jwk(&rsa(), Algorithm::PS384, Some("k")),
        ),
        (
            Algorithm::PS512,
            rsa(),
            jwk(&rsa(), Algorithm::PS512, Some("k")),
        ),
        (
            Algorithm::ES256,
            ec256(),
            jwk(&ec256(), Algorithm::ES256, Some("k")),
        ),
        (
            Algorithm::ES384,
            ec384(),
            jwk(&ec384(), Algorithm::ES384, Some("k")),
        ),
        (Algorithm::EdDSA, ed(), ed_jwk(Some("k"))),
    ];
    for (alg, key, public) in cases {
        let v = verifier(vec![issuer("idp", &[alg], file_keys(&jwks(&[public])))]);
        let t = mint(alg, Some("k"), &claims(), &key);
        assert!(verify(&v, &t).await.is_ok(), "{alg:?}");
        // The same token with one signature byte changed.
        let mut bad = t.clone().into_bytes();
        let i = bad.len() - 5;
        bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).unwrap();
        refused(verify(&v, &bad).await, TokenFault::BadSignature);
    }
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let v = verifier(vec![issuer("idp", &[alg], hmac_keys())]);
        let t = mint(alg, None, &claims(), &hmac());
        assert!(verify(&v, &t).await.is_ok(), "{alg:?}");
        let t = mint(alg, Some("any-kid"), &claims(), &hmac());
        assert!(verify(&v, &t).await.is_ok(), "{alg:?} with kid");
        let wrong = mint(
            alg,
            None,
            &claims(),
            &EncodingKey::from_secret(b"another secret"),
        );
        refused(verify(&v, &wrong).await, TokenFault::BadSignature);
    }
}

/// Keys are parsed once and verify raw signature bytes: a signature made for
/// another algorithm of the same key, an ECDSA signature in DER instead of
/// JWS's fixed `r || s`, and oversized or non-canonical base64 all fail.
#[tokio::test]
async fn signature_bytes_must_match_the_algorithm_exactly() {
    let mut public = jwk(&rsa(), Algorithm::RS256, Some("k1"));
    public.as_object_mut().unwrap().remove("alg");
    let algs = [Algorithm::RS256, Algorithm::PS256];
    let v = verifier(vec![issuer("idp", &algs, file_keys(&jwks(&[public])))]);
    let rs = mint(Algorithm::RS256, Some("k1"), &claims(), &rsa());
    let ps = mint(Algorithm::PS256, Some("k1"), &claims(), &rsa());
    let (ps_signed, _) = ps.rsplit_once('.').unwrap();
    let (_, rs_sig) = rs.rsplit_once('.').unwrap();
    refused(
        verify(&v, &format!("{ps_signed}.{rs_sig}")).await,
        TokenFault::BadSignature,
    );
    // The valid PS256 signature with its unused trailing bits set: a lenient
    // decoder would yield the same bytes and accept it.
    let (_, ps_sig) = ps.rsplit_once('.').unwrap();
    let (head, last) = ps_sig.split_at(ps_sig.len() - 1);
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let index = ALPHABET
        .iter()
        .position(|&c| c == last.as_bytes()[0])
        .unwrap();
    assert_eq!(
        index & 0b1111,
        0,
        "a 256-byte signature leaves 4 unused bits"
    );
    let noncanonical = format!("{head}{}", ALPHABET[index | 1] as char);
    assert_eq!(URL_SAFE_NO_PAD.decode(ps_sig).unwrap().len(), 256);
    refused(
        verify(&v, &format!("{ps_signed}.{noncanonical}")).await,
        TokenFault::BadSignature,
    );
    assert!(verify(&v, &ps).await.is_ok(), "the canonical form verifies");
    // 1025 bytes once decoded: longer than any RSA signature aws-lc checks.
    let long = URL_SAFE_NO_PAD.encode([7u8; 1025]);
    refused(
        verify(&v, &format!("{ps_signed}.{long}")).await,
        TokenFault::BadSignature,
    );

    let v = verifier(vec![issuer(
        "idp",
        &[Algorithm::ES256],
        file_keys(&jwks(&[jwk(&ec256(), Algorithm::ES256, Some("k"))])),
    )]);
    let es = mint(Algorithm::ES256, Some("k"), &claims(), &ec256());
    assert!(verify(&v, &es).await.is_ok());
    let (signed, sig) = es.rsplit_once('.').unwrap();
    let raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
    assert_eq!(raw.len(), 64, "JWS ES256 signatures are r || s");
    let der = der_ecdsa(&raw[..32], &raw[32..]);
    refused(
        verify(&v, &format!("{signed}.{}", URL_SAFE_NO_PAD.encode(der))).await,
        TokenFault::BadSignature,
    );
}

/// DER `SEQUENCE { INTEGER r, INTEGER s }` for a P-256 signature.
fn der_ecdsa(r: &[u8], s: &[u8]) -> Vec<u8> {
    let int = |v: &[u8]| {
        let v: Vec<u8> = v.iter().copied().skip_while(|b| *b == 0).collect();
        let mut out = vec![0x02];
        if v.first().is_some_and(|b| b & 0x80 != 0) {
            out.push(v.len() as u8 + 1);
            out.push(0);
        } else {
            out.push(v.len() as u8);
        }
        out.extend(v);
        out
    };
    let body = [int(r), int(s)].concat();
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

#[tokio::test]
async fn one_rsa_key_without_alg_serves_rs_and_ps() {
    let mut public = jwk(&rsa(), Algorithm::RS256, Some("k1"));
    public.as_object_mut().unwrap().remove("alg");
    let algs = [Algorithm::RS256, Algorithm::PS512];
    let v = verifier(vec![issuer("idp", &algs, file_keys(&jwks(&[public])))]);
    for alg in algs {
        let t = mint(alg, Some("k1"), &claims(), &rsa());
        assert!(verify(&v, &t).await.is_ok(), "{alg:?}");
    }
}

/// The proxy awaits `verify` and spawns the refreshers on a multi-threaded
/// runtime: both futures must be `Send`.
#[test]
fn futures_are_send() {
    fn send<T: Send + 'static>(_: &T) {}
    fn send_ref<T: Send>(_: &T) {}
    let v = verifier(vec![rsa_issuer()]);
    send_ref(&v.verify_uncached("a.b.c", &[0], NOW));
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    send_ref(&v.run_refreshers(shutdown));
    let url = issuer(
        "u",
        &[Algorithm::RS256],
        KeySource::JwksUrl("http://127.0.0.1:9/".into()),
    );
    for refresher in verifier(vec![url]).refreshers() {
        send(&refresher.run());
    }
}

// === algorithms ===

#[tokio::test]
async fn alg_none_is_refused_in_any_case() {
    let v = verifier(vec![rsa_issuer()]);
    let c = b64(claims().to_string());
    for alg in ["none", "None", "NONE", "nOnE"] {
        let h = b64(json!({"alg": alg, "typ": "JWT"}).to_string());
        refused(
            verify(&v, &format!("{h}.{c}.")).await,
            TokenFault::AlgorithmNotAllowed,
        );
        refused(
            verify(&v, &format!("{h}.{c}.c2ln")).await,
            TokenFault::AlgorithmNotAllowed,
        );
    }
    // An empty signature with a real alg is simply malformed.
    let h = b64(header(Algorithm::RS256, Some("k1")).to_string());
    refused(
        verify(&v, &format!("{h}.{c}.")).await,
        TokenFault::Malformed,
    );
}

#[tokio::test]
async fn alg_outside_the_issuer_list_is_refused() {
    let v = verifier(vec![rsa_issuer()]);
    // Correctly signed with the right key, but PS256 is not in the list.
    let t = mint(Algorithm::PS256, Some("k1"), &claims(), &rsa());
    refused(verify(&v, &t).await, TokenFault::AlgorithmNotAllowed);
    // Names the gateway does not know, or in the wrong case.
    let c = b64(claims().to_string());
    for alg in [
        json!("ES512"),
        json!("rs256"),
        json!("HS1"),
        json!(""),
        json!("RSA-OAEP"),
    ] {
        let h = b64(json!({"alg": alg, "kid": "k1"}).to_string());
        refused(
            verify(&v, &format!("{h}.{c}.c2ln")).await,
            TokenFault::AlgorithmNotAllowed,
        );
    }
    // alg missing or not a string.
    for h in [
        json!({"kid": "k1"}),
        json!({"alg": 256}),
        json!({"alg": ["RS256"]}),
    ] {
        let h = b64(h.to_string());
        refused(
            verify(&v, &format!("{h}.{c}.c2ln")).await,
            TokenFault::Malformed,
        );
    }
}

/// The classic confusion attack: HS256 "signed" with the RSA public key as
/// the HMAC secret must never verify against an RSA issuer — not even when
/// the issuer's list (wrongly) names HS256.
#[tokio::test]
async fn hs256_with_the_rsa_public_key_as_secret_is_refused() {
    let forged_key = EncodingKey::from_secret(RSA_PUB_PEM);
    let public = jwk(&rsa(), Algorithm::RS256, Some("k1"));
    let mut no_alg = public.clone();
    no_alg.as_object_mut().unwrap().remove("alg");
    for algs in [
        &[Algorithm::RS256][..],
        &[Algorithm::RS256, Algorithm::HS256],
    ] {
        for doc in [
            jwks(std::slice::from_ref(&public)),
            jwks(std::slice::from_ref(&no_alg)),
        ] {
            let v = verifier(vec![issuer("idp", algs, file_keys(&doc))]);
            for kid in [Some("k1"), None] {
                let t = mint(Algorithm::HS256, kid, &claims(), &forged_key);
                refused(verify(&v, &t).await, TokenFault::AlgorithmNotAllowed);
            }
            let set = v.issuer_keys(0).unwrap().current().unwrap();
            assert!(set.select(Some("k1"), Algorithm::HS256).is_none());
        }
    }
    // And an RS256 token against an HMAC issuer is refused likewise.
    let v = verifier(vec![issuer(
        "h",
        &[Algorithm::HS256, Algorithm::RS256],
        hmac_keys(),
    )]);
    let t = mint(Algorithm::RS256, None, &claims(), &rsa());
    refused(verify(&v, &t).await, TokenFault::AlgorithmNotAllowed);
}

#[test]
fn oct_keys_in_a_jwks_are_never_used() {
    let oct = jwk(&hmac(), Algorithm::HS256, Some("h1"));
    let set = KeySet::from_jwks_json(jwks(&[oct]).to_string().as_bytes()).unwrap();
    assert!(set.is_empty());
    assert_eq!(set.skipped(), 1);
}

// === duplicate members ===

#[tokio::test]
async fn duplicate_members_are_refused_even_when_signed() {
    let v = verifier(vec![rsa_issuer()]);
    let c = claims().to_string();
    // Duplicate alg in the header (the second would downgrade).
    let h = r#"{"alg":"RS256","kid":"k1","alg":"none"}"#;
    refused(
        verify(&v, &sign_raw(h, &c, &rsa(), Algorithm::RS256)).await,
        TokenFault::DuplicateMember,
    );
    let h = r#"{"alg":"RS256","kid":"k1","kid":"k1"}"#;
    refused(
        verify(&v, &sign_raw(h, &c, &rsa(), Algorithm::RS256)).await,
        TokenFault::DuplicateMember,
    );

    let h = header(Algorithm::RS256, Some("k1")).to_string();
    let exp = NOW + 600;
    let dup_sub = format!(r#"{{"iss":"{ISS}","sub":"alice","exp":{exp},"sub":"admin"}}"#);
    refused(
        verify(&v, &sign_raw(&h, &dup_sub, &rsa(), Algorithm::RS256)).await,
        TokenFault::DuplicateMember,
    );
    let escaped = format!(r#"{{"iss":"{ISS}","sub":"alice","exp":{exp},"\u0073ub":"admin"}}"#);
    refused(
        verify(&v, &sign_raw(&h, &escaped, &rsa(), Algorithm::RS256)).await,
        TokenFault::DuplicateMember,
    );
    let nested = format!(
        r#"{{"iss":"{ISS}","exp":{exp},"realm_access":{{"roles":["a"],"roles":["admin"]}}}}"#
    );
    refused(
        verify(&v, &sign_raw(&h, &nested, &rsa(), Algorithm::RS256)).await,
        TokenFault::DuplicateMember,
    );
    // Control: the same shape without the duplicate verifies.
    let fine = format!(r#"{{"iss":"{ISS}","exp":{exp},"realm_access":{{"roles":["a"]}}}}"#);
    assert!(verify(&v, &sign_raw(&h, &fine, &rsa(), Algorithm::RS256))
        .await
        .is_ok());
}

// === crit, typ, kid ===

#[tokio::test]
async fn any_crit_is_refused() {
    let v = verifier(vec![rsa_issuer()]);
    let c = claims().to_string();
    for crit in [
        json!(["exp"]),
        json!([]),
        json!(["b64"]),
        json!("b64"),
        json!(null),
    ] {
        let mut h = header(Algorithm::RS256, Some("k1"));
        h["crit"] = crit.clone();
        if crit == json!(["b64"]) {
            h["b64"] = json!(false);
        }
        let t = sign_raw(&h.to_string(), &c, &rsa(), Algorithm::RS256);
        refused(verify(&v, &t).await, TokenFault::UnsupportedCritical);
    }
}

#[tokio::test]
async fn typ_follows_the_issuer_token_types() {
    let c = claims().to_string();
    let with_typ = |typ: Option<Value>| {
        let mut h = json!({"alg": "RS256", "kid": "k1"});
        if let Some(typ) = typ {
            h["typ"] = typ;
        }
        sign_raw(&h.to_string(), &c, &rsa(), Algorithm::RS256)
    };
    let v = verifier(vec![rsa_issuer()]);
    for ok in ["JWT", "jwt", "at+jwt", "AT+JWT", "application/at+jwt"] {
        assert!(verify(&v, &with_typ(Some(json!(ok)))).await.is_ok(), "{ok}");
    }
    assert!(verify(&v, &with_typ(None)).await.is_ok());
    for bad in ["JOSE", "id_token+jwt", "", "JWT "] {
        refused(
            verify(&v, &with_typ(Some(json!(bad)))).await,
            TokenFault::TypeNotAllowed,
        );
    }
    refused(
        verify(&v, &with_typ(Some(json!(1)))).await,
        TokenFault::Malformed,
    );

    // RFC 9068 access tokens only.
    let mut strict = rsa_issuer();
    strict.token_types = TokenTypes {
        values: vec!["at+jwt".into()],
        allow_absent: false,
    };
    let v = verifier(vec![strict]);
    assert!(verify(&v, &with_typ(Some(json!("at+JWT")))).await.is_ok());
    refused(
        verify(&v, &with_typ(None)).await,
        TokenFault::TypeNotAllowed,
    );
    refused(
        verify(&v, &with_typ(Some(json!("JWT")))).await,
        TokenFault::TypeNotAllowed,
    );
}

#[tokio::test]
async fn key_selection_by_kid() {
    let two = jwks(&[
        jwk(&rsa(), Algorithm::RS256, Some("k1")),
        jwk(&rsa_b(), Algorithm::RS256, Some("k2")),
    ]);
    let v = verifier(vec![issuer("idp", &[Algorithm::RS256], file_keys(&two))]);
    assert!(
        verify(&v, &mint(Algorithm::RS256, Some("k1"), &claims(), &rsa()))
            .await
            .is_ok()
    );
    assert!(
        verify(&v, &mint(Algorithm::RS256, Some("k2"), &claims(), &rsa_b()))
            .await
            .is_ok()
    );
    // Right kid, wrong key.
    refused(
        verify(&v, &mint(Algorithm::RS256, Some("k2"), &claims(), &rsa())).await,
        TokenFault::BadSignature,
    );
    // Unknown kid (a file issuer never refetches), no kid with two keys.
    refused(
        verify(&v, &mint(Algorithm::RS256, Some("k3"), &claims(), &rsa())).await,
        TokenFault::UnknownKey,
    );
    refused(
        verify(&v, &mint(Algorithm::RS256, None, &claims(), &rsa())).await,
        TokenFault::UnknownKey,
    );
    // kid of the wrong type.
    let h = json!({"alg": "RS256", "kid": 1}).to_string();
    refused(
        verify(
            &v,
            &sign_raw(&h, &claims().to_string(), &rsa(), Algorithm::RS256),
        )
        .await,
        TokenFault::Malformed,
    );
}

#[tokio::test]
async fn a_single_key_without_kid_serves_any_kid() {
    let doc = jwks(&[jwk(&rsa(), Algorithm::RS256, None)]);
    let v = verifier(vec![issuer("idp", &[Algorithm::RS256], file_keys(&doc))]);
    for kid in [None, Some("whatever")] {
        assert!(verify(&v, &mint(Algorithm::RS256, kid, &claims(), &rsa()))
            .await
            .is_ok());
    }
    // A single key with a kid serves tokens without kid, not other kids.
    let doc = jwks(&[jwk(&rsa(), Algorithm::RS256, Some("k1"))]);
    let v = verifier(vec![issuer("idp", &[Algorithm::RS256], file_keys(&doc))]);
    assert!(verify(&v, &mint(Algorithm::RS256, None, &claims(), &rsa()))
        .await
        .is_ok());
    refused(
        verify(&v, &mint(Algorithm::RS256, Some("k9"), &claims(), &rsa())).await,
        TokenFault::UnknownKey,
    );
}

/// Keys named by the token itself (`jwk`, `jku`, `x5u`, `x5c`) are ignored:
/// an attacker's self-signed token never verifies.
#[tokio::test]
async fn keys_embedded_or_referenced_by_the_token_are_ignored() {
    let v = verifier(vec![rsa_issuer()]);
    let attacker = rsa_b();
    let attacker_jwk = jwk(&attacker, Algorithm::RS256, Some("evil"));
    let c = claims().to_string();
    for (kid, expected) in [
        (Some("evil"), TokenFault::UnknownKey),
        (Some("k1"), TokenFault::BadSignature),
        (None, TokenFault::BadSignature),
    ] {
        let mut h = header(Algorithm::RS256, kid);
        h["jwk"] = attacker_jwk.clone();
        h["jku"] = json!("http://127.0.0.1:9/jwks.json");
        h["x5u"] = json!("http://127.0.0.1:9/cert.pem");
        h["x5c"] = json!(["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]);
        let t = sign_raw(&h.to_string(), &c, &attacker, Algorithm::RS256);
        refused(verify(&v, &t).await, expected);
    }
}

// === time claims ===

#[tokio::test]
async fn exp_nbf_iat_with_leeway() {
    let v = verifier(vec![rsa_issuer()]);
    let run = |changes: Value| {
        let t = mint(Algorithm::RS256, Some("k1"), &claims_with(changes), &rsa());
        let v = &v;
        async move { verify(v, &t).await }
    };
    // exp: leeway 30 s, boundary inclusive.
    assert_eq!(
        run(json!({"exp": NOW - 30})).await.unwrap().expires_at,
        NOW - 30
    );
    refused(run(json!({"exp": NOW - 31})).await, TokenFault::Expired);
    refused(
        run(json!({"exp": (NOW - 30) as f64 - 0.5})).await,
        TokenFault::Expired,
    );
    assert_eq!(
        run(json!({"exp": (NOW + 10) as f64 + 0.75}))
            .await
            .unwrap()
            .expires_at,
        NOW + 10
    );
    refused(run(json!({"exp": -1})).await, TokenFault::Expired);
    refused(run(json!({"exp": null})).await, TokenFault::MissingExpiry);
    refused(
        run(json!({"exp": (NOW + 600).to_string()})).await,
        TokenFault::Malformed,
    );
    refused(run(json!({"exp": true})).await, TokenFault::Malformed);
    // nbf
    assert!(run(json!({"nbf": NOW + 30})).await.is_ok());
    refused(run(json!({"nbf": NOW + 31})).await, TokenFault::NotYetValid);
    refused(run(json!({"nbf": "0"})).await, TokenFault::Malformed);
    // iat
    assert!(run(json!({"iat": NOW + 30})).await.is_ok());
    refused(
        run(json!({"iat": NOW + 31})).await,
        TokenFault::IssuedInFuture,
    );
    refused(run(json!({"iat": [NOW]})).await, TokenFault::Malformed);
}

#[tokio::test]
async fn time_claims_are_checked_only_after_the_signature() {
    let v = verifier(vec![rsa_issuer()]);
    let forged = mint(
        Algorithm::RS256,
        Some("k1"),
        &claims_with(json!({"exp": null})),
        &rsa_b(),
    );
    refused(verify(&v, &forged).await, TokenFault::BadSignature);
    let forged = mint(
        Algorithm::RS256,
        Some("k1"),
        &claims_with(json!({"exp": 1})),
        &rsa_b(),
    );
    refused(verify(&v, &forged).await, TokenFault::BadSignature);
}

// === audience ===

#[tokio::test]
async fn audience_string_array_mismatch_absent() {
    let mut config = rsa_issuer();
    config.audiences = vec!["https://api.example.test".into(), "admin".into()];
    let v = verifier(vec![config]);
    let run = |aud: Value| {
        let t = mint(
            Algorithm::RS256,
            Some("k1"),
            &claims_with(json!({"aud": aud})),
            &rsa(),
        );
        let v = &v;
        async move { verify(v, &t).await }
    };
    assert!(run(json!("admin")).await.is_ok());
    assert!(run(json!(["other", "https://api.example.test"]))
        .await
        .is_ok());
    refused(run(json!("Admin")).await, TokenFault::BadAudience);
    refused(run(json!(["other"])).await, TokenFault::BadAudience);
    refused(run(json!([])).await, TokenFault::BadAudience);
    refused(run(Value::Null).await, TokenFault::BadAudience);
    refused(run(json!(7)).await, TokenFault::Malformed);
    refused(run(json!(["admin", 7])).await, TokenFault::Malformed);

    // Without configured audiences, aud is not checked.
    let v = verifier(vec![rsa_issuer()]);
    let t = mint(
        Algorithm::RS256,
        Some("k1"),
        &claims_with(json!({"aud": "anything"})),
        &rsa(),
    );
    assert!(verify(&v, &t).await.is_ok());
}

// === entitlements, client id, subject ===

#[test]
fn entitlements_shapes() {
    let path = |p: &str| p.split('.').map(str::to_owned).collect::<Vec<_>>();
    let claims = json!({
        "entitlements": ["a", "b"],
        "scope": "openid  profile admin:write",
        "realm_access": {"roles": ["r1", "r2"]},
        "deep": {"a": {"b": "x y"}},
        "num": 3,
        "mixed": ["a", 1],
        "obj": {"a": 1},
        "null": null,
        "str": "s",
    });
    let claims = claims.as_object().unwrap();
    let get = |p: &str| entitlements_from_claims(claims, &path(p));
    assert_eq!(get("entitlements").unwrap(), ["a", "b"]);
    assert_eq!(get("scope").unwrap(), ["openid", "profile", "admin:write"]);
    assert_eq!(get("realm_access.roles").unwrap(), ["r1", "r2"]);
    assert_eq!(get("deep.a.b").unwrap(), ["x", "y"]);
    assert!(get("absent").unwrap().is_empty());
    assert!(get("realm_access.absent").unwrap().is_empty());
    assert!(get("absent.roles").unwrap().is_empty());
    assert!(get("null").unwrap().is_empty());
    assert_eq!(get("num"), Err(TokenFault::Malformed));
    assert_eq!(get("mixed"), Err(TokenFault::Malformed));
    assert_eq!(get("obj"), Err(TokenFault::Malformed));
    assert_eq!(get("str.roles"), Err(TokenFault::Malformed));
    assert!(entitlements_from_claims(claims, &[]).unwrap().is_empty());
}

#[tokio::test]
async fn entitlements_client_id_and_subject_from_a_token() {
    let mut config = rsa_issuer();
    config.entitlements_claim = vec!["realm_access".into(), "roles".into()];
    let v = verifier(vec![config]);
    let c = claims_with(json!({
        "realm_access": {"roles": ["manageUsers"]},
        "client_id": 42,
        "azp": "azp-client",
        "sub": null,
    }));
    let ok = verify(&v, &mint(Algorithm::RS256, Some("k1"), &c, &rsa()))
        .await
        .unwrap();
    assert_eq!(*ok.entitlements, ["manageUsers"]);
    assert_eq!(ok.client_id.as_deref(), Some("azp-client"));
    assert_eq!(ok.subject, None);

    let c = claims_with(json!({"realm_access": {"roles": "a b"}, "client_id": null, "cid": "c"}));
    let ok = verify(&v, &mint(Algorithm::RS256, Some("k1"), &c, &rsa()))
        .await
        .unwrap();
    assert_eq!(*ok.entitlements, ["a", "b"]);
    assert_eq!(ok.client_id.as_deref(), Some("c"));

    let c = claims_with(json!({"realm_access": {"roles": [1]}}));
    refused(
        verify(&v, &mint(Algorithm::RS256, Some("k1"), &c, &rsa())).await,
        TokenFault::Malformed,
    );
    let c = claims_with(json!({"realm_access": ["manageUsers"]}));
    refused(
        verify(&v, &mint(Algorithm::RS256, Some("k1"), &c, &rsa())).await,
        TokenFault::Malformed,
    );
}

// === issuers ===

#[tokio::test]
async fn issuer_selection() {
    let mut other = issuer(
        "other",
        &[Algorithm::ES256],
        file_keys(&jwks(&[jwk(&ec256(), Algorithm::ES256, Some("e1"))])),
    );
    other.issuer = "https://other.example.test".into();
    let v = verifier(vec![rsa_issuer(), other]);
    let t = mint(Algorithm::RS256, Some("k1"), &claims(), &rsa());
    assert_eq!(v.verify_uncached(&t, &[0], NOW).await.unwrap().issuer, 0);
    refused(
        v.verify_uncached(&t, &[1], NOW).await,
        TokenFault::IssuerNotAccepted,
    );
    refused(
        v.verify_uncached(&t, &[], NOW).await,
        TokenFault::IssuerNotAccepted,
    );

    for iss in [
        json!("https://unknown.example.test"),
        json!("https://IDP.example.test"),
        Value::Null,
    ] {
        let t = mint(
            Algorithm::RS256,
            Some("k1"),
            &claims_with(json!({"iss": iss})),
            &rsa(),
        );
        refused(verify(&v, &t).await, TokenFault::UnknownIssuer);
    }
    let t = mint(
        Algorithm::RS256,
        Some("k1"),
        &claims_with(json!({"iss": [ISS]})),
        &rsa(),
    );
    refused(verify(&v, &t).await, TokenFault::Malformed);
}

#[tokio::test]
async fn two_entries_for_one_issuer_are_chosen_by_algorithm() {
    let ec = issuer(
        "idp-ec",
        &[Algorithm::ES256],
        file_keys(&jwks(&[jwk(&ec256(), Algorithm::ES256, Some("e1"))])),
    );
    let v = verifier(vec![ec, rsa_issuer()]);
    let rs = mint(Algorithm::RS256, Some("k1"), &claims(), &rsa());
    let es = mint(Algorithm::ES256, Some("e1"), &claims(), &ec256());
    assert_eq!(
        v.verify_uncached(&rs, &[0, 1], NOW).await.unwrap().issuer,
        1
    );
    assert_eq!(
        v.verify_uncached(&es, &[0, 1], NOW).await.unwrap().issuer,
        0
    );
    refused(
        v.verify_uncached(&rs, &[0], NOW).await,
        TokenFault::AlgorithmNotAllowed,
    );
    let ps = mint(Algorithm::PS256, Some("k1"), &claims(), &rsa());
    refused(
        v.verify_uncached(&ps, &[0, 1], NOW).await,
        TokenFault::AlgorithmNotAllowed,
    );
}

// === shape ===

#[tokio::test]
async fn malformed_shapes() {
    let v = verifier(vec![rsa_issuer()]);
    let good = mint(Algorithm::RS256, Some("k1"), &claims(), &rsa());
    let (h, rest) = good.split_once('.').unwrap();
    let (c, s) = rest.split_once('.').unwrap();
    let bad_json = b64("{\"alg\":\"RS256\",");
    let array = b64("[\"RS256\"]");
    let long = format!("{h}.{}.{s}", "A".repeat(16 * 1024));
    let cases = [
        String::new(),
        ".".to_owned(),
        "..".to_owned(),
        format!("{h}.{c}"),
        format!("{h}.{c}.{s}.{s}"),
        format!(".{c}.{s}"),
        format!("{h}..{s}"),
        format!("{h}=.{c}.{s}"),
        format!("{h}.{c}=.{s}"),
        format!("{h}.{c}.{s}="),
        format!("{h}.{c}.{s}+"),
        format!("{h}.{c}.{s}/"),
        format!("{h}.{c}.A"),
        format!("{h}+.{c}.{s}"),
        format!("{h}.{c} .{s}"),
        format!("A{h}.{c}.{s}"),
        format!("{bad_json}.{c}.{s}"),
        format!("{array}.{c}.{s}"),
        format!("{h}.{array}.{s}"),
        format!("{h}.{}.{s}", b64("not json")),
        long,
    ];
    for t in cases {
        refused(verify(&v, &t).await, TokenFault::Malformed);
    }
    assert!(verify(&v, &good).await.is_ok());
}

#[tokio::test]
async fn unloaded_keys_answer_keys_unavailable() {
    // A jwks_url issuer whose refresher never ran, and a broken JWKS file.
    let url = issuer(
        "url",
        &[Algorithm::RS256],
        KeySource::JwksUrl("http://127.0.0.1:9/jwks".into()),
    );
    let mut broken = issuer(
        "file",
        &[Algorithm::RS256],
        KeySource::JwksFile {
            path: "x".into(),
            document: "{\"keys\": 1}".into(),
        },
    );
    broken.issuer = "https://broken.example.test".into();
    let v = verifier(vec![url, broken]);
    assert!(!v.all_ready());
    assert_eq!(v.issuer_keys(0).unwrap().refresh_counts(), (0, 0));
    assert_eq!(v.issuer_keys(1).unwrap().refresh_counts(), (0, 1));
    assert!(v.issuer_keys(2).is_none());
    let t = mint(Algorithm::RS256, Some("k1"), &claims(), &rsa());
    assert_eq!(
        v.verify_uncached(&t, &[0], NOW).await,
        Err(GatewayError::KeysUnavailable)
    );
    let t = mint(
        Algorithm::RS256,
        Some("k1"),
        &claims_with(json!({"iss": "https://broken.example.test"})),
        &rsa(),
    );
    assert_eq!(
        v.verify_uncached(&t, &[1], NOW).await,
        Err(GatewayError::KeysUnavailable)
    );
}

#[tokio::test]
async fn errors_never_contain_the_token() {
    let v = verifier(vec![rsa_issuer()]);
    let t = mint(
        Algorithm::RS256,
        Some("k1"),
        &claims_with(json!({"exp": 1})),
        &rsa(),
    );
    let err = verify(&v, &t).await.unwrap_err();
    let text = format!("{err} {err:?}");
    for part in t.split('.') {
        assert!(!text.contains(part));
    }
}

// === key sets ===

#[test]
fn jwks_parsing_skips_unusable_keys() {
    let rsa_jwk = jwk(&rsa(), Algorithm::RS256, Some("ok"));
    let with = |changes: Value| {
        let mut k = rsa_jwk.clone();
        for (name, v) in changes.as_object().unwrap() {
            if v.is_null() {
                k.as_object_mut().unwrap().remove(name);
            } else {
                k[name] = v.clone();
            }
        }
        k
    };
    let weak_n = b64([0xC5u8; 128]); // a 1024-bit modulus
    let doc = jwks(&[
        rsa_jwk.clone(),
        jwk(&ec256(), Algorithm::ES256, Some("ec")),
        ed_jwk(Some("ed")),
        with(json!({"use": "enc", "kid": "enc"})),
        with(json!({"key_ops": ["encrypt"], "kid": "ops"})),
        with(json!({"alg": "RSA-OAEP", "kid": "oaep"})),
        with(json!({"alg": "ES256", "kid": "mismatch"})),
        with(json!({"n": weak_n, "kid": "weak"})),
        with(json!({"n": "***", "kid": "bad-b64"})),
        with(json!({"kid": 5})),
        with(json!({"kty": "RSA-X"})),
        with(json!({"e": null})),
        json!({"kty": "EC", "crv": "P-521", "x": b64([1u8; 66]), "y": b64([1u8; 66])}),
        json!({"kty": "EC", "crv": "P-256", "x": b64([1u8; 31]), "y": b64([1u8; 32])}),
        json!({"kty": "OKP", "crv": "X25519", "x": b64([1u8; 32])}),
        jwk(&hmac(), Algorithm::HS256, Some("oct")),
        json!("not an object"),
        with(json!({"key_ops": ["verify"], "use": "sig", "kid": "fine"})),
    ]);
    let set = KeySet::from_jwks_json(doc.to_string().as_bytes()).unwrap();
    assert_eq!(set.len(), 4);
    assert_eq!(set.skipped(), 14);
    let kids: Vec<_> = set.key_ids().collect();
    assert_eq!(kids, [Some("ok"), Some("ec"), Some("ed"), Some("fine")]);
    assert!(set.select(Some("ok"), Algorithm::RS256).is_some());
    assert!(
        set.select(Some("ok"), Algorithm::PS256).is_none(),
        "the JWK says RS256"
    );
    assert!(set.select(Some("ec"), Algorithm::ES256).is_some());
    assert!(set.select(Some("ec"), Algorithm::ES384).is_none());
    assert!(set.select(Some("ed"), Algorithm::EdDSA).is_some());
    assert!(set.select(Some("ed"), Algorithm::RS256).is_none());
    assert!(set.select(None, Algorithm::RS256).is_none());
    assert!(set.select(Some("enc"), Algorithm::RS256).is_none());

    // Not a JWKS at all.
    for bad in [
        "",
        "[]",
        "{}",
        "{\"keys\": {}}",
        "{\"keys\": [], \"keys\": []}",
    ] {
        assert!(KeySet::from_jwks_json(bad.as_bytes()).is_err(), "{bad}");
    }
    let empty = KeySet::from_jwks_json(b"{\"keys\": []}").unwrap();
    assert!(empty.is_empty());
}

#[test]
fn fingerprints_track_key_changes() {
    let a = jwks(&[jwk(&rsa(), Algorithm::RS256, Some("k1"))]).to_string();
    let b = jwks(&[jwk(&rsa_b(), Algorithm::RS256, Some("k1"))]).to_string();
    let c = jwks(&[jwk(&rsa(), Algorithm::RS256, Some("k2"))]).to_string();
    let fp = |doc: &str| {
        KeySet::from_jwks_json(doc.as_bytes())
            .unwrap()
            .fingerprint()
    };
    assert_eq!(fp(&a), fp(&a));
    assert_ne!(fp(&a), fp(&b));
    assert_ne!(fp(&a), fp(&c));
    let h = KeySet::from_hmac_secret(HMAC_SECRET);
    assert_eq!(h.len(), 1);
    assert!(h.select(None, Algorithm::HS384).is_some());
    assert!(h.select(Some("x"), Algorithm::HS256).is_some());
    assert!(h.select(None, Algorithm::RS256).is_none());
    assert_ne!(
        h.fingerprint(),
        KeySet::from_hmac_secret(b"other").fingerprint()
    );
    // Debug output names kids and kinds, never material.
    let debug = format!("{:?}", KeySet::from_jwks_json(a.as_bytes()).unwrap());
    assert!(debug.contains("k1") && !debug.contains("AQAB"));
}

// === JWKS over HTTP: refresh, refetch, throttle, single flight ===

mod http {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::time::{sleep, timeout, Instant};

    use super::*;
    use crate::auth::jwks::RefetchOutcome;

    /// What the mock JWKS endpoint answers.
    struct Answer {
        status: u16,
        body: String,
        delay: Duration,
        extra_headers: String,
    }

    /// A loopback HTTP server that answers every request with the current
    /// [`Answer`] and counts requests. Stops when dropped.
    struct JwksServer {
        url: String,
        hits: Arc<AtomicUsize>,
        answer: Arc<Mutex<Answer>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for JwksServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl JwksServer {
        async fn start(body: &Value) -> JwksServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
            let hits = Arc::new(AtomicUsize::new(0));
            let answer = Arc::new(Mutex::new(Answer {
                status: 200,
                body: body.to_string(),
                delay: Duration::ZERO,
                extra_headers: String::new(),
            }));
            let (h, a) = (Arc::clone(&hits), Arc::clone(&answer));
            let task = tokio::spawn(async move {
                loop {
                    let Ok((mut socket, _)) = listener.accept().await else {
                        return;
                    };
                    let (hits, answer) = (Arc::clone(&h), Arc::clone(&a));
                    tokio::spawn(async move {
                        let mut request = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16384
                        {
                            match timeout(Duration::from_secs(5), socket.read(&mut buf)).await {
                                Ok(Ok(n)) if n > 0 => request.extend_from_slice(&buf[..n]),
                                _ => return,
                            }
                        }
                        hits.fetch_add(1, Ordering::SeqCst);
                        let (status, body, delay, extra) = {
                            let a = answer.lock().unwrap();
                            (a.status, a.body.clone(), a.delay, a.extra_headers.clone())
                        };
                        sleep(delay).await;
                        let response = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{extra}\r\n{body}",
                            body.len()
                        );
                        let _ = socket.write_all(response.as_bytes()).await;
                        let _ = socket.shutdown().await;
                    });
                }
            });
            JwksServer {
                url,
                hits,
                answer,
                task,
            }
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }

        fn serve(&self, status: u16, body: impl Into<String>) {
            let mut a = self.answer.lock().unwrap();
            a.status = status;
            a.body = body.into();
        }

        fn set_delay(&self, delay: Duration) {
            self.answer.lock().unwrap().delay = delay;
        }
    }

    fn url_issuer(url: &str, min_refetch: Duration) -> IssuerConfig {
        let mut config = issuer(
            "remote",
            &[Algorithm::RS256],
            KeySource::JwksUrl(url.to_owned()),
        );
        config.jwks_min_refetch = min_refetch;
        config
    }

    fn one_key() -> Value {
        jwks(&[jwk(&rsa(), Algorithm::RS256, Some("k1"))])
    }

    fn two_keys() -> Value {
        jwks(&[
            jwk(&rsa(), Algorithm::RS256, Some("k1")),
            jwk(&rsa_b(), Algorithm::RS256, Some("k2")),
        ])
    }

    /// Polls `cond` every 10 ms for at most 5 s.
    async fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            sleep(Duration::from_millis(10)).await;
        }
    }

    /// A verifier for one `jwks_url` issuer, its refresher running.
    async fn running(server: &JwksServer, min_refetch: Duration) -> (Arc<Verifier>, AbortOnDrop) {
        let v = Arc::new(verifier(vec![url_issuer(&server.url, min_refetch)]));
        let mut refreshers = v.refreshers();
        assert_eq!(refreshers.len(), 1);
        let task = AbortOnDrop(tokio::spawn(refreshers.remove(0).run()));
        let keys = Arc::clone(v.issuer_keys(0).unwrap());
        eventually("first fetch", move || {
            let (ok, failed) = keys.refresh_counts();
            ok + failed > 0
        })
        .await;
        (v, task)
    }

    struct AbortOnDrop(tokio::task::JoinHandle<()>);

    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }

    async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
        timeout(Duration::from_secs(10), f)
            .await
            .expect("test step timed out")
    }

    #[tokio::test]
    async fn rotation_new_kid_is_fetched_on_demand() {
        let server = JwksServer::start(&one_key()).await;
        let (v, _task) = running(&server, Duration::from_secs(30)).await;
        assert!(v.all_ready());
        assert_eq!(server.hits(), 1);
        let t1 = mint(Algorithm::RS256, Some("k1"), &claims(), &rsa());
        assert!(bounded(verify(&v, &t1)).await.is_ok());
        assert_eq!(server.hits(), 1, "a known kid needs no fetch");

        server.serve(200, two_keys().to_string());
        let t2 = mint(Algorithm::RS256, Some("k2"), &claims(), &rsa_b());
        assert_eq!(
            bounded(verify(&v, &t2)).await.unwrap().subject.as_deref(),
            Some("alice")
        );
        assert_eq!(server.hits(), 2);
        assert!(bounded(verify(&v, &t1)).await.is_ok());
        assert_eq!(v.issuer_keys(0).unwrap().refresh_counts(), (2, 0));
    }

    #[tokio::test]
    async fn unknown_kids_are_throttled() {
        let server = JwksServer::start(&one_key()).await;
        let (v, _task) = running(&server, Duration::from_secs(30)).await;
        let started = Instant::now();
        let t = mint(Algorithm::RS256, Some("nope-1"), &claims(), &rsa());
        refused(bounded(verify(&v, &t)).await, TokenFault::UnknownKey);
        assert_eq!(server.hits(), 2, "the first unknown kid refetches");
        let t = mint(Algorithm::RS256, Some("nope-2"), &claims(), &rsa());
        refused(bounded(verify(&v, &t)).await, TokenFault::UnknownKey);
        // Even a real new key waits for the throttle period.
        server.serve(200, two_keys().to_string());
        let t = mint(Algorithm::RS256, Some("k2"), &claims(), &rsa_b());
        refused(bounded(verify(&v, &t)).await, TokenFault::UnknownKey);
        sleep(Duration::from_millis(100)).await;
        assert_eq!(server.hits(), 2, "within jwks_min_refetch: no second fetch");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "throttled requests do not wait"
        );
    }

    #[tokio::test]
    async fn concurrent_unknown_kids_make_one_fetch() {
        // With and without a throttle: the concurrent requests join one fetch.
        for min_refetch in [Duration::from_secs(30), Duration::ZERO] {
            let server = JwksServer::start(&one_key()).await;
            let (v, _task) = running(&server, min_refetch).await;
            server.serve(200, two_keys().to_string());
            server.set_delay(Duration::from_millis(300));
            let t = mint(Algorithm::RS256, Some("k2"), &claims(), &rsa_b());
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..10 {
                let (v, t) = (Arc::clone(&v), t.clone());
                set.spawn(async move { verify(&v, &t).await });
            }
            let results = bounded(set.join_all()).await;
            assert_eq!(results.len(), 10);
            for r in results {
                assert!(r.is_ok(), "{r:?}");
            }
            assert_eq!(server.hits(), 2, "initial fetch + one refetch");
        }
    }

    #[tokio::test]
    async fn failing_or_empty_refreshes_keep_the_last_good_set() {
        let server = JwksServer::start(&one_key()).await;
        let v = verifier(vec![url_issuer(&server.url, Duration::from_secs(30))]);
        let refresher = v.refreshers().remove(0);
        assert_eq!(bounded(refresher.refresh_once()).await, Ok(1));
        let keys = Arc::clone(v.issuer_keys(0).unwrap());
        let good = keys.current().unwrap().fingerprint();
        let t = mint(Algorithm::RS256, Some("k1"), &claims(), &rsa());

        let enc_only = {
            let mut k = jwk(&rsa(), Algorithm::RS256, Some("k1"));
            k["use"] = json!("enc");
            jwks(&[k]).to_string()
        };
        let failures = [
            (500, "{}".to_owned(), "HTTP 500"),
            (404, one_key().to_string(), "HTTP 404"),
            (200, "not json".to_owned(), "not a JSON object"),
            (200, "{\"keys\": []}".to_owned(), "no usable key"),
            (200, enc_only, "no usable key"),
            (
                200,
                format!("{{\"keys\": [], \"pad\": \"{}\"}}", "x".repeat(1024 * 1024)),
                "larger than",
            ),
        ];
        for (i, (status, body, reason)) in failures.into_iter().enumerate() {
            server.serve(status, body);
            let err = bounded(refresher.refresh_once()).await.unwrap_err();
            assert!(err.contains(reason), "{err}");
            assert_eq!(keys.current().unwrap().fingerprint(), good);
            assert_eq!(keys.refresh_counts(), (1, i as u64 + 1));
            assert!(bounded(verify(&v, &t)).await.is_ok());
        }
        assert!(keys.last_attempt() >= keys.last_success());

        // Redirects are not followed.
        server.serve(302, "");
        server.answer.lock().unwrap().extra_headers = "location: /elsewhere\r\n".into();
        assert!(bounded(refresher.refresh_once())
            .await
            .unwrap_err()
            .contains("HTTP 302"));

        // The endpoint goes away entirely.
        let url = server.url.clone();
        drop(server);
        sleep(Duration::from_millis(50)).await;
        let v2 = verifier(vec![url_issuer(&url, Duration::from_secs(30))]);
        v2.inherit_keys(&v);
        let err = bounded(v2.refreshers().remove(0).refresh_once())
            .await
            .unwrap_err();
        assert!(err.contains("connection failed"), "{err}");
        assert!(!err.contains(&url), "no URL in the reason: {err}");
        assert!(
            bounded(verify(&v2, &t)).await.is_ok(),
            "inherited keys survive"
        );
    }

    #[tokio::test]
    async fn never_loaded_issuer_fails_closed_then_recovers() {
        let server = JwksServer::start(&one_key()).await;
        server.serve(503, "{}");
        let (v, _task) = running(&server, Duration::from_secs(30)).await;
        assert!(!v.all_ready());
        assert_eq!(v.issuer_keys(0).unwrap().last_success(), None);
        let t = mint(Algorithm::RS256, Some("k1"), &claims(), &rsa());
        assert_eq!(
            bounded(verify(&v, &t)).await,
            Err(GatewayError::KeysUnavailable)
        );
        // The refresher retries with a short backoff.
        server.serve(200, one_key().to_string());
        let v2 = Arc::clone(&v);
        eventually("recovery", move || v2.all_ready()).await;
        assert!(bounded(verify(&v, &t)).await.is_ok());
        assert!(v.issuer_keys(0).unwrap().last_success().is_some());
    }

    #[tokio::test]
    async fn refetch_wait_is_bounded_without_a_refresher() {
        let mut v = verifier(vec![url_issuer("http://127.0.0.1:9/jwks", Duration::ZERO)]);
        v.set_refetch_wait(Duration::from_millis(100));
        let keys = v.issuer_keys(0).unwrap();
        keys.install(KeySet::from_jwks_json(one_key().to_string().as_bytes()).unwrap());
        let started = Instant::now();
        let t = mint(Algorithm::RS256, Some("k2"), &claims(), &rsa_b());
        refused(bounded(verify(&v, &t)).await, TokenFault::UnknownKey);
        assert!(started.elapsed() < Duration::from_secs(1));
        let outcome = keys
            .refetch
            .request(Duration::from_secs(60), Duration::from_millis(10))
            .await;
        assert_eq!(
            outcome,
            RefetchOutcome::TimedOut,
            "joins the pending request"
        );
    }

    #[tokio::test]
    async fn token_jku_is_never_fetched() {
        let server =
            JwksServer::start(&jwks(&[jwk(&rsa_b(), Algorithm::RS256, Some("evil"))])).await;
        let v = verifier(vec![rsa_issuer()]);
        let mut h = header(Algorithm::RS256, Some("evil"));
        h["jku"] = json!(server.url);
        h["x5u"] = json!(server.url);
        let t = sign_raw(
            &h.to_string(),
            &claims().to_string(),
            &rsa_b(),
            Algorithm::RS256,
        );
        refused(bounded(verify(&v, &t)).await, TokenFault::UnknownKey);
        sleep(Duration::from_millis(50)).await;
        assert_eq!(server.hits(), 0);
    }

    #[tokio::test]
    async fn run_refreshers_stops_on_shutdown() {
        let server = JwksServer::start(&one_key()).await;
        let v = Arc::new(verifier(vec![url_issuer(
            &server.url,
            Duration::from_secs(30),
        )]));
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let v2 = Arc::clone(&v);
        let task = tokio::spawn(async move { v2.run_refreshers(shutdown).await });
        let v3 = Arc::clone(&v);
        eventually("ready", move || v3.all_ready()).await;
        stop.send(true).unwrap();
        bounded(task).await.unwrap();
    }
}

// === the verified-token cache ===

fn cached(issuers: Vec<IssuerConfig>) -> Verifier {
    let issuers: Vec<_> = issuers.into_iter().map(Arc::new).collect();
    Verifier::with_cache(&issuers, crate::auth::TokenCacheSettings::default())
}

#[tokio::test]
async fn a_cached_token_skips_the_signature_but_not_the_rules() {
    let v = cached(vec![rsa_issuer()]);
    let t = mint(Algorithm::RS256, Some("k1"), &claims(), &rsa());
    let first = v.verify(&t, &[0], NOW).await.unwrap();
    let second = v.verify(&t, &[0], NOW + 1).await.unwrap();
    assert!(
        Arc::ptr_eq(&first, &second),
        "second answer came from the cache"
    );
    assert_eq!(v.signature_checks(), 1);
    assert_eq!(v.cached_tokens_blocking(), 1);

    // The route's accepted issuers still apply to a cached token.
    match v.verify(&t, &[1], NOW).await {
        Err(GatewayError::InvalidToken(TokenFault::IssuerNotAccepted)) => {}
        other => panic!("expected IssuerNotAccepted, got {other:?}"),
    }
    // A tampered copy is a different digest: verified, and refused.
    let mut tampered = t.clone();
    tampered.pop();
    tampered.push(if t.ends_with('A') { 'B' } else { 'A' });
    assert!(v.verify(&tampered, &[0], NOW).await.is_err());
}

#[tokio::test]
async fn a_cached_token_expires_with_its_exp() {
    let v = cached(vec![rsa_issuer()]);
    let t = mint(
        Algorithm::RS256,
        Some("k1"),
        &claims_with(json!({"exp": NOW + 100})),
        &rsa(),
    );
    v.verify(&t, &[0], NOW).await.unwrap();
    // Within exp + leeway (30 s) it is still good, past it refused.
    v.verify(&t, &[0], NOW + 125).await.unwrap();
    match v.verify(&t, &[0], NOW + 131).await {
        Err(GatewayError::InvalidToken(TokenFault::Expired)) => {}
        other => panic!("expected Expired, got {other:?}"),
    }
}

#[tokio::test]
async fn a_key_rotated_out_stops_cached_tokens_at_the_refresh() {
    let v = cached(vec![rsa_issuer()]);
    let t = mint(Algorithm::RS256, Some("k1"), &claims(), &rsa());
    v.verify(&t, &[0], NOW).await.unwrap();
    // The issuer's key set now only holds another key.
    let rotated = jwks(&[jwk(&rsa_b(), Algorithm::RS256, Some("k2"))]).to_string();
    let set = KeySet::from_jwks_json(rotated.as_bytes()).unwrap();
    assert!(v.issuer_keys(0).unwrap().install(set));
    match v.verify(&t, &[0], NOW).await {
        Err(GatewayError::InvalidToken(TokenFault::UnknownKey)) => {}
        other => panic!("expected UnknownKey, got {other:?}"),
    }
}

#[tokio::test]
async fn with_the_cache_off_every_request_checks_the_signature() {
    let issuers = vec![Arc::new(rsa_issuer())];
    let v = Verifier::with_cache(
        &issuers,
        crate::auth::TokenCacheSettings {
            max_entries: 0,
            max_ttl: Duration::from_secs(300),
        },
    );
    let t = mint(Algorithm::RS256, Some("k1"), &claims(), &rsa());
    for _ in 0..3 {
        v.verify(&t, &[0], NOW).await.unwrap();
    }
    assert_eq!(v.signature_checks(), 3);
}

/// A key-set refresh that lands between a token's verification and its
/// caching must not make the cache vouch for the token under the new set:
/// the entry records the set that verified it. Races a thread that keeps
/// swapping the issuer's keys (set A holds the token's key, set B does not)
/// against verifications of fresh tokens; afterwards, with B installed for
/// good, every token accepted during the race must be refused.
#[test]
fn the_cache_records_the_key_set_that_verified_the_token() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let v = Arc::new(cached(vec![rsa_issuer()]));
    let set_a = jwks(&[jwk(&rsa(), Algorithm::RS256, Some("k1"))]).to_string();
    let set_b = jwks(&[jwk(&rsa_b(), Algorithm::RS256, Some("k2"))]).to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (v, stop) = (Arc::clone(&v), Arc::clone(&stop));
        let (a, b) = (set_a.clone(), set_b.clone());
        std::thread::spawn(move || {
            let keys = v.issuer_keys(0).unwrap();
            while !stop.load(Ordering::Relaxed) {
                for set in [&a, &b] {
                    keys.install(KeySet::from_jwks_json(set.as_bytes()).unwrap());
                }
            }
        })
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut accepted = Vec::new();
    for i in 0..400 {
        let t = mint(
            Algorithm::RS256,
            Some("k1"),
            &claims_with(json!({ "jti": format!("race-{i}") })),
            &rsa(),
        );
        if rt.block_on(v.verify(&t, &[0], NOW)).is_ok() {
            accepted.push(t);
        }
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    assert!(
        !accepted.is_empty(),
        "no token was verified during the race"
    );
    let keys = v.issuer_keys(0).unwrap();
    keys.install(KeySet::from_jwks_json(set_b.as_bytes()).unwrap());
    for t in &accepted {
        match rt.block_on(v.verify(t, &[0], NOW)) {
            Err(GatewayError::InvalidToken(TokenFault::UnknownKey)) => {}
            other => panic!("a token whose key is gone was accepted: {other:?}"),
        }
    }
}
