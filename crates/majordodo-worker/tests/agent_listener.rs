//! The worker agent against the broker's real worker listener over TCP on 127.0.0.1, with the
//! test playing the dispatcher: it receives the listener's events, admits workers, pushes
//! assignments and acknowledges (or, on purpose, ignores) finish reports.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use majordodo_broker::worker_listener::{
    self, DisconnectReason, ListenerConfig, Rejection, WorkerEvent, WorkerHello, WorkerSession,
};
use majordodo_proto::worker::{
    ANY_TASK_TYPE, Assign, Assignment, Capacity, Challenge, Connect, FinishReport, FinishedAck,
    Message, Outcome, RunningTask, SharedSecret, TaskShape, Welcome, WorkerCodec, broker_proof,
    random_nonce,
};
use majordodo_worker::{
    Backoff, BrokerLocator, Executors, LocateFuture, StatusHandle, TaskFailure, Worker,
    WorkerConfig, WorkerError, executor_fn,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

/// Bound on every wait in these tests, so a bug fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(10);

const SECRET: &str = "the shared secret";

/// The broker side: the real listener, with the test as its dispatcher.
struct Broker {
    addr: SocketAddr,
    events: mpsc::Receiver<WorkerEvent>,
    stop: Option<oneshot::Sender<()>>,
    listener: JoinHandle<()>,
}

impl Broker {
    async fn start(bind: &str) -> Broker {
        let socket = TcpListener::bind(bind).await.expect("bind");
        let addr = socket.local_addr().unwrap();
        let config = ListenerConfig::new("test-broker", SharedSecret::new(SECRET));
        let (events_tx, events) = mpsc::channel(64);
        let (stop, stopped) = oneshot::channel();
        let listener = tokio::spawn(async move {
            worker_listener::run(socket, config, events_tx, async {
                let _ = stopped.await;
            })
            .await
            .expect("valid listener config");
        });
        Broker {
            addr,
            events,
            stop: Some(stop),
            listener,
        }
    }

    /// The next event other than a ping.
    async fn next(&mut self) -> WorkerEvent {
        loop {
            let event = tokio::time::timeout(WAIT, self.events.recv())
                .await
                .expect("an event arrives in time")
                .expect("the listener runs");
            if !matches!(event, WorkerEvent::Ping { .. }) {
                return event;
            }
        }
    }

    async fn accept(&mut self) -> (WorkerHello, WorkerSession) {
        match self.next().await {
            WorkerEvent::Connected { hello, reply, .. } => (*hello, reply.accept()),
            other => panic!("expected Connected, got {other:?}"),
        }
    }

    async fn finished(&mut self) -> (u64, Vec<FinishReport>) {
        match self.next().await {
            WorkerEvent::Finished { seq, reports, .. } => (seq, reports),
            other => panic!("expected Finished, got {other:?}"),
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().expect("stopped once").send(());
        tokio::time::timeout(WAIT, self.listener)
            .await
            .expect("the listener stops in time")
            .expect("the listener does not panic");
    }
}

/// A running worker agent.
struct Agent {
    status: StatusHandle,
    stop: Option<oneshot::Sender<()>>,
    run: JoinHandle<Result<(), WorkerError>>,
}

impl Agent {
    fn start(config: WorkerConfig, executors: Executors) -> Agent {
        let worker = Worker::new(config, executors).expect("valid worker config");
        let status = worker.status();
        let (stop, stopped) = oneshot::channel();
        let run = tokio::spawn(worker.run(async {
            let _ = stopped.await;
        }));
        Agent {
            status,
            stop: Some(stop),
            run,
        }
    }

    async fn wait_for(
        &mut self,
        what: &str,
        predicate: impl FnMut(&majordodo_worker::WorkerStatus) -> bool,
    ) {
        tokio::time::timeout(WAIT, self.status.wait_for(predicate))
            .await
            .unwrap_or_else(|_| panic!("worker never got {what}: {:?}", self.status.current()));
    }

    /// Waits for `run` to return on its own.
    async fn result(self) -> Result<(), WorkerError> {
        tokio::time::timeout(WAIT, self.run)
            .await
            .expect("the worker stops in time")
            .expect("the worker does not panic")
    }

    /// Asks for a graceful stop and waits for `run` to return.
    async fn shutdown(mut self) -> Result<(), WorkerError> {
        let _ = self.stop.take().expect("stopped once").send(());
        self.result().await
    }
}

fn capacity(max_threads: u32, by_type: &[(&str, u32)]) -> Capacity {
    Capacity {
        max_threads,
        max_threads_by_task_type: by_type
            .iter()
            .map(|(task_type, limit)| ((*task_type).to_owned(), *limit))
            .collect::<BTreeMap<_, _>>(),
        groups: vec![0],
        excluded_groups: vec![],
        ..Default::default()
    }
}

fn worker_config(addr: SocketAddr) -> WorkerConfig {
    let mut config = WorkerConfig::new(addr.to_string(), SharedSecret::new(SECRET));
    config.worker_id = "worker-1".into();
    config.capacity = capacity(10, &[(ANY_TASK_TYPE, 10)]);
    config.reconnect_backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
    };
    config.rng_seed = Some(7);
    config
}

/// Executors: `echo` returns the data; `gated` waits for a permit of `gate`, then returns
/// "released"; `fail` fails with the data as its message.
fn executors(gate: &Arc<Semaphore>) -> Executors {
    let gate = gate.clone();
    Executors::new()
        .with("echo", executor_fn(|task| async move { Ok(task.data) }))
        .with(
            "gated",
            executor_fn(move |_task| {
                let gate = gate.clone();
                async move {
                    gate.acquire().await.expect("gate open").forget();
                    Ok("released".to_owned())
                }
            }),
        )
        .with(
            "fail",
            executor_fn(|task| async move { Err(TaskFailure::new(task.data)) }),
        )
}

fn assignment(task_id: u64, task_type: &str, data: &str) -> Assignment {
    Assignment {
        task_id,
        attempt: 1,
        task_type: task_type.into(),
        user_id: "alice".into(),
        data: data.into(),
        codepool: None,
        mode: None,
        resources: vec![],
        needs: Default::default(),
        shape: 0,
    }
}

fn report(task_id: u64, outcome: Outcome, result: &str) -> FinishReport {
    FinishReport {
        task_id,
        attempt: 1,
        outcome: outcome as i32,
        result: result.into(),
        retry_after_ms: 0,
    }
}

fn sorted(mut reports: Vec<FinishReport>) -> Vec<FinishReport> {
    reports.sort_by_key(|r| r.task_id);
    reports
}

#[tokio::test]
async fn worker_with_the_right_secret_is_admitted() {
    // Goal: the handshake completes both ways; the dispatcher sees the worker's identity.
    let mut broker = Broker::start("127.0.0.1:0").await;
    let mut config = worker_config(broker.addr);
    config.location = "rack-7".into();
    let process_id = config.process_id.clone();
    let mut agent = Agent::start(config, Executors::new());
    let (hello, _session) = broker.accept().await;
    assert_eq!(hello.worker_id, "worker-1");
    assert_eq!(hello.process_id, process_id);
    assert_eq!(hello.location, "rack-7");
    assert_eq!(hello.capacity, capacity(10, &[(ANY_TASK_TYPE, 10)]));
    assert!(hello.running.is_empty());
    agent.wait_for("connected", |s| s.connected).await;
    assert_eq!(
        agent.status.current().broker_id.as_deref(),
        Some("test-broker")
    );
    assert_eq!(agent.shutdown().await, Ok(()));
    broker.stop().await;
}

#[tokio::test]
async fn wrong_secret_is_rejected_and_run_returns_the_reason() {
    // Goal: a worker with the wrong secret stops with the broker's reason, also in its status.
    let mut broker = Broker::start("127.0.0.1:0").await;
    let mut config = worker_config(broker.addr);
    config.shared_secret = SharedSecret::new("not the secret");
    let agent = Agent::start(config, Executors::new());
    let status = agent.status.clone();
    assert_eq!(
        agent.result().await,
        Err(WorkerError::Rejected {
            reason: "authentication failed".into()
        })
    );
    let status = status.current();
    assert!(status.stopped && !status.connected);
    assert_eq!(
        status.last_error.as_deref(),
        Some("rejected by the broker: authentication failed")
    );
    assert!(
        broker.events.try_recv().is_err(),
        "the dispatcher never heard of it"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_worker_refused_for_longer_than_max_refused_time_stops_with_the_reason() {
    // Goal: a retryable refusal (the worker id held by another live process) is retried, but
    // not forever: after max_refused_time, run returns StillRefused with the broker's reason.
    let mut broker = Broker::start("127.0.0.1:0").await;
    let mut config = worker_config(broker.addr);
    config.max_refused_time = Duration::from_millis(300);
    let agent = Agent::start(config, Executors::new());
    let reason = "worker worker-1 is already connected from process other-1";
    let refuse = async {
        let mut refusals = 0;
        loop {
            match broker.events.recv().await {
                Some(WorkerEvent::Connected { reply, .. }) => {
                    refusals += 1;
                    reply.reject(Rejection {
                        reason: reason.into(),
                        retryable: true,
                    });
                }
                Some(_) => {}
                None => return refusals,
            }
        }
    };
    let result = tokio::select! {
        result = agent.result() => result,
        _ = refuse => panic!("the listener stopped"),
    };
    match result {
        Err(WorkerError::StillRefused {
            reason: got,
            waited,
        }) => {
            assert_eq!(got, reason);
            assert!(waited >= Duration::from_millis(300), "{waited:?}");
        }
        other => panic!("expected StillRefused, got {other:?}"),
    }
    broker.stop().await;
}

#[tokio::test]
async fn a_refusal_that_passes_lets_the_worker_in() {
    // Goal: refusals shorter than max_refused_time only delay the connection.
    let mut broker = Broker::start("127.0.0.1:0").await;
    let mut config = worker_config(broker.addr);
    config.max_refused_time = Duration::from_secs(30);
    let mut agent = Agent::start(config, Executors::new());
    let mut refusals = 0;
    while refusals < 2 {
        match broker.next().await {
            WorkerEvent::Connected { reply, .. } => {
                refusals += 1;
                reply.reject(Rejection {
                    reason: "worker worker-1 is already connected from process other-1".into(),
                    retryable: true,
                });
            }
            WorkerEvent::Disconnected { .. } => {}
            other => panic!("expected Connected, got {other:?}"),
        }
    }
    let (_hello, _session) = loop {
        match broker.next().await {
            WorkerEvent::Connected { hello, reply, .. } => break (*hello, reply.accept()),
            WorkerEvent::Disconnected { .. } => {}
            other => panic!("expected Connected, got {other:?}"),
        }
    };
    agent.wait_for("connected", |s| s.connected).await;
    assert_eq!(agent.shutdown().await, Ok(()));
    broker.stop().await;
}

#[tokio::test]
async fn assignments_are_executed_and_reports_come_back_batched() {
    // Goal: a batch of assignments runs; the reports arrive together once the batch is full,
    // outcomes and results intact; acks empty the worker's pending reports.
    let mut broker = Broker::start("127.0.0.1:0").await;
    let mut config = worker_config(broker.addr);
    config.report_batching.max_reports = 4;
    config.report_batching.max_delay = Duration::from_secs(3600);
    let gate = Arc::new(Semaphore::new(0));
    let mut agent = Agent::start(config, executors(&gate));
    let (_, session) = broker.accept().await;
    session
        .assign(vec![
            assignment(1, "echo", "one"),
            assignment(2, "echo", "two"),
            assignment(3, "fail", "three failed"),
            assignment(4, "echo", "four"),
        ])
        .unwrap();
    let (seq, reports) = broker.finished().await;
    assert_eq!(
        sorted(reports),
        vec![
            report(1, Outcome::Finished, "one"),
            report(2, Outcome::Finished, "two"),
            report(3, Outcome::Error, "three failed"),
            report(4, Outcome::Finished, "four"),
        ]
    );
    agent
        .wait_for("four pending reports", |s| s.pending_reports == 4)
        .await;
    session.ack_finished(seq).unwrap();
    agent
        .wait_for("no pending reports", |s| s.pending_reports == 0)
        .await;
    assert_eq!(agent.shutdown().await, Ok(()));
    broker.stop().await;
}

#[tokio::test]
async fn a_batch_that_does_not_fill_is_sent_after_the_max_delay() {
    // Goal: while another task still runs, a finished task's report waits for its batch to
    // fill, and goes out after max_delay when it does not.
    let mut broker = Broker::start("127.0.0.1:0").await;
    let mut config = worker_config(broker.addr);
    config.report_batching.max_reports = 100;
    config.report_batching.max_delay = Duration::from_millis(300);
    let gate = Arc::new(Semaphore::new(0));
    let agent = Agent::start(config, executors(&gate));
    let (_, session) = broker.accept().await;
    let assigned = Instant::now();
    session
        .assign(vec![
            assignment(8, "gated", "held"),
            assignment(9, "echo", "alone"),
        ])
        .unwrap();
    let (seq, reports) = broker.finished().await;
    assert!(
        assigned.elapsed() >= Duration::from_millis(300),
        "sent after {:?}, before the batch's max_delay",
        assigned.elapsed()
    );
    assert_eq!(reports, vec![report(9, Outcome::Finished, "alone")]);
    session.ack_finished(seq).unwrap();
    gate.add_permits(1);
    let (seq, reports) = broker.finished().await;
    assert_eq!(reports, vec![report(8, Outcome::Finished, "released")]);
    session.ack_finished(seq).unwrap();
    assert_eq!(agent.shutdown().await, Ok(()));
    broker.stop().await;
}

#[tokio::test]
async fn reports_go_at_once_when_nothing_else_runs() {
    // Goal: once the worker runs nothing, its reports are sent without waiting for max_delay
    // (an hour here; the broker helper waits 10 s for them), so a worker of one thread gets
    // its next task at once.
    let mut broker = Broker::start("127.0.0.1:0").await;
    let mut config = worker_config(broker.addr);
    config.report_batching.max_reports = 100;
    config.report_batching.max_delay = Duration::from_secs(3600);
    let agent = Agent::start(config, executors(&Arc::new(Semaphore::new(0))));
    let (_, session) = broker.accept().await;
    for id in [9, 10] {
        session
            .assign(vec![assignment(id, "echo", "alone")])
            .unwrap();
        let (seq, reports) = broker.finished().await;
        assert_eq!(reports, vec![report(id, Outcome::Finished, "alone")]);
        session.ack_finished(seq).unwrap();
    }
    assert_eq!(agent.shutdown().await, Ok(()));
    broker.stop().await;
}

#[tokio::test]
async fn unacknowledged_reports_are_sent_again_until_acknowledged() {
    // Goal: the dispatcher drops the first ack on purpose; the worker re-sends the same batch
    // after the ack timeout, and stops once it is acknowledged.
    let mut broker = Broker::start("127.0.0.1:0").await;
    let mut config = worker_config(broker.addr);
    config.ack_timeout = Duration::from_millis(200);
    let mut agent = Agent::start(config, executors(&Arc::new(Semaphore::new(0))));
    let (_, session) = broker.accept().await;
    session.assign(vec![assignment(5, "echo", "five")]).unwrap();
    let first = broker.finished().await;
    // No ack: the same batch comes again.
    let second = broker.finished().await;
    assert_eq!(first, second);
    session.ack_finished(second.0).unwrap();
    agent
        .wait_for("no pending reports", |s| s.pending_reports == 0)
        .await;
    assert_eq!(agent.shutdown().await, Ok(()));
    // A third copy would arrive before the shutdown's disconnect if the ack had been ignored.
    match broker.next().await {
        WorkerEvent::Disconnected { reason, .. } => assert_eq!(reason, DisconnectReason::Shutdown),
        other => panic!("expected the shutdown disconnect, got {other:?}"),
    }
    broker.stop().await;
}

#[tokio::test]
async fn reconnect_to_a_restarted_listener_lists_running_tasks_and_unacked_reports() {
    // Goal: after the broker restarts on the same port, Connect lists the task still running
    // and the one whose report was never acknowledged; that report is sent again, and the
    // running task's report follows when it ends.
    let mut broker = Broker::start("127.0.0.1:0").await;
    let addr = broker.addr;
    let gate = Arc::new(Semaphore::new(0));
    let mut agent = Agent::start(worker_config(addr), executors(&gate));
    let (_, session) = broker.accept().await;
    session
        .assign(vec![
            assignment(1, "gated", ""),
            assignment(2, "echo", "two"),
        ])
        .unwrap();
    let (_, reports) = broker.finished().await;
    assert_eq!(reports, vec![report(2, Outcome::Finished, "two")]);
    // Not acknowledged: the broker stops before making it durable.
    broker.stop().await;
    agent.wait_for("disconnected", |s| !s.connected).await;

    let mut broker = Broker::start(&addr.to_string()).await;
    let (hello, session) = broker.accept().await;
    assert_eq!(
        hello.running,
        vec![
            RunningTask {
                task_id: 1,
                attempt: 1
            },
            RunningTask {
                task_id: 2,
                attempt: 1
            },
        ]
    );
    let (seq, reports) = broker.finished().await;
    assert_eq!(reports, vec![report(2, Outcome::Finished, "two")]);
    session.ack_finished(seq).unwrap();
    gate.add_permits(1);
    let (seq, reports) = broker.finished().await;
    assert_eq!(reports, vec![report(1, Outcome::Finished, "released")]);
    session.ack_finished(seq).unwrap();
    agent
        .wait_for("all acknowledged", |s| {
            s.pending_reports == 0 && s.connections == 2
        })
        .await;
    assert_eq!(agent.shutdown().await, Ok(()));
    broker.stop().await;
}

#[tokio::test]
async fn assignments_over_the_declared_capacity_are_refused_and_reported() {
    // Goal: beyond a type's limit, beyond max_threads, an undeclared type, or a type without
    // an executor: each is reported as a refused error and never executed.
    let mut broker = Broker::start("127.0.0.1:0").await;
    let mut config = worker_config(broker.addr);
    config.capacity = capacity(3, &[("gated", 2), ("echo", 5), ("orphan", 1)]);
    config.report_batching.max_delay = Duration::from_millis(20);
    let gate = Arc::new(Semaphore::new(0));
    let mut agent = Agent::start(config, executors(&gate));
    let (_, session) = broker.accept().await;
    session
        .assign(vec![
            assignment(1, "gated", ""),
            assignment(2, "gated", ""),
            assignment(3, "gated", ""), // over the per-type limit of 2
            assignment(4, "undeclared", ""), // no entry and no `any`
            assignment(5, "orphan", ""), // declared but no executor
            assignment(6, "gated", ""), // still over the per-type limit
        ])
        .unwrap();
    let mut refused = Vec::new();
    while refused.len() < 4 {
        let (seq, reports) = broker.finished().await;
        session.ack_finished(seq).unwrap();
        refused.extend(reports);
    }
    let refused = sorted(refused);
    let ids: Vec<_> = refused.iter().map(|r| r.task_id).collect();
    assert_eq!(ids, vec![3, 4, 5, 6]);
    for r in &refused {
        assert_eq!(r.outcome, Outcome::Error as i32);
        assert!(r.result.starts_with("refused: "), "{}", r.result);
    }
    assert!(
        refused[0].result.contains("limit is 2"),
        "{}",
        refused[0].result
    );
    assert!(
        refused[1].result.contains("not in this worker's capacity"),
        "{}",
        refused[1].result
    );
    assert!(
        refused[2].result.contains("no executor"),
        "{}",
        refused[2].result
    );
    agent.wait_for("two running", |s| s.running == 2).await;

    // A third gated task is still over its type's limit, while an echo fits max_threads 3.
    session
        .assign(vec![
            assignment(7, "gated", ""),
            assignment(8, "echo", "fits"),
        ])
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let (seq, reports) = broker.finished().await;
        session.ack_finished(seq).unwrap();
        got.extend(reports);
    }
    let got = sorted(got);
    assert_eq!(got[0].task_id, 7);
    assert!(got[0].result.contains("limit is 2"), "{}", got[0].result);
    assert_eq!(got[1], report(8, Outcome::Finished, "fits"));
    gate.add_permits(2);
    let mut released = Vec::new();
    while released.len() < 2 {
        let (seq, reports) = broker.finished().await;
        session.ack_finished(seq).unwrap();
        released.extend(reports);
    }
    assert_eq!(
        sorted(released),
        vec![
            report(1, Outcome::Finished, "released"),
            report(2, Outcome::Finished, "released"),
        ]
    );
    assert_eq!(agent.shutdown().await, Ok(()));
    broker.stop().await;
}

#[tokio::test]
async fn assignment_over_max_threads_is_refused() {
    // Goal: the total limit holds even when the type limit would allow more.
    let mut broker = Broker::start("127.0.0.1:0").await;
    let mut config = worker_config(broker.addr);
    config.capacity = capacity(2, &[(ANY_TASK_TYPE, 10)]);
    let gate = Arc::new(Semaphore::new(0));
    let agent = Agent::start(config, executors(&gate));
    let (_, session) = broker.accept().await;
    session
        .assign(vec![
            assignment(1, "gated", ""),
            assignment(2, "gated", ""),
            assignment(3, "echo", "never runs"),
        ])
        .unwrap();
    let (seq, reports) = broker.finished().await;
    session.ack_finished(seq).unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].task_id, 3);
    assert_eq!(
        reports[0].result,
        "refused: 2 tasks running, max_threads is 2"
    );
    gate.add_permits(2);
    let mut done = Vec::new();
    while done.len() < 2 {
        let (seq, reports) = broker.finished().await;
        session.ack_finished(seq).unwrap();
        done.extend(reports);
    }
    assert!(done.iter().all(|r| r.result == "released"));
    assert_eq!(agent.shutdown().await, Ok(()));
    broker.stop().await;
}

