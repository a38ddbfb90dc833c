//! Snapshots: owned records of a whole state, and rebuilding a state (with its indexes) from them.
//!
//! The byte format lives in `majordodo-proto`; this module only knows the records. A state can be
//! rebuilt record by record through [`StateBuilder`], so a decoder never needs the whole snapshot
//! in memory twice.

use std::sync::Arc;

use crate::credential::WorkerCredential;
use crate::idempotency::IdempotencyKey;
use crate::model::{
    CodePool, Millis, ServiceLevel, Task, TaskExtra, TaskId, TaskStatus, Transaction, WorkerRecord,
    WorkerStatus,
};
use crate::quota::QuotaTenant;
use crate::scheduler::RunKey;
use crate::state::{BrokerState, GroupMapper, Level, normalize_resources};

/// A task as stored in a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskRecord {
    /// Task id.
    pub id: u64,
    /// Task type.
    pub task_type: String,
    /// Owner.
    pub user_id: String,
    /// Payload.
    pub data: String,
    /// Status code (see [`TaskStatus::code`]).
    pub status: u8,
    /// Attempts made.
    pub attempts: u32,
    /// Attempt limit.
    pub max_attempts: u32,
    /// Last result.
    pub result: Option<String>,
    /// Last worker.
    pub worker_id: Option<String>,
    /// Submission time.
    pub created: Millis,
    /// Deadline, 0 = none.
    pub deadline: Millis,
    /// Requested start, 0 = now.
    pub requested_start_time: Millis,
    /// Slot.
    pub slot: Option<String>,
    /// Code pool.
    pub codepool: Option<String>,
    /// Mode.
    pub mode: Option<String>,
    /// Resources of the last assignment.
    pub resources: Vec<String>,
    /// Attempts that answered "retry later" (snapshot version 3).
    pub deferrals: u32,
    /// Priority inside its owner's queue.
    pub priority: i32,
    /// What each attempt needs (sorted by dimension).
    pub needs: Vec<(String, u64)>,
}

impl From<&Task> for TaskRecord {
    fn from(t: &Task) -> Self {
        TaskRecord {
            id: t.id.0,
            task_type: t.task_type.to_string(),
            user_id: t.user_id.to_string(),
            data: t.data.to_string(),
            status: t.status.code(),
            attempts: t.attempts,
            max_attempts: t.max_attempts,
            result: t.result.as_deref().map(str::to_string),
            worker_id: t.worker_id.as_deref().map(str::to_string),
            created: t.created,
            deadline: t.deadline,
            requested_start_time: t.requested_start_time,
            slot: t.slot().map(str::to_string),
            codepool: t.codepool().map(str::to_string),
            mode: t.mode().map(str::to_string),
            resources: t.resources().iter().map(|r| r.to_string()).collect(),
            deferrals: t.deferrals(),
            priority: t.priority(),
            needs: t.needs().iter().map(|(d, n)| (d.to_string(), *n)).collect(),
        }
    }
}

/// A worker as stored in a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerSnapshot {
    /// Worker id.
    pub id: String,
    /// Where it runs.
    pub location: String,
    /// Its process.
    pub process_id: String,
    /// Last connection time.
    pub last_connection: Millis,
    /// Status code (see [`WorkerStatus::code`]).
    pub status: u8,
}

impl From<&WorkerRecord> for WorkerSnapshot {
    fn from(w: &WorkerRecord) -> Self {
        WorkerSnapshot {
            id: w.id.to_string(),
            location: w.location.clone(),
            process_id: w.process_id.clone(),
            last_connection: w.last_connection,
            status: w.status.code(),
        }
    }
}

/// Scalars of a snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// Position of the last entry the snapshot includes.
    pub lsn: u64,
    /// Highest task id used.
    pub max_task_id: u64,
    /// Highest transaction id used.
    pub max_transaction_id: u64,
}

