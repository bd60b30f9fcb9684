//! The store conformance suite: written once, run against every
//! `SessionStore` (memory, redb, Redis). Each check gets a fresh, empty
//! store from the caller's factory. Needs `mod support;` beside it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shadowcat_session::{
    ExpiredSession, ResumeKey, ResumptionPoint, Session, SessionId, SessionStore, StoreError,
    StreamId, Update, now_millis,
};

use crate::support::point_of;

fn session(upstream: &str) -> Session {
    let mut s = Session::new(SessionId::generate().unwrap(), upstream, "2025-11-25");
    s.upstream_session_id = Some(format!("up-{}", s.id));
    s.resume_key = Some(ResumeKey::generate().unwrap());
    s
}

fn point(id: &str, seq: u64) -> ResumptionPoint {
    ResumptionPoint {
        upstream_event_id: Some(id.to_string()),
        client_seq: seq,
    }
}

fn set(session: &SessionId, stream: u32, point: ResumptionPoint) -> Update {
    Update::Point {
        session: session.clone(),
        stream: StreamId(stream),
        point,
    }
}

/// Runs every check, each against a fresh store from `make`.
pub(crate) async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn SessionStore>>,
{
    create_get_roundtrip(make().await).await;
    create_twice_is_already_exists(make().await).await;
    create_bounded_is_exact_under_concurrency(make().await).await;
    update_replaces_and_unknown_is_not_found(make().await).await;
    delete_removes_everything(make().await).await;
    list_pages_in_id_order(make().await).await;
    points_per_stream(make().await).await;
    batch_applies_in_order_and_skips_unknown(make().await).await;
    batch_end_stream_and_touch(make().await).await;
    expire_idle_removes_only_idle(make().await).await;
    long_and_odd_values_survive(make().await).await;
    bindings_are_kept_and_replaced(make().await).await;
}

/// A session's binding (who it belongs to) survives create, update and
/// the writer's batches, with or without a resume key; a record without
/// one loads as unbound.
async fn bindings_are_kept_and_replaced(store: Arc<dyn SessionStore>) {
    let kind = store.kind();
    let mut s = session("u");
    s.binding = Some("principal https://as.example alice".into());
    store.create(&s).await.unwrap();
    assert_eq!(store.get(&s.id).await.unwrap().unwrap(), s, "{kind}");
    store
        .apply_batch(&[set(&s.id, 1, point("e-1", 1))])
        .await
        .unwrap();
    let got = store.get(&s.id).await.unwrap().unwrap();
    assert_eq!(got.binding, s.binding, "{kind}: a batch keeps the binding");
    let mut rebound = got.clone();
    rebound.binding = Some("credential 0123456789abcdef".into());
    store.update(&rebound).await.unwrap();
    assert_eq!(store.get(&s.id).await.unwrap().unwrap(), rebound, "{kind}");
    let mut keyless = session("u");
    keyless.resume_key = None;
    keyless.binding = Some("credential fedcba9876543210".into());
    store.create(&keyless).await.unwrap();
    assert_eq!(
        store.get(&keyless.id).await.unwrap().unwrap(),
        keyless,
        "{kind}"
    );
    let plain = session("u");
    store.create(&plain).await.unwrap();
    assert_eq!(
        store.get(&plain.id).await.unwrap().unwrap().binding,
        None,
        "{kind}"
    );
}

async fn create_get_roundtrip(store: Arc<dyn SessionStore>) {
    let mut s = session("http://127.0.0.1:3001/mcp");
    s.set_stream(StreamId(0), point("0/17", 17));
    store.create(&s).await.unwrap();
    let got = store
        .get(&s.id)
        .await
        .unwrap()
        .expect("created session is found");
    assert_eq!(got, s, "{}: get returns what create stored", store.kind());
    assert!(
        got.resume_key.is_some(),
        "{}: the resume key is kept",
        store.kind()
    );
    // A session without a key (stored before keys existed) stays keyless,
    // and an update can add one.
    let mut legacy = session("u");
    legacy.resume_key = None;
    store.create(&legacy).await.unwrap();
    let got = store.get(&legacy.id).await.unwrap().unwrap();
    assert_eq!(got.resume_key, None, "{}", store.kind());
    legacy.resume_key = Some(ResumeKey([0xa5; 16]));
    store.update(&legacy).await.unwrap();
    let got = store.get(&legacy.id).await.unwrap().unwrap();
    assert_eq!(got.resume_key, legacy.resume_key, "{}", store.kind());
    let other = SessionId::generate().unwrap();
    assert!(store.get(&other).await.unwrap().is_none());
}

