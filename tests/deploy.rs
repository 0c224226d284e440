//! The deployment artefacts under `deploy/`, checked without Docker, a cluster
//! or a Prometheus: every YAML file parses (all its documents), the Kubernetes
//! manifests agree with each other and with the config their ConfigMap ships
//! (which must pass `config::load_str`), the probes hit the admin listener, the
//! alert rules and the dashboard name only metrics the gateway exports, the
//! systemd unit is hardened, the Dockerfile builds in stages and runs as
//! non-root. The config shares its quotas through `[cluster]`: the Redis of
//! `redis.yaml` is the one `redis_url` names, with the password the gateway
//! reads, and the binary's `check --require-env` accepts the mounted file.
//!
//! Where a tool is installed it checks its artefact too: `promtool` (rules,
//! rule unit tests, dashboard queries, scrape config), `systemd-analyze`
//! (verify, security exposure), `kubectl kustomize`. Without it that check
//! prints SKIPPED and passes. Nothing here uses the network.

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;
use serde_yaml_ng::Value;

/// Every metric the gateway exports (README / architecture: metrics.rs).
/// Alerts and the dashboard may name no other `portcullis_*` series.
const EXPORTED_METRICS: &[&str] = &[
    "portcullis_requests_total",
    "portcullis_request_duration_seconds",
    "portcullis_upstream_duration_seconds",
    "portcullis_refusals_total",
    "portcullis_jwks_refreshes_total",
    "portcullis_jwks_age_seconds",
    "portcullis_jwks_keys",
    "portcullis_client_cache_requests_total",
    "portcullis_client_cache_loads_total",
    "portcullis_client_cache_stale_serves_total",
    "portcullis_client_cache_entries",
    "portcullis_config_reloads_total",
    "portcullis_config_info",
    "portcullis_build_info",
    "portcullis_issuer_ready",
    // Quotas and [cluster] (issue 16).
    "portcullis_quota_decisions_total",
    "portcullis_quota_fallbacks_total",
    "portcullis_redis_duration_seconds",
    "portcullis_redis_errors_total",
    "portcullis_cluster_invalidations_total",
    "portcullis_cluster_resubscriptions_total",
    "portcullis_cluster_subscribed",
];

/// The histograms among them: queried through their `_bucket`, `_sum` and
/// `_count` series (the bare name selects nothing in Prometheus).
const HISTOGRAMS: &[&str] = &[
    "portcullis_request_duration_seconds",
    "portcullis_upstream_duration_seconds",
    "portcullis_redis_duration_seconds",
];

/// The alerts operators were promised, with a metric each must be built on.
const REQUIRED_ALERTS: &[(&str, &str)] = &[
    ("PortcullisJwksStale", "portcullis_jwks_age_seconds"),
    ("PortcullisIssuerNotReady", "portcullis_issuer_ready"),
    (
        "PortcullisJwksRefreshFailing",
        "portcullis_jwks_refreshes_total",
    ),
    (
        "PortcullisMetadataSourceFailing",
        "portcullis_client_cache_loads_total",
    ),
    ("PortcullisHigh5xxRate", "portcullis_requests_total"),
    (
        "PortcullisConfigReloadFailed",
        "portcullis_config_reloads_total",
    ),
    (
        "PortcullisHighQuotaRejections",
        "portcullis_quota_decisions_total",
    ),
    ("PortcullisRedisErrors", "portcullis_redis_errors_total"),
    (
        "PortcullisQuotaLocalFallback",
        "portcullis_quota_fallbacks_total",
    ),
    (
        "PortcullisInvalidationUnsubscribed",
        "portcullis_cluster_subscribed",
    ),
];

/// Hardening settings the systemd unit must have, with their exact value.
const SYSTEMD_HARDENING: &[(&str, &str)] = &[
    ("NoNewPrivileges", "yes"),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("RestrictNamespaces", "yes"),
    ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("RestrictRealtime", "yes"),
    ("SystemCallArchitectures", "native"),
    ("KillSignal", "SIGTERM"),
    ("Restart", "on-failure"),
    ("Type", "simple"),
    ("EnvironmentFile", "/etc/portcullis/env"),
];

/// How long pingora drains in-flight requests after SIGTERM by default
/// (`[server] shutdown_timeout_seconds`).
const DRAIN_SECONDS: u64 = 30;

/// The names of the gateway's and Redis's Deployments (deployment.yaml, redis.yaml).
const GATEWAY_DEPLOYMENT: &str = "portcullis";
const REDIS_DEPLOYMENT: &str = "redis";

/// Where the image puts `config/` (Dockerfile: `COPY config/ /etc/portcullis/`).
const IMAGE_CONFIG_DIR: &str = "/etc/portcullis";

/// Dummy value for every secret env var a config names (>= 64 bytes, enough
/// for any HMAC minimum).
const DUMMY_SECRET: &str = "deploy-test-dummy-secret-0123456789abcdef-0123456789abcdef-0123456789";

