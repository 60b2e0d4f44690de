//! A tenant's `policy.cedar` loaded: its policies, schema and entities read
//! through the tenant's file scope (so a reload sees them change), its routes
//! checked against the tenant file, compiled once per distinct content and
//! shared by every tenant with the same files, routes and headers.
//!
//! An error carries its own file and line (a policy's from Cedar's source
//! span, a route's from the tenant file); the store then keeps the tenant's
//! old policy serving, as for YAML.
//!
//! Never imports: the pipeline or anything above it.

use std::path::Path;
use std::sync::{Arc, LazyLock};

use super::file::{CedarSpec, ResourceSpec};
use super::lines::line_of_value;
use crate::foundation::document::PolicyError;
use crate::foundation::intern::{Interner, digest_of};
use crate::foundation::policy_files::FileScope;
use crate::policy::cedar::{
    CedarPolicy, DEFAULT_RESOURCE_TYPE, MAX_CEDAR_FILE_BYTES, Route, Source,
};
use crate::policy::template::valid_header_name;
use crate::request::path::Template;

static SHARED: LazyLock<Interner<CedarPolicy>> = LazyLock::new(Interner::default);

/// Headers that carry credentials: never in `context.headers`.
const CREDENTIAL_HEADERS: [&str; 4] = ["authorization", "proxy-authorization", "cookie", "dpop"];

/// Compiles `spec`, reading its files from `files`. `file` and `text` are the
/// tenant's policy file (route errors name its lines; `line` is `policy:`'s);
/// `resources` its `resources:` section, whose attribute names must not be a
/// route's parameter; `credential_headers` the tenant's own token headers.
pub(super) fn load(
    spec: &CedarSpec,
    files: &FileScope,
    (file, text, line): (&Path, &str, Option<usize>),
    resources: &[ResourceSpec],
    credential_headers: &[String],
) -> Result<Arc<CedarPolicy>, Vec<PolicyError>> {
    let at = |line: Option<usize>, message: String| PolicyError {
        file: file.to_path_buf(),
        line,
        message,
    };
    let mut errors = Vec::new();
    let limit = u64::try_from(MAX_CEDAR_FILE_BYTES).unwrap_or(u64::MAX) + 1;
    let mut read = |field: &str, name: &str| -> Option<Source> {
        match files.read_limited(field, name, limit) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => Some(Source {
                    file: files.base().join(name),
                    text,
                }),
                Err(_) => {
                    errors.push(at(line, format!("{field}: {name} is not UTF-8")));
                    None
                }
            },
            Err(e) => {
                errors.push(at(line, e));
                None
            }
        }
    };
    let policies = read("policy.cedar.policies", &spec.policies);
    let schema = read("policy.cedar.schema", &spec.schema);
    let entities = spec
        .entities
        .as_ref()
        .map(|n| read("policy.cedar.entities", n));

    let mut headers = Vec::new();
    for name in &spec.headers {
        let lower = name.to_ascii_lowercase();
        let credential =
            CREDENTIAL_HEADERS.contains(&lower.as_str()) || credential_headers.contains(&lower);
        match valid_header_name(&lower) {
            Err(e) => errors.push(at(line, format!("policy.cedar.headers: {e}"))),
            Ok(()) if credential => errors.push(at(
                line,
                format!("policy.cedar.headers: {lower:?} carries credentials and is never exposed"),
            )),
            Ok(()) => headers.push(lower),
        }
    }

    let attribute_names: std::collections::BTreeSet<&str> = resources
        .iter()
        .flat_map(|r| r.attributes.keys().map(String::as_str))
        .collect();
    let mut routes = Vec::new();
    for r in &spec.routes {
        let route_line = line_of_value(text, "path", &r.path).or(line);
        let route_err = |m: String| at(route_line, format!("policy.cedar.routes {}: {m}", r.path));
        let template = match Template::parse(&r.path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(route_err(e.to_string()));
                continue;
            }
        };
        if let Some(p) = template.params().find(|p| attribute_names.contains(p)) {
            errors.push(route_err(format!(
                "parameter {{{p}}} is also a resource attribute (resources:); the resource would have it twice"
            )));
        }
        for m in &r.methods {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                errors.push(route_err(format!(
                    "method {m:?} must be an upper-case HTTP method"
                )));
            }
        }
        let resource_type = r
            .resource
            .clone()
            .unwrap_or_else(|| DEFAULT_RESOURCE_TYPE.to_string());
        if crate::policy::cedar_input::uid(&resource_type, "").is_none() {
            errors.push(route_err(format!(
                "resource {resource_type:?} is not a Cedar entity type name"
            )));
            continue;
        }
        routes.push(Route {
            template,
            methods: r.methods.clone(),
            action: r.action.clone(),
            resource_type,
            line: route_line,
        });
    }
    // No entities file is `Some(None)`; one that could not be read, `None`.
    let entities = match entities {
        None => Some(None),
        Some(read) => read.map(Some),
    };
    let (Some(policies), Some(schema), Some(entities)) = (policies, schema, entities) else {
        return Err(errors);
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let key = digest_of(
        "portcullis cedar v1",
        &(
            &policies.text,
            &schema.text,
            &schema
                .file
                .extension()
                .map(|e| e.to_string_lossy().to_string()),
            entities.as_ref().map(|e| &e.text),
            &spec.routes,
            &headers,
        ),
    );
    if let Some(shared) = SHARED.get(&key) {
        return Ok(shared);
    }
    let policy = CedarPolicy::compile(&policies, &schema, entities.as_ref(), routes, headers, file)
        .map_err(|errs| errs.into_iter().map(PolicyError::from).collect::<Vec<_>>())?;
    Ok(SHARED.insert(key, Arc::new(policy)))
}
