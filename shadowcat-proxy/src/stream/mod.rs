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
//!
//! # Layout
//!
//! - `engine`: the stream's shared state ([`StreamShared`]), one client's
//!   view of it ([`StreamBody`]) and a session's streams
//!   ([`StreamRegistry`]).
//! - `reader`: the [`Pump`], which reads a source into events.
//! - `source`: what a pump reads (an upstream HTTP body it reconnects, or a
//!   stdio child's queue).
//! - [`replay`]: the per-stream replay buffer and its retention.
//! - `budget`: the proxy's one budget for buffered bytes
//!   (`max_buffered_bytes`).
//! - `linger`: the one sweeper that releases streams no client came back
//!   to.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::Full;
use serde_json::Value;
use shadowcat_transport::ReconnectConfig;
use tokio::sync::watch;

use crate::mcp::protocol::ProtocolVersion;
use crate::upstream::http::{UpstreamBody, UpstreamPool};

pub(crate) mod budget;
pub(crate) mod cluster;
mod engine;
#[cfg(test)]
mod engine_tests;
pub(crate) mod linger;
pub(crate) mod log_reader;
mod reader;
pub(crate) mod replay;
pub(crate) mod sink;
mod source;

pub use engine::StreamView;
pub(crate) use engine::{StreamBody, StreamRegistry, StreamShared};
pub(crate) use reader::{Pump, PumpSource, PumpSpec, Pumped};
use replay::ReplayLimits;

/// The error type of [`ProxyBody`].
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A future that completes when the proxy starts shutting down.
pub(crate) type Closing = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Counts one open SSE stream of a session; releases it when dropped.
#[derive(Debug)]
pub(crate) struct StreamSlot(Arc<AtomicU32>);

impl StreamSlot {
    /// Takes a slot if fewer than `max` are taken.
    pub(crate) fn acquire(count: &Arc<AtomicU32>, max: u32) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamSlot(Arc::clone(count)))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Events already received are sent together up to this many bytes.
pub(crate) const COALESCE_BYTES: usize = 16 * 1024;

/// An SSE response with nothing to send this long after it opened gets a
/// `:` comment, so every client (and every buffer on the way) sees the
/// stream's first byte within it, not only at the first keep-alive. An
/// answer ready sooner goes first and no comment is sent.
pub(crate) const FIRST_BYTE_WITHIN: std::time::Duration = std::time::Duration::from_millis(5);

/// What every stream of the proxy shares: how to reach the upstream and
/// the stream settings.
#[derive(Debug)]
pub(crate) struct StreamEnv {
    /// Connections to the upstream (reconnects go there too).
    pub(crate) pool: Arc<UpstreamPool>,
    pub(crate) uri: http::Uri,
    /// The proxy's own credential toward the upstream.
    pub(crate) bearer: crate::auth::Credential,
    pub(crate) response_timeout: Duration,
    pub(crate) reconnect: ReconnectConfig,
    pub(crate) replay: ReplayLimits,
    /// Every replay buffer's bytes, against `max_buffered_bytes`.
    pub(crate) budget: Arc<budget::Budget>,
    pub(crate) linger: Duration,
    /// Streams no client holds, released by one sweeper after `linger`.
    pub(crate) lingering: Arc<linger::Linger>,
    pub(crate) max_kept: usize,
    pub(crate) keepalive: Duration,
    pub(crate) closing: watch::Receiver<bool>,
    /// The shared replay log, when instances share streams.
    pub(crate) cluster: Option<Arc<cluster::Cluster>>,
}

type Connecting = Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, String>> + Send>>;

impl StreamEnv {
    /// A GET toward the upstream for `session`'s stream, resuming after
    /// `last_event_id` when given; with `authorization` when given, else
    /// the proxy's own credential.
    pub(crate) fn resume_request(
        &self,
        upstream_session: Option<&HeaderValue>,
        version: ProtocolVersion,
        last_event_id: Option<&str>,
        authorization: Option<&HeaderValue>,
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
            h.insert(crate::mcp::MCP_PROTOCOL_VERSION, v);
        }
        if let Some(id) = last_event_id
            && let Ok(v) = HeaderValue::from_bytes(id.as_bytes())
        {
            h.insert(crate::mcp::LAST_EVENT_ID, v);
        }
        if let Some(uid) = upstream_session {
            h.insert(crate::mcp::MCP_SESSION_ID, uid.clone());
        }
        if let Some(v) = authorization.cloned().or_else(|| self.bearer.current()) {
            h.insert(header::AUTHORIZATION, v);
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
