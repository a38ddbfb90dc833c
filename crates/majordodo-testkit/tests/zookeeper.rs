//! Real ZooKeeper server: start, stop/restart with the same port and data, and children that
//! die with the test process.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use majordodo_testkit::ZkServer;
use zookeeper_client as zkc;

/// Set in the child process of `zookeeper_dies_with_the_test_process`.
const HOLDER_ENV: &str = "MAJORDODO_TESTKIT_TEST_HOLDER";

async fn connect(zk: &ZkServer) -> zkc::Client {
    zkc::Client::connect(&zk.connect_string())
        .await
        .expect("connect to the test zookeeper")
}

#[tokio::test]
async fn zookeeper_serves_on_loopback_and_keeps_data_across_restart() {
    // Goal: a started ZkServer serves clients on 127.0.0.1, stop makes it unreachable, and
    // restart brings it back on the same port with the znodes it had.
    let mut zk = ZkServer::start().await.expect("start zookeeper");
    println!("zookeeper started in {:?}", zk.started_in());
    assert_eq!(zk.connect_string(), format!("127.0.0.1:{}", zk.port()));

    let client = connect(&zk).await;
    let options = zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
    client
        .create("/kept", b"payload", &options)
        .await
        .expect("create znode");
    drop(client);

    let port = zk.port();
    let pid = zk.pid().expect("running");
    zk.stop().await;
    assert!(zk.pid().is_none());
    assert!(
        common::process_is_gone(pid),
        "stop waits for the process to exit"
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        !common::accepts_tcp(addr).await,
        "stopped server still accepts"
    );

    zk.restart().await.expect("restart zookeeper");
    println!("zookeeper restarted in {:?}", zk.started_in());
    assert_eq!(zk.port(), port);
    let client = connect(&zk).await;
    let (data, _) = client
        .get_data("/kept")
        .await
        .expect("znode survives restart");
    assert_eq!(data, b"payload");
}

#[tokio::test]
async fn dropping_zookeeper_kills_it_and_removes_its_directory() {
    // Goal: Drop leaves no process and no directory behind.
    let zk = ZkServer::start().await.expect("start zookeeper");
    let pid = zk.pid().expect("running");
    let dir = zk.dir().to_owned();
    assert!(dir.join("zoo.cfg").is_file());
    drop(zk);
    assert!(common::process_is_gone(pid));
    assert!(!dir.exists(), "directory {} left behind", dir.display());
}

#[tokio::test]
async fn zookeeper_dies_with_the_test_process() {
    // Goal: a test process killed with SIGKILL (no Drop runs) does not leave its ZooKeeper JVM
    // running: the harness ties children to the process with PR_SET_PDEATHSIG.
    let exe = std::env::current_exe().expect("test binary path");
    let mut holder = Command::new(exe)
        .args([
            "--exact",
            "holds_a_zookeeper_until_killed",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLDER_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the holder process");
    let stdout = holder.stdout.take().expect("piped stdout");
    // the holder prints its ZooKeeper's pid and directory once it serves
    let (zk_pid, zk_dir) = tokio::task::spawn_blocking(move || {
        let mut pid = None;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("read holder output");
            // libtest may print "test <name> ... " on the same line first
            if let Some((_, rest)) = line.split_once("holder: ") {
                let (p, dir) = rest.split_once(' ').expect("pid and dir");
                pid = Some((p.parse::<u32>().expect("pid"), dir.to_owned()));
                break;
            }
        }
        pid.expect("the holder reported its zookeeper")
    })
    .await
    .expect("reader task");
    assert!(
        !common::process_is_gone(zk_pid),
        "zookeeper runs while its holder lives"
    );

    holder.kill().expect("SIGKILL the holder");
    holder.wait().expect("reap the holder");
    let gone =
        common::eventually(Duration::from_secs(10), || common::process_is_gone(zk_pid)).await;
    // the holder could not clean up after itself
    let _ = std::fs::remove_dir_all(&zk_dir);
    assert!(gone, "zookeeper {zk_pid} outlived the killed test process");
}

#[tokio::test]
#[ignore = "helper: run as a child process by zookeeper_dies_with_the_test_process"]
async fn holds_a_zookeeper_until_killed() {
    // Goal: hold a running ZooKeeper until this process is killed from outside.
    assert_eq!(
        std::env::var(HOLDER_ENV).as_deref(),
        Ok("1"),
        "only meaningful as the child of zookeeper_dies_with_the_test_process"
    );
    let zk = ZkServer::start().await.expect("start zookeeper");
    println!(
        "holder: {} {}",
        zk.pid().expect("running"),
        zk.dir().display()
    );
    // bounded: the parent kills us long before this
    tokio::time::sleep(Duration::from_secs(120)).await;
    panic!("the parent test did not kill the holder in time");
}
