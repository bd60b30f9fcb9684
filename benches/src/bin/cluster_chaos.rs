//! The three-instance cluster chaos test (issue 13): one client reads a
//! long `tools/call` stream slowly through nginx (round robin over three
//! `shadowcat reverse` instances sharing one redis-server, no stickiness),
//! cuts its connection at seeded points and resumes with `Last-Event-ID`
//! wherever nginx sends it, while the stream's owner is `kill -9`'d and
//! restarted and Redis restarts once. Everything on loopback.
//!
//! Checks, per mode: `event-store` (the upstream replays): every
//! notification once, in order, then the result; `no-event-store` (the
//! upstream answers a resume with 405): no duplicate, no gap inside a
//! stream, and a stream ends only with its result or with the JSON-RPC
//! error naming the owner's loss (then a new call asks for the rest).
//! One summary line per mode; the exit status is non-zero when a check
//! failed or the deadline passed.
//!
//! `cluster-chaos --shadowcat PATH [--seed N] [--events N] [--min-cuts N]
//! [--kills N] [--mode event-store|no-event-store|both] [--deadline-secs N]
//! [--client-rate N] [--upstream-rate N] [--out DIR] [--legacy]
//! [--redis-server PATH] [--nginx PATH]`
//!
//! `--legacy` leaves out the `[cluster]` config and `--instance-id` (a
//! binary from before the replay log rejects them). Logs and configs go to
//! `OUT/<mode>/` (default `target/cluster-chaos`). `cargo xtask
//! cluster-chaos` builds and runs it.
#![forbid(unsafe_code)]

#[path = "../cluster/check.rs"]
mod check;
#[path = "../cluster/client.rs"]
mod client;
#[path = "../cluster/plan.rs"]
mod plan;
#[path = "../cluster/procs.rs"]
mod procs;
#[path = "../cluster/relay.rs"]
mod relay;
#[path = "../cluster/run.rs"]
mod run;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use check::Mode;
use run::{Outcome, Settings};

fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    v.parse().map_err(|e| format!("{name}: {e}"))
}

fn parse_args() -> Result<(Settings, Vec<Mode>), String> {
    let mut shadowcat = None;
    let mut redis = procs::find_program("redis-server");
    let mut nginx = procs::find_program("nginx");
    let mut s = Settings {
        shadowcat: PathBuf::new(),
        redis: PathBuf::new(),
        nginx: PathBuf::new(),
        out: PathBuf::from("target/cluster-chaos"),
        seed: 7,
        events: 10_000,
        min_cuts: 100,
        kills: 5,
        deadline: Duration::from_secs(300),
        client_rate: 200.0,
        upstream_rate: 300.0,
        legacy: false,
    };
    let mut modes = vec![Mode::EventStore, Mode::NoEventStore];
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--shadowcat" => shadowcat = Some(PathBuf::from(value(&a)?)),
            "--redis-server" => redis = Some(PathBuf::from(value(&a)?)),
            "--nginx" => nginx = Some(PathBuf::from(value(&a)?)),
            "--out" => s.out = PathBuf::from(value(&a)?),
            "--seed" => s.seed = number(&a, &value(&a)?)?,
            "--events" => s.events = number(&a, &value(&a)?)?,
            "--min-cuts" => s.min_cuts = number(&a, &value(&a)?)?,
            "--kills" => s.kills = number(&a, &value(&a)?)?,
            "--deadline-secs" => s.deadline = Duration::from_secs(number(&a, &value(&a)?)?),
            "--client-rate" => s.client_rate = number(&a, &value(&a)?)?,
            "--upstream-rate" => s.upstream_rate = number(&a, &value(&a)?)?,
            "--legacy" => s.legacy = true,
            "--mode" => {
                modes = match value(&a)?.as_str() {
                    "event-store" => vec![Mode::EventStore],
                    "no-event-store" => vec![Mode::NoEventStore],
                    "both" => vec![Mode::EventStore, Mode::NoEventStore],
                    other => {
                        return Err(format!(
                            "--mode {other:?}: event-store, no-event-store or both"
                        ));
                    }
                }
            }
            "-h" | "--help" => {
                return Err(
                    "see the doc comment at the top of benches/src/bin/cluster_chaos.rs".into(),
                );
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    // Children run in other folders: every path absolute.
    s.out = std::path::absolute(&s.out).map_err(|e| format!("--out: {e}"))?;
    s.shadowcat = shadowcat.ok_or("--shadowcat PATH (the shadowcat binary) is required")?;
    if !s.shadowcat.is_file() {
        return Err(format!("{} is not a file", s.shadowcat.display()));
    }
    s.shadowcat = std::path::absolute(&s.shadowcat).map_err(|e| format!("--shadowcat: {e}"))?;
    s.redis =
        redis.ok_or("redis-server not found (.ci/run installs it; or --redis-server PATH)")?;
    s.nginx = nginx.ok_or("nginx not found (.ci/run installs nginx-light; or --nginx PATH)")?;
    if s.events < 2 || s.client_rate <= 0.0 || s.upstream_rate <= 0.0 {
        return Err("--events must be at least 2 and the rates positive".into());
    }
    Ok((s, modes))
}

/// `p`-th percentile (0..=100) of `v`, 0 when empty.
fn percentile(v: &[u64], p: usize) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    match v.len() {
        0 => 0,
        n => v[((n - 1) * p) / 100],
    }
}

