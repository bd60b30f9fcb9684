//! Resilient `subscriptions/listen` (2026-07-28) against the test
//! upstream's listen streams: a dropped upstream stream is listened to
//! again under the client's id while the client's stream stays open with
//! keep-alives; a re-listen that fails for good ends the client's stream
//! with an error naming the cause; the client closing its stream still
//! cancels upstream.

mod support;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
use shadowcat_proxy::test_util::TestUpstream;
use support::*;

const SUB: &str = "io.modelcontextprotocol/subscriptionId";
const ACK: &str = "notifications/subscriptions/acknowledged";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A proxy whose idle client streams get a keep-alive every 20 ms and
/// whose re-listens back off at most 10 ms.
async fn harness(max_attempts: u32) -> Harness {
    support::metrics::counts();
    Harness::start_with(|c| {
        c.limits.keepalive_interval = ms(20);
        c.limits.reconnect.base = ms(5);
        c.limits.reconnect.cap = ms(10);
        c.limits.reconnect.max_attempts = max_attempts;
    })
    .await
}

fn listen_request(id: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"subscriptions/listen","params":{
        "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"},
        "notifications":{"toolsListChanged":true,"resourceSubscriptions":["file:///a"]}}})
}

async fn open_listen(h: &Harness, id: Value) -> Reader {
    let resp = h
        .post(
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "subscriptions/listen"),
            ],
            &listen_request(id.clone()),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    let mut r = Reader::new(resp.into_body());
    let ack = r.message().await;
    assert_eq!(ack["method"], ACK, "{ack}");
    assert_eq!(ack["params"]["_meta"][SUB], id);
    r
}

/// The listen requests the upstream received, in order.
fn listens(up: &TestUpstream) -> Vec<(http::HeaderMap, Value)> {
    up.requests()
        .into_iter()
        .filter_map(|r| {
            let v: Value = serde_json::from_slice(&r.body).ok()?;
            (v["method"] == "subscriptions/listen").then_some((r.headers, v))
        })
        .collect()
}

/// What the client's stream carries.
#[derive(Debug)]
enum Item {
    /// A `:` comment block (keep-alive).
    Comment,
    /// An event's data, as JSON.
    Message(Value),
    /// The stream ended cleanly.
    End,
}

struct Reader {
    body: Incoming,
    buf: BytesMut,
}

impl Reader {
    fn new(body: Incoming) -> Self {
        Reader {
            body,
            buf: BytesMut::new(),
        }
    }

    async fn item(&mut self) -> Item {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block = self.buf.split_to(pos + 2);
                let text = std::str::from_utf8(&block).expect("UTF-8");
                let data: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                if !data.is_empty() {
                    let v = serde_json::from_str(&data.join("\n"))
                        .unwrap_or_else(|e| panic!("JSON data ({e}): {text:?}"));
                    return Item::Message(v);
                }
                if text.lines().all(|l| l.is_empty() || l.starts_with(':')) {
                    return Item::Comment;
                }
                // id-only or retry blocks: nothing for the client.
                continue;
            }
            let frame = tokio::time::timeout(WAIT, self.body.frame())
                .await
                .expect("a frame in time");
            match frame {
                None => return Item::End,
                Some(Err(e)) => panic!("the client's stream broke: {e}"),
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        self.buf.extend_from_slice(&d);
                    }
                }
            }
        }
    }

    /// The next message, keep-alives skipped.
    async fn message(&mut self) -> Value {
        loop {
            match self.item().await {
                Item::Comment => continue,
                Item::Message(v) => return v,
                Item::End => panic!("the stream ended; a message was expected"),
            }
        }
    }

    /// The stream ends after at most keep-alives.
    async fn end(&mut self) {
        loop {
            match self.item().await {
                Item::Comment => continue,
                Item::End => return,
                Item::Message(v) => panic!("expected the end, got {v}"),
            }
        }
    }
}

