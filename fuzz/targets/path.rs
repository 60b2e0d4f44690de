//! The `path` fuzz target's body: the canonical-path check never panics, and
//! whatever it accepts decodes to segments that cannot walk out of their
//! place (no `.`, `..`, `/`, `\` or NUL in a decoded segment). Shared by the
//! cargo-fuzz target and `tests/fuzz_corpus.rs`.
//!
//! Never imports: anything but portcullis' public API and std.

pub fn run(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((path, _query, segments)) = portcullis::request::path::split_and_check(raw) else {
        return;
    };
    assert!(path.starts_with('/'));
    assert!(path.len() <= portcullis::foundation::limits::MAX_PATH_BYTES);
    let last = segments.len().saturating_sub(1);
    for (i, s) in segments.iter().enumerate() {
        assert!(s != "." && s != "..", "{raw:?} decoded to a dot segment");
        assert!(!s.contains(['/', '\\', '\0']), "{raw:?} decoded to {s:?}");
        assert!(!s.is_empty() || i == last, "{raw:?}: empty segment inside");
    }
}
