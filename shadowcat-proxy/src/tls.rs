//! TLS, both ways, built in one place: the client config toward an https
//! upstream (system roots plus `--upstream-ca`, an optional client
//! certificate, SNI and hostname verification always on) and the
//! listener's server config (ALPN `h2` and `http/1.1`), whose certificate
//! and key are read again on reload.
//!
//! The crypto provider is *ring*, passed to each config (no process-wide
//! default is installed). Handshake failures are turned into a reason a
//! person can act on ([`reason`]): unknown issuer, expired, name mismatch,
//! client certificate required.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// TLS toward an https upstream. Every field is optional: by default the
/// system's trust roots verify the upstream and no client certificate is
/// sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamTlsConfig {
    /// A PEM bundle of CA certificates trusted besides the system roots
    /// (`--upstream-ca`), for private CAs.
    pub ca_file: Option<PathBuf>,
    /// A PEM certificate chain sent to the upstream (mTLS,
    /// `--upstream-client-cert`); needs `client_key`.
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of `client_cert` (`--upstream-client-key`).
    pub client_key: Option<PathBuf>,
}

/// The TLS listener's certificate chain and key (PEM files), read at
/// start and again on every reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTlsConfig {
    /// The certificate chain, leaf first (`--tls-cert`).
    pub cert_file: PathBuf,
    /// The private key (`--tls-key`): PKCS#8, PKCS#1 or SEC1.
    pub key_file: PathBuf,
}

/// Why a TLS configuration could not be built, or a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read the {what} {path}: {source}")]
    Read {
        /// What the file is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item.
    #[error("the {what} {path} holds no {item}")]
    Empty {
        /// What the file is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What was looked for.
        item: &'static str,
    },
    /// rustls refused the certificates or key.
    #[error("the {what} is not usable: {source}")]
    Rejected {
        /// What was being set up.
        what: &'static str,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// A client certificate without its key, or the reverse.
    #[error("--upstream-client-cert and --upstream-client-key go together")]
    ClientPair,
    /// Nothing to verify an upstream with.
    #[error("no trust roots: the system has no CA certificates and no --upstream-ca was given")]
    NoRoots,
    /// The TLS handshake with the upstream failed.
    #[error("TLS with the upstream {host} failed: {reason}")]
    Handshake {
        /// The upstream's host name.
        host: String,
        /// Why, in words (unknown issuer, expired, name mismatch, …).
        reason: String,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let bytes = std::fs::read(path).map_err(read)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
            item: "PEM certificate",
        });
    }
    Ok(certs)
}

fn read_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| TlsError::Empty {
        what,
        path: path.to_owned(),
        item: "PEM private key (PKCS#8, PKCS#1 or SEC1)",
    })
}

/// The client config for an https upstream: the system's roots plus
/// `ca_file`'s, the client certificate when given, ALPN `http/1.1` (the
/// upstream pool speaks HTTP/1.1).
pub(crate) fn client_config(tls: &UpstreamTlsConfig) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "a system trust root could not be loaded");
    }
    let (_, unusable) = roots.add_parsable_certificates(native.certs);
    if unusable > 0 {
        tracing::debug!(unusable, "system trust roots skipped");
    }
    if let Some(path) = &tls.ca_file {
        for cert in read_certs("upstream CA bundle", path)? {
            roots.add(cert).map_err(|source| TlsError::Rejected {
                what: "upstream CA bundle",
                source,
            })?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rejected {
            what: "TLS client setup",
            source,
        })?
        .with_root_certificates(roots);
    let mut config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(
                read_certs("upstream client certificate", cert)?,
                read_key("upstream client key", key)?,
            )
            .map_err(|source| TlsError::Rejected {
                what: "upstream client certificate and key",
                source,
            })?,
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsError::ClientPair),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What the upstream pool needs to speak TLS to one host.
#[derive(Clone)]
pub(crate) struct UpstreamTls {
    pub(crate) connector: TlsConnector,
    pub(crate) name: ServerName<'static>,
    /// The host as written in the URL, for errors.
    pub(crate) host: String,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// TLS toward `uri`'s host when it is `https`; `None` for `http`.
    pub(crate) fn for_uri(
        uri: &http::Uri,
        tls: &UpstreamTlsConfig,
    ) -> Result<Option<Self>, TlsError> {
        if uri.scheme_str() != Some("https") {
            return Ok(None);
        }
        let host = uri.host().unwrap_or_default();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(bare.to_owned()).map_err(|_| TlsError::Handshake {
            host: host.to_owned(),
            reason: "not a valid host name for TLS".into(),
        })?;
        Ok(Some(UpstreamTls {
            connector: TlsConnector::from(client_config(tls)?),
            name,
            host: host.to_owned(),
        }))
    }
}

