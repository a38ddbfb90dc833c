//! Replicated brokers against real ZooKeeper and bookies, porting the original's replication
//! scenarios: election, replication of every kind of state, writes refused on followers with
//! the leader's URL, failover with increasing task ids and timers that resume, a broker booting
//! from a snapshot downloaded from the leader once old ledgers are dropped, a leader znode
//! overwritten or deleted, a ledger fenced from outside, a revoked worker credential still
//! refused by the new leader, and a bookie lost under a leader.
//!
//! The cases share one 3-bookie cluster (each under its own base path) and run one after the
//! other; the bookie-failure case has a cluster of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bookkeeper_client::{BookKeeper, ClientConfig, OpenMode};
use majordodo_broker::http::{self, HttpConfig, UserConfig, UserRole};
use majordodo_broker::replica::ClusterSettings;
use majordodo_broker::worker_listener::{self, ListenerConfig};
use majordodo_broker::{
    BootError, Broker, BrokerConfig, BrokerError, BrokerHandle, DispatcherConfig, Role, SystemClock,
};
use majordodo_cluster::{BkLogConfig, CoordConfig, Coordinator};
use majordodo_core::leader::{SubmitOutcome, SubmitRequest};
use majordodo_core::{DefaultGroupMapper, LeaderConfig, TaskId, TaskStatus};
use majordodo_log::SnapshotStore;
use majordodo_proto::cluster::BrokerInfo;
use majordodo_proto::worker::{Capacity, SharedSecret};
use majordodo_testkit::BkCluster;
use majordodo_worker::{Executors, TaskFailure, WorkerConfig, executor_fn};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Longest a replication step may take on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(40);
const SECRET: &str = "replication-secret";
const TOKEN: &str = "replication-admin-token";
/// The admin's password, for the web dashboard.
const UI_PASSWORD: &str = "replication admin password";
const PASSWORD: &[u8] = b"replication-ledgers";

/// Where a case's brokers meet: a base path of their own in the shared cluster.
struct Scope<'a> {
    cluster: &'a BkCluster,
    base: String,
}

/// How a node of a case is started.
#[derive(Clone)]
struct NodeOptions {
    http: bool,
    peer_token: bool,
    roll_size: Option<u64>,
    quorums: (usize, usize, usize),
    checkpoint_interval: Option<Duration>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            http: false,
            peer_token: false,
            roll_size: None,
            quorums: (3, 2, 2),
            checkpoint_interval: None,
        }
    }
}

struct Node {
    id: String,
    broker: Option<Broker>,
    handle: BrokerHandle,
    stop: CancellationToken,
    worker_addr: SocketAddr,
    api_url: String,
    tasks: Vec<JoinHandle<()>>,
    dir: tempfile::TempDir,
}

fn settings(scope: &Scope<'_>, id: &str, me: BrokerInfo, o: &NodeOptions) -> ClusterSettings {
    let mut coord = CoordConfig::new(scope.cluster.zk_connect_string());
    coord.base_path = scope.base.clone();
    coord.session_timeout = Duration::from_secs(4);
    let (e, w, a) = o.quorums;
    let mut log = BkLogConfig::new(e, w, a);
    log.password = PASSWORD.to_vec();
    log.broker_id = id.into();
    log.retention = Duration::ZERO;
    if let Some(size) = o.roll_size {
        log.roll_size = size;
    }
    ClusterSettings {
        coord,
        bookkeeper: ClientConfig::new(scope.cluster.zk_connect_string())
            .with_ledgers_root(scope.cluster.ledgers_root()),
        log,
        me,
        peer_token: o.peer_token.then(|| TOKEN.to_owned()),
        publish_interval: Duration::from_millis(200),
    }
}

fn admin_users() -> HttpConfig {
    let mut rng = StdRng::seed_from_u64(3);
    HttpConfig {
        users: vec![UserConfig {
            name: "admin".into(),
            role: UserRole::Admin,
            password_hash: Some(http::auth::hash_password_with(UI_PASSWORD, 1_000, &mut rng)),
            token_sha256: Some(http::auth::token_digest(TOKEN)),
        }],
        ..HttpConfig::default()
    }
}

