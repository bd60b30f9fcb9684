//! Session limits through a real proxy: `max_sessions` is exact under
//! concurrency (and what it refuses is ended upstream), one client's
//! flood of initializes cannot lock another client out
//! (`max_session_creates_per_minute`), and sessions the idle sweeper
//! expires are ended upstream with a DELETE each.

mod support;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use shadowcat_proxy::test_util::TestUpstream;
use shadowcat_proxy::{ReverseProxy, ReverseProxyConfig};
use shadowcat_session::{IdleSweeper, MemoryStore, SessionStore, SweeperConfig};
use support::*;
use tokio::net::TcpSocket;

/// One HTTP/1.1 connection to the proxy from source address `from`.
async fn connect_from(from: IpAddr, proxy: SocketAddr) -> SendRequest<Full<Bytes>> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let stream = tokio::time::timeout(WAIT, socket.connect(proxy))
        .await
        .expect("connects in time")
        .expect("connects");
    let (send, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    send
}

/// An initialize on `conn`: status, `Retry-After`, body.
async fn init_on(
    conn: &mut SendRequest<Full<Bytes>>,
    proxy: SocketAddr,
) -> (StatusCode, Option<u64>, Bytes) {
    let req = Request::post(format!("http://{proxy}/mcp"))
        .header("host", proxy.to_string())
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(initialize("2025-06-18").to_string())))
        .unwrap();
    conn.ready().await.unwrap();
    let resp = tokio::time::timeout(WAIT, conn.send_request(req))
        .await
        .expect("answer in time")
        .expect("answer");
    let status = resp.status();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().expect("Retry-After is seconds"));
    let body = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    (status, retry, body)
}

fn rpc_error(body: &[u8]) -> (i64, String) {
    let v: Value = serde_json::from_slice(body).expect("a JSON-RPC error body");
    assert_eq!(v["jsonrpc"], "2.0");
    (
        v["error"]["code"].as_i64().unwrap(),
        v["error"]["message"].as_str().unwrap().to_owned(),
    )
}

