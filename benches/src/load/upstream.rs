//! The harness's own MCP upstream: a minimal Streamable HTTP server on plain
//! hyper whose SSE events carry the time they were made, built so that it
//! is never the bottleneck.
//!
//! - `initialize` answers with an `Mcp-Session-Id`;
//! - `tools/call` `echo` `{text, sse}` answers `application/json`, or with
//!   `sse: true` an SSE stream of the one result (as SDK servers do);
//! - `tools/call` `stream` `{rate, ms, batch, size}` answers an SSE stream
//!   of `rate` events per second (0: as fast as the connection takes them,
//!   `batch` events per write) of `size` bytes each (0: about 150) for `ms`
//!   milliseconds, then the result;
//! - GET opens an idle stream that writes `: open` at once when
//!   [`Handle::set_open_comment`] says so (many servers do, to flush the
//!   headers), else nothing, until the hold time ends or the other side
//!   goes.
//!
//! It counts the connections it accepts, so a run can tell how many new
//! upstream connections a proxy opened.
//!
//! Events are pre-encoded parts around two numbers (sequence and time); the
//! body paces itself with one timer, no task or channel per stream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Sleep;

static START: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds on the process's monotonic clock (shared by the upstream
/// and the clients, so latencies compare like with like).
pub(crate) fn now_ns() -> u64 {
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The instant of [`now_ns`] `ns`.
pub(crate) fn instant_at(ns: u64) -> Instant {
    *START.get_or_init(Instant::now) + Duration::from_nanos(ns)
}

/// The key the events carry their creation time under.
pub(crate) const TIME_KEY: &[u8] = b"\"t\":";

const EVENT_PART1: &[u8] = b"id: ";
const EVENT_PART2: &[u8] = b"\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":\"load\",\"progress\":";
const EVENT_PART3: &[u8] = b",\"t\":";
const EVENT_PAD: &[u8] = b",\"pad\":\"";
const EVENT_PART4: &[u8] = b"}}\n\n";
/// What an idle GET stream writes at once, when it does.
pub(crate) const OPEN_COMMENT: &[u8] = b": open\n\n";

/// A running upstream; its accept loop stops when dropped.
#[derive(Debug)]
pub(crate) struct Upstream {
    addr: SocketAddr,
    task: JoinHandle<()>,
    state: &'static State,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug)]
struct State {
    next_session: AtomicU64,
    next_stream: AtomicU64,
    idle_hold: Duration,
    accepted: AtomicU64,
    open_comment: AtomicBool,
}

/// The upstream's counters and switches, for the scenarios.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Handle {
    state: &'static State,
    /// Its listen port.
    pub(crate) port: u16,
}

impl Handle {
    /// TCP connections accepted so far.
    pub(crate) fn accepted(self) -> u64 {
        self.state.accepted.load(Ordering::Relaxed)
    }

    /// Whether GET streams opened from now on write `: open` at once.
    pub(crate) fn set_open_comment(self, on: bool) {
        self.state.open_comment.store(on, Ordering::Relaxed);
    }
}

impl Upstream {
    /// Starts one on a free loopback port; idle GET streams end after
    /// `idle_hold` at the latest.
    pub(crate) async fn start(idle_hold: Duration) -> std::io::Result<Self> {
        now_ns();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state: &'static State = Box::leak(Box::new(State {
            next_session: AtomicU64::new(1),
            next_stream: AtomicU64::new(1),
            idle_hold,
            accepted: AtomicU64::new(0),
            open_comment: AtomicBool::new(true),
        }));
        let task = tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => {
                        state.accepted.fetch_add(1, Ordering::Relaxed);
                        stream
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "upstream accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| async move {
                        Ok::<_, Infallible>(handle(state, req).await)
                    });
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await
                    {
                        tracing::debug!(error = %e, "upstream connection ended with an error");
                    }
                });
            }
        });
        Ok(Upstream { addr, task, state })
    }

    /// Its counters and switches.
    pub(crate) fn handle(&self) -> Handle {
        Handle {
            state: self.state,
            port: self.addr.port(),
        }
    }

    /// Its listen address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(default, borrow)]
    method: Option<&'a str>,
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    params: Option<Params>,
}

#[derive(Deserialize)]
struct Params {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<Arguments>,
}

