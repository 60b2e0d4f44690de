//! A tenant's identity sources, validated: [`IdentityConfig`], compiled from
//! the spec, with the server's limits applied.
//!
//! Never imports: policy, decision, tenants or anything above them.

use std::sync::Arc;

use super::api_keys::ApiKeys;
use super::binding;
use super::introspection::Introspector;
use super::jwt::{self, Issuer};
use super::keys::RemoteKeys;
use super::spec::{EnvoyJwtSpec, IdentitySpec, SpiffeSpec};
use super::spiffe::parse_spiffe_id;
use super::token_source::TokenSource;

/// A tenant's identity sources, validated.
#[derive(Debug)]
pub struct IdentityConfig {
    pub(super) sources: Vec<Source>,
    pub(super) credential_headers: Vec<String>,
    /// portcullis' own JWT issuers, and where their tokens are read from.
    pub(super) issuers: Arc<[Issuer]>,
    pub(super) token_sources: Vec<TokenSource>,
    /// Shared with the `io.jwt.*` builtins of a Rego policy, which verify
    /// the same tokens with the same issuers.
    pub(super) token_cache: Arc<jwt::TokenCache>,
    /// Largest token looked at (`limits.max_token_bytes`).
    pub(super) max_token_bytes: usize,
    /// Most elements in one array or object of a token's claims
    /// (`limits.max_claim_items`).
    pub(super) max_claim_items: usize,
    pub(super) introspection: Option<Arc<Introspector>>,
    pub(super) api_keys: Option<ApiKeys>,
    pub(super) dpop: Option<binding::Dpop>,
    /// `identity.live_revocation`: callers are also checked against the
    /// revocations pushed through the shared store, failing closed when this
    /// replica cannot vouch for them.
    pub live_revocation: bool,
}

/// One way of turning a request into an [`Identity`](super::Identity).
#[derive(Debug, Clone)]
pub(super) enum Source {
    EnvoyJwt(EnvoyJwtSpec),
    Spiffe(SpiffeSpec),
}

impl IdentityConfig {
    /// Validates a tenant's identity section; `files` says where the files
    /// it names may be (see [`crate::foundation::policy_files`]).
    pub fn compile(
        spec: &IdentitySpec,
        tenant: &str,
        files: &crate::foundation::policy_files::FileScope,
    ) -> Result<IdentityConfig, String> {
        let mut issuers: Vec<Issuer> = Vec::new();
        for issuer in &spec.jwt {
            if issuers.iter().any(|i| i.issuer == issuer.issuer) {
                return Err(format!(
                    "identity.jwt: issuer {:?} is listed twice",
                    issuer.issuer
                ));
            }
            issuers.push(Issuer::compile(issuer, files)?);
        }
        let token_sources = match &spec.token_sources {
            None => vec![TokenSource::Header {
                name: "authorization".into(),
                scheme: Some("bearer".into()),
            }],
            Some(list) if list.is_empty() => {
                return Err("identity.token_sources must not be empty".into());
            }
            Some(list) => list
                .iter()
                .map(TokenSource::compile)
                .collect::<Result<_, _>>()?,
        };
        let introspection = spec
            .introspection
            .as_ref()
            .map(|i| Introspector::compile(i, tenant, files).map(Arc::new))
            .transpose()?;
        let takes_tokens = !issuers.is_empty() || introspection.is_some();
        if spec.token_sources.is_some() && !takes_tokens {
            return Err(
                "identity.token_sources needs identity.jwt or identity.introspection".into(),
            );
        }
        let api_keys = spec.api_keys.as_ref().map(ApiKeys::compile).transpose()?;
        let mut sources = Vec::new();
        if let Some(jwt) = &spec.envoy_jwt_authn {
            if jwt.issuers.is_empty() || jwt.issuers.iter().any(String::is_empty) {
                return Err(
                    "identity.envoy_jwt_authn.issuers must list at least one issuer".into(),
                );
            }
            sources.push(Source::EnvoyJwt(jwt.clone()));
        }
        if let Some(spiffe) = &spec.spiffe {
            if spiffe.trust_domains.is_empty()
                || spiffe
                    .trust_domains
                    .iter()
                    .any(|d| d.is_empty() || d.contains('/') || d.contains(':'))
            {
                return Err("identity.spiffe.trust_domains must list bare trust domains such as acme.example".into());
            }
            for pattern in &spiffe.ids {
                let concrete = pattern.replace("/*", "/x");
                let in_domain = parse_spiffe_id(&concrete)
                    .is_some_and(|(d, _)| spiffe.trust_domains.iter().any(|t| t == d));
                if !in_domain {
                    return Err(format!(
                        "identity.spiffe.ids: {pattern:?} must be a SPIFFE ID in one of trust_domains (`*` for a whole segment)"
                    ));
                }
            }
            sources.push(Source::Spiffe(spiffe.clone()));
        }
        let mut credential_headers: Vec<String> = spec
            .credential_headers
            .clone()
            .unwrap_or_else(|| vec!["authorization".to_string()])
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        // A header that carries our own tokens or API keys is a credential
        // header too: sent and not verified, it never falls back to anonymous.
        let own = token_sources
            .iter()
            .filter(|_| takes_tokens)
            .filter_map(|s| match s {
                TokenSource::Header { name, .. } => Some(name.clone()),
                _ => None,
            })
            .chain(api_keys.iter().map(|k| k.header.clone()));
        for name in own.collect::<Vec<_>>() {
            if !credential_headers.contains(&name) {
                credential_headers.push(name);
            }
        }
        Ok(IdentityConfig {
            live_revocation: spec.live_revocation,
            sources,
            credential_headers,
            issuers: issuers.into(),
            token_sources,
            token_cache: Arc::new(jwt::TokenCache::default()),
            max_token_bytes: jwt::MAX_TOKEN_BYTES,
            max_claim_items: crate::foundation::limits::DEFAULT_MAX_CLAIM_ITEMS,
            introspection,
            api_keys,
            dpop: spec
                .dpop
                .as_ref()
                .map(|d| binding::Dpop::compile(d, tenant, files))
                .transpose()?,
        })
    }

