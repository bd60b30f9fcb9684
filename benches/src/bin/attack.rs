//! The hostile-load suite at the sizes of issue 17, against one
//! `shadowcat` binary, on loopback only; prints a markdown table (attack,
//! RSS before → peak → after, statuses, recovery, process up) and writes
//! it to `OUT/report.md`.
//!
//! `attack --bin PATH [--legacy] [--long] [--ci] [--only F1,F4] [--out DIR]`
//!
//! - `--legacy`: leave out the config keys added by issue 17 (a binary
//!   from before rejects unknown keys);
//! - `--long`: also the 65 s attack of 1,000 connections dripping bodies;
//! - `--ci`: the small sizes of `benches/tests/hostile.rs`;
//! - `--only`: just these attacks (F1, F2, F4 … F11).
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use benches::hostile::{Scale, Target, attacks, markdown};

#[derive(Debug)]
struct Args {
    target: Target,
    scale: Scale,
    long: bool,
    only: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut bin = None;
    let mut dir = PathBuf::from("target/attack");
    let mut legacy = false;
    let mut long = false;
    let mut scale = Scale::Full;
    let mut only = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--bin" => bin = Some(PathBuf::from(value(&a)?)),
            "--out" => dir = PathBuf::from(value(&a)?),
            "--legacy" => legacy = true,
            "--long" => long = true,
            "--ci" => scale = Scale::Ci,
            "--only" => only = value(&a)?.split(',').map(|s| s.trim().to_owned()).collect(),
            "-h" | "--help" => {
                return Err(
                    "usage: attack --bin PATH [--legacy] [--long] [--ci] [--only F1,F4] [--out DIR]"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let bin = bin.ok_or("--bin PATH (the shadowcat binary) is required")?;
    if !bin.is_file() {
        return Err(format!("{} is not a file", bin.display()));
    }
    Ok(Args {
        target: Target { bin, dir, legacy },
        scale,
        long,
        only,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("attack: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Attacks hold over a thousand connections; the proxy inherits this.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("attack: cannot raise the open-file limit: {e}");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("attack: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let results = rt.block_on(attacks::all_attacks(
        &args.target,
        args.scale,
        args.long,
        &args.only,
        |(id, r)| match r {
            Ok(r) => eprintln!("attack: {}", r.summary()),
            Err(e) => eprintln!("attack: {id} could not run: {e}"),
        },
    ));
    let failed = results.iter().any(|(_, r)| r.is_err());
    let reports: Vec<_> = results.into_iter().filter_map(|(_, r)| r.ok()).collect();
    let table = markdown(&reports);
    let file = args.target.dir.join("report.md");
    if let Err(e) = std::fs::write(&file, &table) {
        eprintln!("attack: {}: {e}", file.display());
    }
    let mut out = std::io::stdout().lock();
    if out.write_all(table.as_bytes()).is_err() {
        return ExitCode::FAILURE;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
