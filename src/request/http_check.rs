//! An authorization request that arrives over plain HTTP — Envoy's ext_authz
//! `http_service`, or a proxy's forward-auth subrequest (nginx `auth_request`,
//! Traefik ForwardAuth, Caddy `forward_auth`) — read into the same
//! `CheckRequest` the gRPC path receives, so every later stage is the gRPC
//! path's own.
//!
//! Two shapes share one listener. Under `path_prefix` the request *is* the
//! original one (Envoy sends the method, the path after the prefix, the
//! headers `allowed_headers` lets through and, with `with_request_body`, the
//! body). At `forward_auth.path` the original method, URI, host and scheme are
//! in headers the proxy sets. Either way the asker must be one of
//! `trusted_proxies`: whoever else calls names the path and tenant checked, and
//! would read the headers meant for the upstream (a minted token among them).
//!
//! Never imports: identity, policy, decision or anything above them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::HeaderMap;
use ipnet::IpNet;
use serde::Deserialize;

use crate::foundation::proto::auth::{AttributeContext, CheckRequest, attribute_context};
use crate::foundation::reason::Reason;
use crate::request::body::PARTIAL_BODY_HEADER;

/// Largest `http.body_timeout`: a check nobody waits this long for.
pub const MAX_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP listener: `http:` in the server configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpModeConfig {
    /// The listener's TCP address (its own port, beside gRPC and admin).
    pub listen: SocketAddr,
    /// Envoy's `http_service.path_prefix`: the original path follows it.
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
    /// A header the proxy sets to the tenant's id (Envoy's
    /// `authorization_request.headers_to_add`); read as the route's
    /// `context_extensions` tenant would be. Unset: tenants come from the host.
    #[serde(default)]
    pub tenant_header: Option<String>,
    /// The addresses (CIDRs) of the proxies that may ask. Any other asker is
    /// refused with `untrusted_forwarded_request`.
    #[serde(default = "default_trusted")]
    pub trusted_proxies: Vec<IpNet>,
    #[serde(default)]
    pub forward_auth: ForwardAuthConfig,
    /// How long a trusted proxy has to deliver a check's body once its
    /// headers are in. Envoy buffers the body before it asks, so a body that
    /// trickles is no Envoy's; past this the body read so far is judged as
    /// cut short ([`BodyRead::Incomplete`]).
    #[serde(
        default = "default_body_timeout",
        with = "crate::foundation::duration::serde_text"
    )]
    pub body_timeout: Duration,
}

/// Where a forward-auth subrequest names the original request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardAuthConfig {
    /// The path proxies send forward-auth subrequests to.
    pub path: String,
    /// Headers naming the original URI (path and query); exactly one value.
    pub uri_headers: Vec<String>,
    /// Headers naming the original method.
    pub method_headers: Vec<String>,
    /// Headers naming the original host; the subrequest's own `Host` otherwise.
    pub host_headers: Vec<String>,
    /// Headers naming the original scheme.
    pub proto_headers: Vec<String>,
}

impl Default for ForwardAuthConfig {
    fn default() -> Self {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect();
        ForwardAuthConfig {
            path: "/forward-auth".into(),
            uri_headers: names(&["x-original-uri", "x-forwarded-uri"]),
            method_headers: names(&["x-original-method", "x-forwarded-method"]),
            host_headers: names(&["x-forwarded-host"]),
            proto_headers: names(&["x-forwarded-proto"]),
        }
    }
}

fn default_body_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_prefix() -> String {
    "/authz".into()
}

fn default_trusted() -> Vec<IpNet> {
    ["127.0.0.1/32", "::1/128"]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect()
}

