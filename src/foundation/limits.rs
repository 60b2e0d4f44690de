//! Named bounds on the work one replica takes on (`limits:` in the server
//! config).
//!
//! Every bound has a safe default (the built-in constant it replaces) and a
//! ceiling: the bounds that the deeper stages also enforce as constants (token,
//! path and body sizes, rules per tenant) can be lowered, never raised above
//! those constants. Exceeding a bound is a deny with a stable reason, or a load
//! error with file and cause; never a crash, a silent truncation or an
//! unbounded queue.
//!
//! A table of numbers and ranges that others read; it builds nothing.
//!
//! Never imports: any other module of the crate.
//!
//! Three places read them:
//! - [`crate::request::read()`], the first step of every check: the request's headers,
//!   path and body are measured on the protobuf before anything is built from
//!   them;
//! - the tenant compiler: rules per tenant, the
//!   token size a tenant accepts, the size of its tokens' claims, its token
//!   cache and DPoP replay cache;
//! - the store's reload (tenants) and the server (concurrent checks).

use serde::Deserialize;

/// The most checks decided at once unless `limits.max_concurrent_checks` says
/// otherwise: far above what two cores decide in a check's lifetime, low
/// enough that a flood queues no unbounded work.
pub const DEFAULT_MAX_CONCURRENT_CHECKS: usize = 1024;

/// Largest token accepted, in bytes: far above any real access token, far
/// below Envoy's header limit, and a bound on the JSON parsed before the
/// signature is checked.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Most verified tokens one tenant keeps.
pub const MAX_CACHED_TOKENS: usize = 10_000;

/// Most body bytes portcullis parses as JSON; Envoy's `max_request_bytes` should
/// not exceed it.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Most elements in one JSON array, and most members in one object, that a body
/// may have to be parsed. CEL has no time limit; with lists this short even a
/// quadratic condition (`x in list` inside `all`) stays in the milliseconds.
pub const MAX_BODY_COLLECTION_LEN: usize = 256;

/// Default for `limits.max_claim_items`: the most elements in one array, and
/// members in one object, of a token's claims (a JWT payload or an
/// introspection answer). Enterprise identity providers send `groups` of
/// hundreds; more is refused `claims_too_large`.
pub const DEFAULT_MAX_CLAIM_ITEMS: usize = 1024;
/// Largest `limits.max_claim_items` accepted: the most elements a JWT of
/// [`MAX_TOKEN_BYTES`] can hold anyway (two bytes each at least), and the
/// size `policy::cost` assumes for a collection in `claims`.
pub const MAX_CLAIM_ITEMS_CEILING: usize = MAX_TOKEN_BYTES / 2;

/// Largest claims document, as compact JSON, whatever built it (a JWT payload
/// after `scope` splitting and `claim_mappings`, an introspection answer, the
/// payload Envoy's `jwt_authn` verified); more is `claims_too_large`. It is the
/// size `policy::cost` assumes for `claims`, and what a JWT of
/// [`MAX_TOKEN_BYTES`] holds anyway.
pub const MAX_CLAIMS_BYTES: usize = MAX_TOKEN_BYTES;

/// Deepest nesting of arrays and objects in a claims document (the document
/// itself is depth 1; `realm_access.roles` is 3); deeper is `claims_too_large`.
pub const MAX_CLAIMS_DEPTH: usize = 32;

/// Longest path (without the query) that portcullis considers; longer is denied.
pub const MAX_PATH_BYTES: usize = 8 * 1024;

/// Most rules in one tenant's file.
pub const MAX_RULES_PER_TENANT: usize = 10_000;

/// Largest policy file read.
pub const MAX_POLICY_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Largest data file: data is for lookups, not a database.
pub const MAX_DATA_FILE_BYTES: usize = 256 * 1024;

/// Default for `limits.max_headers`: Envoy's own default (`max_headers_count`,
/// 100) plus room for the headers Envoy adds and the pseudo-headers it sends.
pub const DEFAULT_MAX_HEADERS: usize = 200;
/// Largest `limits.max_headers` accepted.
pub const MAX_HEADERS_CEILING: usize = 10_000;

