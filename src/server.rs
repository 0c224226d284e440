//! Building and running the pingora server from a validated [`Config`].

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::services::listening::Service;
use tokio::sync::Notify;

use crate::admin::AdminApp;
use crate::audit::AuditLog;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::state::GatewayState;
use crate::proxy::Gateway;
use crate::reload::Reloader;
use crate::shutdown::{Drain, Drainable, SignalShutdown, FRESH_CONNECTION_GRACE};

/// Everything that runs for a config: the server and its shared state.
pub struct Assembled {
    pub server: Server,
    pub state: Arc<ArcSwap<GatewayState>>,
    pub metrics: Arc<Metrics>,
    pub reloader: Arc<Reloader>,
    /// The shutdown sequence; [`Assembled::signals`] drives it.
    pub drain: Arc<Drain>,
    /// Closed once the server stopped, so its last lines are written.
    pub audit: Arc<AuditLog>,
}

impl Assembled {
    /// The signal handling of a gateway process (SIGTERM drains and exits,
    /// SIGQUIT upgrades, SIGINT stops at once): see [`crate::shutdown`].
    pub fn signals(&self) -> RunArgs {
        RunArgs {
            shutdown_signal: Box::new(SignalShutdown::new(self.drain.clone())),
        }
    }
}

/// Runs the key refreshers of the live verifier; follows it across reloads.
struct KeyRefresh {
    state: Arc<ArcSwap<GatewayState>>,
    keys_changed: Arc<Notify>,
}

