//! The server started from its configuration: policies loaded, every
//! listener bound (gRPC on TCP and/or a unix socket, the admin port, the
//! AuthZEN API and the HTTP listener when configured) behind
//! its connection cap and timeouts, the watcher and the reload loop running;
//! and its orderly shutdown. SIGTERM or SIGINT in `serve` marks the server not
//! ready and not serving, stops accepting connections and lets in-flight
//! checks finish within the grace period.
//!
//! The wiring of every floor below; the gRPC handler itself is
//! [`crate::transport::server`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic_health::ServingStatus;

use crate::app::config::Config;
use crate::identity::keys;
use crate::observe::audit::DecisionLog;
use crate::observe::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::tenants::store::PolicyStore;
use crate::tenants::watch as policy_watch;
use crate::transport::admin::{self, AdminState};
use crate::transport::authzen::Authzen;
use crate::transport::check_route::CheckRoute;
use crate::transport::clients::ClientGate;
use crate::transport::connections::{Conn, CountRequests, Gate, GatedListener, Guarded};
use crate::transport::http_authz::{self, Asker, HttpAuthz};
use crate::transport::net::Batched;
use crate::transport::server::AuthzService;
use crate::transport::shared_state::RedisState;
use crate::transport::tls::ServerTls;
use crate::transport::tls_accept;

/// A running server; dropped handles do not stop it, [`Running::shutdown`] does.
#[derive(Debug)]
pub struct Running {
    pub grpc_addr: Option<SocketAddr>,
    /// The AuthZEN listener's address, when `authzen` is configured.
    pub authzen_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    /// The HTTP listener (`http.listen`), when configured.
    pub http_addr: Option<SocketAddr>,
    pub store: Arc<PolicyStore>,
    /// The check permits (`limits.max_concurrent_checks`); a holder of some
    /// leaves that many fewer checks to be decided at once.
    pub permits: Arc<Semaphore>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<anyhow::Result<()>>,
    grace: Duration,
}

const SERVICE_NAME: &str = "envoy.service.auth.v3.Authorization";

