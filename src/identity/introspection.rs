//! Opaque tokens, validated by the issuer's OAuth 2.0 introspection endpoint
//! (RFC 7662).
//!
//! The pipeline never waits on the network: it looks the token up in the
//! tenant's introspection cache, and on a miss asks for an introspection
//! ([`Lookup::Introspect`]); the async caller runs it (one request in flight per
//! token however many checks wait on it) within Envoy's deadline and decides
//! again. Active results are cached no longer than the token's `exp` and
//! `cache_ttl`; inactive ones for `negative_ttl`. The client secret is read
//! from a file (a Kubernetes Secret mount) at each call, never from a policy.
//!
//! With a shared store that enables it (`shared_state.introspection_cache`),
//! a miss asks the store before the endpoint, and an answer from the endpoint
//! is stored for the other replicas (sealed, under a keyed hash of the token:
//! [`super::shared_answers`]), for no longer than the bounds above counted
//! from the moment the endpoint answered. The store is a cache: when it is
//! slow, down or its entry does not open, the endpoint is asked, as without
//! it. Revocation is checked after this stage on every request, so a shared
//! answer never outlives a revocation.
//!
//! An answer about one token that is too large to judge (a body over
//! [`http::MAX_RESPONSE_BYTES`], or an array or object over
//! `limits.max_claim_items`) refuses that token alone, `claims_too_large`:
//! only failures of the endpoint itself pause introspection for the tenant.
//!
//! This module must never treat an error as `active`, cache a failure as a
//! result, or put the token or the secret in an error.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use serde::Deserialize;
use serde_json::{Map, Value as Json};
use tokio::sync::watch;
use tokio::time::Instant;

use super::http::{self, TlsSpec};
use super::jwt::{TokenError, Verified};
use super::shared_state::SharedState;
use crate::foundation::policy_files::FileScope;

/// Default longest time an active result is reused.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);
/// Default time an inactive result is reused.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// After a failed call, introspection is not tried again for this long, so a
/// down endpoint is not hammered: checks get 503 at once.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);
/// Most cached results per tenant, active and inactive each.
pub const MAX_CACHED: usize = 10_000;
/// Most introspection calls in flight per tenant (its one endpoint).
pub const MAX_CALLS_IN_FLIGHT: usize = 32;
/// Largest client secret file read.
const MAX_SECRET_BYTES: u64 = 4096;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionSpec {
    /// The introspection endpoint (`https`).
    pub endpoint: String,
    /// The issuer these tokens come from: `context.auth.issuer`, and the
    /// response's `iss`, when it has one, must equal it.
    pub issuer: String,
    /// When set, the response's `aud` must name one of these.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// portcullis' client id at the authorization server.
    pub client_id: String,
    /// A file holding the client secret (HTTP Basic, RFC 6749 §2.3.1).
    pub client_secret_file: String,
    #[serde(default, with = "crate::foundation::duration::opt_duration")]
    #[schemars(with = "Option<String>")]
    pub cache_ttl: Option<Duration>,
    #[serde(default, with = "crate::foundation::duration::opt_duration")]
    #[schemars(with = "Option<String>")]
    pub negative_ttl: Option<Duration>,
    #[serde(default)]
    pub tls: Option<TlsSpec>,
}

/// A tenant's introspection endpoint, with its cache.
#[derive(Debug)]
pub struct Introspector {
    pub issuer: String,
    /// The tenant it belongs to: part of a shared answer's key, so tenants
    /// never read each other's answers.
    tenant: String,
    endpoint: String,
    audiences: Vec<String>,
    client_id: String,
    /// `client_secret_file` as written, and where it may resolve: checked
    /// again at every read, since the file is re-read at every call.
    secret_file: (FileScope, String),
    cache_ttl: u64,
    negative_ttl: u64,
    client: reqwest::Client,
    cache: DashMap<[u8; 32], Cached>,
    /// Inactive results, apart from the active ones.
    negative: DashMap<[u8; 32], Cached>,
    in_flight: DashMap<[u8; 32], watch::Sender<bool>>,
    permits: Arc<tokio::sync::Semaphore>,
    failed_at: Mutex<Option<Instant>>,
    /// Most elements in one array or object of an answer
    /// (`limits.max_claim_items`, set once after compiling).
    max_claim_items: AtomicUsize,
}

#[derive(Debug, Clone)]
struct Cached {
    /// The first second (unix) the entry is no longer used.
    until: u64,
    result: Result<Verified, TokenError>,
}

