//! Sender-constrained tokens through the whole pipeline: DPoP (RFC 9449) and
//! mTLS-bound tokens (RFC 8705). Access tokens are minted by jwt-simple; DPoP
//! proofs are assembled here and signed with jwt-simple's Ed25519 key material,
//! independently of portcullis' verifier.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jwt_simple::prelude::*;
use serde_json::{Value, json};
use sha2::Digest as _;

use portcullis::decision::Decision;
use portcullis::foundation::proto::auth::CheckRequest;
use portcullis::pipeline::Pipeline;
use portcullis::request::tenancy::TenantResolver;
use portcullis::tenants::store::PolicyStore;
use support::now;

const ISSUER: &str = "https://idp.acme.example";
const ORIGIN: &str = "https://api.acme.example";

struct Fixture {
    _dir: tempfile::TempDir,
    tenant: String,
    issuer: ES256KeyPair,
    p: Pipeline,
}

fn fixture(extra_dpop: &str, constraint: &str) -> Fixture {
    fixture_with(extra_dpop, constraint, Default::default())
}

fn fixture_with(
    extra_dpop: &str,
    constraint: &str,
    limits: portcullis::foundation::limits::Limits,
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let issuer = ES256KeyPair::generate().with_key_id("idp-1");
    let jwk: Value = serde_json::from_str(&issuer.public_key().to_jwk()).unwrap();
    std::fs::write(dir.path().join("nonce.key"), [42u8; 32]).unwrap();
    let policy = format!(
        r#"apiVersion: portcullis/v1
tenant: acme-{n}
identity:
  jwt:
    - issuer: {ISSUER}
      audiences: [orders-api]
      algorithms: [ES256]
      jwks: {{ keys: [{jwk}] }}
      sender_constraint: {constraint}
  dpop:
    public_origin: {ORIGIN}
    algorithms: [EdDSA, ES256]
    {extra_dpop}
rules:
  - {{ id: bound-only, path: /secret, when: 'context.sender_constraint != "none"', effect: allow }}
  - {{ id: any, path: "/orders/{{id}}", effect: allow }}
"#,
        // A tenant per fixture: each has its own replay cache.
        n = uuid_like()
    );
    std::fs::write(dir.path().join("acme.yaml"), policy).unwrap();
    let store = PolicyStore::new(dir.path()).with_limits(limits);
    let status = store.reload();
    assert!(status.errors.is_empty(), "{:?}", status.errors);
    let tenant = status.tenants[0].tenant.clone();
    let p = Pipeline::new(Arc::new(store), TenantResolver::default());
    Fixture {
        _dir: dir,
        tenant,
        issuer,
        p,
    }
}

fn uuid_like() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

use support::dpop::Client;

fn token(f: &Fixture, cnf: Option<Value>) -> String {
    let t = now();
    let mut claims =
        json!({"iss": ISSUER, "aud": "orders-api", "sub": "alice", "iat": t, "exp": t + 300});
    if let Some(cnf) = cnf {
        claims["cnf"] = cnf;
    }
    f.issuer.sign(support::raw_claims(claims)).unwrap()
}

impl Fixture {
    fn req(&self, method: &str, path: &str, headers: Value, source: Option<Value>) -> CheckRequest {
        request(&self.tenant, method, path, headers, source)
    }
}

fn request(
    tenant: &str,
    method: &str,
    path: &str,
    headers: Value,
    source: Option<Value>,
) -> CheckRequest {
    let mut attributes = json!({
        "contextExtensions": { "tenant": tenant },
        "request": { "http": { "method": method, "host": "api.acme.example", "path": path, "headers": headers } }
    });
    if let Some(source) = source {
        attributes["source"] = source;
    }
    portcullis::app::cli::check_request_from_json(&json!({ "attributes": attributes })).unwrap()
}

fn dpop_call(f: &Fixture, method: &str, path: &str, token: &str, proof: &str) -> Decision {
    f.p.check(&f.req(
        method,
        path,
        json!({"authorization": format!("DPoP {token}"), "dpop": proof}),
        None,
    ))
}

