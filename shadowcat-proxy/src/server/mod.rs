//! The Streamable HTTP reverse proxy: validates each client request,
//! forwards it upstream with an allowlist of headers, maps session ids and
//! forwards the response (JSON streamed through, SSE event by event).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use shadowcat_session::{SessionStore, WriterHandle};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::collect::{ReadError, ReadLimits, read_whole};
use crate::config::{Limits, ReverseProxyConfig};
use crate::error::ProxyError;
use crate::event_id::StreamSealer;
use crate::mcp::jsonrpc::{self};
use crate::mcp::protocol::ProtocolVersion;
use crate::mcp::{
    MCP_METHOD, MCP_NAME, MCP_PROTOCOL_VERSION, MCP_SESSION_ID, X_ACCEL_BUFFERING, is_sse,
    media_type_is,
};
use crate::server::body::{ProxyBody, SseForward};
use crate::session::{CacheLimits, SessionEntry, Sessions};
use crate::stream::budget::Budget;
use crate::stream::sink::WriterSink;
use crate::stream::{Closing, StreamSlot};
use crate::stream::{Pump, PumpSource, PumpSpec, StreamBody, StreamEnv, StreamKind, StreamShared};
use crate::upstream::http::{UpstreamBody, UpstreamPool};
use crate::upstream::stdio::StdioBridge;
use conns::{AcceptErrors, OpenConnection, refusal_reply, refuse, warn_on_file_limit};
use guard::HostCheck;
use rejection::Rejection;

pub(crate) mod access;
pub(crate) mod admin;
pub(crate) mod body;
mod conns;
mod credentials;
mod delete;
pub(crate) mod ender;
mod get;
mod guard;
mod legacy;
mod listen;
mod post;
pub(crate) mod ratelimit;
mod rejection;
mod stdio;

/// Request headers forwarded upstream (besides the mapped session id and
/// the configured credentials). Everything else, the client's
/// `Authorization` (but in `[auth] mode = "passthrough"`), `Cookie`,
/// `Proxy-Authorization` and `X-Forwarded-*` included, stays here. `Last-Event-ID` never passes: the client holds
/// the proxy's ids; the proxy sends the upstream's own when it resumes.
const FORWARDED_REQUEST_HEADERS: [HeaderName; 5] = [
    header::ACCEPT,
    header::CONTENT_TYPE,
    MCP_PROTOCOL_VERSION,
    MCP_METHOD,
    MCP_NAME,
];
/// 2026-07-28 parameter headers (`Mcp-Param-…`) mirror the body; forwarded.
const MCP_PARAM_PREFIX: &str = "mcp-param-";

/// Response headers passed back to the client. The upstream's session id
/// is replaced by the proxy's; everything else stays upstream.
const FORWARDED_RESPONSE_HEADERS: [HeaderName; 3] =
    [header::CONTENT_TYPE, header::ALLOW, header::RETRY_AFTER];

/// After the drain timeout, how long requests still in flight get to
/// write their 503 before their connections are dropped.
const ABORT_GRACE: Duration = Duration::from_secs(1);

/// When an upstream answer must be complete (request start plus
/// `upstream_response_timeout`); kept in the response's extensions.
#[derive(Debug, Clone, Copy)]
struct Deadline(Instant);

/// A bound, ready-to-serve reverse proxy.
///
/// ```no_run
/// # async fn run() -> Result<(), shadowcat_proxy::ProxyError> {
/// use std::sync::Arc;
/// use shadowcat_proxy::{ReverseProxy, ReverseProxyConfig};
/// let config = ReverseProxyConfig::new("http://127.0.0.1:3001/mcp".parse().unwrap());
/// let store = Arc::new(shadowcat_session::MemoryStore::new());
/// let proxy = ReverseProxy::bind(config, store, None).await?;
/// // Serve until the future completes (e.g. on a signal).
/// proxy.serve(std::future::pending()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ReverseProxy {
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    closing_tx: watch::Sender<bool>,
    aborting_tx: watch::Sender<bool>,
}

/// How serving ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeReport {
    /// True when every connection finished within the drain timeout.
    pub drained: bool,
}

#[derive(Debug)]
struct Shared {
    config: ReverseProxyConfig,
    /// Upstream connections, driven by the tasks that read them.
    pool: Arc<UpstreamPool>,
    sessions: Arc<Sessions>,
    /// The stdio children, when the upstream is a program (or the
    /// connections to a legacy HTTP+SSE upstream, `upstream_transport =
    /// sse`).
    stdio: Option<Arc<StdioBridge>>,
    /// With `upstream_transport = auto`: the legacy connections, used
    /// once the upstream turned out to be legacy (`legacy_found`).
    legacy_up: Option<Arc<StdioBridge>>,
    legacy_found: std::sync::atomic::AtomicBool,
    /// The proxy's own credential toward the upstream.
    bearer: crate::auth::Credential,
    /// `[auth]`, unless the mode is `none`.
    auth: Option<Arc<crate::auth::Auth>>,
    writer: Option<WriterHandle>,
    closing: watch::Receiver<bool>,
    /// Set when the drain timeout ended: requests still in flight are
    /// answered 503.
    aborting: watch::Receiver<bool>,
    /// The `Host` check, when one applies.
    /// What a reload can change (`Admin::reload`); read once per request.
    live: parking_lot::RwLock<Arc<Live>>,
    /// The address the listener is bound to.
    bound: SocketAddr,
    env: Arc<StreamEnv>,
    /// True while the listener accepts connections.
    accepting: std::sync::atomic::AtomicBool,
    /// A session id no session has: the readiness check asks the store
    /// for it.
    probe_id: shadowcat_session::SessionId,
    /// The per-client limit on session creation (none when 0).
    create_limit: Option<ratelimit::CreateLimiter>,
    /// Ends sessions upstream that ended here without a client's DELETE.
    ender: Arc<ender::SessionEnder>,
    /// Legacy HTTP+SSE clients served here.
    legacy: Arc<legacy::LegacyClients>,
    /// The listener's certificate, when it serves TLS.
    listener_tls: Option<Arc<crate::tls::ListenerTls>>,
}

