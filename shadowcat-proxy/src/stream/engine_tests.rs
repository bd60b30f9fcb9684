//! A property test of the stream engine with no sockets and no clock.
//!
//! One request stream read from a stdio queue, one client that is cut
//! again and again and resumes with the id of the last event it really
//! kept. Random interleavings of: the upstream writing batches and ending
//! (with the response, or the child dies), the client polling, being cut
//! with a lost tail (sent is not received), its dead connection still being
//! written to for a while, and the detached reader running. Small replay
//! limits, so eviction and the paused reader are common. Bodies are polled
//! by hand with wakers that record a wake; spawned tasks run on a
//! current-thread runtime whose clock is paused and never moves (linger
//! and keepalive never fire).
//!
//! Checked:
//! - every event the client keeps comes once, in order, with no gap,
//!   across all its connections, and the final response (or the JSON-RPC
//!   error of a dead child) comes exactly once, last;
//! - each connection is written consecutive events from where it attached,
//!   with the same bytes as any earlier delivery;
//! - an attach is refused only when more than `retain_bytes` were written
//!   (to any connection) after the event the client resumes from;
//! - a body that returned `Pending` is woken before it has anything to
//!   give, except when a dead connection polled the upstream after it (the
//!   upstream then holds only that one's waker; counted, not failed).

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};
use serde_json::Value;
use shadowcat_session::{ResumeKey, SessionId, StreamId};
use shadowcat_transport::ReconnectConfig;
use shadowcat_transport::sse::{Decoder, SseItem};
use tokio::runtime::Runtime;
use tokio::sync::watch;

use super::engine::{FellBehind, NotHeld};
use super::replay::ReplayLimits;
use super::{
    Pump, PumpSource, PumpSpec, StreamBody, StreamEnv, StreamKind, StreamRegistry, StreamShared,
};
use crate::event_id::{ClientEventId, StreamSealer};
use crate::mcp::protocol::ProtocolVersion;
use crate::stream::BoxError;
use crate::upstream::http::UpstreamPool;
use crate::upstream::queue::{MessageQueue, Pushed, QueueEnd};

/// The seed: the same cases on every run.
const SEED: u64 = 0x5eed_0011;
/// Cases per run.
const CASES: u32 = 3000;
/// Most operations per case.
const MAX_OPS: usize = 100;
/// The request's JSON-RPC id.
const REQUEST_ID: u64 = 7;
/// Far beyond any test: the paused clock never gets there.
const NEVER: Duration = Duration::from_secs(30 * 24 * 3600);
const CHILD_GONE: &str = "the stdio server closed its stdout";

#[derive(Debug, Clone)]
struct Params {
    limits: ReplayLimits,
    /// Most messages the upstream queue holds before the producer waits.
    queue_events: usize,
    /// 2025-11-25: the stream starts with the proxy's priming event.
    priming: bool,
}

#[derive(Debug, Clone)]
enum Op {
    /// The upstream writes `n` notifications, each with `pad` bytes more.
    Push { n: usize, pad: usize },
    /// The upstream ends: with the response, or the child dies.
    End { complete: bool },
    /// The client's connection is polled up to `n` times; a client with no
    /// connection resumes first.
    Poll { n: usize },
    /// The connection is cut: its last `lose_permille` ‰ of
    /// (`retain_bytes` + 150) bytes never arrive. With `stale`, the proxy
    /// has not noticed yet and may still write to it.
    Cut { lose_permille: usize, stale: bool },
    /// The oldest dead connection is polled up to `n` times (written, never
    /// received).
    PollStale { n: usize },
    /// The proxy notices the oldest dead connection is gone.
    DropStale,
    /// Spawned tasks run (the detached reader).
    Run,
}

fn params() -> impl Strategy<Value = Params> {
    // Events are 120 to 250 bytes: a retention of none, a few events, a few KB.
    let retain = prop_oneof![1 => Just(0usize), 3 => 1usize..=600, 2 => 600usize..=3000];
    (
        1usize..=12,
        retain,
        1usize..=1500,
        1usize..=8,
        any::<bool>(),
    )
        .prop_map(
            |(max_events, retain_bytes, extra, queue_events, priming)| Params {
                limits: ReplayLimits {
                    max_events,
                    max_bytes: retain_bytes + extra,
                    retain_bytes,
                },
                queue_events,
                priming,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..=8, 0usize..=120).prop_map(|(n, pad)| Op::Push { n, pad }),
        1 => any::<bool>().prop_map(|complete| Op::End { complete }),
        6 => (1usize..=6).prop_map(|n| Op::Poll { n }),
        3 => (prop_oneof![1 => Just(0usize), 4 => 0usize..=1500], proptest::bool::weighted(0.3))
            .prop_map(|(lose_permille, stale)| Op::Cut { lose_permille, stale }),
        2 => (1usize..=4).prop_map(|n| Op::PollStale { n }),
        1 => Just(Op::DropStale),
        2 => Just(Op::Run),
    ]
}

