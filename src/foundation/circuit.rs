//! A circuit breaker: after a run of failures a dependency is not called for
//! a while, so a dead peer costs a check nothing (no timeout to wait out) and
//! is not hammered; then one call probes it (half-open), and a success closes
//! the circuit again.
//!
//! Plain state over instants the caller passes in, so the transitions are
//! tested without a clock. Never imports: any other module of the crate.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures in a row that open the circuit, by default.
pub const DEFAULT_FAILURES_TO_OPEN: u32 = 3;
/// How long an open circuit stays open before one probe, by default.
pub const DEFAULT_OPEN_FOR: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct Circuit {
    failures_to_open: u32,
    open_for: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Calls go through; `failures` in a row so far.
    Closed { failures: u32 },
    /// No call until `until`.
    Open { until: Instant },
    /// One call is probing; the others wait for its outcome.
    Probing,
}

impl Circuit {
    pub fn new(failures_to_open: u32, open_for: Duration) -> Circuit {
        Circuit {
            failures_to_open: failures_to_open.max(1),
            open_for,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a call may be made at `now`. An open circuit whose time is up
    /// lets exactly one caller through as the probe.
    pub fn allow(&self, now: Instant) -> bool {
        let mut state = self.state();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                *state = State::Probing;
                true
            }
            State::Open { .. } | State::Probing => false,
        }
    }

    /// The call succeeded: the circuit closes.
    pub fn success(&self) {
        *self.state() = State::Closed { failures: 0 };
    }

    /// The call failed (an error or a timeout) at `now`.
    pub fn failure(&self, now: Instant) {
        let mut state = self.state();
        *state = match *state {
            State::Closed { failures } if failures + 1 < self.failures_to_open => State::Closed {
                failures: failures + 1,
            },
            _ => State::Open {
                until: now + self.open_for,
            },
        };
    }

    /// Whether calls are refused now (open, or waiting for a probe).
    pub fn is_open(&self) -> bool {
        !matches!(*self.state(), State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_then_probes_once_and_closes_on_success() {
        let t0 = Instant::now();
        let c = Circuit::new(2, Duration::from_secs(5));
        assert!(c.allow(t0));
        c.failure(t0);
        assert!(!c.is_open(), "one failure of two");
        c.failure(t0);
        assert!(c.is_open());
        assert!(!c.allow(t0 + Duration::from_secs(4)));
        // Time is up: one probe, not two.
        assert!(c.allow(t0 + Duration::from_secs(5)));
        assert!(!c.allow(t0 + Duration::from_secs(5)));
        c.success();
        assert!(!c.is_open());
        assert!(c.allow(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn a_failed_probe_opens_again() {
        let t0 = Instant::now();
        let c = Circuit::new(1, Duration::from_secs(1));
        c.failure(t0);
        assert!(c.allow(t0 + Duration::from_secs(1)));
        c.failure(t0 + Duration::from_secs(1));
        assert!(!c.allow(t0 + Duration::from_millis(1500)));
        assert!(c.allow(t0 + Duration::from_secs(2)));
    }

    #[test]
    fn a_success_resets_the_run_of_failures() {
        let t0 = Instant::now();
        let c = Circuit::new(2, Duration::from_secs(1));
        c.failure(t0);
        c.success();
        c.failure(t0);
        assert!(!c.is_open());
    }
}
