//! Prometheus metrics, served on the admin port at `/metrics` (OpenMetrics text).
//!
//! Labels stay low-cardinality: never a subject, a path or a token; the tenant
//! label is configurable ([`TenantLabels`]) for installs with thousands of
//! tenants, and a rule label appears only on dry-run rules, which are few at a
//! time. Recording is a few atomic adds; nothing here blocks a check.
//!
//! Key fetches and token-cache lookups happen deep in [`crate::identity`], which
//! has no handle to a server and never imports this floor: it counts them in
//! its own process-wide families ([`crate::identity::counters`]), which every
//! server's registry includes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Deserialize;

use crate::decision::Decision;
use crate::identity::counters::{KEY_FETCHES, TOKEN_CACHE};
use crate::tenants::store::{PolicyStore, StoreStatus};

/// The label value every tenant not given its own is folded into.
pub const OTHER_TENANT: &str = "other";

/// Check latency buckets, in seconds: 50µs to 2.5s (a check that waits for an
/// issuer's keys can take up to the key wait).
const LATENCY_BUCKETS: [f64; 15] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5,
];

/// Which tenants get a label value of their own; the rest count as `other`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TenantLabels {
    /// Every tenant (the default).
    #[default]
    All,
    /// No tenant: every series says `other`.
    None,
    /// These tenants; every other one is `other`.
    Listed(HashSet<String>),
}

impl<'de> Deserialize<'de> for TenantLabels {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            List(Vec<String>),
        }
        match Raw::deserialize(d)? {
            Raw::Word(w) if w == "all" => Ok(TenantLabels::All),
            Raw::Word(w) if w == "none" => Ok(TenantLabels::None),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "metrics.tenants: {w:?} must be all, none, or a list of tenants"
            ))),
            Raw::List(list) => Ok(TenantLabels::Listed(list.into_iter().collect())),
        }
    }
}

impl TenantLabels {
    /// The label value for `tenant` (empty when the check had no tenant).
    pub fn label(&self, tenant: Option<&str>) -> String {
        match tenant {
            None => String::new(),
            Some(t) if self.keeps(t) => t.to_string(),
            Some(_) => OTHER_TENANT.to_string(),
        }
    }

    /// [`TenantLabels::label`], sharing the decision's own name where the
    /// tenant keeps it; `folded` and `none` are the values for the rest.
    fn shared(&self, tenant: Option<&Arc<str>>, folded: &Arc<str>, none: &Arc<str>) -> SharedLabel {
        SharedLabel(Arc::clone(match tenant {
            None => none,
            Some(t) if self.keeps(t) => t,
            Some(_) => folded,
        }))
    }

    fn keeps(&self, tenant: &str) -> bool {
        match self {
            TenantLabels::All => true,
            TenantLabels::None => false,
            TenantLabels::Listed(set) => set.contains(tenant),
        }
    }
}

/// The `metrics` section of the server configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `all` (default), `none`, or a list of tenants that keep their own label.
    #[serde(default)]
    pub tenants: TenantLabels,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    tenant: SharedLabel,
    decision: &'static str,
    reason: &'static str,
    mode: &'static str,
    /// The listener that asked: `grpc`, `http` (Envoy's `http_service`),
    /// `forward_auth`, `authzen`.
    transport: &'static str,
}

/// A label value shared with the decision it counts (its tenant's name), so
/// counting a check copies no string.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct SharedLabel(Arc<str>);

