//! The leader's decisions: turns requests and events into log entries.
//!
//! The leader validates against the applied state **plus the reservations of entries still in
//! flight** (task ids handed out, slots taken, assignments made, status changes decided), so it can
//! prepare the next batch while the previous one is being made durable (pipelined group commit,
//! see ARCHITECTURE.md). Entries change the state only through [`Leader::apply`], called in log
//! order once they are durable; that also releases their reservations.
//!
//! When the leader decides that a task leaves the waiting (or delayed) queues, it takes it out of
//! the queues at once, so it is not chosen twice; the `apply` that follows finds it already gone.
//!
//! Nothing here reads a clock: every call takes `now`.

use std::collections::{BTreeMap, BTreeSet};

use crate::{HashMap, HashSet};
use std::sync::Arc;

mod codepools;

pub use codepools::CodePoolRefusal;

use crate::entry::{LogEntry, NewTask};
use crate::model::{
    ANY_GROUP, GroupId, Millis, ServiceLevel, TaskId, TaskStatus, TransactionId, WorkerStatus,
};
use crate::quota::TenantBook;
use crate::scheduler::{Candidate, GlobalResources, Resources, RunKey, RunningSet, WorkerCapacity};
use crate::state::{ApplyError, BrokerState};

/// Most named resources in one service level (a level is copied into every assignment).
pub const MAX_RESOURCES_PER_LEVEL: usize = 32;

/// Longest resource name, in bytes.
pub const MAX_RESOURCE_NAME: usize = 200;

/// Result text of a task whose worker died.
pub fn worker_died_result(worker_id: &str) -> String {
    format!("worker {worker_id} died")
}

/// Result text of a task whose deadline passed before it could run.
pub const DEADLINE_EXPIRED: &str = "deadline_expired";

/// Result text of a task cancelled through `cancelTask`.
pub const CANCELLED: &str = "cancelled";

/// Who asks for an action that only an owner (or an admin) may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The user's name (the owner recorded for what it creates).
    pub name: String,
    /// Admins may act on what anybody owns.
    pub admin: bool,
}

impl Caller {
    /// An admin named `name`.
    pub fn admin(name: impl Into<String>) -> Caller {
        Caller {
            name: name.into(),
            admin: true,
        }
    }

    /// A user (not an admin) named `name`.
    pub fn user(name: impl Into<String>) -> Caller {
        Caller {
            name: name.into(),
            admin: false,
        }
    }

    /// Whether this caller may act on something owned by `owner` (`None`: written by a version
    /// that recorded no owner, which only admins may touch).
    pub fn may_act_on(&self, owner: Option<&str>) -> bool {
        self.admin || owner == Some(self.name.as_str())
    }
}

/// Why the leader refused an action (transactions, cancel). Nothing was decided or logged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// No transaction with this id was ever begun. Check the id.
    #[error("transaction {0} was never begun")]
    NoSuchTransaction(TransactionId),
    /// The transaction is over: committed, rolled back, or rolled back by its time to live (or
    /// that is being written now). Nothing can be done with it any more.
    #[error("transaction {0} is no longer open: it was committed or rolled back")]
    TransactionEnded(TransactionId),
    /// Somebody else's transaction: only its owner or an admin may use it.
    #[error("transaction {id} belongs to {}; user {caller} may not use it", owner.as_deref().unwrap_or("an admin"))]
    NotTransactionOwner {
        /// The transaction.
        id: TransactionId,
        /// Its owner.
        owner: Option<String>,
        /// Who asked.
        caller: String,
    },
    /// Too many transactions are open; retry once some are committed, rolled back or expired.
    #[error(
        "{0} transactions are open, the most this broker keeps; commit or roll back some first"
    )]
    TooManyTransactions(usize),
    /// No such task (or one the caller may not see).
    #[error("task {0} does not exist")]
    NoSuchTask(TaskId),
    /// The task has ended; cancelling it changes nothing.
    #[error("task {id} has already ended ({status}); nothing to cancel")]
    TaskEnded {
        /// The task.
        id: TaskId,
        /// Its final status.
        status: TaskStatus,
    },
    /// A change of the task (its creation, a finish report, a retry) is being written right
    /// now; ask again in a moment.
    #[error("task {0} is changing status right now; ask again")]
    TaskChanging(TaskId),
}

/// Tunables of the leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderConfig {
    /// A worker silent (no message, or disconnected) for this long is declared dead.
    pub max_worker_idle: Millis,
    /// Ended tasks are purged this long after their creation; 0 keeps them forever.
    pub finished_task_retention: Millis,
    /// Most assignments decided in one round, so one round stays short.
    pub max_assignments_per_round: usize,
    /// Most timer-driven changes (resume, expiry, purge, forgotten idempotency keys) decided
    /// in one round.
    pub max_timer_changes_per_round: usize,
    /// Idempotency keys are kept at least this long after their task's creation (then
    /// forgotten through the log); 0 keeps them forever.
    pub idempotency_window: Millis,
    /// An open transaction is rolled back this long after it was begun (the original's
    /// `transactions.ttl`); 0 keeps open transactions until they are committed or rolled back.
    pub transactions_ttl: Millis,
    /// Most transactions open at once: `beginTransaction` is refused beyond it.
    pub max_open_transactions: usize,
    /// Most times one task may answer "retry later" without using an attempt; beyond it, such
    /// an answer counts as a failed attempt.
    pub max_deferrals: u32,
    /// Named resource → most tasks using it that may run at once in the whole cluster.
    pub global_resource_limits: BTreeMap<String, u32>,
    /// The groups a service level may name (besides those the default mapping gives).
    pub groups: BTreeSet<GroupId>,
}

impl Default for LeaderConfig {
    fn default() -> Self {
        LeaderConfig {
            max_worker_idle: 30_000,
            finished_task_retention: 3_600_000,
            // 10 000 keeps a round near a millisecond of work while filling many workers.
            max_assignments_per_round: 10_000,
            max_timer_changes_per_round: 10_000,
            // An hour covers a client's retries across a leader change many times over, and
            // bounds the keys kept to an hour of submissions.
            idempotency_window: 3_600_000,
            // The original's default: five minutes is far more than a client needs between
            // its begin and its commit, and bounds what an abandoned transaction holds.
            transactions_ttl: 300_000,
            // Each open transaction costs a few hundred bytes plus its prepared tasks.
            max_open_transactions: 10_000,
            max_deferrals: 10,
            global_resource_limits: BTreeMap::new(),
            // Group 1 is where users whose id is not a number go by default.
            groups: BTreeSet::from([1]),
        }
    }
}

/// A task submission, already checked for well-formedness by the API layer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubmitRequest {
    /// Task type.
    pub task_type: String,
    /// Owner.
    pub user_id: String,
    /// Payload.
    pub data: String,
    /// 0 = unlimited, 1 = at most once, N = at most N.
    pub max_attempts: u32,
    /// Attempts already made (usually 0).
    pub attempts: u32,
    /// 0 = now.
    pub requested_start_time: Millis,
    /// 0 = none.
    pub deadline: Millis,
    /// Mutual-exclusion key.
    pub slot: Option<String>,
    /// Code pool.
    pub codepool: Option<String>,
    /// Mode.
    pub mode: Option<String>,
    /// Client-chosen key: while the key is kept, a submission of the same user with the same
    /// key is answered with the task the first one created, and creates nothing.
    pub idempotency_key: Option<String>,
    /// Prepare the task in this open transaction: it stays invisible until the transaction is
    /// committed (or vanishes with its rollback).
    pub transaction: Option<TransactionId>,
    /// Order inside the owner's queue: higher first; 0 = age order.
    pub priority: i32,
    /// What each attempt needs while it runs (`cpu` millicores, `memory` MiB, named amounts);
    /// see [`Leader::check_needs`].
    pub needs: Vec<(String, u64)>,
}

/// Why a task's needs are refused at submission.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NeedsRefusal {
    /// The needs are malformed.
    #[error("{0}")]
    Invalid(crate::quota::AmountError),
    /// No connected worker could ever run it: none has that much of every dimension.
    #[error(
        "needs {amount} of {dimension}, more than any connected worker has (the most is {most}); \
         it would wait forever"
    )]
    NoWorker {
        /// The first dimension no worker has enough of (with the others fitting).
        dimension: String,
        /// The task's need in it.
        amount: u64,
        /// The most any connected worker declares in it.
        most: u64,
    },
    /// It needs more than its tenant's whole quota.
    #[error("needs {amount} of {dimension}, more than the whole quota of {tenant} ({quota})")]
    OverQuota {
        /// The dimension.
        dimension: String,
        /// The task's need.
        amount: u64,
        /// Whose quota.
        tenant: crate::quota::QuotaTenant,
        /// The quota in that dimension.
        quota: u64,
    },
}

impl NeedsRefusal {
    /// The dimension at fault (empty when the needs as a whole are).
    pub fn dimension(&self) -> &str {
        match self {
            NeedsRefusal::Invalid(e) => &e.dimension,
            NeedsRefusal::NoWorker { dimension, .. }
            | NeedsRefusal::OverQuota { dimension, .. } => dimension,
        }
    }
}

/// Why a quota change was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuotaRefusal {
    /// The tenant is not valid (an empty user, group 0).
    #[error("{0}")]
    Tenant(String),
    /// The amounts are not valid.
    #[error("{0}")]
    Amounts(crate::quota::AmountError),
}

/// Why issuing or revoking a worker credential was refused; nothing was decided.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialRefusal {
    /// A field is not valid: `field` names it (`credentialId`, `workerId`, `comment`).
    #[error("{field}: {reason}")]
    Invalid {
        /// The request field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// No credential has this id.
    #[error("unknown credential {0}")]
    Unknown(String),
    /// The credential is already revoked, or an issue or revocation of it is in flight.
    #[error("{0}")]
    Conflict(String),
}

/// Why a service-level change was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LevelRefusal {
    /// A field is invalid: `field` names it.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Why a priority change was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PriorityRefusal {
    /// No such task.
    #[error("task {0} does not exist")]
    NoSuchTask(TaskId),
    /// The task is not waiting or delayed (it runs or ended), or is being assigned.
    #[error("task {task} is {status}: only a waiting or delayed task changes priority")]
    NotWaiting {
        /// The task.
        task: TaskId,
        /// Its status (`running` also while its assignment is in flight).
        status: TaskStatus,
    },
}

