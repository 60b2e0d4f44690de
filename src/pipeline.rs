//! The request path as one function: input → tenant → identity → policy → decision.
//!
//! Each stage is a plain function over plain data, so the whole path runs without
//! a socket (the gRPC handler, `portcullis check` and the golden tests all call
//! [`Pipeline::check`]).

use std::sync::Arc;
use std::time::Duration;

use crate::audit::WouldBe;
use crate::decision::{Decision, Reason};
use crate::exchange::Minter;
use crate::identity::{self, Identity, IdentityError, Pending};
use crate::input::Input;
use crate::policy::{CompiledTenant, Effect, Mode, Outcome, RuleTrace, Unmet};
use crate::proto::auth::CheckRequest;
use crate::store::PolicyStore;
use crate::tenant::TenantResolver;

/// The longest a check waits for an issuer's keys when Envoy sent no deadline.
pub const DEFAULT_KEY_WAIT: Duration = Duration::from_secs(2);

/// Header carrying the decision id to the upstream (allow) and the client (deny).
pub const DECISION_ID_HEADER: &str = "x-portcullis-decision-id";

/// Removes a client's `x_subject` when portcullis owns `x-subject`: many servers
/// (CGI, WSGI, Rack, PHP, nginx with `underscores_in_headers`) read both
/// spellings as the same variable, so the client's value must not travel beside
/// the owned one. (Envoy's `headers_with_underscores_action: REJECT_REQUEST`
/// stops these at the edge; this holds without it.)
fn strip_underscore_spellings(
    decision: &mut Decision,
    headers: &std::collections::BTreeMap<String, String>,
) {
    // Headers with '_' are rare; nothing is allocated when there are none.
    for name in headers.keys().filter(|k| k.contains('_')) {
        let dashed = name.replace('_', "-");
        let owned = decision.set_headers.iter().any(|(k, _)| *k == dashed)
            || decision.remove_headers.contains(&dashed);
        if owned && !decision.remove_headers.contains(name) {
            decision.remove_headers.push(name.clone());
        }
    }
}

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub store: Arc<PolicyStore>,
    pub tenancy: TenantResolver,
    /// Mints downstream tokens, when the server has signing keys.
    pub minter: Option<Arc<Minter>>,
}

impl Pipeline {
    pub fn new(store: Arc<PolicyStore>, tenancy: TenantResolver) -> Pipeline {
        Pipeline {
            store,
            tenancy,
            minter: None,
        }
    }

    pub fn with_minter(mut self, minter: Option<Arc<Minter>>) -> Pipeline {
        self.minter = minter;
        self
    }

    /// Decides one request without waiting for anything: when an issuer's keys
    /// are not there yet, the answer is 503 `keys_unavailable`.
    pub fn check(&self, request: &CheckRequest) -> Decision {
        self.run(request, false).decision
    }

    /// Decides one request; when an issuer's keys must be fetched first, waits
    /// for that fetch (shared with every other check that needs it) at most
    /// `wait`, then decides again.
    pub async fn check_async(&self, request: &CheckRequest, wait: Duration) -> Decision {
        self.run_async(request, wait, false).await.decision
    }

    /// [`Pipeline::check_async`], and what every candidate rule did.
    pub async fn explain_async(
        &self,
        request: &CheckRequest,
        wait: Duration,
    ) -> (Decision, Vec<RuleTrace>) {
        let run = self.run_async(request, wait, true).await;
        (run.decision, run.trace)
    }

    async fn run_async(&self, request: &CheckRequest, wait: Duration, explain: bool) -> Run {
        let first = self.run(request, explain);
        let Some(pending) = first.pending else {
            return first;
        };
        pending.resolve(first.time, wait).await;
        self.run(request, explain)
    }

    /// Decides one request and says what every candidate rule did.
    pub fn explain(&self, request: &CheckRequest) -> (Decision, Vec<RuleTrace>) {
        let run = self.run(request, true);
        (run.decision, run.trace)
    }

