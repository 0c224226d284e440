//! `portcullis keygen` / `portcullis token` and `portcullis::mint`: keys
//! generated for every algorithm mint tokens that a real gateway verifies
//! (through a `jwks_file` issuer), tokens from other keys are refused, and
//! the CLI exits 64 on bad arguments and key files without printing key
//! material.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use common::*;
use portcullis::mint::{self, SigningKey, TokenClaims};
use serde_json::{json, Value};

const ISSUER: &str = "https://minted.test";
const ALGS: [&str; 5] = ["ES256", "ES384", "RS256", "PS256", "EdDSA"];
const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "portcullis-mint-test-{label}-{}-{}",
            std::process::id(),
            now_nanos()
        ));
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }

    fn join(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A gateway whose one issuer reads `jwks` (a file), with `GET /x` needing `read`.
fn gateway_for(jwks: &Path, upstream: &MockUpstream) -> TestGateway {
    let config = ConfigBuilder::new()
        .raw(&format!(
            "[[issuers]]\nname = \"minted\"\nissuer = {}\naudiences = [{}]\nalgorithms = {STANDARD_ALGORITHMS}\njwks_file = {}\n",
            toml_str(ISSUER),
            toml_str(DEFAULT_AUDIENCE),
            toml_str(&jwks.to_string_lossy()),
        ))
        .upstream("app", &upstream.url(), "")
        .raw(
            "[[routes]]\nname = \"x\"\nmethods = [\"GET\"]\npath = \"/x\"\nupstream = \"app\"\nrequire_all = [\"read\"]\n",
        )
        .build();
    TestGateway::start(&config)
}

fn claims(entitlements: &[&str]) -> Value {
    TokenClaims {
        iss: ISSUER.into(),
        sub: "someone".into(),
        client_id: Some("client-1".into()),
        entitlements: Some(entitlements.iter().map(|e| e.to_string()).collect()),
        audiences: vec![DEFAULT_AUDIENCE.into()],
        ttl_seconds: 300,
        extra: Vec::new(),
    }
    .to_json(now() as u64)
    .expect("claims")
}

fn decode_json(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

#[test]
fn generated_keys_mint_tokens_a_gateway_verifies_and_others_are_refused() {
    let mut cases = Cases::new();
    for name in ALGS {
        let dir = TempDir::new(name);
        let (generated, files) =
            mint::keygen(name, &dir.join("key"), None).unwrap_or_else(|e| panic!("{name}: {e}"));

        // The files.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&files.private_pem)
                .expect("private.pem")
                .permissions()
                .mode();
            if mode & 0o777 != 0o600 {
                cases.fail(name, format!("private.pem mode {:o}", mode & 0o777));
            }
        }
        let private_pem = std::fs::read_to_string(&files.private_pem).expect("read");
        assert!(
            private_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"),
            "{name}"
        );
        let public_pem = std::fs::read_to_string(&files.public_pem).expect("read");
        assert!(
            public_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"),
            "{name}"
        );
        let jwks: Value =
            serde_json::from_str(&std::fs::read_to_string(&files.jwks).expect("read"))
                .expect("JSON");
        let keys = jwks["keys"].as_array().cloned().unwrap_or_default();
        assert_eq!(keys.len(), 1, "{name}: {jwks}");
        assert_eq!(keys[0]["kid"], generated.kid(), "{name}");
        assert_eq!(keys[0]["alg"], name);
        assert_eq!(keys[0]["use"], "sig");
        assert!(keys[0].get("d").is_none(), "{name}: the JWKS is public");

        let upstream = MockUpstream::start();
        let gw = gateway_for(&files.jwks, &upstream);

        // The key read back from private.pem (kid from jwks.json beside it).
        let key = SigningKey::from_file(&files.private_pem).expect("from_file");
        assert_eq!(key.kid(), generated.kid(), "{name}");
        assert_eq!(mint::alg_name(key.alg()), name);
        let token = key.sign(&claims(&["read"])).expect("sign");
        let r = gw.request_with_token("GET", "/x", &token, &[], None);
        cases.check(
            &format!("{name}: minted token"),
            if r.status == 200 && upstream.count() == 1 {
                Vec::new()
            } else {
                vec![format!(
                    "status {}, upstream saw {}",
                    r.status,
                    upstream.count()
                )]
            },
            Some(&r),
        );
        upstream.clear();

        let token = key.sign(&claims(&["write"])).expect("sign");
        let r = gw.request_with_token("GET", "/x", &token, &[], None);
        cases.refused(
            &format!("{name}: entitlements claim"),
            &r,
            403,
            "insufficient_entitlements",
            &upstream,
        );

        // Another key of the same algorithm: its own kid is unknown ...
        let other = SigningKey::generate(key.alg()).expect("generate");
        let r = gw.request_with_token(
            "GET",
            "/x",
            &other.sign(&claims(&["read"])).expect("sign"),
            &[],
            None,
        );
        cases.refused(
            &format!("{name}: other key"),
            &r,
            401,
            "unknown_key",
            &upstream,
        );
        // ... and under the published kid its signature does not verify.
        let impostor = other.with_kid(key.kid()).expect("kid");
        let r = gw.request_with_token(
            "GET",
            "/x",
            &impostor.sign(&claims(&["read"])).expect("sign"),
            &[],
            None,
        );
        cases.refused(
            &format!("{name}: other key, same kid"),
            &r,
            401,
            "bad_signature",
            &upstream,
        );
    }
    cases.finish();
}

// === private JWK input ===

/// One DER TLV at `pos`: (tag, content range, next position).
fn tlv(der: &[u8], pos: usize) -> (u8, std::ops::Range<usize>, usize) {
    let tag = der[pos];
    let first = der[pos + 1] as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        let len = der[pos + 2..pos + 2 + n]
            .iter()
            .fold(0usize, |acc, b| acc << 8 | *b as usize);
        (len, 2 + n)
    };
    let start = pos + header;
    (tag, start..start + len, start + len)
}

