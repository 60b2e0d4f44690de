//! Partial evaluation of a compiled CEL condition: what is left of it once the
//! caller is known but the request is not.
//!
//! `portcullis reach` knows the claims, the auth method, the tenant, the
//! tenant's data document and the method of the route it asks about; it does
//! not know the path parameters, body, headers, query, host, path, peer or
//! time. [`residual`] walks the condition's AST: a sub-expression that reads
//! only known roots is evaluated by CEL's own interpreter (so its value is
//! exactly what a check would compute), and what reads the request is kept
//! and printed back as CEL with the known values put in its place:
//! `resource.params.tenant == claims.tenant` for a caller of tenant `acme`
//! becomes `resource.params.tenant == "acme"`.
//!
//! A condition that errors denies (as an allow rule it grants nothing; as a
//! deny rule it denies), so an error under `&&` and `||` is folded by the
//! side the rule is on ([`Polarity`]); under `!` the side flips. Where the
//! walk cannot reduce a node (a comprehension over unknown input, say), the
//! whole condition is returned unchanged as its residual rather than a guess.
//!
//! Never imports: decision, tenants or anything above them.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use ::cel::Value;
use ::cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue, operators};

use super::cel::{Condition, Prepared};

/// Which outcome of the condition matters: an allow rule grants only when it
/// is true (an error grants nothing), a deny rule applies when it is true or
/// errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polarity {
    Allow,
    Deny,
}

impl Polarity {
    /// What an error counts as on this side.
    fn error_as(self) -> bool {
        self == Polarity::Deny
    }

    fn flip(self) -> Polarity {
        match self {
            Polarity::Allow => Polarity::Deny,
            Polarity::Deny => Polarity::Allow,
        }
    }
}

/// What a condition comes to for a known caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Folded {
    /// Holds on every request (for a deny rule: applies, possibly by erroring).
    Always,
    /// Never holds.
    Never,
    /// Holds when this CEL expression over the request does.
    When(Residual),
}

/// A condition over the request that the caller alone does not decide.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Residual {
    /// The expression, in CEL.
    pub cel: String,
    /// What of the request it reads: `params.<name>`, `body`, `headers`,
    /// `query`, `host`, `path`, `time`, ...
    pub depends_on: Vec<String>,
    /// The condition could not be reduced and is printed as written.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unreduced: bool,
}

/// The fields of `context` a check knows only from the request.
const UNKNOWN_CONTEXT: [&str; 5] = ["time", "source", "peer", "sni", "request_id"];

/// What the walk knows: `claims`, `context` (its known fields), `data` and,
/// when the route's method is one method, `resource.method`.
pub struct Known<'a> {
    pub roots: &'a Prepared,
    pub method_known: bool,
}

/// Partial evaluation of `condition` for a known caller.
pub fn residual(condition: &Condition, known: &Known<'_>, polarity: Polarity) -> Folded {
    let expr = condition.expression();
    let folded = match known.fold(expr, polarity) {
        Ok(p) => p,
        Err(Unreducible) => return unreduced(condition),
    };
    match folded {
        Part::Known(Value::Bool(true)) => Folded::Always,
        Part::Known(Value::Bool(false)) => Folded::Never,
        // A value that is not a boolean is an evaluation error.
        Part::Known(_) | Part::Error => {
            if polarity.error_as() {
                Folded::Always
            } else {
                Folded::Never
            }
        }
        Part::Rest(e) => {
            let mut cel = String::new();
            match print(&e, &mut cel, 0) {
                Ok(()) => {
                    let mut depends_on = BTreeSet::new();
                    dependencies(&e, &mut depends_on);
                    Folded::When(Residual {
                        cel,
                        depends_on: depends_on.into_iter().collect(),
                        unreduced: false,
                    })
                }
                Err(Unreducible) => unreduced(condition),
            }
        }
    }
}

