//! The demo IAM service: an in-memory stand-in for the four seed API
//! families, the upstream that `portcullis demo` protects.
//!
//! | family | routes | error body |
//! |---|---|---|
//! | IBM Security Verify API clients ([`verify`], seed pages 000/001) | `GET/POST /v1.0/apiclients`, `GET/PUT/DELETE /v1.0/apiclients/{id}`, and the metadata lookup `GET /v1.0/apiclients?clientId=...` | `{"messageId", "messageDescription"}` |
//! | VMware identity providers ([`vmware`], seed page 002) | `GET /v1/identity-providers`, `GET/PATCH/DELETE /v1/identity-providers/{id}` | `{"errorCode", "errorType", "arguments", "message", "remediationMessage", "referenceToken"}` |
//! | SlashID OIDC provider credentials ([`slashid`], seed page 003) | `GET /organizations/sso/oidc/provider-credentials`, `GET/PATCH/DELETE .../{oauth_client_id}`, all with `SlashID-OrgID` | `{"meta", "errors": [{"httpcode", "message"}]}` |
//! | OneLogin apps ([`onelogin`], seed page 004) | `GET/PUT /api/2/apps/{id}` | `{"message", "statusCode", "name"}` |
//!
//! It also serves the demo issuer's key set at `/v1.0/endpoint/default/jwks`
//! (where IBM Verify serves its own) and a minimal OpenID discovery document
//! at `/.well-known/openid-configuration`.
//!
//! The service trusts whoever calls it: it checks no token. It is the
//! gateway in front of it that authenticates and authorizes, which is the
//! point of the demo. Everything lives in memory and is lost at exit.
//!
//! [`Iam::handle`] is the whole service as a plain function (request in,
//! response out), so each family is unit-tested without a socket; [`IamApp`]
//! is the thin pingora adapter that serves it.

pub mod onelogin;
pub mod slashid;
pub mod verify;
pub mod vmware;

use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::{json, Map, Value};

/// The largest request body the service reads.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Where the service serves the issuer's key set (IBM Verify's path).
pub const JWKS_PATH: &str = "/v1.0/endpoint/default/jwks";

/// The issuer path under the service's base URL (IBM Verify's).
pub const ISSUER_PATH: &str = "/oidc/endpoint/default";

// === IamRequest / IamResponse ===

/// One request, as the service sees it.
#[derive(Debug, Clone)]
pub struct IamRequest {
    pub method: Method,
    /// The path as received (still percent-encoded), without the query.
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl IamRequest {
    /// A request for `target` (`/path?query`) without headers or body.
    pub fn new(method: Method, target: &str) -> IamRequest {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (target.to_string(), None),
        };
        IamRequest {
            method,
            path,
            query,
            headers: HeaderMap::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header (ignored when the name or value is not valid HTTP).
    pub fn with_header(mut self, name: &str, value: &str) -> IamRequest {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            self.headers.append(n, v);
        }
        self
    }

    /// A JSON body with `Content-Type: application/json`.
    pub fn with_json(self, body: &Value) -> IamRequest {
        self.with_body("application/json", body.to_string().as_bytes())
    }

    /// A body of any type.
    pub fn with_body(mut self, content_type: &str, body: &[u8]) -> IamRequest {
        self = self.with_header("content-type", content_type);
        self.body = body.to_vec();
        self
    }

    /// The first value of `name`, if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Whether the body is declared `application/json` (parameters allowed).
    pub fn is_json(&self) -> bool {
        self.header("content-type").is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        })
    }

    /// The body as a JSON object.
    pub fn json_object(&self) -> Result<Map<String, Value>, String> {
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err("the request body must be a JSON object".into()),
            Err(e) => Err(format!("the request body is not valid JSON: {e}")),
        }
    }

    /// The path's segments, percent-decoded; `None` when a segment is not
    /// valid UTF-8 after decoding.
    fn segments(&self) -> Option<Vec<String>> {
        let path = self.path.strip_prefix('/')?;
        path.split('/')
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .ok()
                    .map(|c| c.into_owned())
            })
            .collect()
    }

    /// The query's `name=value` pairs, decoded (`+` is a space).
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        self.query
            .as_deref()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (decode(k), decode(v)),
                None => (decode(p), String::new()),
            })
            .collect()
    }
}

