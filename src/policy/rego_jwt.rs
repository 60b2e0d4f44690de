//! OPA's `io.jwt.*` builtins for Rego policies, backed by portcullis' own JWT
//! validator ([`crate::identity::jwt`]) rather than by keys the policy names.
//!
//! regorus leaves the crypto builtins out. OPA-Envoy's primer verifies the
//! bearer token with `io.jwt.decode_verify(token, {"secret": …})`; here the
//! same call verifies against the tenant's own `identity.jwt` issuers with
//! every check the YAML path makes (RFC 8725: no `none`, no symmetric
//! algorithm, no key from `jku`/`jwk`/`x5u`/`x5c`, `crit` refused, `exp`,
//! `nbf`, `iat`, lifetime, `aud`, required claims). The constraint object's
//! `cert`/`secret` are ignored (the tenant's keys decide); its `iss`, `aud`
//! and `alg` narrow further. So an unchanged policy is stricter here than
//! on OPA, never looser.
//!
//! - `io.jwt.decode(t)` → `[header, payload, signature_hex]`, unverified, as
//!   OPA (for tokens Envoy's `jwt_authn` already verified).
//! - `io.jwt.decode_verify(t, constraints)` → `[valid, header, payload]`,
//!   `[false, {}, {}]` for any token the validator refuses.
//! - `io.jwt.verify_rs256(t, cert)` … `verify_es512`, `verify_ps*`,
//!   `verify_eddsa`: the token verifies and its `alg` is the one named.
//!   `verify_hs*` are always false: portcullis accepts no shared-secret token.
//!
//! A token the builtins verify is not the request's credential, so two checks
//! the identity stage makes on that one are made here differently:
//!
//! - **Sender constraints.** No proof can be checked for it: a token bound to
//!   a key (`cnf`), or from an issuer whose tokens must be bound, verifies
//!   only when it is the caller's own credential (same issuer and `jti`),
//!   which the identity stage already bound to this request's proof or
//!   certificate. A stolen DPoP-bound token in another header is refused.
//! - **Revocation.** It is checked against the tenant's revocation lists
//!   (files and live), as the caller's is; a list that is needed and cannot
//!   be read verifies nothing.
//!
//! The tenant's issuers and the caller reach the builtins through a
//! thread-local set around one evaluation ([`with_issuers`]), since one
//! compiled policy serves every tenant with the same modules; the revocation
//! lists through another, set by the pipeline ([`with_revocations`]). So does
//! the tenant's verified-token cache: the bearer token a policy verifies is,
//! most often, the one the identity stage has just verified with the same
//! issuers, and a cache entry is only used while the token is unexpired and
//! its issuer has the very key set that verified it (failures are never
//! cached); `limits.token_cache_size: 0` verifies every call in full. The
//! binding and revocation checks above run on a cache hit too.
//!
//! Never imports: decision, tenants or anything above them.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use regorus::{Engine, Value};
use serde_json::{Map, Value as Json, json};

use crate::identity::Identity;
use crate::identity::binding::SenderConstraint;
use crate::identity::jwt::{self, Attempt, Issuer, TokenCache};
use crate::identity::revocation::RevocationList;

/// Largest token the builtins look at (as the validator).
use crate::foundation::limits::MAX_TOKEN_BYTES;

/// The `verify_*` builtins and the `alg` each demands (`None`: never true).
const VERIFY: [(&str, Option<&str>); 13] = [
    ("io.jwt.verify_rs256", Some("RS256")),
    ("io.jwt.verify_rs384", Some("RS384")),
    ("io.jwt.verify_rs512", Some("RS512")),
    ("io.jwt.verify_ps256", Some("PS256")),
    ("io.jwt.verify_ps384", Some("PS384")),
    ("io.jwt.verify_ps512", Some("PS512")),
    ("io.jwt.verify_es256", Some("ES256")),
    ("io.jwt.verify_es384", Some("ES384")),
    ("io.jwt.verify_es512", Some("ES512")),
    ("io.jwt.verify_eddsa", Some("EdDSA")),
    ("io.jwt.verify_hs256", None),
    ("io.jwt.verify_hs384", None),
    ("io.jwt.verify_hs512", None),
];

/// What one evaluation's builtins verify against.
#[derive(Clone)]
struct Context {
    issuers: Arc<[Issuer]>,
    cache: Arc<TokenCache>,
    max_claim_items: usize,
    now: SystemTime,
    /// The caller's own credential (issuer, `jti`) when the identity stage
    /// bound it to this request.
    bound_caller: Option<(String, String)>,
}

/// The revocation lists a token the builtins verify is checked against.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    pub lists: Vec<Arc<RevocationList>>,
    /// A list the tenant needs could not be read: no token verifies.
    pub unavailable: bool,
}

thread_local! {
    static CONTEXT: RefCell<Option<Context>> = const { RefCell::new(None) };
    static REVOCATIONS: RefCell<Option<Revocations>> = const { RefCell::new(None) };
}

