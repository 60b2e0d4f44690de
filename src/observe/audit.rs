//! The decision log: one JSON line per decision, to stdout, stderr or a file.
//!
//! A line names the identity (subject, issuer, client id, auth method, the
//! scopes presented), the
//! request (method, host, path with query values redacted), the rule, the
//! decision and its reason, the latency, the mode, and the decision and trace
//! ids that join it to Envoy's access log and to the trace.
//!
//! What it must never do: write a token, a signature, a key, a cookie or an
//! `Authorization` value (no header value is logged at all, and every query
//! value is redacted, since a query can carry a token), or slow a check: lines
//! go through a bounded queue to a writer thread, and a line that does not fit
//! is dropped and counted rather than waited for. Denies are always logged;
//! allows can be sampled.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::decision::Decision;
use crate::decision::audit::Outcome;
use crate::foundation::proto::auth::CheckRequest;

/// Lines the writer may fall behind by before new lines are dropped.
pub const QUEUE_LINES: usize = 65_536;
/// What a redacted query value becomes.
pub const REDACTED: &str = "REDACTED";
/// Longest path written (a longer one is cut, and says so).
const MAX_LOGGED_PATH: usize = 2048;

/// The `decision_log` section of the server configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionLogConfig {
    /// `stdout` (default), `stderr`, `off`, or a file path (appended to;
    /// relative to the configuration file).
    pub output: String,
    /// The fraction of allows logged, 0.0 to 1.0 (default 1.0). Denies, and
    /// decisions a dry-run rule had an opinion on, are always logged.
    pub allow_sample_rate: f64,
    /// The replayable log, opt-in (see [`super::replay`]).
    pub replay: super::replay::ReplayLogConfig,
}

impl Default for DecisionLogConfig {
    fn default() -> Self {
        DecisionLogConfig {
            output: "stdout".into(),
            allow_sample_rate: 1.0,
            replay: Default::default(),
        }
    }
}

impl DecisionLogConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.allow_sample_rate) {
            return Err("decision_log.allow_sample_rate must be between 0.0 and 1.0".into());
        }
        if self.output.is_empty() {
            return Err("decision_log.output must be stdout, stderr, off or a file path".into());
        }
        if self.replay.output.is_empty() {
            return Err("decision_log.replay.output must be off or a file path".into());
        }
        if self.replay.max_record_bytes < 512 {
            return Err("decision_log.replay.max_record_bytes must be at least 512".into());
        }
        Ok(())
    }

    /// Makes a relative file path relative to `base`.
    pub fn resolve(&mut self, base: &Path) {
        if !matches!(self.output.as_str(), "stdout" | "stderr" | "off")
            && Path::new(&self.output).is_relative()
        {
            self.output = base.join(&self.output).display().to_string();
        }
        if self.replay.output != "off" && Path::new(&self.replay.output).is_relative() {
            self.replay.output = base.join(&self.replay.output).display().to_string();
        }
    }
}

/// The request as the log shows it; read from the CheckRequest as Envoy sent
/// it, so a request the pipeline refused (a non-canonical path) is logged too.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RequestSummary {
    pub method: String,
    pub host: String,
    pub path: String,
    /// The listener that asked (`grpc`, `http`, `forward_auth`, `authzen`).
    pub transport: &'static str,
}

impl RequestSummary {
    pub fn of(request: &CheckRequest) -> RequestSummary {
        let Some(http) = request
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
        else {
            return RequestSummary {
                transport: "grpc",
                ..RequestSummary::default()
            };
        };
        RequestSummary {
            method: http.method.clone(),
            host: http.host.clone(),
            path: redact_query(&http.path),
            transport: "grpc",
        }
    }
}

/// `/a?token=x&b=1` → `/a?token=REDACTED&b=REDACTED`: names stay, values go.
pub fn redact_query(path: &str) -> String {
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let mut out = String::with_capacity(path.len().min(MAX_LOGGED_PATH) + 16);
    if path.len() > MAX_LOGGED_PATH {
        let mut cut = MAX_LOGGED_PATH;
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        out.push_str(&path[..cut]);
        out.push_str("...");
    } else {
        out.push_str(path);
    }
    if let Some(query) = query {
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            let name = pair.split_once('=').map_or(pair, |(n, _)| n);
            // A name is short in any honest request; a long one may be a value.
            if name.len() > 64 {
                out.push_str(REDACTED);
            } else {
                out.push_str(name);
            }
            if pair.contains('=') {
                out.push('=');
                out.push_str(REDACTED);
            }
        }
    }
    out
}

/// Where decision lines go.
#[derive(Debug, Clone)]
enum Output {
    Stdout,
    Stderr,
    File(PathBuf),
}

