//! The handle through which the HTTP API (and embedding programs) talk to a running broker.
//!
//! Writes go to the dispatcher and are answered once durable. Reads run a closure against the
//! dispatcher's state between two rounds: keep them cheap and bounded (page large listings).

use std::fmt;
use std::sync::Arc;

use majordodo_core::leader::{ActionError, Caller, CodePoolRefusal, SubmitOutcome, SubmitRequest};
use majordodo_core::model::ServiceLevel;
use majordodo_core::{BrokerState, Millis, TaskId, TaskStatus, TransactionId};
use tokio::sync::{mpsc, oneshot};

/// What this broker currently is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Replaying its log; answers no writes yet.
    Recovering,
    /// Accepts writes and workers.
    Leader,
    /// Replicates the leader; read-only.
    Follower,
    /// Stopped, or failed (the log failed): must be restarted.
    Closed,
}

impl Role {
    /// The name the original's HTTP API uses (`clusterMode`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Recovering => "RECOVERY",
            Role::Leader => "LEADER",
            Role::Follower => "FOLLOWER",
            Role::Closed => "CLOSED",
        }
    }
}

/// What a read sees.
pub struct View<'a> {
    /// The applied state.
    pub state: &'a BrokerState,
    /// The broker's role.
    pub role: Role,
    /// This broker's id.
    pub broker_id: &'a str,
    /// On a follower, the leader's HTTP API URL when known.
    pub leader: Option<&'a str>,
    /// In a replicated cluster, what this broker knows of it.
    pub cluster: Option<&'a ClusterView>,
    /// The broker's clock when the read runs (for views that show time left).
    pub now: Millis,
    /// On the leader, its decisions (global resource limits, the capacity each connected
    /// worker declared); followers do not know them.
    pub leader_core: Option<&'a majordodo_core::Leader>,
}

/// An action on the leader's state other than a submission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerAction {
    /// Open a transaction owned by the caller.
    BeginTransaction,
    /// Publish an open transaction's prepared tasks.
    CommitTransaction(TransactionId),
    /// Discard an open transaction's prepared tasks.
    RollbackTransaction(TransactionId),
    /// End a waiting, delayed or running task in `error` with result `cancelled`.
    CancelTask(TaskId),
}

/// What a carried-out [`BrokerAction`] answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActionDone {
    /// The transaction begun, committed or rolled back.
    Transaction(TransactionId),
    /// The task cancelled, and the status it had.
    Cancelled(TaskId, TaskStatus),
}

/// What a broker of a replicated cluster knows of it, for the status views.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// The ledger being written (leader) or tailed (follower), if any.
    pub current_ledger: Option<i64>,
    /// Every live broker as it last published itself: (id, API URL, applied position).
    pub brokers: Vec<(String, String, Option<u64>)>,
    /// The leader's broker id, when known.
    pub leader_id: Option<String>,
    /// The ledgers holding the log, oldest first, as last listed in ZooKeeper.
    pub ledgers: Vec<majordodo_proto::http::ClusterLedger>,
}

impl fmt::Debug for View<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("View")
            .field("role", &self.role)
            .field("broker_id", &self.broker_id)
            .finish_non_exhaustive()
    }
}

