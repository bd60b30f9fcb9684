//! The reverse proxy's configuration: where it listens, where it sends, and
//! every limit it enforces, each with its default.

use std::net::SocketAddr;
use std::time::Duration;

use shadowcat_transport::ReconnectConfig;

use crate::stream::replay::ReplayLimits;
use crate::upstream::stdio::StdioUpstream;

/// Everything the reverse proxy needs to know to run.
///
/// Build one with [`ReverseProxyConfig::new`] and adjust fields; every
/// field's doc names its default.
#[derive(Clone)]
pub struct ReverseProxyConfig {
    /// The upstream MCP endpoint, e.g. `http://127.0.0.1:3001/mcp` or
    /// `https://mcp.example/mcp`.
    pub upstream: http::Uri,
    /// TLS toward an `https` upstream: extra trusted CAs, a client
    /// certificate. Default: the system's roots, no client certificate.
    pub upstream_tls: crate::tls::UpstreamTlsConfig,
    /// Serve clients over TLS (HTTP/2 and HTTP/1.1 by ALPN) with this
    /// certificate and key, read again on [`crate::admin::Admin::reload`].
    /// Default none: plain HTTP/1.1.
    pub tls: Option<crate::tls::ListenerTlsConfig>,
    /// Where the proxy listens. Default `127.0.0.1:8080` (loopback: bind to
    /// another address only on purpose).
    pub bind: SocketAddr,
    /// The MCP endpoint path clients use. Default `/mcp`.
    pub path: String,
    /// Which `Origin` headers are accepted (every one a request carries
    /// is checked). Default: loopback origins only.
    pub allowed_origins: OriginPolicy,
    /// Host names (without port) a request's `Host` header may name,
    /// besides `localhost`, `127.0.0.1`, `[::1]` and the bound address
    /// (DNS-rebinding defence). When the proxy listens on a loopback
    /// address `Host` is always checked; elsewhere only when this list is
    /// not empty. A mismatch gets 403. Default empty.
    pub allowed_hosts: Vec<String>,
    /// Sent upstream as `Authorization: Bearer …`. The client's own
    /// credentials are never forwarded (but in `[auth]` passthrough).
    /// Default none.
    pub upstream_bearer: Option<String>,
    /// Every limit the proxy enforces.
    pub limits: Limits,
    /// Serve a stdio MCP server (one child per session) instead of the
    /// HTTP `upstream`, which is then unused. Default none.
    pub upstream_cmd: Option<StdioUpstream>,
    /// How to reach the HTTP `upstream`: Streamable HTTP, legacy HTTP+SSE
    /// (2024-11-05), or auto-detected (a 400/404/405 to the Streamable
    /// HTTP initialize leads to a legacy `GET` probe of the same URL, as
    /// the SDKs do). Default [`UpstreamTransport::Auto`].
    pub upstream_transport: UpstreamTransport,
    /// The legacy HTTP+SSE (2024-11-05) stream path, where a legacy
    /// client opens its stream with GET; `None` serves no legacy clients.
    /// Default `/sse`.
    pub legacy_sse_path: Option<String>,
    /// Where legacy clients POST their messages (the URL of the stream's
    /// `endpoint` event, with `?sessionId=…`). Default `/messages`.
    pub legacy_messages_path: String,
    /// Where one record per request goes (see [`crate::AccessLog`]).
    /// Default none: no access log, and none of its bookkeeping.
    pub access_log: Option<std::sync::Arc<dyn crate::AccessLog>>,
    /// Who may use the proxy (`[auth]`). Default: no auth.
    pub auth: AuthConfig,
    /// Several instances share streams through a replay log on Redis
    /// (`[cluster]`). Default none: streams live on the instance that
    /// reads them.
    pub cluster: Option<crate::stream::cluster::ClusterConfig>,
}

impl std::fmt::Debug for ReverseProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReverseProxyConfig")
            .field("upstream", &self.upstream)
            .field("upstream_tls", &self.upstream_tls)
            .field("tls", &self.tls)
            .field("bind", &self.bind)
            .field("path", &self.path)
            .field("allowed_origins", &self.allowed_origins)
            .field("allowed_hosts", &self.allowed_hosts)
            .field(
                "upstream_bearer",
                &self.upstream_bearer.as_ref().map(|_| "<redacted>"),
            )
            .field("limits", &self.limits)
            .field("upstream_cmd", &self.upstream_cmd)
            .field("upstream_transport", &self.upstream_transport)
            .field("legacy_sse_path", &self.legacy_sse_path)
            .field("legacy_messages_path", &self.legacy_messages_path)
            .field("access_log", &self.access_log.is_some())
            .field("auth", &self.auth)
            .finish()
    }
}

