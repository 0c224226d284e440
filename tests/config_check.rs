//! `portcullis check --config FILE`: the shipped config validates, a bad
//! config reports every error with its key path and exits 64 (EX_USAGE), and
//! a shadowed route is a warning, not an error. The same checks through
//! `config::load_str`.
//!
//! Secrets: `check` validates the config, not the environment. Every shipped
//! config (the example, the demo's, the Kubernetes ConfigMap's) passes
//! `check` with its secrets' variables removed from the environment, with
//! one warning per secret; `check --require-env` and `run` refuse to go on
//! without them (exit 64, naming each); `explain` decides what it can.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A config with five independent semantic errors (0-based key paths):
/// `issuers[1].jwks_file` (missing file), `routes[1].upstream` (unknown
/// name), `routes[2].ip_allow` (bad CIDR), `routes[3].path` (bad template),
/// `routes[4].issuers` (unknown issuer).
const SEMANTIC_ERRORS: &str = r#"
[server]
listen = ["127.0.0.1:18080"]

[admin]
listen = "127.0.0.1:19090"

[[issuers]]
name = "main"
issuer = "https://idp.test"
algorithms = ["RS256"]
jwks_url = "http://127.0.0.1:1/jwks"

[[issuers]]
name = "filed"
issuer = "https://filed.test"
algorithms = ["RS256"]
jwks_file = "does-not-exist/jwks.json"

[[upstreams]]
name = "verify"
url = "http://127.0.0.1:18081"

[[routes]]
name = "fine"
path = "/v1.0/apiclients"
upstream = "verify"

[[routes]]
name = "typo-upstream"
path = "/v1.0/apiclients/{id}"
upstream = "verfy"

[[routes]]
name = "bad-cidr"
path = "/a/{id}"
upstream = "verify"
ip_allow = ["10.0.0.0/33"]

[[routes]]
name = "bad-template"
path = "/b/{id"
upstream = "verify"

[[routes]]
name = "unknown-issuer"
path = "/c/{id}"
upstream = "verify"
issuers = ["nobody"]
"#;

/// Appended to [`SEMANTIC_ERRORS`]: `routes[5]` with an unknown key.
const UNKNOWN_KEY: &str = r#"
[[routes]]
name = "typo-key"
path = "/d"
upstream = "verify"
methdos = ["GET"]
"#;

const SEMANTIC_PATHS: [&str; 5] = [
    "issuers[1].jwks_file",
    "routes[1].upstream",
    "routes[2].ip_allow",
    "routes[3].path",
    "routes[4].issuers",
];

/// A valid config whose second route can never match.
const SHADOWED: &str = r#"
[server]
listen = ["127.0.0.1:18080"]

[admin]
listen = "127.0.0.1:19090"

[[upstreams]]
name = "verify"
url = "http://127.0.0.1:18081"

[[routes]]
name = "every-method-on-a-client"
path = "/v1.0/apiclients/{id}"
upstream = "verify"
auth = "none"

[[routes]]
name = "put-a-client"
methods = ["PUT"]
path = "/v1.0/apiclients/{id}"
upstream = "verify"
auth = "none"
"#;

/// A fresh directory under the system temp dir for this test's files,
/// removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("portcullis-check-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// The secrets a config refers to: (key path as validation names it, env
/// var), e.g. `("upstreams[1].auth.bearer_env", "ONELOGIN_API_TOKEN")`.
fn secret_keys(text: &str) -> Vec<(String, String)> {
    fn walk(v: &toml::Value, path: &str, out: &mut Vec<(String, String)>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    match v {
                        toml::Value::String(s) if k.ends_with("_env") => {
                            out.push((key, s.clone()));
                        }
                        _ => walk(v, &key, out),
                    }
                }
            }
            toml::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let table: toml::Table = toml::from_str(text).expect("the config is TOML");
    let mut out = Vec::new();
    walk(&toml::Value::Table(table), "", &mut out);
    out
}

