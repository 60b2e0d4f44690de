//! Every fuzz target's body, run over its seed corpus (`fuzz/seeds/<target>/`)
//! as an ordinary test, so `make test` compiles the targets against the
//! current API and replays the seeds. The cargo-fuzz targets in
//! `fuzz/fuzz_targets/` are one-line wrappers around the same files
//! (`fuzz/targets/<target>.rs`); `tests/fuzz/run.sh` still does the fuzzing.
//!
//! A target with no seeds fails, and so does a target file without a test
//! here: the list below is checked against `fuzz/targets/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/targets/check_request.rs"]
mod check_request;
#[path = "../fuzz/targets/path.rs"]
mod path;
#[path = "../fuzz/targets/policy_yaml.rs"]
mod policy_yaml;
#[path = "../fuzz/targets/token.rs"]
mod token;

use std::path::PathBuf;

/// The targets this file runs, by name.
const TARGETS: [&str; 4] = ["check_request", "path", "policy_yaml", "token"];

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Runs `body` over every seed of `target`, naming the seed that panics.
fn replay(target: &str, body: fn(&[u8])) {
    let dir = fuzz_dir().join("seeds").join(target);
    let mut seeds: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "{target}: no seeds in {}", dir.display());
    for seed in seeds {
        let data = std::fs::read(&seed).unwrap_or_else(|e| panic!("{}: {e}", seed.display()));
        let run = std::panic::catch_unwind(|| body(&data));
        assert!(run.is_ok(), "{target} panicked on {}", seed.display());
    }
}

#[test]
fn check_request_seeds() {
    replay("check_request", check_request::run);
}

#[test]
fn path_seeds() {
    replay("path", path::run);
}

#[test]
fn policy_yaml_seeds() {
    replay("policy_yaml", policy_yaml::run);
}

#[test]
fn token_seeds() {
    replay("token", token::run);
}

/// Every target file and every cargo-fuzz `[[bin]]` is run here, and every
/// one has seeds: a new target cannot be left out of `make test`.
#[test]
fn every_fuzz_target_is_replayed() {
    let mut files: Vec<String> = std::fs::read_dir(fuzz_dir().join("targets"))
        .expect("fuzz/targets")
        .map(|e| {
            let p = e.expect("an entry").path();
            p.file_stem()
                .expect("a name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    files.sort();
    assert_eq!(
        files, TARGETS,
        "fuzz/targets/ and this file's TARGETS differ"
    );
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let bins = manifest.matches("[[bin]]").count();
    assert_eq!(bins, TARGETS.len(), "fuzz/Cargo.toml has {bins} targets");
    for t in TARGETS {
        let wrapper = std::fs::read_to_string(fuzz_dir().join(format!("fuzz_targets/{t}.rs")))
            .unwrap_or_else(|e| panic!("fuzz_targets/{t}.rs: {e}"));
        assert!(
            wrapper.contains(&format!("\"../targets/{t}.rs\""))
                && wrapper.contains("target::run(data)"),
            "fuzz_targets/{t}.rs must wrap fuzz/targets/{t}.rs"
        );
        assert!(
            manifest.contains(&format!("path = \"fuzz_targets/{t}.rs\"")),
            "fuzz/Cargo.toml has no target {t}"
        );
    }
}
