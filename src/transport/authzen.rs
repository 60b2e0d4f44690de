//! The AuthZEN Authorization API 1.0 listener (`authzen` in the server
//! config; off unless set): `POST /access/v1/evaluation` (§6),
//! `POST /access/v1/evaluations` (§7) and the metadata at
//! `GET /.well-known/authzen-configuration` (§9).
//!
//! A service asks here what the gateway would answer. Each evaluation is read
//! into a `CheckRequest` by [`crate::request::authzen`] and decided by the
//! same [`Pipeline`] as a gRPC check (the tenant only from `context.tenant`),
//! under the same check permits, with the same span, metrics and decision log
//! line, labelled `transport=authzen` ([`super::decided`]). Before anything is
//! decided the asker is authenticated and authorised for every tenant it asks
//! about ([`super::askers`]); a request that is refused gets no decision, only
//! `{"error": "<reason>"}` with its status.
//!
//! Never imports: the app.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tracing::Instrument;

use super::askers::{self, Asker};
use super::decided;
use super::server::DEFAULT_DEADLINE;
use crate::decision::Decision;
use crate::foundation::proto::auth::CheckRequest;
use crate::foundation::reason::Reason;
use crate::observe::audit::DecisionLog;
use crate::observe::metrics::Metrics;
use crate::observe::telemetry;
use crate::pipeline::{DEFAULT_KEY_WAIT, Pipeline};
use crate::request::authzen::{self as model, AuthzenError, Evaluation};
use crate::request::tenancy::{TenantResolver, TenantSource};

/// The single evaluation endpoint (§6).
pub const EVALUATION_PATH: &str = "/access/v1/evaluation";
/// The batch endpoint (§7).
pub const EVALUATIONS_PATH: &str = "/access/v1/evaluations";
/// The metadata endpoint (§9).
pub const METADATA_PATH: &str = "/.well-known/authzen-configuration";
/// The longest `X-Request-ID` echoed back (§12.1.3); a longer one is dropped.
const MAX_REQUEST_ID_BYTES: usize = 128;

/// `authzen` in the server configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzenConfig {
    /// The listener's TCP address (plain HTTP/1.1 and HTTP/2).
    pub listen: SocketAddr,
    /// The base URL askers reach this listener at, as the metadata names it
    /// (`policy_decision_point`); without it, `http://` and the request's Host.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Who may ask, for which tenants.
    pub askers: Vec<Asker>,
}

impl AuthzenConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.askers.is_empty() {
            return Err("authzen.askers must name at least one asker".into());
        }
        for asker in &self.askers {
            asker.validate()?;
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err("authzen.public_url must be an http:// or https:// URL".into());
        }
        Ok(())
    }
}

/// The listener's state: the pipeline and observers shared with gRPC.
#[derive(Debug, Clone)]
pub struct Authzen {
    pipeline: Arc<Pipeline>,
    metrics: Arc<Metrics>,
    log: DecisionLog,
    permits: Arc<Semaphore>,
    askers: Arc<[Asker]>,
    public_url: Option<Arc<str>>,
}

/// A request refused before any decision: its reason fixes the status.
#[derive(Debug)]
struct Refusal(Reason);

