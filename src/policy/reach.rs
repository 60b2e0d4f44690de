//! What one caller can reach in one tenant: every (method, route) an allow
//! rule grants it, with the rule, the condition left over the request
//! ([`super::residual`]) and the deny rules that may still refuse it.
//!
//! The analysis follows [`super::evaluate`]'s order: a rule's scopes and acr
//! are checked against the caller first (an unmet rule grants nothing, an
//! unmet deny rule refuses nothing), a non-public allow rule needs an
//! identified caller, dry-run rules never decide, and a deny rule whose route
//! and methods meet an allow rule's turns it into "allowed unless". An allow
//! rule earlier in the file on a route covering this one whose condition is
//! certain to fail shadows it (the check stops at the error).
//!
//! Not modelled: CORS preflights (answered before any rule), a body that is
//! truncated or not JSON and a repeated query parameter (both deny a rule
//! that reads them; the residual names `body` / `query`), the check budget.
//!
//! Never imports: decision, tenants or anything above them.

use ::cel::Value;

use crate::identity::Identity;

use super::cel::{self, Prepared};
use super::residual::{Folded, Known, Polarity, Residual, residual};
use super::{CompiledTenant, Effect, Mode, Rule};

/// One (method, route) a caller reaches, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Grant {
    pub tenant: String,
    /// `*` when the rule names no method.
    pub method: String,
    pub route: String,
    /// Empty: any host of the tenant.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    pub rule: String,
    pub public: bool,
    /// What the rule asked of the token (all met by this caller).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// `None`: on every request to the route.
    pub when: Option<Residual>,
    /// Deny rules that may refuse the request all the same.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unless: Vec<Unless>,
}

/// A deny rule that refuses part of a grant.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Unless {
    pub rule: String,
    /// Set when the deny rule covers only some of the grant's paths.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Set when it covers only some of the grant's methods (`*` grants).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// `None`: whenever the route and method match.
    pub when: Option<Residual>,
}

/// The roots a caller fixes: claims, the known part of `context`, data and
/// (per route) the method.
fn roots(
    tenant: &CompiledTenant,
    identity: &Identity,
    data: Option<&Value>,
    method: Option<&str>,
) -> Prepared {
    let opt = |s: &Option<String>| s.as_deref().map_or(Value::Null, cel::string);
    let claims = cel::map(
        identity
            .claims
            .iter()
            .map(|(k, v)| (k.as_str(), cel::json_to_cel(v))),
    );
    let context = cel::map([
        ("tenant", cel::string(&tenant.id)),
        ("sender_constraint", cel::string(identity.binding.kind)),
        ("key_thumbprint", opt(&identity.binding.thumbprint)),
        (
            "auth",
            cel::map([
                ("method", cel::string(identity.method.as_str())),
                ("subject", opt(&identity.subject)),
                ("issuer", opt(&identity.issuer)),
                ("token_id", opt(&identity.token_id)),
            ]),
        ),
    ]);
    let resource = cel::map(method.map(|m| ("method", cel::string(m))));
    Prepared::new(
        claims,
        context,
        data.cloned().unwrap_or_else(|| cel::map([])),
        Some(resource),
    )
}

/// Folds `rule`'s condition for this caller and method.
fn fold(
    rule: &Rule,
    tenant: &CompiledTenant,
    identity: &Identity,
    data: Option<&Value>,
    method: Option<&str>,
    polarity: Polarity,
) -> Folded {
    let Some(c) = &rule.condition else {
        return Folded::Always;
    };
    let prepared = roots(tenant, identity, data, method);
    let known = Known {
        roots: &prepared,
        method_known: method.is_some(),
    };
    residual(c, &known, polarity)
}

fn hosts_meet(a: &Rule, b: &Rule) -> bool {
    a.hosts.is_empty()
        || b.hosts.is_empty()
        || a.hosts.iter().any(|h| {
            b.hosts.iter().any(|k| match (h, k) {
                (super::HostPattern::Exact(x), super::HostPattern::Exact(y)) => x == y,
                (super::HostPattern::Exact(x), s) | (s, super::HostPattern::Exact(x)) => {
                    s.matches(x)
                }
                // Two suffixes always share deeper names.
                _ => true,
            })
        })
}

