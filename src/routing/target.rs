//! Request-target and header checks: step 1 of the request path.
//!
//! Everything here refuses requests that a server behind the gateway could
//! read differently from the gateway: non-origin-form targets, tokens and
//! method overrides in the query, ambiguous framing (which Pingora partly
//! hides: it drops `Content-Length` when `Transfer-Encoding` is present, so
//! the raw header block is scanned too), override headers and header names
//! that alias gateway headers once `_` becomes `-`.

use http::header::{
    AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, Method};

use super::path::{hex_val, validate_path};
use crate::error::GatewayError;

/// Limits on the request head and declared body (`[server]` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Request line plus headers, in bytes → 431 beyond.
    pub max_header_bytes: usize,
    /// Number of header lines → 431 beyond.
    pub max_headers: usize,
    /// Declared `Content-Length` → 413 beyond.
    pub max_body_bytes: u64,
}

impl Default for RequestLimits {
    /// The documented defaults: 32 KiB of headers, 100 headers, 64 KiB body.
    fn default() -> Self {
        RequestLimits {
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_body_bytes: 64 * 1024,
        }
    }
}

/// An origin-form request target that passed every check. Both parts are
/// slices of the raw target: what matched is what goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedTarget<'a> {
    /// The path, starting with `/`, still percent-encoded.
    pub path: &'a str,
    /// The query without the `?`, if there was a `?`.
    pub query: Option<&'a str>,
}

/// Headers that change the method behind the router's back.
const METHOD_OVERRIDE: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Headers that change the path behind the router's back.
const PATH_OVERRIDE: [&str; 4] = [
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-override-url",
];

/// Headers the gateway reads or sets; a `_` spelling of one of them is refused
/// because CGI-style servers and some proxies treat `_` and `-` alike.
const SENSITIVE: [&str; 10] = [
    "authorization",
    "host",
    "content-length",
    "transfer-encoding",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-real-ip",
    "x-request-id",
];

/// Headers a client may never nominate in `Connection`: removing them as
/// hop-by-hop would change the credential, framing, media type or routing
/// of what goes upstream.
const NEVER_NOMINATED: [&str; 5] = [
    "authorization",
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
];

/// Prefix of the identity headers the gateway sets for the upstream.
const GATEWAY_PREFIX: &str = "x-portcullis-";

/// Longest header name echoed back in an error message.
const MAX_ECHOED_NAME: usize = 64;

/// Checks the request target and headers before routing.
///
/// * `raw_target` — the request-target bytes exactly as sent.
/// * `raw_header_block` — request line and headers as read from the wire
///   (`None` for HTTP/2); used for what the parsed `headers` no longer show.
///
/// Allocates nothing unless it refuses the request.
pub fn check_request<'a>(
    method: &Method,
    raw_target: &'a [u8],
    headers: &HeaderMap,
    raw_header_block: Option<&[u8]>,
    limits: &RequestLimits,
) -> Result<CheckedTarget<'a>, GatewayError> {
    match raw_header_block {
        Some(block) => {
            check_raw_block(block, limits)?;
            // The parser drops a fragment (and may re-escape bytes) before the
            // gateway sees the target: what was sent must be what is checked.
            if let Some(sent) = request_line_target(block) {
                if sent != raw_target {
                    return Err(if sent.contains(&b'#') {
                        GatewayError::InvalidPath("fragment")
                    } else {
                        GatewayError::InvalidRequestTarget("request target altered by parsing")
                    });
                }
            }
        }
        None => check_header_map_size(headers, limits)?,
    }
    let target = check_target(method, raw_target)?;
    check_headers(headers, limits)?;
    Ok(target)
}

