//! Every named limit (`limits:` in the server config) through the real
//! pipeline and store: at the limit the request is decided as usual, one over
//! it is denied with its stable reason (or the file is refused at load, with
//! the old rules still serving). `max_concurrent_checks` is in tests/server.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use jwt_simple::prelude::*;
use serde_json::{Value, json};

use portcullis::decision::Decision;
use portcullis::foundation::limits::Limits;
use portcullis::foundation::proto::auth::CheckRequest;
use portcullis::pipeline::Pipeline;
use portcullis::request::tenancy::TenantResolver;
use portcullis::tenants::store::PolicyStore;
use support::now;

const ISSUER: &str = "https://idp.acme.example";

fn policy(tenant: &str, key: &ES256KeyPair, extra_rules: &str) -> String {
    let jwk: Value = serde_json::from_str(&key.public_key().to_jwk()).unwrap();
    // The tenant "acme" trusts ISSUER; the others have issuers of their own.
    let issuer = if tenant == "acme" {
        ISSUER.to_string()
    } else {
        format!("https://idp.{tenant}.example")
    };
    format!(
        r#"apiVersion: portcullis/v1
tenant: {tenant}
identity:
  jwt:
    - issuer: {issuer}
      audiences: [orders-api]
      algorithms: [ES256]
      jwks: {{ keys: [{jwk}] }}
rules:
  - {{ id: orders, path: "/orders/{{id}}", when: 'claims.sub == "alice"', effect: allow }}
  - {{ id: public, path: "/public/{{rest...}}", public: true, effect: allow }}
  - {{ id: body, methods: [POST], path: /submit, public: true, when: 'resource.body.a == 1', effect: allow }}
{extra_rules}"#
    )
}

struct World {
    dir: tempfile::TempDir,
    key: ES256KeyPair,
    p: Pipeline,
}

fn world(limits: Limits) -> World {
    world_with_key(limits, ES256KeyPair::generate().with_key_id("k1"))
}

fn world_with_key(limits: Limits, key: ES256KeyPair) -> World {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("acme.yaml"), policy("acme", &key, "")).unwrap();
    let store = PolicyStore::new(dir.path()).with_limits(limits);
    let status = store.reload();
    assert!(status.errors.is_empty(), "{:?}", status.error_lines());
    let p = Pipeline::new(Arc::new(store), TenantResolver::default());
    World { dir, key, p }
}

fn token(key: &ES256KeyPair, sub: &str) -> String {
    let t = now();
    let claims = json!({"iss": ISSUER, "aud": "orders-api", "sub": sub, "iat": t, "exp": t + 300});
    key.sign(support::raw_claims(claims)).unwrap()
}

fn request(method: &str, path: &str, headers: Value, body: Option<&str>) -> CheckRequest {
    let mut http =
        json!({ "method": method, "host": "api.acme.example", "path": path, "headers": headers });
    if let Some(body) = body {
        http["body"] = json!(body);
    }
    portcullis::app::cli::check_request_from_json(&json!({
        "attributes": { "contextExtensions": { "tenant": "acme" }, "request": { "http": http } }
    }))
    .unwrap()
}

fn outcome(d: &Decision) -> (bool, u16, &'static str) {
    (d.allowed, d.status(), d.reason.code())
}

#[test]
fn max_token_bytes() {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let t = token(&key, "alice");
    let get = |w: &World| {
        w.p.check(&request(
            "GET",
            "/orders/1",
            json!({"authorization": format!("Bearer {t}")}),
            None,
        ))
    };
    let at = world_with_key(
        Limits {
            max_token_bytes: t.len(),
            ..Limits::default()
        },
        ES256KeyPair::from_bytes(&key.to_bytes())
            .unwrap()
            .with_key_id("k1"),
    );
    assert_eq!(outcome(&get(&at)), (true, 200, "allowed"));

    let over = world_with_key(
        Limits {
            max_token_bytes: t.len() - 1,
            ..Limits::default()
        },
        key,
    );
    let d = get(&over);
    assert_eq!(outcome(&d), (false, 401, "token_too_large"));
    // The reason's own (detailed) challenge; by default the client is told
    // only `invalid_token` (docs/security.md, round 2 item 3).
    assert!(
        d.reason.challenge().unwrap().contains("token too large"),
        "{:?}",
        d.reason.challenge()
    );
}

