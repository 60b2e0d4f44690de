//! portcullis' own JWT validation: the same strict checks for every tenant.
//!
//! A token is checked in this order, and the first failure decides:
//! size → shape → header (`alg`, `crit`, `typ`, `kid`) → `iss` selects one of the
//! tenant's issuers → `alg` in that issuer's allow-list → key by `kid` from that
//! issuer's own keys → signature → claim types → `exp`, `nbf`, `iat`, lifetime →
//! `aud` → required claims. Claims are read before the signature is checked only
//! to pick the issuer; nothing else is trusted until the signature verifies.
//!
//! The checks follow RFC 8725 (JWT BCP) and RFC 7519; each names its section.
//! This module must never choose a key from the token (`jku`, `x5u`, `jwk`,
//! `x5c` are ignored), accept `none` or a symmetric algorithm, or put the token
//! into an error.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::{Map, Value as Json};

use super::keys::{
    self, KeyKind, KeyLookup, KeyMatch, KeySet, RefreshPolicy, RemoteKeys, RemoteSource,
};
use crate::foundation::intern::Interner;
use crate::foundation::reason::Reason;
use crate::request::input::JsonRefused;

pub use crate::foundation::limits::MAX_TOKEN_BYTES;
/// Default clock leeway for `exp`, `nbf` and `iat`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Default refresh interval for remote keys.
pub const DEFAULT_KEYS_TTL: Duration = Duration::from_secs(300);
/// Default time to keep using the last good keys while the issuer is down.
pub const DEFAULT_KEYS_MAX_STALE: Duration = Duration::from_secs(3600);

/// Claims portcullis checks or normalizes itself; a mapping may not replace them.
const PROTECTED_CLAIMS: [&str; 11] = [
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    "scope",
    "scp",
    "cnf",
    "client_id",
];
/// Largest clock leeway accepted: more would all but switch `exp` off.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// One trusted issuer, as written in a policy file.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IssuerSpec {
    /// The exact `iss` value.
    pub issuer: String,
    /// At least one of these must be in `aud` (RFC 8725 §3.9).
    pub audiences: Vec<String>,
    /// Allowed `alg` values (asymmetric only).
    pub algorithms: Vec<String>,
    /// An inline JWKS document.
    #[serde(default)]
    pub jwks: Option<Json>,
    /// A JWKS file (e.g. a mounted ConfigMap or Secret).
    #[serde(default)]
    pub jwks_file: Option<String>,
    /// A JWKS URL, fetched and refreshed in the background.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Fetch keys through OIDC discovery of `issuer`.
    #[serde(default)]
    pub discovery: bool,
    /// A private CA and/or client certificate for fetching this issuer's keys.
    #[serde(default)]
    pub tls: Option<super::http::TlsSpec>,
    /// Origins a discovered `jwks_uri` may be on besides the issuer's own.
    #[serde(default)]
    pub jwks_allowed_origins: Vec<String>,
    #[serde(default, with = "crate::foundation::duration::opt_duration")]
    #[schemars(with = "Option<String>")]
    pub keys_ttl: Option<Duration>,
    #[serde(default, with = "crate::foundation::duration::opt_duration")]
    #[schemars(with = "Option<String>")]
    pub keys_max_stale: Option<Duration>,
    /// Clock leeway (default 30s).
    #[serde(default, with = "crate::foundation::duration::opt_duration")]
    #[schemars(with = "Option<String>")]
    pub leeway: Option<Duration>,
    /// Longest accepted `exp − iat`; tokens without `iat` are then refused.
    #[serde(default, with = "crate::foundation::duration::opt_duration")]
    #[schemars(with = "Option<String>")]
    pub max_lifetime: Option<Duration>,
    /// Claims every token must carry.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Required `typ` header, e.g. `at+jwt` (RFC 9068 §2.1).
    #[serde(default)]
    pub typ: Option<String>,
    /// Whether tokens must be sender-constrained: `none` (default), `dpop`,
    /// `mtls` or `any`. A binding a token carries is enforced either way.
    #[serde(default)]
    pub sender_constraint: super::binding::SenderConstraint,
    /// Claims added to `claims` from a dotted path in the token:
    /// `roles: realm_access.roles`.
    #[serde(default)]
    pub claim_mappings: std::collections::BTreeMap<String, String>,
}

