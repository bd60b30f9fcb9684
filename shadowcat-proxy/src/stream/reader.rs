//! The reader of a stream's source: the [`Pump`] takes what its
//! [`Source`] has, decodes it, drops replayed duplicates with the stream's
//! one `EventTracker`, seals client ids and encodes one batch of events
//! (the [`Forwarder`]); it hands the stream's resumption point to the
//! writer once per batch.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;
use shadowcat_session::{SessionId, StreamId};
use shadowcat_transport::sse::{DecodeError, Decoder, OutgoingEvent, SseItem, put_decimal};
use shadowcat_transport::{EventTracker, Recorded, TrackerConfig};

use super::sink::WriterSink;
use super::source::{HttpSource, QueueSource, Read, Source};
use super::{End, StreamEnv, StreamKind};
use crate::event_id::StreamSealer;
use crate::mcp::protocol::ProtocolVersion;
use crate::upstream::http::UpstreamBody;
use crate::upstream::queue::MessageQueue;

/// The first encoding buffer of a pump: most streams (a request's answer)
/// carry one small event, and a batch's buffer is kept with the batch in
/// the replay buffer.
const ENC_FIRST: usize = 1024;
/// Each new encoding buffer is twice the last, up to this.
const ENC_CAPACITY: usize = 8 * 1024;
/// A new buffer is started when less than this (beyond the payload) is
/// left: room for the id line and the field names.
const ENC_ROOM: usize = 256;

/// Decodes upstream chunks and encodes sealed client events.
pub(crate) struct Forwarder {
    decoder: Decoder,
    tracker: EventTracker,
    /// Seals client ids (SSE output); `None`: the output is one JSON-RPC
    /// message per line (the stdio forward proxy).
    sealer: Option<StreamSealer>,
    enc: BytesMut,
    /// The capacity of the next encoding buffer.
    enc_next: usize,
    /// Messages taken from a queue, reused batch to batch.
    pub(super) taken: Vec<Bytes>,
    /// End offsets in `enc` of the events of the current batch.
    marks: Vec<usize>,
    /// The data of the last message of the chunk being forwarded; judged
    /// and dropped when the chunk is done, so no input buffer stays pinned.
    last_data: Option<Bytes>,
    /// The last message forwarded was a JSON-RPC response.
    last_response: bool,
    /// The upstream's last `retry:`, for the reconnect policy.
    pub(super) server_retry: Option<Duration>,
    /// The last `retry:` passed on to the client.
    retry_sent: Option<u64>,
    /// An event arrived since the source last looked.
    pub(super) healthy: bool,
    events: u64,
    duplicates: u64,
    /// The client speaks 2025-11-25 or later: priming events (an id and
    /// empty `data`) are part of its protocol. Older clients get id-only
    /// blocks instead: some crash on an empty data line.
    prime_clients: bool,
    /// A legacy (2024-11-05) client's stream: queued messages go out as
    /// `event: message` and their ids carry the tracker's id (the legacy
    /// client's id, which names its session on reconnect).
    legacy: bool,
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
    /// The upstream's last event id (the stream's resumption point).
    pub(super) fn last_event_id(&self) -> Option<&str> {
        self.tracker.last_event_id()
    }

    /// Bytes encoded for the current batch.
    pub(super) fn encoded(&self) -> usize {
        self.enc.len()
    }

