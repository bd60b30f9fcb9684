//! A stdio MCP server as the reverse proxy's upstream: one child program
//! per MCP session, served over Streamable HTTP with the same sessions,
//! client event ids, replay buffers and resume path as an HTTP upstream.
//!
//! The child's messages reach the client through the ordinary stream
//! machinery: each stream's [`Pump`](crate::stream::Pump) reads a
//! [`MessageQueue`] instead of an HTTP body, and one router per child
//! reads the child's stdout and puts each message on exactly one queue:
//!
//! 1. a response goes to the stream of the request with its id, and ends
//!    that stream;
//! 2. `notifications/progress` goes to the stream of the request whose
//!    `_meta.progressToken` it carries;
//! 3. any other request or notification goes to the stream of the one
//!    request in flight, when exactly one is: it was sent while that
//!    request was being handled (stdio carries no other relation, and a
//!    stdio server handles what it is sent in order); with none or
//!    several in flight, it goes to the session's GET stream.
//!
//! Back-pressure: a request stream's queue is bounded by the replay
//! limits, and the router waits for room (a slow client slows the child,
//! as a TCP upstream would be slowed); the GET queue, which no client may
//! ever read, drops what does not fit, logged and counted.
//!
//! Lifecycle: children are started on one long-lived thread (the
//! parent-death signal follows the spawning thread), stopped on DELETE,
//! when their session is gone from the store or idle past the timeout
//! (one check task), and on shutdown. A child that exits or sends an
//! over-long line ends its session: pending request streams end with a
//! JSON-RPC error naming the cause, and the session is removed, so the
//! next request gets 404.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use shadowcat_session::{SessionId, now_millis};
use shadowcat_transport::{
    ChildCommand, LineError, LineReader, LineWriter, StdioChild, StdioConfig, StdioError,
};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use super::legacy::LegacyLink;
use crate::session::Sessions;
use crate::stream::StreamShared;
use crate::stream::replay::ReplayLimits;
use crate::upstream::queue::{MessageQueue, Pushed, QueueEnd};

/// A stdio MCP server run once per session.
#[derive(Debug, Clone)]
pub struct StdioUpstream {
    /// The program, its arguments, environment and working directory.
    pub command: ChildCommand,
    /// The child's limits: stdout line length (an over-long line ends the
    /// session), stderr, kill grace. Its `stderr_label` is set to the
    /// session id.
    pub child: StdioConfig,
    /// Most children (sessions) at once; an initialize beyond it gets 503.
    /// Default [`StdioUpstream::DEFAULT_MAX_CHILDREN`].
    pub max_children: usize,
    /// A child whose session had no request for this long, with no
    /// request in flight, is stopped. Default 30 min (match the session
    /// idle timeout).
    pub idle_timeout: Duration,
    /// How often children are checked against the store and the idle
    /// timeout. Default 5 s.
    pub check_interval: Duration,
    /// Most messages a client may have queued toward one child. Default
    /// 1,024.
    pub max_queued_to_child: usize,
}

impl StdioUpstream {
    /// Default for [`StdioUpstream::max_children`].
    pub const DEFAULT_MAX_CHILDREN: usize = 64;

    /// Defaults for running `command`.
    pub fn new(command: ChildCommand) -> Self {
        StdioUpstream {
            command,
            child: StdioConfig::default(),
            max_children: Self::DEFAULT_MAX_CHILDREN,
            idle_timeout: Duration::from_secs(30 * 60),
            check_interval: Duration::from_secs(5),
            max_queued_to_child: 1024,
        }
    }

    /// `stdio:` and the command line, as stored in sessions and logged.
    pub fn label(&self) -> String {
        let mut s = format!("stdio:{}", self.command.program.to_string_lossy());
        for a in &self.command.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }
}

/// Why a child could not serve a request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BridgeError {
    /// `max_children` reached.
    #[error("the proxy runs {0} stdio servers, its limit (max_children); end unused sessions")]
    Full(usize),
    /// The program could not be started.
    #[error("the stdio server could not be started: {0}")]
    Spawn(#[from] StdioError),
    /// The proxy is stopping.
    #[error("the proxy is shutting down")]
    Stopping,
    /// The child ended.
    #[error("the stdio server of this session has ended: {0}")]
    Gone(Arc<str>),
    /// The client reused the id of a request still in flight.
    #[error("request id {0} is already in flight in this session; use a new id")]
    DuplicateId(String),
    /// The request's id is neither a string nor an integer.
    #[error("the request id must be a string or an integer (MCP)")]
    BadId,
}

