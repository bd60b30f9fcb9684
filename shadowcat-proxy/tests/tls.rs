//! TLS both ways, with certificates made here (rcgen): https upstreams
//! (private CA, unknown issuer, expired, wrong name, mTLS), the TLS
//! listener over HTTP/1.1 and HTTP/2 (a stream cut and resumed over h2),
//! and a certificate swapped by reload while a stream stays open.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use shadowcat_proxy::test_util::TestUpstream;
use shadowcat_proxy::test_util::certs::{TestCa, TestCert, Validity, serial_of};
use shadowcat_proxy::{ListenerTlsConfig, ReverseProxy, ReverseProxyConfig, UpstreamTlsConfig};
use shadowcat_session::{MemoryStore, SessionStore};
use support::sse::{Rng, SseClient, Tally};
use support::{WAIT, body_bytes, body_json, call, initialize};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;

/// A scratch directory for one test's files, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("shadowcat-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// A running proxy; stopped on drop.
struct Proxy {
    addr: SocketAddr,
    admin: shadowcat_proxy::admin::Admin,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.abort();
    }
}

async fn bind(config: ReverseProxyConfig) -> Result<ReverseProxy, shadowcat_proxy::ProxyError> {
    let store = Arc::new(MemoryStore::new()) as Arc<dyn SessionStore>;
    ReverseProxy::bind(config, store, None).await
}

async fn start(config: ReverseProxyConfig) -> Proxy {
    let proxy = bind(config).await.expect("proxy binds");
    let addr = proxy.local_addr();
    let admin = proxy.admin();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = proxy
            .serve_with_drain(
                async {
                    let _ = stopped.await;
                },
                Duration::from_secs(2),
            )
            .await;
    });
    Proxy {
        addr,
        admin,
        stop: Some(stop),
        task,
    }
}

fn config_for(upstream: http::Uri) -> ReverseProxyConfig {
    let mut c = ReverseProxyConfig::new(upstream);
    c.bind = "127.0.0.1:0".parse().unwrap();
    c.limits.upstream_connect_timeout = Duration::from_secs(3);
    c
}

/// A client connection to the TLS listener: HTTP/2 or HTTP/1.1, as ALPN
/// chose, trusting only `ca`.
enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

struct TlsClient {
    conn: Conn,
    /// The serial of the certificate the server presented.
    serial: u64,
    /// The protocol ALPN chose.
    alpn: Option<Vec<u8>>,
    authority: String,
}

impl TlsClient {
    async fn connect(addr: SocketAddr, ca: &TestCa, alpn: &[&[u8]]) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let connector = TlsConnector::from(ca.client_config(alpn));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
            .await
            .expect("handshake in time")
            .expect("handshake");
        let (_, session) = tls.get_ref();
        let serial = serial_of(session.peer_certificates().unwrap()[0].as_ref()).unwrap();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let io = TokioIo::new(tls);
        let conn = if alpn.as_deref() == Some(b"h2".as_slice()) {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Conn::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Conn::H1(send)
        };
        TlsClient {
            conn,
            serial,
            alpn,
            authority: format!("localhost:{}", addr.port()),
        }
    }

    async fn send(
        &mut self,
        method: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Response<Incoming> {
        let h2 = matches!(self.conn, Conn::H2(_));
        let uri = if h2 {
            format!("https://{}/mcp", self.authority)
        } else {
            "/mcp".to_owned()
        };
        let mut b = Request::builder().method(method).uri(uri);
        if !h2 {
            b = b.header("host", &self.authority);
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body.into())).unwrap();
        let sent = async {
            match &mut self.conn {
                Conn::H1(s) => {
                    s.ready().await?;
                    s.send_request(req).await
                }
                Conn::H2(s) => {
                    s.ready().await?;
                    s.send_request(req).await
                }
            }
        };
        tokio::time::timeout(WAIT, sent)
            .await
            .expect("answer in time")
            .expect("answer")
    }

    async fn post(&mut self, sid: Option<&str>, body: &Value) -> Response<Incoming> {
        let mut h = vec![
            ("accept", "application/json, text/event-stream"),
            ("content-type", "application/json"),
            ("mcp-protocol-version", "2025-11-25"),
        ];
        if let Some(sid) = sid {
            h.push(("mcp-session-id", sid));
        }
        self.send("POST", &h, body.to_string()).await
    }

    async fn init(&mut self) -> String {
        let resp = self.post(None, &initialize("2025-11-25")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let sid = resp.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let _ = body_bytes(resp).await;
        sid
    }
}

