//! The operations endpoints over real HTTP against a real broker (file log, snapshot store,
//! the real worker listener with a worker speaking raw frames): `/health`, `/ready` (leader,
//! recovering), `/metrics` parsed with a Prometheus text parser whose values follow submits,
//! assignments and finishes, the bound on user and type labels, who may read `/metrics`, and
//! the Grafana dashboard naming only metrics the broker exports.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use futures_util::{SinkExt, StreamExt};
use majordodo_broker::http::auth::token_digest;
use majordodo_broker::http::config::MetricsAccess;
use majordodo_broker::http::{self, HttpConfig, UserConfig, UserRole};
use majordodo_broker::worker_listener::{self, ListenerConfig};
use majordodo_broker::{Broker, BrokerConfig, BrokerHandle, SystemClock};
use majordodo_core::{DefaultGroupMapper, TaskStatus};
use majordodo_log::{
    AppendFuture, CommitLog, FileLog, FileLogConfig, LogError, Lsn, MemoryLog, MemoryStore,
    ReplayFn, ReplayReport, SnapshotStore,
};
use majordodo_proto::worker::{
    Capacity, Connect, FinishReport, Finished, Hello, Message, Outcome, SharedSecret, WorkerCodec,
    random_nonce, worker_proof,
};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Bound on every wait, so a bug fails a test instead of hanging it.
const WAIT: Duration = Duration::from_secs(10);
const SECRET: &[u8] = b"worker secret";
const ADMIN_TOKEN: &str = "mdt_ops-admin-token";
const USER_TOKEN: &str = "mdt_ops-user-token";

fn config() -> HttpConfig {
    HttpConfig {
        users: vec![
            UserConfig {
                name: "admin".into(),
                role: UserRole::Admin,
                password_hash: None,
                token_sha256: Some(token_digest(ADMIN_TOKEN)),
            },
            UserConfig {
                name: "carol".into(),
                role: UserRole::User,
                password_hash: None,
                token_sha256: Some(token_digest(USER_TOKEN)),
            },
        ],
        ..HttpConfig::default()
    }
}

/// A broker on a file log with a snapshot store, its HTTP API and worker port on loopback.
struct Harness {
    broker: Option<Broker>,
    handle: BrokerHandle,
    stop: CancellationToken,
    base: String,
    workers: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start(http: HttpConfig) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = FileLog::open(dir.path().join("log"), FileLogConfig::default()).unwrap();
        let snapshots = Arc::new(SnapshotStore::open(dir.path().join("snapshots")).unwrap());
        let stop = CancellationToken::new();
        let broker = Broker::start(
            BrokerConfig {
                broker_id: "ops-1".into(),
                ..BrokerConfig::default()
            },
            Arc::new(log) as Arc<dyn CommitLog>,
            Some(snapshots),
            Arc::new(DefaultGroupMapper),
            Arc::new(SystemClock),
            stop.clone().cancelled_owned(),
        )
        .await
        .expect("broker starts");
        let handle = broker.handle();
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", socket.local_addr().unwrap());
        tokio::spawn(http::serve(
            socket,
            handle.clone(),
            http.validate().unwrap(),
            stop.clone().cancelled_owned(),
        ));
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let workers = socket.local_addr().unwrap();
        tokio::spawn(worker_listener::run(
            socket,
            ListenerConfig::new("ops-1", SharedSecret::new(SECRET)),
            broker.worker_events(),
            stop.clone().cancelled_owned(),
        ));
        Harness {
            broker: Some(broker),
            handle,
            stop,
            base,
            workers,
            _dir: dir,
        }
    }

    async fn get(&self, path: &str, auth: Option<&str>) -> (StatusCode, String) {
        get(&format!("{}{path}", self.base), auth).await
    }

    async fn submit(&self, tasks: Value) -> Vec<u64> {
        let body = json!({"action": "submitTasks", "tasks": tasks});
        let res = tokio::time::timeout(
            WAIT,
            reqwest::Client::new()
                .post(format!("{}/majordodo", self.base))
                .bearer_auth(ADMIN_TOKEN)
                .json(&body)
                .send(),
        )
        .await
        .expect("answered in time")
        .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let v: Value = res.json().await.unwrap();
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["taskId"].as_u64().unwrap())
            .collect()
    }

    /// Scrapes `/metrics` from loopback (no credentials needed by default).
    async fn scrape(&self) -> Scrape {
        let (status, text) = self.get("/metrics", None).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        Scrape::parse(&text)
    }

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