/// The children of the constructed value whose content is `range`.
fn children(der: &[u8], range: std::ops::Range<usize>) -> Vec<(u8, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    let mut pos = range.start;
    while pos < range.end {
        let (tag, content, next) = tlv(der, pos);
        out.push((tag, content));
        pos = next;
    }
    out
}

fn b64u_unsigned(bytes: &[u8]) -> String {
    let first = bytes
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(bytes.len() - 1);
    URL_SAFE_NO_PAD.encode(&bytes[first..])
}

/// The private JWK of a PKCS#8 PEM key whose public JWK is `public`
/// (a test-only DER walk: aws-lc-rs does not export private components).
fn private_jwk(private_pem: &str, public: &Value) -> Value {
    let b64: String = private_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = STANDARD.decode(b64).expect("PEM");
    let (_, info, _) = tlv(&der, 0);
    let fields = children(&der, info);
    let (tag, private_key) = fields[2].clone();
    assert_eq!(tag, 0x04, "PrivateKeyInfo.privateKey is an OCTET STRING");
    let (_, inner, _) = tlv(&der, private_key.start);
    let mut jwk = public.clone();
    match public["kty"].as_str() {
        Some("EC") => {
            // ECPrivateKey ::= SEQUENCE { version, privateKey OCTET STRING, ... }
            let (_, d) = children(&der, inner)[1].clone();
            jwk["d"] = json!(URL_SAFE_NO_PAD.encode(&der[d]));
        }
        Some("OKP") => {
            // CurvePrivateKey ::= OCTET STRING (the seed)
            jwk["d"] = json!(URL_SAFE_NO_PAD.encode(&der[inner]));
        }
        Some("RSA") => {
            // RSAPrivateKey ::= SEQUENCE { version, n, e, d, p, q, dp, dq, qi }
            let ints = children(&der, inner);
            for (i, name) in ["d", "p", "q", "dp", "dq", "qi"].iter().enumerate() {
                jwk[*name] = json!(b64u_unsigned(&der[ints[3 + i].1.clone()]));
            }
        }
        other => panic!("unexpected kty {other:?}"),
    }
    jwk
}

