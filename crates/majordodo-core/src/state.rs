//! The replicated broker state and the one `apply` that changes it.
//!
//! The leader, a replaying broker and a follower all call [`BrokerState::apply`] with the same
//! entries in the same order and reach the same state. `apply` validates an entry completely before
//! changing anything, so a refused entry leaves the state untouched.

use std::collections::{BTreeMap, BTreeSet};

use crate::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use crate::credential::{CredentialProblem, WorkerCredential};
use crate::entry::{LogEntry, NewTask};
use crate::idempotency::{IdempotencyKey, IdempotencyKeys};
use crate::model::{
    CodePool, GroupId, Millis, ServiceLevel, Task, TaskExtra, TaskId, TaskStatus, Transaction,
    TransactionId, WorkerRecord, WorkerStatus,
};
use crate::quota::{QuotaTenant, Quotas, TenantBook};
use crate::scheduler::{Queued, Resources, RunKey, RunningSet, WaitingIndex};

/// The default service level of users without one set at runtime (through
/// [`LogEntry::SetServiceLevel`]); consulted when a task enters the waiting queues.
///
/// Must be fast and deterministic: every broker must use the same mapping for the same input.
pub trait GroupMapper: Send + Sync + fmt::Debug {
    /// The group of the tasks of `user_id`.
    fn group_of(&self, user_id: &str) -> GroupId;

    /// The named resources every running task of `user_id` uses (none by default).
    fn resources_of(&self, _user_id: &str) -> Vec<String> {
        Vec::new()
    }
}

/// The original's standalone default: the user id read as a number, else group 1.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultGroupMapper;

impl GroupMapper for DefaultGroupMapper {
    fn group_of(&self, user_id: &str) -> GroupId {
        user_id.trim().parse().unwrap_or(1)
    }
}

/// A service level as the state keeps it (resources shared by every task of the user).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Level {
    pub(crate) group: GroupId,
    pub(crate) resources: Resources,
    /// Fair-share weight (at least 1).
    pub(crate) weight: u32,
}

/// Why an entry could not be applied. On the leader this is a bug (it validated the entry); in a
/// replay it means the log does not belong to this state. Either way the broker must stop.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The entry's position is not after the last applied one.
    #[error("entry at lsn {lsn} is not after the last applied lsn {last}")]
    OutOfOrder {
        /// The entry's position.
        lsn: u64,
        /// The last applied position.
        last: u64,
    },
    /// The entry refers to a task that is not there.
    #[error("{entry}: task {task} does not exist")]
    NoSuchTask {
        /// Entry kind.
        entry: &'static str,
        /// The task.
        task: TaskId,
    },
    /// A task id is used twice.
    #[error("{entry}: task {task} already exists")]
    DuplicateTask {
        /// Entry kind.
        entry: &'static str,
        /// The task.
        task: TaskId,
    },
    /// The change is not a transition of the task state machine.
    #[error("task {task}: cannot go from {from} to {to}")]
    IllegalTransition {
        /// The task.
        task: TaskId,
        /// Its status.
        from: TaskStatus,
        /// The requested status.
        to: TaskStatus,
    },
    /// The entry concerns another attempt than the task's current one.
    #[error("task {task}: entry for attempt {got}, task is at attempt {expected}")]
    WrongAttempt {
        /// The task.
        task: TaskId,
        /// The attempt in the entry.
        got: u32,
        /// The attempt the entry had to carry.
        expected: u32,
    },
    /// An idempotency key is already known for the task's owner.
    #[error("{entry}: idempotency key {key:?} of user {user_id} is already held by task {holder}")]
    IdempotencyKeyInUse {
        /// Entry kind.
        entry: &'static str,
        /// The owner.
        user_id: String,
        /// The key.
        key: String,
        /// The task that holds it.
        holder: TaskId,
    },
    /// A slot is taken by another task.
    #[error("slot {slot} is held by task {holder}")]
    SlotBusy {
        /// The slot.
        slot: String,
        /// Who holds it.
        holder: TaskId,
    },
    /// The transaction does not exist.
    #[error("transaction {0} does not exist")]
    NoSuchTransaction(TransactionId),
    /// The transaction id is used twice.
    #[error("transaction {0} already exists")]
    DuplicateTransaction(TransactionId),
    /// Code pool conflict.
    #[error("code pool {id}: {reason}")]
    CodePool {
        /// The pool.
        id: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The entry is malformed in a way the decoder could not see.
    #[error("{0}")]
    Invalid(String),
}

/// Most distinct needs the state shares between tasks (see `BrokerState::intern_needs`).
const MAX_SHARED_NEEDS: usize = 4096;

/// Tasks from which `BrokerState::check_invariants` checks its two halves side by side.
const PARALLEL_CHECK_TASKS: usize = 100_000;

/// The whole broker state: tasks, workers, transactions, code pools, and the indexes derived
/// from them.
#[derive(Clone)]
pub struct BrokerState {
    /// Tasks by id. Shared pointers, copied on write: a snapshot copies the pointers, not the
    /// tasks, and only tasks changed while it is being written get copied.
    pub(crate) tasks: crate::task_table::TaskTable,
    /// Waiting tasks by group and type, in age order.
    pub(crate) waiting: WaitingIndex,
    /// Delayed tasks by requested start time.
    pub(crate) delayed: BTreeSet<(Millis, TaskId)>,
    /// Waiting or delayed tasks that have a deadline, by deadline.
    pub(crate) deadlines: BTreeSet<(Millis, TaskId)>,
    /// Finished or error tasks by creation time (retention follows creation time, as in the
    /// original).
    pub(crate) ended: BTreeSet<(Millis, TaskId)>,
    /// Running tasks by worker.
    pub(crate) running: HashMap<Arc<str>, RunningSet>,
    /// Busy slots and their holders (waiting, delayed, running or prepared tasks).
    pub(crate) slots: crate::slot_table::SlotTable,
    /// Idempotency keys of tasks created within the window, with their expiry index. Kept
    /// apart from the tasks: a purged task's key stays until its window ends.
    pub(crate) idempotency: IdempotencyKeys,
    pub(crate) workers: BTreeMap<Arc<str>, WorkerRecord>,
    pub(crate) transactions: BTreeMap<TransactionId, Transaction>,
    pub(crate) codepools: BTreeMap<String, CodePool>,
    /// Waiting, delayed and running tasks per code pool they name (derived).
    pub(crate) pool_refs: HashMap<Box<str>, u32>,
    /// Pools with a TTL by expiry time (derived).
    pub(crate) pool_expiry: BTreeSet<(Millis, String)>,
    pub(crate) max_task_id: u64,
    pub(crate) max_transaction_id: u64,
    pub(crate) last_lsn: u64,
    pub(crate) counts: [u64; 5],
    /// Service levels set at runtime, by user (others get the mapper's).
    /// Looked up for every assignment and end, so hashed; listed sorted.
    pub(crate) service_levels: HashMap<Arc<str>, Level>,
    /// Running tasks per named resource, over every worker (the sums of the running sets).
    pub(crate) resources_in_use: HashMap<Arc<str>, u32>,
    /// Quotas of users and groups, set at runtime.
    pub(crate) quotas: Quotas,
    /// What the running tasks use, per owner and per the owner's current group (derived).
    pub(crate) tenant_use: TenantBook,
    /// Worker credentials by id, revoked ones included.
    pub(crate) credentials: BTreeMap<String, WorkerCredential>,
    interned: HashSet<Arc<str>>,
    /// The one empty list of resources (most tasks use none).
    no_resources: Resources,
    /// Needs shared by the tasks that declare the same ones (at most [`MAX_SHARED_NEEDS`]).
    interned_needs: HashSet<crate::quota::Needs>,
    mapper: Arc<dyn GroupMapper>,
}

