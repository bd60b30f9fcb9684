//! Resumable session streams: one ordered source per stream, the
//! [`ReplayBuffer`], fed by one upstream reader (the [`Pump`]) and read by
//! client connections through cursors.
//!
//! # Who reads the upstream
//!
//! The pump sits in the stream's shared state. A client body that has
//! delivered everything in the buffer takes the pump, polls it in its own
//! task (decode, dedup with the `EventTracker`, seal ids, encode), appends
//! the batch to the buffer and sends the same bytes on: with a client
//! attached the per-event path is the old one plus a MAC, with no task hop.
//! When the last client detaches before the stream is complete, one task
//! per stream takes over ([`run_detached`]): it keeps reading the upstream
//! into the buffer (a dropped connection is not a cancellation), pausing
//! when the buffer is full of events no client was sent, and releases the
//! stream after the linger time if no client came back.
//!
//! # Why no duplicate and no gap
//!
//! Every event gets its sequence number when it enters the buffer, under
//! the stream's lock; a client reads the buffer from its cursor, and reads
//! live events the same way. Replay and live delivery are one read of one
//! sequence, so there is no race between them to lose or repeat an event.
//!
//! # Upstream reconnects
//!
//! When the upstream stream ends or breaks before it is complete (a POST
//! stream is complete once the JSON-RPC response went out; a GET stream
//! never is), the pump reconnects with GET and `Last-Event-ID` = the
//! tracker's resumption point, paced by the transport's
//! [`ReconnectPolicy`] (which honours `retry:`). The tracker drops replayed
//! events already sent. When it cannot reconnect, a request's stream gets
//! a JSON-RPC error naming the cause as its last event, then ends.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use http_body::{Body, Frame};
use http_body_util::Full;
use parking_lot::Mutex;
use serde_json::Value;
use shadowcat_session::{SessionId, StreamId};
use shadowcat_transport::sse::{
    DecodeError, Decoder, OutgoingEvent, SseItem, encode_comment, put_decimal,
};
use shadowcat_transport::{
    Decision, EventTracker, Failure, ReconnectConfig, ReconnectPolicy, Recorded, TrackerConfig,
};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::body::{BoxError, Closing, StreamSlot};
use crate::event_id::StreamSealer;
use crate::protocol::ProtocolVersion;
use crate::queue::{MessageQueue, QueueEnd};
use crate::replay::{ReplayBuffer, ReplayLimits};
use crate::sink::WriterSink;
use crate::upstream_conn::{UpstreamBody, UpstreamPool};

/// Initial capacity of a pump's encoding buffer.
const ENC_CAPACITY: usize = 8 * 1024;
/// Events already received are sent together up to this many bytes.
pub(crate) const COALESCE_BYTES: usize = 16 * 1024;
/// Waiter id of the detached reader task.
const DRAIN_WAITER: u64 = u64::MAX;

/// What every stream of the proxy shares: how to reach the upstream and
/// the stream settings.
#[derive(Debug)]
pub(crate) struct StreamEnv {
    /// Connections to the upstream (reconnects go there too).
    pub(crate) pool: Arc<UpstreamPool>,
    pub(crate) uri: http::Uri,
    pub(crate) bearer: Option<HeaderValue>,
    pub(crate) response_timeout: Duration,
    pub(crate) reconnect: ReconnectConfig,
    pub(crate) replay: ReplayLimits,
    pub(crate) linger: Duration,
    /// Complete streams kept for `linger`, released by one sweeper.
    pub(crate) lingering: Arc<crate::linger::Linger>,
    pub(crate) max_kept: usize,
    pub(crate) keepalive: Duration,
    pub(crate) closing: watch::Receiver<bool>,
}

type Connecting = Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, String>> + Send>>;

impl StreamEnv {
    /// A GET toward the upstream for `session`'s stream, resuming after
    /// `last_event_id` when given.
    pub(crate) fn resume_request(
        &self,
        upstream_session: Option<&HeaderValue>,
        version: ProtocolVersion,
        last_event_id: Option<&str>,
    ) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.method_mut() = Method::GET;
        *req.uri_mut() = self.uri.clone();
        let h = req.headers_mut();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        if let Ok(v) = HeaderValue::from_str(version.as_str()) {
            h.insert(crate::reverse::MCP_PROTOCOL_VERSION, v);
        }
        if let Some(id) = last_event_id
            && let Ok(v) = HeaderValue::from_bytes(id.as_bytes())
        {
            h.insert(crate::reverse::LAST_EVENT_ID, v);
        }
        if let Some(uid) = upstream_session {
            h.insert(crate::reverse::MCP_SESSION_ID, uid.clone());
        }
        if let Some(bearer) = &self.bearer {
            h.insert(header::AUTHORIZATION, bearer.clone());
        }
        req
    }

    /// Sends `req` through the pool, bounded by the response timeout.
    fn connect(&self, req: Request<Full<Bytes>>) -> Connecting {
        let timeout = self.response_timeout;
        let pool = Arc::clone(&self.pool);
        Box::pin(async move {
            match tokio::time::timeout(timeout, pool.request(req)).await {
                Ok(Ok(resp)) => Ok(resp),
                Ok(Err(e)) => Err(format!("the upstream could not be reached: {e}")),
                Err(_) => Err(format!("the upstream did not answer within {timeout:?}")),
            }
        })
    }
}

