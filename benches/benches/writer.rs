//! `BatchingWriter` costs: `submit` for a key already pending (the steady
//! state) and for a new key (first event of a session), and — with
//! `--bench` only — submit→durable latency p50/p99 against a `MemoryStore`
//! and a `RedbStore` file at 100 sessions × 100 events/s, default config,
//! real time.
//!
//! `cargo bench -p benches --bench writer -- --warm-up-time 1 --measurement-time 3`

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use criterion::{Criterion, criterion_group};
use parking_lot::Mutex;
use shadowcat_session::{
    BatchingWriter, ExpiredSession, MemoryStore, Page, RedbStore, Session, SessionId, SessionStore,
    StoreError, StreamId, UnixMillis, Update, WriterConfig,
};

/// Event ids cycled through: realistic upstream ids of two lengths.
fn ids() -> Vec<String> {
    (0..64u64)
        .map(|i| {
            if i % 2 == 0 {
                format!("0/{}", 4711 + i)
            } else {
                format!("0b5e4c3a-9f1d-4e2b-8a7c-{:012x}", i * 7919)
            }
        })
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

fn submit(c: &mut Criterion) {
    let rt = runtime();
    let _guard = rt.enter();
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    // The runtime is never driven here, so the writer never flushes:
    // every submit lands in the pending map.
    let cfg = WriterConfig {
        max_pending_sessions: 50_000_000,
        max_batch: usize::MAX,
        ..WriterConfig::default()
    };
    let writer = BatchingWriter::start(store, cfg);
    let h = writer.handle();
    let texts = ids();
    let mut group = c.benchmark_group("writer_submit");

    let session = SessionId::generate().expect("OS entropy");
    h.submit(&session, StreamId(0), Some(&texts[1]), 0);
    let mut seq = 0u64;
    group.bench_function("pending_key", |b| {
        b.iter(|| {
            seq += 1;
            let text = &texts[(seq % 64) as usize];
            h.submit(black_box(&session), StreamId(0), Some(text), seq);
        })
    });

    group.bench_function("new_key", |b| {
        b.iter_custom(|iters| {
            let fresh: Vec<SessionId> = (0..iters)
                .map(|_| SessionId::generate().expect("OS entropy"))
                .collect();
            let start = Instant::now();
            for (i, id) in fresh.iter().enumerate() {
                h.submit(black_box(id), StreamId(0), Some(&texts[i % 64]), i as u64);
            }
            let took = start.elapsed();
            for id in &fresh {
                h.forget(id);
            }
            took
        })
    });
    group.finish();
    drop(writer);
}

criterion_group!(benches, submit);

fn main() {
    if std::env::args().any(|a| a == "--bench") {
        durable_latency(Arc::new(MemoryStore::new()), "memory store");
        let path = std::env::temp_dir().join(format!(
            "shadowcat-writer-bench-{}.redb",
            std::process::id()
        ));
        let redb = RedbStore::open(&path).expect("open a redb file in the temp dir");
        durable_latency(Arc::new(redb), "redb file store (durable commits)");
        let _ = std::fs::remove_file(&path);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

/// Sessions, event rate and run length for the latency measurement.
const SESSIONS: usize = 100;
const EVENTS_PER_SECOND: u64 = 100;
const RUN: Duration = Duration::from_secs(5);

/// Submits at 100 sessions × 100 events/s for [`RUN`] and reports how long
/// each event waited until a write holding it (or a newer id of its
/// stream) had returned from the store.
fn durable_latency(inner: Arc<dyn SessionStore>, label: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .expect("runtime");
    let store = Arc::new(RecordingStore::new(inner));
    let ids: Vec<SessionId> = rt.block_on(async {
        let mut ids = Vec::with_capacity(SESSIONS);
        for _ in 0..SESSIONS {
            let s = Session::new(
                SessionId::generate().expect("OS entropy"),
                "http://127.0.0.1:3001/mcp",
                "2025-11-25",
            );
            store.create(&s).await.expect("create");
            ids.push(s.id);
        }
        ids
    });
    let writer = {
        let _guard = rt.enter();
        BatchingWriter::start(
            Arc::clone(&store) as Arc<dyn SessionStore>,
            WriterConfig::default(),
        )
    };
    let h = writer.handle();

    // One producer thread paced by the clock: each session gets an event
    // every 10 ms, the sessions spread evenly over those 10 ms.
    let total = (SESSIONS as u64) * EVENTS_PER_SECOND * RUN.as_secs();
    let spacing = Duration::from_secs(1) / (SESSIONS as u32 * EVENTS_PER_SECOND as u32);
    let mut submitted: Vec<(usize, u64, Instant)> = Vec::with_capacity(total as usize);
    let start = Instant::now();
    let mut k = 0u64;
    while k < total {
        let due = start + spacing * k as u32;
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
            continue;
        }
        let session = (k % SESSIONS as u64) as usize;
        let seq = k / SESSIONS as u64;
        h.submit(&ids[session], StreamId(0), Some("0/4711"), seq);
        submitted.push((session, seq, Instant::now()));
        k += 1;
    }
    let report = rt.block_on(writer.shutdown());
    assert!(report.is_complete(), "{report:?}");

    let index: HashMap<&SessionId, usize> = ids.iter().enumerate().map(|(i, id)| (id, i)).collect();
    let mut writes: Vec<Vec<(u64, Instant)>> = vec![Vec::new(); SESSIONS];
    for r in store.recorded() {
        writes[index[&r.session]].push((r.seq, r.at));
    }
    let mut lat: Vec<Duration> = submitted
        .iter()
        .map(|&(session, seq, at)| {
            let w = &writes[session];
            let i = w.partition_point(|&(s, _)| s < seq);
            w.get(i)
                .map(|&(_, done)| done - at)
                .expect("every event written")
        })
        .collect();
    lat.sort_unstable();
    let pct = |p: usize| lat[(lat.len() * p / 100).min(lat.len() - 1)];
    eprintln!(
        "writer submit->durable ({SESSIONS} sessions x {EVENTS_PER_SECOND} ev/s, {RUN:?}, \
         {label}, default config): p50 {:?}, p99 {:?}, max {:?}, {} events, {} round trips",
        pct(50),
        pct(99),
        lat[lat.len() - 1],
        lat.len(),
        report.stats.batches,
    );
}

/// One point write that returned from the store.
#[derive(Debug, Clone)]
struct Recorded {
    session: SessionId,
    seq: u64,
    at: Instant,
}

/// A store that records when each point write returned, wrapped around a
/// real store.
#[derive(Debug)]
struct RecordingStore {
    inner: Arc<dyn SessionStore>,
    // A sync mutex, taken once per batch after the write returned.
    log: Mutex<Vec<Recorded>>,
}

impl RecordingStore {
    fn new(inner: Arc<dyn SessionStore>) -> Self {
        RecordingStore {
            inner,
            log: Mutex::new(Vec::new()),
        }
    }

    fn recorded(&self) -> Vec<Recorded> {
        self.log.lock().clone()
    }
}

#[async_trait]
impl SessionStore for RecordingStore {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn create_bounded(&self, s: &Session, max_sessions: u64) -> Result<(), StoreError> {
        self.inner.create_bounded(s, max_sessions).await
    }

    async fn get(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        self.inner.get(id).await
    }

    async fn update(&self, s: &Session) -> Result<(), StoreError> {
        self.inner.update(s).await
    }

    async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        self.inner.delete(id).await
    }

    async fn list(&self, after: Option<&SessionId>, limit: usize) -> Result<Page, StoreError> {
        self.inner.list(after, limit).await
    }

    async fn count(&self) -> Result<u64, StoreError> {
        self.inner.count().await
    }

    async fn apply_batch(&self, updates: &[Update]) -> Result<(), StoreError> {
        self.inner.apply_batch(updates).await?;
        let at = Instant::now();
        let mut log = self.log.lock();
        for u in updates {
            if let Update::Point { session, point, .. } = u {
                log.push(Recorded {
                    session: session.clone(),
                    seq: point.client_seq,
                    at,
                });
            }
        }
        Ok(())
    }

    async fn expire_idle(
        &self,
        now: UnixMillis,
        max_idle: Duration,
    ) -> Result<Vec<ExpiredSession>, StoreError> {
        self.inner.expire_idle(now, max_idle).await
    }
}