/// Why a request to the broker failed.
///
/// Every variant but [`BrokerError::OutcomeUnknown`] means that nothing of the request was done,
/// so retrying it cannot create anything twice.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// This broker is not the leader; the leader's HTTP API URL when known. Retryable against
    /// the leader (the original's `broker_not_leader`).
    #[error("broker_not_leader")]
    NotLeader(Option<String>),
    /// The broker is replaying its log. Retryable shortly (`recovery_in_progress`).
    #[error("recovery_in_progress")]
    Recovering,
    /// The broker is stopping or stopped (`broker_not_started`). Retryable against another
    /// broker or after a restart.
    #[error("broker_not_started")]
    Stopped,
    /// The commit log failed before this request was handed to it: nothing of it was written.
    /// Retryable once the broker has been restarted (`broker_not_started`).
    #[error("commit log unavailable: {0}")]
    Unavailable(String),
    /// The commit log failed after this request's entries were handed to it: they may or may
    /// not be durable, and the restarted broker may have them. **Not retryable blindly**: look
    /// the tasks up first, or resubmit with the same idempotency key (`outcome_unknown`).
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// Too many requests are queued. Retryable after a short wait (`broker_overloaded`).
    #[error("broker overloaded: {0}")]
    Overloaded(&'static str),
    /// A task of the request is too large for one log record; nothing of the request was done.
    #[error("request too large: task {task}: {field} {detail}")]
    TooLarge {
        /// Position of the task in the request.
        task: usize,
        /// The request field that makes it too large (its largest field).
        field: &'static str,
        /// What is wrong, naming the sizes.
        detail: String,
    },
    /// Taking a snapshot failed; the broker goes on. Retryable.
    #[error("snapshot failed: {0}")]
    Snapshot(String),
    /// A code-pool request was refused (or a submission names a pool it may not use: `task`
    /// is its position in the request); nothing was done. Not retryable as is (but
    /// [`CodePoolRefusal::Busy`] passes once the entries in flight are durable).
    #[error("{refusal}")]
    CodePool {
        /// Position of the task naming the pool, for a submission.
        task: Option<usize>,
        /// Why.
        refusal: CodePoolRefusal,
    },
    /// A task's needs are refused (malformed, more than any connected worker has, more than a
    /// whole quota); nothing of the request was done.
    #[error("{refusal}")]
    Needs {
        /// Position of the task in the request.
        task: usize,
        /// Why.
        refusal: majordodo_core::leader::NeedsRefusal,
    },
}

impl BrokerError {
    /// Whether retrying later (possibly elsewhere) may succeed and cannot create anything twice.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            BrokerError::TooLarge { .. }
                | BrokerError::OutcomeUnknown(_)
                | BrokerError::CodePool { .. }
                | BrokerError::Needs { .. }
        )
    }
}

/// A change of scheduling state asked by an admin (or a task's owner, for its priority).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminChange {
    /// Set (or, with `None`, clear) a user's service level.
    SetServiceLevel {
        /// The user.
        user_id: String,
        /// The new level.
        level: Option<ServiceLevel>,
    },
    /// Change the priority of a waiting or delayed task.
    SetTaskPriority {
        /// The task.
        task_id: TaskId,
        /// The new priority.
        priority: i32,
    },
    /// Set (or, with `None`, remove) a user's or a group's quota.
    SetQuota {
        /// Whose.
        tenant: majordodo_core::quota::QuotaTenant,
        /// The amounts per dimension.
        quota: Option<Vec<(String, u64)>>,
    },
    /// Issue a worker credential: the caller generated its id and secret and passes only the
    /// secret's verifier (its `Debug` output is redacted).
    AddWorkerCredential {
        /// The new credential's id.
        credential_id: String,
        /// The worker id it binds.
        worker_id: String,
        /// Derived from the secret.
        verifier: majordodo_proto::worker::CredentialVerifier,
        /// The admin's free text.
        comment: Option<String>,
    },
    /// Revoke a worker credential; its live connections are closed once it is durable.
    RevokeWorkerCredential {
        /// The credential.
        credential_id: String,
    },
}

/// Why the leader refused an [`AdminChange`]; nothing was logged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdminRefusal {
    /// A field is invalid.
    #[error("{field}: {reason}")]
    Invalid {
        /// The request field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The task does not exist.
    #[error("task {0} does not exist")]
    NoSuchTask(TaskId),
    /// The task is in a status the change does not apply to.
    #[error("{0}")]
    Conflict(String),
    /// No worker credential has this id.
    #[error("unknown credential {0}")]
    NoSuchCredential(String),
    /// The credential is already revoked (or exists already).
    #[error("{0}")]
    CredentialConflict(String),
}

