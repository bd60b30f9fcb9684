//! Test doubles for the `BatchingWriter` tests: `FlakyStore`, a real
//! `MemoryStore` behind a switchboard that fails, stalls or rejects
//! `apply_batch` on demand and records every write it lets through.
//! Needs `mod support;` beside `mod writer_support;`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use shadowcat_session::{
    ExpiredSession, MemoryStore, Page, Session, SessionId, SessionStore, StoreError, StreamId,
    UnixMillis, Update,
};
use tokio::sync::watch;

/// How a failing call fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// `StoreError::Unavailable` (retryable).
    Unavailable,
    /// `StoreError::Refused` (not retryable).
    Refused,
}

/// A `MemoryStore` whose `apply_batch` can be made to fail or stall.
#[derive(Debug)]
pub(crate) struct FlakyStore {
    inner: MemoryStore,
    /// Fail this many more calls.
    fail_next: AtomicU32,
    /// Fail every call while set.
    down: AtomicBool,
    failure: Mutex<Failure>,
    /// Batches holding an update for this session fail as `Corrupt`.
    poison: Mutex<Option<SessionId>>,
    /// `apply_batch` waits while this is false.
    open: watch::Sender<bool>,
    /// Calls made (counted on entry).
    calls: watch::Sender<u64>,
    /// Calls that returned (success or failure).
    returned: watch::Sender<u64>,
    /// Updates in successful calls.
    updates_written: AtomicU64,
    /// Successful calls.
    ok_calls: AtomicU64,
    /// Every point written, in order: (session, stream, client_seq).
    log: Mutex<Vec<(SessionId, StreamId, u64)>>,
}

impl FlakyStore {
    pub(crate) fn new() -> Arc<FlakyStore> {
        Arc::new(FlakyStore {
            inner: MemoryStore::new(),
            fail_next: AtomicU32::new(0),
            down: AtomicBool::new(false),
            failure: Mutex::new(Failure::Unavailable),
            poison: Mutex::new(None),
            open: watch::channel(true).0,
            calls: watch::channel(0).0,
            returned: watch::channel(0).0,
            updates_written: AtomicU64::new(0),
            ok_calls: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn as_dyn(self: &Arc<Self>) -> Arc<dyn SessionStore> {
        Arc::clone(self) as Arc<dyn SessionStore>
    }

    /// Fails the next `n` calls with `failure`.
    pub(crate) fn fail_next(&self, n: u32, failure: Failure) {
        *self.failure.lock() = failure;
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// Fails every call (retryably) until `set_down(false)`.
    pub(crate) fn set_down(&self, down: bool) {
        *self.failure.lock() = Failure::Unavailable;
        self.down.store(down, Ordering::SeqCst);
    }

    pub(crate) fn set_poison(&self, session: Option<SessionId>) {
        *self.poison.lock() = session;
    }

    /// Makes `apply_batch` wait until `release()`.
    pub(crate) fn stall(&self) {
        self.open.send_replace(false);
    }

    pub(crate) fn release(&self) {
        self.open.send_replace(true);
    }

    pub(crate) fn calls(&self) -> u64 {
        *self.calls.borrow()
    }

    pub(crate) fn ok_calls(&self) -> u64 {
        self.ok_calls.load(Ordering::SeqCst)
    }

    pub(crate) fn updates_written(&self) -> u64 {
        self.updates_written.load(Ordering::SeqCst)
    }

    pub(crate) fn log(&self) -> Vec<(SessionId, StreamId, u64)> {
        self.log.lock().clone()
    }

    /// Waits (bounded by `limit`) until `n` calls have been made.
    pub(crate) async fn wait_calls(&self, n: u64, limit: Duration) {
        let mut rx = self.calls.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} store calls within {limit:?}; saw {}", self.calls()))
            .expect("sender lives in the store");
    }

    /// Waits (bounded by `limit`) until `n` calls have returned.
    pub(crate) async fn wait_returned(&self, n: u64, limit: Duration) {
        let mut rx = self.returned.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{n} store calls returned within {limit:?}; saw {}",
                    *self.returned.borrow()
                )
            })
            .expect("sender lives in the store");
    }

    /// Asserts that, per (session, stream), written `client_seq`s never go
    /// down: no older id ever overwrote a newer one.
    pub(crate) fn assert_monotonic(&self) {
        let mut last: HashMap<(SessionId, StreamId), u64> = HashMap::new();
        for (session, stream, seq) in self.log() {
            let prev = last.insert((session.clone(), stream), seq);
            if let Some(prev) = prev {
                assert!(
                    seq >= prev,
                    "{session} {stream:?}: wrote seq {seq} after {prev}"
                );
            }
        }
    }

    async fn try_apply(&self, updates: &[Update]) -> Result<(), StoreError> {
        let mut open = self.open.subscribe();
        open.wait_for(|o| *o)
            .await
            .expect("sender lives in the store");
        let failure = *self.failure.lock();
        let fail = self.down.load(Ordering::SeqCst)
            || self
                .fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if fail {
            return Err(match failure {
                Failure::Unavailable => StoreError::Unavailable {
                    store: "flaky",
                    message: "switched off by the test".into(),
                },
                Failure::Refused => StoreError::Refused {
                    store: "flaky",
                    message: "refused by the test".into(),
                },
            });
        }
        if let Some(p) = self.poison.lock().as_ref()
            && updates.iter().any(|u| u.session() == p)
        {
            return Err(StoreError::Corrupt {
                store: "flaky",
                message: format!("poison record for {p}"),
            });
        }
        self.inner.apply_batch(updates).await?;
        let mut log = self.log.lock();
        for u in updates {
            if let Update::Point {
                session,
                stream,
                point,
            } = u
            {
                log.push((session.clone(), *stream, point.client_seq));
            }
        }
        self.updates_written
            .fetch_add(updates.len() as u64, Ordering::SeqCst);
        self.ok_calls.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[async_trait]
impl SessionStore for FlakyStore {
    fn kind(&self) -> &'static str {
        "flaky"
    }

    async fn create_bounded(&self, session: &Session, max_sessions: u64) -> Result<(), StoreError> {
        self.inner.create_bounded(session, max_sessions).await
    }

    async fn get(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        self.inner.get(id).await
    }

    async fn update(&self, session: &Session) -> Result<(), StoreError> {
        self.inner.update(session).await
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
        self.calls.send_modify(|c| *c += 1);
        let result = self.try_apply(updates).await;
        self.returned.send_modify(|c| *c += 1);
        result
    }

    async fn expire_idle(
        &self,
        now: UnixMillis,
        max_idle: Duration,
    ) -> Result<Vec<ExpiredSession>, StoreError> {
        self.inner.expire_idle(now, max_idle).await
    }
}

/// Creates `n` sessions in `store` and returns their ids.
pub(crate) async fn sessions(store: &dyn SessionStore, n: usize) -> Vec<SessionId> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let s = Session::new(
            SessionId::generate().expect("OS entropy"),
            "http://127.0.0.1:3001/mcp",
            "2025-11-25",
        );
        store.create(&s).await.expect("create session");
        ids.push(s.id);
    }
    ids
}

/// The stored point of `stream`, as (upstream id, client_seq).
pub(crate) async fn stored(
    store: &dyn SessionStore,
    session: &SessionId,
    stream: StreamId,
) -> Option<(Option<String>, u64)> {
    crate::support::point_of(store, session, stream)
        .await
        .map(|p| (p.upstream_event_id, p.client_seq))
}
