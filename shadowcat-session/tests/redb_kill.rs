//! The kill -9 test: a child process commits batches to a `RedbStore` and
//! reports each one after `apply_batch` returns; the parent SIGKILLs it at a
//! random moment, reopens the file and checks that every reported batch is
//! there, whole, and that nothing half-written is visible.
#![cfg(unix)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shadowcat_session::{
    RedbStore, ResumptionPoint, Session, SessionId, SessionStore, StoreError, StreamId, Update,
};

/// Set to the store path, it makes `child_writer` act as the writer.
const CHILD_ENV: &str = "SHADOWCAT_REDB_CHILD";
/// The first batch number the child writes.
const START_ENV: &str = "SHADOWCAT_REDB_CHILD_START";
const SESSIONS: u32 = 10;
const STREAMS: u32 = 10;
const ROUNDS: usize = 5;
/// Touch times are this plus the batch number.
const ACTIVITY_BASE: u64 = 1_700_000_000_000;

fn session_id(i: u32) -> SessionId {
    SessionId::parse(&format!("kill-{i:02}")).unwrap()
}

fn upstream_id(n: u64, session: u32, stream: u32) -> String {
    format!("{n}:{session}:{stream}")
}

/// Batch `n`: every stream of every session at `n`, and a touch per session.
fn batch(n: u64) -> Vec<Update> {
    let mut out = Vec::with_capacity((SESSIONS * (STREAMS + 1)) as usize);
    for i in 0..SESSIONS {
        for s in 0..STREAMS {
            out.push(Update::Point {
                session: session_id(i),
                stream: StreamId(s),
                point: ResumptionPoint {
                    upstream_event_id: Some(upstream_id(n, i, s)),
                    client_seq: n,
                },
            });
        }
        out.push(Update::Touch {
            session: session_id(i),
            at: ACTIVITY_BASE + n,
        });
    }
    out
}

fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b) % n
}

/// The writer. Does nothing unless the parent test started this binary
/// with [`CHILD_ENV`] set.
#[tokio::test]
async fn child_writer() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let start: u64 = std::env::var(START_ENV).unwrap().parse().unwrap();
    let store = RedbStore::open(&path).unwrap();
    for i in 0..SESSIONS {
        let mut s = Session::new(session_id(i), "u", "2025-11-25");
        s.last_activity = ACTIVITY_BASE;
        match store.create(&s).await {
            Ok(()) | Err(StoreError::AlreadyExists(_)) => {}
            Err(e) => panic!("create: {e}"),
        }
    }
    // Bounded: the parent kills us long before either limit.
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in start..start + 100_000 {
        if Instant::now() > deadline {
            break;
        }
        store.apply_batch(&batch(n)).await.unwrap();
        let mut out = std::io::stdout().lock();
        writeln!(out, "committed {n}").unwrap();
        out.flush().unwrap();
    }
}

/// What a killed child reported.
struct Round {
    /// The highest batch number the child reported committed.
    reported: u64,
}

fn run_child(path: &PathBuf, start: u64, wait_for: u64) -> Round {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_writer", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, path)
        .env(START_ENV, start.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line.strip_prefix("committed ")
                && tx.send(n.parse::<u64>().unwrap()).is_err()
            {
                break;
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut reported = None;
    let mut seen = 0;
    while seen < wait_for {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(n) => {
                assert!(reported.is_none_or(|r| n == r + 1), "batches in order");
                reported = Some(n);
                seen += 1;
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let err = err_reader.join().unwrap();
                panic!("child stopped reporting after {seen} batches ({e}); stderr:\n{err}");
            }
        }
    }
    // Kill at a random moment within a few commits: usually mid-write.
    std::thread::sleep(Duration::from_micros(random_below(5_000)));
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "the child died by SIGKILL");
    reader.join().unwrap();
    // Lines the child wrote before it died were for commits that returned.
    for n in rx.try_iter() {
        assert!(reported.is_none_or(|r| n == r + 1), "batches in order");
        reported = Some(n);
    }
    drop(err_reader.join().unwrap());
    Round {
        reported: reported.unwrap(),
    }
}

/// Reopens the file and checks it holds exactly one whole batch, at least
/// the last reported one. Returns that batch's number.
async fn verify(path: &PathBuf, reported: u64) -> u64 {
    let store = RedbStore::open(path).unwrap();
    assert_eq!(store.count().await.unwrap(), u64::from(SESSIONS));
    let page = store.list(None, 100).await.unwrap();
    assert_eq!(
        page.sessions.len(),
        SESSIONS as usize,
        "every record decodes"
    );
    let stored = page.sessions[0].streams[0].point.client_seq;
    assert!(
        stored == reported || stored == reported + 1,
        "reported {reported} committed, file has {stored}"
    );
    for (i, s) in page.sessions.iter().enumerate() {
        let i = i as u32;
        assert_eq!(s.id, session_id(i));
        assert_eq!(s.last_activity, ACTIVITY_BASE + stored, "{}", s.id);
        let streams: Vec<u32> = s.streams.iter().map(|p| p.stream.0).collect();
        assert_eq!(streams, (0..STREAMS).collect::<Vec<_>>(), "{}", s.id);
        for p in &s.streams {
            assert_eq!(
                p.point,
                ResumptionPoint {
                    upstream_event_id: Some(upstream_id(stored, i, p.stream.0)),
                    client_seq: stored,
                },
                "{}: one whole batch, never a mix",
                s.id
            );
        }
        assert_eq!(store.get(&s.id).await.unwrap().as_ref(), Some(s));
    }
    stored
}

#[test]
fn committed_batches_survive_kill_9() {
    let dir = std::env::temp_dir().join(format!(
        "shadowcat-redb-kill-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sessions.redb");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let mut start = 1;
    let mut unreported = 0;
    for round in 0..ROUNDS {
        let wait_for = 3 + random_below(30);
        let Round { reported } = run_child(&path, start, wait_for);
        assert!(reported >= start + wait_for - 1, "round {round}");
        let stored = rt.block_on(verify(&path, reported));
        if stored > reported {
            unreported += 1;
        }
        start = stored + 1;
    }
    eprintln!(
        "{ROUNDS} kill -9 rounds, {} batches, {unreported} committed but unreported, {:?}",
        start - 1,
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "bounded in time"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
