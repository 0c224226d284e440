//! The route table: ordered routes compiled once per config load; first match
//! wins.
//!
//! Routes are compiled into a segment trie (literal children, one parameter
//! child, catch-alls and route ends per node). A lookup walks the path's
//! segments once, following both the literal and the parameter branch where
//! both exist, and keeps the lowest route index that matches path and method
//! — so the result is exactly that of a linear scan in config order, but a
//! table of hundreds of routes sharing a prefix (`/v1.0/...`) only touches the
//! nodes on the path. A lookup allocates nothing except the `Allow` value of
//! a 405.

use std::collections::HashMap;
use std::fmt;

use http::Method;

use super::template::{PathTemplate, Segment, MAX_PARAMS};

/// One route as the router sees it: which methods, which path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// `None` = every method.
    pub methods: Option<Vec<Method>>,
    pub template: PathTemplate,
}

/// The compiled matcher over an ordered list of routes.
pub struct RouteTable {
    routes: Vec<RouteSpec>,
    root: Node,
}

/// A trie node: the routes reachable after the segments leading here. Every
/// route list is in ascending (config) order.
#[derive(Default)]
struct Node {
    literal: HashMap<Box<str>, Node>,
    param: Option<Box<Node>>,
    /// Routes whose template ends here with `{*rest}`.
    catch_all: Vec<usize>,
    /// Routes whose template ends exactly here.
    end: Vec<usize>,
}

/// Parameters captured by a match: names borrowed from the table's template
/// (`'t`), values slices of the raw path (`'p`, still percent-encoded).
/// Stored inline; never allocates.
#[derive(Clone, Copy)]
pub struct Params<'t, 'p> {
    /// The template that produced the values; its parameter names, in order,
    /// name `values[..len]`.
    template: Option<&'t PathTemplate>,
    len: usize,
    values: [&'p str; MAX_PARAMS],
}

/// The outcome of [`RouteTable::lookup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteLookup<'t, 'p> {
    /// Route `index` (position in the table, same as in the config) matched.
    Matched {
        index: usize,
        params: Params<'t, 'p>,
    },
    /// Some route's template matches the path, but none with this method.
    /// `allow` is the `Allow` header value, e.g. `"GET, PUT"`.
    MethodNotAllowed { allow: String },
    /// No route's template matches the path.
    NotFound,
}

// === impl RouteTable ===

impl RouteTable {
    /// Compiles the routes; their order is the match order.
    pub fn new(routes: Vec<RouteSpec>) -> RouteTable {
        let mut root = Node::default();
        for (index, route) in routes.iter().enumerate() {
            root.insert(route.template.segments(), index);
        }
        RouteTable { routes, root }
    }

    /// Finds the first route whose template matches `path` and whose methods
    /// include `method` (`HEAD` is not implied by `GET`).
    ///
    /// `path` is the raw path without the query, as checked by
    /// [`super::validate_path`].
    pub fn lookup<'t, 'p>(&'t self, method: &Method, path: &'p str) -> RouteLookup<'t, 'p> {
        let Some(rest) = path_segments(path) else {
            return RouteLookup::NotFound;
        };
        let mut best: Option<usize> = None;
        let mut path_matched = false;
        self.root.visit(rest, &mut |index| {
            path_matched = true;
            if best.is_none_or(|b| index < b)
                && self
                    .routes
                    .get(index)
                    .is_some_and(|r| allows(&r.methods, method))
            {
                best = Some(index);
            }
        });
        if let Some(index) = best {
            let mut params = Params::new();
            if let Some(route) = self.routes.get(index) {
                if route.template.match_into(path, &mut params) {
                    return RouteLookup::Matched { index, params };
                }
            }
            // The trie and the template disagree: unreachable by
            // construction; refuse rather than guess.
            return RouteLookup::NotFound;
        }
        if !path_matched {
            return RouteLookup::NotFound;
        }
        let mut methods: Vec<&str> = Vec::new();
        self.root.visit(rest, &mut |index| {
            if let Some(ms) = self.routes.get(index).and_then(|r| r.methods.as_ref()) {
                methods.extend(ms.iter().map(Method::as_str));
            }
        });
        methods.sort_unstable();
        methods.dedup();
        RouteLookup::MethodNotAllowed {
            allow: methods.join(", "),
        }
    }

