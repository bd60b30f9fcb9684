//! The stdio bridges end to end with the real binary:
//! `shadowcat reverse --upstream-cmd -- mcp-stdio-fixture` (initialize,
//! tools/list, progress on the request's stream, a server→client request
//! routed to the request's stream and answered by POST, a client cut and
//! `Last-Event-ID` resume with exactly-once delivery, a crashed child and an
//! over-long line ending the session with a JSON-RPC error and then 404,
//! DELETE stopping the child, `max_children`, a request id that is not a
//! string or an integer refused as an invalid request, no child outliving a
//! SIGKILLed proxy) and `shadowcat forward stdio --upstream URL` through
//! upstream cuts with no gap. `bridge_cost` measures round trips/s, events/s
//! and the bridge's own CPU (utime + stime from /proc).
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Write};
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

/// Every wait in this file is bounded by this.
const WAIT: Duration = Duration::from_secs(60);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// `target/<profile>/mcp-stdio-fixture`, built on first use.
fn fixture() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir.join("mcp-stdio-fixture");
    if !path.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-q", "-p", "benches", "--bin", "mcp-stdio-fixture"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        assert!(build.status().unwrap().success(), "building the fixture");
    }
    path
}

fn shadowcat() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shadowcat"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SHADOWCAT_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// A running `shadowcat reverse --upstream-cmd -- fixture`.
struct Proxy {
    child: Child,
    addr: String,
}

impl Proxy {
    fn start(extra: &[&str]) -> Proxy {
        let fixture = fixture();
        let mut child = shadowcat()
            .env("RUST_LOG", "info")
            .args(["--log-format", "json", "--store", "memory"])
            .args([
                "reverse",
                "--bind",
                "127.0.0.1:0",
                "--admin-bind",
                "127.0.0.1:0",
            ])
            .args(extra)
            .args(["--upstream-cmd", "--"])
            .arg(fixture)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                if v["fields"]["message"] == "reverse proxy listening" {
                    let _ = tx.send(v["fields"]["addr"].as_str().unwrap_or("").to_owned());
                }
            }
        });
        let addr = rx.recv_timeout(WAIT).expect("the proxy listens");
        Proxy { child, addr }
    }

    fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// The pids of the proxy's child processes.
    fn children(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id())).unwrap();
        for t in tasks.flatten() {
            let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        out
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn alive(pid: u32) -> bool {
    // A zombie has exited: only a running process counts.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

/// Waits (bounded) until `pid` is gone.
fn wait_gone(pid: u32) -> bool {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn post(
    c: &HttpClient,
    url: &str,
    sid: Option<&str>,
    body: &Value,
) -> http::Response<Incoming> {
    let mut req = http::Request::post(url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2025-06-18");
    if let Some(s) = sid {
        req = req.header("mcp-session-id", s);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    tokio::time::timeout(WAIT, c.request(req))
        .await
        .expect("answer in time")
        .unwrap()
}

async fn get(c: &HttpClient, url: &str, sid: &str, last: Option<&str>) -> http::Response<Incoming> {
    let mut req = http::Request::get(url)
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .header("mcp-session-id", sid);
    if let Some(l) = last {
        req = req.header("last-event-id", l);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    tokio::time::timeout(WAIT, c.request(req))
        .await
        .unwrap()
        .unwrap()
}

/// Reads SSE events (id, data) from a body; stops after `stop` returns
/// true for an event, or at the end.
struct Sse {
    body: Incoming,
    buf: Vec<u8>,
}

impl Sse {
    fn new(resp: http::Response<Incoming>) -> Sse {
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Sse {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }

    /// The next event with data, or `None` at the end of the stream.
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..at + 2).collect();
                let text = String::from_utf8(block).unwrap();
                let mut id = String::new();
                let mut data = String::new();
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some((id, serde_json::from_str(&data).unwrap()));
            }
            let frame = tokio::time::timeout(WAIT, self.body.frame())
                .await
                .unwrap()?;
            if let Ok(d) = frame.unwrap().into_data() {
                self.buf.extend_from_slice(&d);
            }
        }
    }
}

fn init_msg() -> Value {
    json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{"sampling":{},"roots":{}},
        "clientInfo":{"name":"t","version":"0"}}})
}