#[async_trait]
impl BackgroundService for KeyRefresh {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let verifier = self.state.load().verifier.clone();
            // Dropping the refreshers' future stops them (their JoinSet aborts).
            let refreshers = verifier.run_refreshers(shutdown.clone());
            tokio::select! {
                _ = refreshers => return,
                _ = self.keys_changed.notified() => continue,
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Reloads the config on SIGHUP.
struct SignalReload {
    reloader: Arc<Reloader>,
}

#[async_trait]
impl BackgroundService for SignalReload {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; reload only via the admin endpoint");
                return;
            }
        };
        loop {
            tokio::select! {
                Some(()) = hangups.recv() => {
                    let reloader = self.reloader.clone();
                    // Reading and validating the file is blocking work.
                    let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// How the server's runtimes schedule their tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtimes {
    /// One single-threaded tokio runtime per `threads` (pingora's no-steal
    /// flavour): a connection is handed to one of them and stays there.
    /// The load harness measured bare pingora 13 % cheaper per request with
    /// it against nginx in the same run (2.37 × → 2.07 × nginx's CPU,
    /// `benches/load/README.md`). What the gateway binary runs.
    PerThread,
    /// One multi-threaded runtime that steals work between threads. Needed
    /// when one process starts more than one server in turn (the test
    /// suite's in-process gateways): pingora keeps the no-steal runtimes'
    /// handles in a per-thread table that a later server's threads can
    /// inherit from exited ones, and then spawn onto a runtime that is gone.
    Stealing,
}

/// Build the pingora server for `config` (does not start it), for a process
/// that may start others (work-stealing runtimes).
pub fn assemble(config: Config) -> Result<Assembled, String> {
    assemble_with(config, false, Runtimes::Stealing)
}

/// Like [`assemble`]; with `upgrade`, take over the listening sockets of a
/// running instance through `server.upgrade_sock` (pingora's zero-downtime
/// upgrade: the old process hands them over on SIGQUIT).
pub fn assemble_with(
    config: Config,
    upgrade: bool,
    runtimes: Runtimes,
) -> Result<Assembled, String> {
    // A config validated without its secrets holds placeholders: never serve it.
    config.ensure_servable()?;
    let config = Arc::new(config);
    let state = Arc::new(ArcSwap::from_pointee(GatewayState::build(
        config.clone(),
        None,
    )));
    let metrics = Arc::new(Metrics::new().map_err(|e| format!("metrics: {e}"))?);
    metrics.set_config(&config.hash);
    let audit = Arc::new(
        AuditLog::new(&config.log.audit, config.log.format)
            .map_err(|e| format!("log.audit: cannot open the audit log: {e}"))?,
    );
    let keys_changed = Arc::new(Notify::new());
    let reloader = Arc::new(Reloader::new(
        state.clone(),
        metrics.clone(),
        keys_changed.clone(),
    ));

    let conf = ServerConf {
        threads: config.server.threads,
        work_stealing: runtimes == Runtimes::Stealing,
        // Our signal watch drains the proxy before it hands pingora the
        // signal (crate::shutdown), so pingora's fixed grace period — a sleep
        // that an idle gateway waited out too — is not needed. Stopping the
        // runtimes then cancels their tasks and waits this long for blocking
        // ones (a reload reading its file).
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: config.server.upgrade_sock.to_string_lossy().into_owned(),
        pid_file: config.server.pid_file.to_string_lossy().into_owned(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();

    let gateway = Gateway::new(state.clone(), metrics.clone(), audit.clone());
    let drain = Drain::new(
        gateway.in_flight(),
        config.server.shutdown_timeout,
        FRESH_CONNECTION_GRACE,
        config.server.upgrade_sock.to_string_lossy().into_owned(),
    );
    let proxy = crate::edge::service(
        &server.configuration,
        &config,
        gateway,
        state.clone(),
        metrics.clone(),
        audit.clone(),
    )?;
    // The Redis connection of quota decisions belongs on the proxy's runtime.
    let warm = state.clone();
    server.add_service(Drainable::new(proxy, drain.clone()).on_start(move || {
        if let Some(cluster) = warm.load().quotas.cluster().cloned() {
            tokio::spawn(async move { cluster.warm_up().await });
        }
    }));
    let mut admin = Service::new(
        "portcullis admin".to_string(),
        AdminApp::new(state.clone(), metrics.clone(), reloader.clone()).with_drain(drain.clone()),
    );
    admin.add_tcp(&config.admin.listen);
    server.add_service(admin);
    server.add_service(background_service(
        "cluster invalidations",
        crate::cluster::sync::ClusterSync {
            state: state.clone(),
        },
    ));
    server.add_service(background_service(
        "jwks refresh",
        KeyRefresh {
            state: state.clone(),
            keys_changed,
        },
    ));
    Ok(Assembled {
        server,
        state,
        metrics,
        reloader,
        drain,
        audit,
    })
}

/// A shutdown signal driven by a channel, for embedding (tests, `demo`).
struct ChannelSignal(tokio::sync::Mutex<tokio::sync::oneshot::Receiver<()>>);

#[async_trait]
impl ShutdownSignalWatch for ChannelSignal {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.0.lock().await;
        let _ = (&mut *rx).await;
        ShutdownSignal::FastShutdown
    }
}

/// A gateway running in a background thread; stopped on [`stop`](Self::stop) or drop.
pub struct GatewayHandle {
    pub listen: Vec<SocketAddr>,
    pub state: Arc<ArcSwap<GatewayState>>,
    pub reloader: Arc<Reloader>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl GatewayHandle {
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for GatewayHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Start the gateway in a `std::thread` (pingora's `Server::run` builds its
/// own runtimes, so it must not run inside one). Returns once every proxy
/// listener accepts connections, or an error after 10 s.
pub fn start_in_thread(config: Config) -> Result<GatewayHandle, String> {
    let listen: Vec<SocketAddr> = config
        .server
        .listen
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    let Assembled {
        server,
        state,
        reloader,
        audit,
        ..
    } = assemble(config)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("portcullis-server".into())
        .spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(ChannelSignal(tokio::sync::Mutex::new(rx))),
            });
            audit.close();
        })
        .map_err(|e| format!("cannot start the server thread: {e}"))?;
    let handle = GatewayHandle {
        listen: listen.clone(),
        state,
        reloader,
        stop: Some(tx),
        thread: Some(thread),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    for addr in &listen {
        let addr = if addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        } else {
            *addr
        };
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("the gateway did not start listening on {addr}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(handle)
}

/// Run the gateway in the foreground until a signal stops it: SIGTERM
/// drains (requests in flight finish, at most `shutdown_timeout_seconds`)
/// and exits, SIGQUIT hands the listeners to an upgraded process and drains,
/// SIGINT stops at once.
pub fn run_forever(config: Config, upgrade: bool) -> Result<(), String> {
    let assembled = assemble_with(config, upgrade, Runtimes::PerThread)?;
    let signals = assembled.signals();
    let Assembled {
        mut server,
        reloader,
        audit,
        ..
    } = assembled;
    server.add_service(background_service(
        "config reload",
        SignalReload { reloader },
    ));
    server.run(signals);
    audit.close();
    Ok(())
}
