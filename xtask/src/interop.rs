//! `cargo xtask interop`: the ecosystem's own MCP clients and servers run
//! through a real `shadowcat` binary, everything on loopback.
//!
//! Set-up: `npm ci` into `interop/node_modules` (pinned by the committed
//! lockfile), a venv in `interop/.venv` with the pinned Python SDK, and
//! `cargo build -p shadowcat-cli`. Each installation is redone only when its
//! pin file changed. Then every scenario in [`SCENARIOS`] runs with its own
//! deadline, its own free ports and its own children; each prints one line
//! (name, PASS/FAIL/SKIP, duration) and the suite ends with `N passed, M
//! failed`. Children are killed when their scenario ends, however it ends;
//! they stay in our process group, so a Ctrl-C reaches them too. Logs go to
//! `target/interop/<scenario>/`.
//!
//! Adding a scenario: write `fn(&mut Ctx) -> Result<String, String>` (the
//! `Ok` text is a short summary for its line) and add a row to
//! [`SCENARIOS`]. `Ctx` starts servers (`ts_server`, `ts_server_with`,
//! `everything_http`), a Shadowcat in front of any upstream
//! (`shadowcat(&["--upstream", url])`; the stdio bridge will be
//! `&["--upstream-cmd", "--", ...]`; `shadowcat_at` picks the store, port
//! and log name and returns its admin port for `/metrics`) and runs clients
//! (`node`, `python`, `run`, or `spawn` + `wait_line` + `finish` for a
//! client the scenario acts on mid-run). `INTEROP_ONLY=a,b` runs only the
//! named scenarios. The conformance tracks (`interop_conformance.rs`, a
//! child module) run the suite against our fixture server and print the
//! per-track table at the end. The OAuth scenarios and their helpers (authorization
//! server, resource server, OAuth client) are in `interop_oauth.rs`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{cargo, root};

#[path = "interop_conformance.rs"]
mod conformance;
#[path = "interop_legacy.rs"]
mod legacy;
#[path = "interop_listen.rs"]
mod listen;
#[path = "interop_oauth.rs"]
mod oauth;
#[path = "interop_tls.rs"]
mod tls;

/// Longest one scenario may take, children included.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest a set-up step (npm ci, pip install, cargo build) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(600);
/// How often a wait checks a child process or a port again.
const POLL: Duration = Duration::from_millis(20);
/// Bytes of a child's log shown when it fails.
const LOG_TAIL: usize = 1500;

/// Oldest Node the pinned packages run on (with the `fs.globSync` preload).
const MIN_NODE: u32 = 20;

/// Which external runtimes a scenario needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Node,
    NodeAndPython,
}

/// One line of the suite.
#[derive(Debug)]
struct Scenario {
    name: &'static str,
    needs: Needs,
    run: fn(&mut Ctx) -> Result<String, String>,
}

/// Every scenario, in run order.
const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "ts-sdk",
        needs: Needs::Node,
        run: ts_sdk,
    },
    Scenario {
        name: "ts-sdk-resume",
        needs: Needs::Node,
        run: ts_sdk_resume,
    },
    Scenario {
        name: "ts-sdk-no-eventstore-resume",
        needs: Needs::Node,
        run: ts_sdk_no_eventstore_resume,
    },
    Scenario {
        name: "ts-sdk-cut-before-first-message",
        needs: Needs::Node,
        run: ts_sdk_cut_before_first_message,
    },
    Scenario {
        name: "ts-sdk-proxy-restart",
        needs: Needs::Node,
        run: ts_sdk_proxy_restart,
    },
    Scenario {
        name: "ts-sdk-chaos-no-eventstore",
        needs: Needs::Node,
        run: ts_sdk_chaos_no_eventstore,
    },
    Scenario {
        name: "ts-sdk-chaos-small-buffer",
        needs: Needs::Node,
        run: ts_sdk_chaos_small_buffer,
    },
    Scenario {
        name: "ts-sdk-tls-h1",
        needs: Needs::Node,
        run: tls::ts_sdk_tls_h1,
    },
    Scenario {
        name: "ts-sdk-tls-h2",
        needs: Needs::Node,
        run: tls::ts_sdk_tls_h2,
    },
    Scenario {
        name: "ts-sdk-tls-h2-resume",
        needs: Needs::Node,
        run: tls::ts_sdk_tls_h2_resume,
    },
    Scenario {
        name: "ts-sdk-chaos-tls",
        needs: Needs::Node,
        run: tls::ts_sdk_chaos_tls,
    },
    Scenario {
        name: "everything-http",
        needs: Needs::Node,
        run: everything_http,
    },
    Scenario {
        name: "everything-stdio",
        needs: Needs::Node,
        run: everything_stdio,
    },
    Scenario {
        name: "conformance-stable",
        needs: Needs::Node,
        run: conformance::conformance_stable,
    },
    Scenario {
        name: "conformance-next",
        needs: Needs::Node,
        run: conformance::conformance_next,
    },
    Scenario {
        name: "inspector-cli",
        needs: Needs::Node,
        run: inspector_cli,
    },
    Scenario {
        name: "oauth-direct",
        needs: Needs::Node,
        run: oauth::oauth_direct,
    },
    Scenario {
        name: "oauth-mode",
        needs: Needs::Node,
        run: oauth::oauth_mode,
    },
    Scenario {
        name: "oauth-scope-map",
        needs: Needs::Node,
        run: oauth::oauth_scope_map,
    },
    Scenario {
        name: "oauth-opaque",
        needs: Needs::Node,
        run: oauth::oauth_opaque,
    },
    Scenario {
        name: "oauth-negative",
        needs: Needs::Node,
        run: oauth::oauth_negative,
    },
    Scenario {
        name: "oauth-passthrough",
        needs: Needs::Node,
        run: oauth::oauth_passthrough,
    },
    Scenario {
        name: "python-sdk",
        needs: Needs::NodeAndPython,
        run: python_sdk,
    },
    Scenario {
        name: "python-sdk-resume",
        needs: Needs::NodeAndPython,
        run: python_sdk_resume,
    },
    Scenario {
        name: "python-sdk-listen",
        needs: Needs::NodeAndPython,
        run: listen::python_sdk_listen,
    },
    Scenario {
        name: "legacy-client-http",
        needs: Needs::Node,
        run: legacy::legacy_client_http,
    },
    Scenario {
        name: "legacy-client-stdio",
        needs: Needs::Node,
        run: legacy::legacy_client_stdio,
    },
    Scenario {
        name: "legacy-client-fallback",
        needs: Needs::Node,
        run: legacy::legacy_client_fallback,
    },
    Scenario {
        name: "legacy-client-resume",
        needs: Needs::Node,
        run: legacy::legacy_client_resume,
    },
    Scenario {
        name: "legacy-server-ts-client",
        needs: Needs::Node,
        run: legacy::legacy_server_ts_client,
    },
    Scenario {
        name: "legacy-server-python",
        needs: Needs::NodeAndPython,
        run: legacy::legacy_server_python,
    },
    Scenario {
        name: "legacy-server-drop",
        needs: Needs::Node,
        run: legacy::legacy_server_drop,
    },
    Scenario {
        name: "legacy-both-ways",
        needs: Needs::Node,
        run: legacy::legacy_both_ways,
    },
];

