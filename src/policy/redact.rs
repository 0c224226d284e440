//! `[routes.response]`: remove members from a JSON answer unless the caller
//! is entitled to them.
//!
//! A [`ResponsePolicy`] is compiled once per config load: each `redact`
//! entry is a JSON pointer (RFC 6901, with `*` as a segment that matches
//! every array element or object member) and the entitlements that let a
//! caller keep the member. Per request, [`ResponsePolicy::pointers_for`]
//! picks the pointers that apply to the caller, and [`redact`] removes what
//! they point at from one complete, buffered answer.
//!
//! # A byte-level splice, not a re-serialisation
//!
//! [`redact`] reads the answer with a strict RFC 8259 scanner of its own
//! that records, for every container on a pointer's way, where each
//! member (or element) starts and ends. The members to remove are then cut
//! out of the original bytes together with one separating comma. Nothing
//! else is touched: the remaining members keep their order, whitespace,
//! escapes and the exact text of their numbers (`1.0`, `1e2`, integers
//! beyond 64 bits), and the crate graph needs no serde_json feature
//! (`preserve_order` / `arbitrary_precision` would change every other
//! parse in the gateway).
//!
//! Member names are compared after unescaping (`"client\u0053ecret"` is
//! `clientSecret` to every JSON consumer, so it is to the redactor too), and
//! every member with a matching name is removed — a repeated name cannot
//! hide a second copy of a secret.
//!
//! Anything the scanner cannot read strictly (invalid UTF-8, a bare control
//! character in a string, a lone surrogate escape, trailing bytes, nesting
//! deeper than [`MAX_DEPTH`]) is an error: the proxy answers 502
//! `response_not_redactable` instead of passing an answer it could not
//! check. Pure: no I/O, no pingora.

use std::fmt;

use bytes::Bytes;

/// Deepest nesting the scanner follows (serde_json's default recursion
/// limit), so a hostile answer cannot exhaust the stack.
pub const MAX_DEPTH: usize = 128;

/// Default `max_bytes`: the largest answer buffered for redaction.
pub const DEFAULT_MAX_BYTES: u64 = 1024 * 1024;

/// One segment of a redaction pointer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `*`: every element of an array, every member of an object.
    Any,
    /// An unescaped member name; `index` is its value as an array index
    /// when it is one in RFC 6901's canonical form (`0`, `17`, not `01`).
    Key { name: String, index: Option<usize> },
}

impl Segment {
    fn matches_key(&self, key: &[u8]) -> bool {
        match self {
            Segment::Any => true,
            Segment::Key { name, .. } => name.as_bytes() == key,
        }
    }

    fn matches_index(&self, i: usize) -> bool {
        match self {
            Segment::Any => true,
            Segment::Key { index, .. } => *index == Some(i),
        }
    }
}

/// A parsed redaction pointer: `/apiClients/*/clientSecret`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    text: String,
    segments: Vec<Segment>,
}

impl Pointer {
    /// Parse an RFC 6901 pointer that names at least one member (the whole
    /// document cannot be redacted). `~0` is `~`, `~1` is `/`; a segment
    /// that is exactly `*` is the wildcard.
    pub fn parse(text: &str) -> Result<Pointer, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(if text.is_empty() {
                "the empty pointer names the whole answer, which cannot be redacted".into()
            } else {
                format!("{text:?} is not a JSON pointer (RFC 6901): it must start with '/'")
            });
        };
        let mut segments = Vec::new();
        for raw in rest.split('/') {
            if raw == "*" {
                segments.push(Segment::Any);
                continue;
            }
            let mut name = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c != '~' {
                    name.push(c);
                    continue;
                }
                match chars.next() {
                    Some('0') => name.push('~'),
                    Some('1') => name.push('/'),
                    _ => {
                        return Err(format!(
                        "{text:?} is not a JSON pointer (RFC 6901): '~' must be followed by 0 or 1"
                    ))
                    }
                }
            }
            let index = canonical_index(&name);
            segments.push(Segment::Key { name, index });
        }
        Ok(Pointer {
            text: text.to_string(),
            segments,
        })
    }

    /// The pointer as written in the config.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// RFC 6901 array index: `0` or a decimal without a leading zero.
fn canonical_index(s: &str) -> Option<usize> {
    let canonical =
        s == "0" || (!s.is_empty() && !s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit()));
    if canonical {
        s.parse().ok()
    } else {
        None
    }
}

