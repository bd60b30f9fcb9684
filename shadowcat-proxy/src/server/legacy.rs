//! Legacy HTTP+SSE (2024-11-05) clients in front of any upstream. `GET
//! /sse` opens a stream whose first event (`endpoint`) names a POST URL
//! scoped to it (`/messages?sessionId=…`); each POST there is answered
//! 202 and everything the server sends arrives on that one stream.
//!
//! Inside, a legacy client is a session on the normal engine. Each POSTed
//! message takes the Streamable HTTP POST path (`post_stateful`: every
//! limit, the session, the upstream or its stdio child, with all their
//! reconnects); the answer (JSON, or a request's stream) is read by one
//! task per request, which puts its messages on the legacy client's
//! queue, and after `notifications/initialized` the session's GET stream
//! is read the same way. That queue feeds one engine stream of the
//! session, so the legacy client's events get sealed ids, the replay
//! buffer and the linger of every other stream. Its ids carry the legacy
//! id (the `sessionId` of the endpoint URL): a reconnect to `/sse` with
//! `Last-Event-ID` names its legacy client by it, the tag (which covers
//! it) proves it, and the client resumes from the buffer.
//!
//! A legacy session lives as long as its stream: when the stream was
//! released (no client came back within `detached_linger`), the sweep
//! ends the session here and upstream.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body as _, Frame};
use hyper::body::Incoming;
use shadowcat_transport::sse::{Decoder, OutgoingEvent, SseItem, encode_comment};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use super::body::ProxyBody;
use super::rejection::Rejection;
use super::{Shared, accepts};
use crate::event_id::{ClientEventId, StreamSealer};
use crate::mcp::jsonrpc::{self, Body as RpcBody, Kind};
use crate::mcp::{LAST_EVENT_ID, MCP_SESSION_ID, X_ACCEL_BUFFERING, is_sse, media_type_is};
use crate::session::SessionEntry;
use crate::stream::{
    BoxError, Closing, Pump, PumpSource, PumpSpec, StreamBody, StreamKind, StreamShared, StreamSlot,
};
use crate::upstream::queue::{MessageQueue, Pushed};

/// The legacy clients this instance serves, by legacy id.
#[derive(Debug, Default)]
pub(crate) struct LegacyClients {
    by_id: parking_lot::Mutex<HashMap<String, Arc<LegacyClient>>>,
}

impl LegacyClients {
    fn get(&self, id: &str) -> Option<Arc<LegacyClient>> {
        self.by_id.lock().get(id).cloned()
    }

    fn remove(&self, id: &str) -> Option<Arc<LegacyClient>> {
        self.by_id.lock().remove(id)
    }
}

/// One legacy client: its queue (what its stream reads) and, once
/// initialized, its session.
#[derive(Debug)]
struct LegacyClient {
    /// The `sessionId` of its endpoint URL; random, carried in its ids.
    id: String,
    queue: Arc<MessageQueue>,
    state: parking_lot::Mutex<ClientState>,
}

#[derive(Debug, Default)]
struct ClientState {
    /// Hands the stream to the first `/sse` body once initialized.
    attach: Option<oneshot::Sender<StreamBody>>,
    /// An initialize is in flight.
    initializing: bool,
    ready: Option<Ready>,
    /// The session's GET stream is being read into the queue.
    get_opened: bool,
}

#[derive(Debug, Clone)]
struct Ready {
    session: Arc<SessionEntry>,
    stream: Weak<StreamShared>,
    stream_no: u32,
}

impl LegacyClient {
    fn ready(&self) -> Option<Ready> {
        self.state.lock().ready.clone()
    }

    /// True once its stream is gone (released, or its session ended).
    fn gone(&self) -> bool {
        let Some(ready) = self.ready() else {
            return false;
        };
        ready
            .stream
            .upgrade()
            .is_none_or(|s| s.view().state == "released")
    }
}

/// 405 for a legacy path asked with the wrong method.
fn wrong_method(req: &Request<Incoming>, what: &str, allow: &'static str) -> Rejection {
    let mut rej = Rejection::new(
        StatusCode::METHOD_NOT_ALLOWED,
        jsonrpc::METHOD_NOT_FOUND,
        format!("{} {what}", req.uri().path()),
    );
    rej.allow = Some(allow);
    rej
}

