//! Narrowed tokens for the next hop: portcullis mints them, a service verifies
//! them with portcullis' published keys and an independent library (jwt-simple).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use jwt_simple::prelude::*;
use serde_json::{Value, json};

use portcullis::decision::mint::{ExchangeConfig, KeyFile, Minter};
use portcullis::pipeline::Pipeline;
use portcullis::request::tenancy::TenantResolver;
use portcullis::tenants::store::PolicyStore;
use support::now;

const ISSUER: &str = "https://idp.acme.example";

struct World {
    _dir: tempfile::TempDir,
    idp: ES256KeyPair,
    p: Pipeline,
    minter: Arc<Minter>,
}

fn world(extra_rules: &str, keys: &[&str]) -> World {
    let dir = tempfile::tempdir().unwrap();
    let idp = ES256KeyPair::generate().with_key_id("idp");
    let jwk: Value = serde_json::from_str(&idp.public_key().to_jwk()).unwrap();
    let policy = format!(
        r#"apiVersion: portcullis/v1
tenant: acme
identity:
  jwt:
    - {{ issuer: "{ISSUER}", audiences: [edge], algorithms: [ES256], jwks: {{ keys: [{jwk}] }} }}
rules:
  - {{ id: orders, path: "/orders/{{id}}", effect: allow }}
{extra_rules}
response:
  downstream_token: {{ audience: orders-svc, lifetime: 30s, scopes: [orders:read] }}
"#
    );
    std::fs::write(dir.path().join("acme.yaml"), policy).unwrap();
    let mut files = Vec::new();
    for kid in keys {
        let pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let path = dir.path().join(format!("{kid}.pem"));
        std::fs::write(&path, pem).unwrap();
        files.push(KeyFile {
            kid: kid.to_string(),
            file: path,
        });
    }
    let minter = Arc::new(
        Minter::load(
            &ExchangeConfig {
                issuer: "https://portcullis.acme.internal".into(),
                keys: files,
                development_generate_key: false,
            },
            dir.path(),
        )
        .unwrap(),
    );
    let store = PolicyStore::new(dir.path());
    let status = store.reload();
    assert!(status.errors.is_empty(), "{:?}", status.errors);
    let p = Pipeline::new(Arc::new(store), TenantResolver::default())
        .with_minter(Some(Arc::clone(&minter)));
    World {
        _dir: dir,
        idp,
        p,
        minter,
    }
}

fn caller(w: &World, scope: &str) -> String {
    let t = now();
    w.idp
        .sign(support::raw_claims(json!({
            "iss": ISSUER, "aud": "edge", "sub": "alice", "azp": "web-app",
            "scope": scope, "iat": t, "exp": t + 300,
        })))
        .unwrap()
}

fn check(w: &World, path: &str, token: &str, ext: Value) -> portcullis::decision::Decision {
    let mut ctx = json!({ "tenant": "acme" });
    for (k, v) in ext.as_object().unwrap() {
        ctx[k] = v.clone();
    }
    w.p.check(
        &portcullis::app::cli::check_request_from_json(&json!({
            "attributes": {
                "contextExtensions": ctx,
                "request": { "http": { "method": "GET", "host": "api.acme.example", "path": path,
                    "headers": { "authorization": format!("Bearer {token}"), "dpop": "x" } } }
            }
        }))
        .unwrap(),
    )
}

fn minted(d: &portcullis::decision::Decision) -> String {
    assert!(d.allowed, "{:?} {:?}", d.reason, d.detail);
    let (_, v) = d
        .set_headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .expect("authorization is overwritten");
    assert!(
        !d.remove_headers.contains(&"authorization".to_string()),
        "a removal would drop the new token"
    );
    assert!(d.remove_headers.contains(&"dpop".to_string()));
    v.strip_prefix("Bearer ").unwrap().to_string()
}

/// Verifies a minted token with jwt-simple against the published JWKS.
fn verify(minter: &Minter, token: &str, audience: &str) -> JWTClaims<Value> {
    let jwks = minter.jwks();
    let kid = Token::decode_metadata(token)
        .unwrap()
        .key_id()
        .unwrap()
        .to_string();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("the signing key is published");
    assert!(jwk.get("d").is_none(), "nothing private is published");
    let key = ES256PublicKey::from_jwk(&jwk.to_string()).unwrap();
    let options = VerificationOptions {
        allowed_issuers: Some(HashSet::from_strings(&["https://portcullis.acme.internal"])),
        allowed_audiences: Some(HashSet::from_strings(&[audience])),
        ..Default::default()
    };
    key.verify_token::<Value>(token, Some(options)).unwrap()
}

