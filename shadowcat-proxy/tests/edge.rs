//! What a client or an upstream can do to the proxy's request path, on
//! loopback against the real proxy: slow request bodies (408), the exact
//! header limit (431), the connection cap (503), the drain deadline
//! (503), `Host` and every `Origin` checked, and upstream answers that
//! are not JSON-RPC (502). Each test fails if its rule is removed.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};
use shadowcat_proxy::{ReverseProxy, ReverseProxyConfig};
use shadowcat_session::{MemoryStore, SessionStore};
use support::metrics::{count, count_labeled};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A raw HTTP/1.1 answer.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The JSON-RPC error message; panics unless the body is one.
    fn rpc_error(&self) -> String {
        let v: Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"));
        assert_eq!(v["jsonrpc"], "2.0", "{v}");
        v["error"]["message"]
            .as_str()
            .expect("an error message")
            .to_owned()
    }
}

/// Reads one answer from `s` (head, then `content-length` bytes), within
/// [`WAIT`].
async fn read_answer(s: &mut TcpStream) -> Raw {
    tokio::time::timeout(WAIT, async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let end = loop {
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let n = s.read(&mut buf).await.expect("reads");
            assert!(
                n > 0,
                "closed before an answer: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8(got[..end].to_vec()).unwrap();
        let mut body = got[end + 4..].to_vec();
        let status = head[9..12].parse().unwrap();
        let mut raw = Raw {
            status,
            head,
            body: Vec::new(),
        };
        let len: usize = raw
            .header("content-length")
            .map_or(0, |v| v.parse().unwrap());
        while body.len() < len {
            let n = s.read(&mut buf).await.expect("reads");
            assert!(n > 0, "closed in the body");
            body.extend_from_slice(&buf[..n]);
        }
        raw.body = body;
        raw
    })
    .await
    .expect("an answer in time")
}

/// True when the peer closes `s` within [`WAIT`] (reading what is left).
async fn closes(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(WAIT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or(false)
}

fn post_head(addr: SocketAddr, extra: &str, len: usize) -> String {
    format!(
        "POST /mcp HTTP/1.1\r\nhost: {addr}\r\naccept: application/json, text/event-stream\r\ncontent-type: application/json\r\n{extra}content-length: {len}\r\n\r\n"
    )
}

#[tokio::test]
async fn a_body_that_stalls_gets_408() {
    let h = Harness::start_with(|c| {
        c.limits.body_idle_timeout = Duration::from_millis(200);
    })
    .await;
    let before = count_labeled(
        "shadowcat_request_body_timeouts_total",
        "limit=body_idle_timeout",
    );
    let mut s = TcpStream::connect(h.proxy).await.unwrap();
    s.write_all(post_head(h.proxy, "", 100).as_bytes())
        .await
        .unwrap();
    s.write_all(b"{\"jsonrpc\"").await.unwrap();
    let a = read_answer(&mut s).await;
    assert_eq!(a.status, 408, "{a:?}");
    assert_eq!(a.header("connection"), Some("close"));
    assert!(a.rpc_error().contains("body_idle_timeout"), "{a:?}");
    assert!(closes(&mut s).await, "the connection is closed");
    assert_eq!(
        count_labeled(
            "shadowcat_request_body_timeouts_total",
            "limit=body_idle_timeout"
        ),
        before + 1
    );
    assert!(h.upstream.requests().is_empty());
}

#[tokio::test]
async fn a_body_that_trickles_gets_408_at_the_total_timeout() {
    let h = Harness::start_with(|c| {
        c.limits.body_read_timeout = Duration::from_millis(300);
        c.limits.body_idle_timeout = Duration::from_secs(5);
    })
    .await;
    let mut s = TcpStream::connect(h.proxy).await.unwrap();
    s.write_all(post_head(h.proxy, "", 1000).as_bytes())
        .await
        .unwrap();
    // One byte every 20 ms: never idle, never complete. The proxy
    // answers long before 1,000 bytes (20 s).
    let mut sent = 0;
    let answer = loop {
        assert!(sent < 1000, "no answer while the body trickled");
        tokio::select! {
            a = read_answer(&mut s) => break a,
            () = tokio::time::sleep(Duration::from_millis(20)) => {
                if s.write_all(b" ").await.is_err() {
                    break read_answer(&mut s).await;
                }
                sent += 1;
            }
        }
    };
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(
        answer.rpc_error().contains("body_read_timeout"),
        "{answer:?}"
    );
    assert!(sent < 200, "answered after {sent} bytes");
}

/// A GET head of exactly `size` bytes as the limit counts them (it gets
/// 400 for its missing session when under the limit).
fn head_of(addr: SocketAddr, size: usize) -> Vec<u8> {
    let start = format!("GET /mcp HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n");
    let fixed = start.len() + "x-pad: \r\n".len() + 2;
    let mut head = start;
    head.push_str("x-pad: ");
    head.push_str(&"a".repeat(size - fixed));
    head.push_str("\r\n\r\n");
    assert_eq!(head.len(), size);
    head.into_bytes()
}

async fn send_head(addr: SocketAddr, head: &[u8], piece: usize) -> Raw {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    for chunk in head.chunks(piece) {
        if s.write_all(chunk).await.is_err() {
            break;
        }
        s.flush().await.unwrap();
        tokio::task::yield_now().await;
    }
    read_answer(&mut s).await
}

#[tokio::test]
async fn the_header_limit_is_exact_however_the_head_arrives() {
    const MAX: usize = 64 << 10;
    let h = Harness::start_with(|c| c.limits.max_header_bytes = MAX).await;
    for piece in [usize::MAX, 4096, 1000] {
        let under = send_head(h.proxy, &head_of(h.proxy, MAX), piece).await;
        assert_eq!(
            under.status, 400,
            "a head of exactly the limit is read ({piece})"
        );
        assert!(under.rpc_error().contains("Mcp-Session-Id"), "{under:?}");
        for over in [MAX + 1, MAX + 2048, 108_000] {
            let a = send_head(h.proxy, &head_of(h.proxy, over), piece).await;
            assert_eq!(a.status, 431, "{over} bytes in pieces of {piece}: {a:?}");
            if piece == usize::MAX || !a.body.is_empty() {
                // In one write the connection reads such heads whole
                // (its buffer bound is checked only between reads): the
                // proxy's own count refuses them, with a JSON-RPC error.
                // In pieces the buffer bound may refuse first (no body).
                assert!(a.rpc_error().contains("max_header_bytes"), "{a:?}");
                assert_eq!(a.header("connection"), Some("close"));
            }
        }
    }
}

#[tokio::test]
async fn connections_over_the_cap_get_503_and_are_closed() {
    let h = Harness::start_with(|c| c.limits.max_connections = 2).await;
    let refused = count("shadowcat_connections_refused_total");
    let get = format!(
        "GET /mcp HTTP/1.1\r\nhost: {}\r\naccept: text/event-stream\r\n\r\n",
        h.proxy
    );
    // Two connections, each proven accepted by an answer, kept open.
    let mut kept = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(h.proxy).await.unwrap();
        s.write_all(get.as_bytes()).await.unwrap();
        assert_eq!(read_answer(&mut s).await.status, 400);
        kept.push(s);
    }
    let mut third = TcpStream::connect(h.proxy).await.unwrap();
    third.write_all(get.as_bytes()).await.unwrap();
    let a = read_answer(&mut third).await;
    assert_eq!(a.status, 503, "{a:?}");
    assert_eq!(a.header("connection"), Some("close"));
    assert!(a.rpc_error().contains("max_connections"), "{a:?}");
    assert!(closes(&mut third).await);
    assert!(count("shadowcat_connections_refused_total") > refused);
    // A kept connection still works.
    kept[0].write_all(get.as_bytes()).await.unwrap();
    assert_eq!(read_answer(&mut kept[0]).await.status, 400);
    // Once one closes, a new connection is served again (the proxy sees
    // the close a moment later: bounded retries).
    drop(kept.pop());
    let mut served = false;
    for _ in 0..100 {
        let mut s = TcpStream::connect(h.proxy).await.unwrap();
        s.write_all(get.as_bytes()).await.unwrap();
        if read_answer(&mut s).await.status == 400 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "a slot freed by a closed connection is used again");
}

#[tokio::test]
async fn requests_in_flight_at_the_drain_deadline_get_503() {
    let upstream = shadowcat_proxy::test_util::TestUpstream::start()
        .await
        .unwrap();
    let mut config = ReverseProxyConfig::new(upstream.url());
    config.bind = "127.0.0.1:0".parse().unwrap();
    let store = Arc::new(MemoryStore::new());
    let proxy = ReverseProxy::bind(config, store as Arc<dyn SessionStore>, None)
        .await
        .unwrap();
    let addr = proxy.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(proxy.serve_with_drain(
        async {
            let _ = stopped.await;
        },
        Duration::from_millis(200),
    ));
    // A stateless call the upstream answers after 5 s.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"slow","arguments":{"ms":5000}}}).to_string();
    let req = post_head(addr, "mcp-protocol-version: 2026-07-28\r\n", body.len()) + &body;
    s.write_all(req.as_bytes()).await.unwrap();
    assert!(
        upstream.wait_requests(1, WAIT).await,
        "the call reached the upstream"
    );
    let _ = stop.send(());
    let a = read_answer(&mut s).await;
    assert_eq!(a.status, 503, "{a:?}");
    let v: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v["id"], 7, "the error answers the request: {v}");
    assert!(a.rpc_error().contains("shutting down"), "{a:?}");
    let report = tokio::time::timeout(WAIT, serving)
        .await
        .expect("the proxy stops")
        .unwrap()
        .unwrap();
    assert!(!report.drained);
}