fn upstream_initializes(up: &TestUpstream) -> usize {
    up.requests()
        .iter()
        .filter(|r| {
            r.method == http::Method::POST && r.body.windows(10).any(|w| w == b"initialize")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_sessions_is_exact_under_concurrency_and_refused_sessions_end_upstream() {
    const MAX: u64 = 50;
    const TRIES: usize = 64;
    let h = Arc::new(Harness::start_with(|c| c.limits.max_sessions = MAX).await);
    let tasks: Vec<_> = (0..TRIES)
        .map(|_| {
            let h = Arc::clone(&h);
            tokio::spawn(async move {
                let resp = h.post(&[], &initialize("2025-06-18")).await;
                let status = resp.status();
                let retry = resp.headers().get("retry-after").cloned();
                (status, retry, body_bytes(resp).await)
            })
        })
        .collect();
    let (mut ok, mut full) = (0, 0);
    for t in tasks {
        let (status, retry, body) = t.await.unwrap();
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                full += 1;
                assert!(retry.is_some(), "503 carries Retry-After");
                let (code, msg) = rpc_error(&body);
                assert_eq!(code, -32000);
                assert!(msg.contains("max_sessions"), "{msg}");
            }
            other => panic!("unexpected {other}: {body:?}"),
        }
    }
    assert_eq!((ok, full), (MAX as usize, TRIES - MAX as usize));
    assert_eq!(h.store.count().await.unwrap(), MAX);
    // Each session the upstream made but the proxy refused is DELETEd
    // there: the upstream keeps exactly the proxy's.
    let made = upstream_initializes(&h.upstream);
    assert!(
        made > MAX as usize,
        "some refused creates reached the store"
    );
    let refused = (made - MAX as usize) as u64;
    assert!(h.upstream.wait_deletes(refused, WAIT).await);
    assert_eq!(h.upstream.deletes(), refused);
    assert_eq!(h.upstream.live_sessions().len(), MAX as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_flood_of_initializes_does_not_lock_out_another() {
    const FLOOD: usize = 10_100;
    let h = Harness::start_with(|c| c.limits.max_sessions = 1_000).await;
    let per_minute = shadowcat_proxy::Limits::default().max_session_creates_per_minute as usize;
    let flooder: IpAddr = "127.0.0.1".parse().unwrap();
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    let mut conn = connect_from(flooder, h.proxy).await;
    let started = tokio::time::Instant::now();
    let (mut ok, mut limited) = (0, 0);
    for i in 0..FLOOD {
        let (status, retry, body) = init_on(&mut conn, h.proxy).await;
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                let secs = retry.expect("429 carries Retry-After");
                assert!((1..=60).contains(&secs), "Retry-After {secs}");
                if limited == 1 {
                    let (code, msg) = rpc_error(&body);
                    assert_eq!(code, -32000);
                    assert!(msg.contains("max_session_creates_per_minute"), "{msg}");
                }
            }
            other => panic!("initialize {i}: unexpected {other}: {body:?}"),
        }
    }
    // The burst, plus what refilled while the flood ran (one token every
    // 60 s / per_minute).
    let refilled = started.elapsed().as_millis() as usize * per_minute / 60_000;
    assert!(
        (per_minute..=per_minute + refilled + 1).contains(&ok),
        "{ok} created, {limited} limited, {refilled} refilled"
    );
    assert_eq!(ok + limited, FLOOD);
    // Another address still gets a session.
    let mut conn = connect_from(other, h.proxy).await;
    let (status, _, body) = init_on(&mut conn, h.proxy).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(h.store.count().await.unwrap(), ok as u64 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sessions_are_deleted_upstream_once_each() {
    const SESSIONS: usize = 200;
    let upstream = TestUpstream::start().await.unwrap();
    let mut config = ReverseProxyConfig::new(upstream.url());
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.upstream_bearer = Some("upstream-secret".into());
    let store = Arc::new(MemoryStore::new());
    let proxy = ReverseProxy::bind(config, Arc::clone(&store) as Arc<dyn SessionStore>, None)
        .await
        .unwrap();
    let addr = proxy.local_addr();
    let hook = proxy.expiry_hook();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(proxy.serve(async {
        let _ = stopped.await;
    }));

    let mut conn = connect_from("127.0.0.1".parse().unwrap(), addr).await;
    let mut sids = Vec::new();
    for _ in 0..SESSIONS {
        let req = Request::post(format!("http://{addr}/mcp"))
            .header("host", addr.to_string())
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(initialize("2025-06-18").to_string())))
            .unwrap();
        conn.ready().await.unwrap();
        let resp = conn.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        sids.push(
            resp.headers()["mcp-session-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
        resp.into_body().collect().await.unwrap();
    }
    let issued: HashSet<String> = upstream.live_sessions().into_iter().collect();
    assert_eq!(issued.len(), SESSIONS);

    let sweeper = IdleSweeper::start_with(
        Arc::clone(&store) as Arc<dyn SessionStore>,
        SweeperConfig {
            max_idle: Duration::from_millis(200),
            interval: Duration::from_millis(50),
        },
        Some(hook),
    );
    assert!(
        upstream.wait_deletes(SESSIONS as u64, WAIT).await,
        "{} of {SESSIONS} DELETEs",
        upstream.deletes()
    );
    sweeper.shutdown().await;
    assert_eq!(store.count().await.unwrap(), 0);
    let deletes: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.method == http::Method::DELETE)
        .collect();
    assert_eq!(deletes.len(), SESSIONS, "one DELETE per session, no more");
    let mut ended = HashSet::new();
    for d in &deletes {
        assert_eq!(d.headers["authorization"], "Bearer upstream-secret");
        assert_eq!(d.headers["mcp-protocol-version"], "2025-06-18");
        ended.insert(d.headers["mcp-session-id"].to_str().unwrap().to_owned());
    }
    assert_eq!(ended, issued, "each upstream session, by its own id");
    assert!(upstream.live_sessions().is_empty());
    // The proxy forgot them at once (no revalidation interval to wait).
    let req = Request::post(format!("http://{addr}/mcp"))
        .header("host", addr.to_string())
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-session-id", &sids[0])
        .header("mcp-protocol-version", "2025-06-18")
        .body(Full::new(Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
        )))
        .unwrap();
    conn.ready().await.unwrap();
    let resp = conn.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let _ = stop.send(());
    let _ = tokio::time::timeout(WAIT, served).await;
}

/// This process's running children whose command line names `program`.
fn children_running(program: &str) -> usize {
    let mut n = 0;
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for pid in list.split_whitespace() {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let running = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| !r.trim_start().starts_with('Z'))
            });
            if running && String::from_utf8_lossy(&cmd).contains(program) {
                n += 1;
            }
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_stdio_session_stops_its_server_at_once() {
    use shadowcat_proxy::StdioUpstream;
    use shadowcat_proxy::forward::ChildCommand;
    let fixture = stdio_fixture();
    let mut up = StdioUpstream::new(ChildCommand::new(fixture.clone()));
    // Long: only the expiry report can stop it in time.
    up.check_interval = Duration::from_secs(600);
    let mut config = ReverseProxyConfig::stdio(up);
    config.bind = "127.0.0.1:0".parse().unwrap();
    let store = Arc::new(MemoryStore::new());
    let proxy = ReverseProxy::bind(config, Arc::clone(&store) as Arc<dyn SessionStore>, None)
        .await
        .unwrap();
    let addr = proxy.local_addr();
    let hook = proxy.expiry_hook();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(proxy.serve(async {
        let _ = stopped.await;
    }));
    let mut conn = connect_from("127.0.0.1".parse().unwrap(), addr).await;
    let (status, _, body) = init_on(&mut conn, addr).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let name = fixture.file_name().unwrap().to_str().unwrap();
    assert_eq!(children_running(name), 1);
    let sweeper = IdleSweeper::start_with(
        Arc::clone(&store) as Arc<dyn SessionStore>,
        SweeperConfig {
            max_idle: Duration::from_millis(100),
            interval: Duration::from_millis(50),
        },
        Some(hook),
    );
    let since = tokio::time::Instant::now();
    while children_running(name) > 0 {
        assert!(
            since.elapsed() < WAIT,
            "the stdio server outlived its session"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sweeper.shutdown().await;
    assert_eq!(store.count().await.unwrap(), 0);
    let _ = stop.send(());
    let _ = tokio::time::timeout(WAIT, served).await;
}
