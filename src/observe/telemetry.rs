//! Logs and traces: the `tracing` subscriber, and OpenTelemetry export over
//! OTLP/gRPC.
//!
//! Export is off unless an endpoint is configured (`tracing.otlp_endpoint` in the
//! server configuration, or the standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_ENDPOINT`). Spans are batched on the SDK's own thread: a
//! slow or absent collector costs dropped spans, never a slower or failed check.
//!
//! The Check span is a child of Envoy's span for the ext_authz call, whose W3C
//! `traceparent`/`tracestate` arrive as gRPC metadata of the Check call
//! ([`parent_from_metadata`]). A `traceparent` among the *HTTP request's*
//! headers is the client's own and can be forged: it becomes at most a span
//! link ([`client_link`]), never the parent, and it never forces sampling.
//!
//! What this module must never do: put a token, key or secret into a span (span
//! fields are the decision's codes and ids, see `server.rs`), or let spans from
//! the exporter's own gRPC client be traced (only `portcullis` targets are).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::Deserialize;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The `service.name` when neither the configuration nor `OTEL_SERVICE_NAME`
/// names one.
pub const DEFAULT_SERVICE_NAME: &str = "portcullis";
/// Longest a shutdown waits for the last spans to be exported.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

/// The `tracing` section of the server configuration. Each field overrides its
/// standard `OTEL_*` variable; unset fields leave the variable in charge.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// OTLP/gRPC collector, e.g. `http://otel-collector:4317`
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT`). Export is off when neither is set.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `service.name` (`OTEL_SERVICE_NAME`; default `portcullis`).
    #[serde(default)]
    pub service_name: Option<String>,
    /// Fraction of new traces sampled when the caller's span is not sampled
    /// either way: a `parentbased_traceidratio` sampler
    /// (`OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG`; default: parent-based,
    /// always on).
    #[serde(default)]
    pub sample_ratio: Option<f64>,
}

impl TracingConfig {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(r) = self.sample_ratio
            && !(0.0..=1.0).contains(&r)
        {
            return Err("tracing.sample_ratio must be between 0.0 and 1.0".into());
        }
        if self.otlp_endpoint.as_deref() == Some("") {
            return Err("tracing.otlp_endpoint must not be empty".into());
        }
        Ok(())
    }

    /// The collector to export to, if export is on.
    fn endpoint(&self) -> Option<String> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return None;
        }
        self.otlp_endpoint
            .clone()
            .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
            .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
    }
}

/// Keeps the exporter alive; [`Telemetry::shutdown`] exports what is left.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    pub endpoint: Option<String>,
}

impl Telemetry {
    /// Exports the spans still queued (bounded by [`SHUTDOWN_FLUSH`]).
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let done =
                tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_FLUSH));
            if let Ok(Ok(Err(e))) = tokio::time::timeout(SHUTDOWN_FLUSH * 2, done).await {
                tracing::warn!(error = %e, "trace export at shutdown failed");
            }
        }
    }
}

/// How log lines are written (`log_format` in the server configuration).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

/// Installs the global subscriber: logs to stderr (filtered by `RUST_LOG`,
/// default `info`), and, when export is on, portcullis' spans to OTLP.
/// Must run inside a tokio runtime (the gRPC exporter's channel lives there).
pub fn init(format: LogFormat, config: &TracingConfig) -> Telemetry {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt: Box<dyn Layer<_> + Send + Sync> = match format {
        LogFormat::Json => Box::new(
            fmt.json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false),
        ),
        LogFormat::Text => Box::new(fmt),
    };
    let (otel, telemetry, error) = match config.endpoint() {
        None => (None, Telemetry::default(), None),
        Some(endpoint) => match provider(config, &endpoint) {
            Ok(provider) => {
                let layer = tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("portcullis"))
                    .with_threads(false)
                    .with_location(false)
                    // portcullis' own spans only: never the exporter's gRPC calls.
                    .with_filter(Targets::new().with_target("portcullis", LevelFilter::INFO));
                let t = Telemetry {
                    provider: Some(provider),
                    endpoint: Some(endpoint),
                };
                (Some(layer), t, None)
            }
            Err(e) => (None, Telemetry::default(), Some(e)),
        },
    };
    // The diagnostic log takes events, not spans: a span's fields would be
    // formatted on every check (a fifth of a check's instructions at `info`)
    // though a line seldom shows them. The deny and allow lines carry the
    // decision's fields themselves (`server.rs`).
    let logs = tracing_subscriber::registry()
        .with(fmt.with_filter(filter.and(filter_fn(|m| m.is_event()))));
    // Without an exporter no layer wants spans, so none is created (an absent
    // `Option` layer would enable every span, at every level).
    match otel {
        Some(otel) => logs.with(otel).init(),
        None => logs.init(),
    }
    if let Some(e) = error {
        tracing::error!(error = %e, "trace export is off: cannot set up the OTLP exporter");
    } else if let Some(endpoint) = &telemetry.endpoint {
        tracing::info!(endpoint = %endpoint, "exporting traces over OTLP/gRPC");
    }
    telemetry
}

fn provider(config: &TracingConfig, endpoint: &str) -> Result<SdkTracerProvider, String> {
    if let Ok(p) = std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL")
        && !p.is_empty()
        && p != "grpc"
    {
        tracing::warn!(protocol = %p, "only OTLP over gRPC is supported; exporting over gRPC");
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| e.to_string())?;
    let mut builder = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource(config));
    if let Some(ratio) = config.sample_ratio {
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))));
    }
    Ok(builder.build())
}

/// `service.name`, `OTEL_RESOURCE_ATTRIBUTES`, and the Kubernetes pod and
/// namespace from the downward-API variables `POD_NAME` and `POD_NAMESPACE`
/// (the Helm chart sets them).
fn resource(config: &TracingConfig) -> Resource {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let service = config
        .service_name
        .clone()
        .or_else(|| env("OTEL_SERVICE_NAME"))
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string());
    let mut builder = Resource::builder().with_service_name(service);
    if let Some(pod) = env("POD_NAME") {
        builder = builder.with_attribute(KeyValue::new("k8s.pod.name", pod));
    }
    if let Some(ns) = env("POD_NAMESPACE") {
        builder = builder.with_attribute(KeyValue::new("k8s.namespace.name", ns));
    }
    builder.build()
}

/// gRPC metadata as a W3C trace-context carrier.
struct Metadata<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        Vec::new()
    }
}

/// Envoy's span for the ext_authz call, from the Check call's metadata (an
/// empty context when Envoy's tracing is off).
pub fn parent_from_metadata(metadata: &tonic::metadata::MetadataMap) -> Context {
    TraceContextPropagator::new().extract(&Metadata(metadata))
}

/// The client's own `traceparent` among the HTTP request's headers, if valid.
/// `header` looks a header up by its lower-case name.
pub fn client_link<'a>(header: impl Fn(&str) -> Option<&'a String>) -> Option<SpanContext> {
    let traceparent = header("traceparent")?;
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert("traceparent".to_string(), traceparent.clone());
    if let Some(state) = header("tracestate") {
        carrier.insert("tracestate".to_string(), state.clone());
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// Joins the Check span to Envoy's trace, and links (only links) the client's.
/// Call before the span is first entered. Without an OpenTelemetry layer this
/// does nothing.
pub fn attach(span: &tracing::Span, parent: &Context, client: Option<SpanContext>) {
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent.clone());
    }
    if let Some(sc) = client {
        span.add_link_with_attributes(
            sc,
            vec![KeyValue::new("portcullis.link", "client_traceparent")],
        );
    }
}

/// The trace id for the decision log: the Check span's when it is traced, else
/// Envoy's.
pub fn trace_id(span: &tracing::Span, parent: &Context) -> Option<String> {
    let own = span.context().span().span_context().clone();
    let sc = if own.is_valid() {
        own
    } else {
        parent.span().span_context().clone()
    };
    sc.is_valid().then(|| sc.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_traceparent_is_the_parent() {
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        let cx = parent_from_metadata(&md);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(
            !parent_from_metadata(&tonic::metadata::MetadataMap::new())
                .span()
                .span_context()
                .is_valid()
        );
    }

    #[test]
    fn client_traceparent_is_parsed_for_a_link_only_when_valid() {
        let mut h = HashMap::new();
        h.insert("traceparent".to_string(), "garbage".to_string());
        assert!(client_link(|n| h.get(n)).is_none());
        h.insert(
            "traceparent".to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
        );
        let sc = client_link(|n| h.get(n)).unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        // Without an OpenTelemetry layer the trace id for logs is Envoy's.
        let span = tracing::info_span!("check");
        assert_eq!(trace_id(&span, &Context::new()), None);
    }
}
