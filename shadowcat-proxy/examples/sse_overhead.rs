//! Measures the reverse proxy's own CPU per forwarded SSE event and per
//! JSON request/response, on loopback against the test upstream.
//!
//! The proxy runs on its own one-thread runtime; its CPU time is read from
//! the kernel's per-thread scheduler statistics, so the load generator and
//! the upstream (other runtimes) are not counted.
//!
//! `cargo run --release -p shadowcat-proxy --features test-util --example sse_overhead [EVENTS] [REQUESTS]`

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use shadowcat_proxy::test_util::TestUpstream;
use shadowcat_proxy::{ReverseProxy, ReverseProxyConfig};
use shadowcat_session::{BatchingWriter, MemoryStore, SessionStore, WriterConfig};

const PROXY_THREAD: &str = "sc-proxy";

/// Nanoseconds on CPU of every thread named [`PROXY_THREAD`].
fn proxy_cpu_ns() -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").expect("procfs") {
        let dir = task.expect("task").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != PROXY_THREAD {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

fn main() {
    let mut args = std::env::args().skip(1);
    let events: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let requests: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5_000);

    let upstream_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sc-upstream")
        .enable_all()
        .build()
        .unwrap();
    let upstream = upstream_rt.block_on(TestUpstream::start()).unwrap();

    let proxy_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(PROXY_THREAD)
        .enable_all()
        .build()
        .unwrap();
    let addr = proxy_rt.block_on(async {
        let mut config = ReverseProxyConfig::new(upstream.url());
        config.bind = "127.0.0.1:0".parse().unwrap();
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
        let writer = BatchingWriter::start(Arc::clone(&store), WriterConfig::default());
        let proxy = ReverseProxy::bind(config, store, Some(writer.handle()))
            .await
            .unwrap();
        let addr = proxy.local_addr();
        tokio::spawn(async move {
            let _writer = writer;
            let _ = proxy.serve(std::future::pending()).await;
        });
        addr
    });

    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    client_rt.block_on(async move {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let post = |sid: Option<&str>, body: serde_json::Value| {
            let mut b = http::Request::post(format!("http://{addr}/mcp"))
                .header("accept", "application/json, text/event-stream")
                .header("content-type", "application/json")
                .header("mcp-protocol-version", "2025-06-18");
            if let Some(sid) = sid {
                b = b.header("mcp-session-id", sid);
            }
            client.request(b.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        };
        let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18"}});
        let resp = post(None, init).await.unwrap();
        let sid = resp.headers()["mcp-session-id"].to_str().unwrap().to_owned();
        let _ = resp.into_body().collect().await.unwrap();

        // Warm up, then SSE: one stream of `events` progress notifications.
        let call = |id: u64, name: &str, args: serde_json::Value| {
            json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":name,"arguments":args}})
        };
        let resp = post(Some(&sid), call(1, "progress", json!({"count": 1000}))).await.unwrap();
        let _ = resp.into_body().collect().await.unwrap();
        let cpu0 = proxy_cpu_ns();
        let t0 = Instant::now();
        let resp = post(Some(&sid), call(2, "progress", json!({"count": events}))).await.unwrap();
        let mut body = resp.into_body();
        let mut bytes = 0usize;
        let mut frames = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                bytes += data.len();
                frames += 1;
            }
        }
        let wall = t0.elapsed();
        let cpu = proxy_cpu_ns() - cpu0;
        eprintln!(
            "sse: {events} events ({bytes} bytes, {frames} frames) in {wall:?}: {:.0} events/s, proxy CPU {:.3} us/event",
            events as f64 / wall.as_secs_f64(),
            cpu as f64 / 1e3 / events as f64
        );

        // JSON request/response round trips, one at a time.
        let cpu0 = proxy_cpu_ns();
        let t0 = Instant::now();
        for i in 0..requests {
            let resp = post(Some(&sid), call(10 + i, "echo", json!({"text": "hi"}))).await.unwrap();
            let _ = resp.into_body().collect().await.unwrap();
        }
        let wall = t0.elapsed();
        let cpu = proxy_cpu_ns() - cpu0;
        eprintln!(
            "json: {requests} round trips in {wall:?}: {:.0}/s, proxy CPU {:.2} us/request",
            requests as f64 / wall.as_secs_f64(),
            cpu as f64 / 1e3 / requests as f64
        );
    });
    drop(proxy_rt);
}
