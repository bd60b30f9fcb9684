//! Settings: the TOML config file merged under the flags (flags and
//! `SHADOWCAT_*` variables win), then defaults.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use std::ffi::OsString;

use shadowcat_proxy::forward::ChildCommand;
use shadowcat_proxy::{OriginPolicy, ReverseProxyConfig, StdioUpstream};
use shadowcat_session::SweeperConfig;

use crate::cli::{LogFormat, ReverseArgs};
use crate::error::CliError;

/// The default store: the embedded file store in the working directory.
pub(crate) const DEFAULT_STORE: &str = "file:shadowcat.redb";
/// The default admin listener.
pub(crate) const DEFAULT_ADMIN_BIND: &str = "127.0.0.1:9090";
/// The default drain timeout on shutdown, in seconds.
pub(crate) const DEFAULT_DRAIN_SECS: u64 = 10;
/// The default idle timeout of a session, in seconds.
pub(crate) const DEFAULT_SESSION_IDLE_SECS: u64 = 30 * 60;

/// The config file. Every key is optional; unknown keys are an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    upstream: Option<String>,
    bind: Option<SocketAddr>,
    path: Option<String>,
    /// `auto`, `streamable-http` or `sse`.
    upstream_transport: Option<String>,
    /// The legacy HTTP+SSE stream path, or `off`.
    legacy_sse_path: Option<String>,
    legacy_messages_path: Option<String>,
    store: Option<String>,
    admin_bind: Option<String>,
    /// The admin API's bearer token: `env:VAR` or `file:PATH`.
    admin_token: Option<String>,
    /// One line per request on stdout: `text` or `json`.
    access_log: Option<LogFormat>,
    log_format: Option<LogFormat>,
    /// The log filter (`RUST_LOG` syntax) when `RUST_LOG` is not set;
    /// SIGHUP applies a changed one.
    log_level: Option<String>,
    upstream_bearer: Option<String>,
    /// PEM CA bundle trusted for an https upstream, besides the system's.
    upstream_ca: Option<std::path::PathBuf>,
    /// PEM client certificate and key for an https upstream (mTLS).
    upstream_client_cert: Option<std::path::PathBuf>,
    upstream_client_key: Option<std::path::PathBuf>,
    /// PEM certificate and key of the TLS listener (read again on SIGHUP).
    tls_cert: Option<std::path::PathBuf>,
    tls_key: Option<std::path::PathBuf>,
    allowed_origins: Option<Vec<String>>,
    allowed_hosts: Option<Vec<String>>,
    drain_timeout_secs: Option<u64>,
    session_idle_timeout_secs: Option<u64>,
    /// A stdio MCP server to serve: program and arguments.
    upstream_cmd: Option<Vec<String>>,
    /// Extra environment of the stdio server.
    upstream_env: Option<std::collections::BTreeMap<String, String>>,
    /// Working directory of the stdio server.
    upstream_cwd: Option<std::path::PathBuf>,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    auth: FileAuth,
    #[serde(default)]
    cluster: FileCluster,
}

/// `[cluster]` in the config file: several instances sharing streams.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCluster {
    replay_log: Option<bool>,
    instance_id: Option<String>,
    lease_ttl_ms: Option<u64>,
    replay_log_max_len: Option<u64>,
    replay_log_max_age_ms: Option<u64>,
    replay_log_wait_ms: Option<u64>,
}

/// `[cluster]`, resolved (the replay log itself is connected at start).
#[derive(Debug, Clone)]
pub(crate) struct ClusterSettings {
    /// `None`: on with a redis store.
    pub(crate) replay_log: Option<bool>,
    pub(crate) instance_id: String,
    pub(crate) lease_ttl: Duration,
    pub(crate) retention: shadowcat_session::Retention,
    pub(crate) wait: Duration,
}

impl ClusterSettings {
    fn resolve(args: &ReverseArgs, file: &FileCluster) -> Result<Self, CliError> {
        let replay_log = match args.replay_log.as_deref() {
            Some("on") => Some(true),
            Some(_) => Some(false),
            None => file.replay_log,
        };
        let instance_id = match args.instance_id.clone().or(file.instance_id.clone()) {
            Some(id) => id,
            None => {
                use std::hash::{BuildHasher, Hasher};
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u32(std::process::id());
                format!("shadowcat-{}-{:08x}", std::process::id(), h.finish() as u32)
            }
        };
        if instance_id.is_empty() || instance_id.contains('|') || instance_id.len() > 128 {
            return Err(CliError::Config(format!(
                "bad instance_id {instance_id:?}: 1 to 128 characters, no '|'"
            )));
        }
        let ms = |v: Option<u64>, default: u64, name: &str| -> Result<Duration, CliError> {
            match v.unwrap_or(default) {
                0 => Err(CliError::Config(format!(
                    "[cluster] {name} must be at least 1"
                ))),
                n => Ok(Duration::from_millis(n)),
            }
        };
        let max_len = file.replay_log_max_len.unwrap_or(16_384);
        if max_len == 0 {
            return Err(CliError::Config(
                "[cluster] replay_log_max_len must be at least 1".into(),
            ));
        }
        Ok(ClusterSettings {
            replay_log,
            instance_id,
            lease_ttl: ms(file.lease_ttl_ms, 5_000, "lease_ttl_ms")?,
            retention: shadowcat_session::Retention {
                max_len,
                max_age: Some(ms(
                    file.replay_log_max_age_ms,
                    600_000,
                    "replay_log_max_age_ms",
                )?),
            },
            wait: ms(file.replay_log_wait_ms, 3_000, "replay_log_wait_ms")?,
        })
    }
}

