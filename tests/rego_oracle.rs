//! OPA-Envoy as the oracle for Rego compatibility: every policy and case of
//! the `tests/rego/` corpus, and this file's own probes (an echo of the whole
//! input document, and results of every shape OPA-Envoy reads), are sent
//! through one real Envoy config to the real OPA-Envoy (v1.12.0-envoy, from
//! `tests/tools/peers.sh`) loaded with the policy, and to portcullis with a
//! Rego tenant of it; the status, deny body, client headers, the path and
//! headers the upstream saw (set and removed) and the ext_authz dynamic
//! metadata must agree case by case, and each server's answer must match the
//! case's expectation. Differences kept on purpose are listed in docs/rego.md
//! ("Checked against OPA-Envoy"): the cases that show them assert what each
//! server answers and that the two differ, so a listing cannot outlive its
//! difference. Tokens are minted by an independent JOSE library (jwt-simple).
//!
//! Never imports portcullis' library here (it is started through
//! `support`): both servers are judged from outside, through Envoy.

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

/// Envoy's `with_request_body.max_request_bytes`: small, so a probe can send
/// a body Envoy truncates without the echoed input outgrowing a header.
const BODY_LIMIT: usize = 2048;

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

/// One policy as both servers run it: the module, the query, portcullis'
/// tenant file, and its cases.
struct Policy {
    name: String,
    module: String,
    query: String,
    tenant: String,
    cases: Vec<Request>,
}