/// What a stream carries.
#[derive(Debug, Clone)]
pub(crate) enum StreamKind {
    /// A POST request's stream; complete once its response went out. The
    /// request's JSON-RPC id when known (not after a restart).
    Request(Option<Value>),
    /// A GET stream; never complete.
    Get,
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The response went out (or the upstream closed a request stream
    /// after it).
    Complete,
    /// The upstream could not be resumed; the cause was sent and logged.
    Failed,
    /// Given up by the proxy: no client came back in time, the session
    /// ended, the client resumed it elsewhere, or the proxy is stopping.
    Released,
}

#[derive(Debug)]
enum Cause {
    Ended,
    Broken(String),
    Malformed(DecodeError),
}

/// Where a pump reads its stream from.
#[derive(Debug)]
pub(crate) enum PumpSource {
    /// An upstream HTTP response body (SSE) that drives its connection.
    Upstream(UpstreamBody),
    /// Messages a stdio child's router put on this stream's queue.
    Queue(Arc<MessageQueue>),
}

enum Source {
    Body(UpstreamBody),
    Queue(Arc<MessageQueue>),
    Dropped(Cause),
    Waiting(Pin<Box<Sleep>>),
    Connecting(Connecting),
    Done,
}

/// Decodes upstream chunks and encodes sealed client events.
struct Forwarder {
    decoder: Decoder,
    tracker: EventTracker,
    /// Seals client ids (SSE output); `None`: the output is one JSON-RPC
    /// message per line (the stdio forward proxy).
    sealer: Option<StreamSealer>,
    enc: BytesMut,
    /// Messages taken from a queue, reused batch to batch.
    taken: Vec<Bytes>,
    /// End offsets in `enc` of the events of the current batch.
    marks: Vec<usize>,
    last_data: Option<Bytes>,
    /// The upstream's last `retry:`, for the reconnect policy.
    server_retry: Option<Duration>,
    healthy: bool,
    events: u64,
    duplicates: u64,
    /// The client speaks 2025-11-25 or later: priming events (an id and
    /// empty `data`) are part of its protocol. Older clients get id-only
    /// blocks instead: some crash on an empty data line.
    prime_clients: bool,
}

/// Ends a priming block: `data:` with an empty value for clients that
/// expect priming events, a bare blank line (id only) for the others.
fn end_priming(enc: &mut BytesMut, prime_clients: bool) {
    if prime_clients {
        enc.put_slice(b"data:\n\n");
    } else {
        enc.put_u8(b'\n');
    }
}

impl Forwarder {
    /// The proxy's own priming event at the start of a request's stream, so
    /// a client cut before the first message still holds an id to resume
    /// from (2025-11-25 and later; a no-op for older clients).
    fn put_priming(&mut self, seq: &mut u64) {
        let Some(sealer) = &self.sealer else {
            return;
        };
        if !self.prime_clients {
            return;
        }
        sealer.write_id_line(&mut self.enc, *seq, self.tracker.last_event_id());
        end_priming(&mut self.enc, true);
        *seq += 1;
        self.marks.push(self.enc.len());
    }

    /// Decodes `chunk`; every deliverable event gets sequence number `*seq`
    /// (then incremented) and is encoded into `enc`.
    fn forward(&mut self, chunk: Bytes, seq: &mut u64) -> Result<(), DecodeError> {
        self.ensure_capacity();
        self.decoder.push(chunk);
        for item in self.decoder.by_ref() {
            match item? {
                SseItem::Event(ev) => {
                    let own = if ev.has_own_id {
                        ev.id.as_deref().filter(|s| !s.is_empty())
                    } else {
                        None
                    };
                    if let Some(id) = own
                        && self.tracker.record(id) == Recorded::Duplicate
                    {
                        self.duplicates += 1;
                        continue;
                    }
                    let Some(sealer) = &self.sealer else {
                        // Lines: data only; never an empty-data event.
                        if !ev.data.is_empty() {
                            put_line(&mut self.enc, &ev.data);
                            self.last_data = Some(ev.data.clone());
                            self.events += 1;
                            *seq += 1;
                            self.marks.push(self.enc.len());
                        }
                        self.healthy = true;
                        continue;
                    };
                    sealer.write_id_line(&mut self.enc, *seq, self.tracker.last_event_id());
                    if ev.is_priming() {
                        // A priming block: the client's last event id
                        // moves; never a JSON-RPC message.
                        end_priming(&mut self.enc, self.prime_clients);
                    } else {
                        let mut out = OutgoingEvent::new().data(&ev.data);
                        if let Some(name) = ev.event.as_deref() {
                            out = out.event(name);
                        }
                        // Decoded names hold no line break: cannot fail.
                        let _ = out.encode(&mut self.enc);
                        self.last_data = Some(ev.data.clone());
                        self.events += 1;
                    }
                }
                SseItem::IdOnly(id) => {
                    let Some(id) = id.as_deref().filter(|s| !s.is_empty()) else {
                        continue;
                    };
                    if self.tracker.record(id) == Recorded::Duplicate {
                        self.duplicates += 1;
                        continue;
                    }
                    let Some(sealer) = &self.sealer else {
                        self.healthy = true;
                        continue;
                    };
                    sealer.write_id_line(&mut self.enc, *seq, self.tracker.last_event_id());
                    end_priming(&mut self.enc, self.prime_clients);
                }
                SseItem::Retry(ms) => {
                    self.server_retry = Some(Duration::from_millis(ms));
                    let Some(sealer) = &self.sealer else {
                        continue;
                    };
                    // Passed on as its own id-only block: the client's
                    // reconnect delay follows the server's.
                    sealer.write_id_line(&mut self.enc, *seq, self.tracker.last_event_id());
                    self.enc.put_slice(b"retry: ");
                    put_decimal(&mut self.enc, ms);
                    self.enc.put_slice(b"\n\n");
                }
            }
            *seq += 1;
            self.marks.push(self.enc.len());
            self.healthy = true;
        }
        Ok(())
    }

