//! Property tests (proptest) for the invariants the gateway's safety rests on:
//!
//! * [`refused_paths_are_never_forwarded`] — through real sockets: generated
//!   request targets mixing the dangerous pieces (`%2e`, `%2f`, `..`, `//`,
//!   `;`, `\`, `%00`, `%25`, raw and encoded non-ASCII, overlong UTF-8) sent
//!   raw to a gateway with a catch-all route; each is either refused (4xx,
//!   a JSON `error`, the upstream saw nothing) or reaches the upstream with
//!   exactly the bytes that were sent;
//! * [`accepted_paths_are_already_normal`] — pure: a path the checks accept
//!   reads the same to a lenient server that decodes, resolves dot segments,
//!   merges `//` and treats `\` as `/` (tests/support/path_oracle.rs);
//! * [`explain_and_proxy_decide_alike`] — `portcullis explain` (the library
//!   entry point) and the running gateway give the same answer (allow, or
//!   the same status and error code) for generated requests: method, path,
//!   token (valid, expired, wrong audience, missing entitlement, unknown or
//!   disabled client, none, garbage) and body.
//!
//! Case counts are fixed (no `PROPTEST_CASES` needed) so the file runs in a
//! few seconds; a failure shrinks to a minimal request and prints it.

mod common;

#[path = "support/path_oracle.rs"]
mod path_oracle;

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use http::{HeaderMap, Method};
use portcullis::explain::{explain, ExplainArgs, TokenArg, EXIT_ALLOW, EXIT_REFUSE};
use portcullis::routing::{check_request, validate_path, RequestLimits};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};

// === generators ===

/// Pieces a request target is made of: ordinary segments and every spelling
/// of a separator, dot, escape or byte that a server might read differently.
const PIECES: &[&[u8]] = &[
    b"/",
    b"/",
    b"/",
    b"a",
    b"b1",
    b"v1.0",
    b"apiclients",
    b"..",
    b".",
    b"...",
    b"%2e",
    b"%2E",
    b".%2e",
    b"%2f",
    b"%2F",
    b"//",
    b";",
    b";x=1",
    b"\\",
    b"%5c",
    b"%5C",
    b"%00",
    b"%0a",
    b"%0D",
    b"%09",
    b"%7f",
    b"%25",
    b"%252e",
    b"%2541",
    b"%25%32%65",
    b"%32",
    b"%65",
    b"%46",
    b"%",
    b"%zz",
    b"%4",
    b"%20",
    b"%3b",
    b"%23",
    b"%3f",
    b"%7e",
    b"~",
    b"-",
    b"_",
    b"@",
    b":",
    b"!",
    b"$",
    b"&",
    b"'",
    b"(",
    b"*",
    b"+",
    b",",
    b"=",
    b"?",
    b"?q=1",
    b"?access_token=x",
    b"?_method=DELETE",
    b"&",
    b"#",
    b"#frag",
    "é".as_bytes(),
    b"%C3%A9",
    b"%c3%a9",
    b"%C0%AE",
    b"%C0%AF",
    b"%E0%80%AE",
    b"%ED%A0%80",
    b"%F0%9F%92%A9",
    b"%ff",
    b"%C3",
    b"\xc0\xae",
    b"\xe0\x80\xae",
    b"\xff",
    "💩".as_bytes(),
    "\u{ff0e}".as_bytes(),
];

/// A request target: usually starting with `/`, sometimes not.
fn target() -> impl Strategy<Value = Vec<u8>> {
    let start = prop_oneof![
        8 => Just(b"/".to_vec()),
        1 => Just(Vec::new()),
        1 => Just(b"http://127.0.0.1".to_vec()),
    ];
    let pieces = prop::collection::vec(prop::sample::select(PIECES), 0..10);
    (start, pieces).prop_map(|(mut t, pieces)| {
        for p in pieces {
            t.extend_from_slice(p);
        }
        if t.is_empty() {
            t.push(b'*');
        }
        t
    })
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases,
        // Every shrink step of a socket case is a request: keep failures quick.
        max_shrink_iters: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

fn shown(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).escape_debug().to_string()
}

// === (a) a refused path is never forwarded ===