impl HttpModeConfig {
    /// Defaults for everything but the address.
    pub fn on(listen: SocketAddr) -> HttpModeConfig {
        HttpModeConfig {
            listen,
            path_prefix: default_prefix(),
            tenant_header: None,
            trusted_proxies: default_trusted(),
            forward_auth: ForwardAuthConfig::default(),
            body_timeout: default_body_timeout(),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let prefix_ok = self.path_prefix.is_empty()
            || (self.path_prefix.starts_with('/') && !self.path_prefix.ends_with('/'));
        if !prefix_ok {
            return Err("http.path_prefix must be empty or start with / and not end with /".into());
        }
        let fa = &self.forward_auth;
        if !fa.path.starts_with('/') {
            return Err("http.forward_auth.path must start with /".into());
        }
        if fa.path == self.path_prefix || fa.path.starts_with(&format!("{}/", self.path_prefix)) {
            return Err("http.forward_auth.path must lie outside http.path_prefix".into());
        }
        if fa.uri_headers.is_empty() || fa.method_headers.is_empty() {
            return Err(
                "http.forward_auth.uri_headers and method_headers must name a header".into(),
            );
        }
        let names = fa
            .uri_headers
            .iter()
            .chain(&fa.method_headers)
            .chain(&fa.host_headers)
            .chain(&fa.proto_headers)
            .chain(&self.tenant_header);
        for name in names {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(format!("http: {name:?} is not a header name"));
            }
        }
        if self.trusted_proxies.is_empty() {
            return Err("http.trusted_proxies must name at least one address".into());
        }
        if self.body_timeout.is_zero() || self.body_timeout > MAX_BODY_TIMEOUT {
            return Err(format!(
                "http.body_timeout must be above 0 and at most {}s",
                MAX_BODY_TIMEOUT.as_secs()
            ));
        }
        Ok(())
    }

    /// Whether `peer` may ask.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        // An IPv4 peer on a dual-stack socket arrives as `::ffff:a.b.c.d`.
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }
}

/// One request to the HTTP listener, as it arrived. No `Debug`: it holds the
/// caller's credential headers, which must never reach a log line.
pub struct HttpAsk<'a> {
    pub method: &'a str,
    /// The request target: path and query.
    pub target: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// Whether `body` is all the asker sent.
    pub body_read: BodyRead,
    pub peer: SocketAddr,
}

/// How reading an ask's body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRead {
    /// The body ended, within the limit and the time.
    Whole,
    /// The body stopped short: the stream failed, or `http.body_timeout`
    /// passed. The check says so as Envoy says it sent part of a body
    /// (`x-envoy-auth-partial-body: true`), so rules that read the body deny
    /// ([`crate::request::body`]) and the others decide as usual.
    Incomplete,
}

/// Which of the listener's two shapes a request had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Envoy's `http_service`: the request is the original one.
    Envoy,
    /// A proxy's forward-auth subrequest.
    ForwardAuth,
}

impl Shape {
    /// The transport's name in spans, metrics and the decision log.
    pub fn transport(self) -> &'static str {
        match self {
            Shape::Envoy => "http",
            Shape::ForwardAuth => "forward_auth",
        }
    }
}

/// Why an HTTP ask could not be read into a `CheckRequest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRead {
    /// Neither under `path_prefix` nor at `forward_auth.path`: not a check.
    NotFound,
    /// A check, denied before it is built.
    Denied(Shape, Reason),
}

/// Headers that describe the hop to portcullis, not the original request.
const HOP_HEADERS: [&str; 5] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
];

