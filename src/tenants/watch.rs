//! Notices policy changes and reloads the store.
//!
//! Change events are debounced, so a Kubernetes ConfigMap update (new
//! `..<timestamp>` directory, then a rename of the `..data` symlink) loads as one
//! generation. A periodic rescan catches what a watch can miss, e.g. when the
//! directory itself is removed and created again; that rescan also watches the
//! new directory, so later edits load at once again. Reloads run on a blocking
//! thread and one at a time.
//!
//! A reload after events reads only the files the events name
//! ([`PolicyStore::reload_paths`]), so rewriting one tenant of thousands costs
//! one file. The whole directory is rescanned at start, on the timer, when the
//! watch reports lost events (queue overflow) or an error, when the directory
//! itself changes, and when a change under another name can change a loaded
//! file: a hidden or nested entry while some loaded file is a symlink (a
//! ConfigMap's `..data` swap) or hard-linked. Hidden entries otherwise (an
//! atomic writer's `.name.tmp`, an editor's swap file) name no policy: the
//! rename onto the visible name is its own event.
//!
//! Files a policy names (a JWKS, a CA bundle, a key) count too: every reload
//! asks each tenant whether one of its named files changed and compiles it
//! again if so. The `policy_files.allowed_dirs` that exist when the watch
//! begins are watched as well, and a change in one wakes a reload of no
//! policy file (only the named files are looked at); a directory that
//! appears later is seen by the periodic rescan.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::tenants::store::{PolicyStore, StoreStatus};

type Watcher = notify::RecommendedWatcher;

/// Runs until `stop` resolves. `on_reload` sees every reload's status.
pub async fn run(
    store: Arc<PolicyStore>,
    debounce: Duration,
    rescan_interval: Duration,
    on_reload: impl Fn(&StoreStatus) + Send + 'static,
    stop: impl std::future::Future<Output = ()>,
) {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let changes = Arc::new(Mutex::new(Changes::default()));
    let mut watched = identity(store.dir());
    let mut watcher = watch(&store, &changes, tx.clone());
    let mut tick = tokio::time::interval(rescan_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; the caller has just loaded
    // A change made after the caller's load but before the watch began raised
    // no event, and would wait for the next rescan: look once more now that
    // changes are watched. Unchanged files give the same generation.
    let before = store.status();
    let s = Arc::clone(&store);
    match tokio::task::spawn_blocking(move || s.reload()).await {
        Ok(after) if after.generation != before.generation || after.errors != before.errors => {
            on_reload(&after)
        }
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "policy reload task failed"),
    }
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            Some(()) = rx.recv() => {
                // Debounce: a ConfigMap update (new directory, then a symlink
                // swap) is several events; let them all land, then load once.
                tokio::time::sleep(debounce).await;
                while rx.try_recv().is_ok() {}
            }
            _ = tick.tick() => {
                // A watch follows the directory's inode: once the directory is
                // removed and created again, the old watch sees nothing, and
                // every later edit would wait for a rescan.
                let now = identity(store.dir());
                if watcher.is_none() || now != watched {
                    watcher = watch(&store, &changes, tx.clone());
                    watched = now;
                }
                lock(&changes).rescan = true;
            }
        }
        // Taken after the wake-ups were drained: a change noted later wakes
        // the next round.
        let batch = std::mem::take(&mut *lock(&changes));
        let s = Arc::clone(&store);
        let reload = move || {
            if batch.rescan {
                s.reload()
            } else {
                let paths: Vec<PathBuf> = batch.paths.into_iter().collect();
                s.reload_paths(&paths)
            }
        };
        match tokio::task::spawn_blocking(reload).await {
            Ok(status) => on_reload(&status),
            Err(e) => tracing::error!(error = %e, "policy reload task failed"),
        }
    }
}

/// The directory's device and inode (through symlinks), when it exists.
fn identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

/// Whether an event can mean changed policies. Reads cannot, and every reload
/// opens and reads every file: counting those made each reload schedule the
/// next, forever.
fn may_change(kind: &EventKind) -> bool {
    !matches!(
        kind,
        EventKind::Access(
            AccessKind::Open(_)
                | AccessKind::Read
                | AccessKind::Close(AccessMode::Read | AccessMode::Execute)
        )
    )
}

