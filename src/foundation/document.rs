//! What every file portcullis reads shares: the `apiVersion` it must name,
//! and a problem in it reported with the file and line.
//!
//! Never imports: any other module of the crate.

use std::fmt;
use std::path::PathBuf;

/// The only `apiVersion` this binary understands.
pub const API_VERSION: &str = "portcullis/v1";

/// File names that hold test suites.
pub const TEST_SUFFIXES: [&str; 2] = ["_test.yaml", "_test.yml"];

/// Whether `name` is a test file rather than a policy.
pub fn is_test_file(name: &str) -> bool {
    TEST_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// One problem in a policy file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PolicyError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}
