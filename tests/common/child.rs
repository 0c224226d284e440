//! The `portcullis` binary in child processes: several gateways at once, each
//! with its own ports, config file, environment and log (the cluster tests of
//! issue 16 run three replicas against one Redis), and one-shot runs of the
//! binary (`check`, `explain`).
//!
//! * [`GatewayProcess::start`] writes the config of a [`ConfigBuilder`] (plus
//!   a private `upgrade_sock` and `pid_file`) to a scratch directory, runs
//!   `portcullis run --config FILE` with the given environment, waits (at
//!   most 15 s) for `/readyz`, and kills the process on drop;
//! * [`metric_value`] reads one series (or the sum of several) from a
//!   Prometheus text exposition;
//! * [`run_portcullis`] runs the binary once with a deadline.
//!
//! Loopback only; every wait is bounded.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{bearer, build_request, toml_str, try_send_raw, ConfigBuilder, RawResponse};

/// How long a child gateway may take to become ready (a debug binary, on a
/// machine whose two cores other builds share).
pub const CHILD_READY_TIMEOUT: Duration = Duration::from_secs(15);

// === scratch directories ===

/// A fresh directory under the system temp dir, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "portcullis-{tag}-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).expect("create a scratch dir");
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `contents` to `name` in the directory; returns its path.
    pub fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).expect("write a scratch file");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// === a gateway process ===

/// `portcullis run` in a child process (killed on drop).
pub struct GatewayProcess {
    child: Child,
    proxy: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    dir: Scratch,
}

impl GatewayProcess {
    /// Starts the binary on `builder`'s config with `env` added to its
    /// environment, and waits for `/readyz` 200; panics with the log if it
    /// does not come.
    pub fn start(tag: &str, builder: &ConfigBuilder, env: &[(&str, &str)]) -> GatewayProcess {
        let mut gw = Self::spawn(tag, builder, env);
        gw.wait_ready();
        gw
    }

    /// Starts the binary without waiting for anything.
    pub fn spawn(tag: &str, builder: &ConfigBuilder, env: &[(&str, &str)]) -> GatewayProcess {
        let dir = Scratch::new(&format!("gw-{tag}"));
        let b = builder
            .clone()
            .server("shutdown_timeout_seconds = 1")
            .server(&format!(
                "upgrade_sock = {}",
                toml_str(&dir.path("upgrade.sock").to_string_lossy())
            ))
            .server(&format!(
                "pid_file = {}",
                toml_str(&dir.path("portcullis.pid").to_string_lossy())
            ));
        let config = dir.write("portcullis.toml", b.build().as_bytes());
        let log = dir.path("gateway.log");
        let out = std::fs::File::create(&log).expect("create the gateway log");
        let err = out.try_clone().expect("clone the gateway log handle");
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn the portcullis binary");
        GatewayProcess {
            child,
            proxy: SocketAddr::from(([127, 0, 0, 1], b.proxy_port)),
            admin: SocketAddr::from(([127, 0, 0, 1], b.admin_port)),
            config,
            log,
            dir,
        }
    }

