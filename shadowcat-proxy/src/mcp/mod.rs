//! What the proxy knows of MCP itself: its HTTP headers, just enough
//! JSON-RPC ([`jsonrpc`]) and the protocol revisions ([`protocol`]).

use http::header::{self, HeaderMap, HeaderName};

pub mod jsonrpc;
pub(crate) mod protocol;

/// `Mcp-Session-Id`.
pub(crate) const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
/// `MCP-Protocol-Version`.
pub(crate) const MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
/// `Last-Event-ID`.
pub(crate) const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
/// `Mcp-Method` (2026-07-28).
pub(crate) const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
/// `Mcp-Name` (2026-07-28).
pub(crate) const MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");
/// `X-Accel-Buffering`: `no` tells buffering proxies in front to stream.
pub(crate) const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// True when the response is an SSE stream.
pub(crate) fn is_sse(headers: &HeaderMap) -> bool {
    media_type_is(headers, &header::CONTENT_TYPE, "text/event-stream")
}

pub(crate) fn media_type_is(headers: &HeaderMap, name: &HeaderName, want: &str) -> bool {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(want))
}