#[tokio::test]
async fn amounts_are_declared_and_needs_beyond_them_are_refused() {
    // Goal: the connect carries the declared amounts and enforcement statement; a task whose
    // needs do not fit what running tasks leave, or that needs an amount the worker does not
    // declare, is refused; one that fits runs.
    let mut broker = Broker::start("127.0.0.1:0").await;
    let mut config = worker_config(broker.addr);
    config.capacity.amounts = [("memory".to_owned(), 1000), ("db:orders".to_owned(), 2)].into();
    config.capacity.enforcement = "rlimits: stated by the test".into();
    let gate = Arc::new(Semaphore::new(0));
    let agent = Agent::start(config, executors(&gate));
    let (hello, session) = broker.accept().await;
    assert_eq!(
        hello.capacity.amounts,
        [("memory".to_owned(), 1000), ("db:orders".to_owned(), 2)].into()
    );
    assert_eq!(hello.capacity.enforcement, "rlimits: stated by the test");
    let needing = |id, task_type: &str, needs: &[(&str, u64)]| Assignment {
        needs: needs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        ..assignment(id, task_type, "")
    };
    session
        .assign(vec![
            needing(1, "gated", &[("memory", 600), ("db:orders", 1)]),
            needing(2, "echo", &[("memory", 500)]),
            needing(3, "echo", &[("cpu", 1)]),
            needing(4, "echo", &[("memory", 400), ("db:orders", 1)]),
        ])
        .unwrap();
    let mut done = BTreeMap::new();
    while done.len() < 3 {
        let (seq, reports) = broker.finished().await;
        session.ack_finished(seq).unwrap();
        done.extend(reports.into_iter().map(|r| (r.task_id, r.result)));
    }
    assert_eq!(
        done[&2],
        "refused: the task needs memory = 500; 600 of 1000 are in use"
    );
    assert_eq!(
        done[&3],
        "refused: the task needs cpu = 1, which this worker does not declare"
    );
    assert_eq!(done[&4], "");
    gate.add_permits(1);
    let (seq, reports) = broker.finished().await;
    session.ack_finished(seq).unwrap();
    assert_eq!(
        (reports[0].task_id, reports[0].result.as_str()),
        (1, "released")
    );
    // Ended tasks give their amounts back: all of the memory fits again.
    session
        .assign(vec![needing(
            5,
            "echo",
            &[("memory", 1000), ("db:orders", 2)],
        )])
        .unwrap();
    let (seq, reports) = broker.finished().await;
    session.ack_finished(seq).unwrap();
    assert_eq!((reports[0].task_id, reports[0].result.as_str()), (5, ""));
    assert_eq!(agent.shutdown().await, Ok(()));
    broker.stop().await;
}

