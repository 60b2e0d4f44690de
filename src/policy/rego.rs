//! Rego policies, run by `regorus`: a tenant's modules and `data` compiled
//! once ([`RegoPolicy::compile`]), then one query per check
//! ([`RegoPolicy::evaluate`]) over the OPA-Envoy input document
//! ([`super::rego_input`]), its result read as OPA-Envoy reads it
//! ([`super::rego_result`]).
//!
//! Bounds: at most [`MAX_REGO_MODULES`] modules of at most
//! [`MAX_REGO_MODULE_BYTES`] each; every evaluation runs under regorus'
//! execution timer, [`MAX_EVALUATION_TIME`] or the caller's deadline if that
//! is sooner, so a policy that loops or builds ever larger values is cut off
//! and denies (`policy_error`). Recursion is refused by regorus itself.
//!
//! `http.send` is never compiled in (regorus' `http` feature is off): a
//! module that names it, or another builtin portcullis leaves out, does not
//! load. `io.jwt.*` come from [`super::rego_jwt`], backed by portcullis' own
//! validator.
//!
//! Never imports: decision, tenants or anything above them.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use regorus::Engine;
use regorus::utils::limits::ExecutionTimerConfig;
use serde_json::Value as Json;

pub use crate::foundation::limits::MAX_EVALUATION_TIME;

/// Most Rego modules one policy may load.
pub const MAX_REGO_MODULES: usize = 64;
/// Largest Rego module, in bytes.
pub const MAX_REGO_MODULE_BYTES: usize = 256 * 1024;
/// OPA-Envoy's default decision path, `envoy/authz/allow`.
pub const DEFAULT_QUERY: &str = "data.envoy.authz.allow";
/// Interpreter steps between two readings of the clock.
const TIMER_CHECK_EVERY: u32 = 32;

/// Builtins a policy may not call: a decision never reaches the network or
/// the host (`http.send`, DNS, the process' environment).
pub const FORBIDDEN_BUILTINS: [&str; 3] = ["http.send", "net.lookup_ip_addr", "opa.runtime"];

/// One module's load error: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

/// A tenant's compiled Rego: an engine with the modules, `data` and the
/// `io.jwt` extensions, prepared once and cloned for each check.
#[derive(Debug)]
pub struct RegoPolicy {
    engine: Engine,
    /// The rule the decision comes from, `data.<package>.<rule>`.
    pub query: String,
    /// regorus' `eval_rule` takes complete rules only; a rule built from
    /// partial definitions (`result["allowed"] := …`) is evaluated as a query.
    as_query: bool,
    /// Some module names an `io.jwt.*` builtin (a plain scan of the text, so
    /// a comment counts too): only then does a check need the revocation
    /// lists the builtins check tokens against.
    pub verifies_tokens: bool,
}

impl From<LoadError> for crate::foundation::document::PolicyError {
    fn from(e: LoadError) -> Self {
        crate::foundation::document::PolicyError {
            file: e.file,
            line: e.line,
            message: e.message,
        }
    }
}

/// Why an evaluation gave no result to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError(pub String);