    fn run(&self, request: &CheckRequest, explain: bool) -> Run {
        let id = uuid::Uuid::new_v4().to_string();
        if !self.store.is_ready() {
            return Run::done(Decision::deny(id, Reason::NotReady));
        }
        let input = match self.store.limits().input(request) {
            Ok(input) => input,
            Err(e) => {
                let mut d = Decision::deny(id, e.reason());
                d.detail = Some(e.to_string());
                return Run::done(d);
            }
        };
        let Some(tenant) = self.tenancy.resolve(&input.resource, &self.store) else {
            return Run::done(Decision::deny(id, Reason::UnknownTenant));
        };
        let mut decision = Decision::deny(id, Reason::NoMatchingRule);
        decision.tenant = Some(tenant.id.clone());
        decision.digest = Some(tenant.digest.clone());
        decision.audit.mode = tenant.mode;
        decision.audit.headers = tenant
            .log_headers
            .iter()
            .filter_map(|h| Some((h.clone(), loggable(input.resource.headers.get(h)?))))
            .collect();

        let authenticated = {
            let span = tracing::info_span!(
                "identity",
                auth_method = tracing::field::Empty,
                reason = tracing::field::Empty,
            );
            let _entered = span.enter();
            let result = identity::authenticate(&tenant.identity, &input);
            match &result {
                Ok(identity) => span.record("auth_method", identity.method.as_str()),
                Err(e) => span.record("reason", e.reason().code()),
            };
            result
        };
        let identity = match authenticated {
            Ok(identity) => identity,
            Err(e) => {
                decision.reason = e.reason();
                decision.detail = Some(e.to_string());
                let pending = match e {
                    IdentityError::Pending(p) => Some(p),
                    IdentityError::Binding {
                        challenge, nonce, ..
                    } => {
                        decision.challenge = challenge;
                        if let Some(n) = nonce {
                            decision.client_headers.push(("dpop-nonce".into(), n));
                        }
                        None
                    }
                    _ => None,
                };
                if pending.is_none() && tenant.mode == Mode::DryRun {
                    dry_run_allow(&mut decision, &tenant, &Identity::anonymous(), &[], &input);
                }
                return Run {
                    decision,
                    trace: Vec::new(),
                    pending,
                    time: input.context.time,
                };
            }
        };
        decision.auth_method = identity.method.as_str();
        decision.subject = identity.subject.clone();
        decision.audit.issuer = identity.issuer.clone();
        decision.audit.client_id = client_id(&identity);
        decision.audit.sender_constraint = identity.binding.kind;
        let now = crate::input::unix_seconds(input.context.time);
        // Checked on every request: a cached verification is no exemption.
        if let Some(list) = self.store.revocations(&tenant.id)
            && let Some(kind) = list.revoked(&identity, now)
        {
            decision.reason = Reason::TokenRevoked;
            decision.detail = Some(format!("revoked by {kind}"));
            if tenant.mode == Mode::DryRun {
                dry_run_allow(&mut decision, &tenant, &Identity::anonymous(), &[], &input);
            }
            return Run {
                decision,
                trace: Vec::new(),
                pending: None,
                time: input.context.time,
            };
        }

        let eval = {
            let span = tracing::info_span!(
                "policy",
                rules = tenant.rule_count(),
                dry_run_rules = tracing::field::Empty,
            );
            let _entered = span.enter();
            let data = self.store.data(&tenant.id);
            let eval = tenant.evaluate_with_data(
                &input,
                &identity,
                explain,
                data.as_ref().map(|d| &d.value),
            );
            if !eval.dry_run.is_empty() {
                span.record("dry_run_rules", dry_run_summary(&eval.dry_run).as_str());
            }
            eval
        };
        decision.audit.dry_run_rules = eval.dry_run.clone();
        let (reason, rule) = match eval.outcome {
            Outcome::CorsPreflight(headers) => {
                decision.client_headers = headers;
                (Reason::CorsPreflight, None)
            }
            Outcome::CorsRejected => (Reason::CorsRejected, None),
            Outcome::Allow(rule) => (Reason::Allowed, Some(rule)),
            Outcome::Deny(rule) => (Reason::DeniedByRule, Some(rule)),
            Outcome::PolicyError(rule, message) => {
                decision.detail = Some(message);
                (Reason::PolicyError, Some(rule))
            }
            Outcome::BodyUnavailable(rule) => (Reason::BodyUnavailable, Some(rule)),
            Outcome::AmbiguousQuery(rule) => (Reason::AmbiguousQuery, Some(rule)),
            // Only when the default would deny: a tenant that allows by default
            // lets such a request through like any other unmatched one.
            Outcome::Unmet(rule, missing) if tenant.default == Effect::Deny => {
                let (reason, challenge) = unmet_challenge(&missing);
                decision.challenge = Some(challenge);
                (reason, Some(rule))
            }
            Outcome::Unmet(..) => (Reason::DefaultAllow, None),
            Outcome::NoMatch => match tenant.default {
                Effect::Allow => (Reason::DefaultAllow, None),
                Effect::Deny if identity.is_anonymous() => (Reason::MissingCredential, None),
                Effect::Deny => (Reason::NoMatchingRule, None),
            },
        };
        decision.reason = reason;
        decision.rule = rule;
        if reason.allows() {
            match tenant.response_headers(&identity, &eval.params) {
                Ok(edits) => {
                    decision.allowed = true;
                    decision.set_headers = edits.set;
                    decision.remove_headers = edits.remove;
                    decision.remove_query = identity.consumed_query.clone().into_iter().collect();
                    // The proof has done its work; the upstream never needs it.
                    if identity.binding.kind == "dpop"
                        && !decision.remove_headers.iter().any(|h| h == "dpop")
                    {
                        decision.remove_headers.push("dpop".into());
                    }
                    strip_underscore_spellings(&mut decision, &input.resource.headers);
                    decision
                        .set_headers
                        .push((DECISION_ID_HEADER.to_string(), decision.decision_id.clone()));
                    if let Some(spec) = tenant
                        .downstream(decision.rule.as_ref())
                        .filter(|_| !identity.is_anonymous())
                    {
                        let minted = self.minter.as_ref().map_or(
                            Err(crate::exchange::MintError::NotConfigured),
                            |m| {
                                m.mint(
                                    spec,
                                    &tenant.id,
                                    &identity,
                                    &input.resource.context_extensions,
                                    now,
                                )
                            },
                        );
                        match minted {
                            // Overwrites the caller's Authorization (a removal
                            // would also remove the new token).
                            Ok(token) => {
                                decision.set_headers.retain(|(k, _)| k != "authorization");
                                decision.remove_headers.retain(|h| h != "authorization");
                                // The caller's own credential never travels
                                // beside the narrowed one (a custom header, an
                                // API key).
                                for h in tenant.identity.credential_headers() {
                                    if h != "authorization" && !decision.remove_headers.contains(h)
                                    {
                                        decision.remove_headers.push(h.clone());
                                    }
                                }
                                decision
                                    .set_headers
                                    .push(("authorization".into(), format!("Bearer {token}")));
                                if !decision.remove_headers.iter().any(|h| h == "dpop") {
                                    decision.remove_headers.push("dpop".into());
                                }
                            }
                            Err(e) => {
                                decision.allowed = false;
                                decision.reason = Reason::DownstreamTokenUnavailable;
                                decision.detail = Some(e.to_string());
                                decision.set_headers.clear();
                                decision.remove_headers.clear();
                                decision.remove_query.clear();
                            }
                        }
                    }
                }
                Err(message) => {
                    decision.reason = Reason::UnsafeHeaderValue;
                    decision.detail = Some(message);
                }
            }
        }
        if tenant.mode == Mode::DryRun {
            dry_run_allow(&mut decision, &tenant, &identity, &eval.params, &input);
        }
        Run {
            decision,
            trace: eval.trace,
            pending: None,
            time: input.context.time,
        }
    }
}

