//! stdio transport plumbing: a child program on piped stdin/stdout/stderr
//! and newline-delimited JSON-RPC framing over its pipes.
//!
//! - [`StdioChild`] spawns a program in its own process group with a
//!   parent-death signal (Linux), so no child outlives the proxy, not even
//!   after `kill -9` of the proxy. [`StdioChild::kill`] sends SIGTERM to the
//!   group, then SIGKILL after [`StdioConfig::kill_grace`]; dropping it sends
//!   SIGKILL to the group at once.
//! - [`LineReader`] yields one line per message, without its `\n` (or
//!   `\r\n`), bounded by a named limit; [`LineWriter`] writes one message
//!   plus `\n` and refuses messages that hold a raw newline.
//! - The child's stderr is read by one task per child and logged with
//!   `tracing` (target `shadowcat::child_stderr`) under a caller-supplied
//!   label; over-long stderr lines are truncated, never fatal.
//!
//! The parent-death signal is delivered when the *thread* that spawned the
//! child exits (a Linux rule), so spawn from a long-lived thread: a runtime
//! worker or the main thread, never from `spawn_blocking`.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tracing::instrument::WithSubscriber;

use crate::sse::DecoderLimits;

/// The `tracing` target of logged child stderr lines.
pub const STDERR_TARGET: &str = "shadowcat::child_stderr";

/// Read-buffer growth step of [`LineReader`].
const READ_CHUNK: usize = 64 * 1024;
/// Read more only when at least this much spare room is free.
const MIN_READ_ROOM: usize = 4 * 1024;
/// A read buffer grown past this for one large line is released once empty.
const RETAINED_BUFFER: usize = 256 * 1024;
/// Write buffer of [`LineWriter`].
const WRITE_BUFFER: usize = 64 * 1024;
/// Read buffer of the stderr task.
const STDERR_BUFFER: usize = 8 * 1024;

/// The program to run: path, arguments, extra environment and working
/// directory. The child inherits the proxy's environment plus `env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildCommand {
    /// The program, looked up in `PATH` if it has no slash.
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Variables set on top of the inherited environment.
    pub env: Vec<(OsString, OsString)>,
    /// The working directory; `None` keeps the proxy's.
    pub current_dir: Option<PathBuf>,
}

impl ChildCommand {
    /// A command running `program` with no arguments.
    pub fn new(program: impl Into<OsString>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            current_dir: None,
        }
    }

    /// Adds one argument.
    #[must_use]
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets one environment variable for the child.
    #[must_use]
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets the child's working directory.
    #[must_use]
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }
}

/// The level child stderr lines are logged at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StderrLevel {
    /// `INFO` (the default): servers log routine things to stderr.
    #[default]
    Info,
    /// `WARN`.
    Warn,
}

/// Bounds and timings of one child. Every limit is named and configurable.
#[derive(Debug, Clone)]
pub struct StdioConfig {
    /// The longest stdout line (one JSON-RPC message), in bytes, not
    /// counting its line ending. Longer is [`LineError::TooLong`]. Default
    /// [`StdioConfig::DEFAULT_MAX_LINE_LEN`] (8 MiB, as the SSE decoder).
    pub max_line_len: usize,
    /// Stderr lines are cut to this many bytes before logging. Default
    /// [`StdioConfig::DEFAULT_MAX_STDERR_LINE_LEN`] (16 KiB).
    pub max_stderr_line_len: usize,
    /// How long [`StdioChild::kill`] waits after SIGTERM before SIGKILL.
    /// Default [`StdioConfig::DEFAULT_KILL_GRACE`] (2 s).
    pub kill_grace: Duration,
    /// Logged as the `label` field of every stderr line (e.g. the session
    /// id). Default empty.
    pub stderr_label: Arc<str>,
    /// The level of stderr lines. Default [`StderrLevel::Info`].
    pub stderr_level: StderrLevel,
}