#[derive(Deserialize, Default)]
struct Arguments {
    #[serde(default)]
    rate: u64,
    #[serde(default)]
    ms: u64,
    #[serde(default)]
    batch: usize,
    #[serde(default)]
    size: usize,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    sse: bool,
}

/// Room for one event.
const EVENT_CAPACITY: usize = 192;
/// Most events per write an unpaced stream may ask for.
const MAX_BATCH: usize = 256;
/// Largest event a stream may ask for.
const MAX_EVENT: usize = 64 << 10;

/// Longest stream the upstream serves, whatever a request asks.
const MAX_STREAM: Duration = Duration::from_secs(600);

async fn handle(st: &State, req: Request<Incoming>) -> Response<UpBody> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            tracing::warn!(error = %e, "upstream could not read a request body");
            return json(
                StatusCode::BAD_REQUEST,
                error_body("null", "unreadable body"),
            );
        }
    };
    match parts.method {
        Method::GET => return idle_stream(st.idle_hold, st.open_comment.load(Ordering::Relaxed)),
        Method::DELETE => return json(StatusCode::OK, Bytes::new()),
        Method::POST => {}
        _ => return json(StatusCode::METHOD_NOT_ALLOWED, Bytes::new()),
    }
    let msg: Message<'_> = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(_) => return json(StatusCode::BAD_REQUEST, error_body("null", "parse error")),
    };
    let Some(id) = msg.id else {
        return json(StatusCode::ACCEPTED, Bytes::new());
    };
    let id = id.to_string();
    match msg.method.unwrap_or("") {
        "initialize" => {
            let n = st.next_session.fetch_add(1, Ordering::Relaxed);
            let mut r = json(
                StatusCode::OK,
                Bytes::from(format!(
                    r#"{{"jsonrpc":"2.0","id":{id},"result":{{"protocolVersion":"2025-06-18","capabilities":{{"tools":{{}}}},"serverInfo":{{"name":"load-upstream","version":"0"}}}}}}"#
                )),
            );
            r.headers_mut().insert(
                "mcp-session-id",
                HeaderValue::from_str(&format!("load-{n}")).expect("ascii"),
            );
            r
        }
        "tools/call" => {
            let params = msg.params.unwrap_or(Params {
                name: None,
                arguments: None,
            });
            let args = params.arguments.unwrap_or_default();
            match params.name.as_deref().unwrap_or("") {
                "echo" => {
                    let text = serde_json::to_string(args.text.as_deref().unwrap_or(""))
                        .unwrap_or_else(|_| "\"\"".into());
                    let result = format!(
                        r#"{{"jsonrpc":"2.0","id":{id},"result":{{"content":[{{"type":"text","text":{text}}}]}}}}"#
                    );
                    if args.sse {
                        sse(UpBody::Full(Some(Bytes::from(format!(
                            "event: message\ndata: {result}\n\n"
                        )))))
                    } else {
                        json(StatusCode::OK, Bytes::from(result))
                    }
                }
                "stream" => {
                    let stream = st.next_stream.fetch_add(1, Ordering::Relaxed);
                    let length = Duration::from_millis(args.ms).min(MAX_STREAM);
                    sse(UpBody::Events(EventStream::new(
                        stream,
                        args.rate,
                        args.batch.clamp(1, MAX_BATCH),
                        args.size.min(MAX_EVENT),
                        length,
                        &id,
                    )))
                }
                _ => json(StatusCode::OK, error_body(&id, "unknown tool")),
            }
        }
        _ => json(StatusCode::OK, error_body(&id, "method not found")),
    }
}

fn error_body(id: &str, msg: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":-32601,"message":"{msg}"}}}}"#
    ))
}

