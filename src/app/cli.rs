//! The command line: `serve`, `validate`, `lint`, `test`, `check`, `reach`, `replay`,
//! `unused`, `revoke`, `fleet-status`, `migrate`.
//!
//! Exit codes: 0 success; 1 a policy directory with errors or without policy
//! files (`validate`, `check`) or a failing test suite (`test`); 64 bad
//! configuration or usage (EX_USAGE); 70 the server failed while running.
//!
//! Every error this module prints starts `error: `; warnings `warning: `,
//! other remarks `note: `.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use std::io::Write;

use clap::{Parser, Subcommand};

use crate::app::config::Config;
use crate::foundation::proto::auth::CheckRequest;
use crate::pipeline::Pipeline;
use crate::request::tenancy::TenantResolver;
use crate::tenants::store::PolicyStore;

pub use super::request_json::check_request_from_json;

const EX_USAGE: u8 = 64;
const EX_SOFTWARE: u8 = 70;

#[derive(Debug, Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Envoy external authorization: per-tenant rules over verified identities"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve ext_authz gRPC and the admin HTTP port.
    Serve {
        /// Server configuration file (YAML).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Policy directory (overrides the config file's `policies`).
        #[arg(long)]
        policies: Option<PathBuf>,
        /// gRPC listen address (overrides the config file).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Admin HTTP listen address (overrides the config file).
        #[arg(long)]
        admin_listen: Option<std::net::SocketAddr>,
        /// Also serve gRPC on this unix socket.
        #[arg(long)]
        unix_socket: Option<PathBuf>,
    },
    /// Compile every policy file exactly as a reload would; report every error.
    Validate {
        /// Policy directory.
        dir: PathBuf,
        /// Also report over-grant findings (as `lint` does); any unsilenced
        /// finding fails.
        #[arg(long)]
        strict: bool,
        /// Server configuration, for its `policy_files.allowed_dirs`.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run the policy test suites (`*_test.yaml`) beside the policies in DIR.
    Test {
        /// Policy directory.
        dir: PathBuf,
        /// `text` (a line per case and a summary) or `json`.
        #[arg(long, default_value = "text")]
        format: OutputFormat,
        /// Server configuration, for its tenancy settings.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Decide one CheckRequest offline and explain which rules matched.
    Check {
        /// Policy directory, compiled as `validate` compiles it.
        #[arg(long)]
        policies: PathBuf,
        /// A CheckRequest in protobuf's JSON mapping, as JSON or YAML.
        #[arg(long)]
        request: PathBuf,
        /// Server configuration, for its tenancy settings and limits.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// What one caller can reach: every (tenant, method, route) an allow rule
    /// grants it, with the condition left over the request.
    Reach {
        /// Policy directory, compiled as `validate` compiles it.
        #[arg(long)]
        policies: PathBuf,
        /// Only this tenant (default: every tenant).
        #[arg(long)]
        tenant: Option<String>,
        /// The caller's claims, a JSON object.
        #[arg(long, conflicts_with_all = ["token", "spiffe_id"])]
        claims: Option<PathBuf>,
        /// A file holding the caller's token, verified against the tenant's
        /// issuers with the keys the policy holds locally.
        #[arg(long, conflicts_with = "spiffe_id")]
        token: Option<PathBuf>,
        /// The caller's SPIFFE ID, as an mTLS peer.
        #[arg(long)]
        spiffe_id: Option<String>,
        /// How `--claims` reached portcullis: `envoy_jwt` (Envoy's jwt_authn
        /// metadata), `jwt` (a token portcullis verified), or `anonymous`.
        #[arg(long, default_value = "envoy_jwt")]
        auth_method: ReachMethod,
        /// `table` or `json`.
        #[arg(long, default_value = "table")]
        format: OutputFormat,
        /// Server configuration, for its policy file settings and limits.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Grants never exercised: per caller, the scopes presented vs those the
    /// allowing rules required, from decision logs and the policies.
    Unused {
        /// Decision log files (JSON lines).
        #[arg(long, required = true)]
        log: Vec<PathBuf>,
        /// The policy directory the decisions were made on.
        #[arg(long)]
        policies: PathBuf,
        /// Only decisions at or after this time (RFC 3339, UTC, as logged).
        #[arg(long)]
        since: Option<String>,
        /// Only decisions before this time.
        #[arg(long)]
        until: Option<String>,
        /// `text` or `json`.
        #[arg(long, default_value = "text")]
        format: OutputFormat,
    },
    /// Over-grant findings in the policies of DIR, with file and line.
    Lint {
        /// Policy directory.
        dir: PathBuf,
        /// Server configuration, for its `policy_files.allowed_dirs`.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Decide every record of a replayable decision log again on the policies
    /// in DIR and report the records whose outcome changes.
    Replay {
        /// The replayable log (`decision_log.replay.output`), JSON lines.
        #[arg(long)]
        log: PathBuf,
        /// The policy directory to decide on.
        #[arg(long)]
        policies: PathBuf,
        /// Exit 1 when any outcome changes (for CI).
        #[arg(long)]
        fail_on_change: bool,
        /// `text` or `json`.
        #[arg(long, default_value = "text")]
        format: OutputFormat,
        /// Server configuration, for its policy file settings and limits.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Revoke a token, a subject or a client on every replica at once, through
    /// the shared store (`shared_state` in the server config).
    #[command(group(clap::ArgGroup::new("what").required(true).args(["jti", "sub", "client_id"])))]
    Revoke {
        /// Server configuration with `shared_state`.
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        tenant: String,
        /// One token, by its `jti`.
        #[arg(long)]
        jti: Option<String>,
        /// Every token of a subject.
        #[arg(long)]
        sub: Option<String>,
        /// Every token of a client (`client_id` or `azp`).
        #[arg(long)]
        client_id: Option<String>,
        /// Until when: `YYYY-MM-DDTHH:MM:SSZ` or a duration from now (`2h`);
        /// without it, for ever.
        #[arg(long)]
        until: Option<String>,
    },
    /// Compare what replicas serve (their admin `/policies`) and name the
    /// tenants that differ; exit 1 when they do.
    FleetStatus {
        /// Admin URLs of the replicas (`http://10.0.0.7:9002`).
        #[arg(required = true, num_args = 1..)]
        urls: Vec<String>,
    },
    /// Write a portcullis tenant (and Envoy settings) from another server's
    /// configuration, flagging what does not carry over.
    Migrate {
        #[command(subcommand)]
        from: MigrateFrom,
    },
}

/// What `migrate` reads.
#[derive(Debug, Subcommand)]
pub enum MigrateFrom {
    /// From an OPA-Envoy config file and its policy directory: the tenant
    /// file, the modules and data, and `envoy.yaml.example` (docs/rego.md).
    OpaEnvoy {
        /// OPA-Envoy's config file (`--config-file`), YAML or JSON.
        #[arg(long)]
        config: PathBuf,
        /// The policy directory OPA-Envoy loads (`.rego`, `data.json`).
        #[arg(long)]
        policies: PathBuf,
        /// The tenant to write.
        #[arg(long)]
        tenant: String,
        /// Output policy directory (created; existing files are not overwritten).
        #[arg(long)]
        out: PathBuf,
        /// Where Envoy reaches portcullis' gRPC listener.
        #[arg(long, default_value = "127.0.0.1:9001")]
        portcullis: String,
    },
}

/// How `reach --claims` were presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum ReachMethod {
    EnvoyJwt,
    Jwt,
    Anonymous,
}

/// How `test` and `reach` print their report (`table` is `text`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    #[value(alias = "table")]
    Text,
    Json,
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::SUCCESS // --help, --version
            };
        }
    };
    match cli.command {
        Command::Serve {
            config,
            policies,
            listen,
            admin_listen,
            unix_socket,
        } => {
            let mut cfg = match (config, &policies) {
                (Some(path), _) => match Config::load(&path) {
                    Ok(c) => c,
                    Err(e) => return usage(&e),
                },
                (None, Some(dir)) => Config::with_policies(dir),
                (None, None) => return usage("serve needs --config FILE or --policies DIR"),
            };
            if let Some(p) = policies {
                cfg.policies = p;
            }
            if let Some(l) = listen {
                cfg.listen = Some(l);
            }
            if let Some(a) = admin_listen {
                cfg.admin_listen = a;
            }
            if unix_socket.is_some() {
                cfg.unix_socket = unix_socket;
            }
            if let Err(e) = cfg.validate() {
                return usage(&e);
            }
            serve(cfg)
        }
        Command::Unused {
            log,
            policies,
            since,
            until,
            format,
        } => {
            if !policies.is_dir() {
                return usage(&format!("{} is not a directory", policies.display()));
            }
            let store = PolicyStore::new(&policies);
            let status = store.reload();
            let clean = report_store(&policies, &status);
            let mut text = String::new();
            for path in &log {
                match std::fs::read_to_string(path) {
                    Ok(t) => text.push_str(&t),
                    Err(e) => return usage(&format!("{}: cannot read: {e}", path.display())),
                }
                text.push('\n');
            }
            let usages =
                match crate::app::unused::unused(&store, &text, since.as_deref(), until.as_deref())
                {
                    Ok(u) => u,
                    Err(e) => return usage(&e),
                };
            let out = match format {
                OutputFormat::Text => crate::app::unused::render_text(&usages),
                OutputFormat::Json => {
                    serde_json::to_string_pretty(&usages).unwrap_or_default() + "\n"
                }
            };
            let _ = std::io::stdout().write_all(out.as_bytes());
            if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Lint { dir, config } => {
            let (allowed, limits) = match config.map(|c| Config::load(&c)) {
                Some(Ok(c)) => (c.policy_files, c.limits),
                Some(Err(e)) => return usage(&e),
                None => (Default::default(), Default::default()),
            };
            lint(&dir, allowed, limits, true)
        }
        Command::Validate {
            dir,
            strict,
            config,
        } => {
            let (allowed, limits) = match config.map(|c| Config::load(&c)) {
                Some(Ok(c)) => (c.policy_files, c.limits),
                Some(Err(e)) => return usage(&e),
                None => (
                    Default::default(),
                    crate::foundation::limits::Limits::default(),
                ),
            };
            if strict {
                return lint(&dir, allowed, limits, false);
            }
            validate(&dir, allowed, limits)
        }
        Command::Test {
            dir,
            format,
            config,
        } => {
            let (tenancy, allowed, limits) = match config.map(|c| Config::load(&c)) {
                Some(Ok(c)) => (c.tenancy, c.policy_files, c.limits),
                Some(Err(e)) => return usage(&e),
                None => (
                    TenantResolver::default(),
                    Default::default(),
                    crate::foundation::limits::Limits::default(),
                ),
            };
            test(&dir, format, tenancy, allowed, limits)
        }
        Command::Check {
            policies,
            request,
            config,
        } => {
            let (tenancy, minter, allowed, limits) = match config.map(|c| Config::load(&c)) {
                Some(Ok(c)) => match c.minter() {
                    Ok(m) => (c.tenancy, m, c.policy_files, c.limits),
                    Err(e) => return usage(&e),
                },
                Some(Err(e)) => return usage(&e),
                None => (
                    TenantResolver::default(),
                    None,
                    Default::default(),
                    Default::default(),
                ),
            };
            check(&policies, &request, tenancy, minter, allowed, limits)
        }
        Command::Reach {
            policies,
            tenant,
            claims,
            token,
            spiffe_id,
            auth_method,
            format,
            config,
        } => {
            let (allowed, limits) = match config.map(|c| Config::load(&c)) {
                Some(Ok(c)) => (c.policy_files, c.limits),
                Some(Err(e)) => return usage(&e),
                None => (Default::default(), Default::default()),
            };
            let caller = match (claims, token, spiffe_id) {
                (Some(path), _, _) => match crate::app::reach::read_claims(&path) {
                    Ok(c) => crate::app::reach::Caller::Claims(
                        c,
                        match auth_method {
                            ReachMethod::EnvoyJwt => crate::identity::AuthMethod::EnvoyJwt,
                            ReachMethod::Jwt => crate::identity::AuthMethod::Jwt,
                            ReachMethod::Anonymous => crate::identity::AuthMethod::Anonymous,
                        },
                    ),
                    Err(e) => return usage(&e),
                },
                (None, Some(path), _) => match std::fs::read_to_string(&path) {
                    Ok(t) => crate::app::reach::Caller::Token(t.trim().to_string()),
                    Err(e) => return usage(&format!("{}: cannot read: {e}", path.display())),
                },
                (None, None, Some(id)) => crate::app::reach::Caller::Spiffe(id),
                (None, None, None) if auth_method == ReachMethod::Anonymous => {
                    crate::app::reach::Caller::Anonymous
                }
                (None, None, None) => {
                    return usage(
                        "reach needs --claims FILE, --token FILE, --spiffe-id ID or --auth-method anonymous",
                    );
                }
            };
            reach(
                &policies,
                tenant.as_deref(),
                &caller,
                format,
                allowed,
                limits,
            )
        }
        Command::Replay {
            log,
            policies,
            fail_on_change,
            format,
            config,
        } => replay_command(&log, &policies, fail_on_change, format, config),
        Command::Revoke {
            config,
            tenant,
            jti,
            sub,
            client_id,
            until,
        } => {
            let (kind, value) = match (jti, sub, client_id) {
                (Some(v), _, _) => ("jti", v),
                (_, Some(v), _) => ("sub", v),
                (_, _, Some(v)) => ("client_id", v),
                (None, None, None) => return usage("name --jti, --sub or --client-id"),
            };
            crate::app::fleet::revoke(
                &config,
                crate::app::fleet::Revocation {
                    tenant,
                    kind,
                    value,
                    until,
                },
            )
        }
        Command::FleetStatus { urls } => crate::app::fleet::fleet_status(&urls),
        Command::Migrate {
            from:
                MigrateFrom::OpaEnvoy {
                    config,
                    policies,
                    tenant,
                    out,
                    portcullis,
                },
        } => migrate_opa_envoy(&config, &policies, &tenant, &out, &portcullis),
    }
}

/// Plans, writes, reports every finding, then validates the output as
/// `validate` does: 0 when it loads, 1 when it does not (the findings say
/// why), 64 when the input cannot be read.
fn migrate_opa_envoy(
    config: &Path,
    policies: &Path,
    tenant: &str,
    out: &Path,
    portcullis: &str,
) -> ExitCode {
    use crate::app::migrate;
    let text = match std::fs::read_to_string(config) {
        Ok(t) => t,
        Err(e) => return usage(&format!("{}: {e}", config.display())),
    };
    let plan = match migrate::plan(&text, policies, tenant, portcullis) {
        Ok(p) => p,
        Err(e) => return usage(&e),
    };
    if let Err(e) = migrate::write(&plan, out) {
        return usage(&e);
    }
    let mut err = std::io::stderr().lock();
    for f in &plan.findings {
        let level = match f.level {
            migrate::Level::Warning => "warning",
            migrate::Level::Note => "note",
        };
        let _ = writeln!(err, "{level}: {}: {}", f.what, f.instead);
    }
    for (file, _) in &plan.files {
        let _ = writeln!(err, "note: wrote {}", out.join(file).display());
    }
    drop(err);
    validate(
        out,
        Default::default(),
        crate::foundation::limits::Limits::default(),
    )
}

fn replay_command(
    log: &Path,
    policies: &Path,
    fail_on_change: bool,
    format: OutputFormat,
    config: Option<PathBuf>,
) -> ExitCode {
    let (allowed, limits) = match config.map(|c| Config::load(&c)) {
        Some(Ok(c)) => (c.policy_files, c.limits),
        Some(Err(e)) => return usage(&e),
        None => (Default::default(), Default::default()),
    };
    if !policies.is_dir() {
        return usage(&format!("{} is not a directory", policies.display()));
    }
    let text = match crate::app::replay::read_log(log) {
        Ok(t) => t,
        Err(e) => return usage(&e),
    };
    let store = PolicyStore::new(policies)
        .with_policy_files(allowed)
        .with_limits(limits);
    let status = store.reload();
    let clean = report_store(policies, &status);
    let report = match crate::app::replay::replay(&store, &text) {
        Ok(r) => r,
        Err(e) => return usage(&format!("{}: {e}", log.display())),
    };
    let out = match format {
        OutputFormat::Text => crate::app::replay::render_text(&report),
        OutputFormat::Json => serde_json::to_string_pretty(&report).unwrap_or_default() + "\n",
    };
    let _ = std::io::stdout().write_all(out.as_bytes());
    if !clean || (fail_on_change && !report.changes.is_empty()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn reach(
    policies: &Path,
    tenant: Option<&str>,
    caller: &crate::app::reach::Caller,
    format: OutputFormat,
    allowed_dirs: crate::foundation::policy_files::PolicyFilesConfig,
    limits: crate::foundation::limits::Limits,
) -> ExitCode {
    let (store, status, clean) = match load_store(policies, allowed_dirs, limits) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let mut tenants = Vec::new();
    for t in &status.tenants {
        if tenant.is_none_or(|want| want == &*t.tenant) {
            tenants.extend(store.tenant(&t.tenant));
        }
    }
    if let Some(want) = tenant
        && tenants.is_empty()
    {
        return usage(&format!("no tenant {want:?} in {}", policies.display()));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let reaches = crate::app::reach::reach_all(&store, &tenants, caller, now);
    let text = match format {
        OutputFormat::Text => crate::app::reach::render_table(&reaches),
        OutputFormat::Json => crate::app::reach::render_json(&reaches),
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(EX_USAGE)
}

/// Prints what a reload of a policy directory found, as `validate` and
/// `check` report it; false when the directory does not load cleanly
/// (a file error, or no policy file at all: offline there are no last good
/// rules to keep).
fn report_store(dir: &Path, status: &crate::tenants::store::StoreStatus) -> bool {
    for e in &status.errors {
        eprintln!("error: {e}");
    }
    if let Some(why) = &status.unusable {
        eprintln!("error: {why}");
        return false;
    }
    for n in &status.notes {
        // Static-check warnings arrive as notes already labelled.
        if n.starts_with("warning: ") {
            eprintln!("{n}");
        } else {
            eprintln!("note: {n}");
        }
    }
    if status.tenants.is_empty() && status.errors.is_empty() {
        eprintln!("error: policy directory {} loaded no tenant", dir.display());
    }
    status.errors.is_empty() && !status.tenants.is_empty()
}

/// Loads a policy directory as a reload would and reports what it found;
/// the store, its status, and whether it loaded cleanly.
fn load_store(
    dir: &Path,
    allowed_dirs: crate::foundation::policy_files::PolicyFilesConfig,
    limits: crate::foundation::limits::Limits,
) -> Result<(PolicyStore, Arc<crate::tenants::store::StoreStatus>, bool), ExitCode> {
    if !dir.is_dir() {
        return Err(usage(&format!("{} is not a directory", dir.display())));
    }
    let store = PolicyStore::new(dir)
        .with_policy_files(allowed_dirs)
        .with_limits(limits);
    let status = store.reload();
    let clean = report_store(dir, &status);
    Ok((store, status, clean))
}

fn serve(config: Config) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::from(EX_SOFTWARE);
        }
    };
    // The OTLP exporter's gRPC channel lives on this runtime.
    let telemetry = {
        let _entered = runtime.enter();
        crate::observe::telemetry::init(config.log_format, &config.tracing)
    };
    runtime.block_on(async move {
        let code = serve_until_signal(&config).await;
        telemetry.shutdown().await;
        code
    })
}

async fn serve_until_signal(config: &Config) -> ExitCode {
    {
        let running = match crate::app::serve::start(config).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "cannot start");
                return ExitCode::from(EX_USAGE);
            }
        };
        // Listen for signals before saying we serve: a SIGTERM sent right after
        // that line must drain, not kill the process.
        let stop = shutdown_signal();
        tracing::info!(
            grpc = running.grpc_addr.map(|a| a.to_string()),
            unix_socket = config.unix_socket.as_ref().map(|p| p.display().to_string()),
            admin = %running.admin_addr,
            policies = %config.policies.display(),
            "portcullis serving"
        );
        match running.wait_or(stop).await {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "server failed");
                ExitCode::from(EX_SOFTWARE)
            }
        }
    }
}

