//! The state replicas share, on Redis (or anything speaking its protocol):
//! the [`SharedState`] the pipeline is handed at startup.
//!
//! - **Replay**: one `SET key 1 NX PX ttl` per DPoP proof, so check and record
//!   are one atomic step and one round trip; the key is the prefix and a
//!   SHA-256 of tenant, key thumbprint and `jti` (no raw value in Redis).
//! - **Live revocation**: one hash (`<prefix>revoked`, field = JSON
//!   `[tenant, kind, value]`, value = unix seconds it applies until) and a
//!   generation counter, written by `portcullis revoke`, which also PUBLISHes
//!   on `<prefix>revocations`. Each replica subscribes and re-reads the whole
//!   hash on every message, and every `revocation_refresh` anyway, so a lost
//!   message delays a revocation by one refresh at most. A replica whose last
//!   full read is older than twice the refresh cannot vouch for what it holds.
//! - **Failure**: every call has a short timeout; a run of failures opens a
//!   circuit (no call for a while, then one probe), counted in metrics; the
//!   caller answers 503 `shared_state_unavailable`, never falls back.
//!
//! Never imports: the app. No URL, password or key reaches a log line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::Deserialize;

use crate::foundation::circuit::{self, Circuit};
use crate::identity::revocation::RevocationList;
use crate::identity::shared_state::{BoxFuture, SharedState, Unavailable};
use crate::observe::metrics::SharedStateMetrics;

/// Default per-call timeout: a check never waits long on the store.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);
/// Default period of the full re-read of live revocations.
pub const DEFAULT_REVOCATION_REFRESH: Duration = Duration::from_secs(5);
/// Default prefix of every key portcullis writes.
pub const DEFAULT_KEY_PREFIX: &str = "portcullis:";

/// `shared_state` in the server config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedStateConfig {
    pub redis: RedisConfig,
}

/// `shared_state.redis`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db` or `rediss://` for TLS. No password here: use
    /// `url_file` or `password_file`.
    #[serde(default)]
    pub url: Option<String>,
    /// A file holding the URL (a Secret), which may carry the password.
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// A file holding the password (AUTH); wins over one in the URL.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The ACL user, with `password_file`.
    #[serde(default)]
    pub username: Option<String>,
    /// TLS (`rediss://`): the CA certificates the server's chains to, when
    /// not the system's.
    #[serde(default)]
    pub tls: Option<RedisTls>,
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// Longest a call may take before it counts as failed.
    #[serde(
        default = "default_timeout",
        with = "crate::foundation::duration::serde_text"
    )]
    pub timeout: Duration,
    #[serde(default)]
    pub circuit: CircuitConfig,
    /// How often the live revocations are read in full (besides each
    /// published change).
    #[serde(
        default = "default_refresh",
        with = "crate::foundation::duration::serde_text"
    )]
    pub revocation_refresh: Duration,
    #[serde(default)]
    pub revocation_on_unavailable: RevocationOnUnavailable,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisTls {
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitConfig {
    /// Failures in a row that open the circuit.
    pub failures: u32,
    /// How long it stays open before one probe.
    #[serde(with = "crate::foundation::duration::serde_text")]
    pub open_for: Duration,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        CircuitConfig {
            failures: circuit::DEFAULT_FAILURES_TO_OPEN,
            open_for: circuit::DEFAULT_OPEN_FOR,
        }
    }
}

/// What live revocation does when the replica cannot vouch for its copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationOnUnavailable {
    /// 503 `shared_state_unavailable` for callers a list could revoke.
    #[default]
    FailClosed,
    /// Serve on what was last read (file lists still apply). DPoP replay
    /// stays fail-closed whatever this says.
    FailOpenRevocationOnly,
}

fn default_prefix() -> String {
    DEFAULT_KEY_PREFIX.to_string()
}
fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}
fn default_refresh() -> Duration {
    DEFAULT_REVOCATION_REFRESH
}

