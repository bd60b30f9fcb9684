//! `RedisStore` against a real `redis-server` on loopback: the conformance
//! suite, the key layout (namespace, TTL, index pruning), one round trip per
//! batch, error classes, and recovery after a Redis restart.

mod conformance;
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use shadowcat_session::redis_store::{RedisStore, RedisStoreConfig};
use shadowcat_session::{
    ResumptionPoint, Session, SessionId, SessionStore, StoreError, StreamId, Update, now_millis,
};
use support::point_of;
use support::redis::RedisServer;

/// Upper bound for "fails fast" checks: the call timeout plus slack.
const FAIL_FAST: Duration = Duration::from_secs(3);
/// Upper bound for waiting on a condition (expiry, reconnect).
const WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

fn config(namespace: &str) -> RedisStoreConfig {
    RedisStoreConfig {
        namespace: namespace.to_owned(),
        ..RedisStoreConfig::default()
    }
}

async fn raw(server: &RedisServer) -> MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn all_keys(conn: &mut MultiplexedConnection) -> Vec<String> {
    redis::cmd("KEYS").arg("*").query_async(conn).await.unwrap()
}

fn session() -> Session {
    Session::new(
        SessionId::generate().unwrap(),
        "http://127.0.0.1:3001/mcp",
        "2025-11-25",
    )
}

fn point(id: &str, seq: u64) -> ResumptionPoint {
    ResumptionPoint {
        upstream_event_id: Some(id.to_owned()),
        client_seq: seq,
    }
}

/// `cmdstat_<name>` call counts from `INFO commandstats`.
async fn command_calls(conn: &mut MultiplexedConnection) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

#[tokio::test]
async fn redis_store_conforms_and_stays_in_its_namespaces() {
    let server = RedisServer::start();
    let next = AtomicUsize::new(0);
    let url = server.url();
    conformance::run_all(|| {
        let ns = format!("conf{}", next.fetch_add(1, Ordering::Relaxed));
        let url = url.clone();
        async move {
            Arc::new(RedisStore::connect(&url, config(&ns)).await.unwrap()) as Arc<dyn SessionStore>
        }
    })
    .await;
    let issued = next.load(Ordering::Relaxed);
    assert!(issued >= 10, "one namespace per check, got {issued}");
    let keys = all_keys(&mut raw(&server).await).await;
    assert!(!keys.is_empty(), "the checks left sessions behind");
    for key in &keys {
        let (ns, _) = key.split_once(':').expect("namespaced key");
        let n: usize = ns
            .strip_prefix("conf")
            .and_then(|n| n.parse().ok())
            .expect(key);
        assert!(n < issued, "{key} is outside every namespace issued");
    }
}

#[tokio::test]
async fn writes_stay_in_the_namespace_and_carry_the_ttl() {
    let server = RedisServer::start();
    let mut conn = raw(&server).await;
    let cfg = RedisStoreConfig {
        idle_ttl: Duration::from_secs(600),
        ..config("tenant-a")
    };
    let store = RedisStore::connect(&server.url(), cfg).await.unwrap();
    let mut a = session();
    let b = session();
    store.create(&a).await.unwrap();
    store.create(&b).await.unwrap();
    a.protocol_version = "2025-06-18".into();
    store.update(&a).await.unwrap();
    store
        .apply_batch(&[Update::Point {
            session: a.id.clone(),
            stream: StreamId(1),
            point: point("x", 1),
        }])
        .await
        .unwrap();
    store
        .apply_batch(&[Update::Touch {
            session: b.id.clone(),
            at: now_millis(),
        }])
        .await
        .unwrap();
    assert_eq!(
        point_of(&store, &a.id, StreamId(1)).await,
        Some(point("x", 1))
    );
    assert_eq!(store.count().await.unwrap(), 2);
    assert_eq!(
        store
            .expire_idle(now_millis(), Duration::from_secs(3600))
            .await
            .unwrap(),
        vec![]
    );

    let mut keys = all_keys(&mut conn).await;
    keys.sort();
    let mut want = vec![
        "tenant-a:index".to_owned(),
        store.session_key(&a.id),
        store.session_key(&b.id),
    ];
    want.sort();
    assert_eq!(keys, want, "only the namespace's keys exist");
    for key in [store.session_key(&a.id), store.session_key(&b.id)] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 590_000 && ttl <= 600_000, "{key}: ttl {ttl} ms");
    }
}

