//! The forward proxy for clients that launch their server as a subprocess.
//!
//! [`relay_stdio`] is the transparent stdio↔stdio pass-through behind
//! `shadowcat forward stdio -- <program> [args…]`: the client launches
//! Shadowcat, Shadowcat launches the program (a [`StdioChild`]) and relays
//! newline-delimited messages both ways, unchanged and in order, logging
//! each message's kind, method and id at `DEBUG` (target
//! `shadowcat_proxy::forward`) for observation.
//!
//! Per message: no task, no lock, no copy beyond the write buffer; lines
//! that one read brought are written with one flush. Lifecycle: when the
//! client closes our stdin, the server's stdin is closed and it gets
//! [`StdioForwardConfig::exit_grace`] to exit before it is stopped (SIGTERM,
//! then SIGKILL); when the server exits, the relay ends with its status.

use std::future::Future;
use std::process::ExitStatus;
use std::time::Duration;

pub use shadowcat_transport::{ChildCommand, StdioConfig};
use shadowcat_transport::{LineError, LineReader, LineWriter, StdioChild, StdioError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::mcp::jsonrpc::{self, Body};

/// What to run and the relay's bounds.
#[derive(Debug, Clone)]
pub struct StdioForwardConfig {
    /// The server program.
    pub command: ChildCommand,
    /// The child's limits: stdout line length, stderr, kill grace.
    pub child: StdioConfig,
    /// The longest line accepted from the client, in bytes. Default
    /// [`StdioConfig::DEFAULT_MAX_LINE_LEN`] (8 MiB).
    pub max_client_line_len: usize,
    /// How long the server may take to exit once its stdin is closed (or
    /// once it closed its stdout) before it is stopped. Default
    /// [`StdioForwardConfig::DEFAULT_EXIT_GRACE`] (5 s).
    pub exit_grace: Duration,
}

impl StdioForwardConfig {
    /// Default for [`StdioForwardConfig::exit_grace`]: 5 s.
    pub const DEFAULT_EXIT_GRACE: Duration = Duration::from_secs(5);

    /// Defaults for running `command`.
    pub fn new(command: ChildCommand) -> Self {
        Self {
            command,
            child: StdioConfig::default(),
            max_client_line_len: StdioConfig::DEFAULT_MAX_LINE_LEN,
            exit_grace: Self::DEFAULT_EXIT_GRACE,
        }
    }
}

/// Why the relay stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// The server closed its stdout (it exited).
    ServerClosed,
    /// The client closed our stdin and the server did not exit within the
    /// grace: it was stopped.
    ClientClosed,
    /// The caller's shutdown future completed: the server was stopped.
    Shutdown,
}

/// How a relay ended.
#[derive(Debug, Clone, Copy)]
pub struct RelayReport {
    /// The server's exit status.
    pub status: ExitStatus,
    /// Messages relayed client → server.
    pub to_server: u64,
    /// Messages relayed server → client.
    pub to_client: u64,
    /// Why it stopped.
    pub end: RelayEnd,
}