/// The reason and challenge for a credential that lacks what a rule asks:
/// RFC 6750 §3 `scope`, or RFC 9470 §3 `acr_values` and `max_age`.
fn unmet_challenge(missing: &Unmet) -> (Reason, String) {
    match missing {
        Unmet::Scope(scopes) => (
            Reason::InsufficientScope,
            format!(
                "Bearer realm=\"portcullis\", error=\"insufficient_scope\", scope=\"{}\"",
                scopes.join(" ")
            ),
        ),
        Unmet::StepUp {
            acr_values,
            max_age,
        } => {
            let mut c = "Bearer realm=\"portcullis\", error=\"insufficient_user_authentication\", error_description=\"stronger or more recent authentication required\"".to_string();
            if !acr_values.is_empty() {
                c.push_str(&format!(", acr_values=\"{}\"", acr_values.join(" ")));
            }
            if let Some(age) = max_age {
                c.push_str(&format!(", max_age={age}"));
            }
            (Reason::InsufficientUserAuthentication, c)
        }
    }
}

/// A dry-run tenant's decision: recorded as what it would have been, then
/// allowed. A deny becomes an allow with the tenant's owned headers rendered
/// for the caller (or, when the credential failed, for an anonymous caller, so
/// every claim header is removed rather than left to the client). A CORS
/// preflight answer stays as it is.
fn dry_run_allow(
    decision: &mut Decision,
    tenant: &CompiledTenant,
    identity: &Identity,
    params: &[(String, String)],
    input: &Input,
) {
    decision.audit.would_be = Some(WouldBe {
        allowed: decision.allowed,
        reason: decision.reason,
        rule: decision.rule.clone(),
    });
    if decision.allowed || decision.reason == Reason::CorsPreflight {
        return;
    }
    let edits = tenant
        .response_headers(identity, params)
        .or_else(|_| tenant.response_headers(&Identity::anonymous(), &[]))
        .unwrap_or_default();
    decision.allowed = true;
    decision.reason = Reason::DryRunAllowed;
    decision.client_headers.clear();
    decision.set_headers = edits.set;
    decision.remove_headers = edits.remove;
    decision.remove_query = identity.consumed_query.clone().into_iter().collect();
    strip_underscore_spellings(decision, &input.resource.headers);
    decision
        .set_headers
        .push((DECISION_ID_HEADER.to_string(), decision.decision_id.clone()));
}