/// Default listen address.
pub(crate) const DEFAULT_BIND: &str = "127.0.0.1:8080";
/// Default MCP endpoint path.
pub(crate) const DEFAULT_PATH: &str = "/mcp";
/// Default legacy HTTP+SSE stream path.
pub(crate) const DEFAULT_LEGACY_SSE_PATH: &str = "/sse";
/// Default legacy HTTP+SSE messages path.
pub(crate) const DEFAULT_LEGACY_MESSAGES_PATH: &str = "/messages";

impl ReverseProxyConfig {
    /// A config for `upstream` with every other field at its default.
    pub fn new(upstream: http::Uri) -> Self {
        ReverseProxyConfig {
            upstream,
            upstream_tls: Default::default(),
            tls: None,
            bind: DEFAULT_BIND.parse().expect("default bind address parses"),
            path: DEFAULT_PATH.to_owned(),
            allowed_origins: OriginPolicy::default(),
            allowed_hosts: Vec::new(),
            upstream_bearer: None,
            limits: Limits::default(),
            upstream_cmd: None,
            upstream_transport: UpstreamTransport::Auto,
            legacy_sse_path: Some(DEFAULT_LEGACY_SSE_PATH.to_owned()),
            legacy_messages_path: DEFAULT_LEGACY_MESSAGES_PATH.to_owned(),
            access_log: None,
            auth: AuthConfig::default(),
            cluster: None,
        }
    }

    /// A config serving the stdio MCP server `cmd`, every other field at
    /// its default.
    pub fn stdio(cmd: StdioUpstream) -> Self {
        let mut c = Self::new(http::Uri::from_static("http://127.0.0.1/"));
        c.upstream_cmd = Some(cmd);
        c
    }
}

/// The transport of an HTTP upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamTransport {
    /// Streamable HTTP, or legacy HTTP+SSE when the Streamable HTTP
    /// initialize gets 400, 404 or 405 and a `GET` of the same URL opens
    /// a legacy stream.
    #[default]
    Auto,
    /// Streamable HTTP only.
    StreamableHttp,
    /// Legacy HTTP+SSE (2024-11-05) only: the upstream URL is its SSE
    /// stream (e.g. `http://127.0.0.1:3001/sse`).
    Sse,
}

impl UpstreamTransport {
    /// Parses `auto`, `streamable-http` or `sse`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "streamable-http" => Some(Self::StreamableHttp),
            "sse" => Some(Self::Sse),
            _ => None,
        }
    }
}

