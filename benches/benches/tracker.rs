//! `EventTracker::record` cost per event: fresh and duplicate ids, short
//! (`17/4711`) and UUID-ish (36 characters). Goal: ≤ 100 ns per record.
//!
//! `cargo bench -p benches --bench tracker -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use shadowcat_transport::tracker::DEFAULT_WINDOW;
use shadowcat_transport::{EventTracker, Recorded};

/// Ids cycled through for "fresh": far more than the window, so each id has
/// been evicted by the time it comes round again.
const POOL: usize = 4096;
/// Ids cycled through for "duplicate": all inside the window.
const RECENT: usize = DEFAULT_WINDOW / 2;

fn pool(uuid: bool) -> Vec<String> {
    (0..POOL)
        .map(|i| {
            if uuid {
                format!("0b5e4c3a-9f1d-4e2b-8a7c-{:012x}", i * 7919)
            } else {
                format!("17/{}", 4711 + i)
            }
        })
        .collect()
}

fn record(c: &mut Criterion) {
    let mut group = c.benchmark_group("tracker_record");
    for (kind, uuid) in [("short", false), ("uuid", true)] {
        let ids = pool(uuid);
        {
            let mut t = EventTracker::new();
            let mut i = 0;
            group.bench_function(format!("fresh/{kind}"), |b| {
                b.iter(|| {
                    let r = t.record(black_box(&ids[i]));
                    i = (i + 1) % POOL;
                    r
                })
            });
            assert_eq!(t.stats().duplicate, 0, "fresh ids were all fresh");

            let mut t = EventTracker::new();
            let recent = &ids[..RECENT];
            for id in recent {
                assert_eq!(t.record(id), Recorded::Fresh);
            }
            let mut i = 0;
            group.bench_function(format!("duplicate/{kind}"), |b| {
                b.iter(|| {
                    let r = t.record(black_box(&recent[i]));
                    i = (i + 1) % RECENT;
                    r
                })
            });
            assert_eq!(
                t.stats().fresh,
                RECENT as u64,
                "replayed ids were all duplicates"
            );
        }
    }
    group.finish();
}

criterion_group!(benches, record);
criterion_main!(benches);
