//! The operator's path into a real Jaeger: a real Envoy (its OpenTelemetry
//! tracer) in front of the real `portcullis` binary exporting over OTLP, both
//! sending to Jaeger 2.12.0 (built by `tests/tools/peers.sh`), every one of the
//! three run from the walk-through's own files in `examples/jaeger/` with only
//! binds, ports and paths changed.
//!
//! Jaeger's query API (`/api/v3/traces/{trace_id}`) must then hold one trace
//! per request: Envoy's ingress span, Envoy's span for the ext_authz call under
//! it, and portcullis' `check` span under that, with tenant, decision, rule,
//! reason and decision id; no token, signature or key anywhere in it. And a
//! denial's `trace_id`, read from the decision log, finds its trace and reason.
//! `tests/observability.rs` keeps a stand-in OTLP receiver for the finer points
//! (links, sampling, resource attributes), where its failures are sharper.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use jwt_simple::prelude::*;
use serde_json::{Value, json};

use support::peers::Jaeger;
use support::{Envoy, PortcullisBinary, decision_id, http};

/// One span of a Jaeger trace, flattened from its OTLP JSON.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    span_id: String,
    parent: String,
    trace_id: String,
    attrs: serde_json::Map<String, Value>,
}

/// An OTLP JSON id as hex: Jaeger writes hex, as the OTLP JSON mapping says; a
/// base64 spelling (protobuf's own JSON mapping) is read too.
fn hex_id(v: &Value) -> String {
    let s = v.as_str().unwrap_or_default();
    if s.chars().all(|c| c.is_ascii_hexdigit()) {
        return s.to_ascii_lowercase();
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_else(|e| panic!("id {s:?}: {e}"));
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr_map(attrs: &Value) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    for kv in attrs.as_array().into_iter().flatten() {
        let value = &kv["value"];
        let v = value
            .get("stringValue")
            .cloned()
            .or_else(|| value.get("intValue").cloned())
            .or_else(|| value.get("boolValue").cloned())
            .unwrap_or_else(|| value.clone());
        out.insert(kv["key"].as_str().unwrap().to_string(), v);
    }
    out
}

fn spans(trace: &Value) -> Vec<Span> {
    let mut out = Vec::new();
    for rs in trace["result"]["resourceSpans"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let service = attr_map(&rs["resource"]["attributes"])
            .get("service.name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for s in ss["spans"].as_array().into_iter().flatten() {
                out.push(Span {
                    service: service.clone(),
                    name: s["name"].as_str().unwrap_or_default().to_string(),
                    span_id: hex_id(&s["spanId"]),
                    parent: s.get("parentSpanId").map(hex_id).unwrap_or_default(),
                    trace_id: hex_id(&s["traceId"]),
                    attrs: attr_map(&s["attributes"]),
                });
            }
        }
    }
    out
}

