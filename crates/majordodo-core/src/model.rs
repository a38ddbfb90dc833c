//! The task and worker model: identifiers, statuses and the records the state holds.

use std::fmt;
use std::sync::Arc;

/// Milliseconds since the UNIX epoch. Every timestamp in the core is one of these, handed in by the
/// caller (the core never reads a clock).
pub type Millis = i64;

/// Identifier of a task, assigned by the leader, strictly increasing over the life of a cluster.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(pub u64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Identifier of a transaction, assigned by the leader.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TransactionId(pub u64);

impl fmt::Display for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Group a task belongs to: its owner's service level (set at runtime, else computed by the
/// [`crate::GroupMapper`]).
pub type GroupId = u32;

/// The worker capacity group meaning "any group".
pub const ANY_GROUP: GroupId = 0;

/// The task type key of `max_threads_by_task_type` meaning "every type without its own entry".
pub const ANY_TASK_TYPE: &str = "any";

/// Status of a task. The numeric codes are those of the original's log and snapshot
/// formats.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    /// Waiting to be assigned to a worker.
    Waiting,
    /// Assigned to a worker, which runs it.
    Running,
    /// Ended successfully; `result` holds what the executor returned.
    Finished,
    /// Ended in failure for good (attempts used up, deadline passed).
    Error,
    /// Submitted with a start time in the future; becomes `Waiting` then.
    Delayed,
}

impl TaskStatus {
    /// Every status, in code order.
    pub const ALL: [TaskStatus; 5] = [
        TaskStatus::Waiting,
        TaskStatus::Running,
        TaskStatus::Finished,
        TaskStatus::Error,
        TaskStatus::Delayed,
    ];

    /// The numeric code of the original formats.
    pub fn code(self) -> u8 {
        match self {
            TaskStatus::Waiting => 0,
            TaskStatus::Running => 1,
            TaskStatus::Finished => 2,
            TaskStatus::Error => 4,
            TaskStatus::Delayed => 5,
        }
    }

    /// The status of a numeric code, if it is one.
    pub fn from_code(code: u8) -> Option<TaskStatus> {
        Some(match code {
            0 => TaskStatus::Waiting,
            1 => TaskStatus::Running,
            2 => TaskStatus::Finished,
            4 => TaskStatus::Error,
            5 => TaskStatus::Delayed,
            _ => return None,
        })
    }

    /// The lower-case name used by the HTTP API.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Waiting => "waiting",
            TaskStatus::Running => "running",
            TaskStatus::Finished => "finished",
            TaskStatus::Error => "error",
            TaskStatus::Delayed => "delayed",
        }
    }

    /// Parses the HTTP name (case-insensitive).
    pub fn parse(name: &str) -> Option<TaskStatus> {
        TaskStatus::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(name))
    }

    /// Whether the task has ended (finished or error) and will not change any more.
    pub fn is_final(self) -> bool {
        matches!(self, TaskStatus::Finished | TaskStatus::Error)
    }

    pub(crate) fn index(self) -> usize {
        match self {
            TaskStatus::Waiting => 0,
            TaskStatus::Running => 1,
            TaskStatus::Finished => 2,
            TaskStatus::Error => 3,
            TaskStatus::Delayed => 4,
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Status of a worker as the broker sees it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum WorkerStatus {
    /// Holds a live connection to the leader.
    Connected,
    /// Declared dead: silent for longer than the allowed idle time; its tasks were failed.
    Dead,
    /// Connection lost; becomes `Dead` unless it comes back in time.
    Disconnected,
}

impl WorkerStatus {
    /// The numeric code of the original formats.
    pub fn code(self) -> u8 {
        match self {
            WorkerStatus::Connected => 0,
            WorkerStatus::Dead => 1,
            WorkerStatus::Disconnected => 2,
        }
    }

    /// The status of a numeric code, if it is one.
    pub fn from_code(code: u8) -> Option<WorkerStatus> {
        Some(match code {
            0 => WorkerStatus::Connected,
            1 => WorkerStatus::Dead,
            2 => WorkerStatus::Disconnected,
            _ => return None,
        })
    }

    /// The upper-case name used by the HTTP API.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Connected => "CONNECTED",
            WorkerStatus::Dead => "DEAD",
            WorkerStatus::Disconnected => "DISCONNECTED",
        }
    }
}