/// Named limits. Exceeding one is a typed, documented client error, never
/// unbounded memory.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body accepted; larger gets 413. Default 4 MiB.
    pub max_body_bytes: usize,
    /// Largest request head accepted; larger gets 431. Counted as the
    /// request line plus, per header, name, value and 4 bytes (`: `,
    /// CRLF), whatever way the head arrives (whitespace around values is
    /// not counted). Also bounds the connection's read and write buffers.
    /// Must be at least 8192. Default 64 KiB.
    pub max_header_bytes: usize,
    /// A request body must arrive whole within this time of the handler
    /// starting to read it; else 408. Default 30 s.
    pub body_read_timeout: Duration,
    /// Longest wait for the next bytes of a request body; then 408.
    /// Default 10 s.
    pub body_idle_timeout: Duration,
    /// Most client connections open at once; one more is answered 503
    /// (with `Connection: close`) and closed. Default 4,096.
    pub max_connections: usize,
    /// Largest JSON (non-SSE) answer accepted from the upstream. Such an
    /// answer is read whole (within `upstream_response_timeout`) before
    /// the client is answered; larger gets 502. Default 16 MiB.
    pub max_response_bytes: usize,
    /// Most request headers accepted. Default 100.
    pub max_headers: usize,
    /// How long to wait for a connection to the upstream (TCP, and the
    /// TLS handshake for `https`); then 504. Default 5 s.
    pub upstream_connect_timeout: Duration,
    /// With a TLS listener, how long a client has to complete the TLS
    /// handshake; then the connection is closed. Default 10 s.
    pub tls_handshake_timeout: Duration,
    /// With a TLS listener, most HTTP/2 streams (requests) open at once on
    /// one connection. Default 256.
    pub h2_max_concurrent_streams: u32,
    /// With a TLS listener, most plaintext bytes per TLS record (512 to
    /// 16,384). A client decrypts nothing of a record before all of it
    /// arrived, so small records let a resumed stream's replay burst reach
    /// it event by event. Default 4,096.
    pub tls_max_record_bytes: usize,
    /// How long to wait for the upstream's response head (status and
    /// headers; an SSE stream may then run as long as it likes, a JSON
    /// answer must be complete within it too); then 504. Default 60 s.
    pub upstream_response_timeout: Duration,
    /// Most live sessions (in the store); an initialize beyond it gets 503
    /// with `Retry-After`. Exact under concurrency, across every instance
    /// sharing the store: the store counts and creates in one step. At the
    /// bound, an initialize the upstream already answered is ended there
    /// (DELETE), and for a second this instance refuses initializes
    /// without asking the upstream. Default 10,000.
    pub max_sessions: u64,
    /// Most sessions one client address may create per minute (IPv6: per
    /// /64 prefix); beyond it an initialize gets 429 with `Retry-After`. A
    /// token bucket holding this many, refilled evenly over the minute
    /// (so a burst of this many, then one every 60 s / this). 0: no limit
    /// (behind a load balancer every client has its address: raise it or
    /// turn it off). The proxy tracks at most 65,536 addresses (about
    /// 3 MB); past that the oldest minute's are forgotten early. Default
    /// 600.
    pub max_session_creates_per_minute: u32,
    /// Client addresses the session-create limit tracks at once (in two
    /// tables; when full, the older table is dropped, forgetting only
    /// full buckets). Default 65,536 (about 3 MB).
    pub max_rate_limited_clients: usize,
    /// Sessions that ended here (expired, refused) waiting for their
    /// upstream DELETE; more are not ended upstream (counted, logged).
    /// Default 10,000.
    pub upstream_delete_queue: usize,
    /// Upstream DELETEs sent at once. Default 16.
    pub upstream_deletes_in_flight: usize,
    /// Longest one upstream DELETE may take. Default 10 s.
    pub upstream_delete_timeout: Duration,
    /// Most SSE streams open at once in one session; more gets 429.
    /// Default 16.
    pub max_streams_per_session: u32,
    /// A `:` comment is sent on a client SSE stream idle this long.
    /// Default 15 s.
    pub keepalive_interval: Duration,
    /// Longest `Last-Event-ID` accepted; longer gets 400. Default 256 bytes.
    pub max_last_event_id_len: usize,
    /// How long a client has to send its request head; then the connection
    /// is closed. Default 30 s.
    pub header_read_timeout: Duration,
    /// Per stream, the events kept for clients that reconnect with
    /// `Last-Event-ID`: at most 8,192 events and 2 MiB, of which the last
    /// 1 MiB written is never evicted (see [`ReplayLimits`]).
    pub replay: ReplayLimits,
    /// All buffered stream data of the proxy together (every stream's
    /// replay buffer, kept and detached streams included): when a batch
    /// takes the total over it, streams no client holds are released,
    /// oldest first; while it is reached, a new stream gets 503. Live
    /// streams are never cut for it. Default 256 MiB.
    pub max_buffered_bytes: usize,
    /// Most bytes read from an upstream connection at a time (hyper's
    /// buffer; also the largest upstream response head). A stream's
    /// batches are at most about this big, so it bounds what each stream
    /// holds beside its replay buffer. At least 8 KiB. Default 64 KiB.
    pub upstream_read_buffer: usize,
    /// Idle upstream connections kept for reuse (the oldest goes past it);
    /// size it to the requests in flight at once. Default 256.
    pub upstream_max_idle_connections: usize,
    /// The kernel send buffer of each client connection (`SO_SNDBUF`; the
    /// kernel doubles it). Bounds what the proxy has in flight toward a
    /// client, so the replay retention covers it. 0 leaves it to the
    /// kernel (which may grow it to megabytes). Default 64 KiB.
    pub client_send_buffer: usize,
    /// Connections waiting to be accepted (the listen backlog). Default
    /// 1,024.
    pub listen_backlog: u32,
    /// How long a stream whose client went away is kept (its upstream read
    /// on into the replay buffer) for the client to come back. Default
    /// 60 s.
    pub detached_linger: Duration,
    /// Per session, at most this many complete streams are kept for their
    /// linger time (for a client that missed the tail); the oldest goes
    /// first. Bounds memory under a high request rate. Default 16.
    pub max_kept_complete_streams: usize,
    /// How the proxy reconnects an upstream stream that dropped. Default:
    /// the transport crate's defaults (200 ms base, 30 s cap, 10 attempts).
    pub reconnect: ReconnectConfig,
    /// Most sessions this instance keeps in memory (the store keeps them
    /// all). Past it the least recently used one with no open stream
    /// leaves memory and is read from the store on its next request.
    /// Default 10,000.
    pub max_cached_sessions: usize,
    /// A cached session is read again from the store before use when the
    /// store has not confirmed it for this long, and one with open streams
    /// is checked this often without a request. So a session that left
    /// the store (expired, or deleted by another instance) gets 404 and
    /// its streams here are released within this time. Default 2 s.
    pub session_revalidate_interval: Duration,
    /// A cached session with no request and no open stream for this long
    /// leaves this instance's memory; match the store sweeper's idle
    /// timeout. Default 30 min.
    pub session_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4 << 20,
            max_header_bytes: 64 << 10,
            body_read_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_response_bytes: 16 << 20,
            max_headers: 100,
            upstream_connect_timeout: Duration::from_secs(5),
            tls_handshake_timeout: Duration::from_secs(10),
            h2_max_concurrent_streams: 256,
            tls_max_record_bytes: 4096,
            upstream_response_timeout: Duration::from_secs(60),
            max_sessions: 10_000,
            max_session_creates_per_minute: 600,
            max_rate_limited_clients: 2 * crate::server::ratelimit::MAX_TRACKED_PER_TABLE,
            upstream_delete_queue: crate::server::ender::MAX_DELETES_QUEUED,
            upstream_deletes_in_flight: crate::server::ender::MAX_DELETES_IN_FLIGHT,
            upstream_delete_timeout: crate::server::ender::DELETE_TIMEOUT,
            max_streams_per_session: 16,
            keepalive_interval: Duration::from_secs(15),
            max_last_event_id_len: 256,
            header_read_timeout: Duration::from_secs(30),
            replay: ReplayLimits::default(),
            max_buffered_bytes: crate::stream::budget::DEFAULT_MAX_BUFFERED_BYTES,
            upstream_read_buffer: crate::upstream::http::DEFAULT_UPSTREAM_READ_BUFFER,
            upstream_max_idle_connections: crate::upstream::http::MAX_IDLE,
            client_send_buffer: 64 << 10,
            listen_backlog: 1024,
            detached_linger: Duration::from_secs(60),
            max_kept_complete_streams: 16,
            reconnect: ReconnectConfig::default(),
            max_cached_sessions: 10_000,
            session_revalidate_interval: Duration::from_secs(2),
            session_idle_timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// How the reverse proxy treats client credentials (`[auth] mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AuthMode {
    /// No auth: the client's `Authorization` stays here. The default.
    #[default]
    None,
    /// The upstream does its own OAuth: the client's `Authorization` goes
    /// upstream, its challenges and metadata come back rewritten to the
    /// public URL, and sessions are bound to the credential.
    Passthrough,
    /// The proxy is the OAuth resource server: it validates tokens (JWT
    /// against the issuer's keys, or introspection), never forwards them,
    /// and binds sessions to the principal (issuer, subject).
    OAuth,
}

