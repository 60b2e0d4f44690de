//! Header value templates: `"{claims.sub}"`, `"tenant={tenant}"`.
//!
//! Claims and path parameters are attacker-influenced, so a rendered value is
//! refused when it carries CR, LF, NUL, a comma (Envoy would read one header as a
//! list) or any non-printable byte; a missing or non-scalar value renders as
//! `None`, and the owned header is then removed rather than left to the client.

use serde_json::Value as Json;

/// Largest header value portcullis will set.
pub const MAX_HEADER_VALUE_BYTES: usize = 4 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderTemplate {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Claim(Vec<String>),
    Param(String),
    Tenant,
    Subject,
    AuthMethod,
}

/// What a template can read.
pub struct Scope<'a> {
    pub claims: &'a serde_json::Map<String, Json>,
    pub params: &'a [(String, String)],
    pub tenant: &'a str,
    pub subject: Option<&'a str>,
    pub auth_method: &'a str,
}

/// The outcome of rendering one template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendered {
    Value(String),
    /// Something the template reads is absent: remove the header.
    Missing,
    /// The value would be unsafe in a header: deny.
    Unsafe,
}

impl HeaderTemplate {
    /// The claim names the template reads (the first step of `claims.a.b`).
    pub fn claims(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Claim(path) => path.first().map(String::as_str),
            _ => None,
        })
    }

    /// The path parameters the template reads.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Param(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Parses a template; text outside `{...}` must itself be a safe value.
    pub fn parse(source: &str) -> Result<HeaderTemplate, String> {
        let mut pieces = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("template {source:?} has an unclosed '{{'"))?;
            let name = &rest[open + 1..open + close];
            pieces.push(piece(name).ok_or_else(|| {
                format!(
                    "template {source:?} names {{{name}}}; use claims.<name>, params.<name>, tenant, subject or auth_method"
                )
            })?);
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("template {source:?} has a stray '}}'"));
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        for p in &pieces {
            if let Piece::Text(t) = p
                && !safe_value(t)
            {
                return Err(format!(
                    "template {source:?} has text that is not a safe header value"
                ));
            }
        }
        Ok(HeaderTemplate { pieces })
    }

    pub fn render(&self, scope: &Scope<'_>) -> Rendered {
        let mut out = String::new();
        for p in &self.pieces {
            let value: Option<String> = match p {
                Piece::Text(t) => Some(t.clone()),
                Piece::Claim(path) => claim(scope.claims, path),
                Piece::Param(name) => scope
                    .params
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone()),
                Piece::Tenant => Some(scope.tenant.to_string()),
                Piece::Subject => scope.subject.map(str::to_string),
                Piece::AuthMethod => Some(scope.auth_method.to_string()),
            };
            match value {
                Some(v) => out.push_str(&v),
                None => return Rendered::Missing,
            }
        }
        if out.is_empty() {
            Rendered::Missing
        } else if !safe_value(&out) || out.len() > MAX_HEADER_VALUE_BYTES {
            Rendered::Unsafe
        } else {
            Rendered::Value(out)
        }
    }
}

fn piece(name: &str) -> Option<Piece> {
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == ':')
    };
    match name {
        "tenant" => Some(Piece::Tenant),
        "subject" => Some(Piece::Subject),
        "auth_method" => Some(Piece::AuthMethod),
        _ => {
            if let Some(path) = name.strip_prefix("claims.") {
                let parts: Vec<String> = path.split('.').map(str::to_string).collect();
                parts
                    .iter()
                    .all(|p| valid(p))
                    .then_some(Piece::Claim(parts))
            } else if let Some(p) = name.strip_prefix("params.") {
                valid(p).then(|| Piece::Param(p.to_string()))
            } else {
                None
            }
        }
    }
}

/// A claim as header text: strings, numbers and booleans only.
fn claim(claims: &serde_json::Map<String, Json>, path: &[String]) -> Option<String> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.get(first)?;
    for key in rest {
        v = v.get(key)?;
    }
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A value that is safe in a header: visible ASCII and space, without a comma.
pub fn safe_value(v: &str) -> bool {
    v.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b',')
}

/// Headers portcullis sets on every response (e.g. the decision id); policies
/// can neither set nor remove them.
pub const RESERVED_PREFIX: &str = "x-portcullis-";