/// Names of the env vars a config refers to (`..._env = "NAME"`), for
/// secrets a deployment provides.
fn referenced_env_vars(text: &str) -> Vec<String> {
    secret_keys(text).into_iter().map(|(_, var)| var).collect()
}

/// Runs `portcullis check --config FILE` (at most 30 s).
fn check(config: &Path) -> Outcome {
    check_with_env(config, &[])
}

/// Like [`check`] with extra environment variables for the child.
fn check_with_env(config: &Path, env: &[(String, String)]) -> Outcome {
    let args = ["check".to_string(), "--config".into(), path_arg(config)];
    portcullis(&args, env, &[])
}

fn path_arg(path: &Path) -> String {
    path.to_str().expect("a UTF-8 path").to_string()
}

/// Runs the built binary with `args` (at most 30 s), `set` added to its
/// environment and `removed` taken out of it.
fn portcullis(args: &[String], set: &[(String, String)], removed: &[String]) -> Outcome {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    for name in removed {
        command.env_remove(name);
    }
    let mut child = command
        .envs(set.iter().map(|(k, v)| (k, v)))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the portcullis binary");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`portcullis {}` did not exit within 30 s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn the_shipped_config_passes_check() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/portcullis.toml");
    if !path.exists() {
        println!("SKIPPED: {} does not exist yet", path.display());
        return;
    }
    // Secrets come from the environment in a deployment: provide dummies.
    let text = std::fs::read_to_string(&path).expect("read the shipped config");
    let env: Vec<(String, String)> = referenced_env_vars(&text)
        .into_iter()
        .map(|name| (name, "dummy-secret-for-check-0123456789abcdef".to_string()))
        .collect();
    let out = check_with_env(&path, &env);
    assert_eq!(
        out.code,
        Some(0),
        "check of {} failed:\n{}",
        path.display(),
        out.all()
    );
}

#[test]
fn check_reports_every_semantic_error_and_exits_64() {
    let dir = Scratch::new("semantic");
    let path = write(&dir, "bad.toml", SEMANTIC_ERRORS);
    let out = check(&path);
    assert_eq!(out.code, Some(64), "exit code; output:\n{}", out.all());
    let missing: Vec<&str> = SEMANTIC_PATHS
        .iter()
        .copied()
        .filter(|p| !out.stderr.contains(p))
        .collect();
    assert!(
        missing.is_empty(),
        "stderr lacks {missing:?}:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("bad.toml"),
        "stderr does not name the file:\n{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("routes[0]"),
        "the valid route was reported:\n{}",
        out.stderr
    );
}

#[test]
fn check_reports_an_unknown_key_together_with_the_other_errors() {
    let dir = Scratch::new("unknown-key");
    let path = write(
        &dir,
        "typo.toml",
        &format!("{SEMANTIC_ERRORS}{UNKNOWN_KEY}"),
    );
    let out = check(&path);
    assert_eq!(out.code, Some(64), "exit code; output:\n{}", out.all());
    let mut missing: Vec<&str> = SEMANTIC_PATHS
        .iter()
        .copied()
        .filter(|p| !out.stderr.contains(p))
        .collect();
    if !out
        .stderr
        .lines()
        .any(|l| l.contains("routes[5]") && l.contains("methdos"))
    {
        missing.push("routes[5] ... methdos");
    }
    assert!(
        missing.is_empty(),
        "stderr lacks {missing:?}:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("typo.toml"),
        "stderr does not name the file:\n{}",
        out.stderr
    );
}

