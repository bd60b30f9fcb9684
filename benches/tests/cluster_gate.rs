//! Deterministic gates on the shared replay log (issue 13; run by `cargo
//! xtask gates`): counts and bytes, never times. Instances share a real
//! `redis-server` on a free loopback port (sessions in a `RedisStore`,
//! streams in the replay log); each instance runs on a runtime of its own
//! whose threads are marked, and a tagging global allocator (as in
//! `path_gate.rs`) records which instance's threads allocated each block,
//! so every figure is one instance's alone although the upstream, the
//! clients and the other instances run in the same process:
//!
//! - **round trips per event on the owner**: one instance reads a
//!   20,000-event stream (written unpaced, 16 and then 1 event per upstream
//!   write) for a client of its own, logging every batch before the client
//!   gets it; every event is in the log, and its Redis round trips are at
//!   most one per batch plus the lease's (take, renewals, give back), and
//!   at most 0.25 per event;
//! - **bytes held per stream on a non-owner**: 200 streams owned by
//!   instance A are resumed on instance B with `Last-Event-ID`, served
//!   from the log and caught up; B holds no stream of its own (no replay
//!   buffer) and a bounded number of heap bytes for each.

#[path = "../../shadowcat-session/tests/support/redis.rs"]
#[allow(dead_code)]
mod redis_server;

