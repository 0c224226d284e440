//! Portcullis: an authenticating reverse proxy for IAM admin APIs.
//!
//! The library holds everything; `main.rs` is a thin CLI over it. Pure
//! policy (`routing`, `auth`, `policy`) knows nothing of pingora; `proxy`
//! wires it into pingora's phases.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod audit;
pub mod auth;
pub mod clients;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod edge;
pub mod error;
pub mod explain;
pub mod metrics;
pub mod mint;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod quota;
pub mod reload;
pub mod routing;
pub mod server;
pub mod shutdown;
pub mod timer;
