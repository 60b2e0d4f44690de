//! Stage 1: a `CheckRequest` becomes plain Rust values.
//!
//! [`Input::from_check_request`] is the only place that reads the protobuf. What it
//! builds is what rules see: the host lower-cased without port or trailing dot, the
//! path exactly as Envoy forwards it (split from the query, [`crate::request::query`]),
//! lower-cased headers, the JSON body when Envoy sends one ([`crate::request::body`]),
//! the route's `context_extensions`, and the connection: source address, mTLS peer,
//! SNI.
//!
//! It must never re-normalize a path: a non-canonical one is reported as
//! [`InputError::Path`] and denied (see [`crate::request::path`]).

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde_json::Value as Json;

use crate::foundation::proto::auth::{AttributeContext, CheckRequest, attribute_context};
use crate::foundation::proto::core::{Address, Metadata, address};
use crate::foundation::reason::Reason;
use crate::request::body::body_of;
use crate::request::path::{self, PathError};
use crate::request::query::parse_query;

pub use crate::request::body::{Body, PARTIAL_BODY_HEADER};
pub(crate) use crate::request::body::{JsonRefused, strict_json, strict_json_within};
pub use crate::request::query::query_values;

pub use crate::foundation::limits::MAX_BODY_BYTES;

pub use crate::foundation::limits::MAX_BODY_COLLECTION_LEN;

/// The request, as the rules see it.
#[derive(Debug, Clone, Default)]
pub struct Resource {
    /// Lower-cased, without port and trailing dot.
    pub host: String,
    pub method: String,
    /// The path without the query, exactly as the upstream receives it.
    pub path: String,
    /// Percent-decoded path segments (a trailing slash is a final empty segment).
    pub segments: Vec<String>,
    /// The raw query string, without `?`.
    pub query: String,
    /// Query parameters, percent-decoded; a repeated name keeps its first value.
    pub query_params: BTreeMap<String, String>,
    /// A query parameter name appears more than once, in any spelling a common
    /// framework merges (letter case, `name[]`, PHP's `.`/space mangling, `;`
    /// as a separator: see [`crate::request::query`]). Upstreams disagree on
    /// which value counts (first, last, joined), so rules that read
    /// `resource.query` deny such a request rather than pick one.
    pub query_repeated: bool,
    /// Lower-cased names; repeated headers joined with `,` as Envoy does.
    pub headers: BTreeMap<String, String>,
    pub body: Body,
    pub scheme: String,
    pub protocol: String,
    /// `content-type: application/grpc…`: the path is `/package.Service/Method`.
    pub grpc: bool,
    pub context_extensions: BTreeMap<String, String>,
    /// Envoy's metadata (`metadata_context.filter_metadata`) as JSON, by filter name.
    pub metadata: BTreeMap<String, Json>,
    /// Route metadata (`route_metadata_context.filter_metadata`), by filter name.
    pub route_metadata: BTreeMap<String, Json>,
    /// Envoy's listener address, `ip:port`.
    pub destination: Option<String>,
}

/// Whole seconds since the Unix epoch (0 for a time before it).
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The connection and the moment, as the rules see them.
#[derive(Debug, Clone)]
pub struct Context {
    pub time: SystemTime,
    /// Downstream address, `ip:port`.
    pub source: Option<String>,
    /// The mTLS peer, when the downstream connection was mutually authenticated.
    pub peer: Option<Peer>,
    pub sni: String,
    /// Envoy's `x-request-id`.
    pub request_id: String,
}

impl Default for Context {
    fn default() -> Self {
        Context {
            time: SystemTime::UNIX_EPOCH,
            source: None,
            peer: None,
            sni: String::new(),
            request_id: String::new(),
        }
    }
}

/// The downstream peer's certificate identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// URI SAN (SPIFFE ID) when present, else DNS SAN or subject, as Envoy reports it.
    pub principal: String,
    /// PEM of the client certificate (URL-decoded), with `include_peer_certificate`.
    pub certificate: Option<String>,
}

impl Peer {
    /// The SPIFFE ID, when the principal is one.
    pub fn spiffe_id(&self) -> Option<&str> {
        self.principal
            .starts_with("spiffe://")
            .then_some(self.principal.as_str())
    }
}

/// Everything later stages need about one request.
#[derive(Debug, Clone, Default)]
pub struct Input {
    pub resource: Resource,
    pub context: Context,
    /// The `CheckRequest` as its descriptors read it, which OPA-Envoy's
    /// document is walked from ([`crate::request::protomap`]): decoded by the
    /// pipeline for Rego tenants only.
    pub check_message: Option<prost_reflect::DynamicMessage>,
}

