//! Log records: the bytes of one [`LogEntry`] in a commit log.
//!
//! A record is a protobuf message carrying the format version and one entry. The commit log adds
//! framing and a checksum around it; this module only turns entries into bytes and back. Field
//! tags of the entry kinds are 10 + the original Majordodo edit code, so a reader of
//! both formats can map one to the other; kinds the original did not have start at 30.
//!
//! Versions: 1, the first; 2 adds the task's idempotency key (field 13 of a new task) and the
//! `ForgetIdempotencyKeys` kind (tag 31). Version 2 is written; both are read (a version 1
//! record has neither). The version had to change because a reader of version 1 would skip the
//! key without a word (protobuf ignores unknown fields) and hold a state that differs from the
//! leader's. Version 3 adds the chunked code pool: `BeginCodePool` (tag 70) and
//! `CodePoolChunk` (tag 71), which replace the one-record `CreateCodePool` (tag 24, still read:
//! its archive had to fit one record), the owner of a transaction (field 40 of the transaction
//! kinds), the `DeferTask` kind (tag 40), the task's priority (field 50 of a new task) and the
//! `SetServiceLevel` (tag 50) and `SetTaskPriority` (tag 51) kinds. Versions 1 to 3 are read; 3
//! is written (an older record has none of these; a transaction without owner is left to
//! admins). Kinds added to version 3 since, `SetQuota` (tag 80) and the worker credentials'
//! `AddWorkerCredential` (tag 90, a verifier, never a secret) and `RevokeWorkerCredential`
//! (tag 91), are refused by a build that predates them as a record of an unknown kind (never
//! skipped), and refused inside a record of version 1 or 2.

use majordodo_core::entry::{LogEntry, NewTask};
use majordodo_core::{TaskId, TaskStatus, TransactionId};
use prost::Message;

/// Version of the record format written by this build. Readers refuse versions they do not know.
pub const RECORD_FORMAT_VERSION: u32 = 3;

/// Oldest record format version this build reads.
pub const MIN_RECORD_FORMAT_VERSION: u32 = 1;

/// Why bytes are not a record this build can read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The bytes are not a well-formed protobuf message.
    #[error("malformed record: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// Written by a newer (or unknown) format.
    #[error(
        "record format version {0} is not supported (this build reads versions {MIN_RECORD_FORMAT_VERSION} to {RECORD_FORMAT_VERSION})"
    )]
    UnsupportedVersion(u32),
    /// The record carries no entry, or a kind this build does not know.
    #[error("record carries no entry of a known kind")]
    UnknownKind,
    /// A field holds a value outside its domain.
    #[error("record field {field}: {reason}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Clone, PartialEq, Message)]
struct RecordPb {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(
        oneof = "EntryPb",
        tags = "11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 23, 24, 30, 31, 40, 50, 51, 70, 71, 80, 90, 91"
    )]
    entry: Option<EntryPb>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum EntryPb {
    #[prost(message, tag = "11")]
    AddTask(NewTaskPb),
    #[prost(message, tag = "12")]
    WorkerConnected(WorkerConnectedPb),
    #[prost(message, tag = "13")]
    AssignTask(AssignTaskPb),
    #[prost(message, tag = "14")]
    TaskStatusChange(StatusChangePb),
    #[prost(message, tag = "15")]
    WorkerDisconnected(WorkerEventPb),
    #[prost(message, tag = "16")]
    WorkerDied(WorkerEventPb),
    #[prost(message, tag = "17")]
    BeginTransaction(TransactionPb),
    #[prost(message, tag = "18")]
    CommitTransaction(TransactionPb),
    #[prost(message, tag = "19")]
    RollbackTransaction(TransactionPb),
    #[prost(message, tag = "20")]
    PrepareAddTask(PrepareAddTaskPb),
    #[prost(message, tag = "21")]
    Noop(NoopPb),
    #[prost(message, tag = "23")]
    DeleteCodePool(DeleteCodePoolPb),
    #[prost(message, tag = "24")]
    CreateCodePool(CreateCodePoolPb),
    #[prost(message, tag = "30")]
    PurgeTasks(PurgeTasksPb),
    #[prost(message, tag = "31")]
    ForgetIdempotencyKeys(ForgetKeysPb),
    /// Since version 3.
    #[prost(message, tag = "70")]
    BeginCodePool(BeginCodePoolPb),
    /// Since version 3.
    #[prost(message, tag = "71")]
    CodePoolChunk(CodePoolChunkPb),
    /// Since version 3.
    #[prost(message, tag = "40")]
    DeferTask(DeferTaskPb),
    /// Since version 3.
    #[prost(message, tag = "50")]
    SetServiceLevel(ServiceLevelPb),
    /// Since version 3.
    #[prost(message, tag = "51")]
    SetTaskPriority(TaskPriorityPb),
    /// Since version 3.
    #[prost(message, tag = "80")]
    SetQuota(QuotaPb),
    /// Since version 3.
    #[prost(message, tag = "90")]
    AddWorkerCredential(CredentialPb),
    /// Since version 3.
    #[prost(message, tag = "91")]
    RevokeWorkerCredential(RevokeCredentialPb),
}

/// Since version 3: a worker credential's verifier; shared with snapshots (where `revoked`
/// is set for a revoked one).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct CredentialPb {
    #[prost(string, tag = "1")]
    pub(crate) credential_id: String,
    #[prost(string, tag = "2")]
    pub(crate) worker_id: String,
    #[prost(bytes = "vec", tag = "3")]
    pub(crate) stored_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub(crate) server_key: Vec<u8>,
    #[prost(string, optional, tag = "5")]
    pub(crate) comment: Option<String>,
    /// Issue time.
    #[prost(int64, tag = "6")]
    pub(crate) timestamp: i64,
    /// Snapshots only: when it was revoked.
    #[prost(int64, optional, tag = "7")]
    pub(crate) revoked: Option<i64>,
}

impl CredentialPb {
    pub(crate) fn of(c: &majordodo_core::credential::WorkerCredential) -> Self {
        CredentialPb {
            credential_id: c.id.clone(),
            worker_id: c.worker_id.clone(),
            stored_key: c.stored_key.to_vec(),
            server_key: c.server_key.to_vec(),
            comment: c.comment.clone(),
            timestamp: c.created,
            revoked: c.revoked,
        }
    }

    pub(crate) fn keys(&self) -> Result<([u8; 32], [u8; 32]), RecordError> {
        let key = |field, bytes: &[u8]| {
            <[u8; 32]>::try_from(bytes).map_err(|_| RecordError::InvalidField {
                field,
                reason: format!("expected 32 bytes, got {}", bytes.len()),
            })
        };
        Ok((
            key("credential.stored_key", &self.stored_key)?,
            key("credential.server_key", &self.server_key)?,
        ))
    }

