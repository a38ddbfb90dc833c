//! Code pools end to end: created over the real HTTP API, stored in chunks in a real file log,
//! fetched by a real worker over the worker protocol, unpacked and used as the working directory
//! of the `process` executor; expiry; a pool larger than one record through restart and
//! snapshot; and the scheduling state set at runtime (quotas, weights, needs) through the same.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use majordodo_broker::http::auth::token_digest;
use majordodo_broker::http::{self, HttpConfig, UserConfig, UserRole};
use majordodo_broker::worker_listener::{self, ListenerConfig};
use majordodo_broker::{Broker, BrokerConfig, BrokerHandle, SystemClock};
use majordodo_core::{DefaultGroupMapper, TaskId, TaskStatus};
use majordodo_log::{CommitLog, FileLog, FileLogConfig, SnapshotStore};
use majordodo_proto::worker::{Capacity, SharedSecret};
use majordodo_testkit::archives::{self, executable, file};
use majordodo_worker::{ProcessExecutorConfig, WorkerConfig, process_executors};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const SECRET: &str = "codepool-secret";
const TOKEN: &str = "mdt_codepool-admin";
const WAIT: Duration = Duration::from_secs(20);
/// A record limit small enough that the test pools span several records.
const MAX_RECORD: usize = 8 * 1024;

struct Running {
    broker: Option<Broker>,
    handle: BrokerHandle,
    app: Router,
    addr: std::net::SocketAddr,
    stop: CancellationToken,
    listener: JoinHandle<()>,
    log: Arc<dyn CommitLog>,
}

async fn start(dir: &Path) -> Running {
    let (log, _) = FileLog::open(
        dir.join("log"),
        FileLogConfig {
            max_record_size: MAX_RECORD,
            ..FileLogConfig::default()
        },
    )
    .expect("open log");
    let log: Arc<dyn CommitLog> = Arc::new(log);
    let snapshots = Arc::new(SnapshotStore::open(dir.join("snapshots")).expect("open snapshots"));
    let stop = CancellationToken::new();
    let broker = Broker::start(
        BrokerConfig::default(),
        log.clone(),
        Some(snapshots),
        Arc::new(DefaultGroupMapper),
        Arc::new(SystemClock),
        stop.clone().cancelled_owned(),
    )
    .await
    .expect("broker starts");
    let tcp = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let lc = ListenerConfig::new("codepool-broker", SharedSecret::new(SECRET));
    let events = broker.worker_events();
    let listener_stop = stop.clone();
    let listener = tokio::spawn(async move {
        worker_listener::run(tcp, lc, events, listener_stop.cancelled_owned())
            .await
            .expect("listener config is valid");
    });
    let settings = HttpConfig {
        users: vec![UserConfig {
            name: "admin".into(),
            role: UserRole::Admin,
            password_hash: None,
            token_sha256: Some(token_digest(TOKEN)),
        }],
        ..HttpConfig::default()
    }
    .validate()
    .unwrap();
    Running {
        app: http::router(broker.handle(), settings),
        handle: broker.handle(),
        broker: Some(broker),
        addr,
        stop,
        listener,
        log,
    }
}

impl Running {
    async fn post(&self, body: Value) -> (StatusCode, Value) {
        let req = Request::post("/majordodo")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 24)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    async fn pool(&self, id: &'static str) -> Option<(Vec<u8>, u32)> {
        self.handle
            .query(move |v| v.state.codepool(id).map(|p| (p.data(), p.chunk_count)))
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        self.stop.cancel();
        self.listener.await.unwrap();
        self.broker.take().unwrap().wait().await.unwrap();
        self.log.close().await.unwrap();
    }
}

