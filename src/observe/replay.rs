//! The replayable decision log: opt-in (`decision_log.replay`), one JSON line
//! per decision holding what the rules decided on, so that `portcullis
//! replay` can decide it again on other rules.
//!
//! A record holds the request (method, host, path and query, headers, a JSON
//! body, the route's context extensions, the mTLS peer's principal), the
//! tenant, the auth method, subject and issuer, the claims after claim
//! mappings, and the decision with its rule. It never holds a credential:
//! `authorization`, `proxy-authorization`, `cookie`, `dpop` and every header
//! the decision removes before the upstream (proofs, the tenant's credential
//! headers) are dropped, so is a query parameter that carried the token, and
//! any remaining header or claim whose value is shaped like a JWT. Claims and
//! headers named in `redact` are left out. A record over `max_record_bytes`
//! loses its body, then its headers, and says so (`incomplete`); replay
//! counts it as not replayable.
//!
//! Never imports: transport, app.

use serde::Deserialize;
use serde_json::{Map, Value as Json, json};

use crate::decision::Decision;
use crate::decision::audit::Outcome;
use crate::foundation::proto::auth::CheckRequest;

/// The `decision_log.replay` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayLogConfig {
    /// `off` (default), or a file path (appended to; relative to the
    /// configuration file).
    pub output: String,
    /// Largest record written, in bytes (default 16384).
    pub max_record_bytes: usize,
    /// Claim and header names never recorded.
    pub redact: Vec<String>,
}

impl Default for ReplayLogConfig {
    fn default() -> Self {
        ReplayLogConfig {
            output: "off".into(),
            max_record_bytes: 16 * 1024,
            redact: Vec::new(),
        }
    }
}

/// Headers that carry credentials, never recorded.
const SECRET_HEADERS: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "dpop",
    "x-api-key",
];

/// Whether `value` looks like a JWT (three base64url parts, the first two
/// long enough to be a header and a payload) or holds one.
pub fn token_like(value: &str) -> bool {
    value
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        .any(|word| {
            let parts: Vec<&str> = word.split('.').collect();
            parts.len() == 3 && parts[0].len() >= 8 && parts[1].len() >= 8
        })
}

/// The replay record of one decision, or `None` when the request has no
/// HTTP attributes (nothing to replay).
pub fn record(
    decision: &Decision,
    request: &CheckRequest,
    config: &ReplayLogConfig,
) -> Option<String> {
    let attributes = request.attributes.as_ref()?;
    let http = attributes.request.as_ref()?.http.as_ref()?;
    let redacted = |name: &str| config.redact.iter().any(|r| r.eq_ignore_ascii_case(name));
    let mut headers = Map::new();
    let map = http.header_map.as_ref().map_or(&[][..], |m| &m.headers[..]);
    let pairs = http
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .chain(map.iter().map(|h| {
            let v = if h.value.is_empty() {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            } else {
                h.value.clone()
            };
            (h.key.to_ascii_lowercase(), v)
        }));
    for (name, value) in pairs {
        if name.starts_with(':')
            || SECRET_HEADERS.contains(&name.as_str())
            || decision
                .remove_headers
                .iter()
                .any(|r| r.eq_ignore_ascii_case(&name))
            || redacted(&name)
            || token_like(&value)
        {
            continue;
        }
        headers.insert(name, Json::String(value));
    }
    let path = drop_query_params(&http.path, &decision.remove_query);
    let claims: Map<String, Json> = decision
        .audit
        .claims
        .as_deref()
        .map(|c| {
            c.iter()
                .filter(|(k, v)| !redacted(k) && !v.as_str().is_some_and(token_like))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let outcome = Outcome::of(decision);
    let body: Option<Json> = (!http.body.is_empty())
        .then(|| serde_json::from_str(&http.body).ok())
        .flatten();
    let mut v = json!({
        "v": 1,
        "decision_id": decision.decision_id,
        "tenant": decision.tenant,
        "auth_method": decision.auth_method,
        "subject": decision.subject,
        "issuer": decision.audit.issuer,
        "claims": claims,
        "decision": outcome.decision,
        "reason": outcome.reason.code(),
        "rule": outcome.rule,
        "request": {
            "method": http.method,
            "host": http.host,
            "path": path,
            "headers": headers,
            "context_extensions": attributes.context_extensions,
            "peer": attributes.source.as_ref().map(|s| s.principal.clone()).filter(|p| !p.is_empty()),
        },
    });
    if let Some(b) = body {
        v["request"]["body"] = b;
    }
    let mut line = v.to_string();
    if line.len() > config.max_record_bytes {
        v["incomplete"] = Json::Bool(true);
        if let Some(r) = v["request"].as_object_mut() {
            r.remove("body");
        }
        line = v.to_string();
    }
    if line.len() > config.max_record_bytes {
        v["request"]["headers"] = json!({});
        v["claims"] = json!({});
        line = v.to_string();
    }
    Some(line)
}

/// `path?a=1&token=x` without the parameters named in `names`.
fn drop_query_params(path: &str, names: &[String]) -> String {
    let Some((p, q)) = path.split_once('?') else {
        return path.to_string();
    };
    let kept: Vec<&str> = q
        .split('&')
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(n, _)| n);
            !names.iter().any(|n| n == name) && !token_like(pair)
        })
        .collect();
    if kept.is_empty() {
        p.to_string()
    } else {
        format!("{p}?{}", kept.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_shaped_values_are_recognised() {
        assert!(token_like(
            "Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
        ));
        assert!(!token_like("INC-4711"));
        assert!(!token_like("v1.2.3"));
    }

    #[test]
    fn a_record_over_the_bound_loses_its_body_and_says_so() {
        let big = "x".repeat(4000);
        let mut request = CheckRequest::default();
        let mut http = crate::foundation::proto::auth::attribute_context::HttpRequest {
            method: "POST".into(),
            host: "a.example.com".into(),
            path: "/upload".into(),
            body: format!("{{\"blob\": \"{big}\"}}"),
            ..Default::default()
        };
        http.headers.insert("x-small".into(), "1".into());
        request.attributes = Some(crate::foundation::proto::auth::AttributeContext {
            request: Some(crate::foundation::proto::auth::attribute_context::Request {
                http: Some(http),
                ..Default::default()
            }),
            ..Default::default()
        });
        let decision = Decision::deny("id".into(), crate::foundation::reason::Reason::Allowed);
        let config = ReplayLogConfig {
            max_record_bytes: 1024,
            ..ReplayLogConfig::default()
        };
        let line = record(&decision, &request, &config).unwrap();
        assert!(line.len() <= 1024, "{} bytes", line.len());
        let v: Json = serde_json::from_str(&line).unwrap();
        assert_eq!(v["incomplete"], true);
        assert!(v["request"].get("body").is_none());
        assert_eq!(v["request"]["headers"]["x-small"], "1");
        // Within the bound: whole.
        let line = record(&decision, &request, &ReplayLogConfig::default()).unwrap();
        let v: Json = serde_json::from_str(&line).unwrap();
        assert_eq!(v["request"]["body"]["blob"], big.as_str());
        assert!(v.get("incomplete").is_none());
    }

    #[test]
    fn the_token_query_parameter_is_dropped() {
        assert_eq!(
            drop_query_params("/a?access_token=abc&page=2", &["access_token".into()]),
            "/a?page=2"
        );
    }
}
