//! [`FileLog`]: the durable commit log of a standalone broker, as segment files in a directory.
//!
//! - Layout: one directory holding segment files named by their first LSN
//!   (`00000000000000000001.log`, ...) and a `LOCK` file. Byte layout in `format`.
//! - Writes: one writer thread with group commit (see `writer`): concurrent appends share one
//!   write and one `fdatasync`; an append is acknowledged only after its fsync. `append` never
//!   blocks; `ready` is the back-pressure.
//! - Open: every segment is validated; a damaged tail of the last segment is truncated only
//!   when it is proven to be an unfinished write, any other damage is a hard error naming the
//!   file and offset (see `recovery`; [`crate::repair`] is the operator's way out).
//! - Replay streams records from disk through a reader thread and a bounded channel.
//! - `release_before` deletes whole segments, never the one being written, oldest first, each
//!   deletion durable before the next, on a thread of its own.
//! - File operations go through [`crate::vfs::Fs`], so tests can run the log on a disk that
//!   loses power.

pub(crate) mod format;
pub(crate) mod recovery;
pub(crate) mod segment;
mod writer;

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::info;

use self::segment::{Next, SegmentMeta, SegmentReader, io_err};
use self::writer::{Active, Counters, ExitStatus, Pending, Queue, Shared, State, lock};
use crate::vfs::{self, Fs, FsFile, FsLock, RealFs};
use crate::{AppendFuture, Appended, BoxFuture, CommitLog, LogError, Lsn, ReplayFn, ReplayReport};

/// Default size at which a segment is closed and a new one started: large enough that rolling
/// (three fsyncs) is rare, small enough that `release_before` frees space in useful steps.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 * 1024 * 1024;
/// Default largest record: far above any broker entry (a task with a large parameter or
/// result), while one record can never need more than a small part of memory.
pub const DEFAULT_MAX_RECORD_SIZE: usize = 16 * 1024 * 1024;
/// Upper bound of `max_record_size`: keeps frame lengths in 32 bits and one record readable
/// into memory.
pub const MAX_RECORD_SIZE_LIMIT: usize = 1024 * 1024 * 1024;
/// Default bound on the bytes queued for the writer (see [`CommitLog::ready`]): about a second
/// of a slow disk, so a producer faster than the disk is held back before it fills memory.
pub const DEFAULT_MAX_QUEUED_BYTES: u64 = 64 * 1024 * 1024;
/// Smallest segment size accepted: a header and a few small records.
const MIN_SEGMENT_SIZE: u64 = 4096;
/// Name of the lock file in the log directory.
const LOCK_FILE: &str = "LOCK";
/// Records per message from the replay reader thread: amortises channel costs.
const REPLAY_CHUNK_RECORDS: usize = 256;
/// Payload bytes per message from the replay reader thread (a chunk closes at either limit).
const REPLAY_CHUNK_BYTES: usize = 1024 * 1024;
/// Messages buffered between the replay reader thread and the callback: with the chunk limits
/// this bounds a replay's memory to a few MiB plus one record.
const REPLAY_CHANNEL_BOUND: usize = 4;

/// Settings of a [`FileLog`].
#[derive(Clone, Debug)]
pub struct FileLogConfig {
    /// Size in bytes at which the active segment is closed and a new one started. A segment
    /// can exceed it by one record when that record alone is larger. Default
    /// [`DEFAULT_SEGMENT_SIZE`]; at least 4 KiB.
    pub segment_size: u64,
    /// Largest record accepted, in bytes. Default [`DEFAULT_MAX_RECORD_SIZE`]; at most
    /// [`MAX_RECORD_SIZE_LIMIT`].
    pub max_record_size: usize,
    /// Bytes of records waiting for the writer from which on [`CommitLog::ready`] is pending,
    /// holding producers back until the writer takes the queue. Default
    /// [`DEFAULT_MAX_QUEUED_BYTES`]. `append` itself never waits: a producer that does not
    /// await `ready` can queue more.
    pub max_queued_bytes: u64,
    /// Whether each batch is fsynced before it is acknowledged. Default `true`.
    ///
    /// **Unsafe with `false`**: acknowledged records may be lost or torn by a power failure or
    /// a kernel crash, and recovery may then fail or drop acknowledged records. For benchmarks
    /// only.
    pub fsync: bool,
}

