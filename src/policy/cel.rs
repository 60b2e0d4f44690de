//! Rule conditions in CEL: compiled once per policy load, evaluated per request.
//!
//! CEL has no runtime cost limit, so the cost is bounded at compile time: a
//! condition has a maximum length and node count, and comprehensions (`all`,
//! `exists`, `map`, `filter`) may not nest, so evaluation is at most linear in the
//! size of the input lists. A condition must name only the roots rules can see.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::{Context, Env, Program, Value};
use serde_json::Value as Json;

/// Longest condition source accepted.
pub const MAX_CONDITION_BYTES: usize = 4 * 1024;
/// Most AST nodes in one condition.
pub const MAX_CONDITION_NODES: usize = 512;

/// The variables a condition can read.
pub const ROOTS: [&str; 4] = ["claims", "resource", "context", "data"];

/// CEL's type identifiers, the values `type(x)` is compared with
/// (`type(resource.body) == map`). They are names the language defines, not
/// variables, so the static check lets them through beside [`ROOTS`].
pub const TYPE_NAMES: [&str; 10] = [
    "bool",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
];

/// The fields of `resource` a condition can read (see `docs/policy.md`).
pub const RESOURCE_FIELDS: [&str; 13] = [
    "host",
    "method",
    "path",
    "query",
    "headers",
    "body",
    "context_extensions",
    "grpc",
    "scheme",
    "protocol",
    "destination",
    "params",
    "attributes",
];

/// The fields of `context` a condition can read.
pub const CONTEXT_FIELDS: [&str; 9] = [
    "time",
    "source",
    "peer",
    "sni",
    "request_id",
    "tenant",
    "sender_constraint",
    "key_thumbprint",
    "auth",
];

/// The closest of `known` to a misspelt `name`, when one is close enough to be
/// what the author meant.
pub fn suggest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let within = |k: &str| 2.min(k.len() / 2).max(1);
    known
        .into_iter()
        // The distance is at least the difference in length: skip the names
        // that cannot be close enough before computing it.
        .filter(|k| name.chars().count().abs_diff(k.chars().count()) <= within(k))
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, k)| *d <= within(k))
        .min()
        .map(|(_, k)| k)
}

/// Levenshtein distance, with a transposition counting as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

fn unknown_field(root: &str, field: &str, known: &[&str]) -> String {
    let hint = suggest(field, known.iter().copied())
        .map(|k| format!(" (did you mean {root}.{k}?)"))
        .unwrap_or_default();
    format!(
        "condition reads {root}.{field}, which {root} does not have{hint}; {root} has {}",
        known.join(", ")
    )
}

/// One standard-library environment shared by every condition.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// A compiled condition.
pub struct Condition {
    source: String,
    program: Program,
    /// The condition reads `resource.body`: a truncated body must deny.
    reads_body: bool,
    /// Which fields of `resource` and `context` it reads.
    reads: Reads,
    /// The claim names it reads as `claims.<name>`.
    claims: std::collections::BTreeSet<String>,
    /// The native form, when the condition has one (see [`super::native`]).
    native: Option<super::native::Node>,
    /// Its worst case in steps ([`super::cost`]), at most
    /// [`super::cost::MAX_CONDITION_COST`].
    cost: u64,
}

/// Compiled conditions by source text, weakly held (see
/// [`Condition::compile_shared`]).
#[derive(Default)]
struct SharedConditions {
    by_source: HashMap<String, Weak<Condition>>,
    /// Dead entries are swept when the map reaches this size, which then
    /// doubles from what is left, so sweeping costs O(1) per insert.
    sweep_at: usize,
}

impl SharedConditions {
    fn get(&self, source: &str) -> Option<Arc<Condition>> {
        self.by_source.get(source).and_then(Weak::upgrade)
    }

    /// Stores `compiled` unless a live entry raced it in; returns the one kept.
    fn insert(&mut self, source: &str, compiled: Arc<Condition>) -> Arc<Condition> {
        if let Some(live) = self.get(source) {
            return live;
        }
        if self.by_source.len() >= self.sweep_at {
            self.by_source.retain(|_, w| w.strong_count() > 0);
            self.sweep_at = (self.by_source.len() * 2).max(1024);
        }
        self.by_source
            .insert(source.to_string(), Arc::downgrade(&compiled));
        compiled
    }
}

