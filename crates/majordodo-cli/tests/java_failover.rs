//! The original Majordodo Java client (org.majordodo:majordodo-client 0.7.0 from Maven Central,
//! driven by `crates/majordodo-client/java-interop`) finds the leader of a replicated cluster
//! through its own ZooKeeper discovery and keeps submitting while the leader is SIGKILLed: real
//! ZooKeeper, three bookies and three `majordodo broker` processes on 127.0.0.1.
//!
//! Needs `scripts/test-deps`, a JDK 17+ and Maven (the Java program is built here; its jars come
//! from Maven Central or ~/.m2).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::cluster::{ClusterOptions, LoggedProcess, TestCluster, ZK_PATH, tail};
use majordodo_testkit::spawn_tied_to_process;
use serde_json::Value;

/// Tasks the Java program submits.
const TASKS: usize = 60;

/// The leader is killed once the Java client got this many task ids.
const KILL_AFTER: usize = 15;

/// Pause of the Java program between two tasks.
const PAUSE_MS: u64 = 50;

/// Longest the Java program may run (JVM start, the failover and every task).
const JAVA_TIMEOUT: Duration = Duration::from_secs(150);

/// Bound of the cluster's waits.
const WAIT: Duration = Duration::from_secs(60);

fn java_project() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../majordodo-client/java-interop")
}

/// Builds the Java program with Maven; returns its class path.
fn build_java_program() -> String {
    for (tool, arg) in [("java", "-version"), ("mvn", "-v")] {
        let found = Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "this test needs `{tool}` on PATH: a JDK 17+ and Maven (scripts/test-deps checks both)"
        );
    }
    let dir = java_project();
    let out = Command::new("mvn")
        .args(["-q", "-B", "-f"])
        .arg(dir.join("pom.xml"))
        .arg("package")
        .output()
        .expect("run mvn");
    assert!(
        out.status.success(),
        "mvn package of {} failed (is Maven Central reachable?):\n{}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let target = dir.join("target");
    format!(
        "{}:{}/*",
        target.join("java-interop.jar").display(),
        target.join("lib").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_java_client_keeps_submitting_while_the_leader_is_killed() {
    // Goal: with the Java client's ZooKeeper discovery and retry settings, every task it got an
    // id for (before, across and after a SIGKILL of the leader) exists on the new leader with
    // that id and its data, and ids grow in submission order.
    let classpath = tokio::task::spawn_blocking(build_java_program)
        .await
        .unwrap();
    let mut cluster = TestCluster::start(&ClusterOptions::new(3)).await;
    let first = cluster.wait_leader(WAIT).await;

    let stderr = cluster.dir.join("java.stderr");
    let mut java = Command::new("java");
    java.args(["-cp", &classpath, "rs.majordodo.interop.JavaClientFailover"])
        .arg(cluster.zk_connect())
        .args([ZK_PATH, "admin", &cluster.token, "failover"])
        .arg(TASKS.to_string())
        .arg(PAUSE_MS.to_string())
        .arg(JAVA_TIMEOUT.as_secs().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap());
    let mut child = spawn_tied_to_process(java).expect("start java");
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut java = LoggedProcess {
        name: "the Java client".into(),
        child,
        log: stderr.clone(),
    };
    let (tx, lines) = mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            match serde_json::from_str(&line) {
                Ok(value) => {
                    if tx.send(value).is_err() {
                        return;
                    }
                }
                Err(_) => eprintln!("java: {line}"),
            }
        }
    });

    let started = Instant::now();
    let mut events: Vec<Value> = Vec::new();
    let mut killed_at = None;
    let mut done = None;
    while done.is_none() {
        match lines.try_recv() {
            Ok(event) => {
                if event["event"] == "done" {
                    done = Some(event.clone());
                }
                events.push(event);
            }
            Err(mpsc::TryRecvError::Empty) => {
                assert!(
                    started.elapsed() < JAVA_TIMEOUT + WAIT,
                    "the Java client did not finish in time; its stderr:\n{}",
                    tail(&stderr, 40)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(mpsc::TryRecvError::Disconnected) => panic!(
                "the Java client ended without its last line ({:?}); its stderr:\n{}",
                java.child.try_wait(),
                tail(&stderr, 40)
            ),
        }
        let submitted = events.iter().filter(|e| e["event"] == "submitted").count();
        if killed_at.is_none() && submitted >= KILL_AFTER {
            cluster.brokers[first].kill();
            killed_at = Some(events.len());
        }
    }
    let status = java.terminate().await;
    let done = done.unwrap();
    assert_eq!(
        done["complete"],
        true,
        "the Java client gave up ({status}): {done}; stderr:\n{}",
        tail(&stderr, 40)
    );
    let killed_at = killed_at.expect("the leader was killed");

    let leader = cluster.wait_leader(WAIT).await;
    assert_ne!(leader, first, "another broker leads after the kill");
    let client = cluster.client_of(leader);
    let submitted: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "submitted")
        .collect();
    assert_eq!(submitted.len(), TASKS, "one task id per task: {events:#?}");
    let mut previous = 0;
    for event in &submitted {
        let id: u64 = event["taskId"].as_str().unwrap().parse().unwrap();
        assert!(id > previous, "task ids grow: {id} after {previous}");
        previous = id;
        let task = client
            .task(id)
            .await
            .expect("the new leader answers")
            .unwrap_or_else(|| panic!("task {id} ({event}) is missing on the new leader"));
        assert_eq!(task.data, event["data"].as_str().unwrap(), "task {id}");
        assert_eq!(
            (task.user_id.as_str(), task.task_type.as_str()),
            ("java", "java-failover")
        );
    }
    // The kill landed while the program ran: some tasks were submitted to the new leader.
    let after_kill = events[killed_at..]
        .iter()
        .filter(|e| e["event"] == "submitted")
        .count();
    assert!(after_kill >= TASKS - KILL_AFTER - 1, "{events:#?}");

    let failed: Vec<&Value> = events.iter().filter(|e| e["event"] == "failed").collect();
    let log = std::fs::read_to_string(&stderr).unwrap_or_default();
    let retried = log.matches("retry on #").count();
    let mut kinds: Vec<String> = failed
        .iter()
        .map(|e| {
            e["error"]
                .as_str()
                .unwrap_or_default()
                .chars()
                .take(100)
                .collect()
        })
        .collect();
    kinds.dedup();
    let status = client.status().await.unwrap();
    eprintln!(
        "java failover: leader {} -> {}, {} tries raised (not retried by the client: {kinds:?}), \
         {} retries inside the client, {} tasks on the new leader for {} task ids received",
        cluster.brokers[first].id,
        cluster.brokers[leader].id,
        failed.len(),
        retried,
        status.tasks,
        submitted.len()
    );
}
