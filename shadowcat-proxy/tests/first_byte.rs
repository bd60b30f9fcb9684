//! Every SSE response's first body byte reaches the client at once, not
//! at the first keep-alive: an upstream whose GET stream sends only an
//! opening comment (`: open`, to flush its headers) and then nothing must
//! not leave the client without a body byte for `keepalive_interval`.

mod support;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::json;
use shadowcat_proxy::{ReverseProxy, ReverseProxyConfig};
use shadowcat_session::MemoryStore;
use support::{WAIT, next_chunk};

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// An upstream that answers `initialize` with JSON and a GET with an
/// opening comment, then holds the stream open.
async fn quiet_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
                    let resp: Response<UpBody> = if req.method() == http::Method::GET {
                        let (tx, rx) =
                            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
                        tokio::spawn(async move {
                            let _ = tx
                                .send(Ok(Frame::data(Bytes::from_static(b": open\n\n"))))
                                .await;
                            // Nothing more, until the proxy goes (bounded).
                            let _ =
                                tokio::time::timeout(Duration::from_secs(30), tx.closed()).await;
                        });
                        let body = Fed(rx);
                        Response::builder()
                            .header("content-type", "text/event-stream")
                            .body(BodyExt::boxed(body))
                            .unwrap()
                    } else {
                        let _ = req.into_body().collect().await;
                        let answer = json!({"jsonrpc":"2.0","id":1,"result":{
                            "protocolVersion":"2025-06-18","capabilities":{},
                            "serverInfo":{"name":"quiet","version":"0"}}});
                        Response::builder()
                            .header("content-type", "application/json")
                            .header("mcp-session-id", "quiet-1")
                            .body(BodyExt::boxed(Full::new(Bytes::from(answer.to_string()))))
                            .unwrap()
                    };
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A body fed by a channel.
struct Fed(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>);

impl http_body::Body for Fed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_get_stream_gets_its_first_byte_at_once() {
    let upstream = quiet_upstream().await;
    let mut config = ReverseProxyConfig::new(format!("http://{upstream}/mcp").parse().unwrap());
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.limits.keepalive_interval = Duration::from_secs(60);
    let proxy = ReverseProxy::bind(config, std::sync::Arc::new(MemoryStore::new()), None)
        .await
        .unwrap();
    let addr = proxy.local_addr();
    tokio::spawn(proxy.serve(std::future::pending()));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}});
    let req = http::Request::post(format!("http://{addr}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(init.to_string())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let sid = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let _ = resp.into_body().collect().await;

    let req = http::Request::get(format!("http://{addr}/mcp"))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-06-18")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let asked = Instant::now();
    let resp = tokio::time::timeout(WAIT, client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = next_chunk(&mut body).await.expect("a first body byte");
    let took = asked.elapsed();
    assert!(first.starts_with(b":"), "a comment first: {first:?}");
    // 60 s keep-alive: anything near it means the stream waited for it.
    assert!(
        took < Duration::from_secs(2),
        "first body byte after {took:?}"
    );
}
