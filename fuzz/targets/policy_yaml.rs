//! The `policy_yaml` fuzz target's body: policy YAML → compile (and the same
//! text as a revocation list and a data document): any text gives a compiled
//! tenant or errors, never a panic. Shared by the cargo-fuzz target and
//! `tests/fuzz_corpus.rs`.
//!
//! Never imports: anything but portcullis' public API and std.

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = std::path::Path::new("/nonexistent/fuzz.yaml");
    if let Err(errors) = portcullis::tenants::compile(file, text) {
        assert!(!errors.is_empty(), "a refused file says why");
    }
    let _ = portcullis::identity::revocation::compile(file, text);
    let _ = portcullis::policy::data::compile(file, text);
}
