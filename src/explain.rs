//! `portcullis explain`: run the gateway's decision on one request, offline,
//! and say step by step why it would be forwarded or refused.
//!
//! ```text
//! portcullis explain --config FILE [--token T | --token-file F] [--from IP]
//!     [--header 'Name: value' ...] [--no-metadata] [--body FILE]
//!     [--content-type TYPE] METHOD PATH
//! ```
//!
//! The request is built the way a client would send it (request line with
//! PATH exactly as given, `Host`, `Authorization: Bearer` from the token,
//! `Content-Type` / `Content-Length` for a body, then every `--header`), and
//! goes through [`crate::pipeline::admit_head`] and
//! [`crate::pipeline::check_body`] — the very code the proxy runs, so no rule
//! is repeated here. Keys of `jwks_url` issuers are fetched once; client
//! metadata comes from the configured source unless `--no-metadata`. Nothing
//! is sent upstream.
//!
//! The token itself is never printed: only the issuer, subject, client and
//! entitlements of a token that verified.
//!
//! Secrets are not needed. The config is validated structurally
//! ([`EnvMode::Structural`]): a secret whose environment variable is not set
//! is a warning, and a step that would need it is not decided:
//!
//! - a token of an HMAC issuer whose shared secret is not set: its signature
//!   is not checked (the token's own header and claims are signed afresh
//!   with the config's random placeholder, in memory, so every other token
//!   check runs for real), and the step is marked `?`;
//! - client metadata from an `http` source whose credential is not set: the
//!   source is not asked (it would get a credential nobody issued), the
//!   client step is marked `?`, and the steps after it assume the client
//!   record exists, is enabled, admits the client IP and grants the token's
//!   entitlements;
//! - an opaque token on a route whose introspection issuers' client secret
//!   is not set: their endpoint is not asked (it would get a placeholder
//!   credential); the token step shows the 503 `introspection_unavailable`
//!   the gateway would answer without an answer, and the decision is
//!   "unknown", naming the secret.
//!
//! An opaque token is otherwise introspected for real, one call per
//! introspection issuer of the route (a `keys` line says so up front); the
//! token step then says `introspected` and shows what the answer gave.
//!
//! A refusal that does not depend on what is undecided is still a refusal;
//! otherwise the decision is "unknown".
//!
//! Exit codes: [`EXIT_ALLOW`] (0), [`EXIT_REFUSE`] (1), [`EXIT_UNDECIDED`]
//! (2: no step refused, but a step could not be decided without a secret),
//! [`EXIT_USAGE`] (64: bad config or bad arguments), [`EXIT_INTERNAL`] (70:
//! the runtime could not start).

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::auth::Verifier;
use crate::config::model::{
    AuthMode, ClientSourceConfig, EntitlementsFrom, KeySource, UpstreamAuth,
};
use crate::config::{Config, EnvMode};
use crate::error::GatewayError;
use crate::pipeline::{self, Progress, RequestHead, Step, Trace};
use crate::policy::ip::canonical;
use crate::proxy::state::GatewayState;

/// The request would be forwarded.
pub const EXIT_ALLOW: u8 = 0;
/// The request would be refused.
pub const EXIT_REFUSE: u8 = 1;
/// Undecided: no step refused, but one needs a secret whose environment
/// variable is not set here (an HMAC issuer's secret, the metadata source's
/// credential).
pub const EXIT_UNDECIDED: u8 = 2;
/// EX_USAGE: bad config or bad arguments.
pub const EXIT_USAGE: u8 = 64;
/// EX_SOFTWARE: explain itself could not run.
pub const EXIT_INTERNAL: u8 = 70;

/// Bound on the initial fetch of every `jwks_url` issuer's keys.
const KEY_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// `Host` sent when no `--header 'Host: …'` is given.
const DEFAULT_HOST: &str = "localhost";
/// Body content type when `--body` is given without `--content-type` (and
/// no `Content-Type` header).
const DEFAULT_CONTENT_TYPE: &str = "application/json";
/// Width of the step-name column.
const STEP_COLUMN: usize = 13;

/// `portcullis explain` arguments.
#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    /// The config file to decide with.
    #[arg(long, short)]
    pub config: PathBuf,
    /// The bearer token (visible to other users in the process list: prefer
    /// --token-file).
    #[arg(long, value_name = "JWT", conflicts_with = "token_file")]
    pub token: Option<TokenArg>,
    /// File holding the bearer token (surrounding whitespace trimmed); `-`
    /// reads standard input.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The socket peer address; forwarding headers count only when it is in
    /// `server.trusted_proxies`.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub from: IpAddr,
    /// An extra request header, `Name: value`; repeatable.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Leave client metadata out, as if `[clients]` were absent.
    #[arg(long)]
    pub no_metadata: bool,
    /// File with the request body (sent with `Content-Length`).
    #[arg(long, value_name = "FILE")]
    pub body: Option<PathBuf>,
    /// `Content-Type` of the request (default with --body: application/json).
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
    /// Request method, as on the wire (case-sensitive): GET, PUT, ...
    pub method: String,
    /// Request target exactly as sent, e.g. /v1.0/apiclients/abc
    pub path: String,
}

