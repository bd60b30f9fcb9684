//! `BatchingWriter` over a real `RedisStore` while Redis dies: producers
//! submit without pause, Redis is killed for a few seconds and restarted,
//! and the writer recovers by itself. Submit latency during the outage is
//! measured and bounded.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shadowcat_session::redis_store::{RedisStore, RedisStoreConfig};
use shadowcat_session::{
    BatchingWriter, BreakerState, Session, SessionId, SessionStore, StreamId, WriterConfig,
};
use support::redis::RedisServer;

const SESSIONS: usize = 50;
const OUTAGE: Duration = Duration::from_secs(3);
/// Producer pace: every session gets an event per tick.
const TICK: Duration = Duration::from_millis(1);
/// Longest the producer may run, whatever happens.
const RUN_LIMIT: Duration = Duration::from_secs(60);

fn session(id: &SessionId) -> Session {
    Session::new(id.clone(), "http://127.0.0.1:3001/mcp", "2025-11-25")
}

/// What the producer saw: its last seq and its submit latencies, split by
/// whether Redis was down at the time.
struct Produced {
    last_seq: u64,
    outage: Vec<Duration>,
    healthy: Vec<Duration>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_recovers_by_itself_after_redis_restarts() {
    let mut server = RedisServer::start();
    let cfg = RedisStoreConfig {
        namespace: "writer-fault".to_owned(),
        ..RedisStoreConfig::default()
    };
    let store = Arc::new(
        RedisStore::connect(&server.url(), cfg)
            .await
            .expect("connect"),
    );
    let ids: Vec<SessionId> = (0..SESSIONS)
        .map(|_| SessionId::generate().expect("OS entropy"))
        .collect();
    for id in &ids {
        store.create(&session(id)).await.expect("create");
    }
    let writer = BatchingWriter::start(
        Arc::clone(&store) as Arc<dyn SessionStore>,
        WriterConfig {
            shutdown_deadline: Duration::from_secs(10),
            ..WriterConfig::default()
        },
    );
    let h = writer.handle();

    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_panic = StopOnDrop(Arc::clone(&stop));
    let down = Arc::new(AtomicBool::new(false));
    let producer = {
        let (h, ids, stop, down) = (h.clone(), ids.clone(), stop.clone(), down.clone());
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let mut out = Produced {
                last_seq: 0,
                outage: Vec::new(),
                healthy: Vec::new(),
            };
            while !stop.load(Ordering::SeqCst) && started.elapsed() < RUN_LIMIT {
                out.last_seq += 1;
                let seq = out.last_seq;
                let id_text = format!("0/{seq}");
                let in_outage = down.load(Ordering::SeqCst);
                for id in &ids {
                    let t = Instant::now();
                    h.submit(id, StreamId(0), Some(&id_text), seq);
                    let took = t.elapsed();
                    if in_outage {
                        out.outage.push(took);
                    } else {
                        out.healthy.push(took);
                    }
                }
                std::thread::sleep(TICK);
            }
            out
        })
    };

    // Healthy until the writer has written a few batches.
    wait_until("first writes", || h.stats().written >= 3 * SESSIONS as u64).await;

    down.store(true, Ordering::SeqCst);
    tokio::task::block_in_place(|| server.stop());
    let errors_before = h.stats().write_errors;
    tokio::time::sleep(OUTAGE).await;
    let during = h.stats();
    tokio::task::block_in_place(|| server.restart());
    down.store(false, Ordering::SeqCst);
    // Persistence is off in tests: put the sessions back, as a persistent
    // Redis would have kept them. The writer is not told anything.
    for id in &ids {
        create_retrying(&*store, id).await;
    }
    let written_after_restart = h.stats().written;
    wait_until("writes after the restart", || {
        h.stats().written >= written_after_restart + 2 * SESSIONS as u64
    })
    .await;

    stop.store(true, Ordering::SeqCst);
    let mut produced = producer.await.expect("producer");
    let report = writer.shutdown().await;
    assert!(report.is_complete(), "{report:?}");

    let stats = report.stats;
    assert!(
        during.write_errors > errors_before,
        "the outage was seen: {during:?}"
    );
    assert_ne!(during.breaker, BreakerState::Closed, "breaker opened");
    assert_eq!(stats.breaker, BreakerState::Closed, "and closed again");
    assert_eq!(stats.dropped(), 0, "{stats:?}");
    for id in &ids {
        let point = support::point_of(&*store, id, StreamId(0))
            .await
            .expect("point written after the restart");
        assert_eq!(point.client_seq, produced.last_seq, "{id}");
        assert_eq!(
            point.upstream_event_id.as_deref(),
            Some(format!("0/{}", produced.last_seq).as_str())
        );
    }

    produced.outage.sort_unstable();
    produced.healthy.sort_unstable();
    let p99 = |v: &[Duration]| v[v.len() * 99 / 100];
    let outage_max = *produced.outage.last().expect("submits during the outage");
    eprintln!(
        "submit latency during a {OUTAGE:?} Redis outage: p99 {:?}, max {outage_max:?} \
         over {} submits (healthy: p99 {:?}, max {:?}); writer: {} write errors, \
         breaker at the end of the outage: {:?}",
        p99(&produced.outage),
        produced.outage.len(),
        p99(&produced.healthy),
        produced.healthy.last().expect("healthy submits"),
        stats.write_errors,
        during.breaker,
    );
    // Generous for a loaded 2-core box; a submit that waited on Redis would
    // take seconds (the store's call timeout).
    assert!(outage_max < Duration::from_millis(200), "{outage_max:?}");
}

/// Sets the flag when dropped, so a failing assertion stops the producer.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Creates the session, retrying retryable errors for at most 10 s while
/// the store reconnects.
async fn create_retrying(store: &dyn SessionStore, id: &SessionId) {
    let t0 = Instant::now();
    loop {
        match store.create(&session(id)).await {
            Ok(()) => return,
            Err(e) if e.is_retryable() && t0.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("re-create {id}: {e}"),
        }
    }
}

/// Polls `cond` every 10 ms for at most 30 s (a condition on counters has
/// no signal to await).
async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(30), "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
