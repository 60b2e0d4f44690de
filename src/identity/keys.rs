//! An issuer's public keys: parsed from a JWKS (inline, a file, `jwks_uri` or
//! OIDC discovery) into verification keys that each know which algorithms they fit.
//!
//! Remote key sets are fetched by a bounded HTTP client and shared by every tenant
//! that names the same source (a process-wide registry of weak references), so a
//! policy reload keeps the keys it already has. A check never waits on the network
//! inside the pipeline: it reads the current keys, and when they are missing or a
//! `kid` is unknown it asks for a fetch ([`KeyLookup::Fetch`]); the async caller
//! waits for that fetch within Envoy's deadline and runs the check again.
//!
//! What this module must never do: choose a key from the token (`jku`, `x5u`,
//! `jwk`, `x5c` are never read), accept a symmetric or private key in a key set,
//! follow a redirect or a discovery document to another origin, or read an
//! unbounded response.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use aws_lc_rs::signature::{self as sig, ParsedPublicKey, RsaPublicKeyComponents};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value as Json};
use tokio::sync::watch;

use super::http;
use tokio::time::Instant;

/// Most keys kept from one key set.
pub const MAX_KEYS_PER_SET: usize = 64;
/// After a failed fetch, the next scheduled attempt waits this long.
pub const FETCH_RETRY: Duration = Duration::from_secs(5);
/// An unknown `kid` forces at most one fetch per issuer in this interval; in
/// between, every unknown `kid` is denied without a fetch (the negative cache).
pub const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// Which key type an algorithm needs (RFC 8725 §3.1: the algorithm must fit the
/// key, so a public RSA key can never be used as an HMAC secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

/// How many algorithms portcullis accepts.
const ALGORITHMS: usize = 9;

/// The asymmetric algorithms portcullis accepts: each one's name, the key
/// kind it needs and how aws-lc verifies it. HMAC (`HS*`) and `none` are not
/// here, so no configuration can enable them. A key keeps its parsed form for
/// an algorithm at that algorithm's position here ([`Key::verify`]).
static ACCEPTED: [(&str, Algorithm, KeyKind, Verification); ALGORITHMS] = {
    use KeyKind::{Ed25519, P256, P384, Rsa as RsaKey};
    use Verification::{Other, Rsa};
    [
        (
            "RS256",
            Algorithm::RS256,
            RsaKey,
            Rsa(&sig::RSA_PKCS1_2048_8192_SHA256),
        ),
        (
            "RS384",
            Algorithm::RS384,
            RsaKey,
            Rsa(&sig::RSA_PKCS1_2048_8192_SHA384),
        ),
        (
            "RS512",
            Algorithm::RS512,
            RsaKey,
            Rsa(&sig::RSA_PKCS1_2048_8192_SHA512),
        ),
        (
            "PS256",
            Algorithm::PS256,
            RsaKey,
            Rsa(&sig::RSA_PSS_2048_8192_SHA256),
        ),
        (
            "PS384",
            Algorithm::PS384,
            RsaKey,
            Rsa(&sig::RSA_PSS_2048_8192_SHA384),
        ),
        (
            "PS512",
            Algorithm::PS512,
            RsaKey,
            Rsa(&sig::RSA_PSS_2048_8192_SHA512),
        ),
        (
            "ES256",
            Algorithm::ES256,
            P256,
            Other(&sig::ECDSA_P256_SHA256_FIXED),
        ),
        (
            "ES384",
            Algorithm::ES384,
            P384,
            Other(&sig::ECDSA_P384_SHA384_FIXED),
        ),
        ("EdDSA", Algorithm::EdDSA, Ed25519, Other(&sig::ED25519)),
    ]
};

/// An algorithm portcullis accepts, and the key kind it needs.
pub fn parse_algorithm(name: &str) -> Result<(Algorithm, KeyKind), String> {
    if let Some((_, alg, kind, _)) = ACCEPTED.iter().find(|(n, ..)| *n == name) {
        return Ok((*alg, *kind));
    }
    Err(match name {
        "none" => "algorithm \"none\" is never accepted (RFC 8725 §3.2)".into(),
        h if h.starts_with("HS") => format!(
            "algorithm {h:?} is symmetric; portcullis verifies issuers' tokens with public keys only (RFC 8725 §3.1)"
        ),
        other => format!("algorithm {other:?} is not supported"),
    })
}

/// One verification key from a key set.
pub struct Key {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The JWK's own `alg`, when it names one: then only that algorithm fits.
    pub alg: Option<Algorithm>,
    material: Material,
    /// The key as aws-lc parses it, once per algorithm on first use, so a
    /// verification does not parse the key again (and, for RSA, keeps its
    /// Montgomery constants): ~2 µs of an RS256 verification's ~15.
    parsed: [OnceLock<Option<ParsedPublicKey>>; ALGORITHMS],
}