/// A bearer token given on the command line; never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenArg(pub String);

impl std::fmt::Debug for TokenArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenArg(<redacted>)")
    }
}

impl FromStr for TokenArg {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(TokenArg(s.to_string()))
    }
}

/// What `explain` printed and its exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    /// [`EXIT_ALLOW`], [`EXIT_REFUSE`], [`EXIT_UNDECIDED`], [`EXIT_USAGE`]
    /// or [`EXIT_INTERNAL`].
    pub code: u8,
    /// The steps and the decision.
    pub stdout: String,
    /// Config errors and warnings, bad arguments.
    pub stderr: String,
}

/// Runs `explain`, prints to stdout / stderr and returns the exit code.
pub fn run(args: ExplainArgs) -> u8 {
    let explained = explain(&args);
    // A closed pipe must not turn a decision into a panic.
    let _ = std::io::stdout().write_all(explained.stdout.as_bytes());
    let _ = std::io::stderr().write_all(explained.stderr.as_bytes());
    explained.code
}

/// Runs `explain` and returns what it would print. Callable from anywhere,
/// including inside a tokio runtime (it then runs on a thread of its own).
pub fn explain(args: &ExplainArgs) -> Explained {
    let run = || {
        let mut tokens: Vec<String> = args.token.iter().map(|t| t.0.clone()).collect();
        let mut explained = explain_inner(args, &mut tokens);
        for token in &tokens {
            explained.stdout = scrub(&explained.stdout, token);
            explained.stderr = scrub(&explained.stderr, token);
        }
        explained
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return run();
    }
    std::thread::scope(|s| s.spawn(run).join()).unwrap_or_else(|_| Explained {
        code: EXIT_INTERNAL,
        stdout: String::new(),
        stderr: "explain: internal error\n".into(),
    })
}

/// Everything the command line says about the request, checked.
struct RequestInput {
    method: Method,
    target: String,
    peer: IpAddr,
    token_given: bool,
    /// The token is not JWT-shaped: introspection decides it.
    opaque_token: bool,
    /// Set when the token's signature cannot be checked here.
    unchecked_signature: Option<UncheckedSignature>,
    /// (name as given, value), in sending order.
    headers: Vec<(String, HeaderValue)>,
    body: Option<Vec<u8>>,
}

/// A token of an HMAC issuer whose shared secret is not set here.
struct UncheckedSignature {
    /// The issuer's `name`.
    issuer: String,
    /// The environment variable that holds its secret at run.
    env: String,
}

/// What cannot be decided here because a secret is not set.
#[derive(Default)]
struct Undecided {
    /// The metadata source's credential is not set: the source is not asked.
    metadata: Option<UnreadMetadata>,
}

struct UnreadMetadata {
    /// The environment variable of the credential.
    env: String,
    entitlements_from: EntitlementsFrom,
}

fn usage(message: impl std::fmt::Display) -> Explained {
    Explained {
        code: EXIT_USAGE,
        stdout: String::new(),
        stderr: format!("explain: {message}\n"),
    }
}

/// `tokens` receives the token once it is read (and the stand-in signed in
/// its place, if any), so the caller can make sure none appears in the
/// output.
fn explain_inner(args: &ExplainArgs, tokens: &mut Vec<String>) -> Explained {
    let mut stderr = String::new();
    let loaded = match crate::config::load_file_with(&args.config, EnvMode::Structural) {
        Ok(loaded) => loaded,
        Err(errors) => {
            return Explained {
                code: EXIT_USAGE,
                stdout: String::new(),
                stderr: format!("{errors}\n{} error(s)\n", errors.errors.len()),
            }
        }
    };
    for unset in &loaded.config.unset_secrets {
        let _ = writeln!(
            stderr,
            "{}: {}: {} (required at run)",
            args.config.display(),
            unset.path,
            unset.reason()
        );
    }
    for w in &loaded.warnings {
        let _ = writeln!(stderr, "{}: warning: {w}", args.config.display());
    }
    let input = match request_input(args, &loaded.config, tokens) {
        Ok(input) => input,
        Err(message) => {
            let mut e = usage(message);
            e.stderr.insert_str(0, &stderr);
            return e;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return Explained {
                code: EXIT_INTERNAL,
                stdout: String::new(),
                stderr: format!("{stderr}explain: cannot start the runtime: {e}\n"),
            }
        }
    };
    let mut config = loaded.config;
    let mut undecided = Undecided::default();
    let mut metadata = metadata_note(&config, args.no_metadata);
    if !args.no_metadata {
        if let Some(unread) = unread_metadata(&config) {
            let _ = write!(
                metadata,
                " — not asked: its credential ${} is not set (required at run)",
                unread.env
            );
            // Never send the source a placeholder credential.
            config.clients = None;
            undecided.metadata = Some(unread);
        }
    }
    if args.no_metadata {
        config.clients = None;
    }
    let (code, stdout) =
        runtime.block_on(decide(config, &args.config, metadata, input, &undecided));
    Explained {
        code,
        stdout,
        stderr,
    }
}

