//! `majordodo backup` and `majordodo restore` end to end: a backup of a running standalone
//! broker, restored into a new data directory, boots a broker with every task (and slot), whose
//! log continues after the snapshot (a restart keeps what came after it); refusals change
//! nothing.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

/// Starts a standalone broker without its local worker (tasks stay waiting) in `dir`, on the
/// data directory `data`, and returns it with its API URL.
fn start(dir: &Path, data: &str) -> (Server, String) {
    let mut server = start_standalone_without_worker(dir, &["--data-dir", data]);
    let url = server.value_of("HTTP API:");
    (server, url)
}

/// `majordodo backup --output b.snap` against `url`.
fn backup(dir: &Path, url: &str) -> std::process::Output {
    run_in(
        dir,
        &[
            "backup",
            "--output",
            "b.snap",
            "--url",
            url,
            "--data-dir",
            "a",
        ],
    )
}

fn submit(dir: &Path, url: &str, data_dir: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "submit",
        "--type",
        "echo",
        "--url",
        url,
        "--data-dir",
        data_dir,
    ];
    args.extend_from_slice(extra);
    ok(&run_in(dir, &args)).trim().to_string()
}

fn task(dir: &Path, url: &str, data_dir: &str, id: &str) -> Value {
    let out = run_in(
        dir,
        &["task", id, "--json", "--url", url, "--data-dir", data_dir],
    );
    serde_json::from_str(&ok(&out)).expect("task JSON")
}

#[test]
fn a_backup_restores_into_a_new_directory_with_every_task() {
    let dir = tempfile::tempdir().unwrap();
    let here = dir.path();
    let (mut first, url) = start(here, "a");
    assert_eq!(
        submit(here, &url, "a", &["--data", "one", "--slot", "only-one"]),
        "submitted task 1"
    );
    assert_eq!(
        submit(here, &url, "a", &["--data", "two"]),
        "submitted task 2"
    );

    let out = ok(&backup(here, &url));
    assert!(out.contains(" tasks, ") && out.contains("2 tasks"), "{out}");
    assert!(out.contains("written to b.snap"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(here.join("b.snap"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "a backup is private");
    assert!(
        !here.join("b.snap.part").exists(),
        "the partial file is renamed"
    );
    // A second backup to the same name is refused, and leaves the first as it was.
    let before = std::fs::read(here.join("b.snap")).unwrap();
    let refused = backup(here, &url);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("exists"), "{}", stderr(&refused));
    assert_eq!(std::fs::read(here.join("b.snap")).unwrap(), before);
    // Acknowledged after the backup: not in it.
    assert_eq!(
        submit(here, &url, "a", &["--data", "three"]),
        "submitted task 3"
    );
    first.terminate();

    // The original's admin token, so the restored broker keeps its credentials.
    std::fs::create_dir_all(here.join("r")).unwrap();
    std::fs::copy(here.join("a/admin.token"), here.join("r/admin.token")).unwrap();
    let out = ok(&run_in(
        here,
        &["restore", "--from", "b.snap", "--data-dir", "r"],
    ));
    assert!(out.contains("(2 tasks) into r"), "{out}");
    let (mut restored, url) = start(here, "r");
    for (id, data) in [("1", "one"), ("2", "two")] {
        let t = task(here, &url, "r", id);
        assert_eq!(
            (t["status"].as_str(), t["data"].as_str()),
            (Some("waiting"), Some(data))
        );
    }
    assert_eq!(task(here, &url, "r", "1")["slot"], "only-one");
    let missing = run_in(here, &["task", "3", "--url", &url, "--data-dir", "r"]);
    assert!(!missing.status.success(), "task 3 came after the backup");
    // The slot is still held, and new tasks continue the ids and the log after the snapshot.
    let dup = run_in(
        here,
        &[
            "submit",
            "--type",
            "echo",
            "--data",
            "dup",
            "--slot",
            "only-one",
            "--url",
            &url,
            "--data-dir",
            "r",
        ],
    );
    assert!(
        !dup.status.success() && stderr(&dup).contains("slot only-one already assigned"),
        "the restored slot is busy: {}",
        stderr(&dup)
    );
    // The state is the backup's: the next id is the one after its last task.
    assert_eq!(
        submit(here, &url, "r", &["--data", "new"]),
        "submitted task 3"
    );
    restored.terminate();
    let (mut again, url) = start(here, "r");
    assert_eq!(task(here, &url, "r", "3")["data"], "new");
    assert_eq!(task(here, &url, "r", "1")["slot"], "only-one");
    again.terminate();

    // A directory holding data is never overwritten.
    let refused = run_in(here, &["restore", "--from", "b.snap", "--data-dir", "r"]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("already holds"),
        "{}",
        stderr(&refused)
    );
    // A damaged backup is refused before anything is written.
    let mut damaged = std::fs::read(here.join("b.snap")).unwrap();
    let at = damaged.len() - 5;
    damaged[at] ^= 0x01;
    std::fs::write(here.join("bad.snap"), &damaged).unwrap();
    let refused = run_in(here, &["restore", "--from", "bad.snap", "--data-dir", "s"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("checksum"),
        "{}",
        stderr(&refused)
    );
    assert!(!here.join("s").exists(), "nothing written for a bad backup");
}
