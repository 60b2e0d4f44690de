//! Floor 1, the request: a `CheckRequest` read into plain [`input::Input`]
//! under the server's bounds ([`read()`]), the canonical path and the route
//! templates rules match ([`path`]), and which tenant applies ([`tenancy`]).
//! Nothing above this floor reads the protobuf of a request again.
//!
//! Never imports: identity, policy, decision, tenants, the pipeline,
//! observability, transport or the app.

pub mod input;
pub mod path;
pub mod read;
pub use read::read;
pub mod tenancy;