impl fmt::Debug for BrokerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerState")
            .field("tasks", &self.tasks.len())
            .field("waiting", &self.waiting.len())
            .field("workers", &self.workers.len())
            .field("last_lsn", &self.last_lsn)
            .finish_non_exhaustive()
    }
}

impl PartialEq for BrokerState {
    /// Two states are equal when everything replicated and every derived index is equal (the
    /// group mapper and the string interner are not compared).
    fn eq(&self, other: &Self) -> bool {
        self.tasks == other.tasks
            && self.waiting == other.waiting
            && self.delayed == other.delayed
            && self.deadlines == other.deadlines
            && self.ended == other.ended
            && self.running == other.running
            && self.slots == other.slots
            && self.idempotency == other.idempotency
            && self.workers == other.workers
            && self.transactions == other.transactions
            && self.codepools == other.codepools
            && self.pool_refs == other.pool_refs
            && self.pool_expiry == other.pool_expiry
            && self.max_task_id == other.max_task_id
            && self.max_transaction_id == other.max_transaction_id
            && self.last_lsn == other.last_lsn
            && self.counts == other.counts
            && self.service_levels == other.service_levels
            && self.resources_in_use == other.resources_in_use
            && self.quotas == other.quotas
            && self.tenant_use == other.tenant_use
            && self.credentials == other.credentials
    }
}

impl Default for BrokerState {
    fn default() -> Self {
        BrokerState::new(Arc::new(DefaultGroupMapper))
    }
}

impl BrokerState {
    /// An empty state using `mapper` to compute groups.
    pub fn new(mapper: Arc<dyn GroupMapper>) -> BrokerState {
        BrokerState {
            tasks: crate::task_table::TaskTable::new(),
            waiting: WaitingIndex::default(),
            delayed: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            ended: BTreeSet::new(),
            running: HashMap::default(),
            slots: Default::default(),
            idempotency: IdempotencyKeys::default(),
            workers: BTreeMap::new(),
            transactions: BTreeMap::new(),
            codepools: BTreeMap::new(),
            pool_refs: HashMap::default(),
            pool_expiry: BTreeSet::new(),
            max_task_id: 0,
            max_transaction_id: 0,
            last_lsn: 0,
            counts: [0; 5],
            service_levels: HashMap::default(),
            resources_in_use: HashMap::default(),
            quotas: Quotas::default(),
            tenant_use: TenantBook::default(),
            credentials: BTreeMap::new(),
            interned: HashSet::default(),
            no_resources: Arc::from(Vec::new()),
            interned_needs: HashSet::default(),
            mapper,
        }
    }

    // ----- reads -----

    /// A task by id.
    pub fn task(&self, id: TaskId) -> Option<&Task> {
        self.tasks.get(&id).map(|t| &**t)
    }

