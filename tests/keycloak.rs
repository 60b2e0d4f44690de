//! A real identity provider: Keycloak (built into `.tools/peers` by
//! `tests/tools/peers.sh`) issues the tokens that portcullis, behind a real
//! Envoy, validates. Keycloak's start is slow (a JVM building its schema), so
//! one test starts it once, with a realm imported from JSON written here, and
//! runs the scenarios in order; it is killed by its pid at the end.
//!
//! - `client_credentials` tokens through OIDC discovery: the space-separated
//!   `scope`, the audience from an audience mapper; a user's realm roles
//!   through `claim_mappings`.
//! - RFC 7662 introspection with client authentication; a wrong secret is the
//!   endpoint failing (503), not a bad token; a token revoked at Keycloak's
//!   revocation endpoint is refused once the active result's cache bound
//!   (`cache_ttl`) has passed.
//! - Key rotation at Keycloak: the new `kid` is accepted with no restart, the
//!   old key refused once disabled.
//! - A DPoP-bound token (`cnf.jkt`): accepted with a fresh proof, refused as
//!   Bearer and on replay.
//! - Keycloak frozen (SIGSTOP): introspection answers 503 within Envoy's
//!   deadline, JWTs keep verifying with the cached keys until `keys_max_stale`,
//!   and SIGCONT recovers with no restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::Digest as _;

use support::peers::Keycloak;
use support::{DpopKey, Envoy, HttpResponse, http};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
const REALM: &str = "shop";
const SERVICE_SECRET: &str = "orders-svc-secret";
const INTROSPECTION_SECRET: &str = "portcullis-introspection-secret";
/// `cache_ttl` of the introspection tenant: a revoked token is refused at most
/// this long after its last active answer was cached.
const INTROSPECTION_CACHE_TTL: Duration = Duration::from_secs(2);
/// `keys_max_stale` of the JWT tenant (at least `keys_ttl` + 5 s).
const KEYS_MAX_STALE: Duration = Duration::from_secs(8);

fn audience_mapper() -> Value {
    json!({
        "name": "orders-api audience",
        "protocol": "openid-connect",
        "protocolMapper": "oidc-audience-mapper",
        "config": {
            "included.custom.audience": "orders-api",
            "access.token.claim": "true",
            "introspection.token.claim": "true",
        },
    })
}

fn realm() -> Value {
    json!({
        "realm": REALM,
        "enabled": true,
        "accessTokenLifespan": 300,
        "roles": { "realm": [ { "name": "orders-admin" } ] },
        "users": [{
            "username": "alice",
            "enabled": true,
            "email": "alice@shop.example",
            "emailVerified": true,
            "firstName": "Alice",
            "lastName": "Admin",
            "credentials": [ { "type": "password", "value": "alice-pw", "temporary": false } ],
            "realmRoles": [ "orders-admin", "default-roles-shop" ],
        }],
        "clients": [
            {
                "clientId": "orders-svc",
                "enabled": true,
                "publicClient": false,
                "secret": SERVICE_SECRET,
                "serviceAccountsEnabled": true,
                "standardFlowEnabled": false,
                "directAccessGrantsEnabled": false,
                "protocolMappers": [ audience_mapper() ],
            },
            {
                "clientId": "shop-ui",
                "enabled": true,
                "publicClient": true,
                "standardFlowEnabled": false,
                "directAccessGrantsEnabled": true,
                "protocolMappers": [ audience_mapper() ],
            },
            {
                "clientId": "portcullis",
                "enabled": true,
                "publicClient": false,
                "secret": INTROSPECTION_SECRET,
                "serviceAccountsEnabled": true,
                "standardFlowEnabled": false,
                "directAccessGrantsEnabled": false,
            },
        ],
    })
}

