//! The gRPC server: `envoy.service.auth.v3.Authorization/Check` and
//! `grpc.health.v1`, on TCP and/or a unix socket, plus the admin HTTP port.
//!
//! The handler only chains the pipeline and owns the span. Shutdown (SIGTERM or
//! SIGINT in `serve`) marks the server not ready and not serving, stops accepting
//! connections and lets in-flight checks finish within the grace period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tracing::Instrument;

use crate::app::config::{Config, DEFAULT_MAX_CONCURRENT_CHECKS};
use crate::decision::Decision;
use crate::decision::render;
use crate::foundation::proto::auth::authorization_server::{Authorization, AuthorizationServer};
use crate::foundation::proto::auth::{CheckRequest, CheckResponse};
use crate::foundation::reason::Reason;
use crate::identity::keys;
use crate::observe::audit::{self, DecisionLog};
use crate::observe::metrics::Metrics;
use crate::observe::telemetry;
use crate::pipeline::{DEFAULT_KEY_WAIT, Pipeline};
use crate::tenants::store::PolicyStore;
use crate::tenants::watch as policy_watch;
use crate::transport::admin::{self, AdminState};
use crate::transport::net::Batched;

/// The ext_authz service.
#[derive(Debug, Clone)]
pub struct AuthzService {
    pipeline: Arc<Pipeline>,
    metrics: Arc<Metrics>,
    log: DecisionLog,
    /// One permit per check in flight (`limits.max_concurrent_checks`), shared
    /// by every listener.
    permits: Arc<Semaphore>,
}

impl AuthzService {
    /// A service with default metrics and no decision log.
    pub fn new(pipeline: Arc<Pipeline>) -> AuthzService {
        let metrics = Arc::new(Metrics::new(&Default::default()));
        AuthzService::with_observers(pipeline, metrics, DecisionLog::off())
    }

    pub fn with_observers(
        pipeline: Arc<Pipeline>,
        metrics: Arc<Metrics>,
        log: DecisionLog,
    ) -> AuthzService {
        AuthzService {
            pipeline,
            metrics,
            log,
            permits: Arc::new(Semaphore::new(DEFAULT_MAX_CONCURRENT_CHECKS)),
        }
    }

    /// Bounds the checks in flight with `permits` (see [`Running::permits`]).
    pub fn with_permits(mut self, permits: Arc<Semaphore>) -> AuthzService {
        self.permits = permits;
        self
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let started = Instant::now();
        let span = tracing::info_span!(
            "check",
            otel.kind = "server",
            tenant = tracing::field::Empty,
            decision = tracing::field::Empty,
            rule = tracing::field::Empty,
            reason = tracing::field::Empty,
            decision_id = tracing::field::Empty,
            auth_method = tracing::field::Empty,
            mode = tracing::field::Empty,
            enforced = tracing::field::Empty,
        );
        // Envoy's span is the parent; the client's traceparent only a link.
        let parent = telemetry::parent_from_metadata(request.metadata());
        let client = request
            .get_ref()
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .and_then(|h| telemetry::client_link(&h.headers));
        telemetry::attach(&span, &parent, client);
        async {
            let wait = grpc_timeout(request.metadata()).map_or(DEFAULT_KEY_WAIT, |t| {
                // Leave room to answer before Envoy gives up on us.
                t.saturating_sub(t / 5).min(DEFAULT_KEY_WAIT)
            });
            // Never queue: a check beyond the limit is answered now, denied,
            // so Envoy fails closed even with `failure_mode_allow: true`.
            let permit = self.permits.try_acquire();
            let decision = match &permit {
                Ok(_) => self.pipeline.check_async(request.get_ref(), wait).await,
                Err(_) => Decision::deny(uuid::Uuid::new_v4().to_string(), Reason::Overloaded),
            };
            drop(permit);
            let span = tracing::Span::current();
            // In a dry-run tenant: what would have been, and what was enforced.
            let outcome = crate::decision::audit::Outcome::of(&decision);
            span.record("decision_id", decision.decision_id.as_str());
            span.record("decision", outcome.decision);
            span.record("reason", outcome.reason.code());
            span.record("auth_method", decision.auth_method);
            span.record("mode", decision.audit.mode.as_str());
            if decision.audit.would_be.is_some() {
                span.record("enforced", if decision.allowed { "allow" } else { "deny" });
            }
            if let Some(t) = &decision.tenant {
                span.record("tenant", &**t);
            }
            if let Some(r) = outcome.rule {
                span.record("rule", r);
            }
            let latency = started.elapsed();
            self.metrics.observe_decision(&decision, latency);
            let trace_id = telemetry::trace_id(&span, &parent);
            let summary = audit::RequestSummary::of(request.get_ref());
            if !self
                .log
                .record(&decision, &summary, trace_id.as_deref(), latency)
            {
                self.metrics.log_dropped();
            }
            // The line carries the decision's fields itself: the diagnostic
            // log does not record spans (see `telemetry::init`).
            if decision.allowed {
                tracing::debug!(
                    status = decision.status(),
                    auth_method = decision.auth_method,
                    subject = decision.subject.as_deref(),
                    decision_id = decision.decision_id.as_str(),
                    decision = outcome.decision,
                    reason = outcome.reason.code(),
                    tenant = decision.tenant.as_deref(),
                    rule = outcome.rule,
                    "allow"
                );
            } else {
                tracing::info!(
                    status = decision.status(),
                    auth_method = decision.auth_method,
                    subject = decision.subject.as_deref(),
                    detail = decision.detail.as_deref(),
                    decision_id = decision.decision_id.as_str(),
                    decision = outcome.decision,
                    reason = outcome.reason.code(),
                    tenant = decision.tenant.as_deref(),
                    rule = outcome.rule,
                    "deny"
                );
            }
            Ok(Response::new(render::render(&decision)))
        }
        .instrument(span)
        .await
    }
}

