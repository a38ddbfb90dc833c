//! Failover seen from the outside, against real ZooKeeper and bookies: a client with ZooKeeper
//! discovery goes on submitting through a leader change without an error; a worker that runs a
//! task while its leader stops delivers the result to the promoted leader; the task of a worker
//! that died with it is failed by the new leader once the worker is declared dead.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bookkeeper_client::ClientConfig;
use majordodo_broker::http::{self, HttpConfig, UserConfig, UserRole};
use majordodo_broker::replica::ClusterSettings;
use majordodo_broker::worker_listener::{self, ListenerConfig};
use majordodo_broker::{Broker, BrokerConfig, BrokerHandle, Role, SystemClock};
use majordodo_client::retry::RetryPolicy;
use majordodo_client::{Auth, Client, ZkDiscovery};
use majordodo_cluster::{BkLogConfig, CoordConfig};
use majordodo_core::{DefaultGroupMapper, LeaderConfig, TaskId, TaskStatus};
use majordodo_log::SnapshotStore;
use majordodo_proto::cluster::BrokerInfo;
use majordodo_proto::http::TaskSubmission;
use majordodo_proto::worker::{Capacity, SharedSecret};
use majordodo_testkit::BkCluster;
use majordodo_worker::{
    BrokerLocator, Executors, LocateFuture, TaskFailure, WorkerConfig, executor_fn,
};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(40);
const SECRET: &str = "failover-secret";
const TOKEN: &str = "failover-admin-token";

struct Node {
    broker: Option<Broker>,
    handle: BrokerHandle,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

async fn start(cluster: &BkCluster, base: &str, id: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let snapshots = Arc::new(SnapshotStore::open(dir.path().join("snapshots")).unwrap());
    let workers = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let worker_addr: SocketAddr = workers.local_addr().unwrap();
    let http_socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_url = format!("http://{}/majordodo", http_socket.local_addr().unwrap());
    let mut coord = CoordConfig::new(cluster.zk_connect_string());
    coord.base_path = base.into();
    coord.session_timeout = Duration::from_secs(4);
    let mut log = BkLogConfig::new(3, 2, 2);
    log.broker_id = id.into();
    let stop = CancellationToken::new();
    let booting = Broker::launch_replicated(
        BrokerConfig {
            broker_id: id.into(),
            leader: LeaderConfig {
                max_worker_idle: 3_000,
                ..LeaderConfig::default()
            },
            ..BrokerConfig::default()
        },
        ClusterSettings {
            coord,
            bookkeeper: ClientConfig::new(cluster.zk_connect_string())
                .with_ledgers_root(cluster.ledgers_root()),
            log,
            me: BrokerInfo::new("127.0.0.1", worker_addr.port(), &api_url, id),
            peer_token: None,
            publish_interval: Duration::from_millis(200),
        },
        Some(snapshots),
        Arc::new(DefaultGroupMapper),
        Arc::new(SystemClock),
        stop.clone().cancelled_owned(),
    );
    let mut tasks = Vec::new();
    let mut lc = ListenerConfig::new(id, SharedSecret::new(SECRET));
    lc.max_worker_idle_time = Duration::from_secs(2);
    lc.keepalive_interval = Duration::from_millis(500);
    let events = booting.worker_events();
    let s = stop.clone();
    tasks.push(tokio::spawn(async move {
        let _ = worker_listener::run(workers, lc, events, s.cancelled_owned()).await;
    }));
    let handle = booting.handle();
    let settings = HttpConfig {
        users: vec![UserConfig {
            name: "admin".into(),
            role: UserRole::Admin,
            password_hash: None,
            token_sha256: Some(http::auth::token_digest(TOKEN)),
        }],
        ..HttpConfig::default()
    }
    .validate()
    .unwrap();
    let s = stop.clone();
    tasks.push(tokio::spawn(async move {
        let _ = http::serve(http_socket, handle, settings, s.cancelled_owned()).await;
    }));
    let broker = booting.recovered().await.expect("boots");
    Node {
        handle: broker.handle(),
        broker: Some(broker),
        stop,
        tasks,
        _dir: dir,
    }
}

impl Node {
    async fn wait_role(&self, role: Role) {
        let deadline = Instant::now() + WAIT;
        while self.handle.query(|v| v.role).await.ok() != Some(role) {
            assert!(Instant::now() < deadline, "not {role:?} within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        self.stop.cancel();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        if let Some(b) = self.broker.take() {
            let _ = b.wait().await;
        }
    }
}

/// The leader's worker port, read from ZooKeeper before every connection attempt.
#[derive(Debug)]
struct ZkLocator(ZkDiscovery);

impl BrokerLocator for ZkLocator {
    fn locate(&self) -> LocateFuture<'_> {
        Box::pin(async move {
            Ok(self
                .0
                .leader()
                .await
                .map_err(|e| e.to_string())?
                .worker_address())
        })
    }