/// Default for `limits.max_header_bytes`: Envoy's default
/// `max_request_headers_kb` (60 KiB) with room for what Envoy adds.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 96 * 1024;
/// Largest `limits.max_header_bytes` accepted (Envoy's own ceiling, 8 MiB).
pub const MAX_HEADER_BYTES_CEILING: usize = 8 * 1024 * 1024;

/// Default for `limits.max_check_cost`, in the steps of the condition cost
/// model (`policy::cost`): ten conditions at the per-condition bound. Measured
/// (docs/policy.md#condition-cost), a step costs from under one to about
/// twenty nanoseconds, so the slowest check under it is in the tenths of a
/// second; the runtime budget ([`MAX_EVALUATION_TIME`]) stops the rest.
pub const DEFAULT_MAX_CHECK_COST: usize = 20_000_000;
/// Largest `limits.max_check_cost` accepted: a thousand conditions at the
/// per-condition bound (the runtime budget still applies).
pub const MAX_CHECK_COST_CEILING: usize = 2_000_000_000;

/// The longest one check's rules are evaluated before it is denied
/// `policy_error` (when Envoy's deadline is not sooner): checked between
/// conditions, since the CEL interpreter cannot be interrupted.
pub const MAX_EVALUATION_TIME: std::time::Duration = std::time::Duration::from_millis(250);

/// Default for `limits.max_tenants` (the `check` benchmark decides against a
/// store of this many).
pub const DEFAULT_MAX_TENANTS: usize = 10_000;

/// Largest `limits.token_cache_size` accepted (per tenant).
pub const TOKEN_CACHE_CEILING: usize = 1_000_000;
/// Largest `limits.replay_cache_size` accepted (per tenant).
pub const REPLAY_CACHE_CEILING: usize = 10_000_000;

/// Default for `limits.max_evaluation_request_bytes`: 256 KiB.
pub const DEFAULT_MAX_EVALUATION_REQUEST_BYTES: usize = 256 * 1024;
/// Largest `limits.max_evaluation_request_bytes` accepted: 8 MiB.
pub const MAX_EVALUATION_REQUEST_BYTES_CEILING: usize = 8 * 1024 * 1024;
/// Default for `limits.max_evaluations` (one AuthZEN batch).
pub const DEFAULT_MAX_EVALUATIONS: usize = 64;
/// Largest `limits.max_evaluations` accepted.
pub const MAX_EVALUATIONS_CEILING: usize = 10_000;

/// The bounds, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Checks in flight at once (over every listener). Beyond it a check is
    /// answered at once with a denied 503 `overloaded`, so Envoy fails closed
    /// even with `failure_mode_allow: true`.
    pub max_concurrent_checks: usize,
    /// Largest credential (JWT or opaque token) looked at; larger is denied
    /// `token_too_large`.
    pub max_token_bytes: usize,
    /// Most request headers (as Envoy sends them, pseudo-headers included)
    /// considered; more is denied `headers_too_large`, never truncated.
    pub max_headers: usize,
    /// Most header bytes (names plus values) considered; more is denied
    /// `headers_too_large`.
    pub max_header_bytes: usize,
    /// Envoy's `max_request_bytes`: a body this long or longer may be cut
    /// short, so it is never parsed, and rules that read it deny
    /// `body_unavailable` (the largest parsed body is one byte less).
    pub max_body_bytes: usize,
    /// Longest path (without the query); longer is denied `path_too_long`.
    pub max_path_bytes: usize,
    /// Most elements in one array (or members in one object) of a token's
    /// claims, JWT or introspection answer; more is denied `claims_too_large`.
    pub max_claim_items: usize,
    /// Most rules in one tenant's file; more is a load error.
    pub max_rules_per_tenant: usize,
    /// The most the conditions one request can reach may cost together, in
    /// the steps of the condition cost model; a file over it is a load error.
    pub max_check_cost: usize,
    /// Most tenants served; a file that would add one more is a load error.
    pub max_tenants: usize,
    /// Verified tokens remembered per tenant.
    pub token_cache_size: usize,
    /// The most DPoP proof `jti`s a tenant's policy may ask to remember
    /// (`identity.dpop.replay_cache_size`); a policy that sets none gets the
    /// smaller of this and 100,000.
    pub replay_cache_size: usize,
    /// Largest AuthZEN request body read (`authzen`); larger is refused 400
    /// `evaluation_request_too_large` before it is parsed.
    pub max_evaluation_request_bytes: usize,
    /// Most evaluations in one AuthZEN batch; more is refused 400
    /// `too_many_evaluations` before any is decided.
    pub max_evaluations: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_concurrent_checks: DEFAULT_MAX_CONCURRENT_CHECKS,
            max_token_bytes: MAX_TOKEN_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_body_bytes: MAX_BODY_BYTES,
            max_path_bytes: MAX_PATH_BYTES,
            max_claim_items: DEFAULT_MAX_CLAIM_ITEMS,
            max_rules_per_tenant: MAX_RULES_PER_TENANT,
            max_check_cost: DEFAULT_MAX_CHECK_COST,
            max_tenants: DEFAULT_MAX_TENANTS,
            token_cache_size: MAX_CACHED_TOKENS,
            replay_cache_size: REPLAY_CACHE_CEILING,
            max_evaluation_request_bytes: DEFAULT_MAX_EVALUATION_REQUEST_BYTES,
            max_evaluations: DEFAULT_MAX_EVALUATIONS,
        }
    }
}

