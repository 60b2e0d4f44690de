//! OPA-Envoy as a real peer: the harness that runs a Rego policy behind the
//! same real Envoy portcullis sits behind, so a Rego corpus can later be
//! judged by both. Here it runs the OPA-Envoy primer's kind of policy (method
//! and path) and Envoy enforces its allow and deny.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::peers::OpaEnvoy;
use support::{Envoy, http};

/// GET anything under /people; POST /people only; nothing else.
const POLICY: &str = r#"package envoy.authz

import rego.v1

default allow := false

allow if {
	input.attributes.request.http.method == "GET"
	input.parsed_path[0] == "people"
}

allow if {
	input.attributes.request.http.method == "POST"
	input.parsed_path == ["people"]
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opa_envoy_decides_for_a_real_envoy() {
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("authz.rego"), POLICY).unwrap();
    let opa = OpaEnvoy::start(policies.path(), "envoy/authz/allow").await;
    let (upstream, _echo) = support::start_echo_upstream().await;
    let envoy = Envoy::start(&support::example_envoy_with(opa.grpc, upstream)).await;
    let main = envoy.listener("main").await;
    let host = ("host", "people.example.com");

    let r = http(main, "GET", "/people/alice", &[host], None).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", opa.process.log());
    assert_eq!(r.json()["path"], "/people/alice");
    let r = http(main, "POST", "/people", &[host], Some("{}")).await;
    assert_eq!(r.status, 200, "{r:?}");
    for (method, path) in [
        ("DELETE", "/people/alice"),
        ("POST", "/people/alice"),
        ("GET", "/admin"),
    ] {
        let r = http(main, method, path, &[host], None).await;
        assert_eq!(r.status, 403, "{method} {path}: {r:?}");
    }
}