/// The public key's bytes, as aws-lc reads them.
enum Material {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed point: `04 || x || y`.
    Ec(Vec<u8>),
    Ed25519(Vec<u8>),
}

/// How aws-lc verifies one algorithm.
#[derive(Clone, Copy)]
enum Verification {
    Rsa(&'static sig::RsaParameters),
    Other(&'static dyn sig::VerificationAlgorithm),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish()
    }
}

impl Key {
    fn new(kid: Option<String>, kind: KeyKind, alg: Option<Algorithm>, material: Material) -> Key {
        Key {
            kid,
            kind,
            alg,
            material,
            parsed: [const { OnceLock::new() }; ALGORITHMS],
        }
    }

    pub fn fits(&self, alg: Algorithm, kind: KeyKind) -> bool {
        self.kind == kind && self.alg.is_none_or(|a| a == alg)
    }

    /// Whether `signature` (base64url, as in a compact JWS) is `alg`'s
    /// signature of `message` under this key. A key that does not fit `alg`
    /// ([`Key::fits`]: its type, and its JWK's own `alg` when it names one)
    /// verifies nothing, whatever its caller checked before.
    ///
    /// A key aws-lc cannot parse (an off-curve point, say) verifies nothing
    /// either, and that is remembered for this key and algorithm: it fails
    /// closed until the key set is replaced. RSA keys outside 2048–8192 bits
    /// and bad exponents are refused at each verification.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &str) -> bool {
        let Some(slot) = ACCEPTED.iter().position(|(_, a, ..)| *a == alg) else {
            return false;
        };
        let (_, _, kind, how) = ACCEPTED[slot];
        if !self.fits(alg, kind) {
            return false;
        }
        let parsed = self.parsed[slot].get_or_init(|| match (&self.material, how) {
            (Material::Rsa { n, e }, Verification::Rsa(params)) => RsaPublicKeyComponents {
                n: n.as_slice(),
                e: e.as_slice(),
            }
            .to_parsed_public_key(params)
            .ok(),
            (Material::Ec(bytes) | Material::Ed25519(bytes), Verification::Other(a)) => {
                ParsedPublicKey::new(a, bytes).ok()
            }
            _ => None,
        });
        let (Some(key), Ok(signature)) = (parsed, URL_SAFE_NO_PAD.decode(signature)) else {
            return false;
        };
        key.verify_sig(message, &signature).is_ok()
    }
}

/// A parsed key set. `generation` changes whenever the keys do, so cached
/// verifications made with old keys are never reused.
#[derive(Debug)]
pub struct KeySet {
    pub keys: Vec<Key>,
    pub generation: u64,
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

impl KeySet {
    /// Parses a JWKS document. Keys that are not for signatures, of a type
    /// portcullis does not verify with, or malformed are skipped and counted in
    /// the returned notes; a symmetric key or one with private members makes the
    /// whole set an error (it is a misconfiguration that leaks a secret).
    pub fn parse(document: &[u8]) -> Result<(KeySet, Vec<String>), String> {
        let doc: Json = serde_json::from_slice(document)
            .map_err(|e| format!("key set is not JSON (line {})", e.line()))?;
        let keys = doc
            .get("keys")
            .and_then(Json::as_array)
            .ok_or("key set has no \"keys\" array")?;
        let mut out = Vec::new();
        let mut notes = Vec::new();
        for (i, jwk) in keys.iter().enumerate() {
            if out.len() == MAX_KEYS_PER_SET {
                notes.push(format!(
                    "more than {MAX_KEYS_PER_SET} keys; the rest skipped"
                ));
                break;
            }
            let Json::Object(jwk) = jwk else {
                notes.push(format!("key {i} is not an object; skipped"));
                continue;
            };
            match parse_jwk(jwk) {
                Ok(Some(key)) => out.push(key),
                Ok(None) => notes.push(format!("key {i} is not a signature key; skipped")),
                Err(JwkError::Fatal(e)) => return Err(format!("key {i}: {e}")),
                Err(JwkError::Skip(e)) => notes.push(format!("key {i}: {e}; skipped")),
            }
        }
        Ok((
            KeySet {
                keys: out,
                generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            },
            notes,
        ))
    }

