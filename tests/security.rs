//! The OWASP API Security Top 10 (2023) items an authorization server can stop,
//! as real `CheckRequest`s through [`Pipeline::check`]: API1 broken object level
//! authorization, API3 broken object property level authorization and API5
//! broken function level authorization. `docs/security.md` maps each test to the
//! attack and the policy feature that stops it (API2, broken authentication, is
//! covered by `tests/jwt.rs`, `tests/binding.rs` and the golden corpus).
//!
//! Every group has its allow path next to its deny paths, so a rule that stopped
//! matching at all would fail here as surely as one that let an attack through.
//! Two tenants, `legacy` and `hardened`, pin gaps portcullis leaves to the policy
//! author (path case, method-override headers): `legacy` shows the gap, and
//! `hardened` the policy that closes it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use portcullis::decision::Decision;
use portcullis::pipeline::Pipeline;
use portcullis::request::tenancy::TenantResolver;
use portcullis::tenants::store::PolicyStore;
use serde_json::{Value, json};

const ACME: &str = r#"apiVersion: portcullis/v1
tenant: acme
identity:
  envoy_jwt_authn: { issuers: ["https://idp.acme.example"] }
claims: [tenant]
rules:
  # API5: an upstream that honours a method-override header or a `_method`
  # parameter would run another method than the one the rules checked.
  - id: no-method-override
    path: /{any...}
    when: >-
      ["x-http-method-override", "x-http-method", "x-method-override"].exists(h, h in resource.headers)
      || "_method" in resource.query
    effect: deny
  # API1: the tenant in the path must be the caller's own.
  - id: read-own-orders
    methods: [GET]
    path: /tenants/{tenant}/orders/{order}
    when: has(claims.tenant) && resource.params.tenant == claims.tenant
    effect: allow
  - id: update-own-order
    methods: [POST]
    path: /tenants/{tenant}/orders/{order}
    scopes: [orders:write]
    when: has(claims.tenant) && resource.params.tenant == claims.tenant
    effect: allow
  # API5: deleting is a function of its own, with a scope of its own.
  - id: delete-own-order
    methods: [DELETE]
    path: /tenants/{tenant}/orders/{order}
    scopes: [orders:admin]
    when: has(claims.tenant) && resource.params.tenant == claims.tenant
    effect: allow
  # API3: an allow-list of the properties a caller may set.
  - id: edit-own-profile
    methods: [PUT, PATCH]
    path: /users/{owner}/profile
    when: >-
      has(claims.sub) && resource.params.owner == claims.sub
      && type(resource.body) == type({})
      && resource.body.all(k, k in ["display_name", "email"])
    effect: allow
  # API3, the weaker form: a deny-list of properties (see the tests).
  - id: no-privileged-fields
    methods: [POST]
    path: /accounts
    when: '"role" in resource.body || "owner" in resource.body'
    effect: deny
  - id: create-account
    methods: [POST]
    path: /accounts
    effect: allow
  # API5: admin functions need the admin role; deny rules apply to everyone.
  - id: admin-needs-role
    path: /admin/{rest...}
    when: '!has(claims.roles) || !("admin" in claims.roles)'
    effect: deny
  - id: admin
    path: /admin/{rest...}
    effect: allow
"#;

const GLOBEX: &str = r#"apiVersion: portcullis/v1
tenant: globex
identity:
  envoy_jwt_authn: { issuers: ["https://idp.globex.example"] }
claims: [tenant]
rules:
  - id: read-own-orders
    methods: [GET]
    path: /tenants/{tenant}/orders/{order}
    when: has(claims.tenant) && resource.params.tenant == claims.tenant
    effect: allow
"#;

/// A broad read rule beside an admin deny written as a template, and nothing
/// about method overrides: what a policy looks like before it is hardened.
const LEGACY: &str = r#"apiVersion: portcullis/v1
tenant: legacy
identity:
  envoy_jwt_authn: { issuers: ["https://idp.legacy.example"] }
rules:
  - id: admin-needs-role
    path: /admin/{rest...}
    when: '!has(claims.roles) || !("admin" in claims.roles)'
    effect: deny
  - id: read-anything
    methods: [GET]
    path: /{any...}
    effect: allow
  - id: update-items
    methods: [POST]
    path: /items/{id}
    effect: allow
