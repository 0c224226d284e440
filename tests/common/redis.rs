//! A real `redis-server` for the cluster tests (issue 16), on a free
//! loopback port, with a minimal RESP client to look inside it.
//!
//! * [`RedisServer::start`] spawns `redis-server --port P --bind 127.0.0.1
//!   --save "" --appendonly no` (optionally `--requirepass`), waits (at most
//!   10 s) until it answers `PING`, and kills it on drop;
//! * [`RedisServer::kill`] / [`RedisServer::restart`] take it away and bring
//!   it back on the same port (an empty database: nothing is persisted);
//!   [`RedisServer::freeze`] / [`RedisServer::thaw`] stop and continue the
//!   process (`SIGSTOP` / `SIGCONT`): connections are still accepted by the
//!   kernel but nothing is answered, the "slower than `timeout_ms`" case;
//! * [`RedisServer::command`], [`RedisServer::keys`] speak RESP2 over one
//!   short-lived connection with timeouts;
//! * [`RedisServer::start_tls`] serves TLS only (`rediss://`), for which
//!   the test talks to it through `redis-cli --tls`.
//!
//! Without the `redis-server` binary the test FAILS with a message saying how
//! to install it (`make test-deps`): a cluster test never skips silently.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::free_port;

/// How long a test waits for a (re)started server to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect, read and write timeout of the test's own RESP client.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text (simple, error, integer or bulk string).
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Simple(s) | Reply::Error(s) => Some(s.clone()),
            Reply::Int(i) => Some(i.to_string()),
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    pub fn int(&self) -> Option<i64> {
        match self {
            Reply::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// The certificate files of a TLS-only server.
#[derive(Debug, Clone)]
pub struct RedisTls {
    /// The CA that signed `cert` (PEM).
    pub ca: PathBuf,
    /// The server's certificate (PEM), for 127.0.0.1.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// A `redis-server` child process on `127.0.0.1:port` (killed on drop).
pub struct RedisServer {
    port: u16,
    password: Option<String>,
    extra_args: Vec<String>,
    tls: Option<RedisTls>,
    child: Option<Child>,
    dir: PathBuf,
}

impl RedisServer {
    /// A server without a password.
    pub fn start() -> RedisServer {
        Self::start_with(None, &[])
    }

    /// A server started with `--requirepass password`.
    pub fn start_with_password(password: &str) -> RedisServer {
        Self::start_with(Some(password), &[])
    }

    /// A server that speaks TLS only (`--port 0 --tls-port P`), clients
    /// not authenticated by certificate.
    pub fn start_tls(tls: RedisTls) -> RedisServer {
        Self::start_inner(None, &[], Some(tls))
    }

    /// A server with `password` and extra command-line arguments.
    pub fn start_with(password: Option<&str>, extra_args: &[&str]) -> RedisServer {
        Self::start_inner(password, extra_args, None)
    }

    fn start_inner(
        password: Option<&str>,
        extra_args: &[&str],
        tls: Option<RedisTls>,
    ) -> RedisServer {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-redis-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).expect("create the redis scratch dir");
        let mut server = RedisServer {
            port: free_port(),
            password: password.map(str::to_string),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            tls,
            child: None,
            dir,
        };
        server.spawn_and_wait();
        server
    }

    fn spawn_and_wait(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let log_path = self.log_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("create the redis log");
        let log_err = log.try_clone().expect("clone the redis log handle");
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => {
                cmd.args(["--port", &self.port.to_string()]);
            }
            Some(tls) => {
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(&tls.cert)
                    .arg("--tls-key-file")
                    .arg(&tls.key)
                    .arg("--tls-ca-cert-file")
                    .arg(&tls.ca)
                    .args(["--tls-auth-clients", "no"]);
            }
        }
        cmd.args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir);
        if let Some(pw) = &self.password {
            cmd.args(["--requirepass", pw]);
        }
        cmd.args(&self.extra_args);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `redis-server` ({e}): the cluster tests need it on the PATH. \
                     Install the Debian package `redis-server` (`make test-deps` does)."
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.ping().is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "redis-server exited at start ({status}) on port {}; log:\n{}",
                        self.port,
                        self.log_text()
                    );
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "redis-server on port {} did not answer PING within {START_TIMEOUT:?}; log:\n{}",
                    self.port,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT/0` (`rediss://` for a TLS server; no
    /// password in it).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// The server's log (every start appended).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills the server at once (`SIGKILL`), as a crash would, and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty: nothing is persisted)
    /// and waits until it answers `PING`.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn_and_wait();
    }

    /// Stops the process (`SIGSTOP`): connections are accepted by the kernel,
    /// commands are never answered until [`RedisServer::thaw`].
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Continues a frozen process (`SIGCONT`).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid().expect("redis-server is not running");
        let status = Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {pid} failed: {status}");
    }

    /// `PING` (after `AUTH` when the server has a password).
    pub fn ping(&self) -> Result<(), String> {
        if self.tls.is_some() {
            let out = self.cli(&["PING"])?;
            return match out.trim() {
                "PONG" => Ok(()),
                other => Err(format!("PING answered {other:?}")),
            };
        }
        match self.command(&["PING"])? {
            Reply::Simple(s) if s == "PONG" => Ok(()),
            other => Err(format!("PING answered {other:?}")),
        }
    }

    /// Sends one command on a fresh connection (authenticating first when the
    /// server has a password) and returns its reply.
    pub fn command(&self, args: &[&str]) -> Result<Reply, String> {
        let stream = TcpStream::connect_timeout(&self.addr(), CLIENT_TIMEOUT)
            .map_err(|e| format!("connect {}: {e}", self.addr()))?;
        stream
            .set_read_timeout(Some(CLIENT_TIMEOUT))
            .map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(Some(CLIENT_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(stream);
        if let Some(pw) = &self.password {
            writer
                .write_all(&encode(&["AUTH", pw]))
                .map_err(|e| format!("write AUTH: {e}"))?;
            match read_reply(&mut reader)? {
                Reply::Simple(s) if s == "OK" => {}
                other => return Err(format!("AUTH answered {other:?}")),
            }
        }
        writer
            .write_all(&encode(args))
            .map_err(|e| format!("write {}: {e}", args.first().unwrap_or(&"")))?;
        read_reply(&mut reader)
    }

    /// `KEYS pattern`, sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        if self.tls.is_some() {
            let out = self
                .cli(&["KEYS", pattern])
                .unwrap_or_else(|e| panic!("KEYS {pattern}: {e}"));
            let mut keys: Vec<String> = out
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            keys.sort();
            return keys;
        }
        match self.command(&["KEYS", pattern]) {
            Ok(Reply::Array(Some(items))) => {
                let mut keys: Vec<String> = items.iter().filter_map(Reply::text).collect();
                keys.sort();
                keys
            }
            other => panic!("KEYS {pattern} answered {other:?}"),
        }
    }

    /// `redis-cli --tls` (the RESP client of this module speaks plain
    /// TCP only): one command, its raw output (5 s at most).
    fn cli(&self, args: &[&str]) -> Result<String, String> {
        let tls = self.tls.as_ref().ok_or("not a TLS server")?;
        let mut cmd = Command::new("redis-cli");
        cmd.args(["--tls", "--cacert"]).arg(&tls.ca).args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
        ]);
        if let Some(pw) = &self.password {
            cmd.args(["--no-auth-warning", "-a", pw]);
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("run redis-cli (Debian package redis-tools): {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait().map_err(|e| e.to_string())?.is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("redis-cli did not exit within 5 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli {args:?}: {} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `PTTL key` (-2: no such key, -1: no expiry).
    pub fn pttl(&self, key: &str) -> i64 {
        match self.command(&["PTTL", key]) {
            Ok(Reply::Int(ms)) => ms,
            other => panic!("PTTL {key} answered {other:?}"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL also ends a stopped (frozen) process.
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A command as a RESP array of bulk strings.
fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn read_line(reader: &mut impl BufRead) -> Result<String, String> {
    let mut line = Vec::new();
    reader
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("read: {e}"))?;
    if line.is_empty() {
        return Err("connection closed".into());
    }
    if !line.ends_with(b"\r\n") {
        return Err(format!(
            "truncated line {:?}",
            String::from_utf8_lossy(&line)
        ));
    }
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn read_reply(reader: &mut impl BufRead) -> Result<Reply, String> {
    let line = read_line(reader)?;
    let (kind, rest) = line.split_at(line.chars().next().map_or(0, char::len_utf8));
    let number = |s: &str| -> Result<i64, String> {
        s.parse()
            .map_err(|_| format!("bad number in reply line {line:?}"))
    };
    match kind {
        "+" => Ok(Reply::Simple(rest.to_string())),
        "-" => Ok(Reply::Error(rest.to_string())),
        ":" => Ok(Reply::Int(number(rest)?)),
        "$" => {
            let n = number(rest)?;
            if n < 0 {
                return Ok(Reply::Bulk(None));
            }
            let mut buf = vec![0u8; n as usize + 2];
            reader
                .read_exact(&mut buf)
                .map_err(|e| format!("read bulk: {e}"))?;
            buf.truncate(n as usize);
            Ok(Reply::Bulk(Some(buf)))
        }
        "*" => {
            let n = number(rest)?;
            if n < 0 {
                return Ok(Reply::Array(None));
            }
            let mut items = Vec::with_capacity(n as usize);
            for _ in 0..n {
                items.push(read_reply(reader)?);
            }
            Ok(Reply::Array(Some(items)))
        }
        _ => Err(format!("unexpected reply line {line:?}")),
    }
}
