//! Clients for the hostile-load suite: connections from a chosen loopback
//! address, a small MCP client on hyper that reports whatever status it
//! got, and raw HTTP/1.1 for requests hyper would not send.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How long one request may take before it counts as a timeout.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of one answer the clients read.
const MAX_ANSWER: usize = 64 << 20;

static NEXT_IP: AtomicU32 = AtomicU32::new(0);

/// A loopback address no earlier call returned (127.1.0.1, 127.1.0.2, …),
/// so the proxy sees a new client.
pub(crate) fn fresh_ip() -> IpAddr {
    let n = NEXT_IP.fetch_add(1, Ordering::Relaxed) % (200 * 256 * 254);
    let host = (n % 254) as u8 + 1;
    let mid = ((n / 254) % 256) as u8;
    let high = (n / (254 * 256)) as u8 + 1;
    IpAddr::V4(Ipv4Addr::new(127, high, mid, host))
}

/// The attacker's own address.
pub(crate) const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));

/// What one request came to.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// No TCP connection.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// The connection closed (or reset) before a response head.
    #[error("no response: {0}")]
    NoResponse(String),
    /// A response head, then the body broke off.
    #[error("status {status}, body cut: {error}")]
    Cut {
        /// The status of the head.
        status: u16,
        /// Why the body ended.
        error: String,
    },
}

impl Failure {
    /// A short label for tables.
    pub(crate) fn label(&self) -> String {
        match self {
            Failure::Connect(_) => "connect failed".into(),
            Failure::Timeout => "timeout".into(),
            Failure::NoResponse(_) => "no response".into(),
            Failure::Cut { status, .. } => format!("{status} cut"),
        }
    }
}

/// A whole answer.
#[derive(Debug)]
pub(crate) struct Answer {
    /// Its status.
    pub(crate) status: u16,
    /// Its headers.
    pub(crate) headers: HeaderMap,
    /// Its body.
    pub(crate) body: Bytes,
}

impl Answer {
    /// The body as JSON, if it is JSON.
    pub(crate) fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The JSON-RPC error message, if the body is a JSON-RPC error.
    pub(crate) fn rpc_error(&self) -> Option<String> {
        rpc_error(&self.body)
    }
}

/// The JSON-RPC error message in `body`, if it is a JSON-RPC error.
pub(crate) fn rpc_error(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if v.get("jsonrpc")?.as_str()? != "2.0" {
        return None;
    }
    Some(v.get("error")?.get("message")?.as_str()?.to_owned())
}

/// The label of an outcome: the status, or what went wrong.
pub(crate) fn label(r: &Result<Answer, Failure>) -> String {
    match r {
        Ok(a) => a.status.to_string(),
        Err(f) => f.label(),
    }
}

/// A TCP connection from `from` to `to`.
pub(crate) async fn connect_from(from: IpAddr, to: SocketAddr) -> Result<TcpStream, Failure> {
    let go = async {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(from, 0))?;
        let s = socket.connect(to).await?;
        s.set_nodelay(true)?;
        Ok::<_, std::io::Error>(s)
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, go).await {
        Ok(r) => r.map_err(Failure::Connect),
        Err(_) => Err(Failure::Timeout),
    }
}

/// An `initialize` request body; `client` is the `clientInfo.name` (the
/// hostile upstream misbehaves on some).
pub(crate) fn initialize_body(client: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":0,"method":"initialize","params":{{"protocolVersion":"2025-06-18","capabilities":{{}},"clientInfo":{{"name":"{client}","version":"0"}}}}}}"#
    )
}

/// A `tools/call` request body.
pub(crate) fn call_body(id: u64, tool: &str, args: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{args}}}}}"#
    )
}

/// One MCP client connection (HTTP/1.1, one request at a time).
#[derive(Debug)]
pub(crate) struct Mcp {
    send: SendRequest<Full<Bytes>>,
    host: HeaderValue,
    /// The session id, once initialized.
    pub(crate) session: Option<HeaderValue>,
}

