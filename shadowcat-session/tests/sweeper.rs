//! The idle sweeper removes idle sessions on its own schedule and keeps
//! busy ones.

use std::sync::Arc;
use std::time::Duration;

use shadowcat_session::{
    IdleSweeper, MemoryStore, Session, SessionId, SessionStore, SweeperConfig, now_millis,
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
