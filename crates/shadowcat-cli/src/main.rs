//! The `shadowcat` binary. The proxy commands arrive with the reverse-proxy
//! work; until then it only names itself.
#![forbid(unsafe_code)]

fn main() {
    eprintln!("shadowcat {}: no commands yet", env!("CARGO_PKG_VERSION"));
    std::process::exit(2);
}