/// A whole state as owned records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Scalars.
    pub header: SnapshotHeader,
    /// Every task, in id order.
    pub tasks: Vec<TaskRecord>,
    /// Every worker.
    pub workers: Vec<WorkerSnapshot>,
    /// Open transactions.
    pub transactions: Vec<Transaction>,
    /// Code pools.
    pub codepools: Vec<CodePool>,
    /// Idempotency keys kept, oldest first.
    pub idempotency_keys: Vec<IdempotencyKey>,
    /// Service levels set at runtime, by user (restored before the tasks, which are queued
    /// under them).
    pub service_levels: Vec<(String, ServiceLevel)>,
    /// Quotas set at runtime.
    pub quotas: Vec<(QuotaTenant, Vec<(String, u64)>)>,
    /// Worker credentials (verifiers only), revoked ones included, in id order.
    pub credentials: Vec<WorkerCredential>,
}

/// A consistent copy of everything a snapshot holds, cheap to take between two rounds: tasks are
/// shared (copy-on-write) pointers, so taking it copies one pointer per task, and the state goes on
/// changing while the copy is encoded elsewhere.
#[derive(Clone, Debug)]
pub struct SnapshotSource {
    /// Scalars.
    pub header: SnapshotHeader,
    /// Every task, in id order.
    pub tasks: Vec<Arc<Task>>,
    /// Every worker.
    pub workers: Vec<WorkerRecord>,
    /// Open transactions.
    pub transactions: Vec<Transaction>,
    /// Code pools.
    pub codepools: Vec<CodePool>,
    /// Idempotency keys kept, oldest first (shared strings: copying one is a pointer).
    pub idempotency_keys: Vec<IdempotencyKey>,
    /// Service levels set at runtime, by user.
    pub service_levels: Vec<(String, ServiceLevel)>,
    /// Quotas set at runtime.
    pub quotas: Vec<(QuotaTenant, Vec<(String, u64)>)>,
    /// Worker credentials (verifiers only), revoked ones included, in id order.
    pub credentials: Vec<WorkerCredential>,
}

