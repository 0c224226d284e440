//! VMware (Broadcom) Cloud Foundation identity providers (seed page 002).
//!
//! * `GET /v1/identity-providers` — `{"elements": [...]}`.
//! * `GET /v1/identity-providers/{id}` — the provider (passwords and client
//!   secrets left out).
//! * `PATCH /v1/identity-providers/{id}` — an `IdentityProviderSpec`
//!   (`application/json`): `name` and `type` required; `certChain`, `ldap`,
//!   `oidc`, `fedIdpSpec` optional and checked member by member, with the
//!   seed's enumerations (`ldap.type`: OpenLdap, ActiveDirectory;
//!   `fedIdpSpec.directory.federatedIdpSourceType`: OKTA,
//!   MICROSOFT_ENTRA_ID, PING_FEDERATE); the given members replace the
//!   provider's; 204 No content.
//! * `DELETE /v1/identity-providers/{id}` — 204.
//!
//! Errors: `{"errorCode", "errorType", "arguments", "message",
//! "remediationMessage", "referenceToken"}` (the seed's `Error`; `context`,
//! `causes` and `nestedErrors` are optional there and left out).

use std::collections::BTreeMap;

use http::Method;
use serde_json::{json, Map, Value};

use super::{allow_header, type_name, IamRequest, IamResponse};

pub const NOT_FOUND: &str = "IDENTITY_PROVIDER_NOT_FOUND";
pub const INVALID_SPEC: &str = "IDENTITY_PROVIDER_SPEC_INVALID";
pub const METHOD_NOT_ALLOWED: &str = "METHOD_NOT_ALLOWED";
pub const UNSUPPORTED_MEDIA_TYPE: &str = "UNSUPPORTED_MEDIA_TYPE";

/// The seeded Active Directory provider.
pub const CORP_AD_ID: &str = "d2c9e7a4-5b1f-4c3e-8a6d-7f0e1b2c3d01";
/// The seeded federated (Okta) provider.
pub const OKTA_ID: &str = "d2c9e7a4-5b1f-4c3e-8a6d-7f0e1b2c3d02";

/// The shape of one member of the spec.
enum Field {
    Str,
    StrArray,
    Int,
    Enum(&'static [&'static str]),
    Object(&'static [(&'static str, Field)]),
}

const SOURCE_DETAILS: &[(&str, Field)] = &[
    ("usersBaseDn", Field::Str),
    ("groupsBaseDn", Field::Str),
    ("certChain", Field::StrArray),
    ("serverEndpoints", Field::StrArray),
];

const LDAP: &[(&str, Field)] = &[
    ("type", Field::Enum(&["OpenLdap", "ActiveDirectory"])),
    ("domainName", Field::Str),
    ("domainAlias", Field::Str),
    ("username", Field::Str),
    ("password", Field::Str),
    ("sourceDetails", Field::Object(SOURCE_DETAILS)),
];

const OIDC: &[(&str, Field)] = &[
    ("clientId", Field::Str),
    ("clientSecret", Field::Str),
    ("discoveryEndpoint", Field::Str),
];

const DIRECTORY: &[(&str, Field)] = &[
    ("directoryId", Field::Str),
    ("name", Field::Str),
    ("defaultDomain", Field::Str),
    ("domains", Field::StrArray),
    (
        "federatedIdpSourceType",
        Field::Enum(&["OKTA", "MICROSOFT_ENTRA_ID", "PING_FEDERATE"]),
    ),
];

const FED_IDP_SPEC: &[(&str, Field)] = &[
    ("name", Field::Str),
    ("directory", Field::Object(DIRECTORY)),
    ("oidcSpec", Field::Object(OIDC)),
    ("syncClientTokenTTL", Field::Int),
];

/// `IdentityProviderSpec`.
const SPEC: &[(&str, Field)] = &[
    ("name", Field::Str),
    ("type", Field::Str),
    ("certChain", Field::StrArray),
    ("ldap", Field::Object(LDAP)),
    ("oidc", Field::Object(OIDC)),
    ("fedIdpSpec", Field::Object(FED_IDP_SPEC)),
];