#[test]
fn the_upstream_gets_a_narrowed_token_it_can_verify() {
    let w = world("", &["k1"]);
    let token = caller(&w, "orders:read orders:write admin");
    let d = check(&w, "/orders/7", &token, json!({}));
    let down = minted(&d);
    assert_ne!(down, token);
    let claims = verify(&w.minter, &down, "orders-svc");
    assert_eq!(claims.subject.as_deref(), Some("alice"));
    assert_eq!(claims.custom["tenant"], "acme");
    // Only the scopes this hop may have, of those the caller holds.
    assert_eq!(claims.custom["scope"], "orders:read");
    // RFC 8693 §4.1: the original client, in `act`.
    assert_eq!(
        claims.custom["act"],
        json!({"sub": "web-app", "iss": ISSUER})
    );
    let life = claims.expires_at.unwrap().as_secs() - claims.issued_at.unwrap().as_secs();
    assert_eq!(life, 30);
    assert_eq!(
        Token::decode_metadata(&down).unwrap().signature_type(),
        Some("at+jwt")
    );

    // Reused, not signed again, while most of its lifetime remains.
    assert_eq!(minted(&check(&w, "/orders/8", &token, json!({}))), down);
    // A caller without the scope gets a token without it.
    let narrow = caller(&w, "profile");
    let claims = verify(
        &w.minter,
        &minted(&check(&w, "/orders/7", &narrow, json!({}))),
        "orders-svc",
    );
    assert_eq!(claims.custom["scope"], "");
}

#[test]
fn a_rule_can_name_its_own_audience_from_the_route() {
    let w = world(
        "  - id: billing\n    path: /billing\n    effect: allow\n    downstream_token: { audience_from_context_extension: upstream, scopes: [] }\n",
        &["k1"],
    );
    let token = caller(&w, "orders:read");
    let d = check(&w, "/billing", &token, json!({"upstream": "billing-svc"}));
    verify(&w.minter, &minted(&d), "billing-svc");
    // No audience on the route: 503, and the caller's token does not go instead.
    let d = check(&w, "/billing", &token, json!({}));
    assert_eq!(
        (d.status(), d.reason.code()),
        (503, "downstream_token_unavailable")
    );
    assert!(d.set_headers.is_empty());
}

#[test]
fn rotation_publishes_both_keys_and_signs_with_the_first() {
    let w = world("", &["new", "old"]);
    let kids: Vec<String> = w.minter.jwks()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kids, vec!["new", "old"]);
    let d = check(&w, "/orders/1", &caller(&w, "orders:read"), json!({}));
    let down = minted(&d);
    assert_eq!(Token::decode_metadata(&down).unwrap().key_id(), Some("new"));
}

#[test]
fn without_a_signing_key_nothing_is_forwarded() {
    let w = world("", &["k1"]);
    let p = Pipeline::new(Arc::clone(&w.p.store), TenantResolver::default());
    let token = caller(&w, "orders:read");
    let d = p.check(
        &portcullis::app::cli::check_request_from_json(&json!({
            "attributes": { "contextExtensions": { "tenant": "acme" },
              "request": { "http": { "method": "GET", "host": "a", "path": "/orders/1",
                "headers": { "authorization": format!("Bearer {token}") } } } }
        }))
        .unwrap(),
    );
    assert_eq!(
        (d.status(), d.reason.code()),
        (503, "downstream_token_unavailable")
    );
}

#[test]
fn policies_and_keys_that_cannot_work_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.yaml"),
        "apiVersion: portcullis/v1\ntenant: t\nrules: []\nresponse:\n  remove: [authorization]\n  downstream_token: { audience: a }\n",
    )
    .unwrap();
    let errors: Vec<String> = PolicyStore::new(dir.path()).reload().error_lines();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("t.yaml:") && e.contains("must not name authorization")),
        "{errors:?}"
    );

    std::fs::write(dir.path().join("bad.pem"), "not a key").unwrap();
    let config = |keys: Vec<KeyFile>, dev: bool| ExchangeConfig {
        issuer: "https://portcullis.example".into(),
        keys,
        development_generate_key: dev,
    };
    let bad = vec![KeyFile {
        kid: "a".into(),
        file: "bad.pem".into(),
    }];
    assert!(
        Minter::load(&config(bad, false), dir.path())
            .unwrap_err()
            .contains("bad.pem")
    );
    assert!(Minter::load(&config(Vec::new(), false), dir.path()).is_err());
    // Development mode works, and says so in its kid.
    let dev = Minter::load(&config(Vec::new(), true), dir.path()).unwrap();
    assert_eq!(dev.jwks()["keys"][0]["kid"], "development");
}

