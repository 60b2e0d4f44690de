//! A tenant's `policy.rego` loaded: its modules and data files read through
//! the tenant's file scope (so a reload sees them change), compiled once per
//! distinct content and shared by every tenant with the same modules, data
//! and query.
//!
//! A module that does not compile is an error with its own file and line;
//! the store then keeps the tenant's old policy serving, as for YAML.
//!
//! Never imports: the pipeline or anything above it.

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use serde_json::Value as Json;

use super::file::RegoSpec;
use crate::foundation::document::PolicyError;
use crate::foundation::intern::{Interner, digest_of};
use crate::foundation::policy_files::FileScope;
use crate::policy::rego::{MAX_REGO_MODULE_BYTES, MAX_REGO_MODULES, RegoPolicy};

/// Largest `data` document file, in bytes.
pub use crate::foundation::limits::MAX_DATA_FILE_BYTES;

static SHARED: LazyLock<Interner<RegoPolicy>> = LazyLock::new(Interner::default);

/// Compiles `spec`, reading its files from `files`. `file` (the tenant's
/// policy file) and `line` (of `policy:`) name errors that belong to no module.
pub(super) fn load(
    spec: &RegoSpec,
    files: &FileScope,
    file: &std::path::Path,
    line: Option<usize>,
) -> Result<Arc<RegoPolicy>, Vec<PolicyError>> {
    let at_policy = |message: String| PolicyError {
        file: file.to_path_buf(),
        line,
        message,
    };
    if spec.files.len() > MAX_REGO_MODULES {
        return Err(vec![at_policy(format!(
            "policy.rego.files names {} modules, more than {MAX_REGO_MODULES}",
            spec.files.len()
        ))]);
    }
    let mut errors = Vec::new();
    let mut modules: Vec<(PathBuf, String)> = Vec::new();
    for name in &spec.files {
        // One byte over the bound, so a module at the bound is told apart.
        let limit = u64::try_from(MAX_REGO_MODULE_BYTES).unwrap_or(u64::MAX) + 1;
        match files.read_limited("policy.rego.files", name, limit) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => modules.push((files.base().join(name), text)),
                Err(_) => errors.push(at_policy(format!("policy.rego.files: {name} is not UTF-8"))),
            },
            Err(e) => errors.push(at_policy(e)),
        }
    }
    let mut data = serde_json::Map::new();
    for name in &spec.data {
        let limit = u64::try_from(MAX_DATA_FILE_BYTES).unwrap_or(u64::MAX);
        let parsed = files
            .read_limited("policy.rego.data", name, limit)
            .and_then(|bytes| {
                let text = String::from_utf8(bytes).map_err(|_| format!("{name} is not UTF-8"))?;
                crate::foundation::yaml::check(&text).map_err(|e| e.message)?;
                serde_yaml::from_str::<Json>(&text).map_err(|e| format!("{name}: {e}"))
            });
        match parsed {
            Ok(Json::Object(doc)) => merge(&mut data, doc),
            Ok(_) => errors.push(at_policy(format!(
                "policy.rego.data: {name} must be an object at the top"
            ))),
            Err(e) => errors.push(at_policy(format!("policy.rego.data: {e}"))),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let data_text = Json::Object(data.clone()).to_string();
    let key = digest_of("portcullis rego v1", &(&modules, data_text, &spec.query));
    if let Some(shared) = SHARED.get(&key) {
        return Ok(shared);
    }
    let data = (!data.is_empty()).then_some(Json::Object(data));
    let policy = RegoPolicy::compile(&modules, data, &spec.query)
        .map_err(|errs| errs.into_iter().map(PolicyError::from).collect::<Vec<_>>())?;
    Ok(SHARED.insert(key, Arc::new(policy)))
}

/// `from` merged into `into`: objects key by key, anything else replaced.
fn merge(into: &mut serde_json::Map<String, Json>, from: serde_json::Map<String, Json>) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Json::Object(a)), Json::Object(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}
