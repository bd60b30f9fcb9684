//! The command line: `shadowcat reverse …`, `shadowcat forward stdio …` and
//! `shadowcat sessions …`.
//! Every flag can also come from a `SHADOWCAT_*` environment variable.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// An MCP proxy whose streams survive drops and restarts.
#[derive(Debug, Parser)]
#[command(
    name = "shadowcat",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("SHADOWCAT_COMMIT"), ")")
)]
pub(crate) struct Cli {
    /// Log format; `RUST_LOG` sets the level (default `info`).
    #[arg(long, global = true, env = "SHADOWCAT_LOG_FORMAT", value_enum)]
    pub(crate) log_format: Option<LogFormat>,
    /// A TOML config file; flags and SHADOWCAT_* variables override it.
    #[arg(long, global = true, env = "SHADOWCAT_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Where sessions live: `file:PATH` (embedded, the default:
    /// `file:shadowcat.redb` in the working directory), `memory`, or
    /// `redis://HOST:PORT/DB`.
    #[arg(long, global = true, env = "SHADOWCAT_STORE")]
    pub(crate) store: Option<String>,
    /// Most threads the runtime keeps for blocking work (embedded store
    /// calls, stdio): beyond it such calls queue instead of each holding
    /// a thread and its stack [default: 16].
    #[arg(long, global = true, env = "SHADOWCAT_MAX_BLOCKING_THREADS")]
    pub(crate) max_blocking_threads: Option<usize>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Serve MCP Streamable HTTP and proxy it to an upstream MCP server.
    Reverse(Box<ReverseArgs>),
    /// Forward proxies for clients that launch their server as a program.
    Forward {
        #[command(subcommand)]
        command: ForwardCommand,
    },
    /// Inspect and end sessions: through the running proxy's admin API,
    /// or in the store when no proxy answers.
    Sessions(SessionsArgs),
    /// Print a shell completion script, e.g.
    /// `shadowcat completions bash > /etc/bash_completion.d/shadowcat`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), as `cargo xtask man` writes it.
    #[command(hide = true)]
    Man,
}

