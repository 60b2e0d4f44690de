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
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use dashmap::DashMap;

use crate::identity::revocation::{self, RevocationList};
use crate::policy::data::{self, DataDoc};
use crate::policy::{CompiledTenant, HostPattern, MAX_POLICY_FILE_BYTES, PolicyError};

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
    /// Files this reload read (a rescan reads only files whose metadata
    /// changed; a reload of watched paths, only those).
    #[serde(skip)]
    pub files_read: usize,
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
    /// What reloads keep between them; held only by reloads, which it
    /// serializes.
    state: Mutex<State>,
    /// Whether some loaded file is a symlink or hard-linked
    /// ([`PolicyStore::has_links`]).
    linked: AtomicBool,
    /// Revocation lists by tenant.
    revocations: DashMap<TenantId, Arc<RevocationList>>,
    /// Data documents by tenant.
    data: DashMap<TenantId, Arc<DataDoc>>,
    /// Bounds on what a reload admits and on every check.
    limits: crate::foundation::limits::Limits,
}

impl crate::request::tenancy::TenantLookup for PolicyStore {
    type Tenant = Arc<CompiledTenant>;
    fn by_id(&self, id: &str) -> Option<Arc<CompiledTenant>> {
        self.tenant(id)
    }
    fn by_host(&self, host: &str) -> Option<Arc<CompiledTenant>> {
        self.tenant_for_host(host)
    }
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
            state: Mutex::new(State::default()),
            linked: AtomicBool::new(false),
            revocations: DashMap::new(),
            data: DashMap::new(),
            limits: crate::foundation::limits::Limits::default(),
        }
    }

    /// The store under `limits` (rules per tenant, tenants, token and replay
    /// caches) instead of the defaults; set before the first reload.
    pub fn with_limits(mut self, limits: crate::foundation::limits::Limits) -> PolicyStore {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> &crate::foundation::limits::Limits {
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
    ///
    /// A file whose metadata (device, inode, size, mtime, ctime) is what the
    /// last read of it saw is not read again, unless its mtime is within
    /// [`MTIME_MARGIN`] of that read (a rewrite in the same timestamp tick, of
    /// the same size, would look unchanged). Bytes read are hashed, and
    /// unchanged bytes are never compiled again.
    pub fn reload(&self) -> Arc<StoreStatus> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.reload_locked(&mut state, None)
    }

    /// Reloads only `paths` (files in the policy directory a watch saw change,
    /// appear or go away), plus the files whose latest version did not load.
    /// Anything else in the directory is taken as unchanged, so the cost is
    /// that of what changed. Falls back to [`PolicyStore::reload`] when the
    /// paths cannot be handled one by one: one outside the directory or
    /// hidden, an unreadable directory, or the removal of its last policy file.
    pub fn reload_paths<P: AsRef<Path>>(&self, paths: &[P]) -> Arc<StoreStatus> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let plan = self.targeted(&state, paths);
        self.reload_locked(&mut state, plan)
    }

    /// True when some file the store loads is a symlink or has other hard
    /// links: a change under another name (a ConfigMap's `..data` swap) can
    /// then change it, so a watch must rescan on any change in the directory.
    pub fn has_links(&self) -> bool {
        self.linked.load(Ordering::Acquire)
    }

    /// What to read for a reload of `paths` alone, or `None` for a rescan.
    fn targeted<P: AsRef<Path>>(&self, state: &State, paths: &[P]) -> Option<Plan> {
        if !fs::metadata(&self.dir).is_ok_and(|m| m.is_dir()) {
            return None;
        }
        let mut plan = Plan::default();
        for path in paths {
            let path = path.as_ref();
            let name = path.file_name().and_then(|n| n.to_str())?;
            if path.parent() != Some(self.dir.as_path()) || name.starts_with('.') {
                return None;
            }
            let Some(kind) = Kind::of(name) else { continue };
            let link = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            if path.is_file() {
                plan.check.push((kind, path.to_path_buf(), link));
            } else {
                plan.removed.push((kind, path.to_path_buf()));
            }
        }
        // Removing the last policy file keeps every tenant: a rescan says so.
        let removed: BTreeSet<&Path> = plan
            .removed
            .iter()
            .filter(|(k, _)| *k == Kind::Policy)
            .map(|(_, p)| p.as_path())
            .collect();
        let adds = plan.check.iter().any(|(k, _, _)| *k == Kind::Policy);
        if !removed.is_empty() && !adds && state.policy_paths().all(|p| removed.contains(p)) {
            return None;
        }
        Some(plan)
    }

    /// The whole directory as a plan, or why it cannot be read (as a note).
    fn full_plan(&self, state: &State) -> Result<Plan, String> {
        let mut plan = Plan {
            full: true,
            ..Plan::default()
        };
        let entries = match list_entries(&self.dir) {
            Ok(entries) => entries,
            Err(e) => {
                return Err(format!(
                    "policy directory {} cannot be read ({e}); keeping the last good rules",
                    self.dir.display()
                ));
            }
        };
        for (path, link) in entries {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if let Some(kind) = Kind::of(name) {
                plan.check.push((kind, path, link));
            }
        }
        if !plan.check.iter().any(|(k, _, _)| *k == Kind::Policy) {
            return Err(format!(
                "policy directory {} has no policy files; keeping the last good rules",
                self.dir.display()
            ));
        }
        let listed: BTreeSet<&Path> = plan.check.iter().map(|(_, p, _)| p.as_path()).collect();
        let mut removed: Vec<(Kind, PathBuf)> = Vec::new();
        removed.extend(
            state
                .policy_paths()
                .filter(|p| !listed.contains(*p))
                .map(|p| (Kind::Policy, p.to_path_buf())),
        );
        let docs = (state.revocations.paths().map(|p| (Kind::Revocation, p)))
            .chain(state.data.paths().map(|p| (Kind::Data, p)));
        removed.extend(
            docs.filter(|(_, p)| !listed.contains(*p))
                .map(|(k, p)| (k, p.to_path_buf())),
        );
        plan.removed = removed;
        Ok(plan)
    }

    fn reload_locked(&self, state: &mut State, plan: Option<Plan>) -> Arc<StoreStatus> {
        let started = SystemTime::now();
        let previous = self.status.load_full();
        let mut errors = Vec::new();
        let mut notes = Vec::new();

        let plan = match plan.map_or_else(|| self.full_plan(state), Ok) {
            Ok(plan) => plan,
            Err(note) => {
                // Keep every tenant and every earlier file error.
                let status = Arc::new(StoreStatus {
                    generation: previous.generation,
                    tenants: previous.tenants.clone(),
                    errors: previous.errors.clone(),
                    notes: vec![note],
                    files_read: 0,
                });
                self.status.store(Arc::clone(&status));
                return status;
            }
        };
        let mut reader = Reader {
            seen: &mut state.seen,
            linked: &mut state.linked,
            now: started,
            trust_stamps: plan.full,
            read: 0,
        };

        // Removed files drop out first, so what they held is free below.
        let mut swaps: Vec<Swap> = Vec::new();
        for (kind, path) in &plan.removed {
            reader.forget(path);
            if *kind == Kind::Policy {
                state.pending.remove(path);
                state.broken.remove(path);
                if let Some(old) = state.files.remove(path) {
                    state.holders.remove(path, &old.tenant);
                    swaps.push((Some(old.tenant), None));
                }
            }
        }

        // Policy files: the changed, plus every file whose last version did
        // not load (its errors are reported again, and what it names may now
        // be there).
        let mut check: BTreeMap<&Path, bool> = BTreeMap::new();
        for (kind, path, link) in &plan.check {
            if *kind == Kind::Policy {
                reader.set_linked(path, *link);
                check.insert(path, false);
            }
        }
        for path in &state.broken {
            check.insert(path, true);
        }
        let mut newly_broken = Vec::new();
        for (path, force) in check {
            let text = match reader.get(path, force) {
                Got::Same => continue,
                Got::Failed(message) => {
                    errors.push(PolicyError {
                        file: path.to_path_buf(),
                        line: None,
                        message,
                    });
                    newly_broken.push((path.to_path_buf(), true));
                    continue;
                }
                Got::Bytes { text, digest } => {
                    let admitted = state.files.get(path).is_some_and(|l| l.digest == digest);
                    if admitted {
                        // Back to the bytes that serve: nothing to compile.
                        state.pending.remove(path);
                        newly_broken.push((path.to_path_buf(), false));
                        continue;
                    }
                    text
                }
            };
            match crate::tenants::compile_limited(path, &text, &self.allowed_dirs, &self.limits) {
                Ok(t) => {
                    state.pending.insert(path.to_path_buf(), Arc::new(t));
                    newly_broken.push((path.to_path_buf(), false));
                }
                Err(mut errs) => {
                    errors.append(&mut errs);
                    state.pending.remove(path);
                    newly_broken.push((path.to_path_buf(), true));
                }
            }
        }
        for (path, broken) in newly_broken {
            if broken {
                state.broken.insert(path);
            } else {
                state.broken.remove(&path);
            }
        }

        // Admit pending files whose tenant id and hosts no other file holds. An
        // incumbent keeps what it has; a file that loses a conflict may win it in a
        // later pass once the holder has changed, so repeat until nothing moves.
        // Refused files stay pending and are tried again at every reload.
        let mut pending: Vec<(PathBuf, Arc<CompiledTenant>)> =
            std::mem::take(&mut state.pending).into_iter().collect();
        loop {
            let mut rejected = Vec::new();
            let before = pending.len();
            for (path, tenant) in pending {
                let full = !state.files.contains_key(&path)
                    && state.files.len() >= self.limits.max_tenants;
                let refused = full.then(|| {
                    format!(
                        "tenant {} not loaded: {} tenants are served, the limit (limits.max_tenants)",
                        tenant.id,
                        state.files.len()
                    )
                });
                match refused.or_else(|| conflict(&state.files, &state.holders, &path, &tenant)) {
                    None => {
                        if let Some(old) = state.files.get(&path) {
                            state.holders.remove(&path, &old.tenant);
                        }
                        state.holders.add(&path, &tenant);
                        let old = state.files.insert(
                            path.clone(),
                            Loaded {
                                digest: tenant.digest.to_string(),
                                tenant: Arc::clone(&tenant),
                            },
                        );
                        swaps.push((old.map(|l| l.tenant), Some(tenant)));
                    }
                    Some(message) => rejected.push((path, tenant, message)),
                }
            }
            if rejected.len() == before || rejected.is_empty() {
                for (path, tenant, message) in rejected {
                    // A rejected file's warnings are still worth fixing.
                    notes.extend(tenant.warnings.iter().map(|w| format!("warning: {w}")));
                    errors.push(PolicyError {
                        file: path.clone(),
                        line: None,
                        message,
                    });
                    state.pending.insert(path, tenant);
                }
                break;
            }
            pending = rejected.into_iter().map(|(p, t, _)| (p, t)).collect();
        }

        // Swap: add and replace first, then the host index, then removals
        // (of entries still holding what was removed: an id can move files).
        for (_, new) in &swaps {
            if let Some(t) = new {
                self.tenants.insert(t.id.clone(), Arc::clone(t));
            }
        }
        let hosts_moved = swaps
            .iter()
            .flat_map(|(old, new)| old.iter().chain(new))
            .any(|t| !t.hosts.is_empty());
        if hosts_moved {
            self.hosts.store(Arc::new(HostIndex::build(
                state.files.values().map(|l| &l.tenant),
            )));
        }
        for (old, _) in &swaps {
            if let Some(old) = old {
                self.tenants
                    .remove_if(&old.id, |_, cur| Arc::ptr_eq(cur, old));
            }
        }
        let moved = !swaps.is_empty();

        for (kind, docs) in [
            (Kind::Revocation, &mut state.revocations as &mut dyn Docs),
            (Kind::Data, &mut state.data as &mut dyn Docs),
        ] {
            let paths: Vec<(&Path, bool)> = plan
                .check
                .iter()
                .filter(|(k, _, _)| *k == kind)
                .map(|(_, p, l)| (p.as_path(), *l))
                .collect();
            let removed: Vec<&Path> = plan
                .removed
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, p)| p.as_path())
                .collect();
            docs.reload(&mut reader, &paths, &removed, &mut errors, self);
        }
        let files_read = reader.read;
        self.linked
            .store(!state.linked.is_empty(), Ordering::Release);

        for loaded in state.files.values() {
            notes.extend(
                loaded
                    .tenant
                    .warnings
                    .iter()
                    .map(|w| format!("warning: {w}")),
            );
        }
        let tenants = if moved {
            let mut tenants: Vec<TenantStatus> = state
                .files
                .values()
                .map(|l| TenantStatus {
                    tenant: l.tenant.id.to_string(),
                    digest: l.tenant.digest.to_string(),
                    file: l.tenant.source.clone(),
                    rules: l.tenant.rule_count(),
                })
                .collect();
            tenants.sort_by(|a, b| a.tenant.cmp(&b.tenant));
            tenants
        } else {
            previous.tenants.clone()
        };
        let status = Arc::new(StoreStatus {
            generation: previous.generation + u64::from(moved),
            tenants,
            errors,
            notes,
            files_read,
        });
        self.status.store(Arc::clone(&status));
        if !self.tenants.is_empty() {
            self.ready.store(true, Ordering::Release);
        }
        status
    }
}

