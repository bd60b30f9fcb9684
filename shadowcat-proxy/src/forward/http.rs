//! The forward proxy from a stdio client to a Streamable HTTP server:
//! `shadowcat forward stdio --upstream URL`.
//!
//! Each message the client writes (one line) is POSTed upstream with
//! `Accept` listing JSON and SSE, the upstream's `Mcp-Session-Id` (kept
//! from the initialize response) and, after initialize, the negotiated
//! `MCP-Protocol-Version`. A JSON answer is written to the client as one
//! line; an SSE answer is read by the reverse proxy's own
//! [`Pump`](crate::stream::Pump) in line mode: decoded, deduplicated by its
//! `EventTracker`, and on a drop resumed with GET + `Last-Event-ID` under
//! the transport's `ReconnectPolicy`, so a network blip costs the client
//! nothing; empty-data (priming) events are never written. After
//! initialize the GET stream is opened for server-initiated messages (405:
//! the server has none). A request that cannot be answered (404 on the
//! session, an error status, a stream that cannot be resumed) gets a
//! JSON-RPC error naming the cause, and so does one whose JSON answer
//! cannot be relayed (over `max_response_bytes`, cut short, empty).
//!
//! Per message: one task (the POST), no lock on the path of an event; the
//! client's output is one writer task fed by a channel.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use parking_lot::Mutex;
use serde_json::Value;
use shadowcat_session::{SessionId, StreamId};
use shadowcat_transport::{LineError, LineReader, ReconnectConfig};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::collect::{ReadError, ReadLimits, read_whole};
use crate::mcp::protocol::ProtocolVersion;
use crate::mcp::{MCP_PROTOCOL_VERSION, MCP_SESSION_ID, is_sse};
use crate::stream::replay::ReplayLimits;
use crate::stream::{Pump, PumpSource, PumpSpec, Pumped, StreamEnv, StreamKind};
use crate::upstream::http::{UpstreamBody, UpstreamPool};
use crate::upstream::stdio::one_line;

/// Batches waiting for the client's stdout; when it is full, upstream reads
/// wait (backpressure) instead of memory growing.
const OUT_QUEUE: usize = 256;

/// Where to forward and the bounds.
#[derive(Clone)]
pub struct HttpForwardConfig {
    /// The upstream MCP endpoint (`http://…` or `https://…`).
    pub upstream: http::Uri,
    /// TLS toward an `https` upstream. Default: the system's roots, no
    /// client certificate.
    pub tls: crate::tls::UpstreamTlsConfig,
    /// Sent as `Authorization: Bearer …`. Default none.
    pub bearer: Option<String>,
    /// The longest line accepted from the client. Default 8 MiB.
    pub max_client_line_len: usize,
    /// The largest JSON response body accepted; a larger answer is
    /// replaced by a JSON-RPC error. Default 8 MiB.
    pub max_response_bytes: usize,
    /// How long to wait for the upstream's response head. Default 60 s.
    pub response_timeout: Duration,
    /// How long to wait for a connection (TCP and, for `https`, the TLS
    /// handshake). Default 5 s.
    pub connect_timeout: Duration,
    /// How a dropped SSE stream is resumed.
    pub reconnect: ReconnectConfig,
}

impl std::fmt::Debug for HttpForwardConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpForwardConfig")
            .field("upstream", &self.upstream)
            .field("bearer", &self.bearer.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl HttpForwardConfig {
    /// Defaults for `upstream`.
    pub fn new(upstream: http::Uri) -> Self {
        HttpForwardConfig {
            upstream,
            tls: Default::default(),
            bearer: None,
            max_client_line_len: 8 << 20,
            max_response_bytes: 8 << 20,
            response_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            reconnect: ReconnectConfig::default(),
        }
    }
}

/// The HTTP forward relay failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpForwardError {
    /// A configuration value is not usable.
    #[error("bad configuration: {0}")]
    Config(String),
    /// Reading the client's messages failed (I/O, over-long line).
    #[error("reading from the client: {0}")]
    ClientRead(#[source] LineError),
}

/// How the relay ended.
#[derive(Debug, Clone, Copy)]
pub struct HttpRelayReport {
    /// Messages read from the client.
    pub from_client: u64,
    /// True when the caller's shutdown ended it (else the client closed
    /// its stdin).
    pub shutdown: bool,
}

struct Relay {
    env: Arc<StreamEnv>,
    out: mpsc::Sender<Bytes>,
    upstream_session: Mutex<Option<HeaderValue>>,
    version: Mutex<ProtocolVersion>,
    label: SessionId,
    next_stream: AtomicU32,
    max_response_bytes: usize,
}

/// A JSON-RPC error line for request `id`.
fn error_line(id: &Value, message: &str) -> Bytes {
    let mut v = serde_json::to_vec(&serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": crate::mcp::jsonrpc::SERVER_ERROR, "message": message},
    }))
    .unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

