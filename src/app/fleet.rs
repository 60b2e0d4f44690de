//! The commands that work on a fleet of replicas rather than one server:
//! `portcullis revoke` (a live revocation through the shared store) and
//! `portcullis fleet-status` (do the replicas serve the same rules?).
//!
//! Never imports: nothing above the app; it is the top floor.

use std::process::ExitCode;

use crate::app::config::Config;
use crate::observe::drift;
use crate::transport::shared_state;

const EX_USAGE: u8 = 64;
const EX_UNAVAILABLE: u8 = 69;

/// Which entry a revocation names.
#[derive(Debug, Clone)]
pub struct Revocation {
    pub tenant: String,
    /// `jti`, `sub` or `client_id`.
    pub kind: &'static str,
    pub value: String,
    /// RFC 3339 UTC (`2026-12-01T00:00:00Z`), or a duration from now (`2h`).
    pub until: Option<String>,
}

/// `until` as unix seconds: an RFC 3339 UTC time, or now plus a duration;
/// none is for ever.
pub fn until_seconds(until: Option<&str>, now: u64) -> Result<u64, String> {
    let Some(text) = until else {
        return Ok(u64::MAX);
    };
    if let Some(at) = crate::identity::revocation::parse_rfc3339_utc(text) {
        return Ok(at);
    }
    crate::foundation::duration::parse(text)
        .map(|d| now.saturating_add(d.as_secs().max(1)))
        .map_err(|_| {
            format!("--until {text:?} is neither YYYY-MM-DDTHH:MM:SSZ nor a duration (2h, 30m)")
        })
}

/// `portcullis revoke`: writes the entry to the shared store of `config`.
pub fn revoke(config: &std::path::Path, revocation: Revocation) -> ExitCode {
    let config = match Config::load(config) {
        Ok(c) => c,
        Err(e) => return usage(&e),
    };
    let Some(shared) = &config.shared_state else {
        return usage("revoke needs a server config with shared_state");
    };
    if revocation.tenant.is_empty() || revocation.value.is_empty() {
        return usage("--tenant and the revoked value must not be empty");
    }
    let now = crate::request::input::unix_seconds(std::time::SystemTime::now());
    let until = match until_seconds(revocation.until.as_deref(), now) {
        Ok(u) => u,
        Err(e) => return usage(&e),
    };
    let Some(runtime) = runtime() else {
        return ExitCode::from(EX_UNAVAILABLE);
    };
    let pushed = runtime.block_on(shared_state::push_revocation(
        &shared.redis,
        &revocation.tenant,
        revocation.kind,
        &revocation.value,
        until,
        now,
    ));
    match pushed {
        Ok(generation) => {
            let until = if until == u64::MAX {
                "until removed".to_string()
            } else {
                format!("until {until}")
            };
            println!(
                "revoked {} for tenant {:?} ({until}); revocation generation {generation}",
                revocation.kind, revocation.tenant
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EX_UNAVAILABLE)
        }
    }
}

/// `portcullis fleet-status URL...`: reads every replica's `/policies` and
/// names what differs. Exit 0 when all serve the same, 1 when they differ,
/// 69 when a replica cannot be read.
pub fn fleet_status(urls: &[String]) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::from(EX_UNAVAILABLE);
    };
    let read = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
        let mut served = Vec::new();
        for url in urls {
            let at = format!("{}/policies", url.trim_end_matches('/'));
            let text = client
                .get(&at)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| format!("{at}: {e}"))?
                .text()
                .await
                .map_err(|e| format!("{at}: {e}"))?;
            let body: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("{at}: not JSON: {e}"))?;
            let one = drift::Served::from_json(&body)
                .ok_or_else(|| format!("{at}: not a portcullis /policies answer"))?;
            served.push(one);
        }
        Ok::<_, String>(served)
    });
    let served = match read {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    for (url, s) in urls.iter().zip(&served) {
        println!("{url} {} ({} tenants)", s.digest, s.tenants.len());
    }
    let differ = drift::differences(&served);
    if differ.is_empty() {
        println!("all {} replicas serve the same", served.len());
        ExitCode::SUCCESS
    } else {
        for d in &differ {
            println!("differs: {d}");
        }
        ExitCode::from(1)
    }
}

/// A runtime for one command's calls; `None` (and said why) when none starts.
fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| eprintln!("error: cannot start runtime: {e}"))
        .ok()
}

fn usage(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(EX_USAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_is_a_time_a_duration_or_for_ever() {
        assert_eq!(until_seconds(None, 10), Ok(u64::MAX));
        assert_eq!(
            until_seconds(Some("2026-01-01T00:00:00Z"), 10),
            Ok(1_767_225_600)
        );
        assert_eq!(until_seconds(Some("2m"), 10), Ok(130));
        assert!(until_seconds(Some("tomorrow"), 10).is_err());
    }
}