/// One `redact` entry: remove `pointer` unless the caller holds one of
/// `unless` (an empty list: always remove).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedactRule {
    pub pointer: Pointer,
    pub unless: Vec<String>,
}

impl RedactRule {
    /// Whether a caller with `entitlements` loses this member.
    pub fn applies_to(&self, entitlements: &[String]) -> bool {
        !self.unless.iter().any(|e| entitlements.contains(e))
    }
}

/// `[routes.response]`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponsePolicy {
    pub rules: Vec<RedactRule>,
    /// Largest answer buffered for redaction; larger ones are refused.
    pub max_bytes: u64,
}

impl ResponsePolicy {
    /// The pointers removed for a caller with `entitlements`.
    pub fn pointers_for(&self, entitlements: &[String]) -> Vec<&Pointer> {
        self.rules
            .iter()
            .filter(|r| r.applies_to(entitlements))
            .map(|r| &r.pointer)
            .collect()
    }
}

/// Whether a `Content-Type` value declares JSON: `application/json` or
/// `application/*+json`, any parameters, any case.
pub fn is_json_media_type(value: &[u8]) -> bool {
    let essence = value
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let Some(pos) = essence.iter().position(|b| *b == b'/') else {
        return false;
    };
    let (kind, subtype) = (&essence[..pos], &essence[pos + 1..]);
    if !kind.eq_ignore_ascii_case(b"application") || subtype.is_empty() {
        return false;
    }
    if subtype.eq_ignore_ascii_case(b"json") {
        return true;
    }
    let suffix = b"+json";
    subtype.len() > suffix.len()
        && subtype[subtype.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        && !subtype.contains(&b' ')
}

/// The answer after redaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redacted {
    /// The rewritten answer (the original bytes when nothing was removed).
    pub body: Bytes,
    /// How many members (or array elements) were removed.
    pub removed: usize,
}

/// Why an answer could not be redacted. Carries positions and kinds only,
/// never bytes of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotRedactable {
    pub reason: &'static str,
    /// Byte offset where reading stopped.
    pub at: usize,
}

impl fmt::Display for NotRedactable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.reason, self.at)
    }
}

impl std::error::Error for NotRedactable {}

/// Remove every member `pointers` name from the JSON document `body`.
/// With no pointers the document is still read strictly (it must be valid
/// JSON) and returned unchanged.
pub fn redact(body: &Bytes, pointers: &[&Pointer]) -> Result<Redacted, NotRedactable> {
    if std::str::from_utf8(body).is_err() {
        return Err(NotRedactable {
            reason: "invalid UTF-8",
            at: 0,
        });
    }
    let mut scanner = Scanner {
        buf: body,
        pos: 0,
        cuts: Vec::new(),
        removed: 0,
        key_buf: Vec::new(),
    };
    let active: Vec<&Pointer> = pointers.to_vec();
    scanner.skip_ws();
    scanner.value(&active, 0, 0)?;
    scanner.skip_ws();
    if scanner.pos != body.len() {
        return Err(scanner.fail("trailing bytes after the JSON document"));
    }
    if scanner.cuts.is_empty() {
        return Ok(Redacted {
            body: body.clone(),
            removed: 0,
        });
    }
    let mut cuts = scanner.cuts;
    cuts.sort_unstable();
    let removed_bytes: usize = cuts.iter().map(|(s, e)| e - s).sum();
    let mut out = Vec::with_capacity(body.len() - removed_bytes);
    let mut from = 0;
    for (start, end) in cuts {
        out.extend_from_slice(&body[from..start]);
        from = end;
    }
    out.extend_from_slice(&body[from..]);
    Ok(Redacted {
        body: Bytes::from(out),
        removed: scanner.removed,
    })
}

/// One member (or element) of a container on a pointer's way.
struct Child {
    start: usize,
    end: usize,
    removed: bool,
}

struct Scanner<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Byte ranges to cut, in no particular order, never overlapping.
    cuts: Vec<(usize, usize)>,
    removed: usize,
    /// Scratch space for unescaping member names.
    key_buf: Vec<u8>,
}

