//! Legacy HTTP+SSE (2024-11-05) clients in front of a Streamable HTTP
//! upstream: the endpoint event, POSTs answered 202 with their answers on
//! the stream, sealed ids that name the legacy session, exact resume with
//! `Last-Event-ID`, refusals, and the session's end with its stream.

mod support;

use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};
use support::sse::{Block, SseClient};
use support::{Harness, WAIT, assert_rpc_error, body_bytes, call, initialize};

/// Opens `/sse` (resuming after `last` when given); returns the stream
/// and the POST path its endpoint event names.
async fn open(h: &Harness, last: Option<&str>) -> (SseClient, String) {
    let mut headers = vec![("accept", "text/event-stream")];
    if let Some(last) = last {
        headers.push(("last-event-id", last));
    }
    let resp = h.send("GET", "/sse", &headers, "").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    let mut sse = SseClient::new(resp.into_body());
    let first = sse.next().await.unwrap().expect("the endpoint event");
    assert!(
        first.id.is_none(),
        "the endpoint event has no id: {first:?}"
    );
    let endpoint = first.data.expect("the endpoint event has data");
    assert!(
        endpoint.starts_with("/messages?sessionId="),
        "endpoint {endpoint:?}"
    );
    (sse, endpoint)
}

async fn post(h: &Harness, endpoint: &str, body: &Value) -> http::Response<hyper::body::Incoming> {
    h.send(
        "POST",
        endpoint,
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await
}

async fn post_ok(h: &Harness, endpoint: &str, body: &Value) {
    let resp = post(h, endpoint, body).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let _ = body_bytes(resp).await;
}

/// The next message on the stream (its id and JSON), past the log
/// messages the test upstream sends on its GET stream (which reach the
/// legacy client too).
async fn message(sse: &mut SseClient) -> (String, Value) {
    loop {
        let Block { id, data, .. } = sse.next().await.unwrap().expect("a message");
        if let Some(data) = data.filter(|d| !d.is_empty()) {
            let v: Value = serde_json::from_str(&data).unwrap();
            let id = id.expect("every message has an id");
            if v["method"] == "notifications/message" {
                continue;
            }
            return (id, v);
        }
    }
}

/// Initializes a legacy session; returns its stream and endpoint.
async fn legacy_session(h: &Harness) -> (SseClient, String) {
    let (mut sse, endpoint) = open(h, None).await;
    post_ok(h, &endpoint, &initialize("2024-11-05")).await;
    let (id, init) = message(&mut sse).await;
    assert_eq!(init["id"], 1);
    assert!(init["result"]["serverInfo"].is_object(), "{init}");
    let legacy_id = endpoint.rsplit('=').next().unwrap();
    assert!(
        id.ends_with(&format!(".{legacy_id}")),
        "the id {id} carries the legacy id {legacy_id}"
    );
    post_ok(
        h,
        &endpoint,
        &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    )
    .await;
    (sse, endpoint)
}

#[tokio::test]
async fn requests_are_answered_on_the_stream_and_a_reconnect_resumes_exactly() {
    let h = Harness::start().await;
    let (mut sse, endpoint) = legacy_session(&h).await;
    post_ok(&h, &endpoint, &call(2, "echo", json!({"text": "hi"}))).await;
    let (_, echoed) = message(&mut sse).await;
    assert_eq!(echoed["id"], 2, "{echoed}");

    post_ok(&h, &endpoint, &call(3, "progress", json!({"count": 6}))).await;
    let mut ids = Vec::new();
    let mut progress = Vec::new();
    for _ in 0..3 {
        let (id, m) = message(&mut sse).await;
        assert_eq!(m["method"], "notifications/progress", "{m}");
        progress.push(m["params"]["progress"].as_u64().unwrap());
        ids.push(id);
    }
    // The client's connection drops; it comes back with its last id.
    drop(sse);
    let (mut sse, again) = open(&h, ids.last().map(String::as_str)).await;
    assert_eq!(again, endpoint, "the reconnect names the same endpoint");
    loop {
        let (id, m) = message(&mut sse).await;
        assert!(!ids.contains(&id), "event {id} came twice");
        ids.push(id);
        if m["id"] == 3 {
            assert!(m["result"].is_object(), "{m}");
            break;
        }
        progress.push(m["params"]["progress"].as_u64().unwrap());
    }
    assert_eq!(progress, [1, 2, 3, 4, 5, 6], "every event once, in order");
}

#[tokio::test]
async fn forged_or_unknown_ids_and_bad_posts_are_refused() {
    let h = Harness::start().await;
    let (mut sse, endpoint) = legacy_session(&h).await;
    post_ok(&h, &endpoint, &call(2, "echo", json!({"text": "x"}))).await;
    let (id, _) = message(&mut sse).await;

    // Another tag: not issued in this session.
    let mut parts: Vec<String> = id.split('.').map(str::to_owned).collect();
    parts[2] = if parts[2].starts_with('0') {
        format!("1{}", &parts[2][1..])
    } else {
        format!("0{}", &parts[2][1..])
    };
    let forged = parts.join(".");
    let resp = h
        .send(
            "GET",
            "/sse",
            &[("accept", "text/event-stream"), ("last-event-id", &forged)],
            "",
        )
        .await;
    assert_rpc_error(resp, StatusCode::BAD_REQUEST, -32600).await;
    // An id naming no legacy session here.
    parts[3] = "0".repeat(parts[3].len());
    let unknown = parts.join(".");
    let resp = h
        .send(
            "GET",
            "/sse",
            &[("accept", "text/event-stream"), ("last-event-id", &unknown)],
            "",
        )
        .await;
    assert_rpc_error(resp, StatusCode::NOT_FOUND, -32000).await;

    let resp = post(&h, "/messages", &call(3, "echo", json!({}))).await;
    assert_rpc_error(resp, StatusCode::BAD_REQUEST, -32600).await;
    let resp = post(&h, "/messages?sessionId=nope", &call(3, "echo", json!({}))).await;
    assert_rpc_error(resp, StatusCode::NOT_FOUND, -32000).await;
    let batch = json!([call(4, "echo", json!({})), call(5, "echo", json!({}))]);
    let resp = post(&h, &endpoint, &batch).await;
    assert_rpc_error(resp, StatusCode::BAD_REQUEST, -32600).await;

    // A new stream must start with initialize.
    let (_fresh, fresh_endpoint) = open(&h, None).await;
    let resp = post(&h, &fresh_endpoint, &call(1, "echo", json!({}))).await;
    let msg = assert_rpc_error(resp, StatusCode::BAD_REQUEST, -32600).await;
    assert!(msg.contains("initialize"), "{msg}");
}

#[tokio::test]
async fn the_session_ends_here_and_upstream_once_its_stream_is_released() {
    let h = Harness::start_with(|c| {
        c.limits.detached_linger = Duration::from_millis(100);
        c.limits.session_revalidate_interval = Duration::from_millis(50);
    })
    .await;
    let (sse, endpoint) = legacy_session(&h).await;
    drop(sse);
    assert!(
        h.upstream.wait_deletes(1, WAIT).await,
        "the upstream session is ended with a DELETE"
    );
    let resp = post(&h, &endpoint, &call(2, "echo", json!({"text": "x"}))).await;
    assert_rpc_error(resp, StatusCode::NOT_FOUND, -32000).await;
}

#[tokio::test]
async fn upstream_cuts_are_resumed_unseen_by_the_legacy_client() {
    let h = Harness::start().await;
    let (mut sse, endpoint) = legacy_session(&h).await;
    post_ok(
        &h,
        &endpoint,
        &call(2, "progress", json!({"count": 8, "cuts": [2, 5]})),
    )
    .await;
    let mut progress = Vec::new();
    let mut ids = Vec::new();
    loop {
        let (id, m) = message(&mut sse).await;
        assert!(!ids.contains(&id), "event {id} came twice");
        ids.push(id);
        if m["id"] == 2 {
            assert!(m["result"].is_object(), "{m}");
            break;
        }
        progress.push(m["params"]["progress"].as_u64().unwrap());
    }
    assert_eq!(progress, (1..=8).collect::<Vec<u64>>());
    assert_eq!(h.upstream.cuts_done(), 2, "the upstream cut twice");
    assert!(h.upstream.resumes() >= 2, "the proxy resumed the upstream");
}