/// What the runs covered, summed over cases.
#[derive(Debug, Default)]
struct Stats {
    /// Cases that ended with the final response read.
    completed: Cell<u32>,
    /// Attaches refused (allowed: more than the retention was written).
    refused: Cell<u32>,
    /// Resumes that had to replay events the client lost.
    lossy_resumes: Cell<u32>,
    /// Connections that fell behind the buffer.
    fell_behind: Cell<u32>,
}

fn bump(c: &Cell<u32>) {
    c.set(c.get() + 1);
}

/// What polling a body gives.
type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

/// One connection of the client.
struct Conn {
    body: StreamBody,
    /// The sequence number the next event on it must have.
    next_seq: u64,
    /// Everything written to it since it attached.
    wire: BytesMut,
    done: bool,
    woken: Arc<Woken>,
    /// Its last poll was `Pending`: `Harness::stale_polls` then.
    waiting: Option<u64>,
}

impl Conn {
    fn new(body: StreamBody, from: u64) -> Self {
        Conn {
            body,
            next_seq: from,
            wire: BytesMut::new(),
            done: false,
            woken: Arc::new(Woken(AtomicBool::new(false))),
            waiting: None,
        }
    }

    /// Polls the body with this connection's waker. Also returns, when it
    /// was not woken since it last returned `Pending`, the stale polls then.
    fn poll(&mut self, stale_polls: u64) -> (Option<u64>, Polled) {
        let woken = self.woken.0.swap(false, Ordering::SeqCst);
        let waker = Waker::from(Arc::clone(&self.woken));
        let polled = self.body.poll_next(&mut Context::from_waker(&waker));
        let unwoken = self.waiting.filter(|_| !woken);
        self.waiting = polled.is_pending().then_some(stale_polls);
        (unwoken, polled)
    }
}

/// A waker that records that it was woken.
struct Woken(AtomicBool);

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The engine under test, its upstream, and the client.
struct Harness<'a> {
    rt: &'a Runtime,
    params: Params,
    key: ResumeKey,
    session: SessionId,
    stream: Arc<StreamShared>,
    queue: Arc<MessageQueue>,
    _registry: Arc<StreamRegistry>,
    _closing: watch::Sender<bool>,
    // The upstream.
    /// Messages waiting for room in the queue.
    backlog: VecDeque<Bytes>,
    next_number: u64,
    /// Notifications that entered the queue.
    pushed: u64,
    /// `Some(true)`: the response goes after the backlog.
    end: Option<bool>,
    finished: bool,
    // What the proxy wrote, to any connection.
    /// Each event's bytes by sequence number.
    events: BTreeMap<u64, Bytes>,
    /// The highest sequence number written.
    written: u64,
    // The client.
    live: Option<Conn>,
    stale: VecDeque<Conn>,
    last_id: Option<String>,
    last_seq: u64,
    next_progress: u64,
    finals: u32,
    /// An attach was refused: the client got its 410.
    refused: bool,
    /// Polls of dead connections so far.
    stale_polls: u64,
}