// === files ===

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy_dir() -> PathBuf {
    repo().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every `.yaml` / `.yml` file under `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).unwrap_or_else(|e| panic!("cannot list {}: {e}", d.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// All documents of a YAML file (`---` separated), empty ones left out.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    let mut docs = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let doc = Value::deserialize(de)
            .unwrap_or_else(|e| panic!("{}: document {}: {e}", path.display(), i + 1));
        if !doc.is_null() {
            docs.push(doc);
        }
    }
    docs
}

fn yaml_document(path: &Path) -> Value {
    let mut docs = yaml_documents(path);
    assert_eq!(docs.len(), 1, "{}: expected one document", path.display());
    docs.remove(0)
}

// === YAML access ===

/// The value at `keys` (mapping keys; a key may contain dots, as label names do).
fn at<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().try_fold(v, |v, k| v.get(*k))
}

fn str_at<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a str> {
    at(v, keys).and_then(Value::as_str)
}

fn seq_at<'a>(v: &'a Value, keys: &[&str]) -> &'a [Value] {
    at(v, keys)
        .and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// A mapping of strings (labels, selectors, annotations).
fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    let Some(map) = v.and_then(Value::as_mapping) else {
        return BTreeMap::new();
    };
    map.iter()
        .map(|(k, v)| {
            let k = k.as_str().expect("string key").to_string();
            let v = match v {
                Value::String(s) => s.clone(),
                other => panic!("{k}: expected a string, got {other:?}"),
            };
            (k, v)
        })
        .collect()
}

fn kind(doc: &Value) -> &str {
    str_at(doc, &["kind"]).unwrap_or("")
}

fn name(doc: &Value) -> &str {
    str_at(doc, &["metadata", "name"]).unwrap_or("")
}

/// The Kubernetes manifests of `deploy/kubernetes`, with their files.
struct Manifests {
    docs: Vec<(PathBuf, Value)>,
}

impl Manifests {
    fn load() -> Manifests {
        let docs = yaml_files(&deploy_dir().join("kubernetes"))
            .into_iter()
            .flat_map(|path| {
                yaml_documents(&path)
                    .into_iter()
                    .map(move |d| (path.clone(), d))
            })
            .collect();
        Manifests { docs }
    }

    fn of_kind(&self, wanted: &str) -> Vec<&Value> {
        self.docs
            .iter()
            .filter(|(_, d)| kind(d) == wanted)
            .map(|(_, d)| d)
            .collect()
    }

    fn one(&self, wanted: &str) -> &Value {
        let found = self.of_kind(wanted);
        assert_eq!(found.len(), 1, "expected exactly one {wanted} manifest");
        found[0]
    }

    /// The manifest of this kind and name.
    fn named(&self, wanted: &str, wanted_name: &str) -> &Value {
        let found: Vec<&Value> = self
            .of_kind(wanted)
            .into_iter()
            .filter(|d| name(d) == wanted_name)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected exactly one {wanted} named {wanted_name:?}"
        );
        found[0]
    }

    /// The gateway's Deployment (redis.yaml has another).
    fn gateway(&self) -> &Value {
        self.named("Deployment", GATEWAY_DEPLOYMENT)
    }
}

/// The pod labels of a Deployment.
fn pod_labels(deployment: &Value) -> BTreeMap<String, String> {
    string_map(at(deployment, &["spec", "template", "metadata", "labels"]))
}

/// The first container of a Deployment's pod.
fn first_container(deployment: &Value) -> &Value {
    seq_at(deployment, &["spec", "template", "spec", "containers"])
        .first()
        .unwrap_or_else(|| panic!("Deployment {} has no container", name(deployment)))
}

// === the cluster config ===

/// The config the ConfigMap ships, loaded the way the pod loads it.
struct ClusterConfig {
    loaded: portcullis::config::Loaded,
    /// Env vars the config names (`*_env` keys).
    env_vars: BTreeSet<String>,
    /// ConfigMap name and data keys.
    configmap_name: String,
    configmap_keys: BTreeSet<String>,
}

/// Names of the env vars a config reads: the values of its `*_env` keys.
fn referenced_env_vars(toml_text: &str) -> BTreeSet<String> {
    fn walk(v: &toml::Value, out: &mut BTreeSet<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    match v {
                        toml::Value::String(s) if k.ends_with("_env") => {
                            out.insert(s.clone());
                        }
                        _ => walk(v, out),
                    }
                }
            }
            toml::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let table: toml::Table = toml::from_str(toml_text).expect("the config is TOML");
    let mut out = BTreeSet::new();
    walk(&toml::Value::Table(table), &mut out);
    out
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "portcullis-deploy-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("list dir") {
        let path = entry.expect("entry").path();
        let dest = to.join(path.file_name().expect("file name"));
        if path.is_dir() {
            copy_tree(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).expect("copy file");
        }
    }
}

/// The `--config` path of the Deployment's container.
fn config_arg(container: &Value) -> String {
    let args: Vec<&str> = seq_at(container, &["args"])
        .iter()
        .chain(seq_at(container, &["command"]))
        .filter_map(Value::as_str)
        .collect();
    let i = args
        .iter()
        .position(|a| *a == "--config")
        .expect("the container passes --config");
    assert_eq!(args.first(), Some(&"run"), "the container runs `run`");
    args.get(i + 1).expect("a path after --config").to_string()
}

/// The ConfigMap's config file where the pod reads it: a copy of the image's
/// `/etc/portcullis` (the repo's `config/`) with the ConfigMap's file written
/// where the Deployment mounts it. The copy is removed on drop.
struct MountedConfig {
    _image_root: Scratch,
    /// The file `--config` names, inside the copy.
    path: PathBuf,
    text: String,
    configmap_name: String,
    configmap_keys: BTreeSet<String>,
}

fn mounted_config(m: &Manifests) -> MountedConfig {
    let cm = m.one("ConfigMap");
    let data = string_map(at(cm, &["data"]));
    let container = first_container(m.gateway());
    let config_path = config_arg(container);
    let (mount_dir, file_name) = config_path
        .rsplit_once('/')
        .expect("--config is an absolute path");
    let text = data.get(file_name).unwrap_or_else(|| {
        panic!("--config names {file_name}, which is no key of the ConfigMap's data")
    });
    let relative_mount = mount_dir
        .strip_prefix(IMAGE_CONFIG_DIR)
        .and_then(|r| r.strip_prefix('/'))
        .unwrap_or_else(|| {
            panic!("the config is mounted at {mount_dir}, not under the image's {IMAGE_CONFIG_DIR}")
        });

    let image_root = Scratch::new("cm");
    copy_tree(&repo().join("config"), &image_root.0);
    let mount = image_root.0.join(relative_mount);
    std::fs::create_dir_all(&mount).expect("create the mount dir");
    let path = mount.join(file_name);
    std::fs::write(&path, text).expect("write the mounted config");
    MountedConfig {
        _image_root: image_root,
        path,
        text: text.clone(),
        configmap_name: name(cm).to_string(),
        configmap_keys: data.keys().cloned().collect(),
    }
}

/// Load the ConfigMap's config as the pod does ([`mounted_config`]), with
/// dummy values for the secrets it names.
fn cluster_config(m: &Manifests) -> ClusterConfig {
    let mounted = mounted_config(m);
    let env_vars = referenced_env_vars(&mounted.text);
    for var in &env_vars {
        // Edition 2021: set_var is safe. Every test sets the same dummy value.
        std::env::set_var(var, DUMMY_SECRET);
    }
    let loaded = portcullis::config::load_str(&mounted.text, &mounted.path).unwrap_or_else(|e| {
        panic!(
            "the ConfigMap's {} does not load:\n{e}",
            mounted.path.display()
        )
    });
    ClusterConfig {
        loaded,
        env_vars,
        configmap_name: mounted.configmap_name,
        configmap_keys: mounted.configmap_keys,
    }
}

fn port_of(listen: &str) -> u16 {
    let (_, port) = listen
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{listen}: no port"));
    port.parse()
        .unwrap_or_else(|_| panic!("{listen}: bad port"))
}

/// Container ports by name.
fn container_ports(container: &Value) -> BTreeMap<String, u16> {
    seq_at(container, &["ports"])
        .iter()
        .map(|p| {
            let name = str_at(p, &["name"]).expect("every container port is named");
            let port = at(p, &["containerPort"])
                .and_then(Value::as_u64)
                .expect("containerPort");
            (
                name.to_string(),
                u16::try_from(port).expect("port fits u16"),
            )
        })
        .collect()
}

/// A port given as a number or as a container port name.
fn resolve_port(port: &Value, ports: &BTreeMap<String, u16>) -> u16 {
    match port {
        Value::Number(n) => u16::try_from(n.as_u64().expect("port number")).expect("u16"),
        Value::String(s) => *ports
            .get(s)
            .unwrap_or_else(|| panic!("no container port named {s:?}")),
        other => panic!("bad port {other:?}"),
    }
}

fn is_subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    small.iter().all(|(k, v)| big.get(k) == Some(v))
}

// === metric names ===

/// Every `portcullis_*` identifier in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = BTreeSet::new();
    let mut start = 0;
    while let Some(i) = text[start..].find("portcullis_") {
        let begin = start + i;
        let mut end = begin;
        while end < bytes.len() && is_ident(bytes[end]) {
            end += 1;
        }
        if begin == 0 || !is_ident(bytes[begin - 1]) {
            out.insert(text[begin..end].to_string());
        }
        start = end;
    }
    out
}

/// Whether a query may select `name`.
fn is_queryable(name: &str) -> bool {
    if HISTOGRAMS.contains(&name) {
        return false;
    }
    EXPORTED_METRICS.contains(&name)
        || HISTOGRAMS.iter().any(|h| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name == format!("{h}{s}"))
        })
}

fn assert_known_metrics(what: &str, text: &str) {
    let unknown: Vec<String> = metric_names(text)
        .into_iter()
        .filter(|n| !is_queryable(n))
        .collect();
    assert!(
        unknown.is_empty(),
        "{what} names metrics the gateway does not export (histograms need _bucket/_sum/_count): {unknown:?}"
    );
}

// === optional tools ===

/// Run a tool; `None` when it is not installed.
fn run_tool(program: &str, args: &[&str], env: &[(&str, &str)]) -> Option<Output> {
    match Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .output()
    {
        Ok(out) => Some(out),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            println!(
                "SKIPPED: {program} is not installed ({program} {})",
                args.join(" ")
            );
            None
        }
        Err(e) => panic!("cannot run {program}: {e}"),
    }
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// === tests: YAML and Kubernetes ===

#[test]
fn every_yaml_file_under_deploy_parses() {
    let files = yaml_files(&deploy_dir());
    assert!(
        files.len() >= 10,
        "expected the Kubernetes and Prometheus files, found {files:?}"
    );
    for path in files {
        let docs = yaml_documents(&path);
        assert!(!docs.is_empty(), "{} has no document", path.display());
        for doc in docs {
            assert!(
                doc.is_mapping(),
                "{}: a top-level document is not a mapping",
                path.display()
            );
        }
    }
}

#[test]
fn kubernetes_manifests_have_api_version_kind_and_name() {
    let m = Manifests::load();
    assert!(!m.docs.is_empty());
    for (path, doc) in &m.docs {
        let where_ = path.display();
        assert!(
            str_at(doc, &["apiVersion"]).is_some_and(|s| !s.is_empty()),
            "{where_}: apiVersion"
        );
        assert!(!kind(doc).is_empty(), "{where_}: kind");
        if kind(doc) != "Kustomization" {
            assert!(!name(doc).is_empty(), "{where_}: metadata.name");
        }
    }
    for wanted in [
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "Kustomization",
    ] {
        assert!(!m.of_kind(wanted).is_empty(), "no {wanted} manifest");
    }
}

#[test]
fn kustomization_lists_existing_files_and_not_the_example_secret() {
    let dir = deploy_dir().join("kubernetes");
    let k = yaml_document(&dir.join("kustomization.yaml"));
    let resources: BTreeSet<&str> = seq_at(&k, &["resources"])
        .iter()
        .map(|r| r.as_str().expect("resource paths are strings"))
        .collect();
    for r in &resources {
        assert!(
            dir.join(r).is_file(),
            "kustomization lists {r}, which does not exist"
        );
    }
    assert!(
        !resources.contains("secret.example.yaml"),
        "placeholder secrets must not be applied with the real manifests"
    );
    // Nothing forgotten: every manifest but the example secret is a resource.
    for path in yaml_files(&dir) {
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .expect("file name");
        if file != "kustomization.yaml" && file != "secret.example.yaml" {
            assert!(
                resources.contains(file),
                "{file} is not in kustomization.yaml"
            );
        }
    }
}

#[test]
fn the_configmap_config_loads_and_listens_where_the_pod_expects() {
    let m = Manifests::load();
    let cfg = cluster_config(&m);
    let config = &cfg.loaded.config;

    // Admin on all interfaces, so kubelet probes and Prometheus reach it.
    let admin = &config.admin.listen;
    assert!(
        admin.starts_with("0.0.0.0:") || admin.starts_with("[::]:"),
        "[admin] listen = {admin:?}: in a pod it must bind all interfaces"
    );

    let deployment = m.gateway();
    let container = first_container(deployment);
    let ports = container_ports(container);
    let admin_port = port_of(admin);
    assert!(
        ports.values().any(|p| *p == admin_port),
        "the admin port {admin_port} is not a container port: {ports:?}"
    );
    for listen in &config.server.listen {
        let port = port_of(listen);
        assert!(
            ports.values().any(|p| *p == port),
            "the proxy listener {listen} is not a container port: {ports:?}"
        );
    }

    // The config volume is the ConfigMap, mounted as a directory at --config's parent.
    let config_path = config_arg(container);
    let (mount_dir, file_name) = config_path.rsplit_once('/').expect("absolute path");
    assert!(cfg.configmap_keys.contains(file_name));
    let mount = seq_at(container, &["volumeMounts"])
        .iter()
        .find(|vm| str_at(vm, &["mountPath"]) == Some(mount_dir))
        .unwrap_or_else(|| panic!("nothing is mounted at {mount_dir}"));
    assert!(
        at(mount, &["subPath"]).is_none(),
        "a subPath mount never sees ConfigMap updates"
    );
    let volume_name = str_at(mount, &["name"]).expect("volume name");
    let volume = seq_at(deployment, &["spec", "template", "spec", "volumes"])
        .iter()
        .find(|v| str_at(v, &["name"]) == Some(volume_name))
        .expect("the mounted volume is defined");
    assert_eq!(
        str_at(volume, &["configMap", "name"]),
        Some(cfg.configmap_name.as_str()),
        "the config volume is not the ConfigMap"
    );

    // Secrets: the Deployment takes them from the Secret, which has every one.
    let secret = m.one("Secret");
    let secret_keys: BTreeSet<String> = string_map(at(secret, &["stringData"]))
        .into_keys()
        .chain(string_map(at(secret, &["data"])).into_keys())
        .collect();
    let missing: Vec<&String> = cfg.env_vars.difference(&secret_keys).collect();
    assert!(missing.is_empty(), "the Secret lacks {missing:?}");
    let from_secret: Vec<&str> = seq_at(container, &["envFrom"])
        .iter()
        .filter_map(|e| str_at(e, &["secretRef", "name"]))
        .collect();
    assert_eq!(
        from_secret,
        vec![name(secret)],
        "envFrom must name the Secret"
    );
    assert!(
        !cfg.env_vars.is_empty(),
        "the example config names its secrets"
    );
}

#[test]
fn deployment_probes_hit_the_admin_listener() {
    let m = Manifests::load();
    let cfg = cluster_config(&m);
    let admin_port = port_of(&cfg.loaded.config.admin.listen);
    let deployment = m.gateway();
    let pod = at(deployment, &["spec", "template"]).expect("pod template");
    let container = &seq_at(pod, &["spec", "containers"])[0];
    let ports = container_ports(container);

    for (probe, path) in [
        ("readinessProbe", Some("/readyz")),
        ("livenessProbe", Some("/healthz")),
        ("startupProbe", None),
    ] {
        let get = at(container, &[probe, "httpGet"])
            .unwrap_or_else(|| panic!("{probe} is not an httpGet probe"));
        let port = resolve_port(at(get, &["port"]).expect("probe port"), &ports);
        assert_eq!(port, admin_port, "{probe} is not on the admin port");
        let got = str_at(get, &["path"]).expect("probe path");
        match path {
            Some(p) => assert_eq!(got, p, "{probe} path"),
            None => assert!(got == "/healthz" || got == "/readyz", "{probe} path {got}"),
        }
    }

    // Prometheus annotations point at the admin port.
    let annotations = string_map(at(pod, &["metadata", "annotations"]));
    assert_eq!(
        annotations.get("prometheus.io/scrape").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        annotations.get("prometheus.io/port"),
        Some(&admin_port.to_string())
    );
    assert_eq!(
        annotations.get("prometheus.io/path").map(String::as_str),
        Some("/metrics")
    );
}

#[test]
fn deployment_is_replicated_locked_down_and_drains() {
    let m = Manifests::load();
    let d = m.gateway();
    assert_eq!(
        at(d, &["spec", "replicas"]).and_then(Value::as_u64),
        Some(3)
    );
    let selector = string_map(at(d, &["spec", "selector", "matchLabels"]));
    let labels = string_map(at(d, &["spec", "template", "metadata", "labels"]));
    assert!(!selector.is_empty() && is_subset(&selector, &labels));

    let pod = at(d, &["spec", "template", "spec"]).expect("pod spec");
    let container = &seq_at(pod, &["containers"])[0];
    let run_as_non_root = at(pod, &["securityContext", "runAsNonRoot"])
        .or_else(|| at(container, &["securityContext", "runAsNonRoot"]));
    assert_eq!(run_as_non_root.and_then(Value::as_bool), Some(true));
    let sc = at(container, &["securityContext"]).expect("container securityContext");
    assert_eq!(
        at(sc, &["readOnlyRootFilesystem"]).and_then(Value::as_bool),
        Some(true)
    );
    assert_eq!(
        at(sc, &["allowPrivilegeEscalation"]).and_then(Value::as_bool),
        Some(false)
    );
    let dropped: Vec<&str> = seq_at(sc, &["capabilities", "drop"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(dropped, vec!["ALL"]);
    assert!(seq_at(sc, &["capabilities", "add"]).is_empty());

    // The image's numeric user is the pod's (runAsNonRoot needs a numeric USER).
    let image_user = dockerfile_final_user();
    if let Some(uid) = at(pod, &["securityContext", "runAsUser"]).and_then(Value::as_u64) {
        assert_eq!(
            image_user.split(':').next(),
            Some(uid.to_string().as_str()),
            "Dockerfile USER and runAsUser differ"
        );
    }

    for key in [
        &["requests", "cpu"][..],
        &["requests", "memory"],
        &["limits", "memory"],
    ] {
        let mut path = vec!["resources"];
        path.extend_from_slice(key);
        assert!(
            at(container, &path).is_some(),
            "resources.{}",
            key.join(".")
        );
    }

    // Graceful termination: preStop sleep while endpoints are removed, and a
    // grace period that outlasts it plus pingora's drain (at most
    // `[server] shutdown_timeout_seconds`, 30 s by default) and a margin.
    let pre_stop: Vec<&str> = seq_at(container, &["lifecycle", "preStop", "exec", "command"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(pre_stop.first(), Some(&"sleep"), "preStop sleeps");
    let sleep: u64 = pre_stop
        .get(1)
        .and_then(|s| s.parse().ok())
        .expect("preStop sleep seconds");
    let grace = at(pod, &["terminationGracePeriodSeconds"])
        .and_then(Value::as_u64)
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace >= sleep + DRAIN_SECONDS + 5,
        "grace period {grace}s leaves too little time after the {sleep}s preStop \
         and the {DRAIN_SECONDS}s drain"
    );

    assert!(
        !seq_at(pod, &["topologySpreadConstraints"]).is_empty()
            || at(pod, &["affinity", "podAntiAffinity"]).is_some(),
        "replicas must be spread over nodes"
    );
    for c in seq_at(pod, &["topologySpreadConstraints"]) {
        let sel = string_map(at(c, &["labelSelector", "matchLabels"]));
        assert!(!sel.is_empty() && is_subset(&sel, &labels));
    }
}

#[test]
fn services_pdb_and_hpa_target_the_deployment() {
    let m = Manifests::load();
    let d = m.gateway();
    let labels = pod_labels(d);
    let container = first_container(d);
    let ports = container_ports(container);
    let cfg = cluster_config(&m);
    let proxy_port = port_of(&cfg.loaded.config.server.listen[0]);
    let admin_port = port_of(&cfg.loaded.config.admin.listen);

    // Every Service selects the pods of exactly one Deployment (the gateway's or
    // Redis's); the gateway's Services carry its two ports.
    let deployments = m.of_kind("Deployment");
    let mut service_ports = Vec::new();
    for svc in m.of_kind("Service") {
        let sel = string_map(at(svc, &["spec", "selector"]));
        let selected: Vec<&str> = deployments
            .iter()
            .filter(|dep| !sel.is_empty() && is_subset(&sel, &pod_labels(dep)))
            .map(|dep| name(dep))
            .collect();
        assert_eq!(
            selected.len(),
            1,
            "Service {} selects the pods of {selected:?}, not of exactly one Deployment",
            name(svc)
        );
        if !is_subset(&sel, &labels) {
            continue;
        }
        for p in seq_at(svc, &["spec", "ports"]) {
            let port = at(p, &["port"]).and_then(Value::as_u64).expect("port");
            let target = resolve_port(at(p, &["targetPort"]).expect("targetPort"), &ports);
            service_ports.push((port, target));
        }
    }
    assert!(
        service_ports.contains(&(80, proxy_port)),
        "no Service port 80 -> {proxy_port}: {service_ports:?}"
    );
    assert!(
        service_ports.iter().any(|(_, t)| *t == admin_port),
        "no Service port for the metrics (admin) port {admin_port}"
    );

    let pdb = m.one("PodDisruptionBudget");
    assert_eq!(str_at(pdb, &["apiVersion"]), Some("policy/v1"));
    let sel = string_map(at(pdb, &["spec", "selector", "matchLabels"]));
    assert!(!sel.is_empty() && is_subset(&sel, &labels), "PDB selector");
    assert!(
        at(pdb, &["spec", "minAvailable"]).is_some()
            || at(pdb, &["spec", "maxUnavailable"]).is_some()
    );

    let hpa = m.one("HorizontalPodAutoscaler");
    assert_eq!(str_at(hpa, &["apiVersion"]), Some("autoscaling/v2"));
    assert_eq!(
        str_at(hpa, &["spec", "scaleTargetRef", "kind"]),
        Some("Deployment")
    );
    assert_eq!(
        str_at(hpa, &["spec", "scaleTargetRef", "apiVersion"]),
        Some("apps/v1")
    );
    assert_eq!(
        str_at(hpa, &["spec", "scaleTargetRef", "name"]),
        Some(name(d))
    );
    let min = at(hpa, &["spec", "minReplicas"])
        .and_then(Value::as_u64)
        .expect("minReplicas");
    let max = at(hpa, &["spec", "maxReplicas"])
        .and_then(Value::as_u64)
        .expect("maxReplicas");
    assert!(
        2 <= min && min <= max,
        "minReplicas {min}, maxReplicas {max}"
    );
    assert!(
        seq_at(hpa, &["spec", "metrics"])
            .iter()
            .any(|mt| str_at(mt, &["resource", "name"]) == Some("cpu")),
        "the HPA scales on CPU"
    );
}

#[test]
fn kustomize_renders_the_manifests() {
    let dir = deploy_dir().join("kubernetes");
    let dir = dir.to_str().expect("utf-8 path");
    let Some(out) = run_tool("kubectl", &["kustomize", dir], &[]) else {
        return;
    };
    assert!(
        out.status.success(),
        "kubectl kustomize failed:\n{}",
        output_text(&out)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let kinds: BTreeSet<String> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|de| kind(&Value::deserialize(de).expect("rendered YAML")).to_string())
        .collect();
    for k in [
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
    ] {
        assert!(kinds.contains(k), "kustomize output lacks a {k}: {kinds:?}");
    }
    assert!(
        !kinds.contains("Secret"),
        "kustomize must not render the example Secret"
    );
}

// === tests: quotas, [cluster] and its Redis ===

/// The ConfigMap's config as plain TOML, independent of the gateway's types.
fn configmap_toml(m: &Manifests) -> toml::Table {
    toml::from_str(&mounted_config(m).text).expect("the ConfigMap's config is TOML")
}

fn toml_str<'a>(table: &'a toml::Table, key: &str) -> &'a str {
    table
        .get(key)
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("no string {key}"))
}

/// `redis://[user@]host:port/db` -> (host, port).
fn redis_host_port(url: &str) -> (String, u16) {
    let rest = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
        .unwrap_or_else(|| panic!("redis_url {url:?} is not redis:// or rediss://"));
    let authority = rest.split('/').next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = host_port
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("redis_url {url:?}: name the port"));
    (
        host.to_string(),
        port.parse()
            .unwrap_or_else(|_| panic!("redis_url {url:?}: bad port")),
    )
}

