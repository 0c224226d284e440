//! Raw → typed, collecting every error with its key path.
//!
//! Each section is deserialized on its own (element by element for arrays)
//! so that one bad route does not hide the problems of the next one; then
//! each value is checked and converted. Nothing here panics on bad input.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use jsonwebtoken::Algorithm;
use serde::de::DeserializeOwned;

use super::model::*;
use super::raw::*;
use super::{ConfigError, EnvMode, Loaded};
use crate::policy::body::{BodyPolicy, CatalogRef};
use crate::policy::catalog::Catalog;
use crate::policy::client_ip::ClientIpHeader;
use crate::policy::entitlement_sets;
use crate::policy::entitlements::Requirement;
use crate::policy::ip::IpList;
use crate::policy::redact::{self, ResponsePolicy};
use crate::routing::{PathTemplate, RouteSpec, RouteTable};

const TOP_LEVEL_KEYS: &[&str] = &[
    "server",
    "admin",
    "issuers",
    "upstreams",
    "routes",
    "catalogs",
    "clients",
    "log",
    "quotas",
    "cluster",
];

/// Where errors accumulate while validating; secrets whose environment
/// variable is missing go to the second list (see [`env_secret`]).
pub(super) struct Errors(Vec<ConfigError>, Vec<UnsetSecret>);

impl Errors {
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// Validate config text; `origin` anchors relative paths; `mode` says
/// whether a secret missing from the environment is an error.
pub fn validate(text: &str, origin: &Path, mode: EnvMode) -> Result<Loaded, Vec<ConfigError>> {
    let mut errs = Errors(Vec::new(), Vec::new());
    let base_dir = origin
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));

    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            errs.push("", format!("not valid TOML: {}", e.to_string().trim_end()));
            return Err(errs.0);
        }
    };
    for key in table.keys() {
        if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
            errs.push(
                key.clone(),
                format!(
                    "unknown key{}",
                    suggestion(key, TOP_LEVEL_KEYS.iter().copied())
                ),
            );
        }
    }

    let raw_server: RawServer = section(&table, "server", &mut errs).unwrap_or_default();
    let raw_admin: RawAdmin = section(&table, "admin", &mut errs).unwrap_or_default();
    let raw_issuers: Vec<Option<RawIssuer>> = array(&table, "issuers", &mut errs);
    let raw_upstreams: Vec<Option<RawUpstream>> = array(&table, "upstreams", &mut errs);
    let raw_routes: Vec<Option<RawRoute>> = array(&table, "routes", &mut errs);
    let raw_catalogs: BTreeMap<String, RawCatalog> =
        section(&table, "catalogs", &mut errs).unwrap_or_default();
    let raw_clients: Option<RawClients> = section(&table, "clients", &mut errs);
    let raw_log: RawLog = section(&table, "log", &mut errs).unwrap_or_default();
    let raw_quotas: Vec<Option<RawQuota>> = array(&table, "quotas", &mut errs);
    let raw_cluster: Option<RawCluster> = section(&table, "cluster", &mut errs);
    let log = log_settings(raw_log, &base_dir, &mut errs);

    let server = server_settings(raw_server, &base_dir, &mut errs);
    let admin = admin_settings(raw_admin, &mut errs);
    shared_listeners(&server.listen, &admin.listen, &mut errs);

    let mut issuers = Vec::new();
    // Name → index of the valid entry; `None` for an entry whose own errors
    // were already reported, so references to it add no second error.
    let mut issuer_names: HashMap<String, Option<usize>> = HashMap::new();
    for (i, raw) in raw_issuers.into_iter().enumerate() {
        let Some(raw) = raw else { continue };
        let path = format!("issuers[{i}]");
        if issuer_names.contains_key(&raw.name) {
            errs.push(
                format!("{path}.name"),
                format!("duplicate issuer name {:?}", raw.name),
            );
            continue;
        }
        let name = raw.name.clone();
        let valid = issuer_config(raw, &path, &base_dir, &mut errs).map(|issuer| {
            issuers.push(Arc::new(issuer));
            issuers.len() - 1
        });
        issuer_names.insert(name, valid);
    }

    let (quotas, quota_names) = super::quotas::quotas(raw_quotas, &mut errs);
    let cluster = raw_cluster.and_then(|raw| super::quotas::cluster(raw, &mut errs));
    let catalogs = catalogs(raw_catalogs, &base_dir, &mut errs);
    let clients = raw_clients.and_then(|raw| clients_config(raw, &mut errs));

    let mut upstreams = Vec::new();
    let mut upstream_names: HashMap<String, Option<usize>> = HashMap::new();
    for (i, raw) in raw_upstreams.into_iter().enumerate() {
        let Some(raw) = raw else { continue };
        let path = format!("upstreams[{i}]");
        if upstream_names.contains_key(&raw.name) {
            errs.push(
                format!("{path}.name"),
                format!("duplicate upstream name {:?}", raw.name),
            );
            continue;
        }
        let name = raw.name.clone();
        let valid = upstream_config(raw, &path, &catalogs, &mut errs).map(|up| {
            upstreams.push(Arc::new(up));
            upstreams.len() - 1
        });
        upstream_names.insert(name, valid);
    }

    let mut routes = Vec::new();
    let mut route_paths = Vec::new();
    let mut route_names = HashSet::new();
    for (i, raw) in raw_routes.into_iter().enumerate() {
        let Some(raw) = raw else { continue };
        let path = format!("routes[{i}]");
        if !route_names.insert(raw.name.clone()) {
            errs.push(
                format!("{path}.name"),
                format!(
                    "duplicate route name {:?} (names label metrics and logs)",
                    raw.name
                ),
            );
        }
        let ctx = RouteContext {
            issuers: &issuer_names,
            upstreams: &upstream_names,
            upstream_configs: &upstreams,
            catalogs: &catalogs,
            quotas: &quota_names,
            quota_configs: &quotas,
            max_body_bytes: server.max_body_bytes,
        };
        if let Some(route) = route_config(raw, &path, &ctx, &mut errs) {
            routes.push(route);
            route_paths.push(path);
        }
    }

    // Every section was validated with placeholders for missing secrets, so
    // a missing secret is reported once, under its own key, and never as
    // "refers to the invalid upstream" on every route that names it.
    let unset_secrets = std::mem::take(&mut errs.1);
    if mode == EnvMode::Strict {
        for unset in &unset_secrets {
            errs.push(unset.path.clone(), unset.reason());
        }
    }
    if !errs.0.is_empty() {
        return Err(errs.0);
    }

    let route_table = RouteTable::new(
        routes
            .iter()
            .map(|r| RouteSpec {
                methods: r.methods.clone(),
                template: r.path.clone(),
            })
            .collect(),
    );
    let warnings = route_table
        .shadowed()
        .into_iter()
        .map(|(shadowed, by)| {
            format!(
                "{}: route {:?} is never used: route {:?} ({}) matches every request it would",
                route_paths[shadowed], routes[shadowed].name, routes[by].name, route_paths[by]
            )
        })
        .collect();

    let mut protected_headers: Vec<String> = routes
        .iter()
        .flat_map(|r| r.pin_headers.iter().map(|p| p.header.as_str().to_string()))
        .chain(upstreams.iter().filter_map(|u| match &u.auth {
            Some(UpstreamAuth::Header { name, .. }) => Some(name.as_str().to_string()),
            _ => None,
        }))
        .collect();
    protected_headers.sort();
    protected_headers.dedup();

    Ok(Loaded {
        config: Config {
            protected_headers,
            source: origin.to_path_buf(),
            server,
            admin,
            issuers,
            upstreams,
            routes,
            route_table,
            catalogs,
            clients,
            log,
            hash: config_hash(text),
            unset_secrets,
            quotas,
            cluster,
        },
        warnings,
    })
}