/// Sets its flag when dropped: proves an execution's future was dropped (aborted).
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn kill_aborts_running_tasks_and_run_returns_the_reason() {
    // Goal: a Kill from the broker stops execution and makes run fail with the reason.
    let mut broker = Broker::start("127.0.0.1:0").await;
    let aborted = Arc::new(AtomicBool::new(false));
    let flag = aborted.clone();
    let executors = Executors::new().with(
        "forever",
        executor_fn(move |_task| {
            let guard = DropFlag(flag.clone());
            async move {
                let _guard = guard;
                std::future::pending::<()>().await;
                Ok("unreachable".to_owned())
            }
        }),
    );
    let mut agent = Agent::start(worker_config(broker.addr), executors);
    let (_, session) = broker.accept().await;
    session.assign(vec![assignment(1, "forever", "")]).unwrap();
    agent.wait_for("one running", |s| s.running == 1).await;
    session.kill("process id changed");
    assert_eq!(
        agent.result().await,
        Err(WorkerError::Killed {
            reason: "process id changed".into()
        })
    );
    assert!(
        aborted.load(Ordering::SeqCst),
        "the running task was aborted"
    );
    broker.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_waits_for_running_tasks_then_flushes_and_says_goodbye() {
    // Goal: on shutdown the worker announces zero capacity, refuses new work, lets the running
    // task finish, delivers its report, then sends Shutdown.
    let mut broker = Broker::start("127.0.0.1:0").await;
    let gate = Arc::new(Semaphore::new(0));
    let mut agent = Agent::start(worker_config(broker.addr), executors(&gate));
    let (_, session) = broker.accept().await;
    session.assign(vec![assignment(1, "gated", "")]).unwrap();
    agent.wait_for("one running", |s| s.running == 1).await;
    let _ = agent.stop.take().unwrap().send(());
    // The zero-capacity ping (the only ping this early: the keepalive is 10 s).
    let ping = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(WorkerEvent::Ping {
                capacity, running, ..
            }) = broker.events.recv().await
            {
                return (capacity, running);
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(ping, (Capacity::default(), 1));
    session.assign(vec![assignment(2, "echo", "late")]).unwrap();
    let (seq, reports) = broker.finished().await;
    session.ack_finished(seq).unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].task_id, 2);
    assert_eq!(reports[0].result, "refused: the worker is shutting down");
    gate.add_permits(1);
    let (seq, reports) = broker.finished().await;
    assert_eq!(reports, vec![report(1, Outcome::Finished, "released")]);
    session.ack_finished(seq).unwrap();
    match broker.next().await {
        WorkerEvent::Disconnected { reason, .. } => assert_eq!(reason, DisconnectReason::Shutdown),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert_eq!(agent.result().await, Ok(()));
    broker.stop().await;
}

#[tokio::test]
async fn shutdown_grace_aborts_tasks_that_run_too_long() {
    // Goal: past the grace period, running tasks are aborted and reported as errors.
    let mut broker = Broker::start("127.0.0.1:0").await;
    let mut config = worker_config(broker.addr);
    config.shutdown_grace = Duration::from_millis(100);
    let mut agent = Agent::start(config, executors(&Arc::new(Semaphore::new(0))));
    let (_, session) = broker.accept().await;
    session.assign(vec![assignment(1, "gated", "")]).unwrap();
    agent.wait_for("one running", |s| s.running == 1).await;
    let _ = agent.stop.take().unwrap().send(());
    let (seq, reports) = broker.finished().await;
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].outcome, Outcome::Error as i32);
    assert!(
        reports[0].result.starts_with("aborted"),
        "{}",
        reports[0].result
    );
    session.ack_finished(seq).unwrap();
    assert_eq!(agent.result().await, Ok(()));
    broker.stop().await;
}

