//! The server's own configuration (`portcullis serve --config FILE`).
//!
//! Validated once at start-up; a bad file exits with code 64 and says what is
//! wrong. Paths inside the file are relative to the file's directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::request::tenancy::TenantResolver;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// gRPC (ext_authz and health) TCP address; `null` to serve only on the socket.
    #[serde(default = "default_listen")]
    pub listen: Option<SocketAddr>,
    /// gRPC on a unix socket as well (for a sidecar next to Envoy).
    #[serde(default)]
    pub unix_socket: Option<PathBuf>,
    /// Admin HTTP: `/healthz`, `/readyz`, `/policies`.
    #[serde(default = "default_admin")]
    pub admin_listen: SocketAddr,
    /// Directory of policy files, one per tenant.
    pub policies: PathBuf,
    #[serde(default)]
    pub tenancy: TenantResolver,
    #[serde(default)]
    pub reload: ReloadConfig,
    /// How long in-flight checks get to finish after SIGTERM/SIGINT.
    #[serde(
        default = "default_grace",
        with = "crate::foundation::duration::serde_text"
    )]
    pub shutdown_grace: Duration,
    #[serde(default)]
    pub log_format: LogFormat,
    /// Signing keys for the narrowed tokens portcullis mints for upstreams.
    #[serde(default)]
    pub token_exchange: Option<crate::decision::mint::ExchangeConfig>,
    /// Trace export (OTLP/gRPC); see [`crate::observe::telemetry`].
    #[serde(default)]
    pub tracing: crate::observe::telemetry::TracingConfig,
    /// `/metrics` on the admin port; see [`crate::observe::metrics`].
    #[serde(default)]
    pub metrics: crate::observe::metrics::MetricsConfig,
    /// One JSON line per decision; see [`crate::observe::audit`].
    #[serde(default)]
    pub decision_log: crate::observe::audit::DecisionLogConfig,
    #[serde(default)]
    pub limits: Limits,
    /// Connections per listener and their timeouts; see
    /// [`crate::transport::connections`].
    #[serde(default)]
    pub connections: crate::transport::connections::ConnectionsConfig,
    /// TLS on the gRPC listeners, optionally requiring a client certificate;
    /// see [`crate::transport::tls`].
    #[serde(default)]
    pub tls: Option<crate::transport::tls::GrpcTlsConfig>,
    /// Where files named by policies may be; see [`crate::foundation::policy_files`].
    #[serde(default)]
    pub policy_files: crate::foundation::policy_files::PolicyFilesConfig,
    /// What a client whose credential is refused is told, for tenants whose
    /// policy does not say; see [`crate::foundation::client_errors`].
    #[serde(default)]
    pub client_errors: crate::foundation::client_errors::ClientErrors,
    /// The AuthZEN Authorization API on its own listener; off unless set.
    /// See [`crate::transport::authzen`].
    #[serde(default)]
    pub authzen: Option<crate::transport::authzen::AuthzenConfig>,
    /// The HTTP listener (Envoy's `http_service`, forward auth); off unless
    /// set. See [`crate::request::http_check`].
    #[serde(default)]
    pub http: Option<crate::request::http_check::HttpModeConfig>,
    /// The state replicas share (DPoP replay, live revocation); see
    /// [`crate::transport::shared_state`]. Absent: each replica alone.
    #[serde(default)]
    pub shared_state: Option<crate::transport::shared_state::SharedStateConfig>,
    /// `sha256:<hex>` of the file's bytes, for drift (`/policies`); empty
    /// when the config was not read from a file.
    #[serde(skip)]
    pub digest: String,
}

pub use crate::foundation::limits::{DEFAULT_MAX_CONCURRENT_CHECKS, Limits};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// Quiet time after a change before reloading, so one ConfigMap swap (or a
    /// burst of writes) loads as one generation.
    #[serde(with = "crate::foundation::duration::serde_text")]
    pub debounce: Duration,
    /// Full rescan even without change events (a watch can be lost when the
    /// directory itself is replaced).
    #[serde(with = "crate::foundation::duration::serde_text")]
    pub rescan_interval: Duration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            debounce: Duration::from_millis(200),
            rescan_interval: Duration::from_secs(30),
        }
    }
}

pub use crate::observe::telemetry::LogFormat;

fn default_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9001)))
}

fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9002))
}

fn default_grace() -> Duration {
    Duration::from_secs(10)
}

