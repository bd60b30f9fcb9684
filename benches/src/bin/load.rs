//! The load harness: measures a direct connection, Shadowcat (the release
//! binary, as a child process) and nginx (a plain SSE reverse proxy) in the
//! same run, alternating their order each round, on loopback only.
//!
//! Scenarios: `stream` (N sessions × M SSE events/s, a sweep of M),
//! `max` (unpaced streams), `requests` (tools/call round trips with K
//! clients), `idle` (K idle GET streams up to the open-file limit) and
//! `store` (Shadowcat's store writes per event, embedded vs Redis).
//! Writes `report.json`, `report.md` and `latency.png` to `--out`.
//!
//! `cargo xtask load [--quick]` builds and runs it; directly:
//! `load --shadowcat target/release/shadowcat [--quick] [--out DIR]
//! [--rounds N] [--only stream,max,requests,idle,store] [--nginx PATH |
//! --no-nginx] [--redis-server PATH] [--idle-streams N] [--plot PATH]`.
#![forbid(unsafe_code)]

#[path = "../load/client.rs"]
mod client;
#[path = "../load/plot.rs"]
mod plot;
#[path = "../load/procs.rs"]
mod procs;
#[path = "../load/report.rs"]
mod report;
#[path = "../load/scenario.rs"]
mod scenario;
#[path = "../load/upstream.rs"]
mod upstream;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use report::Point;
use scenario::{RequestLoad, Sample, StreamLoad, Target, Via};