#[tokio::test]
async fn malformed_frame_on_one_connection_leaves_the_agent_working() {
    // Goal: garbage on another connection closes only that one; the agent's session goes on.
    let mut broker = Broker::start("127.0.0.1:0").await;
    let agent = Agent::start(
        worker_config(broker.addr),
        executors(&Arc::new(Semaphore::new(0))),
    );
    let (_, session) = broker.accept().await;
    let mut garbage = TcpStream::connect(broker.addr).await.unwrap();
    garbage
        .write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    // The garbage never completed a handshake, so the dispatcher hears nothing of it...
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut garbage, &mut buf))
        .await
        .expect("the broker closes the garbage connection");
    assert!(matches!(closed, Ok(0) | Err(_)));
    // ...and the agent is still served.
    session
        .assign(vec![assignment(1, "echo", "still here")])
        .unwrap();
    let (seq, reports) = broker.finished().await;
    assert_eq!(reports, vec![report(1, Outcome::Finished, "still here")]);
    session.ack_finished(seq).unwrap();
    assert_eq!(agent.shutdown().await, Ok(()));
    broker.stop().await;
}

/// A broker that completes the handshake, then never sends another frame.
async fn silent_broker(socket: TcpStream, welcome_idle_ms: u64) -> Framed<TcpStream, WorkerCodec> {
    raw_broker(socket, welcome_idle_ms).await.0
}