#[tokio::test]
async fn host_and_every_origin_are_checked() {
    let h = Harness::start().await;
    for host in [
        "evil.example",
        "evil.example:8080",
        "localhost.evil.example",
    ] {
        let resp = h.post(&[("host", host)], &initialize("2025-06-18")).await;
        let msg = assert_rpc_error(resp, StatusCode::FORBIDDEN, -32000).await;
        assert!(msg.contains("--allowed-host"), "{msg}");
    }
    let resp = h
        .post(
            &[
                ("origin", "http://localhost:6274"),
                ("origin", "http://evil.example"),
            ],
            &initialize("2025-06-18"),
        )
        .await;
    let msg = assert_rpc_error(resp, StatusCode::FORBIDDEN, -32000).await;
    assert!(
        msg.contains("evil.example"),
        "the second Origin is checked: {msg}"
    );
    assert!(
        h.upstream.requests().is_empty(),
        "nothing reached the upstream"
    );
    let resp = h
        .post(&[("host", "localhost:1234")], &initialize("2025-06-18"))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);

    let h = Harness::start_with(|c| c.allowed_hosts = vec!["mcp.example".into()]).await;
    let resp = h
        .post(&[("host", "MCP.example:443")], &initialize("2025-06-18"))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = h
        .post(&[("host", "other.example")], &initialize("2025-06-18"))
        .await;
    assert_rpc_error(resp, StatusCode::FORBIDDEN, -32000).await;
}

