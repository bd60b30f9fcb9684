//! The load harness: measures a direct connection, Shadowcat (the release
//! binary, as a child process) and nginx (a plain SSE reverse proxy) in the
//! same run, rotating their order each round, on loopback only.
//!
//! Scenarios (all but `store` and `cluster` by default):
//! - `requests`: K sessions on keep-alive connections sending `tools/call`
//!   back to back, answered by the upstream with JSON, then with SSE;
//!   req/s, latency, proxy CPU per request, new upstream connections per
//!   request (the upstream's accept count, Shadowcat's
//!   `shadowcat_upstream_connects_total`, the socket table);
//! - `max`: unpaced SSE streams, 256 B and 4 KiB events, 1 and 16 events
//!   per upstream write; throughput against direct, CPU per event, p99.9,
//!   peak RSS;
//! - `stream`: N sessions × M events/s (`--rates` for a sweep and plot);
//! - `idle`: K idle GET streams, one session each, with the upstream
//!   writing `: open` at once and writing nothing; RSS per stream, time to
//!   the first body byte;
//! - `store`: Shadowcat's store writes per event, embedded vs Redis;
//! - `tls`: Shadowcat with a TLS listener and an https upstream against
//!   plain Shadowcat and direct: CPU per event and per request
//!   (`../load/tls.rs`);
//! - `cluster`: the shared replay log's cost: Shadowcat with `--replay-log
//!   on` against `off` on one redis-server, N sessions × M events/s for
//!   20 s a run; Redis commands and round trips per event, mean batch,
//!   added p99, proxy and Redis CPU per event (`../load/cluster.rs`).
//!
//! Writes `report.json` and `report.md` (and `latency.png` for a sweep)
//! to `--out`.
//!
//! `cargo xtask load [--quick]` builds and runs it; directly:
//! `load --shadowcat target/release/shadowcat [--quick] [--out DIR]
//! [--rounds N] [--only requests,max,stream,idle,store,tls,cluster] [--nginx PATH |
//! --no-nginx] [--redis-server PATH] [--clients N] [--idle-streams N]
//! [--rates A,B,..] [--plot PATH]`.
#![forbid(unsafe_code)]

#[path = "../load/client.rs"]
mod client;
#[path = "../load/cluster.rs"]
mod cluster;
#[path = "../load/plot.rs"]
mod plot;
#[path = "../load/procs.rs"]
mod procs;
#[path = "../load/report.rs"]
mod report;
#[path = "../load/scenario.rs"]
mod scenario;
#[path = "../load/tls.rs"]
mod tls;
#[path = "../load/upstream.rs"]
mod upstream;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use report::Point;
use scenario::{IdleLoad, RequestLoad, Sample, StreamLoad, Target, Via};

const SCENARIOS: [&str; 7] = [
    "requests", "max", "stream", "idle", "store", "tls", "cluster",
];
/// What runs without `--only`.
const DEFAULT_SCENARIOS: [&str; 5] = ["requests", "max", "stream", "idle", "tls"];

/// Command-line options.
#[derive(Debug)]
struct Args {
    quick: bool,
    shadowcat: PathBuf,
    nginx: Option<PathBuf>,
    redis: Option<PathBuf>,
    out: PathBuf,
    plot: Option<PathBuf>,
    rounds: Option<usize>,
    only: Vec<String>,
    clients: Option<usize>,
    idle_streams: Option<usize>,
    rates: Option<Vec<u64>>,
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    v.parse().map_err(|e| format!("{name}: {e}"))
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        quick: false,
        shadowcat: PathBuf::from("target/release/shadowcat"),
        nginx: find_program("nginx"),
        redis: find_program("redis-server"),
        out: PathBuf::from("target/load"),
        plot: None,
        rounds: None,
        only: DEFAULT_SCENARIOS.iter().map(|s| (*s).to_owned()).collect(),
        clients: None,
        idle_streams: None,
        rates: None,
    };
    let mut no_nginx = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--quick" => args.quick = true,
            "--shadowcat" => args.shadowcat = value(&a)?.into(),
            "--nginx" => args.nginx = Some(value(&a)?.into()),
            "--no-nginx" => no_nginx = true,
            "--redis-server" => args.redis = Some(value(&a)?.into()),
            "--no-redis" => args.redis = None,
            "--out" => args.out = value(&a)?.into(),
            "--plot" => args.plot = Some(value(&a)?.into()),
            "--rounds" => args.rounds = Some(number(&a, &value(&a)?)?),
            "--clients" => args.clients = Some(number(&a, &value(&a)?)?),
            "--idle-streams" => args.idle_streams = Some(number(&a, &value(&a)?)?),
            "--rates" => {
                let v = value(&a)?;
                args.rates = Some(
                    v.split(',')
                        .map(|r| number(&a, r))
                        .collect::<Result<_, _>>()?,
                );
            }
            "--only" => {
                args.only = value(&a)?.split(',').map(str::to_owned).collect();
                if let Some(bad) = args.only.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
                    return Err(format!("unknown scenario {bad:?}; known: {SCENARIOS:?}"));
                }
            }
            "-h" | "--help" => {
                return Err("see the doc comment at the top of benches/src/bin/load.rs".into());
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    // Absolute: Shadowcat runs in its own directory.
    args.shadowcat = std::fs::canonicalize(&args.shadowcat).map_err(|e| {
        format!(
            "no shadowcat binary at {} (cargo build --release -p shadowcat-cli): {e}",
            args.shadowcat.display()
        )
    })?;
    if no_nginx {
        args.nginx = None;
    } else if args.nginx.is_none() {
        // A run without the reference must be asked for, never a surprise.
        return Err(
            "nginx not found: install it (cargo xtask load --install) or pass --no-nginx".into(),
        );
    }
    Ok(args)
}

