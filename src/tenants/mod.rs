//! Floor 5, tenants: policy files compiled into tenants, the store that
//! serves them and swaps them on reload ([`store`]), and the watcher that
//! notices changes ([`watch`]). It imports the stages' spec types; no stage
//! imports it.
//!
//! Never imports: the pipeline, observability, transport or the app.

pub mod store;
pub mod watch;