    /// The key for a token: by `kid` when the token names one; without a `kid`,
    /// the one key that fits the algorithm (two that fit is ambiguous: none).
    pub fn find(&self, kid: Option<&str>, alg: Algorithm, kind: KeyKind) -> KeyMatch<'_> {
        match kid {
            Some(kid) => match self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
                Some(k) if k.fits(alg, kind) => KeyMatch::Found(k),
                Some(_) => KeyMatch::WrongType,
                None => KeyMatch::Unknown,
            },
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.fits(alg, kind));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => KeyMatch::Found(k),
                    _ => KeyMatch::Unknown,
                }
            }
        }
    }
}

#[derive(Debug)]
pub enum KeyMatch<'a> {
    Found(&'a Key),
    /// The `kid` names a key of another type or algorithm.
    WrongType,
    Unknown,
}

enum JwkError {
    Fatal(String),
    Skip(String),
}

/// Members that only a private or symmetric JWK has (RFC 7518 §6).
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "k"];

/// One public key from a JWK that a client presents (a DPoP proof's `jwk`):
/// private or symmetric members, unsupported types and keys not for
/// signatures are all errors.
pub(crate) fn public_key_from_jwk(jwk: &Map<String, Json>) -> Result<Key, String> {
    match parse_jwk(jwk) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err("the key is not for signatures".into()),
        Err(JwkError::Fatal(e) | JwkError::Skip(e)) => Err(format!("the key {e}")),
    }
}

fn parse_jwk(jwk: &Map<String, Json>) -> Result<Option<Key>, JwkError> {
    let s = |name: &str| jwk.get(name).and_then(Json::as_str);
    if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| jwk.contains_key(**m)) {
        return Err(JwkError::Fatal(format!(
            "holds the private or symmetric member {m:?}; publish public keys only"
        )));
    }
    if s("use").is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    if let Some(ops) = jwk.get("key_ops").and_then(Json::as_array)
        && !ops.iter().any(|o| o == "verify")
    {
        return Ok(None);
    }
    let kid = match jwk.get("kid") {
        None => None,
        Some(Json::String(k)) => Some(k.clone()),
        Some(_) => return Err(JwkError::Skip("kid is not a string".into())),
    };
    let alg = match s("alg") {
        None => None,
        Some(a) => Some(parse_algorithm(a).map_err(JwkError::Skip)?),
    };
    let bad = |what: &str| JwkError::Skip(format!("bad {what}"));
    let (kind, material) = match (s("kty"), s("crv")) {
        (Some("RSA"), _) => {
            let n = URL_SAFE_NO_PAD
                .decode(s("n").ok_or(bad("n"))?)
                .map_err(|_| bad("n"))?;
            let e = URL_SAFE_NO_PAD
                .decode(s("e").ok_or(bad("e"))?)
                .map_err(|_| bad("e"))?;
            let bits = n.len() * 8;
            // RFC 7518 §3.3: 2048 bits or larger.
            if bits < 2048 {
                return Err(JwkError::Skip(format!(
                    "RSA key of {bits} bits (2048 at least)"
                )));
            }
            (KeyKind::Rsa, Material::Rsa { n, e })
        }
        (Some("EC"), Some(crv @ ("P-256" | "P-384"))) => {
            let (x, y) = (s("x").ok_or(bad("x"))?, s("y").ok_or(bad("y"))?);
            let want = if crv == "P-256" { 32 } else { 48 };
            let mut point = vec![4];
            for c in [x, y] {
                let c = URL_SAFE_NO_PAD.decode(c).map_err(|_| bad("coordinate"))?;
                if c.len() != want {
                    return Err(bad("coordinate length"));
                }
                point.extend_from_slice(&c);
            }
            let kind = if crv == "P-256" {
                KeyKind::P256
            } else {
                KeyKind::P384
            };
            (kind, Material::Ec(point))
        }
        (Some("OKP"), Some("Ed25519")) => {
            let x = URL_SAFE_NO_PAD
                .decode(s("x").ok_or(bad("x"))?)
                .map_err(|_| bad("x"))?;
            if x.len() != 32 {
                return Err(bad("Ed25519 key length"));
            }
            (KeyKind::Ed25519, Material::Ed25519(x))
        }
        (Some("oct"), _) => {
            return Err(JwkError::Fatal(
                "is a symmetric (oct) key; portcullis verifies with public keys only".into(),
            ));
        }
        (kty, crv) => {
            return Err(JwkError::Skip(format!(
                "unsupported key type {:?}/{:?}",
                kty.unwrap_or("?"),
                crv.unwrap_or("-")
            )));
        }
    };
    if let Some((_, alg_kind)) = alg
        && alg_kind != kind
    {
        return Err(JwkError::Skip("alg does not fit the key type".into()));
    }
    Ok(Some(Key::new(kid, kind, alg.map(|(a, _)| a), material)))
}