/// What the proxy sends upstream as its own credential in `oauth` mode
/// (`[auth.upstream] credential`).
#[derive(Clone, Default)]
pub enum UpstreamCredential {
    /// Nothing (or `upstream_bearer`, when set). The default.
    #[default]
    None,
    /// `upstream_bearer`.
    Bearer,
    /// An OAuth client-credentials token, fetched before it is needed and
    /// refreshed before it expires.
    ClientCredentials(TokenClient),
    /// An RFC 8693 token exchange of the client's token, per principal.
    TokenExchange(TokenClient),
}

impl std::fmt::Debug for UpstreamCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamCredential::None => f.write_str("None"),
            UpstreamCredential::Bearer => f.write_str("Bearer"),
            UpstreamCredential::ClientCredentials(c) => {
                f.debug_tuple("ClientCredentials").field(c).finish()
            }
            UpstreamCredential::TokenExchange(c) => {
                f.debug_tuple("TokenExchange").field(c).finish()
            }
        }
    }
}

/// The proxy as an OAuth client of the upstream's authorization server.
#[derive(Clone, Default)]
pub struct TokenClient {
    /// The token endpoint; default: discovered from `issuer`.
    pub token_url: Option<http::Uri>,
    /// The upstream's authorization server, when it is not the one
    /// clients use (`[auth] issuer`, the default).
    pub issuer: Option<String>,
    /// The client id.
    pub client_id: String,
    /// The client secret (sent with HTTP Basic).
    pub client_secret: String,
    /// `scope` asked for, if any.
    pub scope: Option<String>,
    /// `resource` (RFC 8707) asked for: the upstream's URL, if it wants one.
    pub resource: Option<String>,
}

