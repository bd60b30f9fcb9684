//! The shared replay log, reader side: a client's stream served on an
//! instance that does not own it ([`LogBody`]). It sends the log's
//! entries as they are (the owner's client ids, so the client cannot tell
//! which instance served it), then follows the log: woken by the owner's
//! appends through the [`Notifier`](shadowcat_session::Notifier), and
//! reading the log again every half lease time anyway, which also reports
//! how far it got (the owner keeps the stream while a reader reads it, and
//! counts what readers sent as written).
//!
//! Entries must follow each other seq by seq: a gap (the owner could not
//! log a batch) ends the client's stream, so the client resumes where it
//! is and is never passed a gap.
//!
//! When the lease has been free for half a lease time (the owner died;
//! two looks so a lease that lapsed during a Redis restart and was taken
//! back is not mistaken for a death) the reader takes the stream over: it
//! takes the lease (the fence moves, so the old owner can never append
//! again), sends what the log holds, and resumes the upstream after the
//! last logged upstream event id, becoming the owner (same stream number,
//! seqs going on). When the upstream cannot resume (it keeps no events),
//! the stream ends with a JSON-RPC error naming the cause, logged for
//! every reader.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use http_body::Frame;
use shadowcat_session::writer::WriterHandle;
use shadowcat_session::{
    LogEntry, Probe, ReplayLog, ReplayLogError, ResumeKey, SessionId, StreamId, Watch,
};
use shadowcat_transport::sse::{OutgoingEvent, encode_comment};
use tokio::time::{Instant, Sleep};

use super::cluster::Cluster;
use super::reader::{Pump, PumpSource, PumpSpec};
use super::sink::WriterSink;
use super::{
    BoxError, Closing, StreamBody, StreamEnv, StreamKind, StreamRegistry, StreamShared, StreamSlot,
};
use crate::event_id::StreamSealer;
use crate::mcp::protocol::ProtocolVersion;

/// Entries read from the log at a time.
pub(crate) const READ_COUNT: usize = 64;
/// Entries a takeover reads before it resumes the upstream.
const TAKEOVER_COUNT: usize = 4096;
/// A reader reports its position at most this often.
const REPORT_EVERY: Duration = Duration::from_millis(250);

/// What a reader needs to take a stream over.
#[derive(Debug)]
pub(crate) struct TakeoverParts {
    pub(crate) env: Arc<StreamEnv>,
    pub(crate) session: SessionId,
    pub(crate) key: ResumeKey,
    pub(crate) upstream_session: Option<HeaderValue>,
    pub(crate) version: ProtocolVersion,
    pub(crate) authorization: Option<HeaderValue>,
    pub(crate) registry: Arc<StreamRegistry>,
    pub(crate) writer: Option<WriterHandle>,
    pub(crate) stream: u32,
}

/// What a body's poll gives hyper.
type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

type Fetch = Pin<Box<dyn Future<Output = Result<Probe, ReplayLogError>> + Send>>;
type Taking = Pin<Box<dyn Future<Output = Taken> + Send>>;

/// How a takeover went.
enum Taken {
    /// Another instance took the lease first (or Redis failed): read on.
    NotUs,
    /// Send these entries, then read the stream here (this instance owns
    /// it now).
    Owner(Vec<LogEntry>, StreamBody),
    /// Send these entries; the last ends the stream.
    Ended(Vec<LogEntry>),
}

enum State {
    Fetching(Fetch),
    Waiting,
    TakingOver(Taking),
    Local(Box<StreamBody>),
}

/// A client's stream served from the shared replay log.
pub(crate) struct LogBody {
    log: Arc<ReplayLog>,
    cluster: Arc<Cluster>,
    watch: Watch,
    /// The last seq sent to the client.
    cursor: u64,
    reported: u64,
    last_report: Option<Instant>,
    state: State,
    out: BytesMut,
    keepalive: Pin<Box<Sleep>>,
    check: Pin<Box<Sleep>>,
    closing: Closing,
    done: bool,
    /// The last entry sent ends the stream.
    ended: bool,
    /// Since when the lease was seen free.
    free_since: Option<Instant>,
    failures: u32,
    parts: Option<TakeoverParts>,
    slot: Option<StreamSlot>,
}

