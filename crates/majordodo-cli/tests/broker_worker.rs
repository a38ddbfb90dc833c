//! `majordodo broker` and `majordodo worker` as two processes configured by TOML files, with a
//! `process` executor running a real command, and `majordodo auth` making the credentials.

mod common;

use std::path::Path;

use common::*;

/// Writes `text` to `dir/name` and returns the path as a string.
fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn broker_and_worker_processes_run_a_process_task_end_to_end() {
    // Goal: with only TOML files and `majordodo auth new-token`, a broker and a worker in two
    // processes run a task through a `process` executor (`sh -c 'cat; echo'`), the client
    // commands see it, and both stop with status 0 on SIGTERM.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "worker.secret", "a-shared-secret-for-tests\n");

    let out = run_in(d, &["auth", "new-token", "--out", "admin.token"]);
    let user_entry = ok(&out);
    assert!(user_entry.contains("[[http.users]]"), "{user_entry}");
    assert!(user_entry.contains("token_sha256"), "{user_entry}");
    let token = std::fs::read_to_string(d.join("admin.token")).unwrap();
    assert!(
        !user_entry.contains(token.trim()),
        "the token itself must not be printed"
    );

    let broker_toml = write(
        d,
        "broker.toml",
        &format!(
            r#"broker_id = "test-broker"
data_dir = "data"

[http]
listen = "127.0.0.1:0"

{user_entry}
[workers]
listen = "127.0.0.1:0"
auth = "credentials-or-shared-secret"
shared_secret_file = "worker.secret"
keepalive_interval = "1s"
max_idle_time = "5s"
dead_after = "5s"

[snapshots]
interval = "1m"
"#
        ),
    );
    let mut broker = Server::start({
        let mut cmd = majordodo();
        cmd.current_dir(d)
            .args(["broker", "--config", &broker_toml]);
        cmd
    });
    let url = broker.value_of("HTTP API:");
    let worker_port = broker.value_of("worker port:");
    assert!(worker_port.starts_with("127.0.0.1:"), "{worker_port}");

    let worker_toml = write(
        d,
        "worker.toml",
        &format!(
            r#"broker = "{worker_port}"
shared_secret_file = "worker.secret"
worker_id = "w1"
max_threads = 4

[executors.cat]
argv = ["sh", "-c", "cat; echo"]
timeout_ms = 10000
"#
        ),
    );
    let mut worker = Server::start({
        let mut cmd = majordodo();
        cmd.current_dir(d)
            .args(["worker", "--config", &worker_toml]);
        cmd
    });
    let banner = worker.wait_line("connecting to broker");
    assert!(
        banner.contains("w1") && banner.contains(&worker_port),
        "{banner}"
    );
    let capacity = worker.wait_line("capacity:");
    assert!(
        capacity.contains("4 tasks at once") && capacity.contains("cat=4"),
        "{capacity}"
    );

    let client = ["--url", url.as_str(), "--token-file", "admin.token"];
    let mut submit = vec!["submit", "--type", "cat", "--data", "hello from a process"];
    submit.extend_from_slice(&client);
    assert_eq!(ok(&run_in(d, &submit)).trim(), "submitted task 1");
    let task = wait_task_status(d, &client, 1, "finished");
    assert_eq!(task["result"], "hello from a process");
    assert_eq!(task["workerId"], "w1");

    let mut workers = vec!["workers"];
    workers.extend_from_slice(&client);
    let table = ok(&run_in(d, &workers));
    assert!(
        table.contains("w1") && table.contains("CONNECTED"),
        "{table}"
    );

    // Without credentials (no token flag, no admin.token in ./majordodo-data) the command
    // says so and exits 2; with a wrong token, the broker refuses it and the exit is 1.
    let out = run_in(d, &["status", "--url", &url]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no credentials"), "{}", stderr(&out));
    let out = run_in(d, &["status", "--url", &url, "--token", "mdt_wrong"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("credentials"), "{}", stderr(&out));

    let (status, _) = worker.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "worker must stop cleanly on SIGTERM"
    );
    let (status, _) = broker.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "broker must stop cleanly on SIGTERM"
    );
}

#[test]
fn a_worker_with_the_wrong_secret_is_refused_and_says_so() {
    // Goal: a secret mismatch is not retried forever: the worker exits 1 with the reason.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "broker.secret", "the-right-secret");
    write(d, "worker.secret", "a-wrong-secret");
    let entry = ok(&run_in(d, &["auth", "new-token", "--out", "admin.token"]));
    let broker_toml = write(
        d,
        "broker.toml",
        &format!(
            "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:0\"\n{entry}\n[workers]\nlisten = \"127.0.0.1:0\"\nauth = \"credentials-or-shared-secret\"\nshared_secret_file = \"broker.secret\"\n"
        ),
    );
    let mut broker = Server::start({
        let mut cmd = majordodo();
        cmd.current_dir(d).args(["broker", "-c", &broker_toml]);
        cmd
    });
    let worker_port = broker.value_of("worker port:");
    let out = run_in(
        d,
        &[
            "worker",
            "--broker",
            &worker_port,
            "--shared-secret-file",
            "worker.secret",
            "--builtin",
            "echo",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("error: worker stopped"),
        "{}",
        stderr(&out)
    );
    let (status, _) = broker.terminate();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_second_worker_with_the_same_id_stops_with_a_clear_message() {
    // Goal: a second worker process under an id already connected is not retried forever: it
    // exits 1 after connection.max_refused_time, saying why and to set --worker-id, while the
    // first worker stays connected.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut broker, url, worker_port) = start_broker(d, "");
    let worker_args = [
        "worker",
        "--broker",
        worker_port.as_str(),
        "--shared-secret-file",
        "worker.secret",
        "--worker-id",
        "same",
        "--builtin",
        "echo",
    ];
    let mut first = Server::start({
        let mut cmd = majordodo();
        cmd.current_dir(d).args(worker_args);
        cmd
    });
    first.wait_line("connecting to broker");
    let client = ["--url", url.as_str(), "--token-file", "admin.token"];
    let connected = || {
        let mut args = vec!["workers", "--json"];
        args.extend_from_slice(&client);
        let workers: serde_json::Value = serde_json::from_str(&ok(&run_in(d, &args))).ok()?;
        (workers[0]["id"] == "same" && workers[0]["status"] == "CONNECTED").then_some(workers)
    };
    let before = poll(
        std::time::Duration::from_secs(15),
        "worker same connected",
        connected,
    );

    let config = write_file(
        d,
        "second.toml",
        "[connection]\nmax_refused_time = \"1s\"\n",
    );
    let mut second = worker_args.to_vec();
    second.extend_from_slice(&["--config", &config]);
    let out = run_in(d, &second);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("error: worker same stopped: the broker kept refusing it")
            && err.contains("--worker-id")
            && err.contains("already connected"),
        "{err}"
    );
    let after = connected().expect("the first worker is still connected");
    assert_eq!(
        after[0]["processId"], before[0]["processId"],
        "the first worker kept its connection"
    );

    let (status, _) = first.terminate();
    assert_eq!(status.code(), Some(0));
    let (status, _) = broker.terminate();
    assert_eq!(status.code(), Some(0));
}
