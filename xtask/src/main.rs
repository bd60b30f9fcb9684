//! `cargo xtask`: the project's own automation. `cargo xtask ci` is the one
//! test command (README, `.ci/run`): fmt, clippy, all tests, tidy checks,
//! interop, the cluster chaos test and the deterministic bench gates. Tidy
//! checks live in `tidy.rs` as `#[test]`s so a plain `cargo test` runs
//! them too.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

mod cluster_chaos;
mod interop;
mod load;
#[cfg(test)]
mod tidy;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("gates") => gates(),
        Some("interop") => interop::run(),
        Some("cluster-chaos") => cluster_chaos::run(&args[1..]),
        Some("load") => load::run(&args[1..]),
        Some("man") => man(),
        Some("help") | None => {
            eprintln!("usage: cargo xtask <ci|gates>");
            eprintln!("  ci     fmt check, clippy -D warnings, all tests, tidy, bench gates");
            eprintln!("  gates  only the deterministic bench gates");
            eprintln!("  interop  real MCP clients and servers through shadowcat (node, python3)");
            eprintln!(
                "  cluster-chaos  3 instances behind nginx on one Redis: cuts, owner kills, a Redis restart"
            );
            eprintln!("  load [--quick] [--install]  load harness: direct vs shadowcat vs nginx");
            eprintln!("  man    write the man page to target/man/shadowcat.1");
            Ok(())
        }
        Some(other) => Err(format!(
            "unknown xtask command `{other}` (try `cargo xtask help`)"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `target/man/shadowcat.1` from the CLI's clap definitions.
fn man() -> Result<(), String> {
    let dir = root().join("target").join("man");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let out = cargo()
        .args([
            "run",
            "--quiet",
            "--locked",
            "-p",
            "shadowcat-cli",
            "--",
            "man",
        ])
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "shadowcat man failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let path = dir.join("shadowcat.1");
    std::fs::write(&path, &out.stdout)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    eprintln!(
        "wrote {} (read it with: man {})",
        path.display(),
        path.display()
    );
    Ok(())
}

/// The workspace root (the parent of this crate's folder).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the root")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn step(name: &str, mut cmd: Command) -> Result<(), String> {
    eprintln!("==> {name}");
    let start = Instant::now();
    let status = cmd
        .status()
        .map_err(|e| format!("{name}: could not start: {e}"))?;
    eprintln!("<== {name}: {:.1}s", start.elapsed().as_secs_f64());
    if status.success() {
        Ok(())
    } else {
        Err(format!("{name} failed ({status})"))
    }
}

fn ci() -> Result<(), String> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    step("fmt", fmt)?;

    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]);
    step("clippy", clippy)?;

    // All tests, tidy included (xtask's own #[test]s are workspace tests).
    let mut test = cargo();
    test.args(["test", "--workspace", "--all-targets", "--locked"]);
    step("tests", test)?;

    interop::run()?;

    // Three instances behind nginx, owners killed, Redis restarted; the
    // seed from CLUSTER_CHAOS_SEED.
    cluster_chaos::run(&[])?;

    // Doc tests are not covered by --all-targets.
    let mut doc = cargo();
    doc.args(["test", "--workspace", "--doc", "--locked"]);
    step("doc tests", doc)?;

    gates()
}

/// Deterministic gates: allocations per event, bytes per stream/session,
/// tasks per event, store writes per event, bytes left by ended sessions,
/// buffered bytes within the budget whatever the number of dropped streams,
/// bytes held per request body byte, upstream connections per request,
/// allocations per event on the whole proxy path, heap per idle stream,
/// Redis round trips per event and heap per stream on a non-owner.
/// Never wall-clock times.
fn gates() -> Result<(), String> {
    let mut gates = cargo();
    gates.args([
        "test",
        "--locked",
        "--package",
        "benches",
        "--test",
        "gates",
        "--test",
        "session_gates",
        "--test",
        "session_expiry_gate",
        "--test",
        "budget_gate",
        "--test",
        "body_gate",
        "--test",
        "upstream_conn_gate",
        "--test",
        "path_gate",
        "--test",
        "cluster_gate",
        "--",
        "--test-threads=1",
    ]);
    step("bench gates", gates)
}
