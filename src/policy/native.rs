//! A native evaluator for the common shapes of rule conditions, so a check
//! does not convert the request and claims into CEL values to answer
//! `"orders:read" in claims.scope && resource.params.tenant == claims.tenant`.
//!
//! [`compile`] turns a CEL AST into a [`Node`] when every part of it is one of:
//! `==` and `!=` between field paths and scalar literals, `in` against a list
//! of scalar literals or a field path, `&&`, `||`, `!`, `has(path.field)`, a
//! bare boolean path or literal. Paths start at `claims` or at one of
//! `resource`'s fields (not `context` or `data`). Anything else is left to the
//! interpreter, whole.
//!
//! Evaluation reads the borrowed claims and request and answers
//! `Some(bool)` only where CEL gives exactly that boolean. Where CEL would
//! raise an error (a missing key, a field of a non-map, a non-boolean
//! operand) or the answer needs what this module does not model (a list
//! literal compared with `==`), it answers `None` and the caller runs the interpreter, so the
//! result and every error message stay CEL's own. `&&` and `||` follow CEL's
//! error absorption: `false && error` and `error && false` are false.
//!
//! These rules are cel 0.15.0's, read from its source; Cargo.toml pins that
//! exact version, and the differential property test below compares the two
//! evaluators, so a cel upgrade that changes them fails the tests.

use std::collections::BTreeMap;

use cel::common::ast::{Expr, IdedExpr, LiteralValue, operators};
use serde_json::{Map, Value as Json};

use crate::request::input::{Body, Resource};

/// A condition in native form.
#[derive(Debug)]
pub enum Node {
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    /// `left == right`, or `left != right` when `negated`.
    Eq {
        left: Operand,
        right: Operand,
        negated: bool,
    },
    In {
        needle: Operand,
        haystack: Haystack,
    },
    /// `has(operand.field)`.
    Has {
        operand: Path,
        field: String,
    },
    /// A boolean on its own (`claims.admin`, `true`).
    Bool(Operand),
}

#[derive(Debug)]
pub enum Operand {
    Literal(Scalar),
    Path(Path),
}

#[derive(Debug)]
pub enum Haystack {
    List(Vec<Scalar>),
    Path(Path),
}

/// A literal of the condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    String(String),
}

/// `root.steps[0].steps[1]…`
#[derive(Debug)]
pub struct Path {
    root: Root,
    steps: Box<[String]>,
}

/// Where a path starts: `claims`, or one field of `resource`.
#[derive(Debug, Clone, Copy)]
enum Root {
    Claims,
    Params,
    Attributes,
    Headers,
    Query,
    ContextExtensions,
    Body,
    Host,
    Method,
    UrlPath,
    Scheme,
    Protocol,
    Grpc,
    Destination,
}

/// What a native condition reads: the same data the interpreter's roots are
/// built from.
pub struct Inputs<'a> {
    pub claims: &'a Map<String, Json>,
    pub resource: &'a Resource,
    /// This rule's path parameters (a repeated name: the last one counts, as in
    /// the map the interpreter is given).
    pub params: &'a [(String, String)],
    pub attributes: Option<&'a BTreeMap<String, String>>,
}

/// The native form of `e`, when it has one.
pub fn compile(e: &IdedExpr) -> Option<Node> {
    match &e.expr {
        Expr::Call(call) if call.target.is_none() => {
            let boxed = |e: &IdedExpr| compile(e).map(Box::new);
            match (call.func_name.as_str(), call.args.as_slice()) {
                (operators::LOGICAL_AND, [a, b]) => Some(Node::And(boxed(a)?, boxed(b)?)),
                (operators::LOGICAL_OR, [a, b]) => Some(Node::Or(boxed(a)?, boxed(b)?)),
                (operators::LOGICAL_NOT, [a]) => Some(Node::Not(boxed(a)?)),
                (operators::EQUALS | operators::NOT_EQUALS, [a, b]) => Some(Node::Eq {
                    left: operand(a)?,
                    right: operand(b)?,
                    negated: call.func_name == operators::NOT_EQUALS,
                }),
                (operators::IN, [a, b]) => Some(Node::In {
                    needle: operand(a)?,
                    haystack: match &b.expr {
                        Expr::List(list) if list.optional_indices.is_empty() => Haystack::List(
                            list.elements
                                .iter()
                                .map(|e| match &e.expr {
                                    Expr::Literal(l) => scalar(l),
                                    _ => None,
                                })
                                .collect::<Option<_>>()?,
                        ),
                        _ => Haystack::Path(path(b)?),
                    },
                }),
                _ => None,
            }
        }
        Expr::Select(s) if s.test => Some(Node::Has {
            operand: path(&s.operand)?,
            field: s.field.clone(),
        }),
        _ => Some(Node::Bool(operand(e)?)),
    }
}

