//! Reading files for a reload: what the last read of each file saw (its
//! metadata and digest), so that a rescan skips what has not changed, and the
//! size limit on every read.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::policy::MAX_POLICY_FILE_BYTES;

/// How close to the time a file was read its mtime may be for its metadata
/// to be trusted later: a rewrite within one timestamp tick of the read, of
/// the same size, changes no metadata a rescan compares (the racy-timestamp
/// problem). Such a file is read again at every rescan until it is older.
pub const MTIME_MARGIN: Duration = Duration::from_secs(2);

/// The metadata a rescan compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    pub(super) fn of(m: &fs::Metadata) -> Stamp {
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
pub(super) struct Seen {
    pub(super) stamp: Stamp,
    /// Whether the mtime was older than the read by [`MTIME_MARGIN`].
    settled: bool,
    digest: String,
}

pub(super) enum Got {
    /// The bytes the last read saw (or, in a rescan, the same metadata).
    Same,
    Bytes {
        text: String,
        digest: String,
    },
    Failed(String),
}

/// Reads files for one reload, skipping what has not changed.
pub(super) struct Reader<'a> {
    pub(super) seen: &'a mut HashMap<PathBuf, Seen>,
    pub(super) linked: &'a mut BTreeSet<PathBuf>,
    pub(super) now: SystemTime,
    /// In a rescan, unchanged settled metadata means unchanged bytes.
    pub(super) trust_stamps: bool,
    /// Files read (for the status, and tests).
    pub(super) read: usize,
}

impl Reader<'_> {
    /// The file's bytes if they may differ from the last read (always when
    /// `force`).
    pub(super) fn get(&mut self, path: &Path, force: bool) -> Got {
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

    pub(super) fn set_linked(&mut self, path: &Path, link: bool) {
        if link {
            self.linked.insert(path.to_path_buf());
        } else {
            self.linked.remove(path);
        }
    }

    pub(super) fn forget(&mut self, path: &Path) {
        self.seen.remove(path);
        self.linked.remove(path);
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
