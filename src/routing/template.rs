//! Path templates: `/v1.0/apiclients/{id}`, `/static/{*rest}`, `/`.
//!
//! A template is a list of segments, each a literal, a `{param}` (exactly one
//! non-empty segment) or — last only — a `{*rest}` catch-all (one or more
//! remaining segments, captured with their inner `/`). Literals compare
//! byte-exactly with the raw path: no decoding, no case folding. Captured
//! values are slices of the raw path, still percent-encoded.
//!
//! A path with a trailing slash (`/a/b/`) matches no template, not even a
//! catch-all: it is a distinct path, and refusing it keeps `/a/b` and `/a/b/`
//! from being two spellings of one route.

use std::fmt;
use std::str::FromStr;

use super::table::Params;

/// Most parameters (including a catch-all) one template may declare, so that
/// captured parameters fit in fixed inline storage.
pub const MAX_PARAMS: usize = 8;

/// A parsed route path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Literal(String),
    Param(String),
    CatchAll(String),
}

// === impl PathTemplate ===

impl PathTemplate {
    /// Parses a template, with a precise reason on error.
    pub fn parse(s: &str) -> Result<PathTemplate, String> {
        let Some(body) = s.strip_prefix('/') else {
            return Err("a path template must start with '/'".to_owned());
        };
        let mut segments = Vec::new();
        if body.is_empty() {
            return Ok(PathTemplate {
                text: s.to_owned(),
                segments,
            });
        }
        let parts: Vec<&str> = body.split('/').collect();
        let last = parts.len() - 1;
        for (n, part) in parts.iter().enumerate() {
            let pos = n + 1;
            if part.is_empty() {
                return Err(if n == last {
                    "a path template must not end with '/' (a trailing slash is a distinct path that no route matches)".to_owned()
                } else {
                    format!("empty segment at position {pos} ('//')")
                });
            }
            let segment = if let Some(inner) = part.strip_prefix('{') {
                let Some(inner) = inner.strip_suffix('}') else {
                    return Err(format!(
                        "segment {pos} {part:?} mixes literal text and a parameter; a parameter must be a whole segment"
                    ));
                };
                if let Some(name) = inner.strip_prefix('*') {
                    check_param_name(name)?;
                    if n != last {
                        return Err(format!("catch-all {{*{name}}} must be the last segment"));
                    }
                    Segment::CatchAll(name.to_owned())
                } else {
                    check_param_name(inner)?;
                    Segment::Param(inner.to_owned())
                }
            } else {
                check_literal(pos, part)?;
                Segment::Literal((*part).to_owned())
            };
            if let Some(name) = segment.param_name() {
                if segments
                    .iter()
                    .any(|seg: &Segment| seg.param_name() == Some(name))
                {
                    return Err(format!("parameter name {name:?} is used twice"));
                }
            }
            segments.push(segment);
        }
        let params = segments.iter().filter(|s| s.param_name().is_some()).count();
        if params > MAX_PARAMS {
            return Err(format!(
                "{params} parameters; at most {MAX_PARAMS} are allowed"
            ));
        }
        Ok(PathTemplate {
            text: s.to_owned(),
            segments,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Names of the parameters (`{id}` → `id`, `{*rest}` → `rest`), in order.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(Segment::param_name)
    }

    /// Whether the template declares a parameter of this name.
    pub fn has_param(&self, name: &str) -> bool {
        self.param_names().any(|n| n == name)
    }

    /// Whether every concrete path matched by `other` is also matched by
    /// `self` (used to find routes shadowed by an earlier one).
    pub fn covers(&self, other: &PathTemplate) -> bool {
        let (a, b) = (&self.segments, &other.segments);
        let mut i = 0;
        loop {
            match (a.get(i), b.get(i)) {
                (None, None) => return true,
                (None, Some(_)) | (Some(_), None) => return false,
                // `other` has at least one non-empty segment left here.
                (Some(Segment::CatchAll(_)), Some(_)) => return true,
                (Some(Segment::Param(_)), Some(Segment::Literal(_) | Segment::Param(_))) => {}
                (Some(Segment::Literal(x)), Some(Segment::Literal(y))) if x == y => {}
                _ => return false,
            }
            i += 1;
        }
    }

    /// Matches a raw path, capturing parameters into `params` (reset first).
    /// Allocates nothing.
    pub(crate) fn match_into<'t, 'p>(&'t self, path: &'p str, params: &mut Params<'t, 'p>) -> bool {
        params.reset(self);
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        if self.segments.is_empty() || rest.is_empty() {
            // "/" is the path with no segments: only the root template matches it.
            return self.segments.is_empty() && rest.is_empty();
        }
        let mut rest = Some(rest);
        for seg in &self.segments {
            let Some(r) = rest else {
                return false;
            };
            match seg {
                Segment::CatchAll(_) => {
                    if r.is_empty() || r.ends_with('/') {
                        return false;
                    }
                    params.push(r);
                    return true;
                }
                Segment::Literal(lit) => {
                    let (s, next) = split_segment(r);
                    if s != lit {
                        return false;
                    }
                    rest = next;
                }
                Segment::Param(_) => {
                    let (s, next) = split_segment(r);
                    if s.is_empty() {
                        return false;
                    }
                    params.push(s);
                    rest = next;
                }
            }
        }
        rest.is_none()
    }

    /// The parsed segments (the root template `/` has none).
    pub(crate) fn segments(&self) -> &[Segment] {
        &self.segments
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for PathTemplate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PathTemplate::parse(s)
    }
}

// === impl Segment ===

impl Segment {
    fn param_name(&self) -> Option<&str> {
        match self {
            Segment::Literal(_) => None,
            Segment::Param(n) | Segment::CatchAll(n) => Some(n),
        }
    }
}

/// Splits `r` at its first `/`: the segment, and what follows (None when this
/// was the last segment).
fn split_segment(r: &str) -> (&str, Option<&str>) {
    match r.split_once('/') {
        Some((s, next)) => (s, Some(next)),
        None => (r, None),
    }
}

fn check_param_name(name: &str) -> Result<(), String> {
    let mut chars = name.bytes();
    let ok = matches!(chars.next(), Some(b'A'..=b'Z' | b'a'..=b'z' | b'_'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "parameter name {name:?} must match [A-Za-z_][A-Za-z0-9_]*"
        ))
    }
}

fn check_literal(pos: usize, lit: &str) -> Result<(), String> {
    if lit.contains(['{', '}']) {
        return Err(format!(
            "segment {pos} {lit:?} mixes literal text and a parameter; a parameter must be a whole segment"
        ));
    }
    if lit == "." || lit == ".." {
        return Err(format!("segment {pos} is a dot segment ('.' or '..')"));
    }
    for c in lit.chars() {
        let why = match c {
            '%' => "'%' (templates are matched against raw paths; write characters literally)",
            '\\' => "a backslash",
            ';' => "';'",
            '#' => "'#'",
            '?' => "'?' (a template is a path without a query)",
            c if !c.is_ascii() => "a non-ASCII character",
            c if c.is_ascii_control() || c == ' ' => "a space or control character",
            _ => continue,
        };
        return Err(format!("segment {pos} contains {why}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> PathTemplate {
        PathTemplate::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn matches(tpl: &PathTemplate, path: &str) -> Option<Vec<(String, String)>> {
        let mut params = Params::new();
        tpl.match_into(path, &mut params).then(|| {
            params
                .iter()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect()
        })
    }

    fn p(pairs: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(
            pairs
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn parses_valid_templates() {
        let tpl = t("/v1.0/apiclients/{id}");
        assert_eq!(tpl.as_str(), "/v1.0/apiclients/{id}");
        assert_eq!(tpl.to_string(), "/v1.0/apiclients/{id}");
        assert_eq!(tpl.param_names().collect::<Vec<_>>(), ["id"]);
        assert!(tpl.has_param("id"));
        assert!(!tpl.has_param("ID"));

        let tpl = t("/static/{*rest}");
        assert_eq!(tpl.param_names().collect::<Vec<_>>(), ["rest"]);
        assert!(tpl.has_param("rest"));

        let tpl = t("/");
        assert_eq!(tpl.param_names().count(), 0);
        assert_eq!(
            t("/api/2/apps/{app_id}/users/{_u2}").param_names().count(),
            2
        );
        assert_eq!("/a/{b}".parse::<PathTemplate>(), Ok(t("/a/{b}")));
        assert!(PathTemplate::parse("/a/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}").is_ok());
    }

    #[test]
    fn rejects_bad_templates_with_reasons() {
        let cases = [
            ("", "must start with '/'"),
            ("a/b", "must start with '/'"),
            ("/a//b", "empty segment"),
            ("//", "empty segment"),
            ("/a/", "must not end with '/'"),
            ("/a/{*rest}/b", "must be the last segment"),
            ("/{*rest}/{*more}", "must be the last segment"),
            ("/v{x}", "mixes literal text"),
            ("/{x}v", "mixes literal text"),
            ("/{x", "mixes literal text"),
            ("/x}", "mixes literal text"),
            ("/{}", "parameter name \"\""),
            ("/{*}", "parameter name \"\""),
            ("/{1a}", "must match [A-Za-z_]"),
            ("/{a-b}", "must match [A-Za-z_]"),
            ("/{{a}}", "must match [A-Za-z_]"),
            ("/{id}/{id}", "twice"),
            ("/{id}/{*id}", "twice"),
            ("/a%2Fb", "'%'"),
            ("/a%20b", "'%'"),
            ("/a/../b", "dot segment"),
            ("/a/./b", "dot segment"),
            ("/a;b", "';'"),
            ("/a\\b", "backslash"),
            ("/a#b", "'#'"),
            ("/a?b=1", "'?'"),
            ("/a b", "space or control"),
            ("/caf\u{e9}", "non-ASCII"),
            ("/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}/{i}", "at most 8"),
        ];
        for (s, want) in cases {
            match PathTemplate::parse(s) {
                Ok(_) => panic!("{s:?} should be rejected"),
                Err(e) => assert!(e.contains(want), "{s:?}: {e:?} does not contain {want:?}"),
            }
        }
    }

    #[test]
    fn matches_literals_byte_exactly() {
        let tpl = t("/v1.0/apiclients");
        assert_eq!(matches(&tpl, "/v1.0/apiclients"), p(&[]));
        assert_eq!(matches(&tpl, "/v1.0/APIclients"), None);
        assert_eq!(matches(&tpl, "/v1.0/apiclient%73"), None);
        assert_eq!(matches(&tpl, "/v1.0/apiclients/"), None);
        assert_eq!(matches(&tpl, "/v1.0/apiclients/x"), None);
        assert_eq!(matches(&tpl, "/v1.0"), None);
        assert_eq!(matches(&tpl, "v1.0/apiclients"), None);
    }

    #[test]
    fn param_matches_exactly_one_non_empty_segment() {
        let tpl = t("/v1.0/apiclients/{id}");
        assert_eq!(
            matches(&tpl, "/v1.0/apiclients/abc-123"),
            p(&[("id", "abc-123")])
        );
        assert_eq!(
            matches(&tpl, "/v1.0/apiclients/a%20b"),
            p(&[("id", "a%20b")])
        );
        assert_eq!(matches(&tpl, "/v1.0/apiclients/"), None);
        assert_eq!(matches(&tpl, "/v1.0/apiclients"), None);
        assert_eq!(matches(&tpl, "/v1.0/apiclients/a/b"), None);
        assert_eq!(matches(&tpl, "/v1.0/apiclients/a/"), None);
        assert_eq!(matches(&tpl, "/v1.0/apiclients//"), None);

        let tpl = t("/api/2/apps/{app}/users/{user}");
        assert_eq!(
            matches(&tpl, "/api/2/apps/42/users/7"),
            p(&[("app", "42"), ("user", "7")])
        );
    }

    #[test]
    fn catch_all_matches_one_or_more_segments() {
        let tpl = t("/static/{*rest}");
        assert_eq!(matches(&tpl, "/static/a"), p(&[("rest", "a")]));
        assert_eq!(matches(&tpl, "/static/a/b/c"), p(&[("rest", "a/b/c")]));
        assert_eq!(matches(&tpl, "/static/"), None);
        assert_eq!(matches(&tpl, "/static"), None);
        assert_eq!(matches(&tpl, "/static/a/"), None);
        assert_eq!(matches(&tpl, "/other/a"), None);

        let tpl = t("/{*all}");
        assert_eq!(matches(&tpl, "/x/y"), p(&[("all", "x/y")]));
        assert_eq!(matches(&tpl, "/"), None);
    }

    #[test]
    fn root_matches_only_root() {
        let tpl = t("/");
        assert_eq!(matches(&tpl, "/"), p(&[]));
        assert_eq!(matches(&tpl, "/a"), None);
        assert_eq!(matches(&tpl, ""), None);
        assert_eq!(matches(&t("/{id}"), "/"), None);
        assert_eq!(matches(&t("/a"), "/"), None);
    }

    #[test]
    fn covers() {
        let c = |a: &str, b: &str| t(a).covers(&t(b));
        assert!(c("/a/b", "/a/b"));
        assert!(!c("/a/b", "/a/c"));
        assert!(c("/a/{id}", "/a/b"));
        assert!(c("/a/{id}", "/a/{other}"));
        assert!(!c("/a/b", "/a/{id}"));
        assert!(!c("/a/{id}", "/a/{*rest}"));
        assert!(c("/a/{*rest}", "/a/{*more}"));
        assert!(c("/a/{*rest}", "/a/b"));
        assert!(c("/a/{*rest}", "/a/{id}/c/{*x}"));
        assert!(!c("/a/{*rest}", "/a"));
        assert!(!c("/a/{*rest}", "/b/c"));
        assert!(c("/{*all}", "/a/b/{c}"));
        assert!(!c("/{*all}", "/"));
        assert!(c("/", "/"));
        assert!(!c("/", "/a"));
        assert!(!c("/a", "/a/b"));
        assert!(!c("/a/b", "/a"));
        assert!(c("/{x}/{y}", "/a/{z}"));
        assert!(!c("/{x}/b", "/a/{z}"));
    }
}
