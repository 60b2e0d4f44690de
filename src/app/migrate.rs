//! `portcullis migrate opa-envoy`: from an OPA-Envoy config file and its
//! policy directory, the portcullis tenant that runs the same Rego (the
//! modules and data copied, the query from the plugin's `path`), the Envoy
//! settings that send the tenant's requests to portcullis, and a finding for
//! each thing that does not carry over (`http.send`, bundles, decision-log
//! plugins, …) with what to use instead (docs/rego.md, "Moving from
//! OPA-Envoy").
//!
//! [`plan`] reads and decides, and writes nothing; the command writes the
//! plan and then validates the result exactly as `portcullis validate` does.
//!
//! Never imported by: anything but the command line.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::policy::rego::{DEFAULT_QUERY, forbidden_call};

/// How loudly a finding is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Behaviour that changes or is lost: the operator must act.
    Warning,
    /// Something done for the operator, or settings with no counterpart.
    Note,
}

/// One thing the migration could not carry over as it was, and what to use
/// instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    /// What, with its file (and line) or config key.
    pub what: String,
    pub instead: String,
}

/// What the migration writes, relative to the output directory, and what it
/// found.
#[derive(Debug, Default)]
pub struct Plan {
    pub files: Vec<(PathBuf, Vec<u8>)>,
    pub findings: Vec<Finding>,
}

/// The tenant file's name in the output directory.
pub fn tenant_file(tenant: &str) -> PathBuf {
    PathBuf::from(format!("{tenant}.yaml"))
}

/// The Envoy settings' file name in the output directory (not `*.yaml`: the
/// output directory is a policy directory, whose YAML files are tenants).
pub const ENVOY_FILE: &str = "envoy.yaml.example";

/// Most files read from the policy directory.
const MAX_FILES: usize = 1024;

/// Builtins that verify a token with keys the policy names.
const VERIFYING: [&str; 2] = ["io.jwt.decode_verify", "io.jwt.verify_"];

/// Reads `config` (OPA-Envoy's YAML or JSON config file's text) and the
/// policy directory `policies`, and plans tenant `tenant` served by
/// portcullis at `portcullis` (host:port, for Envoy's cluster).
pub fn plan(config: &str, policies: &Path, tenant: &str, portcullis: &str) -> Result<Plan, String> {
    if tenant.is_empty()
        || !tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "tenant {tenant:?}: use letters, digits, '-' and '_'"
        ));
    }
    let config: Json =
        serde_yaml::from_str(config).map_err(|e| format!("OPA-Envoy config: {e}"))?;
    let mut plan = Plan::default();
    let query = read_config(&config, &mut plan.findings)?;
    let dry_run = plugin(&config)
        .and_then(|p| p.get("dry-run"))
        .and_then(Json::as_bool)
        .unwrap_or(false);

    let mut found = Vec::new();
    walk(policies, Path::new(""), &mut found)?;
    found.sort();
    let mut modules = Vec::new();
    let mut data = Vec::new();
    let mut reads_body = false;
    let mut verifies = false;
    for rel in found {
        let name = rel.display().to_string();
        let file_name = rel.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let path = policies.join(&rel);
        if file_name.ends_with("_test.rego") {
            plan.findings.push(Finding {
                level: Level::Note,
                what: format!("{name}: an `opa test` module, not copied"),
                instead: "write the cases as a `*_test.yaml` suite and run `portcullis test` (docs/rego.md)".into(),
            });
        } else if file_name.ends_with(".rego") {
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            if let Some((line, builtin)) = forbidden_call(&text) {
                plan.findings.push(Finding {
                    level: Level::Warning,
                    what: format!("{name}:{line}: `{builtin}` (the module will not load)"),
                    instead: "a decision makes no network or host calls: put what it fetched in a `data` document (`policy.rego.data`, reloaded with the tenant), use token introspection (`identity.introspection`) or the claims of the identity stage (`input.portcullis.claims`)".into(),
                });
            }
            if VERIFYING.iter().any(|b| text.contains(b)) {
                verifies = true;
            }
            reads_body |= text.contains("parsed_body")
                || text.contains("truncated_body")
                || text.contains("http.body")
                || text.contains("rawBody");
            modules.push(rel.clone());
            plan.files.push((rel, text.into_bytes()));
        } else if file_name == "data.json" || file_name == "data.yaml" || file_name == "data.yml" {
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let doc: Json =
                serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            // OPA roots a data file at its directory: `roles/data.json` is
            // `data.roles`. portcullis merges data files at the root, so the
            // document is wrapped in its directory's keys.
            let mut wrapped = doc;
            let dirs: Vec<String> = rel
                .parent()
                .into_iter()
                .flat_map(Path::components)
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            for key in dirs.iter().rev() {
                wrapped = serde_json::json!({ key: wrapped });
            }
            if !wrapped.is_object() {
                return Err(format!(
                    "{name}: a data document at the root must be an object"
                ));
            }
            // JSON, beside the modules: a `*.yaml` in a policy directory is
            // read as a tenant file.
            let out = if dirs.is_empty() {
                PathBuf::from("data.json")
            } else {
                PathBuf::from(format!("data.{}.json", dirs.join(".")))
            };
            if !dirs.is_empty() || file_name != "data.json" {
                plan.findings.push(Finding {
                    level: Level::Note,
                    what: format!("{name}: written as {}", out.display()),
                    instead: if dirs.is_empty() {
                        "the same document, as JSON".into()
                    } else {
                        format!(
                            "the document under `data.{}`, as OPA roots it",
                            dirs.join(".")
                        )
                    },
                });
            }
            data.push(out.clone());
            let mut bytes = serde_json::to_vec_pretty(&wrapped).unwrap_or_default();
            bytes.push(b'\n');
            plan.files.push((out, bytes));
        } else if file_name == ".manifest" || file_name.ends_with(".tar.gz") {
            plan.findings.push(Finding {
                level: Level::Warning,
                what: format!("{name}: a bundle file, not read"),
                instead: "unpack the bundle into the policy directory; portcullis reads plain files and reloads them on change".into(),
            });
        } else {
            plan.findings.push(Finding {
                level: Level::Note,
                what: format!("{name}: not a module or a data document, not copied"),
                instead: "OPA-Envoy read only `.rego` and `data.json`/`data.yaml` from it too, unless it was a bundle".into(),
            });
        }
    }
    if modules.is_empty() {
        return Err(format!("{}: no .rego module", policies.display()));
    }
    if verifies {
        plan.findings.push(Finding {
            level: Level::Warning,
            what: "a module verifies tokens with `io.jwt.decode_verify`/`io.jwt.verify_*`".into(),
            instead: format!(
                "portcullis verifies them with the tenant's own issuers, never with the `cert` or `secret` the policy names: fill in `identity.jwt` in {} (HS256 shared-secret tokens are never accepted)",
                tenant_file(tenant).display()
            ),
        });
    }
    let tenant_text = tenant_yaml(tenant, &modules, &data, &query, dry_run, verifies);
    plan.files
        .push((tenant_file(tenant), tenant_text.into_bytes()));
    plan.files.push((
        PathBuf::from(ENVOY_FILE),
        envoy_settings(tenant, portcullis, reads_body).into_bytes(),
    ));
    Ok(plan)
}

