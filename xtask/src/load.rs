//! `cargo xtask load [--quick] [--install] [load options…]`: builds the
//! `shadowcat` binary and the load harness in release, then runs the
//! harness (direct vs Shadowcat vs nginx on loopback). Writes
//! `target/load/report.json` and `report.md` (Shadowcat against nginx
//! first, then every table), and `latency.png` for a `--rates` sweep.
//!
//! `--quick` is a smoke run of about a minute. nginx (and a font for the
//! plot's text) are installed with apt-get when missing, if `--install` is
//! given or `CI` is set; without nginx the harness stops unless
//! `--no-nginx` is passed, so a run without the reference is never a
//! surprise. Other options go to the harness as they are (see
//! `benches/src/bin/load.rs`).

use std::path::Path;
use std::process::Command;

use crate::{cargo, root, step};

/// Debian packages the harness uses when they are there.
const PACKAGES: [(&str, &str); 2] = [
    ("/usr/sbin/nginx", "nginx-light"),
    (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "fonts-dejavu-core",
    ),
];

/// Runs the load harness.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut install = std::env::var_os("CI").is_some();
    let mut pass = Vec::new();
    for a in args {
        match a.as_str() {
            "--install" => install = true,
            _ => pass.push(a.clone()),
        }
    }
    if install {
        install_missing()?;
    }

    let mut build = cargo();
    build.args([
        "build",
        "--release",
        "-p",
        "shadowcat-cli",
        "--bin",
        "shadowcat",
        "-p",
        "benches",
        "--bin",
        "load",
    ]);
    step("build shadowcat and the load harness (release)", build)?;

    let release = root().join("target").join("release");
    let mut load = Command::new(release.join("load"));
    load.current_dir(root())
        .arg("--shadowcat")
        .arg(release.join("shadowcat"))
        .arg("--out")
        .arg(root().join("target").join("load"))
        .args(&pass);
    step("load harness", load)
}

/// apt-get installs what [`PACKAGES`] lists and is missing.
fn install_missing() -> Result<(), String> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut update = Command::new("apt-get");
    update.args(["update", "-qq"]);
    step("apt-get update", update)?;
    let mut apt = Command::new("apt-get");
    apt.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing);
    step(&format!("apt-get install {}", missing.join(" ")), apt)
}
