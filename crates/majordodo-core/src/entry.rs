//! The log-entry vocabulary: every change of the broker state is one of these.
//!
//! It follows the original's `StatusEdit` types with one difference: every entry is
//! self-contained. Timestamps that decide an entry's effect travel inside it (the original read the
//! wall clock when applying `ADD_TASK`, so replicas and replays could disagree), and outcomes the
//! leader decided (retry or give up) are written as explicit status changes. Applying the same
//! entries to the same state therefore always gives the same state.
//!
//! Kinds the original did not have: [`LogEntry::PurgeTasks`],
//! [`LogEntry::ForgetIdempotencyKeys`], [`LogEntry::DeferTask`], the chunked code pool
//! ([`LogEntry::BeginCodePool`], [`LogEntry::CodePoolChunk`]) that replaces the original's
//! one-entry `CREATECODEPOOL`, [`LogEntry::SetServiceLevel`], [`LogEntry::SetTaskPriority`] and
//! [`LogEntry::SetQuota`], and the worker credentials ([`LogEntry::AddWorkerCredential`],
//! [`LogEntry::RevokeWorkerCredential`]).

use crate::model::{Millis, ServiceLevel, TaskId, TaskStatus, TransactionId};

/// A task as submitted, with everything its creation needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTask {
    /// Id allocated by the leader.
    pub id: TaskId,
    /// Task type.
    pub task_type: String,
    /// Owner.
    pub user_id: String,
    /// Payload.
    pub data: String,
    /// 0 = unlimited, 1 = at most once, N = at most N executions.
    pub max_attempts: u32,
    /// Attempts already made (clients may pre-set it; usually 0).
    pub attempts: u32,
    /// Requested start time; 0 = now. Later than `created` makes the task delayed.
    pub requested_start_time: Millis,
    /// Absolute deadline; 0 = none.
    pub deadline: Millis,
    /// Mutual-exclusion key, if any.
    pub slot: Option<String>,
    /// Code pool, if any.
    pub codepool: Option<String>,
    /// Execution mode, if not the default.
    pub mode: Option<String>,
    /// Submission time, set by the leader.
    pub created: Millis,
    /// The client's idempotency key, if it set one: kept (scoped by `user_id`) until a
    /// [`LogEntry::ForgetIdempotencyKeys`] forgets it, so a submission sent again with the same
    /// key is answered with this task instead of creating another.
    pub idempotency_key: Option<String>,
    /// Order inside its owner's queue: higher first; 0 by default (age order).
    pub priority: i32,
    /// What each attempt needs while it runs, in the form [`crate::quota::normalize`] gives
    /// (empty: nothing declared).
    pub needs: Vec<(String, u64)>,
}

impl NewTask {
    /// The status the task starts in: delayed when its start time is after its submission.
    pub fn initial_status(&self) -> TaskStatus {
        if self.requested_start_time > self.created {
            TaskStatus::Delayed
        } else {
            TaskStatus::Waiting
        }
    }
}

