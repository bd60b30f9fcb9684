//! Operating a running `shadowcat reverse` (the real binary, loopback):
//! `shadowcat sessions list|show|delete` through its admin API with the
//! embedded store and with a real Redis; `/readyz` during a Redis outage
//! and during drain; the admin token.

#[allow(dead_code)]
#[path = "../../shadowcat-session/tests/support/redis.rs"]
mod redis;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use shadowcat_proxy::test_util::TestUpstream;

const WAIT: Duration = Duration::from_secs(20);
const VERSION: &str = "2025-11-25";

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn shadowcat() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shadowcat"));
    c.env("RUST_LOG", "warn");
    for (k, _) in std::env::vars() {
        if k.starts_with("SHADOWCAT_") {
            c.env_remove(k);
        }
    }
    c
}

/// A running `shadowcat reverse`; killed when dropped.
struct Proxy {
    child: Option<Child>,
    addr: String,
    admin: String,
    /// Every log line after the addresses.
    lines: mpsc::Receiver<String>,
    /// Standard output's lines (the access log).
    stdout: mpsc::Receiver<String>,
}

impl Proxy {
    fn start(upstream: &str, store: &str, extra: &[&str], env: &[(&str, &str)]) -> Proxy {
        let mut cmd = shadowcat();
        cmd.env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .args(["--log-format", "json", "--store", store])
            .args(["reverse", "--upstream", upstream])
            .args(["--bind", "127.0.0.1:0", "--admin-bind", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shadowcat");
        let out = child.stdout.take().expect("stdout");
        let (out_tx, stdout) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if out_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut addr, mut admin) = (None, None);
        while addr.is_none() || admin.is_none() {
            let line = lines
                .recv_timeout(WAIT)
                .expect("shadowcat logs its addresses");
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let msg = v["fields"]["message"].as_str().unwrap_or("");
            let a = v["fields"]["addr"].as_str().map(str::to_owned);
            if msg.contains("reverse proxy listening") {
                addr = a;
            } else if msg.contains("admin listening") {
                admin = a;
            }
        }
        Proxy {
            child: Some(child),
            addr: addr.unwrap(),
            admin: admin.unwrap(),
            lines,
            stdout,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run(mut cmd: Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shadowcat");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(WAIT)
        .expect("shadowcat exits in time")
        .expect("output")
}

async fn request(
    client: &HttpClient,
    method: Method,
    url: String,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let mut b = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let resp = tokio::time::timeout(WAIT, client.request(req))
        .await
        .expect("answer in time")
        .expect("answer");
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    (parts.status, parts.headers, body)
}

async fn initialize(client: &HttpClient, addr: &str) -> String {
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":VERSION,"capabilities":{},"clientInfo":{"name":"t","version":"0"}}});
    let (status, headers, _) = request(
        client,
        Method::POST,
        format!("http://{addr}/mcp"),
        &[
            ("accept", "application/json, text/event-stream"),
            ("content-type", "application/json"),
        ],
        &init.to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    headers["mcp-session-id"].to_str().unwrap().to_owned()
}

async fn call(client: &HttpClient, addr: &str, sid: &str, body: &Value) -> StatusCode {
    request(
        client,
        Method::POST,
        format!("http://{addr}/mcp"),
        &[
            ("accept", "application/json, text/event-stream"),
            ("content-type", "application/json"),
            ("mcp-session-id", sid),
            ("mcp-protocol-version", VERSION),
        ],
        &body.to_string(),
    )
    .await
    .0
}

fn sessions(admin: &str, args: &[&str]) -> Output {
    let mut c = shadowcat();
    c.args(["sessions"])
        .args(args)
        .args(["--admin", &format!("http://{admin}")]);
    run(c)
}

fn temp_store(name: &str) -> (PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("shadowcat-operate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let spec = format!("file:{}", dir.join("s.redb").display());
    (dir, spec)
}

/// list, show and delete against a running proxy on `store`.
async fn sessions_commands(store: &str) {
    let upstream = TestUpstream::start().await.unwrap();
    let proxy = Proxy::start(&upstream.url().to_string(), store, &[], &[]);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let a = initialize(&client, &proxy.addr).await;
    let b = initialize(&client, &proxy.addr).await;
    let progress = json!({"jsonrpc":"2.0","id":2,"method":"tools/call",
        "params":{"name":"progress","arguments":{"count":3}}});
    assert_eq!(
        call(&client, &proxy.addr, &a, &progress).await,
        StatusCode::OK
    );

    // The table names both; the JSON is the admin API's schema.
    let out = sessions(&proxy.admin, &["list"]);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(&a) && table.contains(&b), "{table}");
    let out = sessions(&proxy.admin, &["list", "--json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let ids: Vec<&str> = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&a.as_str()) && ids.contains(&b.as_str()),
        "{listed}"
    );
    assert!(listed["sessions"][0]["cached_here"].as_bool().unwrap());
    // A filter that matches nothing.
    let out = sessions(&proxy.admin, &["list", "--json", "--min-idle-secs", "3600"]);
    let none: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(none["sessions"].as_array().unwrap().len(), 0, "{none}");

    // show: the stream the progress call opened, held here.
    let out = sessions(&proxy.admin, &["show", &a]);
    assert!(out.status.success(), "{out:?}");
    let shown: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(shown["id"], a.as_str());
    let streams = shown["streams"].as_array().unwrap();
    assert!(!streams.is_empty(), "{shown}");
    let here = &streams[0]["here"];
    assert_eq!(here["get"], false, "{shown}");
    assert!(here["next_seq"].as_u64().unwrap() >= 4, "{shown}");
    assert_eq!(shown["upstream_session"], true);

    // delete: ended upstream, gone from the proxy.
    let deletes_before = upstream
        .requests()
        .iter()
        .filter(|r| r.method == Method::DELETE)
        .count();
    let out = sessions(&proxy.admin, &["delete", &a]);
    assert!(out.status.success(), "{out:?}");
    let deletes = upstream
        .requests()
        .iter()
        .filter(|r| r.method == Method::DELETE)
        .count();
    assert_eq!(
        deletes,
        deletes_before + 1,
        "the upstream session was ended"
    );
    let list = json!({"jsonrpc":"2.0","id":3,"method":"tools/list"});
    assert_eq!(
        call(&client, &proxy.addr, &a, &list).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(call(&client, &proxy.addr, &b, &list).await, StatusCode::OK);
    let out = sessions(&proxy.admin, &["show", &a]);
    assert!(!out.status.success());

    // The admin log line says who asked.
    let deadline = Instant::now() + WAIT;
    loop {
        let line = proxy
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the deletion is logged");
        if line.contains("session deleted through the admin API") {
            assert!(line.contains("admin API from 127.0.0.1"), "{line}");
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_commands_reach_the_running_proxy_on_the_embedded_store() {
    let (dir, store) = temp_store("redb");
    sessions_commands(&store).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_commands_reach_the_running_proxy_on_redis() {
    let redis = redis::RedisServer::start();
    sessions_commands(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_proxy_the_error_names_both_tries() {
    let upstream = TestUpstream::start().await.unwrap();
    let (dir, store) = temp_store("locked");
    let proxy = Proxy::start(&upstream.url().to_string(), &store, &[], &[]);
    // Nothing listens on port 1: the store is tried, and it is locked by
    // the running proxy.
    let mut c = shadowcat();
    c.args([
        "sessions",
        "list",
        "--store",
        &store,
        "--admin",
        "http://127.0.0.1:1",
    ]);
    let out = run(c);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no proxy answered at http://127.0.0.1:1"),
        "{err}"
    );
    assert!(err.contains("--admin"), "{err}");
    drop(proxy);
    // With the proxy gone the store opens.
    let mut c = shadowcat();
    c.args(["sessions", "list", "--store", &store, "--admin-bind", "off"]);
    let out = run(c);
    assert!(out.status.success(), "{out:?}");
    let _ = std::fs::remove_dir_all(dir);
}

async fn readyz(client: &HttpClient, admin: &str) -> (StatusCode, Value) {
    let (status, _, body) = request(
        client,
        Method::GET,
        format!("http://{admin}/readyz"),
        &[],
        "",
    )
    .await;
    (
        status,
        serde_json::from_slice(&body).expect("JSON readiness"),
    )
}

/// Polls `/readyz` (bounded) until it answers `want`.
async fn readyz_until(client: &HttpClient, admin: &str, want: StatusCode) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = readyz(client, admin).await;
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz stayed {status}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_flips_on_a_redis_outage_and_at_drain() {
    let mut redis = redis::RedisServer::start();
    let upstream = TestUpstream::start().await.unwrap();
    let proxy = Proxy::start(
        &upstream.url().to_string(),
        &redis.url(),
        &["--drain-timeout-secs", "5"],
        &[],
    );
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let (status, body) = readyz(&client, &proxy.admin).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ready"], true);

    redis.stop();
    let body = readyz_until(&client, &proxy.admin, StatusCode::SERVICE_UNAVAILABLE).await;
    let why = body["not_ready"].to_string();
    assert!(why.contains("store"), "{body}");
    redis.restart();
    readyz_until(&client, &proxy.admin, StatusCode::OK).await;

    // A slow request keeps the drain going; /readyz is 503 at once.
    let sid = initialize(&client, &proxy.addr).await;
    let slow = json!({"jsonrpc":"2.0","id":9,"method":"tools/call",
        "params":{"name":"slow","arguments":{"ms":3000}}});
    let addr = proxy.addr.clone();
    let c2 = client.clone();
    let in_flight = tokio::spawn(async move { call(&c2, &addr, &sid, &slow).await });
    let deadline = Instant::now() + WAIT;
    while !upstream
        .requests()
        .iter()
        .any(|r| String::from_utf8_lossy(&r.body).contains("\"slow\""))
    {
        assert!(
            Instant::now() < deadline,
            "the slow call never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed = Command::new("kill")
        .args(["-TERM", &proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let body = readyz_until(&client, &proxy.admin, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(body["not_ready"].to_string().contains("listener"), "{body}");
    assert_eq!(
        in_flight.await.unwrap(),
        StatusCode::OK,
        "the drain let it finish"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_is_required_off_loopback_and_enforced() {
    // Off loopback without a token: refused before anything is bound.
    let mut c = shadowcat();
    c.args([
        "reverse",
        "--upstream",
        "http://127.0.0.1:9/mcp",
        "--store",
        "memory",
    ])
    .args(["--bind", "127.0.0.1:0", "--admin-bind", "0.0.0.0:0"]);
    let out = run(c);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--admin-token"), "{err}");

    // With a token (on loopback here), every API call needs it; health
    // checks do not.
    let upstream = TestUpstream::start().await.unwrap();
    let proxy = Proxy::start(
        &upstream.url().to_string(),
        "memory",
        &["--admin-token", "env:OPERATE_TEST_TOKEN"],
        &[("OPERATE_TEST_TOKEN", "s3cret-token")],
    );
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let url = |p: &str| format!("http://{}{p}", proxy.admin);
    for path in ["/sessions", "/streams", "/metrics"] {
        let (status, headers, _) = request(&client, Method::GET, url(path), &[], "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(headers.contains_key("www-authenticate"));
        let (status, _, _) = request(
            &client,
            Method::GET,
            url(path),
            &[("authorization", "Bearer wrong")],
            "",
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        let (status, _, _) = request(
            &client,
            Method::GET,
            url(path),
            &[("authorization", "Bearer s3cret-token")],
            "",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let (status, _, _) = request(&client, Method::GET, url("/healthz"), &[], "").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = request(&client, Method::GET, url("/readyz"), &[], "").await;
    assert_eq!(status, StatusCode::OK);
    // The CLI passes the token; without it, it says so.
    let out = sessions(&proxy.admin, &["list"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused the admin token"),
        "{out:?}"
    );
    let mut c = shadowcat();
    c.env("OPERATE_TEST_TOKEN", "s3cret-token")
        .args([
            "sessions",
            "list",
            "--admin-token",
            "env:OPERATE_TEST_TOKEN",
        ])
        .args(["--admin", &format!("http://{}", proxy.admin)]);
    let out = run(c);
    assert!(out.status.success(), "{out:?}");
    // Denials are counted.
    let (_, _, metrics) = request(
        &client,
        Method::GET,
        url("/metrics"),
        &[("authorization", "Bearer s3cret-token")],
        "",
    )
    .await;
    let text = String::from_utf8_lossy(&metrics);
    assert!(text.contains("shadowcat_admin_denied_total"), "{text}");
}

/// Reads an SSE body to its end; returns the progress numbers in order and
/// whether the final result came.
async fn progress_of(resp: http::Response<hyper::body::Incoming>) -> (Vec<u64>, bool) {
    let body = tokio::time::timeout(WAIT * 3, resp.into_body().collect())
        .await
        .expect("stream ends in time")
        .expect("stream reads")
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    let mut seen = Vec::new();
    let mut done = false;
    for line in text.lines() {
        let Some(data) = line
            .strip_prefix("data: ")
            .or_else(|| line.strip_prefix("data:"))
        else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        if let Some(p) = v["params"]["progress"].as_u64() {
            seen.push(p);
        }
        if v.get("result").is_some() {
            done = true;
        }
    }
    (seen, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_new_limits_while_streams_flow() {
    const STREAMS: usize = 20;
    const EVENTS: u64 = 3000;
    let upstream = TestUpstream::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("shadowcat-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("shadowcat.toml");
    std::fs::write(
        &cfg,
        "log_level = \"info\"\n[limits]\nmax_body_bytes = 100000\nmax_streams_per_session = 32\n",
    )
    .unwrap();
    let proxy = Proxy::start(
        &upstream.url().to_string(),
        "memory",
        &[],
        &[("SHADOWCAT_CONFIG", cfg.to_str().unwrap())],
    );
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let sid = initialize(&client, &proxy.addr).await;
    let headers = [
        ("accept", "application/json, text/event-stream"),
        ("content-type", "application/json"),
        ("mcp-session-id", sid.as_str()),
        ("mcp-protocol-version", VERSION),
    ];
    // 20 streams, each held after its first event until the reload.
    let mut streams = Vec::new();
    for i in 0..STREAMS {
        let body = json!({"jsonrpc":"2.0","id":100 + i,"method":"tools/call",
            "params":{"name":"progress","arguments":{"count":EVENTS,"stall":1}}});
        let mut b = http::Request::post(format!("http://{}/mcp", proxy.addr));
        for (k, v) in headers {
            b = b.header(k, v);
        }
        let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        let resp = tokio::time::timeout(WAIT, client.request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "stream {i}");
        streams.push(tokio::spawn(progress_of(resp)));
    }

    std::fs::write(
        &cfg,
        "log_level = \"debug\"\n[limits]\nmax_body_bytes = 300\nmax_streams_per_session = 32\nmax_buffered_bytes = 134217728\n",
    )
    .unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + WAIT;
    let (mut reloaded, mut restart) = (None, None);
    while reloaded.is_none() || restart.is_none() {
        let line = proxy
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the reload is logged");
        if line.contains("configuration reloaded") {
            reloaded = Some(line);
        } else if line.contains("apply only after a restart") {
            restart = Some(line);
        }
    }
    let reloaded = reloaded.unwrap();
    assert!(reloaded.contains("max_body_bytes=300"), "{reloaded}");
    assert!(reloaded.contains("log_level=debug"), "{reloaded}");
    assert!(
        restart.unwrap().contains("max_buffered_bytes"),
        "the buffer budget needs a restart"
    );

    // The streams go on: let them past their stall, then every event
    // arrives once, in order.
    for _ in 0..STREAMS {
        upstream.release();
    }
    for (i, s) in streams.into_iter().enumerate() {
        let (seen, done) = s.await.unwrap();
        let want: Vec<u64> = (1..=EVENTS).collect();
        assert_eq!(
            seen.len() as u64,
            EVENTS,
            "stream {i}: {} events",
            seen.len()
        );
        assert!(seen == want, "stream {i}: events out of order or repeated");
        assert!(done, "stream {i} got its result");
    }

    // The new limit holds for the next request.
    let big = json!({"jsonrpc":"2.0","id":9,"method":"tools/call",
        "params":{"name":"echo","arguments":{"text":"x".repeat(400)}}});
    assert_eq!(
        call(&client, &proxy.addr, &sid, &big).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let small = json!({"jsonrpc":"2.0","id":10,"method":"tools/call",
        "params":{"name":"echo","arguments":{"text":"x"}}});
    assert_eq!(
        call(&client, &proxy.addr, &sid, &small).await,
        StatusCode::OK
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_parsable_line_per_request() {
    let upstream = TestUpstream::start().await.unwrap();
    let proxy = Proxy::start(
        &upstream.url().to_string(),
        "memory",
        &["--access-log", "json"],
        &[],
    );
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let sid = initialize(&client, &proxy.addr).await;
    let echo = json!({"jsonrpc":"2.0","id":2,"method":"tools/call",
        "params":{"name":"echo","arguments":{"text":"hi"}}});
    assert_eq!(
        call(&client, &proxy.addr, &sid, &echo).await,
        StatusCode::OK
    );
    let progress = json!({"jsonrpc":"2.0","id":3,"method":"tools/call",
        "params":{"name":"progress","arguments":{"count":5}}});
    assert_eq!(
        call(&client, &proxy.addr, &sid, &progress).await,
        StatusCode::OK
    );
    let refused = json!({"jsonrpc":"2.0","id":4,"method":"tools/list"});
    assert_eq!(
        call(&client, &proxy.addr, "not-a-session", &refused).await,
        StatusCode::NOT_FOUND
    );

    let mut records = Vec::new();
    let deadline = Instant::now() + WAIT;
    while records.len() < 4 {
        let line = proxy
            .stdout
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("an access log line per request");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        records.push(v);
    }
    let init = &records[0];
    assert_eq!(init["mcp_method"], "initialize", "{init}");
    assert_eq!(init["http_method"], "POST");
    assert_eq!(init["status"], 200);
    assert!(init["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(init["time"].as_str().unwrap().ends_with('Z'));
    let fp = init["session_fp"].as_str().expect("a fingerprint");
    assert_eq!(fp.len(), 8, "{init}");
    assert!(init["bytes_in"].as_u64().unwrap() > 50);
    assert!(init["upstream_ms"].as_f64().is_some());
    let echo = &records[1];
    assert_eq!(echo["tool"], "echo", "{echo}");
    assert_eq!(echo["session_fp"], fp, "the same session");
    assert!(echo["bytes_out"].as_u64().unwrap() > 0);
    let stream = &records[2];
    assert_eq!(stream["tool"], "progress");
    assert!(stream["events"].as_u64().unwrap() >= 6, "{stream}");
    let no = &records[3];
    assert_eq!(no["status"], 404, "{no}");
    for r in &records {
        assert!(
            !r.to_string().contains(&sid),
            "the full id never appears: {r}"
        );
        assert!(r["total_ms"].as_f64().unwrap() >= 0.0);
    }
}
