//! TLS on the gRPC listeners (`tls` in the server configuration): the files,
//! the rustls configuration made of them, and its reload when they change.
//!
//! Without it, anyone who reaches the gRPC port can ask for decisions (see
//! docs/security.md, "The gRPC port is a trust boundary"). With `cert_file`
//! and `key_file`, the listeners speak TLS only; with `client_ca_file` as well,
//! a client must present a certificate that chains to that CA, or the
//! handshake fails and no request is read; with `allowed_clients` too, only
//! the client identities listed are answered ([`super::clients`]). Give
//! Envoy that client certificate (an `UpstreamTlsContext` on the ext_authz
//! cluster), and nobody else.
//!
//! The files are read at start-up, where a missing or malformed file stops the
//! server with the file named. After that [`ServerTls::refresh`] looks at
//! their metadata every `reload_interval` (symlinks followed, so a Secret's
//! `..data` swap is a change) and, when one moved, reads all three again: a
//! set that loads whole (and whose key matches the certificate) serves the
//! next handshakes; anything else is logged with the file named and the
//! previous set keeps serving. Connections already open keep their session.
//! The crypto provider is aws-lc-rs, as for every other TLS connection
//! portcullis makes.
//!
//! Never imports: the app, the pipeline or its stages.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use super::clients::AllowedClient;
use crate::observe::metrics::TlsMetrics;

/// A TLS handshake that has not finished after this long is dropped, so idle
/// connections cannot pile up half-open (the connection's header-read timeout
/// binds first when it is shorter).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default for `tls.reload_interval`: how often the files' metadata is looked
/// at. A Kubernetes Secret reaches the volume within about a minute of its
/// update; this adds at most 10 s to that.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

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
    /// The client identities answered (needs `client_ca_file`); empty: every
    /// client whose certificate chains to the CA.
    #[serde(default)]
    pub allowed_clients: Vec<AllowedClient>,
    /// How often the files are looked at for a change.
    #[serde(
        default = "default_reload_interval",
        with = "crate::foundation::duration::serde_text"
    )]
    pub reload_interval: Duration,
}

