//! `portcullis migrate opa-envoy`: an OPA-Envoy deployment (config file with
//! bundles, a decision-log plugin and the plugin's `path`; a policy directory
//! with modules in subdirectories, nested data documents and an `opa test`
//! module) becomes a portcullis tenant and an Envoy config; the tenant then
//! decides behind a real Envoy started from the config the command wrote.
//! What does not carry over is flagged with what to use instead, and a
//! module calling `http.send` is named with its line and fails validation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

use support::{Envoy, http};

const OPA_CONFIG: &str = r#"services:
  - name: controller
    url: https://bundles.example
bundles:
  authz:
    service: controller
    resource: bundles/authz.tar.gz
decision_logs:
  console: true
plugins:
  envoy_ext_authz_grpc:
    addr: :9191
    path: envoy/authz/allow
    dry-run: false
"#;

/// GET what `data.org.roles.readable` lists; POST /people as an admin of
/// `data.admins`, named in the JSON body.
const AUTHZ: &str = r#"package envoy.authz

import data.envoy.helpers

default allow := false

allow if {
	input.attributes.request.http.method == "GET"
	helpers.first_segment in data.org.roles.readable
}

allow if {
	input.attributes.request.http.method == "POST"
	input.parsed_path == ["people"]
	input.parsed_body.user in data.admins
}
"#;

const HELPERS: &str = r#"package envoy.helpers

first_segment := input.parsed_path[0]
"#;

const OPA_TEST: &str = r#"package envoy.authz_test

import data.envoy.authz

test_get if authz.allow with input as {"attributes": {"request": {"http": {"method": "GET"}}}, "parsed_path": ["people"]}
"#;

