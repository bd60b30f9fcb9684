//! The binary's errors: each prints as one line a person can act on.

use std::net::SocketAddr;

use shadowcat_proxy::ProxyError;
use shadowcat_session::StoreError;

/// Why `shadowcat` could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// A flag, variable or config file value is wrong.
    #[error("{0}")]
    Config(String),
    /// The store could not be opened or used.
    #[error("store {spec}: {source}")]
    Store {
        /// The store spec as given.
        spec: String,
        /// What went wrong.
        source: StoreError,
    },
    /// The proxy could not start.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// The admin listener could not start.
    #[error("cannot listen on {addr} (admin): {source}")]
    Admin {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Anything else from the OS.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