/// The condition as written, when the walk or the printer cannot reduce it.
fn unreduced(condition: &Condition) -> Folded {
    let mut depends_on = BTreeSet::new();
    dependencies(condition.expression(), &mut depends_on);
    Folded::When(Residual {
        cel: condition
            .source()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
        depends_on: depends_on.into_iter().collect(),
        unreduced: true,
    })
}

/// A node the walk or the printer does not handle.
#[derive(Debug)]
struct Unreducible;

/// A sub-expression after folding.
enum Part {
    Known(Value),
    Error,
    Rest(IdedExpr),
}

impl Known<'_> {
    /// Whether `e` reads nothing of the request (only claims, the known context,
    /// data, the method and comprehension variables).
    fn known(&self, e: &IdedExpr) -> bool {
        let known = |e: &IdedExpr| self.known(e);
        match &e.expr {
            Expr::Ident(name) => name != "resource" && name != "context",
            Expr::Select(s) => {
                if let Some(segments) = select_path(e) {
                    match segments.as_slice() {
                        ["resource", field, ..] => return *field == "method" && self.method_known,
                        ["context", field, ..] => return !UNKNOWN_CONTEXT.contains(field),
                        _ => {}
                    }
                }
                known(&s.operand)
            }
            Expr::Call(c) => c.target.as_deref().is_none_or(known) && c.args.iter().all(known),
            Expr::List(l) => l.elements.iter().all(known),
            Expr::Map(m) => m.entries.iter().all(|entry| match &entry.expr {
                EntryExpr::MapEntry(m) => known(&m.key) && known(&m.value),
                EntryExpr::StructField(f) => known(&f.value),
            }),
            Expr::Struct(s) => s.entries.iter().all(|entry| match &entry.expr {
                EntryExpr::MapEntry(m) => known(&m.key) && known(&m.value),
                EntryExpr::StructField(f) => known(&f.value),
            }),
            Expr::Comprehension(c) => {
                known(&c.iter_range)
                    && known(&c.accu_init)
                    && known(&c.loop_cond)
                    && known(&c.loop_step)
                    && known(&c.result)
            }
            Expr::Literal(_) | Expr::Unspecified => true,
        }
    }
}

/// `resource.params.x` as `["resource", "params", "x"]`, presence tests
/// included (`has(resource.params.x)`).
fn select_path(e: &IdedExpr) -> Option<Vec<&str>> {
    let mut segments = Vec::new();
    let mut at = e;
    loop {
        match &at.expr {
            Expr::Ident(name) => {
                segments.push(name.as_str());
                segments.reverse();
                return Some(segments);
            }
            Expr::Select(s) => {
                segments.push(s.field.as_str());
                at = &s.operand;
            }
            _ => return None,
        }
    }
}

impl Known<'_> {
    fn fold(&self, e: &IdedExpr, polarity: Polarity) -> Result<Part, Unreducible> {
        let env = self.roots;
        if self.known(e) {
            return Ok(match env.resolve(e) {
                Ok(v) => Part::Known(v),
                Err(_) => Part::Error,
            });
        }
        let Expr::Call(call) = &e.expr else {
            return self.substitute(e);
        };
        match (call.func_name.as_str(), call.args.as_slice(), &call.target) {
            (operators::LOGICAL_AND | operators::LOGICAL_OR, [a, b], None) => {
                let and = call.func_name == operators::LOGICAL_AND;
                let a = as_bool(self.fold(a, polarity)?, polarity);
                let b = as_bool(self.fold(b, polarity)?, polarity);
                Ok(match (a, b) {
                    // false && x, true || x
                    (Logic::Bool(v), _) | (_, Logic::Bool(v)) if v != and => {
                        Part::Known(Value::Bool(v))
                    }
                    (Logic::Bool(_), Logic::Bool(v)) => Part::Known(Value::Bool(v)),
                    (Logic::Bool(_), Logic::Rest(r)) | (Logic::Rest(r), Logic::Bool(_)) => {
                        Part::Rest(r)
                    }
                    (Logic::Rest(a), Logic::Rest(b)) => {
                        Part::Rest(call_of(&call.func_name, vec![a, b]))
                    }
                })
            }
            (operators::LOGICAL_NOT, [a], None) => Ok(match self.fold(a, polarity.flip())? {
                Part::Known(Value::Bool(v)) => Part::Known(Value::Bool(!v)),
                Part::Known(_) | Part::Error => Part::Error,
                Part::Rest(r) => Part::Rest(call_of(operators::LOGICAL_NOT, vec![r])),
            }),
            (operators::CONDITIONAL, [c, yes, no], None) if self.known(c) => match env.resolve(c) {
                Ok(Value::Bool(true)) => self.fold(yes, polarity),
                Ok(Value::Bool(false)) => self.fold(no, polarity),
                _ => Ok(Part::Error),
            },
            _ => self.substitute(e),
        }
    }
}

