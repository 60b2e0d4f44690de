//! The heavier real peers that `tests/tools/peers.sh` installs as
//! `.tools/peers/NAME`: Jaeger, Keycloak and OPA-Envoy. Each starts from a
//! generated configuration in its own temp dir, binds loopback only on free
//! ports, and is killed by its own handle (its pid) when dropped; nothing is
//! stopped by name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{HttpResponse, dead_port, http, repo_root};

/// How long Keycloak may take to start: it is a JVM that builds its schema in
/// an in-memory database, slow on two busy cores.
pub const KEYCLOAK_READY_TIMEOUT: Duration = Duration::from_secs(300);

/// A program `tests/tools/peers.sh` linked into `.tools/peers`.
pub fn peer_path(name: &str) -> PathBuf {
    let path = repo_root().join(".tools/peers").join(name);
    assert!(
        path.exists(),
        "no {name}: run `make tools` (tests/tools/peers.sh builds it into the peers cache)"
    );
    path
}

/// A free loopback address (bound, then released) for a peer that cannot
/// report the port it bound.
pub fn free_loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], dead_port()))
}

/// A child process, killed by pid when dropped, with its output in `log`.
pub struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(mut cmd: Command, log: PathBuf) -> Process {
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?} starts: {e}"));
        Process { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the log if the process has exited.
    fn assert_running(&mut self, name: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{name} exited with {status}:\n{}", self.log());
        }
    }

    /// Sends a signal to this process alone (by its pid).
    pub fn signal(&self, signal: &str) {
        signal_pid(self.pid(), signal);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // A stopped process (SIGSTOP) is killed all the same: SIGKILL needs no
        // cooperation.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `ready` every 100 ms until it holds, failing with the peer's log
/// after `timeout` or if the peer exits.
async fn wait_ready<F, Fut>(name: &str, process: &mut Process, timeout: Duration, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        process.assert_running(name);
        if ready().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} not ready in {timeout:?}:\n{}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An HTTP GET that answers `None` when nothing listens yet.
async fn try_get(addr: SocketAddr, target: &str) -> Option<HttpResponse> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    Some(super::exchange(stream, "GET", target, &[], None).await)
}

