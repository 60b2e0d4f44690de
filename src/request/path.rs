//! Request paths: the canonical-form check, and the route templates rules match.
//!
//! Rules see the path exactly as the upstream will. portcullis never normalizes a
//! path itself: if it did so differently from the upstream, a rule for `/admin`
//! could be walked around with `/public/../admin` or `/%61dmin` (the class of bypass
//! behind CVE-2021-31920). A path that is not already canonical is denied instead,
//! and Envoy's own `normalize_path`/`merge_slashes` keep honest clients clear of it.

use crate::foundation::reason::Reason;

pub use crate::foundation::limits::MAX_PATH_BYTES;

/// Why a path was refused. Each is denied with reason `non_canonical_path`
/// (or `path_too_long`); the variant is only logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    #[error("path does not start with '/'")]
    NotAbsolute,
    #[error("path has an empty segment ('//')")]
    EmptySegment,
    #[error("path has a '.' or '..' segment")]
    DotSegment,
    #[error("path has a ';' parameter")]
    Semicolon,
    #[error("path has a control character, NUL, '\\' or '#'")]
    ForbiddenChar,
    #[error("path has an encoded '/', '\\', '.', NUL or control character")]
    EncodedSeparator,
    #[error("path percent-encodes an unreserved character")]
    EncodedUnreserved,
    #[error("path has a double percent-encoding ('%25' followed by hex)")]
    DoubleEncoded,
    #[error("path has a malformed percent-encoding")]
    BadEscape,
    #[error("path segment is not valid UTF-8 once decoded")]
    NotUtf8,
}

impl PathError {
    /// The reason a request with this path is denied.
    pub fn reason(&self) -> Reason {
        match self {
            PathError::TooLong => Reason::PathTooLong,
            _ => Reason::NonCanonicalPath,
        }
    }
}

/// Splits `:path` into path and query (Envoy sends them together) and checks that
/// the path is canonical. Returns the decoded segments alongside the raw path.
pub fn split_and_check(raw: &str) -> Result<(&str, &str, Vec<String>), PathError> {
    let (path, query) = match raw.split_once('?') {
        Some((p, q)) => (p, q),
        None => (raw, ""),
    };
    let segments = canonical_segments(path)?;
    Ok((path, query, segments))
}

/// Checks that `path` is canonical and returns its percent-decoded segments.
///
/// `/` alone has no segments. Decoding is unambiguous once the checks pass: no
/// decoded segment can contain `/`, `\`, NUL, or be `.`/`..`.
pub fn canonical_segments(path: &str) -> Result<Vec<String>, PathError> {
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PathError::NotAbsolute);
    };
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let mut segments: Vec<String> = Vec::new();
    let mut raw = rest.split('/').peekable();
    while let Some(seg) = raw.next() {
        // A trailing slash is kept as a final empty segment: `/orders/` and
        // `/orders` are different resources to many upstreams, and neither is
        // ambiguous. Empty segments anywhere else (`//`) are refused.
        if seg.is_empty() && raw.peek().is_none() {
            segments.push(String::new());
        } else {
            segments.push(decode_segment(seg)?);
        }
    }
    Ok(segments)
}

fn decode_segment(seg: &str) -> Result<String, PathError> {
    if seg.is_empty() {
        return Err(PathError::EmptySegment);
    }
    if seg == "." || seg == ".." {
        return Err(PathError::DotSegment);
    }
    let bytes = seg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b';' => return Err(PathError::Semicolon),
            b'\\' | b'#' | 0..=0x1f | 0x7f => return Err(PathError::ForbiddenChar),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
                let decoded = hex_pair(hex).ok_or(PathError::BadEscape)?;
                match decoded {
                    b'/' | b'\\' | b'.' | 0..=0x1f | 0x7f => {
                        return Err(PathError::EncodedSeparator);
                    }
                    // RFC 3986 §2.3/§6.2.2.2: unreserved characters are never
                    // encoded in a normalized URI, and a server may decode them.
                    b if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'~' => {
                        return Err(PathError::EncodedUnreserved);
                    }
                    // `%25` followed by hex is a double encoding (`%252e`): a hop
                    // that decodes once more would see `.`, `/` or `a`.
                    b'%' if bytes.get(i + 3..i + 5).and_then(hex_pair).is_some() => {
                        return Err(PathError::DoubleEncoded);
                    }
                    _ => out.push(decoded),
                }
                i += 3;
                continue;
            }
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| PathError::NotUtf8)
}

