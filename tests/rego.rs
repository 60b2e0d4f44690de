//! Rego tenants (regorus), through the whole pipeline: the corpus of
//! OPA-Envoy's documented policies under `tests/rego/` through `portcullis
//! test` and a real Envoy, `io.jwt.decode_verify` under the attacks the YAML
//! path refuses, unbounded policies cut off, and a broken module refused at
//! load with the old policy serving. Tokens are minted by an independent JOSE
//! library (jwt-simple).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jwt_simple::prelude::*;
use serde_json::{Value, json};

use portcullis::decision::Decision;
use portcullis::foundation::proto::auth::CheckRequest;
use portcullis::pipeline::Pipeline;
use support::{now, pipeline};

const PRIMER_ISSUER: &str = "https://idp.primer.example";

fn corpus() -> PathBuf {
    support::repo_root().join("tests/rego")
}

/// One RSA key for the primer's issuer (generation is slow in debug builds).
fn primer_key() -> &'static RS256KeyPair {
    static KEY: std::sync::LazyLock<RS256KeyPair> = std::sync::LazyLock::new(|| {
        RS256KeyPair::generate(2048)
            .unwrap()
            .with_key_id("primer-1")
    });
    &KEY
}

/// A token from the primer's issuer with `claims` and the registered claims
/// its tenant demands.
fn primer_token(claims: &Value) -> String {
    let mut c = claims.clone();
    let t = now();
    c["iss"] = json!(PRIMER_ISSUER);
    c["aud"] = json!("people-api");
    c["iat"] = json!(t);
    c["nbf"] = json!(t - 5);
    c["exp"] = json!(t + 300);
    primer_key().sign(support::raw_claims(c)).unwrap()
}

/// A corpus directory copied into a temp dir, ready to run: `jwks.json` for
/// the primer's issuer, and every `{{token:NAME}}` in the test files replaced
/// by a token with `tokens.json`'s claims for NAME.
fn prepared(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    prepare_into(name, dir.path());
    dir
}

/// [`prepared`], into `dir` (the corpus' file names do not collide).
fn prepare_into(name: &str, dir: &Path) {
    let src = corpus().join(name);
    let tokens: Value = std::fs::read_to_string(src.join("tokens.json"))
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap_or(json!({}));
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        if file == "tokens.json" {
            continue;
        }
        let mut text = std::fs::read_to_string(&path).unwrap();
        for (who, claims) in tokens.as_object().unwrap() {
            text = text.replace(&format!("{{{{token:{who}}}}}"), &primer_token(claims));
        }
        std::fs::write(dir.join(&file), text).unwrap();
    }
    let jwk: Value = serde_json::from_str(&primer_key().public_key().to_jwk()).unwrap();
    std::fs::write(dir.join("jwks.json"), json!({ "keys": [jwk] }).to_string()).unwrap();
}

const CORPUS: [&str; 4] = ["primer", "path_method", "result_object", "dynamic_metadata"];

/// Behaviour: every policy of the corpus loads unchanged and decides each of
/// its cases as expected, through `portcullis test` (the binary).
#[test]
fn the_corpus_passes_portcullis_test() {
    for name in CORPUS {
        let dir = prepared(name);
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("test")
            .arg(dir.path())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{name}: {text}");
        assert!(!text.contains(" 0 passed"), "{name}: {text}");
    }
}

/// Behaviour: `portcullis check` explains a Rego decision by its query and
/// the result the policy returned.
#[test]
fn check_names_the_query_and_the_result() {
    let dir = prepared("path_method");
    let request = dir.path().join("request.json");
    std::fs::write(
        &request,
        json!({"attributes": {
            "contextExtensions": {"tenant": "path_method"},
            "request": {"http": {"method": "GET", "path": "/api/v1/products/7", "host": "shop.example"}}
        }})
        .to_string(),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--policies"])
        .arg(dir.path())
        .arg("--request")
        .arg(&request)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("data.envoy.authz.allow"), "{text}");
    assert!(text.contains("result: true"), "{text}");
}

fn request(tenant: &str, method: &str, path: &str, headers: Value) -> CheckRequest {
    portcullis::app::cli::check_request_from_json(&json!({
        "attributes": {
            "contextExtensions": { "tenant": tenant },
            "request": { "http": {
                "method": method, "path": path, "host": "api.example", "headers": headers,
            }},
        }
    }))
    .unwrap()
}

