//! Crashes of real processes: the broker killed with SIGKILL while clients submit and a worker
//! runs tasks, then restarted on the same data; worker processes killed in the middle of a task.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// Writes `text` to `dir/name` and returns the path as a string.
fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes credentials and a broker file with fixed ports (so a restarted broker is found at the
/// same address) and short worker timeouts; returns (broker.toml, HTTP URL, worker address).
fn broker_files(d: &Path, dead_after: &str) -> (String, String, String) {
    write(d, "worker.secret", "crash-test-secret\n");
    let user_entry = ok(&run_in(d, &["auth", "new-token", "--out", "admin.token"]));
    let http = free_port();
    let workers = free_port();
    let toml = write(
        d,
        "broker.toml",
        &format!(
            r#"data_dir = "data"

[http]
listen = "127.0.0.1:{http}"

{user_entry}
[workers]
listen = "127.0.0.1:{workers}"
auth = "credentials-or-shared-secret"
shared_secret_file = "worker.secret"
keepalive_interval = "500ms"
max_idle_time = "{dead_after}"
dead_after = "{dead_after}"
"#
        ),
    );
    (
        toml,
        format!("http://127.0.0.1:{http}/majordodo"),
        format!("127.0.0.1:{workers}"),
    )
}

fn start_broker(d: &Path, toml: &str) -> Server {
    let mut broker = Server::start({
        let mut cmd = majordodo();
        cmd.current_dir(d).args(["broker", "--config", toml]);
        cmd
    });
    broker.wait_line("HTTP API:");
    broker
}

fn start_worker(d: &Path, id: &str, broker: &str) -> Server {
    let toml = write(
        d,
        &format!("{id}.toml"),
        &format!(
            r#"broker = "{broker}"
shared_secret_file = "worker.secret"
worker_id = "{id}"
max_threads = 8
builtin_executors = ["echo", "sleep"]

[connection]
keepalive_interval = "500ms"
reconnect_initial = "50ms"
reconnect_max = "300ms"
"#
        ),
    );
    let mut worker = Server::start({
        let mut cmd = majordodo();
        cmd.current_dir(d).args(["worker", "--config", &toml]);
        cmd
    });
    worker.wait_line("connecting to broker");
    worker
}

/// `majordodo task <id> --json`, or `None` if the command failed.
fn task_json(d: &Path, client: &[&str], id: u64) -> Option<serde_json::Value> {
    let id = id.to_string();
    let mut args = vec!["task", id.as_str(), "--json"];
    args.extend_from_slice(client);
    let out = run_in(d, &args);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// Submits one task; `Some(id)` only when the broker acknowledged it.
fn submit(
    d: &Path,
    client: &[&str],
    task_type: &str,
    data: &str,
    max_attempts: u32,
) -> Option<u64> {
    let attempts = max_attempts.to_string();
    let mut args = vec![
        "submit",
        "--type",
        task_type,
        "--data",
        data,
        "--max-attempts",
        attempts.as_str(),
        "--json",
    ];
    args.extend_from_slice(client);
    let out = run_in(d, &args);
    if !out.status.success() {
        return None;
    }
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    answer["taskId"].as_u64().filter(|id| *id > 0)
}

#[test]
fn broker_killed_mid_run_keeps_every_acknowledged_task_and_reconciles_running_ones() {
    // Goal: SIGKILL the broker while a client submits and a worker runs tasks; after a restart on
    // the same data every acknowledged task is there, finished results survive, and the tasks
    // that were running finish through the worker's reconnection (attempt 1, their own result).
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (toml, url, worker_addr) = broker_files(d, "20s");
    let client_args = ["--url", url.as_str(), "--token-file", "admin.token"];
    let mut broker = start_broker(d, &toml);
    let mut worker = start_worker(d, "w1", &worker_addr);

    // Three long tasks that will be running when the broker dies.
    let long: Vec<u64> = (0..3)
        .map(|i| {
            submit(d, &client_args, "sleep", "3s", 1).unwrap_or_else(|| panic!("long task {i}"))
        })
        .collect();
    for id in &long {
        poll(Duration::from_secs(15), "long task running", || {
            task_json(d, &client_args, *id).filter(|t| t["status"] == "running")
        });
    }

    // A client submitting quick tasks in a loop; only acknowledged ids are recorded.
    let acknowledged = Arc::new(Mutex::new(Vec::<(u64, String)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let submitter = {
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        let (d, url) = (d.to_path_buf(), url.clone());
        std::thread::spawn(move || {
            let client_args = [
                "--url",
                url.as_str(),
                "--token-file",
                "admin.token",
                "--timeout",
                "2s",
                // One attempt each: this client records what was acknowledged, it does not
                // wait for the broker to come back.
                "--retry-for",
                "0",
            ];
            for i in 0..2_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let data = format!("quick-{i}");
                if let Some(id) = submit(&d, &client_args, "echo", &data, 1) {
                    acknowledged.lock().unwrap().push((id, data));
                }
            }
        })
    };
    poll(
        Duration::from_secs(30),
        "30 acknowledged submissions",
        || (acknowledged.lock().unwrap().len() >= 30).then_some(()),
    );
    signal(broker.pid(), "KILL");
    broker.wait_exit();
    // The client keeps trying against the dead broker for a moment; nothing is acknowledged.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    submitter.join().unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();

    let mut broker = start_broker(d, &toml);
    for (id, data) in &acknowledged {
        let task = poll(
            Duration::from_secs(30),
            "acknowledged task finished",
            || task_json(d, &client_args, *id).filter(|t| t["status"] == "finished"),
        );
        assert_eq!(task["result"], data.as_str(), "task {id}");
    }
    for id in &long {
        let task = poll(
            Duration::from_secs(30),
            "long task finished after reconnection",
            || task_json(d, &client_args, *id).filter(|t| t["status"] == "finished"),
        );
        assert_eq!(task["attempts"], 1, "task {id} ran once: {task}");
        assert_eq!(task["workerId"], "w1");
    }
    assert_eq!(worker.terminate().0.code(), Some(0));
    assert_eq!(broker.terminate().0.code(), Some(0));
}

#[test]
fn killed_worker_processes_retry_the_task_elsewhere_until_max_attempts() {
    // Goal: a worker process killed mid-task is declared dead; its task runs again on another
    // worker (attempt 2); when that one is killed too, maxattempts 2 is used up and the task ends
    // in error with result `worker <id> died`.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (toml, url, worker_addr) = broker_files(d, "2s");
    let client_args = ["--url", url.as_str(), "--token-file", "admin.token"];
    let mut broker = start_broker(d, &toml);

    let mut w1 = start_worker(d, "w1", &worker_addr);
    let id = submit(d, &client_args, "sleep", "1h", 2).expect("submitted");
    poll(Duration::from_secs(15), "attempt 1 on w1", || {
        task_json(d, &client_args, id).filter(|t| t["status"] == "running" && t["workerId"] == "w1")
    });
    signal(w1.pid(), "KILL");
    w1.wait_exit();

    let mut w2 = start_worker(d, "w2", &worker_addr);
    let task = poll(Duration::from_secs(30), "attempt 2 on w2", || {
        task_json(d, &client_args, id).filter(|t| t["status"] == "running" && t["workerId"] == "w2")
    });
    assert_eq!(task["attempts"], 2, "{task}");
    signal(w2.pid(), "KILL");
    w2.wait_exit();

    let task = poll(Duration::from_secs(30), "task in error", || {
        task_json(d, &client_args, id).filter(|t| t["status"] == "error")
    });
    assert_eq!(task["attempts"], 2, "{task}");
    assert_eq!(task["result"], "worker w2 died", "{task}");
    assert_eq!(broker.terminate().0.code(), Some(0));
}