    /// Every task, in id order.
    pub fn tasks(&self) -> impl DoubleEndedIterator<Item = &Task> + '_ {
        self.tasks.values().map(|t| &**t)
    }

    /// Tasks with id ≥ `from`, in id order (for paging).
    pub fn tasks_from(&self, from: TaskId) -> impl Iterator<Item = &Task> + '_ {
        self.tasks.from(from).map(|t| &**t)
    }

    /// Number of tasks (every status).
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// Number of tasks in `status`.
    pub fn count(&self, status: TaskStatus) -> u64 {
        self.counts[status.index()]
    }

    /// The waiting-task index.
    pub fn waiting_index(&self) -> &WaitingIndex {
        &self.waiting
    }

    /// Tasks running on a worker.
    pub fn running_on(&self, worker_id: &str) -> Option<&RunningSet> {
        self.running.get(worker_id)
    }

    /// Known workers, by id.
    pub fn workers(&self) -> impl Iterator<Item = &WorkerRecord> + '_ {
        self.workers.values()
    }

    /// A worker by id.
    pub fn worker(&self, id: &str) -> Option<&WorkerRecord> {
        self.workers.get(id)
    }

    /// Busy slots and their holders.
    pub fn slots(&self) -> impl Iterator<Item = (&str, TaskId)> + '_ {
        self.slots.iter()
    }

    /// The holder of a slot, if busy.
    pub fn slot_holder(&self, slot: &str) -> Option<TaskId> {
        self.slots.get(slot)
    }

    /// The task created by the first submission of `user_id` with idempotency key `key`, and
    /// its creation time, while the key is kept.
    pub fn idempotency_key(&self, user_id: &str, key: &str) -> Option<(TaskId, Millis)> {
        self.idempotency.get(user_id, key)
    }

    /// Every idempotency key kept, oldest first.
    pub fn idempotency_keys(&self) -> impl Iterator<Item = IdempotencyKey> + '_ {
        self.idempotency.iter()
    }

    /// Number of idempotency keys kept.
    pub fn idempotency_key_count(&self) -> usize {
        self.idempotency.len()
    }

    /// Open transactions.
    pub fn transactions(&self) -> impl Iterator<Item = &Transaction> + '_ {
        self.transactions.values()
    }

    /// A transaction by id.
    pub fn transaction(&self, id: TransactionId) -> Option<&Transaction> {
        self.transactions.get(&id)
    }

    /// Code pools.
    pub fn codepools(&self) -> impl Iterator<Item = &CodePool> + '_ {
        self.codepools.values()
    }

    /// A code pool by id.
    pub fn codepool(&self, id: &str) -> Option<&CodePool> {
        self.codepools.get(id)
    }

    /// Delayed tasks by start time.
    pub fn delayed(&self) -> impl Iterator<Item = (Millis, TaskId)> + '_ {
        self.delayed.iter().copied()
    }

    /// Ended (finished or error) tasks by creation time.
    pub fn ended(&self) -> impl Iterator<Item = (Millis, TaskId)> + '_ {
        self.ended.iter().copied()
    }

    /// Tasks running on each worker that runs any.
    pub fn running(&self) -> impl Iterator<Item = (&str, &RunningSet)> + '_ {
        self.running.iter().map(|(w, r)| (&**w, r))
    }

    /// Highest task id ever used.
    pub fn max_task_id(&self) -> u64 {
        self.max_task_id
    }

    /// Highest transaction id ever used.
    pub fn max_transaction_id(&self) -> u64 {
        self.max_transaction_id
    }

    /// Position of the last applied entry (0 if none).
    pub fn last_lsn(&self) -> u64 {
        self.last_lsn
    }

    /// The group mapper.
    pub fn mapper(&self) -> &Arc<dyn GroupMapper> {
        &self.mapper
    }

    /// Service levels set at runtime, by user (sorted by name).
    pub fn service_levels(&self) -> impl Iterator<Item = (&str, ServiceLevel)> + '_ {
        let mut levels: Vec<(&str, &Level)> =
            self.service_levels.iter().map(|(u, l)| (&**u, l)).collect();
        levels.sort_unstable_by_key(|(u, _)| *u);
        levels.into_iter().map(|(u, l)| (u, l.to_model()))
    }

    /// The service level a user's tasks get now: the one set at runtime, else the mapper's.
    pub fn service_level_of(&self, user_id: &str) -> ServiceLevel {
        match self.service_levels.get(user_id) {
            Some(l) => l.to_model(),
            None => ServiceLevel {
                group: self.mapper.group_of(user_id),
                resources: normalize_resources(self.mapper.resources_of(user_id)),
                weight: 1,
            },
        }
    }

    /// The group a user's tasks are in now (its service level's).
    pub fn group_of_user(&self, user_id: &str) -> GroupId {
        match self.service_levels.get(user_id) {
            Some(l) => l.group,
            None => self.mapper.group_of(user_id),
        }
    }

    /// Quotas set at runtime.
    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// What the running tasks use, per owner and per group.
    pub fn tenant_use(&self) -> &TenantBook {
        &self.tenant_use
    }

    /// The group and shared resources a user's tasks get now.
    pub(crate) fn level_of(&mut self, user_id: &str) -> Level {
        if let Some(l) = self.service_levels.get(user_id) {
            return l.clone();
        }
        let group = self.mapper.group_of(user_id);
        let resources = normalize_resources(self.mapper.resources_of(user_id));
        Level {
            group,
            resources: self.intern_resources(&resources),
            weight: 1,
        }
    }

    /// A task's needs as the state keeps them (None when empty).
    pub(crate) fn intern_needs(&mut self, needs: &[(String, u64)]) -> Option<crate::quota::Needs> {
        if needs.is_empty() {
            return None;
        }
        let v: Vec<(Arc<str>, u64)> = needs.iter().map(|(d, n)| (self.intern(d), *n)).collect();
        // Tasks usually declare the same few needs: sharing one copy keeps it in cache for
        // every charge and release, and costs no memory per task. Distinct needs beyond the
        // bound are kept per task, so submissions cannot grow the table without limit.
        if let Some(shared) = self.interned_needs.get(v.as_slice()) {
            return Some(shared.clone());
        }
        let needs: crate::quota::Needs = v.into();
        if self.interned_needs.len() < MAX_SHARED_NEEDS {
            self.interned_needs.insert(needs.clone());
        }
        Some(needs)
    }

    pub(crate) fn intern_resources(&mut self, names: &[String]) -> Resources {
        if names.is_empty() {
            return self.no_resources.clone();
        }
        let v: Vec<Arc<str>> = names.iter().map(|n| self.intern(n)).collect();
        v.into()
    }

    /// Resources an assignment of `user`'s task names, as the state keeps them: the user's
    /// service level's own list when they are the same (the usual case), else interned anew.
    fn assigned_resources(&mut self, user: &str, names: &[String]) -> Resources {
        if let Some(l) = self.service_levels.get(user)
            && l.resources.len() == names.len()
            && l.resources.iter().zip(names).all(|(a, b)| **a == **b)
        {
            return l.resources.clone();
        }
        self.intern_resources(names)
    }

    /// Running tasks using a named resource, over every worker.
    pub fn resource_in_use(&self, resource: &str) -> u32 {
        self.resources_in_use.get(resource).copied().unwrap_or(0)
    }

    /// Running tasks per named resource in use.
    pub fn resources_in_use(&self) -> &HashMap<Arc<str>, u32> {
        &self.resources_in_use
    }

    /// The group a waiting task is queued in now (its owner's current service level).
    pub fn queued_group_of(&self, user_id: &str) -> Option<GroupId> {
        self.waiting.group_of(user_id)
    }

    /// Every worker credential (revoked ones too), in id order.
    pub fn credentials(&self) -> impl Iterator<Item = &WorkerCredential> + '_ {
        self.credentials.values()
    }

    /// A worker credential by id.
    pub fn credential(&self, id: &str) -> Option<&WorkerCredential> {
        self.credentials.get(id)
    }

    /// The credential `id` if it may connect as `worker_id`: it exists, is not revoked and is
    /// bound to that worker id.
    ///
    /// # Errors
    /// [`CredentialProblem`] saying which of these fails.
    pub fn credential_for(
        &self,
        id: &str,
        worker_id: &str,
    ) -> Result<&WorkerCredential, CredentialProblem> {
        let c = self
            .credentials
            .get(id)
            .ok_or_else(|| CredentialProblem::Unknown(id.to_owned()))?;
        if c.revoked.is_some() {
            return Err(CredentialProblem::Revoked(id.to_owned()));
        }
        if c.worker_id != worker_id {
            return Err(CredentialProblem::OtherWorker {
                id: id.to_owned(),
                claimed: worker_id.to_owned(),
            });
        }
        Ok(c)
    }

    // ----- apply -----

    /// Applies the entry at position `lsn`.
    ///
    /// # Errors
    /// [`ApplyError`] when the entry does not fit the state; the state is then unchanged.
    pub fn apply(&mut self, lsn: u64, entry: LogEntry) -> Result<(), ApplyError> {
        if lsn <= self.last_lsn {
            return Err(ApplyError::OutOfOrder {
                lsn,
                last: self.last_lsn,
            });
        }
        self.apply_entry(entry)?;
        self.last_lsn = lsn;
        Ok(())
    }

    fn apply_entry(&mut self, entry: LogEntry) -> Result<(), ApplyError> {
        match entry {
            LogEntry::AddTask(task) => {
                self.check_new_task("add_task", &task, None)?;
                self.max_task_id = self.max_task_id.max(task.id.0);
                self.insert_task(task);
            }
            LogEntry::WorkerConnected {
                worker_id,
                location,
                process_id,
                timestamp,
            } => {
                let id = self.intern(&worker_id);
                self.workers.insert(
                    id.clone(),
                    WorkerRecord {
                        id,
                        location,
                        process_id,
                        last_connection: timestamp,
                        status: WorkerStatus::Connected,
                    },
                );
            }
            LogEntry::AssignTask {
                task_id,
                worker_id,
                attempt,
                resources,
                timestamp: _,
            } => {
                let task = self.tasks.get(&task_id).ok_or(ApplyError::NoSuchTask {
                    entry: "assign_task",
                    task: task_id,
                })?;
                if task.status != TaskStatus::Waiting {
                    return Err(ApplyError::IllegalTransition {
                        task: task_id,
                        from: task.status,
                        to: TaskStatus::Running,
                    });
                }
                if attempt != task.attempts + 1 {
                    return Err(ApplyError::WrongAttempt {
                        task: task_id,
                        got: attempt,
                        expected: task.attempts + 1,
                    });
                }
                let owner = task.user_id.clone();
                let worker = self.intern(&worker_id);
                // The leader records them sorted and unique; an entry from elsewhere is
                // normalized the same way.
                let charged = if resources.windows(2).all(|w| w[0] < w[1]) {
                    self.assigned_resources(&owner, &resources)
                } else {
                    let mut names = resources;
                    names.sort();
                    names.dedup();
                    self.assigned_resources(&owner, &names)
                };
                let group = self.group_of_user(&owner);
                let task = Arc::make_mut(self.tasks.get_mut(&task_id).expect("checked above"));
                self.waiting
                    .remove(&task.user_id, &task.task_type, task.priority(), task.id);
                if task.deadline > 0 {
                    self.deadlines.remove(&(task.deadline, task.id));
                }
                for r in charged.iter() {
                    crate::scheduler::add_to(&mut self.resources_in_use, r, 1);
                }
                let needs = task.extra.as_ref().and_then(|e| e.needs.clone());
                self.tenant_use
                    .charge(&task.user_id, group, needs.as_deref().unwrap_or(&[]));
                let recorded = charged.clone();
                let newly = self.running.entry(worker.clone()).or_default().insert(
                    task.id,
                    RunKey {
                        task_type: task.task_type.clone(),
                        user: task.user_id.clone(),
                        resources: charged,
                        needs,
                    },
                );
                assert!(newly, "task {task_id} has at most one live assignment");
                task.status = TaskStatus::Running;
                task.attempts = attempt;
                task.worker_id = Some(worker);
                let emptied = recorded.is_empty();
                if !emptied || task.extra.is_some() {
                    task.extra.get_or_insert_with(Default::default).resources = recorded;
                    // Only a task recording no resource may be left with every extra field
                    // at its default.
                    if emptied {
                        tidy_extra(task);
                    }
                }
                self.counts[TaskStatus::Waiting.index()] -= 1;
                self.counts[TaskStatus::Running.index()] += 1;
            }
            LogEntry::TaskStatusChange {
                task_id,
                status,
                attempt,
                worker_id: _,
                result,
                timestamp: _,
            } => self.change_status(task_id, status, attempt, result)?,
            LogEntry::WorkerDisconnected {
                worker_id,
                timestamp: _,
            } => self.set_worker_status(&worker_id, WorkerStatus::Disconnected)?,
            LogEntry::WorkerDied {
                worker_id,
                timestamp: _,
            } => self.set_worker_status(&worker_id, WorkerStatus::Dead)?,
            LogEntry::BeginTransaction {
                transaction_id,
                timestamp,
                owner,
            } => {
                if self.transactions.contains_key(&transaction_id) {
                    return Err(ApplyError::DuplicateTransaction(transaction_id));
                }
                self.max_transaction_id = self.max_transaction_id.max(transaction_id.0);
                self.transactions.insert(
                    transaction_id,
                    Transaction {
                        id: transaction_id,
                        created: timestamp,
                        owner,
                        prepared: Vec::new(),
                    },
                );
            }
            LogEntry::PrepareAddTask {
                transaction_id,
                task,
            } => {
                if !self.transactions.contains_key(&transaction_id) {
                    return Err(ApplyError::NoSuchTransaction(transaction_id));
                }
                self.check_new_task("prepare_add_task", &task, None)?;
                self.max_task_id = self.max_task_id.max(task.id.0);
                if let Some(slot) = &task.slot {
                    self.slots.insert(slot, task.id);
                }
                self.transactions
                    .get_mut(&transaction_id)
                    .expect("checked above")
                    .prepared
                    .push(task);
            }
            LogEntry::CommitTransaction {
                transaction_id,
                timestamp: _,
            } => {
                let tx = self
                    .transactions
                    .get(&transaction_id)
                    .ok_or(ApplyError::NoSuchTransaction(transaction_id))?;
                for (i, task) in tx.prepared.iter().enumerate() {
                    self.check_new_task("commit_transaction", task, Some(task.id))?;
                    if let Some(key) = &task.idempotency_key
                        && let Some(other) = tx.prepared[..i].iter().find(|t| {
                            t.user_id == task.user_id && t.idempotency_key.as_ref() == Some(key)
                        })
                    {
                        return Err(ApplyError::IdempotencyKeyInUse {
                            entry: "commit_transaction",
                            user_id: task.user_id.clone(),
                            key: key.clone(),
                            holder: other.id,
                        });
                    }
                }
                let tx = self
                    .transactions
                    .remove(&transaction_id)
                    .expect("checked above");
                for task in tx.prepared {
                    self.insert_task(task);
                }
            }
            LogEntry::RollbackTransaction {
                transaction_id,
                timestamp: _,
            } => {
                let tx = self
                    .transactions
                    .remove(&transaction_id)
                    .ok_or(ApplyError::NoSuchTransaction(transaction_id))?;
                for task in tx.prepared {
                    if let Some(slot) = &task.slot {
                        self.release_slot(slot, task.id);
                    }
                }
            }
            LogEntry::Noop { timestamp: _ } => {}
            LogEntry::DeleteCodePool { id, timestamp: _ } => self.apply_delete_pool(&id)?,
            LogEntry::CreateCodePool {
                id,
                timestamp,
                ttl,
                data,
            } => self.apply_create_whole_pool(id, timestamp, ttl, data)?,
            LogEntry::PurgeTasks {
                task_ids,
                timestamp: _,
            } => {
                for id in &task_ids {
                    let task = self.tasks.get(id).ok_or(ApplyError::NoSuchTask {
                        entry: "purge_tasks",
                        task: *id,
                    })?;
                    if !task.status.is_final() {
                        return Err(ApplyError::Invalid(format!(
                            "purge_tasks: task {id} is {}, only ended tasks can be purged",
                            task.status
                        )));
                    }
                }
                for id in task_ids {
                    // A task listed twice is removed once.
                    if let Some(task) = self.tasks.remove(&id) {
                        self.ended.remove(&(task.created, id));
                        self.counts[task.status.index()] -= 1;
                    }
                }
            }
            LogEntry::ForgetIdempotencyKeys {
                created_before,
                timestamp: _,
            } => {
                self.idempotency.forget_before(created_before);
            }
            LogEntry::BeginCodePool {
                id,
                timestamp,
                ttl,
                size,
                chunks,
                sha256,
            } => self.apply_begin_pool(id, timestamp, ttl, size, chunks, sha256)?,
            LogEntry::CodePoolChunk { id, index, data } => {
                self.apply_pool_chunk(id, index, data)?
            }
            LogEntry::DeferTask {
                task_id,
                attempt,
                worker_id: _,
                until,
                timestamp: _,
            } => self.defer(task_id, attempt, until)?,
            LogEntry::SetServiceLevel {
                user_id,
                level,
                timestamp: _,
            } => {
                if user_id.is_empty() {
                    return Err(ApplyError::Invalid(
                        "set_service_level: empty user id".into(),
                    ));
                }
                let user = self.intern(&user_id);
                let old_group = self.group_of_user(&user);
                match level {
                    Some(l) => {
                        let resources = normalize_resources(l.resources);
                        let level = Level {
                            group: l.group,
                            resources: self.intern_resources(&resources),
                            weight: l.weight.max(1),
                        };
                        self.service_levels.insert(user.clone(), level);
                    }
                    None => {
                        self.service_levels.remove(&user);
                    }
                }
                let level = self.level_of(&user);
                self.tenant_use.move_user(&user, old_group, level.group);
                self.waiting
                    .set_level(&user, level.group, &level.resources, level.weight);
            }
            LogEntry::SetQuota {
                tenant,
                quota,
                timestamp: _,
            } => {
                if let QuotaTenant::User(u) = &tenant
                    && u.is_empty()
                {
                    return Err(ApplyError::Invalid("set_quota: empty user id".into()));
                }
                match quota {
                    Some(q) => {
                        let q = crate::quota::normalize(q, true)
                            .map_err(|e| ApplyError::Invalid(format!("set_quota: {e}")))?;
                        let q: crate::quota::Needs = q
                            .iter()
                            .map(|(d, n)| (self.intern(d), *n))
                            .collect::<Vec<_>>()
                            .into();
                        match tenant {
                            QuotaTenant::User(u) => {
                                let u = self.intern(&u);
                                self.quotas.users.insert(u, q);
                            }
                            QuotaTenant::Group(g) => {
                                self.quotas.groups.insert(g, q);
                            }
                        }
                    }
                    None => match tenant {
                        QuotaTenant::User(u) => {
                            self.quotas.users.remove(u.as_str());
                        }
                        QuotaTenant::Group(g) => {
                            self.quotas.groups.remove(&g);
                        }
                    },
                }
            }
            LogEntry::AddWorkerCredential {
                credential_id,
                worker_id,
                stored_key,
                server_key,
                comment,
                timestamp,
            } => {
                let invalid =
                    |e: String| ApplyError::Invalid(format!("add_worker_credential: {e}"));
                crate::credential::check_name("credential id", &credential_id).map_err(invalid)?;
                crate::credential::check_name("worker id", &worker_id).map_err(invalid)?;
                if let Some(c) = &comment {
                    crate::credential::check_comment(c).map_err(invalid)?;
                }
                if self.credentials.contains_key(&credential_id) {
                    return Err(invalid(format!(
                        "credential {credential_id} already exists"
                    )));
                }
                self.credentials.insert(
                    credential_id.clone(),
                    WorkerCredential {
                        id: credential_id,
                        worker_id,
                        stored_key,
                        server_key,
                        created: timestamp,
                        comment,
                        revoked: None,
                    },
                );
            }
            LogEntry::RevokeWorkerCredential {
                credential_id,
                timestamp,
            } => {
                let c = self.credentials.get_mut(&credential_id).ok_or_else(|| {
                    ApplyError::Invalid(format!(
                        "revoke_worker_credential: unknown credential {credential_id}"
                    ))
                })?;
                if c.revoked.is_some() {
                    return Err(ApplyError::Invalid(format!(
                        "revoke_worker_credential: credential {credential_id} is already revoked"
                    )));
                }
                c.revoked = Some(timestamp);
            }
            LogEntry::SetTaskPriority {
                task_id,
                priority,
                timestamp: _,
            } => {
                let task = self.tasks.get(&task_id).ok_or(ApplyError::NoSuchTask {
                    entry: "set_task_priority",
                    task: task_id,
                })?;
                if !matches!(task.status, TaskStatus::Waiting | TaskStatus::Delayed) {
                    return Err(ApplyError::Invalid(format!(
                        "set_task_priority: task {task_id} is {}, only waiting or delayed tasks \
                         change priority",
                        task.status
                    )));
                }
                let old = task.priority();
                let requeue = task.status == TaskStatus::Waiting
                    && self
                        .waiting
                        .remove(&task.user_id, &task.task_type, old, task_id);
                let task = Arc::make_mut(self.tasks.get_mut(&task_id).expect("checked above"));
                task.priority = priority;
                if requeue {
                    // Queued again only if it was queued: the leader may have taken it out
                    // already (its assignment is in flight).
                    let task = self.tasks.get(&task_id).expect("checked above").clone();
                    self.queue_waiting(&task);
                }
            }
        }
        Ok(())
    }

    /// A running attempt is deferred: the task leaves its worker and waits, delayed, until
    /// `until`, keeping its slot.
    fn defer(&mut self, id: TaskId, attempt: u32, until: Millis) -> Result<(), ApplyError> {
        let task = self.tasks.get(&id).ok_or(ApplyError::NoSuchTask {
            entry: "defer_task",
            task: id,
        })?;
        if task.status != TaskStatus::Running {
            return Err(ApplyError::IllegalTransition {
                task: id,
                from: task.status,
                to: TaskStatus::Delayed,
            });
        }
        if attempt != task.attempts {
            return Err(ApplyError::WrongAttempt {
                task: id,
                got: attempt,
                expected: task.attempts,
            });
        }
        let group = self.group_of_user(&task.user_id);
        let task = Arc::make_mut(self.tasks.get_mut(&id).expect("checked above"));
        let worker = task
            .worker_id
            .as_ref()
            .expect("a running task has a worker");
        let mut counters = RunCounters {
            running: &mut self.running,
            resources: &mut self.resources_in_use,
            tenants: &mut self.tenant_use,
        };
        counters.leave(worker, id, group);
        task.status = TaskStatus::Delayed;
        task.requested_start_time = until.max(0);
        task.extra.get_or_insert_with(Default::default).deferrals += 1;
        self.counts[TaskStatus::Running.index()] -= 1;
        self.counts[TaskStatus::Delayed.index()] += 1;
        let task = self.tasks.get(&id).expect("checked above").clone();
        self.index_pending(&task);
        Ok(())
    }

    /// Checks that a new task can enter: unused id, unknown idempotency key, free slot (or held
    /// by `slot_owner`).
    fn check_new_task(
        &self,
        entry: &'static str,
        task: &NewTask,
        slot_owner: Option<TaskId>,
    ) -> Result<(), ApplyError> {
        if task.id.0 == 0 {
            return Err(ApplyError::Invalid(format!(
                "{entry}: task id 0 is reserved"
            )));
        }
        if !task.needs.is_empty()
            && crate::quota::normalize(task.needs.clone(), false).as_ref() != Ok(&task.needs)
        {
            return Err(ApplyError::Invalid(format!(
                "{entry}: task {} has needs that are not normalized",
                task.id
            )));
        }
        if self.tasks.contains_key(&task.id) {
            return Err(ApplyError::DuplicateTask {
                entry,
                task: task.id,
            });
        }
        if let Some(key) = &task.idempotency_key
            && let Some((holder, _)) = self.idempotency.get(&task.user_id, key)
        {
            return Err(ApplyError::IdempotencyKeyInUse {
                entry,
                user_id: task.user_id.clone(),
                key: key.clone(),
                holder,
            });
        }
        if let Some(slot) = &task.slot
            && let Some(holder) = self.slots.get(slot)
            && Some(holder) != slot_owner
        {
            return Err(ApplyError::SlotBusy {
                slot: slot.clone(),
                holder,
            });
        }
        Ok(())
    }

    /// Inserts a new (checked) task as waiting or delayed.
    fn insert_task(&mut self, t: NewTask) {
        let status = t.initial_status();
        let task_type = self.intern(&t.task_type);
        let user_id = self.intern(&t.user_id);
        let extra = if t.slot.is_some()
            || t.codepool.is_some()
            || t.mode.is_some()
            || !t.needs.is_empty()
        {
            Some(Box::new(TaskExtra {
                slot: t.slot.map(Into::into),
                codepool: t.codepool.map(Into::into),
                mode: t.mode.map(Into::into),
                resources: Default::default(),
                deferrals: 0,
                needs: self.intern_needs(&t.needs),
            }))
        } else {
            None
        };
        let mut task = Task {
            id: t.id,
            task_type,
            user_id,
            data: t.data.into(),
            status,
            priority: t.priority,
            attempts: t.attempts,
            max_attempts: t.max_attempts,
            result: None,
            worker_id: None,
            created: t.created,
            deadline: t.deadline.max(0),
            requested_start_time: t.requested_start_time.max(0),
            extra,
            slot_hash: 0,
            holds_pool: false,
        };
        if let Some(slot) = task.slot() {
            task.slot_hash = self.slots.insert(slot, task.id);
        }
        task.holds_pool = task.codepool().is_some();
        if let Some(key) = t.idempotency_key {
            let inserted =
                self.idempotency
                    .insert(task.user_id.clone(), key.into(), task.id, task.created);
            assert!(inserted, "check_new_task refused known keys");
        }
        self.index_pending(&task);
        self.pool_ref(task.codepool());
        self.counts[status.index()] += 1;
        self.tasks.insert(task.id, Arc::new(task));
    }

    /// Queues a waiting task under its owner's current service level.
    pub(crate) fn queue_waiting(&mut self, task: &Task) {
        let level = self.level_of(&task.user_id);
        self.waiting.insert(Queued {
            group: level.group,
            resources: &level.resources,
            user: &task.user_id,
            task_type: &task.task_type,
            priority: task.priority(),
            id: task.id,
            weight: level.weight,
            needs: task.extra.as_ref().and_then(|e| e.needs.as_ref()),
        });
    }

    /// Adds a waiting or delayed task to the queues it belongs to.
    pub(crate) fn index_pending(&mut self, task: &Task) {
        match task.status {
            TaskStatus::Waiting => {
                self.queue_waiting(task);
            }
            TaskStatus::Delayed => {
                self.delayed.insert((task.requested_start_time, task.id));
            }
            _ => return,
        }
        if task.deadline > 0 {
            self.deadlines.insert((task.deadline, task.id));
        }
    }

    fn change_status(
        &mut self,
        id: TaskId,
        to: TaskStatus,
        attempt: u32,
        result: Option<String>,
    ) -> Result<(), ApplyError> {
        let task = self.tasks.get(&id).ok_or(ApplyError::NoSuchTask {
            entry: "task_status_change",
            task: id,
        })?;
        let from = task.status;
        let legal = matches!(
            (from, to),
            (
                TaskStatus::Running,
                TaskStatus::Finished | TaskStatus::Error | TaskStatus::Waiting
            ) | (TaskStatus::Waiting, TaskStatus::Error)
                | (TaskStatus::Delayed, TaskStatus::Waiting | TaskStatus::Error)
        );
        if !legal {
            return Err(ApplyError::IllegalTransition { task: id, from, to });
        }
        if attempt != task.attempts {
            return Err(ApplyError::WrongAttempt {
                task: id,
                got: attempt,
                expected: task.attempts,
            });
        }
        let group = self.group_of_user(&task.user_id);
        let task = Arc::make_mut(self.tasks.get_mut(&id).expect("checked above"));
        // Leave the old status's indexes.
        match from {
            TaskStatus::Running => {
                let worker = task
                    .worker_id
                    .as_ref()
                    .expect("a running task has a worker");
                let mut counters = RunCounters {
                    running: &mut self.running,
                    resources: &mut self.resources_in_use,
                    tenants: &mut self.tenant_use,
                };
                counters.leave(worker, id, group);
            }
            TaskStatus::Waiting => {
                self.waiting
                    .remove(&task.user_id, &task.task_type, task.priority(), id);
            }
            TaskStatus::Delayed => {
                self.delayed.remove(&(task.requested_start_time, id));
            }
            TaskStatus::Finished | TaskStatus::Error => unreachable!("ended tasks do not move"),
        }
        if matches!(from, TaskStatus::Waiting | TaskStatus::Delayed) && task.deadline > 0 {
            self.deadlines.remove(&(task.deadline, id));
        }
        self.counts[from.index()] -= 1;
        self.counts[to.index()] += 1;
        task.status = to;
        if from == TaskStatus::Running || result.is_some() {
            task.result = result.map(Into::into);
        }
        // Enter the new status's indexes.
        if to.is_final() {
            if task.slot_hash != 0 {
                self.slots.free_held(task.slot_hash, id);
                task.slot_hash = 0;
            }
            self.ended.insert((task.created, id));
            if task.holds_pool {
                Self::pool_unref(&mut self.pool_refs, task.codepool());
                task.holds_pool = false;
            }
        } else {
            let task = self.tasks.get(&id).expect("checked above").clone();
            self.index_pending(&task);
        }
        Ok(())
    }

    fn release_slot(&mut self, slot: &str, holder: TaskId) {
        self.slots.free(slot, holder);
    }

    fn set_worker_status(
        &mut self,
        worker_id: &str,
        status: WorkerStatus,
    ) -> Result<(), ApplyError> {
        let worker = self
            .workers
            .get_mut(worker_id)
            .ok_or_else(|| ApplyError::Invalid(format!("worker {worker_id} is not known")))?;
        worker.status = status;
        Ok(())
    }

    /// Returns the shared copy of a string used by many tasks (types, users, workers).
    pub(crate) fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(existing) = self.interned.get(s) {
            return existing.clone();
        }
        let new: Arc<str> = Arc::from(s);
        self.interned.insert(new.clone());
        new
    }

    /// Removes a waiting task from its queue ahead of the entry that will take it out of the
    /// waiting state (the leader does this when it decides; the apply that follows finds it gone).
    pub(crate) fn unqueue(&mut self, id: TaskId) {
        if let Some(task) = self.tasks.get(&id) {
            match task.status {
                TaskStatus::Waiting => {
                    self.waiting
                        .remove(&task.user_id, &task.task_type, task.priority(), id);
                }
                TaskStatus::Delayed => {
                    self.delayed.remove(&(task.requested_start_time, id));
                }
                _ => {}
            }
            if task.deadline > 0 {
                self.deadlines.remove(&(task.deadline, id));
            }
        }
    }

    /// Checks every derived index against the tasks; for tests, debug assertions and every
    /// restored state. On a large state (a restore of millions of tasks) its two halves run
    /// side by side, each reading the state only.
    ///
    /// # Errors
    /// A description of the first inconsistency found (the tasks' half's first).
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.tasks.len() < PARALLEL_CHECK_TASKS {
            self.check_tasks()?;
            return self.check_counters();
        }
        let (tasks, counters) = std::thread::scope(|s| {
            let counters = s.spawn(|| self.check_counters());
            (self.check_tasks(), counters.join())
        });
        tasks?;
        counters.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// Every task in the indexes of its status, the counts, the waiting index and the slots.
    fn check_tasks(&self) -> Result<(), String> {
        let mut counts = [0u64; 5];
        let mut waiting = 0usize;
        for task in self.tasks.values() {
            counts[task.status.index()] += 1;
            match task.status {
                // Checked from the index's side below: each entry names a distinct waiting
                // task of its queue's owner, type and priority, and there are as many entries
                // as waiting tasks, so every waiting task is queued, once, where it belongs.
                TaskStatus::Waiting => waiting += 1,
                TaskStatus::Delayed => {
                    if !self.delayed.contains(&(task.requested_start_time, task.id)) {
                        return Err(format!("delayed task {} is not queued", task.id));
                    }
                }
                TaskStatus::Running => {
                    let worker = task
                        .worker_id
                        .as_ref()
                        .ok_or_else(|| format!("running task {} has no worker", task.id))?;
                    if !self
                        .running
                        .get(worker)
                        .is_some_and(|r| r.contains(task.id))
                    {
                        return Err(format!("running task {} not counted on {worker}", task.id));
                    }
                }
                TaskStatus::Finished | TaskStatus::Error => {
                    if !self.ended.contains(&(task.created, task.id)) {
                        return Err(format!("ended task {} not indexed", task.id));
                    }
                }
            }
            if let Some(slot) = task.slot() {
                let live = !task.status.is_final();
                let held = self.slots.get(slot) == Some(task.id);
                if live != held {
                    return Err(format!("task {} and slot {slot} disagree", task.id));
                }
                let hash = if live { self.slots.hash(slot) } else { 0 };
                if task.slot_hash != hash {
                    return Err(format!(
                        "task {} keeps slot hash {:#x}, expected {hash:#x}",
                        task.id, task.slot_hash
                    ));
                }
            } else if task.slot_hash != 0 {
                return Err(format!(
                    "task {} keeps a slot hash but has no slot",
                    task.id
                ));
            }
            if task.holds_pool != (!task.status.is_final() && task.codepool().is_some()) {
                return Err(format!(
                    "task {} counts in its pool's references: {}",
                    task.id, task.holds_pool
                ));
            }
        }
        if counts != self.counts {
            return Err(format!("counts {:?} != {:?}", self.counts, counts));
        }
        if waiting != self.waiting.len() {
            return Err(format!(
                "waiting index holds {} tasks, {waiting} are waiting",
                self.waiting.len()
            ));
        }
        self.waiting.check()?;
        self.check_waiting_entries()?;
        let running: usize = self.running.values().map(|r| r.len()).sum();
        if running as u64 != counts[TaskStatus::Running.index()] {
            return Err("running sets disagree with running tasks".into());
        }
        // Every busy slot is held by a live task or a prepared task of an open transaction
        // (so a cancel, a rollback or an abandoned transaction cannot leave one behind).
        for (slot, holder) in self.slots.iter() {
            let live = self
                .tasks
                .get(&holder)
                .is_some_and(|t| !t.status.is_final() && t.slot() == Some(slot));
            let prepared = self.transactions.values().any(|tx| {
                tx.prepared
                    .iter()
                    .any(|t| t.id == holder && t.slot.as_deref() == Some(slot))
            });
            if !live && !prepared {
                return Err(format!(
                    "slot {slot} is held by task {holder}, which does not hold it"
                ));
            }
        }
        Ok(())
    }

    /// Every entry of the waiting index against the task it names, walking the queues in their
    /// order (a restore of a million waiting tasks checks them without a search in a queue
    /// per task): the task is waiting, with the queue's owner, type and priority, and its
    /// owner's queues are in the owner's group.
    fn check_waiting_entries(&self) -> Result<(), String> {
        let mut tenant: Option<&Arc<str>> = None;
        for (user, group, task_type, priority, id) in self.waiting.entries() {
            if tenant.is_none_or(|t| !Arc::ptr_eq(t, user)) {
                tenant = Some(user);
                let expected = self.group_of_user(user);
                if group != expected {
                    return Err(format!(
                        "waiting tasks of {user} are queued in group {group}, not in their owner's group {expected}"
                    ));
                }
            }
            let Some(task) = self.tasks.get(&id) else {
                return Err(format!(
                    "waiting index holds task {id}, which does not exist"
                ));
            };
            if task.status != TaskStatus::Waiting
                || task.user_id != *user
                || task.task_type != *task_type
                || task.priority() != priority
            {
                return Err(format!(
                    "waiting index holds task {id} under {user}, type {task_type}, priority {priority}: the task is {:?}, of {}, type {}, priority {}",
                    task.status,
                    task.user_id,
                    task.task_type,
                    task.priority()
                ));
            }
        }
        Ok(())
    }

    /// The counters against the running tasks, the idempotency keys, the code pools' references
    /// and the tenants' use.
    fn check_counters(&self) -> Result<(), String> {
        // Resource counters equal the sums over the running tasks' recorded resources.
        let mut in_use: HashMap<Arc<str>, u32> = HashMap::default();
        for task in self.tasks.values() {
            if task.status == TaskStatus::Running {
                for r in task.resources() {
                    *in_use.entry(Arc::from(&**r)).or_default() += 1;
                }
            }
        }
        if in_use != self.resources_in_use {
            return Err(format!(
                "resource counters {:?} != running tasks' resources {in_use:?}",
                self.resources_in_use
            ));
        }
        for (worker, set) in &self.running {
            let mut per: HashMap<Arc<str>, u32> = HashMap::default();
            for (id, key) in set.entries() {
                let task = self
                    .tasks
                    .get(&id)
                    .ok_or_else(|| format!("{worker} runs unknown task {id}"))?;
                if task.task_type != key.task_type || task.user_id != key.user {
                    return Err(format!("running set of {worker} misdescribes task {id}"));
                }
                for r in key.resources.iter() {
                    *per.entry(r.clone()).or_default() += 1;
                }
            }
            let counted: HashMap<Arc<str>, u32> =
                set.resources().map(|(r, n)| (r.clone(), n)).collect();
            if per != counted {
                return Err(format!(
                    "resource counters of {worker} disagree with its tasks"
                ));
            }
        }
        self.idempotency.check()?;
        self.check_pools()?;
        self.check_tenant_use()?;
        Ok(())
    }

    /// Tenants' use equals the running tasks' needs summed per owner and per owner's group, and
    /// every worker's amounts equal its tasks' needs.
    fn check_tenant_use(&self) -> Result<(), String> {
        let mut book = TenantBook::default();
        for task in self.tasks.values() {
            if task.status == TaskStatus::Running {
                book.charge(
                    &task.user_id,
                    self.group_of_user(&task.user_id),
                    task.needs(),
                );
            }
        }
        if book != self.tenant_use {
            return Err(format!(
                "tenant use {:?} != the running tasks' needs {book:?}",
                self.tenant_use
            ));
        }
        for (worker, set) in &self.running {
            let mut per: HashMap<Arc<str>, u64> = HashMap::default();
            for (id, key) in set.entries() {
                let task = &self.tasks[&id];
                if key.needs() != task.needs() {
                    return Err(format!(
                        "running set of {worker} misstates the needs of {id}"
                    ));
                }
                for (d, n) in key.needs() {
                    *per.entry(d.clone()).or_default() += n;
                }
            }
            let counted: HashMap<Arc<str>, u64> =
                set.amounts().map(|(d, n)| (d.clone(), n)).collect();
            if per != counted {
                return Err(format!(
                    "amount counters of {worker} disagree with its tasks"
                ));
            }
        }
        for (tenant, quota) in self.quotas.iter() {
            let list: Vec<(String, u64)> = quota.iter().map(|(d, n)| (d.to_string(), *n)).collect();
            if crate::quota::normalize(list.clone(), true).as_ref() != Ok(&list) {
                return Err(format!("the quota of {tenant} is not normalized"));
            }
        }
        Ok(())
    }
}