impl StdioConfig {
    /// Default for [`StdioConfig::max_line_len`]: 8 MiB.
    pub const DEFAULT_MAX_LINE_LEN: usize = DecoderLimits::DEFAULT_MAX_LINE_LEN;
    /// Default for [`StdioConfig::max_stderr_line_len`]: 16 KiB.
    pub const DEFAULT_MAX_STDERR_LINE_LEN: usize = 16 * 1024;
    /// Default for [`StdioConfig::kill_grace`]: 2 s.
    pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);
}

impl Default for StdioConfig {
    fn default() -> Self {
        Self {
            max_line_len: Self::DEFAULT_MAX_LINE_LEN,
            max_stderr_line_len: Self::DEFAULT_MAX_STDERR_LINE_LEN,
            kill_grace: Self::DEFAULT_KILL_GRACE,
            stderr_label: Arc::from(""),
            stderr_level: StderrLevel::Info,
        }
    }
}

/// Starting, waiting for or signalling a child failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StdioError {
    /// The program could not be started.
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        /// The program asked for.
        program: OsString,
        /// What the OS said.
        source: io::Error,
    },
    /// Waiting for the child's exit failed.
    #[error("waiting for child {pid}: {source}")]
    Wait {
        /// The child's pid.
        pid: u32,
        /// What the OS said.
        source: io::Error,
    },
    /// Signalling the child's process group failed.
    #[error("signalling process group {pgid}: {source}")]
    Signal {
        /// The process group (the child's pid).
        pgid: u32,
        /// What the OS said.
        source: io::Error,
    },
}

/// Reading or writing newline-delimited messages failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LineError {
    /// A line was longer than the reader's limit. The reader is poisoned:
    /// the stream has no trustworthy framing any more.
    #[error("line longer than the limit of {limit} bytes")]
    TooLong {
        /// The limit in force.
        limit: usize,
    },
    /// The stream ended inside a line (bytes with no closing newline).
    #[error("stream ended inside a line ({len} bytes without a newline)")]
    Unterminated {
        /// How many bytes were dropped.
        len: usize,
    },
    /// A message to write holds a raw `\n`, which would split it in two.
    #[error("message holds a raw newline")]
    EmbeddedNewline,
    /// The pipe failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Open,
    Eof,
    Failed,
}

/// Reads newline-delimited messages: one [`Bytes`] per line, without the
/// `\n` or `\r\n`, never buffering more than about the line limit plus one
/// read chunk. Lines share the reader's buffer (no copy per line).
#[derive(Debug)]
pub struct LineReader<R> {
    inner: R,
    buf: BytesMut,
    /// `buf[..scanned]` is known to hold no `\n`.
    scanned: usize,
    max_line_len: usize,
    state: ReadState,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// A reader over `inner` refusing lines longer than `max_line_len`.
    pub fn new(inner: R, max_line_len: usize) -> Self {
        Self {
            inner,
            buf: BytesMut::new(),
            scanned: 0,
            max_line_len,
            state: ReadState::Open,
        }
    }

    /// The next line, or `None` at a clean end of stream (after a newline).
    /// Cancel-safe: no bytes are lost if the future is dropped.
    pub async fn next_line(&mut self) -> Result<Option<Bytes>, LineError> {
        loop {
            if let Some(line) = self.next_buffered() {
                return line.map(Some);
            }
            match self.state {
                ReadState::Open => {}
                ReadState::Failed => {
                    return Err(LineError::TooLong {
                        limit: self.max_line_len,
                    });
                }
                ReadState::Eof if self.buf.is_empty() => return Ok(None),
                ReadState::Eof => {
                    let len = self.buf.len();
                    self.buf = BytesMut::new();
                    self.scanned = 0;
                    return Err(LineError::Unterminated { len });
                }
            }
            if self.buf.capacity() - self.buf.len() < MIN_READ_ROOM {
                self.buf.reserve(READ_CHUNK);
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                self.state = ReadState::Eof;
            }
        }
    }

