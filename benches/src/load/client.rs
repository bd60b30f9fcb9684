//! The load generator's MCP client: one hyper HTTP/1.1 connection per
//! session, `initialize`, `tools/call` and GET, and an SSE reader that
//! takes the creation time out of each event.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::upstream::TIME_KEY;

/// What went wrong for one client.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// The TCP connection could not be made.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// Where to.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// An HTTP error on an open connection.
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    /// An unexpected status.
    #[error("{what}: status {status}")]
    Status {
        /// Which request.
        what: &'static str,
        /// The status received.
        status: StatusCode,
    },
    /// `initialize` came back without a session id.
    #[error("initialize answered without Mcp-Session-Id")]
    NoSession,
    /// An answer without the request's id or text.
    #[error("{what}: the answer does not carry the request's id and text")]
    Mismatch {
        /// Which request.
        what: &'static str,
    },
    /// An answer neither JSON nor SSE.
    #[error("{what}: answered with content type {content_type:?}")]
    ContentType {
        /// Which request.
        what: &'static str,
        /// What came.
        content_type: Option<HeaderValue>,
    },
}

/// How a `tools/call` came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// `application/json`.
    Json,
    /// `text/event-stream`.
    Sse,
}

/// One client connection to a target's `/mcp`.
#[derive(Debug)]
pub(crate) struct Conn {
    send: SendRequest<Full<Bytes>>,
    host: HeaderValue,
    session: Option<HeaderValue>,
}

const PROTOCOL: HeaderValue = HeaderValue::from_static("2025-06-18");
const ACCEPT_BOTH: HeaderValue = HeaderValue::from_static("application/json, text/event-stream");

impl Conn {
    /// Opens a connection.
    pub(crate) async fn connect(addr: SocketAddr) -> Result<Self, ClientError> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        });
        Ok(Conn {
            send,
            host: HeaderValue::from_str(&addr.to_string()).expect("an address is a header value"),
            session: None,
        })
    }

    fn request(&self, method: Method, body: Bytes) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = http::Uri::from_static("/mcp");
        let h = req.headers_mut();
        h.insert(header::HOST, self.host.clone());
        h.insert("mcp-protocol-version", PROTOCOL);
        if let Some(s) = &self.session {
            h.insert("mcp-session-id", s.clone());
        }
        req
    }

    async fn post(&mut self, body: Bytes) -> Result<Response<Incoming>, ClientError> {
        let mut req = self.request(Method::POST, body);
        let h = req.headers_mut();
        h.insert(header::ACCEPT, ACCEPT_BOTH);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self.send.ready().await?;
        Ok(self.send.send_request(req).await?)
    }

    /// `initialize`; keeps the session id for later requests.
    pub(crate) async fn initialize(&mut self) -> Result<(), ClientError> {
        let resp = self
            .post(Bytes::from_static(
                br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"load","version":"0"}}}"#,
            ))
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(ClientError::Status {
                what: "initialize",
                status: resp.status(),
            });
        }
        let sid = resp
            .headers()
            .get("mcp-session-id")
            .cloned()
            .ok_or(ClientError::NoSession)?;
        resp.into_body().collect().await?;
        self.session = Some(sid);
        Ok(())
    }

    /// One `tools/call echo` of `text` (JSON-safe), answered as SSE by the
    /// upstream when `sse`; read to the end and checked to carry `id` and
    /// `text`. How it came back.
    pub(crate) async fn echo(
        &mut self,
        id: u64,
        text: &str,
        sse: bool,
    ) -> Result<Answer, ClientError> {
        const WHAT: &str = "tools/call echo";
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{text}","sse":{sse}}}}}}}"#
        );
        let resp = self.post(Bytes::from(body)).await?;
        if resp.status() != StatusCode::OK {
            return Err(ClientError::Status {
                what: WHAT,
                status: resp.status(),
            });
        }
        let content_type = resp.headers().get(header::CONTENT_TYPE);
        let answer = match content_type.map(HeaderValue::as_bytes) {
            Some(t) if t.starts_with(b"application/json") => Answer::Json,
            Some(t) if t.starts_with(b"text/event-stream") => Answer::Sse,
            _ => {
                return Err(ClientError::ContentType {
                    what: WHAT,
                    content_type: content_type.cloned(),
                });
            }
        };
        let body = resp.into_body().collect().await?.to_bytes();
        if !has_id(&body, id) || find(&body, text.as_bytes()).is_none() {
            return Err(ClientError::Mismatch { what: WHAT });
        }
        Ok(answer)
    }

    /// `tools/call stream`: the SSE response.
    pub(crate) async fn stream(
        &mut self,
        rate: u64,
        batch: usize,
        size: usize,
        ms: u64,
    ) -> Result<Response<Incoming>, ClientError> {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"stream","arguments":{{"rate":{rate},"batch":{batch},"size":{size},"ms":{ms}}}}}}}"#
        );
        let resp = self.post(Bytes::from(body)).await?;
        if resp.status() != StatusCode::OK {
            return Err(ClientError::Status {
                what: "tools/call stream",
                status: resp.status(),
            });
        }
        Ok(resp)
    }

    /// Ends the session (DELETE), as a client that is done does.
    pub(crate) async fn end(&mut self) -> Result<(), ClientError> {
        let req = self.request(Method::DELETE, Bytes::new());
        self.send.ready().await?;
        let resp = self.send.send_request(req).await?;
        let status = resp.status();
        resp.into_body().collect().await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(ClientError::Status {
                what: "DELETE",
                status,
            })
        }
    }

    /// A GET stream, open once its response head has arrived; its body
    /// and when the request was sent.
    pub(crate) async fn get_stream(&mut self) -> Result<(Incoming, Instant), ClientError> {
        let mut req = self.request(Method::GET, Bytes::new());
        req.headers_mut().insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        self.send.ready().await?;
        let sent = Instant::now();
        let resp = self.send.send_request(req).await?;
        if resp.status() != StatusCode::OK {
            return Err(ClientError::Status {
                what: "GET stream",
                status: resp.status(),
            });
        }
        Ok((resp.into_body(), sent))
    }
}

