//! A Rego policy's result read as OPA-Envoy reads it (`envoyauth/response.go`):
//! a boolean, or an object with `allowed` and what the answer should carry.
//!
//! The object's fields: `allowed` (bool, required), `headers` (on an allow the
//! upstream's request headers, on a deny the client's response headers),
//! `response_headers_to_add` (the client's, on an allow), `request_headers_to_remove`,
//! `query_parameters_to_set`, `query_parameters_to_remove`, `body` and
//! `http_status` (a deny's), `dynamic_metadata` (an object). Headers are an
//! object of string or list-of-string values, or a list of such objects.
//!
//! Stricter than OPA-Envoy on purpose: every header name must be one
//! portcullis may own ([`super::template::valid_header_name`]: no
//! `x-portcullis-*`, nothing Envoy manages) and every value safe
//! ([`super::template::safe_value`]); a result that breaks either is
//! [`Refused::Unsafe`] and denies. A result of the wrong shape is
//! [`Refused::Invalid`] (a `policy_error`, as OPA-Envoy errors).
//!
//! Never imports: decision, tenants or anything above them.

use serde_json::{Map, Value as Json};

use super::template::{safe_value, valid_header_name};

/// Most header, query or removal entries one result may carry.
pub const MAX_RESULT_ENTRIES: usize = 64;
/// Longest deny body a policy may return, in bytes.
pub const MAX_RESULT_BODY: usize = 16 * 1024;

/// What a Rego policy answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    pub allowed: bool,
    pub headers: Vec<(String, String)>,
    pub response_headers_to_add: Vec<(String, String)>,
    pub request_headers_to_remove: Vec<String>,
    pub query_parameters_to_set: Vec<(String, String)>,
    pub query_parameters_to_remove: Vec<String>,
    pub body: Option<String>,
    pub http_status: Option<u16>,
    pub dynamic_metadata: Option<Map<String, Json>>,
}

/// Why a result was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Not a boolean or an object of the known shape.
    Invalid(String),
    /// A header name or value portcullis does not let a policy send.
    Unsafe(String),
}

/// Reads a result (as JSON). `Undefined` reaches here as `None`: no decision,
/// which denies like `false` (OPA-Envoy's default `allow := false`).
pub fn read(result: Option<&Json>) -> Result<Answer, Refused> {
    let invalid = |m: String| Refused::Invalid(m);
    let object = match result {
        None => return Ok(Answer::default()),
        Some(Json::Bool(allowed)) => {
            return Ok(Answer {
                allowed: *allowed,
                ..Answer::default()
            });
        }
        Some(Json::Object(o)) => o,
        Some(other) => {
            return Err(invalid(format!(
                "result must be a boolean or an object, found {}",
                kind(other)
            )));
        }
    };
    let allowed = match object.get("allowed") {
        Some(Json::Bool(b)) => *b,
        Some(other) => {
            return Err(invalid(format!(
                "result.allowed must be a boolean, found {}",
                kind(other)
            )));
        }
        None => return Err(invalid("result has no \"allowed\" key".into())),
    };
    let mut answer = Answer {
        allowed,
        ..Answer::default()
    };
    for (key, value) in object {
        match key.as_str() {
            "allowed" => {}
            "headers" => answer.headers = headers(key, value)?,
            "response_headers_to_add" => answer.response_headers_to_add = headers(key, value)?,
            "request_headers_to_remove" => {
                answer.request_headers_to_remove = strings(key, value)?;
                for name in &answer.request_headers_to_remove {
                    valid_header_name(name).map_err(|e| Refused::Unsafe(format!("{key}: {e}")))?;
                }
            }
            "query_parameters_to_set" => answer.query_parameters_to_set = query(key, value)?,
            "query_parameters_to_remove" => {
                answer.query_parameters_to_remove = strings(key, value)?;
            }
            "body" => match value {
                Json::String(s) if s.len() <= MAX_RESULT_BODY => answer.body = Some(s.clone()),
                Json::String(_) => {
                    return Err(invalid(format!(
                        "result.body is longer than {MAX_RESULT_BODY} bytes"
                    )));
                }
                other => {
                    return Err(invalid(format!(
                        "result.body must be a string, found {}",
                        kind(other)
                    )));
                }
            },
            "http_status" => {
                let code = value
                    .as_u64()
                    .filter(|c| (200..=599).contains(c))
                    .ok_or_else(|| {
                        invalid(format!(
                            "result.http_status must be an HTTP status code, found {value}"
                        ))
                    })?;
                answer.http_status = u16::try_from(code).ok();
            }
            "dynamic_metadata" => match value {
                Json::Object(m) => answer.dynamic_metadata = Some(m.clone()),
                other => {
                    return Err(invalid(format!(
                        "result.dynamic_metadata must be an object, found {}",
                        kind(other)
                    )));
                }
            },
            // OPA-Envoy ignores other keys; so does portcullis.
            _ => {}
        }
    }
    Ok(answer)
}