"#;

/// `legacy`, hardened: the admin deny matches the path in any case, and the
/// method-override headers never reach the upstream.
const HARDENED: &str = r#"apiVersion: portcullis/v1
tenant: hardened
identity:
  envoy_jwt_authn: { issuers: ["https://idp.hardened.example"] }
rules:
  - id: admin-needs-role
    path: /{any...}
    when: >-
      resource.path.matches("(?i)^/admin(/|$)")
      && (!has(claims.roles) || !("admin" in claims.roles))
    effect: deny
  - id: read-anything
    methods: [GET]
    path: /{any...}
    effect: allow
  - id: update-items
    methods: [POST]
    path: /items/{id}
    effect: allow
response:
  remove: [x-http-method-override, x-http-method, x-method-override]
"#;

struct World {
    _dir: tempfile::TempDir,
    pipeline: Pipeline,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("acme.yaml", ACME),
        ("globex.yaml", GLOBEX),
        ("legacy.yaml", LEGACY),
        ("hardened.yaml", HARDENED),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let store = PolicyStore::new(dir.path());
    let status = store.reload();
    assert!(status.errors.is_empty(), "{:?}", status.errors);
    assert_eq!(status.tenants.len(), 4);
    World {
        _dir: dir,
        pipeline: Pipeline::new(Arc::new(store), TenantResolver::default()),
    }
}

/// One request, as Envoy would describe it.
#[derive(Clone)]
struct Req {
    tenant: &'static str,
    method: &'static str,
    host: &'static str,
    path: String,
    headers: Value,
    claims: Option<Value>,
    body: Option<&'static str>,
}

fn req(tenant: &'static str, method: &'static str, path: &str) -> Req {
    Req {
        tenant,
        method,
        host: "api.example.com",
        path: path.to_string(),
        headers: json!({}),
        claims: None,
        body: None,
    }
}

impl Req {
    fn claims(mut self, claims: Value) -> Req {
        self.claims = Some(claims);
        self
    }

    fn header(mut self, name: &str, value: &str) -> Req {
        self.headers[name] = json!(value);
        self
    }

    fn json_body(self, body: &'static str) -> Req {
        self.body(body, "application/json")
    }

    fn body(mut self, body: &'static str, content_type: &str) -> Req {
        self.body = Some(body);
        self.header("content-type", content_type)
    }

    fn host(mut self, host: &'static str) -> Req {
        self.host = host;
        self
    }

    fn check(&self, w: &World) -> Decision {
        let mut http = json!({
            "method": self.method,
            "host": self.host,
            "path": self.path,
            "headers": self.headers,
        });
        if let Some(body) = self.body {
            http["body"] = json!(body);
        }
        let mut attributes = json!({
            "contextExtensions": { "tenant": self.tenant },
            "request": { "http": http },
        });
        if let Some(claims) = &self.claims {
            attributes["metadataContext"] = json!({
                "filterMetadata": { "envoy.filters.http.jwt_authn": { "jwt_payload": claims } }
            });
        }
        let request =
            portcullis::app::cli::check_request_from_json(&json!({ "attributes": attributes }))
                .unwrap();
        w.pipeline.check(&request)
    }
}

/// A caller of tenant `acme` whose token Envoy's `jwt_authn` verified.
fn alice(scope: &[&str]) -> Value {
    json!({ "iss": "https://idp.acme.example", "sub": "alice", "tenant": "acme", "scope": scope })
}

#[track_caller]
fn allowed(d: &Decision, rule: &str) {
    assert!(
        d.allowed,
        "expected an allow by {rule}, got {:?} {:?}",
        d.reason, d.detail
    );
    assert_eq!(d.rule.as_deref(), Some(rule));
}

#[track_caller]
fn denied(d: &Decision, status: u16, reason: &str) {
    assert!(!d.allowed, "expected a deny ({reason}), got an allow");
    assert_eq!(
        (d.status(), d.reason.code()),
        (status, reason),
        "{:?}",
        d.detail
    );
}

