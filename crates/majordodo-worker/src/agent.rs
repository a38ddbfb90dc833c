//! The agent: connects to the broker, runs what it is assigned, and reports every result until
//! the broker acknowledges it, across reconnects and broker restarts.
//!
//! One task owns all the state ([`Agent`]); executions run on tokio tasks in a `JoinSet` it
//! owns. Its life is a loop: connect (with backoff), serve the session until the connection is
//! lost, repeat. Finish reports move through three places: `pending` (not sent), `in_flight`
//! (sent as batch `seq`, waiting for `FinishedAck`), then gone. A lost connection moves
//! `in_flight` back to the front of `pending`, so every report is sent again to whichever
//! broker answers next; duplicates are harmless because the broker ignores reports for
//! attempts that are not current.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use majordodo_proto::worker::{
    Assignment, Capacity, Connect, FinishReport, Finished, Hello, MAX_TASK_SHAPES, Message,
    Outcome, Ping, ProtocolError, RunningTask, Shutdown, TaskShape, WorkerCodec, chunk_for_frames,
    fits_in_frame, random_nonce, verify_broker_proof, worker_proof,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::codec::Framed;
use tracing::{debug, error, info, warn};

use crate::WorkerError;
use crate::codepools::{Fetch, PoolCache};
use crate::config::WorkerConfig;
use crate::executor::{CancelSignal, Executors, Task, TaskExecutor, TaskFailure};
use crate::status::{StatusHandle, WorkerStatus};

type Conn = Framed<majordodo_tls::ClientStream, WorkerCodec>;

/// Result text of a task aborted because the worker stopped.
/// Most code-pool requests waiting for the connection: one per execution downloading a pool,
/// which the capacity bounds anyway.
const FETCH_QUEUE: usize = 1024;

const ABORTED_RESULT: &str = "aborted: the worker stopped before the task finished";

/// A worker agent, ready to run. [`Worker::status`] gives a handle before [`Worker::run`]
/// consumes it.
#[derive(Debug)]
pub struct Worker {
    config: WorkerConfig,
    executors: Executors,
    status: watch::Sender<WorkerStatus>,
}

impl Worker {
    /// Checks `config` and prepares the agent.
    ///
    /// # Errors
    /// [`WorkerError::InvalidConfig`] naming the setting that is wrong.
    pub fn new(config: WorkerConfig, executors: Executors) -> Result<Worker, WorkerError> {
        config.validate().map_err(WorkerError::InvalidConfig)?;
        let (status, _) = watch::channel(WorkerStatus::default());
        Ok(Worker {
            config,
            executors,
            status,
        })
    }

    /// A handle on the agent's status, valid during and after `run`.
    pub fn status(&self) -> StatusHandle {
        StatusHandle::new(self.status.subscribe())
    }

    /// Runs until `shutdown` completes (then stops gracefully: see the crate docs), the broker
    /// kills the worker, or the broker refuses it for good.
    ///
    /// # Errors
    /// [`WorkerError::Killed`], [`WorkerError::Rejected`],
    /// [`WorkerError::BrokerAuthenticationFailed`], or [`WorkerError::ReportsLost`] when a
    /// graceful stop could not deliver every report.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
        let rng = match self.config.rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        info!(
            amounts = ?self.config.capacity.amounts,
            enforcement = %self.config.capacity.enforcement,
            "capacity declared; cpu and memory a task declares are enforced by the process executor as stated"
        );
        let (fetch_tx, fetch_rx) = tokio::sync::mpsc::channel(FETCH_QUEUE);
        let pools = PoolCache::new(self.config.codepools.clone(), fetch_tx);
        let mut agent = Agent {
            pools,
            fetch_rx,
            pending_fetches: HashMap::new(),
            next_fetch_id: 1,
            config: self.config,
            executors: self.executors,
            status: self.status,
            tasks: JoinSet::new(),
            running: HashMap::new(),
            running_attempts: HashMap::new(),
            type_counts: HashMap::new(),
            amounts_in_use: Vec::new(),
            pending: VecDeque::new(),
            in_flight: BTreeMap::new(),
            unacked: HashSet::new(),
            next_seq: 1,
            rng,
            stopping: None,
            shapes: HashMap::new(),
            no_shape: Shape {
                resources: Arc::from(Vec::new()),
                needs: Arc::new(BTreeMap::new()),
                charge: Arc::from(Vec::new()),
            },
        };
        let shutdown = std::pin::pin!(shutdown);
        let result = agent.run(shutdown).await;
        agent.tasks.abort_all();
        while agent.tasks.join_next().await.is_some() {}
        agent.status.send_modify(|status| {
            status.connected = false;
            status.running = 0;
            status.stopped = true;
        });
        result
    }
}

/// Runs a worker agent until `shutdown` completes; see [`Worker::run`].
///
/// # Errors
/// As [`Worker::new`] and [`Worker::run`].
pub async fn run(
    config: WorkerConfig,
    executors: Executors,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    Worker::new(config, executors)?.run(shutdown).await
}

/// An execution in progress.
struct Running {
    key: RunningTask,
    task_type: String,
    /// What the task declared it needs (counted against `Capacity::amounts`), with the
    /// dimension names shared with `Agent::amounts_in_use`.
    needs: Arc<[(Arc<str>, u64)]>,
    /// Fired when the broker cancels the attempt.
    cancel: crate::executor::CancelSignal,
}

/// A batch sent and not yet acknowledged.
struct InFlight {
    reports: Vec<FinishReport>,
    sent_at: Instant,
}

