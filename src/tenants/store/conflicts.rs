//! What two policy files may not share: a tenant id, a host, or an issuer not
//! listed as shared by both; and who holds each, so a changed file's conflicts
//! are found without comparing it with every other file.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::policy::{CompiledTenant, HostPattern};

use super::Loaded;

/// Which admitted files hold each tenant id, host and issuer, so that a changed
/// file's conflicts are found without comparing it with every other file (a
/// load of N tenants was O(N²)).
#[derive(Default)]
pub(super) struct Holders {
    ids: HashMap<Arc<str>, BTreeSet<PathBuf>>,
    hosts: HashMap<HostPattern, BTreeSet<PathBuf>>,
    /// Issuer → (files that list it under `shared_issuers`, files that do not).
    issuers: HashMap<String, [BTreeSet<PathBuf>; 2]>,
}

impl Holders {
    pub(super) fn add(&mut self, path: &Path, tenant: &CompiledTenant) {
        self.each(tenant, |set| {
            set.insert(path.to_path_buf());
        });
    }

    pub(super) fn remove(&mut self, path: &Path, tenant: &CompiledTenant) {
        self.each(tenant, |set| {
            set.remove(path);
        });
    }

    fn each(&mut self, tenant: &CompiledTenant, mut f: impl FnMut(&mut BTreeSet<PathBuf>)) {
        f(self.ids.entry(tenant.id.clone()).or_default());
        for h in &tenant.hosts {
            f(self.hosts.entry(h.clone()).or_default());
        }
        let listed: HashSet<&String> = tenant.shared_issuers.iter().collect();
        for i in &tenant.issuers {
            let shared = usize::from(!listed.contains(i));
            f(&mut self.issuers.entry(i.clone()).or_default()[shared]);
        }
    }

    /// The first file (in path order) other than `path` that `tenant` conflicts
    /// with: the same id, a host in common, or an issuer in common that is not
    /// listed as shared by both.
    fn first_conflict(&self, path: &Path, tenant: &CompiledTenant) -> Option<&PathBuf> {
        fn first<'a>(set: Option<&'a BTreeSet<PathBuf>>, path: &Path) -> Option<&'a PathBuf> {
            set.and_then(|s| s.iter().find(|p| p.as_path() != path))
        }
        let mut candidates = vec![first(self.ids.get(&tenant.id), path)];
        candidates.extend(tenant.hosts.iter().map(|h| first(self.hosts.get(h), path)));
        let listed: HashSet<&String> = tenant.shared_issuers.iter().collect();
        for i in &tenant.issuers {
            let Some([shared, not_shared]) = self.issuers.get(i) else {
                continue;
            };
            candidates.push(first(Some(not_shared), path));
            if !listed.contains(i) {
                candidates.push(first(Some(shared), path));
            }
        }
        candidates.into_iter().flatten().min()
    }
}

/// Why `tenant` (from `path`) cannot be admitted next to the other files: the
/// first conflicting file in path order, as a scan of `next` would find it;
/// with the key of `path` the conflict is about, for the error's line, and
/// that file's path.
pub(super) fn conflict(
    next: &BTreeMap<PathBuf, Loaded>,
    holders: &Holders,
    path: &Path,
    tenant: &CompiledTenant,
) -> Option<(&'static str, String, PathBuf)> {
    let other_path = holders.first_conflict(path, tenant)?;
    let other = next.get(other_path)?;
    conflict_with(other_path, other, tenant).map(|(key, m)| (key, m, other_path.clone()))
}

/// The line of `key` in the policy file at `path`, for an error to point at;
/// `None` when the file cannot be read again. Only a refused file pays the read.
pub(super) fn key_line(path: &Path, key: &str) -> Option<usize> {
    let text = std::fs::read_to_string(path).ok()?;
    crate::tenants::lines::line_of(&text, 0, key)
}

/// `path` as an error names a place in it: `path:line` when the line is known.
fn at(path: &Path, key: &str) -> String {
    match key_line(path, key) {
        Some(line) => format!("{}:{line}", path.display()),
        None => path.display().to_string(),
    }
}

/// Why `tenant` conflicts with `other` (from `other_path`), if it does.
fn conflict_with(
    other_path: &Path,
    other: &Loaded,
    tenant: &CompiledTenant,
) -> Option<(&'static str, String)> {
    if other.tenant.id == tenant.id {
        let message = format!(
            "tenant {:?} is already defined in {}",
            tenant.id,
            at(other_path, "tenant")
        );
        return Some(("tenant", message));
    }
    // Sets, not a search of one list per entry of the other: a file may name
    // thousands of hosts and issuers.
    let other_hosts: HashSet<&HostPattern> = other.tenant.hosts.iter().collect();
    if let Some(h) = tenant.hosts.iter().find(|h| other_hosts.contains(h)) {
        let message = format!(
            "host \"{h}\" is already claimed by tenant {:?} in {}",
            other.tenant.id,
            at(other_path, "hosts")
        );
        return Some(("hosts", message));
    }
    // One issuer for two tenants is a real setup (one IdP, a tenant claim),
    // but it must be said in both files: otherwise a token one tenant's users
    // hold is accepted by the other's rules.
    fn set(v: &[String]) -> HashSet<&str> {
        v.iter().map(String::as_str).collect()
    }
    let (theirs, ours_shared, theirs_shared) = (
        set(&other.tenant.issuers),
        set(&tenant.shared_issuers),
        set(&other.tenant.shared_issuers),
    );
    let shared = tenant.issuers.iter().find(|i| {
        theirs.contains(i.as_str())
            && !(ours_shared.contains(i.as_str()) && theirs_shared.contains(i.as_str()))
    });
    if let Some(issuer) = shared {
        let message = format!(
            "issuer {issuer:?} is also trusted by tenant {:?} in {}; list it under shared_issuers in both files if both tenants are meant to trust it",
            other.tenant.id,
            at(other_path, "issuers")
        );
        return Some(("issuers", message));
    }
    None
}
