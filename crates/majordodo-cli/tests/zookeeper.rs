//! `majordodo worker --zk` and the client commands' `--zk` against two broker processes and a
//! real ZooKeeper (majordodo-testkit's `ZkServer`). The test writes the leader znode itself, as
//! the leader of a replicated cluster would: the worker and the client follow it from the first
//! broker to the second.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use majordodo_proto::cluster::BrokerInfo;
use majordodo_testkit::ZkServer;
use zookeeper_client as zk;

const BASE: &str = "/cluster-a";

/// A `majordodo broker` in `dir` accepting the users of `user_entry` and the test's worker
/// secret; returns it with its API URL and worker port.
fn broker_in(dir: &Path, user_entry: &str) -> (Server, String, String) {
    write_file(dir, "worker.secret", "a-shared-secret-for-tests\n");
    let config = write_file(
        dir,
        "broker.toml",
        &format!(
            "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:0\"\n{user_entry}\n\
             [workers]\nlisten = \"127.0.0.1:0\"\nauth = \"credentials-or-shared-secret\"\nshared_secret_file = \"worker.secret\"\n"
        ),
    );
    let mut broker = Server::start({
        let mut cmd = majordodo();
        cmd.current_dir(dir).args(["broker", "--config", &config]);
        cmd
    });
    let url = broker.value_of("HTTP API:");
    let worker_port = broker.value_of("worker port:");
    (broker, url, worker_port)
}

/// The leader znode's content for a broker with this API URL and worker port.
fn leader_info(url: &str, worker_port: &str, id: &str) -> Vec<u8> {
    let (host, port) = worker_port.rsplit_once(':').expect("host:port");
    BrokerInfo::new(host, port.parse().expect("a port"), url, id).to_json()
}

/// Whether `workers` at `url` lists `w1` as connected.
fn w1_connected(dir: &Path, url: &str, token: &str) -> bool {
    let out = run_in(
        dir,
        &["workers", "--json", "--url", url, "--token-file", token],
    );
    if !out.status.success() {
        return false;
    }
    let workers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    workers.as_array().is_some_and(|ws| {
        ws.iter()
            .any(|w| w["id"] == "w1" && w["status"] == "CONNECTED")
    })
}

#[test]
fn a_worker_and_the_client_commands_follow_the_leader_znode_to_a_new_broker() {
    // Goal: `majordodo worker --zk` connects to the broker named in the leader znode and
    // `majordodo submit --zk` submits there; once the znode names the second broker and the
    // first one stops, the worker moves to the second broker, and the client commands (by flag
    // and by $MAJORDODO_ZK) reach it too.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let zk_server = runtime
        .block_on(ZkServer::start())
        .expect("start zookeeper");
    let connect = zk_server.connect_string();
    let session = runtime
        .block_on(zk::Client::connect(&connect))
        .expect("connect to zookeeper");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (dir_a.path(), dir_b.path());
    let user_entry = ok(&run_in(a, &["auth", "new-token", "--out", "admin.token"]));
    let token = a.join("admin.token").to_str().unwrap().to_owned();
    let (mut broker_a, url_a, port_a) = broker_in(a, &user_entry);
    let (mut broker_b, url_b, port_b) = broker_in(b, &user_entry);

    let leader = format!("{BASE}/leader");
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    runtime
        .block_on(session.create(BASE, b"", &persistent))
        .unwrap();
    runtime
        .block_on(session.create(&leader, &leader_info(&url_a, &port_a, "a"), &ephemeral))
        .unwrap();

    let mut worker = Server::start({
        let mut cmd = majordodo();
        cmd.current_dir(a).args([
            "worker",
            "--zk",
            &connect,
            "--zk-path",
            BASE,
            "--shared-secret-file",
            "worker.secret",
            "--worker-id",
            "w1",
            "--builtin",
            "echo",
        ]);
        cmd
    });
    let banner = worker.wait_line("connecting to");
    assert!(
        banner.contains(&format!("zookeeper {connect} {leader}")),
        "{banner}"
    );
    poll(
        Duration::from_secs(20),
        "w1 connected to the first broker",
        || w1_connected(a, &url_a, &token).then_some(()),
    );

    let client = [
        "--zk",
        connect.as_str(),
        "--zk-path",
        BASE,
        "--token-file",
        &token,
    ];
    let mut submit = vec!["submit", "--type", "echo", "--data", "one"];
    submit.extend_from_slice(&client);
    assert_eq!(ok(&run_in(a, &submit)).trim(), "submitted task 1");
    let task = wait_task_status(a, &["--url", &url_a, "--token-file", &token], 1, "finished");
    assert_eq!(task["result"], "one");

    runtime
        .block_on(session.set_data(&leader, &leader_info(&url_b, &port_b, "b"), None))
        .unwrap();
    let (status, _) = broker_a.terminate();
    assert_eq!(status.code(), Some(0));
    poll(
        Duration::from_secs(30),
        "w1 connected to the second broker",
        || w1_connected(b, &url_b, &token).then_some(()),
    );

    let mut submit = vec!["submit", "--type", "echo", "--data", "two"];
    submit.extend_from_slice(&client);
    assert_eq!(ok(&run_in(b, &submit)).trim(), "submitted task 1");
    let task = wait_task_status(b, &client, 1, "finished");
    assert_eq!(
        (&task["result"], &task["workerId"]),
        (&"two".into(), &"w1".into())
    );

    let mut status = majordodo();
    status
        .current_dir(b)
        .env("MAJORDODO_ZK", &connect)
        .env("MAJORDODO_ZK_PATH", BASE)
        .args(["status", "--token-file", &token]);
    let shown = ok(&run(status));
    assert!(shown.contains(&url_b), "{shown}");
    let both = run_in(
        b,
        &[
            "status",
            "--zk",
            &connect,
            "--url",
            &url_b,
            "--token-file",
            &token,
        ],
    );
    assert_eq!(both.status.code(), Some(2), "{}", stderr(&both));
    assert!(stderr(&both).contains("not both"), "{}", stderr(&both));

    let (status, _) = worker.terminate();
    assert_eq!(status.code(), Some(0), "the worker stops cleanly");
    let (status, _) = broker_b.terminate();
    assert_eq!(status.code(), Some(0));
    drop(zk_server);
}
