//! A stream no client holds (complete or not) is kept for the linger time, then
//! released without waiting for the session's next stream: a resume inside
//! the linger is served from the proxy's buffer, one after it goes to the
//! upstream.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;
use support::{Harness, body_bytes, call};

const LINGER: Duration = Duration::from_millis(300);

fn last_id(text: &str) -> String {
    text.lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .next_back()
        .expect("the stream carried ids")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_stream_is_released_after_its_linger_time() {
    let h = Harness::start_with(|c| c.limits.detached_linger = LINGER).await;
    let v = "2025-11-25";
    let sid = h.init(v).await;
    let hs = [
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", v),
    ];
    let resp = h.post(&hs, &call(2, "progress", json!({"count": 3}))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
    let last = last_id(&text);
    let done = Instant::now();

    // Inside the linger: from the buffer, the upstream is not asked.
    let resp = h.resume(&sid, v, Some(&last)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let _ = body_bytes(resp).await;
    assert!(done.elapsed() < LINGER, "the machine was too slow to check");
    assert_eq!(h.upstream.resumes(), 0, "served from the proxy's buffer");

    // After it, with no other stream opened in the session: released, so
    // the resume goes upstream. Bounded wait.
    tokio::time::sleep(LINGER * 2).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The head is enough: the upstream was asked or not.
        let resp = h.resume(&sid, v, Some(&last)).await;
        drop(resp);
        if h.upstream.resumes() > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the complete stream was never released"
        );
        // A resume that found it attached and left again: it lingers anew.
        tokio::time::sleep(LINGER * 2).await;
    }
}

/// Under many requests in one session only the newest complete streams are
/// kept: the oldest beyond `max_kept_complete_streams` is released at once,
/// long before its linger time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_newest_complete_streams_are_kept() {
    let h = Harness::start_with(|c| {
        c.limits.detached_linger = Duration::from_secs(600);
        c.limits.max_kept_complete_streams = 2;
    })
    .await;
    let v = "2025-11-25";
    let sid = h.init(v).await;
    let hs = [
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", v),
    ];
    let mut lasts = Vec::new();
    for id in 0..3 {
        let resp = h
            .post(&hs, &call(10 + id, "progress", json!({"count": 2})))
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let text = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
        lasts.push(last_id(&text));
    }
    // The newest two are still in the proxy's buffers.
    for last in &lasts[1..] {
        let resp = h.resume(&sid, v, Some(last)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let _ = body_bytes(resp).await;
    }
    assert_eq!(
        h.upstream.resumes(),
        0,
        "the newest two come from the buffer"
    );
    // The oldest was released: its resume goes to the upstream.
    let resp = h.resume(&sid, v, Some(&lasts[0])).await;
    drop(resp);
    assert_eq!(h.upstream.resumes(), 1, "the oldest was released");
}

/// A stream its client left before it completed lingers by the same
/// sweeper: a resume inside the linger is served from the buffer, and the
/// stream is released after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_stream_is_released_after_its_linger_time() {
    let h = Harness::start_with(|c| c.limits.detached_linger = LINGER).await;
    let v = "2025-11-25";
    let sid = h.init(v).await;
    let hs = [
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", v),
    ];
    let args = json!({"count": 20, "stall": 5});
    let resp = h.post(&hs, &call(2, "progress", args)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut text = String::new();
    while !text.contains("\"progress\":5,") {
        let chunk = support::next_chunk(&mut body).await.expect("events");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    drop(body);
    let left = Instant::now();
    let last = last_id(&text);

    // Inside the linger: from the buffer (the stalled upstream is not
    // asked), then the client leaves again.
    let resp = h.resume(&sid, v, Some(&last)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    drop(resp);
    assert!(left.elapsed() < LINGER, "the machine was too slow to check");
    assert_eq!(h.upstream.resumes(), 0, "served from the proxy's buffer");

    tokio::time::sleep(LINGER * 2).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = h.resume(&sid, v, Some(&last)).await;
        drop(resp);
        if h.upstream.resumes() > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the detached stream was never released"
        );
        tokio::time::sleep(LINGER * 2).await;
    }
    h.upstream.release();
}