impl EncodeLabelValue for SharedLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DryRunRuleLabels {
    tenant: String,
    rule: String,
    would: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    tenant: String,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClosedLabels {
    listener: &'static str,
    timeout: &'static str,
}

/// One listener's connection series, for [`crate::transport::connections`].
#[derive(Debug, Clone, Default)]
pub struct ConnectionMetrics {
    /// Connections open now.
    pub open: Gauge,
    /// Connections closed at accept because the listener was full.
    pub refused: Counter,
    /// Connections closed for no request within the header-read timeout.
    pub header_read_closed: Counter,
    /// Connections closed after the idle timeout.
    pub idle_closed: Counter,
}

/// The gRPC listeners' TLS series, for [`crate::transport::tls`] and
/// [`crate::transport::clients`]. No client identity is ever a label.
#[derive(Debug, Clone, Default)]
pub struct TlsMetrics {
    /// Calls refused because the client is not in `tls.allowed_clients`.
    pub clients_refused: Counter,
    /// Certificate files reloaded after a change.
    pub reload_ok: Counter,
    /// Changed certificate files that did not load (the old ones serve).
    pub reload_error: Counter,
}

/// The shared store's series (`shared_state` in the server config), for
/// [`crate::transport::shared_state`]. Label-free: no key, tenant or URL.
#[derive(Debug, Clone, Default)]
pub struct SharedStateMetrics {
    /// 1 while the shared store answers (its circuit closed), else 0.
    pub up: Gauge,
    /// Calls to the shared store that failed or timed out.
    pub errors: Counter,
    /// Calls not made because the circuit was open.
    pub short_circuited: Counter,
    /// Shared introspection cache lookups that found an entry.
    pub cache_hits: Counter,
    /// Shared introspection cache lookups that found none (or could not ask).
    pub cache_misses: Counter,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyInfoLabels {
    tenant: String,
    digest: String,
}

/// One server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    tenants: TenantLabels,
    /// The label values of a folded tenant and of a check without one.
    folded_tenant: Arc<str>,
    no_tenant: Arc<str>,
    decisions: Family<DecisionLabels, Counter>,
    dry_run_rules: Family<DryRunRuleLabels, Counter>,
    latency: Histogram,
    reloads: Family<ReloadLabels, Counter>,
    policy_info: Family<PolicyInfoLabels, Gauge>,
    dry_run_tenants: Gauge,
    log_dropped: Counter,
    connections_open: Family<ListenerLabels, Gauge>,
    connections_refused: Family<ListenerLabels, Counter>,
    connections_closed: Family<ClosedLabels, Counter>,
    tls: TlsMetrics,
    shared_state: SharedStateMetrics,
    served_digest: Gauge,
    /// What the last reload served, to count only what changed.
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    digests: HashMap<String, String>,
    errors: HashSet<String>,
    /// The digest labelling the folded tenants' `policy_info`, if any.
    folded: Option<String>,
}

impl Metrics {
    pub fn new(config: &MetricsConfig) -> Metrics {
        let mut registry = Registry::with_prefix("portcullis");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Checks decided, by tenant, decision, reason, mode (dry_run: what enforcement would have answered) and transport (grpc, http, forward_auth, authzen)",
            decisions.clone(),
        );
        let dry_run_rules = Family::<DryRunRuleLabels, Counter>::default();
        registry.register(
            "dry_run_rule_matches",
            "Dry-run rules that held (or failed), by what they would have done; they take no part in the decision",
            dry_run_rules.clone(),
        );
        let latency = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "check_duration_seconds",
            "Time to decide one Check, from the request to the answer",
            latency.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy file loads by tenant and result (ok, error, removed)",
            reloads.clone(),
        );
        let policy_info = Family::<PolicyInfoLabels, Gauge>::default();
        registry.register(
            "policy_info",
            "The digest of each tenant's served rule set (1); folded tenants share one digest over all of them",
            policy_info.clone(),
        );
        let dry_run_tenants = Gauge::default();
        registry.register(
            "dry_run_tenants",
            "Tenants in dry-run mode: their denies are allowed",
            dry_run_tenants.clone(),
        );
        let log_dropped = Counter::default();
        registry.register(
            "decision_log_dropped",
            "Decision log lines dropped because the writer fell behind",
            log_dropped.clone(),
        );
        let connections_open = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "connections_open",
            "Connections open now, by listener (grpc, unix, admin)",
            connections_open.clone(),
        );
        let connections_refused = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed at accept because the listener had connections.max_* open, by listener",
            connections_refused.clone(),
        );
        let connections_closed = Family::<ClosedLabels, Counter>::default();
        registry.register(
            "connections_timed_out",
            "Connections closed by a timeout, by listener and timeout (header_read, idle)",
            connections_closed.clone(),
        );
        let clients_refused = Counter::default();
        registry.register(
            "grpc_clients_refused",
            "gRPC calls answered PERMISSION_DENIED because the TLS client is not in tls.allowed_clients",
            clients_refused.clone(),
        );
        let tls_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "tls_reloads",
            "Reloads of the gRPC listeners' certificate files after a change, by result (ok, error: the old ones keep serving)",
            tls_reloads.clone(),
        );
        // One statement each: a family's guard lives to the end of its statement.
        let reload_ok = tls_reloads
            .get_or_create(&ResultLabels { result: "ok" })
            .clone();
        let reload_error = tls_reloads
            .get_or_create(&ResultLabels { result: "error" })
            .clone();
        let tls = TlsMetrics {
            clients_refused,
            reload_ok,
            reload_error,
        };
        registry.register(
            "key_fetches",
            "Fetches of issuers' keys by issuer and result (process-wide)",
            KEY_FETCHES.clone(),
        );
        registry.register(
            "token_cache_lookups",
            "Verified-token cache lookups by result, hit or miss (process-wide)",
            TOKEN_CACHE.clone(),
        );
        let shared_state = SharedStateMetrics::default();
        registry.register(
            "shared_state_up",
            "1 while the shared store (Redis) answers and its circuit is closed; 0 otherwise or without one",
            shared_state.up.clone(),
        );
        registry.register(
            "shared_state_errors",
            "Calls to the shared store that failed or timed out",
            shared_state.errors.clone(),
        );
        registry.register(
            "shared_state_short_circuited",
            "Calls to the shared store not made because its circuit was open",
            shared_state.short_circuited.clone(),
        );
        registry.register(
            "shared_introspection_cache_hits",
            "Shared introspection cache lookups that found an entry (shared_state.introspection_cache)",
            shared_state.cache_hits.clone(),
        );
        registry.register(
            "shared_introspection_cache_misses",
            "Shared introspection cache lookups that found none or could not ask the store (the identity provider is asked)",
            shared_state.cache_misses.clone(),
        );
        let served_digest = Gauge::default();
        registry.register(
            "served_digest",
            "The first 52 bits of the digest of everything this replica serves (rules, revocation generation, config; see /policies): replicas that differ show different values",
            served_digest.clone(),
        );
        Metrics {
            registry,
            shared_state,
            served_digest,
            tenants: config.tenants.clone(),
            folded_tenant: Arc::from(OTHER_TENANT),
            no_tenant: Arc::from(""),
            decisions,
            dry_run_rules,
            latency,
            reloads,
            policy_info,
            dry_run_tenants,
            log_dropped,
            connections_open,
            connections_refused,
            connections_closed,
            tls,
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Counts one decision, asked over `transport`, and its latency.
    pub fn observe_decision(
        &self,
        decision: &Decision,
        latency: Duration,
        transport: &'static str,
    ) {
        let tenant = self.tenants.shared(
            decision.tenant.as_ref(),
            &self.folded_tenant,
            &self.no_tenant,
        );
        let outcome = crate::decision::audit::Outcome::of(decision);
        self.decisions
            .get_or_create(&DecisionLabels {
                tenant: tenant.clone(),
                decision: outcome.decision,
                reason: outcome.reason.code(),
                mode: decision.audit.mode.as_str(),
                transport,
            })
            .inc();
        for hit in &decision.audit.dry_run_rules {
            let rule = if &*tenant.0 == OTHER_TENANT {
                OTHER_TENANT.to_string()
            } else {
                hit.rule.to_string()
            };
            self.dry_run_rules
                .get_or_create(&DryRunRuleLabels {
                    tenant: tenant.0.to_string(),
                    rule,
                    would: hit.would,
                })
                .inc();
        }
        self.latency.observe(latency.as_secs_f64());
    }

    pub fn log_dropped(&self) {
        self.log_dropped.inc();
    }

    /// Sets the served-digest gauge (see [`crate::observe::drift`]).
    pub fn set_served_digest(&self, digest: &str) {
        self.served_digest
            .set(crate::observe::drift::gauge_value(digest));
    }

    /// The shared store's series.
    pub fn shared_state(&self) -> SharedStateMetrics {
        self.shared_state.clone()
    }

    /// The gRPC listeners' TLS series.
    pub fn tls(&self) -> TlsMetrics {
        self.tls.clone()
    }

    /// The connection series of one listener (`grpc`, `unix` or `admin`).
    pub fn connections(&self, listener: &'static str) -> ConnectionMetrics {
        let labels = ListenerLabels { listener };
        let closed = |timeout| {
            self.connections_closed
                .get_or_create(&ClosedLabels { listener, timeout })
                .clone()
        };
        ConnectionMetrics {
            open: self.connections_open.get_or_create(&labels).clone(),
            refused: self.connections_refused.get_or_create(&labels).clone(),
            header_read_closed: closed("header_read"),
            idle_closed: closed("idle"),
        }
    }

    /// Updates reload counters, `policy_info` and the dry-run gauge after a
    /// reload. A file error is counted once until it changes or goes away (a
    /// rescan finds a broken file broken again).
    pub fn observe_reload(&self, store: &PolicyStore, status: &StoreStatus) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let count = |tenant: &str, result: &'static str| {
            self.reloads
                .get_or_create(&ReloadLabels {
                    tenant: self.tenants.label(Some(tenant)),
                    result,
                })
                .inc();
        };
        // Only what changed is touched: a reload of one tenant among
        // thousands must not rebuild a label per tenant.
        let mut folded_moved = false;
        for t in &status.tenants {
            let old = match seen.digests.get_mut(&t.tenant) {
                Some(d) if *d == t.digest => continue,
                Some(d) => Some(std::mem::replace(d, t.digest.clone())),
                None => {
                    seen.digests.insert(t.tenant.clone(), t.digest.clone());
                    None
                }
            };
            count(&t.tenant, "ok");
            folded_moved |= self.move_info(&t.tenant, old.as_deref(), Some(&t.digest));
        }
        // Every served tenant is now in `seen`: more there means removals.
        if seen.digests.len() > status.tenants.len() {
            let now: HashSet<&str> = status.tenants.iter().map(|t| t.tenant.as_str()).collect();
            let gone: Vec<String> = seen
                .digests
                .keys()
                .filter(|t| !now.contains(t.as_str()))
                .cloned()
                .collect();
            for tenant in gone {
                count(&tenant, "removed");
                let old = seen.digests.remove(&tenant);
                folded_moved |= self.move_info(&tenant, old.as_deref(), None);
            }
        }
        let mut errors = HashSet::new();
        for e in &status.errors {
            let key = e.to_string();
            if !seen.errors.contains(&key) {
                // The tenant the file served, else the file's name.
                let tenant = status
                    .tenants
                    .iter()
                    .find(|t| t.file == e.file)
                    .map(|t| t.tenant.clone())
                    .or_else(|| e.file.file_stem().map(|s| s.to_string_lossy().into_owned()))
                    .unwrap_or_default();
                count(&tenant, "error");
            }
            errors.insert(key);
        }
        seen.errors = errors;

        if folded_moved {
            if let Some(digest) = seen.folded.take() {
                self.policy_info.remove(&PolicyInfoLabels {
                    tenant: OTHER_TENANT.to_string(),
                    digest,
                });
            }
            let folded: BTreeMap<&str, &str> = status
                .tenants
                .iter()
                .filter(|t| !self.tenants.keeps(&t.tenant))
                .map(|t| (t.tenant.as_str(), t.digest.as_str()))
                .collect();
            if !folded.is_empty() {
                let joined: String = folded.iter().map(|(t, d)| format!("{t}={d}\n")).collect();
                let digest = crate::tenants::digest_of(joined.as_bytes());
                self.policy_info
                    .get_or_create(&PolicyInfoLabels {
                        tenant: OTHER_TENANT.to_string(),
                        digest: digest.clone(),
                    })
                    .set(1);
                seen.folded = Some(digest);
            }
        }
        self.dry_run_tenants
            .set(dry_run_tenants(store, status).len() as i64);
    }

    /// Moves `tenant`'s `policy_info` from its `old` digest to its `new` one.
    /// True when the tenant is folded into `other` (whose digest covers all
    /// folded tenants) instead.
    fn move_info(&self, tenant: &str, old: Option<&str>, new: Option<&str>) -> bool {
        if !self.tenants.keeps(tenant) {
            return true;
        }
        let labels = |digest: &str| PolicyInfoLabels {
            tenant: tenant.to_string(),
            digest: digest.to_string(),
        };
        if let Some(old) = old {
            self.policy_info.remove(&labels(old));
        }
        if let Some(new) = new {
            self.policy_info.get_or_create(&labels(new)).set(1);
        }
        false
    }

    /// The registry in OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Tenants whose rule set is in dry-run mode, sorted.