#[derive(serde::Deserialize)]
struct ClientProbe {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    method: Option<String>,
}

impl Relay {
    fn request(&self, method: Method, body: Bytes) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method.clone();
        *req.uri_mut() = self.env.uri.clone();
        let h = req.headers_mut();
        if method == Method::POST {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h.insert(
                header::ACCEPT,
                HeaderValue::from_static("application/json, text/event-stream"),
            );
        } else {
            h.insert(
                header::ACCEPT,
                HeaderValue::from_static("text/event-stream"),
            );
        }
        if let Some(s) = self.upstream_session.lock().clone() {
            h.insert(MCP_SESSION_ID, s);
        }
        h.insert(
            MCP_PROTOCOL_VERSION,
            HeaderValue::from_static(self.version.lock().as_str()),
        );
        if let Some(b) = self.env.bearer.current() {
            h.insert(header::AUTHORIZATION, b);
        }
        req
    }

    async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<http::Response<UpstreamBody>, String> {
        let timeout = self.env.response_timeout;
        match tokio::time::timeout(timeout, self.env.pool.request(req)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                metrics::counter!("shadowcat_upstream_errors_total", "kind" => "request")
                    .increment(1);
                Err(format!("the upstream could not be reached: {e}"))
            }
            Err(_) => {
                metrics::counter!("shadowcat_upstream_errors_total", "kind" => "timeout")
                    .increment(1);
                Err(format!("the upstream did not answer within {timeout:?}"))
            }
        }
    }

    /// Reads an SSE stream with a pump in line mode until it ends; every
    /// batch goes to the client. Returns the lines written (for
    /// initialize).
    async fn pump(&self, body: UpstreamBody, kind: StreamKind, keep: bool) -> Vec<u8> {
        let spec = PumpSpec {
            kind,
            session: self.label.clone(),
            stream: StreamId(self.next_stream.fetch_add(1, Ordering::Relaxed)),
            sealer: None,
            upstream_session: self.upstream_session.lock().clone(),
            authorization: None,
            version: *self.version.lock(),
            sink: None,
            resume_after: None,
            legacy: false,
        };
        let mut pump = Pump::new(PumpSource::Upstream(body), spec, Arc::clone(&self.env));
        let mut kept = Vec::new();
        let mut seq = 1;
        loop {
            match std::future::poll_fn(|cx| pump.poll(cx, seq)).await {
                Pumped::Events(batch) => {
                    seq += pump.marks().len() as u64;
                    if keep {
                        kept.extend_from_slice(&batch);
                    }
                    if self.out.send(batch).await.is_err() {
                        return kept;
                    }
                }
                Pumped::Ended(_, last) => {
                    if let Some(last) = last {
                        let _ = self.out.send(last).await;
                    }
                    return kept;
                }
            }
        }
    }

    /// POSTs one client message and relays the answer.
    async fn post(&self, msg: Bytes, id: Option<Value>, init: bool) -> Vec<u8> {
        let resp = match self.send(self.request(Method::POST, msg)).await {
            Ok(r) => r,
            Err(cause) => return self.fail(&id, cause).await,
        };
        let status = resp.status();
        if init && status.is_success() {
            let sid = resp.headers().get(&MCP_SESSION_ID).cloned();
            *self.upstream_session.lock() = sid;
        }
        if status == StatusCode::NOT_FOUND && self.upstream_session.lock().is_some() {
            return self
                .fail(
                    &id,
                    "the upstream no longer knows the session (HTTP 404); restart the client to initialize a new one"
                        .into(),
                )
                .await;
        }
        if !status.is_success() {
            let text = match read_limited(resp.into_body(), 2048, self.env.response_timeout).await {
                Ok(body) => String::from_utf8_lossy(&body).into_owned(),
                Err(e) => format!("({e})"),
            };
            return self
                .fail(&id, format!("the upstream answered HTTP {status}: {text}"))
                .await;
        }
        if status == StatusCode::ACCEPTED {
            return Vec::new();
        }
        if is_sse(resp.headers()) {
            let kind = StreamKind::Request(id.clone());
            return self.pump(resp.into_body(), kind, init).await;
        }
        let body = match read_limited(
            resp.into_body(),
            self.max_response_bytes,
            self.env.response_timeout,
        )
        .await
        {
            Ok(b) => b,
            Err(e) => return self.fail(&id, e.to_string()).await,
        };
        if body.iter().all(u8::is_ascii_whitespace) {
            if id.is_some() {
                metrics::counter!("shadowcat_upstream_errors_total", "kind" => "body_empty")
                    .increment(1);
                return self
                    .fail(
                        &id,
                        format!("the upstream answered HTTP {status} with an empty body, not a JSON-RPC response"),
                    )
                    .await;
            }
            return Vec::new();
        }
        let mut line = BytesMut::from(&one_line(body)[..]);
        line.extend_from_slice(b"\n");
        let line = line.freeze();
        let kept = if init { line.to_vec() } else { Vec::new() };
        let _ = self.out.send(line).await;
        kept
    }

    /// Logs a failed request and answers it with a JSON-RPC error line.
    async fn fail(&self, id: &Option<Value>, cause: String) -> Vec<u8> {
        let request = id.as_ref().map(Value::to_string);
        tracing::warn!(id = request, cause, "upstream request failed");
        if let Some(id) = id {
            let _ = self.out.send(error_line(id, &cause)).await;
        }
        Vec::new()
    }

    /// Opens the GET stream after initialize; 405 means none.
    async fn get_stream(self: Arc<Self>) {
        let resp = match self.send(self.request(Method::GET, Bytes::new())).await {
            Ok(r) => r,
            Err(cause) => {
                tracing::warn!(cause, "the upstream's GET stream could not be opened");
                return;
            }
        };
        if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
            tracing::debug!("the upstream offers no GET stream (405)");
            return;
        }
        if !resp.status().is_success() || !is_sse(resp.headers()) {
            tracing::warn!(status = %resp.status(), "the upstream's GET stream could not be opened");
            return;
        }
        self.pump(resp.into_body(), StreamKind::Get, false).await;
    }
}