#[tokio::test]
async fn a_dropped_listen_is_listened_again_under_the_clients_id() {
    let h = harness(10).await;
    let drops = metrics::count("shadowcat_listen_drops_total{cause=broken}");
    let relistens = metrics::count("shadowcat_listen_relistens_total");
    let mut r = open_listen(&h, json!("sub-1")).await;
    assert_eq!(
        h.upstream
            .notify_listens("notifications/tools/list_changed", json!({})),
        1
    );
    let m = r.message().await;
    assert_eq!(m["method"], "notifications/tools/list_changed");
    assert_eq!(m["params"]["_meta"][SUB], "sub-1");

    // The upstream resets the connection; the re-listen is held there.
    h.upstream.hold_listens(true);
    assert_eq!(h.upstream.cut_listens(true), 1);
    assert!(h.upstream.wait_requests(2, WAIT).await, "a second listen");
    // Meanwhile the client's stream stays open, with keep-alives only.
    for _ in 0..3 {
        match r.item().await {
            Item::Comment => {}
            other => panic!("a keep-alive while re-listening, got {other:?}"),
        }
    }
    h.upstream.release_listen();
    assert!(h.upstream.wait_listens_opened(2, WAIT).await);

    // The repeated acknowledgement is not forwarded; the refresh signals
    // for what it acknowledged are, under the client's id.
    let s = r.message().await;
    assert_eq!(s["method"], "notifications/tools/list_changed", "{s}");
    assert_eq!(s["params"]["_meta"][SUB], "sub-1");
    let s = r.message().await;
    assert_eq!(s["method"], "notifications/resources/updated", "{s}");
    assert_eq!(s["params"]["uri"], "file:///a");
    assert_eq!(s["params"]["_meta"][SUB], "sub-1");

    // Notifications of the new upstream stream reach the client under its
    // own id.
    assert_eq!(
        h.upstream.notify_listens(
            "notifications/resources/updated",
            json!({"uri": "file:///a", "title": "after"})
        ),
        1
    );
    let m = r.message().await;
    assert_eq!(m["params"]["title"], "after");
    assert_eq!(m["params"]["_meta"][SUB], "sub-1");

    // The upstream saw the same listen again: same params and headers, a
    // new id.
    let seen = listens(&h.upstream);
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].1["id"], "sub-1");
    assert_eq!(seen[1].1["params"], seen[0].1["params"]);
    assert_eq!(seen[1].1["jsonrpc"], "2.0");
    let new_id = seen[1].1["id"].clone();
    assert!(new_id.is_string() && new_id != "sub-1", "{new_id}");
    for name in [
        "mcp-protocol-version",
        "mcp-method",
        "content-type",
        "accept",
    ] {
        assert_eq!(seen[1].0.get(name), seen[0].0.get(name), "{name}");
    }

    // A graceful end: the listen's result, under the client's id, then
    // the end of the stream; no further listen.
    assert_eq!(h.upstream.end_listens(), 1);
    let res = r.message().await;
    assert_eq!(res["id"], "sub-1", "{res}");
    assert_eq!(res["result"]["_meta"][SUB], "sub-1");
    r.end().await;
    assert_eq!(listens(&h.upstream).len(), 2);
    assert!(metrics::count("shadowcat_listen_drops_total{cause=broken}") > drops);
    assert!(metrics::count("shadowcat_listen_relistens_total") > relistens);
}

