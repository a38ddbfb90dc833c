//! The dispatcher: the one task that owns the broker state (an actor).
//!
//! Each loop turn takes whatever arrived (submissions, reads, worker events, timers, durable
//! appends) and builds one *round*: the leader turns requests into log entries, assignment picks
//! tasks for workers with room, and the entries go to the commit log as one append. The dispatcher
//! does not wait for it: while a round is being made durable, the next one is built (pipelined
//! group commit). Rounds become durable in order; each one is then applied to the state by the same
//! `apply` replay uses, and only then are its callers answered, its workers welcomed, its finish
//! reports acknowledged and its assignments pushed.
//!
//! If an append fails, nothing after it is applied or acknowledged: every caller in flight gets an
//! error and the dispatcher stops with the error (the process must restart and recover from the
//! log).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use majordodo_core::leader::{
    ConnectRejection, FinishReport as CoreReport, LevelRefusal, Outcome as CoreOutcome,
    PriorityRefusal, QuotaRefusal, SubmitOutcome, SubmitRequest, WorkerAssignments,
    WorkerHello as CoreHello,
};
use majordodo_core::{Leader, LogEntry, Millis, TaskId, WorkerCapacity};
use majordodo_log::{AppendFuture, Appended, CommitLog, LogError};
use majordodo_proto::record::{encode_entry, record_len_bound};
use majordodo_proto::worker::{Assignment, Capacity, Outcome};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

#[cfg(test)]
mod tests;

use crate::checkpoint::Checkpointer;
use crate::clock::Clock;
use crate::handle::{
    ActionDone, AdminChange, AdminRefusal, BrokerAction, BrokerError, CodePoolOp, Command, Role,
    View,
};
use crate::worker_listener::{
    Admission, CloseReason, ConnId, Outgoing, Rejection, SessionError, Shape, WorkerEvent,
    WorkerSession,
};

/// Tunables of the dispatcher.
#[derive(Clone, Debug)]
pub struct DispatcherConfig {
    /// Most commands and worker events taken into one round. Bounds the latency a round adds
    /// to the requests behind it; 4 096 keeps a round well under a millisecond of work.
    pub max_inputs_per_round: usize,
    /// Most rounds in flight (appended, not yet durable). Beyond it the dispatcher stops taking
    /// input until the log catches up, which pushes back on clients through the bounded queues.
    pub max_rounds_in_flight: usize,
    /// Period of the snapshot (checkpoint); `None` disables periodic snapshots.
    pub checkpoint_interval: Option<Duration>,
    /// Period of the NOOP entry that proves the log is still writable when nothing else happens.
    pub noop_interval: Duration,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            max_inputs_per_round: 4_096,
            max_rounds_in_flight: 32,
            checkpoint_interval: Some(Duration::from_secs(600)),
            noop_interval: Duration::from_secs(10),
        }
    }
}