    /// An idle stream holds no encoding buffer: it is allocated with the
    /// first input.
    fn ensure_capacity(&mut self) {
        if self.enc.capacity() == 0 {
            self.enc = BytesMut::with_capacity(ENC_CAPACITY);
        }
    }

    /// Encodes one message from a queue as the event with number `*seq`.
    fn put_message(&mut self, msg: &Bytes, seq: &mut u64) {
        self.ensure_capacity();
        match &self.sealer {
            Some(sealer) => {
                sealer.write_id_line(&mut self.enc, *seq, None);
                // A line from the child holds no line break: cannot fail.
                let _ = OutgoingEvent::new().data(msg).encode(&mut self.enc);
            }
            None => put_line(&mut self.enc, msg),
        }
        self.last_data = Some(msg.clone());
        self.events += 1;
        *seq += 1;
        self.marks.push(self.enc.len());
    }

    /// True when the last message sent was a JSON-RPC response.
    fn response_seen(&self) -> bool {
        #[derive(serde::Deserialize)]
        struct Probe {
            #[serde(default)]
            method: Option<serde::de::IgnoredAny>,
            #[serde(default)]
            id: Option<serde::de::IgnoredAny>,
            #[serde(default)]
            result: Option<serde::de::IgnoredAny>,
            #[serde(default)]
            error: Option<serde::de::IgnoredAny>,
        }
        let Some(data) = &self.last_data else {
            return false;
        };
        serde_json::from_slice::<Probe>(data).is_ok_and(|p| {
            p.method.is_none() && p.id.is_some() && (p.result.is_some() || p.error.is_some())
        })
    }
}

/// One JSON-RPC message as one line: JSON holds no raw line break inside
/// strings, so breaks between tokens become spaces.
fn put_line(enc: &mut BytesMut, data: &[u8]) {
    let at = enc.len();
    enc.extend_from_slice(data);
    for b in &mut enc[at..] {
        if *b == b'\n' || *b == b'\r' {
            *b = b' ';
        }
    }
    enc.put_u8(b'\n');
}

/// The upstream side of one stream: reads, reconnects, encodes.
pub(crate) struct Pump {
    source: Source,
    fw: Forwarder,
    policy: ReconnectPolicy,
    kind: StreamKind,
    env: Arc<StreamEnv>,
    upstream_session: Option<HeaderValue>,
    version: ProtocolVersion,
    sink: Option<WriterSink>,
    session: SessionId,
    stream: StreamId,
    _slot: Option<StreamSlot>,
    /// Whether the stream's own priming event went out.
    primed: bool,
}

impl std::fmt::Debug for Pump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pump")
            .field("session", &self.session)
            .field("stream", &self.stream.0)
            .field("kind", &self.kind)
            .field("events", &self.fw.events)
            .finish_non_exhaustive()
    }
}

/// What one poll of the pump produced.
pub(crate) enum Pumped {
    /// A batch of events, cut at the pump's marks.
    Events(Bytes),
    /// The stream is over; with a last event (the JSON-RPC error) if any.
    Ended(End, Option<Bytes>),
}

/// Everything needed to start a pump.
#[derive(Debug)]
pub(crate) struct PumpSpec {
    pub(crate) kind: StreamKind,
    pub(crate) session: SessionId,
    pub(crate) stream: StreamId,
    /// `None`: one JSON-RPC message per line instead of SSE.
    pub(crate) sealer: Option<StreamSealer>,
    pub(crate) upstream_session: Option<HeaderValue>,
    pub(crate) version: ProtocolVersion,
    pub(crate) sink: Option<WriterSink>,
    pub(crate) slot: Option<StreamSlot>,
    /// The upstream event id the stream resumes after, if it does.
    pub(crate) resume_after: Option<String>,
}

