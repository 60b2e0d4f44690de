//! Fault injection (issue 9): identity providers that are down, silent,
//! dripping, talking garbage or sending too much; an introspection endpoint
//! that refuses connections; a policy directory that disappears and comes back;
//! a policy file caught half written.
//!
//! Every misbehaving peer is a real server on loopback that the test owns.
//! Each test states the behaviour it holds portcullis to; the short version is
//! always the same: when portcullis cannot decide it answers 503 with a stable
//! reason (so Envoy fails closed even with `failure_mode_allow: true`), it never
//! allows on a guess, and the last good keys or rules keep serving within their
//! bounds.
//!
//! Faults covered elsewhere: SIGTERM under load (`tests/server.rs`,
//! `sigterm_under_load_finishes_in_flight_checks_and_exits_zero`), an issuer
//! outage within and past `keys_max_stale` (`tests/jwt.rs`,
//! `remote_keys_rotation_and_outage`), introspection answering 5xx or refusing
//! the client (`tests/jwt.rs`), Envoy restarted (`tests/envoy_e2e.rs`,
//! `checks_resume_when_envoy_restarts`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jwt_simple::prelude::{Claims, ECDSAP256KeyPairLike, ES256KeyPair};
use prost_types::value::Kind;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Channel;

use portcullis::app::cli::check_request_from_json;
use portcullis::foundation::proto::auth::authorization_client::AuthorizationClient;
use portcullis::foundation::proto::auth::check_response::HttpResponse;
use portcullis::foundation::proto::auth::{CheckRequest, CheckResponse};
use portcullis::identity::http::MAX_RESPONSE_BYTES;
use portcullis::identity::keys::RemoteKeys;
use portcullis::pipeline::Pipeline;
use portcullis::request::tenancy::TenantResolver;
use portcullis::tenants::store::PolicyStore;

/// How long any awaited condition may take before the test fails. Generous:
/// the slow faults take the HTTP client's whole 5 s timeout.
const DEADLINE: Duration = Duration::from_secs(30);

/// What a misbehaving identity provider does with each request it reads.
#[derive(Debug, Clone)]
enum Behaviour {
    /// 200 with this body: a good key set, or garbage.
    Answer(String),
    /// 200 declaring a body four times the limit (and sending it).
    HugeDeclared,
    /// 200, chunked with no declared length, sending four times the limit.
    HugeChunked,
    /// Reads the request and never answers, holding the connection open.
    Silent,
    /// Sends a head promising a body, then one byte of it every 100 ms.
    Drip,
}

/// A loopback HTTP/1.1 server whose behaviour the test sets.
struct FaultyServer {
    addr: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
    requests: Arc<AtomicUsize>,
}

impl FaultyServer {
    async fn start(behaviour: Behaviour) -> FaultyServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = FaultyServer {
            addr: listener.local_addr().unwrap(),
            behaviour: Arc::new(Mutex::new(behaviour)),
            requests: Arc::default(),
        };
        let (behaviour, requests) = (Arc::clone(&server.behaviour), Arc::clone(&server.requests));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (behaviour, requests) = (Arc::clone(&behaviour), Arc::clone(&requests));
                tokio::spawn(async move {
                    let _ = serve(stream, &behaviour, &requests).await;
                });
            }
        });
        server
    }

    fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }
}

