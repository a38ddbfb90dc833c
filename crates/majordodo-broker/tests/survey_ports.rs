//! Single-broker scenarios of the original test suite, seen from outside: a broker on a file
//! log (restartable on the same directory) with its worker listener on 127.0.0.1, real worker
//! agents over TCP, and the HTTP API's handlers (`http::router`) for every submission and every
//! read. Each test names, in its leading comment, the original test class it ports.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use majordodo_broker::http::auth::token_digest;
use majordodo_broker::http::{self, HttpConfig, UserConfig, UserRole};
use majordodo_broker::worker_listener::{self, ListenerConfig};
use majordodo_broker::{Broker, BrokerConfig, BrokerHandle, DispatcherConfig, SystemClock};
use majordodo_core::{DefaultGroupMapper, LeaderConfig};
use majordodo_log::{CommitLog, FileLog, FileLogConfig, SnapshotStore};
use majordodo_proto::worker::{Capacity, SharedSecret};
use majordodo_worker::{Executors, TaskFailure, WorkerConfig, executor_fn};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const SECRET: &str = "survey-secret";
const TOKEN: &str = "mdt_survey-admin";
/// Bound on every wait, so a bug fails a test instead of hanging it.
const WAIT: Duration = Duration::from_secs(20);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A broker on a file log and snapshot store in one directory, its worker listener, and the
/// HTTP API's router.
struct Node {
    broker: Option<Broker>,
    handle: BrokerHandle,
    app: Router,
    addr: SocketAddr,
    stop: CancellationToken,
    listener: JoinHandle<()>,
    log: Arc<dyn CommitLog>,
}

/// Starts a broker on `dir` with its worker listener on `port` (0: any free port).
async fn start(dir: &Path, port: u16, leader: LeaderConfig) -> Node {
    let (log, _) = FileLog::open(dir.join("log"), FileLogConfig::default()).expect("open log");
    let log: Arc<dyn CommitLog> = Arc::new(log);
    let snapshots = Arc::new(SnapshotStore::open(dir.join("snapshots")).expect("snapshots"));
    let stop = CancellationToken::new();
    let idle = Duration::from_millis(leader.max_worker_idle as u64);
    let broker = Broker::start(
        BrokerConfig {
            leader,
            // Snapshots only when a test asks for one.
            dispatcher: DispatcherConfig {
                checkpoint_interval: None,
                ..DispatcherConfig::default()
            },
            ..BrokerConfig::default()
        },
        log.clone(),
        Some(snapshots),
        Arc::new(DefaultGroupMapper),
        Arc::new(SystemClock),
        stop.clone().cancelled_owned(),
    )
    .await
    .expect("broker starts");
    let tcp = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind worker port");
    let addr = tcp.local_addr().unwrap();
    let mut lc = ListenerConfig::new("survey-broker", SharedSecret::new(SECRET));
    lc.max_worker_idle_time = idle;
    lc.keepalive_interval = idle / 4;
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
    .expect("valid http config");
    let handle = broker.handle();
    Node {
        app: http::router(handle.clone(), settings),
        handle,
        broker: Some(broker),
        addr,
        stop,
        listener,
        log,
    }
}

/// Leader settings for these tests: workers silent for `idle_ms` are dead.
fn leader(idle_ms: i64) -> LeaderConfig {
    LeaderConfig {
        max_worker_idle: idle_ms,
        ..LeaderConfig::default()
    }
}