impl Pump {
    pub(crate) fn new(source: PumpSource, spec: PumpSpec, env: Arc<StreamEnv>) -> Self {
        let tracker = match &spec.resume_after {
            Some(id) => EventTracker::resuming_from(id, TrackerConfig::default()),
            None => EventTracker::new(),
        };
        let source = match source {
            PumpSource::Upstream(body) => Source::Body(body),
            PumpSource::Queue(q) => Source::Queue(q),
        };
        Pump {
            source,
            fw: Forwarder {
                decoder: Decoder::default(),
                tracker,
                sealer: spec.sealer,
                enc: BytesMut::new(),
                taken: Vec::new(),
                marks: Vec::with_capacity(16),
                last_data: None,
                server_retry: None,
                healthy: false,
                events: 0,
                duplicates: 0,
                prime_clients: spec.version >= ProtocolVersion::V2025_11_25,
            },
            primed: false,
            policy: ReconnectPolicy::new(env.reconnect),
            kind: spec.kind,
            env,
            upstream_session: spec.upstream_session,
            version: spec.version,
            sink: spec.sink,
            session: spec.session,
            stream: spec.stream,
            _slot: spec.slot,
        }
    }

    /// End offsets of the last batch's events.
    pub(crate) fn marks(&self) -> &[usize] {
        &self.fw.marks
    }