/// Plays the broker's side of the handshake on `socket` by hand; the connection and the
/// worker's `Connect`.
async fn raw_broker(
    socket: TcpStream,
    welcome_idle_ms: u64,
) -> (Framed<TcpStream, WorkerCodec>, Connect) {
    let mut framed = Framed::new(socket, WorkerCodec::default());
    let Some(Ok(Message::Hello(hello))) = framed.next().await else {
        panic!("expected hello");
    };
    let broker_nonce = random_nonce();
    framed
        .send(Message::Challenge(Challenge {
            broker_id: "silent".into(),
            broker_nonce: broker_nonce.to_vec(),
        }))
        .await
        .unwrap();
    let Some(Ok(Message::Connect(connect))) = framed.next().await else {
        panic!("expected connect");
    };
    framed
        .send(Message::Welcome(Welcome {
            broker_proof: broker_proof(
                SECRET.as_bytes(),
                &hello.client_nonce,
                &broker_nonce,
                &hello.worker_id,
            )
            .to_vec(),
            keepalive_interval_ms: welcome_idle_ms / 4,
            idle_timeout_ms: welcome_idle_ms,
        }))
        .await
        .unwrap();
    (framed, connect)
}

/// Reads frames from a hand-played connection, acknowledging each batch of reports, until
/// `n` reports arrived: (task, result) of each.
async fn raw_reports(
    framed: &mut Framed<TcpStream, WorkerCodec>,
    n: usize,
) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    while out.len() < n {
        match tokio::time::timeout(WAIT, framed.next())
            .await
            .expect("the worker reports in time")
        {
            Some(Ok(Message::Finished(f))) => {
                framed
                    .send(Message::FinishedAck(FinishedAck { seq: f.seq }))
                    .await
                    .unwrap();
                out.extend(f.reports.into_iter().map(|r| (r.task_id, r.result)));
            }
            Some(Ok(Message::Ping(_))) => {}
            other => panic!("expected reports, got {other:?}"),
        }
    }
    out
}

