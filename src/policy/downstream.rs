//! What a tenant, or one of its allow rules, asks to be minted for the
//! upstream (`downstream_token`): the spec as written and validated. The
//! respond stage mints it ([`crate::decision::mint`]).
//!
//! Never imports: decision, tenants or anything above them.

use std::time::Duration;

use serde::Deserialize;

/// Longest lifetime a policy may give a minted token.
pub const MAX_LIFETIME: Duration = Duration::from_secs(300);
/// Default lifetime of a minted token.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);
/// What a tenant (or one of its rules) asks to be minted, as written.
#[derive(Debug, Clone, Hash, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DownstreamSpec {
    /// The upstream service's audience, or
    #[serde(default)]
    pub audience: Option<String>,
    /// the name of the route's `context_extensions` key that holds it.
    #[serde(default)]
    pub audience_from_context_extension: Option<String>,
    /// Lifetime of the minted token (default 60s, at most 5m).
    #[serde(default, with = "crate::foundation::duration::opt_duration")]
    #[schemars(with = "Option<String>")]
    pub lifetime: Option<Duration>,
    /// The scopes that may travel on: the minted token carries those of the
    /// caller's scopes that are listed here (none when empty).
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// A validated [`DownstreamSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downstream {
    pub audience: Audience,
    /// Seconds.
    pub lifetime: u64,
    pub scopes: Vec<String>,
}

/// Where the minted token's audience comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    Fixed(String),
    ContextExtension(String),
}

impl Downstream {
    pub fn compile(spec: &DownstreamSpec) -> Result<Downstream, String> {
        let audience = match (&spec.audience, &spec.audience_from_context_extension) {
            (Some(a), None) if !a.is_empty() => Audience::Fixed(a.clone()),
            (None, Some(k)) if !k.is_empty() => Audience::ContextExtension(k.clone()),
            _ => {
                return Err(
                    "downstream_token needs exactly one of audience or audience_from_context_extension".into(),
                );
            }
        };
        let lifetime = spec.lifetime.unwrap_or(DEFAULT_LIFETIME);
        if lifetime.is_zero() || lifetime > MAX_LIFETIME {
            return Err(format!(
                "downstream_token.lifetime must be between 1s and {}s",
                MAX_LIFETIME.as_secs()
            ));
        }
        Ok(Downstream {
            audience,
            lifetime: lifetime.as_secs(),
            scopes: spec.scopes.clone(),
        })
    }
}