/// A tenant whose Rego reads a token from `x-token` (which portcullis'
/// identity stage does not read) and verifies it with `io.jwt`.
fn jwt_tenant(dir: &Path, jwks: &Value) {
    std::fs::write(
        dir.join("jwt.yaml"),
        format!(
            "apiVersion: portcullis/v1\ntenant: jwt\nidentity:\n  jwt:\n    - issuer: {PRIMER_ISSUER}\n      audiences: [people-api]\n      algorithms: [RS256, EdDSA]\n      jwks: {jwks}\npolicy:\n  rego:\n    files: [jwt.rego]\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("jwt.rego"),
        r#"package envoy.authz

default allow := false

token := input.attributes.request.http.headers["x-token"]

allow if {
	[valid, _, payload] := io.jwt.decode_verify(token, {"secret": "secret"})
	valid
	payload.role == "guest"
}

allow if {
	input.attributes.request.http.path == "/rs256"
	io.jwt.verify_rs256(token, "ignored")
}
"#,
    )
    .unwrap();
}

fn ed_raw(key: &Ed25519KeyPair, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let sig = key.key_pair().as_ref().sk.sign(input.as_bytes(), None);
    format!("{input}.{}", B64.encode(sig.as_ref()))
}

fn check(p: &Pipeline, path: &str, token: &str) -> Decision {
    p.check(&request("jwt", "GET", path, json!({ "x-token": token })))
}

/// Behaviour: `io.jwt.decode_verify` and `verify_rs256` accept a token from
/// the tenant's issuer and refuse each attack the YAML path refuses: `alg:
/// none`, HS256 keyed with the RSA public key, the attacker's key in
/// `jwk`/`jku`, an unknown `crit`, an expired token, a token bound to a key
/// (`cnf`) with no proof for it, a revoked token; and a shared secret named by
/// the policy opens nothing.
#[test]
fn io_jwt_is_the_strict_validator() {
    let dir = tempfile::tempdir().unwrap();
    let ed = Ed25519KeyPair::generate().with_key_id("primer-ed");
    let jwk = |s: String| -> Value { serde_json::from_str(&s).unwrap() };
    let jwks =
        json!({"keys": [jwk(primer_key().public_key().to_jwk()), jwk(ed.public_key().to_jwk())]});
    jwt_tenant(dir.path(), &jwks);
    let (p, _store) = pipeline(dir.path());
    let t = now();
    let claims = json!({"iss": PRIMER_ISSUER, "aud": "people-api", "role": "guest", "iat": t, "exp": t + 300});

    let good = primer_token(&json!({"role": "guest"}));
    let d = check(&p, "/", &good);
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.rule.as_deref(), Some("data.envoy.authz.allow"));
    assert!(check(&p, "/rs256", &good).allowed);
    // The validator's answer, not only the role: an admin is not a guest.
    assert!(!check(&p, "/", &primer_token(&json!({"role": "admin"}))).allowed);
    let good_ed = ed_raw(&ed, &json!({"alg": "EdDSA", "kid": "primer-ed"}), &claims);
    assert!(check(&p, "/", &good_ed).allowed);
    // verify_rs256 holds an EdDSA token to its own algorithm.
    assert!(!check(&p, "/rs256", &ed_raw(&ed, &json!({"alg": "EdDSA", "kid": "primer-ed"}), &json!({"role": "x", "iss": PRIMER_ISSUER, "aud": "people-api", "iat": t, "exp": t + 300}))).allowed);

    let mut attacks: Vec<(&str, String)> = Vec::new();
    attacks.push((
        "alg none",
        format!(
            "{}.{}.",
            B64.encode(json!({"alg": "none"}).to_string()),
            B64.encode(claims.to_string())
        ),
    ));
    attacks.push((
        "alg none, signed",
        format!(
            "{}.{}.c2ln",
            B64.encode(json!({"alg": "none"}).to_string()),
            B64.encode(claims.to_string())
        ),
    ));
    {
        use hmac::{Hmac, Mac};
        let pem = primer_key().public_key().to_pem().unwrap();
        let input = format!(
            "{}.{}",
            B64.encode(json!({"alg": "HS256", "kid": "primer-1"}).to_string()),
            B64.encode(claims.to_string())
        );
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(pem.as_bytes()).unwrap();
        mac.update(input.as_bytes());
        attacks.push((
            "HS256 keyed with the RSA key",
            format!("{input}.{}", B64.encode(mac.finalize().into_bytes())),
        ));
        // The very secret the primer names.
        let input = format!(
            "{}.{}",
            B64.encode(json!({"alg": "HS256", "typ": "JWT"}).to_string()),
            B64.encode(claims.to_string())
        );
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(input.as_bytes());
        attacks.push((
            "HS256 with the policy's secret",
            format!("{input}.{}", B64.encode(mac.finalize().into_bytes())),
        ));
    }
    let attacker = Ed25519KeyPair::generate().with_key_id("attacker");
    let attacker_jwk = jwk(attacker.public_key().to_jwk());
    attacks.push((
        "jwk and jku injection",
        ed_raw(&attacker, &json!({"alg": "EdDSA", "kid": "attacker", "jwk": attacker_jwk, "jku": "https://evil.example/jwks"}), &claims),
    ));
    attacks.push((
        "jwk injection with the tenant's kid",
        ed_raw(
            &attacker,
            &json!({"alg": "EdDSA", "kid": "primer-ed", "jwk": attacker_jwk}),
            &claims,
        ),
    ));
    attacks.push((
        "crit",
        ed_raw(
            &ed,
            &json!({"alg": "EdDSA", "kid": "primer-ed", "crit": ["exp"], "exp": 1}),
            &claims,
        ),
    ));
    let mut expired = claims.clone();
    expired["iat"] = json!(t - 3600);
    expired["exp"] = json!(t - 600);
    attacks.push((
        "expired",
        ed_raw(&ed, &json!({"alg": "EdDSA", "kid": "primer-ed"}), &expired),
    ));
    attacks.push(("garbage", "not.a.token".into()));
    // A token bound to a key (RFC 9449 `cnf.jkt`): no proof for it comes
    // with a header the policy reads, so it must not verify there.
    let mut bound = claims.clone();
    bound["cnf"] = json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"});
    attacks.push((
        "bound to a key it cannot prove",
        ed_raw(&ed, &json!({"alg": "EdDSA", "kid": "primer-ed"}), &bound),
    ));
    // A token the tenant's revocation list names (by `jti` and by `sub`).
    let mut by_jti = claims.clone();
    by_jti["jti"] = json!("stolen-1");
    attacks.push((
        "revoked by jti",
        ed_raw(&ed, &json!({"alg": "EdDSA", "kid": "primer-ed"}), &by_jti),
    ));
    let mut by_sub = claims.clone();
    by_sub["sub"] = json!("mallory");
    attacks.push((
        "revoked by sub",
        ed_raw(&ed, &json!({"alg": "EdDSA", "kid": "primer-ed"}), &by_sub),
    ));
    std::fs::write(
        dir.path().join("jwt.revoked.yaml"),
        "apiVersion: portcullis/v1\ntenant: jwt\nrevoked:\n  - { jti: stolen-1 }\n  - { sub: mallory }\n",
    )
    .unwrap();
    let status = _store.reload();
    assert!(status.errors.is_empty(), "{:?}", status.error_lines());
    // The list is read: an unrevoked token still verifies.
    let mut fine = claims.clone();
    fine["jti"] = json!("fine-1");
    fine["sub"] = json!("alice");
    let fine = ed_raw(&ed, &json!({"alg": "EdDSA", "kid": "primer-ed"}), &fine);
    assert!(
        check(&p, "/", &fine).allowed,
        "an unrevoked token must verify"
    );
    for (what, token) in &attacks {
        for path in ["/", "/rs256"] {
            let d = check(&p, path, token);
            assert!(!d.allowed, "{what} on {path}: {d:?}");
            assert_eq!(d.reason.code(), "denied_by_rule", "{what}: {d:?}");
        }
    }
}

