//! Config loading: TOML text → `config::load_str` (parse, validate, build
//! the typed model), then `GatewayState::build` for a config that passed,
//! as the server does at start and on reload. Relative paths resolve in the
//! repository's `config/` directory (so the shipped catalogue is found);
//! nothing is written and nothing is started.
//!
//! Invariants: no panic; a refused config names at least one error, each
//! with a message; loading is deterministic (the same text gives the same
//! errors); an accepted config has listeners that parse as socket
//! addresses, routes that name existing upstreams and issuers, and a body
//! policy limit within `server.max_body_bytes`, and it builds a gateway
//! state.

#![no_main]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use portcullis::config::{load_str, ConfigError};
use portcullis::proxy::state::GatewayState;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let origin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/fuzz.toml");
    let loaded = match load_str(text, &origin) {
        Err(errors) => {
            assert!(!errors.errors.is_empty(), "refused without an error");
            assert!(errors.errors.iter().all(|e| !e.message.is_empty()));
            let again = load_str(text, &origin).expect_err("second load accepted");
            let sorted = |mut v: Vec<ConfigError>| {
                v.sort_by(|a, b| (&a.path, &a.message).cmp(&(&b.path, &b.message)));
                v
            };
            assert_eq!(
                sorted(errors.errors),
                sorted(again.errors),
                "errors differ between two loads"
            );
            return;
        }
        Ok(loaded) => loaded,
    };
    let config = loaded.config;
    assert!(!config.server.listen.is_empty());
    for addr in &config.server.listen {
        assert!(addr.parse::<SocketAddr>().is_ok(), "listen {addr:?}");
    }
    assert!(config.admin.listen.parse::<SocketAddr>().is_ok());
    for route in &config.routes {
        assert!(route.upstream < config.upstreams.len());
        assert!(route.issuers.iter().all(|&i| i < config.issuers.len()));
        if let Some(body) = &route.body {
            assert!(body.max_bytes <= config.server.max_body_bytes);
        }
    }
    let _state = GatewayState::build(Arc::new(config), None);
});
