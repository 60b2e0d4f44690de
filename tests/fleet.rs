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
    /// under `dir`.
    fn shared_state(&self, dir: &Path) -> String {
        let common =
            "timeout: 250ms, circuit: { failures: 1, open_for: 200ms }, revocation_refresh: 1s";
        match &self.mode {
            Mode::Plain => format!(
                "shared_state: {{ redis: {{ url: 'redis://127.0.0.1:{}/', {common} }} }}\n",
                self.port
            ),
            Mode::Password(p) => {
                std::fs::write(dir.join("redis-password"), format!("{p}\n")).unwrap();
                format!(
                    "shared_state: {{ redis: {{ url: 'redis://127.0.0.1:{}/', password_file: redis-password, {common} }} }}\n",
                    self.port
                )
            }
            Mode::Tls { ca, .. } => {
                std::fs::write(dir.join("redis-ca.pem"), ca).unwrap();
                format!(
                    "shared_state: {{ redis: {{ url: 'rediss://127.0.0.1:{}/', tls: {{ ca_file: redis-ca.pem }}, {common} }} }}\n",
                    self.port
                )
            }
        }
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
        let dir = tempfile::tempdir().unwrap();
        let grpc = SocketAddr::from(([127, 0, 0, 1], support::dead_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], support::dead_port()));
        let mut text = format!(
            "policies: {}\nlisten: {grpc}\nadmin_listen: {admin}\nreload: {{ debounce: 50ms }}\ndecision_log: {{ output: 'off' }}\nclient_errors: detailed\n",
            policies.display()
        );
        if let Some(redis) = shared {
            text.push_str(&redis.shared_state(dir.path()));
        }
        let config = dir.path().join("portcullis.yaml");
        std::fs::write(&config, text).unwrap();
        let log = std::fs::File::create(dir.path().join("portcullis.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
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
            "route_config": { "name": "local", "virtual_hosts": [vhost("acme"), vhost("globex")] },
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
    let requests = |n: usize| -> Vec<portcullis::foundation::proto::auth::CheckRequest> {
        (0..n)
            .map(|_| {
                let proof = client.proof("GET", &format!("{ORIGIN}/orders/1"), &token, json!({}));
                let attributes = json!({
                    "contextExtensions": { "tenant": "acme" },
                    "request": { "http": { "method": "GET", "host": "api.acme.example", "path": "/orders/1",
                        "headers": { "authorization": format!("DPoP {token}"), "dpop": proof } } }
                });
                portcullis::app::cli::check_request_from_json(&json!({ "attributes": attributes }))
                    .unwrap()
            })
            .collect()
    };
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
