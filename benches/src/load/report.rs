//! Medians over rounds, ratios against the direct connection, and the
//! report as Markdown tables and JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::scenario::Sample;

/// The target every other is compared with.
pub(crate) const BASELINE: &str = "direct";

/// One measured point of a scenario: every round's samples and the
/// medians.
#[derive(Debug, Serialize)]
pub(crate) struct Point {
    /// The scenario (`stream`, `max`, `requests`, `idle`, `store`).
    pub(crate) scenario: &'static str,
    /// What this point is, e.g. `100 sessions x 100 events/s`.
    pub(crate) label: String,
    /// The load's parameters.
    pub(crate) params: serde_json::Value,
    /// Per target, medians over rounds.
    pub(crate) summary: Vec<Summary>,
    /// Every round's samples, in the order they ran.
    pub(crate) rounds: Vec<Vec<Sample>>,
}

/// One target's medians at one point.
#[derive(Debug, Serialize)]
pub(crate) struct Summary {
    /// The target.
    pub(crate) target: String,
    /// Median of each figure over the rounds.
    pub(crate) median: BTreeMap<&'static str, f64>,
    /// Against the direct connection in the same round, then the median:
    /// `throughput_ratio`, `added_p50_us`, `added_p99_us`, `added_p999_us`.
    pub(crate) vs_direct: BTreeMap<&'static str, f64>,
}