/// A corpus policy. The primer's `{"secret": "secret"}` becomes the issuer's
/// public key set and audience: OPA-Envoy verifies with what the policy
/// names, portcullis with the tenant's issuer keys (it ignores `cert` and
/// `secret`, honours `aud`), so both accept the same RS256 token.
fn corpus_policy(name: &str) -> Policy {
    let text = std::fs::read_to_string(corpus(name).join(format!("{name}.rego"))).unwrap();
    let constraints = json!({ "cert": jwks().to_string(), "aud": AUDIENCE }).to_string();
    let tenant = std::fs::read_to_string(corpus(name).join(format!("{name}.yaml"))).unwrap();
    let doc: Value = serde_yaml::from_str(&tenant).unwrap();
    let query = doc["policy"]["rego"]["query"]
        .as_str()
        .unwrap_or("data.envoy.authz.allow")
        .to_string();
    Policy {
        name: name.to_string(),
        module: text.replace(r#"{"secret": "secret"}"#, &constraints),
        query,
        tenant,
        cases: cases(name),
    }
}

fn corpus(name: &str) -> std::path::PathBuf {
    support::repo_root().join("tests/rego").join(name)
}

/// Every policy both servers are compared on: the corpus, then the oracle's
/// own probes of the input document and of the result's shapes.
fn policies() -> Vec<Policy> {
    let mut all: Vec<Policy> = CORPUS.iter().map(|n| corpus_policy(n)).collect();
    all[0].cases.extend(primer_differences());
    all.push(probe("input_echo", INPUT_ECHO, input_echo_cases()));
    all.push(probe("result_shapes", RESULT_SHAPES, result_shape_cases()));
    all
}

/// A policy of this file (not the corpus): `data.envoy.authz.result`, no
/// identity.
fn probe(name: &str, module: &str, cases: Vec<Request>) -> Policy {
    Policy {
        name: name.to_string(),
        module: module.to_string(),
        query: "data.envoy.authz.result".into(),
        tenant: format!(
            "apiVersion: portcullis/v1\ntenant: {name}\npolicy:\n  rego:\n    files: [{name}.rego]\n    query: data.envoy.authz.result\n"
        ),
        cases,
    }
}

/// One portcullis policy directory with every tenant.
fn write_policies(portcullis: &Path, policies: &[Policy]) {
    for p in policies {
        std::fs::write(portcullis.join(format!("{}.rego", p.name)), &p.module).unwrap();
        std::fs::write(portcullis.join(format!("{}.yaml", p.name)), &p.tenant).unwrap();
    }
    std::fs::write(portcullis.join("jwks.json"), jwks().to_string()).unwrap();
}

/// The query path OPA-Envoy's plugin takes for a tenant's `query`.
fn opa_path(query: &str) -> String {
    query.trim_start_matches("data.").replace('.', "/")
}

/// The example Envoy config with a virtual host per corpus tenant
/// (`<tenant>.example`, the tenant in `context_extensions`), the request body
/// sent to ext_authz, the filter's dynamic metadata copied into
/// [`METADATA_HEADER`], and the clusters on the test's ports. Both servers get
/// this config; only the ext_authz cluster's port differs.
fn envoy_config(authz: SocketAddr, upstream: SocketAddr, tenants: &[&str]) -> String {
    let metadata = json!([{
        "header": { "key": METADATA_HEADER, "value": "%DYNAMIC_METADATA(envoy.filters.http.ext_authz)%" },
        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
    }]);
    let mut cfg = support::envoy_per_tenant(authz, upstream, tenants, BODY_LIMIT);
    let hcm = &mut cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    for v in hcm["route_config"]["virtual_hosts"].as_array_mut().unwrap() {
        v["request_headers_to_add"] = metadata.clone();
    }
    hcm["local_reply_config"] = json!({ "mappers": [{
        "filter": { "not_health_check_filter": {} },
        "headers_to_add": metadata,
    }]});
    serde_json::to_string(&cfg).unwrap()
}

/// What one server's answer looked like from the client and the upstream.
#[derive(Debug, PartialEq)]
struct Observed {
    status: u16,
    /// The deny's body (an allow's body is the echo's report, compared below).
    body: Option<String>,
    client_headers: BTreeMap<String, String>,
    /// The path and query the upstream was sent (an allow's).
    upstream_path: Option<String>,
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
    let mut upstream_path = None;
    let (body, upstream_headers) = if r.status == 200 {
        let seen = r.json();
        upstream_path = seen["path"].as_str().map(str::to_string);
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
        upstream_path,
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
    /// Where portcullis differs on purpose (docs/rego.md): what it answers
    /// instead (`expect`'s shape) and why.
    differs: Option<(Value, String)>,
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
        .map(|case| request(case, &tokens))
        .collect()
}

/// One case in `portcullis test`'s shape; a header's value may be a list
/// (one header line each), and `differs: { portcullis: EXPECT, why: … }`
/// marks a listed difference.
fn request(case: &Value, tokens: &Value) -> Request {
    let req = &case["request"];
    let mut headers: Vec<(String, String)> = Vec::new();
    for (k, v) in req["headers"].as_object().into_iter().flatten() {
        let values = match v {
            Value::Array(list) => list.clone(),
            one => vec![one.clone()],
        };
        for v in values {
            let mut v = v.as_str().unwrap().to_string();
            for (who, claims) in tokens.as_object().into_iter().flatten() {
                v = v.replace(&format!("{{{{token:{who}}}}}"), &token(claims));
            }
            headers.push((k.clone(), v));
        }
    }
    let body = match &req["body"] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => {
            headers.push(("content-type".into(), "application/json".into()));
            Some(other.to_string())
        }
    };
    let differs = case.get("differs").map(|d| {
        (
            d["portcullis"].clone(),
            d["why"].as_str().unwrap().to_string(),
        )
    });
    Request {
        name: case["name"].as_str().unwrap().to_string(),
        method: req["method"].as_str().unwrap().to_string(),
        path: req["path"].as_str().unwrap().to_string(),
        headers,
        body,
        expect: case["expect"].clone(),
        differs,
    }
}

/// The primer with a token its issuer's validator refuses: OPA-Envoy's
/// policy sees it and denies (403); portcullis' identity stage refuses it
/// first (401, `invalid_token`), before the policy runs.
fn primer_differences() -> Vec<Request> {
    let t = now();
    let mut expired = json!({ "role": "guest", "sub": "YWxpY2U=" });
    expired["iss"] = json!(ISSUER);
    expired["aud"] = json!(AUDIENCE);
    expired["iat"] = json!(t - 600);
    expired["nbf"] = json!(t - 600);
    expired["exp"] = json!(t - 300);
    let expired = key().sign(support::raw_claims(expired)).unwrap();
    probe_cases(json!([{
        "name": "an expired token",
        "request": { "method": "GET", "path": "/people/1",
                     "headers": { "authorization": format!("Bearer {expired}") } },
        "expect": { "decision": "deny", "status": 403, "body": "" },
        "differs": {
            "portcullis": { "decision": "deny", "status": 401, "error": "invalid_token" },
            "why": "the identity stage refuses a token of the tenant's issuer that does not validate, before the policy runs",
        },
    }]))
}

fn probe_cases(cases: Value) -> Vec<Request> {
    cases
        .as_array()
        .unwrap()
        .iter()
        .map(|c| request(c, &json!({})))
        .collect()
}

/// The whole input document, back as dynamic metadata, without what differs
/// between two deliveries of one request (time, ids, ports of the two
/// Envoys) and without portcullis' own `input.portcullis`: the two servers'
/// input documents compared field by field.
const INPUT_ECHO: &str = r#"package envoy.authz

volatile := [
	"attributes/request/time",
	"attributes/request/http/id",
	"attributes/request/http/headers/x-request-id",
	"attributes/source/address/socketAddress/portValue",
	"attributes/destination/address/socketAddress/portValue",
	"portcullis",
]

result := {"allowed": true, "dynamic_metadata": {"input": json.remove(input, volatile)}}
"#;

fn input_echo_cases() -> Vec<Request> {
    let allow = json!({ "decision": "allow" });
    probe_cases(json!([
        { "name": "a plain GET", "request": { "method": "GET", "path": "/a/b" }, "expect": allow },
        { "name": "repeated, empty and valueless query parameters",
          "request": { "method": "GET", "path": "/q?x=1&x=2&y=&z" }, "expect": allow },
        { "name": "percent-encoding and + in the path and query",
          "request": { "method": "GET", "path": "/a%20b/c%C3%A9?q=a%2Bb+c&k%20=v" }, "expect": allow },
        { "name": "a header sent twice, and mixed-case names",
          "request": { "method": "GET", "path": "/h",
                       "headers": { "X-Multi": ["one", "two"], "X-Case": "Value" } },
          "expect": allow },
        { "name": "a JSON body",
          "request": { "method": "POST", "path": "/json",
                       "body": { "k": [1, 2.5, "s"], "n": null, "o": { "t": true } } },
          "expect": allow },
        { "name": "a form body",
          "request": { "method": "POST", "path": "/form",
                       "headers": { "content-type": "application/x-www-form-urlencoded" },
                       "body": "a=1&a=2&b=x+y&c=%26" },
          "expect": allow },
        { "name": "a text body",
          "request": { "method": "PUT", "path": "/text",
                       "headers": { "content-type": "text/plain" }, "body": "hello\nworld" },
          "expect": allow },
        { "name": "a text body longer than Envoy sends",
          "request": { "method": "POST", "path": "/big",
                       "headers": { "content-type": "text/plain" },
                       "body": "x".repeat(BODY_LIMIT + 500) },
          "expect": { "decision": "allow", "input": { "truncated_body": false } },
          "differs": {
              "portcullis": { "decision": "allow", "input": { "truncated_body": true } },
              "why": "truncated_body is true for any body Envoy cut; OPA-Envoy looks only at bodies it parses" } },
        { "name": "a JSON body longer than Envoy sends",
          "request": { "method": "POST", "path": "/big.json",
                       "headers": { "content-type": "application/json" },
                       "body": format!("{{\"k\": \"{}\"}}", "x".repeat(BODY_LIMIT + 500)) },
          "expect": { "decision": "allow", "input": { "truncated_body": true, "parsed_body": null } } },
        { "name": "a JSON content type with a body that is not JSON",
          "request": { "method": "POST", "path": "/bad",
                       "headers": { "content-type": "application/json" }, "body": "{not json" },
          "expect": { "decision": "deny", "status": 400 },
          "differs": {
              "portcullis": { "decision": "deny", "status": 403, "error": "body_unavailable" },
              "why": "the reason code body_unavailable (403) in place of OPA-Envoy's 400 with the JSON parser's message" } },
    ]))
}

/// Results of every shape OPA-Envoy reads, chosen by the request's
/// `x-case` header.
const RESULT_SHAPES: &str = r#"package envoy.authz

shapes := {
	"bool-true": true,
	"bool-false": false,
	"headers-list": {"allowed": true, "headers": [{"x-a": "1"}, {"x-b": "2"}]},
	"headers-multi": {"allowed": true, "headers": {"x-a": ["1", "2"]}},
	"overwrite": {"allowed": true, "headers": {"x-user": "from-policy"}},
	"remove": {"allowed": true, "request_headers_to_remove": ["x-user"]},
	"response-headers": {"allowed": true, "response_headers_to_add": {"x-r": "1"}},
	"query": {"allowed": true, "query_parameters_to_set": {"added": "v", "keep": "new"}, "query_parameters_to_remove": ["drop"]},
	"metadata": {"allowed": true, "dynamic_metadata": {"a": {"b": [1, "x", true, null]}}},
	"deny-status": {"allowed": false, "http_status": 429, "headers": {"retry-after": "5"}, "body": "slow down"},
	"deny-bare": {"allowed": false},
	"deny-empty-body": {"allowed": false, "body": ""},
	"deny-metadata": {"allowed": false, "dynamic_metadata": {"why": "no"}},
	"no-allowed": {"headers": {"x-a": "1"}},
	"allowed-string": {"allowed": "yes"},
}

result := shapes[input.attributes.request.http.headers["x-case"]]
"#;

/// OPA-Envoy answers a result it cannot read, or an undefined one, with a
/// gRPC error, which Envoy turns into a 503, or into an allow under
/// `failure_mode_allow: true`; portcullis denies (403, `error`), whatever
/// Envoy's setting.
fn differs(mut case: Value, error: &str) -> Value {
    case["differs"] = json!({
        "portcullis": { "decision": "deny", "status": 403, "error": error },
        "why": "an error on OPA-Envoy (503, or an allow under failure_mode_allow), a deny here",
    });
    case
}

fn result_shape_cases() -> Vec<Request> {
    let case = |shape: &str, expect: Value| {
        json!({
            "name": shape,
            "request": { "method": "GET", "path": "/r?keep=old&drop=1",
                         "headers": { "x-case": shape, "x-user": "client" } },
            "expect": expect,
        })
    };
    let allow = json!({ "decision": "allow" });
    let deny = json!({ "decision": "deny", "status": 403 });
    probe_cases(json!([
        case("bool-true", allow.clone()),
        case("bool-false", deny.clone()),
        case(
            "headers-list",
            json!({ "decision": "allow", "headers": { "x-a": "1", "x-b": "2" } })
        ),
        case("headers-multi", allow.clone()),
        case(
            "overwrite",
            json!({ "decision": "allow", "headers": { "x-user": "from-policy" } })
        ),
        case(
            "remove",
            json!({ "decision": "allow", "removed": ["x-user"] })
        ),
        case(
            "response-headers",
            json!({ "decision": "allow", "client_headers": { "x-r": "1" } })
        ),
        case("query", allow.clone()),
        case("metadata", allow.clone()),
        case(
            "deny-status",
            json!({ "decision": "deny", "status": 429, "body": "slow down",
                                    "client_headers": { "retry-after": "5" } })
        ),
        case("deny-bare", deny.clone()),
        case("deny-empty-body", deny.clone()),
        case(
            "deny-metadata",
            json!({ "decision": "deny", "status": 403, "metadata": { "why": "no" } })
        ),
        differs(
            case("no-allowed", json!({ "decision": "deny", "status": 503 })),
            "policy_error"
        ),
        differs(
            case(
                "allowed-string",
                json!({ "decision": "deny", "status": 503 })
            ),
            "policy_error"
        ),
        differs(
            case(
                "no-such-shape",
                json!({ "decision": "deny", "status": 503 })
            ),
            "denied_by_rule"
        ),
    ]))
}

async fn send(at: SocketAddr, tenant: &str, req: &Request) -> HttpResponse {
    let host = support::tenant_host(tenant);
    let mut headers: Vec<(&str, &str)> = vec![("host", &host)];
    headers.extend(req.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    support::http(at, &req.method, &req.path, &headers, req.body.as_deref()).await
}

/// The case's own expectation holds for an answer: so a case fails if the
/// oracle's answer changes, not only if the two servers part.
fn assert_expected(what: &str, expect: &Value, o: &Observed) {
    let allow = expect["decision"] == "allow";
    let status = expect["status"]
        .as_u64()
        .unwrap_or(if allow { 200 } else { 403 });
    assert_eq!(u64::from(o.status), status, "{what}: {o:?}");
    if let Some(body) = expect["body"].as_str() {
        assert_eq!(o.body.as_deref(), Some(body), "{what}");
    }
    // portcullis' own deny body: `{"decision_id": …, "error": REASON}`.
    if let Some(error) = expect.get("error") {
        let body: Value = serde_json::from_str(o.body.as_deref().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{what}: deny body {:?}: {e}", o.body));
        assert_eq!(&body["error"], error, "{what}: {body}");
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
    // Fields of the input document the echo probe returned.
    if let Some(fields) = expect["input"].as_object() {
        for (k, v) in fields {
            assert_eq!(&o.metadata["input"][k], v, "{what}: input.{k}");
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
    if oracle.body.as_deref() == Some("") && ours.body.as_deref().is_some_and(|b| !b.is_empty()) {
        let body: Value = serde_json::from_str(ours.body.as_deref().unwrap())
            .unwrap_or_else(|e| panic!("{what}: deny body {:?}: {e}", ours.body));
        // Key order is no part of JSON's meaning: compared as a set.
        let mut keys: Vec<&String> = body.as_object().unwrap().keys().collect();
        keys.sort_unstable();
        assert_eq!(keys, ["decision_id", "error"], "{what}: {body}");
        assert_eq!(body["error"], "denied_by_rule", "{what}: {body}");
        let json_type = ours.client_headers.remove("content-type");
        assert_eq!(json_type.as_deref(), Some("application/json"), "{what}");
        ours.body = Some(String::new());
    }
    ours
}

/// Behaviour: for every policy and case of the corpus and of the probes,
/// OPA-Envoy and portcullis, behind the same Envoy config, give the same
/// status, deny body, client headers, upstream path and headers (set and
/// removed) and dynamic metadata, and both meet the case's expectation;
/// where a case lists a difference, each server meets its own and they do
/// differ (so the listing in docs/rego.md stays true).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opa_envoy_and_portcullis_agree_on_the_corpus() {
    let policies = policies();
    let tenants: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("portcullis");
    std::fs::create_dir(&ours).unwrap();
    write_policies(&ours, &policies);
    let (upstream, _echo) = support::start_echo_upstream().await;
    let portcullis = support::start_portcullis(&ours).await;
    let envoy_ours = Envoy::start(&envoy_config(
        portcullis.grpc_addr.unwrap(),
        upstream,
        &tenants,
    ))
    .await;
    let at_ours = envoy_ours.listener("main").await;

    let mut compared = 0;
    let mut listed = 0;
    let mut parted = Vec::new();
    for policy in &policies {
        let name = policy.name.as_str();
        // One OPA-Envoy per policy: every module is `package envoy.authz`,
        // and two in one OPA would merge.
        let theirs = dir.path().join(name);
        std::fs::create_dir(&theirs).unwrap();
        std::fs::write(theirs.join(format!("{name}.rego")), &policy.module).unwrap();
        let opa = OpaEnvoy::start(&theirs, &opa_path(&policy.query)).await;
        let envoy_opa = Envoy::start(&envoy_config(opa.grpc, upstream, &tenants)).await;
        let at_opa = envoy_opa.listener("main").await;
        for req in &policy.cases {
            let what = format!("{name}: {}", req.name);
            let oracle = observe(&send(at_opa, name, req).await);
            let answer = observe(&send(at_ours, name, req).await);
            assert_expected(&format!("{what} (OPA-Envoy)"), &req.expect, &oracle);
            compared += 1;
            if let Some((ours, why)) = &req.differs {
                assert_expected(&format!("{what} (portcullis: {why})"), ours, &answer);
                assert_ne!(
                    answer, oracle,
                    "{what}: listed as a difference ({why}), but the two agree: update docs/rego.md"
                );
                listed += 1;
                continue;
            }
            let answer = without_listed_differences(answer, &oracle, &what);
            if answer != oracle {
                parted.push(format!(
                    "{what}:\n  portcullis {answer:?}\n  OPA-Envoy  {oracle:?}"
                ));
            }
        }
        drop(envoy_opa);
        if !parted.is_empty() {
            eprintln!("OPA-Envoy's log for {name}:\n{}", opa.process.log());
        }
    }
    assert!(
        parted.is_empty(),
        "{} of {compared} cases differ:\n{}",
        parted.len(),
        parted.join("\n")
    );
    assert!(
        compared >= 40,
        "{compared} cases compared ({listed} listed differences)"
    );
}
