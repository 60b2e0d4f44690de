//! Stage 6: a [`Decision`] rendered into Envoy's `CheckResponse`.
//!
//! Envoy appends request headers by default and applies `headers_to_remove` after
//! the headers it sets. So every header portcullis sets uses
//! `OVERWRITE_IF_EXISTS_OR_ADD`, and a header it owns but has no value for is
//! removed by name; the two lists never share a name. A deny carries a small JSON
//! body with the reason code and decision id, never internal detail; under
//! `client_errors: generic` a refused token's code is `invalid_token` alone
//! (the exact code stays in the gRPC status message and the dynamic metadata,
//! which only Envoy and its access log see). Over gRPC a 503 deny
//! (portcullis can answer but not decide) is still a *denied* response, so an
//! Envoy with `failure_mode_allow: true` fails closed. Over HTTP that holds
//! only once the listener has mapped the status for its asker
//! (`transport::http_authz::deny_status_for`): Envoy's `http_service` takes
//! any 5xx for an error, and forward-auth proxies take any 2xx for an allow.

use std::borrow::Cow;

use prost_types::{Struct, Value, value::Kind};

use crate::decision::DECISION_ID_HEADER;
use crate::decision::Decision;
use crate::foundation::proto::auth::{
    CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response,
};
use crate::foundation::proto::core::{
    HeaderValue, HeaderValueOption, QueryParameter, header_value_option::HeaderAppendAction,
};
use crate::foundation::proto::envoy::r#type::v3::HttpStatus;
use crate::foundation::proto::google::rpc::Status;

/// Namespace of the dynamic metadata portcullis emits (for access logs and
/// later filters).
pub const METADATA_NAMESPACE: &str = "portcullis";

/// `google.rpc.Code` values used in `CheckResponse.status`.
mod code {
    pub const OK: i32 = 0;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// The answer to Envoy for `decision`, which is left as it was.
pub fn render(decision: &Decision) -> CheckResponse {
    into_response(decision.clone())
}

/// [`render`], moving the decision's strings into the answer instead of
/// copying them (the handler's last use of its decision).
pub fn into_response(mut decision: Decision) -> CheckResponse {
    let rpc_code = rpc_code(&decision);
    let http_response = if decision.allowed {
        check_response::HttpResponse::OkResponse(OkHttpResponse {
            headers: std::mem::take(&mut decision.set_headers)
                .into_iter()
                .map(|(k, v)| overwrite_owned(k, v))
                .collect(),
            headers_to_remove: std::mem::take(&mut decision.remove_headers),
            query_parameters_to_remove: std::mem::take(&mut decision.remove_query),
            query_parameters_to_set: decision
                .answer
                .set_query
                .iter()
                .map(|(k, v)| QueryParameter {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            response_headers_to_add: decision
                .answer
                .response_headers
                .iter()
                .map(|(k, v)| overwrite(k, v))
                .collect(),
            ..Default::default()
        })
    } else {
        let denied = Denied::of(&decision);
        check_response::HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(denied.status),
            }),
            headers: denied
                .headers
                .iter()
                .map(|(k, v)| overwrite(k, v))
                .collect(),
            body: denied.body.into_owned(),
        })
    };
    CheckResponse {
        status: Some(Status {
            code: rpc_code,
            message: rpc_message(&decision).to_string(),
            details: Vec::new(),
        }),
        http_response: Some(http_response),
        dynamic_metadata: Some(metadata(decision)),
    }
}

/// The `google.rpc.Code` of the answer, from the reason's status: a
/// policy's own deny status (even a 2xx) is still a deny to Envoy.
pub(crate) fn rpc_code(decision: &Decision) -> i32 {
    match decision.reason.status() {
        200 => code::OK,
        204 => code::PERMISSION_DENIED, // answered by portcullis: not forwarded
        401 => code::UNAUTHENTICATED,
        400 | 414 | 431 => code::INVALID_ARGUMENT,
        503 => code::UNAVAILABLE,
        _ => code::PERMISSION_DENIED,
    }
}

/// The gRPC status message: empty on an allow, the reason code on a deny.
pub(crate) fn rpc_message(decision: &Decision) -> &'static str {
    if decision.allowed {
        ""
    } else {
        decision.reason.code()
    }
}

/// What a deny sends the client: its status, headers (in order) and body.
pub(crate) struct Denied<'a> {
    pub status: u16,
    pub headers: Vec<(&'a str, Cow<'a, str>)>,
    pub body: Cow<'a, str>,
}

impl<'a> Denied<'a> {
    pub(crate) fn of(decision: &'a Decision) -> Denied<'a> {
        let status = decision.status();
        // A 204 (a preflight portcullis answers) has no body.
        let has_body = status != 204 && decision.answer.body.is_none();
        let mut headers: Vec<(&str, Cow<'_, str>)> = vec![
            (
                DECISION_ID_HEADER,
                Cow::Borrowed(decision.decision_id.as_str()),
            ),
            ("cache-control", Cow::Borrowed("no-store")),
        ];
        if has_body {
            headers.push(("content-type", Cow::Borrowed("application/json")));
        }
        headers.extend(
            decision
                .client_headers
                .iter()
                .map(|(k, v)| (k.as_str(), Cow::Borrowed(v.as_str()))),
        );
        if let Some(challenge) = decision.challenge() {
            headers.push(("www-authenticate", Cow::Owned(challenge)));
        }
        let body = if let Some(body) = &decision.answer.body {
            Cow::Borrowed(body.as_str())
        } else if has_body {
            Cow::Owned(
                serde_json::json!({
                    "error": decision.client_code(),
                    "decision_id": decision.decision_id,
                })
                .to_string(),
            )
        } else {
            Cow::Borrowed("")
        };
        Denied {
            status,
            headers,
            body,
        }
    }
}

fn overwrite(key: &str, value: &str) -> HeaderValueOption {
    overwrite_owned(key.to_string(), value.to_string())
}

fn overwrite_owned(key: String, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key,
            value,
            raw_value: Vec::new(),
        }),
        append: None,
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        keep_empty_value: false,
    }
}

