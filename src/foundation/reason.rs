//! Why a request was allowed or denied, as a stable code.
//!
//! Every floor names its denials with a [`Reason`]; the reason fixes the HTTP
//! status and the `WWW-Authenticate` challenge. The string codes never change
//! meaning: they are the `error` field of a deny body, the log field and the
//! metrics label.
//!
//! Never imports: any other module of the crate.

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
    /// A token that is not a well-formed JWT, has a header portcullis refuses
    /// (`crit`, a wrong `typ`), claims of the wrong type, or a required claim missing.
    InvalidToken,
    /// A token over the size limit.
    TokenTooLarge,
    /// A token whose claims (JWT payload or introspection answer) have an
    /// array or object over `limits.max_claim_items`: they cannot be judged,
    /// so the token is refused (401; retrying the same token cannot help).
    ClaimsTooLarge,
    /// The token's `alg` is not in its issuer's allow-list.
    AlgorithmNotAllowed,
    /// No key of the issuer matches the token's `kid` (or fits its `alg`).
    UnknownKey,
    InvalidSignature,
    TokenExpired,
    /// `nbf` or `iat` is in the future.
    TokenNotYetValid,
    /// `exp − iat` is longer than the issuer's `max_lifetime`.
    TokenTooLongLived,
    /// None of the token's audiences is one the issuer lists.
    InvalidAudience,
    /// The token, its subject or its client is on the tenant's revocation list.
    TokenRevoked,
    /// The tenant's revocation list cannot be loaded (a file that never
    /// loaded, or two files naming the tenant) and no last good list serves:
    /// a caller it could revoke cannot be judged.
    RevocationUnavailable,
    /// The tenant needs the state replicas share (DPoP replay, live
    /// revocation) and the shared store cannot answer in time, or its circuit
    /// is open: portcullis cannot decide, and never falls back to what one
    /// replica alone remembers.
    SharedStateUnavailable,
    /// A DPoP proof that fails RFC 9449 §4.3 (or is missing for a DPoP token).
    InvalidDpopProof,
    /// A DPoP proof whose `jti` was already used.
    DpopProofReplayed,
    /// The tenant requires a server nonce in DPoP proofs (RFC 9449 §8).
    UseDpopNonce,
    /// The DPoP replay cache is full: proofs cannot be checked for replay.
    DpopReplayCacheFull,
    /// The token's binding (`cnf`) does not match the proof key or the client
    /// certificate, a bound token came as Bearer, or the issuer requires a
    /// binding the token lacks.
    TokenBindingMismatch,
    /// Introspection says the opaque token is not active (RFC 7662 §2.2).
    TokenInactive,
    /// A narrowed token for the upstream could not be minted (no signing key,
    /// no audience for the route): the caller's token must not go instead.
    DownstreamTokenUnavailable,
    /// The introspection endpoint could not answer: portcullis cannot decide.
    IntrospectionUnavailable,
    /// A valid token without the scopes an applicable rule names (RFC 6750 §3.1).
    InsufficientScope,
    /// A valid token whose `acr` or `auth_time` an applicable rule does not
    /// accept: the client must authenticate again, more strongly (RFC 9470).
    InsufficientUserAuthentication,
    /// The issuer's keys could not be fetched (or are staler than allowed):
    /// portcullis can answer but not decide.
    KeysUnavailable,
    /// A rule's condition failed to evaluate, or the check spent its runtime
    /// budget or outlived its caller's deadline (`policy::budget`): never an
    /// allow.
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
    /// More request headers, or more header bytes, than `limits.max_headers`
    /// or `limits.max_header_bytes` allow: denied rather than truncated.
    HeadersTooLarge,
    /// More checks in flight than `limits.max_concurrent_checks`, or more of
    /// a heavy tenant's checks than its share (`policy::heavy`): answered at
    /// once, without deciding.
    Overloaded,
    /// The tenant is in dry-run mode: its decision (see the decision log) was
    /// not enforced, and the request was allowed.
    DryRunAllowed,
    /// An AuthZEN evaluation request that is not JSON, has a member of the
    /// wrong type, lacks a member the API requires, or cannot be mapped onto
    /// a request (see `request::authzen`).
    MalformedEvaluation,
    /// An AuthZEN request body over `limits.max_evaluation_request_bytes`.
    EvaluationRequestTooLarge,
    /// An AuthZEN batch with more than `limits.max_evaluations` evaluations.
    TooManyEvaluations,
    /// An authenticated AuthZEN asker that `authzen.askers` does not allow to
    /// ask for this tenant (or a tenant the server does not serve).
    AskerNotAllowed,
    /// A request to the HTTP listener (Envoy's `http_service`, a proxy's
    /// forward auth) from an address outside `http.trusted_proxies`: the
    /// original method, path and tenant it names are not believed.
    UntrustedForwardedRequest,
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
            Reason::InvalidToken => "invalid_token",
            Reason::TokenTooLarge => "token_too_large",
            Reason::ClaimsTooLarge => "claims_too_large",
            Reason::AlgorithmNotAllowed => "algorithm_not_allowed",
            Reason::UnknownKey => "unknown_key",
            Reason::InvalidSignature => "invalid_signature",
            Reason::TokenExpired => "token_expired",
            Reason::TokenNotYetValid => "token_not_yet_valid",
            Reason::TokenTooLongLived => "token_too_long_lived",
            Reason::InvalidAudience => "invalid_audience",
            Reason::TokenRevoked => "token_revoked",
            Reason::RevocationUnavailable => "revocation_unavailable",
            Reason::SharedStateUnavailable => "shared_state_unavailable",
            Reason::TokenInactive => "token_inactive",
            Reason::InvalidDpopProof => "invalid_dpop_proof",
            Reason::DpopProofReplayed => "dpop_proof_replayed",
            Reason::UseDpopNonce => "use_dpop_nonce",
            Reason::DpopReplayCacheFull => "dpop_replay_cache_full",
            Reason::TokenBindingMismatch => "token_binding_mismatch",
            Reason::IntrospectionUnavailable => "introspection_unavailable",
            Reason::DownstreamTokenUnavailable => "downstream_token_unavailable",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::InsufficientUserAuthentication => "insufficient_user_authentication",
            Reason::KeysUnavailable => "keys_unavailable",
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
            Reason::HeadersTooLarge => "headers_too_large",
            Reason::Overloaded => "overloaded",
            Reason::DryRunAllowed => "dry_run_allowed",
            Reason::MalformedEvaluation => "malformed_evaluation",
            Reason::EvaluationRequestTooLarge => "evaluation_request_too_large",
            Reason::TooManyEvaluations => "too_many_evaluations",
            Reason::AskerNotAllowed => "asker_not_allowed",
            Reason::UntrustedForwardedRequest => "untrusted_forwarded_request",
        }
    }

    /// The HTTP status of a response with this reason: 401 when the credential is
    /// missing or bad, 403 when a known caller lacks the right, 503 when
    /// portcullis cannot decide.
    pub fn status(self) -> u16 {
        match self {
            Reason::Allowed | Reason::DefaultAllow | Reason::DryRunAllowed => 200,
            Reason::CorsPreflight => 204,
            Reason::MissingCredential
            | Reason::InvalidCredential
            | Reason::IssuerNotTrusted
            | Reason::InvalidToken
            | Reason::TokenTooLarge
            | Reason::ClaimsTooLarge
            | Reason::AlgorithmNotAllowed
            | Reason::UnknownKey
            | Reason::InvalidSignature
            | Reason::TokenExpired
            | Reason::TokenNotYetValid
            | Reason::TokenTooLongLived
            | Reason::InvalidAudience
            | Reason::TokenRevoked
            | Reason::TokenInactive
            | Reason::InvalidDpopProof
            | Reason::DpopProofReplayed
            | Reason::UseDpopNonce
            | Reason::TokenBindingMismatch
            | Reason::InsufficientUserAuthentication => 401,
            Reason::NoMatchingRule
            | Reason::InsufficientScope
            | Reason::DeniedByRule
            | Reason::PolicyError
            | Reason::BodyUnavailable
            | Reason::UnsafeHeaderValue
            | Reason::UnknownTenant
            | Reason::CorsRejected
            | Reason::AskerNotAllowed
            | Reason::UntrustedForwardedRequest
            | Reason::NotHttp => 403,
            // RFC 6750 §3.1: two credentials at once are an `invalid_request`.
            Reason::NonCanonicalPath
            | Reason::MalformedRequest
            | Reason::AmbiguousQuery
            | Reason::MalformedEvaluation
            | Reason::EvaluationRequestTooLarge
            | Reason::TooManyEvaluations
            | Reason::MalformedCredential => 400,
            Reason::PathTooLong => 414,
            Reason::HeadersTooLarge => 431,
            Reason::NotReady
            | Reason::Overloaded
            | Reason::KeysUnavailable
            | Reason::IntrospectionUnavailable
            | Reason::RevocationUnavailable
            | Reason::SharedStateUnavailable
            | Reason::DownstreamTokenUnavailable
            | Reason::DpopReplayCacheFull => 503,
        }
    }

    /// The `WWW-Authenticate` challenge for a credential problem (RFC 6750 §3):
    /// bare when there was no credential, `invalid_request` for two at once,
    /// `invalid_token` with a fixed, short description otherwise. The
    /// description never carries anything from the request.
    pub fn challenge(self) -> Option<String> {
        const REALM: &str = "Bearer realm=\"portcullis\"";
        let description = match self {
            Reason::MissingCredential => return Some(REALM.to_string()),
            Reason::MalformedCredential => {
                return Some(format!(
                    "{REALM}, error=\"invalid_request\", error_description=\"more than one credential\""
                ));
            }
            Reason::InvalidCredential => "credential not accepted",
            Reason::IssuerNotTrusted => "issuer not trusted",
            Reason::InvalidToken => "malformed token",
            Reason::TokenTooLarge => "token too large",
            Reason::ClaimsTooLarge => "token claims too large",
            Reason::AlgorithmNotAllowed => "algorithm not allowed",
            Reason::UnknownKey => "unknown signing key",
            Reason::InvalidSignature => "bad signature",
            Reason::TokenExpired => "token expired",
            Reason::TokenNotYetValid => "token not valid yet",
            Reason::TokenTooLongLived => "token lifetime too long",
            Reason::InvalidAudience => "wrong audience",
            Reason::TokenRevoked => "token revoked",
            Reason::TokenInactive => "token not active",
            Reason::TokenBindingMismatch => "token binding mismatch",
            // Proof problems are answered with a DPoP challenge; see `identity`.
            Reason::InvalidDpopProof | Reason::DpopProofReplayed | Reason::UseDpopNonce => {
                "invalid DPoP proof"
            }
            // Their challenges name what is missing; see `Decision::challenge`.
            Reason::InsufficientScope => {
                return Some(format!("{REALM}, error=\"insufficient_scope\""));
            }
            Reason::InsufficientUserAuthentication => {
                return Some(format!(
                    "{REALM}, error=\"insufficient_user_authentication\""
                ));
            }
            _ => return None,
        };
        Some(format!(
            "{REALM}, error=\"invalid_token\", error_description=\"{description}\""
        ))
    }

    pub fn allows(self) -> bool {
        self.status() == 200
    }

    /// Maps the reason codes of earlier stages' errors.
    pub fn from_code(code: &str) -> Option<Reason> {
        ALL.iter().copied().find(|r| r.code() == code)
    }
}