/// The token as given, for making sure it never appears in the output.
/// `text` with every copy of `token` replaced. The report never prints the
/// token; this makes sure of it. Very short strings are left alone: they
/// are not real tokens and replacing them would garble the report.
fn scrub(text: &str, token: &str) -> String {
    let token = token.trim();
    if token.len() < 8 {
        return text.to_string();
    }
    text.replace(token, "<token>")
}

fn request_input(
    args: &ExplainArgs,
    config: &Config,
    read: &mut Vec<String>,
) -> Result<RequestInput, String> {
    let method = Method::from_bytes(args.method.as_bytes())
        .map_err(|_| format!("{:?} is not an HTTP method", args.method))?;
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.0.clone()),
        (None, Some(path)) => Some(read_token_file(path)?),
        (None, None) => None,
    };
    if let Some(token) = &token {
        read.push(token.clone());
    }
    if token.as_deref().is_some_and(str::is_empty) {
        return Err("the token is empty".into());
    }
    // An HMAC issuer without its secret: check everything but the signature.
    let stand_in = token.as_deref().and_then(|t| stand_in_signature(config, t));
    if let Some((signed, _)) = &stand_in {
        read.push(signed.clone());
    }
    let (token, unchecked_signature) = match stand_in {
        Some((signed, unchecked)) => (Some(signed), Some(unchecked)),
        None => (token, None),
    };
    let mut extra: Vec<(String, HeaderName, HeaderValue)> = Vec::new();
    for line in &args.headers {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!(
                "--header {:?}: expected 'Name: value'",
                printable(line)
            ));
        };
        let parsed = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("--header: {:?} is not a header name", printable(name)))?;
        let value = HeaderValue::from_bytes(value.trim_matches([' ', '\t']).as_bytes())
            .map_err(|_| format!("--header {name}: the value is not a valid header value"))?;
        extra.push((name.to_string(), parsed, value));
    }
    let given = |h: &HeaderName| extra.iter().any(|(_, n, _)| n == h);
    let body = match &args.body {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| format!("cannot read the body file {}: {e}", path.display()))?,
        ),
        None => None,
    };

    let mut headers: Vec<(String, HeaderValue)> = Vec::new();
    if !given(&HOST) {
        headers.push(("Host".into(), HeaderValue::from_static(DEFAULT_HOST)));
    }
    if let Some(token) = &token {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "the token contains characters a header cannot carry".to_string())?;
        headers.push(("Authorization".into(), value));
    }
    match &args.content_type {
        Some(ct) => {
            let value = HeaderValue::from_str(ct)
                .map_err(|_| format!("--content-type {:?} is not a valid value", printable(ct)))?;
            headers.push(("Content-Type".into(), value));
        }
        None if body.is_some() && !given(&CONTENT_TYPE) => headers.push((
            "Content-Type".into(),
            HeaderValue::from_static(DEFAULT_CONTENT_TYPE),
        )),
        None => {}
    }
    if let Some(body) = &body {
        if !given(&CONTENT_LENGTH) && !given(&TRANSFER_ENCODING) {
            headers.push(("Content-Length".into(), HeaderValue::from(body.len())));
        }
    }
    headers.extend(extra.into_iter().map(|(name, _, value)| (name, value)));
    Ok(RequestInput {
        method,
        target: args.path.clone(),
        peer: canonical(args.from),
        token_given: token.is_some(),
        opaque_token: token
            .as_deref()
            .is_some_and(|t| !crate::auth::looks_like_jwt(t)),
        unchecked_signature,
        headers,
        body,
    })
}

fn read_token_file(path: &Path) -> Result<String, String> {
    let text = if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read the token from standard input: {e}"))?;
        text
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?
    };
    Ok(text.trim().to_string())
}

/// `text` with control characters escaped.
fn printable(text: &str) -> String {
    text.escape_debug().to_string()
}

/// Where client metadata comes from, in words.
fn metadata_note(config: &Config, no_metadata: bool) -> String {
    match (&config.clients, no_metadata) {
        (None, _) => "none ([clients] is not configured)".into(),
        (Some(_), true) => "off (--no-metadata: as if [clients] were absent)".into(),
        (Some(c), false) => match &c.source {
            ClientSourceConfig::Static(list) => {
                format!("[clients] static source ({} client(s))", list.len())
            }
            ClientSourceConfig::Http { url, .. } => {
                format!("[clients] http source {url}")
            }
        },
    }
}

/// The `http` metadata source's credential, when its environment variable
/// is not set here.
fn unread_metadata(config: &Config) -> Option<UnreadMetadata> {
    let clients = config.clients.as_ref()?;
    if !matches!(clients.source, ClientSourceConfig::Http { .. }) {
        return None;
    }
    let unset = config
        .unset_secrets
        .iter()
        .find(|u| u.path.starts_with("clients."))?;
    Some(UnreadMetadata {
        env: unset.env.clone(),
        entitlements_from: clients.entitlements_from,
    })
}

