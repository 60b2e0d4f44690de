//! OPA-Envoy as the oracle for Rego compatibility: every policy and case of
//! the `tests/rego/` corpus is sent through one real Envoy config to the real
//! OPA-Envoy (v1.12.0-envoy, from `tests/tools/peers.sh`) loaded with the
//! policy, and to portcullis with the corpus' Rego tenant of that policy; the
//! status, deny body, client headers, headers the upstream saw (set and
//! removed) and the ext_authz dynamic metadata must agree case by case, and
//! match the case's own expectation. Differences kept on purpose are listed in
//! docs/rego.md ("Checked against OPA-Envoy"); this file names them where it
//! leaves a header out of the comparison. Tokens are minted by an independent
//! JOSE library (jwt-simple).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use jwt_simple::prelude::*;
use serde_json::{Value, json};

use support::peers::OpaEnvoy;
use support::{Envoy, HttpResponse, now};

const CORPUS: [&str; 4] = ["primer", "path_method", "result_object", "dynamic_metadata"];

const ISSUER: &str = "https://idp.primer.example";
const AUDIENCE: &str = "people-api";

/// The header the Envoy config copies the ext_authz filter's dynamic metadata
/// into (on the route for an allow, by a local-reply mapper for a deny), so
/// the test sees exactly what Envoy received from either server.
const METADATA_HEADER: &str = "x-oracle-metadata";

/// Envoy's, the echo's and the transport's own headers: not the server's
/// answer. `x-portcullis-*` are portcullis' reserved headers (the decision id
/// and reason; OPA-Envoy has none), listed in docs/rego.md.
fn ignored(name: &str) -> bool {
    matches!(
        name,
        "date"
            | "server"
            | "content-length"
            | "x-request-id"
            | "x-forwarded-proto"
            | "x-envoy-expected-rq-timeout-ms"
            | "x-envoy-upstream-service-time"
            | "connection"
            | "transfer-encoding"
    ) || name.starts_with("x-portcullis-")
}

fn key() -> &'static RS256KeyPair {
    static KEY: std::sync::LazyLock<RS256KeyPair> = std::sync::LazyLock::new(|| {
        RS256KeyPair::generate(2048)
            .unwrap()
            .with_key_id("oracle-1")
    });
    &KEY
}

fn jwks() -> Value {
    let jwk: Value = serde_json::from_str(&key().public_key().to_jwk()).unwrap();
    json!({ "keys": [jwk] })
}

fn token(claims: &Value) -> String {
    let mut c = claims.clone();
    let t = now();
    c["iss"] = json!(ISSUER);
    c["aud"] = json!(AUDIENCE);
    c["iat"] = json!(t);
    c["nbf"] = json!(t - 5);
    c["exp"] = json!(t + 300);
    key().sign(support::raw_claims(c)).unwrap()
}