/// A token for "alice" whose claims carry `groups` of `n` elements, signed
/// by jwt-simple (not by portcullis).
fn token_with_groups(key: &ES256KeyPair, n: usize) -> String {
    let t = now();
    let groups: Vec<u32> = (0..n).map(|i| (i % 10) as u32).collect();
    let claims = json!({"iss": ISSUER, "aud": "orders-api", "sub": "alice", "iat": t, "exp": t + 300, "groups": groups});
    key.sign(support::raw_claims(claims)).unwrap()
}

/// Item 13 of issue 25: claims had the bodies' bound (256), refused as
/// `invalid_token`. Now `limits.max_claim_items` (1024 by default) bounds
/// them, and more is its own 401, `claims_too_large`, on both sides.
#[test]
fn max_claim_items() {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let same_key = || {
        ES256KeyPair::from_bytes(&key.to_bytes())
            .unwrap()
            .with_key_id("k1")
    };
    let get = |w: &World, t: &str| {
        w.p.check(&request(
            "GET",
            "/orders/1",
            json!({"authorization": format!("Bearer {t}")}),
            None,
        ))
    };
    let default = world_with_key(Limits::default(), same_key());
    let max = portcullis::foundation::limits::DEFAULT_MAX_CLAIM_ITEMS;
    // Over the bodies' 256 and at the default: a plain token.
    for n in [257, max] {
        let d = get(&default, &token_with_groups(&key, n));
        assert_eq!(outcome(&d), (true, 200, "allowed"), "{n}: {:?}", d.detail);
    }
    let d = get(&default, &token_with_groups(&key, max + 1));
    assert_eq!(outcome(&d), (false, 401, "claims_too_large"));
    assert!(
        d.reason
            .challenge()
            .unwrap()
            .contains("token claims too large"),
        "{:?}",
        d.reason.challenge()
    );
    // Space-separated scopes count once split.
    let t = now();
    let scopes = vec!["s"; max + 1].join(" ");
    let claims = json!({"iss": ISSUER, "aud": "orders-api", "sub": "alice", "iat": t, "exp": t + 300, "scope": scopes});
    let d = get(&default, &key.sign(support::raw_claims(claims)).unwrap());
    assert_eq!(outcome(&d), (false, 401, "claims_too_large"));

    // Configured lower, for members of an object as well.
    let ten = world_with_key(
        Limits {
            max_claim_items: 10,
            ..Limits::default()
        },
        same_key(),
    );
    assert_eq!(
        outcome(&get(&ten, &token_with_groups(&key, 10))),
        (true, 200, "allowed")
    );
    let d = get(&ten, &token_with_groups(&key, 11));
    assert_eq!(outcome(&d), (false, 401, "claims_too_large"));
    let members: serde_json::Map<String, Value> =
        (0..11).map(|i| (format!("m{i}"), json!(i))).collect();
    let claims = json!({"iss": ISSUER, "aud": "orders-api", "sub": "alice", "iat": t, "exp": t + 300, "org": members});
    let d = get(&ten, &key.sign(support::raw_claims(claims)).unwrap());
    assert_eq!(outcome(&d), (false, 401, "claims_too_large"));
}

#[test]
fn max_headers_and_max_header_bytes() {
    // The request below has three headers: two of its own and Envoy's `:path`.
    let headers = json!({"x-a": "1", "x-b": "22", ":path": "/public/x"});
    let bytes: usize = headers
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| k.len() + v.as_str().unwrap().len())
        .sum();
    let check = |limits: Limits| {
        world(limits)
            .p
            .check(&request("GET", "/public/x", headers.clone(), None))
    };
    let count = |n| Limits {
        max_headers: n,
        ..Limits::default()
    };
    assert_eq!(outcome(&check(count(3))), (true, 200, "allowed"));
    assert_eq!(outcome(&check(count(2))), (false, 431, "headers_too_large"));
    let size = |n| Limits {
        max_header_bytes: n,
        ..Limits::default()
    };
    assert_eq!(outcome(&check(size(bytes))), (true, 200, "allowed"));
    assert_eq!(
        outcome(&check(size(bytes - 1))),
        (false, 431, "headers_too_large")
    );
}