impl Shared {
    /// `GET` on the legacy SSE path: a new legacy client, or a reconnect
    /// with `Last-Event-ID`.
    pub(super) async fn legacy_sse(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Rejection> {
        if req.method() != Method::GET {
            return Err(wrong_method(
                &req,
                "is the legacy SSE stream: open it with GET",
                "GET",
            ));
        }
        if !accepts(req.headers(), "text/event-stream") {
            return Err(Rejection::new(
                StatusCode::NOT_ACCEPTABLE,
                jsonrpc::INVALID_REQUEST,
                "the legacy SSE stream needs Accept: text/event-stream",
            ));
        }
        if let Some(last) = req.headers().get(&LAST_EVENT_ID) {
            return self.legacy_resume(last).await;
        }
        self.buffer_room()?;
        let id = shadowcat_session::SessionId::generate()
            .map_err(|e| {
                Rejection::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    jsonrpc::INTERNAL_ERROR,
                    format!("no randomness for a legacy session id: {e}"),
                )
            })?
            .as_str()
            .to_owned();
        let replay = self.config.limits.replay;
        let (tx, rx) = oneshot::channel();
        let client = Arc::new(LegacyClient {
            id: id.clone(),
            queue: Arc::new(MessageQueue::new(
                replay.max_events,
                replay.max_bytes,
                false,
            )),
            state: parking_lot::Mutex::new(ClientState {
                attach: Some(tx),
                ..ClientState::default()
            }),
        });
        self.legacy.by_id.lock().insert(id.clone(), client);
        metrics::counter!("shadowcat_legacy_streams_total", "kind" => "new").increment(1);
        tracing::debug!("legacy SSE client connected");
        let body = LegacySse {
            prefix: Some(self.endpoint_event(&id)),
            phase: Phase::Waiting(rx),
            keepalive: Box::pin(tokio::time::sleep(self.config.limits.keepalive_interval)),
            every: self.config.limits.keepalive_interval,
            closing: self.closing(),
            pending: Some(PendingGuard {
                clients: Arc::clone(&self.legacy),
                id,
            }),
        };
        Ok(sse_response(body))
    }

    /// The `endpoint` event: where this legacy client POSTs.
    fn endpoint_event(&self, id: &str) -> Bytes {
        let url = format!("{}?sessionId={id}", self.config.legacy_messages_path);
        let mut out = BytesMut::new();
        // A path and hex digits: no line break, cannot fail.
        let _ = OutgoingEvent::new()
            .event("endpoint")
            .data(url.as_bytes())
            .encode(&mut out);
        out.freeze()
    }