/// What the sync pipeline can say about a token now.
#[derive(Debug)]
pub enum Lookup {
    Known(Result<Verified, TokenError>),
    /// Not known: introspect, then decide again.
    Introspect,
}

impl Introspector {
    pub fn compile(
        spec: &IntrospectionSpec,
        tenant: &str,
        files: &FileScope,
    ) -> Result<Introspector, String> {
        let at = |m: String| format!("identity.introspection: {m}");
        http::origin_of(&spec.endpoint).map_err(at)?;
        if spec.issuer.is_empty() || spec.client_id.is_empty() {
            return Err(at("issuer and client_id must not be empty".into()));
        }
        let secret_file = (files.clone(), spec.client_secret_file.clone());
        // Fail at load, not at the first request, when the secret is missing
        // or outside the allowed directories.
        read_secret(&secret_file).map_err(at)?;
        let (client, _) = http::client(spec.tls.as_ref(), files).map_err(at)?;
        Ok(Introspector {
            issuer: spec.issuer.clone(),
            tenant: tenant.to_string(),
            endpoint: spec.endpoint.clone(),
            audiences: spec.audiences.clone(),
            client_id: spec.client_id.clone(),
            secret_file,
            cache_ttl: spec.cache_ttl.unwrap_or(DEFAULT_CACHE_TTL).as_secs(),
            negative_ttl: spec.negative_ttl.unwrap_or(DEFAULT_NEGATIVE_TTL).as_secs(),
            client,
            cache: DashMap::new(),
            negative: DashMap::new(),
            in_flight: DashMap::new(),
            permits: Arc::new(tokio::sync::Semaphore::new(MAX_CALLS_IN_FLIGHT)),
            failed_at: Mutex::new(None),
            max_claim_items: AtomicUsize::new(crate::foundation::limits::DEFAULT_MAX_CLAIM_ITEMS),
        })
    }

    /// Applies `limits.max_claim_items` to the answers judged from now on.
    pub fn limit_claim_items(&self, max: usize) {
        self.max_claim_items.store(max, Ordering::Relaxed);
    }

    /// The cached result for `token` at `now` (unix seconds), if there is one.
    pub fn lookup(&self, token: &str, now: u64) -> Lookup {
        let key = digest(token);
        for cache in [&self.cache, &self.negative] {
            if let Some(hit) = cache.get(&key) {
                if now < hit.until {
                    return Lookup::Known(hit.result.clone());
                }
                drop(hit);
                cache.remove(&key);
            }
        }
        Lookup::Introspect
    }

