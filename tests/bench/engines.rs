//! The same object-level policy as YAML rules (CEL), as Rego and as Cedar, in process
//! (`Pipeline::check`: CheckRequest → Decision), with `cargo bench --bench
//! engines`. Read every figure as a ratio to `engines/constant_answer` (a
//! tenant whose one public rule always allows), measured in the same run.
//!
//! The policy: a caller with a cached RS256 token may `GET
//! /tenants/{tenant}/orders/{order}` when its `tenant` claim is the path's
//! tenant and it holds `orders:read`.
//!
//! - `engines/yaml_object_level`: the YAML rule.
//! - `engines/rego_object_level`: the same in Rego, reading
//!   `input.portcullis.claims` and `input.parsed_path`.
//! - `engines/rego_decode_verify`: the same in Rego verifying the token
//!   itself with `io.jwt.decode_verify` (as OPA-Envoy's primer does).
//! - `engines/cedar_object_level`: the same in Cedar: a `permit` on the
//!   route's action for a principal whose `tenant` is the resource's, holding
//!   `orders:read`, validated against its schema at load.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
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

fn identity(jwks: &Value) -> String {
    format!(
        "shared_issuers: [\"{ISSUER}\"]\nidentity:\n  jwt:\n    - issuer: {ISSUER}\n      audiences: [orders-api]\n      algorithms: [RS256]\n      jwks: {jwks}\n"
    )
}

const OBJECT_LEVEL_REGO: &str = r#"package envoy.authz

default allow := false

allow if {
	input.attributes.request.http.method == "GET"
	["tenants", tenant, "orders", _] = input.parsed_path
	claims := input.portcullis.claims
	claims.tenant == tenant
	"orders:read" in claims.scope
}
"#;

const DECODE_VERIFY_REGO: &str = r#"package envoy.authz

default allow := false

allow if {
	input.attributes.request.http.method == "GET"
	["tenants", tenant, "orders", _] = input.parsed_path
	[_, encoded] := split(input.attributes.request.http.headers.authorization, " ")
	[valid, _, claims] := io.jwt.decode_verify(encoded, {"secret": "unused"})
	valid
	claims.tenant == tenant
	"orders:read" in split(claims.scope, " ")
}
"#;

const OBJECT_LEVEL_CEDAR: &str = r#"@id("orders")
permit (principal is Jwt, action == Action::"read", resource is Order)
when {
  principal has tenant && principal.tenant == resource.tenant &&
  principal has scope && principal.scope.contains("orders:read")
};
"#;

const CEDAR_SCHEMA: &str = r#"entity Jwt = { tenant?: String, scope?: Set<String> };
entity Order = { tenant: String, order: String };
action "read" appliesTo { principal: Jwt, resource: Order, context: {} };
"#;

fn setup(jwks: &Value) -> (tempfile::TempDir, Pipeline) {
    let dir = tempfile::tempdir().unwrap();
    let id = identity(jwks);
    let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
    write(
        "constant.yaml",
        format!(
            "apiVersion: portcullis/v1\ntenant: constant\n{id}rules:\n  - {{ id: any, path: \"/{{rest...}}\", effect: allow, public: true }}\n"
        ),
    );
    write(
        "yaml.yaml",
        format!(
            "apiVersion: portcullis/v1\ntenant: yaml\n{id}rules:\n  - id: orders\n    methods: [GET]\n    path: /tenants/{{tenant}}/orders/{{order}}\n    when: '\"orders:read\" in claims.scope && resource.params.tenant == claims.tenant'\n    effect: allow\n"
        ),
    );
    for (tenant, module) in [
        ("rego", OBJECT_LEVEL_REGO),
        ("rego_jwt", DECODE_VERIFY_REGO),
    ] {
        write(
            &format!("{tenant}.yaml"),
            format!(
                "apiVersion: portcullis/v1\ntenant: {tenant}\n{id}policy:\n  rego:\n    files: [{tenant}.rego]\n"
            ),
        );
        write(&format!("{tenant}.rego"), module.to_string());
    }
    write(
        "cedar.yaml",
        format!(
            "apiVersion: portcullis/v1\ntenant: cedar\n{id}policy:\n  cedar:\n    policies: cedar.cedar\n    schema: cedar.cedarschema\n    routes:\n      - {{ path: \"/tenants/{{tenant}}/orders/{{order}}\", methods: [GET], action: read, resource: Order }}\n"
        ),
    );
    write("cedar.cedar", OBJECT_LEVEL_CEDAR.to_string());
    write("cedar.cedarschema", CEDAR_SCHEMA.to_string());
    let store = PolicyStore::new(dir.path());
    let status = store.reload();
    assert!(status.errors.is_empty(), "{:?}", status.error_lines());
    (
        dir,
        Pipeline::new(Arc::new(store), TenantResolver::default()),
    )
}

fn request(tenant: &str, token: &str) -> CheckRequest {
    portcullis::app::cli::check_request_from_json(&json!({
        "attributes": {
            "contextExtensions": { "tenant": tenant },
            "request": { "http": {
                "method": "GET", "path": "/tenants/acme/orders/42", "host": "api.example",
                "headers": { "authorization": format!("Bearer {token}") },
            }},
        }
    }))
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let key = RS256KeyPair::generate(2048).unwrap().with_key_id("k1");
    let jwk: Value = serde_json::from_str(&key.public_key().to_jwk()).unwrap();
    let (_dir, p) = setup(&json!({ "keys": [jwk] }));
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Custom {
        tenant: String,
        scope: String,
    }
    let claims = Claims::with_custom_claims(
        Custom {
            tenant: "acme".into(),
            scope: "orders:read".into(),
        },
        jwt_simple::prelude::Duration::from_hours(1),
    )
    .with_issuer(ISSUER)
    .with_subject("alice")
    .with_audience("orders-api");
    let token = key.sign(claims).unwrap();
    for (name, tenant) in [
        ("engines/constant_answer", "constant"),
        ("engines/yaml_object_level", "yaml"),
        ("engines/rego_object_level", "rego"),
        ("engines/rego_decode_verify", "rego_jwt"),
        ("engines/cedar_object_level", "cedar"),
    ] {
        let r = request(tenant, &token);
        let d = p.check(&r);
        assert!(d.allowed, "{name}: {d:?}");
        c.bench_function(name, |b| b.iter(|| black_box(p.check(black_box(&r)))));
    }
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