fn rego_tenant(dir: &Path, tenant: &str, module: &str) {
    std::fs::write(
        dir.join(format!("{tenant}.yaml")),
        format!("apiVersion: portcullis/v1\ntenant: {tenant}\npolicy:\n  rego:\n    files: [{tenant}.rego]\n"),
    )
    .unwrap();
    std::fs::write(dir.join(format!("{tenant}.rego")), module).unwrap();
}

/// Behaviour: a policy that iterates without practical end is cut off by the
/// evaluation timer and denied `policy_error` (503 is for dependencies; a
/// broken policy is the tenant's own 403).
#[test]
fn an_unbounded_policy_is_cut_off_and_denied() {
    let dir = tempfile::tempdir().unwrap();
    rego_tenant(
        dir.path(),
        "loops",
        "package envoy.authz\n\nallow if {\n\tr := numbers.range(1, 200000)\n\tsome a in r\n\tsome b in r\n\ta * b < 0\n}\n",
    );
    rego_tenant(
        dir.path(),
        "grows",
        "package envoy.authz\n\nallow if {\n\tr := numbers.range(1, 5000)\n\tpairs := [[a, b] | some a in r; some b in r]\n\tcount(pairs) < 0\n}\n",
    );
    let (p, _store) = pipeline(dir.path());
    for tenant in ["loops", "grows"] {
        let d = p.check(&request(tenant, "GET", "/", json!({})));
        assert!(!d.allowed, "{tenant}: {d:?}");
        assert_eq!(d.reason.code(), "policy_error", "{tenant}: {d:?}");
    }
}

