//! `BatchingWriter` basics: what reaches the store, coalescing, the size
//! trigger, `forget`, the pending-map bound and config checks. Paused tokio
//! time: flushes happen at exact virtual instants.

mod support;
mod writer_support;

use std::sync::Arc;
use std::time::Duration;

use shadowcat_session::{
    BatchingWriter, SessionId, SessionStore, StreamId, WriterConfig, WriterConfigError,
};
use tokio::time::Instant;
use writer_support::{FlakyStore, sessions, stored};

const LIMIT: Duration = Duration::from_secs(30);

fn config() -> WriterConfig {
    WriterConfig::default()
}

#[tokio::test(start_paused = true)]
async fn points_touches_and_ends_reach_the_store() {
    let store = FlakyStore::new();
    let ids = sessions(&*store, 2).await;
    let writer = BatchingWriter::start(store.as_dyn(), config());
    let h = writer.handle();

    h.submit(&ids[0], StreamId(0), Some("e-1"), 1);
    h.submit(&ids[0], StreamId(1), None, 7);
    h.submit(&ids[1], StreamId(0), Some("x"), 3);
    h.touch(&ids[1], 4_000_000_000_000);
    store.wait_calls(1, LIMIT).await;
    store.wait_returned(1, LIMIT).await;

    assert_eq!(
        stored(&*store, &ids[0], StreamId(0)).await,
        Some((Some("e-1".into()), 1))
    );
    assert_eq!(stored(&*store, &ids[0], StreamId(1)).await, Some((None, 7)));
    assert_eq!(
        stored(&*store, &ids[1], StreamId(0)).await,
        Some((Some("x".into()), 3))
    );
    let s1 = store.get(&ids[1]).await.unwrap().unwrap();
    assert_eq!(s1.last_activity, 4_000_000_000_000);
    assert_eq!(store.updates_written(), 4, "one update per key");

    // End a stream: its point goes.
    h.end_stream(&ids[0], StreamId(1));
    store.wait_returned(2, LIMIT).await;
    assert_eq!(stored(&*store, &ids[0], StreamId(1)).await, None);
    assert!(stored(&*store, &ids[0], StreamId(0)).await.is_some());

    let stats = writer.stats();
    assert_eq!(stats.submitted, 5);
    assert_eq!(stats.written, 5);
    assert_eq!(stats.batches, 2);
    assert_eq!(stats.dropped(), 0);
    let report = writer.shutdown().await;
    assert!(report.is_complete(), "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn newest_value_per_key_wins_and_one_update_is_written() {
    let store = FlakyStore::new();
    let ids = sessions(&*store, 1).await;
    let writer = BatchingWriter::start(store.as_dyn(), config());
    let h = writer.handle();
    for seq in 1..=10_000u64 {
        h.submit(&ids[0], StreamId(0), Some(&format!("ev-{seq}")), seq);
    }
    h.touch(&ids[0], 10);
    h.touch(&ids[0], 30);
    h.touch(&ids[0], 20);
    store.wait_returned(1, LIMIT).await;

    assert_eq!(
        stored(&*store, &ids[0], StreamId(0)).await,
        Some((Some("ev-10000".into()), 10_000))
    );
    assert_eq!(store.updates_written(), 2, "one point and one touch");
    let s = store.get(&ids[0]).await.unwrap().unwrap();
    assert!(s.last_activity >= 30, "newest touch wins");
    let stats = writer.stats();
    assert_eq!(stats.submitted, 10_003);
    assert_eq!(stats.coalesced, 10_001);
    assert_eq!(store.log(), vec![(ids[0].clone(), StreamId(0), 10_000)]);
}

#[tokio::test(start_paused = true)]
async fn end_then_point_and_point_then_end_keep_the_newest() {
    let store = FlakyStore::new();
    let ids = sessions(&*store, 1).await;
    let writer = BatchingWriter::start(store.as_dyn(), config());
    let h = writer.handle();
    h.submit(&ids[0], StreamId(0), Some("a"), 1);
    h.end_stream(&ids[0], StreamId(0));
    h.submit(&ids[0], StreamId(1), Some("b"), 2);
    h.end_stream(&ids[0], StreamId(1));
    h.submit(&ids[0], StreamId(1), Some("c"), 3);
    store.wait_returned(1, LIMIT).await;
    assert_eq!(stored(&*store, &ids[0], StreamId(0)).await, None);
    assert_eq!(
        stored(&*store, &ids[0], StreamId(1)).await,
        Some((Some("c".into()), 3))
    );
    assert_eq!(store.updates_written(), 2);
}

#[tokio::test(start_paused = true)]
async fn max_batch_pending_keys_flush_without_waiting_for_the_interval() {
    let store = FlakyStore::new();
    let ids = sessions(&*store, 25).await;
    let cfg = WriterConfig {
        flush_interval: Duration::from_secs(3600),
        max_batch: 10,
        ..config()
    };
    let writer = BatchingWriter::start(store.as_dyn(), cfg);
    let h = writer.handle();
    let t0 = Instant::now();
    for id in &ids {
        h.submit(id, StreamId(0), Some("e"), 1);
    }
    // 25 keys: the 10th wakes the task; it takes all 25 in chunks of 10.
    store.wait_returned(3, LIMIT).await;
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!(store.updates_written(), 25);
    assert_eq!(store.calls(), 3, "chunks of max_batch");
    for id in &ids {
        assert_eq!(
            stored(&*store, id, StreamId(0)).await,
            Some((Some("e".into()), 1))
        );
    }
}

#[tokio::test(start_paused = true)]
async fn forget_drops_what_is_pending() {
    let store = FlakyStore::new();
    let ids = sessions(&*store, 2).await;
    let writer = BatchingWriter::start(store.as_dyn(), config());
    let h = writer.handle();
    h.submit(&ids[0], StreamId(0), Some("gone"), 5);
    h.submit(&ids[1], StreamId(0), Some("kept"), 6);
    h.forget(&ids[0]);
    assert_eq!(h.stats().queued, 1);
    store.wait_returned(1, LIMIT).await;
    assert_eq!(stored(&*store, &ids[0], StreamId(0)).await, None);
    assert_eq!(
        stored(&*store, &ids[1], StreamId(0)).await,
        Some((Some("kept".into()), 6))
    );
    assert_eq!(store.updates_written(), 1);
}

#[tokio::test(start_paused = true)]
async fn pending_map_bound_drops_new_sessions_and_counts_them() {
    let store = FlakyStore::new();
    let ids = sessions(&*store, 5).await;
    let cfg = WriterConfig {
        max_pending_sessions: 3,
        max_streams_per_session: 2,
        ..config()
    };
    let writer = BatchingWriter::start(store.as_dyn(), cfg);
    let h = writer.handle();
    for id in &ids {
        h.submit(id, StreamId(0), Some("e"), 1);
    }
    // Known sessions still coalesce; a third stream is over the bound.
    h.submit(&ids[0], StreamId(0), Some("f"), 2);
    h.submit(&ids[0], StreamId(1), Some("g"), 3);
    h.submit(&ids[0], StreamId(2), Some("h"), 4);
    let stats = h.stats();
    assert_eq!(stats.dropped_full, 3, "two sessions and one stream");
    assert_eq!(stats.queued, 4);
    store.wait_returned(1, LIMIT).await;
    assert_eq!(store.updates_written(), 4);
    assert_eq!(stored(&*store, &ids[4], StreamId(0)).await, None);
    assert_eq!(stored(&*store, &ids[0], StreamId(2)).await, None);
    // After the flush the map has room again.
    h.submit(&ids[4], StreamId(0), Some("late"), 9);
    store.wait_returned(2, LIMIT).await;
    assert_eq!(
        stored(&*store, &ids[4], StreamId(0)).await,
        Some((Some("late".into()), 9))
    );
}

#[tokio::test(start_paused = true)]
async fn idle_entries_are_freed_and_busy_ones_are_reused() {
    let store = FlakyStore::new();
    let ids = sessions(&*store, 1_000).await;
    let writer = BatchingWriter::start(store.as_dyn(), config());
    let h = writer.handle();
    for id in &ids {
        h.submit(id, StreamId(0), Some("0123456789abcdef"), 1);
    }
    let busy = h.pending_memory_bytes();
    assert!(busy > 1_000 * 48, "{busy} bytes for 1000 sessions");
    // One flush moves the entries to the recycled map; the next flushes
    // with no activity free them and shrink the tables.
    store.wait_returned(1, LIMIT).await;
    assert!(h.pending_memory_bytes() > 1_000 * 48);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = h.pending_memory_bytes();
    assert!(idle < busy / 10, "idle {idle} vs busy {busy}");
    assert_eq!(store.updates_written(), 1_000);
}

#[test]
fn handle_is_shareable() {
    fn check<T: Clone + Send + Sync + std::fmt::Debug + 'static>() {}
    check::<shadowcat_session::WriterHandle>();
    fn send<T: Send + std::fmt::Debug>() {}
    send::<BatchingWriter>();
    send::<shadowcat_session::ShutdownReport>();
}

#[test]
fn config_validation_names_the_bad_setting() {
    assert_eq!(WriterConfig::default().validate(), Ok(()));
    let zero = WriterConfig {
        max_batch: 0,
        ..config()
    };
    assert_eq!(zero.validate(), Err(WriterConfigError::Zero("max_batch")));
    let cap = WriterConfig {
        retry_base: Duration::from_secs(2),
        retry_cap: Duration::from_secs(1),
        ..config()
    };
    assert!(matches!(
        cap.validate(),
        Err(WriterConfigError::RetryCap { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_zero_setting_is_raised_not_fatal() {
    let store: Arc<dyn SessionStore> = FlakyStore::new();
    let cfg = WriterConfig {
        max_batch: 0,
        flush_interval: Duration::ZERO,
        ..config()
    };
    let writer = BatchingWriter::start(store, cfg);
    let id = SessionId::generate().unwrap();
    writer.handle().submit(&id, StreamId(0), None, 1);
    let report = writer.shutdown().await;
    // The session does not exist in the store, so the update is skipped,
    // but the write itself succeeded.
    assert!(report.is_complete());
    assert_eq!(report.stats.written, 1);
}