/// Longest header value the decision log records.
const MAX_LOGGED_HEADER: usize = 256;

/// A header value as the decision log records it: printable, bounded.
fn loggable(value: &str) -> String {
    value
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_LOGGED_HEADER)
        .collect()
}

/// The OAuth client the token was issued to: `client_id` (RFC 9068 §2.2), else
/// `azp` (OIDC Core §2).
fn client_id(identity: &Identity) -> Option<String> {
    ["client_id", "azp"]
        .iter()
        .find_map(|k| identity.claims.get(*k)?.as_str().map(str::to_string))
}

/// `rule=would` pairs for a span attribute.
fn dry_run_summary(hits: &[crate::policy::DryRunHit]) -> String {
    hits.iter()
        .map(|h| format!("{}={}", h.rule, h.would))
        .collect::<Vec<_>>()
        .join(",")
}

/// One pass through the stages.
struct Run {
    decision: Decision,
    trace: Vec<RuleTrace>,
    /// What the check needed and did not have: fetch it and run again.
    pending: Option<Pending>,
    /// The request time the check used.
    time: std::time::SystemTime,
}

impl Run {
    fn done(decision: Decision) -> Run {
        Run {
            decision,
            trace: Vec::new(),
            pending: None,
            time: std::time::UNIX_EPOCH,
        }
    }
}