/// `shadowcat reverse` flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ReverseArgs {
    /// The upstream MCP endpoint, e.g. http://127.0.0.1:3001/mcp.
    #[arg(long, env = "SHADOWCAT_UPSTREAM")]
    pub(crate) upstream: Option<String>,
    /// Listen address [default: 127.0.0.1:8080].
    #[arg(long, env = "SHADOWCAT_BIND")]
    pub(crate) bind: Option<SocketAddr>,
    /// The MCP endpoint path [default: /mcp].
    #[arg(long, env = "SHADOWCAT_PATH")]
    pub(crate) path: Option<String>,
    /// How to reach the HTTP upstream: `auto` (Streamable HTTP, or legacy
    /// HTTP+SSE when its initialize gets 400/404/405 and a GET of the same
    /// URL opens a legacy stream), `streamable-http` or `sse` [default:
    /// auto].
    #[arg(long, env = "SHADOWCAT_UPSTREAM_TRANSPORT")]
    pub(crate) upstream_transport: Option<String>,
    /// Where legacy HTTP+SSE (2024-11-05) clients open their stream, or
    /// `off` [default: /sse].
    #[arg(long, env = "SHADOWCAT_LEGACY_SSE_PATH")]
    pub(crate) legacy_sse_path: Option<String>,
    /// Where legacy HTTP+SSE clients POST their messages [default:
    /// /messages].
    #[arg(long, env = "SHADOWCAT_LEGACY_MESSAGES_PATH")]
    pub(crate) legacy_messages_path: Option<String>,
    /// Admin listener (/healthz, /readyz, /metrics and the admin API), or
    /// `off` [default: 127.0.0.1:9090].
    #[arg(long, env = "SHADOWCAT_ADMIN_BIND")]
    pub(crate) admin_bind: Option<String>,
    /// The admin API's bearer token: `env:VAR` or `file:PATH`. Required
    /// when the admin listener is not on loopback.
    #[arg(long, env = "SHADOWCAT_ADMIN_TOKEN")]
    pub(crate) admin_token: Option<String>,
    /// Write one line per request to stdout, as text or JSON [default:
    /// off].
    #[arg(long, env = "SHADOWCAT_ACCESS_LOG", value_enum)]
    pub(crate) access_log: Option<LogFormat>,
    /// Credentials for the upstream: `env:VAR` or `file:PATH` holding a
    /// bearer token. Client credentials are never forwarded.
    #[arg(long, env = "SHADOWCAT_UPSTREAM_BEARER")]
    pub(crate) upstream_bearer: Option<String>,
    /// A PEM bundle of CA certificates to trust for an https upstream,
    /// besides the system's roots.
    #[arg(long, env = "SHADOWCAT_UPSTREAM_CA")]
    pub(crate) upstream_ca: Option<PathBuf>,
    /// A PEM client certificate (chain) for an https upstream that wants
    /// one (mTLS); with --upstream-client-key.
    #[arg(long, env = "SHADOWCAT_UPSTREAM_CLIENT_CERT")]
    pub(crate) upstream_client_cert: Option<PathBuf>,
    /// The PEM private key of --upstream-client-cert.
    #[arg(long, env = "SHADOWCAT_UPSTREAM_CLIENT_KEY")]
    pub(crate) upstream_client_key: Option<PathBuf>,
    /// Serve clients over TLS with this PEM certificate chain (HTTP/2 and
    /// HTTP/1.1 by ALPN); with --tls-key. Read again on SIGHUP.
    #[arg(long, env = "SHADOWCAT_TLS_CERT")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "SHADOWCAT_TLS_KEY")]
    pub(crate) tls_key: Option<PathBuf>,
    /// A browser Origin to allow (repeatable; `*` allows any). Default:
    /// loopback origins only.
    #[arg(
        long = "allowed-origin",
        env = "SHADOWCAT_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub(crate) allowed_origins: Vec<String>,
    /// A host name (no port) the `Host` header may name besides
    /// localhost, 127.0.0.1, [::1] and the bound address (repeatable).
    /// `Host` is checked when listening on loopback, elsewhere only when
    /// a name is given (DNS-rebinding defence); a mismatch gets 403.
    #[arg(
        long = "allowed-host",
        env = "SHADOWCAT_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub(crate) allowed_hosts: Vec<String>,
    /// Most client connections open at once; more are answered 503 and
    /// closed [default: 4096].
    #[arg(long, env = "SHADOWCAT_MAX_CONNECTIONS")]
    pub(crate) max_connections: Option<usize>,
    /// Seconds in-flight requests get to finish on shutdown [default: 10].
    #[arg(long, env = "SHADOWCAT_DRAIN_TIMEOUT_SECS")]
    pub(crate) drain_timeout_secs: Option<u64>,
    /// Seconds a session may stay unused before it is removed from the
    /// store and from memory [default: 1800].
    #[arg(long, env = "SHADOWCAT_SESSION_IDLE_TIMEOUT_SECS")]
    pub(crate) session_idle_timeout_secs: Option<u64>,
    /// Serve the stdio MCP server given after `--` (one child per session)
    /// instead of an HTTP upstream.
    #[arg(long = "upstream-cmd", conflicts_with = "upstream")]
    pub(crate) upstream_cmd: bool,
    /// With a redis store, share every stream through a replay log on
    /// Redis so any instance serves any resume (no sticky sessions):
    /// `on` or `off` [default: on with a redis store].
    #[arg(long, env = "SHADOWCAT_REPLAY_LOG", value_parser = ["on", "off"])]
    pub(crate) replay_log: Option<String>,
    /// This instance's name in stream leases [default:
    /// shadowcat-{pid}-{random}].
    #[arg(long, env = "SHADOWCAT_INSTANCE_ID")]
    pub(crate) instance_id: Option<String>,
    /// Most stdio servers (sessions) at once with --upstream-cmd
    /// [default: 64].
    #[arg(long, env = "SHADOWCAT_MAX_CHILDREN")]
    pub(crate) max_children: Option<usize>,
    /// Most sessions kept in this instance's memory (the store keeps them
    /// all); past it the least recently used one with no open stream goes
    /// and is read from the store on its next request [default: 10000].
    #[arg(long, env = "SHADOWCAT_MAX_CACHED_SESSIONS")]
    pub(crate) max_cached_sessions: Option<usize>,
    /// Milliseconds a cached session is used before the store is asked
    /// again whether it still exists: a session expired or deleted (on any
    /// instance) gets 404, and its open streams here end, within this time
    /// [default: 2000].
    #[arg(long, env = "SHADOWCAT_SESSION_REVALIDATE_INTERVAL_MS")]
    pub(crate) session_revalidate_interval_ms: Option<u64>,
    /// Most sessions one client address (IPv6: /64) may create per minute;
    /// beyond it an initialize gets 429 with Retry-After. 0: no limit
    /// [default: 600].
    #[arg(long, env = "SHADOWCAT_MAX_SESSION_CREATES_PER_MINUTE")]
    pub(crate) max_session_creates_per_minute: Option<u32>,
    /// OAuth in front of the upstream (`[auth]` in the config file).
    #[command(flatten)]
    pub(crate) auth: AuthArgs,
    /// The stdio server and its arguments, after `--` (with
    /// --upstream-cmd).
    #[arg(last = true, value_name = "PROGRAM")]
    pub(crate) program: Vec<OsString>,
}

