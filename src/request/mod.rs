//! Floor 1, the request: a `CheckRequest` read into plain [`input::Input`]
//! under the server's bounds ([`read()`]), the canonical path and the route
//! templates rules match ([`path`]), what the body ([`body`]) and the query
//! ([`query`]) mean, and which tenant applies ([`tenancy`]); an AuthZEN
//! evaluation request ([`authzen`]) and an ask over plain HTTP (Envoy's
//! `http_service`, forward auth: [`http_check`]) read into the same
//! `CheckRequest`.
//! Nothing above this floor reads the protobuf of a request again.
//!
//! Never imports: identity, policy, decision, tenants, the pipeline,
//! observability, transport or the app.

pub mod authzen;
pub mod body;
pub mod fold;
pub mod http_check;
pub mod input;
pub mod media_type;
pub mod path;
pub mod protomap;
pub mod query;
pub mod read;
pub use read::read;
pub mod tenancy;