// ---- JSON-RPC probing -------------------------------------------------

/// A JSON-RPC id or progress token, borrowed from the message.
#[derive(Debug, PartialEq)]
enum IdRef<'a> {
    Int(i128),
    Str(Cow<'a, str>),
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for IdRef<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = IdRef<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON-RPC id")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(IdRef::Int(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(IdRef::Int(v.into()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(IdRef::Other)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(IdRef::Other)
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(IdRef::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(IdRef::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(IdRef::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Self::Value, A::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(IdRef::Other)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// An owned id or token, compared with an [`IdRef`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum IdKey {
    Int(i128),
    Str(Box<str>),
}

impl IdKey {
    fn of(r: &IdRef<'_>) -> Option<Self> {
        match r {
            IdRef::Int(i) => Some(IdKey::Int(*i)),
            IdRef::Str(s) => Some(IdKey::Str(s.as_ref().into())),
            IdRef::Other => None,
        }
    }

    fn is(&self, r: &IdRef<'_>) -> bool {
        match (self, r) {
            (IdKey::Int(a), IdRef::Int(b)) => a == b,
            (IdKey::Str(a), IdRef::Str(b)) => **a == **b,
            _ => false,
        }
    }
}

impl fmt::Display for IdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdKey::Int(i) => write!(f, "{i}"),
            IdKey::Str(s) => write!(f, "{s:?}"),
        }
    }
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(rename = "progressToken", borrow, default)]
    progress_token: Option<IdRef<'a>>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(rename = "progressToken", borrow, default)]
    progress_token: Option<IdRef<'a>>,
    #[serde(rename = "requestId", borrow, default)]
    request_id: Option<IdRef<'a>>,
    #[serde(rename = "_meta", borrow, default)]
    meta: Option<Meta<'a>>,
}

/// What routing needs from one message.
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<IdRef<'a>>,
    #[serde(borrow, default)]
    params: Option<Params<'a>>,
}

#[derive(Deserialize)]
struct BareProbe<'a> {
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<IdRef<'a>>,
}

impl<'a> Probe<'a> {
    fn parse(line: &'a [u8]) -> Option<Self> {
        match serde_json::from_slice::<Probe<'a>>(line) {
            Ok(p) => Some(p),
            // Positional params and the like: route by method and id.
            Err(_) => serde_json::from_slice::<BareProbe<'a>>(line)
                .ok()
                .map(|b| Probe {
                    method: b.method,
                    id: b.id,
                    params: None,
                }),
        }
    }
}

/// Makes `msg` one line: JSON holds no raw line break inside strings, so
/// breaks between tokens become spaces.
pub(crate) fn one_line(msg: Bytes) -> Bytes {
    if !msg.iter().any(|b| *b == b'\n' || *b == b'\r') {
        return msg;
    }
    let mut v = msg.to_vec();
    for b in &mut v {
        if *b == b'\n' || *b == b'\r' {
            *b = b' ';
        }
    }
    Bytes::from(v)
}

// ---- one child ------------------------------------------------------

struct Pending {
    id: IdKey,
    token: Option<IdKey>,
    queue: Arc<MessageQueue>,
}

/// One session's child: its stdin, its routes, its GET queue.
pub(crate) struct ChildSession {
    pub(crate) id: SessionId,
    pid: u32,
    to_child: mpsc::Sender<Bytes>,
    pending: Mutex<Vec<Pending>>,
    pub(crate) get_queue: Arc<MessageQueue>,
    /// The session's GET stream, while it lives.
    pub(crate) get_stream: Mutex<Weak<StreamShared>>,
    last_active: AtomicU64,
    pub(super) stop: Notify,
    /// Set once a stop was asked for: the check task leaves it alone.
    stopping: AtomicBool,
    dead: Mutex<Option<Arc<str>>>,
    limits: ReplayLimits,
}

impl fmt::Debug for ChildSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSession")
            .field("id", &self.id)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// What a client message turned into.
#[derive(Debug)]
pub(crate) enum Sent {
    /// A request: its stream reads this queue.
    Request(Arc<MessageQueue>),
    /// A notification or response: 202.
    Accepted,
}

impl ChildSession {
    pub(crate) fn touch(&self) {
        self.last_active.store(now_millis(), Ordering::Relaxed);
    }

