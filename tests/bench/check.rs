//! In-process benchmarks of a whole check (`Pipeline::check`: CheckRequest →
//! Decision), run with `cargo bench --bench check`.
//!
//! The machines are shared and noisy, so read every figure as a ratio to
//! `baseline/clone_request` (cloning the same CheckRequest), which runs in the
//! same process and the same minute. Tokens are minted by jwt-simple, as in the
//! tests.
//!
//! - `anonymous_public_rule`: a public route, no credential, no condition.
//! - `rs256_cache_hit`: the same RS256 token every time (the verified-token cache).
//! - `rs256_cache_miss`: a fresh RS256 token every time (signature and claims
//!   checked; minting is outside the measurement).
//! - `dpop_bound`: the same DPoP-bound RS256 token (a cache hit) with a fresh
//!   Ed25519 proof every time: the proof's signature, claims and replay check.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use jwt_simple::prelude::*;
use serde_json::{Value, json};

use portcullis::pipeline::Pipeline;
use portcullis::proto::auth::CheckRequest;
use portcullis::store::PolicyStore;
use portcullis::tenant::TenantResolver;

const ISSUER: &str = "https://idp.acme.example";

fn setup(jwks: &Value) -> (tempfile::TempDir, Pipeline) {
    let dir = tempfile::tempdir().unwrap();
    let policy = format!(
        r#"apiVersion: portcullis/v1
tenant: acme
identity:
  jwt:
    - issuer: {ISSUER}
      audiences: [orders-api]
      algorithms: [RS256]
      jwks: {jwks}
      max_lifetime: 15m
  dpop: {{ public_origin: "https://acme.example.com", replay_cache_size: 10000000 }}
rules:
  - {{ id: docs, path: "/docs/{{rest...}}", effect: allow, public: true }}
  - id: orders
    methods: [GET]
    path: /tenants/{{tenant}}/orders/{{order}}
    when: '"orders:read" in claims.scope && resource.params.tenant == claims.tenant'
    effect: allow
response:
  headers: {{ x-subject: "{{claims.sub}}", x-tenant: "{{tenant}}" }}
"#
    );
    std::fs::write(dir.path().join("acme.yaml"), policy).unwrap();
    let store = PolicyStore::new(dir.path());
    assert!(store.reload().errors.is_empty());
    (
        dir,
        Pipeline::new(Arc::new(store), TenantResolver::default()),
    )
}

fn request(path: &str, token: Option<&str>) -> CheckRequest {
    let mut headers = json!({ "user-agent": "bench", "accept": "*/*" });
    if let Some(t) = token {
        headers["authorization"] = json!(format!("Bearer {t}"));
    }
    portcullis::cli::check_request_from_json(&json!({
        "attributes": {
            "contextExtensions": { "tenant": "acme" },
            "request": { "http": { "method": "GET", "host": "acme.example.com", "path": path, "headers": headers } }
        }
    }))
    .unwrap()
}

fn mint(key: &RS256KeyPair) -> String {
    let claims = Claims::with_custom_claims(
        json!({ "tenant": "acme", "scope": "orders:read" }),
        jwt_simple::prelude::Duration::from_mins(5),
    )
    .with_issuer(ISSUER)
    .with_subject("alice")
    .with_audience("orders-api");
    key.sign(claims).unwrap()
}

fn bench(c: &mut Criterion) {
    let key = RS256KeyPair::generate(2048).unwrap().with_key_id("bench-1");
    let jwk: Value = serde_json::from_str(&key.public_key().to_jwk()).unwrap();
    let (_dir, pipeline) = setup(&json!({ "keys": [jwk] }));

    let token = mint(&key);
    let with_token = request("/tenants/acme/orders/42", Some(&token));
    assert!(pipeline.check(&with_token).allowed);
    let public = request("/docs/intro", None);
    assert!(pipeline.check(&public).allowed);

    c.bench_function("baseline/clone_request", |b| {
        b.iter(|| black_box(with_token.clone()))
    });
    c.bench_function("check/anonymous_public_rule", |b| {
        b.iter(|| black_box(pipeline.check(black_box(&public))))
    });
    c.bench_function("check/rs256_cache_hit", |b| {
        b.iter(|| black_box(pipeline.check(black_box(&with_token))))
    });
    // DPoP: one bound token, a new proof per check.
    let client = Ed25519KeyPair::generate();
    let mut jwk: Value = serde_json::from_str(&client.public_key().to_jwk()).unwrap();
    jwk.as_object_mut()
        .unwrap()
        .retain(|k, _| ["kty", "crv", "x"].contains(&k.as_str()));
    use base64::Engine as _;
    use sha2::Digest as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jkt = b64.encode(sha2::Sha256::digest(
        format!(
            r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
            jwk["x"].as_str().unwrap()
        )
        .as_bytes(),
    ));
    let bound = {
        let claims = Claims::with_custom_claims(
            json!({ "tenant": "acme", "scope": "orders:read", "cnf": { "jkt": jkt } }),
            jwt_simple::prelude::Duration::from_mins(5),
        )
        .with_issuer(ISSUER)
        .with_subject("alice")
        .with_audience("orders-api");
        key.sign(claims).unwrap()
    };
    let ath = b64.encode(sha2::Sha256::digest(bound.as_bytes()));
    let mut n = 0u64;
    let mut dpop_request = || {
        n += 1;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk});
        let claims = json!({"jti": format!("bench-{n}"), "htm": "GET",
            "htu": "https://acme.example.com/tenants/acme/orders/42", "iat": now, "ath": ath});
        let input = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        );
        let sig = client.key_pair().as_ref().sk.sign(input.as_bytes(), None);
        let proof = format!("{input}.{}", b64.encode(sig.as_ref()));
        let mut r = request("/tenants/acme/orders/42", None);
        let http = r
            .attributes
            .as_mut()
            .unwrap()
            .request
            .as_mut()
            .unwrap()
            .http
            .as_mut()
            .unwrap();
        http.headers
            .insert("authorization".into(), format!("DPoP {bound}"));
        http.headers.insert("dpop".into(), proof);
        r
    };
    let first = dpop_request();
    let d = pipeline.check(&first);
    assert!(d.allowed, "{:?} {:?}", d.reason, d.detail);
    c.bench_function("check/dpop_bound", |b| {
        b.iter_batched(
            &mut dpop_request,
            |req| black_box(pipeline.check(&req)),
            BatchSize::SmallInput,
        )
    });
    c.bench_function("check/rs256_cache_miss", |b| {
        b.iter_batched(
            || request("/tenants/acme/orders/42", Some(&mint(&key))),
            |req| {
                let d = pipeline.check(&req);
                debug_assert!(d.allowed);
                black_box(d)
            },
            BatchSize::PerIteration,
        )
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
