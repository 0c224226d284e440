//! The gateway's own bearer token for talking to the IAM service: a fixed
//! one from the environment, or one obtained by OAuth 2.0 client_credentials
//! (RFC 6749 §4.4), cached and renewed before it expires.

use std::time::{Duration, Instant};

use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::config::model::Secret;

/// Renew this long before the token's announced expiry.
const RENEW_MARGIN: Duration = Duration::from_secs(30);
/// Lifetime assumed when the token endpoint gives no `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// The longest a token is kept, whatever `expires_in` says: a hostile or
/// broken endpoint cannot make the gateway keep a token for ever (or
/// overflow the clock arithmetic with `expires_in = 2^64 - 1`).
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// How the gateway authenticates to a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    None,
    Bearer(Secret),
    ClientCredentials {
        token_url: String,
        client_id: String,
        client_secret: Secret,
        scope: Option<String>,
    },
}

/// A credential plus the cached token it produced.
pub struct TokenSource {
    credential: Credential,
    cached: Mutex<Option<(String, Instant)>>,
}

/// When to ask for a new token: before the announced expiry, by
/// [`RENEW_MARGIN`] (or half the lifetime for short-lived tokens), with the
/// lifetime capped at [`MAX_LIFETIME`]. Never overflows.
fn renew_deadline(now: Instant, expires_in: Option<u64>) -> Instant {
    let lifetime = expires_in
        .map(|s| Duration::from_secs(s).min(MAX_LIFETIME))
        .unwrap_or(DEFAULT_LIFETIME);
    let keep = lifetime.saturating_sub(RENEW_MARGIN.min(lifetime / 2));
    now.checked_add(keep).unwrap_or(now)
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenSource {
    pub fn new(credential: Credential) -> TokenSource {
        TokenSource {
            credential,
            cached: Mutex::new(None),
        }
    }

    /// Whether a 401 from the service is worth one renewal.
    pub fn renewable(&self) -> bool {
        matches!(self.credential, Credential::ClientCredentials { .. })
    }

    /// The `Authorization` value to send, or None. `force` discards a cached
    /// token (after the service answered 401). Concurrent callers share one
    /// token request: the lock is held across it.
    pub async fn header(
        &self,
        http: &reqwest::Client,
        force: bool,
    ) -> Result<Option<String>, String> {
        match &self.credential {
            Credential::None => Ok(None),
            Credential::Bearer(secret) => {
                let token =
                    std::str::from_utf8(&secret.0).map_err(|_| "bearer token is not UTF-8")?;
                Ok(Some(format!("Bearer {token}")))
            }
            Credential::ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scope,
            } => {
                let mut cached = self.cached.lock().await;
                if !force {
                    if let Some((token, renew_at)) = cached.as_ref() {
                        if Instant::now() < *renew_at {
                            return Ok(Some(format!("Bearer {token}")));
                        }
                    }
                }
                let mut form = vec![("grant_type", "client_credentials")];
                if let Some(scope) = scope {
                    form.push(("scope", scope.as_str()));
                }
                let resp = http
                    .post(token_url)
                    .header(
                        http::header::AUTHORIZATION,
                        basic_authorization(client_id, &client_secret.0)?,
                    )
                    .header(http::header::ACCEPT, "application/json")
                    .form(&form)
                    .send()
                    .await
                    .map_err(|e| format!("token endpoint unreachable: {}", e.without_url()))?;
                if !resp.status().is_success() {
                    return Err(format!(
                        "token endpoint answered {}",
                        resp.status().as_u16()
                    ));
                }
                let body: TokenResponse = resp
                    .json()
                    .await
                    .map_err(|_| "token endpoint answer is not a token response".to_string())?;
                let renew_at = renew_deadline(Instant::now(), body.expires_in);
                let header = format!("Bearer {}", body.access_token);
                *cached = Some((body.access_token, renew_at));
                Ok(Some(header))
            }
        }
    }
}

impl TokenSource {
    /// Forget the cached token if it is still the one in `sent` (an
    /// `Authorization` value this source produced) — after the service
    /// answered 401 to it — so the next request obtains a new one. A token
    /// renewed meanwhile is kept.
    pub async fn discard(&self, sent: &str) {
        let mut cached = self.cached.lock().await;
        let stale = cached
            .as_ref()
            .is_some_and(|(token, _)| sent.strip_prefix("Bearer ") == Some(token.as_str()));
        if stale {
            *cached = None;
        }
    }

    /// The credential this source presents.
    pub fn credential(&self) -> &Credential {
        &self.credential
    }
}

/// Characters `application/x-www-form-urlencoded` leaves as they are
/// (alphanumerics and `*-._`, WHATWG URL §5.2); a space becomes `+`.
const FORM: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_');

/// One value form-urlencoded (RFC 6749 Appendix B).
pub fn form_urlencode(value: &[u8]) -> String {
    percent_encode(value, FORM).to_string().replace("%20", "+")
}

/// HTTP Basic client authentication as RFC 6749 §2.3.1 (and RFC 7662 §2.1)
/// define it: the client id and the secret are each form-urlencoded first,
/// so an id with `:` or a secret with `%` reaches the server unchanged.
/// Marked sensitive so no debug output prints it.
pub fn basic_authorization(client_id: &str, secret: &[u8]) -> Result<http::HeaderValue, String> {
    use base64::Engine as _;
    let pair = format!(
        "{}:{}",
        form_urlencode(client_id.as_bytes()),
        form_urlencode(secret)
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
    let mut value = http::HeaderValue::from_str(&format!("Basic {encoded}"))
        .map_err(|_| "client credentials are not a valid header value".to_string())?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_urlencoded_first() {
        assert_eq!(form_urlencode(b"a:b"), "a%3Ab");
        assert_eq!(form_urlencode(b"s%cr t+/="), "s%25cr+t%2B%2F%3D");
        assert_eq!(form_urlencode(b"Az09*-._~"), "Az09*-._%7E");
        let v = basic_authorization("a:b", b"p%ss").unwrap();
        // base64("a%3Ab:p%25ss")
        assert_eq!(v.to_str().unwrap(), "Basic YSUzQWI6cCUyNXNz");
        assert!(v.is_sensitive());
    }

    #[test]
    fn renewal_is_capped_and_never_overflows() {
        let now = Instant::now();
        let at = renew_deadline(now, Some(u64::MAX));
        assert!(at > now && at <= now + MAX_LIFETIME);
        assert_eq!(
            renew_deadline(now, Some(3600)),
            now + Duration::from_secs(3570)
        );
        assert_eq!(renew_deadline(now, Some(20)), now + Duration::from_secs(10));
        assert_eq!(renew_deadline(now, Some(0)), now);
        assert_eq!(
            renew_deadline(now, None),
            now + DEFAULT_LIFETIME - RENEW_MARGIN
        );
    }
}
