//! Test certificates for the interop suite and the load harness's TLS row,
//! made with rcgen: a CA and a server certificate for `localhost` and
//! `127.0.0.1`, written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The files [`write_certs`] wrote.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The CA certificate (trust it to reach the server).
    pub ca: PathBuf,
    /// The server certificate, for `localhost` and `127.0.0.1`.
    pub cert: PathBuf,
    /// Its private key (PKCS#8).
    pub key: PathBuf,
}

/// Writes `ca.pem`, `server.pem` and `server.key` into `dir` (created if
/// missing).
pub fn write_certs(dir: &Path) -> Result<CertFiles, String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    std::fs::create_dir_all(dir).map_err(|e| fail(&dir.display().to_string(), &e))?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|e| fail("CA", &e))?;
    ca.distinguished_name
        .push(DnType::CommonName, "shadowcat test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(|e| fail("CA key", &e))?;
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| fail("CA", &e))?;
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .map_err(|e| fail("server", &e))?;
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().map_err(|e| fail("server key", &e))?;
    let cert = leaf
        .signed_by(&key, &issuer)
        .map_err(|e| fail("server", &e))?;
    let files = CertFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    for (path, text) in [
        (&files.ca, ca_cert.pem()),
        (&files.cert, cert.pem()),
        (&files.key, key.serialize_pem()),
    ] {
        std::fs::write(path, text).map_err(|e| fail(&path.display().to_string(), &e))?;
    }
    Ok(files)
}
