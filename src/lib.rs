//! portcullis: an Envoy external-authorization server (ext_authz v3, gRPC).
//!
//! Envoy asks [`server`] to `Check` every request; portcullis answers allow or deny
//! and, on allow, which headers Envoy must set or strip before the request reaches
//! the service.
//!
//! # Layout
//!
//! The modules below follow one request, in order:
//!
//! - [`proto`] — the generated ext_authz v3 messages (from our own `proto/`).
//! - [`input`] — `CheckRequest` → plain [`input::Input`] (`Resource` + `Context`);
//!   nothing downstream reads the protobuf again. [`path`] holds the canonical-path
//!   check and the route templates that rules match.
//! - [`tenant`] — which tenant's rule set applies, from a trusted source.
//! - [`identity`] — the caller's [`identity::Identity`] (claims) from a verified
//!   credential: a JWT portcullis validates itself ([`identity::jwt`], keys in
//!   [`identity::keys`]), Envoy's `jwt_authn` metadata, an mTLS SPIFFE peer, or
//!   anonymous.
//!   A validated identity is then checked against the tenant's [`revocation`] list.
//! - [`policy`] — policy files: parsed, compiled once ([`policy::CompiledTenant`]) and
//!   evaluated per request.
//! - [`decision`] — the outcome as data: allow/deny, rule, reason, headers, status.
//! - [`response`] — a [`decision::Decision`] rendered into a `CheckResponse`.
//!
//! On an allow, [`exchange`] can mint a narrowed token for the upstream.
//!
//! [`pipeline`] chains the stages as plain functions; [`server`] wraps them in the
//! gRPC service (with optional [`tls`]), and [`admin`] serves health and readiness. [`store`] keeps the
//! compiled tenants (and their [`data`] documents) and swaps them on reload; [`watch`] notices policy changes.
//! [`config`] is the server's own configuration ([`limits`] its named bounds,
//! [`policy_files`] where files named by policies may be), [`cli`] the command line, and
//! [`suite`] runs policy test suites (`portcullis test`). [`intern`] lets tenants
//! made from one template share their compiled rules and key sets.
//!
//! Observability, outside the request path: [`telemetry`] (logs, and traces
//! joined to Envoy's over OTLP), [`metrics`] (Prometheus `/metrics`) and
//! [`audit`] (the decision log, one JSON line per decision).

pub mod admin;
pub mod audit;
pub mod cli;
pub mod config;
pub mod data;
pub mod decision;
pub mod duration;
pub mod exchange;
pub mod identity;
pub mod input;
pub mod intern;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod path;
pub mod pipeline;
pub mod policy;
pub mod policy_files;
pub mod proto;
pub mod response;
pub mod revocation;
pub mod schema;
pub mod server;
pub mod store;
pub mod suite;
pub mod telemetry;
pub mod tenant;
pub mod tls;
pub mod watch;
