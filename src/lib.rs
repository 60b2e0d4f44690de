//! portcullis: an Envoy external-authorization server (ext_authz v3, gRPC).
//!
//! Envoy asks the [`transport`] to `Check` every request; portcullis answers
//! allow or deny and, on allow, which headers Envoy must set or strip before the
//! request reaches the service.
//!
//! # Floors
//!
//! The crate is a house of floors. A module may import only the floors below
//! its own; modules on one floor do not import each other. `tests/layers.rs`
//! reads every `crate::` path in `src/` and fails on an import that goes up or
//! sideways, so this table is the one place the order is written:
//!
//! | floor | module | what it is for |
//! |-------|--------|----------------|
//! | 0 | [`foundation`] | protobuf, named bounds, durations, interning, reason codes, file basics, bounded YAML |
//! | 1 | [`request`] | `CheckRequest` → `Input` under the bounds; canonical path; which tenant |
//! | 2 | [`identity`] | credential → `Identity`: JWT, keys, bindings, introspection, revocation |
//! | 3 | [`policy`] | a tenant's rules and data → an outcome; the rule languages |
//! | 4 | [`decision`] | the outcome as data, the respond stage, downstream tokens, `CheckResponse` |
//! | 5 | [`tenants`] | policy files compiled into tenants; the store, reload, watch |
//! | 6 | [`pipeline`] | the request path: the stages chained, in order |
//! | 7 | [`observe`] | logs, traces, metrics, the decision log: reading decisions |
//! | 8 | [`transport`] | the gRPC service, the admin port, sockets, TLS |
//! | 9 | [`app`] | command line, configuration, policy test suites, schemas |
//!
//! # The request path
//!
//! [`pipeline::Pipeline`] runs the stages in order, each a plain function:
//! [`request::read()`] (input) → [`request::tenancy`] (tenant) →
//! [`identity::authenticate`] (identity) → [`identity::revocation`]
//! (revocation) → [`policy`] (evaluate) → [`decision::respond`] (respond:
//! header edits, proof stripping, the downstream token) →
//! [`decision::render`] (the `CheckResponse`).

pub mod foundation;

pub mod request;

pub mod identity;

pub mod policy;

pub mod decision;

pub mod tenants;

pub mod pipeline;

pub mod observe;

pub mod transport;

pub mod app;