impl ReverseProxy {
    /// Checks `config`, binds its listen address and prepares the upstream
    /// client. Sessions live in `store`; resumption points and activity go
    /// through `writer` (the store's [`shadowcat_session::BatchingWriter`])
    /// when given.
    pub async fn bind(
        config: ReverseProxyConfig,
        store: Arc<dyn SessionStore>,
        writer: Option<WriterHandle>,
    ) -> Result<Self, ProxyError> {
        if config.upstream_cmd.is_none() {
            crate::upstream::http::check_upstream(&config.upstream)?;
        }
        if !config.path.starts_with('/') {
            return Err(ProxyError::Config(format!(
                "the endpoint path {:?} must start with /",
                config.path
            )));
        }
        if let Some(sse) = &config.legacy_sse_path {
            let messages = &config.legacy_messages_path;
            if !sse.starts_with('/') || !messages.starts_with('/') {
                return Err(ProxyError::Config(format!(
                    "the legacy paths {sse:?} and {messages:?} must start with /"
                )));
            }
            if sse == messages || *sse == config.path || *messages == config.path {
                return Err(ProxyError::Config(format!(
                    "the endpoint path {:?}, the legacy SSE path {sse:?} and the legacy messages path {messages:?} must differ",
                    config.path
                )));
            }
        }
        if config.limits.max_header_bytes < 8192 {
            return Err(ProxyError::Config(
                "max_header_bytes must be at least 8192".into(),
            ));
        }
        if config.limits.upstream_read_buffer < 8192 {
            return Err(ProxyError::Config(
                "upstream_read_buffer_bytes must be at least 8192".into(),
            ));
        }
        if config.limits.max_connections == 0
            || config.limits.max_response_bytes == 0
            || config.limits.body_read_timeout.is_zero()
            || config.limits.body_idle_timeout.is_zero()
        {
            return Err(ProxyError::Config(
                "max_connections, max_response_bytes, body_read_timeout and body_idle_timeout must be above zero".into(),
            ));
        }
        if config.limits.keepalive_interval.is_zero() {
            return Err(ProxyError::Config(
                "keepalive_interval must be above zero".into(),
            ));
        }
        if config.limits.max_cached_sessions == 0
            || config.limits.session_revalidate_interval.is_zero()
            || config.limits.session_idle_timeout.is_zero()
        {
            return Err(ProxyError::Config(
                "max_cached_sessions, session_revalidate_interval and session_idle_timeout must be above zero".into(),
            ));
        }
        let bearer = match &config.upstream_bearer {
            Some(token) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                    ProxyError::Config(
                        "the upstream bearer token is not a valid header value".into(),
                    )
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        config.limits.replay.check().map_err(ProxyError::Config)?;
        if config.limits.max_buffered_bytes < config.limits.replay.max_bytes {
            return Err(ProxyError::Config(format!(
                "max_buffered_bytes ({}) must hold at least one stream's replay_max_bytes ({})",
                config.limits.max_buffered_bytes, config.limits.replay.max_bytes
            )));
        }
        let listener = listen(config.bind, &config.limits).map_err(|source| ProxyError::Bind {
            addr: config.bind,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| ProxyError::Bind {
            addr: config.bind,
            source,
        })?;

        let (closing_tx, closing) = watch::channel(false);
        let (aborting_tx, aborting) = watch::channel(false);
        if config.upstream_cmd.is_some() && config.auth.mode == crate::config::AuthMode::Passthrough
        {
            return Err(ProxyError::Config(
                "[auth] mode passthrough needs an HTTP upstream that does its own OAuth, not upstream_cmd".into(),
            ));
        }
        let (auth, bearer) =
            crate::auth::Auth::start(&config.auth, &config.upstream, bearer, closing.clone())
                .await?;
        let hosts = HostCheck::new(&config, local_addr);
        let label = match &config.upstream_cmd {
            Some(cmd) => cmd.label(),
            None => config.upstream.to_string(),
        };
        let sessions = Arc::new(Sessions::new(
            store,
            label,
            writer.clone(),
            CacheLimits::from_limits(&config.limits),
        ));
        tokio::spawn(crate::session::run_sweeper(
            Arc::downgrade(&sessions),
            closing.clone(),
        ));
        let upstream_tls = match &config.upstream_cmd {
            Some(_) => None,
            None => crate::tls::UpstreamTls::for_uri(&config.upstream, &config.upstream_tls)?,
        };
        if !(512..=16384).contains(&config.limits.tls_max_record_bytes) {
            return Err(ProxyError::Config(
                "tls_max_record_bytes must be between 512 and 16384".into(),
            ));
        }
        if config.limits.tls_handshake_timeout.is_zero()
            || config.limits.h2_max_concurrent_streams == 0
        {
            return Err(ProxyError::Config(
                "tls_handshake_timeout and h2_max_concurrent_streams must be above zero".into(),
            ));
        }
        let listener_tls = match &config.tls {
            Some(files) => Some(Arc::new(crate::tls::ListenerTls::load(
                files,
                config.limits.tls_max_record_bytes,
            )?)),
            None => None,
        };
        let pool = UpstreamPool::with_max_idle(
            &config.upstream,
            config.limits.upstream_connect_timeout,
            config.limits.upstream_read_buffer,
            config.limits.upstream_max_idle_connections,
            upstream_tls,
        );
        if config.upstream_cmd.is_none() && config.upstream.scheme_str() == Some("https") {
            check_tls_upstream(&pool, &config.upstream).await?;
        }
        let legacy_bridge = || {
            let link = crate::upstream::legacy::LegacyLink {
                pool: Arc::clone(&pool),
                uri: config.upstream.clone(),
                bearer: bearer.current(),
                timeout: config.limits.upstream_response_timeout,
                probe_timeout: config.limits.upstream_connect_timeout,
                reconnect: config.limits.reconnect,
            };
            let mut up = crate::upstream::stdio::StdioUpstream::new(
                shadowcat_transport::ChildCommand::new("legacy-sse"),
            );
            up.max_children = usize::try_from(config.limits.max_sessions).unwrap_or(usize::MAX);
            up.idle_timeout = config.limits.session_idle_timeout;
            StdioBridge::start_legacy(link, up, config.limits.replay, Arc::clone(&sessions))
        };
        let mut legacy_up = None;
        let stdio = match &config.upstream_cmd {
            Some(cmd) => Some(
                StdioBridge::start(cmd.clone(), config.limits.replay, Arc::clone(&sessions))
                    .map_err(|e| {
                        ProxyError::Config(format!("cannot start the stdio spawner thread: {e}"))
                    })?,
            ),
            None => match config.upstream_transport {
                crate::config::UpstreamTransport::Sse => Some(legacy_bridge()),
                crate::config::UpstreamTransport::Auto => {
                    legacy_up = Some(legacy_bridge());
                    None
                }
                crate::config::UpstreamTransport::StreamableHttp => None,
            },
        };
        let ender = ender::SessionEnder::start(
            Arc::clone(&pool),
            config.upstream.clone(),
            bearer.clone(),
            &sessions,
            stdio.as_ref(),
            &config.limits,
        );
        let create_limit = ratelimit::CreateLimiter::with_table_size(
            config.limits.max_session_creates_per_minute,
            (config.limits.max_rate_limited_clients / 2).max(1),
        );
        let env = Arc::new(StreamEnv {
            pool: Arc::clone(&pool),
            uri: config.upstream.clone(),
            bearer: bearer.clone(),
            response_timeout: config.limits.upstream_response_timeout,
            reconnect: config.limits.reconnect,
            replay: config.limits.replay,
            budget: Arc::new(Budget::new(config.limits.max_buffered_bytes)),
            linger: config.limits.detached_linger,
            lingering: Default::default(),
            max_kept: config.limits.max_kept_complete_streams,
            keepalive: config.limits.keepalive_interval,
            closing: closing.clone(),
            cluster: config
                .cluster
                .clone()
                .map(crate::stream::cluster::Cluster::start),
        });
        let live = parking_lot::RwLock::new(Arc::new(Live {
            limits: config.limits.clone(),
            origins: config.allowed_origins.clone(),
            hosts,
        }));
        let shared = Arc::new(Shared {
            config,
            pool,
            sessions,
            stdio,
            bearer,
            auth,
            writer,
            closing,
            aborting,
            bound: local_addr,
            live,
            env,
            accepting: std::sync::atomic::AtomicBool::new(false),
            probe_id: shadowcat_session::SessionId::generate()
                .map_err(|e| ProxyError::Config(format!("no randomness for a session id: {e}")))?,
            create_limit,
            ender,
            legacy: Arc::default(),
            legacy_up,
            legacy_found: std::sync::atomic::AtomicBool::new(false),
            listener_tls,
        });
        if shared.config.legacy_sse_path.is_some() {
            tokio::spawn(legacy::run_sweeper(Arc::downgrade(&shared)));
        }
        Ok(ReverseProxy {
            listener,
            local_addr,
            shared,
            closing_tx,
            aborting_tx,
        })
    }

    /// The address the proxy listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What the store's idle sweeper should tell about the sessions it
    /// expires ([`shadowcat_session::IdleSweeper::start_with`]): the proxy
    /// drops them from memory, ends them upstream with DELETE and stops
    /// their stdio servers.
    pub fn expiry_hook(&self) -> Arc<dyn shadowcat_session::ExpiryHook> {
        Arc::clone(&self.shared.ender) as Arc<dyn shadowcat_session::ExpiryHook>
    }

    /// The operator's handle on this proxy (sessions, streams, readiness);
    /// stays valid while it serves.
    pub fn admin(&self) -> crate::admin::Admin {
        crate::admin::Admin::new(Arc::clone(&self.shared))
    }

    /// A view of the proxy's buffer budget (`max_buffered_bytes`), for
    /// tests and gates.
    #[cfg(feature = "test-util")]
    pub fn budget_probe(&self) -> crate::test_util::BudgetProbe {
        crate::test_util::BudgetProbe(Arc::clone(&self.shared.env.budget))
    }

    /// Serves until `shutdown` completes, then stops accepting, ends open
    /// SSE streams cleanly and waits up to `drain_timeout` for in-flight
    /// requests to finish; those still running then are answered 503.
    pub async fn serve_with_drain(
        self,
        shutdown: impl Future<Output = ()>,
        drain_timeout: Duration,
    ) -> Result<ServeReport, ProxyError> {
        let ReverseProxy {
            listener,
            local_addr,
            shared,
            closing_tx,
            aborting_tx,
        } = self;
        let limits = &shared.config.limits;
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes)
            .max_headers(limits.max_headers);
        let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            // What one h2 stream holds unsent, as an HTTP/1.1 connection's
            // socket buffer does (hyper's default is ~400 KB): keeps what
            // may be in flight within the replay retention.
            .max_send_buf_size(limits.client_send_buffer.clamp(16 << 10, 4 << 20));
        let tls_serve = shared.listener_tls.as_ref().map(|tls| {
            Arc::new(TlsServe {
                tls: Arc::clone(tls),
                http1: http.clone(),
                h2,
                handshake_timeout: limits.tls_handshake_timeout,
            })
        });
        let graceful = GracefulShutdown::new();
        // Ready from here: the listener was bound and accepts from the
        // loop below (connections queue in the backlog meanwhile).
        shared
            .accepting
            .store(true, std::sync::atomic::Ordering::Release);
        tracing::info!(addr = %local_addr, path = %shared.config.path, upstream = %shared.sessions.upstream_label(), "reverse proxy listening");
        warn_on_file_limit(limits.max_connections);
        let open = Arc::new(AtomicUsize::new(0));
        let refusing = Arc::new(AtomicUsize::new(0));
        let refusal = refusal_reply(limits.max_connections);
        let mut accept_errors = AcceptErrors::default();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if open.load(Ordering::Relaxed) >= limits.max_connections {
                            if tls_serve.is_some() {
                                // No plain 503 before a handshake: closed.
                                conns::refuse_tls(stream, peer);
                            } else {
                                refuse(stream, peer, &refusal, &refusing);
                            }
                            continue;
                        }
                        let _ = stream.set_nodelay(true);
                        let guard = OpenConnection::new(&open);
                        let shared = Arc::clone(&shared);
                        let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                            req.extensions_mut().insert(ratelimit::ClientAddr(peer));
                            let shared = Arc::clone(&shared);
                            // Boxed: hyper keeps a slot the size of this
                            // future for the connection's life, so an idle
                            // stream would hold the whole handler's state.
                            let handled: Pin<Box<dyn Future<Output = _> + Send>> =
                                Box::pin(async move {
                                    Ok::<_, std::convert::Infallible>(shared.handle(req).await)
                                });
                            handled
                        });
                        if let Some(tls) = &tls_serve {
                            tokio::spawn(Arc::clone(tls).serve(stream, peer, svc, graceful.watcher(), guard));
                            continue;
                        }
                        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), svc));
                        tokio::spawn(async move {
                            let _guard = guard;
                            if let Err(e) = conn.await {
                                tracing::debug!(%peer, error = %e, "client connection ended with an error");
                            }
                        });
                    }
                    Err(e) => {
                        accept_errors.failed(&e);
                        // Out of descriptors and the like: back off briefly
                        // instead of spinning.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                () = &mut shutdown => break,
            }
        }
        shared
            .accepting
            .store(false, std::sync::atomic::Ordering::Release);
        drop(listener);
        tracing::info!("shutting down: no new connections; closing streams");
        let _ = closing_tx.send(true);
        let mut all_closed = std::pin::pin!(graceful.shutdown());
        let drained = tokio::time::timeout(drain_timeout, all_closed.as_mut())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                ?drain_timeout,
                "requests still in flight after the drain timeout; answering them 503"
            );
            let _ = aborting_tx.send(true);
            if tokio::time::timeout(ABORT_GRACE, all_closed).await.is_err() {
                tracing::warn!(
                    ?ABORT_GRACE,
                    "connections still open after the 503 answers; dropping them"
                );
            }
        }
        if let Some(bridge) = &shared.legacy_up {
            bridge.shutdown(Duration::from_secs(1)).await;
        }
        if let Some(bridge) = &shared.stdio {
            let grace = shared
                .config
                .upstream_cmd
                .as_ref()
                .map_or(Duration::ZERO, |c| c.child.kill_grace);
            if !bridge.shutdown(grace + Duration::from_secs(1)).await {
                tracing::warn!(
                    "some stdio servers had not exited in time; their process groups got SIGKILL"
                );
            }
        }
        Ok(ServeReport { drained })
    }

    /// [`ReverseProxy::serve_with_drain`] with a 10 s drain timeout.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<ServeReport, ProxyError> {
        self.serve_with_drain(shutdown, Duration::from_secs(10))
            .await
    }
}

