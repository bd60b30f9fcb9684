//! Shadowcat's proxies: they wire `shadowcat-transport` (SSE, event ids) to
//! `shadowcat-session` (persistence) through traits only.
//!
//! [`ReverseProxy`] serves MCP Streamable HTTP (revisions 2025-03-26,
//! 2025-06-18, 2025-11-25 and the stateless 2026-07-28) in front of one
//! upstream MCP server over HTTP.
#![forbid(unsafe_code)]
//!
//! Modules, by what they are about:
//! - `auth`: OAuth in front of the proxy (passthrough or resource server).
//! - `mcp`: MCP's headers, JSON-RPC, protocol revisions.
//! - `event_id`: the sealed client event ids.
//! - `collect`: reading a whole body, bounded in bytes and time.
//! - `stream`: the stream engine (replay, reader, sources, linger).
//! - `upstream`: toward the server (pooled HTTP/1, stdio children).
//! - `session`: sessions (store plus a bounded, revalidated cache) and the
//!   one adapter to the session crate's writer.
//! - `server`: the reverse proxy's HTTP server and its handlers.
//! - `tls`: TLS toward https upstreams and on the listener.
//! - [`admin`]: the operator's view of a running proxy (sessions, streams,
//!   readiness), served by the CLI's admin listener.
//! - [`forward`]: the forward proxies.

mod auth;
mod collect;
mod config;
mod error;
mod event_id;
pub mod forward;
mod mcp;
mod server;
mod session;
mod stream;
mod tls;
mod upstream;

#[cfg(feature = "test-util")]
pub mod test_util;

/// The operator's view of a running proxy: [`admin::Admin`] and the JSON
/// schema of the admin API.
pub mod admin {
    pub use crate::server::admin::*;
}

pub use config::{
    AuthConfig, AuthLimits, AuthMode, Limits, OriginPolicy, ReverseProxyConfig, TokenClient,
    UpstreamCredential, UpstreamTransport,
};
pub use error::ProxyError;
pub use event_id::{ClientEventId, IdError};
pub use mcp::jsonrpc;
pub use mcp::protocol::ProtocolVersion;
pub use server::access::{AccessLog, AccessRecord};
pub use server::{ReverseProxy, ServeReport};
pub use stream::cluster::ClusterConfig;
pub use stream::replay::ReplayLimits;
pub use tls::{ListenerTlsConfig, TlsError, UpstreamTlsConfig};
pub use upstream::http::check_upstream;
pub use upstream::stdio::StdioUpstream;
