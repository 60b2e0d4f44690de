//! The golden corpus: one YAML file per behaviour in `tests/golden/`, each with its
//! own policies, tenancy and a list of CheckRequests (protobuf JSON mapping) with
//! the decision each must get from [`Pipeline::check`].
//!
//! Every failing case is reported with its file and case name, and the test fails
//! on any of them. The runner refuses to pass vacuously: it needs at least
//! [`MIN_FILES`] files and [`MIN_CASES`] cases, and unknown keys anywhere in a file
//! (a misspelt `expect` field, say) are errors rather than silently ignored.
//!
//! File format:
//!
//! ```yaml
//! description: what behaviour this file pins down
//! tenancy: { sources: [context_extension, host] }   # optional, TenantResolver
//! expect_load_errors: false                         # optional
//! policies:
//!   acme.yaml: |
//!     apiVersion: portcullis/v1
//!     ...
//! cases:
//!   - name: own tenant is allowed
//!     request: { attributes: { ... } }              # CheckRequest, JSON mapping
//!     expect:
//!       decision: allow          # allow | deny
//!       status: 200
//!       reason: allowed          # Reason::code()
//!       rule: read-own-orders    # optional: the deciding rule
//!       tenant: acme             # optional
//!       set_headers: { x-subject: alice }   # optional: exactly these (minus decision id)
//!       remove_headers: [x-tenant]          # optional: at least these
//!       not_set: [x-admin]                  # optional: none of these set
//!       would_be: { decision: deny, reason: no_matching_rule }  # optional: dry-run tenant
//!       dry_run_rules: { some-rule: deny }  # optional: exactly these dry-run hits
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use portcullis::decision::{Decision, Reason};
use portcullis::pipeline::{DECISION_ID_HEADER, Pipeline};
use portcullis::request::tenancy::TenantResolver;
use portcullis::tenants::store::PolicyStore;
use serde::Deserialize;