#[test]
fn private_jwks_sign_like_their_pem() {
    let mut cases = Cases::new();
    for name in ALGS {
        let dir = TempDir::new(&format!("jwk-{name}"));
        let (key, files) = mint::keygen(name, &dir.join("key"), Some("jwk-key")).expect("keygen");
        let pem = std::fs::read_to_string(&files.private_pem).expect("read");
        let jwk = private_jwk(&pem, &key.public_jwk());

        let upstream = MockUpstream::start();
        let gw = gateway_for(&files.jwks, &upstream);
        for (label, text) in [
            ("JWK", jwk.to_string()),
            ("JWKS", json!({"keys": [jwk.clone()]}).to_string()),
        ] {
            let path = dir.join(&format!("private.{label}.json"));
            std::fs::write(&path, &text).expect("write");
            let from_jwk = match SigningKey::from_file(&path) {
                Ok(k) => k,
                Err(e) => {
                    cases.fail(&format!("{name} {label}"), e.to_string());
                    continue;
                }
            };
            assert_eq!(from_jwk.kid(), "jwk-key", "{name}: the JWK's kid");
            assert_eq!(from_jwk.thumbprint(), key.thumbprint(), "{name}: same key");
            assert_eq!(from_jwk.alg(), key.alg(), "{name}: the JWK's alg");
            let token = from_jwk.sign(&claims(&["read"])).expect("sign");
            let r = gw.request_with_token("GET", "/x", &token, &[], None);
            if r.status != 200 {
                cases.fail(&format!("{name} {label}"), r.describe());
            }
        }

        // A public JWK, or a JWK whose d belongs to another key, is refused
        // without echoing it.
        let public_path = dir.join("public.jwk.json");
        std::fs::write(&public_path, key.public_jwk().to_string()).expect("write");
        let err = SigningKey::from_file(&public_path).expect_err("public JWK");
        assert!(err.to_string().contains("public JWK"), "{err}");
        let mut wrong = jwk.clone();
        let other = SigningKey::generate(key.alg()).expect("generate");
        let other_pem = other.private_pem();
        wrong["d"] = private_jwk(&other_pem, &other.public_jwk())["d"].clone();
        let wrong_path = dir.join("wrong.jwk.json");
        std::fs::write(&wrong_path, wrong.to_string()).expect("write");
        match SigningKey::from_file(&wrong_path) {
            Ok(_) => cases.fail(name, "a JWK with another key's d was accepted".into()),
            Err(e) => {
                let shown = e.to_string();
                let d = wrong["d"].as_str().unwrap_or("-");
                if shown.contains(d) || e.exit_code() != 64 {
                    cases.fail(name, format!("bad error for a mismatched d: {shown}"));
                }
            }
        }
    }
    cases.finish();
}

#[test]
fn fixture_keys_in_other_pem_forms_load() {
    // PKCS#8 (openssl genpkey) fixtures from the harness.
    for (file, alg) in [
        ("rsa2048.pem", "RS256"),
        ("ec256.pem", "ES256"),
        ("ec384.pem", "ES384"),
        ("ed25519.pem", "EdDSA"),
    ] {
        let key =
            SigningKey::from_file(&keys_dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(mint::alg_name(key.alg()), alg, "{file}");
    }
    // The fixture's public key is not a signing key.
    let err = SigningKey::from_file(&keys_dir().join("ec256.pub.pem")).expect_err("public");
    assert_eq!(err.exit_code(), 64);
}

// === the CLI ===

fn portcullis(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run portcullis")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn cli_keygen_then_token_verifies() {
    let dir = TempDir::new("cli");
    let mut cases = Cases::new();
    for name in ALGS {
        let out = dir.join(name);
        let keygen = portcullis(&[
            "keygen",
            "--alg",
            name,
            "--out",
            &out.to_string_lossy(),
            "--kid",
            &format!("cli-{name}"),
        ]);
        assert!(keygen.status.success(), "{name}: {}", text(&keygen.stderr));
        assert!(
            text(&keygen.stdout).contains(&format!("cli-{name}")),
            "{}",
            text(&keygen.stdout)
        );

        let token = portcullis(&[
            "token",
            "--key",
            &out.join("private.pem").to_string_lossy(),
            "--iss",
            ISSUER,
            "--sub",
            "cli-user",
            "--client-id",
            "cli-client",
            "--entitlements",
            "read,write",
            "--aud",
            DEFAULT_AUDIENCE,
            "--ttl",
            "120",
            "--claim",
            "oid=org-1",
            "--claim",
            "level:=3",
        ]);
        assert!(token.status.success(), "{name}: {}", text(&token.stderr));
        let token = text(&token.stdout).trim().to_string();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "{token}");
        let header = decode_json(parts[0]);
        assert_eq!(header["alg"], name);
        assert_eq!(
            header["kid"],
            format!("cli-{name}"),
            "the kid from jwks.json beside the key"
        );
        assert_eq!(header["typ"], "JWT");
        let claims = decode_json(parts[1]);
        assert_eq!(claims["iss"], ISSUER);
        assert_eq!(claims["sub"], "cli-user");
        assert_eq!(claims["client_id"], "cli-client");
        assert_eq!(claims["entitlements"], json!(["read", "write"]));
        assert_eq!(claims["aud"], DEFAULT_AUDIENCE);
        assert_eq!(claims["oid"], "org-1");
        assert_eq!(claims["level"], 3);
        assert_eq!(
            claims["exp"].as_i64().unwrap_or(0) - claims["iat"].as_i64().unwrap_or(0),
            120
        );

        let upstream = MockUpstream::start();
        let gw = gateway_for(&out.join("jwks.json"), &upstream);
        let r = gw.request_with_token("GET", "/x", &token, &[], None);
        if r.status != 200 {
            cases.fail(name, r.describe());
        }
    }
    cases.finish();
}

