//! The respond stage: what a check's stages found, written into its
//! [`Decision`]. A tenant's context when one is chosen ([`begin`]), who the
//! caller is ([`identified`]), why identity failed ([`refused`]), and the
//! policy's outcome ([`outcome`]) with, on an allow, the headers the upstream
//! receives: the tenant's header edits, the DPoP proof stripped, the
//! downstream token minted in place of the caller's, the decision id, and last
//! a client's underscore spellings of every owned header removed. A dry-run
//! tenant's deny becomes an allow here too ([`dry_run`]).
//!
//! Each function changes only the decision it is given; none reads the
//! protobuf, the store or a clock.
//!
//! Never imports: tenants, the pipeline, observability, transport or the app.

use std::collections::BTreeMap;

use super::audit::WouldBe;
use super::mint::{MintError, Minter};
use super::{Decision, Reason};
use crate::identity::{Identity, IdentityError, Pending};
use crate::policy::rego_result::Answer;
use crate::policy::{CompiledTenant, Effect, Evaluation, Mode, Outcome, RuleTrace, Unmet};
use crate::request::input::Input;

/// Header carrying the decision id to the upstream (allow) and the client (deny).
pub const DECISION_ID_HEADER: &str = "x-portcullis-decision-id";

/// Longest header value the decision log records.
const MAX_LOGGED_HEADER: usize = 256;

/// The decision once a tenant is chosen: a deny with no matching rule, with
/// the tenant's id, digest and mode, and the request headers it logs.
pub fn begin(decision_id: String, tenant: &CompiledTenant, input: &Input) -> Decision {
    let mut decision = Decision::deny(decision_id, Reason::NoMatchingRule);
    decision.tenant = Some(tenant.id.clone());
    decision.digest = Some(tenant.digest.clone());
    decision.audit.mode = tenant.mode;
    decision.client_errors = tenant.client_errors;
    decision.audit.headers = tenant
        .log_headers
        .iter()
        .filter_map(|h| Some((h.clone(), loggable(input.resource.headers.get(h)?))))
        .collect();
    decision
}

/// Records who the caller is (the subject and issuer are moved in by
/// [`hand_over`] once the check is done with the identity).
pub fn identified(decision: &mut Decision, identity: &Identity) {
    decision.auth_method = identity.method.as_str();
    decision.audit.client_id = client_id(identity);
    decision.audit.sender_constraint = identity.binding.kind;
    decision.audit.claims = Some(std::sync::Arc::clone(&identity.claims));
}

/// Moves the caller's subject and issuer into the decision: the identity's
/// last use, after every stage that reads it.
pub fn hand_over(decision: &mut Decision, identity: Identity) {
    decision.subject = identity.subject;
    decision.audit.issuer = identity.issuer;
}

/// Records why the credential was not accepted: its reason, a binding's
/// challenge and DPoP nonce. Returns what the check waits for, when the
/// credential could not be judged yet (an issuer's keys).
pub fn refused(
    decision: &mut Decision,
    tenant: &CompiledTenant,
    input: &Input,
    error: IdentityError,
) -> Option<Pending> {
    decision.reason = error.reason();
    decision.detail = Some(error.to_string());
    let pending = match error {
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
        dry_run(decision, tenant, &Identity::anonymous(), &[], input);
    }
    pending
}

/// Records a revoked credential (`kind` names what matched).
pub fn revoked(decision: &mut Decision, tenant: &CompiledTenant, input: &Input, kind: &str) {
    decision.reason = Reason::TokenRevoked;
    decision.detail = Some(format!("revoked by {kind}"));
    if tenant.mode == Mode::DryRun {
        dry_run(decision, tenant, &Identity::anonymous(), &[], input);
    }
}

/// Records that the tenant's revocation list cannot be loaded, so a caller
/// it could revoke is not judged (503, also for a dry-run tenant: portcullis
/// cannot decide, as when keys are unavailable).
pub fn revocation_unavailable(decision: &mut Decision, why: &str) {
    decision.reason = Reason::RevocationUnavailable;
    decision.detail = Some(format!("revocation list unavailable: {why}"));
}

