//! The `shadowcat` binary under attack: a TOML config written per attack
//! (keys an older binary does not know left out in legacy mode), started
//! on loopback with a memory store, its memory and `/metrics` read from
//! outside.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::procs::{self, Proc};
use super::{AttackError, Target};

/// Keys `[limits]` and top-level keys of the binary's config file.
#[derive(Debug, Clone, Default)]
pub(crate) struct Config {
    top: Vec<(&'static str, String, bool)>,
    limits: Vec<(&'static str, String, bool)>,
    /// The open-file limit of the process (`ulimit -n`), if lowered.
    pub(crate) fd_limit: Option<u64>,
    /// `RUST_LOG`.
    pub(crate) log: &'static str,
}

impl Config {
    /// The defaults, logging at info.
    pub(crate) fn new() -> Self {
        Config {
            log: "info",
            ..Config::default()
        }
    }

    /// A `[limits]` key every binary knows; `value` is TOML.
    pub(crate) fn limit(mut self, key: &'static str, value: impl ToString) -> Self {
        self.limits.push((key, value.to_string(), false));
        self
    }

    /// A `[limits]` key added by issue 17 (left out in legacy mode).
    pub(crate) fn new_limit(mut self, key: &'static str, value: impl ToString) -> Self {
        self.limits.push((key, value.to_string(), true));
        self
    }

    /// A top-level key every binary knows.
    pub(crate) fn top(mut self, key: &'static str, value: impl ToString) -> Self {
        self.top.push((key, value.to_string(), false));
        self
    }

    /// A top-level key added by issue 17 (left out in legacy mode).
    pub(crate) fn new_top(mut self, key: &'static str, value: impl ToString) -> Self {
        self.top.push((key, value.to_string(), true));
        self
    }

    /// Runs the process with at most `n` open files.
    pub(crate) fn fd_limit(mut self, n: u64) -> Self {
        self.fd_limit = Some(n);
        self
    }

    /// The file's text.
    pub(crate) fn toml(&self, legacy: bool) -> String {
        let mut s = String::new();
        for (k, v, new) in &self.top {
            if !(legacy && *new) {
                let _ = writeln!(s, "{k} = {v}");
            }
        }
        s.push_str("[limits]\n");
        for (k, v, new) in &self.limits {
            if !(legacy && *new) {
                let _ = writeln!(s, "{k} = {v}");
            }
        }
        s
    }
}

/// A running `shadowcat reverse`; stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub(crate) struct Proxy {
    /// The process.
    pub(crate) proc: Proc,
    /// Its MCP listener.
    pub(crate) addr: SocketAddr,
    /// Its admin listener (`/metrics`).
    pub(crate) admin: SocketAddr,
    /// Its stdout and stderr.
    pub(crate) log: PathBuf,
    /// Its process id.
    pub(crate) pid: u32,
}

fn setup(e: impl std::fmt::Display) -> AttackError {
    AttackError::Setup(e.to_string())
}

fn loopback_port() -> Result<SocketAddr, AttackError> {
    let port = procs::free_port().map_err(|e| AttackError::Setup(format!("free port: {e}")))?;
    Ok((Ipv4Addr::LOCALHOST, port).into())
}

impl Proxy {
    /// Starts the target binary in front of `upstream` with `config`; its
    /// files are `DIR/NAME.toml` and `DIR/NAME.log`.
    pub(crate) async fn start(
        target: &Target,
        name: &str,
        upstream: SocketAddr,
        config: &Config,
    ) -> Result<Self, AttackError> {
        std::fs::create_dir_all(&target.dir)
            .map_err(|e| AttackError::Setup(format!("{}: {e}", target.dir.display())))?;
        let addr = loopback_port()?;
        let admin = loopback_port()?;
        let file = target.dir.join(format!("{name}.toml"));
        std::fs::write(&file, config.toml(target.legacy))
            .map_err(|e| AttackError::Setup(format!("{}: {e}", file.display())))?;
        let mut cmd = match config.fd_limit {
            // `ulimit` in a shell that then becomes the binary: the same
            // process id, no unsafe pre-exec hook.
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(&target.bin);
                c
            }
            None => Command::new(&target.bin),
        };
        cmd.env("RUST_LOG", config.log)
            .arg("--config")
            .arg(&file)
            .arg("--store")
            .arg("memory")
            .arg("reverse")
            .arg("--upstream")
            .arg(format!("http://{upstream}/mcp"))
            .arg("--bind")
            .arg(addr.to_string())
            .arg("--admin-bind")
            .arg(admin.to_string());
        let log = target.dir.join(format!("{name}.log"));
        let mut proc = Proc::spawn("shadowcat", cmd, log.clone()).map_err(setup)?;
        proc.wait_listening(addr).await.map_err(setup)?;
        proc.wait_listening(admin).await.map_err(setup)?;
        let pid = proc.child.id();
        Ok(Proxy {
            proc,
            addr,
            admin,
            log,
            pid,
        })
    }

    /// Resident set size now, in KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        procs::rss_kib(self.pid).unwrap_or(0)
    }

    /// Peak resident set size since start, in KiB.
    pub(crate) fn peak_kib(&self) -> u64 {
        procs::status_field(self.pid, "VmHWM:").unwrap_or(0)
    }

    /// True while the process runs.
    pub(crate) fn up(&mut self) -> bool {
        self.proc.check_alive().is_ok()
    }

    /// Its `/metrics` text, if it answers within 5 s.
    pub(crate) async fn metrics(&self) -> Option<String> {
        tokio::time::timeout(Duration::from_secs(5), procs::scrape(self.admin))
            .await
            .ok()
            .flatten()
    }

    /// The sum of metric `name` over its labels (`None`: not exported or no
    /// answer).
    pub(crate) async fn metric(&self, name: &str) -> Option<f64> {
        procs::metric_sum(&self.metrics().await?, name)
    }

    /// One sample of metric `name` whose labels contain `label`.
    pub(crate) async fn metric_with(&self, name: &str, label: &str) -> Option<f64> {
        let text = self.metrics().await?;
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .reduce(|a, b| a + b)
    }

    /// The log so far.
    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM.
    pub(crate) fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }

    /// Waits (bounded) for the process to exit; its exit code, if it did.
    pub(crate) async fn wait_exit(&mut self, within: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.proc.child.try_wait() {
                return Some(status.code());
            }
            // Polling another process: no signal reaches this one.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}