#[test]
fn a_dpop_bound_request_passes_once() {
    let f = fixture("", "dpop");
    let client = Client::new();
    let token = token(&f, Some(json!({"jkt": client.jkt()})));
    let proof = client.proof("GET", &format!("{ORIGIN}/secret"), &token, json!({}));
    let d = dpop_call(&f, "GET", "/secret", &token, &proof);
    assert!(d.allowed, "{:?} {:?}", d.reason, d.detail);
    assert!(
        d.remove_headers.contains(&"dpop".to_string()),
        "the proof does not travel upstream"
    );
    // The same proof again: replayed.
    let d = dpop_call(&f, "GET", "/secret", &token, &proof);
    assert_eq!((d.status(), d.reason.code()), (401, "dpop_proof_replayed"));
    let c = d.challenge().unwrap();
    assert!(
        c.starts_with("DPoP ")
            && c.contains("error=\"invalid_dpop_proof\"")
            && c.contains("algs=\"EdDSA ES256\""),
        "{c}"
    );
    // A query on the request is not part of htu (RFC 9449 §4.3 check 9).
    let proof = client.proof("GET", &format!("{ORIGIN}/orders/1"), &token, json!({}));
    assert!(dpop_call(&f, "GET", "/orders/1?expand=items", &token, &proof).allowed);
}

#[test]
fn every_proof_rejection() {
    let f = fixture("", "dpop");
    let client = Client::new();
    let token = token(&f, Some(json!({"jkt": client.jkt()})));
    let htu = format!("{ORIGIN}/orders/1");
    let t = now();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "wrong htm",
            client.proof("POST", &htu, &token, json!({})),
            "invalid_dpop_proof",
        ),
        (
            "other host",
            client.proof("GET", "https://evil.example/orders/1", &token, json!({})),
            "invalid_dpop_proof",
        ),
        (
            "other path",
            client.proof("GET", &format!("{ORIGIN}/orders/2"), &token, json!({})),
            "invalid_dpop_proof",
        ),
        (
            "stale iat",
            client.proof("GET", &htu, &token, json!({"iat": t - 600})),
            "invalid_dpop_proof",
        ),
        (
            "future iat",
            client.proof("GET", &htu, &token, json!({"iat": t + 600})),
            "invalid_dpop_proof",
        ),
        (
            "no ath",
            client.proof("GET", &htu, &token, json!({"ath": null})),
            "invalid_dpop_proof",
        ),
        (
            "wrong ath",
            client.proof("GET", &htu, &token, json!({"ath": B64.encode([0u8; 32])})),
            "invalid_dpop_proof",
        ),
        (
            "no jti",
            client.proof("GET", &htu, &token, json!({"jti": null})),
            "invalid_dpop_proof",
        ),
        (
            "another key than cnf.jkt",
            Client::new().proof("GET", &htu, &token, json!({})),
            "token_binding_mismatch",
        ),
        (
            "two proofs",
            format!("{0}, {0}", client.proof("GET", &htu, &token, json!({}))),
            "invalid_dpop_proof",
        ),
    ];
    for (name, proof, want) in cases {
        let d = dpop_call(&f, "GET", "/orders/1", &token, &proof);
        assert_eq!(
            (d.status(), d.reason.code()),
            (401, want),
            "{name}: {:?}",
            d.detail
        );
        // Refused for the reason the case is about, not another one.
        let about = match name {
            "wrong htm" => "htm",
            "other host" | "other path" => "htu",
            "stale iat" | "future iat" => "iat",
            "no ath" | "wrong ath" => "ath",
            "no jti" => "jti",
            "two proofs" => "more than one",
            _ => "cnf.jkt",
        };
        let detail = d.detail.unwrap_or_default();
        assert!(detail.contains(about), "{name}: {detail}");
    }
    // Near the iat window (60s) edges, with slack for a clock tick mid-test.
    for (offset, ok) in [(-58i64, true), (58, true), (-63, false), (63, false)] {
        let iat = (t as i64 + offset) as u64;
        let proof = client.proof("GET", &htu, &token, json!({ "iat": iat }));
        let d = dpop_call(&f, "GET", "/orders/1", &token, &proof);
        assert_eq!(d.allowed, ok, "iat {offset:+}: {:?}", d.detail);
    }
    // Header problems: typ, a private key in jwk, a symmetric alg, none.
    let claims = json!({"jti": "h1", "htm": "GET", "htu": htu, "iat": t, "ath": B64.encode(sha2::Sha256::digest(token.as_bytes()))});
    let mut private = client.jwk();
    private["d"] = json!(B64.encode([1u8; 32]));
    for (name, header) in [
        (
            "typ",
            json!({"typ": "JWT", "alg": "EdDSA", "jwk": client.jwk()}),
        ),
        (
            "private jwk",
            json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": private}),
        ),
        (
            "symmetric",
            json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": {"kty": "oct", "k": "c2VjcmV0"}}),
        ),
        (
            "none",
            json!({"typ": "dpop+jwt", "alg": "none", "jwk": client.jwk()}),
        ),
        ("no jwk", json!({"typ": "dpop+jwt", "alg": "EdDSA"})),
    ] {
        let d = dpop_call(
            &f,
            "GET",
            "/orders/1",
            &token,
            &client.sign(&header, &claims),
        );
        assert_eq!(d.reason.code(), "invalid_dpop_proof", "{name}");
    }
    // No DPoP header at all.
    let d = f.p.check(&f.req(
        "GET",
        "/orders/1",
        json!({"authorization": format!("DPoP {token}")}),
        None,
    ));
    assert_eq!(d.reason.code(), "invalid_dpop_proof");
}

