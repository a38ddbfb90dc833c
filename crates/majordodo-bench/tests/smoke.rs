//! Short runs of the scenarios that need no other binary (`fairness`, `rules-cost`,
//! `tenants-scale`) with tiny sizes: each must finish, print its tables, and report numbers that
//! make sense. Performance goals are not checked here (no timed assertions): only that the
//! measurement happened and its verdict is one of PASS or FAIL. `compare --quick` runs too when
//! its peers are installed, and must write a well-formed table, JSON and PNG; `latency` runs
//! the workspace's `majordodo` binary, which `cargo test --workspace` builds beside this one.

use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `majordodo-bench <args>` and returns its standard output; fails on a non-zero exit.
fn bench(args: &[&str]) -> String {
    bench_within(args, Duration::from_secs(300))
}

/// [`bench`] with a bound on the run of `limit`.
fn bench_within<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(
    args: &[S],
    limit: Duration,
) -> String {
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
        started.elapsed() < limit,
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
fn latency_alternates_the_durable_log_with_one_that_never_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let out = bench(&[
        "latency",
        "--dir",
        data,
        "--rate",
        "200",
        "--seconds",
        "1",
        "--also-without-fsync",
        "--rounds",
        "2",
    ]);
    let t = "latency: submit (HTTP request sent) -> executor start";
    let lines: Vec<&str> = out.lines().skip_while(|l| !l.starts_with(t)).collect();
    assert!(lines.len() >= 7, "four rows:\n{out}");
    let logs: Vec<(String, String)> = lines[3..7]
        .iter()
        .map(|l| {
            let c = cells(l);
            assert_eq!(c.len(), 10, "{c:?}");
            assert_eq!(number(&c[4]), 200.0, "a second of samples at 200/s: {c:?}");
            let (p50, p99, max) = (number(&c[5]), number(&c[7]), number(&c[9]));
            assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{c:?}");
            (c[0].clone(), c[1].clone())
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("fsync on", "1"),
        ("fsync off (not durable)", "1"),
        ("fsync on", "2"),
        ("fsync off (not durable)", "2"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(logs, expected);
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

/// The peers' folder `scripts/test-deps` fills: `$MAJORDODO_PEERS_DIR`, else the workspace's
/// `target/peers`.
fn peers_dir() -> std::path::PathBuf {
    std::env::var_os("MAJORDODO_PEERS_DIR")
        .map(Into::into)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/peers")
        })
}

/// `compare --quick` runs ours, BullMQ and Celery and writes a table, JSON with every round of
/// every workload, and a PNG; workload 7 runs ours again on a replicated cluster over three
/// bookies, beside the file log, with the follower's lag and a failover. It needs the peers
/// and the bookies (`scripts/test-deps` installs them); without the peers it says so and checks
/// nothing.
#[test]
fn compare_quick_writes_table_json_and_chart() {
    let peers = peers_dir();
    let installed = peers.join("node/node_modules/bullmq/package.json").exists()
        && peers.join("venv/bin/python").exists()
        && Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !installed {
        eprintln!(
            "compare smoke test skipped: the peers are not installed in {} (run scripts/test-deps)",
            peers.display()
        );
        return;
    }
    let out = tempfile::tempdir().unwrap();
    // A debug build: a wider bound on the run.
    let args = [
        "compare".as_ref(),
        "--quick".as_ref(),
        "--out".as_ref(),
        out.path().as_os_str(),
        "--peers-dir".as_ref(),
        peers.as_os_str(),
        "--keep-logs".as_ref(),
    ];
    let stdout = bench_within::<&std::ffi::OsStr>(&args, Duration::from_secs(900));

    // The table: printed and written, with a row per figure and a column per system.
    let table = std::fs::read_to_string(out.path().join("compare.md")).expect("compare.md");
    assert!(
        stdout.contains(table.trim()),
        "the table is printed:\n{stdout}"
    );
    let header = table
        .lines()
        .find(|l| l.starts_with("| workload |"))
        .expect("a header row");
    for column in ["ours", "bullmq", "celery", "ours/bullmq", "ours/celery"] {
        assert!(header.contains(column), "column {column} in {header}");
    }
    // The cells of the row that starts with `start`, one per column.
    let table_row = |start: &str| {
        let row = table
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("a row {start:?} in:\n{table}"));
        let row = cells(row);
        assert_eq!(row.len(), 8, "{row:?}");
        row
    };
    let burn = table_row("| 1 burn-down | drain");
    for cell in [&burn[3], &burn[4], &burn[6]] {
        assert!(number(cell) > 0.0, "a rate in {burn:?}");
    }
    assert!(burn[5].ends_with('×') && burn[7].ends_with('×'), "{burn:?}");
    for row in [
        "| 2 submit | batches of 1 000",
        "| 3 latency | submit -> start at 1000/s, p99 |",
    ] {
        assert!(table.contains(row), "row {row:?} in:\n{table}");
    }
    // Workload 7, when the broker binary is there (its cluster's brokers are processes): ours
    // replicated beside the file log with their ratio; the peers' cells say why they are empty.
    let majordodo =
        std::path::Path::new(env!("CARGO_BIN_EXE_majordodo-bench")).with_file_name("majordodo");
    let replicated = majordodo.exists() || std::env::var_os("MAJORDODO_BIN").is_some();
    let drain = table_row("| 7 replicated | drain");
    for cell in [&drain[4], &drain[6]] {
        assert!(
            cell.contains("no replicated mode"),
            "a peer's note in {drain:?}"
        );
    }
    if replicated {
        assert!(
            number(drain[3].split(' ').next().unwrap()) > 0.0,
            "{drain:?}"
        );
        assert!(
            drain[3].contains("(file log ") && drain[3].contains("replicated/file "),
            "the file log's figure and the ratio beside ours in {drain:?}"
        );
        for row in [
            "| 7 replicated | batches of 1 000",
            "| 7 replicated | submit -> start at 1000/s, p99.9 |",
            "| 7 replicated | follower lag behind the leader during the burn-down, p99 |",
            "| 7 replicated | failover: leader SIGKILL",
        ] {
            assert!(table.contains(row), "row {row:?} in:\n{table}");
        }
    } else {
        assert!(drain[3].starts_with("– (not run: "), "{drain:?}");
    }

    // --keep-logs: the run's data is gone, the logs of its broker processes (and, with
    // workload 7, of its cluster's brokers and bookies) are in OUT/logs.
    let mut kept = Vec::new();
    let mut dirs = vec![out.path().join("logs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("OUT/logs and its directories") {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                kept.push(path.strip_prefix(out.path()).unwrap().display().to_string());
            }
        }
    }
    assert!(
        kept.iter().all(|p| p.ends_with(".log")),
        "only logs kept: {kept:?}"
    );
    if replicated {
        // `replicated` is "the broker binary is there": the latency workload's broker is then a
        // process with a log of its own, as the cluster's brokers are.
        assert!(
            kept.iter()
                .any(|p| p.contains("-latency") && p.ends_with("broker.log")),
            "the latency broker process's log kept: {kept:?}"
        );
        assert!(
            kept.iter()
                .any(|p| p.contains("-replicated-") && p.ends_with(".log")),
            "a replicated broker's log kept: {kept:?}"
        );
        assert!(
            kept.iter()
                .any(|p| p.starts_with("logs/bookkeeper/") && p.ends_with("bookie.log")),
            "a bookie's log kept: {kept:?}"
        );
    }
    assert!(
        std::fs::read_dir(out.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("data-")),
        "the run's data removed"
    );

    // The JSON: every workload, each figure with one value per round for the systems that ran
    // it, and the machine.
    let raw: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("compare.json")).expect("compare.json"),
    )
    .expect("compare.json parses");
    assert_eq!(raw["rounds"], 1);
    for key in ["cpu", "cores", "kernel", "fsync p50 ms", "fsync p99 ms"] {
        assert!(raw["machine"][key].is_string(), "machine {key} in {raw}");
    }
    let figures = raw["figures"].as_array().expect("figures");
    for workload in [
        "1 burn-down",
        "2 submit",
        "3 latency",
        "4 state scale",
        "6 many workers",
        "7 replicated",
        "machine",
    ] {
        assert!(
            figures.iter().any(|f| f["workload"] == workload),
            "workload {workload} in the JSON"
        );
    }
    let figure = |key: &str| {
        figures
            .iter()
            .find(|f| f["key"] == key)
            .unwrap_or_else(|| panic!("figure {key} in the JSON"))
    };
    assert_eq!(figure("repl_burn_drain")["versus"], "burn_drain");
    assert_eq!(figure("repl_lat200_p99")["versus"], "lat200_p99");
    if replicated {
        for key in [
            "repl_burn_drain",
            "repl_submit_seq",
            "repl_lat1000_max",
            "failover",
        ] {
            let ours = figure(key)["values"]["ours"][0].as_f64();
            assert!(ours.is_some_and(|v| v > 0.0), "ours in {}", figure(key));
        }
        // A follower that keeps up shows a lag of 0 ms: the lag is measured, never negative.
        for key in ["lag_p50", "lag_max"] {
            let ours = figure(key)["values"]["ours"][0].as_f64();
            assert!(ours.is_some_and(|v| v >= 0.0), "ours in {}", figure(key));
        }
        let (p50, max) = (
            figure("lag_p50")["values"]["ours"][0].as_f64().unwrap(),
            figure("lag_max")["values"]["ours"][0].as_f64().unwrap(),
        );
        assert!(p50 <= max, "lag quantiles in order");
    }
    for f in figures {
        let values = f["values"].as_object().expect("values");
        for (system, rounds) in values {
            let rounds = rounds.as_array().expect("rounds");
            assert_eq!(rounds.len(), 1, "{system} in {f}");
            assert!(rounds[0].as_f64().is_some_and(f64::is_finite), "{f}");
        }
        if f["workload"] == "1 burn-down" || f["workload"] == "3 latency" {
            for system in ["ours", "bullmq", "celery"] {
                assert!(values.contains_key(system), "{system} in {f}");
            }
        }
        if f["workload"] == "7 replicated" {
            for system in ["bullmq", "celery"] {
                assert!(!values.contains_key(system), "{system} in {f}");
            }
        }
    }

    // The chart: a PNG.
    let png = std::fs::read(out.path().join("compare.png")).expect("compare.png");
    assert!(png.len() > 1_000, "a chart of {} bytes", png.len());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "the PNG signature");
}

/// Without the bookies, `compare` stops at once with a message that names `scripts/test-deps`
/// and `--no-replicated` (here with no peers, so nothing else is needed).
#[test]
fn compare_without_bookies_names_test_deps() {
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let run = Command::new(env!("CARGO_BIN_EXE_majordodo-bench"))
        .args(["compare", "--quick", "--peers", "", "--out"])
        .arg(out.path())
        .env("MAJORDODO_TEST_CACHE", cache.path())
        .output()
        .expect("run majordodo-bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success(),
        "compare ran without the bookies: {stderr}"
    );
    for needle in ["scripts/test-deps", "--no-replicated", "workload 7"] {
        assert!(stderr.contains(needle), "{needle:?} in: {stderr}");
    }
    // It stopped before any workload: nothing was measured.
    assert!(!out.path().join("compare.json").exists());
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}