impl fmt::Display for WorkerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task as the broker holds it.
///
/// Kept compact because a broker holds millions of them: strings shared by many tasks (type, user,
/// worker) are interned `Arc<str>`, rarely used fields live in [`TaskExtra`].
#[derive(Clone, Debug)]
pub struct Task {
    /// Task id.
    pub id: TaskId,
    /// Task type, used by worker capacity and to pick the executor.
    pub task_type: Arc<str>,
    /// Owner (tenant).
    pub user_id: Arc<str>,
    /// Opaque payload handed to the executor.
    pub data: Box<str>,
    /// Current status.
    pub status: TaskStatus,
    /// Order inside its owner's queue: higher first; 0 by default. Kept here rather than in
    /// [`TaskExtra`] because every queue change reads it (it fits in the padding after
    /// `status`).
    pub priority: i32,
    /// Number of assignments so far (the attempt number of the current or last execution).
    pub attempts: u32,
    /// 0 = unlimited retries, 1 = at most once, N = at most N executions.
    pub max_attempts: u32,
    /// Result of the last execution (or the reason it ended, such as `deadline_expired`).
    pub result: Option<Box<str>>,
    /// Last worker the task was assigned to.
    pub worker_id: Option<Arc<str>>,
    /// When the task was submitted (set by the leader, carried by the log entry).
    pub created: Millis,
    /// Absolute deadline; 0 = none. After it the task is not (re)scheduled.
    pub deadline: Millis,
    /// Requested start time; 0 = now.
    pub requested_start_time: Millis,
    /// Rarely used fields.
    pub extra: Option<Box<TaskExtra>>,
    /// The hash of the slot in the state's slot table while the task holds it (0: it holds
    /// none), so that its end frees the slot without reading [`TaskExtra`]. Derived, and local
    /// to one state (the table's hash seed): not compared.
    pub(crate) slot_hash: crate::slot_table::SlotHash,
    /// Whether the task counts in the state's references to its code pool (it names one and is
    /// not ended), for the same reason. Derived: not compared.
    pub(crate) holds_pool: bool,
}

impl PartialEq for Task {
    /// Every field but the derived `slot_hash` and `holds_pool`.
    fn eq(&self, other: &Self) -> bool {
        let Task {
            id,
            task_type,
            user_id,
            data,
            status,
            priority,
            attempts,
            max_attempts,
            result,
            worker_id,
            created,
            deadline,
            requested_start_time,
            extra,
            slot_hash: _,
            holds_pool: _,
        } = self;
        *id == other.id
            && *task_type == other.task_type
            && *user_id == other.user_id
            && *data == other.data
            && *status == other.status
            && *priority == other.priority
            && *attempts == other.attempts
            && *max_attempts == other.max_attempts
            && *result == other.result
            && *worker_id == other.worker_id
            && *created == other.created
            && *deadline == other.deadline
            && *requested_start_time == other.requested_start_time
            && *extra == other.extra
    }
}

impl Eq for Task {}

/// Fields most tasks do not use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskExtra {
    /// Mutual-exclusion key held while the task is waiting, delayed or running.
    pub slot: Option<compact_str::CompactString>,
    /// Code pool providing the executor.
    pub codepool: Option<Box<str>>,
    /// Execution mode (`factory` when absent).
    pub mode: Option<Box<str>>,
    /// Resources recorded at assignment (sorted, unique; shared with the running counters).
    pub resources: crate::scheduler::Resources,
    /// Attempts that answered "retry later": they do not count against `max_attempts`.
    pub deferrals: u32,
    /// What each attempt needs while it runs (cpu, memory, named amounts), if declared.
    pub needs: Option<crate::quota::Needs>,
}