fn plugin(config: &Json) -> Option<&Json> {
    let plugins = config.get("plugins")?;
    plugins
        .get("envoy_ext_authz_grpc")
        .or_else(|| plugins.get("envoy.ext_authz.grpc"))
}

/// The query, and a finding for every config key that does not carry over.
fn read_config(config: &Json, findings: &mut Vec<Finding>) -> Result<String, String> {
    let Some(object) = config.as_object() else {
        return Err("OPA-Envoy config: not a mapping".into());
    };
    let Some(plugin) = plugin(config) else {
        return Err("OPA-Envoy config: no plugins.envoy_ext_authz_grpc".into());
    };
    let mut note = |level, what: String, instead: &str| {
        findings.push(Finding {
            level,
            what,
            instead: instead.into(),
        });
    };
    let query = match (plugin.get("path"), plugin.get("query")) {
        (Some(Json::String(path)), _) => {
            format!("data.{}", path.trim_matches('/').replace('/', "."))
        }
        (None, Some(Json::String(query))) => query.clone(),
        (None, None) => DEFAULT_QUERY.to_string(),
        _ => {
            return Err(
                "OPA-Envoy config: plugins.envoy_ext_authz_grpc.path must be a string".into(),
            );
        }
    };
    for (key, value) in plugin.as_object().into_iter().flatten() {
        match key.as_str() {
            "path" | "query" => {}
            "addr" => note(
                Level::Note,
                format!("plugins.envoy_ext_authz_grpc.addr ({value})"),
                "portcullis listens on its config's `listen`; the Envoy settings written point the ext_authz cluster at it",
            ),
            "dry-run" => {
                if value.as_bool() == Some(true) {
                    note(
                        Level::Note,
                        "plugins.envoy_ext_authz_grpc.dry-run: true".into(),
                        "the tenant is written with `mode: dry_run` (decided, logged and counted, then allowed)",
                    );
                }
            }
            "skip-request-body-parse" => note(
                Level::Warning,
                "plugins.envoy_ext_authz_grpc.skip-request-body-parse".into(),
                "portcullis parses JSON and form bodies whenever Envoy sends one; leave `with_request_body` out of Envoy's filter to send none",
            ),
            "proto-descriptor" => note(
                Level::Warning,
                "plugins.envoy_ext_authz_grpc.proto-descriptor".into(),
                "gRPC request bodies are not parsed: `parsed_body` is null for them; decide on the path (`/package.Service/Method`) and headers",
            ),
            "enable-reflection" => note(
                Level::Note,
                format!("plugins.envoy_ext_authz_grpc.{key}"),
                "portcullis serves gRPC health, not reflection",
            ),
            _ => note(
                Level::Note,
                format!("plugins.envoy_ext_authz_grpc.{key}"),
                "no counterpart: see docs/configuration.md for portcullis' limits, metrics and listeners",
            ),
        }
    }
    for key in object.keys() {
        let (level, instead) = match key.as_str() {
            "plugins" => {
                for other in config["plugins"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k)
                {
                    if other != "envoy_ext_authz_grpc" && other != "envoy.ext_authz.grpc" {
                        note(
                            Level::Warning,
                            format!("plugins.{other}"),
                            "portcullis runs no OPA plugins",
                        );
                    }
                }
                continue;
            }
            "bundles" => (
                Level::Warning,
                "bundles are not fetched: put the modules and data in the policy directory (on Kubernetes, the chart's `policies.files`); portcullis reloads them on change, keeps the old policy on a broken one, and reports each tenant's digest on /policies",
            ),
            "decision_logs" => (
                Level::Warning,
                "the decision-log plugin is not carried over: portcullis' own decision log (`decision_log` in its config: one JSON line per decision, identity and outcome, never a token) records every decision; ship it with your log collector",
            ),
            "services" => (
                Level::Note,
                "used by bundles, decision logs and status; nothing to fetch from or send to",
            ),
            "status" | "discovery" => (
                Level::Warning,
                "no status or discovery plugin: use /readyz, /policies (digests) and `portcullis fleet-status`",
            ),
            "distributed_tracing" => (
                Level::Note,
                "use portcullis' `tracing` (OTLP): its check span is a child of Envoy's ext_authz span",
            ),
            "keys" => (
                Level::Note,
                "bundle signing keys: no bundles, nothing to verify",
            ),
            "caching" | "nd_builtin_cache" => (
                Level::Note,
                "no inter-query cache: portcullis caches verified tokens itself (`limits.token_cache_size`)",
            ),
            "default_decision" | "default_authorization_decision" => (
                Level::Note,
                "the decision comes from the plugin's query (`policy.rego.query`)",
            ),
            _ => (Level::Note, "no counterpart on portcullis"),
        };
        note(level, key.clone(), instead);
    }
    Ok(query)
}

