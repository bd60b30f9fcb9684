//! `ReplayLog` against a real `redis-server` on loopback: order, one round
//! trip per append, retention, fencing across a lease expiry, renew after
//! takeover, tail from another connection, the upstream resume id.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use shadowcat_session::{
    ReplayLog, ReplayLogConfig, ReplayLogError, ReplayLogs, Retention, SessionId, StreamId,
};
use support::redis::RedisServer;

const LEASE: Duration = Duration::from_secs(30);
const KEEP_ALL: Retention = Retention {
    max_len: 10_000,
    max_age: None,
};

async fn logs(server: &RedisServer) -> ReplayLogs {
    ReplayLogs::connect(&server.url(), ReplayLogConfig::default())
        .await
        .expect("connect")
}

fn session() -> SessionId {
    SessionId::generate().expect("random id")
}

fn events(seqs: std::ops::RangeInclusive<u64>) -> Vec<(u64, Bytes)> {
    seqs.map(|s| (s, Bytes::from(format!("data: event {s}\n\n"))))
        .collect()
}

async fn owned(log: &ReplayLog, owner: &str) -> shadowcat_session::Lease {
    log.acquire(owner, LEASE)
        .await
        .expect("acquire")
        .expect("lease is free")
}

#[tokio::test]
async fn append_then_read_in_order() {
    let server = RedisServer::start();
    let logs = logs(&server).await;
    let log = logs.log(&session(), StreamId(1));
    let lease = owned(&log, "a").await;
    log.append(&lease, &events(1..=3), None, KEEP_ALL)
        .await
        .unwrap();
    log.append(&lease, &events(4..=10), None, KEEP_ALL)
        .await
        .unwrap();

    assert_eq!(log.read_after(None, 100).await.unwrap(), events(1..=10));
    assert_eq!(log.read_after(Some(4), 3).await.unwrap(), events(5..=7));
    assert!(log.read_after(Some(10), 100).await.unwrap().is_empty());

    // A seq at or below the last one is refused whole, nothing written.
    let err = log
        .append(&lease, &events(10..=11), None, KEEP_ALL)
        .await
        .unwrap_err();
    assert!(matches!(err, ReplayLogError::Invalid { .. }), "{err}");
    assert_eq!(log.read_after(Some(9), 100).await.unwrap(), events(10..=10));
    // Seq 0 and unordered batches are refused before any round trip.
    let before = log.round_trips();
    let err = log
        .append(&lease, &[(0, Bytes::new())], None, KEEP_ALL)
        .await
        .unwrap_err();
    assert!(matches!(err, ReplayLogError::Invalid { .. }), "{err}");
    assert_eq!(log.round_trips(), before);
}

#[tokio::test]
async fn one_round_trip_per_append_whatever_the_batch_size() {
    let server = RedisServer::start();
    let logs = logs(&server).await;
    let log = logs.log(&session(), StreamId(0));
    let lease = owned(&log, "a").await;
    let mut next = 1;
    for size in [1u64, 10, 100, 1000] {
        let before = logs.round_trips();
        log.append(&lease, &events(next..=next + size - 1), Some("u"), KEEP_ALL)
            .await
            .unwrap();
        assert_eq!(logs.round_trips() - before, 1, "batch of {size}");
        next += size;
    }
    assert_eq!(log.read_after(None, 10_000).await.unwrap().len(), 1111);
}

#[tokio::test]
async fn acquire_append_takes_the_lease_and_logs_in_one_round_trip() {
    let server = RedisServer::start();
    let logs = logs(&server).await;
    let log = logs.log(&session(), StreamId(5));

    let before = logs.round_trips();
    let (lease, _) = log
        .acquire_append("a", LEASE, &events(1..=2), Some("u2"), false, KEEP_ALL)
        .await
        .unwrap()
        .expect("the lease is free");
    assert_eq!(logs.round_trips() - before, 1);
    assert_eq!(lease.owner(), "a");
    // The lease it returns appends on.
    log.append(&lease, &events(3..=3), None, KEEP_ALL)
        .await
        .unwrap();

    // Another instance neither takes the lease nor writes.
    let held = log
        .acquire_append("b", LEASE, &events(4..=4), None, false, KEEP_ALL)
        .await
        .unwrap();
    assert!(held.is_none());
    assert!(log.acquire("b", LEASE).await.unwrap().is_none());
    assert_eq!(log.read_after(None, 100).await.unwrap(), events(1..=3));

    // Once released, seqs behind the log are refused and the lease stays
    // free (nothing is taken for a batch that is not written).
    log.release(&lease).await.unwrap();
    let err = log
        .acquire_append("b", LEASE, &events(3..=3), None, false, KEEP_ALL)
        .await
        .unwrap_err();
    assert!(matches!(err, ReplayLogError::Invalid { .. }), "{err}");
    let taken = owned(&log, "c").await;
    assert!(taken.token() > lease.token());
}