async fn create_twice_is_already_exists(store: Arc<dyn SessionStore>) {
    let s = session("u");
    store.create(&s).await.unwrap();
    let err = store.create(&s).await.unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists(ref id) if *id == s.id),
        "{}: second create: {err:?}",
        store.kind()
    );
    assert!(!err.is_retryable());
    assert_eq!(store.count().await.unwrap(), 1);
}

/// 64 creates at once against a bound of 50: exactly 50 land, the rest
/// are `Full`, and a session that leaves makes room for one more.
async fn create_bounded_is_exact_under_concurrency(store: Arc<dyn SessionStore>) {
    const MAX: u64 = 50;
    const TRIES: usize = 64;
    let tasks: Vec<_> = (0..TRIES)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let s = session("u");
                store.create_bounded(&s, MAX).await.map(|()| s.id)
            })
        })
        .collect();
    let (mut created, mut full) = (Vec::new(), 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(id) => created.push(id),
            Err(StoreError::Full { limit, .. }) => {
                assert_eq!(limit, MAX);
                full += 1;
            }
            Err(e) => panic!("{}: unexpected create error {e:?}", store.kind()),
        }
    }
    assert_eq!(
        (created.len() as u64, full),
        (MAX, TRIES - MAX as usize),
        "{}: the bound is exact",
        store.kind()
    );
    assert_eq!(store.count().await.unwrap(), MAX, "{}", store.kind());
    let err = store.create_bounded(&session("u"), MAX).await.unwrap_err();
    assert!(matches!(err, StoreError::Full { .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("50"), "{err}");
    // An id that exists is AlreadyExists, even at the bound.
    let again = store.get(&created[0]).await.unwrap().unwrap();
    let err = store.create_bounded(&again, MAX).await.unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");
    assert!(store.delete(&created[0]).await.unwrap());
    store.create_bounded(&session("u"), MAX).await.unwrap();
    assert_eq!(store.count().await.unwrap(), MAX, "{}", store.kind());
    // Unbounded `create` ignores it.
    store.create(&session("u")).await.unwrap();
    assert_eq!(store.count().await.unwrap(), MAX + 1, "{}", store.kind());
}

async fn update_replaces_and_unknown_is_not_found(store: Arc<dyn SessionStore>) {
    let mut s = session("u");
    s.set_stream(StreamId(1), point("a", 1));
    s.set_stream(StreamId(2), point("b", 2));
    store.create(&s).await.unwrap();
    s.protocol_version = "2025-06-18".into();
    s.last_activity += 5;
    s.streams.retain(|p| p.stream != StreamId(1));
    store.update(&s).await.unwrap();
    assert_eq!(
        store.get(&s.id).await.unwrap().unwrap(),
        s,
        "{}",
        store.kind()
    );
    assert_eq!(
        point_of(&*store, &s.id, StreamId(1)).await,
        None,
        "{}: update drops streams the new record lacks",
        store.kind()
    );

    let ghost = session("u");
    let err = store.update(&ghost).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert!(store.get(&ghost.id).await.unwrap().is_none());
}

async fn delete_removes_everything(store: Arc<dyn SessionStore>) {
    let mut s = session("u");
    s.set_stream(StreamId(0), point("x", 3));
    store.create(&s).await.unwrap();
    store
        .apply_batch(&[set(&s.id, 4, point("y", 9))])
        .await
        .unwrap();
    assert_eq!(
        point_of(&*store, &s.id, StreamId(4)).await,
        Some(point("y", 9))
    );
    assert!(store.delete(&s.id).await.unwrap());
    assert!(
        !store.delete(&s.id).await.unwrap(),
        "second delete finds nothing"
    );
    assert!(store.get(&s.id).await.unwrap().is_none());
    assert_eq!(point_of(&*store, &s.id, StreamId(4)).await, None);
    assert_eq!(store.count().await.unwrap(), 0, "{}: no leak", store.kind());
    // A recreated session with the same id starts clean.
    let fresh = Session::new(s.id.clone(), "u", "2025-11-25");
    store.create(&fresh).await.unwrap();
    assert_eq!(store.get(&s.id).await.unwrap().unwrap().streams.len(), 0);
}

async fn list_pages_in_id_order(store: Arc<dyn SessionStore>) {
    let mut ids = Vec::new();
    for _ in 0..23 {
        let s = session("u");
        ids.push(s.id.clone());
        store.create(&s).await.unwrap();
    }
    ids.sort();
    assert_eq!(store.count().await.unwrap(), 23);
    let mut seen = Vec::new();
    let mut after: Option<SessionId> = None;
    for _ in 0..10 {
        let page = store.list(after.as_ref(), 5).await.unwrap();
        assert!(page.sessions.len() <= 5);
        seen.extend(page.sessions.iter().map(|s| s.id.clone()));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(
        seen,
        ids,
        "{}: pages cover every session once, in order",
        store.kind()
    );
    let empty = store.list(Some(ids.last().unwrap()), 5).await.unwrap();
    assert!(empty.sessions.is_empty() && empty.next.is_none());
}

async fn points_per_stream(store: Arc<dyn SessionStore>) {
    let s = session("u");
    store.create(&s).await.unwrap();
    assert_eq!(point_of(&*store, &s.id, StreamId(0)).await, None);
    // One batch per write: a later batch overwrites an earlier one.
    store
        .apply_batch(&[set(&s.id, 0, point("g-1", 1))])
        .await
        .unwrap();
    store
        .apply_batch(&[set(&s.id, 7, point("p-1", 1))])
        .await
        .unwrap();
    store
        .apply_batch(&[set(&s.id, 0, point("g-2", 2))])
        .await
        .unwrap();
    assert_eq!(
        point_of(&*store, &s.id, StreamId(0)).await,
        Some(point("g-2", 2))
    );
    assert_eq!(
        point_of(&*store, &s.id, StreamId(7)).await,
        Some(point("p-1", 1)),
        "{}: streams never cross",
        store.kind()
    );
    let no_id = ResumptionPoint {
        upstream_event_id: None,
        client_seq: 4,
    };
    store
        .apply_batch(&[set(&s.id, 8, no_id.clone())])
        .await
        .unwrap();
    assert_eq!(point_of(&*store, &s.id, StreamId(8)).await, Some(no_id));
    let got = store.get(&s.id).await.unwrap().unwrap();
    let order: Vec<u32> = got.streams.iter().map(|p| p.stream.0).collect();
    assert_eq!(
        order,
        vec![0, 7, 8],
        "{}: streams ordered by id",
        store.kind()
    );

    // A point for an unknown session is skipped and never creates it.
    let ghost = SessionId::generate().unwrap();
    store
        .apply_batch(&[set(&ghost, 0, point("z", 1))])
        .await
        .unwrap();
    assert!(
        store.get(&ghost).await.unwrap().is_none(),
        "no resurrection"
    );
}

async fn batch_applies_in_order_and_skips_unknown(store: Arc<dyn SessionStore>) {
    let a = session("u");
    let b = session("u");
    store.create(&a).await.unwrap();
    store.create(&b).await.unwrap();
    let ghost = SessionId::generate().unwrap();
    let batch = vec![
        Update::Point {
            session: a.id.clone(),
            stream: StreamId(0),
            point: point("a-1", 1),
        },
        Update::Point {
            session: ghost.clone(),
            stream: StreamId(0),
            point: point("g", 1),
        },
        Update::Point {
            session: b.id.clone(),
            stream: StreamId(3),
            point: point("b-9", 9),
        },
        Update::Point {
            session: a.id.clone(),
            stream: StreamId(0),
            point: point("a-2", 2),
        },
    ];
    store.apply_batch(&batch).await.unwrap();
    assert_eq!(
        point_of(&*store, &a.id, StreamId(0)).await,
        Some(point("a-2", 2)),
        "{}: later update in a batch wins",
        store.kind()
    );
    assert_eq!(
        point_of(&*store, &b.id, StreamId(3)).await,
        Some(point("b-9", 9))
    );
    assert!(
        store.get(&ghost).await.unwrap().is_none(),
        "{}: a batch never resurrects an unknown session",
        store.kind()
    );
    assert_eq!(store.count().await.unwrap(), 2);
    store.apply_batch(&[]).await.unwrap();
}

async fn batch_end_stream_and_touch(store: Arc<dyn SessionStore>) {
    let mut s = session("u");
    s.set_stream(StreamId(1), point("one", 1));
    s.set_stream(StreamId(2), point("two", 2));
    store.create(&s).await.unwrap();
    let later = s.last_activity + 60_000;
    store
        .apply_batch(&[
            Update::EndStream {
                session: s.id.clone(),
                stream: StreamId(1),
            },
            Update::Touch {
                session: s.id.clone(),
                at: later,
            },
        ])
        .await
        .unwrap();
    let got = store.get(&s.id).await.unwrap().unwrap();
    assert_eq!(
        got.stream(StreamId(1)),
        None,
        "{}: ended stream gone",
        store.kind()
    );
    assert_eq!(got.stream(StreamId(2)), Some(&point("two", 2)));
    assert_eq!(got.last_activity, later, "{}: touch lands", store.kind());
    // An older touch never moves activity back.
    store
        .apply_batch(&[Update::Touch {
            session: s.id.clone(),
            at: s.last_activity,
        }])
        .await
        .unwrap();
    assert_eq!(
        store.get(&s.id).await.unwrap().unwrap().last_activity,
        later
    );
}

async fn expire_idle_removes_only_idle(store: Arc<dyn SessionStore>) {
    let now = now_millis();
    let mut idle = session("u");
    idle.last_activity = now - 10 * 60_000;
    let mut busy = session("u");
    busy.last_activity = now - 1_000;
    store.create(&idle).await.unwrap();
    store.create(&busy).await.unwrap();
    let gone = store
        .expire_idle(now, Duration::from_secs(5 * 60))
        .await
        .unwrap();
    assert_eq!(
        gone,
        vec![ExpiredSession::of(&idle)],
        "{}: exactly the idle one expires, reported with what ends it upstream",
        store.kind()
    );
    assert!(
        gone[0].upstream_session_id.is_some(),
        "{}: the upstream session id is reported",
        store.kind()
    );
    // Reported once: a second sweep finds nothing.
    assert_eq!(
        store
            .expire_idle(now, Duration::from_secs(5 * 60))
            .await
            .unwrap(),
        vec![],
        "{}",
        store.kind()
    );
    // A session without an upstream id is reported without one.
    let mut bare = session("u");
    bare.upstream_session_id = None;
    bare.last_activity = now - 10 * 60_000;
    store.create(&bare).await.unwrap();
    let gone = store
        .expire_idle(now, Duration::from_secs(5 * 60))
        .await
        .unwrap();
    assert_eq!(gone, vec![ExpiredSession::of(&bare)], "{}", store.kind());
    assert!(store.get(&idle.id).await.unwrap().is_none());
    assert!(store.get(&busy.id).await.unwrap().is_some());
    assert_eq!(store.count().await.unwrap(), 1);
}

async fn long_and_odd_values_survive(store: Arc<dyn SessionStore>) {
    let mut s = Session::new(
        SessionId::parse("Odd:id|with~punct!#").unwrap(),
        "http://[::1]:9/mcp?x=|y",
        "2026-07-28",
    );
    let long_id = "e".repeat(1000);
    s.set_stream(StreamId(u32::MAX), point(&long_id, u64::MAX));
    s.set_stream(StreamId(5), point("id with spaces|and:colons\u{e9}", 0));
    store.create(&s).await.unwrap();
    assert_eq!(
        store.get(&s.id).await.unwrap().unwrap(),
        s,
        "{}",
        store.kind()
    );
}
