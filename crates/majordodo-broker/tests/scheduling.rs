//! The scheduling rules seen from outside: a broker with its worker listener on 127.0.0.1, real
//! worker agents over TCP, and the HTTP API's handlers (`http::router`) for submissions, service
//! levels, priorities and the `resources` and `tasksheap` views. Executors record how many tasks
//! run at once per key, so a limit that is exceeded even once fails the test.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use majordodo_broker::http::auth::token_digest;
use majordodo_broker::http::{self, HttpConfig, UserConfig, UserRole};
use majordodo_broker::worker_listener::{self, ListenerConfig};
use majordodo_broker::{Broker, BrokerConfig, BrokerHandle, SystemClock};
use majordodo_core::{DefaultGroupMapper, LeaderConfig, TaskStatus};
use majordodo_log::{CommitLog, MemoryLog, MemoryStore};
use majordodo_proto::worker::{Capacity, SharedSecret};
use majordodo_worker::{Executors, TaskFailure, WorkerConfig, executor_fn};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const SECRET: &str = "scheduling-secret";
const TOKEN: &str = "mdt_scheduling-admin";
/// Bound on every wait, so a bug fails a test instead of hanging it.
const WAIT: Duration = Duration::from_secs(20);

struct Cluster {
    broker: Option<Broker>,
    handle: BrokerHandle,
    app: Router,
    addr: std::net::SocketAddr,
    stop: CancellationToken,
    listener: JoinHandle<()>,
    workers: Vec<(JoinHandle<()>, CancellationToken)>,
}

async fn start(leader: LeaderConfig, idle: Duration) -> Cluster {
    let store = MemoryStore::new();
    let log: Arc<dyn CommitLog> = Arc::new(MemoryLog::open(&store));
    let stop = CancellationToken::new();
    let broker = Broker::start(
        BrokerConfig {
            leader: LeaderConfig {
                max_worker_idle: idle.as_millis() as i64,
                ..leader
            },
            ..BrokerConfig::default()
        },
        log,
        None,
        Arc::new(DefaultGroupMapper),
        Arc::new(SystemClock),
        stop.clone().cancelled_owned(),
    )
    .await
    .expect("broker starts");
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let mut lc = ListenerConfig::new("sched-broker", SharedSecret::new(SECRET));
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
    Cluster {
        app: http::router(handle.clone(), settings),
        handle,
        broker: Some(broker),
        addr,
        stop,
        listener,
        workers: Vec::new(),
    }
}

impl Cluster {
    async fn post(&self, body: Value) -> (StatusCode, Value) {
        let req = Request::post("/majordodo")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        self.call(req).await
    }

