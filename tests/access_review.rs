//! The access-review commands on the example policies: `portcullis reach`
//! against golden outputs (`tests/golden/reach/`, rewritten with
//! `PORTCULLIS_BLESS=1 cargo test --test access_review`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn golden_dir() -> PathBuf {
    root().join("tests/golden/reach")
}

fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

fn stdout(args: &[&str]) -> String {
    let out = portcullis(args);
    assert!(
        out.status.success(),
        "portcullis {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Compares `actual` with the golden file `name`, or rewrites it when blessing.
fn golden(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("PORTCULLIS_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with PORTCULLIS_BLESS=1", path.display()));
    assert_eq!(
        actual,
        expected,
        "{} differs: run `PORTCULLIS_BLESS=1 cargo test --test access_review` and review the diff",
        path.display()
    );
}

const POLICIES: &str = "examples/policies";

fn claims(name: &str) -> String {
    Path::new("tests/golden/reach")
        .join(format!("{name}.claims.json"))
        .display()
        .to_string()
}

#[test]
fn reach_on_the_example_tenants_matches_the_goldens() {
    for name in [
        "alice",
        "acme-admin",
        "no-scope",
        "billing-operator",
        "notes-bob",
    ] {
        let c = claims(name);
        golden(
            &format!("{name}.txt"),
            &stdout(&["reach", "--policies", POLICIES, "--claims", &c]),
        );
    }
    // Object-level residuals, as JSON.
    let c = claims("alice");
    golden(
        "alice.acme.json",
        &stdout(&[
            "reach",
            "--policies",
            POLICIES,
            "--claims",
            &c,
            "--tenant",
            "acme",
            "--format",
            "json",
        ]),
    );
    for (name, id) in [
        ("acme-shop", "spiffe://acme.example/ns/shop/sa/cart"),
        ("globex-shop", "spiffe://globex.example/ns/shop/sa/web"),
    ] {
        golden(
            &format!("{name}.txt"),
            &stdout(&["reach", "--policies", POLICIES, "--spiffe-id", id]),
        );
    }
    golden(
        "anonymous.txt",
        &stdout(&[
            "reach",
            "--policies",
            POLICIES,
            "--auth-method",
            "anonymous",
        ]),
    );
}

#[test]
fn residuals_name_the_known_values_and_what_they_depend_on() {
    let c = claims("alice");
    let out = stdout(&[
        "reach",
        "--policies",
        POLICIES,
        "--claims",
        &c,
        "--tenant",
        "acme",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let grants = v["tenants"][0]["grants"].as_array().unwrap();
    let profile = grants
        .iter()
        .find(|g| g["rule"] == "own-profile" && g["method"] == "GET")
        .unwrap();
    assert_eq!(profile["when"]["cel"], "resource.params.owner == \"alice\"");
    assert_eq!(
        profile["when"]["depends_on"],
        serde_json::json!(["params.owner"])
    );
    // No admin role: the deny rule always applies, the admin route is gone.
    assert!(grants.iter().all(|g| g["rule"] != "admin"));
}

#[test]
fn a_caller_without_scopes_reaches_only_public_routes_where_every_grant_needs_one() {
    // billing: every non-public allow rule asks for a scope or a role.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.json");
    std::fs::write(
        &file,
        r#"{"iss":"https://idp.billing.example","sub":"x","scope":[]}"#,
    )
    .unwrap();
    let out = stdout(&[
        "reach",
        "--policies",
        POLICIES,
        "--claims",
        file.to_str().unwrap(),
        "--tenant",
        "billing",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let grants = v["tenants"][0]["grants"].as_array().unwrap();
    assert!(!grants.is_empty());
    assert!(
        grants.iter().all(|g| g["public"] == true),
        "a caller without scopes reaches {grants:?}"
    );
}

#[test]
fn bad_claims_are_a_usage_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.json");
    std::fs::write(&file, "[1, 2]").unwrap();
    let out = portcullis(&[
        "reach",
        "--policies",
        POLICIES,
        "--claims",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("claims must be a JSON object"));
}
