//! cargo-fuzz target `policy_yaml`: policy, revocation and data files compiled. The body is
//! `fuzz/targets/policy_yaml.rs`, which `tests/fuzz_corpus.rs` also runs over the
//! seed corpus in `make test`, so an API change breaks the ordinary build.
#![no_main]

#[path = "../targets/policy_yaml.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
