//! The three engines agree: one object-level policy written as YAML rules
//! (CEL), as Rego and as Cedar (`tests/engines/`), decides every generated
//! request (method, path with an owner parameter, subject, scopes) alike, and
//! as the policy says. Requests go through the whole pipeline in process;
//! tokens are EdDSA JWTs minted by an independent JOSE library (jwt-simple).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::LazyLock;

use jwt_simple::prelude::*;
use proptest::prelude::*;
use serde_json::{Value, json};

use portcullis::pipeline::Pipeline;

const ISSUER: &str = "https://idp.docs.example";
const ENGINES: [&str; 3] = ["yaml", "rego", "cedar"];
const SUBJECTS: [&str; 3] = ["alice", "bob", "carol"];

struct World {
    _dir: tempfile::TempDir,
    pipeline: Pipeline,
    key: Ed25519KeyPair,
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let key = Ed25519KeyPair::generate().with_key_id("docs-1");
    let jwk: Value = serde_json::from_str(&key.public_key().to_jwk()).unwrap();
    let identity = format!(
        "shared_issuers: [\"{ISSUER}\"]\nidentity:\n  jwt:\n    - issuer: {ISSUER}\n      audiences: [docs-api]\n      algorithms: [EdDSA]\n      jwks: {}",
        json!({ "keys": [jwk] })
    );
    let dir = tempfile::tempdir().unwrap();
    let src = support::repo_root().join("tests/engines");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            dir.path().join(path.file_name().unwrap()),
            text.replace("{{identity}}", &identity),
        )
        .unwrap();
    }
    let (pipeline, store) = support::pipeline(dir.path());
    assert_eq!(store.status().tenants.len(), 3);
    World {
        _dir: dir,
        pipeline,
        key,
    }
});

#[derive(Debug, Clone)]
struct Case {
    method: &'static str,
    /// 0: `/users/{owner}/docs/{doc}`; 1: `/users/{owner}/docs`;
    /// 2: `/users/{owner}/docs/{doc}/raw`; 3: `/other/{owner}/docs/{doc}`.
    shape: u8,
    owner: String,
    doc: String,
    subject: Option<&'static str>,
    read: bool,
    write: bool,
}

impl Case {
    fn path(&self) -> String {
        let (o, d) = (&self.owner, &self.doc);
        match self.shape {
            0 => format!("/users/{o}/docs/{d}"),
            1 => format!("/users/{o}/docs"),
            2 => format!("/users/{o}/docs/{d}/raw"),
            _ => format!("/other/{o}/docs/{d}"),
        }
    }

    /// What the policy says.
    fn allowed(&self) -> bool {
        let own = self.shape == 0 && self.doc != "locked" && self.subject == Some(&self.owner);
        own && match self.method {
            "GET" => self.read,
            "PUT" | "DELETE" => self.write,
            _ => false,
        }
    }

    fn token(&self, key: &Ed25519KeyPair) -> Option<String> {
        let subject = self.subject?;
        let mut scopes = Vec::new();
        if self.read {
            scopes.push("docs:read");
        }
        if self.write {
            scopes.push("docs:write");
        }
        let t = support::now();
        let mut claims = json!({
            "iss": ISSUER, "aud": "docs-api", "sub": subject,
            "iat": t, "nbf": t - 5, "exp": t + 300,
        });
        if !scopes.is_empty() {
            claims["scope"] = json!(scopes.join(" "));
        }
        Some(key.sign(support::raw_claims(claims)).unwrap())
    }
}

fn cases() -> impl Strategy<Value = Case> {
    let name = || {
        prop_oneof![
            3 => proptest::sample::select(SUBJECTS.to_vec()).prop_map(String::from),
            1 => "[a-z]{1,6}",
        ]
    };
    (
        proptest::sample::select(vec!["GET", "PUT", "DELETE", "POST", "PATCH"]),
        prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)],
        name(),
        prop_oneof![1 => Just("locked".to_string()), 4 => "[a-z0-9]{1,6}"],
        proptest::option::weighted(0.9, proptest::sample::select(SUBJECTS.to_vec())),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(method, shape, owner, doc, subject, read, write)| Case {
            method,
            shape,
            owner,
            doc,
            subject,
            read,
            write,
        })
}

/// Each engine's decision for `case`: allowed, and the reason code.
fn decide(case: &Case) -> Vec<(bool, &'static str)> {
    let world = &*WORLD;
    let token = case.token(&world.key);
    ENGINES
        .iter()
        .map(|tenant| {
            let mut headers = json!({});
            if let Some(t) = &token {
                headers["authorization"] = json!(format!("Bearer {t}"));
            }
            let r = portcullis::app::cli::check_request_from_json(&json!({
                "attributes": {
                    "contextExtensions": { "tenant": tenant },
                    "request": { "http": {
                        "method": case.method, "path": case.path(), "host": "docs.example",
                        "headers": headers,
                    }},
                }
            }))
            .unwrap();
            let d = world.pipeline.check(&r);
            assert!(
                d.reason.code() != "policy_error",
                "{tenant} errored ({:?}) for {case:?}",
                d.detail
            );
            (d.allowed, d.reason.code())
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Behaviour: YAML/CEL, Rego and Cedar decide every request alike, as
    /// the policy says (no engine errors on any of them).
    #[test]
    fn the_three_engines_agree(case in cases()) {
        let got = decide(&case);
        let want = case.allowed();
        for (engine, (allowed, reason)) in ENGINES.iter().zip(&got) {
            prop_assert_eq!(*allowed, want, "{} decided {} ({}) for {:?}", engine, allowed, reason, case);
            prop_assert_ne!(*reason, "policy_error", "{} errored for {:?}", engine, case);
        }
    }
}

/// The generator reaches both answers for every engine: a property that
/// only ever saw denies would agree vacuously.
#[test]
fn the_generated_requests_reach_allow_and_deny() {
    let allow = Case {
        method: "PUT",
        shape: 0,
        owner: "bob".into(),
        doc: "d1".into(),
        subject: Some("bob"),
        read: false,
        write: true,
    };
    assert_eq!(decide(&allow), vec![(true, "allowed"); 3]);
    let locked = Case {
        doc: "locked".into(),
        ..allow.clone()
    };
    assert!(decide(&locked).iter().all(|(a, _)| !a));
    let other = Case {
        owner: "alice".into(),
        ..allow
    };
    assert!(decide(&other).iter().all(|(a, _)| !a));
}
