//! Sender-constrained tokens: a stolen token is useless without the key or the
//! certificate it is bound to.
//!
//! - **DPoP** (RFC 9449): `Authorization: DPoP <token>` plus one `DPoP` proof, a
//!   JWT signed by the client's key; the token's `cnf.jkt` names that key by its
//!   RFC 7638 thumbprint. [`check_proof`] follows RFC 9449 §4.3 step by step.
//! - **mTLS-bound tokens** (RFC 8705 §3): the token's `cnf.x5t#S256` names the
//!   client certificate Envoy verified and forwarded.
//!
//! A binding in a token is always enforced, whatever the issuer's
//! `sender_constraint` says; the setting only adds that a token *must* be bound.
//! These checks run on every request: they are never cached.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Deserialize;
use serde_json::{Map, Value as Json};
use sha2::{Digest as _, Sha256};

use super::keys::{self, KeyKind};
pub use super::shared_state::ReplayTicket;
use crate::foundation::reason::Reason;
use crate::request::input::Input;

/// Default window around now in which a proof's `iat` must lie.
pub const DEFAULT_PROOF_WINDOW: Duration = Duration::from_secs(60);
/// Default bound on remembered proof `jti`s per tenant.
pub const DEFAULT_REPLAY_CACHE_SIZE: usize = 100_000;
/// Largest DPoP proof accepted.
pub const MAX_PROOF_BYTES: usize = 4 * 1024;
/// How long a server nonce is valid, in whole slots of this length (the
/// current and the previous slot are accepted).
pub const NONCE_SLOT: Duration = Duration::from_secs(60);

/// Which binding an issuer's tokens must carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SenderConstraint {
    #[default]
    None,
    Dpop,
    Mtls,
    /// Either binding, but one of them.
    Any,
}

/// The tenant's DPoP settings, as written.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DpopSpec {
    /// The scheme and authority clients use to reach this tenant
    /// (`https://api.acme.example`): `htu` is compared against it and the path,
    /// never against the request's own (client-controlled) host header. A route
    /// can override it with the `context_extensions` key `dpop_origin`.
    pub public_origin: String,
    /// Proof algorithms accepted (asymmetric; default all that portcullis verifies).
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// `iat` must be within this much of now (default 60s).
    #[serde(default, with = "crate::foundation::duration::opt_duration")]
    #[schemars(with = "Option<String>")]
    pub proof_window: Option<Duration>,
    /// Most proof `jti`s remembered per tenant (per replica); when full, new
    /// proofs are refused, never old entries evicted.
    #[serde(default)]
    pub replay_cache_size: Option<usize>,
    /// Require server nonces (RFC 9449 §8): a file with the HMAC key every
    /// replica shares.
    #[serde(default)]
    pub nonce_key_file: Option<String>,
}

/// The tenant's DPoP settings, validated.
#[derive(Debug)]
pub struct Dpop {
    origin: String,
    algorithms: Vec<(String, jsonwebtoken::Algorithm, KeyKind)>,
    /// `algs` for challenges.
    pub algs: String,
    window: u64,
    replay: Arc<dyn ReplayCache>,
    /// The policy's own `replay_cache_size`, when it sets one.
    replay_size: Option<usize>,
    nonce_key: Option<Vec<u8>>,
    /// The tenant, for the shared store's replay keys.
    tenant: String,
}

const ALL_ALGS: [&str; 9] = [
    "ES256", "ES384", "EdDSA", "PS256", "PS384", "PS512", "RS256", "RS384", "RS512",
];

