//! Path validation: refuse every path that a server behind the gateway could
//! read differently from the router.
//!
//! The gateway never rewrites a path: the bytes that matched a route are the
//! bytes that go upstream. So instead of normalising, it refuses anything whose
//! meaning depends on who decodes it — dot segments (raw or encoded), encoded
//! slashes and backslashes, double encoding, `;` path parameters, empty
//! segments, control characters and invalid or overlong UTF-8.

use crate::error::GatewayError;

/// Checks the path part of an origin-form request target (it starts with `/`
/// and the query has already been split off).
///
/// Accepts a single trailing slash (`/a/b/`): it is a distinct path that no
/// route template matches, so it ends in a 404 rather than in an alias.
///
/// Allocates only when the path contains a percent-escape of a non-ASCII
/// byte (to check that the decoded bytes are valid UTF-8).
pub fn validate_path(path: &str) -> Result<(), GatewayError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(invalid("must start with '/'"));
    }

    // Raw bytes are ASCII (checked below), so the decoded path can only be
    // invalid UTF-8 if some escape decodes to a byte >= 0x80.
    let mut has_high_escape = false;
    let mut seg_start = 1;
    let mut i = 1;
    // One pass over the raw bytes: character classes, escapes, segments.
    while i <= bytes.len() {
        let b = bytes.get(i).copied();
        match b {
            None | Some(b'/') => {
                let seg = &bytes[seg_start..i];
                if seg.is_empty() {
                    // Only the root path "/" and a single trailing slash may
                    // produce an empty segment.
                    let at_end = b.is_none();
                    let root = i == 1 && at_end;
                    let trailing = at_end && i >= 2 && bytes[i - 2] != b'/';
                    if !(root || trailing) {
                        return Err(invalid("empty segment"));
                    }
                } else if is_dot_segment(seg) {
                    return Err(invalid("dot segment"));
                }
                seg_start = i + 1;
            }
            Some(b'%') => {
                let decoded = match (
                    bytes.get(i + 1).and_then(|&h| hex_val(h)),
                    bytes.get(i + 2).and_then(|&l| hex_val(l)),
                ) {
                    (Some(h), Some(l)) => (h << 4) | l,
                    _ => return Err(invalid("invalid percent-escape")),
                };
                check_decoded_byte(decoded)?;
                has_high_escape |= decoded >= 0x80;
                // `%25` then two hex digits — raw (`%252e`) or themselves
                // encoded (`%25%32%65`) — is `%2e` once decoded and `.`
                // to a server that decodes twice.
                if decoded == b'%' && escapes_an_escape(bytes, i + 3) {
                    return Err(invalid("double percent-encoding"));
                }
                i += 3;
                continue;
            }
            Some(b'\\') => return Err(invalid("backslash")),
            Some(b';') => return Err(invalid("semicolon")),
            Some(b'#') => return Err(invalid("fragment")),
            Some(c) if c < 0x21 => return Err(invalid("space or control character")),
            Some(c) if c > 0x7E => return Err(invalid("non-ASCII or control character")),
            Some(_) => {}
        }
        i += 1;
    }

    if has_high_escape && std::str::from_utf8(&decode(bytes)).is_err() {
        return Err(invalid("invalid or overlong UTF-8"));
    }
    Ok(())
}

fn invalid(reason: &'static str) -> GatewayError {
    GatewayError::InvalidPath(reason)
}

/// Refuses a percent-decoded byte that would change the path's structure or
/// smuggle a control character.
fn check_decoded_byte(b: u8) -> Result<(), GatewayError> {
    match b {
        b'/' => Err(invalid("encoded slash")),
        b'\\' => Err(invalid("encoded backslash")),
        0 => Err(invalid("encoded NUL")),
        b'\n' | b'\r' => Err(invalid("encoded line break")),
        b';' => Err(invalid("encoded semicolon")),
        b'#' => Err(invalid("encoded fragment")),
        c if c < 0x20 || c == 0x7F => Err(invalid("encoded control character")),
        _ => Ok(()),
    }
}