/// Why a snapshot cannot be turned back into a state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// A record is invalid.
    #[error("snapshot {what}: {reason}")]
    Invalid {
        /// Which record.
        what: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(what: impl Into<String>, reason: impl Into<String>) -> RestoreError {
    RestoreError::Invalid {
        what: what.into(),
        reason: reason.into(),
    }
}

impl BrokerState {
    /// The scalars of a snapshot of this state.
    pub fn snapshot_header(&self) -> SnapshotHeader {
        SnapshotHeader {
            lsn: self.last_lsn,
            max_task_id: self.max_task_id,
            max_transaction_id: self.max_transaction_id,
        }
    }

    /// A cheap consistent copy for writing a snapshot.
    pub fn snapshot_source(&self) -> SnapshotSource {
        SnapshotSource {
            header: self.snapshot_header(),
            tasks: self.tasks.values().cloned().collect(),
            workers: self.workers().cloned().collect(),
            transactions: self.transactions().cloned().collect(),
            codepools: self.codepools().cloned().collect(),
            idempotency_keys: self.idempotency_keys().collect(),
            service_levels: self.service_level_records(),
            quotas: self.quota_records(),
            credentials: self.credentials().cloned().collect(),
        }
    }

    fn quota_records(&self) -> Vec<(QuotaTenant, Vec<(String, u64)>)> {
        self.quotas
            .iter()
            .map(|(t, q)| (t, q.iter().map(|(d, n)| (d.to_string(), *n)).collect()))
            .collect()
    }

    fn service_level_records(&self) -> Vec<(String, ServiceLevel)> {
        self.service_levels()
            .map(|(u, l)| (u.to_string(), l))
            .collect()
    }

    /// The whole state as owned records.
    pub fn to_snapshot(&self) -> Snapshot {
        Snapshot {
            header: self.snapshot_header(),
            tasks: self.tasks().map(TaskRecord::from).collect(),
            workers: self.workers().map(WorkerSnapshot::from).collect(),
            transactions: self.transactions().cloned().collect(),
            codepools: self.codepools().cloned().collect(),
            idempotency_keys: self.idempotency_keys().collect(),
            service_levels: self.service_level_records(),
            quotas: self.quota_records(),
            credentials: self.credentials().cloned().collect(),
        }
    }

    /// Rebuilds a state from owned records.
    ///
    /// # Errors
    /// [`RestoreError`] when the records are inconsistent.
    pub fn from_snapshot(
        snapshot: Snapshot,
        mapper: Arc<dyn GroupMapper>,
    ) -> Result<BrokerState, RestoreError> {
        let mut b = StateBuilder::new(snapshot.header, mapper);
        for (user, level) in snapshot.service_levels {
            b.add_service_level(&user, level)?;
        }
        for t in snapshot.tasks {
            b.add_task(t)?;
        }
        for w in snapshot.workers {
            b.add_worker(w)?;
        }
        for t in snapshot.transactions {
            b.add_transaction(t)?;
        }
        for c in snapshot.codepools {
            b.add_codepool(c)?;
        }
        for k in snapshot.idempotency_keys {
            b.add_idempotency_key(k)?;
        }
        for (tenant, quota) in snapshot.quotas {
            b.add_quota(tenant, quota)?;
        }
        for c in snapshot.credentials {
            b.add_credential(c)?;
        }
        b.finish()
    }
}

/// Rebuilds a state record by record.
#[derive(Debug)]
pub struct StateBuilder {
    state: BrokerState,
    /// The idempotency keys added, indexed by [`StateBuilder::finish`].
    keys: Vec<IdempotencyKey>,
}

impl StateBuilder {
    /// Starts from the scalars.
    pub fn new(header: SnapshotHeader, mapper: Arc<dyn GroupMapper>) -> StateBuilder {
        let mut state = BrokerState::new(mapper);
        state.last_lsn = header.lsn;
        state.max_task_id = header.max_task_id;
        state.max_transaction_id = header.max_transaction_id;
        StateBuilder {
            state,
            keys: Vec::new(),
        }
    }

    /// Adds a task.
    ///
    /// # Errors
    /// Duplicate id, unknown status, a running task without worker, a busy slot.
    pub fn add_task(&mut self, r: TaskRecord) -> Result<(), RestoreError> {
        let what = || format!("task {}", r.id);
        let s = &mut self.state;
        let id = TaskId(r.id);
        if r.id == 0 || s.tasks.contains_key(&id) {
            return Err(invalid(what(), "duplicate or zero id"));
        }
        let status = TaskStatus::from_code(r.status)
            .ok_or_else(|| invalid(what(), format!("unknown status code {}", r.status)))?;
        if status == TaskStatus::Running && r.worker_id.is_none() {
            return Err(invalid(what(), "running without a worker"));
        }
        let task_type = s.intern(&r.task_type);
        let user_id = s.intern(&r.user_id);
        let worker_id = r.worker_id.as_deref().map(|w| s.intern(w));
        let resources = normalize_resources(r.resources);
        let has_extra = r.slot.is_some()
            || r.codepool.is_some()
            || r.mode.is_some()
            || !resources.is_empty()
            || r.deferrals > 0
            || !r.needs.is_empty();
        let needs = crate::quota::normalize(r.needs, false)
            .map_err(|e| invalid(what(), format!("needs: {e}")))?;
        let needs = s.intern_needs(&needs);
        let mut task = Task {
            id,
            task_type,
            user_id,
            data: r.data.into(),
            status,
            priority: r.priority,
            attempts: r.attempts,
            max_attempts: r.max_attempts,
            result: r.result.map(Into::into),
            worker_id,
            created: r.created,
            deadline: r.deadline.max(0),
            requested_start_time: r.requested_start_time.max(0),
            extra: has_extra.then(|| {
                Box::new(TaskExtra {
                    slot: r.slot.map(Into::into),
                    codepool: r.codepool.map(Into::into),
                    mode: r.mode.map(Into::into),
                    resources: s.intern_resources(&resources),
                    deferrals: r.deferrals,
                    needs,
                })
            }),
            slot_hash: 0,
            holds_pool: false,
        };
        if !status.is_final()
            && let Some(slot) = task.slot()
        {
            if let Some(holder) = s.slots.get(slot) {
                return Err(invalid(
                    what(),
                    format!("slot {slot} also held by task {holder}"),
                ));
            }
            task.slot_hash = s.slots.insert(slot, id);
        }
        match status {
            TaskStatus::Waiting => {
                s.queue_waiting(&task);
            }
            TaskStatus::Delayed => {
                s.delayed.insert((task.requested_start_time, id));
            }
            TaskStatus::Running => {
                let worker = task.worker_id.clone().expect("checked above");
                // Counters are rebuilt from the running tasks' recorded resources.
                let charged = s.intern_resources(&resources);
                for r in charged.iter() {
                    *s.resources_in_use.entry(r.clone()).or_default() += 1;
                }
                let needs = task.extra.as_ref().and_then(|e| e.needs.clone());
                let group = s.group_of_user(&task.user_id);
                s.tenant_use
                    .charge(&task.user_id, group, needs.as_deref().unwrap_or(&[]));
                s.running.entry(worker).or_default().insert(
                    id,
                    RunKey {
                        task_type: task.task_type.clone(),
                        user: task.user_id.clone(),
                        resources: charged,
                        needs,
                    },
                );
            }
            TaskStatus::Finished | TaskStatus::Error => {
                s.ended.insert((task.created, id));
            }
        }
        if matches!(status, TaskStatus::Waiting | TaskStatus::Delayed) && task.deadline > 0 {
            s.deadlines.insert((task.deadline, id));
        }
        if !status.is_final() {
            s.pool_ref(task.codepool());
            task.holds_pool = task.codepool().is_some();
        }
        s.counts[status.index()] += 1;
        s.max_task_id = s.max_task_id.max(r.id);
        s.tasks.insert(id, Arc::new(task));
        Ok(())
    }

    /// Adds a service level set at runtime; every one comes before the first task.
    ///
    /// # Errors
    /// An empty or duplicate user, or a level after the first task.
    pub fn add_service_level(
        &mut self,
        user: &str,
        level: ServiceLevel,
    ) -> Result<(), RestoreError> {
        let what = || format!("service level of {user:?}");
        if user.is_empty() {
            return Err(invalid(what(), "empty user id"));
        }
        if !self.state.tasks.is_empty() {
            return Err(invalid(what(), "after the first task"));
        }
        let user_id = self.state.intern(user);
        if self.state.service_levels.contains_key(&user_id) {
            return Err(invalid(what(), "duplicate user"));
        }
        let resources = normalize_resources(level.resources);
        let resources = self.state.intern_resources(&resources);
        self.state.service_levels.insert(
            user_id,
            Level {
                group: level.group,
                resources,
                weight: level.weight.max(1),
            },
        );
        Ok(())
    }

    /// Adds a worker credential.
    ///
    /// # Errors
    /// A duplicate id, or an id, worker id or comment that is not acceptable.
    pub fn add_credential(&mut self, c: WorkerCredential) -> Result<(), RestoreError> {
        let what = || format!("credential {}", c.id);
        crate::credential::check_name("credential id", &c.id).map_err(|e| invalid(what(), e))?;
        crate::credential::check_name("worker id", &c.worker_id).map_err(|e| invalid(what(), e))?;
        if let Some(comment) = &c.comment {
            crate::credential::check_comment(comment).map_err(|e| invalid(what(), e))?;
        }
        if self.state.credentials.contains_key(&c.id) {
            return Err(invalid(what(), "duplicate id"));
        }
        self.state.credentials.insert(c.id.clone(), c);
        Ok(())
    }

    /// Adds a quota set at runtime.
    ///
    /// # Errors
    /// A duplicate tenant, an empty user, or amounts that are not valid.
    pub fn add_quota(
        &mut self,
        tenant: QuotaTenant,
        quota: Vec<(String, u64)>,
    ) -> Result<(), RestoreError> {
        let what = || format!("quota of {tenant}");
        if matches!(&tenant, QuotaTenant::User(u) if u.is_empty()) {
            return Err(invalid(what(), "empty user id"));
        }
        if self.state.quotas.get(&tenant).is_some() {
            return Err(invalid(what(), "duplicate tenant"));
        }
        let quota =
            crate::quota::normalize(quota, true).map_err(|e| invalid(what(), e.to_string()))?;
        let quota: crate::quota::Needs = quota
            .iter()
            .map(|(d, n)| (self.state.intern(d), *n))
            .collect::<Vec<_>>()
            .into();
        match tenant {
            QuotaTenant::User(u) => {
                let u = self.state.intern(&u);
                self.state.quotas.users.insert(u, quota);
            }
            QuotaTenant::Group(g) => {
                self.state.quotas.groups.insert(g, quota);
            }
        }
        Ok(())
    }

    /// Adds a worker.
    ///
    /// # Errors
    /// Unknown status or duplicate id.
    pub fn add_worker(&mut self, w: WorkerSnapshot) -> Result<(), RestoreError> {
        let status = WorkerStatus::from_code(w.status).ok_or_else(|| {
            invalid(
                format!("worker {}", w.id),
                format!("unknown status code {}", w.status),
            )
        })?;
        let id = self.state.intern(&w.id);
        if self.state.workers.contains_key(&id) {
            return Err(invalid(format!("worker {}", w.id), "duplicate id"));
        }
        self.state.workers.insert(
            id.clone(),
            WorkerRecord {
                id,
                location: w.location,
                process_id: w.process_id,
                last_connection: w.last_connection,
                status,
            },
        );
        Ok(())
    }

    /// Adds an open transaction (its prepared tasks keep their slots).
    ///
    /// # Errors
    /// Duplicate id or a busy slot.
    pub fn add_transaction(&mut self, t: Transaction) -> Result<(), RestoreError> {
        let s = &mut self.state;
        if s.transactions.contains_key(&t.id) {
            return Err(invalid(format!("transaction {}", t.id), "duplicate id"));
        }
        for task in &t.prepared {
            if let Some(slot) = &task.slot {
                if let Some(holder) = s.slots.get(slot) {
                    return Err(invalid(
                        format!("transaction {}", t.id),
                        format!("slot {slot} also held by task {holder}"),
                    ));
                }
                s.slots.insert(slot, task.id);
            }
            s.max_task_id = s.max_task_id.max(task.id.0);
        }
        s.max_transaction_id = s.max_transaction_id.max(t.id.0);
        s.transactions.insert(t.id, t);
        Ok(())
    }

    /// Adds a code pool, with the chunks it holds so far (more may follow through
    /// [`StateBuilder::add_codepool_chunk`]).
    ///
    /// # Errors
    /// Duplicate or empty id, more chunks or bytes than it declares.
    pub fn add_codepool(&mut self, c: CodePool) -> Result<(), RestoreError> {
        let what = format!("code pool {}", c.id);
        if c.id.is_empty() || self.state.codepools.contains_key(&c.id) {
            return Err(invalid(what, "duplicate or empty id"));
        }
        if c.chunks.len() > c.chunk_count as usize || c.received() > c.size {
            return Err(invalid(what, "holds more than it declares"));
        }
        self.state.insert_pool(c);
        Ok(())
    }

    /// Adds the next chunk of a code pool added before.
    ///
    /// # Errors
    /// Unknown pool, or more chunks or bytes than it declares.
    pub fn add_codepool_chunk(&mut self, id: &str, data: Vec<u8>) -> Result<(), RestoreError> {
        let what = || format!("code pool {id}");
        let pool = self
            .state
            .codepools
            .get_mut(id)
            .ok_or_else(|| invalid(what(), "chunk before its pool"))?;
        if pool.is_complete() || pool.received() + data.len() as u64 > pool.size || data.is_empty()
        {
            return Err(invalid(what(), "holds more than it declares"));
        }
        pool.chunks.push(Arc::from(data.into_boxed_slice()));
        Ok(())
    }

    /// Adds an idempotency key (its task may have been purged since).
    ///
    /// # Errors
    /// Task id 0, or a key (of the same owner) or a task that already has one.
    pub fn add_idempotency_key(&mut self, k: IdempotencyKey) -> Result<(), RestoreError> {
        let what = || format!("idempotency key of task {}", k.task_id);
        if k.task_id.0 == 0 {
            return Err(invalid(what(), "task id 0"));
        }
        let user_id = self.state.intern(&k.user_id);
        self.keys.push(IdempotencyKey { user_id, ..k });
        Ok(())
    }

    /// Finishes, checking every invariant.
    ///
    /// # Errors
    /// A description of the first inconsistency.
    pub fn finish(mut self) -> Result<BrokerState, RestoreError> {
        // The keys are indexed at once (see `IdempotencyKeys::from_keys`).
        self.state.idempotency = crate::idempotency::IdempotencyKeys::from_keys(self.keys)
            .map_err(|k| {
                invalid(
                    format!("idempotency key of task {}", k.task_id),
                    format!(
                        "the key {:?} of user {} or the task has another key already",
                        k.key, &*k.user_id
                    ),
                )
            })?;
        self.state
            .check_invariants()
            .map_err(|e| invalid("state", e))?;
        Ok(self.state)
    }
}
