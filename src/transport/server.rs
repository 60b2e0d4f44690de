//! The gRPC service: `envoy.service.auth.v3.Authorization/Check`. The handler
//! only chains the pipeline, bounds concurrent checks and owns the span; the
//! listeners are bound by [`crate::app::serve`].
//!
//! Never imports: the app.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::decided;
use crate::decision::Decision;
use crate::decision::render;
use crate::foundation::limits::DEFAULT_MAX_CONCURRENT_CHECKS;
use crate::foundation::proto::auth::authorization_server::Authorization;
use crate::foundation::proto::auth::{CheckRequest, CheckResponse};
use crate::foundation::reason::Reason;
use crate::observe::audit::DecisionLog;
use crate::observe::metrics::Metrics;
use crate::observe::telemetry;
use crate::pipeline::{DEFAULT_KEY_WAIT, Pipeline};
use crate::request::input::Taken;

/// The deadline of a Check call that carries no `grpc-timeout`: Envoy always
/// sends one (its ext_authz `timeout`, 200 ms by default), so this is for
/// other callers; no one waits longer for an answer.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

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

    /// Bounds the checks in flight with `permits` (see [`crate::app::serve::Running::permits`]).
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
        let (metadata, _, request) = request.into_parts();
        let decision = self.decide_owned(request, &metadata, "grpc").await;
        Ok(Response::new(render::into_response(decision)))
    }
}

impl AuthzService {
    /// One check as every transport decides it: bounded by the permits,
    /// traced as a child of the caller's span, counted, logged. `refused` is a
    /// reason the transport denied the ask with before it could be read (the
    /// pipeline does not run); `transport` names the listener in the span,
    /// the metrics and the decision log.
    pub async fn decide(
        &self,
        request: &CheckRequest,
        refused: Option<Reason>,
        metadata: &tonic::metadata::MetadataMap,
        transport: &'static str,
    ) -> Decision {
        self.decide_taken(request, None, refused, metadata, transport)
            .await
    }

    /// [`AuthzService::decide`] for a caller that owns the request: its
    /// header and context-extension maps move into the check instead of
    /// being copied (unless the replay log records the request whole).
    pub async fn decide_owned(
        &self,
        mut request: CheckRequest,
        metadata: &tonic::metadata::MetadataMap,
        transport: &'static str,
    ) -> Decision {
        let taken = if self.log.replays() {
            None
        } else {
            crate::request::input::take_maps(&mut request)
        };
        self.decide_taken(&request, taken, None, metadata, transport)
            .await
    }

    async fn decide_taken(
        &self,
        request: &CheckRequest,
        taken: Option<Taken>,
        refused: Option<Reason>,
        metadata: &tonic::metadata::MetadataMap,
        transport: &'static str,
    ) -> Decision {
        let started = Instant::now();
        let span = decided::check_span(transport);
        // Envoy's span is the parent; the client's traceparent only a link.
        // Read only for a span that is recorded or a decision log that
        // names the trace: nothing else reads them.
        let parent = if span.is_disabled() && self.log.is_off() {
            opentelemetry::Context::new()
        } else {
            telemetry::parent_from_metadata(metadata)
        };
        if !span.is_disabled() {
            let client = match &taken {
                Some(t) => telemetry::client_link(|name| t.headers.get(name)),
                None => request
                    .attributes
                    .as_ref()
                    .and_then(|a| a.request.as_ref())
                    .and_then(|r| r.http.as_ref())
                    .and_then(|h| telemetry::client_link(|name| h.headers.get(name))),
            };
            telemetry::attach(&span, &parent, client);
        }
        async {
            let timeout = grpc_timeout(metadata);
            let wait = timeout.map_or(DEFAULT_KEY_WAIT, |t| {
                // Leave room to answer before Envoy gives up on us.
                t.saturating_sub(t / 5).min(DEFAULT_KEY_WAIT)
            });
            // Past it Envoy has given up: evaluation stops between conditions.
            let deadline = started.checked_add(timeout.unwrap_or(DEFAULT_DEADLINE));
            // Never queue: a check beyond the limit is answered now, denied,
            // so Envoy fails closed even with `failure_mode_allow: true`.
            let permit = self.permits.try_acquire();
            let decision = match (&permit, refused) {
                (_, Some(reason)) => Decision::deny(uuid::Uuid::new_v4().to_string(), reason),
                (Ok(_), None) => {
                    let check = self
                        .pipeline
                        .check_until_taken(request, taken, wait, deadline);
                    check.await
                }
                (Err(_), None) => {
                    Decision::deny(uuid::Uuid::new_v4().to_string(), Reason::Overloaded)
                }
            };
            drop(permit);
            let (metrics, log) = (&self.metrics, &self.log);
            decided::observe(
                &decision,
                transport,
                request,
                &parent,
                started.elapsed(),
                metrics,
                log,
            );
            decision
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
