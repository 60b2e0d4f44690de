//! Where the files a policy names may live.
//!
//! A policy file can name other files: `identity.jwt[].jwks_file`,
//! `identity.jwt[].tls.*`, `identity.introspection.client_secret_file` and
//! `tls.*`, and `identity.dpop.nonce_key_file`. A name is relative to the
//! policy file's directory, or absolute. Whoever writes policies must not be
//! able to name the server's own secrets (a signing key sent as an
//! introspection client secret to an endpoint the same author chose), so every
//! such file must resolve, symlinks followed, to a path inside the policy
//! directory or one of the server's `policy_files.allowed_dirs`.
//!
//! Resolving follows every symlink before the check. A Kubernetes
//! ConfigMap or Secret mount (`name -> ..data/name -> ..2026_11_24…/name`)
//! stays inside its mount directory, so it passes; a link that leads out of an
//! allowed directory does not, and neither does a `..` that climbs out.
//! The allowed directories themselves are resolved at each check, so a mount
//! that appears later works without a restart.
//!
//! `policy_files.allowed_dirs` are shared: every tenant's files may be in
//! them. `policy_files.tenants` gives a tenant directories of its own, which no
//! other tenant's file may name, so one tenant's author cannot have another
//! tenant's client secret read (and posted to an endpoint of their choosing).
//! A tenant's own directory may not lie inside a shared one or another
//! tenant's, or the split would be void; that is refused at start-up.
//!
//! Every file a scope reads is noted ([`FileScope::named_files`]): its path,
//! metadata and digest. A reload asks each loaded tenant's notes whether a
//! file changed ([`NamedFile::changed`]) and compiles that tenant again, so a
//! rotated JWKS, key or CA (a Secret's `..data` swap) takes effect without a
//! change to the policy file.
//!
//! Never imports: any other module of the crate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

/// `policy_files` in the server configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyFilesConfig {
    /// Directories, besides the policy directory, that files named by policies
    /// may be in (for example a Secret mount). Relative paths are relative to
    /// the configuration file. Keep the server's own keys out of them.
    pub allowed_dirs: Vec<PathBuf>,
    /// Tenant id → directories that only that tenant's files may be in (its
    /// client secret, its private CA). Relative paths as for `allowed_dirs`.
    pub tenants: BTreeMap<String, Vec<PathBuf>>,
}

impl From<Vec<PathBuf>> for PolicyFilesConfig {
    fn from(allowed_dirs: Vec<PathBuf>) -> PolicyFilesConfig {
        PolicyFilesConfig {
            allowed_dirs,
            tenants: BTreeMap::new(),
        }
    }
}

impl PolicyFilesConfig {
    /// Makes relative directories relative to `base`.
    pub fn resolve(&mut self, base: &Path) {
        let own = self.tenants.values_mut().flatten();
        for dir in self.allowed_dirs.iter_mut().chain(own) {
            if dir.is_relative() {
                *dir = base.join(&*dir);
            }
        }
    }

