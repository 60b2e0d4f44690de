//! `portcullis reach`: what a caller can reach, offline, over the compiled
//! policies of a directory (the analysis itself is [`crate::policy::reach`]).
//!
//! The caller is given as one of: claims in a JSON file, presented as Envoy's
//! `jwt_authn` filter passes them (`envoy_jwt`, the default) or as a token
//! portcullis verified itself (`jwt`: taken as given, the issuer must be one
//! the tenant trusts); a token in a file, verified against the tenant's
//! issuers with the keys the policy holds locally (an inline or file JWKS; an
//! issuer whose keys are only at a URL is refused as not available offline);
//! a SPIFFE ID, presented as an mTLS peer; or nobody (`anonymous`). Except
//! for `jwt` claims, the identity is established by the same code a check
//! runs ([`crate::identity::authenticate`]), so issuer trust, trust domains
//! and claim bounds apply as they would.
//!
//! Never imported by: any other module of the crate.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Value as Json, json};

use crate::app::suite::{TestFile, TestRequest, request_json};
use crate::identity::{AuthMethod, Identity};
use crate::policy::CompiledTenant;
use crate::policy::reach::{Grant, reach};
use crate::tenants::store::PolicyStore;

/// Who asks.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Claims, and how they were presented.
    Claims(serde_json::Map<String, Json>, AuthMethod),
    /// A token, verified by the tenant's own issuers.
    Token(String),
    Spiffe(String),
    Anonymous,
}

/// One tenant's answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TenantReach {
    pub tenant: String,
    /// How the caller was identified here (`anonymous` when not at all).
    pub auth_method: String,
    /// Set when the tenant refuses the credential: every request is denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    pub grants: Vec<Grant>,
}

/// The identity a check of `tenant` would give `caller`.
pub fn identify(
    store: &PolicyStore,
    tenant: &CompiledTenant,
    caller: &Caller,
) -> Result<Identity, String> {
    let mut request = TestRequest {
        host: tenant
            .hosts
            .first()
            .map(|h| h.to_string().replace('*', "any")),
        path: "/".into(),
        ..TestRequest::default()
    };
    match caller {
        Caller::Anonymous => return Ok(Identity::anonymous()),
        Caller::Claims(claims, AuthMethod::EnvoyJwt) => {
            request.claims = Some(Json::Object(claims.clone()));
        }
        Caller::Claims(claims, method) => {
            let text = |k: &str| claims.get(k).and_then(Json::as_str).map(str::to_string);
            let issuer = text("iss");
            if *method == AuthMethod::Anonymous {
                return Ok(Identity::anonymous());
            }
            if !issuer.as_ref().is_some_and(|i| tenant.issuers.contains(i)) {
                return Err(
                    "issuer_not_trusted: the claims' iss is not an issuer of the tenant".into(),
                );
            }
            let mut identity = Identity::anonymous();
            identity.method = *method;
            identity.subject = text("sub");
            identity.issuer = issuer;
            identity.token_id = text("jti");
            identity.claims = Arc::new(claims.clone());
            return Ok(identity);
        }
        Caller::Token(token) => {
            request.headers = BTreeMap::from([("authorization".into(), format!("Bearer {token}"))]);
        }
        Caller::Spiffe(id) => request.peer = Some(id.clone()),
    }
    let suite = TestFile {
        description: None,
        tenant: None,
        cases: Vec::new(),
    };
    let check = crate::app::request_json::check_request_from_json(&request_json(&suite, &request))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let input = crate::request::read(store.limits(), &check)
        .map_err(|e| format!("{}: {e}", e.reason().code()))?;
    crate::identity::authenticate(&tenant.identity, &input)
        .map_err(|e| format!("{}: {e}", e.reason().code()))
}

