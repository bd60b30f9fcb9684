//! Random headers and bodies against a running proxy: it never panics and
//! never answers a client mistake with a 5xx, and it keeps serving.

mod support;

use http::StatusCode;
use proptest::prelude::*;
use serde_json::json;
use support::*;

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("application/json".to_owned()),
        Just("text/event-stream".to_owned()),
        Just("application/json, text/event-stream".to_owned()),
        Just("2025-03-26".to_owned()),
        Just("2025-11-25".to_owned()),
        Just("2026-07-28".to_owned()),
        Just("http://evil.example".to_owned()),
        Just("http://localhost:1".to_owned()),
        "[ -~]{0,40}",
        "[a-f0-9]{32}",
    ]
}

fn header_name() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("accept"),
        Just("content-type"),
        Just("origin"),
        Just("mcp-protocol-version"),
        Just("mcp-session-id"),
        Just("last-event-id"),
        Just("mcp-method"),
        Just("mcp-name"),
        Just("authorization"),
        Just("content-length"),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let messages = prop_oneof![
        Just(json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}})),
        Just(json!({"jsonrpc":"2.0","id":2,"method":"tools/list"})),
        Just(json!({"jsonrpc":"2.0","method":"notifications/initialized"})),
        Just(json!({"jsonrpc":"2.0","id":3,"result":{}})),
        Just(json!([{"jsonrpc":"2.0","method":"a"}])),
        Just(json!({"jsonrpc":"2.0","id":4,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}})),
        Just(json!({"jsonrpc":"2.0","id":[1],"method":"x"})),
        Just(json!({"jsonrpc":"2.0","id":5,"method":"x","params":[1,2]})),
        Just(json!({"jsonrpc":"2.0","id":6,"method":"x","params":{"protocolVersion":7,"_meta":"no"}})),
    ]
    .prop_map(|v| v.to_string().into_bytes());
    prop_oneof![
        messages,
        proptest::collection::vec(any::<u8>(), 0..256),
        "[ -~]{0,64}".prop_map(String::into_bytes),
    ]
}

fn method() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        4 => Just("POST"),
        2 => Just("GET"),
        1 => Just("DELETE"),
        1 => Just("PUT"),
        1 => Just("OPTIONS"),
    ]
}

#[test]
fn random_requests_never_get_5xx() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let h = rt.block_on(Harness::start_with(|c| c.limits.max_body_bytes = 64 * 1024));
    let sid = rt.block_on(h.init("2025-03-26"));
    let config = ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(
        m in method(),
        path in prop_oneof![4 => Just("/mcp"), 1 => Just("/"), 1 => Just("/mcp/x")],
        headers in proptest::collection::vec((header_name(), header_value()), 0..8),
        use_session in any::<bool>(),
        body in body(),
    )| {
        let mut hs: Vec<(&str, &str)> = headers
            .iter()
            .filter(|(n, _)| *n != "content-length")
            .map(|(n, v)| (*n, v.as_str()))
            .collect();
        if use_session {
            hs.push(("mcp-session-id", sid.as_str()));
        }
        let resp = rt.block_on(h.send(m, path, &hs, body.clone()));
        let status = resp.status();
        // An accepted GET opens a server stream that stays open by design:
        // its status is the answer; dropping it closes the stream.
        let sse = resp
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if !sse {
            let _ = rt.block_on(body_bytes(resp));
        }
        prop_assert!(
            !status.is_server_error(),
            "{m} {path} {hs:?} {:?} -> {status}",
            String::from_utf8_lossy(&body)
        );
    });
    // Still serving after all that.
    let resp = rt.block_on(h.post(&[], &initialize("2025-06-18")));
    assert_eq!(resp.status(), StatusCode::OK);
}
