//! A small MCP server over Streamable HTTP, for tests and load harnesses
//! (feature `test-util`).
//!
//! It speaks every revision the proxy does: sessions with its own ids
//! (2025-03-26, 2025-06-18, 2025-11-25, with a priming event on SSE streams
//! for 2025-11-25) and the stateless 2026-07-28. It answers `initialize`,
//! `tools/list` and `tools/call`, and records every request it receives
//! so tests can check what the proxy forwarded.
//!
//! Tools:
//! - `echo` `{text}`: a JSON response with the text.
//! - `progress` `{count, gated, cuts, poll, stall, long_ids}`: an SSE
//!   stream of `count`
//!   progress notifications, each with an id, then the result. With
//!   `gated`, it stops after the first notification until
//!   [`TestUpstream::release`]. Otherwise the stream is kept in a per-stream
//!   event store: a GET with `Last-Event-ID` replays the events after it
//!   (unless [`TestUpstream::set_event_store`] turned the store off: then
//!   405). `cuts` lists event numbers after which the connection carrying
//!   them is cut (once each; on a resumed connection alternately an aborted
//!   connection and a clean end after half an event, on a first one always
//!   the latter: an abort may lose unflushed data). `poll` is SSE polling: the first connection
//!   sends the priming event and `retry:` and closes, each resume at most
//!   `poll` events. `stall` stops the first connection after that event
//!   until [`TestUpstream::release`]; `long_ids` makes event ids longer
//!   than a client id carries.
//! - `forever`: an SSE stream of notifications every 10 ms (at most 3,000)
//!   that never sends a result; [`TestUpstream::wait_cancelled`] tells when
//!   the proxy dropped it.
//! - `slow` `{ms}`: answers after `ms` milliseconds.
//!
//! `subscriptions/listen` (2026-07-28) opens a listen stream: the
//! acknowledgement (echoing the requested `notifications`, with the
//! request's id as `_meta` subscription id), then whatever the test sends
//! with [`TestUpstream::notify_listens`], until the test cuts it
//! ([`TestUpstream::cut_listens`]: abruptly or with a clean end, no
//! result) or ends it gracefully with the listen's result
//! ([`TestUpstream::end_listens`]). Listens can be refused with a status
//! ([`TestUpstream::set_listen_refusal`]) or held before they are answered
//! ([`TestUpstream::hold_listens`]).
//! [`TestUpstream::start_tls`] serves the same over HTTPS (HTTP/1.1), with
//! a server config the test can swap ([`TestUpstream::set_tls`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The HTTP method.
    pub method: Method,
    /// Every header received.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// The request path.
    pub path: String,
}

#[derive(Debug, Default)]
struct State {
    /// TCP connections accepted.
    connections: AtomicU64,
    requests: Mutex<Vec<RecordedRequest>>,
    request_seen: Notify,
    sessions: Mutex<HashSet<String>>,
    next_session: AtomicU64,
    next_stream: AtomicU64,
    gate: Notify,
    cancelled: AtomicU64,
    cancelled_signal: Notify,
    first_sent: Notify,
    logs: Mutex<HashMap<String, Arc<StreamLog>>>,
    no_event_store: std::sync::atomic::AtomicBool,
    cuts_done: AtomicU64,
    resumes: AtomicU64,
    all_sent: Notify,
    deletes: AtomicU64,
    deleted_signal: Notify,
    /// Open listen streams' command channels.
    listens: Mutex<Vec<mpsc::Sender<ListenCmd>>>,
    listen_refusal: Mutex<Option<u16>>,
    listen_retry: Mutex<Option<u64>>,
    listen_hold: std::sync::atomic::AtomicBool,
    listen_gate: Notify,
    /// Listens answered with a stream so far.
    listens_opened: AtomicU64,
    listen_opened: Notify,
    /// When set, the bearer tokens accepted; others get 401.
    bearers: Mutex<Option<HashSet<String>>>,
    /// The address, for its own metadata URLs.
    addr: Mutex<Option<SocketAddr>>,
    /// HTTPS: the acceptor for the next handshake.
    tls: TlsSlot,
    /// HTTPS handshakes that failed.
    tls_failures: AtomicU64,
}

/// The acceptor for an HTTPS upstream's next handshake.
#[derive(Default)]
struct TlsSlot(Mutex<Option<tokio_rustls::TlsAcceptor>>);

impl std::fmt::Debug for TlsSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.lock().is_some() {
            "https"
        } else {
            "http"
        })
    }
}

/// What the test tells an open listen stream.
#[derive(Debug)]
enum ListenCmd {
    Notify(String, Value),
    Cut { abort: bool },
    End,
}

