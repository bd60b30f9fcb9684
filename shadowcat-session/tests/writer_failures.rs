//! `BatchingWriter` under store failures: retries with backoff, the newest
//! value always wins, no older id ever overwrites a newer one, the circuit
//! breaker, bounded attempts, non-retryable errors and poison updates.
//! Paused tokio time keeps backoffs and cooldowns exact and fast.

mod support;
mod writer_support;

use std::time::Duration;

use shadowcat_session::{BatchingWriter, BreakerState, StreamId, WriterConfig};
use tokio::time::Instant;
use writer_support::{Failure, FlakyStore, sessions, stored};

const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test(start_paused = true)]
async fn newest_id_wins_through_failures_and_never_goes_back() {
    let store = FlakyStore::new();
    let ids = sessions(&*store, 20).await;
    let cfg = WriterConfig {
        breaker_threshold: 1_000,
        max_attempts: 1_000,
        ..WriterConfig::default()
    };
    let writer = BatchingWriter::start(store.as_dyn(), cfg);
    let h = writer.handle();

    // 300 rounds of 30 ms: every session's two streams advance each round;
    // the store fails in a pattern of outages and single errors.
    for round in 1..=300u64 {
        match round % 50 {
            10 => store.set_down(true),
            25 => store.set_down(false),
            33 => store.fail_next(2, Failure::Unavailable),
            _ => {}
        }
        for (i, id) in ids.iter().enumerate() {
            // Sessions submit at different rates so some keys wait in the
            // retry set without a newer value arriving.
            if round % (1 + i as u64 % 4) == 0 {
                for stream in 0..2 {
                    let seq = round * 10 + stream;
                    h.submit(id, StreamId(stream as u32), Some(&format!("{seq}")), seq);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    store.set_down(false);
    let report = writer.shutdown().await;
    assert!(report.is_complete(), "{report:?}");

    let stats = report.stats;
    assert!(stats.write_errors >= 5, "{stats:?}");
    assert!(stats.retries > 0, "{stats:?}");
    assert_eq!(stats.dropped(), 0, "{stats:?}");
    for (i, id) in ids.iter().enumerate() {
        let every = 1 + i as u64 % 4;
        let last_round = 300 / every * every;
        for stream in 0..2u64 {
            let seq = last_round * 10 + stream;
            assert_eq!(
                stored(&*store, id, StreamId(stream as u32)).await,
                Some((Some(seq.to_string()), seq)),
                "session {i} stream {stream}"
            );
        }
    }
    store.assert_monotonic();
}

#[tokio::test(start_paused = true)]
async fn a_failed_old_value_does_not_overwrite_a_newer_one() {
    let store = FlakyStore::new();
    let ids = sessions(&*store, 1).await;
    let writer = BatchingWriter::start(store.as_dyn(), WriterConfig::default());
    let h = writer.handle();

    store.set_down(true);
    h.submit(&ids[0], StreamId(0), Some("old"), 10);
    store.wait_returned(1, LIMIT).await; // seq 10 failed: in the retry set
    assert_eq!(h.stats().retry_queued, 1);
    h.submit(&ids[0], StreamId(0), Some("new"), 20);
    store.set_down(false);
    store.wait_returned(2, LIMIT).await;
    // Run past the old value's backoff: nothing else may be written.
    tokio::time::sleep(Duration::from_secs(10)).await;

    assert_eq!(
        stored(&*store, &ids[0], StreamId(0)).await,
        Some((Some("new".into()), 20))
    );
    assert_eq!(store.log(), vec![(ids[0].clone(), StreamId(0), 20)]);
    assert_eq!(h.stats().retry_queued, 0);
}

#[tokio::test(start_paused = true)]
async fn retries_back_off_exponentially() {
    let store = FlakyStore::new();
    let ids = sessions(&*store, 1).await;
    let cfg = WriterConfig {
        retry_base: Duration::from_millis(400),
        retry_cap: Duration::from_secs(4),
        breaker_threshold: 100,
        ..WriterConfig::default()
    };
    let writer = BatchingWriter::start(store.as_dyn(), cfg);
    let h = writer.handle();
    store.set_down(true);
    h.submit(&ids[0], StreamId(0), Some("e"), 1);
    let mut at = Vec::new();
    for n in 1..=6 {
        store.wait_returned(n, LIMIT).await;
        at.push(Instant::now());
    }
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    // Equal jitter: attempt k waits between half and all of
    // min(cap, base * 2^(k-1)), rounded up to the next 100 ms flush.
    let tick = Duration::from_millis(100);
    for (k, gap) in gaps.iter().enumerate() {
        let full = (Duration::from_millis(400) * 2u32.pow(k as u32)).min(Duration::from_secs(4));
        assert!(
            *gap >= full / 2 && *gap <= full + tick,
            "retry {k}: waited {gap:?}, expected {:?}..={:?}",
            full / 2,
            full + tick
        );
    }
    assert_eq!(h.stats().retries, 5);
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_stops_calls_and_recovers_by_itself() {
    let store = FlakyStore::new();
    let ids = sessions(&*store, 3).await;
    let cooldown = Duration::from_secs(2);
    let cfg = WriterConfig {
        breaker_threshold: 3,
        breaker_cooldown: cooldown,
        retry_base: Duration::from_millis(10),
        retry_cap: Duration::from_millis(20),
        ..WriterConfig::default()
    };
    let writer = BatchingWriter::start(store.as_dyn(), cfg);
    let h = writer.handle();
    store.set_down(true);
    for id in &ids {
        h.submit(id, StreamId(0), Some("a"), 1);
    }
    store.wait_returned(3, LIMIT).await;
    let opened = Instant::now();
    assert_eq!(h.stats().breaker, BreakerState::Open);

    // While open: values keep coalescing, and no store call is made.
    for seq in 2..=500u64 {
        for id in &ids {
            h.submit(id, StreamId(0), Some(&seq.to_string()), seq);
        }
    }
    assert_eq!(h.stats().queued, 3, "coalesced per key");
    tokio::time::sleep(cooldown - Duration::from_millis(150)).await;
    assert_eq!(store.calls(), 3, "no calls while the breaker is open");
    assert_eq!(h.stats().breaker, BreakerState::Open);

    // Half-open trial fails: open again for another cooldown.
    store.wait_calls(4, LIMIT).await;
    assert!(opened.elapsed() >= cooldown, "{:?}", opened.elapsed());
    store.wait_returned(4, LIMIT).await;
    assert_eq!(h.stats().breaker, BreakerState::Open);
    let reopened = Instant::now();

    // The store comes back; the next trial succeeds and closes it.
    store.set_down(false);
    store.wait_returned(5, LIMIT).await;
    assert!(reopened.elapsed() >= cooldown);
    assert_eq!(h.stats().breaker, BreakerState::Closed);
    for id in &ids {
        assert_eq!(
            stored(&*store, id, StreamId(0)).await,
            Some((Some("500".into()), 500))
        );
    }
    let stats = h.stats();
    assert_eq!(stats.write_errors, 4);
    assert_eq!(stats.dropped(), 0);
    store.assert_monotonic();
}

#[tokio::test(start_paused = true)]
async fn attempts_are_bounded_but_a_later_value_starts_afresh() {
    let store = FlakyStore::new();
    let ids = sessions(&*store, 1).await;
    let cfg = WriterConfig {
        max_attempts: 3,
        breaker_threshold: 100,
        retry_base: Duration::from_millis(10),
        retry_cap: Duration::from_millis(10),
        ..WriterConfig::default()
    };
    let writer = BatchingWriter::start(store.as_dyn(), cfg);
    let h = writer.handle();
    store.set_down(true);
    h.submit(&ids[0], StreamId(0), Some("lost"), 1);
    store.wait_returned(3, LIMIT).await;
    let stats = h.stats();
    assert_eq!(stats.dropped_failed, 1, "{stats:?}");
    assert_eq!(stats.retry_queued, 0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(store.calls(), 3, "given up: no more calls");

    store.set_down(false);
    h.submit(&ids[0], StreamId(0), Some("kept"), 2);
    store.wait_returned(4, LIMIT).await;
    assert_eq!(
        stored(&*store, &ids[0], StreamId(0)).await,
        Some((Some("kept".into()), 2))
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_batch_is_dropped_and_counted_not_retried() {
    let store = FlakyStore::new();
    let ids = sessions(&*store, 4).await;
    let writer = BatchingWriter::start(store.as_dyn(), WriterConfig::default());
    let h = writer.handle();
    store.fail_next(1, Failure::Refused);
    for id in &ids {
        h.submit(id, StreamId(0), Some("x"), 1);
    }
    store.wait_returned(1, LIMIT).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stats = h.stats();
    assert_eq!(store.calls(), 1, "not retried");
    assert_eq!(stats.dropped_failed, 4);
    assert_eq!(stats.write_errors, 1);
    assert_eq!(stored(&*store, &ids[0], StreamId(0)).await, None);
    // The next value goes through.
    h.submit(&ids[0], StreamId(0), Some("y"), 2);
    store.wait_returned(2, LIMIT).await;
    assert_eq!(
        stored(&*store, &ids[0], StreamId(0)).await,
        Some((Some("y".into()), 2))
    );
}

#[tokio::test(start_paused = true)]
async fn a_poison_update_is_isolated_by_bisection() {
    let store = FlakyStore::new();
    let ids = sessions(&*store, 16).await;
    store.set_poison(Some(ids[5].clone()));
    let writer = BatchingWriter::start(store.as_dyn(), WriterConfig::default());
    let h = writer.handle();
    for id in &ids {
        h.submit(id, StreamId(0), Some("p"), 1);
    }
    store.wait_returned(1, LIMIT).await;
    // 16 updates: at most 2 * 16 - 1 calls to isolate one.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(store.calls() <= 31, "{}", store.calls());
    let stats = h.stats();
    assert_eq!(stats.dropped_failed, 1, "{stats:?}");
    assert_eq!(stats.written, 15);
    assert_eq!(stats.breaker, BreakerState::Closed);
    for (i, id) in ids.iter().enumerate() {
        let got = stored(&*store, id, StreamId(0)).await;
        if i == 5 {
            assert_eq!(got, None);
        } else {
            assert_eq!(got, Some((Some("p".into()), 1)), "session {i}");
        }
    }
}