    /// Drives the upstream until it produced events, ended, or has nothing.
    /// The first event gets sequence number `next_seq`.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>, next_seq: u64) -> Poll<Pumped> {
        self.fw.marks.clear();
        let mut seq = next_seq;
        if !self.primed {
            self.primed = true;
            // Request streams only: a client cut before the first message
            // needs an id to resume with. A GET stream without one simply
            // reconnects without Last-Event-ID.
            if matches!(self.kind, StreamKind::Request(_)) {
                self.fw.put_priming(&mut seq);
            }
        }
        loop {
            match &mut self.source {
                Source::Body(body) => {
                    let mut dropped = None;
                    loop {
                        match Pin::new(&mut *body).poll_frame(cx) {
                            Poll::Ready(Some(Ok(frame))) => {
                                let Ok(chunk) = frame.into_data() else {
                                    continue;
                                };
                                if let Err(e) = self.fw.forward(chunk, &mut seq) {
                                    dropped = Some(Cause::Malformed(e));
                                    break;
                                }
                                if self.fw.enc.len() >= COALESCE_BYTES {
                                    break;
                                }
                            }
                            Poll::Ready(Some(Err(e))) => {
                                dropped = Some(Cause::Broken(e.to_string()));
                                break;
                            }
                            Poll::Ready(None) => {
                                dropped = Some(Cause::Ended);
                                break;
                            }
                            Poll::Pending => break,
                        }
                    }
                    let pending = dropped.is_none();
                    if let Some(cause) = dropped {
                        self.source = Source::Dropped(cause);
                    }
                    if !self.fw.marks.is_empty() {
                        self.after_batch(seq);
                        return Poll::Ready(Pumped::Events(self.fw.enc.split().freeze()));
                    }
                    if pending {
                        return Poll::Pending;
                    }
                }
                Source::Queue(q) => {
                    let q = Arc::clone(q);
                    let mut taken = std::mem::take(&mut self.fw.taken);
                    let polled = q.poll_drain(cx, &mut taken, COALESCE_BYTES);
                    for msg in taken.drain(..) {
                        self.fw.put_message(&msg, &mut seq);
                    }
                    self.fw.taken = taken;
                    // Whatever was encoded (the priming event included)
                    // goes out now, as its own events; a queue's end stays
                    // and is seen on the next poll.
                    if !self.fw.marks.is_empty() {
                        self.after_batch(seq);
                        return Poll::Ready(Pumped::Events(self.fw.enc.split().freeze()));
                    }
                    match polled {
                        Poll::Ready(None) => continue,
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Some(QueueEnd::Complete)) => {
                            self.source = Source::Done;
                            return Poll::Ready(Pumped::Ended(End::Complete, None));
                        }
                        Poll::Ready(Some(QueueEnd::Failed(cause))) => {
                            return Poll::Ready(self.fail(&cause, seq));
                        }
                    }
                }
                Source::Dropped(_) => {
                    let Source::Dropped(cause) = std::mem::replace(&mut self.source, Source::Done)
                    else {
                        unreachable!("matched above")
                    };
                    if self.fw.decoder.finish() {
                        tracing::debug!(session = %self.session, stream = self.stream.0, "upstream stream ended mid-event; partial event dropped");
                    }
                    match self.after_drop(cause) {
                        Ok(None) => return Poll::Ready(Pumped::Ended(End::Complete, None)),
                        Ok(Some(delay)) => {
                            self.source = Source::Waiting(Box::pin(tokio::time::sleep(delay)));
                        }
                        Err(cause) => return Poll::Ready(self.fail(&cause, seq)),
                    }
                }
                Source::Waiting(sleep) => {
                    ready!(sleep.as_mut().poll(cx));
                    let last = self.fw.tracker.last_event_id();
                    let req =
                        self.env
                            .resume_request(self.upstream_session.as_ref(), self.version, last);
                    metrics::counter!("shadowcat_upstream_reconnects_total").increment(1);
                    tracing::debug!(session = %self.session, stream = self.stream.0, last_event_id = ?last, "reconnecting to the upstream");
                    self.source = Source::Connecting(self.env.connect(req));
                }
                Source::Connecting(fut) => {
                    let answer = ready!(fut.as_mut().poll(cx));
                    let failure = match answer {
                        Ok(resp)
                            if resp.status().is_success()
                                && crate::reverse::is_sse(resp.headers()) =>
                        {
                            self.source = Source::Body(resp.into_body());
                            continue;
                        }
                        Ok(resp) if resp.status().is_success() => {
                            let cause = format!(
                                "the upstream answered the reconnect with HTTP {} but no event stream",
                                resp.status()
                            );
                            return Poll::Ready(self.fail(&cause, seq));
                        }
                        Ok(resp) => Failure::Status {
                            status: resp.status().as_u16(),
                            retry_after: resp
                                .headers()
                                .get(header::RETRY_AFTER)
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.trim().parse::<u64>().ok())
                                .map(Duration::from_secs),
                        },
                        Err(e) => {
                            tracing::debug!(session = %self.session, stream = self.stream.0, error = %e, "upstream reconnect failed");
                            Failure::Connect
                        }
                    };
                    match self.decide(failure) {
                        Ok(delay) => {
                            self.source = Source::Waiting(Box::pin(tokio::time::sleep(delay)));
                        }
                        Err(cause) => return Poll::Ready(self.fail(&cause, seq)),
                    }
                }
                Source::Done => return Poll::Ready(Pumped::Ended(End::Failed, None)),
            }
        }
    }

    fn after_batch(&mut self, next_seq: u64) {
        if std::mem::take(&mut self.fw.healthy) {
            self.policy.on_healthy();
        }
        if let Some(retry) = self.fw.server_retry.take() {
            self.policy.set_server_retry(retry);
        }
        if let Some(sink) = &self.sink {
            sink.point(self.fw.tracker.last_event_id(), next_seq - 1);
        }
    }

    /// `Ok(None)`: complete; `Ok(Some(delay))`: reconnect after `delay`;
    /// `Err(cause)`: cannot go on.
    fn after_drop(&mut self, cause: Cause) -> Result<Option<Duration>, String> {
        if let Some(retry) = self.fw.server_retry.take() {
            self.policy.set_server_retry(retry);
        }
        match cause {
            Cause::Malformed(e) => {
                return Err(format!("the upstream's event stream was rejected: {e}"));
            }
            Cause::Broken(e) => {
                tracing::debug!(session = %self.session, stream = self.stream.0, error = %e, "upstream stream broke");
            }
            Cause::Ended => {}
        }
        if let StreamKind::Request(_) = self.kind {
            if self.fw.response_seen() {
                return Ok(None);
            }
            if self.fw.tracker.last_event_id().is_none() {
                return Err(
                    "the upstream stream ended before the response and sent no event id to resume from"
                        .to_owned(),
                );
            }
        }
        self.decide(Failure::EndedEarly).map(Some)
    }

    fn decide(&mut self, failure: Failure) -> Result<Duration, String> {
        match self.policy.on_failure(failure) {
            Decision::Retry { delay, .. } => Ok(delay),
            Decision::SessionExpired => {
                Err("the upstream no longer knows the session (HTTP 404)".to_owned())
            }
            Decision::GiveUp(g) => Err(format!("the upstream stream could not be resumed: {g}")),
        }
    }

    fn fail(&mut self, cause: &str, seq: u64) -> Pumped {
        self.source = Source::Done;
        metrics::counter!("shadowcat_upstream_reconnect_failures_total").increment(1);
        tracing::warn!(session = %self.session, stream = self.stream.0, cause, "upstream stream lost; ending the client's stream");
        let StreamKind::Request(id) = &self.kind else {
            return Pumped::Ended(End::Failed, None);
        };
        let body = serde_json::json!({
            "jsonrpc": "2.0",
            "id": id.clone().unwrap_or(Value::Null),
            "error": {"code": crate::jsonrpc::SERVER_ERROR, "message": cause},
        });
        let body = body.to_string();
        match &self.fw.sealer {
            Some(sealer) => {
                sealer.write_id_line(&mut self.fw.enc, seq, self.fw.tracker.last_event_id());
                let _ = OutgoingEvent::new()
                    .data(body.as_bytes())
                    .encode(&mut self.fw.enc);
            }
            None => put_line(&mut self.fw.enc, body.as_bytes()),
        }
        Pumped::Ended(End::Failed, Some(self.fw.enc.split().freeze()))
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        if let (Source::Queue(q), StreamKind::Request(_)) = (&self.source, &self.kind) {
            // A request's queue has one reader: the router stops feeding it.
            q.abandon();
        }
        metrics::counter!("shadowcat_sse_events_total").increment(self.fw.events);
        if self.fw.duplicates > 0 {
            metrics::counter!("shadowcat_sse_duplicates_dropped_total")
                .increment(self.fw.duplicates);
        }
        if matches!(self.source, Source::Done)
            && let Some(sink) = &self.sink
        {
            sink.end();
        }
        tracing::debug!(session = %self.session, stream = self.stream.0, events = self.fw.events, duplicates = self.fw.duplicates, "upstream side of the stream closed");
    }
}

