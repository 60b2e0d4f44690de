//! Evaluation: a compiled tenant's rules over one request and caller, to an
//! [`Outcome`] that cannot fail (a condition that errors denies), and the
//! response headers an allow sets.
//!
//! Never imports: decision, tenants or anything above them.

use std::collections::BTreeMap;
use std::sync::Arc;

use ::cel::Value;
use smallvec::SmallVec;

use crate::identity::Identity;
use crate::request::input::{Body, Input};
use crate::request::path::Template;

use super::budget::Budget;
use super::cel::{Condition, Reads};
use super::template::{Rendered, Scope};
use super::tenant::Cors;
use super::{CompiledTenant, Effect, Mode, Rule, Unmet};
use super::{cel, native, template};

/// What one rule did, for `portcullis check` explanations.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RuleTrace {
    pub rule: String,
    pub effect: Effect,
    pub result: String,
}

/// The result of evaluating a tenant's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A CORS preflight portcullis answers itself, with these headers.
    CorsPreflight(Vec<(String, String)>),
    /// A CORS preflight from an origin, or for a method, the tenant does not allow.
    CorsRejected,
    Allow(Arc<str>),
    Deny(Arc<str>),
    /// A matching rule's condition failed to evaluate.
    PolicyError(Arc<str>, String),
    /// A matching rule reads a body that is truncated or not JSON.
    BodyUnavailable(Arc<str>),
    /// A matching rule reads the query, and a parameter name repeats.
    AmbiguousQuery(Arc<str>),
    /// No rule held: the tenant's default applies.
    NoMatch,
    /// A Rego policy's answer (named by its query): allowed or not, with what
    /// the result object asks of the response.
    Answered(Arc<str>, Box<super::rego_result::Answer>),
    /// A Rego policy's answer names a header portcullis does not let a policy
    /// set, or a value that is unsafe: denied.
    UnsafeAnswer(Arc<str>, String),
    /// No rule held, and an allow rule that would have applied asked for more
    /// than the caller's credential carries.
    Unmet(Arc<str>, Unmet),
}

/// Evaluation output: the outcome, the deciding rule's path parameters, and
/// (when asked) what every candidate rule did.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub outcome: Outcome,
    pub params: Vec<(String, String)>,
    pub trace: Vec<RuleTrace>,
    /// Dry-run rules that held (or failed) before the outcome was reached.
    pub dry_run: Vec<DryRunHit>,
}

/// What a dry-run rule would have done: `allow`, `deny`, or the reason code of
/// the deny it would have caused (`policy_error`, `body_unavailable`,
/// `ambiguous_query`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DryRunHit {
    pub rule: Arc<str>,
    pub would: &'static str,
}

impl CompiledTenant {
    /// A Rego tenant's compiled policy, when it is one.
    pub fn rego(&self) -> Option<&super::rego::RegoPolicy> {
        self.rego.as_deref()
    }

    /// A Cedar tenant's compiled policy, when it is one.
    pub fn cedar(&self) -> Option<&super::cedar::CedarPolicy> {
        self.cedar.as_deref()
    }

    pub fn rule_count(&self) -> usize {
        self.set.rules.len()
    }

    /// The worst case of one check, in cost steps (see
    /// [`super::cost::check_cost`]).
    pub fn check_cost(&self) -> u64 {
        self.set.check_cost
    }

    /// Whether the tenant is heavy (see [`super::heavy`]).
    pub fn heavy(&self) -> Option<&super::heavy::HeavyGate> {
        self.heavy.as_ref()
    }

    /// Each enforced allow rule's id and the scopes it requires, in file order.
    pub fn allow_rule_scopes(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.set
            .rules
            .iter()
            .filter(|r| r.effect == Effect::Allow && r.mode == Mode::Enforce)
            .map(|r| (&*r.id, r.needs.scopes.as_slice()))
    }

