//! Heap allocations of the SSE decoder in steady state, counted by a global
//! allocator: none per event when each event arrives in its own chunk, and
//! at most one per chunk boundary (the line that spans it) otherwise.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{Bytes, BytesMut};
use shadowcat_transport::sse::{Decoder, OutgoingEvent, SseItem};

/// Counts allocations made by the current thread.
struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a const-init
// thread local, so counting never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> usize {
    ALLOCS.with(Cell::get)
}

const PAYLOAD: &str = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"tok-17","progress":42,"total":100,"message":"indexing files"}}"#;

/// 2,000 events with ids, as one buffer, and the offset each event ends at.
fn stream(payload: &str) -> (Bytes, Vec<usize>) {
    let mut dst = BytesMut::new();
    let mut ends = Vec::new();
    for n in 0..2000 {
        let id = format!("s1-{n}");
        OutgoingEvent::new()
            .id(&id)
            .data(payload.as_bytes())
            .encode(&mut dst)
            .unwrap();
        ends.push(dst.len());
    }
    (dst.freeze(), ends)
}

/// Decodes `chunks`, dropping each event as a forwarder would once sent;
/// returns the number of events.
fn decode(dec: &mut Decoder, chunks: &[Bytes]) -> usize {
    let mut events = 0;
    for chunk in chunks {
        dec.push(chunk.clone());
        for item in dec.by_ref() {
            if let Ok(SseItem::Event(e)) = item {
                assert!(e.has_own_id && !e.data.is_empty());
                events += 1;
            }
        }
    }
    events
}

#[test]
fn no_allocation_per_event_with_one_event_per_chunk() {
    let (stream, ends) = stream(PAYLOAD);
    let mut start = 0;
    let chunks: Vec<Bytes> = ends
        .iter()
        .map(|&end| {
            let chunk = stream.slice(start..end);
            start = end;
            chunk
        })
        .collect();
    let mut dec = Decoder::default();
    assert_eq!(decode(&mut dec, &chunks[..100]), 100);
    let before = allocs();
    let events = decode(&mut dec, &chunks[100..]);
    let spent = allocs() - before;
    assert_eq!(events, 1900);
    assert_eq!(spent, 0, "{spent} allocations for {events} events");
}

#[test]
fn at_most_one_allocation_per_chunk_boundary_with_16k_chunks() {
    // Multi-line data: each event's data is joined into an owned buffer.
    let payload = format!("{PAYLOAD}\n{PAYLOAD}");
    let (stream, _) = stream(&payload);
    let chunks: Vec<Bytes> = (0..stream.len())
        .step_by(16 * 1024)
        .map(|at| stream.slice(at..stream.len().min(at + 16 * 1024)))
        .collect();
    let warm = 4;
    let mut dec = Decoder::default();
    decode(&mut dec, &chunks[..warm]);
    let before = allocs();
    let events = decode(&mut dec, &chunks[warm..]);
    let spent = allocs() - before;
    assert!(events > 1000);
    assert!(
        spent <= chunks.len() - warm,
        "{spent} allocations for {events} events in {} chunks",
        chunks.len() - warm
    );
}