#[test]
fn bound_tokens_never_work_as_bearer_and_unbound_ones_are_refused_when_required() {
    let f = fixture("", "dpop");
    let client = Client::new();
    let bound = token(&f, Some(json!({"jkt": client.jkt()})));
    // A stolen DPoP-bound token replayed as a bearer token.
    let d = f.p.check(&f.req(
        "GET",
        "/orders/1",
        json!({"authorization": format!("Bearer {bound}")}),
        None,
    ));
    assert_eq!(
        (d.status(), d.reason.code()),
        (401, "token_binding_mismatch")
    );
    // The issuer requires DPoP: an unbound token is refused, with a DPoP challenge.
    let unbound = token(&f, None);
    let d = f.p.check(&f.req(
        "GET",
        "/orders/1",
        json!({"authorization": format!("Bearer {unbound}")}),
        None,
    ));
    assert_eq!(d.reason.code(), "token_binding_mismatch");
    assert!(
        d.challenge().unwrap().starts_with("DPoP "),
        "{:?}",
        d.challenge()
    );
    // And an unbound token with a valid proof: still not bound.
    let proof = client.proof("GET", &format!("{ORIGIN}/orders/1"), &unbound, json!({}));
    assert_eq!(
        dpop_call(&f, "GET", "/orders/1", &unbound, &proof)
            .reason
            .code(),
        "token_binding_mismatch"
    );

    // Where the issuer does not require a binding, bearer tokens work and a rule
    // can still demand one for a sensitive route.
    let f = fixture("", "none");
    let unbound = token(&f, None);
    let bearer = json!({"authorization": format!("Bearer {unbound}")});
    assert!(
        f.p.check(&f.req("GET", "/orders/1", bearer.clone(), None))
            .allowed
    );
    assert_eq!(
        f.p.check(&f.req("GET", "/secret", bearer, None))
            .reason
            .code(),
        "no_matching_rule"
    );
}

#[test]
fn server_nonces_when_the_tenant_asks_for_them() {
    let f = fixture("nonce_key_file: nonce.key", "dpop");
    let client = Client::new();
    let token = token(&f, Some(json!({"jkt": client.jkt()})));
    let htu = format!("{ORIGIN}/orders/1");
    let d = dpop_call(
        &f,
        "GET",
        "/orders/1",
        &token,
        &client.proof("GET", &htu, &token, json!({})),
    );
    assert_eq!((d.status(), d.reason.code()), (401, "use_dpop_nonce"));
    assert!(d.challenge().unwrap().contains("error=\"use_dpop_nonce\""));
    let nonce = d
        .client_headers
        .iter()
        .find(|(k, _)| k == "dpop-nonce")
        .map(|(_, v)| v.clone())
        .expect("a DPoP-Nonce header");
    let d = dpop_call(
        &f,
        "GET",
        "/orders/1",
        &token,
        &client.proof("GET", &htu, &token, json!({"nonce": nonce})),
    );
    assert!(d.allowed, "{:?}", d.detail);
    let d = dpop_call(
        &f,
        "GET",
        "/orders/1",
        &token,
        &client.proof("GET", &htu, &token, json!({"nonce": "forged"})),
    );
    assert_eq!(d.reason.code(), "use_dpop_nonce");
}

#[test]
fn certificate_bound_tokens_need_their_certificate() {
    let f = fixture("", "mtls");
    let cert = |name: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), B64.encode(sha2::Sha256::digest(cert.der())))
    };
    let (pem, x5t) = cert("client.acme.example");
    let (other_pem, _) = cert("other.acme.example");
    let token = token(&f, Some(json!({"x5t#S256": x5t})));
    let bearer = json!({"authorization": format!("Bearer {token}")});
    let peer = |pem: &str| {
        let encoded: String =
            percent_encoding::utf8_percent_encode(pem, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        json!({"principal": "spiffe://acme.example/ns/shop/sa/client", "certificate": encoded})
    };
    let d =
        f.p.check(&f.req("GET", "/secret", bearer.clone(), Some(peer(&pem))));
    assert!(d.allowed, "{:?} {:?}", d.reason, d.detail);
    let d =
        f.p.check(&f.req("GET", "/secret", bearer.clone(), Some(peer(&other_pem))));
    assert_eq!(
        (d.status(), d.reason.code()),
        (401, "token_binding_mismatch")
    );
    let d = f.p.check(&f.req("GET", "/secret", bearer, None));
    assert_eq!(
        (d.status(), d.reason.code()),
        (401, "token_binding_mismatch")
    );
    // The issuer requires mTLS binding: an unbound token is refused.
    let unbound = token_unbound(&f);
    let d = f.p.check(&f.req(
        "GET",
        "/orders/1",
        json!({"authorization": format!("Bearer {unbound}")}),
        Some(peer(&pem)),
    ));
    assert_eq!(d.reason.code(), "token_binding_mismatch");
}

