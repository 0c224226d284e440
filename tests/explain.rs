//! `portcullis explain`: the offline decision, step by step, for an allowed
//! request and for each kind of refusal — the exit code, the final
//! `DECISION:` line, which step refused, and that the token never appears.
//!
//! Most cases call the library ([`portcullis::explain::explain`]); two run
//! the built binary once `main.rs` offers the `explain` subcommand.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::Parser;
use common::*;
use portcullis::explain::{
    explain, ExplainArgs, Explained, EXIT_ALLOW, EXIT_REFUSE, EXIT_UNDECIDED, EXIT_USAGE,
};
use serde_json::json;

// === fixtures ===

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "portcullis-explain-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn catalog_file() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/catalogs/verify-entitlements.tsv")
        .display()
        .to_string()
}

/// Routes like the IBM Verify ones of `config/portcullis.toml`.
const ROUTES: &str = r#"
[[routes]]
name = "apiclients-list"
methods = ["GET"]
path = "/v1.0/apiclients"
upstream = "verify"
require_any = ["readAPIClients", "manageAPIClients"]

[[routes]]
name = "apiclient-update"
methods = ["PUT"]
path = "/v1.0/apiclients/{id}"
upstream = "verify"
require_all = ["manageAPIClients"]
deny_self = "id"

[routes.body]
json = true
max_bytes = 16384
path_params = { "/id" = "id" }
deny = ["/clientId"]
subset_of_caller = ["/entitlements"]
catalog = { "/entitlements" = "verify" }
enums = { "/ipFilterOp" = ["allow", "deny"] }
cidrs = ["/ipFilters"]

[[routes]]
name = "internal-admin"
methods = ["GET"]
path = "/internal/{*rest}"
upstream = "verify"
require_any = ["readAPIClients"]
ip_allow = ["10.0.0.0/8"]

[[routes]]
name = "discovery"
methods = ["GET"]
path = "/.well-known/{*rest}"
upstream = "verify"
auth = "none"
"#;

const STATIC_CLIENTS: &str = r#"
[clients]
source = "static"
entitlements_from = "both"

[[clients.static]]
client_id = "client-1"
id = "rec-1"
enabled = true
entitlements = ["readAPIClients", "manageAPIClients"]

[[clients.static]]
client_id = "reader"
enabled = true
entitlements = ["readAPIClients"]

[[clients.static]]
client_id = "off"
enabled = false
entitlements = ["readAPIClients", "manageAPIClients"]

[[clients.static]]
client_id = "ten-only"
enabled = true
entitlements = ["readAPIClients", "manageAPIClients"]
ip_filter_op = "allow"
ip_filters = ["10.0.0.0/8"]
"#;

/// A config file (issuer `main` from a JWKS file with the standard test
/// keys, upstream `verify`, [`ROUTES`], then `clients`) in `dir`.
fn write_config(dir: &TempDir, clients: &str) -> PathBuf {
    let jwks = dir.write("jwks.json", standard_jwks().as_bytes());
    let toml = ConfigBuilder::new()
        .server("trusted_proxies = [\"192.0.2.0/24\"]")
        .raw(&format!(
            "[catalogs.verify]\nfile = {}\nofferings = [\"CIC\"]\n",
            toml_str(&catalog_file())
        ))
        .raw(&format!(
            "[[issuers]]\nname = \"main\"\nissuer = {}\naudiences = [{}]\nalgorithms = {STANDARD_ALGORITHMS}\njwks_file = {}\n",
            toml_str(DEFAULT_ISSUER),
            toml_str(DEFAULT_AUDIENCE),
            toml_str(&jwks.display().to_string()),
        ))
        .upstream("verify", "https://tenant.verify.test", "catalog = \"verify\"")
        .raw(ROUTES)
        .raw(clients)
        .build();
    dir.write("portcullis.toml", toml.as_bytes())
}

fn token(client: &str, entitlements: &[&str]) -> String {
    TokenBuilder::new(&TestKey::rsa())
        .client_id(client)
        .entitlements(entitlements)
        .build()
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: ExplainArgs,
}

