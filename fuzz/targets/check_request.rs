//! The `check_request` fuzz target's body: CheckRequest protobuf bytes →
//! decision, through the whole pipeline on the example policies. Any input
//! must give a decision (never a panic), and an allow must come from a rule or
//! a tenant default. Shared by the cargo-fuzz target
//! (`fuzz/fuzz_targets/check_request.rs`) and `tests/fuzz_corpus.rs`, which
//! runs it over `fuzz/seeds/check_request` in `make test`.
//!
//! Never imports: anything but portcullis' public API, prost and std.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, OnceLock};

use prost::Message as _;

use portcullis::foundation::proto::auth::CheckRequest;
use portcullis::pipeline::Pipeline;
use portcullis::request::tenancy::TenantResolver;
use portcullis::tenants::store::PolicyStore;

/// The repository: this file is in `fuzz/targets/`, built from `fuzz/` or
/// from the repository root.
fn repo_root() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    if dir.join("examples").is_dir() {
        dir.to_path_buf()
    } else {
        dir.parent().expect("fuzz/ has a parent").to_path_buf()
    }
}

fn pipeline() -> &'static Pipeline {
    static P: OnceLock<Pipeline> = OnceLock::new();
    P.get_or_init(|| {
        let store = PolicyStore::new(repo_root().join("examples/policies"));
        let status = store.reload();
        assert!(status.errors.is_empty(), "{:?}", status.error_lines());
        Pipeline::new(Arc::new(store), TenantResolver::default())
    })
}

pub fn run(data: &[u8]) {
    let Ok(request) = CheckRequest::decode(data) else {
        return;
    };
    let decision = pipeline().check(&request);
    if decision.allowed {
        assert!(decision.tenant.is_some(), "an allow names its tenant");
    }
    // Rendering the answer for Envoy must not fail either.
    let _ = portcullis::decision::render::render(&decision);
}