/// Installs the SIGTERM and SIGINT handlers now; the returned future resolves on
/// the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let (mut term, mut int) = match (term, int) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM or SIGINT");
                std::future::pending::<()>().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
    }
}

/// `lint`, and `validate --strict` (which also prints the `ok:` lines):
/// exit 1 on a policy error or an unsilenced finding.
fn lint(
    dir: &Path,
    allowed_dirs: crate::foundation::policy_files::PolicyFilesConfig,
    limits: crate::foundation::limits::Limits,
    quiet: bool,
) -> ExitCode {
    let (_store, status, clean) = match load_store(dir, allowed_dirs, limits) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let mut out = std::io::stdout().lock();
    let mut failing = 0;
    for t in &status.tenants {
        if !quiet {
            let _ = writeln!(
                out,
                "ok: {} ({} rules) {} {}",
                t.file.display(),
                t.rules,
                t.tenant,
                t.digest
            );
        }
        let Ok(text) = std::fs::read_to_string(&t.file) else {
            continue;
        };
        for f in crate::tenants::lint::lint(&t.file, &text) {
            if f.silenced.is_none() {
                failing += 1;
            }
            let _ = writeln!(out, "{f}");
        }
    }
    if clean && failing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn validate(
    dir: &Path,
    allowed_dirs: crate::foundation::policy_files::PolicyFilesConfig,
    limits: crate::foundation::limits::Limits,
) -> ExitCode {
    let (_store, status, clean) = match load_store(dir, allowed_dirs, limits) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let mut out = std::io::stdout().lock();
    for t in &status.tenants {
        // A closed pipe (`| head`) is not an error worth a panic.
        let _ = writeln!(
            out,
            "ok: {} ({} rules) {} {}",
            t.file.display(),
            t.rules,
            t.tenant,
            t.digest
        );
    }
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn test(
    dir: &Path,
    format: OutputFormat,
    tenancy: TenantResolver,
    allowed_dirs: crate::foundation::policy_files::PolicyFilesConfig,
    limits: crate::foundation::limits::Limits,
) -> ExitCode {
    if !dir.is_dir() {
        return usage(&format!("{} is not a directory", dir.display()));
    }
    let report = crate::app::suite::run_with(dir, tenancy, allowed_dirs, limits);
    let text = match format {
        OutputFormat::Text => crate::app::suite::render_text(&report),
        OutputFormat::Json => serde_json::to_string_pretty(&report).unwrap_or_default() + "\n",
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Reads a CheckRequest written in protobuf's JSON mapping: as JSON when the
/// file is named `*.json`, else as YAML (which reads JSON too). An error names
/// the format tried and the line (and column) it failed at.
pub fn read_check_request(path: &Path) -> Result<CheckRequest, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let json = path.extension().is_some_and(|x| x == "json");
    let value: serde_json::Value = if json {
        serde_json::from_str(&text).map_err(|e| {
            format!(
                "{}:{}:{}: not valid JSON: {e}",
                path.display(),
                e.line(),
                e.column()
            )
        })?
    } else {
        crate::foundation::yaml::from_str(&text).map_err(|e| match e.line {
            Some(l) => format!("{}:{l}: not valid YAML: {e}", path.display()),
            None => format!("{}: not valid YAML: {e}", path.display()),
        })?
    };
    check_request_from_json(&value).map_err(|e| format!("{}: {e}", path.display()))
}

fn check(
    policies: &Path,
    request: &Path,
    tenancy: TenantResolver,
    minter: Option<Arc<crate::decision::mint::Minter>>,
    allowed_dirs: crate::foundation::policy_files::PolicyFilesConfig,
    limits: crate::foundation::limits::Limits,
) -> ExitCode {
    let store = Arc::new(
        PolicyStore::new(policies)
            .with_policy_files(allowed_dirs)
            .with_limits(limits),
    );
    let status = store.reload();
    // The decision is still printed: it shows what a server holding only
    // the loaded files would answer. The exit code says the directory is bad.
    let clean = report_store(policies, &status);
    let req = match read_check_request(request) {
        Ok(r) => r,
        Err(e) => return usage(&e),
    };
    let pipeline = Pipeline::new(store, tenancy).with_minter(minter);
    // Issuers with remote keys need a runtime to fetch them.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::from(EX_SOFTWARE);
        }
    };
    let (decision, trace) =
        runtime.block_on(pipeline.explain_async(&req, crate::pipeline::DEFAULT_KEY_WAIT));
    let out = serde_json::json!({
        "decision": if decision.allowed { "allow" } else { "deny" },
        "status": decision.status(),
        "reason": decision.reason,
        "tenant": decision.tenant,
        "rule": decision.rule,
        "policy_digest": decision.digest,
        "auth_method": decision.auth_method,
        "subject": decision.subject,
        "detail": decision.detail,
        // A minted token is a credential: shown as such, never printed.
        "set_headers": decision
            .set_headers
            .iter()
            .map(|(k, v)| {
                let v = if k == "authorization" { "Bearer <minted token>" } else { v.as_str() };
                (k.clone(), v.to_string())
            })
            .collect::<Vec<_>>(),
        "remove_headers": decision.remove_headers,
        "rules": trace,
    });
    let _ = writeln!(
        std::io::stdout(),
        "{}",
        serde_json::to_string_pretty(&out).unwrap_or_default()
    );
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
