//! Narrowed tokens for the next hop (RFC 8693 semantics at the edge): instead
//! of forwarding the caller's token, portcullis mints a short-lived JWT for the
//! upstream service, with only the audience, subject, tenant and scopes that hop
//! needs, and an `act` claim naming the original client.
//!
//! Every replica signs with the same key, read from files (a Kubernetes Secret
//! mount). Several keys can be configured for rotation with overlap: the first
//! signs, all are published at the admin port's `/.well-known/jwks.json`. Only an
//! explicitly named development mode generates a key, and it says so loudly.
//!
//! Minted tokens are cached per (tenant, subject, audience, scopes, client,
//! binding) and reused while most of their lifetime remains, so minting does not
//! put a signature on every check. This module never logs a minted token.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::identity::Identity;
use crate::policy::downstream::{Audience, Downstream};
pub use crate::policy::downstream::{DEFAULT_LIFETIME, DownstreamSpec, MAX_LIFETIME};

/// Most minted tokens kept for reuse.
pub const MAX_CACHED: usize = 10_000;

/// The server configuration's `token_exchange` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeConfig {
    /// The `iss` of minted tokens.
    pub issuer: String,
    /// Signing keys: PKCS#8 PEM files, P-256 (ES256) or Ed25519 (EdDSA). The
    /// first signs; every one is published, so services keep verifying tokens
    /// signed by the previous key during a rotation.
    #[serde(default)]
    pub keys: Vec<KeyFile>,
    /// Development only: generate an ephemeral ES256 key at start-up. Each
    /// replica then signs with its own key, which services cannot all trust.
    #[serde(default)]
    pub development_generate_key: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    pub kid: String,
    pub file: PathBuf,
}

/// Why no token could be minted. Denied with 503: the upstream must not get
/// the caller's token instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    #[error("no token_exchange signing key is configured")]
    NotConfigured,
    #[error("the route has no context extension {0:?} for the audience")]
    NoAudience(String),
    #[error("signing failed")]
    Signing,
}

struct Signer {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Json,
}

