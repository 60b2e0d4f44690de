//! The query string as rules and credential sources see it, and which of its
//! names a framework would merge into one.
//!
//! portcullis splits on `&` and keeps the first value of a name. Services do
//! not all agree, so a query whose names some common framework reads as one
//! parameter is *repeated*, and rules that read `resource.query` deny it:
//!
//! - names equal under simple case folding (ASP.NET Core's `Request.Query`);
//! - `page` beside `page[]` or `page[x]` (PHP, `qs` as in Express 4, Rack);
//! - PHP's mangling: leading spaces dropped, `.`, space and a `[` that is
//!   never closed become `_`, so `access.token` is `access_token`;
//! - PHP reads a name up to a NUL and ignores what follows a closed `[…]`
//!   group (`filter[owner]x`); Rack 2 drops leading brackets and a `]` after
//!   the name (`[role]`, `role]` are `role`);
//! - a `;` anywhere outside percent-encoding: old Python `urllib.parse` and
//!   Rack 2 split on it, current ones do not, Go's `net/url` drops the pair;
//!   no single reading exists.
//!
//! Never imports: anything above the foundation but its floor's `fold`.

use std::collections::{BTreeMap, HashSet};

use crate::request::fold::fold_key;

/// One query name as the merging frameworks see it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Merged {
    /// The folded, PHP-mangled name before its first bracket.
    base: String,
    /// Whether `[…]` followed the base (`page[]`, `page[x]`).
    bracketed: bool,
    /// The folded, mangled name with its brackets.
    full: String,
}

impl Merged {
    fn of(decoded: &str) -> Merged {
        // PHP reads a name only up to a NUL; it drops leading spaces, and
        // Rack 2 leading brackets (`[role]` is `role`).
        let name = decoded.split('\0').next().unwrap_or("");
        let name = name.trim_start_matches([' ', '[', ']']);
        let cut = name.find(['[', ']']);
        let closed = cut.filter(|&i| name.as_bytes()[i] == b'[' && name[i + 1..].contains(']'));
        let (base, rest) = match (cut, closed) {
            (Some(i), Some(_)) => name.split_at(i),
            // Rack 2 reads `role]` as `role` and `ro]le` as `ro` with a child.
            (Some(i), None) if name.as_bytes()[i] == b']' => {
                let (base, rest) = name.split_at(i);
                (base, rest.trim_start_matches(']'))
            }
            // A `[` never closed: PHP mangles it into `_` below.
            _ => (name, ""),
        };
        let base = fold_key(&mangle(base));
        let groups = bracket_groups(rest);
        let mut full = base.clone();
        if !groups.is_empty() {
            full.push_str(&fold_key(groups));
        }
        Merged {
            full,
            bracketed: !rest.is_empty(),
            base,
        }
    }

    /// Whether a framework would read `self` and `other` as one parameter.
    fn merges_with(&self, other: &Merged) -> bool {
        self.full == other.full || (self.bracketed != other.bracketed && self.base == other.base)
    }
}

/// The leading `[…]` groups of what follows a name: PHP ignores anything
/// after a `]` that is not another `[` (`filter[owner]x` is `filter[owner]`).
fn bracket_groups(rest: &str) -> &str {
    let mut end = 0;
    while rest[end..].starts_with('[') {
        match rest[end..].find(']') {
            Some(close) => end += close + 1,
            None => break,
        }
    }
    &rest[..end]
}

/// PHP's name mangling (`.`, space and an unclosed `[` become `_`).
fn mangle(name: &str) -> std::borrow::Cow<'_, str> {
    if !name.contains(['.', ' ', '[']) {
        return std::borrow::Cow::Borrowed(name);
    }
    std::borrow::Cow::Owned(name.replace(['.', ' ', '['], "_"))
}

fn decode_query_part(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

fn pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// Every `(raw name, raw value)` whose name a common framework reads as
/// `name`: the decoded name itself, `name[]`, another letter case, PHP's
/// `.`/space spellings, and a name after a `;`. A caller that must remove the
/// parameter needs the raw name, and one that finds a raw name other than
/// `name` knows the upstream may read a parameter Envoy would not remove. In
/// a `&`-separated pair that a `;` splits, the raw name given is the whole
/// pair: no name Envoy could remove.
pub fn query_values<'q>(query: &'q str, name: &'q str) -> impl Iterator<Item = (&'q str, &'q str)> {
    let wanted = Merged::of(name);
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .flat_map(|pair| {
            let split = pair.contains(';');
            pair.split(';').filter(|p| !p.is_empty()).map(move |part| {
                let (k, v) = part.split_once('=').unwrap_or((part, ""));
                (if split { pair } else { k }, k, v)
            })
        })
        .filter_map(move |(raw, k, v)| {
            Merged::of(&decode_query_part(k))
                .merges_with(&wanted)
                .then_some((raw, v))
        })
}