/// Where a remote key set comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RemoteSource {
    /// A JWKS URL.
    Jwks(String),
    /// OIDC discovery: `{issuer}/.well-known/openid-configuration`, whose
    /// `jwks_uri` must be on the issuer's origin or one of these origins.
    Discovery {
        issuer: String,
        allowed_origins: Vec<String>,
    },
}

/// How a remote key set is kept fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RefreshPolicy {
    /// Fetch again after this long.
    pub ttl: Duration,
    /// Keep using the last good keys this long after the last successful fetch
    /// while the issuer is down; after that, checks get 503 `keys_unavailable`.
    pub max_stale: Duration,
}

/// The state of one remote key set.
#[derive(Debug)]
struct Fetched {
    keys: Arc<KeySet>,
    at: Instant,
}

/// A remote key set shared by every tenant that names the same source.
#[derive(Debug)]
pub struct RemoteKeys {
    pub source: RemoteSource,
    pub refresh: RefreshPolicy,
    client: reqwest::Client,
    current: ArcSwapOption<Fetched>,
    in_flight: AtomicBool,
    /// Bumped after every fetch attempt; waiters watch it.
    attempts: watch::Sender<u64>,
    /// When the next scheduled fetch is due.
    due: Mutex<Instant>,
    last_forced: Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
}

/// Entries by source, refresh policy and TLS settings (a fingerprint of the
/// CA and client certificate files, so changed files get a new client).
type RegistryKey = (RemoteSource, RefreshPolicy, Option<String>);
type Registry = Mutex<HashMap<RegistryKey, Weak<RemoteKeys>>>;
static REGISTRY: LazyLock<Registry> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// What a check can do with an issuer's keys now.
#[derive(Debug)]
pub enum KeyLookup {
    Ready(Arc<KeySet>),
    /// No usable keys: fetch (and the caller may wait for it).
    Fetch(Arc<RemoteKeys>),
}

impl RemoteKeys {
    /// The shared entry for a source, created on first use.
    pub fn shared(
        source: RemoteSource,
        refresh: RefreshPolicy,
        client: (reqwest::Client, Option<String>),
    ) -> Arc<RemoteKeys> {
        let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        registry.retain(|_, w| w.strong_count() > 0);
        let (client, fingerprint) = client;
        let key = (source.clone(), refresh, fingerprint);
        if let Some(existing) = registry.get(&key).and_then(Weak::upgrade) {
            return existing;
        }
        let keys = Arc::new(RemoteKeys {
            source,
            refresh,
            client,
            current: ArcSwapOption::empty(),
            in_flight: AtomicBool::new(false),
            attempts: watch::channel(0).0,
            due: Mutex::new(Instant::now()),
            last_forced: Mutex::new(None),
            last_error: Mutex::new(None),
        });
        registry.insert(key, Arc::downgrade(&keys));
        keys
    }

    /// Every remote key set some tenant still uses.
    pub fn all() -> Vec<Arc<RemoteKeys>> {
        let registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        registry.values().filter_map(Weak::upgrade).collect()
    }

    /// The keys, if some were fetched and are not older than `max_stale`.
    pub fn keys(&self) -> Option<Arc<KeySet>> {
        let current = self.current.load_full()?;
        (current.at.elapsed() <= self.refresh.max_stale).then(|| Arc::clone(&current.keys))
    }

    pub fn loaded_once(&self) -> bool {
        self.current.load().is_some()
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A check met a `kid` these keys lack: allow one fetch per
    /// [`UNKNOWN_KID_REFETCH_INTERVAL`].
    pub fn may_refetch_for_unknown_kid(&self) -> bool {
        let mut last = self.last_forced.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < UNKNOWN_KID_REFETCH_INTERVAL) {
            return false;
        }
        *last = Some(now);
        *self.due.lock().unwrap_or_else(|e| e.into_inner()) = now;
        true
    }

    /// Whether a scheduled fetch is due.
    pub fn is_due(&self) -> bool {
        *self.due.lock().unwrap_or_else(|e| e.into_inner()) <= Instant::now()
    }