    /// Asks the child's task to stop the child.
    fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.stop.notify_one();
    }

    fn gone(&self) -> Option<Arc<str>> {
        self.dead.lock().clone()
    }

    /// Sends one client message to the child. A request gets a queue its
    /// stream reads; its id must not be in flight.
    pub(crate) async fn send(&self, msg: Bytes) -> Result<Sent, BridgeError> {
        if let Some(cause) = self.gone() {
            return Err(BridgeError::Gone(cause));
        }
        self.touch();
        let msg = one_line(msg);
        let probe = Probe::parse(&msg);
        let mut out = Sent::Accepted;
        if let Some(p) = &probe {
            match (&p.method, &p.id) {
                (Some(_), Some(id)) => {
                    let Some(key) = IdKey::of(id) else {
                        return Err(BridgeError::BadId);
                    };
                    let token = p
                        .params
                        .as_ref()
                        .and_then(|p| p.meta.as_ref())
                        .and_then(|m| m.progress_token.as_ref())
                        .and_then(IdKey::of);
                    let queue = Arc::new(MessageQueue::new(
                        self.limits.max_events,
                        self.limits.max_bytes,
                        false,
                    ));
                    let mut pending = self.pending.lock();
                    if pending.iter().any(|q| q.id == key) {
                        return Err(BridgeError::DuplicateId(key.to_string()));
                    }
                    pending.push(Pending {
                        id: key,
                        token,
                        queue: Arc::clone(&queue),
                    });
                    out = Sent::Request(queue);
                }
                (Some(m), None) if m == "notifications/cancelled" => {
                    // The server will not answer a cancelled request: its
                    // stream ends here.
                    let cancelled = p.params.as_ref().and_then(|p| p.request_id.as_ref());
                    if let Some(rid) = cancelled {
                        let mut pending = self.pending.lock();
                        if let Some(i) = pending.iter().position(|q| q.id.is(rid)) {
                            pending.swap_remove(i).queue.finish(QueueEnd::Complete);
                        }
                    }
                }
                _ => {}
            }
        }
        if self.to_child.send(msg).await.is_err() {
            let cause = self
                .gone()
                .unwrap_or_else(|| Arc::from("its stdin is closed"));
            return Err(BridgeError::Gone(cause));
        }
        Ok(out)
    }

    /// Puts one message from the child on its stream's queue.
    pub(super) async fn route(&self, line: Bytes) {
        let Some(p) = Probe::parse(&line) else {
            metrics::counter!("shadowcat_stdio_errors_total", "kind" => "not_json").increment(1);
            tracing::warn!(session_fp = %self.id.fingerprint(), len = line.len(), "the stdio server wrote a line that is not a JSON-RPC message; dropped");
            return;
        };
        let (queue, response) = {
            let mut pending = self.pending.lock();
            match (&p.method, &p.id) {
                (None, Some(id)) => match pending.iter().position(|q| q.id.is(id)) {
                    Some(i) => (Some(pending.swap_remove(i).queue), true),
                    None => {
                        metrics::counter!("shadowcat_stdio_errors_total", "kind" => "stray_response").increment(1);
                        tracing::warn!(session_fp = %self.id.fingerprint(), "the stdio server answered a request not in flight; dropped");
                        return;
                    }
                },
                (Some(m), None) if m == "notifications/progress" => {
                    let token = p.params.as_ref().and_then(|p| p.progress_token.as_ref());
                    let by_token = token.and_then(|t| {
                        pending
                            .iter()
                            .find(|q| q.token.as_ref().is_some_and(|k| k.is(t)))
                    });
                    match by_token {
                        Some(q) => (Some(Arc::clone(&q.queue)), false),
                        None => (only_one(&pending), false),
                    }
                }
                _ => (only_one(&pending), false),
            }
        };
        let Some(queue) = queue else {
            if self.get_queue.push(line) == Pushed::Dropped {
                metrics::counter!("shadowcat_stdio_errors_total", "kind" => "get_queue_full")
                    .increment(1);
                tracing::warn!(session_fp = %self.id.fingerprint(), "the GET stream's queue is full (no client reads it); message dropped");
            }
            return;
        };
        std::future::poll_fn(|cx| queue.poll_room(cx)).await;
        if queue.push(line) == Pushed::Abandoned {
            tracing::debug!(session_fp = %self.id.fingerprint(), "message for a released stream dropped");
        }
        if response {
            queue.finish(QueueEnd::Complete);
        }
    }

    /// Reads the child until its stdout ends or breaks; returns the cause.
    async fn route_all(&self, reader: &mut LineReader<ChildStdout>) -> String {
        loop {
            match reader.next_line().await {
                Ok(Some(line)) if line.is_empty() => {}
                Ok(Some(line)) => self.route(line).await,
                Ok(None) => return "the stdio server closed its stdout".into(),
                Err(e @ LineError::TooLong { .. }) => {
                    metrics::counter!("shadowcat_stdio_errors_total", "kind" => "line_too_long")
                        .increment(1);
                    return format!("the stdio server broke the line limit: {e}");
                }
                Err(e) => return format!("reading the stdio server failed: {e}"),
            }
        }
    }

    /// The child is gone: every stream ends with `cause`.
    fn fail_all(&self, cause: &str) {
        let cause: Arc<str> = Arc::from(cause);
        *self.dead.lock() = Some(Arc::clone(&cause));
        let pending = std::mem::take(&mut *self.pending.lock());
        for p in pending {
            p.queue.finish(QueueEnd::Failed(Arc::clone(&cause)));
        }
        self.get_queue.finish(QueueEnd::Failed(cause));
    }

    /// The upstream connection was lost but the session goes on: every
    /// request in flight ends with `cause`. Returns how many did.
    pub(super) fn fail_in_flight(&self, cause: &str) -> usize {
        let cause: Arc<str> = Arc::from(cause);
        let pending = std::mem::take(&mut *self.pending.lock());
        for p in &pending {
            p.queue.finish(QueueEnd::Failed(Arc::clone(&cause)));
        }
        pending.len()
    }

    fn busy(&self) -> bool {
        !self.pending.lock().is_empty()
    }
}