impl Default for FileLogConfig {
    fn default() -> Self {
        FileLogConfig {
            segment_size: DEFAULT_SEGMENT_SIZE,
            max_record_size: DEFAULT_MAX_RECORD_SIZE,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            fsync: true,
        }
    }
}

/// The unfinished last write found and truncated by [`FileLog::open`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub file: PathBuf,
    /// Offset where the valid records end and where the file was cut.
    pub offset: u64,
    /// Bytes removed.
    pub bytes_dropped: u64,
    /// What was found at `offset`, and why it is an unfinished write.
    pub reason: String,
}

/// What [`FileLog::open`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenReport {
    /// LSN of the first record the log holds (earlier ones were released); with `last_lsn`
    /// below it, the log holds no record.
    pub first_lsn: Lsn,
    /// LSN of the last record.
    pub last_lsn: Lsn,
    /// Number of segment files.
    pub segments: usize,
    /// The unfinished write that was truncated, if any (also logged at WARN).
    pub torn_tail: Option<TornTail>,
}

/// Counters of a [`FileLog`] since it was opened.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FileLogStats {
    /// Records written.
    pub records: u64,
    /// `write` calls (one per batch, plus one per segment roll inside a batch).
    pub writes: u64,
    /// `fdatasync` calls on segments (segment creation fsyncs are not counted).
    pub fsyncs: u64,
    /// Time spent in those `fdatasync` calls, in nanoseconds.
    pub fsync_nanos: u64,
    /// Bytes written, frames included.
    pub bytes: u64,
}

/// A commit log in segment files on a local disk, with group commit.
///
/// Open it with [`FileLog::open`]; use it through [`CommitLog`]. Dropping it without
/// [`CommitLog::close`] still writes what is queued and stops the writer, in the background.
pub struct FileLog {
    shared: Arc<Shared>,
    /// Largest record accepted.
    max_record_size: usize,
    /// Tells when the writer thread has ended and how.
    exit: watch::Receiver<ExitStatus>,
}

impl std::fmt::Debug for FileLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLog")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

/// A log directory locked by [`FileLog::claim`] and not read yet. Dropping it unlocks the
/// directory.
pub struct ClaimedLog {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    config: FileLogConfig,
    lock: Box<dyn FsLock>,
}

impl std::fmt::Debug for ClaimedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimedLog")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl ClaimedLog {
    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The rest of [`FileLog::open`]: validates every segment, truncates an unfinished last
    /// write, and starts the writer thread. Blocking.
    ///
    /// # Errors
    /// As [`FileLog::open`], except those of [`FileLog::claim`].
    pub fn open(self) -> Result<(FileLog, OpenReport), LogError> {
        let ClaimedLog {
            fs,
            dir,
            config,
            lock,
        } = self;
        let recovered = recovery::recover(&*fs, &dir)?;
        let active_segment = recovered
            .segments
            .last()
            .expect("recovery returns at least one segment");
        let file = fs.open_write(&active_segment.path).map_err(io_err(format!(
            "open segment {}",
            active_segment.path.display()
        )))?;
        FileLog::start(fs, dir, &config, lock, recovered, file)
    }
}

impl FileLog {
    /// Opens (or creates) the log in `dir`: locks the directory, validates every segment,
    /// truncates an unfinished last write, and starts the writer thread. Blocking.
    ///
    /// # Recovery
    /// Every segment header and record checksum (of the frame header, and of the payload) is
    /// verified, and LSNs must follow each other across segments; the first segment found is
    /// the start of the log. The only damage tolerated is the unfinished write of a crash at
    /// the end of the last segment, and only when that is proven: the file ends inside the
    /// first bad record, or a 512-byte sector of it reads as zeros (never written, which cannot
    /// be after its fsync), and no record of a later write follows. Such a tail was never
    /// acknowledged: it is truncated (then fsynced), logged at WARN and returned in
    /// [`OpenReport::torn_tail`]. Damage in written data, even in the last record, is refused:
    /// acknowledged records are never dropped silently. The rule and its reasoning are in the
    /// documentation of the `recovery` module.
    ///
    /// # Errors
    /// - [`LogError::Io`] if the directory cannot be created or read, or is locked by another
    ///   open log (the message names the directory); retry once the other process is gone.
    /// - [`LogError::Corrupt`] naming the file and offset of damaged data that is not a proven
    ///   unfinished write. The message says what to do: restore the log from a replica or a
    ///   backup, or cut it at that offset with `majordodo log repair --dir <dir>`
    ///   ([`crate::repair::truncate_log`]), losing the records from there on.
    /// - [`LogError::UnsupportedFormat`] for a segment of another format version (version 1
    ///   was written by earlier pre-1.0 releases and is not migrated).
    /// - [`LogError::Io`] of kind `InvalidInput` for an invalid `config`.
    pub fn open(
        dir: impl AsRef<Path>,
        config: FileLogConfig,
    ) -> Result<(FileLog, OpenReport), LogError> {
        FileLog::open_with(Arc::new(RealFs), dir, config)
    }