/// Loads policies, binds every listener and starts serving.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let store = Arc::new(config.store());
    let first = {
        let s = Arc::clone(&store);
        tokio::task::spawn_blocking(move || s.reload()).await?
    };
    policy_watch::log_status(&first);
    let metrics = Arc::new(Metrics::new(&config.metrics));
    observe_reload(&metrics, &store, &first);
    let log = DecisionLog::open(&config.decision_log).with_context(|| {
        format!(
            "cannot open the decision log {}",
            config.decision_log.output
        )
    })?;

    let minter = config.minter().map_err(anyhow::Error::msg)?;
    let shared = match &config.shared_state {
        Some(s) => Some(Arc::new(
            RedisState::new(&s.redis, metrics.shared_state())
                .map_err(anyhow::Error::msg)?
                .with_shared_answers(s.shared_answers().map_err(anyhow::Error::msg)?),
        )),
        None => None,
    };
    let pipeline = Arc::new(
        Pipeline::new(Arc::clone(&store), config.tenancy.clone())
            .with_minter(minter.clone())
            .with_client_errors(config.client_errors)
            .with_shared_state(
                shared
                    .clone()
                    .map(|s| s as Arc<dyn crate::identity::shared_state::SharedState>),
            ),
    );
    let (stop, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = JoinSet::new();
    if let Some(shared) = &shared {
        // The first full read before serving, so live revocations hold from
        // the first check (a Redis that is down leaves them unavailable).
        let _ = shared.refresh_revocations().await;
        let (shared, s) = (Arc::clone(shared), stopped());
        tasks.spawn(async move {
            shared.follow_revocations(s).await;
            Ok(())
        });
    }
    let draining = Arc::new(AtomicBool::new(false));
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, store.is_ready()).await;

    // Admin first, so /healthz answers while gRPC binds.
    let admin_listener = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("cannot bind admin address {}", config.admin_listen))?;
    let admin_addr = admin_listener.local_addr()?;
    let admin_router = admin::router(AdminState {
        store: Arc::clone(&store),
        draining: Arc::clone(&draining),
        minter,
        metrics: Arc::clone(&metrics),
        shared: shared.clone(),
        config_digest: config.digest.as_str().into(),
    });
    let admin_stop = stopped();
    let admin_listener = GatedListener {
        inner: admin_listener,
        gate: Gate::admin(&config.connections, metrics.connections("admin")),
    };
    let admin_service = admin_router
        .layer(CountRequests)
        .into_make_service_with_connect_info::<crate::transport::connections::Conn>();
    tasks.spawn(async move {
        axum::serve(admin_listener, admin_service)
            .with_graceful_shutdown(admin_stop)
            .await
            .context("admin server failed")
    });

    let permits = Arc::new(Semaphore::new(config.limits.max_concurrent_checks));
    // Read before binding: bad certificate files stop the start. Later
    // changes to them are picked up by `ServerTls::watch`.
    let tls = match &config.tls {
        Some(t) => {
            let tls = ServerTls::load(t, metrics.tls()).map_err(anyhow::Error::msg)?;
            let tls = Arc::new(tls);
            let (watching, stop) = (Arc::clone(&tls), stopped());
            tasks.spawn(async move {
                watching.watch(stop).await;
                Ok(())
            });
            Some(tls)
        }
        None => None,
    };
    let connections = &config.connections;
    let make_router = || -> anyhow::Result<_> {
        let builder = tonic::transport::Server::builder()
            // A dead peer (no answer to a PING) frees its connection.
            .http2_keepalive_interval(Some(connections.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(connections.http2_keepalive_timeout));
        Ok(builder
            // Outermost: a TLS client outside tls.allowed_clients is refused.
            .layer(ClientGate {
                refused: metrics.tls().clients_refused,
            })
            .layer(CountRequests)
            .add_service(health_service.clone())
            .add_service(CheckRoute::new(
                AuthzService::with_observers(
                    Arc::clone(&pipeline),
                    Arc::clone(&metrics),
                    log.clone(),
                )
                .with_permits(Arc::clone(&permits)),
            )))
    };
    // One gRPC server on `incoming` (plain or TLS: different types), stopped
    // with the rest.
    macro_rules! serve {
        ($incoming:expr, $what:literal) => {{
            let (router, incoming, s) = (make_router()?, $incoming, stopped());
            tasks.spawn(async move {
                router
                    .serve_with_incoming_shutdown(incoming, s)
                    .await
                    .context($what)
            });
        }};
    }
    let mut grpc_addr = None;
    if let Some(addr) = config.listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind gRPC address {addr}"))?;
        grpc_addr = Some(listener.local_addr()?);
        // Beyond the cap a connection is closed at accept; see `connections`.
        let gate = Gate::grpc(connections, metrics.connections("grpc"));
        let incoming =
            tokio_stream::StreamExt::filter_map(TcpListenerStream::new(listener), move |conn| {
                match conn {
                    Ok(c) => {
                        // No Nagle delay: a response's trailers must not wait for
                        // the peer's delayed ACK of its headers (about 40ms per
                        // check on Linux).
                        let _ = c.set_nodelay(true);
                        gate.admit(c).map(|c| Ok(Batched(c)))
                    }
                    Err(e) => Some(Err(e)),
                }
            });
        match &tls {
            Some(tls) => serve!(
                tls_accept::accept(with_conn(incoming), Arc::clone(tls)),
                "gRPC server failed"
            ),
            None => serve!(incoming, "gRPC server failed"),
        }
    }
    if let Some(path) = &config.unix_socket {
        // A stale socket from an earlier run would make bind fail.
        if path.exists() {
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("cannot bind unix socket {}", path.display()))?;
        let gate = Gate::grpc(connections, metrics.connections("unix"));
        let incoming =
            tokio_stream::StreamExt::filter_map(UnixListenerStream::new(listener), move |conn| {
                match conn {
                    Ok(c) => gate.admit(c).map(|c| Ok(Batched(c))),
                    Err(e) => Some(Err(e)),
                }
            });
        match &tls {
            Some(tls) => serve!(
                tls_accept::accept(with_conn(incoming), Arc::clone(tls)),
                "gRPC server on unix socket failed"
            ),
            None => serve!(incoming, "gRPC server on unix socket failed"),
        }
    }

    let mut authzen_addr = None;
    if let Some(az) = &config.authzen {
        let listener = TcpListener::bind(az.listen)
            .await
            .with_context(|| format!("cannot bind AuthZEN address {}", az.listen))?;
        authzen_addr = Some(listener.local_addr()?);
        let api = Authzen::new(
            &pipeline,
            az,
            Arc::clone(&metrics),
            log.clone(),
            Arc::clone(&permits),
        );
        // Capped like the admin port: askers are few, long-lived services.
        let listener = GatedListener {
            inner: listener,
            gate: Gate::admin(connections, metrics.connections("authzen")),
        };
        let service = api
            .router()
            .layer(CountRequests)
            .into_make_service_with_connect_info::<Conn>();
        let s = stopped();
        tasks.spawn(async move {
            axum::serve(listener, service)
                .with_graceful_shutdown(s)
                .await
                .context("AuthZEN server failed")
        });
    }

    let mut http_addr = None;
    if let Some(http) = &config.http {
        let listener = TcpListener::bind(http.listen)
            .await
            .with_context(|| format!("cannot bind HTTP address {}", http.listen))?;
        http_addr = Some(listener.local_addr()?);
        let listener = GatedListener {
            inner: listener,
            gate: Gate::grpc(connections, metrics.connections("http")),
        };
        let service =
            AuthzService::with_observers(Arc::clone(&pipeline), Arc::clone(&metrics), log.clone())
                .with_permits(Arc::clone(&permits));
        let state = HttpAuthz::new(
            service,
            http.clone(),
            &config.tenancy.context_key,
            config.limits.max_body_bytes,
        );
        let app = http_authz::router(state).into_make_service_with_connect_info::<Asker>();
        let s = stopped();
        tasks.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(s)
                .await
                .context("HTTP authorization server failed")
        });
    }

    {
        let store = Arc::clone(&store);
        let health = health.clone();
        let s = stopped();
        let reload = config.reload.clone();
        let draining = Arc::clone(&draining);
        let metrics = Arc::clone(&metrics);
        tasks.spawn(async move {
            let handle = tokio::runtime::Handle::current();
            policy_watch::run(
                Arc::clone(&store),
                reload.debounce,
                reload.rescan_interval,
                move |status| {
                    policy_watch::log_status(status);
                    observe_reload(&metrics, &store, status);
                    if !draining.load(Ordering::Acquire) {
                        let health = health.clone();
                        let ready = store.is_ready();
                        handle.spawn(async move { set_health(&health, ready).await });
                    }
                },
                s,
            )
            .await;
            Ok(())
        });
    }
    {
        // Remote issuer keys: fetched when due, in the background.
        let s = stop.subscribe();
        tasks.spawn(async move {
            keys::refresh_loop(s).await;
            Ok(())
        });
    }
    {
        // On shutdown: report NOT_SERVING and not ready. The listeners close at
        // the same moment, so this only informs clients already connected; a
        // pre-stop delay (Kubernetes `preStop`) is what gives load balancers
        // time to move away.
        let s = stopped();
        let draining = Arc::clone(&draining);
        let health = health.clone();
        tasks.spawn(async move {
            s.await;
            draining.store(true, Ordering::Release);
            set_health(&health, false).await;
            Ok(())
        });
    }

    Ok(Running {
        grpc_addr,
        authzen_addr,
        admin_addr,
        http_addr,
        store,
        permits,
        stop,
        tasks,
        grace: config.shutdown_grace,
    })
}

