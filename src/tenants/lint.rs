//! Over-grant findings on one policy file (`portcullis lint`, `validate
//! --strict`): rules that grant more than they look like they do.
//!
//! - `any-caller`: a non-public allow rule without scopes or acr whose
//!   condition (if any) reads nothing of the caller: any identified caller of
//!   any trusted issuer reaches it. A deny rule on the same route whose
//!   condition reads the caller counts as its guard.
//! - `superset-scopes`: an allow rule whose scopes strictly include another
//!   allow rule's on the same route and a shared method. The route is then
//!   reached with the smaller set (through the other rule, when its condition
//!   holds), so the extra scopes guard nothing there; usually the broader rule
//!   is the mistake.
//! - `wildcard-write`: an allow rule on a catch-all route (`{rest...}`) for a
//!   write method (POST, PUT, PATCH, DELETE, or any method).
//! - `unbounded-lifetime`: an `identity.jwt` issuer without `max_lifetime`:
//!   a token lives as long as its `exp` says.
//!
//! A rule silences a kind with `lint: { allow: [kind], reason: "..." }`; the
//! reason is required and printed. Issuer findings have no silence.
//!
//! Never imports: pipeline or anything above it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::file::{PolicyFile, RuleSpec};
use super::lines::LineIndex;
use crate::policy::{Condition, Effect, Mode};

/// The finding kinds.
pub const KINDS: [&str; 4] = [
    "any-caller",
    "superset-scopes",
    "wildcard-write",
    "unbounded-lifetime",
];

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub kind: &'static str,
    pub rule: Option<String>,
    pub message: String,
    /// Set when the rule silences the kind: the stated reason.
    pub silenced: Option<String>,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        write!(f, ": {}: ", self.kind)?;
        if let Some(r) = &self.rule {
            write!(f, "rule {r}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(why) = &self.silenced {
            write!(f, " (silenced: {why})")?;
        }
        Ok(())
    }
}

const WRITES: [&str; 4] = ["POST", "PUT", "PATCH", "DELETE"];

fn deciding_allow(r: &RuleSpec) -> bool {
    r.effect == Effect::Allow && r.mode == Mode::Enforce
}

/// Whether the condition reads anything of the caller.
fn reads_caller(when: &str) -> bool {
    match Condition::compile(when) {
        Ok(c) => {
            let ctx = &c.reads().context;
            c.claims().next().is_some()
                || c.source().contains("claims")
                || ["auth", "peer", "key_thumbprint", "sender_constraint"]
                    .iter()
                    .any(|f| ctx.wants(f))
        }
        // Not this module's to report: the compile does.
        Err(_) => true,
    }
}

fn methods_meet(a: &RuleSpec, b: &RuleSpec) -> bool {
    a.methods.is_empty() || b.methods.is_empty() || a.methods.iter().any(|m| b.methods.contains(m))
}

/// The findings of one policy file that compiles (see [`super::compile()`]);
/// a file that does not parse has none.
pub fn lint(file: &Path, text: &str) -> Vec<Finding> {
    let Ok(spec) = serde_yaml::from_str::<PolicyFile>(text) else {
        return Vec::new();
    };
    let lines = LineIndex::new(text);
    let mut out = Vec::new();
    let mut add =
        |rule: Option<&RuleSpec>, line: Option<usize>, kind: &'static str, message: String| {
            let silenced = rule
                .and_then(|r| r.lint.as_ref())
                .and_then(|s| s.allow.iter().any(|k| k == kind).then(|| s.reason.clone()));
            out.push(Finding {
                file: file.to_path_buf(),
                line,
                kind,
                rule: rule.map(|r| r.id.clone()),
                message,
                silenced,
            });
        };
    for r in &spec.rules {
        let line = lines.id_line(&r.id);
        if let Some(s) = &r.lint {
            if s.reason.trim().is_empty() {
                add(
                    Some(r),
                    line,
                    "silence-without-reason",
                    "a lint silence needs a reason".into(),
                );
            }
            for k in &s.allow {
                if !KINDS.contains(&k.as_str()) {
                    add(
                        Some(r),
                        line,
                        "unknown-kind",
                        format!("lint.allow names {k:?}; the kinds are {}", KINDS.join(", ")),
                    );
                }
            }
        }
        if !deciding_allow(r) {
            continue;
        }
        // A deny rule on the same route that reads the caller guards it.
        let guarded = spec.rules.iter().any(|d| {
            d.effect == Effect::Deny
                && d.mode == Mode::Enforce
                && d.path == r.path
                && methods_meet(r, d)
                && d.when.as_deref().is_some_and(reads_caller)
        });
        if !r.public
            && !guarded
            && r.scopes.is_empty()
            && r.acr.is_empty()
            && r.when.as_deref().is_none_or(|w| !reads_caller(w))
        {
            add(
                Some(r),
                line,
                "any-caller",
                format!(
                    "any identified caller of any issuer the tenant trusts reaches {} (no scopes, no acr, and no condition on the caller)",
                    r.path
                ),
            );
        }
        if r.path.contains("...}")
            && (r.methods.is_empty() || r.methods.iter().any(|m| WRITES.contains(&m.as_str())))
        {
            let methods = if r.methods.is_empty() {
                "any method".to_string()
            } else {
                r.methods.join(", ")
            };
            add(
                Some(r),
                line,
                "wildcard-write",
                format!(
                    "allows {methods} on the catch-all route {}: every path below it, present and future",
                    r.path
                ),
            );
        }
        let mine: BTreeSet<&str> = r.scopes.iter().map(String::as_str).collect();
        for other in spec
            .rules
            .iter()
            .filter(|o| deciding_allow(o) && o.id != r.id)
        {
            let theirs: BTreeSet<&str> = other.scopes.iter().map(String::as_str).collect();
            if other.path == r.path
                && methods_meet(r, other)
                && mine.is_superset(&theirs)
                && mine.len() > theirs.len()
            {
                let extra: Vec<&str> = mine.difference(&theirs).copied().collect();
                add(
                    Some(r),
                    line,
                    "superset-scopes",
                    format!(
                        "its scopes strictly include rule {}'s on {}: that rule admits callers without {} (when its condition holds), so they guard nothing on this route",
                        other.id,
                        r.path,
                        extra.join(" ")
                    ),
                );
            }
        }
    }
    for issuer in &spec.identity.jwt {
        if issuer.max_lifetime.is_none() {
            add(
                None,
                lines
                    .value_line("issuer", &issuer.issuer)
                    .or_else(|| lines.value_line("- issuer", &issuer.issuer)),
                "unbounded-lifetime",
                format!(
                    "issuer {} has no max_lifetime: a token is accepted for as long as its own exp says",
                    issuer.issuer
                ),
            );
        }
    }
    out
}