/// Where an issuer's keys are.
#[derive(Debug)]
enum KeySource {
    Static(Arc<KeySet>),
    Remote(Arc<RemoteKeys>),
}

/// A validated issuer.
#[derive(Debug)]
pub struct Issuer {
    pub issuer: String,
    audiences: Vec<String>,
    /// Allowed `alg` names, with what each means.
    algorithms: Vec<(String, Algorithm, KeyKind)>,
    keys: KeySource,
    leeway: u64,
    max_lifetime: Option<u64>,
    required_claims: Vec<String>,
    typ: Option<String>,
    claim_mappings: Vec<(String, Vec<String>)>,
    sender_constraint: super::binding::SenderConstraint,
}

impl Issuer {
    /// Validates a spec. `files` resolves `jwks_file` and `tls.*`.
    pub fn compile(
        spec: &IssuerSpec,
        files: &crate::foundation::policy_files::FileScope,
    ) -> Result<Issuer, String> {
        let name = &spec.issuer;
        if name.is_empty() {
            return Err("identity.jwt: issuer must not be empty".into());
        }
        let at = |m: String| format!("identity.jwt {name:?}: {m}");
        if spec.audiences.is_empty() || spec.audiences.iter().any(String::is_empty) {
            return Err(at(
                "audiences must list at least one audience (RFC 8725 §3.9)".into(),
            ));
        }
        if spec.algorithms.is_empty() {
            return Err(at(
                "algorithms must list the algorithms the issuer signs with".into(),
            ));
        }
        let algorithms = spec
            .algorithms
            .iter()
            .map(|a| keys::parse_algorithm(a).map(|(alg, kind)| (a.clone(), alg, kind)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(at)?;
        let sources = usize::from(spec.jwks.is_some())
            + usize::from(spec.jwks_file.is_some())
            + usize::from(spec.jwks_uri.is_some())
            + usize::from(spec.discovery);
        if sources != 1 {
            return Err(at(
                "name exactly one key source: jwks, jwks_file, jwks_uri or discovery: true".into(),
            ));
        }
        let refresh = RefreshPolicy {
            ttl: spec.keys_ttl.unwrap_or(DEFAULT_KEYS_TTL),
            max_stale: spec.keys_max_stale.unwrap_or(DEFAULT_KEYS_MAX_STALE),
        };
        if refresh.ttl < Duration::from_secs(1) {
            return Err(at("keys_ttl must be at least 1s".into()));
        }
        // Keys must stay usable until the next fetch has had its chance;
        // otherwise checks get 503 while no fetch is due.
        if refresh.max_stale < refresh.ttl + super::http::REQUEST_TIMEOUT {
            return Err(at(format!(
                "keys_max_stale must be at least keys_ttl + {}s",
                super::http::REQUEST_TIMEOUT.as_secs()
            )));
        }
        if spec.leeway.is_some_and(|l| l > MAX_LEEWAY) {
            return Err(at(format!(
                "leeway must be at most {}s",
                MAX_LEEWAY.as_secs()
            )));
        }
        let parse_set = |bytes: &[u8]| -> Result<Arc<KeySet>, String> {
            // Tenants that paste one issuer's JWKS share its parsed keys.
            static SHARED: LazyLock<Interner<KeySet>> = LazyLock::new(Interner::default);
            let digest = crate::foundation::intern::digest_of("jwks", bytes);
            if let Some(set) = SHARED.get(&digest) {
                return Ok(set);
            }
            let (set, notes) = KeySet::parse(bytes).map_err(at)?;
            if set.keys.is_empty() {
                return Err(at(format!(
                    "key set has no usable key ({})",
                    notes.join("; ")
                )));
            }
            Ok(SHARED.insert(digest, Arc::new(set)))
        };
        let keys = if let Some(doc) = &spec.jwks {
            KeySource::Static(parse_set(doc.to_string().as_bytes())?)
        } else if let Some(file) = &spec.jwks_file {
            let bytes = files.read("jwks_file", file).map_err(at)?;
            KeySource::Static(parse_set(&bytes)?)
        } else if let Some(uri) = &spec.jwks_uri {
            super::http::origin_of(uri).map_err(at)?;
            KeySource::Remote(RemoteKeys::shared(
                RemoteSource::Jwks(uri.clone()),
                refresh,
                super::http::client(spec.tls.as_ref(), files).map_err(at)?,
            ))
        } else {
            super::http::origin_of(name).map_err(at)?;
            let mut allowed = Vec::new();
            for o in &spec.jwks_allowed_origins {
                let origin = super::http::origin_of(o).map_err(at)?;
                if origin != o.trim_end_matches('/') {
                    return Err(at(format!(
                        "jwks_allowed_origins: {o:?} is not a bare origin"
                    )));
                }
                allowed.push(origin);
            }
            KeySource::Remote(RemoteKeys::shared(
                RemoteSource::Discovery {
                    issuer: name.clone(),
                    allowed_origins: allowed,
                },
                refresh,
                super::http::client(spec.tls.as_ref(), files).map_err(at)?,
            ))
        };
        if spec.tls.is_some() && !matches!(keys, KeySource::Remote(_)) {
            return Err(at("tls applies to jwks_uri and discovery only".into()));
        }
        if !spec.jwks_allowed_origins.is_empty() && !spec.discovery {
            return Err(at("jwks_allowed_origins applies to discovery only".into()));
        }
        let mut claim_mappings = Vec::new();
        for (claim, path) in &spec.claim_mappings {
            let parts: Vec<String> = path.split('.').map(str::to_string).collect();
            if PROTECTED_CLAIMS.contains(&claim.as_str()) {
                return Err(at(format!(
                    "claim_mappings: {claim:?} is checked by portcullis and cannot be mapped"
                )));
            }
            if claim.is_empty() || parts.iter().any(String::is_empty) {
                return Err(at(format!(
                    "claim_mappings: {claim:?}: {path:?} is not a dotted path"
                )));
            }
            claim_mappings.push((claim.clone(), parts));
        }
        Ok(Issuer {
            issuer: name.clone(),
            audiences: spec.audiences.clone(),
            algorithms,
            keys,
            leeway: spec.leeway.unwrap_or(DEFAULT_LEEWAY).as_secs(),
            max_lifetime: spec.max_lifetime.map(|d| d.as_secs()),
            required_claims: spec.required_claims.clone(),
            typ: spec.typ.clone(),
            claim_mappings,
            sender_constraint: spec.sender_constraint,
        })
    }

    /// The issuer's remote key set, when it has one.
    pub fn remote(&self) -> Option<&Arc<RemoteKeys>> {
        match &self.keys {
            KeySource::Remote(r) => Some(r),
            KeySource::Static(_) => None,
        }
    }

    /// The generation of the key set in use now, if there is a usable one.
    fn generation(&self) -> Option<u64> {
        match &self.keys {
            KeySource::Static(set) => Some(set.generation),
            KeySource::Remote(remote) => remote.keys().map(|k| k.generation),
        }
    }

    fn lookup(&self) -> KeyLookup {
        match &self.keys {
            KeySource::Static(set) => KeyLookup::Ready(Arc::clone(set)),
            KeySource::Remote(remote) => match remote.keys() {
                Some(set) => KeyLookup::Ready(set),
                None => KeyLookup::Fetch(Arc::clone(remote)),
            },
        }
    }
}

/// Why a token was refused. Messages never quote the token or a claim value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is over the size limit")]
    TooLarge,
    #[error("token claims have an array or object over limits.max_claim_items")]
    ClaimsTooLarge,
    #[error("token is not a compact JWS: {0}")]
    Malformed(&'static str),
    #[error("token header: {0}")]
    BadHeader(&'static str),
    #[error("token header lists critical extensions portcullis does not understand")]
    UnknownCritical,
    #[error("issuer is not trusted by this tenant")]
    IssuerNotTrusted,
    #[error("algorithm is not allowed for this issuer")]
    AlgorithmNotAllowed,
    #[error("no key of the issuer matches the token's kid")]
    UnknownKey,
    #[error("the issuer's keys are unavailable")]
    KeysUnavailable,
    #[error("signature does not verify")]
    BadSignature,
    #[error("claim {0:?} has the wrong type")]
    ClaimType(&'static str),
    #[error("claim {0:?} is missing")]
    MissingClaim(String),
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token was issued in the future")]
    IssuedInFuture,
    #[error("token lives longer than this issuer allows")]
    TooLongLived,
    #[error("token is for another audience")]
    WrongAudience,
    #[error("the issuer says the token is not active")]
    Inactive,
}

impl TokenError {
    pub fn reason(&self) -> Reason {
        match self {
            TokenError::TooLarge => Reason::TokenTooLarge,
            TokenError::ClaimsTooLarge => Reason::ClaimsTooLarge,
            TokenError::IssuerNotTrusted => Reason::IssuerNotTrusted,
            TokenError::AlgorithmNotAllowed => Reason::AlgorithmNotAllowed,
            TokenError::UnknownKey => Reason::UnknownKey,
            TokenError::KeysUnavailable => Reason::KeysUnavailable,
            TokenError::BadSignature => Reason::InvalidSignature,
            TokenError::Expired => Reason::TokenExpired,
            TokenError::NotYetValid | TokenError::IssuedInFuture => Reason::TokenNotYetValid,
            TokenError::TooLongLived => Reason::TokenTooLongLived,
            TokenError::WrongAudience => Reason::InvalidAudience,
            TokenError::Inactive => Reason::TokenInactive,
            TokenError::Malformed(_)
            | TokenError::BadHeader(_)
            | TokenError::UnknownCritical
            | TokenError::ClaimType(_)
            | TokenError::MissingClaim(_) => Reason::InvalidToken,
        }
    }
}

/// A verified token.
#[derive(Debug, Clone)]
pub struct Verified {
    pub issuer: String,
    pub subject: Option<String>,
    pub token_id: Option<String>,
    /// The token's claims with the issuer's mappings applied and `scope`
    /// normalized to a list.
    pub claims: Arc<Map<String, Json>>,
    pub expires: u64,
    /// The binding the issuer requires of its tokens.
    pub sender_constraint: super::binding::SenderConstraint,
}

/// The outcome of one verification attempt.
#[derive(Debug)]
pub enum Attempt {
    Done(Result<Verified, TokenError>),
    /// The issuer's keys must be fetched first; the caller may wait and retry.
    NeedKeys(Arc<RemoteKeys>),
}

pub use crate::foundation::limits::MAX_CACHED_TOKENS;

/// One tenant's verified tokens, by a keyed 128-bit PRF of the token
/// ([`super::cache_key`], under a key made with the map). An entry is used only
/// while the token is unexpired and its issuer still has the very key set that
/// verified it (a rotation or a reload starts afresh: a reload compiles a new
/// tenant with an empty cache). Failures are never cached. Sender-constrained
/// tokens' proofs (DPoP, mTLS binding) must be checked per request, outside it.
#[derive(Debug)]
pub struct TokenCache {
    /// Made on the first verified token: of ten thousand tenants loaded, most
    /// may never see one, and an empty map's shards still cost a kilobyte.
    entries: std::sync::OnceLock<Entries>,
    /// Most entries (`limits.token_cache_size`); 0 turns the cache off.
    capacity: usize,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::with_capacity(MAX_CACHED_TOKENS)
    }
}

/// The map and the secret its keys are made under.
#[derive(Debug)]
struct Entries {
    key: super::cache_key::CacheKey,
    map: dashmap::DashMap<[u8; 16], Cached>,
}

#[derive(Debug)]
struct Cached {
    issuer: usize,
    generation: u64,
    /// The first second at which the token no longer verifies (exp + leeway).
    invalid_from: u64,
    verified: Verified,
}

impl TokenCache {
    pub fn with_capacity(capacity: usize) -> TokenCache {
        TokenCache {
            entries: std::sync::OnceLock::new(),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.get().map_or(0, |e| e.map.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// [`verify`], remembering successes in `cache`, with claims of at most
/// `max_claim_items` elements per array or object (`limits.max_claim_items`).
pub fn verify_cached(
    token: &str,
    issuers: &[Issuer],
    cache: &TokenCache,
    now: SystemTime,
    max_claim_items: usize,
) -> Attempt {
    if token.len() > MAX_TOKEN_BYTES {
        return Attempt::Done(Err(TokenError::TooLarge));
    }
    if cache.capacity == 0 {
        // Turned off (`limits.token_cache_size: 0`): every token in full.
        super::counters::token_cache(false);
        return verify_with(token, issuers, now, max_claim_items).0;
    }
    let secs = crate::request::input::unix_seconds(now);
    // The map key, made once per check (no map yet: no key, nothing cached).
    let digest = cache.entries.get().map(|e| e.key.of(token));
    if let (Some(entries), Some(d)) = (cache.entries.get(), &digest)
        && let Some(hit) = entries.map.get(d)
    {
        let fresh = secs < hit.invalid_from
            && issuers
                .get(hit.issuer)
                .and_then(Issuer::generation)
                .is_some_and(|g| g == hit.generation);
        if fresh {
            super::counters::token_cache(true);
            return Attempt::Done(Ok(hit.verified.clone()));
        }
        drop(hit);
        entries.map.remove(d);
    }
    super::counters::token_cache(false);
    let (attempt, by) = verify_with(token, issuers, now, max_claim_items);
    if let (Attempt::Done(Ok(verified)), Some((issuer, generation))) = (&attempt, by) {
        let entries = match cache.entries.get() {
            Some(entries) => entries,
            // No secret to be had: this token is not remembered.
            None => match super::cache_key::CacheKey::random() {
                Some(key) => cache.entries.get_or_init(|| Entries {
                    key,
                    map: dashmap::DashMap::new(),
                }),
                None => return attempt,
            },
        };
        // A map once made keeps its key, so a key made above stays right.
        let digest = digest.unwrap_or_else(|| entries.key.of(token));
        let entries = &entries.map;
        if entries.len() >= cache.capacity {
            // Full: drop what expired; if that freed too little, start afresh,
            // so a full cache costs one scan per many misses, not per miss.
            entries.retain(|_, e| secs < e.invalid_from);
            if entries.len() >= cache.capacity * 9 / 10 {
                entries.clear();
            }
        }
        entries.insert(
            digest,
            Cached {
                issuer,
                generation,
                invalid_from: verified.expires.saturating_add(issuers[issuer].leeway),
                verified: verified.clone(),
            },
        );
    }
    attempt
}

/// Verifies `token` against the tenant's issuers at time `now`, under the
/// default `limits.max_claim_items`.
pub fn verify(token: &str, issuers: &[Issuer], now: SystemTime) -> Attempt {
    verify_with(
        token,
        issuers,
        now,
        crate::foundation::limits::DEFAULT_MAX_CLAIM_ITEMS,
    )
    .0
}

/// Verifies, and says which issuer and key-set generation verified it.
fn verify_with(
    token: &str,
    issuers: &[Issuer],
    now: SystemTime,
    max_claim_items: usize,
) -> (Attempt, Option<(usize, u64)>) {
    let parsed = match parse(token, issuers, max_claim_items) {
        Ok(p) => p,
        Err(e) => return (Attempt::Done(Err(e)), None),
    };
    let index = parsed.index;
    let (attempt, generation) = verify_parsed(parsed, now, max_claim_items);
    (attempt, generation.map(|g| (index, g)))
}

fn verify_parsed(
    parsed: Parsed<'_, '_>,
    now: SystemTime,
    max_claim_items: usize,
) -> (Attempt, Option<u64>) {
    let done = |r| (Attempt::Done(r), None);
    let keys = match parsed.issuer.lookup() {
        KeyLookup::Ready(keys) => keys,
        KeyLookup::Fetch(remote) => return (Attempt::NeedKeys(remote), None),
    };
    let key = match keys.find(parsed.kid.as_deref(), parsed.alg, parsed.kind) {
        KeyMatch::Found(key) => key,
        // RFC 8725 §3.1: a kid naming a key of another type is never "close
        // enough"; it is refused like an unknown key.
        KeyMatch::WrongType => return done(Err(TokenError::UnknownKey)),
        KeyMatch::Unknown => {
            // Keys may have rotated: one fetch per interval, then deny.
            if let Some(remote) = parsed.issuer.remote()
                && remote.may_refetch_for_unknown_kid()
            {
                return (Attempt::NeedKeys(Arc::clone(remote)), None);
            }
            return done(Err(TokenError::UnknownKey));
        }
    };
    if !key.verify(
        parsed.alg,
        parsed.signing_input.as_bytes(),
        parsed.signature,
    ) {
        return done(Err(TokenError::BadSignature));
    }
    (
        Attempt::Done(check_claims(
            parsed.issuer,
            parsed.claims,
            now,
            max_claim_items,
        )),
        Some(keys.generation),
    )
}

struct Parsed<'t, 'i> {
    issuer: &'i Issuer,
    /// The issuer's position in the tenant's list.
    index: usize,
    alg: Algorithm,
    kind: KeyKind,
    kid: Option<String>,
    signing_input: &'t str,
    signature: &'t str,
    claims: Map<String, Json>,
}

fn parse<'t, 'i>(
    token: &'t str,
    issuers: &'i [Issuer],
    max_claim_items: usize,
) -> Result<Parsed<'t, 'i>, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        // Five parts would be a JWE: portcullis accepts signed tokens only.
        return Err(TokenError::Malformed("not three dot-separated parts"));
    };
    if signature.is_empty() {
        return Err(TokenError::Malformed("no signature"));
    }
    let signing_input = &token[..h.len() + 1 + p.len()];
    // A header has a handful of members: a long one is as malformed as any.
    let header = decode_object(h, crate::request::input::MAX_BODY_COLLECTION_LEN)
        .map_err(|_| TokenError::Malformed("header is not a JSON object"))?;
    let claims = decode_object(p, max_claim_items).map_err(|e| match e {
        JsonRefused::TooManyItems => TokenError::ClaimsTooLarge,
        JsonRefused::Invalid => TokenError::Malformed("payload is not a JSON object"),
    })?;

    // RFC 7515 §4.1.11: a `crit` extension we do not implement must be refused;
    // portcullis implements none.
    if header.contains_key("crit") {
        return Err(TokenError::UnknownCritical);
    }
    // RFC 7797 unencoded payloads change what the signature covers.
    if header.contains_key("b64") {
        return Err(TokenError::BadHeader("b64 is not supported"));
    }
    let alg_name = header
        .get("alg")
        .and_then(Json::as_str)
        .ok_or(TokenError::BadHeader("alg is missing or not a string"))?;
    let kid = match header.get("kid") {
        None => None,
        Some(Json::String(k)) => Some(k.clone()),
        Some(_) => return Err(TokenError::BadHeader("kid is not a string")),
    };
    if header.get("enc").is_some() {
        return Err(TokenError::BadHeader("encrypted tokens are not accepted"));
    }
    // The issuer is chosen by the exact `iss` among this tenant's issuers only:
    // an issuer another tenant trusts is unknown here (RFC 8725 §3.8).
    let iss = match claims.get("iss") {
        Some(Json::String(s)) => s,
        Some(_) => return Err(TokenError::ClaimType("iss")),
        None => return Err(TokenError::IssuerNotTrusted),
    };
    let index = issuers
        .iter()
        .position(|i| i.issuer == *iss)
        .ok_or(TokenError::IssuerNotTrusted)?;
    let issuer = &issuers[index];
    // RFC 8725 §3.1 and §2.1: only the issuer's allow-listed algorithms; `none`
    // and HMAC can never be on the list (see `keys::parse_algorithm`).
    let (alg, kind) = issuer
        .algorithms
        .iter()
        .find(|(name, ..)| name == alg_name)
        .map(|(_, alg, kind)| (*alg, *kind))
        .ok_or(TokenError::AlgorithmNotAllowed)?;
    // RFC 8725 §3.11 / RFC 9068 §2.1: explicit typing, when the issuer sets it.
    if let Some(want) = &issuer.typ {
        let got = header
            .get("typ")
            .and_then(Json::as_str)
            .ok_or(TokenError::BadHeader("typ is missing"))?;
        let got = got.to_ascii_lowercase();
        let got = got.strip_prefix("application/").unwrap_or(&got);
        if got != want.to_ascii_lowercase() {
            return Err(TokenError::BadHeader("typ is not the one this issuer uses"));
        }
    }
    Ok(Parsed {
        issuer,
        index,
        alg,
        kind,
        kid,
        signing_input,
        signature,
        claims,
    })
}

/// A base64url JSON object with at most `max_items` elements in any array or
/// object of it. Duplicate member names (also differing only in case) are
/// refused: parsers disagree on which one counts (RFC 7515 §4, RFC 8725
/// §3.4's spirit), and the token may travel on to the upstream.
fn decode_object(part: &str, max_items: usize) -> Result<Map<String, Json>, JsonRefused> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JsonRefused::Invalid)?;
    match crate::request::input::strict_json_within(&bytes, max_items)? {
        Json::Object(map) => Ok(map),
        _ => Err(JsonRefused::Invalid),
    }
}

/// A NumericDate (RFC 7519 §2): a JSON number of seconds. Fractions are cut.
fn numeric_date(claims: &Map<String, Json>, name: &'static str) -> Result<Option<u64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Json::Number(n)) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .map(Some)
            .ok_or(TokenError::ClaimType(name)),
        Some(_) => Err(TokenError::ClaimType(name)),
    }
}

fn optional_string(
    claims: &Map<String, Json>,
    name: &'static str,
) -> Result<Option<String>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(TokenError::ClaimType(name)),
    }
}

