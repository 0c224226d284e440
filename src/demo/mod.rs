//! `portcullis demo`: the gateway and a demo IAM service in one process,
//! and curl commands to try against them.
//!
//! 1. Check the ports, apply them to the embedded `config/demo.toml`
//!    (listeners, and every `http://127.0.0.1:8081` URL), write it with the
//!    entitlement catalogue and a fresh ES256 key into a private temporary
//!    directory, and validate it as `portcullis check` would.
//! 2. Start the demo IAM ([`iam::IamApp`]) on its own pingora server in a
//!    thread, and wait until it accepts connections: the gateway fetches the
//!    issuer's keys from it as soon as it starts.
//! 3. Assemble the gateway ([`crate::server::assemble`]); once the admin
//!    listener's `/readyz` answers 200, print the [`scenario`] blocks.
//! 4. Run the gateway in the foreground until SIGINT (Ctrl-C) or SIGTERM,
//!    then stop the IAM and remove the directory.

pub mod iam;
pub mod scenario;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora_core::services::listening::Service;

use crate::config::Config;
use crate::mint::{self, SigningKey};

/// The embedded demo configuration (`config/demo.toml`).
pub const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");

/// The catalogue `config/demo.toml` names, embedded so the demo runs from
/// any working directory.
pub const VERIFY_CATALOG: &str = include_str!("../../config/catalogs/verify-entitlements.tsv");

/// Where `config/demo.toml` expects the demo IAM.
pub const DEFAULT_IAM_URL: &str = "http://127.0.0.1:8081";

/// How long the demo waits for the gateway to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The ports of `portcullis demo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoOptions {
    /// Gateway (proxy) listener.
    pub port: u16,
    /// Admin listener (`/healthz`, `/readyz`, `/metrics`).
    pub admin_port: u16,
    /// Demo IAM service.
    pub iam_port: u16,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            port: 8080,
            admin_port: 9090,
            iam_port: 8081,
        }
    }
}

impl DemoOptions {
    fn iam_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.iam_port)
    }

    /// Distinct, non-zero ports.
    fn check(&self) -> Result<(), String> {
        let named = [
            ("--port", self.port),
            ("--admin-port", self.admin_port),
            ("--iam-port", self.iam_port),
        ];
        for (i, (flag, port)) in named.iter().enumerate() {
            if *port == 0 {
                return Err(format!("{flag} must be a port from 1 to 65535"));
            }
            if let Some((other, _)) = named[..i].iter().find(|(_, p)| p == port) {
                return Err(format!(
                    "{flag} and {other} are both {port}; choose distinct ports"
                ));
            }
        }
        Ok(())
    }
}

/// `config/demo.toml` with the ports of `opts` applied: `server.listen`,
/// `admin.listen`, and every URL starting with `http://127.0.0.1:8081`.
/// The result is TOML text (its comments are gone).
pub fn demo_config_text(opts: &DemoOptions) -> Result<String, String> {
    let mut table: toml::Table = DEMO_CONFIG
        .parse()
        .map_err(|e| format!("the embedded demo config is not TOML: {e}"))?;
    let server = table
        .get_mut("server")
        .and_then(toml::Value::as_table_mut)
        .ok_or("the embedded demo config has no [server]")?;
    server.insert(
        "listen".into(),
        toml::Value::Array(vec![toml::Value::String(format!(
            "127.0.0.1:{}",
            opts.port
        ))]),
    );
    let admin = table
        .get_mut("admin")
        .and_then(toml::Value::as_table_mut)
        .ok_or("the embedded demo config has no [admin]")?;
    admin.insert(
        "listen".into(),
        toml::Value::String(format!("127.0.0.1:{}", opts.admin_port)),
    );
    let iam = opts.iam_url();
    for (_, value) in table.iter_mut() {
        rebase_urls(value, &iam);
    }
    toml::to_string(&table).map_err(|e| format!("cannot write the demo config: {e}"))
}