#[tokio::test]
async fn every_write_refreshes_the_ttl() {
    let server = RedisServer::start();
    let mut conn = raw(&server).await;
    let store = RedisStore::connect(&server.url(), config("ttl"))
        .await
        .unwrap();
    let s = session();
    store.create(&s).await.unwrap();
    let key = store.session_key(&s.id);
    let ttl = |conn: &mut MultiplexedConnection| {
        let key = key.clone();
        let mut conn = conn.clone();
        async move {
            let ms: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            ms
        }
    };
    let default_ms = RedisStoreConfig::default().idle_ttl.as_millis() as i64;
    let shorten = |conn: &mut MultiplexedConnection| {
        let key = key.clone();
        let mut conn = conn.clone();
        async move {
            let set: i64 = redis::cmd("PEXPIRE")
                .arg(&key)
                .arg(60_000)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert_eq!(set, 1);
        }
    };

    shorten(&mut conn).await;
    store
        .apply_batch(&[Update::Touch {
            session: s.id.clone(),
            at: now_millis(),
        }])
        .await
        .unwrap();
    assert!(
        ttl(&mut conn).await > default_ms - 10_000,
        "touch refreshes"
    );

    shorten(&mut conn).await;
    store
        .apply_batch(&[Update::Point {
            session: s.id.clone(),
            stream: StreamId(0),
            point: point("e", 1),
        }])
        .await
        .unwrap();
    assert!(
        ttl(&mut conn).await > default_ms - 10_000,
        "point write refreshes"
    );

    shorten(&mut conn).await;
    store.get(&s.id).await.unwrap().unwrap();
    assert!(ttl(&mut conn).await <= 60_000, "a read is not activity");
}

#[tokio::test]
async fn expired_sessions_leave_no_index_entries() {
    let server = RedisServer::start();
    let mut conn = raw(&server).await;
    let short = RedisStore::connect(
        &server.url(),
        RedisStoreConfig {
            idle_ttl: Duration::from_millis(200),
            ..config("shared")
        },
    )
    .await
    .unwrap();
    let long = RedisStore::connect(&server.url(), config("shared"))
        .await
        .unwrap();
    let mut kept = Vec::new();
    for _ in 0..2 {
        let s = session();
        long.create(&s).await.unwrap();
        kept.push(s.id);
    }
    let mut doomed = Vec::new();
    for _ in 0..3 {
        let s = session();
        short.create(&s).await.unwrap();
        doomed.push(short.session_key(&s.id));
    }
    // Redis expires the short-lived keys by itself; EXISTS also expires lazily.
    let deadline = Instant::now() + WAIT;
    loop {
        let live: u64 = redis::cmd("EXISTS")
            .arg(&doomed)
            .query_async(&mut conn)
            .await
            .unwrap();
        if live == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "keys did not expire");
        tokio::time::sleep(POLL).await;
    }
    let zcard = |conn: &mut MultiplexedConnection| {
        let mut conn = conn.clone();
        async move {
            let n: u64 = redis::cmd("ZCARD")
                .arg("shared:index")
                .query_async(&mut conn)
                .await
                .unwrap();
            n
        }
    };
    assert_eq!(
        zcard(&mut conn).await,
        5,
        "index still names the expired ones"
    );

    let page = long.list(None, 10).await.unwrap();
    kept.sort();
    let listed: Vec<SessionId> = page.sessions.iter().map(|s| s.id.clone()).collect();
    assert_eq!(listed, kept, "list skips expired sessions");
    assert_eq!(page.next, None);
    assert_eq!(zcard(&mut conn).await, 2, "list pruned what it met");

    // A page boundary with expired ids in between still pages correctly.
    let page = long.list(None, 1).await.unwrap();
    assert_eq!(page.sessions.len(), 1);
    assert_eq!(page.next.as_ref(), Some(&kept[0]));
    let page = long.list(page.next.as_ref(), 1).await.unwrap();
    assert_eq!(page.sessions[0].id, kept[1]);
    assert_eq!(page.next, None);

    for id in &doomed {
        let s = id.strip_prefix("shared:s:").unwrap();
        let n: u64 = redis::cmd("ZADD")
            .arg("shared:index")
            .arg(0)
            .arg(s)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, 1, "stale entry put back for the count check");
    }
    assert_eq!(long.count().await.unwrap(), 2, "count prunes, then counts");
    assert_eq!(zcard(&mut conn).await, 2);
}