/// Records that the shared store (DPoP replay, live revocation) cannot
/// answer: 503, never what this replica alone remembers instead.
pub fn shared_state_unavailable(
    decision: &mut Decision,
    why: &crate::identity::shared_state::Unavailable,
) {
    decision.reason = Reason::SharedStateUnavailable;
    decision.detail = Some(why.to_string());
}

/// The policy's outcome as the decision: reason and rule, and on an allow the
/// upstream's headers (`allow`). `now` is the request time in Unix seconds.
/// Returns what every candidate rule did (empty unless asked to explain).
pub fn outcome(
    decision: &mut Decision,
    tenant: &CompiledTenant,
    identity: &Identity,
    input: &Input,
    eval: Evaluation,
    minter: Option<&Minter>,
    now: u64,
) -> Vec<RuleTrace> {
    decision.audit.dry_run_rules = eval.dry_run;
    let mut answer: Option<Box<Answer>> = None;
    let (reason, rule) = match eval.outcome {
        Outcome::Answered(rule, a) => {
            decision.answer.metadata = a.dynamic_metadata.clone();
            if a.allowed {
                answer = Some(a);
                (Reason::Allowed, Some(rule))
            } else {
                decision.answer.status = a.http_status;
                decision.answer.body = a.body;
                decision.client_headers = a.headers;
                (Reason::DeniedByRule, Some(rule))
            }
        }
        Outcome::UnsafeAnswer(rule, message) => {
            decision.detail = Some(message);
            (Reason::UnsafeHeaderValue, Some(rule))
        }
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
        let edits = Edits {
            params: &eval.params,
            answer: answer.as_deref(),
        };
        allow(decision, tenant, identity, input, edits, minter, now);
    }
    if tenant.mode == Mode::DryRun {
        dry_run(decision, tenant, identity, &eval.params, input);
    }
    eval.trace
}

/// An allow's headers for the upstream: the tenant's edits, the DPoP proof
/// stripped, the downstream token when the rule asks for one, then [`seal`].
/// A header value that cannot be sent safely, or a token that cannot be
/// minted, turns the allow into a deny.
fn allow(
    decision: &mut Decision,
    tenant: &CompiledTenant,
    identity: &Identity,
    input: &Input,
    with: Edits<'_>,
    minter: Option<&Minter>,
    now: u64,
) {
    let edits = match tenant.response_headers(identity, with.params) {
        Ok(edits) => edits,
        Err(message) => {
            decision.reason = Reason::UnsafeHeaderValue;
            decision.detail = Some(message);
            return;
        }
    };
    decision.allowed = true;
    decision.set_headers = edits.set;
    decision.remove_headers = edits.remove;
    decision.remove_query = identity.consumed_query.clone().into_iter().collect();
    if let Some(answer) = with.answer
        && let Err(message) = policy_edits(decision, answer)
    {
        decision.allowed = false;
        decision.reason = Reason::UnsafeHeaderValue;
        decision.detail = Some(message);
        decision.set_headers.clear();
        decision.remove_headers.clear();
        decision.remove_query.clear();
        return;
    }
    // The proof has done its work; the upstream never needs it.
    if identity.binding.kind == "dpop" {
        remove_header(decision, "dpop");
    }
    downstream(decision, tenant, identity, input, minter, now);
    if decision.allowed {
        seal(decision, &input.resource.headers);
    }
}

/// What an allow's header edits come from besides the tenant: the deciding
/// rule's path parameters, and a Rego policy's answer.
struct Edits<'a> {
    params: &'a [(String, String)],
    answer: Option<&'a Answer>,
}

/// A Rego answer's edits on an allow, after the tenant's own: headers set and
/// removed, query parameters set and removed, the client's response headers.
/// A header the tenant's `response` owns, or one the answer both sets and
/// removes, is refused: owned headers hold over whatever a policy returns.
/// (The downstream token and [`seal`] come after, and overwrite.)
fn policy_edits(decision: &mut Decision, answer: &Answer) -> Result<(), String> {
    let owned = |name: &str| {
        decision.set_headers.iter().any(|(k, _)| k == name)
            || decision.remove_headers.iter().any(|k| k == name)
    };
    for (name, _) in &answer.headers {
        if owned(name) {
            return Err(format!("header {name:?} is owned by the tenant's response"));
        }
    }
    for name in &answer.request_headers_to_remove {
        if owned(name) || answer.headers.iter().any(|(k, _)| k == name) {
            return Err(format!("header {name:?} is owned or also set"));
        }
    }
    decision.set_headers.extend(answer.headers.iter().cloned());
    for name in &answer.request_headers_to_remove {
        remove_header(decision, name);
    }
    for name in &answer.query_parameters_to_remove {
        if !decision.remove_query.contains(name) {
            decision.remove_query.push(name.clone());
        }
    }
    decision.answer.set_query = answer.query_parameters_to_set.clone();
    decision.answer.response_headers = answer.response_headers_to_add.clone();
    Ok(())
}

