//! The `Content-Type` header read as RFC 9110 §8.3.1 defines a media type:
//! `type "/" subtype *( OWS ";" OWS parameter )`, type and subtype tokens
//! compared case-insensitively, parameters ignored. It answers one question
//! for the body reader: is this body JSON, something else, or of no single
//! type (several `Content-Type` values, which Envoy joins with `,`)?
//!
//! Never imports anything from the crate.

/// What a `Content-Type` value says about the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    /// `application/json`, or a subtype with the `+json` structured-syntax
    /// suffix (RFC 6839 §3.1), such as `application/problem+json`.
    Json,
    /// One well-formed media type that is not JSON.
    Other,
    /// More than one value (a comma outside a quoted-string), or a value that
    /// is not a media type: a service may read the body as any of them.
    Ambiguous,
}

/// Classifies one `Content-Type` header value.
pub fn body_type(value: &str) -> BodyType {
    if has_comma_outside_quotes(value) {
        return BodyType::Ambiguous;
    }
    let essence = value.split(';').next().unwrap_or("");
    let essence = essence.trim_matches([' ', '\t']);
    let Some((kind, subtype)) = essence.split_once('/') else {
        return BodyType::Ambiguous;
    };
    if !is_token(kind) || !is_token(subtype) {
        return BodyType::Ambiguous;
    }
    let json = (kind.eq_ignore_ascii_case("application") && subtype.eq_ignore_ascii_case("json"))
        || has_json_suffix(subtype);
    if json {
        BodyType::Json
    } else {
        BodyType::Other
    }
}

/// The value starts with exactly `application/json`, then ends, or goes on
/// with `;` or a space: the one spelling every binder takes for JSON (gin cuts
/// the value at the first space or `;` and compares it byte for byte).
pub fn is_plain_json(value: &str) -> bool {
    value
        .strip_prefix("application/json")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([';', ' ']))
}

/// `subtype` ends in `+json` after a non-empty name (RFC 6839 §3.1).
fn has_json_suffix(subtype: &str) -> bool {
    const SUFFIX: &str = "+json";
    subtype.len() > SUFFIX.len()
        && subtype
            .get(subtype.len() - SUFFIX.len()..)
            .is_some_and(|s| s.eq_ignore_ascii_case(SUFFIX))
}

/// RFC 9110 §5.6.2: `token = 1*tchar`.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// A `,` outside a quoted-string (RFC 9110 §5.6.4), or a quoted-string that
/// never ends: either way not one value.
fn has_comma_outside_quotes(value: &str) -> bool {
    let mut quoted = false;
    let mut bytes = value.bytes();
    while let Some(b) = bytes.next() {
        match (quoted, b) {
            (false, b',') => return true,
            (false, b'"') => quoted = true,
            (true, b'\\') => {
                bytes.next();
            }
            (true, b'"') => quoted = false,
            _ => {}
        }
    }
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_structured_suffixes_are_json() {
        for v in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"utf-8\"",
            " application/json \t; q=1",
            "application/problem+json",
            "application/vnd.api+JSON; ext=\"a,b\"",
        ] {
            assert_eq!(body_type(v), BodyType::Json, "{v}");
        }
    }

    #[test]
    fn look_alikes_and_parameters_are_not_json() {
        for v in [
            "application/jsonx",
            "application/json-patch",
            "application/x-www-form-urlencoded; x=+json",
            "application/x-www-form-urlencoded;x=\"application/json\"",
            "text/plain; charset=+json",
            "application/+json",
            "multipart/form-data; boundary=+json",
        ] {
            assert_eq!(body_type(v), BodyType::Other, "{v}");
        }
    }

    #[test]
    fn several_values_or_no_media_type_are_ambiguous() {
        for v in [
            "application/json, application/x-www-form-urlencoded",
            "application/json,application/json",
            "application/x-www-form-urlencoded, application/json",
            "application/json; x=\"unterminated",
            "application json",
            "application/",
            "/json",
            "",
            "application/js on",
            "application/json\u{0}",
            "appl\u{ee}cation/json",
        ] {
            assert_eq!(body_type(v), BodyType::Ambiguous, "{v:?}");
        }
    }
}