fn opa_deployment(dir: &Path, module: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let config = dir.join("opa.yaml");
    std::fs::write(&config, OPA_CONFIG).unwrap();
    let policies = dir.join("policies");
    std::fs::create_dir_all(policies.join("lib")).unwrap();
    std::fs::create_dir_all(policies.join("org/roles")).unwrap();
    std::fs::write(policies.join("authz.rego"), module).unwrap();
    std::fs::write(policies.join("lib/helpers.rego"), HELPERS).unwrap();
    std::fs::write(policies.join("authz_test.rego"), OPA_TEST).unwrap();
    std::fs::write(policies.join("data.json"), r#"{"admins": ["alice"]}"#).unwrap();
    std::fs::write(policies.join("org/roles/data.yaml"), "readable: [people]\n").unwrap();
    (config, policies)
}

fn migrate(config: &Path, policies: &Path, out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["migrate", "opa-envoy", "--tenant", "people", "--config"])
        .arg(config)
        .arg("--policies")
        .arg(policies)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

/// The written Envoy config with its listener and admin on port 0 and its
/// clusters on the test's ports.
fn envoy_config(out: &Path, authz: std::net::SocketAddr, upstream: std::net::SocketAddr) -> String {
    let text = std::fs::read_to_string(out.join("envoy.yaml.example")).unwrap();
    let mut cfg: Value = serde_yaml::from_str(&text).unwrap();
    cfg["admin"]["address"]["socket_address"]["port_value"] = json!(0);
    let listener = &mut cfg["static_resources"]["listeners"][0]["address"]["socket_address"];
    listener["address"] = json!("127.0.0.1");
    listener["port_value"] = json!(0);
    for cluster in cfg["static_resources"]["clusters"].as_array_mut().unwrap() {
        let port = match cluster["name"].as_str().unwrap() {
            "portcullis" => authz.port(),
            "upstream" => upstream.port(),
            other => panic!("unexpected cluster {other}"),
        };
        *support::cluster_port(cluster) = json!(port);
    }
    serde_json::to_string(&cfg).unwrap()
}

/// Behaviour: the migrated tenant validates, says what did not carry over,
/// and decides as the policy does behind the Envoy config it came with (the
/// body reaches the policy, nested data is where OPA put it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrated_deployment_decides_behind_the_envoy_config_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let (config, policies) = opa_deployment(dir.path(), AUTHZ);
    let out = dir.path().join("portcullis");
    let run = migrate(&config, &policies, &out);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{run:?}\n{stderr}");
    for flagged in [
        "warning: bundles: bundles are not fetched: put the modules and data in the policy directory",
        "warning: decision_logs: the decision-log plugin is not carried over: portcullis' own decision log",
        "note: services:",
        "note: authz_test.rego: an `opa test` module, not copied",
        "note: org/roles/data.yaml: written as data.org.roles.json",
    ] {
        assert!(stderr.contains(flagged), "{flagged:?} not in:\n{stderr}");
    }
    assert!(!stderr.contains("http.send"), "{stderr}");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.contains("ok: ") && stdout.contains("people"),
        "{stdout}"
    );
    let tenant: Value =
        serde_yaml::from_str(&std::fs::read_to_string(out.join("people.yaml")).unwrap()).unwrap();
    assert_eq!(tenant["policy"]["rego"]["query"], "data.envoy.authz.allow");
    assert_eq!(
        tenant["policy"]["rego"]["files"],
        json!(["authz.rego", "lib/helpers.rego"])
    );
    assert!(!out.join("authz_test.rego").exists());

    // A second run refuses to overwrite what the first wrote.
    let again = migrate(&config, &policies, &out);
    assert_eq!(again.status.code(), Some(64), "{again:?}");

    let portcullis = support::start_portcullis(&out).await;
    let (upstream, _echo) = support::start_echo_upstream().await;
    let envoy = Envoy::start(&envoy_config(&out, portcullis.grpc_addr.unwrap(), upstream)).await;
    let at = envoy.listener("main").await;
    let host = ("host", "people.example");
    let json = ("content-type", "application/json");
    let r = http(at, "GET", "/people/1", &[host], None).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = http(at, "GET", "/secrets/1", &[host], None).await;
    assert_eq!(r.status, 403, "{r:?}");
    let r = http(
        at,
        "POST",
        "/people",
        &[host, json],
        Some(r#"{"user": "alice"}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = http(
        at,
        "POST",
        "/people",
        &[host, json],
        Some(r#"{"user": "bob"}"#),
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
}

/// Behaviour: `http.send` and `io.jwt.decode_verify` are flagged with what to
/// use instead; the module with `http.send` is named with its line, the
/// tenant is still written, and the command fails as `validate` would.
#[test]
fn http_send_is_flagged_with_its_line_and_fails_validation() {
    let dir = tempfile::tempdir().unwrap();
    let module = "package envoy.authz\n\ndefault allow := false\n\nallow if {\n\tr := http.send({\"method\": \"get\", \"url\": \"https://pdp.example\"})\n\tr.body.ok\n\t[true, _, _] := io.jwt.decode_verify(input.attributes.request.http.headers.authorization, {\"secret\": \"s\"})\n}\n";
    let (config, policies) = opa_deployment(dir.path(), module);
    let out = dir.path().join("portcullis");
    let run = migrate(&config, &policies, &out);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{run:?}\n{stderr}");
    assert!(
        stderr.contains("warning: authz.rego:6: `http.send` (the module will not load): a decision makes no network or host calls: put what it fetched in a `data` document"),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: a module verifies tokens with `io.jwt.decode_verify`")
            && stderr.contains("fill in `identity.jwt` in people.yaml"),
        "{stderr}"
    );
    let tenant = std::fs::read_to_string(out.join("people.yaml")).unwrap();
    assert!(tenant.contains("# identity:\n#   jwt:"), "{tenant}");
    assert!(stderr.contains("authz.rego:6"), "{stderr}");
}

/// Behaviour: a config without the ext_authz plugin is a usage error (64)
/// and nothing is written.
#[test]
fn a_config_without_the_plugin_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (config, policies) = opa_deployment(dir.path(), AUTHZ);
    std::fs::write(&config, "decision_logs: { console: true }\n").unwrap();
    let out = dir.path().join("portcullis");
    let run = migrate(&config, &policies, &out);
    assert_eq!(run.status.code(), Some(64), "{run:?}");
    assert!(String::from_utf8_lossy(&run.stderr).contains("no plugins.envoy_ext_authz_grpc"));
    assert!(!out.exists());
}
