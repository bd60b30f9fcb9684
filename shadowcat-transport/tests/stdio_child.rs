//! `StdioChild` lifecycle with real programs: stderr lines logged through
//! `tracing` with the caller's label, SIGTERM then SIGKILL, the whole
//! process group dying on drop, and the parent-death signal: a re-executed
//! copy of this test binary spawns a child, gets SIGKILLed, and the child
//! must die with it.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use shadowcat_transport::{ChildCommand, StderrLevel, StdioChild, StdioConfig};
use tracing_subscriber::fmt::MakeWriter;

/// Every wait in this file is bounded by this.
const BOUND: Duration = Duration::from_secs(20);
/// Set, it makes `parent_death_helper` act as the intermediate parent.
const HELPER_ENV: &str = "SHADOWCAT_STDIO_PDEATH_HELPER";
/// Precedes the child's pid in the helper's output.
const PID_MARKER: &str = "stdio-child-pid=";

fn sh(script: &str) -> ChildCommand {
    ChildCommand::new("sh").arg("-c").arg(script)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `Some(state)` from /proc/PID/stat, `None` if the pid is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Dead: gone, or a zombie waiting for whoever inherited it.
fn is_dead(pid: u32) -> bool {
    matches!(proc_state(pid), None | Some('Z' | 'X'))
}

/// Polls until `pid` is dead; false if it outlives `bound`.
async fn dies_within(pid: u32, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if is_dead(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    is_dead(pid)
}

/// A `tracing` writer collecting everything into one buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[test]
fn stderr_lines_are_logged_with_the_label_and_truncated() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(capture.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let config = StdioConfig {
        max_stderr_line_len: 100,
        stderr_label: Arc::from("sess-42"),
        stderr_level: StderrLevel::Warn,
        ..StdioConfig::default()
    };
    let script = "echo 'hello from stderr' >&2; \
                  head -c 5000 /dev/zero | tr '\\0' z >&2; echo >&2; \
                  printf 'crlf line\\r\\n' >&2; printf 'last words' >&2; echo out";
    tracing::subscriber::with_default(subscriber, || {
        runtime().block_on(async {
            let mut child = StdioChild::spawn(&sh(script), &config).unwrap();
            let mut out = child.take_stdout().unwrap();
            let line = tokio::time::timeout(BOUND, out.next_line()).await.unwrap();
            assert_eq!(line.unwrap().unwrap(), &b"out"[..]);
            let status = tokio::time::timeout(BOUND, child.wait()).await.unwrap();
            assert!(status.unwrap().success());
            tokio::time::timeout(BOUND, child.stderr_done())
                .await
                .unwrap();
        });
    });
    let text = String::from_utf8(capture.0.lock().clone()).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("shadowcat::child_stderr"))
        .collect();
    assert_eq!(lines.len(), 4, "{text}");
    for l in &lines {
        assert!(l.contains("WARN"), "{l}");
        assert!(
            l.contains("label=\"sess-42\"") || l.contains("label=sess-42"),
            "{l}"
        );
    }
    assert!(lines[0].contains("hello from stderr") && lines[0].contains("truncated=false"));
    let zs = lines[1].matches('z').count();
    assert_eq!(zs, 100, "cut to the limit: {}", lines[1]);
    assert!(lines[1].contains("truncated=true"));
    assert!(lines[2].contains("crlf line") && !lines[2].contains('\r'));
    assert!(
        lines[3].contains("last words"),
        "an unterminated last line is logged"
    );
}

#[test]
fn kill_sends_sigterm_then_sigkill_after_the_grace() {
    runtime().block_on(async {
        let config = StdioConfig {
            kill_grace: Duration::from_millis(300),
            ..StdioConfig::default()
        };
        // Polite: dies of SIGTERM.
        let mut polite = StdioChild::spawn(&sh("echo up; exec sleep 1000"), &config).unwrap();
        let mut out = polite.take_stdout().unwrap();
        assert!(out.next_line().await.unwrap().is_some());
        let status = tokio::time::timeout(BOUND, polite.kill())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.signal(), Some(libc::SIGTERM));

        // Stubborn: ignores SIGTERM (and so does its sleep), gets SIGKILL.
        let mut stubborn =
            StdioChild::spawn(&sh("trap '' TERM; echo up; exec sleep 1000"), &config).unwrap();
        let mut out = stubborn.take_stdout().unwrap();
        assert!(out.next_line().await.unwrap().is_some());
        let started = Instant::now();
        let status = tokio::time::timeout(BOUND, stubborn.kill())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "waited the grace"
        );
    });
}