/// What the leader decided about one submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// Accepted: the entry must be logged; the task exists once it is durable. Also the answer
    /// to a submission whose idempotency key is known (applied or in flight): the id is then
    /// the existing task's and there is no entry; answer it once the entries decided before it
    /// are durable.
    Accepted(TaskId),
    /// Not created, for a reason that is not an error of the request (as in the original Majordodo, a busy slot
    /// answers task id 0 with this text).
    NotCreated(String),
}

/// How a worker ended an attempt.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The executor returned a result.
    Finished,
    /// The executor failed; the task is retried if its attempts and deadline allow.
    Error,
    /// The executor asks to run again after this many milliseconds, without using an attempt
    /// (at most `max_deferrals` times per task; beyond, it counts as [`Outcome::Error`]).
    RetryLater(Millis),
}

/// A worker's report about one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishReport {
    /// The task.
    pub task_id: TaskId,
    /// The attempt it ran.
    pub attempt: u32,
    /// How it ended.
    pub outcome: Outcome,
    /// The result or error text.
    pub result: String,
}

/// Identifies one connection of a worker, so that events of a replaced connection are ignored.
pub type ConnId = u64;

/// A worker asking to join.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerHello {
    /// The connection.
    pub conn: ConnId,
    /// Stable worker id.
    pub worker_id: String,
    /// Its process.
    pub process_id: String,
    /// Where it runs.
    pub location: String,
    /// What it can run.
    pub capacity: WorkerCapacity,
    /// Tasks it still runs or has unacknowledged reports for: (task, attempt).
    pub running: Vec<(TaskId, u32)>,
}

/// Why a worker was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectRejection {
    /// Another process holds a live connection under the same worker id. Retryable once that
    /// connection is gone (it is dropped after the idle time if it is a zombie).
    #[error("worker {worker_id} is already connected from process {process_id}")]
    AlreadyConnected {
        /// The worker id.
        worker_id: String,
        /// The process holding it.
        process_id: String,
    },
    /// The worker's declaration is unusable.
    #[error("invalid worker declaration: {0}")]
    Invalid(String),
}

/// What the leader decided about a connecting worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// Entries to log before welcoming the worker.
    pub entries: Vec<LogEntry>,
    /// A previous connection of the same process, now replaced: close it.
    pub replaced: Option<ConnId>,
}

/// Applied assignments to push to one worker connection now (see [`Leader::take_pushes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerAssignments {
    /// The worker.
    pub worker_id: Arc<str>,
    /// The connection to push them to: the worker's current one, whose session is open.
    pub conn: ConnId,
    /// (task, attempt) in assignment order.
    pub tasks: Vec<(TaskId, u32)>,
}

/// Volatile knowledge about a worker, not replicated (workers re-declare it when they connect).
#[derive(Clone, Debug)]
struct LiveWorker {
    conn: Option<ConnId>,
    /// The session of `conn` is open: its admission is durable and the worker was welcomed, so
    /// pushes reach it. Until then applied assignments wait in `outbox`.
    open: bool,
    process_id: String,
    capacity: WorkerCapacity,
    /// Last message (or connection loss, or promotion) time.
    last_seen: Millis,
    /// Declared dead (the entries may still be in flight).
    dead: bool,
    /// Applied assignments not yet handed out for pushing, in log order. Every assignment is
    /// pushed from here, once, to the connection that is current and open when it is taken:
    /// an assignment applied while the worker reconnects waits here for the new session
    /// instead of being sent to a connection that cannot take it.
    outbox: Vec<(TaskId, u32)>,
    /// Cancelled attempts the worker may still be stopping: they keep their share of its
    /// capacity until the worker reports them ended (any outcome; the report itself changes
    /// nothing) or a new connection of the worker no longer lists them.
    cancelling: RunningSet,
    /// The attempt of each task in `cancelling`.
    cancel_attempts: BTreeMap<TaskId, u32>,
    /// Applied cancellations not yet handed out for sending (see [`Leader::take_cancels`]).
    cancel_outbox: Vec<(TaskId, u32)>,
}

impl LiveWorker {
    /// Disconnected and not declared dead: declared dead once idle for `max_worker_idle`.
    fn awaits_death(&self) -> bool {
        !self.dead && self.conn.is_none()
    }

    fn new(
        conn: Option<ConnId>,
        process_id: String,
        capacity: WorkerCapacity,
        now: Millis,
    ) -> Self {
        LiveWorker {
            conn,
            open: false,
            process_id,
            capacity,
            last_seen: now,
            dead: false,
            outbox: Vec::new(),
            cancelling: RunningSet::default(),
            cancel_attempts: BTreeMap::new(),
            cancel_outbox: Vec::new(),
        }
    }

    /// Forgets the cancelled attempt of `task`, if it is `attempt`; true when it was there.
    fn cancel_done(&mut self, task: TaskId, attempt: u32) -> bool {
        if self.cancel_attempts.get(&task) == Some(&attempt) {
            self.cancel_attempts.remove(&task);
            self.cancelling.remove(task);
            self.cancel_outbox.retain(|(t, _)| *t != task);
            true
        } else {
            false
        }
    }
}

/// Cancellations of tasks to send to one worker connection now (see [`Leader::take_cancels`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerCancels {
    /// The worker.
    pub worker_id: Arc<str>,
    /// Its current connection, whose session is open.
    pub conn: ConnId,
    /// (task, attempt) to stop.
    pub tasks: Vec<(TaskId, u32)>,
}

/// A submission in flight: what the leader needs to know about its task before it is applied.
#[derive(Clone, Debug)]
struct PendingNew {
    task_type: Arc<str>,
    user: Arc<str>,
    resources: Resources,
    needs: Option<crate::quota::Needs>,
    attempts: u32,
    max_attempts: u32,
    deadline: Millis,
    /// Will wait in the queues once applied (was not placed directly on a worker).
    queued: bool,
}

/// The leader: the state plus everything decided but not yet durable.
#[derive(Debug)]
pub struct Leader {
    state: BrokerState,
    config: LeaderConfig,
    next_task_id: u64,
    /// Slots of submissions in flight.
    pending_slots: HashSet<Box<str>>,
    /// Submissions in flight (their task is not in the state yet).
    pending_new: HashMap<TaskId, PendingNew>,
    /// Submissions decided since the last assignment, in order, not yet placed or queued.
    fresh: Vec<TaskId>,
    /// Submissions placed directly on a worker whose creation is not applied yet: when it is,
    /// the task leaves the queues at once (its assignment is decided).
    placed_in_flight: HashSet<TaskId>,
    /// Submissions in flight that will wait in the queues once applied. While there are any,
    /// fresh submissions are not placed directly (they would overtake older tasks).
    queued_in_flight: usize,
    /// Assignments in flight, per worker.
    pending_assign: HashMap<Arc<str>, RunningSet>,
    /// Tenants' use of the assignments in flight, and the group each was charged to.
    pending_tenants: TenantBook,
    pending_groups: HashMap<TaskId, GroupId>,
    /// Assignments in flight per named resource, over every worker.
    pending_resources: HashMap<Arc<str>, u32>,
    /// Tasks with a status change in flight (finish, failure, expiry, resume); they are not
    /// touched again until it is applied.
    pending_changes: HashSet<TaskId>,
    /// Purges in flight.
    pending_purge: HashSet<TaskId>,
    /// Idempotency keys of submissions in flight: owner → key → task.
    pending_keys: HashMap<Arc<str>, HashMap<Box<str>, TaskId>>,
    /// `created_before` of the newest `ForgetIdempotencyKeys` in flight: keys created before
    /// it are being forgotten already.
    forget_in_flight: Option<Millis>,
    /// Worker credentials with an issue or a revocation in flight: not touched again until it
    /// is applied.
    pending_credentials: HashSet<String>,
    live: BTreeMap<Arc<str>, LiveWorker>,
    /// How many workers of `live` are disconnected and not declared dead: each has a death
    /// timer. Counted so that the timers cost nothing to look for while every worker is
    /// connected (checked against `live` in debug builds).
    awaiting_death: usize,
    /// Workers whose outbox may hold assignments to push (see [`Leader::take_pushes`]).
    outbox_ready: BTreeSet<Arc<str>>,
    /// Workers the state still shows connected from before this leader took over: none can
    /// be connected to it yet, so the first tick logs their disconnection (unless they
    /// reconnected first). Taken over at this time.
    stale_connected: (Millis, Vec<Arc<str>>),
    /// Rotates the first worker served by each assignment round, so no worker is favoured.
    rotation: usize,
    /// Code-pool creations, deletions and uses in flight.
    pools: codepools::PoolReservations,
    /// Next transaction id to hand out.
    next_transaction_id: u64,
    /// Transactions whose commit or rollback is in flight: nothing more may join or end them.
    tx_ending: HashSet<TransactionId>,
    /// Open transactions by creation time, for their time to live.
    tx_created: BTreeSet<(Millis, TransactionId)>,
    /// Cancellations of running (or being assigned) tasks in flight: the worker, the attempt
    /// and the task type, to tell the worker once the cancellation is durable.
    cancels_in_flight: HashMap<TaskId, (Arc<str>, u32, RunKey)>,
    /// Workers whose cancel outbox may hold cancellations to send.
    cancel_ready: BTreeSet<Arc<str>>,
}

