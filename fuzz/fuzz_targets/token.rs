//! JWT parsing and validation, and DPoP proof parsing, through the identity
//! stage: the input is split at the first newline into an access token and a
//! DPoP proof, sent as `Authorization: DPoP <token>` and `DPoP: <proof>` (and
//! the token alone as `Bearer`) to a tenant with an ES256 issuer and DPoP.
//! No forged token can be allowed: the fuzzer holds no private key.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use serde_json::json;

use portcullis::pipeline::Pipeline;
use portcullis::store::PolicyStore;
use portcullis::tenant::TenantResolver;

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

fn pipeline() -> &'static Pipeline {
    static P: OnceLock<(Pipeline, std::path::PathBuf)> = OnceLock::new();
    &P.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("portcullis-fuzz-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("fuzz.yaml"), POLICY).unwrap();
        let store = PolicyStore::new(&dir);
        let status = store.reload();
        assert!(status.errors.is_empty(), "{:?}", status.error_lines());
        (
            Pipeline::new(Arc::new(store), TenantResolver::default()),
            dir,
        )
    })
    .0
}

fn check(headers: serde_json::Value) {
    let Ok(request) = portcullis::cli::check_request_from_json(&json!({
        "attributes": { "contextExtensions": { "tenant": "fuzz" }, "request": { "http": {
            "method": "GET", "host": "api.fuzz.example", "path": "/orders/1", "headers": headers } } }
    })) else {
        return;
    };
    let d = pipeline().check(&request);
    assert!(
        !d.allowed,
        "a token nobody signed was allowed: {:?}",
        d.reason
    );
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (token, proof) = text.split_once('\n').unwrap_or((&text, ""));
    check(json!({ "authorization": format!("Bearer {token}") }));
    check(json!({ "authorization": format!("DPoP {token}"), "dpop": proof }));
});
