//! Step 7: the body policy of `config/portcullis.toml`'s
//! `verify-apiclient-update` route (json, path_params, deny, field_requires,
//! subset_of_caller, catalog with the real IBM Verify entitlement catalogue,
//! enums, cidrs) on a 2 KiB API-client update body. The parse alone (strict
//! and plain `serde_json`) is measured too, to show what the rules add.

mod common;

use common::{api_client_update_body, repo_path, CALLER_ENTITLEMENTS, TARGET_ID};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use portcullis::auth::strict_json;
use portcullis::policy::body::BodyRequest;

fn bench(c: &mut Criterion) {
    // The shipped config reads its secrets from the environment; validation
    // only needs them to exist (no fetch happens at load).
    for (name, value) in [
        ("VCF_TOKEN_SECRET", "bench-only-vcf-secret-0123456789abcdef"),
        ("ONELOGIN_API_TOKEN", "bench-only"),
        ("SLASHID_API_KEY", "bench-only"),
        ("VERIFY_CLIENT_SECRET", "bench-only"),
    ] {
        std::env::set_var(name, value);
    }
    let config = match portcullis::config::load_file(&repo_path("config/portcullis.toml")) {
        Ok(loaded) => loaded.config,
        Err(errors) => panic!("config/portcullis.toml does not validate:\n{errors}"),
    };
    let route = config
        .routes
        .iter()
        .find(|r| r.name == "verify-apiclient-update")
        .unwrap();
    let policy = route.body.as_ref().unwrap();

    let body = api_client_update_body();
    let entitlements: Vec<String> = CALLER_ENTITLEMENTS.iter().map(|s| s.to_string()).collect();
    let params = [("id", TARGET_ID)];
    let request = BodyRequest {
        content_type: Some("application/json; charset=utf-8"),
        body: &body,
        path_params: &params,
        entitlements: &entitlements,
    };
    policy.evaluate(&request).unwrap();

    let mut group = c.benchmark_group("body_policy");
    group.bench_function("api_client_update_2KiB", |b| {
        b.iter(|| policy.evaluate(black_box(&request)).is_ok())
    });
    group.bench_function("strict_json_parse_2KiB", |b| {
        b.iter(|| strict_json::parse_object(black_box(&body)).unwrap().len())
    });
    group.bench_function("serde_json_parse_2KiB", |b| {
        b.iter(|| {
            serde_json::from_slice::<serde_json::Value>(black_box(&body))
                .unwrap()
                .is_object()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