/// A raw upstream: answers each request by a word in its body, counts
/// the connections it accepted.
async fn raw_upstream() -> (http::Uri, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                for _ in 0..1000 {
                    let end = loop {
                        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while got.len() < end + len {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = String::from_utf8_lossy(&got[end..end + len]).into_owned();
                    got.drain(..end + len);
                    let json = r#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
                    let (reply, close): (String, bool) = if body.contains("html500") {
                        let page = "<html><body>Internal Server Error</body></html>";
                        (
                            format!(
                                "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\r\n{page}",
                                page.len()
                            ),
                            false,
                        )
                    } else if body.contains("html200") {
                        let page = "<html>hello</html>";
                        (
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\r\n{page}",
                                page.len()
                            ),
                            false,
                        )
                    } else if body.contains("closecut") {
                        ("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"jsonrpc\":\"2.0\"".to_owned(), true)
                    } else if body.contains("cut") {
                        ("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"jsonrpc\":\"2.0\"".to_owned(), true)
                    } else if body.contains("big") {
                        let big = format!(
                            "{{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":\"{}\"}}",
                            "x".repeat(4096)
                        );
                        (
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{big}",
                                big.len()
                            ),
                            false,
                        )
                    } else if body.contains("notallowed") {
                        ("HTTP/1.1 405 Method Not Allowed\r\nallow: POST\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nno".to_owned(), false)
                    } else if body.contains("accepted") {
                        (
                            "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n".to_owned(),
                            false,
                        )
                    } else {
                        (
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
                                json.len()
                            ),
                            false,
                        )
                    };
                    if s.write_all(reply.as_bytes()).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}/mcp").parse().unwrap(), accepted)
}