/// The `_meta` key naming a listen's subscription.
const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// One `progress` stream's events, replayable from any point.
#[derive(Debug)]
struct StreamLog {
    name: String,
    id: Value,
    count: u64,
    priming: bool,
    poll: Option<u64>,
    cuts: Mutex<BTreeSet<u64>>,
    /// The first connection stops after this event until
    /// [`TestUpstream::release`].
    stall: Option<u64>,
    /// Highest event number handed to a connection.
    sent: AtomicU64,
}

impl StreamLog {
    /// The number of the final event (the result).
    fn last(&self) -> u64 {
        self.count + 1
    }

    fn first(&self) -> u64 {
        u64::from(!self.priming)
    }

    /// Event `i`: 0 the priming event, 1..=count notifications, then the
    /// result.
    fn event(&self, i: u64) -> Bytes {
        let id = format!("{}-{i}", self.name);
        if i == 0 {
            return Bytes::from(format!("id: {id}\ndata:\n\n"));
        }
        if i > self.count {
            let result = json!({"jsonrpc":"2.0","id":self.id,"result":{"content":[{"type":"text","text":"done"}]}});
            return sse_event(&id, &result);
        }
        let note = json!({"jsonrpc":"2.0","method":"notifications/progress",
            "params":{"progressToken":"p","progress":i,"total":self.count}});
        sse_event(&id, &note)
    }
}

/// A connection cut on purpose.
#[derive(Debug)]
struct Cut;

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection cut by the test upstream")
    }
}

impl std::error::Error for Cut {}

/// A running test upstream; stops when dropped.
#[derive(Debug)]
pub struct TestUpstream {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Longest a gated stream waits for [`TestUpstream::release`].
const GATE_TIMEOUT: Duration = Duration::from_secs(10);

impl TestUpstream {
    /// Starts one on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(None).await
    }

    /// Starts one serving HTTPS with `config` on a free loopback port.
    pub async fn start_tls(config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        Self::start_with(Some(tokio_rustls::TlsAcceptor::from(config))).await
    }

    /// Handshakes from now on use `config` (an HTTPS upstream only).
    pub fn set_tls(&self, config: Arc<rustls::ServerConfig>) {
        *self.state.tls.0.lock() = Some(tokio_rustls::TlsAcceptor::from(config));
    }

