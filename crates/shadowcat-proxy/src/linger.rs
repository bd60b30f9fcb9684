//! Complete streams no client holds are kept for the linger time (a client
//! may still resume to fetch the final response), then released, so memory
//! follows the streams in use, not the streams that ever finished.
//!
//! One process-wide queue and at most one sweeper task: keeping a stream
//! is a lock and a push, with no task or timer per stream.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::stream::StreamShared;

static KEPT: Mutex<VecDeque<(Instant, Weak<StreamShared>)>> = Mutex::new(VecDeque::new());
static SWEEPING: AtomicBool = AtomicBool::new(false);

/// Releases `stream` at `until` unless a client attached again by then.
pub(crate) fn keep(stream: &Arc<StreamShared>, until: Instant) {
    KEPT.lock().push_back((until, Arc::downgrade(stream)));
    start_sweeper();
}

fn start_sweeper() {
    if SWEEPING.swap(true, Ordering::AcqRel) {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn(sweep())),
        Err(_) => SWEEPING.store(false, Ordering::Release),
    }
}

/// Clears the flag when the sweeper ends (also when its runtime stops).
struct Sweeping;

impl Drop for Sweeping {
    fn drop(&mut self) {
        SWEEPING.store(false, Ordering::Release);
    }
}

async fn sweep() {
    let guard = Sweeping;
    let mut due = Vec::new();
    loop {
        let next = KEPT.lock().front().map(|(t, _)| *t);
        let Some(at) = next else {
            drop(guard);
            // Something kept after the look and before the flag went down
            // starts its own sweeper; check once more for a lost one.
            if !KEPT.lock().is_empty() {
                start_sweeper();
            }
            return;
        };
        tokio::time::sleep_until(at).await;
        let now = Instant::now();
        {
            let mut kept = KEPT.lock();
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
