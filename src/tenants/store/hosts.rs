//! Host → tenant: the index a reload rebuilds from the served tenants, exact
//! names first, then the longest `*.` wildcard.

use std::collections::HashMap;
use std::sync::Arc;

use crate::policy::{CompiledTenant, HostPattern};

/// Host → tenant, rebuilt on each reload. It holds the tenants themselves, not
/// their ids, so a host always resolves to the rule set of the generation that
/// claimed it, even while a reload is replacing map entries one by one.
#[derive(Debug, Default)]
pub(super) struct HostIndex {
    exact: HashMap<String, Arc<CompiledTenant>>,
    /// `.suffix` patterns, longest first.
    suffixes: Vec<(String, Arc<CompiledTenant>)>,
}

impl HostIndex {
    pub(super) fn build<'a>(tenants: impl Iterator<Item = &'a Arc<CompiledTenant>>) -> HostIndex {
        let mut index = HostIndex::default();
        for t in tenants {
            for h in &t.hosts {
                match h {
                    HostPattern::Exact(name) => {
                        index.exact.insert(name.clone(), Arc::clone(t));
                    }
                    HostPattern::Suffix(s) => index.suffixes.push((s.clone(), Arc::clone(t))),
                }
            }
        }
        index
            .suffixes
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        index
    }

    pub(super) fn lookup(&self, host: &str) -> Option<&Arc<CompiledTenant>> {
        self.exact.get(host).or_else(|| {
            self.suffixes
                .iter()
                .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()))
                .map(|(_, t)| t)
        })
    }
}
