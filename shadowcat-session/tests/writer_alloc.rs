//! Steady-state submits allocate nothing: a newer id for a pending key
//! reuses the pending buffer, and after a flush a busy session's entry is
//! recycled. Counts heap allocations made on this thread with a counting
//! global allocator (hence the local `unsafe`).
#![allow(unsafe_code)]

mod support;
mod writer_support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shadowcat_session::{BatchingWriter, StreamId, WriterConfig};
use writer_support::{FlakyStore, sessions};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: defers every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations `f` makes on this thread.
fn allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCS.load(Ordering::Relaxed) - before
}

#[tokio::test(start_paused = true)]
async fn steady_state_submits_do_not_allocate() {
    let store = FlakyStore::new();
    let ids = sessions(&*store, 100).await;
    let writer = BatchingWriter::start(store.as_dyn(), WriterConfig::default());
    let h = writer.handle();
    // Event ids like a real upstream's; the longest sets each buffer's size.
    let texts: Vec<String> = (0..100u64).map(|i| format!("0/{:016}", i * 7919)).collect();

    // First sight of each key allocates (id copy and buffer); that is the
    // per-session cost, not a per-event one.
    let first = allocations(|| {
        for id in &ids {
            h.submit(id, StreamId(0), Some(&texts[99]), 0);
        }
    });
    assert!(first > 0, "the counter sees allocations");

    let mut seq = 1;
    for flush in 0..5 {
        let n = allocations(|| {
            for text in &texts {
                for id in &ids {
                    h.submit(id, StreamId(0), Some(text), seq);
                    seq += 1;
                }
            }
        });
        assert_eq!(n, 0, "10k submits after flush {flush} allocated {n} times");
        // Let one flush run (virtual time): entries move to the recycled
        // map and the next submits must reuse them.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(store.ok_calls() >= 4, "flushes ran: {}", store.ok_calls());
    let report = writer.shutdown().await;
    assert!(report.is_complete());
}