struct StreamState {
    buffer: ReplayBuffer,
    /// `None` while someone polls it, or once the stream ended.
    pump: Option<Box<Pump>>,
    end: Option<End>,
    attached: u32,
    /// Bumped on every attach: tells a detached reader it was superseded.
    generation: u64,
    next_subscriber: u64,
    waiters: Vec<(u64, Waker)>,
    /// With no client attached: released by the linger sweeper at this
    /// time.
    keep_until: Option<Instant>,
}

impl StreamState {
    fn register(&mut self, who: u64, waker: &Waker) {
        if let Some((_, w)) = self.waiters.iter_mut().find(|(id, _)| *id == who) {
            if !w.will_wake(waker) {
                w.clone_from(waker);
            }
        } else {
            self.waiters.push((who, waker.clone()));
        }
    }

    fn wake_others(&mut self, me: u64) {
        self.waiters.retain(|(id, w)| {
            if *id == me {
                true
            } else {
                w.wake_by_ref();
                false
            }
        });
    }

    fn append(&mut self, batch: &Bytes, marks: &[usize]) {
        let mut from = 0;
        for &to in marks {
            self.buffer.push(batch.slice(from..to));
            from = to;
        }
    }
}

/// One resumable stream of a session.
pub(crate) struct StreamShared {
    pub(crate) id: StreamId,
    state: Mutex<StreamState>,
    registry: Weak<StreamRegistry>,
    env: Arc<StreamEnv>,
}

impl std::fmt::Debug for StreamShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamShared")
            .field("id", &self.id.0)
            .finish_non_exhaustive()
    }
}

/// Why a client cannot resume from a stream's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotHeld {
    /// The events after the client's position were evicted: more than the
    /// retention was written after it.
    Evicted,
    /// The stream was released.
    Released,
}

impl NotHeld {
    /// The limit that was exceeded (a metric label).
    pub(crate) fn limit(self) -> &'static str {
        match self {
            NotHeld::Evicted => "replay_retain_bytes",
            NotHeld::Released => "detached_linger",
        }
    }

    /// Why, for a person: the limit and its value.
    pub(crate) fn cause(self, env: &StreamEnv) -> String {
        match self {
            NotHeld::Evicted => format!(
                "the proxy no longer holds the events after it: more than replay_retain_bytes ({} bytes) were written to the client after it",
                env.replay.retain_bytes
            ),
            NotHeld::Released => format!(
                "the proxy released the stream: no client came back within detached_linger ({:?}), or it was one of more than max_kept_complete_streams ({}) complete streams",
                env.linger, env.max_kept
            ),
        }
    }
}

impl StreamShared {
    /// A new stream read from `pump`, registered in `registry`.
    pub(crate) fn start(
        registry: &Arc<StreamRegistry>,
        id: StreamId,
        pump: Pump,
        env: Arc<StreamEnv>,
    ) -> Arc<Self> {
        let stream = Arc::new(StreamShared {
            id,
            state: Mutex::new(StreamState {
                buffer: ReplayBuffer::new(env.replay, 1),
                pump: Some(Box::new(pump)),
                end: None,
                attached: 0,
                generation: 0,
                next_subscriber: 0,
                waiters: Vec::new(),
                keep_until: None,
            }),
            registry: Arc::downgrade(registry),
            env,
        });
        registry.insert(Arc::clone(&stream));
        stream
    }

    /// Attaches a client that wants the events from `from` on.
    pub(crate) fn attach(self: &Arc<Self>, from: u64) -> Result<StreamBody, NotHeld> {
        let mut st = self.state.lock();
        if st.end == Some(End::Released) {
            return Err(NotHeld::Released);
        }
        if !st.buffer.reaches(from) {
            return Err(NotHeld::Evicted);
        }
        st.attached += 1;
        st.generation += 1;
        st.keep_until = None;
        let me = st.next_subscriber;
        st.next_subscriber += 1;
        // A detached reader stops; another client's body re-polls.
        st.wake_others(me);
        drop(st);
        let mut closing = self.env.closing.clone();
        Ok(StreamBody {
            stream: Arc::clone(self),
            me,
            cursor: from,
            out: BytesMut::new(),
            keepalive: Box::pin(tokio::time::sleep(self.env.keepalive)),
            closing: Box::pin(async move {
                let _ = closing.wait_for(|c| *c).await;
            }),
            done: false,
        })
    }

    /// Attaches a client from the first event no client was sent (a new
    /// GET on a stdio session takes over its GET stream).
    pub(crate) fn attach_unsent(self: &Arc<Self>) -> Result<StreamBody, NotHeld> {
        let from = {
            let st = self.state.lock();
            (st.buffer.written() + 1).max(st.buffer.first_seq())
        };
        self.attach(from)
    }