    /// HTTPS handshakes that failed so far.
    pub fn tls_failures(&self) -> u64 {
        self.state.tls_failures.load(Ordering::Relaxed)
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            tls: TlsSlot(Mutex::new(tls)),
            ..State::default()
        });
        *state.addr.lock() = Some(addr);
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                st.connections.fetch_add(1, Ordering::Relaxed);
                // As real servers do (Node's http does by default): no
                // Nagle delay between a stream's head and its events.
                let _ = stream.set_nodelay(true);
                let st = Arc::clone(&st);
                let acceptor = st.tls.0.lock().clone();
                tokio::spawn(async move {
                    let svc = {
                        let st = Arc::clone(&st);
                        hyper::service::service_fn(move |req| {
                            let st = Arc::clone(&st);
                            async move { Ok::<_, std::convert::Infallible>(handle(st, req).await) }
                        })
                    };
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        Some(acceptor) => {
                            let handshake =
                                tokio::time::timeout(GATE_TIMEOUT, acceptor.accept(stream)).await;
                            let Ok(Ok(tls)) = handshake else {
                                st.tls_failures.fetch_add(1, Ordering::Relaxed);
                                return;
                            };
                            let _ = http.serve_connection(TokioIo::new(tls), svc).await;
                        }
                    }
                });
            }
        });
        Ok(TestUpstream { addr, state, task })
    }

    /// Its MCP endpoint with `host` for the host (`localhost` or
    /// `127.0.0.1`), `https` when it serves TLS.
    pub fn url_for(&self, host: &str) -> http::Uri {
        let scheme = if self.state.tls.0.lock().is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{host}:{}/mcp", self.addr.port())
            .parse()
            .expect("a loopback URL parses")
    }

    /// Its MCP endpoint, `http://127.0.0.1:PORT/mcp` (`https` when it
    /// serves TLS).
    pub fn url(&self) -> http::Uri {
        self.url_for("127.0.0.1")
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().clone()
    }

    /// Waits up to `timeout` until at least `n` requests were received;
    /// true if so.
    pub async fn wait_requests(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let seen = self.state.request_seen.notified();
            if self.state.requests.lock().len() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, seen).await.is_err() {
                return self.state.requests.lock().len() >= n;
            }
        }
    }

    /// The session ids the upstream issued and has not seen deleted.
    pub fn live_sessions(&self) -> Vec<String> {
        self.state.sessions.lock().iter().cloned().collect()
    }

    /// Forgets every session, as an upstream restart would.
    pub fn forget_sessions(&self) {
        self.state.sessions.lock().clear();
    }

    /// Requires `Authorization: Bearer T` with T one of `tokens` on the
    /// MCP endpoint, as an OAuth-protected server does: anything else gets
    /// 401 with a `WWW-Authenticate` naming its protected-resource
    /// metadata, which it serves at
    /// `/.well-known/oauth-protected-resource/mcp` (authorization server
    /// [`TestUpstream::AUTHORIZATION_SERVER`]).
    pub fn require_bearer(&self, tokens: &[&str]) {
        *self.state.bearers.lock() = Some(tokens.iter().map(|t| (*t).to_owned()).collect());
    }

    /// The authorization server its metadata names.
    pub const AUTHORIZATION_SERVER: &'static str = "http://127.0.0.1:9/as";

    /// Every session id it ever issued starts with this.
    pub const SESSION_PREFIX: &'static str = "upstream-session-";

    /// Lets one gated `progress` stream go on past its first event.
    pub fn release(&self) {
        self.state.gate.notify_one();
    }

    /// Waits until a gated `progress` stream has sent its first event.
    pub async fn first_event_sent(&self) {
        self.state.first_sent.notified().await;
    }

    /// Turns the event store off (GET with `Last-Event-ID` then gets 405)
    /// or back on.
    pub fn set_event_store(&self, on: bool) {
        self.state.no_event_store.store(!on, Ordering::SeqCst);
    }

    /// How many connections the upstream cut on purpose so far.
    pub fn cuts_done(&self) -> u64 {
        self.state.cuts_done.load(Ordering::SeqCst)
    }

    /// How many GETs with `Last-Event-ID` it served from its event store.
    pub fn resumes(&self) -> u64 {
        self.state.resumes.load(Ordering::SeqCst)
    }

    /// Waits up to `timeout` until a `progress` stream has started and
    /// every event of every one started so far was handed to a
    /// connection; true if so.
    pub async fn wait_all_sent(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.all_sent.notified();
            let done = {
                let logs = self.state.logs.lock();
                !logs.is_empty()
                    && logs
                        .values()
                        .all(|l| l.sent.load(Ordering::SeqCst) >= l.last())
            };
            if done {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// How many DELETEs it received (of live sessions or not).
    pub fn deletes(&self) -> u64 {
        self.state.deletes.load(Ordering::SeqCst)
    }

    /// Waits up to `timeout` until it received at least `n` DELETEs; true
    /// if so.
    pub async fn wait_deletes(&self, n: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.deleted_signal.notified();
            if self.deletes() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.deletes() >= n;
            }
        }
    }

    /// How many `forever` and listen streams were dropped by the other
    /// side.
    pub fn cancelled(&self) -> u64 {
        self.state.cancelled.load(Ordering::SeqCst)
    }

    /// Waits up to `timeout` for a `forever` or listen stream to be
    /// dropped by the other side; true if one was.
    pub async fn wait_cancelled(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.cancelled_signal.notified();
            if self.cancelled() > 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.cancelled() > 0;
            }
        }
    }
}

impl TestUpstream {
    /// Sends `method` with `params` (plus the `_meta` subscription id) on
    /// every open listen stream; returns how many got it.
    pub fn notify_listens(&self, method: &str, params: Value) -> usize {
        self.command_listens(|| ListenCmd::Notify(method.to_owned(), params.clone()))
    }

    /// Cuts every open listen stream without its result: `abort` resets
    /// the connection, otherwise the stream ends cleanly.
    pub fn cut_listens(&self, abort: bool) -> usize {
        let n = self.command_listens(|| ListenCmd::Cut { abort });
        self.state.listens.lock().clear();
        n
    }

    /// Ends every open listen stream gracefully, with the listen's result.
    pub fn end_listens(&self) -> usize {
        let n = self.command_listens(|| ListenCmd::End);
        self.state.listens.lock().clear();
        n
    }

    fn command_listens(&self, cmd: impl Fn() -> ListenCmd) -> usize {
        let mut listens = self.state.listens.lock();
        listens.retain(|tx| !tx.is_closed());
        listens
            .iter()
            .filter(|tx| tx.try_send(cmd()).is_ok())
            .count()
    }

    /// Later listen requests are answered with `status` and a JSON-RPC
    /// error (`None`: served again).
    pub fn set_listen_refusal(&self, status: Option<u16>) {
        *self.state.listen_refusal.lock() = status;
    }

    /// Later listen streams start with `retry: ms`.
    pub fn set_listen_retry(&self, ms: Option<u64>) {
        *self.state.listen_retry.lock() = ms;
    }

    /// While on, each listen request waits for [`TestUpstream::release_listen`]
    /// (at most 10 s) before it is answered.
    pub fn hold_listens(&self, on: bool) {
        self.state.listen_hold.store(on, Ordering::SeqCst);
    }

    /// Lets one held listen request be answered.
    pub fn release_listen(&self) {
        self.state.listen_gate.notify_one();
    }

