//! A static bound on what one condition can cost, checked when a policy loads.
//!
//! The `cel` interpreter cannot be stopped once a condition runs (the
//! runtime budget, [`super::budget`], is checked between conditions), so a
//! condition is bounded before it ever runs: its worst case is estimated from its syntax tree and
//! from how large each root can be, and a condition over [`MAX_CONDITION_COST`]
//! is refused (the file does not load; the tenant's old rules keep serving).
//! Together with the syntax checks in [`super::cel`] (at most 512 nodes, no
//! comprehension inside another) no accepted condition can hang a worker.
//!
//! The model counts abstract steps. Every node costs one; a comprehension
//! (`all`, `exists`, `exists_one`, `map`, `filter`) costs its body once per
//! element of its range; an operation that walks a value (`in` on a list, `==`
//! and `+` on lists and strings, string functions, `matches`) costs the size of
//! what it walks. Sizes come from the roots, each bounded by the limits with
//! their defaults:
//!
//! | root | elements | bytes | bounded by |
//! |------|----------|-------|------------|
//! | `resource.body` | 256 | 64 KiB | `MAX_BODY_COLLECTION_LEN`, `max_body_bytes` |
//! | `claims` | 4,096 | 8 KiB | `MAX_CLAIM_ITEMS_CEILING` (the most `limits.max_claim_items` may be), `MAX_CLAIMS_BYTES` (every identity source, see `identity::claims_bound`) |
//! | `data` | 131,072 | 256 KiB | `MAX_DATA_FILE_BYTES` |
//! | other `resource`, `context` | 49,152 | 96 KiB | `max_header_bytes` (the query is in `:path`) |
//!
//! The estimate is deliberately pessimistic: every `&&` and `||` is charged for
//! both sides, every loop for its whole range, and a comprehension's result is
//! as large as its range.
//!
//! One check may evaluate many conditions, so a tenant is bounded as a whole
//! too ([`check_cost`]): the most that the conditions one request can reach
//! may cost together, over `limits.max_check_cost` refused at load. A request
//! has one method and rules are filtered by method before any condition runs,
//! so the sum is taken per method and the largest counts; paths and hosts are
//! not used to narrow it (templates overlap in ways that are not cheap to
//! prove disjoint), so a rule on any path is counted.

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use std::collections::HashMap;

/// The most steps a condition may cost in the worst case. Measured (see
/// `tests/bench/cel_cost.rs` and docs/policy.md#condition-cost), the slowest
/// condition under it evaluates in well under a second on one core.
pub const MAX_CONDITION_COST: u64 = 2_000_000;

// The default per-check bound holds ten conditions at the per-condition bound.
const _: () =
    assert!(crate::foundation::limits::DEFAULT_MAX_CHECK_COST as u64 == 10 * MAX_CONDITION_COST);

/// A tenant whose worst check costs more than this is *heavy*: its evaluation
/// leaves the async workers and only a share of them may run at once (see
/// [`super::heavy`]). Half a condition at [`MAX_CONDITION_COST`], about 20 ms
/// at the slowest measured step cost; the bundled examples are below a third
/// of it (`notes.yaml`, the costliest, at 274,588).
pub const HEAVY_CHECK_COST: u64 = 1_000_000;

/// Bytes a string operation handles per step (they are memchr-fast).
const BYTES_PER_STEP: u64 = 64;
/// The most memory a literal `matches` pattern may compile to. A few bytes of
/// pattern can compile to megabytes (`\\w{100}{100}`), and `matches` compiles
/// it on every call, so each call is charged one step per byte its pattern
/// compiles to (measured: about 4 ms per call at this size).
pub const MAX_REGEX_BYTES: usize = 256 * 1024;

/// The smallest of these compiled-size bounds a pattern fits is what a
/// `matches` call with it is charged.
const REGEX_SIZE_STEPS: [usize; 5] = [1 << 10, 1 << 12, 1 << 14, 1 << 16, MAX_REGEX_BYTES];

/// How large a value can be, in elements and in bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Size {
    items: u64,
    bytes: u64,
}

const BODY: Size = Size {
    items: crate::request::input::MAX_BODY_COLLECTION_LEN as u64,
    bytes: crate::request::input::MAX_BODY_BYTES as u64,
};
const CLAIMS: Size = Size {
    items: crate::foundation::limits::MAX_CLAIM_ITEMS_CEILING as u64,
    bytes: crate::foundation::limits::MAX_CLAIMS_BYTES as u64,
};
const DATA: Size = Size {
    items: (crate::policy::data::MAX_DATA_FILE_BYTES / 2) as u64,
    bytes: crate::policy::data::MAX_DATA_FILE_BYTES as u64,
};
const REQUEST: Size = Size {
    items: (crate::foundation::limits::DEFAULT_MAX_HEADER_BYTES / 2) as u64,
    bytes: crate::foundation::limits::DEFAULT_MAX_HEADER_BYTES as u64,
};

