//! `majordodo local-cluster` and the tools that read a cluster, against the real ZooKeeper,
//! bookies and broker processes it starts (it needs `scripts/test-deps`): client commands find
//! the leader with `--zk`, `status` shows the cluster, `ledgers` and `dump-log` read the
//! ledgers without changing them, and no process outlives the cluster, even when it is killed.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Longest a local cluster may take to start: four JVMs and the brokers on a small machine.
const CLUSTER_START_TIMEOUT: Duration = Duration::from_secs(90);

/// Longest the processes of a killed cluster may take to be gone.
const GONE_DEADLINE: Duration = Duration::from_secs(20);

/// A local cluster started in `dir` with `args`, once it printed its last banner line; with
/// its ZooKeeper address.
fn start_cluster(dir: &Path, args: &[&str]) -> (Server, String) {
    let mut cmd = majordodo();
    cmd.current_dir(dir).arg("local-cluster").args(args);
    let mut cluster = Server::start(cmd);
    cluster.wait_line_within("Ctrl-C stops the whole cluster", CLUSTER_START_TIMEOUT);
    let zk = cluster.value_of("ZooKeeper:");
    let zk = zk.split(',').next().expect("host:port first").to_owned();
    (cluster, zk)
}

/// `majordodo <args>` in `dir` with the cluster's ZooKeeper and admin token.
fn run_cluster(dir: &Path, zk: &str, args: &[&str]) -> std::process::Output {
    let token = std::fs::read_to_string(dir.join("majordodo-cluster/admin.token")).unwrap();
    let mut cmd = majordodo();
    cmd.current_dir(dir)
        .env("MAJORDODO_ZK", zk)
        .env("MAJORDODO_TOKEN", token.trim())
        .args(args);
    run(cmd)
}

fn json(output: &std::process::Output) -> Value {
    serde_json::from_str(&ok(output)).expect("JSON")
}

#[test]
fn ledgers_and_dump_log_read_a_running_clusters_log_without_changing_it() {
    // Goal: with two brokers on one bookie, a task submitted through --zk reaches the leader;
    // `status` names the leader and the follower; `ledgers` lists the leader's open ledger and
    // the ledgers a follower's snapshot needs; `dump-log` prints the task's record; and after
    // both the ledger is still open and its writer still writes (nothing was fenced).
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, zk) = start_cluster(dir.path(), &["--brokers", "2", "--bookies", "1"]);
    let d = dir.path();
    let submitted = ok(&run_cluster(
        d,
        &zk,
        &["submit", "--type", "echo", "--data", "dumped"],
    ));
    assert_eq!(submitted.trim(), "submitted task 1");

    // The leader publishes what it knows of the cluster about once a second.
    let status = poll(
        Duration::from_secs(15),
        "both brokers in the status",
        || {
            let status = json(&run_cluster(d, &zk, &["status", "--json"]));
            (status["cluster"]["brokers"].as_array().map(Vec::len) == Some(2)).then_some(status)
        },
    );
    assert_eq!(status["clusterMode"], "LEADER", "{status}");
    let cluster_view = &status["cluster"];
    assert_eq!(cluster_view["leaderId"], "b1", "{status}");
    let roles: Vec<(String, bool)> = cluster_view["brokers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["brokerId"].as_str().unwrap().to_owned(),
                b["leader"] == true,
            )
        })
        .collect();
    assert_eq!(roles, vec![("b1".into(), true), ("b2".into(), false)]);

    let password = "majordodo-cluster/ledger.password";
    let snapshots = "majordodo-cluster/b2/data/snapshots";
    let listing = |extra: &[&str]| {
        let mut args = vec!["ledgers", "--json", "--ledger-password-file", password];
        args.extend_from_slice(extra);
        json(&run_cluster(d, &zk, &args))
    };
    let before = listing(&["--snapshots", snapshots]);
    assert_eq!(before["fullHistory"], true, "{before}");
    let ledgers = before["ledgers"].as_array().unwrap();
    assert_eq!(ledgers.len(), 1, "{before}");
    let ledger = &ledgers[0];
    assert_eq!(ledger["state"], "open", "{before}");
    assert_eq!(ledger["writer"], "b1", "{before}");
    let id = ledger["id"].as_i64().unwrap().to_string();
    let boot = before["snapshots"]["boot"].as_str().unwrap();
    assert!(boot.contains(&format!("replays ledger {id}")), "{boot}");

    let records: Vec<Value> = ok(&run_cluster(
        d,
        &zk,
        &[
            "dump-log",
            "--ledger",
            &id,
            "--ledger-password-file",
            password,
            "--json",
        ],
    ))
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect();
    let add = records
        .iter()
        .find(|r| r["kind"] == "add_task")
        .expect("the task's record");
    assert_eq!(add["data"], "dumped");
    assert_eq!(add["ledger"].to_string(), id);

    let wrong = run_cluster(d, &zk, &["ledgers", "--json"]);
    let wrong: Value = serde_json::from_str(&ok(&wrong)).unwrap();
    let problem = wrong["ledgers"][0]["problem"].as_str().unwrap_or_default();
    assert!(problem.contains("--ledger-password-file"), "{wrong}");

    assert_eq!(listing(&[])["ledgers"][0]["state"], "open");
    let again = ok(&run_cluster(
        d,
        &zk,
        &["submit", "--type", "echo", "--data", "still"],
    ));
    assert_eq!(again.trim(), "submitted task 2");
    let after = listing(&[]);
    assert_eq!(after["ledgers"].as_array().unwrap().len(), 1, "{after}");
    assert!(after["ledgers"][0]["lastLsn"].as_u64() > ledger["lastLsn"].as_u64());

    let (status, _) = cluster.terminate();
    assert!(status.success(), "{status:?}");
}

