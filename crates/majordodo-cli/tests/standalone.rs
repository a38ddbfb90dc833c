//! `majordodo standalone` end to end: start on free ports, the printed commands, the client
//! commands against it, JSON Lines submission, graceful stop on SIGTERM, and recovery of the
//! data directory on restart.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use serde_json::Value;

/// Starts a standalone in `dir` on free ports and returns it with its API URL.
fn start_standalone(dir: &Path) -> (Server, String) {
    let mut cmd = majordodo();
    cmd.current_dir(dir)
        .args(["standalone", "--http-port", "0", "--worker-port", "0"]);
    let mut server = Server::start(cmd);
    let url = server.value_of("HTTP API:");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(url.ends_with("/majordodo"), "{url}");
    (server, url)
}

fn json_of(output: &std::process::Output) -> Value {
    serde_json::from_str(&ok(output)).expect("the command prints JSON")
}

#[test]
fn standalone_runs_a_submitted_task_and_stops_gracefully_on_sigterm() {
    // Goal: on free ports in a fresh directory, standalone prints its URL and token path, the
    // submit command it prints works as printed, the built-in executor finishes the task, the
    // client commands show it, SIGTERM stops it with status 0, and a restart recovers the task.
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = start_standalone(dir.path());
    let token_path = server.value_of("admin token:");
    assert_eq!(
        Path::new(&token_path),
        dir.path().join("majordodo-data/admin.token")
    );
    let mode = std::fs::metadata(&token_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "admin.token must be private");
    // The local worker's own credential, issued at the first start.
    let credential = dir.path().join("majordodo-data/local-worker.credential");
    assert_eq!(
        std::fs::metadata(&credential).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let issued = std::fs::read_to_string(&credential).unwrap();
    assert!(issued.contains("worker_id = local"), "{issued}");

    // The printed command, run as printed by a shell in the same directory.
    let printed = server.wait_line(" submit --type echo");
    let out = run({
        let mut sh = std::process::Command::new("sh");
        sh.current_dir(dir.path()).arg("-c").arg(printed.trim());
        sh
    });
    assert_eq!(ok(&out).trim(), "submitted task 1");

    let client = ["--url", url.as_str()];
    let task = wait_task_status(dir.path(), &client, 1, "finished");
    assert_eq!(task["result"], "hello world");
    assert_eq!(task["workerId"], "local");

    let tasks = json_of(&run_in(
        dir.path(),
        &["tasks", "--json", "--status", "finished", "--url", &url],
    ));
    let tasks = tasks.as_array().expect("an array of tasks");
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["taskId"], 1);
    assert_eq!(tasks[0]["tasktype"], "echo");

    let table = ok(&run_in(dir.path(), &["tasks", "--url", &url]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID  STATUS"), "{table}");
    assert!(
        lines[1].contains("finished") && lines[1].contains("hello world"),
        "{table}"
    );

    let status = json_of(&run_in(dir.path(), &["status", "--json", "--url", &url]));
    assert_eq!(status["clusterMode"], "LEADER");
    assert_eq!(status["finishedTasks"], 1);
    let readable = ok(&run_in(dir.path(), &["status", "--url", &url]));
    assert!(readable.contains("1 connected"), "{readable}");

    let workers = json_of(&run_in(dir.path(), &["workers", "--json", "--url", &url]));
    assert_eq!(workers[0]["id"], "local");
    assert_eq!(workers[0]["status"], "CONNECTED");
    assert!(ok(&run_in(dir.path(), &["workers", "--url", &url])).contains("local"));

    // A failing task is retried up to its attempts, then ends in error.
    let out = run_in(
        dir.path(),
        &[
            "submit",
            "--type",
            "fail",
            "--data",
            "boom",
            "--max-attempts",
            "2",
            "--url",
            &url,
        ],
    );
    assert_eq!(ok(&out).trim(), "submitted task 2");
    let failed = wait_task_status(dir.path(), &client, 2, "error");
    assert_eq!(failed["attempts"], 2);
    assert_eq!(failed["result"], "boom");

    let (status, _elapsed) = server.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM must stop standalone cleanly"
    );

    // Restart on the same directory: the tasks and the token are still there.
    let (mut again, url) = start_standalone(dir.path());
    assert_eq!(again.value_of("admin token:"), token_path);
    let task = wait_task_status(dir.path(), &["--url", &url], 1, "finished");
    assert_eq!(task["result"], "hello world");
    // The local worker's credential is kept, and it is the only one.
    assert_eq!(std::fs::read_to_string(&credential).unwrap(), issued);
    let listed = json_of(&run_in(
        dir.path(),
        &["worker-credentials", "list", "--json", "--url", &url],
    ));
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["workerId"], "local");
    assert_eq!(listed[0]["revoked"], false);
    let out = run_in(
        dir.path(),
        &["submit", "--type", "echo", "--data", "again", "--url", &url],
    );
    assert_eq!(ok(&out).trim(), "submitted task 3");
    wait_task_status(dir.path(), &["--url", &url], 3, "finished");
    let (status, _) = again.terminate();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn jsonl_submission_checks_every_line_before_sending_anything() {
    // Goal: a file with a bad line is refused with its line number and nothing is submitted;
    // a good file is submitted in batches, with busy slots reported as not created.
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = start_standalone(dir.path());

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"tasktype\":\"echo\",\"data\":\"1\"}\n{\"tasktype\":\"echo\",\"data\":\"2\"}\n{\"tasktype\":\"echo\",\"maxattempts\":\"many\"}\n",
    )
    .unwrap();
    let out = run_in(
        dir.path(),
        &["submit", "--jsonl", bad.to_str().unwrap(), "--url", &url],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("line 3: maxattempts"), "{err}");
    assert!(err.contains("nothing was submitted"), "{err}");
    let tasks = json_of(&run_in(dir.path(), &["tasks", "--json", "--url", &url]));
    assert_eq!(
        tasks.as_array().unwrap().len(),
        0,
        "nothing may be submitted"
    );

    // 25 tasks from stdin in batches of 10; two lines want the same slot.
    let mut lines: Vec<String> = (0..23)
        .map(|i| format!("{{\"tasktype\":\"echo\",\"data\":\"task {i}\"}}"))
        .collect();
    lines.push("{\"tasktype\":\"sleep\",\"data\":\"1s\",\"slot\":\"only-one\"}".into());
    lines.push("{\"tasktype\":\"echo\",\"slot\":\"only-one\"}".into());
    let good = dir.path().join("good.jsonl");
    std::fs::write(&good, lines.join("\n") + "\n").unwrap();
    let mut cmd = majordodo();
    cmd.current_dir(dir.path()).args([
        "submit",
        "--jsonl",
        "-",
        "--batch-size",
        "10",
        "--url",
        &url,
    ]);
    let out = run_with_stdin(cmd, std::fs::File::open(&good).unwrap().into());
    let summary = ok(&out);
    assert!(
        summary.contains("25 tasks, submitted 24 (ids 1..24), not created 1, failed 0"),
        "{summary}"
    );
    assert!(
        summary.contains("slot only-one already assigned"),
        "{summary}"
    );
    let waiting_or_done = json_of(&run_in(
        dir.path(),
        &["tasks", "--json", "--max", "100", "--url", &url],
    ));
    assert_eq!(waiting_or_done.as_array().unwrap().len(), 24);

    let (status, _) = server.terminate();
    assert_eq!(status.code(), Some(0));
}

