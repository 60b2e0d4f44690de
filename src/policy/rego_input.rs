//! The `input` document a Rego policy reads: OPA-Envoy's, field for field
//! (`envoyauth/request.go`), plus what portcullis already verified.
//!
//! - the `CheckRequest` as OPA-Envoy maps it ([`crate::request::protomap`]):
//!   `attributes.request.http.{id,method,headers,path,host,scheme,protocol,body,rawBody,size}`,
//!   `attributes.{source,destination}.address.socketAddress.{address,portValue}`,
//!   `attributes.contextExtensions`, `attributes.metadataContext`, …, unset
//!   fields left out;
//! - `parsed_path`: the path before `?`, percent-decoded, split at `/` (no
//!   leading empty segment); `parsed_query`: each parameter's list of values;
//! - `parsed_body` and `truncated_body`: a JSON or form body parsed (as OPA-Envoy:
//!   by `content-type`, truncated when Envoy says the body is partial or it is
//!   shorter than `content-length`); a JSON body that does not parse is
//!   [`BodyRefused`] (OPA-Envoy errors too);
//! - `version`: `{"encoding": "protojson", "ext_authz": "v3"}`;
//! - `source_principal` when the downstream is an mTLS peer;
//! - `portcullis`: `{tenant, identity: {method, subject, issuer}, claims}`,
//!   the caller portcullis' identity stage verified.
//!
//! Never imports: decision, tenants or anything above them.

use serde_json::{Map, Value as Json, json};

use crate::identity::Identity;
use crate::request::input::PARTIAL_BODY_HEADER;

/// A JSON body that does not parse (the policy cannot be given it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyRefused;

/// The input document for one check; `request` is the `CheckRequest` as
/// [`crate::request::protomap::document`] maps it.
pub fn document(request: &Json, identity: &Identity, tenant: &str) -> Result<Json, BodyRefused> {
    let mut doc = match request {
        Json::Object(o) => o.clone(),
        _ => Map::new(),
    };
    let http = &request["attributes"]["request"]["http"];
    let path = http["path"].as_str().unwrap_or("");
    let (raw_path, raw_query) = path.split_once('?').unwrap_or((path, ""));
    let decoded = percent_encoding::percent_decode_str(raw_path).decode_utf8_lossy();
    let parsed_path: Vec<Json> = decoded
        .trim_start_matches('/')
        .split('/')
        .map(|s| Json::String(s.to_string()))
        .collect();
    doc.insert(
        "version".into(),
        json!({"encoding": "protojson", "ext_authz": "v3"}),
    );
    doc.insert("parsed_path".into(), Json::Array(parsed_path));
    doc.insert("parsed_query".into(), Json::Object(form(raw_query)));
    let (parsed_body, truncated) = body(http)?;
    doc.insert("parsed_body".into(), parsed_body);
    doc.insert("truncated_body".into(), Json::Bool(truncated));
    if let Some(principal) = request["attributes"]["source"]["principal"].as_str()
        && !principal.is_empty()
    {
        doc.insert("source_principal".into(), Json::String(principal.into()));
    }
    doc.insert(
        "portcullis".into(),
        json!({
            "tenant": tenant,
            "identity": {
                "method": identity.method.as_str(),
                "subject": identity.subject,
                "issuer": identity.issuer,
            },
            "claims": Json::Object((*identity.claims).clone()),
        }),
    );
    Ok(Json::Object(doc))
}

/// `application/x-www-form-urlencoded` (a query string too): each name's values.
fn form(text: &str) -> Map<String, Json> {
    let mut out: Map<String, Json> = Map::new();
    for (k, v) in form_urlencoded::parse(text.as_bytes()) {
        let entry = out
            .entry(k.into_owned())
            .or_insert_with(|| Json::Array(Vec::new()));
        if let Json::Array(values) = entry {
            values.push(Json::String(v.into_owned()));
        }
    }
    out
}

