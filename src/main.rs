//! `portcullis` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// Request handling allocates many small, short-lived objects across pingora's
// tasks; mimalloc's thread-local free lists serve them faster than glibc's
// malloc (measured by the load harness, benches/load/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// EX_USAGE from sysexits.h: the configuration is wrong.
const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Authenticating reverse proxy for IAM admin APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the gateway.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Zero-downtime upgrade: take over the listening sockets of the running
        /// instance (which hands them over when it receives SIGQUIT).
        #[arg(long)]
        upgrade: bool,
    },
    /// Run the decision pipeline offline for one request and print every step:
    /// exit 0 for allow, 1 for refuse, 2 when a step needs a secret that is
    /// not set, 64 for a bad config or arguments.
    Explain(portcullis::explain::ExplainArgs),
    /// Validate a config file: exit 0, or print every error and exit 64.
    /// A secret's environment variable that is not set is a warning.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// Also require every secret's environment variable (`*_env` keys) to
        /// be set and non-empty, as `run` does (for a deploy step).
        #[arg(long)]
        require_env: bool,
    },
    /// Run the gateway and a demo IAM service, and print curl commands to try.
    Demo {
        /// Gateway (proxy) port on 127.0.0.1.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Admin port on 127.0.0.1 (/healthz, /readyz, /metrics).
        #[arg(long, default_value_t = 9090)]
        admin_port: u16,
        /// Demo IAM service port on 127.0.0.1.
        #[arg(long, default_value_t = 8081)]
        iam_port: u16,
    },
    /// Print a signed JWT (for tests and demos): exit 64 on a bad argument or key file.
    Token {
        /// Private key: PEM (PKCS#8, SEC 1 or PKCS#1) or a private JWK.
        #[arg(long)]
        key: PathBuf,
        /// Signing algorithm (default: the key's JWK `alg`, else ES256 / ES384 / RS256 / EdDSA by key type).
        #[arg(long)]
        alg: Option<String>,
        /// Key id (default: the key's JWK `kid`, the `kid` in a jwks.json beside the key, else its RFC 7638 thumbprint).
        #[arg(long)]
        kid: Option<String>,
        /// The `iss` claim (an issuer's exact `issuer` value).
        #[arg(long)]
        iss: String,
        /// The `sub` claim.
        #[arg(long)]
        sub: String,
        /// The `client_id` claim (the API client the gateway looks up).
        #[arg(long)]
        client_id: Option<String>,
        /// Comma-separated: the `entitlements` claim (an array).
        #[arg(long)]
        entitlements: Option<String>,
        /// Audience; repeat for several.
        #[arg(long)]
        aud: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 300)]
        ttl: u64,
        /// More claims: NAME=string or NAME:=json; repeatable.
        #[arg(long = "claim", value_name = "NAME=VALUE")]
        claims: Vec<String>,
    },
    /// Generate a signing key pair: DIR/private.pem (0600), DIR/public.pem, DIR/jwks.json.
    Keygen {
        /// ES256, ES384, RS256 (RS384, RS512), PS256 (PS384, PS512) or EdDSA.
        #[arg(long, default_value = "ES256")]
        alg: String,
        /// Directory to write the key files to (created, mode 0700, if missing).
        #[arg(long)]
        out: PathBuf,
        /// Key id (default: the key's RFC 7638 thumbprint).
        #[arg(long)]
        kid: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors; bad usage is EX_USAGE.
            let code = if e.use_stderr() { EXIT_BAD_CONFIG } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Explain(args) => ExitCode::from(portcullis::explain::run(args)),
        Command::Check {
            config,
            require_env,
        } => match portcullis::config::load_file_with(&config, env_mode(require_env)) {
            Ok(loaded) => {
                // Validated structurally: the secrets `run` will need.
                for unset in &loaded.config.unset_secrets {
                    eprintln!(
                        "{}: {}: {} (required at run)",
                        config.display(),
                        unset.path,
                        unset.reason()
                    );
                }
                for w in &loaded.warnings {
                    eprintln!("{}: warning: {w}", config.display());
                }
                println!("{}: OK", config.display());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                eprintln!("{} error(s)", errors.errors.len());
                ExitCode::from(EXIT_BAD_CONFIG)
            }
        },
        Command::Run { config, upgrade } => {
            let loaded = match portcullis::config::load_file(&config) {
                Ok(l) => l,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
            };
            init_logging(&loaded.config.log);
            for w in &loaded.warnings {
                tracing::warn!("{}: {w}", config.display());
            }
            match portcullis::server::run_forever(loaded.config, upgrade) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Demo {
            port,
            admin_port,
            iam_port,
        } => {
            let options = portcullis::demo::DemoOptions {
                port,
                admin_port,
                iam_port,
            };
            match portcullis::demo::run(options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("portcullis demo: {e}");
                    ExitCode::from(EXIT_BAD_CONFIG)
                }
            }
        }
        Command::Token {
            key,
            alg,
            kid,
            iss,
            sub,
            client_id,
            entitlements,
            aud,
            ttl,
            claims,
        } => {
            let extra: Result<Vec<_>, _> = claims
                .iter()
                .map(|c| portcullis::mint::parse_claim(c))
                .collect();
            let minted = extra.and_then(|extra| {
                let claims = portcullis::mint::TokenClaims {
                    iss,
                    sub,
                    client_id,
                    entitlements: entitlements
                        .as_deref()
                        .map(portcullis::mint::parse_entitlements),
                    audiences: aud,
                    ttl_seconds: ttl,
                    extra,
                };
                portcullis::mint::token(&key, alg.as_deref(), kid.as_deref(), &claims)
            });
            match minted {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("portcullis token: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Keygen { alg, out, kid } => {
            match portcullis::mint::keygen(&alg, &out, kid.as_deref()) {
                Ok((key, files)) => {
                    println!(
                        "{} key, kid {}:",
                        portcullis::mint::alg_name(key.alg()),
                        key.kid()
                    );
                    for path in [&files.private_pem, &files.public_pem, &files.jwks] {
                        println!("  {}", path.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("portcullis keygen: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
    }
}

/// `check` validates the config, not the environment, unless asked to.
fn env_mode(require_env: bool) -> portcullis::config::EnvMode {
    if require_env {
        portcullis::config::EnvMode::Strict
    } else {
        portcullis::config::EnvMode::Structural
    }
}

fn init_logging(log: &portcullis::config::model::LogSettings) {
    // RUST_LOG, when set, wins over `[log] level`.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let mut filter = tracing_subscriber::EnvFilter::try_new(&log.level)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        for directive in portcullis::edge::QUIET_PINGORA_TARGETS {
            if let Ok(d) = directive.parse() {
                filter = filter.add_directive(d);
            }
        }
        filter
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match log.format {
        portcullis::config::model::LogFormat::Json => builder.json().init(),
        portcullis::config::model::LogFormat::Text => builder.init(),
    }
}