    /// The upstream body ended: drops a partial event. True if there was
    /// one.
    pub(super) fn finish(&mut self) -> bool {
        self.decoder.finish()
    }

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
    pub(super) fn forward(&mut self, chunk: Bytes, seq: &mut u64) -> Result<(), DecodeError> {
        self.decoder.push(chunk);
        while let Some(item) = self.decoder.next() {
            let item = item?;
            // Allocated with the first item to encode: a comment alone
            // (an idle stream's opening) allocates nothing.
            let size = match &item {
                SseItem::Event(ev) => ev.data.len() + ev.event.as_ref().map_or(0, |e| e.len()),
                _ => 0,
            };
            self.ensure_capacity(size);
            match item {
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
                            self.last_data = Some(ev.data);
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
                        self.last_data = Some(ev.data);
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
                    if self.retry_sent == Some(ms) {
                        // Repeated on every (polling) connection: once is
                        // enough.
                        continue;
                    }
                    self.retry_sent = Some(ms);
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
        if let Some(data) = self.last_data.take() {
            self.last_response = is_response(&data);
        }
        Ok(())
    }

    /// An idle stream holds no encoding buffer: it is allocated with the
    /// first event, small, and each next one twice as large up to
    /// [`ENC_CAPACITY`]: a busy stream allocates once per 8 KiB of output,
    /// a one-event answer keeps 1 KiB.
    /// `size`: the payload about to be encoded.
    fn ensure_capacity(&mut self, size: usize) {
        if self.enc.capacity() - self.enc.len() < size + ENC_ROOM {
            // The batch split off before keeps the old buffer: this is a
            // new one, with what is pending copied in.
            self.enc.reserve(self.enc_next.max(size + ENC_ROOM));
            self.enc_next = (self.enc_next * 2).min(ENC_CAPACITY);
        }
    }

    /// Encodes one message from a queue as the event with number `*seq`.
    pub(super) fn put_message(&mut self, msg: &Bytes, seq: &mut u64) {
        self.ensure_capacity(msg.len());
        match &self.sealer {
            Some(sealer) if self.legacy => {
                sealer.write_id_line(&mut self.enc, *seq, self.tracker.last_event_id());
                let _ = OutgoingEvent::new()
                    .event("message")
                    .data(msg)
                    .encode(&mut self.enc);
            }
            Some(sealer) => {
                sealer.write_id_line(&mut self.enc, *seq, None);
                // A line from the child holds no line break: cannot fail.
                let _ = OutgoingEvent::new().data(msg).encode(&mut self.enc);
            }
            None => put_line(&mut self.enc, msg),
        }
        self.last_response = is_response(msg);
        self.events += 1;
        *seq += 1;
        self.marks.push(self.enc.len());
    }

    /// True when the last message sent was a JSON-RPC response.
    pub(super) fn response_seen(&self) -> bool {
        self.last_response
    }
}

/// True when `data` is a JSON-RPC response. A notification or request
/// names its `"method"` near the start, so most messages are told apart by
/// a short scan; only the others are parsed.
fn is_response(data: &[u8]) -> bool {
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
    if names_method_first(data) {
        return false;
    }
    serde_json::from_slice::<Probe>(data).is_ok_and(|p| {
        p.method.is_none() && p.id.is_some() && (p.result.is_some() || p.error.is_some())
    })
}

/// True when a top-level `"method"` key starts within the first 128 bytes,
/// before any nested object or array: the message is then a request or a
/// notification. `false` means "not known"; the caller parses.
fn names_method_first(data: &[u8]) -> bool {
    const KEY: &[u8] = b"\"method\"";
    let head = &data[..data.len().min(128)];
    let Some(open) = head.iter().position(|b| !b.is_ascii_whitespace()) else {
        return false;
    };
    if head[open] != b'{' {
        return false;
    }
    let mut i = open + 1;
    while i < head.len() {
        match head[i] {
            // Nested, or inside a string: not sure any more.
            b'{' | b'[' => return false,
            b'"' if head[i..].starts_with(KEY) => {
                // Unescaped `"method"` then `:` is a key: inside a string
                // its quotes would be escaped.
                let rest = &head[i + KEY.len()..];
                return rest
                    .iter()
                    .find(|b| !b.is_ascii_whitespace())
                    .is_some_and(|&b| b == b':');
            }
            _ => i += 1,
        }
    }
    false
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

/// Where a pump reads its stream from.
#[derive(Debug)]
pub(crate) enum PumpSource {
    /// An upstream HTTP response body (SSE) that drives its connection.
    Upstream(UpstreamBody),
    /// Messages a stdio child's router put on this stream's queue.
    Queue(Arc<MessageQueue>),
}

/// The upstream side of one stream: reads its source, encodes.
pub(crate) struct Pump {
    source: Source,
    fw: Forwarder,
    kind: StreamKind,
    sink: Option<WriterSink>,
    session: SessionId,
    stream: StreamId,
    /// Whether the stream's own priming event went out.
    primed: bool,
    /// The stream completed or failed (its resumption point is no longer
    /// needed).
    ended: bool,
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
    pub(crate) upstream_session: Option<http::HeaderValue>,
    /// What reconnects send as `Authorization` (default: the proxy's own
    /// credential).
    pub(crate) authorization: Option<http::HeaderValue>,
    pub(crate) version: ProtocolVersion,
    pub(crate) sink: Option<WriterSink>,
    /// The upstream event id the stream resumes after, if it does. On a
    /// legacy client's stream: the legacy id every event id carries.
    pub(crate) resume_after: Option<String>,
    /// A legacy (2024-11-05) client's stream, read from a queue that is
    /// abandoned when the stream goes.
    pub(crate) legacy: bool,
}

impl Pump {
    pub(crate) fn new(source: PumpSource, spec: PumpSpec, env: Arc<StreamEnv>) -> Self {
        let tracker = match &spec.resume_after {
            Some(id) => EventTracker::resuming_from(id, TrackerConfig::default()),
            None => EventTracker::new(),
        };
        let request = matches!(spec.kind, StreamKind::Request(_));
        let source = match source {
            PumpSource::Upstream(body) => Source::Http(HttpSource::new(
                body,
                env,
                spec.upstream_session,
                spec.authorization,
                spec.version,
                request,
            )),
            PumpSource::Queue(q) => Source::Queue(QueueSource::new(q, request || spec.legacy)),
        };
        Pump {
            source,
            fw: Forwarder {
                decoder: Decoder::default(),
                tracker,
                sealer: spec.sealer,
                enc: BytesMut::new(),
                enc_next: ENC_FIRST,
                taken: Vec::new(),
                marks: Vec::with_capacity(16),
                last_data: None,
                last_response: false,
                server_retry: None,
                retry_sent: None,
                healthy: false,
                events: 0,
                duplicates: 0,
                prime_clients: spec.version >= ProtocolVersion::V2025_11_25,
                legacy: spec.legacy,
            },
            primed: false,
            ended: false,
            kind: spec.kind,
            sink: spec.sink,
            session: spec.session,
            stream: spec.stream,
        }
    }

    /// End offsets of the last batch's events.
    pub(crate) fn marks(&self) -> &[usize] {
        &self.fw.marks
    }

    /// The upstream's last event id (the stream's resumption point).
    pub(crate) fn last_event_id(&self) -> Option<&str> {
        self.fw.last_event_id()
    }

    /// The session and stream, when the stream may go to the shared replay
    /// log: sealed client ids (not the stdio forward proxy's lines), and
    /// not a legacy client's stream (those stay on their instance).
    pub(crate) fn shared_log(&self) -> Option<(&SessionId, StreamId)> {
        (self.fw.sealer.is_some() && !self.fw.legacy).then_some((&self.session, self.stream))
    }

    /// Drives the source until it produced events, ended, or has nothing.
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
            let read = self.source.poll_read(cx, &mut self.fw, &mut seq);
            // Events encoded go out first, each with its own number; an end
            // is reported again on the next poll.
            if !self.fw.marks.is_empty() {
                if let Some(sink) = &self.sink {
                    sink.point(self.fw.tracker.last_event_id(), seq - 1);
                }
                return Poll::Ready(Pumped::Events(self.fw.enc.split().freeze()));
            }
            match read {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Read::More) => {}
                Poll::Ready(Read::Complete) => {
                    self.ended = true;
                    return Poll::Ready(Pumped::Ended(End::Complete, None));
                }
                Poll::Ready(Read::Failed(cause)) => return Poll::Ready(self.fail(&cause, seq)),
            }
        }
    }

