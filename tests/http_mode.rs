//! The HTTP listener end to end (issue 19, items 1 and 2): a real Envoy with
//! ext_authz `http_service` (the shipped `examples/envoy/http-service.yaml`),
//! and a real nginx (Debian's, unpacked by the test tooling) with
//! `auth_request` (the shipped `examples/nginx/nginx.conf`), each in front of
//! the header-echoing upstream, with portcullis in-process and tokens minted
//! by an independent JOSE library (jwt-simple).
//!
//! Every process started here is owned by a handle and stopped by it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jwt_simple::prelude::*;
use serde_json::{Value, json};

use portcullis::request::http_check::HttpModeConfig;
use support::{Envoy, assert_denied, header_values, http, upstream_saw};

const ISSUER: &str = "https://idp.initech.example";

/// A tenant that validates its own tokens (HTTP mode carries no `jwt_authn`
/// metadata): reports by team, a body rule, and headers for the upstream.
fn initech_policy(jwks: &str) -> String {
    format!(
        r#"apiVersion: portcullis/v1
tenant: initech
hosts: [initech.example.com]
identity:
  jwt:
    - issuer: {ISSUER}
      audiences: [reports-api]
      algorithms: [ES256]
      jwks: {jwks}
      max_lifetime: 15m
      claim_mappings: {{ team: org.team }}
rules:
  - id: health
    methods: [GET]
    path: /healthz
    effect: allow
    public: true
  - id: read-reports
    methods: [GET]
    path: /reports/{{team}}
    when: '"reports:read" in claims.scope && resource.params.team == claims.team'
    effect: allow
  - id: small-transfers
    methods: [POST]
    path: /transfers
    when: resource.body.amount <= 100
    effect: allow
cors:
  allow_preflight: true
  allow_origins: [https://app.initech.example]
  allow_headers: [authorization]
response:
  headers: {{ x-subject: "{{claims.sub}}", x-team: "{{claims.team}}", x-auth-method: "{{auth_method}}" }}
  remove: [authorization]
"#
    )
}

struct Fixture {
    _dir: tempfile::TempDir,
    key: ES256KeyPair,
    portcullis: portcullis::app::serve::Running,
}

/// portcullis with the initech tenant and the HTTP listener on a free port,
/// trusting `trusted` as proxies.
async fn fixture(trusted: &[&str]) -> Fixture {
    fixture_with(trusted, &[]).await
}

/// [`fixture`] with more tenants' policy files (name, text).
async fn fixture_with(trusted: &[&str], more: &[(&str, String)]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in more {
        std::fs::write(dir.path().join(format!("{name}.yaml")), text).unwrap();
    }
    let key = ES256KeyPair::generate().with_key_id("initech-1");
    let jwks =
        json!({ "keys": [serde_json::from_str::<Value>(&key.public_key().to_jwk()).unwrap()] });
    std::fs::write(
        dir.path().join("initech.yaml"),
        initech_policy(&jwks.to_string()),
    )
    .unwrap();
    let trusted: Vec<_> = trusted.iter().map(|n| n.parse().unwrap()).collect();
    let portcullis = support::start_portcullis_with(dir.path(), |c| {
        c.client_errors = portcullis::foundation::client_errors::ClientErrors::Detailed;
        let mut http = HttpModeConfig::on(SocketAddr::from(([127, 0, 0, 1], 0)));
        http.tenant_header = Some("x-portcullis-tenant".into());
        http.trusted_proxies = trusted;
        c.http = Some(http);
    })
    .await;
    Fixture {
        _dir: dir,
        key,
        portcullis,
    }
}

impl Fixture {
    fn token(&self, sub: &str, team: &str, scope: &[&str]) -> String {
        self.token_of(ISSUER, sub, team, scope)
    }

    fn token_of(&self, issuer: &str, sub: &str, team: &str, scope: &[&str]) -> String {
        let claims = Claims::with_custom_claims(
            json!({ "scope": scope, "org": { "team": team } }),
            jwt_simple::prelude::Duration::from_mins(5),
        )
        .with_issuer(issuer)
        .with_subject(sub)
        .with_audience("reports-api");
        self.key.sign(claims).unwrap()
    }

    fn http_addr(&self) -> SocketAddr {
        self.portcullis.http_addr.expect("HTTP listener bound")
    }
}

/// The shipped HTTP-mode example, on free ports, pointing at this portcullis
/// and upstream, its tenant header naming initech.
fn envoy_config(portcullis: SocketAddr, upstream: SocketAddr) -> String {
    let text =
        std::fs::read_to_string(support::repo_root().join("examples/envoy/http-service.yaml"))
            .unwrap();
    let mut cfg: Value = serde_yaml::from_str(&text).unwrap();
    cfg["admin"]["address"]["socket_address"]["port_value"] = json!(0);
    let resources = &mut cfg["static_resources"];
    resources["listeners"][0]["address"]["socket_address"]["port_value"] = json!(0);
    let filter = &mut resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
        [0]["typed_config"];
    let service = &mut filter["http_service"];
    service["server_uri"]["uri"] = json!(format!("http://{portcullis}"));
    service["authorization_request"]["headers_to_add"][0]["value"] = json!("initech");
    for c in resources["clusters"].as_array_mut().unwrap() {
        match c["name"].as_str() {
            Some("portcullis_http") => *support::cluster_port(c) = json!(portcullis.port()),
            Some("upstream") => *support::cluster_port(c) = json!(upstream.port()),
            other => panic!("unexpected cluster {other:?} in the example"),
        }
    }
    serde_json::to_string_pretty(&cfg).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decides_for_envoy_over_http_service() {
    let f = fixture(&["127.0.0.1/32"]).await;
    let (upstream, _echo) = support::start_echo_upstream().await;
    let envoy = Envoy::start(&envoy_config(f.http_addr(), upstream)).await;
    let main = envoy.listener("main").await;
    let host = ("host", "initech.example.com");
    let alice = format!("Bearer {}", f.token("alice", "blue", &["reports:read"]));

    // Allow: the headers portcullis sets reach the upstream, each once; the
    // client's forged owned headers are replaced; the token does not travel on.
    let r = http(
        main,
        "GET",
        "/reports/blue",
        &[
            host,
            ("authorization", &alice),
            ("x-subject", "mallory"),
            ("x-portcullis-decision-id", "forged"),
            ("x-portcullis-tenant", "globex"),
        ],
        None,
    )
    .await;
    let seen = upstream_saw(&r);
    assert_eq!(seen["path"], "/reports/blue");
    assert_eq!(header_values(&seen, "x-subject"), vec!["alice"]);
    assert_eq!(header_values(&seen, "x-team"), vec!["blue"]);
    assert_eq!(header_values(&seen, "x-auth-method"), vec!["jwt"]);
    let ids = header_values(&seen, "x-portcullis-decision-id");
    assert_eq!(ids.len(), 1, "{seen}");
    assert_ne!(ids[0], "forged");
    assert!(
        header_values(&seen, "authorization").is_empty(),
        "x-envoy-auth-headers-to-remove must strip the token: {seen}"
    );
    assert!(
        header_values(&seen, "x-portcullis-tenant").is_empty(),
        "the client's tenant header must not reach the upstream: {seen}"
    );

    // A public route: the owned headers without a value are removed, so a
    // client's forged x-subject does not reach the upstream.
    let r = http(
        main,
        "GET",
        "/healthz",
        &[host, ("x-subject", "admin")],
        None,
    )
    .await;
    let seen = upstream_saw(&r);
    assert!(header_values(&seen, "x-subject").is_empty(), "{seen}");

    // 401 with the challenge.
    let r = http(main, "GET", "/reports/blue", &[host], None).await;
    assert_denied(&r, 401, "missing_credential");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"portcullis\"")
    );

    // 401 for a bad token, with its challenge.
    let r = http(
        main,
        "GET",
        "/reports/blue",
        &[host, ("authorization", "Bearer not.a.token")],
        None,
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("invalid_token"),
        "{r:?}"
    );

    // 403: a valid caller, another team's reports.
    let r = http(
        main,
        "GET",
        "/reports/red",
        &[host, ("authorization", &alice)],
        None,
    )
    .await;
    assert_denied(&r, 403, "no_matching_rule");
    assert!(r.header("www-authenticate").is_none(), "{r:?}");

    // 400: a path Envoy forwards as is but that is not canonical.
    let r = http(main, "GET", "/healthz;jsessionid=1", &[host], None).await;
    assert_denied(&r, 400, "non_canonical_path");

    // The body rule, with Envoy's with_request_body.
    let json_ct = ("content-type", "application/json");
    let auth = ("authorization", alice.as_str());
    let r = http(
        main,
        "POST",
        "/transfers",
        &[host, json_ct, auth],
        Some(r#"{"amount": 100}"#),
    )
    .await;
    upstream_saw(&r);
    let r = http(
        main,
        "POST",
        "/transfers",
        &[host, json_ct, auth],
        Some(r#"{"amount": 101}"#),
    )
    .await;
    assert_denied(&r, 403, "no_matching_rule");

    // portcullis gone: Envoy's status_on_error, never an allow.
    f.portcullis.stop().await.unwrap();
    let r = http(
        main,
        "GET",
        "/reports/blue",
        &[host, ("authorization", &alice)],
        None,
    )
    .await;
    assert_eq!(r.status, 503, "{r:?}");
}

/// A tenant whose key server is down: its callers get `keys_unavailable`,
/// which is 503 over gRPC.
fn keyless_policy() -> String {
    format!(
        r#"apiVersion: portcullis/v1
tenant: keyless
identity:
  jwt:
    - issuer: https://idp.keyless.example
      audiences: [reports-api]
      algorithms: [ES256]
      jwks_uri: http://127.0.0.1:{port}/jwks.json
rules:
  - {{ id: anyone, path: "/{{rest...}}", effect: allow }}
"#,
        port = support::dead_port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cannot_decide_deny_stays_a_deny_under_failure_mode_allow() {
    let f = fixture_with(&["127.0.0.1/32"], &[("keyless", keyless_policy())]).await;
    let (upstream, _echo) = support::start_echo_upstream().await;
    // The example, failing open and naming the tenant whose keys are gone.
    let mut cfg: Value = serde_json::from_str(&envoy_config(f.http_addr(), upstream)).unwrap();
    let filter = &mut cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["http_filters"][0]["typed_config"];
    filter["failure_mode_allow"] = json!(true);
    filter["http_service"]["authorization_request"]["headers_to_add"][0]["value"] =
        json!("keyless");
    let envoy = Envoy::start(&serde_json::to_string(&cfg).unwrap()).await;
    let main = envoy.listener("main").await;
    let token = format!(
        "Bearer {}",
        f.token_of("https://idp.keyless.example", "alice", "blue", &[])
    );
    let r = http(
        main,
        "GET",
        "/anything",
        &[("host", "api.example"), ("authorization", &token)],
        None,
    )
    .await;
    // Not let through: a 403 with the reason, and a hint to retry.
    assert_denied(&r, 403, "keys_unavailable");
    assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_outside_trusted_proxies_is_refused() {
    // Only 127.0.0.2 is a proxy; this test calls from 127.0.0.1.
    let f = fixture(&["127.0.0.2/32"]).await;
    let alice = format!("Bearer {}", f.token("alice", "blue", &["reports:read"]));
    for (target, headers) in [
        (
            "/forward-auth",
            vec![
                ("x-original-uri", "/reports/blue"),
                ("x-original-method", "GET"),
                ("host", "initech.example.com"),
            ],
        ),
        (
            "/authz/reports/blue",
            vec![("x-portcullis-tenant", "initech")],
        ),
    ] {
        let mut headers = headers;
        headers.push(("authorization", &alice));
        let r = http(f.http_addr(), "GET", target, &headers, None).await;
        assert_denied(&r, 403, "untrusted_forwarded_request");
        // Nothing meant for the upstream is handed out.
        assert!(r.header("x-subject").is_none(), "{r:?}");
    }
    // Outside the prefix and the forward-auth path: not a check at all.
    let r = http(f.http_addr(), "GET", "/elsewhere", &[], None).await;
    assert_eq!(r.status, 404, "{r:?}");
}

/// A running nginx, stopped (by its own handle) when dropped.
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

/// The shipped `examples/nginx/nginx.conf` with this test's addresses, run in
/// the foreground in a temp prefix.
fn nginx_conf(
    dir: &Path,
    listen: SocketAddr,
    portcullis: SocketAddr,
    upstream: SocketAddr,
) -> String {
    let text =
        std::fs::read_to_string(support::repo_root().join("examples/nginx/nginx.conf")).unwrap();
    // The example's three addresses, swapped for this test's; it asks from
    // 127.0.0.2 (`proxy_bind`), the only trusted proxy.
    let text = text
        .replace("127.0.0.1:8090", &listen.to_string())
        .replace("127.0.0.1:9003", &portcullis.to_string())
        .replace("127.0.0.1:8081", &upstream.to_string());
    format!(
        "daemon off;\nmaster_process off;\npid {pid};\nerror_log {err} warn;\n{text}",
        pid = dir.join("nginx.pid").display(),
        err = dir.join("error.log").display(),
    )
    .replace(
        "http {",
        &format!(
            "http {{\n    access_log off;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n",
            d = dir.display()
        ),
    )
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

async fn start_nginx(portcullis: SocketAddr, upstream: SocketAddr) -> Nginx {
    let deadline = Instant::now() + support::READY_TIMEOUT;
    'attempt: loop {
        // A free port can be taken between its release and nginx's bind: then
        // nginx exits saying so, and another port is tried.
        let dir = tempfile::tempdir().unwrap();
        let listen = free_port();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, nginx_conf(dir.path(), listen, portcullis, upstream)).unwrap();
        let child = Command::new(support::debian_tool("nginx"))
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let mut nginx = Nginx {
            child,
            dir,
            addr: listen,
        };
        loop {
            if let Some(status) = nginx.child.try_wait().unwrap() {
                let log = nginx.log();
                assert!(
                    log.contains("Address already in use") && Instant::now() < deadline,
                    "nginx exited with {status}:\n{log}"
                );
                continue 'attempt;
            }
            if tokio::net::TcpStream::connect(listen).await.is_ok() {
                return nginx;
            }
            assert!(
                Instant::now() < deadline,
                "nginx not ready:\n{}",
                nginx.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

#[test]
fn the_nginx_example_passes_nginx_t() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nginx.conf");
    let a = SocketAddr::from(([127, 0, 0, 1], 1));
    std::fs::write(&conf, nginx_conf(dir.path(), free_port(), a, a)).unwrap();
    let out = Command::new(support::debian_tool("nginx"))
        .arg("-t")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decides_for_nginx_auth_request() {
    let f = fixture(&["127.0.0.2/32"]).await;
    let (upstream, _echo) = support::start_echo_upstream().await;
    let nginx = start_nginx(f.http_addr(), upstream).await;
    let host = ("host", "initech.example.com");
    let alice = format!("Bearer {}", f.token("alice", "blue", &["reports:read"]));

    // Allow: the headers nginx copies with auth_request_set reach the
    // upstream, replacing the client's forged ones.
    let r = http(
        nginx.addr,
        "GET",
        "/reports/blue",
        &[
            host,
            ("authorization", &alice),
            ("x-subject", "mallory"),
            ("x-portcullis-decision-id", "forged"),
        ],
        None,
    )
    .await;
    let seen = upstream_saw(&r);
    assert_eq!(seen["path"], "/reports/blue");
    assert_eq!(header_values(&seen, "x-subject"), vec!["alice"], "{seen}");
    assert_eq!(header_values(&seen, "x-team"), vec!["blue"]);
    let ids = header_values(&seen, "x-portcullis-decision-id");
    assert_eq!(ids.len(), 1, "{seen}");
    assert_ne!(ids[0], "forged");

    // A public route: a forged owned header is removed (nginx sends no header
    // whose copied value is empty).
    let r = http(
        nginx.addr,
        "GET",
        "/healthz",
        &[host, ("x-subject", "admin")],
        None,
    )
    .await;
    let seen = upstream_saw(&r);
    assert!(header_values(&seen, "x-subject").is_empty(), "{seen}");

    // 401 reaches the client with the challenge.
    let r = http(nginx.addr, "GET", "/reports/blue", &[host], None).await;
    assert_eq!(r.status, 401, "{r:?}\n{}", nginx.log());
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"portcullis\"")
    );

    // 403 reaches the client.
    let r = http(
        nginx.addr,
        "GET",
        "/reports/red",
        &[host, ("authorization", &alice)],
        None,
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");

    // A preflight portcullis would answer with a 204 is a 403 here: nginx
    // lets any 2xx through, so the preflight must not reach the upstream.
    let r = http(
        nginx.addr,
        "OPTIONS",
        "/reports/blue",
        &[
            host,
            ("origin", "https://app.initech.example"),
            ("access-control-request-method", "GET"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(!r.body.contains("\"path\""), "reached the upstream: {r:?}");

    // A client's X-Original-URI is overwritten by nginx ($request_uri): the
    // path checked is the one requested, so the forgery gains nothing.
    let r = http(
        nginx.addr,
        "GET",
        "/reports/red",
        &[
            host,
            ("authorization", &alice),
            ("x-original-uri", "/reports/blue"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");

    // And straight to portcullis, from an address that is not the proxy, the
    // same forgery is refused.
    let r = http(
        f.http_addr(),
        "GET",
        "/forward-auth",
        &[
            host,
            ("authorization", &alice),
            ("x-original-uri", "/reports/blue"),
            ("x-original-method", "GET"),
        ],
        None,
    )
    .await;
    assert_denied(&r, 403, "untrusted_forwarded_request");

    // The same metrics as gRPC, with the transport as a label.
    let metrics = http(f.portcullis.admin_addr, "GET", "/metrics", &[], None).await;
    let line = |decision: &str, reason: &str| {
        metrics.body.lines().any(|l| {
            l.starts_with("portcullis_decisions_total{")
                && l.contains(&format!("decision=\"{decision}\""))
                && l.contains(&format!("reason=\"{reason}\""))
                && l.contains("transport=\"forward_auth\"")
        })
    };
    assert!(line("allow", "allowed"), "{}", metrics.body);
    assert!(
        line("deny", "untrusted_forwarded_request"),
        "{}",
        metrics.body
    );
}
