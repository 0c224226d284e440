//! Step 4 of a request: who is calling.
//!
//! * [`bearer`] takes the token out of `Authorization: Bearer ...`;
//! * [`verifier`] checks a JWT against the configured issuers — strictly:
//!   duplicate JSON members, `alg: none`, HS* with an asymmetric key, unknown
//!   `crit`, keys named by the token (`jwk`, `jku`, `x5u`, `x5c`) and a
//!   missing `exp` are all refused;
//! * [`keys`] holds each issuer's verification keys as an immutable
//!   [`KeySet`] snapshot swapped atomically;
//! * [`jwks`] refreshes the keys of `jwks_url` issuers in the background and
//!   refetches, throttled and single-flight, when a token names an unknown
//!   `kid`; the last good set survives a failing or empty answer;
//! * [`strict_json`] is the JSON object parser that refuses duplicate names;
//! * [`introspection`] checks opaque tokens by RFC 7662 introspection and
//!   caches the answers (single-flight per token);
//! * [`token_cache`] remembers verified tokens (by digest) so a signature is
//!   checked once per cache lifetime.
//!
//! Nothing here knows about pingora. Errors are [`crate::error::GatewayError`]s
//! whose messages never contain a token, key or secret.

pub mod bearer;
pub mod introspection;
pub mod jwks;
pub mod keys;
pub mod strict_json;
pub mod token_cache;
pub mod verifier;

#[cfg(test)]
mod tests;

pub use bearer::bearer_token;
pub use jwks::{JwksRefresher, RefetchOutcome};
pub use keys::{IssuerKeys, KeySet};
pub use token_cache::TokenCacheSettings;
pub use verifier::{entitlements_from_claims, looks_like_jwt, VerifiedToken, Verifier};
