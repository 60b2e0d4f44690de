//! TLS on the gRPC listeners (`tls` in the server configuration).
//!
//! Without it, anyone who reaches the gRPC port can ask for decisions (see
//! docs/security.md, "The gRPC port is a trust boundary"). With `cert_file`
//! and `key_file`, the listeners speak TLS only; with `client_ca_file` as well,
//! a client must present a certificate that chains to that CA, or the
//! handshake fails and no request is read. Give Envoy that client certificate
//! (an `UpstreamTlsContext` on the ext_authz cluster), and nobody else.
//!
//! The files are read once, at start-up; a missing or malformed file stops
//! the server with the file named. The crypto provider is aws-lc-rs, as for
//! every other TLS connection portcullis makes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// A TLS handshake that has not finished after this long is dropped, so idle
/// connections cannot pile up half-open.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `tls` in the server configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcTlsConfig {
    /// PEM certificate chain the listeners present (leaf first).
    pub cert_file: PathBuf,
    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA certificates a client certificate must chain to. Without it any
    /// client that completes the TLS handshake is served (server-only TLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

impl GrpcTlsConfig {
    /// Makes relative paths relative to `base` (the configuration file's directory).
    pub fn resolve(&mut self, base: &Path) {
        for p in [&mut self.cert_file, &mut self.key_file]
            .into_iter()
            .chain(self.client_ca_file.as_mut())
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Reads and checks the files: a certificate chain, a key, and (when set)
    /// at least one CA certificate. Errors name the file and never quote it.
    pub fn load(&self) -> Result<ServerTlsConfig, String> {
        let read = |name: &str, path: &Path| {
            std::fs::read(path).map_err(|e| format!("tls.{name} {}: {e}", path.display()))
        };
        let certs = |name: &str, path: &Path, pem: &[u8]| {
            let list = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| format!("tls.{name} {}: not PEM certificates", path.display()))?;
            if list.is_empty() {
                return Err(format!("tls.{name} {}: no certificate", path.display()));
            }
            Ok(())
        };
        let cert = read("cert_file", &self.cert_file)?;
        certs("cert_file", &self.cert_file, &cert)?;
        let key = read("key_file", &self.key_file)?;
        PrivateKeyDer::from_pem_slice(&key).map_err(|_| {
            format!(
                "tls.key_file {}: not a PEM private key",
                self.key_file.display()
            )
        })?;
        let mut tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca_file) = &self.client_ca_file {
            let ca = read("client_ca_file", ca_file)?;
            certs("client_ca_file", ca_file, &ca)?;
            tls = tls.client_ca_root(Certificate::from_pem(ca));
        }
        Ok(tls)
    }

    /// Checks what can be checked without the files.
    pub fn validate(&self) -> Result<(), String> {
        if self.cert_file.as_os_str().is_empty() || self.key_file.as_os_str().is_empty() {
            return Err("tls.cert_file and tls.key_file must both be set".into());
        }
        Ok(())
    }
}

/// Uses aws-lc-rs for the listeners' TLS (rustls needs a process default).
pub fn install_crypto_provider() {
    // An error means a provider is installed already, which is fine.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["portcullis.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("junk.pem"), "not pem").unwrap();
        let mut c = GrpcTlsConfig {
            cert_file: "cert.pem".into(),
            key_file: "key.pem".into(),
            client_ca_file: Some("cert.pem".into()),
        };
        c.resolve(dir.path());
        assert!(c.load().is_ok());
        for (bad, field) in [
            (
                GrpcTlsConfig {
                    cert_file: dir.path().join("junk.pem"),
                    ..c.clone()
                },
                "tls.cert_file",
            ),
            (
                GrpcTlsConfig {
                    key_file: dir.path().join("cert.pem"),
                    ..c.clone()
                },
                "tls.key_file",
            ),
            (
                GrpcTlsConfig {
                    client_ca_file: Some(dir.path().join("missing.pem")),
                    ..c.clone()
                },
                "tls.client_ca_file",
            ),
        ] {
            let e = bad.load().unwrap_err();
            assert!(e.starts_with(field), "{e}");
        }
    }
}
