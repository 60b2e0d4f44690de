//! Policy test suites: `portcullis test DIR`.
//!
//! Test files sit beside the policies they test and end in `_test.yaml` (the
//! store never loads them as policies). Each names cases: a request written the
//! way an author thinks of it (method, host, path, headers, claims, peer) and the
//! decision it must get. A case is turned into a real `CheckRequest` and decided
//! by [`Pipeline`], so a suite exercises exactly what production runs: tenancy,
//! identity, rules, response headers.
//!
//! The runner never passes vacuously: a directory with no cases, or whose
//! policies do not all load, fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use crate::decision::Decision;
use crate::pipeline::{DECISION_ID_HEADER, Pipeline};
use crate::request::tenancy::TenantResolver;
use crate::tenants::store::PolicyStore;

pub use crate::foundation::document::{TEST_SUFFIXES, is_test_file};

/// Largest test file read.
pub const MAX_TEST_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// A `*_test.yaml` file.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// What this suite pins down.
    #[serde(default)]
    pub description: Option<String>,
    /// Tenant id put in every case's route `context_extensions` (key `tenant`)
    /// unless the case sets its own; leave it out to resolve by host.
    #[serde(default)]
    pub tenant: Option<String>,
    pub cases: Vec<TestCase>,
}

/// One named request and the decision it must get.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    pub request: TestRequest,
    pub expect: TestExpect,
}

/// A request as an author describes it.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestRequest {
    /// Default `GET`.
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    /// The path as the client sent it, optionally with a query string.
    pub path: String,
    /// Query parameters, appended to the path.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Request headers (names are lower-cased).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A JSON body (sent as Envoy would with `with_request_body`).
    #[serde(default)]
    pub body: Option<Json>,
    /// The route's `context_extensions`.
    #[serde(default)]
    pub context_extensions: BTreeMap<String, String>,
    /// Claims as Envoy's `jwt_authn` filter passes them in metadata (the tenant
    /// must trust their `iss` under `identity.envoy_jwt_authn`).
    #[serde(default)]
    pub claims: Option<Json>,
    /// Where the claims go: default `envoy.filters.http.jwt_authn` / `jwt_payload`.
    #[serde(default)]
    pub claims_metadata: Option<ClaimsMetadata>,
    /// The mTLS peer's principal (a SPIFFE ID, say).
    #[serde(default)]
    pub peer: Option<String>,
    /// The client's address.
    #[serde(default)]
    pub source: Option<String>,
    /// gRPC: sets `content-type: application/grpc` and `POST`.
    #[serde(default)]
    pub grpc: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimsMetadata {
    pub namespace: String,
    pub payload_key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

impl Verdict {
    /// As a test file spells it: `allow` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
}

/// What the decision must be. Only `decision` is required; every other field
/// is checked when present.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestExpect {
    pub decision: Verdict,
    #[serde(default)]
    pub status: Option<u16>,
    /// The reason code (`allowed`, `no_matching_rule`, `insufficient_scope`, ...).
    #[serde(default)]
    pub reason: Option<String>,
    /// The rule that decided.
    #[serde(default)]
    pub rule: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    /// At least these headers are set, with these values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// At least these headers are removed.
    #[serde(default)]
    pub removed: Vec<String>,
    /// None of these headers are set.
    #[serde(default)]
    pub not_set: Vec<String>,
    /// At least these headers are on the response the client gets (a deny's,
    /// or a Rego result's `response_headers_to_add` on an allow).
    #[serde(default)]
    pub client_headers: BTreeMap<String, String>,
    /// A deny's body, exactly (a Rego result's `body`).
    #[serde(default)]
    pub body: Option<String>,
    /// At least these keys of a policy's own dynamic metadata, with these
    /// values (a Rego result's `dynamic_metadata`).
    #[serde(default)]
    pub metadata: BTreeMap<String, Json>,
}

/// The outcome of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub file: PathBuf,
    pub name: String,
    pub passed: bool,
    /// Every difference from the expectation.
    pub failures: Vec<String>,
    pub decision: &'static str,
    pub status: u16,
    pub reason: &'static str,
    pub rule: Option<String>,
}