/// The deadline Envoy set on the Check call (`grpc-timeout`, gRPC over HTTP/2:
/// up to 8 digits and a unit).
pub fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A running server; dropped handles do not stop it, [`Running::shutdown`] does.
#[derive(Debug)]
pub struct Running {
    pub grpc_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
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
    let pipeline = Arc::new(
        Pipeline::new(Arc::clone(&store), config.tenancy.clone()).with_minter(minter.clone()),
    );
    let (stop, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let draining = Arc::new(AtomicBool::new(false));
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, store.is_ready()).await;

    let mut tasks = JoinSet::new();

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
    });
    let admin_stop = stopped();
    tasks.spawn(async move {
        axum::serve(admin_listener, admin_router)
            .with_graceful_shutdown(admin_stop)
            .await
            .context("admin server failed")
    });

    let permits = Arc::new(Semaphore::new(config.limits.max_concurrent_checks));
    // Read before binding: bad certificate files stop the start.
    let tls = match &config.tls {
        Some(t) => {
            crate::transport::tls::install_crypto_provider();
            Some(t.load().map_err(anyhow::Error::msg)?)
        }
        None => None,
    };
    let make_router = || -> anyhow::Result<_> {
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &tls {
            builder = builder
                .tls_config(tls.clone())
                .context("cannot set up TLS on the gRPC listener")?;
        }
        Ok(builder
            .add_service(health_service.clone())
            .add_service(AuthorizationServer::new(
                AuthzService::with_observers(
                    Arc::clone(&pipeline),
                    Arc::clone(&metrics),
                    log.clone(),
                )
                .with_permits(Arc::clone(&permits)),
            )))
    };
    let mut grpc_addr = None;
    if let Some(addr) = config.listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind gRPC address {addr}"))?;
        grpc_addr = Some(listener.local_addr()?);
        // No Nagle delay: a response's trailers must not wait for the peer's
        // delayed ACK of its headers (about 40ms per check on Linux).
        let incoming = tokio_stream::StreamExt::map(TcpListenerStream::new(listener), |conn| {
            conn.map(|c| {
                let _ = c.set_nodelay(true);
                Batched(c)
            })
        });
        let router = make_router()?;
        let s = stopped();
        tasks.spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, s)
                .await
                .context("gRPC server failed")
        });
    }
    if let Some(path) = &config.unix_socket {
        // A stale socket from an earlier run would make bind fail.
        if path.exists() {
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("cannot bind unix socket {}", path.display()))?;
        let incoming =
            tokio_stream::StreamExt::map(UnixListenerStream::new(listener), |c| c.map(Batched));
        let router = make_router()?;
        let s = stopped();
        tasks.spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, s)
                .await
                .context("gRPC server on unix socket failed")
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
        admin_addr,
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
