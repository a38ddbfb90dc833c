//! The HTTP API against a real broker (memory log): requests shaped exactly as the original's
//! Java client sends them, every view and filter, the bad-input battery (each case leaves the
//! state unchanged), authentication and authorization, broker failures, and the API over a real
//! socket. Running and ended tasks come from a worker speaking raw frames to the real worker
//! listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::{SinkExt, StreamExt};
use majordodo_broker::http::auth::{hash_password_with, token_digest};
use majordodo_broker::http::{self, HttpConfig, HttpSettings, UserConfig, UserRole};
use majordodo_broker::worker_listener::{self, ListenerConfig};
use majordodo_broker::{Broker, BrokerConfig, SystemClock};
use majordodo_core::{DefaultGroupMapper, TaskStatus};
use majordodo_log::{CommitLog, FaultSchedule, FaultyLog, MemoryLog, MemoryStore};
use majordodo_proto::worker::{
    Capacity, Connect, FinishReport, Finished, Hello, Message, Outcome, SharedSecret, WorkerCodec,
    random_nonce, worker_proof,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Bound on every wait, so a bug fails a test instead of hanging it.
const WAIT: Duration = Duration::from_secs(10);
const SECRET: &[u8] = b"worker secret";
const ADMIN_PASSWORD: &str = "admin password";
const ADMIN_TOKEN: &str = "mdt_admin-token-for-tests";
const ALICE_PASSWORD: &str = "alice password";
const BOB_TOKEN: &str = "mdt_bob-token-for-tests";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

fn admin() -> String {
    basic("admin", ADMIN_PASSWORD)
}

fn alice() -> String {
    basic("alice", ALICE_PASSWORD)
}

fn bob() -> String {
    format!("Bearer {BOB_TOKEN}")
}

/// Users: `admin` (password and token), `alice` (user, password), `bob` (user, token).
fn config() -> HttpConfig {
    let mut rng = StdRng::seed_from_u64(42);
    HttpConfig {
        users: vec![
            UserConfig {
                name: "admin".into(),
                role: UserRole::Admin,
                password_hash: Some(hash_password_with(ADMIN_PASSWORD, 1_000, &mut rng)),
                token_sha256: Some(token_digest(ADMIN_TOKEN)),
            },
            UserConfig {
                name: "alice".into(),
                role: UserRole::User,
                password_hash: Some(hash_password_with(ALICE_PASSWORD, 1_000, &mut rng)),
                token_sha256: None,
            },
            UserConfig {
                name: "bob".into(),
                role: UserRole::User,
                password_hash: None,
                token_sha256: Some(token_digest(BOB_TOKEN)),
            },
        ],
        ..HttpConfig::default()
    }
}

struct Harness {
    broker: Option<Broker>,
    handle: majordodo_broker::BrokerHandle,
    stop: CancellationToken,
    app: Router,
    settings: HttpSettings,
    log: Arc<FaultyLog<MemoryLog>>,
}

impl Harness {
    async fn start() -> Harness {
        Self::with_config(config()).await
    }

    async fn with_config(config: HttpConfig) -> Harness {
        Self::with_leader(config, majordodo_core::LeaderConfig::default()).await
    }

    async fn with_leader(config: HttpConfig, leader: majordodo_core::LeaderConfig) -> Harness {
        let store = MemoryStore::new();
        let log = Arc::new(FaultyLog::new(
            MemoryLog::open(&store),
            FaultSchedule::none(),
        ));
        let stop = CancellationToken::new();
        let broker = Broker::start(
            BrokerConfig {
                broker_id: "broker-1".into(),
                leader,
                ..BrokerConfig::default()
            },
            log.clone() as Arc<dyn CommitLog>,
            None,
            Arc::new(DefaultGroupMapper),
            Arc::new(SystemClock),
            stop.clone().cancelled_owned(),
        )
        .await
        .expect("broker starts");
        let settings = config.validate().expect("valid config");
        let handle = broker.handle();
        let app = http::router(handle.clone(), settings.clone());
        Harness {
            broker: Some(broker),
            handle,
            stop,
            app,
            settings,
            log,
        }
    }

    async fn call(&self, req: Request<Body>) -> (StatusCode, HeaderMap, Value) {
        let res = tokio::time::timeout(WAIT, self.app.clone().oneshot(req))
            .await
            .expect("answered in time")
            .expect("infallible");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), 64 << 20)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "answer is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        (status, headers, body)
    }

    /// A GET as the Java client sends it (`?k=v&...`, credentials preemptively).
    async fn get(&self, query: &str, auth: &str) -> (StatusCode, Value) {
        let req = Request::get(format!("/majordodo?{query}"))
            .header(header::AUTHORIZATION, auth)
            .body(Body::empty())
            .unwrap();
        let (s, _, b) = self.call(req).await;
        (s, b)
    }

    /// A POST as the Java client sends it (JSON, `application/json;charset=utf-8`).
    async fn post(&self, body: impl Into<Body>, auth: &str) -> (StatusCode, Value) {
        let req = Request::post("/majordodo")
            .header(header::AUTHORIZATION, auth)
            .header(header::CONTENT_TYPE, "application/json;charset=utf-8")
            .body(body.into())
            .unwrap();
        let (s, _, b) = self.call(req).await;
        (s, b)
    }

    async fn post_json(&self, body: Value, auth: &str) -> (StatusCode, Value) {
        self.post(serde_json::to_vec(&body).unwrap(), auth).await
    }

    /// What a refused request must leave unchanged: a digest of the whole state's snapshot
    /// encoding (tasks, workers, slots, counters), and the log's last position (nothing was
    /// written, not even an entry that changes nothing).
    async fn state_mark(&self) -> (String, u64) {
        let digest = self
            .handle
            .query(|v| {
                let bytes = majordodo_proto::snapshot::encode_snapshot(&v.state.snapshot_source());
                let digest = sha2::Sha256::digest(&bytes);
                digest
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            })
            .await
            .unwrap();
        (digest, self.log.last_lsn().0)
    }

    /// Polls the broker until `f` holds, within [`WAIT`].
    async fn wait_until(
        &self,
        what: &str,
        f: impl Fn(&majordodo_core::BrokerState) -> bool + Clone + Send + 'static,
    ) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let f = f.clone();
            if self.handle.query(move |v| f(v.state)).await.unwrap() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(b) = self.broker.take() {
            let _ = b.wait().await;
        }
    }
}

/// The Java client's `Long.parseLong(map.get(k) + "")`: works for numbers and numeric strings.
fn java_long(v: &Value) -> i64 {
    let text = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    text.parse()
        .unwrap_or_else(|_| panic!("the Java client cannot parse {v} as a long"))
}

/// The body of the Java client's submitTask, keyed as its HashMap.
fn java_submit(user: &str, task_type: &str, data: &str) -> Value {
    json!({
        "action": "submitTask", "userid": user, "tasktype": task_type, "data": data,
        "maxattempts": "1"
    })
}

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, field: Option<&str>) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["ok"], json!(false), "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    if let Some(f) = field {
        assert_eq!(body["field"], json!(f), "{body}");
    }
}

/// A small valid pool archive (a zip with a script).
fn pool_zip() -> Vec<u8> {
    use majordodo_testkit::archives::{executable, zip};
    zip(&[executable("run.sh", b"#!/bin/sh\necho ran\n")])
}

fn create_pool_body(id: &str, ttl: i64, archive: &[u8]) -> Value {
    json!({"action": "createCodePool", "id": id, "ttl": ttl, "data": STANDARD.encode(archive)})
}

