//! Deterministic bench gates (run by `cargo xtask ci`): counts and bytes,
//! never wall-clock times.
//!
//! A counting global allocator at the top counts allocations and bytes per
//! thread (a `thread_local!` `Cell`), so each `#[test]` measures only its
//! own work even when `cargo test` runs them in parallel. Each gate is one
//! `#[test]`; [`measure`] is the shared tool. Run with `--nocapture` to see
//! the figures.
#![allow(unsafe_code)] // the counting allocator; nothing else

use shadowcat_transport::{EventTracker, Recorded};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;

// ---------------------------------------------------------------------------
// Shared: the counting allocator.
// ---------------------------------------------------------------------------

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static ALLOC_BYTES: Cell<u64> = const { Cell::new(0) };
}

/// Counts every allocation (and reallocation) made by the current thread,
/// then defers to the system allocator.
#[derive(Debug)]
struct CountingAllocator;

fn count(bytes: usize) {
    // `try_with`: the counters may be gone while a thread shuts down. The
    // const-initialised `Cell`s need no allocation and no destructor.
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
    let _ = ALLOC_BYTES.try_with(|c| c.set(c.get() + bytes as u64));
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the counting touches only thread-local `Cell`s.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: forwarded as is.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: forwarded as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Allocations made by this thread while a closure ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Allocs {
    /// Allocations and reallocations.
    count: u64,
    /// Bytes requested by them.
    bytes: u64,
}

/// Runs `f` and counts the allocations this thread made meanwhile.
fn measure<R>(f: impl FnOnce() -> R) -> (R, Allocs) {
    let (count0, bytes0) = (ALLOCS.with(Cell::get), ALLOC_BYTES.with(Cell::get));
    let out = f();
    let allocs = Allocs {
        count: ALLOCS.with(Cell::get) - count0,
        bytes: ALLOC_BYTES.with(Cell::get) - bytes0,
    };
    (out, allocs)
}

#[test]
fn the_allocator_counts() {
    let (v, allocs) = measure(|| black_box(vec![0u8; 100]));
    assert_eq!(
        allocs,
        Allocs {
            count: 1,
            bytes: 100
        }
    );
    drop(v);
}

// ---------------------------------------------------------------------------
// Transport: the EventTracker.
// ---------------------------------------------------------------------------

/// Realistic ids: `stream/seq` and UUID-ish 36-character ones.
fn ids(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                format!("{}/{}", 17 + i % 5, 4711 + i)
            } else {
                format!("0b5e4c3a-9f1d-4e2b-8a7c-{:012x}", i * 7919)
            }
        })
        .collect()
}

const EVENTS: usize = 100_000;

/// Gate: `record` allocates nothing in steady state, fresh or duplicate,
/// and neither does reading the resumption point.
#[test]
fn tracker_record_allocates_nothing_in_steady_state() {
    let ids = ids(EVENTS);
    {
        let mut tracker = EventTracker::new();
        // Warm up: the window fills, the id buffer is in place.
        for id in &ids[..256] {
            tracker.record(id);
        }
        let (fresh, fresh_allocs) = measure(|| {
            ids[256..]
                .iter()
                .filter(|id| tracker.record(id) == Recorded::Fresh)
                .count()
        });
        assert_eq!(fresh, EVENTS - 256, "every id was new");

        // Replay of the last 32 ids, over and over: all duplicates.
        let recent = &ids[EVENTS - 32..];
        let (dups, dup_allocs) = measure(|| {
            recent
                .iter()
                .cycle()
                .take(EVENTS)
                .filter(|id| tracker.record(id) == Recorded::Duplicate)
                .count()
        });
        assert_eq!(dups, EVENTS, "every replayed id was a duplicate");

        let (last, last_allocs) = measure(|| {
            (0..1_000)
                .map(|_| tracker.last_event_id().map(str::len))
                .sum::<Option<usize>>()
        });
        assert_eq!(last, Some(1_000 * ids[EVENTS - 1].len()));

        eprintln!(
            "tracker: {} allocations over {} fresh records, {} over {} duplicates, \
             {} over 1000 last_event_id reads",
            fresh_allocs.count,
            EVENTS - 256,
            dup_allocs.count,
            EVENTS,
            last_allocs.count,
        );
        assert_eq!(
            fresh_allocs.count, 0,
            "allocations while recording fresh ids"
        );
        assert_eq!(
            dup_allocs.count, 0,
            "allocations while recording duplicates"
        );
        assert_eq!(
            last_allocs.count, 0,
            "allocations while reading the last id"
        );
    }
}

/// Gate: one tracked stream costs at most 1 KB with the default window,
/// and `memory_footprint` tells the truth about its heap.
#[test]
fn tracker_bytes_per_stream_at_most_1k() {
    let (mut tracker, allocs) = measure(EventTracker::new);
    assert_eq!(
        allocs.bytes as usize,
        tracker.heap_bytes(),
        "heap_bytes must match what construction allocated"
    );
    for id in ids(10_000) {
        tracker.record(&id);
    }
    let bytes = tracker.memory_footprint();
    eprintln!(
        "tracker: {bytes} bytes per stream ({} inline + {} heap)",
        size_of::<EventTracker>(),
        tracker.heap_bytes()
    );
    assert_eq!(
        tracker.heap_bytes(),
        allocs.bytes as usize,
        "steady state grew"
    );
    assert!(bytes <= 1024, "{bytes} bytes per tracked stream");
}
