//! Floor 4, the decision: the outcome of a check as data ([`Decision`], with
//! what the log and metrics need beside it in [`audit`]), the respond stage
//! that turns a policy outcome into headers ([`respond`]: header edits, proof
//! stripping, the downstream token minted by [`mint`]), and the decision
//! rendered into Envoy's `CheckResponse` ([`render`]).
//!
//! A [`Decision`] is never an error: a deny is a value with a [`Reason`], and
//! the reason fixes the HTTP status.
//!
//! Never imports: tenants, the pipeline, observability, transport or the app.

use std::sync::Arc;

pub use crate::foundation::client_errors::ClientErrors;
pub use crate::foundation::reason::Reason;

pub mod audit;
pub mod mint;
pub mod render;
pub mod respond;
pub mod wire;

pub use respond::DECISION_ID_HEADER;

/// The outcome of one check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Decision {
    pub allowed: bool,
    pub reason: Reason,
    /// Unique per check; in every response, log line and the upstream's headers.
    pub decision_id: String,
    pub tenant: Option<Arc<str>>,
    /// The rule that decided, when one did.
    pub rule: Option<Arc<str>>,
    /// Digest of the rule set that decided.
    pub digest: Option<Arc<str>>,
    pub auth_method: &'static str,
    pub subject: Option<String>,
    /// Headers the upstream receives, overwriting any the client sent.
    pub set_headers: Vec<(String, String)>,
    /// Headers removed before the upstream sees the request.
    pub remove_headers: Vec<String>,
    /// Query parameters removed before the upstream sees the request (a token
    /// sent in the query).
    pub remove_query: Vec<String>,
    /// A `WWW-Authenticate` value that says more than the reason's own (the
    /// scopes or `acr_values` a rule asks for). Built from policy, never from
    /// the request.
    pub challenge: Option<String>,
    /// Headers for the client on a response portcullis answers itself (a CORS
    /// preflight).
    pub client_headers: Vec<(String, String)>,
    /// What a policy's own result asked of the answer (a Rego result object):
    /// a deny's status and body, the client's headers on an allow, query
    /// parameters to set, its dynamic metadata. Empty for YAML rules.
    pub answer: PolicyAnswer,
    /// Internal detail for logs and `portcullis check`; never sent to a client.
    pub detail: Option<String>,
    /// What the decision log, metrics and traces need beyond the answer.
    pub audit: audit::Audit,
    /// How much the client is told of a refused credential: the tenant's
    /// `client_errors`, else the server's (set by the pipeline). Only the
    /// rendered response reads it; `reason` stays exact.
    #[serde(skip)]
    pub client_errors: Option<ClientErrors>,
}

/// What a policy's result asked of the response beyond allow or deny
/// (OPA-Envoy's result object; see [`crate::policy::rego_result`]). Names and
/// values were checked when the result was read.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PolicyAnswer {
    /// A deny's HTTP status (`http_status`).
    pub status: Option<u16>,
    /// A deny's body (`body`), sent in place of portcullis' JSON body.
    pub body: Option<String>,
    /// Headers for the client on an allowed response (`response_headers_to_add`).
    pub response_headers: Vec<(String, String)>,
    /// Query parameters the upstream receives (`query_parameters_to_set`).
    pub set_query: Vec<(String, String)>,
    /// The policy's dynamic metadata, beside portcullis' own namespace.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A decision as logs, metrics and traces name it: `allow`, `deny`, or
/// `preflight` for a CORS preflight portcullis answers itself, which is
/// neither sent on to the upstream nor refused. Always one of these three
/// (the metrics label stays bounded).
pub fn verdict(allowed: bool, reason: Reason) -> &'static str {
    match (allowed, reason) {
        (true, _) => "allow",
        (false, Reason::CorsPreflight) => "preflight",
        (false, _) => "deny",
    }
}

impl Decision {
    /// [`verdict`] of this decision as enforced.
    pub fn verdict(&self) -> &'static str {
        verdict(self.allowed, self.reason)
    }

    /// A deny with no tenant context yet.
    pub fn deny(decision_id: String, reason: Reason) -> Decision {
        Decision {
            allowed: false,
            reason,
            decision_id,
            tenant: None,
            rule: None,
            digest: None,
            auth_method: "none",
            subject: None,
            set_headers: Vec::new(),
            remove_headers: Vec::new(),
            remove_query: Vec::new(),
            challenge: None,
            client_headers: Vec::new(),
            answer: PolicyAnswer::default(),
            detail: None,
            audit: audit::Audit::default(),
            client_errors: None,
        }
    }

    /// This decision with internal `detail` (for logs, never for a client).
    pub fn with_detail(mut self, detail: impl std::fmt::Display) -> Decision {
        self.detail = Some(detail.to_string());
        self
    }

    /// The HTTP status the client gets: the reason's, or on a policy's deny
    /// the status the policy chose.
    pub fn status(&self) -> u16 {
        match self.answer.status {
            Some(s) if !self.allowed && self.reason == Reason::DeniedByRule => s,
            _ => self.reason.status(),
        }
    }

    /// The `WWW-Authenticate` value of this deny, if it has one, as the
    /// client is told it (see [`ClientErrors`]).
    pub fn challenge(&self) -> Option<String> {
        self.client_errors()
            .challenge(self.reason, self.challenge.clone())
    }

    /// The deny body's `error`, as the client is told it.
    pub fn client_code(&self) -> &'static str {
        self.client_errors().code(self.reason)
    }

    /// The mode this decision is rendered in; [`ClientErrors::default`] when
    /// neither the tenant nor the server chose.
    pub fn client_errors(&self) -> ClientErrors {
        self.client_errors.unwrap_or_default()
    }
}
