//! Process-level resilience: `kill -9` of the `shadowcat` binary mid-stream
//! and a restart on the same embedded store file; two instances on one
//! real Redis with the one a client streams through killed. Each time the
//! client resumes with `Mcp-Session-Id` + `Last-Event-ID` and receives
//! every remaining event exactly once, in order, with the final response.

#[allow(dead_code)]
#[path = "../../shadowcat-session/tests/support/redis.rs"]
mod redis;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use shadowcat_proxy::test_util::TestUpstream;

const WAIT: Duration = Duration::from_secs(20);
const VERSION: &str = "2025-11-25";

/// A running `shadowcat reverse`; killed with SIGKILL when dropped.
struct Proxy {
    child: Child,
    addr: String,
}

impl Proxy {
    fn start(upstream: &str, store: &str) -> Proxy {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shadowcat"));
        for (k, _) in std::env::vars() {
            if k.starts_with("SHADOWCAT_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .env("RUST_LOG", "info")
            .args(["--log-format", "json", "--store", store])
            .args(["reverse", "--upstream", upstream])
            .args(["--bind", "127.0.0.1:0", "--admin-bind", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shadowcat");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let msg = v["fields"]["message"].as_str().unwrap_or("");
                if msg.contains("reverse proxy listening")
                    && let Some(a) = v["fields"]["addr"].as_str()
                {
                    let _ = tx.send(a.to_owned());
                }
            }
        });
        let addr = rx.recv_timeout(WAIT).expect("shadowcat logs its address");
        Proxy { child, addr }
    }

    /// SIGKILL, as `kill -9`.
    fn kill(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reaped");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn request(
    client: &HttpClient,
    method: &str,
    addr: &str,
    headers: &[(&str, &str)],
    body: String,
) -> http::Response<Incoming> {
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}/mcp"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::from(body))).unwrap();
    tokio::time::timeout(WAIT, client.request(req))
        .await
        .expect("answer in time")
        .expect("answer")
}

async fn initialize(client: &HttpClient, addr: &str) -> String {
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":VERSION,"capabilities":{},"clientInfo":{"name":"t","version":"0"}}});
    let resp = request(
        client,
        "POST",
        addr,
        &[
            ("accept", "application/json, text/event-stream"),
            ("content-type", "application/json"),
        ],
        init.to_string(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let sid = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let _ = resp.into_body().collect().await.unwrap();
    sid
}

/// What the client saw of one progress stream, across proxies.
#[derive(Debug, Default)]
struct Tally {
    next: u64,
    delivered: u64,
    lost: u64,
    duplicated: u64,
    results: u64,
    last_id: Option<String>,
}

impl Tally {
    /// Reads blocks until `limit` or the end (true). A broken stream (the
    /// proxy was killed) also ends the read (false).
    async fn read(&mut self, body: &mut Incoming, buf: &mut Vec<u8>, limit: u64) -> bool {
        let mut n = 0;
        while n < limit {
            if let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = buf.drain(..pos + 2).collect();
                let text = String::from_utf8(block).unwrap();
                for line in text.lines() {
                    if let Some(id) = line.strip_prefix("id: ") {
                        self.last_id = Some(id.to_owned());
                    } else if let Some(data) = line.strip_prefix("data: ") {
                        let v: Value = serde_json::from_str(data).unwrap();
                        if v["method"] == "notifications/progress" {
                            let p = v["params"]["progress"].as_u64().unwrap();
                            self.delivered += 1;
                            if p < self.next {
                                self.duplicated += 1;
                            } else {
                                self.lost += p - self.next;
                                self.next = p + 1;
                            }
                        } else if v.get("result").is_some() {
                            self.results += 1;
                        } else {
                            panic!("unexpected message {v}");
                        }
                    }
                }
                n += 1;
                continue;
            }
            match tokio::time::timeout(WAIT, body.frame())
                .await
                .expect("a frame in time")
            {
                None => return true,
                Some(Err(_)) => return false,
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        buf.extend_from_slice(&d);
                    }
                }
            }
        }
        false
    }
}

