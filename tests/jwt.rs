//! portcullis' own JWT validation, through the whole pipeline: tokens minted by an
//! independent JOSE library (jwt-simple), keys inline or served by a real JWKS
//! server on loopback, and one test per rejection the validator must make.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jwt_simple::prelude::*;
use serde_json::{Value, json};

use portcullis::decision::Decision;
use portcullis::foundation::proto::auth::CheckRequest;
use portcullis::pipeline::Pipeline;
use portcullis::request::tenancy::TenantResolver;
use portcullis::tenants::store::PolicyStore;
use support::now;

const ISSUER: &str = "https://idp.acme.example";
const OTHER_ISSUER: &str = "https://idp.globex.example";
const WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// RSA key generation is slow in debug builds: a few pairs, made once.
/// Each call takes the next of four pairs, so one issuer's two RSA keys, and two
/// issuers made one after the other, never share one.
fn rsa_der() -> Vec<u8> {
    static PAIRS: std::sync::LazyLock<Vec<Vec<u8>>> = std::sync::LazyLock::new(|| {
        (0..4)
            .map(|_| RS256KeyPair::generate(2048).unwrap().to_der().unwrap())
            .collect()
    });
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    PAIRS[NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % PAIRS.len()].clone()
}

/// Signing keys of every algorithm the tests use, one set per issuer.
struct Keys {
    rs: RS256KeyPair,
    ps: PS256KeyPair,
    es: ES256KeyPair,
    es384: ES384KeyPair,
    ed: Ed25519KeyPair,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            rs: RS256KeyPair::from_der(&rsa_der())
                .unwrap()
                .with_key_id(&format!("{prefix}-rs")),
            ps: PS256KeyPair::from_der(&rsa_der())
                .unwrap()
                .with_key_id(&format!("{prefix}-ps")),
            es: ES256KeyPair::generate().with_key_id(&format!("{prefix}-es")),
            es384: ES384KeyPair::generate().with_key_id(&format!("{prefix}-es384")),
            ed: Ed25519KeyPair::generate().with_key_id(&format!("{prefix}-ed")),
        }
    }

    fn jwks(&self) -> Value {
        let jwk = |s: String| -> Value { serde_json::from_str(&s).unwrap() };
        json!({ "keys": [
            jwk(self.rs.public_key().to_jwk()),
            jwk(self.ps.public_key().to_jwk()),
            jwk(self.es.public_key().to_jwk()),
            jwk(self.es384.public_key().to_jwk()),
            jwk(self.ed.public_key().to_jwk()),
        ]})
    }

    /// An Ed25519 token with any header, signed for real by this issuer's key:
    /// for header attacks that jwt-simple will not put in a header itself.
    fn ed_with_header(&self, header: Value, claims: Value) -> String {
        self.ed_raw(&header.to_string(), &claims.to_string())
    }

    /// As [`Keys::ed_with_header`], with header and payload as raw JSON text.
    fn ed_raw(&self, header: &str, claims: &str) -> String {
        let input = format!("{}.{}", B64.encode(header), B64.encode(claims));
        let sig = self.ed.key_pair().as_ref().sk.sign(input.as_bytes(), None);
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }
}

/// Claims of a valid token from `iss` for the `orders-api` audience.
fn claims(iss: &str) -> Value {
    let t = now();
    json!({
        "iss": iss, "sub": "alice", "aud": "orders-api", "tenant": "acme",
        "iat": t, "exp": t + 300, "jti": "t-1", "scope": "orders:read orders:write",
        "realm_access": { "roles": ["buyer"] },
    })
}

fn with(mut base: Value, patch: Value) -> Value {
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

fn jwt_claims(c: &Value) -> JWTClaims<Value> {
    support::raw_claims(c.clone())
}

fn policy(acme_keys: &str, globex_keys: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: portcullis/v1
tenant: acme
identity:
  jwt:
    - issuer: {ISSUER}
      audiences: [orders-api]
      algorithms: [RS256, PS256, ES256, ES384, EdDSA]
      {acme_keys}
      max_lifetime: 1h
      required_claims: [tenant]
      claim_mappings: {{ roles: realm_access.roles }}
{extra}
rules:
  - id: orders
    path: /tenants/{{tenant}}/orders
    when: '"orders:read" in claims.scope && resource.params.tenant == claims.tenant && context.auth.issuer == "{ISSUER}" && "buyer" in claims.roles'
    effect: allow
response:
  headers: {{ x-subject: "{{claims.sub}}", x-token-tenant: "{{claims.tenant}}" }}
---
apiVersion: portcullis/v1
tenant: globex
identity:
  jwt:
    - issuer: {OTHER_ISSUER}
      audiences: [orders-api]
      algorithms: [RS256, ES256, EdDSA]
      typ: at+jwt
      {globex_keys}
rules:
  - {{ id: all, path: "/{{rest...}}", effect: allow }}
"#
    )
}

/// Writes the two tenants into their own files and loads them.
fn pipeline(dir: &Path, text: &str) -> Pipeline {
    let mut parts = text.split("---\n");
    std::fs::write(dir.join("acme.yaml"), parts.next().unwrap()).unwrap();
    std::fs::write(dir.join("globex.yaml"), parts.next().unwrap()).unwrap();
    let store = PolicyStore::new(dir);
    let status = store.reload();
    assert!(
        status.errors.is_empty(),
        "policies load: {:?}",
        status.error_lines()
    );
    Pipeline::new(Arc::new(store), TenantResolver::default())
}

fn inline(keys: &Keys) -> String {
    format!("jwks: {}", keys.jwks())
}

fn request(tenant: &str, path: &str, headers: Value) -> CheckRequest {
    portcullis::app::cli::check_request_from_json(&json!({
        "attributes": {
            "contextExtensions": { "tenant": tenant },
            "request": { "http": { "method": "GET", "host": "api.example", "path": path, "headers": headers } }
        }
    }))
    .unwrap()
}

fn bearer(token: &str) -> Value {
    json!({ "authorization": format!("Bearer {token}") })
}

fn check(p: &Pipeline, token: &str) -> Decision {
    p.check(&request("acme", "/tenants/acme/orders", bearer(token)))
}

fn challenge(d: &Decision) -> String {
    d.reason.challenge().unwrap_or_default()
}

struct Fixture {
    _dir: tempfile::TempDir,
    acme: Keys,
    globex: Keys,
    p: Pipeline,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let acme = Keys::new("acme");
    let globex = Keys::new("globex");
    let p = pipeline(dir.path(), &policy(&inline(&acme), &inline(&globex), ""));
    Fixture {
        _dir: dir,
        acme,
        globex,
        p,
    }
}

#[test]
fn every_allowed_algorithm_verifies() {
    let f = fixture();
    let c = jwt_claims(&claims(ISSUER));
    let tokens = [
        ("RS256", f.acme.rs.sign(c.clone()).unwrap()),
        ("PS256", f.acme.ps.sign(c.clone()).unwrap()),
        ("ES256", f.acme.es.sign(c.clone()).unwrap()),
        ("ES384", f.acme.es384.sign(c.clone()).unwrap()),
        ("EdDSA", f.acme.ed.sign(c.clone()).unwrap()),
    ];
    for (alg, token) in tokens {
        let d = check(&f.p, &token);
        assert!(d.allowed, "{alg}: {:?} {:?}", d.reason, d.detail);
        assert_eq!(d.auth_method, "jwt");
        assert_eq!(d.subject.as_deref(), Some("alice"));
        // The claim mapping (roles) and the split scope were read by the
        // condition; claims reach the header templates.
        assert!(
            d.set_headers
                .contains(&("x-subject".into(), "alice".into()))
        );
        assert!(
            d.set_headers
                .contains(&("x-token-tenant".into(), "acme".into()))
        );
    }
}

