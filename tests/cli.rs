//! The `validate` and `check` commands, run as the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

fn portcullis() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
}

#[test]
fn validate_accepts_the_examples() {
    let out = portcullis()
        .arg("validate")
        .arg(support::example_policies())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("acme") && stdout.contains("globex"),
        "{stdout}"
    );
    assert!(stdout.contains("sha256:"), "{stdout}");
}

#[test]
fn validate_reports_every_error_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        "apiVersion: portcullis/v1\ntenant: a\nrules:\n  - id: r1\n    path: /x/{y}/{y}\n    effect: allow\n  - id: r2\n    path: /z\n    effect: allow\n    when: 'nope.x == 1'\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.yaml"),
        "apiVersion: portcullis/v2\ntenant: b\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("c.yaml"),
        "apiVersion: portcullis/v1\ntenant: c\nrulez: []\n",
    )
    .unwrap();
    let out = portcullis()
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a.yaml:5: rule \"r1\""), "{err}");
    assert!(err.contains("a.yaml:10: rule \"r2\""), "{err}");
    assert!(
        err.contains("b.yaml:1:") && err.contains("portcullis/v2"),
        "{err}"
    );
    assert!(err.contains("c.yaml:3:") && err.contains("rulez"), "{err}");
}

fn check_examples(request: &std::path::Path) -> std::process::Output {
    portcullis()
        .args(["check", "--policies"])
        .arg(support::example_policies())
        .arg("--request")
        .arg(request)
        .output()
        .unwrap()
}

#[test]
fn check_explains_a_decision() {
    let dir = tempfile::tempdir().unwrap();
    let req = dir.path().join("req.yaml");
    std::fs::write(
        &req,
        r#"
attributes:
  contextExtensions: { tenant: acme }
  metadataContext:
    filterMetadata:
      envoy.filters.http.jwt_authn:
        jwt_payload: { iss: "https://idp.acme.example", sub: alice, tenant: acme, scope: ["orders:read"] }
  request:
    http: { method: GET, host: acme.example.com, path: /tenants/globex/orders/7, headers: {} }
"#,
    )
    .unwrap();
    let out = check_examples(&req);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["status"], 403);
    assert_eq!(v["reason"], "no_matching_rule");
    assert_eq!(v["subject"], "alice");
    let rules = v["rules"].as_array().unwrap();
    assert!(
        rules
            .iter()
            .any(|r| r["rule"] == "read-own-orders" && r["result"] == "condition is false"),
        "{v}"
    );

    std::fs::write(
        &req,
        "{\"attributes\": {\"request\": {\"http\": {\"nope\": 1}}}}",
    )
    .unwrap();
    let out = check_examples(&req);
    assert_eq!(out.status.code(), Some(64));
}

/// The server configurations the examples ship load as the server loads them.
#[test]
fn example_server_configs_load() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [
        "examples/portcullis.yaml",
        "examples/jaeger/portcullis.yaml",
    ] {
        let config = portcullis::app::config::Config::load(&root.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(config.listen.is_some(), "{file}");
    }
    let jaeger =
        portcullis::app::config::Config::load(&root.join("examples/jaeger/portcullis.yaml"))
            .unwrap();
    assert_eq!(
        jaeger.tracing.otlp_endpoint.as_deref(),
        Some("http://127.0.0.1:4317")
    );
}

fn repo_path(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// CI runs every example's test suite through the real binary.
#[test]
fn test_passes_on_the_examples_and_covers_every_rule() {
    let out = portcullis()
        .arg("test")
        .arg(support::example_policies())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let summary = stdout.lines().last().unwrap();
    let passed: usize = summary.split(' ').next().unwrap().parse().unwrap();
    assert!(passed >= 40, "{summary}");
    assert!(summary.ends_with("passed, 0 failed"), "{summary}");
    assert!(!stdout.contains("coverage:"), "{stdout}");
    assert!(!stdout.contains("warning:"), "{stdout}");
}

#[test]
fn test_reports_failures_coverage_and_json() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        "apiVersion: portcullis/v1\ntenant: a\nhosts: [a.example]\nrules:\n  - { id: open, path: /open, effect: allow, public: true }\n  - { id: never, path: /never, effect: allow, public: true }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("a_test.yaml"),
        "cases:\n  - name: open is open\n    request: { host: a.example, path: /open }\n    expect: { decision: allow, rule: open, status: 200 }\n  - name: wrong on purpose\n    request: { host: a.example, path: /closed }\n    expect: { decision: allow }\n",
    )
    .unwrap();
    let out = portcullis().arg("test").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ok   ") && stdout.contains(":: open is open"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL ") && stdout.contains(":: wrong on purpose"),
        "{stdout}"
    );
    assert!(
        stdout.contains("decision: expected allow, got deny"),
        "{stdout}"
    );
    assert!(
        stdout.contains("coverage: tenant a: no case reached rule(s) never"),
        "{stdout}"
    );
    assert!(stdout.ends_with("1 passed, 1 failed\n"), "{stdout}");

    let out = portcullis()
        .args(["test", "--format", "json"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["passed"], 1);
    assert_eq!(report["failed"], 1);
    assert_eq!(report["uncovered"]["a"], serde_json::json!(["never"]));
    assert_eq!(report["cases"][1]["reason"], "missing_credential");
    assert_eq!(report["cases"][1]["status"], 401);

    // Fixing the case passes; the test file itself is never loaded as a policy.
    std::fs::write(
        dir.path().join("a_test.yaml"),
        "cases:\n  - name: open is open\n    request: { host: a.example, path: /open }\n    expect: { decision: allow, rule: open }\n",
    )
    .unwrap();
    let out = portcullis().arg("test").arg(dir.path()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = portcullis()
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}

#[test]
fn test_refuses_to_pass_vacuously() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        "apiVersion: portcullis/v1\ntenant: a\nrules: []\n",
    )
    .unwrap();
    let out = portcullis().arg("test").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no test files"));
}