#[test]
fn check_accepts_a_shadowed_route_with_a_warning_naming_both() {
    let dir = Scratch::new("shadowed");
    let path = write(&dir, "shadowed.toml", SHADOWED);
    let out = check(&path);
    assert_eq!(out.code, Some(0), "exit code; output:\n{}", out.all());
    let warning = out
        .all()
        .lines()
        .find(|l| l.contains("put-a-client"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no warning names the shadowed route:\n{}", out.all()));
    assert!(
        warning.contains("every-method-on-a-client"),
        "the warning does not name the shadowing route: {warning}"
    );
}

#[test]
fn check_rejects_text_that_is_not_toml() {
    let dir = Scratch::new("syntax");
    let path = write(&dir, "broken.toml", "[server\nlisten = [\"127.0.0.1:1\"]\n");
    let out = check(&path);
    assert_eq!(out.code, Some(64), "exit code; output:\n{}", out.all());
    assert!(
        out.stderr.contains("broken.toml"),
        "stderr does not name the file:\n{}",
        out.stderr
    );
}

#[test]
fn load_str_lists_every_error_one_per_line() {
    let origin = Path::new("/nonexistent-dir/multi.toml");
    let errors =
        match portcullis::config::load_str(&format!("{SEMANTIC_ERRORS}{UNKNOWN_KEY}"), origin) {
            Ok(_) => panic!("a config with six errors loaded"),
            Err(e) => e.to_string(),
        };
    for p in SEMANTIC_PATHS.iter().chain(["routes[5]"].iter()) {
        assert!(
            errors
                .lines()
                .any(|l| l.starts_with("/nonexistent-dir/multi.toml: ") && l.contains(p)),
            "no line \"/nonexistent-dir/multi.toml: {p}...\" in:\n{errors}"
        );
    }
    assert!(
        errors.lines().count() >= 6,
        "fewer lines than errors:\n{errors}"
    );
}

#[test]
fn load_str_warns_about_a_shadowed_route() {
    let loaded = portcullis::config::load_str(SHADOWED, &common::inline_config_origin())
        .unwrap_or_else(|e| panic!("a shadowed route is not an error:\n{e}"));
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.contains("put-a-client") && w.contains("every-method-on-a-client")),
        "warnings {:?}",
        loaded.warnings
    );
}

