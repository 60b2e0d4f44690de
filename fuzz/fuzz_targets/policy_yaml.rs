//! Policy YAML → compile (and the same text as a revocation list and a data
//! document): any text gives a compiled tenant or errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = std::path::Path::new("/nonexistent/fuzz.yaml");
    if let Err(errors) = portcullis::tenants::compile(file, text) {
        assert!(!errors.is_empty(), "a refused file says why");
    }
    let _ = portcullis::revocation::compile(file, text);
    let _ = portcullis::data::compile(file, text);
});
