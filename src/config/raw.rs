//! Serde structs that mirror the TOML file exactly. No logic here: every
//! value is checked and converted in [`super::validate`]. Unknown keys are an
//! error everywhere, so a typo never silently weakens a policy.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub issuers: Vec<RawIssuer>,
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub catalogs: std::collections::BTreeMap<String, RawCatalog>,
    pub clients: Option<RawClients>,
    pub log: Option<RawLog>,
    #[serde(default)]
    pub quotas: Vec<RawQuota>,
    pub cluster: Option<RawCluster>,
}

/// A number written as a TOML integer or float (`rate_per_second = 50` or `0.5`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum RawNumber {
    Int(i64),
    Float(f64),
}

impl RawNumber {
    pub fn as_f64(self) -> f64 {
        match self {
            RawNumber::Int(i) => i as f64,
            RawNumber::Float(f) => f,
        }
    }
}

/// `[[quotas]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuota {
    pub name: String,
    pub key: Option<String>,
    pub rate_per_second: RawNumber,
    pub burst: Option<i64>,
    #[serde(default)]
    pub overrides: std::collections::BTreeMap<String, RawQuotaLimit>,
}

/// One entry of a quota's `overrides`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuotaLimit {
    pub rate_per_second: RawNumber,
    pub burst: Option<i64>,
}

/// `[cluster]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub redis_url: String,
    pub redis_password_env: Option<String>,
    pub key_prefix: Option<String>,
    pub on_redis_error: Option<String>,
    pub timeout_ms: Option<i64>,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<String>,
    pub format: Option<String>,
    pub audit: Option<String>,
}

/// `[clients]`: metadata of the calling API client.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClients {
    pub source: String,
    pub url: Option<String>,
    pub bearer_env: Option<String>,
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_env: Option<String>,
    pub scope: Option<String>,
    pub response_pointer: Option<String>,
    pub fields: Option<RawClientFields>,
    pub ttl_seconds: Option<i64>,
    pub negative_ttl_seconds: Option<i64>,
    pub stale_if_error_seconds: Option<i64>,
    pub max_entries: Option<i64>,
    pub timeout_ms: Option<i64>,
    pub entitlements_from: Option<String>,
    #[serde(rename = "static", default)]
    pub statics: Vec<RawStaticClient>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientFields {
    pub enabled: Option<String>,
    pub entitlements: Option<String>,
    pub ip_filter_op: Option<String>,
    pub ip_filters: Option<String>,
    pub id: Option<String>,
    pub client_id: Option<String>,
}

/// `[[clients.static]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStaticClient {
    pub client_id: String,
    pub id: Option<String>,
    pub enabled: bool,
    #[serde(default)]
    pub entitlements: Vec<String>,
    pub ip_filter_op: Option<String>,
    #[serde(default)]
    pub ip_filters: Vec<String>,
}

/// `[catalogs.NAME]`: the entitlements an upstream knows.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCatalog {
    pub file: String,
    #[serde(default)]
    pub offerings: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Vec<String>>,
    pub tls: Option<RawTls>,
    pub threads: Option<i64>,
    pub trusted_proxies: Option<Vec<String>>,
    pub client_ip_header: Option<String>,
    pub max_body_bytes: Option<i64>,
    pub max_header_bytes: Option<i64>,
    pub max_headers: Option<i64>,
    pub header_timeout_ms: Option<i64>,
    pub body_timeout_ms: Option<i64>,
    pub keepalive_timeout_ms: Option<i64>,
    pub max_connections: Option<i64>,
    pub max_connections_per_ip: Option<i64>,
    pub shutdown_timeout_seconds: Option<i64>,
    pub token_cache_entries: Option<i64>,
    pub token_cache_max_seconds: Option<i64>,
    pub upgrade_sock: Option<String>,
    pub pid_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert_file: String,
    pub key_file: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    pub name: String,
    pub issuer: String,
    pub audiences: Option<Vec<String>>,
    pub algorithms: Option<Vec<String>>,
    pub token_types: Option<Vec<String>>,
    pub jwks_url: Option<String>,
    pub jwks_file: Option<String>,
    pub hmac_secret_env: Option<String>,
    pub jwks_refresh_seconds: Option<i64>,
    pub jwks_min_refetch_seconds: Option<i64>,
    pub leeway_seconds: Option<i64>,
    pub client_id_claims: Option<Vec<String>>,
    pub entitlements_claim: Option<String>,
    pub client_metadata: Option<bool>,
    pub introspection_url: Option<String>,
    pub introspection_client_id: Option<String>,
    pub introspection_client_secret_env: Option<String>,
    pub introspection_cache_seconds: Option<i64>,
    pub introspection_timeout_ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: String,
    pub url: String,
    pub endpoints: Option<Vec<String>>,
    pub host_header: Option<String>,
    pub connect_timeout_ms: Option<i64>,
    pub read_timeout_ms: Option<i64>,
    pub auth: Option<RawUpstreamAuth>,
    pub catalog: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamAuth {
    pub bearer_env: Option<String>,
    pub header: Option<String>,
    pub value_env: Option<String>,
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_env: Option<String>,
    pub scope: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    pub methods: Option<Vec<String>>,
    pub path: String,
    pub upstream: String,
    pub auth: Option<String>,
    pub issuers: Option<Vec<String>>,
    #[serde(default)]
    pub require_all: Vec<String>,
    #[serde(default)]
    pub require_any: Vec<String>,
    pub ip_allow: Option<Vec<String>>,
    pub ip_deny: Option<Vec<String>>,
    #[serde(default)]
    pub strip_authorization: bool,
    pub read_timeout_ms: Option<i64>,
    pub deny_self: Option<String>,
    pub invalidates_client: Option<String>,
    #[serde(default)]
    pub ids_case_insensitive: bool,
    pub pin_headers: Option<std::collections::BTreeMap<String, String>>,
    pub body: Option<RawBody>,
    pub response: Option<RawResponse>,
    pub quota: Option<String>,
}

/// `[routes.response]`: what leaves the gateway.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResponse {
    /// JSON pointer → entitlements that let a caller keep that member.
    #[serde(default)]
    pub redact: std::collections::BTreeMap<String, Vec<String>>,
    pub max_bytes: Option<i64>,
}

/// `[routes.body]`: policy on the request body of updates.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBody {
    pub max_bytes: Option<i64>,
    #[serde(default)]
    pub json: bool,
    /// JSON pointer → path parameter name.
    #[serde(default)]
    pub path_params: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub subset_of_caller: Vec<String>,
    /// JSON pointer → catalogue name.
    #[serde(default)]
    pub catalog: std::collections::BTreeMap<String, String>,
    /// JSON pointer → allowed string values.
    #[serde(default)]
    pub enums: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub cidrs: Vec<String>,
    pub only: Option<Vec<String>>,
    #[serde(default)]
    pub require: Vec<String>,
    /// JSON pointer → entitlements needed to write that field.
    #[serde(default)]
    pub field_requires: std::collections::BTreeMap<String, Vec<String>>,
}