// === secrets: `check` validates the config, not the environment ===

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A value long enough for every secret of the shipped configs (HS256
/// needs 32 bytes).
const DUMMY: &str = "dummy-secret-for-check-0123456789abcdef";

/// One shipped config, as a file `check` can read.
struct Shipped {
    label: &'static str,
    path: PathBuf,
    text: String,
    /// Holds the ConfigMap's copy of the image layout.
    _scratch: Option<Scratch>,
}

/// The example, the demo's config and the Kubernetes ConfigMap's TOML. The
/// ConfigMap is mounted at /etc/portcullis/config/ in an image whose
/// /etc/portcullis is the repo's `config/` (deploy/Dockerfile): it is
/// written into a copy of that layout so its `../catalogs/` path resolves.
fn shipped_configs() -> Vec<Shipped> {
    let mut list = vec![
        shipped_file("example", "config/portcullis.toml"),
        shipped_file("demo", "config/demo.toml"),
    ];
    let manifest = std::fs::read_to_string(repo().join("deploy/kubernetes/configmap.yaml"))
        .expect("read the ConfigMap");
    let map: serde_yaml_ng::Value = serde_yaml_ng::from_str(&manifest).expect("ConfigMap YAML");
    let text = map["data"]["portcullis.toml"]
        .as_str()
        .expect("the ConfigMap holds portcullis.toml")
        .to_string();
    let image = Scratch::new("configmap-image");
    copy_dir(&repo().join("config"), &image);
    std::fs::create_dir_all(image.join("config")).expect("mount dir");
    let path = write(&image.join("config"), "portcullis.toml", &text);
    list.push(Shipped {
        label: "kubernetes configmap",
        path,
        text,
        _scratch: Some(image),
    });
    list
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("list dir") {
        let path = entry.expect("dir entry").path();
        let dest = to.join(path.file_name().expect("file name"));
        if path.is_dir() {
            copy_dir(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).expect("copy file");
        }
    }
}

fn shipped_file(label: &'static str, file: &str) -> Shipped {
    let path = repo().join(file);
    let text = std::fs::read_to_string(&path).expect("read a shipped config");
    Shipped {
        label,
        path,
        text,
        _scratch: None,
    }
}

fn example() -> Shipped {
    shipped_file("example", "config/portcullis.toml")
}

fn vars(secrets: &[(String, String)]) -> Vec<String> {
    secrets.iter().map(|(_, var)| var.clone()).collect()
}

/// The warning `check` prints for a secret whose variable is not set.
fn unset_warning(config: &Path, key: &str, var: &str) -> String {
    format!(
        "{}: {key}: environment variable {var} is not set (required at run)",
        config.display()
    )
}

#[test]
fn every_shipped_config_passes_check_without_its_secrets() {
    for shipped in shipped_configs() {
        let secrets = secret_keys(&shipped.text);
        if shipped.label != "demo" {
            assert!(
                secrets.len() >= 4,
                "{}: expected the example's four secrets, found {secrets:?}",
                shipped.label
            );
        }
        let args = [
            "check".to_string(),
            "--config".into(),
            path_arg(&shipped.path),
        ];
        let out = portcullis(&args, &[], &vars(&secrets));
        assert_eq!(
            out.code,
            Some(0),
            "{} without secrets:\n{}",
            shipped.label,
            out.all()
        );
        for (key, var) in &secrets {
            let line = unset_warning(&shipped.path, key, var);
            let found = out.stderr.lines().filter(|l| *l == line).count();
            assert_eq!(found, 1, "{}: {line:?} in:\n{}", shipped.label, out.stderr);
        }
        let warnings = out
            .stderr
            .lines()
            .filter(|l| l.ends_with("(required at run)"))
            .count();
        assert_eq!(
            warnings,
            secrets.len(),
            "{}: one warning per secret:\n{}",
            shipped.label,
            out.stderr
        );
        assert!(
            !out.all().contains("invalid"),
            "{}: something was reported invalid because of a secret:\n{}",
            shipped.label,
            out.all()
        );
        assert!(
            out.stdout.contains(": OK"),
            "{}: {}",
            shipped.label,
            out.stdout
        );
    }
}

#[test]
fn check_require_env_refuses_each_missing_secret_and_nothing_else() {
    let shipped = example();
    let secrets = secret_keys(&shipped.text);
    let args = [
        "check".to_string(),
        "--require-env".into(),
        "--config".into(),
        path_arg(&shipped.path),
    ];
    let out = portcullis(&args, &[], &vars(&secrets));
    assert_eq!(out.code, Some(64), "{}", out.all());
    for (key, var) in &secrets {
        let line = format!(
            "{}: {key}: environment variable {var} is not set",
            shipped.path.display()
        );
        assert!(
            out.stderr.lines().any(|l| l == line),
            "{line:?} in:\n{}",
            out.stderr
        );
    }
    assert!(
        out.stderr
            .contains(&format!("\n{} error(s)", secrets.len())),
        "one error per secret, no follow-on errors:\n{}",
        out.stderr
    );
    assert!(!out.stderr.contains("invalid"), "{}", out.stderr);

    // With every secret provided, the strict check passes too.
    let set: Vec<(String, String)> = vars(&secrets)
        .into_iter()
        .map(|v| (v, DUMMY.to_string()))
        .collect();
    let out = portcullis(&args, &set, &[]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    assert!(!out.stderr.contains("required at run"), "{}", out.stderr);
}

#[test]
fn check_says_when_a_secret_is_set_but_empty() {
    let shipped = example();
    let secrets = secret_keys(&shipped.text);
    let (key, var) = secrets
        .iter()
        .find(|(_, v)| v == "VCF_TOKEN_SECRET")
        .expect("the example's HMAC issuer")
        .clone();
    let set: Vec<(String, String)> = secrets
        .iter()
        .map(|(_, v)| (v.clone(), if *v == var { "" } else { DUMMY }.to_string()))
        .collect();
    let path = path_arg(&shipped.path);
    let out = portcullis(
        &["check".into(), "--config".into(), path.clone()],
        &set,
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.all());
    let line = format!(
        "{}: {key}: environment variable {var} is empty (required at run)",
        shipped.path.display()
    );
    assert!(out.stderr.lines().any(|l| l == line), "{}", out.stderr);

    let strict = [
        "check".into(),
        "--require-env".into(),
        "--config".into(),
        path,
    ];
    let out = portcullis(&strict, &set, &[]);
    assert_eq!(out.code, Some(64), "{}", out.all());
    assert!(
        out.stderr
            .contains(&format!("{key}: environment variable {var} is empty")),
        "{}",
        out.stderr
    );
}

#[test]
fn run_without_a_secret_exits_64_naming_it() {
    let shipped = example();
    let secrets = secret_keys(&shipped.text);
    let args = [
        "run".to_string(),
        "--config".into(),
        path_arg(&shipped.path),
    ];
    // One secret missing: exactly that one is named.
    let missing = "ONELOGIN_API_TOKEN";
    let set: Vec<(String, String)> = vars(&secrets)
        .into_iter()
        .filter(|v| v != missing)
        .map(|v| (v, DUMMY.to_string()))
        .collect();
    let out = portcullis(&args, &set, &[missing.to_string()]);
    assert_eq!(out.code, Some(64), "{}", out.all());
    assert!(
        out.stderr.contains(&format!(
            "upstreams[1].auth.bearer_env: environment variable {missing} is not set"
        )),
        "{}",
        out.stderr
    );
    assert_eq!(
        out.stderr.lines().count(),
        1,
        "only the missing secret is reported:\n{}",
        out.stderr
    );

    // None set: each one is named.
    let out = portcullis(&args, &[], &vars(&secrets));
    assert_eq!(out.code, Some(64), "{}", out.all());
    for (key, var) in &secrets {
        assert!(
            out.stderr
                .contains(&format!("{key}: environment variable {var} is not set")),
            "{var} not named:\n{}",
            out.stderr
        );
    }
}

#[test]
fn a_config_validated_without_its_secrets_never_serves() {
    let var = format!("PORTCULLIS_CHECK_NEVER_SET_{}", std::process::id());
    let text = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]

[admin]
listen = "127.0.0.2:0"

[[issuers]]
name = "hs"
issuer = "https://hs.test"
algorithms = ["HS512"]
hmac_secret_env = "{var}"

[[upstreams]]
name = "up"
url = "http://127.0.0.1:1"

[[routes]]
name = "all"
path = "/{{*rest}}"
upstream = "up"
"#
    );
    let origin = common::inline_config_origin();
    let strict = portcullis::config::load_str(&text, &origin)
        .expect_err("strict validation refuses a missing secret")
        .to_string();
    assert!(strict.contains(&var), "{strict}");

    let structural = || {
        portcullis::config::load_str_with(&text, &origin, portcullis::config::EnvMode::Structural)
            .unwrap_or_else(|e| panic!("structural validation failed:\n{e}"))
    };
    let loaded = structural();
    assert_eq!(
        loaded.config.unset_secrets,
        vec![portcullis::config::UnsetSecret {
            path: "issuers[0].hmac_secret_env".into(),
            env: var.clone(),
            empty: false,
        }]
    );
    // The placeholder is long enough for HS512 and fresh on every load.
    let secret = |config: &portcullis::config::Config| match &config.issuers[0].keys {
        portcullis::config::model::KeySource::HmacSecret { secret, .. } => secret.0.clone(),
        other => panic!("unexpected key source {other:?}"),
    };
    let again = structural();
    assert!(secret(&loaded.config).len() >= 64);
    assert_ne!(secret(&loaded.config), secret(&again.config));

    let refused = match portcullis::server::assemble(loaded.config) {
        Ok(_) => panic!("a config holding a placeholder secret was assembled to serve"),
        Err(e) => e,
    };
    assert!(
        refused.contains(&var) && refused.contains("cannot serve"),
        "{refused}"
    );
}