#[tokio::test]
async fn task_shapes_defined_on_a_connection_carry_resources_and_needs() {
    // Goal: the worker announces task shapes; an assignment naming a shape defined on the
    // connection runs with the shape's resources and needs (the executor sees them, and they
    // count against the declared amounts), one carrying its own works as before, and one
    // naming a shape not defined on the connection ends it; shapes do not outlive their
    // connection (the next one may define the same id anew).
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = worker_config(socket.local_addr().unwrap());
    config.capacity.amounts = [("memory".to_owned(), 1000)].into();
    let gate = Arc::new(Semaphore::new(0));
    let show =
        executor_fn(
            |task| async move { Ok(format!("{}|{:?}", task.resources.join(","), task.needs)) },
        );
    let agent = Agent::start(config, executors(&gate).with("show", show));
    let (first, _) = socket.accept().await.unwrap();
    let (mut first, connect) = raw_broker(first, 60_000).await;
    assert!(connect.task_shapes, "the worker announces task shapes");
    let shaped = |id, task_type: &str, shape| Assignment {
        shape,
        ..assignment(id, task_type, "")
    };
    first
        .send(Message::Assign(Assign {
            assignments: vec![
                shaped(1, "show", 1),
                Assignment {
                    resources: vec!["inline".into()],
                    needs: [("memory".to_owned(), 10)].into(),
                    ..assignment(2, "show", "")
                },
            ],
            shapes: vec![TaskShape {
                id: 1,
                resources: vec!["db".into(), "hbase".into()],
                needs: [("memory".to_owned(), 600)].into(),
            }],
        }))
        .await
        .unwrap();
    let done = raw_reports(&mut first, 2).await;
    assert_eq!(done[&1], r#"db,hbase|{"memory": 600}"#);
    assert_eq!(done[&2], r#"inline|{"memory": 10}"#);
    // A running task of shape 1 holds 600 of the 1000: a second one does not fit.
    first
        .send(Message::Assign(Assign {
            assignments: vec![shaped(3, "gated", 1), shaped(4, "echo", 1)],
            shapes: Vec::new(),
        }))
        .await
        .unwrap();
    let done = raw_reports(&mut first, 1).await;
    assert_eq!(
        done[&4],
        "refused: the task needs memory = 600; 600 of 1000 are in use"
    );
    first
        .send(Message::Assign(Assign {
            assignments: vec![shaped(5, "echo", 9)],
            shapes: Vec::new(),
        }))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(WAIT, first.next())
            .await
            .expect("the worker acts in time")
        {
            None | Some(Err(_)) => break,
            Some(Ok(Message::Ping(_))) => {}
            Some(Ok(other)) => panic!("the worker went on after an undefined shape: {other:?}"),
        }
    }
    let (second, _) = tokio::time::timeout(WAIT, socket.accept())
        .await
        .unwrap()
        .unwrap();
    let (mut second, connect) = raw_broker(second, 60_000).await;
    assert_eq!(
        connect
            .running
            .iter()
            .map(|r| r.task_id)
            .collect::<Vec<_>>(),
        [3],
        "task 3 still runs; task 5 never started"
    );
    second
        .send(Message::Assign(Assign {
            assignments: vec![shaped(6, "show", 1)],
            shapes: vec![TaskShape {
                id: 1,
                resources: Vec::new(),
                needs: [("memory".to_owned(), 100)].into(),
            }],
        }))
        .await
        .unwrap();
    let done = raw_reports(&mut second, 1).await;
    assert_eq!(done[&6], r#"|{"memory": 100}"#);
    gate.add_permits(1);
    let done = raw_reports(&mut second, 1).await;
    assert_eq!(done[&3], "released");
    let mut agent = agent;
    let _ = agent.stop.take().unwrap().send(());
    loop {
        match tokio::time::timeout(WAIT, second.next())
            .await
            .expect("the worker says goodbye in time")
        {
            Some(Ok(Message::Shutdown(_))) => break,
            Some(Ok(Message::Ping(_))) => {}
            other => panic!("expected shutdown, got {other:?}"),
        }
    }
    assert_eq!(agent.result().await, Ok(()));
}

#[tokio::test]
async fn silent_broker_is_dropped_and_the_worker_reconnects() {
    // Goal: a broker that sends nothing (no pong either) for the idle timeout it announced is
    // dropped by the worker, which then connects again.
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut agent = Agent::start(
        worker_config(socket.local_addr().unwrap()),
        Executors::new(),
    );
    let (first, _) = socket.accept().await.unwrap();
    let mut first = silent_broker(first, 300).await;
    agent.wait_for("connected", |s| s.connected).await;
    // The worker keeps pinging, gets nothing back, and leaves.
    let mut pings = 0;
    loop {
        match tokio::time::timeout(WAIT, first.next())
            .await
            .expect("the worker acts in time")
        {
            Some(Ok(Message::Ping(_))) => pings += 1,
            None | Some(Err(_)) => break,
            Some(Ok(other)) => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings >= 1, "the worker pinged before giving up");
    let (second, _) = tokio::time::timeout(WAIT, socket.accept())
        .await
        .unwrap()
        .unwrap();
    let _second = silent_broker(second, 60_000).await;
    agent
        .wait_for("a second connection", |s| s.connections == 2 && s.connected)
        .await;
    assert_eq!(
        agent.status.current().last_error.as_deref(),
        None,
        "a successful handshake clears the last error"
    );
    let _ = agent.stop.take().unwrap().send(());
    assert_eq!(agent.result().await, Ok(()));
}

/// A locator the test points at one broker or another.
#[derive(Debug, Clone)]
struct Pointer(Arc<Mutex<SocketAddr>>);

impl Pointer {
    fn new(addr: SocketAddr) -> Pointer {
        Pointer(Arc::new(Mutex::new(addr)))
    }

    fn point_at(&self, addr: SocketAddr) {
        *self.0.lock().unwrap() = addr;
    }
}

impl BrokerLocator for Pointer {
    fn locate(&self) -> LocateFuture<'_> {
        let addr = self.0.lock().unwrap().to_string();
        Box::pin(async move { Ok(addr) })
    }

    fn describe(&self) -> String {
        "the test's pointer".into()
    }
}

#[tokio::test]
async fn a_worker_whose_connection_drops_locates_the_broker_again_and_resends_its_reports() {
    // Goal: the locator is asked again on reconnect: when the first broker goes away and the
    // locator names another, the worker connects there, lists what it runs and holds, and
    // sends its unacknowledged report again to the new broker.
    let mut first = Broker::start("127.0.0.1:0").await;
    let mut second = Broker::start("127.0.0.1:0").await;
    let pointer = Pointer::new(first.addr);
    let mut config = worker_config(first.addr);
    config.broker_addr = String::new();
    config.broker_locator = Some(Arc::new(pointer.clone()));
    let gate = Arc::new(Semaphore::new(0));
    let mut agent = Agent::start(config, executors(&gate));
    let (_, session) = first.accept().await;
    session
        .assign(vec![
            assignment(1, "gated", ""),
            assignment(2, "echo", "two"),
        ])
        .unwrap();
    let (_, reports) = first.finished().await;
    assert_eq!(reports, vec![report(2, Outcome::Finished, "two")]);
    pointer.point_at(second.addr);
    first.stop().await;

    let (hello, session) = second.accept().await;
    assert_eq!(
        hello.running,
        vec![
            RunningTask {
                task_id: 1,
                attempt: 1
            },
            RunningTask {
                task_id: 2,
                attempt: 1
            },
        ]
    );
    let (seq, reports) = second.finished().await;
    assert_eq!(reports, vec![report(2, Outcome::Finished, "two")]);
    session.ack_finished(seq).unwrap();
    gate.add_permits(1);
    let (seq, reports) = second.finished().await;
    assert_eq!(reports, vec![report(1, Outcome::Finished, "released")]);
    session.ack_finished(seq).unwrap();
    agent
        .wait_for("all acknowledged", |s| s.pending_reports == 0)
        .await;
    assert_eq!(agent.shutdown().await, Ok(()));
    second.stop().await;
}

#[tokio::test]
async fn a_broker_that_is_not_the_leader_makes_the_worker_locate_again_not_give_up() {
    // Goal: a broker_not_leader refusal is not a refusal of this worker: even with
    // max_refused_time 0 (give up at the first refusal of the worker), the worker asks its
    // locator again and connects to the broker it names.
    let mut follower = Broker::start("127.0.0.1:0").await;
    let mut leader = Broker::start("127.0.0.1:0").await;
    let pointer = Pointer::new(follower.addr);
    let mut config = worker_config(follower.addr);
    config.broker_locator = Some(Arc::new(pointer.clone()));
    config.max_refused_time = Duration::ZERO;
    let mut agent = Agent::start(config, Executors::new());
    match follower.next().await {
        WorkerEvent::Connected { reply, .. } => {
            pointer.point_at(leader.addr);
            reply.reject(Rejection {
                reason: "broker_not_leader".into(),
                retryable: true,
            });
        }
        other => panic!("expected Connected, got {other:?}"),
    }
    let (hello, _session) = leader.accept().await;
    assert_eq!(hello.worker_id, "worker-1");
    agent.wait_for("connected", |s| s.connected).await;
    assert_eq!(agent.shutdown().await, Ok(()));
    follower.stop().await;
    leader.stop().await;
}

#[tokio::test]
async fn cancel_stops_the_attempt_and_an_executor_that_ignores_it_is_dropped_after_the_grace() {
    // Goal: a Cancel frame fires the attempt's CancelSignal: an executor that listens ends at
    // once; one that ignores it is dropped after cancel_grace; both are reported ended as
    // errors, and a cancel of an attempt the worker does not run is ignored. An executor's
    // "retry later" is reported with its delay.
    let mut broker = Broker::start("127.0.0.1:0").await;
    let executors = Executors::new()
        .with(
            "polite",
            executor_fn(|task| async move {
                task.cancel.cancelled().await;
                Err(TaskFailure::new("stopped on cancel"))
            }),
        )
        .with(
            "stubborn",
            executor_fn(|_task| async move {
                std::future::pending::<()>().await;
                Ok("unreachable".to_owned())
            }),
        )
        .with(
            "later",
            executor_fn(|_task| async move {
                Err(TaskFailure::retry_after(
                    Duration::from_millis(2_500),
                    "busy",
                ))
            }),
        );
    let mut config = worker_config(broker.addr);
    config.cancel_grace = Duration::from_millis(200);
    let mut agent = Agent::start(config, executors);
    let (_, session) = broker.accept().await;
    session
        .assign(vec![
            assignment(1, "polite", ""),
            assignment(2, "stubborn", ""),
        ])
        .unwrap();
    agent.wait_for("two running", |s| s.running == 2).await;
    session.cancel(vec![(1, 1), (2, 1), (3, 1)]).unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let (seq, reports) = broker.finished().await;
        session.ack_finished(seq).unwrap();
        got.extend(reports);
    }
    let got = sorted(got);
    assert_eq!(got[0].task_id, 1);
    assert_eq!(got[0].outcome(), Outcome::Error);
    assert_eq!(got[0].result, "stopped on cancel");
    assert_eq!(got[1].task_id, 2);
    assert_eq!(got[1].outcome(), Outcome::Error);
    assert!(
        got[1].result.contains("did not stop within 200 ms"),
        "{:?}",
        got[1]
    );
    session.assign(vec![assignment(4, "later", "")]).unwrap();
    let (seq, reports) = broker.finished().await;
    session.ack_finished(seq).unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].task_id, 4);
    assert_eq!(reports[0].outcome(), Outcome::RetryLater);
    assert_eq!(reports[0].retry_after_ms, 2_500);
    agent.shutdown().await.unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn cancel_during_a_code_pool_download_ends_the_attempt_after_the_grace() {
    // Goal: the cancel grace covers the fetch of the task's code pool, not only its executor:
    // a task cancelled while its pool's download waits on a broker that never answers is
    // reported ended after cancel_grace, long before the download's own timeout.
    let mut broker = Broker::start("127.0.0.1:0").await;
    let pools = tempfile::tempdir().unwrap();
    let executors = Executors::new().with(
        "pooled",
        executor_fn(|_task| async move { Ok("the pool arrived".to_owned()) }),
    );
    let mut config = worker_config(broker.addr);
    config.cancel_grace = Duration::from_millis(200);
    config.codepools.dir = Some(pools.path().to_path_buf());
    config.codepools.download_timeout = Duration::from_secs(600);
    let agent = Agent::start(config, executors);
    let (_, session) = broker.accept().await;
    session
        .assign(vec![Assignment {
            codepool: Some("pool-1".into()),
            ..assignment(1, "pooled", "")
        }])
        .unwrap();
    // the download's first request reaches the broker, which leaves it unanswered
    match broker.next().await {
        WorkerEvent::CodePoolRequest { request, .. } => assert_eq!(request.pool_id, "pool-1"),
        other => panic!("expected CodePoolRequest, got {other:?}"),
    }
    session.cancel(vec![(1, 1)]).unwrap();
    let (seq, reports) = broker.finished().await;
    session.ack_finished(seq).unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].task_id, 1);
    assert_eq!(reports[0].outcome(), Outcome::Error);
    assert!(
        reports[0].result.contains("did not stop within 200 ms"),
        "{:?}",
        reports[0]
    );
    agent.shutdown().await.unwrap();
    broker.stop().await;
}
