//! An independent reading of a request path, shared by `tests/properties.rs`
//! and the `request_target` fuzz target (included with `#[path]`).
//!
//! The gateway never normalises a path: it refuses every path whose meaning
//! depends on who decodes it. This oracle states that as a property. It reads
//! an accepted path the way a lenient server behind the gateway might —
//! percent-decode once, treat `\` as `/`, drop `;` parameters, merge `//`,
//! resolve `.` and `..` — and reports how that normal form differs from the
//! path itself. For an accepted path there must be no difference: what the
//! router matched is what any upstream sees.

#![allow(dead_code)]

/// Why a path is not already in normal form, or `None` when it is.
pub fn not_normal(path: &str) -> Option<String> {
    let raw = path.as_bytes();
    if raw.first() != Some(&b'/') {
        return Some("does not start with '/'".into());
    }
    if let Some(b) = raw.iter().find(|b| !(0x21..=0x7e).contains(*b)) {
        return Some(format!("raw byte {b:#04x} outside visible ASCII"));
    }
    let decoded = match percent_decode(raw) {
        Some(d) => d,
        None => return Some("malformed percent-escape".into()),
    };
    let text = match String::from_utf8(decoded.clone()) {
        Ok(t) => t,
        Err(_) => return Some("decodes to invalid UTF-8".into()),
    };
    if let Some(c) = text.chars().find(char::is_ascii_control) {
        return Some(format!("decodes to control character {c:?}"));
    }
    // Decoding a second time must change nothing (no double encoding).
    if percent_decode(&decoded).is_some_and(|again| again != decoded) {
        return Some("decodes differently twice (double encoding)".into());
    }
    // Every `/` in the decoded path must have been a raw `/`: an encoded
    // slash would add a segment only for servers that decode first.
    let raw_slashes = raw.iter().filter(|&&b| b == b'/').count();
    let decoded_slashes = decoded.iter().filter(|&&b| b == b'/').count();
    if raw_slashes != decoded_slashes {
        return Some("encoded '/' adds a segment after decoding".into());
    }
    let normal = normalise(&text);
    if normal != text {
        return Some(format!("normalises to {normal:?}, not {text:?}"));
    }
    None
}

/// The lenient reading: `\` → `/`, `;params` dropped, `#` ends the path,
/// empty segments merged (a single trailing `/` kept), dot segments resolved.
pub fn normalise(decoded: &str) -> String {
    let cut = decoded.split('#').next().unwrap_or("");
    let slashed = cut.replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    let pieces: Vec<&str> = slashed.split('/').skip(1).collect();
    let last = pieces.len().saturating_sub(1);
    let mut trailing = false;
    for (i, piece) in pieces.iter().enumerate() {
        let seg = piece.split(';').next().unwrap_or("");
        match seg {
            "" => trailing = i == last && !out.is_empty(),
            "." => trailing = i == last,
            ".." => {
                out.pop();
                trailing = i == last;
            }
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut s = String::from("/");
    s.push_str(&out.join("/"));
    if trailing && !out.is_empty() {
        s.push('/');
    }
    s
}

/// Percent-decodes once; `None` when an escape is malformed.
pub fn percent_decode(bytes: &[u8]) -> Option<Vec<u8>> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let h = hex(*bytes.get(i + 1)?)?;
            let l = hex(*bytes.get(i + 2)?)?;
            out.push((h << 4) | l);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}