/// The outcome of a whole directory.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub passed: usize,
    pub failed: usize,
    pub cases: Vec<CaseResult>,
    /// Policy load errors and test files that do not parse: the run fails.
    pub errors: Vec<String>,
    /// Warnings from the static checks.
    pub warnings: Vec<String>,
    /// Per tenant, the rules no case reached (decided, or evaluated its condition).
    pub uncovered: BTreeMap<String, Vec<String>>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.errors.is_empty() && self.passed > 0
    }
}

/// Runs every `*_test.yaml` in `dir` against the policies in `dir`.
pub fn run(dir: &Path, tenancy: TenantResolver) -> Report {
    run_with(
        dir,
        tenancy,
        Default::default(),
        crate::foundation::limits::Limits::default(),
    )
}

/// [`run`], with the server's `policy_files` and `limits`, so a
/// suite loads the policies as the server would.
pub fn run_with(
    dir: &Path,
    tenancy: TenantResolver,
    policy_files: crate::foundation::policy_files::PolicyFilesConfig,
    limits: crate::foundation::limits::Limits,
) -> Report {
    let mut report = Report::default();
    let store = Arc::new(
        PolicyStore::new(dir)
            .with_policy_files(policy_files)
            .with_limits(limits),
    );
    let status = store.reload();
    report
        .errors
        .extend(status.errors.iter().map(|e| e.to_string()));
    report.warnings.extend(
        status
            .notes
            .iter()
            .filter(|n| n.starts_with("warning: "))
            .cloned(),
    );
    let pipeline = Pipeline::new(Arc::clone(&store), tenancy);

    let mut reached: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let files = match list_test_files(dir) {
        Ok(f) => f,
        Err(e) => {
            report
                .errors
                .push(format!("{}: cannot read: {e}", dir.display()));
            return report;
        }
    };
    if files.is_empty() {
        report
            .errors
            .push(format!("{}: no test files (*_test.yaml)", dir.display()));
    }
    for path in files {
        let suite = match read_suite(&path) {
            Ok(s) => s,
            Err(e) => {
                report.errors.push(e);
                continue;
            }
        };
        for case in &suite.cases {
            let result = run_case(&pipeline, &path, &suite, case, &mut reached);
            if result.passed {
                report.passed += 1;
            } else {
                report.failed += 1;
            }
            report.cases.push(result);
        }
    }
    for t in &status.tenants {
        let Some(tenant) = store.tenant(&t.tenant) else {
            continue;
        };
        let seen = reached.get(&t.tenant);
        let missing: Vec<String> = tenant
            .rule_ids()
            .filter(|id| !seen.is_some_and(|s| s.contains(*id)))
            .map(str::to_string)
            .collect();
        if !missing.is_empty() {
            report.uncovered.insert(t.tenant.clone(), missing);
        }
    }
    report
}

