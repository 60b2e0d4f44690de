//! The AuthZEN Authorization API end to end: the real server on free loopback
//! ports, asked over HTTP by the test as a service would, with tokens minted
//! by an independent JOSE library (jwt-simple). The tenant's rules are the
//! shipped `examples/policies/acme.yaml` (the gateway tests' tenant), with its
//! identity swapped from Envoy's `jwt_authn` metadata (which only Envoy can
//! send) to a JWT issuer portcullis validates itself; every AuthZEN answer is
//! compared with the gRPC `Check` answer for the same request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;

use jwt_simple::prelude::*;
use serde_json::{Value, json};
use tonic::transport::Channel;

use portcullis::app::config::Config;
use portcullis::app::request_json::check_request_from_json;
use portcullis::app::serve::{self as server, Running};
use portcullis::foundation::proto::auth::authorization_client::AuthorizationClient;
use portcullis::foundation::proto::auth::check_response::HttpResponse;
use portcullis::transport::askers::Asker;
use portcullis::transport::authzen::AuthzenConfig;
use support::{HttpResponse as Reply, http, now, raw_claims};

const ISSUER: &str = "https://idp.acme.example";
const AUDIENCE: &str = "orders-api";

struct World {
    portcullis: Running,
    authzen: SocketAddr,
    key: ES256KeyPair,
    _dir: tempfile::TempDir,
    log: std::path::PathBuf,
}

/// acme.yaml's rules with a JWT issuer of `key`'s, a copy as tenant "shop", and
/// globex.yaml as shipped.
fn write_policies(dir: &Path, key: &ES256KeyPair) {
    let root = support::example_policies();
    let text = std::fs::read_to_string(root.join("acme.yaml")).unwrap();
    let mut acme: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let jwk: Value = serde_json::from_str(&key.public_key().to_jwk()).unwrap();
    let identity = json!({ "jwt": [{
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "algorithms": ["ES256"],
        "jwks": { "keys": [jwk] },
    }]});
    acme["identity"] = serde_yaml::to_value(identity).unwrap();
    // "shop": the same rules and issuer, so one token is valid for both.
    acme["shared_issuers"] = serde_yaml::to_value(json!([ISSUER])).unwrap();
    std::fs::write(dir.join("acme.yaml"), serde_yaml::to_string(&acme).unwrap()).unwrap();
    let mut shop = acme.clone();
    shop["tenant"] = "shop".into();
    shop["hosts"] = serde_yaml::to_value(json!(["shop.example.com"])).unwrap();
    std::fs::write(dir.join("shop.yaml"), serde_yaml::to_string(&shop).unwrap()).unwrap();
    std::fs::copy(root.join("globex.yaml"), dir.join("globex.yaml")).unwrap();
}

async fn start(limits: impl FnOnce(&mut Config)) -> World {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    let key = ES256KeyPair::generate().with_key_id("acme-1");
    write_policies(&policies, &key);
    let log = dir.path().join("decisions.log");
    let mut config = Config::with_policies(&policies);
    config.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.decision_log.output = log.display().to_string();
    config.authzen = Some(AuthzenConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        public_url: Some("https://pdp.acme.example/".into()),
        askers: vec![
            Asker {
                subject: "orders-service".into(),
                issuer: Some(ISSUER.into()),
                tenants: vec!["acme".into()],
            },
            Asker {
                subject: "reports-service".into(),
                issuer: None,
                tenants: vec!["initech".into(), "shop".into()],
            },
        ],
    });
    limits(&mut config);
    config.validate().unwrap();
    let portcullis = server::start(&config).await.expect("portcullis starts");
    let authzen = portcullis
        .authzen_addr
        .expect("the AuthZEN listener is bound");
    World {
        portcullis,
        authzen,
        key,
        _dir: dir,
        log,
    }
}

impl World {
    fn token(&self, subject: &str, extra: Value) -> String {
        let claims = Claims::with_custom_claims(extra, jwt_simple::prelude::Duration::from_mins(5))
            .with_issuer(ISSUER)
            .with_audience(AUDIENCE)
            .with_subject(subject);
        self.key.sign(claims).unwrap()
    }

    fn user(&self, subject: &str) -> String {
        self.token(subject, json!({"scope": "orders:read", "tenant": "acme"}))
    }

    fn asker(&self) -> String {
        self.token("orders-service", json!({}))
    }

