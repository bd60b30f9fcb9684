//! `shadowcat forward stdio -- <program> [args…]`: our stdin/stdout are the
//! client's channel, the program is the server; the relay is
//! `shadowcat_proxy::forward::relay_stdio`. Exits with the program's exit
//! code (128 + signal if a signal ended it). Logs go to stderr only: stdout
//! carries nothing but the server's messages.
//!
//! Pipes and sockets on our stdin/stdout are read and written without
//! blocking threads; anything else (a file, a terminal) falls back to
//! tokio's blocking stdio.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use shadowcat_proxy::forward::{ChildCommand, StdioForwardConfig, relay_stdio};
use shadowcat_proxy::forward::{HttpForwardConfig, relay_http};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::unix::pipe;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::{ForwardCommand, ForwardStdioArgs, LogFormat};
use crate::error::CliError;
use crate::logging;

/// Runs a `shadowcat forward` subcommand.
pub(crate) async fn run(
    command: ForwardCommand,
    log_format: LogFormat,
) -> Result<ExitCode, CliError> {
    match command {
        ForwardCommand::Stdio(args) => stdio(args, log_format).await,
    }
}

async fn stdio(args: ForwardStdioArgs, log_format: LogFormat) -> Result<ExitCode, CliError> {
    if let Some(url) = &args.upstream {
        return http(&args, url, log_format).await;
    }
    let mut words = args.program.into_iter();
    let Some(program) = words.next() else {
        return Err(CliError::Config(
            "forward stdio needs `-- <program> [args…]`".into(),
        ));
    };
    let mut config = StdioForwardConfig::new(ChildCommand::new(program).args(words));
    if let Some(max) = args.max_line_bytes {
        if max == 0 {
            return Err(CliError::Config(
                "--max-line-bytes must be at least 1".into(),
            ));
        }
        config.max_client_line_len = max;
        config.child.max_line_len = max;
    }
    if let Some(secs) = args.exit_grace_secs {
        config.exit_grace = Duration::from_secs(secs);
    }
    let client_in = client_stdin()?;
    let client_out = client_stdout()?;
    let shutdown = shutdown_signal()?;
    let _ = logging::init(log_format, None);
    let report = relay_stdio(&config, client_in, client_out, shutdown)
        .await
        .map_err(|e| CliError::Config(e.to_string()))?;
    Ok(exit_code(report.status))
}

/// `--upstream URL`: stdio to the client, Streamable HTTP upstream.
async fn http(
    args: &ForwardStdioArgs,
    url: &str,
    log_format: LogFormat,
) -> Result<ExitCode, CliError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| CliError::Config(format!("bad upstream URL {url:?}: not a URL")))?;
    shadowcat_proxy::check_upstream(&uri)?;
    let mut config = HttpForwardConfig::new(uri);
    config.tls = shadowcat_proxy::UpstreamTlsConfig {
        ca_file: args.upstream_ca.clone(),
        client_cert: args.upstream_client_cert.clone(),
        client_key: args.upstream_client_key.clone(),
    };
    if let Some(spec) = &args.upstream_bearer {
        config.bearer = Some(crate::settings::read_secret(spec, "--upstream-bearer")?);
    }
    if let Some(max) = args.max_line_bytes {
        if max == 0 {
            return Err(CliError::Config(
                "--max-line-bytes must be at least 1".into(),
            ));
        }
        config.max_client_line_len = max;
    }
    let client_in = client_stdin()?;
    let client_out = client_stdout()?;
    let shutdown = shutdown_signal()?;
    let _ = logging::init(log_format, None);
    let report = relay_http(&config, client_in, client_out, shutdown)
        .await
        .map_err(|e| CliError::Config(e.to_string()))?;
    tracing::debug!(messages = report.from_client, "forward relay ended");
    Ok(ExitCode::SUCCESS)
}

/// The child's exit code, or 128 + the signal that ended it.
fn exit_code(status: ExitStatus) -> ExitCode {
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// What our stdin is: a pipe, a socket or anything else.
fn classify(fd: OwnedFd) -> io::Result<(File, bool, bool)> {
    let file = File::from(fd);
    let kind = file.metadata()?.file_type();
    Ok((file, kind.is_fifo(), kind.is_socket()))
}

fn client_stdin() -> io::Result<Box<dyn AsyncRead + Unpin + Send>> {
    let (file, fifo, socket) = classify(io::stdin().as_fd().try_clone_to_owned()?)?;
    if fifo {
        return Ok(Box::new(pipe::Receiver::from_file(file)?));
    }
    if socket {
        return Ok(Box::new(unix_stream(file)?));
    }
    Ok(Box::new(tokio::io::stdin()))
}

fn client_stdout() -> io::Result<Box<dyn AsyncWrite + Unpin + Send>> {
    let (file, fifo, socket) = classify(io::stdout().as_fd().try_clone_to_owned()?)?;
    if fifo {
        return Ok(Box::new(pipe::Sender::from_file(file)?));
    }
    if socket {
        return Ok(Box::new(unix_stream(file)?));
    }
    Ok(Box::new(tokio::io::stdout()))
}

/// A socket on stdio (what many clients hand their servers) as a
/// non-blocking stream.
fn unix_stream(file: File) -> io::Result<tokio::net::UnixStream> {
    let stream = std::os::unix::net::UnixStream::from(OwnedFd::from(file));
    stream.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(stream)
}

/// Completes on the first SIGINT or SIGTERM: the relay then stops the
/// server (SIGTERM, then SIGKILL after its grace) and exits.
fn shutdown_signal() -> io::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "stopping the stdio server");
    })
}