/// Parses `explain` arguments exactly as the CLI would.
fn args(list: &[&str]) -> ExplainArgs {
    Cli::try_parse_from(std::iter::once("explain").chain(list.iter().copied()))
        .unwrap_or_else(|e| panic!("arguments {list:?} rejected: {e}"))
        .args
}

fn run(list: &[&str]) -> Explained {
    explain(&args(list))
}

/// The `DECISION:` line.
fn decision(out: &Explained) -> &str {
    out.stdout
        .lines()
        .find(|l| l.starts_with("DECISION: "))
        .unwrap_or_else(|| panic!("no DECISION line:\n{}{}", out.stdout, out.stderr))
}

/// The step named in `[refused at: STEP]`.
fn refused_at(out: &Explained) -> Option<&str> {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("[refused at: ")?.strip_suffix(']'))
}

/// Asserts a refusal: exit 1, the decision line starts with
/// `DECISION: refuse — STATUS CODE:`, the `✗` line and `[refused at: …]`
/// name `step`, and every step before it passed.
#[track_caller]
fn assert_refusal(out: &Explained, status: u16, code: &str, step: &str) {
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, EXIT_REFUSE, "exit code:\n{all}");
    let want = format!("DECISION: refuse — {status} {code}: ");
    assert!(
        decision(out).starts_with(&want),
        "expected {want:?}…, got {:?}\n{all}",
        decision(out)
    );
    assert_eq!(refused_at(out), Some(step), "refusing step:\n{all}");
    let cross = format!("  ✗ {step} ");
    assert_eq!(
        out.stdout.lines().filter(|l| l.starts_with("  ✗ ")).count(),
        1,
        "exactly one ✗ line:\n{all}"
    );
    assert!(
        out.stdout.lines().any(|l| l.starts_with(&cross)),
        "no {cross:?} line:\n{all}"
    );
}

#[track_caller]
fn assert_allowed(out: &Explained) {
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, EXIT_ALLOW, "exit code:\n{all}");
    assert!(
        decision(out).starts_with("DECISION: allow — would forward to upstream \"verify\" (https://tenant.verify.test:443)"),
        "{all}"
    );
    assert_eq!(refused_at(out), None, "{all}");
    assert!(!out.stdout.contains('✗'), "{all}");
}

#[track_caller]
fn assert_no_token(out: &Explained, token: &str) {
    assert!(
        !out.stdout.contains(token) && !out.stderr.contains(token),
        "the token appears in the output:\n{}{}",
        out.stdout,
        out.stderr
    );
    // Not even its signature or claims part.
    for part in token.split('.') {
        assert!(
            !out.stdout.contains(part),
            "a token part appears:\n{}",
            out.stdout
        );
    }
}

/// Which steps passed (`✓ NAME`), in order.
fn passed_steps(out: &Explained) -> Vec<String> {
    out.stdout
        .lines()
        .filter_map(|l| l.strip_prefix("  ✓ "))
        .map(|l| {
            // The name is padded to a column; names contain at most one space.
            let name = l.get(..13).unwrap_or(l).trim_end();
            name.to_string()
        })
        .collect()
}

// === the allowed update ===

#[test]
fn allowed_update_prints_every_step_and_the_upstream() {
    let dir = TempDir::new();
    let config = write_config(&dir, STATIC_CLIENTS);
    let tok = token("client-1", &["readAPIClients", "manageAPIClients"]);
    let body = dir.write(
        "body.json",
        json!({
            "id": "other",
            "entitlements": ["readAPIClients"],
            "ipFilterOp": "allow",
            "ipFilters": ["10.0.0.0/8", "192.168.1.1"]
        })
        .to_string()
        .as_bytes(),
    );
    let out = run(&[
        "--config",
        config.to_str().unwrap(),
        "--token",
        &tok,
        "--body",
        body.to_str().unwrap(),
        "PUT",
        "/v1.0/apiclients/other",
    ]);
    assert_allowed(&out);
    assert_no_token(&out, &tok);
    assert_eq!(
        passed_steps(&out),
        [
            "request",
            "route",
            "client ip",
            "token",
            "client",
            "entitlements",
            "deny_self",
            "body"
        ],
        "{}",
        out.stdout
    );
    let s = &out.stdout;
    assert!(
        s.contains("\"apiclient-update\" (PUT /v1.0/apiclients/{id})"),
        "{s}"
    );
    assert!(
        s.contains("issuer \"main\", subject \"subject-1\", client \"client-1\""),
        "{s}"
    );
    assert!(s.contains("required all [\"manageAPIClients\"]"), "{s}");
    assert!(s.contains("\"main\": 5 key(s) from"), "{s}");
    assert!(s.contains("token     given (never shown)"), "{s}");
    assert!(s.contains("X-Portcullis-Client-Id \"client-1\""), "{s}");
    assert!(out.stderr.is_empty(), "{}", out.stderr);
}