    async fn post(&self, path: &str, asker: Option<&str>, body: &str) -> Reply {
        let bearer = asker.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(b) = &bearer {
            headers.push(("authorization", b.as_str()));
        }
        http(self.authzen, "POST", path, &headers, Some(body)).await
    }

    async fn evaluate(&self, body: &Value) -> Value {
        let r = self
            .post(
                "/access/v1/evaluation",
                Some(&self.asker()),
                &body.to_string(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    /// The same request as Envoy would send it, over gRPC: allowed or not.
    async fn grpc_allows(&self, method: &str, path: &str, token: &str) -> (bool, u16) {
        let mut c = AuthorizationClient::<Channel>::connect(format!(
            "http://{}",
            self.portcullis.grpc_addr.unwrap()
        ))
        .await
        .unwrap();
        let request = check_request_from_json(&json!({ "attributes": {
            "request": { "http": {
                "method": method, "host": "", "path": path,
                "headers": { "authorization": format!("Bearer {token}") },
            } },
            "contextExtensions": { "tenant": "acme" },
        }}))
        .unwrap();
        let r = c.check(request).await.unwrap().into_inner();
        match r.http_response.unwrap() {
            HttpResponse::OkResponse(_) => (true, 200),
            HttpResponse::DeniedResponse(d) => (false, d.status.unwrap().code as u16),
        }
    }
}

/// One evaluation of `token`'s holder doing `method` on `path` in acme.
fn ask(method: &str, path: &str, token: &str) -> Value {
    json!({
        "subject": {"type": "user", "id": "whoever", "properties": {"token": token}},
        "action": {"name": method},
        "resource": {"type": "profile", "id": "p", "properties": {"path": path}},
        "context": {"tenant": "acme"},
    })
}

/// A batch item: only the resource's path differs from the defaults.
fn item(path: &str) -> Value {
    json!({"resource": {"type": "profile", "id": "p", "properties": {"path": path}}})
}

#[tokio::test]
async fn object_level_answers_match_the_gateway_in_single_and_batch_form() {
    let w = start(|_| {}).await;
    let alice = w.user("alice");

    // Object level: alice's own profile yes, bob's no; the same as gRPC says.
    for (path, allowed, reason) in [
        ("/users/alice/profile", true, "allowed"),
        ("/users/bob/profile", false, "no_matching_rule"),
        ("/tenants/acme/orders/7", true, "allowed"),
        ("/tenants/globex/orders/7", false, "no_matching_rule"),
        // The gateway's canonical-path guard applies here too.
        ("/users/bob/../alice/profile", false, "non_canonical_path"),
    ] {
        let a = w.evaluate(&ask("GET", path, &alice)).await;
        assert_eq!(a["decision"], allowed, "{path}: {a}");
        assert_eq!(a["context"]["reason"], reason, "{path}: {a}");
        assert!(a["context"]["decision_id"].as_str().unwrap().len() >= 32);
        let (grpc, _) = w.grpc_allows("GET", path, &alice).await;
        assert_eq!(grpc, allowed, "gRPC and AuthZEN differ on {path}");
    }
    // PUT is allowed on the own profile only; DELETE never.
    let a = w
        .evaluate(&ask("PUT", "/users/alice/profile", &alice))
        .await;
    assert_eq!(a["decision"], true);
    let a = w
        .evaluate(&ask("DELETE", "/users/alice/profile", &alice))
        .await;
    assert_eq!(a["decision"], false);
    // A rule-named action maps through action.properties.method.
    let mut named = ask("can_read", "/users/alice/profile", &alice);
    named["action"]["properties"] = json!({"method": "GET"});
    assert_eq!(w.evaluate(&named).await["decision"], true);

    // The batch form: defaults at the top, items override them whole.
    let batch = |semantic: Option<&str>, paths: &[&str]| {
        let mut b = ask("GET", "/unused", &alice);
        b.as_object_mut().unwrap().remove("resource");
        b["evaluations"] = paths.iter().map(|p| item(p)).collect();
        if let Some(s) = semantic {
            b["options"] = json!({"evaluations_semantic": s});
        }
        b.to_string()
    };
    let decisions = |r: &Reply| -> Vec<bool> {
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["evaluations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["decision"].as_bool().unwrap())
            .collect()
    };
    let mixed = [
        "/users/alice/profile",
        "/users/bob/profile",
        "/tenants/acme/orders/1",
    ];
    let asker = w.asker();
    for (semantic, want) in [
        (None, vec![true, false, true]),
        (Some("execute_all"), vec![true, false, true]),
        (Some("deny_on_first_deny"), vec![true, false]),
        (Some("permit_on_first_permit"), vec![true]),
    ] {
        let r = w
            .post(
                "/access/v1/evaluations",
                Some(&asker),
                &batch(semantic, &mixed),
            )
            .await;
        assert_eq!(decisions(&r), want, "{semantic:?}");
    }
    let denies_first = [
        "/users/bob/profile",
        "/users/alice/profile",
        "/users/carol/profile",
    ];
    let r = w
        .post(
            "/access/v1/evaluations",
            Some(&asker),
            &batch(Some("permit_on_first_permit"), &denies_first),
        )
        .await;
    assert_eq!(decisions(&r), vec![false, true]);
    let r = w
        .post(
            "/access/v1/evaluations",
            Some(&asker),
            &batch(Some("deny_on_first_deny"), &denies_first),
        )
        .await;
    assert_eq!(decisions(&r), vec![false]);
    // No evaluations array: a single evaluation, answered as one (§7.1).
    let r = w
        .post(
            "/access/v1/evaluations",
            Some(&asker),
            &ask("GET", "/users/alice/profile", &alice).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["decision"], true, "{}", r.body);
    assert!(r.json().get("evaluations").is_none());

    // X-Request-ID comes back; the metadata names the endpoints.
    let bearer = format!("Bearer {asker}");
    let body = ask("GET", "/users/alice/profile", &alice).to_string();
    let r = http(
        w.authzen,
        "POST",
        "/access/v1/evaluation",
        &[("authorization", &bearer), ("x-request-id", "req-42")],
        Some(&body),
    )
    .await;
    assert_eq!(r.header("x-request-id"), Some("req-42"));
    let m = http(
        w.authzen,
        "GET",
        "/.well-known/authzen-configuration",
        &[],
        None,
    )
    .await;
    assert_eq!(m.status, 200);
    assert_eq!(
        m.json(),
        json!({
            "policy_decision_point": "https://pdp.acme.example",
            "access_evaluation_endpoint": "https://pdp.acme.example/access/v1/evaluation",
            "access_evaluations_endpoint": "https://pdp.acme.example/access/v1/evaluations",
        })
    );

    // The same metrics and decision log, with the transport named.
    let metrics = http(w.portcullis.admin_addr, "GET", "/metrics", &[], None)
        .await
        .body;
    let line = |decision: &str, reason: &str, transport: &str| {
        format!(
            "portcullis_decisions_total{{tenant=\"acme\",decision=\"{decision}\",reason=\"{reason}\",mode=\"enforce\",transport=\"{transport}\"}}"
        )
    };
    for want in [
        line("allow", "allowed", "authzen"),
        line("deny", "no_matching_rule", "authzen"),
        line("allow", "allowed", "grpc"),
        line("deny", "no_matching_rule", "grpc"),
    ] {
        assert!(metrics.contains(&want), "no {want} in\n{metrics}");
    }
    let transports = |log: &Path| -> Vec<String> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["transport"].to_string())
            .collect()
    };
    support::eventually("deny lines of both transports in the decision log", || {
        let t = transports(&w.log);
        async move { t.iter().any(|t| t == "\"authzen\"") && t.iter().any(|t| t == "\"grpc\"") }
    })
    .await;
    let text = std::fs::read_to_string(&w.log).unwrap();
    assert!(
        !text.contains(&alice) && !text.contains(&asker),
        "a token in the log"
    );
    w.portcullis.stop().await.unwrap();
}

#[tokio::test]
async fn askers_are_authenticated_and_authorised_per_tenant() {
    let w = start(|_| {}).await;
    let alice = w.user("alice");
    let body = ask("GET", "/users/alice/profile", &alice).to_string();
    for path in ["/access/v1/evaluation", "/access/v1/evaluations"] {
        // No credential: 401 with a bare challenge, nothing decided.
        let r = w.post(path, None, &body).await;
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(r.json(), json!({"error": "missing_credential"}));
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"portcullis\"")
        );
    }
    // A forged asker token (another key, same kid): 401 bad signature.
    let forger = ES256KeyPair::generate().with_key_id("acme-1");
    let forged = forger
        .sign(
            Claims::create(jwt_simple::prelude::Duration::from_mins(5))
                .with_issuer(ISSUER)
                .with_audience(AUDIENCE)
                .with_subject("orders-service"),
        )
        .unwrap();
    let r = w.post("/access/v1/evaluation", Some(&forged), &body).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["error"], "invalid_signature");
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("invalid_token")
    );
    // Not a bearer token at all.
    let r = http(
        w.authzen,
        "POST",
        "/access/v1/evaluation",
        &[("authorization", "Basic b3JkZXJzOnB3")],
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.body);
    // A valid token of a service that is no asker: 403.
    let stranger = w.token("billing-service", json!({}));
    let r = w
        .post("/access/v1/evaluation", Some(&stranger), &body)
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json(), json!({"error": "asker_not_allowed"}));
    // A user's token is no asker's either.
    let r = w.post("/access/v1/evaluation", Some(&alice), &body).await;
    assert_eq!(r.status, 403, "{}", r.body);
    // The asker, for a tenant it may not ask about (even one whose issuer
    // vouches for its token, and another asker may ask about: shop), or one
    // that is not served: the same 403.
    let reports = w.token("reports-service", json!({}));
    let mut shop = ask("GET", "/users/alice/profile", &alice);
    shop["context"]["tenant"] = json!("shop");
    let r = w
        .post("/access/v1/evaluation", Some(&reports), &shop.to_string())
        .await;
    assert_eq!(
        r.json()["decision"],
        true,
        "reports-service may ask about shop: {}",
        r.body
    );
    for tenant in ["shop", "globex", "initech", "nobody"] {
        let mut other = ask("GET", "/status", &alice);
        other["context"]["tenant"] = json!(tenant);
        let r = w
            .post(
                "/access/v1/evaluation",
                Some(&w.asker()),
                &other.to_string(),
            )
            .await;
        assert_eq!(r.status, 403, "{tenant}: {}", r.body);
        assert_eq!(r.json()["error"], "asker_not_allowed");
    }
    // In a batch, every tenant asked about is checked before anything is decided.
    let mut batch = ask("GET", "/users/alice/profile", &alice);
    batch["evaluations"] = json!([{}, {"context": {"tenant": "globex"}}]);
    let r = w
        .post(
            "/access/v1/evaluations",
            Some(&w.asker()),
            &batch.to_string(),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let metrics = http(w.portcullis.admin_addr, "GET", "/metrics", &[], None)
        .await
        .body;
    let decided: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("portcullis_decisions_total{") && l.contains("authzen"))
        .collect();
    // Only reports-service's question about shop was decided.
    assert_eq!(
        decided.len(),
        1,
        "a refused asker got a decision: {decided:?}"
    );
    assert!(decided[0].contains("tenant=\"shop\"") && decided[0].ends_with(" 1"));
    w.portcullis.stop().await.unwrap();
}

