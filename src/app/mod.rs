//! Floor 9, the application: the command line ([`cli`]), the server's
//! configuration file ([`config`]), policy test suites ([`suite`]), the
//! JSON Schemas of the files people write ([`schema`]) and the commands that
//! work on a fleet of replicas ([`fleet`]), and `migrate`
//! ([`migrate`]). It wires every floor
//! below; nothing imports it.
//!
//! Never imported by: any other module of the crate.

pub mod cli;
pub mod config;
pub mod fleet;
pub mod migrate;
pub mod reach;
pub mod replay;
pub mod request_json;
pub mod schema;
pub mod serve;
pub mod suite;
pub mod unused;
