//! A randomized test of the dispatcher itself: the real `Broker` on a memory log that fails at a
//! random append (or not at all), with a manual clock, sessions that connect, drop and
//! reconnect with pushes in flight, workers that finish, re-send and crash, and many clients
//! submitting at once.
//!
//! Checked for every seed:
//! - every task whose submission was acknowledged exists after a restart, with its data;
//! - no task of a submission refused with a retryable error exists (a 503 means nothing
//!   happened);
//! - no task is stuck: once the schedule is over, workers that keep finishing what they get
//!   drain every task to an end, on the same broker if it is still up, and again after the
//!   restart;
//! - the recovered state passes its invariants, and no attempt goes beyond maxattempts.
//!
//! `MAJORDODO_DISPATCHER_SEEDS=<n>` runs n seeds (default 24), `MAJORDODO_DISPATCHER_SEED=<s>`
//! replays one. A failing run prints its seed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use majordodo_core::leader::{SubmitOutcome, SubmitRequest};
use majordodo_core::{DefaultGroupMapper, TaskStatus};
use majordodo_log::{CommitLog, FaultSchedule, FaultyLog, MemoryLog, MemoryStore};
use majordodo_proto::worker::{Capacity, FinishReport, Outcome, RunningTask};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::worker_listener::testing::{FakeConnection, Frame};
use crate::worker_listener::{ConnId, WorkerEvent, WorkerHello};
use crate::{Broker, BrokerConfig, BrokerError, DispatcherConfig, ManualClock};

/// Steps of one random schedule: enough for a few hundred tasks, reconnects and a failure.
const STEPS: usize = 400;
/// Rounds of the drain that must end every task.
const DRAIN_ROUNDS: usize = 300;
/// Worker ids used by the schedule.
const WORKERS: [&str; 3] = ["w0", "w1", "w2"];

/// A worker process as the network sees it.
struct Worker {
    id: &'static str,
    /// Generation of the process; a crash starts a new one (new process id).
    process: u32,
    /// Tasks it runs: (task, attempt).
    running: BTreeSet<(u64, u32)>,
    /// Report batches sent and not acknowledged, by seq.
    unacked: BTreeMap<u64, Vec<FinishReport>>,
    next_seq: u64,
    conn: Option<Conn>,
}

struct Conn {
    id: ConnId,
    fake: FakeConnection,
    welcomed: bool,
}

/// A submission in flight or answered.
struct Submission {
    /// The data of each task, unique in the run.
    data: Vec<String>,
    join: JoinHandle<Result<Vec<SubmitOutcome>, BrokerError>>,
}

struct Run {
    rng: StdRng,
    clock: ManualClock,
    workers: Vec<Worker>,
    next_conn: u64,
    next_data: u64,
    submissions: Vec<Submission>,
}

fn capacity(worker: &str) -> Capacity {
    Capacity {
        max_threads: if worker == "w2" { 1 } else { 3 },
        max_threads_by_task_type: BTreeMap::new(),
        groups: vec![0],
        excluded_groups: Vec::new(),
        ..Default::default()
    }
}

fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1))
}

/// Lets every task of the (paused) runtime run until it waits.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

impl Run {
    fn new(seed: u64) -> Run {
        Run {
            rng: StdRng::seed_from_u64(seed),
            clock: ManualClock::new(1_000_000),
            workers: WORKERS
                .iter()
                .map(|id| Worker {
                    id,
                    process: 0,
                    running: BTreeSet::new(),
                    unacked: BTreeMap::new(),
                    next_seq: 1,
                    conn: None,
                })
                .collect(),
            next_conn: 1,
            next_data: 1,
            submissions: Vec::new(),
        }
    }

    fn submit(&mut self, broker: &Broker) {
        let n = self.rng.random_range(1..=4);
        let mut data = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..n {
            let d = format!("d{}", self.next_data);
            self.next_data += 1;
            let slot = self
                .rng
                .random_bool(0.2)
                .then(|| format!("s{}", self.rng.random_range(0..3)));
            tasks.push(SubmitRequest {
                task_type: "t".into(),
                user_id: "u".into(),
                data: d.clone(),
                max_attempts: self.rng.random_range(0..=3),
                slot,
                ..SubmitRequest::default()
            });
            data.push(d);
        }
        let handle = broker.handle();
        let join = tokio::spawn(async move { handle.submit(tasks).await });
        self.submissions.push(Submission { data, join });
    }