    /// Introspects `token` (or joins the call in flight for it) and waits at
    /// most `wait`; with `shared` (a store enabling the shared cache) the
    /// store is asked first. The call runs on its own task, so a check that
    /// gives up does not cancel it for the others.
    pub async fn introspect(
        self: &Arc<Self>,
        token: &str,
        now: u64,
        wait: Duration,
        shared: Option<&Arc<dyn SharedState>>,
    ) {
        if self
            .failed_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| t.elapsed() < RETRY_AFTER_FAILURE)
        {
            return;
        }
        let key = digest(token);
        let mut done = match self.in_flight.entry(key) {
            dashmap::Entry::Occupied(e) => e.get().subscribe(),
            dashmap::Entry::Vacant(e) => {
                // A bound on calls in flight: a flood of random opaque tokens
                // gets 503 rather than as many calls to the endpoint.
                let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
                    return;
                };
                let (tx, rx) = watch::channel(false);
                e.insert(tx);
                let this = Arc::clone(self);
                let token = token.to_string();
                let shared = shared.filter(|s| s.shared_answers().is_some()).cloned();
                tokio::spawn(async move {
                    // Wakes the waiters however the call ends (even by a panic).
                    let done = InFlight {
                        introspector: Arc::clone(&this),
                        key,
                        _permit: permit,
                    };
                    match this.answer(&token, now, shared.as_deref()).await {
                        Ok((entry, share)) => {
                            this.remember(key, entry, now);
                            // The waiters decide now; the other replicas'
                            // copy is written after.
                            drop(done);
                            if let (Some(store), Some((key, sealed, ttl))) = (shared, share) {
                                store.cache_put(&key, sealed, ttl).await;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(endpoint = %this.endpoint, error = %e, "introspection failed");
                            *this.failed_at.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some(Instant::now());
                        }
                    }
                });
                rx
            }
        };
        let _ = tokio::time::timeout(wait, done.wait_for(|d| *d)).await;
    }

    /// Caches a result: active and inactive ones apart, so a flood of
    /// inactive tokens never pushes out the active ones.
    fn remember(&self, key: [u8; 32], entry: Cached, now: u64) {
        let cache = if entry.result.is_ok() {
            &self.cache
        } else {
            &self.negative
        };
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, e| now < e.until);
            if cache.len() >= MAX_CACHED * 9 / 10 {
                cache.clear();
            }
        }
        cache.insert(key, entry);
    }

    /// The result for `token`: the shared store's answer when it has one
    /// that opens, else one call to the endpoint, with what to store for the
    /// other replicas (entry key, sealed answer, time to live) when the
    /// answer can be shared.
    async fn answer(
        &self,
        token: &str,
        now: u64,
        shared: Option<&dyn SharedState>,
    ) -> Result<(Cached, Option<(String, Vec<u8>, Duration)>), String> {
        let fleet = shared.and_then(|store| {
            let answers = store.shared_answers()?;
            let key = answers.key_of(&self.tenant, &self.endpoint, &self.client_id, token);
            Some((store, answers, key))
        });
        if let Some((store, answers, key)) = &fleet
            && let Some(sealed) = store.cache_get(key).await
            && let Some((at, body)) = answers.open(key, &sealed)
            && let Ok(entry) = self.read(&body, now, at.min(now))
        {
            return Ok((entry, None));
        }
        let (entry, body) = self.call(token, now).await?;
        let ttl = entry.until.saturating_sub(now);
        let share = match (fleet, body) {
            (Some((_, answers, key)), Some(body)) if ttl > 0 => answers
                .seal(&key, now, &body)
                .map(|sealed| (key, sealed, Duration::from_secs(ttl))),
            _ => None,
        };
        Ok((entry, share))
    }

    /// One call to the endpoint, turned into a cache entry, with the body
    /// when it is an answer another replica may judge again (a 2xx JSON
    /// object). `Err` only for a failure that is not about this token (no
    /// answer, a 5xx, our own credentials refused, a response that is not
    /// JSON): introspection then pauses. An answer too large to judge is
    /// about this token: it is refused `claims_too_large`, and remembered
    /// like an inactive one.
    async fn call(&self, token: &str, now: u64) -> Result<(Cached, Option<Vec<u8>>), String> {
        let secret = read_secret(&self.secret_file)?;
        // RFC 6749 §2.3.1: id and secret are form-encoded before Basic.
        let form = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let body = format!("token={}&token_type_hint=access_token", form(token));
        let request = self
            .client
            .post(&self.endpoint)
            .basic_auth(form(&self.client_id), Some(form(&secret)))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        let (status, bytes) = http::send_bounded(request, &self.endpoint).await?;
        let too_large = || Cached {
            until: now.saturating_add(self.negative_ttl),
            result: Err(TokenError::ClaimsTooLarge),
        };
        match status {
            200..=299 => {}
            // RFC 7662 §2.3: our own client authentication failed.
            401 | 403 => {
                return Err(format!(
                    "{}: status {status} (check client_id and the secret)",
                    self.endpoint
                ));
            }
            // The endpoint refused this token's request: it is not active.
            400..=499 => {
                return Ok((
                    Cached {
                        until: now.saturating_add(self.negative_ttl),
                        result: Err(TokenError::Inactive),
                    },
                    None,
                ));
            }
            _ => return Err(format!("{}: status {status}", self.endpoint)),
        }
        let Some(bytes) = bytes else {
            return Ok((too_large(), None));
        };
        let entry = self.read(&bytes, now, now)?;
        Ok((entry, Some(bytes.to_vec())))
    }

    /// An answer body given at `at`, judged at `now`: used no longer than
    /// `cache_ttl` (or `negative_ttl`) from `at`, nor past the token's `exp`.
    /// `Err` when it is not a JSON object.
    fn read(&self, bytes: &[u8], now: u64, at: u64) -> Result<Cached, String> {
        use crate::request::input::{JsonRefused, strict_json_within};
        let max_items = self.max_claim_items.load(Ordering::Relaxed);
        let mut entry = match strict_json_within(bytes, max_items) {
            Ok(Json::Object(response)) => self.judge(response, now, max_items),
            Err(JsonRefused::TooManyItems) => Cached {
                until: now.saturating_add(self.negative_ttl),
                result: Err(TokenError::ClaimsTooLarge),
            },
            Ok(_) | Err(JsonRefused::Invalid) => {
                return Err("introspection response is not a JSON object".into());
            }
        };
        let ttl = if entry.result.is_ok() {
            self.cache_ttl
        } else {
            self.negative_ttl
        };
        entry.until = entry.until.min(at.saturating_add(ttl));
        Ok(entry)
    }

    /// RFC 7662 §2.2: only `active: true` is active; then the response's own
    /// `exp`, `nbf`, `iss` and `aud` still hold.
    fn judge(&self, mut response: Map<String, Json>, now: u64, max_items: usize) -> Cached {
        let inactive = |why: TokenError| Cached {
            until: now.saturating_add(self.negative_ttl),
            result: Err(why),
        };
        if response.remove("active") != Some(Json::Bool(true)) {
            return inactive(TokenError::Inactive);
        }
        // RFC 7662 §2.2 member types: a wrong one is not guessed at (a
        // revocation entry or a rule would silently miss it).
        for name in [
            "sub",
            "jti",
            "client_id",
            "azp",
            "username",
            "token_type",
            "iss",
        ] {
            if response.get(name).is_some_and(|v| !v.is_string()) {
                return inactive(TokenError::ClaimType("introspection member"));
            }
        }
        for name in ["exp", "nbf", "iat"] {
            if response.get(name).is_some_and(|v| v.as_u64().is_none()) {
                return inactive(TokenError::ClaimType("introspection time"));
            }
        }
        // A refresh token is not an access token.
        if response.get("token_type").and_then(Json::as_str) == Some("refresh_token") {
            return inactive(TokenError::Inactive);
        }
        let number = |name: &str| response.get(name).and_then(Json::as_u64);
        let exp = number("exp");
        if exp.is_some_and(|e| e <= now) {
            return inactive(TokenError::Expired);
        }
        if number("nbf").is_some_and(|n| n > now) {
            return inactive(TokenError::NotYetValid);
        }
        match response.get("iss") {
            None => {}
            Some(Json::String(iss)) if *iss == self.issuer => {}
            Some(_) => return inactive(TokenError::IssuerNotTrusted),
        }
        if !self.audiences.is_empty() {
            let named = |a: &Json| {
                a.as_str()
                    .is_some_and(|a| self.audiences.iter().any(|w| w == a))
            };
            let ok = match response.get("aud") {
                Some(Json::String(_)) => response.get("aud").is_some_and(named),
                Some(Json::Array(list)) => list.iter().any(named),
                _ => false,
            };
            if !ok {
                return inactive(TokenError::WrongAudience);
            }
        }
        let string = |name: &str| {
            response
                .get(name)
                .and_then(Json::as_str)
                .map(str::to_string)
        };
        let (subject, token_id) = (string("sub"), string("jti"));
        // `scope` (RFC 7662 §2.2: space-separated) read as for a JWT, one list
        // of at most `max_items`; a `scope` of another type is not guessed at.
        if let Err(e) = super::jwt::normalize_scope(&mut response, max_items) {
            return inactive(e);
        }
        response
            .entry("iss")
            .or_insert_with(|| Json::String(self.issuer.clone()));
        // The answer may be 256 KiB; the claims conditions see may not.
        if super::claims_bound::within(&response, max_items).is_err() {
            return inactive(TokenError::ClaimsTooLarge);
        }
        let until = now
            .saturating_add(self.cache_ttl)
            .min(exp.unwrap_or(u64::MAX));
        Cached {
            until,
            result: Ok(Verified {
                issuer: self.issuer.clone(),
                subject,
                token_id,
                claims: Arc::new(response),
                expires: exp.unwrap_or(until),
                sender_constraint: super::binding::SenderConstraint::None,
            }),
        }
    }
}

