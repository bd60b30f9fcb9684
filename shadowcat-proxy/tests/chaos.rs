//! Exactly-once under stress, end to end. A `tools/call` streams 10,000
//! progress notifications to a client that reads slower than the upstream
//! produces (1 KiB reads, 1 ms apart). The client reaches the proxy through
//! a loopback TCP relay that resets the connection after a seeded random
//! 4–16 KiB toward the client; after every cut it resumes with GET and
//! `Last-Event-ID` through a new relay connection. It must get every
//! notification once, in order, then the final response, over at least 100
//! cuts. Three upstreams: HTTP with an event store, HTTP without one, and
//! a stdio server (`mcp-stdio-fixture`). Each case is bounded in time and
//! in resumes, and prints its figures. `SHADOWCAT_CHAOS_SEED` overrides the
//! seeds.

mod support;

use std::cell::Cell;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use shadowcat_proxy::forward::ChildCommand;
use shadowcat_proxy::{ReplayLimits, StdioUpstream};
use support::relay::{CutRelay, Pace, send_paced};
use support::sse::{Block, ReadError, Rng, SseClient};
use support::{Harness, POST_HEADERS, WAIT, call, stdio_fixture};

/// Notifications per stream.
const COUNT: u64 = 10_000;
/// Fewest client cuts a run must go through.
const MIN_CUTS: u64 = 100;
/// Each relay connection is cut after this many bytes toward the client.
const CUT_BYTES: (u64, u64) = (4 << 10, 16 << 10);
/// The slow client: about 1 MB/s.
const PACE: Pace = Pace {
    chunk: 1024,
    pause: Duration::from_millis(1),
};
/// Longest a case may run.
const LIMIT: Duration = Duration::from_secs(45);
/// Most resumes a case may make.
const MAX_RESUMES: u64 = 2_000;
const VERSION: &str = "2025-11-25";
/// `replay_retain_bytes` for these runs: above what this path holds in
/// flight (the proxy's own ~208 KiB, the relay's receive buffer of 128 KiB
/// and up). At 256 KiB the runs without an upstream event store fail.
const RETAIN: usize = 512 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upstream {
    HttpWithStore,
    HttpWithoutStore,
    Stdio,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_upstream_with_event_store_exactly_once_through_cuts() {
    chaos(Upstream::HttpWithStore, 0xc4a0_5001).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_upstream_without_event_store_exactly_once_through_cuts() {
    chaos(Upstream::HttpWithoutStore, 0xc4a0_5002).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_upstream_exactly_once_through_cuts() {
    chaos(Upstream::Stdio, 0xc4a0_5003).await;
}

async fn chaos(upstream: Upstream, default_seed: u64) {
    let seed = std::env::var("SHADOWCAT_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_seed);
    let stdio = (upstream == Upstream::Stdio).then(stdio_fixture);
    let h = Harness::start_with(|c| {
        // Smaller than the stream: the client's backlog cannot all be held,
        // so eviction, retention and a paused upstream all happen.
        c.limits.replay = ReplayLimits {
            max_events: 2048,
            max_bytes: 1 << 20,
            retain_bytes: RETAIN,
        };
        if let Some(fixture) = stdio {
            c.upstream_cmd = Some(StdioUpstream::new(ChildCommand::new(fixture)));
        }
    })
    .await;
    h.upstream
        .set_event_store(upstream != Upstream::HttpWithoutStore);
    let sid = h.init(VERSION).await;
    let initialized = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
    let resp = h
        .post(
            &[("mcp-session-id", &sid), ("mcp-protocol-version", VERSION)],
            &initialized,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let request = match upstream {
        Upstream::Stdio => {
            let mut c = call(2, "stream", json!({"count": COUNT}));
            c["params"]["_meta"] = json!({"progressToken": "p"});
            c
        }
        _ => call(2, "progress", json!({"count": COUNT})),
    };

    let relay = CutRelay::start(h.proxy, Rng(seed), CUT_BYTES.0, CUT_BYTES.1).await;
    let mut ledger = Ledger::new();
    let started = Instant::now();
    // When the HTTP upstream had handed out every event: the client is
    // behind if it finishes later.
    let upstream_done = Cell::new(None);
    let watch = async {
        if upstream != Upstream::Stdio && h.upstream.wait_all_sent(LIMIT).await {
            upstream_done.set(Some(started.elapsed()));
        }
        std::future::pending::<Result<(), String>>().await
    };
    let run = tokio::time::timeout(
        LIMIT,
        stream_through_cuts(&relay, &sid, &request, &mut ledger),
    );
    let outcome = tokio::select! {
        r = run => r.unwrap_or_else(|_| Err(format!("not done within {LIMIT:?}"))),
        never = watch => never,
    };
    let elapsed = started.elapsed();

    let summary = ledger.summary();
    let upstream_note = match upstream_done.get() {
        Some(t) => format!(", the upstream sent its last event at {t:.2?}"),
        None => String::new(),
    };
    eprintln!(
        "chaos {upstream:?} seed {seed:#x}: {summary}; relay cuts {}; {elapsed:.2?}{upstream_note}",
        relay.cuts()
    );
    if let Err(e) = outcome {
        panic!("chaos {upstream:?} seed {seed:#x}: {e}\n  {summary}");
    }
    assert!(
        ledger.lost() == 0
            && ledger.duplicated == 0
            && ledger.out_of_order == 0
            && ledger.results == 1,
        "chaos {upstream:?} seed {seed:#x}: not exactly once: {summary}"
    );
    assert!(
        ledger.cuts >= MIN_CUTS,
        "chaos {upstream:?} seed {seed:#x}: only {} cuts (want {MIN_CUTS}): {summary}",
        ledger.cuts
    );
}

/// POSTs `call` through the relay, then resumes after every cut until the
/// final response; `Err` names the request that went wrong and how.
async fn stream_through_cuts(
    relay: &CutRelay,
    sid: &str,
    call: &Value,
    ledger: &mut Ledger,
) -> Result<(), String> {
    let mut what = "the POST".to_owned();
    let post = request(relay, "POST", sid, None, call.to_string());
    let (mut resp, mut local) = send_paced(relay.addr(), PACE, post).await?;
    for _ in 0..=MAX_RESUMES {
        let status = resp.status();
        if status != StatusCode::OK {
            let body = match tokio::time::timeout(WAIT, resp.into_body().collect()).await {
                Ok(Ok(b)) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
                _ => "<unreadable body>".to_owned(),
            };
            return Err(format!("{what} got {status}: {body}"));
        }
        let mut client = SseClient::new(resp.into_body());
        loop {
            match client.next_within(WAIT).await {
                Ok(Some(block)) => {
                    ledger.see(&block).map_err(|e| format!("{what}: {e}"))?;
                    if ledger.results > 0 {
                        return Ok(());
                    }
                }
                Ok(None) => return Err(format!("{what}: the stream ended before the response")),
                Err(ReadError::Stalled) => return Err(format!("{what}: no data for {WAIT:?}")),
                Err(ReadError::Broke(_)) if relay.was_cut(local) => break,
                Err(ReadError::Broke(e)) => {
                    return Err(format!("{what}: the stream broke with no cut: {e}"));
                }
            }
        }
        ledger.cut();
        let last = ledger
            .last_id
            .clone()
            .ok_or_else(|| format!("{what}: cut before any event id"))?;
        what = format!(
            "resume {} (Last-Event-ID {last}, after progress {})",
            ledger.cuts,
            ledger.next - 1
        );
        let get = request(relay, "GET", sid, Some(&last), String::new());
        (resp, local) = send_paced(relay.addr(), PACE, get)
            .await
            .map_err(|e| format!("{what}: {e}"))?;
    }
    Err(format!("no final response after {MAX_RESUMES} resumes"))
}

fn request(
    relay: &CutRelay,
    method: &str,
    sid: &str,
    last: Option<&str>,
    body: String,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri("/mcp")
        .header("host", relay.addr().to_string())
        .header("mcp-session-id", sid)
        .header("mcp-protocol-version", VERSION);
    if method == "POST" {
        for (k, v) in POST_HEADERS {
            b = b.header(k, v);
        }
    } else {
        b = b.header("accept", "text/event-stream");
    }
    if let Some(last) = last {
        b = b.header("last-event-id", last);
    }
    b.body(Full::new(Bytes::from(body)))
        .expect("request builds")
}

/// What the client received of the stream, across cuts.
struct Ledger {
    /// `seen[p]`: progress `p` arrived.
    seen: Vec<bool>,
    distinct: u64,
    /// One past the highest progress seen.
    next: u64,
    /// Notifications received, repeats included.
    delivered: u64,
    duplicated: u64,
    /// Arrived after a higher one.
    out_of_order: u64,
    results: u64,
    /// The id a resume starts after.
    last_id: Option<String>,
    cuts: u64,
    /// Set at a cut, cleared by the first new event after it.
    cut_at: Option<Instant>,
    /// Longest time from a cut to the first new event after it.
    worst_gap: Duration,
    /// Cuts followed by a new event.
    resumed: u64,
}

impl Ledger {
    fn new() -> Self {
        Ledger {
            seen: vec![false; COUNT as usize + 1],
            distinct: 0,
            next: 1,
            delivered: 0,
            duplicated: 0,
            out_of_order: 0,
            results: 0,
            last_id: None,
            cuts: 0,
            cut_at: None,
            worst_gap: Duration::ZERO,
            resumed: 0,
        }
    }

    fn cut(&mut self) {
        self.cuts += 1;
        self.cut_at = Some(Instant::now());
    }

    fn new_event(&mut self) {
        if let Some(at) = self.cut_at.take() {
            self.worst_gap = self.worst_gap.max(at.elapsed());
            self.resumed += 1;
        }
    }

    fn see(&mut self, block: &Block) -> Result<(), String> {
        if let Some(id) = &block.id {
            self.last_id = Some(id.clone());
        }
        // Id-only blocks and priming events carry no message.
        let Some(data) = block.data.as_deref().filter(|d| !d.is_empty()) else {
            return Ok(());
        };
        let v: Value =
            serde_json::from_str(data).map_err(|e| format!("data is not JSON ({e}): {data}"))?;
        if v["method"] == "notifications/progress" {
            let p = v["params"]["progress"]
                .as_u64()
                .filter(|p| (1..=COUNT).contains(p))
                .ok_or_else(|| format!("a progress out of range: {v}"))?;
            self.delivered += 1;
            let slot = &mut self.seen[p as usize];
            if *slot {
                self.duplicated += 1;
                return Ok(());
            }
            *slot = true;
            self.distinct += 1;
            self.new_event();
            if p < self.next {
                self.out_of_order += 1;
            } else {
                self.next = p + 1;
            }
        } else if v.get("result").is_some() {
            self.results += 1;
            self.new_event();
        } else if v.get("error").is_some() {
            return Err(format!("a JSON-RPC error on the stream: {v}"));
        }
        Ok(())
    }

    /// Notifications never received.
    fn lost(&self) -> u64 {
        COUNT - self.distinct
    }

    fn summary(&self) -> String {
        let first_missing = (1..=COUNT)
            .find(|&p| !self.seen[p as usize])
            .map_or_else(String::new, |p| format!(" (first missing: {p})"));
        format!(
            "events {} of {COUNT}, cuts {}, lost {}{first_missing}, duplicated {}, \
             out of order {}, worst resume gap {:.2?} over {} resumes, final response {}",
            self.delivered,
            self.cuts,
            self.lost(),
            self.duplicated,
            self.out_of_order,
            self.worst_gap,
            self.resumed,
            if self.results == 1 { "yes" } else { "no" },
        )
    }
}