impl RedisConfig {
    /// Makes relative paths relative to `base` (the config file's directory).
    pub fn resolve(&mut self, base: &Path) {
        let tls = self.tls.as_mut().and_then(|t| t.ca_file.as_mut());
        for p in [self.url_file.as_mut(), self.password_file.as_mut(), tls]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let at = |m: &str| format!("shared_state.redis: {m}");
        if self.url.is_some() == self.url_file.is_some() {
            return Err(at("set exactly one of url and url_file"));
        }
        if let Some(url) = &self.url
            && url.contains('@')
        {
            return Err(at(
                "url must not carry credentials; use url_file or password_file",
            ));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(5) {
            return Err(at("timeout must be between 1ms and 5s"));
        }
        if self.revocation_refresh.is_zero() {
            return Err(at("revocation_refresh must be positive"));
        }
        if self.circuit.failures == 0 || self.circuit.open_for.is_zero() {
            return Err(at("circuit.failures and circuit.open_for must be positive"));
        }
        Ok(())
    }

    /// The client for this configuration: reads the URL and password files
    /// (errors name the file, never its content).
    pub fn client(&self) -> Result<redis::Client, String> {
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .map_err(|e| format!("shared_state.redis: cannot read {}: {e}", p.display()))
        };
        let url = match (&self.url, &self.url_file) {
            (Some(u), _) => u.clone(),
            (None, Some(f)) => read(f)?,
            (None, None) => return Err("shared_state.redis: no url".into()),
        };
        let bad_url = || "shared_state.redis: the URL is not a valid Redis URL".to_string();
        let mut info =
            redis::IntoConnectionInfo::into_connection_info(url.as_str()).map_err(|_| bad_url())?;
        if let Some(f) = &self.password_file {
            let mut settings = info.redis_settings().clone().set_password(read(f)?);
            if let Some(user) = &self.username {
                settings = settings.set_username(user);
            }
            info = info.set_redis_settings(settings);
        }
        match self.tls.as_ref().and_then(|t| t.ca_file.as_ref()) {
            Some(ca) => {
                let pem = std::fs::read(ca).map_err(|e| {
                    format!("shared_state.redis: cannot read {}: {e}", ca.display())
                })?;
                redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
                .map_err(|_| {
                    "shared_state.redis: tls.ca_file holds no usable certificate (or the URL is not rediss://)"
                        .to_string()
                })
            }
            None => redis::Client::open(info).map_err(|_| bad_url()),
        }
    }
}

/// The key of the live revocations' hash, of their generation, and the channel.
pub fn revocation_keys(prefix: &str) -> (String, String, String) {
    (
        format!("{prefix}revoked"),
        format!("{prefix}revocation:generation"),
        format!("{prefix}revocations"),
    )
}

/// The live revocations as last read in full.
#[derive(Debug, Default)]
struct Live {
    lists: HashMap<String, Arc<RevocationList>>,
    /// When the last full read succeeded.
    read_at: Option<Instant>,
}

/// The shared store on Redis.
#[derive(Debug)]
pub struct RedisState {
    conn: redis::aio::ConnectionManager,
    client: redis::Client,
    prefix: String,
    timeout: Duration,
    refresh: Duration,
    fail_open: bool,
    circuit: Circuit,
    metrics: SharedStateMetrics,
    live: ArcSwap<Live>,
    /// The generation counter's value at the last full read.
    generation: AtomicU64,
}

