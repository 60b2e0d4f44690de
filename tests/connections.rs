//! The listeners' connections against the real server (in-process, loopback
//! port 0): the cap per listener, the header-read and idle timeouts, and
//! HTTP/2 keepalive (issue 25, item 10). What the server holds is read from
//! its own gauges on `/metrics`; every wait polls for a condition with a
//! deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;

use portcullis::app::cli::check_request_from_json;
use portcullis::app::serve::Running;
use portcullis::foundation::proto::auth::authorization_client::AuthorizationClient;
use portcullis::foundation::proto::auth::check_response::HttpResponse;
use portcullis::transport::connections::ConnectionsConfig;

const POLICY: &str = "apiVersion: portcullis/v1\ntenant: t1\nhosts: [t1.example]\nrules:\n  - { id: open, path: /open, effect: allow, public: true }\n";

/// How long any one condition may take to come about.
const DEADLINE: Duration = Duration::from_secs(30);

async fn start(connections: ConnectionsConfig) -> (tempfile::TempDir, Running) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t1.yaml"), POLICY).unwrap();
    let running = support::start_portcullis_with(dir.path(), |c| c.connections = connections).await;
    (dir, running)
}

/// One check over `client`: the open rule allows it.
async fn check(client: &mut AuthorizationClient<Channel>) -> Result<u16, tonic::Status> {
    let request = check_request_from_json(&json!({ "attributes": { "request": { "http": {
        "method": "GET", "host": "t1.example", "path": "/open", "headers": {} } } } }))
    .unwrap();
    let response = client.check(request).await?.into_inner();
    Ok(match response.http_response.unwrap() {
        HttpResponse::OkResponse(_) => 200,
        HttpResponse::DeniedResponse(d) => d.status.unwrap().code as u16,
    })
}

/// A metric's value, `series` as it appears on `/metrics` (name and labels).
async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let body = support::http(admin, "GET", "/metrics", &[], None)
        .await
        .body;
    value_of(&body, series)
}

fn value_of(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// `/metrics`, or `None` when the admin listener turned the scrape away.
async fn try_scrape(admin: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect(admin).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut raw))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    text.starts_with("HTTP/1.1 200").then_some(text)
}

/// Polls until the series has `want`; fails after the deadline.
async fn until_metric(admin: SocketAddr, series: &str, want: f64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let got = try_scrape(admin).await.map(|m| value_of(&m, series));
        if got == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{series} is {got:?}, not {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One kept-alive admin connection that scrapes `/metrics` again and again,
/// so a test that counts the admin listener's connections knows every one it
/// opened (a scrape per connection could linger past the cap and be counted).
struct Scraper(TcpStream);

impl Scraper {
    async fn connect(admin: SocketAddr) -> Scraper {
        Scraper(TcpStream::connect(admin).await.unwrap())
    }

    async fn scrape(&mut self) -> String {
        self.0
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = tokio::time::timeout(DEADLINE, self.0.read(&mut buf))
                .await
                .expect("a scrape within the deadline")
                .unwrap();
            assert!(n > 0, "the admin listener closed the scraper's connection");
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw);
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                continue;
            };
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .expect("a scrape with content-length");
            if body.len() >= length {
                return body[..length].to_string();
            }
        }
    }

    async fn metric(&mut self, series: &str) -> f64 {
        let body = self.scrape().await;
        value_of(&body, series)
    }

    /// Polls until the series has `want`; fails after the deadline.
    async fn until(&mut self, series: &str, want: f64) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let got = self.metric(series).await;
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "{series} is {got}, not {want}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits until the server closes `stream` (end of file or a reset).
async fn closed_by_server(stream: &mut TcpStream) {
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => panic!("the server kept the connection open"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {} // a response, or the server's SETTINGS: read on
        }
    }
}

/// The most connections this test process can hold to an in-process server
/// (two descriptors each), leaving room for the rest of the process.
fn fd_budget() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft: usize = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(1024);
    soft.saturating_sub(256) / 3
}

fn series(name: &str, listener: &str) -> String {
    format!("portcullis_{name}{{listener=\"{listener}\"}}")
}

fn timed_out(listener: &str, timeout: &str) -> String {
    format!(
        "portcullis_connections_timed_out_total{{listener=\"{listener}\",timeout=\"{timeout}\"}}"
    )
}