/// Why the dispatcher stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    /// The commit log failed; the broker must be restarted and recover from the log.
    #[error("commit log failed: {0}")]
    Log(#[from] LogError),
    /// A durable entry did not apply: the log and the state disagree (a bug).
    #[error("durable entry does not apply: {0}")]
    Apply(#[from] majordodo_core::ApplyError),
    /// The state could not be recovered at boot (the message says why).
    #[error("recovery failed: {0}")]
    Boot(String),
}

/// Refuses a worker event while the broker cannot take workers: a connecting worker is told
/// why (retryable); other events concern connections that were never admitted.
pub(crate) fn refuse_event(event: WorkerEvent, why: &BrokerError) {
    if let WorkerEvent::Connected { reply, .. } = event {
        reply.reject(Rejection {
            reason: why.to_string(),
            retryable: true,
        });
    }
}

/// Something to do once a round is durable.
enum Obligation {
    /// Answer a submission.
    Submit {
        reply: oneshot::Sender<Result<Vec<SubmitOutcome>, BrokerError>>,
        outcomes: Vec<SubmitOutcome>,
    },
    /// Welcome a worker whose connection entries are in this round.
    Welcome {
        admission: Admission,
        conn: ConnId,
        worker_id: String,
        replaced: Option<u64>,
        credential: Option<String>,
    },
    /// Acknowledge a batch of finish reports: they are durable once this round is, and the
    /// acknowledgement is then deferred to the next round.
    Ack { conn: ConnId, seq: u64 },
    /// Acknowledge a batch of finish reports made durable by an earlier round.
    DeferredAck { conn: ConnId, seq: u64 },
    /// Answer an action.
    Act {
        reply: oneshot::Sender<
            Result<Result<ActionDone, majordodo_core::leader::ActionError>, BrokerError>,
        >,
        done: ActionDone,
    },
    /// Answer a checkpoint request once everything before it is applied.
    Checkpoint(oneshot::Sender<Result<u64, BrokerError>>),
    /// Answer a code-pool change once its entries are durable.
    Done(oneshot::Sender<Result<(), BrokerError>>),
    /// Answer an admin change.
    Admin(oneshot::Sender<Result<Result<(), AdminRefusal>, BrokerError>>),
}

impl Obligation {
    /// Answers the caller with an error (the round will never be durable).
    fn fail(self, error: &BrokerError) {
        match self {
            Obligation::Submit { reply, .. } => {
                let _ = reply.send(Err(error.clone()));
            }
            Obligation::Welcome { admission, .. } => admission.reject(Rejection {
                reason: format!("broker failed: {error}"),
                retryable: true,
            }),
            Obligation::Checkpoint(reply) => {
                let _ = reply.send(Err(error.clone()));
            }
            Obligation::Done(reply) => {
                let _ = reply.send(Err(error.clone()));
            }
            Obligation::Act { reply, .. } => {
                let _ = reply.send(Err(error.clone()));
            }
            Obligation::Admin(reply) => {
                let _ = reply.send(Err(error.clone()));
            }
            Obligation::Ack { .. } | Obligation::DeferredAck { .. } => {}
        }
    }
}

/// A round handed to the log.
struct Round {
    durable: AppendFuture,
    /// When it was handed to the log (`None` for a round without entries), for the append
    /// latency metric.
    sealed: Option<std::time::Instant>,
    entries: Vec<LogEntry>,
    obligations: Vec<Obligation>,
}

/// A round being built.
#[derive(Default)]
struct Building {
    entries: Vec<LogEntry>,
    obligations: Vec<Obligation>,
}

/// Most task shapes the dispatcher keeps; past it, it starts over (connections keep the ones
/// they defined).
const MAX_INTERNED_SHAPES: usize = 4096;

/// A task shape and the state's lists it was made from.
struct Interned {
    shape: Arc<Shape>,
    _resources: majordodo_core::scheduler::Resources,
    _needs: Option<majordodo_core::quota::Needs>,
}

/// An admitted worker connection.
struct Session {
    session: WorkerSession,
    /// Assignments the connection's queue could not take yet, retried each turn.
    backlog: Vec<Outgoing>,
    /// The per-worker credential the connection proved, if any (closed when it is revoked).
    credential: Option<String>,
}

/// The shape of a task's resources and needs (none when it has neither), made once per
/// distinct pair of the state's shared lists.
fn shape_of(
    shapes: &mut HashMap<(usize, usize), Interned>,
    extra: &majordodo_core::model::TaskExtra,
) -> Option<Arc<Shape>> {
    if extra.resources.is_empty() && extra.needs.is_none() {
        return None;
    }
    let key = (
        extra.resources.as_ptr() as usize,
        extra.needs.as_ref().map_or(0, |n| n.as_ptr() as usize),
    );
    if let Some(known) = shapes.get(&key) {
        return Some(known.shape.clone());
    }
    if shapes.len() >= MAX_INTERNED_SHAPES {
        shapes.clear();
    }
    let shape = Arc::new(Shape::new(
        extra.resources.iter().map(|r| r.to_string()).collect(),
        extra
            .needs
            .iter()
            .flat_map(|n| n.iter())
            .map(|(d, n)| (d.to_string(), *n))
            .collect(),
    ));
    shapes.insert(
        key,
        Interned {
            shape: shape.clone(),
            _resources: extra.resources.clone(),
            _needs: extra.needs.clone(),
        },
    );
    Some(shape)
}

fn credential_refusal(e: majordodo_core::leader::CredentialRefusal) -> AdminRefusal {
    use majordodo_core::leader::CredentialRefusal as R;
    match e {
        R::Invalid { field, reason } => AdminRefusal::Invalid { field, reason },
        R::Unknown(id) => AdminRefusal::NoSuchCredential(id),
        R::Conflict(why) => AdminRefusal::CredentialConflict(why),
    }
}

/// The dispatcher's state.
pub(crate) struct Dispatcher {
    leader: Leader,
    log: Arc<dyn CommitLog>,
    clock: Arc<dyn Clock>,
    config: DispatcherConfig,
    broker_id: Arc<str>,
    role: Role,
    sessions: HashMap<ConnId, Session>,
    /// The sessions whose backlog may not be empty (a session that left may still be listed):
    /// only these are retried, so a turn costs nothing per idle connection.
    backlogged: BTreeSet<ConnId>,
    /// Acknowledgements of durable finish reports, to send with the next round (see
    /// [`Dispatcher::complete`]).
    deferred_acks: Vec<(ConnId, u64)>,
    /// Tasks may have become assignable since the last assignment.
    dirty: bool,
    checkpointer: Option<Checkpointer>,
    next_checkpoint: Option<Millis>,
    last_write: Millis,
    /// Position of the last applied entry other than a NOOP: a periodic snapshot is skipped
    /// when the newest one already covers it.
    last_change: u64,
    /// The log had room after the last append; while false, no input is taken.
    log_ready: bool,
    /// In a replicated cluster, what the status views show of it.
    pub(crate) cluster: Option<tokio::sync::watch::Receiver<crate::handle::ClusterView>>,
    /// Counters and histograms for `/metrics` (atomics: bumping them never locks).
    metrics: Arc<crate::metrics::BrokerMetrics>,
    /// When each running attempt this dispatcher assigned started, for the run-time histogram;
    /// at most [`MAX_TRACKED_STARTS`] entries.
    started: HashMap<TaskId, Millis>,
    /// The task shapes of assignments (their resources and needs), by the addresses of the
    /// state's shared lists they were made from, which each entry keeps alive.
    shapes: HashMap<(usize, usize), Interned>,
}

/// Most running attempts whose start time is kept for the run-time histogram (a few dozen
/// bytes each): far above the attempts a cluster runs at once; beyond it, attempts are not
/// timed rather than memory growing.
const MAX_TRACKED_STARTS: usize = 1 << 20;

/// Why [`Dispatcher::run`] should stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The broker is stopping: finish the rounds in flight.
    Shutdown,
    /// Another broker leads now (the text says how that was seen): stop at once.
    LostLeadership(String),
}

/// How [`Dispatcher::run`] ended without an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// After [`Stop::Shutdown`].
    Shutdown,
    /// Every handle and the worker listener are gone.
    InputsClosed,
    /// After [`Stop::LostLeadership`].
    LostLeadership(String),
}

/// What woke the loop.
enum Wake {
    Durable(Result<Appended, LogError>),
    Command(Option<Command>),
    Event(Option<WorkerEvent>),
    Timer,
    /// The log has room again (see [`CommitLog::ready`]).
    LogReady,
    LostLeadership(String),
    Shutdown,
}

impl Dispatcher {
    pub(crate) fn new(
        leader: Leader,
        log: Arc<dyn CommitLog>,
        clock: Arc<dyn Clock>,
        config: DispatcherConfig,
        broker_id: Arc<str>,
        checkpointer: Option<Checkpointer>,
    ) -> Dispatcher {
        let now = clock.now();
        let next_checkpoint = config
            .checkpoint_interval
            .filter(|_| checkpointer.is_some())
            .map(|i| now + i.as_millis() as Millis);
        Dispatcher {
            log,
            clock,
            config,
            broker_id,
            role: Role::Leader,
            sessions: HashMap::new(),
            backlogged: BTreeSet::new(),
            deferred_acks: Vec::new(),
            dirty: true,
            last_change: leader.state().last_lsn(),
            log_ready: true,
            cluster: None,
            metrics: Arc::default(),
            started: HashMap::new(),
            shapes: HashMap::new(),
            leader,
            checkpointer,
            next_checkpoint,
            last_write: now,
        }
    }

    /// Counts into `metrics` (the broker's, shared with its HTTP API) rather than its own.
    pub(crate) fn with_metrics(mut self, metrics: Arc<crate::metrics::BrokerMetrics>) -> Self {
        metrics.set_log(Some(self.log.clone()));
        self.metrics = metrics;
        self
    }