async fn serve(
    mut stream: TcpStream,
    behaviour: &Mutex<Behaviour>,
    requests: &AtomicUsize,
) -> std::io::Result<()> {
    // The request head (these clients send GETs without a body).
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 64 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let behaviour = behaviour.lock().unwrap().clone();
    let huge = 4 * MAX_RESPONSE_BYTES;
    match behaviour {
        Behaviour::Answer(body) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body.as_bytes()).await?;
        }
        Behaviour::HugeDeclared => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {huge}\r\nconnection: close\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&vec![b' '; huge]).await?;
        }
        Behaviour::HugeChunked => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
                .await?;
            let chunk = 16 * 1024;
            let mut framed = format!("{chunk:x}\r\n").into_bytes();
            framed.extend(std::iter::repeat_n(b' ', chunk));
            framed.extend_from_slice(b"\r\n");
            for _ in 0..huge / chunk {
                stream.write_all(&framed).await?;
            }
            stream.write_all(b"0\r\n\r\n").await?;
        }
        Behaviour::Silent => {
            // Hold the connection until the client gives up and closes it.
            let _ = stream.read(&mut buf).await;
        }
        Behaviour::Drip => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{")
                .await?;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                stream.write_all(b" ").await?;
            }
        }
    }
    stream.shutdown().await
}

/// A signing key and the JWKS that publishes it.
struct Signer {
    key: ES256KeyPair,
}

impl Signer {
    fn new() -> Signer {
        Signer {
            key: ES256KeyPair::generate().with_key_id("k1"),
        }
    }

    fn jwks(&self) -> String {
        let jwk: Value = serde_json::from_str(&self.key.public_key().to_jwk()).unwrap();
        json!({ "keys": [jwk] }).to_string()
    }

    fn token(&self, issuer: &str) -> String {
        let claims = Claims::create(jwt_simple::prelude::Duration::from_mins(5))
            .with_issuer(issuer)
            .with_audience("api")
            .with_subject("alice");
        self.key.sign(claims).unwrap()
    }
}

fn issuer(tenant: &str) -> String {
    format!("https://idp.{tenant}.example")
}

/// One tenant whose single issuer's keys come from `source` (a YAML line).
fn jwt_tenant(tenant: &str, source: &str) -> String {
    format!(
        r#"apiVersion: portcullis/v1
tenant: {tenant}
identity:
  jwt:
    - issuer: {iss}
      audiences: [api]
      algorithms: [ES256]
      {source}
      keys_ttl: 60s
      keys_max_stale: 10m
rules:
  - {{ id: members, path: "/{{rest...}}", effect: allow }}
"#,
        iss = issuer(tenant)
    )
}

fn request(tenant: &str, path: &str, headers: Value) -> CheckRequest {
    check_request_from_json(&json!({
        "attributes": {
            "contextExtensions": { "tenant": tenant },
            "request": { "http": { "method": "GET", "host": "api.example", "path": path, "headers": headers } }
        }
    }))
    .unwrap()
}

fn bearer(token: &str) -> Value {
    json!({ "authorization": format!("Bearer {token}") })
}

/// The HTTP status Envoy is told to answer, and the reason from the metadata.
fn observed(r: &CheckResponse) -> (u16, String) {
    let status = match r.http_response.as_ref() {
        Some(HttpResponse::OkResponse(_)) => 200,
        Some(HttpResponse::DeniedResponse(d)) => d.status.as_ref().map_or(0, |s| s.code as u16),
        None => 0,
    };
    let reason = r
        .dynamic_metadata
        .as_ref()
        .and_then(|md| match md.fields.get("portcullis")?.kind.as_ref()? {
            Kind::StructValue(s) => match s.fields.get("reason")?.kind.as_ref()? {
                Kind::StringValue(v) => Some(v.clone()),
                _ => None,
            },
            _ => None,
        })
        .unwrap_or_default();
    (status, reason)
}

