//! The route's entitlement requirements against what the caller holds.

use crate::error::GatewayError;

/// A route's `require_all` / `require_any`, prepared once per config load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirement {
    pub all: Vec<String>,
    pub any: Vec<String>,
    /// Space-separated list of everything required, for the `scope`
    /// attribute of `WWW-Authenticate` (RFC 6750 §3).
    scope: String,
}

impl Requirement {
    pub fn new(all: Vec<String>, any: Vec<String>) -> Requirement {
        let scope = all
            .iter()
            .chain(any.iter())
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" ");
        Requirement { all, any, scope }
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty() && self.any.is_empty()
    }

    /// Check the caller's effective entitlements. Names compare exactly
    /// (IBM Verify entitlement names are case-sensitive).
    pub fn check<S: AsRef<str>>(&self, held: &[S]) -> Result<(), GatewayError> {
        let holds = |name: &str| held.iter().any(|h| h.as_ref() == name);
        let mut missing: Vec<&str> = self
            .all
            .iter()
            .map(String::as_str)
            .filter(|n| !holds(n))
            .collect();
        let any_ok = self.any.is_empty() || self.any.iter().any(|n| holds(n));
        if !any_ok {
            missing.push("one of the require_any entitlements");
        }
        if missing.is_empty() {
            return Ok(());
        }
        let mut text = missing.join(", ");
        if !any_ok {
            text = format!("{text} ({})", self.any.join(" | "));
        }
        Err(GatewayError::InsufficientEntitlements {
            required: self.scope.clone(),
            missing: text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(all: &[&str], any: &[&str]) -> Requirement {
        Requirement::new(
            all.iter().map(|s| s.to_string()).collect(),
            any.iter().map(|s| s.to_string()).collect(),
        )
    }

    #[test]
    fn require_all_needs_every_name() {
        let r = req(&["manageAPIClients", "readAPIClients"], &[]);
        assert!(r
            .check(&["readAPIClients", "manageAPIClients", "x"])
            .is_ok());
        let err = r.check(&["readAPIClients"]).unwrap_err();
        match err {
            GatewayError::InsufficientEntitlements { required, missing } => {
                assert_eq!(required, "manageAPIClients readAPIClients");
                assert_eq!(missing, "manageAPIClients");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn require_any_needs_one_name() {
        let r = req(&[], &["readAPIClients", "manageAPIClients"]);
        assert!(r.check(&["manageAPIClients"]).is_ok());
        assert!(r.check(&["readUsers"]).is_err());
        assert!(r.check::<&str>(&[]).is_err());
    }

    #[test]
    fn names_compare_exactly() {
        let r = req(&["manageAPIClients"], &[]);
        assert!(r.check(&["manageapiclients"]).is_err());
        assert!(r.check(&["manageAPIClients "]).is_err());
    }

    #[test]
    fn empty_requirement_allows_anyone_authenticated() {
        assert!(req(&[], &[]).check::<&str>(&[]).is_ok());
    }
}