    async fn connect(&mut self, w: usize, events: &mpsc::Sender<WorkerEvent>) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let worker = &mut self.workers[w];
        let (admission, fake) = FakeConnection::new(conn, worker.id, 64);
        let running = worker
            .running
            .iter()
            .copied()
            .chain(
                worker
                    .unacked
                    .values()
                    .flatten()
                    .map(|r| (r.task_id, r.attempt)),
            )
            .map(|(task_id, attempt)| RunningTask { task_id, attempt })
            .collect();
        let old = worker.conn.replace(Conn {
            id: conn,
            fake,
            welcomed: false,
        });
        let event = WorkerEvent::Connected {
            conn,
            hello: Box::new(WorkerHello {
                worker_id: worker.id.into(),
                process_id: format!("{}-{}", worker.id, worker.process),
                location: "test".into(),
                peer: peer(),
                capacity: capacity(worker.id),
                running,
                credential: None,
            }),
            reply: admission,
        };
        let _ = events.send(event).await;
        if let Some(old) = old {
            // A reconnect: the old connection's loss reaches the broker after the new one.
            self.lost(w, old.id, events).await;
        }
    }

    async fn lost(&self, w: usize, conn: ConnId, events: &mpsc::Sender<WorkerEvent>) {
        let _ = events
            .send(WorkerEvent::Disconnected {
                conn,
                worker_id: self.workers[w].id.into(),
                reason: crate::worker_listener::DisconnectReason::Closed,
            })
            .await;
    }

    async fn disconnect(&mut self, w: usize, events: &mpsc::Sender<WorkerEvent>) {
        if let Some(conn) = self.workers[w].conn.take() {
            self.lost(w, conn.id, events).await;
        }
    }

    async fn crash(&mut self, w: usize, events: &mpsc::Sender<WorkerEvent>) {
        self.disconnect(w, events).await;
        let worker = &mut self.workers[w];
        worker.process += 1;
        worker.running.clear();
        worker.unacked.clear();
    }

    /// The worker reads its connection: the admission, assignments and acks.
    async fn read(&mut self, w: usize, events: &mpsc::Sender<WorkerEvent>) {
        let worker = &mut self.workers[w];
        let Some(conn) = worker.conn.as_mut() else {
            return;
        };
        if !conn.welcomed {
            match conn.fake.admitted.try_recv() {
                Ok(Ok(_)) => conn.welcomed = true,
                Ok(Err(_)) | Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                    // Refused: the listener closes the connection.
                    let id = conn.id;
                    worker.conn = None;
                    self.lost(w, id, events).await;
                    return;
                }
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => return,
            }
        }
        if conn.fake.closed_by_broker() {
            let id = conn.id;
            worker.conn = None;
            self.lost(w, id, events).await;
            return;
        }
        for frame in conn.fake.frames() {
            match frame {
                Frame::Assign(assignments) => {
                    for a in assignments {
                        worker.running.insert((a.task_id, a.attempt));
                    }
                }
                Frame::FinishedAck(seq) => {
                    worker.unacked.remove(&seq);
                }
                Frame::CodePoolData(_) => unreachable!("these workers ask for no pool"),
                // This schedule cancels nothing.
                Frame::Cancel(tasks) => panic!("unexpected cancellation of {tasks:?}"),
            }
        }
    }

    /// The worker finishes up to `n` of its tasks and reports them in one batch.
    async fn finish(&mut self, w: usize, n: usize, events: &mpsc::Sender<WorkerEvent>) {
        let ok = self.rng.random_bool(0.8);
        let worker = &mut self.workers[w];
        let done: Vec<(u64, u32)> = worker.running.iter().take(n).copied().collect();
        if done.is_empty() {
            return;
        }
        let reports: Vec<FinishReport> = done
            .iter()
            .map(|&(task_id, attempt)| {
                worker.running.remove(&(task_id, attempt));
                FinishReport {
                    task_id,
                    attempt,
                    outcome: if ok {
                        Outcome::Finished
                    } else {
                        Outcome::Error
                    } as i32,
                    result: format!("r{task_id}"),
                    retry_after_ms: 0,
                }
            })
            .collect();
        let seq = worker.next_seq;
        worker.next_seq += 1;
        worker.unacked.insert(seq, reports);
        self.resend(w, seq, events).await;
    }

    /// Sends an unacknowledged batch (again) on the current connection.
    async fn resend(&self, w: usize, seq: u64, events: &mpsc::Sender<WorkerEvent>) {
        let worker = &self.workers[w];
        let (Some(conn), Some(reports)) = (&worker.conn, worker.unacked.get(&seq)) else {
            return;
        };
        if !conn.welcomed {
            return;
        }
        let _ = events
            .send(WorkerEvent::Finished {
                conn: conn.id,
                worker_id: worker.id.into(),
                seq,
                reports: reports.clone(),
            })
            .await;
    }

    /// One random step of the schedule.
    async fn step(&mut self, broker: &Broker, events: &mpsc::Sender<WorkerEvent>) {
        let w = self.rng.random_range(0..WORKERS.len());
        match self.rng.random_range(0..100) {
            0..20 => self.submit(broker),
            20..26 => {
                if self.workers[w].conn.is_none() {
                    self.connect(w, events).await;
                }
            }
            26..31 => {
                if self.workers[w].conn.is_some() {
                    self.connect(w, events).await; // reconnect
                }
            }
            31..34 => self.disconnect(w, events).await,
            34..36 => self.crash(w, events).await,
            36..60 => self.read(w, events).await,
            60..78 => {
                let n = self.rng.random_range(1..=3);
                self.finish(w, n, events).await;
            }
            78..83 => {
                if let Some(&seq) = self.workers[w].unacked.keys().next() {
                    self.resend(w, seq, events).await;
                }
            }
            83..90 => {
                let ms = self.rng.random_range(0..3_000);
                self.clock.advance(ms);
            }
            _ => settle().await,
        }
    }

    /// Drives every worker until no task is left waiting, delayed or running, or fails naming
    /// the stuck tasks. Returns the broker's error if it stopped meanwhile.
    async fn drain(
        &mut self,
        broker: &Broker,
        events: &mpsc::Sender<WorkerEvent>,
    ) -> Result<(), BrokerError> {
        for w in 0..WORKERS.len() {
            if self.workers[w].conn.is_none() {
                self.connect(w, events).await;
            }
        }
        for _ in 0..DRAIN_ROUNDS {
            settle().await;
            for w in 0..WORKERS.len() {
                self.read(w, events).await;
                if self.workers[w].conn.is_none() {
                    self.connect(w, events).await;
                }
                self.finish(w, usize::MAX, events).await;
                let unacked: Vec<u64> = self.workers[w].unacked.keys().copied().collect();
                for seq in unacked {
                    self.resend(w, seq, events).await;
                }
            }
            self.clock.advance(500);
            let live = broker
                .handle()
                .query(|v| {
                    v.state.count(TaskStatus::Waiting)
                        + v.state.count(TaskStatus::Delayed)
                        + v.state.count(TaskStatus::Running)
                })
                .await?;
            if live == 0 && self.workers.iter().all(|w| w.unacked.is_empty()) {
                return Ok(());
            }
        }
        let stuck = broker
            .handle()
            .query(|v| {
                v.state
                    .tasks()
                    .filter(|t| !t.status.is_final())
                    .map(|t| {
                        format!(
                            "task {} {} attempt {} on {:?}",
                            t.id,
                            t.status.as_str(),
                            t.attempts,
                            t.worker_id
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .await?;
        let workers: Vec<String> = self
            .workers
            .iter()
            .map(|w| {
                format!(
                    "{}: runs {:?}, unacked {:?}",
                    w.id,
                    w.running,
                    w.unacked.keys()
                )
            })
            .collect();
        panic!("tasks never end: {stuck:?}; workers: {workers:?}");
    }
}

async fn start(log: Arc<dyn CommitLog>, clock: &ManualClock, stop: &CancellationToken) -> Broker {
    let config = BrokerConfig {
        leader: majordodo_core::LeaderConfig {
            max_worker_idle: 5_000,
            finished_task_retention: 0,
            max_assignments_per_round: 4,
            max_timer_changes_per_round: 4,
            ..majordodo_core::LeaderConfig::default()
        },
        dispatcher: DispatcherConfig {
            checkpoint_interval: None,
            noop_interval: Duration::from_secs(3_600),
            max_inputs_per_round: 8,
            max_rounds_in_flight: 4,
        },
        ..BrokerConfig::default()
    };
    Broker::start(
        config,
        log,
        None,
        Arc::new(DefaultGroupMapper),
        Arc::new(clock.clone()),
        stop.clone().cancelled_owned(),
    )
    .await
    .expect("the broker recovers")
}

/// What the clients were told, by task data.
struct Answers {
    /// Acknowledged: data → task id.
    created: BTreeMap<String, u64>,
    /// Refused with an error that promises nothing happened.
    refused: BTreeSet<String>,
}

async fn answers(submissions: Vec<Submission>) -> Answers {
    let mut created = BTreeMap::new();
    let mut refused = BTreeSet::new();
    for s in submissions {
        match s.join.await.expect("submitter task") {
            Ok(outcomes) => {
                for (data, outcome) in s.data.into_iter().zip(outcomes) {
                    if let SubmitOutcome::Accepted(id) = outcome {
                        created.insert(data, id.0);
                    }
                }
            }
            Err(e) if e.is_retryable() => refused.extend(s.data),
            Err(_) => {} // outcome unknown: either is right
        }
    }
    Answers { created, refused }
}

async fn run_seed(seed: u64) {
    let store = MemoryStore::new();
    let mut run = Run::new(seed);
    let schedule = if run.rng.random_bool(0.5) {
        FaultSchedule::random(run.rng.random())
    } else {
        FaultSchedule::none().with_delays(Duration::from_millis(2), run.rng.random())
    };
    let log = Arc::new(FaultyLog::new(MemoryLog::open(&store), schedule));
    let stop = CancellationToken::new();
    let broker = start(log.clone(), &run.clock, &stop).await;
    let events = broker.worker_events();
    for _ in 0..STEPS {
        run.step(&broker, &events).await;
    }
    settle().await;
    if !log.has_failed() {
        let drained = run.drain(&broker, &events).await;
        assert!(
            drained.is_ok() || log.has_failed(),
            "the broker stopped without a log failure: {drained:?}"
        );
    }
    stop.cancel();
    let _ = broker.wait().await;
    drop(events);
    let answers = answers(std::mem::take(&mut run.submissions)).await;

    // Restart on what the log holds, without faults.
    let stop = CancellationToken::new();
    let broker = start(Arc::new(MemoryLog::open(&store)), &run.clock, &stop).await;
    let events = broker.worker_events();
    let (by_data, problems) = broker
        .handle()
        .query(|v| {
            let by_data: BTreeMap<String, u64> = v
                .state
                .tasks()
                .map(|t| (t.data.to_string(), t.id.0))
                .collect();
            let mut problems = Vec::new();
            if let Err(e) = v.state.check_invariants() {
                problems.push(e);
            }
            for t in v.state.tasks() {
                if t.max_attempts > 0 && t.attempts > t.max_attempts {
                    problems.push(format!(
                        "task {} at attempt {} of {}",
                        t.id, t.attempts, t.max_attempts
                    ));
                }
            }
            (by_data, problems)
        })
        .await
        .expect("the broker answers reads");
    assert!(problems.is_empty(), "{problems:?}");
    for (data, id) in &answers.created {
        assert_eq!(
            by_data.get(data),
            Some(id),
            "acknowledged task {id} ({data}) is lost"
        );
    }
    for data in &answers.refused {
        assert!(
            !by_data.contains_key(data),
            "a submission refused as retryable created task {} ({data})",
            by_data[data]
        );
    }
    // Workers reconnect with what they still run; everything drains on the new broker too.
    run.drain(&broker, &events)
        .await
        .expect("the restarted broker stays up");
    stop.cancel();
    broker.wait().await.expect("a clean stop");
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("MAJORDODO_DISPATCHER_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return vec![seed];
    }
    let n = std::env::var("MAJORDODO_DISPATCHER_SEEDS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(24);
    let base: u64 = rand::random();
    (0..n).map(|i| base.wrapping_add(i)).collect()
}

#[test]
fn random_schedules_lose_nothing_acknowledged_and_leave_no_task_stuck() {
    // Goal: see the module documentation; each seed is a fresh paused runtime.
    for seed in seeds() {
        let result = std::panic::catch_unwind(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("runtime")
                .block_on(run_seed(seed));
        });
        if let Err(panic) = result {
            eprintln!(
                "dispatcher schedule failed with seed {seed} (replay with MAJORDODO_DISPATCHER_SEED={seed})"
            );
            std::panic::resume_unwind(panic);
        }
    }
}