/// Why an upstream response body was not read whole.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("the upstream's response body is over the limit of {0} bytes; it was not relayed")]
    TooLarge(usize),
    #[error("the upstream's response body could not be read: {0}")]
    Unreadable(String),
    #[error("the upstream's response body was not complete within {0:?}")]
    Timeout(Duration),
}

/// The whole body, at most `max` bytes, within `timeout` (the proxy's one
/// body reader); a failure is counted (the caller logs it and answers the
/// client).
async fn read_limited(
    body: UpstreamBody,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    let limits = ReadLimits {
        budget: None,
        max,
        deadline: tokio::time::Instant::now() + timeout,
        idle: timeout,
    };
    match read_whole(body, limits).await {
        Ok(b) => Ok(b),
        Err(ReadError::TooLarge(_)) => {
            metrics::counter!("shadowcat_upstream_errors_total", "kind" => "body_too_large")
                .increment(1);
            Err(BodyError::TooLarge(max))
        }
        Err(ReadError::Deadline | ReadError::Idle(_)) => {
            metrics::counter!("shadowcat_upstream_errors_total", "kind" => "timeout").increment(1);
            Err(BodyError::Timeout(timeout))
        }
        Err(ReadError::Body(e)) => {
            metrics::counter!("shadowcat_upstream_errors_total", "kind" => "body_unreadable")
                .increment(1);
            Err(BodyError::Unreadable(e.to_string()))
        }
    }
}

/// The negotiated version in an initialize answer (one or more lines).
fn negotiated(lines: &[u8]) -> Option<ProtocolVersion> {
    lines.split(|b| *b == b'\n').find_map(|l| {
        let v: Value = serde_json::from_slice(l).ok()?;
        ProtocolVersion::parse(v.pointer("/result/protocolVersion")?.as_str()?)
    })
}

