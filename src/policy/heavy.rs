//! Heavy tenants: those whose worst check costs more than
//! [`HEAVY_CHECK_COST`] steps. Their evaluation runs off the async workers
//! (so checks of other tenants keep being served while it runs), and at most
//! [`heavy_share()`] of one heavy tenant's checks evaluate at once, and as
//! many of all heavy tenants' checks together (one more gate, the pipeline's,
//! so several heavy tenants cannot take together what one may not); a check
//! beyond that is answered at once with 503 `overloaded`, like one beyond
//! `limits.max_concurrent_checks`.
//!
//! A tenant below the threshold takes none of this: no counter, no clock, no
//! thread hand-off.
//!
//! Never imports: decision, tenants or anything above them.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use super::cost::HEAVY_CHECK_COST;

/// How many of one heavy tenant's checks may evaluate at once: half the
/// cores (at least one), so a heavy tenant leaves the other half to the rest.
pub fn heavy_share() -> usize {
    static SHARE: LazyLock<usize> =
        LazyLock::new(|| std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)));
    *SHARE
}

/// A heavy tenant's checks in flight, and how many it may have.
#[derive(Debug)]
pub struct HeavyGate {
    in_flight: AtomicUsize,
    most: usize,
}

/// One check's place in a [`HeavyGate`], given back on drop.
#[derive(Debug)]
pub struct Slot<'a>(&'a AtomicUsize);

impl HeavyGate {
    pub fn new(most: usize) -> HeavyGate {
        HeavyGate {
            in_flight: AtomicUsize::new(0),
            most,
        }
    }

    /// A place for one check; `None` when the tenant has its share in flight.
    pub fn enter(&self) -> Option<Slot<'_>> {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= self.most {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(&self.in_flight))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs `work` (synchronous, CPU-bound) so that the async worker it was
/// called on is handed to another thread meanwhile: on a multi-threaded
/// tokio runtime with `block_in_place`; elsewhere (a current-thread runtime,
/// no runtime) simply in place.
pub fn off_the_workers<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_gate_admits_its_share_and_no_more() {
        let gate = HeavyGate::new(2);
        let a = gate.enter().unwrap();
        let _b = gate.enter().unwrap();
        assert!(gate.enter().is_none());
        drop(a);
        assert!(gate.enter().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_runs_off_the_workers_on_a_multi_threaded_runtime() {
        assert_eq!(off_the_workers(|| 7), 7);
    }

    #[tokio::test]
    async fn work_runs_in_place_on_a_current_thread_runtime() {
        assert_eq!(off_the_workers(|| 7), 7);
    }
}
