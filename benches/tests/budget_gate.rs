//! Deterministic gate (run by `cargo xtask gates`): whatever the number of
//! dropped streams, the buffered bytes the proxy accounts never exceed its
//! budget (`max_buffered_bytes`) once a batch settled.
//!
//! A real proxy on loopback in front of the test upstream; rounds of 8, 32
//! and 96 streams of about 4 MiB each are opened (16 per session) and
//! their clients drop after the first bytes, so the detached readers go on
//! reading upstream: several times the budget in all. The gate checks the
//! highest settled total the budget saw, a count, not a time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use shadowcat_proxy::test_util::{BudgetProbe, TestUpstream};
use shadowcat_proxy::{ReplayLimits, ReverseProxy, ReverseProxyConfig};
use shadowcat_session::MemoryStore;

const BUDGET: usize = 4 << 20;
const PER_SESSION: usize = 16;
const WAIT: Duration = Duration::from_secs(30);
const V: &str = "2025-11-25";

/// Sends one POST over a new connection and reads the response head (and
/// whatever body bytes came with it). Returns the connection and the head.
fn post(proxy: SocketAddr, sid: Option<&str>, body: &str) -> (TcpStream, String) {
    let mut conn = TcpStream::connect(proxy).expect("connect to the proxy");
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let sid = sid.map_or(String::new(), |s| format!("mcp-session-id: {s}\r\n"));
    let req = format!(
        "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         accept: application/json, text/event-stream\r\nmcp-protocol-version: {V}\r\n{sid}\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).expect("the proxy answers");
        assert!(n > 0, "the proxy closed before answering");
        head.extend_from_slice(&buf[..n]);
    }
    (conn, String::from_utf8_lossy(&head).into_owned())
}

fn initialize(proxy: SocketAddr) -> String {
    let (_conn, head) = post(
        proxy,
        None,
        &format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"{V}","capabilities":{{}},"clientInfo":{{"name":"gate","version":"0"}}}}}}"#
        ),
    );
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("mcp-session-id")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("initialize answered without a session id: {head}"))
}

/// Opens `n` streams and drops their clients after the first bytes.
fn drop_streams(proxy: SocketAddr, n: usize, round: usize) {
    let mut sid = String::new();
    for i in 0..n {
        if i % PER_SESSION == 0 {
            sid = initialize(proxy);
        }
        let call = format!(
            r#"{{"jsonrpc":"2.0","id":{},"method":"tools/call","params":{{"name":"progress","arguments":{{"count":20000}}}}}}"#,
            round * 1000 + i
        );
        let (conn, head) = post(proxy, Some(&sid), &call);
        assert!(head.starts_with("HTTP/1.1 200"), "stream {i}: {head}");
        drop(conn);
    }
}

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn dropped_streams_stay_within_the_buffer_budget() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (proxy, budget, _upstream) = rt.block_on(async {
        let upstream = TestUpstream::start().await.expect("test upstream starts");
        let mut config = ReverseProxyConfig::new(upstream.url());
        config.bind = "127.0.0.1:0".parse().unwrap();
        config.limits.max_buffered_bytes = BUDGET;
        config.limits.replay = ReplayLimits {
            max_events: 8192,
            max_bytes: 1 << 20,
            retain_bytes: 512 << 10,
        };
        config.limits.detached_linger = Duration::from_secs(600);
        config.limits.max_streams_per_session = PER_SESSION as u32;
        let store = std::sync::Arc::new(MemoryStore::new());
        let proxy = ReverseProxy::bind(config, store, None)
            .await
            .expect("proxy binds");
        let addr = proxy.local_addr();
        let budget: BudgetProbe = proxy.budget_probe();
        tokio::spawn(proxy.serve(std::future::pending()));
        (addr, budget, upstream)
    });
    for (round, n) in [8usize, 32, 96].into_iter().enumerate() {
        let before = budget.releases();
        drop_streams(proxy, n, round);
        // 4 MiB per stream to read, 1 MiB per stream held at most: even 8
        // streams need releases to stay within 4 MiB.
        wait_until("the budget released detached streams", || {
            budget.releases() > before && budget.used() >= BUDGET / 2
        });
        eprintln!(
            "{n} dropped streams: settled peak {} bytes of {BUDGET}; {} released in all",
            budget.settled_peak(),
            budget.releases()
        );
        assert!(
            budget.settled_peak() <= BUDGET,
            "with {n} dropped streams the proxy held {} buffered bytes, over its budget of {BUDGET}",
            budget.settled_peak()
        );
    }
    drop(rt);
}
