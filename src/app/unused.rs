//! `portcullis unused`: grants never exercised, from decision logs and the
//! policies.
//!
//! Per tenant and caller (the client id when the token has one, else the
//! subject; a SPIFFE workload is its ID): the scopes its tokens presented
//! (the log's `scopes`), the scopes the rules that allowed it required (each
//! allowing rule's `scopes`, looked up in the policies), the rules that
//! allowed it, and the allow rules its scopes would let it reach. The
//! suggested scope set is the used one. A log line holding a token-like value
//! (a JWT-shaped string, or a long opaque one in a field that should hold a
//! name) is refused: logs given to this command must not carry credentials.
//!
//! Never imported by: any other module of the crate.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value as Json;

use crate::tenants::store::PolicyStore;

/// One caller's use of its grants.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Usage {
    pub tenant: String,
    pub caller: String,
    pub auth_method: String,
    pub presented: BTreeSet<String>,
    pub required: BTreeSet<String>,
    pub unused: BTreeSet<String>,
    pub rules_used: BTreeSet<String>,
    pub rules_grantable: BTreeSet<String>,
    pub suggested: BTreeSet<String>,
}

/// Fields holding ids and digests, not names: not checked for secrets.
const ID_FIELDS: [&str; 4] = ["decision_id", "trace_id", "policy_digest", "time"];

/// Whether a string looks like a credential: JWT-shaped, or 32+ characters
/// of base64url with letters and digits and nothing else.
pub fn secret_like(value: &str) -> bool {
    crate::observe::replay::token_like(value)
        || (value.len() >= 32
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && value.bytes().any(|b| b.is_ascii_digit())
            && value.bytes().any(|b| b.is_ascii_alphabetic()))
}

fn check_secrets(v: &Json, field: &str) -> Result<(), String> {
    match v {
        Json::String(s) if !ID_FIELDS.contains(&field) && secret_like(s) => Err(format!(
            "field {field:?} holds a token-like value; decision logs must not carry credentials"
        )),
        Json::Array(a) => a.iter().try_for_each(|x| check_secrets(x, field)),
        Json::Object(m) => m.iter().try_for_each(|(k, x)| check_secrets(x, k)),
        _ => Ok(()),
    }
}

fn strings(v: Option<&Json>) -> BTreeSet<String> {
    v.and_then(Json::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Json::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Reads decision log lines within `[since, until)` (RFC 3339, compared as
/// the log writes them) and accounts each caller's grants.
pub fn unused(
    store: &PolicyStore,
    log: &str,
    since: Option<&str>,
    until: Option<&str>,
) -> Result<Vec<Usage>, String> {
    let mut by: BTreeMap<(String, String), Usage> = BTreeMap::new();
    for (n, line) in log.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Json =
            serde_json::from_str(line).map_err(|e| format!("line {}: not JSON: {e}", n + 1))?;
        check_secrets(&v, "").map_err(|e| format!("line {}: {e}", n + 1))?;
        let time = v["time"].as_str().unwrap_or_default();
        if since.is_some_and(|s| time < s) || until.is_some_and(|u| time >= u) {
            continue;
        }
        let (Some(tenant), Some(caller)) = (
            v["tenant"].as_str(),
            v["client_id"].as_str().or(v["subject"].as_str()),
        ) else {
            continue;
        };
        let u = by
            .entry((tenant.to_string(), caller.to_string()))
            .or_insert_with(|| Usage {
                tenant: tenant.into(),
                caller: caller.into(),
                auth_method: v["auth_method"].as_str().unwrap_or_default().into(),
                ..Usage::default()
            });
        u.presented.extend(strings(v.get("scopes")));
        if v["decision"] == "allow"
            && let Some(rule) = v["rule"].as_str()
        {
            u.rules_used.insert(rule.to_string());
        }
    }
    let mut out = Vec::new();
    for (_, mut u) in by {
        if let Some(t) = store.tenant(&u.tenant) {
            for (id, scopes) in t.allow_rule_scopes() {
                if u.rules_used.contains(id) {
                    u.required.extend(scopes.iter().cloned());
                }
                if scopes.iter().all(|s| u.presented.contains(s)) {
                    u.rules_grantable.insert(id.to_string());
                }
            }
        }
        u.unused = u.presented.difference(&u.required).cloned().collect();
        u.suggested = u.required.clone();
        out.push(u);
    }
    Ok(out)
}

/// The report as text, a block per caller.
pub fn render_text(usages: &[Usage]) -> String {
    let join = |s: &BTreeSet<String>| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.iter().cloned().collect::<Vec<_>>().join(" ")
        }
    };
    let mut out = String::new();
    for u in usages {
        out.push_str(&format!("{} {} ({})\n", u.tenant, u.caller, u.auth_method));
        out.push_str(&format!("  presented:       {}\n", join(&u.presented)));
        out.push_str(&format!("  required:        {}\n", join(&u.required)));
        out.push_str(&format!("  unused:          {}\n", join(&u.unused)));
        out.push_str(&format!("  rules used:      {}\n", join(&u.rules_used)));
        out.push_str(&format!(
            "  rules grantable: {}\n",
            join(&u.rules_grantable)
        ));
        out.push_str(&format!("  suggested:       {}\n", join(&u.suggested)));
    }
    out
}