/// A boolean operand of `&&` or `||`.
enum Logic {
    Bool(bool),
    Rest(IdedExpr),
}

fn as_bool(p: Part, polarity: Polarity) -> Logic {
    match p {
        Part::Known(Value::Bool(v)) => Logic::Bool(v),
        Part::Known(_) | Part::Error => Logic::Bool(polarity.error_as()),
        Part::Rest(r) => Logic::Rest(r),
    }
}

fn call_of(func: &str, args: Vec<IdedExpr>) -> IdedExpr {
    IdedExpr {
        id: 0,
        expr: Expr::Call(::cel::common::ast::CallExpr {
            func_name: func.to_string(),
            target: None,
            args,
        }),
    }
}

/// Most scalars in a known list written into a residual; a longer one stays
/// as the expression that reads it.
const MAX_INLINED: usize = 16;

impl Known<'_> {
    /// `e` with every known sub-expression replaced by its value; an error in an
    /// operand of a strict node (anything but the logic operators) is the node's.
    fn substitute(&self, e: &IdedExpr) -> Result<Part, Unreducible> {
        if self.known(e) {
            return Ok(match self.roots.resolve(e) {
                Ok(v) => match literal(&v) {
                    Some(lit) => Part::Rest(lit),
                    None => Part::Rest(e.clone()),
                },
                Err(_) => Part::Error,
            });
        }
        let mut out = e.clone();
        match &mut out.expr {
            Expr::Call(c) => {
                // A logic operator inside a strict one: folded without a side.
                if matches!(
                    c.func_name.as_str(),
                    operators::LOGICAL_AND | operators::LOGICAL_OR | operators::LOGICAL_NOT
                ) && c.target.is_none()
                {
                    return Ok(Part::Rest(out));
                }
                if let Some(t) = c.target.as_deref_mut() {
                    match self.substitute(t)? {
                        Part::Rest(r) => *t = r,
                        _ => return Ok(Part::Error),
                    }
                }
                for a in &mut c.args {
                    match self.substitute(a)? {
                        Part::Rest(r) => *a = r,
                        _ => return Ok(Part::Error),
                    }
                }
            }
            Expr::Select(s) => match self.substitute(&s.operand)? {
                Part::Rest(r) => *s.operand = r,
                _ => return Ok(Part::Error),
            },
            Expr::List(l) => {
                for a in &mut l.elements {
                    match self.substitute(a)? {
                        Part::Rest(r) => *a = r,
                        _ => return Ok(Part::Error),
                    }
                }
            }
            Expr::Ident(_) => {}
            _ => return Err(Unreducible),
        }
        Ok(Part::Rest(out))
    }
}