#[path = "support/tagging.rs"]
mod tagging;
use tagging::{NEXT_RIG, PROXY_ALLOCS, PROXY_LIVE, PROXY_THREAD, RIGS};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shadowcat_proxy::admin::{Admin, SessionQuery, SessionSummary};
use shadowcat_proxy::{ClientEventId, ClusterConfig, ReverseProxy, ReverseProxyConfig};
use shadowcat_session::redis_store::{RedisStore, RedisStoreConfig};
use shadowcat_session::{
    BatchingWriter, Notifier, ReplayLogs, Retention, SessionId, SessionStore, StreamId,
    WriterConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------
// A raw HTTP/1.1 MCP upstream: sessions and one event stream per call.
// ---------------------------------------------------------------------------

const V: &str = "2025-06-18";

/// Every wait on the proxy is bounded by this.
const WAIT: Duration = Duration::from_secs(60);

/// What each `tools/call` is answered with, encoded once.
struct Script {
    /// Chunks of `per_write` events each, chunked-encoded; unless `hold`,
    /// the last carries the result and ends the response.
    chunks: Vec<Bytes>,
    /// After the events the stream stays open, sending nothing, until the
    /// proxy closes it (a long tool call).
    hold: bool,
}

fn event(i: usize) -> String {
    // About 256 bytes, as the load harness's small events.
    let pad = "x".repeat(150);
    let data = format!(
        r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progressToken":"p","progress":{i},"total":0,"pad":"{pad}"}}}}"#
    );
    format!("id: up-{i}\ndata: {data}\n\n")
}

fn script(events: usize, per_write: usize, hold: bool) -> Script {
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
    if !hold {
        let result = r#"id: up-end
data: {"jsonrpc":"2.0","id":7,"result":{"content":[]}}

"#;
        chunks.push(Bytes::from(format!(
            "{:x}\r\n{result}\r\n0\r\n\r\n",
            result.len()
        )));
    }
    Script { chunks, hold }
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
        let reply = if head.starts_with("GET") {
            // Resumes are served from the log, never here.
            "HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n".to_owned()
        } else if head.starts_with("DELETE") || body.contains("\"notifications/") {
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
        } else {
            // The stream.
            if conn.write_all(sse_head.as_bytes()).await.is_err() {
                return;
            }
            for chunk in &script.chunks {
                if conn.write_all(chunk).await.is_err() {
                    return;
                }
            }
            if script.hold {
                let mut sink = [0u8; 64];
                while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {}
                return;
            }
            continue;
        };
        if conn.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The upstream on a runtime of its own (with the clients).
fn upstream_rt(script: Script) -> (tokio::runtime::Runtime, SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let up = listener.local_addr().unwrap();
    rt.spawn(upstream(listener, Arc::new(script)));
    (rt, up)
}

// ---------------------------------------------------------------------------
// A proxy instance on its own marked runtime.
// ---------------------------------------------------------------------------

/// One instance: sessions in Redis, streams shared through the replay log.
struct Instance {
    /// Indexes `PROXY_ALLOCS` and `PROXY_LIVE`.
    id: usize,
    addr: SocketAddr,
    /// The instance's replay-log client (its counters).
    logs: ReplayLogs,
    admin: Admin,
    /// Its threads are marked with `id`; everything the instance has runs
    /// there, set-up included.
    rt: Option<tokio::runtime::Runtime>,
}

impl Instance {
    /// `lease_ttl` also spaces the periodic work: owners renew every third
    /// of it, readers look at the log every half of it.
    fn start(upstream: SocketAddr, redis: &str, name: &str, lease_ttl: Duration) -> Instance {
        let id = NEXT_RIG.fetch_add(1, Ordering::Relaxed);
        assert!(id < RIGS, "more rigs than counters");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .on_thread_start(move || PROXY_THREAD.with(|p| p.set(id)))
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (redis, name) = (redis.to_owned(), name.to_owned());
        rt.spawn(async move {
            let store: Arc<dyn SessionStore> = Arc::new(
                RedisStore::connect(&redis, RedisStoreConfig::default())
                    .await
                    .expect("redis store connects"),
            );
            let writer = BatchingWriter::start(Arc::clone(&store), WriterConfig::default());
            let mut config =
                ReverseProxyConfig::new(format!("http://{upstream}/mcp").parse().unwrap());
            config.bind = "127.0.0.1:0".parse().unwrap();
            config.limits.max_session_creates_per_minute = 0;
            // No periodic work while heap is counted: no keep-alive
            // comment, no revalidation of cached sessions.
            config.limits.keepalive_interval = Duration::from_secs(300);
            config.limits.session_revalidate_interval = Duration::from_secs(300);
            let logs = ReplayLogs::connect(&redis, Default::default())
                .await
                .expect("replay log connects");
            config.cluster = Some(ClusterConfig {
                logs: logs.clone(),
                notifier: Notifier::start(&redis).expect("notifier starts"),
                instance_id: name,
                lease_ttl,
                retention: Retention {
                    max_len: 100_000,
                    max_age: None,
                },
                wait: Duration::from_secs(3),
            });
            let proxy = ReverseProxy::bind(config, store, Some(writer.handle()))
                .await
                .expect("proxy binds");
            let _ = tx.send((proxy.local_addr(), logs, proxy.admin()));
            let _ = proxy.serve(std::future::pending::<()>()).await;
            drop(writer);
        });
        let (addr, logs, admin) = rx.recv_timeout(WAIT).expect("the instance starts in time");
        Instance {
            id,
            addr,
            logs,
            admin,
            rt: Some(rt),
        }
    }

    fn live(&self) -> i64 {
        PROXY_LIVE[self.id].load(Ordering::Relaxed)
    }

    fn allocs(&self) -> u64 {
        PROXY_ALLOCS[self.id].load(Ordering::Relaxed)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

// ---------------------------------------------------------------------------
// Clients: raw HTTP/1.1.
// ---------------------------------------------------------------------------

/// A client connection to a proxy.
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

    async fn send(&mut self, method: &str, headers: &[(&str, &str)], body: &str) {
        let mut req = format!(
            "{method} /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
             accept: application/json, text/event-stream\r\nmcp-protocol-version: {V}\r\n"
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
        self.conn.write_all(req.as_bytes()).await.unwrap();
    }

    /// Reads until `needle` has arrived; returns everything read so far.
    async fn until(&mut self, needle: &[u8]) -> &[u8] {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut scanned = 0;
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
                .expect("the proxy answers in time")
                .unwrap();
            assert!(n > 0, "the proxy closed the connection");
            self.buf.extend_from_slice(&more[..n]);
        }
        &self.buf
    }

    /// Reads until `n` progress events are in the buffer (counting those
    /// already read); returns how many (more means duplicates).
    async fn events(&mut self, n: usize) -> usize {
        const PAT: &[u8] = b"notifications/progress";
        let deadline = tokio::time::Instant::now() + WAIT;
        let (mut seen, mut from) = (0, 0);
        let mut more = vec![0u8; 64 * 1024];
        loop {
            while let Some(at) = self.buf[from..].windows(PAT.len()).position(|w| w == PAT) {
                seen += 1;
                from += at + PAT.len();
            }
            from = from.max(self.buf.len().saturating_sub(PAT.len() - 1));
            // Keep the buffer small on long streams.
            if from > 1 << 20 {
                self.buf.drain(..from);
                from = 0;
            }
            if seen >= n {
                return seen;
            }
            let Ok(got) = tokio::time::timeout_at(deadline, self.conn.read(&mut more)).await else {
                panic!(
                    "{seen} of {n} events in time; received: {}",
                    String::from_utf8_lossy(&self.buf)
                );
            };
            let got = got.unwrap();
            assert!(got > 0, "the proxy closed the connection");
            self.buf.extend_from_slice(&more[..got]);
        }
    }

    /// `initialize` on this connection; returns the session id.
    async fn initialize(&mut self) -> String {
        let init = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"{V}","capabilities":{{}},"clientInfo":{{"name":"gate","version":"0"}}}}}}"#
        );
        self.send("POST", &[], &init).await;
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

    /// The client event id of each progress event read so far, by its
    /// progress number.
    fn ids(&self) -> HashMap<u64, String> {
        let text = String::from_utf8_lossy(&self.buf);
        let mut ids = HashMap::new();
        let mut last = None;
        for line in text.split('\n') {
            let line = line.trim_end_matches('\r');
            if let Some(id) = line.strip_prefix("id: ") {
                last = Some(id.to_owned());
            } else if let Some(rest) = line.split("\"progress\":").nth(1) {
                let n = rest.split(',').next().and_then(|n| n.parse().ok());
                if let (Some(n), Some(id)) = (n, last.take()) {
                    ids.insert(n, id);
                }
            }
        }
        ids
    }
}