    /// Listens answered with a stream so far.
    pub fn listens_opened(&self) -> u64 {
        self.state.listens_opened.load(Ordering::SeqCst)
    }

    /// Waits up to `timeout` until at least `n` listens were answered
    /// with a stream; true if so.
    pub async fn wait_listens_opened(&self, n: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.listen_opened.notified();
            if self.listens_opened() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.listens_opened() >= n;
            }
        }
    }
}

fn json_response(status: StatusCode, v: &Value, session: Option<&str>) -> Response<UpBody> {
    let mut r = Response::new(UpBody::full(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(s) = session {
        r.headers_mut().insert(
            "mcp-session-id",
            HeaderValue::from_str(s).expect("ascii id"),
        );
    }
    r
}

fn error(status: StatusCode, code: i64, msg: &str) -> Response<UpBody> {
    json_response(
        status,
        &json!({"jsonrpc":"2.0","id":null,"error":{"code":code,"message":msg}}),
        None,
    )
}

fn sse_response(rx: mpsc::Receiver<Bytes>) -> Response<UpBody> {
    let mut r = Response::new(UpBody::Channel(rx));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r
}

fn sse_event(id: &str, data: &Value) -> Bytes {
    Bytes::from(format!("id: {id}\ndata: {data}\n\n"))
}

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Response<UpBody> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(StatusCode::BAD_REQUEST, -32700, "unreadable body"),
    };
    st.requests.lock().push(RecordedRequest {
        method: parts.method.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
        path: parts.uri.path().to_owned(),
    });
    st.request_seen.notify_waiters();
    if let Some(refused) = check_bearer(&st, &parts) {
        return refused;
    }
    let version = parts
        .headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("2025-03-26")
        .to_owned();
    let stateless = version == "2026-07-28";
    let session = parts
        .headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match parts.method {
        Method::POST => {}
        Method::GET if !stateless => {
            return match session {
                Some(s) if st.sessions.lock().contains(&s) => {
                    match parts
                        .headers
                        .get("last-event-id")
                        .and_then(|v| v.to_str().ok())
                    {
                        Some(last) => resume(&st, last, &version),
                        None => get_stream(&st, &version),
                    }
                }
                Some(_) => error(StatusCode::NOT_FOUND, -32001, "session not found"),
                None => error(StatusCode::BAD_REQUEST, -32600, "missing session"),
            };
        }
        Method::DELETE if !stateless => {
            let resp = match session {
                Some(s) if st.sessions.lock().remove(&s) => {
                    let mut r = Response::new(UpBody::full(Bytes::new()));
                    *r.status_mut() = StatusCode::OK;
                    r
                }
                _ => error(StatusCode::NOT_FOUND, -32001, "session not found"),
            };
            // Counted once the session is gone.
            st.deletes.fetch_add(1, Ordering::SeqCst);
            st.deleted_signal.notify_waiters();
            return resp;
        }
        _ => return error(StatusCode::METHOD_NOT_ALLOWED, -32601, "method not allowed"),
    }
    let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, -32700, "parse error");
    };
    let method = msg["method"].as_str().unwrap_or("").to_owned();
    let id = msg["id"].clone();
    if method == "initialize" && !stateless {
        let n = st.next_session.fetch_add(1, Ordering::Relaxed);
        let sid = format!("{}{n}", TestUpstream::SESSION_PREFIX);
        st.sessions.lock().insert(sid.clone());
        let asked = msg["params"]["protocolVersion"]
            .as_str()
            .unwrap_or("2025-03-26");
        let result = json!({
            "protocolVersion": asked,
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "shadowcat-test-upstream", "version": "0"},
        });
        return json_response(
            StatusCode::OK,
            &json!({"jsonrpc":"2.0","id":id,"result":result}),
            Some(&sid),
        );
    }
    if !stateless {
        match &session {
            Some(s) if st.sessions.lock().contains(s) => {}
            Some(_) => return error(StatusCode::NOT_FOUND, -32001, "session not found"),
            None => return error(StatusCode::BAD_REQUEST, -32600, "missing session"),
        }
    }
    if msg.get("id").is_none() || msg.is_array() {
        let mut r = Response::new(UpBody::full(Bytes::new()));
        *r.status_mut() = StatusCode::ACCEPTED;
        return r;
    }
    match method.as_str() {
        "subscriptions/listen" => {
            if let Some(status) = *st.listen_refusal.lock() {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
                return error(status, -32000, "listen refused by the test upstream");
            }
            if st.listen_hold.load(Ordering::SeqCst) {
                let _ = tokio::time::timeout(GATE_TIMEOUT, st.listen_gate.notified()).await;
            }
            listen_stream(&st, id, &msg)
        }
        "tools/list" => json_response(
            StatusCode::OK,
            &json!({"jsonrpc":"2.0","id":id,"result":{"tools":[
                {"name":"echo","inputSchema":{"type":"object"}},
                {"name":"progress","inputSchema":{"type":"object"}},
                {"name":"forever","inputSchema":{"type":"object"}},
                {"name":"slow","inputSchema":{"type":"object"}},
            ]}}),
            None,
        ),
        "tools/call" => {
            let args = &msg["params"]["arguments"];
            match msg["params"]["name"].as_str().unwrap_or("") {
                "echo" => json_response(
                    StatusCode::OK,
                    &json!({"jsonrpc":"2.0","id":id,"result":{"content":[{"type":"text","text":args["text"]}]}}),
                    None,
                ),
                "slow" => {
                    let ms = args["ms"].as_u64().unwrap_or(0).min(60_000);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    json_response(
                        StatusCode::OK,
                        &json!({"jsonrpc":"2.0","id":id,"result":{"content":[]}}),
                        None,
                    )
                }
                "progress" => {
                    let count = args["count"].as_u64().unwrap_or(3).min(1_000_000);
                    let gated = args["gated"].as_bool().unwrap_or(false);
                    if gated {
                        progress_stream(&st, &version, id, count, gated)
                    } else {
                        let mut name = stream_name(&st);
                        if args["long_ids"].as_bool().unwrap_or(false) {
                            // Too long for a client id to carry.
                            name.push_str(&"_".repeat(200));
                        }
                        let log = Arc::new(StreamLog {
                            name,
                            stall: args["stall"].as_u64(),
                            id,
                            count,
                            priming: version == "2025-11-25",
                            poll: args["poll"].as_u64(),
                            cuts: Mutex::new(
                                args["cuts"]
                                    .as_array()
                                    .map(|a| a.iter().filter_map(Value::as_u64).collect())
                                    .unwrap_or_default(),
                            ),
                            sent: AtomicU64::new(0),
                        });
                        st.logs.lock().insert(log.name.clone(), Arc::clone(&log));
                        let first = log.first();
                        serve_log(&st, log, first, true)
                    }
                }
                "forever" => forever_stream(&st, &version),
                _ => json_response(
                    StatusCode::OK,
                    &json!({"jsonrpc":"2.0","id":id,"error":{"code":-32602,"message":"unknown tool"}}),
                    None,
                ),
            }
        }
        _ => json_response(
            StatusCode::OK,
            &json!({"jsonrpc":"2.0","id":id,"error":{"code":-32601,"message":"method not found"}}),
            None,
        ),
    }
}