#[test]
fn allowed_read_with_token_file_and_public_route_without_token() {
    let dir = TempDir::new();
    let config = write_config(&dir, STATIC_CLIENTS);
    let tok = token("reader", &["readAPIClients"]);
    let file = dir.write("token", format!("  {tok}\n\n").as_bytes());
    let out = run(&[
        "--config",
        config.to_str().unwrap(),
        "--token-file",
        file.to_str().unwrap(),
        "GET",
        "/v1.0/apiclients",
    ]);
    assert_allowed(&out);
    assert_no_token(&out, &tok);
    assert!(out.stdout.contains("  - body "), "{}", out.stdout);

    let out = run(&[
        "--config",
        config.to_str().unwrap(),
        "GET",
        "/.well-known/openid-configuration",
    ]);
    assert_allowed(&out);
    assert!(
        out.stdout.contains("not required (auth = \"none\")"),
        "{}",
        out.stdout
    );
}

// === each refusal ===

#[test]
fn every_refusal_names_its_step_status_and_code() {
    let dir = TempDir::new();
    let config = write_config(&dir, STATIC_CLIENTS);
    let config = config.to_str().unwrap().to_string();
    let full = token("client-1", &["readAPIClients", "manageAPIClients"]);
    let manage_only = token("client-1", &["manageAPIClients"]);
    let expired = TokenBuilder::new(&TestKey::rsa())
        .client_id("client-1")
        .entitlements(&["readAPIClients"])
        .exp_in(-3600)
        .build();
    let body = |name: &str, value: serde_json::Value| {
        dir.write(name, value.to_string().as_bytes())
            .display()
            .to_string()
    };
    let escalate = body(
        "escalate.json",
        json!({"id": "other", "entitlements": ["readAPIClients"]}),
    );
    let bad_cidr = body(
        "cidr.json",
        json!({"id": "other", "ipFilterOp": "allow", "ipFilters": ["10.0.0.1", "10.0.0.0/33"]}),
    );
    let bad_enum = body("enum.json", json!({"id": "other", "ipFilterOp": "maybe"}));
    let nobody = token("nobody", &["readAPIClients"]);
    let off = token("off", &["readAPIClients"]);
    let ten_only = token("ten-only", &["readAPIClients"]);
    let reader = token("reader", &["readAPIClients", "manageAPIClients"]);

    struct Case<'a> {
        label: &'a str,
        token: Option<&'a str>,
        extra: Vec<&'a str>,
        method: &'a str,
        path: &'a str,
        status: u16,
        code: &'a str,
        step: &'a str,
        mentions: &'a str,
    }
    let t = |s: &'static str| -> Vec<&str> { s.split_whitespace().collect() };
    let cases = vec![
        Case {
            label: "dot-dot path",
            token: Some(&full),
            extra: vec![],
            method: "GET",
            path: "/v1.0/../v1.0/apiclients",
            status: 400,
            code: "invalid_path",
            step: "request",
            mentions: "path rejected",
        },
        Case {
            label: "encoded slash",
            token: Some(&full),
            extra: vec![],
            method: "GET",
            path: "/v1.0%2Fapiclients",
            status: 400,
            code: "invalid_path",
            step: "request",
            mentions: "",
        },
        Case {
            label: "method override header",
            token: Some(&full),
            extra: vec!["--header", "X-HTTP-Method-Override: DELETE"],
            method: "GET",
            path: "/v1.0/apiclients",
            status: 400,
            code: "override_header",
            step: "request",
            mentions: "",
        },
        Case {
            label: "no route",
            token: Some(&full),
            extra: vec![],
            method: "GET",
            path: "/v2/nothing",
            status: 404,
            code: "no_route",
            step: "route",
            mentions: "",
        },
        Case {
            label: "method not allowed",
            token: Some(&full),
            extra: vec![],
            method: "DELETE",
            path: "/v1.0/apiclients",
            status: 405,
            code: "method_not_allowed",
            step: "route",
            mentions: "Allow: GET",
        },
        Case {
            label: "route ip_allow",
            token: Some(&full),
            extra: vec![],
            method: "GET",
            path: "/internal/status",
            status: 403,
            code: "ip_denied",
            step: "client ip",
            mentions: "client ip 127.0.0.1",
        },
        Case {
            label: "X-Forwarded-For from an untrusted peer is ignored",
            token: Some(&full),
            extra: vec!["--header", "X-Forwarded-For: 10.1.2.3"],
            method: "GET",
            path: "/internal/status",
            status: 403,
            code: "ip_denied",
            step: "client ip",
            mentions: "forwarding headers ignored",
        },
        Case {
            label: "missing token",
            token: None,
            extra: vec![],
            method: "GET",
            path: "/v1.0/apiclients",
            status: 401,
            code: "missing_token",
            step: "token",
            mentions: "no token was given",
        },
        Case {
            label: "expired token",
            token: Some(&expired),
            extra: vec![],
            method: "GET",
            path: "/v1.0/apiclients",
            status: 401,
            code: "token_expired",
            step: "token",
            mentions: "the token has expired",
        },
        Case {
            label: "unknown client",
            token: Some(&nobody),
            extra: vec![],
            method: "GET",
            path: "/v1.0/apiclients",
            status: 403,
            code: "unknown_client",
            step: "client",
            mentions: "client \"nobody\"",
        },
        Case {
            label: "disabled client",
            token: Some(&off),
            extra: vec![],
            method: "GET",
            path: "/v1.0/apiclients",
            status: 403,
            code: "client_disabled",
            step: "client",
            mentions: "client \"off\"",
        },
        Case {
            label: "client IP filter",
            token: Some(&ten_only),
            extra: vec![],
            method: "GET",
            path: "/v1.0/apiclients",
            status: 403,
            code: "client_ip_denied",
            step: "client",
            mentions: "client \"ten-only\"",
        },
        Case {
            label: "insufficient entitlements (metadata lacks it)",
            token: Some(&reader),
            extra: vec!["--body", &escalate],
            method: "PUT",
            path: "/v1.0/apiclients/other",
            status: 403,
            code: "insufficient_entitlements",
            step: "entitlements",
            mentions: "effective [\"readAPIClients\"]",
        },
        Case {
            label: "deny_self",
            token: Some(&full),
            extra: vec![],
            method: "PUT",
            path: "/v1.0/apiclients/rec-1",
            status: 403,
            code: "self_modification",
            step: "deny_self",
            mentions: "",
        },
        Case {
            label: "privilege escalation via the body",
            token: Some(&manage_only),
            extra: vec!["--body", &escalate],
            method: "PUT",
            path: "/v1.0/apiclients/other",
            status: 403,
            code: "privilege_escalation",
            step: "body",
            mentions: "readAPIClients",
        },
        Case {
            label: "invalid CIDR in the body",
            token: Some(&full),
            extra: vec!["--body", &bad_cidr],
            method: "PUT",
            path: "/v1.0/apiclients/other",
            status: 400,
            code: "invalid_cidr",
            step: "body",
            mentions: "/ipFilters/1",
        },
        Case {
            label: "invalid enum value",
            token: Some(&full),
            extra: vec!["--body", &bad_enum],
            method: "PUT",
            path: "/v1.0/apiclients/other",
            status: 400,
            code: "invalid_enum_value",
            step: "body",
            mentions: "/ipFilterOp",
        },
        Case {
            label: "wrong media type",
            token: Some(&full),
            extra: vec!["--body", &bad_enum, "--content-type", "text/plain"],
            method: "PUT",
            path: "/v1.0/apiclients/other",
            status: 415,
            code: "unsupported_media_type",
            step: "body",
            mentions: "",
        },
        Case {
            label: "body policy with no body",
            token: Some(&full),
            extra: t(""),
            method: "PUT",
            path: "/v1.0/apiclients/other",
            status: 415,
            code: "unsupported_media_type",
            step: "body",
            mentions: "",
        },
    ];

    let mut failures = Vec::new();
    for case in &cases {
        let mut list: Vec<&str> = vec!["--config", &config];
        if let Some(tok) = case.token {
            list.extend(["--token", tok]);
        }
        list.extend(case.extra.iter().copied());
        list.extend([case.method, case.path]);
        let out = run(&list);
        let result = std::panic::catch_unwind(|| {
            assert_refusal(&out, case.status, case.code, case.step);
            if let Some(tok) = case.token {
                assert_no_token(&out, tok);
            }
            assert!(
                out.stdout.contains(case.mentions),
                "output does not mention {:?}:\n{}",
                case.mentions,
                out.stdout
            );
        });
        if let Err(e) = result {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("--- {}: {msg}", case.label));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn insufficient_entitlements_decision_line_names_what_is_missing() {
    let dir = TempDir::new();
    let config = write_config(&dir, STATIC_CLIENTS);
    let tok = token("client-1", &["readAPIClients"]);
    let out = run(&[
        "--config",
        config.to_str().unwrap(),
        "--token",
        &tok,
        "PUT",
        "/v1.0/apiclients/other",
    ]);
    assert_eq!(
        decision(&out),
        "DECISION: refuse — 403 insufficient_entitlements: missing entitlements: manageAPIClients"
    );
    assert_eq!(
        passed_steps(&out),
        ["request", "route", "client ip", "token", "client"]
    );
    assert_no_token(&out, &tok);
}

#[test]
fn trusted_proxy_forwarded_address_passes_the_route_ip_rule() {
    let dir = TempDir::new();
    let config = write_config(&dir, STATIC_CLIENTS);
    let tok = token("client-1", &["readAPIClients"]);
    let out = run(&[
        "--config",
        config.to_str().unwrap(),
        "--token",
        &tok,
        "--from",
        "192.0.2.7",
        "-H",
        "X-Forwarded-For: 10.1.2.3",
        "GET",
        "/internal/status",
    ]);
    assert_allowed(&out);
    assert!(
        out.stdout
            .contains("peer 192.0.2.7 (a trusted proxy) → client ip 10.1.2.3"),
        "{}",
        out.stdout
    );
}

// === client metadata source ===

/// `[clients]` from an http source on a port where nothing listens.
fn closed_http_clients() -> String {
    format!(
        "[clients]\nsource = \"http\"\nurl = \"http://127.0.0.1:{}/v1.0/apiclients/{{client_id}}\"\ntimeout_ms = 500\n",
        free_port()
    )
}

#[test]
fn no_metadata_skips_an_unreachable_metadata_source() {
    let dir = TempDir::new();
    let config = write_config(&dir, &closed_http_clients());
    let tok = token("client-1", &["readAPIClients"]);
    let base = ["--config", config.to_str().unwrap(), "--token", &tok];

    let out = run(&[&base[..], &["GET", "/v1.0/apiclients"]].concat());
    assert_refusal(&out, 503, "metadata_unavailable", "client");
    assert!(out.stdout.contains("--no-metadata"), "{}", out.stdout);
    assert_no_token(&out, &tok);

    let out = run(&[&base[..], &["--no-metadata", "GET", "/v1.0/apiclients"]].concat());
    assert_allowed(&out);
    assert!(
        out.stdout.contains("no client metadata applies"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("off (--no-metadata"), "{}", out.stdout);
}

// === without secrets: what needs one is undecided ===

/// An environment variable no test sets.
fn never_set(tag: &str) -> String {
    format!("PORTCULLIS_EXPLAIN_UNSET_{tag}_{}", std::process::id())
}

/// `[clients]` from an http source (the recording `source`) whose bearer
/// token comes from a variable that is not set.
fn http_clients_without_credential(source: &MockUpstream, from: &str) -> String {
    format!(
        "[clients]\nsource = \"http\"\nurl = \"{}/v1.0/apiclients/{{client_id}}\"\nbearer_env = {}\nentitlements_from = {}\n",
        source.url(),
        toml_str(&never_set("METADATA")),
        toml_str(from)
    )
}

/// The `? STEP` line.
fn undecided_line<'a>(out: &'a Explained, step: &str) -> &'a str {
    let prefix = format!("  ? {step} ");
    out.stdout
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line:\n{}{}", out.stdout, out.stderr))
}