fn operand(e: &IdedExpr) -> Option<Operand> {
    match &e.expr {
        Expr::Literal(l) => scalar(l).map(Operand::Literal),
        _ => path(e).map(Operand::Path),
    }
}

fn scalar(l: &LiteralValue) -> Option<Scalar> {
    Some(match l {
        LiteralValue::Null => Scalar::Null,
        LiteralValue::Boolean(b) => Scalar::Bool(*b.inner()),
        LiteralValue::Int(i) => Scalar::Int(*i.inner()),
        LiteralValue::UInt(u) => Scalar::UInt(*u.inner()),
        LiteralValue::Double(d) => Scalar::Double(*d.inner()),
        LiteralValue::String(s) => Scalar::String(s.inner().to_string()),
        LiteralValue::Bytes(_) => return None,
    })
}

/// A chain of plain field selections from `claims` or a field of `resource`.
fn path(e: &IdedExpr) -> Option<Path> {
    let mut fields = Vec::new();
    let mut at = e;
    let root = loop {
        match &at.expr {
            Expr::Select(s) if !s.test => {
                fields.push(s.field.as_str());
                at = &s.operand;
            }
            Expr::Ident(name) => break name.as_str(),
            _ => return None,
        }
    };
    fields.reverse();
    let (root, steps) = match (root, fields.as_slice()) {
        ("claims", steps) => (Root::Claims, steps),
        ("resource", [field, steps @ ..]) => (
            match *field {
                "params" => Root::Params,
                "attributes" => Root::Attributes,
                "headers" => Root::Headers,
                "query" => Root::Query,
                "context_extensions" => Root::ContextExtensions,
                "body" => Root::Body,
                "host" => Root::Host,
                "method" => Root::Method,
                "path" => Root::UrlPath,
                "scheme" => Root::Scheme,
                "protocol" => Root::Protocol,
                "grpc" => Root::Grpc,
                "destination" => Root::Destination,
                _ => return None,
            },
            steps,
        ),
        _ => return None,
    };
    Some(Path {
        root,
        steps: steps.iter().map(|s| s.to_string()).collect(),
    })
}