    /// A legacy client reconnects with the id of the last event it got:
    /// the id names its legacy client, whose stream replays what follows.
    async fn legacy_resume(&self, last: &HeaderValue) -> Result<Response<ProxyBody>, Rejection> {
        let max = self.live().limits.max_last_event_id_len;
        if last.len() > max {
            return Err(Rejection::bad_request(format!(
                "Last-Event-ID is longer than the limit of {max} bytes"
            )));
        }
        let text = last
            .to_str()
            .map_err(|_| Rejection::bad_request("Last-Event-ID must be visible ASCII"))?;
        let not_ours = |why: &dyn std::fmt::Display| {
            metrics::counter!("shadowcat_resume_rejected_total").increment(1);
            Rejection::bad_request(format!(
                "Last-Event-ID {text:?} is not an event id of a legacy stream here: {why}; open /sse without it"
            ))
        };
        let id = ClientEventId::parse(text).map_err(|e| not_ours(&e))?;
        let Some(legacy_id) = id.upstream.as_deref() else {
            return Err(not_ours(&"it names no legacy session"));
        };
        let ready = self.legacy.get(legacy_id).and_then(|c| c.ready());
        let Some(ready) = ready else {
            return Err(Rejection::new(
                StatusCode::NOT_FOUND,
                jsonrpc::SERVER_ERROR,
                "unknown or ended legacy session (it ended, or another instance or an earlier run served it); open /sse without Last-Event-ID",
            ));
        };
        let session = &ready.session;
        if let Err(e) = id.verify(&session.key, &session.id) {
            return Err(not_ours(&e));
        }
        if id.stream != ready.stream_no {
            return Err(not_ours(&"it is another stream's id"));
        }
        let gap = |limit: &'static str, cause: String| {
            metrics::counter!("shadowcat_resume_gaps_total", "limit" => limit).increment(1);
            tracing::warn!(session_fp = %session.id.fingerprint(), last_event_id = %text, %cause, "legacy stream cannot be resumed");
            Rejection::new(
                StatusCode::GONE,
                jsonrpc::SERVER_ERROR,
                format!(
                    "cannot resume after Last-Event-ID {text:?}: {cause}; open /sse without it"
                ),
            )
        };
        let Some(stream) = ready.stream.upgrade() else {
            return Err(gap("detached_linger", "the stream was released".to_owned()));
        };
        let slot = self.stream_slot(session)?;
        match stream.attach_with(id.seq.saturating_add(1), Some(slot)) {
            Ok(body) => {
                metrics::counter!("shadowcat_client_resumes_total", "from" => "buffer")
                    .increment(1);
                metrics::counter!("shadowcat_legacy_streams_total", "kind" => "resumed")
                    .increment(1);
                tracing::debug!(session_fp = %session.id.fingerprint(), seq = id.seq, "legacy client resumes from the replay buffer");
                Ok(sse_response(LegacySse {
                    prefix: Some(self.endpoint_event(legacy_id)),
                    phase: Phase::Stream(Box::new(body)),
                    keepalive: Box::pin(tokio::time::sleep(self.config.limits.keepalive_interval)),
                    every: self.config.limits.keepalive_interval,
                    closing: self.closing(),
                    pending: None,
                }))
            }
            Err(why) => Err(gap(why.limit(), why.cause(&self.env))),
        }
    }

    /// `POST` on the legacy messages path: one client message, answered
    /// 202; what answers it goes on the client's stream.
    pub(super) async fn legacy_post(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Rejection> {
        if req.method() != Method::POST {
            return Err(wrong_method(
                &req,
                "takes a legacy client's messages: use POST",
                "POST",
            ));
        }
        let (parts, body) = req.into_parts();
        let ip = parts
            .extensions
            .get::<super::ratelimit::ClientAddr>()
            .map(|c| c.0.ip());
        let Some(id) = parts.uri.query().and_then(session_param) else {
            return Err(Rejection::bad_request(
                "missing sessionId: POST to the URL of the stream's endpoint event",
            ));
        };
        let Some(client) = self.legacy.get(id).filter(|c| !c.gone()) else {
            return Err(Rejection::new(
                StatusCode::NOT_FOUND,
                jsonrpc::SERVER_ERROR,
                "unknown or ended legacy session; open a new /sse stream",
            ));
        };
        if !media_type_is(&parts.headers, &header::CONTENT_TYPE, "application/json") {
            return Err(Rejection::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                jsonrpc::INVALID_REQUEST,
                "Content-Type must be application/json",
            ));
        }
        let bytes = self.read_body(body).await?;
        let msg = jsonrpc::parse_body(&bytes)
            .map_err(|e| Rejection::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()))?;
        let RpcBody::Single(m) = &msg else {
            return Err(Rejection::bad_request(
                "the legacy transport takes one message per POST, not a batch",
            ));
        };
        let ready = client.ready();
        let Some(ready) = ready else {
            return self.legacy_initialize(&client, bytes, &msg, ip).await;
        };
        let session = ready.session;
        let headers = internal_headers(Some(&session));
        let answer = self.post_stateful(&headers, bytes, &msg, None, ip).await;
        let resp = match answer {
            Ok(resp) => resp,
            // A request gets its error on the stream, where the client
            // waits for its answer.
            Err(rej) if m.kind == Kind::Request => {
                let body = jsonrpc::error_body(m.id.as_ref(), rej.code, &rej.message);
                if client.queue.push(body) == Pushed::Abandoned {
                    return Err(rej);
                }
                return Ok(accepted());
            }
            Err(rej) => return Err(rej),
        };
        if m.method.as_deref() == Some("notifications/initialized") {
            self.legacy_get_stream(&client, &session).await;
        }
        pipe_answer(resp, &client.queue);
        Ok(accepted())
    }

    /// The first message: `initialize`, which makes the session; then the
    /// client's stream starts.
    async fn legacy_initialize(
        &self,
        client: &Arc<LegacyClient>,
        bytes: Bytes,
        msg: &RpcBody,
        ip: Option<IpAddr>,
    ) -> Result<Response<ProxyBody>, Rejection> {
        if !msg.is_initialize() {
            return Err(Rejection::bad_request(
                "send initialize first: the session starts with it",
            ));
        }
        {
            let mut st = client.state.lock();
            if st.initializing {
                return Err(Rejection::new(
                    StatusCode::CONFLICT,
                    jsonrpc::INVALID_REQUEST,
                    "an initialize is already in flight on this legacy session",
                ));
            }
            st.initializing = true;
        }
        let result = self.legacy_create(client, bytes, msg, ip).await;
        client.state.lock().initializing = false;
        result
    }

    async fn legacy_create(
        &self,
        client: &Arc<LegacyClient>,
        bytes: Bytes,
        msg: &RpcBody,
        ip: Option<IpAddr>,
    ) -> Result<Response<ProxyBody>, Rejection> {
        let init_id = msg.messages()[0].id.clone();
        let headers = internal_headers(None);
        let resp = self
            .post_stateful(&headers, bytes, msg, None, ip)
            .await
            .map_err(|r| r.with_id(init_id.clone()))?;
        let sid = resp
            .headers()
            .get(&MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let session = match sid {
            Some(sid) => self.sessions.lookup(&sid).await.ok().flatten(),
            None => None,
        };
        let Some(session) = session else {
            // The upstream refused the initialize: its answer is the
            // client's, on the POST.
            return Ok(resp);
        };
        let slot = StreamSlot::acquire(
            &session.open_streams,
            self.live().limits.max_streams_per_session,
        );
        let body = self.open_legacy_stream(&session, client, slot);
        let stream = Arc::downgrade(body.shared());
        let stream_no = body.shared().id().0;
        let attach = {
            let mut st = client.state.lock();
            st.ready = Some(Ready {
                session: Arc::clone(&session),
                stream,
                stream_no,
            });
            st.attach.take()
        };
        tracing::debug!(session_fp = %session.id.fingerprint(), "legacy client initialized");
        match attach {
            // The client's stream is still open: it reads from here on.
            Some(tx) => {
                let _ = tx.send(body);
            }
            None => drop(body),
        }
        pipe_answer(resp, &client.queue);
        Ok(accepted())
    }

    /// The engine stream a legacy client reads: the session's, fed by the
    /// client's queue, every id carrying the legacy id.
    fn open_legacy_stream(
        &self,
        session: &SessionEntry,
        client: &LegacyClient,
        slot: Option<StreamSlot>,
    ) -> StreamBody {
        let stream = session.next_stream(true);
        let spec = PumpSpec {
            kind: StreamKind::Get,
            session: session.id.clone(),
            stream,
            sealer: Some(StreamSealer::new(&session.key, &session.id, stream.0)),
            upstream_session: None,
            version: session.version,
            // Nothing to resume upstream from: the stream is this
            // instance's own.
            sink: None,
            resume_after: Some(client.id.clone()),
            legacy: true,
            // Legacy clients are refused while [auth] is on.
            authorization: None,
        };
        let pump = Pump::new(
            PumpSource::Queue(Arc::clone(&client.queue)),
            spec,
            Arc::clone(&self.env),
        );
        let shared = StreamShared::start(&session.streams, stream, pump, Arc::clone(&self.env));
        shared
            .attach_with(1, slot)
            .expect("a new stream can be read from its first event")
    }

    /// Reads the session's GET stream (server-to-client messages outside
    /// any request) into the legacy client's queue, once.
    async fn legacy_get_stream(&self, client: &LegacyClient, session: &Arc<SessionEntry>) {
        {
            let mut st = client.state.lock();
            if st.get_opened {
                return;
            }
            st.get_opened = true;
        }
        let opened = match self.bridge() {
            Some(bridge) => match self.stdio_child(bridge, session).await {
                Ok(child) => self.stdio_get(session, &child),
                Err(rej) => Err(rej),
            },
            None => {
                let mut headers = HeaderMap::new();
                headers.insert(
                    header::ACCEPT,
                    HeaderValue::from_static("text/event-stream"),
                );
                match self.stream_slot(session) {
                    Ok(slot) => {
                        let up = self.upstream_request(
                            Method::GET,
                            &headers,
                            Some(session),
                            Bytes::new(),
                        );
                        match self.send(up).await {
                            Ok(resp) => {
                                self.after_upstream(
                                    resp,
                                    session,
                                    Some(slot),
                                    StreamKind::Get,
                                    "legacy-get",
                                )
                                .await
                            }
                            Err(rej) => Err(rej),
                        }
                    }
                    Err(rej) => Err(rej),
                }
            }
        };
        match opened {
            Ok(resp) if is_sse(resp.headers()) => pipe_answer(resp, &client.queue),
            Ok(resp) => {
                tracing::debug!(status = %resp.status(), "the upstream has no GET stream for the legacy client");
            }
            Err(rej) => {
                // 405: the server has none; anything else is worth a note.
                if rej.status != StatusCode::METHOD_NOT_ALLOWED {
                    tracing::warn!(session_fp = %session.id.fingerprint(), status = %rej.status, message = %rej.message, "could not open the GET stream for a legacy client; server-initiated messages outside requests will not reach it");
                }
            }
        }
    }

    /// Ends the legacy sessions whose stream is gone: here, in the store
    /// and upstream.
    pub(super) async fn sweep_legacy(&self) {
        let gone: Vec<Arc<LegacyClient>> = {
            let by_id = self.legacy.by_id.lock();
            by_id.values().filter(|c| c.gone()).cloned().collect()
        };
        for client in gone {
            self.legacy.remove(&client.id);
            client.queue.abandon();
            let Some(ready) = client.ready() else {
                continue;
            };
            let session = ready.session;
            metrics::counter!("shadowcat_legacy_sessions_ended_total").increment(1);
            tracing::debug!(session_fp = %session.id.fingerprint(), "legacy client gone; ending its session");
            self.forget(&session).await;
            if let Some(bridge) = self.bridge() {
                bridge.stop(&session.id);
            }
            if let Some(up) = &session.upstream_id {
                self.ender.end_refused(up.clone(), session.version.as_str());
            }
        }
    }
}