/// The fields of a root a condition reads: building only those keeps the cost of
/// a check independent of, say, how many headers the request has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Fields {
    #[default]
    None,
    Some(std::collections::BTreeSet<String>),
    /// The root is used whole (e.g. `resource["path"]`, or passed to a macro).
    All,
}

impl Fields {
    pub fn wants(&self, field: &str) -> bool {
        match self {
            Fields::None => false,
            Fields::Some(set) => set.contains(field),
            Fields::All => true,
        }
    }

    fn add(&mut self, field: &str) {
        match self {
            Fields::All => {}
            Fields::Some(set) => {
                set.insert(field.to_string());
            }
            Fields::None => *self = Fields::Some([field.to_string()].into()),
        }
    }

    pub fn union(&mut self, other: &Fields) {
        match other {
            Fields::None => {}
            Fields::All => *self = Fields::All,
            Fields::Some(set) => set.iter().for_each(|f| self.add(f)),
        }
    }
}

/// What a condition reads of `resource` and `context`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reads {
    pub resource: Fields,
    pub context: Fields,
}

impl Reads {
    pub fn union(&mut self, other: &Reads) {
        self.resource.union(&other.resource);
        self.context.union(&other.context);
    }
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Condition")
            .field("source", &self.source)
            .finish()
    }
}

impl Condition {
    pub fn compile(source: &str) -> Result<Condition, String> {
        if source.len() > MAX_CONDITION_BYTES {
            return Err(format!(
                "condition is {} bytes; the limit is {MAX_CONDITION_BYTES}",
                source.len()
            ));
        }
        let program = ENV
            .compile(source)
            .map_err(|e| format!("condition does not parse: {}", one_line(&e.to_string())))?;
        let mut check = Check::default();
        check.walk(program.expression(), &mut Vec::new(), 0)?;
        let cost = super::cost::check(program.expression())?;
        if check.nodes > MAX_CONDITION_NODES {
            return Err(format!(
                "condition has {} nodes; the limit is {MAX_CONDITION_NODES}",
                check.nodes
            ));
        }
        let native = super::native::compile(program.expression());
        Ok(Condition {
            source: source.to_string(),
            native,
            program,
            // A condition that uses `resource` whole may read the body by index.
            reads_body: check.reads_body || check.reads.resource == Fields::All,
            reads: check.reads,
            claims: check.claims,
            cost,
        })
    }

    /// [`Condition::compile`], shared: an identical source compiled by any
    /// tenant, in this load or an earlier one still serving, is returned as
    /// the same `Arc` instead of being compiled again. Tenants made from one
    /// template then hold one program per distinct condition, not one each.
    /// The cache holds weak references, so a condition no tenant uses any more
    /// is freed; only reloads take its lock, never a check.
    pub fn compile_shared(source: &str) -> Result<Arc<Condition>, String> {
        static CACHE: LazyLock<Mutex<SharedConditions>> = LazyLock::new(Mutex::default);
        if let Some(c) = CACHE.lock().unwrap_or_else(|p| p.into_inner()).get(source) {
            return Ok(c);
        }
        // Compile outside the lock: a slow condition does not hold up others.
        let compiled = Arc::new(Condition::compile(source)?);
        Ok(CACHE
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(source, compiled))
    }