async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Bytes that do not compress, so the archive is as large as its content.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A pool whose archive spans several records: a script and 30 KB of noise.
fn big_pool() -> Vec<u8> {
    archives::zip(&[
        executable(
            "run.sh",
            b"#!/bin/sh\nprintf 'ran in %s with %s bytes of data' \"$(pwd)\" \"$(wc -c < lib/blob)\"\n",
        ),
        file("lib/blob", &noise(30_000)),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_fetches_the_pool_runs_the_task_inside_it_and_the_pool_expires_after() {
    // Goal: the original's TaskExecutionWithCodePoolTest for a language-agnostic worker: a pool
    // created over HTTP (larger than one log record, so stored in chunks) is fetched by the
    // worker on first use over its connection, checked and unpacked; the `process` executor runs
    // the task with the pool as working directory and sees its files; the pool, with a TTL of
    // 3 s, is deleted by the leader's tick once its TTL passed and the task ended (and not
    // before the task ended).
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let archive = big_pool();
    let (s, b) = broker
        .post(
            json!({"action": "createCodePool", "id": "tools", "ttl": 3_000,
                     "data": STANDARD.encode(&archive)}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (data, chunks) = broker.pool("tools").await.expect("pool exists");
    assert_eq!(data, archive);
    assert!(chunks > 1, "{} bytes in {chunks} chunk(s)", archive.len());

    let pools_dir = dir.path().join("worker-pools");
    let mut config = WorkerConfig::new(broker.addr.to_string(), SharedSecret::new(SECRET));
    config.worker_id = "w1".into();
    config.capacity = Capacity {
        max_threads: 2,
        groups: vec![0],
        ..Capacity::default()
    };
    config.codepools.dir = Some(pools_dir.clone());
    // Ask for parts smaller than the archive, so the download takes several round trips.
    config.max_frame_size = 16 * 1024;
    let executors = process_executors(&BTreeMap::from([(
        "script".to_string(),
        ProcessExecutorConfig::new(["sh", "run.sh"]),
    )]))
    .unwrap();
    let worker_stop = CancellationToken::new();
    let s = worker_stop.clone();
    let worker = tokio::spawn(async move {
        let _ = majordodo_worker::run(config, executors, s.cancelled_owned()).await;
    });

    let (s, b) = broker
        .post(
            json!({"action": "submitTask", "userid": "u", "tasktype": "script",
                     "codePoolId": "tools"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let id = TaskId(b["taskId"].as_u64().unwrap());
    wait_until("the task ends", || async {
        broker
            .handle
            .query(move |v| v.state.task(id).is_some_and(|t| t.status.is_final()))
            .await
            .unwrap()
    })
    .await;
    let (status, result) = broker
        .handle
        .query(move |v| {
            let t = v.state.task(id).unwrap();
            (t.status, t.result.as_deref().unwrap_or("").to_owned())
        })
        .await
        .unwrap();
    assert_eq!(status, TaskStatus::Finished, "{result}");
    let sha: String = majordodo_core::codepool::hex(&majordodo_core::codepool::sha256(&archive));
    let unpacked = pools_dir.join(&sha);
    assert_eq!(
        result,
        format!(
            "ran in {} with 30000 bytes of data",
            unpacked.canonicalize().unwrap().display()
        )
    );
    assert_eq!(
        std::fs::read(unpacked.join("lib/blob")).unwrap(),
        noise(30_000)
    );
    // Nothing else was left in the pools directory (the temporary directory was renamed).
    assert_eq!(std::fs::read_dir(&pools_dir).unwrap().count(), 1);

    // The TTL runs from creation; the task has ended, so the tick deletes the pool.
    wait_until("the expired pool is deleted", || async {
        broker.pool("tools").await.is_none()
    })
    .await;
    worker_stop.cancel();
    worker.await.unwrap();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_larger_than_a_record_survives_restart_and_snapshot_byte_for_byte() {
    // Goal: a pool logged in several chunks is rebuilt exactly (bytes, checksum, chunks) by a
    // replay of the log after a restart, and by a restart from a snapshot; a task's pool is kept
    // too.
    let dir = tempfile::tempdir().unwrap();
    let archive = big_pool();
    let broker = start(dir.path()).await;
    let (s, b) = broker
        .post(json!({"action": "createCodePool", "id": "big", "data": STANDARD.encode(&archive)}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = broker
        .post(json!({"action": "submitTask", "userid": "u", "tasktype": "t", "codePoolId": "big"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let id = TaskId(b["taskId"].as_u64().unwrap());
    let original = broker.pool("big").await.unwrap();
    assert!(original.1 > 1);
    broker.stop().await;

    // Replay.
    let broker = start(dir.path()).await;
    assert_eq!(broker.pool("big").await.unwrap(), original);
    broker.handle.checkpoint().await.expect("snapshot");
    broker.stop().await;

    // From the snapshot.
    let broker = start(dir.path()).await;
    assert_eq!(broker.pool("big").await.unwrap(), original);
    let (pool, users) = broker
        .handle
        .query(move |v| {
            (
                v.state.task(id).unwrap().codepool().map(str::to_owned),
                v.state.code_pool_users("big"),
            )
        })
        .await
        .unwrap();
    assert_eq!(pool.as_deref(), Some("big"));
    assert_eq!(users, 1);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_weights_and_needs_survive_restart_and_snapshot() {
    // Goal: the scheduling state set at runtime (a user's and a group's quota, a weight) and a
    // task's needs come back the same from a replay of the log and from a snapshot.
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    for body in [
        json!({"action": "setQuota", "userid": "alice", "quota": {"tasks": 3, "cpu": 1500}}),
        json!({"action": "setQuota", "group": 1, "quota": {"db:orders": 2}}),
        json!({"action": "setServiceLevel", "userid": "alice", "group": 1, "weight": 4}),
        json!({"action": "submitTask", "userid": "alice", "tasktype": "t", "cpu": 500,
               "needs": {"db:orders": 1}}),
    ] {
        let (s, b) = broker.post(body).await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let snapshot = |broker: &Running| {
        let handle = broker.handle.clone();
        async move {
            handle
                .query(|v| {
                    let quotas: Vec<String> = v
                        .state
                        .quotas()
                        .iter()
                        .map(|(t, q)| format!("{t}: {q:?}"))
                        .collect();
                    let weight = v.state.service_level_of("alice").weight;
                    let needs: Vec<String> = v
                        .state
                        .tasks()
                        .flat_map(|t| t.needs().iter().map(|(d, n)| format!("{d}={n}")))
                        .collect();
                    (quotas, weight, needs)
                })
                .await
                .unwrap()
        }
    };
    let original = snapshot(&broker).await;
    assert_eq!(original.0.len(), 2, "{original:?}");
    assert_eq!(original.1, 4);
    assert_eq!(original.2, vec!["cpu=500", "db:orders=1"]);
    broker.stop().await;

    let broker = start(dir.path()).await;
    assert_eq!(snapshot(&broker).await, original, "after a replay");
    broker.handle.checkpoint().await.expect("snapshot");
    broker.stop().await;

    let broker = start(dir.path()).await;
    assert_eq!(snapshot(&broker).await, original, "from the snapshot");
    broker.stop().await;
}