/// Runs [`Shared::sweep_legacy`] every `session_revalidate_interval`
/// until the proxy goes.
pub(super) async fn run_sweeper(shared: Weak<Shared>) {
    let (every, mut closing) = match shared.upgrade() {
        Some(s) => (
            s.config.limits.session_revalidate_interval,
            s.closing.clone(),
        ),
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = closing.wait_for(|c| *c) => return,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.sweep_legacy().await;
    }
}

/// `sessionId` from a query string.
fn session_param(query: &str) -> Option<&str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("sessionId="))
        .filter(|v| !v.is_empty())
}

/// The headers of a legacy client's message as a Streamable HTTP POST.
fn internal_headers(session: Option<&SessionEntry>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::ACCEPT,
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    if let Some(s) = session
        && let Ok(v) = HeaderValue::from_str(s.id.as_str())
    {
        h.insert(MCP_SESSION_ID, v);
    }
    h
}

fn accepted() -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::empty());
    *r.status_mut() = StatusCode::ACCEPTED;
    r
}

fn sse_response(body: LegacySse) -> Response<ProxyBody> {
    let mut out = Response::new(ProxyBody::legacy(body));
    let h = out.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    out
}

/// Reads an answer (JSON, or SSE from a request's or the GET stream) into
/// the legacy client's queue in a task of its own (one per request, none
/// per event); a request's stream is released once read.
fn pipe_answer(resp: Response<ProxyBody>, queue: &Arc<MessageQueue>) {
    let sse = is_sse(resp.headers());
    let body = resp.into_body();
    if body.is_end_stream() {
        return;
    }
    let queue = Arc::clone(queue);
    tokio::spawn(async move {
        let stream = body.stream_shared();
        if let Err(e) = pipe(body, sse, &queue).await {
            metrics::counter!("shadowcat_legacy_pipe_errors_total").increment(1);
            tracing::warn!(error = %e, "a legacy client's answer was cut");
        }
        // Read by this task only, which nobody resumes: its buffer goes.
        if let Some(s) = stream {
            s.release();
        }
    });
}