/// Connects once to an `https` upstream at start: a certificate that does
/// not verify is a start-up error naming the host and the reason; an
/// upstream that does not answer yet is only logged.
async fn check_tls_upstream(pool: &UpstreamPool, uri: &http::Uri) -> Result<(), ProxyError> {
    match pool.probe().await {
        Ok(()) => Ok(()),
        Err(crate::upstream::http::UpstreamError::Tls { host, reason }) => {
            Err(ProxyError::Tls(crate::tls::TlsError::Handshake {
                host,
                reason,
            }))
        }
        Err(e) => {
            tracing::warn!(upstream = %uri, error = %e, "the https upstream could not be reached at start; its certificate is checked on the first request");
            Ok(())
        }
    }
}

/// What serving one TLS connection needs.
struct TlsServe {
    tls: Arc<crate::tls::ListenerTls>,
    http1: hyper::server::conn::http1::Builder,
    h2: hyper::server::conn::http2::Builder<TokioExecutor>,
    handshake_timeout: Duration,
}

impl TlsServe {
    /// The handshake (within its timeout, with the certificate current at
    /// accept time), then HTTP/2 or HTTP/1.1 as ALPN chose.
    async fn serve<S>(
        self: Arc<Self>,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        svc: S,
        watcher: hyper_util::server::graceful::Watcher,
        guard: OpenConnection,
    ) where
        S: hyper::service::Service<Request<Incoming>, Response = Response<ProxyBody>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let _guard = guard;
        let acceptor = self.tls.acceptor();
        let tls = match tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream)).await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                metrics::counter!("shadowcat_tls_handshake_failures_total", "reason" => "error")
                    .increment(1);
                tracing::debug!(%peer, error = %e, "TLS handshake with a client failed");
                return;
            }
            Err(_) => {
                metrics::counter!("shadowcat_tls_handshake_failures_total", "reason" => "timeout")
                    .increment(1);
                tracing::debug!(%peer, timeout = ?self.handshake_timeout, "TLS handshake with a client timed out (tls_handshake_timeout)");
                return;
            }
        };
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        let io = TokioIo::new(tls);
        let ended = if h2 {
            metrics::counter!("shadowcat_tls_connections_total", "protocol" => "h2").increment(1);
            watcher.watch(self.h2.serve_connection(io, svc)).await
        } else {
            metrics::counter!("shadowcat_tls_connections_total", "protocol" => "http/1.1")
                .increment(1);
            watcher.watch(self.http1.serve_connection(io, svc)).await
        };
        if let Err(e) = ended {
            tracing::debug!(%peer, error = %e, "client connection ended with an error");
        }
    }
}

