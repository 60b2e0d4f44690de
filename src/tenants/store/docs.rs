//! The per-tenant documents reloaded beside policies: revocation lists and data
//! documents, one per tenant, each kept at its last good version.

use std::collections::{BTreeMap, BTreeSet};
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
///
/// Which file serves a tenant never depends on file order: a tenant named by
/// one file that loaded is served that file; a tenant named by two or more
/// files, or by a file whose latest version did not load, keeps what it was
/// served before (if that came from one of those files) and otherwise has
/// none, which for a revocation list means it is unavailable.
pub(super) struct DocFiles<T> {
    /// The last good compile of each file.
    loaded: BTreeMap<PathBuf, (String, Arc<T>)>,
    /// Files whose latest version did not load: read again at every reload.
    broken: BTreeMap<PathBuf, Broken>,
    /// What each tenant is served, and from which file.
    served: BTreeMap<String, (PathBuf, Arc<T>)>,
}

/// A file whose latest version did not load.
struct Broken {
    /// The tenant its text names, when a `tenant:` line can be read.
    tenant: Option<String>,
    /// The first problem, as `file:line: cause`.
    error: String,
}

impl<T> Default for DocFiles<T> {
    fn default() -> Self {
        DocFiles {
            loaded: BTreeMap::new(),
            broken: BTreeMap::new(),
            served: BTreeMap::new(),
        }
    }
}

impl<T> DocFiles<T> {
    pub(super) fn paths(&self) -> impl Iterator<Item = &Path> {
        let all: BTreeSet<&Path> = self
            .loaded
            .keys()
            .chain(self.broken.keys())
            .map(PathBuf::as_path)
            .collect();
        all.into_iter()
    }
}

/// Tenants whose revocation list cannot be loaded, and why: their callers
/// that a list could revoke get 503 `revocation_unavailable`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Unavailable {
    /// Tenant → why (file, line, cause, or the files in conflict).
    pub tenants: BTreeMap<String, String>,
    /// Files whose tenant cannot be read: every tenant without a list is
    /// unavailable, since any of them may be the one the file is for.
    pub unknown: Vec<String>,
}

impl Unavailable {
    /// Why `tenant` (which has no list served) has none it can trust.
    pub fn why(&self, tenant: &str) -> Option<String> {
        if let Some(why) = self.tenants.get(tenant) {
            return Some(why.clone());
        }
        (!self.unknown.is_empty()).then(|| self.unknown.join("; "))
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty() && self.unknown.is_empty()
    }

    /// One line per unavailable tenant, as `/readyz` shows them.
    pub fn lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .tenants
            .iter()
            .map(|(t, why)| format!("tenant {t:?}: revocation list unavailable: {why}"))
            .collect();
        lines.extend(self.unknown.iter().map(|why| {
            format!("every tenant without a revocation list: revocation list unavailable: {why}")
        }));
        lines
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
        notes: &mut Vec<String>,
        store: &PolicyStore,
    );
}

/// How a document kind compiles, names its tenant and is served.
pub(super) trait DocKind: Sized {
    /// "a revocation list", "a data document".
    const WHAT: &'static str;
    /// Whether a tenant left without its document must fail closed (and so is
    /// reported as unavailable) rather than run without it.
    const FAIL_CLOSED: bool;
    fn compile(path: &Path, text: &str) -> Result<Self, Vec<PolicyError>>;
    fn tenant(&self) -> &str;
    fn served(store: &PolicyStore) -> &DashMap<TenantId, Arc<Self>>;
}

impl DocKind for RevocationList {
    const WHAT: &'static str = "a revocation list";
    const FAIL_CLOSED: bool = true;
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
    const FAIL_CLOSED: bool = false;
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
    /// A changed file that compiles replaces its last good version; a broken
    /// one keeps it; a removed file drops it. Then each tenant is served as
    /// [`DocFiles`] says.
    fn reload(
        &mut self,
        reader: &mut Reader<'_>,
        changed: &[(&Path, bool)],
        removed: &[&Path],
        errors: &mut Vec<PolicyError>,
        notes: &mut Vec<String>,
        store: &PolicyStore,
    ) {
        for path in removed {
            reader.forget(path);
            self.broken.remove(*path);
            self.loaded.remove(*path);
        }
        let mut check: BTreeMap<PathBuf, bool> = BTreeMap::new();
        for (path, link) in changed {
            reader.set_linked(path, *link);
            check.insert(path.to_path_buf(), false);
        }
        for path in std::mem::take(&mut self.broken).into_keys() {
            check.insert(path, true);
        }
        for (path, force) in check {
            let text = match reader.get(&path, force) {
                Got::Same => continue,
                Got::Failed(message) => {
                    let e = PolicyError {
                        file: path.clone(),
                        line: None,
                        message,
                    };
                    let error = e.to_string();
                    errors.push(e);
                    self.broken.insert(
                        path,
                        Broken {
                            tenant: None,
                            error,
                        },
                    );
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
                    self.loaded.insert(path, (digest, Arc::new(doc)));
                }
                Err(mut e) => {
                    let error = e.first().map(ToString::to_string).unwrap_or_default();
                    errors.append(&mut e);
                    let tenant = tenant_line(&text);
                    self.broken.insert(path, Broken { tenant, error });
                }
            }
        }
        self.serve(errors, notes, store);
    }
}

