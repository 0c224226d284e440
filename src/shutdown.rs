//! Clean shutdown: drain the proxy, then let pingora stop the rest.
//!
//! pingora's own SIGTERM handling stops every listener at once — the admin
//! one too, so `/readyz` cannot report the drain — and then sleeps its whole
//! grace period however idle the gateway is. Our [`SignalShutdown`] runs the
//! drain *before* it hands pingora the signal:
//!
//! 1. SIGTERM: `/readyz` answers 503 from now on ([`Drain::is_draining`]);
//! 2. the proxy service's own shutdown watch flips ([`Drainable`]): pingora
//!    ends its accept loops and closes the proxy listeners (new connections
//!    are refused), and keeps no connection alive after its current request;
//! 3. after [`FRESH_CONNECTION_GRACE`] ([`DrainGrace`]) pingora closes the
//!    connections still waiting for a request head — keep-alive connections
//!    idle between requests, and connections accepted just before the stop
//!    whose first request is still on its way (closing those at once would
//!    drop a request the client has sent);
//! 4. wait until no request is in flight ([`InFlight`]), at most
//!    `server.shutdown_timeout_seconds` from the signal;
//! 5. return `GracefulTerminate`; with a zero grace period pingora then stops
//!    the admin listener and the background services and returns at once.
//!
//! SIGQUIT (zero-downtime upgrade) first hands the listening sockets to the
//! new process as pingora would, keeps accepting for pingora's close timeout
//! while the new process starts, then drains the same way (without marking
//! the gateway unready: the new process serves the same addresses). SIGINT
//! stops at once, also in the middle of a drain.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::RuntimeOpts;
use pingora_core::server::{ListenFds, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora_core::services::{ServiceReadyNotifier, ServiceWithDependents};
use tokio::sync::{watch, Notify};

/// How long a connection accepted before the proxy stopped may take to
/// deliver its request head before it is closed unanswered.
pub const FRESH_CONNECTION_GRACE: Duration = Duration::from_millis(250);

/// Time for the connections woken at the end of the grace to run, so that a
/// request whose head made it is counted in flight before the drain looks.
const SETTLE: Duration = Duration::from_millis(50);

/// How long an old process keeps accepting after handing its sockets over
/// (pingora's `CLOSE_TIMEOUT`): the new process starts its listeners meanwhile.
const UPGRADE_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

// === impl InFlight ===

/// Counts proxy requests from the end of their head to the end of their
/// logging (a request context's life). Idle keep-alive connections and
/// connections still sending a head count for nothing.
#[derive(Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// One request in flight; leaving decrements the count.
pub struct InFlightGuard(Arc<InFlight>);

impl InFlight {
    pub fn new() -> Arc<InFlight> {
        Arc::new(InFlight::default())
    }

    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves when no request is in flight.
    pub async fn idle(&self) {
        loop {
            // Register before checking, so a request that ends in between
            // is not missed.
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

// === impl Drain ===

/// The shared state of a shutdown: readiness, the proxy's own shutdown
/// watch, the requests in flight and the listening sockets to hand over.
pub struct Drain {
    in_flight: Arc<InFlight>,
    draining: AtomicBool,
    stop_proxy: watch::Sender<bool>,
    /// pingora's table of listening sockets, seen when the proxy starts.
    listen_fds: Mutex<Option<ListenFds>>,
    timeout: Duration,
    /// [`FRESH_CONNECTION_GRACE`] (the proxy's [`DrainGrace`]).
    grace: Duration,
    upgrade_sock: String,
}

impl Drain {
    /// `grace`: the proxy app's [`DrainGrace`] (normally [`FRESH_CONNECTION_GRACE`]).
    pub fn new(
        in_flight: Arc<InFlight>,
        timeout: Duration,
        grace: Duration,
        upgrade_sock: String,
    ) -> Arc<Drain> {
        Arc::new(Drain {
            in_flight,
            draining: AtomicBool::new(false),
            stop_proxy: watch::channel(false).0,
            listen_fds: Mutex::new(None),
            timeout,
            grace,
            upgrade_sock,
        })
    }

    /// Whether SIGTERM was received (`/readyz` answers 503).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Stop the proxy listeners and keep-alive; idempotent.
    fn stop_proxy(&self) {
        self.stop_proxy.send_replace(true);
    }

    /// Stop accepting, give fresh connections their grace, then wait for
    /// the requests in flight (at most the shutdown timeout in all).
    async fn drain(&self) {
        let started = Instant::now();
        self.stop_proxy();
        let left = self.in_flight.count();
        tracing::info!(
            in_flight = left,
            "shutdown: proxy listeners closed, draining"
        );
        let wait = async {
            tokio::time::sleep(self.grace + SETTLE).await;
            self.in_flight.idle().await;
        };
        match tokio::time::timeout(self.timeout, wait).await {
            Ok(()) => tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "shutdown: no request in flight, exiting"
            ),
            Err(_) => tracing::warn!(
                in_flight = self.in_flight.count(),
                timeout_seconds = self.timeout.as_secs(),
                "shutdown: requests still in flight at the shutdown timeout are cut off"
            ),
        }
    }

    /// Send the listening sockets to the new process on `upgrade_sock`, as
    /// pingora's SIGQUIT handling does, and keep serving while it starts.
    async fn hand_over(&self) {
        let fds = self
            .listen_fds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(fds) = fds.filter(|f| !f.lock().is_empty()) else {
            tracing::info!("upgrade: no listening sockets to send");
            return;
        };
        let sock = self.upgrade_sock.clone();
        // Blocking: connects to the socket with retries (pingora's).
        let sent =
            tokio::task::spawn_blocking(move || fds.lock().send_to_sock(sock.as_str())).await;
        match sent {
            Ok(Ok(_)) => {
                tracing::info!("upgrade: listening sockets sent to the new process");
                tokio::time::sleep(UPGRADE_CLOSE_TIMEOUT).await;
            }
            Ok(Err(e)) => tracing::error!(
                error = %e,
                sock = %self.upgrade_sock,
                "upgrade: cannot send the listening sockets"
            ),
            Err(e) => tracing::error!(error = %e, "upgrade: the send task failed"),
        }
    }
}

// === impl DrainGrace ===

/// A pingora app (the proxy) whose cleanup — called once its accept loops
/// end, it closes every connection waiting for a request head — runs after
/// [`FRESH_CONNECTION_GRACE`]: a client that connected just before the stop
/// still gets its first request answered (without keep-alive).
pub struct DrainGrace<A> {
    inner: Arc<A>,
    grace: Duration,
}

impl<A> DrainGrace<A> {
    pub fn new(inner: A, grace: Duration) -> DrainGrace<A> {
        DrainGrace {
            inner: Arc::new(inner),
            grace,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for DrainGrace<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.inner.process_new(session, shutdown).await
    }

    async fn cleanup(&self) {
        tokio::time::sleep(self.grace).await;
        self.inner.cleanup().await;
    }
}

// === impl Drainable ===

/// A pingora service (the proxy) that stops on the drain's watch — or on
/// pingora's shutdown, whichever comes first — and lends the drain pingora's
/// table of listening sockets for an upgrade.
pub struct Drainable<S> {
    inner: S,
    drain: Arc<Drain>,
    on_start: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl<S> Drainable<S> {
    pub fn new(inner: S, drain: Arc<Drain>) -> Drainable<S> {
        Drainable {
            inner,
            drain,
            on_start: None,
        }
    }

    /// Run `f` when the service starts, on its runtime (to spawn tasks that
    /// must live there).
    pub fn on_start(mut self, f: impl FnOnce() + Send + Sync + 'static) -> Drainable<S> {
        self.on_start = Some(Box::new(f));
        self
    }
}

#[async_trait]
impl<S: ServiceWithDependents> ServiceWithDependents for Drainable<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
        ready_notifier: ServiceReadyNotifier,
    ) {
        if let Some(fds) = &fds {
            *self
                .drain
                .listen_fds
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(fds.clone());
        }
        if let Some(f) = self.on_start.take() {
            f();
        }
        let own = self.drain.stop_proxy.subscribe();
        let drain = self.drain.clone();
        let mut pingora = shutdown;
        tokio::spawn(async move {
            if pingora.wait_for(|stop| *stop).await.is_ok() {
                drain.stop_proxy();
            }
        });
        self.inner
            .start_service(fds, own, listeners_per_fd, ready_notifier)
            .await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn runtime_opts_override(&self, global: &RuntimeOpts) -> Option<RuntimeOpts> {
        self.inner.runtime_opts_override(global)
    }

    fn on_startup_delay(&self, time_waited: Duration) {
        self.inner.on_startup_delay(time_waited)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}

// === impl SignalShutdown ===

/// The signals of a gateway process: SIGTERM drains and exits, SIGQUIT hands
/// the listeners over then drains, SIGINT stops at once.
pub struct SignalShutdown {
    drain: Arc<Drain>,
}

impl SignalShutdown {
    pub fn new(drain: Arc<Drain>) -> SignalShutdown {
        SignalShutdown { drain }
    }
}

#[async_trait]
impl ShutdownSignalWatch for SignalShutdown {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (mut term, mut quit, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::quit()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(q), Ok(i)) => (t, q, i),
            (t, q, i) => {
                let error = [t.err(), q.err(), i.err()]
                    .into_iter()
                    .flatten()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
                tracing::error!(%error, "cannot listen for SIGTERM / SIGQUIT / SIGINT");
                return std::future::pending().await;
            }
        };
        tokio::select! {
            _ = int.recv() => return ShutdownSignal::FastShutdown,
            _ = term.recv() => {
                tracing::info!("SIGTERM: not ready, draining");
                self.drain.draining.store(true, Ordering::Release);
            }
            _ = quit.recv() => {
                tracing::info!("SIGQUIT: handing the listeners over, then draining");
                tokio::select! {
                    _ = self.drain.hand_over() => {}
                    _ = int.recv() => return ShutdownSignal::FastShutdown,
                }
            }
        }
        tokio::select! {
            _ = self.drain.drain() => ShutdownSignal::GracefulTerminate,
            _ = int.recv() => ShutdownSignal::FastShutdown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_resolves_when_the_last_request_leaves() {
        let in_flight = InFlight::new();
        in_flight.idle().await;
        let a = in_flight.enter();
        let b = in_flight.enter();
        assert_eq!(in_flight.count(), 2);
        let waiter = {
            let in_flight = in_flight.clone();
            tokio::spawn(async move { in_flight.idle().await })
        };
        drop(a);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "idle with a request in flight");
        drop(b);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("idle after the last request")
            .expect("waiter task");
        assert_eq!(in_flight.count(), 0);
    }

    #[tokio::test]
    async fn drain_stops_the_proxy_and_gives_up_at_the_timeout() {
        let in_flight = InFlight::new();
        let drain = Drain::new(
            in_flight.clone(),
            Duration::from_millis(200),
            Duration::ZERO,
            String::new(),
        );
        let mut proxy = drain.stop_proxy.subscribe();
        let _stuck = in_flight.enter();
        let started = Instant::now();
        drain.drain().await;
        assert!(*proxy.borrow_and_update(), "the proxy watch did not flip");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }
}