/// API1: another tenant's object is denied; the caller's own is allowed.
#[test]
fn api1_another_tenants_object_is_denied() {
    let w = world();
    let own = req("acme", "GET", "/tenants/acme/orders/42").claims(alice(&[]));
    allowed(&own.check(&w), "read-own-orders");

    let theirs = req("acme", "GET", "/tenants/globex/orders/42").claims(alice(&[]));
    denied(&theirs.check(&w), 403, "no_matching_rule");

    // A tenant id is compared exactly: case is not folded, and an encoded
    // space makes another id.
    for path in [
        "/tenants/GLOBEX/orders/42",
        "/tenants/ACME/orders/42",
        "/tenants/acme%20/orders/42",
    ] {
        let d = req("acme", "GET", path).claims(alice(&[])).check(&w);
        denied(&d, 403, "no_matching_rule");
    }

    // A query is not the path: what follows `?` never changes which object
    // the rule sees, in either direction.
    let d = req("acme", "GET", "/tenants/globex/orders/42?tenant=acme")
        .claims(alice(&[]))
        .check(&w);
    denied(&d, 403, "no_matching_rule");
    let d = req(
        "acme",
        "GET",
        "/tenants/acme/orders/42?/../../globex/orders/42",
    )
    .claims(alice(&[]))
    .check(&w);
    allowed(&d, "read-own-orders");

    // A caller without the claim: the `has()` guard makes it a plain no-match
    // (without the guard it would be a policy_error), never an allow.
    let no_tenant = json!({ "iss": "https://idp.acme.example", "sub": "alice" });
    let d = req("acme", "GET", "/tenants/acme/orders/42")
        .claims(no_tenant)
        .check(&w);
    denied(&d, 403, "no_matching_rule");

    // Anonymous: asked for a credential, not shown the object.
    denied(
        &req("acme", "GET", "/tenants/acme/orders/42").check(&w),
        401,
        "missing_credential",
    );
}

/// API1: no spelling of the path walks from the caller's own object to another
/// tenant's. Each is refused before any rule runs, so it cannot matter how the
/// upstream would have resolved it.
#[test]
fn api1_path_tricks_never_reach_another_object() {
    let w = world();
    for path in [
        "/tenants/acme/orders/../../globex/orders/42",
        "/tenants/acme/orders/./../../globex/orders/42",
        "/tenants/acme/orders/%2e%2e/%2e%2e/globex/orders/42",
        "/tenants/acme/orders/%2E%2E/%2E%2E/globex/orders/42",
        "/tenants/acme/orders/.%2e/.%2e/globex/orders/42",
        "/tenants/acme/orders/%252e%252e/%252e%252e/globex/orders/42",
        "/tenants/acme%2F..%2F..%2Fglobex/orders/42",
        "/tenants/acme%2f..%2f..%2fglobex/orders/42",
        "/tenants/acme/orders/..%5C..%5Cglobex/orders/42",
        "/tenants/acme/orders/..\\..\\globex/orders/42",
        "/tenants//globex/orders/42",
        "//tenants/globex/orders/42",
        "/tenants/acme;/../globex/orders/42",
        "/tenants/globex;tenant=acme/orders/42",
        "/tenants/acme/orders/42;/../../../globex/orders/42",
        "/tenants/%67lobex/orders/42",
        "/tenants/%61cme/orders/42",
        "/tenants/acme/orders/42%00/../../globex/orders/42",
        "/tenants/acme/orders/42#/../../globex/orders/42",
        "tenants/globex/orders/42",
    ] {
        let d = req("acme", "GET", path).claims(alice(&[])).check(&w);
        assert!(!d.allowed, "{path} was allowed");
        assert_eq!(
            (d.status(), d.reason.code()),
            (400, "non_canonical_path"),
            "{path}"
        );
    }
}

/// API1 across tenants: a token for another tenant, or a client naming
/// another tenant, never gets the other tenant's rules to judge it.
#[test]
fn api1_another_tenants_token_and_tenant_spoofing() {
    let w = world();
    let globex_bob =
        json!({ "iss": "https://idp.globex.example", "sub": "bob", "tenant": "globex" });
    // Baseline: at globex, globex's token reads globex's orders.
    let d = req("globex", "GET", "/tenants/globex/orders/1")
        .claims(globex_bob.clone())
        .check(&w);
    allowed(&d, "read-own-orders");
    // globex's token at acme's route: its issuer is not acme's.
    let d = req("acme", "GET", "/tenants/globex/orders/1")
        .claims(globex_bob)
        .check(&w);
    denied(&d, 401, "issuer_not_trusted");
    // A globex-issued token that claims to belong to acme: still globex's issuer.
    let forged = json!({ "iss": "https://idp.globex.example", "sub": "bob", "tenant": "acme" });
    let d = req("acme", "GET", "/tenants/acme/orders/1")
        .claims(forged)
        .check(&w);
    denied(&d, 401, "issuer_not_trusted");
    // The route names acme; a Host or header naming globex changes nothing.
    let d = req("acme", "GET", "/tenants/globex/orders/1")
        .claims(alice(&[]))
        .host("globex.example.com")
        .header("x-tenant", "globex")
        .check(&w);
    denied(&d, 403, "no_matching_rule");
    assert_eq!(d.tenant.as_deref(), Some("acme"));
}

