//! Writes the load benchmarks' fixtures (`tests/bench/run.sh`): an RS256 key
//! and its JWKS, policy directories, gRPC-framed CheckRequests for `h2load`,
//! and a token for `wrk`. Then decides every request in process and exits
//! non-zero unless each is allowed, so a load run never measures fast denials.
//!
//! `cargo run --release --example fixtures -- OUT_DIR [TENANTS] [DISTINCT_TENANTS]`
//!
//! - `one/`: tenant `acme`, 50 rules with CEL conditions (45 on other routes,
//!   4 deny rules on the benchmarked route whose conditions are false, then the
//!   allow rule).
//! - `many/`: TENANTS (default 10,000) tenants × 20 rules made from one template
//!   (the same conditions in every tenant).
//! - `distinct/`: DISTINCT_TENANTS (default 1,000) tenants × 20 rules, each
//!   condition its own.
//! - `rego/`: tenant `acme` decided by `tests/bench/opa/authz.rego` (the
//!   policy OPA-Envoy is measured on) with `data.json` (the JWKS as
//!   `data.bench.jwks`), the same issuer under `identity`. `run.sh` gives
//!   OPA-Envoy this directory's `authz.rego` and `data.json`, so both servers
//!   run the same files on the same request.
//! - `cedar/`: tenant `acme` decided by a Cedar policy with the same
//!   object-level rule (GET on the orders route, `orders:read` in the scope,
//!   the path's tenant equal to the token's), validated against its schema;
//!   the same issuer under `identity`. Like the Rego tenant it sets no
//!   response headers.
//!
//! Besides the allow, every tenant of `acme` (`one`, `rego`, `cedar`) must
//! deny the same request carrying another tenant's token: the three decide
//! the object-level rule alike, not only the happy path.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use jwt_simple::prelude::*;
use prost::Message;
use serde_json::{Value, json};

use portcullis::foundation::proto::auth::CheckRequest;
use portcullis::pipeline::Pipeline;
use portcullis::request::tenancy::TenantResolver;
use portcullis::tenants::store::PolicyStore;

const ISSUER: &str = "https://idp.bench.example";
const AUDIENCE: &str = "orders-api";
/// Long enough for a full run; policies cap token lifetime at the same.
const TOKEN_LIFETIME_MINS: u64 = 120;
const RULES_PER_TENANT: usize = 20;

/// Every rule reads `claims.tenant`, a custom claim: declared, as a SaaS
/// deployment's policies would (undeclared, each rule raised a warning, and the
/// 10,000-tenant load measured 200,000 warnings rather than the rules).
fn identity(jwks: &str) -> String {
    format!(
        "claims: [tenant]\nshared_issuers: [\"{ISSUER}\"]\nidentity:\n  jwt:\n    - issuer: {ISSUER}\n      audiences: [{AUDIENCE}]\n      algorithms: [RS256]\n      jwks: {jwks}\n      max_lifetime: {TOKEN_LIFETIME_MINS}m\n"
    )
}

const HEADERS: &str =
    "response:\n  headers: { x-subject: \"{claims.sub}\", x-tenant: \"{tenant}\" }\n";

/// The rule every benchmarked request matches.
const ALLOW: &str = "  - id: orders\n    methods: [GET]\n    path: /tenants/{tenant}/orders/{order}\n    when: '\"orders:read\" in claims.scope && resource.params.tenant == claims.tenant'\n    effect: allow\n";

fn one(jwks: &str) -> String {
    let mut rules = String::new();
    for i in 0..45 {
        rules += &format!(
            "  - id: other-{i}\n    methods: [GET, POST]\n    path: /tenants/{{tenant}}/things-{i}/{{id}}\n    when: '\"things:{i}\" in claims.scope && resource.params.tenant == claims.tenant'\n    effect: allow\n"
        );
    }
    for i in 0..4 {
        rules += &format!(
            "  - id: blocked-{i}\n    path: /tenants/{{tenant}}/orders/{{order}}\n    when: 'claims.sub == \"blocked-{i}\" || resource.params.order == \"locked-{i}\"'\n    effect: deny\n"
        );
    }
    rules += ALLOW;
    format!(
        "apiVersion: portcullis/v1\ntenant: acme\n{}rules:\n{rules}{HEADERS}",
        identity(jwks)
    )
}

