//! Floor 7, observability: logs and traces ([`telemetry`]), Prometheus
//! metrics ([`metrics`]) and the decision log ([`audit`]). It reads decisions
//! after they are made; no stage reads it.
//!
//! Never imports: transport or the app.

pub mod audit;
pub mod metrics;
pub mod replay;
pub mod telemetry;