/// `[auth]` in the config file; see `shadowcat_proxy::AuthConfig`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    mode: Option<crate::cli::AuthModeArg>,
    public_url: Option<String>,
    issuer: Option<String>,
    audience: Option<String>,
    required_scopes: Option<Vec<String>>,
    scopes_supported: Option<Vec<String>>,
    introspection_client_id: Option<String>,
    /// `env:VAR` or `file:PATH`.
    introspection_client_secret: Option<String>,
    /// `"method"` or `"method:tool-glob"` → scopes.
    scope_map: Option<std::collections::BTreeMap<String, Vec<String>>>,
    #[serde(default)]
    upstream: FileAuthUpstream,
    jwks_refresh_interval_ms: Option<u64>,
    introspection_cache_entries: Option<usize>,
    introspection_cache_ttl_ms: Option<u64>,
    token_exchange_cache_entries: Option<usize>,
    fetch_timeout_ms: Option<u64>,
    max_fetch_bytes: Option<usize>,
    leeway_secs: Option<u64>,
    token_refresh_margin_secs: Option<u64>,
}

/// `[auth.upstream]`: the proxy's own credential toward the upstream.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuthUpstream {
    /// `none`, `bearer`, `client_credentials` or `token_exchange`.
    credential: Option<String>,
    token_url: Option<String>,
    /// The upstream's authorization server, when not `[auth] issuer`.
    issuer: Option<String>,
    client_id: Option<String>,
    /// `env:VAR` or `file:PATH`.
    client_secret: Option<String>,
    scope: Option<String>,
    resource: Option<String>,
}

/// `[auth]`: flags over the file.
fn resolve_auth(
    args: crate::cli::AuthArgs,
    file: FileAuth,
) -> Result<shadowcat_proxy::AuthConfig, CliError> {
    use crate::cli::AuthModeArg;
    use shadowcat_proxy::{AuthConfig, AuthMode, TokenClient, UpstreamCredential};
    let mut a = AuthConfig {
        mode: match args.mode.or(file.mode) {
            None | Some(AuthModeArg::None) => AuthMode::None,
            Some(AuthModeArg::Passthrough) => AuthMode::Passthrough,
            Some(AuthModeArg::Oauth) => AuthMode::OAuth,
        },
        ..AuthConfig::default()
    };
    let url = |what: &str, s: String| -> Result<http::Uri, CliError> {
        s.parse()
            .map_err(|_| CliError::Config(format!("bad {what} {s:?}: not a URL")))
    };
    if let Some(u) = args.public_url.or(file.public_url) {
        a.public_url = Some(url("public_url", u)?);
    }
    a.issuer = args.issuer.or(file.issuer);
    a.audience = args.audience.or(file.audience);
    a.required_scopes = if args.required_scopes.is_empty() {
        file.required_scopes.unwrap_or_default()
    } else {
        args.required_scopes
    };
    a.scopes_supported = file.scopes_supported;
    a.introspection_client_id = args
        .introspection_client_id
        .or(file.introspection_client_id);
    if let Some(spec) = args
        .introspection_client_secret
        .or(file.introspection_client_secret)
    {
        a.introspection_client_secret =
            Some(read_secret(&spec, "--auth-introspection-client-secret")?);
    }
    a.scope_map = file.scope_map.unwrap_or_default().into_iter().collect();
    let up = file.upstream;
    let client = |up: FileAuthUpstream| -> Result<TokenClient, CliError> {
        let mut c = TokenClient::default();
        if let Some(u) = up.token_url {
            c.token_url = Some(url("[auth.upstream] token_url", u)?);
        }
        c.issuer = up.issuer;
        c.client_id = up.client_id.ok_or_else(|| {
            CliError::Config("[auth.upstream] needs client_id for this credential".into())
        })?;
        let secret = up.client_secret.ok_or_else(|| {
            CliError::Config("[auth.upstream] needs client_secret (env:VAR or file:PATH)".into())
        })?;
        c.client_secret = read_secret(&secret, "[auth.upstream] client_secret")?;
        c.scope = up.scope;
        c.resource = up.resource;
        Ok(c)
    };
    a.upstream = match up.credential.as_deref() {
        None | Some("none") => UpstreamCredential::None,
        Some("bearer") => UpstreamCredential::Bearer,
        Some("client_credentials") => UpstreamCredential::ClientCredentials(client(up)?),
        Some("token_exchange") => UpstreamCredential::TokenExchange(client(up)?),
        Some(other) => {
            return Err(CliError::Config(format!(
                "[auth.upstream] credential {other:?}: use none, bearer, client_credentials or token_exchange"
            )));
        }
    };
    let l = &mut a.limits;
    let ms = Duration::from_millis;
    if let Some(v) = file.jwks_refresh_interval_ms {
        l.jwks_refresh_interval = ms(v);
    }
    if let Some(v) = file.introspection_cache_entries {
        l.introspection_cache_entries = v;
    }
    if let Some(v) = file.introspection_cache_ttl_ms {
        l.introspection_cache_ttl = ms(v);
    }
    if let Some(v) = file.token_exchange_cache_entries {
        l.token_exchange_cache_entries = v;
    }
    if let Some(v) = file.fetch_timeout_ms {
        l.fetch_timeout = ms(v);
    }
    if let Some(v) = file.max_fetch_bytes {
        l.max_fetch_bytes = v;
    }
    if let Some(v) = file.leeway_secs {
        l.leeway = Duration::from_secs(v);
    }
    if let Some(v) = file.token_refresh_margin_secs {
        l.token_refresh_margin = Duration::from_secs(v);
    }
    Ok(a)
}