/// The bearer check and the metadata of [`TestUpstream::require_bearer`].
fn check_bearer(st: &State, parts: &http::request::Parts) -> Option<Response<UpBody>> {
    let bearers = st.bearers.lock().clone()?;
    let addr = (*st.addr.lock())?;
    let prm = "/.well-known/oauth-protected-resource/mcp";
    if parts.uri.path() == prm {
        return Some(json_response(
            StatusCode::OK,
            &json!({
                "resource": format!("http://{addr}/mcp"),
                "authorization_servers": [TestUpstream::AUTHORIZATION_SERVER],
                "scopes_supported": ["mcp"],
            }),
            None,
        ));
    }
    let token = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if token.is_some_and(|t| bearers.contains(t)) {
        return None;
    }
    let mut r = error(StatusCode::UNAUTHORIZED, -32001, "unauthorized");
    let challenge = format!(
        "Bearer error=\"invalid_token\", resource_metadata=\"http://{addr}{prm}\", scope=\"mcp\""
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_str(&challenge).expect("ascii challenge"),
    );
    Some(r)
}

fn stream_name(st: &State) -> String {
    format!("s{}", st.next_stream.fetch_add(1, Ordering::Relaxed))
}

fn progress_stream(
    st: &Arc<State>,
    version: &str,
    id: Value,
    count: u64,
    gated: bool,
) -> Response<UpBody> {
    let (tx, rx) = mpsc::channel(16);
    let st = Arc::clone(st);
    let priming = version == "2025-11-25";
    let name = stream_name(&st);
    tokio::spawn(async move {
        if priming
            && tx
                .send(Bytes::from(format!("id: {name}-0\ndata:\n\n")))
                .await
                .is_err()
        {
            return;
        }
        for i in 1..=count {
            let note = json!({"jsonrpc":"2.0","method":"notifications/progress",
                "params":{"progressToken":"p","progress":i,"total":count}});
            if tx
                .send(sse_event(&format!("{name}-{i}"), &note))
                .await
                .is_err()
            {
                return;
            }
            if i == 1 && gated {
                st.first_sent.notify_one();
                if tokio::time::timeout(GATE_TIMEOUT, st.gate.notified())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        let result =
            json!({"jsonrpc":"2.0","id":id,"result":{"content":[{"type":"text","text":"done"}]}});
        let _ = tx
            .send(sse_event(&format!("{name}-{}", count + 1), &result))
            .await;
    });
    sse_response(rx)
}

/// GET with `Last-Event-ID` `sN-i`: the events of stream `sN` after `i`.
fn resume(st: &Arc<State>, last: &str, version: &str) -> Response<UpBody> {
    if st.no_event_store.load(Ordering::SeqCst) {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            -32601,
            "this server keeps no event store; it cannot resume streams",
        );
    }
    let parsed = last
        .rsplit_once('-')
        .and_then(|(name, i)| Some((name, i.parse::<u64>().ok()?)));
    let Some((name, i)) = parsed else {
        return error(StatusCode::BAD_REQUEST, -32600, "unknown Last-Event-ID");
    };
    let log = st.logs.lock().get(name).cloned();
    match log {
        Some(log) if i <= log.last() => {
            st.resumes.fetch_add(1, Ordering::SeqCst);
            serve_log(st, log, i + 1, false)
        }
        // Not a stored stream (a GET stream): a fresh one.
        _ => get_stream(st, version),
    }
}

/// Sends `log`'s events from `from` on, honouring its cuts and polling.
fn serve_log(st: &Arc<State>, log: Arc<StreamLog>, from: u64, first: bool) -> Response<UpBody> {
    let (tx, rx) = mpsc::channel::<Result<Bytes, Cut>>(16);
    let st = Arc::clone(st);
    tokio::spawn(async move {
        let mut i = from;
        // In polling mode the first connection carries only the priming
        // event; later ones at most `poll` events.
        let mut budget = match log.poll {
            Some(_) if first => 1,
            Some(n) => n.max(1),
            None => u64::MAX,
        };
        if log.poll.is_some()
            && tx
                .send(Ok(Bytes::from_static(b"retry: 5\n\n")))
                .await
                .is_err()
        {
            return;
        }
        while i <= log.last() && budget > 0 {
            let mut chunk = Vec::new();
            let mut cut = None;
            while i <= log.last() && budget > 0 && chunk.len() < 8192 {
                chunk.extend_from_slice(&log.event(i));
                budget -= 1;
                let was_cut = log.cuts.lock().remove(&i);
                log.sent.fetch_max(i, Ordering::SeqCst);
                i += 1;
                if was_cut {
                    cut = Some(i - 1);
                    break;
                }
                if first && log.stall == Some(i - 1) {
                    break;
                }
            }
            if log.sent.load(Ordering::SeqCst) >= log.last() {
                st.all_sent.notify_waiters();
            }
            if tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                return;
            }
            if first
                && log.stall == Some(i - 1)
                && tokio::time::timeout(GATE_TIMEOUT, st.gate.notified())
                    .await
                    .is_err()
            {
                return;
            }
            if let Some(at) = cut {
                st.cuts_done.fetch_add(1, Ordering::SeqCst);
                // An aborted connection may lose what was not flushed yet:
                // only a resumed connection (the other side holds an id
                // from before it) is aborted; a first one ends cleanly.
                if at % 2 == 0 && !first {
                    let _ = tx.send(Err(Cut)).await;
                } else if i <= log.last() {
                    // Half of the next event, then a clean end.
                    let next = log.event(i);
                    let _ = tx.send(Ok(next.slice(..next.len() / 2))).await;
                }
                return;
            }
        }
    });
    let mut r = Response::new(UpBody::Log(rx));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r
}