    /// Applies the server's limits: the largest token, the size of its claims
    /// (JWT and introspection answers alike), the token cache's size, and the
    /// DPoP replay cache's (a policy may not ask for more).
    pub fn apply_limits(
        &mut self,
        limits: &crate::foundation::limits::Limits,
        tenant: &str,
    ) -> Result<(), String> {
        self.max_token_bytes = limits.max_token_bytes;
        self.max_claim_items = limits.max_claim_items;
        if let Some(introspection) = &self.introspection {
            introspection.limit_claim_items(limits.max_claim_items);
        }
        self.token_cache = Arc::new(jwt::TokenCache::with_capacity(limits.token_cache_size));
        match &mut self.dpop {
            Some(dpop) => dpop.limit_replay_cache(tenant, limits.replay_cache_size),
            None => Ok(()),
        }
    }

    /// Whether the tenant's checks reach the shared store: it takes DPoP
    /// proofs (one-time use across replicas) or asks for live revocation.
    pub fn needs_shared_state(&self) -> bool {
        self.dpop.is_some() || self.live_revocation
    }

    /// Verified tokens cached now (at most `limits.token_cache_size`).
    pub fn cached_tokens(&self) -> usize {
        self.token_cache.len()
    }

    /// Request headers that carry credentials (the caller's token or key must
    /// not travel on beside a minted downstream token).
    pub fn credential_headers(&self) -> &[String] {
        &self.credential_headers
    }

    /// Whether a token may come in a cookie.
    pub fn reads_cookies(&self) -> bool {
        self.token_sources
            .iter()
            .any(|s| matches!(s, TokenSource::Cookie(_)))
    }

    /// The tenant's own JWT issuers (for Rego's `io.jwt.*`, which verify
    /// with them).
    pub fn issuers(&self) -> &Arc<[Issuer]> {
        &self.issuers
    }

    /// The verified-token cache the identity stage fills.
    pub fn token_cache(&self) -> &Arc<jwt::TokenCache> {
        &self.token_cache
    }

    /// Most elements per array or object of a token's claims.
    pub fn max_claim_items(&self) -> usize {
        self.max_claim_items
    }

    /// The remote key sets this tenant's issuers use.
    pub fn remote_keys(&self) -> impl Iterator<Item = (&str, &Arc<RemoteKeys>)> {
        self.issuers
            .iter()
            .filter_map(|i| i.remote().map(|r| (i.issuer.as_str(), r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_specs_are_refused() {
        let spec: IdentitySpec = serde_yaml::from_str("envoy_jwt_authn: { issuers: [] }").unwrap();
        assert!(
            IdentityConfig::compile(
                &spec,
                "t",
                &crate::foundation::policy_files::FileScope::new(".", &[])
            )
            .is_err()
        );
        let spec: IdentitySpec =
            serde_yaml::from_str("spiffe: { trust_domains: ['spiffe://x'] }").unwrap();
        assert!(
            IdentityConfig::compile(
                &spec,
                "t",
                &crate::foundation::policy_files::FileScope::new(".", &[])
            )
            .is_err()
        );
        assert!(serde_yaml::from_str::<IdentitySpec>("bogus: 1").is_err());
    }
}