async fn pipe(mut body: ProxyBody, sse: bool, queue: &MessageQueue) -> Result<(), String> {
    let mut decoder = Decoder::default();
    let mut json = BytesMut::new();
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        let data = match frame {
            None => break,
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
        };
        if !sse {
            json.extend_from_slice(&data);
            continue;
        }
        decoder.push(data);
        for item in decoder.by_ref() {
            if let SseItem::Event(ev) = item.map_err(|e| e.to_string())?
                && !ev.data.is_empty()
                && !push(queue, ev.data).await
            {
                return Ok(());
            }
        }
    }
    if !json.is_empty() {
        push(queue, json.freeze()).await;
    }
    Ok(())
}

/// Waits for room, then queues `msg`. False once nobody reads the queue.
async fn push(queue: &MessageQueue, msg: Bytes) -> bool {
    std::future::poll_fn(|cx| queue.poll_room(cx)).await;
    queue.push(msg) != Pushed::Abandoned
}

/// A legacy client's `/sse` body: the `endpoint` event, keep-alives until
/// the initialize made its stream, then the stream.
pub(crate) struct LegacySse {
    prefix: Option<Bytes>,
    phase: Phase,
    keepalive: Pin<Box<Sleep>>,
    every: std::time::Duration,
    closing: Closing,
    /// Removes a client that never initialized when its stream goes.
    pending: Option<PendingGuard>,
}

