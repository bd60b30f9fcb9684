//! Deterministic gates on the whole proxy path (run by `cargo xtask gates`):
//! counts and bytes, never times.
//!
//! A real [`ReverseProxy`] runs on a runtime of its own whose threads are
//! marked; a tagging global allocator records, for every block, whether a
//! proxy thread allocated it. So the figures are the proxy's alone, although
//! the upstream (raw HTTP/1.1 on tokio) and the clients run in the same
//! process:
//!
//! - **allocations per event** from upstream chunk to client write: one
//!   `tools/call` answered with 20,000 SSE events of about 256 bytes, at 1
//!   and at 16 events per upstream write;
//! - **bytes held per idle stream**: heap the proxy holds for each of 500
//!   idle GET streams (each its own session), counted from every live block
//!   it allocated: structures, buffers, tasks, the session.

#[path = "support/tagging.rs"]
mod tagging;
use tagging::{NEXT_RIG, PROXY_ALLOCS, PROXY_LIVE, PROXY_THREAD, RIGS};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use shadowcat_proxy::{ReverseProxy, ReverseProxyConfig};
use shadowcat_session::MemoryStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------
// A raw HTTP/1.1 MCP upstream: sessions, one event stream, idle GETs.
// ---------------------------------------------------------------------------

const V: &str = "2025-06-18";

/// Everything the stream's answer is made of, encoded once.
struct Script {
    /// Chunks of `per_write` events each, chunked-encoded.
    chunks: Vec<Bytes>,
    /// When set, each chunk after the first waits for a permit: the client
    /// adds one per event it has received, so every event travels alone.
    lockstep: Option<Arc<tokio::sync::Semaphore>>,
}

fn event(i: usize) -> String {
    // About 256 bytes, as the load harness's small events.
    let pad = "x".repeat(150);
    let data = format!(
        r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progressToken":"p","progress":{i},"total":0,"pad":"{pad}"}}}}"#
    );
    format!("id: up-{i}\ndata: {data}\n\n")
}

fn script(events: usize, per_write: usize) -> Script {
    let mut chunks = Vec::new();
    let mut i = 1;
    while i <= events {
        let mut text = String::new();
        for j in i..(i + per_write).min(events + 1) {
            text.push_str(&event(j));
        }
        i += per_write;
        chunks.push(Bytes::from(format!("{:x}\r\n{text}\r\n", text.len())));
    }
    let result = r#"id: up-end
data: {"jsonrpc":"2.0","id":7,"result":{"content":[]}}

"#;
    chunks.push(Bytes::from(format!(
        "{:x}\r\n{result}\r\n0\r\n\r\n",
        result.len()
    )));
    Script {
        chunks,
        lockstep: None,
    }
}

async fn upstream(listener: TcpListener, script: Arc<Script>) {
    let sessions = Arc::new(AtomicU64::new(0));
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            return;
        };
        conn.set_nodelay(true).unwrap();
        tokio::spawn(serve_conn(conn, Arc::clone(&script), Arc::clone(&sessions)));
    }
}

/// Reads one request (head and sized body); `None` at end of connection.
async fn read_request(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, String)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut more = [0u8; 4096];
                let n = conn.read(&mut more).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&more[..n]);
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
            buf.drain(..end + 4 + len);
            return Some((head, body));
        }
        let mut more = [0u8; 4096];
        let n = conn.read(&mut more).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&more[..n]);
    }
}

