//! `shadowcat forward stdio -- PROGRAM` end to end with the real binary:
//! relaying to the `mcp-stdio-fixture` server (initialize, 1000 progress
//! notifications in order, a server→client request round trip), exit codes
//! mirrored, stdin EOF closing the server's stdin and stopping a server
//! that lingers, no orphan after the relay is SIGKILLed, and the relay's
//! CPU per message over 100k messages.
//!
//! The fixture is a binary of the `benches` crate; it is found next to
//! this test's `deps` directory and built there with
//! `cargo build -p benches --bin mcp-stdio-fixture` if missing.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Every wait in this file is bounded by this.
const WAIT: Duration = Duration::from_secs(60);

/// `target/<profile>/mcp-stdio-fixture`, built on first use.
fn fixture() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir.join("mcp-stdio-fixture");
    if !path.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-q", "-p", "benches", "--bin", "mcp-stdio-fixture"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "building mcp-stdio-fixture failed");
    }
    assert!(path.exists(), "{} missing", path.display());
    path
}

/// A running `shadowcat forward stdio` with its stdout read by a thread.
struct Relay {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Relay {
    fn start(program: &[&str], extra: &[&str]) -> Relay {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shadowcat"));
        for (k, _) in std::env::vars() {
            if k.starts_with("SHADOWCAT_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .env("RUST_LOG", "warn")
            .args(["forward", "stdio"])
            .args(extra)
            .arg("--")
            .args(program)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn shadowcat");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::with_capacity(1 << 16, stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Relay {
            stdin: child.stdin.take(),
            child,
            lines,
        }
    }

    fn fixture() -> Relay {
        let path = fixture();
        Relay::start(&[path.to_str().unwrap()], &[])
    }

    fn send(&mut self, msg: &Value) {
        let stdin = self.stdin.as_mut().unwrap();
        let mut line = serde_json::to_vec(msg).unwrap();
        line.push(b'\n');
        stdin.write_all(&line).unwrap();
        stdin.flush().unwrap();
    }

    fn recv(&self) -> Value {
        let line = self
            .lines
            .recv_timeout(WAIT)
            .expect("a message from the relay in time");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits (bounded) for the relay to exit.
    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "shadowcat did not exit in time");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Dead: gone, or a zombie waiting for whoever inherited it.
fn is_dead(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let state = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.trim_start().chars().next());
    matches!(state, Some(Some('Z' | 'X')))
}

fn dies_within(pid: u32, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    while !is_dead(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    is_dead(pid)
}

fn initialize(relay: &mut Relay) {
    relay.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "forward-test", "version": "0"}}}));
    let init = relay.recv();
    assert_eq!(init["id"], 1);
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18");
    assert!(init["result"]["capabilities"]["tools"].is_object());
    relay.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
}

#[test]
fn relays_initialize_streams_and_server_requests() {
    let mut relay = Relay::fixture();
    initialize(&mut relay);

    relay.send(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}));
    let tools = relay.recv();
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "stream", "ask"]);

    const N: u64 = 1000;
    relay.send(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "stream", "arguments": {"count": N},
                   "_meta": {"progressToken": "tok-3"}}}));
    for i in 1..=N {
        let n = relay.recv();
        assert_eq!(n["method"], "notifications/progress", "{n}");
        assert_eq!(n["params"]["progressToken"], "tok-3");
        assert_eq!(n["params"]["progress"], i, "in order, none missing");
    }
    let done = relay.recv();
    assert_eq!(done["id"], 3);
    assert_eq!(
        done["result"]["content"][0]["text"],
        format!("streamed {N}")
    );

    // Server → client request, answered by the client, then the call ends.
    relay.send(&json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
        "params": {"name": "ask", "arguments": {"kind": "sampling"}}}));
    let ask = relay.recv();
    assert_eq!(ask["method"], "sampling/createMessage");
    let ask_id = ask["id"].clone();
    assert!(ask_id.is_string(), "{ask}");
    relay.send(&json!({"jsonrpc": "2.0", "id": 5, "method": "ping"}));
    assert_eq!(
        relay.recv()["id"],
        5,
        "the server still serves while it waits"
    );
    relay.send(&json!({"jsonrpc": "2.0", "id": ask_id,
        "result": {"role": "assistant", "content": {"type": "text", "text": "hi"},
                   "model": "m"}}));
    let answered = relay.recv();
    assert_eq!(answered["id"], 4);
    let text = answered["result"]["content"][0]["text"].as_str().unwrap();
    let echoed: Value = serde_json::from_str(text).unwrap();
    assert_eq!(echoed["content"]["text"], "hi");

    // EOF: the fixture exits on stdin EOF, and so does the relay, with 0.
    relay.close_stdin();
    let status = relay.wait();
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(relay.lines.recv_timeout(WAIT).is_err(), "nothing after EOF");
}

#[test]
fn exit_code_mirrors_the_program() {
    let mut plain = Relay::start(&["sh", "-c", "exit 7"], &[]);
    assert_eq!(plain.wait().code(), Some(7));
    let mut killed = Relay::start(&["sh", "-c", "kill -9 $$"], &[]);
    assert_eq!(killed.wait().code(), Some(128 + 9));
    let mut missing = Relay::start(&["/nonexistent/shadowcat-no-such-program"], &[]);
    assert_eq!(missing.wait().code(), Some(1));
}