/// The reason a handshake or TLS read failed, in words; `None` when `e`
/// holds no TLS error.
pub(crate) fn reason(e: &(dyn std::error::Error + 'static), host: &str) -> Option<String> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(describe(r, host));
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(r) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(describe(r, host));
        }
        next = err.source();
    }
    None
}

fn describe(e: &rustls::Error, host: &str) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer => format!(
                "unknown issuer: its certificate is not signed by a trusted CA (add the CA with --upstream-ca) ({e})"
            ),
            C::Expired | C::ExpiredContext { .. } => format!("expired certificate ({e})"),
            C::NotValidYet | C::NotValidYetContext { .. } => {
                format!("certificate not valid yet ({e})")
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                format!("name mismatch: its certificate is not valid for {host} ({e})")
            }
            C::Revoked => format!("revoked certificate ({e})"),
            _ => format!("bad certificate ({e})"),
        },
        E::AlertReceived(A::CertificateRequired) => "the upstream requires a client certificate (give --upstream-client-cert and --upstream-client-key)".into(),
        E::AlertReceived(a @ (A::BadCertificate | A::UnknownCA | A::CertificateUnknown | A::CertificateExpired | A::AccessDenied)) => {
            format!("the upstream refused our client certificate ({a:?})")
        }
        other => other.to_string(),
    }
}

/// The TLS listener's acceptor, swapped whole on reload: handshakes
/// started after a reload use the new certificate, open connections keep
/// theirs.
pub(crate) struct ListenerTls {
    /// Largest plaintext per TLS record.
    max_record: usize,
    files: RwLock<ListenerTlsConfig>,
    current: RwLock<(TlsAcceptor, Vec<u8>)>,
}

impl std::fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTls")
            .field("files", &*self.files.read())
            .finish_non_exhaustive()
    }
}

fn server_config(
    files: &ListenerTlsConfig,
    max_record: usize,
) -> Result<(TlsAcceptor, Vec<u8>), TlsError> {
    let certs = read_certs("TLS certificate", &files.cert_file)?;
    let leaf = certs[0].as_ref().to_vec();
    let key = read_key("TLS key", &files.key_file)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rejected {
            what: "TLS server setup",
            source,
        })?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::Rejected {
            what: "TLS certificate and key",
            source,
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Small records: a client decrypts (and sees) each event as it comes,
    // not once 16 KiB of a replay burst arrived.
    config.max_fragment_size = Some(max_record);
    Ok((TlsAcceptor::from(Arc::new(config)), leaf))
}

impl ListenerTls {
    /// Reads the certificate and key; records carry at most `max_record`
    /// bytes of plaintext.
    pub(crate) fn load(files: &ListenerTlsConfig, max_record: usize) -> Result<Self, TlsError> {
        Ok(ListenerTls {
            current: RwLock::new(server_config(files, max_record)?),
            files: RwLock::new(files.clone()),
            max_record,
        })
    }

    /// The acceptor for the next handshake.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.current.read().0.clone()
    }

    /// Reads `files` again. On success new handshakes use them and the
    /// answer tells whether the certificate changed; on failure the old
    /// certificate stays and the error is logged and counted.
    pub(crate) fn reload(&self, files: &ListenerTlsConfig) -> Result<bool, TlsError> {
        match server_config(files, self.max_record) {
            Ok((acceptor, leaf)) => {
                let mut current = self.current.write();
                let changed = current.1 != leaf || *self.files.read() != *files;
                *current = (acceptor, leaf);
                drop(current);
                *self.files.write() = files.clone();
                metrics::counter!("shadowcat_tls_reloads_total", "result" => "ok").increment(1);
                Ok(changed)
            }
            Err(e) => {
                metrics::counter!("shadowcat_tls_reloads_total", "result" => "error").increment(1);
                tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays in use");
                Err(e)
            }
        }
    }
}