#[test]
fn killing_the_local_cluster_kills_every_process_it_started() {
    // Goal: SIGKILL of local-cluster itself (no clean stop) still ends its brokers, bookie and
    // ZooKeeper: each was started with PR_SET_PDEATHSIG.
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, _zk) = start_cluster(dir.path(), &["--brokers", "1", "--bookies", "1"]);
    let started = descendants(cluster.pid());
    assert!(
        started.len() >= 3,
        "broker, bookie and ZooKeeper: {started:?}"
    );
    signal(cluster.pid(), "KILL");
    cluster.wait_exit();
    let deadline = Instant::now() + GONE_DEADLINE;
    loop {
        let left: Vec<u32> = started.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{left:?} outlived the cluster");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn local_cluster_and_the_cluster_tools_refuse_bad_input_naming_the_flag() {
    // Goal: exit status 2 and the flag to fix, before anything starts.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("mine")).unwrap();
    std::fs::write(d.join("mine/notes.txt"), "keep me").unwrap();
    let cases: [(&[&str], &str); 7] = [
        (&["local-cluster", "--dir", "mine"], "--dir mine"),
        (&["local-cluster", "--brokers", "0"], "--brokers"),
        (&["local-cluster", "--bookies", "10"], "--bookies"),
        (&["ledgers", "--zk", "nohost"], "--zk"),
        (
            &["ledgers", "--zk", "127.0.0.1:1", "--zk-path", "rel"],
            "--zk-path",
        ),
        (
            &["ledgers", "--zk", "127.0.0.1:1", "--ledgers-root", "/x/"],
            "--ledgers-root",
        ),
        (
            &[
                "status",
                "--token",
                "t",
                "--zk",
                "127.0.0.1:1",
                "--zk-path",
                "/",
            ],
            "--zk-path",
        ),
    ];
    for (args, flag) in cases {
        let out = run_in(d, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(flag), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(
        std::fs::read_to_string(d.join("mine/notes.txt")).unwrap(),
        "keep me"
    );
    // Nothing answers on port 1: a run-time failure naming --zk, at once.
    let started = Instant::now();
    let out = run_in(d, &["ledgers", "--zk", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("check --zk"), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn descendants_are_read_from_proc() {
    // Goal: the helper that checks that no process outlives the cluster finds a grandchild.
    let mut child = std::process::Command::new("sh")
        .args(["-c", "sleep 30 & wait"])
        .spawn()
        .expect("spawn sh");
    let deadline = Instant::now() + Duration::from_secs(5);
    let found = loop {
        let found = descendants(child.id());
        if !found.is_empty() || Instant::now() >= deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(alive(found[0]));
    let _ = std::process::Command::new("kill")
        .arg(found[0].to_string())
        .status();
    let _ = child.wait();
    assert!(!alive(found[0]));
}