    /// Counts a durable entry about to be applied (the state is the one before it), and logs
    /// the task state changes at DEBUG with their `task_id`, `worker_id` and `user` (one line
    /// per task: too many for INFO on a busy broker; a disabled level costs nothing here).
    fn observe(&mut self, entry: &LogEntry) {
        use crate::metrics::Ended;
        let logged = tracing::enabled!(tracing::Level::DEBUG);
        match entry {
            LogEntry::AddTask(t) => {
                self.metrics.task_submitted();
                if logged {
                    debug!(task_id = t.id.0, user = %t.user_id, task_type = %t.task_type, "task submitted");
                }
            }
            LogEntry::AssignTask {
                task_id,
                worker_id,
                attempt,
                timestamp,
                ..
            } => {
                self.metrics.task_assigned();
                if logged && let Some(t) = self.leader.state().task(*task_id) {
                    debug!(task_id = task_id.0, %worker_id, user = %t.user_id, attempt, "task assigned");
                }
                if *attempt == 1
                    && let Some(t) = self.leader.state().task(*task_id)
                {
                    let ready = t.created.max(t.requested_start_time);
                    self.metrics
                        .queue_time
                        .observe(timestamp.saturating_sub(ready).max(0) as u64);
                }
                if self.started.len() < MAX_TRACKED_STARTS {
                    self.started.insert(*task_id, *timestamp);
                }
            }
            LogEntry::TaskStatusChange {
                task_id,
                status,
                attempt,
                worker_id,
                timestamp,
                ..
            } => {
                let task = self.leader.state().task(*task_id);
                if logged && let Some(t) = task {
                    let worker_id = worker_id
                        .as_deref()
                        .or(t.worker_id.as_deref())
                        .unwrap_or("");
                    debug!(task_id = task_id.0, worker_id, user = %t.user_id, attempt, from = %t.status, to = %status, "task status changed");
                }
                let was_running =
                    task.is_some_and(|t| t.status == majordodo_core::TaskStatus::Running);
                if was_running && let Some(how) = Ended::of(*status) {
                    self.metrics.attempt_ended(how);
                    if let Some(at) = self.started.remove(task_id) {
                        self.metrics
                            .run_time
                            .observe(timestamp.saturating_sub(at).max(0) as u64);
                    }
                }
            }
            _ => {}
        }
    }

    /// Runs as leader until `stop` resolves or the log fails.
    ///
    /// - [`Stop::Shutdown`]: rounds in flight are completed first, then it returns
    ///   [`Ended::Shutdown`].
    /// - [`Stop::LostLeadership`]: it stops acting as leader at once: nothing more is applied,
    ///   answered or pushed; callers in flight are told (`outcome_unknown` for rounds the log
    ///   had taken, `broker_not_leader` for the round being built); worker connections are
    ///   closed. Returns [`Ended::LostLeadership`]; the leader's state is then behind the log
    ///   and its queues ahead of its state (see [`Dispatcher::into_leader`]).
    ///
    /// # Errors
    /// [`DispatcherError`] when the log failed (a fenced log means another broker took over)
    /// or an entry did not apply.
    pub(crate) async fn run(
        &mut self,
        commands: &mut mpsc::Receiver<Command>,
        events: &mut mpsc::Receiver<WorkerEvent>,
        stop: impl Future<Output = Stop>,
    ) -> Result<Ended, DispatcherError> {
        let mut rounds: VecDeque<Round> = VecDeque::new();
        let mut building = Building::default();
        let mut commands_open = true;
        let mut events_open = true;
        let shutdown = stop;
        tokio::pin!(shutdown);
        info!(broker_id = %self.broker_id, lsn = self.leader.state().last_lsn(), "dispatcher started as leader");

        loop {
            let now = self.clock.now();
            let wait = self.next_wake(now);
            // Input waits while too many rounds are in flight or the log's queue is full: the
            // bounded queues then push back on clients.
            let can_take = rounds.len() < self.config.max_rounds_in_flight && self.log_ready;
            let log = self.log.clone();
            let wake = tokio::select! {
                biased;
                result = async { rounds.front_mut().expect("guarded").durable.as_mut().await }, if !rounds.is_empty() => Wake::Durable(result),
                stop = &mut shutdown => match stop {
                    Stop::Shutdown => Wake::Shutdown,
                    Stop::LostLeadership(why) => Wake::LostLeadership(why),
                },
                cmd = commands.recv(), if can_take && commands_open => Wake::Command(cmd),
                ev = events.recv(), if can_take && events_open => Wake::Event(ev),
                () = log.ready(), if !self.log_ready => Wake::LogReady,
                () = tokio::time::sleep(wait) => Wake::Timer,
            };
            match wake {
                Wake::Durable(result) => {
                    let round = rounds.pop_front().expect("a round was awaited");
                    match result {
                        Ok(appended) => self.complete(round, appended)?,
                        Err(e) => return Err(self.fail(e, round, rounds, building).await),
                    }
                }
                Wake::Command(Some(cmd)) => {
                    self.take_command(cmd, &mut building);
                    for _ in 1..self.config.max_inputs_per_round {
                        match commands.try_recv() {
                            Ok(cmd) => self.take_command(cmd, &mut building),
                            Err(_) => break,
                        }
                    }
                }
                Wake::Command(None) => commands_open = false,
                Wake::Event(Some(ev)) => {
                    self.take_event(ev, &mut building);
                    for _ in 1..self.config.max_inputs_per_round {
                        match events.try_recv() {
                            Ok(ev) => self.take_event(ev, &mut building),
                            Err(_) => break,
                        }
                    }
                }
                Wake::Event(None) => events_open = false,
                Wake::Timer => {}
                Wake::LogReady => self.log_ready = true,
                Wake::LostLeadership(why) => {
                    self.step_down(&why, rounds, building);
                    return Ok(Ended::LostLeadership(why));
                }
                Wake::Shutdown => {
                    info!(rounds_in_flight = rounds.len(), "dispatcher stopping");
                    self.role = Role::Closed;
                    self.seal(&mut building, &mut rounds);
                    while let Some(round) = rounds.pop_front() {
                        let mut round = round;
                        match round.durable.as_mut().await {
                            Ok(appended) => self.complete(round, appended)?,
                            Err(e) => {
                                return Err(self.fail(e, round, rounds, Building::default()).await);
                            }
                        }
                    }
                    for (conn, seq) in std::mem::take(&mut self.deferred_acks) {
                        self.ack_finished(conn, seq);
                    }
                    for (_, s) in self.sessions.drain() {
                        s.session
                            .close(CloseReason::Other("broker stopping".into()));
                    }
                    return Ok(Ended::Shutdown);
                }
            }
            if !commands_open && !events_open && rounds.is_empty() {
                // Every handle and the listener are gone: nothing can reach us any more.
                info!("dispatcher inputs closed, stopping");
                return Ok(Ended::InputsClosed);
            }
            self.retry_backlogs();
            if rounds.len() < self.config.max_rounds_in_flight {
                building.obligations.extend(
                    self.deferred_acks
                        .drain(..)
                        .map(|(conn, seq)| Obligation::DeferredAck { conn, seq }),
                );
                self.decide(&mut building);
                self.seal(&mut building, &mut rounds);
            }
        }
    }

    /// How long the loop may sleep before timers need it.
    fn next_wake(&self, now: Millis) -> Duration {
        let mut next = self.last_write + self.config.noop_interval.as_millis() as Millis;
        if let Some(t) = self.leader.next_timer() {
            next = next.min(t);
        }
        if let Some(t) = self.next_checkpoint {
            next = next.min(t);
        }
        // Never sleep long: the clock may be adjusted, and backlogs need retrying.
        Duration::from_millis((next - now).clamp(0, 1_000) as u64)
    }