#[test]
fn refused_paths_are_never_forwarded() {
    let up = MockUpstream::start();
    let config = ConfigBuilder::new()
        .upstream("app", &up.url(), "")
        .raw(
            r#"
[[routes]]
name = "root"
path = "/"
upstream = "app"
auth = "none"

[[routes]]
name = "everything"
path = "/{*rest}"
upstream = "app"
auth = "none"
"#,
        )
        .build();
    let gw = TestGateway::start(&config);
    // Counted across cases (the runner takes a `Fn`).
    let forwarded = Cell::new(0);
    let refused = Cell::new(0);

    let result = runner(128).run(&target(), |target| {
        let before = up.count();
        let mut raw = b"GET ".to_vec();
        raw.extend_from_slice(&target);
        raw.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        let resp = try_send_raw(gw.addr(), &raw)
            .map_err(|e| TestCaseError::fail(format!("{}: {e}", shown(&target))))?;
        if resp.status == 200 {
            let seen = up.requests();
            prop_assert_eq!(seen.len(), before + 1, "forwarded {}", shown(&target));
            let last = &seen[seen.len() - 1];
            prop_assert_eq!(
                shown(&last.target),
                shown(&target),
                "the upstream got other bytes than were sent"
            );
            forwarded.set(forwarded.get() + 1);
        } else {
            prop_assert!(
                (400..500).contains(&resp.status),
                "{} answered {}",
                shown(&target),
                resp.describe()
            );
            prop_assert!(
                resp.error_code().is_some(),
                "{} refused without a JSON error: {}",
                shown(&target),
                resp.describe()
            );
            prop_assert_eq!(
                up.count(),
                before,
                "{} refused yet forwarded",
                shown(&target)
            );
            refused.set(refused.get() + 1);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // The generator must exercise both outcomes, or the property says little.
    let (forwarded, refused) = (forwarded.get(), refused.get());
    assert!(
        forwarded >= 5,
        "only {forwarded} generated targets were forwarded"
    );
    assert!(
        refused >= 20,
        "only {refused} generated targets were refused"
    );
}

// === (b) normalisation never changes an accepted path ===

#[test]
fn accepted_paths_are_already_normal() {
    let accepted = Cell::new(0);
    let result = runner(8192).run(&target(), |target| {
        let Ok(text) = std::str::from_utf8(&target) else {
            return Ok(());
        };
        let path = text.split('?').next().unwrap_or_default();
        if validate_path(path).is_ok() {
            accepted.set(accepted.get() + 1);
            if let Some(why) = path_oracle::not_normal(path) {
                return Err(TestCaseError::fail(format!("accepted {path:?}: {why}")));
            }
        }
        let checked = check_request(
            &Method::GET,
            &target,
            &HeaderMap::new(),
            None,
            &RequestLimits::default(),
        );
        if let Ok(checked) = checked {
            prop_assert!(validate_path(checked.path).is_ok());
            prop_assert_eq!(path_oracle::not_normal(checked.path), None);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let accepted = accepted.get();
    assert!(
        accepted >= 500,
        "only {accepted} generated paths were accepted"
    );
}

#[test]
fn path_oracle_knows_what_is_not_normal() {
    // The oracle itself must be able to fail, or (b) proves nothing.
    for (path, normal) in [
        ("/", true),
        ("/a/b/", true),
        ("/caf%C3%A9/x", true),
        ("/a%25zz", true),
        ("/a/../b", false),
        ("/a/%2e%2e/b", false),
        ("/a//b", false),
        ("/a%2fb", false),
        ("/a\\b", false),
        ("/a;x/b", false),
        ("/a%252e", false),
        ("/a/%25%32%65%25%32%65/b", false),
        ("/a%C0%AE", false),
        ("/a%00", false),
        ("/./a", false),
    ] {
        assert_eq!(
            path_oracle::not_normal(path).is_none(),
            normal,
            "{path}: {:?}",
            path_oracle::not_normal(path)
        );
    }
}

// === (c) explain and the proxy decide alike ===

const HMAC_SECRET: &str = "portcullis-properties-hmac-secret-0123456789";
const HS_ISSUER: &str = "https://hs.properties.test";

/// Several routes: entitlements (all / any), a body policy, an IP rule that
/// refuses loopback, a public route; clients from a static source.
const ROUTES: &str = r#"
[clients]
source = "static"

[[clients.static]]
client_id = "client-1"
enabled = true
entitlements = ["readAPIClients", "manageAPIClients"]

[[clients.static]]
client_id = "reader"
enabled = true
entitlements = ["readAPIClients"]

[[clients.static]]
client_id = "client-off"
enabled = false
entitlements = ["readAPIClients", "manageAPIClients"]

[[routes]]
name = "list"
methods = ["GET"]
path = "/v1.0/apiclients"
upstream = "app"
require_any = ["readAPIClients", "manageAPIClients"]

[[routes]]
name = "update"
methods = ["PUT"]
path = "/v1.0/apiclients/{id}"
upstream = "app"
require_all = ["manageAPIClients"]
deny_self = "id"

[routes.body]
json = true
max_bytes = 4096
path_params = { "/id" = "id" }
deny = ["/clientSecret"]
subset_of_caller = ["/entitlements"]
enums = { "/ipFilterOp" = ["allow", "deny"] }

[[routes]]
name = "delete"
methods = ["DELETE"]
path = "/v1.0/apiclients/{id}"
upstream = "app"
require_all = ["manageAPIClients"]

[[routes]]
name = "internal"
path = "/internal/{*rest}"
upstream = "app"
ip_deny = ["127.0.0.0/8"]

[[routes]]
name = "public"
methods = ["GET"]
path = "/.well-known/{name}"
upstream = "app"
auth = "none"
"#;

#[derive(Debug, Clone, Copy)]
enum TokenKind {
    Valid,
    Reader,
    Expired,
    WrongAudience,
    UnknownClient,
    DisabledClient,
    Garbage,
    None,
}

fn token(kind: TokenKind) -> Option<String> {
    let key = TestKey::hmac(HMAC_SECRET.as_bytes());
    let base = || {
        TokenBuilder::new(&key)
            .no_kid()
            .iss(HS_ISSUER)
            .entitlements(&["readAPIClients", "manageAPIClients"])
    };
    Some(match kind {
        TokenKind::Valid => base().build(),
        TokenKind::Reader => base()
            .client_id("reader")
            .entitlements(&["readAPIClients"])
            .build(),
        TokenKind::Expired => base().exp_in(-3600).build(),
        TokenKind::WrongAudience => base().aud("https://elsewhere.test").build(),
        TokenKind::UnknownClient => base().client_id("nobody").build(),
        TokenKind::DisabledClient => base().client_id("client-off").build(),
        TokenKind::Garbage => "not.a.jwt".to_string(),
        TokenKind::None => return None,
    })
}

#[derive(Debug, Clone)]
struct Case {
    method: &'static str,
    target: &'static str,
    token: TokenKind,
    body: Option<&'static str>,
}

fn case() -> impl Strategy<Value = Case> {
    // Mostly a method and path that some route takes, so that the token,
    // client, entitlement and body steps are reached; sometimes any pair.
    let routed = prop::sample::select(vec![
        ("GET", "/v1.0/apiclients"),
        ("PUT", "/v1.0/apiclients/abc"),
        ("PUT", "/v1.0/apiclients/client-1"),
        ("DELETE", "/v1.0/apiclients/abc"),
        ("GET", "/internal/x"),
        ("GET", "/.well-known/jwks.json"),
    ]);
    let method = prop::sample::select(vec!["GET", "PUT", "DELETE", "POST"]);
    let target = prop::sample::select(vec![
        "/v1.0/apiclients",
        "/v1.0/apiclients/abc",
        "/v1.0/apiclients/client-1",
        "/v1.0/apiclients/abc?x=1",
        "/v1.0/apiclients/%2e%2e",
        "/v1.0/apiclients/a;b",
        "/v1.0/apiclients?access_token=x",
        "/internal/x",
        "/.well-known/jwks.json",
        "/nowhere",
    ]);
    // The valid token thrice: the body rules are reached only with it.
    let token = prop::sample::select(vec![
        TokenKind::Valid,
        TokenKind::Valid,
        TokenKind::Valid,
        TokenKind::Reader,
        TokenKind::Expired,
        TokenKind::WrongAudience,
        TokenKind::UnknownClient,
        TokenKind::DisabledClient,
        TokenKind::Garbage,
        TokenKind::None,
    ]);
    let body = prop::sample::select(vec![
        None,
        Some(r#"{"id":"abc","clientName":"x"}"#),
        Some(r#"{"clientName":"x","clientSecret":"s"}"#),
        Some(r#"{"clientName":"x","entitlements":["manageUsers"]}"#),
        Some(r#"{"ipFilterOp":"maybe"}"#),
        Some("not json"),
    ]);
    let request = prop_oneof![3 => routed, 1 => (method, target)];
    (request, token, body).prop_map(|((method, target), token, body)| Case {
        method,
        target,
        token,
        body,
    })
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "portcullis-properties-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `allow`, or the status and error code of the refusal.
fn explained(stdout: &str, code: u8) -> Result<String, String> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("DECISION:"))
        .ok_or_else(|| format!("no DECISION line in {stdout}"))?;
    match code {
        EXIT_ALLOW if line.starts_with("DECISION: allow") => Ok("allow".into()),
        EXIT_REFUSE => {
            // "DECISION: refuse — 403 missing_entitlements: ..."
            let rest = line
                .split_once("— ")
                .map(|(_, r)| r)
                .ok_or_else(|| format!("unexpected {line:?}"))?;
            let mut words = rest.split_whitespace();
            let status = words.next().unwrap_or_default();
            let code = words.next().unwrap_or_default().trim_end_matches(':');
            Ok(format!("{status} {code}"))
        }
        other => Err(format!("exit code {other} with {line:?}")),
    }
}

#[test]
fn explain_and_proxy_decide_alike() {
    let env = format!("PORTCULLIS_PROPERTIES_HMAC_{}", std::process::id());
    std::env::set_var(&env, HMAC_SECRET);
    let up = MockUpstream::start();
    let config = ConfigBuilder::new()
        .hmac_issuer("hs", HS_ISSUER, &env, "")
        .upstream("app", &up.url(), "")
        .raw(ROUTES)
        .build();
    let dir = TempDir::new();
    let config_file = dir.0.join("portcullis.toml");
    std::fs::write(&config_file, &config).expect("write config");
    let body_file = dir.0.join("body.json");
    let gw = TestGateway::start(&config);
    let outcomes = RefCell::new(std::collections::BTreeSet::new());

    let result = runner(128).run(&case(), |case| {
        let token = token(case.token);
        let mut headers: Vec<(&str, String)> = Vec::new();
        if let Some(t) = &token {
            headers.push(("Authorization", bearer(t)));
        }
        if case.body.is_some() {
            headers.push(("Content-Type", "application/json".into()));
        }
        let header_refs: Vec<(&str, &str)> =
            headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let before = up.count();
        let resp = gw.request(
            case.method,
            case.target,
            &header_refs,
            case.body.map(str::as_bytes),
        );
        let proxy = if resp.status == 200 && up.count() == before + 1 {
            "allow".to_string()
        } else {
            prop_assert_eq!(up.count(), before, "refused but forwarded: {:?}", case);
            format!("{} {}", resp.status, resp.error_code().unwrap_or_default())
        };

        if let Some(body) = case.body {
            std::fs::write(&body_file, body).expect("write body");
        }
        let args = ExplainArgs {
            config: config_file.clone(),
            token: token.map(TokenArg),
            token_file: None,
            from: "127.0.0.1".parse().expect("ip"),
            headers: Vec::new(),
            no_metadata: false,
            body: case.body.map(|_| body_file.clone()),
            content_type: None,
            method: case.method.to_string(),
            path: case.target.to_string(),
        };
        let out = explain(&args);
        let offline = explained(&out.stdout, out.code).map_err(TestCaseError::fail)?;
        prop_assert_eq!(
            &offline,
            &proxy,
            "{:?}: explain says {:?}, the gateway answered {}\n{}",
            case,
            offline,
            resp.describe(),
            out.stdout
        );
        outcomes.borrow_mut().insert(proxy);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let outcomes = outcomes.into_inner();
    // The cases must reach both decisions and several kinds of refusal.
    assert!(
        outcomes.contains("allow"),
        "no case was allowed: {outcomes:?}"
    );
    assert!(
        outcomes.len() >= 14,
        "too few distinct outcomes: {outcomes:?}"
    );
}