impl Summary {
    /// A median or a comparison figure.
    pub(crate) fn get(&self, key: &str) -> Option<f64> {
        self.median
            .get(key)
            .or_else(|| self.vs_direct.get(key))
            .copied()
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

const COMPARED: [(&str, &str); 3] = [
    ("added_p50_us", "latency_p50_us"),
    ("added_p99_us", "latency_p99_us"),
    ("added_p999_us", "latency_p999_us"),
];

/// Medians and comparisons of `rounds`.
pub(crate) fn summarize(rounds: &[Vec<Sample>]) -> Vec<Summary> {
    let mut names: Vec<String> = Vec::new();
    for s in rounds.iter().flatten() {
        if !names.contains(&s.target) {
            names.push(s.target.clone());
        }
    }
    names
        .into_iter()
        .map(|name| {
            let mine: Vec<&Sample> = rounds
                .iter()
                .flatten()
                .filter(|s| s.target == name)
                .collect();
            let mut keys: Vec<&'static str> =
                mine.iter().flat_map(|s| s.values.keys().copied()).collect();
            keys.sort_unstable();
            keys.dedup();
            let median_of = |key| median(mine.iter().filter_map(|s| s.get(key)).collect());
            let medians = keys
                .iter()
                .filter_map(|&k| Some((k, median_of(k)?)))
                .collect();
            let mut vs_direct = BTreeMap::new();
            if name != BASELINE {
                let pairs: Vec<(&Sample, &Sample)> = rounds
                    .iter()
                    .filter_map(|r| {
                        let me = r.iter().find(|s| s.target == name)?;
                        let base = r.iter().find(|s| s.target == BASELINE)?;
                        Some((me, base))
                    })
                    .collect();
                let ratio = |key: &str| {
                    median(
                        pairs
                            .iter()
                            .filter_map(|(me, base)| {
                                Some(me.get(key)? / base.get(key).filter(|b| *b > 0.0)?)
                            })
                            .collect(),
                    )
                };
                if let Some(r) = ratio("events_per_s").or_else(|| ratio("requests_per_s")) {
                    vs_direct.insert("throughput_ratio", r);
                }
                for (added, key) in COMPARED {
                    let d = median(
                        pairs
                            .iter()
                            .filter_map(|(me, base)| Some(me.get(key)? - base.get(key)?))
                            .collect(),
                    );
                    if let Some(d) = d {
                        vs_direct.insert(added, d);
                    }
                }
            }
            Summary {
                target: name,
                median: medians,
                vs_direct,
            }
        })
        .collect()
}

/// A column of a table: header, figure, decimals.
pub(crate) type Column = (&'static str, &'static str, usize);

/// The columns shown for each scenario.
pub(crate) fn columns(scenario: &str) -> &'static [Column] {
    match scenario {
        "stream" => &[
            ("events/s", "events_per_s", 0),
            ("x direct", "throughput_ratio", 2),
            ("p50 us", "latency_p50_us", 0),
            ("p99 us", "latency_p99_us", 0),
            ("p99.9 us", "latency_p999_us", 0),
            ("added p50", "added_p50_us", 0),
            ("added p99", "added_p99_us", 0),
            ("added p99.9", "added_p999_us", 0),
            ("proxy CPU %", "proxy_cpu_percent", 0),
            ("CPU us/event", "proxy_cpu_us_per_event", 3),
            ("RSS KiB", "rss_kib", 0),
            ("peak RSS KiB", "rss_peak_kib", 0),
            ("errors", "errors", 0),
        ],
        "max" => &[
            ("events/s", "events_per_s", 0),
            ("x direct", "throughput_ratio", 2),
            ("p50 us", "latency_p50_us", 0),
            ("p99 us", "latency_p99_us", 0),
            ("p99.9 us", "latency_p999_us", 0),
            ("proxy CPU %", "proxy_cpu_percent", 0),
            ("CPU us/event", "proxy_cpu_us_per_event", 3),
            ("RSS KiB", "rss_kib", 0),
            ("peak RSS KiB", "rss_peak_kib", 0),
            ("errors", "errors", 0),
        ],
        "cluster" => &[
            ("events/s", "events_per_s", 0),
            ("p50 us", "latency_p50_us", 0),
            ("p99 us", "latency_p99_us", 0),
            ("p99.9 us", "latency_p999_us", 0),
            ("added p50 vs off", "added_p50_vs_off_us", 0),
            ("added p99 vs off", "added_p99_vs_off_us", 0),
            ("CPU us/event", "proxy_cpu_us_per_event", 2),
            ("added CPU vs off", "added_cpu_us_per_event_vs_off", 2),
            ("Redis CPU us/event", "redis_cpu_us_per_event", 2),
            ("Redis round trips/event", "redis_round_trips_per_event", 3),
            ("Redis commands/event", "redis_commands_per_event", 2),
            ("log batches", "replay_log_appends", 0),
            ("events/batch", "replay_log_batch_mean", 2),
            ("script calls/batch", "replay_log_round_trips_per_batch", 3),
            ("append mean us", "replay_log_append_mean_us", 0),
            ("degraded", "replay_log_degraded", 0),
            ("errors", "errors", 0),
        ],
        "store" => &[
            ("events/s", "events_per_s", 0),
            ("p99 us", "latency_p99_us", 0),
            ("CPU us/event", "proxy_cpu_us_per_event", 3),
            ("store trips/event", "store_round_trips_per_event", 5),
            ("keys/event", "store_keys_per_event", 4),
            ("store batches", "store_batches", 0),
            ("keys written", "store_keys_written", 0),
            ("write errors", "store_write_errors", 0),
            ("errors", "errors", 0),
        ],
        "requests" => &[
            ("requests/s", "requests_per_s", 0),
            ("x direct", "throughput_ratio", 2),
            ("p50 us", "latency_p50_us", 0),
            ("p99 us", "latency_p99_us", 0),
            ("added p50", "added_p50_us", 0),
            ("added p99", "added_p99_us", 0),
            ("proxy CPU %", "proxy_cpu_percent", 0),
            ("CPU us/request", "proxy_cpu_us_per_request", 2),
            (
                "upstream accepts/request",
                "upstream_accepts_per_request",
                5,
            ),
            (
                "connects/request (metric)",
                "upstream_connects_per_request",
                5,
            ),
            ("TIME_WAIT added", "upstream_time_wait_added", 0),
            ("upstream conns open", "upstream_open", 0),
            ("SSE answers %", "answers_sse_percent", 0),
            ("RSS KiB", "rss_kib", 0),
            ("peak RSS KiB", "rss_peak_kib", 0),
            ("errors", "errors", 0),
        ],
        _ => &[
            ("streams asked", "streams_asked", 0),
            ("streams open", "streams_open", 0),
            ("closed early", "closed_early", 0),
            ("KiB/stream", "rss_per_stream_kib", 2),
            ("RSS KiB", "rss_kib", 0),
            ("RSS base KiB", "rss_base_kib", 0),
            ("first byte p50 ms", "first_byte_p50_ms", 1),
            ("first byte p99 ms", "first_byte_p99_ms", 1),
            ("first byte max ms", "first_byte_max_ms", 1),
            ("first byte <= 10 ms", "first_byte_within_10ms", 0),
            ("no first byte", "first_byte_missing", 0),
            ("idle CPU %", "proxy_cpu_percent", 1),
            ("threads", "threads", 0),
            ("errors", "errors", 0),
        ],
    }
}

/// Which way a figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Lower,
    Higher,
}

