//! The compiled tenants, and how a reload replaces them.
//!
//! Readers ([`PolicyStore::tenant`], [`PolicyStore::tenant_for_host`]) clone an
//! `Arc` out of a `DashMap` shard or an `ArcSwap` and drop the guard at once; no
//! lock a reload holds is ever taken on the request path.
//!
//! A reload compiles changed files aside and swaps a tenant only when its file
//! compiled whole. A broken file keeps the tenant's previous rules serving, and the
//! error (file, line, cause) is kept for `/readyz`. A file removed from a directory
//! that still has policy files removes its tenant; a directory that is missing or
//! has no policy files keeps the last good rules.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use dashmap::DashMap;

use crate::data::{self, DataDoc};
use crate::policy::{self, CompiledTenant, HostPattern, MAX_POLICY_FILE_BYTES, PolicyError};
use crate::revocation::{self, RevocationList};

/// Tenant ids as map keys.
pub type TenantId = Arc<str>;

/// Host → tenant, rebuilt on each reload. It holds the tenants themselves, not
/// their ids, so a host always resolves to the rule set of the generation that
/// claimed it, even while a reload is replacing map entries one by one.
#[derive(Debug, Default)]
struct HostIndex {
    exact: HashMap<String, Arc<CompiledTenant>>,
    /// `.suffix` patterns, longest first.
    suffixes: Vec<(String, Arc<CompiledTenant>)>,
}

impl HostIndex {
    fn build<'a>(tenants: impl Iterator<Item = &'a Arc<CompiledTenant>>) -> HostIndex {
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

    fn lookup(&self, host: &str) -> Option<&Arc<CompiledTenant>> {
        self.exact.get(host).or_else(|| {
            self.suffixes
                .iter()
                .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()))
                .map(|(_, t)| t)
        })
    }
}

/// What `/readyz` and `portcullis validate` report.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StoreStatus {
    /// Incremented by each reload that changed the served rules.
    pub generation: u64,
    pub tenants: Vec<TenantStatus>,
    /// Files whose latest version did not load (their previous rules, if any,
    /// still serve).
    pub errors: Vec<PolicyError>,
    /// Conditions worth knowing that are not file errors.
    pub notes: Vec<String>,
}