/// The value following `flag` in a container's args.
fn arg_after<'a>(args: &'a [&'a str], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| *a == flag)
        .and_then(|i| args.get(i + 1))
        .copied()
}

#[test]
fn the_configmap_config_shares_quotas_through_redis() {
    let m = Manifests::load();
    // load_str accepts [cluster] and [[quotas]] as the pod would load them.
    let cfg = cluster_config(&m);
    let table = configmap_toml(&m);

    let cluster = table
        .get("cluster")
        .and_then(toml::Value::as_table)
        .expect("three replicas share quotas and invalidations: the config needs [cluster]");
    redis_host_port(toml_str(cluster, "redis_url"));
    let password_env = toml_str(cluster, "redis_password_env");
    assert_eq!(password_env, "PORTCULLIS_REDIS_PASSWORD");
    assert!(
        cfg.env_vars.contains(password_env),
        "the env vars the config names include {password_env}"
    );
    // Redis down: count locally (readiness unaffected), do not refuse the routes.
    assert_eq!(toml_str(cluster, "on_redis_error"), "local");
    assert_eq!(
        cluster.get("timeout_ms").and_then(toml::Value::as_integer),
        Some(50)
    );

    let quotas: BTreeSet<&str> = table
        .get("quotas")
        .and_then(toml::Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|q| {
            q.get("name")
                .and_then(toml::Value::as_str)
                .expect("quota name")
        })
        .collect();
    let used: BTreeSet<&str> = table
        .get("routes")
        .and_then(toml::Value::as_array)
        .expect("routes")
        .iter()
        .filter_map(|r| r.get("quota").and_then(toml::Value::as_str))
        .collect();
    assert!(!used.is_empty(), "no route uses a [[quotas]] entry");
    assert_eq!(
        used, quotas,
        "every quota is used by a route and every route's quota exists"
    );

    // The loaded config has them as written.
    let config = &cfg.loaded.config;
    let loaded = config
        .cluster
        .as_ref()
        .expect("the loaded config has [cluster]");
    assert_eq!(loaded.password_env.as_deref(), Some(password_env));
    assert_eq!(
        loaded.on_redis_error,
        portcullis::config::model::OnRedisError::Local
    );
    assert_eq!(loaded.timeout, std::time::Duration::from_millis(50));
    assert_eq!(config.quotas.len(), quotas.len());
    let routes_with_quota = table["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .filter(|r| r.get("quota").is_some())
        .count();
    assert_eq!(
        config.routes.iter().filter(|r| r.quota.is_some()).count(),
        routes_with_quota
    );

    // The loader reads these sections rather than ignoring them: broken
    // variants of the same text are refused, naming the key.
    let text = mounted_config(&m).text;
    for (from, to, needle) in [
        (
            r#"on_redis_error = "local""#,
            r#"on_redis_error = "sometimes""#,
            "on_redis_error",
        ),
        (
            r#"redis_url = "redis://redis:6379/0""#,
            r#"redis_url = "http://redis:6379/0""#,
            "redis_url",
        ),
        (
            r#"quota = "verify-writes""#,
            r#"quota = "verify-writez""#,
            "quota",
        ),
    ] {
        assert!(text.contains(from), "the ConfigMap no longer has {from}");
        let broken = text.replacen(from, to, 1);
        let scratch = Scratch::new("broken");
        let origin = scratch.0.join("portcullis.toml");
        match portcullis::config::load_str(&broken, &origin) {
            Ok(_) => panic!("load_str accepted {to}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(needle),
                    "{to}: the error does not name {needle}: {msg}"
                );
            }
        }
    }
}

