//! Cedar policies, run by `cedar-policy`: a tenant's policies, schema and
//! entities compiled once ([`CedarPolicy::compile`]) — the policies validated
//! against the schema in strict mode, so one that does not validate does not
//! load — then one authorization per check ([`CedarPolicy::evaluate`]) over
//! the request mapped by [`super::cedar_input`] (docs/cedar.md).
//!
//! The decision is Cedar's, read fail-closed: the determining policies name
//! the rule; a policy that errors at run time denies the request
//! (`policy_error`) where Cedar alone would skip that policy, so a `forbid`
//! that cannot be evaluated never lets a `permit` through.
//!
//! Bounds: policy and schema files of at most [`MAX_CEDAR_FILE_BYTES`], at
//! most [`MAX_CEDAR_ROUTES`] routes. Cedar has no loops or recursion: an
//! evaluation's work is bounded by the policies' size, so it runs without a
//! timer; the caller's deadline is checked before it starts.
//!
//! Never imports: decision, tenants or anything above them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityUid, PolicyId, PolicySet, Request,
    Schema, ValidationMode, Validator,
};
use miette::Diagnostic;
use serde_json::Value as Json;

use crate::identity::Identity;
use crate::request::input::{Body, Input};
use crate::request::path::{RouteIndex, Template};

use super::cedar_input;
pub use super::rego::LoadError;

/// Largest policy, schema or entities file, in bytes.
pub const MAX_CEDAR_FILE_BYTES: usize = 256 * 1024;
/// Most routes one Cedar tenant may declare.
pub const MAX_CEDAR_ROUTES: usize = 256;
/// The resource type of a route that names none.
pub const DEFAULT_RESOURCE_TYPE: &str = "Route";

/// One file's name and text.
#[derive(Debug, Clone)]
pub struct Source {
    pub file: PathBuf,
    pub text: String,
}

/// A route of a Cedar tenant: which requests it covers and how they are named
/// to Cedar.
#[derive(Debug, Clone)]
pub struct Route {
    pub template: Template,
    /// Upper-case methods; empty is any.
    pub methods: Vec<String>,
    /// The action's id; `None` is `"<METHOD> <template>"`.
    pub action: Option<String>,
    pub resource_type: String,
    /// The route's line in the tenant file, for load errors.
    pub line: Option<usize>,
}

impl Route {
    /// The action id for a request with `method` on this route.
    pub fn action_id(&self, method: &str) -> String {
        self.action
            .clone()
            .unwrap_or_else(|| format!("{method} {}", self.template.as_str()))
    }

    /// Every action id this route can produce (one per method, or the named one).
    fn action_ids(&self) -> Vec<String> {
        match (&self.action, self.methods.is_empty()) {
            (Some(a), _) => vec![a.clone()],
            (None, false) => self.methods.iter().map(|m| self.action_id(m)).collect(),
            (None, true) => Vec::new(),
        }
    }
}

/// A tenant's compiled Cedar: validated policies, the entities file (with the
/// schema's actions), the routes, shared by `Arc` across checks and tenants.
#[derive(Debug)]
pub struct CedarPolicy {
    policies: PolicySet,
    entities: Entities,
    routes: Vec<Route>,
    index: RouteIndex,
    /// Request headers the context exposes (`context.headers`).
    headers: Vec<String>,
    /// Each policy's name for the decision: its `@id` annotation, else
    /// Cedar's id (`policy0`, …).
    names: HashMap<PolicyId, Arc<str>>,
    /// Some policy reads `context.body`: a body that is not whole JSON denies.
    reads_body: bool,
}

/// What one Cedar check decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No route covers the request: Cedar is not asked.
    NoRoute,
    /// Permitted; the determining `permit` policies.
    Allow(Vec<Arc<str>>),
    /// Denied; the determining `forbid` policies (empty: no `permit` applied).
    Deny(Vec<Arc<str>>),
    /// A policy errored, or the request could not be built: denied.
    Error(Vec<Arc<str>>, String),
    /// A policy reads the body, and it is truncated or not JSON.
    BodyUnavailable,
}

