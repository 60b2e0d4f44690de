//! Where portcullis' own tokens are read from: [`TokenSource`] (a header with
//! its auth scheme, a cookie or a query parameter), compiled from the spec, and
//! finding the token in a request.
//!
//! Never imports: policy, decision, tenants or anything above them.

use crate::request::input::Input;

use super::error::IdentityError;
use super::spec::TokenSourceSpec;

/// Where a token was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Header {
        name: String,
        scheme: Option<String>,
    },
    Cookie(String),
    Query(String),
}

impl TokenSource {
    pub(super) fn compile(spec: &TokenSourceSpec) -> Result<TokenSource, String> {
        let valid = |n: &str| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        };
        match (&spec.header, &spec.cookie, &spec.query) {
            (Some(h), None, None) if valid(h) => {
                let name = h.to_ascii_lowercase();
                let scheme = match &spec.scheme {
                    Some(s) if valid(s) => Some(s.to_ascii_lowercase()),
                    Some(s) => return Err(format!("identity.token_sources: scheme {s:?} is not a token")),
                    None if name == "authorization" => Some("bearer".into()),
                    None => None,
                };
                Ok(TokenSource::Header { name, scheme })
            }
            (None, Some(c), None) if valid(c) && spec.scheme.is_none() => {
                Ok(TokenSource::Cookie(c.clone()))
            }
            (None, None, Some(q)) if valid(q) && spec.scheme.is_none() => {
                Ok(TokenSource::Query(q.clone()))
            }
            _ => Err(
                "identity.token_sources: each entry names one valid header (with an optional scheme), cookie or query parameter".into(),
            ),
        }
    }

    /// The token this source holds in the request, if any. `Err` when the
    /// source holds two (a repeated cookie or query parameter).
    pub(super) fn find<'a>(&'a self, input: &'a Input) -> Result<Option<&'a str>, IdentityError> {
        let r = &input.resource;
        match self {
            TokenSource::Header { name, scheme } => {
                let Some(value) = r.headers.get(name) else {
                    return Ok(None);
                };
                let value = value.trim();
                Ok(match scheme {
                    None => Some(value),
                    // `Authorization` also carries DPoP-bound tokens (RFC 9449 §7.1).
                    Some(scheme) => value
                        .split_once(' ')
                        .filter(|(s, _)| {
                            s.eq_ignore_ascii_case(scheme)
                                || (name == "authorization" && s.eq_ignore_ascii_case("dpop"))
                        })
                        .map(|(_, t)| t.trim()),
                }
                .filter(|t| !t.is_empty()))
            }
            TokenSource::Cookie(name) => {
                let mut found = None;
                for pair in r
                    .headers
                    .get("cookie")
                    .into_iter()
                    .flat_map(|c| c.split(';'))
                {
                    if let Some((k, v)) = pair.trim().split_once('=')
                        && k == name
                    {
                        if found.is_some() {
                            return Err(IdentityError::Malformed(format!("cookie {name}")));
                        }
                        found = Some(v.trim_matches('"'));
                    }
                }
                Ok(found.filter(|t| !t.is_empty()))
            }
            TokenSource::Query(name) => {
                let mut values = crate::request::input::query_values(&r.query, name);
                let first = values.next();
                if values.next().is_some() {
                    return Err(IdentityError::Malformed(format!("query parameter {name}")));
                }
                // `query_values` finds every spelling a framework merges
                // (`%5F`, letter case, `name[]`, PHP's `access.token`): two of
                // them are two credentials. Envoy removes query parameters by
                // their raw name, so a lone other spelling would be read by
                // the upstream and reach its access logs. Both refused.
                match first {
                    Some((raw, _)) if raw != name => Err(IdentityError::Malformed(format!(
                        "query parameter {name} (another spelling of the name)"
                    ))),
                    Some((_, value)) => Ok(Some(value).filter(|t| !t.is_empty())),
                    None => Ok(None),
                }
            }
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            TokenSource::Header { name, .. } => format!("header {name}"),
            TokenSource::Cookie(name) => format!("cookie {name}"),
            TokenSource::Query(name) => format!("query parameter {name}"),
        }
    }
}

/// Whether the header's value uses the DPoP scheme (RFC 9449 §7.1).
pub(super) fn has_dpop_scheme(input: &Input, header: &str) -> bool {
    input.resource.headers.get(header).is_some_and(|v| {
        v.trim_start()
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case("dpop "))
    })
}