/// Creates pool `id` as an admin, asserting it worked.
async fn create_pool(h: &Harness, id: &str) {
    let (s, b) = h
        .post_json(create_pool_body(id, 0, &pool_zip()), &admin())
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

// ----- Java-client-shaped requests -----

#[tokio::test]
async fn java_shaped_submit_task_is_created_with_the_original_defaults() {
    // Goal: a submitTask with numbers as strings (and requestedStartTime as a number, as the Java
    // client sends it) creates the task; the answer carries taskId, result, outcome, error, ok,
    // action, and the task view shows what was submitted in a shape the Java client parses.
    let h = Harness::start().await;
    create_pool(&h, "pool").await;
    let deadline = now_ms() + 3_600_000;
    let start = now_ms() - 1_000;
    let (s, b) = h
        .post_json(
            json!({"action": "submitTask", "userid": "u1", "tasktype": "mytype", "data": "payload",
                   "maxattempts": "3", "attempt": "1", "deadline": deadline.to_string(),
                   "requestedStartTime": start, "slot": "slot-a", "codePoolId": "pool",
                   "mode": "object"}),
            &admin(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["ok"], json!(true));
    assert_eq!(b["error"], json!(""));
    assert_eq!(b["action"], json!("submitTask"));
    assert_eq!(b["result"], Value::Null);
    assert_eq!(b["outcome"], Value::Null);
    let id = java_long(&b["taskId"]);
    assert!(id > 0);

    let (s, v) = h.get(&format!("view=task&taskId={id}"), &admin()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["ok"], json!(true));
    let t = &v["task"];
    assert_eq!(java_long(&t["taskId"]), id);
    assert_eq!(t["userId"], json!("u1"));
    assert_eq!(t["tasktype"], json!("mytype"));
    assert_eq!(t["data"], json!("payload"));
    assert_eq!(t["status"], json!("waiting"));
    assert_eq!(java_long(&t["maxattempts"]), 3);
    assert_eq!(java_long(&t["attempts"]), 1);
    assert_eq!(java_long(&t["deadline"]), deadline);
    assert_eq!(java_long(&t["requestedStartTime"]), start);
    assert!(java_long(&t["createdTimestamp"]) > 0);
    assert_eq!(t["slot"], json!("slot-a"));
    assert_eq!(t["codePoolId"], json!("pool"));
    assert_eq!(t["mode"], json!("object"));
    assert_eq!(t["workerId"], Value::Null);
    assert_eq!(t["result"], Value::Null);

    // Defaults: maxattempts 1, attempt 0, no deadline, no start time; numbers as numbers too.
    let (_, b) = h
        .post_json(
            json!({"action": "submitTask", "userid": "u1", "tasktype": "t"}),
            &admin(),
        )
        .await;
    let (_, v) = h
        .get(
            &format!("view=task&taskId={}", java_long(&b["taskId"])),
            &admin(),
        )
        .await;
    assert_eq!(v["task"]["maxattempts"], json!(1));
    assert_eq!(v["task"]["attempts"], json!(0));
    assert_eq!(v["task"]["deadline"], json!(0));
    assert_eq!(v["task"]["requestedStartTime"], json!(0));
    assert_eq!(v["task"]["data"], json!(""));
    assert!(v["task"].get("mode").is_none(), "mode only when set");
    let (s, b) = h
        .post_json(
            json!({"action": "submitTask", "userid": "u1", "tasktype": "t", "maxattempts": 0,
                   "attempt": 0, "deadline": 0, "requestedStartTime": 0}),
            &admin(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    h.stop().await;
}

#[tokio::test]
async fn busy_slot_answers_task_id_zero_with_the_outcome_in_result_and_outcome() {
    // Goal: the original's slot semantics: not an error, taskId 0, the reason in both fields.
    let h = Harness::start().await;
    let mut first = java_submit("u", "t", "x");
    first["slot"] = json!("s1");
    let (_, b) = h.post_json(first.clone(), &admin()).await;
    assert!(java_long(&b["taskId"]) > 0);
    let (s, b) = h.post_json(first, &admin()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["ok"], json!(true));
    assert_eq!(java_long(&b["taskId"]), 0);
    assert_eq!(b["result"], json!("slot s1 already assigned"));
    assert_eq!(b["outcome"], json!("slot s1 already assigned"));
    h.stop().await;
}

#[tokio::test]
async fn a_resubmission_with_the_same_idempotency_key_answers_the_first_task() {
    // Goal: submitTask and submitTasks with an idempotencyKey create one task per key and user:
    // the same key again (alone, or twice in one batch) answers the first task's id and writes
    // nothing, while another user's identical key is another task.
    let h = Harness::start().await;
    let keyed = |user: &str, key: &str| {
        let mut b = java_submit(user, "t", "x");
        b["idempotencyKey"] = json!(key);
        b
    };
    let (s, b) = h.post_json(keyed("alice", "order-7"), &alice()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let first = java_long(&b["taskId"]);
    assert!(first > 0);
    let mark = h.state_mark().await;
    let (s, b) = h.post_json(keyed("alice", "order-7"), &alice()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(java_long(&b["taskId"]), first);
    assert_eq!(b["result"], Value::Null);
    assert_eq!(h.state_mark().await, mark, "a known key writes nothing");
    let (_, b) = h.post_json(keyed("bob", "order-7"), &bob()).await;
    assert_ne!(java_long(&b["taskId"]), first, "keys are per user");

    let task = |key: &str| json!({"userid": "alice", "tasktype": "t", "idempotencyKey": key});
    let (s, b) = h
        .post_json(
            json!({"action": "submitTasks", "tasks": [
                task("order-7"), task("order-8"), task("order-8"),
                {"userid": "alice", "tasktype": "t"}]}),
            &alice(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let ids: Vec<i64> = b["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| java_long(&r["taskId"]))
        .collect();
    assert_eq!(ids[0], first, "known key in a batch");
    assert_eq!(ids[1], ids[2], "one key twice in one batch is one task");
    assert!(ids[1] > first && ids[3] > ids[1]);
    h.wait_until("four tasks", |s| s.task_count() == 4).await;
    h.stop().await;
}

#[tokio::test]
async fn java_shaped_submit_tasks_reads_every_field_per_task() {
    // Goal: a submitTasks batch as the Java client sends it is one request answered per task in
    // order, and requestedStartTime, codePoolId and mode are read from each task (the original
    // read them from the outer object).
    let h = Harness::start().await;
    create_pool(&h, "p2").await;
    let later = now_ms() + 3_600_000;
    let body = json!({"action": "submitTasks", "tasks": [
        {"userid": "u1", "tasktype": "a", "data": "d1", "maxattempts": "2"},
        {"userid": "u2", "tasktype": "b", "data": "d2", "maxattempts": 0, "slot": "s",
         "requestedStartTime": later, "codePoolId": "p2", "mode": "object"},
        {"userid": "u3", "tasktype": "c", "data": "d3", "maxattempts": "1", "slot": "s"}
    ]});
    let (s, b) = h.post_json(body, &admin()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["ok"], json!(true));
    assert_eq!(b["error"], json!(""));
    assert_eq!(b["action"], json!("submitTasks"));
    let results = b["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    let ids: Vec<i64> = results.iter().map(|r| java_long(&r["taskId"])).collect();
    assert!(ids[0] > 0 && ids[1] > ids[0]);
    assert_eq!(ids[2], 0);
    assert_eq!(results[2]["outcome"], json!("slot s already assigned"));
    assert_eq!(results[0]["result"], Value::Null);

    let (_, v) = h
        .get(&format!("view=task&taskId={}", ids[1]), &admin())
        .await;
    let t = &v["task"];
    assert_eq!(t["status"], json!("delayed"));
    assert_eq!(java_long(&t["requestedStartTime"]), later);
    assert_eq!(t["codePoolId"], json!("p2"));
    assert_eq!(t["mode"], json!("object"));
    assert_eq!(java_long(&t["maxattempts"]), 0);
    let (_, v) = h
        .get(&format!("view=task&taskId={}", ids[0]), &admin())
        .await;
    assert_eq!(v["task"]["maxattempts"], json!(2));
    assert!(v["task"].get("codePoolId").is_none());

    let (s, b) = h
        .post_json(json!({"action": "submitTasks", "tasks": []}), &admin())
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["results"], json!([]));
    h.stop().await;
}

/// A worker speaking raw frames to the real worker listener.
struct RawWorker {
    framed: Framed<TcpStream, WorkerCodec>,
}

impl RawWorker {
    /// Connects and completes the handshake; serves only group 5 (users named "5").
    async fn connect(addr: SocketAddr, worker_id: &str) -> RawWorker {
        let socket = TcpStream::connect(addr).await.unwrap();
        let mut framed = Framed::new(socket, WorkerCodec::default());
        let nonce = random_nonce();
        let process_id = format!("{worker_id}-process");
        framed
            .send(Message::Hello(Hello {
                worker_id: worker_id.into(),
                process_id: process_id.clone(),
                location: "test-host".into(),
                client_nonce: nonce.to_vec(),
                credential_id: String::new(),
            }))
            .await
            .unwrap();
        let mut w = RawWorker { framed };
        let Message::Challenge(ch) = w.recv().await else {
            panic!("challenge expected")
        };
        let proof = worker_proof(SECRET, &ch.broker_nonce, &nonce, worker_id, &process_id);
        w.framed
            .send(Message::Connect(Connect {
                proof: proof.to_vec(),
                capacity: Capacity {
                    max_threads: 10,
                    max_threads_by_task_type: Default::default(),
                    groups: vec![5],
                    excluded_groups: vec![],
                    ..Default::default()
                },
                running: vec![],
                task_shapes: false,
            }))
            .await
            .unwrap();
        let Message::Welcome(_) = w.recv().await else {
            panic!("welcome expected")
        };
        w
    }

    async fn recv(&mut self) -> Message {
        tokio::time::timeout(WAIT, self.framed.next())
            .await
            .expect("a frame in time")
            .expect("connection open")
            .expect("a valid frame")
    }

    /// Receives assignments until `n` arrived; returns (task id, attempt).
    async fn assignments(&mut self, n: usize) -> Vec<(u64, u32)> {
        let mut got = Vec::new();
        while got.len() < n {
            if let Message::Assign(a) = self.recv().await {
                got.extend(a.assignments.iter().map(|a| (a.task_id, a.attempt)));
            }
        }
        got
    }

    async fn finish(&mut self, seq: u64, task: (u64, u32), outcome: Outcome, result: &str) {
        self.framed
            .send(Message::Finished(Finished {
                seq,
                reports: vec![FinishReport {
                    task_id: task.0,
                    attempt: task.1,
                    outcome: outcome as i32,
                    result: result.into(),
                    retry_after_ms: 0,
                }],
            }))
            .await
            .unwrap();
        loop {
            if let Message::FinishedAck(ack) = self.recv().await {
                assert_eq!(ack.seq, seq);
                return;
            }
        }
    }
}

/// Tasks in every status: finished, error, running on `w1` (all of user "5", type "run"),
/// waiting (alice, types "wait" with slot S1 and "other"), delayed (alice, "wait").
struct Scenario {
    finished: u64,
    error: u64,
    running: u64,
    waiting_slot: u64,
    waiting_other: u64,
    delayed: u64,
}

async fn scenario(h: &Harness) -> (Scenario, RawWorker, CancellationToken) {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(worker_listener::run(
        socket,
        ListenerConfig::new("broker-1", SharedSecret::new(SECRET)),
        h.broker.as_ref().unwrap().worker_events(),
        stop.clone().cancelled_owned(),
    ));
    let mut worker = RawWorker::connect(addr, "w1").await;
    let (s, b) = h
        .post_json(
            json!({"action": "submitTasks", "tasks": [
                {"userid": "5", "tasktype": "run", "data": "a", "maxattempts": "1"},
                {"userid": "5", "tasktype": "run", "data": "b", "maxattempts": "1"},
                {"userid": "5", "tasktype": "run", "data": "c", "maxattempts": "1"}]}),
            &admin(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let mut assigned = worker.assignments(3).await;
    assigned.sort_unstable();
    worker
        .finish(1, assigned[0], Outcome::Finished, "done")
        .await;
    worker.finish(2, assigned[1], Outcome::Error, "boom").await;
    let (_, b) = h
        .post_json(
            json!({"action": "submitTasks", "tasks": [
                {"userid": "alice", "tasktype": "wait", "data": "w", "slot": "S1"},
                {"userid": "alice", "tasktype": "other", "data": "o"},
                {"userid": "alice", "tasktype": "wait", "data": "d",
                 "requestedStartTime": (now_ms() + 3_600_000).to_string()}]}),
            &admin(),
        )
        .await;
    let ids: Vec<u64> = b["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| java_long(&r["taskId"]) as u64)
        .collect();
    h.wait_until("statuses settle", |s| {
        s.count(TaskStatus::Finished) == 1
            && s.count(TaskStatus::Error) == 1
            && s.count(TaskStatus::Running) == 1
    })
    .await;
    let sc = Scenario {
        finished: assigned[0].0,
        error: assigned[1].0,
        running: assigned[2].0,
        waiting_slot: ids[0],
        waiting_other: ids[1],
        delayed: ids[2],
    };
    (sc, worker, stop)
}

fn ids_of(view: &Value) -> Vec<u64> {
    let mut ids: Vec<u64> = view["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("tasks list in {view}"))
        .iter()
        .map(|t| java_long(&t["taskId"]) as u64)
        .collect();
    ids.sort_unstable();
    ids
}

#[tokio::test]
async fn every_view_and_filter_answers_in_the_original_shape() {
    // Goal: status, overview, workers, task, tasks (each filter, max, paging) and tasksoverview
    // answer what the state holds, with the original's field names, read as the Java client reads
    // them.
    let h = Harness::start().await;
    let (sc, _worker, stop_listener) = scenario(&h).await;

    let (s, st) = h.get("view=status", &admin()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(st["ok"], json!(true));
    assert_eq!(st["status"], json!("LEADER"));
    assert_eq!(java_long(&st["tasks"]), 6);
    assert_eq!(java_long(&st["runningtasks"]), 1);
    assert_eq!(java_long(&st["waitingtasks"]), 2);
    assert_eq!(java_long(&st["errortasks"]), 1);
    assert_eq!(java_long(&st["finishedtasks"]), 1);
    assert_eq!(java_long(&st["delayedtasks"]), 1);
    assert_eq!(java_long(&st["pendingtasks"]), 0);
    assert!(st["currentLedgerId"].is_string() && st["currentSequenceNumber"].is_string());
    assert!(java_long(&st["currentSequenceNumber"]) > 0);
    assert!(st["version"].is_string());

    for view in ["view=overview", "", "view=workers"] {
        let (s, o) = h.get(view, &admin()).await;
        assert_eq!(s, StatusCode::OK, "{view}");
        let w = &o["workers"][0];
        assert_eq!(w["id"], json!("w1"));
        assert_eq!(w["processId"], json!("w1-process"));
        assert_eq!(w["status"], json!("CONNECTED"));
        assert_eq!(w["location"], json!("test-host"));
        assert!(java_long(&w["lastConnectionTs"]) > 0);
        assert_eq!(o["status"]["clusterMode"], json!("LEADER"));
        assert_eq!(o["status"]["delayedTasks"], json!(1));
        assert_eq!(o["status"]["pendingTasks"], json!(0));
        // A plain user sees the worker, but not its process id nor where it runs.
        let (s, o) = h.get(view, &alice()).await;
        assert_eq!(s, StatusCode::OK, "{view}");
        let w = &o["workers"][0];
        assert_eq!(w["id"], json!("w1"), "{view}");
        assert_eq!(w["status"], json!("CONNECTED"), "{view}");
        assert_eq!(w["processId"], json!(""), "{view}: {o}");
        assert_eq!(w["location"], json!(""), "{view}: {o}");
        assert!(!o.to_string().contains("w1-process"), "{view}: {o}");
        assert!(!o.to_string().contains("test-host"), "{view}: {o}");
    }
    for query in [
        format!("view=task&taskId={}", sc.finished),
        "view=tasks".to_owned(),
    ] {
        let (_, t) = h.get(&query, &alice()).await;
        let text = t.to_string();
        assert!(
            !text.contains("w1-process") && !text.contains("test-host"),
            "{query}: {text}"
        );
    }

    let (_, t) = h
        .get(&format!("view=task&taskId={}", sc.finished), &admin())
        .await;
    assert_eq!(t["task"]["status"], json!("finished"));
    assert_eq!(t["task"]["result"], json!("done"));
    assert_eq!(t["task"]["workerId"], json!("w1"));
    assert_eq!(t["task"]["attempts"], json!(1));
    let (_, t) = h
        .get(&format!("view=task&taskId={}", sc.error), &admin())
        .await;
    assert_eq!(t["task"]["status"], json!("error"));
    let (_, t) = h.get("view=task&taskId=999999", &admin()).await;
    assert_eq!(t["ok"], json!(true));
    assert_eq!(t["task"], json!({}));

    let list = |q: String| {
        let h = &h;
        async move {
            let (s, v) = h.get(&format!("view=tasks&{q}"), &admin()).await;
            assert_eq!(s, StatusCode::OK, "{q}: {v}");
            assert_eq!(
                java_long(&v["count"]) as usize,
                v["tasks"].as_array().unwrap().len()
            );
            v
        }
    };
    let all = list(String::new()).await;
    assert_eq!(ids_of(&all).len(), 6);
    assert_eq!(all["max"], json!(100));
    assert_eq!(all["truncated"], json!(false));
    assert_eq!(ids_of(&list("status=all".into()).await).len(), 6);
    assert_eq!(
        ids_of(&list("status=running&workerId=W1".into()).await),
        vec![sc.running]
    );
    assert_eq!(
        ids_of(&list("status=running&workerId=nobody".into()).await),
        Vec::<u64>::new()
    );
    assert_eq!(
        ids_of(&list("status=finished".into()).await),
        vec![sc.finished]
    );
    assert_eq!(ids_of(&list("status=error".into()).await), vec![sc.error]);
    assert_eq!(
        ids_of(&list("status=delayed".into()).await),
        vec![sc.delayed]
    );
    let mut waiting = vec![sc.waiting_slot, sc.waiting_other];
    waiting.sort_unstable();
    assert_eq!(ids_of(&list("status=waiting".into()).await), waiting);
    assert_eq!(
        ids_of(&list("status=waiting&tasktype=WAIT".into()).await),
        vec![sc.waiting_slot]
    );
    assert_eq!(ids_of(&list("tasktype=wait".into()).await).len(), 2);
    assert_eq!(ids_of(&list("slot=s1".into()).await), vec![sc.waiting_slot]);
    assert_eq!(ids_of(&list("userId=ALICE".into()).await).len(), 3);
    assert_eq!(ids_of(&list("workerId=w1".into()).await).len(), 3);
    assert_eq!(
        ids_of(&list("workerId=w1&status=finished&tasktype=run&userId=5".into()).await),
        vec![sc.finished]
    );
    assert_eq!(
        ids_of(&list("workerId=&slot=&status=".into()).await).len(),
        6,
        "empty filters are no filters"
    );

    // max and paging in id order.
    let page = list("max=4".into()).await;
    assert_eq!(page["max"], json!(4));
    assert_eq!(ids_of(&page).len(), 4);
    let next = java_long(&page["nextTaskId"]);
    let rest = list(format!("max=4&fromTaskId={next}")).await;
    assert_eq!(ids_of(&rest).len(), 2);
    assert!(rest.get("nextTaskId").is_none());
    let mut both = ids_of(&page);
    both.extend(ids_of(&rest));
    assert_eq!(both, ids_of(&all));
    assert_eq!(ids_of(&list("max=0".into()).await).len(), 0);
    assert_eq!(
        list("max=999999".into()).await["max"],
        json!(10_000),
        "max is capped"
    );

    let (_, o) = h.get("view=tasksoverview", &admin()).await;
    assert_eq!(o["tasks"], json!({"run": 3, "wait": 2, "other": 1}));
    assert_eq!(java_long(&o["count"]), 6);
    let (_, o) = h.get("view=tasksoverview&filter=waiting", &admin()).await;
    assert_eq!(o["tasks"], json!({"wait": 1, "other": 1}));
    let (_, o) = h
        .get("view=tasksoverview&filter=waiting&tasktype=Wait", &admin())
        .await;
    assert_eq!(o["tasks"], json!({"wait": 1}));
    let (_, o) = h
        .get("view=tasksoverview&workerId=w1&filter=running", &admin())
        .await;
    assert_eq!(o["tasks"], json!({"run": 1}));
    assert_eq!(o["status"]["runningTasks"], json!(1));

    stop_listener.cancel();
    h.stop().await;
}

#[tokio::test]
async fn scan_budget_cuts_a_listing_and_says_so() {
    // Goal: with a scan budget smaller than the task map, a listing stops, reports it was
    // truncated, and gives the id to continue from; counts say they are partial.
    let mut cfg = config();
    cfg.scan_budget = 3;
    let h = Harness::with_config(cfg).await;
    let tasks: Vec<Value> = (0..5)
        .map(|i| json!({"userid": "u", "tasktype": format!("t{i}")}))
        .collect();
    h.post_json(json!({"action": "submitTasks", "tasks": tasks}), &admin())
        .await;
    let (_, v) = h.get("view=tasks&tasktype=t4", &admin()).await;
    assert_eq!(v["truncated"], json!(true));
    assert_eq!(v["scanned"], json!(3));
    assert_eq!(v["tasks"], json!([]));
    let next = java_long(&v["nextTaskId"]);
    let (_, v) = h
        .get(
            &format!("view=tasks&tasktype=t4&fromTaskId={next}"),
            &admin(),
        )
        .await;
    assert_eq!(v["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(v["truncated"], json!(false));
    let (_, o) = h.get("view=tasksoverview", &admin()).await;
    assert_eq!(o["truncated"], json!(true));
    assert_eq!(o["count"], json!(3));
    h.stop().await;
}

// ----- bad input -----

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_changes_nothing() {
    // Goal: every malformed request gets a 4xx JSON error naming the field and the problem, and
    // the broker holds exactly what it held before.
    let h = Harness::start().await;
    h.post_json(java_submit("u", "t", "x"), &admin()).await;
    let (_, issued) = h
        .post_json(
            json!({"action": "addWorkerCredential", "workerId": "w9"}),
            &admin(),
        )
        .await;
    let revoked_id = issued["credentialId"].as_str().unwrap().to_owned();
    let (s, _) = h
        .post_json(
            json!({"action": "revokeWorkerCredential", "credentialId": revoked_id}),
            &admin(),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let before = h.state_mark().await;
    let ok = || json!({"action": "submitTask", "userid": "u", "tasktype": "t"});
    let with = |k: &str, v: Value| {
        let mut b = ok();
        b[k] = v;
        b
    };
    let cases: Vec<(&str, Body, &str)> = vec![
        (
            "malformed json",
            Body::from("{\"action\": \"submitTask\","),
            "body",
        ),
        (
            "invalid utf-8",
            Body::from(b"{\"action\":\"submitTask\",\"userid\":\"\xff\"}".to_vec()),
            "body",
        ),
        ("not an object", Body::from("[1,2]"), "body"),
        ("empty body", Body::empty(), "body"),
        ("nesting too deep", Body::from("[".repeat(100_000)), "body"),
        (
            "nesting too deep inside a field",
            Body::from(format!(
                r#"{{"action":"submitTask","userid":"u","tasktype":"t","needs":{}}}"#,
                "[".repeat(100)
            )),
            "needs[0][0][0][0][0]",
        ),
        (
            "duplicate key",
            Body::from(r#"{"action":"submitTask","userid":"u","tasktype":"t","userid":"v"}"#),
            "userid",
        ),
        (
            "duplicate key in a task of a batch",
            Body::from(
                r#"{"action":"submitTasks","tasks":[{"userid":"u","tasktype":"t","data":"a","data":"b"}]}"#,
            ),
            "tasks[0].data",
        ),
        (
            "plus sign in a numeric string",
            json_body(with("maxattempts", json!("+3"))),
            "maxattempts",
        ),
        (
            "plus sign in a signed numeric string",
            json_body(with("priority", json!("+3"))),
            "priority",
        ),
        (
            "space in a numeric string",
            json_body(with("deadline", json!(" 3"))),
            "deadline",
        ),
        (
            "tiny arrays in place of tasks",
            Body::from(format!(
                r#"{{"action":"submitTasks","tasks":[{}]}}"#,
                vec!["[]"; 10_000].join(",")
            )),
            "tasks[0]",
        ),
        (
            "missing action",
            Body::from(r#"{"userid":"u","tasktype":"t"}"#),
            "action",
        ),
        (
            "action not a string",
            Body::from(r#"{"action":5}"#),
            "action",
        ),
        (
            "unknown action",
            Body::from(r#"{"action":"explode"}"#),
            "action",
        ),
        (
            "commit without a transaction",
            Body::from(r#"{"action":"commitTransaction"}"#),
            "transaction",
        ),
        (
            "rollback of transaction 0",
            Body::from(r#"{"action":"rollbackTransaction","transaction":"0"}"#),
            "transaction",
        ),
        (
            "begin with a field",
            Body::from(r#"{"action":"beginTransaction","userid":"u"}"#),
            "userid",
        ),
        (
            "cancel without a task",
            Body::from(r#"{"action":"cancelTask"}"#),
            "taskId",
        ),
        (
            "cancel of a negative task",
            Body::from(r#"{"action":"cancelTask","taskId":-4}"#),
            "taskId",
        ),
        (
            "key inside a transaction",
            json_body(with("transaction", json!(1)).tap_key()),
            "idempotencyKey",
        ),
        (
            "createCodePool with empty data",
            Body::from(r#"{"action":"createCodePool","id":"p","data":""}"#),
            "data",
        ),
        (
            "createCodePool without data",
            Body::from(r#"{"action":"createCodePool","id":"p"}"#),
            "data",
        ),
        (
            "createCodePool without id",
            json_body(json!({"action": "createCodePool", "data": STANDARD.encode(pool_zip())})),
            "id",
        ),
        (
            "createCodePool with a null id",
            json_body(
                json!({"action": "createCodePool", "id": null, "data": STANDARD.encode(pool_zip())}),
            ),
            "id",
        ),
        (
            "createCodePool with an empty id",
            json_body(create_pool_body("", 0, &pool_zip())),
            "id",
        ),
        (
            "createCodePool with a negative ttl",
            json_body(create_pool_body("p", -5, &pool_zip())),
            "ttl",
        ),
        (
            "createCodePool with data that is not base64",
            Body::from(r#"{"action":"createCodePool","id":"p","data":"%%%"}"#),
            "data",
        ),
        (
            "createCodePool with data that is not an archive",
            json_body(create_pool_body("p", 0, b"just some text")),
            "data",
        ),
        (
            "createCodePool with an unknown field",
            json_body(
                json!({"action": "createCodePool", "id": "p", "data": "UEsFBg==", "color": 1}),
            ),
            "color",
        ),
        (
            "deleteCodePool without id",
            Body::from(r#"{"action":"deleteCodePool"}"#),
            "id",
        ),
        (
            "submitTask naming an unknown code pool",
            json_body(with("codePoolId", json!("no-such-pool"))),
            "codePoolId",
        ),
        (
            "submitTasks naming an unknown code pool",
            json_body(json!({"action": "submitTasks", "tasks": [
                {"userid": "u", "tasktype": "t"},
                {"userid": "u", "tasktype": "t", "codePoolId": "no-such-pool"}]})),
            "tasks[1].codePoolId",
        ),
        (
            "missing tasktype",
            Body::from(r#"{"action":"submitTask","userid":"u"}"#),
            "tasktype",
        ),
        (
            "missing userid",
            Body::from(r#"{"action":"submitTask","tasktype":"t"}"#),
            "userid",
        ),
        (
            "empty userid",
            json_body(with("userid", json!(""))),
            "userid",
        ),
        (
            "userid not a string",
            json_body(with("userid", json!(12))),
            "userid",
        ),
        (
            "data not a string",
            json_body(with("data", json!({"a": 1}))),
            "data",
        ),
        (
            "negative maxattempts",
            json_body(with("maxattempts", json!("-1"))),
            "maxattempts",
        ),
        (
            "absurd maxattempts",
            json_body(with("maxattempts", json!(1_000_000))),
            "maxattempts",
        ),
        (
            "fractional attempt",
            json_body(with("attempt", json!(1.5))),
            "attempt",
        ),
        (
            "attempt not below maxattempts",
            json_body(
                json!({"action": "submitTask", "userid": "u", "tasktype": "t",
                             "maxattempts": 2, "attempt": 2}),
            ),
            "attempt",
        ),
        (
            "non-numeric deadline",
            json_body(with("deadline", json!("tomorrow"))),
            "deadline",
        ),
        (
            "deadline after year 9999",
            json_body(with("deadline", json!(253_402_300_800_000i64))),
            "deadline",
        ),
        (
            "negative start",
            json_body(with("requestedStartTime", json!(-1))),
            "requestedStartTime",
        ),
        (
            "huge start",
            json_body(with("requestedStartTime", json!("99999999999999999999999"))),
            "requestedStartTime",
        ),
        (
            "slot too long",
            json_body(with("slot", json!("s".repeat(2_000)))),
            "slot",
        ),
        (
            "empty idempotency key",
            json_body(with("idempotencyKey", json!(""))),
            "idempotencyKey",
        ),
        (
            "idempotency key too long",
            json_body(with("idempotencyKey", json!("k".repeat(1_025)))),
            "idempotencyKey",
        ),
        (
            "idempotency key not a string",
            json_body(with("idempotencyKey", json!(["k"]))),
            "idempotencyKey",
        ),
        ("unknown field", json_body(with("bogus", json!(5))), "bogus"),
        (
            "priority too large",
            json_body(with("priority", json!(1_000_001))),
            "priority",
        ),
        (
            "priority not a number",
            json_body(with("priority", json!("high"))),
            "priority",
        ),
        (
            "service level naming an unknown group",
            json_body(json!({"action": "setServiceLevel", "userid": "u", "group": 9})),
            "group",
        ),
        (
            "service level in group 0",
            json_body(json!({"action": "setServiceLevel", "userid": "u", "group": 0})),
            "group",
        ),
        (
            "service level with a negative group",
            json_body(json!({"action": "setServiceLevel", "userid": "u", "group": -2})),
            "group",
        ),
        (
            "service level without user",
            json_body(json!({"action": "setServiceLevel", "group": 1})),
            "userid",
        ),
        (
            "service level without group",
            json_body(json!({"action": "setServiceLevel", "userid": "u"})),
            "group",
        ),
        (
            "service level resources not an array",
            json_body(
                json!({"action": "setServiceLevel", "userid": "u", "group": 1, "resources": "db"}),
            ),
            "resources",
        ),
        (
            "service level with an empty resource",
            json_body(
                json!({"action": "setServiceLevel", "userid": "u", "group": 1, "resources": ["db", ""]}),
            ),
            "resources[1]",
        ),
        (
            "service level reset with a group",
            json_body(
                json!({"action": "setServiceLevel", "userid": "u", "reset": true, "group": 1}),
            ),
            "group",
        ),
        (
            "negative cpu",
            json_body(json!({"action": "submitTask", "userid": "u", "tasktype": "t", "cpu": -1})),
            "cpu",
        ),
        (
            "memory not a number",
            json_body(
                json!({"action": "submitTask", "userid": "u", "tasktype": "t", "memory": "lots"}),
            ),
            "memory",
        ),
        (
            "needs not an object",
            json_body(
                json!({"action": "submitTask", "userid": "u", "tasktype": "t", "needs": ["db"]}),
            ),
            "needs",
        ),
        (
            "a negative named need",
            json_body(
                json!({"action": "submitTask", "userid": "u", "tasktype": "t", "needs": {"db": -1}}),
            ),
            "needs.db",
        ),
        (
            "a need named tasks",
            json_body(
                json!({"action": "submitTask", "userid": "u", "tasktype": "t", "needs": {"tasks": 1}}),
            ),
            "needs.tasks",
        ),
        (
            "cpu given twice",
            json_body(
                json!({"action": "submitTask", "userid": "u", "tasktype": "t", "cpu": 1, "needs": {"cpu": 2}}),
            ),
            "needs.cpu",
        ),
        (
            "a need beyond the largest amount",
            json_body(
                json!({"action": "submitTasks", "tasks": [{"userid": "u", "tasktype": "t"}, {"userid": "u", "tasktype": "t", "memory": 99_999_999_999_999_999_u64}]}),
            ),
            "tasks[1].memory",
        ),
        (
            "quota without tenant",
            json_body(json!({"action": "setQuota", "quota": {"cpu": 1}})),
            "userid",
        ),
        (
            "quota of user and group",
            json_body(
                json!({"action": "setQuota", "userid": "u", "group": 2, "quota": {"cpu": 1}}),
            ),
            "group",
        ),
        (
            "quota of group 0",
            json_body(json!({"action": "setQuota", "group": 0, "quota": {"cpu": 1}})),
            "group",
        ),
        (
            "quota without amounts",
            json_body(json!({"action": "setQuota", "userid": "u"})),
            "quota",
        ),
        (
            "quota with a negative amount",
            json_body(json!({"action": "setQuota", "userid": "u", "quota": {"memory": -5}})),
            "quota.memory",
        ),
        (
            "quota reset with amounts",
            json_body(
                json!({"action": "setQuota", "userid": "u", "reset": true, "quota": {"cpu": 1}}),
            ),
            "quota",
        ),
        (
            "weight 0",
            json_body(json!({"action": "setServiceLevel", "userid": "u", "group": 1, "weight": 0})),
            "weight",
        ),
        (
            "weight too large",
            json_body(
                json!({"action": "setServiceLevel", "userid": "u", "group": 1, "weight": 10001}),
            ),
            "weight",
        ),
        (
            "priority change without task",
            json_body(json!({"action": "setTaskPriority", "priority": 1})),
            "taskId",
        ),
        (
            "priority change with a negative task id",
            json_body(json!({"action": "setTaskPriority", "taskId": -1, "priority": 1})),
            "taskId",
        ),
        (
            "priority change without priority",
            json_body(json!({"action": "setTaskPriority", "taskId": 1})),
            "priority",
        ),
        (
            "negative transaction",
            json_body(with("transaction", json!("-17"))),
            "transaction",
        ),
        (
            "tasks missing",
            Body::from(r#"{"action":"submitTasks"}"#),
            "tasks",
        ),
        (
            "tasks not an array",
            Body::from(r#"{"action":"submitTasks","tasks":"x"}"#),
            "tasks",
        ),
        (
            "bad task in a batch",
            json_body(json!({"action": "submitTasks", "tasks": [
                {"userid": "u", "tasktype": "t"}, {"userid": "u", "tasktype": "t", "maxattempts": -3}]})),
            "tasks[1].maxattempts",
        ),
        (
            "batch element not an object",
            json_body(
                json!({"action": "submitTasks", "tasks": [{"userid": "u", "tasktype": "t"}, 7]}),
            ),
            "tasks[1]",
        ),
        (
            "outer requestedStartTime",
            json_body(
                json!({"action": "submitTasks", "requestedStartTime": "5", "tasks": [{"userid": "u", "tasktype": "t"}]}),
            ),
            "requestedStartTime",
        ),
    ];
    for (name, body, field) in cases {
        let (s, b) = h.post(body, &admin()).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, Some(field));
        assert_eq!(h.state_mark().await, before, "{name} changed the state");
    }
    // Scheduling changes that name nothing, or do not apply, or are not the caller's to make.
    let refused = [
        (
            "priority of an unknown task",
            json!({"action": "setTaskPriority", "taskId": 999, "priority": 1}),
            admin(),
            StatusCode::NOT_FOUND,
            "taskId",
        ),
        (
            "service level changed by a user",
            json!({"action": "setServiceLevel", "userid": "alice", "group": 1}),
            alice(),
            StatusCode::FORBIDDEN,
            "action",
        ),
        (
            "quota set by a user",
            json!({"action": "setQuota", "userid": "alice", "quota": {"tasks": 100}}),
            alice(),
            StatusCode::FORBIDDEN,
            "action",
        ),
        (
            "priority of another user's task",
            json!({"action": "setTaskPriority", "taskId": 1, "priority": 1}),
            alice(),
            StatusCode::NOT_FOUND,
            "taskId",
        ),
        (
            "worker credential issued by a user",
            json!({"action": "addWorkerCredential", "workerId": "w1"}),
            alice(),
            StatusCode::FORBIDDEN,
            "action",
        ),
        (
            "worker credential revoked by a user",
            json!({"action": "revokeWorkerCredential", "credentialId": "wc-1"}),
            bob(),
            StatusCode::FORBIDDEN,
            "action",
        ),
        (
            "worker credential without worker id",
            json!({"action": "addWorkerCredential"}),
            admin(),
            StatusCode::BAD_REQUEST,
            "workerId",
        ),
        (
            "worker credential for an empty worker id",
            json!({"action": "addWorkerCredential", "workerId": ""}),
            admin(),
            StatusCode::BAD_REQUEST,
            "workerId",
        ),
        (
            "worker credential for a worker id with spaces",
            json!({"action": "addWorkerCredential", "workerId": "w 1"}),
            admin(),
            StatusCode::BAD_REQUEST,
            "workerId",
        ),
        (
            "worker credential for a worker id with a newline",
            json!({"action": "addWorkerCredential", "workerId": "w1\nw2"}),
            admin(),
            StatusCode::BAD_REQUEST,
            "workerId",
        ),
        (
            "worker credential with a comment of control characters",
            json!({"action": "addWorkerCredential", "workerId": "w1", "comment": "a\u{7}b"}),
            admin(),
            StatusCode::BAD_REQUEST,
            "comment",
        ),
        (
            "worker credential with an unknown field",
            json!({"action": "addWorkerCredential", "workerId": "w1", "secret": "mine"}),
            admin(),
            StatusCode::BAD_REQUEST,
            "secret",
        ),
        (
            "revocation of a revoked credential",
            json!({"action": "revokeWorkerCredential", "credentialId": revoked_id}),
            admin(),
            StatusCode::CONFLICT,
            "credentialId",
        ),
        (
            "revocation of an unknown credential",
            json!({"action": "revokeWorkerCredential", "credentialId": "wc-nope"}),
            admin(),
            StatusCode::NOT_FOUND,
            "credentialId",
        ),
        (
            "revocation without credential id",
            json!({"action": "revokeWorkerCredential", "credentialId": 7}),
            admin(),
            StatusCode::BAD_REQUEST,
            "credentialId",
        ),
    ];
    for (name, body, auth, status, field) in refused {
        let (s, b) = h.post_json(body, &auth).await;
        assert_error(s, &b, status, Some(field));
        assert_eq!(h.state_mark().await, before, "{name} changed the state");
    }

    let gets = [
        ("view=explode", "view"),
        ("view=slots&max=-1", "max"),
        ("view=transactions&max=x", "max"),
        ("view=delayedqueue&max=99999999999", "max"),
        ("view=codePool", "codePoolId"),
        ("view=task", "taskId"),
        ("view=task&taskId=0", "taskId"),
        ("view=task&taskId=-5", "taskId"),
        ("view=task&taskId=abc", "taskId"),
        ("view=task&taskId=99999999999999999999", "taskId"),
        ("view=tasks&max=-1", "max"),
        ("view=tasksheap&max=-1", "max"),
        ("view=tasks&max=x", "max"),
        ("view=tasks&status=sleeping", "status"),
        ("view=tasksoverview&filter=sleeping", "filter"),
        ("view=task&taskId=%FF%FE", "taskId"),
        (
            format!("view=tasks&slot={}", "s".repeat(2_000)).leak(),
            "slot",
        ),
    ];
    // Plain users cannot list the worker credentials.
    for user in [alice(), bob()] {
        let (s, b) = h.get("view=workerCredentials", &user).await;
        assert_error(s, &b, StatusCode::FORBIDDEN, Some("action"));
    }
    for (q, field) in gets {
        let q: &str = q;
        let (s, b) = h.get(q, &admin()).await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, Some(field));
        assert!(
            !b["error"].as_str().unwrap().contains("internal"),
            "{q}: {b}"
        );
    }
    assert_eq!(h.state_mark().await, before);
    h.stop().await;
}

fn json_body(v: Value) -> Body {
    Body::from(serde_json::to_vec(&v).unwrap())
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_413_whether_declared_or_streamed() {
    // Goal: a body over the limit is refused (declared by Content-Length or arriving chunk by
    // chunk, as the Java client sends it) and nothing is created.
    let mut cfg = config();
    cfg.max_body_bytes = 1_024;
    let h = Harness::with_config(cfg).await;
    let before = h.state_mark().await;
    let mut big = java_submit("u", "t", "");
    big["data"] = json!("x".repeat(2_000));
    let bytes = serde_json::to_vec(&big).unwrap();
    let (s, b) = h.post(bytes.clone(), &admin()).await;
    assert_error(s, &b, StatusCode::PAYLOAD_TOO_LARGE, Some("body"));
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(100).map(|c| Ok(c.to_vec())).collect();
    let streamed = Body::from_stream(futures_util::stream::iter(chunks));
    let (s, b) = h.post(streamed, &admin()).await;
    assert_error(s, &b, StatusCode::PAYLOAD_TOO_LARGE, Some("body"));
    assert_eq!(h.state_mark().await, before);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_body_that_never_finishes_is_answered_408() {
    // Goal: a client that stops sending its body mid-way gets 408 after the body timeout (paused
    // time: no real waiting), and nothing is created.
    let h = Harness::start().await;
    let before = h.state_mark().await;
    let first: Result<Vec<u8>, std::io::Error> = Ok(br#"{"action":"submitTask","#.to_vec());
    let stalled = futures_util::stream::iter([first]).chain(futures_util::stream::pending());
    let req = Request::post("/majordodo")
        .header(header::AUTHORIZATION, admin())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stalled))
        .unwrap();
    let res = h.app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
    let body: Value = serde_json::from_slice(
        &axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(body["field"], json!("body"));
    assert_eq!(body["retryable"], json!(true));
    assert_eq!(h.state_mark().await, before);
    h.stop().await;
}

#[tokio::test]
async fn wrong_method_and_wrong_path_answer_json() {
    // Goal: 405 (with Allow) and 404 are JSON errors too.
    let h = Harness::start().await;
    let req = Request::builder()
        .method(Method::PUT)
        .uri("/majordodo")
        .header(header::AUTHORIZATION, admin())
        .body(Body::empty())
        .unwrap();
    let (s, headers, b) = h.call(req).await;
    assert_error(s, &b, StatusCode::METHOD_NOT_ALLOWED, None);
    assert!(headers[header::ALLOW].to_str().unwrap().contains("POST"));
    let req = Request::get("/elsewhere").body(Body::empty()).unwrap();
    let (s, headers, b) = h.call(req).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, None);
    assert_eq!(
        headers[header::CONTENT_TYPE],
        "application/json;charset=utf-8"
    );
    h.stop().await;
}

// ----- authentication and authorization -----

#[tokio::test]
async fn every_request_needs_valid_credentials() {
    // Goal: no credentials, a wrong password, an unknown user, a wrong token and a malformed
    // header are all 401 with a Bearer WWW-Authenticate challenge and no Basic one (a Basic
    // challenge makes browsers prompt for and cache a password), for reads as for writes;
    // nothing is created.
    let h = Harness::start().await;
    let before = h.state_mark().await;
    let bad = [
        None,
        Some(basic("admin", "wrong")),
        Some(basic("nobody", ADMIN_PASSWORD)),
        Some("Bearer mdt_not-a-token".to_owned()),
        Some("Basic !!!".to_owned()),
        Some("Digest username=admin".to_owned()),
        Some(basic("bob", "")),
    ];
    for auth in bad {
        for req in [
            Request::get("/majordodo?view=status"),
            Request::post("/majordodo").header(header::CONTENT_TYPE, "application/json"),
        ] {
            let req = match &auth {
                Some(a) => req.header(header::AUTHORIZATION, a),
                None => req,
            };
            let body = serde_json::to_vec(&java_submit("u", "t", "x")).unwrap();
            let (s, headers, b) = h.call(req.body(Body::from(body)).unwrap()).await;
            assert_error(s, &b, StatusCode::UNAUTHORIZED, None);
            let challenges: Vec<_> = headers.get_all(header::WWW_AUTHENTICATE).iter().collect();
            assert!(
                !challenges
                    .iter()
                    .any(|c| c.to_str().unwrap().starts_with("Basic")),
                "{auth:?}"
            );
            assert!(
                challenges
                    .iter()
                    .any(|c| c.to_str().unwrap().starts_with("Bearer"))
            );
        }
    }
    assert_eq!(h.state_mark().await, before);
    // The right credentials, each way.
    for auth in [
        admin(),
        format!("Bearer {ADMIN_TOKEN}"),
        basic("admin", ADMIN_TOKEN),
        alice(),
        bob(),
    ] {
        let (s, b) = h.get("view=status", &auth).await;
        assert_eq!(s, StatusCode::OK, "{auth}: {b}");
    }
    // A cached verification is not a bypass: the wrong password still fails afterwards.
    let (s, _) = h.get("view=status", &basic("alice", "not alice")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    h.stop().await;
}

#[tokio::test]
async fn users_submit_and_read_only_their_own_tasks() {
    // Goal: a user submitting for another userid gets 403 naming the field (nothing created);
    // reading another user's task answers as if it did not exist; listings and counts show only
    // the caller's tasks; an admin sees everything.
    let h = Harness::start().await;
    let (s, b) = h
        .post_json(java_submit("alice", "t", "mine"), &alice())
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let alices = java_long(&b["taskId"]);
    let (s, b) = h.post_json(java_submit("bob", "t", "his"), &bob()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let bobs = java_long(&b["taskId"]);
    let (s, _) = h
        .post_json(java_submit("carol", "t", "hers"), &admin())
        .await;
    assert_eq!(s, StatusCode::OK);
    let before = h.state_mark().await;

    let (s, b) = h
        .post_json(java_submit("bob", "t", "forged"), &alice())
        .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, Some("userid"));
    let (s, b) = h
        .post_json(
            json!({"action": "submitTasks", "tasks": [
                {"userid": "alice", "tasktype": "t"}, {"userid": "ALICE", "tasktype": "t"}]}),
            &alice(),
        )
        .await;
    assert_error(s, &b, StatusCode::FORBIDDEN, Some("tasks[1].userid"));
    assert_eq!(
        h.state_mark().await,
        before,
        "a forbidden batch creates nothing"
    );

    let (_, v) = h.get(&format!("view=task&taskId={bobs}"), &alice()).await;
    assert_eq!(v["task"], json!({}));
    let (_, v) = h.get(&format!("view=task&taskId={alices}"), &alice()).await;
    assert_eq!(java_long(&v["task"]["taskId"]), alices);
    let (_, v) = h.get(&format!("view=task&taskId={alices}"), &bob()).await;
    assert_eq!(v["task"], json!({}));
    let (_, v) = h.get("view=tasks", &alice()).await;
    assert_eq!(ids_of(&v), vec![alices as u64]);
    let (_, v) = h.get("view=tasks&userId=bob", &alice()).await;
    assert_eq!(ids_of(&v), Vec::<u64>::new());
    let (_, v) = h.get("view=tasksoverview", &bob()).await;
    assert_eq!(v["tasks"], json!({"t": 1}));
    let (_, v) = h.get("view=tasks", &admin()).await;
    assert_eq!(ids_of(&v).len(), 3);
    h.stop().await;
}

// ----- broker failures -----

#[tokio::test]
async fn broker_failures_answer_503_with_the_original_retryable_words() {
    // Goal: a log failure while a submit is being written is a 500 `outcome_unknown`, not
    // retryable (the task may exist after a restart), with nothing internal in the body; once
    // the broker stopped, reads and writes are broker_not_started, retryable, in the shape the
    // original's Java client retries (HTTP 200, `ok: false`).
    let h = Harness::start().await;
    h.log.fail_next_append();
    let (s, b) = h.post_json(java_submit("u", "t", "x"), &admin()).await;
    assert_error(s, &b, StatusCode::INTERNAL_SERVER_ERROR, None);
    let error = b["error"].as_str().unwrap();
    assert!(error.starts_with("outcome_unknown"), "{error}");
    assert!(
        !error.contains("fault") && !error.contains("injected"),
        "{error}"
    );
    assert!(b.get("retryable").is_none(), "{b}");
    let mut h = h;
    let broker = h.broker.take().unwrap();
    assert!(broker.wait().await.is_err());
    // The original's shape for conditions its Java client retries: 200 with `ok: false`.
    let (s, b) = h.get("view=status", &admin()).await;
    assert_error(s, &b, StatusCode::OK, None);
    assert!(b["error"].as_str().unwrap().contains("broker_not_started"));
    let (s, b) = h.post_json(java_submit("u", "t", "x"), &admin()).await;
    assert_error(s, &b, StatusCode::OK, None);
    assert_eq!(b["retryable"], json!(true));
    h.stop().await;
}

// ----- over a real socket -----

/// Sends one raw HTTP/1.1 request and reads the whole answer (the server closes after it).
async fn raw_http(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, socket.read_to_end(&mut answer))
        .await
        .expect("answer in time")
        .unwrap();
    let text = String::from_utf8(answer).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

/// Like [`raw_http`] for answers whose body is not text (compressed); returns the head only.
async fn raw_http_bytes(addr: SocketAddr, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, socket.read_to_end(&mut answer))
        .await
        .expect("answer in time")
        .unwrap();
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = String::from_utf8(answer[..end].to_vec()).unwrap();
    let status = head[9..12].parse().unwrap();
    (status, head, answer[end + 4..].to_vec())
}

/// Decodes a chunked body.
fn unchunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

#[tokio::test]
async fn api_is_served_over_a_real_socket_with_chunked_java_style_requests() {
    // Goal: `serve` on 127.0.0.1:0 answers a chunked POST (as the Java client sends it) and a
    // GET, with the original's headers, and stops on its shutdown signal.
    let h = Harness::start().await;
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(http::serve(
        socket,
        h.handle.clone(),
        h.settings.clone(),
        stop.clone().cancelled_owned(),
    ));
    let json = serde_json::to_string(&java_submit("u", "t", "over tcp")).unwrap();
    let (first, second) = json.split_at(json.len() / 2);
    let request = format!(
        "POST /majordodo HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {}\r\n\
         Content-Type: application/json;charset=utf-8\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
        admin(),
        first.len(),
        second.len()
    );
    let (status, head, body) = raw_http(addr, request.as_bytes()).await;
    assert_eq!(status, 200, "{head}\n{body}");
    let head_lower = head.to_ascii_lowercase();
    assert!(
        head_lower.contains("access-control-allow-origin: *"),
        "{head}"
    );
    assert!(
        head_lower.contains("content-type: application/json;charset=utf-8"),
        "{head}"
    );
    assert!(head_lower.contains("majordodo-api-version: 1"), "{head}");
    let body = if head_lower.contains("transfer-encoding: chunked") {
        unchunk(&body)
    } else {
        body
    };
    let answer: Value = serde_json::from_str(&body).unwrap();
    let id = java_long(&answer["taskId"]);
    assert!(id > 0);

    let request = format!(
        "GET /majordodo?view=task&taskId={id} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Authorization: {}\r\nConnection: close\r\n\r\n",
        admin()
    );
    let (status, head, body) = raw_http(addr, request.as_bytes()).await;
    assert_eq!(status, 200);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        unchunk(&body)
    } else {
        body
    };
    let view: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["task"]["data"], json!("over tcp"));

    // Answers are compressed for clients that accept gzip (the Java client does).
    let request = format!(
        "GET /majordodo?view=tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {}\r\n\
         Accept-Encoding: gzip,deflate\r\nConnection: close\r\n\r\n",
        admin()
    );
    let (status, head, _) = raw_http_bytes(addr, request.as_bytes()).await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase().contains("content-encoding: gzip"),
        "{head}"
    );

    let request = b"GET /majordodo?view=status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (status, head, _) = raw_http(addr, request).await;
    assert_eq!(status, 401);
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{head}"
    );
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "{head}"
    );

    stop.cancel();
    tokio::time::timeout(WAIT, server)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
    h.stop().await;
}

#[test]
fn the_documented_error_codes_are_exactly_those_the_broker_produces() {
    // Goal: docs/http-api.md's table of error codes lists every code the broker answers with,
    // and no other.
    let doc = include_str!("../../../docs/http-api.md");
    let table = doc
        .split("Broker conditions start the `error` text with a code:")
        .nth(1)
        .expect("the error code table is in docs/http-api.md");
    let documented: std::collections::BTreeSet<&str> = table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('`').nth(1))
        .collect();
    let produced: std::collections::BTreeSet<&str> = http::ERROR_CODES.iter().copied().collect();
    assert_eq!(documented, produced);
}

// ----- code pools -----

#[tokio::test]
async fn code_pools_are_created_once_deleted_and_created_again() {
    // Goal: the original's SimpleCodePoolTest over HTTP: create ok; the same id again, an empty
    // id and a null id fail; delete then recreate works; a task submitted with the pool shows it
    // in the task view; the codePool view has the original's fields, the codePools view lists.
    let h = Harness::start().await;
    let (s, b) = h
        .post_json(create_pool_body("pool-1", 60_000, &pool_zip()), &admin())
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["ok"], json!(true));
    assert_eq!(b["action"], json!("createCodePool"));
    let (s, b) = h
        .post_json(create_pool_body("pool-1", 0, &pool_zip()), &admin())
        .await;
    assert_error(s, &b, StatusCode::CONFLICT, Some("id"));
    for id in [json!(""), Value::Null] {
        let (s, b) = h
            .post_json(
                json!({"action": "createCodePool", "id": id, "data": STANDARD.encode(pool_zip())}),
                &admin(),
            )
            .await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, Some("id"));
    }
    let (s, v) = h.get("view=codePool&codePoolId=pool-1", &alice()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let p = &v["codePool"];
    assert_eq!(p["codePoolId"], json!("pool-1"));
    assert_eq!(p["ttl"], json!(60_000));
    assert!(java_long(&p["creationTimestamp"]) > 0);
    assert_eq!(p["size"], json!(pool_zip().len()));
    let (_, v) = h.get("view=codePool&codePoolId=nope", &admin()).await;
    assert_eq!(v["codePool"], Value::Null);

    let (s, b) = h
        .post_json(
            json!({"action": "submitTask", "userid": "u", "tasktype": "t", "codePoolId": "pool-1"}),
            &admin(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let id = java_long(&b["taskId"]);
    let (_, v) = h.get(&format!("view=task&taskId={id}"), &admin()).await;
    assert_eq!(v["task"]["codePoolId"], json!("pool-1"));
    // In use by a waiting task: not deleted.
    let (s, b) = h
        .post_json(
            json!({"action": "deleteCodePool", "id": "pool-1"}),
            &admin(),
        )
        .await;
    assert_error(s, &b, StatusCode::CONFLICT, Some("id"));

    create_pool(&h, "pool-2").await;
    let (s, b) = h
        .post_json(
            json!({"action": "deleteCodePool", "id": "pool-2"}),
            &admin(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["result"], json!("deleted"));
    let (s, b) = h
        .post_json(
            json!({"action": "deleteCodePool", "id": "pool-2"}),
            &admin(),
        )
        .await;
    assert_error(s, &b, StatusCode::NOT_FOUND, Some("id"));
    create_pool(&h, "pool-2").await;
    let (_, v) = h.get("view=codePools&max=1", &admin()).await;
    assert_eq!(v["count"], json!(1));
    assert_eq!(v["codePools"][0]["codePoolId"], json!("pool-1"));
    assert_eq!(v["codePools"][0]["tasks"], json!(1));
    assert_eq!(v["truncated"], json!(true));
    assert_eq!(v["nextCodePoolId"], json!("pool-2"));
    h.stop().await;
}

/// An id as the Java client reads it.
fn jid(v: &Value) -> u64 {
    java_long(v) as u64
}

/// A request body with an idempotency key added.
trait TapKey {
    fn tap_key(self) -> Value;
}

impl TapKey for Value {
    fn tap_key(mut self) -> Value {
        self["idempotencyKey"] = json!("k");
        self
    }
}

async fn begin(h: &Harness, auth: &str) -> u64 {
    let (s, b) = h
        .post_json(json!({"action": "beginTransaction"}), auth)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["action"], json!("beginTransaction"));
    assert_eq!(b["ok"], json!(true), "{b}");
    jid(&b["transaction"])
}

async fn end_tx(h: &Harness, action: &str, tx: u64, auth: &str) -> (StatusCode, Value) {
    h.post_json(
        json!({"action": action, "transaction": tx.to_string()}),
        auth,
    )
    .await
}

fn task_ids(b: &Value) -> Vec<u64> {
    b["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| jid(&t["taskId"]))
        .collect()
}

#[tokio::test]
async fn transacted_tasks_are_invisible_until_commit_then_all_appear_at_once() {
    // Goal: the original's transaction scenarios (SimpleBrokerSuite: batch submit in a
    // transaction, transaction commit then execution; BrokerHTTPClientTest: transacted single
    // and batch submits invisible until commit; ScheduledTaskTest: delayed and non-delayed in a
    // transaction): prepared tasks are in no view but `transactions` (counted, with their
    // types) and `slots`; the commit publishes every one, waiting or delayed as decided when
    // prepared, and `delayedqueue` shows the delayed one.
    let h = Harness::start().await;
    let tx = begin(&h, &admin()).await;
    let later = now_ms() + 600_000;
    let (s, one) = h
        .post_json(
            json!({"action": "submitTask", "userid": "u", "tasktype": "t", "data": "a",
                   "transaction": tx.to_string(), "slot": "nightly"}),
            &admin(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{one}");
    assert_eq!(jid(&one["transaction"]), tx, "the transaction is echoed");
    let single = jid(&one["taskId"]);
    assert!(single > 0, "{one}");
    let (_, batch) = h
        .post_json(
            json!({"action": "submitTasks", "transaction": tx, "tasks": [
                {"userid": "u", "tasktype": "t", "data": "b"},
                {"userid": "u", "tasktype": "late", "data": "c", "requestedStartTime": later},
            ]}),
            &admin(),
        )
        .await;
    let ids: Vec<u64> = batch["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(jid(&r["transaction"]), tx, "{r}");
            jid(&r["taskId"])
        })
        .collect();
    assert!(ids.iter().all(|id| *id > 0), "{batch}");
    // Invisible: not a task, not listed, not counted.
    let (_, t) = h.get(&format!("view=task&taskId={single}"), &admin()).await;
    assert_eq!(t["task"], json!({}), "{t}");
    let (_, all) = h.get("view=tasks", &admin()).await;
    assert!(!task_ids(&all).contains(&single), "{all}");
    let (_, st) = h.get("view=status", &admin()).await;
    assert_eq!(jid(&st["tasks"]), 0, "{st}");
    let (_, txs) = h.get("view=transactions", &admin()).await;
    let listed = &txs["transactions"]["transactions"][0];
    assert_eq!(jid(&listed["transactionId"]), tx, "{txs}");
    assert_eq!(jid(&listed["preparedTasks"]), 3, "{txs}");
    assert_eq!(listed["taskTypes"], json!(["late", "t"]), "{txs}");
    assert_eq!(listed["owner"], json!("admin"));
    // The prepared task's slot is taken: a submission outside the transaction is not created.
    let (_, slots) = h.get("view=slots", &admin()).await;
    assert_eq!(
        slots["slots"]["busySlots"]["nightly"],
        json!(single),
        "{slots}"
    );
    let (_, busy) = h
        .post_json(
            json!({"action": "submitTask", "userid": "u", "tasktype": "t", "slot": "nightly"}),
            &admin(),
        )
        .await;
    assert_eq!(jid(&busy["taskId"]), 0, "{busy}");
    assert_eq!(busy["result"], json!("slot nightly already assigned"));

    let (s, c) = end_tx(&h, "commitTransaction", tx, &admin()).await;
    assert_eq!(s, StatusCode::OK, "{c}");
    assert_eq!(c["ok"], json!(true));
    assert_eq!(jid(&c["transaction"]), tx);
    let (_, t) = h.get(&format!("view=task&taskId={single}"), &admin()).await;
    assert_eq!(t["task"]["status"], json!("waiting"), "{t}");
    let (_, t) = h
        .get(&format!("view=task&taskId={}", ids[1]), &admin())
        .await;
    assert_eq!(t["task"]["status"], json!("delayed"), "{t}");
    let (_, st) = h.get("view=status", &admin()).await;
    assert_eq!(jid(&st["tasks"]), 3, "{st}");
    let (_, d) = h.get("view=delayedqueue", &admin()).await;
    let delayed = &d["delayedqueue"]["tasks"][0];
    assert_eq!(jid(&delayed["taskId"]), ids[1], "{d}");
    assert!(jid(&delayed["delay"]) > 500_000, "{d}");
    let (_, txs) = h.get("view=transactions", &admin()).await;
    assert_eq!(txs["transactions"]["transactions"], json!([]));
    h.stop().await;
}

#[tokio::test]
async fn bad_code_pools_are_refused_naming_the_field_and_change_nothing() {
    // Goal: the bad-input battery of code pools: malicious archives (`..`, absolute paths,
    // links out, a zip bomb, too many files), an archive over the size limit, a non-admin, a
    // duplicate id and deleting an unknown pool each get their 4xx naming the field, and the
    // broker's state and log are exactly as before.
    use majordodo_testkit::archives::{self, Item, file};
    let h = Harness::with_config(HttpConfig {
        codepool_max_archive_bytes: 50_000,
        codepool_max_files: 10,
        codepool_max_unpacked_bytes: 100_000,
        ..config()
    })
    .await;
    create_pool(&h, "taken").await;
    let before = h.state_mark().await;
    let bomb = archives::zip_bomb(5_000_000);
    assert!(bomb.len() < 50_000);
    let many: Vec<Item> = (0..11).map(|i| file(&format!("f{i}"), b"x")).collect();
    let cases: Vec<(&str, Value, &str, StatusCode, &str)> = vec![
        (
            "zip with ../",
            create_pool_body("p", 0, &archives::zip(&[file("../evil", b"x")])),
            admin_s(),
            StatusCode::BAD_REQUEST,
            "data",
        ),
        (
            "tar.gz with ../",
            create_pool_body("p", 0, &archives::tar_gz(&[file("a/../../evil", b"x")])),
            admin_s(),
            StatusCode::BAD_REQUEST,
            "data",
        ),
        (
            "absolute path",
            create_pool_body("p", 0, &archives::tar_gz(&[file("/etc/evil", b"x")])),
            admin_s(),
            StatusCode::BAD_REQUEST,
            "data",
        ),
        (
            "symlink out (zip)",
            create_pool_body(
                "p",
                0,
                &archives::zip(&[Item::Symlink("l".into(), "/etc/passwd".into())]),
            ),
            admin_s(),
            StatusCode::BAD_REQUEST,
            "data",
        ),
        (
            "symlink out (tar)",
            create_pool_body(
                "p",
                0,
                &archives::tar_gz(&[Item::Symlink("l".into(), "../../x".into())]),
            ),
            admin_s(),
            StatusCode::BAD_REQUEST,
            "data",
        ),
        (
            "hard link out",
            create_pool_body(
                "p",
                0,
                &archives::tar_gz(&[Item::HardLink("l".into(), "/etc/shadow".into())]),
            ),
            admin_s(),
            StatusCode::BAD_REQUEST,
            "data",
        ),
        (
            "zip bomb",
            create_pool_body("p", 0, &bomb),
            admin_s(),
            StatusCode::BAD_REQUEST,
            "data",
        ),
        (
            "too many files",
            create_pool_body("p", 0, &archives::zip(&many)),
            admin_s(),
            StatusCode::BAD_REQUEST,
            "data",
        ),
        (
            "archive over the size limit",
            create_pool_body("p", 0, &archives::zip(&[file("noise", &noise(60_000))])),
            admin_s(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "data",
        ),
        (
            "not an admin",
            create_pool_body("p", 0, &pool_zip()),
            "alice",
            StatusCode::FORBIDDEN,
            "action",
        ),
        (
            "not an admin deleting",
            json!({"action": "deleteCodePool", "id": "taken"}),
            "alice",
            StatusCode::FORBIDDEN,
            "action",
        ),
        (
            "duplicate id",
            create_pool_body("taken", 0, &pool_zip()),
            admin_s(),
            StatusCode::CONFLICT,
            "id",
        ),
        (
            "delete unknown",
            json!({"action": "deleteCodePool", "id": "nope"}),
            admin_s(),
            StatusCode::NOT_FOUND,
            "id",
        ),
    ];
    for (name, body, who, want, field) in cases {
        let auth = if who == "alice" { alice() } else { admin() };
        let (s, b) = h.post_json(body, &auth).await;
        assert_eq!(s, want, "{name}: {b}");
        assert_error(s, &b, want, Some(field));
        assert_eq!(h.state_mark().await, before, "{name} changed the state");
    }
    h.stop().await;
}

#[tokio::test]
async fn rollback_discards_prepared_tasks_and_frees_their_slots() {
    // Goal: SlotsRecoveryTest's and SlotsReleaseTest's rollback cases: slots of prepared tasks
    // conflict across transactions until a rollback frees them; rolled-back tasks never appear.
    let h = Harness::start().await;
    let a = begin(&h, &alice()).await;
    let b = begin(&h, &alice()).await;
    let prepare = |tx: u64| {
        json!({"action": "submitTask", "userid": "alice", "tasktype": "t", "slot": "s1",
               "transaction": tx})
    };
    let (_, first) = h.post_json(prepare(a), &alice()).await;
    let prepared = jid(&first["taskId"]);
    assert!(prepared > 0, "{first}");
    let (_, second) = h.post_json(prepare(b), &alice()).await;
    assert_eq!(jid(&second["taskId"]), 0, "{second}");
    assert_eq!(second["result"], json!("slot s1 already assigned"));
    let (s, r) = end_tx(&h, "rollbackTransaction", a, &alice()).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let (_, again) = h.post_json(prepare(b), &alice()).await;
    assert!(jid(&again["taskId"]) > 0, "the rollback freed s1: {again}");
    let (_, t) = h
        .get(&format!("view=task&taskId={prepared}"), &admin())
        .await;
    assert_eq!(
        t["task"],
        json!({}),
        "a rolled-back task never appears: {t}"
    );
    h.stop().await;
}

#[tokio::test]
async fn abandoned_transaction_is_rolled_back_after_its_ttl_and_frees_its_slot() {
    // Goal: SlotsReleaseTest's abandoned transaction: a transaction neither committed nor
    // rolled back is rolled back by the leader after transactions_ttl; its slot is free and a
    // late commit is refused (409) without creating anything.
    let h = Harness::with_leader(
        config(),
        majordodo_core::LeaderConfig {
            transactions_ttl: 300,
            ..majordodo_core::LeaderConfig::default()
        },
    )
    .await;
    let tx = begin(&h, &admin()).await;
    let (_, p) = h
        .post_json(
            json!({"action": "submitTask", "userid": "u", "tasktype": "t", "slot": "s",
                   "transaction": tx}),
            &admin(),
        )
        .await;
    assert!(jid(&p["taskId"]) > 0, "{p}");
    h.wait_until("the abandoned transaction is rolled back", |s| {
        s.transactions().next().is_none() && s.slot_holder("s").is_none()
    })
    .await;
    let (s, b) = end_tx(&h, "commitTransaction", tx, &admin()).await;
    assert_error(s, &b, StatusCode::CONFLICT, Some("transaction"));
    assert!(
        b["error"].as_str().unwrap().contains("no longer open"),
        "{b}"
    );
    let (_, st) = h.get("view=status", &admin()).await;
    assert_eq!(jid(&st["tasks"]), 0, "{st}");
    h.stop().await;
}

#[tokio::test]
async fn bad_transaction_and_cancel_requests_are_refused_naming_the_field_and_change_nothing() {
    // Goal: an unknown transaction (404), a commit made twice and a rollback after a commit
    // (409), somebody else's transaction (403), a submit into an unknown or foreign
    // transaction (the original's taskId 0 with a text naming the problem), a cancel of an
    // unknown or foreign task (404) or of an ended one (409) each leave the state exactly as it
    // was.
    let h = Harness::start().await;
    let done = begin(&h, &admin()).await;
    h.post_json(
        json!({"action": "submitTask", "userid": "alice", "tasktype": "t", "transaction": done}),
        &admin(),
    )
    .await;
    let (s, _) = end_tx(&h, "commitTransaction", done, &admin()).await;
    assert_eq!(s, StatusCode::OK);
    let alices = begin(&h, &alice()).await;
    let (_, expired) = h
        .post_json(
            json!({"action": "submitTask", "userid": "alice", "tasktype": "t", "deadline": now_ms() + 1}),
            &admin(),
        )
        .await;
    let ended = jid(&expired["taskId"]);
    h.wait_until("the task's deadline passes", move |s| {
        s.task(majordodo_core::TaskId(ended))
            .is_some_and(|t| t.status == TaskStatus::Error)
    })
    .await;
    let (_, waiting) = h.post_json(java_submit("u", "t", "x"), &admin()).await;
    let admins_task = jid(&waiting["taskId"]);
    let before = h.state_mark().await;

    let refusals: Vec<(&str, Value, String, StatusCode, &str, &str)> = vec![
        (
            "commit twice",
            json!({"action": "commitTransaction", "transaction": done}),
            admin(),
            StatusCode::CONFLICT,
            "transaction",
            "no longer open",
        ),
        (
            "rollback after commit",
            json!({"action": "rollbackTransaction", "transaction": done}),
            admin(),
            StatusCode::CONFLICT,
            "transaction",
            "no longer open",
        ),
        (
            "unknown transaction",
            json!({"action": "commitTransaction", "transaction": 999}),
            admin(),
            StatusCode::NOT_FOUND,
            "transaction",
            "never begun",
        ),
        (
            "someone else's commit",
            json!({"action": "commitTransaction", "transaction": alices}),
            bob(),
            StatusCode::FORBIDDEN,
            "transaction",
            "belongs to alice",
        ),
        (
            "someone else's rollback",
            json!({"action": "rollbackTransaction", "transaction": alices}),
            bob(),
            StatusCode::FORBIDDEN,
            "transaction",
            "belongs to alice",
        ),
        (
            "cancel of an unknown task",
            json!({"action": "cancelTask", "taskId": 99_999}),
            admin(),
            StatusCode::NOT_FOUND,
            "taskId",
            "does not exist",
        ),
        (
            "cancel of another user's task",
            json!({"action": "cancelTask", "taskId": admins_task}),
            alice(),
            StatusCode::NOT_FOUND,
            "taskId",
            "does not exist",
        ),
        (
            "cancel of an ended task",
            json!({"action": "cancelTask", "taskId": ended}),
            admin(),
            StatusCode::CONFLICT,
            "taskId",
            "already ended (error)",
        ),
    ];
    for (name, body, auth, status, field, words) in refusals {
        let (s, b) = h.post_json(body, &auth).await;
        assert_error(s, &b, status, Some(field));
        assert!(b["error"].as_str().unwrap().contains(words), "{name}: {b}");
        assert_eq!(h.state_mark().await, before, "{name} changed the state");
    }
    let not_created: Vec<(&str, Value, String, &str)> = vec![
        (
            "submit into an unknown transaction",
            json!({"action": "submitTask", "userid": "u", "tasktype": "t", "transaction": "777"}),
            admin(),
            "transaction 777 was never begun",
        ),
        (
            "submit into a committed transaction",
            json!({"action": "submitTask", "userid": "u", "tasktype": "t", "transaction": done}),
            admin(),
            "no longer open",
        ),
        (
            "submit into someone else's transaction",
            json!({"action": "submitTask", "userid": "bob", "tasktype": "t", "transaction": alices}),
            bob(),
            "belongs to alice",
        ),
    ];
    for (name, body, auth, words) in not_created {
        let (s, b) = h.post_json(body, &auth).await;
        assert_eq!(s, StatusCode::OK, "{name}: {b}");
        assert_eq!(jid(&b["taskId"]), 0, "{name}: {b}");
        assert!(b["result"].as_str().unwrap().contains(words), "{name}: {b}");
        assert_eq!(h.state_mark().await, before, "{name} changed the state");
    }
    h.stop().await;
}

/// Bytes that do not compress.
fn noise(len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    rand::RngCore::fill_bytes(&mut StdRng::seed_from_u64(7), &mut bytes);
    bytes
}

fn admin_s() -> &'static str {
    "admin"
}

#[tokio::test]
async fn cancel_ends_waiting_and_delayed_tasks_in_error_and_frees_their_slots() {
    // Goal: a waiting and a delayed task cancelled by their owner end in error with result
    // `cancelled`; their slots are free at once; a second cancel is a 409 that changes nothing.
    let h = Harness::start().await;
    let submit = |slot: &str, start: i64| {
        json!({"action": "submitTask", "userid": "alice", "tasktype": "t", "slot": slot,
               "requestedStartTime": start})
    };
    let (_, w) = h.post_json(submit("a", 0), &alice()).await;
    let (_, d) = h.post_json(submit("b", now_ms() + 600_000), &alice()).await;
    for (b, was) in [(w, "waiting"), (d, "delayed")] {
        let id = jid(&b["taskId"]);
        let (s, c) = h
            .post_json(
                json!({"action": "cancelTask", "taskId": id.to_string()}),
                &alice(),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{c}");
        assert_eq!(c["previousStatus"], json!(was), "{c}");
        let (_, t) = h.get(&format!("view=task&taskId={id}"), &alice()).await;
        assert_eq!(t["task"]["status"], json!("error"), "{t}");
        assert_eq!(t["task"]["result"], json!("cancelled"), "{t}");
        let mark = h.state_mark().await;
        let (s, again) = h
            .post_json(json!({"action": "cancelTask", "taskId": id}), &alice())
            .await;
        assert_error(s, &again, StatusCode::CONFLICT, Some("taskId"));
        assert_eq!(h.state_mark().await, mark);
    }
    let (_, slots) = h.get("view=slots", &admin()).await;
    assert_eq!(slots["slots"]["busySlots"], json!({}), "{slots}");
    let (_, again) = h.post_json(submit("a", 0), &alice()).await;
    assert!(jid(&again["taskId"]) > 0, "{again}");
    h.stop().await;
}

impl RawWorker {
    /// Receives frames until a `Cancel`; returns its (task, attempt).
    async fn cancels(&mut self) -> Vec<(u64, u32)> {
        loop {
            if let Message::Cancel(c) = self.recv().await {
                return c.tasks.iter().map(|t| (t.task_id, t.attempt)).collect();
            }
        }
    }

    async fn report(&mut self, seq: u64, report: FinishReport) {
        self.framed
            .send(Message::Finished(Finished {
                seq,
                reports: vec![report],
            }))
            .await
            .unwrap();
        loop {
            if let Message::FinishedAck(ack) = self.recv().await {
                assert_eq!(ack.seq, seq);
                return;
            }
        }
    }
}

/// A worker listener for `h` and a raw worker `w1` connected to it (serving group 5).
async fn raw_worker(h: &Harness) -> (RawWorker, CancellationToken) {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(worker_listener::run(
        socket,
        ListenerConfig::new("broker-1", SharedSecret::new(SECRET)),
        h.broker.as_ref().unwrap().worker_events(),
        stop.clone().cancelled_owned(),
    ));
    (RawWorker::connect(addr, "w1").await, stop)
}

#[tokio::test]
async fn cancelling_a_running_task_stops_it_on_its_worker_and_its_late_report_changes_nothing() {
    // Goal: a running task cancelled over HTTP ends in error `cancelled` at once, its slot is
    // free, the worker gets a Cancel frame naming the attempt; the worker's report of that
    // attempt (even "finished") leaves the task cancelled.
    let h = Harness::start().await;
    let (mut worker, stop) = raw_worker(&h).await;
    let (_, b) = h
        .post_json(
            json!({"action": "submitTask", "userid": "5", "tasktype": "run", "slot": "only"}),
            &admin(),
        )
        .await;
    let id = jid(&b["taskId"]);
    let assigned = worker.assignments(1).await;
    assert_eq!(assigned, vec![(id, 1)]);
    let (s, c) = h
        .post_json(json!({"action": "cancelTask", "taskId": id}), &admin())
        .await;
    assert_eq!(s, StatusCode::OK, "{c}");
    assert_eq!(c["previousStatus"], json!("running"), "{c}");
    assert_eq!(worker.cancels().await, vec![(id, 1)]);
    let (_, t) = h.get(&format!("view=task&taskId={id}"), &admin()).await;
    assert_eq!(t["task"]["status"], json!("error"), "{t}");
    assert_eq!(t["task"]["result"], json!("cancelled"), "{t}");
    let (_, slots) = h.get("view=slots", &admin()).await;
    assert_eq!(slots["slots"]["busySlots"], json!({}), "{slots}");
    worker
        .finish(1, (id, 1), Outcome::Finished, "done anyway")
        .await;
    let (_, t) = h.get(&format!("view=task&taskId={id}"), &admin()).await;
    assert_eq!(
        t["task"]["result"],
        json!("cancelled"),
        "the late report changed it: {t}"
    );
    stop.cancel();
    h.stop().await;
}

#[tokio::test]
async fn retry_later_delays_the_task_without_using_an_attempt_until_the_bound() {
    // Goal: a "retry later" report delays the task (delayedqueue shows it) and does not use
    // its only attempt: it runs again as attempt 2; once tasks.max_deferrals is reached, the
    // answer counts as the failure of its last attempt, with a text saying why.
    let h = Harness::with_leader(
        config(),
        majordodo_core::LeaderConfig {
            max_deferrals: 1,
            ..majordodo_core::LeaderConfig::default()
        },
    )
    .await;
    let (mut worker, stop) = raw_worker(&h).await;
    let (_, b) = h
        .post_json(
            json!({"action": "submitTask", "userid": "5", "tasktype": "run", "maxattempts": 1}),
            &admin(),
        )
        .await;
    let id = jid(&b["taskId"]);
    assert_eq!(worker.assignments(1).await, vec![(id, 1)]);
    let later = |attempt: u32, ms: u64| FinishReport {
        task_id: id,
        attempt,
        outcome: Outcome::RetryLater as i32,
        result: "busy".into(),
        retry_after_ms: ms,
    };
    worker.report(1, later(1, 60_000)).await;
    let (_, t) = h.get(&format!("view=task&taskId={id}"), &admin()).await;
    assert_eq!(t["task"]["status"], json!("delayed"), "{t}");
    let (_, d) = h.get("view=delayedqueue", &admin()).await;
    assert_eq!(jid(&d["delayedqueue"]["tasks"][0]["taskId"]), id, "{d}");
    // A short deferral runs it again, as the next attempt, although maxattempts is 1.
    let (_, b2) = h
        .post_json(
            json!({"action": "submitTask", "userid": "5", "tasktype": "run", "maxattempts": 1}),
            &admin(),
        )
        .await;
    let id2 = jid(&b2["taskId"]);
    assert_eq!(worker.assignments(1).await, vec![(id2, 1)]);
    let later2 = |attempt: u32| FinishReport {
        task_id: id2,
        ..later(attempt, 10)
    };
    worker.report(2, later2(1)).await;
    assert_eq!(worker.assignments(1).await, vec![(id2, 2)]);
    worker.report(3, later2(2)).await;
    h.wait_until("the second deferral fails the task", move |s| {
        s.task(majordodo_core::TaskId(id2))
            .is_some_and(|t| t.status == TaskStatus::Error)
    })
    .await;
    let (_, t) = h.get(&format!("view=task&taskId={id2}"), &admin()).await;
    let result = t["task"]["result"].as_str().unwrap();
    assert!(result.contains("retry later refused"), "{t}");
    assert!(result.contains("tasks.max_deferrals"), "{t}");
    stop.cancel();
    h.stop().await;
}

/// A POST as a browser form on another site would send it.
fn cross_site_post(
    content_type: Option<&str>,
    origin: Option<&str>,
    body: &Value,
) -> Request<Body> {
    let mut req = Request::post("/majordodo")
        .header(header::AUTHORIZATION, admin())
        .header(header::HOST, "broker.example:7364");
    if let Some(t) = content_type {
        req = req.header(header::CONTENT_TYPE, t);
    }
    if let Some(o) = origin {
        req = req.header(header::ORIGIN, o);
    }
    req.body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

#[tokio::test]
async fn cross_site_requests_are_refused_and_change_nothing() {
    // Goal: a POST that a form on another site can send (text/plain or no JSON content type,
    // a foreign Origin) is refused with a JSON 4xx naming the header, even with valid Basic
    // credentials, and creates nothing; the API's own origin and configured origins pass.
    let h = Harness::start().await;
    let before = h.state_mark().await;
    let task = java_submit("u", "t", "x");
    let refused = [
        (
            Some("text/plain"),
            Some("https://evil.example"),
            StatusCode::FORBIDDEN,
            "origin",
        ),
        (
            Some("text/plain"),
            None,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type",
        ),
        (
            Some("application/x-www-form-urlencoded"),
            None,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type",
        ),
        (
            Some("multipart/form-data; boundary=x"),
            None,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type",
        ),
        (
            Some("application/jsonx"),
            None,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type",
        ),
        (
            None,
            None,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type",
        ),
        (
            Some("application/json"),
            Some("https://evil.example"),
            StatusCode::FORBIDDEN,
            "origin",
        ),
        (
            Some("application/json"),
            Some("null"),
            StatusCode::FORBIDDEN,
            "origin",
        ),
        (
            Some("application/json"),
            Some("http://broker.example:7364.evil.example"),
            StatusCode::FORBIDDEN,
            "origin",
        ),
    ];
    for (content_type, origin, status, field) in refused {
        let (s, _, b) = h.call(cross_site_post(content_type, origin, &task)).await;
        assert_error(s, &b, status, Some(field));
        assert_eq!(h.state_mark().await, before, "{content_type:?} {origin:?}");
    }
    // A foreign origin is refused for reads too (its page could read the answer through CORS).
    let req = Request::get("/majordodo?view=status")
        .header(header::AUTHORIZATION, admin())
        .header(header::ORIGIN, "https://evil.example")
        .body(Body::empty())
        .unwrap();
    let (s, _, b) = h.call(req).await;
    assert_error(s, &b, StatusCode::FORBIDDEN, Some("origin"));
    // The API's own origin, and JSON with parameters, pass.
    for (content_type, origin) in [
        (
            "application/json;charset=utf-8",
            Some("http://broker.example:7364"),
        ),
        ("Application/JSON", Some("https://BROKER.example:7364")),
        ("application/json", None),
    ] {
        let (s, _, b) = h
            .call(cross_site_post(Some(content_type), origin, &task))
            .await;
        assert_eq!(s, StatusCode::OK, "{content_type} {origin:?}: {b}");
    }
    h.stop().await;

    // Configured origins pass; "*" lets any through.
    let mut c = config();
    c.allowed_origins = vec!["https://ui.example".into()];
    let h = Harness::with_config(c).await;
    let req = cross_site_post(Some("application/json"), Some("https://ui.example"), &task);
    assert_eq!(h.call(req).await.0, StatusCode::OK);
    let req = cross_site_post(
        Some("application/json"),
        Some("https://other.example"),
        &task,
    );
    assert_eq!(h.call(req).await.0, StatusCode::FORBIDDEN);
    h.stop().await;
    let mut c = config();
    c.allowed_origins = vec!["*".into()];
    let h = Harness::with_config(c).await;
    let req = cross_site_post(
        Some("application/json"),
        Some("https://other.example"),
        &task,
    );
    assert_eq!(h.call(req).await.0, StatusCode::OK);
    h.stop().await;
}

#[tokio::test]
async fn a_basic_challenge_is_sent_only_when_configured() {
    // Goal: with http.basic_challenge a 401 carries a Basic challenge besides the Bearer one.
    let mut c = config();
    c.basic_challenge = true;
    let h = Harness::with_config(c).await;
    let req = Request::get("/majordodo?view=status")
        .body(Body::empty())
        .unwrap();
    let (s, headers, _) = h.call(req).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let challenges: Vec<String> = headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .map(|c| c.to_str().unwrap().to_owned())
        .collect();
    assert!(
        challenges.iter().any(|c| c.starts_with("Basic")),
        "{challenges:?}"
    );
    assert!(
        challenges.iter().any(|c| c.starts_with("Bearer")),
        "{challenges:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn failed_logins_lock_out_password_logins_for_the_user_but_not_tokens() {
    // Goal: after auth_failure_limit wrong passwords for a user, its password logins are
    // answered 429 with Retry-After, without checking the password (the right one is refused
    // too unless it was verified before), until the lock-out ends; other users and tokens are
    // not affected.
    let mut c = config();
    c.auth_failure_limit = 3;
    c.auth_lockout_secs = 1;
    let h = Harness::with_config(c).await;
    // admin's password is verified (and remembered) before the attack.
    assert_eq!(h.get("view=status", &admin()).await.0, StatusCode::OK);
    for _ in 0..3 {
        let (s, _) = h.get("view=status", &basic("alice", "guess")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _) = h.get("view=status", &basic("admin", "guess")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let req = Request::get("/majordodo?view=status")
        .header(header::AUTHORIZATION, alice())
        .body(Body::empty())
        .unwrap();
    let (s, headers, b) = h.call(req).await;
    assert_error(s, &b, StatusCode::TOO_MANY_REQUESTS, Some("authorization"));
    assert!(headers.contains_key(header::RETRY_AFTER));
    // Tokens, and a password verified before the lock-out, still work.
    assert_eq!(h.get("view=status", &bob()).await.0, StatusCode::OK);
    assert_eq!(
        h.get("view=status", &format!("Bearer {ADMIN_TOKEN}"))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(h.get("view=status", &admin()).await.0, StatusCode::OK);
    // The lock-out ends.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(h.get("view=status", &alice()).await.0, StatusCode::OK);
    h.stop().await;
}

#[tokio::test]
async fn a_second_worker_connection_cannot_report_for_another_connections_assignment() {
    // Goal: over the real worker protocol, a second authenticated connection (another worker
    // id, same shared secret) reporting an attempt assigned to the first connection is
    // refused: no acknowledgement, the task and the whole state unchanged; a batch of its own
    // after it is acknowledged; the holder's report is then accepted.
    let h = Harness::start().await;
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(worker_listener::run(
        socket,
        ListenerConfig::new("broker-1", SharedSecret::new(SECRET)),
        h.broker.as_ref().unwrap().worker_events(),
        stop.clone().cancelled_owned(),
    ));
    let mut holder = RawWorker::connect(addr, "w1").await;
    let (_, b) = h
        .post_json(
            json!({"action": "submitTask", "userid": "5", "tasktype": "run", "maxattempts": 1}),
            &admin(),
        )
        .await;
    let id = jid(&b["taskId"]);
    assert_eq!(holder.assignments(1).await, vec![(id, 1)]);
    let mut other = RawWorker::connect(addr, "w2").await;
    h.wait_until("w2 connected", |s| s.workers().count() == 2)
        .await;
    let (before, _) = h.state_mark().await;
    let forged = |attempt: u32| FinishReport {
        task_id: id,
        attempt,
        outcome: Outcome::Finished as i32,
        result: "forged".into(),
        retry_after_ms: 0,
    };
    other
        .framed
        .send(Message::Finished(Finished {
            seq: 1,
            reports: vec![forged(1)],
        }))
        .await
        .unwrap();
    // A batch of its own (a task that does not exist: acknowledged, ignored) after it: its
    // acknowledgement, the first to come back, proves the forged batch was not acknowledged.
    other
        .framed
        .send(Message::Finished(Finished {
            seq: 2,
            reports: vec![FinishReport {
                task_id: id + 1_000,
                ..forged(1)
            }],
        }))
        .await
        .unwrap();
    loop {
        if let Message::FinishedAck(ack) = other.recv().await {
            assert_eq!(ack.seq, 2, "the forged batch was acknowledged");
            break;
        }
    }
    let (after, _) = h.state_mark().await;
    assert_eq!(before, after, "the forged report changed the state");
    let (_, t) = h.get(&format!("view=task&taskId={id}"), &admin()).await;
    assert_eq!(t["task"]["status"], json!("running"), "{t}");
    holder.finish(1, (id, 1), Outcome::Finished, "done").await;
    let (_, t) = h.get(&format!("view=task&taskId={id}"), &admin()).await;
    assert_eq!(t["task"]["status"], json!("finished"), "{t}");
    assert_eq!(t["task"]["result"], json!("done"), "{t}");
    stop.cancel();
    h.stop().await;
}