impl Leader {
    /// Takes leadership over `state` (after it was fully replayed). Workers the state knows as
    /// connected or disconnected get `max_worker_idle` from `now` to reconnect before they are
    /// declared dead.
    pub fn new(state: BrokerState, config: LeaderConfig, now: Millis) -> Leader {
        let mut live = BTreeMap::new();
        for w in state.workers() {
            if w.status != WorkerStatus::Dead {
                live.insert(
                    w.id.clone(),
                    LiveWorker::new(None, w.process_id.clone(), WorkerCapacity::any(0), now),
                );
            }
        }
        // Workers already dead may still have running tasks (if the leader died between the two
        // entries): fail them too, from the first tick.
        for w in state.workers() {
            if w.status == WorkerStatus::Dead && state.running_on(&w.id).is_some() {
                live.insert(
                    w.id.clone(),
                    LiveWorker::new(
                        None,
                        w.process_id.clone(),
                        WorkerCapacity::any(0),
                        now - config.max_worker_idle,
                    ),
                );
            }
        }
        let stale: Vec<Arc<str>> = state
            .workers()
            .filter(|w| w.status == WorkerStatus::Connected)
            .map(|w| w.id.clone())
            .collect();
        let awaiting_death = live.values().filter(|l| l.awaits_death()).count();
        let pools = codepools::PoolReservations::new(&state, now);
        let next_transaction_id = state.max_transaction_id() + 1;
        let tx_created = state.transactions().map(|t| (t.created, t.id)).collect();
        Leader {
            stale_connected: (now, stale),
            next_task_id: state.max_task_id() + 1,
            state,
            config,
            pending_slots: HashSet::default(),
            pending_new: HashMap::default(),
            fresh: Vec::new(),
            placed_in_flight: HashSet::default(),
            queued_in_flight: 0,
            pending_assign: HashMap::default(),
            pending_tenants: TenantBook::default(),
            pending_groups: HashMap::default(),
            pending_resources: HashMap::default(),
            pending_changes: HashSet::default(),
            pending_purge: HashSet::default(),
            pending_keys: HashMap::default(),
            forget_in_flight: None,
            pending_credentials: HashSet::default(),
            live,
            outbox_ready: BTreeSet::new(),
            rotation: 0,
            awaiting_death,
            pools,
            next_transaction_id,
            tx_ending: HashSet::default(),
            tx_created,
            cancels_in_flight: HashMap::default(),
            cancel_ready: BTreeSet::new(),
        }
    }

    /// The applied state (queues may run ahead of it by the in-flight decisions).
    pub fn state(&self) -> &BrokerState {
        &self.state
    }

    /// Gives the state back (stepping down).
    pub fn into_state(self) -> BrokerState {
        self.state
    }

    /// The configuration.
    pub fn config(&self) -> &LeaderConfig {
        &self.config
    }

    /// Whether any decision is still waiting for its entries to be applied.
    pub fn has_pending(&self) -> bool {
        !self.pending_slots.is_empty()
            || !self.pending_new.is_empty()
            || !self.placed_in_flight.is_empty()
            || self.queued_in_flight > 0
            || self.pending_assign.values().any(|s| !s.is_empty())
            || !self.pending_resources.is_empty()
            || !self.pending_changes.is_empty()
            || !self.pending_purge.is_empty()
            || !self.pending_keys.is_empty()
            || self.forget_in_flight.is_some()
            || !self.pending_credentials.is_empty()
            || !self.pools.is_empty()
            || !self.tx_ending.is_empty()
            || !self.cancels_in_flight.is_empty()
    }

    // ----- requests -----

    /// Decides a submission. When accepted, the returned entry must be logged. A submission
    /// whose idempotency key is known for its user, in the state or in a submission still in
    /// flight, is accepted as that task and logs nothing.
    pub fn submit(&mut self, now: Millis, req: SubmitRequest) -> (SubmitOutcome, Option<LogEntry>) {
        self.submit_as(now, req, &Caller::admin(""))
    }

    /// [`Leader::submit`] on behalf of `caller`, who must own the transaction the task names,
    /// if any (or be an admin). A task for a transaction that is not open, or not the caller's,
    /// is not created (the original's task id 0) with a text naming the problem.
    pub fn submit_as(
        &mut self,
        now: Millis,
        req: SubmitRequest,
        caller: &Caller,
    ) -> (SubmitOutcome, Option<LogEntry>) {
        if let Some(tx) = req.transaction {
            if let Err(e) = self.open_transaction(tx, caller) {
                return (SubmitOutcome::NotCreated(e.to_string()), None);
            }
            if req.idempotency_key.is_some() {
                // The commit is the unit a client repeats; a key inside a transaction could
                // collide with a task created meanwhile and make the commit unappliable.
                return (
                    SubmitOutcome::NotCreated(
                        "an idempotency key cannot be used inside a transaction".into(),
                    ),
                    None,
                );
            }
        }
        if let Some(key) = &req.idempotency_key
            && let Some(id) = self.known_key(&req.user_id, key)
        {
            return (SubmitOutcome::Accepted(id), None);
        }
        if req.max_attempts > 0 && req.attempts >= req.max_attempts {
            // Its first execution would be beyond maxattempts (the API refuses this too).
            return (
                SubmitOutcome::NotCreated(format!(
                    "attempt {} is not below maxattempts {}",
                    req.attempts, req.max_attempts
                )),
                None,
            );
        }
        if let Some(pool) = &req.codepool
            && let Err(refusal) = self.code_pool_usable(pool)
        {
            return (SubmitOutcome::NotCreated(refusal.to_string()), None);
        }
        if let Some(slot) = &req.slot
            && (self.state.slot_holder(slot).is_some()
                || self.pending_slots.contains(slot.as_str()))
        {
            return (
                SubmitOutcome::NotCreated(format!("slot {slot} already assigned")),
                None,
            );
        }
        let id = TaskId(self.next_task_id);
        self.next_task_id += 1;
        if let Some(pool) = &req.codepool {
            self.reserve_pool_use(pool);
        }
        if let Some(slot) = &req.slot {
            self.pending_slots.insert(slot.as_str().into());
        }
        if let Some(transaction_id) = req.transaction {
            // Prepared: invisible, neither queued nor placed until its transaction commits.
            let entry = LogEntry::PrepareAddTask {
                transaction_id,
                task: NewTask {
                    id,
                    task_type: req.task_type,
                    user_id: req.user_id,
                    data: req.data,
                    max_attempts: req.max_attempts,
                    attempts: req.attempts,
                    requested_start_time: req.requested_start_time,
                    deadline: req.deadline,
                    slot: req.slot,
                    codepool: req.codepool,
                    mode: req.mode,
                    created: now,
                    idempotency_key: None,
                    priority: req.priority,
                    needs: req.needs,
                },
            };
            return (SubmitOutcome::Accepted(id), Some(entry));
        }
        if let Some(key) = &req.idempotency_key {
            let user = self.state.intern(&req.user_id);
            self.pending_keys
                .entry(user)
                .or_default()
                .insert(key.as_str().into(), id);
        }
        let task_type = self.state.intern(&req.task_type);
        let user = self.state.intern(&req.user_id);
        let level = self.state.level_of(&user);
        let delayed = req.requested_start_time > now;
        let needs = self.state.intern_needs(&req.needs);
        self.pending_new.insert(
            id,
            PendingNew {
                task_type,
                user,
                resources: level.resources,
                needs,
                attempts: req.attempts,
                max_attempts: req.max_attempts,
                deadline: req.deadline,
                // Delayed tasks wait in the delayed queue, not ahead of anybody.
                queued: false,
            },
        );
        if !delayed {
            self.fresh.push(id);
        }
        let entry = LogEntry::AddTask(NewTask {
            id,
            task_type: req.task_type,
            user_id: req.user_id,
            data: req.data,
            max_attempts: req.max_attempts,
            attempts: req.attempts,
            requested_start_time: req.requested_start_time,
            deadline: req.deadline,
            slot: req.slot,
            codepool: req.codepool,
            mode: req.mode,
            created: now,
            idempotency_key: req.idempotency_key,
            priority: req.priority,
            needs: req.needs,
        });
        (SubmitOutcome::Accepted(id), Some(entry))
    }

    /// Checks and normalizes what a task needs (see [`crate::quota::normalize`]) before it is
    /// submitted: refused when no connected worker has that much of every dimension (it would
    /// wait forever; with no worker connected nothing can be judged and it is accepted), or when
    /// it needs more than the whole quota of its owner or of the owner's group.
    ///
    /// # Errors
    /// [`NeedsRefusal`] naming the dimension.
    pub fn check_needs(
        &self,
        user_id: &str,
        needs: Vec<(String, u64)>,
    ) -> Result<Vec<(String, u64)>, NeedsRefusal> {
        let needs = crate::quota::normalize(needs, false).map_err(NeedsRefusal::Invalid)?;
        if needs.is_empty() {
            return Ok(needs);
        }
        let interned: Vec<(Arc<str>, u64)> = needs
            .iter()
            .map(|(d, n)| (Arc::from(d.as_str()), *n))
            .collect();
        let workers: Vec<&WorkerCapacity> = self
            .live
            .values()
            .filter(|l| l.conn.is_some() && !l.dead)
            .map(|l| &l.capacity)
            .collect();
        if !workers.is_empty() && !workers.iter().any(|c| c.could_hold(&interned)) {
            // Name the first dimension that no worker has enough of on its own; if each fits
            // somewhere but never all on one worker, the first dimension the best worker lacks.
            let most = |d: &str| {
                workers
                    .iter()
                    .map(|c| c.amounts.get(d).copied().unwrap_or(0))
                    .max()
                    .unwrap_or(0)
            };
            let (dimension, amount) = needs
                .iter()
                .find(|(d, n)| most(d) < *n)
                .or_else(|| needs.first())
                .cloned()
                .expect("needs are not empty");
            return Err(NeedsRefusal::NoWorker {
                most: most(&dimension),
                dimension,
                amount,
            });
        }
        let group = self.state.group_of_user(user_id);
        let tenants = [
            crate::quota::QuotaTenant::User(user_id.to_string()),
            crate::quota::QuotaTenant::Group(group),
        ];
        for tenant in tenants {
            if let Some(quota) = self.state.quotas().get(&tenant) {
                for (d, n) in &needs {
                    let limit = crate::quota::need_of(quota, d);
                    if quota.iter().any(|(q, _)| **q == **d) && *n > limit {
                        return Err(NeedsRefusal::OverQuota {
                            dimension: d.clone(),
                            amount: *n,
                            tenant,
                            quota: limit,
                        });
                    }
                }
            }
        }
        Ok(needs)
    }

