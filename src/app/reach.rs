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

#[cfg(test)]
mod tests {
    //! `reach` against `check`: a grant, made concrete with its residual
    //! satisfied, is allowed; a (method, path) no grant covers is denied.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::pipeline::Pipeline;
    use crate::policy::Condition;
    use crate::policy::cel::Variables;
    use crate::request::path::{Template, canonical_segments};
    use crate::request::tenancy::TenantResolver;
    use proptest::prelude::*;

    fn examples() -> (Arc<PolicyStore>, Vec<Arc<CompiledTenant>>) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies");
        let store = Arc::new(PolicyStore::new(dir));
        let status = store.reload();
        assert!(status.errors.is_empty(), "{:?}", status.errors);
        let tenants = status
            .tenants
            .iter()
            .filter_map(|t| store.tenant(&t.tenant))
            .collect();
        (store, tenants)
    }

    /// A concrete request: method, path params, headers and body.
    #[derive(Debug, Clone)]
    struct Concrete {
        method: String,
        params: Vec<(String, String)>,
        headers: BTreeMap<String, String>,
        body: Option<Json>,
    }

    fn fill(route: &str, params: &[(String, String)]) -> String {
        let mut path = route.to_string();
        for (k, v) in params {
            path = path
                .replace(&format!("{{{k}...}}"), v)
                .replace(&format!("{{{k}}}"), v);
        }
        path
    }

    fn literals(text: &str, out: &mut Vec<String>) {
        let mut rest = text;
        while let Some(start) = rest.find('"') {
            let after = &rest[start + 1..];
            let Some(end) = after.find('"') else { break };
            out.push(after[..end].to_string());
            rest = &after[end + 1..];
        }
    }

    /// Whether `cel` holds on the concrete request.
    fn holds(
        cel: &str,
        tenant: &CompiledTenant,
        identity: &Identity,
        data: Option<&::cel::Value>,
        c: &Concrete,
        path: &str,
    ) -> bool {
        let condition = Condition::compile(cel).unwrap();
        let resource = json!({
            "method": c.method,
            "path": path,
            "host": tenant.hosts[0].to_string(),
            "params": c.params.iter().cloned().collect::<BTreeMap<_, _>>(),
            "headers": c.headers,
            "body": c.body.clone().unwrap_or(Json::Null),
            "query": {},
        });
        let vars = Variables {
            claims: crate::policy::json_to_cel(&Json::Object((*identity.claims).clone())),
            resource: crate::policy::json_to_cel(&resource),
            context: crate::policy::json_to_cel(&json!({ "tenant": &*tenant.id })),
            data: data.cloned().unwrap_or_else(|| crate::policy::cel::map([])),
        };
        condition.evaluate(&vars).unwrap_or(false)
    }

    fn request(tenant: &CompiledTenant, caller: &Caller, c: &Concrete, path: &str) -> TestRequest {
        let mut r = TestRequest {
            method: Some(c.method.clone()),
            host: Some(tenant.hosts[0].to_string()),
            path: path.to_string(),
            headers: c.headers.clone(),
            body: c.body.clone(),
            ..TestRequest::default()
        };
        match caller {
            Caller::Claims(claims, _) => r.claims = Some(Json::Object(claims.clone())),
            Caller::Spiffe(id) => r.peer = Some(id.clone()),
            Caller::Token(_) | Caller::Anonymous => {}
        }
        r
    }

    fn decide(pipeline: &Pipeline, r: &TestRequest) -> crate::decision::Decision {
        let suite = TestFile {
            description: None,
            tenant: None,
            cases: Vec::new(),
        };
        let check =
            crate::app::request_json::check_request_from_json(&request_json(&suite, r)).unwrap();
        pipeline.check(&check)
    }

    /// Checks every prediction for `caller`; returns how many grants were
    /// made concrete and checked.
    fn agree(caller: &Caller) -> Result<usize, TestCaseError> {
        let (store, tenants) = examples();
        let pipeline = Pipeline::new(Arc::clone(&store), TenantResolver::default());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut checked = 0;
        for tenant in &tenants {
            let data = store.data(&tenant.id);
            let data = data.as_ref().map(|d| &d.value);
            let identity = identify(&store, tenant, caller);
            let grants = match &identity {
                Ok(i) => reach(tenant, i, data, now),
                Err(_) => Vec::new(),
            };
            let identity = identity.unwrap_or_else(|_| Identity::anonymous());
            // Values worth trying: every literal the rules and residuals name.
            let mut values = vec!["x1".to_string()];
            for g in &grants {
                for r in g
                    .when
                    .iter()
                    .chain(g.unless.iter().filter_map(|u| u.when.as_ref()))
                {
                    literals(&r.cel, &mut values);
                }
            }
            values.extend(["acme", "n1"].map(String::from));
            values.retain(|v| {
                !v.is_empty() && !v.contains(['/', '%', '?', '#']) && v != "." && v != ".."
            });
            values.sort();
            values.dedup();
            let mut bodies = vec![None];
            if tenant.reads.resource.wants("body") {
                bodies.extend([
                    Some(json!({ "amount": 10 })),
                    Some(json!({ "amount": 5000 })),
                ]);
            }
            let mut headers = vec![BTreeMap::new()];
            if tenant.reads.resource.wants("headers") {
                headers.push(BTreeMap::from([(
                    "x-justification".to_string(),
                    "INC-4711".to_string(),
                )]));
            }
            let mut methods: Vec<&str> = tenant
                .set
                .rules
                .iter()
                .flat_map(|r| r.methods.iter().map(String::as_str))
                .chain(["DELETE"])
                .collect();
            methods.sort_unstable();
            methods.dedup();
            let routes: Vec<String> = tenant
                .set
                .rules
                .iter()
                .map(|r| r.template.as_str().to_string())
                .collect();
            for route in &routes {
                let template = Template::parse(route).unwrap();
                let names: Vec<String> = template.params().map(String::from).collect();
                for &method in &methods {
                    // Every assignment of the tried values to the route's params.
                    let mut assignments: Vec<Vec<(String, String)>> = vec![Vec::new()];
                    for n in &names {
                        assignments = assignments
                            .into_iter()
                            .flat_map(|a| {
                                values.iter().map(move |v| {
                                    let mut a = a.clone();
                                    a.push((n.clone(), v.clone()));
                                    a
                                })
                            })
                            .collect();
                    }
                    for params in assignments.iter().take(12) {
                        let path = fill(route, params);
                        let Ok(segments) = canonical_segments(&path) else {
                            continue;
                        };
                        for body in &bodies {
                            for hs in &headers {
                                let c0 = Concrete {
                                    method: method.to_string(),
                                    params: Vec::new(),
                                    headers: hs.clone(),
                                    body: body.clone(),
                                };
                                let covering: Vec<&Grant> = grants
                                    .iter()
                                    .filter(|g| g.method == method || g.method == "*")
                                    .filter(|g| {
                                        Template::parse(&g.route)
                                            .unwrap()
                                            .matches(&segments)
                                            .is_some()
                                    })
                                    .collect();
                                let decision =
                                    decide(&pipeline, &request(tenant, caller, &c0, &path));

                                if covering.is_empty() {
                                    prop_assert!(
                                        !decision.allowed,
                                        "{}: {method} {path} is allowed by {:?} but reach omits it",
                                        tenant.id,
                                        decision.rule
                                    );
                                    continue;
                                }
                                // Predicted allowed: some covering grant whose
                                // residual holds and no unless applies.
                                let predicted = covering.iter().any(|g| {
                                    let bound = Template::parse(&g.route)
                                        .unwrap()
                                        .matches(&segments)
                                        .unwrap();
                                    let c = Concrete {
                                        params: bound,
                                        ..c0.clone()
                                    };
                                    let when = g.when.as_ref().is_none_or(|r| {
                                        holds(&r.cel, tenant, &identity, data, &c, &path)
                                    });
                                    let refused = g.unless.iter().any(|u| {
                                        let route_hit = u.route.as_ref().is_none_or(|r| {
                                            Template::parse(r).unwrap().matches(&segments).is_some()
                                        });
                                        let method_hit = u.methods.is_empty()
                                            || u.methods.iter().any(|m| m == method);
                                        let bound =
                                            u.route.as_ref().map_or(c.params.clone(), |r| {
                                                Template::parse(r)
                                                    .unwrap()
                                                    .matches(&segments)
                                                    .unwrap_or_default()
                                            });
                                        let cu = Concrete {
                                            params: bound,
                                            ..c.clone()
                                        };
                                        route_hit
                                            && method_hit
                                            && u.when.as_ref().is_none_or(|r| {
                                                holds(&r.cel, tenant, &identity, data, &cu, &path)
                                            })
                                    });
                                    when && !refused
                                });
                                if predicted {
                                    checked += 1;
                                    prop_assert!(
                                        decision.allowed,
                                        "{}: reach predicts {method} {path} (body {body:?}, headers {hs:?}) allowed; check says {} ({:?})",
                                        tenant.id,
                                        decision.reason.code(),
                                        decision.rule
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(checked)
    }

    fn claims_caller(
        iss: &str,
        sub: &str,
        tenant: &str,
        scopes: Vec<&str>,
        roles: Vec<&str>,
        acr: Option<&str>,
    ) -> Caller {
        let mut c = serde_json::Map::new();
        c.insert("iss".into(), json!(iss));
        c.insert("sub".into(), json!(sub));
        c.insert("tenant".into(), json!(tenant));
        c.insert("scope".into(), json!(scopes));
        if !roles.is_empty() {
            c.insert("roles".into(), json!(roles));
        }
        if let Some(a) = acr {
            c.insert("acr".into(), json!(a));
        }
        Caller::Claims(c, AuthMethod::EnvoyJwt)
    }

    #[test]
    fn predictions_are_checked_for_known_callers() {
        let alice = claims_caller(
            "https://idp.acme.example",
            "alice",
            "acme",
            vec!["orders:read", "orders:write"],
            vec![],
            None,
        );
        let op = claims_caller(
            "https://idp.billing.example",
            "op",
            "billing",
            vec!["invoices:read", "refunds:write"],
            vec!["break-glass"],
            Some("urn:billing:mfa"),
        );
        let notes = claims_caller(
            "https://idp.notes.example",
            "alice",
            "notes",
            vec![],
            vec![],
            None,
        );
        let shop = Caller::Spiffe("spiffe://globex.example/ns/shop/sa/web".into());
        let mut total = 0;
        for caller in [alice, op, notes, shop, Caller::Anonymous] {
            total += agree(&caller).unwrap();
        }
        // Not vacuous: many predictions were made concrete and checked.
        assert!(total > 50, "only {total} predictions checked");
    }

    fn caller() -> impl Strategy<Value = Caller> {
        let issuers = prop::sample::select(vec![
            "https://idp.acme.example",
            "https://idp.billing.example",
            "https://idp.notes.example",
            "https://idp.other.example",
        ]);
        let subs = prop::sample::select(vec!["alice", "bob", "root", "op"]);
        let tenants = prop::sample::select(vec!["acme", "globex"]);
        let scopes = prop::sample::subsequence(
            vec![
                "orders:read",
                "orders:write",
                "invoices:read",
                "invoices:write",
                "refunds:write",
            ],
            0..=5,
        );
        let roles = prop::sample::subsequence(vec!["admin", "break-glass", "user"], 0..=3);
        let acr = prop::option::of(prop::sample::select(vec![
            "urn:billing:mfa",
            "urn:billing:pwd",
        ]));
        let claims = (issuers, subs, tenants, scopes, roles, acr)
            .prop_map(|(i, s, t, sc, r, a)| claims_caller(i, s, t, sc, r, a));
        let spiffe = prop::sample::select(vec![
            "spiffe://acme.example/ns/shop/sa/cart",
            "spiffe://acme.example/ns/batch/sa/job",
            "spiffe://globex.example/ns/shop/sa/web",
        ])
        .prop_map(|id| Caller::Spiffe(id.to_string()));
        prop_oneof![4 => claims, 1 => spiffe, 1 => Just(Caller::Anonymous)]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]
        /// Every allow `reach` predicts (its residual satisfied) is allowed by
        /// a check, and every (method, path) it omits is denied.
        #[test]
        fn reach_agrees_with_check(caller in caller()) {
            agree(&caller)?;
        }
    }
}