    pub(crate) fn into_credential(
        self,
    ) -> Result<majordodo_core::credential::WorkerCredential, RecordError> {
        let (stored_key, server_key) = self.keys()?;
        Ok(majordodo_core::credential::WorkerCredential {
            id: self.credential_id,
            worker_id: self.worker_id,
            stored_key,
            server_key,
            created: self.timestamp,
            comment: self.comment,
            revoked: self.revoked,
        })
    }
}

/// Since version 3.
#[derive(Clone, PartialEq, Message)]
struct RevokeCredentialPb {
    #[prost(string, tag = "1")]
    credential_id: String,
    #[prost(int64, tag = "2")]
    timestamp: i64,
}

/// Since version 3.
#[derive(Clone, PartialEq, Message)]
struct ServiceLevelPb {
    #[prost(string, tag = "1")]
    user_id: String,
    /// Absent: back to the default level.
    #[prost(message, optional, tag = "2")]
    level: Option<LevelPb>,
    #[prost(int64, tag = "3")]
    timestamp: i64,
}

/// A service level; shared with snapshots.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct LevelPb {
    #[prost(uint32, tag = "1")]
    pub(crate) group: u32,
    #[prost(string, repeated, tag = "2")]
    pub(crate) resources: Vec<String>,
    /// Fair-share weight; 0 = the default (1).
    #[prost(uint32, tag = "3")]
    pub(crate) weight: u32,
}

/// Since version 3: a user's or a group's quota; shared with snapshots.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct QuotaPb {
    /// The user (exclusive with `group`).
    #[prost(string, optional, tag = "1")]
    pub(crate) user_id: Option<String>,
    /// The group (when no user is set).
    #[prost(uint32, tag = "2")]
    pub(crate) group: u32,
    /// Amounts per dimension; absent with `reset`.
    #[prost(btree_map = "string, uint64", tag = "3")]
    pub(crate) quota: std::collections::BTreeMap<String, u64>,
    /// The quota is removed.
    #[prost(bool, tag = "4")]
    pub(crate) reset: bool,
    #[prost(int64, tag = "5")]
    pub(crate) timestamp: i64,
}

impl QuotaPb {
    pub(crate) fn tenant(&self) -> Result<majordodo_core::quota::QuotaTenant, RecordError> {
        use majordodo_core::quota::QuotaTenant;
        match &self.user_id {
            Some(u) if u.is_empty() => Err(RecordError::InvalidField {
                field: "quota.user_id",
                reason: "empty user id".into(),
            }),
            Some(u) => Ok(QuotaTenant::User(u.clone())),
            None if self.group == 0 => Err(RecordError::InvalidField {
                field: "quota.group",
                reason: "group 0 has no quota".into(),
            }),
            None => Ok(QuotaTenant::Group(self.group)),
        }
    }

    pub(crate) fn of(tenant: &majordodo_core::quota::QuotaTenant) -> (Option<String>, u32) {
        use majordodo_core::quota::QuotaTenant;
        match tenant {
            QuotaTenant::User(u) => (Some(u.clone()), 0),
            QuotaTenant::Group(g) => (None, *g),
        }
    }
}

/// Checks decoded amounts as the state keeps them (see [`majordodo_core::quota::normalize`]).
pub(crate) fn amounts_of(
    field: &'static str,
    map: std::collections::BTreeMap<String, u64>,
    allow_tasks: bool,
) -> Result<Vec<(String, u64)>, RecordError> {
    let list: Vec<(String, u64)> = map.into_iter().collect();
    let normal = majordodo_core::quota::normalize(list.clone(), allow_tasks).map_err(|e| {
        RecordError::InvalidField {
            field,
            reason: e.to_string(),
        }
    })?;
    if normal != list {
        return Err(RecordError::InvalidField {
            field,
            reason: "zero amounts are not stored".into(),
        });
    }
    Ok(normal)
}

/// Since version 3.
#[derive(Clone, PartialEq, Message)]
struct TaskPriorityPb {
    #[prost(uint64, tag = "1")]
    task_id: u64,
    #[prost(sint32, tag = "2")]
    priority: i32,
    #[prost(int64, tag = "3")]
    timestamp: i64,
}

/// A task at submission; shared with snapshots (prepared tasks of transactions).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct NewTaskPb {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(string, tag = "2")]
    task_type: String,
    #[prost(string, tag = "3")]
    user_id: String,
    #[prost(string, tag = "4")]
    data: String,
    #[prost(uint32, tag = "5")]
    max_attempts: u32,
    #[prost(uint32, tag = "6")]
    attempts: u32,
    #[prost(int64, tag = "7")]
    requested_start_time: i64,
    #[prost(int64, tag = "8")]
    deadline: i64,
    #[prost(string, optional, tag = "9")]
    slot: Option<String>,
    #[prost(string, optional, tag = "10")]
    codepool: Option<String>,
    #[prost(string, optional, tag = "11")]
    mode: Option<String>,
    #[prost(int64, tag = "12")]
    created: i64,
    /// Since version 2.
    #[prost(string, optional, tag = "13")]
    idempotency_key: Option<String>,
    /// Since version 3.
    #[prost(sint32, tag = "50")]
    priority: i32,
    /// Since version 3: what each attempt needs.
    #[prost(btree_map = "string, uint64", tag = "80")]
    needs: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, PartialEq, Message)]
struct WorkerConnectedPb {
    #[prost(string, tag = "1")]
    worker_id: String,
    #[prost(string, tag = "2")]
    location: String,
    #[prost(string, tag = "3")]
    process_id: String,
    #[prost(int64, tag = "4")]
    timestamp: i64,
}

#[derive(Clone, PartialEq, Message)]
struct AssignTaskPb {
    #[prost(uint64, tag = "1")]
    task_id: u64,
    #[prost(string, tag = "2")]
    worker_id: String,
    #[prost(uint32, tag = "3")]
    attempt: u32,
    #[prost(string, repeated, tag = "4")]
    resources: Vec<String>,
    #[prost(int64, tag = "5")]
    timestamp: i64,
}

#[derive(Clone, PartialEq, Message)]
struct StatusChangePb {
    #[prost(uint64, tag = "1")]
    task_id: u64,
    #[prost(uint32, tag = "2")]
    status: u32,
    #[prost(uint32, tag = "3")]
    attempt: u32,
    #[prost(string, optional, tag = "4")]
    worker_id: Option<String>,
    #[prost(string, optional, tag = "5")]
    result: Option<String>,
    #[prost(int64, tag = "6")]
    timestamp: i64,
}

#[derive(Clone, PartialEq, Message)]
struct WorkerEventPb {
    #[prost(string, tag = "1")]
    worker_id: String,
    #[prost(int64, tag = "2")]
    timestamp: i64,
}

#[derive(Clone, PartialEq, Message)]
struct TransactionPb {
    #[prost(uint64, tag = "1")]
    transaction_id: u64,
    #[prost(int64, tag = "2")]
    timestamp: i64,
    /// Since version 3, in `BeginTransaction` only.
    #[prost(string, optional, tag = "40")]
    owner: Option<String>,
}