    fn describe(&self) -> String {
        "the leader in ZooKeeper".into()
    }
}

fn discovery(cluster: &BkCluster, base: &str) -> ZkDiscovery {
    ZkDiscovery::new(cluster.zk_connect_string(), base).unwrap()
}

/// A worker finding its broker through ZooKeeper, whose `gated` executor waits for a permit.
fn spawn_worker(
    cluster: &BkCluster,
    base: &str,
    id: &str,
    gate: Arc<Semaphore>,
) -> (JoinHandle<()>, CancellationToken) {
    let mut c = WorkerConfig::new("unused:1", SharedSecret::new(SECRET));
    c.broker_locator = Some(Arc::new(ZkLocator(discovery(cluster, base))));
    c.worker_id = id.into();
    c.capacity = Capacity {
        max_threads: 4,
        groups: vec![0],
        ..Capacity::default()
    };
    c.keepalive_interval = Duration::from_millis(500);
    c.reconnect_backoff.initial = Duration::from_millis(20);
    c.reconnect_backoff.max = Duration::from_millis(200);
    c.shutdown_grace = Duration::from_millis(100);
    let executors = Executors::new().with(
        "gated",
        executor_fn(move |t| {
            let gate = gate.clone();
            async move {
                let _permit = gate.acquire().await.expect("gate open");
                Ok::<_, TaskFailure>(format!("result of {}", t.data))
            }
        }),
    );
    let stop = CancellationToken::new();
    let s = stop.clone();
    let join = tokio::spawn(async move {
        let _ = majordodo_worker::run(c, executors, s.cancelled_owned()).await;
    });
    (join, stop)
}

fn client(cluster: &BkCluster, base: &str) -> Client {
    Client::discover(discovery(cluster, base))
        .auth(Auth::Bearer(TOKEN.into()))
        .retry(RetryPolicy::for_at_most(WAIT))
        .build()
        .unwrap()
}

fn gated(data: &str) -> TaskSubmission {
    TaskSubmission {
        max_attempts: 1,
        ..TaskSubmission::new("gated", "u", data)
    }
}

async fn wait_status(handle: &BrokerHandle, id: u64, status: TaskStatus) -> Option<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = handle
            .query(move |v| {
                v.state
                    .task(TaskId(id))
                    .map(|t| (t.status, t.result.clone()))
            })
            .await
            .ok()
            .flatten();
        if let Some((s, result)) = &got
            && *s == status
        {
            return result.as_deref().map(str::to_owned);
        }
        assert!(
            Instant::now() < deadline,
            "task {id} never {status:?}: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The client keeps submitting across the failover and every submission it got an id for
/// exists exactly once; the worker's running task reports to the promoted leader.
async fn client_and_worker_follow_the_new_leader(cluster: &BkCluster) {
    let base = "/follow";
    let a = start(cluster, base, "a").await;
    a.wait_role(Role::Leader).await;
    let b = start(cluster, base, "b").await;
    b.wait_role(Role::Follower).await;
    let gate = Arc::new(Semaphore::new(0));
    let (worker, worker_stop) = spawn_worker(cluster, base, "w1", gate.clone());
    let c = client(cluster, base);
    let running = c
        .submit(&gated("running"))
        .await
        .unwrap()
        .task_id()
        .unwrap();
    wait_status(&a.handle, running, TaskStatus::Running).await;

    let mut ids = Vec::new();
    let submitter = {
        let c = client(cluster, base);
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..40 {
                let task = TaskSubmission::new("other", "u", format!("s{i}"));
                ids.push(
                    c.submit(&task)
                        .await
                        .expect("the client hides the failover"),
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            ids
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.stop().await;
    b.wait_role(Role::Leader).await;
    ids.extend(
        submitter
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.task_id().unwrap()),
    );
    let unique: std::collections::BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "every submission created one task");
    let present = b
        .handle
        .query(move |v| {
            unique
                .iter()
                .filter(|id| v.state.task(TaskId(**id)).is_some())
                .count()
        })
        .await
        .unwrap();
    assert_eq!(
        present,
        ids.len(),
        "every acknowledged task is on the new leader"
    );

    // The task kept running on the worker across the failover; its result goes to b.
    gate.add_permits(10);
    let result = wait_status(&b.handle, running, TaskStatus::Finished).await;
    assert_eq!(result.as_deref(), Some("result of running"));
    worker_stop.cancel();
    let _ = worker.await;
    b.stop().await;
}

/// A worker dies with its task while the leader changes: the new leader declares it dead after
/// the idle time and fails its task (maxattempts 1 ends it in error).
async fn a_dead_workers_task_fails_on_the_promoted_leader(cluster: &BkCluster) {
    let base = "/dead-worker";
    let a = start(cluster, base, "a").await;
    a.wait_role(Role::Leader).await;
    let b = start(cluster, base, "b").await;
    b.wait_role(Role::Follower).await;
    let gate = Arc::new(Semaphore::new(0));
    let (worker, _worker_stop) = spawn_worker(cluster, base, "w2", gate);
    let c = client(cluster, base);
    let id = c.submit(&gated("doomed")).await.unwrap().task_id().unwrap();
    wait_status(&a.handle, id, TaskStatus::Running).await;
    // Dies: its connection drops with no report.
    worker.abort();
    let _ = worker.await;
    a.stop().await;
    b.wait_role(Role::Leader).await;
    let result = wait_status(&b.handle, id, TaskStatus::Error).await;
    assert_eq!(result.as_deref(), Some("worker w2 died"));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_as_clients_and_workers_see_it() {
    // Goal: see the module documentation.
    let cluster = BkCluster::start(3).await.expect("start a 3-bookie cluster");
    client_and_worker_follow_the_new_leader(&cluster).await;
    a_dead_workers_task_fails_on_the_promoted_leader(&cluster).await;
}