/// The Rego policy both OPA-Envoy and portcullis' Rego tenant run.
const REGO_POLICY: &str = include_str!("../../tests/bench/opa/authz.rego");

fn rego_tenant(jwks: &str) -> String {
    format!(
        "apiVersion: portcullis/v1\ntenant: acme\n{}policy:\n  rego:\n    files: [authz.rego]\n    data: [data.json]\n",
        identity(jwks)
    )
}

/// The allow rule of `ALLOW` and `authz.rego` as a Cedar policy: the
/// principal's attributes are the validated claims (`scope` as a set), the
/// resource's the route's path parameters (docs/cedar.md).
const CEDAR_POLICY: &str = r#"// The benchmarked route: an order is read by a caller of its own tenant
// holding orders:read.
@id("orders")
permit (principal is Jwt, action == Action::"read", resource is Order)
when {
  principal has tenant && principal.tenant == resource.tenant &&
  principal has scope && principal.scope.contains("orders:read")
};
"#;

/// What the Cedar policy may read, checked in strict mode at load.
const CEDAR_SCHEMA: &str = r#"entity Jwt = { sub: String, tenant?: String, scope?: Set<String> };
entity Order = { tenant: String, order: String };
action "read" appliesTo { principal: Jwt, resource: Order, context: {} };
"#;

fn cedar_tenant(jwks: &str) -> String {
    format!(
        "apiVersion: portcullis/v1\ntenant: acme\n{}policy:\n  cedar:\n    policies: authz.cedar\n    schema: authz.cedarschema\n    routes:\n      - {{ path: \"/tenants/{{tenant}}/orders/{{order}}\", methods: [GET], action: read, resource: Order }}\n",
        identity(jwks)
    )
}

fn templated(tenant: &str, jwks: &str) -> String {
    let mut rules = String::new();
    for i in 0..RULES_PER_TENANT - 1 {
        rules += &format!(
            "  - id: r{i}\n    methods: [GET]\n    path: /tenants/{{tenant}}/things-{i}/{{id}}\n    when: '\"things:read\" in claims.scope && resource.params.tenant == claims.tenant'\n    effect: allow\n"
        );
    }
    rules += ALLOW;
    format!(
        "apiVersion: portcullis/v1\ntenant: {tenant}\n{}rules:\n{rules}{HEADERS}",
        identity(jwks)
    )
}

fn distinct(n: usize, tenant: &str, jwks: &str) -> String {
    let mut rules = String::new();
    for i in 0..RULES_PER_TENANT - 1 {
        rules += &format!(
            "  - id: r{i}\n    methods: [GET]\n    path: /tenants/{{tenant}}/things-{i}/{{id}}\n    when: '\"things:{n}:{i}\" in claims.scope && resource.params.id != \"{n}-{i}\"'\n    effect: allow\n"
        );
    }
    rules += ALLOW;
    format!(
        "apiVersion: portcullis/v1\ntenant: {tenant}\n{}rules:\n{rules}{HEADERS}",
        identity(jwks)
    )
}

fn request(tenant: &str, token: &str) -> CheckRequest {
    request_on(tenant, tenant, token)
}

/// A request routed to `tenant` for an order of `path_tenant`.
fn request_on(tenant: &str, path_tenant: &str, token: &str) -> CheckRequest {
    portcullis::app::cli::check_request_from_json(&json!({
        "attributes": {
            "contextExtensions": { "tenant": tenant },
            "request": { "http": {
                "method": "GET", "host": "api.bench.example", "scheme": "http",
                "path": format!("/tenants/{path_tenant}/orders/42"),
                "headers": {
                    ":authority": "api.bench.example", ":method": "GET",
                    ":path": format!("/tenants/{path_tenant}/orders/42"),
                    "user-agent": "bench", "accept": "*/*",
                    "authorization": format!("Bearer {token}")
                }
            } }
        }
    }))
    .unwrap()
}

