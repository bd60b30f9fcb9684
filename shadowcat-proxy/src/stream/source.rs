//! What a stream's reader reads: an upstream HTTP SSE body that it
//! reconnects with `Last-Event-ID` when it drops ([`HttpSource`]), or the
//! queue a stdio child's router fills ([`QueueSource`]). Each decodes or
//! encodes what it has into the [`Forwarder`] and says how it stands
//! ([`Read`]); the reader ([`super::reader::Pump`]) does the rest.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http_body::Body;
use shadowcat_transport::sse::DecodeError;
use shadowcat_transport::{Decision, Failure, ReconnectPolicy};
use tokio::time::Sleep;

use super::reader::Forwarder;
use super::{COALESCE_BYTES, Connecting, StreamEnv};
use crate::mcp::protocol::ProtocolVersion;
use crate::upstream::http::UpstreamBody;
use crate::upstream::queue::{MessageQueue, QueueEnd};

/// How a source stands after encoding what it had (`Poll::Pending`:
/// nothing more for now; it wakes the task when there is).
#[derive(Debug)]
pub(crate) enum Read {
    /// Stopped at the coalescing limit with events encoded: poll again.
    More,
    /// The stream is complete.
    Complete,
    /// The stream cannot go on, for this reason.
    Failed(String),
}

/// Where a stream's events come from.
// One per pump, for the stream's life: boxing the larger variant would
// add an allocation per stream and a pointer chase per poll.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Source {
    /// An upstream HTTP SSE body, reconnected when it drops.
    Http(HttpSource),
    /// A stdio child's queue for this stream.
    Queue(QueueSource),
}

impl Source {
    /// Encodes what is ready into `fw` (event numbers from `*seq` on, up
    /// to about [`COALESCE_BYTES`]) and says how the source stands. An end
    /// is reported again on the next poll, so events encoded before it go
    /// out first.
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        fw: &mut Forwarder,
        seq: &mut u64,
    ) -> Poll<Read> {
        match self {
            Source::Http(h) => h.poll_read(cx, fw, seq),
            Source::Queue(q) => q.poll_read(cx, fw, seq),
        }
    }
}

/// Why an upstream body stopped.
#[derive(Debug)]
enum Cause {
    Ended,
    Broken(String),
    Malformed(DecodeError),
}

enum HttpState {
    Body(UpstreamBody),
    Waiting(Pin<Box<Sleep>>),
    Connecting(Connecting),
    Ended(Result<(), String>),
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HttpState::Body(_) => "reading",
            HttpState::Waiting(_) => "waiting to reconnect",
            HttpState::Connecting(_) => "reconnecting",
            HttpState::Ended(_) => "ended",
        })
    }
}

/// An upstream SSE body and how to reconnect it.
#[derive(Debug)]
pub(crate) struct HttpSource {
    state: HttpState,
    policy: ReconnectPolicy,
    env: Arc<StreamEnv>,
    upstream_session: Option<HeaderValue>,
    authorization: Option<HeaderValue>,
    version: ProtocolVersion,
    /// A request's stream: complete once its response went out.
    request: bool,
}

