//! Several instances sharing streams through the replay log on a real
//! `redis-server`: a resume on an instance that does not own the stream is
//! served from the log with the same ids, a non-owner holds no stream of
//! its own, and when the owner goes another instance takes the stream over
//! (resuming an upstream that keeps events; ending with a named JSON-RPC
//! error when it keeps none).

#[path = "../../shadowcat-session/tests/support/redis.rs"]
#[allow(dead_code)]
mod redis_server;
mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use shadowcat_proxy::test_util::TestUpstream;
use shadowcat_proxy::{ClusterConfig, ReverseProxy, ReverseProxyConfig};
use shadowcat_session::redis_store::{RedisStore, RedisStoreConfig};
use shadowcat_session::{
    BatchingWriter, Notifier, ReplayLogs, Retention, SessionStore, WriterConfig,
};
use support::sse::{SseClient, Tally};
use support::{POST_HEADERS, WAIT, call, initialize};
use tokio::sync::oneshot;

const V: &str = "2025-11-25";

/// One proxy instance on a runtime of its own, so that dropping it ends
/// every task it has (readers, lease renewals, connections) at once, with
/// no drain and no lease given back: as `kill -9` does.
struct Instance {
    addr: std::net::SocketAddr,
    /// The instance's replay-log client (its counters).
    logs: ReplayLogs,
    admin: shadowcat_proxy::admin::Admin,
    rt: Option<tokio::runtime::Runtime>,
}

impl Instance {
    async fn start(upstream: &TestUpstream, redis: &str, name: &str, ttl: Duration) -> Instance {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = oneshot::channel();
        let (upstream, redis, name) = (upstream.url(), redis.to_owned(), name.to_owned());
        rt.spawn(async move {
            let store: Arc<dyn SessionStore> = Arc::new(
                RedisStore::connect(&redis, RedisStoreConfig::default())
                    .await
                    .expect("redis store connects"),
            );
            let writer = BatchingWriter::start(Arc::clone(&store), WriterConfig::default());
            let mut config = ReverseProxyConfig::new(upstream);
            config.bind = "127.0.0.1:0".parse().unwrap();
            let logs = ReplayLogs::connect(&redis, Default::default())
                .await
                .expect("replay log connects");
            config.cluster = Some(ClusterConfig {
                logs: logs.clone(),
                notifier: Notifier::start(&redis).expect("notifier starts"),
                instance_id: name,
                lease_ttl: ttl,
                retention: Retention {
                    max_len: 100_000,
                    max_age: None,
                },
                wait: Duration::from_secs(3),
            });
            let proxy = ReverseProxy::bind(config, store, Some(writer.handle()))
                .await
                .expect("proxy binds");
            let _ = tx.send((proxy.local_addr(), logs, proxy.admin()));
            let _ = proxy.serve(std::future::pending::<()>()).await;
            drop(writer);
        });
        let (addr, logs, admin) = tokio::time::timeout(WAIT, rx)
            .await
            .expect("instance starts in time")
            .expect("instance starts");
        Instance {
            addr,
            logs,
            admin,
            rt: Some(rt),
        }
    }