async fn serve_conn(mut conn: TcpStream, script: Arc<Script>, sessions: Arc<AtomicU64>) {
    let mut buf = Vec::new();
    while let Some((head, body)) = read_request(&mut conn, &mut buf).await {
        let sse_head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        if head.starts_with("GET") {
            // An idle stream: a comment at once, then nothing.
            let open = ": open\n\n";
            let msg = format!("{sse_head}{:x}\r\n{open}\r\n", open.len());
            if conn.write_all(msg.as_bytes()).await.is_err() {
                return;
            }
            let mut sink = [0u8; 64];
            while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {}
            return;
        }
        let reply = if head.starts_with("DELETE") || body.contains("\"notifications/") {
            "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n".to_owned()
        } else if body.contains("\"initialize\"") {
            let n = sessions.fetch_add(1, Ordering::Relaxed);
            let answer = format!(
                r#"{{"jsonrpc":"2.0","id":1,"result":{{"protocolVersion":"{V}","capabilities":{{"tools":{{}}}},"serverInfo":{{"name":"raw","version":"0"}}}}}}"#
            );
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nmcp-session-id: s{n}\r\ncontent-length: {}\r\n\r\n{answer}",
                answer.len()
            )
        } else if body.contains("\"echo\"") {
            // A request answered at once, with JSON or with SSE.
            let id = body
                .split("\"id\":")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .unwrap_or("0");
            let answer = format!(
                r#"{{"jsonrpc":"2.0","id":{id},"result":{{"content":[{{"type":"text","text":"0123456789012345678901234567890123456789012345678901234567890123"}}]}}}}"#
            );
            if body.contains("\"sse\":true") {
                let event = format!("data: {answer}\n\n");
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{event}",
                    event.len()
                )
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                    answer.len()
                )
            }
        } else {
            // The stream.
            if conn.write_all(sse_head.as_bytes()).await.is_err() {
                return;
            }
            for (i, chunk) in script.chunks.iter().enumerate() {
                if let Some(gate) = script.lockstep.as_ref().filter(|_| i > 0) {
                    gate.acquire().await.expect("never closed").forget();
                }
                if conn.write_all(chunk).await.is_err() {
                    return;
                }
            }
            continue;
        };
        if conn.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// The proxy on its own marked runtime.
// ---------------------------------------------------------------------------

struct Rig {
    /// The proxy's runtime; its threads are marked with `id`.
    _proxy_rt: tokio::runtime::Runtime,
    /// Indexes `PROXY_ALLOCS` and `PROXY_LIVE`.
    id: usize,
    /// Upstream and clients.
    rt: tokio::runtime::Runtime,
    proxy: SocketAddr,
}

fn rig(script: Script) -> Rig {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let up = listener.local_addr().unwrap();
    rt.spawn(upstream(listener, Arc::new(script)));
    let id = NEXT_RIG.fetch_add(1, Ordering::Relaxed);
    assert!(id < RIGS, "more rigs than counters");
    let proxy_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(move || PROXY_THREAD.with(|p| p.set(id)))
        .enable_all()
        .build()
        .unwrap();
    let proxy = proxy_rt.block_on(async move {
        let mut config = ReverseProxyConfig::new(format!("http://{up}/mcp").parse().unwrap());
        config.bind = "127.0.0.1:0".parse().unwrap();
        config.limits.max_session_creates_per_minute = 0;
        let proxy = ReverseProxy::bind(config, Arc::new(MemoryStore::new()), None)
            .await
            .expect("proxy binds");
        let addr = proxy.local_addr();
        tokio::spawn(proxy.serve(std::future::pending()));
        addr
    });
    Rig {
        _proxy_rt: proxy_rt,
        id,
        rt,
        proxy,
    }
}

/// A client connection to the proxy.
struct Client {
    conn: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(proxy: SocketAddr) -> Self {
        let conn = TcpStream::connect(proxy).await.unwrap();
        conn.set_nodelay(true).unwrap();
        Client {
            conn,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, method: &str, sid: Option<&str>, body: &str) {
        let sid = sid.map_or(String::new(), |s| format!("mcp-session-id: {s}\r\n"));
        let req = format!(
            "{method} /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
             accept: application/json, text/event-stream\r\nmcp-protocol-version: {V}\r\n{sid}\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        self.conn.write_all(req.as_bytes()).await.unwrap();
    }

    /// Reads until `needle` has arrived; returns everything read so far.
    async fn until(&mut self, needle: &[u8]) -> &[u8] {
        self.until_from(0, needle).await
    }

    /// Reads until `needle` has arrived at or after `from`.
    async fn until_from(&mut self, from: usize, needle: &[u8]) -> &[u8] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut scanned = from;
        loop {
            if self.buf.len() >= scanned + needle.len() {
                if self.buf[scanned..]
                    .windows(needle.len())
                    .any(|w| w == needle)
                {
                    break;
                }
                scanned = self.buf.len() + 1 - needle.len();
            }
            let mut more = vec![0u8; 64 * 1024];
            let n = tokio::time::timeout_at(deadline, self.conn.read(&mut more))
                .await
                .expect("the proxy answers within 60 s")
                .unwrap();
            assert!(n > 0, "the proxy closed the connection");
            self.buf.extend_from_slice(&more[..n]);
        }
        &self.buf
    }

    /// Reads until `n` progress events have arrived, adding a permit to
    /// `gate` for each; returns how many arrived (more means duplicates).
    async fn events(&mut self, n: usize, gate: &tokio::sync::Semaphore) -> usize {
        const PAT: &[u8] = b"notifications/progress";
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let (mut seen, mut from) = (0, 0);
        let mut more = vec![0u8; 64 * 1024];
        while seen < n {
            let got = tokio::time::timeout_at(deadline, self.conn.read(&mut more))
                .await
                .expect("the events arrive within 120 s")
                .unwrap();
            assert!(got > 0, "the proxy closed the connection");
            self.buf.extend_from_slice(&more[..got]);
            let mut new = 0;
            while let Some(at) = self.buf[from..].windows(PAT.len()).position(|w| w == PAT) {
                new += 1;
                from += at + PAT.len();
            }
            from = from.max(self.buf.len().saturating_sub(PAT.len() - 1));
            seen += new;
            gate.add_permits(new);
        }
        seen
    }

    /// `initialize` on this connection; returns the session id.
    async fn initialize(&mut self) -> String {
        let init = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"{V}","capabilities":{{}},"clientInfo":{{"name":"gate","version":"0"}}}}}}"#
        );
        self.send("POST", None, &init).await;
        let text = String::from_utf8_lossy(self.until(b"serverInfo").await).into_owned();
        let sid = text
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("mcp-session-id")
                    .then(|| v.trim().to_owned())
            })
            .expect("a session id");
        // The rest of the answer (sized) may still be on its way.
        self.until(b"}}}").await;
        self.buf.clear();
        sid
    }
}

