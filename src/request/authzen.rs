//! An OpenID AuthZEN Authorization API 1.0 request (§5–§7) read into the
//! `CheckRequest` the gateway path decides, so a service asking "may this
//! caller do this to that object?" gets the answer Envoy would get for the
//! same HTTP request.
//!
//! The mapping (also the table in `docs/authzen.md`):
//!
//! | AuthZEN | `CheckRequest` |
//! |---|---|
//! | `subject.properties.token` | `authorization: Bearer <token>`, validated as at the gateway |
//! | `action.properties.method`, else `action.name` | the HTTP method (an upper-case token) |
//! | `resource.properties.path` | the path, query included (the canonical-path guard applies) |
//! | `resource.properties.host` | the host (empty when absent) |
//! | `resource.properties.headers` | more request headers (never `authorization`) |
//! | `resource.properties.body` | the body, as compact JSON with `content-type: application/json` |
//! | `context.tenant` | the tenant, as the route's `context_extensions` would name it |
//!
//! `subject.type`, `subject.id`, `resource.type` and `resource.id` are
//! required by the API and checked for form, but they decide nothing: the
//! caller is who the token proves, the object is what the path names.
//!
//! A batch (`/access/v1/evaluations`, §7.1) is expanded here: each item takes
//! the top-level `subject`, `action`, `resource` and `context` it does not name
//! itself, whole (§7.1.1). Every problem is an [`AuthzenError`] with a stable
//! reason; nothing is decided for a request with one.
//!
//! Never imports: identity, policy, decision, tenants or anything above them.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::foundation::proto::auth::attribute_context::{HttpRequest, Request};
use crate::foundation::proto::auth::{AttributeContext, CheckRequest};
use crate::foundation::reason::Reason;

/// The longest HTTP method accepted (the longest registered one is 17 bytes).
pub const MAX_METHOD_BYTES: usize = 32;

/// Why an AuthZEN request was refused before anything was decided. Messages
/// name the member, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthzenError {
    #[error("the request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{count} evaluations; the limit is {limit}")]
    TooManyEvaluations { count: usize, limit: usize },
    #[error("the request body is not an AuthZEN request: {0}")]
    Malformed(String),
}

impl AuthzenError {
    /// The reason the request is refused with (every one is a 400).
    pub fn reason(&self) -> Reason {
        match self {
            AuthzenError::TooLarge { .. } => Reason::EvaluationRequestTooLarge,
            AuthzenError::TooManyEvaluations { .. } => Reason::TooManyEvaluations,
            AuthzenError::Malformed(_) => Reason::MalformedEvaluation,
        }
    }
}

fn malformed(what: impl Into<String>) -> AuthzenError {
    AuthzenError::Malformed(what.into())
}

/// `subject` (§5.1) or `resource` (§5.2): a typed, identified entity with
/// properties.
#[derive(Debug, Clone, Deserialize)]
pub struct Entity {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    #[serde(default)]
    pub properties: Map<String, Value>,
}

/// `subject` (§5.1).
pub type Subject = Entity;
/// `resource` (§5.2).
pub type Resource = Entity;

/// `action` (§5.3).
#[derive(Debug, Clone, Deserialize)]
pub struct Action {
    pub name: String,
    #[serde(default)]
    pub properties: Map<String, Value>,
}

/// One evaluation, complete: the single request (§6.1), or a batch item with
/// the batch's defaults applied.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub subject: Subject,
    pub action: Action,
    pub resource: Resource,
    pub context: Map<String, Value>,
}

/// `options.evaluations_semantic` (§7.1.2.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Semantic {
    /// Every evaluation is decided and answered.
    #[default]
    ExecuteAll,
    /// Evaluation stops after the first `false`; it is the last answered.
    DenyOnFirstDeny,
    /// Evaluation stops after the first `true`; it is the last answered.
    PermitOnFirstPermit,
}

impl Semantic {
    /// Whether a batch stops after an evaluation that decided `decision`.
    pub fn stops_after(self, decision: bool) -> bool {
        match self {
            Semantic::ExecuteAll => false,
            Semantic::DenyOnFirstDeny => !decision,
            Semantic::PermitOnFirstPermit => decision,
        }
    }
}

