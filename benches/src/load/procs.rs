//! The processes under test: Shadowcat (the release binary), nginx as a
//! plain SSE reverse proxy and redis-server, started as children on
//! loopback; their CPU and RSS from /proc, Shadowcat's counters from its
//! admin `/metrics`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// What went wrong starting or reading a process.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProcError {
    /// The program could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// Which program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// It did not become ready in time.
    #[error("{what} was not ready within {within:?}")]
    NotReady {
        /// Which process.
        what: &'static str,
        /// How long we waited.
        within: Duration,
    },
    /// It exited early.
    #[error("{what} exited early ({status}); see {log}")]
    Exited {
        /// Which process.
        what: &'static str,
        /// How.
        status: std::process::ExitStatus,
        /// Its log file.
        log: String,
    },
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ProcError + '_ {
    move |source| ProcError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A free loopback port (bound, read, released).
pub(crate) fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// CPU seconds (user + system) of `pid` from /proc/PID/stat.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// Nanoseconds on CPU of every thread of `pid`, by thread id, from
/// /proc/PID/task/TID/schedstat (exact, unlike the 10 ms ticks of
/// /proc/PID/stat).
pub(crate) fn thread_cpu_ns(pid: u32, into: &mut HashMap<u32, u64>) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for entry in dir.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        let ns = std::fs::read_to_string(entry.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
        if let Some(ns) = ns {
            into.insert(tid, ns);
        }
    }
}

/// CPU seconds spent between two [`thread_cpu_ns`] readings: threads born
/// in between count whole; threads that died in between are lost (the
/// only ones that do are idle blocking-pool threads).
pub(crate) fn cpu_between(a: &HashMap<u32, u64>, b: &HashMap<u32, u64>) -> f64 {
    b.iter()
        .map(|(tid, ns)| ns.saturating_sub(a.get(tid).copied().unwrap_or(0)))
        .sum::<u64>() as f64
        / 1e9
}

/// Kernel clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> f64 {
    100.0
}

/// Resident set size of `pid` in KiB (VmRSS from /proc/PID/status).
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

/// Peak resident set size of `pid` in KiB (VmHWM), since it started or
/// since [`reset_peak`].
pub(crate) fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmHWM:")
}

/// Resets `pid`'s VmHWM to its current RSS (`5` to /proc/PID/clear_refs).
pub(crate) fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// TCP sockets with one end on loopback `port`, from /proc/net/tcp{,6}.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PortSockets {
    /// Established connections to `port` from sockets of the given
    /// processes.
    pub(crate) established: u64,
    /// Either end in TIME_WAIT, any process (such sockets have none).
    pub(crate) time_wait: u64,
}

/// Counts [`PortSockets`] for `port`, connections from `pids`' sockets.
pub(crate) fn port_sockets(port: u16, pids: &[u32]) -> PortSockets {
    let mut inodes = HashSet::new();
    for &pid in pids {
        socket_inodes(pid, &mut inodes);
    }
    let mut n = PortSockets::default();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            count_port_sockets(&text, port, &inodes, &mut n);
        }
    }
    n
}

/// The inodes of `pid`'s sockets (its fds that link to `socket:[N]`).
fn socket_inodes(pid: u32, into: &mut HashSet<u64>) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return;
    };
    for entry in dir.flatten() {
        if let Ok(link) = std::fs::read_link(entry.path())
            && let Some(inode) = link
                .to_str()
                .and_then(|l| l.strip_prefix("socket:["))
                .and_then(|l| l.strip_suffix(']'))
                .and_then(|l| l.parse().ok())
        {
            into.insert(inode);
        }
    }
}

fn count_port_sockets(table: &str, port: u16, inodes: &HashSet<u64>, n: &mut PortSockets) {
    let port_of = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(remote), Some(&state)) = (
            f.get(1).and_then(|a| port_of(a)),
            f.get(2).and_then(|a| port_of(a)),
            f.get(3),
        ) else {
            continue;
        };
        let inode = f.get(9).and_then(|i| i.parse::<u64>().ok());
        match state {
            "01" if remote == port && inode.is_some_and(|i| inodes.contains(&i)) => {
                n.established += 1;
            }
            "06" if local == port || remote == port => n.time_wait += 1,
            _ => {}
        }
    }
}