/// Whether `env` is a secret's variable that is not set here.
fn is_unset(config: &Config, env: &str) -> bool {
    config.unset_secrets.iter().any(|u| u.env == env)
}

/// For a token whose unverified `iss` names an HMAC issuer whose secret is
/// not set here (and whose `alg` is HS*): the same header and claims, signed
/// with the config's placeholder for that secret, so the verifier checks
/// everything but the signature for real. The stand-in never leaves this
/// process and is scrubbed from the output like the token. Anything that
/// does not parse is left to the verifier to refuse.
fn stand_in_signature(config: &Config, token: &str) -> Option<(String, UncheckedSignature)> {
    use aws_lc_rs::hmac;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use jsonwebtoken::Algorithm;

    let mut parts = token.split('.');
    let (header, claims, _signature, None) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next())
    else {
        return None;
    };
    let object = |part: &str| -> Option<serde_json::Map<String, serde_json::Value>> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
    };
    let alg = object(header)?.get("alg")?.as_str()?.to_string();
    let hmac_alg = match crate::auth::keys::algorithm_from_name(&alg)? {
        Algorithm::HS256 => hmac::HMAC_SHA256,
        Algorithm::HS384 => hmac::HMAC_SHA384,
        Algorithm::HS512 => hmac::HMAC_SHA512,
        _ => return None,
    };
    let iss = object(claims)?.get("iss")?.as_str()?.to_string();
    let (issuer, env, secret) = config.issuers.iter().find_map(|i| match &i.keys {
        KeySource::HmacSecret { env, secret } if i.issuer == iss && is_unset(config, env) => {
            Some((i, env, secret))
        }
        _ => None,
    })?;
    let signing_input = &token[..header.len() + 1 + claims.len()];
    let tag = hmac::sign(
        &hmac::Key::new(hmac_alg, &secret.0),
        signing_input.as_bytes(),
    );
    Some((
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref())),
        UncheckedSignature {
            issuer: issuer.name.clone(),
            env: env.clone(),
        },
    ))
}

/// Records every step that passed.
#[derive(Default)]
struct Recorder {
    passed: Vec<(Step, String)>,
}

impl Trace for Recorder {
    fn passed(&mut self, step: Step, detail: std::fmt::Arguments<'_>) {
        self.passed.push((step, detail.to_string()));
    }
}

/// Where in the pipeline a refusal came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    Body,
}

/// One line of the step list: `  ✓ route         detail`.
fn step_line(out: &mut String, mark: char, name: &str, detail: &str) {
    let _ = writeln!(out, "  {mark} {name:<STEP_COLUMN$} {detail}");
}

/// Continuation line under a step.
fn more_line(out: &mut String, detail: &str) {
    let _ = writeln!(out, "    {:<STEP_COLUMN$} {detail}", "");
}

fn info_line(out: &mut String, label: &str, detail: &str) {
    let _ = writeln!(out, "  {label:<9} {detail}");
}

