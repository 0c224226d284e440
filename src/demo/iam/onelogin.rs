//! OneLogin apps (seed page 004).
//!
//! * `GET /api/2/apps/{id}` — the app.
//! * `PUT /api/2/apps/{id}` — a partial update (`Content-Type:
//!   application/json` required): only the attributes in the body change;
//!   `configuration` and `parameters` are merged key by key (a parameter
//!   the app lacks is added, as the seed describes for connectors that allow
//!   new parameters); `policy_id` must name an existing policy (422, the
//!   seed's example); `connector_id` and `id` cannot change, `auth_method`,
//!   `icon_url`, `sso`, `created_at` and `updated_at` are read-only (422);
//!   any other unknown attribute is 422; 200 with the full app.
//!
//! `{id}` is an integer; anything else, or an unknown app, is 404.
//! Errors: `{"message": "...", "statusCode": STATUS, "name": "...Error"}`.

use std::collections::BTreeMap;
use std::time::SystemTime;

use http::Method;
use serde_json::{json, Map, Value};

use super::{allow_header, type_name, IamRequest, IamResponse};

/// The seed page's sample OpenId Connect app.
pub const OIDC_APP_ID: u64 = 928549;
/// Its connector.
pub const OIDC_CONNECTOR_ID: u64 = 108419;
/// A SAML app.
pub const SAML_APP_ID: u64 = 928550;
/// The policies that exist (the seed sample's, and one more).
pub const POLICY_IDS: &[u64] = &[165278, 165279];

fn error(status: u16, name: &str, message: impl Into<String>) -> IamResponse {
    IamResponse::json(
        status,
        &json!({"message": message.into(), "statusCode": status, "name": name}),
    )
}

fn unprocessable(message: impl Into<String>) -> IamResponse {
    error(
        422,
        "UnprocessableEntityError",
        format!("Validation failed: {}", message.into()),
    )
}

fn not_found() -> IamResponse {
    error(404, "NotFoundError", "Not Found")
}

/// Now as an RFC 3339 UTC timestamp (the audit log's format).
fn timestamp_now() -> String {
    crate::audit::rfc3339(SystemTime::now())
}

/// The apps store.
pub struct Apps {
    by_id: BTreeMap<u64, Map<String, Value>>,
}

impl Apps {
    /// The seed page's sample OIDC app and a SAML app.
    pub fn seeded() -> Apps {
        let mut by_id = BTreeMap::new();
        let apps = [
            json!({
                "id": OIDC_APP_ID,
                "name": "Sample OpenId Connect App",
                "visible": true,
                "description": "",
                "notes": null,
                "icon_url": "/images/missing_connector_icon/square/old_original.png",
                "auth_method": 8,
                "policy_id": 165278,
                "provisioning": {"enabled": false},
                "allow_assumed_signin": false,
                "tab_id": null,
                "connector_id": OIDC_CONNECTOR_ID,
                "sso": {
                    "client_secret": super::random_hex(32),
                    "client_id": "b5dee2e0-5cbf-0137-6e19-12c80e5197ec92920"
                },
                "configuration": {
                    "redirect_uri": "http://example.com/callback",
                    "refresh_token_expiration_minutes": 60,
                    "login_url": "http://example.com/login",
                    "oidc_encryption_key": "",
                    "oidc_application_type": 0,
                    "token_endpoint_auth_method": 0,
                    "access_token_expiration_minutes": 5
                },
                "created_at": "2019-05-19T23:56:57Z",
                "updated_at": "2019-05-19T23:56:57Z",
                "parameters": {
                    "groups": {
                        "values": null,
                        "user_attribute_mappings": null,
                        "provisioned_entitlements": false,
                        "skip_if_blank": false,
                        "id": 237825,
                        "default_values": null,
                        "attributes_transformations": null,
                        "label": "Groups",
                        "user_attribute_macros": null,
                        "include_in_saml_assertion": true
                    }
                }
            }),
            json!({
                "id": SAML_APP_ID,
                "name": "Expenses (SAML)",
                "visible": false,
                "description": "Expense reporting",
                "notes": null,
                "icon_url": "/images/missing_connector_icon/square/old_original.png",
                "auth_method": 2,
                "policy_id": 165279,
                "provisioning": {"enabled": false},
                "allow_assumed_signin": false,
                "tab_id": null,
                "connector_id": 110016,
                "sso": {"metadata_url": "https://example.onelogin.com/saml/metadata/1"},
                "configuration": {"signature_algorithm": "SHA-256"},
                "created_at": "2021-03-02T10:00:00Z",
                "updated_at": "2021-03-02T10:00:00Z",
                "parameters": {}
            }),
        ];
        for app in apps {
            if let (Some(id), Value::Object(o)) = (app["id"].as_u64(), app) {
                by_id.insert(id, o);
            }
        }
        Apps { by_id }
    }