fn listen_stream(st: &Arc<State>, id: Value, msg: &Value) -> Response<UpBody> {
    let (tx, rx) = mpsc::channel::<Result<Bytes, Cut>>(16);
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<ListenCmd>(16);
    st.listens.lock().push(cmd_tx);
    let filter = msg["params"]["notifications"].clone();
    let retry = *st.listen_retry.lock();
    let st = Arc::clone(st);
    tokio::spawn(async move {
        let meta = json!({ SUBSCRIPTION_ID: id });
        let mut first = String::new();
        if let Some(ms) = retry {
            first.push_str(&format!("retry: {ms}\n\n"));
        }
        let ack = json!({"jsonrpc":"2.0","method":"notifications/subscriptions/acknowledged",
            "params":{"_meta":meta,"notifications":filter}});
        first.push_str(&format!("data: {ack}\n\n"));
        if tx.send(Ok(Bytes::from(first))).await.is_err() {
            return;
        }
        st.listens_opened.fetch_add(1, Ordering::SeqCst);
        st.listen_opened.notify_waiters();
        // True when the other side went away.
        let run = async {
            loop {
                tokio::select! {
                    cmd = cmd_rx.recv() => match cmd {
                        Some(ListenCmd::Notify(method, mut params)) => {
                            params["_meta"] = meta.clone();
                            let note = json!({"jsonrpc":"2.0","method":method,"params":params});
                            if tx.send(Ok(Bytes::from(format!("data: {note}\n\n")))).await.is_err() {
                                return true;
                            }
                        }
                        Some(ListenCmd::Cut { abort }) => {
                            if abort {
                                let _ = tx.send(Err(Cut)).await;
                            }
                            return false;
                        }
                        Some(ListenCmd::End) => {
                            let result = json!({"jsonrpc":"2.0","id":id,
                                "result":{"_meta":meta,"resultType":"complete"}});
                            let _ = tx.send(Ok(Bytes::from(format!("data: {result}\n\n")))).await;
                            return false;
                        }
                        None => return false,
                    },
                    () = tx.closed() => return true,
                }
            }
        };
        if let Ok(true) = tokio::time::timeout(Duration::from_secs(30), run).await {
            st.cancelled.fetch_add(1, Ordering::SeqCst);
            st.cancelled_signal.notify_waiters();
        }
    });
    let mut r = Response::new(UpBody::Log(rx));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r
}