/// The module both servers load. The primer's `{"secret": "secret"}` becomes
/// the issuer's public key set and audience: OPA-Envoy verifies with what the
/// policy names, portcullis with the tenant's issuer keys (it ignores `cert`
/// and `secret`, honours `aud`), so both accept the same RS256 token.
fn module(name: &str) -> String {
    let text = std::fs::read_to_string(corpus(name).join(format!("{name}.rego"))).unwrap();
    let constraints = json!({ "cert": jwks().to_string(), "aud": AUDIENCE }).to_string();
    text.replace(r#"{"secret": "secret"}"#, &constraints)
}

fn corpus(name: &str) -> std::path::PathBuf {
    support::repo_root().join("tests/rego").join(name)
}

/// One directory per policy for OPA-Envoy (each module is `package
/// envoy.authz`; two in one OPA would merge), and one portcullis policy
/// directory with every tenant.
fn write_policies(portcullis: &Path) {
    for name in CORPUS {
        std::fs::write(portcullis.join(format!("{name}.rego")), module(name)).unwrap();
        std::fs::copy(
            corpus(name).join(format!("{name}.yaml")),
            portcullis.join(format!("{name}.yaml")),
        )
        .unwrap();
    }
    std::fs::write(portcullis.join("jwks.json"), jwks().to_string()).unwrap();
}

/// The query path OPA-Envoy's plugin takes for a tenant's `query`.
fn opa_path(name: &str) -> String {
    let text = std::fs::read_to_string(corpus(name).join(format!("{name}.yaml"))).unwrap();
    let tenant: Value = serde_yaml::from_str(&text).unwrap();
    let query = tenant["policy"]["rego"]["query"]
        .as_str()
        .unwrap_or("data.envoy.authz.allow");
    query.trim_start_matches("data.").replace('.', "/")
}

/// The example Envoy config with a virtual host per corpus tenant
/// (`<tenant>.example`, the tenant in `context_extensions`), the request body
/// sent to ext_authz, the filter's dynamic metadata copied into
/// [`METADATA_HEADER`], and the clusters on the test's ports. Both servers get
/// this config; only the ext_authz cluster's port differs.
fn envoy_config(authz: SocketAddr, upstream: SocketAddr) -> String {
    let metadata = json!([{
        "header": { "key": METADATA_HEADER, "value": "%DYNAMIC_METADATA(envoy.filters.http.ext_authz)%" },
        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
    }]);
    let mut cfg = support::example_envoy_config();
    let resources = &mut cfg["static_resources"];
    let hcm = &mut resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let template = hcm["route_config"]["virtual_hosts"][0].clone();
    let hosts: Vec<Value> = CORPUS
        .iter()
        .map(|t| {
            let mut v = template.clone();
            v["name"] = json!(t);
            v["domains"] = json!([host(t)]);
            v["request_headers_to_add"] = metadata.clone();
            v["routes"][0]["typed_per_filter_config"]["envoy.filters.http.ext_authz"]
                ["check_settings"]["context_extensions"] = json!({ "tenant": t });
            v
        })
        .collect();
    hcm["route_config"]["virtual_hosts"] = Value::Array(hosts);
    hcm["local_reply_config"] = json!({ "mappers": [{
        "filter": { "not_health_check_filter": {} },
        "headers_to_add": metadata,
    }]});
    let filters = hcm["http_filters"].as_array_mut().unwrap();
    let authz_filter = filters
        .iter_mut()
        .find(|f| f["name"] == "envoy.filters.http.ext_authz")
        .unwrap();
    authz_filter["typed_config"]["with_request_body"] =
        json!({ "max_request_bytes": 65536, "allow_partial_message": true });
    for cluster in resources["clusters"].as_array_mut().unwrap() {
        let port = match cluster["name"].as_str().unwrap() {
            "portcullis" => authz.port(),
            "upstream" => upstream.port(),
            _ => continue,
        };
        *support::cluster_port(cluster) = json!(port);
    }
    serde_json::to_string(&cfg).unwrap()
}

fn host(tenant: &str) -> String {
    format!("{}.example", tenant.replace('_', "-"))
}

/// What one server's answer looked like from the client and the upstream.
#[derive(Debug, PartialEq)]
struct Observed {
    status: u16,
    /// The deny's body (an allow's body is the echo's report, compared below).
    body: Option<String>,
    client_headers: BTreeMap<String, String>,
    upstream_headers: Option<BTreeMap<String, Vec<String>>>,
    metadata: Value,
}

fn observe(r: &HttpResponse) -> Observed {
    let mut client_headers = BTreeMap::new();
    let mut metadata = Value::Null;
    for (name, value) in &r.headers {
        let name = name.to_ascii_lowercase();
        if name == METADATA_HEADER {
            metadata = serde_json::from_str(value).unwrap_or(json!(value));
        } else if !ignored(&name) && (r.status != 200 || name != "content-type") {
            client_headers.insert(name, value.clone());
        }
    }
    let (body, upstream_headers) = if r.status == 200 {
        let seen = r.json();
        let mut headers = BTreeMap::new();
        for (name, values) in seen["headers"].as_object().unwrap() {
            if name == METADATA_HEADER {
                metadata = serde_json::from_str(values[0].as_str().unwrap()).unwrap();
            } else if !ignored(name) {
                let values = values.as_array().unwrap();
                headers.insert(
                    name.clone(),
                    values
                        .iter()
                        .map(|v| v.as_str().unwrap().to_string())
                        .collect(),
                );
            }
        }
        (None, Some(headers))
    } else {
        (Some(r.body.clone()), None)
    };
    // Not the policy's: Envoy's own timing, OPA-Envoy's `decision_id` and
    // portcullis' `portcullis` object (each server's decision record; see
    // docs/rego.md).
    if let Some(m) = metadata.as_object_mut() {
        for key in ["ext_authz_duration", "decision_id", "portcullis"] {
            m.remove(key);
        }
    }
    Observed {
        status: r.status,
        body,
        client_headers,
        upstream_headers,
        metadata,
    }
}

/// A case's request, tokens minted from `tokens.json`.
struct Request {
    name: String,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
    expect: Value,
}

fn cases(name: &str) -> Vec<Request> {
    let tokens: Value = std::fs::read_to_string(corpus(name).join("tokens.json"))
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap_or(json!({}));
    let text = std::fs::read_to_string(corpus(name).join(format!("{name}_test.yaml"))).unwrap();
    let file: Value = serde_yaml::from_str(&text).unwrap();
    file["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| {
            let req = &case["request"];
            let mut headers: Vec<(String, String)> = req["headers"]
                .as_object()
                .map(|h| {
                    h.iter()
                        .map(|(k, v)| {
                            let mut v = v.as_str().unwrap().to_string();
                            for (who, claims) in tokens.as_object().unwrap() {
                                v = v.replace(&format!("{{{{token:{who}}}}}"), &token(claims));
                            }
                            (k.clone(), v)
                        })
                        .collect()
                })
                .unwrap_or_default();
            let body = match &req["body"] {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => {
                    headers.push(("content-type".into(), "application/json".into()));
                    Some(other.to_string())
                }
            };
            Request {
                name: case["name"].as_str().unwrap().to_string(),
                method: req["method"].as_str().unwrap().to_string(),
                path: req["path"].as_str().unwrap().to_string(),
                headers,
                body,
                expect: case["expect"].clone(),
            }
        })
        .collect()
}