    /// Decides the issue of a worker credential bound to `worker_id`: the entry to log. The
    /// caller generated the id and the secret (the core has no randomness) and passes only the
    /// verifier derived from the secret.
    ///
    /// # Errors
    /// [`CredentialRefusal`]: a bad id, worker id or comment, or an id already used.
    pub fn add_worker_credential(
        &mut self,
        now: Millis,
        credential_id: &str,
        worker_id: &str,
        verifier: ([u8; 32], [u8; 32]),
        comment: Option<String>,
    ) -> Result<LogEntry, CredentialRefusal> {
        let invalid = |field, reason| CredentialRefusal::Invalid { field, reason };
        crate::credential::check_name("credential id", credential_id)
            .map_err(|e| invalid("credentialId", e))?;
        crate::credential::check_name("workerId", worker_id).map_err(|e| invalid("workerId", e))?;
        let comment = comment.filter(|c| !c.is_empty());
        if let Some(c) = &comment {
            crate::credential::check_comment(c).map_err(|e| invalid("comment", e))?;
        }
        if self.state.credential(credential_id).is_some()
            || self.pending_credentials.contains(credential_id)
        {
            return Err(CredentialRefusal::Conflict(format!(
                "credential {credential_id} already exists"
            )));
        }
        self.pending_credentials.insert(credential_id.to_owned());
        Ok(LogEntry::AddWorkerCredential {
            credential_id: credential_id.to_owned(),
            worker_id: worker_id.to_owned(),
            stored_key: verifier.0,
            server_key: verifier.1,
            comment,
            timestamp: now,
        })
    }

    /// Decides the revocation of a worker credential: the entry to log. Once it is applied,
    /// the caller closes the connections that used the credential; no new one is admitted
    /// ([`BrokerState::credential_for`] refuses it).
    ///
    /// # Errors
    /// [`CredentialRefusal`]: unknown, already revoked, or a change of it in flight.
    pub fn revoke_worker_credential(
        &mut self,
        now: Millis,
        credential_id: &str,
    ) -> Result<LogEntry, CredentialRefusal> {
        let Some(c) = self.state.credential(credential_id) else {
            return Err(if self.pending_credentials.contains(credential_id) {
                CredentialRefusal::Conflict(format!(
                    "credential {credential_id} is being issued; try again"
                ))
            } else {
                CredentialRefusal::Unknown(credential_id.to_owned())
            });
        };
        if c.revoked.is_some() || self.pending_credentials.contains(credential_id) {
            return Err(CredentialRefusal::Conflict(format!(
                "credential {credential_id} is already revoked"
            )));
        }
        self.pending_credentials.insert(credential_id.to_owned());
        Ok(LogEntry::RevokeWorkerCredential {
            credential_id: credential_id.to_owned(),
            timestamp: now,
        })
    }

    /// Decides a quota change of a user or a group (`None` removes it): the entry to log. It
    /// binds from the next placement on.
    ///
    /// # Errors
    /// [`QuotaRefusal`]: an empty user, group 0, or amounts [`crate::quota::normalize`] refuses.
    pub fn set_quota(
        &mut self,
        now: Millis,
        tenant: crate::quota::QuotaTenant,
        quota: Option<Vec<(String, u64)>>,
    ) -> Result<LogEntry, QuotaRefusal> {
        match &tenant {
            crate::quota::QuotaTenant::User(u) if u.trim().is_empty() => {
                return Err(QuotaRefusal::Tenant("userid must not be empty".into()));
            }
            crate::quota::QuotaTenant::Group(ANY_GROUP) => {
                return Err(QuotaRefusal::Tenant(
                    "group 0 means \"any group\" to workers and has no users".into(),
                ));
            }
            _ => {}
        }
        let quota = quota
            .map(|q| crate::quota::normalize(q, true))
            .transpose()
            .map_err(QuotaRefusal::Amounts)?;
        Ok(LogEntry::SetQuota {
            tenant,
            quota,
            timestamp: now,
        })
    }

    /// Decides a service-level change of `user_id` (`None` clears it): the entry to log. Once
    /// applied, the user's waiting tasks are queued under the new level.
    ///
    /// # Errors
    /// [`LevelRefusal`] naming the field at fault: an empty user, group 0 or a group that is
    /// not in [`LeaderConfig::groups`], too many or badly named resources.
    pub fn set_service_level(
        &mut self,
        now: Millis,
        user_id: &str,
        level: Option<ServiceLevel>,
    ) -> Result<LogEntry, LevelRefusal> {
        let invalid = |field, reason: String| LevelRefusal::Invalid { field, reason };
        if user_id.trim().is_empty() {
            return Err(invalid("userid", "must not be empty".into()));
        }
        if let Some(level) = &level {
            if level.group == ANY_GROUP {
                return Err(invalid(
                    "group",
                    "group 0 means \"any group\" to workers and cannot hold users".into(),
                ));
            }
            if !self.config.groups.contains(&level.group) {
                return Err(invalid(
                    "group",
                    format!(
                        "unknown group {} (known groups: {:?})",
                        level.group, self.config.groups
                    ),
                ));
            }
            if level.weight > crate::scheduler::MAX_WEIGHT {
                return Err(invalid(
                    "weight",
                    format!(
                        "{} is more than the largest weight, {}",
                        level.weight,
                        crate::scheduler::MAX_WEIGHT
                    ),
                ));
            }
            if level.resources.len() > MAX_RESOURCES_PER_LEVEL {
                return Err(invalid(
                    "resources",
                    format!("at most {MAX_RESOURCES_PER_LEVEL} resources"),
                ));
            }
            for r in &level.resources {
                if r.is_empty() || r.len() > MAX_RESOURCE_NAME || r.chars().any(char::is_control) {
                    return Err(invalid(
                        "resources",
                        format!(
                            "resource name {r:?} must be 1 to {MAX_RESOURCE_NAME} bytes without \
                             control characters"
                        ),
                    ));
                }
            }
        }
        Ok(LogEntry::SetServiceLevel {
            user_id: user_id.to_string(),
            level: level.map(|l| ServiceLevel {
                group: l.group,
                weight: l.weight,
                resources: crate::state::normalize_resources(l.resources),
            }),
            timestamp: now,
        })
    }

    /// Decides a priority change of a waiting or delayed task: the entry to log.
    ///
    /// # Errors
    /// [`PriorityRefusal`]: the task does not exist (or its creation is not durable yet), or it
    /// is not waiting or delayed, or its assignment or another change of it is in flight.
    pub fn set_task_priority(
        &mut self,
        now: Millis,
        task_id: TaskId,
        priority: i32,
    ) -> Result<LogEntry, PriorityRefusal> {
        let task = self
            .state
            .task(task_id)
            .ok_or(PriorityRefusal::NoSuchTask(task_id))?;
        let being_assigned = self.pending_assign.values().any(|s| s.contains(task_id));
        if being_assigned {
            return Err(PriorityRefusal::NotWaiting {
                task: task_id,
                status: TaskStatus::Running,
            });
        }
        if !matches!(task.status, TaskStatus::Waiting | TaskStatus::Delayed)
            || self.pending_changes.contains(&task_id)
        {
            return Err(PriorityRefusal::NotWaiting {
                task: task_id,
                status: task.status,
            });
        }
        Ok(LogEntry::SetTaskPriority {
            task_id,
            priority,
            timestamp: now,
        })
    }

    /// The global resource use the leader plans with: running tasks plus assignments in flight.
    pub fn resource_use(&self, resource: &str) -> u32 {
        self.state.resource_in_use(resource)
            + self.pending_resources.get(resource).copied().unwrap_or(0)
    }

    /// The task of a user's idempotency key: applied, or decided and in flight.
    fn known_key(&self, user_id: &str, key: &str) -> Option<TaskId> {
        self.state
            .idempotency_key(user_id, key)
            .map(|(id, _)| id)
            .or_else(|| self.pending_keys.get(user_id)?.get(key).copied())
    }

    // ----- transactions -----

    /// The open transaction `id`, if `caller` may use it.
    fn open_transaction(
        &self,
        id: TransactionId,
        caller: &Caller,
    ) -> Result<&crate::model::Transaction, ActionError> {
        let Some(tx) = self.state.transaction(id) else {
            return Err(if id.0 > 0 && id.0 < self.next_transaction_id {
                ActionError::TransactionEnded(id)
            } else {
                ActionError::NoSuchTransaction(id)
            });
        };
        if self.tx_ending.contains(&id) {
            return Err(ActionError::TransactionEnded(id));
        }
        if !caller.may_act_on(tx.owner.as_deref()) {
            return Err(ActionError::NotTransactionOwner {
                id,
                owner: tx.owner.clone(),
                caller: caller.name.clone(),
            });
        }
        Ok(tx)
    }

    /// Opens a transaction owned by `caller`: log the entry, then answer its id.
    ///
    /// # Errors
    /// [`ActionError::TooManyTransactions`] when `max_open_transactions` are open.
    pub fn begin_transaction(
        &mut self,
        now: Millis,
        caller: &Caller,
    ) -> Result<(TransactionId, LogEntry), ActionError> {
        let open = self.tx_created.len();
        if open >= self.config.max_open_transactions {
            return Err(ActionError::TooManyTransactions(open));
        }
        let id = TransactionId(self.next_transaction_id);
        self.next_transaction_id += 1;
        // Counted at once, so a burst of begins in one round respects the bound too.
        self.tx_created.insert((now, id));
        Ok((
            id,
            LogEntry::BeginTransaction {
                transaction_id: id,
                timestamp: now,
                owner: Some(caller.name.clone()),
            },
        ))
    }

    /// Commits an open transaction of `caller`: its prepared tasks are published at once.
    ///
    /// # Errors
    /// [`ActionError`]: never begun, no longer open (a second commit, a commit after a
    /// rollback), somebody else's.
    pub fn commit_transaction(
        &mut self,
        now: Millis,
        id: TransactionId,
        caller: &Caller,
    ) -> Result<LogEntry, ActionError> {
        self.open_transaction(id, caller)?;
        self.tx_ending.insert(id);
        Ok(LogEntry::CommitTransaction {
            transaction_id: id,
            timestamp: now,
        })
    }

    /// Rolls back an open transaction of `caller`: its prepared tasks vanish, their slots are
    /// free again.
    ///
    /// # Errors
    /// As [`Leader::commit_transaction`].
    pub fn rollback_transaction(
        &mut self,
        now: Millis,
        id: TransactionId,
        caller: &Caller,
    ) -> Result<LogEntry, ActionError> {
        self.open_transaction(id, caller)?;
        self.tx_ending.insert(id);
        Ok(LogEntry::RollbackTransaction {
            transaction_id: id,
            timestamp: now,
        })
    }

    // ----- cancel -----