/// Behaviour: a Rego evaluation that runs to its timer does not hold the
/// async worker it was called on: on a runtime with one worker, a check of
/// another tenant started after it is answered before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_slow_rego_evaluation_leaves_the_worker_to_other_tenants() {
    let dir = tempfile::tempdir().unwrap();
    rego_tenant(
        dir.path(),
        "loops",
        "package envoy.authz\n\nallow if {\n\tr := numbers.range(1, 200000)\n\tsome a in r\n\tsome b in r\n\ta * b < 0\n}\n",
    );
    rego_tenant(
        dir.path(),
        "quick",
        "package envoy.authz\n\ndefault allow := true\n",
    );
    let (p, _store) = pipeline(dir.path());
    let p = Arc::new(p);
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let run = |tenant: &'static str| {
        let (p, order) = (Arc::clone(&p), Arc::clone(&order));
        tokio::spawn(async move {
            let d = p
                .check_async(
                    &request(tenant, "GET", "/", json!({})),
                    std::time::Duration::from_secs(1),
                )
                .await;
            order.lock().unwrap().push((tenant, d.allowed));
        })
    };
    // Both go to the one worker's queue in this order.
    let slow = run("loops");
    let quick = run("quick");
    quick.await.unwrap();
    slow.await.unwrap();
    assert_eq!(
        *order.lock().unwrap(),
        [("quick", true), ("loops", false)],
        "the quick tenant waited for the slow one"
    );
}

/// Behaviour: a module with a syntax error does not load; the error names the
/// `.rego` file and line; the tenant's previous policy keeps deciding.
#[test]
fn a_broken_module_is_refused_and_the_old_policy_serves() {
    let dir = tempfile::tempdir().unwrap();
    rego_tenant(
        dir.path(),
        "shop",
        "package envoy.authz\n\ndefault allow := false\n\nallow if input.attributes.request.http.method == \"GET\"\n",
    );
    let (p, store) = pipeline(dir.path());
    assert!(p.check(&request("shop", "GET", "/", json!({}))).allowed);
    std::fs::write(
        dir.path().join("shop.rego"),
        "package envoy.authz\n\ndefault allow := true\n\nallow if {\n\tinput.x ==\n",
    )
    .unwrap();
    let status = store.reload();
    let lines = status.error_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("shop.rego:") && l.contains(":6") || l.contains("shop.rego:7")),
        "{lines:?}"
    );
    assert!(p.check(&request("shop", "GET", "/", json!({}))).allowed);
    assert!(!p.check(&request("shop", "POST", "/", json!({}))).allowed);
    // A module that calls http.send does not load either.
    std::fs::write(
        dir.path().join("shop.rego"),
        "package envoy.authz\n\nallow if {\n\tinput.attributes.request.http.method == \"POST\"\n\thttp.send({\"method\": \"GET\", \"url\": \"http://127.0.0.1:1\"}).status_code == 200\n}\n",
    )
    .unwrap();
    let lines = store.reload().error_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("shop.rego:5") && l.contains("http.send")),
        "{lines:?}"
    );
}