fn only_one(pending: &[Pending]) -> Option<Arc<MessageQueue>> {
    match pending {
        [one] => Some(Arc::clone(&one.queue)),
        _ => None,
    }
}

async fn write_to_child(
    mut rx: mpsc::Receiver<Bytes>,
    mut stdin: LineWriter<ChildStdin>,
    id: SessionId,
) {
    while let Some(msg) = rx.recv().await {
        let mut result = stdin.feed(&msg).await;
        while result.is_ok()
            && let Ok(m) = rx.try_recv()
        {
            result = stdin.feed(&m).await;
        }
        if let Err(e) = result.and(stdin.flush().await) {
            metrics::counter!("shadowcat_stdio_errors_total", "kind" => "write").increment(1);
            tracing::warn!(session_fp = %id.fingerprint(), error = %e, "writing to the stdio server failed");
            return;
        }
    }
    // Dropping the writer closes the child's stdin.
}

// ---- the bridge ---------------------------------------------------------

struct SpawnJob {
    command: ChildCommand,
    config: StdioConfig,
    reply: oneshot::Sender<Result<StdioChild, StdioError>>,
}

/// Every child of the proxy.
pub(crate) struct StdioBridge {
    config: StdioUpstream,
    limits: ReplayLimits,
    children: Mutex<HashMap<SessionId, Arc<ChildSession>>>,
    /// Children started or starting, for `max_children`.
    reserved: AtomicUsize,
    live: watch::Sender<usize>,
    spawner: Mutex<Option<std::sync::mpsc::Sender<SpawnJob>>>,
    sessions: Arc<Sessions>,
    /// Set when the "child" is a legacy HTTP+SSE upstream connection.
    legacy: Option<Arc<LegacyLink>>,
}