// ---------------------------------------------------------------------------
// The gates.
// ---------------------------------------------------------------------------

const EVENTS: usize = 20_000;

/// Allocations on proxy threads per event of one 20,000-event stream.
fn allocs_per_event(events: usize, per_write: usize, lockstep: bool) -> f64 {
    let mut script = script(events, per_write);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    if lockstep {
        script.lockstep = Some(Arc::clone(&gate));
    }
    let rig = rig(script);
    rig.rt.block_on(async {
        let mut c = Client::connect(rig.proxy).await;
        let sid = c.initialize().await;
        // The set-up of the one stream is counted too: a few hundred
        // allocations, spread over all its events.
        let call = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"stream","arguments":{}}}"#;
        let before = PROXY_ALLOCS[rig.id].load(Ordering::Relaxed);
        c.send("POST", Some(&sid), call).await;
        let seen = c.events(events, &gate).await;
        c.until(b"\"id\":7").await;
        let after = PROXY_ALLOCS[rig.id].load(Ordering::Relaxed);
        assert_eq!(seen, events, "every event arrives once");
        (after - before) as f64 / events as f64
    })
}

/// Allocations per event at most this many on an unpaced stream (the
/// proxy reads many events per batch, however they were written).
const MAX_ALLOCS_PER_EVENT_UNPACED: f64 = 0.25;
/// And when every event travels alone (one per upstream write, the next
/// written only once the client has the previous): the cost of a batch.
const MAX_ALLOCS_PER_EVENT_ALONE: f64 = 0.5;

#[test]
fn allocations_per_event_on_the_whole_path() {
    let batched = allocs_per_event(EVENTS, 16, false);
    let single = allocs_per_event(EVENTS, 1, false);
    let alone = allocs_per_event(2_000, 1, true);
    eprintln!(
        "whole path, upstream chunk to client write: {batched:.3} allocations per event unpaced at 16 events per upstream write, {single:.3} at 1, {alone:.3} with every event alone"
    );
    for (what, got, limit) in [
        (
            "unpaced, 16 per write",
            batched,
            MAX_ALLOCS_PER_EVENT_UNPACED,
        ),
        ("unpaced, 1 per write", single, MAX_ALLOCS_PER_EVENT_UNPACED),
        ("every event alone", alone, MAX_ALLOCS_PER_EVENT_ALONE),
    ] {
        assert!(
            got <= limit,
            "{what}: {got:.3} allocations per event (limit {limit})"
        );
    }
}

/// One `tools/call echo`, answered with JSON or SSE, read whole.
async fn echo(c: &mut Client, sid: &str, id: usize, sse: bool) {
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"sse":{sse}}}}}}}"#
    );
    c.send("POST", Some(sid), &body).await;
    // Each answer ends with the text, then the result's end.
    c.until(b"0123\"}]}}").await;
    c.buf.clear();
}

