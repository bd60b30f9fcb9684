//! `BatchingWriter` shutdown: everything flushed on a clean stop, leftovers
//! reported (and the deadline respected) when the store is down or stalled,
//! and dropping the writer stops its task. Paused tokio time.

mod support;
mod writer_support;

use std::time::Duration;

use shadowcat_session::{BatchingWriter, StreamId, Update, WriterConfig};
use tokio::time::Instant;
use writer_support::{FlakyStore, sessions, stored};

const LIMIT: Duration = Duration::from_secs(60);

fn never_flush() -> WriterConfig {
    WriterConfig {
        flush_interval: Duration::from_secs(3600),
        max_batch: 100_000,
        shutdown_deadline: Duration::from_secs(3),
        ..WriterConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_flushes_everything_pending() {
    let store = FlakyStore::new();
    let ids = sessions(&*store, 1_000).await;
    let writer = BatchingWriter::start(store.as_dyn(), never_flush());
    let h = writer.handle();
    for (i, id) in ids.iter().enumerate() {
        h.submit(id, StreamId(0), Some(&i.to_string()), i as u64);
        h.touch(id, 1);
    }
    assert_eq!(store.calls(), 0);
    let report = writer.shutdown().await;
    assert!(report.is_complete(), "{report:?}");
    assert!(!report.deadline_reached);
    assert_eq!(report.stats.written, 2_000);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            stored(&*store, id, StreamId(0)).await,
            Some((Some(i.to_string()), i as u64))
        );
    }
}

#[tokio::test(start_paused = true)]
async fn store_down_reports_leftovers_within_the_deadline() {
    let store = FlakyStore::new();
    let ids = sessions(&*store, 10).await;
    let cfg = never_flush();
    let deadline = cfg.shutdown_deadline;
    let writer = BatchingWriter::start(store.as_dyn(), cfg);
    let h = writer.handle();
    for id in &ids {
        h.submit(id, StreamId(0), Some("a"), 1);
        h.submit(id, StreamId(0), Some("b"), 2);
    }
    store.set_down(true);
    let t0 = Instant::now();
    let report = writer.shutdown().await;
    let took = t0.elapsed();
    assert!(took <= deadline, "shutdown took {took:?}");
    assert!(took >= deadline / 2, "gave up early: {took:?}");
    assert!(report.deadline_reached);
    assert!(!report.is_complete());
    assert!(store.calls() >= 3, "retried: {}", store.calls());
    let mut left: Vec<_> = report
        .unwritten
        .iter()
        .map(|u| match u {
            Update::Point { session, point, .. } => (session.clone(), point.client_seq),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    left.sort();
    let mut want: Vec<_> = ids.iter().map(|id| (id.clone(), 2)).collect();
    want.sort();
    assert_eq!(left, want, "the newest value of every key");
    // Later submits are counted, not silently lost.
    h.submit(&ids[0], StreamId(0), Some("c"), 3);
    assert_eq!(h.stats().dropped_closed, 1);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_store_cannot_hold_shutdown_past_the_deadline() {
    let store = FlakyStore::new();
    let ids = sessions(&*store, 3).await;
    let cfg = WriterConfig {
        flush_interval: Duration::from_millis(100),
        write_timeout: Duration::from_secs(60),
        ..never_flush()
    };
    let deadline = cfg.shutdown_deadline;
    let writer = BatchingWriter::start(store.as_dyn(), cfg);
    let h = writer.handle();
    store.stall();
    for id in &ids {
        h.submit(id, StreamId(0), Some("a"), 1);
    }
    // A flush is stuck in the store when shutdown starts; one more value
    // is pending behind it.
    store.wait_calls(1, LIMIT).await;
    h.submit(&ids[0], StreamId(1), Some("x"), 1);
    let t0 = Instant::now();
    let report = writer.shutdown().await;
    let took = t0.elapsed();
    assert!(took <= deadline, "shutdown took {took:?}");
    assert!(report.deadline_reached);
    assert_eq!(report.unwritten.len(), 4, "{report:?}");
    assert_eq!(report.stats.written, 0);
    assert_eq!(store.calls(), 2, "the stuck call, then one final try");
    store.release();
}

#[tokio::test(start_paused = true)]
async fn shutdown_retries_until_the_store_comes_back() {
    let store = FlakyStore::new();
    let ids = sessions(&*store, 5).await;
    let writer = BatchingWriter::start(store.as_dyn(), never_flush());
    let h = writer.handle();
    for id in &ids {
        h.submit(id, StreamId(0), Some("a"), 7);
    }
    store.set_down(true);
    let revive = async {
        store.wait_returned(2, LIMIT).await;
        store.set_down(false);
    };
    let (report, ()) = tokio::join!(writer.shutdown(), revive);
    assert!(report.is_complete(), "{report:?}");
    assert!(report.stats.write_errors >= 2);
    for id in &ids {
        assert_eq!(
            stored(&*store, id, StreamId(0)).await,
            Some((Some("a".into()), 7))
        );
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_the_writer_flushes_and_stops_its_task() {
    let store = FlakyStore::new();
    let ids = sessions(&*store, 2).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let writer = BatchingWriter::start(store.as_dyn(), never_flush());
    assert_eq!(metrics.num_alive_tasks(), before + 1, "one task per writer");
    let h = writer.handle();
    h.submit(&ids[0], StreamId(0), Some("bye"), 9);
    drop(writer);
    store.wait_returned(1, LIMIT).await;
    let mut spins = 0;
    while metrics.num_alive_tasks() > before {
        assert!(spins < 10_000, "writer task still alive after drop");
        spins += 1;
        tokio::task::yield_now().await;
    }
    assert_eq!(
        stored(&*store, &ids[0], StreamId(0)).await,
        Some((Some("bye".into()), 9))
    );
    h.submit(&ids[0], StreamId(0), Some("late"), 10);
    assert_eq!(h.stats().dropped_closed, 1);
}
