//! Floor 3, policy: a tenant's rules evaluated per request.
//!
//! The tenant compiler ([`crate::tenants::compile()`]) turns one policy file into
//! an immutable [`CompiledTenant`] ([`tenant`]), reporting every error with the
//! file and line. [`CompiledTenant::evaluate`] ([`evaluate`])
//! cannot fail: it returns an [`Outcome`], and a condition that errors at run time
//! is [`Outcome::PolicyError`], which denies. It never allows.
//!
//! Evaluation order: the route index yields the rules whose path template matches;
//! method and host narrow them; every matching deny rule is checked first (any one
//! that holds denies); then allow rules in file order, the first that holds allows;
//! otherwise the tenant's default applies.
//!
//! Every check has a runtime budget ([`budget`]): evaluation stops between
//! conditions when it has run too long or the caller's deadline has passed.
//! A tenant whose worst check is heavy ([`heavy`]) evaluates off the async
//! workers, a share of them at a time.
//!
//! Other engines decide in place of the rules for the tenants that choose
//! them: Rego ([`rego`], regorus) and Cedar ([`cedar`], cedar-policy, with the
//! request mapped by [`cedar_input`]).
//!
//! The rule languages live here too: CEL conditions (`cel`, with a native
//! evaluator for common shapes and a cost bound), header templates, the data
//! documents rules read ([`data`]) and the downstream token spec
//! ([`downstream`]).
//!
//! Never imports: decision, tenants, the pipeline or anything above them.

pub mod budget;
pub mod cedar;
pub mod cedar_input;
pub(crate) mod cel;
pub mod cost;
pub mod data;
pub mod downstream;
pub mod evaluate;
pub mod heavy;
pub(crate) mod native;
pub mod reach;
pub mod rego;
pub mod rego_input;
pub mod rego_jwt;
pub mod rego_result;
pub mod residual;
pub(crate) mod rule_set;
pub mod template;
pub mod tenant;

pub use crate::foundation::document::{API_VERSION, PolicyError};
pub use crate::foundation::limits::{MAX_POLICY_FILE_BYTES, MAX_RULES_PER_TENANT};
pub use cel::{Condition, Fields, MAX_CONDITION_BYTES, Reads, json_to_cel};
pub use evaluate::{DryRunHit, Evaluation, HeaderEdits, Outcome, RuleTrace};
pub use template::{Rendered, valid_header_name};
pub use tenant::{CompiledTenant, Effect, HostPattern, Mode, Rule, Unmet};
