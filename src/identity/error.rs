//! Why authentication did not give an identity: [`IdentityError`], and
//! [`Pending`], what a check must fetch before it can decide.
//!
//! Never imports: policy, decision, tenants or anything above them.

use std::sync::Arc;

use super::binding;
use super::introspection::Introspector;
use super::jwt::TokenError;
use super::keys::RemoteKeys;

/// Why no identity could be established. Messages name the header, never its value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdentityError {
    #[error("credential {0:?} is repeated or holds several values")]
    Malformed(String),
    #[error("more than one credential: {0} and {1}")]
    Conflict(String, String),
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The token's binding failed; `challenge` and `nonce` go to the client.
    #[error("{error}")]
    Binding {
        error: binding::BindingError,
        challenge: Option<String>,
        nonce: Option<String>,
    },
    /// Not a failure yet: something must be fetched first, then the check runs
    /// again (see [`crate::pipeline::Pipeline::check_async`]).
    #[error("{0}")]
    Pending(Pending),
    #[error("credential header {0:?} was sent but no identity source verified it")]
    Unverified(String),
    #[error("issuer is not trusted by this tenant")]
    IssuerNotTrusted,
    #[error("verified claims are malformed: {0}")]
    BadClaims(&'static str),
}

impl IdentityError {
    pub fn reason(&self) -> crate::foundation::reason::Reason {
        use crate::foundation::reason::Reason;
        match self {
            IdentityError::Malformed(_) | IdentityError::Conflict(..) => {
                Reason::MalformedCredential
            }
            IdentityError::Token(e) => e.reason(),
            IdentityError::Binding { error, .. } => error.reason(),
            IdentityError::Pending(Pending::Keys(_)) => Reason::KeysUnavailable,
            IdentityError::Pending(Pending::Introspect(..)) => Reason::IntrospectionUnavailable,
            IdentityError::Unverified(_) | IdentityError::BadClaims(_) => Reason::InvalidCredential,
            IdentityError::IssuerNotTrusted => Reason::IssuerNotTrusted,
        }
    }
}

/// What a check must wait for before it can decide.
#[derive(Debug, Clone)]
pub enum Pending {
    /// An issuer's keys.
    Keys(Arc<RemoteKeys>),
    /// An introspection of this token (held only to send it to the endpoint).
    Introspect(Arc<Introspector>, String),
}

impl std::fmt::Display for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pending::Keys(k) => write!(f, "the keys of {} are not available", k.source),
            Pending::Introspect(i, _) => {
                write!(f, "introspection at {} did not answer", i.issuer)
            }
        }
    }
}

impl Pending {
    /// Fetches what is missing, waiting at most `wait`; an introspection
    /// asks `shared` first when it enables the shared cache.
    pub async fn resolve(
        &self,
        now: std::time::SystemTime,
        wait: std::time::Duration,
        shared: Option<&Arc<dyn super::shared_state::SharedState>>,
    ) {
        match self {
            Pending::Keys(keys) => {
                keys.fetch_and_wait(wait).await;
            }
            Pending::Introspect(introspector, token) => {
                let now = crate::request::input::unix_seconds(now);
                introspector.introspect(token, now, wait, shared).await;
            }
        }
    }
}