    /// Cancels a task of `caller` (any task for an admin): a waiting or delayed task ends in
    /// `error` with result [`CANCELLED`] at once; a running one too, and once that is durable
    /// [`Leader::take_cancels`] hands out the attempt to stop on its worker, whose capacity the
    /// attempt keeps until the worker reports it ended. Log the entries, then answer.
    ///
    /// # Errors
    /// [`ActionError::NoSuchTask`] (also for another user's task), [`ActionError::TaskEnded`],
    /// [`ActionError::TaskChanging`] while another change of the task is in flight.
    pub fn cancel_task(
        &mut self,
        now: Millis,
        id: TaskId,
        caller: &Caller,
    ) -> Result<Vec<LogEntry>, ActionError> {
        let Some(task) = self.state.task(id) else {
            return Err(if self.pending_new.contains_key(&id) {
                ActionError::TaskChanging(id)
            } else {
                ActionError::NoSuchTask(id)
            });
        };
        if !caller.admin && *task.user_id != *caller.name {
            return Err(ActionError::NoSuchTask(id));
        }
        if task.status.is_final() {
            return Err(ActionError::TaskEnded {
                id,
                status: task.status,
            });
        }
        if self.pending_changes.contains(&id) || self.pending_purge.contains(&id) {
            return Err(ActionError::TaskChanging(id));
        }
        let task_type = task.task_type.clone();
        let user = task.user_id.clone();
        let (attempt, worker) = match task.status {
            TaskStatus::Running => (
                task.attempts,
                task.worker_id.clone().expect("a running task has a worker"),
            ),
            _ => {
                // An assignment in flight makes it running at the next attempt once applied.
                let assigned = self
                    .pending_assign
                    .iter()
                    .find(|(_, set)| set.contains(id))
                    .map(|(w, _)| w.clone());
                match assigned {
                    Some(worker) => (task.attempts + 1, worker),
                    None => {
                        let attempt = task.attempts;
                        self.state.unqueue(id);
                        self.pending_changes.insert(id);
                        return Ok(vec![LogEntry::TaskStatusChange {
                            task_id: id,
                            status: TaskStatus::Error,
                            attempt,
                            worker_id: None,
                            result: Some(CANCELLED.into()),
                            timestamp: now,
                        }]);
                    }
                }
            }
        };
        self.pending_changes.insert(id);
        // What the attempt counts against on its worker, which it keeps until the worker
        // reports it stopped.
        let key = self
            .state
            .running
            .get(&worker)
            .and_then(|set| set.key(id))
            .or_else(|| self.pending_assign.get(&worker).and_then(|set| set.key(id)))
            .cloned()
            .unwrap_or(RunKey {
                task_type,
                user,
                resources: Resources::default(),
                needs: None,
            });
        self.cancels_in_flight.insert(id, (worker, attempt, key));
        Ok(vec![LogEntry::TaskStatusChange {
            task_id: id,
            status: TaskStatus::Error,
            attempt,
            worker_id: None,
            result: Some(CANCELLED.into()),
            timestamp: now,
        }])
    }

    /// Takes the applied cancellations of running attempts to send now, for every worker whose
    /// current session is open. Call it after applying durable entries.
    pub fn take_cancels(&mut self) -> Vec<WorkerCancels> {
        let mut out = Vec::new();
        for worker in std::mem::take(&mut self.cancel_ready) {
            let Some(live) = self.live.get_mut(&worker) else {
                continue;
            };
            let Some(conn) = live.conn.filter(|_| live.open) else {
                continue; // re-armed by `session_opened`
            };
            let tasks = std::mem::take(&mut live.cancel_outbox);
            if !tasks.is_empty() {
                out.push(WorkerCancels {
                    worker_id: worker,
                    conn,
                    tasks,
                });
            }
        }
        out
    }

    /// Cancelled attempts a worker has not reported ended yet (they keep their capacity).
    pub fn cancelling_on(&self, worker_id: &str) -> Vec<(TaskId, u32)> {
        self.live.get(worker_id).map_or(Vec::new(), |l| {
            l.cancel_attempts.iter().map(|(t, a)| (*t, *a)).collect()
        })
    }

    // ----- workers -----

    /// A worker connects. On success, log the entries, then welcome it.
    ///
    /// # Errors
    /// [`ConnectRejection`] when another live process holds the worker id.
    pub fn worker_connected(
        &mut self,
        now: Millis,
        hello: WorkerHello,
    ) -> Result<Admission, ConnectRejection> {
        if hello.worker_id.is_empty() {
            return Err(ConnectRejection::Invalid("empty worker id".into()));
        }
        let worker = self.state.intern(&hello.worker_id);
        let mut replaced = None;
        if let Some(live) = self.live.get(&worker)
            && let Some(conn) = live.conn
            && !live.dead
        {
            if live.process_id != hello.process_id {
                return Err(ConnectRejection::AlreadyConnected {
                    worker_id: hello.worker_id,
                    process_id: live.process_id.clone(),
                });
            }
            replaced = Some(conn);
        }
        let mut entries = vec![LogEntry::WorkerConnected {
            worker_id: hello.worker_id.clone(),
            location: hello.location,
            process_id: hello.process_id.clone(),
            timestamp: now,
        }];
        // Reconciliation, as in the original Majordodo: what the state has running on this worker
        // but the worker does not list is lost. That includes applied assignments still in the
        // outbox (never pushed, so the worker cannot list them). Assignments still in flight are
        // not lost: once applied they enter the outbox and are pushed to this new connection as
        // soon as its session is open.
        let listed: HashSet<(TaskId, u32)> = hello.running.iter().copied().collect();
        let mut lost: Vec<TaskId> = self
            .state
            .running_on(&worker)
            .map(|r| r.iter().collect())
            .unwrap_or_default();
        lost.sort();
        for id in lost {
            let task = self
                .state
                .task(id)
                .expect("running sets hold existing tasks");
            if !listed.contains(&(id, task.attempts)) && !self.pending_changes.contains(&id) {
                let result = worker_died_result(&hello.worker_id);
                entries.push(self.fail_running(id, Some(&hello.worker_id), result, now));
            }
        }
        let mut fresh = LiveWorker::new(Some(hello.conn), hello.process_id, hello.capacity, now);
        // Cancelled attempts the worker still lists keep their capacity and are cancelled
        // again on the new connection; the others are over.
        if let Some(old) = self.live.get(&worker) {
            for (&task, &attempt) in &old.cancel_attempts {
                if listed.contains(&(task, attempt))
                    && let Some(key) = old.cancelling.key(task)
                {
                    fresh.cancelling.insert(task, key.clone());
                    fresh.cancel_attempts.insert(task, attempt);
                    fresh.cancel_outbox.push((task, attempt));
                }
            }
        }
        // Cancellations in flight of attempts this worker no longer lists: nothing to stop.
        self.cancels_in_flight
            .retain(|id, (w, attempt, _)| **w != *worker || listed.contains(&(*id, *attempt)));
        let resend = !fresh.cancel_outbox.is_empty();
        if self
            .live
            .insert(worker.clone(), fresh)
            .is_some_and(|old| old.awaits_death())
        {
            self.awaiting_death -= 1;
        }
        self.outbox_ready.remove(&worker);
        if resend {
            self.cancel_ready.insert(worker.clone());
        }
        Ok(Admission { entries, replaced })
    }

    /// A worker sent something (any message counts as a sign of life); `capacity` when it
    /// re-declared it.
    pub fn worker_seen(
        &mut self,
        now: Millis,
        worker_id: &str,
        conn: ConnId,
        capacity: Option<WorkerCapacity>,
    ) {
        if let Some(live) = self.live.get_mut(worker_id)
            && live.conn == Some(conn)
        {
            live.last_seen = live.last_seen.max(now);
            if let Some(capacity) = capacity {
                live.capacity = capacity;
            }
        }
    }

    /// A worker's connection ended. Returns the entries to log (none if that connection was
    /// already replaced).
    pub fn worker_disconnected(
        &mut self,
        now: Millis,
        worker_id: &str,
        conn: ConnId,
    ) -> Vec<LogEntry> {
        let Some(live) = self.live.get_mut(worker_id) else {
            return Vec::new();
        };
        if live.conn != Some(conn) {
            return Vec::new();
        }
        live.conn = None;
        live.open = false;
        if live.awaits_death() {
            self.awaiting_death += 1;
        }
        // Keep `last_seen`: the idle time counts from the last message, not from the loss. The
        // outbox stays: its tasks are failed by the reconciliation of the next connection, or
        // when the worker is declared dead.
        vec![LogEntry::WorkerDisconnected {
            worker_id: worker_id.to_string(),
            timestamp: now,
        }]
    }

