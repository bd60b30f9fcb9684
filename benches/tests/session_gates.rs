//! Deterministic gates for the persistence path (run by `cargo xtask ci`):
//! bytes per idle session, store round trips and keys written per event at
//! 100 sessions × 100 events/s, and tasks alive independent of event count.
//! Paused tokio time makes every count exact.

use std::sync::Arc;
use std::time::Duration;

use shadowcat_session::{
    BatchingWriter, MemoryStore, ResumptionPoint, Session, SessionId, SessionStore, StreamId,
    WriterConfig,
};
use tokio::time::Instant;

/// Goal: tracking memory per session (store model + writer entry).
const MAX_BYTES_PER_SESSION: usize = 1024;
const SESSIONS: usize = 100;
const EVENTS_PER_SECOND: u64 = 100;
const SECONDS: u64 = 10;

/// A session as the proxy keeps it: a generated id, an upstream URL, the
/// upstream's own session id, a protocol version and one stream point.
fn realistic_session() -> Session {
    let mut s = Session::new(
        SessionId::generate().expect("OS entropy"),
        "http://127.0.0.1:3001/mcp",
        "2025-11-25",
    );
    s.upstream_session_id = Some(String::from("7f9c2ba4-e88f-4c3e-9f0a-3a1d6b5e2c71"));
    s.set_stream(
        StreamId(0),
        ResumptionPoint {
            upstream_event_id: Some(String::from("0/00000000000004711")),
            client_seq: 4711,
        },
    );
    s
}

fn event_id(seq: u64) -> String {
    format!("0/{seq:017}")
}

#[tokio::test(start_paused = true)]
async fn bytes_per_session_within_goal() {
    let session_bytes = realistic_session().memory_bytes();

    // The writer's share while the session is busy: its pending entry.
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let writer = BatchingWriter::start(store, WriterConfig::default());
    let h = writer.handle();
    let ids: Vec<SessionId> = (0..SESSIONS)
        .map(|_| SessionId::generate().expect("OS entropy"))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        h.submit(id, StreamId(0), Some(&event_id(i as u64)), i as u64);
    }
    let busy = h.pending_memory_bytes() / SESSIONS;
    // Idle: two flushes with no activity free the entries.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let idle = h.pending_memory_bytes() / SESSIONS;
    eprintln!(
        "bytes per session: model {session_bytes}, writer entry busy {busy}, idle {idle}; \
         total busy {}",
        session_bytes + busy
    );
    assert!(
        session_bytes + busy <= MAX_BYTES_PER_SESSION,
        "{session_bytes} + {busy} bytes per session"
    );
    assert!(idle < busy, "idle sessions keep no writer entry");
    let report = writer.shutdown().await;
    assert!(report.is_complete());
}

#[tokio::test(start_paused = true)]
async fn store_writes_per_event_and_tasks_within_goal() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let mut ids = Vec::with_capacity(SESSIONS);
    for _ in 0..SESSIONS {
        let s = realistic_session();
        store.create(&s).await.expect("create");
        ids.push(s.id);
    }
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let writer = BatchingWriter::start(Arc::clone(&store), WriterConfig::default());
    let h = writer.handle();
    let with_writer = metrics.num_alive_tasks();
    assert_eq!(with_writer, before + 1, "one writer task");

    // Every session sends an event every 10 ms for 10 virtual seconds.
    let start = Instant::now();
    let step = Duration::from_millis(1000 / EVENTS_PER_SECOND);
    let steps = EVENTS_PER_SECOND * SECONDS;
    let mut most_tasks = with_writer;
    for k in 0..steps {
        tokio::time::sleep_until(start + step * k as u32).await;
        for id in &ids {
            h.submit(id, StreamId(0), Some(&event_id(k)), k);
        }
        most_tasks = most_tasks.max(metrics.num_alive_tasks());
    }
    let events = steps * SESSIONS as u64;
    let steady = h.stats();
    let report = writer.shutdown().await;
    assert!(report.is_complete(), "{report:?}");
    let total = report.stats;

    let trips = |s: u64| s as f64 / events as f64;
    eprintln!(
        "{SESSIONS} sessions x {EVENTS_PER_SECOND} ev/s x {SECONDS} s = {events} events: \
         round trips/event {:.5} (steady {:.5}), keys written/event {:.4} (steady {:.4}), \
         tasks alive {most_tasks} (before writer {before})",
        trips(total.batches),
        trips(steady.batches),
        trips(total.written),
        trips(steady.written),
    );
    // Goals, as integers: trips/event <= 0.002 and keys/event <= 0.1,
    // shutdown flush included.
    assert!(
        total.batches * 500 <= events,
        "{} round trips",
        total.batches
    );
    assert!(
        total.written * 10 <= events,
        "{} keys written",
        total.written
    );
    assert_eq!(total.submitted, events);
    assert_eq!(total.dropped(), 0);
    assert_eq!(most_tasks, with_writer, "tasks alive grew with events");
    for id in &ids {
        let session = store.get(id).await.expect("read").expect("session");
        let point = session.stream(StreamId(0)).expect("point written");
        assert_eq!(point.client_seq, steps - 1, "newest id persisted");
    }
}
