//! ZooKeeper digest ACLs on the cluster's znodes, against a real ZooKeeper: a broker with
//! digest credentials makes every znode it creates changeable only by that identity, so a
//! ZooKeeper client without them (or with others) can read the leader but cannot change or
//! remove anything; another broker with the same credentials can.

use majordodo_cluster::{
    CoordConfig, Coordinator, DISCOVERY_DIR, LEADER_NODE, LEDGERS_NODE, ZkDigest,
};
use majordodo_proto::cluster::BrokerInfo;
use majordodo_testkit::ZkServer;
use zookeeper_client as zk;

fn config(zk: &ZkServer, base: &str, digest: Option<&str>) -> CoordConfig {
    let mut c = CoordConfig::new(zk.connect_string());
    c.base_path = base.to_owned();
    c.digest = digest.map(|d| ZkDigest::parse(d).unwrap());
    c
}

fn me(id: &str) -> BrokerInfo {
    BrokerInfo::new("127.0.0.1", 7363, "https://127.0.0.1:7364/majordodo", id)
}

/// Every way an outsider could change the cluster's znodes; each must fail with `NoAuth`.
async fn assert_cannot_modify(outsider: &zk::Client, base: &str) {
    let open = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let leader = format!("{base}/{LEADER_NODE}");
    let ledgers = format!("{base}/{LEDGERS_NODE}");
    let discovery = format!("{base}/{DISCOVERY_DIR}");
    assert_eq!(
        outsider.set_data(&leader, b"{}", None).await.err(),
        Some(zk::Error::NoAuth),
        "set the leader"
    );
    assert_eq!(
        outsider.delete(&leader, None).await.err(),
        Some(zk::Error::NoAuth),
        "delete the leader"
    );
    assert_eq!(
        outsider.set_data(&ledgers, b"{}", None).await.err(),
        Some(zk::Error::NoAuth),
        "rewrite the ledger list"
    );
    assert_eq!(
        outsider
            .create(&format!("{discovery}/brokers-fake"), b"{}", &open)
            .await
            .err(),
        Some(zk::Error::NoAuth),
        "register a fake broker"
    );
    assert_eq!(
        outsider
            .create(&format!("{base}/other"), b"", &open)
            .await
            .err(),
        Some(zk::Error::NoAuth),
        "create under the base path"
    );
    assert_eq!(
        outsider
            .set_acl(base, zk::Acls::anyone_all().as_ref(), None)
            .await
            .err(),
        Some(zk::Error::NoAuth),
        "reopen the base path"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_client_cannot_modify_a_protected_cluster() {
    let server = ZkServer::start().await.expect("start ZooKeeper");
    let base = "/protected";
    let broker = Coordinator::connect(&config(&server, base, Some("brokers:s3cret")))
        .await
        .unwrap();
    let leadership = broker.elect(&me("b1")).await.unwrap();
    let _registration = broker.register(&me("b1")).await.unwrap();
    assert!(leadership.is_held());

    // Without credentials: the leader can be read (clients and workers find it this way)...
    let anonymous = zk::Client::connect(&server.connect_string()).await.unwrap();
    let (data, _) = anonymous
        .get_data(&format!("{base}/{LEADER_NODE}"))
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&data).contains("b1"));
    // ...but nothing can be changed.
    assert_cannot_modify(&anonymous, base).await;

    // Nor with other digest credentials.
    let stranger = zk::Client::connector()
        .with_auth("digest", b"brokers:wrong")
        .connect(&server.connect_string())
        .await
        .unwrap();
    assert_cannot_modify(&stranger, base).await;

    // A second broker with the same credentials joins and may change the list.
    let second = Coordinator::connect(&config(&server, base, Some("brokers:s3cret")))
        .await
        .unwrap();
    let ledgers = second.ledgers().await.unwrap();
    second
        .set_ledgers(&ledgers.info, ledgers.version)
        .await
        .unwrap();

    // A broker with wrong credentials cannot take the cluster's znodes over.
    let error = Coordinator::connect(&config(&server, base, Some("brokers:wrong")))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("digest credentials"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn znodes_made_before_credentials_are_protected_at_the_next_start() {
    let server = ZkServer::start().await.expect("start ZooKeeper");
    let base = "/upgraded";
    // A cluster started without credentials: its znodes are open.
    let open = Coordinator::connect(&config(&server, base, None))
        .await
        .unwrap();
    let anonymous = zk::Client::connect(&server.connect_string()).await.unwrap();
    let ledgers = open.ledgers().await.unwrap();
    anonymous
        .set_data(
            &format!("{base}/{LEDGERS_NODE}"),
            &ledgers.info.to_json(),
            None,
        )
        .await
        .expect("an open cluster is open to anyone");
    drop(open);
    // Restarted with credentials, the persistent znodes are closed to outsiders.
    let broker = Coordinator::connect(&config(&server, base, Some("brokers:s3cret")))
        .await
        .unwrap();
    let _leadership = broker.elect(&me("b1")).await.unwrap();
    assert_cannot_modify(&anonymous, base).await;
}

#[test]
fn digest_credentials_are_checked_and_never_printed() {
    assert!(ZkDigest::parse("nocolon").is_err());
    assert!(ZkDigest::parse(":pw").is_err());
    assert!(ZkDigest::parse("user:").is_err());
    let d = ZkDigest::parse("user:pa:ss\n").unwrap();
    assert_eq!(d.user(), "user");
    assert!(!format!("{d:?}").contains("pa:ss"));
}