    /// Timers and assignment, appended to the round being built.
    fn decide(&mut self, building: &mut Building) {
        let now = self.clock.now();
        let due = self.leader.next_timer().is_some_and(|t| t <= now);
        if due {
            let entries = self.leader.tick(now);
            for e in &entries {
                if let LogEntry::DeleteCodePool { id, .. } = e {
                    info!(pool = %id, "code pool expired or left incomplete; deleting it");
                }
            }
            if !entries.is_empty() {
                self.dirty = true;
                building.entries.extend(entries);
            }
        }
        if self.dirty {
            self.dirty = false;
            building.entries.extend(self.leader.assign(now));
        }
        if building.entries.is_empty()
            && now >= self.last_write + self.config.noop_interval.as_millis() as Millis
        {
            building.entries.push(LogEntry::Noop { timestamp: now });
        }
        if let Some(at) = self.next_checkpoint
            && now >= at
            && let Some(cp) = &self.checkpointer
            && !cp.busy()
        {
            if self.last_change > cp.last() {
                building
                    .obligations
                    .push(Obligation::Checkpoint(noop_reply()));
            } else {
                debug!(
                    snapshot_lsn = cp.last(),
                    "periodic snapshot skipped: nothing changed since the last one"
                );
            }
            self.next_checkpoint = self
                .config
                .checkpoint_interval
                .map(|i| now + i.as_millis() as Millis);
        }
    }

    /// Hands the round being built to the log.
    fn seal(&mut self, building: &mut Building, rounds: &mut VecDeque<Round>) {
        if building.entries.is_empty() && building.obligations.is_empty() {
            return;
        }
        let Building {
            entries,
            obligations,
        } = std::mem::take(building);
        let sealed = (!entries.is_empty()).then(std::time::Instant::now);
        let durable = if entries.is_empty() {
            // Nothing to write: the round completes in order behind the others.
            let at = self.log.last_lsn();
            Box::pin(async move {
                Ok(Appended {
                    first: at,
                    last: at,
                })
            }) as AppendFuture
        } else {
            self.last_write = self.clock.now();
            let records: Vec<Bytes> = entries
                .iter()
                .map(|e| Bytes::from(encode_entry(e)))
                .collect();
            let durable = self.log.append(records);
            self.log_ready = self.log.ready().now_or_never().is_some();
            durable
        };
        rounds.push_back(Round {
            durable,
            sealed,
            entries,
            obligations,
        });
    }

    /// Checks a worker's credential claim against the verifier in the state: the broker's
    /// proof for `Welcome`, or the refusal the worker gets. An unknown id and a wrong secret
    /// get the same answer; a worker that proved the secret learns that its credential is
    /// revoked or bound to another worker id.
    fn check_credential(
        &self,
        hello: &crate::worker_listener::WorkerHello,
        claim: &crate::worker_listener::CredentialClaim,
    ) -> Result<[u8; 32], String> {
        use majordodo_proto::worker::{
            CredentialAuth, CredentialVerifier, credential_broker_proof,
            verify_credential_worker_proof,
        };
        let failed = || "authentication failed: unknown credential or wrong secret".to_owned();
        let stored = self
            .leader
            .state()
            .credential(&claim.credential_id)
            .ok_or_else(failed)?;
        let verifier = CredentialVerifier {
            stored_key: stored.stored_key,
            server_key: stored.server_key,
        };
        let auth = CredentialAuth {
            broker_nonce: &claim.broker_nonce,
            client_nonce: &claim.client_nonce,
            worker_id: &hello.worker_id,
            process_id: &hello.process_id,
            credential_id: &claim.credential_id,
        };
        if !verify_credential_worker_proof(&verifier, &auth, &claim.proof) {
            return Err(failed());
        }
        self.leader
            .state()
            .credential_for(&claim.credential_id, &hello.worker_id)
            .map_err(|problem| problem.to_string())?;
        Ok(credential_broker_proof(&verifier, &auth))
    }

    /// Kills the connections that proved one of these (now revoked) credentials; their
    /// workers are then lost as for any other disconnection.
    fn close_revoked(&mut self, revoked: &[String]) {
        for (conn, s) in &self.sessions {
            if let Some(id) = &s.credential
                && revoked.contains(id)
            {
                warn!(worker_id = s.session.worker_id(), %conn, credential_id = %id, "credential revoked; closing its connection");
                s.session.kill(format!("credential {id} is revoked"));
            }
        }
    }

    /// Why this broker refuses writes now, if it does.
    fn refusal(&self) -> Option<BrokerError> {
        match self.role {
            Role::Leader => None,
            Role::Follower => Some(BrokerError::NotLeader(None)),
            Role::Recovering => Some(BrokerError::Recovering),
            Role::Closed => Some(BrokerError::Stopped),
        }
    }

    /// Runs `query` against the state.
    fn answer(&self, query: crate::handle::Query) {
        let cluster = self.cluster.as_ref().map(|c| c.borrow().clone());
        query(Ok(&View {
            state: self.leader.state(),
            role: self.role,
            broker_id: &self.broker_id,
            leader: None,
            cluster: cluster.as_ref(),
            now: self.clock.now(),
            leader_core: Some(&self.leader),
        }));
    }