    /// The claim names the condition reads as `claims.<name>`.
    pub fn claims(&self) -> impl Iterator<Item = &str> {
        self.claims.iter().map(String::as_str)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The parsed condition, macros expanded (see [`super::residual`]).
    pub(crate) fn expression(&self) -> &IdedExpr {
        self.program.expression()
    }

    pub fn reads_body(&self) -> bool {
        self.reads_body
    }

    pub fn reads(&self) -> &Reads {
        &self.reads
    }

    /// The worst case of one evaluation, in the steps of [`super::cost`].
    pub fn cost(&self) -> u64 {
        self.cost
    }

    /// Whether checks evaluate the condition natively (see [`super::native`])
    /// rather than in the interpreter.
    pub fn is_native(&self) -> bool {
        self.native.is_some()
    }

    /// The condition's value, natively, where that is exactly CEL's boolean;
    /// `None` when it has no native form, or CEL would raise an error (the
    /// interpreter is then asked, for its own answer and message).
    pub fn evaluate_native(&self, inputs: &super::native::Inputs<'_>) -> Option<bool> {
        self.native.as_ref()?.evaluate(inputs)
    }

    /// Evaluates against whole variables, for tests; checks use
    /// [`Condition::evaluate_prepared`]. Anything but a boolean is an error.
    #[cfg(test)]
    pub fn evaluate(&self, vars: &Variables) -> Result<bool, String> {
        let prepared = Prepared::new(
            vars.claims.clone(),
            vars.context.clone(),
            vars.data.clone(),
            Some(vars.resource.clone()),
        );
        self.evaluate_prepared(&prepared, None)
    }

    /// Evaluates in a request's [`Prepared`] roots; `resource`, when given,
    /// is this rule's own (with its params or attributes) and hides the
    /// shared one.
    pub fn evaluate_prepared(
        &self,
        prepared: &Prepared,
        resource: Option<Value>,
    ) -> Result<bool, String> {
        let result = match resource {
            None => self.program.execute(&prepared.ctx),
            Some(resource) => {
                let mut scope = prepared.ctx.new_inner_scope();
                scope.add_variable_from_value("resource", resource);
                self.program.execute(&scope)
            }
        };
        match result {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!(
                "condition returned {:?}, not a boolean",
                other.type_of()
            )),
            Err(e) => Err(describe(&e, &self.source)),
        }
    }
}

/// The roots, whole, as the tests give them to [`Condition::evaluate`].
#[cfg(test)]
#[derive(Debug, Clone)]
pub struct Variables {
    pub claims: Value,
    pub resource: Value,
    pub context: Value,
    /// The tenant's data document; an empty map when it has none.
    pub data: Value,
}

/// A request's roots in CEL's runtime form, converted once and shared by every
/// condition evaluated for that request: the conversion costs more than most
/// conditions do.
pub struct Prepared {
    ctx: Context<'static, 'static>,
}

impl Prepared {
    /// `resource` is left out when it differs per rule (it then comes with
    /// each evaluation).
    pub fn new(claims: Value, context: Value, data: Value, resource: Option<Value>) -> Prepared {
        let mut ctx = Context::with_env(Arc::clone(&ENV));
        ctx.add_variable_from_value("claims", claims);
        ctx.add_variable_from_value("context", context);
        ctx.add_variable_from_value("data", data);
        if let Some(resource) = resource {
            ctx.add_variable_from_value("resource", resource);
        }
        Prepared { ctx }
    }

    /// Evaluates one sub-expression of a condition in these roots (see
    /// [`super::residual`]).
    pub(crate) fn resolve(&self, expr: &IdedExpr) -> Result<Value, cel::ExecutionError> {
        Value::resolve(expr, &self.ctx)
    }
}

/// Longest name quoted in an evaluation error.
const MAX_NAME_IN_ERROR: usize = 64;

