//! Deterministic gate (run by `cargo xtask gates`): in steady state a
//! request opens no upstream connection. A real proxy on loopback in front
//! of the test upstream; 8 sessions, each on its own keep-alive client
//! connection, warm up with a few JSON-answered (`echo`) and SSE-answered
//! (`progress`) calls, then send 1,000 more. The upstream counts the TCP
//! connections it accepted: a count, not a time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use shadowcat_proxy::test_util::TestUpstream;
use shadowcat_proxy::{ReverseProxy, ReverseProxyConfig};
use shadowcat_session::MemoryStore;

const SESSIONS: usize = 8;
const WARM_UP: usize = 10;
const STEADY: usize = 1000;
const V: &str = "2025-06-18";

/// One client: a keep-alive connection to the proxy.
struct Client {
    conn: TcpStream,
    reader: BufReader<TcpStream>,
    sid: Option<String>,
}

impl Client {
    fn new(proxy: SocketAddr) -> Self {
        let conn = TcpStream::connect(proxy).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let reader = BufReader::new(conn.try_clone().expect("a second handle"));
        Client {
            conn,
            reader,
            sid: None,
        }
    }

    /// Sends a POST and reads the whole answer (chunked or sized); returns
    /// the head.
    fn post(&mut self, body: &str) -> String {
        let sid = self
            .sid
            .as_deref()
            .map_or(String::new(), |s| format!("mcp-session-id: {s}\r\n"));
        let req = format!(
            "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
             accept: application/json, text/event-stream\r\nmcp-protocol-version: {V}\r\n{sid}\
             content-length: {}\r\n\r\n{body}",
            body.len()
        );
        self.conn.write_all(req.as_bytes()).unwrap();
        let mut head = String::new();
        while !head.ends_with("\r\n\r\n") {
            let n = self.reader.read_line(&mut head).expect("an answer");
            assert!(n > 0, "the proxy closed the connection");
        }
        let lower = head.to_ascii_lowercase();
        if let Some(len) = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
        {
            let mut body = vec![0u8; len.trim().parse().unwrap()];
            self.reader.read_exact(&mut body).unwrap();
        } else {
            assert!(lower.contains("transfer-encoding: chunked"), "{head}");
            self.read_chunked();
        }
        head
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("a line");
        assert!(n > 0, "cut mid-answer");
        line.trim_end().to_owned()
    }

    fn read_chunked(&mut self) {
        loop {
            let size = usize::from_str_radix(self.line().trim(), 16).expect("a chunk size");
            let mut data = vec![0u8; size + 2];
            self.reader.read_exact(&mut data).unwrap();
            if size == 0 {
                return;
            }
        }
    }
}

fn call(id: usize, tool: &str, args: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{args}}}}}"#
    )
}

#[test]
fn steady_requests_open_no_upstream_connection() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (proxy, upstream) = rt.block_on(async {
        let upstream = TestUpstream::start().await.expect("test upstream starts");
        let mut config = ReverseProxyConfig::new(upstream.url());
        config.bind = "127.0.0.1:0".parse().unwrap();
        let proxy = ReverseProxy::bind(config, Arc::new(MemoryStore::new()), None)
            .await
            .expect("proxy binds");
        let addr = proxy.local_addr();
        tokio::spawn(proxy.serve(std::future::pending()));
        (addr, upstream)
    });
    let init = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"{V}","capabilities":{{}},"clientInfo":{{"name":"gate","version":"0"}}}}}}"#
    );
    let mut clients: Vec<Client> = (0..SESSIONS).map(|_| Client::new(proxy)).collect();
    for c in &mut clients {
        let head = c.post(&init);
        c.sid = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("mcp-session-id")
                .then(|| v.trim().to_owned())
        });
        assert!(c.sid.is_some(), "{head}");
    }
    // One request per client at a time, clients one after another: the
    // pool needs at most one connection.
    let mut id = 10;
    let mut round = |n: usize, clients: &mut Vec<Client>| {
        for i in 0..n {
            let c = &mut clients[i % SESSIONS];
            id += 1;
            let body = if i % 2 == 0 {
                call(id, "echo", r#"{"text":"hi"}"#)
            } else {
                call(id, "progress", r#"{"count":2}"#)
            };
            let head = c.post(&body);
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        }
    };
    round(WARM_UP * SESSIONS, &mut clients);
    let warm = upstream.connections();
    round(STEADY, &mut clients);
    let opened = upstream.connections() - warm;
    eprintln!(
        "{STEADY} requests (JSON and SSE answers) in steady state opened {opened} upstream connections ({warm} while warming up)"
    );
    assert_eq!(
        opened, 0,
        "{STEADY} steady requests opened {opened} upstream connections; the pool should reuse them"
    );
    drop(clients);
    drop(rt);
}