/// What the events since the last reload call for.
#[derive(Debug, Default)]
struct Changes {
    /// Rescan the whole directory.
    rescan: bool,
    /// Else: the visible files in the directory that changed.
    paths: BTreeSet<PathBuf>,
}

/// More changed paths than this between two reloads: rescan instead.
const MAX_CHANGED_PATHS: usize = 4096;

impl Changes {
    /// Notes one watch event. False when it cannot change policies.
    fn note(
        &mut self,
        dir: &Path,
        extra: &[PathBuf],
        links: bool,
        res: &notify::Result<notify::Event>,
    ) -> bool {
        let event = match res {
            // An error may have lost a change.
            Err(_) => {
                self.rescan = true;
                return true;
            }
            Ok(e) => e,
        };
        if !may_change(&event.kind) {
            return false;
        }
        if event.need_rescan() || event.paths.is_empty() {
            self.rescan = true;
        }
        for path in &event.paths {
            match affects(dir, extra, path, links) {
                Affects::Rescan => self.rescan = true,
                Affects::File => {
                    self.paths.insert(path.clone());
                }
                // The reload of no path still looks at every named file.
                Affects::Named => {}
                Affects::Nothing => {}
            }
        }
        if self.rescan || self.paths.len() > MAX_CHANGED_PATHS {
            self.rescan = true;
            self.paths.clear();
        }
        true
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Affects {
    /// The whole directory may have changed.
    Rescan,
    /// This file (a visible entry of the directory) may have changed.
    File,
    /// A file a policy may name (in an allowed directory): only the named
    /// files need a look.
    Named,
    /// No loaded file.
    Nothing,
}

/// What a change at `path` can change, for a store of `dir` that also
/// watches `extra` (the allowed directories of named files), with a file
/// that is a symlink or hard-linked when `links`.
fn affects(dir: &Path, extra: &[PathBuf], path: &Path, links: bool) -> Affects {
    let Ok(rest) = path.strip_prefix(dir) else {
        return if extra.iter().any(|d| path.starts_with(d)) {
            Affects::Named
        } else {
            Affects::Rescan
        };
    };
    let mut parts = rest.components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(name)), None) if !name.to_string_lossy().starts_with('.') => {
            Affects::File
        }
        // The directory itself (removed, moved, its permissions).
        (None, _) => Affects::Rescan,
        _ if links => Affects::Rescan,
        _ => Affects::Nothing,
    }
}

fn lock(changes: &Mutex<Changes>) -> std::sync::MutexGuard<'_, Changes> {
    changes.lock().unwrap_or_else(|p| p.into_inner())
}

fn watch(
    store: &Arc<PolicyStore>,
    changes: &Arc<Mutex<Changes>>,
    tx: mpsc::Sender<()>,
) -> Option<Watcher> {
    let dir = store.dir();
    // The allowed directories of named files, as they are now (outside the
    // policy directory, which is watched whole anyway).
    let extra: Vec<PathBuf> = store
        .allowed_dirs()
        .into_iter()
        .filter(|d| !d.starts_with(dir) && d.is_dir())
        .collect();
    let (store, changes) = (Arc::clone(store), Arc::clone(changes));
    let watched = extra.clone();
    let handler = move |res: notify::Result<notify::Event>| {
        if !lock(&changes).note(store.dir(), &watched, store.has_links(), &res) {
            return;
        }
        // A full channel already holds a pending reload: nothing is lost.
        let _ = tx.try_send(());
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot create policy watcher; relying on rescans");
            return None;
        }
    };
    if let Err(e) = watcher.watch(dir, RecursiveMode::Recursive) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch policy directory; relying on rescans");
        return None;
    }
    for d in &extra {
        if let Err(e) = watcher.watch(d, RecursiveMode::Recursive) {
            tracing::warn!(dir = %d.display(), error = %e, "cannot watch policy_files.allowed_dirs entry; its files are looked at on rescans");
        }
    }
    Some(watcher)
}

/// How many notes one reload logs; the rest are counted in one line. A
/// directory of 10,000 files with 20 warnings each must not write 200,000
/// lines at every reload: `/readyz` and `portcullis validate` list them.
pub const MAX_LOGGED_NOTES: usize = 20;