impl RegoPolicy {
    /// Compiles `modules` (file, text) with `data` for `query`. Every error
    /// names the module's file and, where regorus says, its line.
    pub fn compile(
        modules: &[(PathBuf, String)],
        data: Option<Json>,
        query: &str,
    ) -> Result<RegoPolicy, Vec<LoadError>> {
        let whole = |message: String| LoadError {
            file: modules.first().map(|(f, _)| f.clone()).unwrap_or_default(),
            line: None,
            message,
        };
        if modules.is_empty() {
            return Err(vec![whole("policy.rego.files names no module".into())]);
        }
        if modules.len() > MAX_REGO_MODULES {
            return Err(vec![whole(format!(
                "policy.rego.files names {} modules, more than {MAX_REGO_MODULES}",
                modules.len()
            ))]);
        }
        if !valid_query(query) {
            return Err(vec![whole(format!(
                "policy.rego.query {query:?} must be a rule path such as {DEFAULT_QUERY}"
            ))]);
        }
        let mut engine = Engine::new();
        // OPA-Envoy's policies are in both dialects; `if`/`contains` decide.
        engine.set_rego_v0(false);
        // As OPA (without `--strict-builtin-errors`), and so OPA-Envoy: a
        // builtin that fails (`to_number("abc")`) makes its expression
        // undefined instead of failing the whole decision, so another rule
        // can still decide. regorus still raises its limit errors (the timer)
        // in this mode, so a `not` over a cut-off call never turns true.
        engine.set_strict_builtin_errors(false);
        let mut errors = Vec::new();
        for (file, text) in modules {
            let err = |line, message| LoadError {
                file: file.clone(),
                line,
                message,
            };
            if text.len() > MAX_REGO_MODULE_BYTES {
                errors.push(err(
                    None,
                    format!("module is larger than {MAX_REGO_MODULE_BYTES} bytes"),
                ));
                continue;
            }
            if let Some((line, name)) = forbidden_call(text) {
                errors.push(err(
                    Some(line),
                    format!("builtin `{name}` is not available on portcullis (a decision makes no network or host calls; see docs/rego.md)"),
                ));
                continue;
            }
            if let Err(e) = add_module(&mut engine, file, text) {
                errors.push(e);
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        if let Some(data) = data
            && let Err(e) = engine.add_data(regorus::Value::from(data))
        {
            return Err(vec![whole(format!("data: {e}"))]);
        }
        if let Err(e) = super::rego_jwt::register(&mut engine) {
            return Err(vec![whole(format!("internal: {e}"))]);
        }
        // Prepares the engine (analysis, scheduling) once, here: every clone
        // starts from the prepared state. Errors the analysis finds name a
        // module. Under the timer: a policy that loops runs here too.
        engine.set_execution_timer_config(timer(MAX_EVALUATION_TIME));
        engine.set_input(regorus::Value::new_object());
        let mut as_query = false;
        let mut warm = engine.eval_rule(query.to_string()).map(|_| ());
        if warm
            .as_ref()
            .is_err_and(|e| e.to_string().contains("not a valid rule path"))
        {
            as_query = true;
            warm = engine.eval_query(query.to_string(), false).map(|_| ());
        }
        if let Err(e) = warm {
            let (file, line, message) = located(&e.to_string());
            let file = file
                .map(PathBuf::from)
                .or_else(|| modules.first().map(|(f, _)| f.clone()))
                .unwrap_or_default();
            // A rule that fails only on this empty input is the policy's own
            // business at run time; an unknown rule or function is not.
            if message.contains("could not find") || message.contains("recursion") {
                return Err(vec![LoadError {
                    file,
                    line,
                    message,
                }]);
            }
        }
        Ok(RegoPolicy {
            engine,
            query: query.to_string(),
            as_query,
            verifies_tokens: modules.iter().any(|(_, text)| text.contains("io.jwt.")),
        })
    }

    /// Evaluates the query over `input` ([`super::rego_input::value`]),
    /// within [`MAX_EVALUATION_TIME`] and `deadline`. `Ok(None)` is an
    /// undefined result.
    pub fn evaluate(
        &self,
        input: regorus::Value,
        deadline: Option<Instant>,
    ) -> Result<Option<Json>, EvalError> {
        let limit = deadline.map_or(MAX_EVALUATION_TIME, |d| {
            d.saturating_duration_since(Instant::now())
                .min(MAX_EVALUATION_TIME)
        });
        if limit.is_zero() {
            return Err(EvalError(
                "the caller's deadline passed before evaluation".into(),
            ));
        }
        // A clone of the prepared engine per check, not one kept per thread:
        // regorus resets most of an evaluation's state when the next starts,
        // but not the loop values an error leaves behind as it unwinds (and
        // some errors are swallowed, in non-strict mode, with the evaluation
        // still answering). Kept engines saved under 4% of a check
        // (BENCHMARKS.md, engines), not worth that doubt.
        let mut engine = self.engine.clone();
        engine.set_execution_timer_config(timer(limit));
        engine.set_input(input);
        let failed = |e: anyhow::Error| EvalError(located(&e.to_string()).2);
        let value = if self.as_query {
            let results = engine
                .eval_query(self.query.clone(), false)
                .map_err(failed)?;
            results
                .result
                .into_iter()
                .next()
                .and_then(|r| r.expressions.into_iter().next())
                .map_or(regorus::Value::Undefined, |e| e.value)
        } else {
            engine.eval_rule(self.query.clone()).map_err(failed)?
        };
        if value == regorus::Value::Undefined {
            return Ok(None);
        }
        serde_json::to_value(&value)
            .map(Some)
            .map_err(|e| EvalError(format!("result is not JSON: {e}")))
    }
}

/// regorus' timer for an evaluation of at most `limit` (1 ms at least).
fn timer(limit: Duration) -> ExecutionTimerConfig {
    ExecutionTimerConfig {
        limit: limit.max(Duration::from_millis(1)),
        check_interval: NonZeroU32::new(TIMER_CHECK_EVERY).unwrap_or(NonZeroU32::MIN),
    }
}

/// Adds one module, its error located.
fn add_module(engine: &mut Engine, file: &std::path::Path, text: &str) -> Result<(), LoadError> {
    engine
        .add_policy(file.display().to_string(), text.to_string())
        .map(|_| ())
        .map_err(|e| {
            let (_, line, message) = located(&e.to_string());
            LoadError {
                file: file.to_path_buf(),
                line,
                message,
            }
        })
}

/// `data.a.b` with identifier segments.
fn valid_query(query: &str) -> bool {
    let mut parts = query.split('.');
    parts.next() == Some("data")
        && query.len() <= 256
        && parts.clone().count() >= 1
        && parts.all(|p| {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !p.as_bytes()[0].is_ascii_digit()
        })
}

/// regorus' messages read `\n--> file:line:col\n … \nerror: cause`: the file,
/// line and cause (the source excerpt dropped).
pub fn located(message: &str) -> (Option<String>, Option<usize>, String) {
    let location = message
        .lines()
        .find_map(|l| l.trim().strip_prefix("--> "))
        .and_then(|at| {
            let mut parts = at.rsplitn(3, ':');
            let _col = parts.next()?;
            let line = parts.next()?.parse::<usize>().ok()?;
            Some((parts.next()?.to_string(), line))
        });
    let cause = message
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(message)
        .trim();
    let cause = cause.strip_prefix("error: ").unwrap_or(cause).to_string();
    match location {
        Some((file, line)) => (Some(file), Some(line), cause),
        None => (None, None, cause),
    }
}

/// The first call of a [`FORBIDDEN_BUILTINS`] name outside comments and
/// strings, with its line.
pub fn forbidden_call(text: &str) -> Option<(usize, &'static str)> {
    for (n, line) in text.lines().enumerate() {
        let code = code_of(line);
        for name in FORBIDDEN_BUILTINS {
            let mut from = 0;
            while let Some(at) = code[from..].find(name) {
                let start = from + at;
                let end = start + name.len();
                let before_ok = code[..start]
                    .chars()
                    .next_back()
                    .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '.'));
                let after = code[end..].trim_start();
                if before_ok && after.starts_with('(') {
                    return Some((n + 1, name));
                }
                from = end;
            }
        }
    }
    None
}

