//! The `token` fuzz target's body: JWT parsing and validation, and DPoP
//! proof parsing, through the identity stage. The input is split at the first
//! newline into an access token and a DPoP proof, sent as `Authorization: DPoP
//! <token>` and `DPoP: <proof>` (and the token alone as `Bearer`) to a tenant
//! with an ES256 issuer and DPoP. The whole input is also sent as the proof of
//! a validly signed, DPoP-bound token ([`SIGNED`]), so the proof parser sees
//! it. Nothing can be allowed: the fuzzer holds neither the issuer's key nor a
//! key with the bound thumbprint. Shared by the cargo-fuzz target and
//! `tests/fuzz_corpus.rs`.
//!
//! Never imports: anything but portcullis' public API, serde_json and std.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, OnceLock};

use serde_json::json;

use portcullis::pipeline::Pipeline;
use portcullis::request::tenancy::TenantResolver;
use portcullis::tenants::store::PolicyStore;

const POLICY: &str = r#"apiVersion: portcullis/v1
tenant: fuzz
identity:
  jwt:
    - issuer: https://idp.fuzz.example
      audiences: [api]
      algorithms: [ES256, RS256, EdDSA]
      jwks: { keys: [{ kty: EC, crv: P-256, kid: k1, x: xbw_dGqDmg4dJGPBnROY5y-YX73-pnYMi1IsGQD3Aqw, y: oFqUCqkf-io3HivA99VIbIl8KnFbZo1s_VFsSqv54QM }] }
  dpop:
    public_origin: https://api.fuzz.example
rules:
  - { id: any, path: "/{rest...}", when: 'claims.sub != ""', effect: allow }
"#;

/// ES256, signed by the key behind the policy's JWK, `exp` in 2096, bound to
/// a `jkt` no key has.
const SIGNED: &str = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIiwidHlwIjoiSldUIn0.eyJpc3MiOiJodHRwczovL2lkcC5mdXp6LmV4YW1wbGUiLCJhdWQiOiJhcGkiLCJzdWIiOiJhbGljZSIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjo0MDAwMDAwMDAwLCJjbmYiOnsiamt0IjoiMFpjT0NPUlpOWXktRFdwcXEzMGpaeUpHSFROMGQySGdsQlYzdWlndUE0SSJ9fQ.EQSQnQlbHy58iMrkfNGXR_cXKDNf5Ig8Iuh8YJBtd5xHiEYnXpHAZUxjoiqg2POpr0ai2ipY6cKlflk9BjxVNA";

fn pipeline() -> &'static Pipeline {
    static P: OnceLock<Pipeline> = OnceLock::new();
    P.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("portcullis-fuzz-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("fuzz.yaml"), POLICY).unwrap();
        let store = PolicyStore::new(&dir);
        let status = store.reload();
        // Loaded once and never reloaded: the file is not needed again.
        let _ = std::fs::remove_dir_all(&dir);
        assert!(status.errors.is_empty(), "{:?}", status.error_lines());
        Pipeline::new(Arc::new(store), TenantResolver::default())
    })
}

fn check(headers: serde_json::Value) -> Option<&'static str> {
    let Ok(request) = portcullis::app::cli::check_request_from_json(&json!({
        "attributes": { "contextExtensions": { "tenant": "fuzz" }, "request": { "http": {
            "method": "GET", "host": "api.fuzz.example", "path": "/orders/1", "headers": headers } } }
    })) else {
        return None;
    };
    let d = pipeline().check(&request);
    assert!(
        !d.allowed,
        "a token nobody signed was allowed: {:?}",
        d.reason
    );
    Some(d.reason.code())
}

/// The signed token is accepted as far as its proof: the proof parser is
/// what the third call exercises.
fn signed_token_reaches_the_proof() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let reason = check(json!({ "authorization": format!("DPoP {SIGNED}"), "dpop": "x.y.z" }));
        assert_eq!(reason, Some("invalid_dpop_proof"));
    });
}

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (token, proof) = text.split_once('\n').unwrap_or((&text, ""));
    signed_token_reaches_the_proof();
    check(json!({ "authorization": format!("Bearer {token}") }));
    check(json!({ "authorization": format!("DPoP {token}"), "dpop": proof }));
    check(json!({ "authorization": format!("DPoP {SIGNED}"), "dpop": text }));
}