impl Dpop {
    pub fn compile(
        spec: &DpopSpec,
        tenant: &str,
        files: &crate::foundation::policy_files::FileScope,
    ) -> Result<Dpop, String> {
        let at = |m: String| format!("identity.dpop: {m}");
        let origin = normalize_origin(&spec.public_origin).ok_or_else(|| {
            at(format!(
                "public_origin {:?} must be scheme://host[:port]",
                spec.public_origin
            ))
        })?;
        let names: Vec<String> = if spec.algorithms.is_empty() {
            ALL_ALGS.iter().map(|a| a.to_string()).collect()
        } else {
            spec.algorithms.clone()
        };
        let algorithms = names
            .iter()
            .map(|a| keys::parse_algorithm(a).map(|(alg, kind)| (a.clone(), alg, kind)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(at)?;
        let window = spec.proof_window.unwrap_or(DEFAULT_PROOF_WINDOW).as_secs();
        if window == 0 || window > 600 {
            return Err(at("proof_window must be between 1s and 10m".into()));
        }
        let size = spec.replay_cache_size.unwrap_or(DEFAULT_REPLAY_CACHE_SIZE);
        if size == 0 {
            return Err(at("replay_cache_size must be at least 1".into()));
        }
        let nonce_key = match &spec.nonce_key_file {
            None => None,
            Some(f) => {
                let key = files.read("nonce_key_file", f).map_err(at)?;
                if key.len() < 32 {
                    return Err(at("nonce_key_file must hold at least 32 bytes".into()));
                }
                Some(key)
            }
        };
        Ok(Dpop {
            origin,
            algs: names.join(" "),
            algorithms,
            window,
            replay: replay_cache_for(tenant, size),
            replay_size: spec.replay_cache_size,
            nonce_key,
            tenant: tenant.to_string(),
        })
    }

    /// The server's `limits.replay_cache_size`: the most a policy may set, and
    /// the size of a policy that sets none when it is under the default.
    pub fn limit_replay_cache(&mut self, tenant: &str, limit: usize) -> Result<(), String> {
        match self.replay_size {
            Some(n) if n > limit => Err(format!(
                "identity.dpop: replay_cache_size {n} is over the server's limits.replay_cache_size {limit}"
            )),
            None if limit < DEFAULT_REPLAY_CACHE_SIZE => {
                self.replay = replay_cache_for(tenant, limit);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Records a proof in this replica's own cache: `Err` when it was used
    /// before here (or the cache is full).
    pub fn record_local(&self, ticket: &ReplayTicket, now: u64) -> Result<(), BindingError> {
        self.replay.record(&ticket.local, ticket.until, now)
    }

    /// A fresh server nonce (for the `DPoP-Nonce` header).
    pub fn nonce(&self, now: u64) -> Option<String> {
        make_nonce(self.nonce_key.as_ref()?, now / NONCE_SLOT.as_secs())
    }
}

/// Remembers proof `jti`s so each proof is used once. Behind a trait so a
/// store shared by replicas can replace the in-memory one; the in-memory cache
/// is per replica, so a proof replayed to another replica within the window is
/// not caught by it.
pub trait ReplayCache: Send + Sync + std::fmt::Debug {
    /// Records `jti` until `until` (unix seconds). `Err` when it was seen, or
    /// the cache is full.
    fn record(&self, jti: &str, until: u64, now: u64) -> Result<(), BindingError>;
}

/// A bounded in-memory replay cache. When full (after dropping expired
/// entries) it refuses new proofs rather than forget old ones. Expired entries
/// leave from the front of an insertion-ordered queue, so no check ever scans
/// the whole cache.
#[derive(Debug)]
pub struct MemoryReplayCache {
    capacity: std::sync::atomic::AtomicUsize,
    state: Mutex<ReplayState>,
}

#[derive(Debug, Default)]
struct ReplayState {
    seen: HashMap<[u8; 32], u64>,
    /// `(until, key)` in insertion order; `until` grows with time, so the
    /// front expires first (an entry out of order just leaves a little late).
    order: std::collections::VecDeque<(u64, [u8; 32])>,
}

impl MemoryReplayCache {
    pub fn new(capacity: usize) -> MemoryReplayCache {
        MemoryReplayCache {
            capacity: std::sync::atomic::AtomicUsize::new(capacity),
            state: Mutex::new(ReplayState::default()),
        }
    }
}

impl ReplayCache for MemoryReplayCache {
    fn record(&self, jti: &str, until: u64, now: u64) -> Result<(), BindingError> {
        let key: [u8; 32] = Sha256::digest(jti.as_bytes()).into();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let ReplayState { seen, order } = &mut *state;
        while let Some(&(u, k)) = order.front() {
            if u > now {
                break;
            }
            order.pop_front();
            if seen.get(&k) == Some(&u) {
                seen.remove(&k);
            }
        }
        if seen.get(&key).is_some_and(|u| *u > now) {
            return Err(BindingError::Replayed);
        }
        if seen.len() >= self.capacity.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(BindingError::ReplayCacheFull);
        }
        seen.insert(key, until);
        order.push_back((until, key));
        Ok(())
    }
}

/// One replay cache per tenant for the life of the process: a policy reload
/// must not forget which proofs were used.
fn replay_cache_for(tenant: &str, size: usize) -> Arc<dyn ReplayCache> {
    type Caches = Mutex<HashMap<String, Arc<MemoryReplayCache>>>;
    static CACHES: LazyLock<Caches> = LazyLock::new(|| Mutex::new(HashMap::new()));
    let mut caches = CACHES.lock().unwrap_or_else(|e| e.into_inner());
    // By tenant only: a reload that changes the size keeps what was seen.
    let cache = caches
        .entry(tenant.to_string())
        .or_insert_with(|| Arc::new(MemoryReplayCache::new(size)));
    cache
        .capacity
        .store(size, std::sync::atomic::Ordering::Relaxed);
    Arc::clone(cache) as Arc<dyn ReplayCache>
}

/// Why a binding check failed. Messages never quote a token or a proof.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    #[error("DPoP proof: {0}")]
    BadProof(&'static str),
    #[error("DPoP proof was used before")]
    Replayed,
    #[error("DPoP replay cache is full")]
    ReplayCacheFull,
    #[error("a server nonce is required")]
    UseNonce,
    #[error("token binding: {0}")]
    Mismatch(&'static str),
    #[error("this issuer's tokens must be sender-constrained ({0})")]
    Required(&'static str),
}

impl BindingError {
    pub fn reason(&self) -> Reason {
        match self {
            BindingError::BadProof(_) => Reason::InvalidDpopProof,
            BindingError::Replayed => Reason::DpopProofReplayed,
            BindingError::ReplayCacheFull => Reason::DpopReplayCacheFull,
            BindingError::UseNonce => Reason::UseDpopNonce,
            BindingError::Mismatch(_) | BindingError::Required(_) => Reason::TokenBindingMismatch,
        }
    }
}

/// How the request's token is bound, as rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// `none`, `dpop` or `mtls`.
    pub kind: &'static str,
    /// The DPoP key's RFC 7638 thumbprint, or the certificate's SHA-256.
    pub thumbprint: Option<String>,
    /// The DPoP proof to record as used, once the whole identity holds; the
    /// pipeline records it ([`crate::identity::authenticate`] in this
    /// replica's cache, or the shared store).
    pub replay: Option<ReplayTicket>,
}

impl Default for Binding {
    fn default() -> Self {
        Binding {
            kind: "none",
            thumbprint: None,
            replay: None,
        }
    }
}

/// Checks the token's binding (and the DPoP proof when the token came with the
/// DPoP scheme).
pub fn check(
    dpop: Option<&Dpop>,
    required: SenderConstraint,
    dpop_scheme: bool,
    claims: &Map<String, Json>,
    token: &str,
    input: &Input,
) -> Result<Binding, BindingError> {
    // RFC 7800 §3.1: `cnf` names how the token is confirmed. A confirmation
    // method portcullis does not check (`jwk`, `kid`, `x5t`, ...) or a member of
    // the wrong type would otherwise make a bound token pass as a bearer one.
    let (jkt, x5t) = match claims.get("cnf") {
        None => (None, None),
        Some(Json::Object(cnf)) => {
            let mut jkt = None;
            let mut x5t = None;
            for (name, value) in cnf {
                match (name.as_str(), value) {
                    ("jkt", Json::String(v)) => jkt = Some(v.as_str()),
                    ("x5t#S256", Json::String(v)) => x5t = Some(v.as_str()),
                    _ => {
                        return Err(BindingError::Mismatch(
                            "cnf holds a confirmation method portcullis cannot check",
                        ));
                    }
                }
            }
            (jkt, x5t)
        }
        Some(_) => return Err(BindingError::Mismatch("cnf is not an object")),
    };
    let mut binding = Binding::default();
    let mut replay = None;
    if dpop_scheme {
        let dpop = dpop.ok_or(BindingError::BadProof(
            "DPoP is not configured for this tenant",
        ))?;
        let proof = check_proof(dpop, token, input)?;
        // RFC 9449 §7.1: the token must be bound to the proof's key.
        match jkt {
            Some(jkt) if constant_time_eq(jkt, &proof.thumbprint) => {}
            Some(_) => return Err(BindingError::Mismatch("cnf.jkt is not the proof's key")),
            None => return Err(BindingError::Mismatch("the token is not DPoP-bound")),
        }
        binding = Binding {
            kind: "dpop",
            thumbprint: Some(proof.thumbprint.clone()),
            replay: None,
        };
        replay = Some((dpop, proof));
    } else if jkt.is_some() {
        // RFC 9449 §7.1: a DPoP-bound token sent as a bearer token is refused.
        return Err(BindingError::Mismatch(
            "a DPoP-bound token was sent as Bearer",
        ));
    }
    if let Some(x5t) = x5t {
        // RFC 8705 §3.1: the certificate of this connection must be the bound one.
        let cert = input
            .context
            .peer
            .as_ref()
            .and_then(|p| p.certificate.as_deref())
            .ok_or(BindingError::Mismatch(
                "no client certificate for a certificate-bound token",
            ))?;
        let der = first_certificate_der(cert)
            .ok_or(BindingError::Mismatch("the client certificate is not PEM"))?;
        let thumbprint = URL_SAFE_NO_PAD.encode(Sha256::digest(&der));
        if !constant_time_eq(x5t, &thumbprint) {
            return Err(BindingError::Mismatch(
                "cnf.x5t#S256 is not this client certificate",
            ));
        }
        if binding.kind == "none" {
            binding = Binding {
                kind: "mtls",
                thumbprint: Some(thumbprint),
                replay: None,
            };
        }
    }
    let ok = match required {
        SenderConstraint::None => true,
        SenderConstraint::Dpop => binding.kind == "dpop",
        SenderConstraint::Mtls => x5t.is_some(),
        SenderConstraint::Any => binding.kind != "none",
    };
    if !ok {
        return Err(BindingError::Required(match required {
            SenderConstraint::Dpop => "dpop",
            SenderConstraint::Mtls => "mtls",
            _ => "dpop or mtls",
        }));
    }
    // RFC 9449 §11.1: the proof's jti is recorded last, once everything else
    // holds, so proofs that fail (e.g. made with a thief's own key) cannot fill
    // the tenant's replay cache: the ticket goes with the identity, and is
    // recorded once the whole identity holds.
    if let Some((dpop, proof)) = replay {
        binding.replay = Some(ReplayTicket::new(
            &dpop.tenant,
            &proof.thumbprint,
            proof.replay_key,
            proof.until,
        ));
    }
    Ok(binding)
}

/// A proof that passed every check but the replay check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// The RFC 7638 thumbprint of the proof's key.
    pub thumbprint: String,
    replay_key: String,
    until: u64,
}

impl Proof {
    /// Records the proof's `jti`; `Err` when it was used before (or the cache
    /// is full).
    pub fn record(&self, dpop: &Dpop, now: u64) -> Result<(), BindingError> {
        dpop.replay.record(&self.replay_key, self.until, now)
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// RFC 9449 §4.3: validates the one DPoP proof of the request, for `token`,
/// except the replay check, which [`Proof::record`] makes once the binding holds.
pub fn check_proof(dpop: &Dpop, token: &str, input: &Input) -> Result<Proof, BindingError> {
    let bad = BindingError::BadProof;
    let r = &input.resource;
    // 1. Exactly one DPoP header: Envoy joins repeated headers with commas.
    let proof = r.headers.get("dpop").ok_or(bad("no DPoP header"))?.trim();
    if proof.contains(',') {
        return Err(bad("more than one DPoP header"));
    }
    if proof.len() > MAX_PROOF_BYTES {
        return Err(bad("proof too large"));
    }
    // 2. A well-formed JWS.
    let mut parts = proof.split('.');
    let (Some(h), Some(p), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not a compact JWS"));
    };
    let object = |part: &str| {
        let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
        match crate::request::input::strict_json(&bytes)? {
            Json::Object(m) => Some(m),
            _ => None,
        }
    };
    let header = object(h).ok_or(bad("header is not a JSON object"))?;
    let claims = object(p).ok_or(bad("payload is not a JSON object"))?;
    // 4. typ is dpop+jwt.
    if header.get("typ").and_then(Json::as_str) != Some("dpop+jwt") {
        return Err(bad("typ is not dpop+jwt"));
    }
    if header.contains_key("crit") {
        return Err(bad("unknown critical header"));
    }
    // 5. An asymmetric algorithm this tenant allows.
    let alg_name = header
        .get("alg")
        .and_then(Json::as_str)
        .ok_or(bad("no alg"))?;
    let (alg, kind) = dpop
        .algorithms
        .iter()
        .find(|(n, ..)| n == alg_name)
        .map(|(_, a, k)| (*a, *k))
        .ok_or(bad("algorithm not allowed"))?;
    // 6. The jwk header is a public key (no private members, checked on the raw
    //    JSON) that fits the algorithm.
    let jwk = header
        .get("jwk")
        .and_then(Json::as_object)
        .ok_or(bad("no jwk header"))?;
    let key = keys::public_key_from_jwk(jwk).map_err(|_| bad("jwk is not a usable public key"))?;
    if !key.fits(alg, kind) {
        return Err(bad("jwk does not fit the algorithm"));
    }
    // 7. The signature verifies with that key.
    let signing_input = &proof[..h.len() + 1 + p.len()];
    if !key.verify(alg, signing_input.as_bytes(), sig) {
        return Err(bad("signature does not verify"));
    }
    // 9. htm is the request's method.
    if claims.get("htm").and_then(Json::as_str) != Some(r.method.as_str()) {
        return Err(bad("htm is not the request method"));
    }
    // 10. htu is this request's URI without query and fragment (RFC 3986 §6
    //     normalization), on the configured public origin.
    let origin = match r.context_extensions.get("dpop_origin") {
        // A route that names its origin badly is a misconfiguration: deny
        // rather than fall back to the tenant's.
        Some(o) => normalize_origin(o).ok_or(bad("the route's dpop_origin is not an origin"))?,
        None => dpop.origin.clone(),
    };
    let htu = claims
        .get("htu")
        .and_then(Json::as_str)
        .ok_or(bad("no htu"))?;
    if normalize_htu(htu).as_deref() != Some(format!("{origin}{}", r.path).as_str()) {
        return Err(bad("htu is not this request's URI"));
    }
    // 11. iat within the window.
    let now = crate::request::input::unix_seconds(input.context.time);
    let iat = claims
        .get("iat")
        .and_then(Json::as_u64)
        .ok_or(bad("no iat"))?;
    if iat.abs_diff(now) > dpop.window {
        return Err(bad("iat is outside the accepted window"));
    }
    // 12. ath is the hash of the access token sent with it.
    let ath = claims
        .get("ath")
        .and_then(Json::as_str)
        .ok_or(bad("no ath"))?;
    if !constant_time_eq(
        ath,
        &URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes())),
    ) {
        return Err(bad("ath is not this access token's hash"));
    }
    // 8 (RFC 9449 §8): the server nonce, when the tenant requires one.
    if let Some(key) = &dpop.nonce_key {
        let nonce = claims
            .get("nonce")
            .and_then(Json::as_str)
            .ok_or(BindingError::UseNonce)?;
        let slot = now / NONCE_SLOT.as_secs();
        let fresh = [slot, slot.saturating_sub(1)]
            .iter()
            .any(|s| make_nonce(key, *s).is_some_and(|n| constant_time_eq(nonce, &n)));
        if !fresh {
            return Err(BindingError::UseNonce);
        }
    }
    // 3 (§11.1): a jti, checked for replay once the binding holds.
    let jti = claims
        .get("jti")
        .and_then(Json::as_str)
        .ok_or(bad("no jti"))?;
    if jti.is_empty() || jti.len() > 256 {
        return Err(bad("bad jti"));
    }
    Ok(Proof {
        thumbprint: jwk_thumbprint(jwk).ok_or(bad("jwk has no thumbprint"))?,
        replay_key: format!("{jti}\u{0}{htu}"),
        until: iat + dpop.window + 1,
    })
}

/// RFC 7638 §3: SHA-256 over the required members, in lexicographic order,
/// with no whitespace.
pub fn jwk_thumbprint(jwk: &Map<String, Json>) -> Option<String> {
    let s = |k: &str| jwk.get(k).and_then(Json::as_str);
    let members: Vec<(&str, &str)> = match s("kty")? {
        "EC" => vec![
            ("crv", s("crv")?),
            ("kty", "EC"),
            ("x", s("x")?),
            ("y", s("y")?),
        ],
        "RSA" => vec![("e", s("e")?), ("kty", "RSA"), ("n", s("n")?)],
        "OKP" => vec![("crv", s("crv")?), ("kty", "OKP"), ("x", s("x")?)],
        _ => return None,
    };
    let canonical = format!(
        "{{{}}}",
        members
            .iter()
            .map(|(k, v)| format!("{}:{}", Json::from(*k), Json::from(*v)))
            .collect::<Vec<_>>()
            .join(",")
    );
    Some(URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())))
}

/// `scheme://host[:port]`, lower-cased, default port dropped; `None` when it
/// is not a bare http(s) origin.
fn normalize_origin(origin: &str) -> Option<String> {
    let url = reqwest::Url::parse(origin).ok()?;
    let bare = url.path() == "/" && url.query().is_none() && url.fragment().is_none();
    if !bare || !matches!(url.scheme(), "https" | "http") || !url.username().is_empty() {
        return None;
    }
    Some(url.origin().ascii_serialization())
}

/// An `htu` normalized per RFC 3986 §6 (scheme and host lower-cased, default
/// port dropped, dot segments resolved), without query and fragment.
fn normalize_htu(htu: &str) -> Option<String> {
    let url = reqwest::Url::parse(htu).ok()?;
    if !matches!(url.scheme(), "https" | "http") || !url.username().is_empty() {
        return None;
    }
    Some(format!(
        "{}{}",
        url.origin().ascii_serialization(),
        url.path()
    ))
}

fn make_nonce(key: &[u8], slot: u64) -> Option<String> {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
    mac.update(&slot.to_be_bytes());
    let tag = mac.finalize().into_bytes();
    let mut out = slot.to_be_bytes().to_vec();
    out.extend_from_slice(&tag[..16]);
    Some(URL_SAFE_NO_PAD.encode(out))
}

/// The DER of the first certificate in a PEM text.
fn first_certificate_der(pem: &str) -> Option<Vec<u8>> {
    let start = pem.find("-----BEGIN CERTIFICATE-----")? + "-----BEGIN CERTIFICATE-----".len();
    let end = start + pem[start..].find("-----END CERTIFICATE-----")?;
    let body: String = pem[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD.decode(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc7638_thumbprint_example() {
        // RFC 7638 §3.1.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            jwk_thumbprint(jwk.as_object().unwrap()).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    /// RFC 9449 §7.1, Figure 13: the proof for a protected-resource request,
    /// with the access token of Figure 12; its key's thumbprint is §6.1's jkt.
    const RFC9449_PROOF: &str = concat!(
        "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19",
        ".eyJqdGkiOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIjoiR0VUIiwiaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5leGFtcGxlLm9yZy9wcm90ZWN0ZWRyZXNvdXJjZSIsImlhdCI6MTU2MjI2MjYxOCwiYXRoIjoiZlVIeU8ycjJaM0RaNTNFc05yV0JiMHhXWG9hTnk1OUlpS0NBcWtzbVFFbyJ9",
        ".2oW9RP35yRqzhrtNP86L-Ey71EOptxRimPPToA1plemAgR6pxHF8y6-yqyVnmcw6Fy1dqd-jfxSYoMxhAJpLjA"
    );
    const RFC9449_TOKEN: &str = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";
    const RFC9449_JKT: &str = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";

    fn rfc_request(proof: &str, method: &str, path: &str, at: u64) -> Input {
        let mut input = Input::default();
        input.resource.method = method.into();
        input.resource.path = path.into();
        input.resource.headers.insert("dpop".into(), proof.into());
        input.context.time = std::time::UNIX_EPOCH + Duration::from_secs(at);
        input
    }

    fn rfc_dpop(tenant: &str) -> Dpop {
        let spec: DpopSpec =
            serde_yaml::from_str("public_origin: https://resource.example.org").unwrap();
        Dpop::compile(
            &spec,
            tenant,
            &crate::foundation::policy_files::FileScope::new(".", &[]),
        )
        .unwrap()
    }

    #[test]
    fn rfc9449_example_proof_verifies_and_is_used_once() {
        let dpop = rfc_dpop("rfc9449-vector");
        let input = rfc_request(RFC9449_PROOF, "GET", "/protectedresource", 1_562_262_618);
        let proof = check_proof(&dpop, RFC9449_TOKEN, &input).unwrap();
        assert_eq!(proof.thumbprint, RFC9449_JKT);
        assert!(proof.record(&dpop, 1_562_262_618).is_ok());
        // The same proof again: a replay.
        let again = check_proof(&dpop, RFC9449_TOKEN, &input).unwrap();
        assert_eq!(
            again.record(&dpop, 1_562_262_619),
            Err(BindingError::Replayed)
        );
    }

    #[test]
    fn rfc9449_example_proof_refused_for_another_request() {
        let dpop = rfc_dpop("rfc9449-negative");
        let t = 1_562_262_618;
        let cases: [(Input, &str, &str); 6] = [
            (
                rfc_request(RFC9449_PROOF, "POST", "/protectedresource", t),
                RFC9449_TOKEN,
                "htm",
            ),
            (
                rfc_request(RFC9449_PROOF, "GET", "/other", t),
                RFC9449_TOKEN,
                "htu",
            ),
            (
                rfc_request(RFC9449_PROOF, "GET", "/protectedresource", t + 3600),
                RFC9449_TOKEN,
                "iat",
            ),
            (
                rfc_request(RFC9449_PROOF, "GET", "/protectedresource", t - 3600),
                RFC9449_TOKEN,
                "iat",
            ),
            (
                rfc_request(RFC9449_PROOF, "GET", "/protectedresource", t),
                "another-token",
                "ath",
            ),
            (
                rfc_request(
                    &format!("{RFC9449_PROOF}, {RFC9449_PROOF}"),
                    "GET",
                    "/protectedresource",
                    t,
                ),
                RFC9449_TOKEN,
                "more than one",
            ),
        ];
        for (input, token, want) in cases {
            match check_proof(&dpop, token, &input) {
                Err(BindingError::BadProof(why)) => assert!(why.contains(want), "{want}: {why}"),
                other => panic!("{want}: {other:?}"),
            }
        }
        // The route's own origin, not the tenant's, when the route names one.
        let mut input = rfc_request(RFC9449_PROOF, "GET", "/protectedresource", t);
        input
            .resource
            .context_extensions
            .insert("dpop_origin".into(), "https://other.example.org".into());
        assert!(
            matches!(check_proof(&dpop, RFC9449_TOKEN, &input), Err(BindingError::BadProof(w)) if w.contains("htu"))
        );
    }

    #[test]
    fn rfc9449_jkt_of_the_example_key() {
        let jwk = json!({"kty": "EC", "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs", "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA", "crv": "P-256"});
        assert_eq!(
            jwk_thumbprint(jwk.as_object().unwrap()).unwrap(),
            RFC9449_JKT
        );
    }

    #[test]
    fn replay_cache_refuses_repeats_and_refuses_when_full() {
        let cache = MemoryReplayCache::new(2);
        assert!(cache.record("a", 100, 10).is_ok());
        assert_eq!(cache.record("a", 100, 11), Err(BindingError::Replayed));
        assert!(cache.record("b", 100, 11).is_ok());
        assert_eq!(
            cache.record("c", 100, 12),
            Err(BindingError::ReplayCacheFull)
        );
        // Once entries expire, room comes back.
        assert!(cache.record("c", 300, 150).is_ok());
        assert!(cache.record("a", 300, 150).is_ok(), "a expired at 100");
    }

    #[test]
    fn htu_normalization() {
        assert_eq!(
            normalize_htu("HTTPS://API.Example.com:443/a/b?q=1#f").as_deref(),
            Some("https://api.example.com/a/b")
        );
        assert_eq!(
            normalize_htu("https://api.example.com:8443/a").as_deref(),
            Some("https://api.example.com:8443/a")
        );
        assert_eq!(
            normalize_origin("https://api.example.com/").as_deref(),
            Some("https://api.example.com")
        );
        assert!(normalize_origin("https://api.example.com/x").is_none());
        assert!(normalize_htu("ftp://x/y").is_none());
    }

    #[test]
    fn nonces_are_per_slot_and_keyed() {
        let key = [7u8; 32];
        assert!(make_nonce(&key, 5).is_some());
        assert_eq!(make_nonce(&key, 5), make_nonce(&key, 5));
        assert_ne!(make_nonce(&key, 5), make_nonce(&key, 6));
        assert_ne!(make_nonce(&key, 5), make_nonce(&[8u8; 32], 5));
    }
}