/// A batch request (§7.1), expanded.
#[derive(Debug, Clone)]
pub struct Batch {
    pub evaluations: Vec<Evaluation>,
    pub semantic: Semantic,
    /// False when `evaluations` was absent or empty: then the request is a
    /// single evaluation, and is answered as one (§7.1).
    pub boxcar: bool,
}

/// The members of a request or a batch item, each optional until the defaults
/// are applied. Unknown members are ignored (the API may grow).
#[derive(Debug, Default, Deserialize)]
struct Parts {
    subject: Option<Subject>,
    action: Option<Action>,
    resource: Option<Resource>,
    context: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
struct BatchBody {
    #[serde(flatten)]
    defaults: Parts,
    #[serde(default)]
    evaluations: Option<Vec<Parts>>,
    #[serde(default)]
    options: Option<Options>,
}

#[derive(Debug, Default, Deserialize)]
struct Options {
    #[serde(default)]
    evaluations_semantic: Option<Semantic>,
}

/// Reads a single evaluation request (`/access/v1/evaluation`, §6.1).
pub fn single(body: &[u8], max_bytes: usize) -> Result<Evaluation, AuthzenError> {
    if body.len() > max_bytes {
        return Err(AuthzenError::TooLarge { limit: max_bytes });
    }
    let parts: Parts = parse(body)?;
    complete(parts, &Parts::default())
}

/// Reads a batch request (`/access/v1/evaluations`, §7.1).
pub fn batch(body: &[u8], max_bytes: usize, max_items: usize) -> Result<Batch, AuthzenError> {
    if body.len() > max_bytes {
        return Err(AuthzenError::TooLarge { limit: max_bytes });
    }
    let raw: BatchBody = parse(body)?;
    let semantic = raw
        .options
        .and_then(|o| o.evaluations_semantic)
        .unwrap_or_default();
    let items = raw.evaluations.unwrap_or_default();
    if items.len() > max_items {
        return Err(AuthzenError::TooManyEvaluations {
            count: items.len(),
            limit: max_items,
        });
    }
    if items.is_empty() {
        let one = complete(raw.defaults, &Parts::default())?;
        return Ok(Batch {
            evaluations: vec![one],
            semantic,
            boxcar: false,
        });
    }
    let evaluations = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            complete(item, &raw.defaults).map_err(|e| match e {
                AuthzenError::Malformed(m) => malformed(format!("evaluations[{i}]: {m}")),
                other => other,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Batch {
        evaluations,
        semantic,
        boxcar: true,
    })
}

/// JSON into `T`; serde's message says which member is wrong and where, and
/// never repeats a value. A JSON object with a repeated member is refused.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AuthzenError> {
    serde_json::from_slice(body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "not JSON".to_string()
            }
            _ => {
                // Other messages ("invalid type: string \"x\"", "unknown
                // variant `x`") would echo the input: only these are kept.
                let text = e.to_string();
                let text = text.split(" at line").next().unwrap_or_default();
                if text.starts_with("missing field") || text.starts_with("duplicate field") {
                    text.to_string()
                } else {
                    format!(
                        "a member has the wrong type or value (line {} column {})",
                        e.line(),
                        e.column()
                    )
                }
            }
        };
        malformed(what)
    })
}

/// An item with the defaults for what it lacks, checked for form.
fn complete(item: Parts, defaults: &Parts) -> Result<Evaluation, AuthzenError> {
    let subject = item
        .subject
        .or_else(|| defaults.subject.clone())
        .ok_or_else(|| malformed("subject is required"))?;
    let action = item
        .action
        .or_else(|| defaults.action.clone())
        .ok_or_else(|| malformed("action is required"))?;
    let resource = item
        .resource
        .or_else(|| defaults.resource.clone())
        .ok_or_else(|| malformed("resource is required"))?;
    let context = item
        .context
        .or_else(|| defaults.context.clone())
        .unwrap_or_default();
    for (name, value) in [
        ("subject.type", &subject.kind),
        ("subject.id", &subject.id),
        ("action.name", &action.name),
        ("resource.type", &resource.kind),
        ("resource.id", &resource.id),
    ] {
        if value.is_empty() {
            return Err(malformed(format!("{name} must not be empty")));
        }
    }
    Ok(Evaluation {
        subject,
        action,
        resource,
        context,
    })
}