/// One tenant's rule set replaced (old, new), added (None, new) or removed
/// (old, None).
type Swap = (Option<Arc<CompiledTenant>>, Option<Arc<CompiledTenant>>);

/// How close to the time a file was read its mtime may be for its metadata
/// to be trusted later: a rewrite within one timestamp tick of the read, of
/// the same size, changes no metadata a rescan compares (the racy-timestamp
/// problem). Such a file is read again at every rescan until it is older.
pub const MTIME_MARGIN: Duration = Duration::from_secs(2);

/// What reloads keep between them. Held only by reloads, which it serializes.
#[derive(Default)]
struct State {
    /// The last good compile of each policy file that serves.
    files: BTreeMap<PathBuf, Loaded>,
    /// Who holds each id, host and issuer among `files`.
    holders: Holders,
    /// Policy files that compiled but were refused (a conflict, the tenant
    /// limit): tried again at every reload.
    pending: BTreeMap<PathBuf, Arc<CompiledTenant>>,
    /// Policy files whose latest version could not be read or compiled: read
    /// again at every reload.
    broken: BTreeSet<PathBuf>,
    /// What the last read of each file saw.
    seen: HashMap<PathBuf, Seen>,
    /// Loaded files that are symlinks or have other hard links.
    linked: BTreeSet<PathBuf>,
    revocations: DocFiles<RevocationList>,
    data: DocFiles<DataDoc>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("files", &self.files.len())
            .field("pending", &self.pending.len())
            .field("broken", &self.broken.len())
            .finish_non_exhaustive()
    }
}