fn check_claims(
    issuer: &Issuer,
    mut claims: Map<String, Json>,
    now: SystemTime,
    max_claim_items: usize,
) -> Result<Verified, TokenError> {
    let now = crate::request::input::unix_seconds(now);
    // RFC 7519 §4.1: registered claims with the wrong JSON type are refused, so
    // a rule never compares a claim it cannot read the way the issuer meant.
    let subject = optional_string(&claims, "sub")?;
    let token_id = optional_string(&claims, "jti")?;
    for name in ["client_id", "azp", "acr"] {
        optional_string(&claims, name)?;
    }
    let exp = numeric_date(&claims, "exp")?.ok_or(TokenError::MissingClaim("exp".into()))?;
    let nbf = numeric_date(&claims, "nbf")?;
    let iat = numeric_date(&claims, "iat")?;
    numeric_date(&claims, "auth_time")?;
    let leeway = issuer.leeway;
    // RFC 7519 §4.1.4: expired when now is at or after exp (plus leeway).
    if now >= exp.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    // RFC 7519 §4.1.5.
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
        return Err(TokenError::NotYetValid);
    }
    if iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
        return Err(TokenError::IssuedInFuture);
    }
    if let Some(max) = issuer.max_lifetime {
        let iat = iat.ok_or(TokenError::MissingClaim("iat".into()))?;
        if exp.saturating_sub(iat) > max {
            return Err(TokenError::TooLongLived);
        }
    }
    // RFC 7519 §4.1.3 and RFC 8725 §3.9: one of our audiences must be named.
    let audience_ok = match claims.get("aud") {
        Some(Json::String(a)) => issuer.audiences.contains(a),
        Some(Json::Array(list)) => {
            if list.iter().any(|a| !a.is_string()) {
                return Err(TokenError::ClaimType("aud"));
            }
            list.iter().any(|a| {
                a.as_str()
                    .is_some_and(|a| issuer.audiences.iter().any(|w| w == a))
            })
        }
        Some(_) => return Err(TokenError::ClaimType("aud")),
        None => false,
    };
    if !audience_ok {
        return Err(TokenError::WrongAudience);
    }
    if let Some(missing) = issuer
        .required_claims
        .iter()
        .find(|c| !claims.contains_key(*c))
    {
        return Err(TokenError::MissingClaim(missing.clone()));
    }
    normalize_scope(&mut claims, max_claim_items)?;
    for (name, path) in &issuer.claim_mappings {
        let mut value = claims.get(&path[0]);
        for part in &path[1..] {
            value = value.and_then(|v| v.get(part));
        }
        // A missing path removes the claim: the token's own claim of that
        // name must never stand in for the mapped one.
        match value.cloned() {
            Some(v) => claims.insert(name.clone(), v),
            None => claims.remove(name),
        };
    }
    // After splitting and mapping: what conditions will see.
    super::claims_bound::within(&claims, max_claim_items)
        .map_err(|_| TokenError::ClaimsTooLarge)?;
    Ok(Verified {
        issuer: issuer.issuer.clone(),
        subject,
        token_id,
        claims: Arc::new(claims),
        expires: exp,
        sender_constraint: issuer.sender_constraint,
    })
}

