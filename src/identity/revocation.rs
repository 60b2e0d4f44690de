//! Revocation lists: cut off a token, a subject or a client before its tokens
//! expire, per tenant.
//!
//! A list is a file `<name>.revoked.yaml` in the policy directory (so a
//! Kubernetes ConfigMap or Secret can carry it), reloaded with the policies:
//!
//! ```yaml
//! apiVersion: portcullis/v1
//! tenant: acme
//! revoked:
//!   - { jti: 5f1c2a, until: 2026-12-01T00:00:00Z }   # one token, until it expires
//!   - { sub: mallory }                                # every token of a subject
//!   - { client_id: leaky-ci, until: 1767225600 }      # every token of a client
//! ```
//!
//! Entries apply to every identity with those values (a validated JWT,
//! `jwt_authn` claims, an introspected token). An entry with `until` stops
//! applying at that time; without it, it applies until removed. The check runs
//! on every request, also when the token's verification came from the cache. A
//! broken file keeps the tenant's previous list; a tenant whose list never
//! loaded (or is named by two files) has none to trust, and its callers that
//! a list could revoke ([`revocable`]) get 503 `revocation_unavailable`.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::foundation::document::{API_VERSION, PolicyError};
use crate::identity::Identity;

/// File names that hold revocation lists rather than policies.
pub const SUFFIX: &str = ".revoked.yaml";
/// Most entries one list may hold.
pub const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RevocationFile {
    #[serde(rename = "apiVersion")]
    api_version: String,
    tenant: String,
    #[serde(default)]
    revoked: Vec<EntrySpec>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct EntrySpec {
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    /// Unix seconds, or an RFC 3339 UTC time (`2026-12-01T00:00:00Z`).
    #[serde(default)]
    until: Option<Until>,
    /// Why, for the people who read the file; not used.
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
enum Until {
    Seconds(u64),
    Text(String),
}

/// One tenant's compiled list: value → the first second it no longer applies.
#[derive(Debug, Default)]
pub struct RevocationList {
    pub tenant: String,
    jti: HashMap<String, u64>,
    sub: HashMap<String, u64>,
    client_id: HashMap<String, u64>,
}

impl RevocationList {
    /// An empty list for `tenant`, to be filled with [`RevocationList::insert`]
    /// (the live revocations pushed through the shared store).
    pub fn new(tenant: &str) -> RevocationList {
        RevocationList {
            tenant: tenant.to_string(),
            ..RevocationList::default()
        }
    }

    /// Adds one entry of `kind` (`jti`, `sub` or `client_id`) until `until`
    /// (unix seconds); two entries for one value keep the later expiry.
    /// `false` for another kind or an empty value.
    pub fn insert(&mut self, kind: &str, value: &str, until: u64) -> bool {
        let map = match kind {
            "jti" => &mut self.jti,
            "sub" => &mut self.sub,
            "client_id" => &mut self.client_id,
            _ => return false,
        };
        if value.is_empty() {
            return false;
        }
        let slot = map.entry(value.to_string()).or_insert(until);
        *slot = (*slot).max(until);
        true
    }

    /// Which kind of entry revokes `identity` at `now` (unix seconds), if any.
    pub fn revoked(&self, identity: &Identity, now: u64) -> Option<&'static str> {
        let hit = |map: &HashMap<String, u64>, value: Option<&str>| {
            value
                .and_then(|v| map.get(v))
                .is_some_and(|until| now < *until)
        };
        let claim = |name: &str| identity.claims.get(name).and_then(|v| v.as_str());
        if hit(&self.jti, identity.token_id.as_deref()) {
            Some("jti")
        } else if hit(&self.sub, identity.subject.as_deref()) {
            Some("sub")
        } else if hit(&self.client_id, claim("client_id")) || hit(&self.client_id, claim("azp")) {
            Some("client_id")
        } else {
            None
        }
    }

    pub fn len(&self) -> usize {
        self.jti.len() + self.sub.len() + self.client_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether some list could revoke `identity`: it carries a `jti`, a subject,
/// a `client_id` or an `azp`. An anonymous caller carries none.
pub fn revocable(identity: &Identity) -> bool {
    let claim = |name: &str| identity.claims.get(name).is_some_and(|v| v.is_string());
    identity.token_id.is_some() || identity.subject.is_some() || claim("client_id") || claim("azp")
}

/// The JSON Schema of revocation files.
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(RevocationFile)).unwrap_or_default()
}

/// Compiles one revocation file, reporting every error with its line.
pub fn compile(file: &Path, text: &str) -> Result<RevocationList, Vec<PolicyError>> {
    let err = |line: Option<usize>, message: String| PolicyError {
        file: file.to_path_buf(),
        line,
        message,
    };
    let spec: RevocationFile = crate::foundation::yaml::from_str(text)
        .map_err(|e| vec![err(e.line, format!("invalid revocation file: {e}"))])?;
    let mut errors = Vec::new();
    if spec.api_version != API_VERSION {
        errors.push(err(Some(1), format!("apiVersion must be {API_VERSION:?}")));
    }
    if spec.revoked.len() > MAX_ENTRIES {
        errors.push(err(
            None,
            format!("{} entries; the limit is {MAX_ENTRIES}", spec.revoked.len()),
        ));
    }
    let mut list = RevocationList {
        tenant: spec.tenant.clone(),
        ..RevocationList::default()
    };
    for (i, entry) in spec.revoked.iter().enumerate() {
        let until = match &entry.until {
            None => Ok(u64::MAX),
            Some(Until::Seconds(s)) => Ok(*s),
            Some(Until::Text(t)) => parse_rfc3339_utc(t).ok_or_else(|| {
                format!("revoked[{i}].until {t:?} is not unix seconds or YYYY-MM-DDTHH:MM:SSZ")
            }),
        };
        let until = match until {
            Ok(u) => u,
            Err(e) => {
                errors.push(err(None, e));
                continue;
            }
        };
        let (map, value) = match (&entry.jti, &entry.sub, &entry.client_id) {
            (Some(v), None, None) => (&mut list.jti, v),
            (None, Some(v), None) => (&mut list.sub, v),
            (None, None, Some(v)) => (&mut list.client_id, v),
            _ => {
                errors.push(err(
                    None,
                    format!("revoked[{i}] must name exactly one of jti, sub, client_id"),
                ));
                continue;
            }
        };
        if value.is_empty() {
            errors.push(err(None, format!("revoked[{i}] has an empty value")));
            continue;
        }
        // Two entries for one value: the later expiry wins.
        let slot = map.entry(value.clone()).or_insert(until);
        *slot = (*slot).max(until);
    }
    if errors.is_empty() {
        Ok(list)
    } else {
        Err(errors)
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` as unix seconds (UTC only, no fractions).
pub fn parse_rfc3339_utc(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<u64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if y < 1970
        || !(1..=12).contains(&m)
        || d == 0
        || d > month_days[(m - 1) as usize]
        || hh > 23
        || mm > 59
        || ss > 59
    {
        return None;
    }
    let days_before_year: u64 = (1970..y)
        .map(|yr| {
            if (yr % 4 == 0 && yr % 100 != 0) || yr % 400 == 0 {
                366
            } else {
                365
            }
        })
        .sum();
    let days_before_month: u64 = month_days[..(m - 1) as usize].iter().sum();
    Some(((days_before_year + days_before_month + d - 1) * 24 + hh) * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_utc("2026-01-01T00:00:00Z"),
            Some(1_767_225_600)
        );
        assert_eq!(
            parse_rfc3339_utc("2024-02-29T12:30:15Z"),
            Some(1_709_209_815)
        );
        assert_eq!(parse_rfc3339_utc("2025-02-29T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_utc("2026-01-01 00:00:00Z"), None);
        assert_eq!(parse_rfc3339_utc("2026-01-01T00:00:00+01:00"), None);
    }

    #[test]
    fn entries_need_one_kind_and_a_valid_until() {
        let bad = "apiVersion: portcullis/v1\ntenant: t\nrevoked:\n  - { jti: a, sub: b }\n  - { jti: c, until: tomorrow }\n";
        let errors = compile(Path::new("t.revoked.yaml"), bad).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            compile(
                Path::new("x"),
                "apiVersion: portcullis/v1\ntenant: t\nrevoked: [ { kid: a } ]\n"
            )
            .is_err()
        );
    }

    #[test]
    fn entries_beyond_the_limit_refuse_the_file() {
        let file = |n: usize| {
            let mut text = String::from("apiVersion: portcullis/v1\ntenant: t\nrevoked:\n");
            for i in 0..n {
                text.push_str(&format!("- jti: j{i}\n"));
            }
            text
        };
        let at = compile(Path::new("t.revoked.yaml"), &file(MAX_ENTRIES)).unwrap();
        assert_eq!(at.len(), MAX_ENTRIES);
        let errors = compile(Path::new("t.revoked.yaml"), &file(MAX_ENTRIES + 1)).unwrap_err();
        let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["100001 entries; the limit is 100000"]);
    }
}
