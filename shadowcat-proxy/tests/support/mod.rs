//! Test harness: a test upstream, a real proxy in front of it on
//! 127.0.0.1:0, and a pooled HTTP/1.1 client.

#![allow(dead_code)]

pub(crate) mod metrics;
pub(crate) mod relay;
pub(crate) mod sse;

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
use shadowcat_proxy::test_util::{BudgetProbe, TestUpstream};
use shadowcat_proxy::{ReverseProxy, ReverseProxyConfig};
use shadowcat_session::{BatchingWriter, MemoryStore, SessionStore, WriterConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Every wait in the tests is bounded by this.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// The usual POST headers.
pub(crate) const POST_HEADERS: [(&str, &str); 2] = [
    ("accept", "application/json, text/event-stream"),
    ("content-type", "application/json"),
];

pub(crate) struct Harness {
    pub(crate) upstream: TestUpstream,
    pub(crate) store: Arc<MemoryStore>,
    pub(crate) proxy: std::net::SocketAddr,
    /// The running proxy's buffer budget.
    pub(crate) budget: BudgetProbe,
    config: ReverseProxyConfig,
    client: Client<HttpConnector, Full<Bytes>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    writer: Option<BatchingWriter>,
}

impl Harness {
    pub(crate) async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub(crate) async fn start_with(tweak: impl FnOnce(&mut ReverseProxyConfig)) -> Self {
        let upstream = TestUpstream::start().await.expect("test upstream starts");
        let mut config = ReverseProxyConfig::new(upstream.url());
        config.bind = "127.0.0.1:0".parse().unwrap();
        tweak(&mut config);
        let store = Arc::new(MemoryStore::new());
        let (proxy, budget, stop, task, writer) = serve(config.clone(), Arc::clone(&store)).await;
        Harness {
            upstream,
            store,
            proxy,
            budget,
            config,
            client: Client::builder(TokioExecutor::new()).build_http(),
            stop: Some(stop),
            task: Some(task),
            writer: Some(writer),
        }
    }

    /// Restarts the proxy on the same store (the writer flushed on the
    /// way down), on a new port.
    pub(crate) async fn restart(&mut self) {
        self.shut_down().await;
        let (proxy, budget, stop, task, writer) =
            serve(self.config.clone(), Arc::clone(&self.store)).await;
        self.proxy = proxy;
        self.budget = budget;
        self.stop = Some(stop);
        self.task = Some(task);
        self.writer = Some(writer);
    }

    async fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("proxy stops in time")
                .expect("proxy task ends cleanly");
        }
        if let Some(writer) = self.writer.take() {
            let report = writer.shutdown().await;
            assert!(report.is_complete(), "{report:?}");
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    /// Sends a request to the proxy, bounded by [`WAIT`].
    pub(crate) async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Response<Incoming> {
        let mut b = Request::builder().method(method).uri(self.url(path));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body.into())).expect("request builds");
        tokio::time::timeout(WAIT, self.client.request(req))
            .await
            .expect("proxy answers in time")
            .expect("proxy answers")
    }

    /// GET in `sid` with `Last-Event-ID` `last` (when given).
    pub(crate) async fn resume(
        &self,
        sid: &str,
        version: &str,
        last: Option<&str>,
    ) -> Response<Incoming> {
        let mut headers = vec![
            ("accept", "text/event-stream"),
            ("mcp-session-id", sid),
            ("mcp-protocol-version", version),
        ];
        if let Some(last) = last {
            headers.push(("last-event-id", last));
        }
        self.send("GET", "/mcp", &headers, "").await
    }

    pub(crate) async fn post(&self, headers: &[(&str, &str)], body: &Value) -> Response<Incoming> {
        let mut all: Vec<(&str, &str)> = POST_HEADERS.to_vec();
        all.extend_from_slice(headers);
        self.send("POST", "/mcp", &all, body.to_string()).await
    }

    /// Initializes a session at `version`; returns the proxy's session id.
    pub(crate) async fn init(&self, version: &str) -> String {
        let resp = self.post(&[], &initialize(version)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let sid = resp
            .headers()
            .get("mcp-session-id")
            .expect("initialize response has a session id")
            .to_str()
            .unwrap()
            .to_owned();
        let _ = body_bytes(resp).await;
        sid
    }

    /// Stops the proxy (draining), then flushes the writer; returns the
    /// store.
    pub(crate) async fn stop(mut self) -> Arc<MemoryStore> {
        self.shut_down().await;
        Arc::clone(&self.store)
    }
}