/// Starts a broker of `scope` with its worker port and, if asked, its HTTP API.
async fn try_start(
    scope: &Scope<'_>,
    id: &str,
    o: &NodeOptions,
    dir: Option<tempfile::TempDir>,
) -> Result<Node, BootError> {
    let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
    let snapshots = Arc::new(SnapshotStore::open(dir.path().join("snapshots")).unwrap());
    let stop = CancellationToken::new();
    let workers = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let worker_addr = workers.local_addr().unwrap();
    let http_socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_url = format!("http://{}/majordodo", http_socket.local_addr().unwrap());
    let me = BrokerInfo::new("127.0.0.1", worker_addr.port(), &api_url, id);
    let booting = Broker::launch_replicated(
        BrokerConfig {
            broker_id: id.into(),
            leader: LeaderConfig {
                max_worker_idle: 3_000,
                ..LeaderConfig::default()
            },
            dispatcher: DispatcherConfig {
                checkpoint_interval: o.checkpoint_interval,
                ..DispatcherConfig::default()
            },
            ..BrokerConfig::default()
        },
        settings(scope, id, me, o),
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
    let listener_stop = stop.clone();
    tasks.push(tokio::spawn(async move {
        worker_listener::run(workers, lc, events, listener_stop.cancelled_owned())
            .await
            .expect("listener config is valid");
    }));
    if o.http {
        let handle = booting.handle();
        let settings = admin_users().validate().expect("valid http config");
        let http_stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let _ = http::serve(http_socket, handle, settings, http_stop.cancelled_owned()).await;
        }));
    }
    let broker = match booting.recovered().await {
        Ok(b) => b,
        Err(e) => {
            stop.cancel();
            for t in tasks {
                let _ = t.await;
            }
            return Err(e);
        }
    };
    Ok(Node {
        id: id.into(),
        handle: broker.handle(),
        broker: Some(broker),
        stop,
        worker_addr,
        api_url,
        tasks,
        dir,
    })
}

async fn start(scope: &Scope<'_>, id: &str, o: &NodeOptions) -> Node {
    try_start(scope, id, o, None).await.expect("boots")
}

impl Node {
    async fn role(&self) -> Option<Role> {
        self.handle.query(|v| v.role).await.ok()
    }