/// The trace once Jaeger holds its `check` span and both of Envoy's spans
/// (Envoy and portcullis export on their own schedules).
async fn trace_in_jaeger(jaeger: &Jaeger, trace_id: &str) -> (Value, Vec<Span>) {
    let deadline = Instant::now() + support::READY_TIMEOUT;
    loop {
        if let Some(trace) = jaeger.trace(trace_id).await {
            let got = spans(&trace);
            let check = got.iter().any(|s| s.name == "check");
            let envoy = got.iter().filter(|s| s.service == "envoy").count();
            if check && envoy >= 2 {
                return (trace, got);
            }
        }
        assert!(
            Instant::now() < deadline,
            "trace {trace_id} not complete in Jaeger:\n{}",
            jaeger.process.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Envoy's ingress span → Envoy's ext_authz span → portcullis' `check`, all in
/// one trace; answers the `check` span.
fn assert_chain(got: &[Span], trace_id: &str) -> Span {
    assert!(
        got.iter().all(|s| s.trace_id == trace_id),
        "one trace: {got:#?}"
    );
    let check = got
        .iter()
        .find(|s| s.name == "check" && s.service == "portcullis")
        .unwrap_or_else(|| panic!("no portcullis check span: {got:#?}"))
        .clone();
    let authz = got
        .iter()
        .find(|s| s.span_id == check.parent)
        .unwrap_or_else(|| panic!("the check span's parent is not in the trace: {got:#?}"));
    assert_eq!(authz.service, "envoy", "{authz:#?}");
    assert!(
        authz.name.contains("ext_authz") || authz.name.contains("Authorization"),
        "the check span's parent is Envoy's span for the ext_authz call: {authz:#?}"
    );
    let ingress = got
        .iter()
        .find(|s| s.span_id == authz.parent)
        .unwrap_or_else(|| panic!("the ext_authz span's parent is not in the trace: {got:#?}"));
    assert_eq!(ingress.service, "envoy");
    assert_eq!(
        ingress.parent, "",
        "Envoy's ingress span is the root: {ingress:#?}"
    );
    assert_child(got, &check, "identity");
    check
}

fn assert_child(got: &[Span], parent: &Span, name: &str) {
    assert!(
        got.iter()
            .any(|s| s.name == name && s.parent == parent.span_id),
        "no {name} span under {}: {got:#?}",
        parent.name
    );
}

fn attr<'a>(span: &'a Span, key: &str) -> &'a str {
    span.attrs
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no {key} on {span:#?}"))
}

/// The decision log's line for `id`, once it is written.
async fn decision_line(path: &Path, id: &str) -> Value {
    let deadline = Instant::now() + support::READY_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["decision_id"] == id);
        if let Some(v) = found {
            return v;
        }
        assert!(Instant::now() < deadline, "no decision line {id}:\n{text}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `examples/jaeger/envoy.yaml` with free ports (Envoy binds port 0 itself;
/// the clusters point at the test's processes).
fn envoy_config(portcullis: u16, upstream: u16, otlp: u16) -> String {
    let text = std::fs::read_to_string(support::repo_root().join("examples/jaeger/envoy.yaml"))
        .expect("the walk-through's envoy config");
    let mut cfg: Value = serde_yaml::from_str(&text).unwrap();
    cfg["admin"]["address"]["socket_address"]["port_value"] = json!(0);
    let resources = &mut cfg["static_resources"];
    resources["listeners"][0]["address"]["socket_address"]["port_value"] = json!(0);
    for c in resources["clusters"].as_array_mut().unwrap() {
        let port = match c["name"].as_str() {
            Some("portcullis") => portcullis,
            Some("upstream") => upstream,
            Some("jaeger_otlp") => otlp,
            other => panic!("unexpected cluster {other:?}"),
        };
        *support::cluster_port(c) = json!(port);
    }
    serde_json::to_string_pretty(&cfg).unwrap()
}

/// `examples/jaeger/portcullis.yaml` with loopback port 0, the test's Jaeger,
/// a policy directory and a decision log file.
fn portcullis_config(dir: &Path, policies: &Path, otlp: &str) -> std::path::PathBuf {
    let text =
        std::fs::read_to_string(support::repo_root().join("examples/jaeger/portcullis.yaml"))
            .unwrap();
    let mut cfg: Value = serde_yaml::from_str(&text).unwrap();
    cfg["listen"] = json!("127.0.0.1:0");
    cfg["admin_listen"] = json!("127.0.0.1:0");
    cfg["policies"] = json!(policies);
    cfg["tracing"]["otlp_endpoint"] = json!(otlp);
    cfg["decision_log"]["output"] = json!(dir.join("decisions.jsonl"));
    // The serving line (with the bound ports) is read from a JSON log.
    cfg["log_format"] = json!("json");
    let path = dir.join("portcullis.yaml");
    std::fs::write(&path, serde_yaml::to_string(&cfg).unwrap()).unwrap();
    path
}

const INITECH: &str = r#"apiVersion: portcullis/v1
tenant: initech
hosts: [initech.example.com]
identity:
  jwt:
    - issuer: https://idp.initech.example
      audiences: [reports-api]
      algorithms: [ES256]
      jwks: JWKS
rules:
  - id: read-reports
    methods: [GET]
    path: /reports/{team}
    when: '"reports:read" in claims.scope'
    effect: allow
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_is_found_in_a_real_jaeger_with_its_reason() {
    let jaeger = Jaeger::start().await;

    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    for entry in std::fs::read_dir(support::example_policies()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, policies.join(path.file_name().unwrap())).unwrap();
    }
    let key = ES256KeyPair::generate().with_key_id("initech-1");
    let jwk: Value = serde_json::from_str(&key.public_key().to_jwk()).unwrap();
    let jwks = json!({ "keys": [jwk] }).to_string();
    std::fs::write(
        policies.join("initech.yaml"),
        INITECH.replace("JWKS", &jwks),
    )
    .unwrap();

    let config = portcullis_config(dir.path(), &policies, &format!("http://{}", jaeger.otlp));
    let portcullis = PortcullisBinary::start(
        &config,
        dir.path(),
        &[("OTEL_BSP_SCHEDULE_DELAY", "50"), ("RUST_LOG", "info")],
    )
    .await;
    let (upstream, _echo) = support::start_echo_upstream().await;
    let envoy = Envoy::start(&envoy_config(
        portcullis.grpc.port(),
        upstream.port(),
        jaeger.otlp.port(),
    ))
    .await;
    let main = envoy.listener("main").await;
    let decisions = dir.path().join("decisions.jsonl");

    let now = support::now() as i64;
    let claims = support::raw_claims(json!({
        "iss": "https://idp.initech.example", "aud": "reports-api", "sub": "milton",
        "scope": "reports:read", "iat": now - 10, "exp": now + 300,
    }));
    let token = key.sign(claims).unwrap();
    let initech = ("host", "initech.example.com");

    // An allow with a token.
    let auth = format!("Bearer {token}");
    let r = http(
        main,
        "GET",
        "/reports/tps",
        &[initech, ("authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let allow_id = decision_id(&r);
    let allow_line = decision_line(&decisions, &allow_id).await;
    let allow_trace = allow_line["trace_id"].as_str().unwrap().to_string();
    let (trace, got) = trace_in_jaeger(&jaeger, &allow_trace).await;
    let check = assert_chain(&got, &allow_trace);
    assert_child(&got, &check, "policy");
    assert_eq!(attr(&check, "tenant"), "initech");
    assert_eq!(attr(&check, "decision"), "allow");
    assert_eq!(attr(&check, "rule"), "read-reports");
    assert_eq!(attr(&check, "reason"), "allowed");
    assert_eq!(attr(&check, "decision_id"), allow_id);
    let text = trace.to_string();
    let signature = token.rsplit('.').next().unwrap();
    let private = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.to_bytes());
    for secret in [token.as_str(), signature, private.as_str()] {
        assert!(
            !text.contains(secret),
            "the trace in Jaeger carries a token or key: {text}"
        );
    }

    // A denial: the operator starts from the decision log.
    let r = http(
        main,
        "GET",
        "/tenants/acme/orders/1",
        &[("host", "acme.example.com")],
        None,
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    let deny_id = decision_id(&r);
    let line = decision_line(&decisions, &deny_id).await;
    assert_eq!(line["reason"], "missing_credential", "{line}");
    let trace_id = line["trace_id"].as_str().expect("the decision's trace id");
    let (_, got) = trace_in_jaeger(&jaeger, trace_id).await;
    let check = assert_chain(&got, trace_id);
    assert_eq!(attr(&check, "tenant"), "acme");
    assert_eq!(attr(&check, "decision"), "deny");
    assert_eq!(attr(&check, "reason"), "missing_credential");
    assert_eq!(attr(&check, "decision_id"), deny_id);

    // A forged token is denied and, like the good one, appears nowhere.
    let forged = format!("{}x", &token[..token.len() - 1]);
    let auth = format!("Bearer {forged}");
    let r = http(
        main,
        "GET",
        "/reports/tps",
        &[initech, ("authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    let line = decision_line(&decisions, &decision_id(&r)).await;
    let (trace, got) = trace_in_jaeger(&jaeger, line["trace_id"].as_str().unwrap()).await;
    let check = assert_chain(&got, line["trace_id"].as_str().unwrap());
    assert_eq!(attr(&check, "reason"), "invalid_signature");
    assert!(
        !trace
            .to_string()
            .contains(forged.rsplit('.').next().unwrap())
    );
}