/// The deliberately broken fixture: each mistake named with file, line and cause.
#[test]
fn validate_names_file_line_and_cause_in_the_broken_fixture() {
    let out = portcullis()
        .arg("validate")
        .arg(repo_path("tests/fixtures/broken"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("typo.yaml:9: rule \"read-cart\": condition reads resource.parms")
            && err.contains("did you mean resource.params?"),
        "{err}"
    );
    // A conflict names the line of the key in both files.
    assert!(
        err.contains("error: ")
            && err.contains(
                "shop.yaml:5: host \"shop.example.com\" is already claimed by tenant \"outlet\" in "
            )
            && err.contains("outlet.yaml:4\n"),
        "{err}"
    );
    assert!(
        err.contains(
            "resale.yaml:8: issuer \"https://idp.shop.example\" is also trusted by tenant \"outlet\" in "
        ) && err.contains("outlet.yaml:7; list it under shared_issuers"),
        "{err}"
    );
    assert!(
        err.contains("warning: ")
            && err.contains("shop.yaml:19: rule \"internal-metrics\" can never match: deny rule \"no-internal\" (line 15)"),
        "{err}"
    );
    assert!(
        err.contains("claims.scpoe") && err.contains("did you mean claims.scope?"),
        "{err}"
    );
}

#[test]
fn a_shared_issuer_is_accepted_when_both_files_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = |t: &str, shared: &str| {
        format!(
            "apiVersion: portcullis/v1\ntenant: {t}\n{shared}identity:\n  envoy_jwt_authn: {{ issuers: [https://idp.shared.example] }}\nrules: []\n"
        )
    };
    let shared = "shared_issuers: [https://idp.shared.example]\n";
    std::fs::write(dir.path().join("a.yaml"), file("a", shared)).unwrap();
    std::fs::write(dir.path().join("b.yaml"), file("b", "")).unwrap();
    let out = portcullis()
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("b.yaml: issuer") && err.contains("a.yaml"),
        "{err}"
    );
    std::fs::write(dir.path().join("b.yaml"), file("b", shared)).unwrap();
    let out = portcullis()
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `audit.log_headers` records chosen headers, never credentials.
#[test]
fn credential_headers_are_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.yaml"),
        "apiVersion: portcullis/v1\ntenant: t\naudit:\n  log_headers: [x-ticket, Authorization]\nrules: []\n",
    )
    .unwrap();
    let out = portcullis()
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stderr.contains("t.yaml:4") && stderr.contains("never logged"),
        "{stderr}"
    );
}

/// Runs `portcullis ARGS`; (exit code, stdout, stderr).
fn run(args: &[&std::ffi::OsStr]) -> (Option<i32>, String, String) {
    let out = portcullis().args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

const POLICY_A: &str = "apiVersion: portcullis/v1\ntenant: a\nhosts: [a.example]\nrules:\n  - { id: open, path: /open, effect: allow, public: true }\n";
const REQUEST_A: &str = "{\"attributes\": {\"request\": {\"http\": {\"method\": \"GET\", \"path\": \"/open\", \"host\": \"a.example\", \"headers\": {}}}}}";

/// Every line of `stderr` that is not a warning or note starts `error: `.
fn assert_error_lines(stderr: &str) {
    assert!(!stderr.trim().is_empty(), "no message");
    for line in stderr.lines() {
        assert!(
            line.starts_with("error: ") || line.starts_with("warning: "),
            "{line:?} in:\n{stderr}"
        );
    }
}

#[test]
fn validate_on_an_empty_directory_is_an_error_said_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(&[os("validate"), dir.path().as_os_str()]);
    assert_eq!(code, Some(1), "{err}");
    assert_error_lines(&err);
    assert!(err.contains("has no policy files"), "{err}");
    assert!(!err.contains("last good rules"), "{err}");
}