    /// [`FileLog::open`] on the file system `fs`: [`vfs::RealFs`] is what `open` uses;
    /// [`vfs::SimFs`] simulates power failures in tests.
    ///
    /// # Errors
    /// As [`FileLog::open`].
    pub fn open_with(
        fs: Arc<dyn Fs>,
        dir: impl AsRef<Path>,
        config: FileLogConfig,
    ) -> Result<(FileLog, OpenReport), LogError> {
        FileLog::claim_with(fs, dir, config)?.open()
    }

    /// The first step of [`FileLog::open`], quick: checks `config`, creates `dir` if needed and
    /// locks it, reading no segment. [`ClaimedLog::open`] does the rest. A broker claims its
    /// log first, so that a second process on the same directory is refused at once, then
    /// reads the log while its snapshot loads. Blocking.
    ///
    /// # Errors
    /// The [`LogError::Io`] errors of [`FileLog::open`] about the directory and `config`.
    pub fn claim(dir: impl AsRef<Path>, config: FileLogConfig) -> Result<ClaimedLog, LogError> {
        FileLog::claim_with(Arc::new(RealFs), dir, config)
    }

    /// [`FileLog::claim`] on the file system `fs`.
    ///
    /// # Errors
    /// As [`FileLog::claim`].
    pub fn claim_with(
        fs: Arc<dyn Fs>,
        dir: impl AsRef<Path>,
        config: FileLogConfig,
    ) -> Result<ClaimedLog, LogError> {
        let dir = dir.as_ref().to_path_buf();
        validate(&config)?;
        create_dir(&*fs, &dir)?;
        let lock = lock_dir(&*fs, &dir)?;
        Ok(ClaimedLog {
            fs,
            dir,
            config,
            lock,
        })
    }

