//! A bounded soak with reloads (issue 9): the real server on loopback, a few
//! gRPC clients sending allowed, denied and invalid-credential checks, while
//! the tenant's policy file is rewritten atomically, again and again, with two
//! valid versions that answer one route differently and a broken version.
//!
//! Every response names the digest of the rules that decided it, so each
//! decision is checked against what that version must answer. Independently of
//! the digest, no check sent and answered while a broken file sits over version
//! B (which closes `/flip`) may allow `/flip`.
//!
//! The run is bounded: at least [`REWRITES`] rewrites and [`DEFAULT_SOAK`] of
//! wall time (`PORTCULLIS_SOAK_SECS` sets a longer run for the reliability
//! report); it stops by itself. The process's resident memory is read after a
//! warm-up and at the end: it must stay within [`RSS_TOLERANCE_KB`], which a
//! leak of a few dozen bytes per check breaks (`PORTCULLIS_SOAK_LEAK_BYTES`
//! makes the clients leak on purpose, to show that it does).

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

use portcullis::app::cli::check_request_from_json;
use portcullis::foundation::proto::auth::authorization_client::AuthorizationClient;
use portcullis::foundation::proto::auth::check_response::HttpResponse;
use portcullis::foundation::proto::auth::{CheckRequest, CheckResponse};
use portcullis::tenants::store::PolicyStore;

/// The fewest rewrites of the policy file: half valid (A and B in turn), half
/// broken.
const REWRITES: usize = 40;
/// The shortest run, unless `PORTCULLIS_SOAK_SECS` says otherwise.
const DEFAULT_SOAK: Duration = Duration::from_secs(10);
/// The share of the run before the first memory reading: caches, connection
/// buffers and allocator arenas fill up during it.
const WARM_UP_SHARE: u32 = 4;
/// How much resident memory may grow between the end of the warm-up and the end
/// of the run. Allocator noise stays well below it; a leak does not (the report
/// prints how few bytes per check would exceed it).
const RSS_TOLERANCE_KB: u64 = 4 * 1024;
const CLIENTS: usize = 4;
/// Each client sends at least this many checks, and goes on until the last
/// rewrite has been served.
const MIN_CHECKS_PER_CLIENT: usize = 400;
/// How long one rewrite may take to be loaded (or refused) and seen by a client.
const STEP_DEADLINE: Duration = Duration::from_secs(10);

const HEAD: &str = "apiVersion: portcullis/v1\ntenant: soak\nhosts: [soak.example]\nidentity:\n  envoy_jwt_authn: { issuers: [\"https://idp.soak.example\"] }\nrules:\n  - { id: open, path: /open, effect: allow, public: true }\n";
/// Rules every valid version carries, so that a rule set is not tiny: a leaked
/// one per reload would show in memory.
fn filler() -> String {
    (0..FILLER_RULES)
        .map(|i| {
            format!("  - {{ id: filler-{i}, path: \"/filler/{i}/{{item}}\", methods: [GET], effect: allow, when: 'claims.sub == \"user-{i}\"' }}\n")
        })
        .collect()
}
const FILLER_RULES: usize = 64;

/// Version A opens `/flip` to everyone.
const FLIP_OPEN: &str = "  - { id: flip-open, path: /flip, effect: allow, public: true }\n";
/// Version B has no rule for `/flip`: an anonymous caller is asked for a credential.
const FLIP_CLOSED: &str = "  - { id: members, path: /members, effect: allow }\n";
/// The broken version would open `/flip` too, but a condition does not compile.
const BROKEN_TAIL: &str = "  - { id: flip-open, path: /flip, effect: allow, public: true }\n  - { id: bad, path: /bad, effect: allow, when: 'claims.x ==' }\n";

/// What the writer is doing, so clients can tell which answers are possible
/// without trusting the digest in the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
enum Phase {
    /// A valid version is being written or serves.
    Valid = 0,
    /// A broken file is written over version B: `/flip` must not allow.
    BrokenOverB = 1,
    /// A broken file is written over version A (which keeps serving).
    BrokenOverA = 2,
}

impl Tally {
    fn set_phase(&self, phase: Phase) {
        let epoch = (self.phase.load(Ordering::Acquire) >> 2) + 1;
        self.phase
            .store(epoch << 2 | phase as u64, Ordering::Release);
    }
}

