//! Replicated brokers against real ZooKeeper and bookies: election, replication to
//! followers, writes refused on followers with the leader's URL, and failover with task ids
//! that keep increasing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bookkeeper_client::ClientConfig;
use majordodo_broker::replica::ClusterSettings;
use majordodo_broker::{Broker, BrokerConfig, BrokerError, BrokerHandle, Role, SystemClock};
use majordodo_cluster::{BkLogConfig, CoordConfig};
use majordodo_core::leader::{SubmitOutcome, SubmitRequest};
use majordodo_core::{DefaultGroupMapper, TaskId};
use majordodo_log::SnapshotStore;
use majordodo_proto::cluster::BrokerInfo;
use majordodo_testkit::BkCluster;
use tokio_util::sync::CancellationToken;

/// Longest a replication step may take on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(30);

struct Node {
    broker: Option<Broker>,
    handle: BrokerHandle,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

fn settings(cluster: &BkCluster, id: &str) -> ClusterSettings {
    let mut coord = CoordConfig::new(cluster.zk_connect_string());
    coord.session_timeout = Duration::from_secs(4);
    let mut log = BkLogConfig::new(3, 2, 2);
    log.password = b"replication-test".to_vec();
    log.broker_id = id.into();
    ClusterSettings {
        coord,
        bookkeeper: ClientConfig::new(cluster.zk_connect_string())
            .with_ledgers_root(cluster.ledgers_root()),
        log,
        me: BrokerInfo::new(
            "127.0.0.1",
            7000,
            &format!("http://127.0.0.1:1/majordodo/{id}"),
            id,
        ),
        peer_token: None,
        publish_interval: Duration::from_millis(200),
    }
}

async fn start(cluster: &BkCluster, id: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let snapshots = Arc::new(SnapshotStore::open(dir.path().join("snapshots")).unwrap());
    let stop = CancellationToken::new();
    let broker = Broker::launch_replicated(
        BrokerConfig {
            broker_id: id.into(),
            ..BrokerConfig::default()
        },
        settings(cluster, id),
        Some(snapshots),
        Arc::new(DefaultGroupMapper),
        Arc::new(SystemClock),
        stop.clone().cancelled_owned(),
    )
    .recovered()
    .await
    .expect("boots");
    Node {
        handle: broker.handle(),
        broker: Some(broker),
        stop,
        _dir: dir,
    }
}

impl Node {
    async fn role(&self) -> Option<Role> {
        self.handle.query(|v| v.role).await.ok()
    }

    async fn wait_role(&self, role: Role) {
        let deadline = Instant::now() + WAIT;
        while self.role().await != Some(role) {
            assert!(Instant::now() < deadline, "not {role:?} within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(b) = self.broker.take() {
            b.wait().await.expect("a clean stop");
        }
    }
}

fn task(data: &str) -> SubmitRequest {
    SubmitRequest {
        task_type: "t".into(),
        user_id: "u".into(),
        data: data.into(),
        max_attempts: 1,
        ..SubmitRequest::default()
    }
}

async fn submit(handle: &BrokerHandle, data: &str) -> TaskId {
    match handle
        .submit(vec![task(data)])
        .await
        .expect("submit")
        .remove(0)
    {
        SubmitOutcome::Accepted(id) => id,
        other => panic!("{other:?}"),
    }
}

async fn wait_task(handle: &BrokerHandle, id: TaskId) {
    let deadline = Instant::now() + WAIT;
    while !handle
        .query(move |v| v.state.task(id).is_some())
        .await
        .unwrap_or(false)
    {
        assert!(
            Instant::now() < deadline,
            "task {id} not replicated within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_replicates_refuses_writes_and_takes_over_with_higher_ids() {
    // Goal: the first broker leads, the second follows and sees every task, a write on the
    // follower is refused with the leader's URL; when the leader stops, the follower takes the
    // log over, keeps every task, and its ids follow the old leader's.
    let cluster = BkCluster::start(3).await.expect("start a 3-bookie cluster");
    let a = start(&cluster, "a").await;
    a.wait_role(Role::Leader).await;
    let b = start(&cluster, "b").await;
    b.wait_role(Role::Follower).await;

    let first = submit(&a.handle, "one").await;
    let second = submit(&a.handle, "two").await;
    wait_task(&b.handle, second).await;
    let err = b.handle.submit(vec![task("refused")]).await.unwrap_err();
    assert_eq!(
        err,
        BrokerError::NotLeader(Some("http://127.0.0.1:1/majordodo/a".into()))
    );

    a.stop().await;
    b.wait_role(Role::Leader).await;
    let third = submit(&b.handle, "three").await;
    assert!(third > second, "{third} after {second}");
    let kept = b
        .handle
        .query(move |v| {
            (
                v.state.task(first).is_some(),
                v.state.task(second).is_some(),
            )
        })
        .await
        .unwrap();
    assert_eq!(kept, (true, true));
    b.stop().await;
}