/// A known value as a literal expression, when it is small enough.
fn literal(v: &Value) -> Option<IdedExpr> {
    fn scalars(v: &Value) -> usize {
        match v {
            Value::List(l) => l.iter().map(scalars).sum::<usize>() + 1,
            _ => 1,
        }
    }
    if scalars(v) > MAX_INLINED {
        return None;
    }
    let lit = |l: LiteralValue| Expr::Literal(l);
    let expr = match v {
        Value::Bool(b) => lit(LiteralValue::Boolean((*b).into())),
        Value::Int(i) => lit(LiteralValue::Int((*i).into())),
        Value::UInt(u) => lit(LiteralValue::UInt((*u).into())),
        Value::Float(f) => lit(LiteralValue::Double((*f).into())),
        Value::String(s) => lit(LiteralValue::String(s.to_string().into())),
        Value::Null => lit(LiteralValue::Null),
        Value::List(l) => Expr::List(::cel::common::ast::ListExpr::new(
            l.iter().map(literal).collect::<Option<Vec<_>>>()?,
        )),
        // A map (a data document's table) stays as the expression that
        // reads it: inlined, it would bury the condition.
        _ => return None,
    };
    Some(IdedExpr { id: 0, expr })
}

/// What of the request `e` reads.
fn dependencies(e: &IdedExpr, out: &mut BTreeSet<String>) {
    if let Some(segments) = select_path(e) {
        match segments.as_slice() {
            ["resource", "params", name, ..] => {
                out.insert(format!("params.{name}"));
                return;
            }
            ["resource", "method", ..] => return,
            ["resource", field, ..] => {
                out.insert((*field).to_string());
                return;
            }
            ["context", field, ..] if UNKNOWN_CONTEXT.contains(field) => {
                out.insert((*field).to_string());
                return;
            }
            ["resource"] | ["context"] => {
                out.insert(segments[0].to_string());
                return;
            }
            _ => {}
        }
    }
    match &e.expr {
        Expr::Select(s) => dependencies(&s.operand, out),
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                dependencies(t, out);
            }
            c.args.iter().for_each(|a| dependencies(a, out));
        }
        Expr::List(l) => l.elements.iter().for_each(|a| dependencies(a, out)),
        Expr::Map(m) => m.entries.iter().for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(m) => {
                dependencies(&m.key, out);
                dependencies(&m.value, out);
            }
            EntryExpr::StructField(f) => dependencies(&f.value, out),
        }),
        Expr::Struct(s) => s.entries.iter().for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(m) => dependencies(&m.value, out),
            EntryExpr::StructField(f) => dependencies(&f.value, out),
        }),
        Expr::Comprehension(c) => {
            for part in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                dependencies(part, out);
            }
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

/// How tightly an operator binds: a child that binds less is parenthesised.
fn precedence(e: &IdedExpr) -> u8 {
    let Expr::Call(c) = &e.expr else {
        return 9;
    };
    if c.target.is_some() {
        return 9;
    }
    match c.func_name.as_str() {
        operators::CONDITIONAL => 1,
        operators::LOGICAL_OR => 2,
        operators::LOGICAL_AND => 3,
        operators::EQUALS
        | operators::NOT_EQUALS
        | operators::LESS
        | operators::LESS_EQUALS
        | operators::GREATER
        | operators::GREATER_EQUALS
        | operators::IN => 4,
        operators::ADD | operators::SUBSTRACT => 5,
        operators::MULTIPLY | operators::DIVIDE | operators::MODULO => 6,
        operators::LOGICAL_NOT | operators::NEGATE => 7,
        _ => 9,
    }
}

fn binary_symbol(func: &str) -> Option<&'static str> {
    Some(match func {
        operators::LOGICAL_OR => "||",
        operators::LOGICAL_AND => "&&",
        operators::EQUALS => "==",
        operators::NOT_EQUALS => "!=",
        operators::LESS => "<",
        operators::LESS_EQUALS => "<=",
        operators::GREATER => ">",
        operators::GREATER_EQUALS => ">=",
        operators::IN => "in",
        operators::ADD => "+",
        operators::SUBSTRACT => "-",
        operators::MULTIPLY => "*",
        operators::DIVIDE => "/",
        operators::MODULO => "%",
        _ => return None,
    })
}