#[test]
fn metadata_without_its_credential_is_undecided_and_never_asked() {
    let source = MockUpstream::start();
    let dir = TempDir::new();
    let config = write_config(&dir, &http_clients_without_credential(&source, "both"));
    let tok = token("client-1", &["readAPIClients"]);
    let out = run(&[
        "--config",
        config.to_str().unwrap(),
        "--token",
        &tok,
        "GET",
        "/v1.0/apiclients",
    ]);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, EXIT_UNDECIDED, "{all}");
    assert!(
        undecided_line(&out, "client").contains(&format!("${} is not set", never_set("METADATA"))),
        "{all}"
    );
    assert!(
        decision(&out).starts_with(
            "DECISION: unknown — would forward to upstream \"verify\" (https://tenant.verify.test:443) if what could not be checked here passes: client \"client-1\"'s record"
        ),
        "{all}"
    );
    // The later steps still ran, under a stated assumption.
    assert_eq!(
        passed_steps(&out),
        ["request", "route", "client ip", "token", "entitlements"],
        "{all}"
    );
    assert!(all.contains("holds the token's entitlements"), "{all}");
    assert!(
        out.stderr
            .contains("clients.bearer_env: environment variable")
            && out.stderr.contains("(required at run)"),
        "{all}"
    );
    assert_eq!(
        source.count(),
        0,
        "the source was asked without a credential"
    );
    assert_no_token(&out, &tok);

    // --no-metadata is the caller's choice, not an unknown.
    let out = run(&[
        "--config",
        config.to_str().unwrap(),
        "--token",
        &tok,
        "--no-metadata",
        "GET",
        "/v1.0/apiclients",
    ]);
    assert_allowed(&out);
    assert_eq!(source.count(), 0);
}