/// Starts a proxy with `config` on `store`, with its batching writer.
async fn serve(
    config: ReverseProxyConfig,
    store: Arc<MemoryStore>,
) -> (
    std::net::SocketAddr,
    BudgetProbe,
    oneshot::Sender<()>,
    JoinHandle<()>,
    BatchingWriter,
) {
    let writer = BatchingWriter::start(
        Arc::clone(&store) as Arc<dyn SessionStore>,
        WriterConfig {
            flush_interval: Duration::from_millis(10),
            ..WriterConfig::default()
        },
    );
    let proxy = ReverseProxy::bind(
        config,
        store as Arc<dyn SessionStore>,
        Some(writer.handle()),
    )
    .await
    .expect("proxy binds");
    let addr = proxy.local_addr();
    let budget = proxy.budget_probe();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        proxy
            .serve_with_drain(
                async {
                    let _ = stopped.await;
                },
                Duration::from_secs(2),
            )
            .await
            .expect("proxy serves");
    });
    (addr, budget, stop, task, writer)
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

pub(crate) fn initialize(version: &str) -> Value {
    json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion": version, "capabilities": {},
        "clientInfo": {"name": "test", "version": "0"}}})
}

pub(crate) fn call(id: u64, tool: &str, args: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args}})
}

pub(crate) async fn body_bytes(resp: Response<Incoming>) -> Bytes {
    tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .expect("body in time")
        .expect("body reads")
        .to_bytes()
}

pub(crate) async fn body_json(resp: Response<Incoming>) -> Value {
    let b = body_bytes(resp).await;
    serde_json::from_slice(&b).unwrap_or_else(|e| panic!("JSON body ({e}): {b:?}"))
}

/// The next data frame of a streaming body, bounded by [`WAIT`].
pub(crate) async fn next_chunk(body: &mut Incoming) -> Option<Bytes> {
    loop {
        let frame = tokio::time::timeout(WAIT, body.frame())
            .await
            .expect("a frame in time")?
            .expect("frame reads");
        if let Ok(data) = frame.into_data() {
            return Some(data);
        }
    }
}

/// The next data frame that holds more than SSE comments (the proxy's
/// opening comment and keep-alives are skipped), bounded by [`WAIT`].
pub(crate) async fn next_event_chunk(body: &mut Incoming) -> Option<Bytes> {
    loop {
        let chunk = next_chunk(body).await?;
        let only_comments = chunk
            .split(|&b| b == b'\n')
            .all(|l| l.is_empty() || l.starts_with(b":"));
        if !only_comments {
            return Some(chunk);
        }
    }
}

/// `target/<profile>/mcp-stdio-fixture` (the `benches` crate's stdio MCP
/// server), built on first use.
pub(crate) fn stdio_fixture() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>");
    let path = profile_dir.join("mcp-stdio-fixture");
    if !path.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build.args(["build", "-q", "-p", "benches", "--bin", "mcp-stdio-fixture"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building mcp-stdio-fixture: {status}");
    }
    path
}

/// Asserts a JSON-RPC error body with `code`.
pub(crate) async fn assert_rpc_error(
    resp: Response<Incoming>,
    status: StatusCode,
    code: i64,
) -> String {
    assert_eq!(resp.status(), status);
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "application/json"
    );
    let v = body_json(resp).await;
    assert_eq!(v["jsonrpc"], "2.0");
    assert_eq!(v["error"]["code"], code, "{v}");
    let msg = v["error"]["message"].as_str().unwrap().to_owned();
    assert!(!msg.is_empty());
    msg
}
