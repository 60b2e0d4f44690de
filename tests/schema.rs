//! The checked-in JSON Schemas (`docs/schema/`) are what the Rust types
//! generate, and the bundled examples satisfy them. Run with
//! `PORTCULLIS_BLESS=1` to rewrite the files after changing a type.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/schema")
}

#[test]
fn checked_in_schemas_match_the_types() {
    let bless = std::env::var_os("PORTCULLIS_BLESS").is_some();
    for (name, schema) in portcullis::app::schema::all() {
        let path = dir().join(name);
        let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        if bless {
            std::fs::create_dir_all(dir()).unwrap();
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let current = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run with PORTCULLIS_BLESS=1", path.display()));
        assert!(
            current == text,
            "{name} is out of date with the Rust types: run `PORTCULLIS_BLESS=1 cargo test --test schema`"
        );
    }
}

/// Every example file validates against its schema (checked with the
/// `jsonschema` package of the test venv, an independent validator).
#[test]
fn examples_satisfy_the_schemas() {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/python");
    assert!(python.exists(), "no {}: run `make test`", python.display());
    let script = r#"
import json, sys, pathlib, yaml, jsonschema
schemas, examples = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
kinds = [("_test.yaml", "policy-test"), (".revoked.yaml", "revocations"), (".data.yaml", "data"), (".data.json", "data"), (".yaml", "policy")]
checked = 0
for path in sorted(examples.iterdir()):
    kind = next((k for suffix, k in kinds if path.name.endswith(suffix)), None)
    if kind is None:
        continue
    schema = json.loads((schemas / f"{kind}.schema.json").read_text())
    doc = yaml.safe_load(path.read_text())
    jsonschema.validate(doc, schema)
    checked += 1
print(checked)
"#;
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(dir())
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/policies"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checked: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(checked >= 6, "only {checked} example files were checked");
}
