//! The typed configuration the runtime uses. Built only by
//! [`super::validate`], so every value here has already been checked.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use jsonwebtoken::Algorithm;

use crate::policy::body::{BodyPolicy, CatalogRef};
use crate::policy::entitlements::Requirement;
use crate::policy::ip::IpList;
use crate::policy::redact::ResponsePolicy;
use crate::routing::{PathTemplate, RouteTable};

/// A validated configuration. Immutable once built; the live one is swapped
/// whole.
#[derive(Debug)]
pub struct Config {
    /// File it was read from (for messages).
    pub source: PathBuf,
    pub server: ServerSettings,
    pub admin: AdminSettings,
    pub issuers: Vec<Arc<IssuerConfig>>,
    pub upstreams: Vec<Arc<UpstreamConfig>>,
    pub routes: Vec<RouteConfig>,
    /// The compiled matcher over `routes` (same indices).
    pub route_table: RouteTable,
    /// `[clients]`, when configured.
    pub clients: Option<ClientsConfig>,
    /// `[log]`.
    pub log: LogSettings,
    /// SHA-256 of the file's text (hex, first 16 digits): the config_info metric.
    pub hash: String,
    /// `[catalogs.NAME]`, loaded.
    pub catalogs: std::collections::HashMap<String, CatalogRef>,
    /// Names (lowercase) of the headers the gateway sets itself from a token
    /// claim (any route's `pin_headers`) or from its own credential (any
    /// upstream's `auth` header): never nominated in `Connection`, never
    /// accepted under a `_` alias, on any route.
    pub protected_headers: Vec<String>,
    /// Secrets whose environment variable was missing or empty when the file
    /// was validated in [`EnvMode::Structural`](super::EnvMode::Structural)
    /// (`check`, `explain`); always empty in strict mode (`run`, reloads).
    /// Each stands in the config as a random placeholder, so a config with
    /// any of them must never serve: see [`Config::ensure_servable`].
    pub unset_secrets: Vec<UnsetSecret>,
    /// `[[quotas]]`; routes refer to them by index.
    pub quotas: Vec<Arc<QuotaConfig>>,
    /// `[cluster]`, when configured.
    pub cluster: Option<ClusterConfig>,
}

/// What a quota counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKey {
    /// The token's client id.
    Client,
    /// The token's `sub`.
    Subject,
    /// The client IP (after `trusted_proxies`).
    Ip,
}

impl QuotaKey {
    pub fn name(self) -> &'static str {
        match self {
            QuotaKey::Client => "client",
            QuotaKey::Subject => "subject",
            QuotaKey::Ip => "ip",
        }
    }
}

/// A rate and a burst: GCRA's emission interval and tolerance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuotaLimit {
    pub rate_per_second: f64,
    pub burst: u32,
}

/// `[[quotas]]`
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaConfig {
    pub name: String,
    pub key: QuotaKey,
    pub limit: QuotaLimit,
    /// Per key value (a client id, subject or IP as text).
    pub overrides: std::collections::HashMap<String, QuotaLimit>,
}

/// What happens to a quota decision when Redis cannot make it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRedisError {
    /// Count in-process (each replica admits its own full quota).
    Local,
    /// 503 `quota_unavailable`.
    Deny,
}

/// `[cluster]`
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    pub redis_url: String,
    pub password_env: Option<String>,
    pub password: Option<Secret>,
    pub key_prefix: String,
    pub on_redis_error: OnRedisError,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: Vec<String>,
    pub tls: Option<TlsSettings>,
    pub threads: usize,
    pub trusted_proxies: IpList,
    /// The one header a trusted proxy's client address is read from.
    pub client_ip_header: crate::policy::client_ip::ClientIpHeader,
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// The whole request head, from its first byte.
    pub header_timeout: Duration,
    /// The whole request body, from the end of the head.
    pub body_timeout: Duration,
    /// An idle keep-alive connection (no byte of a next request) is closed after this.
    pub keepalive_timeout: Duration,
    /// Open client connections across all proxy listeners.
    pub max_connections: usize,
    /// Open client connections from one socket peer (trusted proxies exempt).
    pub max_connections_per_ip: usize,
    /// How long SIGTERM waits for in-flight requests.
    pub shutdown_timeout: Duration,
    /// The verified-token cache.
    pub token_cache: crate::auth::TokenCacheSettings,
    /// Unix socket over which a new binary takes the listeners (`run --upgrade`).
    pub upgrade_sock: PathBuf,
    pub pid_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: String,
    /// Name of the env var with the admin bearer token (mutating endpoints).
    pub token_env: Option<String>,
    /// Its value, read at load; `None` turns the mutating endpoints off.
    pub token: Option<Secret>,
}