    pub fn get(&self, id: u64) -> Option<&Map<String, Value>> {
        self.by_id.get(&id)
    }

    /// Answers a request under `/api/2/apps`.
    pub fn handle(&mut self, req: &IamRequest, rest: &[&str]) -> IamResponse {
        let [id] = rest else {
            return not_found();
        };
        let allowed = [Method::GET, Method::PUT];
        if !allowed.contains(&req.method) {
            return error(405, "MethodNotAllowedError", "Method Not Allowed")
                .with_header("allow", &allow_header(&allowed));
        }
        let Some(id) = id
            .parse::<u64>()
            .ok()
            .filter(|id| self.by_id.contains_key(id))
        else {
            return not_found();
        };
        match req.method {
            Method::GET => match self.by_id.get(&id) {
                Some(app) => IamResponse::json(200, &Value::Object(app.clone())),
                None => not_found(),
            },
            _ => self.update(req, id),
        }
    }

    fn update(&mut self, req: &IamRequest, id: u64) -> IamResponse {
        if !req.is_json() {
            return error(
                400,
                "BadRequestError",
                "Content-Type must be application/json",
            );
        }
        let body = match req.json_object() {
            Ok(b) => b,
            Err(e) => return error(400, "BadRequestError", e),
        };
        let Some(app) = self.by_id.get(&id) else {
            return not_found();
        };
        if let Err(message) = check(app, &body) {
            return unprocessable(message);
        }
        let mut updated = app.clone();
        for (name, value) in body {
            match (name.as_str(), updated.get_mut(&name), value) {
                (
                    "configuration" | "parameters",
                    Some(Value::Object(current)),
                    Value::Object(given),
                ) => {
                    for (k, v) in given {
                        current.insert(k, v);
                    }
                }
                (_, _, value) => {
                    updated.insert(name, value);
                }
            }
        }
        updated.insert("updated_at".into(), json!(timestamp_now()));
        self.by_id.insert(id, updated.clone());
        IamResponse::json(200, &Value::Object(updated))
    }
}