impl<'a> Harness<'a> {
    fn new(rt: &'a Runtime, params: Params) -> Self {
        let (closing_tx, closing) = watch::channel(false);
        let env = Arc::new(StreamEnv {
            pool: UpstreamPool::new(
                &http::Uri::from_static("http://127.0.0.1:9/mcp"),
                NEVER,
                crate::upstream::http::DEFAULT_UPSTREAM_READ_BUFFER,
            ),
            uri: http::Uri::from_static("http://127.0.0.1:9/mcp"),
            bearer: crate::auth::Credential::None,
            response_timeout: NEVER,
            reconnect: ReconnectConfig::default(),
            replay: params.limits,
            budget: Arc::new(crate::stream::budget::Budget::new(usize::MAX)),
            linger: NEVER,
            lingering: Default::default(),
            max_kept: 4,
            keepalive: NEVER,
            closing,
            cluster: None,
        });
        let key = ResumeKey([9; 16]);
        let session = SessionId::parse("engine-prop").expect("a valid session id");
        let id = StreamId(5);
        let queue = Arc::new(MessageQueue::new(params.queue_events, 1 << 20, false));
        let spec = PumpSpec {
            kind: StreamKind::Request(Some(Value::from(REQUEST_ID))),
            session: session.clone(),
            stream: id,
            sealer: Some(StreamSealer::new(&key, &session, id.0)),
            upstream_session: None,
            authorization: None,
            version: if params.priming {
                ProtocolVersion::V2025_11_25
            } else {
                ProtocolVersion::V2025_06_18
            },
            sink: None,
            resume_after: None,
            legacy: false,
        };
        let pump = Pump::new(
            PumpSource::Queue(Arc::clone(&queue)),
            spec,
            Arc::clone(&env),
        );
        let registry = Arc::new(StreamRegistry::default());
        let stream = StreamShared::start(&registry, id, pump, env);
        let body = stream.attach(1).expect("a new stream is held from 1");
        Harness {
            rt,
            params,
            key,
            session,
            stream,
            queue,
            _registry: registry,
            _closing: closing_tx,
            backlog: VecDeque::new(),
            next_number: 0,
            pushed: 0,
            end: None,
            finished: false,
            events: BTreeMap::new(),
            written: 0,
            live: Some(Conn::new(body, 1)),
            stale: VecDeque::new(),
            last_id: None,
            last_seq: 0,
            next_progress: 0,
            finals: 0,
            refused: false,
            stale_polls: 0,
        }
    }

    fn apply(&mut self, op: &Op, stats: &Stats) -> Result<(), TestCaseError> {
        self.produce()?;
        match *op {
            Op::Push { n, pad } => {
                if self.end.is_none() {
                    for _ in 0..n {
                        let msg = serde_json::json!({
                            "jsonrpc": "2.0",
                            "method": "notifications/progress",
                            "params": {"progressToken": 1, "progress": self.next_number, "pad": "x".repeat(pad)},
                        });
                        self.next_number += 1;
                        self.backlog.push_back(Bytes::from(msg.to_string()));
                    }
                }
            }
            Op::End { complete } => {
                if self.end.is_none() {
                    self.end = Some(complete);
                    if !complete {
                        // The child is gone: what it did not write never comes.
                        self.backlog.clear();
                        self.queue.finish(QueueEnd::Failed(Arc::from(CHILD_GONE)));
                        self.finished = true;
                    }
                }
            }
            Op::Poll { n } => {
                if self.live.is_none() && !self.resume(stats)? {
                    return Ok(());
                }
                for _ in 0..n {
                    if !self.poll_live(stats)? {
                        break;
                    }
                }
            }
            Op::Cut {
                lose_permille,
                stale,
            } => {
                if let Some(mut conn) = self.live.take() {
                    let lose = lose_permille * (self.params.limits.retain_bytes + 150) / 1000;
                    let kept = conn.wire.len().saturating_sub(lose);
                    self.receive(conn.wire.split_to(kept).freeze())?;
                    conn.wire.clear();
                    if stale && !conn.done {
                        self.stale.push_back(conn);
                    }
                }
            }
            Op::PollStale { n } => {
                if let Some(mut conn) = self.stale.pop_front() {
                    let mut open = true;
                    for _ in 0..n {
                        self.stale_polls += 1;
                        match conn.poll(self.stale_polls).1 {
                            Poll::Ready(Some(Ok(frame))) => {
                                let frame = frame.into_data().expect("a data frame");
                                self.delivered(&mut conn, &frame)?;
                                conn.wire.clear();
                            }
                            Poll::Ready(Some(Err(_)) | None) => {
                                open = false;
                                break;
                            }
                            Poll::Pending => break,
                        }
                    }
                    if open {
                        self.stale.push_front(conn);
                    }
                }
            }
            Op::DropStale => drop(self.stale.pop_front()),
            Op::Run => self.run_tasks(),
        }
        Ok(())
    }

    /// The producer: moves the backlog into the queue while it has room,
    /// then the response.
    fn produce(&mut self) -> Result<(), TestCaseError> {
        let mut cx = Context::from_waker(Waker::noop());
        while !self.backlog.is_empty() && self.queue.poll_room(&mut cx).is_ready() {
            let msg = self.backlog.pop_front().expect("not empty");
            prop_assert_eq!(self.queue.push(msg), Pushed::Queued);
            self.pushed += 1;
        }
        if self.backlog.is_empty()
            && self.end == Some(true)
            && !self.finished
            && self.queue.poll_room(&mut cx).is_ready()
        {
            let msg = serde_json::json!({
                "jsonrpc": "2.0", "id": REQUEST_ID, "result": {"sent": self.pushed},
            });
            prop_assert_eq!(
                self.queue.push(Bytes::from(msg.to_string())),
                Pushed::Queued
            );
            self.queue.finish(QueueEnd::Complete);
            self.finished = true;
        }
        Ok(())
    }