/// The first line `bin arg` prints (stdout or stderr), e.g. its version.
pub(crate) fn version(bin: &Path, arg: &str) -> Option<String> {
    let out = Command::new(bin).arg(arg).output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    Some(
        String::from_utf8_lossy(&text)
            .lines()
            .next()?
            .trim()
            .to_owned(),
    )
}

/// Number of threads of `pid`.
pub(crate) fn threads(pid: u32) -> Option<u64> {
    status_field(pid, "Threads:")
}

pub(crate) fn status_field(pid: u32, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The children of `pid` (from /proc/*/stat).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s[s.rfind(')')? + 2..].to_owned();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// A child process under test; stopped (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub(crate) struct Proc {
    what: &'static str,
    pub(crate) child: Child,
    /// Every process whose CPU and memory count (nginx: master and workers).
    pub(crate) pids: Vec<u32>,
    log: PathBuf,
}

impl Proc {
    pub(crate) fn spawn(
        what: &'static str,
        mut cmd: Command,
        log: PathBuf,
    ) -> Result<Self, ProcError> {
        let out = std::fs::File::create(&log).map_err(io_err(&log))?;
        let err = out.try_clone().map_err(io_err(&log))?;
        let program = format!("{:?}", cmd.get_program());
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| ProcError::Spawn { program, source })?;
        let pids = vec![child.id()];
        Ok(Proc {
            what,
            child,
            pids,
            log,
        })
    }

    pub(crate) fn check_alive(&mut self) -> Result<(), ProcError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(ProcError::Exited {
                what: self.what,
                status,
                log: self.log.display().to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Waits until `addr` accepts connections (bounded).
    pub(crate) async fn wait_listening(&mut self, addr: SocketAddr) -> Result<(), ProcError> {
        let within = Duration::from_secs(20);
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            self.check_alive()?;
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            // Polling a port: no signal exists for another process binding.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(ProcError::NotReady {
            what: self.what,
            within,
        })
    }

    /// CPU seconds of every counted process.
    pub(crate) fn cpu_seconds(&self) -> Option<f64> {
        self.pids.iter().map(|&p| cpu_seconds(p)).sum()
    }

    /// CPU nanoseconds of every thread of every counted process.
    pub(crate) fn thread_cpu(&self) -> HashMap<u32, u64> {
        let mut m = HashMap::new();
        for &p in &self.pids {
            thread_cpu_ns(p, &mut m);
        }
        m
    }

    /// RSS in KiB of every counted process.
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        self.pids.iter().map(|&p| rss_kib(p)).sum()
    }

    /// Peak RSS in KiB of every counted process (a sum of per-process peaks).
    pub(crate) fn peak_rss_kib(&self) -> Option<u64> {
        self.pids.iter().map(|&p| peak_rss_kib(p)).sum()
    }

    /// Resets the peak RSS of every counted process; false if one failed.
    pub(crate) fn reset_peak(&self) -> bool {
        self.pids.iter().all(|&p| reset_peak(p))
    }

    /// Every counted process.
    pub(crate) fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// Threads of every counted process.
    pub(crate) fn threads(&self) -> Option<u64> {
        self.pids.iter().map(|&p| threads(p)).sum()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Shadowcat's limits for the runs: room for the idle scenario's one
/// session and connection per stream, all from one address.
pub(crate) const SHADOWCAT_LIMITS: &str = "[limits]
max_sessions = 100000
max_connections = 100000
max_session_creates_per_minute = 0
";

/// Shadowcat under test.
#[derive(Debug)]
pub(crate) struct Shadowcat {
    /// The process.
    pub(crate) proc: Proc,
    /// Its proxy listener.
    pub(crate) addr: SocketAddr,
    /// Its admin listener.
    pub(crate) admin: SocketAddr,
    /// The redis-server it uses, when runs should watch it.
    pub(crate) redis: Option<RedisWatch>,
}

impl Shadowcat {
    /// Starts `bin reverse` in front of `upstream` with `store` (a
    /// `--store` spec), logging at warn to `dir/shadowcat-NAME.log`.
    pub(crate) async fn start(
        bin: &Path,
        dir: &Path,
        name: &str,
        upstream: SocketAddr,
        store: &str,
    ) -> Result<Self, ProcError> {
        Self::start_with(bin, dir, name, upstream, store, &[]).await
    }

    /// [`Shadowcat::start`] with `extra` arguments to `reverse`.
    pub(crate) async fn start_with(
        bin: &Path,
        dir: &Path,
        name: &str,
        upstream: SocketAddr,
        store: &str,
        extra: &[&str],
    ) -> Result<Self, ProcError> {
        let addr: SocketAddr = (
            std::net::Ipv4Addr::LOCALHOST,
            free_port().map_err(io_err(dir))?,
        )
            .into();
        let admin: SocketAddr = (
            std::net::Ipv4Addr::LOCALHOST,
            free_port().map_err(io_err(dir))?,
        )
            .into();
        let config = dir.join(format!("shadowcat-{name}.toml"));
        std::fs::write(&config, SHADOWCAT_LIMITS).map_err(io_err(&config))?;
        let mut cmd = Command::new(bin);
        cmd.env("RUST_LOG", "warn")
            .arg("--config")
            .arg(&config)
            .arg("--store")
            .arg(store)
            .arg("reverse")
            .arg("--upstream")
            .arg(format!("http://{upstream}/mcp"))
            .arg("--bind")
            .arg(addr.to_string())
            .arg("--admin-bind")
            .arg(admin.to_string())
            .args(extra)
            .current_dir(dir);
        let mut proc = Proc::spawn("shadowcat", cmd, dir.join(format!("shadowcat-{name}.log")))?;
        proc.wait_listening(addr).await?;
        proc.wait_listening(admin).await?;
        Ok(Shadowcat {
            proc,
            addr,
            admin,
            redis: None,
        })
    }

    /// Its `/metrics` text.
    pub(crate) async fn metrics(&self) -> Option<String> {
        scrape(self.admin).await
    }
}

/// GET `/metrics` from `addr`; `None` when unreachable.
pub(crate) async fn scrape(addr: SocketAddr) -> Option<String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = http::Request::get("/metrics")
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
        .await
        .ok()?
        .ok()?;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    String::from_utf8(body.to_vec()).ok()
}

/// The sum of every sample of metric `name` (any labels) in Prometheus text.
pub(crate) fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// nginx as a plain SSE reverse proxy.
#[derive(Debug)]
pub(crate) struct Nginx {
    /// The master and its workers.
    pub(crate) proc: Proc,
    /// Its listener.
    pub(crate) addr: SocketAddr,
}

/// nginx worker processes: one per core, as Shadowcat's runtime has one
/// worker thread per core.
pub(crate) const NGINX_WORKERS: usize = 2;

impl Nginx {
    /// Writes `dir/nginx/nginx.conf` and starts `bin` with it.
    pub(crate) async fn start(
        bin: &Path,
        dir: &Path,
        upstream: SocketAddr,
        max_fds: u64,
    ) -> Result<Self, ProcError> {
        let root = dir.join("nginx");
        std::fs::create_dir_all(&root).map_err(io_err(&root))?;
        let addr: SocketAddr = (
            std::net::Ipv4Addr::LOCALHOST,
            free_port().map_err(io_err(dir))?,
        )
            .into();
        let conf = root.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&root, addr, upstream, max_fds)).map_err(io_err(&conf))?;
        let mut cmd = Command::new(bin);
        cmd.arg("-p").arg(&root).arg("-c").arg(&conf);
        let mut proc = Proc::spawn("nginx", cmd, root.join("stderr.log"))?;
        proc.wait_listening(addr).await?;
        // Workers start right after the master binds; count them all.
        let deadline = Instant::now() + Duration::from_secs(10);
        let master = proc.child.id();
        loop {
            let workers = children_of(master);
            if workers.len() >= NGINX_WORKERS || Instant::now() > deadline {
                proc.pids = std::iter::once(master).chain(workers).collect();
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Nginx { proc, addr })
    }
}

/// The nginx configuration: SSE-friendly (no buffering, HTTP/1.1 keep-alive
/// to the upstream), loopback only, no logs on the request path.
pub(crate) fn nginx_conf(
    root: &Path,
    listen: SocketAddr,
    upstream: SocketAddr,
    max_fds: u64,
) -> String {
    let r = root.display();
    let mut c = String::new();
    let _ = write!(
        c,
        "daemon off;
master_process on;
worker_processes {NGINX_WORKERS};
worker_rlimit_nofile {max_fds};
pid {r}/nginx.pid;
error_log {r}/error.log warn;
events {{
    worker_connections {max_fds};
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path {r}/client_body;
    proxy_temp_path {r}/proxy;
    fastcgi_temp_path {r}/fastcgi;
    uwsgi_temp_path {r}/uwsgi;
    scgi_temp_path {r}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    upstream mcp {{
        server {upstream};
        keepalive 1024;
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://mcp;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering off;
            proxy_cache off;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
"
    );
    c
}

/// redis-server on a free loopback port, no persistence.
#[derive(Debug)]
pub(crate) struct Redis {
    /// The process.
    pub(crate) proc: Proc,
    /// Its address.
    pub(crate) addr: SocketAddr,
}

impl Redis {
    /// Starts `bin` (redis-server).
    pub(crate) async fn start(bin: &Path, dir: &Path) -> Result<Self, ProcError> {
        let port = free_port().map_err(io_err(dir))?;
        let addr: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, port).into();
        let mut cmd = Command::new(bin);
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .current_dir(dir);
        let mut proc = Proc::spawn("redis-server", cmd, dir.join("redis.log"))?;
        proc.wait_listening(addr).await?;
        Ok(Redis { proc, addr })
    }
}

/// Longest an `INFO` may take.
const INFO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest `INFO` answer read.
const INFO_MAX_BYTES: usize = 1 << 20;

/// The redis-server a target uses, watched during runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RedisWatch {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// Its process.
    pub(crate) pid: u32,
}

/// Redis at one end of a window.
#[derive(Debug, Default)]
pub(crate) struct RedisSnap {
    /// Calls per command (`cmdstat_NAME:calls=N`).
    pub(crate) calls: BTreeMap<String, u64>,
    /// Microseconds spent per command (`usec=N`).
    pub(crate) usec: BTreeMap<String, u64>,
    /// `total_reads_processed`: socket reads.
    pub(crate) reads: Option<u64>,
    /// CPU nanoseconds by thread.
    pub(crate) cpu: HashMap<u32, u64>,
}

impl RedisWatch {
    /// Reads `INFO all` and the process's CPU; `None` when Redis does not
    /// answer.
    pub(crate) async fn snap(&self) -> Option<RedisSnap> {
        let text = info(self.addr, "all")
            .await
            .map_err(|e| tracing::warn!(addr = %self.addr, error = %e, "INFO failed"))
            .ok()?;
        let mut s = parse_info(&text);
        thread_cpu_ns(self.pid, &mut s.cpu);
        Some(s)
    }
}

/// Calls per command and socket reads from an `INFO` answer.
pub(crate) fn parse_info(text: &str) -> RedisSnap {
    let mut s = RedisSnap::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("cmdstat_")
            && let Some((name, fields)) = rest.split_once(':')
        {
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key))
                    .and_then(|v| v.trim().parse().ok())
            };
            if let Some(calls) = field("calls=") {
                s.calls.insert(name.to_owned(), calls);
            }
            if let Some(usec) = field("usec=") {
                s.usec.insert(name.to_owned(), usec);
            }
        } else if let Some(v) = line.strip_prefix("total_reads_processed:") {
            s.reads = v.trim().parse().ok();
        }
    }
    s
}

/// `INFO section` over a fresh connection (RESP, one bulk string back).
async fn info(addr: SocketAddr, section: &str) -> std::io::Result<String> {
    let ask = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut io = BufReader::new(tcp);
        let cmd = format!("*2\r\n$4\r\nINFO\r\n${}\r\n{section}\r\n", section.len());
        io.get_mut().write_all(cmd.as_bytes()).await?;
        let mut head = String::new();
        io.read_line(&mut head).await?;
        let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
        let len: usize = head
            .strip_prefix('$')
            .and_then(|l| l.trim_end().parse().ok())
            .ok_or_else(|| bad(format!("unexpected INFO answer {:?}", head.trim_end())))?;
        if len > INFO_MAX_BYTES {
            return Err(bad(format!("INFO answer of {len} bytes")));
        }
        let mut body = vec![0; len + 2];
        io.read_exact(&mut body).await?;
        body.truncate(len);
        String::from_utf8(body).map_err(|e| bad(e.to_string()))
    };
    tokio::time::timeout(INFO_TIMEOUT, ask)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "INFO timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# Stats\r\ntotal_reads_processed:120\r\n# Commandstats\r\n\
        cmdstat_evalsha:calls=10,usec=80,usec_per_call=8.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_info:calls=4,usec=52,usec_per_call=13.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_client|list:calls=1,usec=5,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\n";

    #[test]
    fn info_is_parsed() {
        let s = parse_info(INFO);
        assert_eq!(s.reads, Some(120));
        assert_eq!(s.calls.get("evalsha"), Some(&10));
        assert_eq!(s.calls.get("client|list"), Some(&1));
        assert_eq!(s.calls.len(), 3);
        assert_eq!(s.usec.get("evalsha"), Some(&80));
    }

    #[tokio::test]
    async fn info_reads_a_bulk_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let want = b"*2\r\n$4\r\nINFO\r\n$3\r\nall\r\n";
            let mut got = [0u8; 23];
            s.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, want);
            let body = "cmdstat_get:calls=3\r\n";
            s.write_all(format!("${}\r\n{body}\r\n", body.len()).as_bytes())
                .await
                .unwrap();
        });
        let text = info(addr, "all").await.unwrap();
        assert_eq!(parse_info(&text).calls.get("get"), Some(&3));
        server.await.unwrap();
    }

    #[test]
    fn metric_sums_over_labels() {
        let text = "# TYPE shadowcat_writer_batches counter\nshadowcat_writer_batches{store=\"redb\"} 12\nshadowcat_writer_batches_other 5\nshadowcat_writer_written{store=\"redb\"} 40\nshadowcat_writer_written{store=\"x\"} 2\n";
        assert_eq!(metric_sum(text, "shadowcat_writer_batches"), Some(12.0));
        assert_eq!(metric_sum(text, "shadowcat_writer_written"), Some(42.0));
        assert_eq!(metric_sum(text, "shadowcat_missing"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_some_and(|s| s >= 0.0));
        assert!(rss_kib(me).is_some_and(|k| k > 0));
        assert!(threads(me).is_some_and(|t| t >= 1));
        let mut a = HashMap::new();
        thread_cpu_ns(me, &mut a);
        assert!(!a.is_empty());
        // Spin until this thread's own CPU clock has advanced 20 ms: wall time says nothing on
        // a loaded machine. Bounded by a generous wall-clock deadline.
        let cpu_now = || {
            let ns = std::fs::read_to_string("/proc/thread-self/schedstat")
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .expect("/proc/thread-self/schedstat is readable");
            Duration::from_nanos(ns)
        };
        let start_cpu = cpu_now();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut x = 0u64;
        while cpu_now() - start_cpu < Duration::from_millis(20) {
            assert!(
                Instant::now() < deadline,
                "could not get 20 ms of CPU in 30 s"
            );
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        let mut b = HashMap::new();
        thread_cpu_ns(me, &mut b);
        assert!(cpu_between(&a, &b) >= 0.01, "spun 20 ms on CPU");
    }

    #[test]
    fn port_sockets_are_counted() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 11 1
   1: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 12 1
   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 13 1
   3: 0100007F:C354 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 14 1
   4: 0100007F:C351 0100007F:1F90 06 00000000:00000000 00:00000000 00000000     0        0 0 3
   5: 0100007F:1F90 0100007F:C352 06 00000000:00000000 00:00000000 00000000     0        0 0 3
   6: 0100007F:C353 0100007F:1F91 06 00000000:00000000 00:00000000 00000000     0        0 0 3
";
        let mut n = PortSockets::default();
        let mine: HashSet<u64> = [12, 13].into();
        count_port_sockets(table, 0x1F90, &mine, &mut n);
        assert_eq!(
            n,
            PortSockets {
                established: 1,
                time_wait: 2
            }
        );
        // A live connection of this process is found through its fd.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let live = port_sockets(port, &[std::process::id()]);
        assert_eq!(live.established, 1);
    }

    #[test]
    fn own_peak_rss_is_readable() {
        let me = std::process::id();
        assert!(peak_rss_kib(me).is_some_and(|k| k > 0));
    }

    #[test]
    fn nginx_conf_is_sse_friendly() {
        let c = nginx_conf(
            Path::new("/tmp/x"),
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            4096,
        );
        for needle in [
            "proxy_buffering off;",
            "proxy_http_version 1.1;",
            "proxy_set_header Connection \"\";",
            "listen 127.0.0.1:1;",
            "server 127.0.0.1:2;",
            "keepalive 1024;",
        ] {
            assert!(c.contains(needle), "{needle}");
        }
    }
}