/// Relays the client's stdio (`client_in`, `client_out`) to the
/// Streamable HTTP server of `config` until the client closes its stdin
/// or `shutdown` completes.
pub async fn relay_http(
    config: &HttpForwardConfig,
    client_in: impl AsyncRead + Unpin,
    client_out: impl AsyncWrite + Unpin + Send + 'static,
    shutdown: impl Future<Output = ()>,
) -> Result<HttpRelayReport, HttpForwardError> {
    crate::upstream::http::check_upstream(&config.upstream)
        .map_err(|e| HttpForwardError::Config(e.to_string()))?;
    let bearer = match &config.bearer {
        Some(t) => {
            let mut v = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                HttpForwardError::Config("the bearer token is not a valid header value".into())
            })?;
            v.set_sensitive(true);
            Some(v)
        }
        None => None,
    };
    let tls = crate::tls::UpstreamTls::for_uri(&config.upstream, &config.tls)
        .map_err(|e| HttpForwardError::Config(e.to_string()))?;
    let pool = UpstreamPool::with_max_idle(
        &config.upstream,
        config.connect_timeout,
        crate::upstream::http::DEFAULT_UPSTREAM_READ_BUFFER,
        crate::upstream::http::MAX_IDLE,
        tls,
    );
    if config.upstream.scheme_str() == Some("https") {
        // A certificate that does not verify is an error at start.
        match pool.probe().await {
            Ok(()) => {}
            Err(e) if e.is_tls() => return Err(HttpForwardError::Config(e.to_string())),
            Err(e) => {
                tracing::warn!(upstream = %config.upstream, error = %e, "the https upstream could not be reached at start");
            }
        }
    }
    let (closing_tx, closing) = watch::channel(false);
    let env = Arc::new(StreamEnv {
        pool,
        uri: config.upstream.clone(),
        bearer: bearer.map_or(
            crate::auth::Credential::None,
            crate::auth::Credential::Fixed,
        ),
        response_timeout: config.response_timeout,
        reconnect: config.reconnect,
        replay: ReplayLimits::default(),
        budget: Arc::new(crate::stream::budget::Budget::new(usize::MAX)),
        linger: Duration::ZERO,
        lingering: Default::default(),
        max_kept: 1,
        keepalive: Duration::from_secs(3600),
        closing,
        cluster: None,
    });
    // Bounded: a slow stdio client slows the upstream reads, never grows
    // memory without end.
    let (out, mut out_rx) = mpsc::channel::<Bytes>(OUT_QUEUE);
    let writer = tokio::spawn(async move {
        let mut w = client_out;
        while let Some(b) = out_rx.recv().await {
            if let Err(e) = w.write_all(&b).await {
                tracing::warn!(error = %e, "writing to the client failed");
                return;
            }
            while let Ok(b) = out_rx.try_recv() {
                if w.write_all(&b).await.is_err() {
                    return;
                }
            }
            if w.flush().await.is_err() {
                return;
            }
        }
    });
    let relay = Arc::new(Relay {
        env,
        out,
        upstream_session: Mutex::new(None),
        version: Mutex::new(ProtocolVersion::ASSUMED),
        label: SessionId::generate()
            .map_err(|e| HttpForwardError::Config(format!("no randomness: {e}")))?,
        next_stream: AtomicU32::new(1),
        max_response_bytes: config.max_response_bytes,
    });
    let mut reader = LineReader::new(client_in, config.max_client_line_len);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut count = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    let mut get_task = None;
    let result = loop {
        let line = tokio::select! {
            l = reader.next_line() => l,
            () = &mut shutdown => break Ok(true),
        };
        let line = match line {
            Ok(Some(l)) if l.is_empty() => continue,
            Ok(Some(l)) => l,
            Ok(None) => break Ok(false),
            Err(e) => break Err(HttpForwardError::ClientRead(e)),
        };
        count += 1;
        let probe = serde_json::from_slice::<ClientProbe>(&line).ok();
        let (id, method) = probe.map_or((None, None), |p| (p.id, p.method));
        let id = id.filter(|_| method.is_some());
        tracing::debug!(
            method = method.as_deref().unwrap_or(""),
            ?id,
            "client message"
        );
        if method.as_deref() == Some("initialize") {
            // Inline: later messages need the session id it brings.
            let kept = relay.post(line, id, true).await;
            if let Some(v) = negotiated(&kept) {
                *relay.version.lock() = v;
            }
            continue;
        }
        if get_task.is_none() && method.as_deref() == Some("notifications/initialized") {
            relay.post(line, None, false).await;
            get_task = Some(tokio::spawn(Arc::clone(&relay).get_stream()));
            continue;
        }
        let r = Arc::clone(&relay);
        tasks.spawn(async move {
            r.post(line, id, false).await;
        });
        while tasks.try_join_next().is_some() {}
    };
    let _ = closing_tx.send(true);
    if matches!(result, Ok(false)) {
        // The client closed stdin: requests in flight get to finish.
        let wait = config.response_timeout;
        let finished =
            tokio::time::timeout(wait, async { while tasks.join_next().await.is_some() {} }).await;
        if finished.is_err() {
            tracing::warn!(
                ?wait,
                "requests still in flight after the client left; dropped"
            );
        }
    }
    tasks.abort_all();
    if let Some(t) = get_task {
        t.abort();
    }
    if relay.upstream_session.lock().is_some() {
        // End the upstream session; a failure only means it expires later.
        let req = relay.request(Method::DELETE, Bytes::new());
        if let Err(cause) = relay.send(req).await {
            tracing::debug!(cause, "DELETE of the upstream session failed");
        }
    }
    drop(relay);
    let _ = writer.await;
    result.map(|shutdown| HttpRelayReport {
        from_client: count,
        shutdown,
    })
}