/// One change of the broker state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogEntry {
    /// A task is submitted (original code 1).
    AddTask(NewTask),
    /// A worker connected (code 2). Reconciliation of its running tasks is logged as separate
    /// [`LogEntry::TaskStatusChange`] entries.
    WorkerConnected {
        /// Worker id.
        worker_id: String,
        /// Where it runs.
        location: String,
        /// Id of its process.
        process_id: String,
        /// When it connected.
        timestamp: Millis,
    },
    /// A waiting task is assigned to a worker (code 3).
    AssignTask {
        /// The task.
        task_id: TaskId,
        /// The worker.
        worker_id: String,
        /// The attempt this assignment starts (the task's attempts + 1).
        attempt: u32,
        /// Resources charged to this execution.
        resources: Vec<String>,
        /// When it was assigned.
        timestamp: Millis,
    },
    /// A task changes status (code 4): a finish report, a failure decided by the leader (retry or
    /// give up), a worker death, a deadline, a delayed task becoming due.
    TaskStatusChange {
        /// The task.
        task_id: TaskId,
        /// The new status.
        status: TaskStatus,
        /// For changes of a running task, the attempt they concern (must be the current one);
        /// otherwise the task's current attempts.
        attempt: u32,
        /// The worker that reported it, if it came from a worker.
        worker_id: Option<String>,
        /// The result text to store (executor result, error text, `deadline_expired`, ...).
        result: Option<String>,
        /// When the change was decided.
        timestamp: Millis,
    },
    /// A worker's connection was lost (code 5).
    WorkerDisconnected {
        /// Worker id.
        worker_id: String,
        /// When.
        timestamp: Millis,
    },
    /// A worker is declared dead (code 6); the failures of its tasks follow as status changes.
    WorkerDied {
        /// Worker id.
        worker_id: String,
        /// When.
        timestamp: Millis,
    },
    /// A transaction is opened (code 7).
    BeginTransaction {
        /// Its id.
        transaction_id: TransactionId,
        /// When.
        timestamp: Millis,
        /// The user who opened it: only that user (or an admin) may add to it, commit it or roll
        /// it back. `None` in entries of record versions before 3 (admins only, then).
        owner: Option<String>,
    },
    /// A transaction's prepared tasks are published at once (code 8).
    CommitTransaction {
        /// Its id.
        transaction_id: TransactionId,
        /// When.
        timestamp: Millis,
    },
    /// A transaction's prepared tasks are discarded (code 9).
    RollbackTransaction {
        /// Its id.
        transaction_id: TransactionId,
        /// When.
        timestamp: Millis,
    },
    /// A task is prepared inside a transaction (code 10).
    PrepareAddTask {
        /// The transaction.
        transaction_id: TransactionId,
        /// The task.
        task: NewTask,
    },
    /// Nothing (code 11): written periodically to prove the leader can still write.
    Noop {
        /// When.
        timestamp: Millis,
    },
    /// A code pool is deleted (code 13).
    DeleteCodePool {
        /// Pool id.
        id: String,
        /// When.
        timestamp: Millis,
    },
    /// A code pool is created with its whole archive in this one entry (code 14). Written by
    /// record versions 1 and 2 only, still read and applied; the leader now writes
    /// [`LogEntry::BeginCodePool`] and [`LogEntry::CodePoolChunk`] instead.
    CreateCodePool {
        /// Pool id.
        id: String,
        /// When.
        timestamp: Millis,
        /// Time to live in ms; 0 = forever.
        ttl: Millis,
        /// The bundle.
        data: Vec<u8>,
    },
    /// Ended tasks are forgotten (retention elapsed). The original purged memory without logging,
    /// so a replay brought purged tasks back; here the purge is an entry like any other change.
    PurgeTasks {
        /// The tasks, all finished or in error.
        task_ids: Vec<TaskId>,
        /// When.
        timestamp: Millis,
    },
    /// The idempotency keys of every task created before `created_before` are forgotten (their
    /// window passed). Logged, rather than decided by each replica from its clock, so replay
    /// and followers forget exactly what the leader forgot.
    ForgetIdempotencyKeys {
        /// Keys of tasks created strictly before this time are forgotten.
        created_before: Millis,
        /// When.
        timestamp: Millis,
    },
    /// A code pool's creation begins: its id, TTL and what its archive is. The archive follows
    /// in `chunks` [`LogEntry::CodePoolChunk`] entries; the pool exists (and can be used) once
    /// the last one is applied and the checksum of the whole matched.
    BeginCodePool {
        /// Pool id.
        id: String,
        /// When (the pool's creation time, from which its TTL runs).
        timestamp: Millis,
        /// Time to live in ms; 0 = forever.
        ttl: Millis,
        /// Size of the whole archive, in bytes (at least 1).
        size: u64,
        /// Number of chunks that follow (at least 1).
        chunks: u32,
        /// SHA-256 of the whole archive.
        sha256: [u8; 32],
    },
    /// One chunk of a code pool's archive, in order.
    CodePoolChunk {
        /// Pool id.
        id: String,
        /// Position of the chunk, from 0.
        index: u32,
        /// The bytes (never empty).
        data: Vec<u8>,
    },
    /// A running attempt answered "retry later": the task waits in the delayed queue until
    /// `until`, and the attempt does not count against its `max_attempts` (the task's
    /// deferrals grow by one; attempt numbers keep increasing, so reports stay unambiguous).
    DeferTask {
        /// The task.
        task_id: TaskId,
        /// The attempt that asked (must be the current one).
        attempt: u32,
        /// The worker that reported it.
        worker_id: String,
        /// When the task may run again.
        until: Millis,
        /// When it was decided.
        timestamp: Millis,
    },
    /// An admin sets (or, with `None`, clears) a user's service level. Its waiting tasks move to
    /// the new group and resources at once; delayed tasks and retries take it when they enter the
    /// waiting queues; running tasks keep the resources charged at their assignment.
    SetServiceLevel {
        /// The user.
        user_id: String,
        /// The new level; `None` goes back to the configured default.
        level: Option<ServiceLevel>,
        /// When.
        timestamp: Millis,
    },
    /// The priority of a waiting or delayed task changes.
    SetTaskPriority {
        /// The task.
        task_id: TaskId,
        /// The new priority (higher first).
        priority: i32,
        /// When.
        timestamp: Millis,
    },
    /// An admin sets (or, with `None`, removes) the quota of a user or a group: amounts per
    /// dimension (`tasks`, `cpu`, `memory`, named amounts) its running tasks may use together.
    /// It binds from the next placement on; running tasks are never stopped by it.
    SetQuota {
        /// Whose quota.
        tenant: crate::quota::QuotaTenant,
        /// The amounts, as [`crate::quota::normalize`] gives them with `tasks` allowed.
        quota: Option<Vec<(String, u64)>>,
        /// When.
        timestamp: Millis,
    },
    /// An admin issues a worker credential: from now on a worker proving the secret behind this
    /// verifier may connect as `worker_id` (and only as it). The secret itself is never logged.
    AddWorkerCredential {
        /// The credential's id (unique, never reused).
        credential_id: String,
        /// The worker id it is bound to.
        worker_id: String,
        /// SHA-256 of the client key.
        stored_key: [u8; 32],
        /// Key of the broker's proof.
        server_key: [u8; 32],
        /// The admin's free text, if any.
        comment: Option<String>,
        /// When.
        timestamp: Millis,
    },
    /// An admin revokes a worker credential: it never connects again, and the leader closes the
    /// connections that used it.
    RevokeWorkerCredential {
        /// The credential.
        credential_id: String,
        /// When.
        timestamp: Millis,
    },
}