/// Finds the events in an SSE byte stream and the creation time each one
/// carries. Chunks may split events anywhere.
#[derive(Debug, Default)]
pub(crate) struct EventScanner {
    carry: Vec<u8>,
}

impl EventScanner {
    /// Feeds one chunk; calls `on_event(t)` for each complete event that
    /// carries a time `t`.
    pub(crate) fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(u64)) {
        if self.carry.is_empty() {
            let done = scan(chunk, &mut on_event);
            self.carry.extend_from_slice(&chunk[done..]);
        } else {
            self.carry.extend_from_slice(chunk);
            let done = scan(&self.carry, &mut on_event);
            self.carry.drain(..done);
        }
    }
}

/// Scans the complete events in `buf` (up to the last blank line); returns
/// how many bytes that was.
fn scan(buf: &[u8], on_event: &mut impl FnMut(u64)) -> usize {
    let mut pos = 0;
    let mut done = 0;
    while let Some(end) = find(&buf[pos..], b"\n\n") {
        let event = &buf[pos..pos + end];
        if let Some(at) = find(event, TIME_KEY) {
            let digits = &event[at + TIME_KEY.len()..];
            let mut t: u64 = 0;
            for &d in digits.iter().take_while(|d| d.is_ascii_digit()) {
                t = t.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
            }
            on_event(t);
        }
        pos += end + 2;
        done = pos;
    }
    done
}

/// Whether `body` has `"id":` followed (after any blanks) by `id`.
fn has_id(body: &[u8], id: u64) -> bool {
    let want = id.to_string();
    let mut rest = body;
    while let Some(at) = find(rest, b"\"id\":") {
        rest = &rest[at + 5..];
        let value = rest.trim_ascii_start();
        if value.starts_with(want.as_bytes())
            && !value.get(want.len()).is_some_and(|b| b.is_ascii_digit())
        {
            return true;
        }
    }
    false
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)
        {
            None => return None,
            Some(off) => {
                i += off;
                if &hay[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_finds_times_across_any_split() {
        let stream = b"id: 1\ndata: {\"t\":17}\n\n: keep-alive\n\nid: 2\ndata: {\"x\":1,\"t\":2048}\n\nid: 3\ndata: {\"result\":1}\n\nid: 4\ndata: {\"t\":9}\n\n";
        for split in 0..stream.len() {
            let mut s = EventScanner::default();
            let mut seen = Vec::new();
            s.feed(&stream[..split], |t| seen.push(t));
            s.feed(&stream[split..], |t| seen.push(t));
            assert_eq!(seen, vec![17, 2048, 9], "split at {split}");
            assert!(s.carry.is_empty());
        }
    }

    #[test]
    fn ids_are_found_whatever_the_spacing() {
        assert!(has_id(br#"{"jsonrpc":"2.0","id":12,"result":{}}"#, 12));
        assert!(has_id(br#"data: {"id": 12}"#, 12));
        assert!(!has_id(br#"{"id":123}"#, 12));
        assert!(!has_id(br#"{"x":12}"#, 12));
    }

    #[test]
    fn find_works() {
        assert_eq!(find(b"abc\n\nx", b"\n\n"), Some(3));
        assert_eq!(find(b"abc\n", b"\n\n"), None);
        assert_eq!(find(b"", b"\n\n"), None);
        assert_eq!(find(b"\"t\":1", TIME_KEY), Some(0));
    }
}
