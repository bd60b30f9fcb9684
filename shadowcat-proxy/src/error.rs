//! [`ProxyError`]: why the proxy could not start or keep serving.

use std::net::SocketAddr;

/// Why the proxy could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The listen address could not be bound (taken, not local, no
    /// permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The upstream URL is not usable.
    #[error("bad upstream URL {url:?}: {reason}")]
    UpstreamUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A configuration value is not usable.
    #[error("bad configuration: {0}")]
    Config(String),
    /// A TLS setting is not usable (a file, a certificate, a key), or the
    /// upstream's certificate did not verify at start.
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    /// Accepting connections failed for good.
    #[error("accepting connections failed: {0}")]
    Accept(std::io::Error),
}