#[tokio::test]
async fn batch_for_100_sessions_is_one_round_trip_and_one_hset_each() {
    let server = RedisServer::start();
    let mut conn = raw(&server).await;
    let store = RedisStore::connect(&server.url(), config("batch"))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..100 {
        let s = session();
        store.create(&s).await.unwrap();
        ids.push(s.id);
    }
    // 100 events per session on two streams, plus a touch: 10,100 updates.
    let at = now_millis() + 1_000;
    let mut batch = Vec::new();
    for seq in 1..=100u64 {
        for id in &ids {
            batch.push(Update::Point {
                session: id.clone(),
                stream: StreamId((seq % 2) as u32),
                point: point(&format!("ev-{seq}"), seq),
            });
        }
    }
    for id in &ids {
        batch.push(Update::Touch {
            session: id.clone(),
            at,
        });
    }
    // The unknown session is skipped inside the same script call.
    batch.push(Update::Point {
        session: SessionId::generate().unwrap(),
        stream: StreamId(0),
        point: point("ghost", 1),
    });
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    let before = store.round_trips();
    store.apply_batch(&batch).await.unwrap();
    let trips = store.round_trips() - before;
    let calls = command_calls(&mut conn).await;
    assert_eq!(trips, 1, "one round trip for {} updates", batch.len());
    assert_eq!(calls.get("evalsha"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("eval"), None, "{calls:?}");
    assert_eq!(
        calls.get("hset"),
        Some(&100),
        "one HSET per session: {calls:?}"
    );
    println_figure(batch.len(), trips, calls["hset"]);

    for id in ids.iter().take(3) {
        let got = store.get(id).await.unwrap().unwrap();
        assert_eq!(got.stream(StreamId(0)), Some(&point("ev-100", 100)));
        assert_eq!(got.stream(StreamId(1)), Some(&point("ev-99", 99)));
        assert_eq!(got.last_activity, at);
    }
    assert_eq!(store.count().await.unwrap(), 100, "no resurrection");
}

/// Reports the measured figure (visible with `--nocapture`).
fn println_figure(updates: usize, trips: u64, hsets: u64) {
    eprintln!(
        "redis apply_batch: {updates} updates -> {trips} round trip(s), {hsets} keys written \
         ({:.4} round trips and {:.4} keys per update)",
        trips as f64 / updates as f64,
        hsets as f64 / updates as f64
    );
}

#[tokio::test]
async fn bad_data_is_corrupt_and_a_bad_batch_writes_nothing() {
    let server = RedisServer::start();
    let mut conn = raw(&server).await;
    let store = RedisStore::connect(&server.url(), config("bad"))
        .await
        .unwrap();
    let good = session();
    store.create(&good).await.unwrap();
    let wrong = SessionId::generate().unwrap();
    let _: () = redis::cmd("SET")
        .arg(store.session_key(&wrong))
        .arg("not a hash")
        .query_async(&mut conn)
        .await
        .unwrap();

    let err = store.get(&wrong).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(!err.is_retryable());

    let err = store
        .apply_batch(&[
            Update::Point {
                session: good.id.clone(),
                stream: StreamId(0),
                point: point("lost", 1),
            },
            Update::Point {
                session: wrong.clone(),
                stream: StreamId(0),
                point: point("x", 1),
            },
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert_eq!(
        point_of(&store, &good.id, StreamId(0)).await,
        None,
        "all of a batch lands or none of it"
    );

    let bad_point = store.session_key(&good.id);
    let _: () = redis::cmd("HSET")
        .arg(&bad_point)
        .arg("p:3")
        .arg("nope")
        .query_async(&mut conn)
        .await
        .unwrap();
    let err = store.get(&good.id).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(
        err.to_string().contains("p:3"),
        "names the bad field: {err}"
    );
}

#[tokio::test]
async fn connect_fails_fast_when_redis_is_down() {
    let mut server = RedisServer::start();
    server.stop();
    let started = Instant::now();
    let err = RedisStore::connect(&server.url(), config("down"))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(
        started.elapsed() < FAIL_FAST,
        "took {:?}",
        started.elapsed()
    );
    let err = RedisStore::connect(&server.url(), config(""))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Refused { .. }), "{err:?}");
}

#[tokio::test]
async fn the_same_store_recovers_after_a_redis_restart() {
    let mut server = RedisServer::start();
    let cfg = RedisStoreConfig {
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_millis(500),
        call_timeout: Duration::from_secs(1),
        ..config("restart")
    };
    let store = RedisStore::connect(&server.url(), cfg).await.unwrap();
    let before = session();
    store.create(&before).await.unwrap();

    server.stop();
    let touch = |s: &Session| {
        [Update::Touch {
            session: s.id.clone(),
            at: now_millis(),
        }]
    };
    for round in 0..3 {
        let started = Instant::now();
        let err = store.get(&before.id).await.unwrap_err();
        assert!(err.is_retryable(), "round {round}: {err:?}");
        assert!(matches!(err, StoreError::Unavailable { .. }));
        let err = store.apply_batch(&touch(&before)).await.unwrap_err();
        assert!(err.is_retryable(), "round {round}: {err:?}");
        assert!(
            started.elapsed() < FAIL_FAST,
            "round {round}: took {:?}",
            started.elapsed()
        );
    }

    server.restart();
    // Persistence is off, so the restarted server is empty. The manager
    // reconnects on use; poll until a call succeeds.
    let deadline = Instant::now() + WAIT;
    loop {
        match store.count().await {
            Ok(n) => {
                assert_eq!(n, 0, "restarted server is empty");
                break;
            }
            Err(e) => assert!(e.is_retryable(), "{e:?}"),
        }
        assert!(Instant::now() < deadline, "store did not recover");
        tokio::time::sleep(POLL).await;
    }
    let after = session();
    store.create(&after).await.unwrap();
    // The server lost its script cache: the first batch falls back to EVAL
    // (two round trips), the next one is back to one.
    let trips = store.round_trips();
    store.apply_batch(&touch(&after)).await.unwrap();
    assert_eq!(store.round_trips() - trips, 2);
    let trips = store.round_trips();
    store.apply_batch(&touch(&after)).await.unwrap();
    assert_eq!(store.round_trips() - trips, 1);
    store
        .apply_batch(&[Update::Point {
            session: after.id.clone(),
            stream: StreamId(2),
            point: point("back", 2),
        }])
        .await
        .unwrap();
    assert_eq!(
        point_of(&store, &after.id, StreamId(2)).await,
        Some(point("back", 2))
    );
    assert!(store.get(&before.id).await.unwrap().is_none());
}

/// Two instances sharing a namespace: 64 creates at once, spread over
/// both, against a bound of 50: exactly 50 land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_bound_holds_across_instances() {
    let server = RedisServer::start();
    let a = Arc::new(
        RedisStore::connect(&server.url(), config("bound"))
            .await
            .unwrap(),
    );
    let b = Arc::new(
        RedisStore::connect(&server.url(), config("bound"))
            .await
            .unwrap(),
    );
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = Arc::clone(if i % 2 == 0 { &a } else { &b });
            tokio::spawn(async move { store.create_bounded(&session(), 50).await })
        })
        .collect();
    let (mut created, mut full) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => created += 1,
            Err(StoreError::Full { limit: 50, .. }) => full += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!((created, full), (50, 14));
    assert_eq!(a.count().await.unwrap(), 50);
    assert_eq!(b.count().await.unwrap(), 50);
}

