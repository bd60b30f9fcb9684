//! A loopback MCP upstream that misbehaves on request, for the hostile-load
//! suite. `initialize` answers with an `Mcp-Session-Id` unless the client's
//! `clientInfo.name` names a bad answer; `tools/call` tools:
//!
//! - `echo`: a JSON result;
//! - `flood` `{bytes}`: an SSE stream of `bytes` of 1 KiB events, as fast as
//!   the connection takes them, then the result;
//! - `drip` `{ms}`: one small event every 50 ms for `ms`, then the result;
//! - `slow` `{ms}`: a JSON result after `ms`;
//! - `bigjson` `{bytes}`: a JSON result of about `bytes`;
//! - `html500`, `html404`, `html200`: an HTML page with that status;
//! - `cut`: a JSON answer whose body stops halfway (`Content-Length` says
//!   more) and whose connection then drops;
//! - `gone`: 404 with a JSON-RPC error (the upstream forgot the session).
//!
//! Any other request gets an empty JSON result; notifications get 202;
//! DELETE is counted and gets 200; GET gets 405.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Sleep;

/// Largest request body the upstream reads.
const MAX_REQUEST: usize = 16 << 20;
/// Longest `slow` or `drip` answer, whatever a request asks.
const MAX_DELAY: Duration = Duration::from_secs(600);
/// Largest `flood` or `bigjson` answer, whatever a request asks.
const MAX_BYTES: u64 = 1 << 30;
/// One flood event's filler.
const FILLER: usize = 1000;
/// Flood events per write.
const EVENTS_PER_CHUNK: usize = 64;
/// How long a `cut` answer waits (head and half its body sent) before its
/// connection drops.
const CUT_AFTER: Duration = Duration::from_millis(100);
/// Time between two drip events.
const DRIP_EVERY: Duration = Duration::from_millis(50);

/// What the upstream saw.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Sessions it handed out.
    pub(crate) sessions: AtomicU64,
    /// DELETE requests (sessions ended by the proxy).
    pub(crate) deletes: AtomicU64,
    /// `slow` calls received.
    pub(crate) slow_started: AtomicU64,
    /// Woken when a `slow` call arrives.
    pub(crate) slow_notify: Notify,
}

/// A running upstream; its accept loop stops when dropped (connections
/// already open run on until their peer goes).
#[derive(Debug)]
pub(crate) struct HostileUpstream {
    addr: SocketAddr,
    stats: Arc<Stats>,
    task: JoinHandle<()>,
}

impl Drop for HostileUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HostileUpstream {
    /// Starts one on a free loopback port.
    pub(crate) async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(Stats::default());
        let st = Arc::clone(&stats);
        let task = tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "hostile upstream: accept failed");
                        // Out of descriptors: give the attack a moment to end.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let st = Arc::clone(&st);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = Arc::clone(&st);
                        async move { Ok::<_, std::convert::Infallible>(handle(&st, req).await) }
                    });
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await
                    {
                        tracing::debug!(error = %e, "hostile upstream: connection ended");
                    }
                });
            }
        });
        Ok(HostileUpstream { addr, stats, task })
    }

    /// Its listen address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it saw so far.
    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }
}

async fn handle(st: &Stats, req: Request<Incoming>) -> Response<HostileBody> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_REQUEST).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            tracing::debug!(error = %e, "hostile upstream: unreadable request body");
            return json(
                StatusCode::BAD_REQUEST,
                rpc_error("null", "unreadable body"),
            );
        }
    };
    match parts.method {
        Method::POST => {}
        Method::DELETE => {
            st.deletes.fetch_add(1, Ordering::Relaxed);
            return json(StatusCode::OK, String::new());
        }
        _ => return json(StatusCode::METHOD_NOT_ALLOWED, String::new()),
    }
    let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
        return json(StatusCode::BAD_REQUEST, rpc_error("null", "parse error"));
    };
    let Some(id) = msg.get("id").map(Value::to_string) else {
        return json(StatusCode::ACCEPTED, String::new());
    };
    let params = msg.get("params");
    let arg = |key: &str| {
        params
            .and_then(|p| p.get("arguments"))
            .and_then(|a| a.get(key))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    match msg.get("method").and_then(Value::as_str).unwrap_or("") {
        "initialize" => {
            let client = params
                .and_then(|p| p.get("clientInfo"))
                .and_then(|c| c.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if let Some(bad) = misbehave(client, &id) {
                return bad;
            }
            let n = st.sessions.fetch_add(1, Ordering::Relaxed);
            let mut r = json(
                StatusCode::OK,
                format!(
                    r#"{{"jsonrpc":"2.0","id":{id},"result":{{"protocolVersion":"2025-06-18","capabilities":{{"tools":{{}}}},"serverInfo":{{"name":"hostile-upstream","version":"0"}}}}}}"#
                ),
            );
            r.headers_mut().insert(
                "mcp-session-id",
                HeaderValue::from_str(&format!("up-{n}")).expect("ascii"),
            );
            r
        }
        "tools/call" => {
            let tool = params
                .and_then(|p| p.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if let Some(bad) = misbehave(tool, &id) {
                return bad;
            }
            match tool {
                "echo" => json(StatusCode::OK, text_result(&id, "hello")),
                "flood" => sse(HostileBody::Flood(Flood::new(
                    arg("bytes").min(MAX_BYTES),
                    &id,
                ))),
                "drip" => {
                    let ms = Duration::from_millis(arg("ms")).min(MAX_DELAY);
                    sse(HostileBody::Drip(Drip::new(ms, &id)))
                }
                "slow" => {
                    st.slow_started.fetch_add(1, Ordering::Relaxed);
                    st.slow_notify.notify_waiters();
                    tokio::time::sleep(Duration::from_millis(arg("ms")).min(MAX_DELAY)).await;
                    json(StatusCode::OK, text_result(&id, "slow"))
                }
                "bigjson" => {
                    let n = usize::try_from(arg("bytes").min(MAX_BYTES)).unwrap_or(0);
                    json(StatusCode::OK, text_result(&id, &"x".repeat(n)))
                }
                "gone" => json(StatusCode::NOT_FOUND, rpc_error(&id, "session not found")),
                _ => json(StatusCode::OK, rpc_error(&id, "unknown tool")),
            }
        }
        _ => json(
            StatusCode::OK,
            format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{"tools":[]}}}}"#),
        ),
    }
}