/// The corpus must have at least this many files...
const MIN_FILES: usize = 30;
/// ...and at least this many cases in all.
const MIN_CASES: usize = 250;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GoldenFile {
    description: String,
    #[serde(default)]
    tenancy: Option<TenantResolver>,
    /// The case expects some policy file not to load.
    #[serde(default)]
    expect_load_errors: bool,
    /// File name → policy YAML text.
    policies: BTreeMap<String, String>,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    /// A CheckRequest in protobuf's JSON mapping.
    request: serde_json::Value,
    expect: Expect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Verdict {
    Allow,
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    decision: Verdict,
    status: u16,
    reason: String,
    #[serde(default)]
    rule: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    /// Exactly these headers are set (ignoring the decision id).
    #[serde(default)]
    set_headers: Option<BTreeMap<String, String>>,
    /// At least these headers are removed.
    #[serde(default)]
    remove_headers: Vec<String>,
    /// None of these headers are set.
    #[serde(default)]
    not_set: Vec<String>,
    /// A dry-run tenant's would-be decision.
    #[serde(default)]
    would_be: Option<WouldBeExpect>,
    /// Exactly these dry-run rules held (rule → what it would have done).
    #[serde(default)]
    dry_run_rules: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WouldBeExpect {
    decision: Verdict,
    reason: String,
}

/// What running one corpus file found.
#[derive(Debug, Default)]
struct FileReport {
    cases: usize,
    failures: Vec<String>,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn corpus_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("tests/golden must exist")
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

/// Compares one decision with its expectation; returns every difference.
fn compare(expect: &Expect, decision: &Decision) -> Vec<String> {
    let mut diffs = Vec::new();
    let got_verdict = if decision.allowed {
        Verdict::Allow
    } else {
        Verdict::Deny
    };
    if got_verdict != expect.decision {
        diffs.push(format!(
            "decision: expected {:?}, got {:?}",
            expect.decision, got_verdict
        ));
    }
    if decision.status() != expect.status {
        diffs.push(format!(
            "status: expected {}, got {}",
            expect.status,
            decision.status()
        ));
    }
    if decision.reason.code() != expect.reason {
        diffs.push(format!(
            "reason: expected {:?}, got {:?}",
            expect.reason,
            decision.reason.code()
        ));
    }
    if let Some(rule) = &expect.rule
        && decision.rule.as_deref() != Some(rule.as_str())
    {
        diffs.push(format!(
            "rule: expected {rule:?}, got {:?}",
            decision.rule.as_deref()
        ));
    }
    if let Some(tenant) = &expect.tenant
        && decision.tenant.as_deref() != Some(tenant.as_str())
    {
        diffs.push(format!(
            "tenant: expected {tenant:?}, got {:?}",
            decision.tenant.as_deref()
        ));
    }
    let set: BTreeMap<&str, &str> = decision
        .set_headers
        .iter()
        .filter(|(k, _)| k != DECISION_ID_HEADER)
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    if let Some(want) = &expect.set_headers {
        let want: BTreeMap<&str, &str> =
            want.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        if want != set {
            diffs.push(format!(
                "set_headers: expected exactly {want:?}, got {set:?}"
            ));
        }
    }
    for name in &expect.remove_headers {
        if !decision.remove_headers.iter().any(|h| h == name) {
            diffs.push(format!(
                "remove_headers: expected {name:?} among {:?}",
                decision.remove_headers
            ));
        }
    }
    for name in &expect.not_set {
        if decision.set_headers.iter().any(|(k, _)| k == name) {
            diffs.push(format!(
                "not_set: {name:?} is set in {:?}",
                decision.set_headers
            ));
        }
    }
    if let Some(want) = &expect.would_be {
        let got = decision.audit.would_be.as_ref().map(|w| {
            let verdict = if w.allowed {
                Verdict::Allow
            } else {
                Verdict::Deny
            };
            (verdict, w.reason.code())
        });
        if got != Some((want.decision, want.reason.as_str())) {
            diffs.push(format!("would_be: expected {want:?}, got {got:?}"));
        }
    } else if decision.audit.would_be.is_some() {
        diffs.push("would_be: set, but the case expects an enforcing tenant".into());
    }
    let hits: BTreeMap<String, String> = decision
        .audit
        .dry_run_rules
        .iter()
        .map(|h| (h.rule.to_string(), h.would.to_string()))
        .collect();
    if hits != expect.dry_run_rules.clone().unwrap_or_default() {
        diffs.push(format!(
            "dry_run_rules: expected {:?}, got {hits:?}",
            expect.dry_run_rules
        ));
    }
    diffs.extend(invariants(decision));
    diffs
}

/// What holds for every decision, whatever the case expects.
fn invariants(decision: &Decision) -> Vec<String> {
    let mut broken = Vec::new();
    if decision.allowed != decision.reason.allows() {
        broken.push(format!(
            "invariant: allowed={} but reason {:?} has status {}",
            decision.allowed,
            decision.reason.code(),
            decision.status()
        ));
    }
    if decision.allowed {
        let ids = decision
            .set_headers
            .iter()
            .filter(|(k, v)| k == DECISION_ID_HEADER && *v == decision.decision_id)
            .count();
        if ids != 1 {
            broken.push(format!(
                "invariant: an allow sets {DECISION_ID_HEADER} once, got {:?}",
                decision.set_headers
            ));
        }
        for (name, _) in &decision.set_headers {
            if decision.remove_headers.contains(name) {
                broken.push(format!("invariant: {name:?} is both set and removed"));
            }
        }
    } else if !decision.set_headers.is_empty() || !decision.remove_headers.is_empty() {
        broken.push(format!(
            "invariant: a deny edits no upstream headers, got set {:?} remove {:?}",
            decision.set_headers, decision.remove_headers
        ));
    }
    broken
}

/// Checks that an expectation is self-consistent before it is used.
fn check_expect(expect: &Expect) -> Result<(), String> {
    let reason = Reason::from_code(&expect.reason)
        .ok_or_else(|| format!("expect.reason {:?} is not a reason code", expect.reason))?;
    if reason.status() != expect.status {
        return Err(format!(
            "expect.status {} does not go with reason {:?} (status {})",
            expect.status,
            expect.reason,
            reason.status()
        ));
    }
    if reason.allows() != (expect.decision == Verdict::Allow) {
        return Err(format!(
            "expect.decision {:?} does not go with reason {:?}",
            expect.decision, expect.reason
        ));
    }
    Ok(())
}

/// Runs one corpus file, given its name (for messages) and text.
fn run_file(name: &str, text: &str) -> FileReport {
    let mut report = FileReport::default();
    let golden: GoldenFile = match serde_yaml::from_str(text) {
        Ok(g) => g,
        Err(e) => {
            report.failures.push(format!("{name}: cannot parse: {e}"));
            return report;
        }
    };
    if golden.description.trim().is_empty() {
        report
            .failures
            .push(format!("{name}: description is empty"));
    }
    if golden.policies.is_empty() || golden.cases.is_empty() {
        report
            .failures
            .push(format!("{name}: needs at least one policy and one case"));
        return report;
    }
    let tenancy = golden.tenancy.unwrap_or_default();
    if let Err(e) = tenancy.validate() {
        report.failures.push(format!("{name}: tenancy: {e}"));
        return report;
    }

    let dir = tempfile::tempdir().expect("tempdir");
    for (file, policy) in &golden.policies {
        if file.contains('/') || file.starts_with('.') {
            report
                .failures
                .push(format!("{name}: policy file name {file:?} must be plain"));
            return report;
        }
        std::fs::write(dir.path().join(file), policy).expect("write policy");
    }
    let store = PolicyStore::new(dir.path());
    let status = store.reload();
    match (golden.expect_load_errors, status.errors.is_empty()) {
        (false, false) => {
            let errors: Vec<String> = status.errors.iter().map(ToString::to_string).collect();
            report.failures.push(format!(
                "{name}: policies did not load: {}",
                errors.join("; ")
            ));
            return report;
        }
        (true, true) => report.failures.push(format!(
            "{name}: expect_load_errors, but every policy loaded"
        )),
        _ => {}
    }
    let pipeline = Pipeline::new(Arc::new(store), tenancy);

    let mut seen = std::collections::HashSet::new();
    for case in &golden.cases {
        report.cases += 1;
        let at = format!("{name} / {}", case.name);
        if !seen.insert(case.name.as_str()) {
            report.failures.push(format!("{at}: duplicate case name"));
        }
        if let Err(e) = check_expect(&case.expect) {
            report.failures.push(format!("{at}: bad expectation: {e}"));
            continue;
        }
        let request = match portcullis::app::cli::check_request_from_json(&case.request) {
            Ok(r) => r,
            Err(e) => {
                report.failures.push(format!("{at}: bad request: {e}"));
                continue;
            }
        };
        let decision = pipeline.check(&request);
        let diffs = compare(&case.expect, &decision);
        if !diffs.is_empty() {
            report.failures.push(format!(
                "{at}:\n      {}\n      (detail: {:?}, rule: {:?}, tenant: {:?}, auth: {})",
                diffs.join("\n      "),
                decision.detail,
                decision.rule.as_deref(),
                decision.tenant.as_deref(),
                decision.auth_method,
            ));
        }
    }
    report
}

#[test]
fn golden_corpus() {
    let files = corpus_files();
    let mut cases = 0;
    let mut failures = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(path).expect("readable corpus file");
        let report = run_file(&name, &text);
        cases += report.cases;
        failures.extend(report.failures);
    }
    eprintln!("golden: {} files, {cases} cases", files.len());
    for f in &failures {
        eprintln!("FAILED {f}");
    }
    assert!(
        files.len() >= MIN_FILES,
        "the corpus has {} files; expected at least {MIN_FILES}",
        files.len()
    );
    assert!(
        cases >= MIN_CASES,
        "the corpus has {cases} cases; expected at least {MIN_CASES}"
    );
    assert!(
        failures.is_empty(),
        "{} golden case(s) failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// The runner itself: a deliberately wrong expectation is a reported mismatch
/// naming the file and the case, and a misspelt `expect` key is an error.
#[test]
fn runner_detects_a_wrong_expectation() {
    let policies = r#"
policies:
  t.yaml: |
    apiVersion: portcullis/v1
    tenant: t
    rules:
      - { id: open, path: /open, effect: allow, public: true }
"#;
    let request = r#"
    request:
      attributes:
        contextExtensions: { tenant: t }
        request: { http: { method: GET, host: t.example, path: /closed } }
"#;
    let right = format!(
        "description: right\n{policies}cases:\n  - name: closed is denied\n{request}    expect: {{ decision: deny, status: 401, reason: missing_credential }}\n"
    );
    let report = run_file("right.yaml", &right);
    assert_eq!(report.cases, 1);
    assert!(report.failures.is_empty(), "{:?}", report.failures);

    // The same request, expected (wrongly) to be allowed.
    let wrong = format!(
        "description: wrong\n{policies}cases:\n  - name: closed is allowed\n{request}    expect: {{ decision: allow, status: 200, reason: allowed, rule: open }}\n"
    );
    let report = run_file("wrong.yaml", &wrong);
    assert_eq!(report.cases, 1);
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    let failure = &report.failures[0];
    assert!(
        failure.contains("wrong.yaml / closed is allowed"),
        "{failure}"
    );
    assert!(
        failure.contains("decision") && failure.contains("reason"),
        "{failure}"
    );

    // Each optional field is compared too: a wrong value in any one of them,
    // with everything else right, is a mismatch.
    let open_request = request.replace("/closed", "/open");
    for (field, wrong) in [
        ("rule", "rule: closed"),
        ("tenant", "tenant: other"),
        ("set_headers", "set_headers: { x-subject: alice }"),
        ("remove_headers", "remove_headers: [x-nope]"),
        ("not_set", "not_set: [x-portcullis-decision-id]"),
    ] {
        let text = format!(
            "description: wrong {field}\n{policies}cases:\n  - name: wrong {field}\n{open_request}    expect: {{ decision: allow, status: 200, reason: allowed, {wrong} }}\n"
        );
        let report = run_file("fields.yaml", &text);
        assert_eq!(report.failures.len(), 1, "{field}: {:?}", report.failures);
        assert!(
            report.failures[0].contains(&format!("fields.yaml / wrong {field}"))
                && report.failures[0].contains(field),
            "{field}: {}",
            report.failures[0]
        );
    }
    // ...and the same fields, right, pass.
    let text = format!(
        "description: right fields\n{policies}cases:\n  - name: right\n{open_request}    expect: {{ decision: allow, status: 200, reason: allowed, rule: open, tenant: t, set_headers: {{}}, remove_headers: [], not_set: [x-subject] }}\n"
    );
    let report = run_file("fields.yaml", &text);
    assert!(report.failures.is_empty(), "{:?}", report.failures);

    // A misspelt key in expect is refused, not ignored.
    let misspelt = format!(
        "description: misspelt\n{policies}cases:\n  - name: typo\n{request}    expect: {{ decision: deny, status: 401, reason: missing_credential, rules: open }}\n"
    );
    let report = run_file("misspelt.yaml", &misspelt);
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert!(
        report.failures[0].contains("misspelt.yaml: cannot parse"),
        "{}",
        report.failures[0]
    );

    // An expectation that contradicts itself is refused before it is run.
    let inconsistent = format!(
        "description: inconsistent\n{policies}cases:\n  - name: bad\n{request}    expect: {{ decision: deny, status: 403, reason: missing_credential }}\n"
    );
    let report = run_file("inconsistent.yaml", &inconsistent);
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert!(report.failures[0].contains("bad expectation"));
}