/// `scope` (RFC 8693 §4.2: space-separated) and `scp` (a list or a string, as
/// some issuers send it) become one list under `scope`, of at most
/// `max_items` scopes like any other list in the claims. Claims from Envoy's
/// `jwt_authn` go through it too (`envoy_jwt`), so `scopes:` reads one form.
pub(super) fn normalize_scope(
    claims: &mut Map<String, Json>,
    max_items: usize,
) -> Result<(), TokenError> {
    let split = |s: &str| -> Vec<Json> {
        s.split(' ')
            .filter(|p| !p.is_empty())
            .map(|p| Json::String(p.to_string()))
            .collect()
    };
    let mut scopes = match claims.get("scope") {
        None => Vec::new(),
        Some(Json::String(s)) => split(s),
        Some(Json::Array(a)) if a.iter().all(Json::is_string) => a.clone(),
        Some(_) => return Err(TokenError::ClaimType("scope")),
    };
    match claims.get("scp") {
        None => {}
        Some(Json::String(s)) => scopes.extend(split(s)),
        Some(Json::Array(a)) if a.iter().all(Json::is_string) => scopes.extend(a.iter().cloned()),
        Some(_) => return Err(TokenError::ClaimType("scp")),
    }
    if scopes.len() > max_items {
        return Err(TokenError::ClaimsTooLarge);
    }
    if claims.contains_key("scope") || claims.contains_key("scp") {
        claims.insert("scope".into(), Json::Array(scopes));
    }
    Ok(())
}

