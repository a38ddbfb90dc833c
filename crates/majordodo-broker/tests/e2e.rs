//! End to end inside one process, over real sockets: a broker on a file log with its worker
//! listener on 127.0.0.1, and worker agents connecting over TCP.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use majordodo_broker::worker_listener::{self, ListenerConfig};
use majordodo_broker::{Broker, BrokerConfig, BrokerHandle, SystemClock};
use majordodo_core::leader::{SubmitOutcome, SubmitRequest};
use majordodo_core::{DefaultGroupMapper, LeaderConfig, TaskId, TaskStatus};
use majordodo_log::{CommitLog, FileLog, FileLogConfig, SnapshotStore};
use majordodo_proto::worker::{Capacity, SharedSecret};
use majordodo_worker::{Executors, TaskFailure, WorkerConfig, executor_fn};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "e2e-secret";

/// A broker with its worker listener, on a file log in `dir`.
struct Running {
    broker: Option<Broker>,
    handle: BrokerHandle,
    addr: std::net::SocketAddr,
    stop: CancellationToken,
    listener: JoinHandle<()>,
    log: Arc<dyn CommitLog>,
}

async fn start_broker(dir: &std::path::Path, port: u16, idle: Duration) -> Running {
    start_broker_with(dir, port, idle, FileLogConfig::default()).await
}

