//! Toward the MCP server: HTTP/1 connections driven by their readers
//! ([`http`]), or a stdio child per session ([`stdio`]) whose messages reach
//! each stream through a bounded queue ([`queue`]).

pub(crate) mod http;
pub(crate) mod legacy;
pub(crate) mod queue;
pub(crate) mod stdio;