    /// `(shadowed, by)` pairs: route `shadowed` can never be chosen because
    /// the earlier route `by` matches every path and method it does. Each
    /// shadowed route is reported once, with the first route that shadows it.
    pub fn shadowed(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (j, later) in self.routes.iter().enumerate() {
            let by = self.routes[..j].iter().position(|earlier| {
                earlier.template.covers(&later.template)
                    && methods_cover(&earlier.methods, &later.methods)
            });
            if let Some(i) = by {
                out.push((j, i));
            }
        }
        out
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table has no routes (every request is a 404).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The route at `index`, as given to [`RouteTable::new`].
    pub fn get(&self, index: usize) -> Option<&RouteSpec> {
        self.routes.get(index)
    }
}

impl fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Route<'a>(&'a RouteSpec);
        impl fmt::Debug for Route<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match &self.0.methods {
                    None => write!(f, "* {}", self.0.template),
                    Some(ms) => {
                        let names: Vec<&str> = ms.iter().map(Method::as_str).collect();
                        write!(f, "{} {}", names.join(","), self.0.template)
                    }
                }
            }
        }
        f.debug_list()
            .entries(self.routes.iter().map(Route))
            .finish()
    }
}

/// The path as the trie walks it: `Some(None)` for `/` (no segments),
/// `Some(Some(text after the leading '/'))` otherwise, and `None` for a path
/// that does not start with `/` (which matches nothing).
fn path_segments(path: &str) -> Option<Option<&str>> {
    let rest = path.strip_prefix('/')?;
    Some(if rest.is_empty() { None } else { Some(rest) })
}

// === impl Node ===

impl Node {
    fn insert(&mut self, segments: &[Segment], index: usize) {
        match segments.split_first() {
            None => self.end.push(index),
            Some((Segment::CatchAll(_), _)) => self.catch_all.push(index),
            Some((Segment::Literal(lit), rest)) => self
                .literal
                .entry(lit.as_str().into())
                .or_default()
                .insert(rest, index),
            Some((Segment::Param(_), rest)) => self
                .param
                .get_or_insert_with(Box::default)
                .insert(rest, index),
        }
    }

    /// Calls `found` with every route whose template matches the remaining
    /// path `rest` (`None` = no segments left). Same rules as
    /// [`PathTemplate::match_into`]: a parameter needs a non-empty segment, a
    /// catch-all a non-empty remainder without a trailing `/`.
    fn visit(&self, rest: Option<&str>, found: &mut impl FnMut(usize)) {
        let Some(r) = rest else {
            self.end.iter().for_each(|&i| found(i));
            return;
        };
        if !self.catch_all.is_empty() && !r.is_empty() && !r.ends_with('/') {
            self.catch_all.iter().for_each(|&i| found(i));
        }
        let (segment, next) = match r.split_once('/') {
            Some((segment, next)) => (segment, Some(next)),
            None => (r, None),
        };
        if let Some(child) = self.literal.get(segment) {
            child.visit(next, found);
        }
        if let Some(child) = &self.param {
            if !segment.is_empty() {
                child.visit(next, found);
            }
        }
    }
}

fn allows(methods: &Option<Vec<Method>>, method: &Method) -> bool {
    methods.as_ref().is_none_or(|ms| ms.contains(method))
}

/// Whether `earlier` allows every method `later` allows.
fn methods_cover(earlier: &Option<Vec<Method>>, later: &Option<Vec<Method>>) -> bool {
    match (earlier, later) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(e), Some(l)) => l.iter().all(|m| e.contains(m)),
    }
}

// === impl Params ===

impl<'t, 'p> Params<'t, 'p> {
    pub(crate) fn new() -> Self {
        Params {
            template: None,
            len: 0,
            values: [""; MAX_PARAMS],
        }
    }

    /// Starts a fresh capture for `template`.
    pub(crate) fn reset(&mut self, template: &'t PathTemplate) {
        self.template = Some(template);
        self.len = 0;
    }

