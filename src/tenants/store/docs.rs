//! The per-tenant documents reloaded beside policies: revocation lists and data
//! documents, one per tenant, each kept at its last good version.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dashmap::DashMap;

use crate::identity::revocation::{self, RevocationList};
use crate::policy::PolicyError;
use crate::policy::data::{self, DataDoc};

use super::reader::{Got, Reader};
use super::{PolicyStore, TenantId};

/// Revocation lists or data documents: one per tenant, from their files
/// (with the digest of what loaded).
pub(super) struct DocFiles<T> {
    loaded: BTreeMap<PathBuf, (String, Arc<T>)>,
    /// Files whose latest version did not load: read again at every reload.
    broken: BTreeSet<PathBuf>,
}

impl<T> Default for DocFiles<T> {
    fn default() -> Self {
        DocFiles {
            loaded: BTreeMap::new(),
            broken: BTreeSet::new(),
        }
    }
}

impl<T> DocFiles<T> {
    pub(super) fn paths(&self) -> impl Iterator<Item = &Path> {
        let all: BTreeSet<&Path> = self
            .loaded
            .keys()
            .chain(&self.broken)
            .map(PathBuf::as_path)
            .collect();
        all.into_iter()
    }
}

/// A kind of per-tenant document the store reloads beside policies.
pub(super) trait Docs {
    fn reload(
        &mut self,
        reader: &mut Reader<'_>,
        changed: &[(&Path, bool)],
        removed: &[&Path],
        errors: &mut Vec<PolicyError>,
        store: &PolicyStore,
    );
}

/// How a document kind compiles, names its tenant and is served.
trait DocKind: Sized {
    /// "a revocation list", "a data document".
    const WHAT: &'static str;
    fn compile(path: &Path, text: &str) -> Result<Self, Vec<PolicyError>>;
    fn tenant(&self) -> &str;
    fn served(store: &PolicyStore) -> &DashMap<TenantId, Arc<Self>>;
}

impl DocKind for RevocationList {
    const WHAT: &'static str = "a revocation list";
    fn compile(path: &Path, text: &str) -> Result<Self, Vec<PolicyError>> {
        revocation::compile(path, text)
    }
    fn tenant(&self) -> &str {
        &self.tenant
    }
    fn served(store: &PolicyStore) -> &DashMap<TenantId, Arc<Self>> {
        &store.revocations
    }
}

impl DocKind for DataDoc {
    const WHAT: &'static str = "a data document";
    fn compile(path: &Path, text: &str) -> Result<Self, Vec<PolicyError>> {
        data::compile(path, text)
    }
    fn tenant(&self) -> &str {
        &self.tenant
    }
    fn served(store: &PolicyStore) -> &DashMap<TenantId, Arc<Self>> {
        &store.data
    }
}

impl<T: DocKind> Docs for DocFiles<T> {
    /// A changed file that compiles replaces its tenant's document; a broken
    /// one keeps the previous document; a removed file drops it.
    fn reload(
        &mut self,
        reader: &mut Reader<'_>,
        changed: &[(&Path, bool)],
        removed: &[&Path],
        errors: &mut Vec<PolicyError>,
        store: &PolicyStore,
    ) {
        let mut dirty = false;
        for path in removed {
            reader.forget(path);
            self.broken.remove(*path);
            dirty |= self.loaded.remove(*path).is_some();
        }
        let mut check: BTreeMap<PathBuf, bool> = BTreeMap::new();
        for (path, link) in changed {
            reader.set_linked(path, *link);
            check.insert(path.to_path_buf(), false);
        }
        for path in std::mem::take(&mut self.broken) {
            check.insert(path, true);
        }
        for (path, force) in check {
            let text = match reader.get(&path, force) {
                Got::Same => continue,
                Got::Failed(message) => {
                    errors.push(PolicyError {
                        file: path.clone(),
                        line: None,
                        message,
                    });
                    self.broken.insert(path);
                    continue;
                }
                Got::Bytes { text, digest } => {
                    if self.loaded.get(&path).is_some_and(|(d, _)| *d == digest) {
                        continue;
                    }
                    (text, digest)
                }
            };
            let (text, digest) = text;
            match T::compile(&path, &text) {
                Ok(doc) => {
                    let holder = self
                        .loaded
                        .iter()
                        .find(|(p, (_, d))| **p != path && d.tenant() == doc.tenant());
                    if let Some((other, _)) = holder {
                        errors.push(PolicyError {
                            file: path.clone(),
                            line: None,
                            message: format!(
                                "tenant {:?} already has {} in {}",
                                doc.tenant(),
                                T::WHAT,
                                other.display()
                            ),
                        });
                        self.broken.insert(path);
                        continue;
                    }
                    self.loaded.insert(path, (digest, Arc::new(doc)));
                    dirty = true;
                }
                Err(mut e) => {
                    errors.append(&mut e);
                    self.broken.insert(path);
                }
            }
        }
        if dirty {
            publish(&self.loaded, T::tenant, T::served(store));
        }
    }
}

/// Makes `by_tenant` hold exactly what the loaded `files` hold, by tenant; an
/// entry that did not change keeps its `Arc`, so readers see no churn.
fn publish<T>(
    files: &BTreeMap<PathBuf, (String, Arc<T>)>,
    tenant_of: impl Fn(&T) -> &str,
    by_tenant: &DashMap<TenantId, Arc<T>>,
) {
    let current: HashMap<&str, &Arc<T>> = files.values().map(|(_, v)| (tenant_of(v), v)).collect();
    by_tenant.retain(|t, _| current.contains_key(&**t));
    for (tenant, value) in current {
        let same = by_tenant
            .get(tenant)
            .is_some_and(|cur| Arc::ptr_eq(cur.value(), value));
        if !same {
            by_tenant.insert(Arc::from(tenant), Arc::clone(value));
        }
    }
}