impl RedisState {
    /// Connects lazily: a Redis that is down at start is a circuit to open,
    /// not a server that will not start.
    pub fn new(config: &RedisConfig, metrics: SharedStateMetrics) -> Result<RedisState, String> {
        let client = config.client()?;
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), manager)
            .map_err(|_| "shared_state.redis: cannot make a client for the URL".to_string())?;
        Ok(RedisState {
            conn,
            client,
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            refresh: config.revocation_refresh,
            fail_open: config.revocation_on_unavailable
                == RevocationOnUnavailable::FailOpenRevocationOnly,
            circuit: Circuit::new(config.circuit.failures, config.circuit.open_for),
            metrics,
            live: ArcSwap::from_pointee(Live::default()),
            generation: AtomicU64::new(0),
        })
    }

    /// Whether the circuit is closed (calls are being made).
    pub fn is_up(&self) -> bool {
        !self.circuit.is_open()
    }

    /// The live revocations' generation at the last full read.
    pub fn revocation_generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// One command through the circuit and under the timeout.
    async fn call<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, Unavailable> {
        let mut conn = self.conn.clone();
        self.guarded(self.timeout, cmd.query_async::<T>(&mut conn))
            .await
    }

    /// A call through the circuit and within `limit`, counted.
    async fn guarded<T>(
        &self,
        limit: Duration,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Unavailable> {
        if !self.circuit.allow(Instant::now()) {
            self.metrics.short_circuited.inc();
            return Err(Unavailable("circuit open"));
        }
        let answer = tokio::time::timeout(limit, call).await;
        let why = match answer {
            Ok(Ok(value)) => {
                self.circuit.success();
                self.metrics.up.set(1);
                return Ok(value);
            }
            Err(_) => "timed out",
            Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped() => "unreachable",
            Ok(Err(_)) => "refused the command",
        };
        self.circuit.failure(Instant::now());
        self.metrics.errors.inc();
        self.metrics.up.set(i64::from(!self.circuit.is_open()));
        tracing::warn!(
            shared_state = "redis",
            error = why,
            "shared state call failed"
        );
        Err(Unavailable(why))
    }

    /// Reads every live revocation and the generation (one pipeline of
    /// HGETALL and GET), and replaces what this replica holds.
    pub async fn refresh_revocations(&self) -> Result<(), Unavailable> {
        let (hash, generation, _) = revocation_keys(&self.prefix);
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL").arg(&hash).cmd("GET").arg(&generation);
        let mut conn = self.conn.clone();
        // A whole list may take longer than one SET: at least a second.
        let limit = self.timeout.max(Duration::from_secs(1));
        let read = pipe.query_async::<(HashMap<String, String>, Option<u64>)>(&mut conn);
        let (entries, gen_value) = self.guarded(limit, read).await?;
        let mut lists: HashMap<String, RevocationList> = HashMap::new();
        for (field, until) in entries {
            let Ok((tenant, kind, value)) =
                serde_json::from_str::<(String, String, String)>(&field)
            else {
                continue;
            };
            let Ok(until) = until.parse::<u64>() else {
                continue;
            };
            lists
                .entry(tenant.clone())
                .or_insert_with(|| RevocationList::new(&tenant))
                .insert(&kind, &value, until);
        }
        self.generation
            .store(gen_value.unwrap_or(0), Ordering::Relaxed);
        self.live.store(Arc::new(Live {
            lists: lists.into_iter().map(|(t, l)| (t, Arc::new(l))).collect(),
            read_at: Some(Instant::now()),
        }));
        Ok(())
    }

    /// Keeps the live revocations current until `stop`: a full read every
    /// `revocation_refresh`, and one on every published change.
    pub async fn follow_revocations(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let (changed_tx, mut changed) = tokio::sync::mpsc::channel::<()>(1);
        let subscriber = tokio::spawn(Arc::clone(&self).subscribe(changed_tx));
        let mut tick = tokio::time::interval(self.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tick.tick() => {}
                Some(()) = changed.recv() => {}
            }
            let _ = self.refresh_revocations().await;
        }
        subscriber.abort();
    }

    /// Subscribes to the revocation channel, reconnecting after a loss; each
    /// message (or a new subscription: something may have been missed) asks
    /// for a full read.
    async fn subscribe(self: Arc<Self>, changed: tokio::sync::mpsc::Sender<()>) {
        let (_, _, channel) = revocation_keys(&self.prefix);
        loop {
            let connected = tokio::time::timeout(self.refresh, async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            })
            .await;
            if let Ok(Ok(pubsub)) = connected {
                let _ = changed.try_send(());
                let mut messages = pubsub.into_on_message();
                while tokio_stream::StreamExt::next(&mut messages).await.is_some() {
                    let _ = changed.try_send(());
                }
            }
            // Lost or never made: try again soon, without spinning.
            tokio::time::sleep(self.refresh.min(Duration::from_secs(1))).await;
        }
    }
}

