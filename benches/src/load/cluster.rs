//! The `cluster` scenario: what the shared replay log (issue 13) costs.
//! Two Shadowcat instances on one redis-server (loopback, started here),
//! the same store, one with `--replay-log on`, one with `--replay-log
//! off`, each in front of the harness's upstream; a paced stream load
//! (100 sessions × 100 events/s by default), rounds in rotated order.
//!
//! Per run, over the measured window: Redis's commands (`INFO
//! commandstats`, every command it executed, those run inside scripts
//! included, with the time it spent in each), its round trips (script
//! calls plus the session store's own count; an upper bound, as the
//! store's script calls are in both), its socket reads and its CPU (/proc
//! schedstat of its threads); the owner's batches (`shadowcat_replay_log_appends_total`,
//! `_events_total`) and append time; and, per round, the log-on run
//! against the log-off run: added p50/p99 and proxy CPU per event.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::procs::{self, RedisSnap, RedisWatch, metric_sum};
use crate::report::Point;
use crate::scenario::{self, Sample, StreamLoad, Target, Via};
use crate::{Env, Plan, point, rounds};

/// The target with the log.
pub(crate) const LOG_ON: &str = "shadowcat-log-on";
/// The target without it (same Redis, same store).
pub(crate) const LOG_OFF: &str = "shadowcat-log-off";

/// A figure's name for a Redis command (`redis_calls_xadd`): made once
/// per name and thread, and Redis has a few hundred commands.
fn key(prefix: &str, command: &str) -> &'static str {
    thread_local! {
        static KEYS: RefCell<BTreeSet<&'static str>> = const { RefCell::new(BTreeSet::new()) };
    }
    let name = format!("{prefix}{command}");
    KEYS.with_borrow_mut(|keys| {
        if let Some(k) = keys.get(name.as_str()) {
            return *k;
        }
        let k: &'static str = Box::leak(name.into_boxed_str());
        keys.insert(k);
        k
    })
}