#[tokio::test]
async fn a_cleanly_ended_listen_waits_for_retry_then_closing_cancels_the_new_one() {
    let h = harness(10).await;
    h.upstream.set_listen_retry(Some(300));
    let mut r = open_listen(&h, json!(42)).await;
    let cut_at = Instant::now();
    // A clean end without the listen's result is a drop too.
    assert_eq!(h.upstream.cut_listens(false), 1);
    assert!(h.upstream.wait_listens_opened(2, WAIT).await);
    let waited = cut_at.elapsed();
    assert!(
        waited >= ms(300),
        "the upstream's retry: 300 paces the re-listen; it came after {waited:?}"
    );
    let s = r.message().await;
    assert_eq!(s["method"], "notifications/tools/list_changed");
    assert_eq!(s["params"]["_meta"][SUB], 42, "an integer id stays one");
    let seen = listens(&h.upstream);
    assert_ne!(seen[1].1["id"], 42);

    // Closing the client's stream cancels the re-listened upstream one.
    assert_eq!(h.upstream.cancelled(), 0);
    drop(r);
    assert!(
        h.upstream.wait_cancelled(WAIT).await,
        "the upstream listen ends when the client drops its stream"
    );
    assert_eq!(listens(&h.upstream).len(), 2, "no listen after the close");
}

#[tokio::test]
async fn a_refused_relisten_ends_the_stream_with_the_cause() {
    let h = harness(10).await;
    let mut r = open_listen(&h, json!("sub-2")).await;
    h.upstream.set_listen_refusal(Some(403));
    assert_eq!(h.upstream.cut_listens(true), 1);
    let err = r.message().await;
    assert_eq!(err["id"], "sub-2", "{err}");
    assert_eq!(err["error"]["code"], shadowcat_proxy::jsonrpc::SERVER_ERROR);
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("HTTP 403") && msg.contains("listen refused by the test upstream"),
        "{msg}"
    );
    r.end().await;
    assert_eq!(listens(&h.upstream).len(), 2, "a 403 is not retried");
}

#[tokio::test]
async fn a_json_answer_to_the_relisten_is_the_listens_answer() {
    let h = harness(10).await;
    let mut r = open_listen(&h, json!("sub-6")).await;
    // The test upstream's refusal is a JSON-RPC error with id null; with
    // 200 it is an answer, not a refusal.
    h.upstream.set_listen_refusal(Some(200));
    assert_eq!(h.upstream.cut_listens(true), 1);
    let answer = r.message().await;
    assert_eq!(answer["id"], "sub-6", "{answer}");
    assert_eq!(
        answer["error"]["message"],
        "listen refused by the test upstream"
    );
    r.end().await;
    assert_eq!(listens(&h.upstream).len(), 2);
}

#[tokio::test]
async fn a_relisten_that_keeps_failing_is_given_up_after_the_attempts() {
    let h = harness(2).await;
    let gave_up = metrics::count("shadowcat_listen_gave_up_total{cause=attempts}");
    let mut r = open_listen(&h, json!("sub-3")).await;
    h.upstream.set_listen_refusal(Some(503));
    assert_eq!(h.upstream.cut_listens(false), 1);
    let err = r.message().await;
    assert_eq!(err["id"], "sub-3", "{err}");
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("gave up after 2 reconnect attempts") && msg.contains("503"),
        "{msg}"
    );
    r.end().await;
    // The first listen, then max_attempts re-listens.
    assert_eq!(listens(&h.upstream).len(), 3);
    assert!(metrics::count("shadowcat_listen_gave_up_total{cause=attempts}") > gave_up);
}

#[tokio::test]
async fn a_listen_that_ends_with_its_result_is_not_listened_again() {
    let h = harness(10).await;
    let mut r = open_listen(&h, json!("sub-4")).await;
    assert_eq!(h.upstream.end_listens(), 1);
    let res = r.message().await;
    assert_eq!(res["id"], "sub-4");
    assert_eq!(res["result"]["resultType"], "complete");
    r.end().await;
    assert_eq!(listens(&h.upstream).len(), 1);
}

#[tokio::test]
async fn closing_the_client_stream_cancels_the_listen() {
    let h = harness(10).await;
    let r = open_listen(&h, json!("sub-5")).await;
    drop(r);
    assert!(h.upstream.wait_cancelled(WAIT).await);
    assert_eq!(listens(&h.upstream).len(), 1);
}