/// Members never shown in answers.
const SECRETS: &[&str] = &[
    "/ldap/password",
    "/oidc/clientSecret",
    "/fedIdpSpec/oidcSpec/clientSecret",
];

fn check(value: &Value, field: &Field, at: &str) -> Result<(), String> {
    let wrong = |what: &str| Err(format!("{at} must be {what}, not {}", type_name(value)));
    match field {
        Field::Str if value.is_string() => Ok(()),
        Field::Str => wrong("a string"),
        Field::Int if value.as_u64().is_some() => Ok(()),
        Field::Int => wrong("a non-negative integer"),
        Field::StrArray => match value.as_array() {
            Some(items) => items
                .iter()
                .enumerate()
                .try_for_each(|(i, item)| check(item, &Field::Str, &format!("{at}[{i}]"))),
            None => wrong("an array of strings"),
        },
        Field::Enum(allowed) => match value.as_str() {
            Some(s) if allowed.contains(&s) => Ok(()),
            Some(s) => Err(format!("{at} {s:?} is not one of {}", allowed.join(", "))),
            None => wrong("a string"),
        },
        Field::Object(members) => {
            let Some(object) = value.as_object() else {
                return wrong("an object");
            };
            for (name, v) in object {
                let path = if at.is_empty() {
                    name.clone()
                } else {
                    format!("{at}.{name}")
                };
                match members.iter().find(|(n, _)| n == name) {
                    Some((_, f)) => check(v, f, &path)?,
                    None => {
                        return Err(format!("{path} is not a property of IdentityProviderSpec"))
                    }
                }
            }
            Ok(())
        }
    }
}

fn error(
    status: u16,
    code: &str,
    error_type: &str,
    arguments: &[&str],
    message: impl Into<String>,
    remediation: &str,
) -> IamResponse {
    IamResponse::json(
        status,
        &json!({
            "errorCode": code,
            "errorType": error_type,
            "arguments": arguments,
            "message": message.into(),
            "remediationMessage": remediation,
            "referenceToken": super::random_hex(3).to_uppercase(),
        }),
    )
}

fn not_found(id: &str) -> IamResponse {
    error(
        404,
        NOT_FOUND,
        "NOT_FOUND",
        &[id],
        format!("Identity Provider with id {id} not found"),
        "Check the id with GET /v1/identity-providers",
    )
}

fn invalid(message: impl Into<String>) -> IamResponse {
    error(
        400,
        INVALID_SPEC,
        "VALIDATION",
        &[],
        message,
        "Correct the IdentityProviderSpec and retry",
    )
}

fn method_not_allowed(allowed: &[Method]) -> IamResponse {
    error(
        405,
        METHOD_NOT_ALLOWED,
        "CLIENT",
        &[],
        "The HTTP method is not supported for this resource",
        "Use one of the methods in the Allow header",
    )
    .with_header("allow", &allow_header(allowed))
}

/// A provider as answered: without secrets.
fn public_view(provider: &Map<String, Value>) -> Value {
    let mut v = Value::Object(provider.clone());
    for pointer in SECRETS {
        if let Some((parent, name)) = pointer.rsplit_once('/') {
            if let Some(Value::Object(o)) = v.pointer_mut(parent) {
                o.remove(name);
            }
        }
    }
    v
}

/// The identity-provider store.
pub struct IdentityProviders {
    by_id: BTreeMap<String, Map<String, Value>>,
}