/// A check's verdict, with what it was asked (for explanations).
#[derive(Debug, Clone)]
pub struct Judged {
    pub verdict: Verdict,
    pub params: Vec<(String, String)>,
    /// `principal`, `action`, `resource`, as Cedar saw them.
    pub asked: Option<(String, String, String)>,
}

impl CedarPolicy {
    /// Compiles and validates. Every error names its file and, where Cedar
    /// gives a source span, its line. `tenant_file` names route errors.
    pub fn compile(
        policies: &Source,
        schema: &Source,
        entities: Option<&Source>,
        routes: Vec<Route>,
        headers: Vec<String>,
        tenant_file: &Path,
    ) -> Result<CedarPolicy, Vec<LoadError>> {
        let mut errors = Vec::new();
        for s in [Some(policies), Some(schema), entities]
            .into_iter()
            .flatten()
        {
            if s.text.len() > MAX_CEDAR_FILE_BYTES {
                errors.push(LoadError {
                    file: s.file.clone(),
                    line: None,
                    message: format!("file is larger than {MAX_CEDAR_FILE_BYTES} bytes"),
                });
            }
        }
        if routes.is_empty() || routes.len() > MAX_CEDAR_ROUTES {
            errors.push(LoadError {
                file: tenant_file.to_path_buf(),
                line: None,
                message: format!(
                    "policy.cedar.routes must name between 1 and {MAX_CEDAR_ROUTES} routes, found {}",
                    routes.len()
                ),
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let parsed_schema = if schema.file.extension().is_some_and(|e| e == "json") {
            Schema::from_json_str(&schema.text).map_err(|e| located(schema, &e))
        } else {
            Schema::from_cedarschema_str(&schema.text)
                .map(|(s, _warnings)| s)
                .map_err(|e| located(schema, &e))
        };
        let schema_parsed = match parsed_schema {
            Ok(s) => s,
            Err(e) => return Err(vec![e]),
        };
        let set: PolicySet = match policies.text.parse::<PolicySet>() {
            Ok(set) => set,
            Err(errs) => return Err(errs.iter().map(|e| located(policies, e)).collect()),
        };
        let names: HashMap<PolicyId, Arc<str>> = set
            .policies()
            .map(|p| {
                let name = p.annotation("id").unwrap_or(p.id().as_ref());
                (p.id().clone(), Arc::from(name))
            })
            .collect();
        let validator = Validator::new(schema_parsed);
        let result = validator.validate(&set, ValidationMode::Strict);
        for e in result.validation_errors() {
            let mut err = located(policies, e);
            let name = names.get(e.policy_id()).map_or("?", |n| n);
            // Cedar names the policy by its id; the message names it once, by its name.
            let own = format!("for policy `{}`, ", e.policy_id());
            let message = err.message.replacen(&own, "", 1);
            err.message = format!("policy {name}: {message}");
            errors.push(err);
        }
        let schema_parsed = validator.schema();
        let declared: HashSet<String> = schema_parsed
            .actions()
            .map(|a| a.id().unescaped().to_string())
            .collect();
        let types: HashSet<String> = schema_parsed
            .entity_types()
            .map(ToString::to_string)
            .collect();
        for route in &routes {
            let at = |message: String| LoadError {
                file: tenant_file.to_path_buf(),
                line: route.line,
                message: format!("policy.cedar.routes {}: {message}", route.template.as_str()),
            };
            if route.action.is_none() && route.methods.is_empty() {
                errors.push(at(
                    "a route without `action` needs `methods` (the action is \"<METHOD> <path>\")"
                        .into(),
                ));
            }
            for action in route.action_ids() {
                if !declared.contains(&action) {
                    errors.push(at(format!(
                        "action {action:?} is not declared in the schema ({})",
                        schema.file.display()
                    )));
                }
            }
            if !types.contains(&route.resource_type) {
                errors.push(at(format!(
                    "resource type {} is not declared in the schema ({})",
                    route.resource_type,
                    schema.file.display()
                )));
            }
        }
        let loaded = match entities {
            Some(src) => {
                Entities::from_json_str(&src.text, Some(schema_parsed)).map_err(|e| LoadError {
                    file: src.file.clone(),
                    line: None,
                    message: format!("entities: {e}"),
                })
            }
            None => schema_parsed.action_entities().map_err(|e| LoadError {
                file: schema.file.clone(),
                line: None,
                message: format!("actions: {e}"),
            }),
        };
        let entities = loaded.map_err(|e| errors.push(e)).ok();
        if !errors.is_empty() {
            return Err(errors);
        }
        let reads_body = set
            .policies()
            .any(|p| p.to_json().is_ok_and(|j| reads_context_body(&j)));
        let mut index = RouteIndex::default();
        for (i, r) in routes.iter().enumerate() {
            index.insert(&r.template, i);
        }
        index.shrink_to_fit();
        Ok(CedarPolicy {
            policies: set,
            entities: entities.unwrap_or_else(Entities::empty),
            routes,
            index,
            headers,
            names,
            reads_body,
        })
    }

    /// The number of policies.
    pub fn policy_count(&self) -> usize {
        self.policies.num_of_policies()
    }

    /// Decides one request. Never fails; never allows on error. `attributes`
    /// gives the tenant's resource attributes for the request's path.
    pub fn evaluate(
        &self,
        input: &Input,
        identity: &Identity,
        tenant: &str,
        attributes: Option<&BTreeMap<String, String>>,
        deadline: Option<Instant>,
    ) -> Judged {
        let resource = &input.resource;
        let found = self
            .index
            .hits(&resource.segments)
            .into_iter()
            .find_map(|i| {
                let route = &self.routes[i];
                let method_ok =
                    route.methods.is_empty() || route.methods.contains(&resource.method);
                if !method_ok {
                    return None;
                }
                route
                    .template
                    .matches(&resource.segments)
                    .map(|p| (route, p))
            });
        let Some((route, params)) = found else {
            return Judged {
                verdict: Verdict::NoRoute,
                params: Vec::new(),
                asked: None,
            };
        };
        let judged = |verdict, asked| Judged {
            verdict,
            params: params.clone(),
            asked,
        };
        if self.reads_body && matches!(resource.body, Body::Truncated | Body::Unparsed) {
            return judged(Verdict::BodyUnavailable, None);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return judged(
                Verdict::Error(
                    Vec::new(),
                    "the caller's deadline passed before evaluation".into(),
                ),
                None,
            );
        }
        let action_id = route.action_id(&resource.method);
        let (principal_uid, principal_attrs) = cedar_input::principal(identity);
        let uids = (
            cedar_input::uid("Action", &action_id),
            cedar_input::uid(&route.resource_type, &resource.path),
        );
        let (Some(action_uid), Some(resource_uid)) = uids else {
            return judged(
                Verdict::Error(Vec::new(), "route names an invalid entity type".into()),
                None,
            );
        };
        let asked = Some((
            principal_uid.to_string(),
            action_uid.to_string(),
            resource_uid.to_string(),
        ));
        let failed = |message: String| judged(Verdict::Error(Vec::new(), message), asked.clone());
        let principal = match self.entity(principal_uid.clone(), principal_attrs) {
            Ok(e) => e,
            Err(m) => return failed(format!("principal: {m}")),
        };
        let resource_entity = match self.entity(
            resource_uid.clone(),
            cedar_input::resource_attributes(&params, attributes),
        ) {
            Ok(e) => e,
            Err(m) => return failed(format!("resource: {m}")),
        };
        let context =
            match Context::from_pairs(cedar_input::context(input, identity, tenant, &self.headers))
            {
                Ok(c) => c,
                Err(e) => return failed(format!("context: {e}")),
            };
        let request = match Request::new(principal_uid, action_uid, resource_uid, context, None) {
            Ok(r) => r,
            Err(e) => return failed(format!("request: {e}")),
        };
        let entities = match self
            .entities
            .clone()
            .upsert_entities([principal, resource_entity], None)
        {
            Ok(e) => e,
            Err(e) => return failed(format!("entities: {e}")),
        };
        let response = Authorizer::new().is_authorized(&request, &self.policies, &entities);
        let diagnostics = response.diagnostics();
        let mut errored: Vec<Arc<str>> = Vec::new();
        let mut first: Option<String> = None;
        for e in diagnostics.errors() {
            let cedar_policy::AuthorizationError::PolicyEvaluationError(pe) = e;
            errored.push(self.name(pe.policy_id()));
            first.get_or_insert_with(|| e.to_string());
        }
        if let Some(message) = first {
            return judged(Verdict::Error(errored, message), asked);
        }
        let mut deciding: Vec<Arc<str>> = diagnostics.reason().map(|id| self.name(id)).collect();
        deciding.sort();
        let verdict = match response.decision() {
            Decision::Allow => Verdict::Allow(deciding),
            Decision::Deny => Verdict::Deny(deciding),
        };
        judged(verdict, asked)
    }

    /// A policy's name (see [`CedarPolicy::names`]).
    fn name(&self, id: &PolicyId) -> Arc<str> {
        self.names
            .get(id)
            .cloned()
            .unwrap_or_else(|| Arc::from(id.as_ref()))
    }

    /// An entity of the request with `attrs`, and the parents the entities
    /// file gives the same uid (group membership).
    fn entity(
        &self,
        uid: EntityUid,
        attrs: HashMap<String, cedar_policy::RestrictedExpression>,
    ) -> Result<Entity, String> {
        let parents = self
            .entities
            .get(&uid)
            .map(|e| e.clone().into_inner().2)
            .unwrap_or_default();
        Entity::new(uid, attrs, parents).map_err(|e| e.to_string())
    }
}

/// Whether a policy's JSON form reads `context.body`.
fn reads_context_body(json: &Json) -> bool {
    match json {
        Json::Object(m) => {
            // `context.body` and `context has body`.
            let of_context_body = |op: &Json| {
                op.get("attr").and_then(Json::as_str) == Some("body")
                    && op
                        .get("left")
                        .and_then(|l| l.get("Var"))
                        .and_then(Json::as_str)
                        == Some("context")
            };
            let here = [".", "has"]
                .iter()
                .any(|k| m.get(*k).is_some_and(of_context_body));
            here || m.values().any(reads_context_body)
        }
        Json::Array(items) => items.iter().any(reads_context_body),
        _ => false,
    }
}

/// A Cedar error as a load error: the file, the line of its first source
/// span, the message with Cedar's help.
fn located(source: &Source, e: &dyn Diagnostic) -> LoadError {
    let line = e
        .labels()
        .and_then(|mut l| l.next())
        .map(|span| line_at(&source.text, span.offset()));
    let mut message = e.to_string();
    if let Some(help) = e.help() {
        message.push_str(&format!(" ({help})"));
    }
    LoadError {
        file: source.file.clone(),
        line,
        message,
    }
}

/// The 1-based line holding byte `offset` of `text`.
fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::identity::AuthMethod;
    use serde_json::json;

    const SCHEMA: &str = r#"entity Jwt = { sub: String, scope?: Set<String>, tenant?: String };
entity Anonymous;
entity Order = { tenant: String, order: String, classification?: String };
action "read" appliesTo { principal: [Jwt, Anonymous], resource: Order, context: {} };
"#;

    fn source(name: &str, text: &str) -> Source {
        Source {
            file: PathBuf::from(name),
            text: text.to_string(),
        }
    }

    fn routes() -> Vec<Route> {
        vec![Route {
            template: Template::parse("/tenants/{tenant}/orders/{order}").unwrap(),
            methods: vec!["GET".into()],
            action: Some("read".into()),
            resource_type: "Order".into(),
            line: Some(7),
        }]
    }

    fn compile(policies: &str) -> Result<CedarPolicy, Vec<LoadError>> {
        CedarPolicy::compile(
            &source("authz.cedar", policies),
            &source("authz.cedarschema", SCHEMA),
            None,
            routes(),
            Vec::new(),
            Path::new("t.yaml"),
        )
    }

    fn input(path: &str) -> Input {
        let mut input = Input::default();
        input.resource.method = "GET".into();
        input.resource.path = path.into();
        input.resource.segments = crate::request::path::canonical_segments(path).unwrap();
        input
    }

    fn caller(claims: serde_json::Value) -> Identity {
        let mut id = Identity::anonymous();
        id.method = AuthMethod::Jwt;
        id.subject = claims["sub"].as_str().map(String::from);
        id.claims = Arc::new(claims.as_object().unwrap().clone());
        id
    }

    const OWNER: &str = r#"@id("owner-reads")
permit (principal is Jwt, action == Action::"read", resource is Order)
when { principal has tenant && principal.tenant == resource.tenant };

@id("no-secrets")
forbid (principal, action, resource)
when { resource has classification && resource.classification == "secret" };
"#;

    #[test]
    fn the_owner_is_permitted_and_another_caller_is_not() {
        let p = compile(OWNER).unwrap();
        let alice = caller(json!({"sub": "alice", "tenant": "acme"}));
        let got = p.evaluate(&input("/tenants/acme/orders/1"), &alice, "t", None, None);
        assert_eq!(got.verdict, Verdict::Allow(vec![Arc::from("owner-reads")]));
        let got = p.evaluate(&input("/tenants/globex/orders/1"), &alice, "t", None, None);
        assert_eq!(got.verdict, Verdict::Deny(Vec::new()));
    }

    #[test]
    fn forbid_overrides_permit() {
        let p = compile(OWNER).unwrap();
        let alice = caller(json!({"sub": "alice", "tenant": "acme"}));
        let secret = BTreeMap::from([("classification".to_string(), "secret".to_string())]);
        let got = p.evaluate(
            &input("/tenants/acme/orders/1"),
            &alice,
            "t",
            Some(&secret),
            None,
        );
        assert_eq!(got.verdict, Verdict::Deny(vec![Arc::from("no-secrets")]));
    }

    #[test]
    fn a_request_on_no_route_is_not_asked() {
        let p = compile(OWNER).unwrap();
        let got = p.evaluate(
            &input("/elsewhere"),
            &Identity::anonymous(),
            "t",
            None,
            None,
        );
        assert_eq!(got.verdict, Verdict::NoRoute);
    }

    #[test]
    fn a_policy_that_does_not_validate_names_its_line() {
        let e = compile(
            "permit (principal, action, resource);\n\n@id(\"typo\")\npermit (principal is Jwt, action, resource is Order)\nwhen { principal.tennant == resource.tenant };\n",
        )
        .unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].file, PathBuf::from("authz.cedar"));
        assert_eq!(e[0].line, Some(5), "{e:?}");
        assert!(e[0].message.contains("typo"), "{e:?}");
        assert!(e[0].message.contains("tennant"), "{e:?}");
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let e = compile(
            "permit (principal, action, resource);\npermit (principal, action resource);\n",
        )
        .unwrap_err();
        assert_eq!(e[0].line, Some(2), "{e:?}");
    }