impl Level {
    fn to_model(&self) -> ServiceLevel {
        ServiceLevel {
            group: self.group,
            weight: self.weight,
            resources: self.resources.iter().map(|r| r.to_string()).collect(),
        }
    }
}

/// The counters a running task is charged to: its worker's running set, the cluster's resource
/// counters and its tenants' use.
struct RunCounters<'a> {
    running: &'a mut HashMap<Arc<str>, RunningSet>,
    resources: &'a mut HashMap<Arc<str>, u32>,
    tenants: &'a mut TenantBook,
}

impl RunCounters<'_> {
    /// Takes a running task of `worker` out of every counter (its owner is in `group` now).
    fn leave(&mut self, worker: &str, id: TaskId, group: GroupId) {
        let Some(set) = self.running.get_mut(worker) else {
            return;
        };
        if let Some(key) = set.remove(id) {
            for r in key.resources.iter() {
                let n = self
                    .resources
                    .get_mut(r)
                    .expect("a running task's resources are counted");
                *n -= 1;
                if *n == 0 {
                    self.resources.remove(r);
                }
            }
            self.tenants.release(&key.user, group, key.needs());
        }
        if set.is_empty() {
            self.running.remove(worker);
        }
    }
}

/// Sorted, without duplicates or empty names.
pub(crate) fn normalize_resources(mut names: Vec<String>) -> Vec<String> {
    names.retain(|n| !n.is_empty());
    names.sort();
    names.dedup();
    names
}