/// Where an issuer's verification keys come from.
#[derive(Clone)]
pub enum KeySource {
    /// A JWKS endpoint, refreshed in the background.
    JwksUrl(String),
    /// A JWKS JSON document read from a file at load time (already parsed).
    JwksFile { path: PathBuf, document: String },
    /// An HMAC shared secret read from an env var at load time.
    HmacSecret { env: String, secret: Secret },
    /// No keys: opaque tokens are checked by RFC 7662 introspection.
    Introspection(Arc<IntrospectionConfig>),
}

/// `introspection_*` keys of an `[[issuers]]` entry.
#[derive(Clone, PartialEq, Eq)]
pub struct IntrospectionConfig {
    pub url: String,
    /// The gateway's own client id at the endpoint (HTTP Basic).
    pub client_id: String,
    /// Its secret, and the env var it was read from.
    pub client_secret: Secret,
    pub client_secret_env: String,
    /// Longest an active answer is cached (never past its `exp`).
    pub cache_ttl: Duration,
    /// Per introspection call.
    pub timeout: Duration,
}

impl std::fmt::Debug for IntrospectionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionConfig")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("client_secret_env", &self.client_secret_env)
            .field("cache_ttl", &self.cache_ttl)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::JwksUrl(url) => f.debug_tuple("JwksUrl").field(url).finish(),
            KeySource::JwksFile { path, .. } => {
                f.debug_struct("JwksFile").field("path", path).finish()
            }
            KeySource::HmacSecret { env, .. } => f
                .debug_struct("HmacSecret")
                .field("env", env)
                .finish_non_exhaustive(),
            KeySource::Introspection(intro) => f.debug_tuple("Introspection").field(intro).finish(),
        }
    }
}

/// Secret bytes that never print.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A secret (`*_env` key) whose environment variable was missing or empty
/// during a structural validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsetSecret {
    /// Key path of the `*_env` key, e.g. `clients.client_secret_env`.
    pub path: String,
    /// The environment variable it names.
    pub env: String,
    /// Set but empty, rather than not set.
    pub empty: bool,
}

impl UnsetSecret {
    /// `environment variable NAME is not set` (or `is empty`).
    pub fn reason(&self) -> String {
        let state = if self.empty { "is empty" } else { "is not set" };
        format!("environment variable {} {state}", self.env)
    }
}

/// Accepted JOSE `typ` values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenTypes {
    /// Compared case-insensitively (RFC 7515 §4.1.9 recommends it).
    pub values: Vec<String>,
    /// Whether a token without `typ` is accepted.
    pub allow_absent: bool,
}

impl Default for TokenTypes {
    fn default() -> Self {
        TokenTypes {
            values: vec!["JWT".into(), "at+jwt".into(), "application/at+jwt".into()],
            allow_absent: true,
        }
    }
}

/// One trusted token issuer (`[[issuers]]`).
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    pub name: String,
    /// Exact `iss` value.
    pub issuer: String,
    /// If non-empty, `aud` must contain one of these.
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub token_types: TokenTypes,
    pub keys: KeySource,
    pub jwks_refresh: Duration,
    pub jwks_min_refetch: Duration,
    pub leeway_seconds: u64,
    pub client_id_claims: Vec<String>,
    /// Dotted path split into segments (`realm_access.roles` → `["realm_access", "roles"]`).
    pub entitlements_claim: Vec<String>,
    /// Whether `[clients]` applies to this issuer's callers (default true):
    /// the metadata source knows the clients of one IAM service, not those
    /// of every issuer.
    pub client_metadata: bool,
}

/// How the gateway authenticates itself to an upstream when a route strips
/// the caller's `Authorization`.
#[derive(Clone)]
pub enum UpstreamAuth {
    Bearer {
        env: String,
        token: Secret,
    },
    Header {
        name: http::HeaderName,
        env: String,
        value: Secret,
    },
    /// A token obtained by OAuth 2.0 client_credentials, sent as `Bearer`.
    ClientCredentials {
        /// `token_url`, `client_id`, the secret and `scope`.
        credential: crate::clients::oauth::Credential,
        /// The env var of `client_secret_env`.
        env: String,
    },
}