/// Binds the client listener. Accepted connections inherit its send
/// buffer size.
fn listen(addr: SocketAddr, limits: &Limits) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if limits.client_send_buffer > 0 {
        socket
            .set_send_buffer_size(u32::try_from(limits.client_send_buffer).unwrap_or(u32::MAX))?;
    }
    socket.bind(addr)?;
    socket.listen(limits.listen_backlog.max(1))
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::POST => "POST",
        Method::GET => "GET",
        Method::DELETE => "DELETE",
        _ => "other",
    }
}

fn status_class(s: StatusCode) -> &'static str {
    match s.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Does any `Accept` media range cover `want` (`type/subtype`)?
fn accepts(headers: &HeaderMap, want: &str) -> bool {
    let (want_type, _) = want.split_once('/').unwrap_or((want, ""));
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|range| range.split(';').next().unwrap_or("").trim())
        .any(|range| {
            range.eq_ignore_ascii_case(want)
                || range == "*/*"
                || range
                    .strip_suffix("/*")
                    .is_some_and(|t| t.eq_ignore_ascii_case(want_type))
        })
}

/// Which session a request names, if any.
enum SessionRef {
    /// No `Mcp-Session-Id`.
    Absent,
    /// A well-formed id.
    Id(String),
}

fn session_header(headers: &HeaderMap) -> Result<SessionRef, Rejection> {
    let Some(v) = headers.get(&MCP_SESSION_ID) else {
        return Ok(SessionRef::Absent);
    };
    let s = v
        .to_str()
        .map_err(|_| Rejection::bad_request("Mcp-Session-Id must be visible ASCII (0x21-0x7E)"))?;
    shadowcat_session::SessionId::parse(s)
        .map_err(|e| Rejection::bad_request(format!("Mcp-Session-Id rejected: {e}")))?;
    Ok(SessionRef::Id(s.to_owned()))
}

fn version_header(headers: &HeaderMap) -> Result<Option<ProtocolVersion>, Rejection> {
    let Some(v) = headers.get(&MCP_PROTOCOL_VERSION) else {
        return Ok(None);
    };
    let parsed = v.to_str().ok().and_then(ProtocolVersion::parse);
    match parsed {
        Some(p) => Ok(Some(p)),
        None => Err(Rejection::bad_request(format!(
            "unsupported MCP-Protocol-Version {:?}; this proxy supports {}",
            String::from_utf8_lossy(v.as_bytes()),
            ProtocolVersion::supported_list()
        ))),
    }
}