impl StoreStatus {
    /// Every error as `file:line: cause`, as `validate`, `/readyz` and logs show it.
    pub fn error_lines(&self) -> Vec<String> {
        self.errors.iter().map(ToString::to_string).collect()
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TenantStatus {
    pub tenant: String,
    pub digest: String,
    pub file: PathBuf,
    pub rules: usize,
}

/// The last good compile of one file.
#[derive(Debug, Clone)]
struct Loaded {
    digest: String,
    tenant: Arc<CompiledTenant>,
}

/// The tenants' rule sets, and the reload that replaces them.
#[derive(Debug)]
pub struct PolicyStore {
    dir: PathBuf,
    /// `policy_files.allowed_dirs`: where, besides `dir`, files that policies
    /// name may be.
    allowed_dirs: Vec<PathBuf>,
    tenants: DashMap<TenantId, Arc<CompiledTenant>>,
    hosts: ArcSwap<HostIndex>,
    status: ArcSwap<StoreStatus>,
    ready: AtomicBool,
    /// Held only by reloads, which it serializes.
    files: Mutex<BTreeMap<PathBuf, Loaded>>,
    /// Revocation lists by tenant, and the files they came from (with digests).
    revocations: DashMap<TenantId, Arc<RevocationList>>,
    revocation_files: Mutex<BTreeMap<PathBuf, (String, Arc<RevocationList>)>>,
    /// Data documents by tenant, and the files they came from (with digests).
    data: DashMap<TenantId, Arc<DataDoc>>,
    data_files: Mutex<BTreeMap<PathBuf, (String, Arc<DataDoc>)>>,
    /// Bounds on what a reload admits and on every check.
    limits: crate::limits::Limits,
}

impl PolicyStore {
    /// An empty store for `dir`; call [`PolicyStore::reload`] to load it.
    pub fn new(dir: impl Into<PathBuf>) -> PolicyStore {
        PolicyStore {
            dir: dir.into(),
            allowed_dirs: Vec::new(),
            tenants: DashMap::new(),
            hosts: ArcSwap::from_pointee(HostIndex::default()),
            status: ArcSwap::from_pointee(StoreStatus::default()),
            ready: AtomicBool::new(false),
            files: Mutex::new(BTreeMap::new()),
            revocations: DashMap::new(),
            revocation_files: Mutex::new(BTreeMap::new()),
            data: DashMap::new(),
            data_files: Mutex::new(BTreeMap::new()),
            limits: crate::limits::Limits::default(),
        }
    }

    /// The store under `limits` (rules per tenant, tenants, token and replay
    /// caches) instead of the defaults; set before the first reload.
    pub fn with_limits(mut self, limits: crate::limits::Limits) -> PolicyStore {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> &crate::limits::Limits {
        &self.limits
    }

    /// Lets policies name files in `dirs` as well as in the policy directory.
    pub fn with_allowed_dirs(mut self, dirs: Vec<PathBuf>) -> PolicyStore {
        self.allowed_dirs = dirs;
        self
    }

    /// The tenant's data document, if it has one.
    pub fn data(&self, tenant: &str) -> Option<Arc<DataDoc>> {
        self.data.get(tenant).map(|d| Arc::clone(d.value()))
    }

    /// The tenant's revocation list, if it has one.
    pub fn revocations(&self, tenant: &str) -> Option<Arc<RevocationList>> {
        self.revocations.get(tenant).map(|r| Arc::clone(r.value()))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The tenant's current rule set. The map guard is dropped before returning.
    pub fn tenant(&self, id: &str) -> Option<Arc<CompiledTenant>> {
        self.tenants.get(id).map(|t| Arc::clone(t.value()))
    }

    /// The tenant whose `hosts` include `host` (exact first, then the longest
    /// `*.` wildcard).
    pub fn tenant_for_host(&self, host: &str) -> Option<Arc<CompiledTenant>> {
        self.hosts.load().lookup(host).cloned()
    }

    /// True once a load has produced at least one tenant.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn status(&self) -> Arc<StoreStatus> {
        self.status.load_full()
    }

    /// Rescans the directory and swaps in every file that compiled whole.
    /// Returns the new status. Safe to call concurrently (reloads serialize).
    pub fn reload(&self) -> Arc<StoreStatus> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.status.load_full();
        let mut errors = Vec::new();
        let mut notes = Vec::new();

        let listing = match list_policy_files(&self.dir) {
            Ok(list) if list.is_empty() => {
                notes.push(format!(
                    "policy directory {} has no policy files; keeping the last good rules",
                    self.dir.display()
                ));
                None
            }
            Ok(list) => Some(list),
            Err(e) => {
                notes.push(format!(
                    "policy directory {} cannot be read ({e}); keeping the last good rules",
                    self.dir.display()
                ));
                None
            }
        };
        let Some(paths) = listing else {
            // Keep every tenant and every earlier file error.
            let status = Arc::new(StoreStatus {
                generation: previous.generation,
                tenants: previous.tenants.clone(),
                errors: previous.errors.clone(),
                notes,
            });
            self.status.store(Arc::clone(&status));
            return status;
        };

        // Files that no longer exist drop out; the rest start from their last good.
        let mut next: BTreeMap<PathBuf, Loaded> = files
            .iter()
            .filter(|(p, _)| listed(&paths, p))
            .map(|(p, l)| (p.clone(), l.clone()))
            .collect();
        let mut holders = Holders::default();
        for (p, l) in &next {
            holders.add(p, &l.tenant);
        }
        let mut changed: Vec<(PathBuf, Arc<CompiledTenant>)> = Vec::new();
        for (path, text) in read_changed(
            &paths,
            |p| next.get(p).map(|l| l.digest.as_str()),
            &mut errors,
        ) {
            let path = &path;
            match policy::compile_limited(path, &text, &self.allowed_dirs, &self.limits) {
                Ok(t) => changed.push((path.clone(), Arc::new(t))),
                Err(mut errs) => errors.append(&mut errs),
            }
        }

        // Admit changed files whose tenant id and hosts no other file holds. An
        // incumbent keeps what it has; a file that loses a conflict may win it in a
        // later pass once the holder has changed, so repeat until nothing moves.
        let mut pending = changed;
        loop {
            let mut rejected = Vec::new();
            let before = pending.len();
            for (path, tenant) in pending {
                let full = !next.contains_key(&path) && next.len() >= self.limits.max_tenants;
                let refused = full.then(|| {
                    format!(
                        "tenant {} not loaded: {} tenants are served, the limit (limits.max_tenants)",
                        tenant.id,
                        next.len()
                    )
                });
                match refused.or_else(|| conflict(&next, &holders, &path, &tenant)) {
                    None => {
                        if let Some(old) = next.get(&path) {
                            holders.remove(&path, &old.tenant);
                        }
                        holders.add(&path, &tenant);
                        next.insert(
                            path,
                            Loaded {
                                digest: tenant.digest.to_string(),
                                tenant,
                            },
                        );
                    }
                    Some(message) => rejected.push((path, tenant, message)),
                }
            }
            if rejected.len() == before || rejected.is_empty() {
                for (path, tenant, message) in &rejected {
                    // A rejected file's warnings are still worth fixing.
                    notes.extend(tenant.warnings.iter().map(|w| format!("warning: {w}")));
                    errors.push(PolicyError {
                        file: path.clone(),
                        line: None,
                        message: message.clone(),
                    });
                }
                break;
            }
            pending = rejected.into_iter().map(|(p, t, _)| (p, t)).collect();
        }

        // Swap: add and replace first, then the host index, then removals.
        let serving: HashMap<TenantId, Arc<CompiledTenant>> = next
            .values()
            .map(|l| (l.tenant.id.clone(), Arc::clone(&l.tenant)))
            .collect();
        let mut moved = false;
        for (id, tenant) in &serving {
            let same = self
                .tenants
                .get(id)
                .is_some_and(|cur| Arc::ptr_eq(cur.value(), tenant));
            if !same {
                self.tenants.insert(id.clone(), Arc::clone(tenant));
                moved = true;
            }
        }
        self.hosts
            .store(Arc::new(HostIndex::build(serving.values())));
        let stale: Vec<TenantId> = self
            .tenants
            .iter()
            .filter(|e| !serving.contains_key(e.key()))
            .map(|e| e.key().clone())
            .collect();
        for id in stale {
            self.tenants.remove(&id);
            moved = true;
        }
        *files = next;
        self.reload_revocations(&mut errors);
        self.reload_data(&mut errors);
        for loaded in files.values() {
            notes.extend(
                loaded
                    .tenant
                    .warnings
                    .iter()
                    .map(|w| format!("warning: {w}")),
            );
        }

        let mut tenants: Vec<TenantStatus> = files
            .values()
            .map(|l| TenantStatus {
                tenant: l.tenant.id.to_string(),
                digest: l.tenant.digest.to_string(),
                file: l.tenant.source.clone(),
                rules: l.tenant.rule_count(),
            })
            .collect();
        tenants.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        let status = Arc::new(StoreStatus {
            generation: previous.generation + u64::from(moved),
            tenants,
            errors,
            notes,
        });
        self.status.store(Arc::clone(&status));
        if !self.tenants.is_empty() {
            self.ready.store(true, Ordering::Release);
        }
        status
    }
}

impl PolicyStore {
    /// Reloads `*.revoked.yaml`: a changed file that compiles replaces its
    /// tenant's list; a broken one keeps the previous list; a removed file
    /// drops its list.
    fn reload_revocations(&self, errors: &mut Vec<PolicyError>) {
        let mut files = self
            .revocation_files
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Ok(paths) = list_files(&self.dir, |name| name.ends_with(revocation::SUFFIX)) else {
            return; // the policy listing already reported an unreadable directory
        };
        files.retain(|p, _| listed(&paths, p));
        let known: HashMap<PathBuf, String> = files
            .iter()
            .map(|(p, (d, _))| (p.clone(), d.clone()))
            .collect();
        for (path, text) in read_changed(&paths, |p| known.get(p).map(String::as_str), errors) {
            let path = &path;
            let digest = policy::digest_of(text.as_bytes());
            match revocation::compile(path, &text) {
                Ok(list) => {
                    let holder = files
                        .iter()
                        .find(|(p, (_, l))| *p != path && l.tenant == list.tenant);
                    if let Some((other, _)) = holder {
                        errors.push(PolicyError {
                            file: path.clone(),
                            line: None,
                            message: format!(
                                "tenant {:?} already has a revocation list in {}",
                                list.tenant,
                                other.display()
                            ),
                        });
                        continue;
                    }
                    files.insert(path.clone(), (digest, Arc::new(list)));
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        publish(&files, |l| l.tenant.as_str(), &self.revocations);
    }
}

impl PolicyStore {
    /// Reloads data documents, as [`PolicyStore::reload_revocations`] does
    /// revocation lists.
    fn reload_data(&self, errors: &mut Vec<PolicyError>) {
        let mut files = self.data_files.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(paths) = list_files(&self.dir, data::is_data_file) else {
            return;
        };
        files.retain(|p, _| listed(&paths, p));
        let known: HashMap<PathBuf, String> = files
            .iter()
            .map(|(p, (d, _))| (p.clone(), d.clone()))
            .collect();
        for (path, text) in read_changed(&paths, |p| known.get(p).map(String::as_str), errors) {
            let digest = policy::digest_of(text.as_bytes());
            match data::compile(&path, &text) {
                Ok(doc) => {
                    let holder = files
                        .iter()
                        .find(|(p, (_, d))| **p != path && d.tenant == doc.tenant);
                    if let Some((other, _)) = holder {
                        errors.push(PolicyError {
                            file: path.clone(),
                            line: None,
                            message: format!(
                                "tenant {:?} already has a data document in {}",
                                doc.tenant,
                                other.display()
                            ),
                        });
                        continue;
                    }
                    files.insert(path, (digest, Arc::new(doc)));
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        publish(&files, |d| d.tenant.as_str(), &self.data);
    }
}

/// `paths` is sorted (as [`list_files`] returns it).
fn listed(paths: &[PathBuf], path: &Path) -> bool {
    paths.binary_search_by(|p| p.as_path().cmp(path)).is_ok()
}

/// Which admitted files hold each tenant id, host and issuer, so that a changed
/// file's conflicts are found without comparing it with every other file (a
/// load of N tenants was O(N²)).
#[derive(Default)]
struct Holders {
    ids: HashMap<Arc<str>, BTreeSet<PathBuf>>,
    hosts: HashMap<HostPattern, BTreeSet<PathBuf>>,
    /// Issuer → (files that list it under `shared_issuers`, files that do not).
    issuers: HashMap<String, [BTreeSet<PathBuf>; 2]>,
}

impl Holders {
    fn add(&mut self, path: &Path, tenant: &CompiledTenant) {
        self.each(tenant, |set| {
            set.insert(path.to_path_buf());
        });
    }

    fn remove(&mut self, path: &Path, tenant: &CompiledTenant) {
        self.each(tenant, |set| {
            set.remove(path);
        });
    }

    fn each(&mut self, tenant: &CompiledTenant, mut f: impl FnMut(&mut BTreeSet<PathBuf>)) {
        f(self.ids.entry(tenant.id.clone()).or_default());
        for h in &tenant.hosts {
            f(self.hosts.entry(h.clone()).or_default());
        }
        for i in &tenant.issuers {
            let shared = usize::from(!tenant.shared_issuers.contains(i));
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
        for i in &tenant.issuers {
            let Some([shared, not_shared]) = self.issuers.get(i) else {
                continue;
            };
            candidates.push(first(Some(not_shared), path));
            if !tenant.shared_issuers.contains(i) {
                candidates.push(first(Some(shared), path));
            }
        }
        candidates.into_iter().flatten().min()
    }
}

/// Why `tenant` (from `path`) cannot be admitted next to the other files: the
/// first conflicting file in path order, as a scan of `next` would find it.
fn conflict(
    next: &BTreeMap<PathBuf, Loaded>,
    holders: &Holders,
    path: &Path,
    tenant: &CompiledTenant,
) -> Option<String> {
    let other_path = holders.first_conflict(path, tenant)?;
    let other = next.get(other_path)?;
    conflict_with(other_path, other, tenant)
}

/// Why `tenant` conflicts with `other` (from `other_path`), if it does.
fn conflict_with(other_path: &Path, other: &Loaded, tenant: &CompiledTenant) -> Option<String> {
    if other.tenant.id == tenant.id {
        return Some(format!(
            "tenant {:?} is already defined in {}",
            tenant.id,
            other_path.display()
        ));
    }
    if let Some(h) = tenant.hosts.iter().find(|h| other.tenant.hosts.contains(h)) {
        return Some(format!(
            "host \"{h}\" is already claimed by tenant {:?} in {}",
            other.tenant.id,
            other_path.display()
        ));
    }
    // One issuer for two tenants is a real setup (one IdP, a tenant claim),
    // but it must be said in both files: otherwise a token one tenant's users
    // hold is accepted by the other's rules.
    let shared = tenant.issuers.iter().find(|i| {
        other.tenant.issuers.contains(*i)
            && !(tenant.shared_issuers.contains(*i) && other.tenant.shared_issuers.contains(*i))
    });
    if let Some(issuer) = shared {
        return Some(format!(
            "issuer {issuer:?} is also trusted by tenant {:?} in {}; list it under shared_issuers in both files if both tenants are meant to trust it",
            other.tenant.id,
            other_path.display()
        ));
    }
    None
}

/// `*.yaml` and `*.yml` files, skipping hidden entries: a Kubernetes ConfigMap
/// mount's `..data` and `..<timestamp>` entries start with a dot. Symlinks are
/// followed, since a ConfigMap's visible files are symlinks into `..data`.
/// Revocation lists (`*.revoked.yaml`) and test suites (`*_test.yaml`) sit in
/// the same directory and are not policies.
pub fn list_policy_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    list_files(dir, |name| {
        (name.ends_with(".yaml") || name.ends_with(".yml"))
            && !name.ends_with(revocation::SUFFIX)
            && !crate::suite::is_test_file(name)
            && !crate::data::is_data_file(name)
    })
}

/// The visible files in `dir` whose names `wanted` accepts, sorted.
pub(crate) fn list_files(
    dir: &Path,
    wanted: impl Fn(&str) -> bool,
) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !wanted(name) {
            continue;
        }
        let path = entry.path();
        if path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
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

/// The files among `paths` whose bytes differ from the digest `known` has for
/// them, with their text; unreadable files are reported in `errors`.
fn read_changed<'k>(
    paths: &[PathBuf],
    known: impl Fn(&Path) -> Option<&'k str>,
    errors: &mut Vec<PolicyError>,
) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for path in paths {
        match read_limited(path) {
            Ok(text) if known(path) == Some(policy::digest_of(text.as_bytes()).as_str()) => {}
            Ok(text) => out.push((path.clone(), text)),
            Err(message) => errors.push(PolicyError {
                file: path.clone(),
                line: None,
                message,
            }),
        }
    }
    out
}

fn read_limited(path: &Path) -> Result<String, String> {
    let file = fs::File::open(path).map_err(|e| format!("cannot read file: {e}"))?;
    let mut text = String::new();
    file.take(MAX_POLICY_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read file: {e}"))?;
    if text.len() as u64 > MAX_POLICY_FILE_BYTES {
        return Err(format!("file is larger than {MAX_POLICY_FILE_BYTES} bytes"));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) {
        // Atomic replace, as operators are told to do.
        let tmp = dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, body).unwrap();
        fs::rename(&tmp, dir.join(name)).unwrap();
    }

    fn policy(tenant: &str, host: &str, rule: &str) -> String {
        format!(
            "apiVersion: portcullis/v1\ntenant: {tenant}\nhosts: [{host}]\nrules:\n  - id: {rule}\n    path: /x\n    effect: allow\n    public: true\n"
        )
    }

    #[test]
    fn broken_file_keeps_old_rules_and_reports_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "acme.yaml",
            &policy("acme", "acme.example", "r1"),
        );
        let store = PolicyStore::new(dir.path());
        let s = store.reload();
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert!(store.is_ready());
        let first = store.tenant("acme").unwrap();

        write(
            dir.path(),
            "acme.yaml",
            "apiVersion: portcullis/v1\ntenant: acme\nrules:\n  - id: r2\n    path: /x\n    effect: allow\n    when: 'claims.a =='\n",
        );
        let s = store.reload();
        assert_eq!(s.errors.len(), 1);
        let e = &s.errors[0];
        assert!(e.file.ends_with("acme.yaml"));
        assert_eq!(e.line, Some(7), "{e}");
        assert!(
            e.message.contains("r2") && e.message.contains("parse"),
            "{e}"
        );
        let still = store.tenant("acme").unwrap();
        assert!(Arc::ptr_eq(&first, &still));
        assert_eq!(s.generation, 1);

        write(
            dir.path(),
            "acme.yaml",
            &policy("acme", "acme.example", "r3"),
        );
        let s = store.reload();
        assert!(s.errors.is_empty());
        assert_eq!(s.generation, 2);
        assert_ne!(store.tenant("acme").unwrap().digest, first.digest);
    }

    #[test]
    fn deleted_file_removes_tenant_but_empty_or_missing_dir_keeps_all() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.yaml", &policy("a", "a.example", "r"));
        write(dir.path(), "b.yaml", &policy("b", "b.example", "r"));
        let store = PolicyStore::new(dir.path());
        store.reload();
        fs::remove_file(dir.path().join("b.yaml")).unwrap();
        store.reload();
        assert!(store.tenant("b").is_none());
        assert!(store.tenant_for_host("b.example").is_none());

        fs::remove_file(dir.path().join("a.yaml")).unwrap();
        let s = store.reload();
        assert!(store.tenant("a").is_some());
        assert!(s.notes[0].contains("no policy files"));

        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(!path.exists());
        let s = store.reload();
        assert!(store.tenant("a").is_some());
        assert!(s.notes[0].contains("cannot be read"));
    }

    #[test]
    fn conflicts_keep_the_incumbent() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "b.yaml", &policy("b", "shared.example", "r"));
        let store = PolicyStore::new(dir.path());
        store.reload();
        write(dir.path(), "a.yaml", &policy("a", "shared.example", "r"));
        let s = store.reload();
        assert_eq!(s.errors.len(), 1);
        assert!(s.errors[0].file.ends_with("a.yaml"));
        assert!(s.errors[0].message.contains("b.yaml"));
        assert_eq!(&*store.tenant_for_host("shared.example").unwrap().id, "b");

        write(dir.path(), "c.yaml", &policy("b", "c.example", "r"));
        let s = store.reload();
        assert!(
            s.errors
                .iter()
                .any(|e| e.file.ends_with("c.yaml") && e.message.contains("already defined"))
        );

        // Once b releases the host, a is admitted (its file is retried).
        write(dir.path(), "b.yaml", &policy("b", "b.example", "r"));
        fs::remove_file(dir.path().join("c.yaml")).unwrap();
        let s = store.reload();
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(&*store.tenant_for_host("shared.example").unwrap().id, "a");
    }

    #[test]
    fn an_unshared_issuer_conflicts_with_the_first_file_that_trusts_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = |t: &str, shared: bool| {
            let shared = if shared {
                "shared_issuers: [https://idp.example]\n"
            } else {
                ""
            };
            format!(
                "apiVersion: portcullis/v1\ntenant: {t}\n{shared}identity:\n  envoy_jwt_authn: {{ issuers: [https://idp.example] }}\nrules: []\n"
            )
        };
        for t in ["b", "c", "e"] {
            write(dir.path(), &format!("{t}.yaml"), &file(t, true));
        }
        let store = PolicyStore::new(dir.path());
        assert!(store.reload().errors.is_empty());
        // Not shared in d: it conflicts with every sharer, and the first in
        // path order is named.
        write(dir.path(), "d.yaml", &file("d", false));
        let s = store.reload();
        assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
        assert!(s.errors[0].file.ends_with("d.yaml"));
        assert!(
            s.errors[0].message.contains("tenant \"b\" in")
                && s.errors[0].message.contains("b.yaml"),
            "{}",
            s.errors[0]
        );
        // Shared in a: admitted beside the others.
        fs::remove_file(dir.path().join("d.yaml")).unwrap();
        write(dir.path(), "a.yaml", &file("a", true));
        let s = store.reload();
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert!(store.tenant("a").is_some());
        // A changed file does not conflict with its own previous version.
        write(
            dir.path(),
            "a.yaml",
            &format!("{}# changed\n", file("a", true)),
        );
        assert!(store.reload().errors.is_empty());
    }