    /// Makes `dir` an empty log that continues after `last`: its first segment starts at
    /// `last + 1`. This is how a broker's data directory is restored from a snapshot covering
    /// every position up to `last` (a backup): the broker boots from the snapshot and appends
    /// right after it. The directory is created if needed.
    ///
    /// # Errors
    /// [`LogError::Io`] of kind `AlreadyExists` when `dir` already holds a segment (a log is
    /// never overwritten), of kind `WouldBlock` when another log has it open, or any I/O
    /// failure.
    pub fn create_after(dir: impl AsRef<Path>, last: Lsn) -> Result<(), LogError> {
        let (fs, dir) = (&RealFs, dir.as_ref());
        create_dir(fs, dir)?;
        let _lock = lock_dir(fs, dir)?;
        let listing = segment::list_segments(fs, dir)?;
        if let Some(first) = listing.segments.first() {
            return Err(LogError::Io {
                context: format!(
                    "prepare log directory {} to continue after lsn {}",
                    dir.display(),
                    last.0
                ),
                source: io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "it already holds a log (segment {}); use an empty directory",
                        first.path.display()
                    ),
                ),
            });
        }
        let first = Lsn(last.0.checked_add(1).ok_or_else(|| LogError::Io {
            context: format!("prepare log directory {}", dir.display()),
            source: io::Error::new(io::ErrorKind::InvalidInput, "lsn out of range"),
        })?);
        segment::create_segment(fs, dir, first)?;
        info!(dir = %dir.display(), first_lsn = first.0, "prepared an empty log");
        Ok(())
    }

    /// Starts the writer on a recovered directory, appending to `file` (the active segment).
    fn start(
        fs: Arc<dyn Fs>,
        dir: PathBuf,
        config: &FileLogConfig,
        dir_lock: Box<dyn FsLock>,
        recovered: recovery::Recovered,
        file: Box<dyn FsFile>,
    ) -> Result<(FileLog, OpenReport), LogError> {
        let active_first = recovered
            .segments
            .last()
            .expect("recovery returns at least one segment")
            .first;
        let active = Active {
            file,
            len: recovered.active_len,
            has_records: recovered.last_lsn >= active_first,
        };
        let report = OpenReport {
            first_lsn: recovered.segments[0].first,
            last_lsn: recovered.last_lsn,
            segments: recovered.segments.len(),
            torn_tail: recovered.torn_tail,
        };
        info!(
            dir = %dir.display(),
            first_lsn = report.first_lsn.0,
            last_lsn = report.last_lsn.0,
            segments = report.segments,
            "opened commit log"
        );
        let shared = Arc::new(Shared {
            fs,
            dir,
            segment_size: config.segment_size,
            fsync: config.fsync,
            max_queued_bytes: config.max_queued_bytes,
            queue: Mutex::new(Queue {
                pending: VecDeque::new(),
                queued_bytes: 0,
                last_assigned: recovered.last_lsn,
                state: State::Open,
            }),
            queued: Condvar::new(),
            room: tokio::sync::Notify::new(),
            durable: AtomicU64::new(recovered.last_lsn.0),
            segments: Mutex::new(recovered.segments),
            release: Mutex::new(()),
            counters: Counters::default(),
            dir_lock: Mutex::new(Some(dir_lock)),
        });
        let (exit_tx, exit_rx) = watch::channel(None);
        let writer_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("majordodo-log-writer".to_string())
            .spawn(move || writer::run(writer_shared, active, exit_tx))
            .map_err(io_err("start the log writer thread"))?;
        Ok((
            FileLog {
                shared,
                max_record_size: config.max_record_size,
                exit: exit_rx,
            },
            report,
        ))
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Counters since the log was opened.
    pub fn stats(&self) -> FileLogStats {
        let c = &self.shared.counters;
        FileLogStats {
            records: c.records.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            fsync_nanos: c.fsync_nanos.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
        }
    }

    /// Stops the writer the way a process crash would, for crash tests: appends still queued
    /// are dropped (they fail with [`LogError::Closed`]) and nothing more is written or
    /// fsynced. A write already under way finishes. The files stay as they are; the directory
    /// lock is released when this resolves, so the log can be reopened.
    pub async fn crash(self) {
        self.shared.request_stop(State::Halting);
        // How the writer ended does not matter to a crash.
        let _ = wait_exit(self.exit.clone()).await;
    }
}

impl Drop for FileLog {
    fn drop(&mut self) {
        self.shared.request_stop(State::Closing);
    }
}

fn validate(config: &FileLogConfig) -> Result<(), LogError> {
    let invalid = |message: String| LogError::Io {
        context: "check file log config".to_string(),
        source: io::Error::new(io::ErrorKind::InvalidInput, message),
    };
    if config.segment_size < MIN_SEGMENT_SIZE {
        return Err(invalid(format!(
            "segment_size {} is below {MIN_SEGMENT_SIZE}",
            config.segment_size
        )));
    }
    if config.max_record_size > MAX_RECORD_SIZE_LIMIT {
        return Err(invalid(format!(
            "max_record_size {} is above {MAX_RECORD_SIZE_LIMIT}",
            config.max_record_size
        )));
    }
    Ok(())
}

/// Creates the log directory and its missing parents, durably: the parent of every directory
/// created is fsynced, or a power failure could lose the whole log with its entry.
fn create_dir(fs: &dyn Fs, dir: &Path) -> Result<(), LogError> {
    vfs::create_dir_all_durable(fs, dir)
        .map_err(io_err(format!("create log directory {}", dir.display())))
}

/// Takes the lock on `dir` (an `flock` on `dir/LOCK`), so that two processes, or two
/// `FileLog`s of one process, never write the same directory.
pub(crate) fn lock_dir(fs: &dyn Fs, dir: &Path) -> Result<Box<dyn FsLock>, LogError> {
    let path = dir.join(LOCK_FILE);
    match fs.lock(&path) {
        Ok(lock) => Ok(lock),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(LogError::Io {
            context: format!(
                "lock log directory {}: it is already open in another log",
                dir.display()
            ),
            source: e,
        }),
        Err(e) => Err(LogError::Io {
            context: format!("lock log directory {}", dir.display()),
            source: e,
        }),
    }
}

