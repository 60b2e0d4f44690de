//! Floor 5, tenants: policy files ([`mod@file`], read in `sections` where they
//! can be) compiled into tenants ([`mod@compile`], with line numbers from
//! `lines`, "did you mean" hints from [`did_you_mean`], and rule sets shared
//! between equal files by `share`; a Rego tenant's modules in `rego`, a
//! Cedar tenant's policies, schema and routes in `cedar`), the store
//! that serves them and swaps them on reload ([`store`]), and the watcher that
//! notices changes ([`watch`]). It imports the stages' spec types; no stage
//! imports it.
//!
//! Never imports: the pipeline, observability, transport or the app.

mod cedar;
pub mod compile;
pub mod did_you_mean;
pub mod file;
mod lines;
pub mod lint;
#[cfg(test)]
mod load_work;
mod rego;
mod sections;
mod share;
pub mod store;
pub mod watch;

pub use compile::{compile, compile_limited, compile_with, digest_of};
pub use file::PolicyFile;
