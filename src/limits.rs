//! Named bounds on the work one replica takes on (`limits:` in the server
//! config).
//!
//! Every bound has a safe default (the built-in constant it replaces) and a
//! ceiling: the bounds that the deeper stages also enforce as constants (token,
//! path and body sizes, rules per tenant) can be lowered, never raised above
//! those constants. Exceeding a bound is a deny with a stable reason, or a load
//! error with file and cause; never a crash, a silent truncation or an
//! unbounded queue.
//!
//! Three places read them:
//! - [`Limits::input`], the first step of every check: the request's headers,
//!   path and body are measured on the protobuf before anything is built from
//!   them;
//! - policy compile ([`crate::policy::compile_limited`]): rules per tenant, the
//!   token size a tenant accepts, its token cache and DPoP replay cache;
//! - the store's reload (tenants) and the server (concurrent checks).

use serde::Deserialize;

use crate::decision::Reason;
use crate::input::{Input, InputError};
use crate::proto::auth::CheckRequest;

/// The most checks decided at once unless `limits.max_concurrent_checks` says
/// otherwise: far above what two cores decide in a check's lifetime, low
/// enough that a flood queues no unbounded work.
pub const DEFAULT_MAX_CONCURRENT_CHECKS: usize = 1024;

/// Default for `limits.max_headers`: Envoy's own default (`max_headers_count`,
/// 100) plus room for the headers Envoy adds and the pseudo-headers it sends.
pub const DEFAULT_MAX_HEADERS: usize = 200;
/// Largest `limits.max_headers` accepted.
pub const MAX_HEADERS_CEILING: usize = 10_000;

/// Default for `limits.max_header_bytes`: Envoy's default
/// `max_request_headers_kb` (60 KiB) with room for what Envoy adds.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 96 * 1024;
/// Largest `limits.max_header_bytes` accepted (Envoy's own ceiling, 8 MiB).
pub const MAX_HEADER_BYTES_CEILING: usize = 8 * 1024 * 1024;

/// Default for `limits.max_tenants` (the `check` benchmark decides against a
/// store of this many).
pub const DEFAULT_MAX_TENANTS: usize = 10_000;

/// Largest `limits.token_cache_size` accepted (per tenant).
pub const TOKEN_CACHE_CEILING: usize = 1_000_000;
/// Largest `limits.replay_cache_size` accepted (per tenant).
pub const REPLAY_CACHE_CEILING: usize = 10_000_000;

/// The bounds, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Checks in flight at once (over every listener). Beyond it a check is
    /// answered at once with a denied 503 `overloaded`, so Envoy fails closed
    /// even with `failure_mode_allow: true`.
    pub max_concurrent_checks: usize,
    /// Largest credential (JWT or opaque token) looked at; larger is denied
    /// `token_too_large`.
    pub max_token_bytes: usize,
    /// Most request headers (as Envoy sends them, pseudo-headers included)
    /// considered; more is denied `headers_too_large`, never truncated.
    pub max_headers: usize,
    /// Most header bytes (names plus values) considered; more is denied
    /// `headers_too_large`.
    pub max_header_bytes: usize,
    /// Largest body parsed as JSON; a larger one is not parsed, and rules that
    /// read it deny `body_unavailable`.
    pub max_body_bytes: usize,
    /// Longest path (without the query); longer is denied `path_too_long`.
    pub max_path_bytes: usize,
    /// Most rules in one tenant's file; more is a load error.
    pub max_rules_per_tenant: usize,
    /// Most tenants served; a file that would add one more is a load error.
    pub max_tenants: usize,
    /// Verified tokens remembered per tenant.
    pub token_cache_size: usize,
    /// The most DPoP proof `jti`s a tenant's policy may ask to remember
    /// (`identity.dpop.replay_cache_size`); a policy that sets none gets the
    /// smaller of this and 100,000.
    pub replay_cache_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_concurrent_checks: DEFAULT_MAX_CONCURRENT_CHECKS,
            max_token_bytes: crate::identity::jwt::MAX_TOKEN_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_body_bytes: crate::input::MAX_BODY_BYTES,
            max_path_bytes: crate::path::MAX_PATH_BYTES,
            max_rules_per_tenant: crate::policy::MAX_RULES_PER_TENANT,
            max_tenants: DEFAULT_MAX_TENANTS,
            token_cache_size: crate::identity::jwt::MAX_CACHED_TOKENS,
            replay_cache_size: REPLAY_CACHE_CEILING,
        }
    }
}