/// Keys Redis dropped by TTL hold no seat: at the bound, a create prunes
/// their index entries and lands.
#[tokio::test]
async fn sessions_dropped_by_ttl_do_not_count_against_the_bound() {
    let server = RedisServer::start();
    let mut conn = raw(&server).await;
    let short = RedisStore::connect(
        &server.url(),
        RedisStoreConfig {
            idle_ttl: Duration::from_millis(100),
            ..config("seats")
        },
    )
    .await
    .unwrap();
    let long = RedisStore::connect(&server.url(), config("seats"))
        .await
        .unwrap();
    let mut doomed = Vec::new();
    for _ in 0..3 {
        let s = session();
        short.create(&s).await.unwrap();
        doomed.push(short.session_key(&s.id));
    }
    for _ in 0..2 {
        long.create_bounded(&session(), 5).await.unwrap();
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let live: u64 = redis::cmd("EXISTS")
            .arg(&doomed)
            .query_async(&mut conn)
            .await
            .unwrap();
        if live == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "keys did not expire");
        tokio::time::sleep(POLL).await;
    }
    let indexed: u64 = redis::cmd("ZCARD")
        .arg("seats:index")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(indexed, 5, "the index still names the dropped ones");
    long.create_bounded(&session(), 5).await.unwrap();
    assert_eq!(long.count().await.unwrap(), 3);
}

