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

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

/// `policy_files` in the server configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyFilesConfig {
    /// Directories, besides the policy directory, that files named by policies
    /// may be in (for example a Secret mount). Relative paths are relative to
    /// the configuration file. Keep the server's own keys out of them.
    pub allowed_dirs: Vec<PathBuf>,
}

impl PolicyFilesConfig {
    /// Makes relative directories relative to `base`.
    pub fn resolve(&mut self, base: &Path) {
        for dir in &mut self.allowed_dirs {
            if dir.is_relative() {
                *dir = base.join(&*dir);
            }
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.allowed_dirs.iter().any(|d| d.as_os_str().is_empty()) {
            return Err("policy_files.allowed_dirs must not hold an empty path".into());
        }
        Ok(())
    }
}

/// What one policy file may name: relative names resolve against `base` (the
/// policy file's directory), and every name must resolve into one of `roots`.
#[derive(Debug, Clone)]
pub struct FileScope {
    base: PathBuf,
    roots: Arc<[PathBuf]>,
}

impl FileScope {
    /// Names relative to `base`, allowed in `base` and in `allowed`.
    pub fn new(base: impl Into<PathBuf>, allowed: &[PathBuf]) -> FileScope {
        let base = base.into();
        let roots = std::iter::once(base.clone())
            .chain(allowed.iter().cloned())
            .collect();
        FileScope { base, roots }
    }

    /// The policy file's directory.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The real path of the file a policy names in `field`, or why it may not
    /// be read: it does not exist, or it resolves outside every allowed
    /// directory. Read the returned path (no symlink left in it), not `name`.
    pub fn resolve(&self, field: &str, name: &str) -> Result<PathBuf, String> {
        let named = self.base.join(name);
        let real = std::fs::canonicalize(&named)
            .map_err(|e| format!("cannot read {field} {}: {e}", named.display()))?;
        let inside = self
            .roots
            .iter()
            .filter_map(|root| std::fs::canonicalize(root).ok())
            .any(|root| real.starts_with(root));
        if !inside {
            return Err(format!(
                "{field} {} resolves to {}, outside the policy directory and policy_files.allowed_dirs",
                named.display(),
                real.display()
            ));
        }
        Ok(real)
    }

    /// Reads the file a policy names in `field` (see [`FileScope::resolve`]).
    pub fn read(&self, field: &str, name: &str) -> Result<Vec<u8>, String> {
        let path = self.resolve(field, name)?;
        std::fs::read(&path).map_err(|e| format!("cannot read {field} {}: {e}", path.display()))
    }
}

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
}
