//! `RedbStore` on real files: the conformance suite, reopen, bad files, and
//! the cost of one batch commit.

mod conformance;
mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use shadowcat_session::{
    RedbStore, ResumptionPoint, Session, SessionId, SessionStore, StoreError, StreamId, Update,
};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "shadowcat-redb-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn point(id: &str, seq: u64) -> ResumptionPoint {
    ResumptionPoint {
        upstream_event_id: Some(id.to_string()),
        client_seq: seq,
    }
}

fn open(path: &Path) -> RedbStore {
    RedbStore::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

#[tokio::test]
async fn redb_store_conforms() {
    let dir = Arc::new(TempDir::new("conf"));
    let n = Arc::new(AtomicUsize::new(0));
    conformance::run_all(|| {
        let path = dir.file(&format!("s{}.redb", n.fetch_add(1, Ordering::Relaxed)));
        async move { Arc::new(open(&path)) as Arc<dyn SessionStore> }
    })
    .await;
    assert_eq!(
        n.load(Ordering::Relaxed),
        12,
        "every check ran on its own file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_store_conforms_on_multi_thread_runtime() {
    let dir = Arc::new(TempDir::new("conf-mt"));
    let n = Arc::new(AtomicUsize::new(0));
    conformance::run_all(|| {
        let path = dir.file(&format!("s{}.redb", n.fetch_add(1, Ordering::Relaxed)));
        async move { Arc::new(open(&path)) as Arc<dyn SessionStore> }
    })
    .await;
}

#[tokio::test]
async fn everything_survives_a_reopen() {
    let dir = TempDir::new("reopen");
    let path = dir.file("sessions.redb");
    let mut expected = Vec::new();
    {
        let store = open(&path);
        for i in 0..20u32 {
            let mut s = Session::new(
                SessionId::generate().unwrap(),
                "http://127.0.0.1:3001/mcp",
                "2025-11-25",
            );
            if i.is_multiple_of(2) {
                s.upstream_session_id = Some(format!("up-{i}"));
            }
            s.set_stream(StreamId(0), point(&format!("init-{i}"), 1));
            store.create(&s).await.unwrap();
            expected.push(s);
        }
        let mut batch = Vec::new();
        for (i, s) in expected.iter_mut().enumerate() {
            let i = i as u64;
            let p = point(&format!("{i}/9"), 9 + i);
            batch.push(Update::Point {
                session: s.id.clone(),
                stream: StreamId(3),
                point: p.clone(),
            });
            s.set_stream(StreamId(3), p);
            let at = s.last_activity + 1_000 + i;
            batch.push(Update::Touch {
                session: s.id.clone(),
                at,
            });
            s.last_activity = at;
            if i.is_multiple_of(3) {
                batch.push(Update::EndStream {
                    session: s.id.clone(),
                    stream: StreamId(0),
                });
                s.streams.retain(|p| p.stream != StreamId(0));
            }
        }
        store.apply_batch(&batch).await.unwrap();
        let gone = expected.pop().unwrap();
        assert!(store.delete(&gone.id).await.unwrap());
    }
    expected.sort_by(|a, b| a.id.cmp(&b.id));

    let store = open(&path);
    assert_eq!(store.count().await.unwrap(), expected.len() as u64);
    for s in &expected {
        assert_eq!(
            store.get(&s.id).await.unwrap().as_ref(),
            Some(s),
            "after reopen"
        );
    }
    let page = store.list(None, 100).await.unwrap();
    assert_eq!(page.sessions, expected, "list after reopen, in id order");
    assert!(page.next.is_none());
}

#[tokio::test]
async fn a_second_open_of_a_live_file_is_unavailable() {
    let dir = TempDir::new("locked");
    let path = dir.file("sessions.redb");
    let first = open(&path);
    let err = RedbStore::open(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::Unavailable { .. }) && err.is_retryable(),
        "{err:?}"
    );
    drop(first);
    open(&path);
}

#[test]
fn a_garbage_file_is_corrupt_not_a_panic() {
    let dir = TempDir::new("garbage");
    let path = dir.file("sessions.redb");
    let mut junk = b"SQLite format 3\0".to_vec();
    let mut rnd = [0u8; 8192];
    getrandom::fill(&mut rnd).unwrap();
    junk.extend_from_slice(&rnd);
    std::fs::write(&path, &junk).unwrap();
    let err = RedbStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert!(
        err.to_string().contains("sessions.redb"),
        "the error names the file: {err}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        junk,
        "a file that is not ours is left alone"
    );
}

#[tokio::test]
async fn a_damaged_store_file_is_an_error_not_a_panic() {
    let dir = TempDir::new("damaged");
    let path = dir.file("sessions.redb");
    {
        let store = open(&path);
        for i in 0..200 {
            let mut s = Session::new(SessionId::generate().unwrap(), "u", "2025-11-25");
            s.set_stream(StreamId(0), point(&"x".repeat(100), i));
            store.create(&s).await.unwrap();
        }
    }
    // Overwrite everything past the header page with a pattern.
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(
        bytes.len() > 16 * 1024,
        "file has data pages: {}",
        bytes.len()
    );
    for b in &mut bytes[4096..] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = RedbStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(!err.is_retryable());
}

#[test]
fn a_missing_directory_is_refused() {
    let dir = TempDir::new("nodir");
    let path = dir.file("not-there").join("sessions.redb");
    let err = RedbStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Refused { .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert!(!path.exists(), "the store does not create directories");
}

/// One batch of 100 point updates (10 sessions x 10 streams), committed
/// durably, as the writer does it. Prints the commit times; asserts that
/// every batch landed. Run with `--release --nocapture` to measure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_commit_cost() {
    const BATCHES: u64 = 200;
    let dir = TempDir::new("cost");
    let store = open(&dir.file("sessions.redb"));
    let mut ids = Vec::new();
    for _ in 0..10 {
        let s = Session::new(SessionId::generate().unwrap(), "u", "2025-11-25");
        store.create(&s).await.unwrap();
        ids.push(s.id);
    }
    let mut times = Vec::with_capacity(BATCHES as usize);
    let deadline = Instant::now() + Duration::from_secs(120);
    for n in 1..=BATCHES {
        let batch: Vec<Update> = ids
            .iter()
            .flat_map(|id| {
                (0..10).map(move |stream| Update::Point {
                    session: id.clone(),
                    stream: StreamId(stream),
                    point: point(&format!("{n}-{stream}"), n),
                })
            })
            .collect();
        assert_eq!(batch.len(), 100);
        let t = Instant::now();
        store.apply_batch(&batch).await.unwrap();
        times.push(t.elapsed());
        assert!(Instant::now() < deadline, "200 commits took over 2 minutes");
    }
    for id in &ids {
        let s = store.get(id).await.unwrap().unwrap();
        assert_eq!(s.streams.len(), 10);
        for sp in &s.streams {
            assert_eq!(
                sp.point,
                point(&format!("{BATCHES}-{}", sp.stream.0), BATCHES)
            );
        }
    }
    times.sort();
    let pct = |p: usize| times[(times.len() * p / 100).min(times.len() - 1)];
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    eprintln!(
        "redb apply_batch, 100 updates, durable commit: mean {mean:?} p50 {:?} p99 {:?} max {:?}",
        pct(50),
        pct(99),
        times[times.len() - 1]
    );
}
