//! Deterministic gate (run by `cargo xtask gates`): a request body costs
//! memory in proportion to its bytes, not to the number of reads it
//! arrived in. A body of 30,000 bytes is fed one byte per frame through
//! the proxy's own body reader; each frame is a one-byte slice of its own
//! 4 KiB buffer, as a connection's frames are slices of its read buffer.
//! The bytes held afterwards must be at most 2 per body byte, and the
//! peak while reading at most 2 per body byte plus one frame's buffer.
//! (Keeping the frames, as `http_body_util`'s `collect` does, holds about
//! 4 KiB per body byte: checked too, so the gate measures what matters.)
//!
//! A counting global allocator keeps this thread's live and peak bytes;
//! the runtime is current-thread, so every count is exact.
#![allow(unsafe_code)] // the counting allocator; nothing else

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
}

/// Keeps this thread's live and peak heap bytes, then defers to the
/// system allocator.
#[derive(Debug)]
struct LiveBytes;

fn add(bytes: i64) {
    // `try_with`: the counters may be gone while a thread shuts down.
    let _ = LIVE.try_with(|c| {
        let now = c.get() + bytes;
        c.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the counting touches only thread-local `Cell`s.
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

/// Starts a new peak measurement from the current live bytes.
fn reset_peak() {
    let now = live();
    PEAK.with(|p| p.set(now));
}

fn peak() -> i64 {
    PEAK.with(Cell::get)
}

/// The size of the buffer each one-byte frame is a slice of.
const FRAME_BUFFER: usize = 4096;
/// Body bytes fed through the proxy's reader.
const BODY_BYTES: usize = 30_000;

/// A body of `left` one-byte frames, each a slice of its own
/// [`FRAME_BUFFER`]; says its length when `declare`.
struct Bytewise {
    left: usize,
    declare: bool,
}

impl Body for Bytewise {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        let read_buffer = Bytes::from(vec![b'x'; FRAME_BUFFER]);
        Poll::Ready(Some(Ok(Frame::data(read_buffer.slice(0..1)))))
    }

    fn size_hint(&self) -> SizeHint {
        if self.declare {
            SizeHint::with_exact(self.left as u64)
        } else {
            SizeHint::default()
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
}

#[test]
fn request_body_bytes_held_per_body_byte_at_most_two() {
    let rt = runtime();
    for declare in [false, true] {
        let before = live();
        reset_peak();
        let body = rt
            .block_on(shadowcat_proxy::test_util::read_body_whole(
                Bytewise {
                    left: BODY_BYTES,
                    declare,
                },
                4 << 20,
            ))
            .expect("the body is read");
        assert_eq!(body.len(), BODY_BYTES);
        let held = live() - before;
        let peak = peak() - before;
        let per_byte = held as f64 / BODY_BYTES as f64;
        eprintln!(
            "declared length: {declare}: {BODY_BYTES} body bytes, held {held} bytes ({per_byte:.2} per body byte), peak {peak}"
        );
        assert!(
            held <= 2 * BODY_BYTES as i64,
            "held {held} bytes for a {BODY_BYTES}-byte body ({per_byte:.2} per byte; the gate is 2)"
        );
        assert!(
            peak <= 2 * BODY_BYTES as i64 + FRAME_BUFFER as i64 + 1024,
            "peak {peak} bytes while reading a {BODY_BYTES}-byte body"
        );
        drop(body);
    }
}

#[test]
fn keeping_the_frames_would_fail_the_gate() {
    // Fewer bytes: this way holds a frame buffer per byte.
    const N: usize = 1000;
    let rt = runtime();
    let before = live();
    let collected = rt
        .block_on(
            Bytewise {
                left: N,
                declare: false,
            }
            .collect(),
        )
        .expect("collects");
    let held = live() - before;
    eprintln!("frames kept: {N} body bytes, held {held} bytes");
    assert!(
        held >= (N * FRAME_BUFFER) as i64,
        "the gate's measure sees pinned frame buffers ({held} bytes)"
    );
    drop(collected);
}
