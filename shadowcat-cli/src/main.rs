//! The `shadowcat` binary: `shadowcat reverse --upstream URL` runs the
//! Streamable HTTP reverse proxy; `shadowcat forward stdio -- PROGRAM`
//! relays stdio to a program; `shadowcat sessions …` inspects and ends
//! sessions (through the running proxy's admin API, else the store);
//! `shadowcat completions SHELL` prints a completion script.
//!
//! Configuration: flags, each also a `SHADOWCAT_*` variable, over an
//! optional TOML file (`--config`), over defaults. Logs go to stderr
//! (`RUST_LOG`, `--log-format text|json`), from the moment start-up has
//! succeeded: a start-up error prints one line and exits 1.
#![forbid(unsafe_code)]

mod access_log;
mod admin;
mod cli;
mod error;
mod forward_cmd;
mod logging;
mod run;
mod sessions_cmd;
mod settings;
mod store;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command};
use crate::error::CliError;
use crate::settings::{FileConfig, ReverseSettings};

/// Default for `--max-blocking-threads`. tokio's own default (512) let a
/// burst of `initialize`s leave ~130 idle threads behind; redb serialises
/// its write transactions anyway.
const DEFAULT_MAX_BLOCKING_THREADS: usize = 16;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "shadowcat", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Command::Man => {
            return match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("shadowcat: cannot write the man page: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    // One relay task needs no second thread: a current-thread runtime
    // saves a cross-thread wake-up per message.
    let mut builder = match cli.command {
        Command::Forward { .. } => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let blocking = cli
        .max_blocking_threads
        .unwrap_or(DEFAULT_MAX_BLOCKING_THREADS)
        .max(1);
    let runtime = match builder.enable_all().max_blocking_threads(blocking).build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shadowcat: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shadowcat: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let file = FileConfig::load(cli.config.as_deref())?;
    let log_format = file.log_format(cli.log_format);
    let store = file.store(cli.store.as_deref());
    match cli.command {
        Command::Reverse(args) => {
            let reload = run::Reload {
                args: (*args).clone(),
                config: cli.config.clone(),
                log_level: file.log_level().map(str::to_owned),
            };
            let settings = ReverseSettings::resolve(*args, file)?;
            run::reverse(settings, store, log_format, reload).await
        }
        Command::Forward { command } => forward_cmd::run(command, log_format).await,
        Command::Sessions(args) => sessions_cmd::run(args, &file, &store, log_format).await,
        Command::Completions { .. } | Command::Man => Ok(ExitCode::SUCCESS),
    }
}