impl Config {
    /// Defaults for everything but the policy directory.
    pub fn with_policies(policies: impl Into<PathBuf>) -> Config {
        Config {
            listen: default_listen(),
            unix_socket: None,
            admin_listen: default_admin(),
            policies: policies.into(),
            tenancy: TenantResolver::default(),
            reload: ReloadConfig::default(),
            shutdown_grace: default_grace(),
            log_format: LogFormat::default(),
            token_exchange: None,
            tracing: Default::default(),
            metrics: Default::default(),
            decision_log: Default::default(),
            limits: Limits::default(),
            connections: Default::default(),
            tls: None,
            policy_files: Default::default(),
            client_errors: Default::default(),
            authzen: None,
            http: None,
            shared_state: None,
            digest: String::new(),
        }
    }

    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let mut config: Config = crate::foundation::yaml::from_str(&text).map_err(|e| {
            let message = crate::tenants::did_you_mean::hint(&e.message);
            match e.line {
                Some(l) => format!("{}:{l}: {message}", path.display()),
                None => format!("{}: {message}", path.display()),
            }
        })?;
        config.digest = {
            use sha2::Digest as _;
            format!(
                "sha256:{}",
                hex::encode(sha2::Sha256::digest(text.as_bytes()))
            )
        };
        let base = path.parent().unwrap_or(Path::new("."));
        if config.policies.is_relative() {
            config.policies = base.join(&config.policies);
        }
        if let Some(sock) = &config.unix_socket
            && sock.is_relative()
        {
            config.unix_socket = Some(base.join(sock));
        }
        if let Some(exchange) = &mut config.token_exchange {
            for key in &mut exchange.keys {
                key.file = base.join(&key.file);
            }
        }
        config.decision_log.resolve(base);
        config.policy_files.resolve(base);
        if let Some(tls) = &mut config.tls {
            tls.resolve(base);
        }
        if let Some(shared) = &mut config.shared_state {
            shared.redis.resolve(base);
        }
        config
            .validate()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.listen.is_none() && self.unix_socket.is_none() {
            return Err("set listen, unix_socket, or both".into());
        }
        if self.reload.debounce.is_zero() || self.reload.rescan_interval.is_zero() {
            return Err("reload.debounce and reload.rescan_interval must be positive".into());
        }
        self.limits.validate()?;
        self.connections.validate()?;
        self.decision_log.validate()?;
        self.policy_files.validate(&self.policies)?;
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        self.tracing.validate()?;
        if let Some(authzen) = &self.authzen {
            authzen.validate()?;
        }
        if let Some(http) = &self.http {
            http.validate()?;
            let from_context = self
                .tenancy
                .sources
                .contains(&crate::request::tenancy::TenantSource::ContextExtension);
            if http.tenant_header.is_some() && !from_context {
                return Err(
                    "http.tenant_header is read as a context extension: tenancy.sources must include context_extension".into(),
                );
            }
        }
        if let Some(shared) = &self.shared_state {
            shared.redis.validate()?;
        }
        self.tenancy.validate()
    }

    /// An empty store for the policy directory, with `policy_files` applied.
    pub fn store(&self) -> crate::tenants::store::PolicyStore {
        crate::tenants::store::PolicyStore::new(&self.policies)
            .with_policy_files(self.policy_files.clone())
            .with_limits(self.limits.clone())
    }

    /// The token minter, when `token_exchange` is configured.
    pub fn minter(&self) -> Result<Option<std::sync::Arc<crate::decision::mint::Minter>>, String> {
        self.token_exchange
            .as_ref()
            .map(|c| crate::decision::mint::Minter::load(c, Path::new("")).map(std::sync::Arc::new))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_with_defaults_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portcullis.yaml");
        std::fs::write(&path, "policies: policies\nreload: { debounce: 50ms }\n").unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.policies, dir.path().join("policies"));
        assert_eq!(c.reload.debounce, Duration::from_millis(50));
        assert_eq!(c.reload.rescan_interval, Duration::from_secs(30));
        assert_eq!(c.listen, default_listen());
        assert_eq!(
            c.limits.max_concurrent_checks,
            DEFAULT_MAX_CONCURRENT_CHECKS
        );
    }

    #[test]
    fn tls_paths_are_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portcullis.yaml");
        std::fs::write(
            &path,
            "policies: p\ntls: { cert_file: c.pem, key_file: /k.pem, client_ca_file: ca.pem }\n",
        )
        .unwrap();
        let tls = Config::load(&path).unwrap().tls.unwrap();
        assert_eq!(tls.cert_file, dir.path().join("c.pem"));
        assert_eq!(tls.key_file, PathBuf::from("/k.pem"));
        assert_eq!(tls.client_ca_file, Some(dir.path().join("ca.pem")));
        assert!(tls.allowed_clients.is_empty());
        assert_eq!(
            tls.reload_interval,
            crate::transport::tls::DEFAULT_RELOAD_INTERVAL
        );
        std::fs::write(&path, "policies: p\ntls: { cert_file: c.pem }\n").unwrap();
        assert!(Config::load(&path).unwrap_err().contains("key_file"));

        // The allow-list and the reload interval, and their checks at load.
        std::fs::write(
            &path,
            "policies: p\ntls: { cert_file: c.pem, key_file: k.pem, client_ca_file: ca.pem, reload_interval: 2s, allowed_clients: [{spiffe: 'spiffe://cluster.local/ns/x/sa/envoy'}, {dns: envoy.x.svc}] }\n",
        )
        .unwrap();
        let tls = Config::load(&path).unwrap().tls.unwrap();
        assert_eq!(tls.allowed_clients.len(), 2);
        assert_eq!(tls.reload_interval, Duration::from_secs(2));
        for bad in [
            "tls: { cert_file: c.pem, key_file: k.pem, allowed_clients: [{dns: envoy}] }",
            "tls: { cert_file: c.pem, key_file: k.pem, client_ca_file: ca.pem, allowed_clients: [{spiffe: 'spiffe://x'}] }",
            "tls: { cert_file: c.pem, key_file: k.pem, reload_interval: 0s }",
        ] {
            std::fs::write(&path, format!("policies: p\n{bad}\n")).unwrap();
            assert!(Config::load(&path).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_config_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "policies: p\nlisten: 127.0.0.1:1\nbogus: 1\n").unwrap();
        let e = Config::load(&path).unwrap_err();
        assert!(e.contains("c.yaml:3"), "{e}");
        std::fs::write(&path, "policies: p\nlisten: null\n").unwrap();
        assert!(Config::load(&path).unwrap_err().contains("unix_socket"));
        std::fs::write(&path, "policies: p\ntenancy: { sources: [header] }\n").unwrap();
        assert!(Config::load(&path).unwrap_err().contains("tenancy.header"));
        std::fs::write(&path, "policies: p\nlimits: { max_concurrent_checks: 0 }\n").unwrap();
        assert!(
            Config::load(&path)
                .unwrap_err()
                .contains("limits.max_concurrent_checks")
        );
        std::fs::write(
            &path,
            "policies: p\nhttp: { listen: 127.0.0.1:0, tenant_header: x-t }\ntenancy: { sources: [host] }\n",
        )
        .unwrap();
        assert!(
            Config::load(&path)
                .unwrap_err()
                .contains("context_extension")
        );
        std::fs::write(
            &path,
            "policies: p\nhttp: { listen: 127.0.0.1:0, trusted_proxies: [10.0.0.0/33] }\n",
        )
        .unwrap();
        assert!(Config::load(&path).is_err());
        std::fs::write(&path, "policies: p\nhttp: { listen: 127.0.0.1:0, tenant_header: x-t, trusted_proxies: [10.0.0.0/8], forward_auth: { path: /fa } }\n").unwrap();
        let http = Config::load(&path).unwrap().http.unwrap();
        assert_eq!(http.forward_auth.path, "/fa");
        assert_eq!(
            http.forward_auth.uri_headers,
            ["x-original-uri", "x-forwarded-uri"]
        );
        std::fs::write(&path, "policies: p\nconnections: { idle_timeout: 0s }\n").unwrap();
        assert!(
            Config::load(&path)
                .unwrap_err()
                .contains("connections.idle_timeout must be positive")
        );
        std::fs::write(
            &path,
            "policies: p\nconnections: { max_grpc: 10, idle_timeout: 2h }\n",
        )
        .unwrap();
        let c = Config::load(&path).unwrap().connections;
        assert_eq!(
            (c.max_grpc, c.idle_timeout),
            (10, Duration::from_secs(7200))
        );
        assert_eq!(
            c.max_admin,
            crate::transport::connections::DEFAULT_MAX_ADMIN_CONNECTIONS
        );
    }

    #[test]
    fn a_deeply_nested_config_is_refused_before_parsing_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        let text = format!(
            "policies: p
listen: {}",
            "[".repeat(200 * 1024)
        );
        std::fs::write(&path, text).unwrap();
        let e = Config::load(&path).unwrap_err();
        assert!(e.contains("c.yaml:2: YAML nests deeper than 64"), "{e}");
    }
}