#[test]
fn max_path_bytes() {
    let path = "/public/abcdef"; // 14 bytes
    let check = |n| {
        world(Limits {
            max_path_bytes: n,
            ..Limits::default()
        })
        .p
        .check(&request(
            "GET",
            &format!("{path}?q=not-counted"),
            json!({}),
            None,
        ))
    };
    assert_eq!(outcome(&check(path.len())), (true, 200, "allowed"));
    assert_eq!(
        outcome(&check(path.len() - 1)),
        (false, 414, "path_too_long")
    );
}

#[test]
fn max_body_bytes() {
    let body = r#"{"a": 1}"#;
    let check = |n| {
        world(Limits {
            max_body_bytes: n,
            ..Limits::default()
        })
        .p
        .check(&request(
            "POST",
            "/submit",
            json!({"content-type": "application/json", "content-length": body.len().to_string()}),
            Some(body),
        ))
    };
    // The limit is Envoy's max_request_bytes: a body that reaches it may be
    // the first part of a longer one, so the largest judged body is one less.
    assert_eq!(outcome(&check(body.len() + 1)), (true, 200, "allowed"));
    assert_eq!(
        outcome(&check(body.len())),
        (false, 403, "body_unavailable")
    );
}

fn rules(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!("  - {{ id: extra-{i}, path: /extra/{i}, public: true, effect: allow }}\n")
        })
        .collect()
}

#[test]
fn max_rules_per_tenant_refuses_the_file_and_keeps_the_old_rules() {
    // The base policy has three rules.
    let w = world(Limits {
        max_rules_per_tenant: 5,
        ..Limits::default()
    });
    let file = w.dir.path().join("acme.yaml");
    std::fs::write(&file, policy("acme", &w.key, &rules(2))).unwrap();
    let status = w.p.store.reload();
    assert!(
        status.errors.is_empty(),
        "at the limit: {:?}",
        status.error_lines()
    );
    assert_eq!(status.tenants[0].rules, 5);
    let before = status.tenants[0].digest.clone();

    std::fs::write(&file, policy("acme", &w.key, &rules(3))).unwrap();
    let status = w.p.store.reload();
    let errors = status.error_lines().join("\n");
    assert!(
        errors.contains("acme.yaml")
            && errors.contains("6 rules")
            && errors.contains("limits.max_rules_per_tenant"),
        "{errors}"
    );
    assert_eq!(
        status.tenants[0].digest, before,
        "the old rules keep serving"
    );
    let d = w.p.check(&request("GET", "/extra/1", json!({}), None));
    assert_eq!(outcome(&d), (true, 200, "allowed"));
}

#[test]
fn max_tenants_refuses_the_extra_file_and_keeps_the_others() {
    let w = world(Limits {
        max_tenants: 2,
        ..Limits::default()
    });
    std::fs::write(
        w.dir.path().join("globex.yaml"),
        policy("globex", &w.key, ""),
    )
    .unwrap();
    let status = w.p.store.reload();
    assert!(
        status.errors.is_empty(),
        "at the limit: {:?}",
        status.error_lines()
    );
    assert_eq!(status.tenants.len(), 2);

    std::fs::write(
        w.dir.path().join("initech.yaml"),
        policy("initech", &w.key, ""),
    )
    .unwrap();
    let status = w.p.store.reload();
    let errors = status.error_lines().join("\n");
    assert!(
        errors.contains("initech.yaml") && errors.contains("limits.max_tenants"),
        "{errors}"
    );
    let served: Vec<&str> = status.tenants.iter().map(|t| t.tenant.as_str()).collect();
    assert_eq!(served, ["acme", "globex"]);
    assert!(w.p.store.tenant("initech").is_none());

    // Room again once a file goes.
    std::fs::remove_file(w.dir.path().join("globex.yaml")).unwrap();
    let status = w.p.store.reload();
    assert!(status.errors.is_empty(), "{:?}", status.error_lines());
    assert!(w.p.store.tenant("initech").is_some());
}