/// Step 1 on a raw HTTP/1 head, before pingora's own parser reads it.
///
/// Pingora refuses some heads itself with a bare `400`/`405` (two `Host`
/// fields, conflicting `Content-Length`, a `Transfer-Encoding` other than
/// `chunked`, absolute-form targets naming another host, `CONNECT`, bytes
/// its URI parser rejects). The edge runs this first so those get the
/// gateway's answer. Everything refused here is refused by pingora or by
/// [`check_request`] too, so it never changes what is allowed; it only
/// answers earlier.
///
/// * `method`, `raw_target` — from the request line, as sent;
/// * `http10` — the request line says `HTTP/1.0`;
/// * `headers` — every header field as (name, value) bytes, in order;
/// * `raw_header_block` — request line and headers as read from the wire.
pub fn check_raw_head<'h>(
    method: &[u8],
    raw_target: &[u8],
    http10: bool,
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    raw_header_block: &[u8],
    limits: &RequestLimits,
) -> Result<(), GatewayError> {
    check_raw_block(raw_header_block, limits)?;
    let method = Method::from_bytes(method)
        .map_err(|_| GatewayError::InvalidRequestTarget("malformed request line"))?;
    check_target(&method, raw_target)?;
    check_uri_grammar(raw_target)?;
    let mut host = false;
    let mut transfer_encoding = false;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case(b"host") {
            if host {
                return Err(GatewayError::DuplicateHeader("host"));
            }
            host = true;
            if value.contains(&b'@') {
                return Err(GatewayError::ForbiddenHeader(
                    "host with userinfo".to_owned(),
                ));
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            parse_content_length(value)?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if transfer_encoding {
                return Err(GatewayError::InvalidFraming("repeated Transfer-Encoding"));
            }
            transfer_encoding = true;
            if !trim_ows(value).eq_ignore_ascii_case(b"chunked") {
                return Err(GatewayError::InvalidFraming(
                    "Transfer-Encoding other than chunked",
                ));
            }
            if http10 {
                return Err(GatewayError::InvalidFraming(
                    "Transfer-Encoding in an HTTP/1.0 request",
                ));
            }
        }
    }
    Ok(())
}

/// Why a head that the HTTP/1 grammar does not accept is refused: the
/// request line's own fault when it has one, else a malformed header line.
pub fn classify_malformed_head(raw_header_block: &[u8]) -> GatewayError {
    let Some(line) = head_lines(raw_header_block).find(|l| !l.is_empty()) else {
        return GatewayError::InvalidRequestTarget("malformed request line");
    };
    let parts: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
    let [method, target, version] = parts.as_slice() else {
        return GatewayError::InvalidRequestTarget("malformed request line");
    };
    let method_ok = !method.is_empty()
        && method
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b));
    if !method_ok || !matches!(*version, b"HTTP/1.1" | b"HTTP/1.0") {
        return GatewayError::InvalidRequestTarget("malformed request line");
    }
    if let Err(e) = check_target(&Method::GET, target).and_then(|_| check_uri_grammar(target)) {
        return e;
    }
    GatewayError::InvalidFraming("malformed header line")
}

/// Refuses a target (already checked by [`check_target`]) that the `http`
/// crate's URI parser, which pingora builds its request from, would not
/// accept. Only a target with a byte outside the plain URI characters is
/// given to that parser.
fn check_uri_grammar(raw_target: &[u8]) -> Result<(), GatewayError> {
    let plain = |b: &u8| b.is_ascii_alphanumeric() || b"-._~/?#[]@!$&'()*+,;=%:".contains(b);
    if raw_target.iter().all(plain) {
        return Ok(());
    }
    if http::uri::PathAndQuery::try_from(raw_target).is_ok() {
        return Ok(());
    }
    let query_start = raw_target.iter().position(|b| *b == b'?');
    let bad = raw_target.iter().position(|b| !plain(b));
    Err(match (bad, query_start) {
        (Some(bad), Some(q)) if bad > q => {
            GatewayError::InvalidRequestTarget("character not allowed in a URI query")
        }
        _ => GatewayError::InvalidPath("character not allowed in a URI"),
    })
}

// === request target ===

/// The request-target of the raw request line (`METHOD SP target SP version`),
/// skipping blank lines a client may send first (RFC 9112 §2.2).
pub fn request_line_target(block: &[u8]) -> Option<&[u8]> {
    let line = head_lines(block).find(|l| !l.is_empty())?;
    let mut parts = line.split(|b| *b == b' ').filter(|p| !p.is_empty());
    parts.next()?;
    parts.next()
}

fn check_target<'a>(method: &Method, raw: &'a [u8]) -> Result<CheckedTarget<'a>, GatewayError> {
    if *method == Method::CONNECT {
        return Err(GatewayError::InvalidRequestTarget(
            "authority-form (CONNECT) is not proxied",
        ));
    }
    match raw.first() {
        Some(b'/') => {}
        None => return Err(GatewayError::InvalidRequestTarget("empty request target")),
        Some(b'*') if raw.len() == 1 => {
            return Err(GatewayError::InvalidRequestTarget("asterisk-form"))
        }
        Some(_) if raw.windows(3).any(|w| w == b"://") => {
            return Err(GatewayError::InvalidRequestTarget("absolute-form"))
        }
        Some(_) => {
            return Err(GatewayError::InvalidRequestTarget(
                "authority-form or not a path",
            ))
        }
    }
    for &b in raw {
        match b {
            b'#' => return Err(GatewayError::InvalidPath("fragment")),
            0x21..=0x7E => {}
            _ => {
                return Err(GatewayError::InvalidPath(
                    "space, control or non-ASCII character",
                ))
            }
        }
    }
    let target =
        std::str::from_utf8(raw).map_err(|_| GatewayError::InvalidPath("invalid UTF-8"))?;
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    validate_path(path)?;
    if let Some(query) = query {
        check_query(query)?;
    }
    Ok(CheckedTarget { path, query })
}

