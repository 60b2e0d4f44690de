//! cargo-fuzz target `token`: tokens and DPoP proofs through the identity stage. The body is
//! `fuzz/targets/token.rs`, which `tests/fuzz_corpus.rs` also runs over the
//! seed corpus in `make test`, so an API change breaks the ordinary build.
#![no_main]

#[path = "../targets/token.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