/// Metrics after a load, and a loud warning while any tenant is in dry-run.
fn observe_reload(
    metrics: &Metrics,
    store: &PolicyStore,
    status: &crate::tenants::store::StoreStatus,
) {
    metrics.observe_reload(store, status);
    let dry = crate::observe::metrics::dry_run_tenants(store, status);
    if !dry.is_empty() {
        tracing::warn!(
            tenants = ?dry,
            "DRY RUN: these tenants' denies are logged and counted but NOT enforced; every request to them is allowed"
        );
    }
}

async fn set_health(health: &tonic_health::server::HealthReporter, ready: bool) {
    let status = if ready {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_NAME, status).await;
}

impl Running {
    /// Stops accepting connections; in-flight checks continue.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Serves until `stop` resolves (or a listener fails), then shuts down and
    /// waits for in-flight work, aborting what has not finished within the grace
    /// period. Returns the first failure.
    pub async fn wait_or(
        mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let flatten = |res: Result<anyhow::Result<()>, tokio::task::JoinError>| {
            res.map_err(anyhow::Error::from).and_then(|r| r)
        };
        let mut first_error = None;
        tokio::select! {
            () = stop => {}
            Some(res) = self.tasks.join_next() => first_error = flatten(res).err(),
        }
        self.shutdown();
        let grace = self.grace;
        let tasks = &mut self.tasks;
        let drain = async move {
            let mut err = None;
            while let Some(res) = tasks.join_next().await {
                if let Err(e) = flatten(res) {
                    err.get_or_insert(e);
                }
            }
            err
        };
        match tokio::time::timeout(grace, drain).await {
            Ok(err) => first_error = first_error.or(err),
            Err(_) => {
                tracing::warn!(
                    ?grace,
                    "shutdown grace period ended; aborting remaining work"
                );
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Shuts down now and waits for the drain.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.wait_or(std::future::ready(())).await
    }
}

/// Each admitted connection with its handle, for the TLS accept.
fn with_conn<S, T>(
    incoming: S,
) -> impl tokio_stream::Stream<Item = std::io::Result<(Batched<Guarded<T>>, Conn)>> + Send + Unpin
where
    S: tokio_stream::Stream<Item = std::io::Result<Batched<Guarded<T>>>> + Send + Unpin,
{
    tokio_stream::StreamExt::map(incoming, |c| {
        c.map(|c| {
            let conn = c.0.conn().clone();
            (c, conn)
        })
    })
}