/// Drops a task's extra fields when none is set, as a snapshot restores it.
fn tidy_extra(task: &mut Task) {
    if task
        .extra
        .as_deref()
        .is_some_and(|e| *e == TaskExtra::default())
    {
        task.extra = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::NewTask;

    fn state_of(tasks: u64) -> BrokerState {
        let mut s = BrokerState::default();
        for id in 1..=tasks {
            let t = NewTask {
                id: TaskId(id),
                task_type: "t".into(),
                user_id: format!("u{}", id % 3),
                data: String::new(),
                max_attempts: 1,
                attempts: 0,
                requested_start_time: 0,
                deadline: 0,
                slot: (id % 10 == 0).then(|| format!("s{id}")),
                codepool: None,
                mode: None,
                created: 1,
                idempotency_key: Some(format!("k{id}")),
                priority: 0,
                needs: Vec::new(),
            };
            s.apply(id, LogEntry::AddTask(t)).unwrap();
        }
        s
    }

    #[test]
    fn a_large_state_is_checked_in_two_halves_that_each_find_their_faults() {
        // Goal: past the size where the two halves run side by side, a fault of either half
        // is still reported, the tasks' half's first.
        let good = state_of(PARALLEL_CHECK_TASKS as u64);
        good.check_invariants().unwrap();
        let mut tasks_fault = good.clone();
        tasks_fault.counts[TaskStatus::Waiting.index()] += 1;
        let e = tasks_fault.check_invariants().unwrap_err();
        assert!(e.starts_with("counts"), "{e}");
        let mut counters_fault = good.clone();
        counters_fault.resources_in_use.insert("db".into(), 1);
        let e = counters_fault.check_invariants().unwrap_err();
        assert!(e.starts_with("resource counters"), "{e}");
        let mut both = counters_fault;
        both.counts[TaskStatus::Waiting.index()] += 1;
        assert!(both.check_invariants().unwrap_err().starts_with("counts"));
    }
    #[test]
    fn every_fault_of_the_waiting_index_is_found_from_its_entries() {
        // Goal: the walk over the waiting index's entries finds each way an entry can be wrong,
        // with the index's count kept equal to the waiting tasks' (so only the walk sees it).
        let good = state_of(30);
        good.check_invariants().unwrap();
        let user: Arc<str> = "u1".into();
        let other: Arc<str> = "u2".into();
        let task_type: Arc<str> = "t".into();
        let none: Resources = Arc::from(Vec::new());
        let requeued = |s: &mut BrokerState, user: &Arc<str>, priority: i32, id: u64| {
            assert!(s.waiting.remove("u1", "t", 0, TaskId(1)));
            let group = s.waiting.group_of(user).unwrap();
            assert!(s.waiting.insert(Queued {
                group,
                resources: &none,
                user,
                task_type: &task_type,
                priority,
                id: TaskId(id),
                weight: 1,
                needs: None,
            }));
        };
        type Fault<'a> = Box<dyn Fn(&mut BrokerState) + 'a>;
        let faults: [(&str, Fault); 4] = [
            (
                "under u1, type t, priority 5",
                Box::new(|s| requeued(s, &user, 5, 1)),
            ),
            (
                "under u2, type t, priority 0",
                Box::new(|s| requeued(s, &other, 0, 1)),
            ),
            (
                "task 999, which does not exist",
                Box::new(|s| requeued(s, &user, 0, 999)),
            ),
            (
                "queued in group 7",
                Box::new(|s| s.waiting.set_level("u1", 7, &none, 1)),
            ),
        ];
        for (expected, fault) in faults {
            let mut s = good.clone();
            fault(&mut s);
            let e = s.check_invariants().unwrap_err();
            assert!(e.contains(expected), "{expected}: {e}");
        }
    }
}