async fn get(url: &str, auth: Option<&str>) -> (StatusCode, String) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(token) = auth {
        req = req.bearer_auth(token);
    }
    let res = tokio::time::timeout(WAIT, req.send())
        .await
        .expect("answered in time")
        .unwrap();
    let status = res.status();
    (status, res.text().await.unwrap())
}

/// A `/metrics` answer read by `prometheus-parse`, after checking every line against the
/// text format's grammar.
struct Scrape {
    samples: Vec<prometheus_parse::Sample>,
    /// Names declared by `# TYPE` lines.
    families: BTreeSet<String>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut families = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                assert!(
                    ["counter", "gauge", "histogram"].contains(&kind),
                    "type {kind} of {name}"
                );
                families.insert(name.to_owned());
            } else if line.starts_with("# HELP ") || line.is_empty() {
            } else {
                assert!(!line.starts_with('#'), "unexpected comment line {line:?}");
                check_sample_line(line);
            }
        }
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let parsed = prometheus_parse::Scrape::parse(lines).expect("the text format parses");
        assert!(!parsed.samples.is_empty());
        Scrape {
            samples: parsed.samples,
            families,
        }
    }

    /// The value of the sample `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
    }

    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.last().map_or(0.0, |b| b.count)
                }
                prometheus_parse::Value::Summary(_) => panic!("no summaries are exported"),
            })
    }

    /// The observations of histogram `name` (`<name>_count`).
    fn count(&self, name: &str) -> f64 {
        let count = format!("{name}_count");
        self.samples
            .iter()
            .find(|s| s.metric == count || s.metric == name)
            .map(|s| match &s.value {
                prometheus_parse::Value::Histogram(b) => b.last().map_or(0.0, |b| b.count),
                prometheus_parse::Value::Untyped(v) | prometheus_parse::Value::Counter(v) => *v,
                other => panic!("{name}: {other:?}"),
            })
            .unwrap_or_else(|| panic!("no histogram {name}"))
    }

    /// Every value of label `label` among the samples of `name`.
    fn label_values(&self, name: &str, label: &str) -> BTreeSet<String> {
        self.samples
            .iter()
            .filter(|s| s.metric == name)
            .filter_map(|s| s.labels.get(label).map(str::to_owned))
            .collect()
    }
}

/// A sample line of the text format: `name{label="value",...} value`.
fn check_sample_line(line: &str) {
    let (series, value) = line.rsplit_once(' ').expect("a value after the series");
    assert!(
        value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
        "value {value:?} of {line:?}"
    );
    let name_end = series.find('{').unwrap_or(series.len());
    let name = &series[..name_end];
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !name.starts_with(|c: char| c.is_ascii_digit()),
        "metric name {name:?} in {line:?}"
    );
    if name_end < series.len() {
        let labels = series[name_end..]
            .strip_prefix('{')
            .and_then(|l| l.strip_suffix('}'))
            .unwrap_or_else(|| panic!("labels of {line:?}"));
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once("=\"").expect("label=\"value\"");
            assert!(
                key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "label {key:?} in {line:?}"
            );
            assert!(!value.contains('\n'), "{line:?}");
        }
    }
}

/// A worker speaking raw frames to the real worker listener (10 slots, group 0).
struct RawWorker {
    framed: Framed<TcpStream, WorkerCodec>,
}

impl RawWorker {
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
                    groups: vec![0],
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

    async fn assignments(&mut self, n: usize) -> Vec<(u64, u32)> {
        let mut got = Vec::new();
        while got.len() < n {
            if let Message::Assign(a) = self.recv().await {
                got.extend(a.assignments.iter().map(|a| (a.task_id, a.attempt)));
            }
        }
        got
    }