/// The query's parameters, decoded, each name with its first value; and
/// whether any name is repeated in a spelling some framework merges (or the
/// query has a `;`, which frameworks split differently).
pub fn parse_query(query: &str) -> (BTreeMap<String, String>, bool) {
    let mut out = BTreeMap::new();
    let mut repeated = query.contains(';');
    let mut full = HashSet::new();
    let mut plain = HashSet::new();
    let mut bracketed = HashSet::new();
    for (k, v) in pairs(query) {
        let name = decode_query_part(k);
        let merged = Merged::of(&name);
        let (same_kind, other_kind) = if merged.bracketed {
            (&mut bracketed, &plain)
        } else {
            (&mut plain, &bracketed)
        };
        repeated |= other_kind.contains(&merged.base);
        same_kind.insert(merged.base);
        repeated |= !full.insert(merged.full);
        out.entry(name).or_insert_with(|| decode_query_part(v));
    }
    (out, repeated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repeated(query: &str) -> bool {
        parse_query(query).1
    }

    #[test]
    fn distinct_names_are_not_repeated() {
        for q in [
            "",
            "a=1&b=2",
            "page=1&per_page=2",
            "filter[status]=a&filter[owner]=b",
            "page[]=1",
            "a_b=1&ab=2",
            "s=1&ss=2",
        ] {
            assert!(!repeated(q), "{q}");
        }
    }

    #[test]
    fn every_spelling_a_framework_merges_is_a_repeat() {
        for q in [
            // exact, and percent-encoded
            "x=1&x=2",
            "access_token=a&access%5Ftoken=b",
            // ASP.NET Core: case-insensitive names
            "role=user&ROLE=admin",
            "role=user&Role=admin",
            "status=a&\u{17F}tatus=b",
            // PHP, qs, Rack: page and page[] / page[x]
            "page=1&page[]=2",
            "page[]=2&page=1",
            "page=1&page[x]=2",
            "page=1&page%5B%5D=2",
            "page[a]=1&page[a]=2",
            // ; as a separator (old Python urllib, Rack 2)
            "a=1;a=2",
            "a=1;b=2",
            // PHP mangling: . space and a lone [ become _, leading spaces go
            "access.token=a&access_token=b",
            "access+token=a&access_token=b",
            "access%20token=a&access_token=b",
            "access[token=a&access_token=b",
            "%20access_token=a&access_token=b",
            // PHP cuts a name at NUL and ignores what follows a closed group
            "role=user&role%00x=admin",
            "filter[owner]=me&filter[owner]x=victim",
            // Rack 2 strips leading brackets and a trailing `]`
            "role=user&role]=admin",
            "role=user&[role]=admin",
            "ro=user&ro]le=admin",
        ] {
            assert!(repeated(q), "{q}");
        }
    }

    #[test]
    fn first_value_is_kept_under_the_decoded_name() {
        let (params, _) = parse_query("x=1&y=a%2Fb&x=2&n+m=%20");
        assert_eq!(params["x"], "1");
        assert_eq!(params["y"], "a/b");
        assert_eq!(params["n m"], " ");
    }

    #[test]
    fn query_values_finds_the_php_and_rack_spellings_of_the_name() {
        for q in [
            "access_token%00=a",
            "access_token]=a",
            "[access_token]=a",
            "access_token%00x=a",
        ] {
            let found: Vec<_> = query_values(q, "access_token").collect();
            assert_eq!(found.len(), 1, "{q}");
        }
        assert_eq!(query_values("access_tokens=a", "access_token").count(), 0);
    }

    #[test]
    fn query_values_finds_every_spelling_of_the_name() {
        let found = |q| {
            query_values(q, "access_token")
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
        };
        assert_eq!(found("access_token=a"), ["access_token"]);
        assert_eq!(
            found(
                "access_token=a&Access_Token=b&access.token=c&access_token[]=d&x=1;access%5Ftoken=e"
            ),
            [
                "access_token",
                "Access_Token",
                "access.token",
                "access_token[]",
                "x=1;access%5Ftoken=e"
            ]
        );
        assert!(found("access_tokens=a&token=b").is_empty());
        // Split by a `;`, even the exact name is not one Envoy could remove.
        assert_eq!(found("access_token=a;x=1"), ["access_token=a;x=1"]);
    }
}