    /// Ends the stream now: the upstream side closes, the buffer goes,
    /// attached clients end.
    pub(crate) fn release(&self) {
        let pump = {
            let mut st = self.state.lock();
            st.end = Some(End::Released);
            st.buffer.clear();
            for (_, w) in st.waiters.drain(..) {
                w.wake();
            }
            st.pump.take()
        };
        drop(pump);
        if let Some(reg) = self.registry.upgrade() {
            reg.remove(self);
        }
    }

    /// Releases a stream no client came back to within its linger time.
    pub(crate) fn release_if_kept(&self, now: Instant) {
        let due = {
            let st = self.state.lock();
            st.attached == 0 && st.keep_until.is_some_and(|t| t <= now)
        };
        if due {
            tracing::debug!(
                stream = self.id.0,
                "no client came back for the stream within its linger time; releasing it"
            );
            self.release();
        }
    }

    /// The detached reader: reads the upstream into the buffer while no
    /// client is attached. Ready when a client attached (true) or the
    /// stream ended (false).
    fn poll_detached(&self, cx: &mut Context<'_>, generation: u64) -> Poll<bool> {
        loop {
            let mut st = self.state.lock();
            if st.attached > 0 || st.generation != generation {
                // The upstream may hold this task's waker: whoever waits
                // reads it from now on.
                st.waiters.retain(|(id, _)| *id != DRAIN_WAITER);
                st.wake_others(DRAIN_WAITER);
                return Poll::Ready(true);
            }
            if st.end.is_some() {
                return Poll::Ready(false);
            }
            st.buffer.evict();
            if st.buffer.is_full() {
                // Full of events a client may not have: stop reading, so
                // a resuming client gets everything.
                st.register(DRAIN_WAITER, cx.waker());
                return Poll::Pending;
            }
            let Some(mut pump) = st.pump.take() else {
                st.register(DRAIN_WAITER, cx.waker());
                return Poll::Pending;
            };
            let next = st.buffer.next_seq();
            drop(st);
            let polled = pump.poll(cx, next);
            let mut st = self.state.lock();
            match polled {
                Poll::Ready(Pumped::Events(batch)) => {
                    st.append(&batch, pump.marks());
                    st.pump = Some(pump);
                    st.wake_others(DRAIN_WAITER);
                }
                Poll::Ready(Pumped::Ended(end, last)) => {
                    if let Some(last) = last {
                        st.buffer.push(last);
                    }
                    st.end = Some(end);
                    st.wake_others(DRAIN_WAITER);
                    drop(st);
                    drop(pump);
                    return Poll::Ready(false);
                }
                Poll::Pending => {
                    st.pump = Some(pump);
                    st.register(DRAIN_WAITER, cx.waker());
                    return Poll::Pending;
                }
            }
        }
    }

    /// The last client went from a stream that is not complete: one task
    /// reads the upstream on into the buffer until a client attaches or
    /// the stream ends (the linger sweeper releases it meanwhile if no
    /// client comes back in time).
    fn read_detached(self: Arc<Self>, generation: u64) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.release();
            return;
        };
        rt.spawn(async move {
            let mut closing = self.env.closing.clone();
            let read = std::future::poll_fn(|cx| self.poll_detached(cx, generation));
            tokio::select! {
                _ = read => {}
                _ = closing.wait_for(|c| *c) => self.release(),
            }
        });
    }
}

/// One client's view of a stream: its cursor in the buffer.
pub(crate) struct StreamBody {
    stream: Arc<StreamShared>,
    me: u64,
    cursor: u64,
    out: BytesMut,
    keepalive: Pin<Box<Sleep>>,
    closing: Closing,
    done: bool,
}

impl std::fmt::Debug for StreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamBody")
            .field("stream", &self.stream.id.0)
            .field("cursor", &self.cursor)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// A client fell behind the buffer (another client read the upstream on).
#[derive(Debug, thiserror::Error)]
#[error("the client fell behind the replay buffer; reconnect with Last-Event-ID")]
pub(crate) struct FellBehind;

