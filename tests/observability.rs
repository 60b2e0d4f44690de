//! Observability end to end: the real `portcullis` binary (configured by
//! `OTEL_*` variables and its config file) behind a real Envoy whose own
//! OpenTelemetry tracer is on, both exporting to an OTLP/gRPC receiver this
//! test runs; an issuer serving its keys on loopback; and known traffic.
//!
//! Then: portcullis' Check span is in Envoy's trace, a child of Envoy's span
//! for the ext_authz call (a client's `traceparent` never is the parent, nor
//! forces sampling); `/metrics`, parsed by the Prometheus client library's own
//! OpenMetrics parser, counts exactly the traffic sent; the decision log has a
//! line per decision with the fields operators need; dry-run rules and tenants
//! let requests through and say what they would have done; and no token,
//! signature or key appears in any log line, decision line, span or metric.
//! Beside it, a Cedar tenant's Checks, traced straight over gRPC: the check
//! span names the determining policy and Cedar's outcome.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use jwt_simple::prelude::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue as OtlpKeyValue, any_value};
use serde_json::{Value, json};

use support::{Envoy, PortcullisBinary, decision_id, http};

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    resource: BTreeMap<String, String>,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attrs: BTreeMap<String, String>,
    links: Vec<(String, String)>,
    /// Everything the span carried, for the secret scan.
    text: String,
}

#[derive(Debug, Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Got>>>,
}