/// Every file under `dir`, relative to the policy directory.
fn walk(root: &Path, rel: &Path, found: &mut Vec<PathBuf>) -> Result<(), String> {
    let dir = root.join(rel);
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') && name != ".manifest" {
            continue;
        }
        let kind = entry
            .file_type()
            .map_err(|e| format!("{}: {e}", entry.path().display()))?;
        let rel = rel.join(&name);
        if kind.is_dir() {
            walk(root, &rel, found)?;
        } else if kind.is_file() {
            found.push(rel);
        }
        if found.len() > MAX_FILES {
            return Err(format!("{}: more than {MAX_FILES} files", root.display()));
        }
    }
    Ok(())
}

fn yaml_list(items: &[PathBuf]) -> String {
    let names: Vec<String> = items
        .iter()
        .map(|p| serde_json::to_string(&p.display().to_string()).unwrap_or_default())
        .collect();
    format!("[{}]", names.join(", "))
}

fn tenant_yaml(
    tenant: &str,
    modules: &[PathBuf],
    data: &[PathBuf],
    query: &str,
    dry_run: bool,
    verifies: bool,
) -> String {
    let mut out = format!(
        "# Written by `portcullis migrate opa-envoy`. docs/rego.md says what differs\n\
         # from OPA-Envoy; run `portcullis validate` and `portcullis test` after edits.\n\
         apiVersion: portcullis/v1\ntenant: {tenant}\n"
    );
    if dry_run {
        out.push_str("mode: dry_run\n");
    }
    if verifies {
        out.push_str(
            "# The policy verifies tokens with io.jwt.*: portcullis uses these issuers'\n\
             # keys (never the policy's `cert` or `secret`). Fill in and uncomment:\n\
             # identity:\n\
             #   jwt:\n\
             #     - issuer: https://idp.example\n\
             #       audiences: [my-api]\n\
             #       algorithms: [RS256]\n\
             #       jwks_uri: https://idp.example/.well-known/jwks.json\n",
        );
    }
    out.push_str(&format!(
        "policy:\n  rego:\n    files: {}\n",
        yaml_list(modules)
    ));
    if !data.is_empty() {
        out.push_str(&format!("    data: {}\n", yaml_list(data)));
    }
    out.push_str(&format!("    query: {query}\n"));
    out
}