/// `tools/call echo` through `client`: the text comes back.
async fn echo(client: &mut TlsClient, sid: &str, text: &str) {
    let resp = client
        .post(Some(sid), &call(7, "echo", json!({"text": text})))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v = body_json(resp).await;
    assert_eq!(v["result"]["content"][0]["text"], text, "{v}");
}

/// A plain HTTP/1.1 client for a proxy with a plain listener.
async fn plain_post(addr: SocketAddr, sid: Option<&str>, body: &Value) -> Response<Incoming> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut b = Request::builder()
        .method("POST")
        .uri("/mcp")
        .header("host", format!("127.0.0.1:{}", addr.port()))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2025-11-25");
    if let Some(sid) = sid {
        b = b.header("mcp-session-id", sid);
    }
    let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    tokio::time::timeout(WAIT, send.send_request(req))
        .await
        .expect("answer in time")
        .expect("answer")
}

async fn plain_init(addr: SocketAddr) -> String {
    let resp = plain_post(addr, None, &initialize("2025-11-25")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let sid = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let _ = body_bytes(resp).await;
    sid
}

fn upstream_tls(dir: &Dir, ca: &TestCa) -> UpstreamTlsConfig {
    UpstreamTlsConfig {
        ca_file: Some(dir.write("ca.pem", &ca.pem)),
        ..UpstreamTlsConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_a_private_ca_streams_and_reuses_connections() {
    let dir = Dir::new("private-ca");
    let ca = TestCa::new("test CA");
    let server = ca.server(&NAMES, 10, Validity::Current);
    let upstream = TestUpstream::start_tls(server.server_config())
        .await
        .unwrap();
    let mut config = config_for(upstream.url_for("localhost"));
    config.upstream_tls = upstream_tls(&dir, &ca);
    let proxy = start(config).await;
    let sid = plain_init(proxy.addr).await;
    for i in 0..5 {
        let resp = plain_post(
            proxy.addr,
            Some(&sid),
            &call(i, "echo", json!({"text": format!("hi {i}")})),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let v = body_json(resp).await;
        assert_eq!(v["result"]["content"][0]["text"], format!("hi {i}"));
    }
    // An SSE stream over the TLS upstream, cut twice by the upstream and
    // resumed by the proxy.
    let resp = plain_post(
        proxy.addr,
        Some(&sid),
        &call(9, "progress", json!({"count": 300, "cuts": [100, 200]})),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut tally = Tally::new();
    assert!(
        tally
            .read(&mut SseClient::new(resp.into_body()), u64::MAX)
            .await
    );
    tally.assert_exactly_once(300);
    assert!(upstream.resumes() >= 2, "the proxy resumed over TLS");
    // Request/response traffic reused pooled TLS connections: the probe's,
    // one per stream reconnect, few others.
    let connections = upstream.connections();
    assert!(connections <= 5, "{connections} upstream TLS connections");
    assert_eq!(upstream.tls_failures(), 0);
}

/// What a proxy says when its upstream presents `cert`.
async fn start_up_error(ca: &TestCa, cert: &TestCert, host: &str) -> String {
    let dir = Dir::new(&format!("bad-{}", cert.serial));
    let upstream = TestUpstream::start_tls(cert.server_config()).await.unwrap();
    let mut config = config_for(upstream.url_for(host));
    config.upstream_tls = upstream_tls(&dir, ca);
    let e = bind(config)
        .await
        .expect_err("a bad certificate fails start-up");
    assert_eq!(upstream.requests().len(), 0, "the upstream saw no request");
    e.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_certificate_problems_fail_start_up_naming_host_and_reason() {
    let ca = TestCa::new("test CA");
    let stranger = TestCa::new("another CA");
    let cases = [
        (
            stranger.server(&NAMES, 20, Validity::Current),
            "localhost",
            "unknown issuer",
        ),
        (
            ca.server(&NAMES, 21, Validity::Expired),
            "localhost",
            "expired",
        ),
        (
            ca.server(&["other.example"], 22, Validity::Current),
            "localhost",
            "name mismatch",
        ),
        (
            ca.server(&["localhost"], 23, Validity::Current),
            "127.0.0.1",
            "name mismatch",
        ),
    ];
    for (cert, host, reason) in &cases {
        let e = start_up_error(&ca, cert, host).await;
        eprintln!("start-up: {e}");
        assert!(e.contains(host), "names the host {host}: {e}");
        assert!(e.contains(reason), "names the reason {reason}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_certificate_problems_per_request_are_502_naming_host_and_reason() {
    let dir = Dir::new("per-request");
    let ca = TestCa::new("test CA");
    let stranger = TestCa::new("another CA");
    let good = ca.server(&NAMES, 30, Validity::Current);
    let upstream = TestUpstream::start_tls(good.server_config()).await.unwrap();
    let mut config = config_for(upstream.url_for("localhost"));
    config.upstream_tls = upstream_tls(&dir, &ca);
    let proxy = start(config).await;
    let sid = plain_init(proxy.addr).await;
    let cases = [
        (
            stranger.server(&NAMES, 31, Validity::Current),
            "unknown issuer",
        ),
        (ca.server(&NAMES, 32, Validity::Expired), "expired"),
        (
            ca.server(&["other.example"], 33, Validity::Current),
            "name mismatch",
        ),
    ];
    for (n, (cert, reason)) in cases.iter().enumerate() {
        upstream.set_tls(cert.server_config());
        // A slow request holds the one pooled (good) connection, so the
        // next request needs a new handshake.
        let before = upstream.requests().len();
        let (addr, slow_sid) = (proxy.addr, sid.clone());
        let slow = tokio::spawn(async move {
            plain_post(
                addr,
                Some(&slow_sid),
                &call(100 + n as u64, "slow", json!({"ms": 400})),
            )
            .await
        });
        assert!(upstream.wait_requests(before + 1, WAIT).await);
        let resp = plain_post(
            proxy.addr,
            Some(&sid),
            &call(1, "echo", json!({"text": "x"})),
        )
        .await;
        let msg = support::assert_rpc_error(resp, StatusCode::BAD_GATEWAY, -32603).await;
        eprintln!("per request: {msg}");
        assert!(msg.contains("localhost"), "names the host: {msg}");
        assert!(msg.contains(reason), "names the reason {reason}: {msg}");
        assert_eq!(
            upstream.requests().len(),
            before + 1,
            "the upstream saw only the slow request"
        );
        let slow = slow.await.unwrap();
        assert_eq!(slow.status(), StatusCode::OK);
        let _ = body_bytes(slow).await;
        upstream.set_tls(good.server_config());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_upstream_works_with_the_client_certificate_and_fails_without() {
    let dir = Dir::new("mtls");
    let ca = TestCa::new("test CA");
    let server = ca.server(&NAMES, 40, Validity::Current);
    let client = ca.client("shadowcat", 41);
    let upstream = TestUpstream::start_tls(server.server_config_requiring_client(&ca))
        .await
        .unwrap();
    let (cert, key) = client.write(&dir.0, "client");
    let mut config = config_for(upstream.url_for("localhost"));
    config.upstream_tls = UpstreamTlsConfig {
        client_cert: Some(cert),
        client_key: Some(key),
        ..upstream_tls(&dir, &ca)
    };
    let with = start(config).await;
    let sid = plain_init(with.addr).await;
    let resp = plain_post(
        with.addr,
        Some(&sid),
        &call(2, "echo", json!({"text": "m"})),
    )
    .await;
    assert_eq!(body_json(resp).await["result"]["content"][0]["text"], "m");

    let seen = upstream.requests().len();
    let mut config = config_for(upstream.url_for("localhost"));
    config.upstream_tls = upstream_tls(&dir, &ca);
    // TLS 1.3: the client's side of the handshake completes before the
    // server checks the certificate, so the refusal comes on first use,
    // at start (the probe) or on the request.
    let msg = match bind(config.clone()).await {
        Err(e) => e.to_string(),
        Ok(p) => {
            drop(p);
            let without = start(config).await;
            let resp = plain_post(without.addr, None, &initialize("2025-11-25")).await;
            support::assert_rpc_error(resp, StatusCode::BAD_GATEWAY, -32603).await
        }
    };
    assert!(msg.contains("localhost"), "names the host: {msg}");
    eprintln!("mTLS without a client certificate: {msg}");
    assert!(
        msg.contains("client certificate"),
        "names the reason: {msg}"
    );
    assert_eq!(
        upstream.requests().len(),
        seen,
        "the upstream served nothing"
    );
}

/// A proxy with a TLS listener (certificate `serial`) before a plain test
/// upstream.
async fn tls_proxy(
    dir: &Dir,
    ca: &TestCa,
    serial: u64,
    tweak: impl FnOnce(&mut ReverseProxyConfig),
) -> (TestUpstream, Proxy, ReverseProxyConfig) {
    let upstream = TestUpstream::start().await.unwrap();
    let (cert_file, key_file) = ca
        .server(&NAMES, serial, Validity::Current)
        .write(&dir.0, "listener");
    let mut config = config_for(upstream.url());
    config.tls = Some(ListenerTlsConfig {
        cert_file,
        key_file,
    });
    tweak(&mut config);
    let proxy = start(config.clone()).await;
    (upstream, proxy, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_http1_and_h2() {
    let dir = Dir::new("listener");
    let ca = TestCa::new("test CA");
    let (_upstream, proxy, _) = tls_proxy(&dir, &ca, 50, |_| {}).await;
    for (alpn, want) in [
        (&[b"http/1.1".as_slice()][..], b"http/1.1".as_slice()),
        (
            &[b"h2".as_slice(), b"http/1.1".as_slice()][..],
            b"h2".as_slice(),
        ),
    ] {
        let mut client = TlsClient::connect(proxy.addr, &ca, alpn).await;
        assert_eq!(client.alpn.as_deref(), Some(want));
        assert_eq!(client.serial, 50);
        let sid = client.init().await;
        echo(&mut client, &sid, "over TLS").await;
        let resp = client
            .post(Some(&sid), &call(3, "progress", json!({"count": 50})))
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let mut tally = Tally::new();
        assert!(
            tally
                .read(&mut SseClient::new(resp.into_body()), u64::MAX)
                .await
        );
        tally.assert_exactly_once(50);
        // A refusal keeps its JSON-RPC body over h2 (no Connection header
        // there).
        let resp = client
            .send(
                "GET",
                &[("accept", "application/json"), ("mcp-session-id", &sid)],
                "",
            )
            .await;
        let _ = support::assert_rpc_error(resp, StatusCode::NOT_ACCEPTABLE, -32600).await;
        let resp = client
            .send(
                "DELETE",
                &[
                    ("mcp-session-id", &sid),
                    ("mcp-protocol-version", "2025-11-25"),
                ],
                "",
            )
            .await;
        assert!(resp.status().is_success(), "{}", resp.status());
        let resp = client
            .post(Some(&sid), &call(4, "echo", json!({"text": "x"})))
            .await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "the session ended");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_stream_cut_and_resumed_over_h2_exactly_once() {
    let dir = Dir::new("h2-resume");
    let ca = TestCa::new("test CA");
    let (upstream, proxy, _) = tls_proxy(&dir, &ca, 60, |_| {}).await;
    let mut client = TlsClient::connect(proxy.addr, &ca, &[b"h2"]).await;
    assert_eq!(client.alpn.as_deref(), Some(b"h2".as_slice()));
    let sid = client.init().await;
    let count = 2000;
    let mut rng = Rng(0x7115_0001);
    let mut cuts = BTreeSet::new();
    while cuts.len() < 12 {
        cuts.insert(rng.between_1_and(count - 1));
    }
    let resp = client
        .post(Some(&sid), &call(5, "progress", json!({"count": count})))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut sse = SseClient::new(resp.into_body());
    let mut tally = Tally::new();
    let mut seen = 0;
    for cut in cuts {
        if tally.read(&mut sse, cut - seen).await {
            break;
        }
        seen = cut;
        // Drop the h2 stream (RST_STREAM); the connection stays and
        // carries the resume.
        drop(sse);
        let last = tally.last_id.clone().expect("an id before the cut");
        let resp = client
            .send(
                "GET",
                &[
                    ("accept", "text/event-stream"),
                    ("mcp-session-id", &sid),
                    ("mcp-protocol-version", "2025-11-25"),
                    ("last-event-id", &last),
                ],
                "",
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "resume after {last}");
        sse = SseClient::new(resp.into_body());
    }
    assert!(tally.read(&mut sse, u64::MAX).await);
    tally.assert_exactly_once(count);
    assert_eq!(upstream.resumes(), 0, "every resume came from the buffer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_the_certificate_while_a_stream_stays_open() {
    let dir = Dir::new("reload");
    let ca = TestCa::new("test CA");
    let (upstream, proxy, config) = tls_proxy(&dir, &ca, 70, |_| {}).await;
    let mut old = TlsClient::connect(proxy.addr, &ca, &[b"h2"]).await;
    assert_eq!(old.serial, 70);
    let sid = old.init().await;
    let resp = old
        .post(
            Some(&sid),
            &call(6, "progress", json!({"count": 20, "gated": true})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut sse = SseClient::new(resp.into_body());
    let mut tally = Tally::new();
    upstream.first_event_sent().await;

    // A renewed certificate under the same file names.
    ca.server(&NAMES, 71, Validity::Current)
        .write(&dir.0, "listener");
    let report = proxy.admin.reload(&config);
    assert!(
        report.applied.contains(&"tls_certificate".to_owned()),
        "{report:?}"
    );
    let mut new = TlsClient::connect(proxy.addr, &ca, &[b"h2"]).await;
    assert_eq!(new.serial, 71, "a new handshake sees the new certificate");
    echo(&mut new, &sid, "new cert").await;

    // A broken one: the current certificate stays.
    dir.write("listener.pem", "not a certificate");
    let report = proxy.admin.reload(&config);
    assert!(
        !report.applied.contains(&"tls_certificate".to_owned()),
        "{report:?}"
    );
    let again = TlsClient::connect(proxy.addr, &ca, &[b"h2"]).await;
    assert_eq!(
        again.serial, 71,
        "a bad file keeps the last good certificate"
    );

    // The stream opened before the swap runs to its end.
    upstream.release();
    assert!(tally.read(&mut sse, u64::MAX).await);
    tally.assert_exactly_once(20);
    echo(&mut old, &sid, "old connection").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_handshakes_time_out_and_the_connection_cap_holds() {
    let dir = Dir::new("limits");
    let ca = TestCa::new("test CA");
    let (_upstream, proxy, _) = tls_proxy(&dir, &ca, 80, |c| {
        c.limits.tls_handshake_timeout = Duration::from_millis(300);
        c.limits.max_connections = 2;
    })
    .await;
    // A client that never says hello is closed after the timeout.
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut silent, &mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a byte");
    assert!(started.elapsed() >= Duration::from_millis(250));
    drop(silent);

    // Two connections open: a third is closed before any handshake (a
    // proxy of its own, so the silent one is surely gone).
    let (_upstream, proxy, _) = tls_proxy(&dir, &ca, 81, |c| {
        c.limits.max_connections = 2;
    })
    .await;
    let mut a = TlsClient::connect(proxy.addr, &ca, &[b"h2"]).await;
    let _b = TlsClient::connect(proxy.addr, &ca, &[b"http/1.1"]).await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let connector = TlsConnector::from(ca.client_config(&[b"h2"]));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let third = tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("refused in time");
    assert!(third.is_err(), "over max_connections");
    // The open ones still work.
    let sid = a.init().await;
    echo(&mut a, &sid, "still here").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_finishes_the_handshake_is_a_504_not_a_hang() {
    let dir = Dir::new("silent-upstream");
    let ca = TestCa::new("test CA");
    // Accepts TCP, then says nothing: no ServerHello ever comes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            open.push(s);
        }
    });
    let mut config = config_for(format!("https://localhost:{port}/mcp").parse().unwrap());
    config.upstream_tls = upstream_tls(&dir, &ca);
    config.limits.upstream_connect_timeout = Duration::from_millis(300);
    // At start the probe times out: logged, not fatal (the upstream may
    // come up later).
    let proxy = start(config).await;
    let started = std::time::Instant::now();
    let resp = plain_post(proxy.addr, None, &initialize("2025-11-25")).await;
    let msg = support::assert_rpc_error(resp, StatusCode::GATEWAY_TIMEOUT, -32603).await;
    assert!(msg.contains("300ms"), "names the timeout: {msg}");
    assert!(started.elapsed() < Duration::from_secs(5));
    held.abort();
}