/// Validates a partial update of `app`.
fn check(app: &Map<String, Value>, body: &Map<String, Value>) -> Result<(), String> {
    for (name, value) in body {
        let wrong = |what: &str| Err(format!("{name} must be {what}, not {}", type_name(value)));
        match name.as_str() {
            "name" => {
                if value.as_str().is_none_or(|s| s.trim().is_empty()) {
                    return wrong("a non-empty string");
                }
            }
            "visible" | "allow_assumed_signin" => {
                if !value.is_boolean() {
                    return wrong("a boolean");
                }
            }
            "description" | "notes" => {
                if !(value.is_string() || value.is_null()) {
                    return wrong("a string");
                }
            }
            "tab_id" | "brand_id" => {
                if !(value.is_u64() || value.is_null()) {
                    return wrong("an integer");
                }
            }
            "role_ids" => {
                if !value
                    .as_array()
                    .is_some_and(|a| a.iter().all(Value::is_u64))
                {
                    return wrong("an array of integers");
                }
            }
            "policy_id" => match value.as_u64() {
                Some(p) if POLICY_IDS.contains(&p) => {}
                Some(p) => {
                    return Err(format!(
                        "The associated Policy with ID {p} could not be found"
                    ))
                }
                None => return wrong("an integer"),
            },
            "provisioning" => {
                let ok = value
                    .as_object()
                    .is_some_and(|o| o.iter().all(|(k, v)| k == "enabled" && v.is_boolean()));
                if !ok {
                    return Err("provisioning must be {\"enabled\": true|false}".into());
                }
            }
            "configuration" => {
                if !value.is_object() {
                    return wrong("an object");
                }
            }
            "parameters" => {
                let Some(params) = value.as_object() else {
                    return wrong("an object");
                };
                if let Some((p, _)) = params.iter().find(|(_, v)| !v.is_object()) {
                    return Err(format!("parameters.{p} must be an object"));
                }
            }
            "id" | "connector_id" => {
                if value != app.get(name).unwrap_or(&Value::Null) {
                    return Err(format!("{name} cannot be changed"));
                }
            }
            "auth_method" | "icon_url" | "sso" | "created_at" | "updated_at" => {
                return Err(format!("{name} is read-only"));
            }
            other => return Err(format!("unknown attribute {other}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(id: &str, body: Value) -> IamRequest {
        IamRequest::new(Method::PUT, &format!("/api/2/apps/{id}")).with_json(&body)
    }

    fn handle(a: &mut Apps, req: &IamRequest) -> IamResponse {
        let rest: Vec<&str> = req
            .path
            .trim_start_matches("/api/2/apps")
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        a.handle(req, &rest)
    }

    #[track_caller]
    fn assert_error(r: &IamResponse, status: u16, name: &str) {
        assert_eq!(r.status, status, "{:?}", r.body_json());
        let body = r.body_json();
        assert_eq!(body["statusCode"], status, "{body}");
        assert_eq!(body["name"], name, "{body}");
        assert!(body["message"].is_string(), "{body}");
        assert_eq!(body.as_object().map(|o| o.len()), Some(3), "{body}");
    }

    #[test]
    fn partial_update_changes_only_what_is_given() {
        let mut a = Apps::seeded();
        let id = OIDC_APP_ID.to_string();
        let r = handle(
            &mut a,
            &put(
                &id,
                json!({"visible": false, "configuration": {"access_token_expiration_minutes": 10},
                       "parameters": {"employee_number": {"values": null, "default_values": null,
                                                          "label": "Employee Number"}}}),
            ),
        );
        assert_eq!(r.status, 200);
        let app = r.body_json();
        assert_eq!(app["visible"], false);
        assert_eq!(app["name"], "Sample OpenId Connect App");
        assert_eq!(app["configuration"]["access_token_expiration_minutes"], 10);
        assert_eq!(
            app["configuration"]["redirect_uri"],
            "http://example.com/callback"
        );
        assert!(app["parameters"]["groups"].is_object());
        assert_eq!(
            app["parameters"]["employee_number"]["label"],
            "Employee Number"
        );
        assert_ne!(app["updated_at"], "2019-05-19T23:56:57Z");
        assert!(app["updated_at"]
            .as_str()
            .is_some_and(|t| t.len() == 24 && t.ends_with('Z')));
    }

    #[test]
    fn validation_failures_are_422_in_the_onelogin_shape() {
        let mut a = Apps::seeded();
        let id = OIDC_APP_ID.to_string();
        for body in [
            json!({"policy_id": 0}),
            json!({"connector_id": 1}),
            json!({"id": 1}),
            json!({"sso": {}}),
            json!({"visible": "yes"}),
            json!({"favourite": true}),
        ] {
            assert_error(
                &handle(&mut a, &put(&id, body)),
                422,
                "UnprocessableEntityError",
            );
        }
        let r = handle(&mut a, &put(&id, json!({"policy_id": 0})));
        assert_eq!(
            r.body_json()["message"],
            "Validation failed: The associated Policy with ID 0 could not be found"
        );
        // Unchanged connector id is fine.
        let r = handle(
            &mut a,
            &put(&id, json!({"connector_id": OIDC_CONNECTOR_ID})),
        );
        assert_eq!(r.status, 200);
    }

    #[test]
    fn not_found_bad_requests_and_methods() {
        let mut a = Apps::seeded();
        assert_error(&handle(&mut a, &put("1", json!({}))), 404, "NotFoundError");
        assert_error(
            &handle(&mut a, &put("abc", json!({}))),
            404,
            "NotFoundError",
        );
        let r = handle(
            &mut a,
            &IamRequest::new(Method::PUT, &format!("/api/2/apps/{OIDC_APP_ID}"))
                .with_body("text/plain", b"{}"),
        );
        assert_error(&r, 400, "BadRequestError");
        let r = handle(
            &mut a,
            &IamRequest::new(Method::PUT, &format!("/api/2/apps/{OIDC_APP_ID}"))
                .with_body("application/json", b"[1]"),
        );
        assert_error(&r, 400, "BadRequestError");
        let r = handle(
            &mut a,
            &IamRequest::new(Method::DELETE, &format!("/api/2/apps/{OIDC_APP_ID}")),
        );
        assert_error(&r, 405, "MethodNotAllowedError");
        assert_eq!(r.header("allow"), Some("GET, PUT"));
        let r = handle(
            &mut a,
            &IamRequest::new(Method::GET, &format!("/api/2/apps/{SAML_APP_ID}")),
        );
        assert_eq!(r.body_json()["name"], "Expenses (SAML)");
    }
}
