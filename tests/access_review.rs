//! The access-review commands on the example policies: `portcullis reach`
//! against golden outputs (`tests/golden/reach/`, rewritten with
//! `PORTCULLIS_BLESS=1 cargo test --test access_review`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn golden_dir() -> PathBuf {
    root().join("tests/golden/reach")
}

fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

fn stdout(args: &[&str]) -> String {
    let out = portcullis(args);
    assert!(
        out.status.success(),
        "portcullis {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Compares `actual` with the golden file `name`, or rewrites it when blessing.
fn golden(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("PORTCULLIS_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with PORTCULLIS_BLESS=1", path.display()));
    assert_eq!(
        actual,
        expected,
        "{} differs: run `PORTCULLIS_BLESS=1 cargo test --test access_review` and review the diff",
        path.display()
    );
}

const POLICIES: &str = "examples/policies";

fn claims(name: &str) -> String {
    Path::new("tests/golden/reach")
        .join(format!("{name}.claims.json"))
        .display()
        .to_string()
}

#[test]
fn reach_on_the_example_tenants_matches_the_goldens() {
    for name in [
        "alice",
        "acme-admin",
        "no-scope",
        "billing-operator",
        "notes-bob",
    ] {
        let c = claims(name);
        golden(
            &format!("{name}.txt"),
            &stdout(&["reach", "--policies", POLICIES, "--claims", &c]),
        );
    }
    // Object-level residuals, as JSON.
    let c = claims("alice");
    golden(
        "alice.acme.json",
        &stdout(&[
            "reach",
            "--policies",
            POLICIES,
            "--claims",
            &c,
            "--tenant",
            "acme",
            "--format",
            "json",
        ]),
    );
    for (name, id) in [
        ("acme-shop", "spiffe://acme.example/ns/shop/sa/cart"),
        ("globex-shop", "spiffe://globex.example/ns/shop/sa/web"),
    ] {
        golden(
            &format!("{name}.txt"),
            &stdout(&["reach", "--policies", POLICIES, "--spiffe-id", id]),
        );
    }
    golden(
        "anonymous.txt",
        &stdout(&[
            "reach",
            "--policies",
            POLICIES,
            "--auth-method",
            "anonymous",
        ]),
    );
}

#[test]
fn residuals_name_the_known_values_and_what_they_depend_on() {
    let c = claims("alice");
    let out = stdout(&[
        "reach",
        "--policies",
        POLICIES,
        "--claims",
        &c,
        "--tenant",
        "acme",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let grants = v["tenants"][0]["grants"].as_array().unwrap();
    let profile = grants
        .iter()
        .find(|g| g["rule"] == "own-profile" && g["method"] == "GET")
        .unwrap();
    assert_eq!(profile["when"]["cel"], "resource.params.owner == \"alice\"");
    assert_eq!(
        profile["when"]["depends_on"],
        serde_json::json!(["params.owner"])
    );
    // No admin role: the deny rule always applies, the admin route is gone.
    assert!(grants.iter().all(|g| g["rule"] != "admin"));
}

#[test]
fn a_caller_without_scopes_reaches_only_public_routes_where_every_grant_needs_one() {
    // billing: every non-public allow rule asks for a scope or a role.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.json");
    std::fs::write(
        &file,
        r#"{"iss":"https://idp.billing.example","sub":"x","scope":[]}"#,
    )
    .unwrap();
    let out = stdout(&[
        "reach",
        "--policies",
        POLICIES,
        "--claims",
        file.to_str().unwrap(),
        "--tenant",
        "billing",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let grants = v["tenants"][0]["grants"].as_array().unwrap();
    assert!(!grants.is_empty());
    assert!(
        grants.iter().all(|g| g["public"] == true),
        "a caller without scopes reaches {grants:?}"
    );
}

#[test]
fn bad_claims_are_a_usage_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.json");
    std::fs::write(&file, "[1, 2]").unwrap();
    let out = portcullis(&[
        "reach",
        "--policies",
        POLICIES,
        "--claims",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("claims must be a JSON object"));
}

/// A JWT-shaped bearer token, a DPoP proof and a session cookie: none may
/// reach the replayable log.
const TOKEN: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImlzcyI6Imh0dHBzOi8vaWRwLmFjbWUuZXhhbXBsZSJ9.c2VjcmV0LXNpZ25hdHVyZS1ieXRlcw";
const PROOF: &str = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2In0.eyJodG0iOiJHRVQiLCJodHUiOiJodHRwczovL2FjbWUifQ.cHJvb2Ytc2lnbmF0dXJl";
const COOKIE_SECRET: &str = "s3ss10n-cookie-value-0042";

/// Sends example requests through a real server with the replayable log on,
/// and returns the log's text once every record is written.
async fn replayable_log(dir: &Path) -> String {
    let log = dir.join("replay.jsonl");
    let portcullis = support::start_portcullis_with(&root().join(POLICIES), |c| {
        c.decision_log.replay.output = log.display().to_string();
    })
    .await;
    let mut grpc =
        portcullis::foundation::proto::auth::authorization_client::AuthorizationClient::connect(
            format!("http://{}", portcullis.grpc_addr.unwrap()),
        )
        .await
        .unwrap();
    let alice = serde_json::json!({ "iss": "https://idp.acme.example", "sub": "alice",
        "tenant": "acme", "scope": ["orders:read"] });
    let suite: portcullis::app::suite::TestFile =
        serde_json::from_value(serde_json::json!({ "cases": [] })).unwrap();
    let requests = [
        serde_json::json!({ "host": "acme.example.com", "path": "/tenants/acme/orders/1", "claims": alice }),
        serde_json::json!({ "host": "acme.example.com", "path": "/tenants/acme/orders/2", "claims": alice }),
        serde_json::json!({ "host": "acme.example.com", "path": "/users/alice/profile", "claims": alice }),
        serde_json::json!({ "method": "PUT", "host": "acme.example.com", "path": "/users/alice/profile", "claims": alice }),
        serde_json::json!({ "host": "acme.example.com", "path": "/users/bob/profile", "claims": alice }),
        serde_json::json!({ "host": "acme.example.com", "path": "/healthz" }),
        // Credentials the log must drop (refused: nothing verifies them).
        serde_json::json!({ "host": "acme.example.com", "path": "/healthz",
            "headers": { "authorization": format!("Bearer {TOKEN}"), "dpop": PROOF,
                         "cookie": format!("session={COOKIE_SECRET}") } }),
        serde_json::json!({ "host": "acme.example.com", "path": "/docs/a",
            "headers": { "x-forwarded-token": TOKEN } }),
    ];
    for r in &requests {
        let r: portcullis::app::suite::TestRequest = serde_json::from_value(r.clone()).unwrap();
        let check = portcullis::app::cli::check_request_from_json(
            &portcullis::app::suite::request_json(&suite, &r),
        )
        .unwrap();
        grpc.check(check).await.unwrap();
    }
    let want = requests.len();
    support::eventually("every replay record written", || {
        let log = log.clone();
        async move { std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() == want) }
    })
    .await;
    portcullis.stop().await.unwrap();
    std::fs::read_to_string(&log).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[tokio::test]
async fn replay_reports_exactly_the_requests_a_change_affects() {
    let dir = tempfile::tempdir().unwrap();
    let text = replayable_log(dir.path()).await;
    for secret in [TOKEN, PROOF, COOKIE_SECRET] {
        assert!(
            !text.contains(secret),
            "the replayable log holds a credential: {text}"
        );
    }
    // The claims after mapping are there, for replay.
    assert!(text.contains("\"sub\":\"alice\""), "{text}");
    let log = dir.path().join("replay.jsonl");
    let log = log.to_str().unwrap();

    // The same rules: nothing changes.
    let out = portcullis(&[
        "replay",
        "--log",
        log,
        "--policies",
        POLICIES,
        "--fail-on-change",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains(", 0 changed"), "{stdout}");
    assert!(!stdout.contains("acme:"), "{stdout}");

    // Profiles become write-only: exactly the one GET of her own is affected.
    let tightened = dir.path().join("policies");
    copy_dir(&root().join(POLICIES), &tightened);
    let acme = tightened.join("acme.yaml");
    let yaml = std::fs::read_to_string(&acme).unwrap();
    let changed = yaml.replace(
        "methods: [GET, PUT]\n    path: /users/{owner}/profile",
        "methods: [PUT]\n    path: /users/{owner}/profile",
    );
    assert_ne!(changed, yaml);
    std::fs::write(&acme, changed).unwrap();
    let out = portcullis(&[
        "replay",
        "--log",
        log,
        "--policies",
        tightened.to_str().unwrap(),
        "--fail-on-change",
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    // The text report, as docs/access-review.md shows it.
    let text = portcullis(&[
        "replay",
        "--log",
        log,
        "--policies",
        tightened.to_str().unwrap(),
    ]);
    golden(
        "replay-tightened.txt",
        &String::from_utf8(text.stdout).unwrap(),
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let changes = report["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{report:#}");
    let (change, count) = (&changes[0][0], &changes[0][1]);
    assert_eq!(count, 1);
    assert_eq!(change["tenant"], "acme");
    assert_eq!(change["method"], "GET");
    assert_eq!(change["path"], "/users/alice/profile");
    assert_eq!(change["change"], "allow→deny");
    assert_eq!(change["was"], "allow (own-profile)");
    // The record refused at the identity stage is not replayed.
    assert_eq!(report["records"], 8);
    assert_eq!(report["skipped"], 1);
}

/// `portcullis lint` on one tenant file: (exit code, stdout).
fn lint_of(policy: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.yaml"), policy).unwrap();
    let out = portcullis(&["lint", dir.path().to_str().unwrap()]);
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn tenant_with(identity: &str, rules: &str) -> String {
    format!(
        "apiVersion: portcullis/v1\ntenant: t\nhosts: [t.example.com]\nidentity:\n{identity}rules:\n{rules}"
    )
}

const ENVOY_JWT: &str = "  envoy_jwt_authn:\n    issuers: [https://idp.t.example]\n";

#[test]
fn any_caller_finding() {
    let (code, out) = lint_of(&tenant_with(
        ENVOY_JWT,
        "  - id: open\n    methods: [GET]\n    path: /things/{id}\n    effect: allow\n",
    ));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("t.yaml:8: any-caller: rule open:"), "{out}");
    // Negative: a scope, or a condition on the caller, or a guarding deny rule.
    for rules in [
        "  - id: scoped\n    methods: [GET]\n    path: /things/{id}\n    scopes: [things:read]\n    effect: allow\n",
        "  - id: owned\n    methods: [GET]\n    path: /things/{id}\n    when: resource.params.id == claims.sub\n    effect: allow\n",
        "  - id: guard\n    path: /things/{id}\n    when: '!has(claims.roles)'\n    effect: deny\n  - id: open\n    methods: [GET]\n    path: /things/{id}\n    effect: allow\n",
    ] {
        let (code, out) = lint_of(&tenant_with(ENVOY_JWT, rules));
        assert_eq!((code, out.as_str()), (0, ""), "{rules}");
    }
}

#[test]
fn wildcard_write_finding_and_its_silence() {
    let rule = "  - id: files\n    methods: [PUT]\n    path: /files/{rest...}\n    scopes: [files:write]\n    effect: allow\n";
    let (code, out) = lint_of(&tenant_with(ENVOY_JWT, rule));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("t.yaml:8: wildcard-write: rule files:"),
        "{out}"
    );
    // Negative: reads only.
    let (code, out) = lint_of(&tenant_with(ENVOY_JWT, &rule.replace("[PUT]", "[GET]")));
    assert_eq!((code, out.as_str()), (0, ""));
    // Silenced with a reason: printed, not failing.
    let silenced = rule.replace(
        "    effect: allow\n",
        "    effect: allow\n    lint: { allow: [wildcard-write], reason: \"uploads land anywhere below /files\" }\n",
    );
    let (code, out) = lint_of(&tenant_with(ENVOY_JWT, &silenced));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("(silenced: uploads land anywhere below /files)"),
        "{out}"
    );
    // A silence without a reason is refused.
    let bare = rule.replace(
        "    effect: allow\n",
        "    effect: allow\n    lint: { allow: [wildcard-write] }\n",
    );
    let (code, out) = lint_of(&tenant_with(ENVOY_JWT, &bare));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("reason"), "{out}");
    let empty = rule.replace(
        "    effect: allow\n",
        "    effect: allow\n    lint: { allow: [wildcard-write], reason: \" \" }\n",
    );
    let (code, out) = lint_of(&tenant_with(ENVOY_JWT, &empty));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("silence-without-reason"), "{out}");
}

#[test]
fn superset_scopes_finding() {
    let rules = "  - id: narrow\n    methods: [GET]\n    path: /reports\n    scopes: [reports:read, reports:admin]\n    effect: allow\n  - id: broad\n    methods: [GET, HEAD]\n    path: /reports\n    scopes: [reports:read]\n    effect: allow\n";
    let (code, out) = lint_of(&tenant_with(ENVOY_JWT, rules));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "t.yaml:8: superset-scopes: rule narrow: its scopes strictly include rule broad's"
        ),
        "{out}"
    );
    assert_eq!(out.lines().count(), 1, "{out}");
    // Negative: different methods, or equal sets.
    for r in [
        rules.replace("[GET, HEAD]", "[POST]"),
        rules.replace("[reports:read]\n", "[reports:read, reports:admin]\n"),
    ] {
        let (code, out) = lint_of(&tenant_with(ENVOY_JWT, &r));
        assert_eq!((code, out.as_str()), (0, ""), "{r}");
    }
}

#[test]
fn unbounded_lifetime_finding() {
    let jwt = "  jwt:\n    - issuer: https://idp.t.example\n      audiences: [api]\n      algorithms: [ES256]\n      jwks_uri: https://idp.t.example/jwks\n";
    let rules =
        "  - id: scoped\n    methods: [GET]\n    path: /x\n    scopes: [x]\n    effect: allow\n";
    let (code, out) = lint_of(&tenant_with(jwt, rules));
    assert!(out.contains("unbounded-lifetime"), "{out}");
    assert!(out.contains("t.yaml:6:"), "{out}");
    assert_eq!(code, 1);
    let bounded = jwt.replace("      audiences", "      max_lifetime: 1h\n      audiences");
    let (code, out) = lint_of(&tenant_with(&bounded, rules));
    assert!(!out.contains("unbounded-lifetime"), "{out}");
    assert_eq!(code, 0, "{out}");
}

/// A decision log line as the server writes it (the fields `unused` reads).
fn log_line(time: &str, subject: &str, scopes: &[&str], decision: &str, rule: &str) -> String {
    serde_json::json!({
        "time": time, "decision_id": "0f8e6c1a-0000-4000-8000-000000000001",
        "tenant": "billing", "subject": subject, "issuer": "https://idp.billing.example",
        "client_id": null, "auth_method": "envoy_jwt", "scopes": scopes,
        "method": "GET", "host": "billing.example.com", "path": "/invoices/1",
        "rule": rule, "decision": decision, "reason": "allowed", "status": 200,
        "policy_digest": "sha256:6f1ed002ab5595859014ebf0951522d9a1ab5de9d5b4d3b5c5b2c1c0e7a41d77",
    })
    .to_string()
}

#[test]
fn unused_reports_exactly_the_scopes_never_required() {
    let five = [
        "invoices:read",
        "invoices:write",
        "refunds:write",
        "reports:read",
        "audit:read",
    ];
    let mut log = String::new();
    for i in 0..20 {
        let rule = if i % 2 == 0 {
            "read-invoices"
        } else {
            "write-invoices"
        };
        log += &log_line(
            &format!("2026-12-01T10:00:{i:02}.000Z"),
            "ann",
            &five,
            "allow",
            rule,
        );
        log.push('\n');
    }
    // Outside the window: a refund, which would make refunds:write used.
    log += &log_line("2026-11-01T00:00:00.000Z", "ann", &five, "allow", "refund");
    log.push('\n');
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("decisions.jsonl");
    std::fs::write(&file, &log).unwrap();
    let out = stdout(&[
        "unused",
        "--log",
        file.to_str().unwrap(),
        "--policies",
        POLICIES,
        "--since",
        "2026-12-01T00:00:00Z",
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let u = &v.as_array().unwrap()[0];
    assert_eq!(u["caller"], "ann");
    assert_eq!(
        u["unused"],
        serde_json::json!(["audit:read", "refunds:write", "reports:read"])
    );
    assert_eq!(
        u["suggested"],
        serde_json::json!(["invoices:read", "invoices:write"])
    );
    assert_eq!(
        u["rules_used"],
        serde_json::json!(["read-invoices", "write-invoices"])
    );
    // Its scopes would also let it reach the refund route, never used.
    assert!(
        u["rules_grantable"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("refund"))
    );
}

#[test]
fn unused_refuses_a_log_line_holding_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("decisions.jsonl");
    let line = log_line(
        "2026-12-01T10:00:00.000Z",
        TOKEN,
        &["invoices:read"],
        "allow",
        "read-invoices",
    );
    std::fs::write(&file, line + "\n").unwrap();
    let out = portcullis(&[
        "unused",
        "--log",
        file.to_str().unwrap(),
        "--policies",
        POLICIES,
    ]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 1: field \"subject\" holds a token-like value"),
        "{err}"
    );
    assert!(!err.contains(TOKEN), "the error repeats the token: {err}");
}

#[test]
fn reach_verifies_a_token_offline_against_the_tenants_own_keys() {
    use jwt_simple::prelude::*;
    let key = ES256KeyPair::generate().with_key_id("k1");
    let jwk: serde_json::Value = serde_json::from_str(&key.public_key().to_jwk()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = format!(
        "apiVersion: portcullis/v1\ntenant: t\nhosts: [t.example.com]\nidentity:\n  jwt:\n    - issuer: https://idp.t.example\n      audiences: [api]\n      algorithms: [ES256]\n      max_lifetime: 1h\n      jwks: {}\nrules:\n  - id: mine\n    methods: [GET]\n    path: /users/{{u}}\n    when: resource.params.u == claims.sub\n    effect: allow\n",
        serde_json::json!({ "keys": [jwk] })
    );
    std::fs::write(dir.path().join("t.yaml"), policy).unwrap();
    let now = support::now();
    let mut claims = support::raw_claims(serde_json::json!({ "sub": "carol" }));
    claims.issuer = Some("https://idp.t.example".into());
    claims.audiences = Some(Audiences::AsString("api".into()));
    claims.issued_at = Some(Duration::from_secs(now));
    claims.expires_at = Some(Duration::from_secs(now + 600));
    let token = key.sign(claims).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token).unwrap();
    let policies = dir.path().to_str().unwrap();
    let out = stdout(&[
        "reach",
        "--policies",
        policies,
        "--token",
        token_file.to_str().unwrap(),
    ]);
    assert!(out.contains("when resource.params.u == \"carol\""), "{out}");
    assert!(!out.contains(&token), "reach prints the token");
    // A token signed by another key is refused: nothing is reachable.
    let other = ES256KeyPair::generate().with_key_id("k1");
    let mut claims = support::raw_claims(serde_json::json!({ "sub": "carol" }));
    claims.issuer = Some("https://idp.t.example".into());
    claims.audiences = Some(Audiences::AsString("api".into()));
    claims.issued_at = Some(Duration::from_secs(now));
    claims.expires_at = Some(Duration::from_secs(now + 600));
    std::fs::write(&token_file, other.sign(claims).unwrap()).unwrap();
    let out = stdout(&[
        "reach",
        "--policies",
        policies,
        "--token",
        token_file.to_str().unwrap(),
    ]);
    assert!(out.contains("t: credential refused"), "{out}");
    assert!(!out.contains("mine"), "{out}");
}
