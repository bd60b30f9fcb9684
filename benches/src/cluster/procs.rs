//! The cluster's processes: redis-server with AOF persistence, three
//! `shadowcat reverse` instances and nginx, each a child that is killed
//! when its guard drops (every exit path, panics included: the guards
//! unwind with the stack).

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a child may take to accept connections after it started.
pub(crate) const READY_WITHIN: Duration = Duration::from_secs(20);
/// Pause between readiness probes (a port: no other signal exists).
const PROBE: Duration = Duration::from_millis(10);

/// A free loopback port (bound, read, released).
pub(crate) fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

/// `127.0.0.1:port`.
pub(crate) fn loopback(port: u16) -> SocketAddr {
    (std::net::Ipv4Addr::LOCALHOST, port).into()
}

/// Finds `name` on `PATH` or in the sbin folders.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// One child process; SIGKILLed and reaped on drop unless stopped before.
#[derive(Debug)]
pub(crate) struct Proc {
    what: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd`, its stdout and stderr appended to `log`.
    pub(crate) fn spawn(what: &str, mut cmd: Command, log: &Path) -> Result<Self, String> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {what} ({:?}): {e}", cmd.get_program()))?;
        Ok(Proc {
            what: what.to_owned(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// Its process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits until `addr` accepts a connection, failing early if the
    /// child exits (with the tail of its log).
    pub(crate) async fn wait_listening(&mut self, addr: SocketAddr) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "{} exited early ({status}): {}",
                    self.what,
                    log_tail(&self.log)
                ));
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not accept on {addr} within {READY_WITHIN:?}",
                    self.what
                ));
            }
            tokio::time::sleep(PROBE).await;
        }
    }

    /// SIGKILL (`kill -9`) and reap.
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // It may have exited already; either way it is gone after wait.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; reaped either way.
    pub(crate) async fn terminate(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            // Polling the child: std offers no async wait.
            tokio::time::sleep(PROBE).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The last lines of a log, for an error message.
pub(crate) fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// redis-server on a fixed loopback port with AOF persistence in its own
/// folder, so a restart keeps the data as a production Redis would.
#[derive(Debug)]
pub(crate) struct Redis {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    proc: Option<Proc>,
}

impl Redis {
    /// Starts `bin` on a free port with its data in `dir`.
    pub(crate) async fn start(bin: &Path, dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut redis = Redis {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            port: free_port()?,
            proc: None,
        };
        redis.launch().await?;
        Ok(redis)
    }

    /// `redis://127.0.0.1:PORT/`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops it (SIGTERM: the AOF is flushed) and starts it again on the
    /// same port and folder; waits until it answers.
    pub(crate) async fn restart(&mut self) -> Result<(), String> {
        if let Some(mut p) = self.proc.take() {
            p.terminate(Duration::from_secs(10)).await;
        }
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            match self.launch().await {
                Ok(()) => return Ok(()),
                // The old socket may linger briefly: bounded retries.
                Err(e) if Instant::now() < deadline => {
                    eprintln!("cluster-chaos: redis restart on {}: {e}; again", self.port);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn launch(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--appendonly", "yes"])
            .args(["--appendfsync", "everysec"])
            .args(["--save", ""])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .current_dir(&self.dir);
        let mut proc = Proc::spawn("redis-server", cmd, &self.dir.join("redis.log"))?;
        proc.wait_listening(loopback(self.port)).await?;
        self.proc = Some(proc);
        Ok(())
    }
}

/// How one Shadowcat instance is started (again, after a kill).
#[derive(Debug, Clone)]
pub(crate) struct InstanceSpec {
    /// `i0`, `i1`, `i2`.
    pub(crate) id: String,
    /// Its listener.
    pub(crate) addr: SocketAddr,
    /// The program and its arguments.
    pub(crate) bin: PathBuf,
    pub(crate) args: Vec<String>,
    /// Its working folder (config and log).
    pub(crate) dir: PathBuf,
}

/// One running Shadowcat instance.
#[derive(Debug)]
pub(crate) struct Instance {
    pub(crate) spec: InstanceSpec,
    proc: Proc,
}

/// The `[cluster]` section the harness runs with: quick takeovers.
pub(crate) const CLUSTER_CONFIG: &str = "[cluster]
lease_ttl_ms = 1000
";

/// Writes the instance's config and its command line.
pub(crate) fn instance_spec(
    bin: &Path,
    dir: &Path,
    id: &str,
    store: &str,
    upstream: SocketAddr,
    legacy: bool,
) -> Result<InstanceSpec, String> {
    let addr = loopback(free_port()?);
    let config = dir.join(format!("shadowcat-{id}.toml"));
    let mut text = String::from(
        "# one client address creates every session\n[limits]\nmax_session_creates_per_minute = 0\n",
    );
    if !legacy {
        let _ = write!(text, "\n{CLUSTER_CONFIG}");
    }
    std::fs::write(&config, text).map_err(|e| format!("{}: {e}", config.display()))?;
    let mut args = vec![
        "--config".to_owned(),
        config.display().to_string(),
        "--store".to_owned(),
        store.to_owned(),
        "reverse".to_owned(),
        "--upstream".to_owned(),
        format!("http://{upstream}/mcp"),
        "--bind".to_owned(),
        addr.to_string(),
        "--admin-bind".to_owned(),
        "off".to_owned(),
    ];
    if !legacy {
        args.extend(["--instance-id".to_owned(), id.to_owned()]);
    }
    Ok(InstanceSpec {
        id: id.to_owned(),
        addr,
        bin: bin.to_path_buf(),
        args,
        dir: dir.to_path_buf(),
    })
}

impl Instance {
    /// Starts it and waits until it accepts.
    pub(crate) async fn start(spec: InstanceSpec) -> Result<Self, String> {
        let mut cmd = Command::new(&spec.bin);
        cmd.args(&spec.args)
            .env("RUST_LOG", "info")
            .current_dir(&spec.dir);
        let log = spec.dir.join(format!("shadowcat-{}.log", spec.id));
        let mut proc = Proc::spawn(&format!("shadowcat {}", spec.id), cmd, &log)?;
        proc.wait_listening(spec.addr).await?;
        Ok(Instance { spec, proc })
    }

    /// `kill -9`, then started again with the same arguments on the same
    /// port; returns once it accepts.
    pub(crate) async fn kill_and_restart(&mut self) -> Result<(), String> {
        self.proc.kill9();
        let log = self
            .spec
            .dir
            .join(format!("shadowcat-{}.log", self.spec.id));
        let _ = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"--- kill -9; restart\n"));
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            match Instance::start(self.spec.clone()).await {
                Ok(fresh) => {
                    *self = fresh;
                    return Ok(());
                }
                // The port may still be held for a moment: bounded retries.
                Err(e) if Instant::now() < deadline => {
                    eprintln!("cluster-chaos: restart {}: {e}; again", self.spec.id);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }
}

/// nginx in front of the instances (one process, no daemon: a child we
/// kill at the end).
#[derive(Debug)]
pub(crate) struct Nginx {
    _proc: Proc,
    /// Its listener.
    pub(crate) addr: SocketAddr,
}

impl Nginx {
    /// Writes `dir/nginx.conf` for `instances` and starts `bin` with it.
    pub(crate) async fn start(
        bin: &Path,
        dir: &Path,
        instances: &[SocketAddr],
    ) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let addr = loopback(free_port()?);
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(dir, addr, instances))
            .map_err(|e| format!("{}: {e}", conf.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("-p").arg(dir).arg("-c").arg(&conf);
        let mut proc = Proc::spawn("nginx", cmd, &dir.join("stderr.log"))?;
        proc.wait_listening(addr).await?;
        Ok(Nginx { _proc: proc, addr })
    }
}

/// The nginx configuration: plain round robin over every instance, no
/// stickiness, no buffering, a dead instance skipped at connect
/// (`docs/cluster-nginx.conf` is the same, commented).
pub(crate) fn nginx_conf(root: &Path, listen: SocketAddr, instances: &[SocketAddr]) -> String {
    let r = root.display();
    let mut servers = String::new();
    for i in instances {
        let _ = writeln!(servers, "        server {i} max_fails=0;");
    }
    format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {r}/nginx.pid;
error_log {r}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log {r}/access.log;
    client_body_temp_path {r}/client_body;
    proxy_temp_path {r}/proxy;
    fastcgi_temp_path {r}/fastcgi;
    uwsgi_temp_path {r}/uwsgi;
    scgi_temp_path {r}/scgi;
    upstream shadowcat {{
{servers}    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://shadowcat;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_cache off;
            proxy_connect_timeout 1s;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 3;
            add_header X-Served-By $upstream_addr always;
        }}
    }}
}}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_conf_round_robins_every_instance_without_stickiness() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let c = nginx_conf(Path::new("/tmp/x"), "127.0.0.1:9".parse().unwrap(), &[a, b]);
        for needle in [
            "server 127.0.0.1:1 max_fails=0;",
            "server 127.0.0.1:2 max_fails=0;",
            "proxy_buffering off;",
            "proxy_http_version 1.1;",
            "proxy_next_upstream error timeout;",
            "listen 127.0.0.1:9;",
        ] {
            assert!(c.contains(needle), "{needle}");
        }
        for sticky in ["ip_hash", "hash ", "sticky", "least_conn"] {
            assert!(!c.contains(sticky), "{sticky}");
        }
    }

    /// `docs/cluster-nginx.conf` (the README's example) proxies as the
    /// harness does: every directive of the harness's `location` block
    /// is in it.
    #[test]
    fn documented_config_matches_the_tested_one() {
        let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/cluster-nginx.conf");
        let doc = std::fs::read_to_string(&doc).expect("docs/cluster-nginx.conf");
        let doc_lines: Vec<&str> = doc.lines().map(str::trim).collect();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let c = nginx_conf(Path::new("/tmp/x"), a, &[a]);
        let location = c
            .split("location / {")
            .nth(1)
            .and_then(|l| l.split('}').next())
            .expect("a location block");
        for line in location.lines().map(str::trim).filter(|l| !l.is_empty()) {
            assert!(
                doc_lines.contains(&line),
                "docs/cluster-nginx.conf lacks {line:?}"
            );
        }
        assert!(doc.contains("max_fails=0;"));
    }
}
