//! Deterministic gate (run by `cargo xtask gates`): sessions that end give
//! back all their memory. 10,000 sessions are created and used through the
//! reverse proxy's session layer (store, cache, writer), expired in the
//! store as the idle sweeper does, and evicted (half by a request after
//! the revalidation interval, half by the cache sweep after the idle
//! timeout); then the bytes still held for them must be 0.
//!
//! A counting global allocator keeps this thread's live bytes
//! (allocated minus freed). The runtime is current-thread with paused
//! time, so the writer task runs on this thread too and every count is
//! exact. The first two rounds size what stays whatever the number of
//! sessions (the writer's rotating tables at their floor, an empty store
//! map's root); together they may keep at most `MAX_SCRATCH_BYTES`. The
//! third must keep nothing. Run with `--nocapture` for the figures.
#![allow(unsafe_code)] // the counting allocator; nothing else

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use shadowcat_proxy::Limits;
use shadowcat_proxy::test_util::SessionLayer;
use shadowcat_session::{
    BatchingWriter, MemoryStore, SessionId, SessionStore, WriterConfig, now_millis,
};

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

/// Keeps this thread's live heap bytes, then defers to the system
/// allocator.
#[derive(Debug)]
struct LiveBytes;

fn add(bytes: i64) {
    // `try_with`: the counter may be gone while a thread shuts down.
    let _ = LIVE.try_with(|c| c.set(c.get() + bytes));
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the counting touches only a thread-local `Cell`.
unsafe impl GlobalAlloc for LiveBytes {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as i64);
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as i64);
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size as i64 - layout.size() as i64);
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as i64));
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: LiveBytes = LiveBytes;

fn live() -> i64 {
    LIVE.with(Cell::get)
}

const SESSIONS: usize = 10_000;
/// What the warm-up rounds may keep for good: tables at their floor and
/// buffers bounded by configured limits, never by sessions.
const MAX_SCRATCH_BYTES: i64 = 64 << 10;

/// The test's own bytes for `ids` (a `Vec` of `capacity`), not the
/// proxy's.
fn ids_bytes(ids: &[SessionId], capacity: usize) -> i64 {
    (capacity * std::mem::size_of::<SessionId>()
        + ids.iter().map(|i| i.as_str().len()).sum::<usize>()) as i64
}

/// What one round measured, in bytes.
#[derive(Debug, Clone, Copy)]
struct Round {
    /// Held per session while all are cached and used.
    per_session: i64,
    /// Of which freed per session by the writer's flushes (its entry).
    writer: i64,
    /// Freed per session when the store expired them.
    store: i64,
    /// Freed per session when the cache evicted them.
    cache: i64,
    /// Held after the round.
    kept: i64,
}

/// One round: create, use, expire, evict.
async fn round(layer: &SessionLayer, store: &MemoryStore, limits: &Limits) -> Round {
    let before = live();
    let n = SESSIONS as i64;
    let mut ids = Vec::with_capacity(SESSIONS);
    for i in 0..SESSIONS {
        let id = layer
            .create(&format!("upstream-session-{i:08}"))
            .await
            .expect("create");
        ids.push(id);
    }
    for id in &ids {
        assert!(layer.request(id).await.expect("lookup"), "served");
    }
    assert_eq!(layer.cached(), SESSIONS);
    let peak = live();
    // The writer writes the requests' activity, then frees its entries.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let after_writer = live();

    // The idle sweeper's view an hour later: every session expired.
    let expired = store
        .expire_idle(now_millis() + 3_600_000, Duration::from_secs(1800))
        .await
        .expect("expire");
    assert_eq!(expired.len(), SESSIONS);
    drop(expired);
    let after_store = live();

    // Half come back after the revalidation interval: 404.
    tokio::time::sleep(limits.session_revalidate_interval).await;
    let (back, never) = ids.split_at(SESSIONS / 2);
    for id in back {
        assert!(!layer.request(id).await.expect("lookup"), "404");
    }
    assert_eq!(layer.cached(), never.len());
    // The rest never come back: the sweep drops them once idle.
    tokio::time::sleep(limits.session_idle_timeout).await;
    layer.sweep().await;
    assert_eq!(layer.cached(), 0);
    let after_cache = live();
    // Two more flushes: the writer's tables settle.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let own = ids_bytes(&ids, ids.capacity());
    drop(ids);
    Round {
        per_session: (peak - before - own) / n,
        writer: (peak - after_writer) / n,
        store: (after_writer - after_store) / n,
        cache: (after_store - after_cache) / n,
        kept: live() - before,
    }
}

#[tokio::test(start_paused = true)]
async fn expired_sessions_leave_no_memory() {
    let limits = Limits {
        max_cached_sessions: SESSIONS,
        session_idle_timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let store = Arc::new(MemoryStore::new());
    let writer = BatchingWriter::start(
        Arc::clone(&store) as Arc<dyn SessionStore>,
        WriterConfig::default(),
    );
    let layer = SessionLayer::new(
        Arc::clone(&store) as Arc<dyn SessionStore>,
        Some(writer.handle()),
        &limits,
    );

    let first = round(&layer, &store, &limits).await;
    let second = round(&layer, &store, &limits).await;
    let r = round(&layer, &store, &limits).await;
    eprintln!(
        "{SESSIONS} sessions: {} bytes per cached session (cache {}, store {}, writer {}); \
         held once expired and evicted: {} bytes (warm-up rounds kept {} and {})",
        r.per_session, r.cache, r.store, r.writer, r.kept, first.kept, second.kept
    );
    assert!(
        first.kept + second.kept <= MAX_SCRATCH_BYTES,
        "warm-up kept {} + {} bytes: more than fixed-size scratch",
        first.kept,
        second.kept
    );
    assert!(r.cache > 0, "the cache held the sessions: {r:?}");
    assert_eq!(r.kept, 0, "bytes still held for {SESSIONS} ended sessions");
    assert!(writer.shutdown().await.is_complete());
}
