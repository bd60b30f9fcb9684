//! When a stream cannot be resumed the client gets a clear end, and the
//! proxy counts it: an upstream without an event store, behind a replay
//! buffer that no longer reaches back (`shadowcat_resume_gaps_total`), and
//! behind an upstream cut (`shadowcat_upstream_reconnect_failures_total`).
//! A counting recorder is installed for this test binary.

mod support;

use std::time::Duration;

use http::StatusCode;
use serde_json::json;
use shadowcat_proxy::ClientEventId;
use shadowcat_proxy::ReplayLimits;
use support::metrics::{count, counts};
use support::sse::{SseClient, Tally};
use support::{Harness, assert_rpc_error, call};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_without_event_store_gives_clear_errors_and_is_counted() {
    let _ = counts();
    let h = Harness::start_with(|c| {
        c.limits.reconnect.base = Duration::from_millis(1);
        c.limits.reconnect.cap = Duration::from_millis(5);
        c.limits.reconnect.max_attempts = 3;
        c.limits.replay = ReplayLimits {
            max_events: 16,
            max_bytes: 1 << 20,
            retain_bytes: 0,
        };
    })
    .await;
    let version = "2025-06-18";
    let sid = h.init(version).await;
    let hs = [
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", version),
    ];
    h.upstream.set_event_store(false);

    // A resume the buffer cannot serve, and the upstream cannot either.
    let resp = h
        .post(&hs, &call(4, "progress", json!({"count": 200})))
        .await;
    let mut tally = Tally::new();
    let mut client = SseClient::new(resp.into_body());
    assert!(!tally.read(&mut client, 10).await);
    let old = tally.last_id.clone().unwrap();
    assert!(tally.read(&mut client, u64::MAX).await);
    tally.assert_exactly_once(200);
    let gaps = count("shadowcat_resume_gaps_total");
    let resp = h.resume(&sid, version, Some(&old)).await;
    let msg = assert_rpc_error(resp, StatusCode::BAD_GATEWAY, -32000).await;
    assert!(msg.contains("could not resume"), "{msg}");
    assert!(
        msg.contains("replay_retain_bytes"),
        "names the limit: {msg}"
    );
    assert_eq!(count("shadowcat_resume_gaps_total"), gaps + 1);

    // An upstream cut on a request stream: the pending request gets a
    // JSON-RPC error naming the cause, then the stream ends.
    let failures = count("shadowcat_upstream_reconnect_failures_total");
    let resp = h
        .post(
            &hs,
            &call(9, "progress", json!({"count": 100, "cuts": [40]})),
        )
        .await;
    let mut tally = Tally::new();
    assert!(
        tally
            .read(&mut SseClient::new(resp.into_body()), u64::MAX)
            .await
    );
    assert_eq!((tally.delivered, tally.lost, tally.duplicated), (40, 0, 0));
    assert_eq!(tally.results, 0);
    assert_eq!(tally.errors.len(), 1, "{tally:?}");
    let err = &tally.errors[0];
    assert_eq!(err["id"], 9);
    let cause = err["error"]["message"].as_str().unwrap();
    assert!(cause.contains("405"), "{cause}");
    assert_eq!(
        count("shadowcat_upstream_reconnect_failures_total"),
        failures + 1
    );
}

/// An upstream id too long for a client id to carry: after a restart the
/// proxy resumes the upstream from the persisted point, which is exactly
/// the client's last event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_id_too_long_to_carry_resumes_from_the_persisted_point() {
    let mut h = Harness::start_with(|c| {
        c.limits.reconnect.base = Duration::from_millis(1);
        c.limits.reconnect.cap = Duration::from_millis(5);
    })
    .await;
    let version = "2025-11-25";
    let sid = h.init(version).await;
    let hs = [
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", version),
    ];
    let args = json!({"count": 50, "stall": 20, "long_ids": true});
    let resp = h.post(&hs, &call(7, "progress", args)).await;
    let mut client = SseClient::new(resp.into_body());
    let mut tally = Tally::new();
    // Two priming events (the proxy's and the upstream's), 20 notifications.
    assert!(!tally.read(&mut client, 22).await);
    assert_eq!(tally.next, 21, "{tally:?}");
    let last = tally.last_id.clone().unwrap();
    let id = ClientEventId::parse(&last).unwrap();
    assert!(
        id.upstream.is_none(),
        "the upstream id is too long to carry"
    );
    drop(client);
    h.restart().await;
    let resumes = h.upstream.resumes();
    h.upstream.release();
    let resp = h.resume(&sid, version, Some(&last)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        tally
            .read(&mut SseClient::new(resp.into_body()), u64::MAX)
            .await
    );
    assert_eq!(h.upstream.resumes(), resumes + 1, "resumed upstream");
    let asked = h.upstream.requests();
    let asked = asked
        .iter()
        .rev()
        .find_map(|r| r.headers.get("last-event-id"))
        .unwrap();
    assert!(asked.to_str().unwrap().ends_with("-20"), "{asked:?}");
    assert_eq!((tally.lost, tally.duplicated), (0, 0), "{tally:?}");
    assert_eq!((tally.delivered, tally.results), (50, 1));
}
