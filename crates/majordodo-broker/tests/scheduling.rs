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
