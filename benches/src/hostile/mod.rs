//! The hostile-load suite: the attacks of issue 17 against the real
//! `shadowcat` binary on loopback, each bounded in count and time.
//!
//! Every attack starts its own proxy (a TOML config of its own, a memory
//! store) in front of its own misbehaving upstream, checks that a fresh
//! client works, attacks, then reports the proxy's memory (VmRSS before,
//! VmHWM as the peak, VmRSS after), the statuses its clients saw, how long
//! until a fresh `initialize` + `tools/call` from a new client address
//! succeeded, and whether the process stayed up. [`Scale::Full`] runs the
//! issue's sizes (`attack` binary); [`Scale::Ci`] runs sizes and short
//! limits for `benches/tests/hostile.rs`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

pub mod attacks;
mod client;
#[allow(dead_code, unreachable_pub)] // the load harness's helpers; this suite uses some
#[path = "../load/procs.rs"]
mod procs;
mod proxy;
mod upstream;

/// The binary under attack.
#[derive(Debug, Clone)]
pub struct Target {
    /// The `shadowcat` binary.
    pub bin: PathBuf,
    /// Where config files and logs go.
    pub dir: PathBuf,
    /// Leave out config keys added by issue 17 (for a binary from before).
    pub legacy: bool,
}

/// The sizes an attack runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// The sizes and default limits.
    Full,
    /// Small sizes and short limits, for CI.
    Ci,
}

/// Why an attack could not be run (not what it found).
#[derive(Debug, thiserror::Error)]
pub enum AttackError {
    /// The proxy or upstream could not be set up.
    #[error("setup: {0}")]
    Setup(String),
    /// A fresh session did not work before the attack started.
    #[error("the proxy did not work before the attack: {0}")]
    NotWorking(String),
}

/// How long a fresh client took to succeed after the attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// It succeeded this long after the attack ended.
    After(Duration),
    /// It did not within this bound.
    NotWithin(Duration),
    /// Not measured (the attack stops the process).
    NotApplicable,
}

/// What one attack found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The number for it (`F1`…).
    pub id: &'static str,
    /// What was done, with sizes.
    pub attack: String,
    /// VmRSS once a fresh session worked, before the attack, in KiB.
    pub rss_before_kib: u64,
    /// VmHWM at the end of the attack, in KiB.
    pub rss_peak_kib: u64,
    /// VmRSS after recovery, in KiB (`None`: the process is gone).
    pub rss_after_kib: Option<u64>,
    /// How many of each outcome the attack's clients saw.
    pub statuses: BTreeMap<String, u64>,
    /// Time until a fresh client succeeded.
    pub recovery: Recovery,
    /// Whether the process was still running at the end.
    pub up: bool,
    /// Named figures the tests assert on.
    pub facts: BTreeMap<&'static str, u64>,
    /// Anything else worth a line.
    pub notes: Vec<String>,
}

impl Report {
    /// Peak minus before, in KiB.
    pub fn growth_kib(&self) -> u64 {
        self.rss_peak_kib.saturating_sub(self.rss_before_kib)
    }

    /// How many times outcome `label` was seen.
    pub fn count(&self, label: &str) -> u64 {
        self.statuses.get(label).copied().unwrap_or(0)
    }

    /// A named figure (`None`: not measured).
    pub fn fact(&self, name: &str) -> Option<u64> {
        self.facts.get(name).copied()
    }

    /// Every status, note and figure, for assertion messages.
    pub fn summary(&self) -> String {
        format!(
            "{} {}: rss {} → {} → {:?} KiB, statuses {:?}, recovery {:?}, up {}, facts {:?}, notes {:?}",
            self.id,
            self.attack,
            self.rss_before_kib,
            self.rss_peak_kib,
            self.rss_after_kib,
            self.statuses,
            self.recovery,
            self.up,
            self.facts,
            self.notes
        )
    }
}

fn mb(kib: u64) -> String {
    format!("{:.0}", kib as f64 / 1024.0)
}

/// The reports as a markdown table: attack, RSS before → peak → after,
/// statuses, recovery, process up, notes.
pub fn markdown(reports: &[Report]) -> String {
    let mut s = String::from(
        "| # | attack | RSS MB before → peak → after | statuses | recovery | up | notes |\n|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        let statuses = r
            .statuses
            .iter()
            .map(|(k, v)| format!("{k} ×{v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let recovery = match r.recovery {
            Recovery::After(d) => format!("{:.1} s", d.as_secs_f64()),
            Recovery::NotWithin(d) => format!("> {:.0} s", d.as_secs_f64()),
            Recovery::NotApplicable => "n/a".into(),
        };
        let after = r.rss_after_kib.map_or_else(|| "gone".into(), mb);
        let _ = writeln!(
            s,
            "| {} | {} | {} → {} → {} | {} | {} | {} | {} |",
            r.id,
            r.attack,
            mb(r.rss_before_kib),
            mb(r.rss_peak_kib),
            after,
            statuses,
            recovery,
            if r.up { "yes" } else { "no" },
            r.notes.join("; ")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_a_row_per_report() {
        let r = Report {
            id: "F8",
            attack: "head".into(),
            rss_before_kib: 8 * 1024,
            rss_peak_kib: 131 * 1024,
            rss_after_kib: None,
            statuses: [("431".to_owned(), 2)].into_iter().collect(),
            recovery: Recovery::After(Duration::from_millis(1500)),
            up: true,
            facts: BTreeMap::new(),
            notes: vec!["a".into(), "b".into()],
        };
        let t = markdown(&[r.clone(), r]);
        assert_eq!(t.lines().count(), 4);
        assert!(
            t.contains("| F8 | head | 8 → 131 → gone | 431 ×2 | 1.5 s | yes | a; b |"),
            "{t}"
        );
    }
}