impl Limits {
    /// Checks every bound against its range; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        // (name, value, least, most); a token cache of 0 turns it off.
        let ranges = [
            (
                "max_concurrent_checks",
                self.max_concurrent_checks,
                1,
                tokio::sync::Semaphore::MAX_PERMITS,
            ),
            ("max_token_bytes", self.max_token_bytes, 1, MAX_TOKEN_BYTES),
            ("max_headers", self.max_headers, 1, MAX_HEADERS_CEILING),
            (
                "max_header_bytes",
                self.max_header_bytes,
                1,
                MAX_HEADER_BYTES_CEILING,
            ),
            ("max_body_bytes", self.max_body_bytes, 1, MAX_BODY_BYTES),
            ("max_path_bytes", self.max_path_bytes, 1, MAX_PATH_BYTES),
            (
                "max_claim_items",
                self.max_claim_items,
                1,
                MAX_CLAIM_ITEMS_CEILING,
            ),
            (
                "max_rules_per_tenant",
                self.max_rules_per_tenant,
                1,
                MAX_RULES_PER_TENANT,
            ),
            (
                "max_check_cost",
                self.max_check_cost,
                1,
                MAX_CHECK_COST_CEILING,
            ),
            ("max_tenants", self.max_tenants, 1, usize::MAX),
            (
                "token_cache_size",
                self.token_cache_size,
                0,
                TOKEN_CACHE_CEILING,
            ),
            (
                "replay_cache_size",
                self.replay_cache_size,
                1,
                REPLAY_CACHE_CEILING,
            ),
            (
                "max_evaluation_request_bytes",
                self.max_evaluation_request_bytes,
                1,
                MAX_EVALUATION_REQUEST_BYTES_CEILING,
            ),
            (
                "max_evaluations",
                self.max_evaluations,
                1,
                MAX_EVALUATIONS_CEILING,
            ),
        ];
        for (name, value, least, most) in ranges {
            if !(least..=most).contains(&value) {
                return Err(format!("limits.{name} must be between {least} and {most}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_built_in_constants_and_validate() {
        let l = Limits::default();
        assert_eq!(l.max_token_bytes, MAX_TOKEN_BYTES);
        assert_eq!(l.max_path_bytes, MAX_PATH_BYTES);
        assert_eq!(l.max_body_bytes, MAX_BODY_BYTES);
        assert_eq!(l.max_rules_per_tenant, MAX_RULES_PER_TENANT);
        assert!(l.validate().is_ok());
        let over = Limits {
            max_path_bytes: MAX_PATH_BYTES + 1,
            ..Limits::default()
        };
        assert!(
            over.validate()
                .unwrap_err()
                .contains("limits.max_path_bytes")
        );
        let zero = Limits {
            max_tenants: 0,
            ..Limits::default()
        };
        assert!(zero.validate().unwrap_err().contains("limits.max_tenants"));
        let claims = |n| Limits {
            max_claim_items: n,
            ..Limits::default()
        };
        assert!(claims(MAX_CLAIM_ITEMS_CEILING).validate().is_ok());
        assert!(
            claims(MAX_CLAIM_ITEMS_CEILING + 1)
                .validate()
                .unwrap_err()
                .contains("limits.max_claim_items")
        );
    }
}