/// The one summary line of a mode, and why it failed.
fn summary(s: &Settings, mode: Mode, o: &Outcome) -> (String, Vec<String>) {
    let t = &o.tally;
    let c = &o.chaos;
    let mut failures = t.failures(mode, s.events);
    if let Some(e) = &o.error {
        failures.insert(0, e.clone());
    }
    if o.timed_out {
        failures.insert(0, format!("deadline of {:?} passed", s.deadline));
    }
    failures.extend(c.errors.iter().cloned());
    failures.extend(
        o.panics
            .iter()
            .map(|p| format!("an instance panicked: {p}")),
    );
    if t.cuts < s.min_cuts {
        failures.push(format!("{} cuts, fewer than {}", t.cuts, s.min_cuts));
    }
    if c.kills < s.kills {
        failures.push(format!("{} kills of {}", c.kills, s.kills));
    }
    // With the replay log, a live stream always has a lease naming its
    // owner: a kill that found none did not test a takeover.
    if !s.legacy && c.owner_kills < c.kills {
        failures.push(format!(
            "{} of {} kills found no lease naming the stream's owner",
            c.kills - c.owner_kills,
            c.kills
        ));
    }
    if c.redis_restarts < 1 {
        failures.push("redis never restarted".into());
    }
    let by_instance = t
        .resumes_by_instance
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(",");
    let refusals = t
        .refusals
        .iter()
        .map(|(k, (n, _))| format!("{k}:{n}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut line = format!(
        "cluster-chaos mode={} seed={} events={} cuts={} drops={} stalls={} kills={} owner_kills={} redis_restarts={} takeovers={} takeover_by={} worst_takeover_ms={} lost={} duplicated={} out_of_order={} named_errors={} calls={} resumes={} resumes_by_instance={} refusals={} worst_resume_ms={} p50_resume_ms={} secs={:.1} {}",
        mode.name(),
        s.seed,
        t.delivered(),
        t.cuts,
        t.drops,
        t.stalls,
        c.kills,
        c.owner_kills,
        c.redis_restarts,
        c.takeovers,
        if c.new_owners.is_empty() {
            "-".to_owned()
        } else {
            c.new_owners.join(",")
        },
        c.takeover_ms.iter().max().copied().unwrap_or(0),
        t.lost(mode),
        t.duplicated(),
        t.out_of_order(),
        t.named_errors(),
        t.streams.len(),
        t.resumes,
        if by_instance.is_empty() {
            "-"
        } else {
            &by_instance
        },
        if refusals.is_empty() { "-" } else { &refusals },
        t.resume_ms.iter().max().copied().unwrap_or(0),
        percentile(&t.resume_ms, 50),
        o.elapsed.as_secs_f64(),
        if failures.is_empty() { "PASS" } else { "FAIL" },
    );
    if c.no_takeover > 0 || c.no_lease_kills > 0 {
        let _ = write!(
            line,
            " (no_lease_kills={} no_takeover={})",
            c.no_lease_kills, c.no_takeover
        );
    }
    (line, failures)
}

async fn run_all(s: &Settings, modes: &[Mode]) -> bool {
    let mut ok = true;
    for &mode in modes {
        let outcome = run::run_mode(s, mode).await;
        let (line, failures) = summary(s, mode, &outcome);
        let mut text = format!("{line}\n");
        for f in &failures {
            let _ = writeln!(text, "  {}: {f}", mode.name());
        }
        for (status, (n, msg)) in &outcome.tally.refusals {
            let msg: String = msg.chars().take(300).collect();
            let _ = writeln!(
                text,
                "  {}: resume refused {n}x with {status}: {msg}",
                mode.name()
            );
        }
        if !failures.is_empty() {
            let _ = writeln!(text, "  {}: logs in {}", mode.name(), outcome.dir.display());
            ok = false;
        }
        let mut out = std::io::stdout().lock();
        if out
            .write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            ok = false;
        }
    }
    ok
}

fn main() -> ExitCode {
    let (settings, modes) = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cluster-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cluster-chaos: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Ctrl-C drops the run, and with it every child's guard.
    let ok = rt.block_on(async {
        tokio::select! {
            ok = run_all(&settings, &modes) => ok,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("cluster-chaos: interrupted");
                false
            }
        }
    });
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