#[test]
fn stdin_eof_closes_server_stdin_then_stops_a_server_that_lingers() {
    // Reads stdin to EOF, then ignores SIGTERM and sleeps: the relay waits
    // the exit grace (1 s), sends SIGTERM, then SIGKILL after 2 s.
    let script = r#"echo "{\"pid\":$$}"; cat > /dev/null; echo '{"eof":true}'; trap '' TERM; exec sleep 1000"#;
    let mut relay = Relay::start(&["sh", "-c", script], &["--exit-grace-secs", "1"]);
    let pid = relay.recv()["pid"].as_u64().unwrap() as u32;
    relay.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    let started = Instant::now();
    relay.close_stdin();
    assert_eq!(relay.recv()["eof"], true, "the server saw its stdin close");
    let status = relay.wait();
    assert_eq!(status.code(), Some(128 + 9), "{status:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited the grace"
    );
    assert!(dies_within(pid, WAIT), "server {pid} stopped");
}

#[test]
fn no_orphan_after_the_relay_is_sigkilled() {
    let mut relay = Relay::start(
        &["sh", "-c", r#"echo "{\"pid\":$$}"; exec sleep 1000"#],
        &[],
    );
    let pid = relay.recv()["pid"].as_u64().unwrap() as u32;
    assert!(!is_dead(pid));
    relay.child.kill().unwrap();
    let status = relay.wait();
    assert_eq!(status.signal(), Some(9));
    assert!(
        dies_within(pid, WAIT),
        "server {pid} outlived its SIGKILLed relay"
    );
}

/// CPU time of every thread of `pid`, in nanoseconds.
fn cpu_ns(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path().join("schedstat");
        if let Ok(s) = std::fs::read_to_string(path) {
            total += s.split_whitespace().next().unwrap().parse::<u64>().unwrap();
        }
    }
    total
}

#[test]
fn relay_cost_per_message() {
    const N: u64 = 100_000;
    let mut relay = Relay::fixture();
    initialize(&mut relay);
    let pid = relay.pid();

    // Streamed: N notifications server → client.
    let cpu0 = cpu_ns(pid);
    let t0 = Instant::now();
    relay.send(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "stream", "arguments": {"count": N},
                   "_meta": {"progressToken": 2}}}));
    for i in 1..=N {
        let n = relay.recv();
        assert_eq!(n["params"]["progress"], i);
    }
    assert_eq!(relay.recv()["id"], 2);
    let stream_wall = t0.elapsed();
    let stream_cpu = cpu_ns(pid) - cpu0;

    // Round trips: N pings pipelined by a writer thread.
    let mut stdin = relay.stdin.take().unwrap();
    let cpu1 = cpu_ns(pid);
    let t1 = Instant::now();
    let writer = std::thread::spawn(move || {
        let mut buf = std::io::BufWriter::new(&mut stdin);
        for i in 0..N {
            writeln!(
                buf,
                r#"{{"jsonrpc":"2.0","id":{},"method":"ping"}}"#,
                10 + i
            )
            .unwrap();
        }
        buf.flush().unwrap();
        drop(buf);
        stdin
    });
    for i in 0..N {
        assert_eq!(relay.recv()["id"], 10 + i);
    }
    let rt_wall = t1.elapsed();
    let rt_cpu = cpu_ns(pid) - cpu1;
    relay.stdin = Some(writer.join().unwrap());

    // Round trips one at a time: each message its own reads and writes.
    const SEQ: u64 = 10_000;
    let cpu2 = cpu_ns(pid);
    let t2 = Instant::now();
    for i in 0..SEQ {
        relay.send(&json!({"jsonrpc": "2.0", "id": i, "method": "ping"}));
        assert_eq!(relay.recv()["id"], i);
    }
    let seq_wall = t2.elapsed();
    let seq_cpu = cpu_ns(pid) - cpu2;

    eprintln!(
        "forward stdio relay: {N} streamed notifications in {stream_wall:?} \
         ({:.0}/s), relay CPU {:.2} µs per message; {N} pipelined round trips \
         in {rt_wall:?} ({:.0}/s), relay CPU {:.2} µs per round trip (2 messages); \
         {SEQ} sequential round trips in {seq_wall:?} ({:.0}/s), relay CPU {:.2} µs each",
        N as f64 / stream_wall.as_secs_f64(),
        stream_cpu as f64 / 1e3 / N as f64,
        N as f64 / rt_wall.as_secs_f64(),
        rt_cpu as f64 / 1e3 / N as f64,
        SEQ as f64 / seq_wall.as_secs_f64(),
        seq_cpu as f64 / 1e3 / SEQ as f64,
    );
    assert!(
        stream_cpu > 0 && rt_cpu > 0 && seq_cpu > 0,
        "the relay's CPU is measured"
    );
    relay.close_stdin();
    assert_eq!(relay.wait().code(), Some(0));
}