/// A value read from the inputs, borrowed.
#[derive(Clone, Copy)]
enum V<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(&'a str),
    Object(&'a Map<String, Json>),
    Array(&'a [Json]),
    Strings(&'a BTreeMap<String, String>),
    Params(&'a [(String, String)]),
}

static NO_STRINGS: BTreeMap<String, String> = BTreeMap::new();

impl<'a> V<'a> {
    /// As [`super::cel::json_to_cel`] converts it.
    fn json(j: &'a Json) -> V<'a> {
        match j {
            Json::Null => V::Null,
            Json::Bool(b) => V::Bool(*b),
            Json::Number(n) => n
                .as_i64()
                .map(V::Int)
                .or_else(|| n.as_u64().map(V::UInt))
                .unwrap_or_else(|| V::Double(n.as_f64().unwrap_or(f64::NAN))),
            Json::String(s) => V::Str(s),
            Json::Array(a) => V::Array(a),
            Json::Object(o) => V::Object(o),
        }
    }

    fn literal(s: &'a Scalar) -> V<'a> {
        match s {
            Scalar::Null => V::Null,
            Scalar::Bool(b) => V::Bool(*b),
            Scalar::Int(i) => V::Int(*i),
            Scalar::UInt(u) => V::UInt(*u),
            Scalar::Double(d) => V::Double(*d),
            Scalar::String(s) => V::Str(s),
        }
    }

    /// `self.name`; `None` where CEL raises an error (no such key, or not a map).
    fn field(self, name: &str) -> Option<V<'a>> {
        match self {
            V::Object(m) => m.get(name).map(V::json),
            V::Strings(m) => m.get(name).map(|s| V::Str(s)),
            V::Params(p) => p
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| V::Str(v)),
            _ => None,
        }
    }

    /// `has(self.name)`: only maps answer; anything else is CEL's to judge.
    fn has(self, name: &str) -> Option<bool> {
        match self {
            V::Object(m) => Some(m.contains_key(name)),
            V::Strings(m) => Some(m.contains_key(name)),
            V::Params(p) => Some(p.iter().any(|(k, _)| k == name)),
            _ => None,
        }
    }

    /// The entries of a map, as the interpreter's map holds them (a
    /// repeated parameter: the last one).
    fn entries(self) -> Option<Vec<(&'a str, V<'a>)>> {
        Some(match self {
            V::Object(m) => m.iter().map(|(k, v)| (k.as_str(), V::json(v))).collect(),
            V::Strings(m) => m.iter().map(|(k, v)| (k.as_str(), V::Str(v))).collect(),
            V::Params(p) => p
                .iter()
                .enumerate()
                .filter(|(i, (k, _))| !p[i + 1..].iter().any(|(later, _)| later == k))
                .map(|(_, (k, v))| (k.as_str(), V::Str(v)))
                .collect(),
            _ => return None,
        })
    }

    /// CEL's `==`: numbers compare across int, uint and double; other kinds
    /// are equal only to their own kind; lists element by element, maps
    /// entry by entry.
    fn equals(self, other: V<'_>) -> bool {
        match (self, other) {
            (V::Null, V::Null) => true,
            (V::Bool(a), V::Bool(b)) => a == b,
            (V::Str(a), V::Str(b)) => a == b,
            (V::Int(a), V::Int(b)) => a == b,
            (V::UInt(a), V::UInt(b)) => a == b,
            (V::Double(a), V::Double(b)) => a == b,
            (V::Int(i), V::UInt(u)) | (V::UInt(u), V::Int(i)) => {
                u64::try_from(i).is_ok_and(|i| i == u)
            }
            // As cel's `Int::compare`: the integer is cast to a double.
            #[allow(clippy::cast_precision_loss)]
            (V::Int(i), V::Double(d)) | (V::Double(d), V::Int(i)) => i as f64 == d,
            #[allow(clippy::cast_precision_loss)]
            (V::UInt(u), V::Double(d)) | (V::Double(d), V::UInt(u)) => u as f64 == d,
            (V::Array(a), V::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(a, b)| V::json(a).equals(V::json(b)))
            }
            (a, b) => match (a.entries(), b.entries()) {
                (Some(a), Some(b)) => {
                    a.len() == b.len()
                        && a.iter().all(|(k, v)| {
                            b.iter()
                                .find(|(bk, _)| bk == k)
                                .is_some_and(|(_, bv)| v.equals(*bv))
                        })
                }
                _ => false,
            },
        }
    }

    /// `needle in self`.
    fn contains(self, needle: V<'_>) -> Option<bool> {
        match self {
            V::Array(items) => Some(items.iter().any(|e| V::json(e).equals(needle))),
            // Keys are strings: any other key CEL can look up is absent.
            V::Object(_) | V::Strings(_) | V::Params(_) => match needle {
                V::Str(key) => self.has(key),
                V::Bool(_) | V::Int(_) | V::UInt(_) | V::Double(_) => Some(false),
                _ => None,
            },
            _ => None,
        }
    }
}

impl Path {
    fn resolve<'a>(&self, inputs: &Inputs<'a>) -> Option<V<'a>> {
        let r = inputs.resource;
        let mut v = match self.root {
            Root::Claims => V::Object(inputs.claims),
            Root::Params => V::Params(inputs.params),
            Root::Attributes => V::Strings(inputs.attributes.unwrap_or(&NO_STRINGS)),
            Root::Headers => V::Strings(&r.headers),
            Root::Query => V::Strings(&r.query_params),
            Root::ContextExtensions => V::Strings(&r.context_extensions),
            Root::Body => match &r.body {
                Body::Json(j) => V::json(j),
                _ => V::Null,
            },
            Root::Host => V::Str(&r.host),
            Root::Method => V::Str(&r.method),
            Root::UrlPath => V::Str(&r.path),
            Root::Scheme => V::Str(&r.scheme),
            Root::Protocol => V::Str(&r.protocol),
            Root::Grpc => V::Bool(r.grpc),
            Root::Destination => r.destination.as_deref().map_or(V::Null, V::Str),
        };
        for step in &self.steps {
            v = v.field(step)?;
        }
        Some(v)
    }
}

impl Operand {
    fn resolve<'a>(&'a self, inputs: &Inputs<'a>) -> Option<V<'a>> {
        match self {
            Operand::Literal(s) => Some(V::literal(s)),
            Operand::Path(p) => p.resolve(inputs),
        }
    }
}

/// CEL's `&&` (`decisive` false) and `||` (`decisive` true): a side equal
/// to `decisive` decides even when the other is an error. The right side is
/// read only when the left does not decide.
fn connective(a: &Node, b: &Node, inputs: &Inputs<'_>, decisive: bool) -> Option<bool> {
    match a.evaluate(inputs) {
        Some(left) if left == decisive => Some(decisive),
        left => match (left, b.evaluate(inputs)) {
            (_, Some(right)) if right == decisive => Some(decisive),
            (Some(_), right) => right,
            _ => None,
        },
    }
}

impl Node {
    /// The condition's value where CEL's is exactly this boolean; `None`
    /// where CEL errs or this module cannot tell.
    pub fn evaluate(&self, inputs: &Inputs<'_>) -> Option<bool> {
        match self {
            Node::And(a, b) => connective(a, b, inputs, false),
            Node::Or(a, b) => connective(a, b, inputs, true),
            Node::Not(a) => a.evaluate(inputs).map(|b| !b),
            Node::Eq {
                left,
                right,
                negated,
            } => {
                let eq = left.resolve(inputs)?.equals(right.resolve(inputs)?);
                Some(eq != *negated)
            }
            Node::In { needle, haystack } => {
                let needle = needle.resolve(inputs)?;
                match haystack {
                    Haystack::List(items) => {
                        Some(items.iter().any(|s| V::literal(s).equals(needle)))
                    }
                    Haystack::Path(p) => p.resolve(inputs)?.contains(needle),
                }
            }
            Node::Has { operand, field } => operand.resolve(inputs)?.has(field),
            Node::Bool(o) => match o.resolve(inputs)? {
                V::Bool(b) => Some(b),
                _ => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::identity::Identity;
    use crate::policy::evaluate::Base;
    use crate::policy::{Condition, Fields, Reads};
    use crate::request::input::Input;

    /// One request's inputs, owned.
    #[derive(Debug, Clone, Default)]
    struct Case {
        claims: Map<String, Json>,
        params: Vec<(String, String)>,
        headers: BTreeMap<String, String>,
        attributes: Option<BTreeMap<String, String>>,
        body: Option<Json>,
        destination: Option<String>,
        grpc: bool,
    }

    impl Case {
        fn input(&self) -> Input {
            let mut input = Input::default();
            let r = &mut input.resource;
            r.host = "api.example".into();
            r.method = "GET".into();
            r.path = "/a/b".into();
            r.headers = self.headers.clone();
            r.query_params = [("page".to_string(), "2".to_string())].into();
            r.body = self.body.clone().map_or(Body::Absent, Body::Json);
            r.destination = self.destination.clone();
            r.grpc = self.grpc;
            input
        }

        fn identity(&self) -> Identity {
            let mut identity = Identity::anonymous();
            identity.claims = Arc::new(self.claims.clone());
            identity
        }

        /// The answer of the native form.
        fn native(&self, c: &Condition) -> Option<bool> {
            let input = self.input();
            c.evaluate_native(&Inputs {
                claims: &self.claims,
                resource: &input.resource,
                params: &self.params,
                attributes: self.attributes.as_ref(),
            })
        }

        /// The interpreter's answer, over the roots checks build for it.
        fn cel(&self, c: &Condition) -> Result<bool, String> {
            let reads = Reads {
                resource: Fields::All,
                context: Fields::All,
            };
            let (input, identity) = (self.input(), self.identity());
            Base::new(&reads, "t", &input, &identity, None).evaluate(
                c,
                &self.params,
                self.attributes.as_ref(),
            )
        }
    }

    fn native(source: &str) -> Condition {
        let c = Condition::compile(source).unwrap();
        assert!(c.is_native(), "{source} is not native");
        c
    }

    /// Each supported shape is compiled natively and answers as CEL does,
    /// both ways.
    #[test]
    fn each_shape_is_native_and_agrees() {
        let case = Case {
            claims: json!({"sub": "alice", "scope": ["orders:read"], "tenant": "acme",
                "n": 1, "admin": true, "org": {"id": "o1"}})
            .as_object()
            .unwrap()
            .clone(),
            params: vec![
                ("tenant".into(), "acme".into()),
                ("order".into(), "42".into()),
            ],
            headers: [("x-team".to_string(), "red".to_string())].into(),
            ..Case::default()
        };
        for (source, want) in [
            (r#"claims.sub == "alice""#, Some(true)),
            (r#"claims.sub != "alice""#, Some(false)),
            ("resource.params.tenant == claims.tenant", Some(true)),
            ("claims.n == 1.0 && claims.n == 1u", Some(true)),
            (r#"claims.n == "1""#, Some(false)),
            (r#""orders:read" in claims.scope"#, Some(true)),
            (r#"claims.sub in ["bob", "carol"]"#, Some(false)),
            (r#""tenant" in resource.params"#, Some(true)),
            ("has(claims.org.id) && !has(claims.org.name)", Some(true)),
            ("has(resource.headers.x_team)", Some(false)),
            (r#"resource.headers["x-team"] == "red""#, None),
            ("claims.admin", Some(true)),
            (
                r#"(claims.sub == "bob" || resource.params.order == "42")"#,
                Some(true),
            ),
            (
                r#"resource.host == "api.example" && resource.method == "GET""#,
                Some(true),
            ),
            // Errors are the interpreter's to describe: the native form declines.
            ("claims.missing == 1", None),
            ("claims.n", None),
            ("claims.sub.x == 1", None),
            // ... unless the other side of `&&` / `||` decides, as in CEL.
            ("claims.missing == 1 && false", Some(false)),
            ("claims.missing == 1 || claims.admin", Some(true)),
            ("false && claims.missing", Some(false)),
        ] {
            let c = Condition::compile(source).unwrap();
            if source.contains('[') && !source.contains(" in [") {
                assert!(!c.is_native(), "{source}");
                continue;
            }
            assert!(c.is_native(), "{source}");
            assert_eq!(case.native(&c), want, "{source}");
            match want {
                Some(b) => assert_eq!(case.cel(&c), Ok(b), "{source}"),
                None => assert!(case.cel(&c).is_err(), "{source}"),
            }
        }
    }

    #[test]
    fn other_shapes_are_left_to_the_interpreter() {
        for source in [
            "claims.n > 1",
            "claims.scope.exists(s, s == 'a')",
            "claims.sub.startsWith('a')",
            "size(claims.scope) == 1",
            "context.tenant == 'acme'",
            "data.x == 1",
            "claims.sub == b'a'",
            "claims.scope == ['a']",
            "claims['sub'] == 'a'",
            "resource.path == '/' ? true : false",
        ] {
            assert!(!Condition::compile(source).unwrap().is_native(), "{source}");
        }
        // The benchmark's conditions are native.
        native(r#"claims.sub == "blocked-1" || resource.params.order == "locked-1""#);
        native(r#""orders:read" in claims.scope && resource.params.tenant == claims.tenant"#);
    }

    fn leaf() -> impl Strategy<Value = Json> {
        prop_oneof![
            Just(json!(null)),
            any::<bool>().prop_map(Json::from),
            prop_oneof![
                Just(-1i64),
                Just(0),
                Just(1),
                Just(i64::MAX),
                Just(9_007_199_254_740_993)
            ]
            .prop_map(Json::from),
            Just(json!(u64::MAX)),
            prop_oneof![
                Just(1.0f64),
                Just(1.5),
                Just(-0.0),
                Just(9_007_199_254_740_992.0)
            ]
            .prop_map(Json::from),
            prop_oneof![Just("x"), Just("1"), Just("a"), Just("")].prop_map(Json::from),
        ]
    }

    fn value() -> impl Strategy<Value = Json> {
        leaf().prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Json::Array),
                proptest::collection::btree_map(
                    prop_oneof![Just("x".to_string()), Just("a".to_string())],
                    inner,
                    0..3
                )
                .prop_map(|m| Json::Object(m.into_iter().collect())),
            ]
        })
    }

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![Just("x"), Just("1"), Just("a")].prop_map(String::from)
    }

    fn strings(keys: &'static [&'static str]) -> impl Strategy<Value = BTreeMap<String, String>> {
        proptest::collection::btree_map(
            proptest::sample::select(keys).prop_map(String::from),
            word(),
            0..3,
        )
    }

    fn case() -> impl Strategy<Value = Case> {
        let claims = proptest::collection::btree_map(
            proptest::sample::select(&["a", "b", "n", "o"][..]).prop_map(String::from),
            value(),
            0..4,
        );
        let params = proptest::collection::vec(
            (
                proptest::sample::select(&["p", "q"][..]).prop_map(String::from),
                word(),
            ),
            0..3,
        );
        (
            claims,
            params,
            strings(&["h", "x"]),
            proptest::option::of(strings(&["z", "x"])),
            proptest::option::of(value()),
            proptest::option::of(word()),
            any::<bool>(),
        )
            .prop_map(
                |(claims, params, headers, attributes, body, destination, grpc)| Case {
                    claims: claims.into_iter().collect(),
                    params,
                    headers,
                    attributes,
                    body,
                    destination,
                    grpc,
                },
            )
    }

    const LITERALS: &[&str] = &[
        r#""x""#,
        r#""1""#,
        r#""a""#,
        "1",
        "-1",
        "0",
        "1u",
        "18446744073709551615u",
        "9007199254740993",
        "1.0",
        "1.5",
        "9007199254740992.0",
        "true",
        "false",
        "null",
    ];

    const PATHS: &[&str] = &[
        "claims",
        "claims.a",
        "claims.b",
        "claims.n",
        "claims.o.x",
        "claims.a.a",
        "resource.params",
        "resource.params.p",
        "resource.params.q",
        "resource.headers",
        "resource.headers.h",
        "resource.attributes.z",
        "resource.attributes",
        "resource.body",
        "resource.body.x",
        "resource.host",
        "resource.grpc",
        "resource.destination",
    ];

    fn operand() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::sample::select(LITERALS),
            proptest::sample::select(PATHS),
        ]
        .prop_map(String::from)
    }

    fn condition() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            (operand(), operand(), any::<bool>())
                .prop_map(|(a, b, eq)| { format!("{a} {} {b}", if eq { "==" } else { "!=" }) }),
            (
                operand(),
                prop_oneof![
                    proptest::collection::vec(proptest::sample::select(LITERALS), 0..3)
                        .prop_map(|l| format!("[{}]", l.join(", "))),
                    proptest::sample::select(PATHS).prop_map(String::from),
                ]
            )
                .prop_map(|(a, b)| format!("{a} in {b}")),
            (
                proptest::sample::select(PATHS),
                proptest::sample::select(&["a", "x", "p", "h", "z"][..])
            )
                .prop_map(|(p, f)| format!("has({p}.{f})")),
            operand(),
        ];
        leaf.prop_recursive(3, 12, 2, |inner| {
            prop_oneof![
                inner.clone().prop_map(|a| format!("!({a})")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) && ({b})")),
                (inner.clone(), inner).prop_map(|(a, b)| format!("({a}) || ({b})")),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// The native form and the interpreter agree on every generated
        /// condition and input: the same boolean, or the native form
        /// declines exactly where the interpreter raises an error.
        #[test]
        fn native_agrees_with_the_interpreter(source in condition(), case in case()) {
            let c = Condition::compile(&source).unwrap();
            prop_assert!(c.is_native(), "{} is not native", source);
            let (native, cel) = (case.native(&c), case.cel(&c));
            match native {
                Some(b) => prop_assert_eq!(cel, Ok(b), "{} over {:?}", source, case),
                None => prop_assert!(cel.is_err(), "{} over {:?}: cel {:?}", source, case, cel),
            }
        }
    }
}