fn token_unbound(f: &Fixture) -> String {
    token(f, None)
}

/// `limits.replay_cache_size`: the size of a tenant's replay cache when its
/// policy sets none (full: the next new proof is refused, 503), and the most a
/// policy may ask for.
#[test]
fn replay_cache_size_limit() {
    let limits = portcullis::foundation::limits::Limits {
        replay_cache_size: 2,
        ..Default::default()
    };
    let f = fixture_with("", "dpop", limits.clone());
    let client = Client::new();
    let token = token(&f, Some(json!({"jkt": client.jkt()})));
    let htu = format!("{ORIGIN}/secret");
    for _ in 0..2 {
        let proof = client.proof("GET", &htu, &token, json!({}));
        let d = dpop_call(&f, "GET", "/secret", &token, &proof);
        assert!(d.allowed, "at the limit: {:?} {:?}", d.reason, d.detail);
    }
    let proof = client.proof("GET", &htu, &token, json!({}));
    let d = dpop_call(&f, "GET", "/secret", &token, &proof);
    assert_eq!(
        (d.allowed, d.status(), d.reason.code()),
        (false, 503, "dpop_replay_cache_full")
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("acme.yaml"),
        format!(
            "apiVersion: portcullis/v1\ntenant: acme-big-{}\nidentity:\n  dpop: {{ public_origin: {ORIGIN}, replay_cache_size: 3 }}\nrules: []\n",
            uuid_like()
        ),
    )
    .unwrap();
    let errors = PolicyStore::new(dir.path())
        .with_limits(limits)
        .reload()
        .error_lines()
        .join("\n");
    assert!(
        errors.contains("acme.yaml") && errors.contains("limits.replay_cache_size 2"),
        "{errors}"
    );
}

/// A valid proof of exactly `size` bytes: a `pad` claim fills the payload,
/// and a `pad` header member, when needed, makes the length reachable (a
/// base64url text is never 4k + 1 characters long).
fn proof_of_size(client: &Client, htu: &str, token: &str, size: usize) -> String {
    let claims = json!({
        "jti": format!("p-{}", uuid_like()), "htm": "GET", "htu": htu, "iat": now(),
        "ath": B64.encode(sha2::Sha256::digest(token.as_bytes())), "pad": "",
    });
    let encoded = |n: usize| (4 * n).div_ceil(3);
    for header_pad in 0..4 {
        let mut header = json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": client.jwk()});
        if header_pad > 0 {
            header["pad"] = json!("h".repeat(header_pad));
        }
        // header "." payload "." signature (64 bytes: 86 characters).
        let Some(payload) = size.checked_sub(encoded(header.to_string().len()) + 88) else {
            continue;
        };
        if payload % 4 == 1 {
            continue;
        }
        let mut claims = claims.clone();
        claims["pad"] = json!("c".repeat(payload * 3 / 4 - claims.to_string().len()));
        let proof = client.sign(&header, &claims);
        assert_eq!(proof.len(), size);
        return proof;
    }
    unreachable!("every size is reachable with some header padding");
}

#[test]
fn proofs_beyond_max_proof_bytes_are_refused() {
    use portcullis::identity::binding::MAX_PROOF_BYTES;
    let f = fixture("", "dpop");
    let client = Client::new();
    let token = token(&f, Some(json!({"jkt": client.jkt()})));
    let htu = format!("{ORIGIN}/secret");
    let at = proof_of_size(&client, &htu, &token, MAX_PROOF_BYTES);
    let d = dpop_call(&f, "GET", "/secret", &token, &at);
    assert!(d.allowed, "at the limit: {:?} {:?}", d.reason, d.detail);
    let over = proof_of_size(&client, &htu, &token, MAX_PROOF_BYTES + 1);
    let d = dpop_call(&f, "GET", "/secret", &token, &over);
    assert_eq!((d.status(), d.reason.code()), (401, "invalid_dpop_proof"));
    let detail = d.detail.unwrap_or_default();
    assert!(detail.contains("proof too large"), "{detail}");
}
