//! Drift between replicas, made visible: one digest of everything a replica
//! serves (every tenant's rule digest, the live revocations' generation, the
//! server config's digest), shown on `/policies` and as a label-free gauge,
//! and compared across replicas by `portcullis fleet-status`.
//!
//! Plain functions over what the store reports. Never imports: the
//! transport or the app.

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use crate::tenants::store::TenantStatus;

/// `sha256:<hex>` over the tenants (sorted by id, each with its digest), the
/// revocation generation (when there is a shared store) and the config digest.
/// Two replicas with the same value serve the same rules.
pub fn served_digest(
    tenants: &[TenantStatus],
    revocation_generation: Option<u64>,
    config_digest: &str,
) -> String {
    let sorted: BTreeMap<&str, &str> = tenants
        .iter()
        .map(|t| (t.tenant.as_str(), t.digest.as_str()))
        .collect();
    let mut hash = Sha256::new();
    let mut part = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    for (tenant, digest) in sorted {
        part(tenant.as_bytes());
        part(digest.as_bytes());
    }
    part(
        revocation_generation
            .map_or(String::new(), |g| g.to_string())
            .as_bytes(),
    );
    part(config_digest.as_bytes());
    format!("sha256:{}", hex::encode(hash.finalize()))
}

/// The digest as a gauge value: its first 52 bits, exact in the float a
/// Prometheus sample is, so a dashboard can show replicas that differ
/// without a label per digest.
pub fn gauge_value(digest: &str) -> i64 {
    let hex = digest.trim_start_matches("sha256:");
    hex.get(..13)
        .and_then(|h| i64::from_str_radix(h, 16).ok())
        .unwrap_or(0)
}

/// One replica's `/policies`, as `fleet-status` reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Served {
    pub digest: String,
    pub tenants: BTreeMap<String, String>,
    pub revocation_generation: Option<u64>,
    pub config_digest: String,
}

impl Served {
    /// From a `/policies` body; `None` when it is not one.
    pub fn from_json(body: &serde_json::Value) -> Option<Served> {
        let tenants = body["tenants"]
            .as_array()?
            .iter()
            .map(|t| {
                Some((
                    t["tenant"].as_str()?.to_string(),
                    t["digest"].as_str()?.to_string(),
                ))
            })
            .collect::<Option<BTreeMap<_, _>>>()?;
        Some(Served {
            digest: body["digest"].as_str()?.to_string(),
            tenants,
            revocation_generation: body["revocation_generation"].as_u64(),
            config_digest: body["config_digest"].as_str().unwrap_or("").to_string(),
        })
    }
}

/// What differs across replicas: the tenants whose rules differ or are
/// missing somewhere, and whether the revocation generation or the config
/// do. Empty when every replica serves the same.
pub fn differences(replicas: &[Served]) -> Vec<String> {
    let mut out = Vec::new();
    let Some(first) = replicas.first() else {
        return out;
    };
    if replicas.iter().all(|r| r.digest == first.digest) {
        return out;
    }
    let names: std::collections::BTreeSet<&String> =
        replicas.iter().flat_map(|r| r.tenants.keys()).collect();
    for name in names {
        let seen: Vec<Option<&String>> = replicas.iter().map(|r| r.tenants.get(name)).collect();
        if seen.iter().any(|d| *d != seen[0]) {
            out.push(format!("tenant {name}"));
        }
    }
    if replicas
        .iter()
        .any(|r| r.revocation_generation != first.revocation_generation)
    {
        out.push("revocation generation".to_string());
    }
    if replicas
        .iter()
        .any(|r| r.config_digest != first.config_digest)
    {
        out.push("server config".to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(tenant: &str, digest: &str) -> TenantStatus {
        TenantStatus {
            tenant: tenant.into(),
            digest: digest.into(),
            file: format!("{tenant}.yaml").into(),
            rules: 1,
        }
    }

    #[test]
    fn the_digest_ignores_order_and_sees_every_part() {
        let a = [status("acme", "d1"), status("globex", "d2")];
        let b = [status("globex", "d2"), status("acme", "d1")];
        let base = served_digest(&a, Some(3), "c");
        assert_eq!(base, served_digest(&b, Some(3), "c"));
        assert_ne!(
            base,
            served_digest(
                &[status("acme", "d1"), status("globex", "d3")],
                Some(3),
                "c"
            )
        );
        assert_ne!(base, served_digest(&a, Some(4), "c"));
        assert_ne!(base, served_digest(&a, None, "c"));
        assert_ne!(base, served_digest(&a, Some(3), "d"));
        assert!(gauge_value(&base) > 0);
        assert!(gauge_value(&base) < 1 << 52);
    }

    #[test]
    fn differences_name_the_tenants() {
        let served = |tenants: &[(&str, &str)]| {
            let list: Vec<TenantStatus> = tenants.iter().map(|(t, d)| status(t, d)).collect();
            Served {
                digest: served_digest(&list, None, ""),
                tenants: tenants
                    .iter()
                    .map(|(t, d)| (t.to_string(), d.to_string()))
                    .collect(),
                revocation_generation: None,
                config_digest: String::new(),
            }
        };
        let a = served(&[("acme", "1"), ("globex", "2"), ("initech", "3")]);
        let b = served(&[("acme", "1"), ("globex", "9")]);
        assert!(differences(&[a.clone(), a.clone()]).is_empty());
        assert_eq!(differences(&[a, b]), ["tenant globex", "tenant initech"]);
    }
}