impl StreamBody {
    /// The stream this body reads.
    pub(crate) fn shared(&self) -> &Arc<StreamShared> {
        &self.stream
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.closing.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(None);
        }
        loop {
            let mut st = self.stream.state.lock();
            if st.end == Some(End::Released) {
                self.done = true;
                return Poll::Ready(None);
            }
            if self.cursor < st.buffer.next_seq() {
                match st
                    .buffer
                    .copy_from(self.cursor, &mut self.out, COALESCE_BYTES)
                {
                    Ok(next) => {
                        self.cursor = next;
                        st.buffer.mark_written(next - 1);
                        drop(st);
                        self.reset_keepalive();
                        return Poll::Ready(Some(Ok(Frame::data(self.out.split().freeze()))));
                    }
                    Err(_) => {
                        drop(st);
                        self.done = true;
                        metrics::counter!("shadowcat_sse_stream_errors_total", "kind" => "behind")
                            .increment(1);
                        return Poll::Ready(Some(Err(Box::new(FellBehind))));
                    }
                }
            }
            if st.end.is_some() {
                self.done = true;
                return Poll::Ready(None);
            }
            let Some(mut pump) = st.pump.take() else {
                st.register(self.me, cx.waker());
                drop(st);
                return self.poll_keepalive(cx);
            };
            let next = st.buffer.next_seq();
            drop(st);
            let polled = pump.poll(cx, next);
            let mut st = self.stream.state.lock();
            match polled {
                Poll::Ready(Pumped::Events(batch)) => {
                    st.append(&batch, pump.marks());
                    st.pump = Some(pump);
                    self.cursor = st.buffer.next_seq();
                    st.buffer.mark_written(self.cursor - 1);
                    st.buffer.evict();
                    st.wake_others(self.me);
                    drop(st);
                    self.reset_keepalive();
                    return Poll::Ready(Some(Ok(Frame::data(batch))));
                }
                Poll::Ready(Pumped::Ended(end, last)) => {
                    if let Some(last) = last {
                        st.buffer.push(last);
                    }
                    st.end = Some(end);
                    st.wake_others(self.me);
                    drop(st);
                    drop(pump);
                }
                Poll::Pending => {
                    st.pump = Some(pump);
                    st.register(self.me, cx.waker());
                    drop(st);
                    return self.poll_keepalive(cx);
                }
            }
        }
    }

    fn poll_keepalive(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        ready!(self.keepalive.as_mut().poll(cx));
        self.reset_keepalive();
        let _ = encode_comment(&mut self.out, "");
        Poll::Ready(Some(Ok(Frame::data(self.out.split().freeze()))))
    }

    fn reset_keepalive(&mut self) {
        let at = Instant::now() + self.stream.env.keepalive;
        self.keepalive.as_mut().reset(at);
    }
}

impl Drop for StreamBody {
    fn drop(&mut self) {
        let stream = &self.stream;
        let until = Instant::now() + stream.env.linger;
        let (last, generation, complete) = {
            let mut st = stream.state.lock();
            st.attached -= 1;
            st.waiters.retain(|(id, _)| *id != self.me);
            // Whoever waits may have to read the upstream now.
            st.wake_others(self.me);
            if st.attached == 0 {
                st.keep_until = Some(until);
            }
            (st.attached == 0, st.generation, st.end.is_some())
        };
        if !last {
            return;
        }
        if *stream.env.closing.borrow() {
            stream.release();
            return;
        }
        // Kept for the linger time for the client to come back (written
        // is not received, or it left early), then released by the one
        // linger sweeper unless a client attached again.
        stream.env.lingering.keep(stream, until);
        if complete {
            if let Some(reg) = stream.registry.upgrade() {
                reg.keep_complete(stream, stream.env.max_kept);
            }
        } else {
            Arc::clone(stream).read_detached(generation);
        }
    }
}

/// A session's streams on this instance.
#[derive(Debug, Default)]
pub(crate) struct StreamRegistry {
    streams: Mutex<HashMap<u32, Arc<StreamShared>>>,
    /// Complete streams kept for their linger time, oldest first.
    kept: Mutex<VecDeque<Weak<StreamShared>>>,
}

impl StreamRegistry {
    pub(crate) fn get(&self, id: u32) -> Option<Arc<StreamShared>> {
        self.streams.lock().get(&id).cloned()
    }

    /// Adds a stream. Complete streams past their linger time are released
    /// by the linger sweeper, and the oldest beyond the per-session cap by
    /// [`StreamRegistry::keep_complete`]: nothing here scans the map.
    fn insert(&self, stream: Arc<StreamShared>) {
        self.streams.lock().insert(stream.id.0, stream);
    }

    /// Records that `stream` completed and is kept for its linger time;
    /// releases the oldest kept stream when more than `max` are kept.
    fn keep_complete(&self, stream: &Arc<StreamShared>, max: usize) {
        let evicted = {
            let mut kept = self.kept.lock();
            // At most `max + 1` entries: a bounded, short scan. A stream
            // kept again (a client came back and left) keeps its place.
            kept.retain(|w| w.strong_count() > 0);
            if kept
                .iter()
                .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(stream)))
            {
                return;
            }
            kept.push_back(Arc::downgrade(stream));
            if kept.len() > max.max(1) {
                kept.pop_front()
            } else {
                None
            }
        };
        if let Some(old) = evicted.and_then(|w| w.upgrade()) {
            old.release_if_kept(Instant::now() + old.env.linger);
        }
    }

    fn remove(&self, stream: &StreamShared) {
        let mut map = self.streams.lock();
        if map
            .get(&stream.id.0)
            .is_some_and(|s| std::ptr::eq(Arc::as_ptr(s), stream))
        {
            map.remove(&stream.id.0);
        }
    }

    /// Releases every stream (the session ended).
    pub(crate) fn release_all(&self) {
        let all: Vec<_> = self.streams.lock().drain().map(|(_, s)| s).collect();
        for s in all {
            s.release();
        }
    }
}
