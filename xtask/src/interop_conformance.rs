//! The conformance scenarios of `cargo xtask interop`: the MCP conformance
//! suite's server scenarios, on two tracks (the stable release and the
//! pre-release), against our fixture server (`interop/ts/fixture-server.mjs`)
//! directly and then through Shadowcat.
//!
//! The rule: every scenario passes directly (the fixture implements them
//! all), every scenario that passes directly passes through Shadowcat,
//! check by check nothing that succeeds directly fails through Shadowcat,
//! and no check warns through Shadowcat that does not warn directly. Each
//! track writes its row of the table ([`Row`]) next to its logs; the suite
//! prints the table at the end ([`print_table`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use serde_json::Value;

use super::{Ctx, Paths, free_port};

/// The pre-release of the conformance suite is checked against this spec
/// revision's frozen requirements.
const NEXT_REQUIREMENTS: &str = "2025-11-25";

/// The file each track writes its table row to, in its log folder.
const ROW_FILE: &str = "table-row.json";

/// A release of the conformance suite.
#[derive(Debug, Clone, Copy)]
struct Release {
    /// The scenario's name in the suite (and its log folder).
    scenario: &'static str,
    /// The track's name in the table.
    track: &'static str,
    /// The CLI's entry point under node_modules.
    entry: &'static str,
    /// Extra arguments to `server`.
    args: &'static [&'static str],
}

/// The stable release, every server scenario (`--suite all`: the pending
/// ones too).
const STABLE: Release = Release {
    scenario: "conformance-stable",
    track: "stable",
    entry: "@modelcontextprotocol/conformance/dist/index.js",
    args: &["--suite", "all"],
};

/// The pre-release, the scenarios 2025-11-25 requires (and those it runs
/// unscored: pending or added after the release).
const NEXT: Release = Release {
    scenario: "conformance-next",
    track: "next",
    entry: "conformance-next/dist/index.js",
    args: &["--requirements", NEXT_REQUIREMENTS],
};

/// Both tracks, in table order.
const RELEASES: [Release; 2] = [STABLE, NEXT];

pub(super) fn conformance_stable(ctx: &mut Ctx) -> Result<String, String> {
    conformance(ctx, STABLE)
}

pub(super) fn conformance_next(ctx: &mut Ctx) -> Result<String, String> {
    conformance(ctx, NEXT)
}

/// One conformance check's outcome.
#[derive(Debug, Clone)]
struct Check {
    id: String,
    status: String,
    message: String,
}

/// Scenario name -> its checks.
type Results = BTreeMap<String, Vec<Check>>;

fn failed(checks: &[Check]) -> Option<&Check> {
    checks.iter().find(|c| c.status == "FAILURE")
}

/// `interop/ts/fixture-server.mjs` on a free port; returns its URL.
fn fixture_server(ctx: &mut Ctx) -> Result<String, String> {
    let port = free_port()?;
    let mut cmd = ctx.node();
    cmd.arg(ctx.paths.file("ts/fixture-server.mjs"))
        .arg(port.to_string());
    let index = ctx.spawn("fixture-server", cmd)?;
    ctx.wait_port(index, port)?;
    Ok(format!("http://127.0.0.1:{port}/mcp"))
}

/// Runs the suite's server scenarios against the fixture server directly,
/// then through Shadowcat, and compares.
fn conformance(ctx: &mut Ctx, release: Release) -> Result<String, String> {
    let upstream = fixture_server(ctx)?;
    let direct = run_conformance(ctx, release, "direct", &upstream)?;
    let proxy = ctx.shadowcat(&["--upstream", &upstream])?;
    let through = run_conformance(ctx, release, "shadowcat", &proxy)?;
    let report = compare(&direct, &through);
    let notes = ctx.dir.join("notes.txt");
    fs::write(&notes, report.notes.join("\n"))
        .map_err(|e| format!("cannot write {}: {e}", notes.display()))?;
    let row = ctx.dir.join(ROW_FILE);
    fs::write(&row, report.row.to_json(release.track).to_string())
        .map_err(|e| format!("cannot write {}: {e}", row.display()))?;
    let summary = report.row.summary();
    if report.errors.is_empty() {
        Ok(summary)
    } else {
        Err(format!("{summary}\n{}", report.errors.join("\n")))
    }
}