    fn fail(&mut self, cause: &str, seq: u64) -> Pumped {
        self.ended = true;
        metrics::counter!("shadowcat_upstream_reconnect_failures_total").increment(1);
        tracing::warn!(session_fp = %self.session.fingerprint(), stream = self.stream.0, cause, "upstream stream lost; ending the client's stream");
        let StreamKind::Request(id) = &self.kind else {
            return Pumped::Ended(End::Failed, None);
        };
        let body = serde_json::json!({
            "jsonrpc": "2.0",
            "id": id.clone().unwrap_or(Value::Null),
            "error": {"code": crate::mcp::jsonrpc::SERVER_ERROR, "message": cause},
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
        metrics::counter!("shadowcat_sse_events_total").increment(self.fw.events);
        if self.fw.duplicates > 0 {
            metrics::counter!("shadowcat_sse_duplicates_dropped_total")
                .increment(self.fw.duplicates);
        }
        if self.ended
            && let Some(sink) = &self.sink
        {
            sink.end();
        }
        tracing::debug!(session_fp = %self.session.fingerprint(), stream = self.stream.0, events = self.fw.events, duplicates = self.fw.duplicates, "upstream side of the stream closed");
    }
}

#[cfg(test)]
mod tests {
    use super::is_response;

    #[test]
    fn responses_are_told_from_requests_and_notifications() {
        for (data, response) in [
            (
                r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#,
                false,
            ),
            (
                r#"{"method":"sampling/createMessage","id":3,"params":{},"jsonrpc":"2.0"}"#,
                false,
            ),
            (r#"{"jsonrpc":"2.0","id":1,"result":{"method":"x"}}"#, true),
            (r#"{"jsonrpc":"2.0","id":1,"result":"method"}"#, true),
            (
                r#"{"jsonrpc":"2.0","id":1,"result":{},"x":"\"method\":"}"#,
                true,
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"m"}}"#,
                true,
            ),
            (r#" { "jsonrpc" : "2.0", "method" : "x" }"#, false),
            (r#"{"jsonrpc":"2.0","id":1}"#, false),
            ("not json", false),
        ] {
            assert_eq!(is_response(data.as_bytes()), response, "{data}");
        }
    }
}
