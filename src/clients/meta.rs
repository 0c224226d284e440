//! What the IAM service knows about an API client, and the client's own rules.

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::Value;

use crate::error::GatewayError;
use crate::policy::entitlement_sets::{self, EntitlementSet};
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

/// One API client's metadata. Compact, since up to `max_entries` of them
/// are cached: strings boxed to their length, the entitlement list shared
/// with every token and client holding the same one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMeta {
    /// The OAuth client id the token names (shared with the directory's
    /// cache key).
    pub client_id: Arc<str>,
    /// The service's record id (IBM Verify's `id`, distinct from `clientId`).
    pub id: Option<Box<str>>,
    pub enabled: bool,
    /// The entitlements currently granted to the client.
    pub entitlements: EntitlementSet,
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
        std::iter::once(&*self.client_id).chain(self.id.as_deref())
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
    /// Where the record names its OAuth client id; a record naming another
    /// client is refused. Empty: the source addresses the client by its
    /// URL alone and the record carries no client id.
    pub client_id: String,
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
            client_id: "/clientId".into(),
        }
    }
}

/// Read a client object. Anything that is not a valid client — wrong types,
/// an unknown `ipFilterOp`, a bad address in `ipFilters`, another client's
/// record — is an error, never a permissive default. One exception: a
/// record of this client that readably says `enabled: false` is a disabled
/// client whatever else is wrong with it, so a half-broken record can never
/// keep a disabled client alive.
pub fn from_json(client_id: &str, object: &Value, f: &FieldPointers) -> Result<ClientMeta, String> {
    if !object.is_object() {
        return Err("the client is not a JSON object".into());
    }
    if !f.client_id.is_empty() {
        match object.pointer(&f.client_id) {
            Some(Value::String(named)) if ids_equal(named, client_id, false) => {}
            Some(Value::String(_)) => return Err(format!("{} names another client", f.client_id)),
            Some(_) => return Err(format!("{} is not a string", f.client_id)),
            None => return Err(format!("{} is missing", f.client_id)),
        }
    }
    let enabled = match object.pointer(&f.enabled) {
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(format!("{} is not a boolean", f.enabled)),
        None => return Err(format!("{} is missing", f.enabled)),
    };
    if !enabled {
        return Ok(ClientMeta {
            client_id: client_id.into(),
            id: record_id(object, f).ok().flatten(),
            enabled: false,
            entitlements: entitlement_sets::intern(Vec::new()),
            ip_filter: IpFilter::Off,
        });
    }
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
    let id = record_id(object, f)?;
    Ok(ClientMeta {
        client_id: client_id.into(),
        id,
        enabled,
        entitlements: entitlement_sets::intern(entitlements),
        ip_filter,
    })
}

fn record_id(object: &Value, f: &FieldPointers) -> Result<Option<Box<str>>, String> {
    match object.pointer(&f.id) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str().into())),
        Some(Value::Number(n)) => Ok(Some(n.to_string().into())),
        Some(_) => Err(format!("{} is not a string", f.id)),
    }
}

/// Whether two client identifiers name the same client as the IAM service
/// compares them: exactly, or ignoring ASCII case when `case_insensitive`
/// or when both are UUIDs (RFC 9562 §4: UUIDs compare case-insensitively).
pub fn ids_equal(a: &str, b: &str, case_insensitive: bool) -> bool {
    a == b || ((case_insensitive || (is_uuid(a) && is_uuid(b))) && a.eq_ignore_ascii_case(b))
}