/// Writes `e` as CEL source; `min` is the precedence below which it needs
/// parentheses.
fn print(e: &IdedExpr, out: &mut String, min: u8) -> Result<(), Unreducible> {
    let own = precedence(e);
    let paren = own < min;
    if paren {
        out.push('(');
    }
    match &e.expr {
        Expr::Ident(name) => out.push_str(name),
        Expr::Literal(l) => print_literal(l, out),
        Expr::Select(s) => {
            if s.test {
                out.push_str("has(");
            }
            print(&s.operand, out, 9)?;
            out.push('.');
            out.push_str(&s.field);
            if s.test {
                out.push(')');
            }
        }
        Expr::List(l) => {
            out.push('[');
            for (i, a) in l.elements.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                print(a, out, 0)?;
            }
            out.push(']');
        }
        Expr::Map(m) => {
            out.push('{');
            for (i, entry) in m.entries.iter().enumerate() {
                let EntryExpr::MapEntry(m) = &entry.expr else {
                    return Err(Unreducible);
                };
                if i > 0 {
                    out.push_str(", ");
                }
                print(&m.key, out, 0)?;
                out.push_str(": ");
                print(&m.value, out, 0)?;
            }
            out.push('}');
        }
        Expr::Call(c) => match (c.func_name.as_str(), c.target.as_deref(), c.args.as_slice()) {
            (f, None, [a, b]) if binary_symbol(f).is_some() => {
                print(a, out, own)?;
                let _ = write!(out, " {} ", binary_symbol(f).unwrap_or_default());
                print(b, out, own + 1)?;
            }
            (operators::LOGICAL_NOT, None, [a]) => {
                out.push('!');
                print(a, out, own)?;
            }
            (operators::NEGATE, None, [a]) => {
                out.push('-');
                print(a, out, own)?;
            }
            (operators::INDEX, None, [a, i]) => {
                print(a, out, 9)?;
                out.push('[');
                print(i, out, 0)?;
                out.push(']');
            }
            (operators::CONDITIONAL, None, [c, y, n]) => {
                print(c, out, 2)?;
                out.push_str(" ? ");
                print(y, out, 2)?;
                out.push_str(" : ");
                print(n, out, 1)?;
            }
            (f, target, args) if !f.starts_with('_') && !f.starts_with('@') && f != "!_" => {
                if let Some(t) = target {
                    print(t, out, 9)?;
                    out.push('.');
                }
                out.push_str(f);
                out.push('(');
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    print(a, out, 0)?;
                }
                out.push(')');
            }
            _ => return Err(Unreducible),
        },
        Expr::Comprehension(_) | Expr::Struct(_) | Expr::Unspecified => return Err(Unreducible),
    }
    if paren {
        out.push(')');
    }
    Ok(())
}