/// `cargo xtask interop`.
pub(crate) fn run() -> Result<(), String> {
    let start = Instant::now();
    let in_ci = in_ci();
    let node = tool_version("node").is_some_and(|v| node_major(&v) >= Some(MIN_NODE))
        && tool_version("npm").is_some();
    let python = tool_version("python3").is_some();
    if !node {
        missing(
            &format!("node {MIN_NODE} or newer with npm"),
            "every interop scenario",
            in_ci,
        )?;
        eprintln!("0 passed, 0 failed, {} skipped", SCENARIOS.len());
        return Ok(());
    }
    if !python {
        missing("python3", "the Python SDK scenarios", in_ci)?;
    }

    let selected = selected_scenarios(std::env::var("INTEROP_ONLY").ok().as_deref())?;
    let paths = Paths::new();
    npm_install(&paths)?;
    if python {
        python_venv(&paths)?;
    }
    build_shadowcat()?;
    tls::build_cert_tool()?;

    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for scenario in &selected {
        if scenario.needs == Needs::NodeAndPython && !python {
            eprintln!(
                "{:<NAME_WIDTH$} SKIP      -  python3 not found",
                scenario.name
            );
            skipped += 1;
            continue;
        }
        let began = Instant::now();
        let outcome = run_scenario(&paths, scenario);
        let secs = began.elapsed().as_secs_f64();
        match outcome {
            Ok(summary) => {
                passed += 1;
                eprintln!(
                    "{:<NAME_WIDTH$} PASS {secs:>6.1}s  {summary}",
                    scenario.name
                );
            }
            Err(why) => {
                failed += 1;
                eprintln!("{:<NAME_WIDTH$} FAIL {secs:>6.1}s", scenario.name);
                for line in why.lines() {
                    eprintln!("    {line}");
                }
                eprintln!("    logs: {}", paths.scenario_dir(scenario.name).display());
            }
        }
    }
    let ran: Vec<&str> = selected.iter().map(|s| s.name).collect();
    conformance::print_table(&paths, &ran);
    eprintln!(
        "interop: {:.1}s in all, logs in {}",
        start.elapsed().as_secs_f64(),
        paths.logs.display()
    );
    if skipped > 0 {
        eprintln!("{passed} passed, {failed} failed, {skipped} skipped");
    } else {
        eprintln!("{passed} passed, {failed} failed");
    }
    if failed > 0 {
        Err(format!("{failed} interop scenario(s) failed"))
    } else {
        Ok(())
    }
}

/// Width of the name column of a scenario's line.
const NAME_WIDTH: usize = 28;

/// The scenarios to run: all, or those named in `only` (`INTEROP_ONLY`,
/// comma-separated).
fn selected_scenarios(only: Option<&str>) -> Result<Vec<&'static Scenario>, String> {
    let Some(only) = only.filter(|o| !o.trim().is_empty()) else {
        return Ok(SCENARIOS.iter().collect());
    };
    let names: Vec<&str> = only.split(',').map(str::trim).collect();
    if let Some(unknown) = names
        .iter()
        .find(|n| !SCENARIOS.iter().any(|s| s.name == **n))
    {
        return Err(format!("INTEROP_ONLY names no scenario `{unknown}`"));
    }
    Ok(SCENARIOS
        .iter()
        .filter(|s| names.contains(&s.name))
        .collect())
}

fn run_scenario(paths: &Paths, scenario: &Scenario) -> Result<String, String> {
    let dir = paths.scenario_dir(scenario.name);
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
    }
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut ctx = Ctx {
        paths: paths.clone(),
        dir,
        deadline: Instant::now() + SCENARIO_TIMEOUT,
        children: Vec::new(),
    };
    (scenario.run)(&mut ctx)
    // `ctx` drops here: every child of the scenario is killed.
}

/// `CI` set to anything but empty, `0` or `false`.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// A required runtime is missing: an error in CI, a loud skip elsewhere.
fn missing(what: &str, skipped: &str, in_ci: bool) -> Result<(), String> {
    if in_ci {
        return Err(format!(
            "{what} not found on PATH: the interop suite needs them in CI (install them, or see interop/README.md)"
        ));
    }
    let bar = "!".repeat(72);
    eprintln!(
        "{bar}\n!! interop: {what} not found on PATH: SKIPPING {skipped}.\n!! This is not a pass. CI (CI=true) fails here instead.\n{bar}"
    );
    Ok(())
}

/// `tool --version`, printed, if the tool runs.
fn tool_version(tool: &str) -> Option<String> {
    let out = Command::new(tool).arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let mut version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if version.is_empty() {
        version = String::from_utf8_lossy(&out.stderr).trim().to_string();
    }
    eprintln!("interop: {tool} {version}");
    Some(version)
}

/// `v20.20.2` -> 20.
fn node_major(version: &str) -> Option<u32> {
    version.strip_prefix('v')?.split('.').next()?.parse().ok()
}

