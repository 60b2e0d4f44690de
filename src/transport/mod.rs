//! Floor 8, transport: the gRPC ext_authz service ([`server`], mounted as
//! [`check_route`], which writes its answers straight from the decision), the HTTP
//! listener for Envoy's `http_service` and forward auth ([`http_authz`]) with its
//! sockets ([`net`]), their caps and timeouts ([`connections`]), TLS
//! ([`tls`]: files and reload; [`tls_accept`]: handshakes) and which TLS
//! clients are answered ([`clients`]), the admin port ([`admin`]: health, readiness, metrics,
//! JWKS), the AuthZEN API ([`authzen`], its askers in [`askers`]), and the
//! Redis client of the state replicas share ([`shared_state`]); what every
//! transport records of a decision is [`decided`]'s. It chains nothing itself: every check is
//! [`crate::pipeline::Pipeline`]'s.
//!
//! Never imports: the app (`cli`, `config`, `suite`, `schema`).

pub mod admin;
pub mod askers;
pub mod authzen;
pub mod check_route;
pub mod clients;
pub mod connections;
pub mod decided;
pub mod http_authz;
pub mod net;
pub mod server;
pub mod shared_state;
pub mod tls;
pub mod tls_accept;
