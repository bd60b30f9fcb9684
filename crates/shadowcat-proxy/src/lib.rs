//! Shadowcat's proxies: they wire `shadowcat-transport` (SSE, event ids) to
//! `shadowcat-session` (persistence) through traits only.
#![forbid(unsafe_code)]