impl State {
    /// Every policy file the store knows of, loaded or not.
    fn policy_paths(&self) -> impl Iterator<Item = &Path> {
        let mut all: BTreeSet<&Path> = self.files.keys().map(PathBuf::as_path).collect();
        all.extend(self.pending.keys().map(PathBuf::as_path));
        all.extend(self.broken.iter().map(PathBuf::as_path));
        all.into_iter()
    }
}

/// The files of one reload.
#[derive(Default)]
struct Plan {
    /// A rescan of the whole directory (metadata may be trusted).
    full: bool,
    /// Files to look at, with whether each is a symlink.
    check: Vec<(Kind, PathBuf, bool)>,
    /// Files that are gone.
    removed: Vec<(Kind, PathBuf)>,
}

/// What a file in the policy directory is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Policy,
    Revocation,
    Data,
}

impl Kind {
    fn of(name: &str) -> Option<Kind> {
        if name.ends_with(revocation::SUFFIX) {
            Some(Kind::Revocation)
        } else if data::is_data_file(name) {
            Some(Kind::Data)
        } else if is_policy_name(name) {
            Some(Kind::Policy)
        } else {
            None
        }
    }
}

/// The metadata a rescan compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt as _;
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// What the last read of a file saw: its metadata just before the read, the
/// digest of the bytes, and when.
struct Seen {
    stamp: Stamp,
    /// Whether the mtime was older than the read by [`MTIME_MARGIN`].
    settled: bool,
    digest: String,
}