/// The relay failed; the server has been stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// The server could not be started, waited for or signalled.
    #[error("stdio server: {0}")]
    Child(#[from] StdioError),
    /// Reading the client's messages failed (I/O, over-long line).
    #[error("reading from the client: {0}")]
    ClientRead(#[source] LineError),
    /// Reading the server's messages failed (I/O, over-long line).
    #[error("reading from the server: {0}")]
    ServerRead(#[source] LineError),
    /// Writing to the client failed (it went away).
    #[error("writing to the client: {0}")]
    ClientWrite(#[source] LineError),
}

impl ForwardError {
    fn kind(&self) -> &'static str {
        match self {
            Self::Child(_) => "child",
            Self::ClientRead(_) => "client_read",
            Self::ServerRead(_) => "server_read",
            Self::ClientWrite(_) => "client_write",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    ToServer,
    ToClient,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Self::ToServer => "to_server",
            Self::ToClient => "to_client",
        }
    }
}

/// How one direction ended, with the messages it relayed.
#[derive(Debug)]
struct PumpEnd {
    count: u64,
    result: Result<(), PumpError>,
}

#[derive(Debug)]
enum PumpError {
    Read(LineError),
    Write(LineError),
}

/// Relays `client_in` → the server's stdin and the server's stdout →
/// `client_out` until the server exits, the client leaves or `shutdown`
/// completes. The server is spawned here and never outlives the call.
pub async fn relay_stdio<R, W, S>(
    config: &StdioForwardConfig,
    client_in: R,
    client_out: W,
    shutdown: S,
) -> Result<RelayReport, ForwardError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    S: Future<Output = ()>,
{
    let mut child = StdioChild::spawn(&config.command, &config.child)?;
    let (Some(server_in), Some(server_out)) = (child.take_stdin(), child.take_stdout()) else {
        unreachable!("StdioChild::spawn pipes stdin and stdout");
    };
    tracing::info!(pid = child.pid(), program = ?config.command.program, "forwarding stdio");
    let result = run(
        config, &mut child, client_in, client_out, server_in, server_out, shutdown,
    )
    .await;
    match result {
        Ok((to_server, to_client, end)) => {
            // `kill` after an exit still clears the rest of the group.
            let status = match end {
                RelayEnd::ServerClosed => {
                    match tokio::time::timeout(config.exit_grace, child.wait()).await {
                        Ok(status) => {
                            status?;
                        }
                        Err(_) => tracing::warn!(
                            pid = child.pid(),
                            "stdio server closed its stdout but did not exit; stopping it"
                        ),
                    }
                    child.kill().await?
                }
                RelayEnd::ClientClosed | RelayEnd::Shutdown => child.kill().await?,
            };
            // Bounded: a daemon that left the group may hold stderr open.
            if tokio::time::timeout(config.child.kill_grace, child.stderr_done())
                .await
                .is_err()
            {
                tracing::debug!(pid = child.pid(), "stdio server stderr still open");
            }
            tracing::info!(pid = child.pid(), %status, to_server, to_client, ?end, "stdio relay ended");
            Ok(RelayReport {
                status,
                to_server,
                to_client,
                end,
            })
        }
        Err(e) => {
            metrics::counter!("shadowcat_forward_stdio_errors_total", "kind" => e.kind())
                .increment(1);
            tracing::error!(pid = child.pid(), error = %e, "stdio relay failed; stopping the server");
            if let Err(kill) = child.kill().await {
                tracing::error!(pid = child.pid(), error = %kill, "cannot stop the stdio server");
            }
            Err(e)
        }
    }
}

/// The relay loop proper; returns the message counts and why it ended.
async fn run<R, W, S, SI, SO>(
    config: &StdioForwardConfig,
    child: &mut StdioChild,
    client_in: R,
    client_out: W,
    server_in: LineWriter<SI>,
    server_out: LineReader<SO>,
    shutdown: S,
) -> Result<(u64, u64, RelayEnd), ForwardError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    S: Future<Output = ()>,
    SI: AsyncWrite + Unpin,
    SO: AsyncRead + Unpin,
{
    let up = pump(
        LineReader::new(client_in, config.max_client_line_len),
        server_in,
        Direction::ToServer,
    );
    let down = pump(server_out, LineWriter::new(client_out), Direction::ToClient);
    tokio::pin!(up, down, shutdown);
    let mut to_server = None;
    let mut exited = false;
    let mut deadline: Option<Instant> = None;
    loop {
        tokio::select! {
            end = &mut down => {
                let n = to_server.unwrap_or(0);
                return match end.result {
                    Ok(()) => Ok((n, end.count, RelayEnd::ServerClosed)),
                    Err(PumpError::Read(e)) => Err(ForwardError::ServerRead(e)),
                    Err(PumpError::Write(e)) => Err(ForwardError::ClientWrite(e)),
                };
            }
            end = &mut up, if to_server.is_none() => {
                to_server = Some(end.count);
                match end.result {
                    Ok(()) => tracing::debug!("client closed stdin; closing the server's"),
                    // The server closed its stdin (it is exiting): the
                    // other direction tells the rest.
                    Err(PumpError::Write(e)) => {
                        tracing::debug!(error = %e, "the server stopped reading its stdin");
                    }
                    Err(PumpError::Read(e)) => return Err(ForwardError::ClientRead(e)),
                }
                let at = Instant::now() + config.exit_grace;
                deadline = Some(deadline.map_or(at, |d| d.min(at)));
            }
            status = child.wait(), if !exited => {
                exited = true;
                match status {
                    Ok(status) => tracing::debug!(%status, "stdio server exited"),
                    Err(e) => tracing::warn!(error = %e, "waiting for the stdio server failed"),
                }
                // Let the pipe drain; a grandchild holding it open does not
                // keep the relay alive past the grace.
                let at = Instant::now() + config.exit_grace;
                deadline = Some(deadline.map_or(at, |d| d.min(at)));
            }
            () = sleep_until(deadline), if deadline.is_some() => {
                let n = to_server.unwrap_or(0);
                tracing::warn!(grace = ?config.exit_grace, "stdio server did not finish in time; stopping it");
                return Ok((n, 0, RelayEnd::ClientClosed));
            }
            () = &mut shutdown => {
                tracing::info!("shutdown requested; stopping the stdio server");
                return Ok((to_server.unwrap_or(0), 0, RelayEnd::Shutdown));
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(at) = deadline {
        tokio::time::sleep_until(at).await;
    }
}

/// Copies lines from `from` to `to`, one flush per read's worth of lines,
/// until `from` ends. Closes `to` at a clean end.
async fn pump<R, W>(mut from: LineReader<R>, mut to: LineWriter<W>, dir: Direction) -> PumpEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let messages =
        metrics::counter!("shadowcat_forward_stdio_messages_total", "direction" => dir.as_str());
    let mut count = 0u64;
    let result = loop {
        let mut line = match from.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break to.close().await.map_err(PumpError::Write),
            Err(e) => break Err(PumpError::Read(e)),
        };
        let mut batch = 0u64;
        let read_error = loop {
            observe(dir, &line);
            if let Err(e) = to.feed(&line).await {
                return PumpEnd {
                    count: count + batch,
                    result: Err(PumpError::Write(e)),
                };
            }
            batch += 1;
            match from.next_buffered() {
                Some(Ok(next)) => line = next,
                Some(Err(e)) => break Some(e),
                None => break None,
            }
        };
        let flushed = to.flush().await;
        count += batch;
        messages.increment(batch);
        if let Err(e) = flushed {
            break Err(PumpError::Write(e));
        }
        if let Some(e) = read_error {
            break Err(PumpError::Read(e));
        }
    };
    PumpEnd { count, result }
}

/// Logs one relayed message at `DEBUG`; costs nothing when that is off.
fn observe(dir: Direction, line: &[u8]) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let direction = dir.as_str();
    match jsonrpc::parse_body(line) {
        Ok(Body::Single(m)) => tracing::debug!(
            direction,
            kind = ?m.kind,
            method = m.method.as_deref(),
            id = m.id.as_ref().map(tracing::field::display),
            bytes = line.len(),
            "message"
        ),
        Ok(Body::Batch(ms)) => tracing::debug!(
            direction,
            batch = ms.len(),
            bytes = line.len(),
            "message batch"
        ),
        Err(e) => {
            tracing::debug!(direction, bytes = line.len(), error = %e, "not a JSON-RPC message")
        }
    }
}
