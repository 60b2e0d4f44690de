//! A bounded soak with reloads (issue 9): the real server on loopback, a few
//! gRPC clients sending allowed, denied and invalid-credential checks, while
//! the tenant's policy file is rewritten atomically, again and again, with two
//! valid versions that answer one route differently and a broken version.
//!
//! Every response names the digest of the rules that decided it, so each
//! decision is checked against what that version must answer. The run is
//! bounded by a number of rewrites and a number of checks; it stops by itself.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prost_types::value::Kind;
use serde_json::json;
use tonic::transport::Channel;

use portcullis::cli::check_request_from_json;
use portcullis::proto::auth::authorization_client::AuthorizationClient;
use portcullis::proto::auth::check_response::HttpResponse;
use portcullis::proto::auth::{CheckRequest, CheckResponse};
use portcullis::store::PolicyStore;

/// Rewrites of the policy file: half valid (A and B in turn), half broken.
const REWRITES: usize = 40;
const CLIENTS: usize = 4;
/// Each client sends at least this many checks, and goes on until the last
/// rewrite has been served.
const MIN_CHECKS_PER_CLIENT: usize = 400;
/// How long one rewrite may take to be loaded (or refused) and seen by a client.
const STEP_DEADLINE: Duration = Duration::from_secs(10);

const HEAD: &str = "apiVersion: portcullis/v1\ntenant: soak\nhosts: [soak.example]\nidentity:\n  envoy_jwt_authn: { issuers: [\"https://idp.soak.example\"] }\nrules:\n  - { id: open, path: /open, effect: allow, public: true }\n";
/// Version A opens `/flip` to everyone.
const FLIP_OPEN: &str = "  - { id: flip-open, path: /flip, effect: allow, public: true }\n";
/// Version B has no rule for `/flip`: an anonymous caller is asked for a credential.
const FLIP_CLOSED: &str = "  - { id: members, path: /members, effect: allow }\n";
/// The broken version would open `/flip` too, but a condition does not compile.
const BROKEN_TAIL: &str = "  - { id: flip-open, path: /flip, effect: allow, public: true }\n  - { id: bad, path: /bad, effect: allow, when: 'claims.x ==' }\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Probe {
    /// A public route in every version: 200.
    Open,
    /// The route the versions disagree on.
    Flip,
    /// No rule and no credential: 401 `missing_credential`.
    Private,
    /// A credential nothing verifies: 401 `invalid_credential`, even on a public route.
    BadCredential,
}

const KINDS: [Probe; 4] = [
    Probe::Open,
    Probe::Flip,
    Probe::Private,
    Probe::BadCredential,
];

fn request(kind: Probe) -> CheckRequest {
    let (path, headers) = match kind {
        Probe::Open => ("/open", json!({})),
        Probe::Flip => ("/flip", json!({})),
        Probe::Private => ("/private", json!({})),
        Probe::BadCredential => ("/open", json!({ "authorization": "Bearer forged" })),
    };
    check_request_from_json(&json!({ "attributes": { "request": { "http": {
        "method": "GET", "host": "soak.example", "path": path, "headers": headers
    } } } }))
    .unwrap()
}

/// What version A (`flip_open`) or B must answer: HTTP status and reason code.
fn expected(kind: Probe, flip_open: bool) -> (u16, &'static str) {
    match kind {
        Probe::Open => (200, "allowed"),
        Probe::Flip if flip_open => (200, "allowed"),
        Probe::Flip | Probe::Private => (401, "missing_credential"),
        Probe::BadCredential => (401, "invalid_credential"),
    }
}

/// The HTTP status, and the reason and digest from the dynamic metadata.
fn observed(r: &CheckResponse) -> (u16, Option<String>, Option<String>) {
    let status = match r.http_response.as_ref() {
        Some(HttpResponse::OkResponse(_)) => 200,
        Some(HttpResponse::DeniedResponse(d)) => d.status.as_ref().map_or(0, |s| s.code as u16),
        None => 0,
    };
    let field = |name: &str| {
        let md = r.dynamic_metadata.as_ref()?;
        let Some(Kind::StructValue(s)) = md.fields.get("portcullis")?.kind.as_ref() else {
            return None;
        };
        match s.fields.get(name)?.kind.as_ref()? {
            Kind::StringValue(v) => Some(v.clone()),
            _ => None,
        }
    };
    (status, field("reason"), field("policy_digest"))
}