// === deserialization with key paths ===

fn deserialize<T: DeserializeOwned>(
    value: toml::Value,
    prefix: &str,
    errs: &mut Errors,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let path = if inner == "." || inner.is_empty() {
                prefix.to_string()
            } else if inner.starts_with('[') {
                format!("{prefix}{inner}")
            } else {
                format!("{prefix}.{inner}")
            };
            errs.push(path, serde_message(&e.into_inner()));
            None
        }
    }
}

/// toml's messages carry a span that means nothing for a sub-value; keep the text.
fn serde_message(e: &toml::de::Error) -> String {
    e.message().trim_end().to_string()
}

fn section<T: DeserializeOwned>(table: &toml::Table, key: &str, errs: &mut Errors) -> Option<T> {
    let value = table.get(key)?.clone();
    if !value.is_table() {
        errs.push(key, "must be a table");
        return None;
    }
    deserialize(value, key, errs)
}

fn array<T: DeserializeOwned>(table: &toml::Table, key: &str, errs: &mut Errors) -> Vec<Option<T>> {
    let Some(value) = table.get(key) else {
        return Vec::new();
    };
    let Some(items) = value.as_array() else {
        errs.push(key, format!("must be an array of tables ([[{key}]])"));
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| deserialize(item.clone(), &format!("{key}[{i}]"), errs))
        .collect()
}

// === [server] and [admin] ===

fn server_settings(raw: RawServer, base_dir: &Path, errs: &mut Errors) -> ServerSettings {
    let listen = raw
        .listen
        .unwrap_or_else(|| vec!["0.0.0.0:8080".to_string()]);
    if listen.is_empty() {
        errs.push("server.listen", "needs at least one address");
    }
    for (i, addr) in listen.iter().enumerate() {
        if addr.parse::<SocketAddr>().is_err() {
            errs.push(
                format!("server.listen[{i}]"),
                format!("{addr:?} is not an IP:port socket address"),
            );
        }
    }
    let tls = raw.tls.map(|t| TlsSettings {
        cert_file: readable_file(&t.cert_file, base_dir, "server.tls.cert_file", errs),
        key_file: readable_file(&t.key_file, base_dir, "server.tls.key_file", errs),
    });
    let default_threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads = positive(
        raw.threads,
        default_threads as i64,
        1024,
        "server.threads",
        errs,
    ) as usize;
    let trusted_proxies = ip_list(
        raw.trusted_proxies.as_deref().unwrap_or_default(),
        "server.trusted_proxies",
        errs,
    );
    let client_ip_header = match raw.client_ip_header.as_deref() {
        None => ClientIpHeader::default(),
        Some(text) => ClientIpHeader::parse(text).unwrap_or_else(|| {
            errs.push(
                "server.client_ip_header",
                format!("{text:?} is not \"x-forwarded-for\" or \"forwarded\""),
            );
            ClientIpHeader::default()
        }),
    };
    // Pingora parses at most 256 headers (more is its own 400); 1 MiB of header bytes.
    let max_headers = positive(raw.max_headers, 100, 256, "server.max_headers", errs) as usize;
    let max_header_bytes = positive(
        raw.max_header_bytes,
        32768,
        1_048_575,
        "server.max_header_bytes",
        errs,
    ) as usize;
    let max_body_bytes = positive(
        raw.max_body_bytes,
        65536,
        i64::MAX,
        "server.max_body_bytes",
        errs,
    ) as u64;
    let header_timeout = millis(
        raw.header_timeout_ms,
        10_000,
        "server.header_timeout_ms",
        errs,
    );
    let body_timeout = millis(raw.body_timeout_ms, 30_000, "server.body_timeout_ms", errs);
    let keepalive_timeout = millis(
        raw.keepalive_timeout_ms,
        60_000,
        "server.keepalive_timeout_ms",
        errs,
    );
    let max_connections = positive(
        raw.max_connections,
        10_000,
        10_000_000,
        "server.max_connections",
        errs,
    ) as usize;
    let max_connections_per_ip = positive(
        raw.max_connections_per_ip,
        256,
        10_000_000,
        "server.max_connections_per_ip",
        errs,
    ) as usize;
    let shutdown_timeout = Duration::from_secs(positive(
        raw.shutdown_timeout_seconds,
        30,
        3600,
        "server.shutdown_timeout_seconds",
        errs,
    ) as u64);
    let upgrade_sock = raw
        .upgrade_sock
        .map(|p| base_dir.join(p))
        .unwrap_or_else(|| PathBuf::from("/tmp/portcullis_upgrade.sock"));
    let pid_file = raw
        .pid_file
        .map(|p| base_dir.join(p))
        .unwrap_or_else(|| PathBuf::from("/tmp/portcullis.pid"));
    let token_cache = crate::auth::TokenCacheSettings {
        max_entries: non_negative(
            raw.token_cache_entries,
            100_000,
            10_000_000,
            "server.token_cache_entries",
            errs,
        ) as u64,
        max_ttl: Duration::from_secs(non_negative(
            raw.token_cache_max_seconds,
            300,
            86_400,
            "server.token_cache_max_seconds",
            errs,
        ) as u64),
    };
    ServerSettings {
        token_cache,
        shutdown_timeout,
        upgrade_sock,
        pid_file,
        listen,
        tls,
        threads,
        trusted_proxies: trusted_proxies.unwrap_or_default(),
        client_ip_header,
        max_body_bytes,
        max_header_bytes,
        max_headers,
        header_timeout,
        body_timeout,
        keepalive_timeout,
        max_connections,
        max_connections_per_ip,
    }
}

fn admin_settings(raw: RawAdmin, errs: &mut Errors) -> AdminSettings {
    let listen = raw.listen.unwrap_or_else(|| "127.0.0.1:9090".to_string());
    if listen.parse::<SocketAddr>().is_err() {
        errs.push(
            "admin.listen",
            format!("{listen:?} is not an IP:port socket address"),
        );
    }
    let token = raw
        .token_env
        .as_ref()
        .and_then(|env| env_secret(env, "admin.token_env", errs));
    AdminSettings {
        listen,
        token_env: raw.token_env,
        token,
    }
}

/// Two listeners on one address are refused. The kernel would refuse the
/// second bind at start-up (pingora retries it for 30 s first), and where it
/// would not — the same address text twice, port 0 included — pingora keys
/// its listening sockets by that text: both listeners would own one file
/// descriptor and both close it ("owned file descriptor already closed", or
/// another socket closed under its owner).
fn shared_listeners(listen: &[String], admin: &str, errs: &mut Errors) {
    let entries = listen
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("server.listen[{i}]"), a.as_str()))
        .chain(std::iter::once(("admin.listen".to_string(), admin)));
    let mut seen: Vec<(String, &str, SocketAddr)> = Vec::new();
    for (path, text) in entries {
        // An entry that does not parse was reported already.
        let Ok(addr) = text.parse::<SocketAddr>() else {
            continue;
        };
        if let Some((other, other_text, _)) =
            seen.iter().find(|(_, _, a)| listeners_overlap(*a, addr))
        {
            errs.push(
                path.clone(),
                format!(
                    "{text:?} overlaps {other} ({other_text:?}); each listener needs an address of its own"
                ),
            );
        }
        seen.push((path, text, addr));
    }
}

