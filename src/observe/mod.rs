//! Floor 7, observability: logs and traces ([`telemetry`]), Prometheus
//! metrics ([`metrics`]), the decision log ([`audit`]) and drift between
//! replicas ([`drift`]). It reads decisions
//! after they are made; no stage reads it.
//!
//! Never imports: transport or the app.

pub mod audit;
pub mod drift;
pub mod metrics;
pub mod replay;
pub mod telemetry;