async fn decide(
    config: Config,
    config_path: &Path,
    metadata: String,
    input: RequestInput,
    undecided: &Undecided,
) -> (u8, String) {
    let mut verifier = Verifier::new(&config.issuers);
    // Keys were fetched just now; an unknown `kid` would not be found by
    // asking again, so do not wait for a refetch nobody runs.
    verifier.set_refetch_wait(Duration::ZERO);
    // Never send an introspection endpoint the placeholder of a secret
    // that is not set here: such an issuer's answer is undecided.
    for (index, issuer) in config.issuers.iter().enumerate() {
        if let KeySource::Introspection(intro) = &issuer.keys {
            if is_unset(&config, &intro.client_secret_env) {
                verifier.withhold_introspection(index);
            }
        }
    }
    let verifier = Arc::new(verifier);
    let key_notes = load_keys(&config, &verifier).await;
    let state = GatewayState::new(Arc::new(config), verifier);

    // The request as the gateway would receive it.
    let mut headers = HeaderMap::new();
    let mut block = format!("{} {} HTTP/1.1\r\n", input.method, input.target).into_bytes();
    for (name, value) in &input.headers {
        if let Ok(parsed) = HeaderName::from_bytes(name.as_bytes()) {
            headers.append(parsed, value.clone());
        }
        block.extend_from_slice(name.as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    block.extend_from_slice(b"\r\n");
    // A target with whitespace cannot travel in a request line: check it
    // without the raw block (the target checks refuse it themselves).
    let line_fits = !input
        .target
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control());
    let head = RequestHead {
        method: &input.method,
        raw_target: input.target.as_bytes(),
        headers: &headers,
        raw_header_block: line_fits.then_some(block.as_slice()),
        peer: Some(input.peer),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);

    let mut progress = Progress::default();
    let mut trace = Recorder::default();
    let mut outcome = pipeline::admit_head(&state, &head, now, &mut progress, &mut trace)
        .await
        .map_err(|e| (e, Phase::Head));
    let route = progress.route.and_then(|r| state.config.routes.get(r));
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    if outcome.is_ok() && route.is_some_and(|r| pipeline::reads_body(r, content_type)) {
        let body = input.body.as_deref().unwrap_or_default();
        outcome = pipeline::check_body(&state, &progress, content_type, body, &mut trace)
            .map_err(|e| (e, Phase::Body));
    }

    // The metadata source would have been asked for the token's client: it
    // matters only when the token's issuer uses client metadata.
    let unread = undecided.metadata.as_ref().filter(|_| {
        progress
            .token
            .as_ref()
            .and_then(|t| state.config.issuers.get(t.issuer))
            .is_some_and(|i| i.client_metadata)
    });
    if unread.is_some() && progress.client_id().is_none() {
        // The gateway refuses such a token before it asks the source.
        trace.passed.retain(|(s, _)| {
            matches!(
                s,
                Step::Request | Step::Route | Step::ClientIp | Step::Token
            )
        });
        outcome = Err((GatewayError::UnknownClient, Phase::Head));
    }

    // --- the report ---
    let mut out = String::new();
    let shown_target = match &outcome {
        // The query carries a token: do not repeat it.
        Err((GatewayError::TokenInQuery, _)) => match input.target.split_once('?') {
            Some((path, _)) => format!("{}?<query not shown>", printable(path)),
            None => printable(&input.target),
        },
        _ => printable(&input.target),
    };
    let _ = writeln!(out, "explain {} {shown_target}", input.method);
    info_line(&mut out, "config", &config_path.display().to_string());
    info_line(
        &mut out,
        "from",
        &client_ip_note(&state, input.peer, progress.client_ip, &headers),
    );
    let names: Vec<&str> = input.headers.iter().map(|(n, _)| n.as_str()).collect();
    info_line(&mut out, "headers", &names.join(", "));
    info_line(
        &mut out,
        "token",
        if input.token_given {
            "given (never shown)"
        } else {
            "none"
        },
    );
    let body_note = match &input.body {
        Some(b) => format!(
            "{} bytes, Content-Type {}",
            b.len(),
            headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map_or_else(|| "none".to_string(), |v| format!("{v:?}"))
        ),
        None => "none".into(),
    };
    info_line(&mut out, "body", &body_note);
    info_line(&mut out, "metadata", &metadata);
    for note in &key_notes {
        info_line(&mut out, "keys", note);
    }
    let _ = writeln!(out, "steps:");
    // What could not be decided without a secret, as the steps met it.
    let mut open: Vec<String> = Vec::new();
    for (step, detail) in &trace.passed {
        match (step, &input.unchecked_signature, unread) {
            (Step::Token, Some(sig), _) => {
                step_line(
                    &mut out,
                    '?',
                    step.name(),
                    &format!(
                        "signature not checked: issuer {:?}'s secret ${} is not set (required at run)",
                        sig.issuer, sig.env
                    ),
                );
                let checked = detail.strip_prefix("verified: ").unwrap_or(detail);
                more_line(&mut out, &format!("every other check passes: {checked}"));
                open.push(format!("the token's signature (${} is not set)", sig.env));
            }
            (Step::Client, _, Some(unread)) => {
                step_line(
                    &mut out,
                    '?',
                    step.name(),
                    &format!(
                        "not checked: the metadata source's credential ${} is not set (required at run)",
                        unread.env
                    ),
                );
                let client = progress.client_id().unwrap_or("-");
                more_line(
                    &mut out,
                    &format!(
                        "the steps below assume client {client:?} exists, is enabled and admits the client IP{}",
                        match unread.entitlements_from {
                            EntitlementsFrom::Token => "",
                            EntitlementsFrom::Both => ", and that it holds the token's entitlements",
                            EntitlementsFrom::Metadata =>
                                ", and that its entitlements are the token's (entitlements_from = \"metadata\")",
                        }
                    ),
                );
                open.push(format!(
                    "client {client:?}'s record (${} is not set)",
                    unread.env
                ));
            }
            _ => step_line(&mut out, '✓', step.name(), detail),
        }
    }

    let code = match &outcome {
        Ok(()) => {
            if let Some(route) = route {
                if !pipeline::reads_body(route, content_type) {
                    let detail = match &input.body {
                        Some(b) => format!(
                            "no [routes.body] policy on this route: the {} bytes would go upstream unchecked",
                            b.len()
                        ),
                        None => "no [routes.body] policy on this route".into(),
                    };
                    step_line(&mut out, '-', Step::Body.name(), &detail);
                }
                let upstream = state.config.upstreams.get(route.upstream);
                let target = upstream.map_or_else(|| "?".to_string(), |u| upstream_url(u));
                let name = upstream.map_or("?", |u| u.name.as_str());
                let mut forward = format!("upstream {name:?} ({target})");
                if route.auth == AuthMode::Required {
                    forward.push_str(if route.strip_authorization {
                        "; caller's Authorization replaced by the upstream's own credential"
                    } else {
                        "; caller's Authorization passed on"
                    });
                    if let Some(env) = unset_credential(&state.config, route, upstream) {
                        let _ = write!(forward, " (${env}: not set here, required at run)");
                    }
                }
                step_line(&mut out, '→', "forward", &forward);
                let mut identity = Vec::new();
                if let Some(c) = progress.client_id() {
                    identity.push(format!("X-Portcullis-Client-Id {c:?}"));
                }
                if let Some(s) = progress.subject() {
                    identity.push(format!("X-Portcullis-Subject {s:?}"));
                }
                identity.push(format!("X-Portcullis-Route {:?}", route.name));
                for (h, v) in &progress.pinned {
                    identity.push(format!("{h} {v:?} (pinned from the token)"));
                }
                more_line(&mut out, &format!("sets {}", identity.join(", ")));
                if let Some(policy) = &route.response {
                    let (first, rest) = response_notes(policy, progress.entitlements());
                    step_line(&mut out, '→', "response", &first);
                    for line in rest {
                        more_line(&mut out, &line);
                    }
                }
                if open.is_empty() {
                    let _ = writeln!(
                        out,
                        "DECISION: allow — would forward to upstream {name:?} ({target})"
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "DECISION: unknown — would forward to upstream {name:?} ({target}) if what could not be checked here passes: {}",
                        open.join("; ")
                    );
                }
            } else {
                let _ = writeln!(out, "DECISION: allow");
            }
            if open.is_empty() {
                EXIT_ALLOW
            } else {
                EXIT_UNDECIDED
            }
        }
        Err((error, phase)) => {
            let step = refusing_step(&trace.passed, error, *phase);
            step_line(&mut out, '✗', step.name(), &error.to_string());
            for line in refusal_context(&state, &progress, error, &input) {
                more_line(&mut out, &line);
            }
            if step == Step::Token {
                if let Some(sig) = &input.unchecked_signature {
                    more_line(
                        &mut out,
                        &format!(
                            "(the signature was not checked: ${} is not set; this refusal does not depend on it)",
                            sig.env
                        ),
                    );
                }
            }
            let _ = writeln!(out, "[refused at: {}]", step.name());
            match refusal_depends_on(&state.config, route, unread, &input, error) {
                Some(what) => {
                    open.push(what);
                    let _ = writeln!(
                        out,
                        "DECISION: unknown — refused here with {} {}, but what could not be checked here decides it: {}",
                        error.status(),
                        error.code(),
                        open.join("; ")
                    );
                    EXIT_UNDECIDED
                }
                None => {
                    let _ = writeln!(
                        out,
                        "DECISION: refuse — {} {}: {error}",
                        error.status(),
                        error.code()
                    );
                    EXIT_REFUSE
                }
            }
        }
    };
    (code, out)
}

/// What a refusal hinges on when it cannot be trusted without a secret:
/// - with `entitlements_from = "metadata"` and an unread client record, the
///   token's entitlements stood in for the record's, so a refusal for want
///   of entitlements says nothing (with `"both"` the effective set can only
///   be smaller than the token's, so such a refusal stands);
/// - a bad signature on a route that accepts an HMAC issuer whose secret is
///   not set, when no stand-in signature was made for the token.
///
/// Every other refusal stands whatever the missing secrets hold.
fn refusal_depends_on(
    config: &Config,
    route: Option<&crate::config::model::RouteConfig>,
    unread: Option<&UnreadMetadata>,
    input: &RequestInput,
    error: &GatewayError,
) -> Option<String> {
    if let Some(unread) = unread {
        let on_entitlements = match error {
            GatewayError::InsufficientEntitlements { .. } => true,
            GatewayError::BodyRule(r) => {
                matches!(
                    r.code,
                    "privilege_escalation" | "field_requires_entitlement"
                )
            }
            _ => false,
        };
        if on_entitlements && unread.entitlements_from == EntitlementsFrom::Metadata {
            return Some(format!(
                "the client record's entitlements (${} is not set)",
                unread.env
            ));
        }
    }
    if matches!(error, GatewayError::IntrospectionUnavailable) && input.opaque_token {
        let withheld: Vec<&str> = route
            .into_iter()
            .flat_map(|r| r.issuers.iter())
            .filter_map(|i| config.issuers.get(*i))
            .filter_map(|i| match &i.keys {
                KeySource::Introspection(intro) if is_unset(config, &intro.client_secret_env) => {
                    Some(intro.client_secret_env.as_str())
                }
                _ => None,
            })
            .collect();
        if !withheld.is_empty() {
            return Some(format!(
                "the introspection answer (not asked: ${} is not set)",
                withheld.join(", $")
            ));
        }
    }
    if matches!(
        error,
        GatewayError::InvalidToken(crate::error::TokenFault::BadSignature)
    ) && input.unchecked_signature.is_none()
    {
        let unset_hmac = route
            .into_iter()
            .flat_map(|r| r.issuers.iter())
            .filter_map(|i| config.issuers.get(*i))
            .find_map(|i| match &i.keys {
                KeySource::HmacSecret { env, .. } if is_unset(config, env) => Some(env),
                _ => None,
            });
        if let Some(env) = unset_hmac {
            return Some(format!("the secret in ${env}"));
        }
    }
    None
}

/// The environment variable of the upstream credential a route would send,
/// when it is not set here.
fn unset_credential<'c>(
    config: &'c Config,
    route: &crate::config::model::RouteConfig,
    upstream: Option<&'c Arc<crate::config::model::UpstreamConfig>>,
) -> Option<&'c str> {
    if !route.strip_authorization {
        return None;
    }
    let env = match upstream?.auth.as_ref()? {
        UpstreamAuth::Bearer { env, .. }
        | UpstreamAuth::Header { env, .. }
        | UpstreamAuth::ClientCredentials { env, .. } => env,
    };
    is_unset(config, env).then_some(env.as_str())
}