/// This process's resident set size, from `/proc/self/status`.
fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

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
    /// `/flip` checks sent and answered while a broken file sat over version B,
    /// and how many of them were allowed (must be none).
    broken_flip_checks: AtomicU64,
    broken_flip_allows: AtomicU64,
    /// The writer's phase: `epoch << 2 | state`, see [`Phase`].
    phase: AtomicU64,
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
    let leak = env_u64("PORTCULLIS_SOAK_LEAK_BYTES").unwrap_or(0) as usize;
    let mut sent = 0usize;
    while sent < MIN_CHECKS_PER_CLIENT || !writer_done.load(Ordering::Acquire) {
        let kind = KINDS[(sent + offset) % KINDS.len()];
        sent += 1;
        tally.checks.fetch_add(1, Ordering::Relaxed);
        if leak > 0 {
            // Only to show that the memory check catches a leak this size.
            std::mem::forget(vec![1u8; leak]);
        }
        let phase_before = tally.phase.load(Ordering::Acquire);
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
        if kind == Probe::Flip
            && phase_before & 3 == Phase::BrokenOverB as u64
            && tally.phase.load(Ordering::Acquire) == phase_before
        {
            if status == 200 {
                tally.broken_flip_allows.fetch_add(1, Ordering::Relaxed);
            }
            tally.broken_flip_checks.fetch_add(1, Ordering::Release);
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
    let soak = env_u64("PORTCULLIS_SOAK_SECS").map_or(DEFAULT_SOAK, Duration::from_secs);
    let version_a = format!("{HEAD}{}{FLIP_OPEN}", filler());
    let version_b = format!("{HEAD}{}{FLIP_CLOSED}", filler());
    let broken = format!("{HEAD}{}{BROKEN_TAIL}", filler());
    let digest = |t: &str| portcullis::tenants::digest_of(t.as_bytes()).to_string();
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
    // until the store has refused it (the last good version keeps serving) and,
    // over B, until a `/flip` check was answered meanwhile.
    let mut refused = 0u64;
    let mut rewrites = 0usize;
    // (checks, RSS) at the end of the warm-up.
    let mut warm: Option<(u64, u64)> = None;
    let mut rss_peak = 0;
    while rewrites < REWRITES || started.elapsed() < soak || !rewrites.is_multiple_of(4) {
        let (a, b, _) = &*digests;
        match rewrites % 4 {
            r @ (1 | 3) => {
                let over_b = r == 1;
                tally.set_phase(if over_b {
                    Phase::BrokenOverB
                } else {
                    Phase::BrokenOverA
                });
                let flips = tally.broken_flip_checks.load(Ordering::Acquire);
                write_atomically(dir.path(), "soak.yaml", &broken);
                until("the broken version to be refused", &store, || {
                    !store.status().errors.is_empty()
                })
                .await;
                refused += 1;
                if over_b {
                    until("a /flip check while the file is broken", &store, || {
                        tally.broken_flip_checks.load(Ordering::Acquire) > flips
                    })
                    .await;
                }
            }
            r => {
                tally.set_phase(Phase::Valid);
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
        rewrites += 1;
        if warm.is_some() {
            rss_peak = rss_peak.max(rss_kb());
        } else if started.elapsed() >= soak / WARM_UP_SHARE && rewrites >= REWRITES / 4 {
            let rss = rss_kb();
            rss_peak = rss;
            warm = Some((tally.checks.load(Ordering::Relaxed), rss));
        }
    }
    writer_done.store(true, Ordering::Release);
    while let Some(res) = clients.join_next().await {
        res.unwrap();
    }
    let rss_end = rss_kb();
    let generations = store.status().generation - generation_start;
    server.stop().await.unwrap();

    let (warm_checks, rss_start) = warm.expect("the run outlasted its warm-up");
    let checks = tally.checks.load(Ordering::Relaxed);
    let wrong = tally.wrong.load(Ordering::Relaxed);
    let errors = tally.grpc_errors.load(Ordering::Relaxed);
    let broken_flip_checks = tally.broken_flip_checks.load(Ordering::Relaxed);
    let broken_flip_allows = tally.broken_flip_allows.load(Ordering::Relaxed);
    let after_warm_up = checks - warm_checks;
    let report: BTreeMap<&str, u64> = [
        ("checks", checks),
        ("allows", tally.allows.load(Ordering::Relaxed)),
        ("decided_by_a", tally.by_a.load(Ordering::Relaxed)),
        ("decided_by_b", tally.by_b.load(Ordering::Relaxed)),
        ("rewrites", rewrites as u64),
        ("reloads", generations),
        ("broken_refused", refused),
        ("broken_flip_checks", broken_flip_checks),
        ("broken_flip_allows", broken_flip_allows),
        ("wrong_decisions", wrong),
        ("grpc_errors", errors),
        ("checks_after_warm_up", after_warm_up),
        ("rss_start_kb", rss_start),
        ("rss_peak_kb", rss_peak),
        ("rss_end_kb", rss_end),
        ("rss_tolerance_kb", RSS_TOLERANCE_KB),
        // The smallest leak per check that would break the tolerance.
        (
            "leak_bytes_per_check_detected",
            (RSS_TOLERANCE_KB * 1024).div_ceil(after_warm_up.max(1)),
        ),
        ("millis", started.elapsed().as_millis() as u64),
    ]
    .into_iter()
    .collect();
    println!("soak: {}", serde_json::to_string(&report).unwrap());

    let examples = tally.examples.lock().unwrap().clone();
    assert_eq!(wrong, 0, "wrong decisions, e.g. {examples:#?}");
    assert_eq!(errors, 0, "gRPC errors, e.g. {examples:#?}");
    assert!(checks >= (CLIENTS * MIN_CHECKS_PER_CLIENT) as u64);
    assert_eq!(
        broken_flip_allows, 0,
        "/flip allowed while the file was broken over B"
    );
    assert!(broken_flip_checks > 0);
    // Every valid rewrite was loaded as its own generation.
    assert_eq!(generations, (rewrites / 2) as u64);
    assert!(
        rss_end <= rss_start + RSS_TOLERANCE_KB,
        "resident memory grew from {rss_start} kB after the warm-up to {rss_end} kB (tolerance {RSS_TOLERANCE_KB} kB)"
    );
}
