//! One single-tenant reload at scale, for `valgrind --tool=callgrind`:
//! loads a policy directory (e.g. the `many/` fixtures), appends a comment to
//! one file and reloads once inside `measured`, with the metrics update the
//! server does after every reload. MODE `event` (the default) reloads the
//! changed file alone, as the watcher does after an event; `rescan` rescans
//! the directory, as the periodic timer does.
//!
//! ```text
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='reload_one::measured' \
//!     target/release/examples/reload_one DIR t0.yaml [event|rescan]
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::{Path, PathBuf};

use portcullis::observe::metrics::{Metrics, MetricsConfig};
use portcullis::tenants::store::PolicyStore;

#[inline(never)]
fn measured(store: &PolicyStore, metrics: &Metrics, changed: &Path, rescan: bool) -> u64 {
    let status = if rescan {
        store.reload()
    } else {
        store.reload_paths(&[changed])
    };
    metrics.observe_reload(store, &status);
    status.generation
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().expect("usage: reload_one DIR FILE"));
    let file = dir.join(args.next().expect("usage: reload_one DIR FILE"));
    let rescan = match args.next().as_deref() {
        None | Some("event") => false,
        Some("rescan") => true,
        Some(other) => panic!("unknown mode {other}: event or rescan"),
    };
    let store = PolicyStore::new(&dir);
    let first = store.reload();
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    let metrics = Metrics::new(&MetricsConfig::default());
    metrics.observe_reload(&store, &first);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    writeln!(f, "# changed {}", std::process::id()).unwrap();
    drop(f);
    let generation = measured(&store, &metrics, &file, rescan);
    assert_eq!(generation, first.generation + 1);
    println!(
        "tenants {} generation {generation} files read {}",
        first.tenants.len(),
        store.status().files_read
    );
}