fn print_literal(l: &LiteralValue, out: &mut String) {
    match l {
        LiteralValue::Boolean(b) => out.push_str(if *b.inner() { "true" } else { "false" }),
        LiteralValue::Int(i) => {
            let _ = write!(out, "{}", i.inner());
        }
        LiteralValue::UInt(u) => {
            let _ = write!(out, "{}u", u.inner());
        }
        LiteralValue::Double(d) => {
            let v = *d.inner();
            if v.fract() == 0.0 && v.is_finite() {
                let _ = write!(out, "{v:.1}");
            } else {
                let _ = write!(out, "{v}");
            }
        }
        LiteralValue::String(s) => {
            // JSON's escapes are CEL's (`\"`, `\\`, `\n`, `\uXXXX`).
            out.push_str(&serde_json::to_string(s.inner()).unwrap_or_default());
        }
        LiteralValue::Bytes(b) => {
            out.push_str("b\"");
            for byte in b.inner().iter() {
                let _ = write!(out, "\\x{byte:02x}");
            }
            out.push('"');
        }
        LiteralValue::Null => out.push_str("null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::cel::{json_to_cel, map, string};
    use serde_json::json;

    fn fold(source: &str, claims: serde_json::Value, polarity: Polarity) -> Folded {
        let c = Condition::compile(source).unwrap();
        let roots = Prepared::new(
            json_to_cel(&claims),
            map([("tenant", string("acme"))]),
            json_to_cel(&json!({ "plans": { "alice": "pro" } })),
            Some(map([("method", string("GET"))])),
        );
        residual(
            &c,
            &Known {
                roots: &roots,
                method_known: true,
            },
            polarity,
        )
    }

    fn when(f: Folded) -> (String, Vec<String>) {
        match f {
            Folded::When(r) => (r.cel, r.depends_on),
            other => panic!("not a residual: {other:?}"),
        }
    }

    #[test]
    fn known_claims_are_substituted_and_known_conjuncts_drop_out() {
        let f = fold(
            r#"has(claims.tenant) && "orders:read" in claims.scope && resource.params.tenant == claims.tenant"#,
            json!({ "tenant": "acme", "scope": ["orders:read"] }),
            Polarity::Allow,
        );
        assert_eq!(
            when(f),
            (
                r#"resource.params.tenant == "acme""#.to_string(),
                vec!["params.tenant".to_string()]
            )
        );
    }

    #[test]
    fn a_false_known_conjunct_folds_the_whole_condition() {
        let f = fold(
            r#""orders:read" in claims.scope && resource.params.tenant == "x""#,
            json!({ "scope": [] }),
            Polarity::Allow,
        );
        assert_eq!(f, Folded::Never);
        let f = fold(
            r#"claims.sub == "alice" || resource.params.x == "y""#,
            json!({ "sub": "alice" }),
            Polarity::Allow,
        );
        assert_eq!(f, Folded::Always);
    }

    #[test]
    fn an_error_grants_nothing_but_a_deny_rule_that_errors_applies() {
        // claims.roles is absent: reading it is an error.
        let src = r#""admin" in claims.roles"#;
        assert_eq!(fold(src, json!({}), Polarity::Allow), Folded::Never);
        assert_eq!(fold(src, json!({}), Polarity::Deny), Folded::Always);
        // Under `!` the side flips: !(error && x) is an error when x holds.
        let src = r#"!("admin" in claims.roles && resource.params.x == "y")"#;
        assert_eq!(
            when(fold(src, json!({}), Polarity::Allow)).0,
            r#"!(resource.params.x == "y")"#
        );
    }

    #[test]
    fn data_method_and_time_are_known_or_named() {
        let f = fold(
            r#"data.plans[claims.sub] == "pro" && resource.method == "GET" && context.time > 5"#,
            json!({ "sub": "alice" }),
            Polarity::Allow,
        );
        assert_eq!(
            when(f),
            ("context.time > 5".to_string(), vec!["time".to_string()])
        );
        let f = fold(
            r#"resource.headers["x-a"] == claims.sub"#,
            json!({ "sub": "alice" }),
            Polarity::Allow,
        );
        assert_eq!(
            when(f),
            (
                r#"resource.headers["x-a"] == "alice""#.to_string(),
                vec!["headers".to_string()]
            )
        );
    }

    #[test]
    fn a_comprehension_over_the_request_is_printed_as_written() {
        let f = fold(
            "resource.body.items.all(i, i.owner == claims.sub)",
            json!({ "sub": "alice" }),
            Polarity::Allow,
        );
        let Folded::When(r) = f else { panic!() };
        assert!(r.unreduced);
        assert_eq!(r.cel, "resource.body.items.all(i, i.owner == claims.sub)");
        assert_eq!(r.depends_on, ["body"]);
        // Over known input it is evaluated.
        let f = fold(
            r#"claims.scope.exists(s, s == "a") && resource.params.x == "y""#,
            json!({ "scope": ["a"] }),
            Polarity::Allow,
        );
        assert_eq!(when(f).0, r#"resource.params.x == "y""#);
    }
}