#[test]
fn explain_on_the_example_without_secrets_prints_every_step() {
    let shipped = example();
    let secrets = vars(&secret_keys(&shipped.text));
    let dir = Scratch::new("explain-example");
    // Signed with a secret that is not the deployment's: without
    // VCF_TOKEN_SECRET the signature cannot be checked either way.
    let key = common::TestKey::hmac(b"not-the-deployment-secret-0123456789abcdef");
    let mint = |roles: &[&str]| {
        common::TokenBuilder::new(&key)
            .iss("vcf-sddc-manager")
            .sub("alice")
            .claim("scope", serde_json::json!(roles))
            .build()
    };
    let admin = mint(&["ADMIN"]);
    let body = write(
        &dir,
        "idp.json",
        r#"{"name": "corp-ldap", "ldap": {"type": "ActiveDirectory"}}"#,
    );
    let explain = |token: &str| {
        let token_file = write(&dir, "token", token);
        let args = [
            "explain".to_string(),
            "--config".into(),
            path_arg(&shipped.path),
            "--token-file".into(),
            path_arg(&token_file),
            "--body".into(),
            path_arg(&body),
            "PATCH".into(),
            "/v1/identity-providers/idp-1".into(),
        ];
        portcullis(&args, &[], &secrets)
    };

    let out = explain(&admin);
    assert_eq!(out.code, Some(2), "undecided:\n{}", out.all());
    for step in [
        "request",
        "route",
        "client ip",
        "token",
        "client",
        "entitlements",
        "body",
        "forward",
    ] {
        assert!(
            out.stdout.lines().any(|l| {
                let l = l.trim_start();
                ["✓ ", "? ", "→ "]
                    .iter()
                    .any(|mark| l.starts_with(&format!("{mark}{step} ")))
            }),
            "no line for step {step:?}:\n{}",
            out.stdout
        );
    }
    let token_line = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("? token"))
        .unwrap_or_else(|| panic!("the token step is not undecided:\n{}", out.stdout));
    assert!(
        token_line.contains("VCF_TOKEN_SECRET is not set"),
        "{token_line}"
    );
    assert!(
        out.stdout.contains(
            "DECISION: unknown — would forward to upstream \"vcf\" (https://sddc-manager.example.com:443) if what could not be checked here passes: the token's signature ($VCF_TOKEN_SECRET is not set)"
        ),
        "{}",
        out.stdout
    );
    let warnings = out
        .stderr
        .lines()
        .filter(|l| l.ends_with("(required at run)"))
        .count();
    assert_eq!(warnings, secrets.len(), "{}", out.stderr);
    assert!(!out.all().contains(&admin), "the token was printed");

    // A refusal that does not depend on the secret is decided: exit 1.
    let viewer = mint(&["VIEWER"]);
    let out = explain(&viewer);
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(
        out.stdout
            .contains("DECISION: refuse — 403 insufficient_entitlements"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("[refused at: entitlements]"),
        "{}",
        out.stdout
    );
    assert!(!out.all().contains(&viewer), "the token was printed");
}