/// Why [`Limits::input`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{count} request headers; the limit is {limit}")]
    TooManyHeaders { count: usize, limit: usize },
    #[error("{bytes} bytes of request headers; the limit is {limit}")]
    HeaderBytes { bytes: usize, limit: usize },
    #[error("path is longer than {limit} bytes")]
    PathTooLong { limit: usize },
    #[error(transparent)]
    Input(#[from] InputError),
}

impl Refused {
    /// The reason the request is denied with.
    pub fn reason(&self) -> Reason {
        match self {
            Refused::TooManyHeaders { .. } | Refused::HeaderBytes { .. } => Reason::HeadersTooLarge,
            Refused::PathTooLong { .. } => Reason::PathTooLong,
            Refused::Input(e) => e.reason(),
        }
    }
}

impl Limits {
    /// Checks every bound against its range; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        // (name, value, least, most); a token cache of 0 turns it off.
        let ranges = [
            (
                "max_concurrent_checks",
                self.max_concurrent_checks,
                1,
                tokio::sync::Semaphore::MAX_PERMITS,
            ),
            (
                "max_token_bytes",
                self.max_token_bytes,
                1,
                crate::identity::jwt::MAX_TOKEN_BYTES,
            ),
            ("max_headers", self.max_headers, 1, MAX_HEADERS_CEILING),
            (
                "max_header_bytes",
                self.max_header_bytes,
                1,
                MAX_HEADER_BYTES_CEILING,
            ),
            (
                "max_body_bytes",
                self.max_body_bytes,
                1,
                crate::input::MAX_BODY_BYTES,
            ),
            (
                "max_path_bytes",
                self.max_path_bytes,
                1,
                crate::path::MAX_PATH_BYTES,
            ),
            (
                "max_rules_per_tenant",
                self.max_rules_per_tenant,
                1,
                crate::policy::MAX_RULES_PER_TENANT,
            ),
            ("max_tenants", self.max_tenants, 1, usize::MAX),
            (
                "token_cache_size",
                self.token_cache_size,
                0,
                TOKEN_CACHE_CEILING,
            ),
            (
                "replay_cache_size",
                self.replay_cache_size,
                1,
                REPLAY_CACHE_CEILING,
            ),
        ];
        for (name, value, least, most) in ranges {
            if !(least..=most).contains(&value) {
                return Err(format!("limits.{name} must be between {least} and {most}"));
            }
        }
        Ok(())
    }

    /// Stage 1 under the limits: measures the request's headers, path and body
    /// on the protobuf, then builds the [`Input`]. A body over
    /// `max_body_bytes` is left unparsed (rules that read it deny).
    pub fn input(&self, request: &CheckRequest) -> Result<Input, Refused> {
        let http = request
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        if let Some(http) = http {
            let map = http.header_map.as_ref().map_or(&[][..], |m| &m.headers[..]);
            let count = http.headers.len() + map.len();
            if count > self.max_headers {
                return Err(Refused::TooManyHeaders {
                    count,
                    limit: self.max_headers,
                });
            }
            let bytes = http
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .chain(
                    map.iter()
                        .map(|h| h.key.len() + h.value.len().max(h.raw_value.len())),
                )
                .fold(0usize, usize::saturating_add);
            if bytes > self.max_header_bytes {
                return Err(Refused::HeaderBytes {
                    bytes,
                    limit: self.max_header_bytes,
                });
            }
            let path = http.path.split_once('?').map_or(&http.path[..], |(p, _)| p);
            if path.len() > self.max_path_bytes {
                return Err(Refused::PathTooLong {
                    limit: self.max_path_bytes,
                });
            }
        }
        Ok(Input::from_check_request_within(
            request,
            self.max_body_bytes,
        )?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::input::Body;
    use crate::proto::auth::{AttributeContext, attribute_context};
    use crate::proto::core::{HeaderMap, HeaderValue};

    fn request(path: &str, headers: &[(&str, &str)], body: &str) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(attribute_context::Request {
                    http: Some(attribute_context::HttpRequest {
                        method: "POST".into(),
                        path: path.into(),
                        host: "acme.example".into(),
                        headers: headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                        body: body.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn defaults_are_the_built_in_constants_and_validate() {
        let l = Limits::default();
        assert_eq!(l.max_token_bytes, crate::identity::jwt::MAX_TOKEN_BYTES);
        assert_eq!(l.max_path_bytes, crate::path::MAX_PATH_BYTES);
        assert_eq!(l.max_body_bytes, crate::input::MAX_BODY_BYTES);
        assert_eq!(l.max_rules_per_tenant, crate::policy::MAX_RULES_PER_TENANT);
        assert!(l.validate().is_ok());
        let over = Limits {
            max_path_bytes: crate::path::MAX_PATH_BYTES + 1,
            ..Limits::default()
        };
        assert!(
            over.validate()
                .unwrap_err()
                .contains("limits.max_path_bytes")
        );
        let zero = Limits {
            max_tenants: 0,
            ..Limits::default()
        };
        assert!(zero.validate().unwrap_err().contains("limits.max_tenants"));
    }

    #[test]
    fn header_count_allows_at_the_limit_and_denies_one_over() {
        let l = Limits {
            max_headers: 3,
            ..Limits::default()
        };
        let three = [("a", "1"), ("b", "2"), ("c", "3")];
        assert!(l.input(&request("/x", &three, "")).is_ok());
        let four = [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")];
        let e = l.input(&request("/x", &four, "")).unwrap_err();
        assert_eq!(e.reason(), Reason::HeadersTooLarge);
        assert_eq!(e.reason().code(), "headers_too_large");
        // header_map entries count too (Envoy sends one form or the other).
        let mut r = request("/x", &three, "");
        let http = r
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
            .unwrap();
        http.header_map = Some(HeaderMap {
            headers: vec![HeaderValue {
                key: "e".into(),
                value: "5".into(),
                raw_value: Vec::new(),
            }],
        });
        assert_eq!(l.input(&r).unwrap_err().reason(), Reason::HeadersTooLarge);
    }

    #[test]
    fn header_bytes_allow_at_the_limit_and_deny_one_over() {
        let l = Limits {
            max_header_bytes: 10,
            ..Limits::default()
        };
        // "ab" + "cdefghij" = 10 bytes.
        assert!(l.input(&request("/x", &[("ab", "cdefghij")], "")).is_ok());
        let e = l
            .input(&request("/x", &[("ab", "cdefghijk")], ""))
            .unwrap_err();
        assert_eq!(e.reason(), Reason::HeadersTooLarge);
        assert_eq!(e.reason().status(), 431);
    }

    #[test]
    fn path_allows_at_the_limit_and_denies_one_over() {
        let l = Limits {
            max_path_bytes: 8,
            ..Limits::default()
        };
        // The query does not count.
        assert!(l.input(&request("/1234567?q=long-query", &[], "")).is_ok());
        let e = l.input(&request("/12345678", &[], "")).unwrap_err();
        assert_eq!(e.reason(), Reason::PathTooLong);
    }

    #[test]
    fn body_over_the_limit_is_left_unparsed() {
        let l = Limits {
            max_body_bytes: 8,
            ..Limits::default()
        };
        let json = [("content-type", "application/json")];
        let at = l.input(&request("/x", &json, r#"{"a":12}"#)).unwrap();
        assert!(matches!(at.resource.body, Body::Json(_)));
        let over = l.input(&request("/x", &json, r#"{"a":123}"#)).unwrap();
        assert_eq!(over.resource.body, Body::Unparsed);
    }

    #[test]
    fn input_errors_keep_their_reasons() {
        let e = Limits::default()
            .input(&request("/a/../b", &[], ""))
            .unwrap_err();
        assert_eq!(e.reason(), Reason::NonCanonicalPath);
        let e = Limits::default()
            .input(&CheckRequest::default())
            .unwrap_err();
        assert_eq!(e.reason(), Reason::NotHttp);
    }
}
