//! The `shadowcat` binary end to end: start-up errors are one line and a
//! non-zero exit; `reverse` proxies to a real test upstream, serves
//! /healthz and /metrics, exits 0 on SIGTERM with the session in the file
//! store; `sessions list|show|delete` read and clean that store.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use shadowcat_proxy::test_util::TestUpstream;

const WAIT: Duration = Duration::from_secs(20);

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

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shadowcat-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs to completion (bounded) and returns the output.
fn run(mut cmd: Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shadowcat");
    wait_output(child)
}

fn wait_output(child: Child) -> Output {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(WAIT)
        .expect("shadowcat exits in time")
        .expect("output")
}

fn assert_one_line_failure(out: &Output, needle: &str) {
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].starts_with("shadowcat: "), "{stderr}");
    assert!(lines[0].contains(needle), "{needle:?} in {stderr}");
}

#[test]
fn start_up_errors_are_one_line() {
    let mut c = shadowcat();
    c.args(["reverse", "--upstream", "ftp://x/mcp", "--store", "memory"]);
    assert_one_line_failure(&run(c), "http://");

    let mut c = shadowcat();
    c.args(["reverse", "--store", "memory"]);
    assert_one_line_failure(&run(c), "--upstream");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut c = shadowcat();
    c.args([
        "reverse",
        "--upstream",
        "http://127.0.0.1:9/mcp",
        "--store",
        "memory",
    ])
    .args(["--bind", &addr, "--admin-bind", "127.0.0.1:0"]);
    assert_one_line_failure(&run(c), &addr);

    let mut c = shadowcat();
    c.args(["reverse", "--upstream", "http://127.0.0.1:9/mcp"])
        .args(["--store", "file:/nonexistent-shadowcat-dir/x.redb"])
        .args(["--bind", "127.0.0.1:0", "--admin-bind", "127.0.0.1:0"]);
    assert_one_line_failure(&run(c), "nonexistent-shadowcat-dir");

    let mut c = shadowcat();
    c.args([
        "reverse",
        "--upstream",
        "http://127.0.0.1:9/mcp",
        "--store",
        "memory",
    ])
    .args(["--upstream-bearer", "literal-token"]);
    assert_one_line_failure(&run(c), "env:VAR");

    let dir = temp_dir("badconfig");
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, "upstrem = \"http://127.0.0.1:9/mcp\"\n").unwrap();
    let mut c = shadowcat();
    c.args(["reverse", "--config", cfg.to_str().unwrap()]);
    assert_one_line_failure(&run(c), "upstrem");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn auth_start_up_errors_are_one_line() {
    let base = |c: &mut Command| {
        c.args(["reverse", "--upstream", "http://127.0.0.1:9/mcp"])
            .args(["--store", "memory", "--bind", "127.0.0.1:0"])
            .args(["--admin-bind", "off"]);
    };
    let mut c = shadowcat();
    base(&mut c);
    c.env("SHADOWCAT_AUTH_MODE", "oauth");
    assert_one_line_failure(&run(c), "public_url");

    // Nothing listens on the discard port: discovery fails, naming what
    // it tried.
    let mut c = shadowcat();
    base(&mut c);
    c.args([
        "--auth-mode",
        "oauth",
        "--public-url",
        "http://127.0.0.1:8080/mcp",
    ])
    .args(["--auth-issuer", "http://127.0.0.1:9"]);
    assert_one_line_failure(&run(c), "oauth-authorization-server");

    let mut c = shadowcat();
    base(&mut c);
    c.args([
        "--auth-mode",
        "passthrough",
        "--public-url",
        "http://127.0.0.1:8080/mcp",
    ])
    .args(["--auth-introspection-client-secret", "literal"]);
    assert_one_line_failure(&run(c), "env:VAR");
}

/// Reads the JSON log lines until both listeners have announced their
/// addresses.
fn listening_addrs(lines: &mpsc::Receiver<String>) -> (String, String) {
    let (mut proxy, mut admin) = (None, None);
    while proxy.is_none() || admin.is_none() {
        let line = lines
            .recv_timeout(WAIT)
            .expect("shadowcat logs its addresses");
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let msg = v["fields"]["message"].as_str().unwrap_or("");
        let addr = v["fields"]["addr"].as_str().map(str::to_owned);
        if msg.contains("reverse proxy listening") {
            proxy = addr;
        } else if msg.contains("admin listening") {
            admin = addr;
        }
    }
    (proxy.unwrap(), admin.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_serves_then_stops_cleanly_and_sessions_are_inspectable() {
    let upstream = TestUpstream::start().await.unwrap();
    let dir = temp_dir("serve");
    let store = format!("file:{}", dir.join("s.redb").display());
    let cfg = dir.join("shadowcat.toml");
    std::fs::write(&cfg, "bind = \"127.0.0.1:0\"\n[limits]\nmax_sessions = 5\n").unwrap();
    let mut child = shadowcat()
        .env("RUST_LOG", "info")
        .env("SHADOWCAT_UPSTREAM", upstream.url().to_string())
        .env("SHADOWCAT_STORE", &store)
        .args(["--log-format", "json", "--config", cfg.to_str().unwrap()])
        .args(["reverse", "--admin-bind", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (proxy, admin) = listening_addrs(&lines);

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"0"}}});
    let req = http::Request::post(format!("http://{proxy}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(init.to_string())))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sid = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let _ = resp.into_body().collect().await.unwrap();

    let get = |path: &str| {
        let req = http::Request::get(format!("http://{admin}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        client.request(req)
    };
    let health = tokio::time::timeout(WAIT, get("/healthz"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(health.status(), 200);
    let metrics = tokio::time::timeout(WAIT, get("/metrics"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("shadowcat_requests_total"), "{text}");
    assert!(text.contains("shadowcat_sessions_created_total"), "{text}");
    let tasks = text
        .lines()
        .find_map(|l| l.strip_prefix("shadowcat_tokio_tasks_alive "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("a shadowcat_tokio_tasks_alive gauge");
    assert!(tasks >= 1.0, "{text}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = rx.recv_timeout(WAIT).expect("exits in time").unwrap();
    assert!(status.success(), "exit 0 on SIGTERM: {status:?}");

    // The session outlives the process in the file store.
    let mut c = shadowcat();
    c.args(["sessions", "list", "--store", &store, "--admin-bind", "off"]);
    let out = run(c);
    assert!(out.status.success(), "{out:?}");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains(&sid), "{listed}");
    assert!(listed.contains("2025-06-18"), "{listed}");

    let mut c = shadowcat();
    c.args([
        "sessions",
        "show",
        &sid,
        "--store",
        &store,
        "--admin-bind",
        "off",
    ]);
    let out = run(c);
    assert!(out.status.success(), "{out:?}");
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["id"], sid.as_str());

    let mut c = shadowcat();
    c.args([
        "sessions",
        "delete",
        &sid,
        "--store",
        &store,
        "--admin-bind",
        "off",
    ]);
    assert!(run(c).status.success());
    let mut c = shadowcat();
    c.args([
        "sessions",
        "show",
        &sid,
        "--store",
        &store,
        "--admin-bind",
        "off",
    ]);
    let out = run(c);
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(dir);
}