#[tokio::test]
async fn malformed_bodies_are_refused_with_a_stable_reason() {
    let w = start(|c| {
        c.limits.max_evaluation_request_bytes = 4096;
        c.limits.max_evaluations = 3;
    })
    .await;
    let alice = w.user("alice");
    let asker = w.asker();
    let good = ask("GET", "/users/alice/profile", &alice);
    let without = |member: &str| {
        let mut v = good.clone();
        v.as_object_mut().unwrap().remove(member);
        v.to_string()
    };
    let with = |pointer: &str, value: Value| {
        let mut v = good.clone();
        let (parent, member) = pointer.rsplit_once('/').unwrap();
        v.pointer_mut(parent).unwrap()[member] = value;
        v.to_string()
    };
    let cases = [
        (
            "not JSON",
            "subject=alice".to_string(),
            "malformed_evaluation",
        ),
        (
            "truncated",
            "{\"subject\": {".to_string(),
            "malformed_evaluation",
        ),
        ("an array", "[]".to_string(), "malformed_evaluation"),
        ("no subject", without("subject"), "malformed_evaluation"),
        ("no action", without("action"), "malformed_evaluation"),
        ("no resource", without("resource"), "malformed_evaluation"),
        (
            "id a number",
            with("/subject/id", json!(7)),
            "malformed_evaluation",
        ),
        (
            "action a string",
            with("/action", json!("GET")),
            "malformed_evaluation",
        ),
        (
            "path a list",
            with("/resource/properties/path", json!(["/a"])),
            "malformed_evaluation",
        ),
        (
            "no path",
            with("/resource/properties", json!({})),
            "malformed_evaluation",
        ),
        (
            "no tenant",
            with("/context", json!({})),
            "malformed_evaluation",
        ),
        (
            "tenant a number",
            with("/context/tenant", json!(1)),
            "malformed_evaluation",
        ),
        (
            "no HTTP method",
            with("/action/name", json!("can_read")),
            "malformed_evaluation",
        ),
        (
            "token a number",
            with("/subject/properties/token", json!(1)),
            "malformed_evaluation",
        ),
        (
            "authorization header",
            with(
                "/resource/properties/headers",
                json!({"Authorization": "Bearer x"}),
            ),
            "malformed_evaluation",
        ),
        (
            "too large",
            with("/context/pad", json!("x".repeat(5000))),
            "evaluation_request_too_large",
        ),
    ];
    for (what, body, reason) in &cases {
        let r = w.post("/access/v1/evaluation", Some(&asker), body).await;
        assert_eq!(r.status, 400, "{what}: {}", r.body);
        assert_eq!(r.json(), json!({"error": reason}), "{what}");
        assert!(!r.body.contains(&alice));
    }
    let mut many = good.clone();
    many["evaluations"] = json!([{}, {}, {}, {}]);
    let r = w
        .post("/access/v1/evaluations", Some(&asker), &many.to_string())
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json(), json!({"error": "too_many_evaluations"}));
    let mut bad_item = good.clone();
    bad_item["evaluations"] = json!([{}, {"action": {"name": 3}}]);
    let r = w
        .post(
            "/access/v1/evaluations",
            Some(&asker),
            &bad_item.to_string(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json(), json!({"error": "malformed_evaluation"}));
    let mut semantic = good.clone();
    semantic["options"] = json!({"evaluations_semantic": "first_come"});
    let r = w
        .post(
            "/access/v1/evaluations",
            Some(&asker),
            &semantic.to_string(),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    // Still answering, and nothing was decided for any of them.
    let r = w
        .post("/access/v1/evaluation", Some(&asker), &good.to_string())
        .await;
    assert_eq!(r.json()["decision"], true, "{}", r.body);
    let metrics = http(w.portcullis.admin_addr, "GET", "/metrics", &[], None)
        .await
        .body;
    let authzen: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("portcullis_decisions_total{") && l.contains("authzen"))
        .collect();
    assert_eq!(authzen.len(), 1, "{authzen:?}");
    assert!(authzen[0].ends_with(" 1"), "{authzen:?}");
    w.portcullis.stop().await.unwrap();
}