/// Runs `conformance server` against `url`; reads every scenario's
/// `checks.json`. The CLI's exit status only says whether something
/// failed, so the results are what counts; an empty result is an error.
fn run_conformance(
    ctx: &mut Ctx,
    release: Release,
    label: &str,
    url: &str,
) -> Result<Results, String> {
    let out_dir = ctx.dir.join(format!("results-{label}"));
    let mut cmd = ctx.node();
    cmd.arg("--import")
        .arg(ctx.paths.file("preload/globsync.mjs"))
        .arg(ctx.paths.module(release.entry))
        .args(["server", "--url", url])
        .args(release.args)
        .arg("--output-dir")
        .arg(&out_dir);
    let name = format!("conformance-{label}");
    let index = ctx.spawn(&name, cmd)?;
    let deadline = ctx.deadline;
    ctx.children[index].wait_until(deadline)?;
    let results = read_results(&out_dir)?;
    if results.is_empty() {
        return Err(format!("{name} produced no results:\n{}", ctx.tails(&name)));
    }
    Ok(results)
}

/// Reads `<dir>/server-<scenario>-<timestamp>/checks.json`.
fn read_results(dir: &Path) -> Result<Results, String> {
    let mut results = Results::new();
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| e.to_string())?;
        let folder = entry.file_name().to_string_lossy().into_owned();
        let name = scenario_of(&folder)
            .ok_or_else(|| format!("unexpected result folder {folder}"))?
            .to_string();
        let file = entry.path().join("checks.json");
        let text = fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let doc: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        let checks = doc
            .as_array()
            .ok_or_else(|| format!("{}: not an array", file.display()))?
            .iter()
            .map(|c| Check {
                id: c["id"].as_str().unwrap_or("?").to_string(),
                status: c["status"].as_str().unwrap_or("?").to_string(),
                message: c["errorMessage"].as_str().unwrap_or("").to_string(),
            })
            .collect();
        if results.insert(name.clone(), checks).is_some() {
            return Err(format!("scenario {name} has two result folders"));
        }
    }
    Ok(results)
}

/// `server-tools-list-2026-11-27T14-11-26-166Z` -> `tools-list`.
fn scenario_of(folder: &str) -> Option<&str> {
    const STAMP: usize = "-2026-11-27T14-11-26-166Z".len();
    let rest = folder.strip_prefix("server-")?;
    let cut = rest.len().checked_sub(STAMP)?;
    (rest.ends_with('Z') && rest[cut..].starts_with('-')).then(|| &rest[..cut])
}

/// One track's line of the table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Row {
    scenarios: usize,
    passed_direct: usize,
    passed_through: usize,
    /// Checks that warn directly (the same warnings through Shadowcat are
    /// allowed).
    warnings_direct: usize,
    /// Checks that warn through Shadowcat and not directly: must be 0.
    warnings_only_through: usize,
}

impl Row {
    fn summary(&self) -> String {
        format!(
            "{} scenarios: {} pass directly, {} through Shadowcat; warnings: {} directly, {} only through Shadowcat",
            self.scenarios,
            self.passed_direct,
            self.passed_through,
            self.warnings_direct,
            self.warnings_only_through
        )
    }

    fn to_json(&self, track: &str) -> Value {
        serde_json::json!({
            "track": track,
            "scenarios": self.scenarios,
            "passed_direct": self.passed_direct,
            "passed_through": self.passed_through,
            "warnings_direct": self.warnings_direct,
            "warnings_only_through": self.warnings_only_through,
        })
    }

    fn from_json(doc: &Value) -> Option<(String, Row)> {
        let n = |key: &str| doc[key].as_u64().and_then(|v| usize::try_from(v).ok());
        Some((
            doc["track"].as_str()?.to_string(),
            Row {
                scenarios: n("scenarios")?,
                passed_direct: n("passed_direct")?,
                passed_through: n("passed_through")?,
                warnings_direct: n("warnings_direct")?,
                warnings_only_through: n("warnings_only_through")?,
            },
        ))
    }
}

/// The table's text for these rows (track, row).
fn table(rows: &[(String, Row)]) -> String {
    let mut out = String::from(
        "conformance  scenarios  pass directly  pass through Shadowcat  warnings directly  warnings only through Shadowcat\n",
    );
    for (track, r) in rows {
        let _ = writeln!(
            out,
            "{track:<11}  {:>9}  {:>13}  {:>22}  {:>17}  {:>31}",
            r.scenarios,
            r.passed_direct,
            r.passed_through,
            r.warnings_direct,
            r.warnings_only_through
        );
    }
    out
}