impl From<AuthzenError> for Refusal {
    fn from(e: AuthzenError) -> Refusal {
        tracing::info!(reason = e.reason().code(), detail = %e, transport = "authzen", "refused");
        Refusal(e.reason())
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::BAD_REQUEST);
        let mut response = (status, axum::Json(json!({ "error": self.0.code() }))).into_response();
        if let Some(challenge) = self.0.challenge()
            && let Ok(value) = HeaderValue::from_str(&challenge)
        {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

impl Authzen {
    /// The API over `pipeline`, whose tenants are resolved from the tenant
    /// each evaluation names, never from a host.
    pub fn new(
        pipeline: &Pipeline,
        config: &AuthzenConfig,
        metrics: Arc<Metrics>,
        log: DecisionLog,
        permits: Arc<Semaphore>,
    ) -> Authzen {
        let mut pipeline = pipeline.clone();
        pipeline.tenancy = TenantResolver {
            sources: vec![TenantSource::ContextExtension],
            context_key: pipeline.tenancy.context_key.clone(),
            header: None,
        };
        Authzen {
            pipeline: Arc::new(pipeline),
            metrics,
            log,
            permits,
            askers: config.askers.clone().into(),
            public_url: config
                .public_url
                .as_deref()
                .map(|u| u.trim_end_matches('/').into()),
        }
    }

    pub fn router(self) -> axum::Router {
        axum::Router::new()
            .route(EVALUATION_PATH, post(evaluation))
            .route(EVALUATIONS_PATH, post(evaluations))
            .route(METADATA_PATH, get(metadata))
            .with_state(self)
    }

    /// Reads the body within `limits.max_evaluation_request_bytes`.
    async fn body(&self, body: Body) -> Result<axum::body::Bytes, Refusal> {
        let limit = self.pipeline.store.limits().max_evaluation_request_bytes;
        axum::body::to_bytes(body, limit)
            .await
            .map_err(|_| Refusal::from(AuthzenError::TooLarge { limit }))
    }

    /// Maps every evaluation and authenticates the asker for every tenant
    /// they name, before any is decided.
    async fn admit(
        &self,
        headers: &HeaderMap,
        evaluations: &[Evaluation],
    ) -> Result<Vec<CheckRequest>, Refusal> {
        let key = &self.pipeline.tenancy.context_key;
        let requests = evaluations
            .iter()
            .map(|e| e.check_request(key))
            .collect::<Result<Vec<_>, _>>()?;
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let mut asked = HashSet::new();
        for e in evaluations {
            let tenant = e.tenant()?;
            if !asked.insert(tenant) {
                continue;
            }
            let asker = askers::authenticate(
                &self.pipeline,
                &self.askers,
                tenant,
                authorization,
                DEFAULT_KEY_WAIT,
            )
            .await;
            if let Err(reason) = asker {
                tracing::info!(
                    reason = reason.code(),
                    tenant,
                    transport = "authzen",
                    "asker refused"
                );
                return Err(Refusal(reason));
            }
        }
        Ok(requests)
    }

    /// Decides one request as the gateway would, observed like a gRPC check.
    async fn decide(&self, request: &CheckRequest, parent: &opentelemetry::Context) -> Value {
        let started = Instant::now();
        let span = decided::check_span("authzen");
        telemetry::attach(&span, parent, None);
        async {
            let deadline = started.checked_add(DEFAULT_DEADLINE);
            let permit = self.permits.try_acquire();
            let decision = match &permit {
                Ok(_) => {
                    self.pipeline
                        .check_until(request, DEFAULT_KEY_WAIT, deadline)
                        .await
                }
                Err(_) => Decision::deny(uuid::Uuid::new_v4().to_string(), Reason::Overloaded),
            };
            drop(permit);
            let (metrics, log) = (&self.metrics, &self.log);
            decided::observe(
                &decision,
                "authzen",
                request,
                parent,
                started.elapsed(),
                metrics,
                log,
            );
            answer(&decision)
        }
        .instrument(span)
        .await
    }
}

/// An evaluation's answer (§5.5): `decision`, and a `context` naming the
/// decision (its id in the decision log) and the reason code.
fn answer(decision: &Decision) -> Value {
    json!({
        "decision": decision.verdict() == "allow",
        "context": {
            "decision_id": decision.decision_id,
            "reason": decision.reason.code(),
        },
    })
}

/// The asker's trace context: its `traceparent` is the parent of the check
/// span (an asker is authenticated before anything is decided).
fn parent_of(headers: &HeaderMap) -> opentelemetry::Context {
    let mut carrier = axum::http::HeaderMap::new();
    for name in ["traceparent", "tracestate"] {
        if let Some(v) = headers.get(name) {
            carrier.insert(name, v.clone());
        }
    }
    telemetry::parent_from_metadata(&tonic::metadata::MetadataMap::from_headers(carrier))
}

/// `body` as JSON, with the asker's `X-Request-ID` echoed (§12.1.3).
fn reply(headers: &HeaderMap, body: Value) -> Response {
    let mut response = axum::Json(body).into_response();
    if let Some(id) = headers.get("x-request-id")
        && id.len() <= MAX_REQUEST_ID_BYTES
    {
        response.headers_mut().insert("x-request-id", id.clone());
    }
    response
}

async fn evaluation(State(api): State<Authzen>, headers: HeaderMap, body: Body) -> Response {
    if headers.get(header::AUTHORIZATION).is_none() {
        return Refusal(Reason::MissingCredential).into_response();
    }
    let limit = api.pipeline.store.limits().max_evaluation_request_bytes;
    let one = match api.body(body).await {
        Ok(bytes) => model::single(&bytes, limit).map_err(Refusal::from),
        Err(r) => Err(r),
    };
    let one = match one {
        Ok(one) => one,
        Err(r) => return r.into_response(),
    };
    let requests = match api.admit(&headers, std::slice::from_ref(&one)).await {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let parent = parent_of(&headers);
    let answer = api.decide(&requests[0], &parent).await;
    reply(&headers, answer)
}

async fn evaluations(State(api): State<Authzen>, headers: HeaderMap, body: Body) -> Response {
    if headers.get(header::AUTHORIZATION).is_none() {
        return Refusal(Reason::MissingCredential).into_response();
    }
    let limits = api.pipeline.store.limits();
    let (limit, most) = (limits.max_evaluation_request_bytes, limits.max_evaluations);
    let batch = match api.body(body).await {
        Ok(bytes) => model::batch(&bytes, limit, most).map_err(Refusal::from),
        Err(r) => Err(r),
    };
    let batch = match batch {
        Ok(b) => b,
        Err(r) => return r.into_response(),
    };
    let requests = match api.admit(&headers, &batch.evaluations).await {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let parent = parent_of(&headers);
    if !batch.boxcar {
        let answer = api.decide(&requests[0], &parent).await;
        return reply(&headers, answer);
    }
    let mut answers = Vec::with_capacity(requests.len());
    for request in &requests {
        let answer = api.decide(request, &parent).await;
        let decision = answer["decision"].as_bool().unwrap_or(false);
        answers.push(answer);
        if batch.semantic.stops_after(decision) {
            break;
        }
    }
    reply(&headers, json!({ "evaluations": answers }))
}

async fn metadata(State(api): State<Authzen>, headers: HeaderMap) -> Response {
    let base = match &api.public_url {
        Some(url) => url.to_string(),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            format!("http://{host}")
        }
    };
    reply(
        &headers,
        json!({
            "policy_decision_point": base,
            "access_evaluation_endpoint": format!("{base}{EVALUATION_PATH}"),
            "access_evaluations_endpoint": format!("{base}{EVALUATIONS_PATH}"),
        }),
    )
}