impl std::fmt::Debug for LogBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogBody")
            .field("log", &self.log.log_key())
            .field("cursor", &self.cursor)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl LogBody {
    /// A reader that sent (or the client holds) everything up to `cursor`
    /// and has `first` to send next (read by the caller's probe).
    pub(crate) fn new(
        cluster: Arc<Cluster>,
        log: ReplayLog,
        watch: Watch,
        cursor: u64,
        first: Vec<LogEntry>,
        parts: TakeoverParts,
        slot: Option<StreamSlot>,
    ) -> LogBody {
        let env = Arc::clone(&parts.env);
        let mut closing = env.closing.clone();
        let mut body = LogBody {
            log: Arc::new(log),
            watch,
            cursor,
            reported: 0,
            last_report: None,
            state: State::Waiting,
            out: BytesMut::new(),
            keepalive: Box::pin(tokio::time::sleep(
                super::FIRST_BYTE_WITHIN.min(env.keepalive),
            )),
            check: Box::pin(tokio::time::sleep(Duration::ZERO)),
            closing: Box::pin(async move {
                let _ = closing.wait_for(|c| *c).await;
            }),
            done: false,
            ended: false,
            free_since: None,
            failures: 0,
            parts: Some(parts),
            slot,
            cluster,
        };
        let full = first.len() >= READ_COUNT;
        if !body.take_entries(first) {
            body.ended = true;
        }
        if full {
            body.fetch();
        } else {
            body.wait(Duration::ZERO);
        }
        body
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    fn half_lease(&self) -> Duration {
        (self.cluster.config.lease_ttl / 2).max(Duration::from_millis(10))
    }

    /// Sends `entries` (into `out`). False on a gap: the stream ends after
    /// what is already in `out`.
    fn take_entries(&mut self, entries: Vec<LogEntry>) -> bool {
        for e in entries {
            if e.seq <= self.cursor {
                // The client's own last event: it may have ended the stream.
                if e.end {
                    self.ended = true;
                    break;
                }
                continue;
            }
            if e.seq != self.cursor + 1 {
                metrics::counter!("shadowcat_replay_log_gaps_total").increment(1);
                tracing::warn!(key = %self.log.log_key(), after = self.cursor, next = e.seq, "replay log has a gap (its owner could not log some events); ending the client's stream so it resumes where it is");
                return false;
            }
            self.out.extend_from_slice(&e.data);
            self.cursor = e.seq;
            if e.end {
                self.ended = true;
                break;
            }
        }
        true
    }

    fn fetch(&mut self) {
        let log = Arc::clone(&self.log);
        let cursor = self.cursor;
        let now = Instant::now();
        let report = cursor > self.reported
            && self
                .last_report
                .is_none_or(|t| now.duration_since(t) >= REPORT_EVERY)
            || self
                .last_report
                .is_none_or(|t| now.duration_since(t) >= self.half_lease());
        if report {
            self.reported = cursor;
            self.last_report = Some(now);
        }
        self.state = State::Fetching(Box::pin(async move {
            if report {
                log.report_read(cursor).await?;
            }
            log.probe(cursor + 1, READ_COUNT).await
        }));
    }

    fn wait(&mut self, check_in: Duration) {
        self.state = State::Waiting;
        let at = Instant::now() + check_in.max(Duration::from_millis(1));
        self.check.as_mut().reset(at);
    }

    fn flush(&mut self) -> Option<Polled> {
        if self.out.is_empty() {
            return None;
        }
        self.reset_keepalive();
        Some(Poll::Ready(Some(Ok(Frame::data(
            self.out.split().freeze(),
        )))))
    }

    fn reset_keepalive(&mut self) {
        let at = Instant::now() + self.cluster_keepalive();
        self.keepalive.as_mut().reset(at);
    }

    fn cluster_keepalive(&self) -> Duration {
        self.parts
            .as_ref()
            .map_or(Duration::from_secs(15), |p| p.env.keepalive)
    }

    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Polled {
        loop {
            if let State::Local(body) = &mut self.state {
                if !self.out.is_empty() {
                    return self.flush().unwrap_or(Poll::Pending);
                }
                return body.poll_next(cx);
            }
            if self.done {
                return Poll::Ready(None);
            }
            if self.closing.as_mut().poll(cx).is_ready() {
                self.done = true;
                return Poll::Ready(None);
            }
            if self.ended {
                if let Some(p) = self.flush() {
                    return p;
                }
                self.done = true;
                return Poll::Ready(None);
            }
            match &mut self.state {
                State::Local(_) => unreachable!("handled above"),
                State::Fetching(fut) => {
                    let Poll::Ready(result) = fut.as_mut().poll(cx) else {
                        return self.poll_keepalive(cx);
                    };
                    match result {
                        Err(e) => {
                            self.failures += 1;
                            let limit = self.cluster.config.wait + self.cluster.config.lease_ttl;
                            if Duration::from_millis(200) * self.failures > limit {
                                tracing::warn!(key = %self.log.log_key(), error = %e, "replay log unreadable; ending the client's stream so it resumes elsewhere");
                                self.ended = true;
                                continue;
                            }
                            self.wait(Duration::from_millis(200));
                        }
                        Ok(probe) => {
                            self.failures = 0;
                            let full = probe.entries.len() >= READ_COUNT;
                            let got = !probe.entries.is_empty();
                            if !self.take_entries(probe.entries) {
                                self.ended = true;
                                continue;
                            }
                            if self.ended {
                                continue;
                            }
                            if full {
                                self.fetch();
                            } else if probe.owner.is_none() && !probe.ended && !got {
                                let now = Instant::now();
                                match self.free_since {
                                    Some(t) if now.duration_since(t) >= self.half_lease() => {
                                        self.take_over(probe.owner);
                                    }
                                    Some(_) => self.wait(self.half_lease()),
                                    None => {
                                        self.free_since = Some(now);
                                        self.wait(self.half_lease());
                                    }
                                }
                            } else {
                                if probe.owner.is_some() {
                                    self.free_since = None;
                                }
                                self.wait(self.half_lease());
                            }
                            if let Some(p) = self.flush() {
                                return p;
                            }
                        }
                    }
                }
                State::Waiting => {
                    let fired = self.watch.poll_fired(cx).is_ready();
                    if fired || self.check.as_mut().poll(cx).is_ready() {
                        self.fetch();
                        continue;
                    }
                    return self.poll_keepalive(cx);
                }
                State::TakingOver(fut) => {
                    let Poll::Ready(taken) = fut.as_mut().poll(cx) else {
                        return self.poll_keepalive(cx);
                    };
                    match taken {
                        Taken::NotUs => {
                            self.free_since = None;
                            self.wait(self.half_lease());
                        }
                        Taken::Ended(entries) => {
                            let _ = self.take_entries(entries);
                            self.ended = true;
                        }
                        Taken::Owner(entries, body) => {
                            if !self.take_entries(entries) {
                                self.ended = true;
                                continue;
                            }
                            self.state = State::Local(Box::new(body));
                        }
                    }
                }
            }
        }
    }

    fn take_over(&mut self, _owner: Option<String>) {
        let Some(parts) = self.parts.take() else {
            self.wait(self.half_lease());
            return;
        };
        let slot = self.slot.take();
        let cluster = Arc::clone(&self.cluster);
        let log = Arc::clone(&self.log);
        let cursor = self.cursor;
        self.state = State::TakingOver(Box::pin(take_over(cluster, log, cursor, parts, slot)));
    }

    fn poll_keepalive(&mut self, cx: &mut Context<'_>) -> Polled {
        if self.keepalive.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.reset_keepalive();
        let _ = encode_comment(&mut self.out, "");
        Poll::Ready(Some(Ok(Frame::data(self.out.split().freeze()))))
    }
}

/// Takes the stream over from an owner whose lease lapsed.
async fn take_over(
    cluster: Arc<Cluster>,
    log: Arc<ReplayLog>,
    cursor: u64,
    parts: TakeoverParts,
    slot: Option<StreamSlot>,
) -> Taken {
    let cfg = &cluster.config;
    let lease = match log.acquire(&cfg.instance_id, cfg.lease_ttl).await {
        Ok(Some(l)) => l,
        Ok(None) => return Taken::NotUs,
        Err(e) => {
            tracing::debug!(error = %e, "takeover: could not take the lease");
            return Taken::NotUs;
        }
    };
    // The old owner can no longer append: what the log holds now is all.
    let probe = match log.probe(cursor + 1, TAKEOVER_COUNT).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "takeover: could not read the log; giving the lease back");
            let _ = log.release(&lease).await;
            return Taken::NotUs;
        }
    };
    if probe.ended || probe.entries.len() >= TAKEOVER_COUNT {
        let _ = log.release(&lease).await;
        let mut entries = probe.entries;
        if !probe.ended {
            // Too much to hold at once: read on, take over later.
            entries.clear();
            return Taken::NotUs;
        }
        return Taken::Ended(entries);
    }
    let last = probe
        .entries
        .last()
        .map_or(cursor, |e| e.seq)
        .max(probe.last_seq.unwrap_or(0));
    let env = Arc::clone(&parts.env);
    let id = StreamId(parts.stream);
    let get = parts.stream & crate::event_id::GET_STREAM_BIT != 0;
    let cause = match &probe.upstream_id {
        None => "the upstream sent no event id to resume from".to_owned(),
        Some(up) => {
            let req = env.resume_request(
                parts.upstream_session.as_ref(),
                parts.version,
                Some(up),
                parts.authorization.as_ref(),
            );
            match env.connect(req).await {
                Ok(resp) if resp.status().is_success() && crate::mcp::is_sse(resp.headers()) => {
                    let spec = PumpSpec {
                        kind: if get {
                            StreamKind::Get
                        } else {
                            StreamKind::Request(None)
                        },
                        session: parts.session.clone(),
                        stream: id,
                        sealer: Some(StreamSealer::new(&parts.key, &parts.session, parts.stream)),
                        upstream_session: parts.upstream_session.clone(),
                        authorization: parts.authorization.clone(),
                        version: parts.version,
                        sink: parts
                            .writer
                            .clone()
                            .map(|w| WriterSink::new(w, parts.session.clone(), id)),
                        resume_after: Some(up.clone()),
                        legacy: false,
                    };
                    let pump = Pump::new(
                        PumpSource::Upstream(resp.into_body()),
                        spec,
                        Arc::clone(&env),
                    );
                    let shared = StreamShared::start_at(
                        &parts.registry,
                        id,
                        pump,
                        Arc::clone(&env),
                        last + 1,
                        Some(lease),
                    );
                    metrics::counter!("shadowcat_replay_log_takeovers_total", "result" => "resumed").increment(1);
                    tracing::info!(key = %log.log_key(), after = last, "took over a stream whose owner instance died; resumed the upstream after the last logged event");
                    return match shared.attach_with(last + 1, slot) {
                        Ok(body) => Taken::Owner(probe.entries, body),
                        Err(_) => Taken::Ended(probe.entries),
                    };
                }
                Ok(resp) => format!("the upstream refused to resume it (HTTP {})", resp.status()),
                Err(e) => e,
            }
        }
    };
    metrics::counter!("shadowcat_replay_log_takeovers_total", "result" => "failed").increment(1);
    let message = format!(
        "the owner instance of this stream stopped, and the upstream cannot resume it: {cause}; every event up to here was delivered from the replay log"
    );
    tracing::warn!(key = %log.log_key(), %message, "ending a stream whose owner instance died");
    let sealer = StreamSealer::new(&parts.key, &parts.session, parts.stream);
    let mut enc = BytesMut::new();
    sealer.write_id_line(&mut enc, last + 1, probe.upstream_id.as_deref());
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": serde_json::Value::Null,
        "error": {"code": crate::mcp::jsonrpc::SERVER_ERROR, "message": message},
    })
    .to_string();
    let _ = OutgoingEvent::new().data(body.as_bytes()).encode(&mut enc);
    let event = enc.freeze();
    let mut entries = probe.entries;
    match log
        .append_batch(
            &lease,
            &[(last + 1, event.clone())],
            None,
            true,
            cfg.retention,
        )
        .await
    {
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not log a stream's end"),
    }
    let _ = log.release(&lease).await;
    entries.push(LogEntry {
        seq: last + 1,
        data: event,
        end: true,
    });
    Taken::Ended(entries)
}