/// API3: the caller may set only the properties the rule lists.
#[test]
fn api3_properties_outside_the_allow_list_are_denied() {
    let w = world();
    let put = |body: &'static str| {
        req("acme", "PUT", "/users/alice/profile")
            .claims(alice(&[]))
            .json_body(body)
    };
    allowed(
        &put(r#"{"display_name": "Alice", "email": "a@acme.example"}"#).check(&w),
        "edit-own-profile",
    );
    for body in [
        r#"{"display_name": "Alice", "role": "admin"}"#,
        r#"{"display_name": "Alice", "owner": "mallory"}"#,
        // Case variants a case-insensitive binder (Go's encoding/json) maps
        // onto `role`: not on the list, so denied.
        r#"{"ROLE": "admin"}"#,
        r#"{"Owner": "mallory"}"#,
        // Nested: `profile` is not on the list either.
        r#"{"display_name": "Alice", "profile": {"role": "admin"}}"#,
    ] {
        denied(&put(body).check(&w), 403, "no_matching_rule");
    }
    // Not an object: an array of allowed names is not a profile.
    denied(
        &put(r#"["display_name", "email"]"#).check(&w),
        403,
        "no_matching_rule",
    );
    // The same key twice (also in another case): upstream parsers disagree on
    // which wins, so the body is unusable.
    for body in [
        r#"{"role": "user", "role": "admin"}"#,
        r#"{"display_name": "Alice", "Display_Name": "root"}"#,
    ] {
        denied(&put(body).check(&w), 403, "body_unavailable");
    }
    // A body portcullis cannot read is never read as "no forbidden property".
    let form = req("acme", "PUT", "/users/alice/profile")
        .claims(alice(&[]))
        .body("role=admin", "application/x-www-form-urlencoded");
    denied(&form.check(&w), 403, "body_unavailable");
    let plain = req("acme", "PUT", "/users/alice/profile")
        .claims(alice(&[]))
        .body(r#"{"role": "admin"}"#, "text/plain");
    denied(&plain.check(&w), 403, "body_unavailable");
    let truncated = put(r#"{"display_name": "Alice"}"#).header("x-envoy-auth-partial-body", "true");
    denied(&truncated.check(&w), 403, "body_unavailable");
    // A body Envoy did not send (no with_request_body): not "no body".
    let unsent = req("acme", "PUT", "/users/alice/profile")
        .claims(alice(&[]))
        .header("content-type", "application/json")
        .header("content-length", "17");
    denied(&unsent.check(&w), 403, "body_unavailable");
    // No body at all: `resource.body` is null, which is not a map.
    let empty = req("acme", "PUT", "/users/alice/profile").claims(alice(&[]));
    denied(&empty.check(&w), 403, "no_matching_rule");
    // An allowed body on someone else's profile is still API1.
    let bobs = req("acme", "PUT", "/users/bob/profile")
        .claims(alice(&[]))
        .json_body(r#"{"display_name": "Bob"}"#);
    denied(&bobs.check(&w), 403, "no_matching_rule");
}

/// API3, the weaker form: a deny-list names the property in one spelling only.
/// Pinned so that docs/security.md's advice (allow-lists) stays true.
#[test]
fn api3_a_deny_list_misses_other_spellings() {
    let w = world();
    let post = |body: &'static str| {
        req("acme", "POST", "/accounts")
            .claims(alice(&[]))
            .json_body(body)
    };
    allowed(&post(r#"{"name": "x"}"#).check(&w), "create-account");
    let d = post(r#"{"name": "x", "role": "admin"}"#).check(&w);
    denied(&d, 403, "denied_by_rule");
    assert_eq!(d.rule.as_deref(), Some("no-privileged-fields"));
    // `ROLE` is not `role` to CEL, so this deny-list lets it through; an
    // upstream binding fields case-insensitively would set the role.
    allowed(
        &post(r#"{"name": "x", "ROLE": "admin"}"#).check(&w),
        "create-account",
    );
}

/// API5: admin functions and destructive methods need their own right.
#[test]
fn api5_admin_routes_and_methods_need_their_own_right() {
    let w = world();
    let admin = json!({ "iss": "https://idp.acme.example", "sub": "root", "roles": ["admin"] });
    let user = json!({ "iss": "https://idp.acme.example", "sub": "alice", "roles": ["user"] });
    for method in ["GET", "POST", "DELETE"] {
        allowed(
            &req("acme", method, "/admin/users")
                .claims(admin.clone())
                .check(&w),
            "admin",
        );
        let d = req("acme", method, "/admin/users")
            .claims(user.clone())
            .check(&w);
        denied(&d, 403, "denied_by_rule");
        assert_eq!(d.rule.as_deref(), Some("admin-needs-role"));
        // Deny rules apply to anonymous callers too.
        denied(
            &req("acme", method, "/admin/users").check(&w),
            403,
            "denied_by_rule",
        );
    }
    // The catch-all covers the bare prefix and a trailing slash.
    for path in ["/admin", "/admin/"] {
        let d = req("acme", "GET", path).claims(user.clone()).check(&w);
        denied(&d, 403, "denied_by_rule");
    }

    // Same path, another function: updating needs orders:write, deleting
    // orders:admin. A caller without it is told which scope is missing.
    let order = "/tenants/acme/orders/42";
    allowed(
        &req("acme", "POST", order)
            .claims(alice(&["orders:write"]))
            .check(&w),
        "update-own-order",
    );
    let d = req("acme", "DELETE", order)
        .claims(alice(&["orders:write"]))
        .check(&w);
    denied(&d, 403, "insufficient_scope");
    assert!(d.challenge().unwrap().contains("scope=\"orders:admin\""));
    allowed(
        &req("acme", "DELETE", order)
            .claims(alice(&["orders:admin"]))
            .check(&w),
        "delete-own-order",
    );
    // A method no rule names matches nothing.
    denied(
        &req("acme", "PUT", order)
            .claims(alice(&["orders:write", "orders:admin"]))
            .check(&w),
        403,
        "no_matching_rule",
    );
}

/// API5: a POST that asks the upstream to act as a DELETE. portcullis decides
/// on the method Envoy reports and reads no override header itself; acme's deny
/// rule refuses the request outright.
#[test]
fn api5_method_override_is_refused_by_a_deny_rule() {
    let w = world();
    let order = "/tenants/acme/orders/42";
    let post = || req("acme", "POST", order).claims(alice(&["orders:write"]));
    allowed(&post().check(&w), "update-own-order");
    for header in [
        "x-http-method-override",
        "X-HTTP-Method-Override",
        "x-http-method",
        "x-method-override",
    ] {
        let d = post().header(header, "DELETE").check(&w);
        denied(&d, 403, "denied_by_rule");
        assert_eq!(d.rule.as_deref(), Some("no-method-override"), "{header}");
    }
    let d = req("acme", "POST", &format!("{order}?_method=DELETE"))
        .claims(alice(&["orders:write"]))
        .check(&w);
    denied(&d, 403, "denied_by_rule");
}

/// API5 gaps a policy must close, shown on `legacy` and closed on `hardened`:
/// path case, and method-override headers.
#[test]
fn api5_case_and_method_override_gaps_and_their_fixes() {
    let w = world();
    let user = |iss: &str| json!({ "iss": iss, "sub": "alice", "roles": ["user"] });
    let legacy = user("https://idp.legacy.example");
    let hardened = user("https://idp.hardened.example");

    // Templates match case-sensitively: `/Admin/users` is not `/admin/{rest...}`,
    // so legacy's broad read rule allows it. An upstream that routes case-
    // insensitively would serve its admin page.
    for path in ["/admin/users", "/Admin/users", "/ADMIN/users", "/admin"] {
        let d = req("legacy", "GET", path).claims(legacy.clone()).check(&w);
        if path.starts_with("/admin") {
            denied(&d, 403, "denied_by_rule");
        } else {
            allowed(&d, "read-anything");
        }
        let d = req("hardened", "GET", path)
            .claims(hardened.clone())
            .check(&w);
        denied(&d, 403, "denied_by_rule");
    }
    // Baseline: hardened still reads everything else, and does not mistake
    // a longer first segment for the admin prefix.
    for path in ["/items/1", "/administrators-guide"] {
        let d = req("hardened", "GET", path)
            .claims(hardened.clone())
            .check(&w);
        allowed(&d, "read-anything");
    }

    // legacy: the override header travels to the upstream untouched.
    let d = req("legacy", "POST", "/items/1")
        .claims(legacy)
        .header("x-http-method-override", "DELETE")
        .check(&w);
    allowed(&d, "update-items");
    assert!(!d.remove_headers.iter().any(|h| h.contains("override")));
    // hardened: allowed as the POST it is, with the override removed.
    let d = req("hardened", "POST", "/items/1")
        .claims(hardened)
        .header("x-http-method-override", "DELETE")
        .check(&w);
    allowed(&d, "update-items");
    for h in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        assert!(d.remove_headers.iter().any(|r| r == h), "{h} not removed");
    }
}

/// The gRPC port is a trust boundary: a `CheckRequest` is believed whole,
/// including the claims in Envoy's `jwt_authn` metadata and the request time.
/// Whoever can reach the port can therefore obtain an allow for any identity
/// (docs/security.md says how to keep the port Envoy's alone). What it must
/// not obtain is a minted downstream token that outlives its configured
/// lifetime: the minter dates tokens by this replica's clock when the request
/// claims a later time.
#[test]
fn a_forged_request_time_cannot_mint_a_long_lived_token() {
    use base64::Engine as _;
    use portcullis::decision::mint::{ExchangeConfig, KeyFile, Minter};

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("acme.yaml"),
        r#"apiVersion: portcullis/v1
tenant: acme
identity:
  envoy_jwt_authn: { issuers: ["https://idp.acme.example"] }
rules:
  - { id: orders, path: "/orders/{id}", effect: allow }
response:
  downstream_token: { audience: orders-svc, lifetime: 60s }
"#,
    )
    .unwrap();
    let key = dir.path().join("signing.pem");
    std::fs::write(&key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let minter = Minter::load(
        &ExchangeConfig {
            issuer: "https://portcullis.acme.internal".into(),
            keys: vec![KeyFile {
                kid: "k1".into(),
                file: key,
            }],
            development_generate_key: false,
        },
        dir.path(),
    )
    .unwrap();
    let store = PolicyStore::new(dir.path());
    assert!(store.reload().errors.is_empty());
    let pipeline = Pipeline::new(Arc::new(store), TenantResolver::default())
        .with_minter(Some(Arc::new(minter)));

    let minted_exp = |time: &str| -> u64 {
        let request = portcullis::app::cli::check_request_from_json(&json!({ "attributes": {
            "contextExtensions": { "tenant": "acme" },
            "metadataContext": { "filterMetadata": { "envoy.filters.http.jwt_authn": {
                "jwt_payload": { "iss": "https://idp.acme.example", "sub": "root" } } } },
            "request": {
                "time": time,
                "http": { "method": "GET", "host": "api.example.com", "path": "/orders/1" }
            }
        }}))
        .unwrap();
        let d = pipeline.check(&request);
        assert!(d.allowed, "{:?} {:?}", d.reason, d.detail);
        let token = d
            .set_headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.strip_prefix("Bearer ").unwrap().to_string())
            .expect("a minted token");
        let payload = token.split('.').nth(1).unwrap();
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["sub"], "root", "the forged identity is believed");
        claims["exp"].as_u64().unwrap()
    };
    let wall = || portcullis::request::input::unix_seconds(std::time::SystemTime::now());

    let before = wall();
    let exp = minted_exp("2100-01-01T00:00:00Z");
    assert!(
        exp <= wall() + 60,
        "a request claiming the year 2100 minted a token until {exp} (now {before})"
    );
    assert!(exp >= before + 60);
}

/// Known gap 2, closed: a policy may name only files in the policy directory
/// and in the server's `policy_files.allowed_dirs`, symlinks followed. A file
/// that names anything else does not load, and the tenant's last good rules
/// keep serving.
#[test]
fn files_named_by_policies_stay_in_the_allowed_directories() {
    let root = tempfile::tempdir().unwrap();
    let policies = root.path().join("policies");
    let secrets = root.path().join("secrets");
    let private = root.path().join("private");
    for d in [&policies, &secrets, &private] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(secrets.join("client-secret"), "s3cret").unwrap();
    std::fs::write(secrets.join("nonce.key"), [7u8; 32]).unwrap();
    std::fs::write(private.join("signing.pem"), "server signing key").unwrap();
    std::os::unix::fs::symlink(private.join("signing.pem"), secrets.join("escape")).unwrap();
    let config_path = root.path().join("portcullis.yaml");
    std::fs::write(
        &config_path,
        "policies: policies\npolicy_files: { allowed_dirs: [secrets] }\n",
    )
    .unwrap();
    let config = portcullis::app::config::Config::load(&config_path).unwrap();
    assert_eq!(config.policy_files.allowed_dirs, vec![secrets.clone()]);

    let policy = |secret: &str, nonce_key: &str| {
        format!(
            "apiVersion: portcullis/v1\ntenant: acme\nidentity:\n  introspection:\n    endpoint: https://idp.acme.example/introspect\n    issuer: https://idp.acme.example\n    client_id: portcullis\n    client_secret_file: {secret}\n  dpop: {{ public_origin: 'https://api.acme.example', nonce_key_file: {nonce_key} }}\nrules:\n  - {{ id: all, path: /reports, effect: allow }}\n"
        )
    };
    let nonce = secrets.join("nonce.key").display().to_string();
    let store = config.store();
    let write = |text: &str| std::fs::write(policies.join("acme.yaml"), text).unwrap();

    // Allowed: a secret in an allowed directory (absolute), and one in the
    // policy directory (relative).
    write(&policy(
        &secrets.join("client-secret").display().to_string(),
        &nonce,
    ));
    let status = store.reload();
    assert!(status.errors.is_empty(), "{:?}", status.error_lines());
    let good = status.tenants[0].digest.clone();
    std::fs::write(policies.join("local-secret"), "s").unwrap();
    write(&policy("local-secret", &nonce));
    let status = store.reload();
    assert!(status.errors.is_empty(), "{:?}", status.error_lines());
    let good = {
        assert_ne!(status.tenants[0].digest, good);
        status.tenants[0].digest.clone()
    };

    // Refused: an absolute path outside, a `..` climb out of the policy
    // directory, a symlink in an allowed directory that leads out, and a
    // nonce key outside. Each names file, line and cause; acme keeps serving.
    let outside = private.join("signing.pem").display().to_string();
    let escape = secrets.join("escape").display().to_string();
    for (secret, key, field) in [
        (outside.as_str(), nonce.as_str(), "client_secret_file"),
        (
            "../private/signing.pem",
            nonce.as_str(),
            "client_secret_file",
        ),
        (escape.as_str(), nonce.as_str(), "client_secret_file"),
        ("local-secret", outside.as_str(), "nonce_key_file"),
    ] {
        write(&policy(secret, key));
        let status = store.reload();
        let errors = status.error_lines();
        assert!(
            errors.iter().any(|e| e.contains("acme.yaml:3:")
                && e.contains(field)
                && e.contains("outside the policy directory")),
            "{secret} {key}: {errors:?}"
        );
        assert_eq!(status.tenants.len(), 1, "acme keeps its last good rules");
        assert_eq!(status.tenants[0].digest, good);
        assert!(store.tenant("acme").is_some());
    }

    // Without `policy_files`, only the policy directory is allowed.
    let narrow = portcullis::app::config::Config::with_policies(&policies).store();
    write(&policy(
        &secrets.join("client-secret").display().to_string(),
        &nonce,
    ));
    let errors = narrow.reload().error_lines();
    assert!(errors.iter().any(|e| e.contains("outside")), "{errors:?}");
}

/// Round 2, item 6: `policy_files.tenants` gives each tenant directories of
/// its own. A tenant's file naming another tenant's secret is refused at
/// load with file, line and cause (and that tenant's last good rules keep
/// serving); naming its own loads; the shared `allowed_dirs` stay open to all.
#[test]
fn a_tenant_cannot_name_another_tenants_files() {
    let root = tempfile::tempdir().unwrap();
    let policies = root.path().join("policies");
    let shared = root.path().join("shared");
    let acme_dir = root.path().join("tenants/acme");
    let globex_dir = root.path().join("tenants/globex");
    for d in [&policies, &shared, &acme_dir, &globex_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(acme_dir.join("client-secret"), "acme s3cret").unwrap();
    std::fs::write(globex_dir.join("client-secret"), "globex s3cret").unwrap();
    std::fs::write(shared.join("client-secret"), "shared").unwrap();
    let config_path = root.path().join("portcullis.yaml");
    std::fs::write(
        &config_path,
        "policies: policies
policy_files:
  allowed_dirs: [shared]
  tenants:
    acme: [tenants/acme]
    globex: [tenants/globex]
",
    )
    .unwrap();
    let config = portcullis::app::config::Config::load(&config_path).unwrap();
    assert_eq!(config.policy_files.tenants["acme"], vec![acme_dir.clone()]);
    let policy = |tenant: &str, secret: &std::path::Path| {
        format!(
            "apiVersion: portcullis/v1\ntenant: {tenant}\nidentity:\n  introspection:\n    endpoint: https://idp.{tenant}.example/introspect\n    issuer: https://idp.{tenant}.example\n    client_id: portcullis\n    client_secret_file: {}\nrules:\n  - {{ id: all, path: /reports, effect: allow }}\n",
            secret.display()
        )
    };
    let write = |tenant: &str, text: String| {
        std::fs::write(policies.join(format!("{tenant}.yaml")), text).unwrap()
    };
    let store = config.store();

    // Own directories, and the shared one: both tenants load.
    write("acme", policy("acme", &acme_dir.join("client-secret")));
    write("globex", policy("globex", &shared.join("client-secret")));
    let status = store.reload();
    assert!(status.errors.is_empty(), "{:?}", status.error_lines());
    let good = store.tenant("globex").unwrap().digest.clone();

    // globex names acme's secret: refused, globex keeps its last good rules.
    write("globex", policy("globex", &acme_dir.join("client-secret")));
    let status = store.reload();
    let errors = status.error_lines();
    assert!(
        errors.iter().any(|e| e.contains("globex.yaml:3:")
            && e.contains("client_secret_file")
            && e.contains("outside the policy directory")
            && e.contains("policy_files.tenants.globex")),
        "{errors:?}"
    );
    assert_eq!(store.tenant("globex").unwrap().digest, good);
    assert!(store.tenant("acme").is_some());

    // `portcullis validate --config` refuses it the same way.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["validate", "--config"])
        .arg(&config_path)
        .arg(&policies)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("policy_files.tenants.globex"), "{stderr}");

    // Another file declaring `tenant: acme` (an author claiming acme's id, and
    // with it acme's directories) is refused by its name, whatever sorts first,
    // and is never given acme's scope.
    write("globex", policy("globex", &shared.join("client-secret")));
    std::fs::write(
        policies.join("aaa.yaml"),
        policy("acme", &acme_dir.join("client-secret")).replace("idp.acme", "idp.evil"),
    )
    .unwrap();
    let status = store.reload();
    let errors = status.error_lines();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("aaa.yaml:2:") && e.contains("must be the file `acme.yaml`")),
        "{errors:?}"
    );
    assert!(
        !errors
            .iter()
            .any(|e| e.contains("acme.yaml") && !e.contains("aaa.yaml")),
        "{errors:?}"
    );
    let acme = store.tenant("acme").unwrap();
    assert_eq!(acme.source.file_name().unwrap(), "acme.yaml");
    std::fs::remove_file(policies.join("aaa.yaml")).unwrap();
    write("globex", policy("globex", &acme_dir.join("client-secret")));

    // Without `tenants` (the default) the same reference loads, as before.
    let open = portcullis::app::config::Config {
        policy_files: portcullis::foundation::policy_files::PolicyFilesConfig {
            allowed_dirs: vec![root.path().join("tenants")],
            ..Default::default()
        },
        ..portcullis::app::config::Config::with_policies(&policies)
    };
    let status = open.store().reload();
    assert!(status.errors.is_empty(), "{:?}", status.error_lines());
}