/// What `[routes.response]` would do to this caller's answers: a summary
/// and one line per pointer (removed, or kept and why).
fn response_notes(
    policy: &crate::policy::redact::ResponsePolicy,
    entitlements: &[String],
) -> (String, Vec<String>) {
    let removed = policy.pointers_for(entitlements).len();
    let summary = format!(
        "2xx JSON answers buffered (max_bytes {}) and redacted: {removed} of {} member pointers removed for this caller",
        policy.max_bytes,
        policy.rules.len()
    );
    let lines = policy
        .rules
        .iter()
        .map(|rule| {
            if rule.applies_to(entitlements) {
                if rule.unless.is_empty() {
                    format!("removes {} (always)", rule.pointer)
                } else {
                    format!(
                        "removes {} (the caller holds none of {})",
                        rule.pointer,
                        rule.unless.join(", ")
                    )
                }
            } else {
                let held: Vec<&str> = rule
                    .unless
                    .iter()
                    .filter(|e| entitlements.contains(e))
                    .map(String::as_str)
                    .collect();
                format!(
                    "keeps {} (the caller holds {})",
                    rule.pointer,
                    held.join(", ")
                )
            }
        })
        .collect();
    (summary, lines)
}

/// The step that refused: the one after the last that passed (steps run in
/// order and each passed one is traced). After the entitlements only the
/// update guards remain; the refusal's rule tells which.
fn refusing_step(passed: &[(Step, String)], error: &GatewayError, phase: Phase) -> Step {
    if phase == Phase::Body {
        return Step::Body;
    }
    let pin = matches!(error, GatewayError::BodyRule(r) if r.rule == "pin_headers");
    match passed.last().map(|(s, _)| *s) {
        None => Step::Request,
        Some(Step::Request) => Step::Route,
        Some(Step::Route) => Step::ClientIp,
        Some(Step::ClientIp) => Step::Token,
        Some(Step::Token) => Step::Client,
        Some(Step::Client) => Step::Entitlements,
        Some(Step::Entitlements) if pin => Step::PinHeaders,
        Some(Step::Entitlements) => Step::DenySelf,
        Some(Step::DenySelf | Step::PinHeaders) => Step::PinHeaders,
        Some(Step::Quota | Step::Body) => Step::Body,
    }
}