fn hex_pair(hex: &[u8]) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16);
    Some((digit(hex[0])? * 16 + digit(hex[1])?) as u8)
}

/// A compiled route template: `/tenants/{tenant}/orders/{order}`, with an optional
/// trailing catch-all `{rest...}` that matches zero or more segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Param(String),
    CatchAll(String),
}

/// Why a template was refused at compile time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("path template must start with '/'")]
    NotAbsolute,
    #[error("path template segment {0:?} is not canonical ({1})")]
    NonCanonical(String, PathError),
    #[error("path template parameter {0:?} is not a valid name (letters, digits, '_')")]
    BadParamName(String),
    #[error("path template parameter {0:?} appears twice")]
    DuplicateParam(String),
    #[error("catch-all {{{0}...}} must be the last segment")]
    CatchAllNotLast(String),
    #[error(
        "path template segment {0:?} mixes text and a parameter; a parameter is a whole segment"
    )]
    PartialParam(String),
}

impl Template {
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        let Some(rest) = source.strip_prefix('/') else {
            return Err(TemplateError::NotAbsolute);
        };
        let mut parts = Vec::new();
        let mut seen = Vec::<String>::new();
        let raw_segments: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        let count = raw_segments.len();
        for (i, seg) in raw_segments.into_iter().enumerate() {
            if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                let (name, catch_all) = match inner.strip_suffix("...") {
                    Some(n) => (n, true),
                    None => (inner, false),
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(TemplateError::BadParamName(name.to_string()));
                }
                if seen.iter().any(|s| s == name) {
                    return Err(TemplateError::DuplicateParam(name.to_string()));
                }
                seen.push(name.to_string());
                if catch_all {
                    if i + 1 != count {
                        return Err(TemplateError::CatchAllNotLast(name.to_string()));
                    }
                    parts.push(Part::CatchAll(name.to_string()));
                } else {
                    parts.push(Part::Param(name.to_string()));
                }
            } else if seg.contains('{') || seg.contains('}') {
                return Err(TemplateError::PartialParam(seg.to_string()));
            } else if seg.is_empty() && i + 1 == count {
                // A trailing slash, as in request paths.
                parts.push(Part::Literal(String::new()));
            } else {
                let decoded = decode_segment(seg)
                    .map_err(|e| TemplateError::NonCanonical(seg.to_string(), e))?;
                parts.push(Part::Literal(decoded));
            }
        }
        parts.shrink_to_fit(); // kept for the life of the tenant
        Ok(Template {
            source: source.to_string(),
            parts,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Names of the parameters this template binds, in order.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Param(n) | Part::CatchAll(n) => Some(n.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Whether every path `other` matches, this template matches too.
    pub fn covers(&self, other: &Template) -> bool {
        #[cfg(test)]
        COVERS_CALLS.with(|n| n.set(n.get() + 1));
        for (i, part) in self.parts.iter().enumerate() {
            match (part, other.parts.get(i)) {
                (Part::CatchAll(_), _) => return true,
                (_, None | Some(Part::CatchAll(_))) => return false,
                (Part::Literal(a), Some(Part::Literal(b))) if a == b => {}
                (Part::Literal(_), Some(_)) => return false,
                // A parameter never binds the empty segment after a trailing slash.
                (Part::Param(_), Some(Part::Literal(b))) if b.is_empty() => return false,
                (Part::Param(_), Some(_)) => {}
            }
        }
        self.parts.len() == other.parts.len()
    }

    /// Whether some path matches both templates.
    pub fn overlaps(&self, other: &Template) -> bool {
        let (a, b) = (&self.parts, &other.parts);
        for i in 0..a.len().max(b.len()) {
            match (a.get(i), b.get(i)) {
                (Some(Part::CatchAll(_)), _) | (_, Some(Part::CatchAll(_))) => return true,
                (None, _) | (_, None) => return false,
                (Some(Part::Literal(x)), Some(Part::Literal(y))) if x != y => return false,
                // A parameter never binds the empty segment after a trailing slash.
                (Some(Part::Param(_)), Some(Part::Literal(y)))
                | (Some(Part::Literal(y)), Some(Part::Param(_)))
                    if y.is_empty() =>
                {
                    return false;
                }
                _ => {}
            }
        }
        true
    }

    /// Matches decoded segments; on success returns the bound parameters.
    pub fn matches(&self, segments: &[String]) -> Option<Vec<(String, String)>> {
        let mut params = Vec::new();
        let mut i = 0;
        for part in &self.parts {
            match part {
                Part::Literal(lit) => {
                    if segments.get(i)? != lit {
                        return None;
                    }
                }
                Part::Param(name) => {
                    // The empty segment after a trailing slash binds nothing.
                    let seg = segments.get(i).filter(|s| !s.is_empty())?;
                    params.push((name.clone(), seg.clone()));
                }
                Part::CatchAll(name) => {
                    params.push((name.clone(), segments.get(i..)?.join("/")));
                    return Some(params);
                }
            }
            i += 1;
        }
        (i == segments.len()).then_some(params)
    }
}

#[cfg(test)]
thread_local! {
    /// Calls of [`Template::covers`], for the tests that count the work a
    /// load does.
    pub(crate) static COVERS_CALLS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The items [`RouteIndex::hits`] found: inline up to eight, the most one
/// path's rules usually number.
pub type Hits = smallvec::SmallVec<[usize; 8]>;

/// An index from route templates to the items (rule numbers) registered on them,
/// so finding the candidates for a path costs the path's depth, not the number of
/// rules. Lookup returns every item whose template matches, in ascending order.
#[derive(Debug, Default, Clone)]
pub struct RouteIndex {
    root: Node,
}

#[derive(Debug, Default, Clone)]
struct Node {
    /// Sorted by segment: a tenant's templated rules put tens of literals under
    /// one node, and a sorted vector holds them in about half a hash map's
    /// memory (10,000 tenants each keep one of these).
    literals: Vec<(Box<str>, Node)>,
    param: Option<Box<Node>>,
    /// Items whose template ends exactly here.
    items: Vec<usize>,
    /// Items whose template has a catch-all here.
    catch_all: Vec<usize>,
}

impl RouteIndex {
    pub fn insert(&mut self, template: &Template, item: usize) {
        let mut node = &mut self.root;
        for part in &template.parts {
            match part {
                Part::Literal(lit) => {
                    let at = match node
                        .literals
                        .binary_search_by(|(k, _)| k.as_ref().cmp(lit.as_str()))
                    {
                        Ok(at) => at,
                        Err(at) => {
                            node.literals
                                .insert(at, (Box::from(lit.as_str()), Node::default()));
                            at
                        }
                    };
                    node = &mut node.literals[at].1;
                }
                Part::Param(_) => node = node.param.get_or_insert_with(Default::default),
                Part::CatchAll(_) => {
                    node.catch_all.push(item);
                    return;
                }
            }
        }
        node.items.push(item);
    }

    /// Releases the spare capacity insertion left; call once every item is in.
    pub fn shrink_to_fit(&mut self) {
        fn shrink(node: &mut Node) {
            node.literals.shrink_to_fit();
            node.items.shrink_to_fit();
            node.catch_all.shrink_to_fit();
            for (_, child) in &mut node.literals {
                shrink(child);
            }
            if let Some(child) = &mut node.param {
                shrink(child);
            }
        }
        shrink(&mut self.root);
    }

    /// All items whose template matches `segments`, sorted and without repeats.
    pub fn lookup(&self, segments: &[String]) -> Vec<usize> {
        self.hits(segments).into_vec()
    }

    /// [`RouteIndex::lookup`] in an inline buffer: a check's few candidates
    /// cost no allocation.
    pub fn hits(&self, segments: &[String]) -> Hits {
        let mut out = Hits::new();
        visit(&self.root, segments, &mut |items| {
            out.extend_from_slice(items)
        });
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The first (lowest) item [`RouteIndex::lookup`] would return, found
    /// without collecting the others.
    pub fn first(&self, segments: &[String]) -> Option<usize> {
        let mut first: Option<usize> = None;
        visit(&self.root, segments, &mut |items| {
            if let Some(&low) = items.iter().min() {
                first = Some(first.map_or(low, |f| f.min(low)));
            }
        });
        first
    }

    /// All items whose template covers `template` (see [`Template::covers`]),
    /// sorted and without repeats: what comparing `template` with every item's
    /// template would find, at the cost of the trie nodes on its way.
    pub fn covering(&self, template: &Template) -> Vec<usize> {
        let mut out = Vec::new();
        collect_covering(&self.root, &template.parts, &mut out);
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// [`RouteIndex::covering`] below `node`, for the parts of the template left.
fn collect_covering(node: &Node, parts: &[Part], out: &mut Vec<usize>) {
    // A catch-all covers whatever follows, nothing included.
    out.extend_from_slice(&node.catch_all);
    match parts.split_first() {
        None => out.extend_from_slice(&node.items),
        // Only a catch-all covers a catch-all.
        Some((Part::CatchAll(_), _)) => {}
        Some((Part::Literal(lit), rest)) => {
            if let Ok(at) = node
                .literals
                .binary_search_by(|(k, _)| k.as_ref().cmp(lit.as_str()))
            {
                collect_covering(&node.literals[at].1, rest, out);
            }
            // A parameter never binds the empty segment after a trailing slash.
            if let Some(child) = node.param.as_ref().filter(|_| !lit.is_empty()) {
                collect_covering(child, rest, out);
            }
        }
        Some((Part::Param(_), rest)) => {
            if let Some(child) = &node.param {
                collect_covering(child, rest, out);
            }
        }
    }
}

/// Hands `found` the items of every node below `node` whose template matches
/// `segments` (in trie order: sort them for file order), never an empty list.
fn visit(node: &Node, segments: &[String], found: &mut impl FnMut(&[usize])) {
    if !node.catch_all.is_empty() {
        found(&node.catch_all);
    }
    let Some((first, rest)) = segments.split_first() else {
        if !node.items.is_empty() {
            found(&node.items);
        }
        return;
    };
    if let Ok(at) = node
        .literals
        .binary_search_by(|(k, _)| k.as_ref().cmp(first.as_str()))
    {
        visit(&node.literals[at].1, rest, found);
    }
    if let Some(child) = node.param.as_ref().filter(|_| !first.is_empty()) {
        visit(child, rest, found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_is_containment() {
        let t = |s: &str| Template::parse(s).unwrap();
        assert!(t("/admin/{rest...}").covers(&t("/admin/users/{id}")));
        assert!(t("/admin/{rest...}").covers(&t("/admin")));
        assert!(t("/a/{x}").covers(&t("/a/b")));
        assert!(t("/a/{x}").covers(&t("/a/{y}")));
        assert!(!t("/a/b").covers(&t("/a/{x}")));
        assert!(!t("/a/{x}").covers(&t("/a/{x}/c")));
        assert!(!t("/a/{x}/c").covers(&t("/a/{x}")));
        assert!(!t("/a/{x}").covers(&t("/a/{rest...}")));
        assert!(!t("/a/{x}").covers(&t("/a/")));
        assert!(!t("/b/{rest...}").covers(&t("/a/c")));
    }

    /// The index finds exactly the templates that cover, in order.
    #[test]
    fn covering_agrees_with_covers() {
        let all: Vec<Template> = [
            "/",
            "/a",
            "/a/",
            "/b",
            "/{x}",
            "/{x}/",
            "/{rest...}",
            "/a/{rest...}",
            "/a/b",
            "/a/{x}",
            "/a/{x}/c",
            "/a/b/c",
            "/{x}/b",
            "/{x}/{y}",
            "/{x}/{rest...}",
            "/a/b/",
            "/a/{x}/",
            "/a/b/{rest...}",
            "/c/{x}/{y}/{rest...}",
            "/c/d/e/f",
        ]
        .iter()
        .map(|s| Template::parse(s).unwrap())
        .collect();
        let mut index = RouteIndex::default();
        for (i, t) in all.iter().enumerate() {
            index.insert(t, i);
        }
        for other in &all {
            let want: Vec<usize> = (0..all.len()).filter(|&i| all[i].covers(other)).collect();
            assert_eq!(index.covering(other), want, "{}", other.as_str());
        }
    }
    use proptest::prelude::*;

    fn segs(p: &str) -> Vec<String> {
        canonical_segments(p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    #[test]
    fn canonical_paths_pass_and_decode() {
        assert_eq!(segs("/"), Vec::<String>::new());
        assert_eq!(segs("/a/b"), vec!["a", "b"]);
        assert_eq!(segs("/a%20b/c"), vec!["a b", "c"]);
        assert_eq!(segs("/100%25"), vec!["100%"]);
        assert_eq!(segs("/100%25off"), vec!["100%off"]);
        assert_eq!(segs("/a/b/"), vec!["a", "b", ""]);
    }

    #[test]
    fn non_canonical_paths_are_refused() {
        for (p, want) in [
            ("a/b", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("//a", PathError::EmptySegment),
            ("/a//b", PathError::EmptySegment),
            ("/a//", PathError::EmptySegment),
            ("/a/../admin", PathError::DotSegment),
            ("/a/./b", PathError::DotSegment),
            ("/..", PathError::DotSegment),
            ("/a;x=1/b", PathError::Semicolon),
            ("/a/b;", PathError::Semicolon),
            ("/a%2Fb", PathError::EncodedSeparator),
            ("/a%2fb", PathError::EncodedSeparator),
            ("/a%5Cb", PathError::EncodedSeparator),
            ("/%2E%2E/admin", PathError::EncodedSeparator),
            ("/a%00", PathError::EncodedSeparator),
            ("/a\\b", PathError::ForbiddenChar),
            ("/a\0b", PathError::ForbiddenChar),
            ("/a#frag", PathError::ForbiddenChar),
            ("/%61dmin", PathError::EncodedUnreserved),
            ("/%2561dmin/x", PathError::DoubleEncoded),
            ("/%252e%252e/admin", PathError::DoubleEncoded),
            ("/a%zz", PathError::BadEscape),
            ("/a%4", PathError::BadEscape),
            ("/%ff", PathError::NotUtf8),
        ] {
            assert_eq!(canonical_segments(p), Err(want), "{p:?}");
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        assert_eq!(canonical_segments(&long), Err(PathError::TooLong));
        assert_eq!(PathError::TooLong.reason(), Reason::PathTooLong);
        assert_eq!(PathError::DotSegment.reason(), Reason::NonCanonicalPath);
    }

    #[test]
    fn query_is_split_off() {
        let (path, query, segments) = split_and_check("/a/b?x=1&y=/../").unwrap();
        assert_eq!((path, query), ("/a/b", "x=1&y=/../"));
        assert_eq!(segments, vec!["a", "b"]);
    }

    #[test]
    fn templates_bind_params_and_catch_all() {
        let t = Template::parse("/tenants/{tenant}/orders/{order}").unwrap();
        assert_eq!(
            t.matches(&segs("/tenants/acme/orders/42")),
            Some(vec![
                ("tenant".into(), "acme".into()),
                ("order".into(), "42".into())
            ])
        );
        assert_eq!(t.matches(&segs("/tenants/acme/orders")), None);
        assert_eq!(t.matches(&segs("/tenants/acme/orders/")), None);
        assert_eq!(t.matches(&segs("/tenants/acme/orders/42/x")), None);
        let c = Template::parse("/static/{rest...}").unwrap();
        assert_eq!(
            c.matches(&segs("/static/a/b")),
            Some(vec![("rest".into(), "a/b".into())])
        );
        assert_eq!(
            c.matches(&segs("/static")),
            Some(vec![("rest".into(), String::new())])
        );
        assert_eq!(c.matches(&segs("/other/a")), None);
        assert_eq!(Template::parse("/").unwrap().matches(&[]), Some(vec![]));
        let slash = Template::parse("/orders/").unwrap();
        assert!(slash.matches(&segs("/orders/")).is_some());
        assert!(slash.matches(&segs("/orders")).is_none());
        assert!(
            Template::parse("/orders")
                .unwrap()
                .matches(&segs("/orders/"))
                .is_none()
        );
    }

    #[test]
    fn bad_templates_are_refused() {
        assert_eq!(Template::parse("a"), Err(TemplateError::NotAbsolute));
        assert!(matches!(
            Template::parse("/a/{x...}/b"),
            Err(TemplateError::CatchAllNotLast(_))
        ));
        assert!(matches!(
            Template::parse("/a/{x}/{x}"),
            Err(TemplateError::DuplicateParam(_))
        ));
        assert!(matches!(
            Template::parse("/a/x{y}"),
            Err(TemplateError::PartialParam(_))
        ));
        assert!(matches!(
            Template::parse("/a/{b-c}"),
            Err(TemplateError::BadParamName(_))
        ));
        assert!(matches!(
            Template::parse("/a/../b"),
            Err(TemplateError::NonCanonical(..))
        ));
    }

    #[test]
    fn index_finds_every_matching_template_only() {
        let templates = [
            "/tenants/{tenant}/orders/{order}",
            "/tenants/{tenant}/orders",
            "/tenants/acme/orders/{order}",
            "/static/{rest...}",
            "/{any...}",
        ];
        let mut index = RouteIndex::default();
        for (i, t) in templates.iter().enumerate() {
            index.insert(&Template::parse(t).unwrap(), i);
        }
        assert_eq!(index.lookup(&segs("/tenants/acme/orders/1")), vec![0, 2, 4]);
        assert_eq!(index.lookup(&segs("/tenants/other/orders/1")), vec![0, 4]);
        assert_eq!(index.lookup(&segs("/static/x")), vec![3, 4]);
        assert_eq!(index.lookup(&segs("/")), vec![4]);
        assert_eq!(index.lookup(&segs("/tenants/acme/orders/")), vec![4]);
    }

    /// `hits` and `first` find what `lookup` finds, without its vector.
    #[test]
    fn hits_and_first_agree_with_lookup() {
        let templates = [
            "/{any...}",
            "/tenants/{tenant}/orders/{order}",
            "/tenants/acme/orders/{order}",
            "/tenants/{tenant}/orders",
            "/static/{rest...}",
            "/tenants/{tenant}/orders/{order}",
        ];
        let mut index = RouteIndex::default();
        for (i, t) in templates.iter().enumerate().rev() {
            index.insert(&Template::parse(t).unwrap(), i);
        }
        // Every item twice, in another order: `lookup` dedups.
        for (i, t) in templates.iter().enumerate() {
            index.insert(&Template::parse(t).unwrap(), i);
        }
        for path in [
            "/tenants/acme/orders/1",
            "/tenants/other/orders/1",
            "/tenants/acme/orders",
            "/static/x",
            "/",
            "/tenants/acme/orders/",
        ] {
            let all = index.lookup(&segs(path));
            assert_eq!(index.hits(&segs(path)).as_slice(), all.as_slice(), "{path}");
            assert_eq!(index.first(&segs(path)), all.first().copied(), "{path}");
        }
        assert_eq!(
            index.lookup(&segs("/tenants/acme/orders/1")),
            vec![0, 1, 2, 5]
        );
        let empty = RouteIndex::default();
        assert_eq!(empty.first(&segs("/a")), None);
        assert!(empty.hits(&segs("/a")).is_empty());
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("admin".to_string()),
            Just("..".to_string()),
            Just(".".to_string()),
            Just(String::new()),
            Just("%2e%2e".to_string()),
            Just("%2F".to_string()),
            Just("%61dmin".to_string()),
            Just("a;b".to_string()),
            Just("admin;x=1".to_string()),
            Just("admin%3B".to_string()),
            Just("%2E%2E".to_string()),
            Just(".%2e".to_string()),
            Just("%2e".to_string()),
            Just("%5c".to_string()),
            Just("a%5Cadmin".to_string()),
            Just("%252e%252e".to_string()),
            Just("%2fadmin".to_string()),
            Just("%00".to_string()),
            Just("ADMIN".to_string()),
            Just("adm%69n".to_string()),
            Just("..\\admin".to_string()),
            "[a-zA-Z0-9%;._~\\-\\\\]{0,6}",
        ]
    }

    /// A whole `:path` as a hostile client might send it: segments joined by
    /// `/`, `//` or `\`, with a query or fragment now and then.
    fn raw_path() -> impl Strategy<Value = String> {
        let sep = prop_oneof![Just("/"), Just("/"), Just("//"), Just("\\"), Just("/./")];
        let tail = prop_oneof![
            Just(String::new()),
            Just("?x=/../admin".to_string()),
            Just("?/admin".to_string()),
            Just("#/admin".to_string()),
        ];
        (proptest::collection::vec((sep, segment()), 0..6), tail).prop_map(|(parts, tail)| {
            let mut p: String = parts.iter().map(|(s, seg)| format!("{s}{seg}")).collect();
            if p.is_empty() {
                p.push('/');
            }
            p + &tail
        })
    }

    proptest! {
        /// No path that reaches a template binds a parameter or matches a literal
        /// through a dot segment, an encoded separator or an empty segment: every
        /// accepted path's decoded segments are exactly the raw segments decoded.
        #[test]
        fn accepted_paths_are_unambiguous(parts in proptest::collection::vec(segment(), 0..6)) {
            let path = format!("/{}", parts.join("/"));
            if let Ok(decoded) = canonical_segments(&path) {
                let raw_count = if parts.is_empty() || path == "/" { 0 } else { parts.len() };
                prop_assert_eq!(decoded.len(), raw_count);
                let last = decoded.len().saturating_sub(1);
                for (i, seg) in decoded.iter().enumerate() {
                    prop_assert!((i == last || !seg.is_empty()) && seg != "." && seg != "..");
                    prop_assert!(!seg.contains('/') && !seg.contains('\\') && !seg.contains('\0'));
                }
            }
        }

        /// A rule for /admin/{x} is reached only by a path whose first segment is
        /// literally "admin", never through `..`, encodings or empty segments.
        #[test]
        fn admin_rule_is_reached_only_by_admin_paths(parts in proptest::collection::vec(segment(), 0..6)) {
            let path = format!("/{}", parts.join("/"));
            let template = Template::parse("/admin/{x}").unwrap();
            let mut index = RouteIndex::default();
            index.insert(&template, 0);
            if let Ok(decoded) = canonical_segments(&path) {
                let hit = !index.lookup(&decoded).is_empty();
                prop_assert_eq!(hit, template.matches(&decoded).is_some());
                if hit {
                    prop_assert!(path.starts_with("/admin/"));
                    prop_assert_eq!(parts.len(), 2);
                }
            }
        }

        /// With rules for `/a/{x}`, `/public/{rest...}` and `/admin/{rest...}`,
        /// a whole `:path` (separators, `\`, `//`, dot segments, encoded dots
        /// and slashes, `;` parameters, a query) reaches the admin rule only when
        /// its path part is literally `/admin` or starts with `/admin/`, and `/a/{x}` only with
        /// exactly two literal segments, the first `a`: `/a/../admin` and its
        /// encodings reach neither.
        #[test]
        fn no_path_reaches_a_rule_through_another(raw in raw_path()) {
            let mut index = RouteIndex::default();
            let templates = ["/a/{x}", "/public/{rest...}", "/admin/{rest...}"];
            for (i, t) in templates.iter().enumerate() {
                index.insert(&Template::parse(t).unwrap(), i);
            }
            if let Ok((path, _query, decoded)) = split_and_check(&raw) {
                let hits = index.lookup(&decoded);
                let literal: Vec<&str> = path.split('/').skip(1).collect();
                if hits.contains(&2) {
                    // `{rest...}` may be empty: `/admin` itself is in.
                    prop_assert!(path == "/admin" || path.starts_with("/admin/"), "{raw:?} reached /admin via {path:?}");
                }
                if hits.contains(&0) {
                    prop_assert_eq!(literal.len(), 2, "{:?}", raw);
                    prop_assert_eq!(literal[0], "a");
                }
                if hits.contains(&1) {
                    prop_assert!(path == "/public" || path.starts_with("/public/"));
                }
                // Decoding never yields a segment the raw path did not have.
                prop_assert_eq!(decoded.len(), if path == "/" { 0 } else { literal.len() });
                // (An encoded `;` stays data: `/admin%3B` is the segment
                // `admin;`, which no `admin` literal matches.)
                for seg in &decoded {
                    prop_assert!(seg != "." && seg != ".." && !seg.contains(['/', '\\', '\0']));
                }
            } else {
                // Anything with a dot segment, `//`, `\`, `;` or an encoded
                // separator before the query is refused outright.
                let path = raw.split('?').next().unwrap_or("");
                prop_assert!(
                    path.contains("//") || path.contains('\\') || path.contains(';')
                        || path.contains('%') || path.contains('#')
                        || path.split('/').any(|s| s == "." || s == "..")
                        || !path.starts_with('/'),
                    "{raw:?} refused for no visible reason"
                );
            }
        }
    }
}