#[test]
fn a_refusal_that_needs_no_secret_stands_without_one() {
    let source = MockUpstream::start();
    let dir = TempDir::new();
    let config = write_config(&dir, &http_clients_without_credential(&source, "both"));
    let path = config.to_str().unwrap();

    // "both": the effective set is at most the token's, so too few stays too few.
    let weak = token("client-1", &["readAPIClients"]);
    let out = run(&[
        "--config",
        path,
        "--token",
        &weak,
        "PUT",
        "/v1.0/apiclients/other",
    ]);
    assert_refusal(&out, 403, "insufficient_entitlements", "entitlements");
    undecided_line(&out, "client");

    // A token naming no client is refused before the source would be asked.
    let anonymous = TokenBuilder::new(&TestKey::rsa())
        .without("client_id")
        .entitlements(&["readAPIClients"])
        .build();
    let out = run(&[
        "--config",
        path,
        "--token",
        &anonymous,
        "GET",
        "/v1.0/apiclients",
    ]);
    assert_refusal(&out, 403, "unknown_client", "client");

    // Refused before the client step: nothing is undecided.
    let out = run(&["--config", path, "GET", "/v1.0/apiclients"]);
    assert_refusal(&out, 401, "missing_token", "token");
    assert_eq!(source.count(), 0);
}