fn json(status: StatusCode, body: Bytes) -> Response<UpBody> {
    let mut r = Response::new(UpBody::Full(Some(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn sse(body: UpBody) -> Response<UpBody> {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn idle_stream(hold: Duration, open_comment: bool) -> Response<UpBody> {
    sse(UpBody::Idle(IdleStream {
        open_comment,
        end: Box::pin(tokio::time::sleep(hold)),
    }))
}

/// Appends `n` in decimal.
fn put_u64(buf: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.put_slice(&digits[i..]);
}

/// A timed SSE stream.
struct EventStream {
    stream: u64,
    seq: u64,
    rate: u64,
    batch: usize,
    size: usize,
    start: Instant,
    end: Instant,
    timer: Pin<Box<Sleep>>,
    result: Option<Bytes>,
}

impl EventStream {
    fn new(stream: u64, rate: u64, batch: usize, size: usize, length: Duration, id: &str) -> Self {
        let start = Instant::now();
        let result = Bytes::from(format!(
            "id: {stream}-end\ndata: {{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{\"content\":[{{\"type\":\"text\",\"text\":\"done\"}}]}}}}\n\n"
        ));
        EventStream {
            stream,
            seq: 0,
            rate,
            batch,
            size,
            start,
            end: start + length,
            timer: Box::pin(tokio::time::sleep_until(start.into())),
            result: Some(result),
        }
    }

    /// Appends one event of `self.size` bytes (padded inside `params`; at
    /// least its unpadded length).
    fn event(&self, b: &mut BytesMut) {
        let start = b.len();
        b.put_slice(EVENT_PART1);
        put_u64(b, self.stream);
        b.put_u8(b'-');
        put_u64(b, self.seq);
        b.put_slice(EVENT_PART2);
        put_u64(b, self.seq);
        b.put_slice(EVENT_PART3);
        put_u64(b, now_ns());
        let tail = EVENT_PAD.len() + 1 + EVENT_PART4.len();
        if let Some(pad) = self.size.checked_sub(b.len() - start + tail) {
            b.put_slice(EVENT_PAD);
            b.put_bytes(b'x', pad);
            b.put_u8(b'"');
        }
        b.put_slice(EVENT_PART4);
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        loop {
            let now = Instant::now();
            if now >= self.end {
                return Poll::Ready(self.result.take());
            }
            if let Some(due_ns) = self
                .seq
                .saturating_mul(1_000_000_000)
                .checked_div(self.rate)
            {
                let due = self.start + Duration::from_nanos(due_ns);
                if due > now {
                    let due = due.min(self.end);
                    self.timer.as_mut().reset(due.into());
                    if self.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    continue;
                }
            }
            if self.rate > 0 {
                self.seq += 1;
                let mut b = BytesMut::with_capacity(EVENT_CAPACITY.max(self.size));
                self.event(&mut b);
                return Poll::Ready(Some(b.freeze()));
            }
            // Unpaced: `batch` events per write (a busy server with a
            // buffered writer sends several at once).
            let mut b = BytesMut::with_capacity(EVENT_CAPACITY.max(self.size) * self.batch);
            for _ in 0..self.batch {
                self.seq += 1;
                self.event(&mut b);
            }
            return Poll::Ready(Some(b.freeze()));
        }
    }
}

/// A held-open SSE stream.
struct IdleStream {
    /// `: open` is still to be written.
    open_comment: bool,
    end: Pin<Box<Sleep>>,
}

/// The upstream's response body.
enum UpBody {
    Full(Option<Bytes>),
    Events(EventStream),
    Idle(IdleStream),
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = match self.get_mut() {
            UpBody::Full(b) => Poll::Ready(b.take()),
            UpBody::Events(s) => s.poll_next(cx),
            UpBody::Idle(s) => {
                if s.open_comment {
                    s.open_comment = false;
                    Poll::Ready(Some(Bytes::from_static(OPEN_COMMENT)))
                } else {
                    s.end.as_mut().poll(cx).map(|()| None)
                }
            }
        };
        next.map(|o| o.map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, UpBody::Full(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_encode() {
        let mut b = BytesMut::new();
        put_u64(&mut b, 0);
        b.put_u8(b' ');
        put_u64(&mut b, 1_234_567_890_123);
        b.put_u8(b' ');
        put_u64(&mut b, u64::MAX);
        assert_eq!(&b[..], b"0 1234567890123 18446744073709551615");
    }

    #[tokio::test]
    async fn events_have_the_asked_size() {
        for size in [0, 100, 256, 4096] {
            let s = EventStream::new(7, 0, 1, size, Duration::from_secs(1), "1");
            let mut b = BytesMut::new();
            s.event(&mut b);
            let text = std::str::from_utf8(&b).unwrap();
            assert!(text.ends_with("}}\n\n"), "{text}");
            let data = text.lines().nth(1).unwrap().strip_prefix("data: ").unwrap();
            let v: serde_json::Value = serde_json::from_str(data).unwrap();
            assert_eq!(v["method"], "notifications/progress");
            if size >= 200 {
                assert_eq!(b.len(), size);
            } else {
                assert!(b.len() < 200 && b.len() >= size, "{}", b.len());
            }
        }
    }
}