async fn client(addr: SocketAddr) -> AuthorizationClient<Channel> {
    AuthorizationClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// One Check over gRPC with Envoy's deadline set; a gRPC error fails the test
/// (portcullis must answer, within the deadline, even when it cannot decide).
async fn decide(c: &mut AuthorizationClient<Channel>, req: CheckRequest) -> (u16, String) {
    let mut req = tonic::Request::new(req);
    req.set_timeout(Duration::from_secs(1));
    let r = c.check(req).await.expect("an answer, not a gRPC error");
    observed(r.get_ref())
}

/// Polls `f` until it gives `Some`; fails the test after [`DEADLINE`].
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One line per observed fault behaviour, collected by
/// `tests/reliability/run.sh` (run with `--nocapture`).
fn report(fault: &str, observed: &str) {
    println!("fault: {fault}: {observed}");
}

/// `/readyz`'s line for `tenant` among the issuers whose keys never loaded.
async fn keys_problem(admin: SocketAddr, tenant: &str) -> Option<String> {
    let r = support::http(admin, "GET", "/readyz", &[], None).await;
    r.json()["issuers_without_keys"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .find(|l| l.starts_with(&format!("{tenant}: ")))
        .map(str::to_string)
}

/// Behaviour: whatever is wrong with an issuer's key server — down, silent,
/// dripping, garbage, an empty set, a body over 256 KiB declared or not — a
/// token of that issuer gets 503 `keys_unavailable`, answered within Envoy's
/// deadline, never an allow and never a gRPC error. `/readyz` names the cause
/// without quoting the body, and stays ready (one issuer down must not take
/// the replica out of rotation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_server_faults_fail_closed_with_keys_unavailable() {
    let signer = Signer::new();
    let garbage = FaultyServer::start(Behaviour::Answer("<html>oops</html>".into())).await;
    let empty = FaultyServer::start(Behaviour::Answer(r#"{"keys": []}"#.into())).await;
    let declared = FaultyServer::start(Behaviour::HugeDeclared).await;
    let chunked = FaultyServer::start(Behaviour::HugeChunked).await;
    let silent = FaultyServer::start(Behaviour::Silent).await;
    let drip = FaultyServer::start(Behaviour::Drip).await;
    let over = format!("body over {MAX_RESPONSE_BYTES} bytes");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "down",
            format!("http://127.0.0.1:{}/jwks.json", support::dead_port()),
            "cannot connect",
        ),
        ("garbage", garbage.url(), "key set is not JSON"),
        ("empty", empty.url(), "key set has no usable key"),
        ("declared", declared.url(), &over),
        ("chunked", chunked.url(), &over),
        ("silent", silent.url(), "timed out"),
        ("drip", drip.url(), "timed out"),
    ];

    let dir = tempfile::tempdir().unwrap();
    for (tenant, url, _) in &cases {
        std::fs::write(
            dir.path().join(format!("{tenant}.yaml")),
            jwt_tenant(tenant, &format!("jwks_uri: {url}")),
        )
        .unwrap();
    }
    let server = support::start_portcullis(dir.path()).await;
    let mut c = client(server.grpc_addr.unwrap()).await;

    for (tenant, _, cause) in &cases {
        let token = signer.token(&issuer(tenant));
        // Several checks, some while the first fetch is still under way.
        for _ in 0..3 {
            let got = decide(&mut c, request(tenant, "/orders", bearer(&token))).await;
            assert_eq!(got, (503, "keys_unavailable".into()), "{tenant}");
        }
        let line = eventually(&format!("/readyz to name {tenant}'s cause"), || async {
            keys_problem(server.admin_addr, tenant)
                .await
                .filter(|l| l.contains(cause))
        })
        .await;
        assert!(!line.contains("oops"), "the body is never quoted: {line}");
        // Still 503 after the fetch failed: the failure is not turned into a
        // guess, and a retry is not due yet, so the answer is immediate.
        let got = decide(&mut c, request(tenant, "/orders", bearer(&token))).await;
        assert_eq!(got, (503, "keys_unavailable".into()), "{tenant}");
        report(
            &format!("key server {tenant}"),
            &format!("{} {}; readyz: {line}", got.0, got.1),
        );
    }
    for (name, s) in [
        ("garbage", &garbage),
        ("empty", &empty),
        ("declared", &declared),
        ("chunked", &chunked),
        ("silent", &silent),
        ("drip", &drip),
    ] {
        assert!(s.requests() >= 1, "{name} was asked for keys");
    }
    let r = support::http(server.admin_addr, "GET", "/readyz", &[], None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    server.stop().await.unwrap();
}

/// Writes each tenant into its own file and loads them.
fn pipeline(dir: &Path, files: &[(&str, String)]) -> Pipeline {
    for (name, text) in files {
        std::fs::write(dir.join(format!("{name}.yaml")), text).unwrap();
    }
    let store = PolicyStore::new(dir);
    let status = store.reload();
    assert!(status.errors.is_empty(), "{:?}", status.error_lines());
    Pipeline::new(Arc::new(store), TenantResolver::default())
}

fn remote_keys(url: &str) -> Arc<RemoteKeys> {
    RemoteKeys::all()
        .into_iter()
        .find(|k| k.source.to_string() == url)
        .expect("the key set is registered")
}

/// Advances tokio's clock (the key cache's clock) by `by`.
async fn advance(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// Behaviour: once keys were fetched, a refresh that gets garbage, an empty
/// set or an oversized body never replaces them: the last good keys keep
/// verifying tokens until `keys_max_stale` after the last good fetch; past
/// it, 503 `keys_unavailable`; a good answer restores service.
#[tokio::test]
async fn bad_refreshes_keep_the_last_good_keys_within_max_stale() {
    let signer = Signer::new();
    let idp = FaultyServer::start(Behaviour::Answer(signer.jwks())).await;
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(
        dir.path(),
        &[(
            "stale",
            jwt_tenant("stale", &format!("jwks_uri: {}", idp.url())),
        )],
    );
    let token = signer.token(&issuer("stale"));
    let req = request("stale", "/orders", bearer(&token));
    let wait = Duration::from_secs(10);
    let d = p.check_async(&req, wait).await;
    assert!(d.allowed, "{:?}", d.detail);
    let keys = remote_keys(&idp.url());

    let bad = [
        (Behaviour::Answer("not json".into()), "key set is not JSON"),
        (
            Behaviour::Answer(r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#.into()),
            "publish public keys only",
        ),
        (Behaviour::HugeDeclared, "body over"),
        (Behaviour::HugeChunked, "body over"),
    ];
    // keys_ttl is 60 s and keys_max_stale 10 m: four refreshes a minute apart
    // stay well within it.
    for (behaviour, cause) in bad {
        idp.set(behaviour);
        let before = idp.requests();
        advance(Duration::from_secs(61)).await;
        assert!(keys.fetch_and_wait(wait).await, "the last good keys remain");
        assert_eq!(idp.requests(), before + 1, "one refresh was tried");
        let error = keys.last_error().unwrap_or_default();
        assert!(error.contains(cause), "{error:?} should say {cause:?}");
        let d = p.check_async(&req, wait).await;
        assert!(d.allowed, "within keys_max_stale: {:?}", d.detail);
        report(
            "key refresh bad, keys stale but within keys_max_stale",
            &format!("allowed with the last good keys; refresh error: {error}"),
        );
    }
    // Past keys_max_stale (10 m after the last good fetch): fail closed.
    advance(Duration::from_secs(7 * 60)).await;
    let d = p.check_async(&req, wait).await;
    assert_eq!((d.status(), d.reason.code()), (503, "keys_unavailable"));
    report(
        "key refresh bad past keys_max_stale",
        &format!("{} {}", d.status(), d.reason.code()),
    );
    // A good answer at the next due fetch restores service.
    idp.set(Behaviour::Answer(signer.jwks()));
    advance(portcullis::identity::keys::FETCH_RETRY).await;
    let d = p.check_async(&req, wait).await;
    assert!(d.allowed, "after recovery: {:?}", d.detail);
}

/// Behaviour: an introspection endpoint that refuses connections, or accepts
/// and never answers, gives 503 `introspection_unavailable` within Envoy's
/// deadline; never an allow, never a gRPC error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_endpoint_down_or_silent_fails_closed() {
    let silent = FaultyServer::start(Behaviour::Silent).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client-secret"), "s3cret").unwrap();
    let tenant = |name: &str, endpoint: &str| {
        format!(
            "apiVersion: portcullis/v1\ntenant: {name}\nidentity:\n  introspection: {{ endpoint: '{endpoint}', issuer: https://as.{name}.example, client_id: portcullis, client_secret_file: client-secret }}\nrules:\n  - {{ id: all, path: /reports, effect: allow }}\n"
        )
    };
    let down = format!("http://127.0.0.1:{}/introspect", support::dead_port());
    std::fs::write(dir.path().join("down.yaml"), tenant("down", &down)).unwrap();
    std::fs::write(
        dir.path().join("silent.yaml"),
        tenant("silent", &format!("http://{}/introspect", silent.addr)),
    )
    .unwrap();
    let server = support::start_portcullis(dir.path()).await;
    let errors = server.store.status().error_lines();
    assert!(errors.is_empty(), "{errors:?}");
    let mut c = client(server.grpc_addr.unwrap()).await;
    for name in ["down", "silent"] {
        for token in ["opaque-1", "opaque-2", "opaque-1"] {
            let got = decide(&mut c, request(name, "/reports", bearer(token))).await;
            assert_eq!(got, (503, "introspection_unavailable".into()), "{name}");
        }
        report(
            &format!("introspection endpoint {name}"),
            "503 introspection_unavailable for every token",
        );
    }
    assert!(silent.requests() >= 1);
    server.stop().await.unwrap();
}

fn write_atomically(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

const HEAD: &str = "apiVersion: portcullis/v1\ntenant: web\nidentity:\n  envoy_jwt_authn: { issuers: [\"https://idp.web.example\"] }\nrules:\n";

fn anonymous(path: &str) -> CheckRequest {
    request("web", path, json!({}))
}

/// The serving digest of tenant `web`.
fn digest(store: &PolicyStore) -> Option<String> {
    store.tenant("web").map(|t| t.digest.to_string())
}

/// Behaviour: when the policy directory disappears (or cannot be read), the
/// last good rules keep serving and the cause is a note in the status; when it
/// comes back, its files load (at the latest at the next rescan), and later
/// edits load too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_directory_removed_and_restored() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("policies");
    std::fs::create_dir(&dir).unwrap();
    let v1 = format!("{HEAD}  - {{ id: one, path: /one, effect: allow, public: true }}\n");
    let v2 = format!("{HEAD}  - {{ id: two, path: /two, effect: allow, public: true }}\n");
    let v3 = format!("{HEAD}  - {{ id: three, path: /three, effect: allow, public: true }}\n");
    let d = |t: &str| Some(portcullis::tenants::digest_of(t.as_bytes()).to_string());
    write_atomically(&dir, "web.yaml", &v1);
    let server = support::start_portcullis_with(&dir, |c| {
        c.reload.rescan_interval = Duration::from_millis(200);
    })
    .await;
    let store = Arc::clone(&server.store);
    let mut c = client(server.grpc_addr.unwrap()).await;
    assert_eq!(decide(&mut c, anonymous("/one")).await.0, 200);

    std::fs::remove_dir_all(&dir).unwrap();
    eventually("a note that the directory is gone", || async {
        store
            .status()
            .notes
            .iter()
            .any(|n| n.contains("cannot be read"))
            .then_some(())
    })
    .await;
    // The old rules keep serving, and it is still ready.
    assert_eq!(digest(&store), d(&v1));
    assert_eq!(
        decide(&mut c, anonymous("/one")).await,
        (200, "allowed".into())
    );
    assert_eq!(decide(&mut c, anonymous("/two")).await.0, 401);
    let r = support::http(server.admin_addr, "GET", "/readyz", &[], None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    report(
        "policy directory removed",
        "old rules keep serving (200 on /one, 401 on /two), /readyz 200, note 'cannot be read'",
    );

    // Restored, with other rules: they load, whole.
    std::fs::create_dir(&dir).unwrap();
    write_atomically(&dir, "web.yaml", &v2);
    eventually("the restored rules", || async {
        (digest(&store) == d(&v2)).then_some(())
    })
    .await;
    assert_eq!(
        decide(&mut c, anonymous("/two")).await,
        (200, "allowed".into())
    );
    assert_eq!(decide(&mut c, anonymous("/one")).await.0, 401);
    // And edits after the restore load too.
    write_atomically(&dir, "web.yaml", &v3);
    eventually("an edit after the restore", || async {
        (digest(&store) == d(&v3)).then_some(())
    })
    .await;
    assert_eq!(decide(&mut c, anonymous("/three")).await.0, 200);
    report(
        "policy directory restored",
        "restored rules load whole; later edits load",
    );
    server.stop().await.unwrap();
}

/// Behaviour: a policy file written in place, not atomically, and caught half
/// written is a broken file: it is refused with its file and line, the previous
/// rules keep serving (so the half never allows what the previous rules did
/// not), and the complete file loads once the write finishes.
///
/// A prefix that happens to be a valid policy on its own cannot be told from
/// an intended one: write policy files atomically (a ConfigMap does), and see
/// `docs/reliability.md`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_caught_half_written_never_allows_and_the_whole_file_loads() {
    let dir = tempfile::tempdir().unwrap();
    let before = format!("{HEAD}  - {{ id: open, path: /open, effect: allow, public: true }}\n");
    // The complete new version opens /new to everyone and /admin to admins only.
    let after = format!(
        "{HEAD}  - {{ id: open, path: /open, effect: allow, public: true }}\n  - {{ id: new, path: /new, effect: allow, public: true }}\n  - {{ id: admin, path: /admin, effect: allow, public: true, when: 'resource.headers[\"x-role\"] == \"admin\"' }}\n"
    );
    // Cut inside the admin rule, just before its condition.
    let cut = after.find(", when:").unwrap();
    let (first, rest) = after.split_at(cut);
    write_atomically(dir.path(), "web.yaml", &before);
    let server = support::start_portcullis(dir.path()).await;
    let store = Arc::clone(&server.store);
    let mut c = client(server.grpc_addr.unwrap()).await;
    let d = |t: &str| Some(portcullis::tenants::digest_of(t.as_bytes()).to_string());
    assert_eq!(digest(&store), d(&before));

    // The first half, written in place and flushed; the writer stalls.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(dir.path().join("web.yaml")).unwrap();
        f.write_all(first.as_bytes()).unwrap();
        f.sync_all().unwrap();
    }
    // Refused as the half it is: the error is at its cut, not at line 1 (an
    // earlier reload may have caught the file truncated and empty).
    let half_lines = first.lines().count();
    let errors = eventually("the half-written file to be refused", || async {
        let status = store.status();
        status
            .errors
            .iter()
            .any(|e| e.line >= Some(half_lines))
            .then(|| status.error_lines())
    })
    .await;
    assert!(errors.iter().any(|e| e.contains("web.yaml")), "{errors:?}");
    assert_eq!(digest(&store), d(&before), "the previous rules serve");
    for path in ["/admin", "/new"] {
        let got = decide(&mut c, anonymous(path)).await;
        assert_ne!(got.0, 200, "{path} allowed from a half-written file");
    }
    assert_eq!(decide(&mut c, anonymous("/open")).await.0, 200);
    report(
        "policy file half written",
        &format!(
            "refused ({}); previous rules serve; /admin and /new not allowed",
            errors[0]
        ),
    );

    // The writer finishes: the whole file loads.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("web.yaml"))
            .unwrap();
        f.write_all(rest.as_bytes()).unwrap();
        f.sync_all().unwrap();
    }
    eventually("the complete file to load", || async {
        (digest(&store) == d(&after) && store.status().errors.is_empty()).then_some(())
    })
    .await;
    assert_eq!(decide(&mut c, anonymous("/new")).await.0, 200);
    assert_ne!(decide(&mut c, anonymous("/admin")).await.0, 200);
    server.stop().await.unwrap();
}