/// Replaces the `http://127.0.0.1:8081` origin in every string under `value`.
fn rebase_urls(value: &mut toml::Value, iam: &str) {
    match value {
        toml::Value::String(s) => {
            if let Some(rest) = s.strip_prefix(DEFAULT_IAM_URL) {
                if rest.is_empty() || rest.starts_with('/') {
                    *s = format!("{iam}{rest}");
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(|v| rebase_urls(v, iam)),
        toml::Value::Table(t) => t.iter_mut().for_each(|(_, v)| rebase_urls(v, iam)),
        _ => {}
    }
}

/// A private temporary directory, removed on drop.
#[derive(Debug)]
pub struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    /// `$TMPDIR/portcullis-demo-PID-RANDOM`, mode 0700.
    pub fn create() -> Result<WorkDir, String> {
        let path = std::env::temp_dir().join(format!(
            "portcullis-demo-{}-{}",
            std::process::id(),
            iam::random_hex(4)
        ));
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder
            .create(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(WorkDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Everything the demo needs before it starts serving.
pub struct Prepared {
    pub options: DemoOptions,
    pub config: Config,
    pub key: SigningKey,
    /// Holds `demo.toml`, `catalogs/`, and `key/` (private.pem, public.pem, jwks.json).
    pub workdir: WorkDir,
    pub issuer: String,
    pub audience: String,
}

impl Prepared {
    /// Where the effective config was written.
    pub fn config_path(&self) -> PathBuf {
        self.workdir.path().join("demo.toml")
    }

    /// The demo key's private PEM (for `portcullis token --key`).
    pub fn key_path(&self) -> PathBuf {
        self.workdir.path().join("key").join(mint::PRIVATE_KEY_FILE)
    }
}

/// Step 1 of the module doc: ports, config, key; nothing listens yet.
pub fn prepare(opts: DemoOptions) -> Result<Prepared, String> {
    opts.check()?;
    for (flag, port) in [
        ("--port", opts.port),
        ("--admin-port", opts.admin_port),
        ("--iam-port", opts.iam_port),
    ] {
        TcpListener::bind(("127.0.0.1", port)).map_err(|e| {
            format!("127.0.0.1:{port} is not available ({e}); choose another with {flag}")
        })?;
    }
    let text = demo_config_text(&opts)?;
    let workdir = WorkDir::create()?;
    let write = |rel: &str, contents: &str| -> Result<PathBuf, String> {
        let path = workdir.path().join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, contents)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    };
    write("catalogs/verify-entitlements.tsv", VERIFY_CATALOG)?;
    let config_path = write(
        "demo.toml",
        &format!(
            "# The config `portcullis demo` runs: config/demo.toml with the demo's ports.\n\n{text}"
        ),
    )?;
    let key = SigningKey::generate(jsonwebtoken::Algorithm::ES256).map_err(|e| e.to_string())?;
    mint::write_key_files(&key, &workdir.path().join("key")).map_err(|e| e.to_string())?;
    let loaded = crate::config::load_file(&config_path).map_err(|e| e.to_string())?;
    let issuer = loaded
        .config
        .issuers
        .first()
        .ok_or("the demo config has no issuer")?;
    let (issuer_url, audience) = (
        issuer.issuer.clone(),
        issuer.audiences.first().cloned().unwrap_or_default(),
    );
    Ok(Prepared {
        options: opts,
        config: loaded.config,
        key,
        workdir,
        issuer: issuer_url,
        audience,
    })
}

/// `portcullis demo`: runs until SIGINT / SIGTERM.
pub fn run(opts: DemoOptions) -> Result<(), String> {
    init_logging();
    let prepared = prepare(opts)?;
    let (config_path, key_path) = (prepared.config_path(), prepared.key_path());
    let Prepared {
        options,
        config,
        key,
        workdir,
        issuer,
        audience,
    } = prepared;
    let admin_addr: SocketAddr = config
        .admin
        .listen
        .parse()
        .map_err(|e| format!("admin.listen: {e}"))?;

    let iam = Arc::new(iam::Iam::seeded(key.jwks_json(), &options.iam_url()));
    let at = scenario::Endpoints {
        gateway: format!("http://127.0.0.1:{}", options.port),
        admin: format!("http://127.0.0.1:{}", options.admin_port),
    };
    let minter = scenario::Minter {
        key: &key,
        issuer: issuer.clone(),
        audience: audience.clone(),
        now: mint::unix_now(),
    };
    let blocks = scenario::blocks(&minter, &at).map_err(|e| e.to_string())?;
    let banner = render(
        &options,
        &key,
        &issuer,
        &audience,
        &config_path,
        &key_path,
        &blocks,
    );

    let iam_server = IamServer::start(iam, options.iam_port)?;
    let assembled = crate::server::assemble(config)?;
    let signals = assembled.signals();
    let server = assembled.server;

    let workdir_path = workdir.path().to_path_buf();
    std::thread::Builder::new()
        .name("portcullis-demo".into())
        .spawn(move || match wait_ready(admin_addr, READY_TIMEOUT) {
            Ok(()) => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(banner.as_bytes());
                let _ = out.flush();
            }
            Err(e) => {
                eprintln!("portcullis demo: {e}");
                let _ = std::fs::remove_dir_all(&workdir_path);
                std::process::exit(1);
            }
        })
        .map_err(|e| format!("cannot start the demo thread: {e}"))?;

    // SIGINT (Ctrl-C) stops every service at once, SIGTERM after the
    // requests in flight; then `run` returns.
    server.run(signals);
    drop(iam_server);
    drop(workdir);
    Ok(())
}

/// Stops a pingora server when its sender is used or dropped.
struct StopSignal(tokio::sync::Mutex<tokio::sync::oneshot::Receiver<()>>);

#[async_trait]
impl ShutdownSignalWatch for StopSignal {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.0.lock().await;
        let _ = (&mut *rx).await;
        ShutdownSignal::FastShutdown
    }
}

/// The demo IAM on its own pingora server in a thread; stopped on drop.
struct IamServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl IamServer {
    /// Starts serving `iam` on 127.0.0.1:`port`; returns once it accepts
    /// connections (at most 10 s).
    fn start(iam: Arc<iam::Iam>, port: u16) -> Result<IamServer, String> {
        let conf = ServerConf {
            threads: 1,
            grace_period_seconds: Some(0),
            graceful_shutdown_timeout_seconds: Some(1),
            ..ServerConf::default()
        };
        let mut server = Server::new_with_opt_and_conf(None, conf);
        server.bootstrap();
        let mut service = Service::new("portcullis demo IAM".to_string(), iam::IamApp::new(iam));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        service.add_tcp(&addr.to_string());
        server.add_service(service);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("portcullis-demo-iam".into())
            .spawn(move || {
                server.run(RunArgs {
                    shutdown_signal: Box::new(StopSignal(tokio::sync::Mutex::new(rx))),
                })
            })
            .map_err(|e| format!("cannot start the demo IAM thread: {e}"))?;
        let iam_server = IamServer {
            stop: Some(tx),
            thread: Some(thread),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() >= deadline {
                return Err(format!("the demo IAM did not start listening on {addr}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(iam_server)
    }
}

impl Drop for IamServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Diagnostics on stderr (stdout carries the commands and the audit log);
/// `RUST_LOG` wins over the default `warn`.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// What the demo prints once the gateway is ready.
fn render(
    opts: &DemoOptions,
    key: &SigningKey,
    issuer: &str,
    audience: &str,
    config_path: &Path,
    key_path: &Path,
    blocks: &[scenario::Block],
) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Portcullis demo\n\
         \x20 gateway    http://127.0.0.1:{}\n\
         \x20 admin      http://127.0.0.1:{}   (/healthz, /readyz, /metrics)\n\
         \x20 demo IAM   http://127.0.0.1:{}   (IBM Verify, VMware, SlashID and OneLogin APIs, in memory)\n\
         \x20 issuer     {issuer}   (ES256, kid {}; a fresh key at every start)\n\
         \x20 config     {}\n\
         \n\
         Paste any block below into a shell: each says what it shows and the status it gets.\n\
         The tokens are valid for 1 hour. Mint more with:\n\
         \x20 portcullis token --key {} --iss '{issuer}' --aud {audience} \\\n\
         \x20   --sub demo-admin --client-id demo-admin --entitlements manageAPIClients,readAPIClients\n\
         Each request the gateway answers is logged below as one audit line.\n\n",
        opts.port,
        opts.admin_port,
        opts.iam_port,
        key.kid(),
        config_path.display(),
        key_path.display(),
    ));
    for (i, block) in blocks.iter().enumerate() {
        out.push_str(&block.render(i + 1));
        out.push('\n');
    }
    out.push_str("# Ctrl-C stops the gateway and the demo IAM.\n");
    out
}

/// The status of `GET path` on `addr`, or `None` when there is no answer.
fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        match stream.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    let line = std::str::from_utf8(&head[..got]).ok()?;
    line.split(' ').nth(1)?.get(..3)?.parse().ok()
}

/// Polls `/readyz` until 200, for at most `timeout`.
pub fn wait_ready(admin: SocketAddr, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = get_status(admin, "/readyz");
        if status == Some(200) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(match status {
                Some(status) => format!(
                    "the gateway was not ready within {timeout:?} (/readyz answered {status})"
                ),
                None => format!("the admin listener {admin} did not answer within {timeout:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_rewrite_listeners_and_iam_urls() {
        let opts = DemoOptions {
            port: 18080,
            admin_port: 19090,
            iam_port: 18081,
        };
        let text = demo_config_text(&opts).expect("config");
        assert!(text.contains("127.0.0.1:18080"));
        assert!(text.contains("127.0.0.1:19090"));
        assert!(text.contains("http://127.0.0.1:18081/v1.0/endpoint/default/jwks"));
        assert!(text.contains("http://127.0.0.1:18081/v1.0/apiclients?clientId={client_id}"));
        assert!(!text.contains(":8081"), "{text}");
        assert!(!text.contains(":8080\""), "{text}");
        // And it is a valid config.
        let origin = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml");
        let loaded = crate::config::load_str(&text, &origin).expect("valid");
        assert_eq!(
            loaded.config.server.listen,
            vec!["127.0.0.1:18080".to_string()]
        );
        assert!(loaded
            .config
            .upstreams
            .iter()
            .all(|u| u.addresses == vec!["127.0.0.1:18081".to_string()]));
    }

    #[test]
    fn the_embedded_config_is_valid_without_warnings() {
        let origin = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml");
        let loaded = crate::config::load_str(DEMO_CONFIG, &origin).expect("valid");
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    #[test]
    fn options_must_be_distinct_ports() {
        let same = DemoOptions {
            port: 8080,
            admin_port: 8080,
            iam_port: 8081,
        };
        assert!(same
            .check()
            .is_err_and(|e| e.contains("--admin-port and --port")));
        let zero = DemoOptions {
            iam_port: 0,
            ..DemoOptions::default()
        };
        assert!(zero.check().is_err());
        assert!(DemoOptions::default().check().is_ok());
    }

    #[test]
    fn the_seeded_clients_satisfy_the_gateways_metadata_reader() {
        let iam = iam::Iam::seeded("{\"keys\":[]}".into(), DEFAULT_IAM_URL);
        for seed in iam::verify::SEED_CLIENTS {
            let r = iam.handle(&iam::IamRequest::new(
                http::Method::GET,
                &format!("/v1.0/apiclients?clientId={}", seed.client_id),
            ));
            let object = r
                .body_json()
                .pointer("/apiClients/0")
                .cloned()
                .unwrap_or_default();
            let meta = crate::clients::meta::from_json(
                seed.client_id,
                &object,
                &crate::clients::FieldPointers::default(),
            )
            .expect("valid client");
            assert_eq!(meta.enabled, seed.enabled);
            if seed.enabled {
                assert_eq!(*meta.entitlements, *seed.entitlements);
            }
        }
    }
}