/// Refuses a bearer token (`access_token`, RFC 6750 §2.3) or a method override
/// (`_method`) among the query parameters. `;` counts as a separator too, as
/// some frameworks split on it.
fn check_query(query: &str) -> Result<(), GatewayError> {
    check_params(query.as_bytes(), "_method query parameter")
}

/// The same for an `application/x-www-form-urlencoded` body, which
/// frameworks merge with the query (`_method` in a form is Rails' and
/// Laravel's method override; `access_token` is RFC 6750 §2.2). Read as
/// bytes: a body need not be UTF-8.
pub fn check_form_body(body: &[u8]) -> Result<(), GatewayError> {
    check_params(body, "_method form field")
}

fn check_params(params: &[u8], method_override: &str) -> Result<(), GatewayError> {
    for param in params.split(|b| matches!(b, b'&' | b';')) {
        let name = match param.iter().position(|b| *b == b'=') {
            Some(eq) => &param[..eq],
            None => param,
        };
        if name.is_empty() {
            continue;
        }
        if param_name_is(name, "access_token") {
            return Err(GatewayError::TokenInQuery);
        }
        if param_name_is(name, "_method") {
            return Err(GatewayError::OverrideHeader(method_override.to_owned()));
        }
    }
    Ok(())
}

/// `Content-Type: application/x-www-form-urlencoded` (any case, any parameters).
pub fn is_form_urlencoded(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        ct.split(';').next().is_some_and(|t| {
            t.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
    })
}

/// Whether a raw query parameter name means `want` (lowercase, `_` for
/// separators) to a lenient form decoder: percent-escapes and `+` decoded,
/// case ignored, leading spaces skipped, ` ` and `.` read as `_` and an array
/// suffix (`name[]`) dropped — as PHP does.
fn param_name_is(raw: &[u8], want: &str) -> bool {
    let mut want = want.bytes();
    let mut i = 0;
    let mut leading = true;
    while i < raw.len() {
        let mut b = raw[i];
        i += 1;
        if b == b'%' {
            if let (Some(h), Some(l)) = (
                raw.get(i).and_then(|&c| hex_val(c)),
                raw.get(i + 1).and_then(|&c| hex_val(c)),
            ) {
                b = (h << 4) | l;
                i += 2;
            }
        } else if b == b'+' {
            b = b' ';
        }
        if leading && b == b' ' {
            continue;
        }
        leading = false;
        let b = match b {
            b'[' => break,
            b' ' | b'.' => b'_',
            b => b.to_ascii_lowercase(),
        };
        if want.next() != Some(b) {
            return false;
        }
    }
    !leading && want.next().is_none()
}

// === header sizes and raw framing ===

/// Scans the raw request head for what Pingora's parsed headers hide: both
/// `Content-Length` and `Transfer-Encoding` (Pingora drops the former), a
/// repeated or listed `Content-Length`, obsolete line folding; and enforces
/// the header limits.
/// The lines of a raw request head, split at `\n` without their `\r`
/// (as `split` would, but found with memchr: a head carrying a bearer token
/// is kilobytes long and this runs on every request).
fn head_lines(block: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    let mut rest = Some(block);
    std::iter::from_fn(move || {
        let current = rest?;
        let (line, next) = match memchr::memchr(b'\n', current) {
            Some(i) => (&current[..i], Some(&current[i + 1..])),
            None => (current, None),
        };
        rest = next;
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    })
}