/// The figures compared head to head, per scenario.
fn compared(scenario: &str) -> &'static [(&'static str, &'static str, Better)] {
    use Better::{Higher, Lower};
    match scenario {
        "requests" => &[
            ("requests/s", "requests_per_s", Higher),
            ("proxy CPU us/request", "proxy_cpu_us_per_request", Lower),
            ("p50 us", "latency_p50_us", Lower),
            ("p99 us", "latency_p99_us", Lower),
            (
                "new upstream connections/request",
                "upstream_accepts_per_request",
                Lower,
            ),
        ],
        "max" => &[
            ("throughput x direct", "throughput_ratio", Higher),
            ("proxy CPU us/event", "proxy_cpu_us_per_event", Lower),
            ("p99.9 us", "latency_p999_us", Lower),
            ("peak RSS KiB", "rss_peak_kib", Lower),
        ],
        "stream" => &[
            ("added p99 us", "added_p99_us", Lower),
            ("proxy CPU us/event", "proxy_cpu_us_per_event", Lower),
        ],
        "idle" => &[
            ("streams open", "streams_open", Higher),
            ("KiB/stream", "rss_per_stream_kib", Lower),
            ("first byte p99 ms", "first_byte_p99_ms", Lower),
            (
                "streams with a first byte within 10 ms",
                "first_byte_within_10ms",
                Higher,
            ),
            ("streams with no first byte", "first_byte_missing", Lower),
        ],
        _ => &[],
    }
}

/// How `ours` stands against `theirs`: ahead or behind, by a factor when
/// both are positive, else by the difference.
fn verdict(ours: f64, theirs: f64, better: Better) -> String {
    if ours == theirs {
        return "level".into();
    }
    let behind = (ours > theirs) == (better == Better::Lower);
    let word = if behind { "behind" } else { "ahead" };
    if ours > 0.0 && theirs > 0.0 {
        format!("{word}, {:.2}x", ours.max(theirs) / ours.min(theirs))
    } else {
        format!("{word}, by {}", figure((ours - theirs).abs()))
    }
}

/// Shadowcat against nginx, figure by figure, over every point that has
/// both.
pub(crate) fn versus(points: &[Point]) -> String {
    let mut t = String::from(
        "shadowcat against nginx (medians; the factor is how far ahead or behind)\n\n\
         | point | figure | shadowcat | nginx | shadowcat is |\n|---|---|---:|---:|---|\n",
    );
    let mut rows = 0;
    for p in points {
        let find = |name: &str| p.summary.iter().find(|s| s.target == name);
        let (Some(sc), Some(ng)) = (find("shadowcat"), find("nginx")) else {
            continue;
        };
        for &(label, key, better) in compared(p.scenario) {
            let (Some(a), Some(b)) = (sc.get(key), ng.get(key)) else {
                continue;
            };
            let _ = writeln!(
                t,
                "| {} {} | {label} | {} | {} | {} |",
                p.scenario,
                p.label,
                figure(a),
                figure(b),
                verdict(a, b, better)
            );
            rows += 1;
        }
    }
    if rows == 0 { String::new() } else { t }
}

/// A figure with as many decimals as its size wants.
fn figure(v: f64) -> String {
    match v.abs() {
        x if x >= 100.0 => format!("{v:.0}"),
        x if x >= 1.0 => format!("{v:.2}"),
        x if x >= 0.001 || x == 0.0 => format!("{v:.3}"),
        _ => format!("{v:.1e}"),
    }
}

