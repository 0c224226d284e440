//! IBM Security Verify API clients (seed pages 000 and 001).
//!
//! * `GET /v1.0/apiclients` — `{"apiClients": [...]}`, each with its
//!   `clientSecret` (see below).
//! * `GET /v1.0/apiclients?clientId=ID` — **the demo's metadata lookup**: the
//!   one client whose OAuth `clientId` is `ID`, as `{"apiClients": [client]}`,
//!   or 404 when there is none. The gateway's `[clients]` source reads it with
//!   `url = ".../v1.0/apiclients?clientId={client_id}"` and
//!   `response_pointer = "/apiClients/0"` (the client id is percent-encoded
//!   into the query; the fields are IBM Verify's: `/enabled`,
//!   `/entitlements`, `/ipFilterOp`, `/ipFilters`, `/id`).
//! * `POST /v1.0/apiclients` — create (seed 001): `clientName` and
//!   `entitlements` required; the service generates `id`, `clientId` and
//!   `clientSecret`; 201 with `Location: /v1.0/apiclients/{id}` and no body
//!   ("perform a GET operation on the returned location header").
//! * `GET /v1.0/apiclients/{id}` — the record, with its `clientSecret`.
//! * `PUT /v1.0/apiclients/{id}` — update (seed 000): replaces every
//!   updatable field (`clientName` and `entitlements` required); `id` and
//!   `clientId` cannot be modified (400 when the body names other values);
//!   without `clientSecret` a new secret is generated; 204.
//! * `DELETE /v1.0/apiclients/{id}` — 204.
//!
//! `{id}` is the record id, not the OAuth `clientId`; an unknown one is 404.
//! Errors: `{"messageId": "...", "messageDescription": "..."}`; the
//! messageIds follow IBM's `CSI....E` pattern but are the demo's own
//! (`CSIDM` + the HTTP status). Entitlement names are not checked against
//! the catalogue here: that is the gateway's job.
//!
//! Every GET answer carries `clientSecret`, as IBM Verify answers a caller
//! holding `readAPIClientsAndClientSecret`: the demo service checks no token
//! of its own and trusts the gateway in front of it, whose `[routes.response]
//! redact` rules remove the secret for callers without that entitlement.
//! That is what the demo shows (the service doing it itself would hide it).

use std::collections::BTreeMap;

use http::Method;
use serde_json::{json, Map, Value};

use super::{allow_header, random_hex, string_array, type_name, uuid_v4, IamRequest, IamResponse};

/// The entitlement the gateway requires to let a client's secret through.
pub const READ_SECRET: &str = "readAPIClientsAndClientSecret";

/// The demo's own messageIds, one per status.
pub const MSG_BAD_REQUEST: &str = "CSIDM0400E";
pub const MSG_NOT_FOUND: &str = "CSIDM0404E";
pub const MSG_METHOD: &str = "CSIDM0405E";
pub const MSG_MEDIA_TYPE: &str = "CSIDM0415E";

