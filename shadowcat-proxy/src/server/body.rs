//! Response bodies toward the client: a fixed body (JSON answers are read
//! whole first), a session's resumable stream
//! ([`crate::stream`]) or, without a session (2026-07-28), an SSE stream
//! forwarded event by event.
//!
//! The sessionless SSE path ([`SseForward`]) is a hot path. Per upstream
//! chunk it decodes with the transport crate's [`Decoder`] and re-encodes
//! into one reused buffer (no session, no resumption: nothing to track); whatever the upstream has ready (up to 16 KiB) goes to
//! the client as one frame, so a busy stream costs one write per batch, an
//! idle one waits for nothing. It spawns nothing, takes
//! no async lock and never waits on the store; it runs inside the client
//! connection's own task, polled by hyper.
//!
//! Priming events (an id with empty data, MCP 2025-11-25) are forwarded as
//! an id-only block (`id: …` and a blank line, no `data`): a client's SSE
//! parser updates its last event id and dispatches nothing, so no client
//! ever sees an empty JSON-RPC message, yet it can resume from there.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use shadowcat_transport::sse::{Decoder, OutgoingEvent, SseItem, encode_comment};
use tokio::time::{Instant, Sleep};

use super::access::Finish;
use super::listen::{Listen, Relisten, Stopped};
use crate::stream::StreamBody;
use crate::stream::{BoxError, Closing, StreamSlot};
use crate::upstream::http::UpstreamBody;

/// A response body toward the client.
#[derive(Debug)]
pub(crate) struct ProxyBody {
    inner: Inner,
    /// The access log's record, emitted when the body goes.
    access: Option<Box<Finish>>,
}

#[derive(Debug)]
enum Inner {
    Full(Option<Bytes>),
    Sse(Box<SseForward>),
    Stream(Box<StreamBody>),
    Legacy(Box<super::legacy::LegacySse>),
    Log(Box<crate::stream::log_reader::LogBody>),
}

impl ProxyBody {
    fn of(inner: Inner) -> Self {
        ProxyBody {
            inner,
            access: None,
        }
    }

    /// A body of exactly `bytes`.
    pub(crate) fn full(bytes: Bytes) -> Self {
        Self::of(Inner::Full(Some(bytes)))
    }

    /// No body.
    pub(crate) fn empty() -> Self {
        Self::of(Inner::Full(None))
    }

    /// An SSE stream forwarded event by event.
    pub(crate) fn sse(forward: SseForward) -> Self {
        Self::of(Inner::Sse(Box::new(forward)))
    }

    /// A client's view of a resumable session stream.
    pub(crate) fn stream(body: StreamBody) -> Self {
        Self::of(Inner::Stream(Box::new(body)))
    }

    /// A client's stream read from the shared replay log.
    pub(crate) fn log(body: crate::stream::log_reader::LogBody) -> Self {
        Self::of(Inner::Log(Box::new(body)))
    }

    /// A legacy (2024-11-05) client's `/sse` stream.
    pub(crate) fn legacy(body: super::legacy::LegacySse) -> Self {
        Self::of(Inner::Legacy(Box::new(body)))
    }

    /// The session stream this body reads, if it reads one.
    pub(crate) fn stream_shared(&self) -> Option<std::sync::Arc<crate::stream::StreamShared>> {
        match &self.inner {
            Inner::Stream(s) => Some(std::sync::Arc::clone(s.shared())),
            _ => None,
        }
    }