    /// Lets spawned tasks run; the clock stays put (no task parks the
    /// runtime without a limit).
    fn run_tasks(&self) {
        self.rt.block_on(async {
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
        });
    }

    /// Resumes from the last event kept. False: refused (legitimately).
    fn resume(&mut self, stats: &Stats) -> Result<bool, TestCaseError> {
        let from = match &self.last_id {
            Some(id) => {
                let parsed =
                    ClientEventId::parse(id).map_err(|e| TestCaseError::fail(format!("{e}")))?;
                prop_assert_eq!(parsed.seq, self.last_seq);
                parsed.seq + 1
            }
            None => 1,
        };
        // Bytes written after the event resumed from.
        let after: usize = self.events.range(from..).map(|(_, e)| e.len()).sum();
        match self.stream.attach(from) {
            Ok(body) => {
                if from <= self.written {
                    bump(&stats.lossy_resumes);
                }
                self.live = Some(Conn::new(body, from));
                Ok(true)
            }
            Err(NotHeld::Evicted) => {
                prop_assert!(
                    after > self.params.limits.retain_bytes,
                    "resume from {} refused with only {} bytes written after event {} (retain_bytes {})",
                    from,
                    after,
                    from - 1,
                    self.params.limits.retain_bytes
                );
                bump(&stats.refused);
                self.refused = true;
                Ok(false)
            }
            Err(e) => Err(TestCaseError::fail(format!("resume from {from}: {e:?}"))),
        }
    }

