//! `--log-format json` on the server commands: a broker and a worker started with it write
//! one JSON object per stderr line, and the broker's lines for a task's state changes carry
//! `task_id`, `worker_id` and `user` as fields of their own, as do the worker's.

mod common;

use std::fs::File;
use std::path::Path;

use common::*;
use serde_json::Value;

/// Every stderr line of a server as JSON; panics on a line that is not a JSON object with a
/// timestamp, a level and a message.
fn json_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("the server's stderr");
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("stderr line is not JSON ({e}): {l:?}"));
            for key in ["timestamp", "level", "message"] {
                assert!(v.get(key).is_some(), "no {key} in {l}");
            }
            v
        })
        .collect();
    assert!(!lines.is_empty(), "the server logged nothing");
    lines
}

/// The first line whose message is `message` and that has every field of `fields`.
fn find<'a>(lines: &'a [Value], message: &str, fields: &[&str]) -> &'a Value {
    lines
        .iter()
        .find(|l| l["message"] == message && fields.iter().all(|f| l.get(*f).is_some()))
        .unwrap_or_else(|| panic!("no {message:?} line with {fields:?} in {lines:#?}"))
}

#[test]
fn broker_and_worker_log_json_lines_with_task_worker_and_user_fields() {
    // Goal: with --log-format json (and debug for the broker's and the worker's crates), a
    // task run end to end leaves JSON lines naming its task_id, worker_id and user on the
    // broker's assignment and status-change lines and on the worker's start line.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_file(d, "worker.secret", "a-shared-secret-for-tests\n");
    let user_entry = ok(&run_in(d, &["auth", "new-token", "--out", "admin.token"]));
    let config = write_file(
        d,
        "broker.toml",
        &format!(
            "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:0\"\n{user_entry}\n\
             [workers]\nlisten = \"127.0.0.1:0\"\nauth = \"credentials-or-shared-secret\"\nshared_secret_file = \"worker.secret\"\n"
        ),
    );
    let broker_log = d.join("broker.stderr");
    let filter = "info,majordodo_broker=debug,majordodo_worker=debug";
    let mut broker = Server::start({
        let mut cmd = majordodo();
        cmd.current_dir(d)
            .args(["broker", "--config", &config, "--log-format", "json"])
            .args(["--log-level", filter])
            .stderr(File::create(&broker_log).unwrap());
        cmd
    });
    let url = broker.value_of("HTTP API:");
    let worker_port = broker.value_of("worker port:");
    let worker_log = d.join("worker.stderr");
    let mut worker = Server::start({
        let mut cmd = majordodo();
        cmd.current_dir(d)
            .args(["--log-format", "json", "--log-level", filter, "worker"])
            .args([
                "--broker",
                &worker_port,
                "--shared-secret-file",
                "worker.secret",
            ])
            .args(["--worker-id", "w-json", "--builtin", "echo"])
            .stderr(File::create(&worker_log).unwrap());
        cmd
    });
    let client = ["--url", url.as_str(), "--token-file", "admin.token"];
    let mut submit = vec![
        "submit", "--type", "echo", "--data", "hi", "--user", "alice",
    ];
    submit.extend_from_slice(&client);
    assert_eq!(ok(&run_in(d, &submit)).trim(), "submitted task 1");
    wait_task_status(d, &client, 1, "finished");
    let (status, _) = worker.terminate();
    assert!(status.success(), "worker: {status:?}");
    let (status, _) = broker.terminate();
    assert!(status.success(), "broker: {status:?}");

    let lines = json_lines(&broker_log);
    let assigned = find(&lines, "task assigned", &["task_id", "worker_id", "user"]);
    assert_eq!(assigned["task_id"], 1);
    assert_eq!(assigned["worker_id"], "w-json");
    assert_eq!(assigned["user"], "alice");
    let changed = find(
        &lines,
        "task status changed",
        &["task_id", "worker_id", "user"],
    );
    assert_eq!(changed["task_id"], 1);
    assert_eq!(changed["to"], "finished");
    assert_eq!(changed["level"], "DEBUG");
    find(&lines, "worker connected", &["worker_id"]);

    let lines = json_lines(&worker_log);
    let started = find(&lines, "task started", &["task_id", "worker_id", "user"]);
    assert_eq!(started["task_id"], 1);
    assert_eq!(started["user"], "alice");
}

#[test]
fn an_unknown_log_format_is_a_usage_error() {
    // Goal: --log-format takes text or json only; anything else exits 2 naming the choices.
    let out = run({
        let mut cmd = majordodo();
        cmd.args(["--log-format", "xml", "status"]);
        cmd
    });
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("text") && err.contains("json"), "{err}");
}