fn read_suite(path: &Path) -> Result<TestFile, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?
        .len();
    if size > MAX_TEST_FILE_BYTES {
        return Err(format!(
            "{}: {size} bytes; the limit is {MAX_TEST_FILE_BYTES}",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    crate::foundation::yaml::from_str(&text).map_err(|e| {
        let message = crate::tenants::did_you_mean::hint(&e.message);
        match e.line {
            Some(l) => format!("{}:{l}: invalid test file: {message}", path.display()),
            None => format!("{}: invalid test file: {message}", path.display()),
        }
    })
}

/// The test files in `dir`, sorted.
pub fn list_test_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    crate::tenants::store::list_files(dir, is_test_file)
}

fn run_case(
    pipeline: &Pipeline,
    file: &Path,
    suite: &TestFile,
    case: &TestCase,
    reached: &mut BTreeMap<String, BTreeSet<String>>,
) -> CaseResult {
    let mut result = CaseResult {
        file: file.to_path_buf(),
        name: case.name.clone(),
        passed: false,
        failures: Vec::new(),
        decision: "deny",
        status: 0,
        reason: "",
        rule: None,
    };
    let request = match crate::app::request_json::check_request_from_json(&request_json(
        suite,
        &case.request,
    )) {
        Ok(r) => r,
        Err(e) => {
            result.failures.push(format!("request: {e}"));
            return result;
        }
    };
    let (decision, trace) = pipeline.explain(&request);
    if let Some(tenant) = &decision.tenant {
        let seen = reached.entry(tenant.to_string()).or_default();
        seen.extend(
            trace
                .iter()
                .filter(|t| t.result == "matched" || t.result == "condition is false")
                .map(|t| t.rule.clone()),
        );
        seen.extend(decision.rule.as_deref().map(str::to_string));
    }
    result.failures = compare(&case.expect, &decision);
    result.passed = result.failures.is_empty();
    result.decision = if decision.allowed { "allow" } else { "deny" };
    result.status = decision.status();
    result.reason = decision.reason.code();
    result.rule = decision.rule.as_deref().map(str::to_string);
    result
}

/// A case's request in the protobuf JSON mapping of a `CheckRequest`.
pub fn request_json(suite: &TestFile, r: &TestRequest) -> Json {
    let mut headers: BTreeMap<String, String> = r
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    let method = match (&r.method, r.grpc) {
        (Some(m), _) => m.clone(),
        (None, true) => "POST".into(),
        (None, false) => "GET".into(),
    };
    if r.grpc {
        headers
            .entry("content-type".into())
            .or_insert_with(|| "application/grpc".into());
    }
    if let Some(body) = &r.body {
        headers
            .entry("content-type".into())
            .or_insert_with(|| "application/json".into());
        headers.insert("content-length".into(), body.to_string().len().to_string());
    }
    let mut path = r.path.clone();
    if !r.query.is_empty() {
        let q: Vec<String> = r
            .query
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        path.push(if path.contains('?') { '&' } else { '?' });
        path.push_str(&q.join("&"));
    }
    let host = r.host.clone().unwrap_or_default();
    let mut http = json!({
        "method": method,
        "host": host,
        "path": path,
        "headers": headers,
        "protocol": if r.grpc { "HTTP/2" } else { "HTTP/1.1" },
        "scheme": "https",
    });
    if let Some(body) = &r.body {
        http["body"] = Json::String(body.to_string());
    }
    let mut extensions = r.context_extensions.clone();
    if let Some(t) = &suite.tenant {
        extensions
            .entry("tenant".into())
            .or_insert_with(|| t.clone());
    }
    let mut attributes = json!({
        "contextExtensions": extensions,
        "request": { "http": http },
    });
    if let Some(claims) = &r.claims {
        let (ns, key) = r.claims_metadata.as_ref().map_or(
            (
                crate::identity::JWT_AUTHN_NAMESPACE,
                crate::identity::JWT_AUTHN_PAYLOAD_KEY,
            ),
            |m| (m.namespace.as_str(), m.payload_key.as_str()),
        );
        attributes["metadataContext"] = json!({ "filterMetadata": { ns: { key: claims } } });
    }
    let mut source = serde_json::Map::new();
    if let Some(p) = &r.peer {
        source.insert("principal".into(), Json::String(p.clone()));
    }
    if let Some(a) = &r.source {
        source.insert(
            "address".into(),
            json!({ "socketAddress": { "address": a, "portValue": 40000 } }),
        );
    }
    if !source.is_empty() {
        attributes["source"] = Json::Object(source);
    }
    json!({ "attributes": attributes })
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Every difference between the decision and the expectation.
pub fn compare(expect: &TestExpect, d: &Decision) -> Vec<String> {
    let mut diffs = Vec::new();
    let got = if d.allowed {
        Verdict::Allow
    } else {
        Verdict::Deny
    };
    if got != expect.decision {
        diffs.push(format!(
            "decision: expected {}, got {} ({})",
            expect.decision.as_str(),
            got.as_str(),
            d.reason.code()
        ));
    }
    if let Some(s) = expect.status
        && s != d.status()
    {
        diffs.push(format!("status: expected {s}, got {}", d.status()));
    }
    if let Some(r) = &expect.reason
        && r != d.reason.code()
    {
        diffs.push(format!("reason: expected {r:?}, got {:?}", d.reason.code()));
    }
    if let Some(r) = &expect.rule
        && d.rule.as_deref() != Some(r.as_str())
    {
        diffs.push(format!("rule: expected {r:?}, got {:?}", d.rule.as_deref()));
    }
    if let Some(t) = &expect.tenant
        && d.tenant.as_deref() != Some(t.as_str())
    {
        diffs.push(format!(
            "tenant: expected {t:?}, got {:?}",
            d.tenant.as_deref()
        ));
    }
    let set: BTreeMap<&str, &str> = d
        .set_headers
        .iter()
        .filter(|(k, _)| k != DECISION_ID_HEADER)
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for (name, want) in &expect.headers {
        match set.get(name.as_str()) {
            Some(v) if v == want => {}
            // A minted token is a credential: never echoed in a report.
            Some(_) if name == "authorization" => {
                diffs.push("headers: authorization differs".to_string())
            }
            Some(v) => diffs.push(format!("headers: {name} expected {want:?}, got {v:?}")),
            None => diffs.push(format!("headers: {name} expected {want:?}, not set")),
        }
    }
    for name in &expect.removed {
        if !d.remove_headers.iter().any(|h| h == name) {
            diffs.push(format!("removed: {name} is not removed"));
        }
    }
    for name in &expect.not_set {
        if set.contains_key(name.as_str()) {
            diffs.push(format!("not_set: {name} is set"));
        }
    }
    let to_client = if d.allowed {
        &d.answer.response_headers
    } else {
        &d.client_headers
    };
    for (name, want) in &expect.client_headers {
        match to_client.iter().find(|(k, _)| k == name) {
            Some((_, v)) if v == want => {}
            Some((_, v)) => diffs.push(format!(
                "client_headers: {name} expected {want:?}, got {v:?}"
            )),
            None => diffs.push(format!("client_headers: {name} expected {want:?}, not set")),
        }
    }
    if let Some(want) = &expect.body
        && d.answer.body.as_ref() != Some(want)
    {
        diffs.push(format!("body: expected {want:?}, got {:?}", d.answer.body));
    }
    for (key, want) in &expect.metadata {
        let got = d.answer.metadata.as_ref().and_then(|m| m.get(key));
        if got != Some(want) {
            diffs.push(format!("metadata: {key} expected {want}, got {got:?}"));
        }
    }
    diffs
}

/// The report as a test runner prints it.
pub fn render_text(report: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for e in &report.errors {
        let _ = writeln!(out, "error: {e}");
    }
    for w in &report.warnings {
        let _ = writeln!(out, "{w}");
    }
    for c in &report.cases {
        let mark = if c.passed { "ok  " } else { "FAIL" };
        let _ = writeln!(out, "{mark} {} :: {}", c.file.display(), c.name);
        for f in &c.failures {
            let _ = writeln!(out, "       {f}");
        }
    }
    for (tenant, rules) in &report.uncovered {
        let _ = writeln!(
            out,
            "coverage: tenant {tenant}: no case reached rule(s) {}",
            rules.join(", ")
        );
    }
    let _ = writeln!(out, "{} passed, {} failed", report.passed, report.failed);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid test file of exactly `size` bytes: no cases, then a comment.
    fn suite_of(path: &Path, size: u64) {
        let head = "cases: []\n#";
        let mut text = String::with_capacity(size as usize);
        text.push_str(head);
        text.extend(std::iter::repeat_n('x', size as usize - head.len()));
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn test_files_beyond_the_limit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.test.yaml");
        suite_of(&path, MAX_TEST_FILE_BYTES);
        let at = read_suite(&path).unwrap();
        assert!(at.cases.is_empty());
        suite_of(&path, MAX_TEST_FILE_BYTES + 1);
        let err = read_suite(&path).unwrap_err();
        assert_eq!(
            err,
            format!("{}: 4194305 bytes; the limit is 4194304", path.display())
        );
    }

    #[test]
    fn a_deeply_nested_test_file_is_refused_before_parsing_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep_test.yaml");
        std::fs::write(
            &path,
            format!(
                "cases:
  - {}",
                "{a: ".repeat(50_000)
            ),
        )
        .unwrap();
        let err = read_suite(&path).unwrap_err();
        assert!(
            err.contains("deep_test.yaml:2: invalid test file: YAML nests deeper"),
            "{err}"
        );
    }
}
