//! `EventTracker` under concurrency: threads that record the same ids at the
//! same moment see exactly one `Fresh` per id, and the sink's reports stay
//! ordered with the resumption point.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use shadowcat_transport::{EventIdSink, EventTracker, Recorded};

const THREADS: usize = 4;
const ROUNDS: usize = 300;
const IDS_PER_ROUND: usize = 32;

/// Counts reports and keeps the last one.
#[derive(Debug, Default)]
struct Counting {
    calls: AtomicU64,
    last: Mutex<String>,
}

impl EventIdSink for Counting {
    fn resumption_point(&self, event_id: &str) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock();
        last.clear();
        last.push_str(event_id);
    }
}

#[test]
fn racing_threads_see_exactly_one_fresh_per_id() {
    let started = Instant::now();
    let sink = Arc::new(Counting::default());
    let dyn_sink: Arc<dyn EventIdSink> = sink.clone();
    let tracker = Arc::new(EventTracker::new(Some(dyn_sink)));
    let barrier = Arc::new(Barrier::new(THREADS));
    // fresh[round][i]: how many threads saw id i of that round as fresh.
    let fresh: Arc<Vec<AtomicU64>> = Arc::new(
        (0..ROUNDS * IDS_PER_ROUND)
            .map(|_| AtomicU64::new(0))
            .collect(),
    );

    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (tracker, barrier, fresh) = (tracker.clone(), barrier.clone(), fresh.clone());
            thread::spawn(move || {
                for round in 0..ROUNDS {
                    // Same ids for every thread; each walks them from a
                    // different offset so they collide in different orders.
                    let ids: Vec<String> = (0..IDS_PER_ROUND)
                        .map(|i| format!("{round}/{}", (i + t * 7) % IDS_PER_ROUND))
                        .collect();
                    barrier.wait();
                    for id in &ids {
                        if tracker.record(id) == Recorded::Fresh {
                            let i: usize = id.split('/').nth(1).unwrap().parse().unwrap();
                            fresh[round * IDS_PER_ROUND + i].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("recording thread panicked");
    }

    for (n, count) in fresh.iter().enumerate() {
        assert_eq!(
            count.load(Ordering::Relaxed),
            1,
            "id {}/{} seen fresh by the wrong number of threads",
            n / IDS_PER_ROUND,
            n % IDS_PER_ROUND
        );
    }
    let total = (ROUNDS * IDS_PER_ROUND) as u64;
    let stats = tracker.stats();
    assert_eq!(stats.fresh, total);
    assert_eq!(stats.duplicate, total * (THREADS as u64 - 1));
    assert_eq!(sink.calls.load(Ordering::Relaxed), total);
    // Reports happen under the tracker's lock: the last one is the point.
    assert_eq!(
        tracker.last_event_id().unwrap().as_str(),
        sink.last.lock().as_str()
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}
