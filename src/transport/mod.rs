//! Floor 8, transport: the gRPC ext_authz service ([`server`]) with its
//! sockets ([`net`]), their caps and timeouts ([`connections`]), TLS
//! ([`tls`]: files and reload; [`tls_accept`]: handshakes) and which TLS
//! clients are answered ([`clients`]), the admin port ([`admin`]: health, readiness, metrics,
//! JWKS), and the Redis client of the state replicas share ([`shared_state`]). It chains nothing itself: every check is
//! [`crate::pipeline::Pipeline`]'s.
//!
//! Never imports: the app (`cli`, `config`, `suite`, `schema`).

pub mod admin;
pub mod clients;
pub mod connections;
pub mod net;
pub mod server;
pub mod shared_state;
pub mod tls;
pub mod tls_accept;
