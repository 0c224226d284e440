//! What `portcullis demo` prints: curl commands with fresh tokens, each
//! with the status (and gateway error code) it should get.
//!
//! A block is a comment line saying what it shows, `# expect: STATUS
//! [error_code][, FIELD removed|kept]`, and the curl command on one line.
//! `FIELD removed` / `FIELD kept`: the answer is a JSON object without / with
//! that top-level member (the redaction blocks: `clientSecret`).
//!
//! ```text
//! # 3. demo-reader tries the same update: it lacks manageAPIClients.
//! # expect: 403 insufficient_entitlements
//! curl -sS -i -X PUT 'http://127.0.0.1:8080/v1.0/apiclients/...' -H 'Authorization: Bearer ...' ...
//! ```
//!
//! Every block can be run again and again: the allowed writes set the same
//! values each time.

use serde_json::{json, Value};

use super::iam::verify::{self, SeedClient};
use super::iam::{onelogin, slashid, vmware};
use crate::mint::{MintError, SigningKey, TokenClaims};

/// Lifetime of the printed tokens.
pub const TOKEN_TTL_SECONDS: u64 = 3600;

/// One request to try and what it should get.
#[derive(Debug, Clone)]
pub struct Block {
    /// What the block shows (one line).
    pub title: String,
    pub expect_status: u16,
    /// The gateway's `error` code, for refusals.
    pub expect_error: Option<&'static str>,
    /// What the answer's body shows, for the redaction blocks.
    pub expect_body: Option<BodyExpect>,
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

/// A top-level member of a JSON answer that the gateway removes or keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyExpect {
    /// The upstream sent it; the gateway removed it.
    Removed(&'static str),
    /// The upstream sent it; the gateway let it through.
    Kept(&'static str),
}

impl BodyExpect {
    /// `FIELD removed` or `FIELD kept`.
    pub fn describe(&self) -> String {
        match self {
            BodyExpect::Removed(field) => format!("{field} removed"),
            BodyExpect::Kept(field) => format!("{field} kept"),
        }
    }
}

impl Block {
    /// The `# expect:` line's text after the colon.
    pub fn expectation(&self) -> String {
        let mut text = match self.expect_error {
            Some(code) => format!("{} {code}", self.expect_status),
            None => self.expect_status.to_string(),
        };
        if let Some(body) = &self.expect_body {
            text.push_str(&format!(", {}", body.describe()));
        }
        text
    }

    /// The curl command, on one line, quoted for a POSIX shell.
    pub fn curl(&self) -> String {
        let mut cmd = format!("curl -sS -i -X {} {}", self.method, shell_quote(&self.url));
        for (name, value) in &self.headers {
            cmd.push_str(&format!(" -H {}", shell_quote(&format!("{name}: {value}"))));
        }
        if let Some(body) = &self.body {
            cmd.push_str(&format!(" --data {}", shell_quote(body)));
        }
        cmd
    }

    /// The block as printed, `n` being its number.
    pub fn render(&self, n: usize) -> String {
        format!(
            "# {n}. {}\n# expect: {}\n{}\n",
            self.title,
            self.expectation(),
            self.curl()
        )
    }
}

/// `'text'`, with `'` written as `'\''`.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// Where the printed commands go.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// `http://127.0.0.1:PORT` of the gateway.
    pub gateway: String,
    /// `http://127.0.0.1:PORT` of the admin listener.
    pub admin: String,
}

/// Mints the tokens of the demo's callers.
pub struct Minter<'a> {
    pub key: &'a SigningKey,
    pub issuer: String,
    pub audience: String,
    /// Unix seconds the tokens are issued at.
    pub now: u64,
}

impl Minter<'_> {
    /// A client-credentials style token for a seeded API client: `sub` and
    /// `client_id` are its client id, `entitlements` its grants.
    pub fn token(&self, client: &SeedClient, extra: &[(&str, Value)]) -> Result<String, MintError> {
        let claims = TokenClaims {
            iss: self.issuer.clone(),
            sub: client.client_id.to_string(),
            client_id: Some(client.client_id.to_string()),
            entitlements: Some(client.entitlements.iter().map(|e| e.to_string()).collect()),
            audiences: vec![self.audience.clone()],
            ttl_seconds: TOKEN_TTL_SECONDS,
            extra: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        };
        self.key.sign(&claims.to_json(self.now)?)
    }
}