/// Fills the Redis and replay-log figures of a window from `a` to `b`:
/// Redis's snapshots (`ra`, `rb`) and the target's `/metrics` (`ma`,
/// `mb`). `s` already holds `events`.
pub(crate) fn window_figures(
    s: &mut Sample,
    (ra, rb): (Option<&RedisSnap>, Option<&RedisSnap>),
    (ma, mb): (&str, &str),
) {
    let events = s.get("events").filter(|e| *e > 0.0);
    let per_event = |v: Option<f64>| v.zip(events).map(|(v, e)| v / e);
    let delta = |name| Some(metric_sum(mb, name)? - metric_sum(ma, name).unwrap_or(0.0));
    let appends = delta("shadowcat_replay_log_appends_total");
    let logged = delta("shadowcat_replay_log_events_total");
    s.set("replay_log_appends", appends);
    s.set("replay_log_events", logged);
    if appends.is_some() {
        let degraded = delta("shadowcat_replay_log_degraded_total").or(Some(0.0));
        s.set("replay_log_degraded", degraded);
    }
    let appends = appends.filter(|a| *a > 0.0);
    s.set(
        "replay_log_batch_mean",
        logged.zip(appends).map(|(e, a)| e / a),
    );
    let append_s = delta("shadowcat_replay_log_append_seconds_sum");
    let append_n = delta("shadowcat_replay_log_append_seconds_count").filter(|n| *n > 0.0);
    s.set(
        "replay_log_append_mean_us",
        append_s.zip(append_n).map(|(t, n)| t * 1e6 / n),
    );
    // The exporter's summary covers its last minute, not just this window.
    let p99 = mb.lines().find_map(|l| {
        l.strip_prefix("shadowcat_replay_log_append_seconds{quantile=\"0.99\"} ")
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    s.set("replay_log_append_p99_recent_us", p99.map(|v| v * 1e6));

    let (Some(ra), Some(rb)) = (ra, rb) else {
        return;
    };
    let calls = |name: &str| {
        rb.calls
            .get(name)
            .map(|b| b.saturating_sub(ra.calls.get(name).copied().unwrap_or(0)) as f64)
    };
    let mut total = 0.0;
    // Every command Redis ran in the window (`info` is the harness's).
    for (name, b) in rb.calls.iter().filter(|(n, _)| *n != "info") {
        let n = b.saturating_sub(ra.calls.get(name).copied().unwrap_or(0));
        total += n as f64;
        s.set(key("redis_calls_", name), Some(n as f64));
        let usec = rb.usec.get(name).copied().unwrap_or(0);
        let usec = usec.saturating_sub(ra.usec.get(name).copied().unwrap_or(0));
        s.set(key("redis_usec_", name), Some(usec as f64));
    }
    s.set("redis_commands", Some(total));
    s.set("redis_commands_per_event", per_event(Some(total)));
    // Round trips: a script call is one whatever it runs inside; the
    // session store counts its own (a pipeline as one). The store's own
    // script calls are in both counts, so both figures are upper bounds
    // (the log-off run shows the store's share).
    let scripts = calls("evalsha").unwrap_or(0.0) + calls("eval").unwrap_or(0.0);
    let store = delta("shadowcat_store_round_trips_total");
    s.set("redis_script_calls", Some(scripts));
    s.set("redis_script_calls_per_event", per_event(Some(scripts)));
    let trips = store.map(|st| st + scripts);
    s.set("redis_round_trips", trips);
    s.set("redis_round_trips_per_event", per_event(trips));
    s.set(
        "replay_log_round_trips_per_batch",
        appends.map(|a| scripts / a),
    );
    let reads = rb
        .reads
        .zip(ra.reads)
        .map(|(b, a)| b.saturating_sub(a) as f64);
    s.set("redis_socket_reads", reads);
    s.set("redis_socket_reads_per_event", per_event(reads));
    let cpu = procs::cpu_between(&ra.cpu, &rb.cpu);
    s.set("redis_cpu_s", Some(cpu));
    s.set("redis_cpu_us_per_event", per_event(Some(cpu * 1e6)));
}

/// In each round, the log-on run against the log-off run: added latency
/// and proxy CPU per event (set on the log-on sample).
fn compare_rounds(all: &mut [Vec<Sample>]) {
    const PAIRS: [(&str, &str); 5] = [
        ("added_p50_vs_off_us", "latency_p50_us"),
        ("added_p99_vs_off_us", "latency_p99_us"),
        ("added_p999_vs_off_us", "latency_p999_us"),
        ("added_cpu_us_per_event_vs_off", "proxy_cpu_us_per_event"),
        (
            "added_redis_cpu_us_per_event_vs_off",
            "redis_cpu_us_per_event",
        ),
    ];
    for round in all {
        let off: Vec<Option<f64>> = {
            let Some(off) = round.iter().find(|s| s.target == LOG_OFF) else {
                continue;
            };
            PAIRS.iter().map(|(_, k)| off.get(k)).collect()
        };
        let Some(on) = round.iter_mut().find(|s| s.target == LOG_ON) else {
            continue;
        };
        for ((added, key), off) in PAIRS.iter().zip(off) {
            let d = on.get(key).zip(off).map(|(a, b)| a - b);
            on.set(added, d);
        }
    }
}

/// The figures a reader wants first, as sentences under the table.
pub(crate) fn summary(points: &[Point]) -> String {
    let mut t = String::new();
    for p in points.iter().filter(|p| p.scenario == "cluster") {
        let find = |name: &str| p.summary.iter().find(|s| s.target == name);
        let (Some(on), Some(off)) = (find(LOG_ON), find(LOG_OFF)) else {
            continue;
        };
        let f = |v: Option<f64>, d: usize| v.map_or("n/a".to_owned(), |v| format!("{v:.d$}"));
        let _ = writeln!(
            t,
            "shared replay log, {} (medians of {} rounds):\n\
             - Redis round trips per event with the log on: {} ({} script calls per event, \
             {} per logged batch; {} commands per event counted by Redis, those inside scripts included; \
             log off: {} round trips, {} commands per event)\n\
             - mean batch: {} events per append ({} appends, mean append {} us)\n\
             - latency p50/p99: log on {}/{} us, log off {}/{} us; added p99 (same round) {} us\n\
             - proxy CPU per event: log on {} us, log off {} us, added {} us\n\
             - Redis CPU per event: log on {} us, log off {} us",
            p.label,
            p.rounds.len(),
            f(on.get("redis_round_trips_per_event"), 3),
            f(on.get("redis_script_calls_per_event"), 3),
            f(on.get("replay_log_round_trips_per_batch"), 3),
            f(on.get("redis_commands_per_event"), 2),
            f(off.get("redis_round_trips_per_event"), 3),
            f(off.get("redis_commands_per_event"), 2),
            f(on.get("replay_log_batch_mean"), 2),
            f(on.get("replay_log_appends"), 0),
            f(on.get("replay_log_append_mean_us"), 0),
            f(on.get("latency_p50_us"), 0),
            f(on.get("latency_p99_us"), 0),
            f(off.get("latency_p50_us"), 0),
            f(off.get("latency_p99_us"), 0),
            f(on.get("added_p99_vs_off_us"), 0),
            f(on.get("proxy_cpu_us_per_event"), 2),
            f(off.get("proxy_cpu_us_per_event"), 2),
            f(on.get("added_cpu_us_per_event_vs_off"), 2),
            f(on.get("redis_cpu_us_per_event"), 2),
            f(off.get("redis_cpu_us_per_event"), 2),
        );
    }
    t
}

/// Starts Redis and the two instances, runs the rounds, adds the point.
pub(crate) async fn run(env: &mut Env, plan: &Plan, points: &mut Vec<Point>) {
    let Some(bin) = env.args.redis.clone() else {
        return env.note("cluster: redis-server not found; not measured".into());
    };
    let redis = match procs::Redis::start(&bin, &env.dir).await {
        Ok(r) => r,
        Err(e) => return env.note(format!("cluster: Redis not measured: {e}")),
    };
    let watch = RedisWatch {
        addr: redis.addr,
        pid: redis.proc.child.id(),
    };
    let store = format!("redis://{}/0", redis.addr);
    let mut targets = Vec::new();
    for (name, log) in [(LOG_ON, "on"), (LOG_OFF, "off")] {
        let started = procs::Shadowcat::start_with(
            &env.args.shadowcat,
            &env.dir,
            &format!("cluster-{name}"),
            env.upstream,
            &store,
            &["--replay-log", log],
        )
        .await;
        match started {
            Ok(mut s) => {
                s.redis = Some(watch);
                targets.push(Target {
                    name: name.into(),
                    addr: s.addr,
                    via: Via::Shadowcat(s),
                    up: env.up,
                });
            }
            Err(e) => env.note(format!("cluster: {name} not measured: {e}")),
        }
    }
    let load = StreamLoad {
        sessions: plan.stream_sessions,
        rate: plan.stream_rates.first().copied().unwrap_or(100),
        batch: 1,
        size: 0,
        warm_ms: plan.warm_ms,
        window_ms: plan.cluster_window_ms,
    };
    let mut r = rounds(&targets, plan.rounds, async |t| {
        scenario::stream_once(t, load).await
    })
    .await;
    compare_rounds(&mut r);
    let logged: f64 = r
        .iter()
        .flatten()
        .filter(|s| s.target == LOG_ON)
        .filter_map(|s| s.get("replay_log_appends"))
        .sum();
    if logged <= 0.0 {
        env.note(format!(
            "cluster: {LOG_ON} logged nothing (no shadowcat_replay_log_appends_total): its figures are not the log's"
        ));
    }
    drop(targets);
    drop(redis);
    points.push(point(
        "cluster",
        format!(
            "{} sessions x {} events/s, one redis-server, replay log on vs off",
            load.sessions, load.rate
        ),
        serde_json::json!({"load": load, "redis": procs::version(&bin, "--version")}),
        r,
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# Stats\r\ntotal_reads_processed:120\r\n# Commandstats\r\n\
        cmdstat_evalsha:calls=10,usec=80,usec_per_call=8.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_xadd:calls=30,usec=9,usec_per_call=0.30,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_info:calls=4,usec=52,usec_per_call=13.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_client|list:calls=1,usec=5,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\n";

    fn sample(target: &str, pairs: &[(&'static str, f64)]) -> Sample {
        Sample {
            target: target.into(),
            values: pairs.iter().copied().collect(),
        }
    }

    #[test]
    fn window_counts_commands_but_not_info() {
        let a = procs::parse_info(INFO);
        let mut b = procs::parse_info(INFO);
        *b.calls.get_mut("evalsha").unwrap() += 20;
        *b.calls.get_mut("xadd").unwrap() += 40;
        *b.calls.get_mut("info").unwrap() += 2;
        b.calls.insert("subscribe".into(), 1);
        b.reads = Some(150);
        let ma = "shadowcat_replay_log_appends_total 100\nshadowcat_replay_log_events_total 150\nshadowcat_store_round_trips_total{store=\"redis\"} 5\n";
        let mb = "shadowcat_replay_log_appends_total 120\nshadowcat_replay_log_events_total 190\nshadowcat_store_round_trips_total{store=\"redis\"} 9\n";
        let mut s = sample(LOG_ON, &[("events", 40.0)]);
        window_figures(&mut s, (Some(&a), Some(&b)), (ma, mb));
        assert_eq!(s.get("redis_commands"), Some(61.0));
        assert_eq!(s.get("redis_calls_subscribe"), Some(1.0));
        assert_eq!(s.get("redis_calls_xadd"), Some(40.0));
        assert_eq!(s.get("redis_calls_info"), None);
        assert_eq!(s.get("redis_script_calls"), Some(20.0));
        assert_eq!(s.get("redis_round_trips"), Some(24.0));
        assert_eq!(s.get("redis_round_trips_per_event"), Some(0.6));
        assert_eq!(s.get("replay_log_batch_mean"), Some(2.0));
        assert_eq!(s.get("replay_log_round_trips_per_batch"), Some(1.0));
        assert_eq!(s.get("replay_log_degraded"), Some(0.0));
        assert_eq!(s.get("redis_socket_reads"), Some(30.0));
    }

    #[test]
    fn rounds_compare_on_with_off() {
        let mut all = vec![vec![
            sample(
                LOG_OFF,
                &[("latency_p99_us", 100.0), ("proxy_cpu_us_per_event", 5.0)],
            ),
            sample(
                LOG_ON,
                &[("latency_p99_us", 130.0), ("proxy_cpu_us_per_event", 7.5)],
            ),
        ]];
        compare_rounds(&mut all);
        let on = &all[0][1];
        assert_eq!(on.get("added_p99_vs_off_us"), Some(30.0));
        assert_eq!(on.get("added_cpu_us_per_event_vs_off"), Some(2.5));
        assert_eq!(on.get("added_p50_vs_off_us"), None);
        assert_eq!(all[0][0].get("added_p99_vs_off_us"), None);
    }
}