/// A read, run inside the dispatcher: given the view, or the reason there is none yet.
pub(crate) type Query = Box<dyn FnOnce(Result<&View<'_>, BrokerError>) + Send>;

/// Requests to the dispatcher.
pub(crate) enum Command {
    /// Submit tasks; answered in request order once durable.
    Submit {
        tasks: Vec<SubmitRequest>,
        /// Who submits (owner checks of transactions).
        caller: Caller,
        reply: oneshot::Sender<Result<Vec<SubmitOutcome>, BrokerError>>,
    },
    /// An action; answered once its entries are durable (at once when refused).
    Act {
        action: BrokerAction,
        caller: Caller,
        reply: oneshot::Sender<Result<Result<ActionDone, ActionError>, BrokerError>>,
    },
    /// Run a read.
    Query(Query),
    /// A scheduling change; answered once durable (or at once when refused).
    Admin {
        change: AdminChange,
        reply: oneshot::Sender<Result<Result<(), AdminRefusal>, BrokerError>>,
    },
    /// Take a snapshot now; answered with its log position once written.
    Checkpoint {
        reply: oneshot::Sender<Result<u64, BrokerError>>,
    },
    /// Create or delete a code pool; answered once durable.
    CodePool {
        op: CodePoolOp,
        reply: oneshot::Sender<Result<(), BrokerError>>,
    },
}

/// A code-pool change asked of the dispatcher.
pub(crate) enum CodePoolOp {
    /// Create pool `id` with this (already checked) archive.
    Create { id: String, ttl: i64, data: Vec<u8> },
    /// Delete pool `id`.
    Delete { id: String },
}

impl Command {
    /// Answers the command with `error` without doing anything.
    pub(crate) fn refuse(self, error: BrokerError) {
        match self {
            Command::Submit { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Command::Query(query) => query(Err(error)),
            Command::Act { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Command::Admin { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Command::Checkpoint { reply } => {
                let _ = reply.send(Err(error));
            }
            Command::CodePool { reply, .. } => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// A cloneable handle to a running broker.
#[derive(Clone)]
pub struct BrokerHandle {
    pub(crate) tx: mpsc::Sender<Command>,
    pub(crate) broker_id: Arc<str>,
    /// Where the broker's snapshots are, for serving them to other brokers.
    pub(crate) snapshots: Option<Arc<majordodo_log::SnapshotStore>>,
    /// What the dispatcher counts, for `/metrics`.
    pub(crate) metrics: Arc<crate::metrics::BrokerMetrics>,
}

impl fmt::Debug for BrokerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerHandle")
            .field("broker_id", &self.broker_id)
            .finish_non_exhaustive()
    }
}

impl BrokerHandle {
    /// This broker's id.
    pub fn broker_id(&self) -> &str {
        &self.broker_id
    }

    /// The counters and histograms the broker keeps while it leads.
    pub fn metrics(&self) -> &Arc<crate::metrics::BrokerMetrics> {
        &self.metrics
    }

    /// Seconds since the newest snapshot in the broker's store was written (its file's
    /// modification time); `None` without a store or a snapshot.
    pub fn snapshot_age(&self) -> Option<f64> {
        let store = self.snapshots.as_ref()?;
        let newest = store.list().ok()?.into_iter().max()?;
        let modified = std::fs::metadata(store.path_of(newest))
            .ok()?
            .modified()
            .ok()?;
        Some(
            std::time::SystemTime::now()
                .duration_since(modified)
                .unwrap_or_default()
                .as_secs_f64(),
        )
    }

    /// Submits tasks (one log write for the whole batch). Outcomes come in request order.
    ///
    /// Never waits for room: when the broker's queue is full it answers
    /// [`BrokerError::Overloaded`] at once.
    ///
    /// # Errors
    /// [`BrokerError`]: not leader, recovering, stopped, log failure, overload, too large.
    pub async fn submit(
        &self,
        tasks: Vec<SubmitRequest>,
    ) -> Result<Vec<SubmitOutcome>, BrokerError> {
        self.submit_as(tasks, Caller::admin("")).await
    }

    /// [`BrokerHandle::submit`] on behalf of `caller`: a task naming a transaction is prepared
    /// in it only if `caller` owns it (or is an admin).
    ///
    /// # Errors
    /// As [`BrokerHandle::submit`].
    pub async fn submit_as(
        &self,
        tasks: Vec<SubmitRequest>,
        caller: Caller,
    ) -> Result<Vec<SubmitOutcome>, BrokerError> {
        let (reply, rx) = oneshot::channel();
        self.send_now(Command::Submit {
            tasks,
            caller,
            reply,
        })?;
        rx.await.map_err(|_| BrokerError::Stopped)?
    }

    /// Queues `command` for the dispatcher without waiting: a full queue is
    /// [`BrokerError::Overloaded`] at once, a gone dispatcher [`BrokerError::Stopped`].
    fn send_now(&self, command: Command) -> Result<(), BrokerError> {
        self.tx.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                BrokerError::Overloaded("the broker's submission queue is full")
            }
            mpsc::error::TrySendError::Closed(_) => BrokerError::Stopped,
        })
    }

    /// Carries out `action` for `caller` on the leader: `Ok(Err(_))` when the leader refused it
    /// (nothing was done; the error says why), `Ok(Ok(_))` once its entries are durable.
    ///
    /// # Errors
    /// [`BrokerError`], as [`BrokerHandle::submit`].
    pub async fn act(
        &self,
        action: BrokerAction,
        caller: Caller,
    ) -> Result<Result<ActionDone, ActionError>, BrokerError> {
        let (reply, rx) = oneshot::channel();
        self.send_now(Command::Act {
            action,
            caller,
            reply,
        })?;
        rx.await.map_err(|_| BrokerError::Stopped)?
    }

    /// Creates code pool `id` from `data`, an archive the caller checked (see
    /// [`majordodo_proto::archive::validate`]), with `ttl` ms to live (0 = forever). Answered
    /// once every chunk is durable.
    ///
    /// # Errors
    /// [`BrokerError::CodePool`] when the id is taken; as [`BrokerHandle::submit`] otherwise.
    pub async fn create_code_pool(
        &self,
        id: String,
        ttl: i64,
        data: Vec<u8>,
    ) -> Result<(), BrokerError> {
        self.code_pool(CodePoolOp::Create { id, ttl, data }).await
    }

    /// Deletes code pool `id`. Answered once durable.
    ///
    /// # Errors
    /// [`BrokerError::CodePool`] when unknown or in use; as [`BrokerHandle::submit`] otherwise.
    pub async fn delete_code_pool(&self, id: String) -> Result<(), BrokerError> {
        self.code_pool(CodePoolOp::Delete { id }).await
    }

    async fn code_pool(&self, op: CodePoolOp) -> Result<(), BrokerError> {
        let (reply, rx) = oneshot::channel();
        self.send_now(Command::CodePool { op, reply })?;
        rx.await.map_err(|_| BrokerError::Stopped)?
    }

    /// Asks the leader for a scheduling change; answered once it is durable and applied.
    ///
    /// # Errors
    /// [`BrokerError`] as [`BrokerHandle::submit`]; the inner [`AdminRefusal`] when the leader
    /// refused the change (nothing logged).
    pub async fn admin(
        &self,
        change: AdminChange,
    ) -> Result<Result<(), AdminRefusal>, BrokerError> {
        let (reply, rx) = oneshot::channel();
        self.send_now(Command::Admin { change, reply })?;
        rx.await.map_err(|_| BrokerError::Stopped)?
    }

    /// Runs `f` against the broker's state and returns what it computed. `f` runs inside the
    /// dispatcher: keep it short (bounded work, paged listings).
    ///
    /// # Errors
    /// [`BrokerError::Stopped`] when the broker is gone, [`BrokerError::Recovering`] while it
    /// replays its log.
    pub async fn query<R, F>(&self, f: F) -> Result<R, BrokerError>
    where
        R: Send + 'static,
        F: FnOnce(&View<'_>) -> R + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let query: Query = Box::new(move |view| {
            let _ = reply.send(view.map(f));
        });
        self.tx
            .send(Command::Query(query))
            .await
            .map_err(|_| BrokerError::Stopped)?;
        rx.await.map_err(|_| BrokerError::Stopped)?
    }

    /// Takes a fresh snapshot on the leader and returns its file, for another broker to boot
    /// from.
    ///
    /// # Errors
    /// [`BrokerError::NotLeader`] on a follower (with the leader's URL when known), and as
    /// [`BrokerHandle::checkpoint`].
    pub async fn snapshot_for_download(&self) -> Result<(u64, std::path::PathBuf), BrokerError> {
        let Some(store) = self.snapshots.clone() else {
            return Err(BrokerError::Snapshot(
                "this broker has no snapshot store".into(),
            ));
        };
        let refusal = self
            .query(|v| match v.role {
                Role::Leader => None,
                Role::Follower => Some(BrokerError::NotLeader(v.leader.map(str::to_owned))),
                Role::Recovering => Some(BrokerError::Recovering),
                Role::Closed => Some(BrokerError::Stopped),
            })
            .await?;
        if let Some(refusal) = refusal {
            return Err(refusal);
        }
        let lsn = self.checkpoint().await?;
        Ok((lsn, store.path_of(majordodo_log::Lsn(lsn))))
    }

    /// Takes a snapshot now and returns the log position it covers.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker is gone or writing the snapshot failed.
    pub async fn checkpoint(&self) -> Result<u64, BrokerError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Checkpoint { reply })
            .await
            .map_err(|_| BrokerError::Stopped)?;
        rx.await.map_err(|_| BrokerError::Stopped)?
    }
}
