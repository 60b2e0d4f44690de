//! What every transport does once a check is decided: the decision's fields on
//! the check span, the metrics, the decision log line and the diagnostic line,
//! each naming the transport that asked (`grpc`, `authzen`). One function, so
//! a decision reads the same in every log however it was asked.
//!
//! Never imports: the app, or the pipeline's stages.

use std::time::Duration;

use crate::decision::Decision;
use crate::foundation::proto::auth::CheckRequest;
use crate::observe::audit::{DecisionLog, RequestSummary};
use crate::observe::metrics::Metrics;
use crate::observe::telemetry;

/// The check span, asked over `transport`: every field [`observe`] fills is
/// declared here, empty.
pub fn check_span(transport: &'static str) -> tracing::Span {
    tracing::info_span!(
        "check",
        otel.kind = "server",
        transport,
        tenant = tracing::field::Empty,
        decision = tracing::field::Empty,
        rule = tracing::field::Empty,
        reason = tracing::field::Empty,
        decision_id = tracing::field::Empty,
        auth_method = tracing::field::Empty,
        mode = tracing::field::Empty,
        enforced = tracing::field::Empty,
    )
}

/// Records one decision on the current span (a [`check_span`]), in the
/// metrics and in the decision log; logs a deny at info and anything else at
/// debug; writes the replayable record when that log is on. `parent` is the
/// asker's trace context; the request is summarized only when the decision log
/// is on (nothing to gather for a log that is off).
pub fn observe(
    decision: &Decision,
    transport: &'static str,
    request: &CheckRequest,
    parent: &opentelemetry::Context,
    latency: Duration,
    metrics: &Metrics,
    log: &DecisionLog,
) {
    let span = tracing::Span::current();
    // In a dry-run tenant: what would have been, and what was enforced.
    let outcome = crate::decision::audit::Outcome::of(decision);
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
    metrics.observe_decision(decision, latency, transport);
    if !log.is_off() {
        let trace_id = telemetry::trace_id(&span, parent);
        let summary = RequestSummary {
            transport,
            ..RequestSummary::of(request)
        };
        if !log.record(decision, &summary, trace_id.as_deref(), latency) {
            metrics.log_dropped();
        }
    }
    if !log.record_replay(decision, request) {
        metrics.log_dropped();
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
            transport,
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
            transport,
            "deny"
        );
    }
}