#[cfg(test)]
mod token_cache_tests {
    use super::*;

    /// A header keeps the bodies' bound (256) whatever `max_claim_items`
    /// says, and is malformed beyond it; the payload has the claims' bound.
    #[test]
    fn headers_and_payloads_have_their_own_bounds() {
        let part = |v: Json| URL_SAFE_NO_PAD.encode(v.to_string());
        let header = |n: usize| part(serde_json::json!({"alg": "ES256", "x": vec![0; n]}));
        let payload = |n: usize| part(serde_json::json!({"iss": "i", "g": vec![0; n]}));
        let token = |h: String, p: String| format!("{h}.{p}.sig");
        let refused = |t: &str, max| parse(t, &[], max).err();
        let limit = crate::request::input::MAX_BODY_COLLECTION_LEN;
        // Neither part over its bound: refused only for the unknown issuer.
        let fits = token(header(limit), payload(2000));
        assert_eq!(refused(&fits, 2000), Some(TokenError::IssuerNotTrusted));
        assert_eq!(
            refused(&token(header(limit + 1), payload(1)), 2000),
            Some(TokenError::Malformed("header is not a JSON object"))
        );
        assert_eq!(refused(&fits, 1999), Some(TokenError::ClaimsTooLarge));
    }

    /// The map is made by the first verified token: a failure leaves it unmade.
    #[test]
    fn the_cache_is_made_on_first_use() {
        let cache = TokenCache::default();
        assert!(cache.entries.get().is_none() && cache.is_empty());
        let attempt = verify_cached("not.a.token", &[], &cache, SystemTime::now(), 1024);
        assert!(matches!(attempt, Attempt::Done(Err(_))));
        assert!(cache.entries.get().is_none(), "failures are never cached");
    }
}
