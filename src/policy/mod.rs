//! Pure policy: IP lists, entitlement rules, body rules, response redaction, route guards.
//! Nothing here knows about pingora or sockets; every function takes facts
//! and returns a verdict.

pub mod body;
pub mod catalog;
pub mod client_ip;
pub mod entitlement_sets;
pub mod entitlements;
pub mod ip;
pub mod redact;
pub mod route_guards;