fn check_raw_block(block: &[u8], limits: &RequestLimits) -> Result<(), GatewayError> {
    if block.len() > limits.max_header_bytes {
        return Err(GatewayError::HeadersTooLarge("headers too large"));
    }
    let mut lines = head_lines(block)
        // Empty lines before the request line are tolerated by parsers.
        .skip_while(|line| line.is_empty());
    let _request_line = lines.next();

    let mut count = 0usize;
    let mut content_length = false;
    let mut transfer_encoding = false;
    for line in lines {
        let Some(&first) = line.first() else {
            break; // end of the head
        };
        if first == b' ' || first == b'\t' {
            return Err(GatewayError::InvalidFraming("obsolete line folding"));
        }
        count += 1;
        if count > limits.max_headers {
            return Err(GatewayError::HeadersTooLarge("too many headers"));
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(GatewayError::InvalidFraming("header line without ':'"));
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.iter().any(|b| b.is_ascii_whitespace()) {
            return Err(GatewayError::InvalidFraming("whitespace in header name"));
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if content_length {
                return Err(GatewayError::InvalidFraming("repeated Content-Length"));
            }
            if value.contains(&b',') {
                return Err(GatewayError::InvalidFraming("Content-Length list"));
            }
            content_length = true;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
        }
        if content_length && transfer_encoding {
            return Err(GatewayError::InvalidFraming(
                "Content-Length with Transfer-Encoding",
            ));
        }
    }
    Ok(())
}

/// Header limits when there is no raw block (HTTP/2): each header counts as
/// `name: value\r\n`.
fn check_header_map_size(headers: &HeaderMap, limits: &RequestLimits) -> Result<(), GatewayError> {
    if headers.len() > limits.max_headers {
        return Err(GatewayError::HeadersTooLarge("too many headers"));
    }
    let bytes = headers.iter().fold(0usize, |sum, (n, v)| {
        sum.saturating_add(n.as_str().len() + v.len() + 4)
    });
    if bytes > limits.max_header_bytes {
        return Err(GatewayError::HeadersTooLarge("headers too large"));
    }
    Ok(())
}

// === parsed headers ===

/// One pass over the parsed headers (names are lowercase in a `HeaderMap`).
fn check_headers(headers: &HeaderMap, limits: &RequestLimits) -> Result<(), GatewayError> {
    let mut host = false;
    let mut authorization = false;
    let mut content_length = false;
    let mut transfer_encoding = false;
    let mut content_type = false;
    for (name, value) in headers {
        if *name == HOST {
            if host {
                return Err(GatewayError::DuplicateHeader("host"));
            }
            host = true;
        } else if *name == AUTHORIZATION {
            if authorization {
                return Err(GatewayError::DuplicateHeader("authorization"));
            }
            authorization = true;
        } else if *name == CONTENT_LENGTH {
            if content_length {
                return Err(GatewayError::InvalidFraming("repeated Content-Length"));
            }
            content_length = true;
            let declared = parse_content_length(value.as_bytes())?;
            if declared > limits.max_body_bytes {
                return Err(GatewayError::BodyTooLarge(limits.max_body_bytes));
            }
        } else if *name == TRANSFER_ENCODING {
            if transfer_encoding {
                return Err(GatewayError::InvalidFraming("repeated Transfer-Encoding"));
            }
            transfer_encoding = true;
            if !trim_ows(value.as_bytes()).eq_ignore_ascii_case(b"chunked") {
                return Err(GatewayError::InvalidFraming(
                    "Transfer-Encoding other than chunked",
                ));
            }
        } else if *name == CONTENT_TYPE {
            if content_type {
                return Err(GatewayError::DuplicateHeader("content-type"));
            }
            content_type = true;
        } else if *name == UPGRADE {
            return Err(GatewayError::ForbiddenHeader("upgrade".to_owned()));
        } else if *name == CONNECTION {
            check_nominations(value.as_bytes(), NEVER_NOMINATED.iter().copied())?;
        } else {
            check_header_name(name.as_str())?;
        }
    }
    if content_length && transfer_encoding {
        return Err(GatewayError::InvalidFraming(
            "Content-Length with Transfer-Encoding",
        ));
    }
    Ok(())
}

/// Override headers and `_` aliases of gateway headers.
fn check_header_name(name: &str) -> Result<(), GatewayError> {
    let has_underscore = name.contains('_');
    let x_prefixed = name.starts_with("x-") || name.starts_with("x_");
    if x_prefixed
        && METHOD_OVERRIDE
            .iter()
            .chain(PATH_OVERRIDE.iter())
            .any(|o| alias_eq(name, o))
    {
        return Err(GatewayError::OverrideHeader(echo_name(name)));
    }
    if has_underscore {
        let gateway = name.len() > GATEWAY_PREFIX.len()
            && name.is_char_boundary(GATEWAY_PREFIX.len())
            && alias_eq(&name[..GATEWAY_PREFIX.len()], GATEWAY_PREFIX);
        if gateway || SENSITIVE.iter().any(|s| alias_eq(name, s)) {
            return Err(GatewayError::ForbiddenHeader(echo_name(name)));
        }
    }
    Ok(())
}

/// Route-specific header protection: the headers the gateway sets from the
/// token (`pin_headers`) or from its own credential (an upstream's `auth`
/// header) can be neither nominated in `Connection` nor sent under a `_`
/// alias that CGI-style servers would read as the same name.
pub fn check_protected_headers<'p>(
    headers: &HeaderMap,
    protected: impl Iterator<Item = &'p str> + Clone,
) -> Result<(), GatewayError> {
    for (name, value) in headers {
        if *name == CONNECTION {
            check_nominations(value.as_bytes(), protected.clone())?;
        } else if name.as_str().contains('_')
            && protected.clone().any(|p| alias_eq(name.as_str(), p))
        {
            return Err(GatewayError::ForbiddenHeader(echo_name(name.as_str())));
        }
    }
    Ok(())
}