/// Why a CheckRequest could not be turned into an [`Input`]. Denied, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("check request has no HTTP attributes (a TCP-level check)")]
    NotHttp,
    #[error("request has no method")]
    NoMethod,
    #[error(transparent)]
    Path(#[from] PathError),
}

impl InputError {
    pub fn reason(&self) -> Reason {
        match self {
            InputError::NotHttp => Reason::NotHttp,
            InputError::NoMethod => Reason::MalformedRequest,
            InputError::Path(e) => e.reason(),
        }
    }
}

impl Input {
    pub fn from_check_request(req: &CheckRequest) -> Result<Input, InputError> {
        Self::from_check_request_within(req, MAX_BODY_BYTES)
    }

    /// [`Input::from_check_request`], parsing a JSON body only when it is at
    /// most `max_body_bytes` (itself at most [`MAX_BODY_BYTES`]); a larger one
    /// is left unparsed, so rules that read it deny.
    pub fn from_check_request_within(
        req: &CheckRequest,
        max_body_bytes: usize,
    ) -> Result<Input, InputError> {
        Self::from_parts(req, None, max_body_bytes)
    }

    /// [`Input::from_check_request_within`] of a request whose header and
    /// context-extension maps were moved out first ([`take_maps`]): they are
    /// used as they are, nothing is copied.
    pub fn from_parts(
        req: &CheckRequest,
        taken: Option<Taken>,
        max_body_bytes: usize,
    ) -> Result<Input, InputError> {
        let attrs = req.attributes.as_ref().ok_or(InputError::NotHttp)?;
        let context = context_of(attrs);
        let http = attrs
            .request
            .as_ref()
            .and_then(|r| r.http.as_ref())
            .ok_or(InputError::NotHttp)?;
        if http.method.is_empty() {
            return Err(InputError::NoMethod);
        }
        let (headers, context_extensions) = match taken {
            Some(t) => (t.headers, t.context_extensions),
            None => (
                headers_of(http),
                attrs
                    .context_extensions
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
        };
        let (path, query, segments) = path::split_and_check(&http.path)?;
        let (query_params, query_repeated) = parse_query(query);
        let grpc = headers
            .get("content-type")
            .is_some_and(|ct| ct.starts_with("application/grpc"));
        let resource = Resource {
            host: normalize_host(if http.host.is_empty() {
                headers.get(":authority").map_or("", String::as_str)
            } else {
                &http.host
            }),
            method: http.method.to_ascii_uppercase(),
            path: path.to_string(),
            segments,
            query: query.to_string(),
            query_params,
            query_repeated,
            body: body_of(
                if http.raw_body.is_empty() {
                    http.body.as_bytes()
                } else {
                    &http.raw_body
                },
                &headers,
                max_body_bytes,
                !query.is_empty(),
            ),
            headers,
            scheme: http.scheme.clone(),
            protocol: http.protocol.clone(),
            grpc,
            context_extensions,
            metadata: metadata_json(attrs.metadata_context.as_ref()),
            route_metadata: metadata_json(attrs.route_metadata_context.as_ref()),
            destination: attrs
                .destination
                .as_ref()
                .and_then(|p| address_of(p.address.as_ref())),
        };
        Ok(Input {
            resource,
            context,
            check_message: None,
        })
    }
}

/// The connection facts; available even for a TCP-level check.
pub fn context_of(attrs: &AttributeContext) -> Context {
    let source = attrs.source.as_ref();
    // A verified client certificate can come without a principal Envoy could
    // name (no SAN, empty subject); it still binds certificate-bound tokens.
    let peer = source
        .filter(|p| !p.principal.is_empty() || !p.certificate.is_empty())
        .map(|p| Peer {
            principal: p.principal.clone(),
            certificate: (!p.certificate.is_empty()).then(|| {
                percent_encoding::percent_decode_str(&p.certificate)
                    .decode_utf8_lossy()
                    .into_owned()
            }),
        });
    let time = attrs
        .request
        .as_ref()
        .and_then(|r| r.time)
        .and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or_else(SystemTime::now);
    Context {
        time,
        source: source.and_then(|p| address_of(p.address.as_ref())),
        peer,
        sni: attrs
            .tls_session
            .as_ref()
            .map(|t| t.sni.clone())
            .unwrap_or_default(),
        request_id: attrs
            .request
            .as_ref()
            .and_then(|r| r.http.as_ref())
            .map(|h| h.id.clone())
            .unwrap_or_default(),
    }
}

/// Lower-cases, drops a port and a trailing dot: `API.Example.com.:443` →
/// `api.example.com`. Bracketed IPv6 literals keep their brackets.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let without_port = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        // Only a real port (`:443`) is dropped; `host:` is left as it is, so it
        // matches no tenant, as it matches none of Envoy's virtual hosts.
        match host.rsplit_once(':') {
            Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    without_port
        .strip_suffix('.')
        .unwrap_or(without_port)
        .to_ascii_lowercase()
}

/// Reads `headers`, or `header_map` when Envoy sends that instead
/// (`encode_raw_headers: true`). Names are lower-cased; repeats are joined with
/// `,` exactly as Envoy joins them in `headers`, so both encodings look the same.
/// A request's header and context-extension maps, moved out of its
/// `CheckRequest` ([`take_maps`]) into the form [`Input`] keeps them in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Taken {
    pub headers: BTreeMap<String, String>,
    pub context_extensions: BTreeMap<String, String>,
}

