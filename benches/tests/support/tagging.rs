//! The tagging allocator of the path and cluster gates: it counts the
//! allocations and live bytes of each rig's proxy threads apart from the
//! rest of the test process (upstream, clients).
#![allow(unsafe_code)] // the allocator; nothing else

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

/// Rigs a test binary may build; each counts on its own, so gates
/// running in parallel do not see each other's allocations.
pub(crate) const RIGS: usize = 16;

thread_local! {
    /// On a proxy runtime's threads, the number of its rig (from 1).
    pub(crate) static PROXY_THREAD: Cell<usize> = const { Cell::new(0) };
}

/// Allocations made on each rig's proxy threads.
pub(crate) static PROXY_ALLOCS: [AtomicU64; RIGS] = [const { AtomicU64::new(0) }; RIGS];
/// Bytes held in blocks each rig's proxy threads allocated, wherever they
/// are freed.
pub(crate) static PROXY_LIVE: [AtomicI64; RIGS] = [const { AtomicI64::new(0) }; RIGS];
/// The next rig's number.
pub(crate) static NEXT_RIG: AtomicUsize = AtomicUsize::new(1);

/// Room in front of every block for its tag; keeps the caller's alignment.
fn header(layout: Layout) -> usize {
    layout.align().max(16)
}

/// Every block carries a header: its first word is the rig whose proxy
/// thread allocated it (0: none), its second the size asked for.
#[derive(Debug)]
struct TaggingAllocator;

// SAFETY: blocks are `System` blocks `header` bytes larger, at the caller's
// alignment; the pointer handed out is `header` bytes in, so it keeps the
// alignment, and the two tag words sit in the header, inside the block.
// `realloc` is the trait's default (alloc, copy, dealloc) over these two.
unsafe impl GlobalAlloc for TaggingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pad = header(layout);
        let Ok(outer) = Layout::from_size_align(layout.size() + pad, layout.align()) else {
            return std::ptr::null_mut();
        };
        // SAFETY: a non-zero size.
        let base = unsafe { System.alloc(outer) };
        if base.is_null() {
            return base;
        }
        let rig = PROXY_THREAD.try_with(Cell::get).unwrap_or(0);
        if rig != 0 {
            PROXY_ALLOCS[rig].fetch_add(1, Ordering::Relaxed);
            PROXY_LIVE[rig].fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        // SAFETY: the header is at least 16 bytes, aligned to at least 8.
        unsafe {
            (base as *mut usize).write(rig);
            (base as *mut usize).add(1).write(layout.size());
            base.add(pad)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let pad = header(layout);
        // SAFETY: `ptr` came from `alloc` above with the same layout.
        unsafe {
            let base = ptr.sub(pad);
            let rig = (base as *const usize).read();
            if rig != 0 {
                let size = (base as *const usize).add(1).read();
                PROXY_LIVE[rig].fetch_sub(size as i64, Ordering::Relaxed);
            }
            let outer = Layout::from_size_align_unchecked(layout.size() + pad, layout.align());
            System.dealloc(base, outer);
        }
    }
}

#[global_allocator]
static GLOBAL: TaggingAllocator = TaggingAllocator;