/// Where everything lives.
#[derive(Debug, Clone)]
struct Paths {
    interop: PathBuf,
    node_modules: PathBuf,
    venv_python: PathBuf,
    shadowcat: PathBuf,
    logs: PathBuf,
}

impl Paths {
    fn new() -> Self {
        let root = root();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|t| if t.is_absolute() { t } else { root.join(t) })
            .unwrap_or_else(|| root.join("target"));
        let interop = root.join("interop");
        Paths {
            node_modules: interop.join("node_modules"),
            venv_python: interop.join(".venv").join("bin").join("python"),
            shadowcat: target.join("debug").join("shadowcat"),
            logs: target.join("interop"),
            interop,
        }
    }

    fn scenario_dir(&self, name: &str) -> PathBuf {
        self.logs.join(name)
    }

    fn module(&self, rel: &str) -> String {
        self.node_modules.join(rel).display().to_string()
    }

    fn file(&self, rel: &str) -> String {
        self.interop.join(rel).display().to_string()
    }
}

/// `npm ci` from the committed lockfile, unless `node_modules` already
/// holds exactly that lockfile's install.
fn npm_install(paths: &Paths) -> Result<(), String> {
    let lock = paths.interop.join("package-lock.json");
    let stamp = paths.node_modules.join(".interop-installed-lock");
    if same_contents(&lock, &stamp) {
        return Ok(());
    }
    let mut npm = Command::new("npm");
    npm.current_dir(&paths.interop)
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]);
    setup_step("npm ci (interop/node_modules)", npm, &paths.logs)?;
    fs::copy(&lock, &stamp).map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    Ok(())
}

/// A venv in `interop/.venv` with `interop/py/requirements.txt`, unless it
/// already has exactly those.
fn python_venv(paths: &Paths) -> Result<(), String> {
    let requirements = paths.interop.join("py").join("requirements.txt");
    let venv = paths.interop.join(".venv");
    let stamp = venv.join(".interop-installed-requirements");
    if paths.venv_python.exists() && same_contents(&requirements, &stamp) {
        return Ok(());
    }
    if !paths.venv_python.exists() {
        let mut create = Command::new("python3");
        create.args(["-m", "venv"]).arg(&venv);
        setup_step("python3 -m venv interop/.venv", create, &paths.logs)?;
    }
    let mut pip = Command::new(&paths.venv_python);
    pip.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
        "--only-binary=:all:",
        "-r",
    ])
    .arg(&requirements);
    setup_step("pip install (interop/.venv)", pip, &paths.logs)?;
    fs::copy(&requirements, &stamp)
        .map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    Ok(())
}

fn build_shadowcat() -> Result<(), String> {
    let mut build = cargo();
    build.args(["build", "--locked", "--package", "shadowcat-cli"]);
    crate::step("build shadowcat", build)
}