fn forever_stream(st: &Arc<State>, version: &str) -> Response<UpBody> {
    let (tx, rx) = mpsc::channel(4);
    let st = Arc::clone(st);
    let priming = version == "2025-11-25";
    let name = stream_name(&st);
    tokio::spawn(async move {
        if priming
            && tx
                .send(Bytes::from(format!("id: {name}-0\ndata:\n\n")))
                .await
                .is_err()
        {
            return;
        }
        for i in 1..=3000u64 {
            let note = json!({"jsonrpc":"2.0","method":"notifications/message",
                "params":{"level":"info","data":i}});
            if tx
                .send(sse_event(&format!("{name}-{i}"), &note))
                .await
                .is_err()
            {
                st.cancelled.fetch_add(1, Ordering::SeqCst);
                st.cancelled_signal.notify_waiters();
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    sse_response(rx)
}

fn get_stream(st: &Arc<State>, version: &str) -> Response<UpBody> {
    let (tx, rx) = mpsc::channel(4);
    let priming = version == "2025-11-25";
    let name = stream_name(st);
    tokio::spawn(async move {
        if priming
            && tx
                .send(Bytes::from(format!("id: {name}-0\ndata:\n\n")))
                .await
                .is_err()
        {
            return;
        }
        let note = json!({"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"hello"}});
        if tx
            .send(sse_event(&format!("{name}-1"), &note))
            .await
            .is_err()
        {
            return;
        }
        // Hold the stream open until the other side goes, bounded.
        let _ = tokio::time::timeout(Duration::from_secs(30), tx.closed()).await;
    });
    sse_response(rx)
}

/// The test upstream's response body.
#[derive(Debug)]
enum UpBody {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Bytes>),
    Log(mpsc::Receiver<Result<Bytes, Cut>>),
}

impl UpBody {
    fn full(b: Bytes) -> Self {
        UpBody::Full(Some(b))
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = Cut;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            UpBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            UpBody::Channel(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
            UpBody::Log(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }
}

pub use crate::session::layer::SessionLayer;

/// The proxy's buffer budget as a test sees it
/// ([`crate::ReverseProxy::budget_probe`]).
#[derive(Debug, Clone)]
pub struct BudgetProbe(pub(crate) Arc<crate::stream::budget::Budget>);

impl BudgetProbe {
    /// Bytes accounted now.
    pub fn used(&self) -> usize {
        self.0.used()
    }

    /// The highest total once a batch settled (room was made).
    pub fn settled_peak(&self) -> usize {
        self.0.settled_peak()
    }

    /// `max_buffered_bytes`.
    pub fn limit(&self) -> usize {
        self.0.limit()
    }

    /// Streams released to stay within the budget, in all.
    pub fn releases(&self) -> u64 {
        self.0.releases()
    }
}

/// Reads `body` whole with the proxy's own body reader, as a request body
/// is read (at most `max` bytes; generous timeouts), for the body gate.
pub async fn read_body_whole<B>(body: B, max: usize) -> Result<Bytes, String>
where
    B: http_body::Body,
    B::Error: std::fmt::Display,
{
    let limits = crate::collect::ReadLimits {
        budget: None,
        max,
        deadline: tokio::time::Instant::now() + Duration::from_secs(60),
        idle: Duration::from_secs(60),
    };
    crate::collect::read_whole(body, limits)
        .await
        .map_err(|e| e.to_string())
}

/// Certificates for TLS tests, made with rcgen: a CA, leaves it signs
/// (server, client, expired, for other names) and rustls configs.
pub mod certs {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SerialNumber,
    };
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    /// A certificate authority.
    pub struct TestCa {
        issuer: Issuer<'static, KeyPair>,
        /// Its certificate, PEM.
        pub pem: String,
        der: CertificateDer<'static>,
    }

    impl std::fmt::Debug for TestCa {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("TestCa").finish_non_exhaustive()
        }
    }

    /// A leaf certificate and its key.
    #[derive(Debug, Clone)]
    pub struct TestCert {
        /// The certificate, PEM.
        pub cert_pem: String,
        /// Its private key, PEM (PKCS#8).
        pub key_pem: String,
        /// The certificate, DER.
        pub der: Vec<u8>,
        /// Its serial number.
        pub serial: u64,
    }

    /// How a leaf is made.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Validity {
        /// Valid now and for years.
        Current,
        /// Expired in 2021.
        Expired,
    }

    impl TestCa {
        /// A new CA named `name`.
        pub fn new(name: &str) -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let key = KeyPair::generate().expect("a CA key");
            let cert = params.self_signed(&key).expect("a CA certificate");
            TestCa {
                pem: cert.pem(),
                der: cert.der().clone(),
                issuer: Issuer::new(params, key),
            }
        }

        /// A server certificate for `names` (DNS names or IP addresses).
        pub fn server(&self, names: &[&str], serial: u64, validity: Validity) -> TestCert {
            self.leaf(names, serial, validity, ExtendedKeyUsagePurpose::ServerAuth)
        }

        /// A client certificate named `name`.
        pub fn client(&self, name: &str, serial: u64) -> TestCert {
            self.leaf(
                &[name],
                serial,
                Validity::Current,
                ExtendedKeyUsagePurpose::ClientAuth,
            )
        }

        fn leaf(
            &self,
            names: &[&str],
            serial: u64,
            validity: Validity,
            usage: ExtendedKeyUsagePurpose,
        ) -> TestCert {
            let mut params =
                CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                    .expect("leaf params");
            params
                .distinguished_name
                .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
            params.serial_number = Some(SerialNumber::from(serial));
            params.extended_key_usages = vec![usage];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            if validity == Validity::Expired {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
            let key = KeyPair::generate().expect("a leaf key");
            let cert = params.signed_by(&key, &self.issuer).expect("a leaf");
            TestCert {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
                der: cert.der().to_vec(),
                serial,
            }
        }

        /// Its certificate, DER.
        pub fn der(&self) -> CertificateDer<'static> {
            self.der.clone()
        }

        /// A rustls client config trusting only this CA, offering `alpn`.
        pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.der()).expect("the CA is a root");
            let mut config = rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Arc::new(config)
        }
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    impl TestCert {
        fn chain(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
            let certs = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("PEM certificate");
            let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("PEM key");
            (certs, key)
        }

        /// A server config presenting this certificate (ALPN http/1.1).
        pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
            let (certs, key) = self.chain();
            let mut config = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .expect("a server config");
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        }

        /// [`TestCert::server_config`] that requires a client certificate
        /// signed by `ca` (mTLS).
        pub fn server_config_requiring_client(&self, ca: &TestCa) -> Arc<rustls::ServerConfig> {
            let (certs, key) = self.chain();
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der()).expect("the CA is a root");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .expect("a client verifier");
            let mut config = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_client_cert_verifier(verifier)
                .with_single_cert(certs, key)
                .expect("a server config");
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        }

        /// Writes `NAME.pem` and `NAME.key` into `dir`; returns their paths.
        pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
            let cert = dir.join(format!("{name}.pem"));
            let key = dir.join(format!("{name}.key"));
            std::fs::write(&cert, &self.cert_pem).expect("write a certificate");
            std::fs::write(&key, &self.key_pem).expect("write a key");
            (cert, key)
        }
    }

    /// The serial number of a DER certificate (as [`TestCa`] writes them:
    /// a positive integer of at most 8 bytes).
    pub fn serial_of(der: &[u8]) -> Option<u64> {
        // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version,
        // serialNumber INTEGER, … } … }
        let body = |b: &[u8]| -> Option<(usize, usize)> {
            let len0 = *b.get(1)? as usize;
            if len0 < 0x80 {
                Some((2, len0))
            } else {
                let n = len0 & 0x7f;
                let mut len = 0usize;
                for i in 0..n {
                    len = len << 8 | *b.get(2 + i)? as usize;
                }
                Some((2 + n, len))
            }
        };
        let (h, _) = body(der)?;
        let tbs = &der[h..];
        let (h, _) = body(tbs)?;
        let mut rest = &tbs[h..];
        if rest.first() == Some(&0xa0) {
            let (h, len) = body(rest)?;
            rest = rest.get(h + len..)?;
        }
        if rest.first() != Some(&0x02) {
            return None;
        }
        let (h, len) = body(rest)?;
        let bytes = rest.get(h..h + len)?;
        if bytes.len() > 9 {
            return None;
        }
        Some(bytes.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b)))
    }
}
