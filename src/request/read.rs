//! Stage 1: a `CheckRequest` read into an [`Input`] under the server's
//! [`Limits`]: headers, path and body are measured on the protobuf before
//! anything is built from them.
//!
//! Never imports: identity, policy, decision or anything above them.

use crate::foundation::limits::Limits;
use crate::foundation::proto::auth::CheckRequest;
use crate::foundation::reason::Reason;
use crate::request::input::{Input, InputError, Taken};

/// Why [`read`] refused a request.
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

/// Stage 1 under the limits: measures the request's headers, path and body
/// on the protobuf, then builds the [`Input`]. A body of `max_body_bytes` or
/// more is treated as truncated (rules that read it deny).
pub fn read(limits: &Limits, request: &CheckRequest) -> Result<Input, Refused> {
    read_taken(limits, request, None)
}

/// [`read`] of a request whose header and context-extension maps were moved
/// out of it ([`crate::request::input::take_maps`]); they are measured as if
/// they were still in it.
pub fn read_taken(
    limits: &Limits,
    request: &CheckRequest,
    taken: Option<Taken>,
) -> Result<Input, Refused> {
    let moved = taken.as_ref().map(|t| &t.headers);
    let http = request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    if let Some(http) = http {
        let map = http.header_map.as_ref().map_or(&[][..], |m| &m.headers[..]);
        let count = http.headers.len() + map.len() + moved.map_or(0, |m| m.len());
        if count > limits.max_headers {
            return Err(Refused::TooManyHeaders {
                count,
                limit: limits.max_headers,
            });
        }
        let bytes = http
            .headers
            .iter()
            .chain(moved.into_iter().flatten())
            .map(|(k, v)| k.len() + v.len())
            .chain(
                map.iter()
                    .map(|h| h.key.len() + h.value.len().max(h.raw_value.len())),
            )
            .fold(0usize, usize::saturating_add);
        if bytes > limits.max_header_bytes {
            return Err(Refused::HeaderBytes {
                bytes,
                limit: limits.max_header_bytes,
            });
        }
        let path = http.path.split_once('?').map_or(&http.path[..], |(p, _)| p);
        if path.len() > limits.max_path_bytes {
            return Err(Refused::PathTooLong {
                limit: limits.max_path_bytes,
            });
        }
    }
    Ok(Input::from_parts(request, taken, limits.max_body_bytes)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::foundation::proto::auth::{AttributeContext, attribute_context};
    use crate::foundation::proto::core::{HeaderMap, HeaderValue};
    use crate::request::input::Body;

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
    fn header_count_allows_at_the_limit_and_denies_one_over() {
        let l = Limits {
            max_headers: 3,
            ..Limits::default()
        };
        let three = [("a", "1"), ("b", "2"), ("c", "3")];
        assert!(read(&l, &request("/x", &three, "")).is_ok());
        let four = [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")];
        let e = read(&l, &request("/x", &four, "")).unwrap_err();
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
        assert_eq!(read(&l, &r).unwrap_err().reason(), Reason::HeadersTooLarge);
    }

    #[test]
    fn header_bytes_allow_at_the_limit_and_deny_one_over() {
        let l = Limits {
            max_header_bytes: 10,
            ..Limits::default()
        };
        // "ab" + "cdefghij" = 10 bytes.
        assert!(read(&l, &request("/x", &[("ab", "cdefghij")], "")).is_ok());
        let e = read(&l, &request("/x", &[("ab", "cdefghijk")], "")).unwrap_err();
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
        assert!(read(&l, &request("/1234567?q=long-query", &[], "")).is_ok());
        let e = read(&l, &request("/12345678", &[], "")).unwrap_err();
        assert_eq!(e.reason(), Reason::PathTooLong);
    }

    #[test]
    fn body_reaching_the_limit_is_truncated() {
        let l = Limits {
            max_body_bytes: 8,
            ..Limits::default()
        };
        let json = [("content-type", "application/json")];
        // One byte under the limit is whole; at the limit it may be the first
        // part of a longer body (Envoy stops buffering there).
        let under = read(&l, &request("/x", &json, r#"{"a":1}"#)).unwrap();
        assert!(matches!(under.resource.body, Body::Json(_)));
        let at = read(&l, &request("/x", &json, r#"{"a":12}"#)).unwrap();
        assert_eq!(at.resource.body, Body::Truncated);
        let over = read(&l, &request("/x", &json, r#"{"a":123}"#)).unwrap();
        assert_eq!(over.resource.body, Body::Truncated);
    }

    #[test]
    fn input_errors_keep_their_reasons() {
        let e = read(&Limits::default(), &request("/a/../b", &[], "")).unwrap_err();
        assert_eq!(e.reason(), Reason::NonCanonicalPath);
        let e = read(&Limits::default(), &CheckRequest::default()).unwrap_err();
        assert_eq!(e.reason(), Reason::NotHttp);
    }
}