#[test]
fn token_cache_size() {
    let w = world(Limits {
        token_cache_size: 2,
        ..Limits::default()
    });
    let call = |sub: &str| {
        let t = token(&w.key, sub);
        w.p.check(&request(
            "GET",
            "/public/x",
            json!({"authorization": format!("Bearer {t}")}),
            None,
        ))
    };
    let cached = || w.p.store.tenant("acme").unwrap().identity.cached_tokens();
    assert!(call("a").allowed && call("b").allowed);
    assert_eq!(cached(), 2, "at the limit every token is cached");
    for sub in ["c", "d", "e", "f"] {
        assert!(call(sub).allowed, "a full cache never denies");
        assert!(cached() <= 2, "{} cached", cached());
    }
}

/// `token_cache_size: 0` turns the cache off: every check verifies its token
/// in full, so nothing is remembered and a token spoilt after an allow is
/// denied on its next use.
#[test]
fn token_cache_off() {
    let w = world(Limits {
        token_cache_size: 0,
        ..Limits::default()
    });
    let check = |t: &str| {
        w.p.check(&request(
            "GET",
            "/orders/1",
            json!({"authorization": format!("Bearer {t}")}),
            None,
        ))
    };
    let cached = || w.p.store.tenant("acme").unwrap().identity.cached_tokens();
    let t = token(&w.key, "alice");
    assert!(check(&t).allowed && check(&t).allowed);
    assert_eq!(cached(), 0, "nothing is remembered");
    assert!(
        !check(&token(&w.key, "bob")).allowed,
        "the rule still decides"
    );
    // A signature character changed well inside the signature.
    let mut spoilt: Vec<char> = t.chars().collect();
    let i = spoilt.len() - 10;
    spoilt[i] = if spoilt[i] == 'A' { 'B' } else { 'A' };
    let d = check(&spoilt.into_iter().collect::<String>());
    assert!(!d.allowed && d.status() == 401, "{d:?}");
}

#[test]
fn limits_load_from_the_server_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.yaml");
    std::fs::write(
        &path,
        "policies: p\nlimits:\n  max_token_bytes: 4096\n  max_headers: 50\n  max_header_bytes: 16384\n  max_body_bytes: 1024\n  max_path_bytes: 2048\n  max_rules_per_tenant: 100\n  max_check_cost: 1000\n  max_tenants: 10\n  token_cache_size: 500\n  replay_cache_size: 1000\n  max_claim_items: 2048\n",
    )
    .unwrap();
    let c = portcullis::app::config::Config::load(&path).unwrap();
    assert_eq!(
        c.limits,
        Limits {
            max_token_bytes: 4096,
            max_headers: 50,
            max_header_bytes: 16384,
            max_body_bytes: 1024,
            max_path_bytes: 2048,
            max_rules_per_tenant: 100,
            max_check_cost: 1000,
            max_tenants: 10,
            token_cache_size: 500,
            replay_cache_size: 1000,
            max_claim_items: 2048,
            ..Limits::default()
        }
    );
    std::fs::write(&path, "policies: p\nlimits: { token_cache_size: 0 }\n").unwrap();
    let c = portcullis::app::config::Config::load(&path).unwrap();
    assert_eq!(c.limits.token_cache_size, 0, "0 turns the cache off");
    std::fs::write(&path, "policies: p\nlimits: { max_token_bytes: 0 }\n").unwrap();
    let e = portcullis::app::config::Config::load(&path).unwrap_err();
    assert!(
        e.contains("limits.max_token_bytes must be between 1 and 8192"),
        "{e}"
    );
    std::fs::write(
        &path,
        "policies: p\nlimits: { max_check_cost: 2000000001 }\n",
    )
    .unwrap();
    let e = portcullis::app::config::Config::load(&path).unwrap_err();
    assert!(
        e.contains("limits.max_check_cost must be between 1 and 2000000000"),
        "{e}"
    );
    std::fs::write(&path, "policies: p\nlimits: { max_token_bytes: 100000 }\n").unwrap();
    let e = portcullis::app::config::Config::load(&path).unwrap_err();
    assert!(
        e.contains("limits.max_token_bytes must be between 1 and 8192"),
        "{e}"
    );
    // The claims' bound stops where the cost model's size for claims does.
    std::fs::write(&path, "policies: p\nlimits: { max_claim_items: 4097 }\n").unwrap();
    let e = portcullis::app::config::Config::load(&path).unwrap_err();
    assert!(
        e.contains("limits.max_claim_items must be between 1 and 4096"),
        "{e}"
    );
}