/// Waits until the writer thread has ended; returns how.
async fn wait_exit(mut exit: watch::Receiver<ExitStatus>) -> Result<(), LogError> {
    // The sender lives until the writer has stored its status, so an error here cannot happen
    // before the status is in; treat it like a clean exit.
    let waited = exit.wait_for(Option::is_some).await.map(|s| s.clone());
    let status = match waited {
        Ok(status) => status,
        Err(_) => exit.borrow().clone(),
    };
    match status {
        Some(Err(failure)) => Err(failure.to_log_error()),
        _ => Ok(()),
    }
}

impl CommitLog for FileLog {
    /// Queues `records` (see the trait's contract): takes the queue lock, assigns LSNs, pushes
    /// and wakes the writer. Never waits for room; see [`FileLog::ready`](CommitLog::ready).
    fn append(&self, records: Vec<Bytes>) -> AppendFuture {
        if let Some(big) = records.iter().find(|r| r.len() > self.max_record_size) {
            return std::future::ready(Err(LogError::RecordTooLarge {
                size: big.len(),
                limit: self.max_record_size,
            }))
            .boxed();
        }
        let bytes: u64 = records.iter().map(|r| format::frame_len(r.len())).sum();
        let count = records.len() as u64;
        let shared = &self.shared;
        let mut queue = lock(&shared.queue);
        if queue.state != State::Open {
            return std::future::ready(Err(LogError::Closed)).boxed();
        }
        let appended = if count == 0 {
            Appended {
                first: queue.last_assigned,
                last: queue.last_assigned,
            }
        } else {
            Appended {
                first: queue.last_assigned.next(),
                last: Lsn(queue.last_assigned.0 + count),
            }
        };
        queue.last_assigned = appended.last;
        queue.queued_bytes += bytes;
        let (done, rx) = oneshot::channel();
        queue.pending.push_back(Pending {
            records,
            appended,
            done,
        });
        drop(queue);
        shared.queued.notify_one();
        // A dropped sender means the writer is gone without answering: treat as closed.
        rx.map(|r| r.unwrap_or(Err(LogError::Closed))).boxed()
    }

