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
        let config = portcullis::config::Config::load(&root.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(config.listen.is_some(), "{file}");
    }
    let jaeger =
        portcullis::config::Config::load(&root.join("examples/jaeger/portcullis.yaml")).unwrap();
    assert_eq!(
        jaeger.tracing.otlp_endpoint.as_deref(),
        Some("http://jaeger:4317")
    );
}