fn kv_map(kvs: &[OtlpKeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.spans.lock().unwrap();
        for rs in &request.get_ref().resource_spans {
            let resource = rs
                .resource
                .as_ref()
                .map(|r| kv_map(&r.attributes))
                .unwrap_or_default();
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    out.push(Got {
                        service: resource.get("service.name").cloned().unwrap_or_default(),
                        resource: resource.clone(),
                        name: s.name.clone(),
                        trace_id: hex::encode(&s.trace_id),
                        span_id: hex::encode(&s.span_id),
                        parent: hex::encode(&s.parent_span_id),
                        attrs: kv_map(&s.attributes),
                        links: s
                            .links
                            .iter()
                            .map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id)))
                            .collect(),
                        text: format!("{s:?}"),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    async fn start() -> (Receiver, SocketAddr) {
        let receiver = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(receiver.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        (receiver, addr)
    }

    fn spans(&self) -> Vec<Got> {
        self.spans.lock().unwrap().clone()
    }

    /// The portcullis Check span of a decision, once exported.
    async fn check_span(&self, decision_id: &str) -> Got {
        self.wait_for(&format!("the check span of decision {decision_id}"), |s| {
            s.name == "check" && s.attrs.get("decision_id").map(String::as_str) == Some(decision_id)
        })
        .await
    }

    /// The span with this id, once exported (Envoy exports its span for the
    /// ext_authz call when that call ends, after portcullis answered).
    async fn span(&self, span_id: &str) -> Got {
        self.wait_for(&format!("span {span_id}"), |s| s.span_id == span_id)
            .await
    }

    async fn wait_for(&self, what: &str, matches: impl Fn(&Got) -> bool) -> Got {
        let deadline = Instant::now() + support::READY_TIMEOUT;
        loop {
            if let Some(s) = self.spans().into_iter().find(|s| matches(s)) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "no {what}; got {:#?}",
                self.spans()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// An issuer that serves its JWKS over loopback HTTP.
async fn start_idp(jwks: Value) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { axum::Json(jwks) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn initech_policy(issuer: &str) -> String {
    format!(
        r#"apiVersion: portcullis/v1
tenant: initech
hosts: [initech.example.com]
identity:
  jwt:
    - issuer: {issuer}
      audiences: [reports-api]
      algorithms: [ES256]
      jwks_uri: {issuer}/jwks.json
      max_lifetime: 15m
  token_sources: [ {{ header: authorization }}, {{ query: access_token }} ]
rules:
  # Being rolled out: evaluated and reported, never deciding.
  - id: tps-freeze
    mode: dry_run
    path: /reports/{{team}}
    when: 'resource.params.team == "tps"'
    effect: deny
  - id: read-reports
    methods: [GET]
    path: /reports/{{team}}
    when: '"reports:read" in claims.scope'
    effect: allow
response:
  headers: {{ x-subject: "{{claims.sub}}" }}
  remove: [authorization]
"#
    )
}

const TRIAL_POLICY: &str = r#"apiVersion: portcullis/v1
tenant: trial
hosts: [trial.example.com]
mode: dry_run
rules:
  - { id: open, path: /open, effect: allow, public: true }
response:
  headers: { x-subject: "{claims.sub}", x-tenant: "{tenant}" }
"#;

/// The example Envoy config with test ports, Envoy's OpenTelemetry tracer
/// exporting to `otlp`, and spans flushed one at a time.
fn envoy_config(portcullis: SocketAddr, upstream: SocketAddr, otlp: SocketAddr) -> String {
    let text = std::fs::read_to_string(support::repo_root().join("examples/envoy/envoy.yaml"))
        .expect("example envoy config");
    let mut cfg: Value = serde_yaml::from_str(&text).unwrap();
    cfg["admin"]["address"]["socket_address"]["port_value"] = json!(0);
    cfg["layered_runtime"] = json!({ "layers": [{ "name": "static", "static_layer": {
        "tracing.opentelemetry.min_flush_spans": 1,
        "tracing.opentelemetry.flush_interval_ms": 50,
    }}]});
    let resources = &mut cfg["static_resources"];
    let listener = &mut resources["listeners"][0];
    listener["address"]["socket_address"]["port_value"] = json!(0);
    listener["filter_chains"][0]["filters"][0]["typed_config"]["tracing"] = json!({
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": { "envoy_grpc": { "cluster_name": "otlp" }, "timeout": "1s" },
                "service_name": "envoy-front",
            },
        },
    });
    let clusters = resources["clusters"].as_array_mut().unwrap();
    let mut otlp_cluster = Value::Null;
    for c in clusters.iter_mut() {
        let port = match c["name"].as_str() {
            Some("portcullis") => {
                otlp_cluster = c.clone();
                portcullis.port()
            }
            Some("upstream") => upstream.port(),
            other => panic!("unexpected cluster {other:?}"),
        };
        *support::cluster_port(c) = json!(port);
    }
    otlp_cluster["name"] = json!("otlp");
    otlp_cluster["load_assignment"]["cluster_name"] = json!("otlp");
    *support::cluster_port(&mut otlp_cluster) = json!(otlp.port());
    clusters.push(otlp_cluster);
    serde_json::to_string_pretty(&cfg).unwrap()
}

/// Every sample of `/metrics`, as parsed by `prometheus_client`'s OpenMetrics
/// parser (tests/tools/prom_parse.py).
fn parse_metrics(text: &str) -> Vec<Value> {
    use std::io::Write as _;
    let python = support::repo_root().join(".tools/venv/bin/python");
    let mut child = Command::new(&python)
        .arg(support::repo_root().join("tests/tools/prom_parse.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run `make test` to install the tools)",
                python.display()
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser rejected /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

fn sample(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s["name"] == name
                && s["labels"].as_object().unwrap().len() == labels.len()
                && labels.iter().all(|(k, v)| s["labels"][*k] == *v)
        })
        .and_then(|s| s["value"].as_f64())
}

/// The decision id in a CheckResponse's dynamic metadata.
fn grpc_decision_id(answer: &portcullis::foundation::proto::auth::CheckResponse) -> String {
    answer.dynamic_metadata.as_ref().unwrap().fields["portcullis"]
        .kind
        .as_ref()
        .map(|k| match k {
            prost_types::value::Kind::StructValue(s) => match &s.fields["decision_id"].kind {
                Some(prost_types::value::Kind::StringValue(v)) => v.clone(),
                _ => panic!("no decision id"),
            },
            _ => panic!("no portcullis metadata"),
        })
        .unwrap()
}

/// Lines of a file that grows, once it has at least `n`.
async fn lines_at_least(path: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + support::READY_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {} lines, expected {n}:\n{text}",
            path.display(),
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_metrics_and_decision_log_through_a_real_envoy() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    for entry in std::fs::read_dir(support::example_policies()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, policies.join(path.file_name().unwrap())).unwrap();
    }
    let key = ES256KeyPair::generate().with_key_id("initech-1");
    let jwk: Value = serde_json::from_str(&key.public_key().to_jwk()).unwrap();
    let issuer = start_idp(json!({ "keys": [jwk] })).await;
    std::fs::write(policies.join("initech.yaml"), initech_policy(&issuer)).unwrap();
    std::fs::write(policies.join("trial.yaml"), TRIAL_POLICY).unwrap();

    let (receiver, otlp) = Receiver::start().await;
    let decisions = dir.path().join("decisions.jsonl");
    let config = dir.path().join("portcullis.yaml");
    std::fs::write(
        &config,
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\npolicies: policies\n\
         decision_log: { output: decisions.jsonl }\n",
    )
    .unwrap();
    let endpoint = format!("http://{otlp}");
    let portcullis = PortcullisBinary::start(
        &config,
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "portcullis-e2e"),
            // New traces are never sampled: only Envoy's sampled spans are.
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            ("POD_NAME", "portcullis-7f9c-x2"),
            ("POD_NAMESPACE", "shop"),
            // Everything portcullis logs, for the secret scan.
            ("RUST_LOG", "portcullis=trace,info"),
        ],
    )
    .await;
    let (upstream, _echo) = support::start_echo_upstream().await;
    let envoy = Envoy::start(&envoy_config(portcullis.grpc, upstream, otlp)).await;
    let main = envoy.listener("main").await;

    let acme = ("host", "acme.example.com");
    let initech = ("host", "initech.example.com");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mint = |exp_in: i64| {
        let claims = json!({
            "iss": issuer, "aud": "reports-api", "sub": "milton", "azp": "reports-ui",
            "scope": "reports:read", "iat": now - 60, "exp": now + exp_in,
        });
        let claims = support::raw_claims(claims);
        key.sign(claims).unwrap()
    };
    let token = mint(300);
    let expired = mint(-120);
    let tampered = {
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        let other = json!({"iss": issuer, "aud": "reports-api", "sub": "peter",
            "scope": "reports:read", "iat": now - 60, "exp": now + 300});
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(other.to_string());
        parts.join(".")
    };
    let bearer = |t: &str| format!("Bearer {t}");

    // --- Known traffic. ---
    let mut ids = BTreeMap::new();
    for _ in 0..2 {
        let r = http(main, "GET", "/docs/intro", &[acme], None).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let client_tp = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let r = http(
        main,
        "GET",
        "/docs/intro",
        &[acme, ("traceparent", &client_tp)],
        None,
    )
    .await;
    ids.insert("client_traceparent", decision_id(&r));
    for i in 0..2 {
        let r = http(main, "GET", "/tenants/acme/orders/1", &[acme], None).await;
        assert_eq!(r.status, 401, "{r:?}");
        if i == 0 {
            ids.insert("missing_credential", decision_id(&r));
        }
    }
    let r = http(
        main,
        "GET",
        "/docs/intro",
        &[("host", "unknown.example.com")],
        None,
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    for i in 0..2 {
        let r = http(
            main,
            "GET",
            "/reports/tps",
            &[initech, ("authorization", &bearer(&token))],
            None,
        )
        .await;
        // The dry-run deny rule held, and the request went through.
        assert_eq!(r.status, 200, "{r:?}");
        if i == 0 {
            ids.insert("first_token", decision_id(&r));
        }
    }
    let r = http(
        main,
        "GET",
        &format!("/reports/tps?access_token={token}&page=2"),
        &[initech],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    ids.insert("query_token", decision_id(&r));
    let r = http(
        main,
        "GET",
        "/reports/tps",
        &[initech, ("authorization", &bearer(&expired))],
        None,
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    let r = http(
        main,
        "GET",
        "/reports/tps",
        &[initech, ("authorization", &bearer(&tampered))],
        None,
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    // A dry-run tenant: no credential on a route no rule allows, yet allowed;
    // the client's forged x-subject does not survive.
    let r = http(
        main,
        "GET",
        "/closed",
        &[("host", "trial.example.com"), ("x-subject", "forged")],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "a dry-run tenant allows: {r:?}");
    let seen = r.json();
    assert!(seen["headers"].get("x-subject").is_none(), "{seen}");
    assert_eq!(seen["headers"]["x-tenant"][0], "trial", "{seen}");
    ids.insert("dry_run_tenant", decision_id(&r));
    // A CORS preflight portcullis answers itself: neither an allow sent on to
    // the upstream nor a refusal, and named as such.
    let r = http(
        main,
        "OPTIONS",
        "/tenants/acme/orders/1",
        &[
            acme,
            ("origin", "https://app.acme.example"),
            ("access-control-request-method", "GET"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{r:?}");
    ids.insert("preflight", decision_id(&r));

    // A Check straight from a client that claims a sampled trace in its HTTP
    // headers (no gRPC trace context): never a parent, never sampled.
    let mut grpc =
        portcullis::foundation::proto::auth::authorization_client::AuthorizationClient::connect(
            format!("http://{}", portcullis.grpc),
        )
        .await
        .unwrap();
    let forged = portcullis::app::cli::check_request_from_json(&json!({ "attributes": {
        "contextExtensions": { "tenant": "acme" },
        "request": { "http": { "method": "GET", "host": "acme.example.com", "path": "/docs/intro",
            "headers": { "traceparent": client_tp } } } } }))
    .unwrap();
    let answer = grpc.check(forged).await.unwrap().into_inner();
    let forged_id = grpc_decision_id(&answer);
    // The last request: once its span is exported, every earlier one is too.
    let r = http(main, "GET", "/docs/intro", &[acme], None).await;
    let last = decision_id(&r);
    const CHECKS: usize = 15;

    // --- Traces. ---
    let deny = receiver.check_span(&ids["missing_credential"]).await;
    assert_eq!(deny.service, "portcullis-e2e");
    assert_eq!(deny.resource["k8s.pod.name"], "portcullis-7f9c-x2");
    assert_eq!(deny.resource["k8s.namespace.name"], "shop");
    for (k, v) in [
        ("tenant", "acme"),
        ("decision", "deny"),
        ("reason", "missing_credential"),
        ("auth_method", "anonymous"),
        ("mode", "enforce"),
    ] {
        assert_eq!(
            deny.attrs.get(k).map(String::as_str),
            Some(v),
            "{k}: {deny:#?}"
        );
    }
    let envoy_span = receiver.span(&deny.parent).await;
    assert_eq!(envoy_span.service, "envoy-front", "{envoy_span:#?}");
    assert_eq!(envoy_span.trace_id, deny.trace_id);
    assert!(
        envoy_span.name.contains("ext_authz") || envoy_span.name.contains("Authorization"),
        "the parent is Envoy's span for the ext_authz call: {envoy_span:#?}"
    );
    let all = receiver.spans();
    for child in ["identity", "policy"] {
        assert!(
            all.iter()
                .any(|s| s.name == child && s.parent == deny.span_id),
            "no {child} span under the check span"
        );
    }
    let preflight = receiver.check_span(&ids["preflight"]).await;
    assert_eq!(preflight.attrs["decision"], "preflight", "{preflight:#?}");
    assert_eq!(preflight.attrs["reason"], "cors_preflight");
    let first = receiver.check_span(&ids["first_token"]).await;
    assert_eq!(first.attrs["auth_method"], "jwt");
    assert_eq!(first.attrs["rule"], "read-reports");

    // A client's traceparent: Envoy's ext_authz span stays the parent.
    let linked = receiver.check_span(&ids["client_traceparent"]).await;
    assert_ne!(linked.parent, CLIENT_SPAN);
    let parent = receiver.span(&linked.parent).await;
    assert_eq!(parent.service, "envoy-front");
    // Envoy passes the client's header on; portcullis links it, nothing more.
    assert_eq!(
        linked.links,
        vec![(CLIENT_TRACE.to_string(), CLIENT_SPAN.to_string())],
        "{linked:#?}"
    );
    receiver.check_span(&last).await;
    assert!(
        !receiver
            .spans()
            .iter()
            .any(|s| s.attrs.get("decision_id") == Some(&forged_id)),
        "a client's sampled traceparent must not make portcullis sample"
    );

    // --- Metrics, parsed by a real Prometheus parser. ---
    let text = http(portcullis.admin, "GET", "/metrics", &[], None)
        .await
        .body;
    let samples = parse_metrics(&text);
    let count = |tenant: &str, decision: &str, reason: &str, mode: &str| {
        sample(
            &samples,
            "portcullis_decisions_total",
            &[
                ("tenant", tenant),
                ("decision", decision),
                ("reason", reason),
                ("mode", mode),
                ("transport", "grpc"),
            ],
        )
    };
    assert_eq!(
        count("acme", "allow", "allowed", "enforce"),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        count("acme", "deny", "missing_credential", "enforce"),
        Some(2.0)
    );
    assert_eq!(
        count("", "deny", "unknown_tenant", "enforce"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(count("initech", "allow", "allowed", "enforce"), Some(3.0));
    assert_eq!(
        count("acme", "preflight", "cors_preflight", "enforce"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(count("acme", "deny", "cors_preflight", "enforce"), None);
    assert_eq!(
        count("initech", "deny", "token_expired", "enforce"),
        Some(1.0)
    );
    assert_eq!(
        count("initech", "deny", "invalid_signature", "enforce"),
        Some(1.0)
    );
    assert_eq!(
        count("trial", "deny", "missing_credential", "dry_run"),
        Some(1.0)
    );
    let total: f64 = samples
        .iter()
        .filter(|s| s["name"] == "portcullis_decisions_total")
        .map(|s| s["value"].as_f64().unwrap())
        .sum();
    assert_eq!(total, CHECKS as f64, "{text}");
    assert_eq!(
        sample(&samples, "portcullis_check_duration_seconds_count", &[]),
        Some(CHECKS as f64)
    );
    assert_eq!(
        sample(
            &samples,
            "portcullis_dry_run_rule_matches_total",
            &[
                ("tenant", "initech"),
                ("rule", "tps-freeze"),
                ("would", "deny")
            ]
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &samples,
            "portcullis_key_fetches_total",
            &[("issuer", &format!("{issuer}/jwks.json")), ("result", "ok")]
        ),
        Some(1.0),
        "{text}"
    );
    let hits = sample(
        &samples,
        "portcullis_token_cache_lookups_total",
        &[("result", "hit")],
    );
    assert_eq!(hits, Some(2.0), "{text}");
    let misses = sample(
        &samples,
        "portcullis_token_cache_lookups_total",
        &[("result", "miss")],
    );
    assert!(misses.is_some_and(|m| m >= 3.0), "{text}");
    assert_eq!(
        sample(&samples, "portcullis_dry_run_tenants", &[]),
        Some(1.0)
    );
    for tenant in ["acme", "globex", "initech", "trial"] {
        let file = std::fs::read(policies.join(format!("{tenant}.yaml"))).unwrap();
        let digest = portcullis::tenants::digest_of(&file);
        assert_eq!(
            sample(
                &samples,
                "portcullis_policy_info",
                &[("tenant", tenant), ("digest", &digest)]
            ),
            Some(1.0),
            "{tenant}: {text}"
        );
        assert_eq!(
            sample(
                &samples,
                "portcullis_policy_reloads_total",
                &[("tenant", tenant), ("result", "ok")]
            ),
            Some(1.0)
        );
    }

    // --- The decision log. ---
    let lines = lines_at_least(&decisions, CHECKS).await;
    assert_eq!(lines.len(), CHECKS);
    let line = |id: &str| {
        lines
            .iter()
            .find(|l| l["decision_id"] == id)
            .unwrap_or_else(|| panic!("no line for {id}"))
            .clone()
    };
    let l = line(&ids["missing_credential"]);
    assert_eq!(l["decision"], "deny");
    assert_eq!(l["reason"], "missing_credential");
    assert_eq!(l["status"], 401);
    assert_eq!(l["tenant"], "acme");
    assert_eq!(l["method"], "GET");
    assert_eq!(l["host"], "acme.example.com");
    assert_eq!(l["path"], "/tenants/acme/orders/1");
    assert_eq!(l["mode"], "enforce");
    assert_eq!(l["trace_id"], json!(deny.trace_id), "joins the trace");
    assert!(l["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(l["time"].as_str().unwrap().ends_with('Z'));
    let l = line(&ids["preflight"]);
    assert_eq!(
        (&l["decision"], &l["status"]),
        (&json!("preflight"), &json!(204))
    );
    assert_eq!(l["reason"], "cors_preflight");
    let l = line(&ids["first_token"]);
    assert_eq!(
        (
            &l["subject"],
            &l["issuer"],
            &l["client_id"],
            &l["auth_method"]
        ),
        (
            &json!("milton"),
            &json!(issuer),
            &json!("reports-ui"),
            &json!("jwt")
        )
    );
    assert_eq!(l["rule"], "read-reports");
    assert_eq!(
        l["dry_run_rules"],
        json!([{ "rule": "tps-freeze", "would": "deny" }])
    );
    let l = line(&ids["query_token"]);
    assert_eq!(
        l["path"],
        "/reports/tps?access_token=REDACTED&page=REDACTED"
    );
    let l = line(&ids["dry_run_tenant"]);
    assert_eq!(l["mode"], "dry_run");
    assert_eq!(l["decision"], "deny", "the log says it would deny: {l}");
    assert_eq!(l["reason"], "missing_credential");
    assert_eq!(l["enforced"]["decision"], "allow");

    // --- No token, signature or key anywhere. ---
    let private = key.to_bytes();
    let mut secrets = vec![
        token.clone(),
        expired.clone(),
        tampered.clone(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&private),
        base64::engine::general_purpose::STANDARD.encode(&private),
        hex::encode(&private),
    ];
    for t in [&token, &expired, &tampered] {
        let parts: Vec<&str> = t.split('.').collect();
        secrets.push(parts[1].to_string()); // the claims, as sent
        secrets.push(parts[2].to_string()); // the signature
    }
    let stderr = portcullis.log();
    assert!(
        stderr.contains("milton") || stderr.contains("deny"),
        "logs were captured"
    );
    let outputs = [
        ("stderr log", stderr),
        ("decision log", std::fs::read_to_string(&decisions).unwrap()),
        (
            "spans",
            receiver
                .spans()
                .iter()
                .map(|s| s.text.clone())
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        ("metrics", text),
    ];
    for (what, out) in &outputs {
        for secret in &secrets {
            assert!(
                !out.contains(secret.as_str()),
                "{what} contains a token, signature or key ({}…)",
                &secret[..12]
            );
        }
        assert!(
            !out.contains("Bearer ey"),
            "{what} contains an Authorization value"
        );
    }

    drop(envoy);
    drop(portcullis);
}

/// A Cedar tenant (tests/cedar/orders: a `permit` for the order's own tenant,
/// `forbid`s over it) decides Checks that carry a sampled trace context in
/// their gRPC metadata, as Envoy's would; each exported check span names the
/// tenant, the decision, the determining policy as `rule` and Cedar's outcome
/// as `reason`, with the policy stage as its child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cedar_tenants_check_span_names_the_determining_policy() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    let tenant = support::repo_root().join("tests/cedar/orders");
    for name in ["orders.yaml", "orders.cedar", "orders.cedarschema"] {
        std::fs::copy(tenant.join(name), policies.join(name)).unwrap();
    }
    let (receiver, otlp) = Receiver::start().await;
    let config = dir.path().join("portcullis.yaml");
    std::fs::write(
        &config,
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\npolicies: policies\n\
         tenancy: { sources: [context_extension] }\ndecision_log: { output: \"off\" }\n",
    )
    .unwrap();
    let endpoint = format!("http://{otlp}");
    let portcullis = PortcullisBinary::start(
        &config,
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "portcullis-cedar"),
            // Only the Checks below, whose parent is sampled, are exported.
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    )
    .await;
    let mut grpc =
        portcullis::foundation::proto::auth::authorization_client::AuthorizationClient::connect(
            format!("http://{}", portcullis.grpc),
        )
        .await
        .unwrap();

    // (API key, order, decision, rule, reason); the rule is absent where no
    // policy determined the outcome.
    let cases: [(&str, &str, &str, Option<&str>, &str); 3] = [
        (
            "alice-key",
            "1",
            "allow",
            Some("own-tenant-reads"),
            "allowed",
        ),
        (
            "alice-key",
            "9",
            "deny",
            Some("no-secret-orders"),
            "denied_by_rule",
        ),
        ("bob-key", "1", "deny", None, "no_matching_rule"),
    ];
    let mut sent = Vec::new();
    for (i, (key, order, ..)) in cases.iter().enumerate() {
        let path = format!("/tenants/acme/orders/{order}");
        let check = portcullis::app::cli::check_request_from_json(&json!({ "attributes": {
            "contextExtensions": { "tenant": "orders" },
            "request": { "http": { "method": "GET", "host": "orders.example.com", "path": path,
                "headers": { "x-api-key": key } } } } }))
        .unwrap();
        let trace_id = format!("{:032x}", (0xceda_u128 << 64) | (i as u128 + 1));
        let mut request = tonic::Request::new(check);
        request.metadata_mut().insert(
            "traceparent",
            format!("00-{trace_id}-00f067aa0ba902b7-01")
                .parse()
                .unwrap(),
        );
        let answer = grpc.check(request).await.unwrap().into_inner();
        sent.push((grpc_decision_id(&answer), trace_id));
    }

    for ((key, order, decision, rule, reason), (id, trace_id)) in cases.iter().zip(&sent) {
        let span = receiver.check_span(id).await;
        let what = format!("{key} reading order {order}: {span:#?}");
        assert_eq!(span.service, "portcullis-cedar", "{what}");
        assert_eq!(&span.trace_id, trace_id, "the caller's trace: {what}");
        assert_eq!(span.parent, "00f067aa0ba902b7", "{what}");
        for (k, v) in [
            ("tenant", "orders"),
            ("decision", *decision),
            ("reason", *reason),
            ("auth_method", "api_key"),
        ] {
            assert_eq!(
                span.attrs.get(k).map(String::as_str),
                Some(v),
                "{k}: {what}"
            );
        }
        assert_eq!(
            span.attrs.get("rule").map(String::as_str),
            *rule,
            "rule: {what}"
        );
        assert!(
            receiver
                .spans()
                .iter()
                .any(|s| s.name == "policy" && s.parent == span.span_id),
            "no policy span under the check span: {what}"
        );
    }
}