/// A point as a Markdown table (rows: targets).
pub(crate) fn table(point: &Point) -> String {
    let cols = columns(point.scenario);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{} — {} (medians of {} round{})\n",
        point.scenario,
        point.label,
        point.rounds.len(),
        if point.rounds.len() == 1 { "" } else { "s" }
    );
    t.push_str("| target |");
    for (h, _, _) in cols {
        let _ = write!(t, " {h} |");
    }
    t.push_str("\n|---|");
    for _ in cols {
        t.push_str("---:|");
    }
    t.push('\n');
    for s in &point.summary {
        let _ = write!(t, "| {} |", s.target);
        for &(_, key, decimals) in cols {
            match s.get(key) {
                Some(v) => {
                    let _ = write!(t, " {v:.decimals$} |");
                }
                None => t.push_str(" n/a |"),
            }
        }
        t.push('\n');
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(target: &str, pairs: &[(&'static str, f64)]) -> Sample {
        Sample {
            target: target.into(),
            values: pairs.iter().copied().collect(),
        }
    }

    #[test]
    fn medians_and_comparisons() {
        let rounds = vec![
            vec![
                sample(
                    "direct",
                    &[("events_per_s", 100.0), ("latency_p99_us", 10.0)],
                ),
                sample(
                    "shadowcat",
                    &[("events_per_s", 80.0), ("latency_p99_us", 15.0)],
                ),
            ],
            vec![
                sample(
                    "shadowcat",
                    &[("events_per_s", 90.0), ("latency_p99_us", 30.0)],
                ),
                sample(
                    "direct",
                    &[("events_per_s", 100.0), ("latency_p99_us", 12.0)],
                ),
            ],
            vec![
                sample(
                    "direct",
                    &[("events_per_s", 50.0), ("latency_p99_us", 11.0)],
                ),
                sample(
                    "shadowcat",
                    &[("events_per_s", 45.0), ("latency_p99_us", 13.0)],
                ),
            ],
        ];
        let s = summarize(&rounds);
        assert_eq!(s.len(), 2);
        let sc = s.iter().find(|s| s.target == "shadowcat").unwrap();
        assert_eq!(sc.get("events_per_s"), Some(80.0));
        // Ratios per round: 0.8, 0.9, 0.9 → 0.9.
        assert_eq!(sc.get("throughput_ratio"), Some(0.9));
        // Added p99 per round: 5, 18, 2 → 5.
        assert_eq!(sc.get("added_p99_us"), Some(5.0));
        let direct = s.iter().find(|s| s.target == "direct").unwrap();
        assert!(direct.vs_direct.is_empty());
        assert_eq!(median(vec![1.0, 4.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn verdicts_say_which_way_and_how_far() {
        assert_eq!(verdict(20.0, 10.0, Better::Lower), "behind, 2.00x");
        assert_eq!(verdict(5.0, 10.0, Better::Lower), "ahead, 2.00x");
        assert_eq!(verdict(5.0, 10.0, Better::Higher), "behind, 2.00x");
        assert_eq!(verdict(30.0, 10.0, Better::Higher), "ahead, 3.00x");
        assert_eq!(verdict(0.5, 0.0, Better::Lower), "behind, by 0.500");
        assert_eq!(verdict(0.0, 0.00002, Better::Lower), "ahead, by 2.0e-5");
        assert_eq!(verdict(1.0, 1.0, Better::Lower), "level");
    }

    #[test]
    fn versus_compares_shadowcat_with_nginx() {
        let rounds = vec![vec![
            sample("direct", &[("requests_per_s", 100.0)]),
            sample(
                "shadowcat",
                &[("requests_per_s", 20.0), ("proxy_cpu_us_per_request", 40.0)],
            ),
            sample(
                "nginx",
                &[("requests_per_s", 60.0), ("proxy_cpu_us_per_request", 10.0)],
            ),
        ]];
        let p = Point {
            scenario: "requests",
            label: "x".into(),
            params: serde_json::Value::Null,
            summary: summarize(&rounds),
            rounds,
        };
        let t = versus(std::slice::from_ref(&p));
        assert!(
            t.contains("| requests x | requests/s | 20.00 | 60.00 | behind, 3.00x |"),
            "{t}"
        );
        assert!(
            t.contains("| proxy CPU us/request | 40.00 | 10.00 | behind, 4.00x |"),
            "{t}"
        );
    }

    #[test]
    fn table_shows_missing_as_na() {
        let rounds = vec![vec![sample("direct", &[("requests_per_s", 10.0)])]];
        let p = Point {
            scenario: "requests",
            label: "x".into(),
            params: serde_json::Value::Null,
            summary: summarize(&rounds),
            rounds,
        };
        let t = table(&p);
        assert!(t.contains("| direct | 10 | n/a |"), "{t}");
    }
}