/// `[auth]` flags of `shadowcat reverse`.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct AuthArgs {
    /// `none`; `passthrough` (the upstream does its own OAuth: the
    /// client's Authorization goes upstream, sessions are bound to it);
    /// `oauth` (Shadowcat checks tokens and never forwards them)
    /// [default: none].
    #[arg(long = "auth-mode", env = "SHADOWCAT_AUTH_MODE", value_enum)]
    pub(crate) mode: Option<AuthModeArg>,
    /// The URL clients use for the MCP endpoint, e.g.
    /// https://mcp.example.com/mcp (passthrough and oauth).
    #[arg(long = "public-url", env = "SHADOWCAT_PUBLIC_URL")]
    pub(crate) public_url: Option<String>,
    /// The authorization server's issuer (oauth); its metadata and keys
    /// are discovered from it.
    #[arg(long = "auth-issuer", env = "SHADOWCAT_AUTH_ISSUER")]
    pub(crate) issuer: Option<String>,
    /// The audience tokens must name (RFC 8707) [default: --public-url].
    #[arg(long = "auth-audience", env = "SHADOWCAT_AUTH_AUDIENCE")]
    pub(crate) audience: Option<String>,
    /// A scope every request needs (repeatable).
    #[arg(
        long = "auth-required-scope",
        env = "SHADOWCAT_AUTH_REQUIRED_SCOPES",
        value_delimiter = ','
    )]
    pub(crate) required_scopes: Vec<String>,
    /// Client id for introspecting tokens that are not JWTs (RFC 7662).
    #[arg(
        long = "auth-introspection-client-id",
        env = "SHADOWCAT_AUTH_INTROSPECTION_CLIENT_ID"
    )]
    pub(crate) introspection_client_id: Option<String>,
    /// Its secret: `env:VAR` or `file:PATH`.
    #[arg(
        long = "auth-introspection-client-secret",
        env = "SHADOWCAT_AUTH_INTROSPECTION_CLIENT_SECRET"
    )]
    pub(crate) introspection_client_secret: Option<String>,
}

/// `--auth-mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum AuthModeArg {
    /// No auth.
    None,
    /// The upstream does its own OAuth.
    Passthrough,
    /// Shadowcat is the OAuth resource server.
    Oauth,
}