    /// The rule ids, in file order.
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.set.rules.iter().map(|r| &*r.id)
    }

    /// Evaluates the rules for one request. Never fails; never allows on error.
    pub fn evaluate(&self, input: &Input, identity: &Identity, explain: bool) -> Evaluation {
        self.evaluate_with_data(input, identity, explain, None)
    }

    /// [`CompiledTenant::evaluate`] with the tenant's data document (`data` in
    /// conditions; an empty map without one).
    pub fn evaluate_with_data(
        &self,
        input: &Input,
        identity: &Identity,
        explain: bool,
        data: Option<&Value>,
    ) -> Evaluation {
        self.evaluate_within(input, identity, explain, data, &mut Budget::new(None))
    }

    /// [`CompiledTenant::evaluate_with_data`] within `budget`: before each
    /// condition the budget is charged, and once it is spent (or the caller's
    /// deadline has passed) the check stops with [`Outcome::PolicyError`].
    pub fn evaluate_within(
        &self,
        input: &Input,
        identity: &Identity,
        explain: bool,
        data: Option<&Value>,
        budget: &mut Budget,
    ) -> Evaluation {
        if let Some(rego) = &self.rego {
            return self.evaluate_rego(rego, input, identity, explain, budget.deadline());
        }
        if let Some(cedar) = &self.cedar {
            return self.evaluate_cedar(cedar, input, identity, explain, budget.deadline());
        }
        let resource = &input.resource;
        let mut trace = Vec::new();
        let mut dry_run: Vec<DryRunHit> = Vec::new();
        if let Some(cors) = &self.cors
            && resource.method == "OPTIONS"
            && let (Some(origin), Some(method)) = (
                resource.headers.get("origin"),
                resource.headers.get("access-control-request-method"),
            )
        {
            return Evaluation {
                outcome: self.preflight(cors, resource, origin, method),
                params: Vec::new(),
                trace,
                dry_run: Vec::new(),
            };
        }
        // The parameters each distinct template binds, bound once: rules on
        // one route share a template, and binding copies every value. Both
        // vectors are inline: a path's few rules cost no allocation.
        let mut bound: Bound = SmallVec::new();
        let candidates: SmallVec<[(&Rule, usize); 8]> = self
            .set
            .index
            .hits(&resource.segments)
            .into_iter()
            .filter_map(|i| {
                let rule = &self.set.rules[i];
                let params = match bound.iter().position(|(t, _)| **t == rule.template) {
                    Some(k) => k,
                    None => {
                        let params = rule.template.matches(&resource.segments)?;
                        bound.push((&rule.template, params));
                        bound.len() - 1
                    }
                };
                let method_ok = rule.allows_method(&resource.method);
                let host_ok = rule.allows_host(&resource.host);
                if explain && !(method_ok && host_ok) {
                    trace.push(RuleTrace {
                        rule: rule.id.to_string(),
                        effect: rule.effect,
                        result: if method_ok {
                            "path matched; host did not".into()
                        } else {
                            "path matched; method did not".into()
                        },
                    });
                }
                (method_ok && host_ok).then_some((rule, params))
            })
            .collect();

        let attributes = self
            .set
            .resource_index
            .first(&resource.segments)
            .map(|i| &self.set.resources[i].1);
        let mut base: Option<Base> = None;
        let request = Request {
            input,
            identity,
            data,
        };
        let mut unmet: Option<(Arc<str>, Unmet)> = None;
        let now = crate::request::input::unix_seconds(input.context.time);
        let ordered = candidates
            .iter()
            .filter(|(r, _)| r.effect == Effect::Deny)
            .chain(candidates.iter().filter(|(r, _)| r.effect == Effect::Allow));
        for &(rule, k) in ordered {
            let params = &bound[k].1;
            let note = |trace: &mut Vec<RuleTrace>, result: &str| {
                if explain {
                    trace.push(RuleTrace {
                        rule: rule.id.to_string(),
                        effect: rule.effect,
                        result: result.to_string(),
                    });
                }
            };
            if rule.effect == Effect::Allow && !rule.public && identity.is_anonymous() {
                note(
                    &mut trace,
                    "skipped: needs an identified caller (not public)",
                );
                continue;
            }
            // Before the condition runs: the interpreter cannot be stopped
            // once it does.
            if let Some(c) = &rule.condition
                && let Err(spent) = budget.charge(c.cost())
            {
                note(&mut trace, spent.message());
                return Evaluation {
                    outcome: Outcome::PolicyError(rule.id.clone(), spent.message().into()),
                    params: std::mem::take(&mut bound[k].1),
                    trace,
                    dry_run: std::mem::take(&mut dry_run),
                };
            }
            if rule.mode == Mode::DryRun {
                match self.dry_run_rule(rule, &request, (params, attributes), &mut base) {
                    Some(would) => {
                        note(&mut trace, &format!("dry run: would {would}"));
                        dry_run.push(DryRunHit {
                            rule: rule.id.clone(),
                            would,
                        });
                    }
                    None => note(&mut trace, "dry run: condition is false"),
                }
                continue;
            }
            if let Some(missing) = rule.needs.unmet(identity, now) {
                note(
                    &mut trace,
                    "skipped: the credential lacks what the rule needs",
                );
                unmet.get_or_insert_with(|| (rule.id.clone(), missing));
                continue;
            }
            let holds = match &rule.condition {
                None => Ok(true),
                Some(c)
                    if c.reads_body()
                        && matches!(resource.body, Body::Truncated | Body::Unparsed) =>
                {
                    note(&mut trace, "body is truncated or not JSON");
                    return Evaluation {
                        outcome: Outcome::BodyUnavailable(rule.id.clone()),
                        params: std::mem::take(&mut bound[k].1),
                        trace,
                        dry_run: std::mem::take(&mut dry_run),
                    };
                }
                Some(c) if resource.query_repeated && c.reads().resource.wants("query") => {
                    note(&mut trace, "query repeats a parameter name");
                    return Evaluation {
                        outcome: Outcome::AmbiguousQuery(rule.id.clone()),
                        params: std::mem::take(&mut bound[k].1),
                        trace,
                        dry_run: std::mem::take(&mut dry_run),
                    };
                }
                Some(c) => self.holds(c, &request, (params, attributes), &mut base),
            };
            match holds {
                Ok(true) => {
                    note(&mut trace, "matched");
                    let outcome = match rule.effect {
                        Effect::Allow => Outcome::Allow(rule.id.clone()),
                        Effect::Deny => Outcome::Deny(rule.id.clone()),
                    };
                    return Evaluation {
                        outcome,
                        params: std::mem::take(&mut bound[k].1),
                        trace,
                        dry_run: std::mem::take(&mut dry_run),
                    };
                }
                Ok(false) => note(&mut trace, "condition is false"),
                Err(message) => {
                    note(&mut trace, &format!("error: {message}"));
                    return Evaluation {
                        outcome: Outcome::PolicyError(rule.id.clone(), message),
                        params: std::mem::take(&mut bound[k].1),
                        trace,
                        dry_run: std::mem::take(&mut dry_run),
                    };
                }
            }
        }
        Evaluation {
            outcome: match unmet {
                Some((rule, missing)) => Outcome::Unmet(rule, missing),
                None => Outcome::NoMatch,
            },
            params: Vec::new(),
            trace,
            dry_run,
        }
    }

    /// A Rego tenant's check: the OPA-Envoy input document, the query under
    /// the timer, the result read as OPA-Envoy reads it. Never fails; an
    /// error, a result of the wrong shape or a cut-off evaluation denies.
    fn evaluate_rego(
        &self,
        rego: &super::rego::RegoPolicy,
        input: &Input,
        identity: &Identity,
        explain: bool,
        deadline: Option<std::time::Instant>,
    ) -> Evaluation {
        use super::rego_result::{self, Refused};
        let rule: Arc<str> = Arc::from(rego.query.as_str());
        let mut trace = Vec::new();
        let note = |trace: &mut Vec<RuleTrace>, effect: Effect, result: String| {
            if explain {
                trace.push(RuleTrace {
                    rule: rego.query.clone(),
                    effect,
                    result,
                });
            }
        };
        let request = input
            .check_message
            .as_ref()
            .map_or(regorus::Value::Null, |m| {
                crate::request::protomap::walk::<regorus::Value>(m)
            });
        let outcome = match super::rego_input::value(&request, identity, &self.id) {
            Err(_) => {
                note(&mut trace, Effect::Deny, "body is not JSON".into());
                Outcome::BodyUnavailable(rule)
            }
            Ok(doc) => {
                let result = super::rego_jwt::with_issuers(
                    self.identity.issuers(),
                    self.identity.token_cache(),
                    self.identity.max_claim_items(),
                    input.context.time,
                    identity,
                    || rego.evaluate(doc, deadline),
                );
                match result {
                    Err(e) => {
                        note(&mut trace, Effect::Deny, format!("error: {}", e.0));
                        Outcome::PolicyError(rule, e.0)
                    }
                    Ok(value) => match rego_result::read(value.as_ref()) {
                        Ok(answer) => {
                            let effect = if answer.allowed {
                                Effect::Allow
                            } else {
                                Effect::Deny
                            };
                            let shown = value.map_or("undefined".to_string(), |v| v.to_string());
                            note(&mut trace, effect, format!("result: {shown}"));
                            Outcome::Answered(rule, Box::new(answer))
                        }
                        Err(Refused::Invalid(m)) => {
                            note(&mut trace, Effect::Deny, format!("error: {m}"));
                            Outcome::PolicyError(rule, m)
                        }
                        Err(Refused::Unsafe(m)) => {
                            note(&mut trace, Effect::Deny, format!("refused: {m}"));
                            Outcome::UnsafeAnswer(rule, m)
                        }
                    },
                }
            }
        };
        Evaluation {
            outcome,
            params: Vec::new(),
            trace,
            dry_run: Vec::new(),
        }
    }

    /// A Cedar tenant's check: the request mapped onto Cedar's (see
    /// [`super::cedar_input`]), decided by its policies. Never fails; an
    /// error denies. The determining policies are the decision's rule.
    fn evaluate_cedar(
        &self,
        cedar: &super::cedar::CedarPolicy,
        input: &Input,
        identity: &Identity,
        explain: bool,
        deadline: Option<std::time::Instant>,
    ) -> Evaluation {
        use super::cedar::Verdict;
        let attributes = self
            .set
            .resource_index
            .first(&input.resource.segments)
            .map(|i| &self.set.resources[i].1);
        let judged = cedar.evaluate(input, identity, &self.id, attributes, deadline);
        let mut trace = Vec::new();
        if explain && let Some((principal, action, resource)) = &judged.asked {
            trace.push(RuleTrace {
                rule: action.clone(),
                effect: Effect::Deny,
                result: format!(
                    "asked: principal {principal}, action {action}, resource {resource}"
                ),
            });
        }
        let mut note = |ids: &[Arc<str>], effect: Effect, result: &str| {
            if explain {
                trace.extend(ids.iter().map(|id| RuleTrace {
                    rule: id.to_string(),
                    effect,
                    result: result.to_string(),
                }));
            }
        };
        let joined = |ids: &[Arc<str>]| -> Arc<str> {
            match ids {
                [one] => Arc::clone(one),
                many => Arc::from(
                    many.iter()
                        .map(|s| s.as_ref())
                        .collect::<Vec<_>>()
                        .join(","),
                ),
            }
        };
        let outcome = match judged.verdict {
            Verdict::NoRoute => {
                if explain {
                    trace.push(RuleTrace {
                        rule: "policy.cedar.routes".into(),
                        effect: Effect::Deny,
                        result: "no route covers this method and path".into(),
                    });
                }
                Outcome::NoMatch
            }
            Verdict::Allow(ids) => {
                note(&ids, Effect::Allow, "determining (permit)");
                Outcome::Allow(joined(&ids))
            }
            Verdict::Deny(ids) if ids.is_empty() => {
                if explain {
                    trace.push(RuleTrace {
                        rule: "policy.cedar".into(),
                        effect: Effect::Deny,
                        result: "no permit applies".into(),
                    });
                }
                Outcome::NoMatch
            }
            Verdict::Deny(ids) => {
                note(&ids, Effect::Deny, "determining (forbid)");
                Outcome::Deny(joined(&ids))
            }
            Verdict::Error(ids, message) => {
                note(&ids, Effect::Deny, &format!("error: {message}"));
                let rule = if ids.is_empty() {
                    Arc::from("policy.cedar")
                } else {
                    joined(&ids)
                };
                if explain && ids.is_empty() {
                    trace.push(RuleTrace {
                        rule: rule.to_string(),
                        effect: Effect::Deny,
                        result: format!("error: {message}"),
                    });
                }
                Outcome::PolicyError(rule, message)
            }
            Verdict::BodyUnavailable => {
                if explain {
                    trace.push(RuleTrace {
                        rule: "policy.cedar".into(),
                        effect: Effect::Deny,
                        result: "body is truncated or not JSON".into(),
                    });
                }
                Outcome::BodyUnavailable(Arc::from("policy.cedar"))
            }
        };
        Evaluation {
            outcome,
            params: judged.params,
            trace,
            dry_run: Vec::new(),
        }
    }

    /// What a dry-run rule would have done, if anything; it never decides.
    fn dry_run_rule(
        &self,
        rule: &Rule,
        request: &Request,
        own: RuleOwn,
        base: &mut Option<Base>,
    ) -> Option<&'static str> {
        let effect = match rule.effect {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        };
        let Some(c) = &rule.condition else {
            return Some(effect);
        };
        let resource = &request.input.resource;
        if c.reads_body() && matches!(resource.body, Body::Truncated | Body::Unparsed) {
            return Some("body_unavailable");
        }
        if resource.query_repeated && c.reads().resource.wants("query") {
            return Some("ambiguous_query");
        }
        match self.holds(c, request, own, base) {
            Ok(true) => Some(effect),
            Ok(false) => None,
            Err(_) => Some("policy_error"),
        }
    }

    /// Whether `c` holds for this rule: natively where that gives CEL's
    /// boolean, else in the interpreter, whose roots are built once per
    /// request in `base` (and only when a condition needs them).
    fn holds(
        &self,
        c: &Condition,
        request: &Request,
        (params, attributes): RuleOwn,
        base: &mut Option<Base>,
    ) -> Result<bool, String> {
        let Request {
            input,
            identity,
            data,
        } = *request;
        let inputs = native::Inputs {
            claims: &identity.claims,
            resource: &input.resource,
            params,
            attributes,
        };
        if let Some(b) = c.evaluate_native(&inputs) {
            return Ok(b);
        }
        base.get_or_insert_with(|| Base::new(&self.reads, &self.id, input, identity, data))
            .evaluate(c, params, attributes)
    }

    /// Answers a CORS preflight: the origin must be allowed, and some allow rule
    /// must route the requested method on this path and host. The answer never
    /// reaches the upstream, so a handler that ignores the method cannot run an
    /// anonymous `OPTIONS` as if it were the real request.
    fn preflight(
        &self,
        cors: &Cors,
        resource: &crate::request::input::Resource,
        origin: &str,
        method: &str,
    ) -> Outcome {
        let origin_ok = (cors.any_origin || cors.origins.iter().any(|o| o == origin))
            && template::safe_value(origin);
        let method = method.trim();
        let routed = self
            .set
            .index
            .hits(&resource.segments)
            .into_iter()
            .any(|i| {
                let rule = &self.set.rules[i];
                rule.effect == Effect::Allow
                    && rule.mode == Mode::Enforce
                    && rule.allows_method(method)
                    && rule.allows_host(&resource.host)
                    && rule.template.matches(&resource.segments).is_some()
            });
        if !origin_ok || !routed || !template::safe_value(method) || method.is_empty() {
            return Outcome::CorsRejected;
        }
        Outcome::CorsPreflight(vec![
            ("access-control-allow-origin".into(), origin.to_string()),
            ("access-control-allow-methods".into(), method.to_string()),
            ("access-control-allow-headers".into(), cors.headers.clone()),
            ("access-control-max-age".into(), cors.max_age.clone()),
            ("vary".into(), "origin".into()),
        ])
    }

    /// What to mint for the upstream when `rule` allowed (its own setting, or
    /// the tenant's).
    pub fn downstream(
        &self,
        rule: Option<&Arc<str>>,
    ) -> Option<&crate::policy::downstream::Downstream> {
        rule.and_then(|r| self.set.rule_downstream.get(r))
            .or(self.set.downstream.as_ref())
    }

    /// Headers to set and remove on an allowed request: every owned header is
    /// either set (overwriting the client's) or removed. `Err` when a value
    /// would be unsafe.
    pub fn response_headers(
        &self,
        identity: &Identity,
        params: &[(String, String)],
    ) -> Result<HeaderEdits, String> {
        let scope = Scope {
            claims: &identity.claims,
            params,
            tenant: &self.id,
            subject: identity.subject.as_deref(),
            auth_method: identity.method.as_str(),
        };
        let mut set = Vec::new();
        let mut remove = self.set.remove.clone();
        for (name, template) in &self.set.headers {
            match template.render(&scope) {
                Rendered::Value(v) => set.push((name.clone(), v)),
                Rendered::Missing => remove.push(name.clone()),
                Rendered::Unsafe => return Err(format!("value for header {name:?} is unsafe")),
            }
        }
        Ok(HeaderEdits { set, remove })
    }
}

