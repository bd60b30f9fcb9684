//! The `tls` scenario: Shadowcat with a TLS listener and an https
//! upstream (`shadowcat-tls`) against plain-HTTP Shadowcat and direct, in
//! the same run and rounds: CPU per event (`stream` load) and per round
//! trip (`requests` load, JSON answers).
//!
//! The load clients and the upstream speak plain HTTP/1.1, so TLS is added
//! around Shadowcat by two in-process relays: a tunnel that the clients
//! connect to (TLS toward Shadowcat's listener, ALPN http/1.1, trusting the
//! run's test CA) and a front before the upstream (terminating the https
//! Shadowcat connects to). Their CPU is the harness's, never the proxy's:
//! the proxy's CPU per event and per request is what TLS costs Shadowcat,
//! both handshakes' sides and record encryption both ways.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::procs::{self, Proc, Shadowcat};
use crate::report::Point;
use crate::scenario::{self, RequestLoad, StreamLoad, Target, Via};
use crate::{Env, Plan, point, rounds};

/// Accepts on a loopback port and hands each connection to `serve`.
struct Relay {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    async fn start<F, Fut>(serve: F) -> std::io::Result<Self>
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let _ = s.set_nodelay(true);
                tokio::spawn(serve(s));
            }
        });
        Ok(Relay { addr, task })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// TLS terminated before the plain upstream at `upstream`.
async fn front(certs: &benches::tls::CertFiles, upstream: SocketAddr) -> Result<Relay, String> {
    use rustls::pki_types::pem::PemObject;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&certs.key)
        .map_err(|e| format!("{}: {e}", certs.key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(pem_certs(&certs.cert)?, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    Relay::start(move |s| {
        let acceptor = acceptor.clone();
        async move {
            let (Ok(mut tls), Ok(mut up)) =
                (acceptor.accept(s).await, TcpStream::connect(upstream).await)
            else {
                return;
            };
            let _ = up.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
        }
    })
    .await
    .map_err(|e| e.to_string())
}

/// Plain HTTP in, TLS (trusting the run's CA) toward `target`.
async fn tunnel(certs: &benches::tls::CertFiles, target: SocketAddr) -> Result<Relay, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certs(&certs.ca)? {
        roots.add(c).map_err(|e| e.to_string())?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    Relay::start(move |mut s| {
        let connector = connector.clone();
        async move {
            let Ok(tcp) = TcpStream::connect(target).await else {
                return;
            };
            let _ = tcp.set_nodelay(true);
            let name = rustls::pki_types::ServerName::try_from("localhost").expect("a DNS name");
            let Ok(mut tls) = connector.connect(name, tcp).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut s, &mut tls).await;
        }
    })
    .await
    .map_err(|e| e.to_string())
}

/// `shadowcat reverse` with a TLS listener before the https `upstream`.
async fn tls_shadowcat(
    env: &Env,
    certs: &benches::tls::CertFiles,
    upstream: SocketAddr,
) -> Result<Shadowcat, String> {
    let dir = &env.dir;
    let port = || procs::free_port().map_err(|e| e.to_string());
    let addr: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, port()?).into();
    let admin: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, port()?).into();
    let config = dir.join("shadowcat-tls-tls.toml");
    std::fs::write(&config, procs::SHADOWCAT_LIMITS).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&env.args.shadowcat);
    cmd.env("RUST_LOG", "warn")
        .arg("--config")
        .arg(&config)
        .arg("--store")
        .arg(format!(
            "file:{}",
            dir.join("tls-shadowcat-tls.redb").display()
        ))
        .arg("reverse")
        .arg("--upstream")
        .arg(format!("https://{upstream}/mcp"))
        .arg("--upstream-ca")
        .arg(&certs.ca)
        .arg("--tls-cert")
        .arg(&certs.cert)
        .arg("--tls-key")
        .arg(&certs.key)
        .arg("--bind")
        .arg(addr.to_string())
        .arg("--admin-bind")
        .arg(admin.to_string())
        .current_dir(dir);
    let mut proc = Proc::spawn("shadowcat-tls", cmd, dir.join("shadowcat-tls-tls.log"))
        .map_err(|e| e.to_string())?;
    proc.wait_listening(addr).await.map_err(|e| e.to_string())?;
    proc.wait_listening(admin)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Shadowcat {
        proc,
        addr,
        admin,
        redis: None,
    })
}

/// Runs the TLS row: direct, plain Shadowcat and Shadowcat over TLS both
/// ways, a paced stream load and a request load.
pub(crate) async fn run(env: &mut Env, plan: &Plan, points: &mut Vec<Point>) {
    let certs = match benches::tls::write_certs(&env.dir.join("tls")) {
        Ok(c) => c,
        Err(e) => return env.note(format!("tls: not measured, no certificates: {e}")),
    };
    let relays = async {
        let front = front(&certs, env.upstream).await?;
        let proxy = tls_shadowcat(env, &certs, front.addr).await?;
        let tunnel = tunnel(&certs, proxy.addr).await?;
        Ok::<_, String>((front, proxy, tunnel))
    };
    let (_front, proxy, tunnel) = match relays.await {
        Ok(r) => r,
        Err(e) => return env.note(format!("tls: shadowcat-tls not measured: {e}")),
    };
    let mut targets = vec![env.direct()];
    targets.extend(env.shadowcat("shadowcat", "tls", None).await);
    targets.push(Target {
        name: "shadowcat-tls".into(),
        addr: tunnel.addr,
        via: Via::Shadowcat(proxy),
        up: env.up,
    });
    let (warm_ms, window_ms) = (plan.warm_ms, plan.window_ms);
    let rate = plan.stream_rates.first().copied().unwrap_or(100);
    let load = StreamLoad {
        sessions: plan.stream_sessions,
        rate,
        batch: 1,
        size: 0,
        warm_ms,
        window_ms,
    };
    let r = rounds(&targets, plan.rounds, async |t| {
        scenario::stream_once(t, load).await
    })
    .await;
    points.push(point(
        "stream",
        format!(
            "TLS row: {} sessions x {rate} events/s; shadowcat-tls has a TLS listener and an https upstream",
            load.sessions
        ),
        serde_json::to_value(load).unwrap_or_default(),
        r,
    ));
    let load = RequestLoad {
        clients: plan.clients,
        payload: plan.payload,
        sse: false,
        warm_ms,
        window_ms,
    };
    let r = rounds(&targets, plan.rounds, async |t| {
        scenario::requests_once(t, load).await
    })
    .await;
    points.push(point(
        "requests",
        format!(
            "TLS row: {} sessions, tools/call answered with JSON; shadowcat-tls has a TLS listener and an https upstream",
            load.clients
        ),
        serde_json::to_value(load).unwrap_or_default(),
        r,
    ));
}