impl Task {
    /// The task's slot, if it has one.
    pub fn slot(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|e| e.slot.as_deref())
    }

    /// The task's code pool, if it has one.
    pub fn codepool(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|e| e.codepool.as_deref())
    }

    /// The task's mode, if set.
    pub fn mode(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|e| e.mode.as_deref())
    }

    /// Resources recorded at the last assignment.
    pub fn resources(&self) -> &[Arc<str>] {
        self.extra.as_ref().map_or(&[], |e| &e.resources)
    }

    /// Attempts that answered "retry later" (not counted against `max_attempts`).
    pub fn deferrals(&self) -> u32 {
        self.extra.as_ref().map_or(0, |e| e.deferrals)
    }

    /// Attempts that count against `max_attempts`: all of them but the deferred ones.
    pub fn counted_attempts(&self) -> u32 {
        self.attempts.saturating_sub(self.deferrals())
    }
    /// Priority inside its owner's queue (higher first).
    pub fn priority(&self) -> i32 {
        self.priority
    }

    /// What each attempt needs while it runs (sorted by dimension; empty when not declared).
    pub fn needs(&self) -> &[(Arc<str>, u64)] {
        self.extra
            .as_ref()
            .and_then(|e| e.needs.as_deref())
            .unwrap_or(&[])
    }
}

/// A user's service level: the group its tasks are scheduled in and the named resources each of
/// its tasks uses while it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceLevel {
    /// The group.
    pub group: GroupId,
    /// Named resources, each used once by every running task of the user (sorted, no
    /// duplicates).
    pub resources: Vec<String>,
    /// The user's weight in fair share: inside a scheduling tier, users get running tasks in
    /// proportion to their weights. 0 stands for the default, 1.
    pub weight: u32,
}

impl ServiceLevel {
    /// The weight, with 0 read as the default 1.
    pub fn weight(&self) -> u32 {
        self.weight.max(1)
    }
}

/// A worker as the replicated state knows it (capacity is not replicated: workers re-declare it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerRecord {
    /// Stable worker id.
    pub id: Arc<str>,
    /// Where it runs (free text, usually host and address).
    pub location: String,
    /// Id of the worker process (changes at each worker restart).
    pub process_id: String,
    /// When it last connected.
    pub last_connection: Millis,
    /// Current status.
    pub status: WorkerStatus,
}

/// An open transaction: tasks prepared inside it are invisible until commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// Transaction id.
    pub id: TransactionId,
    /// When it was opened.
    pub created: Millis,
    /// The user who opened it (`None` when an older version wrote it: admins only).
    pub owner: Option<String>,
    /// Tasks prepared in it, in order.
    pub prepared: Vec<crate::entry::NewTask>,
}

/// An immutable named bundle of executor code: an archive (zip or tar.gz) the workers unpack,
/// kept as the chunks it was logged in (see [`crate::codepool`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodePool {
    /// Pool id.
    pub id: String,
    /// When it was created.
    pub created: Millis,
    /// Time to live in milliseconds; 0 = forever.
    pub ttl: Millis,
    /// Size of the whole archive, in bytes.
    pub size: u64,
    /// SHA-256 of the whole archive.
    pub sha256: [u8; 32],
    /// Number of chunks the archive was logged in.
    pub chunk_count: u32,
    /// The chunks received so far, in order (shared: a snapshot copies pointers, not bytes).
    pub chunks: Vec<std::sync::Arc<[u8]>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A broker holds millions of tasks: the hot fields stay in one compact struct (the
    /// priority sits in the padding after the status) and the rest behind one pointer. With
    /// the shared pointer's two counts a task takes 160 bytes, one of the allocator's classes.
    #[test]
    fn a_task_stays_compact() {
        assert_eq!(std::mem::size_of::<Task>(), 144);
        assert_eq!(std::mem::size_of::<Option<Box<TaskExtra>>>(), 8);
    }
}