/// A graceful stop in progress.
struct Stopping {
    /// When running tasks are aborted.
    grace_deadline: Instant,
    /// When the agent gives up delivering reports.
    flush_deadline: Instant,
    /// Whether running tasks were aborted already.
    aborted: bool,
}

/// A live connection, after the handshake.
struct Session {
    framed: Conn,
    broker_id: String,
    keepalive: Duration,
    idle_timeout: Duration,
}

/// How a session ended.
enum SessionEnd {
    /// Graceful stop completed: everything delivered, `Shutdown` sent.
    Done,
    /// The connection is gone; reconnect.
    Lost(String),
    /// The broker sent `Kill`.
    Killed(String),
    /// The stop's flush deadline passed with reports undelivered.
    GaveUp,
}

/// Why a connection attempt failed.
enum ConnectError {
    /// Try again after a backoff.
    Retry(String),
    /// The broker refused this worker for a reason that may pass; try again after a backoff,
    /// for at most `max_refused_time`.
    Refused(String),
    /// Stop the agent.
    Fatal(WorkerError),
}

/// What the agent does with an assignment.
enum Admission {
    Run,
    /// Already running or reported: a duplicate delivery, not a new attempt.
    Ignore,
    /// Report it as an error with this text, without running it.
    Refuse(String),
}

/// A deadline of a session, served when the session's timer fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Due {
    /// Queued finish reports are sent.
    Batch,
    /// Reports the broker did not acknowledge in time are sent again.
    Ack,
    /// A keepalive ping.
    Ping,
    /// The broker said nothing for the idle timeout: the connection is given up.
    Idle,
    /// Stopping: running tasks are aborted.
    Grace,
    /// Stopping: reports still unacknowledged are given up.
    Flush,
}

struct Agent {
    /// Where executions get their code pool's directory.
    pools: PoolCache,
    /// Code-pool requests of executions, sent on the connection by the serve loop.
    fetch_rx: tokio::sync::mpsc::Receiver<Fetch>,
    /// Code-pool requests sent on this connection, by request id.
    pending_fetches:
        HashMap<u64, tokio::sync::oneshot::Sender<majordodo_proto::worker::CodePoolData>>,
    /// Next code-pool request id.
    next_fetch_id: u64,
    config: WorkerConfig,
    executors: Executors,
    status: watch::Sender<WorkerStatus>,
    /// Executions; each yields the executor's outcome.
    tasks: JoinSet<Result<String, TaskFailure>>,
    /// Executions by tokio task id, to know which one ended.
    running: HashMap<tokio::task::Id, Running>,
    /// The attempt running for each task id.
    running_attempts: HashMap<u64, u32>,
    /// Executions per task type, to check the per-type limits.
    type_counts: HashMap<String, u32>,
    /// The running executions' needs summed per dimension, to check `Capacity::amounts`. A
    /// dimension stays once seen (at 0 when nothing uses it): admission takes only the
    /// dimensions the capacity declares, so the list is short, and a name is not copied again.
    amounts_in_use: Vec<(Arc<str>, u64)>,
    /// Reports not sent yet, with the time each was queued.
    pending: VecDeque<(FinishReport, Instant)>,
    /// Batches sent, by seq, waiting for their ack.
    in_flight: BTreeMap<u64, InFlight>,
    /// Every attempt with an unacknowledged report (pending or in flight).
    unacked: HashSet<RunningTask>,
    /// Next batch number; never reused within this process.
    next_seq: u64,
    /// Jitter of reconnect delays.
    rng: StdRng,
    /// Set once shutdown was requested.
    stopping: Option<Stopping>,
    /// The task shapes the broker defined on this connection, by id.
    shapes: HashMap<u32, Shape>,
    /// What tasks without resources or needs get (shared, so they cost no allocation).
    no_shape: Shape,
}

/// The resources and needs a task shape holds, shared by the tasks that name it.
#[derive(Clone)]
struct Shape {
    resources: Arc<[String]>,
    needs: Arc<BTreeMap<String, u64>>,
    /// The positive needs, with the dimension names of `Agent::amounts_in_use`: what a running
    /// task of this shape adds to the amounts in use.
    charge: Arc<[(Arc<str>, u64)]>,
}

impl Agent {
    async fn run(
        &mut self,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), WorkerError> {
        let mut failures: u32 = 0;
        // When the broker's refusals began, since the last successful connection.
        let mut refused_since: Option<Instant> = None;
        loop {
            if self.stopping.is_some() && self.settled() {
                return Ok(());
            }
            let attempt = tokio::select! {
                attempt = timeout(self.config.connect_timeout, self.connect()) => attempt,
                () = &mut shutdown, if self.stopping.is_none() => {
                    self.begin_stop();
                    continue;
                }
            };
            let problem = match attempt {
                Ok(Ok(session)) => {
                    failures = 0;
                    refused_since = None;
                    match self.serve(session, shutdown.as_mut()).await {
                        SessionEnd::Done => return Ok(()),
                        SessionEnd::Killed(reason) => {
                            error!(%reason, "killed by the broker");
                            return Err(WorkerError::Killed { reason });
                        }
                        SessionEnd::GaveUp => return self.give_up(),
                        SessionEnd::Lost(reason) => {
                            warn!(%reason, "connection to the broker lost");
                            self.requeue_in_flight();
                            reason
                        }
                    }
                }
                Ok(Err(ConnectError::Fatal(error))) => {
                    error!(%error, "giving up on the broker");
                    self.status
                        .send_modify(|status| status.last_error = Some(error.to_string()));
                    return Err(error);
                }
                Ok(Err(ConnectError::Retry(reason))) => reason,
                Ok(Err(ConnectError::Refused(reason))) => {
                    let since = *refused_since.get_or_insert_with(|| {
                        warn!(
                            %reason,
                            worker_id = %self.config.worker_id,
                            give_up_after_s = self.config.max_refused_time.as_secs(),
                            "the broker refuses this worker for now; retrying until it accepts \
                             or the time is up (another process uses this worker id?)"
                        );
                        Instant::now()
                    });
                    let waited = since.elapsed();
                    if waited >= self.config.max_refused_time {
                        let error = WorkerError::StillRefused { reason, waited };
                        error!(%error, "giving up on the broker");
                        self.status
                            .send_modify(|status| status.last_error = Some(error.to_string()));
                        return Err(error);
                    }
                    format!("refused: {reason}")
                }
                Err(_elapsed) => "connect timed out".to_owned(),
            };
            failures = failures.saturating_add(1);
            self.status.send_modify(|status| {
                status.connected = false;
                status.last_error = Some(problem.clone());
            });
            let delay = self.config.reconnect_backoff.delay(failures, &mut self.rng);
            info!(%problem, delay_ms = delay.as_millis() as u64, "reconnecting after a pause");
            if self
                .wait_disconnected(Instant::now() + delay, shutdown.as_mut())
                .await
            {
                return self.give_up();
            }
        }
    }

