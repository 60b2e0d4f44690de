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

use crate::decision::Decision;
use crate::decision::render;
use crate::foundation::limits::DEFAULT_MAX_CONCURRENT_CHECKS;
use crate::foundation::proto::auth::authorization_server::Authorization;
use crate::foundation::proto::auth::{CheckRequest, CheckResponse};
use crate::foundation::reason::Reason;
use crate::observe::audit::{self, DecisionLog};
use crate::observe::metrics::Metrics;
use crate::observe::telemetry;
use crate::pipeline::{DEFAULT_KEY_WAIT, Pipeline};

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
            let timeout = grpc_timeout(request.metadata());
            let wait = timeout.map_or(DEFAULT_KEY_WAIT, |t| {
                // Leave room to answer before Envoy gives up on us.
                t.saturating_sub(t / 5).min(DEFAULT_KEY_WAIT)
            });
            // Past it Envoy has given up: evaluation stops between conditions.
            let deadline = started.checked_add(timeout.unwrap_or(DEFAULT_DEADLINE));
            // Never queue: a check beyond the limit is answered now, denied,
            // so Envoy fails closed even with `failure_mode_allow: true`.
            let permit = self.permits.try_acquire();
            let decision = match &permit {
                Ok(_) => {
                    let check = self.pipeline.check_until(request.get_ref(), wait, deadline);
                    check.await
                }
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
                span.record("enforced", decision.verdict());
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
            if !self.log.record_replay(&decision, request.get_ref()) {
                self.metrics.log_dropped();
            }
            // The line carries the decision's fields itself: the diagnostic
            // log does not record spans (see `telemetry::init`).
            // A preflight portcullis answers is no refusal: logged as an allow is.
            if decision.verdict() != "deny" {
                tracing::debug!(
                    status = decision.status(),
                    auth_method = decision.auth_method,
                    subject = decision.subject.as_deref(),
                    decision_id = decision.decision_id.as_str(),
                    decision = outcome.decision,
                    reason = outcome.reason.code(),
                    tenant = decision.tenant.as_deref(),
                    rule = outcome.rule,
                    "{}",
                    decision.verdict()
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
