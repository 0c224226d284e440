//! Steps 1 and 2 of the request path: refuse what could be read two ways,
//! then pick the route. Pure code: no pingora, no I/O.
//!
//! * [`check_request`] — the request target must be origin-form, its path
//!   must pass [`validate_path`], the query must carry neither a token
//!   (`access_token=`) nor a method override (`_method=`), framing must be
//!   unambiguous, and override headers, `Upgrade`, duplicate `Host` /
//!   `Authorization` and `_` aliases of gateway headers are refused.
//! * [`validate_path`] — no normalisation, only refusal: dot segments (also
//!   encoded), encoded `/` `\` NUL CR LF `;` `#`, double encoding, empty
//!   segments, invalid or overlong UTF-8. The path that matched is the path
//!   that goes upstream, byte for byte.
//! * [`PathTemplate`] — `/v1.0/apiclients/{id}`, `/static/{*rest}`.
//! * [`RouteTable`] — compiled once per config load; [`RouteTable::lookup`]
//!   returns the first route (in config order) whose template and methods
//!   match, or 405 with an `Allow` list, or 404. It allocates nothing per
//!   request except the `Allow` value.
//!
//! A typical request goes:
//!
//! ```ignore
//! let target = routing::check_request(method, raw_target, headers, raw_head, &limits)?;
//! match table.lookup(method, target.path) {
//!     RouteLookup::Matched { index, params } => { /* steps 3.. */ }
//!     RouteLookup::MethodNotAllowed { allow } => Err(GatewayError::MethodNotAllowed { allow }),
//!     RouteLookup::NotFound => Err(GatewayError::NoRoute),
//! }
//! ```

pub mod path;
pub mod table;
pub mod target;
pub mod template;

pub use path::validate_path;
pub use table::{Params, RouteLookup, RouteSpec, RouteTable};
pub use target::{check_request, CheckedTarget, RequestLimits};
pub use template::{PathTemplate, MAX_PARAMS};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::GatewayError;
    use http::{HeaderMap, Method};

    /// The two steps together, as the proxy runs them.
    fn route(table: &RouteTable, method: Method, target: &str) -> Result<usize, GatewayError> {
        let limits = RequestLimits::default();
        let checked = check_request(&method, target.as_bytes(), &HeaderMap::new(), None, &limits)?;
        match table.lookup(&method, checked.path) {
            RouteLookup::Matched { index, .. } => Ok(index),
            RouteLookup::MethodNotAllowed { allow } => {
                Err(GatewayError::MethodNotAllowed { allow })
            }
            RouteLookup::NotFound => Err(GatewayError::NoRoute),
        }
    }

    #[test]
    fn check_then_route() {
        let table = RouteTable::new(vec![
            RouteSpec {
                methods: Some(vec![Method::GET]),
                template: PathTemplate::parse("/v1.0/apiclients/{id}").unwrap(),
            },
            RouteSpec {
                methods: Some(vec![Method::PUT]),
                template: PathTemplate::parse("/v1.0/apiclients/{id}").unwrap(),
            },
        ]);
        assert_eq!(route(&table, Method::GET, "/v1.0/apiclients/a?x=1"), Ok(0));
        assert_eq!(route(&table, Method::PUT, "/v1.0/apiclients/a"), Ok(1));
        assert_eq!(
            route(&table, Method::DELETE, "/v1.0/apiclients/a"),
            Err(GatewayError::MethodNotAllowed {
                allow: "GET, PUT".into()
            })
        );
        assert_eq!(
            route(&table, Method::GET, "/v1.0/apiclients/a/"),
            Err(GatewayError::NoRoute)
        );
        assert_eq!(
            route(&table, Method::GET, "/v1.0/apiclients/%2e%2e"),
            Err(GatewayError::InvalidPath("dot segment"))
        );
        assert_eq!(
            route(&table, Method::GET, "/v1.0/x/..%2Fapiclients/a"),
            Err(GatewayError::InvalidPath("encoded slash"))
        );
    }
}