fn unavailable(e: &dyn std::fmt::Display) -> Rejection {
    Rejection::new(
        StatusCode::SERVICE_UNAVAILABLE,
        jsonrpc::INTERNAL_ERROR,
        format!("the session store is unavailable; try again shortly ({e})"),
    )
}

/// The settings a reload replaces: limits read per request, allowed
/// origins and hosts.
#[derive(Debug)]
pub(crate) struct Live {
    limits: Limits,
    origins: crate::config::OriginPolicy,
    hosts: Option<HostCheck>,
}

impl Shared {
    /// The bridge sessions go through: the stdio children, or the legacy
    /// upstream's connections (configured, or found by `auto`).
    fn bridge(&self) -> Option<&Arc<StdioBridge>> {
        self.stdio.as_ref().or_else(|| {
            self.legacy_found
                .load(Ordering::Acquire)
                .then_some(self.legacy_up.as_ref())
                .flatten()
        })
    }

    /// The live settings, as of now.
    fn live(&self) -> Arc<Live> {
        Arc::clone(&self.live.read())
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<ProxyBody> {
        let method = method_label(req.method());
        let Some(log) = &self.config.access_log else {
            let resp = self.answer(req).await;
            metrics::counter!("shadowcat_requests_total", "method" => method, "status" => status_class(resp.status()))
                .increment(1);
            return resp;
        };
        let client = req.extensions().get::<ratelimit::ClientAddr>().map(|c| c.0);
        let ctx = access::AccessCtx::new(client, method);
        let mut resp = ctx.scope(self.answer(req)).await;
        metrics::counter!("shadowcat_requests_total", "method" => method, "status" => status_class(resp.status()))
            .increment(1);
        let status = resp.status().as_u16();
        resp.body_mut().log_with(access::Finish {
            ctx,
            log: Arc::clone(log),
            status,
            bytes_out: 0,
        });
        resp
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        match self.abortable(self.route(req)).await {
            Ok(resp) => resp,
            Err(rej) => {
                tracing::debug!(status = %rej.status, message = %rej.message, "request rejected");
                rej.into_response()
            }
        }
    }

    /// `answer`, unless the drain deadline passes first: then 503 (a
    /// JSON-RPC error, never an empty reply).
    async fn abortable<T>(
        &self,
        answer: impl Future<Output = Result<T, Rejection>>,
    ) -> Result<T, Rejection> {
        let mut aborting = self.aborting.clone();
        tokio::select! {
            biased;
            answer = answer => answer,
            // Also when the sender is gone: the proxy stopped serving.
            _ = aborting.wait_for(|a| *a) => {
                metrics::counter!("shadowcat_requests_aborted_total").increment(1);
                let mut rej = Rejection::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    jsonrpc::SERVER_ERROR,
                    "the proxy is shutting down; retry",
                );
                rej.close = true;
                Err(rej)
            }
        }
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Response<ProxyBody>, Rejection> {
        guard::check_head(&req, self.config.limits.max_header_bytes)?;
        let live = self.live();
        if let Some(hosts) = &live.hosts {
            hosts.check(req.headers(), req.uri().authority().map(|a| a.as_str()))?;
        }
        if let Some(auth) = &self.auth
            && auth.is_metadata_path(req.uri().path())
        {
            return self.resource_metadata(auth, &req).await;
        }
        guard::check_origins(&live.origins, req.headers())?;
        // [auth]: every path but the metadata is behind this check, and
        // everything `dispatch` does runs as this caller.
        let caller = self.caller(req.headers()).await?;
        crate::auth::as_caller(caller, self.dispatch(req)).await
    }

    /// A request past the auth check, by path and method.
    async fn dispatch(&self, req: Request<Incoming>) -> Result<Response<ProxyBody>, Rejection> {
        if let Some(sse) = &self.config.legacy_sse_path {
            let path = req.uri().path();
            if path == sse || path == self.config.legacy_messages_path {
                if self.auth.is_some() {
                    // Legacy sessions are not bound to a caller, and their
                    // messages are forwarded by tasks of their own.
                    return Err(Rejection::new(
                        StatusCode::FORBIDDEN,
                        jsonrpc::INVALID_REQUEST,
                        "the legacy HTTP+SSE transport is not served when [auth] is on; use Streamable HTTP at the MCP endpoint",
                    ));
                }
                if path == sse {
                    return self.legacy_sse(req).await;
                }
                return self.legacy_post(req).await;
            }
        }
        if req.uri().path() != self.config.path {
            return Err(Rejection::new(
                StatusCode::NOT_FOUND,
                jsonrpc::METHOD_NOT_FOUND,
                format!(
                    "no MCP endpoint at {}; the endpoint is {}",
                    req.uri().path(),
                    self.config.path
                ),
            ));
        }
        let version = version_header(req.headers())?;
        match *req.method() {
            Method::POST => self.post(req, version).await,
            Method::GET => self.get(req, version).await,
            Method::DELETE => self.delete(req, version).await,
            _ => {
                let mut rej = Rejection::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    jsonrpc::METHOD_NOT_FOUND,
                    format!(
                        "{} is not an MCP method; use POST, GET or DELETE",
                        req.method()
                    ),
                );
                rej.allow = Some("GET, POST, DELETE");
                Err(rej)
            }
        }
    }

    /// The session a request names: 400 when absent or malformed, 404 when
    /// unknown.
    async fn require_session(&self, headers: &HeaderMap) -> Result<Arc<SessionEntry>, Rejection> {
        let id = match session_header(headers)? {
            SessionRef::Id(id) => id,
            SessionRef::Absent => {
                return Err(Rejection::bad_request(
                    "missing Mcp-Session-Id: send the id from the initialize response, or initialize first",
                ));
            }
        };
        match self.sessions.lookup(&id).await {
            Ok(Some(entry)) => {
                access::note(|n| n.session_fp = Some(entry.id.fingerprint().to_string()));
                self.check_binding(&entry, headers).await?;
                Ok(entry)
            }
            Ok(None) => Err(Rejection::new(
                StatusCode::NOT_FOUND,
                jsonrpc::SERVER_ERROR,
                "unknown or expired session; initialize a new one (without Mcp-Session-Id)",
            )),
            Err(e) => {
                tracing::warn!(error = %e, store = self.sessions.store().kind(), "session lookup failed");
                metrics::counter!("shadowcat_store_errors_total", "op" => "get").increment(1);
                Err(unavailable(&e))
            }
        }
    }