    async fn get(&self, query: &str) -> Value {
        let req = Request::get(format!("/majordodo?{query}"))
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .unwrap();
        let (status, body) = self.call(req).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

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

    /// Submits `n` tasks of `user` and `task_type` with `data`; returns their ids.
    async fn submit(&self, user: &str, task_type: &str, data: &str, n: usize) -> Vec<u64> {
        self.submit_with(user, task_type, data, n, 0).await
    }

    async fn submit_with(
        &self,
        user: &str,
        task_type: &str,
        data: &str,
        n: usize,
        priority: i32,
    ) -> Vec<u64> {
        let tasks: Vec<Value> = (0..n)
            .map(|_| json!({"userid": user, "tasktype": task_type, "data": data, "priority": priority}))
            .collect();
        let (status, body) = self
            .post(json!({"action": "submitTasks", "tasks": tasks}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["taskId"].as_u64().filter(|id| *id > 0).expect("created"))
            .collect()
    }

    async fn set_level(&self, user: &str, group: u32, resources: &[&str]) {
        let (status, body) = self
            .post(json!({"action": "setServiceLevel", "userid": user, "group": group, "resources": resources}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    fn spawn_worker(&mut self, id: &str, capacity: Capacity, executors: Executors) {
        let mut c = WorkerConfig::new(self.addr.to_string(), SharedSecret::new(SECRET));
        c.worker_id = id.into();
        c.capacity = capacity;
        c.keepalive_interval = Duration::from_millis(250);
        c.reconnect_backoff.initial = Duration::from_millis(20);
        c.reconnect_backoff.max = Duration::from_millis(200);
        let stop = CancellationToken::new();
        let s = stop.clone();
        let join = tokio::spawn(async move {
            let _ = majordodo_worker::run(c, executors, s.cancelled_owned()).await;
        });
        self.workers.push((join, stop));
    }

    async fn count(&self, status: TaskStatus) -> u64 {
        self.handle
            .query(move |v| v.state.count(status))
            .await
            .unwrap()
    }

    async fn wait_for(&self, what: &str, status: TaskStatus, n: u64) {
        let deadline = Instant::now() + WAIT;
        while self.count(status).await < n {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        for (join, stop) in self.workers.drain(..) {
            stop.cancel();
            let _ = join.await;
        }
        self.stop.cancel();
        self.listener.await.unwrap();
        self.broker.take().unwrap().wait().await.unwrap();
    }
}

fn capacity(threads: u32) -> Capacity {
    Capacity {
        max_threads: threads,
        groups: vec![0],
        ..Capacity::default()
    }
}

/// Counts tasks running at once per key (the task data) and keeps the peaks.
#[derive(Clone, Default)]
struct Meter {
    inner: Arc<Mutex<MeterState>>,
}

/// Running now and peak per key, and task ids in start order.
type MeterState = (HashMap<String, u32>, BTreeMap<String, u32>, Vec<u64>);

impl Meter {
    /// Executors for `types`: each task holds its key for `hold`, then finishes (or fails when
    /// its data starts with "fail").
    fn executors(&self, types: &[&str], hold: Duration) -> Executors {
        let mut e = Executors::new();
        for t in types {
            let m = self.clone();
            e = e.with(
                *t,
                executor_fn(move |task| {
                    let m = m.clone();
                    async move {
                        m.enter(&task.data, task.task_id);
                        tokio::time::sleep(hold).await;
                        m.leave(&task.data);
                        if task.data.starts_with("fail") {
                            Err(TaskFailure::new("failed on purpose"))
                        } else {
                            Ok(task.resources.join(","))
                        }
                    }
                }),
            );
        }
        e
    }

    fn enter(&self, key: &str, id: u64) {
        let mut g = self.inner.lock().unwrap();
        let now = {
            let n = g.0.entry(key.to_string()).or_default();
            *n += 1;
            *n
        };
        let peak = g.1.entry(key.to_string()).or_default();
        *peak = (*peak).max(now);
        g.2.push(id);
    }

    fn leave(&self, key: &str) {
        let mut g = self.inner.lock().unwrap();
        *g.0.get_mut(key).unwrap() -= 1;
    }

    fn peak(&self, key: &str) -> u32 {
        self.inner.lock().unwrap().1.get(key).copied().unwrap_or(0)
    }

    /// Task ids in the order they started.
    fn started(&self) -> Vec<u64> {
        self.inner.lock().unwrap().2.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_share_of_a_type_caps_its_concurrency_on_a_worker() {
    // Goal: with 100 threads and a 10 % per-user share, one user's 60 tasks never run more than
    // 10 at a time, yet all finish; another user is not held back by the first one's share.
    let mut c = start(LeaderConfig::default(), Duration::from_secs(10)).await;
    let meter = Meter::default();
    let mut cap = capacity(100);
    cap.max_thread_per_user_per_task_type_percent = 10;
    c.spawn_worker(
        "w1",
        cap,
        meter.executors(&["t"], Duration::from_millis(40)),
    );
    c.submit("alice", "t", "alice", 60).await;
    c.submit("bob", "t", "bob", 5).await;
    c.wait_for("65 tasks finished", TaskStatus::Finished, 65)
        .await;
    assert!(meter.peak("alice") <= 10, "peak {}", meter.peak("alice"));
    assert_eq!(meter.peak("alice"), 10, "the share is used in full");
    assert!(meter.peak("bob") >= 1);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_type_limit_of_one_runs_tasks_one_at_a_time() {
    // Goal: a type limited to 1 on the only worker runs its 10 tasks one after the other; a
    // type limited to 10 runs them together.
    let mut c = start(LeaderConfig::default(), Duration::from_secs(10)).await;
    let meter = Meter::default();
    let mut cap = capacity(20);
    cap.max_threads_by_task_type = BTreeMap::from([("one".into(), 1), ("ten".into(), 10)]);
    c.spawn_worker(
        "w1",
        cap,
        meter.executors(&["one", "ten"], Duration::from_millis(30)),
    );
    c.submit("u", "one", "one", 10).await;
    c.submit("u", "ten", "ten", 10).await;
    c.wait_for("20 tasks finished", TaskStatus::Finished, 20)
        .await;
    assert_eq!(meter.peak("one"), 1);
    assert!(meter.peak("ten") <= 10);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_and_global_resource_limits_bound_concurrency_and_everything_completes() {
    // Goal: a resource limited to 2 on each worker and to 3 in the cluster never has more users
    // at once than the stricter limit, every task completes, and the resources view shows use
    // against the limits, back to 0 at the end.
    let leader = LeaderConfig {
        global_resource_limits: BTreeMap::from([("resource1".into(), 3)]),
        ..LeaderConfig::default()
    };
    let mut c = start(leader, Duration::from_secs(10)).await;
    c.set_level("dbuser", 1, &["resource1"]).await;
    let meter = Meter::default();
    for w in ["w1", "w2"] {
        let mut cap = capacity(10);
        cap.resource_limits = BTreeMap::from([("resource1".into(), 2)]);
        c.spawn_worker(w, cap, meter.executors(&["t"], Duration::from_millis(60)));
    }
    // Both workers connected, w1's declared limit known to the leader.
    let deadline = Instant::now() + WAIT;
    loop {
        let v = c.get("view=workers").await;
        let connected = v["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["status"] == json!("CONNECTED"))
            .count();
        if connected == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "workers never connected: {v}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let w1 = c.get("view=resources&workerId=w1").await;
    assert_eq!(w1["resources"][0]["actualLimit"], json!(2), "{w1}");
    assert_eq!(w1["resources"][0]["runningTasks"], json!(0), "{w1}");
    let ids = c.submit("dbuser", "t", "db", 12).await;
    // While tasks run, the view shows the use against the global limit.
    let deadline = Instant::now() + WAIT;
    loop {
        let v = c.get("view=resources").await;
        let row = &v["resources"][0];
        if row["runningTasks"].as_u64().unwrap_or(0) > 0 {
            assert_eq!(row["id"], json!("resource1"));
            assert_eq!(row["actualLimit"], json!(3));
            assert!(row["runningTasks"].as_u64().unwrap() <= 3, "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "no task ever used resource1");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.wait_for("12 tasks finished", TaskStatus::Finished, 12)
        .await;
    assert!(meter.peak("db") <= 3, "peak {}", meter.peak("db"));
    assert!(meter.peak("db") >= 2, "peak {}", meter.peak("db"));
    let task = c.get(&format!("view=task&taskId={}", ids[0])).await;
    assert_eq!(task["task"]["resources"], json!("resource1"), "{task}");
    let v = c.get("view=resources").await;
    assert_eq!(v["resources"][0]["runningTasks"], json!(0), "{v}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_level_change_moves_waiting_tasks_at_once() {
    // Goal: a user's waiting tasks, in a group no worker serves, run as soon as an admin moves
    // the user to a served group; a group that is not configured is refused and changes
    // nothing; the tasks heap shows the group they wait in.
    let leader = LeaderConfig {
        groups: [1, 2].into(),
        ..LeaderConfig::default()
    };
    let mut c = start(leader, Duration::from_secs(10)).await;
    let meter = Meter::default();
    let mut cap = capacity(5);
    cap.groups = vec![2];
    c.spawn_worker("w1", cap, meter.executors(&["t"], Duration::from_millis(5)));
    c.submit("carol", "t", "carol", 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        c.count(TaskStatus::Waiting).await,
        3,
        "group 1 is not served"
    );
    let heap = c.get("view=tasksheap").await;
    assert_eq!(heap["tasksheap"]["tasks"][0]["group"], json!(1), "{heap}");
    let (status, body) = c
        .post(json!({"action": "setServiceLevel", "userid": "carol", "group": 7}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["field"], json!("group"), "{body}");
    assert_eq!(c.count(TaskStatus::Waiting).await, 3);
    c.set_level("carol", 2, &[]).await;
    c.wait_for("carol's tasks finished", TaskStatus::Finished, 3)
        .await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_order_a_users_waiting_tasks_and_change_at_runtime() {
    // Goal: waiting tasks run highest priority first (age among equals); a priority raised at
    // runtime takes effect before the worker connects; the priority of a finished task cannot
    // change (409).
    let mut c = start(LeaderConfig::default(), Duration::from_secs(10)).await;
    let low = c.submit_with("u", "t", "x", 1, 0).await[0];
    let mid = c.submit_with("u", "t", "x", 1, 5).await[0];
    let raised = c.submit_with("u", "t", "x", 1, 0).await[0];
    let (status, body) = c
        .post(json!({"action": "setTaskPriority", "taskId": raised, "priority": 9}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let heap = c.get("view=tasksheap").await;
    let order: Vec<u64> = heap["tasksheap"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["taskId"].as_u64().unwrap())
        .collect();
    assert_eq!(order, vec![raised, mid, low], "{heap}");
    let meter = Meter::default();
    c.spawn_worker(
        "w1",
        capacity(1),
        meter.executors(&["t"], Duration::from_millis(5)),
    );
    c.wait_for("3 tasks finished", TaskStatus::Finished, 3)
        .await;
    assert_eq!(meter.started(), vec![raised, mid, low]);
    let (status, body) = c
        .post(json!({"action": "setTaskPriority", "taskId": low, "priority": 1}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["field"], json!("taskId"), "{body}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_are_released_after_errors_and_worker_death() {
    // Goal: a failed attempt releases its resource; a task whose worker dies mid-run goes back
    // to waiting with its counter at 0, then runs again on a new worker process with the same
    // resources recorded for the new attempt.
    let idle = Duration::from_millis(800);
    let mut c = start(LeaderConfig::default(), idle).await;
    c.set_level("r", 1, &["db"]).await;
    let meter = Meter::default();
    c.spawn_worker(
        "w1",
        capacity(4),
        meter.executors(&["t"], Duration::from_millis(5)),
    );
    c.submit("r", "t", "fail", 2).await;
    c.wait_for("2 failed tasks", TaskStatus::Error, 2).await;
    let in_use = |c: &Cluster| {
        let h = c.handle.clone();
        async move { h.query(|v| v.state.resource_in_use("db")).await.unwrap() }
    };
    assert_eq!(in_use(&c).await, 0);
    let (join, stop) = c.workers.pop().unwrap();
    stop.cancel();
    let _ = join.await;

    // A worker that hangs on its task, then disappears without a word.
    let hang = Executors::new().with(
        "t",
        executor_fn(|_| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, TaskFailure>(String::new())
        }),
    );
    c.spawn_worker("w2", capacity(4), hang);
    let id = c.submit("r", "t", "x", 1).await[0];
    c.wait_for("the task running", TaskStatus::Running, 1).await;
    assert_eq!(in_use(&c).await, 1);
    let (join, _stop) = c.workers.pop().unwrap();
    join.abort();
    let _ = join.await;
    // Declared dead after the idle time: back to waiting (maxattempts 1 would end it: it had
    // one attempt, so it ends in error instead), counter 0 either way.
    let deadline = Instant::now() + WAIT;
    loop {
        let status = c
            .handle
            .query(move |v| v.state.task(majordodo_core::TaskId(id)).unwrap().status)
            .await
            .unwrap();
        if status != TaskStatus::Running {
            break;
        }
        assert!(Instant::now() < deadline, "the task stays running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(in_use(&c).await, 0);

    // With attempts left, the new worker runs the second attempt with the resource again.
    let retry = {
        let (status, body) = c
            .post(json!({"action": "submitTask", "userid": "r", "tasktype": "t", "data": "again", "maxattempts": 2}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["taskId"].as_u64().unwrap()
    };
    let hang = Executors::new().with(
        "t",
        executor_fn(|_| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, TaskFailure>(String::new())
        }),
    );
    c.spawn_worker("w3", capacity(4), hang);
    c.wait_for("the retry running", TaskStatus::Running, 1)
        .await;
    let (join, _stop) = c.workers.pop().unwrap();
    join.abort();
    let _ = join.await;
    c.spawn_worker(
        "w3",
        capacity(4),
        meter.executors(&["t"], Duration::from_millis(5)),
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let t = c
            .handle
            .query(move |v| {
                let t = v.state.task(majordodo_core::TaskId(retry)).unwrap();
                (t.status, t.attempts, t.resources().len())
            })
            .await
            .unwrap();
        if t.0 == TaskStatus::Finished {
            assert_eq!(t.1, 2, "second attempt");
            assert_eq!(t.2, 1, "resource recorded on the second attempt");
            break;
        }
        assert!(Instant::now() < deadline, "retry never finished: {t:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let task = c.get(&format!("view=task&taskId={retry}")).await;
    assert_eq!(task["task"]["result"], json!("db"), "{task}");
    assert_eq!(in_use(&c).await, 0);
    c.stop().await;
}

/// A capacity of `threads` tasks with these amounts (cpu, memory, named).
fn capacity_with(threads: u32, amounts: &[(&str, u64)]) -> Capacity {
    Capacity {
        amounts: amounts.iter().map(|(d, n)| (d.to_string(), *n)).collect(),
        ..capacity(threads)
    }
}

impl Cluster {
    /// Waits until `n` workers are connected to the leader.
    async fn wait_connected(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            let connected = self
                .handle
                .query(|v| {
                    v.leader_core
                        .map_or(0, |l| l.connected_capacities().count())
                })
                .await
                .unwrap();
            if connected >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} workers"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Running tasks per user, as the `tenants` view shows them.
    async fn running_per_user(&self) -> BTreeMap<String, u64> {
        let view = self.get("view=tenants").await;
        view["tenants"]["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| {
                (
                    u["userId"].as_str().unwrap().to_string(),
                    u["runningTasks"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_only_where_every_dimension_they_need_has_room() {
    // Goal: a worker never runs tasks whose needs add up beyond what it declared, in any
    // dimension; a task needing a named amount only one worker has runs only there; tasks
    // without needs run anywhere; everything finishes. The resources view shows amounts used
    // against the connected workers' capacity.
    let mut c = start(LeaderConfig::default(), Duration::from_secs(10)).await;
    let small = Meter::default();
    let big = Meter::default();
    let hold = Duration::from_millis(60);
    c.spawn_worker(
        "small",
        capacity_with(10, &[("cpu", 1000), ("memory", 512)]),
        small.executors(&["t"], hold),
    );
    c.spawn_worker(
        "big",
        capacity_with(10, &[("cpu", 4000), ("memory", 4096), ("db:orders", 2)]),
        big.executors(&["t"], hold),
    );
    c.wait_connected(2).await;
    let task = |data: &str, extra: Value| {
        let mut t = json!({"userid": "u", "tasktype": "t", "data": data});
        t.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        t
    };
    let mut tasks = Vec::new();
    for _ in 0..12 {
        tasks.push(task("cpu800", json!({"cpu": 800, "memory": 256})));
        tasks.push(task("db", json!({"needs": {"db:orders": 1}})));
        tasks.push(task("cpu3000", json!({"cpu": 3000})));
        tasks.push(task("plain", json!({})));
    }
    let (status, body) = c
        .post(json!({"action": "submitTasks", "tasks": tasks}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // While they run, the cluster's amounts are within the declared total.
    let view = c.get("view=resources").await;
    for row in view["amounts"].as_array().unwrap() {
        assert!(row["used"].as_u64() <= row["capacity"].as_u64(), "{view}");
    }
    c.wait_for("48 tasks finished", TaskStatus::Finished, 48)
        .await;
    assert!(small.peak("cpu800") <= 1, "1000 millicores hold one 800");
    assert_eq!(small.peak("db"), 0, "the small worker has no db:orders");
    assert_eq!(
        small.peak("cpu3000"),
        0,
        "the small worker has 1000 millicores"
    );
    assert!(big.peak("db") <= 2, "peak {}", big.peak("db"));
    assert!(big.peak("cpu3000") <= 1, "4000 millicores hold one 3000");
    assert!(small.peak("plain") + big.peak("plain") >= 1);
    let view = c.get("view=resources").await;
    let cpu = view["amounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["dimension"] == json!("cpu"))
        .cloned()
        .unwrap();
    assert_eq!(
        cpu,
        json!({"dimension": "cpu", "used": 0, "capacity": 5000})
    );
    let workers = c.get("view=workers").await;
    let big_worker = workers["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == json!("big"))
        .cloned()
        .unwrap();
    assert_eq!(
        big_worker["amounts"],
        json!({"cpu": 4000, "memory": 4096, "db:orders": 2}),
        "{workers}"
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_needing_more_than_any_worker_or_its_whole_quota_is_refused_at_submit() {
    // Goal: instead of waiting forever, such a task is refused with 400 naming its field (with
    // the index in a batch), and the request creates nothing; with no worker connected nothing
    // can be judged and the task is accepted.
    let mut c = start(LeaderConfig::default(), Duration::from_secs(10)).await;
    let (status, body) = c
        .post(json!({"action": "submitTask", "userid": "u", "tasktype": "t", "cpu": 64000}))
        .await;
    assert_eq!(status, StatusCode::OK, "no worker yet: {body}");
    let meter = Meter::default();
    c.spawn_worker(
        "w1",
        capacity_with(4, &[("cpu", 2000), ("memory", 1024)]),
        meter.executors(&["t"], Duration::from_millis(5)),
    );
    c.wait_connected(1).await;
    let before = c.count(TaskStatus::Waiting).await + c.count(TaskStatus::Finished).await;
    let (status, body) = c
        .post(json!({"action": "submitTask", "userid": "u", "tasktype": "t", "cpu": 2001}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["field"], json!("cpu"), "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("more than any connected worker has") && error.contains("2000"),
        "{body}"
    );
    let (status, body) = c
        .post(json!({"action": "submitTasks", "tasks": [
            {"userid": "u", "tasktype": "t"},
            {"userid": "u", "tasktype": "t", "needs": {"gpu": 1}}]}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["field"], json!("tasks[1].needs.gpu"), "{body}");
    // More than the user's whole quota.
    let (status, body) = c
        .post(json!({"action": "setQuota", "userid": "u", "quota": {"memory": 100}}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = c
        .post(json!({"action": "submitTask", "userid": "u", "tasktype": "t", "memory": 200}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["field"], json!("memory"), "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("quota of user u"),
        "{body}"
    );
    let after = c.count(TaskStatus::Waiting).await + c.count(TaskStatus::Finished).await;
    assert_eq!(before, after, "the refusals created nothing");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_lowered_below_use_lets_running_tasks_finish_and_starts_no_new_ones() {
    // Goal: a user's quota of 4 running tasks holds; lowered to 1 while 4 run, the 4 finish
    // and no fifth starts until none runs; then one at a time; a group quota binds the same
    // way; the tenants and status views show use against quota.
    let mut c = start(LeaderConfig::default(), Duration::from_secs(10)).await;
    let (status, body) = c
        .post(json!({"action": "setQuota", "userid": "q", "quota": {"tasks": 4}}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let meter = Meter::default();
    c.spawn_worker(
        "w1",
        capacity(20),
        meter.executors(&["t"], Duration::from_millis(300)),
    );
    c.submit("q", "t", "q", 10).await;
    let deadline = Instant::now() + WAIT;
    while c.count(TaskStatus::Running).await < 4 {
        assert!(Instant::now() < deadline, "4 tasks never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let tenants = c.get("view=tenants").await;
    let q = &tenants["tenants"]["users"][0];
    assert_eq!(q["userId"], json!("q"), "{tenants}");
    assert_eq!(q["use"]["tasks"], json!(4), "{tenants}");
    assert_eq!(q["quota"], json!({"tasks": 4}), "{tenants}");
    assert_eq!(q["atQuota"], json!(true), "{tenants}");
    let status_view = c.get("view=status").await;
    assert_eq!(status_view["quotas"], json!(1), "{status_view}");
    assert_eq!(status_view["tenantsAtQuota"], json!(1), "{status_view}");
    let (status, body) = c
        .post(json!({"action": "setQuota", "userid": "q", "quota": {"tasks": 1}}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The 4 running go on; a fifth starts only once none runs.
    let deadline = Instant::now() + WAIT;
    loop {
        let started = meter.started().len();
        let running = c.count(TaskStatus::Running).await;
        if started > 4 {
            break;
        }
        assert!(running <= 4);
        assert!(Instant::now() < deadline, "no task started after the 4");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        c.count(TaskStatus::Finished).await,
        4,
        "the fifth started only after the first four ended"
    );
    c.wait_for("all 10 finished", TaskStatus::Finished, 10)
        .await;
    assert_eq!(meter.peak("q"), 4, "never more than the first quota");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_share_gives_a_small_tenant_its_weighted_share_against_a_large_backlog() {
    // Goal: a user with a large backlog fills an idle worker (work-conserving), but once a user
    // with a few tasks and weight 3 arrives, freed threads go to it until it runs 3 of the 4,
    // although the first user's tasks are older; all finish.
    let mut c = start(LeaderConfig::default(), Duration::from_secs(10)).await;
    let (status, body) = c
        .post(json!({"action": "setServiceLevel", "userid": "small", "group": 1, "weight": 3}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["serviceLevel"]["weight"], json!(3), "{body}");
    let meter = Meter::default();
    c.spawn_worker(
        "w1",
        capacity(4),
        meter.executors(&["t"], Duration::from_millis(150)),
    );
    c.submit("big", "t", "big", 60).await;
    let deadline = Instant::now() + WAIT;
    while c.running_per_user().await.get("big").copied().unwrap_or(0) < 4 {
        assert!(Instant::now() < deadline, "big never filled the worker");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.submit("small", "t", "small", 12).await;
    let deadline = Instant::now() + WAIT;
    let mut seen = false;
    while !seen {
        let running = c.running_per_user().await;
        let (b, s) = (
            running.get("big").copied().unwrap_or(0),
            running.get("small").copied().unwrap_or(0),
        );
        assert!(
            s <= 3,
            "small runs {s} of 4 with weight 3 of 4: {running:?}"
        );
        seen = s == 3 && b == 1;
        assert!(
            Instant::now() < deadline,
            "small never got its share: {running:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.wait_for("all finished", TaskStatus::Finished, 72).await;
    c.stop().await;
}
