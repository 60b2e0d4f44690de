//! Stage 3: who is calling, from a verified credential.
//!
//! Each tenant lists the identity sources it trusts: JWTs that portcullis
//! validates itself against the tenant's own issuers ([`jwt`], keys in [`keys`]),
//! claims Envoy's `jwt_authn` filter already verified (read from
//! `metadata_context`), and the SPIFFE ID of an mTLS peer.
//!
//! What this stage must never do: accept a credential it could not verify (an
//! invalid credential never falls back to anonymous), accept claims from an issuer
//! the tenant does not trust, or put a token into an error or a log line.
//!
//! The parts: `spec` (the identity section as written), `config`
//! ([`IdentityConfig`], it compiled), `authenticate` ([`authenticate()`], the
//! stage itself), the sources it reads (`token_source` for portcullis' own
//! tokens, `api_keys`, `envoy_jwt`, `spiffe`), and what it gives: `caller`
//! ([`Identity`]) or `error` ([`IdentityError`], [`Pending`]).
//!
//! Never imports: policy, decision, tenants or anything above them.

mod api_keys;
mod authenticate;
pub mod binding;
mod cache_key;
mod caller;
pub mod claims_bound;
mod config;
pub mod counters;
mod envoy_jwt;
mod error;
pub mod http;
pub mod introspection;
pub mod jwt;
pub mod keys;
pub mod revocation;
pub mod shared_state;
mod spec;
pub mod spiffe;
mod token_source;

pub use authenticate::{authenticate, identify, record_replay};
pub use caller::{AuthMethod, Identity};
pub use config::IdentityConfig;
pub use error::{IdentityError, Pending};
pub use spec::{
    ApiKeySpec, ApiKeysSpec, EnvoyJwtSpec, IdentitySpec, JWT_AUTHN_NAMESPACE,
    JWT_AUTHN_PAYLOAD_KEY, SpiffeSpec, TokenSourceSpec,
};
pub use token_source::TokenSource;