fn same_contents(a: &Path, b: &Path) -> bool {
    match (fs::read(a), fs::read(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Runs a set-up command with its output in a log file, bounded in time.
fn setup_step(name: &str, mut cmd: Command, logs: &Path) -> Result<(), String> {
    eprintln!("==> {name}");
    let start = Instant::now();
    fs::create_dir_all(logs).map_err(|e| format!("cannot create {}: {e}", logs.display()))?;
    let log = logs.join("setup.log");
    let out = File::options()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    let child = cmd
        .spawn()
        .map_err(|e| format!("{name}: could not start: {e}"))?;
    let mut proc = Proc {
        name: name.to_string(),
        child,
    };
    let status = proc.wait_until(start + SETUP_TIMEOUT)?;
    eprintln!("<== {name}: {:.1}s", start.elapsed().as_secs_f64());
    if status.success() {
        Ok(())
    } else {
        Err(format!("{name} failed ({status}):\n{}", tail(&log)))
    }
}

/// A child process that is killed when dropped.
#[derive(Debug)]
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    /// Waits for the child to exit; kills it at `deadline`.
    fn wait_until(&mut self, deadline: Instant) -> Result<ExitStatus, String> {
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) => {}
                Err(e) => return Err(format!("{}: wait failed: {e}", self.name)),
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!("{}: timed out, killed", self.name));
            }
            std::thread::sleep(POLL);
        }
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn kill(&mut self) {
        if self.exited().is_none() {
            // Already gone between the check and the kill is fine.
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One scenario's world: its deadline, log folder and children.
#[derive(Debug)]
struct Ctx {
    paths: Paths,
    dir: PathBuf,
    deadline: Instant,
    children: Vec<Proc>,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        // Clients and Shadowcat before the servers behind them.
        while let Some(mut child) = self.children.pop() {
            child.kill();
        }
    }
}

impl Ctx {
    fn out_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.out"))
    }

    fn err_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.err"))
    }

    /// The tails of a child's stdout and stderr.
    fn tails(&self, name: &str) -> String {
        let mut text = String::new();
        for (label, path) in [
            ("stdout", self.out_path(name)),
            ("stderr", self.err_path(name)),
        ] {
            let t = tail(&path);
            if !t.is_empty() {
                let _ = writeln!(text, "--- {name} {label}:\n{t}");
            }
        }
        text.trim_end().to_string()
    }

    /// Starts a child with stdout in `<name>.out` and stderr in
    /// `<name>.err`; it runs until the scenario ends.
    fn spawn(&mut self, name: &str, mut cmd: Command) -> Result<usize, String> {
        let create = |path: PathBuf| {
            File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(create(self.out_path(name))?))
            .stderr(Stdio::from(create(self.err_path(name))?))
            .env("NO_COLOR", "1");
        let child = cmd
            .spawn()
            .map_err(|e| format!("{name}: could not start {cmd:?}: {e}"))?;
        self.children.push(Proc {
            name: name.to_string(),
            child,
        });
        Ok(self.children.len() - 1)
    }

    /// Runs a child to completion (bounded by the scenario's deadline);
    /// returns its stdout, or an error with the tails of its output.
    fn run(&mut self, name: &str, cmd: Command) -> Result<String, String> {
        let index = self.spawn(name, cmd)?;
        self.finish(index)
    }

    /// Waits for a spawned child to exit (bounded by the scenario's
    /// deadline); returns its stdout, or an error with the tails of its
    /// output.
    fn finish(&mut self, index: usize) -> Result<String, String> {
        let name = self.children[index].name.clone();
        let name = name.as_str();
        let deadline = self.deadline;
        let waited = self.children[index].wait_until(deadline);
        match waited {
            Ok(status) if status.success() => {
                Ok(fs::read_to_string(self.out_path(name)).unwrap_or_default())
            }
            Ok(status) => Err(format!(
                "{name} exited with {status}:\n{}",
                self.tails(name)
            )),
            Err(e) => Err(format!("{e}:\n{}", self.tails(name))),
        }
    }

    /// Waits until `port` accepts connections, or the child exits, or the
    /// deadline passes.
    fn wait_port(&mut self, index: usize, port: u16) -> Result<(), String> {
        let ready_by = self.deadline;
        loop {
            // Exited first: a port answering after our child died is not ours.
            if let Some(status) = self.children[index].exited() {
                let name = self.children[index].name.clone();
                return Err(format!(
                    "{name} exited with {status} before listening on {port}:\n{}",
                    self.tails(&name)
                ));
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= ready_by {
                let name = &self.children[index].name;
                return Err(format!("{name} did not listen on {port} in time"));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until a spawned child prints a stdout line starting with
    /// `prefix`, or exits, or the deadline passes; returns the line.
    fn wait_line(&mut self, index: usize, prefix: &str) -> Result<String, String> {
        let name = self.children[index].name.clone();
        let out = self.out_path(&name);
        loop {
            // Read before checking the exit, so a line printed just before
            // exiting still counts.
            let text = fs::read_to_string(&out).unwrap_or_default();
            // Only whole lines: the child may be mid-write.
            if let Some(line) = text
                .split_inclusive('\n')
                .filter(|l| l.ends_with('\n'))
                .find(|l| l.starts_with(prefix))
            {
                return Ok(line.trim_end().to_string());
            }
            if let Some(status) = self.children[index].exited() {
                return Err(format!(
                    "{name} exited with {status} before printing `{prefix}`:\n{}",
                    self.tails(&name)
                ));
            }
            if Instant::now() >= self.deadline {
                return Err(format!("{name} did not print `{prefix}` in time"));
            }
            std::thread::sleep(POLL);
        }
    }

    fn node(&self) -> Command {
        let mut cmd = Command::new("node");
        cmd.current_dir(&self.paths.interop);
        cmd
    }

    /// The TypeScript SDK server (`interop/ts/server.mjs`); returns its URL.
    fn ts_server(&mut self) -> Result<String, String> {
        self.ts_server_with(&[])
    }

    /// The TypeScript SDK server with `flags` (`--no-event-store`); its
    /// stdout (`ts-server.out`) has a `resume ID` line per resume GET.
    fn ts_server_with(&mut self, flags: &[&str]) -> Result<String, String> {
        let port = free_port()?;
        let mut cmd = self.node();
        cmd.arg(self.paths.file("ts/server.mjs"))
            .arg(port.to_string())
            .args(flags);
        let index = self.spawn("ts-server", cmd)?;
        self.wait_port(index, port)?;
        Ok(format!("http://127.0.0.1:{port}/mcp"))
    }

    /// server-everything over Streamable HTTP, pinned to 127.0.0.1 by the
    /// loopback preload; returns its URL.
    fn everything_http(&mut self) -> Result<String, String> {
        let port = free_port()?;
        let mut cmd = self.node();
        cmd.arg("--import")
            .arg(self.paths.file("preload/loopback.mjs"))
            .arg(
                self.paths
                    .module("@modelcontextprotocol/server-everything/dist/index.js"),
            )
            .arg("streamableHttp")
            .env("PORT", port.to_string());
        let index = self.spawn("server-everything", cmd)?;
        self.wait_port(index, port)?;
        Ok(format!("http://127.0.0.1:{port}/mcp"))
    }

    /// A Shadowcat (memory store) in front of `upstream` (e.g.
    /// `["--upstream", url]`); returns its URL once `/healthz` answers.
    fn shadowcat(&mut self, upstream: &[&str]) -> Result<String, String> {
        let port = free_port()?;
        Ok(self
            .shadowcat_at("shadowcat", "memory", port, upstream)?
            .url)
    }

    /// A Shadowcat named `name` (its log files) on `store` and `port`, in
    /// front of `upstream`; returned once `/healthz` answers.
    fn shadowcat_at(
        &mut self,
        name: &str,
        store: &str,
        port: u16,
        upstream: &[&str],
    ) -> Result<Proxy, String> {
        let admin = free_port()?;
        let mut cmd = Command::new(&self.paths.shadowcat);
        cmd.current_dir(&self.dir)
            .args(["--store", store, "reverse"])
            .arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--admin-bind")
            .arg(format!("127.0.0.1:{admin}"))
            .args(upstream)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        let index = self.spawn(name, cmd)?;
        // The admin listener serves only once the proxy is bound.
        self.wait_port(index, admin)?;
        let health = http_get(admin, "/healthz")?;
        if !health.starts_with("HTTP/1.1 200") {
            return Err(format!("{name} /healthz: {health}"));
        }
        Ok(Proxy {
            url: format!("http://127.0.0.1:{port}/mcp"),
            admin,
            index,
        })
    }

    /// `ts/relay.mjs` in front of the loopback port `target`, cutting with
    /// `seed`; returns its URL. Its stdout (`relay.out`) has a `cut` line
    /// per cut.
    fn relay(&mut self, target: u16, seed: u32) -> Result<String, String> {
        let port = free_port()?;
        let mut cmd = self.node();
        cmd.arg(self.paths.file("ts/relay.mjs"))
            .arg(port.to_string())
            .arg(target.to_string())
            .arg(seed.to_string());
        let index = self.spawn("relay", cmd)?;
        self.wait_line(index, "listening ")?;
        Ok(format!("http://127.0.0.1:{port}/mcp"))
    }

    /// `node interop/ts/client.mjs CHECK URL`; returns its last line.
    fn ts_client(&mut self, check: &str, url: &str) -> Result<String, String> {
        let cmd = self.ts_client_cmd(check, url, &[]);
        let out = self.run(&format!("ts-client-{check}"), cmd)?;
        Ok(last_line(&out))
    }

    /// `node interop/ts/client.mjs CHECK URL SETTINGS...`.
    fn ts_client_cmd(&self, check: &str, url: &str, settings: &[&str]) -> Command {
        let mut cmd = self.node();
        cmd.arg(self.paths.file("ts/client.mjs"))
            .args([check, url])
            .args(settings);
        cmd
    }

    /// The venv's python running `interop/py/SCRIPT ARGS...`.
    fn python(&self, script: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.paths.venv_python);
        cmd.current_dir(&self.paths.interop)
            .arg(self.paths.file(script))
            .args(args);
        cmd
    }
}

/// A running Shadowcat.
#[derive(Debug)]
struct Proxy {
    /// Its MCP endpoint.
    url: String,
    /// Its admin port (`/healthz`, `/metrics`).
    admin: u16,
    /// Its index in `Ctx::children`.
    index: usize,
}

/// A free loopback port (the OS picks it; the listener is dropped at once).
fn free_port() -> Result<u16, String> {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

/// A minimal HTTP/1.1 GET on loopback; returns the whole response.
fn http_get(port: u16, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("GET {path}: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("GET {path}: {e}"))?;
    Ok(response)
}

/// The last `LOG_TAIL` bytes of a log, at a line start where possible.
fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    if text.len() <= LOG_TAIL {
        return text.trim_end().to_string();
    }
    let mut start = text.len() - LOG_TAIL;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let cut = &text[start..];
    let cut = cut.find('\n').map_or(cut, |i| &cut[i + 1..]);
    format!("…\n{}", cut.trim_end())
}

/// A Shadowcat's `/metrics` text.
fn metrics(admin: u16) -> Result<String, String> {
    let response = http_get(admin, "/metrics")?;
    if !response.starts_with("HTTP/1.1 200") {
        return Err(format!("/metrics: {}", last_line(&response)));
    }
    Ok(response)
}

/// The value of one series (`name` or `name{labels}`, exactly as the
/// exposition prints it) in a `/metrics` text; a series never recorded
/// is 0.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .find_map(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Checks a Shadowcat's client-resume counters: `buffer` and `upstream`
/// resumes as expected (`None`: any number), and never a resume gap.
fn check_resumes(admin: u16, buffer: Option<f64>, upstream: Option<f64>) -> Result<String, String> {
    let text = metrics(admin)?;
    let from_buffer = metric(&text, r#"shadowcat_client_resumes_total{from="buffer"}"#);
    let from_upstream = metric(&text, r#"shadowcat_client_resumes_total{from="upstream"}"#);
    let gaps = metric(&text, "shadowcat_resume_gaps_total");
    let seen = format!(
        "resumes: {from_buffer} from the buffer, {from_upstream} from the upstream, {gaps} gaps"
    );
    let wrong = |want: Option<f64>, got: f64| want.is_some_and(|w| w != got);
    if wrong(buffer, from_buffer) || wrong(upstream, from_upstream) || gaps != 0.0 {
        return Err(format!(
            "Shadowcat's metrics say {seen}; expected {} from the buffer, {} from the upstream, 0 gaps",
            buffer.map_or("any".into(), |b| b.to_string()),
            upstream.map_or("any".into(), |u| u.to_string()),
        ));
    }
    Ok(seen)
}

/// The `resume ID` lines the TS SDK server printed (one per GET with
/// Last-Event-ID it received).
fn upstream_resumes(ctx: &Ctx) -> Vec<String> {
    fs::read_to_string(ctx.out_path("ts-server"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("resume "))
        .map(str::to_string)
        .collect()
}

fn last_line(out: &str) -> String {
    out.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

// ---- scenarios ------------------------------------------------------------

/// TS SDK client ↔ TS SDK server (stateful, InMemoryEventStore) through
/// Shadowcat: initialize, tools/list, tools/call with progress, resources,
/// prompts, DELETE (then the old session id gets 404).
fn ts_sdk(ctx: &mut Ctx) -> Result<String, String> {
    let upstream = ctx.ts_server()?;
    let proxy = ctx.shadowcat(&["--upstream", &upstream])?;
    ctx.ts_client("sdk-server", &proxy)
}

/// The same client with the SDK's own reconnection: the client cuts its
/// connection to Shadowcat mid-stream (after 3 events of a tools/call), the
/// SDK resumes with GET + Last-Event-ID, and every progress notification
/// arrives exactly once, in order.
fn ts_sdk_resume(ctx: &mut Ctx) -> Result<String, String> {
    let upstream = ctx.ts_server()?;
    let proxy = ctx.shadowcat(&["--upstream", &upstream])?;
    ctx.ts_client("resume", &proxy)
}

/// The TS SDK server WITHOUT an event store (it cannot resume anything)
/// behind Shadowcat: the client cuts its connection mid-stream and resumes
/// with Last-Event-ID, which Shadowcat serves from its replay buffer (the
/// events that arrived while the client was away) and then live. Every
/// progress notification and the result arrive exactly once, in order; the
/// upstream never sees a resume.
fn ts_sdk_no_eventstore_resume(ctx: &mut Ctx) -> Result<String, String> {
    let upstream = ctx.ts_server_with(&["--no-event-store"])?;
    let proxy = ctx.shadowcat_at(
        "shadowcat",
        "memory",
        free_port()?,
        &["--upstream", &upstream],
    )?;
    let cmd = ctx.ts_client_cmd(
        "resume",
        &proxy.url,
        &["steps=40", "delayMs=5", "cutAfter=10"],
    );
    let out = ctx.run("ts-client-resume", cmd)?;
    let resumes = check_resumes(proxy.admin, Some(1.0), Some(0.0))?;
    let seen_upstream = upstream_resumes(ctx);
    if !seen_upstream.is_empty() {
        return Err(format!(
            "the upstream (no event store) was asked to resume: {seen_upstream:?}"
        ));
    }
    Ok(format!("{}; {resumes}", last_line(&out)))
}

/// A tool slow to send its first message, its stream cut before any
/// message arrived: the client holds only Shadowcat's own priming event
/// (an id and empty data, 2025-11-25) and resumes from it; Shadowcat serves
/// everything from its buffer, exactly once.
fn ts_sdk_cut_before_first_message(ctx: &mut Ctx) -> Result<String, String> {
    let upstream = ctx.ts_server_with(&["--no-event-store"])?;
    let proxy = ctx.shadowcat_at(
        "shadowcat",
        "memory",
        free_port()?,
        &["--upstream", &upstream],
    )?;
    let cmd = ctx.ts_client_cmd(
        "resume",
        &proxy.url,
        &["steps=20", "delayMs=50", "cutAfter=0"],
    );
    let out = ctx.run("ts-client-resume", cmd)?;
    let resumes = check_resumes(proxy.admin, Some(1.0), Some(0.0))?;
    Ok(format!("{}; {resumes}", last_line(&out)))
}

/// The TS SDK server WITH its event store behind Shadowcat on the embedded
/// file store. Mid-stream (the client holds after 5 events and reads on
/// without processing, so the proxy has forwarded more than the client
/// holds) the Shadowcat process is killed with SIGKILL and started again on
/// the same store and port. The SDK resumes with its Mcp-Session-Id and
/// Last-Event-ID (at least once in vain while the proxy is down); the new
/// instance has no buffer, so it resumes the upstream after the upstream id
/// carried in the client's id. Every remaining event arrives exactly once,
/// in order.
fn ts_sdk_proxy_restart(ctx: &mut Ctx) -> Result<String, String> {
    let upstream = ctx.ts_server()?;
    let store = format!("file:{}", ctx.dir.join("s.redb").display());
    let port = free_port()?;
    let first = ctx.shadowcat_at("shadowcat", &store, port, &["--upstream", &upstream])?;
    let cmd = ctx.ts_client_cmd(
        "restart",
        &first.url,
        &["steps=40", "delayMs=20", "holdAfter=5"],
    );
    let client = ctx.spawn("ts-client-restart", cmd)?;
    let holding = ctx.wait_line(client, "holding ")?;
    let killed_at = Instant::now();
    // `Child::kill` is SIGKILL: no drain, no flush.
    ctx.children[first.index].kill();
    // Start again only once the client found the proxy gone.
    ctx.wait_line(client, "resume failed ")?;
    let second = ctx.shadowcat_at(
        "shadowcat-restarted",
        &store,
        port,
        &["--upstream", &upstream],
    )?;
    let restart_ms = killed_at.elapsed().as_millis();
    let out = ctx.finish(client)?;
    let resumes = check_resumes(second.admin, Some(0.0), Some(1.0))?;
    let resume_ms = 1000.0
        * metric(
            &metrics(second.admin)?,
            r#"shadowcat_resume_seconds{quantile="1"}"#,
        );
    // The upstream was resumed from the id carried in the client's last
    // processed id, not from anything newer the proxy had forwarded. The
    // SDK's InMemoryEventStore ids are `{stream}_{ms}_{random}`: only
    // resumes of the call's stream count (a GET stream may resume too).
    let carried = holding
        .split_once(" upstream=")
        .map(|(_, id)| id.to_string())
        .unwrap_or_default();
    let stream_of = |id: &str| id.split('_').next().unwrap_or_default().to_string();
    let seen_upstream: Vec<String> = upstream_resumes(ctx)
        .into_iter()
        .filter(|id| stream_of(id) == stream_of(&carried))
        .collect();
    if carried.is_empty() || seen_upstream != [carried.clone()] {
        return Err(format!(
            "the upstream should have been resumed once after {carried:?} (from the client's `{holding}`), got {seen_upstream:?}"
        ));
    }
    Ok(format!(
        "{}; down for {restart_ms} ms; {resumes}, upstream resume took {resume_ms:.1} ms in the proxy",
        last_line(&out)
    ))
}

/// Default seed of the chaos scenario's relay; `INTEROP_CHAOS_SEED`
/// overrides it.
const CHAOS_SEED: u32 = 11;
/// Progress notifications of the chaos scenario's one tools/call.
const CHAOS_STEPS: u32 = 10_000;
/// Fewest cuts (and resumes) a chaos run must have.
const CHAOS_MIN_CUTS: usize = 100;

/// `INTEROP_CHAOS_SEED`, else [`CHAOS_SEED`].
fn chaos_seed() -> Result<u32, String> {
    match std::env::var("INTEROP_CHAOS_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("INTEROP_CHAOS_SEED must be a number below 2^32, got {s:?}")),
        Err(std::env::VarError::NotPresent) => Ok(CHAOS_SEED),
        Err(e) => Err(format!("INTEROP_CHAOS_SEED: {e}")),
    }
}

/// The `key=value` pairs of the first line starting with `prefix`.
fn key_values<'a>(out: &'a str, prefix: &str) -> BTreeMap<&'a str, &'a str> {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .collect()
        })
        .unwrap_or_default()
}

/// The TS SDK server WITHOUT an event store streams 10,000 progress
/// notifications from one tools/call, one per millisecond, behind
/// Shadowcat. The client reaches Shadowcat through `ts/relay.mjs`, which
/// resets each connection after a seeded random 4-16 KB toward the client;
/// the client reads slower than the server sends and the SDK resumes every
/// cut with GET + Last-Event-ID. Every notification arrives once, in order,
/// the result arrives, at least 100 cuts happen, and every resume is served
/// from Shadowcat's buffer (the upstream cannot resume).
fn ts_sdk_chaos_no_eventstore(ctx: &mut Ctx) -> Result<String, String> {
    chaos(ctx, &[])
}

/// The chaos scenario with a replay buffer far smaller than the stream
/// (1 MiB, 2,048 events read ahead) and 512 KiB retained: the backlog
/// cannot all be held, so what keeps every event is the retention of
/// written events (with `replay_retain_bytes = 0` it fails with 410).
fn ts_sdk_chaos_small_buffer(ctx: &mut Ctx) -> Result<String, String> {
    let config = ctx.dir.join("small-buffer.toml");
    fs::write(
        &config,
        "[limits]\nreplay_max_events = 2048\nreplay_max_bytes = 1048576\nreplay_retain_bytes = 524288\n",
    )
    .map_err(|e| format!("writing {}: {e}", config.display()))?;
    let config = config.display().to_string();
    chaos(ctx, &["--config", &config])
}

/// One chaos run; `extra` goes to `shadowcat reverse`.
fn chaos(ctx: &mut Ctx, extra: &[&str]) -> Result<String, String> {
    let seed = chaos_seed()?;
    let upstream = ctx.ts_server_with(&["--no-event-store"])?;
    let port = free_port()?;
    let mut args = vec!["--upstream", upstream.as_str()];
    args.extend_from_slice(extra);
    let proxy = ctx.shadowcat_at("shadowcat", "memory", port, &args)?;
    let relay = ctx.relay(port, seed)?;
    let steps = format!("steps={CHAOS_STEPS}");
    let cmd = ctx.ts_client_cmd("chaos", &relay, &[&steps, "delayMs=1"]);
    let out = ctx.run("ts-client-chaos", cmd);
    let summary = chaos_summary(ctx, seed, "", out)?;
    let metrics =
        check_resumes(proxy.admin, None, Some(0.0)).map_err(|e| format!("{summary}: {e}"))?;
    let seen_upstream = upstream_resumes(ctx);
    if !seen_upstream.is_empty() {
        return Err(format!(
            "{summary}: the upstream (no event store) was asked to resume: {seen_upstream:?}"
        ));
    }
    Ok(format!("{summary}; {metrics}"))
}

/// server-everything over Streamable HTTP behind Shadowcat.
fn everything_http(ctx: &mut Ctx) -> Result<String, String> {
    let upstream = ctx.everything_http()?;
    let proxy = ctx.shadowcat(&["--upstream", &upstream])?;
    ctx.ts_client("everything", &proxy)
}

/// server-everything as a stdio child of Shadowcat (`--upstream-cmd`),
/// served over Streamable HTTP: the same client check as over HTTP.
fn everything_stdio(ctx: &mut Ctx) -> Result<String, String> {
    let server = ctx
        .paths
        .module("@modelcontextprotocol/server-everything/dist/index.js");
    let proxy = ctx.shadowcat(&["--upstream-cmd", "--", "node", &server, "stdio"])?;
    ctx.ts_client("everything", &proxy)
}

/// The MCP Inspector's CLI mode through Shadowcat: tools/list and a
/// tools/call.
fn inspector_cli(ctx: &mut Ctx) -> Result<String, String> {
    let upstream = ctx.ts_server()?;
    let proxy = ctx.shadowcat(&["--upstream", &upstream])?;
    let launcher = ctx
        .paths
        .module("@modelcontextprotocol/inspector/clients/launcher/build/index.js");

    let mut list = ctx.node();
    list.arg(&launcher).args([
        "--cli",
        &proxy,
        "--transport",
        "http",
        "--method",
        "tools/list",
    ]);
    let listed = json_output(&ctx.run("inspector-tools-list", list)?)?;
    let mut names: Vec<&str> = listed["tools"]
        .as_array()
        .ok_or("tools/list: no `tools` array")?
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    names.sort_unstable();
    if names != ["ask", "count", "echo"] {
        return Err(format!(
            "tools/list: expected [ask, count, echo], got {names:?}"
        ));
    }

    let mut call = ctx.node();
    call.arg(&launcher).args([
        "--cli",
        &proxy,
        "--transport",
        "http",
        "--method",
        "tools/call",
        "--tool-name",
        "echo",
        "--tool-arg",
        "text=inspected through shadowcat",
    ]);
    let called = json_output(&ctx.run("inspector-tools-call", call)?)?;
    let text = called["content"][0]["text"].as_str().unwrap_or_default();
    if text != "inspected through shadowcat" {
        return Err(format!("tools/call echo: got {called}"));
    }
    Ok(format!(
        "tools/list ({} tools) and tools/call echo",
        names.len()
    ))
}

/// The Python SDK client through Shadowcat: initialize (auto mode, which
/// probes 2026-07-28 first, and legacy), tools/list, tools/call, progress.
fn python_sdk(ctx: &mut Ctx) -> Result<String, String> {
    let upstream = ctx.ts_server()?;
    let proxy = ctx.shadowcat(&["--upstream", &upstream])?;
    let cmd = ctx.python("py/client.py", &[&proxy]);
    let out = ctx.run("python-client", cmd)?;
    Ok(last_line(&out))
}

/// The Python SDK client's resumption (`py/resume.py`), two tools/calls
/// whose streams an httpx transport cuts after 5 events: the SDK reconnects
/// by itself with GET + Last-Event-ID; then, with its reconnects refused
/// until it gives up, the application resumes the call with the last
/// `on_resumption_token_update` token as `resumption_token`. The upstream
/// has no event store, so both resumes are served from Shadowcat's replay
/// buffer.
fn python_sdk_resume(ctx: &mut Ctx) -> Result<String, String> {
    let upstream = ctx.ts_server_with(&["--no-event-store"])?;
    let proxy = ctx.shadowcat_at(
        "shadowcat",
        "memory",
        free_port()?,
        &["--upstream", &upstream],
    )?;
    let cmd = ctx.python("py/resume.py", &[&proxy.url]);
    let out = ctx.run("python-resume", cmd)?;
    let resumes = check_resumes(proxy.admin, Some(2.0), Some(0.0))?;
    Ok(format!("{}; {resumes}", last_line(&out)))
}

/// The JSON document a CLI printed on stdout (log lines may precede it).
fn json_output(out: &str) -> Result<Value, String> {
    let start = out
        .find("\n{")
        .map(|i| i + 1)
        .or_else(|| out.starts_with('{').then_some(0))
        .ok_or_else(|| format!("no JSON in output:\n{out}"))?;
    let end = out.rfind('}').map_or(out.len(), |i| i + 1);
    serde_json::from_str(&out[start..end]).map_err(|e| format!("bad JSON ({e}) in output:\n{out}"))
}

/// The outcome of a chaos client run through `ts/relay.mjs`: one line with
/// the cuts the relay made and the client's figures, or an error when the
/// client failed or there were fewer than [`CHAOS_MIN_CUTS`] cuts and
/// resumes. `label` starts the line (e.g. "TLS both sides, ").
fn chaos_summary(
    ctx: &Ctx,
    seed: u32,
    label: &str,
    out: Result<String, String>,
) -> Result<String, String> {
    let cuts = fs::read_to_string(ctx.out_path("relay"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("cut "))
        .count();
    let out =
        out.map_err(|e| format!("seed {seed}, {cuts} cuts: {e}\n{}", ctx.tails("shadowcat")))?;
    let figures = key_values(&out, "figures ");
    let figure = |key: &str| figures.get(key).copied().unwrap_or("?");
    let resumes: usize = figure("resumes").parse().unwrap_or(0);
    let summary = format!(
        "{label}seed {seed}: {} events, {cuts} cuts, {resumes} resumes, {} lost, {} duplicated, {} out of order, worst resume gap {} ms",
        figure("events"),
        figure("lost"),
        figure("duplicated"),
        figure("outOfOrder"),
        figure("worstGapMs"),
    );
    if cuts < CHAOS_MIN_CUTS || resumes < CHAOS_MIN_CUTS {
        return Err(format!(
            "{summary}: expected at least {CHAOS_MIN_CUTS} cuts and resumes"
        ));
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_versions_parse() {
        assert_eq!(node_major("v20.20.2"), Some(20));
        assert_eq!(node_major("v18.19.0"), Some(18));
        assert_eq!(node_major("20.1.0"), None);
    }

    #[test]
    fn json_output_skips_leading_log_lines() {
        let out = "warning: deprecated\n{\n  \"tools\": []\n}\n";
        assert_eq!(json_output(out).unwrap()["tools"], Value::Array(vec![]));
        assert!(json_output("no json here").is_err());
    }

    fn sleeper() -> Command {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        cmd
    }

    fn alive(pid: u32) -> bool {
        // A reaped child has no /proc entry (a zombie would show state Z).
        fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    }

    #[test]
    fn a_child_past_its_deadline_is_killed() {
        let mut proc = Proc {
            name: "sleeper".into(),
            child: sleeper().spawn().unwrap(),
        };
        let pid = proc.child.id();
        let start = Instant::now();
        let err = proc
            .wait_until(Instant::now() + Duration::from_millis(100))
            .unwrap_err();
        assert!(err.contains("timed out"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(!alive(pid), "the child was killed and reaped");
    }

    #[test]
    fn a_scenario_ending_kills_its_children() {
        let dir = std::env::temp_dir().join(format!("interop-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut ctx = Ctx {
            paths: Paths::new(),
            dir: dir.clone(),
            deadline: Instant::now() + Duration::from_secs(30),
            children: Vec::new(),
        };
        ctx.spawn("one", sleeper()).unwrap();
        ctx.spawn("two", sleeper()).unwrap();
        let pids: Vec<u32> = ctx.children.iter().map(|p| p.child.id()).collect();
        assert!(pids.iter().all(|&p| alive(p)));
        drop(ctx);
        assert!(
            pids.iter().all(|&p| !alive(p)),
            "children outlived their scenario"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn metrics_are_read_by_exact_series() {
        let text = "HTTP/1.1 200 OK\r\n\r\n# TYPE shadowcat_client_resumes_total counter\n\
                    shadowcat_client_resumes_total{from=\"buffer\"} 2\n\
                    shadowcat_client_resumes_total{from=\"upstream\"} 1\n\
                    shadowcat_resume_gaps_total_other 5\n";
        assert_eq!(
            metric(text, r#"shadowcat_client_resumes_total{from="buffer"}"#),
            2.0
        );
        assert_eq!(
            metric(text, r#"shadowcat_client_resumes_total{from="upstream"}"#),
            1.0
        );
        assert_eq!(metric(text, "shadowcat_resume_gaps_total"), 0.0);
    }

    #[test]
    fn figures_are_read_as_key_values() {
        let out = "resume 1 after progress 9: HTTP 200\nfigures events=10 lost=0 result=ok\n";
        let figures = key_values(out, "figures ");
        assert_eq!(figures.get("events"), Some(&"10"));
        assert_eq!(figures.get("result"), Some(&"ok"));
        assert!(key_values(out, "nothing ").is_empty());
    }

    #[test]
    fn interop_only_selects_by_name() {
        assert_eq!(selected_scenarios(None).unwrap().len(), SCENARIOS.len());
        assert_eq!(
            selected_scenarios(Some(" ")).unwrap().len(),
            SCENARIOS.len()
        );
        let some = selected_scenarios(Some("python-sdk, ts-sdk")).unwrap();
        let names: Vec<&str> = some.iter().map(|s| s.name).collect();
        assert_eq!(names, ["ts-sdk", "python-sdk"], "in suite order");
        let err = selected_scenarios(Some("ts-sdk,nope")).unwrap_err();
        assert!(err.contains("`nope`"), "{err}");
    }

    #[test]
    fn wait_line_finds_a_printed_line_or_reports_the_exit() {
        let dir = std::env::temp_dir().join(format!("interop-line-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut ctx = Ctx {
            paths: Paths::new(),
            dir: dir.clone(),
            deadline: Instant::now() + Duration::from_secs(30),
            children: Vec::new(),
        };
        let mut talker = Command::new("sh");
        talker.args([
            "-c",
            "echo one; echo 'holding 1.2.3 upstream=x'; exec sleep 30",
        ]);
        let index = ctx.spawn("talker", talker).unwrap();
        assert_eq!(
            ctx.wait_line(index, "holding ").unwrap(),
            "holding 1.2.3 upstream=x"
        );
        let mut quiet = Command::new("sh");
        quiet.args(["-c", "echo one; exit 3"]);
        let index = ctx.spawn("quiet", quiet).unwrap();
        let err = ctx.wait_line(index, "holding ").unwrap_err();
        assert!(err.contains("exited"), "{err}");
        drop(ctx);
        fs::remove_dir_all(&dir).unwrap();
    }
}