impl HttpSource {
    pub(crate) fn new(
        body: UpstreamBody,
        env: Arc<StreamEnv>,
        upstream_session: Option<HeaderValue>,
        authorization: Option<HeaderValue>,
        version: ProtocolVersion,
        request: bool,
    ) -> Self {
        HttpSource {
            state: HttpState::Body(body),
            policy: ReconnectPolicy::new(env.reconnect),
            env,
            upstream_session,
            authorization,
            version,
            request,
        }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, fw: &mut Forwarder, seq: &mut u64) -> Poll<Read> {
        loop {
            match &mut self.state {
                HttpState::Body(body) => {
                    let cause = loop {
                        match Pin::new(&mut *body).poll_frame(cx) {
                            Poll::Ready(Some(Ok(frame))) => {
                                let Ok(chunk) = frame.into_data() else {
                                    continue;
                                };
                                if let Err(e) = fw.forward(chunk, seq) {
                                    break Cause::Malformed(e);
                                }
                                learn(&mut self.policy, fw);
                                if fw.encoded() >= COALESCE_BYTES {
                                    return Poll::Ready(Read::More);
                                }
                            }
                            Poll::Ready(Some(Err(e))) => break Cause::Broken(e.to_string()),
                            Poll::Ready(None) => break Cause::Ended,
                            Poll::Pending => return Poll::Pending,
                        }
                    };
                    self.state = match self.after_drop(cause, fw) {
                        Ok(None) => HttpState::Ended(Ok(())),
                        Ok(Some(delay)) => HttpState::Waiting(Box::pin(tokio::time::sleep(delay))),
                        Err(cause) => HttpState::Ended(Err(cause)),
                    };
                }
                HttpState::Waiting(sleep) => {
                    ready!(sleep.as_mut().poll(cx));
                    let last = fw.last_event_id();
                    let req = self.env.resume_request(
                        self.upstream_session.as_ref(),
                        self.version,
                        last,
                        self.authorization.as_ref(),
                    );
                    metrics::counter!("shadowcat_upstream_reconnects_total").increment(1);
                    tracing::debug!(last_event_id = ?last, "reconnecting to the upstream");
                    self.state = HttpState::Connecting(self.env.connect(req));
                }
                HttpState::Connecting(fut) => {
                    let answer = ready!(fut.as_mut().poll(cx));
                    let failure = match answer {
                        Ok(resp)
                            if resp.status().is_success() && crate::mcp::is_sse(resp.headers()) =>
                        {
                            self.state = HttpState::Body(resp.into_body());
                            continue;
                        }
                        Ok(resp) if resp.status().is_success() => {
                            self.state = HttpState::Ended(Err(format!(
                                "the upstream answered the reconnect with HTTP {} but no event stream",
                                resp.status()
                            )));
                            continue;
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
                            tracing::debug!(error = %e, "upstream reconnect failed");
                            Failure::Connect
                        }
                    };
                    self.state = match self.decide(failure) {
                        Ok(delay) => HttpState::Waiting(Box::pin(tokio::time::sleep(delay))),
                        Err(cause) => HttpState::Ended(Err(cause)),
                    };
                }
                HttpState::Ended(Ok(())) => return Poll::Ready(Read::Complete),
                HttpState::Ended(Err(cause)) => return Poll::Ready(Read::Failed(cause.clone())),
            }
        }
    }

    /// `Ok(None)`: complete; `Ok(Some(delay))`: reconnect after `delay`;
    /// `Err(cause)`: cannot go on.
    fn after_drop(&mut self, cause: Cause, fw: &mut Forwarder) -> Result<Option<Duration>, String> {
        learn(&mut self.policy, fw);
        if fw.finish() {
            tracing::debug!("upstream stream ended mid-event; partial event dropped");
        }
        match cause {
            Cause::Malformed(e) => {
                return Err(format!("the upstream's event stream was rejected: {e}"));
            }
            Cause::Broken(e) => tracing::debug!(error = %e, "upstream stream broke"),
            Cause::Ended => {}
        }
        if self.request {
            if fw.response_seen() {
                return Ok(None);
            }
            if fw.last_event_id().is_none() {
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
}

/// What the events told the reconnect policy: the stream is healthy, the
/// server asked for a `retry:` delay.
fn learn(policy: &mut ReconnectPolicy, fw: &mut Forwarder) {
    if std::mem::take(&mut fw.healthy) {
        policy.on_healthy();
    }
    if let Some(retry) = fw.server_retry.take() {
        policy.set_server_retry(retry);
    }
}

/// A stdio child's queue for one stream.
#[derive(Debug)]
pub(crate) struct QueueSource {
    queue: Arc<MessageQueue>,
    /// A request's (or a legacy client's) queue has one reader: when it
    /// goes, the router stops feeding it.
    request: bool,
}

impl QueueSource {
    pub(crate) fn new(queue: Arc<MessageQueue>, request: bool) -> Self {
        QueueSource { queue, request }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, fw: &mut Forwarder, seq: &mut u64) -> Poll<Read> {
        let mut taken = std::mem::take(&mut fw.taken);
        let polled = self.queue.poll_drain(cx, &mut taken, COALESCE_BYTES);
        for msg in taken.drain(..) {
            fw.put_message(&msg, seq);
        }
        fw.taken = taken;
        fw.healthy = false;
        match polled {
            Poll::Ready(None) => Poll::Ready(Read::More),
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(QueueEnd::Complete)) => Poll::Ready(Read::Complete),
            Poll::Ready(Some(QueueEnd::Failed(cause))) => {
                Poll::Ready(Read::Failed(cause.to_string()))
            }
        }
    }
}

impl Drop for QueueSource {
    fn drop(&mut self) {
        if self.request {
            self.queue.abandon();
        }
    }
}