#[test]
fn redis_manifest_serves_the_cluster_config() {
    let m = Manifests::load();
    let table = configmap_toml(&m);
    let cluster = table
        .get("cluster")
        .and_then(toml::Value::as_table)
        .expect("[cluster]");
    let (host, port) = redis_host_port(toml_str(cluster, "redis_url"));
    let password_env = toml_str(cluster, "redis_password_env");

    // redis_url names a Service of these manifests (same namespace), which sends
    // the port to the Redis container.
    let svc = m.named("Service", &host);
    let redis = m.named("Deployment", REDIS_DEPLOYMENT);
    let labels = pod_labels(redis);
    let sel = string_map(at(svc, &["spec", "selector"]));
    assert!(
        !sel.is_empty() && is_subset(&sel, &labels),
        "Service {host} does not select the Redis pods"
    );
    assert!(
        !is_subset(&sel, &pod_labels(m.gateway())),
        "Service {host} also selects the gateway pods"
    );
    let container = first_container(redis);
    let ports = container_ports(container);
    let target = seq_at(svc, &["spec", "ports"])
        .iter()
        .find(|p| at(p, &["port"]).and_then(Value::as_u64) == Some(u64::from(port)))
        .map(|p| resolve_port(at(p, &["targetPort"]).expect("targetPort"), &ports))
        .unwrap_or_else(|| panic!("Service {host} has no port {port}"));
    let args: Vec<&str> = seq_at(container, &["args"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let listen: u16 = arg_after(&args, "--port")
        .unwrap_or("6379")
        .parse()
        .expect("--port");
    assert_eq!(
        target, listen,
        "the Service does not reach redis-server's --port"
    );

    // One instance, never two at once (each would count half the traffic).
    assert_eq!(
        at(redis, &["spec", "replicas"]).and_then(Value::as_u64),
        Some(1)
    );
    assert_eq!(
        str_at(redis, &["spec", "strategy", "type"]),
        Some("Recreate")
    );

    // No persistence: counters are ephemeral. No RDB, no AOF, no volume claim.
    assert_eq!(arg_after(&args, "--save"), Some(""), "--save \"\"");
    assert_eq!(arg_after(&args, "--appendonly"), Some("no"));
    let pod = at(redis, &["spec", "template", "spec"]).expect("pod spec");
    assert!(
        seq_at(pod, &["volumes"])
            .iter()
            .all(|v| at(v, &["persistentVolumeClaim"]).is_none()),
        "no persistent volume"
    );
    // Bounded memory that evicts expiring keys rather than failing every write.
    assert!(arg_after(&args, "--maxmemory").is_some(), "--maxmemory");
    let policy = arg_after(&args, "--maxmemory-policy").expect("--maxmemory-policy");
    assert!(
        policy.starts_with("volatile-"),
        "--maxmemory-policy {policy}"
    );

    // requirepass is the password the gateway reads, from the same Secret key.
    let pass_arg = arg_after(&args, "--requirepass").expect("--requirepass");
    let var = pass_arg
        .strip_prefix("$(")
        .and_then(|v| v.strip_suffix(')'))
        .unwrap_or_else(|| panic!("--requirepass {pass_arg}: expected $(VAR) from the env"));
    let env = seq_at(container, &["env"])
        .iter()
        .find(|e| str_at(e, &["name"]) == Some(var))
        .unwrap_or_else(|| panic!("the Redis container has no env var {var}"));
    let secret = m.one("Secret");
    assert_eq!(
        str_at(env, &["valueFrom", "secretKeyRef", "name"]),
        Some(name(secret)),
        "{var} comes from the gateway's Secret"
    );
    assert_eq!(
        str_at(env, &["valueFrom", "secretKeyRef", "key"]),
        Some(password_env),
        "{var} is the key the gateway's redis_password_env names"
    );
    assert!(
        string_map(at(secret, &["stringData"])).contains_key(password_env),
        "the example Secret has {password_env}"
    );

    // Locked down like the gateway.
    assert_eq!(
        at(pod, &["securityContext", "runAsNonRoot"]).and_then(Value::as_bool),
        Some(true)
    );
    assert_eq!(
        at(pod, &["automountServiceAccountToken"]).and_then(Value::as_bool),
        Some(false)
    );
    let sc = at(container, &["securityContext"]).expect("container securityContext");
    assert_eq!(
        at(sc, &["readOnlyRootFilesystem"]).and_then(Value::as_bool),
        Some(true)
    );
    assert_eq!(
        at(sc, &["allowPrivilegeEscalation"]).and_then(Value::as_bool),
        Some(false)
    );
    let dropped: Vec<&str> = seq_at(sc, &["capabilities", "drop"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(dropped, vec!["ALL"]);
    assert!(at(container, &["resources", "limits", "memory"]).is_some());
    assert!(at(container, &["readinessProbe"]).is_some());

    // Only the gateway pods may connect.
    let policy = m.named("NetworkPolicy", REDIS_DEPLOYMENT);
    let applies_to = string_map(at(policy, &["spec", "podSelector", "matchLabels"]));
    assert!(!applies_to.is_empty() && is_subset(&applies_to, &labels));
    let ingress = seq_at(policy, &["spec", "ingress"]);
    assert_eq!(ingress.len(), 1, "one ingress rule");
    let from = seq_at(&ingress[0], &["from"]);
    assert!(
        !from.is_empty(),
        "an ingress rule without `from` admits everyone"
    );
    let gateway_labels = pod_labels(m.gateway());
    for peer in from {
        let sel = string_map(at(peer, &["podSelector", "matchLabels"]));
        assert!(
            !sel.is_empty() && is_subset(&sel, &gateway_labels) && !is_subset(&sel, &labels),
            "the NetworkPolicy admits more than the gateway pods: {peer:?}"
        );
    }
}

/// The binary's own `check --require-env`, on the ConfigMap's file as mounted:
/// accepted with every secret set, refused (exit 64, naming it) without the
/// Redis password.
#[test]
fn portcullis_check_accepts_the_configmap_config_with_its_secrets() {
    let m = Manifests::load();
    let mounted = mounted_config(&m);
    let vars = referenced_env_vars(&mounted.text);
    let path = mounted.path.to_str().expect("utf-8 path");
    let check = |without: Option<&str>| -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        cmd.args(["check", "--require-env", "--config", path]);
        for var in &vars {
            if Some(var.as_str()) == without {
                cmd.env_remove(var);
            } else {
                cmd.env(var, DUMMY_SECRET);
            }
        }
        cmd.output().expect("run portcullis check")
    };

    let out = check(None);
    assert!(
        out.status.success(),
        "portcullis check refused the ConfigMap's config:\n{}",
        output_text(&out)
    );

    let password_env = "PORTCULLIS_REDIS_PASSWORD";
    assert!(vars.contains(password_env));
    let out = check(Some(password_env));
    let text = output_text(&out);
    assert_eq!(
        out.status.code(),
        Some(64),
        "check --require-env without {password_env}:\n{text}"
    );
    assert!(
        text.contains(password_env),
        "the error names {password_env}:\n{text}"
    );
    assert!(
        !text.contains(DUMMY_SECRET),
        "check printed a secret's value:\n{text}"
    );
}

// === tests: Prometheus ===

#[test]
fn alert_rules_are_complete() {
    let path = deploy_dir().join("prometheus/alerts.yml");
    let doc = yaml_document(&path);
    let groups = seq_at(&doc, &["groups"]);
    assert!(!groups.is_empty(), "alerts.yml has no groups");
    let mut alerts = BTreeMap::new();
    for g in groups {
        assert!(str_at(g, &["name"]).is_some(), "a group without a name");
        let rules = seq_at(g, &["rules"]);
        assert!(
            !rules.is_empty(),
            "group {:?} has no rules",
            str_at(g, &["name"])
        );
        for r in rules {
            let alert = str_at(r, &["alert"]).expect("every rule is an alert");
            for key in [&["expr"][..], &["for"], &["labels", "severity"]] {
                assert!(
                    str_at(r, key).is_some_and(|s| !s.trim().is_empty()),
                    "{alert}: {}",
                    key.join(".")
                );
            }
            for key in ["summary", "description"] {
                assert!(
                    str_at(r, &["annotations", key]).is_some_and(|s| !s.trim().is_empty()),
                    "{alert}: annotations.{key}"
                );
            }
            let severity = str_at(r, &["labels", "severity"]).unwrap_or("");
            assert!(
                ["critical", "warning", "info"].contains(&severity),
                "{alert}: severity {severity}"
            );
            let expr = str_at(r, &["expr"]).unwrap_or("").to_string();
            assert!(
                alerts.insert(alert.to_string(), expr).is_none(),
                "alert {alert} is defined twice"
            );
        }
    }
    for (alert, metric) in REQUIRED_ALERTS {
        let expr = alerts
            .get(*alert)
            .unwrap_or_else(|| panic!("alerts.yml lacks {alert}"));
        assert!(
            metric_names(expr).contains(*metric),
            "{alert} does not use {metric}: {expr}"
        );
    }
}

#[test]
fn alerts_and_dashboard_name_only_exported_metrics() {
    for file in ["alerts.yml", "alerts.test.yml", "scrape.yml"] {
        let path = deploy_dir().join("prometheus").join(file);
        assert_known_metrics(file, &read(&path));
    }
    let dashboard = read(&deploy_dir().join("grafana/portcullis-dashboard.json"));
    assert_known_metrics("the dashboard", &dashboard);

    // The helpers themselves.
    assert_eq!(
        metric_names("sum(rate(portcullis_requests_total[5m])) / x_portcullis_y"),
        BTreeSet::from(["portcullis_requests_total".to_string()])
    );
    assert!(is_queryable("portcullis_request_duration_seconds_bucket"));
    assert!(!is_queryable("portcullis_request_duration_seconds"));
    assert!(!is_queryable("portcullis_requests"));
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests() {
    let dir = deploy_dir().join("prometheus");
    let alerts = dir.join("alerts.yml");
    let Some(out) = run_tool(
        "promtool",
        &["check", "rules", alerts.to_str().expect("utf-8")],
        &[],
    ) else {
        return;
    };
    assert!(
        out.status.success(),
        "promtool check rules:\n{}",
        output_text(&out)
    );

    let tests = dir.join("alerts.test.yml");
    let out = run_tool(
        "promtool",
        &["test", "rules", tests.to_str().expect("utf-8")],
        &[],
    )
    .expect("promtool ran a moment ago");
    assert!(
        out.status.success(),
        "promtool test rules:\n{}",
        output_text(&out)
    );

    // The dashboard's queries, as recording rules with Grafana's variables filled in.
    let scratch = Scratch::new("promtool");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in dashboard_exprs().iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$__range", "1h")
            .replace("$__interval", "1m")
            .replace("$job", ".*")
            .replace("$instance", ".*")
            .replace("$route", ".*");
        let quoted = serde_json::to_string(&expr).expect("json string");
        rules.push_str(&format!(
            "      - record: dashboard:expr{i}\n        expr: {quoted}\n"
        ));
    }
    let rules_path = scratch.0.join("dashboard-rules.yml");
    std::fs::write(&rules_path, rules).expect("write rules");
    let out = run_tool(
        "promtool",
        &["check", "rules", rules_path.to_str().expect("utf-8")],
        &[],
    )
    .expect("promtool");
    assert!(
        out.status.success(),
        "a dashboard query is not valid PromQL:\n{}",
        output_text(&out)
    );

    // Debian's promtool is built without Kubernetes service discovery and
    // rejects `kubernetes_sd_configs`; only then is this check skipped.
    let scrape = dir.join("scrape.yml");
    let out = run_tool(
        "promtool",
        &["check", "config", scrape.to_str().expect("utf-8")],
        &[],
    )
    .expect("promtool");
    let text = output_text(&out);
    if !out.status.success() && text.contains("field kubernetes_sd_configs not found") {
        println!("SKIPPED: this promtool has no kubernetes_sd (promtool check config scrape.yml)");
    } else {
        assert!(out.status.success(), "promtool check config:\n{text}");
    }
}

#[test]
fn scrape_config_covers_static_hosts_and_kubernetes_pods() {
    let doc = yaml_document(&deploy_dir().join("prometheus/scrape.yml"));
    let jobs = seq_at(&doc, &["scrape_configs"]);
    assert!(
        jobs.iter().any(|j| at(j, &["static_configs"]).is_some()),
        "no static_configs job"
    );
    let k8s = jobs
        .iter()
        .find(|j| at(j, &["kubernetes_sd_configs"]).is_some())
        .expect("no kubernetes_sd_configs job");
    // It keeps the container port the Deployment names for the admin listener.
    let m = Manifests::load();
    let container = first_container(m.gateway());
    let cfg = cluster_config(&m);
    let admin_port = port_of(&cfg.loaded.config.admin.listen);
    let admin_name = container_ports(container)
        .into_iter()
        .find(|(_, p)| *p == admin_port)
        .map(|(n, _)| n)
        .expect("a named admin port");
    assert!(
        seq_at(k8s, &["relabel_configs"]).iter().any(|r| {
            seq_at(r, &["source_labels"])
                .iter()
                .any(|l| l.as_str() == Some("__meta_kubernetes_pod_container_port_name"))
                && str_at(r, &["regex"]) == Some(admin_name.as_str())
                && str_at(r, &["action"]) == Some("keep")
        }),
        "the kubernetes job does not keep the {admin_name:?} port"
    );
    for j in jobs {
        let job = str_at(j, &["job_name"]).expect("job_name");
        assert!(
            job.starts_with("portcullis"),
            "alerts match job=~\"portcullis.*\": {job}"
        );
    }
}

// === tests: Grafana ===

fn dashboard() -> serde_json::Value {
    let path = deploy_dir().join("grafana/portcullis-dashboard.json");
    serde_json::from_str(&read(&path)).expect("the dashboard is valid JSON")
}

/// Panels, with those inside rows; rows themselves left out.
fn dashboard_panels(d: &serde_json::Value) -> Vec<serde_json::Value> {
    fn walk(panels: &[serde_json::Value], out: &mut Vec<serde_json::Value>) {
        for p in panels {
            if p["type"] == "row" {
                walk(
                    p["panels"].as_array().map(Vec::as_slice).unwrap_or(&[]),
                    out,
                );
            } else {
                out.push(p.clone());
            }
        }
    }
    let mut out = Vec::new();
    walk(d["panels"].as_array().expect("panels"), &mut out);
    out
}

fn dashboard_exprs() -> Vec<String> {
    dashboard_panels(&dashboard())
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn dashboard_panels_have_titles_and_queries() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion"
    );
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    let has_input = d["__inputs"]
        .as_array()
        .is_some_and(|i| i.iter().any(|i| i["name"] == "DS_PROMETHEUS"));
    let has_variable = d["templating"]["list"]
        .as_array()
        .is_some_and(|l| l.iter().any(|v| v["type"] == "datasource"));
    assert!(
        has_input || has_variable,
        "a ${{DS_PROMETHEUS}} input or a datasource variable"
    );

    let panels = dashboard_panels(&d);
    assert!(panels.len() >= 8, "only {} panels", panels.len());
    let mut ids = BTreeSet::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or("");
        assert!(!title.is_empty(), "a panel without a title: {p}");
        assert!(
            ids.insert(p["id"].to_string()),
            "panel id {} twice",
            p["id"]
        );
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        assert!(!targets.is_empty(), "panel {title:?} has no target");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or("");
            assert!(
                !expr.trim().is_empty(),
                "panel {title:?}: a target without expr"
            );
            if expr.contains("histogram_quantile") {
                assert!(
                    expr.contains("_bucket") && expr.contains("le"),
                    "panel {title:?}: histogram_quantile needs _bucket series by le: {expr}"
                );
            }
        }
    }

    // The panels operators asked for, by the metric each is built on.
    let all = dashboard_exprs().join("\n");
    for needle in [
        "portcullis_requests_total",
        "by (decision)",
        "topk(",
        "portcullis_refusals_total",
        "status_class=\"5xx\"",
        "portcullis_request_duration_seconds_bucket",
        "portcullis_upstream_duration_seconds_bucket",
        "histogram_quantile(0.5,",
        "histogram_quantile(0.99,",
        "portcullis_jwks_age_seconds",
        "portcullis_client_cache_requests_total",
        "portcullis_client_cache_entries",
        "portcullis_config_reloads_total",
        // Quotas and [cluster].
        "portcullis_quota_decisions_total{",
        "outcome=\"limited\"",
        "by (outcome)",
        "by (op, le) (rate(portcullis_redis_duration_seconds_bucket",
        "portcullis_redis_errors_total",
        "portcullis_quota_fallbacks_total",
        "portcullis_cluster_invalidations_total",
        "by (direction)",
        "portcullis_cluster_subscribed",
        "portcullis_cluster_resubscriptions_total",
    ] {
        assert!(all.contains(needle), "no dashboard query uses {needle}");
    }
}

