//! Pure policy: IP lists and entitlement rules. Nothing here knows about
//! pingora or sockets; every function takes facts and returns a verdict.

pub mod client_ip;
pub mod entitlements;
pub mod ip;