/// `[limits]` in the config file; see `shadowcat_proxy::Limits`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_body_bytes: Option<usize>,
    max_header_bytes: Option<usize>,
    max_headers: Option<usize>,
    body_read_timeout_ms: Option<u64>,
    body_idle_timeout_ms: Option<u64>,
    max_connections: Option<usize>,
    max_response_bytes: Option<usize>,
    upstream_connect_timeout_ms: Option<u64>,
    tls_handshake_timeout_ms: Option<u64>,
    h2_max_concurrent_streams: Option<u32>,
    tls_max_record_bytes: Option<usize>,
    upstream_response_timeout_ms: Option<u64>,
    max_sessions: Option<u64>,
    max_session_creates_per_minute: Option<u32>,
    max_streams_per_session: Option<u32>,
    keepalive_interval_ms: Option<u64>,
    max_last_event_id_len: Option<usize>,
    header_read_timeout_ms: Option<u64>,
    replay_max_events: Option<usize>,
    replay_max_bytes: Option<usize>,
    replay_retain_bytes: Option<usize>,
    max_buffered_bytes: Option<usize>,
    upstream_read_buffer_bytes: Option<usize>,
    upstream_max_idle_connections: Option<usize>,
    max_rate_limited_clients: Option<usize>,
    upstream_delete_queue: Option<usize>,
    upstream_deletes_in_flight: Option<usize>,
    upstream_delete_timeout_ms: Option<u64>,
    client_send_buffer_bytes: Option<usize>,
    listen_backlog: Option<u32>,
    detached_linger_ms: Option<u64>,
    max_kept_complete_streams: Option<usize>,
    reconnect_max_attempts: Option<u32>,
    max_children: Option<usize>,
    max_child_line_bytes: Option<usize>,
    max_cached_sessions: Option<usize>,
    session_revalidate_interval_ms: Option<u64>,
}

impl FileConfig {
    /// Reads `path`, or the empty config when there is none.
    pub(crate) fn load(path: Option<&Path>) -> Result<Self, CliError> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::Config(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text)
            .map_err(|e| CliError::Config(format!("{}: {}", path.display(), e.message())))
    }

    /// The store spec: flag, then file, then the default.
    pub(crate) fn store(&self, flag: Option<&str>) -> String {
        flag.or(self.store.as_deref())
            .unwrap_or(DEFAULT_STORE)
            .to_owned()
    }

    /// The config file's `log_level`.
    pub(crate) fn log_level(&self) -> Option<&str> {
        self.log_level.as_deref()
    }

    /// The log format: flag, then file, then text.
    pub(crate) fn log_format(&self, flag: Option<LogFormat>) -> LogFormat {
        flag.or(self.log_format).unwrap_or(LogFormat::Text)
    }
}

/// Where the admin listener listens, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AdminBind {
    /// No admin listener (`--admin-bind off`).
    Off,
    /// This address.
    At(SocketAddr),
}

impl AdminBind {
    /// `off` or an address; `None` (not given) is the default address.
    pub(crate) fn parse(spec: Option<&str>) -> Result<Self, CliError> {
        match spec {
            None => Ok(AdminBind::At(
                DEFAULT_ADMIN_BIND.parse().expect("default admin address"),
            )),
            Some("off") => Ok(AdminBind::Off),
            Some(s) => s.parse().map(AdminBind::At).map_err(|_| {
                CliError::Config(format!(
                    "bad admin address {s:?}: expected HOST:PORT (e.g. 127.0.0.1:9090) or off"
                ))
            }),
        }
    }
}

/// Where `shadowcat sessions` finds a running proxy: the admin address and
/// token from the same flags, variables and config file as `reverse`.
pub(crate) fn admin_target(
    file: &FileConfig,
    bind: Option<&str>,
    token: Option<&str>,
) -> Result<(AdminBind, Option<String>), CliError> {
    let bind = AdminBind::parse(bind.or(file.admin_bind.as_deref()))?;
    let token = match token.or(file.admin_token.as_deref()) {
        Some(spec) => Some(read_secret(spec, "--admin-token")?),
        None => None,
    };
    Ok((bind, token))
}

/// Everything `shadowcat reverse` runs with.
#[derive(Debug)]
pub(crate) struct ReverseSettings {
    pub(crate) proxy: ReverseProxyConfig,
    pub(crate) admin_bind: AdminBind,
    /// The admin API's bearer token, if any.
    pub(crate) admin_token: Option<String>,
    /// The access log's format, when it is on.
    pub(crate) access_log: Option<LogFormat>,
    pub(crate) drain_timeout: Duration,
    pub(crate) sweeper: SweeperConfig,
    pub(crate) cluster: ClusterSettings,
}

