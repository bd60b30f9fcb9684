//! SSE codec throughput on realistic MCP streams: progress notifications,
//! tools/list results (~3 KB) and tools/call results, each event with an
//! id, decoded from 16 KiB chunks, 1460-byte (TCP segment) chunks and one
//! chunk per event; and encoding the same events.

use std::hint::black_box;

use benches::payloads::PROGRESS;
use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shadowcat_transport::sse::{Decoder, OutgoingEvent, SseItem};

/// Events per stream.
const EVENTS: usize = 1000;

/// A tools/list result with `n` tools, one JSON line (~300 bytes a tool).
fn tools_list(n: usize) -> String {
    let tools: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"name":"tool_{i}","title":"Tool number {i}","description":"Searches the workspace index for files matching a pattern and returns their paths.","inputSchema":{{"type":"object","properties":{{"pattern":{{"type":"string","description":"glob pattern"}},"limit":{{"type":"integer","minimum":1}}}},"required":["pattern"]}}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"jsonrpc":"2.0","id":2,"result":{{"tools":[{}]}}}}"#,
        tools.join(",")
    )
}

/// A tools/call result carrying about `len` bytes of text.
fn tools_call(len: usize) -> String {
    let line = "src/transport/sse/decode.rs:42: fn step(&mut self, chunk: &mut Bytes)\\n";
    let text: String = line.repeat(len / line.len() + 1);
    format!(
        r#"{{"jsonrpc":"2.0","id":7,"result":{{"content":[{{"type":"text","text":"{text}"}}],"isError":false}}}}"#
    )
}

/// The encoded stream and the byte offset where each event ends.
fn stream(payload: &str) -> (Bytes, Vec<usize>) {
    let mut dst = BytesMut::new();
    let mut ends = Vec::with_capacity(EVENTS + 1);
    OutgoingEvent::new()
        .id("s1-0")
        .data(b"")
        .retry(3000)
        .encode(&mut dst)
        .expect("valid priming event");
    ends.push(dst.len());
    for n in 1..=EVENTS {
        let id = format!("s1-{n}");
        OutgoingEvent::new()
            .id(&id)
            .data(payload.as_bytes())
            .encode(&mut dst)
            .expect("valid event");
        ends.push(dst.len());
    }
    (dst.freeze(), ends)
}

fn fixed_chunks(stream: &Bytes, size: usize) -> Vec<Bytes> {
    (0..stream.len())
        .step_by(size)
        .map(|at| stream.slice(at..stream.len().min(at + size)))
        .collect()
}

fn event_chunks(stream: &Bytes, ends: &[usize]) -> Vec<Bytes> {
    let mut start = 0;
    ends.iter()
        .map(|&end| {
            let chunk = stream.slice(start..end);
            start = end;
            chunk
        })
        .collect()
}

/// Decodes `chunks` as one stream; returns the data bytes seen.
fn decode_all(dec: &mut Decoder, chunks: &[Bytes]) -> usize {
    let mut seen = 0;
    for chunk in chunks {
        dec.push(chunk.clone());
        for item in dec.by_ref() {
            match item {
                Ok(SseItem::Event(e)) => seen += e.data.len(),
                Ok(_) => {}
                Err(e) => panic!("bench stream failed to decode: {e}"),
            }
        }
    }
    assert!(!dec.finish(), "bench stream ends on an event boundary");
    seen
}

fn payloads() -> [(&'static str, String); 3] {
    [
        ("progress", PROGRESS.to_owned()),
        ("tools_list", tools_list(10)),
        ("tools_call", tools_call(1500)),
    ]
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("sse_decode");
    for (name, payload) in payloads() {
        let (stream, ends) = stream(&payload);
        let want = payload.len() * EVENTS;
        group.throughput(Throughput::Bytes(stream.len() as u64));
        let chunkings = [
            ("16KiB", fixed_chunks(&stream, 16 * 1024)),
            ("1460B", fixed_chunks(&stream, 1460)),
            ("per_event", event_chunks(&stream, &ends)),
        ];
        for (chunking, chunks) in chunkings {
            let mut dec = Decoder::default();
            assert_eq!(decode_all(&mut dec, &chunks), want);
            group.bench_with_input(BenchmarkId::new(name, chunking), &chunks, |b, chunks| {
                b.iter(|| black_box(decode_all(&mut dec, black_box(chunks))));
            });
        }
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("sse_encode");
    for (name, payload) in payloads() {
        let ids: Vec<String> = (1..=EVENTS).map(|n| format!("s1-{n}")).collect();
        let (stream, ends) = stream(&payload);
        // The priming event is not part of the encode loop.
        group.throughput(Throughput::Bytes((stream.len() - ends[0]) as u64));
        let mut dst = BytesMut::with_capacity(stream.len());
        group.bench_function(name, |b| {
            b.iter(|| {
                dst.clear();
                for id in &ids {
                    OutgoingEvent::new()
                        .id(id)
                        .data(black_box(payload.as_bytes()))
                        .encode(&mut dst)
                        .expect("valid event");
                }
                black_box(dst.len())
            });
        });
    }
    group.finish();
}

criterion_group!(sse, decode, encode);
criterion_main!(sse);