/// A whole Envoy config (docs/envoy.md's checklist) whose one virtual host
/// sends every request's check to portcullis for `tenant`; the upstream is a
/// placeholder for the service.
fn envoy_settings(tenant: &str, portcullis: &str, reads_body: bool) -> String {
    let (host, port) = portcullis.rsplit_once(':').unwrap_or((portcullis, "9001"));
    let body = if reads_body {
        "                      # The policy reads the body. max_request_bytes must equal\n\
         \x20                     # portcullis' limits.max_body_bytes (65536 by default).\n\
         \x20                     with_request_body:\n\
         \x20                       max_request_bytes: 65536\n\
         \x20                       allow_partial_message: true\n\
         \x20                       pack_as_bytes: true\n"
    } else {
        ""
    };
    format!(
        r#"# Written by `portcullis migrate opa-envoy` for tenant {tenant}: the ext_authz
# filter and cluster that replace OPA-Envoy's, in a whole config you can run or
# copy from. Replace the upstream cluster's address with your service's.
# See docs/envoy.md for what each setting is for.
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: 9901 }}
static_resources:
  listeners:
    - name: main
      address:
        socket_address: {{ address: 0.0.0.0, port_value: 8080 }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: ingress
                normalize_path: true
                merge_slashes: true
                path_with_escaped_slashes_action: REJECT_REQUEST
                strip_any_host_port: true
                strip_trailing_host_dot: true
                common_http_protocol_options:
                  headers_with_underscores_action: REJECT_REQUEST
                use_remote_address: true
                route_config:
                  name: local
                  virtual_hosts:
                    - name: {tenant}
                      domains: ["*"]
                      routes:
                        - match: {{ prefix: "/" }}
                          route: {{ cluster: upstream }}
                          typed_per_filter_config:
                            envoy.filters.http.ext_authz:
                              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                              check_settings:
                                context_extensions: {{ tenant: {tenant} }}
                http_filters:
                  - name: envoy.filters.http.ext_authz
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
                      transport_api_version: V3
                      grpc_service:
                        envoy_grpc: {{ cluster_name: portcullis }}
                        timeout: 0.5s
                      failure_mode_allow: false
                      status_on_error: {{ code: ServiceUnavailable }}
                      include_peer_certificate: true
                      include_tls_session: true
{body}                      metadata_context_namespaces: [envoy.filters.http.jwt_authn]
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: portcullis
      type: STRICT_DNS
      connect_timeout: 0.25s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config:
            http2_protocol_options: {{}}
      load_assignment:
        cluster_name: portcullis
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: {{ address: {host}, port_value: {port} }}
    - name: upstream
      type: STRICT_DNS
      connect_timeout: 0.25s
      load_assignment:
        cluster_name: upstream
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: {{ address: 127.0.0.1, port_value: 8081 }}
"#
    )
}

/// Writes `plan` under `out` (created if missing), never over an existing
/// file.
pub fn write(plan: &Plan, out: &Path) -> Result<(), String> {
    for (rel, _) in &plan.files {
        let path = out.join(rel);
        if path.exists() {
            return Err(format!("{} exists: not overwritten", path.display()));
        }
    }
    for (rel, bytes) in &plan.files {
        let path = out.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_query_is_the_plugins_path() {
        let mut f = Vec::new();
        let cfg = |t: &str| serde_yaml::from_str::<Json>(t).unwrap();
        let q = read_config(
            &cfg("plugins: {envoy_ext_authz_grpc: {path: envoy/authz/result}}"),
            &mut f,
        );
        assert_eq!(q.unwrap(), "data.envoy.authz.result");
        let q = read_config(
            &cfg("plugins: {envoy_ext_authz_grpc: {addr: ':9191'}}"),
            &mut f,
        );
        assert_eq!(q.unwrap(), DEFAULT_QUERY);
        let q = read_config(
            &cfg("plugins: {envoy_ext_authz_grpc: {query: data.a.b}}"),
            &mut f,
        );
        assert_eq!(q.unwrap(), "data.a.b");
        assert!(read_config(&cfg("bundles: {}"), &mut f).is_err());
    }

    #[test]
    fn a_nested_data_file_is_rooted_at_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("authz.rego"),
            "package envoy.authz\nallow := true\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("org/roles")).unwrap();
        std::fs::write(dir.path().join("org/roles/data.yaml"), "admins: [alice]\n").unwrap();
        let p = plan(
            "plugins: {envoy_ext_authz_grpc: {}}",
            dir.path(),
            "shop",
            "127.0.0.1:9001",
        )
        .unwrap();
        let (_, bytes) = p
            .files
            .iter()
            .find(|(f, _)| f == Path::new("data.org.roles.json"))
            .unwrap();
        let doc: Json = serde_json::from_slice(bytes).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({"org": {"roles": {"admins": ["alice"]}}})
        );
    }
}
