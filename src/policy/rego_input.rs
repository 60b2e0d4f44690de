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

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json, json};

use crate::identity::Identity;
use crate::request::input::PARTIAL_BODY_HEADER;

/// A JSON body that does not parse (the policy cannot be given it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyRefused;

/// What the document adds to the request, worked out once for either form
/// ([`document`], [`value`]).
struct Added {
    parsed_path: Vec<String>,
    parsed_query: Map<String, Json>,
    parsed_body: Json,
    truncated_body: bool,
    source_principal: Option<String>,
}

/// The request document's fields [`added`] reads, in either form.
trait Fields {
    /// The member `key` (a missing one where there is none).
    fn at(&self, key: &str) -> &Self;
    fn text(&self) -> Option<&str>;
}

impl Fields for Json {
    fn at(&self, key: &str) -> &Json {
        &self[key]
    }
    fn text(&self) -> Option<&str> {
        self.as_str()
    }
}

impl Fields for regorus::Value {
    fn at(&self, key: &str) -> &regorus::Value {
        &self[key]
    }
    fn text(&self) -> Option<&str> {
        match self {
            regorus::Value::String(s) => Some(s),
            _ => None,
        }
    }
}

fn added<F: Fields>(request: &F) -> Result<Added, BodyRefused> {
    let http = request.at("attributes").at("request").at("http");
    let path = http.at("path").text().unwrap_or("");
    let (raw_path, raw_query) = path.split_once('?').unwrap_or((path, ""));
    let decoded = percent_encoding::percent_decode_str(raw_path).decode_utf8_lossy();
    let parsed_path = decoded
        .trim_start_matches('/')
        .split('/')
        .map(str::to_string)
        .collect();
    let (parsed_body, truncated_body) = body(http)?;
    let source_principal = request
        .at("attributes")
        .at("source")
        .at("principal")
        .text()
        .filter(|p| !p.is_empty())
        .map(str::to_string);
    Ok(Added {
        parsed_path,
        parsed_query: form(raw_query),
        parsed_body,
        truncated_body,
        source_principal,
    })
}

/// The input document for one check as JSON; `request` is the
/// `CheckRequest` as [`crate::request::protomap::document`] maps it. The
/// readable form of what [`value`] builds for the engine (a test holds the
/// two equal).
pub fn document(request: &Json, identity: &Identity, tenant: &str) -> Result<Json, BodyRefused> {
    let added = added(request)?;
    let mut doc = match request {
        Json::Object(o) => o.clone(),
        _ => Map::new(),
    };
    doc.insert(
        "version".into(),
        json!({"encoding": "protojson", "ext_authz": "v3"}),
    );
    let parsed_path = added.parsed_path.into_iter().map(Json::String).collect();
    doc.insert("parsed_path".into(), Json::Array(parsed_path));
    doc.insert("parsed_query".into(), Json::Object(added.parsed_query));
    doc.insert("parsed_body".into(), added.parsed_body);
    doc.insert("truncated_body".into(), Json::Bool(added.truncated_body));
    if let Some(principal) = added.source_principal {
        doc.insert("source_principal".into(), Json::String(principal));
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

/// The input document for one check as the engine's value; `request` is
/// the `CheckRequest` as [`crate::request::protomap::walk`] builds it in this
/// form. Equal to `regorus::Value::from(document(…))` of the JSON form, built
/// without a second JSON document and serde's conversion (most of a Rego
/// check's cost once went there).
pub fn value(
    request: &regorus::Value,
    identity: &Identity,
    tenant: &str,
) -> Result<regorus::Value, BodyRefused> {
    use regorus::Value;
    let added = added(request)?;
    let mut doc: BTreeMap<Value, Value> = match request {
        Value::Object(o) => o.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        _ => BTreeMap::new(),
    };
    let strings = |pairs: &[(&str, &str)]| -> Value {
        Value::from(
            pairs
                .iter()
                .map(|(k, v)| (key(k), Value::from(*v)))
                .collect::<BTreeMap<_, _>>(),
        )
    };
    let optional = |s: &Option<String>| s.as_deref().map_or(Value::Null, Value::from);
    doc.insert(
        key("version"),
        strings(&[("encoding", "protojson"), ("ext_authz", "v3")]),
    );
    let parsed_path: Vec<Value> = added.parsed_path.into_iter().map(Value::from).collect();
    doc.insert(key("parsed_path"), Value::from(parsed_path));
    doc.insert(key("parsed_query"), object_of(&added.parsed_query));
    doc.insert(key("parsed_body"), value_of(&added.parsed_body));
    doc.insert(key("truncated_body"), Value::Bool(added.truncated_body));
    if let Some(principal) = added.source_principal {
        doc.insert(key("source_principal"), Value::from(principal));
    }
    let caller: BTreeMap<Value, Value> = [
        (key("method"), Value::from(identity.method.as_str())),
        (key("subject"), optional(&identity.subject)),
        (key("issuer"), optional(&identity.issuer)),
    ]
    .into_iter()
    .collect();
    let portcullis: BTreeMap<Value, Value> = [
        (key("tenant"), Value::from(tenant)),
        (key("identity"), Value::from(caller)),
        (key("claims"), object_of(&identity.claims)),
    ]
    .into_iter()
    .collect();
    doc.insert(key("portcullis"), Value::from(portcullis));
    Ok(Value::from(doc))
}

/// `json` as the engine's value, exactly as `regorus::Value::from` makes it
/// from an owned copy (through serde: an unsigned integer as `u64`, a
/// negative one as `i64`, any other number as `f64`, an empty object as
/// `Value::new_object()`), without the copy.
pub fn value_of(json: &Json) -> regorus::Value {
    use regorus::Value;
    match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::from(u)
            } else if let Some(i) = n.as_i64() {
                Value::from(i)
            } else {
                // serde_json holds only finite floats.
                n.as_f64().map_or(Value::Null, Value::from)
            }
        }
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => Value::from(items.iter().map(value_of).collect::<Vec<_>>()),
        Json::Object(o) => object_of(o),
    }
}

