//! Floor 8, transport: the gRPC ext_authz service ([`server`]) with its
//! sockets ([`net`]), their caps and timeouts ([`connections`]) and TLS
//! ([`tls`]), and the admin port ([`admin`]: health, readiness, metrics,
//! JWKS). It chains nothing itself: every check is
//! [`crate::pipeline::Pipeline`]'s.
//!
//! Never imports: the app (`cli`, `config`, `suite`, `schema`).

pub mod admin;
pub mod connections;
pub mod net;
pub mod server;
pub mod tls;
