//! Floor 1, the request: a `CheckRequest` read into plain [`input::Input`]
//! under the server's bounds ([`read()`]), the canonical path and the route
//! templates rules match ([`path`]), what the body ([`body`]) and the query
//! ([`query`]) mean, and which tenant applies ([`tenancy`]).
//! Nothing above this floor reads the protobuf of a request again.
//!
//! Never imports: identity, policy, decision, tenants, the pipeline,
//! observability, transport or the app.

pub mod body;
pub mod fold;
pub mod input;
pub mod media_type;
pub mod path;
pub mod protomap;
pub mod query;
pub mod read;
pub use read::read;
pub mod tenancy;