/// Thousands of idle connections: the gRPC listener holds at most its cap
/// and closes the rest at accept (counted), checks on an open connection are
/// still answered, and once the idle ones go new connections are admitted.
/// The admin listener has its own cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_at_accept_and_checks_still_served() {
    let cap = fd_budget().min(1500);
    assert!(cap >= 100, "too few file descriptors for this test: {cap}");
    let long = Duration::from_secs(600);
    let (_dir, server) = start(ConnectionsConfig {
        max_grpc: cap,
        max_admin: 4,
        header_read_timeout: long,
        idle_timeout: long,
        admin_idle_timeout: long,
        ..ConnectionsConfig::default()
    })
    .await;
    let (grpc, admin) = (server.grpc_addr.unwrap(), server.admin_addr);
    // The only admin connection until the admin part below.
    let mut scraper = Scraper::connect(admin).await;
    let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    assert_eq!(check(&mut client).await.unwrap(), 200);

    // The cap, filled with connections that never send a byte.
    let mut idle = Vec::with_capacity(cap);
    for _ in 1..cap {
        idle.push(TcpStream::connect(grpc).await.unwrap());
    }
    let open = series("connections_open", "grpc");
    scraper.until(&open, cap as f64).await;

    // As many again: each is closed by the server at once.
    for _ in 0..cap {
        let mut extra = TcpStream::connect(grpc).await.unwrap();
        closed_by_server(&mut extra).await;
    }
    scraper
        .until(&series("connections_refused_total", "grpc"), cap as f64)
        .await;
    assert_eq!(
        scraper.metric(&open).await,
        cap as f64,
        "never more than the cap"
    );

    // The connection Envoy would hold is still served.
    assert_eq!(check(&mut client).await.unwrap(), 200);

    // Room again once the idle ones close.
    drop(idle);
    scraper.until(&open, 1.0).await;
    let mut fresh = AuthorizationClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    assert_eq!(check(&mut fresh).await.unwrap(), 200);

    // The admin listener: four held (the scraper and three), the fifth
    // closed at accept.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(admin).await.unwrap());
    }
    let mut extra = TcpStream::connect(admin).await.unwrap();
    closed_by_server(&mut extra).await;
    drop(held);
    scraper
        .until(&series("connections_open", "admin"), 1.0)
        .await;
    assert_eq!(
        scraper
            .metric(&series("connections_refused_total", "admin"))
            .await,
        1.0
    );
    server.stop().await.unwrap();
}