    #[test]
    fn hidden_and_configmap_entries_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("..2026_01_01");
        fs::create_dir(&data).unwrap();
        fs::write(data.join("a.yaml"), policy("a", "a.example", "r")).unwrap();
        std::os::unix::fs::symlink("..2026_01_01", dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/a.yaml", dir.path().join("a.yaml")).unwrap();
        fs::write(dir.path().join(".hidden.yaml"), "garbage: [").unwrap();
        fs::write(dir.path().join("README.md"), "not policy").unwrap();
        let files = list_policy_files(dir.path()).unwrap();
        assert_eq!(files, vec![dir.path().join("a.yaml")]);
        let store = PolicyStore::new(dir.path());
        assert!(store.reload().errors.is_empty());
        assert!(store.tenant_for_host("a.example").is_some());
    }

    #[test]
    fn wildcard_hosts_prefer_exact_then_longest() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.yaml", &policy("a", "'*.example.com'", "r"));
        write(
            dir.path(),
            "b.yaml",
            &policy("b", "'*.eu.example.com'", "r"),
        );
        write(dir.path(), "c.yaml", &policy("c", "x.eu.example.com", "r"));
        let store = PolicyStore::new(dir.path());
        assert!(store.reload().errors.is_empty());
        let t = |h: &str| store.tenant_for_host(h).map(|t| t.id.to_string());
        assert_eq!(t("shop.example.com").as_deref(), Some("a"));
        assert_eq!(t("shop.eu.example.com").as_deref(), Some("b"));
        assert_eq!(t("x.eu.example.com").as_deref(), Some("c"));
        assert_eq!(t("example.com"), None);
    }
}