    /// Waits until `until` while disconnected, still collecting finished tasks. Returns `true`
    /// if a stop's flush deadline passed.
    async fn wait_disconnected(
        &mut self,
        until: Instant,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> bool {
        loop {
            if self.stopping.is_some() && self.settled() {
                return false;
            }
            let (grace, flush) = self.stop_deadlines();
            tokio::select! {
                () = sleep_until(until) => return false,
                Some(joined) = self.tasks.join_next_with_id() => self.on_task_done(joined),
                () = &mut shutdown, if self.stopping.is_none() => self.begin_stop(),
                () = sleep_until(grace.unwrap_or(until)), if grace.is_some() => self.abort_for_stop(),
                () = sleep_until(flush.unwrap_or(until)), if flush.is_some() => return true,
            }
        }
    }

    /// Whether a stopping agent has nothing left to do.
    fn settled(&self) -> bool {
        self.tasks.is_empty() && self.unacked.is_empty()
    }

    /// The grace deadline (if tasks still need aborting) and the flush deadline, when stopping.
    fn stop_deadlines(&self) -> (Option<Instant>, Option<Instant>) {
        match &self.stopping {
            Some(stop) => (
                (!stop.aborted && !self.tasks.is_empty()).then_some(stop.grace_deadline),
                Some(stop.flush_deadline),
            ),
            None => (None, None),
        }
    }

    fn begin_stop(&mut self) {
        let now = Instant::now();
        info!(
            running = self.running.len(),
            "stopping: no new tasks, waiting for running ones"
        );
        self.stopping = Some(Stopping {
            grace_deadline: now + self.config.shutdown_grace,
            flush_deadline: now + self.config.shutdown_grace + self.config.ack_timeout,
            aborted: false,
        });
    }

    fn abort_for_stop(&mut self) {
        warn!(
            running = self.running.len(),
            "shutdown grace over; aborting running tasks"
        );
        self.tasks.abort_all();
        if let Some(stop) = &mut self.stopping {
            stop.aborted = true;
        }
    }

    fn give_up(&self) -> Result<(), WorkerError> {
        let count = self.unacked.len();
        if count == 0 {
            return Ok(());
        }
        error!(
            count,
            "stopping with finish reports the broker has not acknowledged"
        );
        Err(WorkerError::ReportsLost { count })
    }

    /// The capacity announced now: none once stopping.
    fn capacity(&self) -> Capacity {
        if self.stopping.is_some() {
            Capacity::default()
        } else {
            self.config.capacity.clone()
        }
    }

    /// Attempts the broker must not fail: executing, or reported without an ack.
    fn held(&self) -> Vec<RunningTask> {
        let mut held: Vec<_> = self
            .running
            .values()
            .map(|r| r.key)
            .chain(self.unacked.iter().copied())
            .collect();
        held.sort_unstable();
        held.dedup();
        held
    }

    fn publish_counts(&self) {
        let (running, pending) = (self.running.len(), self.unacked.len());
        self.status.send_if_modified(|status| {
            let changed = status.running != running || status.pending_reports != pending;
            status.running = running;
            status.pending_reports = pending;
            changed
        });
    }

    async fn connect(&mut self) -> Result<Session, ConnectError> {
        let retry = |what: &str, error: &dyn std::fmt::Display| {
            ConnectError::Retry(format!("{what}: {error}"))
        };
        let addr = match &self.config.broker_locator {
            Some(locator) => locator
                .locate()
                .await
                .map_err(|e| ConnectError::Retry(format!("locate the broker: {e}")))?,
            None => self.config.broker_addr.clone(),
        };
        debug!(%addr, "connecting to the broker");
        let socket = TcpStream::connect(&addr)
            .await
            .map_err(|e| retry(&format!("connect to {addr}"), &e))?;
        if let Err(error) = socket.set_nodelay(true) {
            debug!(%error, "could not set TCP_NODELAY");
        }
        let socket = match &self.config.tls {
            Some(tls) => majordodo_tls::connect(tls.clone(), host_of(&addr), socket)
                .await
                .map_err(|e| retry(&format!("tls handshake with {addr}"), &e))?,
            None => majordodo_tls::ClientStream::Plain(socket),
        };
        let mut framed = Framed::new(socket, WorkerCodec::new(self.config.max_frame_size));
        let client_nonce = random_nonce();
        let hello = Message::Hello(Hello {
            worker_id: self.config.worker_id.clone(),
            process_id: self.config.process_id.clone(),
            location: self.config.location.clone(),
            client_nonce: client_nonce.to_vec(),
            credential_id: self
                .config
                .credential
                .as_ref()
                .map(|c| c.credential_id.clone())
                .unwrap_or_default(),
        });
        framed
            .send(hello)
            .await
            .map_err(|e| retry("send hello", &e))?;
        let challenge = match read_handshake(&mut framed, "challenge").await? {
            Message::Challenge(challenge) => challenge,
            other => return Err(unexpected(&other, "challenge")),
        };
        let credential = self.config.credential.as_ref();
        let auth = credential.map(|c| majordodo_proto::worker::CredentialAuth {
            broker_nonce: &challenge.broker_nonce,
            client_nonce: &client_nonce,
            worker_id: &self.config.worker_id,
            process_id: &self.config.process_id,
            credential_id: &c.credential_id,
        });
        let proof = match (credential, &auth) {
            (Some(c), Some(auth)) => {
                majordodo_proto::worker::credential_worker_proof(&c.secret, auth)
            }
            _ => worker_proof(
                self.config.shared_secret.as_bytes(),
                &challenge.broker_nonce,
                &client_nonce,
                &self.config.worker_id,
                &self.config.process_id,
            ),
        };
        let connect = Message::Connect(Connect {
            proof: proof.to_vec(),
            capacity: self.capacity(),
            running: self.held(),
            task_shapes: true,
        });
        framed
            .send(connect)
            .await
            .map_err(|e| retry("send connect", &e))?;
        let welcome = match read_handshake(&mut framed, "welcome").await? {
            Message::Welcome(welcome) => welcome,
            other => return Err(unexpected(&other, "welcome")),
        };
        let broker_proven = match (credential, &auth) {
            (Some(c), Some(auth)) => majordodo_proto::worker::verify_credential_broker_proof(
                &c.secret,
                auth,
                &welcome.broker_proof,
            ),
            _ => verify_broker_proof(
                self.config.shared_secret.as_bytes(),
                &client_nonce,
                &challenge.broker_nonce,
                &self.config.worker_id,
                &welcome.broker_proof,
            ),
        };
        if !broker_proven {
            return Err(ConnectError::Fatal(
                WorkerError::BrokerAuthenticationFailed {
                    broker_id: challenge.broker_id,
                },
            ));
        }
        if welcome.keepalive_interval_ms == 0
            || welcome.idle_timeout_ms <= welcome.keepalive_interval_ms
        {
            return Err(ConnectError::Retry(format!(
                "broker sent unusable timings: keepalive {} ms, idle timeout {} ms",
                welcome.keepalive_interval_ms, welcome.idle_timeout_ms
            )));
        }
        Ok(Session {
            framed,
            broker_id: challenge.broker_id,
            keepalive: self
                .config
                .keepalive_interval
                .min(Duration::from_millis(welcome.keepalive_interval_ms)),
            idle_timeout: Duration::from_millis(welcome.idle_timeout_ms),
        })
    }

    /// Serves one connection until it ends.
    async fn serve(
        &mut self,
        mut session: Session,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> SessionEnd {
        info!(broker_id = %session.broker_id, held = self.held().len(), "connected to the broker");
        self.status.send_modify(|status| {
            status.connected = true;
            status.connections += 1;
            status.broker_id = Some(session.broker_id.clone());
            status.last_error = None;
        });
        let write_timeout = session.idle_timeout;
        // Everything unacknowledged goes again, now.
        if let Err(reason) = self.send_pending(&mut session.framed, write_timeout).await {
            return SessionEnd::Lost(reason);
        }
        if self.stopping.is_some() {
            // Tell the broker at once that this worker takes nothing more.
            if let Err(reason) = self.send_ping(&mut session.framed, write_timeout).await {
                return SessionEnd::Lost(reason);
            }
        }
        let now = Instant::now();
        let mut next_ping = now + session.keepalive;
        let mut idle_deadline = now + session.idle_timeout;
        // One timer for every deadline of the session, set to the earliest: moved only when
        // that changes, instead of a timer registered and dropped per deadline per loop turn.
        let timer = tokio::time::sleep_until(next_ping);
        tokio::pin!(timer);
        loop {
            if self.stopping.is_some() && self.settled() {
                let _ = timeout(
                    write_timeout,
                    session.framed.send(Message::Shutdown(Shutdown {})),
                )
                .await;
                info!("stopped gracefully");
                return SessionEnd::Done;
            }
            let batch_due = self
                .pending
                .front()
                .map(|(_, queued)| *queued + self.config.report_batching.max_delay);
            let ack_due = self
                .in_flight
                .values()
                .map(|batch| batch.sent_at)
                .min()
                .map(|sent| sent + self.config.ack_timeout);
            let (grace, flush) = self.stop_deadlines();
            // In the order they are served when several are due.
            let deadlines = [
                (batch_due, Due::Batch),
                (ack_due, Due::Ack),
                (Some(next_ping), Due::Ping),
                (Some(idle_deadline), Due::Idle),
                (grace, Due::Grace),
                (flush, Due::Flush),
            ];
            let earliest = deadlines
                .iter()
                .filter_map(|(at, _)| *at)
                .min()
                .expect("the ping and idle deadlines are always set");
            if timer.deadline() != earliest {
                timer.as_mut().reset(earliest);
            }
            let step: Result<(), SessionEnd> = tokio::select! {
                () = &mut shutdown, if self.stopping.is_none() => {
                    self.begin_stop();
                    self.send_ping(&mut session.framed, write_timeout).await.map_err(SessionEnd::Lost)
                }
                frame = session.framed.next() => {
                    idle_deadline = Instant::now() + session.idle_timeout;
                    match frame {
                        None => Err(SessionEnd::Lost("broker closed the connection".to_owned())),
                        Some(Err(error)) => Err(SessionEnd::Lost(error.to_string())),
                        Some(Ok(message)) => self.on_message(message),
                    }
                }
                Some(joined) = self.tasks.join_next_with_id() => {
                    self.on_task_done(joined);
                    // With nothing left running, no other report can join the batch: waiting
                    // for `max_delay` would only hold the broker's next assignment back (a
                    // worker of one thread would run one task per `max_delay`).
                    if self.pending.len() >= self.config.report_batching.max_reports
                        || self.tasks.is_empty()
                    {
                        self.send_pending(&mut session.framed, write_timeout).await.map_err(SessionEnd::Lost)
                    } else {
                        Ok(())
                    }
                }
                Some(fetch) = self.fetch_rx.recv() => {
                    let id = self.next_fetch_id;
                    self.next_fetch_id += 1;
                    let mut request = fetch.request;
                    request.request_id = id;
                    // A part must fit this worker's own frame limit (ids and checksum take
                    // far less than a kilobyte).
                    let room = self.config.max_frame_size.saturating_sub(1024).max(1);
                    request.max_len = request.max_len.min(u32::try_from(room).unwrap_or(u32::MAX));
                    self.pending_fetches.insert(id, fetch.reply);
                    match timeout(write_timeout, session.framed.send(Message::CodePoolRequest(request))).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(SessionEnd::Lost(e.to_string())),
                        Err(_) => Err(SessionEnd::Lost("write timed out".to_owned())),
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    let due = deadlines
                        .iter()
                        .find(|(at, _)| at.is_some_and(|at| at <= now))
                        .map(|(_, due)| *due);
                    match due {
                        // Woken early (the clock's granularity): the loop sets it again.
                        None => Ok(()),
                        Some(Due::Batch) => self.send_pending(&mut session.framed, write_timeout).await.map_err(SessionEnd::Lost),
                        Some(Due::Ack) => self.resend_unacked(&mut session.framed, write_timeout).await.map_err(SessionEnd::Lost),
                        Some(Due::Ping) => {
                            next_ping = Instant::now() + session.keepalive;
                            self.send_ping(&mut session.framed, write_timeout).await.map_err(SessionEnd::Lost)
                        }
                        Some(Due::Idle) => Err(SessionEnd::Lost(format!(
                            "broker silent for {} ms", session.idle_timeout.as_millis()
                        ))),
                        Some(Due::Grace) => {
                            self.abort_for_stop();
                            Ok(())
                        }
                        Some(Due::Flush) => Err(SessionEnd::GaveUp),
                    }
                }
            };
            if let Err(end) = step {
                self.status.send_modify(|status| status.connected = false);
                // Downloads in progress fail (their executions report an error); new ones wait
                // for the next connection.
                self.pending_fetches.clear();
                // Shapes are defined per connection.
                self.shapes.clear();
                return end;
            }
        }
    }

    /// Handles one frame from the broker.
    fn on_message(&mut self, message: Message) -> Result<(), SessionEnd> {
        match message {
            Message::Assign(assign) => {
                for shape in assign.shapes {
                    self.define_shape(shape)?;
                }
                for assignment in assign.assignments {
                    self.on_assignment(assignment)?;
                }
                self.publish_counts();
                Ok(())
            }
            Message::FinishedAck(ack) => {
                match self.in_flight.remove(&ack.seq) {
                    Some(batch) => {
                        for report in &batch.reports {
                            self.unacked.remove(&key_of(report));
                        }
                        self.publish_counts();
                    }
                    None => debug!(seq = ack.seq, "ack for a batch not in flight"),
                }
                Ok(())
            }
            Message::Pong(_) => Ok(()),
            Message::CodePoolData(data) => {
                match self.pending_fetches.remove(&data.request_id) {
                    Some(reply) => {
                        let _ = reply.send(data);
                    }
                    None => debug!(
                        request_id = data.request_id,
                        "code pool part nobody waits for"
                    ),
                }
                Ok(())
            }
            Message::Cancel(cancel) => {
                for key in cancel.tasks {
                    match self.running.values().find(|r| r.key == key) {
                        Some(running) => {
                            info!(
                                task_id = key.task_id,
                                attempt = key.attempt,
                                "cancelling task"
                            );
                            running.cancel.cancel();
                        }
                        // Ended already (its report is on its way) or never run here.
                        None => debug!(
                            task_id = key.task_id,
                            attempt = key.attempt,
                            "cancel of an attempt not running ignored"
                        ),
                    }
                }
                Ok(())
            }
            Message::Kill(kill) => Err(SessionEnd::Killed(kill.reason)),
            other => Err(SessionEnd::Lost(
                ProtocolError::UnexpectedMessage {
                    got: other.kind(),
                    expected: "assign, finished_ack, pong, cancel, code_pool_data or kill",
                }
                .to_string(),
            )),
        }
    }

    /// Records a task shape the broker defines on this connection.
    fn define_shape(&mut self, shape: TaskShape) -> Result<(), SessionEnd> {
        if self.shapes.contains_key(&shape.id) {
            return Err(SessionEnd::Lost(format!(
                "protocol violation: task shape {} defined twice on one connection",
                shape.id
            )));
        }
        if self.shapes.len() >= MAX_TASK_SHAPES {
            return Err(SessionEnd::Lost(format!(
                "protocol violation: more than {MAX_TASK_SHAPES} task shapes on one connection"
            )));
        }
        let charge = self.charge_of(&shape.needs);
        self.shapes.insert(
            shape.id,
            Shape {
                resources: shape.resources.into(),
                needs: Arc::new(shape.needs),
                charge,
            },
        );
        Ok(())
    }

    /// The positive `needs` of the dimensions this worker declares (admission refuses a task
    /// needing any other), with the dimension names of `amounts_in_use` (added at 0 when new).
    fn charge_of(&mut self, needs: &BTreeMap<String, u64>) -> Arc<[(Arc<str>, u64)]> {
        let mut charge = Vec::with_capacity(needs.len());
        let declared = &self.config.capacity.amounts;
        for (dimension, &need) in needs
            .iter()
            .filter(|(dimension, need)| **need > 0 && declared.contains_key(*dimension))
        {
            let i = match self
                .amounts_in_use
                .iter()
                .position(|(name, _)| **name == **dimension)
            {
                Some(i) => i,
                None => {
                    self.amounts_in_use.push((Arc::from(dimension.as_str()), 0));
                    self.amounts_in_use.len() - 1
                }
            };
            charge.push((self.amounts_in_use[i].0.clone(), need));
        }
        charge.into()
    }

    /// The resources and needs of `assignment`: its shape's, or its own.
    fn shape_of(&mut self, assignment: &mut Assignment) -> Result<Shape, SessionEnd> {
        if assignment.shape != 0 {
            return self.shapes.get(&assignment.shape).cloned().ok_or_else(|| {
                SessionEnd::Lost(format!(
                    "protocol violation: task {} names task shape {}, not defined on this connection",
                    assignment.task_id, assignment.shape
                ))
            });
        }
        if assignment.resources.is_empty() && assignment.needs.is_empty() {
            return Ok(self.no_shape.clone());
        }
        let needs = std::mem::take(&mut assignment.needs);
        Ok(Shape {
            resources: std::mem::take(&mut assignment.resources).into(),
            charge: self.charge_of(&needs),
            needs: Arc::new(needs),
        })
    }

    fn admission(&self, assignment: &Assignment, needs: &BTreeMap<String, u64>) -> Admission {
        let key = RunningTask {
            task_id: assignment.task_id,
            attempt: assignment.attempt,
        };
        if self.unacked.contains(&key) {
            return Admission::Ignore;
        }
        if let Some(&attempt) = self.running_attempts.get(&assignment.task_id) {
            if attempt == assignment.attempt {
                return Admission::Ignore;
            }
            return Admission::Refuse(format!(
                "refused: attempt {attempt} of this task is still running on this worker"
            ));
        }
        if self.stopping.is_some() {
            return Admission::Refuse("refused: the worker is shutting down".to_owned());
        }
        let capacity = &self.config.capacity;
        let running = self.running.len();
        if running >= capacity.max_threads as usize {
            return Admission::Refuse(format!(
                "refused: {running} tasks running, max_threads is {}",
                capacity.max_threads
            ));
        }
        let Some((bucket, limit)) = capacity.type_limit(&assignment.task_type) else {
            return Admission::Refuse(format!(
                "refused: task type {:?} is not in this worker's capacity",
                assignment.task_type
            ));
        };
        let in_bucket: u32 = if bucket == assignment.task_type {
            self.type_counts.get(bucket).copied().unwrap_or(0)
        } else {
            // The `any` bucket: every running type without an entry of its own.
            self.type_counts
                .iter()
                .filter(|(task_type, _)| {
                    !capacity.max_threads_by_task_type.contains_key(*task_type)
                })
                .map(|(_, count)| count)
                .sum()
        };
        if in_bucket >= limit {
            return Admission::Refuse(format!(
                "refused: {in_bucket} tasks counted against {bucket:?} running, its limit is {limit}"
            ));
        }
        for (key, &need) in needs.iter().filter(|(_, need)| **need > 0) {
            let Some(&amount) = capacity.amounts.get(key) else {
                return Admission::Refuse(format!(
                    "refused: the task needs {key} = {need}, which this worker does not declare"
                ));
            };
            let in_use = self
                .amounts_in_use
                .iter()
                .find(|(name, _)| **name == **key)
                .map_or(0, |(_, used)| *used);
            if in_use.saturating_add(need) > amount {
                return Admission::Refuse(format!(
                    "refused: the task needs {key} = {need}; {in_use} of {amount} are in use"
                ));
            }
        }
        if self.executors.get(&assignment.task_type).is_none() {
            return Admission::Refuse(format!(
                "refused: no executor for task type {:?}",
                assignment.task_type
            ));
        }
        Admission::Run
    }

    /// Adds an admitted task's needs to the amounts in use; returns what to give back when it
    /// ends.
    fn charge_amounts(&mut self, charge: &Arc<[(Arc<str>, u64)]>) -> Arc<[(Arc<str>, u64)]> {
        for (dimension, need) in charge.iter() {
            if let Some((_, used)) = self
                .amounts_in_use
                .iter_mut()
                .find(|(name, _)| Arc::ptr_eq(name, dimension))
            {
                *used = used.saturating_add(*need);
            }
        }
        charge.clone()
    }

    fn on_assignment(&mut self, mut assignment: Assignment) -> Result<(), SessionEnd> {
        let key = RunningTask {
            task_id: assignment.task_id,
            attempt: assignment.attempt,
        };
        let shape = self.shape_of(&mut assignment)?;
        match self.admission(&assignment, &shape.needs) {
            Admission::Ignore => {
                warn!(
                    task_id = key.task_id,
                    attempt = key.attempt,
                    "duplicate assignment ignored"
                );
            }
            Admission::Refuse(reason) => {
                warn!(task_id = key.task_id, attempt = key.attempt, %reason, "assignment refused");
                self.queue_report(key, Outcome::Error, reason);
            }
            Admission::Run => {
                let executor = self
                    .executors
                    .get(&assignment.task_type)
                    .expect("admission checked the executor exists")
                    .clone();
                let task_type = assignment.task_type.clone();
                debug!(task_id = key.task_id, attempt = key.attempt, worker_id = %self.config.worker_id, user = %assignment.user_id, %task_type, "task started");
                let cancel = CancelSignal::new();
                let needs = self.charge_amounts(&shape.charge);
                let task = Task {
                    task_id: assignment.task_id,
                    attempt: assignment.attempt,
                    task_type: assignment.task_type,
                    user_id: assignment.user_id,
                    data: assignment.data,
                    codepool: assignment.codepool,
                    mode: assignment.mode,
                    resources: shape.resources,
                    needs: shape.needs,
                    codepool_dir: None,
                    cancel: cancel.clone(),
                };
                // only a task that names a code pool needs the pools (a clone is not free)
                let pools = task.codepool.is_some().then(|| self.pools.clone());
                let handle = self.tasks.spawn(execution(
                    executor,
                    task,
                    pools,
                    cancel.clone(),
                    self.config.cancel_grace,
                ));
                *self.type_counts.entry(task_type.clone()).or_default() += 1;
                self.running_attempts.insert(key.task_id, key.attempt);
                self.running.insert(
                    handle.id(),
                    Running {
                        key,
                        task_type,
                        needs,
                        cancel,
                    },
                );
            }
        }
        Ok(())
    }

    fn on_task_done(
        &mut self,
        joined: Result<(tokio::task::Id, Result<String, TaskFailure>), JoinError>,
    ) {
        let (id, outcome) = match joined {
            Ok((id, outcome)) => (id, outcome),
            Err(error) if error.is_cancelled() => {
                (error.id(), Err(TaskFailure::new(ABORTED_RESULT)))
            }
            Err(error) => (
                error.id(),
                Err(TaskFailure::new(format!("executor panicked: {error}"))),
            ),
        };
        let Some(Running {
            key,
            task_type,
            needs,
            ..
        }) = self.running.remove(&id)
        else {
            error!(?id, "an execution ended that was not recorded as running");
            return;
        };
        for (dimension, need) in needs.iter() {
            if let Some((_, used)) = self
                .amounts_in_use
                .iter_mut()
                .find(|(name, _)| Arc::ptr_eq(name, dimension))
            {
                *used = used.saturating_sub(*need);
            }
        }
        if let Some(count) = self.type_counts.get_mut(&task_type) {
            *count -= 1;
            if *count == 0 {
                self.type_counts.remove(&task_type);
            }
        }
        self.running_attempts.remove(&key.task_id);
        let mut retry_after_ms = 0;
        let (outcome, result) = match outcome {
            Ok(result) => (Outcome::Finished, result),
            Err(failure) => match failure.retry_delay() {
                Some(delay) => {
                    retry_after_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                    (Outcome::RetryLater, failure.message().to_owned())
                }
                None => (Outcome::Error, failure.message().to_owned()),
            },
        };
        debug!(
            task_id = key.task_id,
            attempt = key.attempt,
            worker_id = %self.config.worker_id,
            ?outcome,
            "task ended"
        );
        self.queue_report_after(key, outcome, result, retry_after_ms);
        self.publish_counts();
    }

    fn queue_report(&mut self, key: RunningTask, outcome: Outcome, result: String) {
        self.queue_report_after(key, outcome, result, 0);
    }

    fn queue_report_after(
        &mut self,
        key: RunningTask,
        outcome: Outcome,
        result: String,
        retry_after_ms: u64,
    ) {
        let mut report = FinishReport {
            task_id: key.task_id,
            attempt: key.attempt,
            outcome: outcome as i32,
            result,
            retry_after_ms,
        };
        if !fits_in_frame(&report, self.config.max_frame_size) {
            report.result = format!(
                "result of {} bytes does not fit the frame limit of {} bytes",
                report.result.len(),
                self.config.max_frame_size
            );
            report.outcome = Outcome::Error as i32;
        }
        self.unacked.insert(key);
        self.pending.push_back((report, Instant::now()));
    }

    /// Sends every pending report, in batches, then flushes once.
    async fn send_pending(
        &mut self,
        framed: &mut Conn,
        write_timeout: Duration,
    ) -> Result<(), String> {
        let now = Instant::now();
        let mut frames = Vec::new();
        while !self.pending.is_empty() {
            let take = self
                .pending
                .len()
                .min(self.config.report_batching.max_reports);
            let batch: Vec<_> = self
                .pending
                .drain(..take)
                .map(|(report, _)| report)
                .collect();
            for reports in chunk_for_frames(batch, self.config.max_frame_size) {
                let seq = self.next_seq;
                self.next_seq += 1;
                frames.push(Message::Finished(Finished {
                    seq,
                    reports: reports.clone(),
                }));
                // Recorded before writing: if the write fails, the batch is re-queued with the rest.
                self.in_flight.insert(
                    seq,
                    InFlight {
                        reports,
                        sent_at: now,
                    },
                );
            }
        }
        write_frames(framed, frames, write_timeout).await
    }

    /// Sends again every batch whose ack is overdue, under the same seq.
    async fn resend_unacked(
        &mut self,
        framed: &mut Conn,
        write_timeout: Duration,
    ) -> Result<(), String> {
        let now = Instant::now();
        let mut frames = Vec::new();
        for (seq, batch) in &mut self.in_flight {
            if batch.sent_at + self.config.ack_timeout <= now {
                warn!(
                    seq,
                    reports = batch.reports.len(),
                    "finish reports not acknowledged in time; sending again"
                );
                batch.sent_at = now;
                frames.push(Message::Finished(Finished {
                    seq: *seq,
                    reports: batch.reports.clone(),
                }));
            }
        }
        write_frames(framed, frames, write_timeout).await
    }

    async fn send_ping(
        &mut self,
        framed: &mut Conn,
        write_timeout: Duration,
    ) -> Result<(), String> {
        let ping = Message::Ping(Ping {
            capacity: self.capacity(),
            running: u32::try_from(self.running.len()).unwrap_or(u32::MAX),
        });
        write_frames(framed, vec![ping], write_timeout).await
    }

    /// Puts every unacknowledged batch back at the front of `pending`, in seq order.
    fn requeue_in_flight(&mut self) {
        let now = Instant::now();
        let in_flight = std::mem::take(&mut self.in_flight);
        for report in in_flight
            .into_values()
            .flat_map(|batch| batch.reports)
            .rev()
        {
            self.pending.push_front((report, now));
        }
    }
}

/// One execution, on its own tokio task: the task's code pool (when it names one), then the
/// executor. An executor that ignores the cancel signal is dropped `grace` after it.
///
/// This future is moved into its tokio task on every assignment, so it is kept small: it
/// holds one boxed future, the executor's own or, for a task that names a code pool, one that
/// fetches the pool (large state, rarely needed) and then runs the executor; and `pools` is
/// given only to a task that names a code pool.
async fn execution(
    executor: Arc<dyn TaskExecutor>,
    mut task: Task,
    pools: Option<PoolCache>,
    signal: CancelSignal,
    grace: Duration,
) -> Result<String, TaskFailure> {
    let run: BoxFuture<'static, Result<String, TaskFailure>> = match (task.codepool.clone(), pools)
    {
        (Some(pool), Some(pools)) => Box::pin(async move {
            task.codepool_dir = Some(pools.get(&pool).await.map_err(TaskFailure::new)?);
            executor.execute(task).await
        }),
        _ => executor.execute(task),
    };
    // the grace covers the code pool's fetch as well as the executor
    tokio::select! {
        outcome = run => outcome,
        () = async {
            signal.cancelled().await;
            tokio::time::sleep(grace).await;
        } => Err(TaskFailure::new(format!(
            "cancelled: the executor did not stop within {} ms and was dropped",
            grace.as_millis()
        ))),
    }
}

fn key_of(report: &FinishReport) -> RunningTask {
    RunningTask {
        task_id: report.task_id,
        attempt: report.attempt,
    }
}

/// Writes `frames` with one flush; a peer that does not read within `write_timeout` counts as
/// gone.
async fn write_frames(
    framed: &mut Conn,
    frames: Vec<Message>,
    write_timeout: Duration,
) -> Result<(), String> {
    if frames.is_empty() {
        return Ok(());
    }
    let write = async {
        for frame in frames {
            framed.feed(frame).await?;
        }
        framed.flush().await
    };
    match timeout(write_timeout, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(format!("write to the broker: {error}")),
        Err(_) => Err("write to the broker timed out".to_owned()),
    }
}

/// Reads the next handshake frame; a `Reject` becomes the matching [`ConnectError`].
async fn read_handshake(
    framed: &mut Conn,
    expected: &'static str,
) -> Result<Message, ConnectError> {
    match framed.next().await {
        None => Err(ConnectError::Retry(format!(
            "broker closed the connection before the {expected}"
        ))),
        Some(Err(error)) => Err(ConnectError::Retry(format!("read {expected}: {error}"))),
        Some(Ok(Message::Reject(reject))) => {
            warn!(reason = %reject.reason, retryable = reject.retryable, "broker rejected the worker");
            if reject.retryable && is_broker_condition(&reject.reason) {
                // Not this worker's fault: another broker leads, or this one is not serving
                // yet. Locate the broker again after the backoff, without a time limit.
                Err(ConnectError::Retry(format!(
                    "broker refused: {}",
                    reject.reason
                )))
            } else if reject.retryable {
                Err(ConnectError::Refused(reject.reason))
            } else {
                Err(ConnectError::Fatal(WorkerError::Rejected {
                    reason: reject.reason,
                }))
            }
        }
        Some(Ok(message)) => Ok(message),
    }
}

/// Codes a broker refuses with when it cannot serve any worker now (they start the refusal's
/// reason, as the HTTP API's error texts do).
const BROKER_CONDITIONS: [&str; 3] = [
    "broker_not_leader",
    "recovery_in_progress",
    "broker_not_started",
];

/// Whether a refusal is about the broker (not the leader, recovering, stopping) rather than
/// about this worker.
fn is_broker_condition(reason: &str) -> bool {
    BROKER_CONDITIONS
        .iter()
        .any(|code| reason.starts_with(code))
}

fn unexpected(message: &Message, expected: &'static str) -> ConnectError {
    ConnectError::Retry(
        ProtocolError::UnexpectedMessage {
            got: message.kind(),
            expected,
        }
        .to_string(),
    )
}

/// The host of a `host:port` address (without the brackets of an IPv6 address), the name the
/// broker's certificate must be valid for.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _port)| host);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}