// === tests: systemd ===

/// `Key=value` lines per section (repeated keys keep every value).
fn parse_unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not Key=value: {line}"));
        out.entry(section.clone())
            .or_default()
            .entry(k.trim().to_string())
            .or_default()
            .push(v.trim().to_string());
    }
    out
}

fn unit_path() -> PathBuf {
    deploy_dir().join("systemd/portcullis.service")
}

#[test]
fn systemd_unit_is_hardened_and_reloads_with_hup() {
    let unit = parse_unit(&read(&unit_path()));
    let service = unit.get("Service").expect("[Service]");
    let one = |k: &str| -> &str {
        service
            .get(k)
            .and_then(|v| v.last())
            .map(String::as_str)
            .unwrap_or_else(|| panic!("[Service] lacks {k}="))
    };
    for (key, value) in SYSTEMD_HARDENING {
        assert_eq!(one(key), *value, "{key}=");
    }
    let start = one("ExecStart");
    let pre = one("ExecStartPre");
    assert!(start.contains(" run --config "), "ExecStart: {start}");
    // --require-env: on the host that runs it, a missing secret is an error.
    assert!(
        pre.contains(" check --require-env --config "),
        "ExecStartPre: {pre}"
    );
    assert_eq!(
        start.rsplit_once(' ').map(|(_, c)| c),
        pre.rsplit_once(' ').map(|(_, c)| c),
        "ExecStartPre checks the config ExecStart runs"
    );
    let reload = one("ExecReload");
    assert!(
        reload.contains("kill -HUP $MAINPID") || reload.contains("kill -s HUP $MAINPID"),
        "ExecReload sends SIGHUP: {reload}"
    );
    let stop_timeout: u64 = one("TimeoutStopSec")
        .parse()
        .expect("TimeoutStopSec in seconds");
    assert!(
        stop_timeout > DRAIN_SECONDS,
        "TimeoutStopSec={stop_timeout} cuts off the {DRAIN_SECONDS}s drain"
    );
    one("LimitNOFILE");
    assert!(
        one("DynamicUser") == "yes" || service.contains_key("User"),
        "runs as DynamicUser or a dedicated User"
    );
    assert!(
        !service.contains_key("User") || one("User") != "root",
        "never as root"
    );
    let families: BTreeSet<&str> = one("RestrictAddressFamilies").split_whitespace().collect();
    assert_eq!(families, BTreeSet::from(["AF_INET", "AF_INET6", "AF_UNIX"]));
    assert!(service["SystemCallFilter"]
        .iter()
        .any(|v| v == "@system-service"));
    assert_eq!(
        service["CapabilityBoundingSet"].first().map(String::as_str),
        Some(""),
        "no capabilities (CapabilityBoundingSet= empty)"
    );
    assert!(
        service
            .get("AmbientCapabilities")
            .is_none_or(|v| v.iter().all(String::is_empty)),
        "no ambient capabilities unless a port < 1024 needs CAP_NET_BIND_SERVICE"
    );
    assert!(one("ReadOnlyPaths")
        .split_whitespace()
        .any(|p| p == "/etc/portcullis"));
}