enum Got {
    /// The bytes the last read saw (or, in a rescan, the same metadata).
    Same,
    Bytes {
        text: String,
        digest: String,
    },
    Failed(String),
}

/// Reads files for one reload, skipping what has not changed.
struct Reader<'a> {
    seen: &'a mut HashMap<PathBuf, Seen>,
    linked: &'a mut BTreeSet<PathBuf>,
    now: SystemTime,
    /// In a rescan, unchanged settled metadata means unchanged bytes.
    trust_stamps: bool,
    /// Files read (for the status, and tests).
    read: usize,
}

impl Reader<'_> {
    /// The file's bytes if they may differ from the last read (always when
    /// `force`).
    fn get(&mut self, path: &Path, force: bool) -> Got {
        use std::os::unix::fs::MetadataExt as _;
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) => {
                self.seen.remove(path);
                return Got::Failed(format!("cannot read file: {e}"));
            }
        };
        if meta.nlink() > 1 {
            self.linked.insert(path.to_path_buf());
        }
        let stamp = Stamp::of(&meta);
        let trusted = self
            .seen
            .get(path)
            .is_some_and(|s| s.settled && s.stamp == stamp);
        if self.trust_stamps && trusted && !force {
            return Got::Same;
        }
        self.read += 1;
        let text = match read_limited(path) {
            Ok(text) => text,
            Err(message) => {
                self.seen.remove(path);
                return Got::Failed(message);
            }
        };
        let digest = crate::tenants::digest_of(text.as_bytes());
        let settled = meta.modified().is_ok_and(|m| m + MTIME_MARGIN < self.now);
        let seen = Seen {
            stamp,
            settled,
            digest: digest.clone(),
        };
        let before = self.seen.insert(path.to_path_buf(), seen);
        if !force && before.is_some_and(|s| s.digest == digest) {
            return Got::Same;
        }
        Got::Bytes { text, digest }
    }

    fn set_linked(&mut self, path: &Path, link: bool) {
        if link {
            self.linked.insert(path.to_path_buf());
        } else {
            self.linked.remove(path);
        }
    }

    fn forget(&mut self, path: &Path) {
        self.seen.remove(path);
        self.linked.remove(path);
    }
}