/// `shadowcat forward` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ForwardCommand {
    /// Speak stdio to the client and run `-- <program> [args…]` as the
    /// server, relaying messages both ways unchanged (`RUST_LOG=debug`
    /// logs each one; exits with the program's exit code), or, with
    /// `--upstream URL`, speak Streamable HTTP to a remote server with
    /// stream resumption.
    Stdio(ForwardStdioArgs),
}

/// `shadowcat forward stdio` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct ForwardStdioArgs {
    /// The longest message (line) accepted from either side, in bytes
    /// [default: 8 MiB].
    #[arg(long, env = "SHADOWCAT_MAX_LINE_BYTES")]
    pub(crate) max_line_bytes: Option<usize>,
    /// Seconds the program may take to exit once the client has closed
    /// stdin, before it is stopped (SIGTERM, then SIGKILL) [default: 5].
    #[arg(long, env = "SHADOWCAT_EXIT_GRACE_SECS")]
    pub(crate) exit_grace_secs: Option<u64>,
    /// A Streamable HTTP MCP server to forward to instead of a program.
    #[arg(long, env = "SHADOWCAT_UPSTREAM", conflicts_with = "program")]
    pub(crate) upstream: Option<String>,
    /// Credentials for --upstream: `env:VAR` or `file:PATH` holding a
    /// bearer token.
    #[arg(long, env = "SHADOWCAT_UPSTREAM_BEARER", requires = "upstream")]
    pub(crate) upstream_bearer: Option<String>,
    /// A PEM bundle of CA certificates to trust for an https --upstream,
    /// besides the system's roots.
    #[arg(long, env = "SHADOWCAT_UPSTREAM_CA", requires = "upstream")]
    pub(crate) upstream_ca: Option<PathBuf>,
    /// A PEM client certificate (chain) for an https --upstream (mTLS);
    /// with --upstream-client-key.
    #[arg(long, env = "SHADOWCAT_UPSTREAM_CLIENT_CERT", requires = "upstream")]
    pub(crate) upstream_client_cert: Option<PathBuf>,
    /// The PEM private key of --upstream-client-cert.
    #[arg(long, env = "SHADOWCAT_UPSTREAM_CLIENT_KEY", requires = "upstream")]
    pub(crate) upstream_client_key: Option<PathBuf>,
    /// The stdio MCP server to run, after `--`.
    #[arg(
        last = true,
        required_unless_present = "upstream",
        num_args = 1..,
        value_name = "PROGRAM"
    )]
    pub(crate) program: Vec<OsString>,
}

/// `shadowcat sessions` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct SessionsArgs {
    /// The running proxy's admin API, e.g. http://127.0.0.1:9090
    /// [default: from --admin-bind, as for `reverse`].
    #[arg(long, global = true, env = "SHADOWCAT_ADMIN")]
    pub(crate) admin: Option<String>,
    /// The proxy's admin listener, as given to `reverse` (HOST:PORT).
    #[arg(long, global = true, env = "SHADOWCAT_ADMIN_BIND")]
    pub(crate) admin_bind: Option<String>,
    /// The admin API's bearer token: `env:VAR` or `file:PATH`.
    #[arg(long, global = true, env = "SHADOWCAT_ADMIN_TOKEN")]
    pub(crate) admin_token: Option<String>,
    /// Print JSON (for scripts) instead of a table.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: SessionsCommand,
}

/// `shadowcat sessions` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum SessionsCommand {
    /// List sessions, ascending by id.
    List {
        /// Most sessions to print.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Only sessions unused for at least this many seconds.
        #[arg(long)]
        min_idle_secs: Option<u64>,
        /// Only sessions whose upstream contains this text.
        #[arg(long)]
        upstream: Option<String>,
    },
    /// Print one session with its streams.
    Show {
        /// The session id (what the client holds as Mcp-Session-Id).
        id: String,
    },
    /// End one session: upstream, in the store and on every instance (the
    /// client will have to initialize again).
    Delete {
        /// The session id.
        id: String,
    },
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}