/// The tenants: `orders` validates JWTs by discovery, `reports` introspects,
/// `broken` introspects with a secret Keycloak refuses.
fn write_policies(dir: &Path, issuer: &str) {
    let shared = format!("shared_issuers: [{issuer}]");
    std::fs::write(
        dir.join("orders.yaml"),
        format!(
            r#"apiVersion: portcullis/v1
tenant: orders
hosts: [orders.example.com]
{shared}
# The exact reason in deny bodies, for the assertions (the default is generic).
client_errors: detailed
identity:
  jwt:
    - issuer: {issuer}
      audiences: [orders-api]
      algorithms: [RS256]
      discovery: true
      keys_ttl: 1s
      keys_max_stale: {stale}s
      claim_mappings: {{ roles: realm_access.roles }}
  dpop:
    public_origin: http://orders.example.com
claims: [roles]
rules:
  - id: read-orders
    methods: [GET]
    path: /orders
    when: '"orders:read" in claims.scope'
    effect: allow
  - id: admin
    methods: [GET]
    path: /admin
    when: 'has(claims.roles) && "orders-admin" in claims.roles'
    effect: allow
  - id: bound-only
    methods: [GET]
    path: /bound
    when: 'context.sender_constraint == "dpop"'
    effect: allow
"#,
            stale = KEYS_MAX_STALE.as_secs()
        ),
    )
    .unwrap();
    for (tenant, secret) in [
        ("reports", INTROSPECTION_SECRET),
        ("broken", "not-the-secret"),
    ] {
        std::fs::write(dir.join(format!("{tenant}.secret")), secret).unwrap();
        std::fs::write(
            dir.join(format!("{tenant}.yaml")),
            format!(
                r#"apiVersion: portcullis/v1
tenant: {tenant}
hosts: [{tenant}.example.com]
{shared}
# The exact reason in deny bodies, for the assertions (the default is generic).
client_errors: detailed
identity:
  introspection:
    endpoint: {issuer}/protocol/openid-connect/token/introspect
    issuer: {issuer}
    audiences: [orders-api]
    client_id: portcullis
    client_secret_file: {tenant}.secret
    cache_ttl: {ttl}s
    negative_ttl: 1s
rules:
  - id: read-reports
    methods: [GET]
    path: /reports
    when: '"orders:read" in claims.scope'
    effect: allow
"#,
                ttl = INTROSPECTION_CACHE_TTL.as_secs()
            ),
        )
        .unwrap();
    }
}

