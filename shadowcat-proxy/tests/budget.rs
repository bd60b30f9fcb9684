//! The buffer budget (`max_buffered_bytes`) and the live-stream limit under
//! dropped and stalled clients:
//! - streams whose clients dropped keep reading upstream into their
//!   buffers, but the total stays within the budget (the oldest are
//!   released) and they no longer count as the session's live streams;
//! - live streams that fill the budget are never cut: new streams get 503
//!   until room is made.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use hyper::body::Incoming;
use serde_json::json;
use shadowcat_proxy::ReplayLimits;
use support::{Harness, WAIT, body_bytes, body_json, call, metrics, next_chunk};

const BUDGET: usize = 4 << 20;
const V: &str = "2025-11-25";

async fn harness() -> Harness {
    metrics::counts();
    Harness::start_with(|c| {
        c.limits.max_buffered_bytes = BUDGET;
        c.limits.replay = ReplayLimits {
            max_events: 8192,
            max_bytes: 1 << 20,
            retain_bytes: 512 << 10,
        };
        c.limits.detached_linger = Duration::from_secs(600);
        c.limits.max_streams_per_session = 16;
    })
    .await
}

fn session_headers(sid: &str) -> [(&str, &str); 2] {
    [("mcp-session-id", sid), ("mcp-protocol-version", V)]
}

/// Reads `body` until at least `bytes` came; returns how many did.
async fn read_at_least(body: &mut Incoming, bytes: usize) -> usize {
    let mut got = 0;
    while got < bytes {
        match next_chunk(body).await {
            Some(chunk) => got += chunk.len(),
            None => panic!("the stream ended after {got} bytes, before {bytes}"),
        }
    }
    got
}

/// Waits (bounded) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_streams_neither_hold_the_session_nor_exceed_the_budget() {
    let h = harness().await;
    let releases_before = metrics::count("shadowcat_budget_releases_total");
    let sid = h.init(V).await;
    // 16 streams (the session's limit) of about 4 MiB each, dropped after
    // their first bytes: 64 MiB to read against a 4 MiB budget.
    for i in 0..16 {
        let resp = h
            .post(
                &session_headers(&sid),
                &call(10 + i, "progress", json!({"count": 20_000})),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        read_at_least(&mut body, 1).await;
    }
    until("the budget released a detached stream", || {
        metrics::count("shadowcat_budget_releases_total") > releases_before
    })
    .await;
    assert!(
        h.budget.settled_peak() <= BUDGET,
        "buffered {} bytes, over the budget of {BUDGET}",
        h.budget.settled_peak()
    );

    // The session is not locked out: the dropped streams are not live.
    let resp = h
        .post(
            &session_headers(&sid),
            &json!({"jsonrpc":"2.0","id":99,"method":"tools/list"}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK, "tools/list after the drops");
    let _ = body_bytes(resp).await;
    // 16 live streams again (each held after its first event).
    let mut live = Vec::new();
    for i in 0..16 {
        let resp = h
            .post(
                &session_headers(&sid),
                &call(100 + i, "progress", json!({"count": 3, "gated": true})),
            )
            .await;
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "new stream {i} in the session"
        );
        let mut body = resp.into_body();
        read_at_least(&mut body, 1).await;
        live.push(body);
    }
    let resp = h
        .post(
            &session_headers(&sid),
            &call(200, "progress", json!({"count": 3})),
        )
        .await;
    assert_eq!(
        resp.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the 17th live stream is over the session's limit"
    );
    let _ = body_bytes(resp).await;
    for _ in 0..16 {
        h.upstream.release();
    }
    drop(live);
    assert!(h.budget.settled_peak() <= BUDGET);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_streams_are_never_cut_for_the_budget_new_ones_wait() {
    let h = harness().await;
    let sid = h.init(V).await;
    // Clients each read 800 KiB and then stop reading: each stream
    // retains 512 KiB written, until the budget is full and a new stream
    // is refused.
    let mut held = Vec::new();
    let refused = loop {
        let i = held.len() as u64;
        assert!(i < 16, "the budget never filled");
        let resp = h
            .post(
                &session_headers(&sid),
                &call(10 + i, "progress", json!({"count": 100_000})),
            )
            .await;
        if resp.status() != StatusCode::OK {
            break resp;
        }
        let mut body = resp.into_body();
        read_at_least(&mut body, 800 << 10).await;
        held.push(body);
    };
    assert!(held.len() >= 4, "only {} streams fit", held.len());
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let err = body_json(refused).await;
    let msg = err["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("max_buffered_bytes"), "{err}");
    assert!(
        err["id"].is_number(),
        "the error answers the request: {err}"
    );
    assert!(h.budget.used() >= BUDGET);

    // The live streams go on: every one of them delivers more.
    for body in &mut held {
        read_at_least(body, 256 << 10).await;
    }

    // Their clients go: the streams are detached, and the next stream
    // makes room by releasing them.
    // The proxy sees the connections close on its own time: until then
    // they are live and the budget still full (bounded retry).
    drop(held);
    let deadline = Instant::now() + WAIT;
    let resp = loop {
        let resp = h
            .post(
                &session_headers(&sid),
                &call(51, "progress", json!({"count": 3})),
            )
            .await;
        if resp.status() != StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
            break resp;
        }
        let _ = body_bytes(resp).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(resp.status(), StatusCode::OK);
    let text = body_bytes(resp).await;
    assert!(
        String::from_utf8_lossy(&text).contains("done"),
        "the new stream completes"
    );
}