/// Moves the header and context-extension maps out of `req` when that loses
/// nothing: every header name is lower-case already and there is no
/// `header_map` beside the map (Envoy sends one form or the other), so the
/// [`Input`] built from them is the one [`Input::from_check_request`] builds.
/// `None` (and `req` untouched) otherwise. [`put_back`] undoes it.
pub fn take_maps(req: &mut CheckRequest) -> Option<Taken> {
    let attrs = req.attributes.as_mut()?;
    let http = attrs.request.as_mut()?.http.as_mut()?;
    let lossless = http
        .header_map
        .as_ref()
        .is_none_or(|m| m.headers.is_empty())
        && http
            .headers
            .keys()
            .all(|k| !k.bytes().any(|b| b.is_ascii_uppercase()));
    if !lossless {
        return None;
    }
    let headers = std::mem::take(&mut http.headers).into_iter().collect();
    let context_extensions = std::mem::take(&mut attrs.context_extensions)
        .into_iter()
        .collect();
    Some(Taken {
        headers,
        context_extensions,
    })
}

/// Copies maps [`take_maps`] moved out back into `req`, which is then the
/// request as it was decoded.
pub fn put_back(req: &mut CheckRequest, taken: &Taken) {
    let Some(attrs) = req.attributes.as_mut() else {
        return;
    };
    attrs.context_extensions = taken
        .context_extensions
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(http) = attrs.request.as_mut().and_then(|r| r.http.as_mut()) {
        http.headers = taken
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    }
}

fn headers_of(http: &attribute_context::HttpRequest) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = http
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    if let Some(map) = &http.header_map {
        for h in &map.headers {
            let value = if h.raw_value.is_empty() {
                h.value.clone()
            } else {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            };
            out.entry(h.key.to_ascii_lowercase())
                .and_modify(|v| {
                    v.push(',');
                    v.push_str(&value);
                })
                .or_insert(value);
        }
    }
    out
}

fn address_of(addr: Option<&Address>) -> Option<String> {
    match addr?.address.as_ref()? {
        address::Address::SocketAddress(sa) => {
            let port = match &sa.port_specifier {
                Some(crate::foundation::proto::core::socket_address::PortSpecifier::PortValue(
                    p,
                )) => *p,
                _ => 0,
            };
            Some(if sa.address.contains(':') {
                format!("[{}]:{port}", sa.address)
            } else {
                format!("{}:{port}", sa.address)
            })
        }
        address::Address::Pipe(p) => Some(format!("unix:{}", p.path)),
        address::Address::EnvoyInternalAddress(_) => None,
    }
}

fn metadata_json(md: Option<&Metadata>) -> BTreeMap<String, Json> {
    md.map(|m| {
        m.filter_metadata
            .iter()
            .map(|(k, s)| (k.clone(), struct_to_json(s)))
            .collect()
    })
    .unwrap_or_default()
}

