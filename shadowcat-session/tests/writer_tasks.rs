//! The `BatchingWriter` runs one task whatever the event count, and a
//! producer never waits on the store: submits return at once while the
//! store is stalled mid-write.

mod support;
mod writer_support;

use std::time::{Duration, Instant};

use shadowcat_session::{BatchingWriter, StreamId, WriterConfig};
use writer_support::{FlakyStore, sessions, stored};

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_count_does_not_grow_with_events() {
    let store = FlakyStore::new();
    let ids = sessions(&*store, 100).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let writer = BatchingWriter::start(store.as_dyn(), WriterConfig::default());
    let h = writer.handle();
    let with_writer = metrics.num_alive_tasks();
    assert_eq!(with_writer, before + 1, "one writer task");

    let mut most = with_writer;
    for round in 0..1_000u64 {
        for id in &ids {
            h.submit(id, StreamId(0), Some("ev"), round);
        }
        if round % 100 == 99 {
            // Let flushes happen while events keep coming.
            store.wait_returned(round / 100 + 1, LIMIT).await;
            most = most.max(metrics.num_alive_tasks());
        }
    }
    most = most.max(metrics.num_alive_tasks());
    assert_eq!(most, with_writer, "tasks alive after 100k events");
    assert_eq!(h.stats().submitted, 100_000);

    let report = writer.shutdown().await;
    assert!(report.is_complete(), "{report:?}");
    // The runtime releases a finished task just after its output is ready.
    let t0 = Instant::now();
    while metrics.num_alive_tasks() > before {
        assert!(
            t0.elapsed() < LIMIT,
            "writer task still alive after shutdown"
        );
        tokio::task::yield_now().await;
    }
    for id in &ids {
        assert_eq!(stored(&*store, id, StreamId(0)).await.unwrap().1, 999);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_never_waits_on_a_stalled_store() {
    let store = FlakyStore::new();
    let ids = sessions(&*store, 100).await;
    let cfg = WriterConfig {
        flush_interval: Duration::from_millis(5),
        ..WriterConfig::default()
    };
    let writer = BatchingWriter::start(store.as_dyn(), cfg);
    let h = writer.handle();
    store.stall();
    h.submit(&ids[0], StreamId(0), Some("first"), 0);
    // The writer is now inside apply_batch and cannot return.
    store.wait_calls(1, LIMIT).await;

    // On a blocking thread, bounded in time: were a submit to wait on the
    // store, this would time out instead of hanging.
    let producer = h.clone();
    let ids2 = ids.clone();
    let run = tokio::task::spawn_blocking(move || {
        let mut lat = Vec::with_capacity(200_000);
        for seq in 1..=2_000u64 {
            for id in &ids2 {
                let t = Instant::now();
                producer.submit(id, StreamId(0), Some("ev"), seq);
                lat.push(t.elapsed());
            }
        }
        lat
    });
    let mut lat = tokio::time::timeout(LIMIT, run)
        .await
        .expect("submits returned while the store was stalled")
        .expect("producer thread");
    lat.sort_unstable();
    let p99 = lat[lat.len() * 99 / 100];
    let max = *lat.last().unwrap();
    eprintln!("submit latency with the store stalled: p99 {p99:?}, max {max:?}");
    // Structure first: the one store call is still stuck, every submit was
    // accepted and memory stayed at one pending key per session.
    assert_eq!(store.calls(), 1);
    let stats = h.stats();
    assert_eq!(stats.submitted, 200_001);
    assert_eq!(stats.queued, 100);
    // Then time, with a bound generous enough for a loaded 2-core box
    // (a preempted thread can lose a scheduler slice or two).
    assert!(
        max < Duration::from_millis(200),
        "max submit latency {max:?}"
    );

    store.release();
    let report = writer.shutdown().await;
    assert!(report.is_complete(), "{report:?}");
    for id in &ids {
        assert_eq!(stored(&*store, id, StreamId(0)).await.unwrap().1, 2_000);
    }
}
