//! `cargo xtask cluster-chaos [harness options…]`: builds the `shadowcat`
//! binary and the cluster chaos harness (debug, as the tests are), then
//! runs the harness in both modes: three instances behind nginx on one
//! redis-server, a slow client cut at seeded points, owners killed, Redis
//! restarted (`benches/src/bin/cluster_chaos.rs`). `cargo xtask ci` runs
//! it too.
//!
//! The seed is `CLUSTER_CHAOS_SEED`, else [`DEFAULT_SEED`]; other options
//! go to the harness as they are. nginx (`nginx-light`) is installed with
//! apt-get when missing and `CI` is set (`.ci/run` installs it too);
//! without it the harness stops with a clear message.

use std::path::Path;
use std::process::Command;

use crate::{cargo, root, step};

/// The seed when `CLUSTER_CHAOS_SEED` is not set.
pub(crate) const DEFAULT_SEED: u64 = 7;
/// Longest one mode may take (about a minute each on 2 cores).
const DEADLINE_SECS: &str = "240";
/// The nginx binary and its Debian package (as `cargo xtask load` has it).
const NGINX: (&str, &str) = ("/usr/sbin/nginx", "nginx-light");

/// Builds and runs the harness.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    if std::env::var_os("CI").is_some() && !Path::new(NGINX.0).exists() {
        let mut update = Command::new("apt-get");
        update.args(["update", "-qq"]);
        step("apt-get update", update)?;
        let mut apt = Command::new("apt-get");
        apt.env("DEBIAN_FRONTEND", "noninteractive").args([
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            NGINX.1,
        ]);
        step(&format!("apt-get install {}", NGINX.1), apt)?;
    }
    let seed = match std::env::var("CLUSTER_CHAOS_SEED") {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|e| format!("CLUSTER_CHAOS_SEED={s:?}: {e}"))?,
        Err(_) => DEFAULT_SEED,
    };

    let mut build = cargo();
    build.args([
        "build",
        "--locked",
        "-p",
        "shadowcat-cli",
        "--bin",
        "shadowcat",
        "-p",
        "benches",
        "--bin",
        "cluster-chaos",
    ]);
    step("build shadowcat and the cluster chaos harness", build)?;

    let debug = root().join("target").join("debug");
    let mut chaos = Command::new(debug.join("cluster-chaos"));
    chaos
        .current_dir(root())
        .arg("--shadowcat")
        .arg(debug.join("shadowcat"))
        .args(["--mode", "both", "--deadline-secs", DEADLINE_SECS])
        .args(["--seed", &seed.to_string()])
        .arg("--out")
        .arg(root().join("target").join("cluster-chaos"))
        .args(args);
    step(&format!("cluster chaos (seed {seed})"), chaos)
}