/// Whether a raw segment decodes to `.` or `..` (any mix of `.`, `%2e`, `%2E`).
/// Escapes in `seg` are known to be well-formed hex by the time this runs for
/// the bytes before the segment end; malformed ones simply do not compare equal.
fn is_dot_segment(seg: &[u8]) -> bool {
    // "." is 1..=3 raw bytes, ".." is 2..=6.
    if seg.len() > 6 {
        return false;
    }
    let mut dots = 0;
    let mut i = 0;
    while i < seg.len() {
        match seg[i] {
            b'.' => i += 1,
            b'%' if seg.get(i + 1) == Some(&b'2')
                && matches!(seg.get(i + 2), Some(b'e') | Some(b'E')) =>
            {
                i += 3
            }
            _ => return false,
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// Whether the two characters at `at`, each read raw or percent-decoded,
/// are hex digits: after a decoded `%`, they make another escape.
fn escapes_an_escape(bytes: &[u8], at: usize) -> bool {
    let Some((first, width)) = decoded_at(bytes, at) else {
        return false;
    };
    hex_val(first).is_some()
        && decoded_at(bytes, at + width).is_some_and(|(c, _)| hex_val(c).is_some())
}

/// The byte at `at` once decoded, and how many raw bytes it took.
fn decoded_at(bytes: &[u8], at: usize) -> Option<(u8, usize)> {
    match *bytes.get(at)? {
        b'%' => {
            let h = hex_val(*bytes.get(at + 1)?)?;
            let l = hex_val(*bytes.get(at + 2)?)?;
            Some(((h << 4) | l, 3))
        }
        c => Some((c, 1)),
    }
}

/// Value of an ASCII hex digit.
pub(crate) fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes bytes whose escapes are already known to be valid.
fn decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|&c| hex_val(c)),
                bytes.get(i + 2).and_then(|&c| hex_val(c)),
            ) {
                out.push((h << 4) | l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(path: &str) -> &'static str {
        match validate_path(path) {
            Err(GatewayError::InvalidPath(r)) => r,
            other => panic!("{path:?}: expected InvalidPath, got {other:?}"),
        }
    }

    #[test]
    fn accepts_ordinary_paths() {
        for p in [
            "/",
            "/v1.0/apiclients/abc-123",
            "/api/2/apps/42",
            "/a/b/",
            "/a%20b",
            "/a/%2e%2e%2e",
            "/a/...",
            "/a/.b",
            "/a/b.",
            "/caf%C3%A9",
            "/%7Euser",
            "/a/%2ea",
            "/a%25zz",
            "/a%25",
            "/a%25%7Azz",
            "/a%25%32",
            "/a%25%32g",
            "/v1.0/apiclients/x:y@z!$&'()*+,=",
        ] {
            assert_eq!(validate_path(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn rejects_dot_segments_raw_and_encoded() {
        for p in [
            "/../etc",
            "/a/./b",
            "/a/..",
            "/a/.",
            "/.",
            "/..",
            "/a/../",
            "/a/%2e%2e/b",
            "/a/%2E%2e/b",
            "/a/.%2E/b",
            "/a/%2e./b",
            "/a/%2e/b",
            "/a/%2E",
        ] {
            assert_eq!(reason(p), "dot segment", "{p}");
        }
    }

    #[test]
    fn rejects_encoded_separators_and_controls() {
        let cases = [
            ("/a%2Fb", "encoded slash"),
            ("/a%2fb", "encoded slash"),
            ("/a%5c", "encoded backslash"),
            ("/a%5C", "encoded backslash"),
            ("/a%00", "encoded NUL"),
            ("/a%0a", "encoded line break"),
            ("/a%0A", "encoded line break"),
            ("/a%0D", "encoded line break"),
            ("/a%0d", "encoded line break"),
            ("/a%3Bb", "encoded semicolon"),
            ("/a%3bb", "encoded semicolon"),
            ("/a%23b", "encoded fragment"),
            ("/a%09b", "encoded control character"),
            ("/a%7Fb", "encoded control character"),
            ("/a%252e%252e/", "double percent-encoding"),
            ("/a%252F", "double percent-encoding"),
            // Found by tests/properties.rs (accepted_paths_are_already_normal):
            // the hex digits after `%25` may be encoded themselves.
            ("/%25%32%65", "double percent-encoding"),
            ("/a/%25%32%65%25%32%65/b", "double percent-encoding"),
            ("/a%252%65", "double percent-encoding"),
            ("/a%25%32e", "double percent-encoding"),
            ("/a%25%25%32%46", "double percent-encoding"),
        ];
        for (p, r) in cases {
            assert_eq!(reason(p), r, "{p}");
        }
    }

    #[test]
    fn rejects_invalid_escapes() {
        for p in ["/a%zz", "/a%4", "/a%", "/a%%41", "/a%g0", "/%"] {
            assert_eq!(reason(p), "invalid percent-escape", "{p}");
        }
    }

    #[test]
    fn rejects_invalid_and_overlong_utf8() {
        for p in [
            "/a%C0%AE%C0%AE/",
            "/a%E0%80%AE",
            "/a%C0%AF",
            "/a%80",
            "/a%C3",
            "/a%ED%A0%80",
            "/a%F8%88%80%80%80",
        ] {
            assert_eq!(reason(p), "invalid or overlong UTF-8", "{p}");
        }
    }

    #[test]
    fn rejects_raw_characters() {
        let cases = [
            ("/a\\b", "backslash"),
            ("/a;b", "semicolon"),
            ("/a;jsessionid=1", "semicolon"),
            ("/a#b", "fragment"),
            ("/a b", "space or control character"),
            ("/a\tb", "space or control character"),
            ("/a\0b", "space or control character"),
            ("/a\r\nb", "space or control character"),
            ("/a\x7fb", "non-ASCII or control character"),
            ("/caf\u{e9}", "non-ASCII or control character"),
        ];
        for (p, r) in cases {
            assert_eq!(reason(p), r, "{p:?}");
        }
    }

    #[test]
    fn rejects_empty_segments_and_relative_paths() {
        for p in ["/a//b", "//a", "//", "/a//", "/a/b//", "///"] {
            assert_eq!(reason(p), "empty segment", "{p}");
        }
        for p in ["", "a/b", "*", "http://evil/x"] {
            assert_eq!(reason(p), "must start with '/'", "{p}");
        }
    }

    #[test]
    fn dot_segment_helper() {
        assert!(is_dot_segment(b"."));
        assert!(is_dot_segment(b".."));
        assert!(is_dot_segment(b"%2e%2E"));
        assert!(!is_dot_segment(b"..."));
        assert!(!is_dot_segment(b"%2e%2e%2e"));
        assert!(!is_dot_segment(b"%2f"));
        assert!(!is_dot_segment(b""));
    }
}
