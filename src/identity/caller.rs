//! The result of authentication: [`Identity`], the caller as rules see it, and
//! [`AuthMethod`], how it was identified.
//!
//! Never imports: policy, decision, tenants or anything above them.

use std::sync::Arc;

use serde_json::{Map, Value as Json};

use super::binding;

/// How the caller was identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Anonymous,
    /// A JWT portcullis validated itself.
    Jwt,
    /// An opaque token the issuer's introspection endpoint vouched for.
    Introspection,
    /// An API key from the tenant's list.
    ApiKey,
    EnvoyJwt,
    Spiffe,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Anonymous => "anonymous",
            AuthMethod::Jwt => "jwt",
            AuthMethod::ApiKey => "api_key",
            AuthMethod::Introspection => "introspection",
            AuthMethod::EnvoyJwt => "envoy_jwt",
            AuthMethod::Spiffe => "spiffe",
        }
    }
}

/// The caller, as rules see it: `claims` in conditions and header templates.
#[derive(Debug, Clone)]
pub struct Identity {
    pub method: AuthMethod,
    pub subject: Option<String>,
    pub issuer: Option<String>,
    /// The token's `jti`, when it has one.
    pub token_id: Option<String>,
    /// Shared with the verified-token cache: a cache hit does not copy them.
    pub claims: Arc<Map<String, Json>>,
    /// A query parameter that carried the token: removed before the upstream.
    pub consumed_query: Option<String>,
    /// When the credential expires (unix seconds), if it does.
    pub expires: Option<u64>,
    /// How the token is bound to its sender.
    pub binding: binding::Binding,
}

impl Identity {
    pub fn anonymous() -> Identity {
        Identity {
            method: AuthMethod::Anonymous,
            subject: None,
            issuer: None,
            token_id: None,
            claims: Arc::default(),
            consumed_query: None,
            expires: None,
            binding: binding::Binding::default(),
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.method == AuthMethod::Anonymous
    }
}