    /// Every connected worker with the capacity it declared.
    pub fn connected_capacities(&self) -> impl Iterator<Item = (&str, &WorkerCapacity)> + '_ {
        self.live
            .iter()
            .filter(|(_, l)| l.conn.is_some() && !l.dead)
            .map(|(w, l)| (&**w, &l.capacity))
    }

    /// The capacity a connected worker declared last.
    pub fn worker_capacity(&self, worker_id: &str) -> Option<&WorkerCapacity> {
        self.live
            .get(worker_id)
            .filter(|l| l.conn.is_some() && !l.dead)
            .map(|l| &l.capacity)
    }

    /// The connection a worker is reachable on, if connected.
    pub fn connection_of(&self, worker_id: &str) -> Option<ConnId> {
        self.live.get(worker_id).and_then(|l| l.conn)
    }

    /// The session of `conn` was opened (the worker was welcomed once its admission was
    /// durable): from now on [`Leader::take_pushes`] hands out its assignments, including those
    /// applied while it was being admitted. Returns false, and changes nothing, if `conn` is no
    /// longer the worker's current connection.
    pub fn session_opened(&mut self, worker_id: &str, conn: ConnId) -> bool {
        let Some((worker, live)) = self.live.get_key_value(worker_id) else {
            return false;
        };
        if live.conn != Some(conn) || live.dead {
            return false;
        }
        let worker = worker.clone();
        let live = self.live.get_mut(&worker).expect("looked up above");
        live.open = true;
        if !live.cancel_outbox.is_empty() {
            self.cancel_ready.insert(worker.clone());
        }
        if !live.outbox.is_empty() {
            self.outbox_ready.insert(worker);
        }
        true
    }

    /// Takes the applied assignments to push now: for every worker whose current session is
    /// open, what its outbox holds that is still current (running on it at that attempt, with no
    /// change in flight). Call it after applying durable entries; push the result to the named
    /// connections. Assignments of workers without an open session stay in their outbox.
    pub fn take_pushes(&mut self) -> Vec<WorkerAssignments> {
        let mut out = Vec::new();
        for worker in std::mem::take(&mut self.outbox_ready) {
            let Some(live) = self.live.get_mut(&worker) else {
                continue;
            };
            let Some(conn) = live.conn.filter(|_| live.open) else {
                continue; // re-armed by `session_opened`
            };
            let outbox = std::mem::take(&mut live.outbox);
            let tasks: Vec<(TaskId, u32)> = outbox
                .into_iter()
                .filter(|&(id, attempt)| self.deliverable(id, &worker, attempt))
                .collect();
            if !tasks.is_empty() {
                out.push(WorkerAssignments {
                    worker_id: worker,
                    conn,
                    tasks,
                });
            }
        }
        out
    }

    /// Whether a status change of the task is decided and in flight (it is not touched again
    /// until that change is applied).
    pub fn change_in_flight(&self, id: TaskId) -> bool {
        self.pending_changes.contains(&id)
    }

    /// Applied assignments of a worker not yet handed out by [`Leader::take_pushes`] (waiting
    /// for its session to open), in log order.
    pub fn unpushed(&self, worker_id: &str) -> &[(TaskId, u32)] {
        self.live
            .get(worker_id)
            .map_or(&[], |l| l.outbox.as_slice())
    }

    /// Whether `conn` is the connection that holds `worker_id`'s assignments: its current
    /// connection, of a worker not declared dead. Only that connection may report.
    pub fn holds_assignments(&self, worker_id: &str, conn: ConnId) -> bool {
        self.live
            .get(worker_id)
            .is_some_and(|l| l.conn == Some(conn) && !l.dead)
    }

    /// Whether a batch of finish reports from `worker_id`'s connection `conn` may be taken: the
    /// connection holds the worker's assignments ([`Leader::holds_assignments`]) and no report
    /// names an attempt assigned to another worker (the task's latest attempt, whose worker is
    /// someone else: a report no honest worker can send). A refused batch changes nothing and
    /// must not be acknowledged; late or duplicate reports of the worker's own attempts are not
    /// refused (they are acknowledged and ignored).
    pub fn may_report(&self, worker_id: &str, conn: ConnId, reports: &[FinishReport]) -> bool {
        self.holds_assignments(worker_id, conn)
            && reports.iter().all(|r| {
                self.state.task(r.task_id).is_none_or(|t| {
                    t.attempts != r.attempt || t.worker_id.as_deref().is_none_or(|w| w == worker_id)
                })
            })
    }

    /// Processes a batch of finish reports from a worker's connection `conn`. A batch that
    /// [`Leader::may_report`] refuses (from a replaced connection, or naming another worker's
    /// attempt) changes nothing. Reports for attempts that are not current (late, duplicated,
    /// or for tasks given up on) are ignored.
    pub fn finish_reports(
        &mut self,
        now: Millis,
        worker_id: &str,
        conn: ConnId,
        reports: &[FinishReport],
    ) -> Vec<LogEntry> {
        let mut entries = Vec::new();
        if !self.may_report(worker_id, conn, reports) {
            return entries;
        }
        for r in reports {
            let Some(task) = self.state.task(r.task_id) else {
                continue;
            };
            if self
                .cancels_in_flight
                .get(&r.task_id)
                .is_some_and(|(w, a, _)| **w == *worker_id && *a == r.attempt)
            {
                // The attempt ended before its cancellation reached the worker: nothing to stop.
                self.cancels_in_flight.remove(&r.task_id);
                continue;
            }
            if let Some(live) = self.live.get_mut(worker_id)
                && live.cancel_done(r.task_id, r.attempt)
            {
                // The end of a cancelled attempt: its capacity is free; the task stays as the
                // cancellation left it.
                continue;
            }
            let current = task.status == TaskStatus::Running
                && task.attempts == r.attempt
                && task.worker_id.as_deref() == Some(worker_id)
                && !self.pending_changes.contains(&r.task_id);
            if !current {
                continue;
            }
            let entry = match r.outcome {
                Outcome::Finished => {
                    self.pending_changes.insert(r.task_id);
                    LogEntry::TaskStatusChange {
                        task_id: r.task_id,
                        status: TaskStatus::Finished,
                        attempt: r.attempt,
                        worker_id: Some(worker_id.to_string()),
                        result: Some(r.result.clone()),
                        timestamp: now,
                    }
                }
                Outcome::Error => {
                    self.fail_running(r.task_id, Some(worker_id), r.result.clone(), now)
                }
                Outcome::RetryLater(delay) => {
                    let deferrals = task.deferrals();
                    if deferrals < self.config.max_deferrals {
                        self.pending_changes.insert(r.task_id);
                        LogEntry::DeferTask {
                            task_id: r.task_id,
                            attempt: r.attempt,
                            worker_id: worker_id.to_string(),
                            until: now.saturating_add(delay.max(0)),
                            timestamp: now,
                        }
                    } else {
                        let why = format!(
                            "retry later refused: the task was already deferred {deferrals} times, the most allowed (tasks.max_deferrals), so this attempt counts as failed{}{}",
                            if r.result.is_empty() { "" } else { ": " },
                            r.result
                        );
                        self.fail_running(r.task_id, Some(worker_id), why, now)
                    }
                }
            };
            entries.push(entry);
        }
        entries
    }

    /// The entry failing a running task: back to waiting if attempts and deadline allow, else
    /// error.
    fn fail_running(
        &mut self,
        id: TaskId,
        worker_id: Option<&str>,
        result: String,
        now: Millis,
    ) -> LogEntry {
        let task = self.state.task(id).expect("caller checked the task exists");
        let attempts_used = task.max_attempts > 0 && task.counted_attempts() >= task.max_attempts;
        let deadline_passed = task.deadline > 0 && task.deadline <= now;
        let status = if attempts_used || deadline_passed {
            TaskStatus::Error
        } else {
            TaskStatus::Waiting
        };
        self.pending_changes.insert(id);
        LogEntry::TaskStatusChange {
            task_id: id,
            status,
            attempt: task.attempts,
            worker_id: worker_id.map(str::to_string),
            result: Some(result),
            timestamp: now,
        }
    }

    // ----- timers -----

    /// Decisions that time makes: dead workers, delayed tasks becoming due, deadlines passing,
    /// ended tasks to purge, idempotency keys to forget. Call it when [`Leader::next_timer`] is reached (calling it more often
    /// is harmless).
    pub fn tick(&mut self, now: Millis) -> Vec<LogEntry> {
        let mut entries = Vec::new();
        for worker in std::mem::take(&mut self.stale_connected.1) {
            if self.live.get(&worker).is_some_and(|l| l.conn.is_none()) {
                entries.push(LogEntry::WorkerDisconnected {
                    worker_id: worker.to_string(),
                    timestamp: now,
                });
            }
        }
        self.declare_dead_workers(now, &mut entries);
        let budget = self.config.max_timer_changes_per_round;

        // Deadlines first, so that an expired delayed task is not resumed (the original resumed
        // expired delayed tasks).
        let expired = Self::due(&self.state.deadlines, now, budget);
        self.timer_changes(
            expired,
            TaskStatus::Error,
            Some(DEADLINE_EXPIRED),
            now,
            &mut entries,
        );
        let resumed = Self::due(&self.state.delayed, now, budget);
        self.timer_changes(resumed, TaskStatus::Waiting, None, now, &mut entries);

        if self.config.finished_task_retention > 0 {
            let horizon = now - self.config.finished_task_retention;
            let mut purge = Vec::new();
            for &(created, id) in self.state.ended.iter() {
                if created > horizon || purge.len() >= budget {
                    break;
                }
                if self.pending_purge.insert(id) {
                    purge.push(id);
                }
            }
            if !purge.is_empty() {
                entries.push(LogEntry::PurgeTasks {
                    task_ids: purge,
                    timestamp: now,
                });
            }
        }
        if self.config.transactions_ttl > 0 {
            let horizon = now - self.config.transactions_ttl;
            let expired: Vec<TransactionId> = self
                .tx_created
                .iter()
                .take_while(|(created, _)| *created <= horizon)
                .map(|(_, id)| *id)
                .filter(|id| !self.tx_ending.contains(id) && self.state.transaction(*id).is_some())
                .take(budget)
                .collect();
            for id in expired {
                // Abandoned: its owner neither committed nor rolled it back in time.
                self.tx_ending.insert(id);
                entries.push(LogEntry::RollbackTransaction {
                    transaction_id: id,
                    timestamp: now,
                });
            }
        }
        if let Some(created_before) = self.keys_to_forget(now, budget) {
            self.forget_in_flight = Some(created_before);
            entries.push(LogEntry::ForgetIdempotencyKeys {
                created_before,
                timestamp: now,
            });
        }
        self.expire_code_pools(now, budget, &mut entries);
        entries
    }

    /// The `created_before` of the next `ForgetIdempotencyKeys` due at `now`, if any: it
    /// forgets at most `budget` keys whose window has passed and that no entry in flight
    /// forgets already, oldest first. The bound is a time, so keys created in the same
    /// millisecond go together: when more than `budget` share the oldest millisecond, that
    /// whole millisecond goes (the entry always forgets something).
    fn keys_to_forget(&self, now: Millis, budget: usize) -> Option<Millis> {
        let window = self.config.idempotency_window;
        if window <= 0 || budget == 0 {
            return None;
        }
        // A key created at `c` is due once `now >= c + window`.
        let due_before = now.saturating_sub(window).saturating_add(1);
        let from = self.forget_in_flight.unwrap_or(Millis::MIN);
        let mut due = self
            .state
            .idempotency
            .created_from(from)
            .take_while(|created| *created < due_before);
        let oldest = due.next()?;
        match due.nth(budget.saturating_sub(1)) {
            // More than `budget` are due: stop before the first one beyond the budget.
            Some(beyond) if beyond > oldest => Some(beyond),
            Some(_) => Some(oldest.saturating_add(1)),
            None => Some(due_before),
        }
    }

    /// Up to `budget` tasks of a time-ordered index whose time has come.
    fn due(index: &BTreeSet<(Millis, TaskId)>, now: Millis, budget: usize) -> Vec<TaskId> {
        index
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(budget)
            .map(|(_, id)| *id)
            .collect()
    }

    /// Moves waiting or delayed tasks to `status` because their time came (deadline, start).
    fn timer_changes(
        &mut self,
        tasks: Vec<TaskId>,
        status: TaskStatus,
        result: Option<&str>,
        now: Millis,
        entries: &mut Vec<LogEntry>,
    ) {
        for id in tasks {
            if !self.pending_changes.insert(id) {
                continue; // already decided, in flight
            }
            let attempt = self
                .state
                .task(id)
                .expect("time indexes hold existing tasks")
                .attempts;
            self.state.unqueue(id);
            entries.push(LogEntry::TaskStatusChange {
                task_id: id,
                status,
                attempt,
                worker_id: None,
                result: result.map(str::to_string),
                timestamp: now,
            });
        }
    }

    fn declare_dead_workers(&mut self, now: Millis, entries: &mut Vec<LogEntry>) {
        let idle = self.config.max_worker_idle;
        let dying: Vec<Arc<str>> = self
            .live
            .iter()
            .filter(|(_, l)| l.awaits_death() && l.last_seen + idle <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for worker in dying {
            entries.push(LogEntry::WorkerDied {
                worker_id: worker.to_string(),
                timestamp: now,
            });
            // Everything it runs, including assignments still in flight (they are applied before
            // these failures, since they were logged before).
            let mut tasks: Vec<TaskId> = self
                .state
                .running_on(&worker)
                .map(|r| r.iter().collect())
                .unwrap_or_default();
            if let Some(pending) = self.pending_assign.get(&worker) {
                tasks.extend(pending.iter());
            }
            tasks.sort();
            tasks.dedup();
            for id in tasks {
                if !self.pending_changes.contains(&id) {
                    entries.push(self.fail_running_or_assigned(id, &worker, now));
                }
            }
            if let Some(live) = self.live.get_mut(&worker) {
                if live.awaits_death() {
                    self.awaiting_death -= 1;
                }
                live.dead = true;
            }
        }
    }

    /// Like [`Leader::fail_running`], for a task that may still be waiting in the applied state
    /// because its assignment is in flight: the failure concerns the attempt being assigned.
    fn fail_running_or_assigned(&mut self, id: TaskId, worker: &str, now: Millis) -> LogEntry {
        let (attempts, deferrals, max_attempts, deadline) = match self.state.task(id) {
            Some(task) if task.status == TaskStatus::Running => {
                return self.fail_running(id, Some(worker), worker_died_result(worker), now);
            }
            Some(task) => (
                task.attempts,
                task.deferrals(),
                task.max_attempts,
                task.deadline,
            ),
            None => {
                // Placed directly at submission: even the task's creation is in flight.
                let p = self
                    .pending_new
                    .get(&id)
                    .expect("an assignment in flight has a task");
                (p.attempts, 0, p.max_attempts, p.deadline)
            }
        };
        // In flight: once applied, the task will be running at attempts + 1.
        let attempt = attempts + 1;
        let attempts_used = max_attempts > 0 && attempt.saturating_sub(deferrals) >= max_attempts;
        let deadline_passed = deadline > 0 && deadline <= now;
        self.pending_changes.insert(id);
        LogEntry::TaskStatusChange {
            task_id: id,
            status: if attempts_used || deadline_passed {
                TaskStatus::Error
            } else {
                TaskStatus::Waiting
            },
            attempt,
            worker_id: Some(worker.to_string()),
            result: Some(worker_died_result(worker)),
            timestamp: now,
        }
    }

    /// When [`Leader::tick`] next has something to do, if ever.
    pub fn next_timer(&self) -> Option<Millis> {
        let idle = self.config.max_worker_idle;
        debug_assert_eq!(
            self.awaiting_death,
            self.live.values().filter(|l| l.awaits_death()).count(),
            "workers awaiting death miscounted"
        );
        let deaths = (self.awaiting_death > 0)
            .then(|| {
                self.live
                    .values()
                    .filter(|l| l.awaits_death())
                    .map(|l| l.last_seen + idle)
            })
            .into_iter()
            .flatten();
        let delayed = self.state.delayed.first().map(|(t, _)| *t);
        let deadline = self.state.deadlines.first().map(|(t, _)| *t);
        let purge = if self.config.finished_task_retention > 0 {
            self.state
                .ended
                .iter()
                .find(|(_, id)| !self.pending_purge.contains(id))
                .map(|(c, _)| c + self.config.finished_task_retention)
        } else {
            None
        };
        let stale = (!self.stale_connected.1.is_empty()).then_some(self.stale_connected.0);
        let window = self.config.idempotency_window;
        let forget = if window > 0 {
            self.state
                .idempotency
                .created_from(self.forget_in_flight.unwrap_or(Millis::MIN))
                .next()
                .map(|created| created.saturating_add(window))
        } else {
            None
        };
        let abandoned = if self.config.transactions_ttl > 0 {
            self.tx_created
                .iter()
                .find(|(_, id)| {
                    !self.tx_ending.contains(id) && self.state.transaction(*id).is_some()
                })
                .map(|(created, _)| created.saturating_add(self.config.transactions_ttl))
        } else {
            None
        };
        deaths
            .chain(abandoned)
            .chain(delayed)
            .chain(deadline)
            .chain(purge)
            .chain(stale)
            .chain(forget)
            .chain(self.next_pool_timer())
            .min()
    }

    // ----- assignment -----

    /// Chooses tasks for every connected worker with room, in a rotating order, and returns the
    /// entries to log. Once they are applied, [`Leader::take_pushes`] hands the assignments out
    /// for pushing.
    pub fn assign(&mut self, now: Millis) -> Vec<LogEntry> {
        let mut entries = Vec::new();
        self.place_fresh(now, &mut entries);
        if self.state.waiting.is_empty() {
            return entries;
        }
        let Some(with_room) = self.connected_with_room() else {
            return entries;
        };
        let mut budget = self.config.max_assignments_per_round;
        let empty = RunningSet::default();
        for worker in &with_room {
            if budget == 0 || self.state.waiting.is_empty() {
                break;
            }
            let live = &self.live[worker];
            let running = self.state.running.get(worker).unwrap_or(&empty);
            let pending = self.pending_assign.get(worker).unwrap_or(&empty);
            let global = GlobalResources {
                limits: &self.config.global_resource_limits,
                used: &[&self.state.resources_in_use, &self.pending_resources],
                quotas: &self.state.quotas,
                tenants: &[&self.state.tenant_use, &self.pending_tenants],
            };
            let chosen = self.state.waiting.choose(
                &live.capacity,
                &[running, pending, &live.cancelling],
                &global,
                budget,
            );
            if chosen.is_empty() {
                continue;
            }
            budget -= chosen.len();
            for c in chosen {
                // Deadlines are expired by `tick` before assignment; one passing in between is
                // still caught when the attempt fails.
                let task = self.state.task(c.id).expect("queued tasks exist");
                let attempt = task.attempts + 1;
                self.state.unqueue(c.id);
                let resources = c.resources.iter().map(|r| r.to_string()).collect();
                let worker = worker.clone();
                self.reserve_assignment(
                    &worker,
                    c.id,
                    c.group,
                    RunKey {
                        task_type: c.task_type,
                        user: c.user,
                        resources: c.resources,
                        needs: c.needs,
                    },
                );
                entries.push(LogEntry::AssignTask {
                    task_id: c.id,
                    worker_id: worker.to_string(),
                    attempt,
                    resources,
                    timestamp: now,
                });
            }
        }
        entries
    }

    /// The connected workers that have a free thread, in the rotating order of [`Leader::assign`]
    /// (which it advances), or None when no worker is connected. A worker whose running,
    /// assigned and cancelling tasks fill its `max_threads` could take nothing (the scheduler's
    /// first check), so it is left out here, where it costs no lookups: with many workers of
    /// few threads, most are full in every round.
    fn connected_with_room(&mut self) -> Option<Vec<Arc<str>>> {
        let mut connected = 0usize;
        let mut with_room: Vec<(usize, Arc<str>)> = Vec::new();
        for (id, live) in &self.live {
            if live.conn.is_none() || live.dead {
                continue;
            }
            let used = self.state.running.get(id).map_or(0, RunningSet::len)
                + self.pending_assign.get(id).map_or(0, RunningSet::len)
                + live.cancelling.len();
            if used < live.capacity.max_threads as usize {
                with_room.push((connected, id.clone()));
            }
            connected += 1;
        }
        if connected == 0 {
            return None;
        }
        // The order is the connected workers' from `rotation` on, wrapping around.
        self.rotation = (self.rotation + 1) % connected;
        let first = with_room.partition_point(|(at, _)| *at < self.rotation);
        with_room.rotate_left(first);
        Some(with_room.into_iter().map(|(_, id)| id).collect())
    }

    /// Places submissions decided since the last call directly on workers with room, so a task
    /// submitted to an idle cluster is created and assigned in the same log write (one fsync on
    /// the way from submission to execution). Only while nothing waits ahead of it: as soon as a
    /// task cannot be placed, it and every later one go through the queues (age order).
    fn place_fresh(&mut self, now: Millis, entries: &mut Vec<LogEntry>) {
        if self.fresh.is_empty() {
            return;
        }
        let fresh = std::mem::take(&mut self.fresh);
        // Nothing is placed while tasks wait or are on their way to the queues (and this round
        // only adds to those): the connected workers are listed only when something may be.
        let connected: Vec<Arc<str>> =
            if self.queued_in_flight == 0 && self.state.waiting.is_empty() {
                self.live
                    .iter()
                    .filter(|(_, l)| l.conn.is_some() && !l.dead)
                    .map(|(id, _)| id.clone())
                    .collect()
            } else {
                Vec::new()
            };
        let mut budget = self.config.max_assignments_per_round;
        let empty = RunningSet::default();
        let mut next_worker = 0usize;
        for id in fresh {
            let Some(p) = self.pending_new.get(&id) else {
                continue;
            };
            let mut placed = None;
            // The owner's group now: a service level applied since the submission was decided
            // moved the owner, and the assignment is charged where its owner is.
            let group = self.state.group_of_user(&p.user);
            if self.queued_in_flight == 0 && self.state.waiting.is_empty() && budget > 0 {
                for i in 0..connected.len() {
                    let worker = &connected[(self.rotation + next_worker + i) % connected.len()];
                    let live = &self.live[worker];
                    let running = self.state.running.get(worker).unwrap_or(&empty);
                    let pending = self.pending_assign.get(worker).unwrap_or(&empty);
                    let global = GlobalResources {
                        limits: &self.config.global_resource_limits,
                        used: &[&self.state.resources_in_use, &self.pending_resources],
                        quotas: &self.state.quotas,
                        tenants: &[&self.state.tenant_use, &self.pending_tenants],
                    };
                    let candidate = Candidate {
                        group,
                        user: &p.user,
                        task_type: &p.task_type,
                        resources: &p.resources,
                        needs: p.needs.as_deref().unwrap_or(&[]),
                    };
                    if live.capacity.admits(
                        &[running, pending, &live.cancelling],
                        &global,
                        &candidate,
                    ) {
                        placed = Some(worker.clone());
                        next_worker += i + 1;
                        break;
                    }
                }
            }
            let p = self.pending_new.get_mut(&id).expect("checked above");
            match placed {
                Some(worker) => {
                    budget -= 1;
                    self.placed_in_flight.insert(id);
                    let attempt = p.attempts + 1;
                    let key = RunKey {
                        task_type: p.task_type.clone(),
                        user: p.user.clone(),
                        resources: p.resources.clone(),
                        needs: p.needs.clone(),
                    };
                    let resources = p.resources.iter().map(|r| r.to_string()).collect();
                    self.reserve_assignment(&worker, id, group, key);
                    entries.push(LogEntry::AssignTask {
                        task_id: id,
                        worker_id: worker.to_string(),
                        attempt,
                        resources,
                        timestamp: now,
                    });
                }
                None => {
                    p.queued = true;
                    self.queued_in_flight += 1;
                }
            }
        }
    }

    /// Charges an assignment in flight to its worker, the cluster's resources and its tenants.
    fn reserve_assignment(&mut self, worker: &Arc<str>, id: TaskId, group: GroupId, key: RunKey) {
        for r in key.resources.iter() {
            crate::scheduler::add_to(&mut self.pending_resources, r, 1);
        }
        self.pending_tenants.charge(&key.user, group, key.needs());
        self.pending_groups.insert(id, group);
        self.pending_assign
            .entry(worker.clone())
            .or_default()
            .insert(id, key);
    }

    /// Follows an applied service-level change of `user` (from group `from`) with the user's
    /// assignments in flight: the state charges each to the user's group when it is applied,
    /// so they count in that group from now on (else a group's quota could be exceeded by the
    /// tasks in flight of a user who just joined it).
    fn move_pending_user(&mut self, user: &str, from: GroupId) {
        let to = self.state.group_of_user(user);
        if from == to {
            return;
        }
        self.pending_tenants.move_user(user, from, to);
        for set in self.pending_assign.values() {
            for (id, key) in set.entries() {
                if &*key.user == user
                    && let Some(group) = self.pending_groups.get_mut(&id)
                {
                    *group = to;
                }
            }
        }
    }

    /// Releases what [`Leader::reserve_assignment`] charged, once the assignment is applied.
    fn release_assignment(&mut self, worker: &str, id: TaskId) {
        let Some(set) = self.pending_assign.get_mut(worker) else {
            return;
        };
        if let Some(key) = set.remove(id) {
            for r in key.resources.iter() {
                let n = self
                    .pending_resources
                    .get_mut(r)
                    .expect("an assignment in flight is counted");
                *n -= 1;
                if *n == 0 {
                    self.pending_resources.remove(r);
                }
            }
            let group = self
                .pending_groups
                .remove(&id)
                .expect("an assignment in flight has its group");
            self.pending_tenants.release(&key.user, group, key.needs());
        }
        if set.is_empty() {
            self.pending_assign.remove(worker);
        }
    }

    /// Whether an applied assignment should still be pushed to the worker: the task runs on it at
    /// that attempt and nothing in flight takes it away.
    pub fn deliverable(&self, task_id: TaskId, worker_id: &str, attempt: u32) -> bool {
        self.state.task(task_id).is_some_and(|t| {
            t.status == TaskStatus::Running
                && t.attempts == attempt
                && t.worker_id.as_deref() == Some(worker_id)
        }) && !self.pending_changes.contains(&task_id)
    }

    // ----- apply -----

    /// Applies a durable entry and releases the reservations it carried.
    ///
    /// # Errors
    /// [`ApplyError`] if the entry does not fit the state (a bug on the leader: stop).
    pub fn apply(&mut self, lsn: u64, entry: LogEntry) -> Result<(), ApplyError> {
        if let LogEntry::AddWorkerCredential { credential_id, .. }
        | LogEntry::RevokeWorkerCredential { credential_id, .. } = &entry
        {
            let id = credential_id.clone();
            self.state.apply(lsn, entry)?;
            self.pending_credentials.remove(&id);
            return Ok(());
        }
        let release = Release::of(&entry, &self.state);
        let pool_release = codepools::PoolRelease::of(&entry, self);
        let moved = match &entry {
            LogEntry::SetServiceLevel { user_id, .. } => {
                Some((user_id.clone(), self.state.group_of_user(user_id)))
            }
            _ => None,
        };
        self.state.apply(lsn, entry)?;
        self.release_pool(pool_release);
        if let Some((user, from)) = moved {
            self.move_pending_user(&user, from);
        }
        match release {
            Release::New(id, slot, key) => {
                if let Some(slot) = slot {
                    self.pending_slots.remove(slot.as_str());
                }
                if let Some((user, key)) = key
                    && let Some(keys) = self.pending_keys.get_mut(user.as_str())
                {
                    keys.remove(key.as_str());
                    if keys.is_empty() {
                        self.pending_keys.remove(user.as_str());
                    }
                }
                if let Some(p) = self.pending_new.remove(&id)
                    && p.queued
                {
                    self.queued_in_flight -= 1;
                }
                if self.placed_in_flight.remove(&id) {
                    self.state.unqueue(id);
                }
                // If it is still in `fresh` (no assignment ran since its submission), it is in
                // the queues now and `place_fresh` skips it: it is no longer in `pending_new`.
            }
            Release::Assign(worker, id, attempt) => {
                self.release_assignment(&worker, id);
                if let Some((key, live)) = self.live.get_key_value(worker.as_str()) {
                    let key = key.clone();
                    let open = live.open;
                    self.live
                        .get_mut(&key)
                        .expect("looked up above")
                        .outbox
                        .push((id, attempt));
                    if open {
                        self.outbox_ready.insert(key);
                    }
                }
            }
            Release::Change(id) => {
                self.pending_changes.remove(&id);
                if let Some((worker, attempt, key)) = self.cancels_in_flight.remove(&id)
                    && let Some(live) = self.live.get_mut(&worker)
                {
                    if let Some(at) = live.outbox.iter().position(|p| *p == (id, attempt)) {
                        // Never pushed: the worker never saw the attempt, nothing to stop.
                        live.outbox.remove(at);
                        return Ok(());
                    }
                    live.cancelling.insert(id, key);
                    live.cancel_attempts.insert(id, attempt);
                    live.cancel_outbox.push((id, attempt));
                    if live.open {
                        self.cancel_ready.insert(worker);
                    }
                }
            }
            Release::Purge(ids) => {
                for id in ids {
                    self.pending_purge.remove(&id);
                }
            }
            Release::Forget(created_before) => {
                if self.forget_in_flight == Some(created_before) {
                    self.forget_in_flight = None;
                }
            }
            Release::TxBegin(id, created) => {
                self.tx_created.insert((created, id));
            }
            Release::TxEnd(id, created) => {
                self.tx_ending.remove(&id);
                if let Some(created) = created {
                    self.tx_created.remove(&(created, id));
                }
            }
            Release::Worker(worker) => {
                if let Some(live) = self.live.get(worker.as_str())
                    && live.dead
                    && self.state.running_on(&worker).is_none()
                    && !self.pending_assign.contains_key(worker.as_str())
                {
                    self.live.remove(worker.as_str());
                }
            }
            Release::Nothing => {}
        }
        Ok(())
    }

    /// Drops every in-flight decision after the log failed: the caller must rebuild the state from
    /// the log (the queues ran ahead of it).
    pub fn abandon(self) -> BrokerState {
        self.state
    }
}