const CALL: &str =
    r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"stream","arguments":{}}}"#;

// ---------------------------------------------------------------------------
// Gate: Redis round trips per event on the owner.
// ---------------------------------------------------------------------------

const EVENTS: usize = 20_000;
/// At most this many round trips per event on an unpaced stream: the
/// owner logs one batch per round trip, and while one is in flight the
/// next batch gathers what arrives.
const MAX_ROUND_TRIPS_PER_EVENT: f64 = 0.25;

/// One stream of `EVENTS` events read by a client on its owner; returns
/// (batches appended, round trips, allocations per event, run time).
fn owner_run(per_write: usize, lease_ttl: Duration) -> (u64, u64, f64, Duration) {
    let redis = redis_server::RedisServer::start();
    let (rt, up) = upstream_rt(script(EVENTS, per_write, false));
    let a = Instance::start(up, &redis.url(), "a", lease_ttl);
    let started = Instant::now();
    let (seen, allocs, sid, last) = rt.block_on(async {
        let mut c = Client::connect(a.addr).await;
        let sid = c.initialize().await;
        let before = a.allocs();
        c.send("POST", &[("mcp-session-id", &sid)], CALL).await;
        let seen = c.events(EVENTS).await;
        c.until(b"\"id\":7").await;
        let allocs = a.allocs() - before;
        // The result's id: the last one.
        let text = String::from_utf8_lossy(&c.buf).into_owned();
        let last = text
            .lines()
            .filter_map(|l| l.strip_prefix("id: "))
            .next_back()
            .expect("the result has an id")
            .to_owned();
        (seen, allocs, sid, last)
    });
    assert_eq!(seen, EVENTS, "every event arrives once");
    // The last batch (with the result) was logged before the client got
    // it; the end marker and the lease's release follow. Poll the log
    // until it has ended and nobody holds the lease; the probes' own round
    // trips are taken off the count.
    let id = ClientEventId::parse(&last).expect("a proxy event id");
    let log = a.logs.log(
        &SessionId::parse(&sid).expect("a session id"),
        StreamId(id.stream),
    );
    let deadline = Instant::now() + WAIT;
    let mut probes = 0;
    let probe = loop {
        let before = a.logs.round_trips();
        let probe = rt
            .block_on(log.probe(1, EVENTS + 10))
            .expect("the log is read");
        probes += a.logs.round_trips() - before;
        if probe.ended && probe.owner.is_none() {
            break probe;
        }
        assert!(
            Instant::now() < deadline,
            "the log ends and the lease is given back: not within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = started.elapsed();
    // The first append takes the lease in the same round trip; the
    // release is one more.
    let (appends, trips) = (a.logs.appends(), a.logs.round_trips() - probes);
    let seqs: Vec<u64> = probe.entries.iter().map(|e| e.seq).collect();
    // Events 1..=EVENTS, the result, then an empty end marker.
    let at = seqs
        .iter()
        .position(|&q| q == id.seq)
        .expect("the result is logged");
    assert_eq!(at, EVENTS, "every event logged before the result");
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "the log has no gap"
    );
    let tail = &probe.entries[at + 1..];
    assert!(
        probe.ended && tail.len() <= 1 && tail.iter().all(|e| e.end && e.data.is_empty()),
        "the log ends after the result"
    );
    drop(a);
    drop(rt);
    (appends, trips, allocs as f64 / EVENTS as f64, elapsed)
}

#[test]
fn round_trips_per_event_on_the_owner() {
    let ttl = Duration::from_secs(30);
    for per_write in [16, 1] {
        let (appends, trips, allocs, elapsed) = owner_run(per_write, ttl);
        let per_event = trips as f64 / EVENTS as f64;
        // The lease's own: give back (taking it rides on the first
        // append), and one renewal per third of the lease time the run
        // lasted (the first one at once).
        let renewals = (elapsed.as_millis() / (ttl.as_millis() / 3)) as u64 + 1;
        let allowance = 1 + renewals;
        eprintln!(
            "owner, {EVENTS} events unpaced at {per_write} per upstream write: {appends} batches \
             ({:.1} events per batch), {trips} round trips ({per_event:.4} per event, \
             allowance for the lease {allowance}), {allocs:.3} allocations per event",
            EVENTS as f64 / appends as f64
        );
        assert!(
            trips <= appends + allowance,
            "{per_write} per write: {trips} round trips for {appends} batches (lease allowance {allowance})"
        );
        assert!(
            per_event <= MAX_ROUND_TRIPS_PER_EVENT,
            "{per_write} per write: {per_event:.4} round trips per event (limit {MAX_ROUND_TRIPS_PER_EVENT})"
        );
    }
}

// ---------------------------------------------------------------------------
// Gate: bytes held per stream on a non-owner.
// ---------------------------------------------------------------------------

const RESUMED: usize = 200;
/// Events each stream sends before it holds (a long tool call).
const FIRST_EVENTS: usize = 4;
/// Heap bytes B may hold per stream it serves from the log: today's
/// 23,336 in a debug build with 25 % headroom. Of those, about 22.5 KB go
/// when the client goes (mostly hyper's HTTP/1 read and write buffers of
/// the client connection; then the log reader and its Pub/Sub watch) and
/// about 0.85 KB stay (the session's cache entry).
const MAX_BYTES_PER_LOG_STREAM: i64 = 29_200;

/// A stream opened on A and read there: the client's connection, its
/// session and the client ids of its events.
struct Opened {
    sid: String,
    ids: HashMap<u64, String>,
    _conn: Client,
}

async fn open_on(a: SocketAddr) -> Opened {
    let mut c = Client::connect(a).await;
    let sid = c.initialize().await;
    c.send("POST", &[("mcp-session-id", &sid)], CALL).await;
    assert_eq!(c.events(FIRST_EVENTS).await, FIRST_EVENTS);
    let ids = c.ids();
    assert_eq!(ids.len(), FIRST_EVENTS, "an id on every event: {ids:?}");
    Opened { sid, ids, _conn: c }
}

/// Resumes `s` on B after its first event; B sends the rest from the log
/// with A's ids. Returns the open connection (the stream then idles).
async fn resume_on(b: SocketAddr, s: &Opened) -> Client {
    let mut c = Client::connect(b).await;
    let last = &s.ids[&1];
    c.send(
        "GET",
        &[("mcp-session-id", &s.sid), ("last-event-id", last)],
        "",
    )
    .await;
    assert!(
        c.until(b"\r\n\r\n").await.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&c.buf)
    );
    assert_eq!(c.events(FIRST_EVENTS - 1).await, FIRST_EVENTS - 1);
    let ids = c.ids();
    for n in 2..=FIRST_EVENTS as u64 {
        assert_eq!(ids.get(&n), s.ids.get(&n), "event {n} keeps A's id on B");
    }
    assert!(
        !ids.contains_key(&1),
        "the client's own event is not sent again"
    );
    c
}