impl IdentityProviders {
    /// An Active Directory provider and a federated Okta one.
    pub fn seeded() -> IdentityProviders {
        let mut by_id = BTreeMap::new();
        let seeds = [
            json!({
                "id": CORP_AD_ID,
                "name": "corp-ad",
                "type": "Embedded",
                "status": "ACTIVE",
                "ldap": {
                    "type": "ActiveDirectory",
                    "domainName": "corp.example.com",
                    "domainAlias": "CORP",
                    "username": "svc-vcf@corp.example.com",
                    "password": super::random_hex(16),
                    "sourceDetails": {
                        "usersBaseDn": "OU=Users,DC=corp,DC=example,DC=com",
                        "groupsBaseDn": "OU=Groups,DC=corp,DC=example,DC=com",
                        "certChain": [],
                        "serverEndpoints": ["ldaps://dc1.corp.example.com:636"]
                    }
                }
            }),
            json!({
                "id": OKTA_ID,
                "name": "okta-broker",
                "type": "External",
                "status": "ACTIVE",
                "fedIdpSpec": {
                    "name": "okta",
                    "directory": {
                        "directoryId": "okta-dir-1",
                        "name": "Okta",
                        "defaultDomain": "example.com",
                        "domains": ["example.com"],
                        "federatedIdpSourceType": "OKTA"
                    },
                    "oidcSpec": {
                        "clientId": "0oa1demo",
                        "clientSecret": super::random_hex(16),
                        "discoveryEndpoint": "https://example.okta.com/.well-known/openid-configuration"
                    },
                    "syncClientTokenTTL": 86400
                }
            }),
        ];
        for seed in seeds {
            if let Value::Object(o) = seed {
                let id = o
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                by_id.insert(id, o);
            }
        }
        IdentityProviders { by_id }
    }

    pub fn get(&self, id: &str) -> Option<&Map<String, Value>> {
        self.by_id.get(id)
    }

    /// Answers a request under `/v1/identity-providers`.
    pub fn handle(&mut self, req: &IamRequest, rest: &[&str]) -> IamResponse {
        match rest {
            [] => match req.method {
                Method::GET => {
                    let all: Vec<Value> = self.by_id.values().map(public_view).collect();
                    IamResponse::json(200, &json!({ "elements": all }))
                }
                // Creating providers is not part of the demo.
                _ => method_not_allowed(&[Method::GET]),
            },
            [id] if !id.is_empty() => match req.method {
                Method::GET => match self.by_id.get(*id) {
                    Some(p) => IamResponse::json(200, &public_view(p)),
                    None => not_found(id),
                },
                Method::PATCH => self.update(req, id),
                Method::DELETE => match self.by_id.remove(*id) {
                    Some(_) => IamResponse::empty(204),
                    None => not_found(id),
                },
                _ => method_not_allowed(&[Method::GET, Method::PATCH, Method::DELETE]),
            },
            _ => error(
                404,
                "RESOURCE_NOT_FOUND",
                "NOT_FOUND",
                &[],
                "The requested resource does not exist",
                "Check the URL",
            ),
        }
    }

    fn update(&mut self, req: &IamRequest, id: &str) -> IamResponse {
        let Some(existing) = self.by_id.get(id) else {
            return not_found(id);
        };
        if !req.is_json() {
            return error(
                415,
                UNSUPPORTED_MEDIA_TYPE,
                "CLIENT",
                &[],
                "The request body must be application/json",
                "Send an IdentityProviderSpec as application/json",
            );
        }
        let spec = match req.json_object() {
            Ok(s) => s,
            Err(e) => return invalid(e),
        };
        if let Err(e) = check(&Value::Object(spec.clone()), &Field::Object(SPEC), "") {
            return invalid(e);
        }
        for required in ["name", "type"] {
            if spec
                .get(required)
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return invalid(format!("{required} is required"));
            }
        }
        let mut updated = existing.clone();
        for (name, value) in spec {
            updated.insert(name, value);
        }
        self.by_id.insert(id.to_string(), updated);
        IamResponse::empty(204)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(id: &str, body: Value) -> IamRequest {
        IamRequest::new(Method::PATCH, &format!("/v1/identity-providers/{id}")).with_json(&body)
    }

    fn handle(p: &mut IdentityProviders, req: &IamRequest) -> IamResponse {
        let rest: Vec<&str> = req
            .path
            .trim_start_matches("/v1/identity-providers")
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        p.handle(req, &rest)
    }