#[test]
fn entitlements_from_metadata_without_the_record_are_undecided() {
    let source = MockUpstream::start();
    let dir = TempDir::new();
    let config = write_config(&dir, &http_clients_without_credential(&source, "metadata"));
    let weak = token("client-1", &["readAPIClients"]);
    let out = run(&[
        "--config",
        config.to_str().unwrap(),
        "--token",
        &weak,
        "PUT",
        "/v1.0/apiclients/other",
    ]);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, EXIT_UNDECIDED, "{all}");
    assert!(
        decision(&out).starts_with(
            "DECISION: unknown — refused here with 403 insufficient_entitlements, but what could not be checked here decides it"
        ),
        "{all}"
    );
    assert!(all.contains("entitlements_from = \"metadata\""), "{all}");
    assert_eq!(source.count(), 0);
}

#[test]
fn hmac_issuer_without_its_secret_checks_all_but_the_signature() {
    let dir = TempDir::new();
    let var = never_set("HMAC");
    let toml = ConfigBuilder::new()
        .raw(&format!(
            "[catalogs.verify]\nfile = {}\nofferings = [\"CIC\"]\n",
            toml_str(&catalog_file())
        ))
        .raw(&format!(
            "[[issuers]]\nname = \"hs\"\nissuer = \"https://hs.test\"\nalgorithms = [\"HS256\"]\nhmac_secret_env = {}\n",
            toml_str(&var)
        ))
        .upstream("verify", "https://tenant.verify.test", "")
        .raw(ROUTES)
        .build();
    let config = dir.write("hs.toml", toml.as_bytes());
    let path = config.to_str().unwrap();
    let key = TestKey::hmac(b"whatever-the-caller-signed-with-0123456789");
    let mint = |exp_in: i64| {
        TokenBuilder::new(&key)
            .iss("https://hs.test")
            .entitlements(&["readAPIClients"])
            .exp_in(exp_in)
            .build()
    };

    let good = mint(300);
    let out = run(&[
        "--config",
        path,
        "--token",
        &good,
        "GET",
        "/v1.0/apiclients",
    ]);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, EXIT_UNDECIDED, "{all}");
    assert!(
        undecided_line(&out, "token").contains(&format!("${var} is not set")),
        "{all}"
    );
    assert!(all.contains("every other check passes"), "{all}");
    assert_no_token(&out, &good);

    // Expired whatever the secret: a decided refusal at the token step.
    let expired = mint(-3600);
    let out = run(&[
        "--config",
        path,
        "--token",
        &expired,
        "GET",
        "/v1.0/apiclients",
    ]);
    assert_refusal(&out, 401, "token_expired", "token");
    assert!(
        out.stdout.contains("the signature was not checked"),
        "{}",
        out.stdout
    );
    assert_no_token(&out, &expired);

    // Too few entitlements whatever the secret: refused.
    let out = run(&[
        "--config",
        path,
        "--token",
        &good,
        "PUT",
        "/v1.0/apiclients/x",
    ]);
    assert_refusal(&out, 403, "insufficient_entitlements", "entitlements");
}

