//! Stage 5: the outcome of a check, as data.
//!
//! A [`Decision`] is never an error: a deny is a value with a [`Reason`], and the
//! reason fixes the HTTP status. The reason code is stable: it is the `error`
//! field of a deny body, the log field and, later, the metrics label.

use std::sync::Arc;

/// Why a request was allowed or denied. The string codes never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// An allow rule matched.
    Allowed,
    /// No rule matched and the tenant's default is allow.
    DefaultAllow,
    /// A CORS preflight the tenant allows, answered by portcullis (204).
    CorsPreflight,
    /// A CORS preflight from an origin or for a method the tenant does not allow.
    CorsRejected,
    /// No rule matched (default deny) for a known caller.
    NoMatchingRule,
    /// A deny rule matched.
    DeniedByRule,
    /// No credential, and no public rule allowed the request.
    MissingCredential,
    /// A credential was sent but no identity source verified it.
    InvalidCredential,
    /// A credential header that is repeated or otherwise malformed.
    MalformedCredential,
    /// The credential's issuer is not one this tenant trusts.
    IssuerNotTrusted,
    /// A rule's condition failed to evaluate: never an allow.
    PolicyError,
    /// A rule reads the body, and the body is truncated, not sent, not JSON, or
    /// has duplicate keys.
    BodyUnavailable,
    /// A rule reads the query, and a parameter name repeats.
    AmbiguousQuery,
    /// A header value for the upstream would carry CR, LF, NUL, a comma or a
    /// non-printable character.
    UnsafeHeaderValue,
    /// No rule set for the request's tenant.
    UnknownTenant,
    /// The path is not canonical (see `path`).
    NonCanonicalPath,
    PathTooLong,
    /// The CheckRequest lacks something every HTTP request has.
    MalformedRequest,
    /// A TCP-level check (no HTTP attributes): portcullis only authorizes HTTP.
    NotHttp,
    /// No policies loaded yet: portcullis can answer but not decide.
    NotReady,
}

impl Reason {
    /// The stable code, as it appears in deny bodies and logs.
    pub fn code(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::DefaultAllow => "default_allow",
            Reason::CorsPreflight => "cors_preflight",
            Reason::CorsRejected => "cors_rejected",
            Reason::NoMatchingRule => "no_matching_rule",
            Reason::DeniedByRule => "denied_by_rule",
            Reason::MissingCredential => "missing_credential",
            Reason::InvalidCredential => "invalid_credential",
            Reason::MalformedCredential => "malformed_credential",
            Reason::IssuerNotTrusted => "issuer_not_trusted",
            Reason::PolicyError => "policy_error",
            Reason::BodyUnavailable => "body_unavailable",
            Reason::AmbiguousQuery => "ambiguous_query",
            Reason::UnsafeHeaderValue => "unsafe_header_value",
            Reason::UnknownTenant => "unknown_tenant",
            Reason::NonCanonicalPath => "non_canonical_path",
            Reason::PathTooLong => "path_too_long",
            Reason::MalformedRequest => "malformed_request",
            Reason::NotHttp => "not_http",
            Reason::NotReady => "not_ready",
        }
    }

    /// The HTTP status of a response with this reason: 401 when the credential is
    /// missing or bad, 403 when a known caller lacks the right, 503 when
    /// portcullis cannot decide.
    pub fn status(self) -> u16 {
        match self {
            Reason::Allowed | Reason::DefaultAllow => 200,
            Reason::CorsPreflight => 204,
            Reason::MissingCredential
            | Reason::InvalidCredential
            | Reason::MalformedCredential
            | Reason::IssuerNotTrusted => 401,
            Reason::NoMatchingRule
            | Reason::DeniedByRule
            | Reason::PolicyError
            | Reason::BodyUnavailable
            | Reason::UnsafeHeaderValue
            | Reason::UnknownTenant
            | Reason::CorsRejected
            | Reason::NotHttp => 403,
            Reason::NonCanonicalPath | Reason::MalformedRequest | Reason::AmbiguousQuery => 400,
            Reason::PathTooLong => 414,
            Reason::NotReady => 503,
        }
    }

    pub fn allows(self) -> bool {
        self.status() == 200
    }

    /// Maps the reason codes of earlier stages' errors.
    pub fn from_code(code: &str) -> Option<Reason> {
        ALL.iter().copied().find(|r| r.code() == code)
    }
}

const ALL: [Reason; 20] = [
    Reason::Allowed,
    Reason::DefaultAllow,
    Reason::CorsPreflight,
    Reason::CorsRejected,
    Reason::NoMatchingRule,
    Reason::DeniedByRule,
    Reason::MissingCredential,
    Reason::InvalidCredential,
    Reason::MalformedCredential,
    Reason::IssuerNotTrusted,
    Reason::PolicyError,
    Reason::BodyUnavailable,
    Reason::AmbiguousQuery,
    Reason::UnsafeHeaderValue,
    Reason::UnknownTenant,
    Reason::NonCanonicalPath,
    Reason::PathTooLong,
    Reason::MalformedRequest,
    Reason::NotHttp,
    Reason::NotReady,
];

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
    /// Headers for the client on a response portcullis answers itself (a CORS
    /// preflight).
    pub client_headers: Vec<(String, String)>,
    /// Internal detail for logs and `portcullis check`; never sent to a client.
    pub detail: Option<String>,
}

impl Decision {
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
            client_headers: Vec::new(),
            detail: None,
        }
    }

    pub fn status(&self) -> u16 {
        self.reason.status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for r in ALL {
            assert!(seen.insert(r.code()), "duplicate code {}", r.code());
            assert_eq!(Reason::from_code(r.code()), Some(r));
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::Value::String(r.code().into())
            );
        }
        assert_eq!(Reason::from_code("nope"), None);
    }

    #[test]
    fn statuses_follow_the_rules() {
        assert_eq!(Reason::MissingCredential.status(), 401);
        assert_eq!(Reason::IssuerNotTrusted.status(), 401);
        assert_eq!(Reason::NoMatchingRule.status(), 403);
        assert_eq!(Reason::UnknownTenant.status(), 403);
        assert_eq!(Reason::NonCanonicalPath.status(), 400);
        assert_eq!(Reason::NotReady.status(), 503);
        assert!(Reason::Allowed.allows() && !Reason::PolicyError.allows());
    }
}