    async fn finish(&mut self, seq: u64, task: (u64, u32), outcome: Outcome) {
        self.framed
            .send(Message::Finished(Finished {
                seq,
                reports: vec![FinishReport {
                    task_id: task.0,
                    attempt: task.1,
                    outcome: outcome as i32,
                    result: "r".into(),
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

#[tokio::test]
async fn health_and_ready_answer_without_credentials_on_a_leader() {
    // Goal: /health says alive and /ready says the leader is ready, both without credentials;
    // other methods are refused.
    let h = Harness::start(config()).await;
    let (s, body) = h.get("/health", None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "alive");
    assert_eq!(v["brokerId"], "ops-1");
    let (s, body) = h.get("/ready", None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ready");
    assert_eq!(v["role"], "LEADER");
    let res = reqwest::Client::new()
        .post(format!("{}/ready", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    h.stop().await;
}

/// A log whose replay waits until the test opens its gate: the broker stays recovering.
struct GatedReplay {
    inner: MemoryLog,
    gate: Arc<tokio::sync::Semaphore>,
}

impl CommitLog for GatedReplay {
    fn append(&self, records: Vec<bytes::Bytes>) -> AppendFuture {
        self.inner.append(records)
    }

    fn replay<'a>(
        &'a self,
        after: Lsn,
        f: &'a mut ReplayFn<'a>,
    ) -> futures_util::future::BoxFuture<'a, Result<ReplayReport, LogError>> {
        Box::pin(async move {
            let _open = self.gate.acquire().await.expect("gate open");
            self.inner.replay(after, f).await
        })
    }

    fn last_lsn(&self) -> Lsn {
        self.inner.last_lsn()
    }

    fn release_before(
        &self,
        lsn: Lsn,
    ) -> futures_util::future::BoxFuture<'_, Result<(), LogError>> {
        self.inner.release_before(lsn)
    }

    fn max_record_size(&self) -> usize {
        self.inner.max_record_size()
    }

    fn close(&self) -> futures_util::future::BoxFuture<'_, Result<(), LogError>> {
        self.inner.close()
    }
}

#[tokio::test]
async fn ready_is_503_while_the_broker_recovers_and_200_once_it_leads() {
    // Goal: a broker still replaying its log is alive (/health 200) but not ready (/ready 503,
    // role RECOVERY); /metrics still answers, with the recovering role; once recovered it is
    // ready.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let log = GatedReplay {
        inner: MemoryLog::open(&MemoryStore::new()),
        gate: gate.clone(),
    };
    let stop = CancellationToken::new();
    let booting = Broker::launch(
        BrokerConfig::default(),
        Arc::new(log),
        None,
        Arc::new(DefaultGroupMapper),
        Arc::new(SystemClock),
        stop.clone().cancelled_owned(),
    );
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", socket.local_addr().unwrap());
    tokio::spawn(http::serve(
        socket,
        booting.handle(),
        config().validate().unwrap(),
        stop.clone().cancelled_owned(),
    ));
    let (s, _) = get(&format!("{base}/health"), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = get(&format!("{base}/ready"), None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["role"], "RECOVERY");
    assert!(v["error"].as_str().unwrap().contains("recovering"), "{v}");
    let (s, text) = get(&format!("{base}/metrics"), None).await;
    assert_eq!(s, StatusCode::OK);
    let scrape = Scrape::parse(&text);
    assert_eq!(
        scrape.value("majordodo_broker_role", &[("role", "recovering")]),
        1.0
    );
    assert!(scrape.find("majordodo_tasks", &[]).is_none());
    gate.add_permits(1);
    let broker = booting.recovered().await.expect("recovers");
    let (s, body) = get(&format!("{base}/ready"), None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    stop.cancel();
    let _ = broker.wait().await;
}

#[tokio::test]
async fn metrics_follow_submits_assignments_and_finishes() {
    // Goal: a scrape parses as the Prometheus text format, and its counters, histograms and
    // gauges move as tasks are submitted, assigned and finished, workers connect, logins fail
    // and a snapshot is written.
    let h = Harness::start(config()).await;
    let before = h.scrape().await;
    assert_eq!(
        before.value("majordodo_broker_role", &[("role", "leader")]),
        1.0
    );
    assert_eq!(before.value("majordodo_tasks_submitted_total", &[]), 0.0);
    assert_eq!(
        before.value("majordodo_tasks", &[("status", "waiting")]),
        0.0
    );
    assert_eq!(
        before.value("majordodo_workers", &[("status", "CONNECTED")]),
        0.0
    );

    h.submit(json!([
        {"userid": "alice", "tasktype": "render", "data": "1", "maxattempts": 1},
        {"userid": "alice", "tasktype": "render", "data": "2", "maxattempts": 1},
        {"userid": "bob", "tasktype": "index", "data": "3", "maxattempts": 1}
    ]))
    .await;
    let submitted = h.scrape().await;
    assert_eq!(submitted.value("majordodo_tasks_submitted_total", &[]), 3.0);
    assert_eq!(
        submitted.value("majordodo_tasks", &[("status", "waiting")]),
        3.0
    );
    assert_eq!(
        submitted.value("majordodo_tasks_by_user", &[("user", "alice")]),
        2.0
    );
    assert_eq!(
        submitted.value("majordodo_tasks_by_user", &[("user", "bob")]),
        1.0
    );
    assert_eq!(
        submitted.value("majordodo_tasks_by_type", &[("tasktype", "render")]),
        2.0
    );
    assert_eq!(
        submitted.value("majordodo_task_assignments_total", &[]),
        0.0
    );
    assert!(submitted.count("majordodo_log_append_seconds") >= 1.0);
    assert!(submitted.count("majordodo_log_append_batch_entries") >= 1.0);
    assert!(submitted.value("majordodo_log_fsyncs_total", &[]) >= 1.0);
    assert!(submitted.value("majordodo_log_applied_lsn", &[]) >= 3.0);

    let mut worker = RawWorker::connect(h.workers, "w1").await;
    let mut assigned = worker.assignments(3).await;
    assigned.sort_unstable();
    h.wait_until("three running", |s| s.count(TaskStatus::Running) == 3)
        .await;
    let running = h.scrape().await;
    assert_eq!(running.value("majordodo_task_assignments_total", &[]), 3.0);
    assert_eq!(
        running.value("majordodo_tasks", &[("status", "running")]),
        3.0
    );
    assert_eq!(running.count("majordodo_task_queue_seconds"), 3.0);
    assert_eq!(
        running.value("majordodo_workers", &[("status", "CONNECTED")]),
        1.0
    );
    assert_eq!(running.value("majordodo_worker_slots", &[]), 10.0);
    assert_eq!(running.value("majordodo_worker_free_slots", &[]), 7.0);

    worker.finish(1, assigned[0], Outcome::Finished).await;
    worker.finish(2, assigned[1], Outcome::Error).await;
    h.wait_until("two ended", |s| {
        s.count(TaskStatus::Finished) == 1 && s.count(TaskStatus::Error) == 1
    })
    .await;
    let ended = h.scrape().await;
    assert_eq!(
        ended.value(
            "majordodo_task_attempts_ended_total",
            &[("outcome", "finished")]
        ),
        1.0
    );
    assert_eq!(
        ended.value(
            "majordodo_task_attempts_ended_total",
            &[("outcome", "error")]
        ),
        1.0
    );
    assert_eq!(ended.count("majordodo_task_run_seconds"), 2.0);
    assert_eq!(ended.value("majordodo_worker_free_slots", &[]), 9.0);
    assert_eq!(
        ended.value("majordodo_tasks", &[("status", "finished")]),
        1.0
    );

    // A wrong token is an authentication failure.
    let (s, _) = h.get("/majordodo?view=status", Some("mdt_wrong")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(ended.find("majordodo_snapshot_age_seconds", &[]).is_none());
    h.handle.checkpoint().await.expect("a snapshot is written");
    let last = h.scrape().await;
    assert_eq!(
        last.value(
            "majordodo_http_auth_failures_total",
            &[("reason", "bad_token")]
        ),
        1.0
    );
    let age = last.value("majordodo_snapshot_age_seconds", &[]);
    assert!((0.0..60.0).contains(&age), "{age}");

    // Every metric the dashboard charts is one the broker exports (the cluster-only ones are
    // checked against a cluster in tests/replication.rs).
    let exported: BTreeSet<String> = last.families.clone();
    for name in dashboard_metrics() {
        if CLUSTER_ONLY.contains(&name.as_str()) {
            continue;
        }
        assert!(
            exported.contains(&name),
            "the dashboard charts {name}, which /metrics does not export: {exported:?}"
        );
    }
    h.stop().await;
}

/// Metrics only a broker of a replicated cluster exports.
const CLUSTER_ONLY: &[&str] = &[
    "majordodo_cluster_current_ledger",
    "majordodo_replication_lag_entries",
];

/// Every metric family named in docs/grafana-dashboard.json's queries (`majordodo_...`, with
/// the `_bucket`, `_sum`, `_count` and `_total` suffixes of the text format taken off).
fn dashboard_metrics() -> BTreeSet<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/grafana-dashboard.json"
    );
    let text = std::fs::read_to_string(path).expect("docs/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    assert!(exprs.len() >= 8, "the dashboard charts few metrics");
    let mut names = BTreeSet::new();
    for expr in exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("majordodo_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(family.to_owned());
            rest = &tail[end..];
        }
    }
    names
}

#[tokio::test]
async fn a_broker_with_more_users_than_top_n_names_at_most_n_plus_other() {
    // Goal: with metrics_top_n = 3 and 12 users, the user label takes at most 4 values: the 3
    // users with the most tasks and `other` with the rest; the same holds for task types.
    let h = Harness::start(HttpConfig {
        metrics_top_n: 3,
        ..config()
    })
    .await;
    let mut tasks = Vec::new();
    for u in 0..12 {
        // user u has u + 1 tasks, of type t<u>
        for i in 0..=u {
            tasks.push(
                json!({"userid": format!("user{u:02}"), "tasktype": format!("t{u:02}"),
                "data": format!("{u}-{i}"), "maxattempts": 1}),
            );
        }
    }
    let total = tasks.len() as f64;
    h.submit(Value::Array(tasks)).await;
    let scrape = h.scrape().await;
    let users = scrape.label_values("majordodo_tasks_by_user", "user");
    assert_eq!(
        users,
        ["user09", "user10", "user11", "other"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect::<BTreeSet<_>>()
    );
    let types = scrape.label_values("majordodo_tasks_by_type", "tasktype");
    assert_eq!(types.len(), 4, "{types:?}");
    let named: f64 = ["user09", "user10", "user11"]
        .iter()
        .map(|u| scrape.value("majordodo_tasks_by_user", &[("user", u)]))
        .sum();
    assert_eq!(named, 10.0 + 11.0 + 12.0);
    assert_eq!(
        scrape.value("majordodo_tasks_by_user", &[("user", "other")]),
        total - named
    );
    h.stop().await;
}

/// Calls `/metrics` through the router as if from `peer`.
async fn metrics_from(
    app: &axum::Router,
    peer: &str,
    token: Option<&str>,
) -> (StatusCode, HashMap<String, String>) {
    let mut req = Request::get("/metrics");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let mut req = req.body(Body::empty()).unwrap();
    let addr: SocketAddr = peer.parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(addr));
    let res = tokio::time::timeout(WAIT, app.clone().oneshot(req))
        .await
        .expect("answered in time")
        .unwrap();
    let status = res.status();
    let headers = res
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    (status, headers)
}

#[tokio::test]
async fn metrics_access_is_open_on_loopback_only_by_default_and_configurable() {
    // Goal: by default /metrics needs no credentials from a loopback peer (IPv4, IPv6 and
    // IPv4-mapped) and an admin's from any other (401 without, 403 for a plain user); `admin`
    // asks an admin's everywhere, `open` nobody's. /health and /ready never ask.
    let h = Harness::start(config()).await;
    let far = "192.0.2.7:5000"; // a documentation address: only a value, nothing is sent
    for (access, peer, token, want) in [
        (
            MetricsAccess::Loopback,
            "127.0.0.1:4000",
            None,
            StatusCode::OK,
        ),
        (MetricsAccess::Loopback, "[::1]:4000", None, StatusCode::OK),
        (
            MetricsAccess::Loopback,
            "[::ffff:127.0.0.1]:4000",
            None,
            StatusCode::OK,
        ),
        (MetricsAccess::Loopback, far, None, StatusCode::UNAUTHORIZED),
        (
            MetricsAccess::Loopback,
            far,
            Some(USER_TOKEN),
            StatusCode::FORBIDDEN,
        ),
        (
            MetricsAccess::Loopback,
            far,
            Some(ADMIN_TOKEN),
            StatusCode::OK,
        ),
        (
            MetricsAccess::Admin,
            "127.0.0.1:4000",
            None,
            StatusCode::UNAUTHORIZED,
        ),
        (
            MetricsAccess::Admin,
            "127.0.0.1:4000",
            Some(ADMIN_TOKEN),
            StatusCode::OK,
        ),
        (MetricsAccess::Open, far, None, StatusCode::OK),
    ] {
        let settings = HttpConfig {
            metrics_access: access,
            ..config()
        }
        .validate()
        .unwrap();
        let app = http::router(h.handle.clone(), settings);
        let (status, headers) = metrics_from(&app, peer, token).await;
        assert_eq!(status, want, "{access:?} from {peer} with {token:?}");
        if status == StatusCode::OK {
            assert_eq!(
                headers.get("content-type").map(String::as_str),
                Some("text/plain; version=0.0.4; charset=utf-8")
            );
        }
        for probe in ["/health", "/ready"] {
            let mut req = Request::get(probe).body(Body::empty()).unwrap();
            req.extensions_mut()
                .insert(ConnectInfo(far.parse::<SocketAddr>().unwrap()));
            let res = app.clone().oneshot(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK, "{probe} from {far}");
        }
    }
    h.stop().await;
}
