//! The live, immutable state the request path reads: a validated config and
//! what was built from it. Swapped whole (arc-swap), never mutated.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use crate::auth::Verifier;
use crate::clients::oauth::{Credential, TokenSource};
use crate::clients::{ClientDirectory, HttpSource, Source};
use crate::config::model::{ClientSourceConfig, ClientsConfig, UpstreamAuth, UpstreamConfig};
use crate::config::Config;
use crate::metrics::RouteSeries;
use crate::quota::Quotas;
use pingora_core::upstreams::peer::{H1UpgradePolicy, HttpPeer, HttpUpstreamRequestPolicy};

/// Bound on one request to a token endpoint for an upstream's credential.
pub const TOKEN_ENDPOINT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct GatewayState {
    pub config: Arc<Config>,
    pub verifier: Arc<Verifier>,
    /// Client metadata, when `[clients]` is configured.
    pub clients: Option<Arc<ClientDirectory>>,
    /// Per upstream (same index as `config.upstreams`): the token source of
    /// an `auth = { token_url, ... }` credential.
    upstream_tokens: Vec<Option<Arc<TokenSource>>>,
    /// Every client_credentials token source, one per credential: the
    /// metadata source and upstreams with the same `token_url`, client and
    /// `scope` share one token.
    token_sources: TokenSources,
    /// HTTP client for the upstreams' token endpoints.
    pub token_http: reqwest::Client,
    /// Round-robin cursor per upstream (same index as `config.upstreams`).
    cursors: Vec<AtomicUsize>,
    /// Upstream addresses, parsed once: IP literals need no per-request work.
    addresses: Vec<Vec<PeerAddress>>,
    /// `[[quotas]]` with their counters, and the `[cluster]` link.
    pub quotas: Arc<Quotas>,
    /// Header values made once, not per request: each route's name
    /// (`X-Portcullis-Route`, same index as `config.routes`) and each
    /// upstream's `Host` (same index as `config.upstreams`). A clone shares
    /// the bytes. `None` for a text that is no header value (the request
    /// then fails as it would building it).
    route_names: Vec<Option<HeaderValue>>,
    host_headers: Vec<Option<HeaderValue>>,
    /// Each route's request metrics, kept once looked up (same index as
    /// `config.routes`).
    route_series: Vec<RouteSeries>,
}

/// One upstream address.
#[derive(Debug, Clone)]
pub enum PeerAddress {
    /// An IP address: its peer (address, SNI, the upstream's options) is
    /// built here, once, and cloned per request.
    Ip(Box<HttpPeer>),
    /// `host:port`, resolved when connecting.
    Host(String),
}

impl PeerAddress {
    /// The peer of one request to this address of `upstream` (the route's
    /// timeouts are set by the caller).
    pub fn peer(&self, upstream: &UpstreamConfig) -> HttpPeer {
        match self {
            PeerAddress::Ip(peer) => HttpPeer::clone(peer),
            PeerAddress::Host(host) => with_upstream_options(
                HttpPeer::new(host.as_str(), upstream.tls, upstream.host.clone()),
                upstream,
            ),
        }
    }
}

