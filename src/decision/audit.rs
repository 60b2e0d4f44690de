//! What a decision carries for the decision log, metrics and traces beyond
//! the answer, and the decision as they report it ([`Outcome`]: in a dry-run
//! tenant, what it would have been).
//!
//! Never imports: tenants, the pipeline, observability, transport or the app.

use std::sync::Arc;

use super::{Decision, Reason};
use crate::policy::{DryRunHit, Mode};

/// What a decision carries for the log, metrics and traces, beyond the answer.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Audit {
    pub issuer: Option<String>,
    /// How the token was bound: `none`, `dpop` or `mtls` (empty when no
    /// identity was established).
    pub sender_constraint: &'static str,
    /// `client_id` (RFC 9068) or `azp` (OIDC) of the token.
    pub client_id: Option<String>,
    /// The tenant's mode.
    pub mode: Mode,
    /// Request headers the tenant asked to record (`audit.log_headers`).
    pub headers: Vec<(String, String)>,
    /// In a dry-run tenant: what enforcement would have answered.
    pub would_be: Option<WouldBe>,
    /// Dry-run rules that held (or failed); they took no part in the decision.
    pub dry_run_rules: Vec<DryRunHit>,
    /// The caller's claims as rules saw them (after claim mappings), for the
    /// replayable log only (the observe floor's `replay`, its one reader; it
    /// is never in the decision log).
    #[serde(skip)]
    pub claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
}

/// The decision a dry-run tenant would have enforced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WouldBe {
    pub allowed: bool,
    pub reason: Reason,
    pub rule: Option<Arc<str>>,
}

/// The decision as logged and counted: in a dry-run tenant, what it would have
/// been, not the allow that was sent.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    pub decision: &'static str,
    pub reason: Reason,
    pub rule: Option<&'a str>,
}

impl<'a> Outcome<'a> {
    pub fn of(d: &'a Decision) -> Outcome<'a> {
        match &d.audit.would_be {
            Some(w) => Outcome {
                decision: super::verdict(w.allowed, w.reason),
                reason: w.reason,
                rule: w.rule.as_deref(),
            },
            None => Outcome {
                decision: d.verdict(),
                reason: d.reason,
                rule: d.rule.as_deref(),
            },
        }
    }
}