/// Ends a call: drops it from the in-flight map, wakes its waiters and frees
/// its permit, on every path out of the task.
struct InFlight {
    introspector: Arc<Introspector>,
    key: [u8; 32],
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some((_, tx)) = self.introspector.in_flight.remove(&self.key) {
            let _ = tx.send(true);
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes()).into()
}

fn read_secret((files, name): &(FileScope, String)) -> Result<String, String> {
    let bytes = files.read_limited("client_secret_file", name, MAX_SECRET_BYTES)?;
    let text =
        String::from_utf8(bytes).map_err(|_| format!("client_secret_file {name} is not UTF-8"))?;
    let secret = text.trim_end_matches(['\n', '\r']).to_string();
    if secret.is_empty() {
        return Err(format!("client_secret_file {name} is empty"));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn introspector(dir: &std::path::Path, endpoint: &str) -> Arc<Introspector> {
        std::fs::write(dir.join("secret"), "s3cret\n").unwrap();
        let spec: IntrospectionSpec = serde_yaml::from_str(&format!(
            "{{ endpoint: '{endpoint}', issuer: https://idp.example, client_id: c, client_secret_file: secret }}"
        ))
        .unwrap();
        Arc::new(Introspector::compile(&spec, "acme", &FileScope::new(dir, &[])).unwrap())
    }

    fn inactive(until: u64) -> Cached {
        Cached {
            until,
            result: Err(TokenError::Inactive),
        }
    }

    fn known(i: &Introspector, token: &str, now: u64) -> bool {
        matches!(i.lookup(token, now), Lookup::Known(_))
    }

    #[test]
    fn the_cache_is_pruned_beyond_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let i = introspector(dir.path(), "http://127.0.0.1:9/introspect");
        let now = 1_000;
        // At the limit: every result kept.
        for n in 0..MAX_CACHED {
            i.remember(digest(&format!("t{n}")), inactive(now + 10), now);
        }
        assert_eq!(i.negative.len(), MAX_CACHED);
        assert!(known(&i, "t0", now));
        // One over, all still live: the cache starts afresh with the new one.
        i.remember(digest("new"), inactive(now + 10), now);
        assert_eq!(i.negative.len(), 1);
        assert!(known(&i, "new", now) && !known(&i, "t1", now));
        // One over with expired entries enough to fall below 90 %: only the
        // expired ones go.
        i.negative.clear();
        for n in 0..MAX_CACHED {
            let until = if n < MAX_CACHED / 5 { now } else { now + 10 };
            i.remember(digest(&format!("t{n}")), inactive(until), now);
        }
        i.remember(digest("new"), inactive(now + 10), now);
        assert_eq!(i.negative.len(), MAX_CACHED - MAX_CACHED / 5 + 1);
        assert!(known(&i, "new", now) && known(&i, &format!("t{}", MAX_CACHED - 1), now));
    }

    /// An answer read again (from the shared cache) is used no longer than
    /// its bound counted from when the endpoint gave it, nor past `exp`.
    #[test]
    fn an_answer_is_bounded_from_when_it_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let i = introspector(dir.path(), "http://127.0.0.1:9/introspect");
        let body = br#"{"active":true,"sub":"a","exp":2000}"#;
        assert_eq!(i.read(body, 1_000, 1_000).unwrap().until, 1_060);
        // Read 30 s after it was given: 30 s left, not 60.
        assert_eq!(i.read(body, 1_030, 1_000).unwrap().until, 1_060);
        // `exp` binds first.
        let soon = br#"{"active":true,"exp":1010}"#;
        assert_eq!(i.read(soon, 1_000, 990).unwrap().until, 1_010);
        // Expired by the time it is read: judged again, refused.
        let gone = br#"{"active":true,"exp":1001}"#;
        assert!(matches!(
            i.read(gone, 1_001, 990).unwrap().result,
            Err(TokenError::Expired)
        ));
        // Inactive: `negative_ttl` (10 s) from when it was given.
        let inactive = br#"{"active":false}"#;
        assert_eq!(i.read(inactive, 1_005, 1_000).unwrap().until, 1_010);
        assert!(i.read(b"[1]", 1_000, 1_000).is_err());
    }

    #[tokio::test]
    async fn calls_beyond_the_in_flight_limit_are_not_made() {
        // An endpoint that takes connections (the kernel's backlog) and never
        // answers: every call stays in flight.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}/introspect", silent.local_addr().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let i = introspector(dir.path(), &endpoint);
        // At the limit: each distinct token gets its call.
        for n in 0..MAX_CALLS_IN_FLIGHT {
            i.introspect(&format!("t{n}"), 1_000, Duration::ZERO, None)
                .await;
            assert!(
                i.in_flight.contains_key(&digest(&format!("t{n}"))),
                "call {n}"
            );
        }
        assert_eq!(i.in_flight.len(), MAX_CALLS_IN_FLIGHT);
        // One over: no call, so the token stays unknown (the check then gets
        // 503 introspection_unavailable), and the check is not kept waiting.
        let start = std::time::Instant::now();
        i.introspect("one-over", 1_000, Duration::from_secs(30), None)
            .await;
        assert!(start.elapsed() < Duration::from_secs(10), "not waited for");
        assert!(!i.in_flight.contains_key(&digest("one-over")));
        assert_eq!(i.in_flight.len(), MAX_CALLS_IN_FLIGHT);
        assert!(matches!(i.lookup("one-over", 1_000), Lookup::Introspect));
        drop(silent);
    }
}
