//! A DPoP client for tests: an Ed25519 key (jwt-simple's key material) and
//! proofs assembled and signed here, independently of portcullis' verifier.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jwt_simple::prelude::*;
use serde_json::{Value, json};
use sha2::Digest as _;

/// The client's DPoP key.
pub struct Client {
    pub key: Ed25519KeyPair,
}

impl Client {
    pub fn new() -> Client {
        Client {
            key: Ed25519KeyPair::generate(),
        }
    }

    pub fn jwk(&self) -> Value {
        let mut jwk: Value = serde_json::from_str(&self.key.public_key().to_jwk()).unwrap();
        let jwk = jwk.as_object_mut().unwrap();
        jwk.retain(|k, _| ["kty", "crv", "x"].contains(&k.as_str()));
        Value::Object(jwk.clone())
    }

    /// RFC 7638 thumbprint, computed here independently.
    pub fn jkt(&self) -> String {
        let jwk = self.jwk();
        let canonical = format!(
            r#"{{"crv":"{}","kty":"{}","x":"{}"}}"#,
            jwk["crv"].as_str().unwrap(),
            jwk["kty"].as_str().unwrap(),
            jwk["x"].as_str().unwrap()
        );
        B64.encode(sha2::Sha256::digest(canonical.as_bytes()))
    }

    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self.key.key_pair().as_ref().sk.sign(input.as_bytes(), None);
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }

    /// A proof for `htm` `htu` and `token`, with `patch` applied to its
    /// claims (a null removes one); a fresh `jti` each time.
    pub fn proof(&self, htm: &str, htu: &str, token: &str, patch: Value) -> String {
        let mut claims = json!({
            "jti": format!("p-{}", uuid::Uuid::new_v4()), "htm": htm, "htu": htu, "iat": super::now(),
            "ath": B64.encode(sha2::Sha256::digest(token.as_bytes())),
        });
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        let header = json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": self.jwk()});
        self.sign(&header, &claims)
    }
}