#[tokio::test]
async fn an_expired_or_forged_subject_token_is_a_false_decision_like_the_gateways_deny() {
    let w = start(|_| {}).await;
    let t = now();
    let expired = w
        .key
        .sign(raw_claims(json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "scope": "orders:read",
            "tenant": "acme", "iat": t - 600, "exp": t - 300,
        })))
        .unwrap();
    let forger = ES256KeyPair::generate().with_key_id("acme-1");
    let forged = forger
        .sign(
            Claims::with_custom_claims(
                json!({"scope": "orders:read", "tenant": "acme"}),
                jwt_simple::prelude::Duration::from_mins(5),
            )
            .with_issuer(ISSUER)
            .with_audience(AUDIENCE)
            .with_subject("alice"),
        )
        .unwrap();
    for (token, reason) in [
        (expired.as_str(), "token_expired"),
        (forged.as_str(), "invalid_signature"),
        ("not-a-jwt", "invalid_token"),
    ] {
        let a = w.evaluate(&ask("GET", "/users/alice/profile", token)).await;
        assert_eq!(a["decision"], false, "{reason}: {a}");
        assert_eq!(a["context"]["reason"], reason, "{a}");
        let (allowed, status) = w.grpc_allows("GET", "/users/alice/profile", token).await;
        assert_eq!((allowed, status), (false, 401), "{reason}");
    }
    // No token at all: anonymous, as at the gateway (public rules still allow).
    let mut anonymous = ask("GET", "/users/alice/profile", "x");
    anonymous["subject"]["properties"] = json!({});
    let a = w.evaluate(&anonymous).await;
    assert_eq!(a["context"]["reason"], "missing_credential", "{a}");
    anonymous["resource"]["properties"]["path"] = json!("/healthz");
    assert_eq!(w.evaluate(&anonymous).await["decision"], true);
    w.portcullis.stop().await.unwrap();
}