fn call(id: u64, name: &str, args: Value, token: Option<&str>) -> Value {
    let mut params = json!({"name": name, "arguments": args});
    if let Some(t) = token {
        params["_meta"] = json!({"progressToken": t});
    }
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":params})
}

/// Initializes a session; returns its id.
async fn initialize(c: &HttpClient, url: &str) -> String {
    let resp = post(c, url, None, &init_msg()).await;
    assert_eq!(resp.status(), 200);
    let sid = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut sse = Sse::new(resp);
    let (_, init) = sse.next().await.expect("the initialize result");
    assert_eq!(init["result"]["serverInfo"]["name"], "mcp-stdio-fixture");
    let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
    assert_eq!(post(c, url, Some(&sid), &note).await.status(), 202);
    sid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_session_routes_every_message_to_its_stream() {
    let proxy = Proxy::start(&[]);
    let c = client();
    let url = proxy.url();
    let sid = initialize(&c, &url).await;
    let pid = *proxy.children().first().expect("one child per session");

    let resp = post(
        &c,
        &url,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}),
    )
    .await;
    let (_, list) = Sse::new(resp).next().await.unwrap();
    assert_eq!(list["id"], 1);
    assert_eq!(list["result"]["tools"][0]["name"], "echo");

    // Progress with the request's token, on the request's stream, in order.
    let resp = post(
        &c,
        &url,
        Some(&sid),
        &call(2, "stream", json!({"count": 500}), Some("tok")),
    )
    .await;
    let mut sse = Sse::new(resp);
    let mut ids = std::collections::HashSet::new();
    for i in 1..=500 {
        let (id, ev) = sse.next().await.unwrap();
        assert!(ids.insert(id), "client ids are unique");
        assert_eq!(ev["params"]["progressToken"], "tok");
        assert_eq!(ev["params"]["progress"], i);
    }
    let (_, done) = sse.next().await.unwrap();
    assert_eq!(done["id"], 2);
    assert_eq!(done["result"]["content"][0]["text"], "streamed 500");
    assert!(
        sse.next().await.is_none(),
        "the stream ends after its response"
    );

    // A server→client request goes on the stream of the request it serves;
    // the client's answer is POSTed (202) and the call completes there.
    let resp = post(
        &c,
        &url,
        Some(&sid),
        &call(3, "ask", json!({"kind": "sampling"}), None),
    )
    .await;
    let mut sse = Sse::new(resp);
    let (_, ask) = sse.next().await.unwrap();
    assert_eq!(ask["method"], "sampling/createMessage");
    let answer = json!({"jsonrpc":"2.0","id":ask["id"],"result":{"role":"assistant",
        "content":{"type":"text","text":"hi"},"model":"m"}});
    assert_eq!(post(&c, &url, Some(&sid), &answer).await.status(), 202);
    let (_, done) = sse.next().await.unwrap();
    assert_eq!(done["id"], 3);
    assert!(
        done["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("hi")
    );

    // A duplicate in-flight id is refused; the stateless revision too.
    let resp = post(
        &c,
        &url,
        Some(&sid),
        &call(4, "ask", json!({"kind": "roots"}), None),
    )
    .await;
    let mut roots_stream = Sse::new(resp);
    let dup = post(
        &c,
        &url,
        Some(&sid),
        &call(4, "echo", json!({"text": "x"}), None),
    )
    .await;
    assert_eq!(dup.status(), 400);
    let (_, roots) = roots_stream.next().await.unwrap();
    assert_eq!(roots["method"], "roots/list");

    // DELETE stops the child; the session is gone.
    let req = http::Request::delete(&url)
        .header("mcp-session-id", &sid)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, c.request(req))
        .await
        .unwrap()
        .unwrap();
    assert!(resp.status().is_success());
    assert!(wait_gone(pid), "DELETE stopped the stdio server");
    let after = post(
        &c,
        &url,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":5,"method":"ping"}),
    )
    .await;
    assert_eq!(after.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cut_mid_stream_resumes_exactly_once() {
    let proxy = Proxy::start(&[]);
    let c = client();
    let url = proxy.url();
    let sid = initialize(&c, &url).await;
    const N: u64 = 3000;
    let mut got = Vec::new();
    let mut last = String::new();
    let resp = post(
        &c,
        &url,
        Some(&sid),
        &call(1, "stream", json!({"count": N}), Some("p")),
    )
    .await;
    let mut sse = Sse::new(resp);
    let mut result = None;
    // Cut three times at different points, resuming each time.
    for cut_after in [100usize, 700, 1500] {
        while got.len() < cut_after {
            let (id, ev) = sse.next().await.expect("events before the cut");
            last = id;
            got.push(ev["params"]["progress"].as_u64().unwrap());
        }
        drop(sse);
        sse = Sse::new(get(&c, &url, &sid, Some(&last)).await);
    }
    while let Some((id, ev)) = sse.next().await {
        last = id;
        if ev.get("result").is_some() {
            result = Some(ev);
            break;
        }
        got.push(ev["params"]["progress"].as_u64().unwrap());
    }
    assert!(!last.is_empty());
    let want: Vec<u64> = (1..=N).collect();
    assert_eq!(got, want, "every event once, in order");
    assert_eq!(result.unwrap()["id"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_child_or_long_line_ends_the_session_with_an_error() {
    let dir = std::env::temp_dir().join(format!("shadowcat-bridge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, "[limits]\nmax_child_line_bytes = 4096\n").unwrap();
    let proxy = Proxy::start(&["--config", cfg.to_str().unwrap(), "--max-children", "2"]);
    let c = client();
    let url = proxy.url();

    let sid = initialize(&c, &url).await;
    let resp = post(
        &c,
        &url,
        Some(&sid),
        &call(1, "crash", json!({"code": 3}), None),
    )
    .await;
    let (_, err) = Sse::new(resp).next().await.expect("an error event");
    assert_eq!(err["id"], 1);
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(msg.contains("exit status: 3"), "{msg}");
    let after = post(
        &c,
        &url,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":2,"method":"ping"}),
    )
    .await;
    assert_eq!(after.status(), 404);

    let sid = initialize(&c, &url).await;
    let resp = post(
        &c,
        &url,
        Some(&sid),
        &call(1, "longline", json!({"len": 10000}), None),
    )
    .await;
    let (_, err) = Sse::new(resp).next().await.expect("an error event");
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(msg.contains("line"), "{msg}");
    let after = post(
        &c,
        &url,
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":2,"method":"ping"}),
    )
    .await;
    assert_eq!(after.status(), 404);

    // max_children = 2: a third live session is refused with 503.
    let _a = initialize(&c, &url).await;
    let _b = initialize(&c, &url).await;
    let full = post(&c, &url, None, &init_msg()).await;
    assert_eq!(full.status(), 503);
    let body = full.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_children")
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn float_or_bool_request_id_is_an_invalid_request() {
    let proxy = Proxy::start(&[]);
    let c = client();
    let url = proxy.url();
    let sid = initialize(&c, &url).await;
    for id in [json!(1.5), json!(2.5), json!(true), json!(false)] {
        let resp = post(
            &c,
            &url,
            Some(&sid),
            &json!({"jsonrpc":"2.0","id":id,"method":"tools/list"}),
        )
        .await;
        assert_eq!(resp.status(), 400, "id {id}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], -32600, "id {id}: {body}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains("string or an integer"), "id {id}: {msg}");
    }
    // The session is unharmed: integer and string ids still work.
    for id in [json!(1), json!("1")] {
        let resp = post(
            &c,
            &url,
            Some(&sid),
            &json!({"jsonrpc":"2.0","id":id,"method":"tools/list"}),
        )
        .await;
        let (_, list) = Sse::new(resp).next().await.unwrap();
        assert_eq!(list["id"], id);
        assert!(list.get("result").is_some(), "{list}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_child_outlives_the_proxy() {
    for how in ["-TERM", "-KILL"] {
        let mut proxy = Proxy::start(&[]);
        let c = client();
        let url = proxy.url();
        initialize(&c, &url).await;
        initialize(&c, &url).await;
        let kids = proxy.children();
        assert_eq!(kids.len(), 2, "one child per session");
        let status = Command::new("kill")
            .args([how, &proxy.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let _ = proxy.child.wait();
        for pid in kids {
            assert!(wait_gone(pid), "child {pid} outlived the proxy ({how})");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_stdio_to_http_resumes_upstream_cuts_without_a_gap() {
    let upstream = TestUpstream::start().await.unwrap();
    let mut relay = shadowcat()
        .env("RUST_LOG", "warn")
        .args([
            "forward",
            "stdio",
            "--upstream",
            &upstream.url().to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = relay.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            assert!(!line.trim().is_empty(), "no empty line reaches the client");
            if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                break;
            }
        }
    });
    let mut stdin = relay.stdin.take().unwrap();
    let mut send = |v: Value| writeln!(stdin, "{v}").unwrap();
    let mut init = init_msg();
    init["params"]["protocolVersion"] = json!("2025-11-25");
    send(init);
    let answer = lines.recv_timeout(WAIT).unwrap();
    assert_eq!(answer["id"], 0);
    send(json!({"jsonrpc":"2.0","method":"notifications/initialized"}));
    const N: u64 = 40;
    send(call(
        1,
        "progress",
        json!({"count": N, "cuts": [5, 17, 30]}),
        Some("f"),
    ));
    let mut got = Vec::new();
    let done = loop {
        let v = lines.recv_timeout(WAIT).expect("events through the cuts");
        if v.get("id") == Some(&json!(1)) {
            break v;
        }
        if v["method"] == "notifications/progress" {
            got.push(v["params"]["progress"].as_u64().unwrap());
        }
    };
    assert!(done.get("result").is_some(), "{done}");
    assert_eq!(got, (1..=N).collect::<Vec<_>>(), "no gap, no duplicate");
    assert!(upstream.cuts_done() >= 3, "the upstream cut the stream");
    send(
        json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hey"}}}),
    );
    let echo = lines.recv_timeout(WAIT).unwrap();
    assert_eq!(echo["id"], 2);
    // Every request after initialize carried the upstream's session id.
    let reqs = upstream.requests();
    assert!(
        reqs.iter()
            .skip(1)
            .all(|r| r.headers.contains_key("mcp-session-id"))
    );

    // The upstream forgets the session: the next request gets an error.
    upstream.forget_sessions();
    send(call(3, "echo", json!({"text": "x"}), None));
    let err = lines.recv_timeout(WAIT).unwrap();
    assert_eq!(err["id"], 3);
    assert!(
        err["error"]["message"].as_str().unwrap().contains("404"),
        "{err}"
    );
    drop(stdin);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(relay.wait());
    });
    assert!(rx.recv_timeout(WAIT).unwrap().unwrap().success());
}

/// Round trips/s and events/s through `reverse --upstream-cmd`, with the
/// proxy's own CPU per round trip and per event from /proc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_cost() {
    let proxy = Proxy::start(&[]);
    let url = proxy.url();
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", proxy.child.id())).unwrap();
        let rest = stat.rsplit(')').next().unwrap();
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime: fields 14 and 15 of stat, 12 and 13 after ')'.
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10)
    };
    const SESSIONS: usize = 8;
    const PER_SESSION: u64 = 1500;
    let mut sids = Vec::new();
    for _ in 0..SESSIONS {
        sids.push(initialize(&client(), &url).await);
    }
    let cpu0 = cpu();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for sid in sids.clone() {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            for i in 0..PER_SESSION {
                let resp = post(
                    &c,
                    &url,
                    Some(&sid),
                    &call(i + 10, "echo", json!({"text": "hi"}), None),
                )
                .await;
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                assert!(body.windows(2).any(|w| w == b"hi"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rt = SESSIONS as u64 * PER_SESSION;
    let (el, used) = (t0.elapsed(), cpu() - cpu0);
    eprintln!(
        "round trips: {rt} in {el:?}: {:.0}/s, bridge CPU {:.1} us per round trip",
        rt as f64 / el.as_secs_f64(),
        used.as_secs_f64() * 1e6 / rt as f64
    );

    const EVENTS: u64 = 20_000;
    let cpu0 = cpu();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for sid in sids {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let resp = post(
                &c,
                &url,
                Some(&sid),
                &call(1, "stream", json!({"count": EVENTS}), Some("s")),
            )
            .await;
            let mut body = resp.into_body();
            let mut n = 0u64;
            // The last 5 bytes of the previous frame: a `data: ` split
            // across frames is counted once.
            let mut tail: Vec<u8> = Vec::new();
            while let Some(f) = tokio::time::timeout(WAIT, body.frame()).await.unwrap() {
                if let Ok(d) = f.unwrap().into_data() {
                    tail.extend_from_slice(&d);
                    n += tail.windows(6).filter(|w| w == b"data: ").count() as u64;
                    tail.drain(..tail.len().saturating_sub(5));
                }
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let (el, used) = (t0.elapsed(), cpu() - cpu0);
    assert_eq!(
        total,
        SESSIONS as u64 * (EVENTS + 1),
        "every event delivered"
    );
    eprintln!(
        "streamed events: {total} in {el:?}: {:.0}/s, bridge CPU {:.2} us per event",
        total as f64 / el.as_secs_f64(),
        used.as_secs_f64() * 1e6 / total as f64
    );
}

/// 2025-11-25 on a stdio session: the proxy's priming event comes first,
/// as its own event with its own id, before the server's first message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdio_priming_event_comes_first_with_its_own_id() {
    let proxy = Proxy::start(&[]);
    let c = client();
    let url = proxy.url();
    let send = |sid: Option<&str>, body: &Value| {
        let mut req = http::Request::post(url.as_str())
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-protocol-version", "2025-11-25");
        if let Some(s) = sid {
            req = req.header("mcp-session-id", s);
        }
        let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        tokio::time::timeout(WAIT, c.request(req))
    };
    let mut init = init_msg();
    init["params"]["protocolVersion"] = json!("2025-11-25");
    let resp = send(None, &init).await.unwrap().unwrap();
    let sid = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    drop(resp);
    let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
    let resp = send(Some(&sid), &note).await.unwrap().unwrap();
    assert_eq!(resp.status(), 202);

    // The server asks the client at once: its request is the stream's
    // first message.
    let resp = send(Some(&sid), &call(1, "ask", json!({"kind": "roots"}), None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut text = String::new();
    let blocks = loop {
        let blocks: Vec<&str> = text.split("\n\n").filter(|b| !b.is_empty()).collect();
        if text.ends_with("\n\n") && blocks.len() >= 2 {
            break blocks.iter().map(|b| (*b).to_owned()).collect::<Vec<_>>();
        }
        let frame = tokio::time::timeout(WAIT, body.frame())
            .await
            .expect("a frame in time")
            .expect("the stream goes on")
            .unwrap();
        if let Ok(d) = frame.into_data() {
            text.push_str(std::str::from_utf8(&d).unwrap());
        }
    };
    let id_of = |b: &str| {
        b.lines()
            .find_map(|l| l.strip_prefix("id: "))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let (priming, first) = (&blocks[0], &blocks[1]);
    assert!(
        priming.lines().any(|l| l == "data:") && !priming.contains("jsonrpc"),
        "the first block is the priming event: {priming:?}"
    );
    assert!(
        first.contains("roots/list"),
        "then the server's request: {first:?}"
    );
    assert!(!id_of(priming).is_empty());
    assert_ne!(id_of(priming), id_of(first), "each event has its own id");
}