    fn stream_slot(&self, session: &SessionEntry) -> Result<StreamSlot, Rejection> {
        self.buffer_room()?;
        let max = self.live().limits.max_streams_per_session;
        StreamSlot::acquire(&session.open_streams, max).ok_or_else(|| {
            Rejection::new(
                StatusCode::TOO_MANY_REQUESTS,
                jsonrpc::SERVER_ERROR,
                format!("this session already has {max} open streams (the limit); close one first"),
            )
        })
    }

    /// 503 when buffered stream data is at `max_buffered_bytes` even
    /// after releasing every stream no client holds.
    fn buffer_room(&self) -> Result<(), Rejection> {
        let budget = &self.env.budget;
        if !budget.is_full() {
            return Ok(());
        }
        self.env.lingering.make_room(budget);
        if !budget.is_full() {
            return Ok(());
        }
        metrics::counter!("shadowcat_budget_refusals_total").increment(1);
        if budget.should_warn() {
            tracing::warn!(
                used = budget.used(),
                limit = budget.limit(),
                "refusing new streams: buffered stream data is at max_buffered_bytes"
            );
        }
        Err(Rejection::new(
            StatusCode::SERVICE_UNAVAILABLE,
            jsonrpc::SERVER_ERROR,
            format!(
                "the proxy's buffers are full (max_buffered_bytes, {} bytes, held by live streams); retry shortly",
                budget.limit()
            ),
        ))
    }

    fn closing(&self) -> Closing {
        let mut rx = self.closing.clone();
        Box::pin(async move {
            let _ = rx.wait_for(|closing| *closing).await;
        })
    }