    /// Waits (at most [`CHILD_READY_TIMEOUT`]) for `/readyz` 200; panics with
    /// the log otherwise.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + CHILD_READY_TIMEOUT;
        loop {
            if !self.alive() {
                panic!(
                    "the gateway {} exited before it was ready; log:\n{}",
                    self.proxy,
                    self.log_text()
                );
            }
            if self.readyz() == Some(200) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the gateway {} was not ready within {CHILD_READY_TIMEOUT:?}; log:\n{}",
                    self.proxy,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits (at most [`CHILD_READY_TIMEOUT`]) until the proxy listener
    /// answers `GET target` with `token` 200 (for a gateway whose readiness
    /// is not the point); panics with the last answer and the log otherwise.
    pub fn wait_serving(&mut self, target: &str, token: &str) {
        let deadline = Instant::now() + CHILD_READY_TIMEOUT;
        loop {
            if !self.alive() {
                panic!(
                    "the gateway {} exited; log:\n{}",
                    self.proxy,
                    self.log_text()
                );
            }
            let auth = bearer(token);
            let last =
                match self.try_request("GET", target, &[("Authorization", auth.as_str())], None) {
                    Ok(r) if r.status == 200 => return,
                    Ok(r) => r.describe(),
                    Err(e) => e,
                };
            if Instant::now() >= deadline {
                panic!(
                    "GET {target} on {} never answered 200; last: {last}\nlog:\n{}",
                    self.proxy,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn proxy(&self) -> SocketAddr {
        self.proxy
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// The config file the process runs with.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The scratch directory of this process (config, log, sockets).
    pub fn dir(&self) -> &Scratch {
        &self.dir
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// One request to the proxy listener.
    pub fn try_request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<RawResponse, String> {
        try_send_raw(self.proxy, &build_request(method, target, headers, body))
    }

    /// One request to the proxy listener; panics (with the log) when no
    /// response comes.
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> RawResponse {
        self.try_request(method, target, headers, body)
            .unwrap_or_else(|e| {
                panic!(
                    "{method} {target} on {}: {e}\nlog:\n{}",
                    self.proxy,
                    self.log_text()
                )
            })
    }

    /// `GET target` with `Authorization: Bearer token`.
    pub fn get(&self, target: &str, token: &str) -> RawResponse {
        let auth = bearer(token);
        self.request("GET", target, &[("Authorization", auth.as_str())], None)
    }

    /// [`GatewayProcess::get`] and how long the answer took.
    pub fn timed_get(&self, target: &str, token: &str) -> (RawResponse, Duration) {
        let started = Instant::now();
        let r = self.get(target, token);
        (r, started.elapsed())
    }

    /// A request to the admin listener.
    pub fn admin_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<RawResponse, String> {
        try_send_raw(self.admin, &build_request(method, path, headers, None))
    }

    /// `POST path` on the admin listener with `Authorization: Bearer token`.
    pub fn admin_post(&self, path: &str, token: &str) -> RawResponse {
        let auth = bearer(token);
        self.admin_request("POST", path, &[("Authorization", auth.as_str())])
            .unwrap_or_else(|e| panic!("POST {path} on {}: {e}", self.admin))
    }

    /// The status of `GET /readyz`, `None` when nothing answers.
    pub fn readyz(&self) -> Option<u16> {
        self.admin_request("GET", "/readyz", &[])
            .ok()
            .map(|r| r.status)
    }

    /// The `/metrics` exposition (empty when nothing answers).
    pub fn metrics(&self) -> String {
        self.admin_request("GET", "/metrics", &[])
            .map(|r| r.body_str())
            .unwrap_or_default()
    }

    /// The sum of the series of `name` whose labels include `labels`
    /// (0 when there is none).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics(), name, labels).unwrap_or(0.0)
    }

    /// The whole log (stdout and stderr).
    pub fn log_all(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last 40 lines of the log, for failure messages.
    pub fn log_text(&self) -> String {
        let all = self.log_all();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Kills the process now (also done on drop).
    pub fn kill(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

// === metrics ===

/// One sample line of a Prometheus text exposition.
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        // name="value" pairs; values may hold escaped quotes and commas.
        let mut chars = body.char_indices().peekable();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()? {
                            (_, '\\') => {
                                let (_, e) = chars.next()?;
                                value.push(if e == 'n' { '\n' } else { e });
                            }
                            (_, '"') => break,
                            (_, c) => value.push(c),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                c => key.push(c),
            }
        }
        rest = &body[end? + 1..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The sum of the samples named `name` whose labels include every pair of
/// `labels`; `None` when no sample matches.
pub fn metric_value(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for sample in exposition.lines().filter_map(parse_sample) {
        if sample.name != name {
            continue;
        }
        let matches = labels
            .iter()
            .all(|(k, want)| sample.labels.iter().any(|(lk, lv)| lk == k && lv == want));
        if matches {
            *found.get_or_insert(0.0) += sample.value;
        }
    }
    found
}

// === one-shot runs of the binary ===

/// What a run of the binary produced.
#[derive(Debug)]
pub struct BinaryOutcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl BinaryOutcome {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Runs `portcullis ARGS` with `env` added (at most `timeout`); panics when
/// it does not exit in time.
pub fn run_portcullis<S: AsRef<OsStr>>(
    args: &[S],
    env: &[(&str, &str)],
    timeout: Duration,
) -> BinaryOutcome {
    let dir = Scratch::new("run");
    let out_path = dir.path("stdout");
    let err_path = dir.path("stderr");
    // Files, not pipes: a chatty child never blocks on a full pipe while
    // this waits for it with a deadline.
    let out = std::fs::File::create(&out_path).expect("create stdout file");
    let err = std::fs::File::create(&err_path).expect("create stderr file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("run the portcullis binary");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let shown: Vec<String> = args
                .iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect();
            panic!(
                "`portcullis {}` did not exit within {timeout:?}",
                shown.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    BinaryOutcome {
        code: status.code(),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// `portcullis explain --config CONFIG --token TOKEN GET TARGET`, which must
/// exit 0 (allow): its `quota` step line, if any, and its whole stdout.
pub fn explain_quota_line(config: &Path, token: &str, target: &str) -> (Option<String>, String) {
    let out = run_portcullis(
        &[
            "explain".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
            "--token".as_ref(),
            token.as_ref(),
            "GET".as_ref(),
            target.as_ref(),
        ],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(0), "explain GET {target}:\n{}", out.all());
    let line = out
        .stdout
        .lines()
        .find(|l| {
            let mut words = l.split_whitespace();
            let _mark = words.next();
            words.next() == Some("quota")
        })
        .map(str::to_string);
    (line, out.stdout)
}