/// The static CEL cost bound: a condition over it is refused at load with the
/// file, the line and the estimate, and the tenant's old rules keep serving.
#[test]
fn condition_cost_bound_refuses_at_load() {
    let w = world(Limits::default());
    let file = w.dir.path().join("acme.yaml");
    let heavy = "  - id: heavy\n    path: /heavy\n    public: true\n    when: 'data.users.exists(u, u in data.admins)'\n    effect: allow\n";
    std::fs::write(&file, policy("acme", &w.key, heavy)).unwrap();
    let status = w.p.store.reload();
    let errors = status.error_lines().join("\n");
    assert!(
        errors.contains("acme.yaml:")
            && errors.contains("rule \"heavy\"")
            && errors.contains("the limit is 2000000"),
        "{errors}"
    );
    assert_eq!(status.tenants[0].rules, 3, "the old rules keep serving");
    // The same loop over the body (256 elements at most) is within the bound.
    let light = heavy
        .replace("data.users", "resource.body.a")
        .replace("data.admins", "resource.body.b");
    std::fs::write(&file, policy("acme", &w.key, &light)).unwrap();
    let status = w.p.store.reload();
    assert!(status.errors.is_empty(), "{:?}", status.error_lines());
    assert_eq!(status.tenants[0].rules, 4);
}

#[test]
fn policy_file_bytes_refuses_the_file_and_keeps_the_old_rules() {
    use portcullis::policy::MAX_POLICY_FILE_BYTES;
    let w = world(Limits::default());
    let file = w.dir.path().join("acme.yaml");
    // The policy with an extra rule, padded by a trailing comment to `size`.
    let padded = |size: u64| {
        let mut text = policy("acme", &w.key, &rules(1));
        text.push('#');
        let pad = size as usize - text.len();
        text.extend(std::iter::repeat_n('x', pad));
        assert_eq!(text.len() as u64, size);
        text
    };
    std::fs::write(&file, padded(MAX_POLICY_FILE_BYTES)).unwrap();
    let status = w.p.store.reload();
    assert!(
        status.errors.is_empty(),
        "at the limit: {:?}",
        status.error_lines()
    );
    assert_eq!(status.tenants[0].rules, 4);
    let before = status.tenants[0].digest.clone();

    std::fs::write(&file, padded(MAX_POLICY_FILE_BYTES + 1)).unwrap();
    let status = w.p.store.reload();
    let errors = status.error_lines().join("\n");
    assert!(
        errors.contains("acme.yaml") && errors.contains("file is larger than 4194304 bytes"),
        "{errors}"
    );
    assert_eq!(
        status.tenants[0].digest, before,
        "the old rules keep serving"
    );
    let d = w.p.check(&request("GET", "/extra/0", json!({}), None));
    assert_eq!(outcome(&d), (true, 200, "allowed"));
}

/// Rules whose condition compiles a large pattern on every call (`matches`
/// compiles it each time): slow whatever the request, each well within the
/// per-condition bound.
fn slow_rules(ids: &[&str], methods: &str) -> String {
    ids.iter()
        .map(|id| {
            format!(
                "  - {{ id: {id}, methods: [{methods}], path: \"/slow/{{rest...}}\", public: true, when: 'resource.path.matches(\"^[0-9a-z]{{3000}}$\")', effect: allow }}\n"
            )
        })
        .collect()
}