    /// Refuses empty paths, and a tenant's own directory that every tenant
    /// (a shared directory, or `policies`, the policy directory) or another
    /// tenant could read too. Paths are compared as written, after
    /// [`PolicyFilesConfig::resolve`]; each read still checks the real path.
    pub fn validate(&self, policies: &Path) -> Result<(), String> {
        if self.allowed_dirs.iter().any(|d| d.as_os_str().is_empty()) {
            return Err("policy_files.allowed_dirs must not hold an empty path".into());
        }
        let shared = || {
            std::iter::once(("the policy directory".to_string(), policies)).chain(
                self.allowed_dirs
                    .iter()
                    .map(|d| ("policy_files.allowed_dirs".to_string(), d.as_path())),
            )
        };
        for (tenant, dirs) in &self.tenants {
            if dirs.iter().any(|d| d.as_os_str().is_empty()) {
                return Err(format!(
                    "policy_files.tenants.{tenant} must not hold an empty path"
                ));
            }
        }
        for (tenant, dirs) in &self.tenants {
            for dir in dirs {
                let at = format!("policy_files.tenants.{tenant}");
                if let Some((what, d)) = shared().find(|(_, d)| dir.starts_with(d)) {
                    return Err(format!(
                        "{at}: {} is inside {what} {}, which every tenant may read",
                        dir.display(),
                        d.display()
                    ));
                }
                for (other, theirs) in self.tenants.iter().filter(|(t, _)| *t != tenant) {
                    if let Some(d) = theirs
                        .iter()
                        .find(|d| d.starts_with(dir) || dir.starts_with(d))
                    {
                        return Err(format!(
                            "{at}: {} overlaps {} of policy_files.tenants.{other}",
                            dir.display(),
                            d.display()
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The directories `tenant`'s files may be in besides its policy
    /// directory: the shared ones and its own.
    pub fn dirs_of(&self, tenant: &str) -> Vec<PathBuf> {
        let own = self.tenants.get(tenant).into_iter().flatten();
        self.allowed_dirs.iter().chain(own).cloned().collect()
    }

    /// The file scope of a policy file in `base` for `tenant`.
    pub fn scope(&self, base: impl Into<PathBuf>, tenant: &str) -> FileScope {
        let mut scope = FileScope::new(base, &self.dirs_of(tenant));
        if !self.tenants.is_empty() {
            scope.tenant = Some(tenant.to_string());
        }
        scope
    }
}

/// What one policy file may name: relative names resolve against `base` (the
/// policy file's directory), and every name must resolve into one of `roots`.
#[derive(Debug, Clone)]
pub struct FileScope {
    base: PathBuf,
    roots: Arc<[PathBuf]>,
    /// The tenant, when tenants have directories of their own (for the
    /// message of a refusal).
    tenant: Option<String>,
    /// What was read through this scope (and its clones), by the name used.
    read: Arc<Mutex<BTreeMap<PathBuf, NamedFile>>>,
}

/// One file a policy named, as the compile read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedFile {
    /// The name as the policy gave it, joined to the policy's directory (a
    /// symlink such as a Secret's `name -> ..data/name` is followed anew at
    /// every check).
    pub path: PathBuf,
    stamp: Stamp,
    /// Whether the mtime was older than the read by [`NAMED_MTIME_MARGIN`].
    settled: bool,
    digest: [u8; 32],
}

/// The metadata compared: device, inode, size, mtime, ctime.
type Stamp = (u64, u64, u64, (i64, i64), (i64, i64));

fn stamp_of(m: &std::fs::Metadata) -> Stamp {
    use std::os::unix::fs::MetadataExt as _;
    (
        m.dev(),
        m.ino(),
        m.size(),
        (m.mtime(), m.mtime_nsec()),
        (m.ctime(), m.ctime_nsec()),
    )
}

/// A file whose mtime is this close to the time it was read is read again
/// at each check, not trusted by its metadata: a rewrite of the same size in
/// the same timestamp tick would look unchanged.
pub const NAMED_MTIME_MARGIN: Duration = Duration::from_secs(2);

impl NamedFile {
    /// Whether the file at [`NamedFile::path`] is not what the compile read:
    /// gone, unreadable, or other bytes. Unchanged metadata (and an mtime
    /// settled before the read) is taken as unchanged without a read.
    pub fn changed(&self) -> bool {
        use std::io::Read as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let Ok(meta) = std::fs::metadata(&self.path) else {
            return true;
        };
        if self.settled && stamp_of(&meta) == self.stamp {
            return false;
        }
        // Anything but a regular file is a change (the compile refuses it);
        // a FIFO is never opened, so a reload never waits on a writer.
        if !meta.file_type().is_file() {
            return true;
        }
        let mut bytes = Vec::new();
        let read = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path)
            .and_then(|f| f.take(MAX_NAMED_FILE_BYTES + 1).read_to_end(&mut bytes));
        read.is_err() || digest(&bytes) != self.digest
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

impl FileScope {
    /// Names relative to `base`, allowed in `base` and in `allowed`.
    pub fn new(base: impl Into<PathBuf>, allowed: &[PathBuf]) -> FileScope {
        let base = base.into();
        let roots = std::iter::once(base.clone())
            .chain(allowed.iter().cloned())
            .collect();
        FileScope {
            base,
            roots,
            tenant: None,
            read: Arc::default(),
        }
    }

    /// Every file read through this scope so far, one entry per name.
    pub fn named_files(&self) -> Vec<NamedFile> {
        let read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        read.values().cloned().collect()
    }

    /// The policy file's directory.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Whether `real` (a canonical path) is inside the policy directory or an
    /// allowed directory.
    fn allows(&self, real: &Path) -> bool {
        self.roots
            .iter()
            .filter_map(|root| std::fs::canonicalize(root).ok())
            .any(|root| real.starts_with(root))
    }

    /// Reads the file a policy names in `field`, at most [`MAX_NAMED_FILE_BYTES`].
    pub fn read(&self, field: &str, name: &str) -> Result<Vec<u8>, String> {
        self.read_limited(field, name, MAX_NAMED_FILE_BYTES)
    }

    /// Reads the file a policy names in `field`, at most `max` bytes, or says
    /// why it may not be read: it does not exist, is not a regular file, has
    /// more than one link, is too large, or resolves outside every allowed
    /// directory.
    ///
    /// The file is opened once, and what is checked is the opened file: the
    /// path is resolved after the open, and the file found there must be the
    /// one held open (same device and inode). A file or directory swapped for
    /// a symlink between the two steps is refused, not followed; a FIFO is
    /// never waited on (the open does not block, and only regular files are
    /// read); a hard link (another name for a file elsewhere) is refused.
    pub fn read_limited(&self, field: &str, name: &str, max: u64) -> Result<Vec<u8>, String> {
        use std::io::Read as _;
        use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};

        let named = self.base.join(name);
        let cannot =
            |e: &dyn std::fmt::Display| format!("cannot read {field} {}: {e}", named.display());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&named)
            .map_err(|e| cannot(&e))?;
        let held = file.metadata().map_err(|e| cannot(&e))?;
        if !held.file_type().is_file() {
            return Err(cannot(&"not a regular file"));
        }
        if held.nlink() > 1 {
            return Err(cannot(
                &"the file has other hard links; name it by one path only",
            ));
        }
        let real = std::fs::canonicalize(&named).map_err(|e| cannot(&e))?;
        if !self.allows(&real) {
            let own = match &self.tenant {
                Some(t) => format!(", policy_files.allowed_dirs and policy_files.tenants.{t}"),
                None => " and policy_files.allowed_dirs".to_string(),
            };
            return Err(format!(
                "{field} {} resolves to {}, outside the policy directory{own}",
                named.display(),
                real.display()
            ));
        }
        let there = std::fs::metadata(&real).map_err(|e| cannot(&e))?;
        if (there.dev(), there.ino()) != (held.dev(), held.ino()) {
            return Err(cannot(&"the file changed while it was opened"));
        }
        let mut bytes = Vec::new();
        file.take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| cannot(&e))?;
        if bytes.len() as u64 > max {
            return Err(cannot(&format_args!("larger than {max} bytes")));
        }
        let settled = held
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_some_and(|age| age > NAMED_MTIME_MARGIN);
        let note = NamedFile {
            path: named.clone(),
            stamp: stamp_of(&held),
            settled,
            digest: digest(&bytes),
        };
        let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        read.insert(named, note);
        Ok(bytes)
    }
}

/// The most bytes read from one file a policy names (a JWKS, a PEM bundle, a
/// key): far above any real one.
pub const MAX_NAMED_FILE_BYTES: u64 = 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_inside_the_policy_dir_and_allowed_dirs_only() {
        let root = tempfile::tempdir().unwrap();
        let policies = root.path().join("policies");
        let secrets = root.path().join("secrets");
        let private = root.path().join("private");
        for d in [&policies, &secrets, &private] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(policies.join("jwks.json"), "{}").unwrap();
        std::fs::write(secrets.join("s"), "x").unwrap();
        std::fs::write(private.join("key.pem"), "k").unwrap();
        let scope = FileScope::new(&policies, std::slice::from_ref(&secrets));

        // Allowed: relative in the policy directory; absolute in an allowed dir.
        assert_eq!(scope.read("jwks_file", "jwks.json").unwrap(), b"{}");
        let s = secrets.join("s").display().to_string();
        assert_eq!(scope.read("client_secret_file", &s).unwrap(), b"x");

        // Refused: absolute outside, `..` out of the policy directory.
        let outside = private.join("key.pem").display().to_string();
        let e = scope.read("client_secret_file", &outside).unwrap_err();
        assert!(
            e.contains("client_secret_file") && e.contains("outside"),
            "{e}"
        );
        let e = scope.read("jwks_file", "../private/key.pem").unwrap_err();
        assert!(e.contains("outside"), "{e}");
        // `..` that climbs out and back in is fine: it ends inside.
        assert!(scope.read("jwks_file", "../policies/jwks.json").is_ok());

        // A symlink inside an allowed directory that leads out is refused.
        std::os::unix::fs::symlink(private.join("key.pem"), secrets.join("escape")).unwrap();
        let esc = secrets.join("escape").display().to_string();
        assert!(
            scope
                .read("tls.ca_file", &esc)
                .unwrap_err()
                .contains("outside")
        );

        // A ConfigMap/Secret-style mount: name -> ..data/name -> ..ts/name.
        let ts = secrets.join("..2026_11_24");
        std::fs::create_dir(&ts).unwrap();
        std::fs::write(ts.join("rotated"), "r").unwrap();
        std::os::unix::fs::symlink("..2026_11_24", secrets.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/rotated", secrets.join("rotated")).unwrap();
        let rotated = secrets.join("rotated").display().to_string();
        assert_eq!(scope.read("nonce_key_file", &rotated).unwrap(), b"r");

        // Missing: the error names the field and the path.
        let e = scope.read("jwks_file", "missing.json").unwrap_err();
        assert!(
            e.contains("cannot read jwks_file") && e.contains("missing.json"),
            "{e}"
        );

        // Without the allowed dir, only the policy directory is allowed.
        let narrow = FileScope::new(&policies, &[]);
        assert!(narrow.read("client_secret_file", &s).is_err());
        assert!(narrow.read("jwks_file", "jwks.json").is_ok());
    }

    #[test]
    fn a_tenants_own_directory_is_read_by_that_tenant_alone() {
        let root = tempfile::tempdir().unwrap();
        let policies = root.path().join("policies");
        let acme = root.path().join("secrets/acme");
        let globex = root.path().join("secrets/globex");
        for d in [&policies, &acme, &globex] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(acme.join("secret"), "a").unwrap();
        let secret = acme.join("secret").display().to_string();
        let mut config = PolicyFilesConfig::default();
        config.tenants.insert("acme".into(), vec![acme.clone()]);
        config.tenants.insert("globex".into(), vec![globex.clone()]);
        config.validate(&policies).unwrap();

        // Its own: read. Another tenant's: refused, naming the tenant's scope.
        let own = config.scope(&policies, "acme");
        assert_eq!(own.read("client_secret_file", &secret).unwrap(), b"a");
        let e = config
            .scope(&policies, "globex")
            .read("client_secret_file", &secret)
            .unwrap_err();
        assert!(
            e.contains("outside") && e.contains("policy_files.tenants.globex"),
            "{e}"
        );
        // A tenant not in the map has the shared directories only.
        assert!(
            config
                .scope(&policies, "initech")
                .read("client_secret_file", &secret)
                .is_err()
        );
        // Without `tenants`, the message is as before.
        let plain = PolicyFilesConfig::default().scope(&policies, "acme");
        let e = plain.read("client_secret_file", &secret).unwrap_err();
        assert!(
            e.ends_with("outside the policy directory and policy_files.allowed_dirs"),
            "{e}"
        );
    }

    #[test]
    fn a_tenant_directory_others_could_read_is_refused() {
        let policies = PathBuf::from("/etc/portcullis/policies");
        let mut config = PolicyFilesConfig {
            allowed_dirs: vec!["/etc/portcullis/secrets".into()],
            tenants: BTreeMap::new(),
        };
        config
            .tenants
            .insert("acme".into(), vec!["/etc/portcullis/secrets/acme".into()]);
        let e = config.validate(&policies).unwrap_err();
        assert!(
            e.contains("policy_files.tenants.acme") && e.contains("every tenant"),
            "{e}"
        );
        config.allowed_dirs.clear();
        config.validate(&policies).unwrap();
        config
            .tenants
            .insert("globex".into(), vec!["/etc/portcullis/secrets".into()]);
        let e = config.validate(&policies).unwrap_err();
        assert!(e.contains("overlaps"), "{e}");
        config.tenants.insert(
            "globex".into(),
            vec!["/etc/portcullis/policies/globex".into()],
        );
        let e = config.validate(&policies).unwrap_err();
        assert!(e.contains("the policy directory"), "{e}");
        config.tenants.insert("globex".into(), vec!["".into()]);
        assert!(
            config
                .validate(&policies)
                .unwrap_err()
                .contains("empty path")
        );
    }

    #[test]
    fn a_named_file_is_changed_when_its_bytes_or_its_link_target_change() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("..v1");
        let v2 = dir.path().join("..v2");
        for (d, text) in [(&v1, "one"), (&v2, "two")] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("jwks.json"), text).unwrap();
        }
        std::os::unix::fs::symlink("..v1", dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/jwks.json", dir.path().join("jwks.json")).unwrap();
        std::fs::write(dir.path().join("key.pem"), "k").unwrap();
        let scope = FileScope::new(dir.path(), &[]);
        scope.read("jwks_file", "jwks.json").unwrap();
        scope.read("nonce_key_file", "key.pem").unwrap();
        let named = scope.named_files();
        assert_eq!(named.len(), 2);
        assert!(named.iter().all(|n| !n.changed()), "nothing changed yet");

        // A Secret's `..data` swap: the name now leads to other bytes.
        let tmp = dir.path().join("..data_tmp");
        std::os::unix::fs::symlink("..v2", &tmp).unwrap();
        std::fs::rename(&tmp, dir.path().join("..data")).unwrap();
        let jwks = named
            .iter()
            .find(|n| n.path.ends_with("jwks.json"))
            .unwrap();
        assert!(jwks.changed());
        // Rewritten in place, and removed.
        let key = named.iter().find(|n| n.path.ends_with("key.pem")).unwrap();
        std::fs::write(dir.path().join("key.pem"), "K").unwrap();
        assert!(key.changed());
        std::fs::remove_file(dir.path().join("key.pem")).unwrap();
        assert!(key.changed());
        // Swapped for a FIFO: a change, seen without waiting for a writer.
        let made = std::process::Command::new("mkfifo")
            .arg(dir.path().join("key.pem"))
            .status()
            .unwrap();
        assert!(made.success());
        assert!(key.changed());
    }

    #[test]
    fn only_single_link_regular_files_within_the_size_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let scope = FileScope::new(dir.path(), &[]);

        // A FIFO is refused at once: nothing waits for a writer.
        let fifo = dir.path().join("jwks.json");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let e = scope.read("jwks_file", "jwks.json").unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");

        // A directory is not a file either.
        std::fs::create_dir(dir.path().join("d")).unwrap();
        assert!(
            scope
                .read("jwks_file", "d")
                .unwrap_err()
                .contains("not a regular file")
        );

        // A second name for one file is refused, whichever name is used.
        std::fs::write(dir.path().join("key.pem"), "k").unwrap();
        assert_eq!(scope.read("tls.ca_file", "key.pem").unwrap(), b"k");
        std::fs::hard_link(dir.path().join("key.pem"), dir.path().join("alias.pem")).unwrap();
        let e = scope.read("tls.ca_file", "alias.pem").unwrap_err();
        assert!(e.contains("hard links"), "{e}");

        // The size bound: at it is read, one byte over is refused.
        std::fs::write(dir.path().join("s"), "12345678").unwrap();
        assert_eq!(
            scope.read_limited("client_secret_file", "s", 8).unwrap(),
            b"12345678"
        );
        let e = scope
            .read_limited("client_secret_file", "s", 7)
            .unwrap_err();
        assert!(e.contains("larger than 7 bytes"), "{e}");
    }
}