/// A line without its `#` comment and with string contents blanked.
fn code_of(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in line.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' && q == '"' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                    out.push(c);
                    continue;
                }
                out.push(' ');
            }
            None if c == '#' => break,
            None => {
                if c == '"' || c == '`' {
                    quote = Some(c);
                }
                out.push(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn input(json: Json) -> regorus::Value {
        regorus::Value::from(json)
    }

    fn one(text: &str) -> Vec<(PathBuf, String)> {
        vec![(PathBuf::from("authz.rego"), text.to_string())]
    }

    #[test]
    fn the_query_decides_over_the_input() {
        let p = RegoPolicy::compile(
            &one("package envoy.authz\ndefault allow := false\nallow if input.attributes.request.http.method == \"GET\"\n"),
            None,
            DEFAULT_QUERY,
        )
        .unwrap();
        let get = json!({"attributes": {"request": {"http": {"method": "GET"}}}});
        let post = json!({"attributes": {"request": {"http": {"method": "POST"}}}});
        assert_eq!(p.evaluate(input(get), None).unwrap(), Some(json!(true)));
        assert_eq!(p.evaluate(input(post), None).unwrap(), Some(json!(false)));
    }

    #[test]
    fn a_rule_of_partial_definitions_is_the_decision_too() {
        let p = RegoPolicy::compile(
            &one("package envoy.authz\nresult[\"allowed\"] := input.ok\nresult[\"headers\"] := {\"x-a\": \"1\"}\n"),
            None,
            "data.envoy.authz.result",
        )
        .unwrap();
        let got = p.evaluate(input(json!({"ok": true})), None).unwrap();
        assert_eq!(got, Some(json!({"allowed": true, "headers": {"x-a": "1"}})));
        assert_eq!(
            p.evaluate(input(json!({})), None).unwrap(),
            Some(json!({"headers": {"x-a": "1"}}))
        );
    }

    #[test]
    fn a_failing_builtin_is_undefined_as_on_opa() {
        // OPA-Envoy allows the second request: `to_number("abc")` is
        // undefined there, not an error of the decision.
        let p = RegoPolicy::compile(
            &one("package envoy.authz\ndefault allow := false\nallow if to_number(input.id) <= 100\nallow if input.admin\n"),
            None,
            DEFAULT_QUERY,
        )
        .unwrap();
        assert_eq!(
            p.evaluate(input(json!({"id": "42"})), None).unwrap(),
            Some(json!(true))
        );
        assert_eq!(
            p.evaluate(input(json!({"id": "abc", "admin": true})), None)
                .unwrap(),
            Some(json!(true))
        );
        assert_eq!(
            p.evaluate(input(json!({"id": "abc"})), None).unwrap(),
            Some(json!(false))
        );
    }

    /// Nothing of one check reaches the next on the same thread: not its
    /// input, not a rule's value, not a cut-off evaluation's timer, not
    /// another policy's modules (a reload's old and new policy alternating).
    /// Guards any engine kept between checks instead of one cloned per check.
    #[test]
    fn one_check_leaves_nothing_to_the_next() {
        let old = RegoPolicy::compile(
            &one("package envoy.authz\nresult[\"allowed\"] := input.ok\nresult[\"headers\"] := {\"x-n\": input.n}\nspin if {\n  input.spin\n  r := numbers.range(1, 100000)\n  some a in r\n  some b in r\n  a * b < 0\n}\nresult[\"spun\"] := spin\n"),
            None,
            "data.envoy.authz.result",
        )
        .unwrap();
        let new = RegoPolicy::compile(
            &one("package envoy.authz\nresult[\"allowed\"] := false if input.ok\nresult[\"allowed\"] := true if not input.ok\n"),
            None,
            "data.envoy.authz.result",
        )
        .unwrap();
        let eval = |p: &RegoPolicy, v: Json| p.evaluate(input(v), None).unwrap();
        for _ in 0..2 {
            assert_eq!(
                eval(&old, json!({"ok": true, "n": "1"})),
                Some(json!({"allowed": true, "headers": {"x-n": "1"}}))
            );
            assert_eq!(
                eval(&new, json!({"ok": true, "n": "1"})),
                Some(json!({"allowed": false}))
            );
            assert_eq!(
                eval(&old, json!({"ok": false})),
                Some(json!({"allowed": false}))
            );
            let deadline = Some(Instant::now() + Duration::from_millis(20));
            let cut = old.evaluate(input(json!({"ok": true, "n": "2", "spin": true})), deadline);
            assert!(cut.is_err(), "{cut:?}");
            assert_eq!(
                eval(&old, json!({"ok": true, "n": "3"})),
                Some(json!({"allowed": true, "headers": {"x-n": "3"}}))
            );
            assert_eq!(eval(&new, json!({})), Some(json!({"allowed": true})));
        }
    }

    #[test]
    fn a_syntax_error_names_file_and_line() {
        let e = RegoPolicy::compile(
            &one("package envoy.authz\n\nallow if {\n  input.x ==\n"),
            None,
            DEFAULT_QUERY,
        )
        .unwrap_err();
        assert_eq!(e[0].file, PathBuf::from("authz.rego"));
        assert!(e[0].line.is_some_and(|l| l >= 4), "{e:?}");
        assert!(!e[0].message.contains("-->"), "{e:?}");
    }

    #[test]
    fn http_send_does_not_load() {
        let e = RegoPolicy::compile(
            // Not reached on an empty input: only the scan finds it.
            &one("package envoy.authz\n# http.send(x) in a comment is fine\nallow if {\n  input.x == 1\n  r := http.send({\"method\": \"get\", \"url\": \"http://x\"})\n  r.status_code == 200\n}\n"),
            None,
            DEFAULT_QUERY,
        )
        .unwrap_err();
        assert_eq!(e[0].line, Some(5), "{e:?}");
        assert!(e[0].message.contains("http.send"), "{e:?}");
    }

    #[test]
    fn an_unknown_builtin_does_not_load() {
        let e = RegoPolicy::compile(
            &one("package envoy.authz\nallow if no.such_builtin(input.x)\n"),
            None,
            DEFAULT_QUERY,
        )
        .unwrap_err();
        assert!(e[0].message.contains("no.such_builtin"), "{e:?}");
    }

    #[test]
    fn a_policy_that_runs_without_end_is_cut_off() {
        // 10^10 iterations over small ranges: only the timer ends it.
        let p = RegoPolicy::compile(
            &one("package envoy.authz\nallow if {\n  r := numbers.range(1, 100000)\n  some a in r\n  some b in r\n  a * b < 0\n}\n"),
            None,
            DEFAULT_QUERY,
        )
        .unwrap();
        let deadline = Some(Instant::now() + Duration::from_millis(50));
        let e = p.evaluate(input(json!({})), deadline).unwrap_err();
        assert!(e.0.contains("time") || e.0.contains("limit"), "{e:?}");
    }
}
