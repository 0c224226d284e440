//! Route rules that guard updates without reading a body: `deny_self` and
//! `pin_headers`.

use http::{HeaderMap, HeaderName};
use serde_json::{Map, Value};

use crate::clients::meta::ids_equal;
use crate::config::model::PinHeader;
use crate::error::{BodyRefusal, GatewayError};

/// `deny_self`: refuse when the path parameter names the caller itself —
/// by its client id or by any other identifier its metadata gives it
/// (IBM Verify's record `id` differs from the OAuth client id).
pub fn deny_self(
    param_name: &str,
    param_value: Option<&str>,
    caller_ids: &[&str],
    case_insensitive: bool,
) -> Result<(), GatewayError> {
    let Some(value) = param_value else {
        return Ok(());
    };
    let decoded = percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .ok();
    let same = |id: &str| {
        ids_equal(id, value, case_insensitive)
            || decoded
                .as_deref()
                .is_some_and(|d| ids_equal(id, d, case_insensitive))
    };
    let is_self = caller_ids.iter().any(|id| !id.is_empty() && same(id));
    if is_self {
        return Err(GatewayError::BodyRule(BodyRefusal {
            code: "self_modification",
            rule: "deny_self",
            pointer: format!("{{{param_name}}}"),
            status: 403,
            message: "a client cannot change or delete itself".into(),
        }));
    }
    Ok(())
}

/// `pin_headers`: each pinned header the client sent must equal its token
/// claim. Returns every pinned header with its claim value: the gateway sets
/// them all upstream, after hop-by-hop stripping, so what the upstream sees
/// never depends on the client having sent them.
pub fn check_pins(
    pins: &[PinHeader],
    headers: &HeaderMap,
    claims: &Map<String, Value>,
) -> Result<Vec<(HeaderName, String)>, GatewayError> {
    let mut to_set = Vec::new();
    for pin in pins {
        let refuse = |message: &str| {
            GatewayError::BodyRule(BodyRefusal {
                code: "pinned_header_mismatch",
                rule: "pin_headers",
                pointer: pin.header.as_str().to_string(),
                status: 403,
                message: message.to_string(),
            })
        };
        let Some(claim) = claim_text(claims, &pin.claim) else {
            return Err(refuse("the token has no claim this header is pinned to"));
        };
        let mut values = headers.get_all(&pin.header).iter();
        match (values.next(), values.next()) {
            (None, _) => {}
            (Some(v), None) if v.as_bytes() == claim.as_bytes() => {}
            (Some(_), None) => return Err(refuse("the header does not match the token")),
            (Some(_), Some(_)) => return Err(refuse("the header is sent more than once")),
        }
        to_set.push((pin.header.clone(), claim));
    }
    Ok(to_set)
}

/// A claim (dotted path) as text: strings as they are, numbers in JSON form.
pub fn claim_text(claims: &Map<String, Value>, path: &[String]) -> Option<String> {
    let (first, rest) = path.split_first()?;
    let mut value = claims.get(first)?;
    for segment in rest {
        value = value.as_object()?.get(segment)?;
    }
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(header: &str, claim: &str) -> PinHeader {
        PinHeader {
            header: HeaderName::from_bytes(header.as_bytes()).unwrap(),
            claim: claim.split('.').map(str::to_string).collect(),
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn deny_self_matches_client_id_or_record_id() {
        assert!(deny_self("id", Some("rec-1"), &["client-a", "rec-1"], false).is_err());
        assert!(deny_self("id", Some("client-a"), &["client-a", "rec-1"], false).is_err());
        assert!(deny_self("id", Some("client%2Da"), &["client-a"], false).is_err());
        assert!(deny_self("id", Some("other"), &["client-a", "rec-1"], false).is_ok());
        assert!(deny_self("id", Some(""), &[""], false).is_ok());
        // UUIDs compare case-insensitively; other ids only when the route says so.
        let uuid = "0f8fad5b-d9cb-469f-a165-70867728950e";
        assert!(deny_self("id", Some(&uuid.to_uppercase()), &[uuid], false).is_err());
        assert!(deny_self("id", Some("REC-1"), &["rec-1"], false).is_ok());
        assert!(deny_self("id", Some("REC-1"), &["rec-1"], true).is_err());
        assert!(deny_self("id", Some("%52EC-1"), &["rec-1"], true).is_err());
        let err = deny_self("id", Some("rec-1"), &["rec-1"], false).unwrap_err();
        assert_eq!(err.status(), 403);
        assert_eq!(err.code(), "self_modification");
    }

    #[test]
    fn pins_match_set_or_refuse() {
        let pins = [pin("slashid-orgid", "oid")];
        let c = claims(serde_json::json!({"oid": "org-1"}));
        let mut h = HeaderMap::new();
        assert_eq!(
            check_pins(&pins, &h, &c).unwrap(),
            vec![(
                HeaderName::from_static("slashid-orgid"),
                "org-1".to_string()
            )]
        );
        h.insert("slashid-orgid", "org-1".parse().unwrap());
        // Sent and matching: still set from the claim.
        assert_eq!(check_pins(&pins, &h, &c).unwrap().len(), 1);
        h.insert("slashid-orgid", "org-2".parse().unwrap());
        assert_eq!(
            check_pins(&pins, &h, &c).unwrap_err().code(),
            "pinned_header_mismatch"
        );
        h.append("slashid-orgid", "org-1".parse().unwrap());
        assert!(check_pins(&pins, &h, &c).is_err());
        let no_claim = claims(serde_json::json!({"sub": "x"}));
        assert!(check_pins(&pins, &HeaderMap::new(), &no_claim).is_err());
    }

    #[test]
    fn claim_text_follows_dotted_paths() {
        let c = claims(serde_json::json!({"a": {"b": "x", "n": 7}, "arr": [1]}));
        assert_eq!(claim_text(&c, &["a".into(), "b".into()]), Some("x".into()));
        assert_eq!(claim_text(&c, &["a".into(), "n".into()]), Some("7".into()));
        assert_eq!(claim_text(&c, &["arr".into()]), None);
        assert_eq!(claim_text(&c, &["missing".into()]), None);
    }
}
