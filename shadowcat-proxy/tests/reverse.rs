//! The reverse proxy against a real test upstream: every validation rule,
//! the header allowlist, session mapping and cleanup, SSE forwarding and
//! stateless cancellation. Each test fails if its rule is removed.

mod support;

use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};
use shadowcat_proxy::jsonrpc::{HEADER_MISMATCH, INVALID_REQUEST, PARSE_ERROR};
use shadowcat_proxy::test_util::TestUpstream;
use shadowcat_session::SessionStore;
use support::*;

fn list(id: u64) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/list"})
}

#[tokio::test]
async fn initialize_and_call_through_the_proxy() {
    let h = Harness::start().await;
    for version in ["2025-03-26", "2025-06-18", "2025-11-25"] {
        let sid = h.init(version).await;
        let resp = h
            .post(
                &[("mcp-session-id", &sid), ("mcp-protocol-version", version)],
                &call(2, "echo", json!({"text": "hi"})),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["mcp-session-id"], sid.as_str());
        let v = body_json(resp).await;
        assert_eq!(v["result"]["content"][0]["text"], "hi");
    }
    assert_eq!(h.store.count().await.unwrap(), 3);
    h.stop().await;
}

#[tokio::test]
async fn origin_not_allowed_gets_403() {
    let h = Harness::start().await;
    let resp = h
        .post(
            &[("origin", "http://evil.example")],
            &initialize("2025-06-18"),
        )
        .await;
    let msg = assert_rpc_error(resp, StatusCode::FORBIDDEN, -32000).await;
    assert!(msg.contains("evil.example"), "{msg}");
    assert!(
        h.upstream.requests().is_empty(),
        "nothing reached the upstream"
    );
    let resp = h
        .post(
            &[("origin", "http://localhost:6274")],
            &initialize("2025-06-18"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn configured_origins_replace_loopback() {
    let h = Harness::start_with(|c| {
        c.allowed_origins =
            shadowcat_proxy::OriginPolicy::from_patterns(vec!["https://app.example".into()]);
    })
    .await;
    let ok = h
        .post(
            &[("origin", "https://app.example")],
            &initialize("2025-06-18"),
        )
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
    let no = h
        .post(
            &[("origin", "http://localhost:1")],
            &initialize("2025-06-18"),
        )
        .await;
    assert_eq!(no.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn client_credentials_never_reach_the_upstream() {
    let h = Harness::start_with(|c| c.upstream_bearer = Some("configured-token".into())).await;
    let creds = [
        ("authorization", "Bearer client-secret"),
        ("cookie", "sid=client-cookie"),
        ("proxy-authorization", "Basic client-proxy"),
        ("x-forwarded-for", "10.9.9.9"),
        ("x-forwarded-host", "client.example"),
        ("x-custom", "client-custom"),
    ];
    let resp = h.post(&creds, &initialize("2025-06-18")).await;
    let sid = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let _ = body_bytes(resp).await;
    let mut with_sid = creds.to_vec();
    with_sid.push(("mcp-session-id", &sid));
    with_sid.push(("mcp-protocol-version", "2025-06-18"));
    let resp = h.post(&with_sid, &list(2)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let _ = body_bytes(resp).await;

    let reqs = h.upstream.requests();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        let auth: Vec<_> = r.headers.get_all("authorization").iter().collect();
        assert_eq!(
            auth,
            ["Bearer configured-token"],
            "only the configured token"
        );
        for (name, value) in r.headers.iter() {
            let v = String::from_utf8_lossy(value.as_bytes());
            assert!(!v.contains("client-"), "{name}: {v} leaked upstream");
            assert!(!name.as_str().starts_with("x-"), "{name} forwarded");
        }
        assert!(r.headers.get("cookie").is_none());
        assert!(r.headers.get("proxy-authorization").is_none());
    }
    assert_eq!(reqs[1].headers["mcp-protocol-version"], "2025-06-18");
}

#[tokio::test]
async fn oversized_body_gets_413() {
    let h = Harness::start_with(|c| c.limits.max_body_bytes = 1024).await;
    let big = call(1, "echo", json!({"text": "x".repeat(2048)}));
    let resp = h.post(&[], &big).await;
    let msg = assert_rpc_error(resp, StatusCode::PAYLOAD_TOO_LARGE, INVALID_REQUEST).await;
    assert!(msg.contains("1024"), "{msg}");
    assert!(h.upstream.requests().is_empty());
}

#[tokio::test]
async fn wrong_accept_gets_406_and_wrong_content_type_gets_415() {
    let h = Harness::start().await;
    let body = initialize("2025-06-18").to_string();
    let resp = h
        .send(
            "POST",
            "/mcp",
            &[
                ("accept", "application/json"),
                ("content-type", "application/json"),
            ],
            body.clone(),
        )
        .await;
    assert_rpc_error(resp, StatusCode::NOT_ACCEPTABLE, INVALID_REQUEST).await;
    let resp = h
        .send(
            "POST",
            "/mcp",
            &[("content-type", "application/json")],
            body.clone(),
        )
        .await;
    assert_rpc_error(resp, StatusCode::NOT_ACCEPTABLE, INVALID_REQUEST).await;
    let resp = h
        .send(
            "POST",
            "/mcp",
            &[
                ("accept", "application/json, text/event-stream"),
                ("content-type", "text/plain"),
            ],
            body.clone(),
        )
        .await;
    assert_rpc_error(resp, StatusCode::UNSUPPORTED_MEDIA_TYPE, INVALID_REQUEST).await;
    let resp = h
        .send(
            "POST",
            "/mcp",
            &[("accept", "application/json, text/event-stream")],
            body,
        )
        .await;
    assert_rpc_error(resp, StatusCode::UNSUPPORTED_MEDIA_TYPE, INVALID_REQUEST).await;
    assert!(h.upstream.requests().is_empty());
}

#[tokio::test]
async fn malformed_and_non_json_rpc_bodies_get_400() {
    let h = Harness::start().await;
    for (body, code) in [
        ("{\"jsonrpc\":", PARSE_ERROR),
        ("hello", PARSE_ERROR),
        ("{\"hello\":1}", INVALID_REQUEST),
        ("[]", INVALID_REQUEST),
        (
            "{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":\"x\"}",
            INVALID_REQUEST,
        ),
    ] {
        let resp = h.send("POST", "/mcp", &POST_HEADERS, body).await;
        assert_rpc_error(resp, StatusCode::BAD_REQUEST, code).await;
    }
    assert!(h.upstream.requests().is_empty());
}

#[tokio::test]
async fn session_rules() {
    let h = Harness::start().await;
    // Missing session id on a non-initialize request: 400.
    let resp = h.post(&[], &list(1)).await;
    let msg = assert_rpc_error(resp, StatusCode::BAD_REQUEST, INVALID_REQUEST).await;
    assert!(msg.contains("Mcp-Session-Id"), "{msg}");
    // Unknown session: 404, so the client re-initializes.
    let resp = h
        .post(
            &[("mcp-session-id", "0123456789abcdef0123456789abcdef")],
            &list(1),
        )
        .await;
    assert_rpc_error(resp, StatusCode::NOT_FOUND, -32000).await;
    // Malformed (too long) session id: 400.
    let long = "a".repeat(200);
    let resp = h.post(&[("mcp-session-id", &long)], &list(1)).await;
    assert_rpc_error(resp, StatusCode::BAD_REQUEST, INVALID_REQUEST).await;
    // The upstream's own session id is not a proxy session id.
    let _ = h.init("2025-06-18").await;
    let up = h.upstream.live_sessions().pop().unwrap();
    let resp = h.post(&[("mcp-session-id", &up)], &list(1)).await;
    assert_rpc_error(resp, StatusCode::NOT_FOUND, -32000).await;
    let forwarded = h.upstream.requests().len();
    assert_eq!(forwarded, 1, "only the initialize reached the upstream");
}

#[tokio::test]
async fn upstream_session_id_never_reaches_the_client() {
    let h = Harness::start().await;
    let resp = h.post(&[], &initialize("2025-11-25")).await;
    let sid = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    for (name, v) in resp.headers() {
        assert!(
            !v.to_str()
                .unwrap_or("")
                .contains(TestUpstream::SESSION_PREFIX),
            "{name} carries the upstream id"
        );
    }
    let body = body_bytes(resp).await;
    assert!(!String::from_utf8_lossy(&body).contains(TestUpstream::SESSION_PREFIX));
    assert_eq!(sid.len(), 32, "128 bits as hex");
    assert!(sid.bytes().all(|b| b.is_ascii_hexdigit()));
    let stored = h
        .store
        .get(&shadowcat_session::SessionId::parse(&sid).unwrap())
        .await
        .unwrap()
        .unwrap();
    let upstream_id = stored.upstream_session_id.expect("mapped");
    assert!(upstream_id.starts_with(TestUpstream::SESSION_PREFIX));
    // The upstream sees its own id on later requests.
    let resp = h
        .post(
            &[
                ("mcp-session-id", &sid),
                ("mcp-protocol-version", "2025-11-25"),
            ],
            &list(2),
        )
        .await;
    assert_eq!(resp.headers()["mcp-session-id"], sid.as_str());
    let _ = body_bytes(resp).await;
    assert_eq!(
        h.upstream.requests()[1].headers["mcp-session-id"],
        upstream_id.as_str()
    );
}

#[tokio::test]
async fn delete_removes_the_session_everywhere() {
    let h = Harness::start().await;
    let sid = h.init("2025-06-18").await;
    assert_eq!(h.store.count().await.unwrap(), 1);
    assert_eq!(h.upstream.live_sessions().len(), 1);
    let resp = h
        .send(
            "DELETE",
            "/mcp",
            &[
                ("mcp-session-id", &sid),
                ("mcp-protocol-version", "2025-06-18"),
            ],
            "",
        )
        .await;
    assert!(resp.status().is_success(), "{}", resp.status());
    let _ = body_bytes(resp).await;
    assert_eq!(h.store.count().await.unwrap(), 0, "no leak in the store");
    assert!(h.upstream.live_sessions().is_empty(), "ended upstream too");
    let resp = h.post(&[("mcp-session-id", &sid)], &list(3)).await;
    assert_rpc_error(resp, StatusCode::NOT_FOUND, -32000).await;
}

#[tokio::test]
async fn sse_is_forwarded_event_by_event() {
    let h = Harness::start().await;
    let sid = h.init("2025-06-18").await;
    let resp = h
        .post(
            &[
                ("mcp-session-id", &sid),
                ("mcp-protocol-version", "2025-06-18"),
            ],
            &call(7, "progress", json!({"count": 3, "gated": true})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    let mut body = resp.into_body();
    // The upstream holds the rest of the stream until released: the first
    // event arrives only if the proxy forwards without buffering.
    let first = next_event_chunk(&mut body).await.expect("first event");
    let first = String::from_utf8(first.to_vec()).unwrap();
    assert!(first.contains("notifications/progress"), "{first}");
    assert!(!first.contains("\"result\""), "{first}");
    h.upstream.release();
    let mut rest = String::new();
    while let Some(chunk) = next_chunk(&mut body).await {
        rest.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let all = format!("{first}{rest}");
    let events: Vec<&str> = all.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 4, "{all}");
    for (i, e) in events.iter().enumerate() {
        assert!(
            e.lines().any(|l| l.starts_with("id: ")),
            "event {i} has an id: {e}"
        );
    }
    assert!(events[3].contains("\"id\":7"));
}

/// The blocks of one `progress` call with `count` 1 in a session of
/// `version`.
async fn progress_blocks(version: &str) -> Vec<String> {
    let h = Harness::start().await;
    let sid = h.init(version).await;
    let resp = h
        .post(
            &[("mcp-session-id", &sid), ("mcp-protocol-version", version)],
            &call(8, "progress", json!({"count": 1})),
        )
        .await;
    let text = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
    // Comment blocks (the proxy's opening comment) carry nothing.
    text.split("\n\n")
        .filter(|e| !e.is_empty() && !e.lines().all(|l| l.starts_with(':')))
        .map(str::to_owned)
        .collect()
}

fn assert_messages_are_json(blocks: &[String]) {
    for b in blocks {
        let data = b
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .expect("data line");
        let _: Value = serde_json::from_str(data).expect("every data line is JSON");
    }
}

#[tokio::test]
async fn priming_events_for_2025_11_25_clients_have_an_id_and_empty_data() {
    let blocks = progress_blocks("2025-11-25").await;
    // The proxy's own priming event, the upstream's, the notification and
    // the result.
    assert_eq!(blocks.len(), 4, "{blocks:#?}");
    for priming in &blocks[..2] {
        let lines: Vec<&str> = priming.lines().collect();
        assert!(lines[0].starts_with("id: "), "{blocks:#?}");
        assert_eq!(&lines[1..], ["data:"], "priming event: {blocks:#?}");
    }
    assert_messages_are_json(&blocks[2..]);
}

#[tokio::test]
async fn older_clients_never_get_an_empty_data_event() {
    for version in ["2025-03-26", "2025-06-18"] {
        let blocks = progress_blocks(version).await;
        assert_eq!(blocks.len(), 2, "{version}: {blocks:#?}");
        assert_messages_are_json(&blocks);
    }
}

#[tokio::test]
async fn stateless_client_drop_cancels_the_upstream_request() {
    let h = Harness::start().await;
    let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{
        "name":"forever","arguments":{},
        "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}});
    let resp = h
        .post(
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-session-id", "ignored"),
            ],
            &body,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers().get("mcp-session-id").is_none(),
        "no session invented"
    );
    let mut stream = resp.into_body();
    let first = next_chunk(&mut stream).await.expect("an event");
    assert!(
        std::str::from_utf8(&first)
            .unwrap()
            .contains("notifications/message")
    );
    assert_eq!(h.upstream.cancelled(), 0);
    drop(stream);
    assert!(
        h.upstream.wait_cancelled(WAIT).await,
        "the upstream request ends when the client drops its stream"
    );
    assert_eq!(h.store.count().await.unwrap(), 0);
    assert!(
        h.upstream.requests()[0]
            .headers
            .get("mcp-session-id")
            .is_none()
    );
}

#[tokio::test]
async fn stateless_rules() {
    let h = Harness::start().await;
    let v26 = [("mcp-protocol-version", "2026-07-28")];
    for method in ["GET", "DELETE"] {
        let resp = h
            .send(
                method,
                "/mcp",
                &[v26[0], ("accept", "text/event-stream")],
                "",
            )
            .await;
        assert_eq!(resp.headers()["allow"], "POST");
        assert_rpc_error(resp, StatusCode::METHOD_NOT_ALLOWED, -32601).await;
    }
    let meta = |v: &str| json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":v}}});
    let resp = h
        .post(
            &[("mcp-protocol-version", "2025-11-25")],
            &meta("2026-07-28"),
        )
        .await;
    assert_rpc_error(resp, StatusCode::BAD_REQUEST, HEADER_MISMATCH).await;
    let resp = h.post(&[], &meta("2026-07-28")).await;
    assert_rpc_error(resp, StatusCode::BAD_REQUEST, HEADER_MISMATCH).await;
    let resp = h.post(&v26, &meta("2025-11-25")).await;
    assert_rpc_error(resp, StatusCode::BAD_REQUEST, HEADER_MISMATCH).await;
    let resp = h
        .post(&[v26[0], ("mcp-method", "tools/call")], &meta("2026-07-28"))
        .await;
    assert_rpc_error(resp, StatusCode::BAD_REQUEST, HEADER_MISMATCH).await;
    assert!(h.upstream.requests().is_empty());
    let resp = h
        .post(&[v26[0], ("mcp-method", "tools/list")], &meta("2026-07-28"))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(body_json(resp).await["result"]["tools"].is_array());
}

#[tokio::test]
async fn batches_only_in_2025_03_26() {
    let h = Harness::start().await;
    let batch = json!([
        {"jsonrpc":"2.0","method":"notifications/initialized"},
        {"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t","progress":1}}
    ]);
    let sid = h.init("2025-06-18").await;
    let resp = h
        .post(
            &[
                ("mcp-session-id", &sid),
                ("mcp-protocol-version", "2025-06-18"),
            ],
            &batch,
        )
        .await;
    let msg = assert_rpc_error(resp, StatusCode::BAD_REQUEST, INVALID_REQUEST).await;
    assert!(msg.contains("2025-03-26"), "{msg}");
    // Without the header the session's revision counts.
    let resp = h.post(&[("mcp-session-id", &sid)], &batch).await;
    assert_rpc_error(resp, StatusCode::BAD_REQUEST, INVALID_REQUEST).await;
    let old = h.init("2025-03-26").await;
    let resp = h.post(&[("mcp-session-id", &old)], &batch).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let in_batch = json!([initialize("2025-03-26")]);
    let resp = h.post(&[], &in_batch).await;
    assert_rpc_error(resp, StatusCode::BAD_REQUEST, INVALID_REQUEST).await;
}

#[tokio::test]
async fn protocol_version_header_is_checked() {
    let h = Harness::start().await;
    let sid = h.init("2025-06-18").await;
    for bad in ["2024-13-01", "latest", "2025-6-18"] {
        let resp = h
            .post(
                &[("mcp-session-id", &sid), ("mcp-protocol-version", bad)],
                &list(2),
            )
            .await;
        let msg = assert_rpc_error(resp, StatusCode::BAD_REQUEST, INVALID_REQUEST).await;
        assert!(msg.contains("2025-11-25"), "names what is supported: {msg}");
    }
    assert_eq!(h.upstream.requests().len(), 1);
}

#[tokio::test]
async fn get_stream_limits_and_keepalive() {
    let h = Harness::start_with(|c| {
        c.limits.keepalive_interval = Duration::from_millis(50);
        c.limits.max_streams_per_session = 1;
        c.limits.max_last_event_id_len = 16;
    })
    .await;
    let sid = h.init("2025-11-25").await;
    let get = |extra: Vec<(&'static str, String)>| {
        let mut hs: Vec<(String, String)> = vec![
            ("accept".into(), "text/event-stream".into()),
            ("mcp-session-id".into(), sid.clone()),
            ("mcp-protocol-version".into(), "2025-11-25".into()),
        ];
        hs.extend(extra.into_iter().map(|(k, v)| (k.to_owned(), v)));
        hs
    };
    let long = get(vec![("last-event-id", "x".repeat(17))]);
    let long: Vec<(&str, &str)> = long.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let resp = h.send("GET", "/mcp", &long, "").await;
    assert_rpc_error(resp, StatusCode::BAD_REQUEST, INVALID_REQUEST).await;
    let resp = h
        .send(
            "GET",
            "/mcp",
            &[("accept", "application/json"), ("mcp-session-id", &sid)],
            "",
        )
        .await;
    assert_rpc_error(resp, StatusCode::NOT_ACCEPTABLE, INVALID_REQUEST).await;

    // Not an id this proxy issued: refused, never passed upstream.
    let foreign = get(vec![("last-event-id", "s0-1".into())]);
    let foreign: Vec<(&str, &str)> = foreign
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let resp = h.send("GET", "/mcp", &foreign, "").await;
    let msg = assert_rpc_error(resp, StatusCode::BAD_REQUEST, INVALID_REQUEST).await;
    assert!(msg.contains("Last-Event-ID"), "{msg}");

    let ok = get(vec![]);
    let ok: Vec<(&str, &str)> = ok.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let resp = h.send("GET", "/mcp", &ok, "").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut stream = resp.into_body();
    // A second stream in the same session is over the limit of 1.
    let resp = h.send("GET", "/mcp", &ok, "").await;
    assert_rpc_error(resp, StatusCode::TOO_MANY_REQUESTS, -32000).await;
    let mut seen = String::new();
    let mut keepalive = false;
    for _ in 0..20 {
        let chunk = next_chunk(&mut stream).await.expect("stream stays open");
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
        // A keep-alive after the event (one before it opened the stream).
        if chunk.as_ref() == b":\n\n" && seen.contains("hello") {
            keepalive = true;
            break;
        }
    }
    assert!(keepalive, "a keep-alive comment on an idle stream: {seen}");
    assert!(seen.contains("hello"), "{seen}");
    let gets = h
        .upstream
        .requests()
        .iter()
        .filter(|r| r.method == http::Method::GET)
        .count();
    assert_eq!(gets, 1, "the refused GET never reached the upstream");
    let last = h.upstream.requests().last().unwrap().headers.clone();
    assert!(last.get("last-event-id").is_none());
    drop(stream);
}

#[tokio::test]
async fn upstream_timeout_gets_504_and_unreachable_gets_502() {
    let h =
        Harness::start_with(|c| c.limits.upstream_response_timeout = Duration::from_millis(200))
            .await;
    let sid = h.init("2025-06-18").await;
    let resp = h
        .post(
            &[
                ("mcp-session-id", &sid),
                ("mcp-protocol-version", "2025-06-18"),
            ],
            &call(9, "slow", json!({"ms": 3000})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    let v = body_json(resp).await;
    assert_eq!(v["id"], 9, "the error answers the request");
    assert_eq!(v["error"]["code"], -32603);

    // A port nobody listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let h2 = Harness::start_with(|c| {
        c.upstream = format!("http://127.0.0.1:{port}/mcp").parse().unwrap()
    })
    .await;
    let resp = h2.post(&[], &initialize("2025-06-18")).await;
    assert_rpc_error(resp, StatusCode::BAD_GATEWAY, -32603).await;
}

#[tokio::test]
async fn max_sessions_gets_503() {
    let h = Harness::start_with(|c| c.limits.max_sessions = 1).await;
    let _ = h.init("2025-06-18").await;
    let resp = h.post(&[], &initialize("2025-06-18")).await;
    assert_rpc_error(resp, StatusCode::SERVICE_UNAVAILABLE, -32000).await;
    assert_eq!(h.store.count().await.unwrap(), 1);
}

#[tokio::test]
async fn wrong_path_and_method() {
    let h = Harness::start().await;
    let resp = h
        .send(
            "POST",
            "/other",
            &POST_HEADERS,
            initialize("2025-06-18").to_string(),
        )
        .await;
    let msg = assert_rpc_error(resp, StatusCode::NOT_FOUND, -32601).await;
    assert!(msg.contains("/mcp"), "{msg}");
    let resp = h.send("PUT", "/mcp", &POST_HEADERS, "{}").await;
    assert_eq!(resp.headers()["allow"], "GET, POST, DELETE");
    assert_rpc_error(resp, StatusCode::METHOD_NOT_ALLOWED, -32601).await;
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let h = Harness::start_with(|c| c.limits.max_header_bytes = 8192).await;
    let big = "x".repeat(16 * 1024);
    let mut b = http::Request::builder().method("POST").uri(h.url("/mcp"));
    b = b.header("x-big", big);
    let req = b
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let resp = tokio::time::timeout(WAIT, client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let h = Harness::start().await;
    let sid = h.init("2025-06-18").await;
    let resp = h
        .send(
            "GET",
            "/mcp",
            &[("accept", "text/event-stream"), ("mcp-session-id", &sid)],
            "",
        )
        .await;
    let mut stream = resp.into_body();
    let _ = next_chunk(&mut stream).await.expect("first event");
    let stop = tokio::spawn(async move {
        let _ = h.stop().await;
    });
    // The stream ends cleanly (None), not with an error, and the proxy
    // stops well within its 2 s drain timeout.
    assert!(next_chunk(&mut stream).await.is_none());
    tokio::time::timeout(WAIT, stop).await.unwrap().unwrap();
}

#[tokio::test]
async fn resumption_points_reach_the_store_through_the_writer() {
    let h = Harness::start().await;
    let sid = h.init("2025-06-18").await;
    let id = shadowcat_session::SessionId::parse(&sid).unwrap();
    // A completed POST stream (stream 0): its point is dropped at the end.
    let resp = h
        .post(
            &[
                ("mcp-session-id", &sid),
                ("mcp-protocol-version", "2025-06-18"),
            ],
            &call(4, "progress", json!({"count": 2})),
        )
        .await;
    let text = String::from_utf8(body_bytes(resp).await.to_vec()).unwrap();
    assert!(text.contains("\"id\":4"), "{text}");
    // An open GET stream (stream 1): its point is kept.
    let resp = h
        .send(
            "GET",
            "/mcp",
            &[("accept", "text/event-stream"), ("mcp-session-id", &sid)],
            "",
        )
        .await;
    let mut stream = resp.into_body();
    let first = String::from_utf8(next_event_chunk(&mut stream).await.unwrap().to_vec()).unwrap();
    let event_id = first
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .expect("the event has an id")
        .to_owned();
    // The client's id names its stream and carries the upstream's id.
    let client_id = shadowcat_proxy::ClientEventId::parse(&event_id).expect("a proxy id");
    assert_eq!(client_id.seq, 1);
    assert!(client_id.is_get_stream());
    let upstream_id = client_id.upstream.clone().expect("carries the upstream id");
    assert!(upstream_id.starts_with('s'), "{upstream_id}");
    let store = h.stop().await;
    drop(stream);
    let session = store.get(&id).await.unwrap().expect("session kept");
    assert_eq!(
        session.streams.len(),
        1,
        "only the open stream: {session:?}"
    );
    let point = session
        .stream(shadowcat_session::StreamId(client_id.stream))
        .expect("GET stream point");
    assert_eq!(
        point.upstream_event_id.as_deref(),
        Some(upstream_id.as_str())
    );
    assert_eq!(point.client_seq, 1);
}

#[tokio::test]
async fn a_session_the_upstream_forgot_is_removed_and_404() {
    let h = Harness::start().await;
    let sid = h.init("2025-06-18").await;
    h.upstream.forget_sessions();
    let resp = h
        .post(
            &[
                ("mcp-session-id", &sid),
                ("mcp-protocol-version", "2025-06-18"),
            ],
            &list(2),
        )
        .await;
    let msg = assert_rpc_error(resp, StatusCode::NOT_FOUND, -32000).await;
    assert!(msg.contains("initialize"), "{msg}");
    assert_eq!(h.store.count().await.unwrap(), 0, "the proxy forgot it too");
}
