//! What a client is told when its credential is refused: the exact reason
//! (`detailed`) or one code for every token failure (`generic`), chosen per
//! server and per tenant (`client_errors:`).
//!
//! Only what the client receives changes: the deny body's `error` and the
//! `WWW-Authenticate` challenge. The [`Reason`] itself, which the decision
//! log, the metrics, the traces and Envoy's dynamic metadata read, is never
//! rewritten.
//!
//! Never imports: any module of the crate but [`super::reason`].

use super::reason::Reason;

/// How much a refused client learns about why (RFC 6750 §3.1).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ClientErrors {
    /// Every token failure (an untrusted issuer, an unknown key, a bad
    /// signature, an expired or revoked token, ...) is `invalid_token`, with no
    /// `error_description`; DPoP proof failures are `invalid_dpop_proof`.
    #[default]
    Generic,
    /// The exact reason code, and a short fixed description in the challenge.
    Detailed,
}

/// The code a generic client sees for a token it presented that was refused.
pub const GENERIC_TOKEN_CODE: &str = "invalid_token";
/// The code a generic client sees for a refused DPoP proof (RFC 9449 §7.1).
pub const GENERIC_PROOF_CODE: &str = "invalid_dpop_proof";

impl ClientErrors {
    /// The deny body's `error` for `reason`.
    pub fn code(self, reason: Reason) -> &'static str {
        match (self, group(reason)) {
            (ClientErrors::Generic, Group::Token) => GENERIC_TOKEN_CODE,
            (ClientErrors::Generic, Group::Proof) => GENERIC_PROOF_CODE,
            _ => reason.code(),
        }
    }

    /// The `WWW-Authenticate` value for `reason`, given the one the decision
    /// built (`built`: a DPoP challenge, or one naming scopes or `acr_values`).
    /// Generic mode drops the `error_description` of a token failure; the
    /// challenges that name what a rule asks for, or a DPoP nonce to retry
    /// with, say what the client needs to succeed and stay as they are.
    pub fn challenge(self, reason: Reason, built: Option<String>) -> Option<String> {
        match (self, group(reason)) {
            (ClientErrors::Generic, Group::Token | Group::Proof) if built.is_none() => Some(
                format!("Bearer realm=\"portcullis\", error=\"{GENERIC_TOKEN_CODE}\""),
            ),
            _ => built.or_else(|| reason.challenge()),
        }
    }
}

/// Which reasons generic mode folds together.
#[derive(PartialEq)]
enum Group {
    /// A presented token was refused: 401 with `error="invalid_token"`.
    Token,
    /// A DPoP proof was refused.
    Proof,
    /// Told as it is: no credential or two (nothing about a token), what a
    /// rule asks for (`insufficient_scope`, step-up), a nonce to retry with,
    /// policy outcomes (403), malformed requests (4xx) and everything where
    /// portcullis cannot decide (503), which say nothing about the token.
    Other,
}

fn group(reason: Reason) -> Group {
    match reason {
        Reason::InvalidCredential
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
        | Reason::TokenBindingMismatch => Group::Token,
        Reason::InvalidDpopProof | Reason::DpopProofReplayed => Group::Proof,
        _ => Group::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_folds_every_token_failure_into_invalid_token_without_a_description() {
        for r in crate::foundation::reason::ALL {
            let generic = ClientErrors::Generic;
            if group(r) == Group::Token {
                assert_eq!(r.status(), 401, "{r:?}");
                assert_eq!(generic.code(r), "invalid_token", "{r:?}");
                assert_eq!(
                    generic.challenge(r, None).as_deref(),
                    Some("Bearer realm=\"portcullis\", error=\"invalid_token\""),
                    "{r:?}"
                );
            } else if group(r) == Group::Proof {
                assert_eq!(generic.code(r), "invalid_dpop_proof", "{r:?}");
                // Without the DPoP challenge the decision builds: bare.
                assert_eq!(
                    generic.challenge(r, None).as_deref(),
                    Some("Bearer realm=\"portcullis\", error=\"invalid_token\""),
                    "{r:?}"
                );
            } else {
                assert_eq!(generic.code(r), r.code(), "{r:?}");
                assert_eq!(generic.challenge(r, None), r.challenge(), "{r:?}");
            }
            // Detailed is what portcullis always said.
            assert_eq!(ClientErrors::Detailed.code(r), r.code());
            assert_eq!(ClientErrors::Detailed.challenge(r, None), r.challenge());
        }
    }

    #[test]
    fn every_401_with_an_invalid_token_challenge_is_folded() {
        // A new token failure with a description must not slip past generic mode.
        for r in crate::foundation::reason::ALL {
            let described = r
                .challenge()
                .is_some_and(|c| c.contains("error=\"invalid_token\""));
            // `use_dpop_nonce` is answered with the DPoP challenge that
            // carries the nonce; the client needs it to retry (RFC 9449 §8).
            let expected = group(r) != Group::Other || r == Reason::UseDpopNonce;
            assert_eq!(described, expected, "{r:?}");
        }
    }

    #[test]
    fn a_challenge_the_decision_built_is_kept() {
        let dpop = "DPoP realm=\"portcullis\", error=\"invalid_token\", algs=\"ES256\"";
        let c = ClientErrors::Generic.challenge(Reason::TokenBindingMismatch, Some(dpop.into()));
        assert_eq!(c.as_deref(), Some(dpop));
    }

    #[test]
    fn the_default_is_generic() {
        assert_eq!(ClientErrors::default(), ClientErrors::Generic);
    }
}
