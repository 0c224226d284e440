//! Hot reload: re-read the config file and swap the live state atomically.
//!
//! An invalid new config is refused (logged and counted) and the old one
//! keeps serving. A valid one applies to requests that start after the swap;
//! requests in flight finish under the state they began with (each holds its
//! own `Arc`). Key sets of unchanged issuers and the client-metadata cache of
//! an unchanged source survive. Listeners, threads, TLS and the audit target
//! are fixed at start: changing them needs a restart (or a binary upgrade).

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::state::GatewayState;

pub struct Reloader {
    state: Arc<ArcSwap<GatewayState>>,
    metrics: Arc<Metrics>,
    /// Wakes the key refresher so it follows the new verifier.
    keys_changed: Arc<Notify>,
    /// Serialises reloads (SIGHUP and the admin endpoint may race).
    lock: std::sync::Mutex<()>,
}

impl Reloader {
    pub fn new(
        state: Arc<ArcSwap<GatewayState>>,
        metrics: Arc<Metrics>,
        keys_changed: Arc<Notify>,
    ) -> Reloader {
        Reloader {
            state,
            metrics,
            keys_changed,
            lock: std::sync::Mutex::new(()),
        }
    }

    /// Re-read the file the live config came from. Returns the new config's
    /// hash, or every reason it was refused.
    pub fn reload(&self) -> Result<String, String> {
        let _guard = self
            .lock
            .lock()
            .map_err(|_| "reload lock poisoned".to_string())?;
        let path = self.state.load().config.source.clone();
        let result = crate::config::load_file(&path)
            .map_err(|e| e.to_string())
            .and_then(|loaded| {
                for w in &loaded.warnings {
                    tracing::warn!("{}: {w}", path.display());
                }
                self.apply(loaded.config)
            });
        match &result {
            Ok(hash) => {
                self.metrics.reload(true);
                tracing::info!(config = %path.display(), hash, "configuration reloaded");
            }
            Err(reason) => {
                self.metrics.reload(false);
                tracing::error!(config = %path.display(), %reason, "configuration reload refused; the previous one keeps serving");
            }
        }
        result
    }

    fn apply(&self, config: Config) -> Result<String, String> {
        // Reloads validate strictly; this holds whoever builds the config.
        config.ensure_servable()?;
        let old = self.state.load_full();
        let (o, n) = (&old.config, &config);
        let fixed = [
            ("server.listen", o.server.listen != n.server.listen),
            ("server.threads", o.server.threads != n.server.threads),
            (
                "server.tls",
                o.server.tls.is_some() != n.server.tls.is_some(),
            ),
            ("admin.listen", o.admin.listen != n.admin.listen),
            ("log", o.log != n.log),
        ];
        for (key, changed) in fixed {
            if changed {
                tracing::warn!(
                    key,
                    "changed in the new config but only applies after a restart"
                );
            }
        }
        let hash = config.hash.clone();
        let state = GatewayState::build(Arc::new(config), Some(&old));
        self.state.store(Arc::new(state));
        self.metrics.set_config(&hash);
        self.keys_changed.notify_one();
        Ok(hash)
    }
}
