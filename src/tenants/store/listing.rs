//! What is in the policy directory: its visible files, and what each is by its
//! name (a policy, a revocation list, a data document).

use std::fs;
use std::path::{Path, PathBuf};

use crate::identity::revocation;
use crate::policy::data;

/// What a file in the policy directory is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Policy,
    Revocation,
    Data,
}

impl Kind {
    pub(super) fn of(name: &str) -> Option<Kind> {
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
pub(super) fn list_entries(dir: &Path) -> std::io::Result<Vec<(PathBuf, bool)>> {
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