    /// A line already in the buffer, without reading: lets a relay batch
    /// what one read brought before it flushes.
    pub fn next_buffered(&mut self) -> Option<Result<Bytes, LineError>> {
        if self.state == ReadState::Failed {
            return Some(Err(LineError::TooLong {
                limit: self.max_line_len,
            }));
        }
        let Some(i) = find_newline(&self.buf[self.scanned..]) else {
            self.scanned = self.buf.len();
            // One byte of slack for a CR before the LF still to come.
            if self.buf.len() > self.max_line_len.saturating_add(1) {
                return Some(Err(self.fail()));
            }
            return None;
        };
        let end = self.scanned + i;
        self.scanned = 0;
        let mut line = self.buf.split_to(end + 1);
        line.truncate(end);
        if line.last() == Some(&b'\r') {
            line.truncate(end - 1);
        }
        if line.len() > self.max_line_len {
            return Some(Err(self.fail()));
        }
        if self.buf.is_empty() && self.buf.capacity() > RETAINED_BUFFER {
            self.buf = BytesMut::new();
        }
        Some(Ok(line.freeze()))
    }

    fn fail(&mut self) -> LineError {
        self.state = ReadState::Failed;
        self.buf = BytesMut::new();
        self.scanned = 0;
        LineError::TooLong {
            limit: self.max_line_len,
        }
    }

    /// The line limit in force.
    pub fn max_line_len(&self) -> usize {
        self.max_line_len
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }
}

/// The position of the first `\n`, eight bytes at a time.
fn find_newline(hay: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const NL: u64 = LO * b'\n' as u64;
    let mut chunks = hay.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word) ^ NL;
        let found = x.wrapping_sub(LO) & !x & HI;
        if found != 0 {
            return Some(base + (found.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| base + i)
}

/// Writes newline-delimited messages through a write buffer: [`feed`]
/// buffers one message plus `\n`, [`flush`] writes what is buffered,
/// [`send`] does both.
///
/// [`feed`]: LineWriter::feed
/// [`flush`]: LineWriter::flush
/// [`send`]: LineWriter::send
#[derive(Debug)]
pub struct LineWriter<W> {
    inner: BufWriter<W>,
}

impl<W: AsyncWrite + Unpin> LineWriter<W> {
    /// A writer over `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner: BufWriter::with_capacity(WRITE_BUFFER, inner),
        }
    }

    /// Buffers `msg` and a `\n`; writes only when the buffer is full.
    /// A message holding a raw `\n` is refused and nothing is written.
    pub async fn feed(&mut self, msg: &[u8]) -> Result<(), LineError> {
        if find_newline(msg).is_some() {
            return Err(LineError::EmbeddedNewline);
        }
        self.inner.write_all(msg).await?;
        self.inner.write_all(b"\n").await?;
        Ok(())
    }

    /// Writes everything buffered.
    pub async fn flush(&mut self) -> Result<(), LineError> {
        self.inner.flush().await?;
        Ok(())
    }

    /// [`feed`](LineWriter::feed) then [`flush`](LineWriter::flush).
    pub async fn send(&mut self, msg: &[u8]) -> Result<(), LineError> {
        self.feed(msg).await?;
        self.flush().await
    }

    /// Flushes, shuts the writer down and drops it (closing a pipe).
    pub async fn close(mut self) -> Result<(), LineError> {
        self.inner.shutdown().await?;
        Ok(())
    }

    /// The underlying writer.
    pub fn get_ref(&self) -> &W {
        self.inner.get_ref()
    }
}

/// A child program speaking newline-delimited JSON-RPC on its stdio.
///
/// Spawned in its own process group (the group id is the child's pid) with
/// SIGKILL as its parent-death signal on Linux. Take its pipes with
/// [`take_stdin`](StdioChild::take_stdin) and
/// [`take_stdout`](StdioChild::take_stdout); its stderr is logged by a task
/// of its own. Dropping it SIGKILLs the whole group; the exit status is then
/// reaped by the runtime in the background (no zombie).
#[derive(Debug)]
pub struct StdioChild {
    child: Child,
    pid: u32,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    stderr_task: Option<tokio::task::JoinHandle<()>>,
    max_line_len: usize,
    kill_grace: Duration,
    status: Option<ExitStatus>,
    /// The group got its SIGKILL: nothing left to do on drop.
    group_killed: bool,
}