/// A stateless (2026-07-28) POST carrying `word`: no session needed, the
/// upstream's answer is relayed.
async fn stateless(h: &Harness, word: &str) -> http::Response<hyper::body::Incoming> {
    let msg = json!({"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":word}});
    h.post(&[("mcp-protocol-version", "2026-07-28")], &msg)
        .await
}

#[tokio::test]
async fn upstream_answers_that_are_not_json_rpc_get_502() {
    let (uri, accepted) = raw_upstream().await;
    let h = Harness::start_with(|c| {
        c.upstream = uri;
        c.limits.max_response_bytes = 1024;
    })
    .await;

    let resp = stateless(&h, "html500").await;
    let msg = assert_rpc_error(resp, StatusCode::BAD_GATEWAY, -32603).await;
    assert!(
        msg.contains("500 Internal Server Error") && msg.contains("text/html"),
        "{msg}"
    );
    assert!(!msg.contains("<html>"), "the page never reaches the client");

    let resp = stateless(&h, "html200").await;
    let msg = assert_rpc_error(resp, StatusCode::BAD_GATEWAY, -32603).await;
    assert!(msg.contains("200 OK") && msg.contains("text/html"), "{msg}");

    let cut = count_labeled("shadowcat_upstream_errors_total", "kind=body_cut");
    for word in ["cut", "closecut"] {
        let resp = stateless(&h, word).await;
        let v = body_json(resp).await;
        assert_eq!(v["error"]["code"], -32603, "{word}: {v}");
        assert_eq!(v["id"], 5);
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("cut short"),
            "{v}"
        );
    }
    assert_eq!(
        count_labeled("shadowcat_upstream_errors_total", "kind=body_cut"),
        cut + 2
    );

    let resp = stateless(&h, "big").await;
    let msg = assert_rpc_error(resp, StatusCode::BAD_GATEWAY, -32603).await;
    assert!(msg.contains("max_response_bytes"), "{msg}");

    let resp = stateless(&h, "notallowed").await;
    assert_eq!(resp.headers()["allow"], "POST");
    assert_rpc_error(resp, StatusCode::METHOD_NOT_ALLOWED, -32601).await;

    let resp = stateless(&h, "accepted").await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert!(body_bytes(resp).await.is_empty());

    // Initialize answered with HTML: 502 and no session.
    let init = initialize("2025-06-18")
        .to_string()
        .replace("\"test\"", "\"html200\"");
    let resp = h.send("POST", "/mcp", &POST_HEADERS, init).await;
    assert_rpc_error(resp, StatusCode::BAD_GATEWAY, -32603).await;
    assert_eq!(h.store.count().await.unwrap(), 0);

    // JSON answers read to their end: the connection goes back to the
    // pool and is reused.
    let before = accepted.load(Ordering::SeqCst);
    for _ in 0..5 {
        let resp = stateless(&h, "ok").await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(body_json(resp).await["result"], json!({}));
    }
    assert!(
        accepted.load(Ordering::SeqCst) - before <= 1,
        "5 JSON answers, {} new upstream connections",
        accepted.load(Ordering::SeqCst) - before
    );
}
