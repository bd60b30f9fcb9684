//! Sessions end on every instance: through a real proxy, a session the
//! idle sweeper expired or another instance deleted from the shared store
//! gets 404 within the revalidation interval, its open streams on this
//! instance end without waiting for a request, and a stdio session's
//! server is stopped.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use shadowcat_proxy::StdioUpstream;
use shadowcat_proxy::forward::ChildCommand;
use shadowcat_session::{IdleSweeper, SessionId, SessionStore, SweeperConfig};
use support::*;
use tokio::time::Instant;

/// The revalidation interval these tests configure.
const REVALIDATE: Duration = Duration::from_millis(300);
/// Room for a loaded machine on top of an interval.
const SLACK: Duration = Duration::from_secs(2);

fn list(id: u64) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/list"})
}

async fn start() -> Harness {
    Harness::start_with(|c| {
        c.limits.session_revalidate_interval = REVALIDATE;
        // Long: the 404 must come from the store, not the idle drop.
        c.limits.session_idle_timeout = Duration::from_secs(600);
    })
    .await
}

/// `tools/list` in session `sid`: the status, after reading the body (a
/// 404 must carry the usual JSON-RPC error).
async fn tools_list(h: &Harness, sid: &str, id: u64) -> http::StatusCode {
    let resp = h
        .post(
            &[
                ("mcp-session-id", sid),
                ("mcp-protocol-version", "2025-06-18"),
            ],
            &list(id),
        )
        .await;
    let status = resp.status();
    if status == http::StatusCode::NOT_FOUND {
        let msg = assert_rpc_error(resp, status, -32000).await;
        assert!(msg.contains("initialize"), "{msg}");
    } else {
        let _ = body_bytes(resp).await;
    }
    status
}

/// Sends `tools/list` until it gets 404; returns how long that took
/// after `since`. Fails past `since + REVALIDATE + SLACK`.
async fn wait_404(h: &Harness, sid: &str, since: Instant) -> Duration {
    let mut id = 10;
    loop {
        let status = tools_list(h, sid, id).await;
        if status == http::StatusCode::NOT_FOUND {
            return since.elapsed();
        }
        assert_eq!(status, http::StatusCode::OK);
        assert!(
            since.elapsed() < REVALIDATE + SLACK,
            "still served {:?} after the session left the store",
            since.elapsed()
        );
        id += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until the store no longer has `sid`.
async fn wait_gone_from_store(store: &dyn SessionStore, sid: &str) -> Instant {
    let id = SessionId::parse(sid).unwrap();
    let deadline = Instant::now() + WAIT;
    while store.get(&id).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the store still has {sid}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Instant::now()
}

#[tokio::test]
async fn a_session_the_idle_sweeper_expired_gets_404() {
    let h = start().await;
    let sid = h.init("2025-06-18").await;
    assert_eq!(tools_list(&h, &sid, 2).await, http::StatusCode::OK);
    let sweeper = IdleSweeper::start(
        Arc::clone(&h.store) as Arc<dyn SessionStore>,
        SweeperConfig {
            max_idle: Duration::from_millis(300),
            interval: Duration::from_millis(50),
        },
    );
    let gone = wait_gone_from_store(h.store.as_ref(), &sid).await;
    let took = wait_404(&h, &sid, gone).await;
    eprintln!("expired by the sweeper: 404 after {took:?}");
    sweeper.shutdown().await;
    h.stop().await;
}

#[tokio::test]
async fn a_session_deleted_behind_the_proxys_back_gets_404() {
    let h = start().await;
    let sid = h.init("2025-06-18").await;
    assert_eq!(tools_list(&h, &sid, 2).await, http::StatusCode::OK);
    // What another instance's DELETE does to the shared store.
    let deleted = SessionId::parse(&sid).unwrap();
    assert!(h.store.delete(&deleted).await.unwrap());
    let took = wait_404(&h, &sid, Instant::now()).await;
    eprintln!("deleted elsewhere: 404 after {took:?}");
    h.stop().await;
}

#[tokio::test]
async fn the_streams_of_a_deleted_session_end_without_a_request() {
    let h = start().await;
    let sid = h.init("2025-11-25").await;
    let resp = h
        .send(
            "GET",
            "/mcp",
            &[
                ("accept", "text/event-stream"),
                ("mcp-session-id", &sid),
                ("mcp-protocol-version", "2025-11-25"),
            ],
            "",
        )
        .await;
    assert_eq!(resp.status(), http::StatusCode::OK);
    let mut body = resp.into_body();
    assert!(
        next_chunk(&mut body).await.is_some(),
        "the GET stream opens with its priming event"
    );
    let deleted = SessionId::parse(&sid).unwrap();
    assert!(h.store.delete(&deleted).await.unwrap());
    let since = Instant::now();
    // No request from here on: only the proxy's cache sweep can end it.
    while let Some(chunk) = next_chunk(&mut body).await {
        assert!(
            since.elapsed() < REVALIDATE + SLACK,
            "the stream still runs {:?} after its session was deleted: {chunk:?}",
            since.elapsed()
        );
    }
    let took = since.elapsed();
    eprintln!("deleted elsewhere: its GET stream ended after {took:?}");
    assert!(took < REVALIDATE + SLACK, "ended after {took:?}");
    assert_eq!(tools_list(&h, &sid, 3).await, http::StatusCode::NOT_FOUND);
    h.stop().await;
}

/// This process's running children that run `program`.
fn children_running(program: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for pid in list
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            // A zombie has exited: only a running process counts.
            let running = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| !r.trim_start().starts_with('Z'))
            });
            if running && String::from_utf8_lossy(&cmd).contains(program) {
                out.push(pid);
            }
        }
    }
    out
}

#[tokio::test]
async fn a_deleted_stdio_session_stops_its_server() {
    let fixture = stdio_fixture();
    let h = Harness::start_with(|c| {
        c.limits.session_revalidate_interval = REVALIDATE;
        let mut up = StdioUpstream::new(ChildCommand::new(fixture.clone()));
        up.check_interval = Duration::from_millis(100);
        c.upstream_cmd = Some(up);
    })
    .await;
    let sid = h.init("2025-06-18").await;
    let name = fixture.file_name().unwrap().to_str().unwrap();
    let pids = children_running(name);
    assert_eq!(pids.len(), 1, "one server for the session: {pids:?}");
    let deleted = SessionId::parse(&sid).unwrap();
    assert!(h.store.delete(&deleted).await.unwrap());
    let since = Instant::now();
    while !children_running(name).is_empty() {
        assert!(
            since.elapsed() < WAIT,
            "the stdio server outlived its deleted session"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "deleted elsewhere: its stdio server stopped after {:?}",
        since.elapsed()
    );
    assert_eq!(tools_list(&h, &sid, 2).await, http::StatusCode::NOT_FOUND);
    h.stop().await;
}
