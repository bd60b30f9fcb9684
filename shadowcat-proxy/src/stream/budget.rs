//! The proxy's one budget for buffered stream data
//! (`max_buffered_bytes`): every replay buffer charges what it holds, and
//! request bodies charge what they hold while they are read.
//!
//! Charging is one atomic add (no lock): the hot path pays nothing more.
//! When a batch takes the total over the limit, the stream that appended
//! it makes room before it reads again: streams no client holds (detached,
//! in the linger queue) are released, oldest first
//! ([`crate::stream::linger::Linger::make_room`]). Live streams are never
//! cut for the budget; while the total is at the limit, new streams are
//! refused (503) instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Default [`crate::Limits::max_buffered_bytes`]: 256 MiB.
pub(crate) const DEFAULT_MAX_BUFFERED_BYTES: usize = 256 << 20;

/// The gauges move in steps of this many bytes (not on every batch).
const GAUGE_STEP: usize = 1 << 20;

/// Buffered bytes, accounted against one limit.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: usize,
    used: AtomicUsize,
    /// The highest total seen once a batch settled (room made).
    settled_peak: AtomicUsize,
    /// Streams released to make room.
    releases: AtomicU64,
    /// The gauge's last step, so it is set only when it changes.
    published: AtomicUsize,
    /// When the last "over budget" warning was logged (ms since start).
    warned_at: AtomicU64,
    started: std::time::Instant,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Self {
        metrics::gauge!("shadowcat_buffered_bytes_limit").set(limit as f64);
        metrics::gauge!("shadowcat_buffered_bytes").set(0.0);
        Budget {
            limit,
            used: AtomicUsize::new(0),
            settled_peak: AtomicUsize::new(0),
            releases: AtomicU64::new(0),
            published: AtomicUsize::new(0),
            warned_at: AtomicU64::new(0),
            started: std::time::Instant::now(),
        }
    }

    /// The limit, in bytes.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes accounted now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The highest total seen after a batch settled.
    pub(crate) fn settled_peak(&self) -> usize {
        self.settled_peak.load(Ordering::Relaxed)
    }

    /// True when the total is above the limit.
    pub(crate) fn is_over(&self) -> bool {
        self.used() > self.limit
    }

    /// True when no new stream should start: the total is at the limit.
    pub(crate) fn is_full(&self) -> bool {
        self.used() >= self.limit
    }

    /// Accounts `n` more bytes.
    pub(crate) fn charge(&self, n: usize) {
        if n == 0 {
            return;
        }
        let now = self.used.fetch_add(n, Ordering::Relaxed) + n;
        self.publish(now);
    }

    /// Accounts `n` bytes fewer.
    pub(crate) fn credit(&self, n: usize) {
        if n == 0 {
            return;
        }
        let now = self.used.fetch_sub(n, Ordering::Relaxed) - n;
        self.publish(now);
    }

    /// Streams released to make room, in all.
    pub(crate) fn releases(&self) -> u64 {
        self.releases.load(Ordering::Relaxed)
    }

    /// Records that `n` streams were released to make room.
    pub(crate) fn released(&self, n: u64) {
        self.releases.fetch_add(n, Ordering::Relaxed);
    }

    /// Records the total once room was made after a batch.
    pub(crate) fn settled(&self) {
        self.settled_peak.fetch_max(self.used(), Ordering::Relaxed);
    }

    fn publish(&self, now: usize) {
        let step = now / GAUGE_STEP;
        if self.published.swap(step, Ordering::Relaxed) != step {
            metrics::gauge!("shadowcat_buffered_bytes").set(now as f64);
        }
    }

    /// True at most once a second: whether to log that the budget is
    /// exhausted (the counters count every case).
    pub(crate) fn should_warn(&self) -> bool {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.warned_at.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= Duration::from_secs(1).as_millis() as u64)
            && self
                .warned_at
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Bytes held for a while (a request body being read), charged to a
/// [`Budget`] and given back when dropped.
#[derive(Debug)]
pub(crate) struct Charge {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Charge {
    pub(crate) fn new(budget: Arc<Budget>) -> Self {
        Charge { budget, bytes: 0 }
    }

    /// Now holds `bytes` in all.
    pub(crate) fn set(&mut self, bytes: usize) {
        if bytes > self.bytes {
            self.budget.charge(bytes - self.bytes);
        } else {
            self.budget.credit(self.bytes - bytes);
        }
        self.bytes = bytes;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.credit(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_and_credits() {
        let b = Budget::new(100);
        b.charge(60);
        assert!(!b.is_over() && !b.is_full());
        b.charge(40);
        assert!(b.is_full() && !b.is_over());
        b.charge(1);
        assert!(b.is_over());
        b.credit(41);
        assert_eq!(b.used(), 60);
        b.settled();
        assert_eq!(b.settled_peak(), 60);
        assert!(b.should_warn());
        assert!(!b.should_warn(), "once a second at most");
    }

    #[test]
    fn a_charge_gives_back_what_it_held() {
        let b = Arc::new(Budget::new(100));
        let mut c = Charge::new(Arc::clone(&b));
        c.set(30);
        c.set(50);
        assert_eq!(b.used(), 50);
        c.set(10);
        assert_eq!(b.used(), 10);
        drop(c);
        assert_eq!(b.used(), 0);
    }
}