impl Node {
    async fn call(&self, req: Request<Body>) -> (StatusCode, Value) {
        let res = tokio::time::timeout(WAIT, self.app.clone().oneshot(req))
            .await
            .expect("answered in time")
            .expect("infallible");
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 16 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).expect("JSON answer"))
    }

    async fn post(&self, body: Value) -> (StatusCode, Value) {
        let req = Request::post("/majordodo")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        self.call(req).await
    }

    async fn get(&self, query: &str) -> (StatusCode, Value) {
        let req = Request::get(format!("/majordodo?{query}"))
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .unwrap();
        self.call(req).await
    }

    /// submitTask with these fields (userid "u" unless given); answers the taskId (0 when not
    /// created) and the answer's `result`.
    async fn submit(&self, fields: Value) -> (u64, Value) {
        let mut body = json!({"action": "submitTask", "userid": "u"});
        for (k, v) in fields.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, b) = self.post(body).await;
        assert_eq!(status, StatusCode::OK, "{b}");
        assert_eq!(b["ok"], json!(true), "{b}");
        (b["taskId"].as_u64().expect("taskId"), b["result"].clone())
    }

    /// The task view of `id` (the `task` object; `{}` when there is no such task).
    async fn task(&self, id: u64) -> Value {
        let (status, v) = self.get(&format!("view=task&taskId={id}")).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        v["task"].clone()
    }

    /// Waits until task `id` has `status`; answers its view.
    async fn wait_status(&self, id: u64, status: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let t = self.task(id).await;
            if t["status"] == json!(status) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} never became {status}: {t}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The workers view: worker id → status.
    async fn workers(&self) -> Vec<(String, String)> {
        let (_, v) = self.get("view=workers").await;
        v["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                (
                    w["id"].as_str().unwrap().to_string(),
                    w["status"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    async fn wait_workers(&self, status: &str, n: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            let w = self.workers().await;
            if w.iter().filter(|(_, s)| s == status).count() == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never {n} workers {status}: {w:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the broker (no checkpoint is taken on the way).
    async fn stop(mut self) {
        self.stop.cancel();
        self.listener.await.unwrap();
        self.broker.take().unwrap().wait().await.unwrap();
        self.log.close().await.unwrap();
    }
}

/// A worker agent connecting to `addr` with `threads` threads, serving group 0.
fn worker(addr: SocketAddr, id: &str, threads: u32, executors: Executors) -> Worker {
    let mut c = WorkerConfig::new(addr.to_string(), SharedSecret::new(SECRET));
    c.worker_id = id.into();
    c.capacity = Capacity {
        max_threads: threads,
        groups: vec![0],
        ..Capacity::default()
    };
    c.keepalive_interval = Duration::from_millis(200);
    c.report_batching.max_delay = Duration::from_millis(20);
    c.ack_timeout = Duration::from_millis(500);
    c.reconnect_backoff.initial = Duration::from_millis(20);
    c.reconnect_backoff.max = Duration::from_millis(200);
    let stop = CancellationToken::new();
    let s = stop.clone();
    let join = tokio::spawn(async move {
        let _ = majordodo_worker::run(c, executors, s.cancelled_owned()).await;
    });
    Worker { join, stop }
}

struct Worker {
    join: JoinHandle<()>,
    stop: CancellationToken,
}

impl Worker {
    /// Graceful stop: the worker says goodbye.
    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(WAIT, self.join).await.expect("stops");
    }

    /// The process vanishes: its tasks are dropped and its socket closed without a word.
    async fn vanish(self) {
        self.join.abort();
        let _ = self.join.await;
    }
}

/// Records which task ids (and attempts) an executor ran, and where.
#[derive(Clone, Default)]
struct Runs(Arc<Mutex<Vec<(u64, u32, String)>>>);

impl Runs {
    fn record(&self, id: u64, attempt: u32, worker: &str) {
        self.0.lock().unwrap().push((id, attempt, worker.into()));
    }
    fn all(&self) -> Vec<(u64, u32, String)> {
        self.0.lock().unwrap().clone()
    }
}

/// Executors for type "t" answering `done <data>` after `hold`; data starting with "fail"
/// fails every attempt, data "fail-once" fails the first one only.
fn echo(runs: &Runs, worker_name: &str, hold: Duration) -> Executors {
    let runs = runs.clone();
    let name = worker_name.to_string();
    Executors::new().with(
        "t",
        executor_fn(move |task| {
            let runs = runs.clone();
            let name = name.clone();
            async move {
                runs.record(task.task_id, task.attempt, &name);
                tokio::time::sleep(hold).await;
                if task.data == "fail-once" && task.attempt == 1 {
                    return Err(TaskFailure::new("first attempt fails on purpose"));
                }
                if task.data.starts_with("fail") && task.data != "fail-once" {
                    return Err(TaskFailure::new("fails on purpose"));
                }
                Ok(format!("done {}", task.data))
            }
        }),
    )
}

fn int(v: &Value) -> i64 {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("not a number: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_a_batch_submitted_before_it_started_and_is_shown_disconnected_after_it_leaves()
 {
    // Ports SimpleBrokerSuite's "worker connects, receives and runs a task, disconnect event",
    // "tasks submitted before worker start" and "batch submit": a batch submitted while no
    // worker is connected waits; a worker that connects runs every task, which ends finished
    // with its result and worker; after the worker stops, the workers view shows it
    // disconnected.
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), 0, leader(10_000)).await;
    let tasks: Vec<Value> = (0..5)
        .map(|i| json!({"userid": "u", "tasktype": "t", "data": format!("d{i}")}))
        .collect();
    let (status, b) = node
        .post(json!({"action": "submitTasks", "tasks": tasks}))
        .await;
    assert_eq!(status, StatusCode::OK, "{b}");
    let ids: Vec<u64> = b["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["taskId"].as_u64().filter(|id| *id > 0).expect("created"))
        .collect();
    assert_eq!(ids.len(), 5);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for id in &ids {
        assert_eq!(node.task(*id).await["status"], json!("waiting"));
    }
    let runs = Runs::default();
    let w = worker(
        node.addr,
        "w1",
        2,
        echo(&runs, "w1", Duration::from_millis(5)),
    );
    node.wait_workers("CONNECTED", 1).await;
    for (i, id) in ids.iter().enumerate() {
        let t = node.wait_status(*id, "finished").await;
        assert_eq!(t["result"], json!(format!("done d{i}")), "{t}");
        assert_eq!(t["workerId"], json!("w1"), "{t}");
        assert_eq!(int(&t["attempts"]), 1, "{t}");
    }
    assert_eq!(runs.all().len(), 5, "each task ran once: {:?}", runs.all());
    w.stop().await;
    node.wait_workers("DISCONNECTED", 1).await;
    assert_eq!(
        node.workers().await,
        vec![("w1".into(), "DISCONNECTED".into())]
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_workers_share_ten_tasks_one_each() {
    // Ports SimpleBrokerSuite's "10 workers share 10 tasks": with ten one-thread workers
    // connected, ten tasks that each take a while are spread one per worker, and all finish.
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), 0, leader(10_000)).await;
    let runs = Runs::default();
    let workers: Vec<Worker> = (0..10)
        .map(|i| {
            let id = format!("w{i}");
            worker(
                node.addr,
                &id,
                1,
                echo(&runs, &id, Duration::from_millis(400)),
            )
        })
        .collect();
    node.wait_workers("CONNECTED", 10).await;
    // One batch, so that every task is waiting before the first one ends.
    let tasks: Vec<Value> = (0..10)
        .map(|i| json!({"userid": "u", "tasktype": "t", "data": i.to_string()}))
        .collect();
    let (status, b) = node
        .post(json!({"action": "submitTasks", "tasks": tasks}))
        .await;
    assert_eq!(status, StatusCode::OK, "{b}");
    let ids: Vec<u64> = b["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["taskId"].as_u64().filter(|id| *id > 0).expect("created"))
        .collect();
    let mut ran_on = BTreeSet::new();
    for id in &ids {
        let t = node.wait_status(*id, "finished").await;
        ran_on.insert(t["workerId"].as_str().unwrap().to_string());
    }
    assert_eq!(ran_on.len(), 10, "one task per worker: {ran_on:?}");
    assert_eq!(runs.all().len(), 10);
    for w in workers {
        w.stop().await;
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_first_attempt_is_retried_and_finishes() {
    // Ports TaskExecutionRecoveryOnErrorTest: the executor fails the first attempt; with
    // maxattempts 2 the task runs again and ends finished on attempt 2.
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), 0, leader(10_000)).await;
    let runs = Runs::default();
    let w = worker(
        node.addr,
        "w1",
        1,
        echo(&runs, "w1", Duration::from_millis(5)),
    );
    let (id, _) = node
        .submit(json!({"tasktype": "t", "data": "fail-once", "maxattempts": 2}))
        .await;
    let t = node.wait_status(id, "finished").await;
    assert_eq!(int(&t["attempts"]), 2, "{t}");
    assert_eq!(t["result"], json!("done fail-once"), "{t}");
    let attempts: Vec<u32> = runs.all().iter().map(|r| r.1).collect();
    assert_eq!(attempts, vec![1, 2]);
    w.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_always_fails_ends_in_error_after_five_attempts_and_frees_its_slot() {
    // Ports TaskExecutionRecoveryTooManyErrorsTest (maxattempts 5, every attempt fails →
    // error) and SlotsReleaseTest's "slot freed on error": the task runs exactly five times,
    // ends in error with the executor's message, and its slot takes a new task.
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), 0, leader(10_000)).await;
    let runs = Runs::default();
    let w = worker(
        node.addr,
        "w1",
        1,
        echo(&runs, "w1", Duration::from_millis(5)),
    );
    let (id, _) = node
        .submit(json!({"tasktype": "t", "data": "fail", "maxattempts": 5, "slot": "s"}))
        .await;
    assert!(id > 0);
    let t = node.wait_status(id, "error").await;
    assert_eq!(int(&t["attempts"]), 5, "{t}");
    assert!(
        t["result"].as_str().unwrap().contains("fails on purpose"),
        "{t}"
    );
    let attempts: Vec<u32> = runs.all().iter().map(|r| r.1).collect();
    assert_eq!(attempts, vec![1, 2, 3, 4, 5]);
    let (again, why) = node
        .submit(json!({"tasktype": "t", "data": "x", "slot": "s"}))
        .await;
    assert!(again > 0, "the slot is free again: {why}");
    node.wait_status(again, "finished").await;
    w.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_past_their_deadline_expire_with_or_without_a_worker_and_free_their_slots() {
    // Ports TaskDeadlineWithoutRequestTest, TaskDeadlineOnRequestTest and
    // ExpireMultipleTasksTest (past deadline → error `deadline_expired`, several tasks, heap
    // emptied) and SlotsReleaseTest's "slot freed on deadline expiry": three tasks whose
    // deadline passes while no worker serves them end in error `deadline_expired`; the tasks
    // heap is empty; a worker connecting afterwards never runs them, but runs a new task in the
    // slot one of them held.
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), 0, leader(10_000)).await;
    let deadline = now_ms() + 1_500;
    let mut ids = Vec::new();
    for (i, slot) in [Some("s"), None, None].into_iter().enumerate() {
        let mut f = json!({"tasktype": "t", "data": i.to_string(), "deadline": deadline});
        if let Some(s) = slot {
            f["slot"] = json!(s);
        }
        ids.push(node.submit(f).await.0);
    }
    let (busy, why) = node.submit(json!({"tasktype": "t", "slot": "s"})).await;
    assert_eq!(busy, 0, "the slot is held until the deadline: {why}");
    for id in &ids {
        let t = node.wait_status(*id, "error").await;
        assert_eq!(t["result"], json!("deadline_expired"), "{t}");
        assert_eq!(int(&t["attempts"]), 0, "{t}");
    }
    let (_, heap) = node.get("view=tasksheap").await;
    assert_eq!(heap["tasksheap"]["tasks"], json!([]), "{heap}");
    let runs = Runs::default();
    let w = worker(
        node.addr,
        "w1",
        4,
        echo(&runs, "w1", Duration::from_millis(5)),
    );
    let (fresh, why) = node.submit(json!({"tasktype": "t", "slot": "s"})).await;
    assert!(fresh > 0, "the expired task's slot is free: {why}");
    node.wait_status(fresh, "finished").await;
    let ran: Vec<u64> = runs.all().iter().map(|r| r.0).collect();
    assert_eq!(ran, vec![fresh], "expired tasks never run");
    w.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_task_is_purged_once_its_retention_has_passed() {
    // Ports PurgeFinishedTaskTest: with a short retention, a finished task disappears from the
    // task view and the listings; a task that has not ended (here a delayed one) is kept.
    let dir = tempfile::tempdir().unwrap();
    let node = start(
        dir.path(),
        0,
        LeaderConfig {
            finished_task_retention: 1_000,
            ..leader(10_000)
        },
    )
    .await;
    let later = now_ms() + 3_600_000;
    let (waiting, _) = node
        .submit(json!({"tasktype": "t", "requestedStartTime": later}))
        .await;
    let runs = Runs::default();
    let w = worker(
        node.addr,
        "w1",
        1,
        echo(&runs, "w1", Duration::from_millis(5)),
    );
    let (id, _) = node.submit(json!({"tasktype": "t", "data": "x"})).await;
    node.wait_status(id, "finished").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let t = node.task(id).await;
        if t == json!({}) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the finished task is never purged: {t}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, list) = node.get("view=tasks").await;
    let listed: Vec<i64> = list["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| int(&t["taskId"]))
        .collect();
    assert_eq!(listed, vec![waiting as i64], "{list}");
    assert_eq!(node.task(waiting).await["status"], json!("delayed"));
    w.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_task_and_its_slot_survive_a_restart_then_a_new_worker_runs_it() {
    // Ports RestartBrokerAndStartWorkerTest (submit, restart, still waiting, a worker then runs
    // it) and SlotsRecoveryTest's "busy slot survives restart; freed after completion".
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), 0, leader(10_000)).await;
    let (id, _) = node
        .submit(json!({"tasktype": "t", "data": "kept", "slot": "s"}))
        .await;
    node.stop().await;

    let node = start(dir.path(), 0, leader(10_000)).await;
    let t = node.task(id).await;
    assert_eq!(t["status"], json!("waiting"), "{t}");
    assert_eq!(t["slot"], json!("s"), "{t}");
    let (busy, why) = node.submit(json!({"tasktype": "t", "slot": "s"})).await;
    assert_eq!(busy, 0, "the slot is still held: {why}");
    assert_eq!(why, json!("slot s already assigned"));
    let runs = Runs::default();
    let w = worker(
        node.addr,
        "w1",
        1,
        echo(&runs, "w1", Duration::from_millis(5)),
    );
    let t = node.wait_status(id, "finished").await;
    assert_eq!(t["result"], json!("done kept"), "{t}");
    let (again, why) = node.submit(json!({"tasktype": "t", "slot": "s"})).await;
    assert!(again > 0, "the slot is freed by the completion: {why}");
    w.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_task_keeps_its_data_and_result_across_restarts_with_and_without_a_checkpoint() {
    // Ports SimpleBrokerRestartWithoutCheckpointTest and SimpleBrokerRestartWithCheckpointTest:
    // a task runs; the broker restarts on the same directory, first recovering from the log
    // alone, then (after a checkpoint) from the snapshot; both times the task is finished with
    // its data, result and worker.
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), 0, leader(10_000)).await;
    let runs = Runs::default();
    let w = worker(
        node.addr,
        "w1",
        1,
        echo(&runs, "w1", Duration::from_millis(5)),
    );
    let (id, _) = node
        .submit(json!({"tasktype": "t", "data": "payload"}))
        .await;
    node.wait_status(id, "finished").await;
    w.stop().await;
    node.stop().await;

    let check = |t: &Value| {
        assert_eq!(t["status"], json!("finished"), "{t}");
        assert_eq!(t["data"], json!("payload"), "{t}");
        assert_eq!(t["result"], json!("done payload"), "{t}");
        assert_eq!(t["workerId"], json!("w1"), "{t}");
    };
    let node = start(dir.path(), 0, leader(10_000)).await;
    let report = node.broker.as_ref().unwrap().boot_report().clone();
    assert_eq!(report.snapshot_lsn, None, "no checkpoint was taken");
    assert!(report.replayed > 0);
    check(&node.task(id).await);
    let at = node.handle.checkpoint().await.expect("checkpoint");
    node.stop().await;

    let node = start(dir.path(), 0, leader(10_000)).await;
    let report = node.broker.as_ref().unwrap().boot_report().clone();
    assert_eq!(report.snapshot_lsn, Some(at), "booted from the checkpoint");
    check(&node.task(id).await);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_task_holds_its_slot_across_a_restart_and_runs_only_after_its_start_time() {
    // Ports ScheduledTaskTest: a task with a requested start time is delayed and holds its slot
    // (a second task on it answers `slot ... already assigned`); a restart keeps it delayed
    // with its slot; a connected worker runs it only once its start time has come.
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), 0, leader(10_000)).await;
    let start_at = now_ms() + 3_000;
    let (id, _) = node
        .submit(
            json!({"tasktype": "t", "data": "later", "slot": "s", "requestedStartTime": start_at}),
        )
        .await;
    assert_eq!(node.task(id).await["status"], json!("delayed"));
    let (busy, why) = node.submit(json!({"tasktype": "t", "slot": "s"})).await;
    assert_eq!((busy, why), (0, json!("slot s already assigned")));
    node.stop().await;

    let node = start(dir.path(), 0, leader(10_000)).await;
    assert_eq!(node.task(id).await["status"], json!("delayed"));
    let (busy, _) = node.submit(json!({"tasktype": "t", "slot": "s"})).await;
    assert_eq!(busy, 0, "the slot survives the restart");
    let ran_at = Arc::new(Mutex::new(None));
    let seen = ran_at.clone();
    let executors = Executors::new().with(
        "t",
        executor_fn(move |_| {
            let seen = seen.clone();
            async move {
                *seen.lock().unwrap() = Some(now_ms());
                Ok::<_, TaskFailure>("ran".to_string())
            }
        }),
    );
    let w = worker(node.addr, "w1", 1, executors);
    node.wait_workers("CONNECTED", 1).await;
    let t = node.wait_status(id, "finished").await;
    assert_eq!(t["result"], json!("ran"));
    let ran = ran_at.lock().unwrap().expect("it ran");
    assert!(
        ran >= start_at,
        "ran at {ran}, before its start time {start_at}"
    );
    w.stop().await;
    node.stop().await;
}

/// A TCP proxy in front of the worker listener that can reset every connection through it, and
/// hold back what workers send (read and dropped).
struct Proxy {
    addr: SocketAddr,
    cut: Arc<tokio::sync::Notify>,
    generation: Arc<AtomicU32>,
    drop_upstream: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(to: SocketAddr) -> Proxy {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let cut = Arc::new(tokio::sync::Notify::new());
        let generation = Arc::new(AtomicU32::new(0));
        let drop_upstream = Arc::new(AtomicBool::new(false));
        let (c, g, d) = (cut.clone(), generation.clone(), drop_upstream.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = tcp.accept().await else {
                    return;
                };
                g.fetch_add(1, Ordering::SeqCst);
                let (cut, drop_upstream) = (c.clone(), d.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(to).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            let n = cr.read(&mut buf).await?;
                            if n == 0 {
                                return Ok::<_, std::io::Error>(());
                            }
                            if !drop_upstream.load(Ordering::SeqCst) {
                                sw.write_all(&buf[..n]).await?;
                            }
                        }
                    };
                    let down = tokio::io::copy(&mut sr, &mut cw);
                    // Dropping both halves of both sockets resets the connection.
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            cut,
            generation,
            drop_upstream,
            task,
        }
    }

    fn connections(&self) -> u32 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Closes every connection open through the proxy now.
    fn reset(&self) {
        self.cut.notify_waiters();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An executor for type "t" that waits for `release` before answering `done <data>`.
fn gated(release: &Arc<tokio::sync::Semaphore>, started: &Arc<AtomicU32>) -> Executors {
    let (release, started) = (release.clone(), started.clone());
    Executors::new().with(
        "t",
        executor_fn(move |task| {
            let (release, started) = (release.clone(), started.clone());
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                release.acquire().await.unwrap().forget();
                Ok::<_, TaskFailure>(format!("done {}", task.data))
            }
        }),
    )
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_connection_is_reset_mid_task_reconnects_and_its_result_is_accepted() {
    // Ports TaskExecutionRecoveryOnWorkerConnectionResetTest: the connection of a worker is
    // reset while it runs a task; the worker connects again (well within the idle time, so it
    // is not declared dead), its task stays on attempt 1, and the result it reports after the
    // reconnection is recorded.
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), 0, leader(10_000)).await;
    let proxy = Proxy::start(node.addr).await;
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let started = Arc::new(AtomicU32::new(0));
    let w = worker(proxy.addr, "w1", 1, gated(&release, &started));
    let (id, _) = node.submit(json!({"tasktype": "t", "data": "r"})).await;
    wait_until("the task started", || started.load(Ordering::SeqCst) == 1).await;
    node.wait_status(id, "running").await;
    proxy.reset();
    wait_until("the worker connected again", || proxy.connections() >= 2).await;
    node.wait_workers("CONNECTED", 1).await;
    release.add_permits(1);
    let t = node.wait_status(id, "finished").await;
    assert_eq!(t["result"], json!("done r"), "{t}");
    assert_eq!(int(&t["attempts"]), 1, "{t}");
    assert_eq!(started.load(Ordering::SeqCst), 1, "never run twice");
    w.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finish_report_lost_on_a_dropped_connection_is_sent_again_and_recorded() {
    // Ports TaskExecutionSendAgainFinishedNotificationTest's "notification lost by
    // disconnect → resent": the worker's finish report never reaches the broker (the bytes are
    // dropped on the way), then the connection is reset; on reconnection the worker sends the
    // report again and the task ends finished on attempt 1 with its result.
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), 0, leader(10_000)).await;
    let proxy = Proxy::start(node.addr).await;
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let started = Arc::new(AtomicU32::new(0));
    let w = worker(proxy.addr, "w1", 1, gated(&release, &started));
    let (id, _) = node.submit(json!({"tasktype": "t", "data": "lost"})).await;
    wait_until("the task started", || started.load(Ordering::SeqCst) == 1).await;
    node.wait_status(id, "running").await;
    proxy.drop_upstream.store(true, Ordering::SeqCst);
    release.add_permits(1);
    // The report (sent after 20 ms, then again after the 500 ms ack timeout) is lost.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(node.task(id).await["status"], json!("running"));
    proxy.drop_upstream.store(false, Ordering::SeqCst);
    proxy.reset();
    let t = node.wait_status(id, "finished").await;
    assert_eq!(t["result"], json!("done lost"), "{t}");
    assert_eq!(int(&t["attempts"]), 1, "{t}");
    assert_eq!(started.load(Ordering::SeqCst), 1, "never run twice");
    w.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_task_frees_its_slot_and_a_restarted_worker_with_the_same_id_runs_it_again()
{
    // Ports TaskExecutionRecoveryOnWorkerRestartTest (the worker process dies mid-task; after
    // the idle time the task is waiting again; a new process with the same worker id runs
    // attempt 2) and SlotsReleaseTest's "slot freed on worker death" (maxattempts 1: the task
    // ends in error `worker w1 died` and its slot takes a new task).
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), 0, leader(1_000)).await;
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let started = Arc::new(AtomicU32::new(0));
    let w = worker(node.addr, "w1", 2, gated(&release, &started));
    let (retried, _) = node
        .submit(json!({"tasktype": "t", "data": "again", "maxattempts": 2}))
        .await;
    let (slotted, _) = node
        .submit(json!({"tasktype": "t", "data": "once", "slot": "s", "maxattempts": 1}))
        .await;
    wait_until("both tasks started", || started.load(Ordering::SeqCst) == 2).await;
    w.vanish().await;
    let t = node.wait_status(retried, "waiting").await;
    assert_eq!(t["result"], json!("worker w1 died"), "{t}");
    let t = node.wait_status(slotted, "error").await;
    assert_eq!(t["result"], json!("worker w1 died"), "{t}");
    let (again, why) = node.submit(json!({"tasktype": "t", "slot": "s"})).await;
    assert!(again > 0, "the dead worker's slot is free: {why}");
    release.add_permits(10);
    let w = worker(node.addr, "w1", 2, gated(&release, &started));
    let t = node.wait_status(retried, "finished").await;
    assert_eq!(int(&t["attempts"]), 2, "{t}");
    assert_eq!(t["result"], json!("done again"), "{t}");
    assert_eq!(t["workerId"], json!("w1"), "{t}");
    node.wait_status(again, "finished").await;
    w.stop().await;
    node.stop().await;
}
