//! Forward proxies for clients that can only launch a stdio server: to a
//! stdio program ([`relay_stdio`]) or to a Streamable HTTP server with
//! resumption ([`relay_http`]).

mod http;
mod stdio;

pub use http::{HttpForwardConfig, HttpForwardError, HttpRelayReport, relay_http};
pub use stdio::{
    ChildCommand, ForwardError, RelayEnd, RelayReport, StdioConfig, StdioForwardConfig, relay_stdio,
};