impl ReverseSettings {
    /// Flags over the file over defaults.
    pub(crate) fn resolve(args: ReverseArgs, file: FileConfig) -> Result<Self, CliError> {
        let cluster = ClusterSettings::resolve(&args, &file.cluster)?;
        let access_log = args.access_log.or(file.access_log);
        let (admin_bind, admin_token) = admin_target(
            &file,
            args.admin_bind.as_deref(),
            args.admin_token.as_deref(),
        )?;
        if let AdminBind::At(addr) = admin_bind
            && !addr.ip().is_loopback()
            && admin_token.is_none()
        {
            return Err(CliError::Config(format!(
                "the admin listener {addr} is not on loopback: give it a token (--admin-token env:VAR or file:PATH), bind it to 127.0.0.1, or turn it off (--admin-bind off)"
            )));
        }
        if args.upstream_cmd == args.program.is_empty() {
            return Err(CliError::Config(
                "--upstream-cmd takes the program after `--`: --upstream-cmd -- PROGRAM [ARGS…]"
                    .into(),
            ));
        }
        let cmd: Option<Vec<OsString>> = if args.upstream_cmd {
            Some(args.program)
        } else if args.upstream.is_some() {
            None
        } else {
            file.upstream_cmd
                .map(|v| v.into_iter().map(OsString::from).collect())
        };
        let mut proxy = match cmd {
            Some(words) => {
                let mut words = words.into_iter();
                let program = words.next().ok_or_else(|| {
                    CliError::Config("upstream_cmd needs at least the program".into())
                })?;
                let mut command = ChildCommand::new(program).args(words);
                for (k, v) in file.upstream_env.unwrap_or_default() {
                    command = command.env(k, v);
                }
                if let Some(dir) = file.upstream_cwd {
                    command = command.current_dir(dir);
                }
                let mut up = StdioUpstream::new(command);
                if let Some(n) = args.max_children.or(file.limits.max_children) {
                    up.max_children = n;
                }
                if let Some(n) = file.limits.max_child_line_bytes {
                    up.child.max_line_len = n;
                }
                ReverseProxyConfig::stdio(up)
            }
            None => {
                let upstream = args.upstream.or(file.upstream).ok_or_else(|| {
                    CliError::Config(
                        "no upstream: pass --upstream http://HOST:PORT/mcp or --upstream-cmd -- PROGRAM"
                            .into(),
                    )
                })?;
                let upstream: http::Uri = upstream.parse().map_err(|_| {
                    CliError::Config(format!("bad upstream URL {upstream:?}: not a URL"))
                })?;
                shadowcat_proxy::check_upstream(&upstream)?;
                ReverseProxyConfig::new(upstream)
            }
        };
        if let Some(bind) = args.bind.or(file.bind) {
            proxy.bind = bind;
        }
        if let Some(path) = args.path.or(file.path) {
            proxy.path = path;
        }
        if let Some(t) = args.upstream_transport.or(file.upstream_transport) {
            proxy.upstream_transport =
                shadowcat_proxy::UpstreamTransport::parse(&t).ok_or_else(|| {
                    CliError::Config(format!(
                        "bad upstream_transport {t:?}: use auto, streamable-http or sse"
                    ))
                })?;
        }
        if let Some(sse) = args.legacy_sse_path.or(file.legacy_sse_path) {
            proxy.legacy_sse_path = (sse != "off").then_some(sse);
        }
        if let Some(messages) = args.legacy_messages_path.or(file.legacy_messages_path) {
            proxy.legacy_messages_path = messages;
        }
        let origins = if args.allowed_origins.is_empty() {
            file.allowed_origins.unwrap_or_default()
        } else {
            args.allowed_origins
        };
        proxy.allowed_origins = OriginPolicy::from_patterns(origins);
        proxy.allowed_hosts = if args.allowed_hosts.is_empty() {
            file.allowed_hosts.unwrap_or_default()
        } else {
            args.allowed_hosts
        };
        if let Some(spec) = args.upstream_bearer.or(file.upstream_bearer) {
            proxy.upstream_bearer = Some(read_secret(&spec, "--upstream-bearer")?);
        }
        proxy.auth = resolve_auth(args.auth, file.auth)?;
        proxy.upstream_tls = shadowcat_proxy::UpstreamTlsConfig {
            ca_file: args.upstream_ca.or(file.upstream_ca),
            client_cert: args.upstream_client_cert.or(file.upstream_client_cert),
            client_key: args.upstream_client_key.or(file.upstream_client_key),
        };
        proxy.tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
        ) {
            (Some(cert_file), Some(key_file)) => Some(shadowcat_proxy::ListenerTlsConfig {
                cert_file,
                key_file,
            }),
            (None, None) => None,
            _ => {
                return Err(CliError::Config(
                    "--tls-cert and --tls-key go together (tls_cert and tls_key in the config file)"
                        .into(),
                ));
            }
        };
        let l = &mut proxy.limits;
        let f = file.limits;
        let ms = Duration::from_millis;
        if let Some(v) = f.max_body_bytes {
            l.max_body_bytes = v;
        }
        if let Some(v) = f.max_header_bytes {
            l.max_header_bytes = v;
        }
        if let Some(v) = f.max_headers {
            l.max_headers = v;
        }
        if let Some(v) = f.body_read_timeout_ms {
            l.body_read_timeout = ms(v);
        }
        if let Some(v) = f.body_idle_timeout_ms {
            l.body_idle_timeout = ms(v);
        }
        if let Some(v) = args.max_connections.or(f.max_connections) {
            l.max_connections = v;
        }
        if let Some(v) = f.max_response_bytes {
            l.max_response_bytes = v;
        }
        if let Some(v) = f.upstream_connect_timeout_ms {
            l.upstream_connect_timeout = ms(v);
        }
        if let Some(v) = f.tls_handshake_timeout_ms {
            if v == 0 {
                return Err(CliError::Config(
                    "tls_handshake_timeout_ms must be at least 1".into(),
                ));
            }
            l.tls_handshake_timeout = ms(v);
        }
        if let Some(v) = f.h2_max_concurrent_streams {
            if v == 0 {
                return Err(CliError::Config(
                    "h2_max_concurrent_streams must be at least 1".into(),
                ));
            }
            l.h2_max_concurrent_streams = v;
        }
        if let Some(v) = f.tls_max_record_bytes {
            l.tls_max_record_bytes = v;
        }
        if let Some(v) = f.upstream_response_timeout_ms {
            l.upstream_response_timeout = ms(v);
        }
        if let Some(v) = f.max_sessions {
            l.max_sessions = v;
        }
        if let Some(v) = args
            .max_session_creates_per_minute
            .or(f.max_session_creates_per_minute)
        {
            l.max_session_creates_per_minute = v;
        }
        if let Some(v) = f.max_streams_per_session {
            l.max_streams_per_session = v;
        }
        if let Some(v) = f.keepalive_interval_ms {
            l.keepalive_interval = ms(v);
        }
        if let Some(v) = f.max_last_event_id_len {
            l.max_last_event_id_len = v;
        }
        if let Some(v) = f.header_read_timeout_ms {
            l.header_read_timeout = ms(v);
        }
        if let Some(v) = f.replay_max_events {
            l.replay.max_events = v;
        }
        if let Some(v) = f.replay_max_bytes {
            l.replay.max_bytes = v;
        }
        if let Some(v) = f.replay_retain_bytes {
            l.replay.retain_bytes = v;
        }
        if let Some(v) = f.max_buffered_bytes {
            l.max_buffered_bytes = v;
        }
        if let Some(v) = f.upstream_read_buffer_bytes {
            l.upstream_read_buffer = v;
        }
        if let Some(v) = f.upstream_max_idle_connections {
            l.upstream_max_idle_connections = v;
        }
        if let Some(v) = f.max_rate_limited_clients {
            l.max_rate_limited_clients = v;
        }
        if let Some(v) = f.upstream_delete_queue {
            l.upstream_delete_queue = v;
        }
        if let Some(v) = f.upstream_deletes_in_flight {
            l.upstream_deletes_in_flight = v;
        }
        if let Some(v) = f.upstream_delete_timeout_ms {
            l.upstream_delete_timeout = ms(v);
        }
        if let Some(v) = f.client_send_buffer_bytes {
            l.client_send_buffer = v;
        }
        if let Some(v) = f.listen_backlog {
            l.listen_backlog = v;
        }
        if let Some(v) = f.detached_linger_ms {
            l.detached_linger = ms(v);
        }
        if let Some(v) = f.max_kept_complete_streams {
            l.max_kept_complete_streams = v;
        }
        if let Some(v) = f.reconnect_max_attempts {
            l.reconnect.max_attempts = v;
        }
        if let Some(v) = args.max_cached_sessions.or(f.max_cached_sessions) {
            if v == 0 {
                return Err(CliError::Config(
                    "max_cached_sessions must be at least 1".into(),
                ));
            }
            l.max_cached_sessions = v;
        }
        if let Some(v) = args
            .session_revalidate_interval_ms
            .or(f.session_revalidate_interval_ms)
        {
            if v == 0 {
                return Err(CliError::Config(
                    "session_revalidate_interval_ms must be at least 1".into(),
                ));
            }
            l.session_revalidate_interval = ms(v);
        }
        let drain = args
            .drain_timeout_secs
            .or(file.drain_timeout_secs)
            .unwrap_or(DEFAULT_DRAIN_SECS);
        let idle = args
            .session_idle_timeout_secs
            .or(file.session_idle_timeout_secs)
            .unwrap_or(DEFAULT_SESSION_IDLE_SECS);
        if idle == 0 {
            return Err(CliError::Config(
                "session idle timeout must be at least 1 second".into(),
            ));
        }
        let max_idle = Duration::from_secs(idle);
        proxy.limits.session_idle_timeout = max_idle;
        if let Some(up) = &mut proxy.upstream_cmd {
            up.idle_timeout = max_idle;
            up.check_interval =
                (max_idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(5));
        }
        Ok(ReverseSettings {
            proxy,
            admin_bind,
            admin_token,
            access_log,
            drain_timeout: Duration::from_secs(drain),
            sweeper: SweeperConfig {
                max_idle,
                // Sweep a few times per timeout, at most once a minute.
                interval: (max_idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(60)),
            },
            cluster,
        })
    }
}