    /// An upstream request with the allowlisted headers of `client`.
    fn upstream_request(
        &self,
        method: Method,
        client: &HeaderMap,
        session: Option<&SessionEntry>,
        body: Bytes,
    ) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = self.config.upstream.clone();
        let h = req.headers_mut();
        for name in &FORWARDED_REQUEST_HEADERS {
            for v in client.get_all(name) {
                h.append(name.clone(), v.clone());
            }
        }
        for (name, v) in client {
            if name.as_str().starts_with(MCP_PARAM_PREFIX) {
                h.append(name.clone(), v.clone());
            }
        }
        if let Some(uid) = session.and_then(|s| s.upstream_id.as_ref()) {
            h.insert(MCP_SESSION_ID, uid.clone());
        }
        if let Some(v) = self.upstream_authorization() {
            h.insert(header::AUTHORIZATION, v);
        }
        req
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<UpstreamBody>, Rejection> {
        let timeout = self.live().limits.upstream_response_timeout;
        let started = Instant::now();
        let deadline = started + timeout;
        match tokio::time::timeout_at(deadline, self.pool.request(req)).await {
            Ok(Ok(mut resp)) => {
                access::note(|n| n.upstream = Some(started.elapsed()));
                if let Some(auth) = &self.auth
                    && auth.is_passthrough()
                    && matches!(
                        resp.status(),
                        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
                    )
                {
                    return Err(self.upstream_refused(auth, resp));
                }
                resp.extensions_mut().insert(Deadline(deadline));
                Ok(resp)
            }
            Ok(Err(e)) => {
                let kind = if e.is_tls() {
                    "tls"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "request"
                };
                metrics::counter!("shadowcat_upstream_errors_total", "kind" => kind).increment(1);
                tracing::warn!(upstream = %self.config.upstream, error = %e, "upstream request failed");
                if e.is_tls() {
                    Err(Rejection::new(
                        StatusCode::BAD_GATEWAY,
                        jsonrpc::INTERNAL_ERROR,
                        format!("the upstream MCP server could not be reached: {e}"),
                    ))
                } else if e.is_connect_timeout() {
                    Err(Rejection::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        jsonrpc::INTERNAL_ERROR,
                        format!(
                            "the upstream did not accept a connection within {:?}",
                            self.config.limits.upstream_connect_timeout
                        ),
                    ))
                } else {
                    Err(Rejection::new(
                        StatusCode::BAD_GATEWAY,
                        jsonrpc::INTERNAL_ERROR,
                        format!("the upstream MCP server could not be reached ({kind} failed)"),
                    ))
                }
            }
            Err(_) => {
                metrics::counter!("shadowcat_upstream_errors_total", "kind" => "timeout")
                    .increment(1);
                tracing::warn!(upstream = %self.config.upstream, ?timeout, "upstream response timed out");
                Err(Rejection::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    jsonrpc::INTERNAL_ERROR,
                    format!("the upstream MCP server did not answer within {timeout:?}"),
                ))
            }
        }
    }

    /// The client's response for an upstream response: an SSE stream (a
    /// session's resumable one, or passed through without a session), or
    /// a JSON answer read whole first (see [`Shared::read_answer`]).
    async fn relay(
        &self,
        resp: Response<UpstreamBody>,
        session: Option<(&SessionEntry, StreamKind)>,
        slot: Option<StreamSlot>,
        label: &'static str,
    ) -> Result<Response<ProxyBody>, Rejection> {
        if !is_sse(resp.headers()) {
            let mut out = self.read_answer(resp).await?;
            if let Some((s, _)) = session
                && let Ok(v) = HeaderValue::from_str(s.id.as_str())
            {
                out.headers_mut().insert(MCP_SESSION_ID, v);
            }
            return Ok(out);
        }
        let (parts, body) = resp.into_parts();
        if let Some((s, kind)) = session {
            let stream = self.open_stream(PumpSource::Upstream(body), s, slot, kind, None);
            let mut out = self.stream_response(stream, s, Some(parts.status));
            for v in parts.headers.get_all(header::RETRY_AFTER) {
                out.headers_mut().append(header::RETRY_AFTER, v.clone());
            }
            return Ok(out);
        }
        // No session (2026-07-28): no ids to resume by; forwarded as is.
        Ok(self.forward_sse(parts, body, slot, label, None))
    }

    /// A sessionless SSE response (2026-07-28) forwarding `body`; with
    /// `listen`, a listen stream that is listened to again when it drops.
    fn forward_sse(
        &self,
        parts: http::response::Parts,
        body: UpstreamBody,
        slot: Option<StreamSlot>,
        label: &'static str,
        listen: Option<listen::Listen>,
    ) -> Response<ProxyBody> {
        let mut forward = SseForward::new(
            body,
            self.config.limits.keepalive_interval,
            Some(self.closing()),
            slot,
            label,
        );
        if let Some(listen) = listen {
            forward = forward.with_listen(listen);
        }
        let mut out = Response::new(ProxyBody::sse(forward));
        *out.status_mut() = parts.status;
        let h = out.headers_mut();
        for name in &FORWARDED_RESPONSE_HEADERS {
            for v in parts.headers.get_all(name) {
                h.append(name.clone(), v.clone());
            }
        }
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
        out
    }

    /// A non-SSE upstream answer, read whole (at most
    /// `max_response_bytes`, complete within `upstream_response_timeout`
    /// of the request) before the client gets anything, so a failure is
    /// a JSON-RPC error and the upstream connection goes back to the
    /// pool. Relayed: JSON answers, 2xx answers with no body, and 405
    /// (as a JSON-RPC error: a server without a GET stream or DELETE says
    /// so with 405). Anything else (an HTML error page, a 200
    /// `text/html`) is a 502 quoting the upstream's status.
    async fn read_answer(
        &self,
        resp: Response<UpstreamBody>,
    ) -> Result<Response<ProxyBody>, Rejection> {
        let (parts, body) = resp.into_parts();
        let timeout = self.live().limits.upstream_response_timeout;
        let deadline = parts
            .extensions
            .get::<Deadline>()
            .map_or_else(|| Instant::now() + timeout, |d| d.0);
        let limits = ReadLimits {
            budget: Some(Arc::clone(&self.env.budget)),
            max: self.live().limits.max_response_bytes,
            deadline,
            idle: timeout,
        };
        let status = parts.status;
        let bytes = match read_whole(body, limits).await {
            Ok(b) => b,
            Err(e) => return Err(self.answer_unread(status, e)),
        };
        let json = media_type_is(&parts.headers, &header::CONTENT_TYPE, "application/json");
        // Without a length or chunks the body ends when the connection
        // does, so a cut looks like an end: such JSON must parse whole.
        let close_delimited = !parts.headers.contains_key(header::CONTENT_LENGTH)
            && !parts.headers.contains_key(header::TRANSFER_ENCODING);
        if json
            && close_delimited
            && !bytes.is_empty()
            && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err()
        {
            return Err(self.answer_unread(
                status,
                ReadError::Body("the connection closed in the middle of the JSON answer"),
            ));
        }
        if !(json || status.is_success() && bytes.is_empty()) {
            return Err(self.not_json_rpc(&parts, bytes.len()));
        }
        let mut out = Response::new(if bytes.is_empty() {
            ProxyBody::empty()
        } else {
            ProxyBody::full(bytes)
        });
        *out.status_mut() = status;
        let h = out.headers_mut();
        for name in &FORWARDED_RESPONSE_HEADERS {
            for v in parts.headers.get_all(name) {
                h.append(name.clone(), v.clone());
            }
        }
        Ok(out)
    }

    /// Why an upstream answer could not be read whole, for the client.
    fn answer_unread<E: std::fmt::Display>(
        &self,
        status: StatusCode,
        e: ReadError<E>,
    ) -> Rejection {
        let upstream = &self.config.upstream;
        let (kind, http, message) = match e {
            ReadError::TooLarge(max) => (
                "body_too_large",
                StatusCode::BAD_GATEWAY,
                format!(
                    "the upstream MCP server's answer (HTTP {status}) is larger than {max} bytes (max_response_bytes); it was not relayed"
                ),
            ),
            ReadError::Deadline | ReadError::Idle(_) => (
                "timeout",
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "the upstream MCP server did not finish its answer (HTTP {status}) within {:?} (upstream_response_timeout)",
                    self.live().limits.upstream_response_timeout
                ),
            ),
            ReadError::Body(e) => (
                "body_cut",
                StatusCode::BAD_GATEWAY,
                format!(
                    "the upstream MCP server's answer (HTTP {status}) was cut short ({e}); retry the request"
                ),
            ),
        };
        metrics::counter!("shadowcat_upstream_errors_total", "kind" => kind).increment(1);
        tracing::warn!(%upstream, %status, kind, %message, "upstream answer not relayed");
        Rejection::new(http, jsonrpc::INTERNAL_ERROR, message)
    }

    /// An upstream answer that is not JSON-RPC: 502 quoting its status
    /// and content type; 405 stays 405.
    fn not_json_rpc(&self, parts: &http::response::Parts, len: usize) -> Rejection {
        let status = parts.status;
        let content_type = match parts.headers.get(header::CONTENT_TYPE) {
            Some(v) => format!("Content-Type {:?}", String::from_utf8_lossy(v.as_bytes())),
            None => "no Content-Type".to_owned(),
        };
        if status == StatusCode::METHOD_NOT_ALLOWED {
            let mut rej = Rejection::new(
                status,
                jsonrpc::METHOD_NOT_FOUND,
                "the upstream MCP server does not allow this method here (HTTP 405)",
            );
            if let Some(v) = parts.headers.get(header::ALLOW) {
                rej.headers.push((header::ALLOW, v.clone()));
            }
            return rej;
        }
        let kind = if status.is_success() {
            "content_type"
        } else {
            "error_page"
        };
        metrics::counter!("shadowcat_upstream_errors_total", "kind" => kind).increment(1);
        tracing::warn!(upstream = %self.config.upstream, %status, %content_type, bytes = len, "upstream answered neither JSON nor SSE; answering 502");
        let mut rej = Rejection::new(
            StatusCode::BAD_GATEWAY,
            jsonrpc::INTERNAL_ERROR,
            format!(
                "the upstream MCP server answered HTTP {status} with {content_type} ({len} bytes), not a JSON-RPC message; check the upstream URL and the server's logs"
            ),
        );
        if let Some(v) = parts.headers.get(header::RETRY_AFTER) {
            rej.headers.push((header::RETRY_AFTER, v.clone()));
        }
        rej
    }

    /// A request body, read whole within `max_body_bytes`,
    /// `body_read_timeout` and `body_idle_timeout` (see [`read_whole`]).
    async fn read_body(&self, body: Incoming) -> Result<Bytes, Rejection> {
        let live = self.live();
        let l = &live.limits;
        let limits = ReadLimits {
            budget: Some(Arc::clone(&self.env.budget)),
            max: l.max_body_bytes,
            deadline: Instant::now() + l.body_read_timeout,
            idle: l.body_idle_timeout,
        };
        let (status, code, message, timeout) = match read_whole(body, limits).await {
            Ok(b) => {
                access::note(|n| n.bytes_in = b.len() as u64);
                return Ok(b);
            }
            Err(ReadError::TooLarge(max)) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                jsonrpc::INVALID_REQUEST,
                format!("the request body is larger than the limit of {max} bytes"),
                None,
            ),
            Err(ReadError::Deadline) => (
                StatusCode::REQUEST_TIMEOUT,
                jsonrpc::INVALID_REQUEST,
                format!(
                    "the request body did not arrive whole within {:?} (body_read_timeout); send it at once",
                    l.body_read_timeout
                ),
                Some("body_read_timeout"),
            ),
            Err(ReadError::Idle(idle)) => (
                StatusCode::REQUEST_TIMEOUT,
                jsonrpc::INVALID_REQUEST,
                format!(
                    "no request body bytes came for {idle:?} (body_idle_timeout); send the body at once"
                ),
                Some("body_idle_timeout"),
            ),
            Err(ReadError::Body(e)) => (
                StatusCode::BAD_REQUEST,
                jsonrpc::INVALID_REQUEST,
                format!("could not read the request body: {e}"),
                None,
            ),
        };
        if let Some(limit) = timeout {
            metrics::counter!("shadowcat_request_body_timeouts_total", "limit" => limit)
                .increment(1);
            tracing::debug!(limit, "request body timed out");
        }
        let mut rej = Rejection::new(status, code, message);
        // The rest of the body is not read: the connection cannot be reused.
        rej.close = true;
        Err(rej)
    }

    /// Common handling of an upstream answer in a session: a 404 means the
    /// upstream forgot the session, so the proxy forgets it too.
    async fn after_upstream(
        &self,
        resp: Response<UpstreamBody>,
        session: &SessionEntry,
        slot: Option<StreamSlot>,
        kind: StreamKind,
        label: &'static str,
    ) -> Result<Response<ProxyBody>, Rejection> {
        if resp.status() == StatusCode::NOT_FOUND && session.upstream_id.is_some() {
            tracing::info!(session_fp = %session.id.fingerprint(), "upstream no longer knows the session; removing it");
            self.forget(session).await;
            return Err(Rejection::new(
                StatusCode::NOT_FOUND,
                jsonrpc::SERVER_ERROR,
                "the session expired upstream; initialize a new one (without Mcp-Session-Id)",
            ));
        }
        self.relay(resp, Some((session, kind)), slot, label).await
    }

    async fn forget(&self, session: &SessionEntry) {
        if let Err(e) = self.sessions.remove(&session.id).await {
            metrics::counter!("shadowcat_store_errors_total", "op" => "delete").increment(1);
            tracing::warn!(session_fp = %session.id.fingerprint(), error = %e, "could not remove the session from the store");
        }
    }

    /// Starts a resumable stream read from `body` and attaches the client.
    fn open_stream(
        &self,
        source: PumpSource,
        session: &SessionEntry,
        slot: Option<StreamSlot>,
        kind: StreamKind,
        resume_after: Option<String>,
    ) -> StreamBody {
        let stream = session.next_stream(matches!(kind, StreamKind::Get));
        tracing::debug!(session_fp = %session.id.fingerprint(), stream = stream.0, ?kind, "SSE stream opened");
        let sink = self
            .writer
            .as_ref()
            .map(|w| WriterSink::new(w.clone(), session.id.clone(), stream));
        let spec = PumpSpec {
            kind,
            session: session.id.clone(),
            stream,
            sealer: Some(StreamSealer::new(&session.key, &session.id, stream.0)),
            upstream_session: session.upstream_id.clone(),
            authorization: crate::auth::caller().and_then(|c| c.upstream.clone()),
            version: session.version,
            sink,
            resume_after,
            legacy: false,
        };
        let pump = Pump::new(source, spec, Arc::clone(&self.env));
        let shared = StreamShared::start(&session.streams, stream, pump, Arc::clone(&self.env));
        shared
            .attach_with(1, slot)
            .expect("a new stream can be read from its first event")
    }

    /// An SSE response carrying `body`.
    fn stream_response(
        &self,
        body: StreamBody,
        session: &SessionEntry,
        status: Option<StatusCode>,
    ) -> Response<ProxyBody> {
        self.sse_response(ProxyBody::stream(body), session, status)
    }

    /// An SSE response carrying `body`, a session stream.
    fn sse_response(
        &self,
        body: ProxyBody,
        session: &SessionEntry,
        status: Option<StatusCode>,
    ) -> Response<ProxyBody> {
        let mut out = Response::new(body);
        *out.status_mut() = status.unwrap_or(StatusCode::OK);
        let h = out.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
        if let Ok(v) = HeaderValue::from_str(session.id.as_str()) {
            h.insert(MCP_SESSION_ID, v);
        }
        out
    }
}