#[test]
fn claims_and_lifetime_rejections() {
    let f = fixture();
    let t = now();
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "expired",
            json!({"exp": t - 60, "iat": t - 360}),
            "token_expired",
        ),
        (
            "expired within leeway is fine",
            json!({"exp": t - 10}),
            "allowed",
        ),
        (
            "not yet valid",
            json!({"nbf": t + 120}),
            "token_not_yet_valid",
        ),
        (
            "issued in the future",
            json!({"iat": t + 120, "exp": t + 400}),
            "token_not_yet_valid",
        ),
        (
            "too long-lived",
            json!({"iat": t, "exp": t + 7200}),
            "token_too_long_lived",
        ),
        (
            "no iat with max_lifetime",
            json!({"iat": null}),
            "invalid_token",
        ),
        ("no exp", json!({"exp": null}), "invalid_token"),
        (
            "wrong audience",
            json!({"aud": "billing-api"}),
            "invalid_audience",
        ),
        (
            "audience list with ours",
            json!({"aud": ["billing-api", "orders-api"]}),
            "allowed",
        ),
        ("no audience", json!({"aud": null}), "invalid_audience"),
        (
            "exp as a string",
            json!({"exp": (t + 60).to_string()}),
            "invalid_token",
        ),
        ("sub as a number", json!({"sub": 42}), "invalid_token"),
        (
            "aud as an object",
            json!({"aud": {"a": 1}}),
            "invalid_token",
        ),
        (
            "aud list with a number",
            json!({"aud": ["orders-api", 7]}),
            "invalid_token",
        ),
        ("scope as a number", json!({"scope": 3}), "invalid_token"),
        ("iss as a list", json!({"iss": [ISSUER]}), "invalid_token"),
        (
            "required claim missing",
            json!({"tenant": null}),
            "invalid_token",
        ),
        (
            "wrong issuer",
            json!({"iss": "https://evil.example"}),
            "issuer_not_trusted",
        ),
        ("no issuer", json!({"iss": null}), "issuer_not_trusted"),
        // A valid token whose scope lacks orders:read is a known caller
        // without the right: 403, not 401.
        (
            "lacks the scope",
            json!({"scope": "orders:write"}),
            "no_matching_rule",
        ),
        // Object level: the path's tenant must equal the token's.
        (
            "another tenant's orders",
            json!({"tenant": "globex"}),
            "no_matching_rule",
        ),
    ];
    for (name, patch, want) in cases {
        let token = f
            .acme
            .es
            .sign(jwt_claims(&with(claims(ISSUER), patch)))
            .unwrap();
        let d = check(&f.p, &token);
        assert_eq!(d.reason.code(), want, "{name}: {:?}", d.detail);
        if d.status() == 401 {
            assert!(challenge(&d).contains("error=\"invalid_token\""), "{name}");
        }
        // Nothing of the token reaches the response, its metadata or the
        // internal detail (which is logged).
        let signature = token.rsplit('.').next().unwrap();
        let rendered = format!(
            "{:?} {:?}",
            portcullis::decision::render::render(&d),
            d.detail
        );
        assert!(!rendered.contains(signature), "{name}: {rendered}");
    }
}

#[test]
fn another_tenants_issuer_and_keys_are_refused() {
    let f = fixture();
    // globex's issuer, signed by globex's key: valid for globex, not for acme.
    let at_jwt = HeaderOptions {
        signature_type: Some("at+jwt".into()),
        ..Default::default()
    };
    let token = f
        .globex
        .rs
        .sign_with_options(jwt_claims(&claims(OTHER_ISSUER)), &at_jwt)
        .unwrap();
    let d = f.p.check(&request("globex", "/x", bearer(&token)));
    assert!(d.allowed, "{:?}", d.detail);
    // globex requires typ at+jwt (RFC 9068): a plain JWT (an ID token, say) is refused.
    let plain = f.globex.rs.sign(jwt_claims(&claims(OTHER_ISSUER))).unwrap();
    let d = f.p.check(&request("globex", "/x", bearer(&plain)));
    assert_eq!(d.reason.code(), "invalid_token");
    let d = check(&f.p, &token);
    assert_eq!(d.reason.code(), "issuer_not_trusted");
    assert_eq!(d.status(), 401);

    // acme's issuer but globex's key (kid acme doesn't have): unknown key.
    let token = f.globex.rs.sign(jwt_claims(&claims(ISSUER))).unwrap();
    assert_eq!(check(&f.p, &token).reason.code(), "unknown_key");

    // acme's issuer, signed by globex's key, claiming acme's kid: bad signature.
    let forged = Keys::new("acme");
    let token = forged.es.sign(jwt_claims(&claims(ISSUER))).unwrap();
    assert_eq!(check(&f.p, &token).reason.code(), "invalid_signature");
}

