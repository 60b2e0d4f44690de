//! Cedar tenants (cedar-policy), through the whole pipeline: the corpus under
//! `tests/cedar/` through `portcullis test` and `check`, policies that do not
//! validate against their schema refused at load with file and line (the old
//! rules serving), forbid over permit, an object-level rule allowed and
//! denied, and a Cedar tenant behind a real Envoy with the shared pipeline's
//! owned headers, decision log and metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use portcullis::decision::Decision;
use portcullis::pipeline::Pipeline;
use portcullis::tenants::store::PolicyStore;
use support::pipeline;

fn corpus() -> PathBuf {
    support::repo_root().join("tests/cedar/orders")
}

/// The corpus copied into a temp dir, to be changed.
fn copied() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(corpus()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    dir
}

fn run(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .arg(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Behaviour: the corpus' cases (owner allowed and denied, forbid over
/// permit, an exposed header, no route, no credential) pass `portcullis test`.
#[test]
fn the_corpus_passes_portcullis_test() {
    let (ok, text) = run(&["test"], &corpus());
    assert!(ok, "{text}");
    assert!(text.contains("6 passed"), "{text}");
}

/// Behaviour: `portcullis check` explains a Cedar decision by what Cedar was
/// asked and the determining policies.
#[test]
fn check_names_the_determining_policies() {
    let dir = tempfile::tempdir().unwrap();
    let ask = |path: &str, key: &str| {
        let request = dir.path().join("request.json");
        std::fs::write(
            &request,
            json!({"attributes": {
                "contextExtensions": {"tenant": "orders"},
                "request": {"http": {"method": "GET", "path": path, "host": "api.example",
                    "headers": {"x-api-key": key}}}
            }})
            .to_string(),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["check", "--policies"])
            .arg(corpus())
            .arg("--request")
            .arg(&request)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    };
    let text = ask("/tenants/acme/orders/1", "alice-key");
    assert!(text.contains("own-tenant-reads"), "{text}");
    assert!(text.contains("determining (permit)"), "{text}");
    assert!(text.contains(r#"ApiKey::\"alice\""#), "{text}");
    let text = ask("/tenants/acme/orders/9", "alice-key");
    assert!(text.contains("no-secret-orders"), "{text}");
    assert!(text.contains("determining (forbid)"), "{text}");
    let text = ask("/tenants/acme/orders/1", "bob-key");
    assert!(text.contains("no permit applies"), "{text}");
}

fn check(p: &Pipeline, method: &str, path: &str, key: Option<&str>) -> Decision {
    let mut headers = json!({});
    if let Some(k) = key {
        headers["x-api-key"] = json!(k);
    }
    let r = portcullis::app::cli::check_request_from_json(&json!({
        "attributes": {
            "contextExtensions": { "tenant": "orders" },
            "request": { "http": {
                "method": method, "path": path, "host": "api.example", "headers": headers,
            }},
        }
    }))
    .unwrap();
    p.check(&r)
}

/// Behaviour: in process, the object-level rule allows the order's own
/// tenant and denies another; a forbid overrides the permit.
#[test]
fn object_level_and_forbid_over_permit_in_process() {
    let (p, _store) = pipeline(&corpus());
    let d = check(&p, "GET", "/tenants/acme/orders/1", Some("alice-key"));
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.rule.as_deref(), Some("own-tenant-reads"));
    let d = check(&p, "GET", "/tenants/globex/orders/1", Some("alice-key"));
    assert!(!d.allowed, "{d:?}");
    assert_eq!(d.reason.code(), "no_matching_rule");
    let d = check(&p, "GET", "/tenants/globex/orders/1", Some("bob-key"));
    assert!(d.allowed, "{d:?}");
    let d = check(&p, "GET", "/tenants/acme/orders/9", Some("alice-key"));
    assert!(!d.allowed, "{d:?}");
    assert_eq!(d.reason.code(), "denied_by_rule");
    assert_eq!(d.rule.as_deref(), Some("no-secret-orders"));
}

/// Behaviour: a policy that does not validate against the schema (strict
/// mode), or does not parse, is refused at load with its file and line, and
/// the tenant's old rules keep serving.
#[test]
fn an_invalid_policy_is_refused_with_its_line_and_the_old_rules_serve() {
    let dir = copied();
    let (p, store) = pipeline(dir.path());
    assert!(check(&p, "GET", "/tenants/acme/orders/1", Some("alice-key")).allowed);
    let good = std::fs::read_to_string(dir.path().join("orders.cedar")).unwrap();

    // An attribute the schema does not declare, on line 5.
    let typo = good.replace(
        "principal has tenant && principal.tenant == resource.tenant",
        "principal has tenant && principal.tennant == resource.tenant",
    );
    assert_ne!(typo, good);
    std::fs::write(dir.path().join("orders.cedar"), &typo).unwrap();
    let status = store.reload();
    let lines = status.error_lines().join("\n");
    assert!(lines.contains("orders.cedar:5:"), "{lines}");
    assert!(lines.contains("tennant"), "{lines}");
    assert!(lines.contains("own-tenant-reads"), "{lines}");
    let d = check(&p, "GET", "/tenants/acme/orders/1", Some("alice-key"));
    assert!(d.allowed, "the old rules serve: {d:?}");
    let d = check(&p, "GET", "/tenants/acme/orders/9", Some("alice-key"));
    assert_eq!(d.rule.as_deref(), Some("no-secret-orders"));

    // A type error: a string compared with a number.
    let mistyped = good.replace(
        "resource.classification == \"secret\"",
        "resource.classification == 3",
    );
    std::fs::write(dir.path().join("orders.cedar"), &mistyped).unwrap();
    let lines = store.reload().error_lines().join("\n");
    assert!(lines.contains("orders.cedar:12:"), "{lines}");

    // A syntax error.
    std::fs::write(
        dir.path().join("orders.cedar"),
        "permit (principal, action, resource);\nforbid (principal action, resource);\n",
    )
    .unwrap();
    let lines = store.reload().error_lines().join("\n");
    assert!(lines.contains("orders.cedar:2:"), "{lines}");
    assert!(check(&p, "GET", "/tenants/acme/orders/1", Some("alice-key")).allowed);

    // `portcullis validate` reports the same, and fails.
    std::fs::write(dir.path().join("orders.cedar"), &typo).unwrap();
    let (ok, text) = run(&["validate"], dir.path());
    assert!(!ok, "{text}");
    assert!(text.contains("orders.cedar:5:"), "{text}");

    // Fixed, it loads again.
    std::fs::write(dir.path().join("orders.cedar"), &good).unwrap();
    assert!(store.reload().errors.is_empty());
}

/// Behaviour: a route whose action the schema does not declare is refused
/// with the tenant file's line; so is `default: allow`.
#[test]
fn routes_and_defaults_are_checked_against_the_schema() {
    let dir = copied();
    let yaml = std::fs::read_to_string(dir.path().join("orders.yaml")).unwrap();
    std::fs::write(
        dir.path().join("orders.yaml"),
        yaml.replace("action: read", "action: write"),
    )
    .unwrap();
    let store = PolicyStore::new(dir.path());
    let lines = store.reload().error_lines().join("\n");
    assert!(lines.contains("orders.yaml:"), "{lines}");
    assert!(
        lines.contains("\\\"write\\\"") || lines.contains("\"write\""),
        "{lines}"
    );
    std::fs::write(
        dir.path().join("orders.yaml"),
        yaml.replace("policy:\n", "default: allow\npolicy:\n"),
    )
    .unwrap();
    let lines = store.reload().error_lines().join("\n");
    assert!(lines.contains("default: allow"), "{lines}");
}

/// The example Envoy config with the corpus' tenant in the route's
/// `context_extensions` and the clusters on the test's ports.
fn envoy_config(portcullis: std::net::SocketAddr, upstream: std::net::SocketAddr) -> String {
    let mut cfg: Value =
        serde_json::from_str(&support::example_envoy_with(portcullis, upstream)).unwrap();
    let hcm = &mut cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    for vh in hcm["route_config"]["virtual_hosts"].as_array_mut().unwrap() {
        for route in vh["routes"].as_array_mut().unwrap() {
            route["typed_per_filter_config"]["envoy.filters.http.ext_authz"] = json!({
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
                "check_settings": { "context_extensions": { "tenant": "orders" } },
            });
        }
    }
    serde_json::to_string(&cfg).unwrap()
}

/// Behaviour: a Cedar tenant decides behind a real Envoy: the order's own
/// tenant reaches the upstream with the tenant's owned header (the client's
/// forgery overwritten) and one decision id of portcullis' own; another
/// tenant's caller and a secret order are denied; the decision log and the
/// metrics record them as for any tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cedar_tenant_decides_behind_a_real_envoy() {
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("decisions.log");
    // As support::start_portcullis, with the decision log on.
    let mut config = portcullis::app::config::Config::with_policies(corpus());
    config.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    config.admin_listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.decision_log.output = log.display().to_string();
    let portcullis = portcullis::app::serve::start(&config).await.unwrap();
    let (upstream, _echo) = support::start_echo_upstream().await;
    let envoy = support::Envoy::start(&envoy_config(portcullis.grpc_addr.unwrap(), upstream)).await;
    let at = envoy.listener("main").await;

    let r = support::http(
        at,
        "GET",
        "/tenants/acme/orders/1",
        &[
            ("host", "api.example"),
            ("x-api-key", "alice-key"),
            ("x-user", "forged"),
            ("x-portcullis-decision-id", "forged"),
        ],
        None,
    )
    .await;
    let seen = support::upstream_saw(&r);
    assert_eq!(
        support::header_values(&seen, "x-user"),
        vec!["acme"],
        "{seen}"
    );
    let ids = support::header_values(&seen, "x-portcullis-decision-id");
    assert!(ids.len() == 1 && ids[0] != "forged", "{seen}");

    let r = support::http(
        at,
        "GET",
        "/tenants/acme/orders/1",
        &[("host", "api.example"), ("x-api-key", "bob-key")],
        None,
    )
    .await;
    support::assert_denied(&r, 403, "no_matching_rule");
    let r = support::http(
        at,
        "GET",
        "/tenants/acme/orders/9",
        &[("host", "api.example"), ("x-api-key", "alice-key")],
        None,
    )
    .await;
    support::assert_denied(&r, 403, "denied_by_rule");

    let metrics = reqwest::get(format!("http://{}/metrics", portcullis.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sample = metrics
        .lines()
        .find(|l| {
            l.starts_with("portcullis_decisions_total")
                && l.contains("tenant=\"orders\"")
                && l.contains("reason=\"denied_by_rule\"")
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(sample.ends_with(" 1"), "{sample}");

    let mut lines: Vec<Value> = Vec::new();
    support::eventually("three decisions logged", || {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &Value| v["tenant"] == "orders")
            .collect();
        std::future::ready(lines.len() >= 3)
    })
    .await;
    let forbid = lines
        .iter()
        .find(|v| v["reason"] == "denied_by_rule")
        .unwrap();
    assert_eq!(forbid["rule"], "no-secret-orders", "{forbid}");
    let allowed = lines.iter().find(|v| v["reason"] == "allowed").unwrap();
    assert_eq!(allowed["rule"], "own-tenant-reads", "{allowed}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("alice-key"),
        "no credential in the log: {text}"
    );
    drop(envoy);
    portcullis.stop().await.unwrap();
}