/// What an allowed request's headers become on the way to the upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Set with overwrite: the client's value never survives.
    pub set: Vec<(String, String)>,
    /// Removed by exact name; never also in `set`.
    pub remove: Vec<String>,
}

/// What every condition of one request reads.
#[derive(Clone, Copy)]
struct Request<'a> {
    input: &'a Input,
    identity: &'a Identity,
    data: Option<&'a Value>,
}

/// The parameters each distinct template of one request's candidates binds.
type Bound<'a> = SmallVec<[(&'a Template, Vec<(String, String)>); 4]>;

/// What differs per rule: its path parameters and the resource's attributes.
type RuleOwn<'a> = (&'a [(String, String)], Option<&'a BTreeMap<String, String>>);

/// The parts of the CEL input shared by every rule of one request, converted
/// into CEL's runtime form once.
pub(crate) struct Base {
    prepared: cel::Prepared,
    /// The resource fields shared by every rule, when conditions also read
    /// `resource.params` or `resource.attributes` (which differ per rule and
    /// are added per evaluation); `None` when `prepared` holds it whole.
    resource: Option<std::collections::HashMap<String, Value>>,
    want_params: bool,
    want_attributes: bool,
}

impl Base {
    pub(crate) fn new(
        reads: &Reads,
        tenant: &str,
        input: &Input,
        identity: &Identity,
        data: Option<&Value>,
    ) -> Base {
        let r = &input.resource;
        let c = &input.context;
        let strings = |m: &BTreeMap<String, String>| {
            cel::map(m.iter().map(|(k, v)| (k.as_str(), cel::string(v))))
        };
        let opt = |s: &Option<String>| s.as_deref().map_or(Value::Null, cel::string);
        let want = &reads.resource;
        let mut resource = std::collections::HashMap::new();
        let mut put = |key: &str, value: &dyn Fn() -> Value| {
            if want.wants(key) {
                resource.insert(key.to_string(), value());
            }
        };
        put("host", &|| cel::string(&r.host));
        put("method", &|| cel::string(&r.method));
        put("path", &|| cel::string(&r.path));
        put("query", &|| strings(&r.query_params));
        put("headers", &|| strings(&r.headers));
        put("body", &|| match &r.body {
            Body::Json(j) => cel::json_to_cel(j),
            _ => Value::Null,
        });
        put("context_extensions", &|| strings(&r.context_extensions));
        put("grpc", &|| Value::Bool(r.grpc));
        put("scheme", &|| cel::string(&r.scheme));
        put("protocol", &|| cel::string(&r.protocol));
        put("destination", &|| opt(&r.destination));

        let want = &reads.context;
        let mut context = Vec::new();
        let mut put = |key: &'static str, value: &dyn Fn() -> Value| {
            if want.wants(key) {
                context.push((key, value()));
            }
        };
        put("time", &|| {
            Value::Int(
                i64::try_from(crate::request::input::unix_seconds(c.time)).unwrap_or(i64::MAX),
            )
        });
        put("source", &|| opt(&c.source));
        put("peer", &|| {
            c.peer.as_ref().map_or(Value::Null, |p| {
                cel::map([
                    ("principal", cel::string(&p.principal)),
                    ("spiffe_id", p.spiffe_id().map_or(Value::Null, cel::string)),
                    ("has_certificate", Value::Bool(p.certificate.is_some())),
                ])
            })
        });
        put("sni", &|| cel::string(&c.sni));
        put("request_id", &|| cel::string(&c.request_id));
        put("tenant", &|| cel::string(tenant));
        put("sender_constraint", &|| cel::string(identity.binding.kind));
        put("key_thumbprint", &|| opt(&identity.binding.thumbprint));
        put("auth", &|| {
            cel::map([
                ("method", cel::string(identity.method.as_str())),
                ("subject", opt(&identity.subject)),
                ("issuer", opt(&identity.issuer)),
                ("token_id", opt(&identity.token_id)),
            ])
        });
        let want_params = reads.resource.wants("params");
        let want_attributes = reads.resource.wants("attributes");
        let per_rule = want_params || want_attributes;
        let claims = cel::map(
            identity
                .claims
                .iter()
                .map(|(k, v)| (k.as_str(), cel::json_to_cel(v))),
        );
        let (shared, resource) = if per_rule {
            (None, Some(resource))
        } else {
            (Some(Value::from(resource)), None)
        };
        Base {
            prepared: cel::Prepared::new(
                claims,
                cel::map(context),
                data.cloned().unwrap_or_else(|| cel::map([])),
                shared,
            ),
            resource,
            want_params,
            want_attributes,
        }
    }

    /// Evaluates one rule's condition with its params and attributes.
    pub(crate) fn evaluate(
        &self,
        condition: &Condition,
        params: &[(String, String)],
        attributes: Option<&BTreeMap<String, String>>,
    ) -> Result<bool, String> {
        let Some(shared) = &self.resource else {
            return condition.evaluate_prepared(&self.prepared, None);
        };
        let mut resource = shared.clone();
        if self.want_params {
            resource.insert(
                "params".into(),
                cel::map(params.iter().map(|(k, v)| (k.as_str(), cel::string(v)))),
            );
        }
        if self.want_attributes {
            resource.insert(
                "attributes".into(),
                cel::map(
                    attributes
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k.as_str(), cel::string(v))),
                ),
            );
        }
        condition.evaluate_prepared(&self.prepared, Some(Value::from(resource)))
    }
}