// === keys from a JWKS URL ===

#[test]
fn jwks_url_keys_are_fetched_once_and_a_failure_is_reported() {
    let jwks = MockJwks::start(standard_jwks());
    let dir = TempDir::new();
    let toml = ConfigBuilder::new()
        .issuer("main", DEFAULT_ISSUER, &jwks.url(), "")
        .upstream("verify", "https://tenant.verify.test", "")
        .raw(
            "[[routes]]\nname = \"r\"\nmethods = [\"GET\"]\npath = \"/v1.0/apiclients\"\nupstream = \"verify\"\n",
        )
        .build();
    let config = dir.write("c.toml", toml.as_bytes());
    let tok = token("client-1", &[]);
    let out = run(&[
        "--config",
        config.to_str().unwrap(),
        "--token",
        &tok,
        "GET",
        "/v1.0/apiclients",
    ]);
    assert_allowed(&out);
    assert!(
        out.stdout.contains("5 key(s) fetched from"),
        "{}",
        out.stdout
    );
    assert_eq!(jwks.fetch_count(), 1);

    let failing = MockJwks::start_failing();
    let toml = toml.replace(&jwks.url(), &failing.url());
    let config = dir.write("c2.toml", toml.as_bytes());
    let out = run(&[
        "--config",
        config.to_str().unwrap(),
        "--token",
        &tok,
        "GET",
        "/v1.0/apiclients",
    ]);
    assert_refusal(&out, 503, "keys_unavailable", "token");
    assert!(out.stdout.contains("failed"), "{}", out.stdout);
}

// === bad config, bad arguments ===