fn object_of(o: &Map<String, Json>) -> regorus::Value {
    if o.is_empty() {
        return regorus::Value::new_object();
    }
    regorus::Value::from(
        o.iter()
            .map(|(k, v)| (key(k), value_of(v)))
            .collect::<BTreeMap<_, _>>(),
    )
}

fn key(k: &str) -> regorus::Value {
    regorus::Value::from(k)
}

/// The request walked straight into the engine's value: what [`value_of`]
/// makes of [`crate::request::protomap::document`]'s JSON.
impl crate::request::protomap::Build for regorus::Value {
    type Key = regorus::Value;
    fn key(name: &str) -> regorus::Value {
        key(name)
    }
    fn json(json: Json) -> regorus::Value {
        value_of(&json)
    }
    fn string(s: &str) -> regorus::Value {
        regorus::Value::from(s)
    }
    fn list(items: Vec<regorus::Value>) -> regorus::Value {
        regorus::Value::from(items)
    }
    fn object(entries: Vec<(regorus::Value, regorus::Value)>) -> regorus::Value {
        if entries.is_empty() {
            return regorus::Value::new_object();
        }
        regorus::Value::from(entries.into_iter().collect::<BTreeMap<_, _>>())
    }
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
fn body<F: Fields>(http: &F) -> Result<(Json, bool), BodyRefused> {
    let header = |name: &str| http.at("headers").at(name).text();
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
    let text: String = match http.at("body").text() {
        Some(b) if !b.is_empty() => b.to_string(),
        _ => match http.at("rawBody").text() {
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

    /// The engine's value is the JSON document's, exactly: equal as values
    /// and as text (which tells `1` from `1.0`), for requests that reach
    /// every part of the document.
    #[test]
    fn the_value_is_the_json_documents() {
        let mut caller = Identity::anonymous();
        caller.method = crate::identity::AuthMethod::Jwt;
        caller.subject = Some("alice".into());
        caller.issuer = Some("https://idp.example".into());
        let claims = json!({"tenant": "acme", "scope": ["a", "b"], "n": 7, "neg": -3,
            "f": 1.5, "big": u64::MAX, "deep": {"x": [{"y": null}], "e": {}}, "t": true});
        caller.claims = std::sync::Arc::new(claims.as_object().unwrap().clone());
        let bodies = [
            json!({"path": "/a%2Fb/c?x=1&x=2&y=", "method": "GET"}),
            json!({"path": "/", "body": "{\"a\": [1, 2.0, -4, {}], \"b\": \"é\"}",
                "headers": {"content-type": "application/json"}}),
            json!({"path": "/f", "body": "a=1&b=%20",
                "headers": {"content-type": "application/x-www-form-urlencoded"}}),
            json!({"path": "/t", "body": "{",
                "headers": {"content-type": "application/json", "content-length": "9"}}),
            json!({"headers": {"content-type": "text/plain"}, "size": 12}),
        ];
        for (i, http) in bodies.into_iter().enumerate() {
            let mut req = request(http);
            req["attributes"]["destination"] =
                json!({"address": {"socketAddress": {"address": "10.0.0.1", "portValue": 8080}}});
            for identity in [&caller, &Identity::anonymous()] {
                let want = regorus::Value::from(document(&req, identity, "acme").unwrap());
                let got = value(&value_of(&req), identity, "acme").unwrap();
                assert_eq!(got, want, "request {i}");
                assert_eq!(got.to_string(), want.to_string(), "request {i}");
            }
        }
        let refused = request(json!({"path": "/", "body": "{nope",
            "headers": {"content-type": "application/json"}}));
        assert_eq!(
            value(&value_of(&refused), &caller, "acme").map(|_| ()),
            Err(BodyRefused)
        );
        // Not an object: the document is only what portcullis adds.
        let want = regorus::Value::from(document(&Json::Null, &caller, "t").unwrap());
        assert_eq!(value(&regorus::Value::Null, &caller, "t").unwrap(), want);
    }

    /// Walked straight into the engine's value, a `CheckRequest` is what
    /// its JSON document converts to: every kind of field (strings, maps,
    /// bytes, numbers, a `Timestamp`, a `Struct` with nested values), the
    /// document's additions read from either form alike.
    #[test]
    fn a_check_request_walked_into_the_value_is_its_json_document() {
        use crate::foundation::proto::auth::{AttributeContext, CheckRequest, attribute_context};
        use crate::foundation::proto::core::{
            Address, Metadata, SocketAddress, address, socket_address,
        };
        use crate::request::protomap;
        let socket = |ip: &str, port| Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        };
        let mut http = attribute_context::HttpRequest {
            id: "r1".into(),
            method: "POST".into(),
            path: "/tenants/acme/orders/4%202?x=1&y=2&x=3".into(),
            host: "api.example".into(),
            protocol: "HTTP/1.1".into(),
            size: 17,
            raw_body: br#"{"n": 1, "f": 2.5, "s": ["a"]}"#.to_vec(),
            ..Default::default()
        };
        http.headers
            .insert("content-type".into(), "application/json".into());
        http.headers.insert("content-length".into(), "29".into());
        let number = |n: f64| prost_types::Value {
            kind: Some(prost_types::value::Kind::NumberValue(n)),
        };
        let nested = prost_types::Struct {
            fields: [
                ("whole".to_string(), number(3.0)),
                ("half".to_string(), number(-0.5)),
                (
                    "list".to_string(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::ListValue(
                            prost_types::ListValue {
                                values: vec![
                                    number(1.0),
                                    prost_types::Value {
                                        kind: Some(prost_types::value::Kind::NullValue(0)),
                                    },
                                ],
                            },
                        )),
                    },
                ),
            ]
            .into(),
        };
        let request = CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(attribute_context::Peer {
                    address: Some(socket("10.1.2.3", 51000)),
                    principal: "spiffe://acme/client".into(),
                    labels: [("team".to_string(), "a".to_string())].into(),
                    ..Default::default()
                }),
                destination: Some(attribute_context::Peer {
                    address: Some(socket("10.0.0.9", 8080)),
                    ..Default::default()
                }),
                request: Some(attribute_context::Request {
                    time: Some(prost_types::Timestamp {
                        seconds: 1_700_000_000,
                        nanos: 5,
                    }),
                    http: Some(http),
                }),
                context_extensions: [("tenant".to_string(), "acme".to_string())].into(),
                metadata_context: Some(Metadata {
                    filter_metadata: [("envoy.filters.http.jwt_authn".to_string(), nested)].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        let mut caller = Identity::anonymous();
        caller.subject = Some("alice".into());
        caller.claims = std::sync::Arc::new(
            json!({"scope": ["orders:read"], "n": 1})
                .as_object()
                .unwrap()
                .clone(),
        );
        let json = protomap::document(&request);
        let walked: regorus::Value = protomap::walk(&protomap::message(&request).unwrap());
        assert_eq!(walked, regorus::Value::from(json.clone()));
        let want = regorus::Value::from(document(&json, &caller, "acme").unwrap());
        let got = value(&walked, &caller, "acme").unwrap();
        assert_eq!(got, want);
        assert_eq!(got.to_string(), want.to_string());
        // The parts read from the request reached the document.
        assert_eq!(got["parsed_body"]["f"], regorus::Value::from(2.5));
        assert_eq!(
            got["source_principal"],
            regorus::Value::from("spiffe://acme/client")
        );
        assert_eq!(got["parsed_path"][3], regorus::Value::from("4 2"));
    }

    fn any_json() -> impl proptest::strategy::Strategy<Value = Json> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::Bool),
            any::<u64>().prop_map(Json::from),
            any::<i64>().prop_map(Json::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Json::from),
            "\\PC{0,6}".prop_map(Json::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
                proptest::collection::vec(("\\PC{0,4}", inner), 0..6)
                    .prop_map(|kv| Json::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// [`value_of`] is `regorus::Value::from` on any JSON value.
        #[test]
        fn value_of_is_regorus_own_conversion(json in any_json()) {
            let want = regorus::Value::from(json.clone());
            let got = value_of(&json);
            proptest::prop_assert_eq!(&got, &want);
            proptest::prop_assert_eq!(got.to_string(), want.to_string());
        }
    }
}
