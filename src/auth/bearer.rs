//! `Authorization: Bearer <token>` extraction (RFC 6750 §2.1).

use http::header::AUTHORIZATION;
use http::HeaderMap;

use crate::error::{GatewayError, TokenFault};

/// Longest bearer token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The bearer token of a request.
///
/// `Ok(None)` when there is no `Authorization` header. The scheme is matched
/// case-insensitively and must be followed by one or more spaces and a
/// `b64token` (`A-Za-z0-9-._~+/` then optional `=` padding). Another scheme,
/// an empty token or a non-ASCII value is [`TokenFault::BadScheme`]; a token
/// with characters outside `b64token` or over [`MAX_TOKEN_BYTES`] is
/// [`TokenFault::Malformed`]. Two `Authorization` headers are
/// [`GatewayError::DuplicateHeader`] (routing normally refuses them first).
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, GatewayError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(GatewayError::DuplicateHeader("authorization"));
    }
    let bad_scheme = GatewayError::InvalidToken(TokenFault::BadScheme);
    // `to_str` accepts visible ASCII (and tab) only.
    let value = value.to_str().map_err(|_| bad_scheme.clone())?;
    let Some((scheme, rest)) = value.split_once(' ') else {
        return Err(bad_scheme);
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(bad_scheme);
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() {
        return Err(bad_scheme);
    }
    if token.len() > MAX_TOKEN_BYTES || !is_b64token(token.as_bytes()) {
        return Err(GatewayError::InvalidToken(TokenFault::Malformed));
    }
    Ok(Some(token))
}

/// RFC 6750 `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(token: &[u8]) -> bool {
    let body_len = token.len() - token.iter().rev().take_while(|&&b| b == b'=').count();
    // One table load per byte: this runs over every request's token (~1 KB).
    body_len > 0 && token[..body_len].iter().all(|&b| B64TOKEN[usize::from(b)])
}

/// The bytes [`is_b64token`] allows before the `=` padding.
static B64TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] =
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    fn fault(values: &[&[u8]]) -> GatewayError {
        bearer_token(&with(values)).unwrap_err()
    }

    const BAD_SCHEME: GatewayError = GatewayError::InvalidToken(TokenFault::BadScheme);
    const MALFORMED: GatewayError = GatewayError::InvalidToken(TokenFault::Malformed);

    #[test]
    fn absent_header_is_none() {
        assert_eq!(bearer_token(&HeaderMap::new()), Ok(None));
    }

    #[test]
    fn accepts_bearer_any_case_and_spaces() {
        for (v, t) in [
            (&b"Bearer abc.def.ghi"[..], "abc.def.ghi"),
            (b"bearer abc", "abc"),
            (b"BEARER   a-b_c~d+e/f==", "a-b_c~d+e/f=="),
            (b"bEaReR x", "x"),
        ] {
            let h = with(&[v]);
            assert_eq!(bearer_token(&h), Ok(Some(t)));
        }
    }

    #[test]
    fn refuses_other_schemes_and_empty_tokens() {
        for v in [
            &b"Basic dXNlcjpwYXNz"[..],
            b"Bearer",
            b"Bearer ",
            b"Bearer    ",
            b"Bearerabc",
            b"Bearer\tabc",
            b"Token abc",
            b"",
            b" Bearer abc",
        ] {
            assert_eq!(fault(&[v]), BAD_SCHEME, "{:?}", String::from_utf8_lossy(v));
        }
        assert_eq!(fault(&["Bearer abcé".as_bytes()]), BAD_SCHEME);
        assert_eq!(fault(&[b"Bearer \xff\xfe"]), BAD_SCHEME);
    }

    #[test]
    fn refuses_bad_token_chars() {
        for v in [
            &b"Bearer a b"[..],
            b"Bearer abc ",
            b"Bearer a=b",
            b"Bearer ===",
            b"Bearer a,b",
            b"Bearer a\"b",
            b"Bearer a\tb",
            b"Bearer a%2e",
        ] {
            assert_eq!(fault(&[v]), MALFORMED, "{:?}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn bounds_token_length() {
        let ok = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES));
        assert_eq!(
            bearer_token(&with(&[ok.as_bytes()]))
                .unwrap()
                .unwrap()
                .len(),
            MAX_TOKEN_BYTES
        );
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert_eq!(fault(&[long.as_bytes()]), MALFORMED);
    }

    #[test]
    fn refuses_two_headers() {
        assert_eq!(
            fault(&[b"Bearer a", b"Bearer b"]),
            GatewayError::DuplicateHeader("authorization")
        );
    }
}