/// Decision id, tenant, rule, digest and reason, for Envoy's access log
/// (`%DYNAMIC_METADATA(envoy.filters.http.ext_authz:...)%`).
fn metadata(decision: Decision) -> Struct {
    let fields = own_metadata(&decision)
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let value = Value {
                kind: Some(Kind::StringValue(v.into_owned())),
            };
            (k.to_string(), value)
        })
        .collect();
    // A policy's own metadata beside portcullis' namespace, which it cannot
    // replace.
    let mut all: std::collections::BTreeMap<String, Value> = decision
        .answer
        .metadata
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != METADATA_NAMESPACE)
        .map(|(k, v)| (k.clone(), json_value(v)))
        .collect();
    all.insert(
        METADATA_NAMESPACE.to_string(),
        Value {
            kind: Some(Kind::StructValue(Struct { fields })),
        },
    );
    Struct { fields: all }
}

/// The fields of portcullis' own metadata namespace, in the order a
/// `Struct`'s map is written (by name); absent fields are `None`.
pub(crate) fn own_metadata(decision: &Decision) -> [Option<(&'static str, Cow<'_, str>)>; 10] {
    fn b(v: &str) -> Cow<'_, str> {
        Cow::Borrowed(v)
    }
    let verdict = |allowed| if allowed { "allow" } else { "deny" };
    let would = decision.audit.would_be.as_ref();
    let dry_run_rules = (!decision.audit.dry_run_rules.is_empty()).then(|| {
        let hits: Vec<String> = decision
            .audit
            .dry_run_rules
            .iter()
            .map(|h| format!("{}={}", h.rule, h.would))
            .collect();
        ("dry_run_rules", Cow::Owned(hits.join(",")))
    });
    [
        Some(("decision", b(verdict(decision.allowed)))),
        Some(("decision_id", b(&decision.decision_id))),
        dry_run_rules,
        // Dry run is loud: whoever reads the access log sees it was not enforced.
        would.map(|_| ("mode", b(decision.audit.mode.as_str()))),
        decision.digest.as_deref().map(|d| ("policy_digest", b(d))),
        Some(("reason", b(decision.reason.code()))),
        decision.rule.as_deref().map(|r| ("rule", b(r))),
        decision.tenant.as_deref().map(|t| ("tenant", b(t))),
        would.map(|w| ("would_be_decision", b(verdict(w.allowed)))),
        would.map(|w| ("would_be_reason", b(w.reason.code()))),
    ]
}

/// A JSON value as a `google.protobuf.Value`.
fn json_value(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(json_value).collect(),
        }),
        J::Object(m) => Kind::StructValue(Struct {
            fields: m.iter().map(|(k, v)| (k.clone(), json_value(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::foundation::reason::Reason;

    fn header<'a>(opts: &'a [HeaderValueOption], name: &str) -> Option<&'a HeaderValueOption> {
        opts.iter()
            .find(|h| h.header.as_ref().is_some_and(|h| h.key == name))
    }

    #[test]
    fn allow_overwrites_and_removes() {
        let mut d = Decision::deny("id-1".into(), Reason::Allowed);
        d.allowed = true;
        d.set_headers = vec![("x-subject".into(), "alice".into())];
        d.remove_headers = vec!["x-tenant".into()];
        let r = render(&d);
        assert_eq!(r.status.unwrap().code, 0);
        let Some(check_response::HttpResponse::OkResponse(ok)) = r.http_response else {
            panic!("not ok")
        };
        let h = header(&ok.headers, "x-subject").unwrap();
        assert_eq!(
            h.append_action,
            HeaderAppendAction::OverwriteIfExistsOrAdd as i32
        );
        assert_eq!(ok.headers_to_remove, vec!["x-tenant"]);
        #[allow(deprecated)]
        let legacy = ok.dynamic_metadata.is_none();
        assert!(legacy);
        assert!(
            r.dynamic_metadata
                .unwrap()
                .fields
                .contains_key(METADATA_NAMESPACE)
        );
    }

    #[test]
    fn deny_has_status_body_and_challenge() {
        let mut d = Decision::deny("id-2".into(), Reason::MissingCredential);
        d.detail = Some("secret internal detail".into());
        let r = render(&d);
        assert_eq!(r.status.as_ref().unwrap().code, code::UNAUTHENTICATED);
        let Some(check_response::HttpResponse::DeniedResponse(denied)) = r.http_response else {
            panic!("not denied")
        };
        assert_eq!(denied.status.unwrap().code, 401);
        assert!(header(&denied.headers, "www-authenticate").is_some());
        let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "missing_credential", "decision_id": "id-2"})
        );
        assert!(!denied.body.contains("secret"));

        let r = render(&Decision::deny("id-3".into(), Reason::NotReady));
        assert_eq!(r.status.unwrap().code, code::UNAVAILABLE);
        let Some(check_response::HttpResponse::DeniedResponse(denied)) = r.http_response else {
            panic!("not denied")
        };
        assert_eq!(denied.status.unwrap().code, 503);
        assert!(header(&denied.headers, "www-authenticate").is_none());
    }
}
