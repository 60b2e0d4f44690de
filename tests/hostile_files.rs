//! Files that must not fail open or stall loading (issue 25, items 5 and 9),
//! through the real server: gRPC checks on port 0 and the admin port's
//! `/readyz`, over policy directories the tests write.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use serde_json::json;
use sha2::Digest as _;
use tonic::transport::Channel;

use portcullis::app::request_json::check_request_from_json;
use portcullis::foundation::proto::auth::authorization_client::AuthorizationClient;
use portcullis::foundation::proto::auth::check_response::HttpResponse;
use support::http;

const MALLORY: &str = "pk_live_mallory_0123456789";
const ALICE: &str = "pk_live_alice_0123456789ab";
const BOB: &str = "pk_live_bob_0123456789abcde";

fn sha256(key: &str) -> String {
    sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// acme (keys for mallory and alice) and globex (a key for bob); each has a
/// rule for any known caller and a public route.
fn write_policies(dir: &Path) {
    for (tenant, keys) in [
        ("acme", vec![(MALLORY, "mallory"), (ALICE, "alice")]),
        ("globex", vec![(BOB, "bob")]),
    ] {
        let keys: String = keys
            .iter()
            .map(|(k, sub)| format!("      - {{ sha256: {}, subject: {sub} }}\n", sha256(k)))
            .collect();
        let policy = format!(
            "apiVersion: portcullis/v1\ntenant: {tenant}\nidentity:\n  api_keys:\n    keys:\n{keys}rules:\n  - {{ id: reports, path: /reports, effect: allow }}\n  - {{ id: open, path: /open, effect: allow, public: true }}\n"
        );
        write(dir, &format!("{tenant}.yaml"), &policy);
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn revoking(sub: &str) -> String {
    format!("apiVersion: portcullis/v1\ntenant: acme\nrevoked:\n  - {{ sub: {sub} }}\n")
}

/// Names acme, but its one entry names two kinds: it never compiles.
const BROKEN: &str =
    "apiVersion: portcullis/v1\ntenant: acme\nrevoked:\n  - { sub: mallory, jti: j-1 }\n";

/// (status, deny reason or "") of one check.
async fn check(
    c: &mut AuthorizationClient<Channel>,
    tenant: &str,
    path: &str,
    key: Option<&str>,
) -> (u16, String) {
    let headers = match key {
        Some(k) => json!({ "x-api-key": k }),
        None => json!({}),
    };
    let req = check_request_from_json(&json!({ "attributes": {
        "request": { "http": { "method": "GET", "host": "h.example", "path": path, "headers": headers } },
        "contextExtensions": { "tenant": tenant },
    }}))
    .unwrap();
    let r = c.check(req).await.unwrap().into_inner();
    match r.http_response.unwrap() {
        HttpResponse::OkResponse(_) => (200, String::new()),
        HttpResponse::DeniedResponse(d) => {
            let body: serde_json::Value = serde_json::from_str(&d.body).unwrap();
            assert!(
                !d.body.contains(".revoked.yaml"),
                "no file names to the client: {}",
                d.body
            );
            (
                d.status.unwrap().code as u16,
                body["error"].as_str().unwrap_or_default().to_string(),
            )
        }
    }
}

struct Server {
    running: portcullis::app::serve::Running,
    c: AuthorizationClient<Channel>,
}

/// A server that tells clients the exact reason (`client_errors: detailed`),
/// so a revoked token is told `token_revoked` rather than `invalid_token`.
async fn start(dir: &Path) -> Server {
    let running = support::start_portcullis_with(dir, |c| {
        c.client_errors = portcullis::foundation::client_errors::ClientErrors::Detailed;
    })
    .await;
    let c = AuthorizationClient::connect(format!("http://{}", running.grpc_addr.unwrap()))
        .await
        .unwrap();
    Server { running, c }
}

impl Server {
    async fn readyz(&self) -> (u16, serde_json::Value) {
        let r = http(self.running.admin_addr, "GET", "/readyz", &[], None).await;
        (r.status, r.json())
    }

    /// What each caller gets: mallory, alice, anonymous at acme, bob at globex.
    async fn outcomes(&mut self) -> [(u16, String); 4] {
        let c = &mut self.c;
        [
            check(c, "acme", "/reports", Some(MALLORY)).await,
            check(c, "acme", "/reports", Some(ALICE)).await,
            check(c, "acme", "/open", None).await,
            check(c, "globex", "/reports", Some(BOB)).await,
        ]
    }
}

fn ok() -> (u16, String) {
    (200, String::new())
}

fn unavailable() -> (u16, String) {
    (503, "revocation_unavailable".into())
}

fn revoked() -> (u16, String) {
    (401, "token_revoked".into())
}

#[tokio::test]
async fn a_revocation_list_broken_at_start_fails_closed_until_fixed() {
    let dir = tempfile::tempdir().unwrap();
    write_policies(dir.path());
    write(dir.path(), "acme.revoked.yaml", &revoking("mallory"));

    // A running replica: the list serves; a broken edit keeps it.
    let mut server = start(dir.path()).await;
    assert_eq!(server.outcomes().await, [revoked(), ok(), ok(), ok()]);
    write(dir.path(), "acme.revoked.yaml", BROKEN);
    support::eventually("the broken edit is seen", || async {
        let (_, body) = server.readyz().await;
        body["policy_errors"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    })
    .await;
    assert_eq!(server.outcomes().await, [revoked(), ok(), ok(), ok()]);
    let (code, body) = server.readyz().await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body["notes"]
            .to_string()
            .contains("keeping the last good revocation list"),
        "{body}"
    );
    server.running.stop().await.unwrap();

    // A restart (or a new replica) over the broken file: acme's callers that
    // a list could revoke get 503; anonymous callers and globex are served.
    let mut server = start(dir.path()).await;
    assert_eq!(
        server.outcomes().await,
        [unavailable(), unavailable(), ok(), ok()]
    );
    let (code, body) = server.readyz().await;
    assert_eq!(code, 503, "{body}");
    let not_ready = body["not_ready"].to_string();
    assert!(
        not_ready.contains("acme")
            && not_ready.contains("acme.revoked.yaml")
            && not_ready.contains("revoked[0]"),
        "{body}"
    );

    // Fixed: denied and allowed as the list says, and ready.
    write(dir.path(), "acme.revoked.yaml", &revoking("mallory"));
    support::eventually("the fixed list", || async {
        server.readyz().await.0 == 200
    })
    .await;
    assert_eq!(server.outcomes().await, [revoked(), ok(), ok(), ok()]);
    server.running.stop().await.unwrap();
}

#[tokio::test]
async fn two_revocation_files_for_one_tenant_neither_order_wins() {
    // Whichever file sorts first, neither list is used.
    for (first, second) in [("mallory", "alice"), ("alice", "mallory")] {
        let dir = tempfile::tempdir().unwrap();
        write_policies(dir.path());
        write(dir.path(), "a.revoked.yaml", &revoking(first));
        write(dir.path(), "acme.revoked.yaml", &revoking(second));
        let mut server = start(dir.path()).await;
        assert_eq!(
            server.outcomes().await,
            [unavailable(), unavailable(), ok(), ok()]
        );
        let (code, body) = server.readyz().await;
        assert_eq!(code, 503, "{body}");
        let errors = body["policy_errors"].to_string();
        assert!(
            errors.contains("a.revoked.yaml") && errors.contains("acme.revoked.yaml"),
            "{body}"
        );

        // One removed: the other is the list.
        std::fs::remove_file(dir.path().join("a.revoked.yaml")).unwrap();
        support::eventually("one list left", || async { server.readyz().await.0 == 200 }).await;
        let revoked_one = if second == "mallory" {
            [revoked(), ok(), ok(), ok()]
        } else {
            [ok(), revoked(), ok(), ok()]
        };
        assert_eq!(server.outcomes().await, revoked_one);
        server.running.stop().await.unwrap();
    }
}

/// 200 KB nested three ways after `head`: flow `[`, flow `{`, block keys.
fn hostile(head: &str) -> [String; 3] {
    let size = 200 * 1024;
    let mut block = format!("{head}x:\n");
    let mut d = 1;
    while block.len() < size {
        block.push_str(&format!("{}k{d}:\n", " ".repeat(d)));
        d += 1;
    }
    [
        format!("{head}x: {}", "[".repeat(size)),
        format!("{head}x: {}", "{a: ".repeat(size / 4)),
        block,
    ]
}

#[tokio::test]
async fn deeply_nested_files_are_refused_with_their_line_at_start_and_on_reload() {
    let head = |tenant: &str| format!("apiVersion: portcullis/v1\ntenant: {tenant}\n");
    for nested in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        write_policies(dir.path());
        write(dir.path(), "deep.yaml", &hostile(&head("deep"))[nested]);
        write(
            dir.path(),
            "globex.data.yaml",
            &hostile(&head("globex"))[nested],
        );
        write(
            dir.path(),
            "initech.revoked.yaml",
            &hostile(&head("initech"))[nested],
        );

        // Start-up is not held up: both ports answer, the others serve.
        let mut server = start(dir.path()).await;
        assert_eq!(server.outcomes().await, [ok(), ok(), ok(), ok()]);
        let (_, body) = server.readyz().await;
        let errors = body["policy_errors"].to_string();
        // The line where the depth passes 64: the flow files' third, the
        // block file's 67th (`x:` on line 3 is the first level).
        let line = [3, 3, 67][nested];
        for file in ["deep.yaml", "globex.data.yaml", "initech.revoked.yaml"] {
            let at = format!("{file}:{line}:");
            assert!(errors.contains(&at), "{at}: {body}");
        }
        assert!(
            errors.contains("YAML nests deeper than 64 levels"),
            "{body}"
        );
        // The revocation list named initech's: initech fails closed.
        assert!(body["not_ready"].to_string().contains("initech"), "{body}");

        // On reload: acme's file turns hostile; its rules and globex keep serving.
        write(dir.path(), "acme.yaml", &hostile(&head("acme"))[nested]);
        support::eventually("the hostile reload is refused", || async {
            let (_, body) = server.readyz().await;
            body["policy_errors"]
                .to_string()
                .contains(&format!("acme.yaml:{line}:"))
        })
        .await;
        assert_eq!(server.outcomes().await, [ok(), ok(), ok(), ok()]);
        server.running.stop().await.unwrap();
    }
}
