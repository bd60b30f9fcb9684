//! Upstream HTTP/1 connections driven by the task that reads them.
//!
//! A pooled client that runs each connection in its own task hands the
//! response body over a channel, one chunk per cross-task wake-up; a
//! forwarder then finds one chunk ready per poll and the client gets one
//! write per event. Here the connection future travels
//! with the response body ([`UpstreamBody`]): whoever polls the body polls
//! the connection when the body has nothing ready, so everything already
//! received on the socket is decoded and forwarded in one wake-up, with no
//! other task involved.
//!
//! [`UpstreamPool`] keeps idle `(SendRequest, Connection)` pairs for
//! request/response traffic. An idle HTTP/1 connection needs no driving;
//! one the server closed is found dead at checkout or fails on use, and a
//! request that was not sent is retried once on a fresh connection.
//!
//! An `https` upstream gets the same pool over TLS ([`UpstreamIo`]): the
//! TCP connect and the handshake share the connect timeout, and a failed
//! handshake names the host and the reason.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::tls::UpstreamTls;

type Conn = http1::Connection<TokioIo<UpstreamIo>, Full<Bytes>>;
type Sender = http1::SendRequest<Full<Bytes>>;

/// Default [`crate::Limits::upstream_max_idle_connections`].
pub(crate) const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed instead of reused.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// No TCP connection could be made.
    #[error("could not connect to {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TCP connection took longer than the connect timeout.
    #[error("connecting to {addr} timed out after {timeout:?}")]
    ConnectTimeout {
        /// `host:port`.
        addr: String,
        /// The connect timeout.
        timeout: Duration,
    },
    /// The TLS handshake failed, or the upstream ended TLS with an
    /// alert (a client certificate it refused or wanted).
    #[error("TLS with the upstream {host} failed: {reason}")]
    Tls {
        /// The upstream's host.
        host: String,
        /// Why, in words.
        reason: String,
    },
    /// The HTTP exchange failed.
    #[error("HTTP exchange failed: {0}")]
    Http(#[from] hyper::Error),
}

impl UpstreamError {
    /// True when no connection could be made.
    pub(crate) fn is_connect(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout { .. }
        )
    }

    /// True when connecting timed out.
    pub(crate) fn is_connect_timeout(&self) -> bool {
        matches!(self, UpstreamError::ConnectTimeout { .. })
    }

    /// True for a TLS failure (certificate, handshake, alert).
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, UpstreamError::Tls { .. })
    }

    /// A hyper error, as a TLS failure when TLS caused it.
    fn from_hyper(e: hyper::Error, tls: Option<&UpstreamTls>) -> Self {
        if let Some(tls) = tls
            && let Some(reason) = crate::tls::reason(&e, &tls.host)
        {
            return UpstreamError::Tls {
                host: tls.host.clone(),
                reason,
            };
        }
        UpstreamError::Http(e)
    }
}

/// A connection to the upstream: plain TCP or TLS over it.
pub(crate) enum UpstreamIo {
    /// `http`.
    Plain(TcpStream),
    /// `https`.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

struct Idle {
    send: Sender,
    conn: Conn,
    since: Instant,
}

/// Checks the upstream URL: `http` or `https`, with a host.
pub fn check_upstream(uri: &http::Uri) -> Result<(), crate::error::ProxyError> {
    let bad = |reason| crate::error::ProxyError::UpstreamUrl {
        url: uri.to_string(),
        reason,
    };
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("it must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    Ok(())
}

/// Connections to one upstream `http(s)://host:port`, with idle ones kept
/// for reuse.
pub(crate) struct UpstreamPool {
    addr: String,
    /// TLS for an `https` upstream.
    tls: Option<UpstreamTls>,
    host: HeaderValue,
    connect_timeout: Duration,
    http: http1::Builder,
    idle: Mutex<Vec<Idle>>,
    /// Most idle connections kept.
    max_idle: usize,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool")
            .field("addr", &self.addr)
            .field("idle", &self.idle.lock().len())
            .finish_non_exhaustive()
    }
}

/// Default [`crate::Limits::upstream_read_buffer`]: 64 KiB.
pub(crate) const DEFAULT_UPSTREAM_READ_BUFFER: usize = 64 << 10;

impl UpstreamPool {
    /// A pool for the plain-HTTP upstream at `uri` (`http://host[:port]/…`);
    /// each connection reads at most `read_buffer` bytes at a time (at
    /// least 8 KiB; it also bounds a response head).
    #[cfg(test)]
    pub(crate) fn new(uri: &Uri, connect_timeout: Duration, read_buffer: usize) -> Arc<Self> {
        Self::with_max_idle(uri, connect_timeout, read_buffer, MAX_IDLE, None)
    }