/// Silent connections are closed after the header-read timeout and a gRPC or
/// admin connection with no request after the idle timeout; checks are
/// answered meanwhile, and a client whose idle connection was closed
/// reconnects on its next check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_are_closed_after_their_timeouts() {
    let silent_count = fd_budget().min(500);
    let (_dir, server) = start(ConnectionsConfig {
        header_read_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(1),
        admin_idle_timeout: Duration::from_secs(1),
        ..ConnectionsConfig::default()
    })
    .await;
    let (grpc, admin) = (server.grpc_addr.unwrap(), server.admin_addr);

    let mut silent = Vec::new();
    for _ in 0..silent_count {
        silent.push(TcpStream::connect(grpc).await.unwrap());
    }
    let mut silent_admin = TcpStream::connect(admin).await.unwrap();
    // Served meanwhile.
    let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    assert_eq!(check(&mut client).await.unwrap(), 200);
    for s in &mut silent {
        closed_by_server(s).await;
    }
    closed_by_server(&mut silent_admin).await;
    until_metric(
        admin,
        &timed_out("grpc", "header_read"),
        silent_count as f64,
    )
    .await;
    until_metric(admin, &timed_out("admin", "header_read"), 1.0).await;

    // The client's connection, idle since its check, is closed too.
    until_metric(admin, &timed_out("grpc", "idle"), 1.0).await;
    until_metric(admin, &series("connections_open", "grpc"), 0.0).await;
    // ... and the client connects again for its next check.
    let deadline = Instant::now() + DEADLINE;
    while let Err(e) = check(&mut client).await {
        assert!(Instant::now() < deadline, "no reconnect: {e}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // An admin keep-alive connection: a request, then idle until closed.
    let mut keep = TcpStream::connect(admin).await.unwrap();
    keep.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    keep.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    closed_by_server(&mut keep).await;
    // Scrapes count as admin requests too; at least the keep-alive one idled.
    let deadline = Instant::now() + DEADLINE;
    while metric(admin, &timed_out("admin", "idle")).await < 1.0 {
        assert!(Instant::now() < deadline, "admin idle close not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await.unwrap();
}

/// A peer that stops answering HTTP/2 PINGs is dropped after the keepalive
/// interval and timeout, though neither connection timeout has run out: the
/// client below sends one request, then never reads from its socket again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_answering_pings_is_dropped() {
    let long = Duration::from_secs(600);
    let (_dir, server) = start(ConnectionsConfig {
        header_read_timeout: long,
        idle_timeout: long,
        http2_keepalive_interval: Duration::from_millis(300),
        http2_keepalive_timeout: Duration::from_millis(300),
        ..ConnectionsConfig::default()
    })
    .await;
    let (grpc, admin) = (server.grpc_addr.unwrap(), server.admin_addr);
    let tcp = TcpStream::connect(grpc).await.unwrap();
    let (mut h2, connection) = h2::client::handshake(tcp).await.unwrap();
    let mut connection = Box::pin(connection);
    let request = http::Request::post(format!("http://{grpc}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = h2.send_request(request, false).unwrap();
    // An empty HealthCheckRequest: the 5-byte gRPC prefix alone.
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    // Drive the connection only until the response's headers are in.
    let response = tokio::select! {
        r = response => r.unwrap(),
        e = &mut connection => panic!("connection ended first: {e:?}"),
    };
    assert_eq!(response.status(), 200);
    let open = series("connections_open", "grpc");
    assert_eq!(metric(admin, &open).await, 1.0);
    // From here on nobody polls `connection`: PINGs go unanswered.
    until_metric(admin, &open, 0.0).await;
    assert_eq!(metric(admin, &timed_out("grpc", "idle")).await, 0.0);
    drop(connection);
    server.stop().await.unwrap();
}

/// Envoy's side of the idle timeout: portcullis closes Envoy's connection to
/// the ext_authz cluster once it has been idle, and Envoy opens a new one for
/// its next check without failing a request. (The header-read timeout is far
/// longer than the test's deadlines: the idle one alone must close it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_reconnects_after_an_idle_connection_is_closed() {
    let (_dir, server) = start(ConnectionsConfig {
        header_read_timeout: Duration::from_secs(600),
        idle_timeout: Duration::from_millis(500),
        ..ConnectionsConfig::default()
    })
    .await;
    let (grpc, admin) = (server.grpc_addr.unwrap(), server.admin_addr);
    let envoy = support::Envoy::start(&envoy_config(grpc)).await;
    let main = envoy.listener("main").await;
    let through_envoy = || async move {
        support::http(main, "GET", "/open", &[("host", "t1.example")], None)
            .await
            .status
    };
    assert_eq!(through_envoy().await, 200);
    until_metric(admin, &timed_out("grpc", "idle"), 1.0).await;
    until_metric(admin, &series("connections_open", "grpc"), 0.0).await;
    assert_eq!(through_envoy().await, 200, "{}", envoy.log());
    let stats = support::http(
        envoy.admin,
        "GET",
        "/stats?filter=^cluster.portcullis.upstream_cx_total$",
        &[],
        None,
    )
    .await
    .body;
    assert!(stats.contains("upstream_cx_total: 2"), "{stats}");
    drop(envoy);
    server.stop().await.unwrap();
}

/// A listener with ext_authz in front of a direct response, and portcullis as
/// its HTTP/2 cluster.
fn envoy_config(portcullis: SocketAddr) -> String {
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
    - name: main
      address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: main
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: {{ prefix: / }}
                          direct_response: {{ status: 200, body: {{ inline_string: "upstream\n" }} }}
                http_filters:
                  - name: envoy.filters.http.ext_authz
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
                      transport_api_version: V3
                      failure_mode_allow: false
                      grpc_service: {{ envoy_grpc: {{ cluster_name: portcullis }}, timeout: 2s }}
                  - name: envoy.filters.http.router
                    typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
    - name: portcullis
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {{ http2_protocol_options: {{}} }}
      load_assignment:
        cluster_name: portcullis
        endpoints:
          - lb_endpoints:
              - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}
"#,
        port = portcullis.port()
    )
}

/// With TLS, a handshake in progress is a connection like any other: it holds
/// its place under `connections.max_grpc` from the accept, the header-read
/// timeout (handshake included) closes it, and one client that never starts
/// its handshake does not hold up another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_tls_handshakes_are_capped_and_timed_out() {
    use tonic::transport::{Certificate, ClientTlsConfig};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t1.yaml"), POLICY).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["portcullis.test".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path().join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
    let cap = 8;
    let at = |n: &str| dir.path().join(n);
    let server = support::start_portcullis_with(dir.path(), |c| {
        c.connections = ConnectionsConfig {
            max_grpc: cap,
            header_read_timeout: Duration::from_millis(500),
            ..ConnectionsConfig::default()
        };
        c.tls = Some(portcullis::transport::tls::GrpcTlsConfig {
            cert_file: at("server.pem"),
            key_file: at("server.key"),
            client_ca_file: None,
            allowed_clients: Vec::new(),
            reload_interval: portcullis::transport::tls::DEFAULT_RELOAD_INTERVAL,
        });
    })
    .await;
    let (grpc, admin) = (server.grpc_addr.unwrap(), server.admin_addr);
    let tls_client = || async {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(cert.pem()))
            .domain_name("portcullis.test");
        let channel = Channel::from_shared(format!("https://{grpc}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        AuthorizationClient::new(channel)
    };

    // All but one place held by clients that never send a ClientHello: a
    // full handshake and a check still go through the last place.
    let mut silent = Vec::new();
    for _ in 1..cap {
        silent.push(TcpStream::connect(grpc).await.unwrap());
    }
    let open = series("connections_open", "grpc");
    until_metric(admin, &open, (cap - 1) as f64).await;
    let mut client = tls_client().await;
    assert_eq!(check(&mut client).await.unwrap(), 200);
    until_metric(admin, &open, cap as f64).await;

    // Full: one more is closed at accept, before any handshake.
    let mut extra = TcpStream::connect(grpc).await.unwrap();
    closed_by_server(&mut extra).await;
    until_metric(admin, &series("connections_refused_total", "grpc"), 1.0).await;

    // The silent ones are closed at the header-read timeout; the served
    // connection stays.
    for s in &mut silent {
        closed_by_server(s).await;
    }
    until_metric(admin, &timed_out("grpc", "header_read"), (cap - 1) as f64).await;
    until_metric(admin, &open, 1.0).await;
    assert_eq!(check(&mut client).await.unwrap(), 200);
    server.stop().await.unwrap();
}