/// The decision log of one server.
#[derive(Debug, Clone)]
pub struct DecisionLog {
    tx: Option<SyncSender<String>>,
    /// The replayable log's writer and settings, when it is on.
    replay: Option<(
        SyncSender<String>,
        std::sync::Arc<super::replay::ReplayLogConfig>,
    )>,
    /// Allows are logged when the decision id's sample is below this.
    allow_threshold: u64,
}

impl DecisionLog {
    /// A log that writes nothing.
    pub fn off() -> DecisionLog {
        DecisionLog {
            tx: None,
            replay: None,
            allow_threshold: 0,
        }
    }

    /// Writes nothing (`output: off`): a check need not gather what a line
    /// would hold.
    /// Whether replayable records are written (they carry the request whole).
    pub fn replays(&self) -> bool {
        self.replay.is_some()
    }

    pub fn is_off(&self) -> bool {
        self.tx.is_none()
    }

    /// Opens the output (a file is created if missing, and appended to) and
    /// starts the writer thread, which ends when the last handle is dropped.
    pub fn open(config: &DecisionLogConfig) -> std::io::Result<DecisionLog> {
        let mut log = DecisionLog::open_main(config)?;
        if config.replay.output != "off" {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&config.replay.output)?;
            let (tx, rx) = sync_channel(QUEUE_LINES);
            std::thread::Builder::new()
                .name("replay-log".into())
                .spawn(move || write_lines(rx, Box::new(file)))?;
            log.replay = Some((tx, std::sync::Arc::new(config.replay.clone())));
        }
        Ok(log)
    }

    /// Writes the replay record of one decision (every decision, unsampled),
    /// when the replayable log is on. False when the line was dropped.
    pub fn record_replay(&self, decision: &Decision, request: &CheckRequest) -> bool {
        let Some((tx, config)) = &self.replay else {
            return true;
        };
        match super::replay::record(decision, request, config) {
            Some(line) => tx.try_send(line).is_ok(),
            None => true,
        }
    }

    fn open_main(config: &DecisionLogConfig) -> std::io::Result<DecisionLog> {
        let output = match config.output.as_str() {
            "off" => return Ok(DecisionLog::off()),
            "stdout" => Output::Stdout,
            "stderr" => Output::Stderr,
            path => Output::File(PathBuf::from(path)),
        };
        let sink: Box<dyn Write + Send> = match &output {
            Output::Stdout => Box::new(std::io::stdout()),
            Output::Stderr => Box::new(std::io::stderr()),
            Output::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        // Scaled to the 32 random bits of a decision id's first group.
        let allow_threshold = (config.allow_sample_rate * f64::from(u32::MAX)) as u64
            + u64::from(config.allow_sample_rate >= 1.0);
        DecisionLog::start(sink, QUEUE_LINES, allow_threshold)
    }

    /// Starts the writer thread on `sink`, with room for `queue` lines.
    fn start(
        sink: Box<dyn Write + Send>,
        queue: usize,
        allow_threshold: u64,
    ) -> std::io::Result<DecisionLog> {
        let (tx, rx) = sync_channel(queue);
        std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || write_lines(rx, sink))?;
        Ok(DecisionLog {
            tx: Some(tx),
            replay: None,
            allow_threshold,
        })
    }

    /// Logs one decision unless it is a sampled-out allow. Returns false when
    /// the line was dropped because the writer is behind.
    pub fn record(
        &self,
        decision: &Decision,
        request: &RequestSummary,
        trace_id: Option<&str>,
        latency: Duration,
    ) -> bool {
        let Some(tx) = &self.tx else { return true };
        let outcome = Outcome::of(decision);
        let always = outcome.decision == "deny"
            || decision
                .audit
                .dry_run_rules
                .iter()
                .any(|h| h.would != "allow");
        if !always && sample_of(&decision.decision_id) >= self.allow_threshold {
            return true;
        }
        let line = line(decision, request, trace_id, latency, SystemTime::now());
        match tx.try_send(line) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => false,
            // The writer died (its output failed): nothing more can be written.
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

/// The first 32 bits of a (random, v4) decision id.
fn sample_of(decision_id: &str) -> u64 {
    decision_id
        .get(..8)
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .map_or(0, u64::from)
}

fn write_lines(rx: Receiver<String>, sink: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::new(sink);
    while let Ok(first) = rx.recv() {
        let mut line = Some(first);
        while let Some(l) = line {
            if out
                .write_all(l.as_bytes())
                .and_then(|()| out.write_all(b"\n"))
                .is_err()
            {
                return;
            }
            line = rx.try_recv().ok();
        }
        // Caught up: make what is written visible.
        if out.flush().is_err() {
            return;
        }
    }
}

/// One decision as a JSON line.
pub fn line(
    d: &Decision,
    request: &RequestSummary,
    trace_id: Option<&str>,
    latency: Duration,
    now: SystemTime,
) -> String {
    let outcome = Outcome::of(d);
    let mut v = serde_json::json!({
        "time": rfc3339(now),
        "decision_id": d.decision_id,
        "trace_id": trace_id,
        "tenant": d.tenant,
        "subject": d.subject,
        "issuer": d.audit.issuer,
        "client_id": d.audit.client_id,
        "auth_method": d.auth_method,
        "sender_constraint": (!d.audit.sender_constraint.is_empty()).then_some(d.audit.sender_constraint),
        "method": request.method,
        "host": request.host,
        "path": request.path,
        "transport": (!request.transport.is_empty()).then_some(request.transport),
        "rule": outcome.rule,
        "decision": outcome.decision,
        "reason": outcome.reason.code(),
        "status": outcome.reason.status(),
        "latency_ms": (latency.as_secs_f64() * 1e6).round() / 1e3,
        "mode": d.audit.mode.as_str(),
        "policy_digest": d.digest,
    });
    // The scopes presented (names, never the token), for `portcullis unused`.
    if let Some(scopes) = d.audit.claims.as_deref().and_then(|c| c.get("scope"))
        && scopes.is_array()
    {
        v["scopes"] = scopes.clone();
    }
    if !d.audit.headers.is_empty() {
        v["headers"] = serde_json::Value::Object(
            d.audit
                .headers
                .iter()
                .map(|(k, val)| (k.clone(), serde_json::Value::String(val.clone())))
                .collect(),
        );
    }
    if d.audit.would_be.is_some() {
        v["enforced"] = serde_json::json!({
            "decision": d.verdict(),
            "reason": d.reason.code(),
        });
    }
    if !d.audit.dry_run_rules.is_empty() {
        v["dry_run_rules"] = serde_json::json!(d.audit.dry_run_rules);
    }
    if let Some(detail) = &d.detail {
        v["detail"] = serde_json::json!(detail);
    }
    v.to_string()
}

/// `2026-01-02T03:04:05.678Z`, UTC, milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::audit::WouldBe;
    use crate::foundation::reason::Reason;
    use crate::policy::Mode;

    #[test]
    fn only_an_off_log_is_off() {
        assert!(DecisionLog::off().is_off());
        let config = |output: &str| DecisionLogConfig {
            output: output.into(),
            allow_sample_rate: 1.0,
            replay: Default::default(),
        };
        assert!(DecisionLog::open(&config("off")).unwrap().is_off());
        assert!(!DecisionLog::open(&config("stderr")).unwrap().is_off());
    }

    #[test]
    fn query_values_are_redacted() {
        assert_eq!(
            redact_query("/a/b?access_token=eyJ.x.y&page=2&flag"),
            "/a/b?access_token=REDACTED&page=REDACTED&flag"
        );
        assert_eq!(redact_query("/plain"), "/plain");
        assert_eq!(redact_query("/a?=v"), "/a?=REDACTED");
    }

    #[test]
    fn time_is_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_767_323_045_678);
        assert_eq!(rfc3339(t), "2026-01-02T03:04:05.678Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn dry_run_tenant_logs_what_would_have_been() {
        let mut d = Decision::deny("0000abcd-x".into(), Reason::DryRunAllowed);
        d.allowed = true;
        d.audit.mode = Mode::DryRun;
        d.audit.would_be = Some(WouldBe {
            allowed: false,
            reason: Reason::NoMatchingRule,
            rule: None,
        });
        let v: serde_json::Value = serde_json::from_str(&line(
            &d,
            &RequestSummary::default(),
            None,
            Duration::from_micros(1500),
            SystemTime::UNIX_EPOCH,
        ))
        .unwrap();
        assert_eq!(v["decision"], "deny");
        assert_eq!(v["reason"], "no_matching_rule");
        assert_eq!(v["mode"], "dry_run");
        assert_eq!(v["enforced"]["decision"], "allow");
        assert_eq!(v["latency_ms"], 1.5);
    }

    #[test]
    fn a_preflight_portcullis_answers_is_neither_allow_nor_deny() {
        let d = Decision::deny("id".into(), Reason::CorsPreflight);
        let v: serde_json::Value = serde_json::from_str(&line(
            &d,
            &RequestSummary::default(),
            None,
            Duration::from_micros(1),
            SystemTime::UNIX_EPOCH,
        ))
        .unwrap();
        assert_eq!(v["decision"], "preflight");
        assert_eq!(v["status"], 204);
        assert_eq!(v["reason"], "cors_preflight");
        let refused = Decision::deny("id".into(), Reason::CorsRejected);
        assert_eq!(refused.verdict(), "deny");
    }

    #[test]
    fn recorded_headers_are_in_the_line() {
        let mut d = Decision::deny("id".into(), Reason::Allowed);
        d.allowed = true;
        d.audit.headers = vec![("x-justification".into(), "INC-4711".into())];
        let v: serde_json::Value = serde_json::from_str(&line(
            &d,
            &RequestSummary::default(),
            None,
            Duration::ZERO,
            SystemTime::UNIX_EPOCH,
        ))
        .unwrap();
        assert_eq!(v["headers"]["x-justification"], "INC-4711");
    }

    #[test]
    fn the_scopes_presented_are_in_the_line_and_no_other_claim() {
        let mut d = Decision::deny("id".into(), Reason::Allowed);
        let mut claims = serde_json::Map::new();
        claims.insert("scope".into(), serde_json::json!(["a:read", "b:write"]));
        claims.insert("email".into(), serde_json::json!("ann@example.com"));
        d.audit.claims = Some(std::sync::Arc::new(claims));
        let text = line(
            &d,
            &RequestSummary::default(),
            None,
            Duration::ZERO,
            SystemTime::UNIX_EPOCH,
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["scopes"], serde_json::json!(["a:read", "b:write"]));
        assert!(!text.contains("ann@example.com"));
    }

    #[test]
    fn allows_are_sampled_and_denies_never() {
        let config = DecisionLogConfig {
            output: "off".into(),
            allow_sample_rate: 0.0,
            replay: Default::default(),
        };
        assert!(DecisionLog::open(&config).unwrap().tx.is_none());
        let (tx, rx) = sync_channel(4);
        let log = DecisionLog {
            tx: Some(tx),
            replay: None,
            allow_threshold: 0x8000_0000,
        };
        let mut allow = Decision::deny("ffffffff-1".into(), Reason::Allowed);
        allow.allowed = true;
        let s = RequestSummary::default();
        assert!(log.record(&allow, &s, None, Duration::ZERO));
        assert!(rx.try_recv().is_err(), "sampled out");
        allow.decision_id = "00000001-1".into();
        assert!(log.record(&allow, &s, None, Duration::ZERO));
        assert!(rx.try_recv().unwrap().contains("00000001-1"));
        let deny = Decision::deny("ffffffff-2".into(), Reason::NoMatchingRule);
        assert!(log.record(&deny, &s, None, Duration::ZERO));
        assert!(rx.try_recv().unwrap().contains("ffffffff-2"));
    }

    /// A sink whose writes wait until the test opens the gate, and which
    /// says when the first write has started.
    struct Gated {
        started: Option<std::sync::mpsc::Sender<()>>,
        gate: std::sync::mpsc::Receiver<()>,
        written: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Some(started) = self.started.take() {
                let _ = started.send(());
                let _ = self.gate.recv();
            }
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_queue_drops_lines_without_blocking() {
        const QUEUE: usize = 8;
        let (started_tx, started) = std::sync::mpsc::channel();
        let (open, gate) = std::sync::mpsc::channel();
        let written = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Gated {
            started: Some(started_tx),
            gate,
            written: std::sync::Arc::clone(&written),
        };
        let log = DecisionLog::start(Box::new(sink), QUEUE, 0).unwrap();
        let s = RequestSummary::default();
        let deny = |n: usize| Decision::deny(format!("ffffffff-{n}"), Reason::NoMatchingRule);
        // The writer takes the first line and is held in its write: the
        // queue is then empty, with room for QUEUE lines.
        assert!(log.record(&deny(0), &s, None, Duration::ZERO));
        started
            .recv_timeout(Duration::from_secs(10))
            .expect("the writer starts writing");
        for n in 1..=QUEUE {
            assert!(log.record(&deny(n), &s, None, Duration::ZERO), "line {n}");
        }
        // One over: dropped at once (the caller counts it), not waited for.
        assert!(!log.record(&deny(QUEUE + 1), &s, None, Duration::ZERO));
        open.send(()).unwrap();
        drop(log);
        // The writer drains the queue and ends when the last handle is gone.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
            if text.lines().count() == QUEUE + 1 {
                for n in 0..=QUEUE {
                    assert!(text.contains(&format!("ffffffff-{n}\"")), "line {n}");
                }
                assert!(!text.contains(&format!("ffffffff-{}\"", QUEUE + 1)));
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{text}");
            std::thread::yield_now();
        }
    }
}
