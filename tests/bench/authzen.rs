//! AuthZEN evaluations against gRPC checks, in one process and one run
//! (`cargo bench --bench authzen`): read every AuthZEN figure as a ratio to the
//! gRPC figure of the same depth.
//!
//! - `pipeline/grpc_check`: `Pipeline::check` of the CheckRequest Envoy would
//!   send (the gRPC handler's work minus the transport).
//! - `pipeline/authzen_read_map_check`: the same decision from an AuthZEN body:
//!   JSON read, mapped onto the CheckRequest, then `Pipeline::check`.
//! - `server/grpc_check`: the real server on loopback, one tonic `Check` call
//!   on a kept-alive HTTP/2 connection.
//! - `server/authzen_evaluation`: the real server's AuthZEN listener on
//!   loopback, one `POST /access/v1/evaluation` on a kept-alive HTTP/1.1
//!   connection (the asker's token is validated on every request).
//! - `server/authzen_batch_10`: one `POST /access/v1/evaluations` of ten items
//!   (divide by ten for the time per evaluation).
//!
//! Tokens are ES256, minted by jwt-simple; the same token each time (the
//! verified-token cache hits, as it does for a caller's repeated requests).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use jwt_simple::prelude::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use portcullis::app::config::Config;
use portcullis::app::request_json::check_request_from_json;
use portcullis::foundation::proto::auth::authorization_client::AuthorizationClient;
use portcullis::pipeline::Pipeline;
use portcullis::request::authzen;
use portcullis::transport::askers::Asker;
use portcullis::transport::authzen::AuthzenConfig;

/// The binary's allocator (src/main.rs), so these figures are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ISSUER: &str = "https://idp.acme.example";

fn policy(jwks: &Value) -> String {
    format!(
        r#"apiVersion: portcullis/v1
tenant: acme
identity:
  jwt:
    - issuer: {ISSUER}
      audiences: [orders-api]
      algorithms: [ES256]
      jwks: {jwks}
rules:
  - id: own-profile
    methods: [GET, PUT]
    path: /users/{{owner}}/profile
    when: has(claims.sub) && resource.params.owner == claims.sub
    effect: allow
response:
  headers: {{ x-subject: "{{claims.sub}}", x-tenant: "{{tenant}}" }}
"#
    )
}

fn mint(key: &ES256KeyPair, subject: &str) -> String {
    let claims = Claims::create(jwt_simple::prelude::Duration::from_hours(2))
        .with_issuer(ISSUER)
        .with_audience("orders-api")
        .with_subject(subject);
    key.sign(claims).unwrap()
}

/// A kept-alive HTTP/1.1 connection that posts JSON and reads the answer.
struct Http {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    async fn post(&mut self, path: &str, bearer: &str, body: &str) -> Value {
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {bearer}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        self.stream.write_all(head.as_bytes()).await.unwrap();
        self.stream.write_all(body.as_bytes()).await.unwrap();
        self.buf.clear();
        loop {
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = std::str::from_utf8(&self.buf[..end])
                .unwrap()
                .to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .expect("content-length");
            if self.buf.len() >= end + 4 + length {
                assert!(head.starts_with("http/1.1 200"), "{head}");
                return serde_json::from_slice(&self.buf[end + 4..end + 4 + length]).unwrap();
            }
        }
    }
}

fn bench(c: &mut Criterion) {
    let key = ES256KeyPair::generate().with_key_id("bench-1");
    let jwk: Value = serde_json::from_str(&key.public_key().to_jwk()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("acme.yaml"),
        policy(&json!({ "keys": [jwk] })),
    )
    .unwrap();
    let user = mint(&key, "alice");
    let asker = mint(&key, "orders-service");

    let mut config = Config::with_policies(dir.path());
    config.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.decision_log.output = "off".into();
    config.authzen = Some(AuthzenConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        public_url: None,
        askers: vec![Asker {
            subject: "orders-service".into(),
            issuer: None,
            tenants: vec!["acme".into()],
        }],
    });
    config.validate().unwrap();

    // In-process, no socket.
    let store = std::sync::Arc::new(config.store());
    store.reload();
    let pipeline = Pipeline::new(std::sync::Arc::clone(&store), config.tenancy.clone());
    let grpc_request = check_request_from_json(&json!({ "attributes": {
        "request": { "http": { "method": "GET", "host": "", "path": "/users/alice/profile",
            "headers": { "authorization": format!("Bearer {user}") } } },
        "contextExtensions": { "tenant": "acme" },
    }}))
    .unwrap();
    assert!(pipeline.check(&grpc_request).allowed);
    let evaluation = json!({
        "subject": {"type": "user", "id": "alice", "properties": {"token": user}},
        "action": {"name": "GET"},
        "resource": {"type": "profile", "id": "alice", "properties": {"path": "/users/alice/profile"}},
        "context": {"tenant": "acme"},
    });
    let body = evaluation.to_string();
    let limit = store.limits().max_evaluation_request_bytes;
    let read_map_check = || {
        let e = authzen::single(body.as_bytes(), limit).unwrap();
        pipeline.check(&e.check_request("tenant").unwrap())
    };
    assert!(read_map_check().allowed);
    c.bench_function("pipeline/grpc_check", |b| {
        b.iter(|| black_box(pipeline.check(black_box(&grpc_request))))
    });
    c.bench_function("pipeline/authzen_read_map_check", |b| {
        b.iter(|| black_box(read_map_check()))
    });

    // The real server on loopback.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let running = rt.block_on(portcullis::app::serve::start(&config)).unwrap();
    let grpc_addr = running.grpc_addr.unwrap();
    let authzen_addr = running.authzen_addr.unwrap();
    let mut grpc = rt.block_on(async {
        AuthorizationClient::connect(format!("http://{grpc_addr}"))
            .await
            .unwrap()
    });
    let mut http = rt.block_on(async {
        let stream = TcpStream::connect(authzen_addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Http {
            stream,
            buf: Vec::new(),
        }
    });
    let mut batch = evaluation.clone();
    batch["evaluations"] = json!(vec![json!({}); 10]);
    let batch = batch.to_string();
    rt.block_on(async {
        let a = http.post("/access/v1/evaluation", &asker, &body).await;
        assert_eq!(a["decision"], true, "{a}");
        let a = http.post("/access/v1/evaluations", &asker, &batch).await;
        assert_eq!(a["evaluations"].as_array().unwrap().len(), 10, "{a}");
    });
    c.bench_function("server/grpc_check", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = grpc.check(grpc_request.clone()).await.unwrap();
                black_box(r)
            })
        })
    });
    c.bench_function("server/authzen_evaluation", |b| {
        b.iter(|| {
            rt.block_on(async {
                black_box(http.post("/access/v1/evaluation", &asker, &body).await)
            })
        })
    });
    c.bench_function("server/authzen_batch_10", |b| {
        b.iter(|| {
            rt.block_on(async {
                black_box(http.post("/access/v1/evaluations", &asker, &batch).await)
            })
        })
    });
    rt.block_on(running.stop()).unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