impl Mcp {
    /// Connects from `from` to the proxy at `to`.
    pub(crate) async fn connect(from: IpAddr, to: SocketAddr) -> Result<Self, Failure> {
        let tcp = connect_from(from, to).await?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| Failure::NoResponse(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "client connection ended");
            }
        });
        Ok(Mcp {
            send,
            host: HeaderValue::from_str(&to.to_string()).expect("an address is a header value"),
            session: None,
        })
    }

    /// A POST of `body` with the headers an MCP client sends.
    pub(crate) fn post(&self, body: String) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(Bytes::from(body)));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = http::Uri::from_static("/mcp");
        let h = req.headers_mut();
        h.insert(header::HOST, self.host.clone());
        h.insert(
            "mcp-protocol-version",
            HeaderValue::from_static("2025-06-18"),
        );
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(s) = &self.session {
            h.insert("mcp-session-id", s.clone());
        }
        req
    }

    /// Sends `req` and waits for the response head.
    pub(crate) async fn head(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, Failure> {
        let go = async {
            self.send.ready().await?;
            self.send.send_request(req).await
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, go).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(Failure::NoResponse(e.to_string())),
            Err(_) => Err(Failure::Timeout),
        }
    }

    /// Sends `req` and reads the whole answer.
    pub(crate) async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Answer, Failure> {
        let resp = self.head(req).await?;
        let status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        match tokio::time::timeout(REQUEST_TIMEOUT, Limited::new(body, MAX_ANSWER).collect()).await
        {
            Ok(Ok(b)) => Ok(Answer {
                status,
                headers: parts.headers,
                body: b.to_bytes(),
            }),
            Ok(Err(e)) => Err(Failure::Cut {
                status,
                error: e.to_string(),
            }),
            Err(_) => Err(Failure::Cut {
                status,
                error: "timed out".into(),
            }),
        }
    }

    /// `initialize` with `clientInfo.name` = `client`; keeps the session id
    /// of a 200.
    pub(crate) async fn initialize_as(&mut self, client: &str) -> Result<Answer, Failure> {
        let a = self.send(self.post(initialize_body(client))).await?;
        if a.status == 200 {
            self.session = a.headers.get("mcp-session-id").cloned();
        }
        Ok(a)
    }

    /// `initialize`; keeps the session id of a 200.
    pub(crate) async fn initialize(&mut self) -> Result<Answer, Failure> {
        self.initialize_as("hostile").await
    }

    /// `tools/call` of `tool` with `args` (a JSON object).
    pub(crate) async fn call(&mut self, tool: &str, args: &str) -> Result<Answer, Failure> {
        self.send(self.post(call_body(1, tool, args))).await
    }
}

/// A new client from a new address: `initialize`, then `tools/call echo`.
/// `Ok` when both succeed.
pub(crate) async fn fresh_session_works(proxy: SocketAddr) -> Result<(), String> {
    let mut c = Mcp::connect(fresh_ip(), proxy)
        .await
        .map_err(|e| e.to_string())?;
    let init = c
        .initialize()
        .await
        .map_err(|e| format!("initialize: {e}"))?;
    if init.status != 200 || c.session.is_none() {
        return Err(format!("initialize: status {}", init.status));
    }
    let echo = c
        .call("echo", "{}")
        .await
        .map_err(|e| format!("tools/call: {e}"))?;
    let ok = echo.status == 200
        && echo
            .json()
            .is_some_and(|v| v["result"]["content"][0]["text"] == "hello");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tools/call: status {} body {}",
            echo.status,
            String::from_utf8_lossy(&echo.body[..echo.body.len().min(200)])
        ))
    }
}

/// A raw response: the status and the body as far as it came.
#[derive(Debug)]
pub(crate) struct RawAnswer {
    /// Its status.
    pub(crate) status: u16,
    /// Its body (whole when the head gave a length or chunking).
    pub(crate) body: Vec<u8>,
}