/// Prints the table of the conformance tracks among `ran` (scenario
/// names) that got as far as writing their row.
pub(super) fn print_table(paths: &Paths, ran: &[&str]) {
    let rows: Vec<(String, Row)> = RELEASES
        .iter()
        .filter(|r| ran.contains(&r.scenario))
        .filter_map(|r| {
            let file = paths.scenario_dir(r.scenario).join(ROW_FILE);
            let text = fs::read_to_string(file).ok()?;
            Row::from_json(&serde_json::from_str(&text).ok()?)
        })
        .collect();
    if !rows.is_empty() {
        eprint!("{}", table(&rows));
    }
}

/// The outcome of comparing direct and through-Shadowcat results.
#[derive(Debug, Default)]
struct Comparison {
    row: Row,
    errors: Vec<String>,
    notes: Vec<String>,
}

/// How many of `checks` have status WARNING, by check id.
fn warnings(checks: &[Check]) -> BTreeMap<&str, usize> {
    let mut by_id = BTreeMap::new();
    for c in checks.iter().filter(|c| c.status == "WARNING") {
        *by_id.entry(c.id.as_str()).or_insert(0) += 1;
    }
    by_id
}

fn compare(direct: &Results, through: &Results) -> Comparison {
    let mut out = Comparison::default();
    out.row.scenarios = direct.len();
    for (name, checks) in direct {
        let direct_failure = failed(checks);
        match direct_failure {
            None => out.row.passed_direct += 1,
            Some(f) => out.errors.push(format!(
                "{name}: fails against the fixture server directly: {}: {} (interop/ts/fixture-server.mjs must pass every scenario)",
                f.id, f.message
            )),
        }
        let direct_warnings = warnings(checks);
        for (id, n) in &direct_warnings {
            out.row.warnings_direct += n;
            out.notes
                .push(format!("{name}/{id}: WARNING directly ({n}x)"));
        }
        let Some(proxied) = through.get(name) else {
            out.errors
                .push(format!("{name}: ran directly but not through Shadowcat"));
            continue;
        };
        match (direct_failure, failed(proxied)) {
            (None, Some(f)) => out.errors.push(format!(
                "{name}: passes directly, fails through Shadowcat: {}: {}",
                f.id, f.message
            )),
            (Some(_), None) => out
                .notes
                .push(format!("{name}: fails directly, passes through Shadowcat")),
            _ => {}
        }
        if failed(proxied).is_none() {
            out.row.passed_through += 1;
        }
        // Check by check: nothing that succeeds directly may fail through
        // Shadowcat, even inside a scenario that fails either way.
        for check in checks.iter().filter(|c| c.status == "SUCCESS") {
            match proxied.iter().find(|c| c.id == check.id) {
                Some(p) if p.status == "FAILURE" => out.errors.push(format!(
                    "{name}/{}: succeeds directly, fails through Shadowcat: {}",
                    check.id, p.message
                )),
                Some(p) if p.status != "SUCCESS" && p.status != "WARNING" => {
                    out.notes.push(format!(
                        "{name}/{}: SUCCESS directly, {} through Shadowcat",
                        check.id, p.status
                    ));
                }
                Some(_) => {}
                None => out.notes.push(format!(
                    "{name}/{}: succeeds directly, not reported through Shadowcat",
                    check.id
                )),
            }
        }
        // No warning that the direct run does not have.
        for (id, n) in warnings(proxied) {
            let extra = n.saturating_sub(direct_warnings.get(id).copied().unwrap_or(0));
            if extra > 0 {
                out.row.warnings_only_through += extra;
                let message = proxied
                    .iter()
                    .find(|c| c.id == id && c.status == "WARNING")
                    .map_or("", |c| c.message.as_str());
                out.errors.push(format!(
                    "{name}/{id}: WARNING through Shadowcat only: {message}"
                ));
            }
        }
    }
    for name in through.keys().filter(|n| !direct.contains_key(*n)) {
        out.notes
            .push(format!("{name}: ran through Shadowcat only"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(id: &str, status: &str) -> Check {
        Check {
            id: id.into(),
            status: status.into(),
            message: format!("{id} {status}"),
        }
    }

    fn results(rows: &[(&str, &[(&str, &str)])]) -> Results {
        rows.iter()
            .map(|(name, checks)| {
                let checks = checks.iter().map(|(id, s)| check(id, s)).collect();
                (name.to_string(), checks)
            })
            .collect()
    }

    #[test]
    fn result_folders_name_their_scenario() {
        assert_eq!(
            scenario_of("server-tools-list-2026-11-27T14-11-26-166Z"),
            Some("tools-list")
        );
        assert_eq!(
            scenario_of("server-server-sse-polling-2026-11-27T14-11-26-166Z"),
            Some("server-sse-polling")
        );
        assert_eq!(scenario_of("tools-list-2026-11-27T14-11-26-166Z"), None);
        assert_eq!(scenario_of("server-x"), None);
    }

    #[test]
    fn same_results_pass() {
        let r = results(&[
            ("ping", &[("ping", "SUCCESS")]),
            ("poll", &[("retry", "WARNING"), ("stream", "INFO")]),
        ]);
        let c = compare(&r, &r);
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        assert_eq!(
            c.row,
            Row {
                scenarios: 2,
                passed_direct: 2,
                passed_through: 2,
                warnings_direct: 1,
                warnings_only_through: 0,
            }
        );
    }

    #[test]
    fn a_direct_failure_fails() {
        let r = results(&[("ping", &[("ping", "FAILURE")])]);
        let c = compare(&r, &r);
        assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
        assert!(c.errors[0].contains("fails against the fixture server directly"));
        assert_eq!(c.row.passed_direct, 0);
    }

    #[test]
    fn a_regression_through_shadowcat_fails() {
        let direct = results(&[("ping", &[("ping", "SUCCESS")])]);
        let through = results(&[("ping", &[("ping", "FAILURE")])]);
        let c = compare(&direct, &through);
        assert_eq!(c.errors.len(), 2, "{:?}", c.errors);
        assert!(c.errors[0].contains("passes directly, fails through Shadowcat"));
        assert_eq!(c.row.passed_through, 0);
    }

    #[test]
    fn a_warning_only_through_shadowcat_fails() {
        let direct = results(&[("poll", &[("priming", "SUCCESS"), ("retry", "SUCCESS")])]);
        let through = results(&[("poll", &[("priming", "SUCCESS"), ("retry", "WARNING")])]);
        let c = compare(&direct, &through);
        assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
        assert!(
            c.errors[0].starts_with("poll/retry: WARNING through Shadowcat only"),
            "{:?}",
            c.errors
        );
        assert_eq!(c.row.warnings_only_through, 1);
        assert_eq!(c.row.passed_through, 1, "a warning is not a failure");
    }

    #[test]
    fn one_more_warning_of_the_same_check_counts() {
        let direct = results(&[("poll", &[("retry", "WARNING")])]);
        let through = results(&[("poll", &[("retry", "WARNING"), ("retry", "WARNING")])]);
        let c = compare(&direct, &through);
        assert_eq!(c.row.warnings_only_through, 1, "{:?}", c.errors);
    }

    #[test]
    fn a_downgrade_to_info_is_noted_not_failed() {
        let direct = results(&[("poll", &[("resume", "SUCCESS")])]);
        let through = results(&[("poll", &[("resume", "INFO")])]);
        let c = compare(&direct, &through);
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        assert!(
            c.notes.iter().any(|n| n.contains("SUCCESS directly, INFO")),
            "{:?}",
            c.notes
        );
    }

    #[test]
    fn a_scenario_missing_through_shadowcat_fails() {
        let direct = results(&[("ping", &[("ping", "SUCCESS")])]);
        let c = compare(&direct, &Results::new());
        assert_eq!(c.errors.len(), 1, "{:?}", c.errors);
        assert!(c.errors[0].contains("not through Shadowcat"));
    }

    #[test]
    fn rows_round_trip_and_make_a_table() {
        let row = Row {
            scenarios: 33,
            passed_direct: 33,
            passed_through: 32,
            warnings_direct: 2,
            warnings_only_through: 1,
        };
        let back = Row::from_json(&row.to_json("next")).unwrap();
        assert_eq!(back, ("next".to_string(), row.clone()));
        let text = table(&[back]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(cells, ["next", "33", "33", "32", "2", "1"]);
    }
}