/// B's view of every session (its store's list, and its cache).
async fn sessions_on(b: &Instance) -> Vec<SessionSummary> {
    b.admin
        .sessions(&SessionQuery {
            limit: 1_000,
            ..Default::default()
        })
        .await
        .expect("sessions listed")
        .sessions
}

#[test]
fn bytes_held_per_stream_on_a_non_owner() {
    let redis = redis_server::RedisServer::start();
    let (rt, up) = upstream_rt(script(FIRST_EVENTS, 1, true));
    // A long lease: no owner renewal and no reader's periodic look at the
    // log is in flight while B's heap is counted.
    let ttl = Duration::from_secs(120);
    let a = Instance::start(up, &redis.url(), "a", ttl);
    let b = Instance::start(up, &redis.url(), "b", ttl);
    let (per_stream, per_session, trips_per_resume, _warm) = rt.block_on(async {
        // One stream first, so B's one-off structures exist (store and
        // Pub/Sub connections, maps).
        let warm = open_on(a.addr).await;
        let warm_b = resume_on(b.addr, &warm).await;
        let mut opened = Vec::with_capacity(RESUMED);
        for _ in 0..RESUMED {
            opened.push(open_on(a.addr).await);
        }
        // The listing below, once before counting (its buffers).
        assert_eq!(sessions_on(&b).await.len(), RESUMED + 1);
        // Every read of B's log readers is counted in: a resume's probe,
        // then the reader's first look (its position report and a probe).
        let per_resume = 3;
        let trips_before = b.logs.round_trips();
        let before = b.live();
        let mut resumed = Vec::with_capacity(RESUMED);
        for s in &opened {
            resumed.push(resume_on(b.addr, s).await);
        }
        let want = trips_before + per_resume * RESUMED as u64;
        let deadline = tokio::time::Instant::now() + WAIT;
        while b.logs.round_trips() < want {
            assert!(
                tokio::time::Instant::now() < deadline,
                "B's readers settle: {} of {want} round trips",
                b.logs.round_trips()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let held = b.live() - before;
        let trips = b.logs.round_trips() - trips_before;
        // Gate: a non-owner holds no stream of its own (no replay buffer, no
        // bytes in its budget) and never appends.
        let report = b.admin.streams();
        assert!(report.streams.is_empty(), "{:?}", report.streams);
        assert_eq!(report.buffered_bytes, 0);
        assert_eq!(b.logs.appends(), 0, "B never appends");
        assert!(
            a.admin.streams().streams.len() > RESUMED,
            "A still owns every stream"
        );
        // What was counted: B caches every session, each with its one
        // stream served here.
        let listed = sessions_on(&b).await;
        let cached = listed.iter().filter(|s| s.cached_here).count();
        assert_eq!(cached, RESUMED + 1, "B caches every session it served");
        let attached = listed.iter().filter(|s| s.live_streams == 1).count();
        assert_eq!(attached, RESUMED + 1, "one stream per session on B");
        // The clients go: B lets go of their connections and readers and
        // keeps the sessions (cached until idle).
        drop(resumed);
        let deadline = tokio::time::Instant::now() + WAIT;
        while sessions_on(&b)
            .await
            .iter()
            .any(|s| s.live_streams != 0 && opened.iter().any(|o| o.sid == s.id))
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "B lets go of the streams"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let kept = b.live() - before;
        (
            held / RESUMED as i64,
            kept / RESUMED as i64,
            trips as f64 / RESUMED as f64,
            (warm, warm_b, opened),
        )
    });
    eprintln!(
        "{RESUMED} streams served from the replay log by a non-owner, caught up: {per_stream} bytes \
         of its heap per stream, of which about {per_session} stay once the client has gone (the session \
         cache entry) and {} go with it (the client connection, the log reader, the Pub/Sub watch); \
         ceiling {MAX_BYTES_PER_LOG_STREAM}; no stream, no buffered bytes; {trips_per_resume:.1} Redis \
         round trips per resume",
        per_stream - per_session
    );
    assert!(
        per_stream <= MAX_BYTES_PER_LOG_STREAM,
        "{per_stream} bytes of heap per stream on a non-owner: past the ceiling {MAX_BYTES_PER_LOG_STREAM}"
    );
    drop((a, b));
}