    #[test]
    fn an_action_the_schema_lacks_does_not_load() {
        let mut r = routes();
        r[0].action = Some("write".into());
        let e = CedarPolicy::compile(
            &source("authz.cedar", OWNER),
            &source("authz.cedarschema", SCHEMA),
            None,
            r,
            Vec::new(),
            Path::new("t.yaml"),
        )
        .unwrap_err();
        assert_eq!(e[0].file, PathBuf::from("t.yaml"));
        assert_eq!(e[0].line, Some(7));
        assert!(e[0].message.contains("\"write\""), "{e:?}");
    }

    #[test]
    fn a_run_time_error_denies_even_where_cedar_would_permit() {
        // The forbid overflows; Cedar alone would skip it and permit.
        let p = compile(
            "@id(\"all\")\npermit (principal, action, resource);\n\n@id(\"overflow\")\nforbid (principal, action, resource) when { 9223372036854775807 + 1 > 0 };\n",
        )
        .unwrap();
        let got = p.evaluate(
            &input("/tenants/acme/orders/1"),
            &Identity::anonymous(),
            "t",
            None,
            None,
        );
        match got.verdict {
            Verdict::Error(ids, m) => {
                assert_eq!(ids, vec![Arc::from("overflow")]);
                assert!(m.contains("overflow"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_entities_file_gives_the_principal_its_groups() {
        let schema = "entity Group;\nentity Jwt in [Group] = { sub: String };\nentity Order = { tenant: String, order: String };\naction \"read\" appliesTo { principal: Jwt, resource: Order, context: {} };\n";
        let entities = r#"[{"uid": {"type": "Group", "id": "admins"}, "attrs": {}, "parents": []},
            {"uid": {"type": "Jwt", "id": "root"}, "attrs": {"sub": "root"}, "parents": [{"type": "Group", "id": "admins"}]}]"#;
        let p = CedarPolicy::compile(
            &source(
                "a.cedar",
                "permit (principal in Group::\"admins\", action, resource);\n",
            ),
            &source("a.cedarschema", schema),
            Some(&source("entities.json", entities)),
            routes(),
            Vec::new(),
            Path::new("t.yaml"),
        )
        .unwrap();
        let at = input("/tenants/acme/orders/1");
        let root = caller(json!({"sub": "root"}));
        assert!(matches!(
            p.evaluate(&at, &root, "t", None, None).verdict,
            Verdict::Allow(_)
        ));
        let alice = caller(json!({"sub": "alice"}));
        assert_eq!(
            p.evaluate(&at, &alice, "t", None, None).verdict,
            Verdict::Deny(Vec::new())
        );
    }

    #[test]
    fn an_entities_file_that_does_not_conform_does_not_load() {
        let e = CedarPolicy::compile(
            &source("a.cedar", OWNER),
            &source("a.cedarschema", SCHEMA),
            Some(&source(
                "entities.json",
                r#"[{"uid": {"type": "Order", "id": "x"}, "attrs": {"tenant": 1}, "parents": []}]"#,
            )),
            routes(),
            Vec::new(),
            Path::new("t.yaml"),
        )
        .unwrap_err();
        assert_eq!(e[0].file, PathBuf::from("entities.json"), "{e:?}");
    }

    #[test]
    fn the_body_and_exposed_headers_are_in_the_context_and_a_cut_body_denies() {
        let schema = "entity Jwt = { sub: String };\nentity Order = { tenant: String, order: String };\naction \"read\" appliesTo { principal: Jwt, resource: Order, context: { body?: { amount: Long }, headers: { \"x-env\"?: String } } };\n";
        let p = CedarPolicy::compile(
            &source("a.cedar", "permit (principal, action, resource)\nwhen { context has body && context.body.amount < 10 && context.headers has \"x-env\" };\n"),
            &source("a.cedarschema", schema),
            None,
            routes(),
            vec!["x-env".into()],
            Path::new("t.yaml"),
        )
        .unwrap();
        let who = caller(json!({"sub": "a"}));
        let mut at = input("/tenants/acme/orders/1");
        at.resource.headers.insert("x-env".into(), "prod".into());
        at.resource.headers.insert("x-other".into(), "1".into());
        at.resource.body = Body::Json(json!({"amount": 5}));
        assert!(matches!(
            p.evaluate(&at, &who, "t", None, None).verdict,
            Verdict::Allow(_)
        ));
        at.resource.body = Body::Json(json!({"amount": 50}));
        assert_eq!(
            p.evaluate(&at, &who, "t", None, None).verdict,
            Verdict::Deny(Vec::new())
        );
        at.resource.body = Body::Truncated;
        assert_eq!(
            p.evaluate(&at, &who, "t", None, None).verdict,
            Verdict::BodyUnavailable
        );
        at.resource.body = Body::Json(json!({"amount": 5}));
        at.resource.headers.remove("x-env");
        assert_eq!(
            p.evaluate(&at, &who, "t", None, None).verdict,
            Verdict::Deny(Vec::new())
        );
    }

    #[test]
    fn a_claim_shaped_like_an_entity_is_a_record() {
        let schema = "entity Jwt = { sub: String, boss?: { __entity?: { id: String } } };\nentity Order = { tenant: String, order: String };\naction \"read\" appliesTo { principal: Jwt, resource: Order, context: {} };\n";
        let p = CedarPolicy::compile(
            &source("a.cedar", "permit (principal is Jwt, action, resource) when { principal has boss && principal.boss has __entity };\n"),
            &source("a.cedarschema", schema),
            None,
            routes(),
            Vec::new(),
            Path::new("t.yaml"),
        )
        .unwrap();
        let who = caller(json!({"sub": "a", "boss": {"__entity": {"type": "Jwt", "id": "root"}}}));
        let got = p.evaluate(&input("/tenants/acme/orders/1"), &who, "t", None, None);
        assert!(matches!(got.verdict, Verdict::Allow(_)), "{got:?}");
    }
}
