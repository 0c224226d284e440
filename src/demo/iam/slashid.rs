//! SlashID OIDC provider credentials for SSO (seed page 003).
//!
//! Every request needs `SlashID-OrgID` (400 without it) and sees only that
//! organization's credentials (another organization's are 404). The
//! optional `SlashID-Required-Consistency` (`local_region`, `all_regions`)
//! and `SlashID-Required-Consistency-Timeout` (1-120) are checked.
//!
//! * `GET /organizations/sso/oidc/provider-credentials` — `{"result": [...]}`.
//! * `GET .../{oauth_client_id}` — `{"result": credential}`.
//! * `PATCH .../{oauth_client_id}` — modifies `client_secret`, `label`,
//!   `external_cred`, `external_cred_id`, `options` (per provider:
//!   `authorize_scopes`, Azure AD `tenant`, Okta `organization_url`, Apple
//!   `private_key`, `team_id`, `key_id`, `secret_lifetime` of 5 minutes to
//!   15,777,000 seconds) and `enable_in_slashid_oidc_authz_server`; any other
//!   member is 400; 200 `{"result": credential}`.
//! * `DELETE .../{oauth_client_id}` — 204.
//!
//! Answers never contain `client_secret`. Errors: `{"meta": {}, "errors":
//! [{"httpcode": STATUS, "message": "..."}]}`.

use std::collections::BTreeMap;

use http::Method;
use serde_json::{json, Map, Value};

use super::{allow_header, string_array, type_name, IamRequest, IamResponse};

/// The demo organization (the seed page's example `SlashID-OrgID`).
pub const DEMO_ORG_ID: &str = "af5fbd30-7ce7-4548-8b30-4cd59cb2aba1";
/// Another organization, whose credentials the demo organization never sees.
pub const OTHER_ORG_ID: &str = "0b7e4c1d-2f3a-4b5c-8d9e-a1b2c3d4e5f6";
/// The demo organization's Google credentials.
pub const GOOGLE_CLIENT_ID: &str = "demo-google-oidc";
/// The demo organization's Okta credentials.
pub const OKTA_CLIENT_ID: &str = "demo-okta-oidc";
/// The other organization's GitHub credentials.
pub const OTHER_ORG_CLIENT_ID: &str = "other-org-github";

const PROVIDERS: &[&str] = &[
    "google",
    "github",
    "bitbucket",
    "gitlab",
    "facebook",
    "line",
    "azuread",
    "okta",
    "apple",
];

fn error(status: u16, message: impl Into<String>) -> IamResponse {
    IamResponse::json(
        status,
        &json!({"meta": {}, "errors": [{"httpcode": status, "message": message.into()}]}),
    )
}

fn not_found(id: &str) -> IamResponse {
    error(404, format!("OIDC provider credentials {id} not found"))
}

fn method_not_allowed(allowed: &[Method]) -> IamResponse {
    error(405, "method not allowed").with_header("allow", &allow_header(allowed))
}

/// Seconds in a Go `time.Duration` string of hours, minutes and seconds
/// (`"24h"`, `"1h30m"`, `"300s"`); `None` otherwise.
fn go_duration_seconds(text: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut number = String::new();
    let mut seen_unit = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        let n: u64 = number.parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        number.clear();
        seen_unit = true;
    }
    (seen_unit && number.is_empty()).then_some(total)
}