impl LogEntry {
    /// A short name of the entry kind, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            LogEntry::AddTask(_) => "add_task",
            LogEntry::WorkerConnected { .. } => "worker_connected",
            LogEntry::AssignTask { .. } => "assign_task",
            LogEntry::TaskStatusChange { .. } => "task_status_change",
            LogEntry::WorkerDisconnected { .. } => "worker_disconnected",
            LogEntry::WorkerDied { .. } => "worker_died",
            LogEntry::BeginTransaction { .. } => "begin_transaction",
            LogEntry::CommitTransaction { .. } => "commit_transaction",
            LogEntry::RollbackTransaction { .. } => "rollback_transaction",
            LogEntry::PrepareAddTask { .. } => "prepare_add_task",
            LogEntry::Noop { .. } => "noop",
            LogEntry::DeleteCodePool { .. } => "delete_code_pool",
            LogEntry::CreateCodePool { .. } => "create_code_pool",
            LogEntry::PurgeTasks { .. } => "purge_tasks",
            LogEntry::ForgetIdempotencyKeys { .. } => "forget_idempotency_keys",
            LogEntry::BeginCodePool { .. } => "begin_code_pool",
            LogEntry::CodePoolChunk { .. } => "code_pool_chunk",
            LogEntry::DeferTask { .. } => "defer_task",
            LogEntry::SetServiceLevel { .. } => "set_service_level",
            LogEntry::SetTaskPriority { .. } => "set_task_priority",
            LogEntry::SetQuota { .. } => "set_quota",
            LogEntry::AddWorkerCredential { .. } => "add_worker_credential",
            LogEntry::RevokeWorkerCredential { .. } => "revoke_worker_credential",
        }
    }
}
