//! TLS with the real binary: `shadowcat reverse` with a TLS listener
//! (certificate from the config file) before an https upstream (CA from
//! `SHADOWCAT_UPSTREAM_CA`), its certificate swapped by SIGHUP while an
//! HTTP/2 stream stays open; `shadowcat forward stdio --upstream https://…`
//! with `--upstream-ca`, and its start-up error for an untrusted upstream.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use shadowcat_proxy::test_util::TestUpstream;
use shadowcat_proxy::test_util::certs::{TestCa, Validity, serial_of};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const WAIT: Duration = Duration::from_secs(20);
const VERSION: &str = "2025-11-25";
const NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

fn shadowcat() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shadowcat"));
    c.env("RUST_LOG", "info");
    for (k, _) in std::env::vars() {
        if k.starts_with("SHADOWCAT_") {
            c.env_remove(k);
        }
    }
    c
}

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let p =
            std::env::temp_dir().join(format!("shadowcat-cli-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills the child when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An HTTP/2 connection to the TLS listener, trusting only `ca`; the
/// serial of the certificate it was shown.
async fn h2(
    addr: SocketAddr,
    ca: &TestCa,
) -> (hyper::client::conn::http2::SendRequest<Full<Bytes>>, u64) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = TlsConnector::from(ca.client_config(&[b"h2"]));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .unwrap()
        .unwrap();
    let (_, session) = tls.get_ref();
    assert_eq!(session.alpn_protocol(), Some(b"h2".as_slice()));
    let serial = serial_of(session.peer_certificates().unwrap()[0].as_ref()).unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    (send, serial)
}

async fn post(
    send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    sid: Option<&str>,
    body: &Value,
) -> http::Response<hyper::body::Incoming> {
    let mut b = Request::post(format!("https://localhost:{}/mcp", addr.port()))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", VERSION);
    if let Some(sid) = sid {
        b = b.header("mcp-session-id", sid);
    }
    let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    send.ready().await.unwrap();
    tokio::time::timeout(WAIT, send.send_request(req))
        .await
        .unwrap()
        .unwrap()
}

fn initialize() -> Value {
    json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion": VERSION, "capabilities": {},
        "clientInfo": {"name": "test", "version": "0"}}})
}

/// Reads SSE `progress` values until the response; returns them.
async fn progress_of(resp: http::Response<hyper::body::Incoming>) -> (Vec<u64>, bool) {
    let mut body = resp.into_body();
    let mut buf = String::new();
    let mut seen = Vec::new();
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(WAIT, body.frame()).await {
        if let Ok(data) = frame.into_data() {
            buf.push_str(std::str::from_utf8(&data).unwrap());
        }
        while let Some(pos) = buf.find("\n\n") {
            let block: String = buf.drain(..pos + 2).collect();
            for line in block.lines() {
                let Some(data) = line.strip_prefix("data: ") else {
                    continue;
                };
                let v: Value = serde_json::from_str(data).unwrap();
                if let Some(p) = v["params"]["progress"].as_u64() {
                    seen.push(p);
                } else if v.get("result").is_some() {
                    return (seen, true);
                }
            }
        }
    }
    (seen, false)
}