/// One response of the service.
#[derive(Debug, Clone, PartialEq)]
pub struct IamResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl IamResponse {
    pub fn json(status: u16, body: &Value) -> IamResponse {
        IamResponse {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }

    /// A response without a body (e.g. 204, or 201 with a `Location`).
    pub fn empty(status: u16) -> IamResponse {
        IamResponse {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> IamResponse {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// The first value of `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is empty or not JSON).
    pub fn body_json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

// === helpers shared by the families ===

/// `n` random bytes as lowercase hex.
pub(crate) fn random_hex(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    hex::encode(bytes)
}

/// A random RFC 4122 version-4 UUID.
pub(crate) fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The methods a resource allows, for `Allow`.
pub(crate) fn allow_header(methods: &[Method]) -> String {
    methods
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A JSON type name, for messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `Ok` when `v` is an array of strings.
pub(crate) fn string_array<'a>(v: &'a Value, what: &str) -> Result<Vec<&'a str>, String> {
    let items = v
        .as_array()
        .ok_or_else(|| format!("{what} must be an array of strings, not {}", type_name(v)))?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_str()
                .ok_or_else(|| format!("{what}[{i}] must be a string, not {}", type_name(item)))
        })
        .collect()
}

// === Iam ===

/// Everything the service knows.
pub struct Directory {
    pub verify: verify::ApiClients,
    pub vmware: vmware::IdentityProviders,
    pub slashid: slashid::Credentials,
    pub onelogin: onelogin::Apps,
}

impl Directory {
    /// The demo's seed data (see each family's `seeded`).
    pub fn seeded() -> Directory {
        Directory {
            verify: verify::ApiClients::seeded(),
            vmware: vmware::IdentityProviders::seeded(),
            slashid: slashid::Credentials::seeded(),
            onelogin: onelogin::Apps::seeded(),
        }
    }
}

/// The demo IAM service.
pub struct Iam {
    directory: Mutex<Directory>,
    /// The issuer's JWKS document.
    jwks: String,
    /// `http://127.0.0.1:PORT`, for the discovery document.
    base_url: String,
}

impl Iam {
    /// The service with the demo's seed data, serving `jwks_json`.
    pub fn seeded(jwks_json: String, base_url: &str) -> Iam {
        Iam::new(Directory::seeded(), jwks_json, base_url)
    }

    pub fn new(directory: Directory, jwks_json: String, base_url: &str) -> Iam {
        Iam {
            directory: Mutex::new(directory),
            jwks: jwks_json,
            base_url: base_url.trim_end_matches('/').to_string(),
        }
    }

    /// The issuer the service stands for: `BASE_URL/oidc/endpoint/default`.
    pub fn issuer(&self) -> String {
        format!("{}{ISSUER_PATH}", self.base_url)
    }

    /// Read or change the data directly (tests).
    pub fn directory(&self) -> MutexGuard<'_, Directory> {
        // A panic while holding the lock leaves consistent data (every
        // change is a single insert or replace), so poisoning is ignored.
        self.directory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers one request.
    pub fn handle(&self, req: &IamRequest) -> IamResponse {
        let Some(segments) = req.segments() else {
            return not_found("the path is not valid UTF-8");
        };
        let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
        match segs.as_slice() {
            ["v1.0", "endpoint", "default", "jwks"] => self.jwks(req),
            [".well-known", "openid-configuration"] => self.discovery(req),
            ["v1.0", "apiclients", rest @ ..] => self.directory().verify.handle(req, rest),
            ["v1", "identity-providers", rest @ ..] => self.directory().vmware.handle(req, rest),
            ["organizations", "sso", "oidc", "provider-credentials", rest @ ..] => {
                self.directory().slashid.handle(req, rest)
            }
            ["api", "2", "apps", rest @ ..] => self.directory().onelogin.handle(req, rest),
            _ => not_found("no such resource in the demo IAM service"),
        }
    }

    fn jwks(&self, req: &IamRequest) -> IamResponse {
        if req.method != Method::GET {
            return method_not_allowed(&[Method::GET]);
        }
        IamResponse {
            status: 200,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("cache-control".into(), "max-age=300".into()),
            ],
            body: self.jwks.clone().into_bytes(),
        }
    }

    fn discovery(&self, req: &IamRequest) -> IamResponse {
        if req.method != Method::GET {
            return method_not_allowed(&[Method::GET]);
        }
        IamResponse::json(
            200,
            &json!({
                "issuer": self.issuer(),
                "jwks_uri": format!("{}{JWKS_PATH}", self.base_url),
                "id_token_signing_alg_values_supported": ["ES256"],
            }),
        )
    }
}

fn not_found(message: &str) -> IamResponse {
    IamResponse::json(404, &json!({"error": "not_found", "message": message}))
}

fn method_not_allowed(allowed: &[Method]) -> IamResponse {
    IamResponse::json(
        405,
        &json!({"error": "method_not_allowed", "message": "method not allowed"}),
    )
    .with_header("allow", &allow_header(allowed))
}

// === IamApp ===

/// The pingora app serving an [`Iam`].
pub struct IamApp {
    iam: Arc<Iam>,
}

impl IamApp {
    pub fn new(iam: Arc<Iam>) -> IamApp {
        IamApp { iam }
    }
}

#[async_trait]
impl ServeHttp for IamApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let head = session.req_header();
        let mut req = IamRequest {
            method: head.method.clone(),
            path: head.uri.path().to_string(),
            query: head.uri.query().map(str::to_string),
            headers: head.headers.clone(),
            body: Vec::new(),
        };
        let mut too_large = false;
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if req.body.len() + chunk.len() > MAX_BODY_BYTES {
                        too_large = true;
                        break;
                    }
                    req.body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(_) => {
                    session.set_keepalive(None);
                    return to_http(IamResponse::json(
                        400,
                        &json!({"error": "bad_request", "message": "cannot read the request body"}),
                    ));
                }
            }
        }
        let resp = if too_large {
            session.set_keepalive(None);
            IamResponse::json(
                413,
                &json!({"error": "body_too_large", "message": "the request body is too large"}),
            )
        } else {
            self.iam.handle(&req)
        };
        tracing::debug!(
            target: "portcullis::demo::iam",
            method = %req.method,
            path = %req.path,
            status = resp.status,
            "demo IAM request"
        );
        to_http(resp)
    }
}

