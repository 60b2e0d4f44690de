//! What a tenant's rules compile to, shared between tenants whose rules are
//! the same (the sharing itself is the tenant compiler's,
//! [`crate::tenants`]).
//!
//! A SaaS deployment writes every tenant's file from one template: the same
//! rules, resources and response headers, only `tenant:` (and hosts, issuers)
//! differ. [`RuleSet`] holds everything compiled from those sections and nothing
//! per tenant: a rule that names "the tenant" reads `context.tenant` or the
//! header template's `{tenant}`, both filled from the tenant's own id at check
//! time. Tenants whose [`Inputs`] are equal hold one `Arc<RuleSet>`.
//!
//! [`Inputs`] are everything the compilation reads, so equal inputs compile to
//! equal sets and raise the same errors and warnings (at lines that depend on
//! the file's layout, which the set does not keep). A set that compiled with
//! neither is marked `clean`: a file with the same inputs reuses it without
//! compiling or checking its rules again. Otherwise each file is compiled and
//! checked for its own messages, and only the resulting set is shared.
//!
//! Never imports: decision, tenants or anything above them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::template::HeaderTemplate;
use super::{Reads, Rule};
use crate::policy::downstream::Downstream;
use crate::request::path::{RouteIndex, Template};

/// The compiled rules, resources and response of a policy file.
#[derive(Debug)]
pub(crate) struct RuleSet {
    pub(crate) rules: Vec<Rule>,
    pub(crate) index: RouteIndex,
    pub(crate) resources: Vec<(Template, BTreeMap<String, String>)>,
    pub(crate) resource_index: RouteIndex,
    pub(crate) headers: Vec<(String, HeaderTemplate)>,
    pub(crate) remove: Vec<String>,
    /// The tenant's downstream token, and the rules that have their own.
    pub(crate) downstream: Option<Downstream>,
    pub(crate) rule_downstream: HashMap<Arc<str>, Downstream>,
    /// Union of what the conditions read: only these fields are built per check.
    pub(crate) reads: Arc<Reads>,
    /// The worst case of one check, in cost steps (see
    /// [`super::cost::check_cost`]).
    pub(crate) check_cost: u64,
    /// Compiled with no error and no warning: equal inputs compile to this set
    /// with no message, so they need not be compiled again.
    pub(crate) clean: bool,
}