/// Logs a reload's outcome: every file error with file and line, and the
/// first [`MAX_LOGGED_NOTES`] notes.
pub fn log_status(status: &StoreStatus) {
    for e in &status.errors {
        tracing::warn!(file = %e.file.display(), line = e.line, error = %e.message, "policy file rejected; previous rules keep serving");
    }
    for line in &status.revocation_unavailable {
        tracing::error!(cause = %line, "revocation list unavailable: revocable callers of the tenant get 503 revocation_unavailable");
    }
    for n in status.notes.iter().take(MAX_LOGGED_NOTES) {
        tracing::warn!(note = %n, "policy reload");
    }
    if let Some(more) = status.notes.len().checked_sub(MAX_LOGGED_NOTES)
        && more > 0
    {
        tracing::warn!(
            more,
            total = status.notes.len(),
            "policy reload: more notes not logged; /readyz and `portcullis validate` list them"
        );
    }
    tracing::info!(
        generation = status.generation,
        tenants = status.tenants.len(),
        errors = status.errors.len(),
        "policies loaded"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};

    #[test]
    fn visible_files_are_reloaded_alone_and_hidden_ones_only_matter_with_links() {
        let dir = Path::new("/p");
        assert_eq!(
            affects(dir, &[], Path::new("/p/a.yaml"), false),
            Affects::File
        );
        assert_eq!(
            affects(dir, &[], Path::new("/p/a.yaml"), true),
            Affects::File
        );
        for hidden in [
            "/p/.a.yaml.tmp",
            "/p/..data",
            "/p/..2026_01_01/a.yaml",
            "/p/sub/a.yaml",
        ] {
            assert_eq!(
                affects(dir, &[], Path::new(hidden), false),
                Affects::Nothing,
                "{hidden}"
            );
            assert_eq!(
                affects(dir, &[], Path::new(hidden), true),
                Affects::Rescan,
                "{hidden}"
            );
        }
        assert_eq!(affects(dir, &[], Path::new("/p"), false), Affects::Rescan);
        // In a watched allowed directory: the named files, not a rescan.
        let secrets = [PathBuf::from("/s")];
        assert_eq!(
            affects(dir, &secrets, Path::new("/s/..data"), false),
            Affects::Named
        );
        assert_eq!(
            affects(dir, &[], Path::new("/elsewhere/a.yaml"), false),
            Affects::Rescan
        );
    }

    #[test]
    fn lost_events_errors_and_too_many_paths_ask_for_a_rescan() {
        let dir = Path::new("/p");
        let event = |kind, paths: &[&str]| {
            let mut e = notify::Event::new(kind);
            for p in paths {
                e = e.add_path(PathBuf::from(p));
            }
            Ok(e)
        };
        // An atomic writer: the temporary file, then the rename onto the name.
        let mut c = Changes::default();
        assert!(c.note(
            dir,
            &[],
            false,
            &event(EventKind::Create(CreateKind::File), &["/p/.a.yaml.tmp"])
        ));
        let rename = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        assert!(c.note(
            dir,
            &[],
            false,
            &event(rename, &["/p/.a.yaml.tmp", "/p/a.yaml"])
        ));
        assert!(!c.note(
            dir,
            &[],
            false,
            &event(EventKind::Access(AccessKind::Read), &["/p/b.yaml"])
        ));
        assert!(!c.rescan);
        assert_eq!(c.paths.iter().collect::<Vec<_>>(), [Path::new("/p/a.yaml")]);

        let overflow =
            Ok(notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan));
        let mut c = Changes::default();
        assert!(c.note(dir, &[], false, &overflow));
        assert!(c.rescan);
        let mut c = Changes::default();
        assert!(c.note(dir, &[], false, &Err(notify::Error::generic("lost"))));
        assert!(c.rescan);
        let mut c = Changes::default();
        for i in 0..=MAX_CHANGED_PATHS {
            let p = format!("/p/t{i}.yaml");
            c.note(
                dir,
                &[],
                false,
                &event(EventKind::Modify(ModifyKind::Any), &[&p]),
            );
        }
        assert!(c.rescan && c.paths.is_empty());
    }

    #[test]
    fn reads_are_not_changes_but_writes_are() {
        for read in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
        ] {
            assert!(!may_change(&read), "{read:?}");
        }
        for change in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Modify(ModifyKind::Any),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Create(CreateKind::File),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
        ] {
            assert!(may_change(&change), "{change:?}");
        }
    }
}