/// The bad answer `name` asks for, if it names one.
fn misbehave(name: &str, id: &str) -> Option<Response<HostileBody>> {
    let html = |status: StatusCode| {
        let page = format!(
            "<!DOCTYPE html><html><head><title>{status}</title></head><body><h1>{status}</h1><p>nginx</p></body></html>"
        );
        let mut r = Response::new(HostileBody::Full(Some(Bytes::from(page))));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        r
    };
    Some(match name {
        "html500" => html(StatusCode::INTERNAL_SERVER_ERROR),
        "html404" => html(StatusCode::NOT_FOUND),
        "html200" => html(StatusCode::OK),
        "cut" => {
            let whole = text_result(id, &"y".repeat(4000));
            let half = Bytes::from(whole[..whole.len() / 2].to_owned());
            let mut r = Response::new(HostileBody::Cut(
                Some(half),
                Box::pin(tokio::time::sleep(CUT_AFTER)),
            ));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(whole.len()));
            r
        }
        _ => return None,
    })
}

fn text_result(id: &str, text: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"result":{{"content":[{{"type":"text","text":"{text}"}}]}}}}"#
    )
}

fn rpc_error(id: &str, msg: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":-32601,"message":"{msg}"}}}}"#)
}

fn json(status: StatusCode, body: String) -> Response<HostileBody> {
    let mut r = Response::new(HostileBody::Full(Some(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn sse(body: HostileBody) -> Response<HostileBody> {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn result_event(id: &str) -> Bytes {
    Bytes::from(format!(
        "data: {{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{\"content\":[{{\"type\":\"text\",\"text\":\"done\"}}]}}}}\n\n"
    ))
}

/// `flood`: one chunk of events written again and again.
#[derive(Debug)]
pub(crate) struct Flood {
    left: u64,
    chunk: Bytes,
    result: Option<Bytes>,
}

impl Flood {
    fn new(bytes: u64, id: &str) -> Self {
        let event = format!(
            "data: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{{\"level\":\"info\",\"data\":\"{}\"}}}}\n\n",
            "z".repeat(FILLER)
        );
        let mut chunk = BytesMut::with_capacity(event.len() * EVENTS_PER_CHUNK);
        for _ in 0..EVENTS_PER_CHUNK {
            chunk.extend_from_slice(event.as_bytes());
        }
        Flood {
            left: bytes,
            chunk: chunk.freeze(),
            result: Some(result_event(id)),
        }
    }

    fn next(&mut self) -> Option<Bytes> {
        if self.left == 0 {
            return self.result.take();
        }
        self.left = self.left.saturating_sub(self.chunk.len() as u64);
        Some(self.chunk.clone())
    }
}

/// `drip`: a small event every [`DRIP_EVERY`] until the end.
#[derive(Debug)]
pub(crate) struct Drip {
    seq: u64,
    end: tokio::time::Instant,
    timer: Pin<Box<Sleep>>,
    result: Option<Bytes>,
}

impl Drip {
    fn new(length: Duration, id: &str) -> Self {
        let now = tokio::time::Instant::now();
        Drip {
            seq: 0,
            end: now + length,
            timer: Box::pin(tokio::time::sleep_until(now)),
            result: Some(result_event(id)),
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let now = tokio::time::Instant::now();
        if now >= self.end {
            return Poll::Ready(self.result.take());
        }
        self.seq += 1;
        self.timer.as_mut().reset((now + DRIP_EVERY).min(self.end));
        Poll::Ready(Some(Bytes::from(format!(
            "data: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{{\"progressToken\":\"drip\",\"progress\":{}}}}}\n\n",
            self.seq
        ))))
    }
}

/// The upstream's response bodies.
#[derive(Debug)]
pub(crate) enum HostileBody {
    /// A whole body.
    Full(Option<Bytes>),
    /// Half a body, then (once it went out) an error: the connection drops.
    Cut(Option<Bytes>, Pin<Box<Sleep>>),
    /// [`Flood`].
    Flood(Flood),
    /// [`Drip`].
    Drip(Drip),
}

impl Body for HostileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let next = match self.get_mut() {
            HostileBody::Full(b) => Poll::Ready(b.take()),
            HostileBody::Cut(b, timer) => match b.take() {
                Some(half) => Poll::Ready(Some(half)),
                None => {
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    return Poll::Ready(Some(Err(std::io::Error::other("cut short on purpose"))));
                }
            },
            HostileBody::Flood(f) => Poll::Ready(f.next()),
            HostileBody::Drip(d) => d.poll_next(cx),
        };
        next.map(|o| o.map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, HostileBody::Full(None))
    }
}