/// Jaeger 2 (`cmd/jaeger`), run with `examples/jaeger/jaeger.yaml` (the
/// walk-through's own file), every address in it set to a free loopback port.
pub struct Jaeger {
    pub process: Process,
    /// The OTLP/gRPC receiver.
    pub otlp: SocketAddr,
    /// The query service's HTTP API.
    pub query: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Jaeger {
    pub async fn start() -> Jaeger {
        let dir = tempfile::tempdir().unwrap();
        let otlp = free_loopback();
        let query = free_loopback();
        let mut cmd = Command::new(peer_path("jaeger"));
        cmd.arg("--config")
            .arg(repo_root().join("examples/jaeger/jaeger.yaml"))
            .current_dir(dir.path())
            .env("JAEGER_OTLP_GRPC", otlp.to_string())
            .env("JAEGER_QUERY_HTTP", query.to_string())
            .env("JAEGER_QUERY_GRPC", free_loopback().to_string())
            .env("JAEGER_HEALTH_HTTP", free_loopback().to_string());
        let mut process = Process::spawn(cmd, dir.path().join("jaeger.log"));
        wait_ready(
            "jaeger",
            &mut process,
            super::READY_TIMEOUT,
            || async move {
                let api = try_get(query, "/api/v3/services").await;
                api.is_some_and(|r| r.status == 200)
                    && tokio::net::TcpStream::connect(otlp).await.is_ok()
            },
        )
        .await;
        Jaeger {
            process,
            otlp,
            query,
            _dir: dir,
        }
    }

    /// The trace as Jaeger's query API v3 answers it (OTLP JSON under
    /// `result`), or `None` while Jaeger has no span of it.
    pub async fn trace(&self, trace_id: &str) -> Option<Value> {
        let r = http(
            self.query,
            "GET",
            &format!("/api/v3/traces/{trace_id}"),
            &[],
            None,
        )
        .await;
        match r.status {
            200 => Some(r.json()),
            404 => None,
            other => panic!("jaeger answered {other}: {}", r.body),
        }
    }
}

/// Keycloak (the Quarkus distribution) in `start-dev` with an in-memory
/// database, HTTP on loopback, health on, and one realm imported from JSON.
///
/// Keycloak's home is laid out in a temp dir: `bin`, `conf` and the small
/// generated `lib/quarkus` are copied (Keycloak rewrites them), the jars and
/// themes are links into the shared cache, which is never written.
pub struct Keycloak {
    pub process: Process,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub http: SocketAddr,
    pub management: SocketAddr,
    pub admin_password: String,
    /// The serving JVM's pid: the process under `kc.sh` that holds the
    /// listening HTTP socket. Signals go here, not to `kc.sh` (whose Java is
    /// a child, or, after a first start's build, another process again).
    server_pid: u32,
    _dir: tempfile::TempDir,
}

impl Drop for Keycloak {
    fn drop(&mut self) {
        // The JVM first (it may be kc.sh's child); then `process` kills kc.sh.
        let _ = Command::new("kill")
            .args(["-KILL", &self.server_pid.to_string()])
            .status();
    }
}

/// The pid among `pid` and its descendants that holds the socket listening
/// on `port` (read from /proc: the socket's inode in /proc/net/tcp or tcp6,
/// where a JVM's dual-stack socket shows, then the process whose descriptors
/// name it).
fn listener_under(pid: u32, port: u16) -> Option<u32> {
    let suffix = format!(":{port:04X}");
    // Columns: sl, local_address, rem_address, st, ..., inode (the tenth).
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| {
            let table = std::fs::read_to_string(table).ok()?;
            table.lines().skip(1).find_map(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                let listening = cols.get(3) == Some(&"0A");
                let local = cols.get(1).is_some_and(|a| a.ends_with(&suffix));
                (listening && local)
                    .then(|| cols.get(9).map(|i| i.to_string()))
                    .flatten()
            })
        })?;
    let socket = format!("socket:[{inode}]");
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let holds = std::fs::read_dir(format!("/proc/{p}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy() == socket));
        if holds {
            return Some(p);
        }
        for task in std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                todo.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
    }
    None
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

impl Keycloak {
    pub async fn start(realm: &Value) -> Keycloak {
        let dist = std::fs::canonicalize(peer_path("keycloak")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("keycloak");
        copy_dir(&dist.join("bin"), &home.join("bin"));
        copy_dir(&dist.join("conf"), &home.join("conf"));
        copy_dir(&dist.join("lib/app"), &home.join("lib/app"));
        // `start-dev` first builds Keycloak for the dev profile (about a
        // minute on two cores) and keeps the result in lib/quarkus; a
        // distribution cannot be built for it ahead (`kc.sh build` refuses
        // the dev profile), so the first start's build is kept in the cache.
        let built = dist.join(DEV_BUILD);
        let quarkus = if built.is_dir() {
            built.clone()
        } else {
            dist.join("lib/quarkus")
        };
        copy_dir(&quarkus, &home.join("lib/quarkus"));
        std::fs::copy(
            dist.join("lib/quarkus-run.jar"),
            home.join("lib/quarkus-run.jar"),
        )
        .unwrap();
        std::os::unix::fs::symlink(dist.join("lib/lib"), home.join("lib/lib")).unwrap();
        std::os::unix::fs::symlink(dist.join("themes"), home.join("themes")).unwrap();
        std::fs::create_dir_all(home.join("providers")).unwrap();
        std::fs::create_dir_all(home.join("data/import")).unwrap();
        std::fs::write(
            home.join("data/import/realm.json"),
            serde_json::to_vec_pretty(realm).unwrap(),
        )
        .unwrap();

        let http_addr = free_loopback();
        let management = free_loopback();
        let admin_password = format!("admin-{}", std::process::id());
        let mut cmd = Command::new(home.join("bin/kc.sh"));
        cmd.arg("start-dev")
            .arg("--health-enabled=true")
            .arg("--http-host=127.0.0.1")
            .arg(format!("--http-port={}", http_addr.port()))
            .arg(format!("--http-management-port={}", management.port()))
            .arg("--import-realm")
            .current_dir(dir.path())
            .env("KC_BOOTSTRAP_ADMIN_USERNAME", "admin")
            .env("KC_BOOTSTRAP_ADMIN_PASSWORD", &admin_password)
            // Small heap: the tests are a handful of requests.
            .env("JAVA_OPTS_KC_HEAP", "-Xms64m -Xmx512m");
        let mut process = Process::spawn(cmd, dir.path().join("keycloak.log"));
        wait_ready(
            "keycloak",
            &mut process,
            KEYCLOAK_READY_TIMEOUT,
            || async move {
                try_get(management, "/health/ready")
                    .await
                    .is_some_and(|r| r.status == 200)
            },
        )
        .await;
        if !built.is_dir() {
            // Written aside and renamed: another start sees all of it or none.
            let aside = dist.join(format!("{DEV_BUILD}.{}", std::process::id()));
            copy_dir(&home.join("lib/quarkus"), &aside);
            if std::fs::rename(&aside, &built).is_err() {
                let _ = std::fs::remove_dir_all(&aside);
            }
        }
        let server_pid = listener_under(process.pid(), http_addr.port()).unwrap_or_else(|| {
            panic!(
                "no process under kc.sh listens on {http_addr}:\n{}",
                process.log()
            )
        });
        Keycloak {
            server_pid,
            process,
            base: format!("http://{http_addr}"),
            http: http_addr,
            management,
            admin_password,
            _dir: dir,
        }
    }
}

impl Keycloak {
    /// Sends a signal to Keycloak's JVM alone (by its pid).
    pub fn signal(&self, signal: &str) {
        signal_pid(self.server_pid, signal);
    }
}

fn signal_pid(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

/// Where the cached distribution keeps the first `start-dev`'s build.
const DEV_BUILD: &str = "lib/quarkus-dev-build";

/// OPA-Envoy (`opa-envoy-plugin run --server`) serving the Rego files of a
/// policy directory as ext_authz over gRPC, from a generated config file.
pub struct OpaEnvoy {
    pub process: Process,
    /// The ext_authz gRPC listener (`plugins.envoy_ext_authz_grpc.addr`).
    pub grpc: SocketAddr,
    /// OPA's own HTTP API (health, data).
    pub http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl OpaEnvoy {
    /// Starts OPA-Envoy on `policy_dir`, deciding by `query` (the plugin's
    /// `path`, e.g. `envoy/authz/allow`), and waits until its plugins are up.
    pub async fn start(policy_dir: &Path, query: &str) -> OpaEnvoy {
        let dir = tempfile::tempdir().unwrap();
        let grpc = free_loopback();
        let http_addr = free_loopback();
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "plugins:\n  envoy_ext_authz_grpc:\n    addr: {grpc}\n    path: {query}\n    \
                 dry-run: false\n    enable-reflection: false\n\
                 decision_logs:\n  console: false\n"
            ),
        )
        .unwrap();
        let mut cmd = Command::new(peer_path("opa-envoy-plugin"));
        cmd.arg("run")
            .arg("--server")
            .arg(format!("--addr={http_addr}"))
            .arg("--disable-telemetry")
            .arg(format!("--config-file={}", config.display()))
            .arg(policy_dir)
            .current_dir(dir.path());
        let mut process = Process::spawn(cmd, dir.path().join("opa-envoy.log"));
        wait_ready(
            "opa-envoy",
            &mut process,
            super::READY_TIMEOUT,
            || async move {
                try_get(http_addr, "/health?plugins")
                    .await
                    .is_some_and(|r| r.status == 200)
                    && tokio::net::TcpStream::connect(grpc).await.is_ok()
            },
        )
        .await;
        OpaEnvoy {
            process,
            grpc,
            http: http_addr,
            _dir: dir,
        }
    }
}