/// An evaluation error in words that never quote a value: CEL's own messages
/// include the operands, which can be a header, a claim or a token. Only names
/// (keys, functions, types) are kept, and those are shortened.
fn describe(e: &cel::ExecutionError, source: &str) -> String {
    use cel::ExecutionError as E;
    let name = |n: &str| -> String {
        let clean: String = n
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(MAX_NAME_IN_ERROR)
            .collect();
        clean
    };
    match e {
        // A key computed from request data (`claims[resource.headers.x]`) could
        // be a secret: quote only keys the condition spells out itself.
        E::NoSuchKey(k) if source.contains(k.as_str()) => format!("no such key {:?}", name(k)),
        E::NoSuchKey(_) => "no such key (computed)".into(),
        E::UndeclaredReference(r) => format!("undeclared reference {:?}", name(r)),
        E::NoSuchOverload(o) => format!(
            "no overload of {} for ({})",
            name(o.function()),
            o.argument_types()
                .iter()
                .map(|t| name(t))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        E::UnexpectedType { got, want } => {
            format!("unexpected type {}, want {}", name(got), name(want))
        }
        E::InvalidArgumentCount { expected, actual } => {
            format!("wrong argument count: expected {expected}, got {actual}")
        }
        E::DivisionByZero(_) | E::RemainderByZero(_) => "division by zero".into(),
        E::Overflow(op, ..) => format!("overflow in {op}"),
        E::IndexOutOfBounds(_) => "index out of bounds".into(),
        E::ValuesNotComparable(..) => "values cannot be compared".into(),
        E::FunctionError { function, .. } => format!("function {} failed", name(function)),
        E::UnsupportedBinaryOperator(op, ..) => {
            format!("operator {op} does not apply to these types")
        }
        E::NotSupportedAsMethod { method, .. } => {
            format!("{} is not a method of this type", name(method))
        }
        E::UnsupportedTargetType { .. } => "unsupported target type".into(),
        E::UnsupportedKeyType(_) | E::UnsupportedIndex(..) => "unsupported map key or index".into(),
        E::DuplicateKey(_) => "duplicate map key".into(),
        _ => "evaluation error".into(),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[derive(Default)]
struct Check {
    nodes: usize,
    reads_body: bool,
    reads: Reads,
    claims: std::collections::BTreeSet<String>,
}

impl Check {
    /// Walks the AST: counts nodes, refuses unknown roots and nested
    /// comprehensions, and notes whether `resource.body` is read.
    fn walk(&mut self, e: &IdedExpr, bound: &mut Vec<String>, depth: usize) -> Result<(), String> {
        self.nodes += 1;
        match &e.expr {
            Expr::Unspecified | Expr::Literal(_) => {}
            Expr::Ident(name) => {
                let shadowed = bound.iter().any(|b| b == name);
                if !shadowed && name == "resource" {
                    self.reads.resource = Fields::All;
                }
                if !shadowed && name == "context" {
                    self.reads.context = Fields::All;
                }
                let known = ROOTS.contains(&name.as_str()) || TYPE_NAMES.contains(&name.as_str());
                if !known && !shadowed {
                    return Err(format!(
                        "condition reads unknown variable {name:?}; conditions see claims, resource, context and data"
                    ));
                }
            }
            Expr::Select(sel) => {
                match &sel.operand.expr {
                    Expr::Ident(root) if !bound.iter().any(|b| b == root) => {
                        // `resource.x` / `context.x`: note the field, not the root.
                        self.nodes += 1;
                        match root.as_str() {
                            "resource" => {
                                if !RESOURCE_FIELDS.contains(&sel.field.as_str()) {
                                    return Err(unknown_field(
                                        "resource",
                                        &sel.field,
                                        &RESOURCE_FIELDS,
                                    ));
                                }
                                self.reads_body |= sel.field == "body";
                                self.reads.resource.add(&sel.field);
                            }
                            "context" => {
                                if !CONTEXT_FIELDS.contains(&sel.field.as_str()) {
                                    return Err(unknown_field(
                                        "context",
                                        &sel.field,
                                        &CONTEXT_FIELDS,
                                    ));
                                }
                                self.reads.context.add(&sel.field)
                            }
                            "claims" => {
                                self.claims.insert(sel.field.clone());
                                self.walk(&sel.operand, bound, depth)?
                            }
                            _ => self.walk(&sel.operand, bound, depth)?,
                        }
                    }
                    _ => self.walk(&sel.operand, bound, depth)?,
                }
            }
            Expr::Call(call) => {
                if let Some(target) = &call.target {
                    self.walk(target, bound, depth)?;
                }
                for arg in &call.args {
                    self.walk(arg, bound, depth)?;
                }
            }
            Expr::List(list) => {
                for el in &list.elements {
                    self.walk(el, bound, depth)?;
                }
            }
            Expr::Map(map) => self.walk_entries(&map.entries, bound, depth)?,
            Expr::Struct(st) => self.walk_entries(&st.entries, bound, depth)?,
            Expr::Comprehension(c) => {
                if depth > 0 {
                    return Err(
                        "condition nests one comprehension (all, exists, map, filter) inside another; nesting is not allowed".into(),
                    );
                }
                self.walk(&c.iter_range, bound, depth)?;
                self.walk(&c.accu_init, bound, depth)?;
                let before = bound.len();
                bound.push(c.iter_var.clone());
                if let Some(v2) = &c.iter_var2 {
                    bound.push(v2.clone());
                }
                bound.push(c.accu_var.clone());
                for part in [&c.loop_cond, &c.loop_step, &c.result] {
                    self.walk(part, bound, depth + 1)?;
                }
                bound.truncate(before);
            }
        }
        Ok(())
    }

    fn walk_entries(
        &mut self,
        entries: &[cel::common::ast::IdedEntryExpr],
        bound: &mut Vec<String>,
        depth: usize,
    ) -> Result<(), String> {
        for entry in entries {
            match &entry.expr {
                EntryExpr::StructField(f) => self.walk(&f.value, bound, depth)?,
                EntryExpr::MapEntry(m) => {
                    self.walk(&m.key, bound, depth)?;
                    self.walk(&m.value, bound, depth)?;
                }
            }
        }
        Ok(())
    }
}

/// JSON → CEL. Integers stay integers; other numbers become doubles.
pub fn json_to_cel(v: &Json) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .or_else(|| n.as_u64().map(Value::UInt))
            .unwrap_or_else(|| Value::Float(n.as_f64().unwrap_or(f64::NAN))),
        Json::String(s) => Value::String(Arc::new(s.clone())),
        Json::Array(a) => Value::List(Arc::new(a.iter().map(json_to_cel).collect())),
        Json::Object(o) => map(o.iter().map(|(k, v)| (k.as_str(), json_to_cel(v)))),
    }
}

/// Builds a CEL map with string keys.
pub fn map<'a>(entries: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    let m: HashMap<String, Value> = entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    Value::from(m)
}