fn check_options(options: &Value) -> Result<(), String> {
    let Some(options) = options.as_object() else {
        return Err(format!(
            "options must be an object, not {}",
            type_name(options)
        ));
    };
    for (provider, settings) in options {
        if !PROVIDERS.contains(&provider.as_str()) {
            return Err(format!(
                "options.{provider} is not a supported provider ({})",
                PROVIDERS.join(", ")
            ));
        }
        let Some(settings) = settings.as_object() else {
            return Err(format!("options.{provider} must be an object"));
        };
        for (name, value) in settings {
            let at = format!("options.{provider}.{name}");
            match (provider.as_str(), name.as_str()) {
                (_, "authorize_scopes") => {
                    string_array(value, &at)?;
                }
                ("azuread", "tenant")
                | ("okta", "organization_url")
                | ("apple", "private_key" | "team_id" | "key_id") => {
                    if !value.is_string() {
                        return Err(format!("{at} must be a string"));
                    }
                }
                ("apple", "secret_lifetime") => {
                    let seconds = value
                        .as_str()
                        .and_then(go_duration_seconds)
                        .ok_or_else(|| format!("{at} must be a duration such as \"24h\""))?;
                    if !(300..=15_777_000).contains(&seconds) {
                        return Err(format!(
                            "{at} must be between 5 minutes and 15777000 seconds"
                        ));
                    }
                }
                _ => return Err(format!("{at} is not a known option")),
            }
        }
    }
    Ok(())
}

/// Checks a PATCH body (seed 003's request body).
fn check_patch(body: &Map<String, Value>) -> Result<(), String> {
    for (name, value) in body {
        match name.as_str() {
            "client_secret" | "label" | "external_cred" | "external_cred_id" => {
                if !value.is_string() {
                    return Err(format!("{name} must be a string, not {}", type_name(value)));
                }
            }
            "enable_in_slashid_oidc_authz_server" => {
                if !value.is_boolean() {
                    return Err(format!(
                        "{name} must be a boolean, not {}",
                        type_name(value)
                    ));
                }
            }
            "options" => check_options(value)?,
            other => return Err(format!("{other} cannot be modified")),
        }
    }
    Ok(())
}

struct Credential {
    org_id: String,
    fields: Map<String, Value>,
}

impl Credential {
    fn public_view(&self) -> Value {
        let mut f = self.fields.clone();
        f.remove("client_secret");
        Value::Object(f)
    }
}

/// The provider-credential store.
pub struct Credentials {
    by_client_id: BTreeMap<String, Credential>,
}

impl Credentials {
    /// Google and Okta credentials of [`DEMO_ORG_ID`], GitHub credentials of
    /// [`OTHER_ORG_ID`].
    pub fn seeded() -> Credentials {
        let mut by_client_id = BTreeMap::new();
        for (org, id, provider, label) in [
            (
                DEMO_ORG_ID,
                GOOGLE_CLIENT_ID,
                "google",
                "Google Workspace SSO",
            ),
            (DEMO_ORG_ID, OKTA_CLIENT_ID, "okta", "Okta SSO"),
            (OTHER_ORG_ID, OTHER_ORG_CLIENT_ID, "github", "GitHub SSO"),
        ] {
            let fields = json!({
                "id": id,
                "client_id": id,
                "client_secret": super::random_hex(16),
                "provider": provider,
                "label": label,
                "options": {},
                "enable_in_slashid_oidc_authz_server": false,
            });
            if let Value::Object(fields) = fields {
                by_client_id.insert(
                    id.to_string(),
                    Credential {
                        org_id: org.to_string(),
                        fields,
                    },
                );
            }
        }
        Credentials { by_client_id }
    }

    /// A credential's fields (with its secret) and organization.
    pub fn get(&self, oauth_client_id: &str) -> Option<(&str, &Map<String, Value>)> {
        self.by_client_id
            .get(oauth_client_id)
            .map(|c| (c.org_id.as_str(), &c.fields))
    }

