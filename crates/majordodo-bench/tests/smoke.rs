//! Short runs of the scenarios that need no other binary (`fairness`, `rules-cost`,
//! `tenants-scale`) with tiny sizes: each must finish, print its tables, and report numbers that
//! make sense. Performance goals are not checked here (no timed assertions): only that the
//! measurement happened and its verdict is one of PASS or FAIL.

use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `majordodo-bench <args>` and returns its standard output; fails on a non-zero exit.
fn bench(args: &[&str]) -> String {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_majordodo-bench"))
        .args(args)
        .output()
        .expect("run majordodo-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "majordodo-bench {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // A bound on the run, not a performance check: a hang fails here instead of never ending.
    assert!(
        started.elapsed() < Duration::from_secs(300),
        "majordodo-bench {args:?} ran for {:?}",
        started.elapsed()
    );
    stdout
}

/// The cells of the first data row of the table whose title starts with `title`.
fn row(output: &str, title: &str) -> Vec<String> {
    let mut lines = output.lines().skip_while(|l| !l.starts_with(title));
    assert!(lines.next().is_some(), "no table {title:?} in:\n{output}");
    let header: Vec<String> = cells(lines.next().expect("a header"));
    assert!(!header.is_empty(), "a header in:\n{output}");
    let _rule = lines.next().expect("a rule under the header");
    let data = cells(lines.next().expect("a data row"));
    assert_eq!(data.len(), header.len(), "a full row in:\n{output}");
    data
}

fn cells(line: &str) -> Vec<String> {
    line.trim()
        .trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_string())
        .collect()
}

/// A number printed with thousands separators and maybe a unit: `12 345`, `3.5 %`.
fn number(cell: &str) -> f64 {
    let digits: String = cell
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("{cell:?} is not a number"))
}

fn verdict(cell: &str) {
    assert!(cell == "PASS" || cell == "FAIL", "verdict {cell:?}");
}

#[test]
fn fairness_runs_and_measures_windows() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(&[
        "fairness",
        "--dir",
        dir.path().to_str().unwrap(),
        "--tenants",
        "10",
        "--weight2",
        "2",
        "--weight3",
        "2",
        "--tasks",
        "30000",
        "--task-ms",
        "20",
        "--workers",
        "2",
        "--threads",
        "16",
        "--sample-ms",
        "20",
        "--window-secs",
        "1",
        "--step-secs",
        "0.25",
        "--max-secs",
        "60",
    ]);
    let r = row(&out, "fairness: share of running tasks");
    // tenants, tasks, workers, task ms, submit s, backlogged s, samples, windows, worst, p50,
    // p99, goal, result
    assert_eq!(r[0], "10 (6/2/2)");
    assert!(number(&r[6]) > 0.0, "samples were taken: {r:?}");
    assert!(number(&r[7]) >= 1.0, "at least one window: {r:?}");
    let (worst, p50, p99) = (number(&r[8]), number(&r[9]), number(&r[10]));
    assert!(p50 <= p99 && p99 <= worst, "quantiles in order: {r:?}");
    verdict(&r[12]);
    let classes = row(&out, "fairness: mean running tasks per tenant");
    assert_eq!(classes[0], "heavy");
    assert!(
        out.contains("after the small tenants drained"),
        "the small tenants drained within the bound:\n{out}"
    );
}

#[test]
fn rules_cost_runs_both_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(&[
        "rules-cost",
        "--dir",
        dir.path().to_str().unwrap(),
        "--tasks",
        "3000",
        "--batch",
        "500",
        "--clients",
        "2",
        "--workers",
        "2",
        "--threads",
        "32",
        "--rounds",
        "1",
    ]);
    let rounds = row(&out, "rules-cost: burn-down rounds");
    assert_eq!(rounds[2], "3 000");
    // CPU seconds of the burn-down and per task agree with each other (the seconds are printed
    // to 0.01 s).
    let (cpu, per_task) = (number(&rounds[7]), number(&rounds[8]));
    assert!(
        (per_task - cpu * 1e6 / 3000.0).abs() <= 0.005 * 1e6 / 3000.0 + 0.1,
        "CPU per task is the burn-down's CPU over its tasks: {rounds:?}"
    );
    let r = row(&out, "rules-cost: medians");
    let (plain, rules, ratio) = (number(&r[2]), number(&r[3]), number(&r[4]));
    assert!(plain > 0.0 && rules > 0.0, "{r:?}");
    assert!(
        (ratio - rules / plain).abs() < 0.02 + ratio * 0.01,
        "the ratio is rules over plain: {r:?}"
    );
    number(&r[5]);
    verdict(&r[8]);
    // Nothing is left in the data directory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn tenants_scale_compares_many_and_few() {
    let out = bench(&[
        "tenants-scale",
        "--tenants",
        "100",
        "--many",
        "20000",
        "--assignments",
        "5000",
        "--workers",
        "4",
        "--threads",
        "10",
    ]);
    let t = "tenants-scale: cost of an assignment";
    let lines: Vec<&str> = out.lines().skip_while(|l| !l.starts_with(t)).collect();
    assert!(lines.len() >= 5, "two rows:\n{out}");
    let many = cells(lines[3]);
    let few = cells(lines[4]);
    assert_eq!(number(&many[1]), 20_000.0, "the backlog stays: {many:?}");
    assert_eq!(number(&few[1]), 100.0, "one per tenant stays: {few:?}");
    assert!(number(&many[3]) >= 5_000.0 && number(&few[3]) >= 5_000.0);
    let r = row(&out, "tenants-scale: assignment cost ratio");
    let (m, f, ratio) = (number(&r[0]), number(&r[1]), number(&r[2]));
    assert!(m > 0.0 && f > 0.0, "{r:?}");
    assert!((ratio - m / f).abs() < 0.02 + ratio * 0.01, "{r:?}");
    verdict(&r[4]);
}
