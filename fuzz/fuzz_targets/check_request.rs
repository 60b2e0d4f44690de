//! CheckRequest protobuf bytes → decision, through the whole pipeline on the
//! example policies. Any input must give a decision (never a panic), and an
//! allow must come from a rule or a tenant default.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use prost::Message as _;

use portcullis::pipeline::Pipeline;
use portcullis::proto::auth::CheckRequest;
use portcullis::store::PolicyStore;
use portcullis::tenant::TenantResolver;

fn pipeline() -> &'static Pipeline {
    static P: OnceLock<Pipeline> = OnceLock::new();
    P.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/policies");
        let store = PolicyStore::new(dir);
        let status = store.reload();
        assert!(status.errors.is_empty(), "{:?}", status.error_lines());
        Pipeline::new(Arc::new(store), TenantResolver::default())
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(request) = CheckRequest::decode(data) else {
        return;
    };
    let decision = pipeline().check(&request);
    if decision.allowed {
        assert!(decision.tenant.is_some(), "an allow names its tenant");
    }
    // Rendering the answer for Envoy must not fail either.
    let _ = portcullis::response::render(&decision);
});