/// The reservation an entry releases once applied.
enum Release {
    /// A creation: its task, slot, and (owner, idempotency key).
    New(TaskId, Option<String>, Option<(String, String)>),
    Assign(String, TaskId, u32),
    Change(TaskId),
    Purge(Vec<TaskId>),
    Forget(Millis),
    /// A transaction opened: (id, creation time).
    TxBegin(TransactionId, Millis),
    /// A transaction ended: (id, its creation time if it was open).
    TxEnd(TransactionId, Option<Millis>),
    Worker(String),
    Nothing,
}

impl Release {
    fn of(entry: &LogEntry, state: &BrokerState) -> Release {
        match entry {
            LogEntry::AddTask(t) => Release::New(
                t.id,
                t.slot.clone(),
                t.idempotency_key
                    .clone()
                    .map(|key| (t.user_id.clone(), key)),
            ),
            LogEntry::AssignTask {
                task_id,
                worker_id,
                attempt,
                ..
            } => match state.task(*task_id) {
                Some(_) => Release::Assign(worker_id.clone(), *task_id, *attempt),
                None => Release::Nothing,
            },
            LogEntry::TaskStatusChange { task_id, .. } | LogEntry::DeferTask { task_id, .. } => {
                Release::Change(*task_id)
            }
            LogEntry::PurgeTasks { task_ids, .. } => Release::Purge(task_ids.clone()),
            LogEntry::ForgetIdempotencyKeys { created_before, .. } => {
                Release::Forget(*created_before)
            }
            LogEntry::WorkerDied { worker_id, .. } => Release::Worker(worker_id.clone()),
            LogEntry::PrepareAddTask { task, .. } => Release::New(task.id, task.slot.clone(), None),
            LogEntry::BeginTransaction {
                transaction_id,
                timestamp,
                ..
            } => Release::TxBegin(*transaction_id, *timestamp),
            LogEntry::CommitTransaction { transaction_id, .. }
            | LogEntry::RollbackTransaction { transaction_id, .. } => Release::TxEnd(
                *transaction_id,
                state.transaction(*transaction_id).map(|t| t.created),
            ),
            _ => Release::Nothing,
        }
    }
}
