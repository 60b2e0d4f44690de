//! cargo-fuzz target `check_request`: CheckRequest protobuf bytes through the whole pipeline. The body is
//! `fuzz/targets/check_request.rs`, which `tests/fuzz_corpus.rs` also runs over the
//! seed corpus in `make test`, so an API change breaks the ordinary build.
#![no_main]

#[path = "../targets/check_request.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