    fn take_command(&mut self, cmd: Command, building: &mut Building) {
        match cmd {
            Command::Query(query) => self.answer(query),
            Command::Act {
                action,
                caller,
                reply,
            } => {
                if let Some(refusal) = self.refusal() {
                    let _ = reply.send(Err(refusal));
                    return;
                }
                let now = self.clock.now();
                let decided = match action {
                    BrokerAction::BeginTransaction => self
                        .leader
                        .begin_transaction(now, &caller)
                        .map(|(id, e)| (ActionDone::Transaction(id), vec![e])),
                    BrokerAction::CommitTransaction(id) => self
                        .leader
                        .commit_transaction(now, id, &caller)
                        .map(|e| (ActionDone::Transaction(id), vec![e])),
                    BrokerAction::RollbackTransaction(id) => self
                        .leader
                        .rollback_transaction(now, id, &caller)
                        .map(|e| (ActionDone::Transaction(id), vec![e])),
                    BrokerAction::CancelTask(id) => {
                        let before = self.leader.state().task(id).map(|t| t.status);
                        self.leader.cancel_task(now, id, &caller).map(|entries| {
                            let before =
                                before.expect("a task cancelled exists in the applied state");
                            info!(task_id = id.0, user = %caller.name, status = %before, "task cancelled");
                            (ActionDone::Cancelled(id, before), entries)
                        })
                    }
                };
                match decided {
                    Ok((done, entries)) => {
                        self.dirty = true;
                        building.entries.extend(entries);
                        building.obligations.push(Obligation::Act { reply, done });
                    }
                    Err(refused) => {
                        let _ = reply.send(Ok(Err(refused)));
                    }
                }
            }
            Command::Submit {
                tasks,
                caller,
                reply,
            } => {
                if let Some(refusal) = self.refusal() {
                    let _ = reply.send(Err(refusal));
                    return;
                }
                let now = self.clock.now();
                let mut outcomes = Vec::with_capacity(tasks.len());
                let mut entries = Vec::with_capacity(tasks.len());
                // A task too large for one record fails the whole request before anything is
                // decided, so no id or slot is reserved for it and nothing else is affected.
                let max = self.log.max_record_size();
                if let Some(error) = tasks
                    .iter()
                    .enumerate()
                    .find_map(|(i, t)| too_large(i, t, max))
                {
                    let _ = reply.send(Err(error));
                    return;
                }
                // A task naming a pool it may not use refuses the request, also before anything
                // is decided.
                if let Some(error) = tasks.iter().enumerate().find_map(|(i, t)| {
                    let pool = t.codepool.as_deref()?;
                    let refusal = self.leader.code_pool_usable(pool).err()?;
                    Some(BrokerError::CodePool {
                        task: Some(i),
                        refusal,
                    })
                }) {
                    let _ = reply.send(Err(error));
                    return;
                }
                // Needs no connected worker (or no quota) could ever hold refuse the request
                // too, before anything is decided.
                let mut tasks = tasks;
                for (i, t) in tasks.iter_mut().enumerate() {
                    match self
                        .leader
                        .check_needs(&t.user_id, std::mem::take(&mut t.needs))
                    {
                        Ok(needs) => t.needs = needs,
                        Err(refusal) => {
                            let _ = reply.send(Err(BrokerError::Needs { task: i, refusal }));
                            return;
                        }
                    }
                }
                for t in tasks {
                    let (outcome, entry) = self.leader.submit_as(now, t, &caller);
                    outcomes.push(outcome);
                    entries.extend(entry);
                }
                if !entries.is_empty() {
                    self.dirty = true;
                }
                building.entries.extend(entries);
                building
                    .obligations
                    .push(Obligation::Submit { reply, outcomes });
            }
            Command::Admin { change, reply } => {
                if let Some(refusal) = self.refusal() {
                    let _ = reply.send(Err(refusal));
                    return;
                }
                let now = self.clock.now();
                let decided =
                    match change.clone() {
                        AdminChange::SetServiceLevel { user_id, level } => self
                            .leader
                            .set_service_level(now, &user_id, level)
                            .map_err(|LevelRefusal::Invalid { field, reason }| {
                                AdminRefusal::Invalid { field, reason }
                            }),
                        AdminChange::SetTaskPriority { task_id, priority } => self
                            .leader
                            .set_task_priority(now, task_id, priority)
                            .map_err(|e| match e {
                                PriorityRefusal::NoSuchTask(id) => AdminRefusal::NoSuchTask(id),
                                other => AdminRefusal::Conflict(other.to_string()),
                            }),
                        AdminChange::AddWorkerCredential {
                            credential_id,
                            worker_id,
                            verifier,
                            comment,
                        } => self
                            .leader
                            .add_worker_credential(
                                now,
                                &credential_id,
                                &worker_id,
                                (verifier.stored_key, verifier.server_key),
                                comment,
                            )
                            .map_err(credential_refusal),
                        AdminChange::RevokeWorkerCredential { credential_id } => self
                            .leader
                            .revoke_worker_credential(now, &credential_id)
                            .map_err(credential_refusal),
                        AdminChange::SetQuota { tenant, quota } => self
                            .leader
                            .set_quota(now, tenant, quota)
                            .map_err(|e| match e {
                                QuotaRefusal::Tenant(reason) => AdminRefusal::Invalid {
                                    field: "userid",
                                    reason,
                                },
                                QuotaRefusal::Amounts(e) => AdminRefusal::Invalid {
                                    field: "quota",
                                    reason: e.to_string(),
                                },
                            }),
                    };
                match decided {
                    Ok(entry) => {
                        info!(change = ?change, "scheduling change decided");
                        self.dirty = true;
                        building.entries.push(entry);
                        building.obligations.push(Obligation::Admin(reply));
                    }
                    Err(refusal) => {
                        let _ = reply.send(Ok(Err(refusal)));
                    }
                }
            }
            Command::Checkpoint { reply } => {
                if self.checkpointer.is_none() {
                    let _ = reply.send(Err(BrokerError::Snapshot(
                        "this broker has no snapshot store".into(),
                    )));
                    return;
                }
                building.obligations.push(Obligation::Checkpoint(reply));
            }
            Command::CodePool { op, reply } => {
                if let Some(refusal) = self.refusal() {
                    let _ = reply.send(Err(refusal));
                    return;
                }
                let now = self.clock.now();
                let decided = match op {
                    CodePoolOp::Create { id, ttl, data } => {
                        let chunk = codepool_chunk_size(self.log.max_record_size(), id.len());
                        self.leader
                            .create_code_pool(now, &id, ttl, &data, chunk)
                            .inspect(|entries| {
                                info!(pool = %id, bytes = data.len(), chunks = entries.len() - 1, ttl_ms = ttl, "creating code pool");
                            })
                    }
                    CodePoolOp::Delete { id } => {
                        self.leader.delete_code_pool(now, &id).map(|entry| {
                            info!(pool = %id, "deleting code pool");
                            vec![entry]
                        })
                    }
                };
                match decided {
                    Ok(entries) => {
                        building.entries.extend(entries);
                        building.obligations.push(Obligation::Done(reply));
                    }
                    Err(refusal) => {
                        let _ = reply.send(Err(BrokerError::CodePool {
                            task: None,
                            refusal,
                        }));
                    }
                }
            }
        }
    }

