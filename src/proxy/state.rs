//! The live, immutable state the request path reads: a validated config and
//! what was built from it. Swapped whole (arc-swap), never mutated.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::auth::Verifier;
use crate::clients::oauth::TokenSource;
use crate::clients::{ClientDirectory, HttpSource, Source};
use crate::config::model::{ClientSourceConfig, ClientsConfig};
use crate::config::Config;

pub struct GatewayState {
    pub config: Arc<Config>,
    pub verifier: Arc<Verifier>,
    /// Client metadata, when `[clients]` is configured.
    pub clients: Option<Arc<ClientDirectory>>,
    /// Round-robin cursor per upstream (same index as `config.upstreams`).
    cursors: Vec<AtomicUsize>,
    /// Upstream addresses, parsed once: IP literals need no per-request work.
    addresses: Vec<Vec<PeerAddress>>,
}

/// One upstream address.
#[derive(Debug, Clone)]
pub enum PeerAddress {
    Ip(std::net::SocketAddr),
    /// `host:port`, resolved when connecting.
    Host(String),
}

impl GatewayState {
    /// The state the server runs for `config`: a verifier with the
    /// configured token cache keeping only the claims routes read. With the
    /// `previous` state (a reload), key sets of unchanged issuers and the
    /// client cache of an unchanged `[clients]` carry over.
    pub fn build(config: Arc<Config>, previous: Option<&GatewayState>) -> GatewayState {
        let mut verifier = Verifier::with_cache(&config.issuers, config.server.token_cache);
        verifier.keep_only_claims(config.claims_read_by_routes());
        let mut clients = None;
        if let Some(old) = previous {
            verifier.inherit_keys(&old.verifier);
            if old.config.clients.is_some() && old.config.clients == config.clients {
                clients = old.clients.clone();
            }
        }
        GatewayState::with_clients(config, Arc::new(verifier), clients)
    }

    pub fn new(config: Arc<Config>, verifier: Arc<Verifier>) -> GatewayState {
        GatewayState::with_clients(config, verifier, None)
    }

    /// Like [`new`](Self::new), reusing `clients` (a reload whose `[clients]`
    /// did not change keeps its cache); a new directory is built otherwise.
    pub fn with_clients(
        config: Arc<Config>,
        verifier: Arc<Verifier>,
        clients: Option<Arc<ClientDirectory>>,
    ) -> GatewayState {
        let cursors = config
            .upstreams
            .iter()
            .map(|_| AtomicUsize::new(0))
            .collect();
        let clients = clients.or_else(|| config.clients.as_ref().map(|c| Arc::new(directory(c))));
        let addresses = config
            .upstreams
            .iter()
            .map(|u| {
                u.addresses
                    .iter()
                    .map(|a| match a.parse() {
                        Ok(ip) => PeerAddress::Ip(ip),
                        Err(_) => PeerAddress::Host(a.clone()),
                    })
                    .collect()
            })
            .collect();
        GatewayState {
            config,
            verifier,
            clients,
            cursors,
            addresses,
        }
    }

    /// Next address of upstream `index`, round-robin.
    pub fn next_address(&self, index: usize) -> Option<&PeerAddress> {
        let addresses = self.addresses.get(index)?;
        let n = addresses.len();
        if n == 0 {
            return None;
        }
        let i = self.cursors.get(index)?.fetch_add(1, Ordering::Relaxed) % n;
        addresses.get(i)
    }
}

/// Build the client directory for `[clients]`.
pub fn directory(config: &ClientsConfig) -> ClientDirectory {
    let source = match &config.source {
        ClientSourceConfig::Static(list) => Source::Static(
            list.iter()
                .map(|m| (m.client_id.clone(), Arc::new(m.clone())))
                .collect(),
        ),
        ClientSourceConfig::Http {
            url,
            response_pointer,
            fields,
            credential,
        } => Source::Http(Box::new(HttpSource {
            url: url.clone(),
            response_pointer: response_pointer.clone(),
            fields: fields.clone(),
            timeout: config.timeout,
            auth: TokenSource::new(credential.clone()),
            http: reqwest::Client::builder()
                .timeout(config.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
        })),
    };
    ClientDirectory::new(source, config.cache)
}