fn bearer(token: &str) -> (String, String) {
    ("Authorization".into(), format!("Bearer {token}"))
}

fn json_type() -> (String, String) {
    ("Content-Type".into(), "application/json".into())
}

/// The demo's blocks, in the order printed.
pub fn blocks(minter: &Minter<'_>, at: &Endpoints) -> Result<Vec<Block>, MintError> {
    let gw = &at.gateway;
    let admin = minter.token(&verify::ADMIN, &[])?;
    let reader = minter.token(&verify::READER, &[])?;
    let secret_reader = minter.token(&verify::SECRET_READER, &[])?;
    let office = minter.token(&verify::OFFICE_ONLY, &[])?;
    let disabled = minter.token(&verify::DISABLED, &[])?;
    let platform = minter.token(
        &verify::PLATFORM_ADMIN,
        &[("oid", json!(slashid::DEMO_ORG_ID))],
    )?;

    let reporting_job = format!("{gw}/v1.0/apiclients/{}", verify::REPORTING_JOB.id);
    let ci_pipeline = format!("{gw}/v1.0/apiclients/{}", verify::CI_PIPELINE.id);
    let reporting_update = json!({
        "clientName": verify::REPORTING_JOB.client_id,
        "description": "Nightly usage reports (updated through Portcullis)",
        "enabled": true,
        "entitlements": ["readAPIClients"],
    })
    .to_string();

    Ok(vec![
        Block {
            title: "demo-admin updates the reporting-job API client (IBM Verify PUT): allowed and forwarded.".into(),
            expect_status: 204,
            expect_error: None,
            expect_body: None,
            method: "PUT",
            url: reporting_job.clone(),
            headers: vec![bearer(&admin), json_type()],
            body: Some(reporting_update.clone()),
        },
        Block {
            title: "demo-reader reads it back (readAPIClients is enough to read).".into(),
            expect_status: 200,
            expect_error: None,
            expect_body: None,
            method: "GET",
            url: reporting_job.clone(),
            headers: vec![bearer(&reader)],
            body: None,
        },
        Block {
            title: "demo-reader tries the same update: it lacks manageAPIClients.".into(),
            expect_status: 403,
            expect_error: Some("insufficient_entitlements"),
            expect_body: None,
            method: "PUT",
            url: reporting_job,
            headers: vec![bearer(&reader), json_type()],
            body: Some(reporting_update),
        },
        Block {
            title: "demo-reader reads the ci-pipeline client: IBM Verify answers with its clientSecret, the gateway removes it (readAPIClients does not show secrets).".into(),
            expect_status: 200,
            expect_error: None,
            expect_body: Some(BodyExpect::Removed("clientSecret")),
            method: "GET",
            url: ci_pipeline.clone(),
            headers: vec![bearer(&reader)],
            body: None,
        },
        Block {
            title: "demo-secret-reader reads it too: it holds readAPIClientsAndClientSecret, so the gateway keeps the clientSecret.".into(),
            expect_status: 200,
            expect_error: None,
            expect_body: Some(BodyExpect::Kept("clientSecret")),
            method: "GET",
            url: ci_pipeline,
            headers: vec![bearer(&secret_reader)],
            body: None,
        },
        Block {
            title: "demo-office-only lists API clients from 127.0.0.1; its own IP filter allows only 10.0.0.0/8.".into(),
            expect_status: 403,
            expect_error: Some("client_ip_denied"),
            expect_body: None,
            method: "GET",
            url: format!("{gw}/v1.0/apiclients"),
            headers: vec![bearer(&office)],
            body: None,
        },
        Block {
            title: "demo-disabled lists API clients: its token is valid, but the client is disabled in IBM Verify.".into(),
            expect_status: 403,
            expect_error: Some("client_disabled"),
            expect_body: None,
            method: "GET",
            url: format!("{gw}/v1.0/apiclients"),
            headers: vec![bearer(&disabled)],
            body: None,
        },
        Block {
            title: "demo-admin creates a client holding manageUserGroups, which demo-admin does not hold itself.".into(),
            expect_status: 403,
            expect_error: Some("privilege_escalation"),
            expect_body: None,
            method: "POST",
            url: format!("{gw}/v1.0/apiclients"),
            headers: vec![bearer(&admin), json_type()],
            body: Some(
                json!({"clientName": "escalator", "entitlements": ["readAPIClients", "manageUserGroups"]})
                    .to_string(),
            ),
        },
        Block {
            title: "demo-admin tries to update its own record: no client re-entitles itself.".into(),
            expect_status: 403,
            expect_error: Some("self_modification"),
            expect_body: None,
            method: "PUT",
            url: format!("{gw}/v1.0/apiclients/{}", verify::ADMIN.id),
            headers: vec![bearer(&admin), json_type()],
            body: Some(
                json!({"clientName": verify::ADMIN.client_id, "entitlements": verify::ADMIN.entitlements})
                    .to_string(),
            ),
        },
        Block {
            title: "demo-platform-admin relabels its organization's Google SSO credentials (SlashID PATCH); the gateway sets SlashID-OrgID from the token's oid.".into(),
            expect_status: 200,
            expect_error: None,
            expect_body: None,
            method: "PATCH",
            url: format!(
                "{gw}/organizations/sso/oidc/provider-credentials/{}",
                slashid::GOOGLE_CLIENT_ID
            ),
            headers: vec![bearer(&platform), json_type()],
            body: Some(json!({"label": "Google Workspace SSO (via Portcullis)"}).to_string()),
        },
        Block {
            title: "demo-platform-admin tries to re-base OneLogin app 928549 on another connector.".into(),
            expect_status: 400,
            expect_error: Some("field_denied"),
            expect_body: None,
            method: "PUT",
            url: format!("{gw}/api/2/apps/{}", onelogin::OIDC_APP_ID),
            headers: vec![bearer(&platform), json_type()],
            body: Some(json!({"connector_id": 50534}).to_string()),
        },
        Block {
            title: "demo-platform-admin sets an LDAP type VMware does not know on an identity provider.".into(),
            expect_status: 400,
            expect_error: Some("invalid_enum_value"),
            expect_body: None,
            method: "PATCH",
            url: format!("{gw}/v1/identity-providers/{}", vmware::CORP_AD_ID),
            headers: vec![bearer(&platform), json_type()],
            body: Some(
                json!({"name": "corp-ad", "type": "Embedded", "ldap": {"type": "Novell"}}).to_string(),
            ),
        },
        Block {
            title: "Prometheus metrics on the admin listener.".into(),
            expect_status: 200,
            expect_error: None,
            expect_body: None,
            method: "GET",
            url: format!("{}/metrics", at.admin),
            headers: Vec::new(),
            body: None,
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        let block = Block {
            title: "t".into(),
            expect_status: 403,
            expect_error: Some("ip_denied"),
            expect_body: None,
            method: "GET",
            url: "http://127.0.0.1:1/x".into(),
            headers: vec![("A".into(), "b".into())],
            body: Some("{\"k\":\"v\"}".into()),
        };
        assert_eq!(
            block.render(7),
            "# 7. t\n# expect: 403 ip_denied\ncurl -sS -i -X GET 'http://127.0.0.1:1/x' -H 'A: b' --data '{\"k\":\"v\"}'\n"
        );
    }

    #[test]
    fn every_block_has_a_fresh_token_for_the_right_client() {
        let key = SigningKey::generate(jsonwebtoken::Algorithm::ES256).expect("key");
        let minter = Minter {
            key: &key,
            issuer: "http://iam/oidc/endpoint/default".into(),
            audience: "aud".into(),
            now: 1_000,
        };
        let at = Endpoints {
            gateway: "http://127.0.0.1:8080".into(),
            admin: "http://127.0.0.1:9090".into(),
        };
        let blocks = blocks(&minter, &at).expect("blocks");
        assert!(blocks.len() >= 6);
        for b in &blocks {
            let line = b.curl();
            assert!(!line.contains('\n'));
            if b.url.starts_with(&at.gateway) {
                assert!(line.contains("Authorization: Bearer ey"), "{line}");
            }
        }
        for code in [
            "insufficient_entitlements",
            "client_ip_denied",
            "client_disabled",
            "privilege_escalation",
        ] {
            assert!(
                blocks.iter().any(|b| b.expect_error == Some(code)),
                "{code}"
            );
        }
        assert!(blocks.iter().any(|b| b.url.ends_with("/metrics")));
    }

    /// The claims of a printed block's token.
    fn claims(block: &Block) -> Value {
        use base64::Engine as _;
        let token = block
            .headers
            .iter()
            .find_map(|(n, v)| (n == "Authorization").then(|| v.trim_start_matches("Bearer ")))
            .unwrap_or_default();
        let payload = token.split('.').nth(1).unwrap_or_default();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap_or_default();
        serde_json::from_slice(&bytes).unwrap_or_default()
    }

    #[test]
    fn the_redaction_blocks_read_one_client_as_a_reader_and_as_a_secret_reader() {
        let key = SigningKey::generate(jsonwebtoken::Algorithm::ES256).expect("key");
        let minter = Minter {
            key: &key,
            issuer: "http://iam/oidc/endpoint/default".into(),
            audience: "aud".into(),
            now: 1_000,
        };
        let at = Endpoints {
            gateway: "http://127.0.0.1:8080".into(),
            admin: "http://127.0.0.1:9090".into(),
        };
        let blocks = blocks(&minter, &at).expect("blocks");
        let find = |want: BodyExpect| {
            let found: Vec<&Block> = blocks
                .iter()
                .filter(|b| b.expect_body == Some(want))
                .collect();
            assert_eq!(found.len(), 1, "{want:?}");
            found[0]
        };
        let removed = find(BodyExpect::Removed("clientSecret"));
        let kept = find(BodyExpect::Kept("clientSecret"));
        for b in [removed, kept] {
            assert_eq!(
                (b.method, b.expect_status, b.expect_error),
                ("GET", 200, None)
            );
            assert_eq!(
                b.url,
                format!("{}/v1.0/apiclients/{}", at.gateway, verify::CI_PIPELINE.id)
            );
        }
        assert_eq!(removed.expectation(), "200, clientSecret removed");
        assert_eq!(kept.expectation(), "200, clientSecret kept");

        let reader = claims(removed);
        assert_eq!(reader["client_id"], verify::READER.client_id);
        assert_eq!(reader["entitlements"], json!(["readAPIClients"]));
        let secret_reader = claims(kept);
        assert_eq!(secret_reader["client_id"], verify::SECRET_READER.client_id);
        assert_eq!(
            secret_reader["entitlements"],
            json!(["readAPIClients", verify::READ_SECRET])
        );
        // The metadata the gateway intersects the token with (what its
        // `[clients]` source reads from the demo IAM) grants it too.
        let iam =
            crate::demo::iam::Iam::seeded("{\"keys\":[]}".into(), crate::demo::DEFAULT_IAM_URL);
        let lookup = iam.handle(&crate::demo::iam::IamRequest::new(
            http::Method::GET,
            &format!(
                "/v1.0/apiclients?clientId={}",
                verify::SECRET_READER.client_id
            ),
        ));
        let meta = crate::clients::meta::from_json(
            verify::SECRET_READER.client_id,
            lookup
                .body_json()
                .pointer("/apiClients/0")
                .unwrap_or(&Value::Null),
            &crate::clients::FieldPointers::default(),
        )
        .expect("a valid client");
        assert!(meta.enabled);
        assert!(meta.entitlements.iter().any(|e| e == verify::READ_SECRET));
        // And the catalogue the demo config names knows it.
        assert!(crate::demo::VERIFY_CATALOG
            .lines()
            .any(|l| l.split('\t').next() == Some(verify::READ_SECRET)));
    }
}