    async fn wait_role(&self, role: Role) {
        let deadline = Instant::now() + WAIT;
        while self.role().await != Some(role) {
            assert!(
                Instant::now() < deadline,
                "{} not {role:?} within {WAIT:?}",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn last_lsn(&self) -> u64 {
        self.handle.query(|v| v.state.last_lsn()).await.unwrap_or(0)
    }

    /// Stops the broker; returns its directory (snapshots) for a restart.
    async fn stop(mut self) -> tempfile::TempDir {
        self.stop.cancel();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        if let Some(b) = self.broker.take() {
            b.wait().await.expect("a clean stop");
        }
        self.dir
    }
}

fn task(data: &str) -> SubmitRequest {
    SubmitRequest {
        task_type: "ok".into(),
        user_id: "u".into(),
        data: data.into(),
        max_attempts: 1,
        ..SubmitRequest::default()
    }
}

async fn submit_one(handle: &BrokerHandle, req: SubmitRequest) -> TaskId {
    match handle.submit(vec![req]).await.expect("submit").remove(0) {
        SubmitOutcome::Accepted(id) => id,
        other => panic!("{other:?}"),
    }
}

async fn submit(handle: &BrokerHandle, data: &str) -> TaskId {
    submit_one(handle, task(data)).await
}

/// Polls `f` on `handle`'s state until it holds, within [`WAIT`].
async fn wait_state<F>(handle: &BrokerHandle, what: &str, f: F)
where
    F: Fn(&majordodo_core::BrokerState) -> bool + Clone + Send + 'static,
{
    let deadline = Instant::now() + WAIT;
    loop {
        let f = f.clone();
        if handle.query(move |v| f(v.state)).await.unwrap_or(false) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A worker agent with executors `ok` (answers at once), `fail` (fails), `block` (runs until
/// the worker stops).
fn spawn_worker(addr: SocketAddr, id: &str) -> (JoinHandle<()>, CancellationToken) {
    let mut c = WorkerConfig::new(addr.to_string(), SharedSecret::new(SECRET));
    c.worker_id = id.into();
    c.capacity = Capacity {
        max_threads: 8,
        max_threads_by_task_type: ["ok", "fail", "block"]
            .iter()
            .map(|t| ((*t).to_owned(), 8))
            .collect(),
        groups: vec![0],
        ..Capacity::default()
    };
    c.keepalive_interval = Duration::from_millis(500);
    c.reconnect_backoff.initial = Duration::from_millis(20);
    c.reconnect_backoff.max = Duration::from_millis(200);
    c.shutdown_grace = Duration::from_millis(100);
    let executors = Executors::new()
        .with(
            "ok",
            executor_fn(|t| async move { Ok::<_, TaskFailure>(format!("done {}", t.data)) }),
        )
        .with(
            "fail",
            executor_fn(|_| async move { Err::<String, _>(TaskFailure::new("boom")) }),
        )
        .with(
            "block",
            executor_fn(|_| async move {
                std::future::pending::<()>().await;
                Ok::<_, TaskFailure>(String::new())
            }),
        );
    let stop = CancellationToken::new();
    let s = stop.clone();
    let join = tokio::spawn(async move {
        let _ = majordodo_worker::run(c, executors, s.cancelled_owned()).await;
    });
    (join, stop)
}

/// The state's whole snapshot encoding: equal encodings are equal states.
async fn encoding(handle: &BrokerHandle) -> Vec<u8> {
    handle
        .query(|v| majordodo_proto::snapshot::encode_snapshot(&v.state.snapshot_source()))
        .await
        .unwrap()
}

async fn bk(cluster: &BkCluster) -> BookKeeper {
    BookKeeper::connect(
        ClientConfig::new(cluster.zk_connect_string()).with_ledgers_root(cluster.ledgers_root()),
    )
    .await
    .unwrap()
}

async fn coord(scope: &Scope<'_>) -> Coordinator {
    let mut c = CoordConfig::new(scope.cluster.zk_connect_string());
    c.base_path = scope.base.clone();
    Coordinator::connect(&c).await.unwrap()
}

// ----- cases -----

/// The first broker leads, the second follows and sees every task; a write on the follower is
/// refused with the leader's URL; when the leader stops, the follower takes the log over,
/// keeps every task, and its ids follow the old leader's; a third broker started later
/// catches up from the ledgers.
async fn follower_replicates_refuses_writes_and_takes_over_with_higher_ids(scope: Scope<'_>) {
    let o = NodeOptions::default();
    let a = start(&scope, "a", &o).await;
    a.wait_role(Role::Leader).await;
    let b = start(&scope, "b", &o).await;
    b.wait_role(Role::Follower).await;
    let first = submit(&a.handle, "one").await;
    let second = submit(&a.handle, "two").await;
    wait_state(&b.handle, "replication", move |s| s.task(second).is_some()).await;
    let err = b.handle.submit(vec![task("refused")]).await.unwrap_err();
    assert_eq!(err, BrokerError::NotLeader(Some(a.api_url.clone())));

    a.stop().await;
    b.wait_role(Role::Leader).await;
    let third = submit(&b.handle, "three").await;
    assert!(third > second, "{third} after {second}");
    let c = start(&scope, "c", &o).await;
    c.wait_role(Role::Follower).await;
    wait_state(&c.handle, "catch-up", move |s| {
        [first, second, third]
            .iter()
            .all(|id| s.task(*id).is_some())
    })
    .await;
    c.stop().await;
    b.stop().await;
}

/// GETs `path` of a node's HTTP API from loopback, without credentials.
async fn ops_get(node: &Node, path: &str) -> (u16, String) {
    let base = node.api_url.trim_end_matches("/majordodo");
    let res = tokio::time::timeout(WAIT, reqwest::get(format!("{base}{path}")))
        .await
        .expect("answered in time")
        .expect("the HTTP API answers");
    let status = res.status().as_u16();
    (status, res.text().await.unwrap())
}

/// Logs in to a node's web dashboard as the admin and GETs `path` with the session; the page.
async fn ui_get(node: &Node, path: &str) -> String {
    let base = node.api_url.trim_end_matches("/majordodo");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(WAIT)
        .build()
        .unwrap();
    let login = client
        .post(format!("{base}/ui/login"))
        .form(&[("name", "admin"), ("password", UI_PASSWORD)])
        .send()
        .await
        .expect("the dashboard answers");
    assert_eq!(login.status().as_u16(), 303, "the admin logs in");
    let cookie = login
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|c| c.to_str().ok())
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let page = client
        .get(format!("{base}{path}"))
        .header(reqwest::header::COOKIE, cookie)
        .send()
        .await
        .expect("the dashboard answers");
    assert_eq!(page.status().as_u16(), 200);
    page.text().await.unwrap()
}

/// The dashboard's Cluster page lists every ledger of the coordinator's list, oldest first, the
/// last one current, on the leader and on a follower.
async fn the_cluster_page_lists_the_ledgers(scope: &Scope<'_>, nodes: &[&Node]) {
    let coord = coord(scope).await;
    let listed = coord.ledgers().await.expect("a ledger list").info;
    assert!(
        !listed.active_ledgers.is_empty(),
        "the leader opened a ledger"
    );
    let expected: Vec<Vec<String>> = listed
        .ledgers()
        .enumerate()
        .map(|(i, (id, _, first))| {
            let state = if i + 1 == listed.active_ledgers.len() {
                "current"
            } else {
                "closed"
            };
            vec![id.to_string(), state.to_owned(), first.to_string()]
        })
        .collect();
    for node in nodes {
        let deadline = Instant::now() + WAIT;
        loop {
            let page = ui_get(node, "/ui/cluster").await;
            if ledger_rows(&page) == expected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster page never listed {:?}: {page}",
                listed.active_ledgers
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The first three cells (ledger, state, first position) of each row of a page's ledgers table.
fn ledger_rows(page: &str) -> Vec<Vec<String>> {
    let Some((_, table)) = page.split_once("<table id=\"ledgers\">") else {
        return Vec::new();
    };
    let body = table.split_once("</tbody>").map_or(table, |(b, _)| b);
    body.split("<tr>")
        .skip(2) // before the head row, the head row
        .map(|row| {
            row.split("<td>")
                .skip(1)
                .take(3)
                .map(|cell| cell.split("</td>").next().unwrap_or("").to_owned())
                .collect()
        })
        .collect()
}

/// The value of the unlabelled sample `name` in a Prometheus text scrape.
fn sample(scrape: &str, name: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// `/ready` is 200 on the leader and on a follower that caught up (its lag within
/// `http.ready_max_lag`), and `/metrics` show each broker's role, the ledger written or tailed
/// and the replication lag, 0 once the follower applied what the leader published.
async fn followers_are_ready_once_caught_up_and_export_their_lag(scope: Scope<'_>) {
    let o = NodeOptions {
        http: true,
        ..NodeOptions::default()
    };
    let a = start(&scope, "a", &o).await;
    a.wait_role(Role::Leader).await;
    let b = start(&scope, "b", &o).await;
    b.wait_role(Role::Follower).await;
    for i in 0..20 {
        submit(&a.handle, &format!("seen by the follower {i}")).await;
    }
    let leader_lsn = a.last_lsn().await;
    let (status, body) = ops_get(&a, "/ready").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"role\":\"LEADER\""), "{body}");
    // Wait until the follower knows the leader's position after the writes and applied it.
    let deadline = Instant::now() + WAIT;
    loop {
        let published = b
            .handle
            .query(|v| {
                let c = v.cluster?;
                let leader = c.leader_id.as_deref()?;
                c.brokers.iter().find(|(id, _, _)| id == leader)?.2
            })
            .await
            .ok()
            .flatten();
        let (status, scrape) = ops_get(&b, "/metrics").await;
        assert_eq!(status, 200, "{scrape}");
        let lag = sample(&scrape, "majordodo_replication_lag_entries");
        let applied = sample(&scrape, "majordodo_log_applied_lsn").expect("a position");
        if published.is_some_and(|p| p >= leader_lsn)
            && lag == Some(0.0)
            && applied >= leader_lsn as f64
        {
            assert!(
                scrape.contains("majordodo_broker_role{role=\"follower\"} 1"),
                "{scrape}"
            );
            assert!(
                sample(&scrape, "majordodo_cluster_current_ledger").is_some(),
                "{scrape}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "follower never caught up: published {published:?}, lag {lag:?}, applied {applied}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = ops_get(&b, "/ready").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"role\":\"FOLLOWER\""), "{body}");
    assert!(body.contains("\"lag\":0"), "{body}");
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, scrape) = ops_get(&a, "/metrics").await;
        assert!(
            scrape.contains("majordodo_broker_role{role=\"leader\"} 1"),
            "{scrape}"
        );
        assert_eq!(
            sample(&scrape, "majordodo_replication_lag_entries"),
            Some(0.0)
        );
        if sample(&scrape, "majordodo_cluster_current_ledger").is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no current ledger on the leader: {scrape}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    the_cluster_page_lists_the_ledgers(&scope, &[&a, &b]).await;
    b.stop().await;
    a.stop().await;
}

/// Worker credentials reach the follower; once it leads, it refuses the revoked one (to a real
/// worker, which stops saying why) and admits the active one, which runs a task.
async fn a_revoked_worker_credential_stays_refused_after_failover(scope: Scope<'_>) {
    use majordodo_broker::AdminChange;
    use majordodo_proto::worker::{CredentialFile, credential_verifier};
    let o = NodeOptions::default();
    let a = start(&scope, "a", &o).await;
    a.wait_role(Role::Leader).await;
    let b = start(&scope, "b", &o).await;
    b.wait_role(Role::Follower).await;
    let credential = |id: &str, byte: u8| CredentialFile {
        credential_id: id.into(),
        worker_id: "w1".into(),
        secret: [byte; 32],
    };
    let (kept, revoked) = (credential("wc-kept", 1), credential("wc-revoked", 2));
    for c in [&kept, &revoked] {
        a.handle
            .admin(AdminChange::AddWorkerCredential {
                credential_id: c.credential_id.clone(),
                worker_id: c.worker_id.clone(),
                verifier: credential_verifier(&c.secret),
                comment: None,
            })
            .await
            .unwrap()
            .unwrap();
    }
    a.handle
        .admin(AdminChange::RevokeWorkerCredential {
            credential_id: revoked.credential_id.clone(),
        })
        .await
        .unwrap()
        .unwrap();
    wait_state(&b.handle, "the revocation replicated", |s| {
        s.credential("wc-revoked")
            .is_some_and(|c| c.revoked.is_some())
    })
    .await;
    a.stop().await;
    b.wait_role(Role::Leader).await;

    let config = |c: &CredentialFile| {
        let mut config = WorkerConfig::new(b.worker_addr.to_string(), SharedSecret::new(""));
        config.worker_id = c.worker_id.clone();
        config.credential = Some(c.clone());
        config.max_refused_time = Duration::ZERO;
        config
    };
    let refused = tokio::time::timeout(
        WAIT,
        majordodo_worker::run(
            config(&revoked),
            Executors::new(),
            std::future::pending::<()>(),
        ),
    )
    .await
    .expect("the refused worker stops")
    .unwrap_err()
    .to_string();
    assert!(
        refused.contains("credential wc-revoked is revoked"),
        "{refused}"
    );

    let stop = CancellationToken::new();
    let mut c = config(&kept);
    c.capacity = Capacity {
        max_threads: 2,
        max_threads_by_task_type: [("ok".to_owned(), 2)].into(),
        groups: vec![0],
        ..Capacity::default()
    };
    let executors = Executors::new().with(
        "ok",
        executor_fn(|t| async move { Ok::<_, TaskFailure>(format!("done {}", t.data)) }),
    );
    let s = stop.clone();
    let worker = tokio::spawn(async move {
        let _ = majordodo_worker::run(c, executors, s.cancelled_owned()).await;
    });
    let id = submit(&b.handle, "after failover").await;
    wait_state(&b.handle, "the task run by the kept credential", move |s| {
        s.task(id).is_some_and(|t| {
            t.status == TaskStatus::Finished && t.worker_id.as_deref() == Some("w1")
        })
    })
    .await;
    stop.cancel();
    let _ = worker.await;
    b.stop().await;
}

/// Tasks in every status (finished, error, running, waiting, delayed, holding a slot) and the
/// workers reach the follower, whose state ends exactly equal to the leader's.
async fn follower_state_equals_the_leaders_in_every_kind_of_state(scope: Scope<'_>) {
    let o = NodeOptions::default();
    let a = start(&scope, "a", &o).await;
    a.wait_role(Role::Leader).await;
    let b = start(&scope, "b", &o).await;
    b.wait_role(Role::Follower).await;
    let (worker, worker_stop) = spawn_worker(a.worker_addr, "w1");
    let done = submit(&a.handle, "finished").await;
    let failed = submit_one(
        &a.handle,
        SubmitRequest {
            task_type: "fail".into(),
            ..task("error")
        },
    )
    .await;
    let running = submit_one(
        &a.handle,
        SubmitRequest {
            task_type: "block".into(),
            slot: Some("nightly".into()),
            ..task("running")
        },
    )
    .await;
    let waiting = submit_one(
        &a.handle,
        SubmitRequest {
            task_type: "nobody-runs-this".into(),
            ..task("waiting")
        },
    )
    .await;
    let far = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 3_600_000;
    let delayed = submit_one(
        &a.handle,
        SubmitRequest {
            requested_start_time: far,
            slot: Some("later".into()),
            ..task("delayed")
        },
    )
    .await;
    wait_state(&a.handle, "every status", move |s| {
        let st = |id| s.task(id).map(|t| t.status);
        st(done) == Some(TaskStatus::Finished)
            && st(failed) == Some(TaskStatus::Error)
            && st(running) == Some(TaskStatus::Running)
            && st(waiting) == Some(TaskStatus::Waiting)
            && st(delayed) == Some(TaskStatus::Delayed)
    })
    .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (la, lb) = (a.last_lsn().await, b.last_lsn().await);
        if la == lb && encoding(&a.handle).await == encoding(&b.handle).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "follower at {lb}, leader at {la}: states differ"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let slot = b
        .handle
        .query(|v| v.state.slot_holder("nightly"))
        .await
        .unwrap();
    assert_eq!(slot, Some(running));
    worker_stop.cancel();
    let _ = worker.await;
    b.stop().await;
    a.stop().await;
}

/// A delayed task and its slot survive a failover: the new leader refuses the slot, and makes
/// the task waiting when its time comes (timers resume from the log's timestamps).
async fn delayed_tasks_and_slots_survive_promotion(scope: Scope<'_>) {
    let o = NodeOptions::default();
    let a = start(&scope, "a", &o).await;
    a.wait_role(Role::Leader).await;
    let b = start(&scope, "b", &o).await;
    b.wait_role(Role::Follower).await;
    let soon = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 4_000;
    let delayed = submit_one(
        &a.handle,
        SubmitRequest {
            task_type: "nobody-runs-this".into(),
            requested_start_time: soon,
            slot: Some("s1".into()),
            ..task("delayed")
        },
    )
    .await;
    wait_state(&b.handle, "the delayed task", move |s| {
        s.task(delayed).map(|t| t.status) == Some(TaskStatus::Delayed)
    })
    .await;
    a.stop().await;
    b.wait_role(Role::Leader).await;
    let refused = b
        .handle
        .submit(vec![SubmitRequest {
            slot: Some("s1".into()),
            ..task("same slot")
        }])
        .await
        .unwrap();
    assert_eq!(
        refused,
        vec![SubmitOutcome::NotCreated("slot s1 already assigned".into())]
    );
    wait_state(&b.handle, "the delayed task to start", move |s| {
        s.task(delayed).map(|t| t.status) == Some(TaskStatus::Waiting)
    })
    .await;
    b.stop().await;
}

/// With tiny ledgers and no retention, snapshots drop the old ledgers; a new broker without a
/// local snapshot then boots from one downloaded from the leader, and one without the token to
/// download is refused with a message saying what to do.
async fn a_new_broker_boots_from_the_leaders_snapshot_once_ledgers_are_dropped(scope: Scope<'_>) {
    let o = NodeOptions {
        http: true,
        roll_size: Some(512),
        ..NodeOptions::default()
    };
    let a = start(&scope, "a", &o).await;
    a.wait_role(Role::Leader).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(submit(&a.handle, &format!("task-{i}")).await);
    }
    let c = coord(&scope).await;
    let deadline = Instant::now() + WAIT;
    while c.ledgers().await.unwrap().info.has_full_history() {
        assert!(
            Instant::now() < deadline,
            "the first ledger was never dropped"
        );
        a.handle.checkpoint().await.expect("checkpoint");
        submit(&a.handle, "more").await;
    }
    let refused = try_start(&scope, "no-token", &NodeOptions::default(), None).await;
    match refused {
        Err(e @ BootError::NoUsableSnapshot { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("peer_token_file") && text.contains(&a.api_url),
                "{text}"
            );
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a broker without a usable snapshot booted"),
    }
    let b = start(
        &scope,
        "b",
        &NodeOptions {
            peer_token: true,
            ..NodeOptions::default()
        },
    )
    .await;
    b.wait_role(Role::Follower).await;
    let last = *ids.last().unwrap();
    wait_state(&b.handle, "the downloaded state", move |s| {
        ids.iter().all(|id| s.task(*id).is_some())
    })
    .await;
    assert!(b.last_lsn().await >= last.0);
    b.stop().await;
    a.stop().await;
}

/// Overwriting the leader znode makes the leader step down at once; deleting it (with a single
/// broker) is harmless; either way the cluster ends with a leader that accepts writes.
async fn leader_znode_overwritten_or_deleted(scope: Scope<'_>) {
    let a = start(&scope, "a", &NodeOptions::default()).await;
    a.wait_role(Role::Leader).await;
    submit(&a.handle, "before").await;
    let c = coord(&scope).await;
    let path = format!("{}/leader", scope.base);
    c.client().delete(&path, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        a.role().await,
        Some(Role::Leader),
        "a deleted znode is retaken"
    );
    submit(&a.handle, "after delete").await;

    let ledgers = c.ledgers().await.unwrap().info.active_ledgers.len();
    let intruder = BrokerInfo::new("10.0.0.9", 1, "http://10.0.0.9:1/majordodo", "intruder");
    c.client()
        .set_data(&path, &intruder.to_json(), None)
        .await
        .unwrap();
    // The leader steps down and resigns; alone, it is elected again and takes the log over
    // anew (a new ledger), then accepts writes.
    let deadline = Instant::now() + WAIT;
    while c.ledgers().await.unwrap().info.active_ledgers.len() == ledgers {
        assert!(
            Instant::now() < deadline,
            "the leader never took the log over again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.wait_role(Role::Leader).await;
    submit(&a.handle, "after overwrite").await;
    a.stop().await;
}

/// Fencing the leader's ledger from outside (recovery open) makes its next write fail; it
/// steps down, and a leader (the other broker, or itself again) takes the log over and
/// accepts writes, with every acknowledged task kept.
async fn an_externally_fenced_ledger_makes_the_leader_step_down(scope: Scope<'_>) {
    let o = NodeOptions::default();
    let a = start(&scope, "a", &o).await;
    a.wait_role(Role::Leader).await;
    let b = start(&scope, "b", &o).await;
    b.wait_role(Role::Follower).await;
    let kept = submit(&a.handle, "kept").await;
    let c = coord(&scope).await;
    let ledger = *c
        .ledgers()
        .await
        .unwrap()
        .info
        .active_ledgers
        .last()
        .unwrap();
    let client = bk(scope.cluster).await;
    client
        .open_ledger(ledger, PASSWORD, OpenMode::Recovery)
        .await
        .expect("fence the leader's ledger");
    // The next write (a submit, or the NOOP) fails as fenced.
    let _ = a.handle.submit(vec![task("during fencing")]).await;
    let deadline = Instant::now() + WAIT;
    let leader = loop {
        assert!(
            Instant::now() < deadline,
            "no broker leads after the fencing"
        );
        if a.role().await == Some(Role::Leader) && a.handle.submit(vec![task("x")]).await.is_ok() {
            break &a;
        }
        if b.role().await == Some(Role::Leader) && b.handle.submit(vec![task("x")]).await.is_ok() {
            break &b;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let new = submit(&leader.handle, "after").await;
    assert!(new > kept);
    wait_state(&leader.handle, "the kept task", move |s| {
        s.task(kept).is_some()
    })
    .await;
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_scenarios_on_one_cluster() {
    // Goal: see the module documentation; each case fails alone with its name.
    let cluster = BkCluster::start(3).await.expect("start a 3-bookie cluster");
    macro_rules! case {
        ($name:ident) => {{
            let started = Instant::now();
            let scope = Scope {
                cluster: &cluster,
                base: format!("/{}", stringify!($name)),
            };
            $name(scope).await;
            eprintln!("case {}: ok in {:?}", stringify!($name), started.elapsed());
        }};
    }
    case!(follower_replicates_refuses_writes_and_takes_over_with_higher_ids);
    case!(followers_are_ready_once_caught_up_and_export_their_lag);
    case!(follower_state_equals_the_leaders_in_every_kind_of_state);
    case!(delayed_tasks_and_slots_survive_promotion);
    case!(a_new_broker_boots_from_the_leaders_snapshot_once_ledgers_are_dropped);
    case!(leader_znode_overwritten_or_deleted);
    case!(an_externally_fenced_ledger_makes_the_leader_step_down);
    case!(a_revoked_worker_credential_stays_refused_after_failover);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bookie_lost_under_the_leader_rolls_the_ledger_and_writes_go_on() {
    // Goal: with ledgers on 2 of 3 bookies, killing a bookie of the current ensemble closes
    // that ledger at its last confirmed entry; the leader rolls to a new ledger on the bookies
    // left and re-submits what was not acknowledged, so every submit succeeds and the
    // follower sees every task.
    let mut cluster = BkCluster::start(3).await.expect("start a 3-bookie cluster");
    let scope = Scope {
        cluster: &cluster,
        base: "/bookie-failure".into(),
    };
    let o = NodeOptions {
        quorums: (2, 2, 2),
        ..NodeOptions::default()
    };
    let a = start(&scope, "a", &o).await;
    a.wait_role(Role::Leader).await;
    let b = start(&scope, "b", &o).await;
    b.wait_role(Role::Follower).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(submit(&a.handle, &format!("before-{i}")).await);
    }
    let c = coord(&scope).await;
    let ledgers_before = c.ledgers().await.unwrap().info.active_ledgers.len();
    let ledger = *c
        .ledgers()
        .await
        .unwrap()
        .info
        .active_ledgers
        .last()
        .unwrap();
    let metadata = bk(&cluster).await.ledger_metadata(ledger).await.unwrap();
    let ensemble: Vec<String> = metadata.segments[0].bookies.clone();
    let victim = (0..cluster.bookie_count())
        .find(|i| ensemble.contains(&cluster.bookie_id(*i)))
        .expect("a bookie of the ensemble");
    drop(scope);
    cluster.kill_bookie(victim).await;
    let scope = Scope {
        cluster: &cluster,
        base: "/bookie-failure".into(),
    };
    for i in 0..10 {
        ids.push(submit(&a.handle, &format!("after-{i}")).await);
    }
    let ledgers_after = c.ledgers().await.unwrap().info.active_ledgers.len();
    assert!(ledgers_after > ledgers_before, "the ledger was rolled");
    let all = ids.clone();
    wait_state(&b.handle, "every task on the follower", move |s| {
        all.iter().all(|id| s.task(*id).is_some())
    })
    .await;
    drop(scope);
    b.stop().await;
    a.stop().await;
}