    /// Answers a request under `/organizations/sso/oidc/provider-credentials`.
    pub fn handle(&mut self, req: &IamRequest, rest: &[&str]) -> IamResponse {
        let org = match req.header("slashid-orgid").map(str::trim) {
            Some(org) if !org.is_empty() => org.to_string(),
            _ => return error(400, "the SlashID-OrgID header is required"),
        };
        if let Some(level) = req.header("slashid-required-consistency") {
            if level != "local_region" && level != "all_regions" {
                return error(
                    400,
                    "SlashID-Required-Consistency must be local_region or all_regions",
                );
            }
        }
        if let Some(timeout) = req.header("slashid-required-consistency-timeout") {
            if !timeout.parse::<u32>().is_ok_and(|t| (1..=120).contains(&t)) {
                return error(
                    400,
                    "SlashID-Required-Consistency-Timeout must be an integer from 1 to 120",
                );
            }
        }
        match rest {
            [] => match req.method {
                Method::GET => {
                    let mine: Vec<Value> = self
                        .by_client_id
                        .values()
                        .filter(|c| c.org_id == org)
                        .map(Credential::public_view)
                        .collect();
                    IamResponse::json(200, &json!({ "result": mine }))
                }
                _ => method_not_allowed(&[Method::GET]),
            },
            [id] if !id.is_empty() => {
                let allowed = [Method::GET, Method::PATCH, Method::DELETE];
                if !allowed.contains(&req.method) {
                    return method_not_allowed(&allowed);
                }
                if self.by_client_id.get(*id).is_none_or(|c| c.org_id != org) {
                    return not_found(id);
                }
                match req.method {
                    Method::GET => match self.by_client_id.get(*id) {
                        Some(c) => IamResponse::json(200, &json!({ "result": c.public_view() })),
                        None => not_found(id),
                    },
                    Method::DELETE => {
                        self.by_client_id.remove(*id);
                        IamResponse::empty(204)
                    }
                    _ => self.update(req, id),
                }
            }
            _ => error(404, "not found"),
        }
    }