impl Evaluation {
    /// The tenant asked about: `context.tenant`.
    pub fn tenant(&self) -> Result<&str, AuthzenError> {
        match self.context.get("tenant") {
            Some(Value::String(t)) if !t.is_empty() => Ok(t),
            Some(_) => Err(malformed("context.tenant must be a non-empty string")),
            None => Err(malformed("context.tenant is required")),
        }
    }

    /// The HTTP method: `action.properties.method`, else `action.name`.
    pub fn method(&self) -> Result<&str, AuthzenError> {
        let method = match self.action.properties.get("method") {
            Some(Value::String(m)) => m.as_str(),
            Some(_) => return Err(malformed("action.properties.method must be a string")),
            None => self.action.name.as_str(),
        };
        let token = !method.is_empty()
            && method.len() <= MAX_METHOD_BYTES
            && method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-');
        if token {
            Ok(method)
        } else {
            Err(malformed(
                "the action is no HTTP method: give one (GET, POST, ...) as action.name or action.properties.method",
            ))
        }
    }

    /// The request this evaluation asks about, as Envoy would send it for the
    /// route whose `context_extensions` name the tenant under `tenant_key`.
    /// There is no source address: the asker is not the caller.
    pub fn check_request(&self, tenant_key: &str) -> Result<CheckRequest, AuthzenError> {
        let tenant = self.tenant()?;
        let method = self.method()?;
        let props = &self.resource.properties;
        let path = match props.get("path") {
            Some(Value::String(p)) if p.starts_with('/') => p.clone(),
            Some(_) => {
                return Err(malformed(
                    "resource.properties.path must be a string starting with /",
                ));
            }
            None => return Err(malformed("resource.properties.path is required")),
        };
        let host = match props.get("host") {
            None => String::new(),
            Some(Value::String(h)) => h.clone(),
            Some(_) => return Err(malformed("resource.properties.host must be a string")),
        };
        let mut headers = HashMap::new();
        match props.get("headers") {
            None => {}
            Some(Value::Object(map)) => {
                for (name, value) in map {
                    let Value::String(value) = value else {
                        return Err(malformed(
                            "resource.properties.headers values must be strings",
                        ));
                    };
                    let name = name.to_ascii_lowercase();
                    if name == "authorization" || name.starts_with(':') {
                        return Err(malformed(
                            "resource.properties.headers may not set authorization or a pseudo-header: the subject's token is subject.properties.token",
                        ));
                    }
                    headers.insert(name, value.clone());
                }
            }
            Some(_) => return Err(malformed("resource.properties.headers must be an object")),
        }
        match self.subject.properties.get("token") {
            None => {}
            Some(Value::String(t)) if !t.is_empty() => {
                headers.insert("authorization".into(), format!("Bearer {t}"));
            }
            Some(_) => {
                return Err(malformed(
                    "subject.properties.token must be a non-empty string",
                ));
            }
        }
        let body = match props.get("body") {
            None => String::new(),
            Some(v) => {
                headers.insert("content-type".into(), "application/json".into());
                v.to_string()
            }
        };
        let query = path.split_once('?').map_or("", |(_, q)| q).to_string();
        let http = HttpRequest {
            method: method.to_string(),
            headers,
            path,
            host,
            scheme: "https".into(),
            query,
            size: body.len() as i64,
            protocol: "HTTP/1.1".into(),
            body,
            ..Default::default()
        };
        let mut context_extensions = HashMap::new();
        context_extensions.insert(tenant_key.to_string(), tenant.to_string());
        Ok(CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    time: None,
                    http: Some(http),
                }),
                context_extensions,
                ..Default::default()
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 64 * 1024;

    fn one() -> serde_json::Value {
        serde_json::json!({
            "subject": {"type": "user", "id": "alice", "properties": {"token": "t0k"}},
            "action": {"name": "GET"},
            "resource": {"type": "profile", "id": "alice", "properties": {"path": "/users/alice/profile?x=1", "host": "acme.example.com"}},
            "context": {"tenant": "acme"}
        })
    }

