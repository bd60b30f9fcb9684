//! The one linger mechanism: a stream whose last client went is kept for
//! the linger time (`detached_linger`) so the client can come back with
//! `Last-Event-ID` (for the rest of the stream, or the tail it may not have
//! received), then released, so memory follows the streams in use.
//!
//! One queue per proxy (in its `StreamEnv`) and at most one sweeper task
//! for it, on the proxy's runtime: keeping a stream is a lock and a push,
//! with no task or timer per stream. A stream that is not complete also
//! has its detached reader ([`crate::stream`]), which only reads.
//!
//! The queue is also the order in which the buffer budget releases
//! streams ([`Linger::make_room`]): detached streams, oldest first.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::time::Instant;

use super::budget::Budget;
use crate::stream::StreamShared;

/// The streams of one proxy that no client holds, oldest deadline first.
#[derive(Debug, Default)]
pub(crate) struct Linger {
    kept: Mutex<VecDeque<(Instant, Weak<StreamShared>)>>,
    sweeping: AtomicBool,
}

impl Linger {
    /// Releases `stream` at `until` unless a client attached again by then.
    pub(crate) fn keep(self: &Arc<Self>, stream: &Arc<StreamShared>, until: Instant) {
        self.kept.lock().push_back((until, Arc::downgrade(stream)));
        self.start_sweeper();
    }

    /// Releases detached streams, oldest first, until `budget` is no
    /// longer over its limit or none is left. Returns how many went.
    pub(crate) fn make_room(&self, budget: &Budget) -> usize {
        let mut released = 0;
        while budget.is_over() {
            let Some((until, stream)) = self.kept.lock().pop_front() else {
                break;
            };
            // A stream attached again, or detached again later (it has a
            // later entry), is not released by this entry.
            if let Some(stream) = stream.upgrade()
                && stream.release_if_detached_at(until)
            {
                released += 1;
            }
        }
        budget.settled();
        if released > 0 {
            budget.released(released as u64);
            metrics::counter!("shadowcat_budget_releases_total").increment(released as u64);
            if budget.should_warn() {
                tracing::warn!(
                    released,
                    used = budget.used(),
                    limit = budget.limit(),
                    "buffered stream data reached max_buffered_bytes; released the oldest streams no client holds"
                );
            }
        }
        released
    }

    fn start_sweeper(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(Arc::clone(self).sweep())),
            Err(_) => self.sweeping.store(false, Ordering::Release),
        }
    }

    async fn sweep(self: Arc<Self>) {
        let guard = Sweeping(Arc::clone(&self));
        let mut due = Vec::new();
        loop {
            let next = self.kept.lock().front().map(|(t, _)| *t);
            let Some(at) = next else {
                drop(guard);
                // Something kept after the look and before the flag went
                // down starts its own sweeper; check once more for a lost one.
                if !self.kept.lock().is_empty() {
                    self.start_sweeper();
                }
                return;
            };
            tokio::time::sleep_until(at).await;
            let now = Instant::now();
            {
                let mut kept = self.kept.lock();
                while kept.front().is_some_and(|(t, _)| *t <= now) {
                    if let Some((_, s)) = kept.pop_front() {
                        due.push(s);
                    }
                }
            }
            for s in due.drain(..) {
                if let Some(stream) = s.upgrade() {
                    stream.release_if_kept(now);
                }
            }
        }
    }
}

/// Clears the flag when the sweeper ends (also when its runtime stops).
struct Sweeping(Arc<Linger>);

impl Drop for Sweeping {
    fn drop(&mut self) {
        self.0.sweeping.store(false, Ordering::Release);
    }
}
