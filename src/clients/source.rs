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
    /// The source answered, but not with a usable record of this client
    /// (why, for the log). An answer is not an outage: the directory never
    /// caches it and never serves an older record in its place.
    Invalid(Arc<str>),
    /// The source refused the gateway's question (a 4xx other than 404, 408
    /// or 429: the gateway's credential is rejected, the URL is wrong). Not an
    /// outage either: nothing cached, nothing served stale, 503.
    SourceRefused(Arc<str>),
}

impl Lookup {
    /// Why an answer refuses the request without being a fact to cache
    /// ([`Lookup::Invalid`], [`Lookup::SourceRefused`]).
    pub fn refusal(&self) -> Option<&str> {
        match self {
            Lookup::Invalid(reason) | Lookup::SourceRefused(reason) => Some(reason),
            Lookup::Found(_) | Lookup::NotFound => None,
        }
    }
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
    /// Shared with other users of the same credential.
    pub auth: Arc<TokenSource>,
    pub http: reqwest::Client,
}

impl HttpSource {
    /// Ask the service. `Err` is an outage of the source (unreachable,
    /// timeout, a body cut short, 5xx, 408, 429) — never "allow". Any other
    /// answer is final for this request: found, not found (404 or nothing at
    /// `response_pointer`), [`Lookup::Invalid`] or [`Lookup::SourceRefused`].
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
        if status.is_server_error()
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        {
            return Err(format!("metadata source answered {}", status.as_u16()));
        }
        if !status.is_success() {
            return Ok(Lookup::SourceRefused(
                format!("metadata source answered {}", status.as_u16()).into(),
            ));
        }
        let body = match read_limited(resp).await? {
            Some(body) => body,
            None => return Ok(invalid("metadata answer too large".into())),
        };
        Ok(parse_answer(
            client_id,
            &body,
            &self.response_pointer,
            &self.fields,
        ))
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

fn invalid(reason: String) -> Lookup {
    Lookup::Invalid(reason.into())
}

/// Reads the body of a successful (2xx) metadata answer: JSON, the client
/// object at `response_pointer`, its fields at `fields`. Anything unusable
/// is [`Lookup::Invalid`]. Public so that the fuzz target can drive it
/// without a server.
pub fn parse_answer(
    client_id: &str,
    body: &[u8],
    response_pointer: &str,
    fields: &FieldPointers,
) -> Lookup {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body) else {
        return invalid("metadata answer is not JSON".into());
    };
    // A search endpoint answers 200 with an empty list for an unknown
    // client: nothing at the pointer is "no such client", as a 404 is.
    let Some(object) = doc.pointer(response_pointer) else {
        return Lookup::NotFound;
    };
    match from_json(client_id, object, fields) {
        Ok(meta) => Lookup::Found(Arc::new(meta)),
        Err(reason) => invalid(reason),
    }
}

/// The whole answer; `None` when it is larger than [`MAX_ANSWER_BYTES`];
/// `Err` when the transfer fails (an outage, not an answer).
async fn read_limited(mut resp: reqwest::Response) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("metadata answer cut short: {}", e.without_url()))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
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
