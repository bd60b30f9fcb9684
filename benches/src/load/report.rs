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
        "stream" | "max" => &[
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
            ("threads", "threads", 0),
            ("tasks", "tasks_alive", 0),
            ("store trips/event", "store_round_trips_per_event", 5),
            ("keys/event", "store_keys_per_event", 4),
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
            ("RSS KiB", "rss_kib", 0),
            ("errors", "errors", 0),
        ],
        _ => &[
            ("streams asked", "streams_asked", 0),
            ("streams open", "streams_open", 0),
            ("RSS KiB", "rss_kib", 0),
            ("RSS base KiB", "rss_base_kib", 0),
            ("KiB/stream", "rss_per_stream_kib", 2),
            ("idle CPU %", "proxy_cpu_percent", 1),
            ("threads", "threads", 0),
            ("errors", "errors", 0),
        ],
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