impl Scanner<'_> {
    fn fail(&self, reason: &'static str) -> NotRedactable {
        NotRedactable {
            reason,
            at: self.pos,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8, reason: &'static str) -> Result<(), NotRedactable> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.fail(reason))
        }
    }

    /// One value. `active` are the pointers whose first `depth` segments
    /// led here (each has more segments left).
    fn value(
        &mut self,
        active: &[&Pointer],
        depth: usize,
        nesting: usize,
    ) -> Result<(), NotRedactable> {
        match self.peek() {
            Some(b'{') => self.object(active, depth, nesting + 1),
            Some(b'[') => self.array(active, depth, nesting + 1),
            Some(b'"') => self.string(None),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.fail("unexpected byte where a value was expected")),
            None => Err(self.fail("unexpected end of the answer")),
        }
    }

    fn object(
        &mut self,
        active: &[&Pointer],
        depth: usize,
        nesting: usize,
    ) -> Result<(), NotRedactable> {
        if nesting > MAX_DEPTH {
            return Err(self.fail("nested too deeply"));
        }
        self.pos += 1; // '{'
        let tracking = !active.is_empty();
        let mut children: Vec<Child> = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            let start = self.pos;
            if self.peek() != Some(b'"') {
                return Err(self.fail("expected a member name"));
            }
            let (removed, next) = if tracking {
                let mut key = std::mem::take(&mut self.key_buf);
                key.clear();
                self.string(Some(&mut key))?;
                let step = step(active, depth, |s| s.matches_key(&key));
                self.key_buf = key;
                step
            } else {
                self.string(None)?;
                (false, Vec::new())
            };
            self.skip_ws();
            self.expect(b':', "expected ':' after a member name")?;
            self.skip_ws();
            self.value(&next, depth + 1, nesting)?;
            if tracking {
                children.push(Child {
                    start,
                    end: self.pos,
                    removed,
                });
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(self.fail("expected ',' or '}' in an object")),
            }
        }
        self.cut(&children);
        Ok(())
    }

    fn array(
        &mut self,
        active: &[&Pointer],
        depth: usize,
        nesting: usize,
    ) -> Result<(), NotRedactable> {
        if nesting > MAX_DEPTH {
            return Err(self.fail("nested too deeply"));
        }
        self.pos += 1; // '['
        let tracking = !active.is_empty();
        let mut children: Vec<Child> = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        let mut index = 0usize;
        loop {
            self.skip_ws();
            let start = self.pos;
            let (removed, next) = if tracking {
                step(active, depth, |s| s.matches_index(index))
            } else {
                (false, Vec::new())
            };
            self.value(&next, depth + 1, nesting)?;
            if tracking {
                children.push(Child {
                    start,
                    end: self.pos,
                    removed,
                });
            }
            index += 1;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(self.fail("expected ',' or ']' in an array")),
            }
        }
        self.cut(&children);
        Ok(())
    }

    /// Record the cuts that remove the `removed` children of one container
    /// and one separator for each. A run of removed children is cut up to
    /// the start of the next child; a run at the end from the end of the
    /// child before it (taking the comma); a container emptied entirely
    /// keeps only its brackets and outer whitespace.
    fn cut(&mut self, children: &[Child]) {
        let mut i = 0;
        while i < children.len() {
            if !children[i].removed {
                i += 1;
                continue;
            }
            let first = i;
            while i < children.len() && children[i].removed {
                i += 1;
            }
            let last = i - 1;
            self.removed += i - first;
            let range = if let Some(next) = children.get(i) {
                (children[first].start, next.start)
            } else if first > 0 {
                (children[first - 1].end, children[last].end)
            } else {
                (children[first].start, children[last].end)
            };
            self.cuts.push(range);
        }
    }

    /// A string; with `key`, its unescaped bytes are written there.
    fn string(&mut self, mut key: Option<&mut Vec<u8>>) -> Result<(), NotRedactable> {
        self.pos += 1; // '"'
        loop {
            let run_start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            if let Some(k) = key.as_deref_mut() {
                k.extend_from_slice(&self.buf[run_start..self.pos]);
            }
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.pos += 1;
                    self.escape(key.as_deref_mut())?;
                }
                Some(_) => return Err(self.fail("control character in a string")),
                None => return Err(self.fail("unterminated string")),
            }
        }
    }

    fn escape(&mut self, key: Option<&mut Vec<u8>>) -> Result<(), NotRedactable> {
        let Some(c) = self.peek() else {
            return Err(self.fail("unterminated escape"));
        };
        self.pos += 1;
        let decoded = match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = self.hex4()?;
                let code = if (0xD800..0xDC00).contains(&unit) {
                    // A high surrogate must be followed by an escaped low one.
                    if self.buf.get(self.pos..self.pos + 2) != Some(b"\\u") {
                        return Err(self.fail("lone surrogate in a \\u escape"));
                    }
                    self.pos += 2;
                    let low = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return Err(self.fail("lone surrogate in a \\u escape"));
                    }
                    0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                } else if (0xDC00..0xE000).contains(&unit) {
                    return Err(self.fail("lone surrogate in a \\u escape"));
                } else {
                    unit
                };
                char::from_u32(code).ok_or_else(|| self.fail("invalid \\u escape"))?
            }
            _ => return Err(self.fail("invalid escape in a string")),
        };
        if let Some(k) = key {
            let mut utf8 = [0u8; 4];
            k.extend_from_slice(decoded.encode_utf8(&mut utf8).as_bytes());
        }
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, NotRedactable> {
        let digits = self
            .buf
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.fail("short \\u escape"))?;
        let mut value = 0u32;
        for d in digits {
            let v = (*d as char)
                .to_digit(16)
                .ok_or_else(|| self.fail("invalid \\u escape"))?;
            value = value * 16 + v;
        }
        self.pos += 4;
        Ok(value)
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), NotRedactable> {
        if self.buf.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.fail("invalid literal"))
        }
    }

    /// RFC 8259 §6: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<(), NotRedactable> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.fail("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.fail("invalid number"));
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.fail("invalid number"));
            }
            self.digits();
        }
        Ok(())
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
    }
}