fn no_content() -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

fn stateless_no(method: &Method) -> Rejection {
    let mut rej = Rejection::new(
        StatusCode::METHOD_NOT_ALLOWED,
        jsonrpc::METHOD_NOT_FOUND,
        format!(
            "protocol 2026-07-28 has no sessions or GET stream; {method} is not allowed, use POST"
        ),
    );
    rej.allow = Some("POST");
    rej
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::media_type_is;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn accept_matching() {
        let h = headers(&[("accept", "application/json, text/event-stream")]);
        assert!(accepts(&h, "application/json") && accepts(&h, "text/event-stream"));
        let h = headers(&[("accept", "application/json;q=0.9"), ("accept", "TEXT/*")]);
        assert!(accepts(&h, "application/json") && accepts(&h, "text/event-stream"));
        let h = headers(&[("accept", "application/json")]);
        assert!(!accepts(&h, "text/event-stream"));
        let h = headers(&[("accept", "*/*")]);
        assert!(accepts(&h, "text/event-stream"));
        assert!(!accepts(&HeaderMap::new(), "application/json"));
    }

    #[test]
    fn content_type_matching() {
        let h = headers(&[("content-type", "Application/JSON; charset=utf-8")]);
        assert!(media_type_is(&h, &header::CONTENT_TYPE, "application/json"));
        let h = headers(&[("content-type", "application/jsonp")]);
        assert!(!media_type_is(
            &h,
            &header::CONTENT_TYPE,
            "application/json"
        ));
    }

    #[test]
    fn upstream_urls() {
        assert!(
            crate::upstream::http::check_upstream(&"http://127.0.0.1:3001/mcp".parse().unwrap())
                .is_ok()
        );
        assert!(
            crate::upstream::http::check_upstream(&"https://example.test/mcp".parse().unwrap())
                .is_ok()
        );
        assert!(
            crate::upstream::http::check_upstream(&"ftp://example.test/mcp".parse().unwrap())
                .is_err()
        );
        assert!(crate::upstream::http::check_upstream(&"/mcp".parse().unwrap()).is_err());
    }
}
