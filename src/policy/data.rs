//! Per-tenant data documents: small YAML or JSON files that conditions read as
//! `data.<...>` (group memberships, resource owners, plan limits).
//!
//! A data file sits beside the policies (`<name>.data.yaml`, `.data.yml` or
//! `.data.json`), names its tenant, and is reloaded like a policy: a changed
//! file that loads replaces the tenant's data, a broken one keeps the previous
//! data serving and is reported, a removed one drops it. The document is
//! converted to CEL once per load, never per request. It is bounded in size, so
//! a condition's cost stays bounded too.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::foundation::document::{API_VERSION, PolicyError};

/// File names that hold data documents.
pub const SUFFIXES: [&str; 3] = [".data.yaml", ".data.yml", ".data.json"];
pub use crate::foundation::limits::MAX_DATA_FILE_BYTES;

/// Whether `name` is a data document.
pub fn is_data_file(name: &str) -> bool {
    SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// A data file as written.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataFile {
    /// Always `portcullis/v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// The tenant whose conditions see this document as `data`.
    pub tenant: String,
    /// A map: conditions read `data.<key>...`.
    pub data: serde_json::Map<String, Json>,
}

/// A loaded data document.
#[derive(Debug)]
pub struct DataDoc {
    pub tenant: String,
    pub file: PathBuf,
    /// The document as CEL reads it.
    pub value: ::cel::Value,
}

/// Parses and bounds one data file.
pub fn compile(file: &Path, text: &str) -> Result<DataDoc, Vec<PolicyError>> {
    let err = |line: Option<usize>, message: String| {
        vec![PolicyError {
            file: file.to_path_buf(),
            line,
            message,
        }]
    };
    if text.len() > MAX_DATA_FILE_BYTES {
        return Err(err(
            None,
            format!(
                "data file is {} bytes; the limit is {MAX_DATA_FILE_BYTES}",
                text.len()
            ),
        ));
    }
    // YAML is a superset of JSON: one parser reads both.
    let doc: DataFile = crate::foundation::yaml::from_str(text)
        .map_err(|e| err(e.line, format!("invalid data file: {e}")))?;
    if doc.api_version != API_VERSION {
        return Err(err(
            Some(1),
            format!(
                "apiVersion {:?} is not supported; data files are {API_VERSION}",
                doc.api_version
            ),
        ));
    }
    Ok(DataDoc {
        tenant: doc.tenant,
        file: file.to_path_buf(),
        value: crate::policy::json_to_cel(&Json::Object(doc.data)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_yaml_and_json_and_bounds_size() {
        let d = compile(
            Path::new("a.data.yaml"),
            "apiVersion: portcullis/v1\ntenant: a\ndata: { owners: { n1: alice } }\n",
        )
        .unwrap();
        assert_eq!(d.tenant, "a");
        let d = compile(
            Path::new("a.data.json"),
            r#"{"apiVersion": "portcullis/v1", "tenant": "a", "data": {"plans": {"x": 1}}}"#,
        )
        .unwrap();
        assert_eq!(d.tenant, "a");
        let big = format!(
            "apiVersion: portcullis/v1\ntenant: a\ndata: {{ k: \"{}\" }}\n",
            "x".repeat(MAX_DATA_FILE_BYTES)
        );
        let e = compile(Path::new("a.data.yaml"), &big).unwrap_err();
        assert!(e[0].message.contains("limit"), "{e:?}");
        let e = compile(
            Path::new("a.data.yaml"),
            "apiVersion: portcullis/v1\ntenant: a\ndata: [1]\n",
        )
        .unwrap_err();
        assert_eq!(e[0].line, Some(3), "{e:?}");
        let e = compile(
            Path::new("a.data.yaml"),
            "apiVersion: portcullis/v2\ntenant: a\ndata: {}\n",
        )
        .unwrap_err();
        assert!(e[0].message.contains("portcullis/v2"), "{e:?}");
    }
}