#[test]
fn bad_config_and_bad_arguments_exit_64() {
    let dir = TempDir::new();
    let bad = dir.write(
        "bad.toml",
        b"[server]\nlisten = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"r\"\npath = \"/x\"\nupstream = \"nowhere\"\n",
    );
    let out = run(&["--config", bad.to_str().unwrap(), "GET", "/x"]);
    assert_eq!(out.code, EXIT_USAGE, "{}", out.stderr);
    assert!(out.stderr.contains("routes[0].upstream"), "{}", out.stderr);
    assert!(out.stderr.contains("error(s)"), "{}", out.stderr);
    assert!(out.stdout.is_empty());

    let config = write_config(&dir, STATIC_CLIENTS);
    let config = config.to_str().unwrap();
    for list in [
        vec!["--config", config, "-H", "no colon", "GET", "/x"],
        vec!["--config", config, "-H", "Bad Name: v", "GET", "/x"],
        vec![
            "--config",
            config,
            "--token-file",
            "/nonexistent/t",
            "GET",
            "/x",
        ],
        vec!["--config", config, "--body", "/nonexistent/b", "PUT", "/x"],
        vec!["--config", config, "GE T", "/x"],
    ] {
        let out = run(&list);
        assert_eq!(
            out.code, EXIT_USAGE,
            "{list:?}: {}{}",
            out.stdout, out.stderr
        );
        assert!(
            out.stderr.starts_with("explain: "),
            "{list:?}: {}",
            out.stderr
        );
    }
}

#[test]
fn token_and_token_file_conflict() {
    let parsed = Cli::try_parse_from([
        "explain",
        "--config",
        "c.toml",
        "--token",
        "a",
        "--token-file",
        "f",
        "GET",
        "/x",
    ]);
    assert!(parsed.is_err());
}

#[test]
fn debug_of_the_arguments_hides_the_token() {
    let tok = token("client-1", &[]);
    let a = args(&["--config", "c.toml", "--token", &tok, "GET", "/x"]);
    assert!(!format!("{a:?}").contains(&tok));
}

#[tokio::test]
async fn works_inside_a_tokio_runtime() {
    let dir = TempDir::new();
    let config = write_config(&dir, STATIC_CLIENTS);
    let tok = token("client-1", &["readAPIClients"]);
    let out = run(&[
        "--config",
        config.to_str().unwrap(),
        "--token",
        &tok,
        "GET",
        "/v1.0/apiclients",
    ]);
    assert_allowed(&out);
}

#[test]
fn ipv4_mapped_peer_is_matched_as_ipv4() {
    let dir = TempDir::new();
    let config = write_config(&dir, STATIC_CLIENTS);
    let tok = token("ten-only", &["readAPIClients"]);
    let out = run(&[
        "--config",
        config.to_str().unwrap(),
        "--token",
        &tok,
        "--from",
        "::ffff:10.9.8.7",
        "GET",
        "/internal/status",
    ]);
    assert_allowed(&out);
    assert!(out.stdout.contains("peer 10.9.8.7"), "{}", out.stdout);
}

// === the binary ===

fn binary_has_explain() -> bool {
    let help = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("--help")
        .output()
        .expect("run portcullis --help");
    let text = String::from_utf8_lossy(&help.stdout);
    let has = text.lines().any(|l| l.trim_start().starts_with("explain"));
    if !has {
        eprintln!("SKIP: `portcullis --help` lists no `explain` subcommand yet");
    }
    has
}

#[test]
fn binary_allows_and_refuses_with_exit_codes() {
    if !binary_has_explain() {
        return;
    }
    let dir = TempDir::new();
    let config = write_config(&dir, STATIC_CLIENTS);
    let tok = token("client-1", &["readAPIClients", "manageAPIClients"]);
    let token_file = dir.write("token", tok.as_bytes());
    let bin = env!("CARGO_BIN_EXE_portcullis");

    let out = Command::new(bin)
        .args(["explain", "--config"])
        .arg(&config)
        .arg("--token-file")
        .arg(&token_file)
        .args(["GET", "/v1.0/apiclients"])
        .output()
        .expect("run explain");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("DECISION: allow — would forward to upstream \"verify\""),
        "{stdout}"
    );
    assert!(!stdout.contains(&tok));

    let weak = token("reader", &["readAPIClients"]);
    let out = Command::new(bin)
        .args(["explain", "--config"])
        .arg(&config)
        .args(["--token", &weak, "PUT", "/v1.0/apiclients/other"])
        .output()
        .expect("run explain");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "DECISION: refuse — 403 insufficient_entitlements: missing entitlements: manageAPIClients"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("[refused at: entitlements]"), "{stdout}");
    assert!(!stdout.contains(&weak));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&weak));
}