fn write_atomically(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// What every client saw, shared with the writer.
#[derive(Default)]
struct Tally {
    checks: AtomicU64,
    grpc_errors: AtomicU64,
    wrong: AtomicU64,
    /// Checks decided by version A and by version B.
    by_a: AtomicU64,
    by_b: AtomicU64,
    allows: AtomicU64,
    /// The first few wrong decisions, for the failure message.
    examples: std::sync::Mutex<Vec<String>>,
}

async fn run_client(
    addr: SocketAddr,
    digests: Arc<(String, String, String)>,
    tally: Arc<Tally>,
    writer_done: Arc<AtomicBool>,
    offset: usize,
) {
    let mut c: AuthorizationClient<Channel> =
        AuthorizationClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
    let (a, b, broken) = &*digests;
    let mut sent = 0usize;
    while sent < MIN_CHECKS_PER_CLIENT || !writer_done.load(Ordering::Acquire) {
        let kind = KINDS[(sent + offset) % KINDS.len()];
        sent += 1;
        tally.checks.fetch_add(1, Ordering::Relaxed);
        let r = match c.check(request(kind)).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                tally.grpc_errors.fetch_add(1, Ordering::Relaxed);
                let mut ex = tally.examples.lock().unwrap();
                if ex.len() < 5 {
                    ex.push(format!("{kind:?}: gRPC error {e}"));
                }
                continue;
            }
        };
        let (status, reason, digest) = observed(&r);
        if status == 200 {
            tally.allows.fetch_add(1, Ordering::Relaxed);
        }
        let want = match digest.as_deref() {
            Some(d) if d == a => {
                tally.by_a.fetch_add(1, Ordering::Release);
                Some(expected(kind, true))
            }
            Some(d) if d == b => {
                tally.by_b.fetch_add(1, Ordering::Release);
                Some(expected(kind, false))
            }
            // The broken version's digest, no digest, or an unknown one: all wrong.
            _ => None,
        };
        let got = (status, reason.as_deref().unwrap_or(""));
        if want != Some(got) {
            tally.wrong.fetch_add(1, Ordering::Relaxed);
            let which = match digest.as_deref() {
                Some(d) if d == broken => "the BROKEN version",
                Some(_) => "a known version",
                None => "no digest",
            };
            let mut ex = tally.examples.lock().unwrap();
            if ex.len() < 5 {
                ex.push(format!(
                    "{kind:?}: got {got:?} from {which} ({digest:?}), want {want:?}"
                ));
            }
        }
    }
}

/// Polls `f` until it holds; fails the test after [`STEP_DEADLINE`].
async fn until(what: &str, store: &PolicyStore, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP_DEADLINE;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            store.status()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_reloads_never_decides_wrong() {
    let started = Instant::now();
    let version_a = format!("{HEAD}{FLIP_OPEN}");
    let version_b = format!("{HEAD}{FLIP_CLOSED}");
    let broken = format!("{HEAD}{BROKEN_TAIL}");
    let digest = |t: &str| portcullis::policy::digest_of(t.as_bytes()).to_string();
    let digests = Arc::new((digest(&version_a), digest(&version_b), digest(&broken)));

    let dir = tempfile::tempdir().unwrap();
    write_atomically(dir.path(), "soak.yaml", &version_a);
    let server = support::start_portcullis_with(dir.path(), |_| {}).await;
    let store = Arc::clone(&server.store);
    assert!(store.status().errors.is_empty(), "{:?}", store.status());
    let generation_start = store.status().generation;

    let tally = Arc::new(Tally::default());
    let writer_done = Arc::new(AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        clients.spawn(run_client(
            server.grpc_addr.unwrap(),
            Arc::clone(&digests),
            Arc::clone(&tally),
            Arc::clone(&writer_done),
            i,
        ));
    }

    // The writer: B, broken, A, broken, B, … Each valid version is waited for
    // until it serves and a client has been answered by it; each broken one
    // until the store has refused it (the last good version keeps serving).
    let mut refused = 0;
    for round in 0..REWRITES {
        let (a, b, _) = &*digests;
        match round % 4 {
            1 | 3 => {
                write_atomically(dir.path(), "soak.yaml", &broken);
                until("the broken version to be refused", &store, || {
                    !store.status().errors.is_empty()
                })
                .await;
                refused += 1;
            }
            r => {
                let (text, want, seen) = if r == 0 {
                    (&version_b, b, &tally.by_b)
                } else {
                    (&version_a, a, &tally.by_a)
                };
                write_atomically(dir.path(), "soak.yaml", text);
                until("the valid version to serve", &store, || {
                    store.status().errors.is_empty()
                        && store.tenant("soak").is_some_and(|t| *t.digest == **want)
                })
                .await;
                let before = seen.load(Ordering::Acquire);
                until("a check decided by the new version", &store, || {
                    seen.load(Ordering::Acquire) > before
                })
                .await;
            }
        }
    }
    writer_done.store(true, Ordering::Release);
    while let Some(res) = clients.join_next().await {
        res.unwrap();
    }
    let generations = store.status().generation - generation_start;
    server.stop().await.unwrap();

    let checks = tally.checks.load(Ordering::Relaxed);
    let wrong = tally.wrong.load(Ordering::Relaxed);
    let errors = tally.grpc_errors.load(Ordering::Relaxed);
    let report: BTreeMap<&str, u64> = [
        ("checks", checks),
        ("allows", tally.allows.load(Ordering::Relaxed)),
        ("decided_by_a", tally.by_a.load(Ordering::Relaxed)),
        ("decided_by_b", tally.by_b.load(Ordering::Relaxed)),
        ("rewrites", REWRITES as u64),
        ("broken_refused", refused),
        ("generations", generations),
        ("wrong_decisions", wrong),
        ("grpc_errors", errors),
        ("millis", started.elapsed().as_millis() as u64),
    ]
    .into_iter()
    .collect();
    println!("soak: {}", serde_json::to_string(&report).unwrap());

    let examples = tally.examples.lock().unwrap().clone();
    assert_eq!(wrong, 0, "wrong decisions, e.g. {examples:#?}");
    assert_eq!(errors, 0, "gRPC errors, e.g. {examples:#?}");
    assert!(checks >= (CLIENTS * MIN_CHECKS_PER_CLIENT) as u64);
    // Every valid rewrite was loaded as its own generation.
    assert_eq!(generations, (REWRITES / 2) as u64);
}