    fn take_event(&mut self, ev: WorkerEvent, building: &mut Building) {
        let now = self.clock.now();
        match ev {
            WorkerEvent::Connected {
                conn,
                hello,
                mut reply,
            } => {
                if let Some(refusal) = self.refusal() {
                    reply.reject(Rejection {
                        reason: refusal.to_string(),
                        retryable: true,
                    });
                    return;
                }
                let credential = match &hello.credential {
                    None => None,
                    Some(claim) => match self.check_credential(&hello, claim) {
                        Ok(proof) => {
                            reply.set_broker_proof(proof);
                            Some(claim.credential_id.clone())
                        }
                        Err(reason) => {
                            warn!(worker_id = %hello.worker_id, %conn, peer = %hello.peer, credential_id = %claim.credential_id, %reason, "worker credential refused");
                            reply.reject(Rejection {
                                reason,
                                retryable: false,
                            });
                            return;
                        }
                    },
                };
                let worker_id = hello.worker_id.clone();
                let core = CoreHello {
                    conn: conn.0,
                    worker_id: hello.worker_id,
                    process_id: hello.process_id,
                    location: hello.location,
                    capacity: capacity_of(hello.capacity),
                    running: hello
                        .running
                        .iter()
                        .map(|r| (TaskId(r.task_id), r.attempt))
                        .collect(),
                };
                match self.leader.worker_connected(now, core) {
                    Ok(admission) => {
                        info!(worker_id, %conn, peer = %hello.peer, reconciled = admission.entries.len() - 1, "worker connecting");
                        self.dirty = true;
                        building.entries.extend(admission.entries);
                        building.obligations.push(Obligation::Welcome {
                            admission: reply,
                            conn,
                            worker_id,
                            replaced: admission.replaced,
                            credential,
                        });
                    }
                    Err(rejection) => {
                        warn!(worker_id, %conn, reason = %rejection, "worker refused");
                        reply.reject(Rejection {
                            reason: rejection.to_string(),
                            retryable: matches!(
                                rejection,
                                ConnectRejection::AlreadyConnected { .. }
                            ),
                        });
                    }
                }
            }
            WorkerEvent::Finished {
                conn,
                worker_id,
                seq,
                reports,
            } => {
                self.leader.worker_seen(now, &worker_id, conn.0, None);
                let max = self.log.max_record_size();
                let reports: Vec<CoreReport> = reports
                    .into_iter()
                    .filter_map(|r| {
                        let outcome = match r.outcome() {
                            Outcome::Finished => CoreOutcome::Finished,
                            Outcome::Error => CoreOutcome::Error,
                            Outcome::RetryLater => CoreOutcome::RetryLater(
                                Millis::try_from(r.retry_after_ms)
                                    .unwrap_or(Millis::MAX)
                                    .min(MAX_RETRY_AFTER_MS),
                            ),
                            Outcome::Unspecified => {
                                warn!(
                                    worker_id,
                                    task_id = r.task_id,
                                    "finish report without outcome ignored"
                                );
                                return None;
                            }
                        };
                        Some(fit_result(
                            CoreReport {
                                task_id: TaskId(r.task_id),
                                attempt: r.attempt,
                                outcome,
                                result: r.result,
                            },
                            &worker_id,
                            max,
                        ))
                    })
                    .collect();
                if !self.leader.may_report(&worker_id, conn.0, &reports) {
                    // A replaced connection, or a batch naming another worker's attempt: refused
                    // and not acknowledged (an honest worker re-sends on its current connection).
                    warn!(worker_id, %conn, seq, reports = reports.len(), "finish reports from a connection that does not hold the assignments refused");
                    return;
                }
                let entries = self
                    .leader
                    .finish_reports(now, &worker_id, conn.0, &reports);
                // Also without entries: the end of a cancelled attempt frees capacity.
                self.dirty = true;
                building.entries.extend(entries);
                building.obligations.push(Obligation::Ack { conn, seq });
            }
            WorkerEvent::Ping {
                conn,
                worker_id,
                capacity,
                running: _,
            } => {
                self.leader
                    .worker_seen(now, &worker_id, conn.0, Some(capacity_of(capacity)));
                self.dirty = true;
            }
            WorkerEvent::Disconnected {
                conn,
                worker_id,
                reason,
            } => {
                if self.sessions.remove(&conn).is_some() {
                    info!(worker_id, %conn, %reason, "worker disconnected");
                }
                let entries = self.leader.worker_disconnected(now, &worker_id, conn.0);
                building.entries.extend(entries);
            }
            WorkerEvent::CodePoolRequest {
                conn,
                worker_id,
                request,
            } => {
                let Some(s) = self.sessions.get(&conn) else {
                    return; // not admitted (any more): nothing to answer on
                };
                let max = (request.max_len as usize).min(s.session.max_code_pool_part());
                let answer = code_pool_part(self.leader.state(), request, max);
                if !answer.error.is_empty() {
                    warn!(worker_id, %conn, pool = %answer.pool_id, error = %answer.error, "code pool not served");
                }
                if let Err(e) = s.session.code_pool_data(answer) {
                    debug!(worker_id, %conn, error = %e, "code pool part not sent; the worker will time out");
                }
            }
        }
    }