#[tokio::test]
async fn retention_by_length() {
    let server = RedisServer::start();
    let logs = logs(&server).await;
    let log = logs.log(&session(), StreamId(2));
    let lease = owned(&log, "a").await;
    let keep5 = Retention {
        max_len: 5,
        max_age: None,
    };
    log.append(&lease, &events(1..=8), None, keep5)
        .await
        .unwrap();
    assert_eq!(log.read_after(None, 100).await.unwrap(), events(4..=8));
    log.append(&lease, &events(9..=10), None, keep5)
        .await
        .unwrap();
    assert_eq!(log.read_after(None, 100).await.unwrap(), events(6..=10));
}

#[tokio::test]
async fn retention_by_age() {
    let server = RedisServer::start();
    let logs = logs(&server).await;
    let log = logs.log(&session(), StreamId(3));
    let lease = owned(&log, "a").await;
    let max_age = Duration::from_millis(200);
    let by_age = Retention {
        max_len: 1000,
        max_age: Some(max_age),
    };
    let written = Instant::now();
    log.append(&lease, &events(1..=3), None, by_age)
        .await
        .unwrap();
    log.append(&lease, &events(4..=5), None, by_age)
        .await
        .unwrap();
    // Nothing has expired yet: the second append keeps everything.
    if written.elapsed() < max_age {
        assert_eq!(log.read_after(None, 100).await.unwrap(), events(1..=5));
    }
    // Wait until both batches are surely older than max_age (by the
    // clock of this host, which is also Redis's).
    tokio::time::sleep_until((written + max_age * 2).into()).await;
    log.append(&lease, &events(6..=7), None, by_age)
        .await
        .unwrap();
    assert_eq!(log.read_after(None, 100).await.unwrap(), events(6..=7));
}

#[tokio::test]
async fn fencing_across_a_lease_expiry() {
    let server = RedisServer::start();
    let logs_a = logs(&server).await;
    let logs_b = logs(&server).await;
    let id = session();
    let a = logs_a.log(&id, StreamId(1));
    let b = logs_b.log(&id, StreamId(1));

    let short = Duration::from_millis(100);
    let lease_a = a.acquire("a", short).await.unwrap().expect("free");
    a.append(&lease_a, &events(1..=2), Some("up-2"), KEEP_ALL)
        .await
        .unwrap();
    assert!(b.acquire("b", LEASE).await.unwrap().is_none(), "held by a");

    // A's lease expires (A does not notice); B takes over.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lease_b = loop {
        if let Some(l) = b.acquire("b", LEASE).await.unwrap() {
            break l;
        }
        assert!(Instant::now() < deadline, "a's lease never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(lease_b.token() > lease_a.token());

    let err = a
        .append(&lease_a, &events(3..=4), Some("up-a"), KEEP_ALL)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReplayLogError::Fenced { token } if token == lease_a.token()),
        "{err}"
    );
    assert_eq!(b.read_after(None, 100).await.unwrap(), events(1..=2));
    assert_eq!(b.last_upstream_id().await.unwrap().as_deref(), Some("up-2"));

    b.append(&lease_b, &events(3..=4), Some("up-4"), KEEP_ALL)
        .await
        .unwrap();
    assert_eq!(a.read_after(None, 100).await.unwrap(), events(1..=4));

    // Renew and release of the stale lease fail and leave B's alone.
    assert!(!a.renew(&lease_a, LEASE).await.unwrap());
    assert!(!a.release(&lease_a).await.unwrap());
    assert!(b.renew(&lease_b, LEASE).await.unwrap());

    // After B releases, a new owner gets a still larger token.
    assert!(b.release(&lease_b).await.unwrap());
    let lease_c = a.acquire("c", LEASE).await.unwrap().expect("released");
    assert!(lease_c.token() > lease_b.token());
}