/// Every (method, route) of `tenant` that `identity` can reach, in rule
/// order. `now` is the time the scopes and `max_auth_age` are judged at.
pub fn reach(
    tenant: &CompiledTenant,
    identity: &Identity,
    data: Option<&Value>,
    now: u64,
) -> Vec<Grant> {
    let rules = &tenant.set.rules;
    let deciding = |r: &&Rule| r.mode == Mode::Enforce;
    let denies: Vec<&Rule> = rules
        .iter()
        .filter(deciding)
        .filter(|r| r.effect == Effect::Deny && r.needs.unmet(identity, now).is_none())
        .collect();
    let mut grants = Vec::new();
    for (at, rule) in rules.iter().enumerate() {
        if rule.effect != Effect::Allow || rule.mode != Mode::Enforce {
            continue;
        }
        if (!rule.public && identity.is_anonymous()) || rule.needs.unmet(identity, now).is_some() {
            continue;
        }
        let methods: Vec<Option<&str>> = if rule.methods.is_empty() {
            vec![None]
        } else {
            rule.methods.iter().map(|m| Some(m.as_str())).collect()
        };
        for method in methods {
            let when = match fold(rule, tenant, identity, data, method, Polarity::Allow) {
                Folded::Never => continue,
                Folded::Always => None,
                Folded::When(r) => Some(r),
            };
            let meets = |other: &Rule| {
                other.template.overlaps(&rule.template)
                    && hosts_meet(rule, other)
                    && match method {
                        Some(m) => other.allows_method(m),
                        None => true,
                    }
            };
            // An earlier allow rule on every path of this one that is sure to
            // fail stops the check before this rule is reached.
            let shadowed = rules[..at].iter().filter(deciding).any(|b| {
                b.effect == Effect::Allow
                    && b.template.covers(&rule.template)
                    && method.is_some_and(|m| b.allows_method(m))
                    && (b.public || !identity.is_anonymous())
                    && b.needs.unmet(identity, now).is_none()
                    && b.condition.as_ref().is_some_and(|c| {
                        let prepared = roots(tenant, identity, data, method);
                        let known = Known {
                            roots: &prepared,
                            method_known: true,
                        };
                        // Folded for a deny side: `Always` means it errors on
                        // every request, or holds (and then allows, as b).
                        residual(c, &known, Polarity::Deny) == Folded::Always
                            && residual(c, &known, Polarity::Allow) == Folded::Never
                    })
            });
            if shadowed {
                continue;
            }
            let mut unless = Vec::new();
            let mut refused = false;
            for d in denies.iter().filter(|d| meets(d)) {
                let d_when = match fold(d, tenant, identity, data, method, Polarity::Deny) {
                    Folded::Never => continue,
                    Folded::Always => None,
                    Folded::When(r) => Some(r),
                };
                let route =
                    (!d.template.covers(&rule.template)).then(|| d.template.as_str().into());
                let methods = match method {
                    None if !d.methods.is_empty() => d.methods.clone(),
                    _ => Vec::new(),
                };
                if d_when.is_none() && route.is_none() && methods.is_empty() && hosts_cover(d, rule)
                {
                    refused = true;
                    break;
                }
                unless.push(Unless {
                    rule: d.id.to_string(),
                    route,
                    methods,
                    when: d_when,
                });
            }
            if refused {
                continue;
            }
            grants.push(Grant {
                tenant: tenant.id.to_string(),
                method: method.unwrap_or("*").to_string(),
                route: rule.template.as_str().to_string(),
                hosts: rule.hosts.iter().map(ToString::to_string).collect(),
                rule: rule.id.to_string(),
                public: rule.public,
                scopes: rule.needs.scopes.clone(),
                when,
                unless,
            });
        }
    }
    grants
}

/// Whether the deny rule `d` applies on every host `rule` does.
fn hosts_cover(d: &Rule, rule: &Rule) -> bool {
    d.hosts.is_empty() || (!rule.hosts.is_empty() && rule.hosts.iter().all(|h| d.hosts.contains(h)))
}

/// The tenant's grants for the anonymous caller (its public routes), for
/// comparisons.
pub fn public_routes(tenant: &CompiledTenant, data: Option<&Value>, now: u64) -> Vec<Grant> {
    reach(tenant, &Identity::anonymous(), data, now)
}