    fn replay<'a>(
        &'a self,
        after: Lsn,
        f: &'a mut ReplayFn<'a>,
    ) -> BoxFuture<'a, Result<ReplayReport, LogError>> {
        Box::pin(async move {
            if lock(&self.shared.queue).state == State::Stopped {
                return Err(LogError::Closed);
            }
            // Read the durable LSN before the segment list: any segment holding a record up to
            // it was listed before that record was written.
            let last = Lsn(self.shared.durable.load(Ordering::Acquire));
            let segments = lock(&self.shared.segments).clone();
            if after >= last {
                return Ok(ReplayReport { records: 0, last });
            }
            let first = segments.first().map_or(Lsn(1), |s| s.first);
            if after.next() < first {
                return Err(LogError::Released { after, first });
            }
            let start = segments
                .iter()
                .rposition(|s| s.first <= after.next())
                .unwrap_or(0);
            let plan = segments[start..].to_vec();
            let (tx, mut rx) = mpsc::channel(REPLAY_CHANNEL_BOUND);
            let fs = Arc::clone(&self.shared.fs);
            std::thread::Builder::new()
                .name("majordodo-log-replay".to_string())
                .spawn(move || read_range(&*fs, plan, after, last, tx))
                .map_err(io_err("start a log replay thread"))?;
            let mut records = 0u64;
            while let Some(chunk) = rx.recv().await {
                for (lsn, payload) in chunk? {
                    f(lsn, payload).map_err(|reason| LogError::Replay { lsn, reason })?;
                    records += 1;
                }
            }
            if records != last.0 - after.0 {
                return Err(LogError::Corrupt {
                    file: self.shared.dir.display().to_string(),
                    offset: 0,
                    reason: format!("replay ended after {records} records before lsn {last}"),
                });
            }
            Ok(ReplayReport { records, last })
        })
    }

    fn last_lsn(&self) -> Lsn {
        Lsn(self.shared.durable.load(Ordering::Acquire))
    }

    /// Deletes the segments whose records all have LSN ≤ `lsn`, except the one being written,
    /// oldest first, fsyncing the directory after each deletion, so that a crash leaves a
    /// suffix of the segments, never a hole.
    /// The file operations run on a thread of their own, never on the caller's. A replay under
    /// way that still needs a deleted segment fails.
    fn release_before(&self, lsn: Lsn) -> BoxFuture<'_, Result<(), LogError>> {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            if lock(&shared.queue).state == State::Stopped {
                return Err(LogError::Closed);
            }
            let (done, result) = oneshot::channel();
            std::thread::Builder::new()
                .name("majordodo-log-release".to_string())
                .spawn(move || {
                    // The receiver may be gone (the caller dropped the future): nothing to do.
                    let _ = done.send(release_segments(&shared, lsn));
                })
                .map_err(io_err("start a log release thread"))?;
            // A dropped sender means the thread died without answering.
            result.await.unwrap_or(Err(LogError::Closed))
        })
    }

    fn max_record_size(&self) -> usize {
        self.max_record_size
    }

    /// Pending while [`FileLogConfig::max_queued_bytes`] or more (or 65 536 appends or more)
    /// wait for the writer; resolves when the writer takes the queue into its next write, or
    /// when the log stops.
    fn ready(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            loop {
                // Registered before the check, so a wake-up between the two is not missed.
                let notified = self.shared.room.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                if self.shared.has_room() {
                    return;
                }
                notified.await;
            }
        })
    }

    /// Writes and fsyncs what is queued, stops the writer and releases the directory lock.
    ///
    /// # Errors
    /// The write or fsync failure that stopped the writer, if any (also after an earlier
    /// failure of an append).
    fn close(&self) -> BoxFuture<'_, Result<(), LogError>> {
        self.shared.request_stop(State::Closing);
        let exit = self.exit.clone();
        Box::pin(async move {
            let result = wait_exit(exit).await;
            // Also after a failure: the directory lock is released, so the files are no longer
            // ours to read.
            lock(&self.shared.queue).state = State::Stopped;
            result
        })
    }

    fn sync_stats(&self) -> Option<crate::SyncStats> {
        let stats = self.stats();
        Some(crate::SyncStats {
            syncs: stats.fsyncs,
            sync_nanos: stats.fsync_nanos,
        })
    }
}

/// Deletes the segments whose records all have LSN ≤ `lsn`, except the last one.
///
/// Crash safety: recovery takes the first segment it finds as the start of the log, and any
/// other missing LSN as corruption. Deleting oldest first, and fsyncing the directory after each
/// deletion before starting the next, means a power failure at any point leaves a suffix of the
/// segments: the log then starts a little earlier than asked, never with a hole. (Deleting all
/// of them before one fsync would let a crash keep a later deletion and lose an earlier one.)
/// Releases are serialised by `Shared::release` so that overlapping calls keep that order too.
/// Each segment leaves the in-memory list before its file goes, so a replay planned later asks
/// for it as released rather than finding it missing.
fn release_segments(shared: &Shared, lsn: Lsn) -> Result<(), LogError> {
    let _one_at_a_time = lock(&shared.release);
    let mut deleted = 0usize;
    loop {
        let doomed = {
            let mut segments = lock(&shared.segments);
            // The first segment holds only records ≤ `lsn` when the next starts at ≤ `lsn` + 1.
            match segments.get(1) {
                Some(next) if next.first.0 - 1 <= lsn.0 => segments.remove(0),
                _ => break,
            }
        };
        match shared.fs.remove_file(&doomed.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(LogError::Io {
                    context: format!("delete segment {}", doomed.path.display()),
                    source: e,
                });
            }
        }
        segment::sync_dir(&*shared.fs, &shared.dir)?;
        deleted += 1;
    }
    if deleted > 0 {
        info!(
            dir = %shared.dir.display(),
            released_before = lsn.0,
            segments = deleted,
            "deleted released log segments"
        );
    }
    Ok(())
}

/// A chunk of records sent by the replay reader thread.
type Chunk = Result<Vec<(Lsn, Bytes)>, LogError>;