impl std::fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenClient")
            .field("token_url", &self.token_url)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("scope", &self.scope)
            .field("resource", &self.resource)
            .finish()
    }
}

/// `[auth]`: who may use the proxy. Every field's doc names its default.
#[derive(Clone, Default)]
pub struct AuthConfig {
    /// The mode. Default [`AuthMode::None`].
    pub mode: AuthMode,
    /// The URL clients use for the MCP endpoint, e.g.
    /// `https://mcp.example.com/mcp`: the protected resource's name and
    /// where its metadata is announced. Required in `passthrough` and
    /// `oauth`.
    pub public_url: Option<http::Uri>,
    /// The authorization server's issuer (`oauth`). Its metadata is
    /// discovered at start-up (RFC 8414, then OpenID Connect discovery).
    pub issuer: Option<String>,
    /// The `aud` a token must carry (RFC 8707). Default: `public_url`.
    pub audience: Option<String>,
    /// Scopes every request needs (403 `insufficient_scope` without).
    /// Default none.
    pub required_scopes: Vec<String>,
    /// `scopes_supported` in the protected-resource metadata. Default:
    /// `required_scopes`.
    pub scopes_supported: Option<Vec<String>>,
    /// Client id for token introspection (RFC 7662) of tokens that are
    /// not JWTs. Default none: only JWTs are accepted.
    pub introspection_client_id: Option<String>,
    /// Its secret (HTTP Basic).
    pub introspection_client_secret: Option<String>,
    /// Extra scopes per method, or per `method:tool` glob (`*` matches any
    /// run of characters), e.g. `("tools/call:delete_*", ["admin"])`.
    /// Every matching entry applies. Default none.
    pub scope_map: Vec<(String, Vec<String>)>,
    /// The proxy's own credential toward the upstream in `oauth` mode.
    pub upstream: UpstreamCredential,
    /// The auth limits.
    pub limits: AuthLimits,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("mode", &self.mode)
            .field("public_url", &self.public_url)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("required_scopes", &self.required_scopes)
            .field("introspection_client_id", &self.introspection_client_id)
            .field("scope_map", &self.scope_map)
            .field("upstream", &self.upstream)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Limits of the auth layer.
#[derive(Debug, Clone)]
pub struct AuthLimits {
    /// A token whose `kid` the cached key set lacks makes the proxy fetch
    /// the set again, at most once per this interval (a flood of made-up
    /// `kid`s costs the issuer one request per interval). Default 10 s.
    pub jwks_refresh_interval: Duration,
    /// Introspection answers kept (the oldest goes past it). Default
    /// 10,000.
    pub introspection_cache_entries: usize,
    /// Longest an introspection answer is trusted (never past the token's
    /// `exp`). Default 60 s.
    pub introspection_cache_ttl: Duration,
    /// Exchanged upstream tokens kept, one per principal (token exchange).
    /// Default 10,000.
    pub token_exchange_cache_entries: usize,
    /// Longest a request to the authorization server (metadata, keys,
    /// introspection, token) may take. Default 10 s.
    pub fetch_timeout: Duration,
    /// Largest answer accepted from the authorization server. Default
    /// 1 MiB.
    pub max_fetch_bytes: usize,
    /// Clock skew allowed on `exp` and `nbf`. Default 60 s.
    pub leeway: Duration,
    /// A client-credentials token is refreshed this long before it
    /// expires. Default 60 s.
    pub token_refresh_margin: Duration,
}

impl Default for AuthLimits {
    fn default() -> Self {
        AuthLimits {
            jwks_refresh_interval: Duration::from_secs(10),
            introspection_cache_entries: 10_000,
            introspection_cache_ttl: Duration::from_secs(60),
            token_exchange_cache_entries: 10_000,
            fetch_timeout: Duration::from_secs(10),
            max_fetch_bytes: 1 << 20,
            leeway: Duration::from_secs(60),
            token_refresh_margin: Duration::from_secs(60),
        }
    }
}

/// Which browser origins may reach the proxy (DNS-rebinding defence).
///
/// A request without `Origin` (not from a browser) is always accepted; one
/// with an `Origin` not matched here gets 403.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum OriginPolicy {
    /// `http(s)://localhost`, `127.0.0.1` and `[::1]`, any port. The
    /// default.
    #[default]
    Loopback,
    /// Any origin (`--allowed-origin '*'`).
    Any,
    /// Exactly these patterns. A pattern is an origin such as
    /// `https://app.example.com`; one ending in `:*` matches any port (or
    /// none).
    List(Vec<String>),
}