/// Behaviour: owned headers and the `x-portcullis-*` reservation hold over a
/// Rego result: a result that sets a reserved header, or a header the
/// tenant's `response` owns, is denied `unsafe_header_value`.
#[test]
fn a_result_cannot_take_an_owned_header() {
    let dir = tempfile::tempdir().unwrap();
    for (tenant, header) in [
        ("reserved", "x-portcullis-decision-id"),
        ("owned", "x-tenant"),
    ] {
        std::fs::write(
            dir.path().join(format!("{tenant}.yaml")),
            format!("apiVersion: portcullis/v1\ntenant: {tenant}\nresponse:\n  headers:\n    x-tenant: \"{{tenant}}\"\npolicy:\n  rego:\n    files: [{tenant}.rego]\n    query: data.envoy.authz.result\n"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join(format!("{tenant}.rego")),
            format!("package envoy.authz\n\nresult := {{\"allowed\": true, \"headers\": {{\"{header}\": \"forged\", \"x-fine\": \"ok\"}}}} if input.attributes.request.http.method == \"GET\"\n\nresult := {{\"allowed\": true, \"headers\": {{\"x-fine\": \"ok\"}}}} if input.attributes.request.http.method == \"PUT\"\n"),
        )
        .unwrap();
    }
    let (p, _store) = pipeline(dir.path());
    for tenant in ["reserved", "owned"] {
        let d = p.check(&request(tenant, "GET", "/", json!({})));
        assert!(!d.allowed, "{tenant}: {d:?}");
        assert_eq!(d.reason.code(), "unsafe_header_value", "{tenant}");
        let d = p.check(&request(tenant, "PUT", "/", json!({})));
        assert!(d.allowed, "{tenant}: {d:?}");
        assert!(d.set_headers.contains(&("x-fine".into(), "ok".into())));
        assert!(
            d.set_headers.contains(&("x-tenant".into(), tenant.into())),
            "{d:?}"
        );
    }
}

/// The example Envoy config with each of `tenants` on its own virtual host.
fn envoy_config(
    portcullis: std::net::SocketAddr,
    upstream: std::net::SocketAddr,
    tenants: &[&str],
) -> String {
    serde_json::to_string(&support::envoy_per_tenant(
        portcullis, upstream, tenants, 65536,
    ))
    .unwrap()
}

/// One request to `host` through Envoy at `at`.
async fn send(
    at: std::net::SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> support::HttpResponse {
    let mut all = vec![("host", host)];
    all.extend_from_slice(headers);
    support::http(at, method, path, &all, body).await
}

/// Behaviour: OPA-Envoy's documented policies decide behind a real Envoy:
/// the primer's token, role and body checks; the result object's headers for
/// the upstream, headers removed, the client's header, and a deny's status and
/// body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_decides_behind_a_real_envoy() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["primer", "result_object"] {
        prepare_into(name, dir.path());
    }
    let portcullis = support::start_portcullis(dir.path()).await;
    let (upstream, _echo) = support::start_echo_upstream().await;
    let envoy = support::Envoy::start(&envoy_config(
        portcullis.grpc_addr.unwrap(),
        upstream,
        &["primer", "result_object"],
    ))
    .await;
    let at = envoy.listener("main").await;
    let alice = primer_token(&json!({"role": "guest", "sub": "YWxpY2U="}));
    let bob = primer_token(&json!({"role": "admin", "sub": "Ym9i"}));
    let bearer = |t: &str| format!("Bearer {t}");

    let r = send(
        at,
        "GET",
        "primer.example",
        "/people/1",
        &[("authorization", &bearer(&alice))],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = send(at, "GET", "primer.example", "/people/1", &[], None).await;
    assert_eq!(r.status, 403, "{r:?}");
    let body = r#"{"firstname": "Bob", "lastname": "Smith"}"#;
    let json_type = ("content-type", "application/json");
    let r = send(
        at,
        "POST",
        "primer.example",
        "/people",
        &[("authorization", &bearer(&bob)), json_type],
        Some(body),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = send(
        at,
        "POST",
        "primer.example",
        "/people",
        &[("authorization", &bearer(&alice)), json_type],
        Some(body),
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    let other = r#"{"firstname": "Charlie"}"#;
    let r = send(
        at,
        "POST",
        "primer.example",
        "/people",
        &[("authorization", &bearer(&bob)), json_type],
        Some(other),
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");

    let r = send(
        at,
        "GET",
        "result-object.example",
        "/any",
        &[("x-user", "alice"), ("one-auth-header", "secret")],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-response-from"), Some("authz"), "{r:?}");
    let seen = r.json();
    assert_eq!(
        seen["headers"]["x-ext-auth-allow"],
        json!(["yes"]),
        "{seen}"
    );
    assert!(seen["headers"].get("one-auth-header").is_none(), "{seen}");
    let r = send(
        at,
        "POST",
        "result-object.example",
        "/any",
        &[("x-user", "alice")],
        Some("{}"),
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.body, "Unauthorized Request", "{r:?}");
    assert_eq!(r.header("x-ext-auth-allow"), Some("yes"), "{r:?}");
    drop(envoy);
}