#[tokio::test]
async fn renew_extends_a_held_lease() {
    let server = RedisServer::start();
    let logs = logs(&server).await;
    let log = logs.log(&session(), StreamId(1));
    let lease = log
        .acquire("a", Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
    assert!(log.renew(&lease, LEASE).await.unwrap());
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Still ours: the renewal outlived the original 300 ms.
    assert!(log.acquire("b", LEASE).await.unwrap().is_none());
    assert!(log.renew(&lease, LEASE).await.unwrap());
}

#[tokio::test]
async fn tail_sees_an_append_from_another_connection_and_times_out_empty() {
    let server = RedisServer::start();
    let reader_logs = logs(&server).await;
    let writer_logs = logs(&server).await;
    let id = session();
    let reader = reader_logs.log(&id, StreamId(5));
    let writer = writer_logs.log(&id, StreamId(5));
    let lease = owned(&writer, "w").await;
    writer
        .append(&lease, &events(1..=1), None, KEEP_ALL)
        .await
        .unwrap();

    let tail = tokio::spawn(async move {
        reader
            .tail(Some(1), Duration::from_secs(10), 100)
            .await
            .map(|got| (got, reader))
    });
    // Append once the reader is blocked (visible in CLIENT LIST as XREAD).
    let mut raw = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut raw)
            .await
            .unwrap();
        if clients.contains("cmd=xread") {
            break;
        }
        assert!(Instant::now() < deadline, "reader never blocked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    writer
        .append(&lease, &events(2..=3), None, KEEP_ALL)
        .await
        .unwrap();
    let (got, reader) = tail.await.unwrap().unwrap();
    assert_eq!(got, events(2..=3));
    assert!(started.elapsed() < Duration::from_secs(5));

    // Nothing new: empty after the block time, not before.
    let block = Duration::from_millis(200);
    let started = Instant::now();
    assert!(reader.tail(Some(3), block, 100).await.unwrap().is_empty());
    assert!(started.elapsed() >= block, "{:?}", started.elapsed());
}

#[tokio::test]
async fn last_upstream_id_follows_batches_that_carry_one() {
    let server = RedisServer::start();
    let logs = logs(&server).await;
    let log = logs.log(&session(), StreamId(1));
    assert_eq!(log.last_upstream_id().await.unwrap(), None);
    let lease = owned(&log, "a").await;
    log.append(&lease, &events(1..=2), Some("evt-7"), KEEP_ALL)
        .await
        .unwrap();
    assert_eq!(
        log.last_upstream_id().await.unwrap().as_deref(),
        Some("evt-7")
    );
    log.append(&lease, &events(3..=3), None, KEEP_ALL)
        .await
        .unwrap();
    assert_eq!(
        log.last_upstream_id().await.unwrap().as_deref(),
        Some("evt-7")
    );
    log.append(&lease, &events(4..=4), Some("evt-9"), KEEP_ALL)
        .await
        .unwrap();
    assert_eq!(
        log.last_upstream_id().await.unwrap().as_deref(),
        Some("evt-9")
    );
    // A batch with no events still records its resume id.
    log.append(&lease, &[], Some("evt-10"), KEEP_ALL)
        .await
        .unwrap();
    assert_eq!(
        log.last_upstream_id().await.unwrap().as_deref(),
        Some("evt-10")
    );
    assert_eq!(log.read_after(None, 100).await.unwrap(), events(1..=4));
}

#[tokio::test]
async fn works_again_after_a_redis_restart() {
    let mut server = RedisServer::start();
    let logs = logs(&server).await;
    let log = logs.log(&session(), StreamId(1));
    server.restart();
    // The manager reconnects; the first call after the return may fail.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lease = loop {
        match log.acquire("a", LEASE).await {
            Ok(l) => break l.expect("empty server"),
            Err(e) => {
                assert!(e.is_transient(), "{e}");
                assert!(Instant::now() < deadline, "no reconnect: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // The script cache was empty after the restart; the scripts run again.
    log.append(&lease, &events(1..=2), None, KEEP_ALL)
        .await
        .unwrap();
    assert_eq!(log.read_after(None, 10).await.unwrap(), events(1..=2));
}