    /// [`UpstreamPool::new`] keeping at most `max_idle` idle connections,
    /// over `tls` when given (an `https` upstream).
    pub(crate) fn with_max_idle(
        uri: &Uri,
        connect_timeout: Duration,
        read_buffer: usize,
        max_idle: usize,
        tls: Option<UpstreamTls>,
    ) -> Arc<Self> {
        let host = uri.host().unwrap_or("localhost");
        let default_port = if tls.is_some() { 443 } else { 80 };
        let port = uri.port_u16().unwrap_or(default_port);
        let addr = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let authority = uri.authority().map_or(host, |a| a.as_str());
        let host = HeaderValue::from_str(authority)
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        let mut http = http1::Builder::new();
        http.max_buf_size(read_buffer.max(8192));
        Arc::new(UpstreamPool {
            addr,
            tls,
            host,
            connect_timeout,
            http,
            idle: Mutex::new(Vec::new()),
            max_idle,
        })
    }

    /// Sends `req` (its URI may be absolute) and returns the response head;
    /// the body drives the connection. A reused connection that turns out
    /// closed before the request went out is replaced by a fresh one, once.
    pub(crate) async fn request(
        self: &Arc<Self>,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        self.to_origin_form(&mut req);
        let mut may_reuse = true;
        loop {
            let (mut send, conn, reused) = match may_reuse.then(|| self.checkout()).flatten() {
                Some((send, conn)) => (send, conn, true),
                None => {
                    let (send, conn) = self.connect().await?;
                    (send, conn, false)
                }
            };
            let mut conn = Some(conn);
            let mut answer = pin!(send.try_send_request(req));
            let polled = poll_fn(|cx| {
                if let Some(c) = conn.as_mut()
                    && let Poll::Ready(r) = Pin::new(c).poll(cx)
                {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "upstream connection ended before the response");
                    }
                    // Dropping it answers the request (an error).
                    conn = None;
                }
                answer.as_mut().poll(cx)
            })
            .await;
            match polled {
                Ok(resp) => {
                    let driven = conn.map(|conn| {
                        Box::new(Driven {
                            send,
                            conn,
                            pool: Arc::clone(self),
                        })
                    });
                    return Ok(resp.map(|body| UpstreamBody { body, driven }));
                }
                Err(mut e) => match e.take_message() {
                    Some(back) if reused => {
                        metrics::counter!("shadowcat_upstream_retries_total").increment(1);
                        tracing::debug!(error = %e.error(), "idle upstream connection was closed; retrying on a fresh one");
                        req = back;
                        may_reuse = false;
                    }
                    _ => {
                        return Err(UpstreamError::from_hyper(e.into_error(), self.tls.as_ref()));
                    }
                },
            }
        }
    }

    fn to_origin_form(&self, req: &mut Request<Full<Bytes>>) {
        if req.uri().authority().is_some() {
            let origin = req
                .uri()
                .path_and_query()
                .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
            *req.uri_mut() = origin;
        }
        if !req.headers().contains_key(header::HOST) {
            req.headers_mut().insert(header::HOST, self.host.clone());
        }
    }

    /// A live idle connection, if any.
    fn checkout(&self) -> Option<(Sender, Conn)> {
        let now = Instant::now();
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            let Idle {
                send,
                mut conn,
                since,
            } = self.idle.lock().pop()?;
            if now.duration_since(since) > IDLE_TIMEOUT || send.is_closed() {
                continue;
            }
            // Lets it notice a close by the server (EOF already received).
            if Pin::new(&mut conn).poll(&mut cx).is_ready() || !send.is_ready() {
                continue;
            }
            return Some((send, conn));
        }
    }

    fn checkin(&self, send: Sender, conn: Conn) {
        let mut idle = self.idle.lock();
        if idle.len() >= self.max_idle.max(1) {
            // Drop the oldest.
            idle.remove(0);
        }
        idle.push(Idle {
            send,
            conn,
            since: Instant::now(),
        });
    }

    /// Opens one connection (TCP, then TLS for `https`, within the
    /// connect timeout) and checks it in as idle: a start-up check that
    /// the upstream can be reached and its certificate verifies.
    pub(crate) async fn probe(&self) -> Result<(), UpstreamError> {
        let (send, conn) = self.connect().await?;
        self.checkin(send, conn);
        Ok(())
    }

    async fn connect(&self) -> Result<(Sender, Conn), UpstreamError> {
        let io = match tokio::time::timeout(self.connect_timeout, self.open()).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(UpstreamError::ConnectTimeout {
                    addr: self.addr.clone(),
                    timeout: self.connect_timeout,
                });
            }
        };
        self.http
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| UpstreamError::from_hyper(e, self.tls.as_ref()))
    }

    /// TCP, then the TLS handshake for an `https` upstream.
    async fn open(&self) -> Result<UpstreamIo, UpstreamError> {
        let tcp = TcpStream::connect(self.addr.as_str())
            .await
            .map_err(|source| UpstreamError::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        metrics::counter!("shadowcat_upstream_connects_total").increment(1);
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY toward the upstream");
        }
        let Some(tls) = &self.tls else {
            return Ok(UpstreamIo::Plain(tcp));
        };
        match tls.connector.connect(tls.name.clone(), tcp).await {
            Ok(s) => Ok(UpstreamIo::Tls(Box::new(s))),
            Err(e) => {
                metrics::counter!("shadowcat_upstream_tls_failures_total").increment(1);
                let reason = crate::tls::reason(&e, &tls.host)
                    .unwrap_or_else(|| format!("the connection ended during the handshake ({e})"));
                Err(UpstreamError::Tls {
                    host: tls.host.clone(),
                    reason,
                })
            }
        }
    }
}