#[test]
fn a_minted_token_never_outlives_the_callers_and_anonymous_callers_get_none() {
    let w = world(
        "  - { id: docs, path: /docs, effect: allow, public: true }\n",
        &["k1"],
    );
    let t = now();
    let short = w
        .idp
        .sign(support::raw_claims(json!({
            "iss": ISSUER, "aud": "edge", "sub": "alice", "scope": "orders:read", "iat": t, "exp": t + 12,
        })))
        .unwrap();
    let claims = verify(
        &w.minter,
        &minted(&check(&w, "/orders/1", &short, json!({}))),
        "orders-svc",
    );
    assert!(
        claims.expires_at.unwrap().as_secs() <= t + 12,
        "capped by the caller's exp"
    );

    // An anonymous caller on a public route: nothing to narrow, nothing minted.
    let d = w.p.check(
        &portcullis::app::cli::check_request_from_json(&json!({
            "attributes": { "contextExtensions": { "tenant": "acme" },
              "request": { "http": { "method": "GET", "host": "a", "path": "/docs", "headers": {} } } }
        }))
        .unwrap(),
    );
    assert!(d.allowed);
    assert!(!d.set_headers.iter().any(|(k, _)| k == "authorization"));
}

#[test]
fn other_credential_headers_do_not_travel_beside_the_minted_token() {
    let dir = tempfile::tempdir().unwrap();
    let idp = ES256KeyPair::generate().with_key_id("idp");
    let jwk: Value = serde_json::from_str(&idp.public_key().to_jwk()).unwrap();
    let policy = |extra: &str| {
        format!(
            r#"apiVersion: portcullis/v1
tenant: acme
identity:
  jwt:
    - {{ issuer: "{ISSUER}", audiences: [edge], algorithms: [ES256], jwks: {{ keys: [{jwk}] }} }}
  token_sources: [ {{ header: x-token }}, {{ cookie: session }} ]
rules:
  - {{ id: all, path: "/{{rest...}}", effect: allow }}
response:
  downstream_token: {{ audience: svc }}
{extra}"#
        )
    };
    // A cookie source without removing the cookie: refused at load.
    std::fs::write(dir.path().join("acme.yaml"), policy("")).unwrap();
    let errors: Vec<String> = PolicyStore::new(dir.path()).reload().error_lines();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("cookie in response.remove")),
        "{errors:?}"
    );

    std::fs::write(dir.path().join("acme.yaml"), policy("  remove: [cookie]\n")).unwrap();
    let store = PolicyStore::new(dir.path());
    assert!(store.reload().errors.is_empty());
    let pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
    std::fs::write(dir.path().join("k.pem"), pem).unwrap();
    let minter = Minter::load(
        &ExchangeConfig {
            issuer: "https://portcullis.acme.internal".into(),
            keys: vec![KeyFile {
                kid: "k".into(),
                file: "k.pem".into(),
            }],
            development_generate_key: false,
        },
        dir.path(),
    )
    .unwrap();
    let p = Pipeline::new(Arc::new(store), TenantResolver::default())
        .with_minter(Some(Arc::new(minter)));
    let t = now();
    let token = idp
        .sign(support::raw_claims(
            json!({"iss": ISSUER, "aud": "edge", "sub": "a", "iat": t, "exp": t + 60}),
        ))
        .unwrap();
    let d = p.check(
        &portcullis::app::cli::check_request_from_json(&json!({
            "attributes": { "contextExtensions": { "tenant": "acme" },
              "request": { "http": { "method": "GET", "host": "a", "path": "/x", "headers": { "x-token": token } } } }
        }))
        .unwrap(),
    );
    assert!(d.allowed, "{:?} {:?}", d.reason, d.detail);
    assert!(d.set_headers.iter().any(|(k, _)| k == "authorization"));
    assert!(
        d.remove_headers.contains(&"x-token".to_string()),
        "{:?}",
        d.remove_headers
    );
    assert!(d.remove_headers.contains(&"cookie".to_string()));
}