/// Runs `f` with `issuers` (at time `now`, remembering successes in `cache`,
/// claims of at most `max_claim_items` per array or object) as what the
/// builtins verify with, and `caller` as the request's identity; outside it
/// every token fails verification.
pub fn with_issuers<R>(
    issuers: &Arc<[Issuer]>,
    cache: &Arc<TokenCache>,
    max_claim_items: usize,
    now: SystemTime,
    caller: &Identity,
    f: impl FnOnce() -> R,
) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CONTEXT.with(|c| *c.borrow_mut() = None);
        }
    }
    let bound_caller = match (&caller.issuer, &caller.token_id) {
        (Some(iss), Some(jti)) if caller.binding.kind != "none" => Some((iss.clone(), jti.clone())),
        _ => None,
    };
    CONTEXT.with(|c| {
        *c.borrow_mut() = Some(Context {
            issuers: Arc::clone(issuers),
            cache: Arc::clone(cache),
            max_claim_items,
            now,
            bound_caller,
        });
    });
    let _reset = Reset;
    f()
}

/// Runs `f` with `revocations` as the lists the builtins check tokens
/// against. Outside it (an evaluation the pipeline did not start: a policy
/// test's) no list is known.
pub fn with_revocations<R>(revocations: Revocations, f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            REVOCATIONS.with(|r| *r.borrow_mut() = None);
        }
    }
    REVOCATIONS.with(|r| *r.borrow_mut() = Some(revocations));
    let _reset = Reset;
    f()
}

/// Adds the builtins to `engine`.
pub fn register(engine: &mut Engine) -> anyhow::Result<()> {
    engine.add_extension(
        "io.jwt.decode".into(),
        1,
        Box::new(|args: Vec<Value>| Ok(decode(token_arg(&args)?))),
    )?;
    engine.add_extension(
        "io.jwt.decode_verify".into(),
        2,
        Box::new(|args: Vec<Value>| {
            let token = token_arg(&args)?;
            let constraints: Json = serde_json::to_value(args.get(1)).unwrap_or(Json::Null);
            Ok(decode_verify(token, &constraints))
        }),
    )?;
    for (name, alg) in VERIFY {
        engine.add_extension(
            name.into(),
            2,
            Box::new(move |args: Vec<Value>| {
                let token = token_arg(&args)?;
                let ok = alg.is_some_and(|alg| verified(token, &json!({"alg": alg})).is_some());
                Ok(Value::from(ok))
            }),
        )?;
    }
    Ok(())
}

fn token_arg(args: &[Value]) -> anyhow::Result<&str> {
    match args.first() {
        Some(Value::String(s)) => Ok(s),
        _ => anyhow::bail!("io.jwt: the token must be a string"),
    }
}

/// `[header, payload, signature]` of a well-formed JWS compact token, as
/// OPA's `io.jwt.decode`; undefined for anything else.
fn decode(token: &str) -> Value {
    match parts(token) {
        Some((header, payload, signature)) => Value::from(json!([header, payload, signature])),
        None => Value::Undefined,
    }
}

fn parts(token: &str) -> Option<(Json, Json, String)> {
    if token.len() > MAX_TOKEN_BYTES {
        return None;
    }
    let mut it = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return None;
    };
    let object = |part: &str| -> Option<Json> {
        let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
        let v: Json = serde_json::from_slice(&bytes).ok()?;
        v.is_object().then_some(v)
    };
    let signature = URL_SAFE_NO_PAD.decode(s).ok()?;
    Some((object(h)?, object(p)?, hex::encode(signature)))
}

/// `[valid, header, payload]` (see the module docs).
fn decode_verify(token: &str, constraints: &Json) -> Value {
    match verified(token, constraints) {
        Some((header, payload)) => Value::from(json!([true, header, payload])),
        None => Value::from(json!([false, {}, {}])),
    }
}

/// The token's header and validated claims when the tenant's validator
/// accepts it and it meets `constraints`' `alg`, `iss` and `aud`.
fn verified(token: &str, constraints: &Json) -> Option<(Json, Json)> {
    let context = CONTEXT.with(|c| c.borrow().clone())?;
    let (header, payload, _) = parts(token)?;
    let Attempt::Done(Ok(v)) = jwt::verify_cached(
        token,
        &context.issuers,
        &context.cache,
        context.now,
        context.max_claim_items,
    ) else {
        // Refused, or the issuer's keys are not loaded yet: not valid.
        return None;
    };
    // The token's own payload, as OPA returns it (not the mapped claims).
    let claims: &Map<String, Json> = payload.as_object()?;
    let bound = claims.contains_key("cnf") || v.sender_constraint != SenderConstraint::None;
    if bound {
        let is_callers = context.bound_caller.as_ref().is_some_and(|(iss, jti)| {
            *iss == v.issuer && v.token_id.as_deref() == Some(jti.as_str())
        });
        if !is_callers {
            return None;
        }
    }
    let now = context
        .now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let revoked = REVOCATIONS.with(|r| {
        r.borrow().as_ref().is_some_and(|r| {
            r.unavailable
                || r.lists.iter().any(|list| {
                    list.revokes(v.token_id.as_deref(), v.subject.as_deref(), &v.claims, now)
                        .is_some()
                })
        })
    });
    if revoked {
        return None;
    }
    if let Some(alg) = constraints.get("alg").and_then(Json::as_str)
        && header.get("alg").and_then(Json::as_str) != Some(alg)
    {
        return None;
    }
    if let Some(iss) = constraints.get("iss").and_then(Json::as_str)
        && v.issuer != iss
    {
        return None;
    }
    if let Some(aud) = constraints.get("aud").and_then(Json::as_str) {
        let held = match claims.get("aud") {
            Some(Json::String(a)) => a == aud,
            Some(Json::Array(list)) => list.iter().any(|a| a.as_str() == Some(aud)),
            _ => false,
        };
        if !held {
            return None;
        }
    }
    Some((header, payload.clone()))
}
