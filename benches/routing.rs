//! Steps 1–2 of the request path: request-target and header checks
//! (`check_request`, which runs `validate_path`) and the route match over a
//! table of 200 IAM-like routes.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use portcullis::routing::{
    check_request, validate_path, PathTemplate, RequestLimits, RouteLookup, RouteSpec, RouteTable,
};

/// Resources of an IAM admin API; `apiclients` sits in the last third.
const RESOURCES: [(&str, &str); 24] = [
    ("v2.0", "Users"),
    ("v2.0", "Groups"),
    ("v1.0", "applications"),
    ("v1.0", "policies"),
    ("v1.0", "attributes"),
    ("v1.0", "identitysources"),
    ("v1.0", "certificates"),
    ("v1.0", "federations"),
    ("v1.0", "templates"),
    ("v1.0", "webhooks"),
    ("v1.0", "authenticators"),
    ("v1.0", "mfamethods"),
    ("v1.0", "pwdpolicies"),
    ("v1.0", "tenantproperties"),
    ("v1.0", "relyingparties"),
    ("v2.0", "factors"),
    ("v1.0", "entitlements"),
    ("v1.0", "reports"),
    ("v1.0", "apiclients"),
    ("v1.0", "privacyconsents"),
    ("v1.0", "purposes"),
    ("v1.0", "sessions"),
    ("v1.0", "notificationproviders"),
    ("v1.0", "agents"),
];

/// 24 resources × 8 routes, then 8 others (with a parameter first segment
/// and catch-alls, which every lookup must also consider): 200 routes.
fn routes() -> Vec<RouteSpec> {
    let spec = |methods: &[Method], path: &str| RouteSpec {
        methods: (!methods.is_empty()).then(|| methods.to_vec()),
        template: PathTemplate::parse(path).unwrap(),
    };
    let mut routes = Vec::new();
    for (version, resource) in RESOURCES {
        let base = format!("/{version}/{resource}");
        routes.push(spec(&[Method::GET], &base));
        routes.push(spec(&[Method::POST], &base));
        routes.push(spec(&[Method::GET], &format!("{base}/{{id}}")));
        routes.push(spec(&[Method::PUT], &format!("{base}/{{id}}")));
        routes.push(spec(&[Method::PATCH], &format!("{base}/{{id}}")));
        routes.push(spec(&[Method::DELETE], &format!("{base}/{{id}}")));
        routes.push(spec(&[Method::GET], &format!("{base}/{{id}}/members")));
        routes.push(spec(
            &[Method::PUT, Method::DELETE],
            &format!("{base}/{{id}}/members/{{member}}"),
        ));
    }
    routes.push(spec(&[Method::GET], "/api/2/apps/{id}"));
    routes.push(spec(&[Method::PUT], "/api/2/apps/{id}"));
    routes.push(spec(
        &[Method::GET, Method::DELETE, Method::PATCH],
        "/organizations/sso/oidc/provider-credentials/{oauth_client_id}",
    ));
    routes.push(spec(&[Method::GET], "/v1/identity-providers/{id}"));
    routes.push(spec(&[Method::PATCH], "/v1/identity-providers/{id}"));
    routes.push(spec(&[Method::GET], "/{tenant}/v1.0/apiclients/{id}"));
    routes.push(spec(&[Method::GET], "/.well-known/{*rest}"));
    routes.push(spec(&[Method::GET, Method::HEAD], "/static/{*rest}"));
    assert_eq!(routes.len(), 200);
    routes
}

const TARGET: &str = "/v1.0/apiclients/abc-123?x=1";

/// A typical API-client read: 10 headers, a ~900-byte bearer token.
fn request() -> (HeaderMap, Vec<u8>) {
    let token = format!(
        "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.{}.{}",
        "eyJpc3MiOiJodHRwczovL3RlbmFudC52ZXJpZnkuaWJtLmNvbSJ9".repeat(10),
        "c2lnbmF0dXJl".repeat(28)
    );
    let headers: [(&str, String); 10] = [
        ("host", "gateway.example.com".into()),
        (
            "user-agent",
            "ci-provisioning-bot/2.4 (+https://ci.example.com)".into(),
        ),
        ("accept", "application/json".into()),
        ("accept-encoding", "gzip, deflate, br".into()),
        ("authorization", format!("Bearer {token}")),
        (
            "x-request-id",
            "6f1c2e9a-5b7d-4c1e-9a3f-2d8b7e6c5a41".into(),
        ),
        ("x-forwarded-for", "192.168.10.7".into()),
        ("x-forwarded-proto", "https".into()),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        ),
        ("accept-language", "en-GB,en;q=0.9".into()),
    ];
    let mut map = HeaderMap::new();
    let mut block = format!("GET {TARGET} HTTP/1.1\r\n").into_bytes();
    for (name, value) in &headers {
        map.append(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).unwrap(),
        );
        block.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    block.extend_from_slice(b"\r\n");
    (map, block)
}

fn bench(c: &mut Criterion) {
    let table = RouteTable::new(routes());
    let (headers, block) = request();
    let limits = RequestLimits::default();
    let method = Method::GET;
    let path = TARGET.split_once('?').unwrap().0;

    // The answer is the GET /v1.0/apiclients/{id} route, 147th of 200.
    match table.lookup(&method, path) {
        RouteLookup::Matched { index, params } => {
            assert_eq!(index, 18 * 8 + 2);
            assert_eq!(params.get("id"), Some("abc-123"));
        }
        other => panic!("{other:?}"),
    }

    let mut group = c.benchmark_group("routing");
    group.bench_function("check_and_match_200_routes", |b| {
        b.iter(|| {
            let target = check_request(
                black_box(&method),
                black_box(TARGET.as_bytes()),
                black_box(&headers),
                Some(black_box(&block[..])),
                &limits,
            )
            .unwrap();
            match table.lookup(&method, target.path) {
                RouteLookup::Matched { index, params } => (index, params.len()),
                _ => unreachable!(),
            }
        })
    });
    group.bench_function("check_request", |b| {
        b.iter(|| {
            check_request(
                black_box(&method),
                black_box(TARGET.as_bytes()),
                black_box(&headers),
                Some(black_box(&block[..])),
                &limits,
            )
            .unwrap()
            .path
            .len()
        })
    });
    group.bench_function("validate_path", |b| {
        b.iter(|| validate_path(black_box(path)).is_ok())
    });
    let encoded = "/v2.0/Users/alice%40example.com/members/caf%C3%A9-team";
    group.bench_function("validate_path_percent_encoded", |b| {
        b.iter(|| validate_path(black_box(encoded)).is_ok())
    });
    group.bench_function("lookup_200", |b| {
        b.iter(|| match table.lookup(black_box(&method), black_box(path)) {
            RouteLookup::Matched { index, .. } => index,
            _ => unreachable!(),
        })
    });
    group.bench_function("lookup_200_not_found", |b| {
        b.iter(|| {
            matches!(
                table.lookup(
                    black_box(&method),
                    black_box("/v1.0/apiclients/abc-123/secrets")
                ),
                RouteLookup::NotFound
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
