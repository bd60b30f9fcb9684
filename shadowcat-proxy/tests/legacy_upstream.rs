//! A legacy HTTP+SSE (2024-11-05) upstream behind the proxy
//! (`upstream_transport = sse` and `auto`): answers routed to the right
//! client stream by id, and the drop rule: a request in flight when the
//! SSE connection drops gets a JSON-RPC error naming the cause, the
//! session is re-established upstream (initialize and initialized replayed
//! with the original params) and the next request works.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{Value, json};
use shadowcat_proxy::UpstreamTransport;
use support::sse::SseClient;
use support::{Harness, WAIT, call, initialize};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A tiny legacy MCP server: `GET /sse` (an endpoint event, then its
/// session's messages), `POST /messages?s=N`. Tools: `echo` answers at
/// once, `hang` never answers. Anything else on `/sse` (POST) is 405.
#[derive(Default)]
struct Legacy {
    /// Each SSE connection's sender, by session number.
    streams: Mutex<Vec<Option<mpsc::UnboundedSender<Bytes>>>>,
    /// Every message POSTed, in order.
    posted: Mutex<Vec<Value>>,
    /// How many were POSTed.
    count: tokio::sync::watch::Sender<usize>,
}

struct SseBody(mpsc::UnboundedReceiver<Bytes>);

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

type Out = http_body_util::combinators::BoxBody<Bytes, Infallible>;

impl Legacy {
    async fn start() -> (Arc<Self>, SocketAddr) {
        let me = Arc::new(Legacy::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Arc::clone(&me);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let server = Arc::clone(&server);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let server = Arc::clone(&server);
                        async move { Ok::<_, Infallible>(server.serve(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (me, addr)
    }

    async fn serve(&self, req: Request<Incoming>) -> Response<Out> {
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        match (req.method().as_str(), path.as_str()) {
            ("GET", "/sse") => {
                let (tx, rx) = mpsc::unbounded_channel();
                let n = {
                    let mut s = self.streams.lock();
                    s.push(Some(tx.clone()));
                    s.len() - 1
                };
                let _ = tx.send(Bytes::from(format!(
                    "event: endpoint\ndata: /messages?s={n}\n\n"
                )));
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(SseBody(rx).boxed())
                    .unwrap()
            }
            ("POST", "/messages") => {
                let n: usize = query
                    .strip_prefix("s=")
                    .and_then(|s| s.parse().ok())
                    .unwrap();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let msg: Value = serde_json::from_slice(&body).unwrap();
                self.posted.lock().push(msg.clone());
                self.count.send_modify(|n| *n += 1);
                let answer = match msg["method"].as_str() {
                    Some("initialize") => Some(json!({"jsonrpc":"2.0","id":msg["id"],"result":{
                        "protocolVersion": msg["params"]["protocolVersion"],
                        "capabilities": {"tools": {}},
                        "serverInfo": {"name": "legacy-test", "version": "0"}}})),
                    Some("tools/call") if msg["params"]["name"] == "echo" => {
                        Some(json!({"jsonrpc":"2.0","id":msg["id"],"result":{
                            "content":[{"type":"text","text": msg["params"]["arguments"]["text"]}]}}))
                    }
                    _ => None,
                };
                if let Some(a) = answer
                    && let Some(Some(tx)) = self.streams.lock().get(n)
                {
                    let _ = tx.send(Bytes::from(format!("event: message\ndata: {a}\n\n")));
                }
                Response::builder()
                    .status(StatusCode::ACCEPTED)
                    .body(Full::new(Bytes::from_static(b"Accepted")).boxed())
                    .unwrap()
            }
            _ => Response::builder()
                .status(StatusCode::METHOD_NOT_ALLOWED)
                .body(Full::new(Bytes::new()).boxed())
                .unwrap(),
        }
    }

    /// Ends every open SSE connection, as a network drop would.
    fn cut(&self) {
        for s in self.streams.lock().iter_mut() {
            s.take();
        }
    }

    fn methods(&self) -> Vec<String> {
        self.posted
            .lock()
            .iter()
            .map(|m| m["method"].as_str().unwrap_or("").to_owned())
            .collect()
    }
}

async fn harness(transport: UpstreamTransport) -> (Harness, Arc<Legacy>) {
    let (legacy, addr) = Legacy::start().await;
    let h = Harness::start_with(|c| {
        c.upstream = format!("http://{addr}/sse").parse().unwrap();
        c.upstream_transport = transport;
    })
    .await;
    (h, legacy)
}

/// The JSON-RPC message with `id` from an SSE (or JSON) answer.
async fn answer(resp: http::Response<Incoming>, id: u64) -> Value {
    let mut sse = SseClient::new(resp.into_body());
    loop {
        let block = sse.next().await.unwrap().expect("the answer comes");
        if let Some(data) = block.data.filter(|d| !d.is_empty()) {
            let v: Value = serde_json::from_str(&data).unwrap();
            if v["id"] == id {
                return v;
            }
        }
    }
}

async fn init(h: &Harness) -> String {
    let resp = h.post(&[], &initialize("2025-06-18")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let sid = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let v = answer(resp, 1).await;
    assert_eq!(v["result"]["serverInfo"]["name"], "legacy-test", "{v}");
    let resp = h
        .post(
            &[("mcp-session-id", &sid)],
            &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    sid
}

#[tokio::test]
async fn auto_finds_a_legacy_upstream_and_routes_answers_by_id() {
    let (h, legacy) = harness(UpstreamTransport::Auto).await;
    let sid = init(&h).await;
    let headers = [("mcp-session-id", sid.as_str())];
    // Two requests at once: each answer reaches its own stream.
    let (two, three) = (
        call(2, "echo", json!({"text": "two"})),
        call(3, "echo", json!({"text": "three"})),
    );
    let (a, b) = tokio::join!(h.post(&headers, &two), h.post(&headers, &three));
    let (a, b) = tokio::join!(answer(a, 2), answer(b, 3));
    assert_eq!(a["result"]["content"][0]["text"], "two");
    assert_eq!(b["result"]["content"][0]["text"], "three");
    assert_eq!(
        legacy.methods(),
        [
            "initialize",
            "notifications/initialized",
            "tools/call",
            "tools/call"
        ]
    );
}

#[tokio::test]
async fn a_dropped_upstream_fails_the_request_in_flight_then_the_session_goes_on() {
    let (h, legacy) = harness(UpstreamTransport::Sse).await;
    let sid = init(&h).await;
    let headers = [("mcp-session-id", sid.as_str())];
    let hanging = h.post(&headers, &call(2, "hang", json!({}))).await;
    assert_eq!(hanging.status(), StatusCode::OK);
    // The call is upstream (POSTed) before the cut.
    let mut count = legacy.count.subscribe();
    tokio::time::timeout(WAIT, count.wait_for(|n| *n >= 3))
        .await
        .expect("the call reached the upstream")
        .unwrap();
    legacy.cut();
    let failed = answer(hanging, 2).await;
    let message = failed["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("legacy") && message.contains("SSE"),
        "the error names the cause: {failed}"
    );
    let resp = h
        .post(&headers, &call(3, "echo", json!({"text": "after"})))
        .await;
    let after = answer(resp, 3).await;
    assert_eq!(after["result"]["content"][0]["text"], "after", "{after}");
    let posted = legacy.posted.lock().clone();
    let methods: Vec<&str> = posted
        .iter()
        .map(|m| m["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        [
            "initialize",
            "notifications/initialized",
            "tools/call",
            "initialize",
            "notifications/initialized",
            "tools/call"
        ],
        "the hanging call is never sent twice; initialize is replayed"
    );
    assert_eq!(posted[3], posted[0], "the original initialize params");
}