/// Runs `line` as a shell would, in `dir`.
fn shell(dir: &Path, line: &str) -> std::process::Command {
    let mut sh = std::process::Command::new("sh");
    sh.current_dir(dir).arg("-c").arg(line);
    sh
}

#[test]
fn standalone_without_a_worker_prints_a_worker_command_that_runs_its_tasks() {
    // Goal: with --no-worker the banner does not offer a task nobody will run: it prints the
    // commands issuing a worker credential and starting the worker first, and those and the
    // submit command after them, run as printed, get the echo task finished.
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = majordodo();
    cmd.current_dir(dir.path()).args([
        "standalone",
        "--no-worker",
        "--http-port",
        "0",
        "--worker-port",
        "0",
    ]);
    let mut server = Server::start(cmd);
    let url = server.value_of("HTTP API:");
    assert_eq!(server.value_of("local worker:"), "none (--no-worker)");
    let issue_line = server.wait_line(" worker-credentials add w1 ");
    let worker_line = server.wait_line(" worker --broker ");
    let submit_line = server.wait_line(" submit --type echo");
    let worker_at = server.seen.iter().position(|l| *l == worker_line);
    let submit_at = server.seen.iter().position(|l| *l == submit_line);
    assert!(worker_at < submit_at, "{:#?}", server.seen);

    let issued = ok(&run(shell(dir.path(), issue_line.trim())));
    assert!(
        issued.contains("for worker w1, written to w1.credential"),
        "{issued}"
    );
    let mut worker = Server::start(shell(dir.path(), &format!("exec {}", worker_line.trim())));
    worker.wait_line("connecting to broker");
    let out = run(shell(dir.path(), submit_line.trim()));
    assert_eq!(ok(&out).trim(), "submitted task 1");
    let task = wait_task_status(dir.path(), &["--url", &url], 1, "finished");
    assert_eq!(task["result"], "hello world");

    let (status, _) = worker.terminate();
    assert_eq!(status.code(), Some(0));
    let (status, _) = server.terminate();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn submit_and_task_say_when_no_connected_worker_serves_the_type() {
    // Goal: a task of a type nobody serves does not wait silently: submit and task say that no
    // connected worker serves it, or that no worker is connected at all; a task a worker runs
    // gets no note.
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = start_standalone(dir.path());
    let client = ["--url", url.as_str()];
    let run_client = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&client);
        run_in(dir.path(), &all)
    };
    let out = run_client(&["submit", "--type", "nosuch", "--data", "x"]);
    assert_eq!(ok(&out).trim(), "submitted task 1");
    let expected = "no connected worker serves type nosuch (1 worker connected, running nothing)";
    assert!(stderr(&out).contains(expected), "{}", stderr(&out));
    let out = run_client(&["task", "1"]);
    assert!(ok(&out).contains("waiting"));
    assert!(stderr(&out).contains(expected), "{}", stderr(&out));
    let out = run_client(&["submit", "--type", "echo", "--data", "x"]);
    assert_eq!(ok(&out).trim(), "submitted task 2");
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    let (status, _) = server.terminate();
    assert_eq!(status.code(), Some(0));

    // A fresh directory: a broker restarted on the first one counts the local worker as
    // connected until that worker reconnects or is declared dead.
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = majordodo();
    cmd.current_dir(dir.path()).args([
        "standalone",
        "--no-worker",
        "--http-port",
        "0",
        "--worker-port",
        "0",
    ]);
    let mut server = Server::start(cmd);
    let url = server.value_of("HTTP API:");
    let out = run_in(
        dir.path(),
        &["submit", "--type", "echo", "--url", &url, "--json"],
    );
    assert_eq!(ok(&out).trim(), "{\"taskId\":1}");
    assert!(
        stderr(&out).contains(
            "no worker is connected: task 1 waits until a worker serving type echo connects"
        ),
        "{}",
        stderr(&out)
    );
    let (status, _) = server.terminate();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_port_in_use_is_reported_with_the_flag_that_picks_a_free_one() {
    // Goal: when the HTTP or the worker port is taken, standalone exits 1 suggesting
    // --http-port 0 or --worker-port 0, and the broker names --http-listen / --worker-listen.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    for (flags, hint) in [
        (
            ["--http-port", &port, "--worker-port", "0"],
            "--http-port 0",
        ),
        (
            ["--http-port", "0", "--worker-port", &port],
            "--worker-port 0",
        ),
    ] {
        let mut args = vec!["standalone"];
        args.extend_from_slice(&flags);
        let out = run_in(d, &args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("127.0.0.1:{port}: the address is in use")) && err.contains(hint),
            "{hint:?} not in: {err}"
        );
    }
    std::fs::write(d.join("secret"), "s").unwrap();
    let config = format!(
        "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[[http.users]]\nname = \"admin\"\nrole = \"admin\"\ntoken_sha256 = \"{}\"\n[workers]\nlisten = \"127.0.0.1:0\"\nauth = \"credentials-or-shared-secret\"\nshared_secret_file = \"secret\"\n",
        "0".repeat(64)
    );
    std::fs::write(d.join("broker.toml"), config).unwrap();
    let out = run_in(d, &["broker", "-c", "broker.toml"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("--http-listen"), "{}", stderr(&out));
}