/// A gRPC message: the 5-byte prefix (uncompressed, length) and the message.
fn framed(r: &CheckRequest) -> Vec<u8> {
    let body = r.encode_to_vec();
    let mut out = vec![0u8];
    out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn mint(key: &RS256KeyPair, tenant: &str) -> String {
    let claims = Claims::with_custom_claims(
        json!({ "tenant": tenant, "scope": "orders:read profile" }),
        jwt_simple::prelude::Duration::from_mins(TOKEN_LIFETIME_MINS),
    )
    .with_issuer(ISSUER)
    .with_subject("alice")
    .with_audience(AUDIENCE);
    key.sign(claims).unwrap()
}

fn write_dir(dir: &Path, files: impl Iterator<Item = (String, String)>) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// Decides `request` with the policies in `dir`, which must load whole.
fn decide(dir: &Path, request: &CheckRequest) -> portcullis::decision::Decision {
    let store = PolicyStore::new(dir);
    let report = store.reload();
    assert!(
        report.errors.is_empty(),
        "{}: {:?}",
        dir.display(),
        report.errors
    );
    Pipeline::new(Arc::new(store), TenantResolver::default()).check(request)
}

/// `request` is allowed by the policies in `dir`; returns the deciding rule.
fn check(dir: &Path, request: &CheckRequest) -> Option<String> {
    let d = decide(dir, request);
    assert!(
        d.allowed,
        "{}: {:?} {:?}",
        dir.display(),
        d.reason,
        d.detail
    );
    d.rule.map(|r| r.to_string())
}

/// `request` is denied by the policies in `dir`.
fn check_denied(dir: &Path, request: &CheckRequest) {
    let d = decide(dir, request);
    assert!(
        !d.allowed,
        "{}: allowed by {:?}, expected a deny",
        dir.display(),
        d.rule
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .expect("usage: fixtures OUT_DIR [TENANTS] [DISTINCT]"),
    );
    let tenants: usize = args.next().map_or(10_000, |a| a.parse().unwrap());
    let distinct_tenants: usize = args.next().map_or(1_000, |a| a.parse().unwrap());

    let key = RS256KeyPair::generate(2048).unwrap().with_key_id("bench-1");
    let jwk: Value = serde_json::from_str(&key.public_key().to_jwk()).unwrap();
    let jwks = json!({ "keys": [jwk] }).to_string();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("jwks.json"), &jwks).unwrap();

    write_dir(
        &out.join("one"),
        std::iter::once(("acme.yaml".into(), one(&jwks))),
    );
    write_dir(
        &out.join("many"),
        (0..tenants).map(|i| (format!("t{i}.yaml"), templated(&format!("t{i}"), &jwks))),
    );
    write_dir(
        &out.join("distinct"),
        (0..distinct_tenants).map(|i| (format!("d{i}.yaml"), distinct(i, &format!("d{i}"), &jwks))),
    );

    write_dir(
        &out.join("rego"),
        [
            ("acme.yaml".into(), rego_tenant(&jwks)),
            ("authz.rego".into(), REGO_POLICY.into()),
            (
                "data.json".into(),
                json!({ "bench": { "jwks": jwks } }).to_string(),
            ),
        ]
        .into_iter(),
    );

    write_dir(
        &out.join("cedar"),
        [
            ("acme.yaml".into(), cedar_tenant(&jwks)),
            ("authz.cedar".into(), CEDAR_POLICY.into()),
            ("authz.cedarschema".into(), CEDAR_SCHEMA.into()),
        ]
        .into_iter(),
    );

    let acme_token = mint(&key, "acme");
    std::fs::write(out.join("token-acme.txt"), &acme_token).unwrap();
    let acme = request("acme", &acme_token);
    std::fs::write(out.join("check-acme.bin"), framed(&acme)).unwrap();
    let t0 = request("t0", &mint(&key, "t0"));
    std::fs::write(out.join("check-t0.bin"), framed(&t0)).unwrap();

    check(&out.join("one"), &acme);
    check(&out.join("rego"), &acme);
    // The Cedar tenant allows by its one permit, named as the YAML rule is.
    let cedar_rule = check(&out.join("cedar"), &acme);
    assert_eq!(
        cedar_rule.as_deref(),
        Some("orders"),
        "cedar: the deciding policy"
    );
    let foreign = request_on("acme", "acme", &mint(&key, "globex"));
    for dir in ["one", "rego", "cedar"] {
        check_denied(&out.join(dir), &foreign);
    }
    check(&out.join("many"), &t0);
    let d0 = request("d0", &mint(&key, "d0"));
    check(&out.join("distinct"), &d0);
    println!(
        "fixtures ok: {} ({tenants} templated tenants, {distinct_tenants} distinct)",
        out.display()
    );
}