impl fmt::Debug for StdioBridge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StdioBridge")
            .field("command", &self.config.command)
            .field("children", &self.reserved.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Gives back a `max_children` reservation unless kept.
struct Reservation<'a>(&'a StdioBridge, bool);

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.reserved.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl StdioBridge {
    /// Starts the spawner thread and the check task. Inside a runtime.
    pub(crate) fn start(
        config: StdioUpstream,
        limits: ReplayLimits,
        sessions: Arc<Sessions>,
    ) -> Result<Arc<Self>, std::io::Error> {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnJob>();
        let handle = tokio::runtime::Handle::current();
        // Children are started here: their parent-death signal fires when
        // this thread ends, which is when the bridge is dropped.
        std::thread::Builder::new()
            .name("shadowcat-stdio-spawner".into())
            .spawn(move || {
                let _rt = handle.enter();
                while let Ok(job) = rx.recv() {
                    let _ = job.reply.send(StdioChild::spawn(&job.command, &job.config));
                }
            })?;
        let bridge = Arc::new(StdioBridge {
            config,
            limits,
            children: Mutex::new(HashMap::new()),
            reserved: AtomicUsize::new(0),
            live: watch::Sender::new(0),
            spawner: Mutex::new(Some(tx)),
            sessions,
            legacy: None,
        });
        tokio::spawn(check_children(Arc::downgrade(&bridge)));
        Ok(bridge)
    }

    /// A bridge whose sessions each hold one connection to the legacy
    /// HTTP+SSE upstream `link` ([`super::legacy`]). Inside a runtime.
    pub(crate) fn start_legacy(
        link: LegacyLink,
        config: StdioUpstream,
        limits: ReplayLimits,
        sessions: Arc<Sessions>,
    ) -> Arc<Self> {
        let bridge = Arc::new(StdioBridge {
            config,
            limits,
            children: Mutex::new(HashMap::new()),
            reserved: AtomicUsize::new(0),
            live: watch::Sender::new(0),
            spawner: Mutex::new(None),
            sessions,
            legacy: Some(Arc::new(link)),
        });
        tokio::spawn(check_children(Arc::downgrade(&bridge)));
        bridge
    }

    /// The legacy upstream, when this bridge fronts one.
    pub(crate) fn legacy_link(&self) -> Option<&Arc<LegacyLink>> {
        self.legacy.as_ref()
    }

    /// Opens session `id`'s connection to the legacy upstream.
    async fn connect_legacy(
        self: &Arc<Self>,
        link: &Arc<LegacyLink>,
        id: &SessionId,
    ) -> Result<Arc<ChildSession>, BridgeError> {
        let mut reservation = self.reserve()?;
        let conn = link
            .open()
            .await
            .map_err(|e| BridgeError::Gone(Arc::from(e)))?;
        let (cs, rx) = self.register(id, 0);
        reservation.1 = true;
        tracing::debug!(session_fp = %id.fingerprint(), "legacy upstream connection opened");
        let bridge = Arc::clone(self);
        let session = Arc::clone(&cs);
        let link = Arc::clone(link);
        tokio::spawn(async move {
            let lost = super::legacy::run(Arc::clone(&session), link, conn, rx).await;
            let status = if lost.is_some() {
                "connection lost"
            } else {
                "closed"
            };
            bridge.ended(&session, lost, status).await;
        });
        Ok(cs)
    }

    /// A new session's state, registered as live, and the receiving end
    /// of its queue toward the child (or legacy connection).
    fn register(&self, id: &SessionId, pid: u32) -> (Arc<ChildSession>, mpsc::Receiver<Bytes>) {
        let (to_child, rx) = mpsc::channel(self.config.max_queued_to_child.max(1));
        let cs = Arc::new(ChildSession {
            id: id.clone(),
            pid,
            to_child,
            pending: Mutex::new(Vec::new()),
            get_queue: Arc::new(MessageQueue::new(
                self.limits.max_events,
                self.limits.max_bytes,
                true,
            )),
            get_stream: Mutex::new(Weak::new()),
            last_active: AtomicU64::new(now_millis()),
            stop: Notify::new(),
            stopping: AtomicBool::new(false),
            dead: Mutex::new(None),
            limits: self.limits,
        });
        self.children.lock().insert(id.clone(), Arc::clone(&cs));
        self.live.send_modify(|n| *n += 1);
        (cs, rx)
    }

    /// Takes a `max_children` slot.
    fn reserve(&self) -> Result<Reservation<'_>, BridgeError> {
        let max = self.config.max_children;
        self.reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| BridgeError::Full(max))?;
        Ok(Reservation(self, false))
    }

    /// Fails fast when no child could be started.
    pub(crate) fn check_room(&self) -> Result<(), BridgeError> {
        self.reserve().map(drop)
    }

    /// Starts the child of session `id`.
    pub(crate) async fn spawn(
        self: &Arc<Self>,
        id: &SessionId,
    ) -> Result<Arc<ChildSession>, BridgeError> {
        if let Some(link) = &self.legacy {
            return self.connect_legacy(link, id).await;
        }
        let mut reservation = self.reserve()?;
        let mut config = self.config.child.clone();
        config.stderr_label = Arc::from(id.as_str());
        let (reply, answer) = oneshot::channel();
        let job = SpawnJob {
            command: self.config.command.clone(),
            config,
            reply,
        };
        let sent = self.spawner.lock().as_ref().map(|s| s.send(job).is_ok());
        if sent != Some(true) {
            return Err(BridgeError::Stopping);
        }
        let mut child = answer.await.map_err(|_| BridgeError::Stopping)??;
        let (Some(stdin), Some(mut stdout)) = (child.take_stdin(), child.take_stdout()) else {
            return Err(BridgeError::Stopping);
        };
        let (cs, rx) = self.register(id, child.pid());
        reservation.1 = true;
        metrics::gauge!("shadowcat_stdio_children").increment(1.0);
        tracing::info!(session_fp = %id.fingerprint(), pid = cs.pid, "stdio server started");
        tokio::spawn(write_to_child(rx, stdin, id.clone()));
        let bridge = Arc::clone(self);
        let session = Arc::clone(&cs);
        tokio::spawn(async move {
            let crashed = tokio::select! {
                cause = session.route_all(&mut stdout) => Some(cause),
                () = session.stop.notified() => None,
            };
            let status = match child.kill().await {
                Ok(s) => s.to_string(),
                Err(e) => format!("unknown exit status ({e})"),
            };
            bridge.ended(&session, crashed, &status).await;
        });
        Ok(cs)
    }

    async fn ended(&self, cs: &Arc<ChildSession>, crashed: Option<String>, status: &str) {
        let cause = match (&crashed, self.legacy.is_some()) {
            (Some(c), true) => format!("{c}; initialize a new session"),
            (Some(c), false) => {
                format!("{c}; the stdio server exited ({status}); initialize a new session")
            }
            (None, true) => "the session ended; its legacy upstream connection was closed".into(),
            (None, false) => format!("the session ended; the stdio server was stopped ({status})"),
        };
        // Gone from the map before any client hears of it: the session's
        // next request is a 404 and its `max_children` slot is free.
        self.children.lock().remove(&cs.id);
        self.reserved.fetch_sub(1, Ordering::AcqRel);
        cs.fail_all(&cause);
        self.live.send_modify(|n| *n -= 1);
        metrics::gauge!("shadowcat_stdio_children").decrement(1.0);
        if crashed.is_some() {
            metrics::counter!("shadowcat_stdio_crashes_total").increment(1);
            tracing::warn!(session_fp = %cs.id.fingerprint(), pid = cs.pid, %cause, "stdio server ended its session");
            // The streams end on their own with the error; the session
            // goes now, so the next request gets 404.
            self.drop_session(&cs.id, "its stdio server ended").await;
        } else if self.legacy.is_some() {
            tracing::debug!(session_fp = %cs.id.fingerprint(), "legacy upstream connection closed");
        } else {
            tracing::info!(session_fp = %cs.id.fingerprint(), pid = cs.pid, %status, "stdio server stopped");
        }
    }

    /// Ends session `id` for good: it leaves the cache, the writer and
    /// the store (its streams end on their own). A store error is logged
    /// and counted.
    async fn drop_session(&self, id: &SessionId, why: &'static str) {
        if let Err(e) = self.sessions.remove_keep_streams(id).await {
            metrics::counter!("shadowcat_store_errors_total", "op" => "delete").increment(1);
            tracing::warn!(session_fp = %id.fingerprint(), error = %e, why, "could not remove an ended stdio session from the store");
        }
    }

    /// The child of session `id`, if it runs here.
    pub(crate) fn child(&self, id: &SessionId) -> Option<Arc<ChildSession>> {
        self.children.lock().get(id).cloned()
    }

    /// Stops the child of session `id` (DELETE, expiry).
    pub(crate) fn stop(&self, id: &SessionId) {
        if let Some(cs) = self.child(id) {
            cs.stop();
        }
    }

    /// Stops every child and waits up to `wait` for them to exit; no new
    /// child starts afterwards.
    pub(crate) async fn shutdown(&self, wait: Duration) -> bool {
        self.spawner.lock().take();
        let all: Vec<_> = self.children.lock().values().cloned().collect();
        for cs in &all {
            cs.stop();
        }
        let mut live = self.live.subscribe();
        let done = tokio::time::timeout(wait, live.wait_for(|n| *n == 0)).await;
        matches!(done, Ok(Ok(_)))
    }
}