/// Allocations on proxy threads per `tools/call` answered at once, over
/// `n` requests on one keep-alive connection after a warm-up.
fn allocs_per_request(n: usize, sse: bool) -> f64 {
    let rig = rig(script(1, 1));
    rig.rt.block_on(async {
        let mut c = Client::connect(rig.proxy).await;
        let sid = c.initialize().await;
        for id in 0..50 {
            echo(&mut c, &sid, 1000 + id, sse).await;
        }
        let before = PROXY_ALLOCS[rig.id].load(Ordering::Relaxed);
        for id in 0..n {
            echo(&mut c, &sid, 2000 + id, sse).await;
        }
        let after = PROXY_ALLOCS[rig.id].load(Ordering::Relaxed);
        (after - before) as f64 / n as f64
    })
}

/// Allocations per request answered with JSON, at most: today's 33 with
/// a little room. Of those, hyper makes about 17 (its timers, body
/// channels, custom header names, a fresh read buffer while a request's
/// head is still held) and the proxy the rest (the boxed handler, the
/// session lookup, request extensions, the upstream request's headers).
const MAX_ALLOCS_PER_JSON_REQUEST: f64 = 36.0;
/// Allocations per request answered with SSE, at most: today's 46 with a
/// little room; a stream is set up for the answer (pump, tracker, replay
/// buffer, client body).
const MAX_ALLOCS_PER_SSE_REQUEST: f64 = 50.0;

#[test]
fn allocations_per_request() {
    let json = allocs_per_request(1_000, false);
    let sse = allocs_per_request(1_000, true);
    eprintln!(
        "allocations per request on the whole path: {json:.1} answered with JSON, {sse:.1} answered with SSE"
    );
    assert!(
        json <= MAX_ALLOCS_PER_JSON_REQUEST,
        "{json:.1} allocations per JSON-answered request (limit {MAX_ALLOCS_PER_JSON_REQUEST})"
    );
    assert!(
        sse <= MAX_ALLOCS_PER_SSE_REQUEST,
        "{sse:.1} allocations per SSE-answered request (limit {MAX_ALLOCS_PER_SSE_REQUEST})"
    );
}

const IDLE_STREAMS: usize = 500;
/// The goal (issue 15): at most 12 KB of proxy heap per idle proxied
/// stream. Not met: hyper's HTTP/1 connections hold fixed 8 KiB read and
/// write buffers (and the client side a channel block of 9 KiB), about
/// 41 KiB for the two connections of one proxied stream. Reported, not
/// asserted.
const GOAL_BYTES_PER_IDLE_STREAM: i64 = 12 * 1024;
/// What is asserted: no regression past today's figure (50.5 KiB in a
/// debug build) with a little room.
const MAX_BYTES_PER_IDLE_STREAM: i64 = 56 * 1024;

#[test]
fn bytes_per_idle_stream() {
    let rig = rig(script(1, 1));
    let (per_stream, _clients) = rig.rt.block_on(async {
        // One stream first, so one-off structures (pool, registries) exist.
        let mut warm = Client::connect(rig.proxy).await;
        let sid = warm.initialize().await;
        warm.send("GET", Some(&sid), "").await;
        warm.until(b"\r\n\r\n").await;
        let before = PROXY_LIVE[rig.id].load(Ordering::Relaxed);
        let mut clients = Vec::with_capacity(IDLE_STREAMS);
        for _ in 0..IDLE_STREAMS {
            let mut c = Client::connect(rig.proxy).await;
            let sid = c.initialize().await;
            c.send("GET", Some(&sid), "").await;
            // The first body byte: a comment (the upstream's or the proxy's).
            let buf = c.until(b"\r\n\r\n").await;
            let head = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            c.until_from(head, b"\n\n").await;
            clients.push(c);
        }
        let after = PROXY_LIVE[rig.id].load(Ordering::Relaxed);
        ((after - before) / IDLE_STREAMS as i64, (warm, clients))
    });
    eprintln!(
        "{IDLE_STREAMS} idle streams: {per_stream} bytes of proxy heap per stream (goal {GOAL_BYTES_PER_IDLE_STREAM}, ceiling {MAX_BYTES_PER_IDLE_STREAM})"
    );
    assert!(
        per_stream <= MAX_BYTES_PER_IDLE_STREAM,
        "{per_stream} bytes of proxy heap per idle stream: past the ceiling {MAX_BYTES_PER_IDLE_STREAM}"
    );
}