async fn send(at: SocketAddr, tenant: &str, req: &Request) -> HttpResponse {
    let host = host(tenant);
    let mut headers: Vec<(&str, &str)> = vec![("host", &host)];
    headers.extend(req.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    support::http(at, &req.method, &req.path, &headers, req.body.as_deref()).await
}

/// The case's own expectation holds for an answer: so a case fails if the
/// oracle's answer changes, not only if the two servers part.
fn assert_expected(what: &str, req: &Request, o: &Observed) {
    let expect = &req.expect;
    let allow = expect["decision"] == "allow";
    let status = expect["status"]
        .as_u64()
        .unwrap_or(if allow { 200 } else { 403 });
    assert_eq!(u64::from(o.status), status, "{what}: {o:?}");
    if let Some(body) = expect["body"].as_str() {
        assert_eq!(o.body.as_deref(), Some(body), "{what}");
    }
    if let Some(headers) = expect["headers"].as_object() {
        let seen = o.upstream_headers.as_ref().unwrap();
        for (k, v) in headers {
            assert_eq!(
                seen.get(k),
                Some(&vec![v.as_str().unwrap().to_string()]),
                "{what}: {k}"
            );
        }
    }
    if let Some(removed) = expect["removed"].as_array() {
        let seen = o.upstream_headers.as_ref().unwrap();
        for k in removed {
            assert!(
                !seen.contains_key(k.as_str().unwrap()),
                "{what}: {k} reached the upstream"
            );
        }
    }
    if let Some(headers) = expect["client_headers"].as_object() {
        for (k, v) in headers {
            assert_eq!(
                o.client_headers.get(k).map(String::as_str),
                v.as_str(),
                "{what}: {k}"
            );
        }
    }
    if let Some(metadata) = expect["metadata"].as_object() {
        for (k, v) in metadata {
            assert_eq!(&o.metadata[k], v, "{what}: metadata {k}: {o:?}");
        }
    }
}

/// The differences docs/rego.md lists, checked exactly and then taken out of
/// portcullis' answer: every deny is marked `cache-control: no-store`; a deny
/// for which the policy gave no body is answered with portcullis' own JSON
/// (`decision_id` and the reason code), where OPA-Envoy sends an empty body.
fn without_listed_differences(mut ours: Observed, oracle: &Observed, what: &str) -> Observed {
    if ours.status == 200 {
        return ours;
    }
    if !oracle.client_headers.contains_key("cache-control") {
        let marked = ours.client_headers.remove("cache-control");
        assert_eq!(marked.as_deref(), Some("no-store"), "{what}");
    }
    if oracle.body.as_deref() == Some("") {
        let body: Value = serde_json::from_str(ours.body.as_deref().unwrap())
            .unwrap_or_else(|e| panic!("{what}: deny body {:?}: {e}", ours.body));
        let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["decision_id", "error"], "{what}: {body}");
        assert_eq!(body["error"], "denied_by_rule", "{what}: {body}");
        let json_type = ours.client_headers.remove("content-type");
        assert_eq!(json_type.as_deref(), Some("application/json"), "{what}");
        ours.body = Some(String::new());
    }
    ours
}

/// Behaviour: for every policy and case of the corpus, OPA-Envoy and
/// portcullis, behind the same Envoy config, give the same status, deny body,
/// client headers, upstream headers (set and removed) and dynamic metadata,
/// and both meet the case's expectation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opa_envoy_and_portcullis_agree_on_the_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("portcullis");
    std::fs::create_dir(&ours).unwrap();
    write_policies(&ours);
    let (upstream, _echo) = support::start_echo_upstream().await;
    let portcullis = support::start_portcullis(&ours).await;
    let envoy_ours = Envoy::start(&envoy_config(portcullis.grpc_addr.unwrap(), upstream)).await;
    let at_ours = envoy_ours.listener("main").await;

    let mut compared = 0;
    for name in CORPUS {
        let theirs = dir.path().join(name);
        std::fs::create_dir(&theirs).unwrap();
        std::fs::write(theirs.join(format!("{name}.rego")), module(name)).unwrap();
        let opa = OpaEnvoy::start(&theirs, &opa_path(name)).await;
        let envoy_opa = Envoy::start(&envoy_config(opa.grpc, upstream)).await;
        let at_opa = envoy_opa.listener("main").await;
        for req in cases(name) {
            let what = format!("{name}: {}", req.name);
            let oracle = observe(&send(at_opa, name, &req).await);
            let answer = without_listed_differences(
                observe(&send(at_ours, name, &req).await),
                &oracle,
                &what,
            );
            assert_expected(&format!("{what} (OPA-Envoy)"), &req, &oracle);
            assert_eq!(
                answer,
                oracle,
                "{what}: portcullis (left) and OPA-Envoy (right) differ\n{}",
                opa.process.log()
            );
            compared += 1;
        }
    }
    assert!(compared >= 16, "{compared} cases compared");
}