/// Three instances sweeping one namespace at once, in small chunks: each
/// expired session is reported by exactly one of them, with its upstream
/// session id; busy sessions stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_expired_session_is_reported_once_across_instances() {
    let server = RedisServer::start();
    let mut stores = Vec::new();
    for _ in 0..3 {
        let cfg = RedisStoreConfig {
            sweep_chunk: 8,
            ..config("sweep")
        };
        stores.push(Arc::new(
            RedisStore::connect(&server.url(), cfg).await.unwrap(),
        ));
    }
    let now = now_millis();
    let mut idle = HashMap::new();
    for i in 0..200 {
        let mut s = session();
        s.last_activity = now - 10 * 60_000;
        s.upstream_session_id = (i % 10 != 0).then(|| format!("up-{i}"));
        stores[i % 3].create(&s).await.unwrap();
        idle.insert(s.id.clone(), s.upstream_session_id.clone());
    }
    for i in 0..10 {
        stores[i % 3].create(&session()).await.unwrap();
    }
    let sweeps: Vec<_> = (0..6)
        .map(|i| {
            let store = Arc::clone(&stores[i % 3]);
            tokio::spawn(async move {
                store
                    .expire_idle(now, Duration::from_secs(60))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut reported = HashMap::new();
    for t in sweeps {
        for e in t.await.unwrap() {
            assert_eq!(e.upstream, "http://127.0.0.1:3001/mcp");
            assert_eq!(e.protocol_version, "2025-11-25");
            let previous = reported.insert(e.id.clone(), e.upstream_session_id);
            assert!(previous.is_none(), "{} reported twice", e.id);
        }
    }
    assert_eq!(
        reported, idle,
        "every idle session, once, with its upstream id"
    );
    assert_eq!(stores[0].count().await.unwrap(), 10);
}
