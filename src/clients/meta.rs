//! What the IAM service knows about an API client, and the client's own rules.

use std::net::IpAddr;

use serde_json::Value;

use crate::error::GatewayError;
use crate::policy::ip::{parse_entry, IpList};

/// A client's IP filter (IBM Verify `ipFilterOp` / `ipFilters`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpFilter {
    /// `ipFilterOp` null or absent: no filter.
    Off,
    /// Only these addresses may use the client.
    Allow(IpList),
    /// These addresses may not.
    Deny(IpList),
}

impl IpFilter {
    /// Whether `ip` may use the client. An unknown address fails closed
    /// whenever a filter is set.
    pub fn permits(&self, ip: Option<IpAddr>) -> bool {
        match (self, ip) {
            (IpFilter::Off, _) => true,
            (_, None) => false,
            (IpFilter::Allow(list), Some(ip)) => list.contains(ip),
            (IpFilter::Deny(list), Some(ip)) => !list.contains(ip),
        }
    }
}

/// One API client's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMeta {
    /// The OAuth client id the token names.
    pub client_id: String,
    /// The service's record id (IBM Verify's `id`, distinct from `clientId`).
    pub id: Option<String>,
    pub enabled: bool,
    /// The entitlements currently granted to the client.
    pub entitlements: Vec<String>,
    pub ip_filter: IpFilter,
}

impl ClientMeta {
    /// Apply the client's own rules: enabled, then its IP filter.
    pub fn admit(&self, ip: Option<IpAddr>) -> Result<(), GatewayError> {
        if !self.enabled {
            return Err(GatewayError::ClientDisabled);
        }
        if !self.ip_filter.permits(ip) {
            return Err(GatewayError::ClientIpDenied);
        }
        Ok(())
    }

    /// The identifiers that name this client (for `deny_self` and invalidation).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.client_id.as_str()).chain(self.id.as_deref())
    }
}

/// JSON pointers to the fields of a client object in the source's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPointers {
    pub enabled: String,
    pub entitlements: String,
    pub ip_filter_op: String,
    pub ip_filters: String,
    pub id: String,
}

impl Default for FieldPointers {
    /// IBM Security Verify's API-client names.
    fn default() -> Self {
        FieldPointers {
            enabled: "/enabled".into(),
            entitlements: "/entitlements".into(),
            ip_filter_op: "/ipFilterOp".into(),
            ip_filters: "/ipFilters".into(),
            id: "/id".into(),
        }
    }
}

/// Read a client object. Anything that is not a valid client — wrong types,
/// an unknown `ipFilterOp`, a bad address in `ipFilters` — is an error, never
/// a permissive default.
pub fn from_json(client_id: &str, object: &Value, f: &FieldPointers) -> Result<ClientMeta, String> {
    if !object.is_object() {
        return Err("the client is not a JSON object".into());
    }
    let enabled = match object.pointer(&f.enabled) {
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(format!("{} is not a boolean", f.enabled)),
        None => return Err(format!("{} is missing", f.enabled)),
    };
    let entitlements = string_list(object.pointer(&f.entitlements), &f.entitlements)?;
    let filters = string_list(object.pointer(&f.ip_filters), &f.ip_filters)?;
    let parse_filters = || -> Result<IpList, String> {
        let mut nets = Vec::with_capacity(filters.len());
        for (i, entry) in filters.iter().enumerate() {
            nets.push(parse_entry(entry).map_err(|e| format!("{}/{i}: {e}", f.ip_filters))?);
        }
        Ok(IpList::new(nets))
    };
    let ip_filter = match object.pointer(&f.ip_filter_op) {
        None | Some(Value::Null) => IpFilter::Off,
        Some(Value::String(op)) if op == "allow" => IpFilter::Allow(parse_filters()?),
        Some(Value::String(op)) if op == "deny" => IpFilter::Deny(parse_filters()?),
        Some(_) => {
            return Err(format!(
                "{} is not \"allow\", \"deny\" or null",
                f.ip_filter_op
            ))
        }
    };
    let id = match object.pointer(&f.id) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err(format!("{} is not a string", f.id)),
    };
    Ok(ClientMeta {
        client_id: client_id.to_string(),
        id,
        enabled,
        entitlements,
        ip_filter,
    })
}

fn string_list(value: Option<&Value>, pointer: &str) -> Result<Vec<String>, String> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{pointer} holds a non-string"))
            })
            .collect(),
        Some(_) => Err(format!("{pointer} is not an array of strings")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn reads_an_ibm_verify_api_client() {
        let v = json!({
            "id": "rec-1", "clientId": "c1", "clientName": "ops", "enabled": true,
            "entitlements": ["readAPIClients"], "ipFilterOp": "allow",
            "ipFilters": ["10.0.0.0/8", "2001:db8::1"]
        });
        let m = from_json("c1", &v, &FieldPointers::default()).unwrap();
        assert_eq!(m.id.as_deref(), Some("rec-1"));
        assert_eq!(m.entitlements, vec!["readAPIClients"]);
        assert!(m.admit(ip("10.1.2.3")).is_ok());
        assert!(m.admit(ip("::ffff:10.1.2.3")).is_ok());
        assert_eq!(m.admit(ip("192.0.2.1")), Err(GatewayError::ClientIpDenied));
        assert_eq!(m.admit(None), Err(GatewayError::ClientIpDenied));
    }

    #[test]
    fn deny_filter_and_disabled() {
        let v = json!({"enabled": false, "ipFilterOp": "deny", "ipFilters": ["127.0.0.1"]});
        let m = from_json("c", &v, &FieldPointers::default()).unwrap();
        assert_eq!(m.admit(ip("10.0.0.1")), Err(GatewayError::ClientDisabled));
        let v = json!({"enabled": true, "ipFilterOp": "deny", "ipFilters": ["127.0.0.1"]});
        let m = from_json("c", &v, &FieldPointers::default()).unwrap();
        assert_eq!(m.admit(ip("127.0.0.1")), Err(GatewayError::ClientIpDenied));
        assert!(m.admit(ip("127.0.0.2")).is_ok());
        let v = json!({"enabled": true, "ipFilterOp": null, "ipFilters": ["nonsense"]});
        assert!(from_json("c", &v, &FieldPointers::default())
            .unwrap()
            .admit(None)
            .is_ok());
    }

    #[test]
    fn invalid_clients_are_errors_not_defaults() {
        let f = FieldPointers::default();
        for bad in [
            json!({}),
            json!({"enabled": "yes"}),
            json!({"enabled": true, "entitlements": "manageAPIClients"}),
            json!({"enabled": true, "entitlements": [1]}),
            json!({"enabled": true, "ipFilterOp": "allow", "ipFilters": ["10.0.0.0/33"]}),
            json!({"enabled": true, "ipFilterOp": "maybe"}),
            json!({"enabled": true, "id": {"x": 1}}),
            json!([1, 2]),
        ] {
            assert!(from_json("c", &bad, &f).is_err(), "{bad}");
        }
        // An allow filter with no entries admits nobody.
        let v = json!({"enabled": true, "ipFilterOp": "allow"});
        let m = from_json("c", &v, &f).unwrap();
        assert!(m.admit(ip("127.0.0.1")).is_err());
    }
}
