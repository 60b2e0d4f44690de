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
//! - `rs256_cache_hit_50_rules`: a cached token against a tenant of 50 rules with
//!   CEL conditions (45 on other routes, 4 deny rules on this route whose
//!   conditions are false, then the allow rule): the issue's 10 µs target.
//! - `rs256_cache_hit_1000_rules`: the same with 999 rules on other routes.
//! - `rs256_cache_hit_10000_tenants`: the acme tenant's request against a store
//!   of 10,000 tenants (the rule set of `acme` each).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use jwt_simple::prelude::*;
use serde_json::{Value, json};

use portcullis::foundation::proto::auth::CheckRequest;
use portcullis::pipeline::Pipeline;
use portcullis::request::tenancy::TenantResolver;
use portcullis::tenants::store::PolicyStore;

/// The binary's allocator (src/main.rs), so these figures are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ISSUER: &str = "https://idp.acme.example";

fn acme_policy(tenant: &str, jwks: &Value) -> String {
    format!(
        r#"apiVersion: portcullis/v1
tenant: {tenant}
# Every benchmark tenant trusts the same issuer, knowingly.
shared_issuers: ["{ISSUER}"]
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
    )
}

/// A tenant of `other + 5` rules: `other` on routes the request does not take,
/// four deny rules on its route whose conditions are false, the allow rule.
fn many_rules_policy(tenant: &str, jwks: &Value, other: usize) -> String {
    let mut rules = String::new();
    for i in 0..other {
        rules += &format!(
            "  - id: other-{i}\n    methods: [GET, POST]\n    path: /tenants/{{tenant}}/things-{i}/{{id}}\n    when: '\"things:{i}\" in claims.scope && resource.params.tenant == claims.tenant'\n    effect: allow\n"
        );
    }
    for i in 0..4 {
        rules += &format!(
            "  - id: blocked-{i}\n    path: /tenants/{{tenant}}/orders/{{order}}\n    when: 'claims.sub == \"blocked-{i}\" || resource.params.order == \"locked-{i}\"'\n    effect: deny\n"
        );
    }
    format!(
        r#"apiVersion: portcullis/v1
tenant: {tenant}
# Every benchmark tenant trusts the same issuer, knowingly.
shared_issuers: ["{ISSUER}"]
identity:
  jwt:
    - {{ issuer: "{ISSUER}", audiences: [orders-api], algorithms: [RS256], jwks: {jwks}, max_lifetime: 15m }}
rules:
{rules}  - id: orders
    methods: [GET]
    path: /tenants/{{tenant}}/orders/{{order}}
    when: '"orders:read" in claims.scope && resource.params.tenant == claims.tenant'
    effect: allow
response:
  headers: {{ x-subject: "{{claims.sub}}", x-tenant: "{{tenant}}" }}
"#
    )
}

/// A policy directory of `files`, loaded.
fn setup(files: impl IntoIterator<Item = (String, String)>) -> (tempfile::TempDir, Pipeline) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let store = PolicyStore::new(dir.path());
    assert!(store.reload().errors.is_empty());
    (
        dir,
        Pipeline::new(Arc::new(store), TenantResolver::default()),
    )
}

fn request(path: &str, token: Option<&str>) -> CheckRequest {
    request_for("acme", path, token)
}

fn request_for(tenant: &str, path: &str, token: Option<&str>) -> CheckRequest {
    let mut headers = json!({ "user-agent": "bench", "accept": "*/*" });
    if let Some(t) = token {
        headers["authorization"] = json!(format!("Bearer {t}"));
    }
    portcullis::app::cli::check_request_from_json(&json!({
        "attributes": {
            "contextExtensions": { "tenant": tenant },
            "request": { "http": { "method": "GET", "host": "acme.example.com", "path": path, "headers": headers } }
        }
    }))
    .unwrap()
}

fn mint(key: &RS256KeyPair) -> String {
    mint_for(key, "acme")
}

/// Every token minted is new: RS256 signatures are deterministic, so without
/// a `jti` two tokens minted in the same second would be the same token, and
/// `rs256_cache_miss` would measure cache hits.
fn mint_for(key: &RS256KeyPair, tenant: &str) -> String {
    static MINTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let jti = MINTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let claims = Claims::with_custom_claims(
        json!({ "tenant": tenant, "scope": "orders:read" }),
        jwt_simple::prelude::Duration::from_mins(5),
    )
    .with_jwt_id(format!("bench-{jti}"))
    .with_issuer(ISSUER)
    .with_subject("alice")
    .with_audience("orders-api");
    key.sign(claims).unwrap()
}

fn bench(c: &mut Criterion) {
    let key = RS256KeyPair::generate(2048).unwrap().with_key_id("bench-1");
    let jwk: Value = serde_json::from_str(&key.public_key().to_jwk()).unwrap();
    let jwks = json!({ "keys": [jwk] });
    let (_dir, pipeline) = setup([
        ("acme.yaml".to_string(), acme_policy("acme", &jwks)),
        (
            "fifty.yaml".to_string(),
            many_rules_policy("fifty", &jwks, 45),
        ),
        ("big.yaml".to_string(), many_rules_policy("big", &jwks, 995)),
    ]);

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
    for (name, tenant) in [
        ("check/rs256_cache_hit_50_rules", "fifty"),
        ("check/rs256_cache_hit_1000_rules", "big"),
    ] {
        let req = request_for(
            tenant,
            &format!("/tenants/{tenant}/orders/42"),
            Some(&mint_for(&key, tenant)),
        );
        let d = pipeline.check(&req);
        assert!(d.allowed, "{tenant}: {:?} {:?}", d.reason, d.detail);
        c.bench_function(name, |b| {
            b.iter(|| black_box(pipeline.check(black_box(&req))))
        });
    }
    {
        const TENANTS: usize = 10_000;
        let (_many, crowded) = setup(
            (0..TENANTS).map(|i| (format!("t{i}.yaml"), acme_policy(&format!("t{i}"), &jwks))),
        );
        let tenant = format!("t{}", TENANTS / 2);
        let req = request_for(
            &tenant,
            &format!("/tenants/{tenant}/orders/42"),
            Some(&mint_for(&key, &tenant)),
        );
        let d = crowded.check(&req);
        assert!(d.allowed, "{:?} {:?}", d.reason, d.detail);
        c.bench_function("check/rs256_cache_hit_10000_tenants", |b| {
            b.iter(|| black_box(crowded.check(black_box(&req))))
        });
    }
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