impl<T: DocKind> DocFiles<T> {
    /// Decides what each tenant is served and publishes it (and, for a kind
    /// that fails closed, which tenants are unavailable).
    fn serve(
        &mut self,
        errors: &mut Vec<PolicyError>,
        notes: &mut Vec<String>,
        store: &PolicyStore,
    ) {
        // Which files name each tenant: a loaded file its compile's tenant; a
        // broken one the tenant its text names and the one its last good
        // version named.
        let mut claims: BTreeMap<&str, BTreeSet<&Path>> = BTreeMap::new();
        let mut unknown = Vec::new();
        for (path, (_, doc)) in &self.loaded {
            claims.entry(doc.tenant()).or_default().insert(path);
        }
        for (path, broken) in &self.broken {
            match &broken.tenant {
                Some(t) => {
                    claims.entry(t.as_str()).or_default().insert(path);
                }
                None if !self.loaded.contains_key(path) => unknown.push(format!(
                    "{} (its tenant cannot be read): {}",
                    path.display(),
                    broken.error
                )),
                None => {}
            }
        }
        let mut served = BTreeMap::new();
        let mut unavailable = Unavailable {
            unknown,
            ..Unavailable::default()
        };
        for (tenant, paths) in &claims {
            let one = match paths.iter().collect::<Vec<_>>()[..] {
                [only] if !self.broken.contains_key(*only) => {
                    self.loaded.get(*only).map(|l| (*only, l))
                }
                _ => None,
            };
            if let Some((path, (_, doc))) = one {
                served.insert(tenant.to_string(), (path.to_path_buf(), Arc::clone(doc)));
                continue;
            }
            let why = if paths.len() > 1 {
                let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
                let message = format!(
                    "tenant {tenant:?} has {} in more than one file ({}); every one is refused until only one names it",
                    T::WHAT,
                    names.join(", ")
                );
                errors.extend(paths.iter().map(|p| PolicyError {
                    file: p.to_path_buf(),
                    line: None,
                    message: message.clone(),
                }));
                message
            } else {
                let path = paths.iter().next().copied();
                path.and_then(|p| self.broken.get(p))
                    .map(|b| b.error.clone())
                    .unwrap_or_default()
            };
            // The last good document stays, if it came from one of these files.
            let kept = self
                .served
                .get(*tenant)
                .filter(|(from, _)| paths.contains(from.as_path()));
            match kept {
                Some((from, doc)) => {
                    notes.push(format!(
                        "tenant {tenant:?}: keeping the last good {} from {}",
                        T::WHAT.trim_start_matches("a "),
                        from.display()
                    ));
                    served.insert(tenant.to_string(), (from.clone(), Arc::clone(doc)));
                }
                None if T::FAIL_CLOSED => {
                    unavailable.tenants.insert(tenant.to_string(), why);
                }
                None => {}
            }
        }
        self.served = served;
        publish(&self.served, T::served(store));
        if T::FAIL_CLOSED {
            store.revocation_unavailable.store(Arc::new(unavailable));
        }
    }
}

/// The tenant a file names on a top-level `tenant:` line, read without
/// parsing (the file may not parse).
fn tenant_line(text: &str) -> Option<String> {
    let line = text.lines().find_map(|l| l.strip_prefix("tenant:"))?;
    let value = match line.find(" #") {
        Some(i) => &line[..i],
        None => line,
    };
    let value = value.trim();
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(value);
    (!value.is_empty()).then(|| value.to_string())
}

/// Makes `by_tenant` hold exactly what `served` holds; an entry that did not
/// change keeps its `Arc`, so readers see no churn.
fn publish<T>(served: &BTreeMap<String, (PathBuf, Arc<T>)>, by_tenant: &DashMap<TenantId, Arc<T>>) {
    by_tenant.retain(|t, _| served.contains_key(&**t));
    for (tenant, (_, value)) in served {
        let same = by_tenant
            .get(tenant.as_str())
            .is_some_and(|cur| Arc::ptr_eq(cur.value(), value));
        if !same {
            by_tenant.insert(Arc::from(tenant.as_str()), Arc::clone(value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tenant_line;

    #[test]
    fn the_tenant_line_is_read_without_parsing() {
        let head = "apiVersion: portcullis/v1\n";
        for (text, tenant) in [
            ("tenant: acme\nrevoked: [ {", Some("acme")),
            ("tenant: \"acme\"  # the shop\n", Some("acme")),
            ("tenant: 'acme'\r\n", Some("acme")),
            ("  tenant: nested\n", None),
            ("tenant:\n", None),
            ("{ tenant: flow }\n", None),
        ] {
            let got = tenant_line(&format!("{head}{text}"));
            assert_eq!(got.as_deref(), tenant, "{text:?}");
        }
    }
}