/// Whether two listeners would contend for one socket: the same address and
/// port, or a wildcard address (`0.0.0.0` for IPv4, `[::]` for both families:
/// Linux binds it dual-stack) on the same non-zero port. Two port-0 listeners
/// get distinct kernel-chosen ports unless their addresses are the same.
fn listeners_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() {
        return false;
    }
    let (ia, ib) = (a.ip().to_canonical(), b.ip().to_canonical());
    ia == ib || (a.port() != 0 && (wildcard_covers(ia, ib) || wildcard_covers(ib, ia)))
}

fn wildcard_covers(wildcard: std::net::IpAddr, other: std::net::IpAddr) -> bool {
    match wildcard {
        std::net::IpAddr::V6(w) => w.is_unspecified(),
        std::net::IpAddr::V4(w) => w.is_unspecified() && other.is_ipv4(),
    }
}

// === [[issuers]] ===

fn issuer_config(
    raw: RawIssuer,
    path: &str,
    base_dir: &Path,
    errs: &mut Errors,
) -> Option<IssuerConfig> {
    let before = errs.0.len();
    if raw.name.trim().is_empty() {
        errs.push(format!("{path}.name"), "must not be empty");
    }
    if raw.issuer.is_empty() {
        errs.push(format!("{path}.issuer"), "must not be empty");
    }

    let sources = [
        raw.jwks_url.is_some(),
        raw.jwks_file.is_some(),
        raw.hmac_secret_env.is_some(),
        raw.introspection_url.is_some(),
    ];
    let source_count = sources.iter().filter(|s| **s).count();
    if source_count != 1 {
        errs.push(
            path.to_string(),
            "needs exactly one of jwks_url, jwks_file, hmac_secret_env, introspection_url",
        );
    }
    let introspects = raw.introspection_url.is_some();
    let introspection = introspection_config(&raw, path, errs);

    let mut algorithms = Vec::new();
    match &raw.algorithms {
        // Opaque tokens carry no algorithm; the JWT-only keys are refused
        // below so a mixed-up entry is caught at load.
        _ if introspects => {}
        None => errs.push(
            format!("{path}.algorithms"),
            "is required (e.g. [\"RS256\"])",
        ),
        Some(list) if list.is_empty() => errs.push(
            format!("{path}.algorithms"),
            "must name at least one algorithm",
        ),
        Some(list) => {
            for (i, name) in list.iter().enumerate() {
                match parse_algorithm(name) {
                    Ok(alg) => algorithms.push(alg),
                    Err(msg) => errs.push(format!("{path}.algorithms[{i}]"), msg),
                }
            }
        }
    }
    let is_hmac =
        |a: &Algorithm| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
    if raw.hmac_secret_env.is_some() {
        if let Some(a) = algorithms.iter().find(|a| !is_hmac(a)) {
            errs.push(
                format!("{path}.algorithms"),
                format!("{a:?} needs a public key; hmac_secret_env only verifies HS256/384/512"),
            );
        }
    } else if let Some(a) = algorithms.iter().find(|a| is_hmac(a)) {
        errs.push(
            format!("{path}.algorithms"),
            format!("{a:?} is only allowed with hmac_secret_env (never with public keys)"),
        );
    }

    let keys = if let Some(intro) = introspection {
        Some(KeySource::Introspection(Arc::new(intro)))
    } else if introspects {
        None
    } else if let Some(url) = &raw.jwks_url {
        check_url(url, &format!("{path}.jwks_url"), errs);
        Some(KeySource::JwksUrl(url.clone()))
    } else if let Some(file) = &raw.jwks_file {
        let key = format!("{path}.jwks_file");
        let full = base_dir.join(file);
        match std::fs::read_to_string(&full) {
            Err(e) => {
                errs.push(key, format!("cannot read {}: {e}", full.display()));
                None
            }
            Ok(document) => match crate::auth::keys::KeySet::from_jwks_json(document.as_bytes()) {
                Err(e) => {
                    errs.push(key, format!("{} is not a usable JWKS: {e}", full.display()));
                    None
                }
                Ok(set) if set.is_empty() => {
                    errs.push(
                        key,
                        format!("{} holds no usable verification key", full.display()),
                    );
                    None
                }
                Ok(_) => Some(KeySource::JwksFile {
                    path: full,
                    document,
                }),
            },
        }
    } else if let Some(env) = &raw.hmac_secret_env {
        let key = format!("{path}.hmac_secret_env");
        env_secret(env, &key, errs).and_then(|secret| {
            // RFC 7518 §3.2: the key must be at least as long as the hash output.
            let needed = algorithms
                .iter()
                .map(|a| match a {
                    Algorithm::HS384 => 48,
                    Algorithm::HS512 => 64,
                    _ => 32,
                })
                .max()
                .unwrap_or(32);
            if secret.0.len() < needed {
                errs.push(
                    key,
                    format!("the secret in ${env} is shorter than {needed} bytes (RFC 7518 §3.2)"),
                );
                None
            } else {
                Some(KeySource::HmacSecret {
                    env: env.clone(),
                    secret,
                })
            }
        })
    } else {
        None
    };

    let token_types = match raw.token_types {
        None => TokenTypes::default(),
        Some(values) => {
            if values.is_empty() {
                errs.push(format!("{path}.token_types"), "must not be empty");
            }
            TokenTypes {
                values,
                allow_absent: false,
            }
        }
    };
    let audiences = raw.audiences.unwrap_or_default();
    for (i, a) in audiences.iter().enumerate() {
        if a.is_empty() {
            errs.push(format!("{path}.audiences[{i}]"), "must not be empty");
        }
    }
    let jwks_refresh = Duration::from_secs(positive(
        raw.jwks_refresh_seconds,
        300,
        86_400,
        &format!("{path}.jwks_refresh_seconds"),
        errs,
    ) as u64);
    let jwks_min_refetch = Duration::from_secs(non_negative(
        raw.jwks_min_refetch_seconds,
        30,
        86_400,
        &format!("{path}.jwks_min_refetch_seconds"),
        errs,
    ) as u64);
    let leeway_seconds = non_negative(
        raw.leeway_seconds,
        30,
        600,
        &format!("{path}.leeway_seconds"),
        errs,
    ) as u64;
    let client_id_claims = raw
        .client_id_claims
        .unwrap_or_else(|| vec!["client_id".into(), "azp".into(), "cid".into()]);
    for (i, c) in client_id_claims.iter().enumerate() {
        if c.is_empty() {
            errs.push(format!("{path}.client_id_claims[{i}]"), "must not be empty");
        }
    }
    let claim = raw
        .entitlements_claim
        .unwrap_or_else(|| "entitlements".to_string());
    let entitlements_claim: Vec<String> = claim.split('.').map(str::to_string).collect();
    if entitlements_claim.iter().any(String::is_empty) {
        errs.push(
            format!("{path}.entitlements_claim"),
            format!("{claim:?} is not a claim name or dotted path"),
        );
    }

    if errs.0.len() != before {
        return None;
    }
    Some(IssuerConfig {
        name: raw.name,
        issuer: raw.issuer,
        audiences,
        algorithms,
        token_types,
        keys: keys?,
        jwks_refresh,
        jwks_min_refetch,
        leeway_seconds,
        client_id_claims,
        entitlements_claim,
        client_metadata: raw.client_metadata.unwrap_or(true),
    })
}

