//! `portcullis replay`: every record of a replayable decision log
//! ([`crate::observe::replay`]) decided again on another policy directory,
//! and the records whose outcome changes, grouped by tenant and route.
//!
//! A record is decided from what it holds: the request is rebuilt from it and
//! read as a check reads one, and the caller is the recorded auth method,
//! subject, issuer and claims. Identity validation is not replayed (there is
//! no token to validate), nor revocation; records the identity stage decided
//! (a 401, a revoked token) and incomplete records are counted as skipped.
//!
//! Never imported by: any other module of the crate.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value as Json;

use crate::app::suite::{TestFile, TestRequest, request_json};
use crate::identity::{AuthMethod, Identity};
use crate::policy::{Effect, Outcome};
use crate::tenants::store::PolicyStore;

/// The reasons a decision of the rules has; any other was decided before
/// them and is not replayed.
const RULE_REASONS: [&str; 10] = [
    "allowed",
    "default_allow",
    "no_matching_rule",
    "denied_by_rule",
    "insufficient_scope",
    "insufficient_user_authentication",
    "policy_error",
    "body_unavailable",
    "ambiguous_query",
    "unknown_tenant",
];

/// One changed outcome, counted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Change {
    pub tenant: String,
    pub method: String,
    pub path: String,
    /// `allow→deny`, `deny→allow` or `rule changed`.
    pub change: String,
    pub was: String,
    pub now: String,
}

/// What a replay found.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub records: usize,
    pub replayed: usize,
    pub skipped: usize,
    /// Each distinct change and how many records made it.
    pub changes: Vec<(Change, usize)>,
}

fn verdict(decision: &str, rule: Option<&str>) -> String {
    match rule {
        Some(r) => format!("{decision} ({r})"),
        None => decision.to_string(),
    }
}

fn method_of(name: &str) -> Option<AuthMethod> {
    Some(match name {
        "anonymous" => AuthMethod::Anonymous,
        "jwt" => AuthMethod::Jwt,
        "introspection" => AuthMethod::Introspection,
        "api_key" => AuthMethod::ApiKey,
        "envoy_jwt" => AuthMethod::EnvoyJwt,
        "spiffe" => AuthMethod::Spiffe,
        _ => return None,
    })
}

/// Decides one record on `store`'s rules: `(decision, rule)`, or `None` when
/// it cannot be replayed.
fn decide(store: &PolicyStore, record: &Json) -> Option<(String, Option<String>)> {
    let text = |k: &str| record.get(k).and_then(Json::as_str).map(str::to_string);
    if record.get("incomplete").and_then(Json::as_bool) == Some(true) {
        return None;
    }
    if !RULE_REASONS.contains(&text("reason")?.as_str()) {
        return None;
    }
    let tenant_id = text("tenant");
    let Some(tenant) = tenant_id.as_deref().and_then(|t| store.tenant(t)) else {
        return Some(("deny".into(), None));
    };
    let r = record.get("request")?;
    let strings = |k: &str| -> BTreeMap<String, String> {
        r.get(k)
            .and_then(Json::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    };
    let request = TestRequest {
        method: r.get("method").and_then(Json::as_str).map(str::to_string),
        host: r.get("host").and_then(Json::as_str).map(str::to_string),
        path: r.get("path").and_then(Json::as_str)?.to_string(),
        headers: strings("headers"),
        body: r.get("body").cloned(),
        context_extensions: strings("context_extensions"),
        peer: r.get("peer").and_then(Json::as_str).map(str::to_string),
        ..TestRequest::default()
    };
    let suite = TestFile {
        description: None,
        tenant: None,
        cases: Vec::new(),
    };
    let check =
        crate::app::request_json::check_request_from_json(&request_json(&suite, &request)).ok()?;
    let input = crate::request::read(store.limits(), &check).ok()?;
    let method = method_of(&text("auth_method")?)?;
    let mut identity = Identity::anonymous();
    if method != AuthMethod::Anonymous {
        identity.method = method;
        identity.subject = text("subject");
        identity.issuer = text("issuer");
        let claims = record
            .get("claims")
            .and_then(Json::as_object)
            .cloned()
            .unwrap_or_default();
        identity.token_id = claims.get("jti").and_then(Json::as_str).map(str::to_string);
        identity.claims = Arc::new(claims);
    }
    let data = store.data(&tenant.id);
    let eval = tenant.evaluate_with_data(&input, &identity, false, data.as_ref().map(|d| &d.value));
    Some(match eval.outcome {
        Outcome::Allow(rule) => ("allow".into(), Some(rule.to_string())),
        Outcome::CorsPreflight(_) => ("allow".into(), None),
        Outcome::Answered(rule, answer) => {
            let verdict = if answer.allowed { "allow" } else { "deny" };
            (verdict.into(), Some(rule.to_string()))
        }
        Outcome::UnsafeAnswer(rule, _) => ("deny".into(), Some(rule.to_string())),
        Outcome::NoMatch if tenant.default == Effect::Allow => ("allow".into(), None),
        Outcome::NoMatch | Outcome::CorsRejected => ("deny".into(), None),
        Outcome::Deny(rule)
        | Outcome::PolicyError(rule, _)
        | Outcome::BodyUnavailable(rule)
        | Outcome::AmbiguousQuery(rule)
        | Outcome::Unmet(rule, _) => ("deny".into(), Some(rule.to_string())),
    })
}

/// Replays every line of `log` on the policies in `store`.
pub fn replay(store: &PolicyStore, log: &str) -> Result<Report, String> {
    let mut report = Report::default();
    let mut counts: BTreeMap<Change, usize> = BTreeMap::new();
    for (n, line) in log.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: Json =
            serde_json::from_str(line).map_err(|e| format!("line {}: not JSON: {e}", n + 1))?;
        report.records += 1;
        let Some((now, now_rule)) = decide(store, &record) else {
            report.skipped += 1;
            continue;
        };
        report.replayed += 1;
        let was = record
            .get("decision")
            .and_then(Json::as_str)
            .unwrap_or("deny");
        let was_rule = record.get("rule").and_then(Json::as_str);
        let change = if was != now {
            format!("{was}→{now}")
        } else if was_rule != now_rule.as_deref() {
            "rule changed".to_string()
        } else {
            continue;
        };
        let r = &record["request"];
        let path = r["path"].as_str().unwrap_or_default();
        let c = Change {
            tenant: record["tenant"].as_str().unwrap_or("-").to_string(),
            method: r["method"].as_str().unwrap_or_default().to_string(),
            path: path.split('?').next().unwrap_or_default().to_string(),
            change,
            was: verdict(was, was_rule),
            now: verdict(&now, now_rule.as_deref()),
        };
        *counts.entry(c).or_default() += 1;
    }
    report.changes = counts.into_iter().collect();
    Ok(report)
}

/// The report as text: a line per change, grouped by tenant.
pub fn render_text(report: &Report) -> String {
    let mut out = String::new();
    let mut tenant = "";
    for (c, n) in &report.changes {
        if c.tenant != tenant {
            out.push_str(&format!("{}:\n", c.tenant));
            tenant = &c.tenant;
        }
        out.push_str(&format!(
            "  {} {}: {} x{n} (was {}, now {})\n",
            c.method, c.path, c.change, c.was, c.now
        ));
    }
    let changed: usize = report.changes.iter().map(|(_, n)| n).sum();
    out.push_str(&format!(
        "{} records: {} replayed, {} skipped (identity stage or incomplete), {changed} changed\n",
        report.records, report.replayed, report.skipped
    ));
    out
}

/// Reads the log file.
pub fn read_log(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}