fn default_reload_interval() -> Duration {
    DEFAULT_RELOAD_INTERVAL
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

    /// The files, in the order they are read.
    fn files(&self) -> impl Iterator<Item = &Path> {
        [self.cert_file.as_path(), self.key_file.as_path()]
            .into_iter()
            .chain(self.client_ca_file.as_deref())
    }

    /// Reads and checks the files: a certificate chain, a key that matches
    /// it, and (when set) at least one CA certificate. Errors name the file
    /// and never quote it.
    pub fn load(&self) -> Result<Arc<rustls::ServerConfig>, String> {
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
            Ok(list)
        };
        let chain = certs(
            "cert_file",
            &self.cert_file,
            &read("cert_file", &self.cert_file)?,
        )?;
        let key =
            PrivateKeyDer::from_pem_slice(&read("key_file", &self.key_file)?).map_err(|_| {
                format!(
                    "tls.key_file {}: not a PEM private key",
                    self.key_file.display()
                )
            })?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?;
        let builder = match &self.client_ca_file {
            Some(ca_file) => {
                let mut roots = rustls::RootCertStore::empty();
                for ca in certs("client_ca_file", ca_file, &read("client_ca_file", ca_file)?)? {
                    roots
                        .add(ca)
                        .map_err(|e| format!("tls.client_ca_file {}: {e}", ca_file.display()))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| format!("tls.client_ca_file {}: {e}", ca_file.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| {
            format!(
                "tls.cert_file {} and tls.key_file {}: {e}",
                self.cert_file.display(),
                self.key_file.display()
            )
        })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// Checks what can be checked without the files.
    pub fn validate(&self) -> Result<(), String> {
        if self.cert_file.as_os_str().is_empty() || self.key_file.as_os_str().is_empty() {
            return Err("tls.cert_file and tls.key_file must both be set".into());
        }
        if !self.allowed_clients.is_empty() && self.client_ca_file.is_none() {
            return Err(
                "tls.allowed_clients needs tls.client_ca_file: without client certificates there is no identity to check".into(),
            );
        }
        for c in &self.allowed_clients {
            c.validate()?;
        }
        if self.reload_interval.is_zero() {
            return Err("tls.reload_interval must be positive".into());
        }
        Ok(())
    }
}

/// The device, inode, size, mtime and ctime of each file, symlinks followed.
type Stamps = Vec<Option<(u64, u64, u64, i64, i64, i64, i64)>>;

fn stamps(config: &GrpcTlsConfig) -> Stamps {
    use std::os::unix::fs::MetadataExt as _;
    config
        .files()
        .map(|p| {
            std::fs::metadata(p).ok().map(|m| {
                (
                    m.dev(),
                    m.ino(),
                    m.size(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                )
            })
        })
        .collect()
}

/// The listeners' TLS as it serves now: every handshake takes the current
/// configuration, and [`ServerTls::refresh`] replaces it when the files change.
#[derive(Debug)]
pub struct ServerTls {
    config: GrpcTlsConfig,
    current: ArcSwap<rustls::ServerConfig>,
    /// The files' metadata at the last load attempt, good or not: a broken set
    /// is tried (and logged) again only once it changes again.
    seen: Mutex<Stamps>,
    metrics: TlsMetrics,
}

impl ServerTls {
    /// Loads the files; an error names the file that is wrong.
    pub fn load(config: &GrpcTlsConfig, metrics: TlsMetrics) -> Result<ServerTls, String> {
        install_crypto_provider();
        let seen = stamps(config);
        let current = config.load()?;
        Ok(ServerTls {
            config: config.clone(),
            current: ArcSwap::new(current),
            seen: Mutex::new(seen),
            metrics,
        })
    }

    /// The configuration a new handshake uses.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current.load_full()
    }

    /// The client identities answered (empty: all that chain to the CA).
    pub fn allowed_clients(&self) -> &[AllowedClient] {
        &self.config.allowed_clients
    }

    /// Reads the files again if their metadata changed since the last
    /// attempt. `Ok(true)`: a new set serves; `Ok(false)`: nothing changed;
    /// `Err`: the new files do not load, and the previous set keeps serving.
    pub fn refresh(&self) -> Result<bool, String> {
        let now = stamps(&self.config);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        match self.config.load() {
            Ok(config) => {
                self.current.store(config);
                self.metrics.reload_ok.inc();
                Ok(true)
            }
            Err(e) => {
                self.metrics.reload_error.inc();
                Err(e)
            }
        }
    }

    /// Calls [`ServerTls::refresh`] every `reload_interval` until `stop`,
    /// logging what each change did.
    pub async fn watch(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(self.config.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {}
            }
            let this = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || this.refresh()).await {
                Ok(Ok(true)) => tracing::info!("gRPC TLS certificate files reloaded"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(
                    error = %e,
                    "gRPC TLS files changed but do not load; the previous certificate keeps serving"
                ),
                Err(e) => tracing::error!(error = %e, "TLS reload task failed"),
            }
        }
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

    fn write_pair(dir: &Path, name: &str) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    }

    fn config(dir: &Path) -> GrpcTlsConfig {
        let mut c = GrpcTlsConfig {
            cert_file: "cert.pem".into(),
            key_file: "key.pem".into(),
            client_ca_file: Some("cert.pem".into()),
            allowed_clients: Vec::new(),
            reload_interval: DEFAULT_RELOAD_INTERVAL,
        };
        c.resolve(dir);
        c
    }

    #[test]
    fn files_are_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path(), "portcullis.test");
        std::fs::write(dir.path().join("junk.pem"), "not pem").unwrap();
        let c = config(dir.path());
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

    #[test]
    fn a_change_reloads_and_a_broken_or_mismatched_set_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path(), "one.test");
        let tls = ServerTls::load(&config(dir.path()), TlsMetrics::default()).unwrap();
        let first = tls.current();
        assert_eq!(tls.refresh(), Ok(false), "nothing changed");

        // A new certificate whose key is still the old one: refused.
        let key = std::fs::read(dir.path().join("key.pem")).unwrap();
        write_pair(dir.path(), "two.test");
        std::fs::write(dir.path().join("key.pem"), &key).unwrap();
        let e = tls.refresh().unwrap_err();
        assert!(e.contains("tls.cert_file"), "{e}");
        assert!(Arc::ptr_eq(&first, &tls.current()));
        // Not tried again until the files change again.
        assert_eq!(tls.refresh(), Ok(false));

        // Junk: refused, the old serves.
        std::fs::write(dir.path().join("cert.pem"), "junk").unwrap();
        assert!(tls.refresh().is_err());
        assert!(Arc::ptr_eq(&first, &tls.current()));

        // A whole new pair: it serves.
        write_pair(dir.path(), "three.test");
        assert_eq!(tls.refresh(), Ok(true));
        assert!(!Arc::ptr_eq(&first, &tls.current()));
    }

    #[test]
    fn allowed_clients_need_a_client_ca() {
        let dir = tempfile::tempdir().unwrap();
        let c = GrpcTlsConfig {
            client_ca_file: None,
            allowed_clients: vec![AllowedClient::Dns("envoy.test".into())],
            ..config(dir.path())
        };
        assert!(c.validate().unwrap_err().contains("client_ca_file"));
    }
}