/// The `introspection_*` keys: required together with `introspection_url`,
/// refused without it; the JWT-only keys are refused with it.
fn introspection_config(
    raw: &RawIssuer,
    path: &str,
    errs: &mut Errors,
) -> Option<IntrospectionConfig> {
    let Some(url) = &raw.introspection_url else {
        for (key, present) in [
            (
                "introspection_client_id",
                raw.introspection_client_id.is_some(),
            ),
            (
                "introspection_client_secret_env",
                raw.introspection_client_secret_env.is_some(),
            ),
            (
                "introspection_cache_seconds",
                raw.introspection_cache_seconds.is_some(),
            ),
            (
                "introspection_timeout_ms",
                raw.introspection_timeout_ms.is_some(),
            ),
        ] {
            if present {
                errs.push(
                    format!("{path}.{key}"),
                    "only applies with introspection_url",
                );
            }
        }
        return None;
    };
    for (key, present) in [
        ("algorithms", raw.algorithms.is_some()),
        ("token_types", raw.token_types.is_some()),
        ("jwks_refresh_seconds", raw.jwks_refresh_seconds.is_some()),
        (
            "jwks_min_refetch_seconds",
            raw.jwks_min_refetch_seconds.is_some(),
        ),
    ] {
        if present {
            errs.push(
                format!("{path}.{key}"),
                "is not used with introspection_url (opaque tokens have no header or keys)",
            );
        }
    }
    let before = errs.0.len();
    check_url(url, &format!("{path}.introspection_url"), errs);
    let client_id = match &raw.introspection_client_id {
        Some(id) if !id.is_empty() => id.clone(),
        Some(_) => {
            errs.push(
                format!("{path}.introspection_client_id"),
                "must not be empty",
            );
            String::new()
        }
        None => {
            errs.push(
                format!("{path}.introspection_client_id"),
                "is required with introspection_url (RFC 7662 §2.1: the gateway authenticates itself)",
            );
            String::new()
        }
    };
    let secret = match &raw.introspection_client_secret_env {
        Some(env) => env_secret(
            env,
            &format!("{path}.introspection_client_secret_env"),
            errs,
        )
        .map(|secret| (env.clone(), secret)),
        None => {
            errs.push(
                format!("{path}.introspection_client_secret_env"),
                "is required with introspection_url",
            );
            None
        }
    };
    let cache_ttl = Duration::from_secs(non_negative(
        raw.introspection_cache_seconds,
        60,
        86_400,
        &format!("{path}.introspection_cache_seconds"),
        errs,
    ) as u64);
    let timeout = millis(
        raw.introspection_timeout_ms,
        2000,
        &format!("{path}.introspection_timeout_ms"),
        errs,
    );
    let (client_secret_env, client_secret) = secret?;
    (errs.0.len() == before).then(|| IntrospectionConfig {
        url: url.clone(),
        client_id,
        client_secret,
        client_secret_env,
        cache_ttl,
        timeout,
    })
}

fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    if let Some(alg) = crate::auth::keys::algorithm_from_name(name) {
        return Ok(alg);
    }
    if name.eq_ignore_ascii_case("none") {
        return Err("\"none\" is never accepted: tokens must be signed".into());
    }
    Err(format!(
        "unknown algorithm {name:?}{}",
        suggestion(name, ALGORITHMS.iter().copied())
    ))
}

const ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256",
    "HS384", "HS512",
];

// === [[upstreams]] ===

fn upstream_config(
    raw: RawUpstream,
    path: &str,
    catalogs: &HashMap<String, CatalogRef>,
    errs: &mut Errors,
) -> Option<UpstreamConfig> {
    let before = errs.0.len();
    if raw.name.trim().is_empty() {
        errs.push(format!("{path}.name"), "must not be empty");
    }
    let url_key = format!("{path}.url");
    let parsed = check_url(&raw.url, &url_key, errs);
    let (tls, host, port) = match &parsed {
        Some(url) => {
            if !(url.path().is_empty() || url.path() == "/") || url.query().is_some() {
                errs.push(
                    url_key.clone(),
                    "must be scheme://host:port only; the request path is forwarded unchanged",
                );
            }
            if !url.username().is_empty() || url.password().is_some() {
                errs.push(url_key.clone(), "must not carry credentials; use `auth`");
            }
            let host = url.host_str().unwrap_or_default().to_string();
            let port = url.port_or_known_default().unwrap_or(80);
            (url.scheme() == "https", host, port)
        }
        None => (false, String::new(), 0),
    };
    let bare_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let mut addresses = vec![format_addr(&bare_host, port)];
    for (i, ep) in raw.endpoints.unwrap_or_default().iter().enumerate() {
        match split_host_port(ep) {
            Some((h, p)) => addresses.push(format_addr(h, p)),
            None => errs.push(
                format!("{path}.endpoints[{i}]"),
                format!("{ep:?} is not host:port"),
            ),
        }
    }
    let default_port = if tls { 443 } else { 80 };
    let host_header = raw.host_header.unwrap_or_else(|| {
        if port == default_port {
            host.clone()
        } else {
            format!("{host}:{port}")
        }
    });
    if http::HeaderValue::from_str(&host_header).is_err() || host_header.is_empty() {
        errs.push(format!("{path}.host_header"), "is not a valid Host value");
    }
    let connect_timeout = millis(
        raw.connect_timeout_ms,
        2000,
        &format!("{path}.connect_timeout_ms"),
        errs,
    );
    let read_timeout = millis(
        raw.read_timeout_ms,
        30_000,
        &format!("{path}.read_timeout_ms"),
        errs,
    );
    let auth = raw
        .auth
        .and_then(|a| upstream_auth(a, &format!("{path}.auth"), errs));
    if let Some(name) = &raw.catalog {
        if !catalogs.contains_key(name) {
            errs.push(
                format!("{path}.catalog"),
                format!(
                    "no catalog named {name:?}{}",
                    suggestion(name, catalogs.keys().map(String::as_str))
                ),
            );
        }
    }
    if errs.0.len() != before {
        return None;
    }
    Some(UpstreamConfig {
        name: raw.name,
        tls,
        host: bare_host,
        addresses,
        host_header,
        connect_timeout,
        read_timeout,
        auth,
        catalog: raw.catalog,
    })
}

// === [log] ===

fn log_settings(raw: RawLog, base_dir: &Path, errs: &mut Errors) -> LogSettings {
    let level = raw.level.unwrap_or_else(|| "info".to_string());
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        errs.push(
            "log.level",
            format!("{level:?} is not a log filter (e.g. \"info\", \"portcullis=debug\")"),
        );
    }
    let format = match raw.format.as_deref() {
        None | Some("json") => LogFormat::Json,
        Some("text") => LogFormat::Text,
        Some(other) => {
            errs.push(
                "log.format",
                format!("{other:?} is not \"json\" or \"text\""),
            );
            LogFormat::Json
        }
    };
    let audit = match raw.audit.as_deref() {
        None | Some("stdout") => AuditTarget::Stdout,
        Some("off") => AuditTarget::Off,
        Some("") => {
            errs.push("log.audit", "must be \"stdout\", \"off\" or a file path");
            AuditTarget::Off
        }
        Some(path) => AuditTarget::File(base_dir.join(path)),
    };
    LogSettings {
        level,
        format,
        audit,
    }
}

fn config_hash(text: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes());
    hex::encode(&digest[..8])
}

// === [clients] ===