/// `(parsed_body, truncated_body)` as OPA-Envoy's `getParsedBody`.
fn body(http: &Json) -> Result<(Json, bool), BodyRefused> {
    let header = |name: &str| http["headers"][name].as_str();
    if header(PARTIAL_BODY_HEADER) == Some("true") {
        return Ok((Json::Null, true));
    }
    let Some(content_type) = header("content-type") else {
        return Ok((Json::Null, false));
    };
    let json_body = content_type.contains("application/json");
    let form_body = content_type.contains("application/x-www-form-urlencoded");
    if !json_body && !form_body {
        // gRPC and multipart bodies are not parsed (docs/rego.md).
        return Ok((Json::Null, false));
    }
    let text: String = match http["body"].as_str() {
        Some(b) if !b.is_empty() => b.to_string(),
        _ => match http["rawBody"].as_str() {
            Some(raw) => {
                use base64::Engine as _;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(raw)
                    .map_err(|_| BodyRefused)?;
                String::from_utf8_lossy(&bytes).into_owned()
            }
            None => return Ok((Json::Null, false)),
        },
    };
    if let Some(declared) = header("content-length") {
        let declared: usize = declared.trim().parse().map_err(|_| BodyRefused)?;
        if text.len() < declared {
            return Ok((Json::Null, true));
        }
    }
    if json_body {
        let value: Json = serde_json::from_str(&text).map_err(|_| BodyRefused)?;
        return Ok((value, false));
    }
    Ok((Json::Object(form(&text)), false))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn request(http: Json) -> Json {
        json!({"attributes": {"request": {"http": http}, "source": {"principal": "spiffe://a/b"}}})
    }

    #[test]
    fn path_query_version_and_the_caller_are_added() {
        let doc = document(
            &request(json!({"path": "/people/al%20ice?x=1&x=2&y=%2F", "method": "GET"})),
            &Identity::anonymous(),
            "acme",
        )
        .unwrap();
        assert_eq!(doc["parsed_path"], json!(["people", "al ice"]));
        assert_eq!(doc["parsed_query"], json!({"x": ["1", "2"], "y": ["/"]}));
        assert_eq!(
            doc["version"],
            json!({"encoding": "protojson", "ext_authz": "v3"})
        );
        assert_eq!(doc["parsed_body"], Json::Null);
        assert_eq!(doc["truncated_body"], false);
        assert_eq!(doc["source_principal"], "spiffe://a/b");
        assert_eq!(doc["portcullis"]["tenant"], "acme");
        assert_eq!(doc["portcullis"]["identity"]["method"], "anonymous");
        assert_eq!(doc["attributes"]["request"]["http"]["method"], "GET");
    }

    #[test]
    fn a_json_or_form_body_is_parsed_a_short_one_is_truncated() {
        let parsed = |http: Json| document(&request(http), &Identity::anonymous(), "t");
        let doc = parsed(json!({"path": "/", "body": "{\"a\": [1]}",
            "headers": {"content-type": "application/json", "content-length": "10"}}))
        .unwrap();
        assert_eq!(doc["parsed_body"], json!({"a": [1]}));
        let doc = parsed(json!({"path": "/", "body": "a=1&b=2",
            "headers": {"content-type": "application/x-www-form-urlencoded"}}))
        .unwrap();
        assert_eq!(doc["parsed_body"], json!({"a": ["1"], "b": ["2"]}));
        let doc = parsed(json!({"path": "/", "body": "{\"a\"",
            "headers": {"content-type": "application/json", "content-length": "99"}}))
        .unwrap();
        assert_eq!(
            (doc["parsed_body"].clone(), doc["truncated_body"].clone()),
            (Json::Null, json!(true))
        );
        let doc = parsed(json!({"path": "/", "body": "{",
            "headers": {"content-type": "application/json", PARTIAL_BODY_HEADER: "true"}}))
        .unwrap();
        assert_eq!(doc["truncated_body"], true);
        assert_eq!(
            parsed(json!({"path": "/", "body": "{nope",
                "headers": {"content-type": "application/json"}})),
            Err(BodyRefused)
        );
    }
}