/// Revocation lists or data documents: one per tenant, from their files
/// (with the digest of what loaded).
struct DocFiles<T> {
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
    fn paths(&self) -> impl Iterator<Item = &Path> {
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
trait Docs {
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
    list_files(dir, is_policy_name)
}

fn is_policy_name(name: &str) -> bool {
    (name.ends_with(".yaml") || name.ends_with(".yml"))
        && !name.ends_with(revocation::SUFFIX)
        && !crate::foundation::document::is_test_file(name)
        && !crate::policy::data::is_data_file(name)
}

/// The visible files in `dir` whose names `wanted` accepts, sorted.
pub(crate) fn list_files(
    dir: &Path,
    wanted: impl Fn(&str) -> bool,
) -> std::io::Result<Vec<PathBuf>> {
    Ok(list_entries(dir)?
        .into_iter()
        .map(|(path, _)| path)
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&wanted))
        .collect())
}

/// The visible files in `dir`, sorted, with whether each is a symlink.
fn list_entries(dir: &Path) -> std::io::Result<Vec<(PathBuf, bool)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_file() {
            let link = entry.file_type().is_ok_and(|t| t.is_symlink());
            out.push((path, link));
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

    fn digests(store: &PolicyStore) -> BTreeMap<String, String> {
        store
            .status()
            .tenants
            .iter()
            .map(|t| (t.tenant.clone(), t.digest.clone()))
            .collect()
    }

    #[test]
    fn a_reload_of_one_path_reads_and_swaps_that_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..40 {
            let t = format!("t{i}");
            write(
                dir.path(),
                &format!("{t}.yaml"),
                &policy(&t, &format!("{t}.example"), "r"),
            );
        }
        let store = PolicyStore::new(dir.path());
        let first = store.reload();
        assert!(first.errors.is_empty(), "{:?}", first.errors);
        assert_eq!(first.files_read, 40);
        let before = digests(&store);
        let t1 = store.tenant("t1").unwrap();

        // t7 changes and is named; t3 changes too but is not named.
        write(dir.path(), "t7.yaml", &policy("t7", "t7.example", "new"));
        write(dir.path(), "t3.yaml", &policy("t3", "t3.example", "new"));
        let s = store.reload_paths(&[dir.path().join("t7.yaml")]);
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(s.files_read, 1, "only the named file is read");
        assert_eq!(s.generation, first.generation + 1);
        let after = digests(&store);
        let moved: Vec<&String> = after.keys().filter(|t| before[*t] != after[*t]).collect();
        assert_eq!(moved, ["t7"]);
        assert_eq!(&*store.tenant("t7").unwrap().digest, after["t7"].as_str());
        assert!(Arc::ptr_eq(&t1, &store.tenant("t1").unwrap()));
        assert!(store.tenant_for_host("t7.example").is_some());

        // The same bytes again: read, not compiled, no new generation.
        let s = store.reload_paths(&[dir.path().join("t7.yaml")]);
        assert_eq!((s.files_read, s.generation), (1, first.generation + 1));

        // A rescan finds t3 by its metadata, and reads nothing else that
        // settled (the others were written just now, so they are read too,
        // but not compiled: their bytes are the same).
        let s = store.reload();
        assert_eq!(s.generation, first.generation + 2);
        let last = digests(&store);
        let moved: Vec<&String> = last.keys().filter(|t| after[*t] != last[*t]).collect();
        assert_eq!(moved, ["t3"]);
    }

    #[test]
    fn a_rescan_reads_only_files_whose_metadata_changed_or_is_too_recent() {
        let dir = tempfile::tempdir().unwrap();
        let set_old = |name: &str, secs: u64| {
            let f = fs::File::options()
                .write(true)
                .open(dir.path().join(name))
                .unwrap();
            let t = SystemTime::now() - Duration::from_secs(secs);
            f.set_modified(t).unwrap();
        };
        for t in ["a", "b", "c"] {
            write(
                dir.path(),
                &format!("{t}.yaml"),
                &policy(t, &format!("{t}.example"), "r"),
            );
            set_old(&format!("{t}.yaml"), 3600);
        }
        let store = PolicyStore::new(dir.path());
        assert_eq!(store.reload().files_read, 3);
        // Nothing changed and every mtime is settled: nothing is read.
        let s = store.reload();
        assert_eq!((s.files_read, s.generation), (0, 1));
        // b's metadata changes (its mtime): b alone is read; same bytes, so
        // nothing is compiled and the generation stays.
        set_old("b.yaml", 1800);
        let s = store.reload();
        assert_eq!((s.files_read, s.generation), (1, 1));
        assert_eq!(store.reload().files_read, 0);
    }

    #[test]
    fn a_rewrite_in_the_same_timestamp_tick_and_size_is_still_seen_by_a_rescan() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.yaml");
        fs::write(&path, policy("a", "a.example", "r1")).unwrap();
        let store = PolicyStore::new(dir.path());
        assert!(store.reload().errors.is_empty());
        // Rewritten in place with the same size; as if within the same tick,
        // the metadata the scan recorded is exactly what is there now.
        fs::write(&path, policy("a", "a.example", "r2")).unwrap();
        {
            let mut state = store.state.lock().unwrap();
            let seen = state.seen.get_mut(&path).unwrap();
            seen.stamp = Stamp::of(&fs::metadata(&path).unwrap());
        }
        let s = store.reload();
        assert_eq!(s.files_read, 1);
        assert!(store.tenant("a").unwrap().rule_ids().any(|r| r == "r2"));
        assert_eq!(s.generation, 2);
    }

    #[test]
    fn a_changed_file_that_now_conflicts_with_an_unchanged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.yaml", &policy("a", "a.example", "r"));
        write(dir.path(), "b.yaml", &policy("b", "b.example", "r"));
        let store = PolicyStore::new(dir.path());
        assert!(store.reload().errors.is_empty());
        let b = store.tenant("b").unwrap();

        write(dir.path(), "b.yaml", &policy("b", "a.example", "r"));
        let s = store.reload_paths(&[dir.path().join("b.yaml")]);
        assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
        assert!(s.errors[0].file.ends_with("b.yaml"));
        assert!(s.errors[0].message.contains("a.yaml"), "{}", s.errors[0]);
        assert!(Arc::ptr_eq(&b, &store.tenant("b").unwrap()), "old b serves");
        assert_eq!(&*store.tenant_for_host("a.example").unwrap().id, "a");
        assert_eq!(s.generation, 1);
        // Still refused at the next reload, whatever it names.
        let s = store.reload_paths::<PathBuf>(&[]);
        assert_eq!(s.errors.len(), 1, "{:?}", s.errors);

        // a releases the host: b, unchanged, is admitted.
        write(dir.path(), "a.yaml", &policy("a", "a2.example", "r"));
        let s = store.reload_paths(&[dir.path().join("a.yaml")]);
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(&*store.tenant_for_host("a.example").unwrap().id, "b");
        assert!(store.tenant_for_host("b.example").is_none());
    }

    #[test]
    fn a_broken_file_named_by_a_reload_keeps_its_rules_and_is_reported_until_fixed() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.yaml", &policy("a", "a.example", "r"));
        write(dir.path(), "b.yaml", &policy("b", "b.example", "r"));
        let store = PolicyStore::new(dir.path());
        store.reload();
        let a = store.tenant("a").unwrap();
        write(
            dir.path(),
            "a.yaml",
            "apiVersion: portcullis/v1\ntenant: a\nrules: [\n",
        );
        let s = store.reload_paths(&[dir.path().join("a.yaml")]);
        assert_eq!(s.errors.len(), 1);
        assert!(s.errors[0].file.ends_with("a.yaml") && s.errors[0].line.is_some());
        assert!(Arc::ptr_eq(&a, &store.tenant("a").unwrap()));
        // Another file's reload reports it again.
        write(dir.path(), "b.yaml", &policy("b", "b2.example", "r"));
        let s = store.reload_paths(&[dir.path().join("b.yaml")]);
        assert_eq!(s.errors.len(), 1, "{:?}", s.errors);
        // Back to the bytes that serve: no error, nothing recompiled.
        write(dir.path(), "a.yaml", &policy("a", "a.example", "r"));
        let s = store.reload_paths(&[dir.path().join("a.yaml")]);
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert!(Arc::ptr_eq(&a, &store.tenant("a").unwrap()));
    }

    #[test]
    fn removals_and_new_files_by_path() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.yaml", &policy("a", "a.example", "r"));
        write(dir.path(), "b.yaml", &policy("b", "b.example", "r"));
        let store = PolicyStore::new(dir.path());
        store.reload();
        // Renamed: b goes, c (same tenant id) comes, in one reload.
        fs::rename(dir.path().join("b.yaml"), dir.path().join("c.yaml")).unwrap();
        let s = store.reload_paths(&[dir.path().join("b.yaml"), dir.path().join("c.yaml")]);
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert_eq!(store.tenant("b").unwrap().source, dir.path().join("c.yaml"));
        assert!(store.tenant_for_host("b.example").is_some());
        fs::remove_file(dir.path().join("c.yaml")).unwrap();
        store.reload_paths(&[dir.path().join("c.yaml")]);
        assert!(store.tenant("b").is_none());
        assert!(store.tenant_for_host("b.example").is_none());
        // The last file removed: every tenant is kept, as by a rescan.
        fs::remove_file(dir.path().join("a.yaml")).unwrap();
        let s = store.reload_paths(&[dir.path().join("a.yaml")]);
        assert!(store.tenant("a").is_some());
        assert!(s.notes[0].contains("no policy files"), "{:?}", s.notes);
    }

    #[test]
    fn a_configmap_data_swap_changes_every_file_and_a_rescan_loads_them() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let publish = |stamp: &str, rule: &str| {
            fs::create_dir(root.join(stamp)).unwrap();
            for t in ["a", "b"] {
                let name = format!("{t}.yaml");
                fs::write(
                    root.join(stamp).join(&name),
                    policy(t, &format!("{t}.example"), rule),
                )
                .unwrap();
                if fs::symlink_metadata(root.join(&name)).is_err() {
                    symlink(format!("..data/{name}"), root.join(&name)).unwrap();
                }
            }
            symlink(stamp, root.join("..data_tmp")).unwrap();
            fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        };
        publish("..2026_01_01", "r1");
        let store = PolicyStore::new(root);
        assert!(store.reload().errors.is_empty());
        assert!(store.has_links(), "a watch must rescan on hidden entries");
        publish("..2026_01_02", "r2");
        let s = store.reload();
        assert_eq!(s.generation, 2, "one swap, one generation");
        for t in ["a", "b"] {
            assert!(
                store.tenant(t).unwrap().rule_ids().any(|r| r == "r2"),
                "{t}"
            );
        }
        let plain = tempfile::tempdir().unwrap();
        write(plain.path(), "a.yaml", &policy("a", "a.example", "r"));
        let store = PolicyStore::new(plain.path());
        store.reload();
        assert!(!store.has_links());
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