/// The `CheckRequest` the gRPC path would receive for this ask, and its shape.
/// `context_key` is `tenancy.context_key`: a tenant header is put where the
/// route's `context_extensions` would carry it.
pub fn read(
    config: &HttpModeConfig,
    context_key: &str,
    ask: &HttpAsk<'_>,
) -> Result<(CheckRequest, Shape), NotRead> {
    let shape = shape_of(config, ask.target, ask.peer)?;
    let deny = |r: Reason| NotRead::Denied(shape, r);
    let mut headers: HashMap<String, String> = HashMap::new();
    for (name, value) in ask.headers {
        if HOP_HEADERS.contains(&name.as_str()) {
            continue;
        }
        // Envoy sends header values as text; bytes that are not UTF-8 are
        // not a request any proxy forwarded.
        let value =
            std::str::from_utf8(value.as_bytes()).map_err(|_| deny(Reason::MalformedRequest))?;
        headers
            .entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push(',');
                v.push_str(value);
            })
            .or_insert_with(|| value.to_string());
    }
    let fa = &config.forward_auth;
    let (method, path, host, scheme) = match shape {
        Shape::Envoy => {
            let path = under_prefix(ask.target, &config.path_prefix).unwrap_or("/");
            // A forward-auth proxy sent to `path_prefix` by mistake would
            // have its subrequest's own path checked, not the original one
            // its headers name: two requests in one, refused.
            if disagrees(ask.headers, &fa.uri_headers, path).map_err(deny)?
                || disagrees(ask.headers, &fa.method_headers, ask.method).map_err(deny)?
            {
                return Err(deny(Reason::MalformedRequest));
            }
            let host = headers.get("host").cloned().unwrap_or_default();
            let scheme = headers
                .get("x-forwarded-proto")
                .cloned()
                .unwrap_or_else(|| "http".into());
            (ask.method.to_string(), path.to_string(), host, scheme)
        }
        Shape::ForwardAuth => {
            let method = one_of(ask.headers, &fa.method_headers)
                .map_err(deny)?
                .ok_or(deny(Reason::MalformedRequest))?;
            let uri = one_of(ask.headers, &fa.uri_headers)
                .map_err(deny)?
                .ok_or(deny(Reason::MalformedRequest))?;
            let host = match one_of(ask.headers, &fa.host_headers).map_err(deny)? {
                Some(h) => h,
                None => headers.get("host").cloned().unwrap_or_default(),
            };
            let scheme = one_of(ask.headers, &fa.proto_headers)
                .map_err(deny)?
                .unwrap_or_else(|| "http".into());
            (method, uri, host, scheme)
        }
    };
    if method.is_empty() || !path.starts_with('/') {
        return Err(deny(Reason::MalformedRequest));
    }
    // As Envoy's CheckRequest carries them.
    headers.insert(":method".into(), method.clone());
    headers.insert(":path".into(), path.clone());
    headers.insert(":authority".into(), host.clone());
    headers.insert(":scheme".into(), scheme.clone());
    headers.remove("host");
    if ask.body_read == BodyRead::Incomplete {
        headers.insert(PARTIAL_BODY_HEADER.into(), "true".into());
    }
    // The tenant header is the proxy's word, as `context_extensions` are
    // Envoy's config: it goes there, and not among the request's headers.
    let mut context_extensions = HashMap::new();
    if let Some(name) = &config.tenant_header
        && let Some(id) = headers.remove(&name.to_ascii_lowercase())
    {
        context_extensions.insert(context_key.to_string(), id);
    }
    let id = headers.get("x-request-id").cloned().unwrap_or_default();
    let http = attribute_context::HttpRequest {
        id,
        method,
        headers,
        path,
        host,
        scheme,
        protocol: "HTTP/1.1".into(),
        size: i64::try_from(ask.body.len()).unwrap_or(i64::MAX),
        raw_body: ask.body.to_vec(),
        ..Default::default()
    };
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                time: None,
                http: Some(http),
            }),
            context_extensions,
            ..Default::default()
        }),
    };
    Ok((request, shape))
}

/// Which shape an ask to `target` has, and whether `peer` may ask at all:
/// decided from the request line and the connection alone, so an untrusted
/// peer is refused before a byte of its body is read.
pub fn shape_of(config: &HttpModeConfig, target: &str, peer: SocketAddr) -> Result<Shape, NotRead> {
    let (path_only, _) = target.split_once('?').unwrap_or((target, ""));
    let shape = if path_only == config.forward_auth.path {
        Shape::ForwardAuth
    } else if under_prefix(target, &config.path_prefix).is_some() {
        Shape::Envoy
    } else {
        return Err(NotRead::NotFound);
    };
    if !config.trusts(peer.ip()) {
        return Err(NotRead::Denied(shape, Reason::UntrustedForwardedRequest));
    }
    Ok(shape)
}

/// Whether the named headers give a value other than `checked`.
fn disagrees(headers: &HeaderMap, names: &[String], checked: &str) -> Result<bool, Reason> {
    Ok(one_of(headers, names)?.is_some_and(|v| v != checked))
}

/// The target after `prefix`, when it is under it (`/authz/a` → `/a`,
/// `/authz` → `/`); `/authzed` is not under `/authz`.
fn under_prefix<'t>(target: &'t str, prefix: &str) -> Option<&'t str> {
    let rest = target.strip_prefix(prefix)?;
    if rest.is_empty() {
        Some("/")
    } else if rest.starts_with('/') || (rest.starts_with('?') && !prefix.is_empty()) {
        Some(rest)
    } else {
        None
    }
}