/// Follow the pointers in `active` one segment (number `depth`) into a
/// child that `matches`: whether the child itself is removed (some pointer
/// ends here), and otherwise the pointers that continue below it.
fn step<'p>(
    active: &[&'p Pointer],
    depth: usize,
    matches: impl Fn(&Segment) -> bool,
) -> (bool, Vec<&'p Pointer>) {
    let mut next = Vec::new();
    for p in active {
        let Some(segment) = p.segments.get(depth) else {
            continue;
        };
        if matches(segment) {
            if p.segments.len() == depth + 1 {
                return (true, Vec::new());
            }
            next.push(*p);
        }
    }
    (false, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(body: &str, pointers: &[&str]) -> Result<(String, usize), NotRedactable> {
        let parsed: Vec<Pointer> = pointers
            .iter()
            .map(|p| Pointer::parse(p).unwrap())
            .collect();
        let refs: Vec<&Pointer> = parsed.iter().collect();
        let out = redact(&Bytes::from(body.to_string()), &refs)?;
        // Whatever comes out is valid JSON.
        serde_json::from_slice::<serde_json::Value>(&out.body).unwrap();
        Ok((String::from_utf8(out.body.to_vec()).unwrap(), out.removed))
    }

    fn ok(body: &str, pointers: &[&str]) -> (String, usize) {
        run(body, pointers).unwrap_or_else(|e| panic!("{body}: {e}"))
    }

    #[test]
    fn removes_a_top_level_member_and_keeps_everything_else_byte_for_byte() {
        let body = r#"{"id":"abc","clientSecret":"s3cr3t","n":1.0,"e":1e2,"big":123456789012345678901234567890}"#;
        let (out, n) = ok(body, &["/clientSecret"]);
        assert_eq!(
            out,
            r#"{"id":"abc","n":1.0,"e":1e2,"big":123456789012345678901234567890}"#
        );
        assert_eq!(n, 1);
    }

    #[test]
    fn first_last_only_and_adjacent_members() {
        assert_eq!(ok(r#"{"s":1,"a":2}"#, &["/s"]), (r#"{"a":2}"#.into(), 1));
        assert_eq!(ok(r#"{"a":2,"s":1}"#, &["/s"]), (r#"{"a":2}"#.into(), 1));
        assert_eq!(ok(r#"{"s":1}"#, &["/s"]), (r#"{}"#.into(), 1));
        assert_eq!(
            ok(r#"{"a":1,"s":2,"t":3,"b":4}"#, &["/s", "/t"]),
            (r#"{"a":1,"b":4}"#.into(), 2)
        );
        assert_eq!(
            ok(r#"{"a":1,"s":2,"t":3}"#, &["/s", "/t"]),
            (r#"{"a":1}"#.into(), 2)
        );
        assert_eq!(
            ok(r#"{"s":2,"a":1,"t":3}"#, &["/s", "/t"]),
            (r#"{"a":1}"#.into(), 2)
        );
    }

    #[test]
    fn whitespace_and_pretty_printing_survive() {
        let body = "{\n  \"id\": \"x\",\n  \"clientSecret\": \"s\",\n  \"name\": \"n\"\n}";
        let (out, _) = ok(body, &["/clientSecret"]);
        assert_eq!(out, "{\n  \"id\": \"x\",\n  \"name\": \"n\"\n}");
        let body = "{\n  \"id\": \"x\",\n  \"clientSecret\": \"s\"\n}";
        let (out, _) = ok(body, &["/clientSecret"]);
        assert_eq!(out, "{\n  \"id\": \"x\"\n}");
    }

    #[test]
    fn wildcard_over_array_elements_and_object_members() {
        let body = r#"{"apiClients":[{"id":"a","clientSecret":"x"},{"id":"b"},{"clientSecret":"y","id":"c"}],"total":3}"#;
        let (out, n) = ok(body, &["/apiClients/*/clientSecret"]);
        assert_eq!(
            out,
            r#"{"apiClients":[{"id":"a"},{"id":"b"},{"id":"c"}],"total":3}"#
        );
        assert_eq!(n, 2);
        // `/*/client_secret` on a top-level array and on a map of objects.
        let (out, n) = ok(
            r#"[{"client_secret":"1","k":1},{"client_secret":"2"}]"#,
            &["/*/client_secret"],
        );
        assert_eq!((out.as_str(), n), (r#"[{"k":1},{}]"#, 2));
        let (out, n) = ok(
            r#"{"a":{"client_secret":"1"},"b":{"x":[1]}}"#,
            &["/*/client_secret"],
        );
        assert_eq!((out.as_str(), n), (r#"{"a":{},"b":{"x":[1]}}"#, 1));
    }

    #[test]
    fn nested_pointers_and_missing_members() {
        let body = r#"{"a":{"b":{"secret":1,"keep":[1,2]}},"c":null}"#;
        assert_eq!(
            ok(body, &["/a/b/secret"]),
            (r#"{"a":{"b":{"keep":[1,2]}},"c":null}"#.into(), 1)
        );
        // Missing members and type mismatches remove nothing.
        for p in [
            "/x",
            "/a/x/secret",
            "/c/secret",
            "/a/b/keep/secret",
            "/a/b/secret/deeper",
        ] {
            assert_eq!(ok(body, &[p]), (body.into(), 0), "{p}");
        }
        // A pointer under a removed member counts once.
        assert_eq!(
            ok(body, &["/a", "/a/b/secret"]),
            (r#"{"c":null}"#.into(), 1)
        );
    }

    #[test]
    fn array_indices_and_elements() {
        assert_eq!(ok("[1,2,3]", &["/1"]), ("[1,3]".into(), 1));
        assert_eq!(ok("[1,2,3]", &["/*"]), ("[]".into(), 3));
        assert_eq!(ok("[1,2,3]", &["/01"]), ("[1,2,3]".into(), 0));
        assert_eq!(ok(r#"{"01":1,"1":2}"#, &["/01"]), (r#"{"1":2}"#.into(), 1));
        assert_eq!(ok("[1,2,3]", &["/-"]), ("[1,2,3]".into(), 0));
    }

    #[test]
    fn rfc6901_escapes() {
        let body = r#"{"a/b":1,"m~n":2,"c":3}"#;
        assert_eq!(ok(body, &["/a~1b"]), (r#"{"m~n":2,"c":3}"#.into(), 1));
        assert_eq!(ok(body, &["/m~0n"]), (r#"{"a/b":1,"c":3}"#.into(), 1));
        assert!(Pointer::parse("/a~2").is_err());
        assert!(Pointer::parse("/a~").is_err());
        assert!(Pointer::parse("a").is_err());
        assert!(Pointer::parse("").is_err());
        assert!(Pointer::parse("/").is_ok());
    }

    #[test]
    fn member_names_are_compared_unescaped_and_every_copy_goes() {
        let body = r#"{"client\u0053ecret":"x","clientSecret":"y","id":1}"#;
        assert_eq!(ok(body, &["/clientSecret"]), (r#"{"id":1}"#.into(), 2));
        let body = r#"{"\ud83d\ude00":"x","k\"ey":1}"#;
        assert_eq!(ok(body, &["/😀"]), (r#"{"k\"ey":1}"#.into(), 1));
        assert_eq!(ok(body, &["/k\"ey"]), (r#"{"\ud83d\ude00":"x"}"#.into(), 1));
    }

    #[test]
    fn no_pointers_still_validates_and_returns_the_same_bytes() {
        let body = Bytes::from_static(br#"{"a": 1}"#);
        let out = redact(&body, &[]).unwrap();
        assert_eq!(out.body, body);
        assert_eq!(out.removed, 0);
        assert!(redact(&Bytes::from_static(b"{"), &[]).is_err());
    }

    #[test]
    fn scalars_and_empty_containers() {
        for body in ["1", "\"s\"", "null", "true", "{}", "[]", " { } ", "-0.5e-3"] {
            assert_eq!(ok(body, &["/a"]), (body.into(), 0), "{body}");
        }
    }

    #[test]
    fn invalid_json_is_refused() {
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        let bad: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"{".to_vec(),
            b"{\"a\":1,}".to_vec(),
            b"[1,]".to_vec(),
            b"{\"a\" 1}".to_vec(),
            b"{a:1}".to_vec(),
            b"{\"a\":01}".to_vec(),
            b"{\"a\":1.}".to_vec(),
            b"{\"a\":.5}".to_vec(),
            b"{\"a\":1e}".to_vec(),
            b"{\"a\":+1}".to_vec(),
            b"{\"a\":tru}".to_vec(),
            b"{\"a\":\"x\ny\"}".to_vec(),
            b"{\"a\":\"\\x\"}".to_vec(),
            b"{\"a\":\"\\ud800\"}".to_vec(),
            b"{\"a\":\"\\udc00\"}".to_vec(),
            b"{\"a\":\"\\u12\"}".to_vec(),
            b"{\"a\":1} x".to_vec(),
            b"{\"a\":1}{}".to_vec(),
            b"\xef\xbb\xbf{}".to_vec(),
            b"{\"a\":\"\xff\"}".to_vec(),
            b"// c\n{}".to_vec(),
            b"NaN".to_vec(),
            deep.into_bytes(),
        ];
        let p = Pointer::parse("/a").unwrap();
        for body in bad {
            assert!(
                redact(&Bytes::from(body.clone()), &[&p]).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(&body)
            );
            assert!(redact(&Bytes::from(body), &[]).is_err());
        }
        // Exactly at the limit is fine.
        let ok_deep = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(redact(&Bytes::from(ok_deep), &[&p]).is_ok());
    }

    #[test]
    fn numbers_keep_their_exact_text() {
        let body =
            r#"{"s":"x","a":1.0,"b":1e2,"c":-0,"d":1E+300,"e":18446744073709551616,"f":0.1000}"#;
        let (out, _) = ok(body, &["/s"]);
        assert_eq!(
            out,
            r#"{"a":1.0,"b":1e2,"c":-0,"d":1E+300,"e":18446744073709551616,"f":0.1000}"#
        );
    }

    #[test]
    fn entitlements_select_the_pointers() {
        let policy = ResponsePolicy {
            rules: vec![
                RedactRule {
                    pointer: Pointer::parse("/clientSecret").unwrap(),
                    unless: vec!["readAPIClientsAndClientSecret".into()],
                },
                RedactRule {
                    pointer: Pointer::parse("/internal").unwrap(),
                    unless: vec![],
                },
            ],
            max_bytes: DEFAULT_MAX_BYTES,
        };
        let names = |e: &[&str]| -> Vec<String> {
            let e: Vec<String> = e.iter().map(|s| s.to_string()).collect();
            policy
                .pointers_for(&e)
                .iter()
                .map(|p| p.to_string())
                .collect()
        };
        assert_eq!(names(&["readAPIClients"]), ["/clientSecret", "/internal"]);
        assert_eq!(names(&["readAPIClientsAndClientSecret"]), ["/internal"]);
        assert_eq!(names(&[]), ["/clientSecret", "/internal"]);
    }

    #[test]
    fn json_media_types() {
        for yes in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/scim+json",
            "application/problem+json;x=y",
            " application/json ",
        ] {
            assert!(is_json_media_type(yes.as_bytes()), "{yes}");
        }
        for no in [
            "text/plain",
            "application/jsonx",
            "text/json",
            "application/+json",
            "application/octet-stream",
            "json",
            "",
        ] {
            assert!(!is_json_media_type(no.as_bytes()), "{no}");
        }
    }
}
