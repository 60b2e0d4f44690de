//! API keys for machine clients: the tenant's keys compiled to SHA-256 hashes,
//! and the caller of a key presented in a request.
//!
//! Never imports: policy, decision, tenants or anything above them.

use std::sync::Arc;

use serde_json::{Map, Value as Json};

use crate::request::input::Input;

use super::binding;
use super::caller::{AuthMethod, Identity};
use super::error::IdentityError;
use super::spec::ApiKeysSpec;

/// API keys, compiled: the header and each key's hash with its identity.
#[derive(Debug)]
pub(super) struct ApiKeys {
    pub(super) header: String,
    keys: Vec<ApiKey>,
}

#[derive(Debug)]
struct ApiKey {
    hash: [u8; 32],
    subject: String,
    claims: Arc<Map<String, Json>>,
}

impl ApiKeys {
    pub(super) fn compile(spec: &ApiKeysSpec) -> Result<ApiKeys, String> {
        let header = spec.header.to_ascii_lowercase();
        if header.is_empty()
            || !header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "identity.api_keys.header {:?} is not a header name",
                spec.header
            ));
        }
        if spec.keys.is_empty() {
            return Err("identity.api_keys.keys must list at least one key".into());
        }
        let mut keys = Vec::new();
        for (i, k) in spec.keys.iter().enumerate() {
            if k.key.is_some() {
                return Err(format!(
                    "identity.api_keys.keys[{i}]: plaintext keys are refused; store sha256: the hex SHA-256 of the key"
                ));
            }
            let hash = k
                .sha256
                .as_deref()
                .and_then(|h| hex::decode(h.trim()).ok())
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    format!("identity.api_keys.keys[{i}]: sha256 must be 64 hex digits")
                })?;
            if k.subject.is_empty() {
                return Err(format!(
                    "identity.api_keys.keys[{i}]: subject must not be empty"
                ));
            }
            if keys.iter().any(|k: &ApiKey| k.hash == hash) {
                return Err(format!(
                    "identity.api_keys.keys[{i}]: the same key is listed twice"
                ));
            }
            let mut claims = k.claims.clone();
            claims.insert("sub".into(), Json::String(k.subject.clone()));
            // The same bound as every other identity source's claims, so
            // the cost model's size of `claims` holds for API keys too.
            if super::claims_bound::within(
                &claims,
                crate::foundation::limits::MAX_CLAIM_ITEMS_CEILING,
            )
            .is_err()
            {
                return Err(format!(
                    "identity.api_keys.keys[{i}]: claims are over the claims bound ({} bytes as JSON, {} levels, {} items per list)",
                    super::claims_bound::MAX_CLAIMS_BYTES,
                    super::claims_bound::MAX_CLAIMS_DEPTH,
                    crate::foundation::limits::MAX_CLAIM_ITEMS_CEILING
                ));
            }
            keys.push(ApiKey {
                hash,
                subject: k.subject.clone(),
                claims: Arc::new(claims),
            });
        }
        Ok(ApiKeys { header, keys })
    }

    /// The key's identity. Every stored hash is compared, in constant time, so
    /// the time taken says nothing about which key (or how much of one) matched.
    fn find(&self, presented: &str) -> Option<&ApiKey> {
        use sha2::Digest as _;
        use subtle::ConstantTimeEq as _;
        let hash: [u8; 32] = sha2::Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (i, key) in self.keys.iter().enumerate() {
            if bool::from(key.hash.ct_eq(&hash)) {
                found = Some(i);
            }
        }
        found.map(|i| &self.keys[i])
    }
}

/// The caller of an API key. A key sent with another credential is refused.
pub(super) fn api_key(
    credential_headers: &[String],
    keys: &ApiKeys,
    input: &Input,
) -> Result<Option<Identity>, IdentityError> {
    let headers = &input.resource.headers;
    let Some(presented) = headers
        .get(&keys.header)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
    else {
        return Ok(None);
    };
    if let Some(other) = credential_headers
        .iter()
        .find(|h| **h != keys.header && headers.get(*h).is_some_and(|v| !v.trim().is_empty()))
    {
        return Err(IdentityError::Conflict(
            format!("header {}", keys.header),
            format!("header {other}"),
        ));
    }
    let key = keys
        .find(presented)
        .ok_or_else(|| IdentityError::Unverified(keys.header.clone()))?;
    Ok(Some(Identity {
        method: AuthMethod::ApiKey,
        subject: Some(key.subject.clone()),
        issuer: None,
        token_id: None,
        claims: key.claims.clone(),
        consumed_query: None,
        expires: None,
        binding: binding::Binding::default(),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn spec(claims: &str) -> ApiKeysSpec {
        serde_yaml::from_str(&format!(
            "keys: [{{ sha256: '{}', subject: svc, claims: {claims} }}]",
            "ab".repeat(32)
        ))
        .unwrap()
    }

    #[test]
    fn api_key_claims_are_held_to_the_claims_bound() {
        assert!(ApiKeys::compile(&spec("{ scope: [a, b] }")).is_ok());
        let long = format!("{{ note: '{}' }}", "x".repeat(9 * 1024));
        let e = ApiKeys::compile(&spec(&long)).err().unwrap();
        assert!(e.contains("keys[0]") && e.contains("claims bound"), "{e}");
        let deep = format!("{{ a: {}1{} }}", "[".repeat(40), "]".repeat(40));
        assert!(ApiKeys::compile(&spec(&deep)).is_err());
    }
}