/// `google.protobuf.Struct` → JSON. Whole numbers become integers, since claims
/// such as `exp` arrive as doubles.
pub fn struct_to_json(s: &prost_types::Struct) -> Json {
    Json::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: &prost_types::Value) -> Json {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
                Json::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n).map_or(Json::Null, Json::Number)
            }
        }
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::ListValue(l)) => Json::Array(l.values.iter().map(value_to_json).collect()),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::foundation::proto::auth::attribute_context::{HttpRequest, Request};
    use crate::foundation::proto::core::{HeaderMap, HeaderValue};

    fn request(http: HttpRequest) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    time: None,
                    http: Some(http),
                }),
                ..Default::default()
            }),
        }
    }

    fn get(path: &str) -> HttpRequest {
        HttpRequest {
            method: "GET".into(),
            path: path.into(),
            host: "Example.COM.:8443".into(),
            ..Default::default()
        }
    }

    fn with_maps(headers: &[(&str, &str)]) -> CheckRequest {
        let mut http = get("/a/b?x=1");
        http.body = "{\"k\": 1}".into();
        http.headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut req = request(http);
        let attrs = req.attributes.as_mut().unwrap();
        attrs.context_extensions = [("tenant".to_string(), "acme".to_string())].into();
        attrs.request.as_mut().unwrap().time = Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        });
        req
    }

    #[test]
    fn an_input_from_taken_maps_is_the_input_from_the_request() {
        let headers = [
            ("content-type", "application/json"),
            ("authorization", "Bearer t"),
            (":authority", "acme.example"),
        ];
        let original = with_maps(&headers);
        let mut req = original.clone();
        let taken = take_maps(&mut req).unwrap();
        assert!(
            req.attributes
                .as_ref()
                .unwrap()
                .context_extensions
                .is_empty()
        );
        let moved = Input::from_parts(&req, Some(taken.clone()), MAX_BODY_BYTES).unwrap();
        let copied = Input::from_check_request(&original).unwrap();
        assert_eq!(format!("{moved:?}"), format!("{copied:?}"));
        assert_eq!(moved.resource.headers.len(), 3);
        assert_eq!(moved.resource.context_extensions["tenant"], "acme");
        // Put back, the request is the one decoded.
        put_back(&mut req, &taken);
        assert_eq!(req, original);
    }

    #[test]
    fn maps_are_not_taken_when_the_input_would_differ() {
        // An upper-case name is lower-cased by the Input: taking would lose it.
        let mut upper = with_maps(&[("X-Upper", "1")]);
        let before = upper.clone();
        assert!(take_maps(&mut upper).is_none());
        assert_eq!(upper, before);
        // A header_map beside the map is merged into it.
        let mut both = with_maps(&[("a", "1")]);
        both.attributes
            .as_mut()
            .unwrap()
            .request
            .as_mut()
            .unwrap()
            .http
            .as_mut()
            .unwrap()
            .header_map = Some(HeaderMap {
            headers: vec![HeaderValue {
                key: "a".into(),
                value: "2".into(),
                raw_value: Vec::new(),
            }],
        });
        let before = both.clone();
        assert!(take_maps(&mut both).is_none());
        assert_eq!(both, before);
    }

    #[test]
    fn host_is_normalized() {
        assert_eq!(normalize_host("API.Example.com.:443"), "api.example.com");
        assert_eq!(normalize_host("example.com"), "example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host(""), "");
        assert_eq!(normalize_host("example.com:"), "example.com:");
        let input = Input::from_check_request(&request(get("/a"))).unwrap();
        assert_eq!(input.resource.host, "example.com");
    }

    #[test]
    fn path_and_query_are_split_and_decoded() {
        let input = Input::from_check_request(&request(get("/a/b%20c?x=1&y=a%2Fb&x=2"))).unwrap();
        assert_eq!(input.resource.path, "/a/b%20c");
        assert_eq!(input.resource.segments, vec!["a", "b c"]);
        assert_eq!(input.resource.query, "x=1&y=a%2Fb&x=2");
        assert_eq!(input.resource.query_params["x"], "1");
        assert_eq!(input.resource.query_params["y"], "a/b");
        assert!(input.resource.query_repeated);
        let input = Input::from_check_request(&request(get("/a?x=1&y=2"))).unwrap();
        assert!(!input.resource.query_repeated);
    }

    #[test]
    fn non_canonical_path_is_an_error_not_normalized() {
        let err = Input::from_check_request(&request(get("/public/../admin"))).unwrap_err();
        assert_eq!(err.reason(), Reason::NonCanonicalPath);
    }

    #[test]
    fn tcp_level_check_is_not_http() {
        let req = CheckRequest {
            attributes: Some(AttributeContext::default()),
        };
        assert_eq!(
            Input::from_check_request(&req).unwrap_err(),
            InputError::NotHttp
        );
        let empty = CheckRequest { attributes: None };
        assert_eq!(
            Input::from_check_request(&empty).unwrap_err().reason(),
            Reason::NotHttp
        );
    }

    #[test]
    fn header_map_is_read_when_headers_is_empty_and_repeats_join() {
        let mut http = get("/");
        http.header_map = Some(HeaderMap {
            headers: vec![
                HeaderValue {
                    key: "X-Thing".into(),
                    value: "a".into(),
                    raw_value: vec![],
                },
                HeaderValue {
                    key: "x-thing".into(),
                    value: String::new(),
                    raw_value: b"b".to_vec(),
                },
            ],
        });
        let input = Input::from_check_request(&request(http)).unwrap();
        assert_eq!(input.resource.headers["x-thing"], "a,b");
    }

    #[test]
    fn json_body_is_parsed_and_partial_body_is_flagged() {
        let mut http = get("/");
        http.headers
            .insert("content-type".into(), "application/json".into());
        http.body = r#"{"amount": 5}"#.into();
        let input = Input::from_check_request(&request(http.clone())).unwrap();
        assert_eq!(
            input.resource.body,
            Body::Json(serde_json::json!({"amount": 5}))
        );

        http.raw_body = br#"{"amount": 6}"#.to_vec();
        let input = Input::from_check_request(&request(http.clone())).unwrap();
        assert_eq!(
            input.resource.body,
            Body::Json(serde_json::json!({"amount": 6}))
        );

        http.headers
            .insert(PARTIAL_BODY_HEADER.into(), "true".into());
        let input = Input::from_check_request(&request(http.clone())).unwrap();
        assert_eq!(input.resource.body, Body::Truncated);

        for ambiguous in [
            r#"{"amount": 1, "amount": 1000000}"#,
            r#"{"amount": 1, "AMOUNT": 1000000}"#,
            r#"{"a": {"k": 1, "K": 2}}"#,
            r#"{"amount": 1} trailing"#,
        ] {
            let mut dup = get("/");
            dup.headers
                .insert("content-type".into(), "application/json".into());
            dup.body = ambiguous.into();
            let input = Input::from_check_request(&request(dup)).unwrap();
            assert_eq!(input.resource.body, Body::Unparsed, "{ambiguous}");
        }

        let long = format!("[{}]", vec!["1"; MAX_BODY_COLLECTION_LEN + 1].join(","));
        let fits = format!("[{}]", vec!["1"; MAX_BODY_COLLECTION_LEN].join(","));
        for (body, want_json) in [(long, false), (fits, true)] {
            let mut list = get("/");
            list.headers
                .insert("content-type".into(), "application/json".into());
            list.body = body;
            let input = Input::from_check_request(&request(list)).unwrap();
            assert_eq!(matches!(input.resource.body, Body::Json(_)), want_json);
        }

        let mut unsent = get("/");
        unsent.headers.insert("content-length".into(), "12".into());
        let input = Input::from_check_request(&request(unsent)).unwrap();
        assert_eq!(input.resource.body, Body::Unparsed);

        let mut text = get("/");
        text.body = "not json".into();
        text.headers
            .insert("content-type".into(), "application/json".into());
        let input = Input::from_check_request(&request(text)).unwrap();
        assert_eq!(input.resource.body, Body::Unparsed);
    }

    #[test]
    fn grpc_is_detected() {
        let mut http = get("/pkg.Svc/Method");
        http.headers
            .insert("content-type".into(), "application/grpc+proto".into());
        let input = Input::from_check_request(&request(http)).unwrap();
        assert!(input.resource.grpc);
        assert_eq!(input.resource.segments, vec!["pkg.Svc", "Method"]);
    }

    #[test]
    fn peer_certificate_is_url_decoded() {
        let mut req = request(get("/"));
        let attrs = req.attributes.as_mut().unwrap();
        attrs.source = Some(attribute_context::Peer {
            principal: "spiffe://acme.example/ns/a/sa/b".into(),
            certificate: "-----BEGIN%20CERTIFICATE-----%0AMII".into(),
            ..Default::default()
        });
        let input = Input::from_check_request(&req).unwrap();
        let peer = input.context.peer.unwrap();
        assert_eq!(peer.spiffe_id(), Some("spiffe://acme.example/ns/a/sa/b"));
        assert_eq!(
            peer.certificate.as_deref(),
            Some("-----BEGIN CERTIFICATE-----\nMII")
        );
    }

    #[test]
    fn struct_numbers_become_integers() {
        let s = prost_types::Struct {
            fields: [
                (
                    "exp".to_string(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::NumberValue(1.7e9)),
                    },
                ),
                (
                    "ratio".to_string(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::NumberValue(0.5)),
                    },
                ),
            ]
            .into_iter()
            .collect(),
        };
        assert_eq!(
            struct_to_json(&s),
            serde_json::json!({"exp": 1_700_000_000, "ratio": 0.5})
        );
    }
}
