//! Shared helpers for Shadowcat's criterion benchmarks and bench gates.
//!
//! The gates (`tests/gates.rs`) check deterministic quantities only:
//! allocations per event, bytes per stream or session, tasks per event and
//! store writes per event. Timings belong in criterion reports.
#![forbid(unsafe_code)]

/// Realistic MCP payloads for codec benchmarks: a progress notification, a
/// tools/list result and a tools/call result, as JSON-RPC text.
pub mod payloads {
    /// A `notifications/progress` message as an MCP server sends it.
    pub const PROGRESS: &str = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"tok-17","progress":42,"total":100,"message":"indexing files"}}"#;
}

pub mod hostile;
pub mod tls;