/// `8-4-4-4-12` hexadecimal digits.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
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
        assert_eq!(*m.entitlements, ["readAPIClients"]);
        assert!(m.admit(ip("10.1.2.3")).is_ok());
        assert!(m.admit(ip("::ffff:10.1.2.3")).is_ok());
        assert_eq!(m.admit(ip("192.0.2.1")), Err(GatewayError::ClientIpDenied));
        assert_eq!(m.admit(None), Err(GatewayError::ClientIpDenied));
    }

    #[test]
    fn deny_filter_and_disabled() {
        let f = FieldPointers::default();
        let v = json!({"clientId": "c", "enabled": false, "ipFilterOp": "deny", "ipFilters": ["127.0.0.1"]});
        let m = from_json("c", &v, &f).unwrap();
        assert_eq!(m.admit(ip("10.0.0.1")), Err(GatewayError::ClientDisabled));
        let v = json!({"clientId": "c", "enabled": true, "ipFilterOp": "deny", "ipFilters": ["127.0.0.1"]});
        let m = from_json("c", &v, &f).unwrap();
        assert_eq!(m.admit(ip("127.0.0.1")), Err(GatewayError::ClientIpDenied));
        assert!(m.admit(ip("127.0.0.2")).is_ok());
        let v = json!({"clientId": "c", "enabled": true, "ipFilterOp": null, "ipFilters": ["nonsense"]});
        assert!(from_json("c", &v, &f).unwrap().admit(None).is_ok());
    }

    #[test]
    fn a_readable_disabled_flag_wins_over_everything_else() {
        let f = FieldPointers::default();
        for v in [
            json!({"clientId": "c", "enabled": false, "ipFilters": ["10.1.2.3/8"], "ipFilterOp": "allow"}),
            json!({"clientId": "c", "enabled": false, "entitlements": "x", "ipFilterOp": "maybe"}),
            json!({"clientId": "c", "id": "r-1", "enabled": false, "id": {"x": 1}}),
        ] {
            let m = from_json("c", &v, &f).unwrap();
            assert!(!m.enabled, "{v}");
            assert_eq!(m.admit(ip("10.0.0.1")), Err(GatewayError::ClientDisabled));
        }
    }

    #[test]
    fn the_record_must_name_the_client_asked_for() {
        let f = FieldPointers::default();
        let other = json!({"clientId": "other", "enabled": true});
        assert!(from_json("c", &other, &f)
            .unwrap_err()
            .contains("another client"));
        // Even a disabled record of another client says nothing about this one.
        let other = json!({"clientId": "other", "enabled": false});
        assert!(from_json("c", &other, &f).is_err());
        assert!(from_json("c", &json!({"enabled": true}), &f).is_err());
        assert!(from_json("c", &json!({"clientId": 7, "enabled": true}), &f).is_err());
        // UUIDs compare case-insensitively; other ids exactly.
        let uuid = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let upper = json!({"clientId": uuid.to_uppercase(), "enabled": true});
        assert!(from_json(uuid, &upper, &f).is_ok());
        assert!(from_json("C", &json!({"clientId": "c", "enabled": true}), &f).is_err());
        // An empty pointer turns the check off (the URL alone names the client).
        let unchecked = FieldPointers {
            client_id: String::new(),
            ..FieldPointers::default()
        };
        assert!(from_json("c", &json!({"enabled": true}), &unchecked).is_ok());
    }

    #[test]
    fn invalid_clients_are_errors_not_defaults() {
        let f = FieldPointers::default();
        for bad in [
            json!({"clientId": "c"}),
            json!({"clientId": "c", "enabled": "yes"}),
            json!({"clientId": "c", "enabled": true, "entitlements": "manageAPIClients"}),
            json!({"clientId": "c", "enabled": true, "entitlements": [1]}),
            json!({"clientId": "c", "enabled": true, "ipFilterOp": "allow", "ipFilters": ["10.0.0.0/33"]}),
            json!({"clientId": "c", "enabled": true, "ipFilterOp": "allow", "ipFilters": ["10.1.2.3/8"]}),
            json!({"clientId": "c", "enabled": true, "ipFilterOp": "maybe"}),
            json!({"clientId": "c", "enabled": true, "id": {"x": 1}}),
            json!([1, 2]),
        ] {
            assert!(from_json("c", &bad, &f).is_err(), "{bad}");
        }
        // An allow filter with no entries admits nobody.
        let v = json!({"clientId": "c", "enabled": true, "ipFilterOp": "allow"});
        let m = from_json("c", &v, &f).unwrap();
        assert!(m.admit(ip("127.0.0.1")).is_err());
    }
}
