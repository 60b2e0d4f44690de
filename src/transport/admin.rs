//! Admin HTTP on its own port: `/healthz` (the process is up), `/readyz` (it can
//! decide; the JSON body names what is not ready and every policy error), and
//! `/policies` (each tenant's rule-set digest, to prove replicas agree), and
//! `/metrics` (Prometheus, OpenMetrics text; see [`crate::observe::metrics`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;

use crate::observe::drift;
use crate::observe::metrics::Metrics;
use crate::tenants::store::PolicyStore;

#[derive(Debug, Clone)]
pub struct AdminState {
    pub store: Arc<PolicyStore>,
    /// Set when shutdown begins, so load balancers stop sending new work.
    pub draining: Arc<AtomicBool>,
    /// Publishes the keys of the tokens portcullis mints, when it mints any.
    pub minter: Option<Arc<crate::decision::mint::Minter>>,
    pub metrics: Arc<Metrics>,
    /// The shared store, when the server has one.
    pub shared: Option<Arc<crate::transport::shared_state::RedisState>>,
    /// `sha256:<hex>` of the server config file (empty without one).
    pub config_digest: Arc<str>,
}

impl AdminState {
    /// What this replica serves, as `/policies` shows it.
    fn served(&self) -> serde_json::Value {
        let status = self.store.status();
        let generation = self.shared.as_ref().map(|s| s.revocation_generation());
        let digest = drift::served_digest(&status.tenants, generation, &self.config_digest);
        self.metrics.set_served_digest(&digest);
        serde_json::json!({
            "digest": digest,
            "generation": status.generation,
            "revocation_generation": generation,
            "config_digest": &*self.config_digest,
            "tenants": status.tenants,
        })
    }
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/policies", get(policies))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// How many notes `/readyz` lists (`notes_total` counts them all).
pub const MAX_READYZ_NOTES: usize = 100;

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let status = state.store.status();
    let mut not_ready = Vec::new();
    if state.draining.load(Ordering::Acquire) {
        not_ready.push("shutting down".to_string());
    }
    if !state.store.is_ready() {
        not_ready.push("no policies loaded".to_string());
    }
    // A tenant whose revocation list never loaded would let revoked callers
    // in if it served: it does not (503), and this replica is not ready.
    not_ready.extend(status.revocation_unavailable.iter().cloned());
    // The shared store's circuit is open and some tenant needs it (DPoP
    // replay, live revocation): those tenants answer 503 until it closes.
    if let Some(shared) = &state.shared
        && !shared.is_up()
    {
        let needing: Vec<String> = status
            .tenants
            .iter()
            .filter_map(|t| state.store.tenant(&t.tenant))
            .filter(|t| t.identity.needs_shared_state())
            .map(|t| t.id.to_string())
            .collect();
        if !needing.is_empty() {
            not_ready.push(format!(
                "shared state unavailable (circuit open) for tenants {}",
                needing.join(", ")
            ));
        }
    }
    let ready = not_ready.is_empty();
    // Issuers whose keys never loaded: their tokens get 503 keys_unavailable.
    // Reported, not counted against readiness: one identity provider down must
    // not take every replica out of rotation.
    let issuers_without_keys: Vec<String> = status
        .tenants
        .iter()
        .filter_map(|t| state.store.tenant(&t.tenant))
        .flat_map(|t| {
            t.identity
                .remote_keys()
                .filter(|(_, keys)| !keys.loaded_once())
                .map(|(issuer, keys)| match keys.last_error() {
                    Some(e) => format!("{}: {issuer}: {e}", t.id),
                    None => format!("{}: {issuer}: not fetched yet", t.id),
                })
                .collect::<Vec<_>>()
        })
        .collect();
    // Loud, but not unready: a dry-run tenant is an operator's choice.
    let dry_run_tenants = crate::observe::metrics::dry_run_tenants(&state.store, &status);
    let mut warnings = Vec::new();
    if !dry_run_tenants.is_empty() {
        warnings.push(format!(
            "dry run: denies are not enforced for tenants {}",
            dry_run_tenants
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let body = serde_json::json!({
        "warnings": warnings,
        "dry_run_tenants": dry_run_tenants,
        "issuers_without_keys": issuers_without_keys,
        "ready": ready,
        "not_ready": not_ready,
        "generation": status.generation,
        "tenants": status.tenants.len(),
        "policy_errors": status.error_lines(),
        // Capped: a probe polls this, and 10,000 files with warnings made it
        // megabytes. `portcullis validate` lists every note.
        "notes": status.notes.iter().take(MAX_READYZ_NOTES).collect::<Vec<_>>(),
        "notes_total": status.notes.len(),
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

/// The public keys of minted downstream tokens (404 when none are minted).
async fn jwks(State(state): State<AdminState>) -> axum::response::Response {
    match &state.minter {
        Some(m) => Json(m.jwks()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn policies(State(state): State<AdminState>) -> impl IntoResponse {
    Json(state.served())
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    // The served digest, as of this scrape.
    let _ = state.served();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