    /// Dies at once (see the type's docs).
    fn kill(mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

struct Client2(Client<HttpConnector, Full<Bytes>>);

impl Client2 {
    fn new() -> Self {
        Client2(Client::builder(TokioExecutor::new()).build_http())
    }

    async fn send(
        &self,
        at: std::net::SocketAddr,
        method: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> Response<Incoming> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{at}/mcp"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        tokio::time::timeout(
            WAIT,
            self.0.request(b.body(Full::new(body.into())).unwrap()),
        )
        .await
        .expect("answers in time")
        .expect("answers")
    }

    async fn init(&self, at: std::net::SocketAddr) -> String {
        let resp = self
            .send(at, "POST", &POST_HEADERS, initialize(V).to_string())
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let sid = resp.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let _ = resp.into_body().collect().await;
        let mut h = POST_HEADERS.to_vec();
        h.push(("mcp-session-id", &sid));
        h.push(("mcp-protocol-version", V));
        let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
        let resp = self.send(at, "POST", &h, note.to_string()).await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        sid
    }

    async fn call(&self, at: std::net::SocketAddr, sid: &str, args: Value) -> Response<Incoming> {
        let mut h = POST_HEADERS.to_vec();
        h.push(("mcp-session-id", sid));
        h.push(("mcp-protocol-version", V));
        let resp = self
            .send(at, "POST", &h, call(2, "progress", args).to_string())
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        resp
    }

    async fn resume(&self, at: std::net::SocketAddr, sid: &str, last: &str) -> Response<Incoming> {
        let h = [
            ("accept", "text/event-stream"),
            ("mcp-session-id", sid),
            ("mcp-protocol-version", V),
            ("last-event-id", last),
        ];
        self.send(at, "GET", &h, String::new()).await
    }
}

/// A stream opened on A, cut every few hundred events, resumed in turn on
/// B, C and A: every event once, in order, and every resume on B or C is
/// served from the log with A's ids (the upstream is never asked to
/// resume: it keeps no events).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_on_other_instances_come_from_the_log() {
    let redis = redis_server::RedisServer::start();
    let upstream = TestUpstream::start().await.unwrap();
    upstream.set_event_store(false);
    let ttl = Duration::from_secs(5);
    let a = Instance::start(&upstream, &redis.url(), "a", ttl).await;
    let b = Instance::start(&upstream, &redis.url(), "b", ttl).await;
    let c = Instance::start(&upstream, &redis.url(), "c", ttl).await;
    let at = [a.addr, b.addr, c.addr];
    let client = Client2::new();
    let sid = client.init(a.addr).await;
    const N: u64 = 3_000;
    let resp = client.call(a.addr, &sid, json!({"count": N})).await;
    let mut sse = SseClient::new(resp.into_body());
    let mut tally = Tally::new();
    let mut cuts = 0;
    let mut stream_no = None;
    let mut checked_held = 0;
    let started = std::time::Instant::now();
    loop {
        let done = tally.read(&mut sse, 250).await;
        if cuts % 3 != 0 {
            // Gate: an instance serving a stream it does not own holds
            // none of it (no replay buffer, no bytes in its budget).
            let other = if cuts % 3 == 1 { &b } else { &c };
            let report = other.admin.streams();
            assert!(report.streams.is_empty(), "{:?}", report.streams);
            assert_eq!(report.buffered_bytes, 0);
            checked_held += 1;
        }
        let last = tally.last_id.clone().expect("an id to resume with");
        let no = last.split('.').next().unwrap().to_owned();
        assert_eq!(
            *stream_no.get_or_insert(no.clone()),
            no,
            "the stream number never changes"
        );
        if done {
            break;
        }
        cuts += 1;
        let to = at[cuts % 3];
        let resp = client.resume(to, &sid, &last).await;
        assert_eq!(resp.status(), StatusCode::OK, "resume on {to}");
        sse = SseClient::new(resp.into_body());
    }
    tally.assert_exactly_once(N);
    assert!(cuts >= 10, "{cuts} cuts");
    assert!(checked_held >= 6);
    assert_eq!(
        upstream.resumes(),
        0,
        "the upstream was never asked to resume"
    );
    // Gate: one round trip per batch on the owner, plus the lease (take,
    // renewals, give back); batches carry several events.
    let (appends, trips) = (a.logs.appends(), a.logs.round_trips());
    let renewals = (started.elapsed().as_millis() / (ttl.as_millis() / 3)) as u64 + 1;
    assert!(
        trips <= appends + 2 + renewals,
        "{trips} round trips for {appends} batches"
    );
    assert!(
        appends < N,
        "{appends} batches for {N} events: events are batched"
    );
    eprintln!(
        "owner: {N} events in {appends} batches ({:.1} events per batch), {trips} round trips",
        N as f64 / appends as f64
    );
    drop((a, b, c));
}

/// The owner dies mid-stream (no drain, its lease lapses); the reader on
/// another instance takes the stream over and resumes the upstream after
/// the last logged event: every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_owners_stream_is_taken_over_and_resumed_upstream() {
    let redis = redis_server::RedisServer::start();
    let upstream = TestUpstream::start().await.unwrap();
    let ttl = Duration::from_millis(600);
    let a = Instance::start(&upstream, &redis.url(), "a", ttl).await;
    let b = Instance::start(&upstream, &redis.url(), "b", ttl).await;
    let client = Client2::new();
    let sid = client.init(a.addr).await;
    const N: u64 = 2_000;
    // The first connection stalls after 500 events: the owner dies while
    // the stream is open.
    let resp = client
        .call(a.addr, &sid, json!({"count": N, "stall": 500}))
        .await;
    let mut sse = SseClient::new(resp.into_body());
    let mut tally = Tally::new();
    assert!(!tally.read(&mut sse, 2).await);
    let last = tally.last_id.clone().unwrap();
    drop(sse);
    let resp = client.resume(b.addr, &sid, &last).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut sse = SseClient::new(resp.into_body());
    a.kill();
    assert!(
        tally.read(&mut sse, 10 * N).await,
        "the stream ends cleanly"
    );
    tally.assert_exactly_once(N);
    assert!(
        upstream.resumes() >= 1,
        "the upstream was resumed by the new owner"
    );
    drop(b);
}

/// The owner dies and the upstream keeps no events: the stream ends for
/// the reader with a JSON-RPC error naming the cause, after every event
/// the log held, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_owners_stream_without_an_event_store_ends_with_a_named_error() {
    let redis = redis_server::RedisServer::start();
    let upstream = TestUpstream::start().await.unwrap();
    upstream.set_event_store(false);
    let ttl = Duration::from_millis(600);
    let a = Instance::start(&upstream, &redis.url(), "a", ttl).await;
    let b = Instance::start(&upstream, &redis.url(), "b", ttl).await;
    let client = Client2::new();
    let sid = client.init(a.addr).await;
    let resp = client
        .call(a.addr, &sid, json!({"count": 100, "gated": true}))
        .await;
    let mut sse = SseClient::new(resp.into_body());
    let mut tally = Tally::new();
    assert!(!tally.read(&mut sse, 2).await);
    let last = tally.last_id.clone().unwrap();
    drop(sse);
    let resp = client.resume(b.addr, &sid, &last).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut sse = SseClient::new(resp.into_body());
    a.kill();
    assert!(tally.read(&mut sse, 1_000).await, "the stream ends");
    assert_eq!(tally.lost, 0, "{tally:?}");
    assert_eq!(tally.duplicated, 0, "{tally:?}");
    assert_eq!(tally.errors.len(), 1, "{tally:?}");
    let message = tally.errors[0]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("owner instance") && message.contains("cannot resume"),
        "{message}"
    );
    drop(b);
}
