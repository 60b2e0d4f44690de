//! Who may ask the AuthZEN API, and for which tenants (`authzen.askers`).
//!
//! An asker is a service, not the caller it asks about. It proves who it is
//! with a bearer token of its own in `Authorization`, validated by the
//! identity configuration of the tenant it asks for, exactly as a caller's
//! token is at the gateway (issuer, signature, audience, lifetime, revocation
//! by file and, for a tenant with `live_revocation`, through the shared store);
//! then its validated `sub` (and `iss`, when the entry names one) must be an
//! entry allowed for that tenant. No token, no answer (401); a token the tenant
//! does not accept, 401 with the reason; a valid asker outside the list, 403
//! `asker_not_allowed`, as is a tenant the server does not serve, so an asker
//! cannot tell the two apart.
//!
//! Never imports: the app, or the policy and decision stages.

use std::time::Duration;

use serde::Deserialize;

use crate::foundation::reason::Reason;
use crate::identity;
use crate::pipeline::Pipeline;
use crate::request::input::unix_seconds;

/// The path the asker's own token is checked against (rules never see it).
const ASKER_PATH: &str = "/access/v1/evaluation";

/// One entry of `authzen.askers`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Asker {
    /// The asker's token `sub`.
    pub subject: String,
    /// The asker's token `iss`, when only one issuer may vouch for it.
    #[serde(default)]
    pub issuer: Option<String>,
    /// The tenants it may ask about.
    pub tenants: Vec<String>,
}

impl Asker {
    /// Checks the entry's form; the message names what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.subject.is_empty() {
            return Err("authzen.askers: an entry needs a subject".into());
        }
        if self.tenants.is_empty() || self.tenants.iter().any(String::is_empty) {
            return Err(format!(
                "authzen.askers: {:?} needs a non-empty list of tenants",
                self.subject
            ));
        }
        if self.issuer.as_deref() == Some("") {
            return Err(format!(
                "authzen.askers: {:?} has an empty issuer",
                self.subject
            ));
        }
        Ok(())
    }

    fn allows(&self, tenant: &str, subject: Option<&str>, issuer: Option<&str>) -> bool {
        self.tenants.iter().any(|t| t == tenant)
            && subject == Some(self.subject.as_str())
            && self.issuer.as_deref().is_none_or(|i| issuer == Some(i))
    }
}

/// The asker who may ask for `tenant`, by its validated subject; or the
/// reason it may not. `authorization` is the asker's `Authorization` header.
pub async fn authenticate(
    pipeline: &Pipeline,
    askers: &[Asker],
    tenant: &str,
    authorization: Option<&str>,
    wait: Duration,
) -> Result<String, Reason> {
    let Some(authorization) = authorization.filter(|a| !a.trim().is_empty()) else {
        return Err(Reason::MissingCredential);
    };
    if !askers.iter().any(|a| a.tenants.iter().any(|t| t == tenant)) {
        return Err(Reason::AskerNotAllowed);
    }
    let Some(compiled) = pipeline.store.tenant(tenant) else {
        return Err(Reason::AskerNotAllowed);
    };
    let request = asker_request(&pipeline.tenancy.context_key, tenant, authorization);
    let input = crate::request::read(pipeline.store.limits(), &request).map_err(|e| e.reason())?;
    let mut result = identity::authenticate(&compiled.identity, &input);
    if let Err(identity::IdentityError::Pending(pending)) = &result {
        pending
            .resolve(input.context.time, wait, pipeline.shared_state())
            .await;
        result = identity::authenticate(&compiled.identity, &input);
    }
    let asker = result.map_err(|e| e.reason())?;
    if asker.is_anonymous() {
        return Err(Reason::MissingCredential);
    }
    match pipeline.store.revocation_list(&compiled.id) {
        Ok(Some(list)) => {
            if list
                .revoked(&asker, unix_seconds(input.context.time))
                .is_some()
            {
                return Err(Reason::TokenRevoked);
            }
        }
        Ok(None) => {}
        Err(_) => return Err(Reason::RevocationUnavailable),
    }
    // And the live ones (`identity.live_revocation`), as at the gateway: an
    // asker token revoked with `portcullis revoke` asks no more.
    match pipeline.live_revocations(&compiled, &asker) {
        Ok(Some(list))
            if list
                .revoked(&asker, unix_seconds(input.context.time))
                .is_some() =>
        {
            return Err(Reason::TokenRevoked);
        }
        Ok(_) => {}
        Err(_) => return Err(Reason::SharedStateUnavailable),
    }
    let (subject, issuer) = (asker.subject.as_deref(), asker.issuer.as_deref());
    if askers.iter().any(|a| a.allows(tenant, subject, issuer)) {
        Ok(subject.unwrap_or_default().to_string())
    } else {
        Err(Reason::AskerNotAllowed)
    }
}

/// The request that carries the asker's credential to the tenant's identity
/// stage: its header, for the tenant, and nothing the caller sent.
fn asker_request(
    tenant_key: &str,
    tenant: &str,
    authorization: &str,
) -> crate::foundation::proto::auth::CheckRequest {
    use crate::foundation::proto::auth::attribute_context::{HttpRequest, Request};
    use crate::foundation::proto::auth::{AttributeContext, CheckRequest};
    let http = HttpRequest {
        method: "POST".into(),
        path: ASKER_PATH.into(),
        headers: [("authorization".to_string(), authorization.to_string())].into(),
        protocol: "HTTP/1.1".into(),
        ..Default::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                time: None,
                http: Some(http),
            }),
            context_extensions: [(tenant_key.to_string(), tenant.to_string())].into(),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_allows_its_subject_for_its_tenants_only() {
        let a = Asker {
            subject: "orders".into(),
            issuer: Some("https://idp".into()),
            tenants: vec!["acme".into()],
        };
        assert!(a.allows("acme", Some("orders"), Some("https://idp")));
        assert!(!a.allows("globex", Some("orders"), Some("https://idp")));
        assert!(!a.allows("acme", Some("billing"), Some("https://idp")));
        assert!(!a.allows("acme", Some("orders"), Some("https://other")));
        assert!(!a.allows("acme", None, Some("https://idp")));
        let any_issuer = Asker { issuer: None, ..a };
        assert!(any_issuer.allows("acme", Some("orders"), None));
        assert!(any_issuer.validate().is_ok());
        let bad = Asker {
            tenants: vec![],
            ..any_issuer
        };
        assert!(bad.validate().unwrap_err().contains("tenants"));
    }
}
