//! Logging to stderr: `RUST_LOG` (else the config file's `log_level`, else
//! `info`) filters, text or JSON. The filter can be replaced while running
//! (SIGHUP re-reads `log_level`).

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt, reload};

use crate::cli::LogFormat;

/// Replaces the running filter.
#[derive(Clone)]
pub(crate) struct LogLevel(Option<reload::Handle<EnvFilter, Registry>>);

impl LogLevel {
    /// Applies `directives` (`RUST_LOG` syntax, e.g. `info` or
    /// `shadowcat_proxy=debug`).
    pub(crate) fn set(&self, directives: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(directives)
            .map_err(|e| format!("log_level {directives:?} is not a valid filter: {e}"))?;
        match &self.0 {
            Some(h) => h
                .reload(filter)
                .map_err(|e| format!("cannot change the log level: {e}")),
            None => Err("logging was set up elsewhere; the level cannot change".into()),
        }
    }
}

/// Installs the global subscriber. Called once start-up has succeeded, so
/// that a start-up failure is the one line `main` prints, not that line
/// plus the log events leading to it. `level` is the config file's
/// `log_level`, used when `RUST_LOG` is not set.
pub(crate) fn init(format: LogFormat, level: Option<&str>) -> LogLevel {
    let filter = EnvFilter::try_from_default_env()
        .ok()
        .or_else(|| level.and_then(|l| EnvFilter::try_new(l).ok()))
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let output = fmt::layer().with_writer(std::io::stderr);
    let output = match format {
        LogFormat::Text => output.boxed(),
        LogFormat::Json => output.json().boxed(),
    };
    match tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
    {
        Ok(()) => LogLevel(Some(handle)),
        Err(_) => LogLevel(None),
    }
}