#[test]
fn check_with_a_broken_policy_directory_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), POLICY_A).unwrap();
    let req = dir.path().join("req.json");
    std::fs::write(&req, REQUEST_A).unwrap();
    let check = |policies: &std::path::Path| {
        run(&[
            os("check"),
            os("--policies"),
            policies.as_os_str(),
            os("--request"),
            req.as_os_str(),
        ])
    };
    let (code, out, err) = check(dir.path());
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"], "allow");

    std::fs::write(
        dir.path().join("b.yaml"),
        "apiVersion: portcullis/v1\ntenant: [\n",
    )
    .unwrap();
    let (code, out, err) = check(dir.path());
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("b.yaml:2: invalid policy file"), "{err}");
    // The decision over what did load is still shown.
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"], "allow");

    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = check(empty.path());
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("error: policy directory") && err.contains("has no policy files"),
        "{err}"
    );
}

#[test]
fn check_names_the_format_tried_and_where_a_request_is_bad() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), POLICY_A).unwrap();
    let check = |name: &str, text: &str| {
        let req = dir.path().join(name);
        std::fs::write(&req, text).unwrap();
        run(&[
            os("check"),
            os("--policies"),
            dir.path().as_os_str(),
            os("--request"),
            req.as_os_str(),
        ])
    };
    let (code, _, err) = check("req.json", "{\"attributes\": {\n  \"request\": }\n}\n");
    assert_eq!(code, Some(64), "{err}");
    assert_error_lines(&err);
    assert!(err.contains("req.json:2:14: not valid JSON"), "{err}");

    let (code, _, err) = check(
        "req.yaml",
        "attributes:\n  request: {http: {method: GET}\n  x: 1\n",
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("req.yaml:2: not valid YAML"), "{err}");

    let (code, _, err) = check(
        "typo.json",
        "{\"attributes\": {\"request\": {\"http\": {\"methd\": \"GET\"}}}}",
    );
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains(
            "typo.json: not a CheckRequest: unknown field `attributes.request.http.methd`"
        ),
        "{err}"
    );
}

#[test]
fn a_duplicate_tenant_is_reported_with_both_files_and_lines() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), POLICY_A).unwrap();
    std::fs::write(
        dir.path().join("b.yaml"),
        "# the same tenant again\napiVersion: portcullis/v1\ntenant: a\nhosts: [b.example]\nrules: []\n",
    )
    .unwrap();
    let (code, _, err) = run(&[os("validate"), dir.path().as_os_str()]);
    assert_eq!(code, Some(1), "{err}");
    let a = dir.path().join("a.yaml");
    let b = dir.path().join("b.yaml");
    let want = format!(
        "error: {}:3: tenant \"a\" is already defined in {}:2",
        b.display(),
        a.display()
    );
    assert!(err.contains(&want), "{want}\n{err}");
}

#[test]
fn a_misspelt_top_level_key_gets_a_did_you_mean() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        "apiVersion: portcullis/v1\ntenant: a\nhost: [a.example]\nrules: []\n",
    )
    .unwrap();
    let (code, _, err) = run(&[os("validate"), dir.path().as_os_str()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("a.yaml:3: invalid policy file: unknown field `host` (did you mean `hosts`?)"),
        "{err}"
    );
}

#[test]
fn a_yaml_error_points_at_the_start_of_the_broken_construct() {
    let dir = tempfile::tempdir().unwrap();
    // The `[` on line 3 is never closed; the parser notices on line 4.
    std::fs::write(
        dir.path().join("a.yaml"),
        "apiVersion: portcullis/v1\ntenant: a\nhosts: [a.example\nrules: []\n",
    )
    .unwrap();
    let (code, _, err) = run(&[os("validate"), dir.path().as_os_str()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("a.yaml:3: invalid policy file"), "{err}");
}

#[test]
fn every_command_starts_its_errors_with_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let config = dir.path().join("portcullis.yaml");
    std::fs::write(&config, "policies: .\nlisten: [\n").unwrap();
    for args in [
        vec![os("serve")],
        vec![os("validate"), file.as_os_str()],
        vec![os("test"), file.as_os_str()],
        vec![os("serve"), os("--config"), config.as_os_str()],
        vec![
            os("validate"),
            dir.path().as_os_str(),
            os("-c"),
            config.as_os_str(),
        ],
    ] {
        let (code, _, err) = run(&args);
        assert_eq!(code, Some(64), "{args:?}: {err}");
        assert_error_lines(&err);
    }
}

#[test]
fn check_help_describes_every_option() {
    let (code, out, _) = run(&[os("check"), os("--help")]);
    assert_eq!(code, Some(0));
    for line in out.lines().filter(|l| l.trim_start().starts_with("--")) {
        let described = line
            .trim()
            .split_once("  ")
            .is_some_and(|(_, d)| !d.trim().is_empty());
        assert!(described, "undescribed option: {line:?}\n{out}");
    }
    assert!(out.contains("--policies"), "{out}");
}

/// docs/operations.md's exit-code table covers each command that has codes.
#[test]
fn the_exit_code_table_names_every_command() {
    let doc = std::fs::read_to_string(repo_path("docs/operations.md")).unwrap();
    let table = doc.split("## Exit codes").nth(1).unwrap();
    let table: String = table
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .collect::<Vec<_>>()
        .join("\n");
    for command in ["`serve`", "`validate`", "`check`", "`test`"] {
        assert!(
            table.contains(command),
            "the exit-code table lacks {command}"
        );
    }
}