/// Every reason, for tests that must cover them all.
pub(crate) const ALL: [Reason; 52] = [
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
    Reason::InvalidToken,
    Reason::TokenTooLarge,
    Reason::ClaimsTooLarge,
    Reason::AlgorithmNotAllowed,
    Reason::UnknownKey,
    Reason::InvalidSignature,
    Reason::TokenExpired,
    Reason::TokenNotYetValid,
    Reason::TokenTooLongLived,
    Reason::InvalidAudience,
    Reason::TokenRevoked,
    Reason::RevocationUnavailable,
    Reason::SharedStateUnavailable,
    Reason::TokenInactive,
    Reason::InvalidDpopProof,
    Reason::DpopProofReplayed,
    Reason::UseDpopNonce,
    Reason::DpopReplayCacheFull,
    Reason::TokenBindingMismatch,
    Reason::IntrospectionUnavailable,
    Reason::DownstreamTokenUnavailable,
    Reason::InsufficientScope,
    Reason::InsufficientUserAuthentication,
    Reason::KeysUnavailable,
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
    Reason::HeadersTooLarge,
    Reason::Overloaded,
    Reason::DryRunAllowed,
    Reason::MalformedEvaluation,
    Reason::EvaluationRequestTooLarge,
    Reason::TooManyEvaluations,
    Reason::AskerNotAllowed,
    Reason::UntrustedForwardedRequest,
];

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
        assert_eq!(Reason::MalformedCredential.status(), 400);
        assert_eq!(Reason::KeysUnavailable.status(), 503);
        assert_eq!(Reason::Overloaded.status(), 503);
        assert_eq!(Reason::RevocationUnavailable.status(), 503);
        assert_eq!(Reason::RevocationUnavailable.challenge(), None);
        assert_eq!(Reason::Overloaded.challenge(), None);
        // Every 401 has a challenge, and only the missing credential's is bare.
        for r in ALL {
            let challenge = r.challenge();
            if r.status() == 401 {
                let c = challenge.unwrap_or_else(|| panic!("{r:?} has no challenge"));
                assert_eq!(c.contains("error="), r != Reason::MissingCredential, "{c}");
            }
        }
    }
}