/// Body of the replay reader thread: sends the records with LSN in `(after, last]` from the
/// segments of `plan` (in order, the first holding `after + 1`), then ends. Stops early when
/// the receiver is gone.
fn read_range(fs: &dyn Fs, plan: Vec<SegmentMeta>, after: Lsn, last: Lsn, tx: mpsc::Sender<Chunk>) {
    let mut chunk = Vec::new();
    let mut chunk_bytes = 0usize;
    let send = |chunk: &mut Vec<(Lsn, Bytes)>, bytes: &mut usize| -> bool {
        *bytes = 0;
        tx.blocking_send(Ok(std::mem::take(chunk))).is_ok()
    };
    let result = (|| -> Result<(), LogError> {
        let mut expected: Option<Lsn> = None;
        let mut end = (String::new(), 0);
        for segment in &plan {
            let mut reader = SegmentReader::open(fs, &segment.path)?;
            let file = segment.path.display().to_string();
            let corrupt = |offset, reason| LogError::Corrupt {
                file: file.clone(),
                offset,
                reason,
            };
            let mut next_lsn = reader.header().first_lsn;
            if next_lsn != segment.first || expected.is_some_and(|e| e != next_lsn) {
                return Err(corrupt(0, format!("segment starts at lsn {next_lsn}")));
            }
            loop {
                match reader.next()? {
                    Next::End => break,
                    Next::Bad { offset, damage } => {
                        return Err(corrupt(offset, damage.describe().to_string()));
                    }
                    Next::Record {
                        header,
                        offset,
                        payload,
                    } => {
                        if header.lsn != next_lsn {
                            return Err(corrupt(
                                offset,
                                format!("record has lsn {}, expected {next_lsn}", header.lsn),
                            ));
                        }
                        next_lsn = next_lsn.next();
                        if header.lsn > after {
                            chunk_bytes += payload.len();
                            chunk.push((header.lsn, payload));
                        }
                        let full = chunk.len() >= REPLAY_CHUNK_RECORDS
                            || chunk_bytes >= REPLAY_CHUNK_BYTES;
                        let done = header.lsn == last;
                        if done || full {
                            let delivered = send(&mut chunk, &mut chunk_bytes);
                            if done || !delivered {
                                return Ok(());
                            }
                        }
                    }
                }
            }
            expected = Some(next_lsn);
            end = (file.clone(), reader.offset());
        }
        Err(LogError::Corrupt {
            file: end.0,
            offset: end.1,
            reason: format!("log ends before the last durable lsn {last}"),
        })
    })();
    if let Err(e) = result {
        let _ = tx.blocking_send(Err(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: a failed write fails that append with the I/O error, every later append with
    // `Closed`, and `close` reports the failure; nothing is retried.
    #[tokio::test]
    async fn failed_write_fails_the_log_for_good() {
        let dir = tempfile::tempdir().expect("temp dir");
        let dir = dir.path().to_path_buf();
        let (log, _) = FileLog::open(&dir, FileLogConfig::default()).expect("open");
        log.close().await.expect("close");
        // Reopen by hand with the active segment opened read-only, so that writing fails.
        let dir_lock = lock_dir(&RealFs, &dir).expect("lock");
        let recovered = recovery::recover(&RealFs, &dir).expect("recover");
        let path = recovered.segments[0].path.clone();
        let file = RealFs.open_read(&path).expect("open segment read-only");
        let (log, _) = FileLog::start(
            Arc::new(RealFs),
            dir.clone(),
            &FileLogConfig::default(),
            dir_lock,
            recovered,
            file,
        )
        .expect("start");
        let first = log.append(vec![Bytes::from_static(b"one")]);
        match first.await {
            Err(LogError::Io { context, .. }) => {
                assert!(context.starts_with("write segment"), "{context}");
            }
            other => panic!("a failed write gave {other:?}"),
        }
        assert!(matches!(
            log.append(vec![Bytes::from_static(b"two")]).await,
            Err(LogError::Closed)
        ));
        assert!(matches!(log.close().await, Err(LogError::Io { .. })));
        assert_eq!(log.last_lsn(), Lsn::ZERO, "nothing became durable");
        assert_eq!(log.stats().fsyncs, 0, "no fsync follows a failed write");
        // The lock was released: the directory opens again, and the failed record is absent.
        let (log, report) = FileLog::open(&dir, FileLogConfig::default()).expect("reopen");
        assert_eq!(report.last_lsn, Lsn::ZERO);
        log.close().await.expect("close");
    }
}