impl StdioChild {
    /// Starts `command` with piped stdio. Must be called inside a tokio
    /// runtime (the stderr task is spawned on it), from a long-lived thread
    /// (see the module docs on the parent-death signal).
    pub fn spawn(command: &ChildCommand, config: &StdioConfig) -> Result<Self, StdioError> {
        let spawn_error = |source| StdioError::Spawn {
            program: command.program.clone(),
            source,
        };
        let mut cmd = Command::new(&command.program);
        cmd.args(&command.args)
            .envs(command.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        if let Some(dir) = &command.current_dir {
            cmd.current_dir(dir);
        }
        sys::set_parent_death_signal(&mut cmd);
        let mut child = cmd.spawn().map_err(spawn_error)?;
        let Some(pid) = child.id() else {
            return Err(spawn_error(io::Error::other("the child has no pid")));
        };
        let stderr_task = child.stderr.take().map(|stderr| {
            let task = log_stderr(
                stderr,
                config.stderr_label.clone(),
                pid,
                config.max_stderr_line_len,
                config.stderr_level,
            );
            // Log through the subscriber current at spawn time.
            tokio::spawn(task.with_current_subscriber())
        });
        tracing::debug!(pid, program = ?command.program, label = %config.stderr_label, "stdio child started");
        Ok(Self {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr_task,
            child,
            pid,
            max_line_len: config.max_line_len,
            kill_grace: config.kill_grace,
            status: None,
            group_killed: false,
        })
    }

    /// The child's pid, which is also its process group id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The child's stdin as a [`LineWriter`]; `None` once taken. Dropping
    /// (or [`close`](LineWriter::close)-ing) it closes the child's stdin.
    pub fn take_stdin(&mut self) -> Option<LineWriter<ChildStdin>> {
        self.stdin.take().map(LineWriter::new)
    }

    /// The child's stdout as a [`LineReader`] bounded by
    /// [`StdioConfig::max_line_len`]; `None` once taken.
    pub fn take_stdout(&mut self) -> Option<LineReader<ChildStdout>> {
        self.stdout
            .take()
            .map(|out| LineReader::new(out, self.max_line_len))
    }

    /// Waits until the child's stderr has closed (the child and every group
    /// member holding it have exited) and each of its lines is logged.
    pub async fn stderr_done(&mut self) {
        if let Some(task) = self.stderr_task.as_mut() {
            if let Err(e) = task.await {
                tracing::error!(pid = self.pid, error = %e, "stdio child stderr task failed");
            }
            self.stderr_task = None;
        }
    }

    /// Waits for the child to exit. Cancel-safe.
    pub async fn wait(&mut self) -> Result<ExitStatus, StdioError> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self.child.wait().await.map_err(|source| StdioError::Wait {
            pid: self.pid,
            source,
        })?;
        self.status = Some(status);
        Ok(status)
    }

    /// The exit status if the child has exited, without waiting.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, StdioError> {
        if self.status.is_none() {
            self.status = self.child.try_wait().map_err(|source| StdioError::Wait {
                pid: self.pid,
                source,
            })?;
        }
        Ok(self.status)
    }

    /// Stops the child: SIGTERM to its process group, SIGKILL to the group
    /// if it has not exited after [`StdioConfig::kill_grace`], then SIGKILL
    /// again for any group member that outlived the leader. Returns the
    /// child's exit status.
    pub async fn kill(&mut self) -> Result<ExitStatus, StdioError> {
        if self.status.is_none() {
            self.signal(libc::SIGTERM)?;
            if let Ok(status) = tokio::time::timeout(self.kill_grace, self.wait()).await {
                status?;
            } else {
                tracing::warn!(
                    pid = self.pid,
                    grace = ?self.kill_grace,
                    "stdio child ignored SIGTERM; sending SIGKILL"
                );
                self.signal(libc::SIGKILL)?;
                self.wait().await?;
            }
        }
        self.signal(libc::SIGKILL)?;
        self.group_killed = true;
        self.wait().await
    }

    /// Sends `signal` to the child's process group; a group already gone
    /// is not an error.
    fn signal(&self, signal: libc::c_int) -> Result<(), StdioError> {
        match sys::signal_group(self.pid, signal) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            Err(source) => Err(StdioError::Signal {
                pgid: self.pid,
                source,
            }),
        }
    }
}

