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
//!
//! The parts: [`PolicyStore`] and its status here; `reload` (the plan, the
//! compile aside and the swap), `reader` (reading only what changed),
//! `conflicts` (what two files may not share), `docs` (revocation lists and
//! data documents, and which tenants' lists cannot be loaded), `hosts` (the host index) and `listing` (what is in the
//! directory).

mod conflicts;
mod docs;
mod hosts;
mod listing;
mod reader;
mod reload;
#[cfg(test)]
mod tests;

use crate::foundation::policy_files::PolicyFilesConfig;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use dashmap::DashMap;

use crate::identity::revocation::RevocationList;
use crate::policy::data::DataDoc;
use crate::policy::{CompiledTenant, PolicyError};
pub use docs::Unavailable;
use hosts::HostIndex;
pub(crate) use listing::list_files;
pub use listing::list_policy_files;
pub use reader::MTIME_MARGIN;
use reload::State;

/// Tenant ids as map keys.
pub type TenantId = Arc<str>;

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
    /// Tenants whose revocation list cannot be loaded (a broken file that
    /// never loaded, files in conflict), one line each: their callers get 503
    /// `revocation_unavailable`, and `/readyz` is not ready.
    pub revocation_unavailable: Vec<String>,
    /// Why the directory as a whole could not be used (it cannot be read, or
    /// holds no policy file), without what a running server does about it
    /// (`notes` adds that it keeps the last good rules). Offline, with no last
    /// good rules, `validate` and `check` report this as an error.
    #[serde(skip)]
    pub unusable: Option<String>,
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
    /// `policy_files`: where, besides `dir`, files that policies name may be
    /// (the shared `allowed_dirs`, and each tenant's own).
    policy_files: PolicyFilesConfig,
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
    /// Tenants without a list whose list cannot be loaded.
    revocation_unavailable: ArcSwap<Unavailable>,
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
            policy_files: PolicyFilesConfig::default(),
            tenants: DashMap::new(),
            hosts: ArcSwap::from_pointee(HostIndex::default()),
            status: ArcSwap::from_pointee(StoreStatus::default()),
            ready: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            linked: AtomicBool::new(false),
            revocations: DashMap::new(),
            revocation_unavailable: ArcSwap::from_pointee(Unavailable::default()),
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
        self.policy_files = PolicyFilesConfig::from(dirs);
        self
    }

    /// The server's `policy_files`: shared directories, and each tenant's
    /// own, which no other tenant's file may name.
    pub fn with_policy_files(mut self, files: PolicyFilesConfig) -> PolicyStore {
        self.policy_files = files;
        self
    }

    /// Every directory, besides the policy directory, that some tenant's named
    /// files may be in: the shared ones and each tenant's own.
    pub fn allowed_dirs(&self) -> Vec<PathBuf> {
        let own = self.policy_files.tenants.values().flatten();
        self.policy_files
            .allowed_dirs
            .iter()
            .chain(own)
            .cloned()
            .collect()
    }

    /// The tenant's data document, if it has one.
    pub fn data(&self, tenant: &str) -> Option<Arc<DataDoc>> {
        self.data.get(tenant).map(|d| Arc::clone(d.value()))
    }

    /// The tenant's revocation list, if it has one.
    pub fn revocations(&self, tenant: &str) -> Option<Arc<RevocationList>> {
        self.revocations.get(tenant).map(|r| Arc::clone(r.value()))
    }

    /// Why the tenant has no revocation list it can trust, when a file meant
    /// to be its list did not load and no last good version serves (see
    /// [`Unavailable`]). `None` when it has a list, or no file names it.
    pub fn revocation_unavailable(&self, tenant: &str) -> Option<String> {
        self.revocation_list(tenant).err()
    }

    /// The tenant's revocation list in one lookup: `Ok(Some)` when a list
    /// serves, `Ok(None)` when no file names the tenant, `Err(why)` when a
    /// file meant to be its list did not load and no last good version serves.
    pub fn revocation_list(&self, tenant: &str) -> Result<Option<Arc<RevocationList>>, String> {
        if let Some(list) = self.revocations(tenant) {
            return Ok(Some(list));
        }
        self.revocation_unavailable
            .load()
            .why(tenant)
            .map_or(Ok(None), Err)
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
}
