//! `tls-certs DIR`: writes a test CA (`ca.pem`) and a server certificate
//! for localhost and 127.0.0.1 (`server.pem`, `server.key`) into DIR, for
//! the interop suite's TLS scenarios.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: tls-certs DIR");
        return ExitCode::from(2);
    };
    match benches::tls::write_certs(std::path::Path::new(&dir)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tls-certs: {e}");
            ExitCode::FAILURE
        }
    }
}
