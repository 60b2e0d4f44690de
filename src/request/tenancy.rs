//! Stage 2: which tenant's rules apply, from a trusted source.
//!
//! Sources are tried in the configured order. The route's `context_extensions`
//! are set by Envoy's configuration, so they are trusted. The host is set by the
//! client: host-based tenancy is safe only where Envoy's virtual hosts pin the
//! domains (Istio's inbound listener matches `*`, so it is not safe there). A
//! header is used only when the operator names it and states that the proxy sets
//! it. An unknown tenant is denied.

use serde::Deserialize;

use crate::request::input::Resource;

/// Where resolved ids are looked up: the tenants a server holds (the store
/// implements it), or any map a test builds.
pub trait TenantLookup {
    /// What a tenant resolves to.
    type Tenant;
    /// The tenant with this id.
    fn by_id(&self, id: &str) -> Option<Self::Tenant>;
    /// The tenant whose `hosts` match this host.
    fn by_host(&self, host: &str) -> Option<Self::Tenant>;
}

/// Where a tenant id may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantSource {
    /// A `context_extensions` key on the route (default key `tenant`).
    ContextExtension,
    /// The request host, against each tenant's `hosts`.
    Host,
    /// A request header the proxy sets (and strips from clients).
    Header,
}

/// How tenants are resolved; part of the server configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantResolver {
    pub sources: Vec<TenantSource>,
    pub context_key: String,
    /// Required when `sources` includes `header`.
    pub header: Option<String>,
}

impl Default for TenantResolver {
    fn default() -> Self {
        TenantResolver {
            sources: vec![TenantSource::ContextExtension, TenantSource::Host],
            context_key: "tenant".into(),
            header: None,
        }
    }
}

impl TenantResolver {
    pub fn validate(&self) -> Result<(), String> {
        if self.sources.is_empty() {
            return Err("tenancy.sources must name at least one source".into());
        }
        if self.sources.contains(&TenantSource::Header)
            && self.header.as_deref().is_none_or(str::is_empty)
        {
            return Err("tenancy.sources includes header, so tenancy.header must name it".into());
        }
        Ok(())
    }

    /// The tenant for this request. The first source that yields an id decides:
    /// an id that names no tenant is unknown, not a reason to try the next source.
    pub fn resolve<L: TenantLookup>(&self, resource: &Resource, store: &L) -> Option<L::Tenant> {
        for source in &self.sources {
            match source {
                TenantSource::ContextExtension => {
                    if let Some(id) = resource.context_extensions.get(&self.context_key) {
                        return store.by_id(id);
                    }
                }
                TenantSource::Host => {
                    if !resource.host.is_empty() {
                        return store.by_host(&resource.host);
                    }
                }
                TenantSource::Header => {
                    let name = self
                        .header
                        .as_deref()
                        .unwrap_or_default()
                        .to_ascii_lowercase();
                    if let Some(id) = resource.headers.get(&name) {
                        return store.by_id(id);
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two tenants, each with one host.
    struct Two;

    impl TenantLookup for Two {
        type Tenant = &'static str;
        fn by_id(&self, id: &str) -> Option<&'static str> {
            ["acme", "globex"].into_iter().find(|t| *t == id)
        }
        fn by_host(&self, host: &str) -> Option<&'static str> {
            let t = host.strip_suffix(".example")?;
            self.by_id(t)
        }
    }

    fn resource(host: &str, ext: Option<&str>) -> Resource {
        let mut r = Resource {
            host: host.into(),
            ..Default::default()
        };
        if let Some(t) = ext {
            r.context_extensions.insert("tenant".into(), t.into());
        }
        r
    }

    #[test]
    fn context_extension_wins_over_host() {
        let store = Two;
        let r = TenantResolver::default();
        let t = r.resolve(&resource("acme.example", Some("globex")), &store);
        assert_eq!(t.unwrap(), "globex");
        let t = r.resolve(&resource("acme.example", None), &store);
        assert_eq!(t.unwrap(), "acme");
    }

    #[test]
    fn unknown_ids_do_not_fall_through() {
        let store = Two;
        let r = TenantResolver::default();
        assert!(
            r.resolve(&resource("acme.example", Some("nope")), &store)
                .is_none()
        );
        assert!(
            r.resolve(&resource("other.example", None), &store)
                .is_none()
        );
    }

    #[test]
    fn headers_only_when_configured() {
        let store = Two;
        let mut res = resource("", None);
        res.headers.insert("x-tenant".into(), "acme".into());
        assert!(TenantResolver::default().resolve(&res, &store).is_none());
        let r = TenantResolver {
            sources: vec![TenantSource::Header],
            context_key: "tenant".into(),
            header: Some("X-Tenant".into()),
        };
        assert!(r.validate().is_ok());
        assert_eq!(r.resolve(&res, &store).unwrap(), "acme");
        let bad = TenantResolver { header: None, ..r };
        assert!(bad.validate().is_err());
    }
}