/// What else helps to understand a refusal (never the token).
fn refusal_context(
    state: &GatewayState,
    progress: &Progress,
    error: &GatewayError,
    input: &RequestInput,
) -> Vec<String> {
    let route = progress.route.and_then(|r| state.config.routes.get(r));
    let mut lines = Vec::new();
    let introspected_by: Vec<String> = route
        .into_iter()
        .flat_map(|r| r.issuers.iter())
        .filter_map(|i| state.config.issuers.get(*i))
        .filter_map(|i| match &i.keys {
            KeySource::Introspection(intro)
                if !is_unset(&state.config, &intro.client_secret_env) =>
            {
                Some(format!("{:?} at {}", i.name, intro.url))
            }
            _ => None,
        })
        .collect();
    let introspected = input.opaque_token
        && matches!(
            error,
            GatewayError::InvalidToken(_) | GatewayError::IntrospectionUnavailable
        )
        && !introspected_by.is_empty();
    if introspected {
        lines.push(format!(
            "an opaque token: introspected (RFC 7662, one call each, in order) by {}",
            introspected_by.join(", ")
        ));
    }
    match error {
        GatewayError::MethodNotAllowed { allow } => {
            lines.push(format!("the path matches a route with Allow: {allow}"));
        }
        GatewayError::IpDenied => {
            if let Some(r) = route {
                lines.push(format!(
                    "route {:?} has{}{}",
                    r.name,
                    if r.ip_allow.is_some() {
                        " ip_allow"
                    } else {
                        ""
                    },
                    if r.ip_deny.is_some() { " ip_deny" } else { "" },
                ));
            }
        }
        GatewayError::MissingToken if !input.token_given => {
            lines.push("no token was given (--token or --token-file)".into());
        }
        GatewayError::KeysUnavailable => {
            lines.push("the issuer's keys could not be loaded (see `keys` above)".into());
        }
        GatewayError::IntrospectionUnavailable if introspected => {
            lines.push("no usable answer: unreachable, timed out, not 200 or not an RFC 7662 object (the gateway fails closed)".into());
        }
        GatewayError::UnknownClient
        | GatewayError::ClientDisabled
        | GatewayError::ClientIpDenied
        | GatewayError::MetadataUnavailable => {
            match progress.client_id() {
                Some(c) => lines.push(format!("client {c:?}")),
                None => lines.push("the token names no client".into()),
            }
            if matches!(error, GatewayError::MetadataUnavailable) {
                lines.push("the metadata source failed; --no-metadata skips it".into());
            }
        }
        GatewayError::InsufficientEntitlements { .. } => {
            if let Some(r) = route {
                lines.push(format!(
                    "required all {:?} / any {:?}; effective {:?}",
                    r.entitlements.all,
                    r.entitlements.any,
                    progress.entitlements()
                ));
            }
        }
        GatewayError::BodyRule(refusal) if refusal.code == "privilege_escalation" => {
            lines.push(format!(
                "caller's effective entitlements {:?}",
                progress.entitlements()
            ));
        }
        _ => {}
    }
    lines
}