/// A header name portcullis may own: lower-case token characters, and never a
/// pseudo-header or a hop-by-hop or framing header Envoy manages itself.
pub fn valid_header_name(name: &str) -> Result<(), String> {
    const FORBIDDEN: [&str; 8] = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "keep-alive",
        "proxy-connection",
    ];
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        // No '_': many servers read `x_subject` and `x-subject` as one header,
        // and portcullis strips the underscore spellings of the names it owns.
        return Err(format!(
            "header name {name:?} must be lower-case letters, digits or '-'"
        ));
    }
    if FORBIDDEN.contains(&name) {
        return Err(format!(
            "header {name:?} is managed by Envoy and cannot be set"
        ));
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(format!(
            "header {name:?} is reserved: portcullis sets {RESERVED_PREFIX}* headers itself"
        ));
    }
    // Envoy reads its own prefix as instructions: from the HTTP listener's
    // answer `x-envoy-auth-headers-to-remove` strips request headers, and
    // upstream Envoys take `x-envoy-*` request headers as retry and timeout
    // settings. A policy writes none of them.
    if name.starts_with(ENVOY_PREFIX) {
        return Err(format!(
            "header {name:?} is reserved: {ENVOY_PREFIX}* headers are Envoy's instructions"
        ));
    }
    Ok(())
}

/// The prefix of the headers Envoy reads as instructions.
pub const ENVOY_PREFIX: &str = "x-envoy-";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(t: &str, claims: Json) -> Rendered {
        let claims = claims.as_object().unwrap().clone();
        let params = vec![("order".to_string(), "42".to_string())];
        HeaderTemplate::parse(t).unwrap().render(&Scope {
            claims: &claims,
            params: &params,
            tenant: "acme",
            subject: Some("alice"),
            auth_method: "envoy_jwt",
        })
    }

    #[test]
    fn renders_claims_params_and_names() {
        let r = render(
            "{claims.sub}/{params.order}@{tenant} {auth_method} {claims.org.id}",
            json!({"sub": "u1", "org": {"id": 7}}),
        );
        assert_eq!(r, Rendered::Value("u1/42@acme envoy_jwt 7".into()));
        assert_eq!(
            render("{subject}", json!({})),
            Rendered::Value("alice".into())
        );
    }

    #[test]
    fn missing_or_structured_values_remove_the_header() {
        assert_eq!(render("{claims.sub}", json!({})), Rendered::Missing);
        assert_eq!(
            render("{claims.roles}", json!({"roles": ["a"]})),
            Rendered::Missing
        );
        assert_eq!(render("{params.nope}", json!({})), Rendered::Missing);
        assert_eq!(
            render("{claims.sub}", json!({"sub": ""})),
            Rendered::Missing
        );
    }

    #[test]
    fn unsafe_values_are_refused() {
        for bad in ["a\r\nx-admin: 1", "a,b", "nul\0", "tab\t", "é"] {
            assert_eq!(
                render("{claims.sub}", json!({"sub": bad})),
                Rendered::Unsafe,
                "{bad:?}"
            );
        }
        let huge = "a".repeat(MAX_HEADER_VALUE_BYTES + 1);
        assert_eq!(
            render("{claims.sub}", json!({"sub": huge})),
            Rendered::Unsafe
        );
    }

    #[test]
    fn bad_templates_are_refused() {
        assert!(HeaderTemplate::parse("{claims.sub").is_err());
        assert!(HeaderTemplate::parse("x}").is_err());
        assert!(HeaderTemplate::parse("{token}").is_err());
        assert!(HeaderTemplate::parse("{claims.}").is_err());
        assert!(HeaderTemplate::parse("a,b").is_err());
        assert!(valid_header_name("x-subject").is_ok());
        assert!(valid_header_name("X-Subject").is_err());
        assert!(valid_header_name(":path").is_err());
        assert!(valid_header_name("content-length").is_err());
        assert!(valid_header_name("x-portcullis-decision-id").is_err());
        assert!(valid_header_name("x-envoy-auth-headers-to-remove").is_err());
        assert!(valid_header_name("x-envoy-upstream-rq-timeout-ms").is_err());
        assert!(valid_header_name("x-envoyish").is_ok());
    }
}
