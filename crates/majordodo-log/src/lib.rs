//! Commit logs for the Majordodo broker.
//!
//! The broker writes every change of its state to a [`CommitLog`] before applying it. A log is
//! an ordered sequence of opaque records, each numbered by a [`Lsn`] (log sequence number). The
//! log knows nothing of what a record means: encoding lives in `majordodo-proto`.
//!
//! Implementations:
//! - [`MemoryLog`]: in memory, for tests and embedding.
//! - [`FileLog`]: segment files on a local disk with group commit (the standalone default).
//! - the BookKeeper-backed log of `majordodo-cluster` (replicated).
//!
//! Every implementation must pass the conformance suite in [`conformance`]; [`FaultyLog`] wraps
//! any of them to make it fail on purpose. Snapshots of the broker state, which let a log drop
//! old records, are kept by [`SnapshotStore`]. [`repair`] cuts a damaged file log for an
//! operator; [`read::FileLogReader`] reads a file log and [`inspect_snapshots`] checks
//! snapshot files, both without changing anything (for tools); [`vfs`] puts the file
//! operations of the file log and the snapshot store behind a trait, with [`vfs::SimFs`]
//! simulating power failures for tests.

pub mod conformance;
mod faulty;
mod file;
mod memory;
pub mod read;
pub mod repair;
mod snapshot;
pub mod vfs;

pub use faulty::{FAULT_SEED_ENV, FaultMode, FaultSchedule, FaultyLog};
pub use file::{
    ClaimedLog, DEFAULT_MAX_QUEUED_BYTES, DEFAULT_MAX_RECORD_SIZE, DEFAULT_SEGMENT_SIZE, FileLog,
    FileLogConfig, FileLogStats, MAX_RECORD_SIZE_LIMIT, OpenReport, TornTail,
};
pub use memory::{MemoryLog, MemoryStore};
pub use snapshot::{
    Compression, SNAPSHOTS_RETAINED, Snapshot, SnapshotCheck, SnapshotError, SnapshotInfo,
    SnapshotReader, SnapshotStore, SnapshotWriter, decode_snapshot, encode_snapshot,
    inspect_snapshots, read_snapshot_file,
};

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

/// A boxed, sendable future, so that [`CommitLog`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Position of one record in a log.
///
/// LSNs are dense and start at 1; `Lsn::ZERO` means "before the first record" and is never the
/// position of a record. They only increase, across segments, ledgers and restarts.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The position before the first record.
    pub const ZERO: Lsn = Lsn(0);

    /// The position right after this one.
    pub fn next(self) -> Lsn {
        Lsn(self.0 + 1)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The records of one [`CommitLog::append`] call, once durable.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// LSN of the first record of the batch.
    pub first: Lsn,
    /// LSN of the last record of the batch (equal to `first` for a single record).
    pub last: Lsn,
}

/// Resolves when the records of one append are durable, or with the error that failed the log.
pub type AppendFuture = BoxFuture<'static, Result<Appended, LogError>>;

/// What a replay found, for logging at boot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Number of records handed to the callback.
    pub records: u64,
    /// LSN of the last record in the log (handed over or not); `Lsn::ZERO` if the log is empty.
    pub last: Lsn,
}