    /// Records the value of the template's next parameter. Templates are
    /// limited to [`MAX_PARAMS`] parameters at parse time, so the overflow
    /// branch is unreachable; it drops rather than panics.
    pub(crate) fn push(&mut self, value: &'p str) {
        if let Some(slot) = self.values.get_mut(self.len) {
            *slot = value;
            self.len += 1;
        }
    }

    /// The raw (still percent-encoded) value captured for `name`.
    pub fn get(&self, name: &str) -> Option<&'p str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// `(name, value)` pairs in template order.
    pub fn iter(&self) -> impl Iterator<Item = (&'t str, &'p str)> + '_ {
        let names = self
            .template
            .into_iter()
            .flat_map(PathTemplate::param_names);
        names.zip(self.values.iter().take(self.len).copied())
    }

    /// Number of captured parameters.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was captured.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for Params<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl PartialEq for Params<'_, '_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Params<'_, '_> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(methods: &[&str], path: &str) -> RouteSpec {
        RouteSpec {
            methods: if methods.is_empty() {
                None
            } else {
                Some(
                    methods
                        .iter()
                        .map(|m| Method::from_bytes(m.as_bytes()).unwrap())
                        .collect(),
                )
            },
            template: PathTemplate::parse(path).unwrap(),
        }
    }

    fn m(s: &str) -> Method {
        Method::from_bytes(s.as_bytes()).unwrap()
    }

    fn matched(
        table: &RouteTable,
        method: &str,
        path: &str,
    ) -> Option<(usize, Vec<(String, String)>)> {
        match table.lookup(&m(method), path) {
            RouteLookup::Matched { index, params } => Some((
                index,
                params
                    .iter()
                    .map(|(n, v)| (n.to_owned(), v.to_owned()))
                    .collect(),
            )),
            _ => None,
        }
    }

    fn sample() -> RouteTable {
        RouteTable::new(vec![
            route(&["GET"], "/v1.0/apiclients"),          // 0
            route(&["POST"], "/v1.0/apiclients"),         // 1
            route(&["GET"], "/v1.0/apiclients/{id}"),     // 2
            route(&["PUT"], "/v1.0/apiclients/{id}"),     // 3
            route(&["GET"], "/v1.0/apiclients/special"),  // 4: shadowed by 2
            route(&[], "/api/2/apps/{id}"),               // 5
            route(&["GET"], "/{tenant}/apiclients/{id}"), // 6
            route(&["DELETE"], "/v1.0/apiclients/{id}"),  // 7
            route(&["GET", "HEAD"], "/static/{*rest}"),   // 8
            route(&["GET"], "/"),                         // 9
        ])
    }

    #[test]
    fn first_match_wins() {
        let t = sample();
        assert_eq!(t.len(), 10);
        assert!(!t.is_empty());
        assert_eq!(matched(&t, "GET", "/v1.0/apiclients"), Some((0, vec![])));
        assert_eq!(matched(&t, "POST", "/v1.0/apiclients"), Some((1, vec![])));
        assert_eq!(
            matched(&t, "GET", "/v1.0/apiclients/special"),
            Some((2, vec![("id".into(), "special".into())]))
        );
        assert_eq!(
            matched(&t, "PUT", "/v1.0/apiclients/abc-123").map(|x| x.0),
            Some(3)
        );
        assert_eq!(
            matched(&t, "DELETE", "/v1.0/apiclients/abc").map(|x| x.0),
            Some(7)
        );
        assert_eq!(
            matched(&t, "PATCH", "/api/2/apps/42"),
            Some((5, vec![("id".into(), "42".into())]))
        );
        assert_eq!(
            matched(&t, "GET", "/v2/apiclients/x"),
            Some((
                6,
                vec![("tenant".into(), "v2".into()), ("id".into(), "x".into())]
            ))
        );
        assert_eq!(
            matched(&t, "GET", "/static/css/a.css"),
            Some((8, vec![("rest".into(), "css/a.css".into())]))
        );
        assert_eq!(matched(&t, "GET", "/"), Some((9, vec![])));
    }

    #[test]
    fn wildcard_first_segment_wins_when_earlier() {
        let t = RouteTable::new(vec![route(&["GET"], "/{any}/x"), route(&["GET"], "/a/x")]);
        assert_eq!(matched(&t, "GET", "/a/x").map(|x| x.0), Some(0));
        let t = RouteTable::new(vec![route(&["GET"], "/a/x"), route(&["GET"], "/{any}/x")]);
        assert_eq!(matched(&t, "GET", "/a/x").map(|x| x.0), Some(0));
        assert_eq!(matched(&t, "GET", "/b/x").map(|x| x.0), Some(1));
    }

    #[test]
    fn method_not_allowed_lists_methods() {
        let t = RouteTable::new(vec![
            route(&["PUT"], "/v1.0/apiclients/{id}"),
            route(&["GET"], "/v1.0/apiclients/{id}"),
            route(&["PUT", "GET"], "/v1.0/apiclients/{x}"),
            route(&["POST"], "/v1.0/apiclients"),
        ]);
        assert_eq!(
            t.lookup(&Method::DELETE, "/v1.0/apiclients/a"),
            RouteLookup::MethodNotAllowed {
                allow: "GET, PUT".into()
            }
        );
        // HEAD is not implied by GET.
        assert_eq!(
            t.lookup(&Method::HEAD, "/v1.0/apiclients/a"),
            RouteLookup::MethodNotAllowed {
                allow: "GET, PUT".into()
            }
        );
        assert_eq!(
            t.lookup(&Method::GET, "/v1.0/apiclients"),
            RouteLookup::MethodNotAllowed {
                allow: "POST".into()
            }
        );
        assert_eq!(
            t.lookup(&Method::GET, "/v1.0/apiclients/"),
            RouteLookup::NotFound
        );
        assert_eq!(
            t.lookup(&Method::GET, "/v1.0/apiclients/a/b"),
            RouteLookup::NotFound
        );
        assert_eq!(t.lookup(&Method::GET, "/nope"), RouteLookup::NotFound);
        assert_eq!(t.lookup(&Method::GET, "/"), RouteLookup::NotFound);
        assert_eq!(t.lookup(&Method::GET, ""), RouteLookup::NotFound);
    }

    #[test]
    fn head_only_with_explicit_route() {
        let t = sample();
        assert_eq!(matched(&t, "HEAD", "/static/x").map(|x| x.0), Some(8));
        assert_eq!(
            t.lookup(&Method::HEAD, "/v1.0/apiclients"),
            RouteLookup::MethodNotAllowed {
                allow: "GET, POST".into()
            }
        );
    }

    #[test]
    fn params_get_and_iter() {
        let t = RouteTable::new(vec![route(&[], "/a/{x}/b/{y}/{*z}")]);
        match t.lookup(&Method::GET, "/a/1/b/2/3/4") {
            RouteLookup::Matched { index, params } => {
                assert_eq!(index, 0);
                assert_eq!(params.get("x"), Some("1"));
                assert_eq!(params.get("y"), Some("2"));
                assert_eq!(params.get("z"), Some("3/4"));
                assert_eq!(params.get("w"), None);
                assert_eq!(params.len(), 3);
                assert!(!params.is_empty());
                assert_eq!(
                    params.iter().collect::<Vec<_>>(),
                    [("x", "1"), ("y", "2"), ("z", "3/4")]
                );
                assert_eq!(format!("{params:?}"), r#"{"x": "1", "y": "2", "z": "3/4"}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lowest_index_wins_across_trie_branches() {
        let t = RouteTable::new(vec![
            route(&["PUT"], "/a/b/c"),      // 0
            route(&["GET"], "/a/{x}/c"),    // 1
            route(&["GET"], "/a/b/c"),      // 2
            route(&["GET"], "/{*all}"),     // 3
            route(&["POST"], "/a/b/{y}"),   // 4
            route(&["POST"], "/a/{*rest}"), // 5
        ]);
        assert_eq!(
            matched(&t, "GET", "/a/b/c"),
            Some((1, vec![("x".into(), "b".into())]))
        );
        assert_eq!(matched(&t, "PUT", "/a/b/c").map(|x| x.0), Some(0));
        assert_eq!(
            matched(&t, "POST", "/a/b/c"),
            Some((4, vec![("y".into(), "c".into())]))
        );
        assert_eq!(
            matched(&t, "POST", "/a/b/c/d"),
            Some((5, vec![("rest".into(), "b/c/d".into())]))
        );
        assert_eq!(
            matched(&t, "GET", "/a/b/c/d"),
            Some((3, vec![("all".into(), "a/b/c/d".into())]))
        );
        assert_eq!(
            t.lookup(&Method::DELETE, "/a/b/c"),
            RouteLookup::MethodNotAllowed {
                allow: "GET, POST, PUT".into()
            }
        );
        assert_eq!(t.lookup(&Method::GET, "/a/b/c/"), RouteLookup::NotFound);
    }

    #[test]
    fn failed_candidates_leave_no_params_behind() {
        let t = RouteTable::new(vec![route(&[], "/{a}/{b}/nope"), route(&[], "/{c}/{d}")]);
        assert_eq!(
            matched(&t, "GET", "/1/2"),
            Some((1, vec![("c".into(), "1".into()), ("d".into(), "2".into())]))
        );
    }

    #[test]
    fn shadowed_routes() {
        let t = sample();
        assert_eq!(t.shadowed(), vec![(4, 2)]);

        let t = RouteTable::new(vec![
            route(&[], "/a/{*rest}"),       // 0
            route(&["GET"], "/a/b/{id}"),   // 1: by 0
            route(&["GET"], "/a"),          // 2
            route(&["GET"], "/b/{id}"),     // 3
            route(&["GET", "PUT"], "/b/x"), // 4: PUT not covered by 3
            route(&["PUT"], "/b/{y}"),      // 5
            route(&["GET"], "/b/x"),        // 6: by 3 (first)
            route(&["GET"], "/{t}/x"),      // 7
            route(&[], "/b/x"),             // 8: None not covered by GET-only
        ]);
        assert_eq!(t.shadowed(), vec![(1, 0), (6, 3)]);
        assert!(RouteTable::new(vec![]).shadowed().is_empty());
    }

    #[test]
    fn empty_table() {
        let t = RouteTable::new(vec![]);
        assert!(t.is_empty());
        assert_eq!(t.len(), 0);
        assert_eq!(t.lookup(&Method::GET, "/"), RouteLookup::NotFound);
    }

    #[test]
    fn large_table_agrees_with_linear_scan() {
        let mut routes = Vec::new();
        for i in 0..200 {
            let p = match i % 5 {
                0 => format!("/svc{}/items", i % 17),
                1 => format!("/svc{}/items/{{id}}", i % 17),
                2 => format!("/{{tenant}}/svc{}/{{id}}", i % 13),
                3 => format!("/svc{}/{{*rest}}", i % 11),
                _ => "/".to_owned(),
            };
            let methods: &[&str] = match i % 3 {
                0 => &["GET"],
                1 => &["PUT", "POST"],
                _ => &[],
            };
            routes.push(route(methods, &p));
        }
        let table = RouteTable::new(routes.clone());
        let paths = [
            "/",
            "/svc3/items",
            "/svc3/items/9",
            "/x/svc4/1",
            "/svc5/a/b",
            "/svc16/items",
            "/svc1/items/",
            "/zzz",
            "/svc2",
        ];
        for path in paths {
            for method in ["GET", "PUT", "DELETE"] {
                let method = m(method);
                let linear = routes.iter().position(|r| {
                    let mut params = Params::new();
                    r.template.match_into(path, &mut params) && allows(&r.methods, &method)
                });
                let got = match table.lookup(&method, path) {
                    RouteLookup::Matched { index, .. } => Some(index),
                    _ => None,
                };
                assert_eq!(got, linear, "{method} {path}");
            }
        }
    }

    #[test]
    fn debug_lists_routes() {
        let t = RouteTable::new(vec![route(&["GET", "PUT"], "/a/{id}"), route(&[], "/")]);
        assert_eq!(format!("{t:?}"), "[GET,PUT /a/{id}, * /]");
        assert_eq!(t.get(0).map(|r| r.template.as_str()), Some("/a/{id}"));
        assert!(t.get(2).is_none());
    }
}