#[test]
fn cli_refuses_bad_arguments_and_key_files_with_64_and_no_key_material() {
    let dir = TempDir::new("cli-bad");
    let key_dir = dir.join("key");
    let keygen = portcullis(&[
        "keygen",
        "--alg",
        "ES256",
        "--out",
        &key_dir.to_string_lossy(),
    ]);
    assert!(keygen.status.success(), "{}", text(&keygen.stderr));
    let private = key_dir.join("private.pem");
    let private_text = std::fs::read_to_string(&private).expect("read");
    let secret_line = private_text.lines().nth(1).unwrap_or_default().to_string();

    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "SECRET-MATERIAL-XYZ not a key\n").expect("write");
    let bad_base64 = dir.join("bad.pem");
    std::fs::write(
        &bad_base64,
        "-----BEGIN PRIVATE KEY-----\nSECRET*MATERIAL\n-----END PRIVATE KEY-----\n",
    )
    .expect("write");
    let bad_json = dir.join("bad.json");
    std::fs::write(&bad_json, "{\"kty\": \"EC\", \"d\": \"SECRETMATERIAL\"").expect("write");

    let p = private.to_string_lossy().to_string();
    let base = |key: &str| -> Vec<String> {
        ["token", "--key", key, "--iss", ISSUER, "--sub", "s"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let with = |key: &str, extra: &[&str]| -> Vec<String> {
        let mut args = base(key);
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "missing key file",
            base(&dir.join("nope.pem").to_string_lossy()),
            "cannot read",
        ),
        (
            "public key",
            base(&key_dir.join("public.pem").to_string_lossy()),
            "public key",
        ),
        (
            "JWKS without d",
            base(&key_dir.join("jwks.json").to_string_lossy()),
            "private key",
        ),
        ("garbage", base(&garbage.to_string_lossy()), "PEM"),
        ("bad base64", base(&bad_base64.to_string_lossy()), "base64"),
        ("bad JSON", base(&bad_json.to_string_lossy()), "JSON"),
        ("alg mismatch", with(&p, &["--alg", "RS256"]), "EC P-256"),
        (
            "unknown alg",
            with(&p, &["--alg", "XS256"]),
            "not supported",
        ),
        ("HMAC alg", with(&p, &["--alg", "HS256"]), "shared secret"),
        (
            "bad claim",
            with(&p, &["--claim", "novalue"]),
            "NAME=string",
        ),
        (
            "bad JSON claim",
            with(&p, &["--claim", "x:=nojson"]),
            "not JSON",
        ),
        ("zero ttl", with(&p, &["--ttl", "0"]), "--ttl"),
        (
            "keygen: bad alg",
            vec![
                "keygen".into(),
                "--alg".into(),
                "none".into(),
                "--out".into(),
                dir.join("k2").to_string_lossy().into(),
            ],
            "not supported",
        ),
        (
            "keygen: existing key",
            vec![
                "keygen".into(),
                "--out".into(),
                key_dir.to_string_lossy().into(),
            ],
            "already exists",
        ),
    ];
    let mut failures = Vec::new();
    for (label, args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = portcullis(&args);
        let stderr = text(&out.stderr);
        let mut problems = Vec::new();
        if out.status.code() != Some(64) {
            problems.push(format!("exit {:?}", out.status.code()));
        }
        if !out.stdout.is_empty() {
            problems.push(format!("stdout {:?}", text(&out.stdout)));
        }
        if !stderr.contains(expected) {
            problems.push(format!("stderr lacks {expected:?}"));
        }
        for leak in ["SECRET", secret_line.as_str()] {
            if stderr.contains(leak) {
                problems.push(format!("stderr shows key material {leak:?}"));
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "  {label}: {} — stderr: {stderr}",
                problems.join("; ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The refused keygen left the existing key alone.
    assert_eq!(
        std::fs::read_to_string(&private).expect("read"),
        private_text
    );
}