/// Keycloak's side of the test: its endpoints, and its admin API.
struct Idp {
    kc: Keycloak,
    client: reqwest::Client,
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Idp {
    fn issuer(&self) -> String {
        format!("{}/realms/{REALM}", self.kc.base)
    }

    fn token_endpoint(&self) -> String {
        format!("{}/protocol/openid-connect/token", self.issuer())
    }

    /// A form POST; answers the status and the JSON body (or `null`).
    async fn post_form(
        &self,
        url: &str,
        basic: Option<(&str, &str)>,
        headers: &[(&str, &str)],
        body: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = self
            .client
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(body));
        if let Some((user, pass)) = basic {
            req = req.basic_auth(user, Some(pass));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.expect("keycloak answers");
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// A `client_credentials` access token for `orders-svc`.
    async fn service_token(&self) -> String {
        let (status, body) = self
            .post_form(
                &self.token_endpoint(),
                Some(("orders-svc", SERVICE_SECRET)),
                &[],
                &[("grant_type", "client_credentials")],
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    async fn admin_token(&self) -> String {
        let url = format!(
            "{}/realms/master/protocol/openid-connect/token",
            self.kc.base
        );
        let (status, body) = self
            .post_form(
                &url,
                None,
                &[],
                &[
                    ("grant_type", "password"),
                    ("client_id", "admin-cli"),
                    ("username", "admin"),
                    ("password", &self.kc.admin_password),
                ],
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    /// One admin API call; answers the status, the JSON body and `Location`.
    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value, Option<String>) {
        let token = self.admin_token().await;
        let mut req = self
            .client
            .request(
                method,
                format!("{}/admin/realms/{REALM}{path}", self.kc.base),
            )
            .bearer_auth(token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let location = r
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = r.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            location,
        )
    }

    /// The `orders:read` client scope, a default scope of `orders-svc`, so
    /// its tokens carry `scope: "... orders:read ..."`.
    async fn add_orders_scope(&self) {
        let (status, body, location) = self
            .admin(
                reqwest::Method::POST,
                "/client-scopes",
                Some(json!({
                    "name": "orders:read",
                    "protocol": "openid-connect",
                    "attributes": { "include.in.token.scope": "true" },
                })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let scope_id = location.unwrap().rsplit('/').next().unwrap().to_string();
        let (_, clients, _) = self
            .admin(reqwest::Method::GET, "/clients?clientId=orders-svc", None)
            .await;
        let client_id = clients[0]["id"].as_str().unwrap().to_string();
        let (status, body, _) = self
            .admin(
                reqwest::Method::PUT,
                &format!("/clients/{client_id}/default-client-scopes/{scope_id}"),
                None,
            )
            .await;
        assert_eq!(status, 204, "{body}");
    }

    /// The realm's RSA signing key providers.
    async fn rsa_providers(&self) -> Vec<Value> {
        let (status, body, _) = self
            .admin(
                reqwest::Method::GET,
                "/components?type=org.keycloak.keys.KeyProvider",
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body.as_array()
            .unwrap()
            .iter()
            .filter(|c| c["providerId"] == "rsa-generated")
            .cloned()
            .collect()
    }
}

/// The `kid` in a JWT's header.
fn kid(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(&B64.decode(header).unwrap()).unwrap();
    header["kid"].as_str().unwrap().to_string()
}

fn payload(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64.decode(part).unwrap()).unwrap()
}

/// A DPoP proof for `htm` `htu`, bound to `token` when given.
fn dpop_proof(key: &DpopKey, htm: &str, htu: &str, token: Option<&str>, jti: &str) -> String {
    let mut claims = json!({ "jti": jti, "htm": htm, "htu": htu, "iat": support::now() });
    if let Some(t) = token {
        claims["ath"] = json!(B64.encode(sha2::Sha256::digest(t.as_bytes())));
    }
    let header = json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": key.jwk()});
    key.sign(&header, &claims)
}

/// portcullis' answer through Envoy: status and the deny body's `error`.
async fn call(envoy: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let mut all = vec![("host", host)];
    all.extend_from_slice(headers);
    http(envoy, "GET", path, &all, None).await
}

fn reason(r: &HttpResponse) -> String {
    if r.status == 200 {
        return "allowed".into();
    }
    serde_json::from_str::<Value>(&r.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("status {} body {:?}", r.status, r.body))
}

/// Polls until `f`'s answer is `want`, for up to `within`; answers how long it
/// took, or fails with the last answer.
async fn until<F, Fut>(what: &str, within: Duration, want: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let start = Instant::now();
    loop {
        let got = f().await;
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{what}: still {got:?} after {within:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_tokens_through_envoy_and_portcullis() {
    let started = Instant::now();
    let kc = Keycloak::start(&realm()).await;
    eprintln!("keycloak ready in {:?}", started.elapsed());
    let idp = Idp {
        kc,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
    };
    idp.add_orders_scope().await;

    let dir = tempfile::tempdir().unwrap();
    write_policies(dir.path(), &idp.issuer());
    let portcullis = support::start_portcullis(dir.path()).await;
    let (upstream, _echo) = support::start_echo_upstream().await;
    let envoy = Envoy::start(&support::example_envoy_with(
        portcullis.grpc_addr.unwrap(),
        upstream,
    ))
    .await;
    let main = envoy.listener("main").await;
    let orders = "orders.example.com";
    let reports = "reports.example.com";

    // --- client_credentials through discovery. ---
    let token = idp.service_token().await;
    let claims = payload(&token);
    assert!(
        claims["scope"]
            .as_str()
            .unwrap()
            .split(' ')
            .any(|s| s == "orders:read"),
        "Keycloak's scope is space-separated: {claims}"
    );
    let bearer = format!("Bearer {token}");
    let r = call(main, orders, "/orders", &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 200, "{r:?}");
    // The audience comes from the mapper: a token without it is refused.
    let (status, body) = idp
        .post_form(
            &idp.token_endpoint(),
            None,
            &[],
            &[
                ("grant_type", "password"),
                ("client_id", "shop-ui"),
                ("username", "alice"),
                ("password", "alice-pw"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let user_token = body["access_token"].as_str().unwrap().to_string();
    let user = payload(&user_token);
    assert!(
        user["realm_access"]["roles"]
            .as_array()
            .unwrap()
            .contains(&json!("orders-admin")),
        "{user}"
    );
    let user_bearer = format!("Bearer {user_token}");
    let r = call(main, orders, "/admin", &[("authorization", &user_bearer)]).await;
    assert_eq!(r.status, 200, "realm roles via claim_mappings: {r:?}");
    // The service account has no such role, and the user no orders:read.
    let r = call(main, orders, "/admin", &[("authorization", &bearer)]).await;
    assert_eq!((r.status, reason(&r)), (403, "no_matching_rule".into()));
    let r = call(main, orders, "/orders", &[("authorization", &user_bearer)]).await;
    assert_eq!(r.status, 403, "{r:?}");
    // A token of this realm without the audience (the `portcullis` client
    // has no audience mapper): refused.
    let (status, body) = idp
        .post_form(
            &idp.token_endpoint(),
            Some(("portcullis", INTROSPECTION_SECRET)),
            &[],
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let other = body["access_token"].as_str().unwrap().to_string();
    let no_aud = format!("Bearer {other}");
    let r = call(main, orders, "/orders", &[("authorization", &no_aud)]).await;
    assert_eq!(
        (r.status, reason(&r)),
        (401, "invalid_audience".into()),
        "{r:?} {}",
        payload(&other)
    );

    // --- Introspection. ---
    // Keycloak's first introspection is its coldest (class loading, JIT): on
    // a loaded machine it can outlast Envoy's 0.5 s deadline, which is 503
    // `introspection_unavailable`. The token must be allowed within 15 s.
    let took = until(
        "introspected active",
        Duration::from_secs(15),
        "allowed",
        || async { reason(&call(main, reports, "/reports", &[("authorization", &bearer)]).await) },
    )
    .await;
    eprintln!("first introspection allowed after {took:?}");
    let r = call(
        main,
        reports,
        "/reports",
        &[("authorization", "Bearer not-a-token")],
    )
    .await;
    assert_eq!((r.status, reason(&r)), (401, "token_inactive".into()));
    // Keycloak refuses portcullis' credentials (401): the endpoint is failing
    // for portcullis, which says so rather than blame the token.
    let (status, body) = idp
        .post_form(
            &format!("{}/introspect", idp.token_endpoint()),
            Some(("portcullis", "not-the-secret")),
            &[],
            &[("token", &token)],
        )
        .await;
    assert_eq!(
        status, 401,
        "Keycloak refuses a wrong client secret: {body}"
    );
    let r = call(
        main,
        "broken.example.com",
        "/reports",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(
        (r.status, reason(&r)),
        (503, "introspection_unavailable".into())
    );

    // --- Revocation at Keycloak: refused within the cache bound. ---
    let revoked = idp.service_token().await;
    let revoked_bearer = format!("Bearer {revoked}");
    let r = call(
        main,
        reports,
        "/reports",
        &[("authorization", &revoked_bearer)],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let (status, body) = idp
        .post_form(
            &format!("{}/protocol/openid-connect/revoke", idp.issuer()),
            Some(("orders-svc", SERVICE_SECRET)),
            &[],
            &[("token", &revoked), ("token_type_hint", "access_token")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let took = until(
        "a revoked token",
        INTROSPECTION_CACHE_TTL + Duration::from_secs(3),
        "token_inactive",
        || async {
            reason(
                &call(
                    main,
                    reports,
                    "/reports",
                    &[("authorization", &revoked_bearer)],
                )
                .await,
            )
        },
    )
    .await;
    eprintln!("revoked token refused after {took:?}");

    // --- DPoP: Keycloak binds the token to the proof's key. ---
    let dpop = DpopKey::generate();
    let proof = dpop_proof(&dpop, "POST", &idp.token_endpoint(), None, "kc-proof-1");
    let (status, body) = idp
        .post_form(
            &idp.token_endpoint(),
            Some(("orders-svc", SERVICE_SECRET)),
            &[("dpop", &proof)],
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "DPoP", "{body}");
    let bound = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(payload(&bound)["cnf"]["jkt"], dpop.jkt());
    let htu = "http://orders.example.com/bound";
    let proof = dpop_proof(&dpop, "GET", htu, Some(&bound), "api-proof-1");
    let dpop_auth = format!("DPoP {bound}");
    let r = call(
        main,
        orders,
        "/bound",
        &[("authorization", &dpop_auth), ("dpop", &proof)],
    )
    .await;
    assert_eq!(r.status, 200, "a bound token with a fresh proof: {r:?}");
    let r = call(
        main,
        orders,
        "/bound",
        &[("authorization", &dpop_auth), ("dpop", &proof)],
    )
    .await;
    assert_eq!((r.status, reason(&r)), (401, "dpop_proof_replayed".into()));
    let as_bearer = format!("Bearer {bound}");
    let r = call(main, orders, "/orders", &[("authorization", &as_bearer)]).await;
    assert_eq!(
        (r.status, reason(&r)),
        (401, "token_binding_mismatch".into())
    );
    // A plain Bearer token on the route that wants a bound one.
    let r = call(main, orders, "/bound", &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 403, "{r:?}");

    // --- Key rotation at Keycloak. ---
    let old = idp.rsa_providers().await;
    assert_eq!(old.len(), 1, "{old:?}");
    let old_kid = kid(&token);
    let (status, body, _) = idp
        .admin(
            reqwest::Method::POST,
            "/components",
            Some(json!({
                "name": "rsa-rotated",
                "providerId": "rsa-generated",
                "providerType": "org.keycloak.keys.KeyProvider",
                "parentId": old[0]["parentId"],
                "config": { "priority": ["200"] },
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let rotated = idp.service_token().await;
    assert_ne!(kid(&rotated), old_kid, "Keycloak signs with the new key");
    let rotated_bearer = format!("Bearer {rotated}");
    // An unknown kid fetches the keys again at once, or within the per-issuer
    // refetch interval (30 s) of an earlier one; keys_ttl (1 s) also refreshes.
    let took = until(
        "the new kid",
        Duration::from_secs(35),
        "allowed",
        || async {
            reason(
                &call(
                    main,
                    orders,
                    "/orders",
                    &[("authorization", &rotated_bearer)],
                )
                .await,
            )
        },
    )
    .await;
    eprintln!("new kid accepted after {took:?}");
    // The old key still verifies until Keycloak stops publishing it.
    let r = call(main, orders, "/orders", &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 200, "{r:?}");
    let mut disabled = old[0].clone();
    disabled["config"]["enabled"] = json!(["false"]);
    let id = disabled["id"].as_str().unwrap().to_string();
    let (status, body, _) = idp
        .admin(
            reqwest::Method::PUT,
            &format!("/components/{id}"),
            Some(disabled),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    // Refused after the next key refresh (keys_ttl 1 s): the cached token was
    // verified by a key set the issuer no longer has.
    let took = until(
        "the disabled key",
        Duration::from_secs(10),
        "unknown_key",
        || async { reason(&call(main, orders, "/orders", &[("authorization", &bearer)]).await) },
    )
    .await;
    eprintln!("old kid refused after {took:?}");

    // --- Keycloak frozen. ---
    // Tokens minted before the freeze, each sent once while Keycloak is
    // stopped (a token seen before would be answered from the token cache).
    let mut minted = Vec::new();
    for _ in 0..24 {
        minted.push(format!("Bearer {}", idp.service_token().await));
    }
    let introspect_fresh = format!("Bearer {}", idp.service_token().await);
    let r = call(
        main,
        orders,
        "/orders",
        &[("authorization", &rotated_bearer)],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let frozen_at = Instant::now();
    idp.kc.signal("STOP");
    let _thaw = Thaw(&idp.kc);
    let asked = Instant::now();
    let r = call(
        main,
        reports,
        "/reports",
        &[("authorization", &introspect_fresh)],
    )
    .await;
    let answered = asked.elapsed();
    assert_eq!(
        (r.status, reason(&r)),
        (503, "introspection_unavailable".into()),
        "a frozen introspection endpoint"
    );
    assert!(
        answered < Duration::from_millis(1500),
        "answered within Envoy's deadline (0.5 s, plus Envoy's own time): {answered:?}"
    );
    eprintln!("frozen introspection answered 503 in {answered:?}");
    // A JWT not seen before verifies with the cached keys...
    let mut unused = minted.into_iter();
    let first = unused.next().unwrap();
    let r = call(main, orders, "/orders", &[("authorization", &first)]).await;
    assert_eq!(
        r.status, 200,
        "cached keys while the issuer is frozen: {r:?}"
    );
    // ...until keys_max_stale after the last good fetch: one new token a second.
    let deadline = KEYS_MAX_STALE + Duration::from_secs(12);
    let mut last = String::new();
    for token in unused.by_ref() {
        let r = call(main, orders, "/orders", &[("authorization", &token)]).await;
        last = reason(&r);
        if last != "allowed" {
            break;
        }
        assert!(
            frozen_at.elapsed() < deadline,
            "still allowed after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let stale_after = frozen_at.elapsed();
    assert_eq!(last, "keys_unavailable", "after keys_max_stale");
    assert!(
        stale_after + Duration::from_secs(2) >= KEYS_MAX_STALE,
        "keys were still usable until keys_max_stale: refused after {stale_after:?}"
    );
    eprintln!(
        "keys_unavailable {stale_after:?} after the freeze (keys_max_stale {KEYS_MAX_STALE:?})"
    );
    idp.kc.signal("CONT");
    let next = unused.next().expect("a token left for the recovery");
    until(
        "JWTs after SIGCONT",
        Duration::from_secs(20),
        "allowed",
        || async { reason(&call(main, orders, "/orders", &[("authorization", &next)]).await) },
    )
    .await;
    until(
        "introspection after SIGCONT",
        Duration::from_secs(20),
        "allowed",
        || async {
            reason(
                &call(
                    main,
                    reports,
                    "/reports",
                    &[("authorization", &introspect_fresh)],
                )
                .await,
            )
        },
    )
    .await;
    portcullis.shutdown();
}

/// Sends SIGCONT on drop, so a failed assertion never leaves Keycloak stopped
/// while its handle kills it.
struct Thaw<'a>(&'a Keycloak);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        self.0.signal("CONT");
    }
}