    #[track_caller]
    fn assert_error(r: &IamResponse, status: u16, code: &str) {
        assert_eq!(r.status, status, "{:?}", r.body_json());
        let body = r.body_json();
        assert_eq!(body["errorCode"], code, "{body}");
        for member in [
            "errorType",
            "message",
            "remediationMessage",
            "referenceToken",
        ] {
            assert!(body[member].is_string(), "{member} in {body}");
        }
        assert!(body["arguments"].is_array(), "{body}");
    }

    #[test]
    fn patch_updates_and_answers_204() {
        let mut p = IdentityProviders::seeded();
        let r = handle(
            &mut p,
            &patch(
                CORP_AD_ID,
                json!({
                    "name": "corp-ad",
                    "type": "Embedded",
                    "ldap": {"type": "OpenLdap", "domainName": "corp.example.com",
                             "sourceDetails": {"serverEndpoints": ["ldaps://dc2:636"]}}
                }),
            ),
        );
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
        let got = handle(
            &mut p,
            &IamRequest::new(Method::GET, &format!("/v1/identity-providers/{CORP_AD_ID}")),
        );
        assert_eq!(
            got.body_json().pointer("/ldap/type"),
            Some(&json!("OpenLdap"))
        );
        // The Okta provider's secret never shows.
        let list = handle(
            &mut p,
            &IamRequest::new(Method::GET, "/v1/identity-providers"),
        );
        let text = String::from_utf8_lossy(&list.body).to_string();
        assert!(
            text.contains("okta-broker") && !text.contains("clientSecret"),
            "{text}"
        );
    }

    #[test]
    fn patch_refuses_what_the_spec_does_not_allow() {
        let mut p = IdentityProviders::seeded();
        let cases = [
            json!({"type": "Embedded"}),
            json!({"name": "x"}),
            json!({"name": "x", "type": "Embedded", "ldap": {"type": "Novell"}}),
            json!({"name": "x", "type": "Embedded", "fedIdpSpec": {"directory": {"federatedIdpSourceType": "ADFS"}}}),
            json!({"name": "x", "type": "Embedded", "fedIdpSpec": {"syncClientTokenTTL": -1}}),
            json!({"name": "x", "type": "Embedded", "certChain": "pem"}),
            json!({"name": "x", "type": "Embedded", "ldap": {"port": 636}}),
            json!({"name": "x", "type": "Embedded", "owner": "me"}),
        ];
        for body in cases {
            assert_error(&handle(&mut p, &patch(CORP_AD_ID, body)), 400, INVALID_SPEC);
        }
        assert_error(
            &handle(&mut p, &patch("nope", json!({"name": "x", "type": "y"}))),
            404,
            NOT_FOUND,
        );
        let r = handle(
            &mut p,
            &IamRequest::new(
                Method::PATCH,
                &format!("/v1/identity-providers/{CORP_AD_ID}"),
            )
            .with_body("text/plain", b"{}"),
        );
        assert_error(&r, 415, UNSUPPORTED_MEDIA_TYPE);
        let r = handle(
            &mut p,
            &IamRequest::new(Method::PUT, &format!("/v1/identity-providers/{CORP_AD_ID}")),
        );
        assert_error(&r, 405, METHOD_NOT_ALLOWED);
        assert_eq!(r.header("allow"), Some("GET, PATCH, DELETE"));
        assert_eq!(
            p.get(CORP_AD_ID).map(|o| o["name"].clone()),
            Some(json!("corp-ad"))
        );
    }

    #[test]
    fn delete_then_404() {
        let mut p = IdentityProviders::seeded();
        let del = IamRequest::new(Method::DELETE, &format!("/v1/identity-providers/{OKTA_ID}"));
        assert_eq!(handle(&mut p, &del).status, 204);
        assert_error(&handle(&mut p, &del), 404, NOT_FOUND);
    }
}