/// `peer` with what every request to `upstream` shares.
fn with_upstream_options(mut peer: HttpPeer, upstream: &UpstreamConfig) -> HttpPeer {
    peer.options.connection_timeout = Some(upstream.connect_timeout);
    peer.options.total_connection_timeout = Some(upstream.connect_timeout);
    peer.options.verify_cert = true;
    peer.options.verify_hostname = true;
    // Hop-by-hop fields are stripped by pingora; names nominated in
    // `Connection` are stripped by `headers::prepare` before the gateway
    // sets its own (pingora would refuse a nomination of a forwarding
    // header instead of ignoring it).
    peer.options.http_upstream_request_policy = HttpUpstreamRequestPolicy {
        strip_hop_by_hop: true,
        strip_connection_nominated: false,
        reject_malformed_connection_nominations: false,
        h1_upgrade: H1UpgradePolicy::Deny,
    };
    peer
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
        GatewayState::assemble(config, Arc::new(verifier), clients, previous)
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
        GatewayState::assemble(config, verifier, clients, None)
    }

    /// Token sources of the `previous` state whose credential is unchanged
    /// carry over with their cached token.
    fn assemble(
        config: Arc<Config>,
        verifier: Arc<Verifier>,
        clients: Option<Arc<ClientDirectory>>,
        previous: Option<&GatewayState>,
    ) -> GatewayState {
        let cursors = config
            .upstreams
            .iter()
            .map(|_| AtomicUsize::new(0))
            .collect();
        let mut token_sources = TokenSources {
            used: Vec::new(),
            previous: previous.map_or_else(Vec::new, |old| old.token_sources.used.clone()),
        };
        let clients = match clients {
            Some(kept) => {
                // A kept directory keeps its source: register it (it is
                // the previous state's) so an upstream can share it.
                if let Some(ClientsConfig {
                    source: ClientSourceConfig::Http { credential, .. },
                    ..
                }) = &config.clients
                {
                    token_sources.get(credential);
                }
                Some(kept)
            }
            None => config
                .clients
                .as_ref()
                .map(|c| Arc::new(directory(c, &mut token_sources))),
        };
        let upstream_tokens = config
            .upstreams
            .iter()
            .map(|u| match &u.auth {
                Some(UpstreamAuth::ClientCredentials { credential, .. }) => {
                    Some(token_sources.get(credential))
                }
                _ => None,
            })
            .collect();
        token_sources.previous.clear();
        let token_http = reqwest::Client::builder()
            .timeout(TOKEN_ENDPOINT_TIMEOUT)
            .connect_timeout(TOKEN_ENDPOINT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        let addresses = config
            .upstreams
            .iter()
            .map(|u| {
                u.addresses
                    .iter()
                    .map(|a| match a.parse::<std::net::SocketAddr>() {
                        Ok(ip) => PeerAddress::Ip(Box::new(with_upstream_options(
                            HttpPeer::new(ip, u.tls, u.host.clone()),
                            u,
                        ))),
                        Err(_) => PeerAddress::Host(a.clone()),
                    })
                    .collect()
            })
            .collect();
        let quotas = Arc::new(Quotas::build(&config, previous.map(|p| &*p.quotas)));
        let route_names = config
            .routes
            .iter()
            .map(|r| HeaderValue::from_str(&r.name).ok())
            .collect();
        let host_headers = config
            .upstreams
            .iter()
            .map(|u| HeaderValue::from_str(&u.host_header).ok())
            .collect();
        let route_series = config.routes.iter().map(|_| RouteSeries::new()).collect();
        GatewayState {
            config,
            verifier,
            clients,
            upstream_tokens,
            token_sources,
            token_http,
            cursors,
            addresses,
            quotas,
            route_names,
            host_headers,
            route_series,
        }
    }

    /// The client_credentials token source of upstream `index`, if its
    /// `auth` is one.
    pub fn upstream_token(&self, index: usize) -> Option<&Arc<TokenSource>> {
        self.upstream_tokens.get(index)?.as_ref()
    }

    /// The `X-Portcullis-Route` value of route `index`.
    pub fn route_name_header(&self, index: usize) -> Option<&HeaderValue> {
        self.route_names.get(index)?.as_ref()
    }

    /// The request metrics of route `index`.
    pub fn route_series(&self, index: usize) -> Option<&RouteSeries> {
        self.route_series.get(index)
    }

    /// The `Host` value sent to upstream `index`.
    pub fn host_header(&self, index: usize) -> Option<&HeaderValue> {
        self.host_headers.get(index)?.as_ref()
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

/// The client_credentials token sources of one state, one per credential.
struct TokenSources {
    /// Those this state uses.
    used: Vec<Arc<TokenSource>>,
    /// Those of the state it replaces (while building only).
    previous: Vec<Arc<TokenSource>>,
}

impl TokenSources {
    /// The source of `credential`: one this state already uses, else the
    /// previous state's (with its cached token), else a new one.
    fn get(&mut self, credential: &Credential) -> Arc<TokenSource> {
        if let Some(found) = self.used.iter().find(|s| s.credential() == credential) {
            return Arc::clone(found);
        }
        let source = self
            .previous
            .iter()
            .find(|s| s.credential() == credential)
            .cloned()
            .unwrap_or_else(|| Arc::new(TokenSource::new(credential.clone())));
        self.used.push(Arc::clone(&source));
        source
    }
}

/// Build the client directory for `[clients]`; its credential comes from
/// (or joins) `sources`.
fn directory(config: &ClientsConfig, sources: &mut TokenSources) -> ClientDirectory {
    let source = match &config.source {
        ClientSourceConfig::Static(list) => Source::Static(
            list.iter()
                .map(|m| (m.client_id.to_string(), Arc::new(m.clone())))
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
            auth: sources.get(credential),
            http: reqwest::Client::builder()
                .timeout(config.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
        })),
    };
    ClientDirectory::new(source, config.cache)
}