fn metrics(admin: &str) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nhost: {admin}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_listener_certificate_while_an_h2_stream_stays_open() {
    let dir = Dir::new("sighup");
    let ca = TestCa::new("test CA");
    let upstream = TestUpstream::start_tls(ca.server(&NAMES, 1, Validity::Current).server_config())
        .await
        .unwrap();
    let ca_file = dir.0.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let (cert, key) = ca
        .server(&NAMES, 100, Validity::Current)
        .write(&dir.0, "listener");
    let cfg = dir.0.join("shadowcat.toml");
    std::fs::write(
        &cfg,
        format!(
            "tls_cert = {:?}\ntls_key = {:?}\n[limits]\ntls_handshake_timeout_ms = 5000\n",
            cert.to_str().unwrap(),
            key.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut child = shadowcat()
        .env("SHADOWCAT_CONFIG", &cfg)
        .env("SHADOWCAT_UPSTREAM_CA", &ca_file)
        .args(["--log-format", "json", "--store", "memory"])
        .args([
            "reverse",
            "--upstream",
            &upstream.url_for("localhost").to_string(),
        ])
        .args(["--bind", "127.0.0.1:0", "--admin-bind", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let pid = child.id();
    let _running = Running(child);
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut addr, mut admin) = (None, None);
    while addr.is_none() || admin.is_none() {
        let line = lines.recv_timeout(WAIT).expect("addresses logged");
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
    let addr: SocketAddr = addr.unwrap().parse().unwrap();
    let admin = admin.unwrap();

    let (mut old, serial) = h2(addr, &ca).await;
    assert_eq!(serial, 100);
    let resp = post(&mut old, addr, None, &initialize()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let sid = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let _ = resp.into_body().collect().await;
    let call = json!({"jsonrpc":"2.0","id":2,"method":"tools/call",
        "params":{"name":"progress","arguments":{"count":500,"gated":true}}});
    let resp = post(&mut old, addr, Some(&sid), &call).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let stream = tokio::spawn(progress_of(resp));
    upstream.first_event_sent().await;

    let hup = |expect: &str| {
        let ok = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + WAIT;
        loop {
            let line = lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("the reload is logged");
            if line.contains(expect) {
                return line;
            }
        }
    };
    // A renewed certificate under the same names.
    ca.server(&NAMES, 101, Validity::Current)
        .write(&dir.0, "listener");
    let line = hup("configuration reloaded");
    assert!(line.contains("tls_certificate"), "{line}");
    let (mut new, serial) = h2(addr, &ca).await;
    assert_eq!(serial, 101, "new handshakes see the new certificate");
    let echo = json!({"jsonrpc":"2.0","id":3,"method":"tools/call",
        "params":{"name":"echo","arguments":{"text":"hi"}}});
    let resp = post(&mut new, addr, Some(&sid), &echo).await;
    assert_eq!(resp.status(), StatusCode::OK);

    // A bad key: logged, counted, the last good certificate stays.
    std::fs::write(dir.0.join("listener.key"), "garbage").unwrap();
    let line = hup("TLS certificate not reloaded");
    assert!(line.contains("listener.key"), "{line}");
    let (_, serial) = h2(addr, &ca).await;
    assert_eq!(serial, 101);
    let text = metrics(&admin);
    assert!(
        text.contains("shadowcat_tls_reloads_total{result=\"error\"} 1"),
        "{text}"
    );

    // The stream opened before both reloads ends whole.
    upstream.release();
    let (seen, done) = stream.await.unwrap();
    assert_eq!(seen, (1..=500).collect::<Vec<u64>>());
    assert!(done);
}

/// `shadowcat forward stdio --upstream URL` with `extra` flags; its stdin,
/// stdout lines and the child.
fn forward(url: &str, extra: &[&str]) -> (Running, mpsc::Receiver<String>) {
    let mut child = shadowcat()
        .env("RUST_LOG", "warn")
        .args(["forward", "stdio", "--upstream", url])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Running(child), rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_stdio_reaches_an_https_upstream_with_a_private_ca() {
    let dir = Dir::new("forward");
    let ca = TestCa::new("test CA");
    let upstream = TestUpstream::start_tls(ca.server(&NAMES, 2, Validity::Current).server_config())
        .await
        .unwrap();
    let ca_file = dir.0.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let url = upstream.url_for("localhost").to_string();
    let (mut relay, out) = forward(&url, &["--upstream-ca", ca_file.to_str().unwrap()]);
    let mut stdin = relay.0.stdin.take().unwrap();
    writeln!(stdin, "{}", initialize()).unwrap();
    let line = tokio::task::spawn_blocking(move || out.recv_timeout(WAIT))
        .await
        .unwrap()
        .expect("an answer");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["result"]["protocolVersion"], VERSION, "{v}");
    drop(stdin);

    // Without the CA the upstream is not trusted: a start-up error naming
    // the host and the reason.
    let (mut relay, _) = forward(&url, &[]);
    let child = &mut relay.0;
    let mut stderr = child.stderr.take().unwrap();
    let read = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    // The relay exits at once: its stderr closes.
    let status = tokio::time::timeout(WAIT, read)
        .await
        .expect("the relay exits in time")
        .unwrap();
    let code = relay.0.wait().unwrap();
    assert!(!code.success());
    assert!(status.contains("localhost"), "{status}");
    assert!(status.contains("unknown issuer"), "{status}");
}
