//! Configuration in three stages: [`raw`] (serde, mirrors the file) →
//! [`validate`] (collects every error with its key path) → [`model`] (typed,
//! what the runtime uses). `portcullis check` runs exactly this.

pub mod model;
mod quotas;
pub mod raw;
pub mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use model::{Config, UnsetSecret};

/// How validation treats a secret (`*_env` key) whose environment variable
/// is missing or empty. Files a config names (catalogues, JWKS files, TLS
/// certificates) are errors when unreadable in either mode: they ship with
/// the config; secrets are provided where it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EnvMode {
    /// An error naming the variable: `run`, reloads, `check --require-env`.
    #[default]
    Strict,
    /// Validate the config, not the environment (`check`, `explain`): each
    /// such secret is listed in [`Config::unset_secrets`] and a random
    /// placeholder stands in for it, so the rest of the file validates
    /// exactly as in strict mode. [`Config::ensure_servable`] refuses such a
    /// config.
    Structural,
}

/// A successfully loaded configuration and the warnings found on the way.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// One problem in the file, located by its key path (`routes[3].require_all[1]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

/// Every problem found in one file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if e.path.is_empty() {
                write!(f, "{}: {}", self.file.display(), e.message)?;
            } else {
                write!(f, "{}: {}: {}", self.file.display(), e.path, e.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Read and validate a config file, its secrets included ([`EnvMode::Strict`]).
pub fn load_file(path: &Path) -> Result<Loaded, ConfigErrors> {
    load_file_with(path, EnvMode::Strict)
}

/// Read and validate a config file in the given [`EnvMode`].
pub fn load_file_with(path: &Path, mode: EnvMode) -> Result<Loaded, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => load_str_with(&text, path, mode),
        Err(e) => Err(ConfigErrors {
            file: path.to_path_buf(),
            errors: vec![ConfigError {
                path: String::new(),
                message: format!("cannot read the file: {e}"),
            }],
        }),
    }
}

/// Validate config text, its secrets included ([`EnvMode::Strict`]).
/// `origin` names the file in messages and anchors relative paths (key
/// files, JWKS files) at its directory.
pub fn load_str(text: &str, origin: &Path) -> Result<Loaded, ConfigErrors> {
    load_str_with(text, origin, EnvMode::Strict)
}

/// Validate config text in the given [`EnvMode`].
pub fn load_str_with(text: &str, origin: &Path, mode: EnvMode) -> Result<Loaded, ConfigErrors> {
    validate::validate(text, origin, mode).map_err(|errors| ConfigErrors {
        file: origin.to_path_buf(),
        errors,
    })
}