/// Since version 3.
#[derive(Clone, PartialEq, Message)]
struct DeferTaskPb {
    #[prost(uint64, tag = "1")]
    task_id: u64,
    #[prost(uint32, tag = "2")]
    attempt: u32,
    #[prost(string, tag = "3")]
    worker_id: String,
    #[prost(int64, tag = "4")]
    until: i64,
    #[prost(int64, tag = "5")]
    timestamp: i64,
}

#[derive(Clone, PartialEq, Message)]
struct PrepareAddTaskPb {
    #[prost(uint64, tag = "1")]
    transaction_id: u64,
    #[prost(message, optional, tag = "2")]
    task: Option<NewTaskPb>,
}

#[derive(Clone, PartialEq, Message)]
struct NoopPb {
    #[prost(int64, tag = "1")]
    timestamp: i64,
}

#[derive(Clone, PartialEq, Message)]
struct DeleteCodePoolPb {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(int64, tag = "2")]
    timestamp: i64,
}

#[derive(Clone, PartialEq, Message)]
struct CreateCodePoolPb {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(int64, tag = "2")]
    timestamp: i64,
    #[prost(int64, tag = "3")]
    ttl: i64,
    #[prost(bytes = "vec", tag = "4")]
    data: Vec<u8>,
}

/// Since version 3.
#[derive(Clone, PartialEq, Message)]
struct BeginCodePoolPb {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(int64, tag = "2")]
    timestamp: i64,
    #[prost(int64, tag = "3")]
    ttl: i64,
    #[prost(uint64, tag = "4")]
    size: u64,
    #[prost(uint32, tag = "5")]
    chunks: u32,
    #[prost(bytes = "vec", tag = "6")]
    sha256: Vec<u8>,
}

/// Since version 3.
#[derive(Clone, PartialEq, Message)]
struct CodePoolChunkPb {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(uint32, tag = "2")]
    index: u32,
    #[prost(bytes = "vec", tag = "3")]
    data: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct PurgeTasksPb {
    #[prost(uint64, repeated, tag = "1")]
    task_ids: Vec<u64>,
    #[prost(int64, tag = "2")]
    timestamp: i64,
}

/// Since version 2.
#[derive(Clone, PartialEq, Message)]
struct ForgetKeysPb {
    #[prost(int64, tag = "1")]
    created_before: i64,
    #[prost(int64, tag = "2")]
    timestamp: i64,
}

impl From<&NewTask> for NewTaskPb {
    fn from(t: &NewTask) -> Self {
        NewTaskPb {
            id: t.id.0,
            task_type: t.task_type.clone(),
            user_id: t.user_id.clone(),
            data: t.data.clone(),
            max_attempts: t.max_attempts,
            attempts: t.attempts,
            requested_start_time: t.requested_start_time,
            deadline: t.deadline,
            slot: t.slot.clone(),
            codepool: t.codepool.clone(),
            mode: t.mode.clone(),
            created: t.created,
            idempotency_key: t.idempotency_key.clone(),
            priority: t.priority,
            needs: t.needs.iter().cloned().collect(),
        }
    }
}

impl NewTaskPb {
    pub(crate) fn into_task(self) -> Result<NewTask, RecordError> {
        if self.id == 0 {
            return Err(RecordError::InvalidField {
                field: "task.id",
                reason: "0 is not a task id".into(),
            });
        }
        Ok(NewTask {
            id: TaskId(self.id),
            task_type: self.task_type,
            user_id: self.user_id,
            data: self.data,
            max_attempts: self.max_attempts,
            attempts: self.attempts,
            requested_start_time: self.requested_start_time,
            deadline: self.deadline,
            slot: self.slot,
            codepool: self.codepool,
            mode: self.mode,
            created: self.created,
            idempotency_key: self.idempotency_key,
            priority: self.priority,
            needs: amounts_of("task.needs", self.needs, false)?,
        })
    }
}

/// Most bytes a record spends besides the content of its string and bytes fields, for an entry
/// with at most 12 numeric fields (every kind but `PurgeTasks`): the version (a 1-byte tag and a
/// varint of at most 5), the entry kind (a tag of at most 2 and a length of at most 5), one nested
/// message (a task inside `PrepareAddTask`: tag and length, 6), 12 numeric fields (a 1-byte tag
/// and a varint of at most 10 each), and a task's idempotency key of up to
/// [`MAX_IDEMPOTENCY_KEY_BYTES`] with its framing, which callers of [`record_len_bound`] do not
/// list (so a bound computed before keys existed stays a bound).
pub const RECORD_FIXED_OVERHEAD: usize =
    6 + 7 + 6 + 12 * 11 + MAX_IDEMPOTENCY_KEY_BYTES + FIELD_OVERHEAD;

/// Longest idempotency key a task may carry, in bytes (the HTTP API refuses longer ones). Long
/// enough for any identifier a client derives its key from; short enough that keeping every key
/// for the window costs little next to the tasks.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 1_024;

/// Most bytes a string or bytes field spends besides its content: a 1-byte tag and a length of at
/// most 5 bytes.
pub const FIELD_OVERHEAD: usize = 6;

/// The length to give [`record_len_bound`] for one amount (a task's need, a quota entry) whose
/// dimension name is `name_len` bytes: a map entry is a nested message (counted as the field)
/// holding the name (tag, length, bytes) and the amount (tag and a varint of at most 10 bytes).
pub fn amount_field_len(name_len: usize) -> usize {
    name_len.saturating_add(FIELD_OVERHEAD + 11)
}

/// An upper bound of the size of the record of an entry whose string and bytes fields have these
/// lengths (every field counted, present or not; `PurgeTasks` excepted; a task's idempotency
/// key, at most [`MAX_IDEMPOTENCY_KEY_BYTES`], is counted in [`RECORD_FIXED_OVERHEAD`]). Lets a
/// caller refuse a request whose entry would exceed the log's record limit before anything is
/// decided.
pub fn record_len_bound(field_lens: impl IntoIterator<Item = usize>) -> usize {
    field_lens
        .into_iter()
        .fold(RECORD_FIXED_OVERHEAD, |total, len| {
            total.saturating_add(len.saturating_add(FIELD_OVERHEAD))
        })
}