/// Reads a secret named by `env:VAR` or `file:PATH`. Literal secrets are
/// refused: they would show in the process list and shell history.
/// `what` names the flag in errors.
pub(crate) fn read_secret(spec: &str, what: &str) -> Result<String, CliError> {
    let value = if let Some(var) = spec.strip_prefix("env:") {
        std::env::var(var).map_err(|_| {
            CliError::Config(format!(
                "{what} names environment variable {var}, which is not set"
            ))
        })?
    } else if let Some(path) = spec.strip_prefix("file:") {
        std::fs::read_to_string(path)
            .map_err(|e| CliError::Config(format!("cannot read {what} from {path}: {e}")))?
    } else {
        return Err(CliError::Config(format!(
            "{what} takes env:VAR or file:PATH, never the token itself"
        )));
    };
    let value = value.trim().to_owned();
    if value.is_empty() {
        return Err(CliError::Config(format!("the {what} token is empty")));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(upstream: Option<&str>) -> ReverseArgs {
        ReverseArgs {
            upstream: upstream.map(str::to_owned),
            bind: None,
            path: None,
            upstream_transport: None,
            legacy_sse_path: None,
            legacy_messages_path: None,
            admin_bind: None,
            admin_token: None,
            access_log: None,
            upstream_bearer: None,
            upstream_ca: None,
            upstream_client_cert: None,
            upstream_client_key: None,
            tls_cert: None,
            tls_key: None,
            allowed_origins: vec![],
            allowed_hosts: vec![],
            max_connections: None,
            drain_timeout_secs: None,
            session_idle_timeout_secs: None,
            upstream_cmd: false,
            replay_log: None,
            instance_id: None,
            max_children: None,
            max_cached_sessions: None,
            session_revalidate_interval_ms: None,
            max_session_creates_per_minute: None,
            auth: crate::cli::AuthArgs::default(),
            program: vec![],
        }
    }

    #[test]
    fn flags_override_the_file() {
        let file: FileConfig = toml::from_str(
            r#"
            upstream = "http://127.0.0.1:1/mcp"
            bind = "127.0.0.1:7000"
            allowed_origins = ["https://a.example"]
            allowed_hosts = ["file.example"]
            [limits]
            max_body_bytes = 10
            body_read_timeout_ms = 3000
            body_idle_timeout_ms = 700
            max_connections = 50
            max_response_bytes = 2048
            keepalive_interval_ms = 250
            replay_max_events = 99
            replay_max_bytes = 4096
            replay_retain_bytes = 1024
            max_buffered_bytes = 65536
            upstream_read_buffer_bytes = 16384
            upstream_delete_timeout_ms = 2500
            max_rate_limited_clients = 100
            client_send_buffer_bytes = 8192
            detached_linger_ms = 1500
            max_kept_complete_streams = 3
            reconnect_max_attempts = 4
            max_cached_sessions = 7
            session_revalidate_interval_ms = 300
            max_sessions = 9
            max_session_creates_per_minute = 12
            "#,
        )
        .unwrap();
        let mut a = args(Some("http://127.0.0.1:2/mcp"));
        a.bind = Some("127.0.0.1:7001".parse().unwrap());
        a.session_revalidate_interval_ms = Some(400);
        a.allowed_hosts = vec!["flag.example".into()];
        a.max_connections = Some(60);
        let s = ReverseSettings::resolve(a, file).unwrap();
        assert_eq!(s.proxy.allowed_hosts, ["flag.example"], "the flag wins");
        assert_eq!(s.proxy.limits.max_connections, 60, "the flag wins");
        assert_eq!(s.proxy.limits.body_read_timeout, Duration::from_secs(3));
        assert_eq!(s.proxy.limits.body_idle_timeout, Duration::from_millis(700));
        assert_eq!(s.proxy.limits.max_response_bytes, 2048);
        assert_eq!(s.proxy.upstream, "http://127.0.0.1:2/mcp");
        assert_eq!(s.proxy.bind.port(), 7001);
        assert_eq!(s.proxy.limits.max_body_bytes, 10);
        assert_eq!(s.proxy.limits.replay.max_events, 99);
        assert_eq!(s.proxy.limits.replay.max_bytes, 4096);
        assert_eq!(s.proxy.limits.replay.retain_bytes, 1024);
        assert_eq!(s.proxy.limits.max_buffered_bytes, 65536);
        assert_eq!(s.proxy.limits.upstream_read_buffer, 16384);
        assert_eq!(
            s.proxy.limits.upstream_delete_timeout,
            Duration::from_millis(2500)
        );
        assert_eq!(s.proxy.limits.max_rate_limited_clients, 100);
        assert_eq!(s.proxy.limits.client_send_buffer, 8192);
        assert_eq!(s.proxy.limits.detached_linger, Duration::from_millis(1500));
        assert_eq!(s.proxy.limits.max_kept_complete_streams, 3);
        assert_eq!(s.proxy.limits.reconnect.max_attempts, 4);
        assert_eq!(s.proxy.limits.max_cached_sessions, 7);
        assert_eq!(s.proxy.limits.max_sessions, 9);
        assert_eq!(s.proxy.limits.max_session_creates_per_minute, 12);
        let mut a = args(Some("http://127.0.0.1:2/mcp"));
        a.max_session_creates_per_minute = Some(0);
        let s0 = ReverseSettings::resolve(a, FileConfig::default()).unwrap();
        assert_eq!(
            s0.proxy.limits.max_session_creates_per_minute, 0,
            "the flag; 0 turns the limit off"
        );
        assert_eq!(
            ReverseSettings::resolve(args(Some("http://127.0.0.1:2/mcp")), FileConfig::default())
                .unwrap()
                .proxy
                .limits
                .max_session_creates_per_minute,
            600,
            "the default"
        );
        assert_eq!(
            s.proxy.limits.session_revalidate_interval,
            Duration::from_millis(400),
            "the flag wins"
        );
        assert_eq!(
            s.proxy.limits.keepalive_interval,
            Duration::from_millis(250)
        );
        assert!(s.proxy.allowed_origins.allows(b"https://a.example"));
        assert_eq!(s.proxy.path, "/mcp");
        assert_eq!(
            s.admin_bind,
            AdminBind::At(DEFAULT_ADMIN_BIND.parse().unwrap())
        );
        assert_eq!(
            s.sweeper.max_idle,
            Duration::from_secs(DEFAULT_SESSION_IDLE_SECS)
        );
    }

    #[test]
    fn tls_from_file_and_flags() {
        let file: FileConfig = toml::from_str(
            r#"
            upstream = "https://mcp.example/mcp"
            upstream_ca = "/etc/ca.pem"
            upstream_client_cert = "/etc/client.pem"
            upstream_client_key = "/etc/client.key"
            tls_cert = "/etc/file-cert.pem"
            tls_key = "/etc/file-key.pem"
            [limits]
            tls_handshake_timeout_ms = 2500
            h2_max_concurrent_streams = 32
            tls_max_record_bytes = 1400
            "#,
        )
        .unwrap();
        let mut a = args(None);
        a.tls_cert = Some("/etc/flag-cert.pem".into());
        a.tls_key = Some("/etc/flag-key.pem".into());
        let s = ReverseSettings::resolve(a, file).unwrap();
        assert_eq!(s.proxy.upstream.scheme_str(), Some("https"));
        let up = &s.proxy.upstream_tls;
        assert_eq!(up.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(
            up.client_cert.as_deref(),
            Some(Path::new("/etc/client.pem"))
        );
        assert_eq!(up.client_key.as_deref(), Some(Path::new("/etc/client.key")));
        let tls = s.proxy.tls.unwrap();
        assert_eq!(
            tls.cert_file,
            Path::new("/etc/flag-cert.pem"),
            "the flag wins"
        );
        assert_eq!(tls.key_file, Path::new("/etc/flag-key.pem"));
        assert_eq!(
            s.proxy.limits.tls_handshake_timeout,
            Duration::from_millis(2500)
        );
        assert_eq!(s.proxy.limits.h2_max_concurrent_streams, 32);
        assert_eq!(s.proxy.limits.tls_max_record_bytes, 1400);
        let mut a = args(Some("http://127.0.0.1:2/mcp"));
        a.tls_cert = Some("/etc/cert.pem".into());
        let e = ReverseSettings::resolve(a, FileConfig::default()).unwrap_err();
        assert!(e.to_string().contains("--tls-key"), "{e}");
    }

    #[test]
    fn session_idle_timeout_from_file_and_flag() {
        let file: FileConfig = toml::from_str(
            r#"
            upstream = "http://127.0.0.1:1/mcp"
            session_idle_timeout_secs = 40
            "#,
        )
        .unwrap();
        let s = ReverseSettings::resolve(args(None), file).unwrap();
        assert_eq!(s.sweeper.max_idle, Duration::from_secs(40));
        assert_eq!(s.sweeper.interval, Duration::from_secs(10));
        assert_eq!(
            s.proxy.limits.session_idle_timeout,
            Duration::from_secs(40),
            "the cache drops idle sessions after the same time"
        );
        let mut a = args(Some("http://127.0.0.1:2/mcp"));
        a.session_idle_timeout_secs = Some(0);
        assert!(ReverseSettings::resolve(a, FileConfig::default()).is_err());
        let mut a = args(Some("http://127.0.0.1:2/mcp"));
        a.max_cached_sessions = Some(0);
        assert!(ReverseSettings::resolve(a, FileConfig::default()).is_err());
        let mut a = args(Some("http://127.0.0.1:2/mcp"));
        a.session_revalidate_interval_ms = Some(0);
        assert!(ReverseSettings::resolve(a, FileConfig::default()).is_err());
    }

    #[test]
    fn auth_from_file_and_flags() {
        let literal = "not-a-reference".to_owned();
        let path =
            std::env::temp_dir().join(format!("shadowcat-auth-secret-{}", std::process::id()));
        std::fs::write(&path, "cc-secret\n").unwrap();
        let file: FileConfig = toml::from_str(&format!(
            r#"
            upstream = "http://127.0.0.1:1/mcp"
            [auth]
            mode = "oauth"
            public_url = "https://mcp.example/mcp"
            issuer = "https://as.example"
            required_scopes = ["mcp"]
            introspection_cache_entries = 7
            [auth.scope_map]
            "tools/call:delete_*" = ["admin"]
            [auth.upstream]
            credential = "client_credentials"
            client_id = "proxy"
            client_secret = "file:{}"
            scope = "upstream"
            "#,
            path.display()
        ))
        .unwrap();
        let s = ReverseSettings::resolve(args(None), file).unwrap();
        std::fs::remove_file(&path).unwrap();
        let a = &s.proxy.auth;
        assert_eq!(a.mode, shadowcat_proxy::AuthMode::OAuth);
        assert_eq!(
            a.public_url.as_ref().unwrap().to_string(),
            "https://mcp.example/mcp"
        );
        assert_eq!(a.issuer.as_deref(), Some("https://as.example"));
        assert_eq!(a.required_scopes, ["mcp"]);
        assert_eq!(a.limits.introspection_cache_entries, 7);
        assert_eq!(
            a.scope_map,
            [("tools/call:delete_*".to_owned(), vec!["admin".to_owned()])]
        );
        let shadowcat_proxy::UpstreamCredential::ClientCredentials(c) = &a.upstream else {
            panic!("client credentials expected: {:?}", a.upstream);
        };
        assert_eq!(
            (c.client_id.as_str(), c.client_secret.as_str()),
            ("proxy", "cc-secret")
        );
        // Flags win; a literal secret is refused.
        let mut flags = args(Some("http://127.0.0.1:1/mcp"));
        flags.auth.mode = Some(crate::cli::AuthModeArg::Passthrough);
        flags.auth.public_url = Some("https://p.example/mcp".into());
        flags.auth.introspection_client_secret = Some(literal);
        assert!(ReverseSettings::resolve(flags.clone(), FileConfig::default()).is_err());
        flags.auth.introspection_client_secret = None;
        let s = ReverseSettings::resolve(flags, FileConfig::default()).unwrap();
        assert_eq!(s.proxy.auth.mode, shadowcat_proxy::AuthMode::Passthrough);
        let bad: FileConfig =
            toml::from_str("[auth]\nmode = \"oauth\"\n[auth.upstream]\ncredential = \"magic\"\n")
                .unwrap();
        let mut up = args(Some("http://127.0.0.1:1/mcp"));
        up.upstream = Some("http://127.0.0.1:1/mcp".into());
        assert!(ReverseSettings::resolve(up, bad).is_err());
        assert!(toml::from_str::<FileConfig>("[auth]\nmood = \"oauth\"\n").is_err());
    }

    #[test]
    fn upstream_cmd_from_flags_and_file() {
        let file: FileConfig = toml::from_str(
            r#"
            upstream_cmd = ["node", "server.js"]
            upstream_env = { A = "1" }
            upstream_cwd = "/tmp"
            [limits]
            max_children = 3
            "#,
        )
        .unwrap();
        let s = ReverseSettings::resolve(args(None), file).unwrap();
        let up = s.proxy.upstream_cmd.unwrap();
        assert_eq!(up.command.program, "node");
        assert_eq!(up.command.args, ["server.js"]);
        assert_eq!(up.command.env, [("A".into(), "1".into())]);
        assert_eq!(up.max_children, 3);
        let mut a = args(None);
        a.upstream_cmd = true;
        a.program = vec!["prog".into(), "x".into()];
        let s = ReverseSettings::resolve(a, FileConfig::default()).unwrap();
        assert_eq!(s.proxy.upstream_cmd.unwrap().label(), "stdio:prog x");
        let mut a = args(None);
        a.upstream_cmd = true;
        assert!(ReverseSettings::resolve(a, FileConfig::default()).is_err());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(toml::from_str::<FileConfig>("upstrem = \"x\"").is_err());
        assert!(toml::from_str::<FileConfig>("[limits]\nmax_body = 1").is_err());
        let e = ReverseSettings::resolve(args(None), FileConfig::default()).unwrap_err();
        assert!(e.to_string().contains("--upstream"), "{e}");
        let e =
            ReverseSettings::resolve(args(Some("ftp://x/mcp")), FileConfig::default()).unwrap_err();
        assert!(e.to_string().contains("http://"), "{e}");
    }

    #[test]
    fn secrets_come_from_the_environment_or_a_file_only() {
        assert!(read_secret("hunter2", "--x").is_err());
        assert!(read_secret("env:SHADOWCAT_TEST_SURELY_UNSET_VAR", "--x").is_err());
        let path = std::env::temp_dir().join(format!("shadowcat-secret-{}", std::process::id()));
        std::fs::write(&path, "tok\n").unwrap();
        assert_eq!(
            read_secret(&format!("file:{}", path.display()), "--x").unwrap(),
            "tok"
        );
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn cluster_settings_from_the_file_and_flags() {
        let file: FileConfig = toml::from_str(
            "[cluster]\nreplay_log = false\ninstance_id = \"east-1\"\nlease_ttl_ms = 1500\nreplay_log_max_len = 99\nreplay_log_wait_ms = 250\n",
        )
        .unwrap();
        let c = ClusterSettings::resolve(&args(None), &file.cluster).unwrap();
        assert_eq!(c.replay_log, Some(false));
        assert_eq!(c.instance_id, "east-1");
        assert_eq!(c.lease_ttl, Duration::from_millis(1500));
        assert_eq!(c.retention.max_len, 99);
        assert_eq!(c.wait, Duration::from_millis(250));
        let mut a = args(None);
        a.replay_log = Some("on".into());
        a.instance_id = Some("flag".into());
        let c = ClusterSettings::resolve(&a, &file.cluster).unwrap();
        assert_eq!((c.replay_log, c.instance_id.as_str()), (Some(true), "flag"));
        a.instance_id = Some("a|b".into());
        assert!(
            ClusterSettings::resolve(&a, &file.cluster).is_err(),
            "'|' is refused"
        );
        let zero: FileConfig = toml::from_str("[cluster]\nlease_ttl_ms = 0\n").unwrap();
        assert!(ClusterSettings::resolve(&args(None), &zero.cluster).is_err());
        let c = ClusterSettings::resolve(&args(None), &FileCluster::default()).unwrap();
        assert_eq!(
            c.replay_log, None,
            "on with a redis store, decided at start"
        );
        assert!(c.instance_id.starts_with("shadowcat-"));
    }
}