/// A seeded API client.
#[derive(Debug, Clone, Copy)]
pub struct SeedClient {
    /// Record id (the `{id}` of the routes).
    pub id: &'static str,
    /// OAuth client id (what tokens name).
    pub client_id: &'static str,
    pub description: &'static str,
    pub enabled: bool,
    pub entitlements: &'static [&'static str],
    /// `ipFilterOp` and `ipFilters`; `None` = no filter.
    pub ip_filter: Option<(&'static str, &'static [&'static str])>,
}

/// Manages API clients: `manageAPIClients`, `readAPIClients`; no IP filter.
pub const ADMIN: SeedClient = SeedClient {
    id: "6f1d3c2a-8b4e-4a71-9c35-2e7f0a1b5d01",
    client_id: "demo-admin",
    description: "Manages API clients",
    enabled: true,
    entitlements: &["manageAPIClients", "readAPIClients"],
    ip_filter: None,
};

/// Reads API clients only.
pub const READER: SeedClient = SeedClient {
    id: "6f1d3c2a-8b4e-4a71-9c35-2e7f0a1b5d02",
    client_id: "demo-reader",
    description: "Reads API clients",
    enabled: true,
    entitlements: &["readAPIClients"],
    ip_filter: None,
};

/// Usable from the office network 10.0.0.0/8 only (so never from loopback).
pub const OFFICE_ONLY: SeedClient = SeedClient {
    id: "6f1d3c2a-8b4e-4a71-9c35-2e7f0a1b5d03",
    client_id: "demo-office-only",
    description: "Manages API clients, from the office network only",
    enabled: true,
    entitlements: &["manageAPIClients", "readAPIClients"],
    ip_filter: Some(("allow", &["10.0.0.0/8"])),
};

/// Disabled.
pub const DISABLED: SeedClient = SeedClient {
    id: "6f1d3c2a-8b4e-4a71-9c35-2e7f0a1b5d04",
    client_id: "demo-disabled",
    description: "A retired automation account",
    enabled: false,
    entitlements: &["manageAPIClients", "readAPIClients"],
    ip_filter: None,
};

/// The caller of the other three families. In the demo one IAM service is
/// the metadata source for every caller, so its grants for the VMware,
/// SlashID and OneLogin routes live here too (they are not IBM Verify
/// entitlements).
pub const PLATFORM_ADMIN: SeedClient = SeedClient {
    id: "6f1d3c2a-8b4e-4a71-9c35-2e7f0a1b5d05",
    client_id: "demo-platform-admin",
    description: "Administers identity providers, SSO credentials and apps",
    enabled: true,
    entitlements: &["ADMIN", "slashid-admin", "onelogin-app-admin"],
    ip_filter: None,
};

/// A client to update.
pub const REPORTING_JOB: SeedClient = SeedClient {
    id: "6f1d3c2a-8b4e-4a71-9c35-2e7f0a1b5d06",
    client_id: "reporting-job",
    description: "Nightly usage reports",
    enabled: true,
    entitlements: &["readAPIClients"],
    ip_filter: None,
};

/// Another client to update, with a deny filter.
pub const CI_PIPELINE: SeedClient = SeedClient {
    id: "6f1d3c2a-8b4e-4a71-9c35-2e7f0a1b5d07",
    client_id: "ci-pipeline",
    description: "Provisions test tenants",
    enabled: true,
    entitlements: &["readAPIClients"],
    ip_filter: Some(("deny", &["203.0.113.0/24"])),
};

/// Reads API clients with their secrets: the only seeded client the gateway
/// shows IBM Verify client secrets to.
pub const SECRET_READER: SeedClient = SeedClient {
    id: "6f1d3c2a-8b4e-4a71-9c35-2e7f0a1b5d08",
    client_id: "demo-secret-reader",
    description: "Reads API clients with their secrets",
    enabled: true,
    entitlements: &["readAPIClients", READ_SECRET],
    ip_filter: None,
};

/// Every seeded client, in record order.
pub const SEED_CLIENTS: &[SeedClient] = &[
    ADMIN,
    READER,
    OFFICE_ONLY,
    DISABLED,
    PLATFORM_ADMIN,
    REPORTING_JOB,
    CI_PIPELINE,
    SECRET_READER,
];

/// The API-client store.
pub struct ApiClients {
    /// By record id.
    records: BTreeMap<String, Map<String, Value>>,
}

fn error(status: u16, message_id: &str, description: impl Into<String>) -> IamResponse {
    IamResponse::json(
        status,
        &json!({"messageId": message_id, "messageDescription": description.into()}),
    )
}

fn bad_request(description: impl Into<String>) -> IamResponse {
    error(400, MSG_BAD_REQUEST, description)
}

fn not_found(id: &str) -> IamResponse {
    error(
        404,
        MSG_NOT_FOUND,
        format!("The API client with ID {id} does not exist."),
    )
}

fn method_not_allowed(allowed: &[Method]) -> IamResponse {
    error(
        405,
        MSG_METHOD,
        "The HTTP method is not supported for this resource.",
    )
    .with_header("allow", &allow_header(allowed))
}

/// Checks a create (`creating`) or update body; `Ok` holds nothing: the
/// fields are copied as given.
fn validate(body: &Map<String, Value>, creating: bool) -> Result<(), String> {
    for (name, value) in body {
        let expect = |ok: bool, what: &str| -> Result<(), String> {
            if ok {
                Ok(())
            } else {
                Err(format!("{name} must be {what}, not {}", type_name(value)))
            }
        };
        match name.as_str() {
            "id" | "clientId" if creating => {
                return Err(format!("{name} is generated by the service"));
            }
            // On update they are compared with the record by the caller.
            "id" | "clientId" => expect(value.is_string(), "a string")?,
            "clientSecret" if creating => {
                return Err("clientSecret is generated by the service".into());
            }
            "clientSecret" => expect(
                value.as_str().is_some_and(|s| !s.is_empty()),
                "a non-empty string",
            )?,
            "clientName" => expect(
                value
                    .as_str()
                    .is_some_and(|s| !s.trim().is_empty() && s.len() <= 255),
                "a non-empty string of at most 255 characters",
            )?,
            "enabled" => expect(value.is_boolean(), "a boolean")?,
            "entitlements" => {
                string_array(value, "entitlements")?;
            }
            "description" | "jwkUri" => expect(value.is_string() || value.is_null(), "a string")?,
            "overrideSettings" | "additionalProperties" | "additionalConfig" => {
                expect(value.is_object() || value.is_null(), "an object")?
            }
            "ipFilterOp" => match value {
                Value::Null => {}
                Value::String(op) if op == "allow" || op == "deny" => {}
                _ => return Err("ipFilterOp must be \"allow\", \"deny\" or null".into()),
            },
            "ipFilters" => {
                for (i, entry) in string_array(value, "ipFilters")?.iter().enumerate() {
                    crate::policy::ip::parse_entry(entry)
                        .map_err(|e| format!("ipFilters[{i}]: {e}"))?;
                }
            }
            other => return Err(format!("{other} is not a property of an API client")),
        }
    }
    for required in ["clientName", "entitlements"] {
        if !body.contains_key(required) {
            return Err(format!("{required} is required"));
        }
    }
    Ok(())
}

/// A full record: defaults, then the body's fields.
fn record(
    id: &str,
    client_id: &str,
    secret: String,
    body: &Map<String, Value>,
) -> Map<String, Value> {
    let mut r = Map::new();
    r.insert("id".into(), json!(id));
    r.insert("clientId".into(), json!(client_id));
    r.insert("clientName".into(), json!(""));
    r.insert("clientSecret".into(), json!(secret));
    r.insert("enabled".into(), json!(true));
    r.insert("entitlements".into(), json!([]));
    r.insert("description".into(), json!(""));
    r.insert(
        "overrideSettings".into(),
        json!({"restrictScopes": false, "scopes": []}),
    );
    r.insert("additionalProperties".into(), json!({}));
    r.insert("ipFilterOp".into(), Value::Null);
    r.insert("ipFilters".into(), json!([]));
    r.insert("jwkUri".into(), Value::Null);
    r.insert(
        "additionalConfig".into(),
        json!({"clientAuthMethod": "default"}),
    );
    for (name, value) in body {
        if name != "id" && name != "clientId" {
            r.insert(name.clone(), value.clone());
        }
    }
    r
}

impl ApiClients {
    /// No clients.
    pub fn empty() -> ApiClients {
        ApiClients {
            records: BTreeMap::new(),
        }
    }

    /// The [`SEED_CLIENTS`].
    pub fn seeded() -> ApiClients {
        let mut clients = ApiClients::empty();
        for seed in SEED_CLIENTS {
            let mut body = Map::new();
            body.insert("clientName".into(), json!(seed.client_id));
            body.insert("description".into(), json!(seed.description));
            body.insert("enabled".into(), json!(seed.enabled));
            body.insert("entitlements".into(), json!(seed.entitlements));
            if let Some((op, filters)) = seed.ip_filter {
                body.insert("ipFilterOp".into(), json!(op));
                body.insert("ipFilters".into(), json!(filters));
            }
            let r = record(seed.id, seed.client_id, random_hex(24), &body);
            clients.records.insert(seed.id.to_string(), r);
        }
        clients
    }

    /// The record with this id.
    pub fn get(&self, id: &str) -> Option<&Map<String, Value>> {
        self.records.get(id)
    }

    /// The record whose OAuth client id is `client_id`.
    pub fn find_by_client_id(&self, client_id: &str) -> Option<&Map<String, Value>> {
        self.records
            .values()
            .find(|r| r.get("clientId").and_then(Value::as_str) == Some(client_id))
    }

    /// Answers a request under `/v1.0/apiclients`; `rest` holds the
    /// decoded segments after it.
    pub fn handle(&mut self, req: &IamRequest, rest: &[&str]) -> IamResponse {
        match rest {
            [] => match req.method {
                Method::GET => self.list(req),
                Method::POST => self.create(req),
                _ => method_not_allowed(&[Method::GET, Method::POST]),
            },
            [id] if !id.is_empty() => match req.method {
                Method::GET => match self.records.get(*id) {
                    Some(r) => IamResponse::json(200, &Value::Object(r.clone())),
                    None => not_found(id),
                },
                Method::PUT => self.update(req, id),
                Method::DELETE => match self.records.remove(*id) {
                    Some(_) => IamResponse::empty(204),
                    None => not_found(id),
                },
                _ => method_not_allowed(&[Method::GET, Method::PUT, Method::DELETE]),
            },
            _ => error(404, MSG_NOT_FOUND, "The requested resource does not exist."),
        }
    }

    fn list(&self, req: &IamRequest) -> IamResponse {
        let mut client_id = None;
        for (name, value) in req.query_pairs() {
            match name.as_str() {
                "clientId" if client_id.is_none() => client_id = Some(value),
                "clientId" => return bad_request("clientId may be given once."),
                other => {
                    return bad_request(format!(
                        "The query parameter {other} is not supported (the demo supports clientId)."
                    ))
                }
            }
        }
        match client_id {
            None => {
                let all: Vec<&Map<String, Value>> = self.records.values().collect();
                IamResponse::json(200, &json!({ "apiClients": all }))
            }
            Some(cid) => match self.find_by_client_id(&cid) {
                Some(r) => IamResponse::json(200, &json!({ "apiClients": [r] })),
                None => error(
                    404,
                    MSG_NOT_FOUND,
                    format!("No API client has the client ID {cid}."),
                ),
            },
        }
    }

    fn create(&mut self, req: &IamRequest) -> IamResponse {
        if !req.is_json() {
            return error(
                415,
                MSG_MEDIA_TYPE,
                "The Content-Type must be application/json.",
            );
        }
        let body = match req.json_object() {
            Ok(b) => b,
            Err(e) => return bad_request(e),
        };
        if let Err(e) = validate(&body, true) {
            return bad_request(e);
        }
        let id = uuid_v4();
        let r = record(&id, &uuid_v4(), random_hex(24), &body);
        self.records.insert(id.clone(), r);
        IamResponse::empty(201).with_header("location", &format!("/v1.0/apiclients/{id}"))
    }

    fn update(&mut self, req: &IamRequest, id: &str) -> IamResponse {
        let Some(existing) = self.records.get(id) else {
            return not_found(id);
        };
        if !req.is_json() {
            return error(
                415,
                MSG_MEDIA_TYPE,
                "The Content-Type must be application/json.",
            );
        }
        let body = match req.json_object() {
            Ok(b) => b,
            Err(e) => return bad_request(e),
        };
        if let Err(e) = validate(&body, false) {
            return bad_request(e);
        }
        let client_id = existing
            .get("clientId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        for (field, current) in [("id", id), ("clientId", client_id.as_str())] {
            if let Some(given) = body.get(field).and_then(Value::as_str) {
                if given != current {
                    return bad_request(format!(
                        "The {field} of an API client cannot be modified."
                    ));
                }
            }
        }
        let secret = match body.get("clientSecret").and_then(Value::as_str) {
            Some(s) => s.to_string(),
            // Seed 000: "If the client secret is not specified, then a new
            // client secret will be generated."
            None => random_hex(24),
        };
        let r = record(id, &client_id, secret, &body);
        self.records.insert(id.to_string(), r);
        IamResponse::empty(204)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(id: &str, body: Value) -> IamRequest {
        IamRequest::new(Method::PUT, &format!("/v1.0/apiclients/{id}")).with_json(&body)
    }

    fn handle(c: &mut ApiClients, req: &IamRequest) -> IamResponse {
        let rest: Vec<String> = req
            .path
            .trim_start_matches("/v1.0/apiclients")
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
        c.handle(req, &rest)
    }

    #[track_caller]
    fn assert_error(r: &IamResponse, status: u16, message_id: &str) {
        assert_eq!(r.status, status, "{:?}", r.body_json());
        let body = r.body_json();
        assert_eq!(body["messageId"], message_id, "{body}");
        assert!(body["messageDescription"]
            .as_str()
            .is_some_and(|d| !d.is_empty()));
        assert_eq!(
            body.as_object().map(|o| o.len()),
            Some(2),
            "only the two IBM members: {body}"
        );
    }

    #[test]
    fn lists_and_looks_up_clients_with_their_secrets() {
        let mut c = ApiClients::seeded();
        let r = handle(&mut c, &IamRequest::new(Method::GET, "/v1.0/apiclients"));
        assert_eq!(r.status, 200);
        let all = r.body_json()["apiClients"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(all.len(), SEED_CLIENTS.len());
        // Secrets are the gateway's to remove: the service shows them all.
        for client in &all {
            let id = client["id"].as_str().unwrap_or_default();
            assert_eq!(
                client["clientSecret"],
                c.get(id)
                    .map(|r| r["clientSecret"].clone())
                    .unwrap_or_default(),
                "{client}"
            );
            assert!(client["clientSecret"]
                .as_str()
                .is_some_and(|s| s.len() == 48));
        }

        let r = handle(
            &mut c,
            &IamRequest::new(Method::GET, "/v1.0/apiclients?clientId=demo-office-only"),
        );
        assert_eq!(r.status, 200);
        let client = r
            .body_json()
            .pointer("/apiClients/0")
            .cloned()
            .unwrap_or_default();
        assert_eq!(client["id"], OFFICE_ONLY.id);
        assert_eq!(client["ipFilterOp"], "allow");
        assert_eq!(client["ipFilters"], json!(["10.0.0.0/8"]));
        assert!(client["clientSecret"]
            .as_str()
            .is_some_and(|s| s.len() == 48));

        // What the gateway's [clients] source reads from it is a valid client.
        let meta = crate::clients::meta::from_json(
            "demo-disabled",
            handle(
                &mut c,
                &IamRequest::new(Method::GET, "/v1.0/apiclients?clientId=demo-disabled"),
            )
            .body_json()
            .pointer("/apiClients/0")
            .unwrap_or(&Value::Null),
            &crate::clients::FieldPointers::default(),
        )
        .expect("a valid client");
        assert!(!meta.enabled);
        assert_eq!(meta.id.as_deref(), Some(DISABLED.id));

        let r = handle(
            &mut c,
            &IamRequest::new(Method::GET, "/v1.0/apiclients?clientId=nobody"),
        );
        assert_error(&r, 404, MSG_NOT_FOUND);
        let r = handle(
            &mut c,
            &IamRequest::new(Method::GET, "/v1.0/apiclients?search=x"),
        );
        assert_error(&r, 400, MSG_BAD_REQUEST);
    }

    #[test]
    fn creates_with_generated_ids_and_a_location() {
        let mut c = ApiClients::seeded();
        let req = IamRequest::new(Method::POST, "/v1.0/apiclients").with_json(&json!({
            "clientName": "new-one",
            "entitlements": ["readAPIClients", READ_SECRET],
            "ipFilterOp": "deny",
            "ipFilters": ["192.0.2.0/24", "2001:db8::1"],
        }));
        let r = handle(&mut c, &req);
        assert_eq!(r.status, 201);
        assert!(r.body.is_empty());
        let location = r.header("location").unwrap_or_default().to_string();
        // No caller named at all: the service trusts the gateway in front
        // of it and answers with the secret.
        let r = handle(&mut c, &IamRequest::new(Method::GET, &location));
        assert_eq!(r.status, 200);
        let created = r.body_json();
        assert_eq!(created["clientName"], "new-one");
        assert_eq!(created["enabled"], true);
        assert!(created["clientSecret"]
            .as_str()
            .is_some_and(|s| s.len() == 48));
        assert_ne!(created["clientId"], created["id"]);
        assert_eq!(
            format!("/v1.0/apiclients/{}", created["id"].as_str().unwrap_or("")),
            location
        );
    }

    #[test]
    fn create_and_update_refuse_bad_bodies_in_the_ibm_shape() {
        let mut c = ApiClients::seeded();
        let post = |body: Value| IamRequest::new(Method::POST, "/v1.0/apiclients").with_json(&body);
        let cases = [
            post(json!({"entitlements": []})),
            post(json!({"clientName": "x"})),
            post(json!({"clientName": "x", "entitlements": "readAPIClients"})),
            post(json!({"clientName": "x", "entitlements": [], "clientId": "mine"})),
            post(json!({"clientName": "x", "entitlements": [], "ipFilterOp": "maybe"})),
            post(json!({"clientName": "x", "entitlements": [], "ipFilters": ["10.1.2.3/8"]})),
            post(json!({"clientName": "x", "entitlements": [], "colour": "red"})),
            post(json!(["not", "an", "object"])),
            put(
                REPORTING_JOB.id,
                json!({"clientName": "x", "entitlements": [], "clientId": "other"}),
            ),
            put(
                REPORTING_JOB.id,
                json!({"clientName": "x", "entitlements": [], "id": ADMIN.id}),
            ),
            put(
                REPORTING_JOB.id,
                json!({"clientName": "", "entitlements": []}),
            ),
            put(
                REPORTING_JOB.id,
                json!({"clientName": "x", "entitlements": [], "enabled": "yes"}),
            ),
        ];
        for req in &cases {
            assert_error(&handle(&mut c, req), 400, MSG_BAD_REQUEST);
        }
        let r = handle(
            &mut c,
            &IamRequest::new(Method::POST, "/v1.0/apiclients").with_body("text/plain", b"{}"),
        );
        assert_error(&r, 415, MSG_MEDIA_TYPE);
        // Nothing changed.
        assert_eq!(c.records.len(), SEED_CLIENTS.len());
        assert_eq!(
            c.get(REPORTING_JOB.id).map(|r| r["clientName"].clone()),
            Some(json!("reporting-job"))
        );
    }

    #[test]
    fn update_replaces_fields_keeps_ids_and_rotates_the_secret() {
        let mut c = ApiClients::seeded();
        let before = c.get(REPORTING_JOB.id).cloned().unwrap_or_default();
        let r = handle(
            &mut c,
            &put(
                REPORTING_JOB.id,
                json!({
                    "id": REPORTING_JOB.id,
                    "clientName": "reporting-job",
                    "entitlements": ["readAPIClients", "readReports"],
                    "ipFilterOp": "allow",
                    "ipFilters": ["10.0.0.0/8"],
                }),
            ),
        );
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
        let after = c.get(REPORTING_JOB.id).cloned().unwrap_or_default();
        assert_eq!(after["clientId"], before["clientId"]);
        assert_eq!(
            after["entitlements"],
            json!(["readAPIClients", "readReports"])
        );
        assert_eq!(after["ipFilterOp"], "allow");
        // Replaced: the description was not given, so it is back to empty.
        assert_eq!(after["description"], "");
        assert_ne!(
            after["clientSecret"], before["clientSecret"],
            "a new secret"
        );

        let r = handle(
            &mut c,
            &put(
                REPORTING_JOB.id,
                json!({"clientName": "r", "entitlements": [], "clientSecret": "s3cret-value"}),
            ),
        );
        assert_eq!(r.status, 204);
        assert_eq!(
            c.get(REPORTING_JOB.id).map(|r| r["clientSecret"].clone()),
            Some(json!("s3cret-value"))
        );
    }

    #[test]
    fn unknown_ids_methods_and_deletes() {
        let mut c = ApiClients::seeded();
        assert_error(
            &handle(
                &mut c,
                &IamRequest::new(Method::GET, "/v1.0/apiclients/nope"),
            ),
            404,
            MSG_NOT_FOUND,
        );
        assert_error(
            &handle(
                &mut c,
                &put("nope", json!({"clientName": "x", "entitlements": []})),
            ),
            404,
            MSG_NOT_FOUND,
        );
        let r = handle(
            &mut c,
            &IamRequest::new(Method::PATCH, "/v1.0/apiclients/nope"),
        );
        assert_error(&r, 405, MSG_METHOD);
        assert_eq!(r.header("allow"), Some("GET, PUT, DELETE"));
        let del = IamRequest::new(
            Method::DELETE,
            &format!("/v1.0/apiclients/{}", CI_PIPELINE.id),
        );
        assert_eq!(handle(&mut c, &del).status, 204);
        assert_error(&handle(&mut c, &del), 404, MSG_NOT_FOUND);
        assert!(c.find_by_client_id("ci-pipeline").is_none());
    }
}