/// Encodes an entry as a record.
pub fn encode_entry(entry: &LogEntry) -> Vec<u8> {
    let entry = match entry {
        LogEntry::AddTask(t) => EntryPb::AddTask(t.into()),
        LogEntry::WorkerConnected {
            worker_id,
            location,
            process_id,
            timestamp,
        } => EntryPb::WorkerConnected(WorkerConnectedPb {
            worker_id: worker_id.clone(),
            location: location.clone(),
            process_id: process_id.clone(),
            timestamp: *timestamp,
        }),
        LogEntry::AssignTask {
            task_id,
            worker_id,
            attempt,
            resources,
            timestamp,
        } => EntryPb::AssignTask(AssignTaskPb {
            task_id: task_id.0,
            worker_id: worker_id.clone(),
            attempt: *attempt,
            resources: resources.clone(),
            timestamp: *timestamp,
        }),
        LogEntry::TaskStatusChange {
            task_id,
            status,
            attempt,
            worker_id,
            result,
            timestamp,
        } => EntryPb::TaskStatusChange(StatusChangePb {
            task_id: task_id.0,
            status: status.code().into(),
            attempt: *attempt,
            worker_id: worker_id.clone(),
            result: result.clone(),
            timestamp: *timestamp,
        }),
        LogEntry::WorkerDisconnected {
            worker_id,
            timestamp,
        } => EntryPb::WorkerDisconnected(WorkerEventPb {
            worker_id: worker_id.clone(),
            timestamp: *timestamp,
        }),
        LogEntry::WorkerDied {
            worker_id,
            timestamp,
        } => EntryPb::WorkerDied(WorkerEventPb {
            worker_id: worker_id.clone(),
            timestamp: *timestamp,
        }),
        LogEntry::BeginTransaction {
            transaction_id,
            timestamp,
            owner,
        } => EntryPb::BeginTransaction(TransactionPb {
            transaction_id: transaction_id.0,
            timestamp: *timestamp,
            owner: owner.clone(),
        }),
        LogEntry::CommitTransaction {
            transaction_id,
            timestamp,
        } => EntryPb::CommitTransaction(TransactionPb {
            transaction_id: transaction_id.0,
            timestamp: *timestamp,
            owner: None,
        }),
        LogEntry::RollbackTransaction {
            transaction_id,
            timestamp,
        } => EntryPb::RollbackTransaction(TransactionPb {
            transaction_id: transaction_id.0,
            timestamp: *timestamp,
            owner: None,
        }),
        LogEntry::DeferTask {
            task_id,
            attempt,
            worker_id,
            until,
            timestamp,
        } => EntryPb::DeferTask(DeferTaskPb {
            task_id: task_id.0,
            attempt: *attempt,
            worker_id: worker_id.clone(),
            until: *until,
            timestamp: *timestamp,
        }),
        LogEntry::PrepareAddTask {
            transaction_id,
            task,
        } => EntryPb::PrepareAddTask(PrepareAddTaskPb {
            transaction_id: transaction_id.0,
            task: Some(task.into()),
        }),
        LogEntry::Noop { timestamp } => EntryPb::Noop(NoopPb {
            timestamp: *timestamp,
        }),
        LogEntry::DeleteCodePool { id, timestamp } => EntryPb::DeleteCodePool(DeleteCodePoolPb {
            id: id.clone(),
            timestamp: *timestamp,
        }),
        LogEntry::CreateCodePool {
            id,
            timestamp,
            ttl,
            data,
        } => EntryPb::CreateCodePool(CreateCodePoolPb {
            id: id.clone(),
            timestamp: *timestamp,
            ttl: *ttl,
            data: data.clone(),
        }),
        LogEntry::PurgeTasks {
            task_ids,
            timestamp,
        } => EntryPb::PurgeTasks(PurgeTasksPb {
            task_ids: task_ids.iter().map(|t| t.0).collect(),
            timestamp: *timestamp,
        }),
        LogEntry::ForgetIdempotencyKeys {
            created_before,
            timestamp,
        } => EntryPb::ForgetIdempotencyKeys(ForgetKeysPb {
            created_before: *created_before,
            timestamp: *timestamp,
        }),
        LogEntry::BeginCodePool {
            id,
            timestamp,
            ttl,
            size,
            chunks,
            sha256,
        } => EntryPb::BeginCodePool(BeginCodePoolPb {
            id: id.clone(),
            timestamp: *timestamp,
            ttl: *ttl,
            size: *size,
            chunks: *chunks,
            sha256: sha256.to_vec(),
        }),
        LogEntry::CodePoolChunk { id, index, data } => EntryPb::CodePoolChunk(CodePoolChunkPb {
            id: id.clone(),
            index: *index,
            data: data.clone(),
        }),
        LogEntry::SetServiceLevel {
            user_id,
            level,
            timestamp,
        } => EntryPb::SetServiceLevel(ServiceLevelPb {
            user_id: user_id.clone(),
            level: level.as_ref().map(|l| LevelPb {
                group: l.group,
                resources: l.resources.clone(),
                weight: l.weight,
            }),
            timestamp: *timestamp,
        }),
        LogEntry::SetTaskPriority {
            task_id,
            priority,
            timestamp,
        } => EntryPb::SetTaskPriority(TaskPriorityPb {
            task_id: task_id.0,
            priority: *priority,
            timestamp: *timestamp,
        }),
        LogEntry::SetQuota {
            tenant,
            quota,
            timestamp,
        } => {
            let (user_id, group) = QuotaPb::of(tenant);
            EntryPb::SetQuota(QuotaPb {
                user_id,
                group,
                quota: quota.iter().flatten().cloned().collect(),
                reset: quota.is_none(),
                timestamp: *timestamp,
            })
        }
        LogEntry::AddWorkerCredential {
            credential_id,
            worker_id,
            stored_key,
            server_key,
            comment,
            timestamp,
        } => EntryPb::AddWorkerCredential(CredentialPb {
            credential_id: credential_id.clone(),
            worker_id: worker_id.clone(),
            stored_key: stored_key.to_vec(),
            server_key: server_key.to_vec(),
            comment: comment.clone(),
            timestamp: *timestamp,
            revoked: None,
        }),
        LogEntry::RevokeWorkerCredential {
            credential_id,
            timestamp,
        } => EntryPb::RevokeWorkerCredential(RevokeCredentialPb {
            credential_id: credential_id.clone(),
            timestamp: *timestamp,
        }),
    };
    RecordPb {
        version: RECORD_FORMAT_VERSION,
        entry: Some(entry),
    }
    .encode_to_vec()
}