const LOOPBACK_PATTERNS: [&str; 6] = [
    "http://localhost:*",
    "http://127.0.0.1:*",
    "http://[::1]:*",
    "https://localhost:*",
    "https://127.0.0.1:*",
    "https://[::1]:*",
];

impl OriginPolicy {
    /// A policy from `--allowed-origin` values: empty means loopback, a
    /// `*` anywhere means any.
    pub fn from_patterns(patterns: Vec<String>) -> Self {
        if patterns.is_empty() {
            OriginPolicy::Loopback
        } else if patterns.iter().any(|p| p == "*") {
            OriginPolicy::Any
        } else {
            OriginPolicy::List(patterns)
        }
    }

    /// True when a request with this `Origin` value may proceed.
    pub fn allows(&self, origin: &[u8]) -> bool {
        match self {
            OriginPolicy::Any => true,
            OriginPolicy::Loopback => LOOPBACK_PATTERNS.iter().any(|p| matches(p, origin)),
            OriginPolicy::List(list) => list.iter().any(|p| matches(p, origin)),
        }
    }
}

fn matches(pattern: &str, origin: &[u8]) -> bool {
    let Some(prefix) = pattern.strip_suffix(":*") else {
        return pattern.as_bytes().eq_ignore_ascii_case(origin);
    };
    let prefix = prefix.as_bytes();
    if origin.len() < prefix.len() || !origin[..prefix.len()].eq_ignore_ascii_case(prefix) {
        return false;
    }
    match &origin[prefix.len()..] {
        [] => true,
        [b':', port @ ..] => {
            !port.is_empty() && port.len() <= 5 && port.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(policy: &OriginPolicy, origin: &str, want: bool) {
        assert_eq!(
            policy.allows(origin.as_bytes()),
            want,
            "{policy:?} {origin}"
        );
    }

    #[test]
    fn loopback_policy() {
        let p = OriginPolicy::Loopback;
        check(&p, "http://localhost:6274", true);
        check(&p, "http://localhost", true);
        check(&p, "http://127.0.0.1:3000", true);
        check(&p, "https://[::1]:8443", true);
        check(&p, "http://localhost.evil.com", false);
        check(&p, "http://localhost:80.evil.com", false);
        check(&p, "http://evil.com", false);
        check(&p, "null", false);
        check(&p, "http://localhost:", false);
    }

    #[test]
    fn list_and_any() {
        let p = OriginPolicy::from_patterns(vec!["https://app.example.com".into()]);
        check(&p, "https://app.example.com", true);
        check(&p, "https://APP.example.com", true);
        check(&p, "https://app.example.com:444", false);
        check(&p, "http://localhost:1", false);
        let any = OriginPolicy::from_patterns(vec!["*".into()]);
        check(&any, "http://evil.com", true);
        assert_eq!(OriginPolicy::from_patterns(vec![]), OriginPolicy::Loopback);
    }
}