/// The connection behind a response body, polled by the body's reader.
struct Driven {
    send: Sender,
    conn: Conn,
    pool: Arc<UpstreamPool>,
}

/// An upstream response body; when it came from an [`UpstreamPool`] it also
/// drives its connection, and returns the connection to the pool once the
/// body is complete.
pub(crate) struct UpstreamBody {
    body: Incoming,
    driven: Option<Box<Driven>>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("driven", &self.driven.is_some())
            .finish_non_exhaustive()
    }
}

impl UpstreamBody {
    /// The body ended cleanly: an idle keep-alive connection goes back to
    /// the pool.
    fn finished(&mut self, cx: &mut Context<'_>) {
        let Some(driven) = self.driven.take() else {
            return;
        };
        let Driven {
            send,
            mut conn,
            pool,
        } = *driven;
        // One more poll moves the connection to idle (or closes it).
        if Pin::new(&mut conn).poll(cx).is_pending() && send.is_ready() {
            pool.checkin(send, conn);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Pending => {}
            Poll::Ready(None) => {
                this.finished(cx);
                return Poll::Ready(None);
            }
            ready => return ready,
        }
        let Some(d) = this.driven.as_mut() else {
            return Poll::Pending;
        };
        // The body had nothing: let the connection read and decode what
        // the socket holds, then look again.
        if let Poll::Ready(r) = Pin::new(&mut d.conn).poll(cx) {
            if let Err(e) = r {
                tracing::debug!(error = %e, "upstream connection ended");
            }
            this.driven = None;
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(None) => {
                this.finished(cx);
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A raw HTTP/1.1 upstream: answers every request with `reply`, closes
    /// each connection after one answer when `close_after_one`. Counts the
    /// connections it accepted.
    async fn upstream(reply: &'static [u8], close_after_one: bool) -> (Uri, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    for _ in 0..100 {
                        let mut got = Vec::new();
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                        if s.write_all(reply).await.is_err() || close_after_one {
                            return;
                        }
                    }
                });
            }
        });
        (format!("http://{addr}/mcp").parse().unwrap(), accepted)
    }

    fn get(uri: &Uri) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = uri.clone();
        req
    }

    async fn body(resp: Response<UpstreamBody>) -> Bytes {
        use http_body_util::BodyExt;
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    #[tokio::test]
    async fn reuses_an_idle_connection() {
        let (uri, accepted) = upstream(OK, false).await;
        let pool = UpstreamPool::new(&uri, Duration::from_secs(5), DEFAULT_UPSTREAM_READ_BUFFER);
        for _ in 0..5 {
            let resp = pool.request(get(&uri)).await.unwrap();
            assert_eq!(body(resp).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection, reused");
    }

    #[tokio::test]
    async fn a_closed_idle_connection_is_replaced() {
        let (uri, accepted) = upstream(OK, true).await;
        let pool = UpstreamPool::new(&uri, Duration::from_secs(5), DEFAULT_UPSTREAM_READ_BUFFER);
        for _ in 0..3 {
            let resp = pool.request(get(&uri)).await.unwrap();
            assert_eq!(body(resp).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn everything_received_is_read_without_a_wake_up() {
        // Head and 50 chunks in one write: once the head is in, every chunk
        // is decoded by polling the body alone, with a waker that never
        // wakes (no other task feeds it).
        let mut reply = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for i in 0..50 {
            let ev = format!("data: {i:02}\n\n");
            reply.extend_from_slice(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes());
        }
        reply.extend_from_slice(b"0\r\n\r\n");
        let reply: &'static [u8] = Box::leak(reply.into_boxed_slice());
        let (uri, _) = upstream(reply, false).await;
        let pool = UpstreamPool::new(&uri, Duration::from_secs(5), DEFAULT_UPSTREAM_READ_BUFFER);
        let resp = pool.request(get(&uri)).await.unwrap();
        let mut body = resp.into_body();
        assert!(body.driven.is_some(), "the body drives its connection");
        let mut cx = Context::from_waker(Waker::noop());
        let mut frames = 0;
        loop {
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(f))) => {
                    assert!(f.is_data());
                    frames += 1;
                }
                Poll::Ready(None) => break,
                Poll::Ready(Some(Err(e))) => panic!("body failed: {e}"),
                Poll::Pending => panic!("pending after {frames} frames"),
            }
            assert!(frames <= 50);
        }
        assert_eq!(frames, 50);
    }
}