/// Stops children whose session left the store or sat idle too long.
async fn check_children(bridge: Weak<StdioBridge>) {
    let every = match bridge.upgrade() {
        Some(b) => b.config.check_interval.max(Duration::from_millis(10)),
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(b) = bridge.upgrade() else { return };
        let all: Vec<_> = b.children.lock().values().cloned().collect();
        let idle_ms = u64::try_from(b.config.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let now = now_millis();
        for cs in all {
            if cs.stopping.load(Ordering::Relaxed) {
                continue;
            }
            let idle = now.saturating_sub(cs.last_active.load(Ordering::Relaxed)) > idle_ms;
            if idle && !cs.busy() {
                tracing::info!(session_fp = %cs.id.fingerprint(), "stdio session idle past the timeout; stopping its server");
                b.drop_session(&cs.id, "idle past the timeout").await;
                cs.stop();
                continue;
            }
            match b.sessions.store().get(&cs.id).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    tracing::info!(session_fp = %cs.id.fingerprint(), "session gone from the store; stopping its stdio server");
                    b.drop_session(&cs.id, "gone from the store").await;
                    cs.stop();
                }
                Err(e) => {
                    metrics::counter!("shadowcat_store_errors_total", "op" => "get").increment(1);
                    tracing::warn!(session_fp = %cs.id.fingerprint(), error = %e, "could not check a stdio session in the store");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::protocol::ProtocolVersion;
    use metrics::{
        Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };
    use shadowcat_session::{
        BatchingWriter, ExpiredSession, MemoryStore, Page, Session, SessionStore, StoreError,
        UnixMillis, Update, WriterConfig,
    };

    /// Every wait in these tests is bounded by this.
    const WAIT: Duration = Duration::from_secs(10);

    /// A bridge whose children are `cat`: they echo what they are sent and
    /// never answer, so every request stays in flight.
    fn cat_bridge(
        store: Arc<dyn SessionStore>,
        idle_timeout: Duration,
        writer: Option<shadowcat_session::WriterHandle>,
    ) -> (Arc<StdioBridge>, Arc<Sessions>) {
        let mut config = StdioUpstream::new(ChildCommand::new("cat"));
        config.idle_timeout = idle_timeout;
        config.check_interval = Duration::from_millis(10);
        let sessions = Arc::new(Sessions::new(
            store,
            config.label(),
            writer,
            crate::session::CacheLimits::from_limits(&crate::Limits::default()),
        ));
        let bridge =
            StdioBridge::start(config, ReplayLimits::default(), Arc::clone(&sessions)).unwrap();
        (bridge, sessions)
    }

    fn request(id: &str) -> Bytes {
        Bytes::from(format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#
        ))
    }

    #[tokio::test]
    async fn request_ids_are_strings_or_integers_and_never_confused() {
        let store = Arc::new(MemoryStore::new());
        let (bridge, sessions) = cat_bridge(store, Duration::from_secs(3600), None);
        let s = sessions
            .create(None, ProtocolVersion::ASSUMED, u64::MAX)
            .await
            .unwrap();
        let child = bridge.spawn(&s.id).await.unwrap();
        for id in ["1.5", "2.5", "1.5", "true", "false"] {
            let e = child.send(request(id)).await.unwrap_err();
            assert!(matches!(e, BridgeError::BadId), "id {id}: {e}");
            assert!(e.to_string().contains("string or an integer"), "{e}");
        }
        for id in ["7", r#""7""#, "-7", "8"] {
            let sent = child.send(request(id)).await;
            assert!(matches!(sent, Ok(Sent::Request(_))), "id {id}: {sent:?}");
        }
        let e = child.send(request(r#""7""#)).await.unwrap_err();
        assert!(matches!(e, BridgeError::DuplicateId(_)), "{e}");
        assert!(bridge.shutdown(Duration::from_secs(10)).await);
    }

    #[test]
    fn probes() {
        let p = Probe::parse(br#"{"jsonrpc":"2.0","id":"a\"b","result":{}}"#).unwrap();
        assert!(p.method.is_none());
        assert!(IdKey::Str("a\"b".into()).is(p.id.as_ref().unwrap()));
        let p = Probe::parse(
            br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":7,"progress":1}}"#,
        )
        .unwrap();
        let t = p.params.unwrap().progress_token.unwrap();
        assert!(IdKey::Int(7).is(&t) && !IdKey::Str("7".into()).is(&t));
        let p = Probe::parse(br#"{"jsonrpc":"2.0","id":3,"method":"x","params":[1,2]}"#).unwrap();
        assert_eq!(p.id, Some(IdRef::Int(3)));
        assert!(Probe::parse(b"not json").is_none());
        assert_eq!(
            &one_line(Bytes::from_static(b"{\n\"a\":\r\n1}"))[..],
            b"{ \"a\":  1}"
        );
    }

    /// A memory store whose `delete` fails while `fail_delete` is set.
    #[derive(Debug, Default)]
    struct FailingStore {
        inner: MemoryStore,
        fail_delete: AtomicBool,
    }

    #[async_trait::async_trait]
    impl SessionStore for FailingStore {
        fn kind(&self) -> &'static str {
            "failing"
        }
        async fn create_bounded(
            &self,
            session: &Session,
            max_sessions: u64,
        ) -> Result<(), StoreError> {
            self.inner.create_bounded(session, max_sessions).await
        }
        async fn get(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
            self.inner.get(id).await
        }
        async fn update(&self, session: &Session) -> Result<(), StoreError> {
            self.inner.update(session).await
        }
        async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
            if self.fail_delete.load(Ordering::Relaxed) {
                return Err(StoreError::Unavailable {
                    store: "failing",
                    message: "down for the test".into(),
                });
            }
            self.inner.delete(id).await
        }
        async fn list(&self, after: Option<&SessionId>, limit: usize) -> Result<Page, StoreError> {
            self.inner.list(after, limit).await
        }
        async fn count(&self) -> Result<u64, StoreError> {
            self.inner.count().await
        }
        async fn apply_batch(&self, updates: &[Update]) -> Result<(), StoreError> {
            self.inner.apply_batch(updates).await
        }
        async fn expire_idle(
            &self,
            now: UnixMillis,
            max_idle: Duration,
        ) -> Result<Vec<ExpiredSession>, StoreError> {
            self.inner.expire_idle(now, max_idle).await
        }
    }

    type Counts = Arc<Mutex<HashMap<String, u64>>>;

    /// Counts counters by `name{label=value,…}`; installed per test thread.
    #[derive(Debug, Default)]
    struct Counting(Counts);

    #[derive(Debug)]
    struct Named(String, Counts);

    impl CounterFn for Named {
        fn increment(&self, value: u64) {
            *self.1.lock().entry(self.0.clone()).or_default() += value;
        }
        fn absolute(&self, value: u64) {
            self.1.lock().insert(self.0.clone(), value);
        }
    }

    impl Recorder for Counting {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            Counter::from_arc(Arc::new(Named(name, Arc::clone(&self.0))))
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    /// Runs `test` on a current-thread runtime with `recorder` installed,
    /// so every task it spawns reports there.
    fn with_counts<F: std::future::Future<Output = ()>>(recorder: &Counting, test: F) {
        metrics::with_local_recorder(recorder, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(test);
        });
    }

    /// A stdio session whose child the check task ends (idle, or gone from
    /// the store) while the store refuses deletes: the writer forgets it,
    /// and the failed removal is counted.
    fn check_task_ends_session(idle_timeout: Duration, gone: bool) {
        let recorder = Counting::default();
        with_counts(&recorder, async {
            let store = Arc::new(FailingStore::default());
            let writer = BatchingWriter::start(
                Arc::clone(&store) as Arc<dyn SessionStore>,
                WriterConfig {
                    flush_interval: Duration::from_secs(3600),
                    ..WriterConfig::default()
                },
            );
            let handle = writer.handle();
            let (bridge, sessions) = cat_bridge(
                Arc::clone(&store) as Arc<dyn SessionStore>,
                idle_timeout,
                Some(handle.clone()),
            );
            let s = sessions
                .create(None, ProtocolVersion::ASSUMED, u64::MAX)
                .await
                .unwrap();
            handle.touch(&s.id, now_millis());
            assert_eq!(handle.stats().queued, 1, "the writer holds a touch");
            if gone {
                // Another instance deleted it; this store now fails.
                assert!(store.inner.delete(&s.id).await.unwrap());
            }
            store.fail_delete.store(true, Ordering::Relaxed);
            bridge.spawn(&s.id).await.unwrap();
            let mut live = bridge.live.subscribe();
            tokio::time::timeout(WAIT, live.wait_for(|n| *n == 0))
                .await
                .expect("the check task stops the child")
                .unwrap();
            assert_eq!(handle.stats().queued, 0, "the writer forgot the session");
            assert!(bridge.child(&s.id).is_none());
            drop(writer);
        });
        let counts = recorder.0.lock();
        assert_eq!(
            counts.get("shadowcat_store_errors_total{op=delete}"),
            Some(&1),
            "{counts:?}"
        );
    }

    #[test]
    fn idle_session_is_forgotten_and_a_failed_removal_counted() {
        check_task_ends_session(Duration::ZERO, false);
    }

    #[test]
    fn session_gone_from_the_store_is_forgotten_and_a_failed_removal_counted() {
        check_task_ends_session(Duration::from_secs(3600), true);
    }
}