    /// Starts a fetch unless one is in flight: however many checks ask, one
    /// request goes to the issuer. Must be called inside a tokio runtime.
    pub fn start_fetch(self: &Arc<Self>) {
        if self
            .in_flight
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        /// Clears `in_flight` and wakes waiters however the fetch ends (even by
        /// a panic), so one failure never stops fetching for good.
        struct Done(Arc<RemoteKeys>);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.in_flight.store(false, Ordering::Release);
                self.0.attempts.send_modify(|n| *n += 1);
            }
        }
        let this = Arc::clone(self);
        let started = Instant::now();
        let span = tracing::info_span!(
            "key_fetch",
            issuer = issuer_label(&this.source),
            result = tracing::field::Empty
        );
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let done = Done(Arc::clone(&this));
                let result = fetch(&this.client, &this.source)
                    .await
                    .and_then(|(set, notes)| {
                        // An empty set would deny every token: keep the last good keys.
                        if set.keys.is_empty() {
                            Err(format!("key set has no usable key ({})", notes.join("; ")))
                        } else {
                            Ok((set, notes))
                        }
                    });
                let next = match result {
                    Ok((set, notes)) => {
                        if !notes.is_empty() {
                            tracing::warn!(source = %this.source, notes = ?notes, "key set had keys that were skipped");
                        }
                        tracing::info!(source = %this.source, keys = set.keys.len(), "keys fetched");
                        this.current.store(Some(Arc::new(Fetched {
                            keys: Arc::new(set),
                            at: Instant::now(),
                        })));
                        *this.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        super::counters::key_fetch(issuer_label(&this.source), true);
                        tracing::Span::current().record("result", "ok");
                        this.refresh.ttl
                    }
                    Err(e) => {
                        tracing::warn!(source = %this.source, error = %e, "key fetch failed");
                        *this.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                        super::counters::key_fetch(issuer_label(&this.source), false);
                        tracing::Span::current().record("result", "error");
                        FETCH_RETRY.min(this.refresh.ttl)
                    }
                };
                // An unknown kid seen while this fetch was already under way may
                // be newer than what it got: leave the next fetch due at once.
                let forced_meanwhile = this
                    .last_forced
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_some_and(|t| t > started);
                *this.due.lock().unwrap_or_else(|e| e.into_inner()) = if forced_meanwhile {
                    Instant::now()
                } else {
                    Instant::now() + next
                };
                drop(done);
            },
            span,
        ));
    }

    /// Starts a fetch if one is due (or joins the one in flight) and waits for
    /// it to end, at most `limit`. After a failed fetch none is due for
    /// [`FETCH_RETRY`], so checks against a down issuer do not hammer it: they
    /// get their answer at once. Returns whether usable keys are there afterwards.
    pub async fn fetch_and_wait(self: &Arc<Self>, limit: Duration) -> bool {
        let mut attempts = self.attempts.subscribe();
        attempts.borrow_and_update();
        if self.is_due() {
            self.start_fetch();
        }
        if self.in_flight.load(Ordering::Acquire) {
            let _ = tokio::time::timeout(limit, attempts.changed()).await;
        }
        self.keys().is_some()
    }
}

impl std::fmt::Display for RemoteSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Without the query, which could hold a secret.
            RemoteSource::Jwks(url) => write!(f, "{}", url.split(['?', '#']).next().unwrap_or(url)),
            RemoteSource::Discovery { issuer, .. } => write!(f, "discovery:{issuer}"),
        }
    }
}

/// Refreshes every remote key set that is due, until `stop` says so. One loop
/// per server.
pub async fn refresh_loop(mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        for keys in RemoteKeys::all() {
            if keys.is_due() {
                keys.start_fetch();
            }
        }
    }
}

async fn fetch(
    client: &reqwest::Client,
    source: &RemoteSource,
) -> Result<(KeySet, Vec<String>), String> {
    let get = |url: &str| {
        let url = url.to_string();
        async move { http::send(client.get(&url), &url).await }
    };
    let jwks_uri = match source {
        RemoteSource::Jwks(url) => url.clone(),
        RemoteSource::Discovery {
            issuer,
            allowed_origins,
        } => {
            let url = format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            );
            let doc: Json = serde_json::from_slice(&get(&url).await?)
                .map_err(|_| "discovery document is not JSON".to_string())?;
            // OpenID Connect Discovery §4.3: the document's issuer must be exactly
            // the one configured.
            if doc.get("issuer").and_then(Json::as_str) != Some(issuer.as_str()) {
                return Err("discovery document names another issuer".into());
            }
            let uri = doc
                .get("jwks_uri")
                .and_then(Json::as_str)
                .ok_or("discovery document has no jwks_uri")?;
            let origin = http::origin_of(uri)?;
            if origin != http::origin_of(issuer)? && !allowed_origins.contains(&origin) {
                return Err(format!(
                    "discovery jwks_uri origin {origin} is neither the issuer's nor allowed"
                ));
            }
            uri.to_string()
        }
    };
    KeySet::parse(&get(&jwks_uri).await?)
}