pub fn string(s: &str) -> Value {
    Value::String(Arc::new(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(claims: Json, resource: Json) -> Variables {
        Variables {
            claims: json_to_cel(&claims),
            resource: json_to_cel(&resource),
            context: json_to_cel(&json!({})),
            data: json_to_cel(&json!({})),
        }
    }

    #[test]
    fn identical_sources_share_one_compiled_condition() {
        // A source no other test uses, so the process-wide cache starts cold.
        let src = "claims.shared_probe == resource.params.shared_probe";
        let a = Condition::compile_shared(src).unwrap();
        let b = Condition::compile_shared(src).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let other = Condition::compile_shared("claims.shared_probe != 1").unwrap();
        assert!(!Arc::ptr_eq(&a, &other));
        // Errors are not cached as conditions, and say the same thing each time.
        assert_eq!(
            Condition::compile_shared("claims.a ==").unwrap_err(),
            Condition::compile("claims.a ==").unwrap_err()
        );
        // Once no rule holds it, the entry no longer keeps it alive.
        let weak = Arc::downgrade(&a);
        drop((a, b));
        assert!(weak.upgrade().is_none());
        assert_eq!(Condition::compile_shared(src).unwrap().source(), src);
    }

    #[test]
    fn evaluates_over_the_three_roots() {
        let c = Condition::compile(
            r#""orders:read" in claims.scope && resource.params.tenant == claims.tenant"#,
        )
        .unwrap();
        let v = vars(
            json!({"scope": ["orders:read"], "tenant": "acme"}),
            json!({"params": {"tenant": "acme"}}),
        );
        assert_eq!(c.evaluate(&v), Ok(true));
        let v = vars(
            json!({"scope": ["orders:read"], "tenant": "acme"}),
            json!({"params": {"tenant": "globex"}}),
        );
        assert_eq!(c.evaluate(&v), Ok(false));
    }

    #[test]
    fn missing_field_and_non_boolean_are_errors() {
        let c = Condition::compile("claims.nope == 1").unwrap();
        assert!(c.evaluate(&vars(json!({}), json!({}))).is_err());
        let c = Condition::compile("claims.n").unwrap();
        assert!(c.evaluate(&vars(json!({"n": 1}), json!({}))).is_err());
    }

    #[test]
    fn compile_time_bounds() {
        assert!(
            Condition::compile("unknown.x == 1")
                .unwrap_err()
                .contains("unknown variable")
        );
        assert!(Condition::compile("claims.a.all(x, x > 0)").is_ok());
        assert!(
            Condition::compile("claims.a.all(x, claims.b.exists(y, y == x))")
                .unwrap_err()
                .contains("nest")
        );
        let long = format!("claims.a == \"{}\"", "x".repeat(MAX_CONDITION_BYTES));
        assert!(Condition::compile(&long).unwrap_err().contains("limit"));
        let wide = vec!["claims.a == 1"; 200].join(" || ");
        assert!(Condition::compile(&wide).unwrap_err().contains("nodes"));
        assert!(
            Condition::compile("claims.a ==")
                .unwrap_err()
                .contains("parse")
        );
    }

    #[test]
    fn errors_never_quote_values() {
        let c = Condition::compile("resource.headers.cookie + 1 == 2").unwrap();
        let v = Variables {
            claims: json_to_cel(&json!({})),
            resource: json_to_cel(&json!({"headers": {"cookie": "session=SECRET"}})),
            context: json_to_cel(&json!({})),
            data: json_to_cel(&json!({})),
        };
        let e = c.evaluate(&v).unwrap_err();
        assert!(!e.contains("SECRET"), "{e}");
        assert!(e.contains("add"), "{e}");
        let c = Condition::compile("claims[resource.headers.authorization] == 'x'").unwrap();
        let v = Variables {
            claims: json_to_cel(&json!({})),
            resource: json_to_cel(&json!({"headers": {"authorization": "Bearer SECRET"}})),
            context: json_to_cel(&json!({})),
            data: json_to_cel(&json!({})),
        };
        assert_eq!(c.evaluate(&v).unwrap_err(), "no such key (computed)");
        let c = Condition::compile("claims.scope == 'x'").unwrap();
        assert_eq!(
            c.evaluate(&vars(json!({}), json!({}))).unwrap_err(),
            "no such key \"scope\""
        );
    }

    #[test]
    fn body_reads_are_noticed() {
        assert!(
            Condition::compile("resource['body'] == null")
                .unwrap()
                .reads_body()
        );
        assert!(
            Condition::compile("resource.body.amount < 10")
                .unwrap()
                .reads_body()
        );
        assert!(
            !Condition::compile("resource.path == '/'")
                .unwrap()
                .reads_body()
        );
    }

    #[test]
    fn fields_read_are_collected() {
        let c = Condition::compile("resource.params.a == claims.b && context.auth.method == 'x'")
            .unwrap();
        assert!(c.reads().resource.wants("params"));
        assert!(!c.reads().resource.wants("headers"));
        assert!(c.reads().context.wants("auth"));
        let c = Condition::compile("resource['headers'].size() > 0").unwrap();
        assert_eq!(c.reads().resource, Fields::All);
        assert_eq!(c.reads().context, Fields::None);
        let c = Condition::compile("[resource].all(r, r.path == '/')").unwrap();
        assert_eq!(c.reads().resource, Fields::All);
        assert!(Condition::compile("unknown.x == 1").is_err());
    }

    #[test]
    fn misspelt_fields_are_errors_with_a_suggestion() {
        let e = Condition::compile("resource.parms.id == claims.sub").unwrap_err();
        assert!(
            e.contains("resource.parms") && e.contains("did you mean resource.params?"),
            "{e}"
        );
        let e = Condition::compile("context.auht.method == 'x'").unwrap_err();
        assert!(e.contains("did you mean context.auth?"), "{e}");
        let e = Condition::compile("resource.zzzzzz == 1").unwrap_err();
        assert!(
            e.contains("does not have") && !e.contains("did you mean"),
            "{e}"
        );
        for f in RESOURCE_FIELDS {
            assert!(
                Condition::compile(&format!("resource.{f} == null")).is_ok(),
                "{f}"
            );
        }
        for f in CONTEXT_FIELDS {
            assert!(
                Condition::compile(&format!("context.{f} == null")).is_ok(),
                "{f}"
            );
        }
        // A comprehension variable named like a root is not the root.
        assert!(Condition::compile("claims.l.all(resource, resource.x == 1)").is_ok());
    }

    #[test]
    fn claims_read_are_collected() {
        let c = Condition::compile("has(claims.scope) && claims.org.id == data.orgs[claims.sub]")
            .unwrap();
        assert_eq!(c.claims().collect::<Vec<_>>(), ["org", "scope", "sub"]);
        assert_eq!(suggest("scpoe", ["scope", "sub"]), Some("scope"));
        assert_eq!(suggest("tenant", ["scope", "sub"]), None);
    }

    #[test]
    fn data_is_a_root() {
        let c = Condition::compile("data.owners[resource.params.id] == claims.sub").unwrap();
        let v = Variables {
            claims: json_to_cel(&json!({"sub": "alice"})),
            resource: json_to_cel(&json!({"params": {"id": "n1"}})),
            context: json_to_cel(&json!({})),
            data: json_to_cel(&json!({"owners": {"n1": "alice"}})),
        };
        assert_eq!(c.evaluate(&v), Ok(true));
    }

    #[test]
    fn comprehension_variables_are_bound() {
        let c = Condition::compile("claims.roles.exists(r, r == 'admin')").unwrap();
        assert_eq!(
            c.evaluate(&vars(json!({"roles": ["user", "admin"]}), json!({}))),
            Ok(true)
        );
    }
}
