//! A real `redis-server` on a free loopback port, for tests.
//!
//! `RedisServer::start()` launches the binary with persistence off, waits
//! until it answers `PING` and kills it on drop. `stop()` and `restart()`
//! (same port) are for fault tests. Without `redis-server` on `PATH` the
//! test fails with a clear message; it never passes silently.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NOT_FOUND: &str = "redis-server not found: .ci/run installs it with apt-get";

/// How long a fresh server may take to answer `PING`.
const READY_DEADLINE: Duration = Duration::from_secs(10);
/// Pause between readiness probes (polling a condition, not a fixed wait).
const PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// Ports tried before giving up (another process may grab a free port
/// between our probe and the server's bind).
const PORT_ATTEMPTS: usize = 5;

/// One `redis-server` child process bound to 127.0.0.1.
#[derive(Debug)]
pub(crate) struct RedisServer {
    port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers.
    pub(crate) fn start() -> RedisServer {
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let mut server = RedisServer {
                port,
                child: None,
                log: std::env::temp_dir().join(format!("shadowcat-test-redis-{port}.log")),
            };
            match server.launch() {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("redis-server did not start after {PORT_ATTEMPTS} ports: {last_error}");
    }

    /// `redis://127.0.0.1:<port>/`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port the server listens on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (as a crash would) and waits for it to exit.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The child may have exited already; either way it is gone after wait.
            let _ = child.kill();
            child.wait().expect("wait for redis-server");
        }
    }

    /// Starts the server again on the same port (empty: persistence is off).
    pub(crate) fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            match self.launch() {
                Ok(()) => return,
                // The old socket may linger briefly; bounded retries.
                Err(e) if Instant::now() < deadline => {
                    eprintln!(
                        "redis-server restart on {} failed, retrying: {e}",
                        self.port
                    );
                    std::thread::sleep(PROBE_INTERVAL);
                }
                Err(e) => panic!("redis-server did not restart on port {}: {e}", self.port),
            }
        }
    }

    fn launch(&mut self) -> Result<(), String> {
        let spawned = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--logfile", &self.log.to_string_lossy()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::env::var_os("CI").is_some() {
                    panic!("{NOT_FOUND} (CI is set, so .ci/run should have installed it)");
                }
                panic!("{NOT_FOUND}");
            }
            Err(e) => panic!("cannot run redis-server: {e}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if ping(self.port) {
                return Ok(());
            }
            let child = self.child.as_mut().expect("child just set");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                return Err(format!("exited with {status}: {tail}"));
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(format!("no PONG within {READY_DEADLINE:?}"));
            }
            std::thread::sleep(PROBE_INTERVAL);
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free loopback port");
    listener.local_addr().expect("local addr").port()
}

/// True when a server on `port` answers `PING` with `+PONG`.
fn ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let timeout = Some(Duration::from_millis(500));
    if stream.set_read_timeout(timeout).is_err() || stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}