/// A key source as a label or span field: the discovery issuer, or the JWKS
/// URL without its query (a query can carry an API key).
pub fn issuer_label(source: &RemoteSource) -> String {
    match source {
        RemoteSource::Discovery { issuer, .. } => issuer.clone(),
        RemoteSource::Jwks(url) => url.split(['?', '#']).next().unwrap_or_default().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ed_jwk(kid: &str) -> Json {
        json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": URL_SAFE_NO_PAD.encode([7u8; 32])})
    }

    #[test]
    fn symmetric_and_private_keys_are_refused() {
        let doc = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}).to_string();
        assert!(
            KeySet::parse(doc.as_bytes())
                .unwrap_err()
                .contains("private or symmetric")
        );
        let mut private = ed_jwk("a");
        private["d"] = json!("AAAA");
        let doc = json!({"keys": [private]}).to_string();
        assert!(KeySet::parse(doc.as_bytes()).is_err());
    }

    #[test]
    fn unusable_keys_are_skipped_with_a_note() {
        let doc = json!({"keys": [
            ed_jwk("sig"),
            {"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([1u8; 128]), "e": "AQAB", "kid": "small"},
            {"kty": "OKP", "crv": "X25519", "x": "AAAA", "kid": "x"},
            {"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([7u8; 32]), "use": "enc"},
            {"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([7u8; 32]), "alg": "RS256", "kid": "mismatch"},
        ]})
        .to_string();
        let (set, notes) = KeySet::parse(doc.as_bytes()).unwrap();
        assert_eq!(set.keys.len(), 1);
        assert_eq!(notes.len(), 4, "{notes:?}");
    }

    #[test]
    fn keys_are_found_by_kid_and_must_fit() {
        let doc = json!({"keys": [ed_jwk("a"), ed_jwk("b")]}).to_string();
        let (set, _) = KeySet::parse(doc.as_bytes()).unwrap();
        assert!(matches!(
            set.find(Some("a"), Algorithm::EdDSA, KeyKind::Ed25519),
            KeyMatch::Found(k) if k.kid.as_deref() == Some("a")
        ));
        assert!(matches!(
            set.find(Some("a"), Algorithm::RS256, KeyKind::Rsa),
            KeyMatch::WrongType
        ));
        assert!(matches!(
            set.find(Some("zz"), Algorithm::EdDSA, KeyKind::Ed25519),
            KeyMatch::Unknown
        ));
        // No kid and two fitting keys: ambiguous, so none.
        assert!(matches!(
            set.find(None, Algorithm::EdDSA, KeyKind::Ed25519),
            KeyMatch::Unknown
        ));
    }

    /// A token signed by jwt-simple with each algorithm portcullis accepts,
    /// beside its key as a JWK without `alg`; one RSA key serves all six RSA
    /// algorithms, as such a JWK allows.
    fn signed_with_every_algorithm() -> Vec<(Algorithm, Map<String, Json>, String)> {
        use jwt_simple::prelude::{
            Claims, ECDSAP256KeyPairLike, ECDSAP384KeyPairLike, ES256KeyPair, ES384KeyPair,
            Ed25519KeyPair, EdDSAKeyPairLike, PS256KeyPair, PS384KeyPair, PS512KeyPair,
            RS256KeyPair, RS384KeyPair, RS512KeyPair, RSAKeyPairLike,
        };
        let rsa = RS256KeyPair::generate(2048).unwrap().to_der().unwrap();
        let claims = || Claims::create(jwt_simple::prelude::Duration::from_mins(5));
        let jwk = |text: String| {
            let mut jwk: Map<String, Json> = serde_json::from_str(&text).unwrap();
            jwk.remove("alg");
            jwk
        };
        let rsa_jwk = jwk(RS256KeyPair::from_der(&rsa).unwrap().public_key().to_jwk());
        let rsa_signed = |alg, token: Result<String, _>| (alg, rsa_jwk.clone(), token.unwrap());
        let (es, es384, ed) = (
            ES256KeyPair::generate(),
            ES384KeyPair::generate(),
            Ed25519KeyPair::generate(),
        );
        vec![
            rsa_signed(
                Algorithm::RS256,
                RS256KeyPair::from_der(&rsa).unwrap().sign(claims()),
            ),
            rsa_signed(
                Algorithm::RS384,
                RS384KeyPair::from_der(&rsa).unwrap().sign(claims()),
            ),
            rsa_signed(
                Algorithm::RS512,
                RS512KeyPair::from_der(&rsa).unwrap().sign(claims()),
            ),
            rsa_signed(
                Algorithm::PS256,
                PS256KeyPair::from_der(&rsa).unwrap().sign(claims()),
            ),
            rsa_signed(
                Algorithm::PS384,
                PS384KeyPair::from_der(&rsa).unwrap().sign(claims()),
            ),
            rsa_signed(
                Algorithm::PS512,
                PS512KeyPair::from_der(&rsa).unwrap().sign(claims()),
            ),
            (
                Algorithm::ES256,
                jwk(es.public_key().to_jwk()),
                es.sign(claims()).unwrap(),
            ),
            (
                Algorithm::ES384,
                jwk(es384.public_key().to_jwk()),
                es384.sign(claims()).unwrap(),
            ),
            (
                Algorithm::EdDSA,
                jwk(ed.public_key().to_jwk()),
                ed.sign(claims()).unwrap(),
            ),
        ]
    }

    #[test]
    fn a_key_verifies_its_own_algorithm_only() {
        let signed = signed_with_every_algorithm();
        for (alg, jwk, token) in &signed {
            let key = public_key_from_jwk(jwk).unwrap();
            let (input, signature) = token.rsplit_once('.').unwrap();
            // The first call parses the key, the second uses what it parsed.
            for _ in 0..2 {
                assert!(key.verify(*alg, input.as_bytes(), signature), "{alg:?}");
            }
            let other_input = format!("{input}A");
            assert!(
                !key.verify(*alg, other_input.as_bytes(), signature),
                "{alg:?}"
            );
            let padded = format!("{signature}=");
            assert!(!key.verify(*alg, input.as_bytes(), &padded), "{alg:?}");
            for (other, ..) in &signed {
                if other != alg {
                    assert!(
                        !key.verify(*other, input.as_bytes(), signature),
                        "{alg:?} checked as {other:?}"
                    );
                }
            }
        }
        assert!(
            !public_key_from_jwk(&signed[0].1)
                .unwrap()
                .verify(Algorithm::HS256, b"x", "AAAA")
        );
    }

    #[test]
    fn a_jwks_own_alg_binds_the_key_even_where_the_caller_did_not_check() {
        use jwt_simple::prelude::{Claims, PS256KeyPair, RS256KeyPair, RSAKeyPairLike};
        let der = RS256KeyPair::generate(2048).unwrap().to_der().unwrap();
        let rs = RS256KeyPair::from_der(&der).unwrap();
        let jwk: Map<String, Json> = serde_json::from_str(&rs.public_key().to_jwk()).unwrap();
        assert_eq!(jwk["alg"], "RS256");
        let key = public_key_from_jwk(&jwk).unwrap();
        // The same RSA key signing PS256: the JWK says RS256 only.
        let token = PS256KeyPair::from_der(&der)
            .unwrap()
            .sign(Claims::create(jwt_simple::prelude::Duration::from_mins(5)))
            .unwrap();
        let (input, signature) = token.rsplit_once('.').unwrap();
        assert!(!key.fits(Algorithm::PS256, KeyKind::Rsa));
        assert!(!key.verify(Algorithm::PS256, input.as_bytes(), signature));
        let token = rs
            .sign(Claims::create(jwt_simple::prelude::Duration::from_mins(5)))
            .unwrap();
        let (input, signature) = token.rsplit_once('.').unwrap();
        assert!(key.verify(Algorithm::RS256, input.as_bytes(), signature));
    }

    /// Every accept and reject of [`Key::verify`] is jsonwebtoken's (the
    /// verification portcullis used before keys were parsed once): for every
    /// algorithm, well-formed and broken keys, and re-encoded signatures.
    #[test]
    fn verification_agrees_with_jsonwebtoken() {
        use jsonwebtoken::DecodingKey;
        const ALGS: [Algorithm; 10] = [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
            Algorithm::HS256,
        ];
        let old_key = |jwk: &Map<String, Json>| -> Option<DecodingKey> {
            let s = |n: &str| jwk.get(n).and_then(Json::as_str);
            match s("kty")? {
                "RSA" => DecodingKey::from_rsa_components(s("n")?, s("e")?).ok(),
                "EC" => DecodingKey::from_ec_components(s("x")?, s("y")?).ok(),
                "OKP" => DecodingKey::from_ed_components(s("x")?).ok(),
                _ => None,
            }
        };
        // The signature as issued, padded, with other trailing bits, with
        // the other base64 alphabet, truncated, extended and altered.
        let variants = |sig: &str| -> Vec<String> {
            const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut v = vec![
                sig.to_string(),
                format!("{sig}="),
                format!("{sig}=="),
                format!("{sig}A"),
                format!("{sig}AAAA"),
                format!("AAAA{sig}"),
                format!("{sig}\n"),
                sig.replace('-', "+").replace('_', "/"),
                sig[..sig.len() - 1].to_string(),
                String::new(),
            ];
            let last = sig.as_bytes()[sig.len() - 1];
            let i = ABC.iter().position(|c| *c == last).unwrap();
            for d in [1, 2, 3, 7, 15] {
                let mut s = sig[..sig.len() - 1].to_string();
                s.push(char::from(ABC[(i + d) % 64]));
                v.push(s);
            }
            let mut bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
            bytes[0] ^= 1;
            v.push(URL_SAFE_NO_PAD.encode(&bytes));
            // A signature without `-` or `_` is its own other-alphabet form.
            let mut seen = std::collections::HashSet::new();
            v.retain(|s| seen.insert(s.clone()));
            v
        };
        // The key as published, and broken in ways aws-lc must refuse.
        let mutations = |jwk: &Map<String, Json>| -> Vec<Map<String, Json>> {
            let set = |k: &str, v: Vec<u8>| {
                let mut m = jwk.clone();
                m.insert(k.into(), Json::String(URL_SAFE_NO_PAD.encode(v)));
                m
            };
            let dec = |k: &str| URL_SAFE_NO_PAD.decode(jwk[k].as_str().unwrap()).unwrap();
            let mut out = vec![jwk.clone()];
            match jwk["kty"].as_str().unwrap() {
                "RSA" => {
                    for e in [vec![1u8], vec![2], vec![0], vec![0, 1, 0, 1], dec("n")] {
                        out.push(set("e", e));
                    }
                    let mut n = vec![0u8];
                    n.extend(dec("n"));
                    out.push(set("n", n));
                    let mut n = dec("n");
                    *n.last_mut().unwrap() ^= 1;
                    out.push(set("n", n));
                    let mut n = dec("n");
                    n[0] &= 0x7f;
                    out.push(set("n", n));
                }
                "EC" => {
                    let mut y = dec("y");
                    *y.last_mut().unwrap() ^= 1;
                    let len = y.len();
                    out.push(set("y", y));
                    out.push(set("x", vec![0; len]));
                }
                _ => {
                    let mut x = dec("x");
                    x[31] ^= 0x80;
                    out.push(set("x", x));
                    let mut identity = vec![0u8; 32];
                    identity[0] = 1;
                    out.push(set("x", identity));
                }
            }
            out
        };
        let signed = signed_with_every_algorithm();
        let mut keys: Vec<&Map<String, Json>> = signed.iter().map(|(_, jwk, _)| jwk).collect();
        keys.dedup();
        let tokens: Vec<&String> = signed.iter().map(|(.., token)| token).collect();
        let (mut compared, mut accepted) = (0, 0);
        for base in keys {
            for jwk in mutations(base) {
                let new = public_key_from_jwk(&jwk).unwrap();
                let old = old_key(&jwk).unwrap();
                for token in &tokens {
                    let (input, sig) = token.rsplit_once('.').unwrap();
                    for s in variants(sig) {
                        for alg in ALGS {
                            // The second call uses the key parsed by the first.
                            for _ in 0..2 {
                                let n = new.verify(alg, input.as_bytes(), &s);
                                let o =
                                    jsonwebtoken::crypto::verify(&s, input.as_bytes(), &old, alg)
                                        .unwrap_or(false);
                                assert_eq!(n, o, "{jwk:?} {alg:?} {s:?}");
                                compared += 1;
                                accepted += usize::from(n);
                            }
                        }
                    }
                }
            }
        }
        // Each algorithm's own signature under the unbroken key, twice.
        assert_eq!(accepted, 18, "of {compared}");
    }

    #[test]
    fn algorithms_never_include_none_or_hmac() {
        assert!(parse_algorithm("none").is_err());
        assert!(parse_algorithm("HS256").is_err());
        assert!(parse_algorithm("ES256K").is_err());
        assert_eq!(parse_algorithm("PS256").unwrap().1, KeyKind::Rsa);
    }

    #[test]
    fn keys_beyond_the_limit_are_skipped_with_a_note() {
        let set = |n: usize| {
            let keys: Vec<Json> = (0..n).map(|i| ed_jwk(&format!("k{i}"))).collect();
            json!({ "keys": keys }).to_string()
        };
        // At the limit: every key kept, and nothing to note.
        let (at, notes) = KeySet::parse(set(MAX_KEYS_PER_SET).as_bytes()).unwrap();
        assert_eq!(at.keys.len(), MAX_KEYS_PER_SET);
        assert!(notes.is_empty(), "{notes:?}");
        // One over: the first 64 kept, the last skipped, with a note.
        let (over, notes) = KeySet::parse(set(MAX_KEYS_PER_SET + 1).as_bytes()).unwrap();
        assert_eq!(over.keys.len(), MAX_KEYS_PER_SET);
        assert_eq!(
            over.keys.last().unwrap().kid.as_deref(),
            Some(format!("k{}", MAX_KEYS_PER_SET - 1).as_str())
        );
        assert_eq!(notes, ["more than 64 keys; the rest skipped"]);
    }
}