fn clients_config(raw: RawClients, errs: &mut Errors) -> Option<ClientsConfig> {
    use crate::clients::oauth::Credential;
    use crate::clients::{CachePolicy, ClientMeta, FieldPointers, IpFilter};
    let before = errs.0.len();
    let p = "clients";
    let entitlements_from = match raw.entitlements_from.as_deref() {
        None | Some("both") => EntitlementsFrom::Both,
        Some("token") => EntitlementsFrom::Token,
        Some("metadata") => EntitlementsFrom::Metadata,
        Some(other) => {
            errs.push(
                format!("{p}.entitlements_from"),
                format!("{other:?} is not \"token\", \"metadata\" or \"both\""),
            );
            EntitlementsFrom::Both
        }
    };
    let http_keys = [
        ("url", raw.url.is_some()),
        ("bearer_env", raw.bearer_env.is_some()),
        ("token_url", raw.token_url.is_some()),
        ("client_id", raw.client_id.is_some()),
        ("client_secret_env", raw.client_secret_env.is_some()),
        ("scope", raw.scope.is_some()),
        ("response_pointer", raw.response_pointer.is_some()),
        ("fields", raw.fields.is_some()),
    ];
    let source = match raw.source.as_str() {
        "static" => {
            for (key, present) in http_keys {
                if present {
                    errs.push(format!("{p}.{key}"), "only applies to source = \"http\"");
                }
            }
            let mut seen = HashSet::new();
            let mut list = Vec::new();
            for (i, c) in raw.statics.iter().enumerate() {
                let key = format!("{p}.static[{i}]");
                if c.client_id.is_empty() || !seen.insert(c.client_id.clone()) {
                    errs.push(format!("{key}.client_id"), "must be non-empty and unique");
                }
                let filters = ip_list(&c.ip_filters, &format!("{key}.ip_filters"), errs);
                let ip_filter = match (c.ip_filter_op.as_deref(), filters) {
                    (None, _) => IpFilter::Off,
                    (Some("allow"), Some(l)) => IpFilter::Allow(l),
                    (Some("deny"), Some(l)) => IpFilter::Deny(l),
                    (Some("allow" | "deny"), None) => IpFilter::Off,
                    (Some(other), _) => {
                        errs.push(
                            format!("{key}.ip_filter_op"),
                            format!("{other:?} is not \"allow\" or \"deny\""),
                        );
                        IpFilter::Off
                    }
                };
                list.push(ClientMeta {
                    client_id: c.client_id.as_str().into(),
                    id: c.id.as_deref().map(Box::from),
                    enabled: c.enabled,
                    entitlements: entitlement_sets::intern(c.entitlements.clone()),
                    ip_filter,
                });
            }
            ClientSourceConfig::Static(list)
        }
        "http" => {
            if !raw.statics.is_empty() {
                errs.push(format!("{p}.static"), "only applies to source = \"static\"");
            }
            let url = match &raw.url {
                None => {
                    errs.push(format!("{p}.url"), "is required with source = \"http\"");
                    String::new()
                }
                Some(url) => {
                    if !url.contains("{client_id}") {
                        errs.push(format!("{p}.url"), "must contain {client_id}");
                    }
                    check_url(&url.replace("{client_id}", "x"), &format!("{p}.url"), errs);
                    url.clone()
                }
            };
            let credential = match (&raw.bearer_env, &raw.token_url) {
                (Some(_), Some(_)) => {
                    errs.push(
                        p.to_string(),
                        "use either bearer_env or token_url, not both",
                    );
                    Credential::None
                }
                (Some(env), None) => env_secret(env, &format!("{p}.bearer_env"), errs)
                    .map(Credential::Bearer)
                    .unwrap_or(Credential::None),
                (None, Some(token_url)) => {
                    check_url(token_url, &format!("{p}.token_url"), errs);
                    let client_id = raw.client_id.clone().unwrap_or_else(|| {
                        errs.push(format!("{p}.client_id"), "is required with token_url");
                        String::new()
                    });
                    let secret = match &raw.client_secret_env {
                        Some(env) => env_secret(env, &format!("{p}.client_secret_env"), errs),
                        None => {
                            errs.push(
                                format!("{p}.client_secret_env"),
                                "is required with token_url",
                            );
                            None
                        }
                    };
                    match secret {
                        Some(client_secret) => Credential::ClientCredentials {
                            token_url: token_url.clone(),
                            client_id,
                            client_secret,
                            scope: raw.scope.clone(),
                        },
                        None => Credential::None,
                    }
                }
                (None, None) => {
                    for key in ["client_id", "client_secret_env", "scope"] {
                        if http_keys.iter().any(|(k, present)| *k == key && *present) {
                            errs.push(format!("{p}.{key}"), "only applies with token_url");
                        }
                    }
                    Credential::None
                }
            };
            let response_pointer = raw.response_pointer.clone().unwrap_or_default();
            json_pointer(
                &response_pointer,
                &format!("{p}.response_pointer"),
                true,
                errs,
            );
            let defaults = FieldPointers::default();
            let f = raw.fields.unwrap_or_default();
            let fields = FieldPointers {
                enabled: f.enabled.unwrap_or(defaults.enabled),
                entitlements: f.entitlements.unwrap_or(defaults.entitlements),
                ip_filter_op: f.ip_filter_op.unwrap_or(defaults.ip_filter_op),
                ip_filters: f.ip_filters.unwrap_or(defaults.ip_filters),
                id: f.id.unwrap_or(defaults.id),
                client_id: f.client_id.unwrap_or(defaults.client_id),
            };
            for (key, ptr) in [
                ("enabled", &fields.enabled),
                ("entitlements", &fields.entitlements),
                ("ip_filter_op", &fields.ip_filter_op),
                ("ip_filters", &fields.ip_filters),
                ("id", &fields.id),
            ] {
                json_pointer(ptr, &format!("{p}.fields.{key}"), false, errs);
            }
            // Empty: the record carries no client id to check.
            json_pointer(
                &fields.client_id,
                &format!("{p}.fields.client_id"),
                true,
                errs,
            );
            ClientSourceConfig::Http {
                url,
                response_pointer,
                fields,
                credential,
            }
        }
        other => {
            errs.push(
                format!("{p}.source"),
                format!("{other:?} is not \"http\" or \"static\""),
            );
            return None;
        }
    };
    let secs = |v, d, key: &str, errs: &mut Errors| {
        Duration::from_secs(non_negative(v, d, 86_400 * 7, &format!("{p}.{key}"), errs) as u64)
    };
    let cache = CachePolicy {
        ttl: secs(raw.ttl_seconds, 60, "ttl_seconds", errs),
        negative_ttl: secs(raw.negative_ttl_seconds, 10, "negative_ttl_seconds", errs),
        stale_if_error: secs(
            raw.stale_if_error_seconds,
            300,
            "stale_if_error_seconds",
            errs,
        ),
        max_entries: positive(
            raw.max_entries,
            100_000,
            100_000_000,
            &format!("{p}.max_entries"),
            errs,
        ) as u64,
    };
    let timeout = millis(raw.timeout_ms, 2000, &format!("{p}.timeout_ms"), errs);
    if errs.0.len() != before {
        return None;
    }
    Some(ClientsConfig {
        source,
        cache,
        timeout,
        entitlements_from,
    })
}

/// RFC 6901: empty (whole document, only where `allow_empty`) or `/`-led with
/// `~` only as `~0` / `~1`.
fn json_pointer(ptr: &str, path: &str, allow_empty: bool, errs: &mut Errors) {
    let ok = (ptr.is_empty() && allow_empty)
        || (ptr.starts_with('/') && {
            let b = ptr.as_bytes();
            b.iter()
                .enumerate()
                .all(|(i, c)| *c != b'~' || matches!(b.get(i + 1), Some(b'0' | b'1')))
        });
    if !ok {
        errs.push(
            path.to_string(),
            format!("{ptr:?} is not a JSON pointer (RFC 6901)"),
        );
    }
}

// === [catalogs.NAME] ===

/// Offering codes the entitlement catalogues use (IBM Verify's offerings).
const OFFERING_CODES: &[&str] = &["CIC", "CIV", "CIA", "CIG", "ISC"];