#[test]
fn header_attacks_are_refused() {
    let f = fixture();
    let c = claims(ISSUER);
    let ed = |header: Value| f.acme.ed_with_header(header, c.clone());

    // Baseline: the hand-built header path itself verifies.
    let good = ed(json!({"alg": "EdDSA", "kid": "acme-ed"}));
    assert!(check(&f.p, &good).allowed);

    // RFC 7515 §4.1.11: an unknown critical extension.
    let d = check(
        &f.p,
        &ed(json!({"alg": "EdDSA", "kid": "acme-ed", "crit": ["exp"], "exp": 1})),
    );
    assert_eq!(d.reason.code(), "invalid_token");

    // alg none, with and without a signature.
    let unsigned = format!(
        "{}.{}.",
        B64.encode(json!({"alg": "none"}).to_string()),
        B64.encode(c.to_string())
    );
    assert_eq!(check(&f.p, &unsigned).reason.code(), "invalid_token");
    let none_signed = format!("{unsigned}c2ln");
    assert_eq!(
        check(&f.p, &none_signed).reason.code(),
        "algorithm_not_allowed"
    );

    // HS256 keyed with the RSA public key (the classic key-confusion attack).
    use hmac::{Hmac, Mac};
    let pem = f.acme.rs.public_key().to_pem().unwrap();
    let input = format!(
        "{}.{}",
        B64.encode(json!({"alg": "HS256", "kid": "acme-rs"}).to_string()),
        B64.encode(c.to_string())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(pem.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    let hs = format!("{input}.{}", B64.encode(mac.finalize().into_bytes()));
    assert_eq!(check(&f.p, &hs).reason.code(), "algorithm_not_allowed");

    // An attacker's own key, offered in `jwk` and `jku`, and named by kid: the
    // token's key material is never used.
    let attacker = Keys::new("attacker");
    let jwk: Value = serde_json::from_str(&attacker.ed.public_key().to_jwk()).unwrap();
    let header = json!({"alg": "EdDSA", "kid": "attacker-ed", "jwk": jwk, "jku": "https://evil.example/jwks"});
    let t = attacker.ed_with_header(header, c.clone());
    assert_eq!(check(&f.p, &t).reason.code(), "unknown_key");
    // ... and with acme's kid, the signature fails.
    let header =
        json!({"alg": "EdDSA", "kid": "acme-ed", "jwk": jwk, "x5u": "https://evil.example/c"});
    let t = attacker.ed_with_header(header, c.clone());
    assert_eq!(check(&f.p, &t).reason.code(), "invalid_signature");

    // A kid naming a key of another type than the alg.
    let t = f
        .acme
        .ed_with_header(json!({"alg": "EdDSA", "kid": "acme-rs"}), c.clone());
    assert_eq!(check(&f.p, &t).reason.code(), "unknown_key");

    // An algorithm the issuer does not list (globex doesn't list PS256).
    let token = f.globex.ps.sign(jwt_claims(&claims(OTHER_ISSUER))).unwrap();
    let d = f.p.check(&request("globex", "/x", bearer(&token)));
    assert_eq!(d.reason.code(), "algorithm_not_allowed");

    // Unencoded payloads (RFC 7797) and encrypted-token headers.
    for header in [
        json!({"alg": "EdDSA", "kid": "acme-ed", "b64": false}),
        json!({"alg": "EdDSA", "kid": "acme-ed", "enc": "A256GCM"}),
    ] {
        assert_eq!(check(&f.p, &ed(header)).reason.code(), "invalid_token");
    }
    // Duplicate member names, signed for real: parsers disagree on which wins.
    let payload = c.to_string().replacen('{', "{\"sub\":\"mallory\",", 1);
    let t = f.acme.ed_raw(
        &json!({"alg": "EdDSA", "kid": "acme-ed"}).to_string(),
        &payload,
    );
    assert_eq!(check(&f.p, &t).reason.code(), "invalid_token");
    let t = f.acme.ed_raw(
        r#"{"alg":"EdDSA","kid":"acme-ed","kid":"acme-rs"}"#,
        &c.to_string(),
    );
    assert_eq!(check(&f.p, &t).reason.code(), "invalid_token");

    // Not a JWS: garbage, a JWE-shaped token, a header that is not JSON.
    for bad in [
        "abc",
        "a.b.c.d.e",
        "e30.e30.",
        "!!!.e30.c2ln",
        &format!("{}.e30.c2ln", B64.encode("[1]")),
    ] {
        let d = check(&f.p, bad);
        assert_eq!(d.reason.code(), "invalid_token", "{bad}");
    }
}

#[test]
fn a_cached_verification_never_outlives_the_token() {
    let f = fixture();
    let t = now();
    let token = f
        .acme
        .es
        .sign(jwt_claims(&with(claims(ISSUER), json!({"exp": t + 100}))))
        .unwrap();
    let at = |secs: u64| {
        let mut r = request("acme", "/tenants/acme/orders", bearer(&token));
        let http = r.attributes.as_mut().unwrap().request.as_mut().unwrap();
        http.time = Some(prost_types::Timestamp {
            seconds: secs as i64,
            nanos: 0,
        });
        f.p.check(&r)
    };
    assert!(at(t).allowed);
    assert!(at(t + 50).allowed, "a cache hit");
    // exp + leeway (30s) has passed: the cached entry is not used.
    assert_eq!(at(t + 131).reason.code(), "token_expired");
    assert!(at(t + 129).allowed, "within leeway it still verifies");
}

/// A cache hit is for the very token that was verified: another token, or
/// the cached one with a byte of its signature changed, is judged on its own
/// (the cache key separates them; docs/security.md, "The token cache's key").
#[test]
fn a_cache_hit_is_only_for_the_token_verified() {
    let f = fixture();
    let alice = f.acme.rs.sign(jwt_claims(&claims(ISSUER))).unwrap();
    let bob_claims = with(claims(ISSUER), json!({"sub": "bob"}));
    let bob = f.acme.rs.sign(jwt_claims(&bob_claims)).unwrap();
    for _ in 0..2 {
        assert_eq!(check(&f.p, &alice).subject.as_deref(), Some("alice"));
        assert_eq!(check(&f.p, &bob).subject.as_deref(), Some("bob"));
    }
    let (head, sig) = alice.rsplit_once('.').unwrap();
    let flipped = if sig.starts_with('A') { 'B' } else { 'A' };
    let forged = format!("{head}.{flipped}{}", &sig[1..]);
    let d = check(&f.p, &forged);
    assert!(!d.allowed);
    assert_eq!(d.reason.code(), "invalid_signature");
    assert_eq!(d.subject, None);
}

#[test]
fn oversized_and_repeated_credentials() {
    let f = fixture();
    let big = "a".repeat(9 * 1024);
    assert_eq!(check(&f.p, &big).reason.code(), "token_too_large");
    // Two credentials: 400 invalid_request (RFC 6750 §3.1).
    let token = f.acme.es.sign(jwt_claims(&claims(ISSUER))).unwrap();
    let d = f.p.check(&request(
        "acme",
        "/tenants/acme/orders",
        json!({"authorization": format!("Bearer {token}, Bearer {token}")}),
    ));
    assert_eq!((d.status(), d.reason.code()), (400, "malformed_credential"));
    assert!(challenge(&d).contains("invalid_request"));
    // Another scheme in Authorization is not a token we verify: never anonymous.
    let d = f.p.check(&request(
        "acme",
        "/tenants/acme/orders",
        json!({"authorization": "Basic YWxpY2U6cHc="}),
    ));
    assert_eq!((d.status(), d.reason.code()), (401, "invalid_credential"));
    // No credential: 401 with a bare challenge.
    let d =
        f.p.check(&request("acme", "/tenants/acme/orders", json!({})));
    assert_eq!(d.reason.code(), "missing_credential");
    assert_eq!(challenge(&d), "Bearer realm=\"portcullis\"");
}

#[test]
fn cookie_and_query_sources() {
    let dir = tempfile::tempdir().unwrap();
    let acme = Keys::new("acme");
    let globex = Keys::new("globex");
    let extra = "  token_sources: [ { header: authorization }, { cookie: session }, { query: access_token } ]";
    let p = pipeline(dir.path(), &policy(&inline(&acme), &inline(&globex), extra));
    let token = acme.es.sign(jwt_claims(&claims(ISSUER))).unwrap();

    let d = p.check(&request(
        "acme",
        "/tenants/acme/orders",
        json!({"cookie": format!("theme=dark; session={token}")}),
    ));
    assert!(d.allowed, "{:?}", d.detail);
    assert!(d.remove_query.is_empty());

    let d = p.check(&request(
        "acme",
        &format!("/tenants/acme/orders?x=1&access_token={token}"),
        json!({}),
    ));
    assert!(d.allowed, "{:?}", d.detail);
    assert_eq!(d.remove_query, vec!["access_token".to_string()]);

    // A percent-encoded name would escape Envoy's removal by raw name: refused.
    let d = p.check(&request(
        "acme",
        &format!("/tenants/acme/orders?access%5Ftoken={token}"),
        json!({}),
    ));
    assert_eq!(d.reason.code(), "malformed_credential");
    // A cookie token beside another credential header value: two credentials.
    let d = p.check(&request(
        "acme",
        "/tenants/acme/orders",
        json!({"cookie": format!("session={token}"), "authorization": "Basic YWxpY2U6cHc="}),
    ));
    assert_eq!(d.reason.code(), "malformed_credential");

    // The same token twice, or in two places: refused.
    let d = p.check(&request(
        "acme",
        &format!("/tenants/acme/orders?access_token={token}&access%5Ftoken={token}"),
        json!({}),
    ));
    assert_eq!(d.reason.code(), "malformed_credential");
    let d = p.check(&request(
        "acme",
        &format!("/tenants/acme/orders?access_token={token}"),
        bearer(&token),
    ));
    assert_eq!(d.reason.code(), "malformed_credential");
}

#[test]
fn broken_issuer_configs_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new("k");
    let write_and_load = |issuer_yaml: &str| -> String {
        std::fs::write(
            dir.path().join("t.yaml"),
            format!("apiVersion: portcullis/v1\ntenant: t\nidentity:\n  jwt:\n    - {issuer_yaml}\nrules: []\n"),
        )
        .unwrap();
        let store = PolicyStore::new(dir.path());
        let status = store.reload();
        status.error_lines().join("; ")
    };
    let jwks = keys.jwks();
    let cases = [
        (
            format!("{{ issuer: {ISSUER}, audiences: [a], algorithms: [HS256], jwks: {jwks} }}"),
            "symmetric",
        ),
        (
            format!("{{ issuer: {ISSUER}, audiences: [a], algorithms: [none], jwks: {jwks} }}"),
            "never accepted",
        ),
        (
            format!("{{ issuer: {ISSUER}, audiences: [], algorithms: [RS256], jwks: {jwks} }}"),
            "audiences",
        ),
        (
            format!("{{ issuer: {ISSUER}, audiences: [a], algorithms: [RS256] }}"),
            "exactly one key source",
        ),
        (
            format!(
                "{{ issuer: {ISSUER}, audiences: [a], algorithms: [RS256], jwks_uri: 'http://idp.example/jwks' }}"
            ),
            "https",
        ),
        (
            format!(
                "{{ issuer: {ISSUER}, audiences: [a], algorithms: [RS256], jwks: {{keys: [{{kty: oct, k: c2VjcmV0}}]}} }}"
            ),
            "private or symmetric",
        ),
        (
            format!(
                "{{ issuer: {ISSUER}, audiences: [a], algorithms: [RS256], jwks_file: missing.json }}"
            ),
            "cannot read jwks_file",
        ),
    ];
    for (yaml, want) in cases {
        let errors = write_and_load(&yaml);
        assert!(errors.contains("t.yaml:"), "{yaml}: {errors}");
        assert!(errors.contains(want), "{yaml}: want {want:?} in {errors}");
    }
    // And the working one loads.
    assert_eq!(
        write_and_load(&format!(
            "{{ issuer: {ISSUER}, audiences: [a], algorithms: [RS256], jwks: {jwks} }}"
        )),
        ""
    );
}

/// A JWKS (and discovery) server on loopback whose document the test can
/// change or take down.
#[derive(Clone)]
struct IdP {
    jwks: Arc<Mutex<Option<String>>>,
    /// When set, the discovery document names this issuer instead of its own.
    claimed_issuer: Arc<Mutex<Option<String>>>,
    fetches: Arc<std::sync::atomic::AtomicUsize>,
    addr: SocketAddr,
}

impl IdP {
    async fn start() -> IdP {
        use axum::routing::get;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let idp = IdP {
            jwks: Arc::new(Mutex::new(None)),
            claimed_issuer: Arc::default(),
            fetches: Arc::default(),
            addr,
        };
        let (jwks, fetches) = (Arc::clone(&idp.jwks), Arc::clone(&idp.fetches));
        let issuer = idp.issuer();
        let claimed = Arc::clone(&idp.claimed_issuer);
        let app = axum::Router::new()
            .route(
                "/jwks.json",
                get(move || {
                    let jwks = jwks.lock().unwrap().clone();
                    fetches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async move {
                        match jwks {
                            Some(body) => (axum::http::StatusCode::OK, body),
                            None => (axum::http::StatusCode::SERVICE_UNAVAILABLE, String::new()),
                        }
                    }
                }),
            )
            .route(
                "/.well-known/openid-configuration",
                get(move || {
                    let named = claimed.lock().unwrap().clone().unwrap_or(issuer.clone());
                    let doc =
                        json!({"issuer": named, "jwks_uri": format!("http://{addr}/jwks.json")});
                    async move { doc.to_string() }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        idp
    }

    fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn publish(&self, keys: Option<Value>) {
        *self.jwks.lock().unwrap() = keys.map(|k| k.to_string());
    }

    fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn remote_policy(issuer: &str, source: &str) -> String {
    format!(
        r#"apiVersion: portcullis/v1
tenant: acme
identity:
  jwt:
    - issuer: {issuer}
      audiences: [orders-api]
      algorithms: [ES256]
      {source}
      keys_ttl: 60s
      keys_max_stale: 10m
rules:
  - {{ id: all, path: "/{{rest...}}", effect: allow }}
---
apiVersion: portcullis/v1
tenant: globex
rules: []
"#
    )
}

fn es_token(key: &ES256KeyPair, iss: &str) -> String {
    key.sign(jwt_claims(&with(claims(iss), json!({"iss": iss}))))
        .unwrap()
}

#[tokio::test]
async fn remote_keys_rotation_and_outage() {
    let idp = IdP::start().await;
    let old = ES256KeyPair::generate().with_key_id("old");
    let new = ES256KeyPair::generate().with_key_id("new");
    let jwk =
        |k: &ES256KeyPair| -> Value { serde_json::from_str(&k.public_key().to_jwk()).unwrap() };
    idp.publish(Some(json!({"keys": [jwk(&old)]})));

    let dir = tempfile::tempdir().unwrap();
    let iss = idp.issuer();
    let p = pipeline(
        dir.path(),
        &remote_policy(&iss, &format!("jwks_uri: {iss}/jwks.json")),
    );
    let req = |token: &str| request("acme", "/a", bearer(token));

    // Without waiting, the first check cannot decide: 503, never an allow.
    let d = p.check(&req(&es_token(&old, &iss)));
    assert_eq!((d.status(), d.reason.code()), (503, "keys_unavailable"));
    // Waiting fetches the keys once, however many checks wait together.
    let token = es_token(&old, &iss);
    let r = req(&token);
    let (a, b) = tokio::join!(p.check_async(&r, WAIT), p.check_async(&r, WAIT));
    assert!(a.allowed && b.allowed, "{:?} {:?}", a.detail, b.detail);
    assert_eq!(idp.fetches(), 1);

    // Rotation: the new key is published and the old removed. A token with the
    // new kid triggers one re-fetch and verifies.
    idp.publish(Some(json!({"keys": [jwk(&new)]})));
    let d = p.check_async(&req(&es_token(&new, &iss)), WAIT).await;
    assert!(d.allowed, "{:?}", d.detail);
    assert_eq!(idp.fetches(), 2);
    // The old key is gone with the re-fetch, also for the very token that
    // verified (and was cached) before the rotation.
    let d = p.check_async(&req(&token), WAIT).await;
    assert_eq!(d.reason.code(), "unknown_key");
    // Unknown kids do not hammer the issuer: rate-limited, no new fetch.
    let stranger = ES256KeyPair::generate().with_key_id("stranger");
    for _ in 0..5 {
        let d = p.check_async(&req(&es_token(&stranger, &iss)), WAIT).await;
        assert_eq!(d.reason.code(), "unknown_key");
    }
    assert_eq!(idp.fetches(), 2);

    // An empty key set is a failed fetch: the last good keys stay in use.
    idp.publish(Some(json!({"keys": []})));
    tokio::time::pause();
    tokio::time::advance(portcullis::identity::keys::UNKNOWN_KID_REFETCH_INTERVAL).await;
    tokio::time::resume();
    let d = p.check_async(&req(&es_token(&stranger, &iss)), WAIT).await;
    assert_eq!(d.reason.code(), "unknown_key");
    assert_eq!(idp.fetches(), 3, "the unknown kid refetched once more");
    let d = p.check_async(&req(&es_token(&new, &iss)), WAIT).await;
    assert!(
        d.allowed,
        "the empty set did not replace the keys: {:?}",
        d.detail
    );

    // Outage: the issuer goes down. Within keys_max_stale the last good keys
    // keep serving; past it, 503 keys_unavailable.
    idp.publish(None);
    tokio::time::pause();
    tokio::time::advance(std::time::Duration::from_secs(5 * 60)).await;
    tokio::time::resume();
    let d = p.check_async(&req(&es_token(&new, &iss)), WAIT).await;
    assert!(d.allowed, "within staleness: {:?}", d.detail);
    tokio::time::pause();
    tokio::time::advance(std::time::Duration::from_secs(6 * 60)).await;
    tokio::time::resume();
    let before = idp.fetches();
    let d = p.check_async(&req(&es_token(&new, &iss)), WAIT).await;
    assert_eq!((d.status(), d.reason.code()), (503, "keys_unavailable"));
    assert_eq!(idp.fetches(), before + 1, "one fetch was tried");
    // And when it comes back, the next due fetch restores service.
    idp.publish(Some(json!({"keys": [jwk(&new)]})));
    tokio::time::pause();
    tokio::time::advance(portcullis::identity::keys::FETCH_RETRY).await;
    tokio::time::resume();
    let d = p.check_async(&req(&es_token(&new, &iss)), WAIT).await;
    assert!(d.allowed, "after recovery: {:?}", d.detail);
}

#[tokio::test]
async fn oidc_discovery_finds_the_keys_and_checks_the_issuer() {
    let idp = IdP::start().await;
    let key = ES256KeyPair::generate().with_key_id("d1");
    idp.publish(Some(
        json!({"keys": [serde_json::from_str::<Value>(&key.public_key().to_jwk()).unwrap()]}),
    ));
    let iss = idp.issuer();

    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path(), &remote_policy(&iss, "discovery: true"));
    let d = p
        .check_async(&request("acme", "/a", bearer(&es_token(&key, &iss))), WAIT)
        .await;
    assert!(d.allowed, "{:?}", d.detail);

    // A discovery document on the issuer's own origin that names another
    // issuer: no keys are taken from it (OIDC Discovery §4.3).
    let idp2 = IdP::start().await;
    idp2.publish(Some(
        json!({"keys": [serde_json::from_str::<Value>(&key.public_key().to_jwk()).unwrap()]}),
    ));
    *idp2.claimed_issuer.lock().unwrap() = Some("https://idp.other.example".into());
    let iss2 = idp2.issuer();
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path(), &remote_policy(&iss2, "discovery: true"));
    let d = p
        .check_async(&request("acme", "/a", bearer(&es_token(&key, &iss2))), WAIT)
        .await;
    assert_eq!(d.reason.code(), "keys_unavailable", "{:?}", d.detail);
    assert_eq!(idp2.fetches(), 0, "the JWKS was never fetched");

    // The same server under another name: its discovery document names a
    // different issuer, so no keys are taken from it.
    let dir = tempfile::tempdir().unwrap();
    let alias = format!("http://localhost:{}", idp.addr.port());
    let p = pipeline(dir.path(), &remote_policy(&alias, "discovery: true"));
    let d = p
        .check_async(
            &request("acme", "/a", bearer(&es_token(&key, &alias))),
            WAIT,
        )
        .await;
    assert_eq!(d.reason.code(), "keys_unavailable", "{:?}", d.detail);
}

#[test]
fn scopes_and_step_up_name_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new("acme");
    let policy = format!(
        r#"apiVersion: portcullis/v1
tenant: acme
identity:
  jwt:
    - {{ issuer: "{ISSUER}", audiences: [orders-api], algorithms: [ES256], jwks: {jwks} }}
rules:
  - {{ id: read, methods: [GET], path: /orders, scopes: [orders:read], effect: allow }}
  - id: refund
    methods: [POST]
    path: /orders/refund
    scopes: [orders:write]
    acr: [urn:acme:mfa]
    max_auth_age: 5m
    effect: allow
---
apiVersion: portcullis/v1
tenant: globex
rules: []
"#,
        jwks = keys.jwks()
    );
    let p = pipeline(dir.path(), &policy);
    let t = now();
    let call = |method: &str, path: &str, patch: Value| {
        let token = keys
            .es
            .sign(jwt_claims(&with(claims(ISSUER), patch)))
            .unwrap();
        let mut r = request("acme", path, bearer(&token));
        r.attributes
            .as_mut()
            .unwrap()
            .request
            .as_mut()
            .unwrap()
            .http
            .as_mut()
            .unwrap()
            .method = method.into();
        p.check(&r)
    };
    assert!(call("GET", "/orders", json!({})).allowed);
    let d = call("GET", "/orders", json!({"scope": "profile"}));
    assert_eq!((d.status(), d.reason.code()), (403, "insufficient_scope"));
    assert_eq!(
        d.challenge().unwrap(),
        "Bearer realm=\"portcullis\", error=\"insufficient_scope\", scope=\"orders:read\""
    );
    // Step-up: the right scope, but no MFA, or MFA too long ago.
    let strong = json!({"scope": "orders:write", "acr": "urn:acme:mfa", "auth_time": t - 60});
    assert!(call("POST", "/orders/refund", strong.clone()).allowed);
    for patch in [
        json!({"acr": "urn:acme:pwd"}),
        json!({"acr": null}),
        json!({"auth_time": t - 3600}),
        json!({"auth_time": null}),
    ] {
        let d = call(
            "POST",
            "/orders/refund",
            with(strong.clone(), patch.clone()),
        );
        assert_eq!(
            (d.status(), d.reason.code()),
            (401, "insufficient_user_authentication"),
            "{patch}"
        );
        let c = d.challenge().unwrap();
        assert!(
            c.contains("acr_values=\"urn:acme:mfa\"") && c.contains("max_age=300"),
            "{c}"
        );
    }
    // Scope first: without orders:write the answer asks for the scope.
    let d = call("POST", "/orders/refund", json!({"scope": "orders:read"}));
    assert_eq!(d.reason.code(), "insufficient_scope");
    // The rendered 401 carries the step-up challenge to the client.
    let d = call("POST", "/orders/refund", json!({"scope": "orders:write"}));
    let rendered = format!("{:?}", portcullis::decision::render::render(&d));
    assert!(
        rendered.contains("insufficient_user_authentication"),
        "{rendered}"
    );
}

#[test]
fn api_keys_are_stored_hashed_and_compared_whole() {
    use sha2::Digest as _;
    let dir = tempfile::tempdir().unwrap();
    let secret = "pk_live_0123456789abcdef";
    let hash = hex_encode(&sha2::Sha256::digest(secret.as_bytes()));
    let policy = format!(
        r#"apiVersion: portcullis/v1
tenant: acme
identity:
  api_keys:
    keys:
      - {{ sha256: {hash}, subject: ci-bot, claims: {{ scope: [reports:read] }} }}
rules:
  - {{ id: reports, path: /reports, when: '"reports:read" in claims.scope', effect: allow }}
response:
  headers: {{ x-subject: "{{subject}}", x-auth-method: "{{auth_method}}" }}
  remove: [x-api-key]
---
apiVersion: portcullis/v1
tenant: globex
rules: []
"#
    );
    let p = pipeline(dir.path(), &policy);
    let d = p.check(&request("acme", "/reports", json!({"x-api-key": secret})));
    assert!(d.allowed, "{:?}", d.detail);
    assert!(
        d.set_headers
            .contains(&("x-subject".into(), "ci-bot".into()))
    );
    assert!(
        d.set_headers
            .contains(&("x-auth-method".into(), "api_key".into()))
    );
    assert!(d.remove_headers.contains(&"x-api-key".to_string()));

    for wrong in [
        &secret[..secret.len() - 1],
        "pk_live_0123456789abcdeF",
        hash.as_str(),
    ] {
        let d = p.check(&request("acme", "/reports", json!({"x-api-key": wrong})));
        assert_eq!(
            (d.status(), d.reason.code()),
            (401, "invalid_credential"),
            "{wrong}"
        );
        assert!(!format!("{:?}", d.detail).contains(wrong));
    }
    // A key and a bearer token at once: two credentials.
    let d = p.check(&request(
        "acme",
        "/reports",
        json!({"x-api-key": secret, "authorization": "Bearer abc"}),
    ));
    assert_eq!(d.reason.code(), "malformed_credential");

    // Plaintext keys never load.
    std::fs::write(
        dir.path().join("acme.yaml"),
        "apiVersion: portcullis/v1\ntenant: acme\nidentity:\n  api_keys:\n    keys:\n      - { key: pk_live_x, subject: a }\nrules: []\n",
    )
    .unwrap();
    let store = PolicyStore::new(dir.path());
    let errors: Vec<String> = store.reload().error_lines();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("acme.yaml:") && e.contains("plaintext keys are refused")),
        "{errors:?}"
    );
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn revocation_lists_cut_tokens_off_even_when_cached() {
    let f = fixture();
    let dir = f.p.store.dir().to_path_buf();
    let token = f.acme.es.sign(jwt_claims(&claims(ISSUER))).unwrap();
    assert!(check(&f.p, &token).allowed, "verified and cached");

    let t = now();
    let write = |entries: &str| {
        std::fs::write(
            dir.join("acme.revoked.yaml"),
            format!("apiVersion: portcullis/v1\ntenant: acme\nrevoked:\n{entries}"),
        )
        .unwrap();
        let status = f.p.store.reload();
        status.error_lines()
    };
    assert!(write("  - { jti: t-1 }\n").is_empty());
    let d = check(&f.p, &token);
    assert_eq!((d.status(), d.reason.code()), (401, "token_revoked"));
    assert!(challenge(&d).contains("invalid_token"));

    // By subject, and by client (client_id or azp), with and without expiry.
    assert!(write("  - { sub: alice, until: 2999-01-01T00:00:00Z }\n").is_empty());
    assert_eq!(check(&f.p, &token).reason.code(), "token_revoked");
    let bot = f
        .acme
        .es
        .sign(jwt_claims(&with(
            claims(ISSUER),
            json!({"sub": "bot", "jti": "t-2", "azp": "leaky-ci"}),
        )))
        .unwrap();
    assert!(check(&f.p, &bot).allowed);
    assert!(write("  - { client_id: leaky-ci }\n").is_empty());
    assert_eq!(check(&f.p, &bot).reason.code(), "token_revoked");
    assert!(check(&f.p, &token).allowed, "alice is no longer listed");

    // An entry past its `until` no longer applies.
    assert!(write(&format!("  - {{ jti: t-1, until: {} }}\n", t - 1)).is_empty());
    assert!(check(&f.p, &token).allowed);

    // A broken list keeps the previous one, and says where it is broken.
    assert!(write("  - { client_id: leaky-ci }\n").is_empty());
    let errors = write("  - { client_id: leaky-ci, sub: x }\n");
    assert!(
        errors.iter().any(|e| e.contains("acme.revoked.yaml")),
        "{errors:?}"
    );
    assert_eq!(check(&f.p, &bot).reason.code(), "token_revoked");

    // Removing the file lifts every entry.
    std::fs::remove_file(dir.join("acme.revoked.yaml")).unwrap();
    f.p.store.reload();
    assert!(check(&f.p, &bot).allowed);
}

/// An RFC 7662 introspection endpoint on loopback: answers from a table of
/// tokens, checks portcullis' client credentials, and counts calls.
struct Introspection {
    addr: SocketAddr,
    calls: Arc<std::sync::atomic::AtomicUsize>,
    up: Arc<std::sync::atomic::AtomicBool>,
}

impl Introspection {
    async fn start(answers: Value) -> Introspection {
        use axum::routing::post;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (c, u) = (Arc::clone(&calls), Arc::clone(&up));
        // Basic base64("portcullis:s3cr%26t") — the secret is form-encoded first.
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("portcullis:s3cr%26t")
        );
        let app = axum::Router::new().route(
            "/introspect",
            post(move |headers: axum::http::HeaderMap, body: String| {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let authorized = headers.get("authorization").and_then(|v| v.to_str().ok())
                    == Some(expected.as_str());
                let token = body
                    .split('&')
                    .find_map(|p| p.strip_prefix("token="))
                    .map(|t| {
                        percent_encoding::percent_decode_str(t)
                            .decode_utf8_lossy()
                            .into_owned()
                    })
                    .unwrap_or_default();
                let answer = answers
                    .get(&token)
                    .cloned()
                    .unwrap_or(json!({"active": false}));
                let up = u.load(std::sync::atomic::Ordering::SeqCst);
                async move {
                    match (up, authorized) {
                        (false, _) => {
                            (axum::http::StatusCode::INTERNAL_SERVER_ERROR, String::new())
                        }
                        (true, false) => (axum::http::StatusCode::UNAUTHORIZED, String::new()),
                        // The endpoint refuses this token's request itself.
                        (true, true) if token == "refused" => {
                            (axum::http::StatusCode::BAD_REQUEST, String::new())
                        }
                        (true, true) => (axum::http::StatusCode::OK, answer.to_string()),
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Introspection { addr, calls, up }
    }

    fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test]
async fn opaque_tokens_are_introspected_once_and_cached() {
    let t = now();
    let server = Introspection::start(json!({
        "good": {"active": true, "sub": "svc-a", "scope": "reports:read", "exp": t + 300, "iss": "https://as.acme.example", "aud": "reports-api", "client_id": "app-1"},
        "expired": {"active": true, "sub": "svc-a", "exp": t - 10},
        "foreign": {"active": true, "sub": "svc-a", "iss": "https://as.other.example"},
        "elsewhere": {"active": true, "sub": "svc-a", "aud": "billing-api"},
        "typed": {"active": true, "sub": 42, "aud": "reports-api"},
        "refresh": {"active": true, "sub": "svc-a", "aud": "reports-api", "token_type": "refresh_token"},
        "good-2": {"active": true, "sub": "svc-b", "scope": "reports:read", "exp": t + 300, "aud": "reports-api"},
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client-secret"), "s3cr&t\n").unwrap();
    let policy = format!(
        r#"apiVersion: portcullis/v1
tenant: acme
identity:
  introspection:
    endpoint: http://{addr}/introspect
    issuer: https://as.acme.example
    audiences: [reports-api]
    client_id: portcullis
    client_secret_file: client-secret
rules:
  - {{ id: reports, path: /reports, when: '"reports:read" in claims.scope && context.auth.method == "introspection"', effect: allow }}
---
apiVersion: portcullis/v1
tenant: globex
rules: []
"#,
        addr = server.addr
    );
    let p = pipeline(dir.path(), &policy);
    let req = |token: &str| request("acme", "/reports", bearer(token));

    // Without waiting, nothing is decided on a guess: 503.
    let d = p.check(&req("good"));
    assert_eq!(
        (d.status(), d.reason.code()),
        (503, "introspection_unavailable")
    );
    // Two checks at once: one call; then the cache answers.
    let r = req("good");
    let (a, b) = tokio::join!(p.check_async(&r, WAIT), p.check_async(&r, WAIT));
    assert!(a.allowed && b.allowed, "{:?} {:?}", a.detail, b.detail);
    assert_eq!(a.subject.as_deref(), Some("svc-a"));
    assert_eq!(server.calls(), 1);
    assert!(p.check_async(&r, WAIT).await.allowed);
    assert_eq!(server.calls(), 1, "cached");

    for (token, want) in [
        ("unknown", "token_inactive"),
        ("expired", "token_expired"),
        ("foreign", "issuer_not_trusted"),
        ("elsewhere", "invalid_audience"),
    ] {
        let d = p.check_async(&req(token), WAIT).await;
        assert_eq!((d.status(), d.reason.code()), (401, want), "{token}");
    }
    let before = server.calls();
    assert_eq!(
        p.check_async(&req("unknown"), WAIT).await.reason.code(),
        "token_inactive"
    );
    assert_eq!(
        server.calls(),
        before,
        "inactive results are cached briefly too"
    );
    // A 400 for one token is about that token: inactive, and no pause for
    // the others; wrong member types are inactive too.
    assert_eq!(
        p.check_async(&req("refused"), WAIT).await.reason.code(),
        "token_inactive"
    );
    assert_eq!(
        p.check_async(&req("typed"), WAIT).await.reason.code(),
        "invalid_token"
    );
    assert_eq!(
        p.check_async(&req("refresh"), WAIT).await.reason.code(),
        "token_inactive"
    );
    let d = p.check_async(&req("good-2"), WAIT).await;
    assert!(
        d.allowed,
        "introspection did not pause: {:?} {:?}",
        d.reason, d.detail
    );

    // The endpoint fails: 503, never an allow; and it is not hammered.
    server.up.store(false, std::sync::atomic::Ordering::SeqCst);
    let d = p.check_async(&req("new-token"), WAIT).await;
    assert_eq!(
        (d.status(), d.reason.code()),
        (503, "introspection_unavailable")
    );
    let before = server.calls();
    let d = p.check_async(&req("another-token"), WAIT).await;
    assert_eq!(d.reason.code(), "introspection_unavailable");
    assert_eq!(server.calls(), before, "no call right after a failure");
    // The cached good token keeps working.
    assert!(p.check_async(&r, WAIT).await.allowed);
}

/// Item 11 of issue 25: an active token whose answer had an array over 256
/// elements counted as an endpoint failure: 503 for it, and for every
/// uncached token of the tenant for 2 s. Now an answer too large to judge
/// (an array over `limits.max_claim_items`, or a body over the response
/// limit) refuses that token alone, 401 `claims_too_large`, and the next
/// token of the same tenant is introspected and allowed at once.
#[tokio::test]
async fn an_oversize_introspection_answer_fails_that_token_alone() {
    let t = now();
    let max = portcullis::foundation::limits::DEFAULT_MAX_CLAIM_ITEMS;
    let answer = |groups: Value| json!({"active": true, "sub": "svc-a", "scope": "reports:read", "exp": t + 300, "groups": groups});
    let long_name = "g".repeat(100);
    let server = Introspection::start(json!({
        "groups-257": answer(json!(vec![1; 257])),
        "groups-max": answer(json!(vec![1; max])),
        "groups-over": answer(json!(vec![1; max + 1])),
        // 3,000 names of 100 bytes: a body over the 256 KiB a response may be.
        "body-over": answer(json!(vec![long_name; 3000])),
        "next": answer(json!([])),
        "after-body": answer(json!([])),
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client-secret"), "s3cr&t\n").unwrap();
    let policy = format!(
        "apiVersion: portcullis/v1\ntenant: acme\nidentity:\n  introspection: {{ endpoint: 'http://{}/introspect', issuer: https://as.acme.example, client_id: portcullis, client_secret_file: client-secret }}\nrules:\n  - {{ id: reports, path: /reports, when: '\"reports:read\" in claims.scope', effect: allow }}\n---\napiVersion: portcullis/v1\ntenant: globex\nrules: []\n",
        server.addr
    );
    let p = pipeline(dir.path(), &policy);
    let check = |token: &str| {
        let r = request("acme", "/reports", bearer(token));
        let p = &p;
        async move { p.check_async(&r, WAIT).await }
    };
    for token in ["groups-257", "groups-max"] {
        let d = check(token).await;
        assert!(d.allowed, "{token}: {:?} {:?}", d.reason, d.detail);
    }
    for token in ["groups-over", "body-over"] {
        let d = check(token).await;
        assert_eq!(
            (d.status(), d.reason.code()),
            (401, "claims_too_large"),
            "{token}"
        );
        // No pause: the tenant's next uncached token is asked about at once.
        let next = if token == "groups-over" {
            "next"
        } else {
            "after-body"
        };
        let before = server.calls();
        let d = check(next).await;
        assert!(d.allowed, "after {token}: {:?} {:?}", d.reason, d.detail);
        assert_eq!(server.calls(), before + 1, "after {token}");
    }
    // The refusal is remembered like an inactive answer: no second call.
    let before = server.calls();
    assert_eq!(check("groups-over").await.reason.code(), "claims_too_large");
    assert_eq!(server.calls(), before);
}

/// Round 2, item 4: an introspection answer within the 256 KiB a response
/// may be, but whose claims are over what the CEL cost model assumes (8 KiB
/// as compact JSON, 32 levels), refuses that token `claims_too_large`; one
/// byte or one level less is accepted.
#[tokio::test]
async fn introspection_claims_are_bounded_in_bytes_and_depth() {
    use portcullis::foundation::limits::{MAX_CLAIMS_BYTES, MAX_CLAIMS_DEPTH};
    let t = now();
    let iss = "https://as.acme.example";
    // The claims conditions see: the answer without `active`, `scope` split.
    let claims = |note: &str| json!({"sub": "svc-a", "iss": iss, "exp": t + 300, "scope": ["reports:read"], "note": note});
    let base = serde_json::to_string(&claims("")).unwrap().len();
    let answer = |note: String, nest: Value| json!({"active": true, "sub": "svc-a", "iss": iss, "scope": "reports:read", "exp": t + 300, "note": note, "nest": nest});
    let nest = |levels: usize| {
        let mut v = json!(1);
        for _ in 0..levels {
            v = json!({ "a": v });
        }
        v
    };
    // With `nest: 1` beside the note, the note is shorter by `,"nest":1`.
    let room = MAX_CLAIMS_BYTES - base - r#","nest":1"#.len();
    let server = Introspection::start(json!({
        "bytes-at": answer("x".repeat(room), json!(1)),
        "bytes-over": answer("x".repeat(room + 1), json!(1)),
        // 100 KiB: under the response bound, far over the claims bound.
        "bytes-far-over": answer("x".repeat(100 * 1024), json!(1)),
        "depth-at": answer(String::new(), nest(MAX_CLAIMS_DEPTH - 1)),
        "depth-over": answer(String::new(), nest(MAX_CLAIMS_DEPTH)),
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client-secret"), "s3cr&t\n").unwrap();
    let policy = format!(
        "apiVersion: portcullis/v1\ntenant: acme\nidentity:\n  introspection: {{ endpoint: 'http://{}/introspect', issuer: {iss}, client_id: portcullis, client_secret_file: client-secret }}\nrules:\n  - {{ id: reports, path: /reports, when: '\"reports:read\" in claims.scope', effect: allow }}\n---\napiVersion: portcullis/v1\ntenant: globex\nrules: []\n",
        server.addr
    );
    let p = pipeline(dir.path(), &policy);
    for (token, allowed) in [
        ("bytes-at", true),
        ("bytes-over", false),
        ("bytes-far-over", false),
        ("depth-at", true),
        ("depth-over", false),
    ] {
        let d = p
            .check_async(&request("acme", "/reports", bearer(token)), WAIT)
            .await;
        if allowed {
            assert!(d.allowed, "{token}: {:?} {:?}", d.reason, d.detail);
        } else {
            assert_eq!(
                (d.status(), d.reason.code()),
                (401, "claims_too_large"),
                "{token}"
            );
        }
    }
}

/// Round 2, item 4: a JWT's claims are bounded in depth like every source's
/// (32 levels, the payload itself the first); its size bounds its bytes.
#[test]
fn jwt_claims_are_bounded_in_depth() {
    let f = fixture();
    let depth = portcullis::foundation::limits::MAX_CLAIMS_DEPTH;
    let nested = |levels: usize| {
        let mut v = json!(1);
        for _ in 0..levels {
            v = json!({ "a": v });
        }
        with(claims(ISSUER), json!({ "nest": v }))
    };
    let at = f.acme.es.sign(jwt_claims(&nested(depth - 1))).unwrap();
    let d = check(&f.p, &at);
    assert!(d.allowed, "{:?} {:?}", d.reason, d.detail);
    let over = f.acme.es.sign(jwt_claims(&nested(depth))).unwrap();
    let d = check(&f.p, &over);
    assert_eq!((d.status(), d.reason.code()), (401, "claims_too_large"));
}

#[tokio::test]
async fn introspection_with_the_wrong_secret_fails_closed() {
    let server = Introspection::start(json!({"good": {"active": true, "sub": "a"}})).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client-secret"), "wrong").unwrap();
    let policy = format!(
        "apiVersion: portcullis/v1\ntenant: acme\nidentity:\n  introspection: {{ endpoint: 'http://{}/introspect', issuer: i, client_id: portcullis, client_secret_file: client-secret }}\nrules:\n  - {{ id: all, path: /reports, effect: allow }}\n---\napiVersion: portcullis/v1\ntenant: globex\nrules: []\n",
        server.addr
    );
    let p = pipeline(dir.path(), &policy);
    let d = p
        .check_async(&request("acme", "/reports", bearer("good")), WAIT)
        .await;
    assert_eq!(
        (d.status(), d.reason.code()),
        (503, "introspection_unavailable")
    );
    assert_eq!(server.calls(), 1);
    // A missing secret file is a load error, with the file named.
    std::fs::remove_file(dir.path().join("client-secret")).unwrap();
    std::fs::write(
        dir.path().join("acme.yaml"),
        format!("{} ", policy.split("---").next().unwrap()),
    )
    .unwrap();
    let errors: Vec<String> = p.store.reload().error_lines();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("acme.yaml") && e.contains("client_secret_file")),
        "{errors:?}"
    );
}

/// The client secret is read at every call, so it is checked at every call: a
/// secret file swapped for a symlink out of the policy directory after the
/// policy loaded is not read, and nothing is sent.
#[tokio::test]
async fn a_client_secret_swapped_for_a_link_outside_is_not_sent() {
    let server = Introspection::start(json!({"good": {"active": true, "sub": "a"}})).await;
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client-secret"), "s3cret").unwrap();
    std::fs::write(elsewhere.path().join("signing.pem"), "not for policies").unwrap();
    let policy = format!(
        "apiVersion: portcullis/v1\ntenant: acme\nidentity:\n  introspection: {{ endpoint: 'http://{}/introspect', issuer: i, client_id: portcullis, client_secret_file: client-secret }}\nrules:\n  - {{ id: all, path: /reports, effect: allow }}\n---\napiVersion: portcullis/v1\ntenant: globex\nrules: []\n",
        server.addr
    );
    let p = pipeline(dir.path(), &policy);
    std::fs::remove_file(dir.path().join("client-secret")).unwrap();
    std::os::unix::fs::symlink(
        elsewhere.path().join("signing.pem"),
        dir.path().join("client-secret"),
    )
    .unwrap();
    let d = p
        .check_async(&request("acme", "/reports", bearer("good")), WAIT)
        .await;
    assert_eq!(
        (d.status(), d.reason.code()),
        (503, "introspection_unavailable")
    );
    assert_eq!(server.calls(), 0, "the secret was never sent");
}

/// A private CA, a server certificate for 127.0.0.1 and a client certificate,
/// all made by rcgen for this test.
struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
    ca_der: rustls::pki_types::CertificateDer<'static>,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca_pem: ca.pem(),
        server: leaf(vec!["127.0.0.1".into()]),
        client: leaf(vec!["portcullis.test".into()]),
        ca_der: ca.der().clone(),
    }
}

/// Serves `body` over HTTPS on loopback with the PKI's server certificate,
/// demanding a client certificate from its CA; counts completed requests.
async fn tls_jwks_server(
    pki: &Pki,
    body: String,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::clone(&provider),
    )
    .build()
    .unwrap();
    let certs = CertificateDer::pem_slice_iter(pki.server.0.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(pki.server.1.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&served);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, body, count) = (acceptor.clone(), body.clone(), Arc::clone(&count));
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                if tls.write_all(response.as_bytes()).await.is_ok() {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, served)
}

#[tokio::test]
async fn keys_from_a_provider_behind_a_private_ca_and_mutual_tls() {
    let pki = pki();
    let key = ES256KeyPair::generate().with_key_id("tls-1");
    let jwks =
        json!({"keys": [serde_json::from_str::<Value>(&key.public_key().to_jwk()).unwrap()]});
    let (addr, served) = tls_jwks_server(&pki, jwks.to_string()).await;
    let iss = "https://idp.private.example";

    let load = |tls: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &pki.ca_pem).unwrap();
        std::fs::write(dir.path().join("client.pem"), &pki.client.0).unwrap();
        std::fs::write(dir.path().join("client.key"), &pki.client.1).unwrap();
        let p = pipeline(
            dir.path(),
            &remote_policy(
                iss,
                &format!("jwks_uri: https://{addr}/jwks.json\n      {tls}"),
            ),
        );
        (dir, p)
    };
    let token = es_token(&key, iss);
    let req = request("acme", "/a", bearer(&token));

    // The private CA and the client certificate: keys fetched, token verified.
    let (_d1, p) = load("tls: { ca_file: ca.pem, cert_file: client.pem, key_file: client.key }");
    let d = p.check_async(&req, WAIT).await;
    assert!(d.allowed, "{:?}", d.detail);
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Without the CA, the server is not trusted; without the client
    // certificate, the server refuses. Either way: 503, never an allow.
    for tls in [
        "tls: { cert_file: client.pem, key_file: client.key }",
        "tls: { ca_file: ca.pem }",
    ] {
        let (_d, p) = load(tls);
        let d = p.check_async(&req, WAIT).await;
        assert_eq!(
            (d.status(), d.reason.code()),
            (503, "keys_unavailable"),
            "{tls}"
        );
    }
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// A Kubernetes Secret volume: `name -> ..data/name`, `..data -> ..<version>`;
/// an update writes a new version directory and renames a new `..data` link
/// over the old one.
fn secret_version(mount: &Path, version: &str, name: &str, text: &str) {
    let dir = mount.join(format!("..{version}"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
    let tmp = mount.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, mount.join("..data")).unwrap();
    let link = mount.join(name);
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(format!("..data/{name}"), link).unwrap();
    }
}

#[tokio::test]
async fn a_rotated_jwks_file_is_picked_up_without_a_policy_change_or_restart() {
    use portcullis::foundation::proto::auth::authorization_client::AuthorizationClient;
    use portcullis::foundation::proto::auth::check_response::HttpResponse;

    let root = tempfile::tempdir().unwrap();
    let (policies, secret) = (root.path().join("policies"), root.path().join("secret"));
    std::fs::create_dir(&policies).unwrap();
    std::fs::create_dir(&secret).unwrap();
    let old = ES256KeyPair::generate().with_key_id("old");
    let new = ES256KeyPair::generate().with_key_id("new");
    let jwks = |keys: &[&ES256KeyPair]| {
        let keys: Vec<Value> = keys
            .iter()
            .map(|k| serde_json::from_str(&k.public_key().to_jwk()).unwrap())
            .collect();
        json!({ "keys": keys }).to_string()
    };
    secret_version(&secret, "v1", "jwks.json", &jwks(&[&old]));
    let jwks_file = secret.join("jwks.json");
    std::fs::write(
        policies.join("acme.yaml"),
        format!(
            "apiVersion: portcullis/v1\ntenant: acme\nidentity:\n  jwt:\n    - issuer: {ISSUER}\n      audiences: [orders-api]\n      algorithms: [ES256]\n      jwks_file: {}\nrules:\n  - {{ id: all, path: \"/{{rest...}}\", effect: allow }}\n",
            jwks_file.display()
        ),
    )
    .unwrap();
    let policy_before = std::fs::read(policies.join("acme.yaml")).unwrap();
    let secret_dir = secret.clone();
    let server = support::start_portcullis_with(&policies, move |c| {
        c.policy_files.allowed_dirs = vec![secret_dir];
    })
    .await;
    let mut client = AuthorizationClient::connect(format!("http://{}", server.grpc_addr.unwrap()))
        .await
        .unwrap();
    let token = |key: &ES256KeyPair| key.sign(jwt_claims(&claims(ISSUER))).unwrap();
    let (old_token, new_token) = (token(&old), token(&new));
    let allowed = async |client: &mut AuthorizationClient<_>, token: &str| {
        let r = client
            .check(request("acme", "/x", bearer(token)))
            .await
            .unwrap()
            .into_inner();
        matches!(r.http_response, Some(HttpResponse::OkResponse(_)))
    };
    assert!(allowed(&mut client, &old_token).await);
    assert!(!allowed(&mut client, &new_token).await, "not yet published");

    // Both keys published (the overlap of a rotation), then the old removed.
    secret_version(&secret, "v2", "jwks.json", &jwks(&[&old, &new]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !allowed(&mut client, &new_token).await {
        assert!(
            std::time::Instant::now() < deadline,
            "new key never accepted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(
        allowed(&mut client, &old_token).await,
        "both keys published"
    );

    secret_version(&secret, "v3", "jwks.json", &jwks(&[&new]));
    while allowed(&mut client, &old_token).await {
        assert!(
            std::time::Instant::now() < deadline,
            "old key never refused"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(allowed(&mut client, &new_token).await);

    // A broken rotation keeps the last good keys serving, and says why.
    secret_version(&secret, "v4", "jwks.json", "not json");
    while server.store.status().errors.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "broken jwks never seen"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(allowed(&mut client, &new_token).await, "old compile serves");
    assert!(!allowed(&mut client, &old_token).await);
    assert_eq!(
        std::fs::read(policies.join("acme.yaml")).unwrap(),
        policy_before,
        "the policy file was never touched"
    );
    server.stop().await.unwrap();
}
