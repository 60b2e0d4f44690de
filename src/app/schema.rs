//! JSON Schemas for the files people write: policies, policy tests, data
//! documents and revocation lists. Generated from the same Rust types the
//! loader reads, so editors check what portcullis checks. The checked-in copies
//! under `docs/schema/` are kept in step by a test (`tests/schema.rs`).

use serde_json::Value;

/// `(file name, schema)` for every kind of file.
pub fn all() -> Vec<(&'static str, Value)> {
    let schema = |s: schemars::Schema| serde_json::to_value(s).unwrap_or_default();
    vec![
        (
            "policy.schema.json",
            schema(schemars::schema_for!(crate::tenants::PolicyFile)),
        ),
        (
            "policy-test.schema.json",
            schema(schemars::schema_for!(crate::app::suite::TestFile)),
        ),
        (
            "data.schema.json",
            schema(schemars::schema_for!(crate::policy::data::DataFile)),
        ),
        (
            "revocations.schema.json",
            crate::identity::revocation::schema(),
        ),
    ]
}