/// Decodes a record.
///
/// # Errors
/// [`RecordError`] when the bytes are not a record of a version and kind this build knows.
pub fn decode_entry(bytes: &[u8]) -> Result<LogEntry, RecordError> {
    let record = RecordPb::decode(bytes)?;
    if !(MIN_RECORD_FORMAT_VERSION..=RECORD_FORMAT_VERSION).contains(&record.version) {
        return Err(RecordError::UnsupportedVersion(record.version));
    }
    // Version 1 is version 2 without the key and the forget kind, version 2 is version 3
    // without chunked code pools, transaction owners, deferrals, priorities and service levels:
    // one decoder reads them all.
    let entry = record.entry.ok_or(RecordError::UnknownKind)?;
    if record.version < 3 {
        let newer = match &entry {
            EntryPb::BeginCodePool(_) | EntryPb::CodePoolChunk(_) => Some("chunked code pool"),
            EntryPb::DeferTask(_) => Some("defer_task"),
            EntryPb::SetServiceLevel(_) => Some("set_service_level"),
            EntryPb::SetTaskPriority(_) => Some("set_task_priority"),
            EntryPb::SetQuota(_) => Some("set_quota"),
            EntryPb::AddWorkerCredential(_) | EntryPb::RevokeWorkerCredential(_) => {
                Some("worker credential")
            }
            EntryPb::BeginTransaction(t) if t.owner.is_some() => Some("transaction owner"),
            _ => None,
        };
        if let Some(what) = newer {
            return Err(RecordError::InvalidField {
                field: "version",
                reason: format!("{what} in a version {} record", record.version),
            });
        }
    }
    Ok(match entry {
        EntryPb::AddTask(t) => LogEntry::AddTask(t.into_task()?),
        EntryPb::WorkerConnected(w) => LogEntry::WorkerConnected {
            worker_id: w.worker_id,
            location: w.location,
            process_id: w.process_id,
            timestamp: w.timestamp,
        },
        EntryPb::AssignTask(a) => LogEntry::AssignTask {
            task_id: TaskId(a.task_id),
            worker_id: a.worker_id,
            attempt: a.attempt,
            resources: a.resources,
            timestamp: a.timestamp,
        },
        EntryPb::TaskStatusChange(c) => LogEntry::TaskStatusChange {
            task_id: TaskId(c.task_id),
            status: status_of(c.status)?,
            attempt: c.attempt,
            worker_id: c.worker_id,
            result: c.result,
            timestamp: c.timestamp,
        },
        EntryPb::WorkerDisconnected(w) => LogEntry::WorkerDisconnected {
            worker_id: w.worker_id,
            timestamp: w.timestamp,
        },
        EntryPb::WorkerDied(w) => LogEntry::WorkerDied {
            worker_id: w.worker_id,
            timestamp: w.timestamp,
        },
        EntryPb::BeginTransaction(t) => LogEntry::BeginTransaction {
            transaction_id: TransactionId(t.transaction_id),
            timestamp: t.timestamp,
            owner: t.owner,
        },
        EntryPb::DeferTask(d) => LogEntry::DeferTask {
            task_id: TaskId(d.task_id),
            attempt: d.attempt,
            worker_id: d.worker_id,
            until: d.until,
            timestamp: d.timestamp,
        },
        EntryPb::CommitTransaction(t) => LogEntry::CommitTransaction {
            transaction_id: TransactionId(t.transaction_id),
            timestamp: t.timestamp,
        },
        EntryPb::RollbackTransaction(t) => LogEntry::RollbackTransaction {
            transaction_id: TransactionId(t.transaction_id),
            timestamp: t.timestamp,
        },
        EntryPb::PrepareAddTask(p) => LogEntry::PrepareAddTask {
            transaction_id: TransactionId(p.transaction_id),
            task: p
                .task
                .ok_or(RecordError::InvalidField {
                    field: "prepare_add_task.task",
                    reason: "missing".into(),
                })?
                .into_task()?,
        },
        EntryPb::Noop(n) => LogEntry::Noop {
            timestamp: n.timestamp,
        },
        EntryPb::DeleteCodePool(d) => LogEntry::DeleteCodePool {
            id: d.id,
            timestamp: d.timestamp,
        },
        EntryPb::CreateCodePool(c) => LogEntry::CreateCodePool {
            id: c.id,
            timestamp: c.timestamp,
            ttl: c.ttl,
            data: c.data,
        },
        EntryPb::PurgeTasks(p) => LogEntry::PurgeTasks {
            task_ids: p.task_ids.into_iter().map(TaskId).collect(),
            timestamp: p.timestamp,
        },
        EntryPb::ForgetIdempotencyKeys(f) => LogEntry::ForgetIdempotencyKeys {
            created_before: f.created_before,
            timestamp: f.timestamp,
        },
        EntryPb::BeginCodePool(b) => LogEntry::BeginCodePool {
            sha256: b
                .sha256
                .as_slice()
                .try_into()
                .map_err(|_| RecordError::InvalidField {
                    field: "begin_code_pool.sha256",
                    reason: format!("expected 32 bytes, got {}", b.sha256.len()),
                })?,
            id: b.id,
            timestamp: b.timestamp,
            ttl: b.ttl,
            size: b.size,
            chunks: b.chunks,
        },
        EntryPb::CodePoolChunk(c) => LogEntry::CodePoolChunk {
            id: c.id,
            index: c.index,
            data: c.data,
        },
        EntryPb::SetServiceLevel(l) => LogEntry::SetServiceLevel {
            user_id: l.user_id,
            level: l.level.map(|l| majordodo_core::model::ServiceLevel {
                group: l.group,
                resources: l.resources,
                weight: l.weight,
            }),
            timestamp: l.timestamp,
        },
        EntryPb::SetTaskPriority(p) => LogEntry::SetTaskPriority {
            task_id: TaskId(p.task_id),
            priority: p.priority,
            timestamp: p.timestamp,
        },
        EntryPb::SetQuota(q) => {
            let tenant = q.tenant()?;
            if q.reset && !q.quota.is_empty() {
                return Err(RecordError::InvalidField {
                    field: "quota.reset",
                    reason: "a reset carries no amounts".into(),
                });
            }
            LogEntry::SetQuota {
                tenant,
                quota: if q.reset {
                    None
                } else {
                    Some(amounts_of("quota.quota", q.quota, true)?)
                },
                timestamp: q.timestamp,
            }
        }
        EntryPb::AddWorkerCredential(c) => {
            if c.revoked.is_some() {
                return Err(RecordError::InvalidField {
                    field: "credential.revoked",
                    reason: "an issued credential is not revoked".into(),
                });
            }
            let (stored_key, server_key) = c.keys()?;
            LogEntry::AddWorkerCredential {
                credential_id: c.credential_id,
                worker_id: c.worker_id,
                stored_key,
                server_key,
                comment: c.comment,
                timestamp: c.timestamp,
            }
        }
        EntryPb::RevokeWorkerCredential(r) => LogEntry::RevokeWorkerCredential {
            credential_id: r.credential_id,
            timestamp: r.timestamp,
        },
    })
}