fn to_http(resp: IamResponse) -> Response<Vec<u8>> {
    let mut builder = Response::builder().status(resp.status);
    for (name, value) in &resp.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    if resp.status != 204 && resp.status != 304 {
        builder = builder.header("content-length", resp.body.len());
    }
    builder.body(resp.body).unwrap_or_else(|_| {
        let mut fallback = Response::new(Vec::new());
        *fallback.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        fallback
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iam() -> Iam {
        Iam::seeded(r#"{"keys":[]}"#.into(), "http://127.0.0.1:8081")
    }

    #[test]
    fn serves_the_jwks_and_discovery() {
        let iam = iam();
        let r = iam.handle(&IamRequest::new(Method::GET, JWKS_PATH));
        assert_eq!(r.status, 200);
        assert_eq!(r.body_json(), json!({"keys": []}));
        let r = iam.handle(&IamRequest::new(
            Method::GET,
            "/.well-known/openid-configuration",
        ));
        assert_eq!(
            r.body_json()["jwks_uri"],
            "http://127.0.0.1:8081/v1.0/endpoint/default/jwks"
        );
        assert_eq!(
            r.body_json()["issuer"],
            "http://127.0.0.1:8081/oidc/endpoint/default"
        );
        let r = iam.handle(&IamRequest::new(Method::POST, JWKS_PATH));
        assert_eq!(r.status, 405);
        assert_eq!(r.header("allow"), Some("GET"));
    }

    #[test]
    fn unknown_paths_are_404() {
        let iam = iam();
        for target in ["/", "/v2/other", "/api/2/users/1"] {
            assert_eq!(
                iam.handle(&IamRequest::new(Method::GET, target)).status,
                404,
                "{target}"
            );
        }
    }

    #[test]
    fn requests_decode_paths_and_queries() {
        let req = IamRequest::new(Method::GET, "/a/b%20c?x=1&y=a+b&z=%2F");
        assert_eq!(
            req.segments(),
            Some(vec!["a".to_string(), "b c".to_string()])
        );
        assert_eq!(
            req.query_pairs(),
            vec![
                ("x".to_string(), "1".to_string()),
                ("y".to_string(), "a b".to_string()),
                ("z".to_string(), "/".to_string())
            ]
        );
        let req = IamRequest::new(Method::GET, "/x")
            .with_header("Content-Type", "Application/JSON; charset=utf-8");
        assert!(req.is_json());
    }

    #[test]
    fn uuids_are_version_4() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
    }
}