/// Streams `count` progress events through `first`, reads `before`
/// blocks, runs `fail` (which kills `first`), then resumes through the
/// proxy `second()` returns and checks exactly-once delivery. Returns the
/// resume time.
async fn stream_across_a_kill(
    client: &HttpClient,
    first: Proxy,
    second: impl FnOnce() -> Proxy,
    count: u64,
    before: u64,
) -> (Duration, Proxy) {
    let sid = initialize(client, &first.addr).await;
    let call = json!({"jsonrpc":"2.0","id":7,"method":"tools/call",
        "params":{"name":"progress","arguments":{"count":count}}});
    let resp = request(
        client,
        "POST",
        &first.addr,
        &[
            ("accept", "application/json, text/event-stream"),
            ("content-type", "application/json"),
            ("mcp-session-id", &sid),
            ("mcp-protocol-version", VERSION),
        ],
        call.to_string(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut tally = Tally {
        next: 1,
        ..Tally::default()
    };
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    assert!(!tally.read(&mut body, &mut buf, before).await);
    first.kill();
    // What the killed proxy still had in flight is lost with it: the client
    // resumes from the last complete event it holds.
    let _ = tally.read(&mut body, &mut buf, u64::MAX).await;
    drop(body);
    let held = tally.next - 1;
    assert!(held >= before - 1 && held < count, "held {held}");
    let second = second();
    let last = tally.last_id.clone().expect("an event id");
    let started = Instant::now();
    let resp = request(
        client,
        "GET",
        &second.addr,
        &[
            ("accept", "text/event-stream"),
            ("mcp-session-id", &sid),
            ("mcp-protocol-version", VERSION),
            ("last-event-id", &last),
        ],
        String::new(),
    )
    .await;
    assert_eq!(resp.status(), 200, "resume through the other proxy");
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    assert!(!tally.read(&mut body, &mut buf, 1).await);
    let resume = started.elapsed();
    assert!(tally.read(&mut body, &mut buf, u64::MAX).await);
    assert_eq!((tally.lost, tally.duplicated), (0, 0), "{tally:?}");
    assert_eq!(tally.delivered, count, "{tally:?}");
    assert_eq!(tally.results, 1, "{tally:?}");
    (resume, second)
}

fn temp_store(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("shadowcat-failover-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("s.redb")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_on_the_same_file_loses_and_duplicates_nothing() {
    let upstream = TestUpstream::start().await.unwrap();
    let url = upstream.url().to_string();
    let store = format!("file:{}", temp_store("kill9").display());
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut worst = Duration::ZERO;
    // Seeded cut points: the same run every time, spread over the stream.
    let cuts = cut_points(0x5ca7_0001, KILLS, 20_000);
    for &before in &cuts {
        let first = Proxy::start(&url, &store);
        let (resume, second) = stream_across_a_kill(
            &client,
            first,
            || Proxy::start(&url, &store),
            20_000,
            before,
        )
        .await;
        worst = worst.max(resume);
        drop(second);
    }
    assert!(
        upstream.resumes() >= KILLS as u64,
        "resumed from the upstream's store"
    );
    eprintln!(
        "kill -9 + restart: {KILLS} cuts at {cuts:?} of 20000 events, worst resume {worst:?}, lost 0, duplicated 0"
    );
}

/// How many times each process-level test kills a proxy.
const KILLS: usize = 5;

/// `n` cut points in the first quarter of a `count`-event stream (the
/// upstream is fast: a later cut may find the stream already complete),
/// from a seeded SplitMix64.
fn cut_points(mut seed: u64, n: usize, count: u64) -> Vec<u64> {
    (0..n)
        .map(|_| {
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            2 + z % (count / 4)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_survive_the_loss_of_one() {
    let redis = redis::RedisServer::start();
    let upstream = TestUpstream::start().await.unwrap();
    let url = upstream.url().to_string();
    let store = redis.url();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    // Each round kills the instance the client streams through and
    // resumes through the other one, which a fresh instance then backs up.
    let cuts = cut_points(0x5ca7_0002, KILLS, 20_000);
    let mut current = Proxy::start(&url, &store);
    let mut worst = Duration::ZERO;
    for &before in &cuts {
        let other = Proxy::start(&url, &store);
        let (resume, survivor) =
            stream_across_a_kill(&client, current, || other, 20_000, before).await;
        worst = worst.max(resume);
        current = survivor;
    }
    eprintln!(
        "redis failover: {KILLS} instance losses at {cuts:?} of 20000 events, worst resume {worst:?}, lost 0, duplicated 0"
    );
}