#[test]
fn systemd_env_example_names_every_secret_of_the_example_config() {
    let config = read(&repo().join("config/portcullis.toml"));
    let wanted = referenced_env_vars(&config);
    let example = read(&deploy_dir().join("systemd/portcullis.env.example"));
    let have: BTreeSet<String> = example
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_string()))
        .collect();
    let missing: Vec<&String> = wanted.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "portcullis.env.example lacks {missing:?}"
    );
}

/// The unit with its binary path pointing at the binary this test built, so
/// `systemd-analyze` can check the executables exist.
fn unit_for_analysis(scratch: &Scratch) -> PathBuf {
    let text = read(&unit_path()).replace(
        "/usr/local/bin/portcullis",
        env!("CARGO_BIN_EXE_portcullis"),
    );
    let path = scratch.0.join("portcullis.service");
    std::fs::write(&path, text).expect("write unit");
    path
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let scratch = Scratch::new("systemd");
    let path = unit_for_analysis(&scratch);
    let path = path.to_str().expect("utf-8");
    // Parse warnings ("Unknown key", "Failed to parse ...") are logged at info
    // level and do not change the exit code: read them.
    let env = [
        ("SYSTEMD_LOG_LEVEL", "info"),
        ("SYSTEMD_LOG_TARGET", "console"),
    ];
    let Some(out) = run_tool("systemd-analyze", &["verify", path], &env) else {
        return;
    };
    let text = output_text(&out);
    let complaints: Vec<&str> = text.lines().filter(|l| l.contains(path)).collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify:\n{text}"
    );

    // Exposure score of `systemd-analyze security` (0 = locked down, 10 = not
    // at all): at most 2.0. Needs systemd >= 250 for --offline / --threshold.
    let out = run_tool(
        "systemd-analyze",
        &["security", "--offline=yes", "--threshold=20", path],
        &env,
    )
    .expect("systemd-analyze ran a moment ago");
    let text = output_text(&out);
    if text.contains("unrecognized option") || text.contains("Unknown option") {
        println!("SKIPPED: this systemd-analyze has no offline security check");
    } else {
        assert!(out.status.success(), "systemd-analyze security:\n{text}");
    }
}

