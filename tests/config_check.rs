//! `portcullis check --config FILE`: the shipped config validates, a bad
//! config reports every error with its key path and exits 64 (EX_USAGE), and
//! a shadowed route is a warning, not an error. The same checks through
//! `config::load_str`.

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

/// Names of the env vars a config refers to (`..._env = "NAME"`), for
/// secrets a deployment provides.
fn referenced_env_vars(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("_env") {
        rest = &rest[i + 4..];
        let after = rest.trim_start();
        let Some(after) = after.strip_prefix('=') else {
            continue;
        };
        let after = after.trim_start();
        let Some(after) = after.strip_prefix('"') else {
            continue;
        };
        if let Some(end) = after.find('"') {
            names.push(after[..end].to_string());
        }
    }
    names
}

/// Runs `portcullis check --config FILE` (at most 30 s).
fn check(config: &Path) -> Outcome {
    check_with_env(config, &[])
}

/// Like [`check`] with extra environment variables for the child.
fn check_with_env(config: &Path, env: &[(String, String)]) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("check")
        .arg("--config")
        .arg(config)
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
            panic!("`portcullis check` did not exit within 30 s");
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