impl Drop for StdioChild {
    fn drop(&mut self) {
        if !self.group_killed
            && let Err(e) = self.signal(libc::SIGKILL)
        {
            tracing::error!(pid = self.pid, error = %e, "cannot kill stdio child group");
        }
        // Reap now if it is already gone; otherwise `kill_on_drop` and the
        // runtime's orphan queue reap it once it dies.
        let _ = self.child.try_wait();
    }
}

/// Logs the child's stderr line by line until it closes.
async fn log_stderr(
    stderr: ChildStderr,
    label: Arc<str>,
    pid: u32,
    max_len: usize,
    level: StderrLevel,
) {
    let mut reader = BufReader::with_capacity(STDERR_BUFFER, stderr);
    let mut line: Vec<u8> = Vec::new();
    let mut truncated = false;
    loop {
        let buf = match reader.fill_buf().await {
            Ok(buf) => buf,
            Err(e) => {
                tracing::warn!(label = %label, pid, error = %e, "reading stdio child stderr failed");
                break;
            }
        };
        if buf.is_empty() {
            if !line.is_empty() {
                emit_stderr(&label, pid, &line, truncated, level);
            }
            break;
        }
        let (take, newline) = match find_newline(buf) {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        let room = max_len.saturating_sub(line.len());
        let keep = take.min(room);
        line.extend_from_slice(&buf[..keep]);
        truncated |= keep < take;
        reader.consume(take + usize::from(newline));
        if newline {
            emit_stderr(&label, pid, &line, truncated, level);
            line.clear();
            truncated = false;
        }
    }
}

fn emit_stderr(label: &str, pid: u32, line: &[u8], truncated: bool, level: StderrLevel) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = String::from_utf8_lossy(line);
    match level {
        StderrLevel::Info => {
            tracing::info!(target: STDERR_TARGET, label, pid, truncated, "{text}");
        }
        StderrLevel::Warn => {
            tracing::warn!(target: STDERR_TARGET, label, pid, truncated, "{text}");
        }
    }
}

/// The two places this crate calls the OS directly.
mod sys {
    use std::io;

    use tokio::process::Command;

    /// Makes the child get SIGKILL when the thread that spawned it dies.
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    pub(super) fn set_parent_death_signal(cmd: &mut Command) {
        let parent = std::process::id();
        // SAFETY: the closure runs in the forked child before exec, where
        // only async-signal-safe calls are allowed. It makes exactly two
        // raw system calls (prctl, getppid) and builds an io::Error from an
        // errno or a constant: no allocation, no lock, no shared state.
        unsafe {
            cmd.pre_exec(move || {
                let rc = libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                );
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl: then no
                // signal will ever come, so do not start at all.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }

    /// No parent-death signal outside Linux: the process group and
    /// `kill_on_drop` remain.
    #[cfg(not(target_os = "linux"))]
    pub(super) fn set_parent_death_signal(_cmd: &mut Command) {}

    /// `kill(-pgid, signal)`: signals every process in the group.
    #[allow(unsafe_code)]
    pub(super) fn signal_group(pgid: u32, signal: libc::c_int) -> io::Result<()> {
        // Group ids 0 and 1 would mean "our own group" and "everyone".
        let pgid = libc::pid_t::try_from(pgid)
            .ok()
            .filter(|&p| p > 1)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: kill(2) takes two integers and touches no memory of ours.
        let rc = unsafe { libc::kill(-pgid, signal) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_newline_matches_a_plain_search() {
        let mut hay = vec![b'a'; 40];
        assert_eq!(find_newline(&hay), None);
        for i in 0..hay.len() {
            hay[i] = b'\n';
            assert_eq!(find_newline(&hay), Some(i), "newline at {i}");
            hay[i] = 0x8a; // high bit set, low bits of '\n'
            assert_eq!(find_newline(&hay), None);
            hay[i] = b'a';
        }
        hay[3] = b'\n';
        hay[20] = b'\n';
        assert_eq!(find_newline(&hay), Some(3));
    }

    #[test]
    fn group_zero_and_one_are_refused() {
        for pgid in [0, 1] {
            let err = sys::signal_group(pgid, 0).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
    }
}
