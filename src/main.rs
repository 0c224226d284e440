//! `portcullis` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    },
    /// Validate a config file: exit 0, or print every error and exit 64.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match portcullis::config::load_file(&config) {
            Ok(loaded) => {
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
        Command::Run { config } => {
            init_logging();
            let loaded = match portcullis::config::load_file(&config) {
                Ok(l) => l,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(EXIT_BAD_CONFIG);
                }
            };
            for w in &loaded.warnings {
                tracing::warn!("{}: {w}", config.display());
            }
            match portcullis::server::run_forever(loaded.config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}