fn catalogs(
    raw: BTreeMap<String, RawCatalog>,
    base_dir: &Path,
    errs: &mut Errors,
) -> HashMap<String, CatalogRef> {
    let mut out = HashMap::new();
    for (name, raw) in raw {
        let path = format!("catalogs.{name}");
        for (i, code) in raw.offerings.iter().enumerate() {
            if !OFFERING_CODES.contains(&code.as_str()) {
                errs.push(
                    format!("{path}.offerings[{i}]"),
                    format!(
                        "unknown offering {code:?} (known: {}){}",
                        OFFERING_CODES.join(", "),
                        suggestion(code, OFFERING_CODES.iter().copied())
                    ),
                );
            }
        }
        match Catalog::load(&base_dir.join(&raw.file)) {
            Ok(catalog) => {
                out.insert(
                    name,
                    CatalogRef {
                        catalog: Arc::new(catalog),
                        offerings: raw.offerings,
                    },
                );
            }
            Err(e) => errs.push(format!("{path}.file"), e),
        }
    }
    out
}

fn upstream_auth(raw: RawUpstreamAuth, path: &str, errs: &mut Errors) -> Option<UpstreamAuth> {
    let oauth = raw.token_url.is_some()
        || raw.client_id.is_some()
        || raw.client_secret_env.is_some()
        || raw.scope.is_some();
    if oauth {
        if raw.bearer_env.is_some() || raw.header.is_some() || raw.value_env.is_some() {
            errs.push(
                path.to_string(),
                "use one form: { bearer_env }, { header, value_env } or { token_url, client_id, client_secret_env, scope }",
            );
            return None;
        }
        return upstream_client_credentials(raw, path, errs);
    }
    match (raw.bearer_env, raw.header, raw.value_env) {
        (Some(env), None, None) => {
            let token = env_secret(&env, &format!("{path}.bearer_env"), errs)?;
            Some(UpstreamAuth::Bearer { env, token })
        }
        (None, Some(header), Some(env)) => {
            let name = match http::HeaderName::from_bytes(header.as_bytes()) {
                Ok(n) => n,
                Err(_) => {
                    errs.push(
                        format!("{path}.header"),
                        format!("{header:?} is not a header name"),
                    );
                    return None;
                }
            };
            let value = env_secret(&env, &format!("{path}.value_env"), errs)?;
            Some(UpstreamAuth::Header { name, env, value })
        }
        _ => {
            errs.push(
                path.to_string(),
                "use { bearer_env = \"VAR\" }, { header = \"NAME\", value_env = \"VAR\" } or { token_url, client_id, client_secret_env, scope }",
            );
            None
        }
    }
}

/// `auth = { token_url, client_id, client_secret_env, scope }`.
fn upstream_client_credentials(
    raw: RawUpstreamAuth,
    path: &str,
    errs: &mut Errors,
) -> Option<UpstreamAuth> {
    let before = errs.0.len();
    let token_url = match raw.token_url {
        Some(url) => {
            check_url(&url, &format!("{path}.token_url"), errs);
            url
        }
        None => {
            errs.push(
                format!("{path}.token_url"),
                "is required with client_id / client_secret_env",
            );
            String::new()
        }
    };
    let client_id = match raw.client_id {
        Some(id) if !id.is_empty() => id,
        Some(_) => {
            errs.push(format!("{path}.client_id"), "must not be empty");
            String::new()
        }
        None => {
            errs.push(format!("{path}.client_id"), "is required with token_url");
            String::new()
        }
    };
    if raw.scope.as_deref() == Some("") {
        errs.push(format!("{path}.scope"), "must not be empty (leave it out)");
    }
    let secret = match raw.client_secret_env {
        Some(env) => {
            env_secret(&env, &format!("{path}.client_secret_env"), errs).map(|secret| (env, secret))
        }
        None => {
            errs.push(
                format!("{path}.client_secret_env"),
                "is required with token_url",
            );
            None
        }
    };
    let (env, client_secret) = secret?;
    (errs.0.len() == before).then(|| UpstreamAuth::ClientCredentials {
        credential: crate::clients::oauth::Credential::ClientCredentials {
            token_url,
            client_id,
            client_secret,
            scope: raw.scope,
        },
        env,
    })
}

fn format_addr(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse().ok()?;
    (!host.is_empty()).then_some((host, port))
}

// === [[routes]] ===

struct RouteContext<'a> {
    issuers: &'a HashMap<String, Option<usize>>,
    upstreams: &'a HashMap<String, Option<usize>>,
    upstream_configs: &'a [Arc<UpstreamConfig>],
    catalogs: &'a HashMap<String, CatalogRef>,
    quotas: &'a HashMap<String, Option<usize>>,
    quota_configs: &'a [Arc<QuotaConfig>],
    max_body_bytes: u64,
}