/// Writes one live revocation (what `portcullis revoke` does): the entry
/// (keeping a later expiry already there), the generation counter and the
/// message to every replica, in one MULTI/EXEC; entries already expired are
/// dropped on the way. Returns the new generation.
pub async fn push_revocation(
    config: &RedisConfig,
    tenant: &str,
    kind: &str,
    value: &str,
    until: u64,
    now: u64,
) -> Result<u64, String> {
    let client = config.client()?;
    let unreachable = |_| "shared_state.redis: the store did not answer".to_string();
    let limit = Duration::from_secs(5);
    let mut conn = tokio::time::timeout(limit, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| "shared_state.redis: the store did not answer in time".to_string())?
        .map_err(unreachable)?;
    let (hash, generation, channel) = revocation_keys(&config.key_prefix);
    let field = serde_json::json!([tenant, kind, value]).to_string();
    let entries: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&hash)
        .query_async(&mut conn)
        .await
        .map_err(unreachable)?;
    let mut expired = Vec::new();
    let mut until = until;
    for (f, u) in &entries {
        let u = u.parse::<u64>().unwrap_or(0);
        if *f == field {
            until = until.max(u);
        } else if u <= now {
            expired.push(f.clone());
        }
    }
    let mut pipe = redis::pipe();
    pipe.atomic();
    if !expired.is_empty() {
        pipe.cmd("HDEL").arg(&hash).arg(&expired).ignore();
    }
    pipe.cmd("HSET")
        .arg(&hash)
        .arg(&field)
        .arg(until.to_string())
        .ignore()
        .cmd("INCR")
        .arg(&generation)
        .cmd("PUBLISH")
        .arg(&channel)
        .arg(tenant)
        .ignore();
    let (generation,): (u64,) = pipe.query_async(&mut conn).await.map_err(unreachable)?;
    Ok(generation)
}

impl SharedState for RedisState {
    fn record_once<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Unavailable>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(format!("{}replay:{key}", self.prefix))
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64);
            // `OK` when set, nil when the key was there.
            let set: Option<String> = self.call(&cmd).await?;
            Ok(set.is_some())
        })
    }

    fn live_revocations(&self, tenant: &str) -> Result<Option<Arc<RevocationList>>, Unavailable> {
        let live = self.live.load();
        match live.read_at {
            Some(at) if at.elapsed() <= self.refresh * 2 => Ok(live.lists.get(tenant).cloned()),
            Some(_) => Err(Unavailable("live revocations are stale")),
            None => Err(Unavailable("live revocations not read yet")),
        }
    }

    fn revocation_fails_open(&self) -> bool {
        self.fail_open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> RedisConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn urls_with_credentials_and_missing_urls_are_refused() {
        assert!(config("url: redis://127.0.0.1:1/").validate().is_ok());
        let e = config("url: redis://:secret@127.0.0.1:1/")
            .validate()
            .unwrap_err();
        assert!(
            e.contains("must not carry credentials") && !e.contains("secret"),
            "{e}"
        );
        assert!(config("{}").validate().is_err());
        assert!(
            config("{url: 'redis://h/', url_file: f}")
                .validate()
                .is_err()
        );
        assert!(
            config("{url: 'redis://h/', timeout: 0s}")
                .validate()
                .is_err()
        );
    }

    #[test]
    fn a_bad_url_file_is_named_never_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("url");
        std::fs::write(&f, "not a url with hunter2").unwrap();
        let c = config(&format!("url_file: {}", f.display()));
        let e = c.client().unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