/// How long and how hard each scenario runs.
#[derive(Debug, serde::Serialize)]
struct Plan {
    rounds: usize,
    /// `requests`: sessions, one keep-alive connection each.
    clients: usize,
    /// `requests`: bytes of text per call.
    payload: usize,
    /// `max`: sessions, one unpaced stream each.
    max_sessions: usize,
    /// `max`: bytes per event.
    event_sizes: Vec<usize>,
    /// `max`: events per upstream write.
    batches: Vec<usize>,
    /// `stream`: sessions.
    stream_sessions: usize,
    /// `stream`: events/s per session.
    stream_rates: Vec<u64>,
    /// `idle`: streams.
    idle_streams: usize,
    /// `idle`: how long a stream waits for its first byte.
    first_byte_wait_ms: u64,
    warm_ms: u64,
    window_ms: u64,
    /// `cluster`: the measured window of each run.
    cluster_window_ms: u64,
}

impl Plan {
    fn new(args: &Args, nofile: u64) -> Self {
        // Two descriptors per proxied stream, in the proxy and in this
        // process (client side and upstream side); keep some spare.
        let fd_streams = (nofile.saturating_sub(300) / 2) as usize;
        if args.quick {
            Plan {
                rounds: args.rounds.unwrap_or(1),
                clients: args.clients.unwrap_or(8),
                payload: 64,
                max_sessions: 4,
                event_sizes: vec![256],
                batches: vec![1, 16],
                stream_sessions: 20,
                stream_rates: args.rates.clone().unwrap_or_else(|| vec![100]),
                idle_streams: args.idle_streams.unwrap_or(200).min(fd_streams),
                first_byte_wait_ms: 2000,
                warm_ms: 300,
                window_ms: 1000,
                cluster_window_ms: 2000,
            }
        } else {
            Plan {
                rounds: args.rounds.unwrap_or(3),
                clients: args.clients.unwrap_or(64),
                payload: 64,
                max_sessions: 20,
                event_sizes: vec![256, 4096],
                batches: vec![1, 16],
                stream_sessions: 100,
                stream_rates: args.rates.clone().unwrap_or_else(|| vec![100]),
                idle_streams: args.idle_streams.unwrap_or(5000).min(fd_streams),
                // Past Shadowcat's 15 s keep-alive comment.
                first_byte_wait_ms: 20_000,
                warm_ms: 1000,
                window_ms: 5000,
                cluster_window_ms: 20_000,
            }
        }
    }
}

/// Shared by every scenario.
#[derive(Debug)]
struct Env {
    args: Args,
    up: upstream::Handle,
    upstream: std::net::SocketAddr,
    dir: PathBuf,
    nofile: u64,
    notes: Vec<String>,
}

impl Env {
    fn direct(&self) -> Target {
        Target {
            name: report::BASELINE.into(),
            addr: self.upstream,
            via: Via::Direct,
            up: self.up,
        }
    }

    /// Fresh targets: direct, Shadowcat (a new embedded store) and nginx
    /// when it is to be measured.
    async fn targets(&mut self, tag: &str) -> Vec<Target> {
        let mut targets = vec![self.direct()];
        targets.extend(self.shadowcat("shadowcat", tag, None).await);
        targets.extend(self.nginx(tag).await);
        targets
    }

    /// A fresh target by name.
    async fn target(&mut self, name: &str, tag: &str) -> Option<Target> {
        match name {
            "shadowcat" => self.shadowcat(name, tag, None).await,
            "nginx" => self.nginx(tag).await,
            _ => Some(self.direct()),
        }
    }

