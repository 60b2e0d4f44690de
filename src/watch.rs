//! Notices policy changes and reloads the store.
//!
//! Change events are debounced, so a Kubernetes ConfigMap update (new
//! `..<timestamp>` directory, then a rename of the `..data` symlink) loads as one
//! generation. A periodic rescan catches what a watch can miss, e.g. when the
//! directory itself is removed and created again; that rescan also watches the
//! new directory, so later edits load at once again. Reloads run on a blocking
//! thread and one at a time.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::store::{PolicyStore, StoreStatus};

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
    let mut watched = identity(store.dir());
    let mut watcher = watch(store.dir(), tx.clone());
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
                    watcher = watch(store.dir(), tx.clone());
                    watched = now;
                }
            }
        }
        let s = Arc::clone(&store);
        match tokio::task::spawn_blocking(move || s.reload()).await {
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

fn watch(dir: &Path, tx: mpsc::Sender<()>) -> Option<Watcher> {
    let handler = move |res: notify::Result<notify::Event>| {
        // An error may have lost a change: reload.
        if res.as_ref().is_ok_and(|e| !may_change(&e.kind)) {
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
    match watcher.watch(dir, RecursiveMode::Recursive) {
        Ok(()) => Some(watcher),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch policy directory; relying on rescans");
            None
        }
    }
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