    fn update(&mut self, req: &IamRequest, id: &str) -> IamResponse {
        if !req.is_json() {
            return error(400, "the request body must be application/json");
        }
        let body = match req.json_object() {
            Ok(b) => b,
            Err(e) => return error(400, e),
        };
        if let Err(e) = check_patch(&body) {
            return error(400, e);
        }
        let Some(credential) = self.by_client_id.get_mut(id) else {
            return not_found(id);
        };
        for (name, value) in body {
            credential.fields.insert(name, value);
        }
        IamResponse::json(200, &json!({ "result": credential.public_view() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "/organizations/sso/oidc/provider-credentials";

    fn handle(c: &mut Credentials, req: &IamRequest) -> IamResponse {
        let rest: Vec<&str> = req
            .path
            .trim_start_matches(BASE)
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        c.handle(req, &rest)
    }

    fn patch(id: &str, org: Option<&str>, body: Value) -> IamRequest {
        let req = IamRequest::new(Method::PATCH, &format!("{BASE}/{id}")).with_json(&body);
        match org {
            Some(org) => req.with_header("SlashID-OrgID", org),
            None => req,
        }
    }

    #[track_caller]
    fn assert_error(r: &IamResponse, status: u16) {
        assert_eq!(r.status, status, "{:?}", r.body_json());
        let body = r.body_json();
        assert!(body["meta"].is_object(), "{body}");
        assert_eq!(body["errors"][0]["httpcode"], status, "{body}");
        assert!(body["errors"][0]["message"].is_string(), "{body}");
    }

    #[test]
    fn patch_modifies_label_and_secret_and_never_shows_the_secret() {
        let mut c = Credentials::seeded();
        let r = handle(
            &mut c,
            &patch(
                GOOGLE_CLIENT_ID,
                Some(DEMO_ORG_ID),
                json!({"label": "Google SSO", "client_secret": "new-secret-value",
                       "options": {"google": {"authorize_scopes": ["openid", "email"]}},
                       "enable_in_slashid_oidc_authz_server": true}),
            ),
        );
        assert_eq!(r.status, 200);
        let result = &r.body_json()["result"];
        assert_eq!(result["label"], "Google SSO");
        assert_eq!(result["enable_in_slashid_oidc_authz_server"], true);
        assert!(result.get("client_secret").is_none());
        assert_eq!(
            c.get(GOOGLE_CLIENT_ID)
                .map(|(_, f)| f["client_secret"].clone()),
            Some(json!("new-secret-value"))
        );
    }

    #[test]
    fn the_organization_header_is_required_and_scopes_everything() {
        let mut c = Credentials::seeded();
        assert_error(
            &handle(
                &mut c,
                &patch(GOOGLE_CLIENT_ID, None, json!({"label": "x"})),
            ),
            400,
        );
        assert_error(
            &handle(
                &mut c,
                &patch(GOOGLE_CLIENT_ID, Some(OTHER_ORG_ID), json!({"label": "x"})),
            ),
            404,
        );
        assert_error(
            &handle(
                &mut c,
                &patch(
                    OTHER_ORG_CLIENT_ID,
                    Some(DEMO_ORG_ID),
                    json!({"label": "x"}),
                ),
            ),
            404,
        );
        let list = handle(
            &mut c,
            &IamRequest::new(Method::GET, BASE).with_header("SlashID-OrgID", DEMO_ORG_ID),
        );
        let ids: Vec<Value> = list.body_json()["result"]
            .as_array()
            .map(|a| a.iter().map(|c| c["id"].clone()).collect())
            .unwrap_or_default();
        assert_eq!(ids, vec![json!(GOOGLE_CLIENT_ID), json!(OKTA_CLIENT_ID)]);
        let r = handle(
            &mut c,
            &patch(GOOGLE_CLIENT_ID, Some(DEMO_ORG_ID), json!({"label": "x"}))
                .with_header("SlashID-Required-Consistency", "everywhere"),
        );
        assert_error(&r, 400);
        let r = handle(
            &mut c,
            &patch(GOOGLE_CLIENT_ID, Some(DEMO_ORG_ID), json!({"label": "x"}))
                .with_header("SlashID-Required-Consistency-Timeout", "121"),
        );
        assert_error(&r, 400);
    }

    #[test]
    fn patch_refuses_other_members_and_bad_options() {
        let mut c = Credentials::seeded();
        let cases = [
            json!({"provider": "github"}),
            json!({"label": 5}),
            json!({"options": {"myspace": {}}}),
            json!({"options": {"google": {"authorize_scopes": "openid"}}}),
            json!({"options": {"google": {"tenant": "x"}}}),
            json!({"options": {"apple": {"secret_lifetime": "1m"}}}),
            json!({"options": {"apple": {"secret_lifetime": "soon"}}}),
            json!({"enable_in_slashid_oidc_authz_server": "yes"}),
        ];
        for body in cases {
            assert_error(
                &handle(&mut c, &patch(OKTA_CLIENT_ID, Some(DEMO_ORG_ID), body)),
                400,
            );
        }
        let ok = json!({"options": {"apple": {"secret_lifetime": "24h", "team_id": "T1"}}});
        assert_eq!(
            handle(&mut c, &patch(OKTA_CLIENT_ID, Some(DEMO_ORG_ID), ok)).status,
            200
        );
        assert_eq!(go_duration_seconds("1h30m"), Some(5400));
        assert_eq!(go_duration_seconds("30"), None);
    }

    #[test]
    fn delete_and_methods() {
        let mut c = Credentials::seeded();
        let del = IamRequest::new(Method::DELETE, &format!("{BASE}/{OKTA_CLIENT_ID}"))
            .with_header("SlashID-OrgID", DEMO_ORG_ID);
        assert_eq!(handle(&mut c, &del).status, 204);
        assert_error(&handle(&mut c, &del), 404);
        let r = handle(
            &mut c,
            &IamRequest::new(Method::PUT, &format!("{BASE}/{GOOGLE_CLIENT_ID}"))
                .with_header("SlashID-OrgID", DEMO_ORG_ID),
        );
        assert_error(&r, 405);
        assert_eq!(r.header("allow"), Some("GET, PATCH, DELETE"));
    }
}