fn route_config(
    raw: RawRoute,
    path: &str,
    ctx: &RouteContext<'_>,
    errs: &mut Errors,
) -> Option<RouteConfig> {
    let before = errs.0.len();
    if raw.name.trim().is_empty() {
        errs.push(format!("{path}.name"), "must not be empty");
    }
    let methods = raw.methods.as_ref().map(|list| {
        if list.is_empty() {
            errs.push(
                format!("{path}.methods"),
                "must not be empty (omit it for all methods)",
            );
        }
        list.iter()
            .enumerate()
            .filter_map(|(i, m)| match parse_method(m) {
                Ok(m) => Some(m),
                Err(e) => {
                    errs.push(format!("{path}.methods[{i}]"), e);
                    None
                }
            })
            .collect::<Vec<_>>()
    });
    let template = match PathTemplate::parse(&raw.path) {
        Ok(t) => Some(t),
        Err(e) => {
            errs.push(
                format!("{path}.path"),
                format!("bad template {:?}: {e}", raw.path),
            );
            None
        }
    };
    let upstream = lookup_name(
        &raw.upstream,
        ctx.upstreams,
        "upstream",
        &format!("{path}.upstream"),
        errs,
    );
    let auth = match raw.auth.as_deref() {
        None | Some("required") => AuthMode::Required,
        Some("none") => AuthMode::None,
        Some(other) => {
            errs.push(
                format!("{path}.auth"),
                format!("{other:?} is not \"required\" or \"none\""),
            );
            AuthMode::Required
        }
    };
    let issuers = match &raw.issuers {
        None => {
            let mut all: Vec<usize> = ctx.issuers.values().filter_map(|i| *i).collect();
            all.sort_unstable();
            all
        }
        Some(names) => names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                lookup_name(
                    n,
                    ctx.issuers,
                    "issuer",
                    &format!("{path}.issuers[{i}]"),
                    errs,
                )
            })
            .collect(),
    };
    if auth == AuthMode::Required && issuers.is_empty() && errs.0.len() == before {
        errs.push(
            path.to_string(),
            "requires a token but no issuer is configured (add [[issuers]] or auth = \"none\")",
        );
    }
    if auth == AuthMode::None {
        for (key, present) in [
            ("issuers", raw.issuers.is_some()),
            ("require_all", !raw.require_all.is_empty()),
            ("require_any", !raw.require_any.is_empty()),
        ] {
            if present {
                errs.push(
                    format!("{path}.{key}"),
                    "makes no sense with auth = \"none\" (no token is checked)",
                );
            }
        }
    }
    for (key, list) in [
        ("require_all", &raw.require_all),
        ("require_any", &raw.require_any),
    ] {
        for (i, name) in list.iter().enumerate() {
            if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '"') {
                errs.push(
                    format!("{path}.{key}[{i}]"),
                    format!("{name:?} is not an entitlement name"),
                );
            }
        }
    }
    if let Some(catalog) = upstream
        .and_then(|u| ctx.upstream_configs[u].catalog.as_ref())
        .and_then(|name| ctx.catalogs.get(name))
    {
        for (key, list) in [
            ("require_all", &raw.require_all),
            ("require_any", &raw.require_any),
        ] {
            for (i, name) in list.iter().enumerate() {
                if !catalog.catalog.contains(name) {
                    let hint = catalog
                        .catalog
                        .suggest(name)
                        .map(|s| format!("; did you mean {s:?}?"))
                        .unwrap_or_default();
                    errs.push(
                        format!("{path}.{key}[{i}]"),
                        format!("{name:?} is not in the upstream's entitlement catalog{hint}"),
                    );
                }
            }
        }
    }
    let param_names: Vec<&str> = template
        .as_ref()
        .map(|t| t.param_names().collect())
        .unwrap_or_default();
    if let Some(param) = &raw.deny_self {
        if template.is_some() && !param_names.contains(&param.as_str()) {
            errs.push(
                format!("{path}.deny_self"),
                format!("the path template has no parameter {{{param}}}"),
            );
        }
    }
    if let Some(param) = &raw.invalidates_client {
        if template.is_some() && !param_names.contains(&param.as_str()) {
            errs.push(
                format!("{path}.invalidates_client"),
                format!("the path template has no parameter {{{param}}}"),
            );
        }
    }
    let pin_headers = raw
        .pin_headers
        .as_ref()
        .map(|pins| pin_headers(pins, &format!("{path}.pin_headers"), errs))
        .unwrap_or_default();
    if auth == AuthMode::None && (raw.deny_self.is_some() || !pin_headers.is_empty()) {
        errs.push(
            path.to_string(),
            "deny_self and pin_headers need a token (auth = \"required\")",
        );
    }
    let body = raw.body.as_ref().and_then(|b| {
        BodyPolicy::compile(
            b,
            &format!("{path}.body"),
            // A checked body is replayed from pingora's 64 KiB retry buffer.
            ctx.max_body_bytes
                .min(crate::proxy::body::MAX_INSPECTED_BODY),
            &param_names,
            ctx.catalogs,
        )
        .map_err(|list| {
            for (key, reason) in list {
                errs.push(key, reason);
            }
        })
        .ok()
    });
    let response = raw.response.as_ref().and_then(|r| {
        let catalog = upstream
            .and_then(|u| ctx.upstream_configs[u].catalog.as_ref())
            .and_then(|name| ctx.catalogs.get(name));
        response_policy(r, &format!("{path}.response"), catalog, errs)
    });
    let ip_allow = raw
        .ip_allow
        .as_ref()
        .and_then(|l| ip_list(l, &format!("{path}.ip_allow"), errs));
    let ip_deny = raw
        .ip_deny
        .as_ref()
        .and_then(|l| ip_list(l, &format!("{path}.ip_deny"), errs));
    let quota = raw.quota.as_deref().and_then(|name| {
        let key = format!("{path}.quota");
        let index = lookup_name(name, ctx.quotas, "quota", &key, errs)?;
        let q = &ctx.quota_configs[index];
        if auth == AuthMode::None && q.key != QuotaKey::Ip {
            errs.push(
                key,
                format!(
                    "quota {:?} counts by {}, which an auth = \"none\" route does not know; use a quota with key = \"ip\"",
                    q.name,
                    q.key.name()
                ),
            );
            return None;
        }
        Some(index)
    });
    let read_timeout = match (raw.read_timeout_ms, upstream) {
        (Some(ms), _) => millis(Some(ms), 0, &format!("{path}.read_timeout_ms"), errs),
        (None, Some(u)) => ctx.upstream_configs[u].read_timeout,
        (None, None) => Duration::ZERO,
    };

    if errs.0.len() != before {
        return None;
    }
    Some(RouteConfig {
        name: raw.name,
        methods,
        path: template?,
        upstream: upstream?,
        auth,
        issuers,
        entitlements: Requirement::new(raw.require_all, raw.require_any),
        ip_allow,
        ip_deny,
        strip_authorization: raw.strip_authorization,
        read_timeout,
        deny_self: raw.deny_self,
        invalidates_client: raw.invalidates_client,
        ids_case_insensitive: raw.ids_case_insensitive,
        pin_headers,
        body,
        response,
        quota,
    })
}

/// Largest `[routes.response] max_bytes`: answers are held in memory whole.
const MAX_RESPONSE_BYTES: i64 = 64 * 1024 * 1024;

/// `[routes.response]`: every pointer parses (RFC 6901, `*` wildcard),
/// every entitlement is a name (and in the upstream's catalogue when it
/// names one), `max_bytes` is in range.
fn response_policy(
    raw: &RawResponse,
    path: &str,
    catalog: Option<&CatalogRef>,
    errs: &mut Errors,
) -> Option<ResponsePolicy> {
    let before = errs.0.len();
    if raw.redact.is_empty() {
        errs.push(
            format!("{path}.redact"),
            "must name at least one JSON pointer (omit [routes.response] otherwise)",
        );
    }
    let max_bytes = positive(
        raw.max_bytes,
        redact::DEFAULT_MAX_BYTES as i64,
        MAX_RESPONSE_BYTES,
        &format!("{path}.max_bytes"),
        errs,
    ) as u64;
    let mut rules = Vec::new();
    for (pointer, unless) in &raw.redact {
        let key = format!("{path}.redact.{pointer}");
        let parsed = match redact::Pointer::parse(pointer) {
            Ok(p) => Some(p),
            Err(e) => {
                errs.push(key.clone(), e);
                None
            }
        };
        for (i, name) in unless.iter().enumerate() {
            if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '"') {
                errs.push(
                    format!("{key}[{i}]"),
                    format!("{name:?} is not an entitlement name"),
                );
            } else if let Some(catalog) = catalog.filter(|c| !c.catalog.contains(name)) {
                let hint = catalog
                    .catalog
                    .suggest(name)
                    .map(|s| format!("; did you mean {s:?}?"))
                    .unwrap_or_default();
                errs.push(
                    format!("{key}[{i}]"),
                    format!("{name:?} is not in the upstream's entitlement catalog{hint}"),
                );
            }
        }
        if let Some(pointer) = parsed {
            rules.push(redact::RedactRule {
                pointer,
                unless: unless.clone(),
            });
        }
    }
    (errs.0.len() == before).then_some(ResponsePolicy { rules, max_bytes })
}

fn pin_headers(pins: &BTreeMap<String, String>, path: &str, errs: &mut Errors) -> Vec<PinHeader> {
    let mut out = Vec::new();
    for (header, claim) in pins {
        let key = format!("{path}.{header}");
        let Ok(name) = http::HeaderName::from_bytes(header.as_bytes()) else {
            errs.push(key, format!("{header:?} is not a header name"));
            continue;
        };
        let lower = name.as_str();
        if lower.starts_with("x-portcullis-")
            || [
                "authorization",
                "host",
                "content-length",
                "transfer-encoding",
                "x-forwarded-for",
            ]
            .contains(&lower)
        {
            errs.push(
                key,
                format!("{header:?} is managed by the gateway and cannot be pinned"),
            );
            continue;
        }
        let claim_path: Vec<String> = claim.split('.').map(str::to_string).collect();
        if claim_path.iter().any(String::is_empty) {
            errs.push(key, format!("{claim:?} is not a claim name or dotted path"));
            continue;
        }
        out.push(PinHeader {
            header: name,
            claim: claim_path,
        });
    }
    out
}

