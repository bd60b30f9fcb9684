//! SSE resilience end to end, through a real proxy to the test upstream on
//! loopback: upstream cuts, client cuts with `Last-Event-ID`, the
//! replay/live race under load, forged ids, eviction, SSE polling. Every
//! stream is checked for exactly-once, in-order delivery and its final
//! response. Cut points are seeded.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;
use shadowcat_proxy::ClientEventId;
use shadowcat_proxy::ReplayLimits;
use shadowcat_proxy::ReverseProxyConfig;
use support::sse::{Rng, SseClient, Tally};
use support::{Harness, assert_rpc_error, call};

/// Fast reconnects: the tests cut often.
fn fast(c: &mut ReverseProxyConfig) {
    c.limits.reconnect.base = Duration::from_millis(1);
    c.limits.reconnect.cap = Duration::from_millis(20);
}

fn headers<'a>(sid: &'a str, version: &'a str) -> [(&'a str, &'a str); 2] {
    [("mcp-session-id", sid), ("mcp-protocol-version", version)]
}

fn cut_points(rng: &mut Rng, n: usize, count: u64) -> BTreeSet<u64> {
    (0..n).map(|_| rng.between_1_and(count)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_cuts_at_random_points_lose_and_duplicate_nothing() {
    let h = Harness::start_with(fast).await;
    let mut rng = Rng(0x5eed_0001);
    let count = 3000;
    let mut planned = 0;
    let mut delivered = 0;
    for (n, version) in ["2025-03-26", "2025-06-18", "2025-11-25"]
        .into_iter()
        .enumerate()
    {
        let sid = h.init(version).await;
        let cuts = cut_points(&mut rng, 40, count);
        planned += cuts.len() as u64;
        let id = 10 + n as u64;
        let resp = h
            .post(
                &headers(&sid, version),
                &call(id, "progress", json!({"count": count, "cuts": cuts})),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let mut tally = Tally::new();
        let ended = tally
            .read(&mut SseClient::new(resp.into_body()), u64::MAX)
            .await;
        assert!(ended);
        tally.assert_exactly_once(count);
        delivered += tally.delivered;
    }
    assert_eq!(
        h.upstream.cuts_done(),
        planned,
        "every planned cut happened"
    );
    assert!(
        h.upstream.resumes() >= planned,
        "each cut was resumed upstream"
    );
    eprintln!("upstream cuts: {planned}, events delivered: {delivered}, lost 0, duplicated 0");
}

/// Reads `count` progress events from a POST stream, cutting the client
/// connection at `cuts` (block counts) and resuming with `Last-Event-ID`.
async fn read_with_client_cuts(
    h: &Harness,
    sid: &str,
    version: &str,
    count: u64,
    upstream_cuts: &BTreeSet<u64>,
    client_cuts: &BTreeSet<u64>,
    rpc_id: u64,
) -> Tally {
    let resp = h
        .post(
            &headers(sid, version),
            &call(
                rpc_id,
                "progress",
                json!({"count": count, "cuts": upstream_cuts}),
            ),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut tally = Tally::new();
    let mut client = SseClient::new(resp.into_body());
    let mut seen = 0;
    for &cut in client_cuts {
        if cut <= seen {
            continue;
        }
        if tally.read(&mut client, cut - seen).await {
            return tally;
        }
        seen = cut;
        drop(client);
        let last = tally.last_id.clone().expect("an id before the cut");
        let started = Instant::now();
        let resp = h.resume(sid, version, Some(&last)).await;
        assert_eq!(resp.status(), StatusCode::OK, "resume after {last}");
        client = SseClient::new(resp.into_body());
        // The first block arrives: resume time.
        match client.next().await {
            Ok(Some(b)) => {
                tally.resumed(started);
                tally.see(&b);
                seen += 1;
            }
            other => panic!("resumed stream gave {other:?}"),
        }
    }
    assert!(tally.read(&mut client, u64::MAX).await);
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cuts_at_random_points_resume_exactly_once() {
    let h = Harness::start_with(fast).await;
    let mut rng = Rng(0x5eed_0002);
    let count = 4000;
    let mut cuts_total = 0;
    let mut worst = Duration::ZERO;
    for (n, version) in ["2025-06-18", "2025-11-25"].into_iter().enumerate() {
        let sid = h.init(version).await;
        let cuts = cut_points(&mut rng, 40, count);
        cuts_total += cuts.len();
        let tally =
            read_with_client_cuts(&h, &sid, version, count, &BTreeSet::new(), &cuts, n as u64)
                .await;
        tally.assert_exactly_once(count);
        worst = worst.max(tally.worst_resume);
    }
    // Everything came from the replay buffer: the upstream never replayed.
    assert_eq!(h.upstream.resumes(), 0);
    eprintln!("client cuts: {cuts_total}, worst resume {worst:?}, lost 0, duplicated 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_live_race_under_load_with_cuts_on_both_sides() {
    let h = std::sync::Arc::new(Harness::start_with(fast).await);
    let mut rng = Rng(0x5eed_0003);
    let count = 3000;
    let mut tasks = Vec::new();
    let mut planned = 0;
    for n in 0..6u64 {
        let upstream_cuts = cut_points(&mut rng, 15, count);
        let client_cuts = cut_points(&mut rng, 25, count);
        planned += upstream_cuts.len() + client_cuts.len();
        let h = std::sync::Arc::clone(&h);
        tasks.push(tokio::spawn(async move {
            let version = if n % 2 == 0 {
                "2025-11-25"
            } else {
                "2025-06-18"
            };
            let sid = h.init(version).await;
            read_with_client_cuts(&h, &sid, version, count, &upstream_cuts, &client_cuts, n).await
        }));
    }
    let mut worst = Duration::ZERO;
    let mut delivered = 0;
    for t in tasks {
        let tally = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("streams finish in time")
            .expect("stream task");
        tally.assert_exactly_once(count);
        worst = worst.max(tally.worst_resume);
        delivered += tally.delivered;
    }
    eprintln!(
        "6 concurrent streams, cuts: {planned}, events delivered: {delivered}, worst resume {worst:?}, lost 0, duplicated 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_other_session_and_other_stream_ids_are_rejected() {
    let h = Harness::start_with(fast).await;
    let a = h.init("2025-06-18").await;
    let b = h.init("2025-06-18").await;
    // A complete stream in each session.
    let mut ids = Vec::new();
    for sid in [&a, &b] {
        let resp = h
            .post(
                &headers(sid, "2025-06-18"),
                &call(1, "progress", json!({"count": 5})),
            )
            .await;
        let mut tally = Tally::new();
        let mut client = SseClient::new(resp.into_body());
        assert!(!tally.read(&mut client, 2).await);
        ids.push(tally.last_id.clone().unwrap());
        drop(client);
    }
    let (id_a, id_b) = (&ids[0], &ids[1]);
    let parsed = ClientEventId::parse(id_a).unwrap();
    let tag = format!("{:016x}", parsed.tag);
    let up = parsed.upstream.clone().unwrap();
    let forged = [
        // Another session's id.
        id_b.clone(),
        // Another stream, another position, another upstream id: same tag.
        format!("{}.{}.{tag}.{up}", parsed.stream ^ 1, parsed.seq),
        format!("{}.{}.{tag}.{up}", parsed.stream, parsed.seq + 1),
        format!("{}.{}.{tag}.s99-1", parsed.stream, parsed.seq),
        format!("{}.{}.{tag}", parsed.stream, parsed.seq),
        // Not ours at all.
        "s0-1".to_owned(),
        "1.2.3".to_owned(),
    ];
    let before = h.upstream.requests().len();
    for f in &forged {
        let resp = h.resume(&a, "2025-06-18", Some(f)).await;
        let msg = assert_rpc_error(resp, StatusCode::BAD_REQUEST, -32600).await;
        assert!(msg.contains("Last-Event-ID"), "{f}: {msg}");
    }
    assert_eq!(
        h.upstream.requests().len(),
        before,
        "nothing reached the upstream"
    );
    // The genuine ids still resume, each in its own session only.
    for (sid, id) in [(&a, id_a), (&b, id_b)] {
        let resp = h.resume(sid, "2025-06-18", Some(id)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let mut tally = Tally::new();
        tally.next = 3;
        assert!(tally.read(&mut SseClient::new(resp.into_body()), 100).await);
        assert_eq!(
            (tally.delivered, tally.lost, tally.duplicated),
            (3, 0, 0),
            "{tally:?}"
        );
        assert_eq!(tally.results, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_buffer_resumes_from_the_upstream_via_the_carried_id() {
    let h = Harness::start_with(|c| {
        fast(c);
        c.limits.replay = ReplayLimits {
            max_events: 64,
            max_bytes: 1 << 20,
            retain_bytes: 0,
        };
    })
    .await;
    let version = "2025-11-25";
    let sid = h.init(version).await;
    let count = 2000;
    // (a) The stream is live and the client holds less than the proxy
    // still buffers: it asks from an older id of its own.
    let resp = h
        .post(
            &headers(&sid, version),
            &call(5, "progress", json!({"count": count})),
        )
        .await;
    let mut live = SseClient::new(resp.into_body());
    let mut first = Tally::new();
    // Two priming events (the proxy's and the upstream's), then 100
    // notifications.
    assert!(!first.read(&mut live, 102).await);
    assert_eq!((first.primings, first.next), (2, 101), "{first:?}");
    let old = first.last_id.clone().unwrap();
    assert!(!first.read(&mut live, 400).await);
    let resumes = h.upstream.resumes();
    let resp = h.resume(&sid, version, Some(&old)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut tally = Tally::new();
    tally.next = 101;
    assert!(
        tally
            .read(&mut SseClient::new(resp.into_body()), u64::MAX)
            .await
    );
    assert_eq!(
        h.upstream.resumes(),
        resumes + 1,
        "resumed from the upstream"
    );
    assert_eq!((tally.lost, tally.duplicated), (0, 0), "{tally:?}");
    assert_eq!(tally.delivered, count - 100);
    assert_eq!(tally.results, 1);
    // The superseded connection ended.
    assert!(first.read(&mut live, u64::MAX).await);

    // (b) The stream completed and was released: no buffer at all.
    let resp = h
        .post(
            &headers(&sid, version),
            &call(6, "progress", json!({"count": 300})),
        )
        .await;
    let mut all = Tally::new();
    let mut client = SseClient::new(resp.into_body());
    assert!(!all.read(&mut client, 52).await);
    assert_eq!((all.primings, all.next), (2, 51), "{all:?}");
    let old = all.last_id.clone().unwrap();
    assert!(all.read(&mut client, u64::MAX).await);
    all.assert_exactly_once(300);
    let resp = h.resume(&sid, version, Some(&old)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut again = Tally::new();
    again.next = 51;
    assert!(
        again
            .read(&mut SseClient::new(resp.into_body()), u64::MAX)
            .await
    );
    assert_eq!(
        (again.lost, again.duplicated, again.delivered, again.results),
        (0, 0, 250, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_polling_upstream_gives_one_unbroken_stream() {
    let h = Harness::start_with(fast).await;
    let version = "2025-11-25";
    let sid = h.init(version).await;
    let count = 500;
    let resp = h
        .post(
            &headers(&sid, version),
            &call(3, "progress", json!({"count": count, "poll": 40})),
        )
        .await;
    let mut tally = Tally::new();
    assert!(
        tally
            .read(&mut SseClient::new(resp.into_body()), u64::MAX)
            .await
    );
    tally.assert_exactly_once(count);
    assert_eq!(
        tally.retry,
        Some(5),
        "the upstream's retry: reaches the client"
    );
    assert!(
        h.upstream.resumes() >= count / 40,
        "polled: {}",
        h.upstream.resumes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_stream_resumes_from_the_buffer() {
    let h = Harness::start_with(fast).await;
    let sid = h.init("2025-11-25").await;
    let resp = h.resume(&sid, "2025-11-25", None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut client = SseClient::new(resp.into_body());
    // The upstream's priming event (the proxy primes request streams
    // only), then "hello".
    let priming = client.next().await.unwrap().unwrap();
    assert_eq!(
        priming.data.as_deref(),
        Some(""),
        "priming event: {priming:?}"
    );
    let hello = client.next().await.unwrap().unwrap();
    assert!(hello.data.unwrap().contains("hello"));
    let priming_id = priming.id.unwrap();
    assert!(ClientEventId::parse(&priming_id).unwrap().is_get_stream());
    drop(client);
    // Resume after the priming event: the notification again, once.
    let resp = h.resume(&sid, "2025-11-25", Some(&priming_id)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut client = SseClient::new(resp.into_body());
    let again = client.next().await.unwrap().unwrap();
    assert_eq!(again.id, hello.id);
    assert!(again.data.unwrap().contains("hello"));
}

/// Sent is not received: events written to a client stay resumable from
/// the buffer while less than `retain_bytes` was written after them, even
/// far past `max_events`, with no upstream resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn written_events_within_the_retention_resume_from_the_buffer() {
    let h = Harness::start_with(|c| {
        fast(c);
        c.limits.replay = ReplayLimits {
            max_events: 64,
            max_bytes: 1 << 20,
            retain_bytes: 512 << 10,
        };
    })
    .await;
    let version = "2025-11-25";
    let sid = h.init(version).await;
    let count = 2000;
    let resp = h
        .post(
            &headers(&sid, version),
            &call(5, "progress", json!({"count": count})),
        )
        .await;
    let mut live = SseClient::new(resp.into_body());
    let mut first = Tally::new();
    assert!(!first.read(&mut live, 102).await);
    let old = first.last_id.clone().unwrap();
    // Another 1,500 events go out: about 200 KB, within the retention.
    assert!(!first.read(&mut live, 1500).await);
    let resumes = h.upstream.resumes();
    let resp = h.resume(&sid, version, Some(&old)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut tally = Tally::new();
    tally.next = 101;
    assert!(
        tally
            .read(&mut SseClient::new(resp.into_body()), u64::MAX)
            .await
    );
    assert_eq!(h.upstream.resumes(), resumes, "served from the buffer");
    assert_eq!((tally.lost, tally.duplicated), (0, 0), "{tally:?}");
    assert_eq!(tally.delivered, count - 100);
    assert_eq!(tally.results, 1);
}