#[test]
fn drop_kills_the_whole_process_group_and_reaps_the_child() {
    runtime().block_on(async {
        let mut child = StdioChild::spawn(
            &sh("sleep 1000 & echo $!; sleep 1000"),
            &StdioConfig::default(),
        )
        .unwrap();
        let leader = child.pid();
        let mut out = child.take_stdout().unwrap();
        let line = tokio::time::timeout(BOUND, out.next_line()).await.unwrap();
        let background: u32 = std::str::from_utf8(&line.unwrap().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert!(!is_dead(leader) && !is_dead(background), "both running");
        drop(out);
        drop(child);
        assert!(
            dies_within(background, BOUND).await,
            "background sleep killed"
        );
        // The leader is ours to reap: it must vanish, not stay a zombie.
        let deadline = Instant::now() + BOUND;
        while proc_state(leader).is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(proc_state(leader), None, "leader reaped");
    });
}

#[test]
fn closing_stdin_lets_a_well_behaved_child_exit() {
    runtime().block_on(async {
        let mut child =
            StdioChild::spawn(&ChildCommand::new("cat"), &StdioConfig::default()).unwrap();
        let stdin = child.take_stdin().unwrap();
        stdin.close().await.unwrap();
        let status = tokio::time::timeout(BOUND, child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success());
        assert!(child.try_wait().unwrap().is_some());
    });
}

#[test]
fn spawn_failure_is_a_typed_error() {
    runtime().block_on(async {
        let err = StdioChild::spawn(
            &ChildCommand::new("/nonexistent/shadowcat-no-such-program"),
            &StdioConfig::default(),
        )
        .unwrap_err();
        assert!(
            matches!(err, shadowcat_transport::StdioError::Spawn { .. }),
            "{err:?}"
        );
    });
}

/// The intermediate parent. Does nothing unless the parent-death test
/// started this binary with [`HELPER_ENV`] set: then it spawns a child,
/// prints the child's pid and waits for stdin to close (it is SIGKILLed
/// long before).
#[test]
fn parent_death_helper() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    let rt = runtime();
    let _guard = rt.enter();
    let child = StdioChild::spawn(
        &ChildCommand::new("sleep").arg("1000"),
        &StdioConfig::default(),
    )
    .unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{PID_MARKER}{}", child.pid()).unwrap();
    out.flush().unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

#[test]
fn child_dies_when_its_parent_is_killed_with_sigkill() {
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "parent_death_helper",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = helper.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest may print its "test … " prefix on the same line.
            if let Some((_, pid)) = line.split_once(PID_MARKER) {
                let _ = tx.send(pid.parse::<u32>().unwrap());
                break;
            }
        }
    });
    let grandchild = match rx.recv_timeout(BOUND) {
        Ok(pid) => pid,
        Err(e) => {
            let _ = helper.kill();
            let _ = helper.wait();
            panic!("the helper never reported its child: {e}");
        }
    };
    assert!(!is_dead(grandchild), "the child runs while its parent does");
    helper.kill().unwrap();
    let status = helper.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    reader.join().unwrap();
    let deadline = Instant::now() + BOUND;
    while !is_dead(grandchild) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        is_dead(grandchild),
        "child {grandchild} outlived its SIGKILLed parent"
    );
}