/// The client address and where it came from.
fn client_ip_note(
    state: &GatewayState,
    peer: IpAddr,
    client: Option<IpAddr>,
    headers: &HeaderMap,
) -> String {
    let forwarded = headers.contains_key("x-forwarded-for") || headers.contains_key("forwarded");
    let trusted = state.config.server.trusted_proxies.contains(peer);
    match client {
        Some(ip) if ip != peer => format!(
            "peer {peer} (a trusted proxy) → client ip {ip} from the forwarding headers"
        ),
        Some(ip) if forwarded && !trusted => format!(
            "peer {peer} → client ip {ip} (forwarding headers ignored: the peer is not in server.trusted_proxies)"
        ),
        Some(ip) => format!("peer {peer} → client ip {ip}"),
        None => format!("peer {peer} → client ip unknown"),
    }
}

fn upstream_url(u: &crate::config::model::UpstreamConfig) -> String {
    let scheme = if u.tls { "https" } else { "http" };
    let mut text = match u.addresses.first() {
        Some(a) => format!("{scheme}://{a}"),
        None => format!("{scheme}://{}", u.host),
    };
    if u.addresses.len() > 1 {
        let _ = write!(text, " and {} more endpoint(s)", u.addresses.len() - 1);
    }
    text
}

/// Fetches the keys of every `jwks_url` issuer once (concurrently, bounded)
/// and says what each issuer has.
async fn load_keys(config: &Config, verifier: &Verifier) -> Vec<String> {
    let mut tasks = tokio::task::JoinSet::new();
    for refresher in verifier.refreshers() {
        tasks.spawn(async move {
            let name = refresher.keys().name().to_string();
            let result = tokio::time::timeout(KEY_FETCH_TIMEOUT, refresher.refresh_once()).await;
            (name, result)
        });
    }
    let mut fetched = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(pair) = joined {
            fetched.push(pair);
        }
    }
    let mut notes = Vec::new();
    for (index, issuer) in config.issuers.iter().enumerate() {
        let count = verifier
            .issuer_keys(index)
            .and_then(|k| k.current())
            .map(|set| set.len());
        let note = match &issuer.keys {
            KeySource::JwksUrl(url) => {
                match fetched.iter().find(|(n, _)| *n == issuer.name).map(|(_, r)| r) {
                    Some(Ok(Ok(n))) => format!("{:?}: {n} key(s) fetched from {url}", issuer.name),
                    Some(Ok(Err(reason))) => format!(
                        "{:?}: fetching {url} failed: {reason} (its tokens get 503 keys_unavailable)",
                        issuer.name
                    ),
                    Some(Err(_)) => format!(
                        "{:?}: fetching {url} timed out after {}s (its tokens get 503 keys_unavailable)",
                        issuer.name,
                        KEY_FETCH_TIMEOUT.as_secs()
                    ),
                    None => format!("{:?}: {url} was not fetched", issuer.name),
                }
            }
            KeySource::JwksFile { path, .. } => match count {
                Some(n) => format!("{:?}: {n} key(s) from {}", issuer.name, path.display()),
                None => format!(
                    "{:?}: no usable key in {} (its tokens get 503 keys_unavailable)",
                    issuer.name,
                    path.display()
                ),
            },
            KeySource::HmacSecret { env, .. } if is_unset(config, env) => format!(
                "{:?}: shared secret from ${env}, not set here (required at run): signatures are not checked",
                issuer.name
            ),
            KeySource::HmacSecret { env, .. } => {
                format!("{:?}: shared secret from ${env}", issuer.name)
            }
            KeySource::Introspection(intro) if is_unset(config, &intro.client_secret_env) => format!(
                "{:?}: no keys, opaque tokens introspected at {} — not asked here: ${} is not set (required at run)",
                issuer.name, intro.url, intro.client_secret_env
            ),
            KeySource::Introspection(intro) => format!(
                "{:?}: no keys, opaque tokens introspected at {} (explain asks it once, nothing cached)",
                issuer.name, intro.url
            ),
        };
        notes.push(note);
    }
    notes
}