/// Refuses a `Connection` value that nominates one of `names` (in any case
/// or `_` spelling), read as bytes so no invalid byte hides a nomination.
fn check_nominations<'p>(
    value: &[u8],
    names: impl Iterator<Item = &'p str> + Clone,
) -> Result<(), GatewayError> {
    for token in value.split(|b| *b == b',') {
        let Ok(token) = std::str::from_utf8(token.trim_ascii()) else {
            continue;
        };
        if let Some(hit) = names.clone().find(|n| alias_eq(token, n)) {
            return Err(GatewayError::ForbiddenHeader(format!(
                "Connection nominates {hit}"
            )));
        }
    }
    Ok(())
}

/// `name` equals `target` (lowercase, with `-`) when `_` is read as `-`.
pub(crate) fn alias_eq(name: &str, target: &str) -> bool {
    name.len() == target.len()
        && name.bytes().zip(target.bytes()).all(|(n, t)| {
            let n = if n == b'_' {
                b'-'
            } else {
                n.to_ascii_lowercase()
            };
            n == t
        })
}

/// A header name fit to appear in an error message: plain visible ASCII,
/// bounded in length.
fn echo_name(name: &str) -> String {
    if !name.bytes().all(|b| (0x21..=0x7E).contains(&b)) {
        return "(unprintable header name)".to_owned();
    }
    match name.get(..MAX_ECHOED_NAME) {
        Some(prefix) if name.len() > MAX_ECHOED_NAME => format!("{prefix}..."),
        _ => name.to_owned(),
    }
}

