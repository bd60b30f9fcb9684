//! The load generator's MCP client: one hyper HTTP/1.1 connection per
//! session, `initialize`, `tools/call` and GET, and an SSE reader that
//! takes the creation time out of each event.

use std::net::SocketAddr;

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
    /// A stream ended before its first event.
    #[error("stream ended before its first event")]
    NoEvent,
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

    /// One `tools/call echo`, read to the end; the response's length.
    pub(crate) async fn echo(&mut self, id: u64) -> Result<usize, ClientError> {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"hello"}}}}}}"#
        );
        let resp = self.post(Bytes::from(body)).await?;
        if resp.status() != StatusCode::OK {
            return Err(ClientError::Status {
                what: "tools/call echo",
                status: resp.status(),
            });
        }
        Ok(resp.into_body().collect().await?.to_bytes().len())
    }

    /// `tools/call stream`: the SSE response.
    pub(crate) async fn stream(
        &mut self,
        rate: u64,
        batch: usize,
        ms: u64,
    ) -> Result<Response<Incoming>, ClientError> {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"stream","arguments":{{"rate":{rate},"batch":{batch},"ms":{ms}}}}}}}"#
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

    /// A GET stream, open once its first event has arrived.
    pub(crate) async fn get_stream(&mut self) -> Result<Incoming, ClientError> {
        let mut req = self.request(Method::GET, Bytes::new());
        req.headers_mut().insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        self.send.ready().await?;
        let resp = self.send.send_request(req).await?;
        if resp.status() != StatusCode::OK {
            return Err(ClientError::Status {
                what: "GET stream",
                status: resp.status(),
            });
        }
        let mut body = resp.into_body();
        loop {
            match body.frame().await {
                Some(Ok(f)) if f.data_ref().is_some_and(|d| !d.is_empty()) => return Ok(body),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Err(ClientError::NoEvent),
            }
        }
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
    fn find_works() {
        assert_eq!(find(b"abc\n\nx", b"\n\n"), Some(3));
        assert_eq!(find(b"abc\n", b"\n\n"), None);
        assert_eq!(find(b"", b"\n\n"), None);
        assert_eq!(find(b"\"t\":1", TIME_KEY), Some(0));
    }
}
