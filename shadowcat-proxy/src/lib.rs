//! Shadowcat's proxies: they wire `shadowcat-transport` (SSE, event ids) to
//! `shadowcat-session` (persistence) through traits only.
//!
//! [`ReverseProxy`] serves MCP Streamable HTTP (revisions 2025-03-26,
//! 2025-06-18, 2025-11-25 and the stateless 2026-07-28) in front of one
//! upstream MCP server over HTTP.
#![forbid(unsafe_code)]

pub mod body;
pub mod config;
#[cfg(test)]
mod engine_tests;
pub mod error;
pub mod event_id;
pub mod forward;
pub mod forward_http;
pub mod jsonrpc;
mod linger;
pub mod protocol;
mod queue;
pub mod replay;
pub mod reverse;
mod sessions;
mod sink;
mod siphash;
pub mod stdio_upstream;
mod stream;
mod upstream_conn;

#[cfg(feature = "test-util")]
pub mod test_util;

pub use config::{Limits, OriginPolicy, ReverseProxyConfig};
pub use error::{ProxyError, Rejection};
pub use event_id::{ClientEventId, IdError};
pub use protocol::ProtocolVersion;
pub use replay::{ReplayBuffer, ReplayLimits};
pub use reverse::{ReverseProxy, ServeReport};
pub use stdio_upstream::StdioUpstream;