    async fn nginx(&mut self, tag: &str) -> Option<Target> {
        let bin = self.args.nginx.clone()?;
        match procs::Nginx::start(&bin, &self.dir, self.upstream, self.nofile).await {
            Ok(n) => Some(Target {
                name: "nginx".into(),
                addr: n.addr,
                via: Via::Nginx(n),
                up: self.up,
            }),
            Err(e) => {
                self.note(format!("{tag}: nginx not measured: {e}"));
                None
            }
        }
    }

    async fn shadowcat(&mut self, name: &str, tag: &str, store: Option<String>) -> Option<Target> {
        let store = store.unwrap_or_else(|| {
            format!(
                "file:{}",
                self.dir.join(format!("{tag}-{name}.redb")).display()
            )
        });
        let label = format!("{tag}-{name}");
        match procs::Shadowcat::start(
            &self.args.shadowcat,
            &self.dir,
            &label,
            self.upstream,
            &store,
        )
        .await
        {
            Ok(s) => Some(Target {
                name: name.into(),
                addr: s.addr,
                via: Via::Shadowcat(s),
                up: self.up,
            }),
            Err(e) => {
                self.note(format!("{tag}: {name} not measured: {e}"));
                None
            }
        }
    }

    fn note(&mut self, n: String) {
        tracing::warn!("{n}");
        self.notes.push(n);
    }
}

/// Runs `one` on every target, `rounds` times, rotating the order.
async fn rounds(
    targets: &[Target],
    rounds: usize,
    one: impl AsyncFn(&Target) -> Sample,
) -> Vec<Vec<Sample>> {
    let n = targets.len();
    let mut all = Vec::with_capacity(rounds);
    for r in 0..rounds {
        let mut round = Vec::with_capacity(n);
        for i in 0..n {
            let t = &targets[(i + r) % n];
            let start = Instant::now();
            let mut s = one(t).await;
            s.set("box_load_1m", box_load_1m());
            tracing::info!(target = %t.name, round = r, took = ?start.elapsed(), "run done");
            round.push(s);
        }
        all.push(round);
    }
    all
}

fn point(
    scenario: &'static str,
    label: String,
    params: serde_json::Value,
    rounds: Vec<Vec<Sample>>,
) -> Point {
    let p = Point {
        scenario,
        label,
        params,
        summary: report::summarize(&rounds),
        rounds,
    };
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "\n{}", report::table(&p));
    p
}

fn machine(args: &Args) -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .ok();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(str::to_owned));
    serde_json::json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu_model": model,
        "kernel": kernel,
        "memory": mem,
        "shadowcat": procs::version(&args.shadowcat, "--version"),
        "nginx": args.nginx.as_deref().and_then(|n| procs::version(n, "-v")),
    })
}