/// The worst-case steps of one expression, and the size of its value.
#[derive(Debug, Clone, Copy)]
struct Est {
    cost: u64,
    size: Size,
}

/// Refuses a condition whose worst case is over [`MAX_CONDITION_COST`];
/// returns the estimate otherwise.
pub fn check(expr: &IdedExpr) -> Result<u64, String> {
    check_patterns(expr)?;
    let cost = estimate(expr, &mut Vec::new()).cost;
    if cost > MAX_CONDITION_COST {
        return Err(format!(
            "condition may cost {cost} steps on the largest input; the limit is {MAX_CONDITION_COST} (iterate over smaller collections, or test membership with a map key instead of a list)"
        ));
    }
    Ok(cost)
}

/// The worst case of one check over `rules`: the conditions of the rules one
/// method can reach, summed, for the method where that is largest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CheckCost {
    pub steps: u64,
    /// The method it is reached with (`None`: any method, or the rules name none).
    pub method: Option<String>,
    /// The ids of the costliest rules in it, costliest first (at most three).
    pub heaviest: Vec<String>,
}

/// [`CheckCost`] of a tenant's rules, each given as (id, methods (empty: any),
/// the cost of its condition).
pub fn check_cost<'a>(
    rules: impl Iterator<Item = (&'a str, &'a [String], u64)> + Clone,
) -> CheckCost {
    // One pass sums the rules each method reaches (a sum per method over every
    // rule was quadratic in a file whose rules name many methods). Rules that
    // name no method are reached with every method; a method a rule names
    // twice counts that rule once.
    let mut any = 0u64;
    let mut per: HashMap<&str, u64> = HashMap::new();
    // Methods in the order first named, so a tie goes to the first, as before.
    let mut order = Vec::new();
    for (_, methods, cost) in rules.clone() {
        #[cfg(test)]
        RULES_VISITED.with(|n| n.set(n.get() + 1));
        if methods.is_empty() {
            any = any.saturating_add(cost);
        }
        for (i, m) in methods.iter().enumerate() {
            if methods[..i].contains(m) {
                continue;
            }
            let sum = per.entry(m.as_str()).or_insert_with(|| {
                order.push(m.as_str());
                0
            });
            *sum = sum.saturating_add(cost);
        }
    }
    let mut worst = (any, None);
    for m in order {
        let steps = any.saturating_add(per[m]);
        if steps > worst.0 {
            worst = (steps, Some(m));
        }
    }
    let (steps, method) = worst;
    let mut reached: Vec<(&str, u64)> = rules
        .filter(|(_, methods, cost)| {
            *cost > 0
                && (methods.is_empty() || method.is_some_and(|m| methods.iter().any(|x| x == m)))
        })
        .map(|(id, _, cost)| (id, cost))
        .collect();
    reached.sort_by_key(|r| std::cmp::Reverse(r.1));
    CheckCost {
        steps,
        method: method.map(str::to_string),
        heaviest: reached
            .iter()
            .take(3)
            .map(|(id, _)| id.to_string())
            .collect(),
    }
}

