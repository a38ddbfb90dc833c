//! `majordodo dump-log --dir` on a real standalone's file log: every record as a readable line
//! or as JSON Lines, bounded by --from and --max; a torn tail shown, reported and left in
//! place; bad input refused naming the flag.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

/// A stopped standalone's data directory holding three submitted `echo` tasks (no worker ran
/// them); returns the log directory.
fn log_with_three_tasks(dir: &Path) -> PathBuf {
    let mut cmd = majordodo();
    cmd.current_dir(dir).args([
        "standalone",
        "--http-port",
        "0",
        "--worker-port",
        "0",
        "--no-worker",
    ]);
    let mut server = Server::start(cmd);
    let url = server.value_of("HTTP API:");
    for data in ["one", "two words", "three"] {
        ok(&run_in(
            dir,
            &["submit", "--url", &url, "--type", "echo", "--data", data],
        ));
    }
    let (status, _) = server.terminate();
    assert!(status.success());
    dir.join("majordodo-data/log")
}

fn lines_of(dir: &Path, args: &[&str]) -> Vec<String> {
    ok(&run_in(dir, args)).lines().map(str::to_owned).collect()
}

#[test]
fn dump_log_prints_each_record_of_a_file_log_in_order() {
    // Goal: one line per record with position, kind and key fields; --json gives the same
    // records as objects; --from and --max bound what is printed.
    let dir = tempfile::tempdir().unwrap();
    let log = log_with_three_tasks(dir.path());
    let log = log.to_str().unwrap();

    let text = lines_of(dir.path(), &["dump-log", "--dir", log]);
    let adds: Vec<&String> = text.iter().filter(|l| l.contains(" add_task ")).collect();
    assert_eq!(adds.len(), 3, "{text:#?}");
    assert!(
        adds[0].contains("task=1 type=echo user=admin"),
        "{}",
        adds[0]
    );
    assert!(adds[1].ends_with("data=\"two words\""), "{}", adds[1]);

    let json: Vec<Value> = lines_of(dir.path(), &["dump-log", "--dir", log, "--json"])
        .iter()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(json.len(), text.len());
    let lsns: Vec<u64> = json.iter().map(|v| v["lsn"].as_u64().unwrap()).collect();
    assert_eq!(lsns, (1..=lsns.len() as u64).collect::<Vec<_>>());
    let second = json
        .iter()
        .find(|v| v["kind"] == "add_task" && v["task"] == 2)
        .expect("task 2's record");
    assert_eq!(second["data"], "two words");

    let from = second["lsn"].as_u64().unwrap().to_string();
    let bounded: Vec<Value> = lines_of(
        dir.path(),
        &[
            "dump-log", "--dir", log, "--json", "--from", &from, "--max", "1",
        ],
    )
    .iter()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect();
    assert_eq!(bounded, vec![second.clone()]);
}

#[test]
fn dump_log_shows_a_torn_tail_without_cutting_it() {
    // Goal: a log whose last record is cut short is printed up to it, the command fails
    // naming the file and offset and `log repair`, and the segment keeps its length
    // (opening the log would cut it).
    let dir = tempfile::tempdir().unwrap();
    let log = log_with_three_tasks(dir.path());
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    let last = segments.last().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(len - 2)
        .unwrap();

    let out = run_in(dir.path(), &["dump-log", "--dir", log.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).contains(" add_task "), "{}", stdout(&out));
    let error = stderr(&out);
    assert!(error.contains(&last.display().to_string()), "{error}");
    assert!(error.contains("majordodo log repair --dir"), "{error}");
    assert_eq!(std::fs::metadata(last).unwrap().len(), len - 2);
}

#[test]
fn dump_log_refuses_bad_input_naming_the_flag() {
    // Goal: usage errors exit 2 with a message naming the flag to fix.
    let dir = tempfile::tempdir().unwrap();
    let log = log_with_three_tasks(dir.path());
    let data_dir = log.parent().unwrap().to_str().unwrap().to_owned();
    let cases: [(&[&str], &str); 4] = [
        (&["dump-log"], "--dir"),
        (&["dump-log", "--dir", &data_dir], "the log is in"),
        (
            &["dump-log", "--dir", "/nonexistent/log"],
            "--dir /nonexistent/log",
        ),
        (&["dump-log", "--ledger", "3"], "--ledger needs --zk"),
    ];
    for (args, expected) in cases {
        let out = run_in(dir.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let out = run_in(
        dir.path(),
        &["dump-log", "--dir", log.to_str().unwrap(), "--max", "0"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--max"), "{}", stderr(&out));
}