const SCENARIOS: [&str; 5] = ["stream", "max", "requests", "idle", "store"];

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
    idle_streams: Option<usize>,
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
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
        only: SCENARIOS.iter().map(|s| (*s).to_owned()).collect(),
        idle_streams: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--quick" => args.quick = true,
            "--shadowcat" => args.shadowcat = value(&a)?.into(),
            "--nginx" => args.nginx = Some(value(&a)?.into()),
            "--no-nginx" => args.nginx = None,
            "--redis-server" => args.redis = Some(value(&a)?.into()),
            "--no-redis" => args.redis = None,
            "--out" => args.out = value(&a)?.into(),
            "--plot" => args.plot = Some(value(&a)?.into()),
            "--rounds" => {
                args.rounds = Some(value(&a)?.parse().map_err(|e| format!("--rounds: {e}"))?);
            }
            "--idle-streams" => {
                args.idle_streams = Some(
                    value(&a)?
                        .parse()
                        .map_err(|e| format!("--idle-streams: {e}"))?,
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
    if !args.shadowcat.is_file() {
        return Err(format!(
            "no shadowcat binary at {} (cargo build --release -p shadowcat-cli)",
            args.shadowcat.display()
        ));
    }
    Ok(args)
}

/// How long and how hard each scenario runs.
#[derive(Debug, serde::Serialize)]
struct Plan {
    rounds: usize,
    stream_sessions: usize,
    stream_rates: Vec<u64>,
    max_sessions: usize,
    clients: usize,
    idle_streams: usize,
    warm_ms: u64,
    window_ms: u64,
    /// The rate the headline and the store scenario use.
    headline_rate: u64,
}

impl Plan {
    fn new(args: &Args, nofile: u64) -> Self {
        // Two descriptors per proxied stream, in the proxy and in this
        // process (client side and upstream side); keep some spare.
        let fd_streams = (nofile.saturating_sub(300) / 2) as usize;
        if args.quick {
            Plan {
                rounds: args.rounds.unwrap_or(1),
                stream_sessions: 20,
                stream_rates: vec![100],
                max_sessions: 4,
                clients: 4,
                idle_streams: args.idle_streams.unwrap_or(200).min(fd_streams),
                warm_ms: 300,
                window_ms: 1000,
                headline_rate: 100,
            }
        } else {
            Plan {
                rounds: args.rounds.unwrap_or(3),
                stream_sessions: 100,
                stream_rates: vec![10, 50, 100, 200, 400],
                max_sessions: 16,
                clients: 16,
                idle_streams: args.idle_streams.unwrap_or(fd_streams).min(fd_streams),
                warm_ms: 2000,
                window_ms: 8000,
                headline_rate: 100,
            }
        }
    }
}

/// Shared by every scenario.
#[derive(Debug)]
struct Env {
    args: Args,
    upstream: SocketAddr,
    dir: PathBuf,
    nofile: u64,
    notes: Vec<String>,
}

impl Env {
    /// Fresh targets: direct, Shadowcat with `store` (a spec; `None`: a new
    /// embedded file) and nginx when available.
    async fn targets(&mut self, tag: &str, with_nginx: bool) -> Vec<Target> {
        let mut targets = vec![Target {
            name: report::BASELINE.into(),
            addr: self.upstream,
            via: Via::Direct,
        }];
        if let Some(t) = self.shadowcat("shadowcat", tag, None).await {
            targets.push(t);
        }
        if with_nginx {
            match &self.args.nginx {
                Some(bin) => {
                    match procs::Nginx::start(bin, &self.dir, self.upstream, self.nofile).await {
                        Ok(n) => targets.push(Target {
                            name: "nginx".into(),
                            addr: n.addr,
                            via: Via::Nginx(n),
                        }),
                        Err(e) => self.note(format!("{tag}: nginx not measured: {e}")),
                    }
                }
                None => self.note(format!("{tag}: nginx not found; not measured")),
            }
        }
        targets
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
            let s = one(t).await;
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

fn machine() -> serde_json::Value {
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
    })
}

async fn run(args: Args, nofile: u64) -> Result<(), String> {
    let started = Instant::now();
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
        upstream: upstream.addr(),
        dir: dir.clone(),
        nofile,
        notes: Vec::new(),
    };
    let only = env.args.only.clone();
    let wants = |s: &str| only.iter().any(|o| o == s);
    let mut points = Vec::new();
    let (warm_ms, window_ms) = (plan.warm_ms, plan.window_ms);

    if wants("stream") {
        let targets = env.targets("stream", true).await;
        for &rate in &plan.stream_rates {
            let load = StreamLoad {
                sessions: plan.stream_sessions,
                rate,
                batch: 1,
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
    if wants("max") {
        let targets = env.targets("max", true).await;
        // One event per upstream write (each notification flushed on its
        // own, as MCP servers do), then 16 per write.
        for batch in [1, 16] {
            let load = StreamLoad {
                sessions: plan.max_sessions,
                rate: 0,
                batch,
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
                    "{} sessions, unpaced, {batch} event(s) per upstream write",
                    load.sessions
                ),
                serde_json::to_value(load).unwrap_or_default(),
                r,
            ));
        }
    }
    if wants("requests") {
        let targets = env.targets("requests", true).await;
        let load = RequestLoad {
            clients: plan.clients,
            warm_ms: warm_ms / 2,
            window_ms,
        };
        let r = rounds(&targets, plan.rounds, async |t| {
            scenario::requests_once(t, load).await
        })
        .await;
        points.push(point(
            "requests",
            format!("{} clients, tools/call echo", load.clients),
            serde_json::to_value(load).unwrap_or_default(),
            r,
        ));
    }
    if wants("idle") {
        // Fresh processes per target so each starts from its own baseline.
        let n = plan.idle_streams;
        let hold = Duration::from_secs(600);
        let mut round = Vec::new();
        for which in ["direct", "shadowcat", "nginx"] {
            let targets = env.targets("idle", which == "nginx").await;
            if let Some(t) = targets.iter().find(|t| t.name == which) {
                round.push(scenario::idle_once(t, n, hold).await);
            }
        }
        points.push(point(
            "idle",
            format!("{n} idle GET streams, one session each"),
            serde_json::json!({"streams": n, "nofile": nofile}),
            vec![round],
        ));
    }
    if wants("store") {
        let load = StreamLoad {
            sessions: plan.stream_sessions,
            rate: plan.headline_rate,
            batch: 1,
            warm_ms,
            window_ms,
        };
        let mut targets = Vec::new();
        if let Some(t) = env.shadowcat("shadowcat", "store", None).await {
            targets.push(t);
        }
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

    let mut md = String::new();
    for p in &points {
        md.push_str(&report::table(p));
        md.push('\n');
    }
    for n in &env.notes {
        md.push_str(&format!("- {n}\n"));
    }
    let json = serde_json::json!({
        "machine": machine(),
        "nofile": nofile,
        "plan": plan,
        "quick": env.args.quick,
        "nginx_workers": procs::NGINX_WORKERS,
        "seconds": started.elapsed().as_secs_f64(),
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

    let plot_path = env
        .args
        .plot
        .clone()
        .unwrap_or_else(|| out.join("latency.png"));
    let series = plot_series(&points);
    if !series.is_empty() {
        plot::latency_plot(
            &plot_path,
            &format!(
                "SSE latency, upstream timestamp to client receive (loopback, {} sessions)",
                plan.stream_sessions
            ),
            &series,
        )
        .map_err(|e| e.to_string())?;
    }
    let _ = std::fs::remove_dir_all(&dir).map_err(
        |e| tracing::warn!(dir = %dir.display(), error = %e, "could not remove the work dir"),
    );
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{md}");
    let _ = writeln!(
        o,
        "wrote {} and {} in {:.0}s",
        out.join("report.json").display(),
        plot_path.display(),
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
            idle_streams: None,
        };
        let p = Plan::new(&args, 1024);
        assert!(p.window_ms + p.warm_ms <= 2000);
        assert!(p.idle_streams <= 362);
    }

    #[test]
    fn paths_exist_check() {
        assert!(find_program("definitely-not-a-program-here").is_none());
        assert!(std::path::Path::new("/proc/self/stat").exists());
    }
}