async fn start_broker_with(
    dir: &std::path::Path,
    port: u16,
    idle: Duration,
    log_config: FileLogConfig,
) -> Running {
    let (log, _) = FileLog::open(dir.join("log"), log_config).expect("open log");
    let log: Arc<dyn CommitLog> = Arc::new(log);
    let snapshots = Arc::new(SnapshotStore::open(dir.join("snapshots")).expect("open snapshots"));
    let stop = CancellationToken::new();
    let config = BrokerConfig {
        leader: LeaderConfig {
            max_worker_idle: idle.as_millis() as i64,
            ..LeaderConfig::default()
        },
        ..BrokerConfig::default()
    };
    let broker = Broker::start(
        config,
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
    let mut lc = ListenerConfig::new("e2e-broker", SharedSecret::new(SECRET));
    lc.max_worker_idle_time = idle;
    lc.keepalive_interval = idle / 4;
    let events = broker.worker_events();
    let listener_stop = stop.clone();
    let listener = tokio::spawn(async move {
        worker_listener::run(tcp, lc, events, listener_stop.cancelled_owned())
            .await
            .expect("listener config is valid");
    });
    Running {
        handle: broker.handle(),
        broker: Some(broker),
        addr,
        stop,
        listener,
        log,
    }
}

impl Running {
    async fn stop(mut self) {
        self.stop.cancel();
        self.listener.await.unwrap();
        self.broker.take().unwrap().wait().await.unwrap();
        self.log.close().await.unwrap();
    }
}

fn worker_config(
    addr: std::net::SocketAddr,
    id: &str,
    threads: u32,
    idle: Duration,
) -> WorkerConfig {
    let mut c = WorkerConfig::new(addr.to_string(), SharedSecret::new(SECRET));
    c.worker_id = id.into();
    c.capacity = Capacity {
        max_threads: threads,
        ..Capacity::default()
    };
    c.capacity.groups = vec![0];
    c.keepalive_interval = idle / 4;
    c.reconnect_backoff.initial = Duration::from_millis(20);
    c.reconnect_backoff.max = Duration::from_millis(200);
    c
}

fn spawn_worker(config: WorkerConfig, executors: Executors) -> (JoinHandle<()>, CancellationToken) {
    let stop = CancellationToken::new();
    let s = stop.clone();
    let join = tokio::spawn(async move {
        let _ = majordodo_worker::run(config, executors, s.cancelled_owned()).await;
    });
    (join, stop)
}

async fn submit(handle: &BrokerHandle, tasks: Vec<SubmitRequest>) -> Vec<TaskId> {
    handle
        .submit(tasks)
        .await
        .expect("submit")
        .into_iter()
        .map(|o| match o {
            SubmitOutcome::Accepted(id) => id,
            SubmitOutcome::NotCreated(why) => panic!("not created: {why}"),
        })
        .collect()
}

/// Polls `f` until it returns true, for at most `limit`.
async fn wait_until<F, Fut>(limit: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn count(handle: &BrokerHandle, status: TaskStatus) -> u64 {
    handle.query(move |v| v.state.count(status)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tasks_run_to_completion_with_their_results() {
    // Goal: 10 000 tasks submitted in batches are all run by two workers over TCP and end
    // finished with the result their executor returned.
    let dir = tempfile::tempdir().unwrap();
    let idle = Duration::from_secs(10);
    let broker = start_broker(dir.path(), 0, idle).await;
    let echo = || {
        Executors::new().with(
            "echo",
            executor_fn(
                |t| async move { Ok::<_, TaskFailure>(format!("{}:{}", t.task_id, t.data)) },
            ),
        )
    };
    let workers = [
        spawn_worker(worker_config(broker.addr, "w1", 64, idle), echo()),
        spawn_worker(worker_config(broker.addr, "w2", 64, idle), echo()),
    ];
    let mut ids = Vec::new();
    for batch in 0..20 {
        let tasks = (0..500)
            .map(|i| SubmitRequest {
                task_type: "echo".into(),
                user_id: format!("user{}", i % 7),
                data: format!("payload-{batch}-{i}"),
                max_attempts: 1,
                ..Default::default()
            })
            .collect();
        ids.extend(submit(&broker.handle, tasks).await);
    }
    assert_eq!(ids.len(), 10_000);
    wait_until(Duration::from_secs(120), "10 000 tasks finished", || {
        let h = broker.handle.clone();
        async move { count(&h, TaskStatus::Finished).await == 10_000 }
    })
    .await;
    let bad = broker
        .handle
        .query(|v| {
            v.state
                .tasks()
                .filter(|t| {
                    let expected = format!("{}:{}", t.id, t.data);
                    t.status != TaskStatus::Finished
                        || t.result.as_deref() != Some(expected.as_str())
                })
                .count()
        })
        .await
        .unwrap();
    assert_eq!(bad, 0, "every task finished with its own result");
    let per_worker = broker
        .handle
        .query(|v| {
            v.state
                .tasks()
                .filter(|t| t.worker_id.as_deref() == Some("w1"))
                .count()
        })
        .await
        .unwrap();
    assert!(
        per_worker > 0 && per_worker < 10_000,
        "both workers ran tasks ({per_worker} on w1)"
    );
    for (join, stop) in workers {
        stop.cancel();
        join.await.unwrap();
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_too_large_for_the_log_fails_that_attempt_and_nothing_else() {
    // Goal: a worker's result too large for one log record becomes a task error naming the
    // sizes, the other tasks finish, the broker keeps running, and a
    // restart on the same directory boots (no crash loop from a re-sent report).
    let dir = tempfile::tempdir().unwrap();
    let idle = Duration::from_secs(10);
    let config = FileLogConfig {
        max_record_size: 64 * 1024,
        ..FileLogConfig::default()
    };
    let broker = start_broker_with(dir.path(), 0, idle, config.clone()).await;
    let executors = Executors::new().with(
        "size",
        executor_fn(|t| async move {
            let n: usize = t.data.parse().expect("a size");
            Ok::<_, TaskFailure>("r".repeat(n))
        }),
    );
    let (join, stop) = spawn_worker(worker_config(broker.addr, "w1", 8, idle), executors);
    let sizes = [10usize, 200_000, 20];
    let ids = submit(
        &broker.handle,
        sizes
            .iter()
            .map(|n| SubmitRequest {
                task_type: "size".into(),
                user_id: "u".into(),
                data: n.to_string(),
                max_attempts: 1,
                ..Default::default()
            })
            .collect(),
    )
    .await;
    wait_until(Duration::from_secs(30), "three tasks ended", || {
        let h = broker.handle.clone();
        async move {
            count(&h, TaskStatus::Finished).await + count(&h, TaskStatus::Error).await == 3
        }
    })
    .await;
    let ended = broker
        .handle
        .query(move |v| {
            ids.iter()
                .map(|id| {
                    let t = v.state.task(*id).unwrap();
                    (
                        t.status,
                        t.result.as_deref().unwrap_or("").len().min(200),
                        t.result
                            .as_deref()
                            .map(|r| r.chars().take(200).collect::<String>()),
                    )
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
    assert_eq!(ended[0].0, TaskStatus::Finished);
    assert_eq!(ended[2].0, TaskStatus::Finished);
    assert_eq!(ended[1].0, TaskStatus::Error);
    let text = ended[1].2.clone().unwrap();
    assert!(
        text.starts_with("result too large (200000 bytes, limit ") && text.ends_with(')'),
        "{text}"
    );
    stop.cancel();
    join.await.unwrap();
    broker.stop().await;
    let broker = start_broker_with(dir.path(), 0, idle, config).await;
    assert_eq!(count(&broker.handle, TaskStatus::Error).await, 1);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_broker_keeps_results_and_reconciles_running_tasks() {
    // Goal: a broker stopped abruptly mid-run and restarted on the same data keeps every
    // acknowledged task and finished result; tasks still running on the worker finish through
    // reconciliation when it reconnects, and their results are accepted.
    let dir = tempfile::tempdir().unwrap();
    let idle = Duration::from_secs(10);
    let broker = start_broker(dir.path(), 0, idle).await;
    let port = broker.addr.port();
    let release = Arc::new(tokio::sync::Notify::new());
    let started = Arc::new(AtomicU32::new(0));
    let executors = {
        let release = release.clone();
        let started = started.clone();
        Executors::new()
            .with(
                "quick",
                executor_fn(
                    |t| async move { Ok::<_, TaskFailure>(format!("quick {}", t.task_id)) },
                ),
            )
            .with(
                "slow",
                executor_fn(move |t| {
                    let release = release.clone();
                    let started = started.clone();
                    async move {
                        started.fetch_add(1, Ordering::SeqCst);
                        release.notified().await;
                        Ok::<_, TaskFailure>(format!("slow {}", t.task_id))
                    }
                }),
            )
    };
    let (worker, worker_stop) = spawn_worker(worker_config(broker.addr, "w1", 16, idle), executors);
    let task = |t: &str| SubmitRequest {
        task_type: t.into(),
        user_id: "u".into(),
        data: String::new(),
        max_attempts: 1,
        ..Default::default()
    };
    let quick = submit(&broker.handle, (0..20).map(|_| task("quick")).collect()).await;
    let slow = submit(&broker.handle, (0..3).map(|_| task("slow")).collect()).await;
    wait_until(
        Duration::from_secs(30),
        "quick tasks finished and slow ones started",
        || {
            let h = broker.handle.clone();
            let started = started.clone();
            async move {
                count(&h, TaskStatus::Finished).await == 20 && started.load(Ordering::SeqCst) == 3
            }
        },
    )
    .await;

    // Abrupt stop: the dispatcher is dropped without a checkpoint; the listener goes away.
    let Running {
        broker: b,
        stop,
        listener,
        log,
        ..
    } = broker;
    stop.cancel();
    listener.await.unwrap();
    b.unwrap().wait().await.unwrap();
    log.close().await.unwrap();

    let broker = start_broker(dir.path(), port, idle).await;
    let (finished, running) = broker
        .handle
        .query(|v| {
            (
                v.state.count(TaskStatus::Finished),
                v.state.count(TaskStatus::Running),
            )
        })
        .await
        .unwrap();
    assert_eq!(
        (finished, running),
        (20, 3),
        "acknowledged state survives the restart"
    );
    let first = quick[0];
    let result = broker
        .handle
        .query(move |v| {
            v.state
                .task(first)
                .and_then(|t| t.result.as_deref().map(str::to_string))
        })
        .await
        .unwrap();
    assert_eq!(result, Some(format!("quick {}", quick[0])));
    // The worker reconnects (listing its three running tasks), then they finish.
    release.notify_waiters();
    wait_until(
        Duration::from_secs(30),
        "slow tasks finished after reconnection",
        || {
            let h = broker.handle.clone();
            let release = release.clone();
            async move {
                release.notify_waiters();
                count(&h, TaskStatus::Finished).await == 23
            }
        },
    )
    .await;
    for id in slow {
        let r = broker
            .handle
            .query(move |v| {
                v.state.task(id).map(|t| {
                    (
                        t.status,
                        t.attempts,
                        t.result.as_deref().map(str::to_string),
                    )
                })
            })
            .await
            .unwrap();
        assert_eq!(
            r,
            Some((TaskStatus::Finished, 1, Some(format!("slow {id}")))),
            "task {id}"
        );
    }
    worker_stop.cancel();
    worker.await.unwrap();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_of_a_vanished_worker_is_retried_elsewhere_then_errors_when_attempts_run_out() {
    // Goal: a worker that disappears mid-task is declared dead after the idle time; its task runs
    // again on another worker (attempt 2), and with maxattempts 2 a second loss ends it in error
    // with result `worker <id> died`.
    let dir = tempfile::tempdir().unwrap();
    let idle = Duration::from_millis(800);
    let broker = start_broker(dir.path(), 0, idle).await;
    let hang = || {
        Executors::new().with(
            "hang",
            executor_fn(|_| async move {
                std::future::pending::<()>().await;
                Ok::<_, TaskFailure>(String::new())
            }),
        )
    };
    let id = submit(
        &broker.handle,
        vec![SubmitRequest {
            task_type: "hang".into(),
            user_id: "u".into(),
            max_attempts: 2,
            ..Default::default()
        }],
    )
    .await[0];
    let on = |worker: &'static str, attempt: u32| {
        let h = broker.handle.clone();
        async move {
            h.query(move |v| {
                v.state.task(id).is_some_and(|t| {
                    t.status == TaskStatus::Running
                        && t.attempts == attempt
                        && t.worker_id.as_deref() == Some(worker)
                })
            })
            .await
            .unwrap()
        }
    };
    // First worker takes it, then vanishes (its task is aborted, the socket dropped).
    let (w1, _) = spawn_worker(worker_config(broker.addr, "w1", 1, idle), hang());
    wait_until(Duration::from_secs(10), "attempt 1 on w1", || on("w1", 1)).await;
    w1.abort();
    let _ = w1.await;
    let (w2, _) = spawn_worker(worker_config(broker.addr, "w2", 1, idle), hang());
    wait_until(Duration::from_secs(10), "attempt 2 on w2", || on("w2", 2)).await;
    let result = broker
        .handle
        .query(move |v| {
            v.state
                .task(id)
                .and_then(|t| t.result.as_deref().map(str::to_string))
        })
        .await
        .unwrap();
    assert_eq!(result.as_deref(), Some("worker w1 died"));
    w2.abort();
    let _ = w2.await;
    wait_until(Duration::from_secs(10), "task in error", || {
        let h = broker.handle.clone();
        async move {
            h.query(move |v| v.state.task(id).map(|t| t.status))
                .await
                .unwrap()
                == Some(TaskStatus::Error)
        }
    })
    .await;
    let (attempts, result) = broker
        .handle
        .query(move |v| {
            v.state
                .task(id)
                .map(|t| (t.attempts, t.result.as_deref().map(str::to_string)))
                .unwrap()
        })
        .await
        .unwrap();
    assert_eq!(attempts, 2);
    assert_eq!(result.as_deref(), Some("worker w2 died"));
    broker.stop().await;
}