/// The process's minter: signing keys, published keys and the token cache.
pub struct Minter {
    issuer: String,
    signers: Vec<Signer>,
    cache: Mutex<HashMap<[u8; 32], (String, u64)>>,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("issuer", &self.issuer)
            .field(
                "kids",
                &self.signers.iter().map(|s| &s.kid).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Minter {
    /// Loads the keys; `base` resolves relative key paths.
    pub fn load(config: &ExchangeConfig, base: &Path) -> Result<Minter, String> {
        crate::identity::http::origin_of(&config.issuer)
            .map_err(|e| format!("token_exchange.issuer: {e}"))?;
        let mut signers = Vec::new();
        for k in &config.keys {
            let path = base.join(&k.file);
            let pem = std::fs::read(&path)
                .map_err(|e| format!("token_exchange: cannot read key {}: {e}", path.display()))?;
            signers.push(
                signer_from_pem(&k.kid, &pem)
                    .map_err(|e| format!("token_exchange: key {}: {e}", path.display()))?,
            );
        }
        if config.development_generate_key {
            if !signers.is_empty() {
                return Err(
                    "token_exchange: development_generate_key and keys exclude each other".into(),
                );
            }
            tracing::warn!(
                "token_exchange.development_generate_key: DEVELOPMENT ONLY, minted tokens are signed with a key generated at start-up that no other replica shares"
            );
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &rng,
            )
            .map_err(|_| "token_exchange: cannot generate a key".to_string())?;
            signers.push(signer(
                "development",
                Algorithm::ES256,
                EncodingKey::from_ec_der(pkcs8.as_ref()),
            )?);
        }
        if signers.is_empty() {
            return Err("token_exchange: list at least one key".into());
        }
        let mut kids: Vec<&str> = signers.iter().map(|s| s.kid.as_str()).collect();
        kids.sort_unstable();
        kids.dedup();
        if kids.len() != signers.len() {
            return Err("token_exchange: key ids must be unique".into());
        }
        Ok(Minter {
            issuer: config.issuer.clone(),
            signers,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The published keys, a JWKS document.
    pub fn jwks(&self) -> Json {
        json!({ "keys": self.signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>() })
    }

    /// A token for the upstream, minted or reused.
    pub fn mint(
        &self,
        spec: &Downstream,
        tenant: &str,
        identity: &Identity,
        context_extensions: &std::collections::BTreeMap<String, String>,
        now: u64,
    ) -> Result<String, MintError> {
        // `now` is the request time Envoy reports, and whoever can send a
        // CheckRequest chooses it: a claimed future time must not mint a token
        // that outlives `lifetime` by this replica's own clock.
        let now = now.min(crate::request::input::unix_seconds(
            std::time::SystemTime::now(),
        ));
        let audience = match &spec.audience {
            Audience::Fixed(a) => a.clone(),
            Audience::ContextExtension(k) => context_extensions
                .get(k)
                .filter(|a| !a.is_empty())
                .cloned()
                .ok_or_else(|| MintError::NoAudience(k.clone()))?,
        };
        let held: Vec<&str> = identity
            .claims
            .get("scope")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(Json::as_str)
            .collect();
        let scopes: Vec<&str> = spec
            .scopes
            .iter()
            .map(String::as_str)
            .filter(|s| held.contains(s))
            .collect();
        let claim = |n: &str| identity.claims.get(n).and_then(Json::as_str);
        // RFC 8693 §4.1: `act` names the party acting for the subject, here
        // the client the caller used, with the issuer that knows it; a
        // delegation the caller's token already carries stays nested in it.
        let client = claim("client_id").or_else(|| claim("azp"));
        // Never longer than the caller's own token.
        let exp = (now + spec.lifetime).min(identity.expires.unwrap_or(u64::MAX));
        // Everything the token depends on, hashed: no separator can collide.
        let key: [u8; 32] = {
            use sha2::Digest as _;
            let parts = json!([
                tenant,
                identity.method.as_str(),
                identity.issuer,
                identity.subject,
                audience,
                scopes,
                client,
                identity.claims.get("act"),
                identity.binding.kind,
                identity.binding.thumbprint,
                spec.lifetime,
                identity.expires,
            ]);
            sha2::Sha256::digest(parts.to_string().as_bytes()).into()
        };
        // Reuse while more than a third of the lifetime remains.
        if let Some((token, cached_exp)) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && now + spec.lifetime / 3 < *cached_exp
        {
            return Ok(token.clone());
        }
        let mut claims = json!({
            "iss": self.issuer, "aud": audience, "tenant": tenant,
            "iat": now, "exp": exp, "jti": uuid::Uuid::new_v4().to_string(),
            "scope": scopes.join(" "),
        });
        if let Some(sub) = &identity.subject {
            claims["sub"] = json!(sub);
        }
        if let Some(client) = client {
            let mut act = json!({ "sub": client });
            if let Some(iss) = &identity.issuer {
                act["iss"] = json!(iss);
            }
            if let Some(prior) = identity.claims.get("act") {
                act["act"] = prior.clone();
            }
            claims["act"] = act;
        }
        let signer = &self.signers[0];
        let mut header = Header::new(signer.alg);
        header.kid = Some(signer.kid.clone());
        header.typ = Some("at+jwt".into());
        // Signed outside the lock: a miss must not queue every other check.
        let token =
            jsonwebtoken::encode(&header, &claims, &signer.key).map_err(|_| MintError::Signing)?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (_, e)| *e > now);
            if cache.len() >= MAX_CACHED * 9 / 10 {
                cache.clear();
            }
        }
        cache.insert(key, (token.clone(), exp));
        Ok(token)
    }
}

fn signer_from_pem(kid: &str, pem: &[u8]) -> Result<Signer, String> {
    if let Ok(key) = EncodingKey::from_ec_pem(pem) {
        return signer(kid, Algorithm::ES256, key);
    }
    if let Ok(key) = EncodingKey::from_ed_pem(pem) {
        return signer(kid, Algorithm::EdDSA, key);
    }
    Err("not a PKCS#8 PEM P-256 or Ed25519 private key".into())
}

fn signer(kid: &str, alg: Algorithm, key: EncodingKey) -> Result<Signer, String> {
    if kid.is_empty() {
        return Err("kid must not be empty".into());
    }
    let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, alg)
        .map_err(|_| "cannot derive the public key".to_string())?;
    let mut jwk = serde_json::to_value(jwk).map_err(|_| "cannot publish the key".to_string())?;
    jwk["kid"] = json!(kid);
    jwk["use"] = json!("sig");
    // Nothing private is ever published.
    if ["d", "p", "q", "k"].iter().any(|m| jwk.get(*m).is_some()) {
        return Err("the derived JWK has private members".into());
    }
    Ok(Signer {
        kid: kid.to_string(),
        alg,
        key,
        jwk,
    })
}