/// The downstream token, when the allowing rule asks for one, in place of the
/// caller's credential. A token that cannot be minted turns the allow into a
/// deny with no header edits.
fn downstream(
    decision: &mut Decision,
    tenant: &CompiledTenant,
    identity: &Identity,
    input: &Input,
    minter: Option<&Minter>,
    now: u64,
) {
    let Some(spec) = tenant
        .downstream(decision.rule.as_ref())
        .filter(|_| !identity.is_anonymous())
    else {
        return;
    };
    let minted = minter.map_or(Err(MintError::NotConfigured), |m| {
        m.mint(
            spec,
            &tenant.id,
            identity,
            &input.resource.context_extensions,
            now,
        )
    });
    match minted {
        // Overwrites the caller's Authorization (a removal would also remove
        // the new token).
        Ok(token) => {
            decision.set_headers.retain(|(k, _)| k != "authorization");
            decision.remove_headers.retain(|h| h != "authorization");
            // The caller's own credential never travels beside the narrowed
            // one (a custom header, an API key).
            for h in tenant.identity.credential_headers() {
                if h != "authorization" {
                    remove_header(decision, h);
                }
            }
            decision
                .set_headers
                .push(("authorization".into(), format!("Bearer {token}")));
            remove_header(decision, "dpop");
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

/// A dry-run tenant's decision: recorded as what it would have been, then
/// allowed. A deny becomes an allow with the tenant's owned headers rendered
/// for the caller (or, when the credential failed, for an anonymous caller, so
/// every claim header is removed rather than left to the client). A CORS
/// preflight answer stays as it is.
pub fn dry_run(
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
    seal(decision, &input.resource.headers);
}

/// The reason and challenge for a credential that lacks what a rule asks:
/// RFC 6750 §3 `scope`, or RFC 9470 §3 `acr_values` and `max_age`.
pub fn unmet_challenge(missing: &Unmet) -> (Reason, String) {
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

/// Adds `name` to the removed headers once.
fn remove_header(decision: &mut Decision, name: &str) {
    if !decision.remove_headers.iter().any(|h| h == name) {
        decision.remove_headers.push(name.to_string());
    }
}

/// The last edit of every allow, enforced or dry-run: the decision id for the
/// upstream, then a client's underscore spelling of every header the upstream's
/// edits own removed. It reads the finished edit lists, so every owned header
/// is covered: the tenant's, the decision id, a downstream token's removals and
/// any added later. Nothing may edit the upstream's headers after it.
fn seal(decision: &mut Decision, headers: &BTreeMap<String, String>) {
    decision
        .set_headers
        .push((DECISION_ID_HEADER.to_string(), decision.decision_id.clone()));
    strip_underscore_spellings(decision, headers);
}

/// Removes a client's `x_subject` (or a mixture such as `x-portcullis_decision-id`)
/// when portcullis owns the dashed name: many servers (CGI, WSGI, Rack, PHP, nginx with
/// `underscores_in_headers`) read both spellings as the same variable, so the
/// client's value must not travel beside the owned one. (Envoy's
/// `headers_with_underscores_action: REJECT_REQUEST` stops these at the edge;
/// this holds without it.) Only [`seal`] calls it, after every other edit.
fn strip_underscore_spellings(decision: &mut Decision, headers: &BTreeMap<String, String>) {
    // Owned names are almost always dashed, and a client's headers with '_'
    // are rare: nothing is compared or allocated unless one of the two has one.
    let owned_underscored = decision.set_headers.iter().any(|(k, _)| k.contains('_'))
        || decision.remove_headers.iter().any(|k| k.contains('_'));
    for name in headers.keys() {
        if !owned_underscored && !name.contains('_') {
            continue;
        }
        let owned = decision
            .set_headers
            .iter()
            .map(|(k, _)| k)
            .chain(decision.remove_headers.iter())
            .any(|k| k != name && same_but_for_underscores(k, name));
        if owned && !decision.remove_headers.contains(name) {
            decision.remove_headers.push(name.clone());
        }
    }
}

/// `a` and `b` are one name once every `_` is read as `-` (both lower-cased).
fn same_but_for_underscores(a: &str, b: &str) -> bool {
    let dash = |c: u8| if c == b'_' { b'-' } else { c };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| dash(x) == dash(y))
}

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::identity::AuthMethod;
    use crate::policy::Evaluation;

    /// A tenant that sets `x-subject` from the token and removes `x-debug`,
    /// and mints a downstream token on `mint`'s route.
    fn tenant() -> CompiledTenant {
        let text = "apiVersion: portcullis/v1\ntenant: acme\nrules:\n  - id: read\n    path: /r\n    effect: allow\n  - id: mint\n    path: /m\n    effect: allow\n    downstream_token:\n      audience: orders\nresponse:\n  headers:\n    x-subject: \"{claims.sub}\"\n  remove: [x-debug]\n";
        crate::tenants::compile(Path::new("acme.yaml"), text).unwrap()
    }

    fn caller(binding: &'static str) -> Identity {
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), "alice".into());
        claims.insert("azp".into(), "web".into());
        Identity {
            method: AuthMethod::Jwt,
            subject: Some("alice".into()),
            issuer: Some("https://idp.example".into()),
            token_id: None,
            claims: Arc::new(claims),
            consumed_query: None,
            expires: None,
            binding: crate::identity::binding::Binding {
                kind: binding,
                thumbprint: None,
                replay: None,
            },
        }
    }

    fn allowed(rule: &str) -> Evaluation {
        Evaluation {
            outcome: Outcome::Allow(Arc::from(rule)),
            params: Vec::new(),
            trace: Vec::new(),
            dry_run: Vec::new(),
        }
    }

    fn input(headers: &[(&str, &str)]) -> Input {
        let mut input = Input::default();
        for (k, v) in headers {
            input.resource.headers.insert(k.to_string(), v.to_string());
        }
        input
    }

    #[test]
    fn an_allow_sets_owned_headers_strips_the_proof_and_names_the_decision() {
        let (t, who) = (tenant(), caller("dpop"));
        let input = input(&[("x_subject", "mallory")]);
        let mut d = begin("d-1".into(), &t, &input);
        identified(&mut d, &who);
        outcome(&mut d, &t, &who, &input, allowed("read"), None, 0);
        assert!(d.allowed && d.reason == Reason::Allowed, "{d:?}");
        assert!(
            d.set_headers
                .contains(&("x-subject".into(), "alice".into()))
        );
        assert!(
            d.set_headers
                .contains(&(DECISION_ID_HEADER.into(), "d-1".into()))
        );
        for gone in ["x-debug", "dpop", "x_subject"] {
            assert!(d.remove_headers.iter().any(|h| h == gone), "{gone}: {d:?}");
        }
        assert_eq!(d.audit.client_id.as_deref(), Some("web"));
    }

    /// Every spelling of the decision id a client can send: all underscores,
    /// and a mixture.
    const FORGED_IDS: [(&str, &str); 2] = [
        ("x_portcullis_decision_id", "forged"),
        ("x-portcullis_decision-id", "forged"),
    ];

    /// The upstream's edits own every forged spelling: each is removed, and
    /// the only decision id set is the real one.
    fn assert_forged_ids_removed(d: &Decision, id: &str) {
        assert!(d.allowed, "{d:?}");
        for (name, _) in FORGED_IDS {
            assert!(d.remove_headers.iter().any(|h| h == name), "{name}: {d:?}");
        }
        let ids: Vec<_> = d
            .set_headers
            .iter()
            .filter(|(k, _)| k.replace('_', "-") == DECISION_ID_HEADER)
            .collect();
        assert_eq!(ids, [&(DECISION_ID_HEADER.to_string(), id.to_string())]);
    }

    #[test]
    fn an_owned_name_with_an_underscore_removes_its_dashed_spelling() {
        let mut d = Decision::deny("d".into(), Reason::DeniedByRule);
        d.remove_headers.push("x_api_key".into());
        let headers: BTreeMap<String, String> =
            [("x-api-key", "k"), ("x_api_key", "k2"), ("x-other", "o")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        strip_underscore_spellings(&mut d, &headers);
        assert_eq!(d.remove_headers, ["x_api_key", "x-api-key"]);
    }

    #[test]
    fn an_allow_removes_a_forged_decision_id_in_every_spelling() {
        let (t, who) = (tenant(), caller("none"));
        let input = input(&FORGED_IDS);
        let mut d = begin("d-6".into(), &t, &input);
        outcome(&mut d, &t, &who, &input, allowed("read"), None, 0);
        assert_forged_ids_removed(&d, "d-6");
    }

    #[test]
    fn a_dry_run_allow_removes_a_forged_decision_id_in_every_spelling() {
        let text = "apiVersion: portcullis/v1\ntenant: acme\nmode: dry_run\nrules:\n  - id: read\n    path: /r\n    effect: allow\nresponse:\n  headers:\n    x-subject: \"{claims.sub}\"\n";
        let t = crate::tenants::compile(Path::new("acme.yaml"), text).unwrap();
        let mut fields = FORGED_IDS.to_vec();
        fields.push(("x_subject", "mallory"));
        let input = input(&fields);
        // A deny the dry run turns into an allow.
        let denied = Evaluation {
            outcome: Outcome::Deny(Arc::from("read")),
            ..allowed("read")
        };
        let mut d = begin("d-7".into(), &t, &input);
        outcome(&mut d, &t, &caller("none"), &input, denied, None, 0);
        assert_eq!(d.reason, Reason::DryRunAllowed);
        assert_forged_ids_removed(&d, "d-7");
        assert!(d.remove_headers.iter().any(|h| h == "x_subject"), "{d:?}");
        // A credential refused in dry run: allowed as anonymous, same edits.
        let mut d = begin("d-8".into(), &t, &input);
        refused(&mut d, &t, &input, IdentityError::IssuerNotTrusted);
        assert_eq!(d.reason, Reason::DryRunAllowed);
        assert_forged_ids_removed(&d, "d-8");
    }

    #[test]
    fn a_token_that_cannot_be_minted_turns_the_allow_into_a_deny() {
        let (t, who) = (tenant(), caller("none"));
        let input = input(&[]);
        let mut d = begin("d-2".into(), &t, &input);
        outcome(&mut d, &t, &who, &input, allowed("mint"), None, 0);
        assert!(!d.allowed);
        assert_eq!(d.reason, Reason::DownstreamTokenUnavailable);
        assert!(d.set_headers.is_empty() && d.remove_headers.is_empty());
        // Without a downstream token the same caller is allowed.
        let mut d = begin("d-3".into(), &t, &input);
        outcome(&mut d, &t, &who, &input, allowed("read"), None, 0);
        assert!(d.allowed);
    }

    #[test]
    fn an_unmatched_request_denies_an_anonymous_caller_as_missing_a_credential() {
        let t = tenant();
        let none = Evaluation {
            outcome: Outcome::NoMatch,
            ..allowed("read")
        };
        let input = input(&[]);
        let mut d = begin("d-4".into(), &t, &input);
        outcome(
            &mut d,
            &t,
            &Identity::anonymous(),
            &input,
            none.clone(),
            None,
            0,
        );
        assert_eq!((d.allowed, d.reason), (false, Reason::MissingCredential));
        let mut d = begin("d-5".into(), &t, &input);
        outcome(&mut d, &t, &caller("none"), &input, none, None, 0);
        assert_eq!((d.allowed, d.reason), (false, Reason::NoMatchingRule));
        assert!(d.set_headers.is_empty());
    }

    #[test]
    fn unmet_demands_name_what_is_missing() {
        let (r, c) = unmet_challenge(&Unmet::Scope(vec!["orders:read".into()]));
        assert_eq!(r, Reason::InsufficientScope);
        assert!(c.ends_with("scope=\"orders:read\""), "{c}");
        let (r, c) = unmet_challenge(&Unmet::StepUp {
            acr_values: vec!["mfa".into()],
            max_age: Some(300),
        });
        assert_eq!(r, Reason::InsufficientUserAuthentication);
        assert!(c.contains("acr_values=\"mfa\", max_age=300"), "{c}");
    }
}