// === tests: Dockerfile ===

fn dockerfile() -> String {
    read(&deploy_dir().join("Dockerfile"))
}

/// Instructions of the Dockerfile (continuation lines joined, comments left out).
fn docker_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (op, rest) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((op.to_ascii_uppercase(), rest.trim().to_string()));
        current.clear();
    }
    out
}

/// The `USER` of the final stage.
fn dockerfile_final_user() -> String {
    let instructions = docker_instructions(&dockerfile());
    let last_from = instructions
        .iter()
        .rposition(|(op, _)| op == "FROM")
        .expect("FROM");
    instructions[last_from..]
        .iter()
        .filter(|(op, _)| op == "USER")
        .map(|(_, arg)| arg.clone())
        .next_back()
        .expect("the final stage sets USER")
}

#[test]
fn dockerfile_builds_in_stages_and_runs_as_non_root() {
    let text = dockerfile();
    let ins = docker_instructions(&text);
    let froms: Vec<&str> = ins
        .iter()
        .filter(|(op, _)| op == "FROM")
        .map(|(_, a)| a.as_str())
        .collect();
    assert!(froms.len() >= 2, "a multi-stage build: {froms:?}");
    assert!(froms[0].starts_with("rust:"), "builder stage: {}", froms[0]);
    assert!(
        froms
            .last()
            .is_some_and(|f| f.starts_with("debian:bookworm-slim")),
        "runtime stage: {froms:?}"
    );

    let user = dockerfile_final_user();
    let uid = user.split(':').next().unwrap_or("");
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u != 0),
        "USER must be a numeric non-root uid (Kubernetes runAsNonRoot): {user}"
    );

    let run = |needle: &str| {
        assert!(
            ins.iter().any(|(op, a)| op == "RUN" && a.contains(needle)),
            "no RUN with {needle}"
        )
    };
    run("cargo build --release --locked");
    run("cmake");
    run("ca-certificates");
    assert!(ins
        .iter()
        .any(|(op, a)| op == "COPY" && a == &format!("config/ {IMAGE_CONFIG_DIR}/")));
    let expose: BTreeSet<&str> = ins
        .iter()
        .filter(|(op, _)| op == "EXPOSE")
        .flat_map(|(_, a)| a.split_whitespace())
        .collect();
    assert!(
        expose.contains("8080") && expose.contains("9090"),
        "EXPOSE {expose:?}"
    );
    let arg = |op: &str| -> String {
        ins.iter()
            .rfind(|(o, _)| o == op)
            .map(|(_, a)| a.clone())
            .unwrap_or_else(|| panic!("no {op}"))
    };
    assert!(arg("ENTRYPOINT").contains("portcullis"));
    assert_eq!(
        arg("CMD"),
        r#"["run", "--config", "/etc/portcullis/portcullis.toml"]"#
    );
}

/// The image rebinds the example config's admin listener to all interfaces with
/// a `sed` that must find its line; keep the two in step.
#[test]
fn dockerfile_admin_rebind_matches_the_example_config() {
    let text = dockerfile();
    let sed = r#"s|^listen = "127.0.0.1:9090"$|listen = "0.0.0.0:9090"|"#;
    assert!(
        text.contains(sed),
        "the Dockerfile's sed changed: update this test"
    );
    let config = read(&repo().join("config/portcullis.toml"));
    let table: toml::Table = toml::from_str(&config).expect("TOML");
    let admin_listen = table
        .get("admin")
        .and_then(|a| a.get("listen"))
        .and_then(toml::Value::as_str);
    assert_eq!(
        admin_listen,
        Some("127.0.0.1:9090"),
        "config/portcullis.toml's [admin] listen changed: update deploy/Dockerfile's sed"
    );
    assert_eq!(
        config
            .lines()
            .filter(|l| *l == r#"listen = "127.0.0.1:9090""#)
            .count(),
        1,
        "the sed must match exactly one line of config/portcullis.toml"
    );
}