/// Two proxy listeners on one address, and the admin listener on a proxy
/// address (through a wildcard): pingora would hand one socket to both.
const SHARED_LISTENERS: &str = r#"
[server]
listen = ["127.0.0.1:18080", "127.0.0.1:18080", "0.0.0.0:18081"]

[admin]
listen = "127.0.0.1:18081"

[[upstreams]]
name = "app"
url = "http://127.0.0.1:1"

[[routes]]
name = "open"
path = "/open"
upstream = "app"
auth = "none"
"#;

#[test]
fn check_refuses_listeners_that_share_an_address() {
    let dir = Scratch::new("shared-listeners");
    let path = write(&dir, "listeners.toml", SHARED_LISTENERS);
    let out = check(&path);
    assert_eq!(out.code, Some(64), "exit code; output:\n{}", out.all());
    let line = |key: &str, other: &str| {
        out.stderr
            .lines()
            .any(|l| l.contains(&format!("{key}: ")) && l.contains(other))
    };
    assert!(
        line("server.listen[1]", "server.listen[0]"),
        "no error for the repeated proxy address:\n{}",
        out.stderr
    );
    assert!(
        line("admin.listen", "server.listen[2]"),
        "no error for the admin address under the wildcard:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("2 error(s)"),
        "expected exactly two errors:\n{}",
        out.stderr
    );
}