    /// Applies a durable round and fulfils its obligations.
    fn complete(&mut self, round: Round, appended: Appended) -> Result<(), DispatcherError> {
        let Round {
            entries,
            obligations,
            sealed,
            ..
        } = round;
        let mut revoked: Vec<String> = Vec::new();
        if let Some(sealed) = sealed {
            let micros = u64::try_from(sealed.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.metrics.append_latency.observe(micros);
            self.metrics.append_batch.observe(entries.len() as u64);
        }
        if !entries.is_empty() {
            debug_assert_eq!(
                appended.last.0 - appended.first.0 + 1,
                entries.len() as u64,
                "one lsn per entry"
            );
            for (i, entry) in entries.into_iter().enumerate() {
                let freed = matches!(
                    entry,
                    LogEntry::TaskStatusChange { .. }
                        | LogEntry::AddTask(_)
                        | LogEntry::WorkerDied { .. }
                        | LogEntry::CommitTransaction { .. }
                        | LogEntry::DeferTask { .. }
                        | LogEntry::SetServiceLevel { .. }
                        | LogEntry::SetTaskPriority { .. }
                );
                if let LogEntry::RollbackTransaction {
                    transaction_id,
                    timestamp,
                } = &entry
                {
                    info!(
                        transaction_id = transaction_id.0,
                        at = timestamp,
                        "transaction rolled back"
                    );
                }
                let lsn = appended.first.0 + i as u64;
                if !matches!(entry, LogEntry::Noop { .. }) {
                    self.last_change = lsn;
                }
                if let LogEntry::RevokeWorkerCredential { credential_id, .. } = &entry {
                    revoked.push(credential_id.clone());
                }
                self.observe(&entry);
                if let Err(e) = self.leader.apply(lsn, entry) {
                    error!(error = %e, "durable entry does not apply; stopping");
                    self.role = Role::Closed;
                    return Err(e.into());
                }
                self.dirty |= freed;
            }
        }
        if !revoked.is_empty() {
            self.close_revoked(&revoked);
        }
        for obligation in obligations {
            match obligation {
                Obligation::Submit { reply, outcomes } => {
                    let _ = reply.send(Ok(outcomes));
                }
                Obligation::Done(reply) => {
                    let _ = reply.send(Ok(()));
                }
                Obligation::Act { reply, done } => {
                    let _ = reply.send(Ok(Ok(done)));
                }
                Obligation::Admin(reply) => {
                    let _ = reply.send(Ok(Ok(())));
                }
                Obligation::Welcome {
                    admission,
                    conn,
                    worker_id,
                    replaced,
                    credential,
                } => {
                    // Revoked while the connection was being admitted.
                    if let Some(id) = &credential
                        && let Err(problem) = self.leader.state().credential_for(id, &worker_id)
                    {
                        warn!(worker_id, %conn, %problem, "worker credential refused");
                        admission.reject(Rejection {
                            reason: problem.to_string(),
                            retryable: false,
                        });
                        continue;
                    }
                    if let Some(old) = replaced
                        && let Some(s) = self.sessions.remove(&ConnId(old))
                    {
                        s.session.close(CloseReason::Replaced);
                    }
                    if self.leader.session_opened(&worker_id, conn.0) {
                        let session = admission.accept();
                        info!(worker_id, %conn, "worker connected");
                        self.sessions.insert(
                            conn,
                            Session {
                                session,
                                backlog: Vec::new(),
                                credential,
                            },
                        );
                    } else {
                        admission.reject(Rejection {
                            reason: "connection superseded while it was being admitted".into(),
                            retryable: true,
                        });
                    }
                }
                Obligation::Ack { conn, seq } => {
                    // The reports are durable, and their tasks' threads are taken again by the
                    // assignments of the next round: the acknowledgement goes with that round,
                    // so that a worker of few threads gets both in one frame write, not two.
                    self.deferred_acks.push((conn, seq));
                }
                Obligation::DeferredAck { conn, seq } => self.ack_finished(conn, seq),
                Obligation::Checkpoint(reply) => {
                    let result = match &mut self.checkpointer {
                        Some(cp) => cp.start(self.leader.state(), Some(self.log.clone())),
                        None => Err(BrokerError::Snapshot(
                            "this broker has no snapshot store".into(),
                        )),
                    };
                    match result {
                        Ok(pending) => {
                            tokio::spawn(async move {
                                let _ = reply.send(pending.await);
                            });
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
            }
        }
        self.push_assignments();
        self.send_cancels();
        Ok(())
    }

    /// Acknowledges a durable batch of finish reports on the session of `conn`, if it is open.
    fn ack_finished(&self, conn: ConnId, seq: u64) {
        if let Some(s) = self.sessions.get(&conn)
            && let Err(e) = s.session.ack_finished(seq)
        {
            debug!(%conn, seq, error = %e, "finish ack not sent; the worker will resend");
        }
    }

    /// Sends the applied cancellations of running attempts to the workers' open sessions.
    fn send_cancels(&mut self) {
        for wc in self.leader.take_cancels() {
            let tasks: Vec<(u64, u32)> = wc.tasks.iter().map(|(t, a)| (t.0, *a)).collect();
            match self.sessions.get(&ConnId(wc.conn)) {
                Some(s) => {
                    if let Err(e) = s.session.cancel(tasks) {
                        // The attempt keeps its capacity until the worker reconnects and no
                        // longer lists it, or lists it and gets the cancellation again.
                        warn!(worker_id = %wc.worker_id, error = %e, "cancellation not sent");
                    }
                }
                None => {
                    warn!(worker_id = %wc.worker_id, conn = wc.conn, "no session for an open connection")
                }
            }
        }
    }

    /// Pushes the applied assignments the leader hands out to the workers' open sessions.
    fn push_assignments(&mut self) {
        for wa in self.leader.take_pushes() {
            let batch: Vec<Outgoing> = wa
                .tasks
                .iter()
                .filter_map(|(id, attempt)| {
                    let task = self.leader.state().task(*id)?;
                    let assignment = Assignment {
                        task_id: id.0,
                        attempt: *attempt,
                        task_type: task.task_type.to_string(),
                        user_id: task.user_id.to_string(),
                        data: task.data.to_string(),
                        codepool: task.codepool().map(str::to_string),
                        mode: task.mode().map(str::to_string),
                        ..Assignment::default()
                    };
                    let shape = task
                        .extra
                        .as_ref()
                        .and_then(|e| shape_of(&mut self.shapes, e));
                    Some(Outgoing { assignment, shape })
                })
                .collect();
            self.push(&wa, batch);
        }
    }

    /// Queues `batch` on the session of `wa.conn`, behind its backlog.
    fn push(&mut self, wa: &WorkerAssignments, batch: Vec<Outgoing>) {
        if batch.is_empty() {
            return;
        }
        let Some(session) = self.sessions.get_mut(&ConnId(wa.conn)) else {
            // The leader hands out only open sessions, and a session leaves this map only on
            // its Disconnected event, which the leader sees too. A closed connection's tasks are
            // failed by the next connection's reconciliation or by the worker's death.
            warn!(worker_id = %wa.worker_id, conn = wa.conn, "no session for an open connection");
            return;
        };
        if !session.backlog.is_empty() {
            session.backlog.extend(batch);
            return;
        }
        if let Err(e) = session.session.assign(batch) {
            match e.error {
                SessionError::QueueFull { .. } => {
                    session.backlog = e.assignments;
                    self.backlogged.insert(ConnId(wa.conn));
                }
                SessionError::Closed { .. } => {}
                SessionError::AssignmentTooLarge { task_id, .. } => {
                    // Cannot happen: records are smaller than frames. Keep the rest moving.
                    error!(
                        task_id,
                        "assignment larger than a frame; the worker will report it lost on reconnect"
                    );
                    session.session.close(CloseReason::Other(format!(
                        "assignment of task {task_id} does not fit a frame"
                    )));
                }
            }
        }
    }

    fn retry_backlogs(&mut self) {
        if self.backlogged.is_empty() {
            return;
        }
        let sessions = &mut self.sessions;
        self.backlogged.retain(|conn| {
            let Some(s) = sessions.get_mut(conn) else {
                return false;
            };
            if s.backlog.is_empty() {
                return false;
            }
            let batch = std::mem::take(&mut s.backlog);
            if let Err(e) = s.session.assign(batch)
                && matches!(e.error, SessionError::QueueFull { .. })
            {
                s.backlog = e.assignments;
            }
            !s.backlog.is_empty()
        });
    }

    /// Stops acting as leader at once: answers everyone in flight, closes every worker session.
    fn step_down(&mut self, why: &str, rounds: VecDeque<Round>, building: Building) {
        warn!(
            reason = why,
            rounds_in_flight = rounds.len(),
            "no longer the leader; stepping down"
        );
        self.role = Role::Follower;
        let unknown = BrokerError::OutcomeUnknown(format!("this broker stopped leading: {why}"));
        for o in rounds.into_iter().flat_map(|r| r.obligations) {
            o.fail(&unknown);
        }
        let not_leader = BrokerError::NotLeader(None);
        for o in building.obligations {
            o.fail(&not_leader);
        }
        for (_, s) in self.sessions.drain() {
            s.session
                .close(CloseReason::Other("broker no longer leads".into()));
        }
    }

    /// The leader and the checkpointer, once [`Dispatcher::run`] returned.
    pub(crate) fn into_parts(self) -> (Leader, Option<Checkpointer>) {
        (self.leader, self.checkpointer)
    }

    /// The log failed: answer everyone in flight with an error, close every worker session.
    ///
    /// Callers learn whether their request may have been written: a round the log refused
    /// without writing ([`LogError::Closed`], and the round not yet handed to the log) gets
    /// [`BrokerError::Unavailable`] (nothing happened, retry is safe); a round the log had taken
    /// gets [`BrokerError::OutcomeUnknown`]: its records may be durable and replayed at restart.
    async fn fail(
        &mut self,
        e: LogError,
        failed: Round,
        rest: VecDeque<Round>,
        building: Building,
    ) -> DispatcherError {
        error!(error = %e, "commit log append failed; broker stops writing");
        self.role = Role::Closed;
        let unknown = BrokerError::OutcomeUnknown(format!("the commit log failed: {e}"));
        let unwritten = BrokerError::Unavailable(format!("the commit log failed: {e}"));
        let verdict = |e: &LogError| match e {
            LogError::Closed => &unwritten,
            _ => &unknown,
        };
        for o in failed.obligations {
            o.fail(verdict(&e));
        }
        for mut round in rest {
            // A failed log resolves every later append at once; the bound only guards a log
            // that breaks that rule, whose rounds then count as possibly written.
            let later = tokio::time::timeout(FAILED_APPEND_WAIT, round.durable.as_mut()).await;
            let error = match &later {
                Ok(Err(later)) => verdict(later),
                Ok(Ok(_)) | Err(_) => &unknown,
            };
            for o in round.obligations {
                o.fail(error);
            }
        }
        for o in building.obligations {
            o.fail(&unwritten);
        }
        for (_, s) in self.sessions.drain() {
            s.session
                .close(CloseReason::Other("broker log failed".into()));
        }
        DispatcherError::Log(e)
    }
}

/// Longest delay a "retry later" report may ask for (a day): a longer one is shortened, so a
/// task is never parked beyond any deadline an operator would expect.
const MAX_RETRY_AFTER_MS: Millis = 86_400_000;

/// Longest the dispatcher waits, after the log failed, for each later append to report whether
/// it was written.
const FAILED_APPEND_WAIT: Duration = Duration::from_secs(5);

/// The error for a submission whose `AddTask` record could exceed `max` bytes, naming its largest
/// field. Every field counts, so a task that passes always fits one record.
/// The answer to a worker's request for a part of a pool's archive, from the applied state
/// (only complete pools are served: their bytes are durable and checked).
fn code_pool_part(
    state: &majordodo_core::BrokerState,
    request: majordodo_proto::worker::CodePoolRequest,
    max: usize,
) -> majordodo_proto::worker::CodePoolData {
    let mut answer = majordodo_proto::worker::CodePoolData {
        request_id: request.request_id,
        offset: request.offset,
        ..Default::default()
    };
    match state.codepool(&request.pool_id).filter(|p| p.is_complete()) {
        Some(pool) => {
            answer.size = pool.size;
            answer.sha256 = pool.sha256.to_vec();
            // A request of zero bytes asks only for the size and the checksum.
            answer.data = pool.read_at(request.offset, max);
        }
        None => answer.error = format!("code pool {} does not exist", request.pool_id),
    }
    answer.pool_id = request.pool_id;
    answer
}

/// Most bytes of a code-pool chunk: small enough that a chunk record stays far below the usual
/// record limits and one chunk is quick to write, replicate and serve; large enough that a pool
/// of a few megabytes is a handful of records.
pub const MAX_CODEPOOL_CHUNK_BYTES: usize = 1024 * 1024;

/// The chunk size for pool `id` under the log's record limit `max_record`: every chunk record
/// fits it (see [`record_len_bound`]).
fn codepool_chunk_size(max_record: usize, id_len: usize) -> usize {
    let room = max_record.saturating_sub(record_len_bound([id_len, 0]));
    room.clamp(1, MAX_CODEPOOL_CHUNK_BYTES)
}

fn too_large(index: usize, t: &SubmitRequest, max: usize) -> Option<BrokerError> {
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    let fields = [
        ("data", t.data.len()),
        ("tasktype", t.task_type.len()),
        ("userid", t.user_id.len()),
        ("slot", opt(&t.slot)),
        ("codePoolId", opt(&t.codepool)),
        ("mode", opt(&t.mode)),
        (
            "needs",
            t.needs
                .iter()
                .map(|(d, _)| majordodo_proto::record::amount_field_len(d.len()))
                .sum(),
        ),
    ];
    let bound = record_len_bound(fields.iter().map(|(_, len)| *len));
    if bound <= max {
        return None;
    }
    let (field, len) = fields
        .iter()
        .copied()
        .max_by_key(|(_, len)| *len)
        .expect("fields is not empty");
    Some(BrokerError::TooLarge {
        task: index,
        field,
        detail: format!(
            "is {len} bytes: the task would need a log record of up to {bound} bytes, over the limit of {max} bytes"
        ),
    })
}

/// Turns a report whose result cannot fit one log record into a failed attempt saying so, so a
/// too-large result never reaches the log (which would stop the broker, and again after every
/// restart as the worker re-sends the report).
fn fit_result(report: CoreReport, worker_id: &str, max: usize) -> CoreReport {
    let fixed = record_len_bound([worker_id.len(), 0]);
    let limit = max.saturating_sub(fixed);
    if report.result.len() <= limit {
        return report;
    }
    warn!(
        task_id = report.task_id.0,
        worker_id,
        bytes = report.result.len(),
        limit,
        "task result too large for the log; the attempt fails"
    );
    CoreReport {
        outcome: CoreOutcome::Error,
        result: format!(
            "result too large ({} bytes, limit {limit})",
            report.result.len()
        ),
        ..report
    }
}

/// A reply channel nobody listens to, for periodic checkpoints.
fn noop_reply() -> oneshot::Sender<Result<u64, BrokerError>> {
    oneshot::channel().0
}

/// The core's view of a declared capacity.
pub(crate) fn capacity_of(c: Capacity) -> WorkerCapacity {
    WorkerCapacity {
        max_threads: c.max_threads,
        max_threads_by_task_type: c.max_threads_by_task_type,
        groups: c.groups,
        excluded_groups: c.excluded_groups,
        max_thread_per_user_per_task_type_percent: c.max_thread_per_user_per_task_type_percent,
        resource_limits: c.resource_limits,
        amounts: c.amounts,
        enforcement: c.enforcement,
    }
}