/// `{name: value | [values]}` or a list of such objects, names and values
/// checked.
fn headers(field: &str, value: &Json) -> Result<Vec<(String, String)>, Refused> {
    let objects: Vec<&Map<String, Json>> = match value {
        Json::Object(o) => vec![o],
        Json::Array(items) => items
            .iter()
            .map(|i| {
                i.as_object()
                    .ok_or_else(|| Refused::Invalid(format!("result.{field} must hold objects")))
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(Refused::Invalid(format!(
                "result.{field} must be an object, found {}",
                kind(other)
            )));
        }
    };
    let mut out = Vec::new();
    for object in objects {
        for (name, v) in object {
            let values = match v {
                Json::String(s) => vec![s.clone()],
                Json::Array(_) => strings(field, v)?,
                other => {
                    return Err(Refused::Invalid(format!(
                        "result.{field}.{name} must be a string, found {}",
                        kind(other)
                    )));
                }
            };
            let lower = name.to_ascii_lowercase();
            valid_header_name(&lower).map_err(|e| Refused::Unsafe(format!("{field}: {e}")))?;
            for value in values {
                if !safe_value(&value) {
                    return Err(Refused::Unsafe(format!(
                        "{field}: value for header {lower:?} is unsafe"
                    )));
                }
                out.push((lower.clone(), value));
            }
        }
    }
    bounded(field, out)
}

/// `{name: value | [values]}`.
fn query(field: &str, value: &Json) -> Result<Vec<(String, String)>, Refused> {
    let Json::Object(object) = value else {
        return Err(Refused::Invalid(format!(
            "result.{field} must be an object, found {}",
            kind(value)
        )));
    };
    let mut out = Vec::new();
    for (name, v) in object {
        match v {
            Json::String(s) => out.push((name.clone(), s.clone())),
            Json::Array(_) => {
                for s in strings(field, v)? {
                    out.push((name.clone(), s));
                }
            }
            other => {
                return Err(Refused::Invalid(format!(
                    "result.{field}.{name} must be a string or a list, found {}",
                    kind(other)
                )));
            }
        }
    }
    bounded(field, out)
}

fn strings(field: &str, value: &Json) -> Result<Vec<String>, Refused> {
    let Json::Array(items) = value else {
        return Err(Refused::Invalid(format!(
            "result.{field} must be a list of strings, found {}",
            kind(value)
        )));
    };
    let out: Vec<String> = items
        .iter()
        .map(|i| {
            i.as_str()
                .map(str::to_string)
                .ok_or_else(|| Refused::Invalid(format!("result.{field} must hold strings only")))
        })
        .collect::<Result<_, _>>()?;
    bounded(field, out)
}

fn bounded<T>(field: &str, items: Vec<T>) -> Result<Vec<T>, Refused> {
    if items.len() > MAX_RESULT_ENTRIES {
        return Err(Refused::Invalid(format!(
            "result.{field} has more than {MAX_RESULT_ENTRIES} entries"
        )));
    }
    Ok(items)
}

fn kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn a_boolean_or_undefined_is_the_whole_answer() {
        assert!(read(Some(&json!(true))).unwrap().allowed);
        assert!(!read(Some(&json!(false))).unwrap().allowed);
        assert_eq!(read(None).unwrap(), Answer::default());
    }

    #[test]
    fn an_object_carries_headers_status_body_query_and_metadata() {
        let a = read(Some(&json!({
            "allowed": false,
            "headers": {"X-Reason": "nope", "x-list": ["a", "b"]},
            "http_status": 401,
            "body": "go away",
            "query_parameters_to_set": {"page": "1"},
            "query_parameters_to_remove": ["debug"],
            "request_headers_to_remove": ["x-internal"],
            "response_headers_to_add": [{"x-hint": "h"}],
            "dynamic_metadata": {"team": "a"},
        })))
        .unwrap();
        assert!(!a.allowed);
        let mut headers = a.headers.clone();
        headers.sort();
        assert_eq!(
            headers,
            [
                ("x-list".into(), "a".into()),
                ("x-list".into(), "b".into()),
                ("x-reason".into(), "nope".into())
            ]
        );
        assert_eq!(a.http_status, Some(401));
        assert_eq!(a.body.as_deref(), Some("go away"));
        assert_eq!(a.query_parameters_to_set, [("page".into(), "1".into())]);
        assert_eq!(a.query_parameters_to_remove, ["debug"]);
        assert_eq!(a.request_headers_to_remove, ["x-internal"]);
        assert_eq!(a.response_headers_to_add, [("x-hint".into(), "h".into())]);
        assert_eq!(a.dynamic_metadata.unwrap()["team"], "a");
    }

    #[test]
    fn a_reserved_name_or_an_unsafe_value_is_refused() {
        for bad in [
            json!({"allowed": true, "headers": {"x-portcullis-decision-id": "forged"}}),
            json!({"allowed": true, "headers": {"x-a": "one\r\nx-b: two"}}),
            json!({"allowed": true, "headers": {"content-length": "1"}}),
            json!({"allowed": true, "request_headers_to_remove": ["x-portcullis-decision-id"]}),
        ] {
            assert!(matches!(read(Some(&bad)), Err(Refused::Unsafe(_))), "{bad}");
        }
    }

    #[test]
    fn a_wrong_shape_is_invalid() {
        for bad in [
            json!("yes"),
            json!({"headers": {}}),
            json!({"allowed": "true"}),
            json!({"allowed": false, "http_status": 42}),
            json!({"allowed": false, "body": 7}),
            json!({"allowed": true, "dynamic_metadata": []}),
        ] {
            assert!(
                matches!(read(Some(&bad)), Err(Refused::Invalid(_))),
                "{bad}"
            );
        }
    }
}