    /// Emits `finish` to the access log when the body ends or is dropped.
    pub(crate) fn log_with(&mut self, finish: Finish) {
        self.access = Some(Box::new(finish));
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let me = self.get_mut();
        let polled = match &mut me.inner {
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Sse(fwd) => fwd.poll_next(cx),
            Inner::Stream(s) => s.poll_next(cx),
            Inner::Legacy(s) => s.poll_next(cx),
            Inner::Log(s) => s.poll_next(cx),
        };
        if let (Some(finish), Poll::Ready(Some(Ok(frame)))) = (&mut me.access, &polled)
            && let Some(data) = frame.data_ref()
        {
            finish.bytes_out += data.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(b) => b.is_none(),
            Inner::Sse(fwd) => fwd.done,
            Inner::Stream(s) => s.is_done(),
            Inner::Legacy(s) => s.is_done(),
            Inner::Log(s) => s.is_done(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
            Inner::Sse(_) | Inner::Stream(_) | Inner::Legacy(_) | Inner::Log(_) => {
                SizeHint::default()
            }
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let Some(finish) = self.access.take() {
            let events = match &self.inner {
                Inner::Full(_) | Inner::Legacy(_) | Inner::Log(_) => None,
                Inner::Sse(fwd) => Some(fwd.events),
                Inner::Stream(s) => Some(s.events_sent()),
            };
            finish.emit(events);
        }
    }
}

/// Why an SSE stream toward the client was cut.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    /// The upstream's SSE was malformed or broke a decoder limit.
    #[error("upstream SSE stream rejected: {0}")]
    Decode(#[from] shadowcat_transport::sse::DecodeError),
    /// The upstream connection failed mid-stream.
    #[error("upstream stream failed: {0}")]
    Upstream(#[from] hyper::Error),
}

/// Forwards one upstream SSE stream to one client.
pub(crate) struct SseForward {
    upstream: UpstreamBody,
    decoder: Decoder,
    out: BytesMut,
    keepalive: Pin<Box<Sleep>>,
    interval: Duration,
    closing: Option<Closing>,
    done: bool,
    upstream_ended: bool,
    failed: Option<StreamError>,
    events: u64,
    _slot: Option<StreamSlot>,
    label: &'static str,
    /// A `subscriptions/listen` stream: re-listened when it drops.
    listen: Option<Box<Listen>>,
}

impl std::fmt::Debug for SseForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseForward")
            .field("done", &self.done)
            .field("events", &self.events)
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

/// Initial capacity of the re-encoding buffer.
const OUT_CAPACITY: usize = 4096;
/// Events already received are sent together up to this many bytes.
const COALESCE_BYTES: usize = 16 * 1024;

impl SseForward {
    /// Forwards `upstream`.
    pub(crate) fn new(
        upstream: UpstreamBody,
        interval: Duration,
        closing: Option<Closing>,
        slot: Option<StreamSlot>,
        label: &'static str,
    ) -> Self {
        SseForward {
            upstream,
            decoder: Decoder::default(),
            out: BytesMut::with_capacity(OUT_CAPACITY),
            keepalive: Box::pin(tokio::time::sleep(
                crate::stream::FIRST_BYTE_WITHIN.min(interval),
            )),
            interval,
            closing,
            done: false,
            upstream_ended: false,
            failed: None,
            events: 0,
            _slot: slot,
            label,
            listen: None,
        }
    }

    /// Makes this a listen stream that is re-listened when the upstream
    /// drops it ([`Listen`]).
    pub(crate) fn with_listen(mut self, listen: Listen) -> Self {
        self.listen = Some(Box::new(listen));
        self
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if let Some(closing) = &mut self.closing
            && closing.as_mut().poll(cx).is_ready()
        {
            tracing::debug!(stream = self.label, "closing SSE stream for shutdown");
            self.done = true;
            return Poll::Ready(None);
        }
        loop {
            // Everything the upstream has ready goes out in one frame (one
            // write), up to COALESCE_BYTES; nothing waits for more.
            while !self.upstream_ended && self.failed.is_none() {
                match Pin::new(&mut self.upstream).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        let Ok(chunk) = frame.into_data() else {
                            continue;
                        };
                        if let Err(e) = self.forward(chunk) {
                            self.failed = Some(e);
                        } else if self.out.len() >= COALESCE_BYTES {
                            break;
                        }
                    }
                    Poll::Ready(Some(Err(e))) => self.failed = Some(StreamError::Upstream(e)),
                    Poll::Ready(None) => {
                        if self.decoder.finish() {
                            tracing::debug!(
                                stream = self.label,
                                "upstream SSE stream ended mid-event; partial event dropped"
                            );
                        }
                        self.upstream_ended = true;
                    }
                    Poll::Pending => break,
                }
            }
            // A listen stream that stopped before its result is listened
            // to again, in this state machine.
            let Some(listen) = self.listen.as_deref_mut() else {
                break;
            };
            if listen.is_over() {
                break;
            }
            if !listen.is_relistening() {
                if !self.upstream_ended && self.failed.is_none() {
                    break;
                }
                let (why, detail) = match self.failed.take() {
                    Some(StreamError::Decode(e)) => (Stopped::Malformed, e.to_string()),
                    Some(StreamError::Upstream(e)) => (Stopped::Broken, e.to_string()),
                    None => (Stopped::Ended, String::new()),
                };
                self.upstream_ended = true;
                let before = listen.events;
                listen.dropped(why, &detail, &mut self.out);
                self.events += listen.events - before;
            }
            let before = listen.events;
            let polled = listen.poll_relisten(cx, &mut self.out);
            self.events += listen.events - before;
            match polled {
                Poll::Ready(Relisten::Stream(body)) => {
                    self.upstream = body;
                    self.decoder = Decoder::default();
                    self.upstream_ended = false;
                }
                Poll::Ready(Relisten::Over) | Poll::Pending => break,
            }
        }
        if !self.out.is_empty() {
            self.reset_keepalive();
            return Poll::Ready(Some(Ok(Frame::data(self.out.split().freeze()))));
        }
        if let Some(e) = self.failed.take() {
            return Poll::Ready(Some(Err(self.fail(e))));
        }
        if self.upstream_ended && !self.listen.as_ref().is_some_and(|l| l.is_relistening()) {
            self.done = true;
            return Poll::Ready(None);
        }
        ready!(self.keepalive.as_mut().poll(cx));
        self.reset_keepalive();
        // A bare `:` comment; encode_comment only fails on line breaks.
        let _ = encode_comment(&mut self.out, "");
        Poll::Ready(Some(Ok(Frame::data(self.out.split().freeze()))))
    }

    fn reset_keepalive(&mut self) {
        let at = Instant::now() + self.interval;
        self.keepalive.as_mut().reset(at);
    }

    fn fail(&mut self, e: StreamError) -> BoxError {
        self.done = true;
        tracing::warn!(stream = self.label, error = %e, "cutting SSE stream toward the client");
        metrics::counter!("shadowcat_sse_stream_errors_total", "kind" => match e {
            StreamError::Decode(_) => "decode",
            StreamError::Upstream(_) => "upstream",
        })
        .increment(1);
        Box::new(e)
    }

    /// Decodes `chunk` and re-encodes every deliverable item into `out`.
    fn forward(&mut self, chunk: Bytes) -> Result<(), StreamError> {
        self.decoder.push(chunk);
        for item in self.decoder.by_ref() {
            match item? {
                SseItem::Event(ev) => {
                    let id = if ev.has_own_id {
                        ev.id.as_deref()
                    } else {
                        None
                    };
                    let mut out = OutgoingEvent::new();
                    if let Some(id) = id {
                        out = out.id(id);
                    }
                    if ev.is_priming() {
                        // Decoded ids hold no line break or NUL, so
                        // encoding cannot fail.
                        let _ = out.encode(&mut self.out);
                    } else if let Some(listen) = self.listen.as_deref_mut() {
                        let before = listen.events;
                        listen.forward(&ev.data, id, ev.event.as_deref(), &mut self.out);
                        self.events += listen.events - before;
                    } else {
                        out = out.data(&ev.data);
                        if let Some(name) = ev.event.as_deref() {
                            out = out.event(name);
                        }
                        self.events += 1;
                        // Decoded ids and names hold no line break or NUL,
                        // so encoding cannot fail.
                        let _ = out.encode(&mut self.out);
                    }
                }
                SseItem::IdOnly(id) => {
                    let id = id.as_deref().unwrap_or("");
                    let _ = OutgoingEvent::new().id(id).encode(&mut self.out);
                }
                SseItem::Retry(ms) => {
                    if let Some(listen) = self.listen.as_deref_mut() {
                        listen.server_retry(ms);
                    }
                    let _ = OutgoingEvent::new().retry(ms).encode(&mut self.out);
                }
            }
        }
        Ok(())
    }
}

impl Drop for SseForward {
    fn drop(&mut self) {
        metrics::counter!("shadowcat_sse_events_total").increment(self.events);
        tracing::debug!(
            stream = self.label,
            events = self.events,
            completed = self.done,
            "SSE stream closed"
        );
    }
}