/// `limits.max_check_cost`: the conditions one request can reach are bounded
/// together at load. At the bound the file loads; one rule more on the same
/// method refuses it (file, line, the method and the cause) and the old rules
/// keep serving; a rule on another method does not add to the same check.
#[test]
fn max_check_cost_refuses_the_file_and_keeps_the_old_rules() {
    let key = ES256KeyPair::generate().with_key_id("k1");
    let two = policy("acme", &key, &slow_rules(&["s1", "s2"], "GET"));
    let at = portcullis::tenants::compile(std::path::Path::new("acme.yaml"), &two)
        .unwrap()
        .check_cost();
    let w = world_with_key(
        Limits {
            max_check_cost: at as usize,
            ..Limits::default()
        },
        key,
    );
    let file = w.dir.path().join("acme.yaml");
    std::fs::write(&file, &two).unwrap();
    let status = w.p.store.reload();
    assert!(
        status.errors.is_empty(),
        "at the bound: {:?}",
        status.error_lines()
    );
    assert_eq!(status.tenants[0].rules, 5);

    let three = policy("acme", &w.key, &slow_rules(&["s1", "s2", "s3"], "GET"));
    std::fs::write(&file, three).unwrap();
    let status = w.p.store.reload();
    let errors = status.error_lines().join("\n");
    assert!(
        errors.contains("acme.yaml:")
            && errors.contains("(method GET)")
            && errors.contains("s1, s2, s3")
            && errors.contains(&format!("the limit (limits.max_check_cost) is {at}")),
        "{errors}"
    );
    assert_eq!(status.tenants[0].rules, 5, "the old rules keep serving");

    // A PUT request never reaches the GET rules: their costs do not add up.
    let mut other = slow_rules(&["s1", "s2"], "GET");
    other.push_str(&slow_rules(&["s3"], "PUT"));
    std::fs::write(&file, policy("acme", &w.key, &other)).unwrap();
    let status = w.p.store.reload();
    assert!(status.errors.is_empty(), "{:?}", status.error_lines());
    assert_eq!(status.tenants[0].rules, 6);
}

/// A world whose tenant has many slow rules (the per-check bound raised to
/// let them load), for the runtime budget.
fn slow_world(n: usize) -> World {
    let w = world(Limits {
        max_check_cost: portcullis::foundation::limits::MAX_CHECK_COST_CEILING,
        ..Limits::default()
    });
    let ids: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    std::fs::write(
        w.dir.path().join("acme.yaml"),
        policy("acme", &w.key, &slow_rules(&ids, "GET")),
    )
    .unwrap();
    let status = w.p.store.reload();
    assert!(status.errors.is_empty(), "{:?}", status.error_lines());
    w
}

/// The runtime budget (`MAX_EVALUATION_TIME`): a check whose conditions run
/// longer is stopped between conditions and denied `policy_error`. Without
/// the budget the 400 conditions all run (seconds) and the check ends as an
/// anonymous no-match, `missing_credential`.
#[test]
fn evaluation_stops_when_the_budget_is_spent() {
    let w = slow_world(400);
    let d = w.p.check(&request("GET", "/slow/x", json!({}), None));
    assert_eq!(outcome(&d), (false, 403, "policy_error"), "{d:?}");
    assert!(
        d.detail.as_deref().unwrap().contains("budget spent"),
        "{d:?}"
    );
}

/// A caller's deadline stops evaluation too: a check whose caller has given
/// up runs no more conditions (the deny reaches nobody, the worker is free).
#[tokio::test]
async fn evaluation_stops_when_the_callers_deadline_has_passed() {
    let w = slow_world(400);
    let passed = std::time::Instant::now();
    let req = request("GET", "/slow/x", json!({}), None);
    let d =
        w.p.check_until(&req, std::time::Duration::ZERO, Some(passed))
            .await;
    assert_eq!(outcome(&d), (false, 403, "policy_error"), "{d:?}");
    assert!(
        d.detail.as_deref().unwrap().contains("deadline passed"),
        "{d:?}"
    );
}
