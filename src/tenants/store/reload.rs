//! How a reload replaces the served tenants: what to read (a rescan of the
//! directory, or the paths a watch saw change), compiling aside, admitting
//! what does not conflict, and the swap; and what reloads keep between them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use crate::foundation::policy_files::NamedFile;
use crate::identity::revocation::RevocationList;
use crate::policy::data::DataDoc;
use crate::policy::{CompiledTenant, PolicyError};

use super::conflicts::{Holders, conflict, key_line};
use super::docs::{DocFiles, Docs};
use super::hosts::HostIndex;
use super::listing::{Kind, list_entries};
use super::reader::{Got, Reader, Seen};
use super::{Loaded, PolicyStore, StoreStatus, TenantStatus};

impl PolicyStore {
    /// What to read for a reload of `paths` alone, or `None` for a rescan.
    pub(super) fn targeted<P: AsRef<Path>>(&self, state: &State, paths: &[P]) -> Option<Plan> {
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

    /// The whole directory as a plan, or why it cannot be used.
    fn full_plan(&self, state: &State) -> Result<Plan, String> {
        let mut plan = Plan {
            full: true,
            ..Plan::default()
        };
        let entries = match list_entries(&self.dir) {
            Ok(entries) => entries,
            Err(e) => {
                return Err(format!(
                    "policy directory {} cannot be read ({e})",
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
                "policy directory {} has no policy files",
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

    pub(super) fn reload_locked(&self, state: &mut State, plan: Option<Plan>) -> Arc<StoreStatus> {
        let started = SystemTime::now();
        let previous = self.status.load_full();
        let mut errors = Vec::new();
        let mut notes = Vec::new();

        let plan = match plan.map_or_else(|| self.full_plan(state), Ok) {
            Ok(plan) => plan,
            Err(why) => {
                // Keep every tenant and every earlier file error.
                let status = Arc::new(StoreStatus {
                    generation: previous.generation,
                    tenants: previous.tenants.clone(),
                    errors: previous.errors.clone(),
                    notes: vec![format!("{why}; keeping the last good rules")],
                    unusable: Some(why),
                    revocation_unavailable: previous.revocation_unavailable.clone(),
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
        // Tenants a file they name has changed under (a rotated JWKS, key or
        // CA; a Secret's `..data` swap): compiled again though their policy
        // file is what serves. A broken new file keeps the old compile serving.
        let stale: BTreeSet<PathBuf> = (state.files.iter().map(|(p, l)| (p, &l.tenant)))
            .chain(state.pending.iter())
            .filter(|(_, t)| t.named_files.iter().any(NamedFile::changed))
            .map(|(p, _)| p.clone())
            .collect();
        for path in &stale {
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
                    let admitted = !stale.contains(path)
                        && state.files.get(path).is_some_and(|l| l.digest == digest);
                    if admitted {
                        // Back to the bytes that serve: nothing to compile.
                        state.pending.remove(path);
                        newly_broken.push((path.to_path_buf(), false));
                        continue;
                    }
                    text
                }
            };
            match crate::tenants::compile_limited(path, &text, &self.policy_files, &self.limits) {
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

        // Admit pending files whose tenant id and hosts no other file holds.
        // Of two files in conflict the one with the smaller path wins, whichever
        // was there first: an admitted file with a larger path is evicted (and
        // pends again), so what serves is a function of the files alone, the
        // same on every replica whatever order it saw changes in or when it
        // started (files taken in path order, each admitted unless it conflicts
        // with one admitted before it). Repeat until nothing moves. Refused
        // files stay pending and are tried again at every reload.
        let mut pending: Vec<(PathBuf, Arc<CompiledTenant>)> =
            std::mem::take(&mut state.pending).into_iter().collect();
        pending.sort_by(|a, b| a.0.cmp(&b.0));
        loop {
            let mut rejected = Vec::new();
            let mut moved = false;
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
                let refused = refused.map(|m| (None, m, None)).or_else(|| {
                    conflict(&state.files, &state.holders, &path, &tenant)
                        .map(|(key, m, other)| (Some(key), m, Some(other)))
                });
                match refused {
                    Some((key, message, Some(other))) if other > path => {
                        // The smaller path wins: the holder pends again.
                        if let Some(old) = state.files.remove(&other) {
                            state.holders.remove(&other, &old.tenant);
                            swaps.push((Some(Arc::clone(&old.tenant)), None));
                            rejected.push((other, old.tenant, None, String::new()));
                        }
                        rejected.push((path, tenant, key, message));
                        moved = true;
                    }
                    None => {
                        moved = true;
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
                    Some((key, message, _)) => rejected.push((path, tenant, key, message)),
                }
            }
            if !moved || rejected.is_empty() {
                for (path, tenant, key, message) in rejected {
                    // A rejected file's warnings are still worth fixing.
                    notes.extend(tenant.warnings.iter().map(|w| format!("warning: {w}")));
                    errors.push(PolicyError {
                        line: key.and_then(|k| key_line(&path, k)),
                        file: path.clone(),
                        message,
                    });
                    state.pending.insert(path, tenant);
                }
                break;
            }
            pending = rejected.into_iter().map(|(p, t, _, _)| (p, t)).collect();
            pending.sort_by(|a, b| a.0.cmp(&b.0));
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
            docs.reload(&mut reader, &paths, &removed, &mut errors, &mut notes, self);
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
            unusable: None,
            revocation_unavailable: self.revocation_unavailable.load().lines(),
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

/// What reloads keep between them. Held only by reloads, which it serializes.
#[derive(Default)]
pub(super) struct State {
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
    pub(super) seen: HashMap<PathBuf, Seen>,
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
pub(super) struct Plan {
    /// A rescan of the whole directory (metadata may be trusted).
    full: bool,
    /// Files to look at, with whether each is a symlink.
    check: Vec<(Kind, PathBuf, bool)>,
    /// Files that are gone.
    removed: Vec<(Kind, PathBuf)>,
}