#[test]
fn transactions_and_cancel_from_the_command_line() {
    // Goal: `transaction begin`, `submit --transaction`, `transaction commit|rollback` and
    // `cancel` work against a standalone: a task submitted in a transaction is invisible until
    // the commit; a rolled-back one never appears; a second commit and a cancel of a finished
    // task fail with exit 1 and the broker's reason; a running sleep is cancelled.
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = start_standalone(dir.path());
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--url", url.as_str()]);
        run_in(dir.path(), &all)
    };
    let tx = json_of(&run(&["transaction", "begin", "--json"]))["transaction"]
        .as_u64()
        .unwrap();
    let tx_arg = tx.to_string();
    let out = ok(&run(&[
        "submit",
        "--type",
        "echo",
        "--data",
        "in tx",
        "--transaction",
        &tx_arg,
    ]));
    assert!(out.contains(&format!("in transaction {tx}")), "{out}");
    let id: String = out.split_whitespace().nth(2).unwrap().to_owned();
    let invisible = run(&["task", &id]);
    assert_eq!(invisible.status.code(), Some(1), "{}", stderr(&invisible));
    let out = ok(&run(&["transaction", "commit", &tx_arg]));
    assert!(
        out.contains(&format!("committed transaction {tx}")),
        "{out}"
    );
    let again = run(&["transaction", "commit", &tx_arg]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("no longer open"),
        "{}",
        stderr(&again)
    );
    // Committed: the local worker runs it.
    let mut finished = false;
    for _ in 0..200 {
        let task = json_of(&run(&["task", &id, "--json"]));
        if task["status"] == "finished" {
            assert_eq!(task["result"], "in tx");
            finished = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(finished, "the committed task ran");
    let ended = run(&["cancel", &id]);
    assert_eq!(ended.status.code(), Some(1));
    assert!(
        stderr(&ended).contains("already ended"),
        "{}",
        stderr(&ended)
    );

    let tx2 = json_of(&run(&["transaction", "begin", "--json"]))["transaction"]
        .as_u64()
        .unwrap()
        .to_string();
    ok(&run(&["submit", "--type", "echo", "--transaction", &tx2]));
    ok(&run(&["transaction", "rollback", &tx2]));

    let out = ok(&run(&["submit", "--type", "sleep", "--data", "60s"]));
    let sleeping: String = out.split_whitespace().nth(2).unwrap().to_owned();
    let mut running = false;
    for _ in 0..200 {
        if json_of(&run(&["task", &sleeping, "--json"]))["status"] == "running" {
            running = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(running, "the sleep started");
    let out = ok(&run(&["cancel", &sleeping]));
    assert!(out.contains("it was running"), "{out}");
    let task = json_of(&run(&["task", &sleeping, "--json"]));
    assert_eq!(task["status"], "error");
    assert_eq!(task["result"], "cancelled");
    let (status, _) = server.terminate();
    assert_eq!(status.code(), Some(0));
}
