//! The chaos client's HTTP side: one new connection to nginx per request
//! (so a cut is closing it), MCP 2025-11-25 headers, and the SSE body read
//! frame by frame.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The protocol revision the client speaks (priming events, `retry:`).
pub(crate) const PROTOCOL: &str = "2025-11-25";
/// Longest a request may wait for its response head.
const HEAD_WITHIN: Duration = Duration::from_secs(10);
/// Largest JSON answer read whole.
const MAX_JSON: usize = 1 << 20;

/// One HTTP/1.1 connection with its response; closing it (drop) is a cut.
#[derive(Debug)]
pub(crate) struct Exchange {
    pub(crate) response: Response<Incoming>,
    conn: JoinHandle<()>,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl Exchange {
    /// The response status.
    pub(crate) fn status(&self) -> StatusCode {
        self.response.status()
    }

    /// True for `text/event-stream`.
    pub(crate) fn is_sse(&self) -> bool {
        self.response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
    }

    /// The instance nginx passed it to (`X-Served-By`: the last address
    /// tried).
    pub(crate) fn served_by(&self) -> Option<SocketAddr> {
        let v = self.response.headers().get("x-served-by")?.to_str().ok()?;
        v.rsplit(',').next()?.trim().parse().ok()
    }

    /// The next body frame's data (`Ok(None)` at the end; trailers and
    /// empty frames skipped).
    pub(crate) async fn next_data(&mut self) -> Result<Option<Bytes>, String> {
        loop {
            match self.response.body_mut().frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data()
                        && !d.is_empty()
                    {
                        return Ok(Some(d));
                    }
                }
            }
        }
    }

    /// The whole body as text (bounded), for an error message.
    pub(crate) async fn text(mut self) -> String {
        let mut out = Vec::new();
        while out.len() < MAX_JSON {
            match tokio::time::timeout(HEAD_WITHIN, self.next_data()).await {
                Ok(Ok(Some(d))) => out.extend_from_slice(&d),
                _ => break,
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// An MCP client of one session, through nginx.
#[derive(Debug)]
pub(crate) struct Mcp {
    addr: SocketAddr,
    host: HeaderValue,
    /// `Mcp-Session-Id`, once initialized.
    pub(crate) session: Option<String>,
}

impl Mcp {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Mcp {
            addr,
            host: HeaderValue::from_str(&addr.to_string()).expect("an address is a header value"),
            session: None,
        }
    }

    /// Sends one request on a new connection; the response head.
    async fn send(&self, req: Request<Full<Bytes>>) -> Result<Exchange, String> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", self.addr))?;
        let _ = tcp.set_nodelay(true);
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let conn = tokio::spawn(async move {
            // Ends with the connection, cut or not; nothing to report.
            let _ = conn.await;
        });
        let response = tokio::time::timeout(HEAD_WITHIN, send.send_request(req))
            .await
            .map_err(|_| format!("no response head within {HEAD_WITHIN:?}"))?
            .map_err(|e| format!("request: {e}"))?;
        Ok(Exchange { response, conn })
    }

    fn request(&self, method: Method, body: Bytes) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = http::Uri::from_static("/mcp");
        let h = req.headers_mut();
        h.insert(header::HOST, self.host.clone());
        h.insert("mcp-protocol-version", HeaderValue::from_static(PROTOCOL));
        if let Some(s) = self.session.as_deref().and_then(|s| s.parse().ok()) {
            h.insert("mcp-session-id", s);
        }
        req
    }

    fn post(&self, body: String) -> Request<Full<Bytes>> {
        let mut req = self.request(Method::POST, Bytes::from(body));
        let h = req.headers_mut();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        req
    }

    /// `initialize` and `notifications/initialized`; keeps the session id.
    pub(crate) async fn initialize(&mut self) -> Result<(), String> {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":0,"method":"initialize","params":{{"protocolVersion":"{PROTOCOL}","capabilities":{{}},"clientInfo":{{"name":"cluster-chaos","version":"0"}}}}}}"#
        );
        let ex = self.send(self.post(body)).await?;
        let status = ex.status();
        let session = ex
            .response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = ex.text().await;
        if status != StatusCode::OK {
            return Err(format!("initialize: {status}: {text}"));
        }
        if !text.contains(PROTOCOL) {
            return Err(format!("initialize: unexpected answer: {text}"));
        }
        self.session = Some(session.ok_or("initialize: no Mcp-Session-Id")?);
        let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_owned();
        let ex = self.send(self.post(note)).await?;
        let status = ex.status();
        if status != StatusCode::ACCEPTED {
            return Err(format!(
                "notifications/initialized: {status}: {}",
                ex.text().await
            ));
        }
        Ok(())
    }

    /// `tools/call progress` for `count` notifications.
    pub(crate) async fn call_progress(&self, id: u64, count: u64) -> Result<Exchange, String> {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"progress","arguments":{{"count":{count}}}}}}}"#
        );
        self.send(self.post(body)).await
    }

    /// GET with `Last-Event-ID`.
    pub(crate) async fn resume(&self, last_id: &str) -> Result<Exchange, String> {
        let mut req = self.request(Method::GET, Bytes::new());
        let h = req.headers_mut();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(
            "last-event-id",
            HeaderValue::from_str(last_id).map_err(|e| format!("Last-Event-ID: {e}"))?,
        );
        self.send(req).await
    }
}
