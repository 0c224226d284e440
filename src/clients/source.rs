//! Where client metadata comes from: the config (`static`) or the IAM
//! service's API (`http`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::meta::{from_json, ClientMeta, FieldPointers};
use super::oauth::TokenSource;

/// The most a metadata answer may weigh.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Characters left as they are in a client id placed in a URL path segment
/// (RFC 3986 unreserved); everything else is percent-encoded, so a client id
/// can never add path segments or a query.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What a source says about a client id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(Arc<ClientMeta>),
    /// The source answered that no such client exists.
    NotFound,
}

pub enum Source {
    Static(HashMap<String, Arc<ClientMeta>>),
    Http(Box<HttpSource>),
}

pub struct HttpSource {
    /// URL template with `{client_id}`.
    pub url: String,
    pub response_pointer: String,
    pub fields: FieldPointers,
    pub timeout: Duration,
    pub auth: TokenSource,
    pub http: reqwest::Client,
}

impl HttpSource {
    /// Ask the service. `Err` is a failure of the source (unreachable,
    /// timeout, 5xx, an answer that is not a valid client) — never "allow".
    pub async fn fetch(&self, client_id: &str) -> Result<Lookup, String> {
        // URL parsers resolve `.`/`..` segments even percent-encoded, so such
        // an id could address another resource: no client can have it.
        if client_id.is_empty() || client_id == "." || client_id == ".." {
            return Ok(Lookup::NotFound);
        }
        let url = self.url.replace(
            "{client_id}",
            &utf8_percent_encode(client_id, SEGMENT).to_string(),
        );
        let mut resp = self.get(&url, false).await?;
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED && self.auth.renewable() {
            resp = self.get(&url, true).await?;
        }
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(Lookup::NotFound);
        }
        if !status.is_success() {
            return Err(format!("metadata source answered {}", status.as_u16()));
        }
        let body = read_limited(resp).await?;
        parse_answer(client_id, &body, &self.response_pointer, &self.fields)
    }

    async fn get(&self, url: &str, renew: bool) -> Result<reqwest::Response, String> {
        let auth = self.auth.header(&self.http, renew).await?;
        let mut req = self
            .http
            .get(url)
            .timeout(self.timeout)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(value) = auth {
            req = req.header(reqwest::header::AUTHORIZATION, value);
        }
        req.send().await.map_err(|e| {
            if e.is_timeout() {
                "metadata source timed out".to_string()
            } else {
                format!("metadata source unreachable: {}", e.without_url())
            }
        })
    }
}

/// Reads the body of a successful (2xx) metadata answer: JSON, the client
/// object at `response_pointer`, its fields at `fields`. Public so that the
/// fuzz target can drive it without a server.
pub fn parse_answer(
    client_id: &str,
    body: &[u8],
    response_pointer: &str,
    fields: &FieldPointers,
) -> Result<Lookup, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "metadata answer is not JSON".to_string())?;
    // A search endpoint answers 200 with an empty list for an unknown
    // client: nothing at the pointer is "no such client", as a 404 is.
    let Some(object) = doc.pointer(response_pointer) else {
        return Ok(Lookup::NotFound);
    };
    let meta = from_json(client_id, object, fields)?;
    Ok(Lookup::Found(Arc::new(meta)))
}

async fn read_limited(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("metadata answer cut short: {}", e.without_url()))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err("metadata answer too large".into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_cannot_escape_their_path_segment() {
        let enc = utf8_percent_encode("../admin?x=1#y/z", SEGMENT).to_string();
        assert_eq!(enc, "..%2Fadmin%3Fx%3D1%23y%2Fz");
        assert_eq!(
            utf8_percent_encode("abc-1.2_3~", SEGMENT).to_string(),
            "abc-1.2_3~"
        );
    }
}