    #[test]
    fn a_single_request_maps_onto_the_check_request() {
        let e = single(one().to_string().as_bytes(), MAX).unwrap();
        let r = e.check_request("tenant").unwrap();
        let a = r.attributes.unwrap();
        let http = a.request.unwrap().http.unwrap();
        assert_eq!(http.method, "GET");
        assert_eq!(http.path, "/users/alice/profile?x=1");
        assert_eq!(http.query, "x=1");
        assert_eq!(http.host, "acme.example.com");
        assert_eq!(http.headers["authorization"], "Bearer t0k");
        assert_eq!(a.context_extensions["tenant"], "acme");
    }

    #[test]
    fn a_batch_takes_the_defaults_whole() {
        let body = serde_json::json!({
            "subject": {"type": "user", "id": "alice"},
            "action": {"name": "GET"},
            "resource": {"type": "r", "id": "1", "properties": {"path": "/a"}},
            "context": {"tenant": "acme"},
            "options": {"evaluations_semantic": "deny_on_first_deny"},
            "evaluations": [
                {},
                {"action": {"name": "can_read", "properties": {"method": "PUT"}}},
                {"resource": {"type": "r", "id": "2"}}
            ]
        });
        let b = batch(body.to_string().as_bytes(), MAX, 10).unwrap();
        assert!(b.boxcar);
        assert_eq!(b.semantic, Semantic::DenyOnFirstDeny);
        assert_eq!(b.evaluations.len(), 3);
        assert_eq!(b.evaluations[1].method().unwrap(), "PUT");
        // The item's resource replaced the default whole: no path.
        assert!(matches!(
            b.evaluations[2].check_request("tenant"),
            Err(AuthzenError::Malformed(m)) if m.contains("path")
        ));
        let b = batch(one().to_string().as_bytes(), MAX, 10).unwrap();
        assert!(!b.boxcar && b.evaluations.len() == 1 && b.semantic == Semantic::ExecuteAll);
    }

    #[test]
    fn malformed_requests_have_stable_reasons_and_echo_nothing() {
        let reason = |body: &str| single(body.as_bytes(), MAX).unwrap_err();
        assert_eq!(reason("{").reason(), Reason::MalformedEvaluation);
        assert_eq!(reason("[]").reason(), Reason::MalformedEvaluation);
        let mut v = one();
        v["subject"]["id"] = serde_json::json!(7);
        let e = reason(&v.to_string());
        assert!(e.to_string().contains("wrong type"), "{e}");
        let mut v = one();
        v["options"] = serde_json::json!({"evaluations_semantic": "secret-value"});
        let e = batch(v.to_string().as_bytes(), MAX, 2).unwrap_err();
        assert!(!e.to_string().contains("secret-value"), "{e}");
        v["subject"]["id"] = serde_json::json!("secret-value");
        v["subject"]["type"] = serde_json::json!(["secret-value"]);
        assert!(!reason(&v.to_string()).to_string().contains("secret-value"));
        for missing in ["subject", "action", "resource"] {
            let mut v = one();
            v.as_object_mut().unwrap().remove(missing);
            assert!(reason(&v.to_string()).to_string().contains(missing));
        }
        let big = " ".repeat(MAX + 1);
        assert_eq!(reason(&big).reason(), Reason::EvaluationRequestTooLarge);
        let many = serde_json::json!({"evaluations": vec![one(); 3]});
        assert_eq!(
            batch(many.to_string().as_bytes(), MAX, 2)
                .unwrap_err()
                .reason(),
            Reason::TooManyEvaluations
        );
        let mut v = one();
        v["action"]["name"] = serde_json::json!("can_read");
        let e = single(v.to_string().as_bytes(), MAX).unwrap();
        assert!(e.check_request("tenant").is_err());
        let mut v = one();
        v["resource"]["properties"]["headers"] = serde_json::json!({"Authorization": "Bearer x"});
        let e = single(v.to_string().as_bytes(), MAX).unwrap();
        assert!(e.check_request("tenant").is_err());
        let mut v = one();
        v["context"] = serde_json::json!({});
        let e = single(v.to_string().as_bytes(), MAX).unwrap();
        assert!(e.check_request("tenant").is_err());
    }

    #[test]
    fn semantics_stop_where_the_spec_says() {
        assert!(!Semantic::ExecuteAll.stops_after(false));
        assert!(Semantic::DenyOnFirstDeny.stops_after(false));
        assert!(!Semantic::DenyOnFirstDeny.stops_after(true));
        assert!(Semantic::PermitOnFirstPermit.stops_after(true));
    }
}