/// Every tenant's (or one's) grants for `caller`, tenants by id.
pub fn reach_all(
    store: &PolicyStore,
    tenants: &[Arc<CompiledTenant>],
    caller: &Caller,
    now: u64,
) -> Vec<TenantReach> {
    let mut out: Vec<TenantReach> = tenants
        .iter()
        .map(|t| {
            let data = store.data(&t.id);
            let data = data.as_ref().map(|d| &d.value);
            match identify(store, t, caller) {
                Ok(identity) => TenantReach {
                    tenant: t.id.to_string(),
                    auth_method: identity.method.as_str().into(),
                    refused: None,
                    grants: reach(t, &identity, data, now),
                },
                Err(why) => TenantReach {
                    tenant: t.id.to_string(),
                    auth_method: AuthMethod::Anonymous.as_str().into(),
                    refused: Some(why),
                    grants: Vec::new(),
                },
            }
        })
        .collect();
    out.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    out
}

/// The answer as a table: one line per grant, its conditions indented below.
pub fn render_table(reaches: &[TenantReach]) -> String {
    let mut rows: Vec<[String; 4]> = Vec::new();
    let mut notes: Vec<(usize, String)> = Vec::new();
    for t in reaches {
        if let Some(why) = &t.refused {
            notes.push((
                rows.len(),
                format!(
                    "{}: credential refused ({why}); every request is denied",
                    t.tenant
                ),
            ));
            continue;
        }
        if t.grants.is_empty() {
            notes.push((rows.len(), format!("{}: nothing reachable", t.tenant)));
        }
        for g in &t.grants {
            let rule = if g.public {
                format!("{} (public)", g.rule)
            } else {
                g.rule.clone()
            };
            rows.push([t.tenant.clone(), g.method.clone(), g.route.clone(), rule]);
            let mut extra = Vec::new();
            if !g.hosts.is_empty() {
                extra.push(format!("on hosts {}", g.hosts.join(", ")));
            }
            if !g.scopes.is_empty() {
                extra.push(format!("scopes {}", g.scopes.join(" ")));
            }
            match &g.when {
                None => extra.push("always".into()),
                Some(r) => extra.push(format!("when {}{}", r.cel, depends(&r.depends_on))),
            }
            for u in &g.unless {
                let mut s = format!("unless deny rule {}", u.rule);
                if !u.methods.is_empty() {
                    s.push_str(&format!(" (on {})", u.methods.join(", ")));
                }
                if let Some(route) = &u.route {
                    s.push_str(&format!(" on {route}"));
                }
                match &u.when {
                    None => s.push_str(" (always)"),
                    Some(r) => s.push_str(&format!(" when {}{}", r.cel, depends(&r.depends_on))),
                }
                extra.push(s);
            }
            for e in extra {
                notes.push((rows.len(), format!("    {e}")));
            }
        }
    }
    let mut width = [6usize, 6, 5, 4];
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |r: &[String; 4]| {
        format!(
            "{:w0$}  {:w1$}  {:w2$}  {}\n",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2]
        )
    };
    let mut out = line(&[
        "TENANT".into(),
        "METHOD".into(),
        "ROUTE".into(),
        "RULE".into(),
    ]);
    let mut n = 0;
    for (i, r) in rows.iter().enumerate() {
        while n < notes.len() && notes[n].0 <= i {
            out.push_str(&notes[n].1);
            out.push('\n');
            n += 1;
        }
        out.push_str(&line(r));
    }
    for (_, note) in &notes[n..] {
        out.push_str(note);
        out.push('\n');
    }
    out
}

fn depends(on: &[String]) -> String {
    if on.is_empty() {
        String::new()
    } else {
        format!("  [depends on {}]", on.join(", "))
    }
}

/// The answer as JSON.
pub fn render_json(reaches: &[TenantReach]) -> String {
    serde_json::to_string_pretty(&json!({ "tenants": reaches })).unwrap_or_default() + "\n"
}

/// Reads the `--claims` file: a JSON object.
pub fn read_claims(path: &Path) -> Result<serde_json::Map<String, Json>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    match serde_json::from_str(&text) {
        Ok(Json::Object(m)) => Ok(m),
        Ok(_) => Err(format!("{}: claims must be a JSON object", path.display())),
        Err(e) => Err(format!(
            "{}:{}: not valid JSON: {e}",
            path.display(),
            e.line()
        )),
    }
}