pub(crate) fn status_of(code: u32) -> Result<TaskStatus, RecordError> {
    u8::try_from(code)
        .ok()
        .and_then(TaskStatus::from_code)
        .ok_or_else(|| RecordError::InvalidField {
            field: "status",
            reason: format!("unknown task status code {code}"),
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn opt_string() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(".{0,12}")
    }

    pub(crate) fn new_task() -> impl Strategy<Value = NewTask> {
        (
            1u64..,
            (".{0,8}", ".{0,8}", ".{0,40}"),
            (
                any::<u32>(),
                any::<u32>(),
                any::<i64>(),
                any::<i64>(),
                any::<i64>(),
            ),
            (opt_string(), opt_string(), opt_string(), opt_string()),
            (any::<i32>(), amounts(false)),
        )
            .prop_map(
                |(
                    id,
                    (tt, user, data),
                    (max, att, start, deadline, created),
                    (slot, cp, mode, idempotency_key),
                    (priority, needs),
                )| {
                    NewTask {
                        id: TaskId(id),
                        task_type: tt,
                        user_id: user,
                        data,
                        max_attempts: max,
                        attempts: att,
                        requested_start_time: start,
                        deadline,
                        slot,
                        codepool: cp,
                        mode,
                        created,
                        idempotency_key,
                        priority,
                        needs,
                    }
                },
            )
    }

    fn status() -> impl Strategy<Value = TaskStatus> {
        proptest::sample::select(TaskStatus::ALL.to_vec())
    }

    pub(crate) fn entry() -> impl Strategy<Value = LogEntry> {
        prop_oneof![
            new_task().prop_map(LogEntry::AddTask),
            (".{0,8}", ".{0,8}", ".{0,8}", any::<i64>()).prop_map(|(w, l, p, t)| {
                LogEntry::WorkerConnected {
                    worker_id: w,
                    location: l,
                    process_id: p,
                    timestamp: t,
                }
            }),
            (
                any::<u64>(),
                ".{0,8}",
                any::<u32>(),
                proptest::collection::vec(".{0,5}", 0..3),
                any::<i64>()
            )
                .prop_map(|(id, w, a, r, t)| LogEntry::AssignTask {
                    task_id: TaskId(id),
                    worker_id: w,
                    attempt: a,
                    resources: r,
                    timestamp: t
                }),
            (
                any::<u64>(),
                status(),
                any::<u32>(),
                opt_string(),
                opt_string(),
                any::<i64>()
            )
                .prop_map(|(id, s, a, w, r, t)| LogEntry::TaskStatusChange {
                    task_id: TaskId(id),
                    status: s,
                    attempt: a,
                    worker_id: w,
                    result: r,
                    timestamp: t
                }),
            (".{0,8}", any::<i64>()).prop_map(|(w, t)| LogEntry::WorkerDisconnected {
                worker_id: w,
                timestamp: t
            }),
            (".{0,8}", any::<i64>()).prop_map(|(w, t)| LogEntry::WorkerDied {
                worker_id: w,
                timestamp: t
            }),
            (any::<u64>(), any::<i64>(), opt_string()).prop_map(|(x, t, owner)| {
                LogEntry::BeginTransaction {
                    transaction_id: TransactionId(x),
                    timestamp: t,
                    owner,
                }
            }),
            (
                any::<u64>(),
                any::<u32>(),
                ".{0,8}",
                any::<i64>(),
                any::<i64>()
            )
                .prop_map(|(id, attempt, worker_id, until, timestamp)| {
                    LogEntry::DeferTask {
                        task_id: TaskId(id),
                        attempt,
                        worker_id,
                        until,
                        timestamp,
                    }
                }),
            (any::<u64>(), any::<i64>()).prop_map(|(x, t)| LogEntry::CommitTransaction {
                transaction_id: TransactionId(x),
                timestamp: t
            }),
            (any::<u64>(), any::<i64>()).prop_map(|(x, t)| LogEntry::RollbackTransaction {
                transaction_id: TransactionId(x),
                timestamp: t
            }),
            (any::<u64>(), new_task()).prop_map(|(x, task)| LogEntry::PrepareAddTask {
                transaction_id: TransactionId(x),
                task
            }),
            any::<i64>().prop_map(|t| LogEntry::Noop { timestamp: t }),
            (".{0,8}", any::<i64>())
                .prop_map(|(id, t)| LogEntry::DeleteCodePool { id, timestamp: t }),
            (
                ".{0,8}",
                any::<i64>(),
                any::<i64>(),
                proptest::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(id, t, ttl, data)| LogEntry::CreateCodePool {
                    id,
                    timestamp: t,
                    ttl,
                    data
                }),
            (proptest::collection::vec(any::<u64>(), 0..8), any::<i64>()).prop_map(|(ids, t)| {
                LogEntry::PurgeTasks {
                    task_ids: ids.into_iter().map(TaskId).collect(),
                    timestamp: t,
                }
            }),
            (any::<i64>(), any::<i64>()).prop_map(|(created_before, timestamp)| {
                LogEntry::ForgetIdempotencyKeys {
                    created_before,
                    timestamp,
                }
            }),
            (
                ".{0,8}",
                (any::<i64>(), any::<i64>()),
                (any::<u64>(), any::<u32>()),
                any::<[u8; 32]>()
            )
                .prop_map(|(id, (timestamp, ttl), (size, chunks), sha256)| {
                    LogEntry::BeginCodePool {
                        id,
                        timestamp,
                        ttl,
                        size,
                        chunks,
                        sha256,
                    }
                }),
            (
                ".{0,8}",
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(id, index, data)| LogEntry::CodePoolChunk {
                    id,
                    index,
                    data
                }),
            (
                ".{0,8}",
                proptest::option::of((any::<u32>(), proptest::collection::vec(".{0,5}", 0..3))),
                any::<i64>()
            )
                .prop_map(|(user_id, level, timestamp)| LogEntry::SetServiceLevel {
                    user_id,
                    level: level.map(|(group, resources)| majordodo_core::model::ServiceLevel {
                        group,
                        resources,
                        weight: group % 7,
                    }),
                    timestamp
                }),
            (any::<u64>(), any::<i32>(), any::<i64>()).prop_map(|(id, priority, timestamp)| {
                LogEntry::SetTaskPriority {
                    task_id: TaskId(id),
                    priority,
                    timestamp,
                }
            }),
            (
                prop_oneof![
                    "[a-z]{1,6}".prop_map(majordodo_core::quota::QuotaTenant::User),
                    (1u32..).prop_map(majordodo_core::quota::QuotaTenant::Group),
                ],
                proptest::option::of(amounts(true)),
                any::<i64>()
            )
                .prop_map(|(tenant, quota, timestamp)| LogEntry::SetQuota {
                    tenant,
                    quota,
                    timestamp
                }),
            (
                ("[a-z0-9-]{1,12}", "[a-z0-9.]{1,12}"),
                (any::<[u8; 32]>(), any::<[u8; 32]>()),
                proptest::option::of(".{0,12}"),
                any::<i64>()
            )
                .prop_map(
                    |((credential_id, worker_id), (stored_key, server_key), comment, timestamp)| {
                        LogEntry::AddWorkerCredential {
                            credential_id,
                            worker_id,
                            stored_key,
                            server_key,
                            comment,
                            timestamp,
                        }
                    }
                ),
            (".{0,12}", any::<i64>()).prop_map(|(credential_id, timestamp)| {
                LogEntry::RevokeWorkerCredential {
                    credential_id,
                    timestamp,
                }
            }),
        ]
    }

    /// Valid amounts, as the state keeps them.
    pub(crate) fn amounts(allow_tasks: bool) -> impl Strategy<Value = Vec<(String, u64)>> {
        proptest::collection::btree_map(
            "[a-z:]{1,8}",
            1u64..=majordodo_core::quota::MAX_AMOUNT,
            0..4,
        )
        .prop_map(move |m| {
            m.into_iter()
                .filter(|(d, _)| allow_tasks || d != "tasks")
                .collect()
        })
    }

    /// Encodes an entry as a version 1 writer did: same messages, version 1, and no field
    /// that version lacked.
    fn encode_v1(entry: &LogEntry) -> Option<Vec<u8>> {
        let mut record = RecordPb::decode(encode_entry(entry).as_slice()).ok()?;
        record.version = 1;
        match &mut record.entry {
            Some(EntryPb::AddTask(t)) => {
                t.idempotency_key = None;
                t.priority = 0;
                t.needs.clear();
            }
            Some(EntryPb::PrepareAddTask(p)) => {
                let t = p.task.as_mut()?;
                t.idempotency_key = None;
                t.priority = 0;
                t.needs.clear();
            }
            Some(
                EntryPb::ForgetIdempotencyKeys(_)
                | EntryPb::BeginCodePool(_)
                | EntryPb::CodePoolChunk(_)
                | EntryPb::DeferTask(_)
                | EntryPb::SetServiceLevel(_)
                | EntryPb::SetTaskPriority(_)
                | EntryPb::SetQuota(_)
                | EntryPb::AddWorkerCredential(_)
                | EntryPb::RevokeWorkerCredential(_),
            ) => return None,
            Some(EntryPb::BeginTransaction(t)) => t.owner = None,
            _ => {}
        }
        Some(record.encode_to_vec())
    }

    /// Encodes an entry as a version 2 writer did: no transaction owner, no priority, no kind of
    /// version 3.
    fn encode_v2(entry: &LogEntry) -> Option<Vec<u8>> {
        let mut record = RecordPb::decode(encode_entry(entry).as_slice()).ok()?;
        record.version = 2;
        match &mut record.entry {
            Some(
                EntryPb::DeferTask(_)
                | EntryPb::BeginCodePool(_)
                | EntryPb::CodePoolChunk(_)
                | EntryPb::SetServiceLevel(_)
                | EntryPb::SetTaskPriority(_)
                | EntryPb::SetQuota(_)
                | EntryPb::AddWorkerCredential(_)
                | EntryPb::RevokeWorkerCredential(_),
            ) => {
                return None;
            }
            Some(EntryPb::BeginTransaction(t)) => t.owner = None,
            Some(EntryPb::AddTask(t)) => {
                t.priority = 0;
                t.needs.clear();
            }
            Some(EntryPb::PrepareAddTask(p)) => {
                let t = p.task.as_mut()?;
                t.priority = 0;
                t.needs.clear();
            }
            _ => {}
        }
        Some(record.encode_to_vec())
    }

    /// The entry a version 2 record of `entry` means: a transaction without owner, a task at
    /// priority 0.
    fn as_v2(entry: LogEntry) -> LogEntry {
        match entry {
            LogEntry::BeginTransaction {
                transaction_id,
                timestamp,
                ..
            } => LogEntry::BeginTransaction {
                transaction_id,
                timestamp,
                owner: None,
            },
            LogEntry::AddTask(t) => LogEntry::AddTask(NewTask {
                priority: 0,
                needs: Vec::new(),
                ..t
            }),
            LogEntry::PrepareAddTask {
                transaction_id,
                task,
            } => LogEntry::PrepareAddTask {
                transaction_id,
                task: NewTask {
                    priority: 0,
                    needs: Vec::new(),
                    ..task
                },
            },
            other => other,
        }
    }

    /// The entry a version 1 record of `entry` means: the same without idempotency key.
    fn without_key(entry: LogEntry) -> LogEntry {
        match entry {
            LogEntry::AddTask(t) => LogEntry::AddTask(NewTask {
                idempotency_key: None,
                priority: 0,
                needs: Vec::new(),
                ..t
            }),
            LogEntry::PrepareAddTask {
                transaction_id,
                task,
            } => LogEntry::PrepareAddTask {
                transaction_id,
                task: NewTask {
                    idempotency_key: None,
                    priority: 0,
                    needs: Vec::new(),
                    ..task
                },
            },
            other => as_v2(other),
        }
    }

    proptest! {
        #[test]
        fn every_entry_round_trips(e in entry()) {
            // Goal: decode(encode(e)) == e for every entry kind and field value.
            prop_assert_eq!(decode_entry(&encode_entry(&e)).unwrap(), e);
        }

        #[test]
        fn version_1_records_still_decode(e in entry()) {
            // Goal: records written before idempotency keys existed (version 1) decode to the
            // same entries, without key.
            if let Some(bytes) = encode_v1(&e) {
                prop_assert_eq!(decode_entry(&bytes).unwrap(), without_key(e));
            }
        }

        #[test]
        fn version_2_records_still_decode(e in entry()) {
            // Goal: records written before transaction owners, deferrals, priorities and
            // service levels (version 2) decode to the same entries, a transaction without
            // owner, a task at priority 0.
            if let Some(bytes) = encode_v2(&e) {
                prop_assert_eq!(decode_entry(&bytes).unwrap(), as_v2(e));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            // Goal: outside data yields a value or an error, never a panic.
            let _ = decode_entry(&bytes);
        }
    }

    /// Lengths of the string and bytes fields of an entry, as [`record_len_bound`] takes them.
    fn field_lens(e: &LogEntry) -> Option<Vec<usize>> {
        // The idempotency key is not listed: the fixed overhead holds it.
        let task = |t: &NewTask| {
            let mut lens = vec![
                t.task_type.len(),
                t.user_id.len(),
                t.data.len(),
                t.slot.as_ref().map_or(0, String::len),
                t.codepool.as_ref().map_or(0, String::len),
                t.mode.as_ref().map_or(0, String::len),
            ];
            lens.extend(t.needs.iter().map(|(d, _)| amount_field_len(d.len())));
            lens
        };
        Some(match e {
            LogEntry::AddTask(t) | LogEntry::PrepareAddTask { task: t, .. } => task(t),
            LogEntry::WorkerConnected {
                worker_id,
                location,
                process_id,
                ..
            } => vec![worker_id.len(), location.len(), process_id.len()],
            LogEntry::AssignTask {
                worker_id,
                resources,
                ..
            } => std::iter::once(worker_id.len())
                .chain(resources.iter().map(String::len))
                .collect(),
            LogEntry::TaskStatusChange {
                worker_id, result, ..
            } => vec![
                worker_id.as_ref().map_or(0, String::len),
                result.as_ref().map_or(0, String::len),
            ],
            LogEntry::WorkerDisconnected { worker_id, .. }
            | LogEntry::WorkerDied { worker_id, .. } => vec![worker_id.len()],
            LogEntry::DeleteCodePool { id, .. } => vec![id.len()],
            LogEntry::CreateCodePool { id, data, .. } => vec![id.len(), data.len()],
            LogEntry::BeginCodePool { id, .. } => vec![id.len(), 32],
            LogEntry::CodePoolChunk { id, data, .. } => vec![id.len(), data.len()],
            LogEntry::BeginTransaction { owner, .. } => {
                vec![owner.as_ref().map_or(0, String::len)]
            }
            LogEntry::DeferTask { worker_id, .. } => vec![worker_id.len()],
            LogEntry::AddWorkerCredential {
                credential_id,
                worker_id,
                comment,
                ..
            } => vec![
                credential_id.len(),
                worker_id.len(),
                32,
                32,
                comment.as_ref().map_or(0, String::len),
            ],
            LogEntry::RevokeWorkerCredential { credential_id, .. } => vec![credential_id.len()],
            LogEntry::CommitTransaction { .. }
            | LogEntry::RollbackTransaction { .. }
            | LogEntry::Noop { .. }
            | LogEntry::ForgetIdempotencyKeys { .. }
            | LogEntry::SetTaskPriority { .. } => Vec::new(),
            LogEntry::SetQuota { tenant, quota, .. } => {
                let user = match tenant {
                    majordodo_core::quota::QuotaTenant::User(u) => u.len(),
                    majordodo_core::quota::QuotaTenant::Group(_) => 0,
                };
                std::iter::once(user)
                    .chain(
                        quota
                            .iter()
                            .flatten()
                            .map(|(d, _)| amount_field_len(d.len())),
                    )
                    .collect()
            }
            LogEntry::SetServiceLevel { user_id, level, .. } => std::iter::once(user_id.len())
                .chain(
                    level
                        .iter()
                        .flat_map(|l| l.resources.iter().map(String::len)),
                )
                .chain(std::iter::once(0))
                .collect(),
            LogEntry::PurgeTasks { .. } => return None,
        })
    }

    proptest! {
        #[test]
        fn record_len_bound_is_an_upper_bound(
            e in entry(),
            big in 0usize..70_000,
            key_len in proptest::option::of(0usize..=MAX_IDEMPOTENCY_KEY_BYTES),
        ) {
            // Goal: no record is longer than the bound computed from its fields, also with a
            // field long enough to need a multi-byte length and with an idempotency key of up
            // to the longest accepted.
            let e = match e {
                LogEntry::AddTask(mut t) => {
                    t.data = "x".repeat(big);
                    t.idempotency_key = key_len.map(|n| "k".repeat(n));
                    LogEntry::AddTask(t)
                }
                other => other,
            };
            if let Some(lens) = field_lens(&e) {
                let len = encode_entry(&e).len();
                prop_assert!(len <= record_len_bound(lens.clone()), "{} > bound of {:?}", len, lens);
            }
        }
    }

    #[test]
    fn unknown_version_and_empty_record_are_refused() {
        // Goal: a newer format is refused with a message naming the versions.
        let bytes = RecordPb {
            version: 4,
            entry: Some(EntryPb::Noop(NoopPb { timestamp: 1 })),
        }
        .encode_to_vec();
        let err = decode_entry(&bytes).unwrap_err();
        assert!(err.to_string().contains("version 4"), "{err}");
        assert!(err.to_string().contains("versions 1 to 3"), "{err}");
        // What only version 3 has is refused in an older record.
        let bytes = RecordPb {
            version: 2,
            entry: Some(EntryPb::DeferTask(DeferTaskPb::default())),
        }
        .encode_to_vec();
        let err = decode_entry(&bytes).unwrap_err();
        assert!(
            err.to_string().contains("defer_task in a version 2"),
            "{err}"
        );
        let bytes = RecordPb {
            version: 1,
            entry: None,
        }
        .encode_to_vec();
        assert!(matches!(
            decode_entry(&bytes),
            Err(RecordError::UnknownKind)
        ));
    }

    fn chunk_entry() -> impl Strategy<Value = LogEntry> {
        prop_oneof![
            (
                ".{0,8}",
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 0..512)
            )
                .prop_map(|(id, index, data)| LogEntry::CodePoolChunk {
                    id,
                    index,
                    data
                }),
            (
                ".{0,8}",
                any::<i64>(),
                any::<u64>(),
                any::<u32>(),
                any::<[u8; 32]>()
            )
                .prop_map(|(id, ttl, size, chunks, sha256)| LogEntry::BeginCodePool {
                    id,
                    timestamp: 1,
                    ttl,
                    size,
                    chunks,
                    sha256,
                }),
        ]
    }

    proptest! {
        #[test]
        fn damaged_code_pool_records_never_panic(
            e in chunk_entry(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            cut in any::<usize>(),
        ) {
            // Goal: a chunk or pool-header record with bytes changed or cut decodes to an
            // entry or an error, never a panic; a header decoded always has a 32-byte checksum
            // (the type says so) and a chunk keeps exactly the bytes it carried.
            let mut bytes = encode_entry(&e);
            for (at, x) in flips {
                let i = at % bytes.len();
                bytes[i] ^= x;
            }
            bytes.truncate(cut % (bytes.len() + 1));
            let _ = decode_entry(&bytes);
            prop_assert_eq!(decode_entry(&encode_entry(&e)).unwrap(), e);
        }
    }

    #[test]
    fn version_2_records_read_and_chunked_kinds_need_version_3() {
        // Goal: a version 2 `CreateCodePool` (the whole archive in one record) still decodes;
        // the chunked kinds in a record claiming version 2 are refused (no writer made them).
        let whole = LogEntry::CreateCodePool {
            id: "p".into(),
            timestamp: 5,
            ttl: 7,
            data: vec![1, 2, 3],
        };
        let mut record = RecordPb::decode(encode_entry(&whole).as_slice()).unwrap();
        record.version = 2;
        assert_eq!(decode_entry(&record.encode_to_vec()).unwrap(), whole);
        let chunk = LogEntry::CodePoolChunk {
            id: "p".into(),
            index: 0,
            data: vec![1],
        };
        let mut record = RecordPb::decode(encode_entry(&chunk).as_slice()).unwrap();
        record.version = 2;
        let err = decode_entry(&record.encode_to_vec()).unwrap_err();
        assert!(
            err.to_string().contains("chunked code pool in a version 2"),
            "{err}"
        );
        // A header whose checksum is not 32 bytes is refused, naming the field.
        let bad = RecordPb {
            version: 3,
            entry: Some(EntryPb::BeginCodePool(BeginCodePoolPb {
                id: "p".into(),
                sha256: vec![0; 31],
                ..Default::default()
            })),
        };
        let err = decode_entry(&bad.encode_to_vec()).unwrap_err();
        assert!(err.to_string().contains("begin_code_pool.sha256"), "{err}");
    }

    #[test]
    fn bad_status_code_is_refused() {
        // Goal: status code 3 (unused in the original) is not a status.
        let bytes = RecordPb {
            version: 1,
            entry: Some(EntryPb::TaskStatusChange(StatusChangePb {
                task_id: 1,
                status: 3,
                ..Default::default()
            })),
        }
        .encode_to_vec();
        assert!(matches!(
            decode_entry(&bytes),
            Err(RecordError::InvalidField {
                field: "status",
                ..
            })
        ));
    }
}
