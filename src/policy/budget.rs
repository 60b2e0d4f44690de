//! A check's runtime budget: evaluation stops between conditions once the
//! check has evaluated for [`MAX_EVALUATION_TIME`], or once the caller's
//! deadline has passed.
//!
//! The CEL interpreter has no hook to stop a running condition, so one
//! condition is bounded only by the static bound ([`super::cost`]); the budget
//! is checked before each condition. The clock is read only once the
//! conditions evaluated since the last reading could have cost
//! [`CLOCK_EVERY`] steps, so a check of cheap conditions never reads it, and
//! the evaluation time is counted from the first reading (at most
//! [`CLOCK_EVERY`] steps late).
//!
//! Never imports: decision, tenants or anything above them.

use std::time::Instant;

pub use crate::foundation::limits::MAX_EVALUATION_TIME;

/// Steps ([`super::cost`]) evaluated between two readings of the clock: well
/// under a millisecond at the slowest measured step cost.
pub const CLOCK_EVERY: u64 = 20_000;

/// Why a check's evaluation was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spent {
    /// It evaluated for [`MAX_EVALUATION_TIME`].
    Budget,
    /// The caller's deadline passed: nobody waits for the answer.
    Deadline,
}

impl Spent {
    /// For the decision's detail and `portcullis check` (never the client).
    pub fn message(self) -> &'static str {
        match self {
            Spent::Budget => "evaluation budget spent: the check's conditions ran too long",
            Spent::Deadline => "the caller's deadline passed during evaluation",
        }
    }
}

/// One check's budget; see the module docs.
#[derive(Debug)]
pub struct Budget {
    deadline: Option<Instant>,
    /// When the clock was first read.
    started: Option<Instant>,
    /// Steps charged since the clock was last read.
    unread: u64,
    limit: std::time::Duration,
}

impl Budget {
    /// The caller's deadline, if it gave one (a Rego evaluation's timer
    /// ends there too).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// A budget of [`MAX_EVALUATION_TIME`], and no later than `deadline`.
    pub fn new(deadline: Option<Instant>) -> Budget {
        Budget::with_limit(deadline, MAX_EVALUATION_TIME)
    }

    /// A budget of `limit` (tests use a short one).
    pub fn with_limit(deadline: Option<Instant>, limit: std::time::Duration) -> Budget {
        Budget {
            deadline,
            started: None,
            unread: 0,
            limit,
        }
    }

    /// Charges a condition about to run with its worst case (`steps`, plus one
    /// for the rule); `Err` when the check must stop before running it.
    #[inline]
    pub fn charge(&mut self, steps: u64) -> Result<(), Spent> {
        self.unread = self.unread.saturating_add(steps).saturating_add(1);
        if self.unread < CLOCK_EVERY {
            return Ok(());
        }
        self.unread = 0;
        self.read_clock()
    }

    #[cold]
    fn read_clock(&mut self) -> Result<(), Spent> {
        let now = Instant::now();
        if self.deadline.is_some_and(|d| now >= d) {
            return Err(Spent::Deadline);
        }
        let started = *self.started.get_or_insert(now);
        if now.duration_since(started) >= self.limit {
            return Err(Spent::Budget);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn cheap_conditions_never_read_the_clock() {
        // A deadline already passed goes unnoticed while the charges stay small.
        let mut b = Budget::new(Some(Instant::now()));
        for _ in 0..(CLOCK_EVERY / 11 - 1) {
            assert_eq!(b.charge(10), Ok(()));
        }
        assert_eq!(b.charge(CLOCK_EVERY), Err(Spent::Deadline));
    }

    #[test]
    fn a_passed_deadline_stops_before_a_heavy_condition() {
        let mut b = Budget::new(Some(Instant::now() - Duration::from_millis(1)));
        assert_eq!(b.charge(CLOCK_EVERY), Err(Spent::Deadline));
        let mut later = Budget::new(Some(Instant::now() + Duration::from_secs(60)));
        assert_eq!(later.charge(CLOCK_EVERY), Ok(()));
    }

    #[test]
    fn the_budget_is_spent_after_its_time() {
        let mut b = Budget::with_limit(None, Duration::from_millis(20));
        assert_eq!(b.charge(CLOCK_EVERY), Ok(()));
        let until = Instant::now() + Duration::from_millis(25);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        assert_eq!(b.charge(CLOCK_EVERY), Err(Spent::Budget));
    }
}
