//! cargo-fuzz target `path`: the canonical-path check. The body is
//! `fuzz/targets/path.rs`, which `tests/fuzz_corpus.rs` also runs over the
//! seed corpus in `make test`, so an API change breaks the ordinary build.
#![no_main]

#[path = "../targets/path.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
