//! The idle sweeper removes idle sessions on its own schedule and keeps
//! busy ones.

use std::sync::Arc;
use std::time::Duration;

use shadowcat_session::{
    ExpiredSession, ExpiryHook, IdleSweeper, MemoryStore, Session, SessionId, SessionStore,
    SweeperConfig, now_millis,
};

#[tokio::test]
async fn sweeper_expires_idle_sessions_and_keeps_busy_ones() {
    let store = Arc::new(MemoryStore::new());
    let mut idle = Session::new(SessionId::generate().unwrap(), "u", "2025-11-25");
    idle.last_activity = now_millis() - 120_000;
    let busy = Session::new(SessionId::generate().unwrap(), "u", "2025-11-25");
    store.create(&idle).await.unwrap();
    store.create(&busy).await.unwrap();

    let sweeper = IdleSweeper::start(
        store.clone(),
        SweeperConfig {
            max_idle: Duration::from_secs(60),
            interval: Duration::from_millis(20),
        },
    );
    // Poll the store (the condition itself), bounded in time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.get(&idle.id).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "idle session not swept"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sweeper.shutdown().await;
    assert!(store.get(&busy.id).await.unwrap().is_some());
    assert_eq!(store.count().await.unwrap(), 1);
}

/// Hands each sweep's expired sessions to a channel.
struct ToChannel(tokio::sync::mpsc::UnboundedSender<Vec<ExpiredSession>>);

impl ExpiryHook for ToChannel {
    fn expired(&self, sessions: Vec<ExpiredSession>) {
        let _ = self.0.send(sessions);
    }
}

#[tokio::test]
async fn the_hook_hears_of_each_expired_session_once() {
    let store = Arc::new(MemoryStore::new());
    let mut idle = Vec::new();
    for i in 0..5 {
        let mut s = Session::new(SessionId::generate().unwrap(), "u", "2025-11-25");
        s.last_activity = now_millis() - 120_000;
        s.upstream_session_id = Some(format!("up-{i}"));
        store.create(&s).await.unwrap();
        idle.push(ExpiredSession::of(&s));
    }
    let busy = Session::new(SessionId::generate().unwrap(), "u", "2025-11-25");
    store.create(&busy).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sweeper = IdleSweeper::start_with(
        store.clone(),
        SweeperConfig {
            max_idle: Duration::from_secs(60),
            interval: Duration::from_millis(20),
        },
        Some(Arc::new(ToChannel(tx))),
    );
    let mut heard = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a sweep within the bound")
        .expect("the sweeper runs");
    heard.sort_by(|a, b| a.id.cmp(&b.id));
    idle.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(heard, idle);
    // Later sweeps find nothing new: the hook is not called with nothing.
    let more = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await;
    assert!(more.is_err(), "told again: {more:?}");
    sweeper.shutdown().await;
    assert_eq!(store.count().await.unwrap(), 1);
}

#[test]
fn store_ttl_outlasts_the_idle_timeout_and_two_sweeps() {
    let c = SweeperConfig::default();
    assert_eq!(c.store_ttl(), Duration::from_secs(62 * 60));
    let c = SweeperConfig {
        max_idle: Duration::from_secs(1),
        interval: Duration::from_secs(1),
    };
    assert_eq!(c.store_ttl(), Duration::from_secs(4));
}
