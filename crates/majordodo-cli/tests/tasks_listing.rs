//! `majordodo tasks` against a broker holding more tasks than one scan budget: the command
//! pages through the broker's answers, and says when it stopped before the end and how to go on.

mod common;

use common::*;
use serde_json::Value;

/// Runs `majordodo tasks <args>` against the broker with the admin token.
fn tasks(dir: &std::path::Path, url: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["tasks", "--url", url, "--token-file", "admin.token"];
    all.extend_from_slice(args);
    run_in(dir, &all)
}

fn ids(output: &std::process::Output) -> Vec<u64> {
    let tasks: Value = serde_json::from_str(&ok(output)).expect("tasks --json prints JSON");
    tasks
        .as_array()
        .expect("an array of tasks")
        .iter()
        .map(|t| t["taskId"].as_u64().expect("a task id"))
        .collect()
}

#[test]
fn tasks_finds_matches_beyond_the_broker_scan_budget() {
    // Goal: with a scan budget of 10 and 37 tasks, `tasks --type wc` lists the two wc tasks
    // behind 35 others (the regression: it printed "no tasks match"); --max stops with where to
    // continue; a cut status index is listed anyway; --max-time bounds the paging with a
    // non-zero exit naming the flag and the id to continue from.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut broker, url, _) = start_broker(d, "scan_budget = 10");
    let mut lines: Vec<String> = (1..=35)
        .map(|i| format!("{{\"tasktype\":\"noop\",\"data\":\"{i}\"}}"))
        .collect();
    lines.push("{\"tasktype\":\"wc\",\"data\":\"a b\"}".into());
    lines.push("{\"tasktype\":\"wc\",\"data\":\"c\"}".into());
    write_file(d, "tasks.jsonl", &(lines.join("\n") + "\n"));
    let submitted = ok(&run_in(
        d,
        &[
            "submit",
            "--jsonl",
            "tasks.jsonl",
            "--url",
            &url,
            "--token-file",
            "admin.token",
        ],
    ));
    assert!(
        submitted.contains("submitted 37 (ids 1..37)"),
        "{submitted}"
    );

    let out = tasks(d, &url, &["--type", "wc"]);
    let table = ok(&out);
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(table.lines().nth(1).unwrap().starts_with("36 "), "{table}");
    assert!(table.lines().nth(2).unwrap().starts_with("37 "), "{table}");
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    assert_eq!(
        ids(&tasks(d, &url, &["--type", "wc", "--json"])),
        vec![36, 37]
    );

    let out = tasks(d, &url, &["--type", "noop", "--max", "15", "--json"]);
    assert_eq!(ids(&out), (1..=15).collect::<Vec<u64>>());
    assert!(
        stderr(&out).contains("more may match: raise --max, or continue with --from-task-id 16"),
        "{}",
        stderr(&out)
    );
    let out = tasks(
        d,
        &url,
        &["--type", "noop", "--from-task-id", "16", "--json"],
    );
    assert_eq!(ids(&out), (16..=35).collect::<Vec<u64>>());

    // The waiting index holds all 37 tasks: one answer from it is cut at the budget.
    let out = tasks(d, &url, &["--status", "waiting", "--type", "wc", "--json"]);
    assert_eq!(ids(&out), vec![36, 37]);

    let out = tasks(d, &url, &["--type", "nothing"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim(), "no tasks match");

    let out = tasks(d, &url, &["--type", "wc", "--max-time", "0s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("incomplete")
            && err.contains("--max-time")
            && err.contains("--from-task-id 11"),
        "{err}"
    );

    let out = tasks(d, &url, &["--max", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--max"), "{}", stderr(&out));

    let (status, _) = broker.terminate();
    assert_eq!(status.code(), Some(0));
}