/// The one value the named headers give. A header sent twice, or two of the
/// names with different values, is not one original request: refused.
fn one_of(headers: &HeaderMap, names: &[String]) -> Result<Option<String>, Reason> {
    let mut found: Option<&str> = None;
    for name in names {
        let mut values = headers.get_all(name.as_str()).iter();
        let Some(v) = values.next() else { continue };
        if values.next().is_some() {
            return Err(Reason::MalformedRequest);
        }
        let v = v.to_str().map_err(|_| Reason::MalformedRequest)?;
        match found {
            Some(f) if f != v => return Err(Reason::MalformedRequest),
            _ => found = Some(v),
        }
    }
    Ok(found.map(str::to_string))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn config() -> HttpModeConfig {
        let mut c = HttpModeConfig::on(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.tenant_header = Some("X-Portcullis-Tenant".into());
        c
    }

    fn ask<'a>(target: &'a str, headers: &'a HeaderMap, peer: [u8; 4]) -> HttpAsk<'a> {
        HttpAsk {
            method: "POST",
            target,
            headers,
            body: b"{}",
            body_read: BodyRead::Whole,
            peer: SocketAddr::from((peer, 40000)),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn http(r: &CheckRequest) -> &attribute_context::HttpRequest {
        r.attributes
            .as_ref()
            .unwrap()
            .request
            .as_ref()
            .unwrap()
            .http
            .as_ref()
            .unwrap()
    }

    #[test]
    fn envoy_shape_keeps_method_path_after_prefix_headers_body_and_tenant() {
        let h = headers(&[
            ("host", "api.example.com"),
            ("authorization", "Bearer t"),
            ("x-portcullis-tenant", "acme"),
            ("connection", "keep-alive"),
        ]);
        let (r, shape) = read(
            &config(),
            "tenant",
            &ask("/authz/a/b?x=1", &h, [127, 0, 0, 1]),
        )
        .unwrap();
        assert_eq!(shape, Shape::Envoy);
        let http = http(&r);
        assert_eq!(
            (http.method.as_str(), http.path.as_str()),
            ("POST", "/a/b?x=1")
        );
        assert_eq!(http.host, "api.example.com");
        assert_eq!(http.headers["authorization"], "Bearer t");
        assert_eq!(http.headers[":authority"], "api.example.com");
        assert!(!http.headers.contains_key("connection"));
        assert_eq!(http.raw_body, b"{}");
        let ext = &r.attributes.as_ref().unwrap().context_extensions;
        assert_eq!(ext["tenant"], "acme");
        assert!(!http.headers.contains_key("x-portcullis-tenant"));
        assert_eq!(http.scheme, "http");
    }

    #[test]
    fn paths_outside_the_prefix_and_the_forward_path_are_not_checks() {
        let h = headers(&[]);
        for target in ["/authzed", "/other", "/forward-auth/x"] {
            let e = read(&config(), "tenant", &ask(target, &h, [127, 0, 0, 1])).unwrap_err();
            assert_eq!(e, NotRead::NotFound, "{target}");
        }
        let (r, _) = read(&config(), "tenant", &ask("/authz", &h, [127, 0, 0, 1])).unwrap();
        assert_eq!(http(&r).path, "/");
    }

    #[test]
    fn forward_auth_reads_the_original_request_from_headers() {
        let h = headers(&[
            ("host", "portcullis:9003"),
            ("x-forwarded-method", "DELETE"),
            ("x-forwarded-uri", "/orders/7?y=2"),
            ("x-forwarded-host", "shop.example.com"),
            ("x-forwarded-proto", "https"),
        ]);
        let (r, shape) = read(
            &config(),
            "tenant",
            &ask("/forward-auth", &h, [127, 0, 0, 1]),
        )
        .unwrap();
        assert_eq!(shape, Shape::ForwardAuth);
        let http = http(&r);
        assert_eq!(http.method, "DELETE");
        assert_eq!(http.path, "/orders/7?y=2");
        assert_eq!(http.host, "shop.example.com");
        assert_eq!(http.scheme, "https");
    }

    #[test]
    fn an_untrusted_asker_is_refused_whatever_it_names() {
        let h = headers(&[("x-original-uri", "/admin"), ("x-original-method", "GET")]);
        for target in ["/forward-auth", "/authz/admin"] {
            let e = read(&config(), "tenant", &ask(target, &h, [10, 0, 0, 9])).unwrap_err();
            assert!(
                matches!(e, NotRead::Denied(_, Reason::UntrustedForwardedRequest)),
                "{target}: {e:?}"
            );
        }
        let mut c = config();
        c.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(read(&c, "tenant", &ask("/forward-auth", &h, [10, 0, 0, 9])).is_ok());
        assert!(c.trusts("::ffff:10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn ambiguous_or_missing_forwarded_facts_are_malformed() {
        let cases: [&[(&'static str, &'static str)]; 4] = [
            &[("x-original-method", "GET")],
            &[
                ("x-original-method", "GET"),
                ("x-original-uri", "/a"),
                ("x-forwarded-uri", "/b"),
            ],
            &[
                ("x-original-method", "GET"),
                ("x-original-uri", "/a"),
                ("x-original-uri", "/a"),
            ],
            &[
                ("x-original-method", "GET"),
                ("x-original-uri", "http://evil/a"),
            ],
        ];
        for pairs in cases {
            let h = headers(pairs);
            let e = read(
                &config(),
                "tenant",
                &ask("/forward-auth", &h, [127, 0, 0, 1]),
            )
            .unwrap_err();
            assert_eq!(
                e,
                NotRead::Denied(Shape::ForwardAuth, Reason::MalformedRequest),
                "{pairs:?}"
            );
        }
        // The two names agreeing is one fact.
        let h = headers(&[
            ("x-original-method", "GET"),
            ("x-original-uri", "/a"),
            ("x-forwarded-uri", "/a"),
        ]);
        assert!(
            read(
                &config(),
                "tenant",
                &ask("/forward-auth", &h, [127, 0, 0, 1])
            )
            .is_ok()
        );
    }

    #[test]
    fn an_envoy_ask_naming_another_request_is_refused() {
        // nginx pointed at the prefix: its subrequest's path is not the one
        // its headers name.
        let h = headers(&[("x-original-uri", "/admin"), ("x-original-method", "POST")]);
        let e = read(&config(), "tenant", &ask("/authz/", &h, [127, 0, 0, 1])).unwrap_err();
        assert_eq!(e, NotRead::Denied(Shape::Envoy, Reason::MalformedRequest));
        let h = headers(&[("x-forwarded-method", "DELETE")]);
        let e = read(&config(), "tenant", &ask("/authz/a", &h, [127, 0, 0, 1])).unwrap_err();
        assert_eq!(e, NotRead::Denied(Shape::Envoy, Reason::MalformedRequest));
        // Naming the same request is one fact.
        let h = headers(&[("x-original-uri", "/a"), ("x-original-method", "POST")]);
        assert!(read(&config(), "tenant", &ask("/authz/a", &h, [127, 0, 0, 1])).is_ok());
    }

    #[test]
    fn the_shape_and_the_trust_come_from_the_request_line_and_the_peer() {
        let peer = |ip: [u8; 4]| SocketAddr::from((ip, 1));
        let c = config();
        assert_eq!(
            shape_of(&c, "/authz/x", peer([127, 0, 0, 1])),
            Ok(Shape::Envoy)
        );
        assert_eq!(
            shape_of(&c, "/forward-auth?a=1", peer([127, 0, 0, 1])),
            Ok(Shape::ForwardAuth)
        );
        assert_eq!(
            shape_of(&c, "/forward-auth", peer([10, 0, 0, 1])),
            Err(NotRead::Denied(
                Shape::ForwardAuth,
                Reason::UntrustedForwardedRequest
            ))
        );
        assert_eq!(
            shape_of(&c, "/elsewhere", peer([10, 0, 0, 1])),
            Err(NotRead::NotFound)
        );
    }

    #[test]
    fn a_body_cut_short_is_marked_partial_whatever_the_asker_said() {
        let h = headers(&[("x-envoy-auth-partial-body", "false")]);
        let mut a = ask("/authz/a", &h, [127, 0, 0, 1]);
        let (r, _) = read(&config(), "tenant", &a).unwrap();
        assert_eq!(http(&r).headers[PARTIAL_BODY_HEADER], "false");
        a.body_read = BodyRead::Incomplete;
        let (r, _) = read(&config(), "tenant", &a).unwrap();
        assert_eq!(http(&r).headers[PARTIAL_BODY_HEADER], "true");
    }

    #[test]
    fn config_is_checked() {
        let mut c = config();
        assert!(c.validate().is_ok());
        c.path_prefix = "/authz/".into();
        assert!(c.validate().is_err());
        let mut c = config();
        c.forward_auth.path = "/authz/fa".into();
        assert!(c.validate().is_err());
        let mut c = config();
        c.trusted_proxies.clear();
        assert!(c.validate().is_err());
        let mut c = config();
        c.tenant_header = Some("bad header".into());
        assert!(c.validate().is_err());
        let mut c = config();
        c.body_timeout = Duration::ZERO;
        assert!(c.validate().is_err());
        c.body_timeout = MAX_BODY_TIMEOUT + Duration::from_secs(1);
        assert!(c.validate().is_err());
    }
}
