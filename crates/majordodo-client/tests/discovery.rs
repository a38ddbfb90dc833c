//! Leader discovery through a real ZooKeeper (majordodo-testkit's `ZkServer`): the client reads
//! the leader's API URL from `<base>/leader`, keeps using it while it serves, and reads the
//! znode again after a failure, so it follows a leader change. The brokers are in-process
//! brokers on memory logs; the test writes the leader znode itself.

mod common;

use common::{ADMIN_TOKEN, Server, WAIT, quick_retries};
use majordodo_client::{
    Auth, Client, ClientError, DiscoveryError, RetryPolicy, Submitted, TaskSubmission, ZkDiscovery,
};
use majordodo_proto::cluster::BrokerInfo;
use majordodo_testkit::ZkServer;
use zookeeper_client as zk;

const BASE: &str = "/cluster-a";

fn info(server: &Server, id: &str) -> Vec<u8> {
    BrokerInfo::new("127.0.0.1", 7363, &server.api_url(), id).to_json()
}

fn discovering(zk: &ZkServer, retry: RetryPolicy) -> Client {
    Client::discover(ZkDiscovery::new(zk.connect_string(), BASE).unwrap())
        .auth(Auth::bearer(ADMIN_TOKEN))
        .retry(retry)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovering_client_follows_a_rewritten_leader_znode() {
    // Goal: the client submits to the broker named in the leader znode; once the znode names
    // another broker and the first one stops answering, the next submission (retried after the
    // failure, same key) goes to the new leader and is created there once.
    let zk = ZkServer::start().await.expect("start zookeeper");
    let session = zk::Client::connect(&zk.connect_string())
        .await
        .expect("connect to zookeeper");
    let mut a = Server::start().await;
    let b = Server::start().await;
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    session.create(BASE, b"", &persistent).await.unwrap();
    let leader = format!("{BASE}/leader");
    session
        .create(&leader, &info(&a, "a"), &ephemeral)
        .await
        .unwrap();

    let client = discovering(&zk, quick_retries());
    let one = client
        .submit(&TaskSubmission::new("t", "admin", "one"))
        .await
        .unwrap();
    assert_eq!(client.url(), a.api_url());
    assert_eq!(one, Submitted::Created(a.tasks().await[0].0));

    session
        .set_data(&leader, &info(&b, "b"), None)
        .await
        .unwrap();
    a.stop_http().await;
    let two = tokio::time::timeout(
        WAIT,
        client.submit(&TaskSubmission::new("t", "admin", "two")),
    )
    .await
    .expect("answered in time")
    .unwrap();
    assert_eq!(client.url(), b.api_url());
    let on_b = b.tasks().await;
    assert_eq!(on_b.len(), 1);
    assert_eq!(two, Submitted::Created(on_b[0].0));
    assert_eq!(on_b[0].1, "two");
    assert_eq!(
        a.tasks().await.len(),
        1,
        "nothing more reached the old leader"
    );

    // No leader published: a retryable discovery error.
    session.delete(&leader, None).await.unwrap();
    let error = discovering(&zk, RetryPolicy::none())
        .status()
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            ClientError::Discovery(DiscoveryError::NoLeader { path }) if *path == leader
        ),
        "{error}"
    );
    assert!(error.is_retryable());
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn an_unreachable_zookeeper_is_a_retryable_error_naming_it() {
    // Goal: with nothing listening at the connect string, the lookup fails within its
    // timeout with an error that names the ensemble and is retryable.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let discovery = ZkDiscovery::new(closed.to_string(), BASE)
        .unwrap()
        .with_connect_timeout(std::time::Duration::from_secs(2));
    let error = tokio::time::timeout(WAIT, discovery.leader())
        .await
        .expect("fails in time")
        .unwrap_err();
    assert!(
        matches!(&error, DiscoveryError::Unreachable { connect, .. } if *connect == closed.to_string()),
        "{error}"
    );
    assert!(error.is_retryable());
}