/// Errors of a commit log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An I/O operation failed. The log is failed: the caller must stop writing, and a broker
    /// must stop acting as leader and rebuild its state from the log.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, as a verb phrase ("fsync segment 00000000000000000001.log").
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Stored data failed validation (bad checksum, bad framing, LSN out of order) and is not
    /// provably the unfinished last write of a crash. Not retryable: an operator must look; the
    /// reason of the file log says what can be done (restore from a replica or a backup, or cut
    /// the log with `majordodo log repair`, see [`crate::repair`]).
    #[error("corrupt log: {file} at offset {offset}: {reason}")]
    Corrupt {
        /// The file (or ledger) holding the bad data.
        file: String,
        /// Byte offset (or entry id) of the bad record.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// The log was written in a format this release does not read (for the file log: a
    /// segment of another format version). Not retryable; the reason says what to do.
    #[error("unsupported log format: {file}: {reason}")]
    UnsupportedFormat {
        /// The file (or ledger) in the other format.
        file: String,
        /// Which format it is and what to do.
        reason: String,
    },
    /// Another writer took over the log (a newer leader fenced this one). Not retryable by this
    /// process: step down.
    #[error("log fenced: {0}")]
    Fenced(String),
    /// The log was closed, or failed earlier; nothing more can be appended.
    #[error("log closed")]
    Closed,
    /// A record is larger than this log accepts. Retryable with a smaller record only.
    #[error("record of {size} bytes exceeds the limit of {limit} bytes")]
    RecordTooLarge {
        /// Size of the offending record.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A replay asked for records that [`CommitLog::release_before`] already dropped. Not
    /// retryable: the caller must start from a snapshot taken at or after `first - 1`.
    #[error("records after lsn {after} were released; the log starts at lsn {first}")]
    Released {
        /// The `after` the replay was called with.
        after: Lsn,
        /// The first LSN the log still holds.
        first: Lsn,
    },
    /// The replay callback refused a record; the message says why.
    #[error("replay stopped at lsn {lsn}: {reason}")]
    Replay {
        /// The record that was refused.
        lsn: Lsn,
        /// The callback's reason.
        reason: String,
    },
    /// A failure of the replicated backend (BookKeeper, ZooKeeper) with its own description.
    #[error("{0}")]
    Backend(String),
}

impl LogError {
    /// Whether retrying the same operation later may succeed (on a fresh log instance).
    pub fn is_retryable(&self) -> bool {
        matches!(self, LogError::Io { .. } | LogError::Backend(_))
    }
}

/// Callback of [`CommitLog::replay`]: receives each record in LSN order.
///
/// Returning an error stops the replay; the replay then fails with [`LogError::Replay`].
pub type ReplayFn<'a> = dyn FnMut(Lsn, Bytes) -> Result<(), String> + Send + 'a;

/// An ordered, durable sequence of records.
///
/// # Contract (checked by the conformance suite)
/// 1. `append` queues its records after everything queued by earlier `append` calls, at once
///    (before it returns), so that the order of calls is the order in the log. The records get
///    consecutive LSNs following the last LSN of the log.
/// 2. The returned future resolves only once every record of the batch is durable (for the file
///    log: written and fsynced; for BookKeeper: acknowledged by the ack quorum). Futures of
///    successive appends resolve in call order. Concurrent appends may share one fsync. An
///    append refused before it is queued (a record too large, a closed or failed log) fails at
///    once, without waiting for earlier appends.
/// 3. After an append fails, the log is failed: that append and every later one resolve with an
///    error. Records of a failed batch were never acknowledged: a later replay may or may not
///    return them, but never a part of a record, and never a record after a missing one. An
///    append that fails with [`LogError::Closed`] wrote nothing: no replay returns its records
///    (callers may tell their clients that nothing happened).
/// 4. `replay(after)` hands every durable record with LSN > `after` to the callback, in order,
///    exactly once. It is used at boot before any append, and by followers. A replay running
///    while appends go on hands over at least the records durable when it started.
/// 5. `release_before(lsn)` tells the log that the state up to `lsn` is safe in a snapshot:
///    records with LSN ≤ `lsn` may be deleted (whole segments or ledgers at a time). A later
///    `replay(after)` with `after >= lsn` still works; one with a smaller `after` either hands
///    over every record it asked for or fails with [`LogError::Released`], never skips some.
///    LSNs keep counting from where they were, also across a reopen.
/// 6. A record of `max_record_size()` bytes or less is accepted; a larger one fails its append
///    with [`LogError::RecordTooLarge`] without failing the log.
/// 7. `append` never blocks its caller (it runs on async threads). Back-pressure is
///    [`CommitLog::ready`], a future that producers await before producing more; appends made
///    while it is pending still queue at once, in call order.
pub trait CommitLog: Send + Sync + 'static {
    /// Queues `records` for appending, at once and without blocking; see the contract above.
    ///
    /// An empty batch writes nothing and acts as a barrier: it resolves, in call order like any
    /// other append, once everything queued before it is durable, with `first == last ==` the
    /// LSN of the last record queued before it (`Lsn::ZERO` for an empty log). On a failed log it
    /// fails like any other append.
    fn append(&self, records: Vec<Bytes>) -> AppendFuture;

    /// Replays durable records with LSN > `after` into `f`, in order.
    ///
    /// # Errors
    /// [`LogError::Corrupt`] on bad data, [`LogError::Io`] or [`LogError::Backend`] on read
    /// failures, [`LogError::Replay`] when the callback refuses a record.
    fn replay<'a>(
        &'a self,
        after: Lsn,
        f: &'a mut ReplayFn<'a>,
    ) -> BoxFuture<'a, Result<ReplayReport, LogError>>;

    /// The LSN of the last durable record (`Lsn::ZERO` when the log is empty).
    fn last_lsn(&self) -> Lsn;

    /// Allows the log to drop records with LSN ≤ `lsn`; see the contract above. The deletion
    /// does no blocking I/O on the calling thread; a crash during it leaves the log starting
    /// somewhere between its old start and `lsn + 1`, never with a hole.
    ///
    /// # Errors
    /// [`LogError::Io`] if deleting old segments fails (the log stays usable).
    fn release_before(&self, lsn: Lsn) -> BoxFuture<'_, Result<(), LogError>>;

    /// The largest record this log accepts, in bytes.
    fn max_record_size(&self) -> usize;

    /// Resolves once the log has room for more appends: producers await it before producing
    /// more, so that a producer faster than the storage is held back before it fills memory.
    /// Appends made while it is pending still queue (contract 1). It also resolves once the
    /// log is closed or failed (the next append then fails). The default resolves at once, for
    /// logs that hold nothing in memory on behalf of an append.
    fn ready(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Flushes what is queued, stops the writer and releases files. Later appends fail with
    /// [`LogError::Closed`].
    fn close(&self) -> BoxFuture<'_, Result<(), LogError>>;

    /// How often and how long the log synced its data to disk since it was opened, for the
    /// broker's metrics. The default is `None`: the log does not sync a disk of its own (in
    /// memory, or replicated to bookies, whose syncs the broker's append latency includes).
    fn sync_stats(&self) -> Option<SyncStats> {
        None
    }
}

/// Disk syncs of a [`CommitLog`] (see [`CommitLog::sync_stats`]).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Data syncs (`fdatasync`) done.
    pub syncs: u64,
    /// Time spent in them, in nanoseconds.
    pub sync_nanos: u64,
}