    /// Polls the live connection once. False: nothing more now.
    fn poll_live(&mut self, stats: &Stats) -> Result<bool, TestCaseError> {
        let Some(mut conn) = self.live.take() else {
            return Ok(false);
        };
        let (unwoken, polled) = conn.poll(self.stale_polls);
        if let Some(at) = unwoken {
            // Every waiting body is woken, even when a dead connection
            // polled the upstream after it.
            prop_assert!(
                polled.is_pending(),
                "the body was not woken, yet it had something to give (dead polls since: {})",
                self.stale_polls - at
            );
        }
        let more = match polled {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = frame.into_data().expect("a data frame");
                self.delivered(&mut conn, &frame)?;
                true
            }
            Poll::Ready(Some(Err(e))) => {
                prop_assert!(e.is::<FellBehind>(), "unexpected body error: {e}");
                bump(&stats.fell_behind);
                // The body ended with an error: the client got what came
                // before it, and resumes.
                let wire = std::mem::take(&mut conn.wire).freeze();
                drop(conn);
                return self.receive(wire).map(|()| false);
            }
            Poll::Ready(None) => {
                conn.done = true;
                false
            }
            Poll::Pending => false,
        };
        self.live = Some(conn);
        Ok(more)
    }

    /// A frame written to `conn`: consecutive events from where it is, the
    /// same bytes as any earlier delivery of them.
    fn delivered(&mut self, conn: &mut Conn, frame: &Bytes) -> Result<(), TestCaseError> {
        prop_assert!(!frame.is_empty(), "empty frame");
        let mut at = 0;
        while at < frame.len() {
            let Some(len) = frame[at..].windows(2).position(|w| w == b"\n\n") else {
                return Err(TestCaseError::fail(format!(
                    "frame ends inside an event: {:?}",
                    String::from_utf8_lossy(&frame[at..])
                )));
            };
            let event = frame.slice(at..at + len + 2);
            at += len + 2;
            let text =
                std::str::from_utf8(&event).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let id = text
                .strip_prefix("id: ")
                .and_then(|t| t.split('\n').next())
                .ok_or_else(|| TestCaseError::fail(format!("event without an id: {text:?}")))?;
            let parsed =
                ClientEventId::parse(id).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(
                parsed.verify(&self.key, &self.session).is_ok(),
                "bad tag: {}",
                id
            );
            prop_assert_eq!(
                parsed.seq,
                conn.next_seq,
                "a connection skipped or repeated an event"
            );
            conn.next_seq += 1;
            match self.events.get(&parsed.seq) {
                Some(old) => prop_assert_eq!(old, &event, "event {} changed", parsed.seq),
                None => {
                    prop_assert_eq!(
                        parsed.seq,
                        self.events.len() as u64 + 1,
                        "new event out of order"
                    );
                    self.events.insert(parsed.seq, event);
                }
            }
            self.written = self.written.max(parsed.seq);
        }
        conn.wire.extend_from_slice(frame);
        Ok(())
    }

    /// The client reads the bytes that arrived on one connection: only
    /// whole events count.
    fn receive(&mut self, kept: Bytes) -> Result<(), TestCaseError> {
        let mut dec = Decoder::default();
        dec.push(kept);
        for item in dec.by_ref() {
            let item = item.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let (id, data) = match item {
                SseItem::Event(ev) => (ev.id, ev.data),
                SseItem::IdOnly(id) => (id, Bytes::new()),
                SseItem::Retry(ms) => return Err(TestCaseError::fail(format!("retry: {ms}"))),
            };
            let id = id.ok_or_else(|| TestCaseError::fail("an event without an id"))?;
            let parsed =
                ClientEventId::parse(&id).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(
                parsed.seq,
                self.last_seq + 1,
                "the client got event {} after {}",
                parsed.seq,
                self.last_seq
            );
            self.last_seq = parsed.seq;
            self.last_id = Some(id.to_string());
            prop_assert_eq!(self.finals, 0, "an event after the final response");
            if data.is_empty() {
                prop_assert!(
                    self.params.priming && parsed.seq == 1,
                    "a priming event at {}",
                    parsed.seq
                );
                continue;
            }
            let msg: Value =
                serde_json::from_slice(&data).map_err(|e| TestCaseError::fail(e.to_string()))?;
            if msg["method"] == "notifications/progress" {
                prop_assert_eq!(
                    msg["params"]["progress"].as_u64(),
                    Some(self.next_progress),
                    "progress out of order"
                );
                self.next_progress += 1;
                continue;
            }
            prop_assert_eq!(
                msg["id"].as_u64(),
                Some(REQUEST_ID),
                "not the response: {}",
                msg
            );
            prop_assert!(self.finished, "a response before the upstream ended");
            prop_assert_eq!(
                self.next_progress,
                self.pushed,
                "the response came before all notifications"
            );
            if self.end == Some(true) {
                prop_assert_eq!(msg["result"]["sent"].as_u64(), Some(self.pushed));
            } else {
                let cause = msg["error"]["message"].as_str().unwrap_or_default();
                prop_assert!(cause.contains(CHILD_GONE), "not the child's end: {}", msg);
            }
            self.finals += 1;
        }
        Ok(())
    }

    /// The upstream ends (if it did not), the proxy notices every dead
    /// connection, and the client reads to the end, resuming as needed.
    fn finish(&mut self, stats: &Stats) -> Result<(), TestCaseError> {
        self.stale.clear();
        if self.end.is_none() {
            self.end = Some(true);
        }
        for _ in 0..100_000 {
            self.produce()?;
            if self.live.is_none() && !self.resume(stats)? {
                return Ok(());
            }
            self.poll_live(stats)?;
            if let Some(conn) = self.live.take_if(|c| c.done) {
                let wire = conn.wire.clone().freeze();
                drop(conn);
                self.receive(wire)?;
                prop_assert_eq!(self.finals, 1, "no final response at the end");
                prop_assert_eq!(self.next_progress, self.pushed);
                bump(&stats.completed);
                return Ok(());
            }
        }
        Err(TestCaseError::fail("the stream never ended"))
    }
}

fn run_case(params: Params, ops: &[Op], stats: &Stats) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let _enter = rt.enter();
    let start = tokio::time::Instant::now();
    let mut h = Harness::new(&rt, params);
    for op in ops {
        h.apply(op, stats)?;
        if h.refused {
            return Ok(());
        }
    }
    h.finish(stats)?;
    drop(h);
    prop_assert_eq!(tokio::time::Instant::now(), start, "the clock moved");
    Ok(())
}

#[test]
fn exactly_once_in_order_through_cuts_and_eviction() {
    let config = Config {
        cases: CASES,
        rng_seed: RngSeed::Fixed(SEED),
        failure_persistence: None,
        ..Config::default()
    };
    let stats = Stats::default();
    let strategy = (params(), proptest::collection::vec(op(), 1..=MAX_OPS));
    let result =
        TestRunner::new(config).run(&strategy, |(params, ops)| run_case(params, &ops, &stats));
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, (params, ops))) => {
            panic!("{why}\nminimal case:\n{params:#?}\n{ops:#?}")
        }
        Err(e) => panic!("{e}"),
    }
    // The runs reached what they are meant to test.
    assert!(stats.completed.get() > CASES / 2, "{stats:?}");
    assert!(stats.lossy_resumes.get() > 0, "{stats:?}");
    assert!(stats.refused.get() > 0, "{stats:?}");
}
