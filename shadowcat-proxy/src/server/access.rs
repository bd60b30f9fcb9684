//! The access log: one [`AccessRecord`] per request, handed to the
//! configured [`AccessLog`] when the response body ends (for a stream,
//! when the client's stream ends).
//!
//! A request's handlers note what they learn (MCP method, tool, session,
//! bytes in, upstream time, resume kind) in a task-local context; the
//! response body counts bytes out (one add per frame) and, for streams,
//! the events sent (from its cursor: nothing per event). With no access
//! log configured none of this runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use shadowcat_session::{UnixMillis, now_millis};

/// Where access records go. Called once per request from the task that
/// served it: it must not block (queue the record and return).
pub trait AccessLog: Send + Sync + std::fmt::Debug {
    /// Takes one finished request.
    fn record(&self, record: AccessRecord);
}

/// One request, as the access log sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessRecord {
    /// When the request arrived (Unix milliseconds).
    pub time_ms: UnixMillis,
    /// The client's address.
    pub client: Option<SocketAddr>,
    /// `POST`, `GET`, `DELETE` or `other`.
    pub http_method: &'static str,
    /// The JSON-RPC method (the first one of a batch).
    pub mcp_method: Option<String>,
    /// The tool of a `tools/call`.
    pub tool: Option<String>,
    /// The session's fingerprint (never the id).
    pub session_fp: Option<String>,
    /// The HTTP status sent.
    pub status: u16,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Milliseconds until the upstream's answer head, if it was asked.
    pub upstream_ms: Option<f64>,
    /// Milliseconds from the request to the end of the response body.
    pub total_ms: f64,
    /// Events sent, for an SSE response.
    pub events: Option<u64>,
    /// For a GET with `Last-Event-ID`: `buffer` or `upstream`.
    pub resume: Option<&'static str>,
}

/// What handlers note about the request they serve.
#[derive(Debug, Default)]
pub(crate) struct Noted {
    pub(crate) mcp_method: Option<String>,
    pub(crate) tool: Option<String>,
    pub(crate) session_fp: Option<String>,
    pub(crate) bytes_in: u64,
    pub(crate) upstream: Option<Duration>,
    pub(crate) resume: Option<&'static str>,
}

/// One request's context while it is served.
#[derive(Debug)]
pub(crate) struct AccessCtx {
    started: Instant,
    time_ms: UnixMillis,
    client: Option<SocketAddr>,
    http_method: &'static str,
    noted: Mutex<Noted>,
}

tokio::task_local! {
    static CTX: Arc<AccessCtx>;
}

impl AccessCtx {
    pub(crate) fn new(client: Option<SocketAddr>, http_method: &'static str) -> Arc<Self> {
        Arc::new(AccessCtx {
            started: Instant::now(),
            time_ms: now_millis(),
            client,
            http_method,
            noted: Mutex::new(Noted::default()),
        })
    }

    /// Runs `fut` with this context reachable by [`note`].
    pub(crate) async fn scope<F: std::future::Future>(self: &Arc<Self>, fut: F) -> F::Output {
        CTX.scope(Arc::clone(self), fut).await
    }
}

/// Notes something about the request being served (nothing when the
/// access log is off).
pub(crate) fn note(f: impl FnOnce(&mut Noted)) {
    let _ = CTX.try_with(|c| f(&mut c.noted.lock()));
}

/// Carried by a response body: completes and emits the record when the
/// body ends.
#[derive(Debug)]
pub(crate) struct Finish {
    pub(crate) ctx: Arc<AccessCtx>,
    pub(crate) log: Arc<dyn AccessLog>,
    pub(crate) status: u16,
    pub(crate) bytes_out: u64,
}

impl Finish {
    /// Emits the record; `events` for an SSE body.
    pub(crate) fn emit(&self, events: Option<u64>) {
        let n = std::mem::take(&mut *self.ctx.noted.lock());
        self.log.record(AccessRecord {
            time_ms: self.ctx.time_ms,
            client: self.ctx.client,
            http_method: self.ctx.http_method,
            mcp_method: n.mcp_method,
            tool: n.tool,
            session_fp: n.session_fp,
            status: self.status,
            bytes_in: n.bytes_in,
            bytes_out: self.bytes_out,
            upstream_ms: n.upstream.map(|d| d.as_secs_f64() * 1e3),
            total_ms: self.ctx.started.elapsed().as_secs_f64() * 1e3,
            events,
            resume: n.resume,
        });
    }
}