/// The box's 1-minute load average after a run (this run's own load
/// included), to show when something else was running.
fn box_load_1m() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The box's load average (1, 5, 15 min), to show what else ran.
fn loadavg() -> Option<String> {
    let l = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

async fn run(args: Args, nofile: u64) -> Result<(), String> {
    let started = Instant::now();
    let load_before = loadavg();
    let plan = Plan::new(&args, nofile);
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let out =
        std::fs::canonicalize(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let dir = out.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let upstream = upstream::Upstream::start(Duration::from_secs(900))
        .await
        .map_err(|e| format!("upstream: {e}"))?;
    let mut env = Env {
        args,
        up: upstream.handle(),
        upstream: upstream.addr(),
        dir: dir.clone(),
        nofile,
        notes: Vec::new(),
    };
    let only = env.args.only.clone();
    let wants = |s: &str| only.iter().any(|o| o == s);
    let mut points = Vec::new();
    let (warm_ms, window_ms) = (plan.warm_ms, plan.window_ms);

    if wants("requests") {
        let targets = env.targets("requests").await;
        for sse in [false, true] {
            let load = RequestLoad {
                clients: plan.clients,
                payload: plan.payload,
                sse,
                warm_ms,
                window_ms,
            };
            let r = rounds(&targets, plan.rounds, async |t| {
                scenario::requests_once(t, load).await
            })
            .await;
            points.push(point(
                "requests",
                format!(
                    "{} sessions, tools/call answered with {}, {}-byte payload",
                    load.clients,
                    if sse { "SSE" } else { "JSON" },
                    load.payload
                ),
                serde_json::to_value(load).unwrap_or_default(),
                r,
            ));
        }
    }
    if wants("max") {
        let targets = env.targets("max").await;
        for &size in &plan.event_sizes {
            // One event per upstream write (each notification flushed on
            // its own, as MCP servers do), then 16 per write.
            for &batch in &plan.batches {
                let load = StreamLoad {
                    sessions: plan.max_sessions,
                    rate: 0,
                    batch,
                    size,
                    warm_ms,
                    window_ms,
                };
                let r = rounds(&targets, plan.rounds, async |t| {
                    scenario::stream_once(t, load).await
                })
                .await;
                points.push(point(
                    "max",
                    format!(
                        "{} sessions unpaced, {size}-byte events, {batch} per upstream write",
                        load.sessions
                    ),
                    serde_json::to_value(load).unwrap_or_default(),
                    r,
                ));
            }
        }
    }
    if wants("stream") {
        let targets = env.targets("stream").await;
        for &rate in &plan.stream_rates {
            let load = StreamLoad {
                sessions: plan.stream_sessions,
                rate,
                batch: 1,
                size: 0,
                warm_ms,
                window_ms,
            };
            let r = rounds(&targets, plan.rounds, async |t| {
                scenario::stream_once(t, load).await
            })
            .await;
            points.push(point(
                "stream",
                format!("{} sessions x {rate} events/s", load.sessions),
                serde_json::to_value(load).unwrap_or_default(),
                r,
            ));
        }
    }
    if wants("tls") {
        tls::run(&mut env, &plan, &mut points).await;
    }
    if wants("cluster") {
        cluster::run(&mut env, &plan, &mut points).await;
    }
    if wants("idle") {
        let hold = Duration::from_secs(600);
        let mut names = vec!["direct", "shadowcat"];
        if env.args.nginx.is_some() {
            names.push("nginx");
        }
        for open_comment in [true, false] {
            env.up.set_open_comment(open_comment);
            let load = IdleLoad {
                streams: plan.idle_streams,
                open_comment,
                first_byte_wait_ms: plan.first_byte_wait_ms,
            };
            // Fresh processes per run, so each starts from its own baseline.
            let mut all = Vec::new();
            for r in 0..plan.rounds {
                let mut round = Vec::new();
                for i in 0..names.len() {
                    let name = names[(i + r) % names.len()];
                    if let Some(t) = env.target(name, "idle").await {
                        let mut s = scenario::idle_once(&t, load, hold).await;
                        s.set("box_load_1m", box_load_1m());
                        round.push(s);
                    }
                }
                all.push(round);
            }
            points.push(point(
                "idle",
                format!(
                    "{} idle GET streams, one session each, upstream writes {}",
                    load.streams,
                    if open_comment {
                        "`: open` at once"
                    } else {
                        "nothing"
                    }
                ),
                serde_json::json!({"load": load, "nofile": nofile}),
                all,
            ));
        }
        env.up.set_open_comment(true);
    }
    if wants("store") {
        let load = StreamLoad {
            sessions: plan.stream_sessions,
            rate: 100,
            batch: 1,
            size: 0,
            warm_ms,
            window_ms,
        };
        let mut targets = Vec::new();
        targets.extend(env.shadowcat("shadowcat", "store", None).await);
        let redis = match env.args.redis.clone() {
            Some(bin) => match procs::Redis::start(&bin, &dir).await {
                Ok(r) => Some(r),
                Err(e) => {
                    env.note(format!("store: Redis not measured: {e}"));
                    None
                }
            },
            None => {
                env.note("store: redis-server not found; Redis not measured".into());
                None
            }
        };
        if let Some(r) = &redis
            && let Some(t) = env
                .shadowcat(
                    "shadowcat-redis",
                    "store",
                    Some(format!("redis://{}/0", r.addr)),
                )
                .await
        {
            targets.push(t);
        }
        let r = rounds(&targets, plan.rounds, async |t| {
            scenario::stream_once(t, load).await
        })
        .await;
        drop(targets);
        points.push(point(
            "store",
            format!(
                "{} sessions x {} events/s, embedded vs Redis",
                load.sessions, load.rate
            ),
            serde_json::to_value(load).unwrap_or_default(),
            r,
        ));
    }
    drop(upstream);

    let mut md = report::versus(&points);
    if !md.is_empty() {
        md.push('\n');
    }
    for p in &points {
        md.push_str(&report::table(p));
        md.push('\n');
    }
    let shared_log = cluster::summary(&points);
    if !shared_log.is_empty() {
        md.push_str(&shared_log);
        md.push('\n');
    }
    for n in &env.notes {
        md.push_str(&format!("- {n}\n"));
    }
    let json = serde_json::json!({
        "machine": machine(&env.args),
        "nofile": nofile,
        "plan": plan,
        "quick": env.args.quick,
        "nginx_workers": procs::NGINX_WORKERS,
        "shadowcat_limits": procs::SHADOWCAT_LIMITS,
        "seconds": started.elapsed().as_secs_f64(),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "notes": env.notes,
        "points": points,
    });
    let write = |name: &str, bytes: &[u8]| {
        let p = out.join(name);
        std::fs::write(&p, bytes).map_err(|e| format!("{}: {e}", p.display()))
    };
    write(
        "report.json",
        serde_json::to_string_pretty(&json)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    write("report.md", md.as_bytes())?;

    let series = plot_series(&points);
    let mut wrote = vec![out.join("report.json"), out.join("report.md")];
    if series.iter().any(|(_, pts)| pts.len() > 1) {
        let plot_path = env
            .args
            .plot
            .clone()
            .unwrap_or_else(|| out.join("latency.png"));
        plot::latency_plot(
            &plot_path,
            &format!(
                "SSE latency, upstream timestamp to client receive (loopback, {} sessions)",
                plan.stream_sessions
            ),
            &series,
        )
        .map_err(|e| e.to_string())?;
        wrote.push(plot_path);
    }
    let _ = std::fs::remove_dir_all(&dir).map_err(
        |e| tracing::warn!(dir = %dir.display(), error = %e, "could not remove the work dir"),
    );
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{md}");
    let wrote: Vec<String> = wrote.iter().map(|p| p.display().to_string()).collect();
    let _ = writeln!(
        o,
        "wrote {} in {:.0}s",
        wrote.join(", "),
        started.elapsed().as_secs_f64()
    );
    check(&points)
}

/// The stream sweep as plot lines.
fn plot_series(points: &[Point]) -> Vec<plot::Series> {
    let mut series: Vec<plot::Series> = Vec::new();
    for p in points.iter().filter(|p| p.scenario == "stream") {
        let offered =
            p.params["sessions"].as_f64().unwrap_or(0.0) * p.params["rate"].as_f64().unwrap_or(0.0);
        for s in &p.summary {
            let (Some(a), Some(b), Some(c)) = (
                s.get("latency_p50_us"),
                s.get("latency_p99_us"),
                s.get("latency_p999_us"),
            ) else {
                continue;
            };
            match series.iter_mut().find(|(n, _)| *n == s.target) {
                Some((_, pts)) => pts.push((offered, [a, b, c])),
                None => series.push((s.target.clone(), vec![(offered, [a, b, c])])),
            }
        }
    }
    series
}

/// Fails the run when a target moved no data at all (a broken harness, not
/// a slow proxy).
fn check(points: &[Point]) -> Result<(), String> {
    for p in points {
        for s in &p.summary {
            let moved = s
                .get("events")
                .or(s.get("requests"))
                .or(s.get("streams_open"));
            if moved.is_none_or(|m| m <= 0.0) {
                return Err(format!(
                    "{} / {}: {} moved nothing",
                    p.scenario, p.label, s.target
                ));
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("load: {e}");
            return ExitCode::FAILURE;
        }
    };
    let nofile = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("load: cannot raise the open-file limit: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args, nofile)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_series_follow_the_sweep() {
        let rounds = vec![vec![Sample {
            target: "direct".into(),
            values: [
                ("latency_p50_us", 10.0),
                ("latency_p99_us", 20.0),
                ("latency_p999_us", 30.0),
            ]
            .into_iter()
            .collect(),
        }]];
        let p = Point {
            scenario: "stream",
            label: "x".into(),
            params: serde_json::json!({"sessions": 10, "rate": 5}),
            summary: report::summarize(&rounds),
            rounds,
        };
        let s = plot_series(std::slice::from_ref(&p));
        assert_eq!(
            s,
            vec![("direct".to_owned(), vec![(50.0, [10.0, 20.0, 30.0])])]
        );
        assert!(check(&[p]).is_err(), "no events means a broken run");
    }

    #[test]
    fn quick_plan_is_short() {
        let args = Args {
            quick: true,
            shadowcat: PathBuf::new(),
            nginx: None,
            redis: None,
            out: PathBuf::new(),
            plot: None,
            rounds: None,
            only: Vec::new(),
            clients: None,
            idle_streams: None,
            rates: None,
        };
        let p = Plan::new(&args, 1024);
        assert!(p.window_ms + p.warm_ms <= 2000);
        assert!(p.idle_streams <= 362);
        assert!(p.first_byte_wait_ms <= 2000);
    }

    #[test]
    fn paths_exist_check() {
        assert!(find_program("definitely-not-a-program-here").is_none());
        assert!(std::path::Path::new("/proc/self/stat").exists());
    }
}
