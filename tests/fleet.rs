//! A fleet, not a process: two portcullis replicas (separate processes of the
//! built binary) behind one real Envoy, sharing a real Redis (Debian's
//! `redis-server`, started here on a free loopback port with a temporary
//! directory and stopped by its handle). Tokens are minted by jwt-simple and
//! DPoP proofs signed in `support::dpop`, independently of portcullis.
//!
//! Envoy has one listener per replica (`a` → replica A, `b` → replica B), so
//! which replica decides is fixed by the test, not by a balancer's turn.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jwt_simple::prelude::*;
use serde_json::{Value, json};

use support::{Envoy, HttpResponse, dpop, eventually, http, now};

const ISSUER: &str = "https://idp.acme.example";
const GLOBEX_ISSUER: &str = "https://idp.globex.example";
const ORIGIN: &str = "https://api.acme.example";

/// How Redis is reached.
#[derive(Clone)]
enum Mode {
    Plain,
    /// `requirepass`; portcullis reads the password from a file.
    Password(String),
    /// TLS only (`--port 0 --tls-port`), with a CA made here.
    Tls {
        ca: String,
        cert: String,
        key: String,
    },
}

/// A redis-server this test started, killed by its handle.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    mode: Mode,
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Redis {
    async fn start(mode: Mode) -> Redis {
        let mut redis = Redis {
            child: None,
            port: support::dead_port(),
            dir: tempfile::tempdir().unwrap(),
            mode,
        };
        if let Mode::Tls { ca, cert, key } = &redis.mode {
            for (name, pem) in [("ca.pem", ca), ("cert.pem", cert), ("key.pem", key)] {
                std::fs::write(redis.dir.path().join(name), pem).unwrap();
            }
        }
        redis.spawn().await;
        redis
    }

    /// Starts redis-server on `self.port` and waits until it answers PING.
    async fn spawn(&mut self) {
        let dir = self.dir.path();
        let mut cmd = Command::new(support::debian_tool("redis-server"));
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir);
        match &self.mode {
            Mode::Plain => {
                cmd.args(["--port", &self.port.to_string()]);
            }
            Mode::Password(p) => {
                cmd.args(["--port", &self.port.to_string(), "--requirepass", p]);
            }
            Mode::Tls { .. } => {
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(dir.join("cert.pem"))
                    .arg("--tls-key-file")
                    .arg(dir.join("key.pem"))
                    .arg("--tls-ca-cert-file")
                    .arg(dir.join("ca.pem"))
                    .args(["--tls-auth-clients", "no"]);
            }
        }
        let log = std::fs::File::create(dir.join("redis.log")).unwrap();
        self.child = Some(
            cmd.stdout(log)
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server starts"),
        );
        let deadline = Instant::now() + support::READY_TIMEOUT;
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis not ready: {}",
                std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills this test's redis-server (by its handle) and reaps it.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `redis-cli` against this server, its stdout.
    fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(support::debian_tool("redis-cli"));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        match &self.mode {
            Mode::Plain => {}
            Mode::Password(p) => {
                cmd.args(["--no-auth-warning", "-a", p]);
            }
            Mode::Tls { .. } => {
                cmd.arg("--tls")
                    .arg("--cacert")
                    .arg(self.dir.path().join("ca.pem"));
            }
        }
        let out = cmd.args(args).stderr(Stdio::null()).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The `shared_state` block of a replica's config; secrets go in files
    /// under `dir`. `cache_key`: the shared introspection cache's key file.
    fn shared_state(&self, dir: &Path, cache_key: Option<&Path>) -> String {
        let common =
            "timeout: 250ms, circuit: { failures: 1, open_for: 200ms }, revocation_refresh: 1s";
        let redis = match &self.mode {
            Mode::Plain => format!("url: 'redis://127.0.0.1:{}/', {common}", self.port),
            Mode::Password(p) => {
                std::fs::write(dir.join("redis-password"), format!("{p}\n")).unwrap();
                format!(
                    "url: 'redis://127.0.0.1:{}/', password_file: redis-password, {common}",
                    self.port
                )
            }
            Mode::Tls { ca, .. } => {
                std::fs::write(dir.join("redis-ca.pem"), ca).unwrap();
                format!(
                    "url: 'rediss://127.0.0.1:{}/', tls: {{ ca_file: redis-ca.pem }}, {common}",
                    self.port
                )
            }
        };
        let cache = cache_key.map_or(String::new(), |k| {
            format!(", introspection_cache: {{ key_file: '{}' }}", k.display())
        });
        format!("shared_state: {{ redis: {{ {redis} }}{cache} }}\n")
    }

    /// Calls of `command` Redis has served so far (`INFO commandstats`).
    fn calls(&self, command: &str) -> u64 {
        let stats = self.cli(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{command}:calls=");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

/// A portcullis replica: the built binary, `serve --config`, killed by its
/// handle.
struct Replica {
    child: Child,
    grpc: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    async fn start(policies: &Path, shared: Option<&Redis>) -> Replica {
        Replica::start_with(policies, shared, None).await
    }

    /// With the shared introspection cache keyed by the file `cache_key`.
    async fn start_with(
        policies: &Path,
        shared: Option<&Redis>,
        cache_key: Option<&Path>,
    ) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let grpc = SocketAddr::from(([127, 0, 0, 1], support::dead_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], support::dead_port()));
        let mut text = format!(
            "policies: {}\nlisten: {grpc}\nadmin_listen: {admin}\nreload: {{ debounce: 50ms }}\ndecision_log: {{ output: 'off' }}\nclient_errors: detailed\n",
            policies.display()
        );
        if let Some(redis) = shared {
            text.push_str(&redis.shared_state(dir.path(), cache_key));
        }
        let config = dir.path().join("portcullis.yaml");
        std::fs::write(&config, text).unwrap();
        let log = std::fs::File::create(dir.path().join("portcullis.log")).unwrap();
        // The measurements pin replicas to a CPU of their own (taskset execs
        // portcullis in its place: the handle is still portcullis').
        let mut cmd = match std::env::var("FLEET_SERVER_CPU") {
            Ok(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu]).arg(env!("CARGO_BIN_EXE_portcullis"));
                c
            }
            Err(_) => Command::new(env!("CARGO_BIN_EXE_portcullis")),
        };
        let child = cmd
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("portcullis starts");
        let replica = Replica {
            child,
            grpc,
            admin,
            config,
            _dir: dir,
        };
        eventually("the replica to be ready", || async {
            tokio::net::TcpStream::connect(admin).await.is_ok()
                && http(admin, "GET", "/readyz", &[], None).await.status == 200
        })
        .await;
        replica
    }

    async fn admin_json(&self, path: &str) -> Value {
        http(self.admin, "GET", path, &[], None).await.json()
    }
}

/// Two tenants: `acme` takes DPoP-bound tokens and asks for live
/// revocation; `globex` takes bearer tokens and needs no shared state.
struct Policies {
    dir: tempfile::TempDir,
    issuer: ES256KeyPair,
}

