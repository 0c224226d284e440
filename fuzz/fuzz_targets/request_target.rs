//! Request-target and header checks (`routing::check_request`,
//! `routing::validate_path`) and route lookup on arbitrary bytes.
//!
//! Input: one byte choosing the method, then the raw target, then
//! optionally `\n` and header lines (`Name: value`, one per line). The
//! target goes through the checks twice — with the raw request head as
//! HTTP/1 would give it and without (as for HTTP/2).
//!
//! Invariants: no panic; an accepted target is origin-form, its path and
//! query are slices of the raw bytes, the path passes `validate_path` on its
//! own and is already in normal form (tests/support/path_oracle.rs: decoding,
//! dot segments, `//`, `\`, `;` change nothing); route parameters are
//! slices of the path.

#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use portcullis::routing::{
    check_request, validate_path, PathTemplate, RequestLimits, RouteLookup, RouteSpec, RouteTable,
};

#[path = "../../tests/support/path_oracle.rs"]
mod path_oracle;

const METHODS: [&str; 10] = [
    "GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PROPFIND",
];

fn table() -> RouteTable {
    let spec = |methods: Option<Vec<Method>>, path: &str| RouteSpec {
        methods,
        template: PathTemplate::parse(path).expect("template"),
    };
    RouteTable::new(vec![
        spec(Some(vec![Method::GET]), "/v1.0/apiclients"),
        spec(
            Some(vec![Method::PUT, Method::DELETE]),
            "/v1.0/apiclients/{id}",
        ),
        spec(None, "/api/2/apps/{app}/users/{user}"),
        spec(Some(vec![Method::GET]), "/static/{*rest}"),
    ])
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let method = Method::from_bytes(METHODS[usize::from(selector) % METHODS.len()].as_bytes())
        .expect("method");
    let (target, header_text) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };

    // The path check alone, on any text.
    if let Ok(text) = std::str::from_utf8(target) {
        if validate_path(text).is_ok() {
            if let Some(why) = path_oracle::not_normal(text) {
                panic!("validate_path accepted {text:?}, which is not normal: {why}");
            }
        }
    }

    let mut headers = HeaderMap::new();
    let mut block = Vec::with_capacity(data.len() + 32);
    block.extend_from_slice(method.as_str().as_bytes());
    block.push(b' ');
    block.extend_from_slice(target);
    block.extend_from_slice(b" HTTP/1.1\r\n");
    for line in header_text.split(|&b| b == b'\n') {
        block.extend_from_slice(line);
        block.extend_from_slice(b"\r\n");
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = line[colon + 1..].trim_ascii();
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    }
    block.extend_from_slice(b"\r\n");

    let limits = RequestLimits {
        max_header_bytes: 4096,
        max_headers: 16,
        max_body_bytes: 1024,
    };
    let table = table();
    for raw_block in [Some(block.as_slice()), None] {
        let Ok(checked) = check_request(&method, target, &headers, raw_block, &limits) else {
            continue;
        };
        let path = checked.path;
        assert!(
            target.starts_with(path.as_bytes()),
            "path is not a prefix of the target"
        );
        match checked.query {
            Some(q) => assert_eq!(target, format!("{path}?{q}").as_bytes()),
            None => assert_eq!(target, path.as_bytes()),
        }
        assert!(
            validate_path(path).is_ok(),
            "accepted path {path:?} fails validate_path"
        );
        if let Some(why) = path_oracle::not_normal(path) {
            panic!("accepted path {path:?} is not normal: {why}");
        }
        if let RouteLookup::Matched { params, .. } = table.lookup(&method, path) {
            for (_, value) in params.iter() {
                assert!(path.contains(value), "param {value:?} not in {path:?}");
            }
        }
    }
});