pub fn dry_run_tenants(store: &PolicyStore, status: &StoreStatus) -> BTreeSet<String> {
    status
        .tenants
        .iter()
        .filter(|t| {
            store
                .tenant(&t.tenant)
                .is_some_and(|c| c.mode == crate::policy::Mode::DryRun)
        })
        .map(|t| t.tenant.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_labels_fold_into_other() {
        let listed: TenantLabels = serde_yaml::from_str("[acme]").unwrap();
        assert_eq!(listed.label(Some("acme")), "acme");
        assert_eq!(listed.label(Some("globex")), OTHER_TENANT);
        assert_eq!(listed.label(None), "");
        let none: TenantLabels = serde_yaml::from_str("none").unwrap();
        assert_eq!(none.label(Some("acme")), OTHER_TENANT);
        let all: TenantLabels = serde_yaml::from_str("all").unwrap();
        assert_eq!(all.label(Some("globex")), "globex");
        assert!(serde_yaml::from_str::<TenantLabels>("some").is_err());
    }

    #[test]
    fn a_reload_moves_policy_info_of_what_changed_and_drops_what_went() {
        let dir = tempfile::tempdir().unwrap();
        let write = |t: &str, rule: &str| {
            std::fs::write(
                dir.path().join(format!("{t}.yaml")),
                format!("apiVersion: portcullis/v1\ntenant: {t}\nrules:\n  - {{ id: {rule}, path: /x, effect: allow, public: true }}\n"),
            )
            .unwrap();
        };
        for t in ["a", "b", "c"] {
            write(t, "r1");
        }
        let store = PolicyStore::new(dir.path());
        let kept = Metrics::new(&MetricsConfig::default());
        let folded = Metrics::new(&serde_yaml::from_str("tenants: none").unwrap());
        let observe = |status: &StoreStatus| {
            kept.observe_reload(&store, status);
            folded.observe_reload(&store, status);
        };
        let info = |m: &Metrics| -> Vec<String> {
            let mut lines: Vec<String> = m
                .encode()
                .lines()
                .filter(|l| l.starts_with("portcullis_policy_info{"))
                .map(String::from)
                .collect();
            lines.sort();
            lines
        };
        let digest = |t: &str| store.tenant(t).unwrap().digest.to_string();
        observe(&store.reload());
        let (a1, other1) = (digest("a"), info(&folded));
        assert_eq!(info(&kept).len(), 3);
        assert_eq!(other1.len(), 1, "{other1:?}");

        write("a", "r2");
        std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
        observe(&store.reload());
        let now = info(&kept);
        assert_eq!(now.len(), 2, "{now:?}");
        assert!(now.iter().any(|l| l.contains(&digest("a"))), "{now:?}");
        assert!(
            !now.iter()
                .any(|l| l.contains(&a1) || l.contains("tenant=\"b\"")),
            "{now:?}"
        );
        let other2 = info(&folded);
        assert_eq!(other2.len(), 1, "{other2:?}");
        assert_ne!(other1, other2, "the folded digest follows the change");
        let text = kept.encode();
        for (labels, want) in [
            ("tenant=\"a\",result=\"ok\"", "2"),
            ("tenant=\"b\",result=\"removed\"", "1"),
            ("tenant=\"c\",result=\"ok\"", "1"),
        ] {
            let line = text
                .lines()
                .find(|l| l.starts_with("portcullis_policy_reloads_total{") && l.contains(labels))
                .unwrap_or_else(|| panic!("{labels}: {text}"));
            assert!(line.ends_with(&format!(" {want}")), "{line}");
        }
        // Nothing changed: nothing moves.
        observe(&store.reload());
        assert_eq!(info(&kept), now);
        assert_eq!(info(&folded), other2);
    }

    #[test]
    fn jwks_query_never_reaches_a_label() {
        let source = crate::identity::keys::RemoteSource::Jwks(
            "https://idp.example/jwks?api_key=s3cret".into(),
        );
        crate::identity::counters::key_fetch(crate::identity::keys::issuer_label(&source), true);
        let m = Metrics::new(&MetricsConfig::default());
        let text = m.encode();
        assert!(
            text.contains("issuer=\"https://idp.example/jwks\""),
            "{text}"
        );
        assert!(!text.contains("s3cret"), "{text}");
    }
}