/// A plain decimal `Content-Length` (optional surrounding spaces/tabs).
fn parse_content_length(value: &[u8]) -> Result<u64, GatewayError> {
    let digits = trim_ows(value);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(GatewayError::InvalidFraming(
            "Content-Length is not a decimal number",
        ));
    }
    // Only digits: overflow means "more than any limit".
    Ok(digits.iter().fold(0u64, |n, &d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// Strip optional whitespace (RFC 9110 OWS: spaces and tabs) around a value
/// or list element.
pub(crate) fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

#[cfg(test)]
mod request_line_tests {
    use super::*;

    #[test]
    fn head_lines_split_like_split() {
        for block in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET / HTTP/1.1\nA: b\n\n",
            b"\r\nGET / HTTP/1.1\r\nA: b",
            b"",
            b"\n",
        ] {
            let expected: Vec<&[u8]> = block
                .split(|b| *b == b'\n')
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                .collect();
            assert_eq!(head_lines(block).collect::<Vec<_>>(), expected);
        }
    }

    #[test]
    fn fragment_dropped_by_the_parser_is_caught() {
        let block = b"GET /a#b HTTP/1.1\r\nHost: x\r\n\r\n";
        let err = check_request(
            &Method::GET,
            b"/a",
            &HeaderMap::new(),
            Some(block),
            &RequestLimits::default(),
        )
        .unwrap_err();
        assert_eq!(err, GatewayError::InvalidPath("fragment"));
        let ok = b"\r\nGET /a?x=1 HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(check_request(
            &Method::GET,
            b"/a?x=1",
            &HeaderMap::new(),
            Some(ok),
            &RequestLimits::default()
        )
        .is_ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderName, HeaderValue};

    fn limits() -> RequestLimits {
        RequestLimits {
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_body_bytes: 1000,
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn target(t: &str) -> Result<CheckedTarget<'_>, GatewayError> {
        check_request(
            &Method::GET,
            t.as_bytes(),
            &HeaderMap::new(),
            None,
            &limits(),
        )
    }

    fn with_headers(pairs: &[(&str, &str)]) -> Result<(), GatewayError> {
        check_request(&Method::POST, b"/a", &map(pairs), None, &limits()).map(|_| ())
    }

    fn with_block(block: &str) -> Result<(), GatewayError> {
        check_request(
            &Method::POST,
            b"/a",
            &HeaderMap::new(),
            Some(block.as_bytes()),
            &limits(),
        )
        .map(|_| ())
    }

    #[test]
    fn accepts_origin_form_targets() {
        assert_eq!(
            target("/v1.0/apiclients/abc-123"),
            Ok(CheckedTarget {
                path: "/v1.0/apiclients/abc-123",
                query: None
            })
        );
        assert_eq!(
            target("/api/2/apps/42?x=1"),
            Ok(CheckedTarget {
                path: "/api/2/apps/42",
                query: Some("x=1")
            })
        );
        assert_eq!(target("/a/b/").map(|t| t.path), Ok("/a/b/"));
        assert_eq!(target("/a%20b").map(|t| t.path), Ok("/a%20b"));
        assert_eq!(target("/").map(|t| t.path), Ok("/"));
        assert_eq!(target("/a?").map(|t| t.query), Ok(Some("")));
        assert_eq!(
            target("/a?b=1?c=/../%2F").map(|t| t.query),
            Ok(Some("b=1?c=/../%2F"))
        );
        for ok in [
            "/a?token=x",
            "/a?my_access_token=x",
            "/a?access_tokens=x",
            "/a?x=access_token=y",
            "/a?method=DELETE",
            "/a?__method=x",
            "/a?&&",
        ] {
            assert!(target(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_non_origin_form() {
        for (t, r) in [
            ("http://evil/x", "absolute-form"),
            ("HTTPS://evil:443/x", "absolute-form"),
            ("*", "asterisk-form"),
            ("example.com:443", "authority-form or not a path"),
            ("", "empty request target"),
        ] {
            assert_eq!(target(t), Err(GatewayError::InvalidRequestTarget(r)), "{t}");
        }
        assert!(matches!(
            check_request(&Method::CONNECT, b"/x", &HeaderMap::new(), None, &limits()),
            Err(GatewayError::InvalidRequestTarget(_))
        ));
        assert!(matches!(
            check_request(&Method::OPTIONS, b"*", &HeaderMap::new(), None, &limits()),
            Err(GatewayError::InvalidRequestTarget("asterisk-form"))
        ));
    }

    #[test]
    fn rejects_bad_paths_in_the_target() {
        for t in [
            "/../etc",
            "/a/./b",
            "/a/%2e%2e/b",
            "/a/%2E%2e/b",
            "/a/.%2E/b",
            "/a%2Fb",
            "/a%2fb",
            "/a\\b",
            "/a;b",
            "/a//b",
            "//a",
            "//evil.example/x",
            "/a%00",
            "/a%0a",
            "/a%0D",
            "/a%252e%252e/",
            "/a%zz",
            "/a%4",
            "/a%",
            "/a%C0%AE%C0%AE/",
            "/a%E0%80%AE",
            "/a%5c",
            "/a%5C",
            "/a/%2e%2e?x=1",
        ] {
            assert!(
                matches!(target(t), Err(GatewayError::InvalidPath(_))),
                "{t}: {:?}",
                target(t)
            );
        }
        assert_eq!(target("/a#b"), Err(GatewayError::InvalidPath("fragment")));
        assert_eq!(target("/a?b#c"), Err(GatewayError::InvalidPath("fragment")));
        for raw in [
            &b"/a b"[..],
            b"/a?b c",
            b"/a\x00",
            b"/\xc3\xa9",
            b"/a?\xff",
            b"/a\r\n",
        ] {
            assert!(
                matches!(
                    check_request(&Method::GET, raw, &HeaderMap::new(), None, &limits()),
                    Err(GatewayError::InvalidPath(_))
                ),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn rejects_tokens_in_query() {
        for t in [
            "/a?access_token=x",
            "/a?a=1&ACCESS_TOKEN=x",
            "/a?access%5Ftoken=x",
            "/a?access%5ftoken=x",
            "/a?%61ccess_token=x",
            "/a?access_token",
            "/a?access_token[]=x",
            "/a?access.token=x",
            "/a?access+token=x",
            "/a?+access_token=x",
            "/a?a=1;access_token=x",
            "/a?Access_Token=",
        ] {
            assert_eq!(target(t), Err(GatewayError::TokenInQuery), "{t}");
        }
    }

    #[test]
    fn rejects_method_override_in_query() {
        for t in [
            "/a?_method=DELETE",
            "/a?x=1&_METHOD=put",
            "/a?%5Fmethod=x",
            "/a?.method=x",
        ] {
            assert_eq!(
                target(t),
                Err(GatewayError::OverrideHeader(
                    "_method query parameter".into()
                )),
                "{t}"
            );
        }
    }

    #[test]
    fn duplicate_host_and_authorization() {
        assert_eq!(
            with_headers(&[("host", "a"), ("Host", "b")]),
            Err(GatewayError::DuplicateHeader("host"))
        );
        assert_eq!(
            with_headers(&[("authorization", "Bearer a"), ("Authorization", "Bearer b")]),
            Err(GatewayError::DuplicateHeader("authorization"))
        );
        assert_eq!(
            with_headers(&[
                ("host", "a"),
                ("authorization", "Bearer a"),
                ("accept", "*/*")
            ]),
            Ok(())
        );
    }

    #[test]
    fn override_headers() {
        for (n, echoed) in [
            ("X-HTTP-Method-Override", "x-http-method-override"),
            ("x-http-method", "x-http-method"),
            ("X-Method-Override", "x-method-override"),
            ("x-original-url", "x-original-url"),
            ("X-Rewrite-URL", "x-rewrite-url"),
            ("X-Original-URI", "x-original-uri"),
            ("X-Override-URL", "x-override-url"),
            ("X_HTTP_Method_Override", "x_http_method_override"),
            ("x_original_url", "x_original_url"),
        ] {
            assert_eq!(
                with_headers(&[(n, "DELETE")]),
                Err(GatewayError::OverrideHeader(echoed.into())),
                "{n}"
            );
        }
    }

    #[test]
    fn upgrade_is_forbidden() {
        assert_eq!(
            with_headers(&[("Upgrade", "websocket")]),
            Err(GatewayError::ForbiddenHeader("upgrade".into()))
        );
    }

    #[test]
    fn underscore_aliases_of_gateway_headers() {
        for n in [
            "x_forwarded_for",
            "X_Portcullis_Client_Id",
            "x-portcullis_subject",
            "x_portcullis-route",
            "content_length",
            "transfer_encoding",
            "x_forwarded_proto",
            "x_forwarded_host",
            "x_real_ip",
            "x_request_id",
            "x-request_id",
        ] {
            assert_eq!(
                with_headers(&[(n, "1")]),
                Err(GatewayError::ForbiddenHeader(n.to_ascii_lowercase())),
                "{n}"
            );
        }
        // Only exact aliases: these are ordinary headers.
        for n in [
            "authorization_",
            "x_forwarded_for_x",
            "my_header",
            "x-portcullis_",
            "x_trace_id",
            "x-forwarded-for",
            "x-real-ip",
        ] {
            assert_eq!(with_headers(&[(n, "1")]), Ok(()), "{n}");
        }
    }

    #[test]
    fn transfer_encoding_must_be_chunked() {
        for te in ["chunked", "Chunked", " CHUNKED "] {
            assert_eq!(with_headers(&[("transfer-encoding", te)]), Ok(()), "{te}");
        }
        for te in [
            "gzip, chunked",
            "chunked, gzip",
            "identity",
            "",
            "chunked;x=1",
            "chunked,",
        ] {
            assert!(
                matches!(
                    with_headers(&[("transfer-encoding", te)]),
                    Err(GatewayError::InvalidFraming(_))
                ),
                "{te}"
            );
        }
        assert_eq!(
            with_headers(&[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked")
            ]),
            Err(GatewayError::InvalidFraming("repeated Transfer-Encoding"))
        );
        assert_eq!(
            with_headers(&[("transfer-encoding", "chunked"), ("content-length", "3")]),
            Err(GatewayError::InvalidFraming(
                "Content-Length with Transfer-Encoding"
            ))
        );
    }

    #[test]
    fn content_length_rules() {
        assert_eq!(with_headers(&[("content-length", "1000")]), Ok(()));
        assert_eq!(with_headers(&[("content-length", " 0 ")]), Ok(()));
        for cl in ["1,1", "1, 1", "-1", "+1", "0x10", "1e3", "", "1 1"] {
            assert!(
                matches!(
                    with_headers(&[("content-length", cl)]),
                    Err(GatewayError::InvalidFraming(_))
                ),
                "{cl:?}"
            );
        }
        assert_eq!(
            with_headers(&[("content-length", "1"), ("content-length", "1")]),
            Err(GatewayError::InvalidFraming("repeated Content-Length"))
        );
        assert_eq!(
            with_headers(&[("content-length", "1001")]),
            Err(GatewayError::BodyTooLarge(1000))
        );
        assert_eq!(
            with_headers(&[("content-length", "99999999999999999999999999")]),
            Err(GatewayError::BodyTooLarge(1000))
        );
    }

    #[test]
    fn raw_block_framing() {
        let ok = "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(with_block(ok), Ok(()));
        let ok_lf = "\r\nPOST /a HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n\n";
        assert_eq!(with_block(ok_lf), Ok(()));
        // Body bytes after the head are not headers.
        let body = "POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nTransfer-Encoding: x";
        assert_eq!(with_block(body), Ok(()));

        for block in [
            "POST /a HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /a HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            "POST /a HTTP/1.1\r\nTRANSFER-ENCODING: chunked\r\nCONTENT-LENGTH: 3\r\n\r\n",
            "POST /a HTTP/1.1\nTransfer-Encoding: chunked\nContent-length: 3\n\n",
        ] {
            assert_eq!(
                with_block(block),
                Err(GatewayError::InvalidFraming(
                    "Content-Length with Transfer-Encoding"
                )),
                "{block:?}"
            );
        }
        assert_eq!(
            with_block("POST /a HTTP/1.1\r\nContent-Length: 1\r\ncontent-length: 1\r\n\r\n"),
            Err(GatewayError::InvalidFraming("repeated Content-Length"))
        );
        assert_eq!(
            with_block("POST /a HTTP/1.1\r\nContent-Length: 1,1\r\n\r\n"),
            Err(GatewayError::InvalidFraming("Content-Length list"))
        );
        assert_eq!(
            with_block("POST /a HTTP/1.1\r\nX-A: 1\r\n  folded\r\n\r\n"),
            Err(GatewayError::InvalidFraming("obsolete line folding"))
        );
        assert_eq!(
            with_block("POST /a HTTP/1.1\r\nX-A: 1\r\n\tfolded\r\n\r\n"),
            Err(GatewayError::InvalidFraming("obsolete line folding"))
        );
        assert_eq!(
            with_block("POST /a HTTP/1.1\r\nContent-Length : 1\r\n\r\n"),
            Err(GatewayError::InvalidFraming("whitespace in header name"))
        );
        assert_eq!(
            with_block("POST /a HTTP/1.1\r\nnocolon\r\n\r\n"),
            Err(GatewayError::InvalidFraming("header line without ':'"))
        );
    }

    #[test]
    fn header_limits_from_raw_block() {
        let mut block = String::from("GET /a HTTP/1.1\r\n");
        for i in 0..100 {
            block.push_str(&format!("x-h{i}: v\r\n"));
        }
        let hundred = format!("{block}\r\n");
        assert_eq!(with_block(&hundred), Ok(()));
        block.push_str("x-h100: v\r\n\r\n");
        assert_eq!(
            with_block(&block),
            Err(GatewayError::HeadersTooLarge("too many headers"))
        );

        let big = format!(
            "GET /a HTTP/1.1\r\nx-big: {}\r\n\r\n",
            "a".repeat(33 * 1024)
        );
        assert_eq!(
            with_block(&big),
            Err(GatewayError::HeadersTooLarge("headers too large"))
        );
        let just = format!(
            "GET /a HTTP/1.1\r\nx: {}\r\n\r\n",
            "a".repeat(32 * 1024 - 24)
        );
        assert_eq!(just.len(), 32 * 1024);
        assert_eq!(with_block(&just), Ok(()));
    }

    #[test]
    fn header_limits_from_map() {
        let names: Vec<String> = (0..101).map(|i| format!("x-h{i}")).collect();
        let pairs: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        assert_eq!(with_headers(&pairs[..100]), Ok(()));
        assert_eq!(
            with_headers(&pairs),
            Err(GatewayError::HeadersTooLarge("too many headers"))
        );
        let big = "a".repeat(33 * 1024);
        assert_eq!(
            with_headers(&[("x-big", &big)]),
            Err(GatewayError::HeadersTooLarge("headers too large"))
        );
    }

    #[test]
    fn echoed_names_are_bounded() {
        let long = format!("x_forwarded_for{}", "a".repeat(100));
        assert_eq!(echo_name(&long).len(), MAX_ECHOED_NAME + 3);
        assert_eq!(echo_name("x-a"), "x-a");
        assert_eq!(echo_name("x\u{e9}"), "(unprintable header name)");
    }

    #[test]
    fn param_name_matching() {
        assert!(param_name_is(b"access_token", "access_token"));
        assert!(param_name_is(b"access%5Ftoken", "access_token"));
        assert!(param_name_is(b"%20access_token", "access_token"));
        assert!(!param_name_is(b"access_token%", "access_token"));
        assert!(!param_name_is(b"access_toke", "access_token"));
        assert!(!param_name_is(b"", "access_token"));
        assert!(!param_name_is(b"+", "access_token"));
        assert!(!param_name_is(b"access%255Ftoken", "access_token"));
    }
}