enum Phase {
    Waiting(oneshot::Receiver<StreamBody>),
    Stream(Box<StreamBody>),
    Done,
}

impl std::fmt::Debug for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Waiting(_) => "waiting for initialize",
            Phase::Stream(_) => "streaming",
            Phase::Done => "done",
        })
    }
}

#[derive(Debug)]
struct PendingGuard {
    clients: Arc<LegacyClients>,
    id: String,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut by_id = self.clients.by_id.lock();
        if by_id
            .get(&self.id)
            .is_some_and(|c| c.state.lock().ready.is_none())
        {
            by_id.remove(&self.id);
        }
    }
}

impl std::fmt::Debug for LegacySse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacySse")
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl LegacySse {
    pub(crate) fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        loop {
            match &mut self.phase {
                Phase::Stream(body) => {
                    let polled = body.poll_next(cx);
                    if matches!(polled, Poll::Ready(None)) {
                        self.phase = Phase::Done;
                    }
                    return polled;
                }
                Phase::Done => return Poll::Ready(None),
                Phase::Waiting(rx) => {
                    if self.closing.as_mut().poll(cx).is_ready() {
                        self.phase = Phase::Done;
                        return Poll::Ready(None);
                    }
                    match Pin::new(rx).poll(cx) {
                        Poll::Ready(Ok(body)) => {
                            // Initialized: from here the client is the
                            // session's, not pending.
                            self.pending = None;
                            self.phase = Phase::Stream(Box::new(body));
                        }
                        Poll::Ready(Err(_)) => {
                            self.phase = Phase::Done;
                            return Poll::Ready(None);
                        }
                        Poll::Pending => {
                            if self.keepalive.as_mut().poll(cx).is_pending() {
                                return Poll::Pending;
                            }
                            let at = Instant::now() + self.every;
                            self.keepalive.as_mut().reset(at);
                            let mut out = BytesMut::new();
                            let _ = encode_comment(&mut out, "");
                            return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_param_is_found() {
        assert_eq!(session_param("sessionId=abc"), Some("abc"));
        assert_eq!(session_param("x=1&sessionId=abc&y=2"), Some("abc"));
        assert_eq!(session_param("sessionId="), None);
        assert_eq!(session_param("session=abc"), None);
    }
}