fn parse_method(m: &str) -> Result<Method, String> {
    const KNOWN: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
    if KNOWN.contains(&m) {
        Method::from_bytes(m.as_bytes()).map_err(|e| e.to_string())
    } else {
        Err(format!(
            "{m:?} is not a method the gateway forwards{}",
            suggestion(&m.to_ascii_uppercase(), KNOWN.iter().copied())
        ))
    }
}

fn lookup_name(
    name: &str,
    names: &HashMap<String, Option<usize>>,
    what: &str,
    path: &str,
    errs: &mut Errors,
) -> Option<usize> {
    match names.get(name) {
        Some(Some(i)) => Some(*i),
        Some(None) => {
            // The entry itself is invalid and already reported; make sure the
            // route is not built, without a second message.
            errs.push(
                path.to_string(),
                format!("refers to the invalid {what} {name:?} (see above)"),
            );
            None
        }
        None => {
            errs.push(
                path.to_string(),
                format!(
                    "no {what} named {name:?}{}",
                    suggestion(name, names.keys().map(String::as_str))
                ),
            );
            None
        }
    }
}

// === shared value checks ===

fn positive(value: Option<i64>, default: i64, max: i64, path: &str, errs: &mut Errors) -> i64 {
    match value {
        None => default,
        Some(v) if v >= 1 && v <= max => v,
        Some(v) => {
            errs.push(path.to_string(), format!("{v} is out of range 1..={max}"));
            default
        }
    }
}

fn non_negative(value: Option<i64>, default: i64, max: i64, path: &str, errs: &mut Errors) -> i64 {
    match value {
        None => default,
        Some(v) if (0..=max).contains(&v) => v,
        Some(v) => {
            errs.push(path.to_string(), format!("{v} is out of range 0..={max}"));
            default
        }
    }
}

fn millis(value: Option<i64>, default: i64, path: &str, errs: &mut Errors) -> Duration {
    Duration::from_millis(positive(value, default, 3_600_000, path, errs) as u64)
}

fn ip_list(entries: &[String], path: &str, errs: &mut Errors) -> Option<IpList> {
    match IpList::parse(entries) {
        Ok(list) => Some(list),
        Err(bad) => {
            for (i, reason) in bad {
                errs.push(format!("{path}[{i}]"), reason);
            }
            None
        }
    }
}

fn readable_file(name: &str, base_dir: &Path, path: &str, errs: &mut Errors) -> PathBuf {
    let full = base_dir.join(name);
    if let Err(e) = std::fs::File::open(&full) {
        errs.push(
            path.to_string(),
            format!("cannot read {}: {e}", full.display()),
        );
    }
    full
}

fn check_url(url: &str, path: &str, errs: &mut Errors) -> Option<reqwest::Url> {
    match reqwest::Url::parse(url) {
        Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host_str().is_some() => {
            Some(u)
        }
        Ok(_) => {
            errs.push(
                path.to_string(),
                format!("{url:?} must be an http:// or https:// URL"),
            );
            None
        }
        Err(e) => {
            errs.push(path.to_string(), format!("{url:?} is not a URL: {e}"));
            None
        }
    }
}

/// Read a secret from the environment. The value is never printed.
///
/// A missing or empty variable is recorded in `errs.1` (an error in strict
/// mode, a warning in structural mode, decided once at the end) and a
/// [`placeholder_secret`] is returned, so validation goes on as if it were
/// set: the key's section is built, and nothing that refers to it is
/// reported as invalid because of the environment. The return type stays an
/// `Option` for callers that treat a secret as absent.
pub(super) fn env_secret(env: &str, path: &str, errs: &mut Errors) -> Option<Secret> {
    let empty = match std::env::var_os(env) {
        Some(v) if !v.is_empty() => return Some(Secret(v.into_encoded_bytes())),
        Some(_) => true,
        None => false,
    };
    errs.1.push(UnsetSecret {
        path: path.to_string(),
        env: env.to_string(),
        empty,
    });
    Some(placeholder_secret())
}

/// What stands in for a missing secret in a structurally validated config:
/// 64 characters of fresh randomness (hex of 32 random bytes), so it is long
/// enough for every HMAC algorithm (RFC 7518 §3.2), a valid header value,
/// and guessable by nobody: no token can be forged against it. Such a config
/// never serves ([`Config::ensure_servable`]).
fn placeholder_secret() -> Secret {
    Secret(hex::encode(rand::random::<[u8; 32]>()).into_bytes())
}

/// `"; did you mean \"x\"?"` when a candidate is close enough, else `""`.
pub(crate) fn suggestion<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .map(|c| (edit_distance(name, c), c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| format!("; did you mean {c:?}?"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod listener_tests {
    use super::*;

    fn errors(listen: &[&str], admin: &str) -> Vec<String> {
        let listen: Vec<String> = listen.iter().map(|s| s.to_string()).collect();
        let mut errs = Errors(Vec::new(), Vec::new());
        shared_listeners(&listen, admin, &mut errs);
        errs.0
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect()
    }

    #[test]
    fn distinct_listeners_pass() {
        assert!(errors(
            &["127.0.0.1:8080", "127.0.0.2:8080", "[::1]:8081"],
            "127.0.0.1:9090"
        )
        .is_empty());
        // IPv4 wildcard and an IPv6 address: separate sockets for the kernel.
        assert!(errors(&["0.0.0.0:8080", "[::1]:8080"], "127.0.0.1:9090").is_empty());
        // Port 0 on different addresses: two kernel-chosen ports.
        assert!(errors(&["127.0.0.1:0", "0.0.0.0:0"], "127.0.0.2:0").is_empty());
    }

    #[test]
    fn the_same_address_twice_is_refused_with_both_paths() {
        let e = errors(&["127.0.0.1:8080", "127.0.0.1:8080"], "127.0.0.1:9090");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("server.listen[1]: ") && e[0].contains("server.listen[0]"),
            "{e:?}"
        );
    }

    #[test]
    fn the_admin_listener_on_a_proxy_address_is_refused() {
        let e = errors(&["127.0.0.1:8080"], "127.0.0.1:8080");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("admin.listen: ") && e[0].contains("server.listen[0]"),
            "{e:?}"
        );
    }

    #[test]
    fn a_wildcard_overlaps_every_address_on_its_port() {
        for (listen, admin) in [
            (&["0.0.0.0:8080"][..], "127.0.0.1:8080"),
            (&["127.0.0.1:8080"][..], "0.0.0.0:8080"),
            (&["[::]:8080"][..], "127.0.0.1:8080"),
            (&["[::]:8080"][..], "[::1]:8080"),
            (&["[::]:8080"][..], "0.0.0.0:8080"),
            (&["[::ffff:127.0.0.1]:8080"][..], "127.0.0.1:8080"),
        ] {
            assert_eq!(errors(listen, admin).len(), 1, "{listen:?} and {admin}");
        }
        assert!(errors(&["0.0.0.0:8080"], "127.0.0.1:8081").is_empty());
    }

    #[test]
    fn port_zero_twice_on_one_address_is_refused() {
        // pingora would give both listeners the one socket bound for that text.
        let e = errors(&["127.0.0.1:0", "127.0.0.1:0"], "127.0.0.1:9090");
        assert_eq!(e.len(), 1, "{e:?}");
        let e = errors(&["127.0.0.1:0"], "127.0.0.1:0");
        assert_eq!(e.len(), 1, "{e:?}");
    }

    #[test]
    fn every_duplicate_is_reported() {
        let e = errors(
            &["127.0.0.1:8080", "127.0.0.1:8080", "127.0.0.1:8080"],
            "127.0.0.1:8080",
        );
        assert_eq!(e.len(), 3, "{e:?}");
    }
}