#[cfg(test)]
thread_local! {
    /// Rules [`check_cost`] walked over, for the test that counts its work.
    static RULES_VISITED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The worst-case estimate of `e`; `scope` holds the comprehension variables
/// in reach and the size of what each can hold.
fn estimate(e: &IdedExpr, scope: &mut Vec<(String, Size)>) -> Est {
    match &e.expr {
        Expr::Unspecified => Est {
            cost: 1,
            size: Size::default(),
        },
        Expr::Literal(lit) => Est {
            cost: 1,
            size: Size {
                items: 0,
                bytes: match lit {
                    LiteralValue::String(s) => s.len() as u64,
                    LiteralValue::Bytes(b) => b.len() as u64,
                    _ => 8,
                },
            },
        },
        Expr::Ident(name) => Est {
            cost: 1,
            size: match scope.iter().rev().find(|(n, _)| n == name) {
                Some((_, size)) => *size,
                None => root_size(name, None),
            },
        },
        Expr::Select(sel) => {
            let operand = estimate(&sel.operand, scope);
            let size = match &sel.operand.expr {
                Expr::Ident(root) if !scope.iter().any(|(n, _)| n == root) => {
                    root_size(root, Some(&sel.field))
                }
                _ => operand.size,
            };
            Est {
                cost: operand.cost.saturating_add(1),
                size,
            }
        }
        Expr::Call(call) => {
            let mut parts: Vec<Est> = Vec::with_capacity(call.args.len() + 1);
            if let Some(target) = &call.target {
                parts.push(estimate(target, scope));
            }
            for arg in &call.args {
                parts.push(estimate(arg, scope));
            }
            let inner = parts.iter().fold(1u64, |sum, p| sum.saturating_add(p.cost));
            let largest = parts.iter().fold(Size::default(), |a, p| Size {
                items: a.items.max(p.size.items),
                bytes: a.bytes.max(p.size.bytes),
            });
            let walk = |s: Size| s.items.saturating_add(s.bytes / BYTES_PER_STEP);
            let (extra, size) = match call.func_name.as_str() {
                // Membership walks a list (a map lookup is cheaper; charged alike).
                "@in" => (parts.last().map_or(0, |p| walk(p.size)), Size::default()),
                // A comparison stops at the end of the shorter side.
                "_==_" | "_!=_" | "_<_" | "_<=_" | "_>_" | "_>=_" => (
                    parts.iter().map(|p| walk(p.size)).min().unwrap_or(0),
                    Size::default(),
                ),
                "_+_" => {
                    let sum = parts.iter().fold(Size::default(), |a, p| Size {
                        items: a.items.saturating_add(p.size.items),
                        bytes: a.bytes.saturating_add(p.size.bytes),
                    });
                    (walk(sum), sum)
                }
                "matches" => {
                    let compile = match call.args.last().map(|a| &a.expr) {
                        Some(Expr::Literal(LiteralValue::String(p))) => compiled_size(p),
                        // Refused by `check_patterns`; charged as the largest.
                        _ => MAX_REGEX_BYTES,
                    };
                    let subject = parts.first().map_or(Size::default(), |p| p.size);
                    (
                        walk(subject).saturating_add(compile as u64),
                        Size::default(),
                    )
                }
                "contains" | "startsWith" | "endsWith" | "string" | "lowerAscii" | "upperAscii"
                | "trim" | "split" | "join" | "replace" => (walk(largest), largest),
                "size" | "has" | "!_" | "_&&_" | "_||_" | "int" | "uint" | "double" | "bool" => {
                    (0, Size::default())
                }
                // `_[_]`, `_?_:_` and the rest: as large as the largest part.
                _ => (0, largest),
            };
            Est {
                cost: inner.saturating_add(extra),
                size,
            }
        }
        Expr::List(list) => {
            let mut est = Est {
                cost: 1,
                size: Size {
                    items: list.elements.len() as u64,
                    bytes: 0,
                },
            };
            for el in &list.elements {
                let e = estimate(el, scope);
                est.cost = est.cost.saturating_add(e.cost);
                est.size.bytes = est.size.bytes.saturating_add(e.size.bytes);
            }
            est
        }
        Expr::Map(map) => entries(&map.entries, scope),
        Expr::Struct(st) => entries(&st.entries, scope),
        Expr::Comprehension(c) => {
            let range = estimate(&c.iter_range, scope);
            let init = estimate(&c.accu_init, scope);
            let n = range.size.items;
            let before = scope.len();
            // An element is at most as large as the whole range; the
            // accumulator (for `map` and `filter`) at most as large as it too.
            scope.push((c.iter_var.clone(), range.size));
            if let Some(v2) = &c.iter_var2 {
                scope.push((v2.clone(), range.size));
            }
            scope.push((c.accu_var.clone(), range.size));
            let step = estimate(&c.loop_cond, scope)
                .cost
                .saturating_add(estimate(&c.loop_step, scope).cost);
            let result = estimate(&c.result, scope);
            scope.truncate(before);
            Est {
                cost: range
                    .cost
                    .saturating_add(init.cost)
                    .saturating_add(n.saturating_mul(step))
                    .saturating_add(result.cost),
                size: range.size,
            }
        }
    }
}

/// `matches` only with a literal pattern that compiles small: a pattern from
/// the request could be made as slow to compile as the regex engine allows.
/// The smallest bound in [`REGEX_SIZE_STEPS`] that `pattern` compiles under.
fn compiled_size(pattern: &str) -> usize {
    REGEX_SIZE_STEPS
        .into_iter()
        .find(|limit| {
            regex::RegexBuilder::new(pattern)
                .size_limit(*limit)
                .build()
                .is_ok()
        })
        .unwrap_or(MAX_REGEX_BYTES)
}

fn check_patterns(e: &IdedExpr) -> Result<(), String> {
    match &e.expr {
        Expr::Call(call) => {
            if call.func_name == "matches" {
                match call.args.last().map(|a| &a.expr) {
                    Some(Expr::Literal(LiteralValue::String(p))) => {
                        regex::RegexBuilder::new(p)
                            .size_limit(MAX_REGEX_BYTES)
                            .build()
                            .map_err(|e| match e {
                                regex::Error::CompiledTooBig(_) => format!(
                                    "matches pattern compiles to more than {MAX_REGEX_BYTES} bytes"
                                ),
                                other => format!(
                                    "matches pattern does not compile: {}",
                                    one_line(&other.to_string())
                                ),
                            })?;
                    }
                    _ => {
                        return Err(
                            "matches needs a literal pattern (a pattern read from the request or data could be made arbitrarily slow to compile)".into(),
                        );
                    }
                }
            }
            call.target
                .iter()
                .map(|t| &**t)
                .chain(&call.args)
                .try_for_each(check_patterns)
        }
        Expr::Select(sel) => check_patterns(&sel.operand),
        Expr::List(list) => list.elements.iter().try_for_each(check_patterns),
        Expr::Map(map) => map.entries.iter().try_for_each(entry_patterns),
        Expr::Struct(st) => st.entries.iter().try_for_each(entry_patterns),
        Expr::Comprehension(c) => [
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ]
        .into_iter()
        .try_for_each(check_patterns),
        Expr::Unspecified | Expr::Literal(_) | Expr::Ident(_) => Ok(()),
    }
}

fn entry_patterns(entry: &cel::common::ast::IdedEntryExpr) -> Result<(), String> {
    match &entry.expr {
        EntryExpr::StructField(f) => check_patterns(&f.value),
        EntryExpr::MapEntry(m) => check_patterns(&m.key).and(check_patterns(&m.value)),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn entries(list: &[cel::common::ast::IdedEntryExpr], scope: &mut Vec<(String, Size)>) -> Est {
    let mut est = Est {
        cost: 1,
        size: Size {
            items: list.len() as u64,
            bytes: 0,
        },
    };
    for entry in list {
        let parts = match &entry.expr {
            EntryExpr::StructField(f) => vec![estimate(&f.value, scope)],
            EntryExpr::MapEntry(m) => vec![estimate(&m.key, scope), estimate(&m.value, scope)],
        };
        for p in parts {
            est.cost = est.cost.saturating_add(p.cost);
            est.size.bytes = est.size.bytes.saturating_add(p.size.bytes);
        }
    }
    est
}

/// How large a root (or one field of it) can be.
fn root_size(root: &str, field: Option<&str>) -> Size {
    match (root, field) {
        ("resource", Some("body")) => BODY,
        ("claims", _) => CLAIMS,
        ("data", _) => DATA,
        _ => REQUEST,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn cost(source: &str) -> Result<u64, String> {
        let program = cel::Program::compile(source).unwrap();
        check(program.expression())
    }

    #[test]
    fn simple_conditions_are_cheap() {
        for c in [
            r#""orders:read" in claims.scope && resource.params.tenant == claims.tenant"#,
            r#"resource.headers["x-justification"].matches("^INC-[0-9]+$")"#,
            r#"claims.roles.exists(r, r == "admin")"#,
        ] {
            let n = cost(c).unwrap();
            assert!(n < 100_000, "{c}: {n}");
        }
    }

    #[test]
    fn quadratic_over_the_body_is_accepted() {
        // 256 × 256 membership tests.
        cost("resource.body.items.all(x, x in resource.body.items)").unwrap();
    }

    #[test]
    fn quadratic_over_large_roots_is_refused() {
        for c in [
            "data.users.all(u, u in data.admins)",
            "claims.groups.all(g, g in claims.other)",
        ] {
            let e = cost(c).unwrap_err();
            assert!(e.contains("the limit is 2000000"), "{c}: {e}");
        }
    }

    #[test]
    fn patterns_must_be_literal_and_compile_small() {
        let e = cost("resource.path.matches(resource.body.p)").unwrap_err();
        assert!(e.contains("literal pattern"), "{e}");
        let e = cost(r#"claims.sub.matches("(\\w{100}){100}")"#).unwrap_err();
        assert!(e.contains("compiles to more than"), "{e}");
        let e = cost(r#"claims.sub.matches("(unclosed")"#).unwrap_err();
        assert!(e.contains("does not compile"), "{e}");
        cost(r#"claims.sub.matches("^[a-z]{1,64}$")"#).unwrap();
        // A heavy pattern once is fine; in a loop over the body it is not.
        cost(r#"claims.sub.matches("^[0-9a-z]{3000}$")"#).unwrap();
        let e = cost(r#"resource.body.a.exists(x, x.matches("^[0-9a-z]{3000}$"))"#).unwrap_err();
        assert!(e.contains("the limit is"), "{e}");
    }

    #[test]
    fn comprehension_in_a_range_is_charged_for_both() {
        let one = cost("resource.body.xs.map(x, x).size() > 0").unwrap();
        let two = cost("resource.body.xs.map(x, x).map(y, y).size() > 0").unwrap();
        assert!(two > one, "{one} {two}");
    }

    #[test]
    fn a_check_costs_the_sum_for_its_costliest_method() {
        let get = vec!["GET".to_string()];
        let post = vec!["POST".to_string()];
        let any: Vec<String> = Vec::new();
        let rules = [
            ("a", get.as_slice(), 10),
            ("b", get.as_slice(), 30),
            ("c", post.as_slice(), 35),
            ("d", any.as_slice(), 5),
            ("e", any.as_slice(), 0),
        ];
        let c = check_cost(rules.iter().copied());
        // GET reaches a, b and d; POST reaches c and d.
        assert_eq!(c.steps, 45);
        assert_eq!(c.method.as_deref(), Some("GET"));
        assert_eq!(c.heaviest, ["b", "a", "d"]);
        // Rules that name no method are summed for every method.
        let c = check_cost([("x", any.as_slice(), 7), ("y", any.as_slice(), 8)].into_iter());
        assert_eq!((c.steps, c.method), (15, None));
        assert_eq!(check_cost(std::iter::empty()).steps, 0);
    }

    /// Ties go to the method named first, a method named twice in one rule
    /// counts the rule once, and sums saturate.
    #[test]
    fn a_check_cost_tie_goes_to_the_first_method_and_repeats_count_once() {
        let m = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (pg, gp, gg) = (m(&["POST", "GET"]), m(&["GET", "PUT"]), m(&["GET", "GET"]));
        let c = check_cost([("a", pg.as_slice(), 4), ("b", gp.as_slice(), 1)].into_iter());
        assert_eq!((c.steps, c.method.as_deref()), (5, Some("GET")));
        let c = check_cost([("a", pg.as_slice(), 4), ("b", pg.as_slice(), 1)].into_iter());
        assert_eq!((c.steps, c.method.as_deref()), (5, Some("POST")));
        let c = check_cost([("a", gg.as_slice(), 4), ("b", pg.as_slice(), 2)].into_iter());
        assert_eq!((c.steps, c.method.as_deref()), (6, Some("GET")));
        let c = check_cost([("a", gg.as_slice(), u64::MAX), ("b", &[], 2)].into_iter());
        assert_eq!((c.steps, c.method.as_deref()), (u64::MAX, Some("GET")));
    }

    /// The cost of a whole check is found in a bounded number of passes over
    /// the rules, however many methods they name: summing over every rule
    /// once per method walked over 2,000 rules 2,001 times here.
    #[test]
    fn a_check_cost_walks_the_rules_a_bounded_number_of_times() {
        let methods: Vec<Vec<String>> = (0..2_000).map(|i| vec![format!("M{i}")]).collect();
        let rules: Vec<(&str, &[String], u64)> =
            methods.iter().map(|m| ("r", m.as_slice(), 1)).collect();
        RULES_VISITED.with(|n| n.set(0));
        let c = check_cost(rules.iter().copied());
        let visited = RULES_VISITED.with(std::cell::Cell::get);
        assert_eq!((c.steps, c.method.as_deref()), (1, Some("M0")));
        assert!(visited <= 2 * rules.len(), "{visited} rule visits");
    }

    #[test]
    fn many_conditions_under_the_bound_add_up_past_the_check_bound() {
        let one = cost(r#"resource.path.matches("^[0-9a-z]{3000}$")"#).unwrap();
        let any: Vec<String> = Vec::new();
        let n = (crate::foundation::limits::DEFAULT_MAX_CHECK_COST as u64 / one) + 1;
        let rules: Vec<(&str, &[String], u64)> =
            (0..n).map(|_| ("r", any.as_slice(), one)).collect();
        let c = check_cost(rules.iter().copied());
        assert!(c.steps > crate::foundation::limits::DEFAULT_MAX_CHECK_COST as u64);
    }
}