/// Reads one response from `s` (bounded by [`MAX_ANSWER`] and `within`).
pub(crate) async fn read_response(
    s: &mut TcpStream,
    within: Duration,
) -> Result<RawAnswer, Failure> {
    match tokio::time::timeout(within, read_response_inner(s)).await {
        Ok(r) => r,
        Err(_) => Err(Failure::Timeout),
    }
}

async fn read_response_inner(s: &mut TcpStream) -> Result<RawAnswer, Failure> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(at) = find(&buf, b"\r\n\r\n") {
            break at + 4;
        }
        match s.read(&mut chunk).await {
            Ok(0) => return Err(Failure::NoResponse("closed".into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(Failure::NoResponse(e.to_string())),
        }
        if buf.len() > MAX_ANSWER {
            return Err(Failure::NoResponse("head too long".into()));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| Failure::NoResponse(format!("bad status line in {head:?}")))?;
    let lower = head.to_ascii_lowercase();
    let length = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = lower
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
    let mut body = buf[head_end..].to_vec();
    let complete = |b: &[u8]| match (length, chunked) {
        (Some(n), _) => b.len() >= n,
        (None, true) => b.ends_with(b"0\r\n\r\n"),
        (None, false) => false,
    };
    while !complete(&body) && body.len() < MAX_ANSWER {
        match s.read(&mut chunk).await {
            Ok(0) if length.is_none() && !chunked => break,
            Ok(0) => {
                return Err(Failure::Cut {
                    status,
                    error: "closed".into(),
                });
            }
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) => {
                return Err(Failure::Cut {
                    status,
                    error: e.to_string(),
                });
            }
        }
    }
    if chunked {
        body = dechunk(&body);
    }
    Ok(RawAnswer { status, body })
}

/// The data of a chunked body (as far as it is well formed).
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = find(b, b"\r\n") {
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let Some(size) = size.filter(|&n| n > 0) else {
            break;
        };
        let start = eol + 2;
        let end = (start + size).min(b.len());
        out.extend_from_slice(&b[start..end]);
        b = &b[(end + 2).min(b.len())..];
    }
    out
}

/// Reads a response head from `r` and returns its status, leaving the body
/// unread (whatever came in the same reads is dropped).
pub(crate) async fn read_head<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Result<u16, Failure> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    while find(&buf, b"\r\n\r\n").is_none() {
        match r.read(&mut chunk).await {
            Ok(0) => return Err(Failure::NoResponse("closed".into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(Failure::NoResponse(e.to_string())),
        }
        if buf.len() > 1 << 20 {
            return Err(Failure::NoResponse("head too long".into()));
        }
    }
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| Failure::NoResponse("bad status line".into()))
}

/// Writes `bytes` in one write and reads the response (also when the
/// write failed part way).
pub(crate) async fn raw_exchange(
    s: &mut TcpStream,
    bytes: &[u8],
    within: Duration,
) -> Result<RawAnswer, Failure> {
    // A proxy may answer (and close) before it has read everything.
    let written = s.write_all(bytes).await;
    match read_response(s, within).await {
        Err(Failure::NoResponse(e)) => match written {
            Err(w) => Err(Failure::NoResponse(format!("write: {w}; read: {e}"))),
            Ok(()) => Err(Failure::NoResponse(e)),
        },
        r => r,
    }
}

/// A POST head for `/mcp` with a body of `length` bytes and `extra` header
/// lines (each ending in CRLF).
pub(crate) fn post_head(to: SocketAddr, length: usize, extra: &str) -> String {
    format!(
        "POST /mcp HTTP/1.1\r\nHost: {to}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-06-18\r\nContent-Length: {length}\r\n{extra}\r\n"
    )
}

/// Where `needle` starts in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ips_differ_and_stay_loopback() {
        let a = fresh_ip();
        let b = fresh_ip();
        assert_ne!(a, b);
        assert!(a.is_loopback() && b.is_loopback());
    }

    #[test]
    fn dechunks() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
        assert_eq!(dechunk(b"0\r\n\r\n"), b"");
    }
}