impl Policies {
    /// `live`: acme asks for live revocation.
    fn new(live: bool) -> Policies {
        let dir = tempfile::tempdir().unwrap();
        let issuer = ES256KeyPair::generate().with_key_id("idp-1");
        let jwk: Value = serde_json::from_str(&issuer.public_key().to_jwk()).unwrap();
        let jwt = format!(
            "  jwt:\n    - {{ issuer: {ISSUER}, audiences: [orders-api], algorithms: [ES256], jwks: {{ keys: [{jwk}] }} }}\n"
        );
        let live = if live {
            "  live_revocation: true\n"
        } else {
            ""
        };
        std::fs::write(
            dir.path().join("acme.yaml"),
            format!(
                "apiVersion: portcullis/v1\ntenant: acme\nidentity:\n{jwt}  dpop: {{ public_origin: {ORIGIN}, algorithms: [EdDSA] }}\n{live}rules:\n  - {{ id: orders, path: \"/orders/{{id}}\", effect: allow }}\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("globex.yaml"),
            format!(
                "apiVersion: portcullis/v1\ntenant: globex\nidentity:\n{}rules:\n  - {{ id: orders, path: \"/orders/{{id}}\", effect: allow }}\n",
                jwt.replace(ISSUER, GLOBEX_ISSUER)
            ),
        )
        .unwrap();
        Policies { dir, issuer }
    }

    fn token(&self, sub: &str, jkt: Option<&str>) -> String {
        self.token_of(ISSUER, sub, jkt)
    }

    fn token_of(&self, iss: &str, sub: &str, jkt: Option<&str>) -> String {
        let t = now();
        let mut claims =
            json!({"iss": iss, "aud": "orders-api", "sub": sub, "iat": t, "exp": t + 300});
        if let Some(jkt) = jkt {
            claims["cnf"] = json!({ "jkt": jkt });
        }
        self.issuer.sign(support::raw_claims(claims)).unwrap()
    }
}

/// Envoy with a listener per replica; virtual hosts name the tenant in
/// `context_extensions`.
fn envoy_config(a: SocketAddr, b: SocketAddr, upstream: SocketAddr) -> String {
    let cluster = |name: &str, addr: SocketAddr, h2: bool| {
        let mut c = json!({
            "name": name, "type": "STATIC", "connect_timeout": "0.25s",
            "load_assignment": { "cluster_name": name, "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                "socket_address": { "address": "127.0.0.1", "port_value": addr.port() } } } }] }] }
        });
        if h2 {
            c["typed_extension_protocol_options"] = json!({
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": { "http2_protocol_options": {} } } });
        }
        c
    };
    let vhost = |tenant: &str| {
        json!({ "name": tenant, "domains": [format!("{tenant}.example")], "routes": [{
            "match": { "prefix": "/" }, "route": { "cluster": "upstream" },
            "typed_per_filter_config": { "envoy.filters.http.ext_authz": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
                "check_settings": { "context_extensions": { "tenant": tenant } } } } }] })
    };
    let listener = |name: &str, cluster: &str| {
        json!({ "name": name, "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
          "filter_chains": [{ "filters": [{ "name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name,
            "route_config": { "name": "local", "virtual_hosts": [vhost("acme"), vhost("globex"), vhost("initech"), vhost("hooli")] },
            "http_filters": [
              { "name": "envoy.filters.http.ext_authz", "typed_config": {
                  "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                  "transport_api_version": "V3",
                  "grpc_service": { "envoy_grpc": { "cluster_name": cluster }, "timeout": "2s" },
                  "failure_mode_allow": false } },
              { "name": "envoy.filters.http.router", "typed_config": {
                  "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } } ] } }] }] })
    };
    serde_json::to_string(&json!({
        "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } },
        "static_resources": {
            "listeners": [listener("a", "replica_a"), listener("b", "replica_b")],
            "clusters": [cluster("replica_a", a, true), cluster("replica_b", b, true), cluster("upstream", upstream, false)],
        }
    }))
    .unwrap()
}

/// The fleet: Redis (when shared), two replicas, Envoy, an upstream.
struct Fleet {
    policies: Policies,
    a: Replica,
    _b: Replica,
    envoy: Envoy,
    via_a: SocketAddr,
    via_b: SocketAddr,
    _upstream: tokio::task::JoinHandle<()>,
}

impl Fleet {
    async fn start(redis: Option<&Redis>) -> Fleet {
        let policies = Policies::new(redis.is_some());
        let a = Replica::start(policies.dir.path(), redis).await;
        let b = Replica::start(policies.dir.path(), redis).await;
        let (upstream, task) = support::start_echo_upstream().await;
        let envoy = Envoy::start(&envoy_config(a.grpc, b.grpc, upstream)).await;
        let via_a = envoy.listener("a").await;
        let via_b = envoy.listener("b").await;
        Fleet {
            policies,
            a,
            _b: b,
            envoy,
            via_a,
            via_b,
            _upstream: task,
        }
    }

    /// `GET /orders/1` on `tenant` through `via` with a DPoP `token` and `proof`.
    async fn dpop(&self, via: SocketAddr, token: &str, proof: &str) -> HttpResponse {
        let auth = format!("DPoP {token}");
        http(
            via,
            "GET",
            "/orders/1",
            &[
                ("host", "acme.example"),
                ("authorization", &auth),
                ("dpop", proof),
            ],
            None,
        )
        .await
    }

    /// A fresh proof for `client` and `token`, through `via`.
    async fn fresh(&self, via: SocketAddr, client: &dpop::Client, token: &str) -> HttpResponse {
        let proof = client.proof("GET", &format!("{ORIGIN}/orders/1"), token, json!({}));
        self.dpop(via, token, &proof).await
    }

    /// `GET /orders/1` on `globex` (bearer, no shared state) through `via`.
    async fn bearer(&self, via: SocketAddr, token: &str) -> HttpResponse {
        let auth = format!("Bearer {token}");
        http(
            via,
            "GET",
            "/orders/1",
            &[("host", "globex.example"), ("authorization", &auth)],
            None,
        )
        .await
    }
}

fn error(r: &HttpResponse) -> String {
    serde_json::from_str::<Value>(&r.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// `n` CheckRequests of `GET /orders/1` on acme with the DPoP `token`, each
/// with a proof of its own, signed now (before any timing).
fn dpop_checks(
    client: &dpop::Client,
    token: &str,
    n: usize,
) -> Vec<portcullis::foundation::proto::auth::CheckRequest> {
    (0..n)
        .map(|_| {
            let proof = client.proof("GET", &format!("{ORIGIN}/orders/1"), token, json!({}));
            let attributes = json!({
                "contextExtensions": { "tenant": "acme" },
                "request": { "http": { "method": "GET", "host": "api.acme.example", "path": "/orders/1",
                    "headers": { "authorization": format!("DPoP {token}"), "dpop": proof } } }
            });
            portcullis::app::cli::check_request_from_json(&json!({ "attributes": attributes }))
                .unwrap()
        })
        .collect()
}

/// `portcullis revoke` with `config`, as an operator runs it.
fn revoke(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("revoke")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

/// Replay across replicas, one round trip per proof, with any `mode` of
/// reaching Redis.
async fn replay_refused_across_replicas(redis: &Redis, fleet: &Fleet) {
    let client = dpop::Client::new();
    let token = fleet.policies.token("alice", Some(&client.jkt()));
    let proof = client.proof("GET", &format!("{ORIGIN}/orders/1"), &token, json!({}));
    let sets = redis.calls("set");
    let first = fleet.dpop(fleet.via_a, &token, &proof).await;
    assert_eq!(first.status, 200, "{first:?}\n{}", fleet.envoy.log());
    assert_eq!(redis.calls("set") - sets, 1, "one SET per DPoP check");
    // The same proof to the other replica: refused, as on the first one.
    let replayed = fleet.dpop(fleet.via_b, &token, &proof).await;
    assert_eq!(replayed.status, 401, "{replayed:?}");
    assert_eq!(error(&replayed), "dpop_proof_replayed");
    assert!(
        replayed
            .header("www-authenticate")
            .is_some_and(|c| c.starts_with("DPoP ")),
        "{replayed:?}"
    );
    let again = fleet.dpop(fleet.via_a, &token, &proof).await;
    assert_eq!(error(&again), "dpop_proof_replayed");
    // A fresh proof is fine on either.
    assert_eq!(fleet.fresh(fleet.via_b, &client, &token).await.status, 200);
    // Redis holds a hash, never the jti.
    let keys = redis.cli(&["KEYS", "portcullis:replay:*"]);
    assert!(!keys.is_empty() && !keys.contains("p-"), "{keys}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_replay_and_revocation_and_fail_closed_without_redis() {
    let mut redis = Redis::start(Mode::Plain).await;
    let fleet = Fleet::start(Some(&redis)).await;
    replay_refused_across_replicas(&redis, &fleet).await;

    // Live revocation: pushed once, honoured by both replicas within the
    // bound (pub/sub, or the 1 s full read here), with no file changed.
    let client = dpop::Client::new();
    let mallory = fleet.policies.token("mallory", Some(&client.jkt()));
    assert_eq!(
        fleet.fresh(fleet.via_a, &client, &mallory).await.status,
        200
    );
    let pushed = Instant::now();
    let out = revoke(
        &fleet.a.config,
        &["--tenant", "acme", "--sub", "mallory", "--until", "1h"],
    );
    assert!(out.status.success(), "{out:?}");
    for via in [fleet.via_a, fleet.via_b] {
        eventually("the revocation on both replicas", || async {
            error(&fleet.fresh(via, &client, &mallory).await) == "token_revoked"
        })
        .await;
    }
    eprintln!(
        "revocation honoured by both replicas after {:?}",
        pushed.elapsed()
    );
    // Another subject of the tenant is untouched.
    let alice = fleet.policies.token("alice", Some(&client.jkt()));
    assert_eq!(fleet.fresh(fleet.via_b, &client, &alice).await.status, 200);
    let policies = fleet.a.admin_json("/policies").await;
    assert_eq!(policies["revocation_generation"], 1, "{policies}");
    assert_eq!(
        policies["tenants"].as_array().unwrap().len(),
        2,
        "{policies}"
    );

    // Redis down: the DPoP tenant cannot decide (503), the other tenant
    // does not need Redis and keeps working; /readyz and metrics say so.
    redis.stop();
    let down = fleet.fresh(fleet.via_a, &client, &alice).await;
    assert_eq!(down.status, 503, "{down:?}");
    assert_eq!(error(&down), "shared_state_unavailable");
    let bearer = fleet.policies.token_of(GLOBEX_ISSUER, "alice", None);
    for via in [fleet.via_a, fleet.via_b] {
        let r = fleet.bearer(via, &bearer).await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let ready = http(fleet.a.admin, "GET", "/readyz", &[], None).await;
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(ready.body.contains("shared state unavailable"), "{ready:?}");
    let metrics = http(fleet.a.admin, "GET", "/metrics", &[], None).await.body;
    assert!(
        metrics.contains("portcullis_shared_state_up 0"),
        "{metrics}"
    );
    // Answered fast: the circuit is open, no timeout is waited out.
    let t = Instant::now();
    let open = fleet.fresh(fleet.via_b, &client, &alice).await;
    assert_eq!(error(&open), "shared_state_unavailable");
    eprintln!("a check with the circuit open took {:?}", t.elapsed());

    // Redis back on the same port: recovery, no restart of either replica.
    redis.spawn().await;
    for via in [fleet.via_a, fleet.via_b] {
        eventually("recovery once Redis is back", || async {
            fleet.fresh(via, &client, &alice).await.status == 200
        })
        .await;
    }
    eventually("ready again", || async {
        http(fleet.a.admin, "GET", "/readyz", &[], None)
            .await
            .status
            == 200
    })
    .await;
}

/// The control: the same two replicas without shared state accept a proof
/// replayed to the other one. This is what the shared cache fixes, and what
/// the test above would see if replay were not shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_shared_state_a_proof_replayed_to_the_other_replica_passes() {
    let policies_fleet = Fleet::start(None).await;
    let fleet = &policies_fleet;
    let client = dpop::Client::new();
    let token = fleet.policies.token("alice", Some(&client.jkt()));
    let proof = client.proof("GET", &format!("{ORIGIN}/orders/1"), &token, json!({}));
    assert_eq!(fleet.dpop(fleet.via_a, &token, &proof).await.status, 200);
    // Each replica remembers only its own proofs.
    assert_eq!(fleet.dpop(fleet.via_b, &token, &proof).await.status, 200);
    assert_eq!(
        error(&fleet.dpop(fleet.via_a, &token, &proof).await),
        "dpop_proof_replayed"
    );
    let policies = fleet.a.admin_json("/policies").await;
    assert!(policies["revocation_generation"].is_null(), "{policies}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_with_a_password_from_a_file() {
    let redis = Redis::start(Mode::Password("s3cret-pass".into())).await;
    let fleet = Fleet::start(Some(&redis)).await;
    replay_refused_across_replicas(&redis, &fleet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // Distinct subject names, or OpenSSL (Redis) takes the leaf for self-signed.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "portcullis fleet test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "redis.test");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let redis = Redis::start(Mode::Tls {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
    .await;
    let fleet = Fleet::start(Some(&redis)).await;
    replay_refused_across_replicas(&redis, &fleet).await;
}

/// One replica in process on `redis`: the policy store of `policies`, the
/// shared store with `settings` added to its config, and a pipeline on both.
/// The full reads are the test's to make (no follow loop runs).
struct InProcess {
    pipeline: portcullis::pipeline::Pipeline,
    config: portcullis::transport::shared_state::RedisConfig,
    shared: std::sync::Arc<portcullis::transport::shared_state::RedisState>,
}

impl InProcess {
    fn start(redis: &Redis, policies: &Policies, settings: &str) -> InProcess {
        use portcullis::identity::shared_state::SharedState;
        use std::sync::Arc;
        let store = Arc::new(portcullis::tenants::store::PolicyStore::new(
            policies.dir.path(),
        ));
        let status = store.reload();
        assert!(status.errors.is_empty(), "{:?}", status.error_lines());
        let config: portcullis::transport::shared_state::RedisConfig = serde_yaml::from_str(
            &format!("{{ url: 'redis://127.0.0.1:{}/', {settings} }}", redis.port),
        )
        .unwrap();
        config.validate().unwrap();
        let shared = Arc::new(
            portcullis::transport::shared_state::RedisState::new(&config, Default::default())
                .unwrap(),
        );
        let pipeline = portcullis::pipeline::Pipeline::new(store, Default::default())
            .with_shared_state(Some(Arc::clone(&shared) as Arc<dyn SharedState>));
        InProcess {
            pipeline,
            config,
            shared,
        }
    }

    /// The reason acme's pipeline gives `GET /orders/1` with a bearer `token`.
    async fn bearer(&self, token: &str) -> &'static str {
        let attributes = json!({
            "contextExtensions": { "tenant": "acme" },
            "request": { "http": { "method": "GET", "host": "api.acme.example", "path": "/orders/1",
                "headers": { "authorization": format!("Bearer {token}") } } }
        });
        let request =
            portcullis::app::cli::check_request_from_json(&json!({ "attributes": attributes }))
                .unwrap();
        let decision = self
            .pipeline
            .check_async(&request, Duration::from_secs(2))
            .await;
        decision.reason.code()
    }

    /// `portcullis revoke` of acme's `kind` `value` until `until`, as the CLI
    /// does it.
    async fn revoke(&self, kind: &str, value: &str, until: u64) -> Result<u64, String> {
        portcullis::transport::shared_state::push_revocation(
            &self.config,
            "acme",
            kind,
            value,
            until,
            now(),
        )
        .await
    }
}

/// `fail_open_revocation_only` serves on the last copy once it is too old to
/// vouch for: what was revoked stays revoked, the others are let through.
/// (`fail_closed`, the default, answers 503 instead.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_revocation_only_serves_on_the_last_copy_when_stale() {
    use portcullis::identity::shared_state::SharedState;
    let redis = Redis::start(Mode::Plain).await;
    let policies = Policies::new(true);
    let open = InProcess::start(
        &redis,
        &policies,
        "revocation_refresh: 50ms, revocation_on_unavailable: fail_open_revocation_only",
    );
    let closed = InProcess::start(&redis, &policies, "revocation_refresh: 50ms");
    open.revoke("sub", "mallory", u64::MAX).await.unwrap();
    let (mallory, alice) = (
        policies.token("mallory", None),
        policies.token("alice", None),
    );
    for replica in [&open, &closed] {
        replica.shared.refresh_revocations().await.unwrap();
        assert_eq!(replica.bearer(&mallory).await, "token_revoked");
        assert_eq!(replica.bearer(&alice).await, "allowed");
    }
    // No further read: the copies age past twice the refresh.
    eventually("the copies to go stale", || async {
        open.shared.live_revocations("acme").is_err()
            && closed.shared.live_revocations("acme").is_err()
    })
    .await;
    assert_eq!(open.bearer(&mallory).await, "token_revoked");
    assert_eq!(open.bearer(&alice).await, "allowed");
    assert!(open.shared.revocations_current(), "it chose to serve stale");
    assert_eq!(closed.bearer(&mallory).await, "shared_state_unavailable");
    assert_eq!(closed.bearer(&alice).await, "shared_state_unavailable");
    assert!(!closed.shared.revocations_current());
}

/// The same for a token a Rego policy verifies itself (`io.jwt.*`): under
/// `fail_open_revocation_only` a stale copy still revokes what it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_revocation_only_serves_io_jwt_on_the_last_copy_when_stale() {
    use portcullis::identity::shared_state::SharedState;
    const RJWT_ISSUER: &str = "https://idp.rjwt.example";
    let redis = Redis::start(Mode::Plain).await;
    let policies = Policies::new(true);
    let jwk: Value = serde_json::from_str(&policies.issuer.public_key().to_jwk()).unwrap();
    std::fs::write(
        policies.dir.path().join("rjwt.yaml"),
        format!(
            "apiVersion: portcullis/v1\ntenant: rjwt\nidentity:\n  jwt:\n    - {{ issuer: {RJWT_ISSUER}, audiences: [orders-api], algorithms: [ES256], jwks: {{ keys: [{jwk}] }} }}\n  live_revocation: true\npolicy:\n  rego:\n    files: [rjwt.rego]\n"
        ),
    )
    .unwrap();
    std::fs::write(
        policies.dir.path().join("rjwt.rego"),
        "package envoy.authz\n\ndefault allow := false\n\nallow if {\n\t[valid, _, _] := io.jwt.decode_verify(input.attributes.request.http.headers[\"x-token\"], {})\n\tvalid\n}\n",
    )
    .unwrap();
    let open = InProcess::start(
        &redis,
        &policies,
        "revocation_refresh: 50ms, revocation_on_unavailable: fail_open_revocation_only",
    );
    portcullis::transport::shared_state::push_revocation(
        &open.config,
        "rjwt",
        "sub",
        "mallory",
        u64::MAX,
        now(),
    )
    .await
    .unwrap();
    open.shared.refresh_revocations().await.unwrap();
    let verify = |token: String| {
        let attributes = json!({
            "contextExtensions": { "tenant": "rjwt" },
            "request": { "http": { "method": "GET", "host": "api.acme.example", "path": "/orders/1",
                "headers": { "x-token": token } } }
        });
        let request =
            portcullis::app::cli::check_request_from_json(&json!({ "attributes": attributes }))
                .unwrap();
        let pipeline = open.pipeline.clone();
        async move {
            pipeline
                .check_async(&request, Duration::from_secs(2))
                .await
                .reason
                .allows()
        }
    };
    let (mallory, alice) = (
        policies.token_of(RJWT_ISSUER, "mallory", None),
        policies.token_of(RJWT_ISSUER, "alice", None),
    );
    assert!(!verify(mallory.clone()).await);
    assert!(verify(alice.clone()).await);
    eventually("the copy to go stale", || async {
        open.shared.live_revocations("rjwt").is_err()
    })
    .await;
    assert!(!verify(mallory).await, "a stale copy still revokes");
    assert!(verify(alice).await);
}

/// An AuthZEN asker's token is checked against the live revocations of the
/// tenant it asks for, as a caller's is at the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authzen_askers_are_checked_against_live_revocations() {
    use portcullis::foundation::reason::Reason;
    use portcullis::transport::askers::{Asker, authenticate};
    let redis = Redis::start(Mode::Plain).await;
    let policies = Policies::new(true);
    let replica = InProcess::start(&redis, &policies, "revocation_refresh: 10s");
    let askers = [Asker {
        subject: "orders-service".into(),
        issuer: None,
        tenants: vec!["acme".into()],
    }];
    let auth = format!("Bearer {}", policies.token("orders-service", None));
    let ask = || {
        authenticate(
            &replica.pipeline,
            &askers,
            "acme",
            Some(&auth),
            Duration::from_secs(2),
        )
    };
    // Nothing read yet: the replica cannot vouch that the asker is not revoked.
    assert_eq!(ask().await, Err(Reason::SharedStateUnavailable));
    replica.shared.refresh_revocations().await.unwrap();
    assert_eq!(ask().await, Ok("orders-service".to_string()));
    replica
        .revoke("sub", "orders-service", now() + 3600)
        .await
        .unwrap();
    replica.shared.refresh_revocations().await.unwrap();
    assert_eq!(ask().await, Err(Reason::TokenRevoked));
}

/// The field of acme's `kind` `value` in the live revocations' hash.
fn live_field(kind: &str, value: &str) -> String {
    json!(["acme", kind, value]).to_string()
}

/// Revocation reads never move the DPoP replay circuit: a revocation key of
/// the wrong type fails every read closed (and the push, with a clear
/// message), while replay keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_revocation_key_fails_closed_without_taking_replay_down() {
    use portcullis::identity::shared_state::{SharedState, Unavailable};
    let redis = Redis::start(Mode::Plain).await;
    let policies = Policies::new(true);
    let replica = InProcess::start(&redis, &policies, "circuit: { failures: 1, open_for: 60s }");
    assert_eq!(redis.cli(&["SET", "portcullis:revoked", "x"]).trim(), "OK");
    for _ in 0..3 {
        assert!(replica.shared.refresh_revocations().await.is_err());
    }
    assert!(replica.shared.is_up(), "the replay circuit stays closed");
    assert_eq!(
        replica.shared.refresh_revocations().await,
        Err(Unavailable("the live revocation key is not a hash"))
    );
    assert!(replica.shared.live_revocations("acme").is_err());
    assert_eq!(
        replica.bearer(&policies.token("alice", None)).await,
        "shared_state_unavailable"
    );
    let key = "0".repeat(64);
    assert_eq!(
        replica
            .shared
            .record_once(&key, Duration::from_secs(5))
            .await,
        Ok(true)
    );
    assert_eq!(
        replica
            .shared
            .record_once(&key, Duration::from_secs(5))
            .await,
        Ok(false)
    );
    let e = replica
        .revoke("sub", "mallory", u64::MAX)
        .await
        .unwrap_err();
    assert!(
        e.contains("WRONGTYPE") && e.contains("portcullis:revoked"),
        "{e}"
    );
    assert_eq!(redis.cli(&["GET", "portcullis:revoked"]).trim(), "x");
}

/// The live revocations are bounded: `revoke` refuses one beyond the bound
/// (expired entries make room), and a replica that finds more than the bound
/// (written by something else) reads none and fails closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_revocations_are_bounded() {
    use portcullis::identity::shared_state::SharedState;
    use portcullis::transport::shared_state::MAX_LIVE_REVOCATIONS;
    let redis = Redis::start(Mode::Plain).await;
    let policies = Policies::new(true);
    let replica = InProcess::start(&redis, &policies, "revocation_refresh: 10s");
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", redis.port)).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let later = (now() + 3600).to_string();
    let mut fill = redis::cmd("HSET");
    fill.arg("portcullis:revoked");
    for i in 0..MAX_LIVE_REVOCATIONS - 1 {
        fill.arg(live_field("jti", &format!("j{i}"))).arg(&later);
    }
    // One that has run out, the last slot.
    fill.arg(live_field("jti", "old")).arg(now() - 10);
    let () = fill.query_async(&mut conn).await.unwrap();
    // The expired entry makes room for one.
    replica.revoke("sub", "mallory", u64::MAX).await.unwrap();
    assert_eq!(
        redis
            .cli(&["HEXISTS", "portcullis:revoked", &live_field("jti", "old")])
            .trim(),
        "0"
    );
    let e = replica.revoke("sub", "eve", u64::MAX).await.unwrap_err();
    assert!(e.contains(&MAX_LIVE_REVOCATIONS.to_string()), "{e}");
    assert_eq!(
        redis
            .cli(&["HEXISTS", "portcullis:revoked", &live_field("sub", "eve")])
            .trim(),
        "0"
    );
    // Renewing one already there adds nothing, and goes.
    replica.revoke("jti", "j0", u64::MAX).await.unwrap();
    replica.shared.refresh_revocations().await.unwrap();
    let list = replica.shared.live_revocations("acme").unwrap().unwrap();
    assert_eq!(list.len(), MAX_LIVE_REVOCATIONS);
    // One more, written around portcullis: the replica reads none of it,
    // keeps its copy, and fails closed once that copy is stale.
    let () = redis::cmd("HSET")
        .arg("portcullis:revoked")
        .arg(live_field("sub", "eve"))
        .arg(&later)
        .query_async(&mut conn)
        .await
        .unwrap();
    let e = replica.shared.refresh_revocations().await.unwrap_err();
    assert_eq!(e.0, "too many live revocations");
    let held = replica.shared.last_revocations("acme").unwrap();
    assert_eq!(held.len(), MAX_LIVE_REVOCATIONS, "the copy held is kept");
}

/// Two `revoke`s at once neither lose nor shorten each other: re-revoking
/// an entry that ran out, for ever and for an hour, while another is
/// written, always ends for ever; and a full read's generation is the hash's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_revokes_neither_lose_nor_shorten_an_entry() {
    use portcullis::identity::shared_state::SharedState;
    use std::sync::Arc;
    let redis = Redis::start(Mode::Plain).await;
    let policies = Policies::new(true);
    let replica = Arc::new(InProcess::start(
        &redis,
        &policies,
        "revocation_refresh: 10s",
    ));
    const ROUNDS: usize = 60;
    for round in 0..ROUNDS {
        let sub = format!("s{round}");
        let spawn = |kind: &'static str, value: String, until: u64| {
            let replica = Arc::clone(&replica);
            tokio::spawn(async move { replica.revoke(kind, &value, until).await })
        };
        let hour = now() + 3600;
        let pushes = [
            spawn("sub", sub.clone(), u64::MAX),
            spawn("sub", sub.clone(), hour),
            spawn("jti", format!("j{round}"), hour),
        ];
        for push in pushes {
            push.await.unwrap().unwrap();
        }
        assert_eq!(
            redis
                .cli(&["HGET", "portcullis:revoked", &live_field("sub", &sub)])
                .trim(),
            u64::MAX.to_string(),
            "round {round}: the revocation for ever was lost or shortened"
        );
    }
    // So far 2 entries and 3 generations a round. Now one new entry per
    // generation, read all along: every read sees entries + ROUNDS equal
    // to its generation, or the generation was read apart from the hash.
    const MORE: u64 = 200;
    let reader = {
        let replica = Arc::clone(&replica);
        tokio::spawn(async move {
            let last = 3 * ROUNDS as u64 + MORE;
            let mut reads = 0;
            loop {
                replica.shared.refresh_revocations().await.unwrap();
                let entries = replica
                    .shared
                    .live_revocations("acme")
                    .unwrap()
                    .map_or(0, |l| l.len() as u64);
                let generation = replica.shared.revocation_generation();
                assert_eq!(entries + ROUNDS as u64, generation, "after {reads} reads");
                reads += 1;
                if generation == last {
                    return reads;
                }
            }
        })
    };
    for i in 0..MORE {
        replica
            .revoke("client_id", &format!("c{i}"), now() + 3600)
            .await
            .unwrap();
    }
    let reads = reader.await.unwrap();
    eprintln!("{reads} full reads while revoking");
}

/// Drift: replicas on different files are told apart, naming the tenant;
/// on the same files they agree, by `/policies`, the metric and the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_status_names_the_tenant_that_differs() {
    let policies = Policies::new(false);
    let a = Replica::start(policies.dir.path(), None).await;
    let b = Replica::start(policies.dir.path(), None).await;
    let status = |replicas: &[&Replica]| {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("fleet-status")
            .args(replicas.iter().map(|r| format!("http://{}", r.admin)))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // The same files (and the same config but for its ports: the config
    // digest differs, and is named).
    let (code, out) = status(&[&a, &b]);
    assert_eq!(code, Some(1), "{out}");
    assert!(!out.contains("tenant "), "{out}");
    assert!(out.contains("differs: server config"), "{out}");
    let (code, out) = status(&[&a, &a]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("all 2 replicas serve the same"), "{out}");

    // A third replica on a copy of the files with globex changed.
    let other = tempfile::tempdir().unwrap();
    for name in ["acme.yaml", "globex.yaml"] {
        let mut text = std::fs::read_to_string(policies.dir.path().join(name)).unwrap();
        if name == "globex.yaml" {
            text.push_str("# changed\n");
        }
        std::fs::write(other.path().join(name), text).unwrap();
    }
    let c = Replica::start(other.path(), None).await;
    let (code, out) = status(&[&a, &c]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("differs: tenant globex"), "{out}");
    assert!(!out.contains("tenant acme"), "{out}");
    let (pa, pc) = (
        a.admin_json("/policies").await,
        c.admin_json("/policies").await,
    );
    assert_ne!(pa["digest"], pc["digest"]);
    let gauge = |m: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix("portcullis_served_digest "))
            .map(str::to_string)
    };
    let ma = http(a.admin, "GET", "/metrics", &[], None).await.body;
    let mc = http(c.admin, "GET", "/metrics", &[], None).await.body;
    assert!(gauge(&ma).is_some(), "{ma}");
    assert_ne!(gauge(&ma), gauge(&mc));
    // An unreachable replica is an error of its own.
    let (code, _) = {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args([
                "fleet-status",
                &format!("http://127.0.0.1:{}", support::dead_port()),
            ])
            .output()
            .unwrap();
        (out.status.code(), ())
    };
    assert_eq!(code, Some(69));
}

/// Measurement, not a test (`cargo test --release --test fleet -- --ignored
/// --nocapture measure`): a DPoP-bound check in process with the shared
/// replay cache (a real Redis on loopback) against the in-memory one, in one
/// run; and how long a revocation takes to reach two replicas. Figures go to
/// BENCHMARKS.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn measure_shared_replay_and_revocation_propagation() {
    use portcullis::pipeline::Pipeline;
    use portcullis::request::tenancy::TenantResolver;
    use portcullis::tenants::store::PolicyStore;
    use std::sync::Arc;

    const N: usize = 5000;
    let redis = Redis::start(Mode::Plain).await;
    let policies = Policies::new(false);
    let store = Arc::new(PolicyStore::new(policies.dir.path()));
    assert!(store.reload().errors.is_empty());
    let config: portcullis::transport::shared_state::RedisConfig =
        serde_yaml::from_str(&format!("{{ url: 'redis://127.0.0.1:{}/' }}", redis.port)).unwrap();
    let shared = Arc::new(
        portcullis::transport::shared_state::RedisState::new(&config, Default::default()).unwrap(),
    );
    let memory = Pipeline::new(Arc::clone(&store), TenantResolver::default());
    let with_redis = Pipeline::new(Arc::clone(&store), TenantResolver::default())
        .with_shared_state(Some(
            shared as Arc<dyn portcullis::identity::shared_state::SharedState>,
        ));
    let client = dpop::Client::new();
    let token = policies.token("alice", Some(&client.jkt()));
    let requests = |n: usize| dpop_checks(&client, &token, n);
    let run = |p: &Pipeline, reqs: Vec<portcullis::foundation::proto::auth::CheckRequest>| {
        let p = p.clone();
        async move {
            let mut took = Vec::with_capacity(reqs.len());
            let all = Instant::now();
            for r in &reqs {
                let t = Instant::now();
                let d = p.check_async(r, Duration::from_secs(1)).await;
                took.push(t.elapsed());
                assert!(d.reason.allows(), "{:?}", d.reason);
            }
            let total = all.elapsed();
            took.sort();
            (
                took[took.len() / 2],
                took[took.len() * 99 / 100],
                reqs.len() as f64 / total.as_secs_f64(),
            )
        }
    };
    // Warm both, then alternate rounds so drift in the machine hits both.
    run(&memory, requests(200)).await;
    run(&with_redis, requests(200)).await;
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let m = run(&memory, requests(N)).await;
        let sets = redis.calls("set");
        let r = run(&with_redis, requests(N)).await;
        let per_check = (redis.calls("set") - sets) as f64 / N as f64;
        rounds.push((m, r, per_check));
    }
    for (m, r, per_check) in &rounds {
        eprintln!(
            "in-memory p50 {:?} p99 {:?} {:.0}/s | redis p50 {:?} p99 {:?} {:.0}/s | added p50 {:?} p99 {:?} | throughput ratio {:.2} | SET per check {per_check}",
            m.0,
            m.1,
            m.2,
            r.0,
            r.1,
            r.2,
            r.0.saturating_sub(m.0),
            r.1.saturating_sub(m.1),
            r.2 / m.2
        );
    }

    // Revocation propagation across two replica processes: push, then poll
    // both (every millisecond) until each refuses.
    let fleet = Fleet::start(Some(&redis)).await;
    let mut times = Vec::new();
    for i in 0..20 {
        let sub = format!("m{i}");
        let t = fleet.policies.token(&sub, Some(&client.jkt()));
        assert_eq!(fleet.fresh(fleet.via_a, &client, &t).await.status, 200);
        let pushed = Instant::now();
        let out = revoke(&fleet.a.config, &["--tenant", "acme", "--sub", &sub]);
        assert!(out.status.success());
        let written = pushed.elapsed();
        let mut left = vec![fleet.via_a, fleet.via_b];
        while !left.is_empty() {
            let via = left[0];
            if error(&fleet.fresh(via, &client, &t).await) == "token_revoked" {
                left.remove(0);
            } else {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        times.push((pushed.elapsed(), written));
    }
    times.sort();
    eprintln!(
        "revocation propagation over {} pushes (from the CLI's start; the CLI itself took {:?} to {:?}): median {:?}, worst {:?}",
        times.len(),
        times.iter().map(|t| t.1).min().unwrap(),
        times.iter().map(|t| t.1).max().unwrap(),
        times[times.len() / 2].0,
        times[times.len() - 1].0
    );
}

/// `revoke` refuses what it cannot do, with the documented exit codes, and
/// never prints the URL it was given.
#[test]
fn revoke_without_a_store_or_with_bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("p")).unwrap();
    let plain = dir.path().join("plain.yaml");
    std::fs::write(&plain, "policies: p\n").unwrap();
    let out = revoke(&plain, &["--tenant", "acme", "--sub", "x"]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("shared_state"));

    let dead = dir.path().join("dead.yaml");
    std::fs::write(
        &dead,
        "policies: p\nshared_state: { redis: { url_file: url } }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("url"),
        format!("redis://:hunter2@127.0.0.1:{}/", support::dead_port()),
    )
    .unwrap();
    let out = revoke(&dead, &["--tenant", "acme", "--jti", "j1"]);
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("hunter2"),
        "{out:?}"
    );
    let out = revoke(
        &dead,
        &["--tenant", "acme", "--jti", "j1", "--until", "soon"],
    );
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    // Exactly one of --jti, --sub, --client-id.
    let out = revoke(&dead, &["--tenant", "acme"]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let out = revoke(&dead, &["--tenant", "acme", "--jti", "a", "--sub", "b"]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
}

// --- Issue 17 item 4: the shared introspection cache ------------------------

/// An RFC 7662 endpoint on loopback, the identity provider's stand-in (as in
/// tests/jwt.rs): `tok-<sub>` is active for `<sub>` with `reports:read` and
/// 300 s to live (no `iss`: each tenant names its own), anything else
/// inactive. It checks portcullis' client
/// credentials and counts the calls it answers.
struct Idp {
    addr: SocketAddr,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

impl Idp {
    async fn start() -> Idp {
        use axum::routing::post;
        use base64::Engine as _;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = std::sync::Arc::clone(&calls);
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("portcullis:s3cret")
        );
        let app = axum::Router::new().route(
            "/introspect",
            post(move |headers: axum::http::HeaderMap, body: String| {
                counted.fetch_add(1, Ordering::SeqCst);
                let authorized = headers.get("authorization").and_then(|v| v.to_str().ok())
                    == Some(expected.as_str());
                let token = body
                    .split('&')
                    .find_map(|p| p.strip_prefix("token="))
                    .map(|t| {
                        percent_encoding::percent_decode_str(t)
                            .decode_utf8_lossy()
                            .into_owned()
                    })
                    .unwrap_or_default();
                async move {
                    if !authorized {
                        return (axum::http::StatusCode::UNAUTHORIZED, String::new());
                    }
                    let answer = match token.strip_prefix("tok-") {
                        Some(sub) => json!({
                            "active": true, "sub": sub, "scope": "reports:read",
                            "exp": now() + 300, "client_id": "app-1",
                        }),
                        None => json!({ "active": false }),
                    };
                    (axum::http::StatusCode::OK, answer.to_string())
                }
            }),
        );
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Idp {
            addr,
            calls,
            _task: task,
        }
    }

    /// Not an endpoint of its own: counts the calls it forwards to `target`
    /// (a real identity provider's introspection endpoint).
    async fn forwarding(target: String) -> Idp {
        use axum::routing::post;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = std::sync::Arc::clone(&calls);
        let client = reqwest::Client::new();
        let app = axum::Router::new().route(
            "/introspect",
            post(move |headers: axum::http::HeaderMap, body: String| {
                counted.fetch_add(1, Ordering::SeqCst);
                let mut request = client
                    .post(&target)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body);
                if let Some(auth) = headers.get("authorization") {
                    request = request.header("authorization", auth.as_bytes());
                }
                async move {
                    let answer = request.send().await.unwrap();
                    let status =
                        axum::http::StatusCode::from_u16(answer.status().as_u16()).unwrap();
                    (status, answer.text().await.unwrap())
                }
            }),
        );
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Idp {
            addr,
            calls,
            _task: task,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Two tenants that introspect at `idp`: `initech` asks for live
/// revocation, `hooli` needs nothing else of the shared store.
fn introspection_policies(idp: SocketAddr) -> tempfile::TempDir {
    introspection_policies_for(idp, None)
}

/// As [`introspection_policies`]; with `issuer`, both tenants name it (and
/// share it) and allow any active token: a real identity provider's answers.
fn introspection_policies_for(idp: SocketAddr, issuer: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client-secret"), "s3cret\n").unwrap();
    for (tenant, live) in [("initech", true), ("hooli", false)] {
        let live = if live {
            "  live_revocation: true\n"
        } else {
            ""
        };
        std::fs::write(
            dir.path().join(format!("{tenant}.yaml")),
            format!(
                "apiVersion: portcullis/v1\ntenant: {tenant}\n{shared}identity:\n  introspection: {{ endpoint: 'http://{idp}/introspect', issuer: '{iss}', client_id: portcullis, client_secret_file: client-secret, cache_ttl: 60s }}\n{live}rules:\n  - {{ id: reports, path: /reports, {when}effect: allow }}\n",
                shared = issuer.map_or(String::new(), |i| format!("shared_issuers: ['{i}']\n")),
                iss = issuer.map_or(format!("https://as.{tenant}.example"), str::to_string),
                when = if issuer.is_some() {
                    ""
                } else {
                    "when: '\"reports:read\" in claims.scope', "
                },
            ),
        )
        .unwrap();
    }
    dir
}

/// A fresh fleet secret for the shared introspection cache, in its own
/// directory (a Secret mount, never the policy directory).
fn cache_key() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("introspection-cache.key");
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    std::fs::write(&key, secret).unwrap();
    (dir, key)
}

/// `GET /reports` on `tenant` with a bearer `token`, through `via`.
async fn reports(via: SocketAddr, tenant: &str, token: &str) -> HttpResponse {
    let host = format!("{tenant}.example");
    let auth = format!("Bearer {token}");
    http(
        via,
        "GET",
        "/reports",
        &[("host", &host), ("authorization", &auth)],
        None,
    )
    .await
}

/// A label-free counter of `replica`'s `/metrics`.
async fn counter(replica: &Replica, name: &str) -> u64 {
    let body = http(replica.admin, "GET", "/metrics", &[], None).await.body;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Item 4 of issue 17: two replicas with `introspection_cache` make one call
/// to the identity provider for a token, not two; Redis holds a keyed hash
/// of the token and a sealed answer that lives no longer than `cache_ttl`;
/// a revoked token (live or by file) is refused on a shared hit; Redis down
/// is a miss that asks the identity provider, not a 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_introspection_answers_and_revocation_still_wins() {
    let mut redis = Redis::start(Mode::Plain).await;
    let idp = Idp::start().await;
    let policies = introspection_policies(idp.addr);
    let (_keys, key) = cache_key();
    let a = Replica::start_with(policies.path(), Some(&redis), Some(&key)).await;
    let b = Replica::start_with(policies.path(), Some(&redis), Some(&key)).await;
    let (upstream, _upstream) = support::start_echo_upstream().await;
    let envoy = Envoy::start(&envoy_config(a.grpc, b.grpc, upstream)).await;
    let (via_a, via_b) = (envoy.listener("a").await, envoy.listener("b").await);
    let stored = |redis: &Redis| {
        let keys = redis.cli(&["KEYS", "portcullis:introspection:*"]);
        keys.lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    };

    // One call for two replicas: B reads A's answer.
    let r = reports(via_a, "initech", "tok-alice").await;
    assert_eq!(r.status, 200, "{r:?} {}", a.admin_json("/policies").await);
    assert_eq!(idp.calls(), 1);
    eventually("A's answer stored for the others", || async {
        stored(&redis).len() == 1
    })
    .await;
    let r = reports(via_b, "initech", "tok-alice").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(idp.calls(), 1, "B asked the identity provider again");
    let hits = "portcullis_shared_introspection_cache_hits_total";
    assert_eq!(counter(&b, hits).await, 1);

    // What Redis holds: neither the token nor its plain hash as the key, a
    // sealed value that names no claim, kept no longer than cache_ttl.
    let entry = stored(&redis).remove(0);
    let plain = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(b"tok-alice"))
    };
    assert!(
        !entry.contains("tok-alice") && !entry.contains(&plain),
        "{entry}"
    );
    let value = redis.cli(&["GET", &entry]);
    assert!(
        !value.contains("alice") && !value.contains("reports:read") && !value.contains("active"),
        "{value}"
    );
    let ttl: u64 = redis.cli(&["PTTL", &entry]).trim().parse().unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "{ttl}");
    // An entry tampered with is a miss, not an answer: B's own cache has
    // alice, so a new subject shows it.
    assert_eq!(reports(via_a, "hooli", "tok-trent").await.status, 200);
    eventually("trent stored", || async { stored(&redis).len() == 2 }).await;
    let trent = stored(&redis).into_iter().find(|k| *k != entry).unwrap();
    redis.cli(&["SET", &trent, "forged"]);
    let calls = idp.calls();
    assert_eq!(reports(via_b, "hooli", "tok-trent").await.status, 200);
    assert_eq!(idp.calls(), calls + 1, "a forged entry is not used");

    // Revocation still wins over a shared hit: mallory's answer cached by A,
    // revoked live, then B's first sight of mallory (a shared hit) refused.
    assert_eq!(reports(via_a, "initech", "tok-mallory").await.status, 200);
    let calls = idp.calls();
    eventually("mallory stored", || async { stored(&redis).len() == 3 }).await;
    let out = revoke(&a.config, &["--tenant", "initech", "--sub", "mallory"]);
    assert!(out.status.success(), "{out:?}");
    eventually("B holds the live revocation", || async {
        b.admin_json("/policies").await["revocation_generation"] == 1
    })
    .await;
    let hits_before = counter(&b, hits).await;
    let r = reports(via_b, "initech", "tok-mallory").await;
    assert_eq!(
        (r.status, error(&r)),
        (401, "token_revoked".into()),
        "{r:?}"
    );
    assert_eq!(counter(&b, hits).await, hits_before + 1, "a shared hit");
    assert_eq!(idp.calls(), calls);

    // And by a revocation file (tenant hooli).
    assert_eq!(reports(via_a, "hooli", "tok-eve").await.status, 200);
    eventually("eve stored", || async { stored(&redis).len() == 4 }).await;
    std::fs::write(
        policies.path().join("hooli.revoked.yaml"),
        "apiVersion: portcullis/v1\ntenant: hooli\nrevoked:\n  - { sub: eve }\n  - { sub: probe }\n",
    )
    .unwrap();
    // B has loaded the file once it refuses another subject it names.
    eventually("B loaded the revocation file", || async {
        error(&reports(via_b, "hooli", "tok-probe").await) == "token_revoked"
    })
    .await;
    let calls = idp.calls();
    let hits_before = counter(&b, hits).await;
    let r = reports(via_b, "hooli", "tok-eve").await;
    assert_eq!(
        (r.status, error(&r)),
        (401, "token_revoked".into()),
        "{r:?}"
    );
    assert_eq!(counter(&b, hits).await, hits_before + 1, "a shared hit");
    assert_eq!(idp.calls(), calls);

    // Redis down: a cache, so a miss asks the identity provider (no 503)
    // for a tenant that needs nothing else of Redis, and is cached locally.
    redis.stop();
    let calls = idp.calls();
    let r = reports(via_b, "hooli", "tok-bob").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(idp.calls(), calls + 1);
    assert_eq!(reports(via_b, "hooli", "tok-bob").await.status, 200);
    assert_eq!(idp.calls(), calls + 1, "B's own cache");
    // (A tenant with live revocation still fails closed once its copy is
    // stale: the test above shows it; the cache changes nothing there.)

    // Redis back (empty): answers are shared again, no restart.
    redis.spawn().await;
    let n = std::sync::atomic::AtomicUsize::new(0);
    eventually("answers shared again", || async {
        let token = format!(
            "tok-back{}",
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        reports(via_a, "hooli", &token).await.status == 200 && !stored(&redis).is_empty()
    })
    .await;
}

/// The shared cache off (no `introspection_cache`, the same Redis): each
/// replica asks the identity provider itself. The control for the test
/// above: its one call per token is the cache's doing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_shared_cache_each_replica_introspects() {
    let redis = Redis::start(Mode::Plain).await;
    let idp = Idp::start().await;
    let policies = introspection_policies(idp.addr);
    let a = Replica::start(policies.path(), Some(&redis)).await;
    let b = Replica::start(policies.path(), Some(&redis)).await;
    let (upstream, _upstream) = support::start_echo_upstream().await;
    let envoy = Envoy::start(&envoy_config(a.grpc, b.grpc, upstream)).await;
    let (via_a, via_b) = (envoy.listener("a").await, envoy.listener("b").await);
    let r = reports(via_a, "hooli", "tok-alice").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(reports(via_b, "hooli", "tok-alice").await.status, 200);
    assert_eq!(idp.calls(), 2);
    assert_eq!(
        redis.cli(&["KEYS", "portcullis:introspection:*"]).trim(),
        ""
    );
}

/// p50, p99 of `took` (sorted here).
fn percentiles(took: &mut [Duration]) -> (Duration, Duration) {
    took.sort();
    (took[took.len() / 2], took[took.len() * 99 / 100])
}

/// Measurement, not a test (`[FLEET_IDP=keycloak] cargo test --release --test
/// fleet -- --ignored --nocapture measure_shared_introspection`): does the
/// shared introspection cache pay? Two replicas in process (two pipelines
/// over two stores, so two caches; each its own connection to one real
/// Redis), the loopback identity provider (or a real Keycloak), `K` tokens of tenant `hooli`: identity provider calls
/// with and without the cache (each replica sees each token twice; then the
/// two replicas asking for the same new token at once), and the latency of
/// a check that calls the identity provider, reads the shared cache, or hits
/// the replica's own cache. Figures go to BENCHMARKS.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn measure_shared_introspection_cache() {
    use portcullis::identity::shared_answers::SharedAnswers;
    use portcullis::identity::shared_state::SharedState;
    use portcullis::pipeline::Pipeline;
    use portcullis::request::tenancy::TenantResolver;
    use portcullis::tenants::store::PolicyStore;
    use portcullis::transport::shared_state::{RedisConfig, RedisState};
    use std::sync::Arc;

    // FLEET_IDP=keycloak: the identity provider is a real Keycloak (the
    // calls counted by a forwarder in front of it), its tokens minted by
    // client_credentials before any timing.
    let keycloak = std::env::var("FLEET_IDP").is_ok_and(|v| v == "keycloak");
    let k: usize = if keycloak { 300 } else { 2000 };
    let redis = Redis::start(Mode::Plain).await;
    let (idp, policies, kc, mut minted) = if keycloak {
        let kc = support::peers::Keycloak::start(&json!({
            "realm": "fleet", "enabled": true, "accessTokenLifespan": 600,
            "clients": [
                { "clientId": "svc", "enabled": true, "publicClient": false, "secret": "svc-secret",
                  "serviceAccountsEnabled": true, "standardFlowEnabled": false, "directAccessGrantsEnabled": false },
                { "clientId": "portcullis", "enabled": true, "publicClient": false, "secret": "s3cret",
                  "serviceAccountsEnabled": true, "standardFlowEnabled": false, "directAccessGrantsEnabled": false },
            ],
        }))
        .await;
        let issuer = format!("{}/realms/fleet", kc.base);
        let idp =
            Idp::forwarding(format!("{issuer}/protocol/openid-connect/token/introspect")).await;
        let policies = introspection_policies_for(idp.addr, Some(&issuer));
        let client = reqwest::Client::new();
        let mut minted = Vec::new();
        // Enough for every set below: 2 rounds × 3 sets.
        for _ in 0..6 * k {
            let answer = client
                .post(format!("{issuer}/protocol/openid-connect/token"))
                .basic_auth("svc", Some("svc-secret"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("grant_type=client_credentials")
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let answer: Value = serde_json::from_slice(&answer).unwrap();
            minted.push(answer["access_token"].as_str().unwrap().to_string());
        }
        (idp, policies, Some(kc), minted)
    } else {
        let idp = Idp::start().await;
        let policies = introspection_policies(idp.addr);
        (idp, policies, None, Vec::new())
    };
    let config: RedisConfig =
        serde_yaml::from_str(&format!("{{ url: 'redis://127.0.0.1:{}/' }}", redis.port)).unwrap();
    let secret = b"a fleet secret of at least thirty-two bytes";
    let replica = |cache: bool| {
        let store = Arc::new(PolicyStore::new(policies.path()));
        assert!(store.reload().errors.is_empty());
        let shared = cache.then(|| {
            Arc::new(
                RedisState::new(&config, Default::default())
                    .unwrap()
                    .with_shared_answers(Some(SharedAnswers::new(secret).unwrap())),
            ) as Arc<dyn SharedState>
        });
        Pipeline::new(store, TenantResolver::default()).with_shared_state(shared)
    };
    let request = |token: &str| {
        let attributes = json!({
            "contextExtensions": { "tenant": "hooli" },
            "request": { "http": { "method": "GET", "host": "hooli.example", "path": "/reports",
                "headers": { "authorization": format!("Bearer {token}") } } }
        });
        portcullis::app::cli::check_request_from_json(&json!({ "attributes": attributes })).unwrap()
    };
    // Each token once through `p`, in order; the latency of each check.
    let pass = |p: Pipeline, tokens: Vec<String>| async move {
        let mut took = Vec::with_capacity(tokens.len());
        for t in &tokens {
            let r = request(t);
            let start = Instant::now();
            let d = p.check_async(&r, Duration::from_secs(2)).await;
            took.push(start.elapsed());
            assert!(d.reason.allows(), "{:?}", d.reason);
        }
        took
    };
    let mut tokens = |tag: &str| {
        if keycloak {
            minted.split_off(minted.len() - k)
        } else {
            (0..k).map(|i| format!("tok-{tag}{i}")).collect::<Vec<_>>()
        }
    };
    let fmt = |(p50, p99): (Duration, Duration)| format!("p50 {p50:?} p99 {p99:?}");

    let used = |r: &Redis| -> i64 {
        r.cli(&["INFO", "memory"])
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:")?.trim().parse().ok())
            .unwrap()
    };
    // Fresh replicas A and B, with or without the cache: A sees every token
    // of `set`, then B, then both again. Identity provider calls, Redis GET
    // and SET, Redis bytes per token, and the latencies of A's first, B's
    // first and A's second sight; and the two replicas.
    let phase = |cache: bool, set: Vec<String>| {
        let (a, b) = (replica(cache), replica(cache));
        let (idp, redis, pass, used) = (&idp, &redis, &pass, &used);
        async move {
            let (calls, memory) = (idp.calls(), used(redis));
            let (gets, sets) = (redis.calls("get"), redis.calls("set"));
            let first = pass(a.clone(), set.clone()).await;
            let other = pass(b.clone(), set.clone()).await;
            let own = pass(a.clone(), set.clone()).await;
            pass(b.clone(), set.clone()).await;
            let counts = (
                idp.calls() - calls,
                redis.calls("get") - gets,
                redis.calls("set") - sets,
                (used(redis) - memory) / set.len() as i64,
            );
            (counts, first, other, own, (a, b))
        }
    };
    for round in 1..=2 {
        let (off_set, on_set) = (
            tokens(&format!("off{round}-")),
            tokens(&format!("on{round}-")),
        );
        // The side that goes first alternates (an identity provider warms up).
        let (off, on) = if round % 2 == 1 {
            let off = phase(false, off_set).await;
            (off, phase(true, on_set).await)
        } else {
            let on = phase(true, on_set).await;
            (phase(false, off_set).await, on)
        };
        let ((off_calls, ..), mut a_miss, mut b_miss, mut a_hit, _) = off;
        let ((on_calls, gets, sets, per_entry), mut a_first, mut b_shared, mut a_local, (a, b)) =
            on;

        // Both replicas of the cache asking for each new token at once.
        let set = tokens(&format!("race{round}-"));
        let calls = idp.calls();
        let (x, y) = tokio::join!(pass(a.clone(), set.clone()), pass(b.clone(), set.clone()));
        let race_calls = idp.calls() - calls;
        drop((x, y));

        eprintln!(
            "round {round} ({}), {k} tokens, each seen twice by each of 2 replicas:\n  identity provider calls: without the shared cache {off_calls} ({:.2} per token), with it {on_calls} ({:.2} per token); both replicas at once, with it: {race_calls} ({:.2} per token)\n  Redis with it: {gets} GET, {sets} SET ({:.2} GET per first sight on a replica), {per_entry} bytes of used_memory per entry\n  without: call {} | B's call {} | own cache hit {}\n  with:    call (miss in Redis, then SET) {} | shared hit {} | own cache hit {}",
            if keycloak {
                "Keycloak"
            } else {
                "loopback endpoint"
            },
            off_calls as f64 / k as f64,
            on_calls as f64 / k as f64,
            race_calls as f64 / k as f64,
            gets as f64 / (2 * k) as f64,
            fmt(percentiles(&mut a_miss)),
            fmt(percentiles(&mut b_miss)),
            fmt(percentiles(&mut a_hit)),
            fmt(percentiles(&mut a_first)),
            fmt(percentiles(&mut b_shared)),
            fmt(percentiles(&mut a_local)),
        );
    }
    drop(kc);
}

/// Measurement, not a test (`taskset -c 1 cargo test --release --test fleet
/// -- --ignored --nocapture measure_dpop_under_grpc_load`, with
/// `FLEET_SERVER_CPU=0`): DPoP-bound checks through gRPC load, two replica
/// processes on the same policies, one with the shared replay cache (a real
/// Redis on loopback) and one with the in-memory one. Each request carries
/// its own proof, signed before the clock starts (h2load sends one body
/// again and again, and a proof is good once). A closed loop of
/// `connections × streams` checks in flight, every answer must be an allow;
/// the two sides alternate which goes first, three rounds per shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn measure_dpop_under_grpc_load() {
    use portcullis::foundation::proto::auth::CheckRequest;
    use portcullis::foundation::proto::auth::authorization_client::AuthorizationClient;

    // FLEET_N: checks per side per round.
    let n: usize = std::env::var("FLEET_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let redis = Redis::start(Mode::Plain).await;
    let policies = Policies::new(false);
    let memory = Replica::start(policies.dir.path(), None).await;
    let shared = Replica::start(policies.dir.path(), Some(&redis)).await;
    let client = dpop::Client::new();
    let token = policies.token("alice", Some(&client.jkt()));
    let mint = |n: usize| dpop_checks(&client, &token, n);
    // (p50, p99, checks/s, answers other than an allow) of `requests`
    // against `addr`.
    async fn load(
        addr: SocketAddr,
        requests: Vec<CheckRequest>,
        connections: usize,
        streams: usize,
    ) -> (Duration, Duration, f64, usize) {
        let n = requests.len();
        let mut channels = Vec::new();
        for _ in 0..connections {
            channels.push(
                AuthorizationClient::connect(format!("http://{addr}"))
                    .await
                    .unwrap(),
            );
        }
        let workers = connections * streams;
        let mut chunks: Vec<Vec<CheckRequest>> = (0..workers).map(|_| Vec::new()).collect();
        for (i, r) in requests.into_iter().enumerate() {
            chunks[i % workers].push(r);
        }
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let mut c = channels[i % connections].clone();
            tasks.spawn(async move {
                let (mut took, mut refused) = (Vec::with_capacity(chunk.len()), 0);
                for r in chunk {
                    let t = Instant::now();
                    let answer = c.check(r).await.unwrap().into_inner();
                    took.push(t.elapsed());
                    // 0: allowed. Anything else is counted and reported
                    // (14: a 503, the store not answering within its timeout).
                    refused += usize::from(answer.status.is_none_or(|s| s.code != 0));
                }
                (took, refused)
            });
        }
        let (mut took, mut refused) = (Vec::with_capacity(n), 0);
        while let Some(t) = tasks.join_next().await {
            let (t, r) = t.unwrap();
            took.extend(t);
            refused += r;
        }
        let total = start.elapsed();
        let (p50, p99) = percentiles(&mut took);
        (p50, p99, n as f64 / total.as_secs_f64(), refused)
    }
    // Warm both.
    load(memory.grpc, mint(500), 1, 4).await;
    load(shared.grpc, mint(500), 1, 4).await;
    for (connections, streams) in [(4, 16), (2, 8)] {
        for round in 1..=3 {
            let (m_reqs, s_reqs) = (mint(n), mint(n));
            let commands = |r: &Redis| {
                let stats = r.cli(&["INFO", "commandstats"]);
                stats
                    .lines()
                    .filter_map(|l| {
                        l.split_once("calls=")?
                            .1
                            .split(',')
                            .next()?
                            .parse::<u64>()
                            .ok()
                    })
                    .sum::<u64>()
            };
            let (m, s, sets, all) = if round % 2 == 1 {
                let m = load(memory.grpc, m_reqs, connections, streams).await;
                let (sets, all) = (redis.calls("set"), commands(&redis));
                let s = load(shared.grpc, s_reqs, connections, streams).await;
                (m, s, redis.calls("set") - sets, commands(&redis) - all)
            } else {
                let (sets, all) = (redis.calls("set"), commands(&redis));
                let s = load(shared.grpc, s_reqs, connections, streams).await;
                let counted = (redis.calls("set") - sets, commands(&redis) - all);
                let m = load(memory.grpc, m_reqs, connections, streams).await;
                (m, s, counted.0, counted.1)
            };
            eprintln!(
                "{connections}x{streams} round {round}: in-memory p50 {:?} p99 {:?} {:.0}/s ({} not allowed) | shared p50 {:?} p99 {:?} {:.0}/s ({} not allowed) | added p50 {:+.0} µs p99 {:+.0} µs | throughput ratio {:.2} | SET per check {:.3}, Redis commands per check {:.3} (INFO itself included)",
                m.0,
                m.1,
                m.2,
                m.3,
                s.0,
                s.1,
                s.2,
                s.3,
                (s.0.as_secs_f64() - m.0.as_secs_f64()) * 1e6,
                (s.1.as_secs_f64() - m.1.as_secs_f64()) * 1e6,
                s.2 / m.2,
                sets as f64 / n as f64,
                all as f64 / n as f64,
            );
        }
    }
}