impl std::fmt::Debug for UpstreamAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamAuth::Bearer { env, .. } => write!(f, "Bearer(from ${env})"),
            UpstreamAuth::Header { name, env, .. } => write!(f, "Header({name} from ${env})"),
            UpstreamAuth::ClientCredentials { env, .. } => {
                write!(f, "ClientCredentials(secret from ${env})")
            }
        }
    }
}

/// One `[[upstreams]]` entry.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub tls: bool,
    /// Host of `url` (used for SNI and the default `Host`).
    pub host: String,
    /// `host:port` addresses, `url`'s first, then `endpoints`; round-robin.
    pub addresses: Vec<String>,
    /// `Host` header sent upstream.
    pub host_header: String,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub auth: Option<UpstreamAuth>,
    /// Name of the `[catalogs.NAME]` its routes' entitlements come from.
    pub catalog: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Required,
    None,
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    /// `None` = all methods.
    pub methods: Option<Vec<Method>>,
    pub path: PathTemplate,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    pub auth: AuthMode,
    /// Indices into [`Config::issuers`] this route accepts.
    pub issuers: Vec<usize>,
    /// `require_all` / `require_any`.
    pub entitlements: Requirement,
    pub ip_allow: Option<IpList>,
    pub ip_deny: Option<IpList>,
    pub strip_authorization: bool,
    pub read_timeout: Duration,
    /// Path parameter naming a client whose cached metadata a 2xx write evicts.
    pub invalidates_client: Option<String>,
    /// Path parameter that must not name the caller itself.
    pub deny_self: Option<String>,
    /// Compare the ids named by `deny_self` / `invalidates_client` ignoring
    /// ASCII case (UUID-shaped ids always are).
    pub ids_case_insensitive: bool,
    /// Request headers pinned to token claims.
    pub pin_headers: Vec<PinHeader>,
    /// `[routes.body]`, compiled.
    pub body: Option<BodyPolicy>,
    /// `[routes.response]`, compiled.
    pub response: Option<ResponsePolicy>,
    /// Index into `Config::quotas`.
    pub quota: Option<usize>,
}

impl Config {
    /// Refuses a config validated without its secrets: its placeholders
    /// would verify nothing a real issuer signed and send upstreams a
    /// credential nobody issued. `server::assemble` and reloads call this.
    pub fn ensure_servable(&self) -> Result<(), String> {
        if self.unset_secrets.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = self
            .unset_secrets
            .iter()
            .map(|u| format!("{}: {}", u.path, u.reason()))
            .collect();
        Err(format!(
            "{}: validated without its secrets, cannot serve: {}",
            self.source.display(),
            list.join("; ")
        ))
    }

    /// Top-level claims any route reads after verification (`pin_headers`).
    pub fn claims_read_by_routes(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .routes
            .iter()
            .flat_map(|r| r.pin_headers.iter())
            .filter_map(|p| p.claim.first().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// `pin_headers`: the request header must equal the token claim, or is set
/// from it when absent.
#[derive(Debug, Clone)]
pub struct PinHeader {
    pub header: http::HeaderName,
    /// Dotted claim path, split.
    pub claim: Vec<String>,
}

/// Where the effective entitlements come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntitlementsFrom {
    Token,
    Metadata,
    /// The intersection: a grant must be in the token and still on the client.
    Both,
}

/// Where client metadata comes from (validated, secrets resolved).
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // built once per config load
#[derive(PartialEq, Eq)]
pub enum ClientSourceConfig {
    Static(Vec<crate::clients::ClientMeta>),
    Http {
        url: String,
        response_pointer: String,
        fields: crate::clients::FieldPointers,
        credential: crate::clients::oauth::Credential,
    },
}

/// `[clients]`. Compared on reload: an unchanged source keeps its cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientsConfig {
    pub source: ClientSourceConfig,
    pub cache: crate::clients::CachePolicy,
    pub timeout: Duration,
    pub entitlements_from: EntitlementsFrom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    Off,
    Stdout,
    File(PathBuf),
}

/// `[log]`: diagnostics and the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// Diagnostic log filter (`RUST_LOG` wins when set).
    pub level: String,
    pub format: LogFormat,
    pub audit: AuditTarget,
}
