//! The append queue and the single writer thread of the file log (group commit).
//!
//! `append` assigns LSNs and pushes its records onto the queue under one lock, so call order is
//! log order; it never waits. The queue's bounds (bytes and appends) are enforced by
//! `CommitLog::ready`, which producers await: it is pending while the queue is over a bound and
//! resolves when the writer takes the queue. One writer thread (blocking I/O is right here)
//! loops:
//! 1. take everything queued;
//! 2. frame all of it into one buffer and write it, with one positional write, at the end of the
//!    active segment; when the segment is full, first write and fsync what goes into it, then
//!    roll to a new segment (see `segment::create_segment` for its own fsyncs);
//! 3. fsync the data (`sync_data`) once;
//! 4. publish the new durable LSN and complete every append of the batch, in order.
//!
//! While the writer is in steps 2–3, new appends queue up and share the next fsync. After any
//! failed write or fsync the log is failed for good: an fsync is never retried, since the kernel
//! may already have dropped the dirty pages it could not write.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::{Notify, oneshot, watch};
use tracing::error;

use super::format::{encode_record, frame_len};
use super::segment::{SegmentMeta, create_segment, segment_file_name};
use crate::vfs::{Fs, FsFile, FsLock};
use crate::{Appended, LogError, Lsn};

/// Appends in the queue above which `ready` makes producers wait (with the bytes bound of the
/// config). Bounds the completion handles held; far above what one fsync interval collects
/// from a broker.
pub(crate) const MAX_QUEUED_APPENDS: usize = 65_536;
/// Above this buffer capacity the writer gives memory back after a batch, so one burst does not
/// pin a large buffer for the life of the log.
const KEEP_BUFFER_CAPACITY: usize = 4 * 1024 * 1024;

/// Locks a mutex, ignoring poisoning: every critical section here leaves the state consistent.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Lifecycle of the log.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Accepting appends.
    Open,
    /// `close` was called: the writer writes what is queued, then stops.
    Closing,
    /// `crash` was called: the writer drops what is queued and stops.
    Halting,
    /// A write or fsync failed; nothing more is written.
    Failed,
    /// The writer has stopped.
    Stopped,
}

/// One append waiting for the writer.
pub(crate) struct Pending {
    /// The records.
    pub(crate) records: Vec<Bytes>,
    /// What the append resolves with on success.
    pub(crate) appended: Appended,
    /// Completion handle.
    pub(crate) done: oneshot::Sender<Result<Appended, LogError>>,
}

/// The append queue, under one lock.
pub(crate) struct Queue {
    /// Appends not yet taken by the writer, in call order.
    pub(crate) pending: VecDeque<Pending>,
    /// Framed size of the records in `pending`.
    pub(crate) queued_bytes: u64,
    /// LSN of the last record queued; the next append starts after it.
    pub(crate) last_assigned: Lsn,
    /// Lifecycle.
    pub(crate) state: State,
}

/// Counters of the writer, for benchmarks and metrics.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) records: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) fsyncs: AtomicU64,
    /// Time spent in those `fdatasync` calls, in nanoseconds.
    pub(crate) fsync_nanos: AtomicU64,
    pub(crate) bytes: AtomicU64,
}

/// Why the writer stopped writing; cloneable so that every waiter can get a copy.
#[derive(Clone, Debug)]
pub(crate) struct WriteError {
    context: String,
    kind: std::io::ErrorKind,
    message: String,
}

impl WriteError {
    fn new(context: String, source: &std::io::Error) -> WriteError {
        WriteError {
            context,
            kind: source.kind(),
            message: source.to_string(),
        }
    }

    /// The error handed to callers.
    pub(crate) fn to_log_error(&self) -> LogError {
        LogError::Io {
            context: self.context.clone(),
            source: std::io::Error::new(self.kind, self.message.clone()),
        }
    }
}

impl From<LogError> for WriteError {
    fn from(e: LogError) -> WriteError {
        match e {
            LogError::Io { context, source } => WriteError::new(context, &source),
            other => WriteError {
                context: "write log".to_string(),
                kind: std::io::ErrorKind::Other,
                message: other.to_string(),
            },
        }
    }
}

/// How the writer ended: `None` while it runs, then `Some(Ok)` or the failure.
pub(crate) type ExitStatus = Option<Result<(), WriteError>>;

/// State shared by the log handle and its writer thread.
pub(crate) struct Shared {
    /// The file system holding the log.
    pub(crate) fs: Arc<dyn Fs>,
    /// The log directory.
    pub(crate) dir: PathBuf,
    /// Segment size at which the writer rolls.
    pub(crate) segment_size: u64,
    /// Whether batches are fsynced (false only for benchmarks).
    pub(crate) fsync: bool,
    /// Bound on `Queue::queued_bytes` above which `ready` is pending.
    pub(crate) max_queued_bytes: u64,
    /// The append queue.
    pub(crate) queue: Mutex<Queue>,
    /// Wakes the writer: an append was queued or the state changed.
    pub(crate) queued: Condvar,
    /// Wakes `ready` futures: the writer took the queue or the state changed.
    pub(crate) room: Notify,
    /// LSN of the last durable record, published after its fsync.
    pub(crate) durable: AtomicU64,
    /// Segments in LSN order; the last one is being written. Shared with replay and release.
    pub(crate) segments: Mutex<Vec<SegmentMeta>>,
    /// Held by a release while it deletes segments, so that releases run one at a time and
    /// segments are always deleted oldest first.
    pub(crate) release: Mutex<()>,
    /// Writer counters.
    pub(crate) counters: Counters,
    /// The directory lock; dropping the file releases it.
    pub(crate) dir_lock: Mutex<Option<Box<dyn FsLock>>>,
}

impl Shared {
    /// Changes the state unless the writer already stopped or failed, and wakes everyone.
    pub(crate) fn request_stop(&self, to: State) {
        let mut queue = lock(&self.queue);
        if matches!(queue.state, State::Open | State::Closing) {
            queue.state = to;
        }
        drop(queue);
        self.queued.notify_all();
        self.room.notify_waiters();
    }

    /// Whether producers may append more: the queue is within its bounds, or the log no longer
    /// accepts appends (they fail at once).
    pub(crate) fn has_room(&self) -> bool {
        let queue = lock(&self.queue);
        queue.state != State::Open
            || queue.pending.is_empty()
            || (queue.queued_bytes < self.max_queued_bytes
                && queue.pending.len() < MAX_QUEUED_APPENDS)
    }
}

/// The segment being written.
pub(crate) struct Active {
    /// The file, opened for writing; records go at `len`.
    pub(crate) file: Box<dyn FsFile>,
    /// Its length (the valid part).
    pub(crate) len: u64,
    /// Whether it holds at least one record.
    pub(crate) has_records: bool,
}

/// Body of the writer thread; see the module documentation for the steps.
pub(crate) fn run(shared: Arc<Shared>, mut active: Active, exit: watch::Sender<ExitStatus>) {
    let mut buf = Vec::new();
    let status = loop {
        let batch: Vec<Pending> = {
            let mut queue = lock(&shared.queue);
            while queue.pending.is_empty() && queue.state == State::Open {
                queue = shared
                    .queued
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if queue.state == State::Halting {
                let dropped: Vec<Pending> = queue.pending.drain(..).collect();
                queue.queued_bytes = 0;
                queue.state = State::Stopped;
                drop(queue);
                shared.room.notify_waiters();
                for p in dropped {
                    let _ = p.done.send(Err(LogError::Closed));
                }
                break Ok(());
            }
            if queue.pending.is_empty() {
                // Closing, and everything queued has been written.
                queue.state = State::Stopped;
                drop(queue);
                shared.room.notify_waiters();
                break Ok(());
            }
            queue.queued_bytes = 0;
            let batch = queue.pending.drain(..).collect();
            drop(queue);
            shared.room.notify_waiters();
            batch
        };
        match write_batch(&shared, &mut active, &batch, &mut buf) {
            Ok(last) => {
                if let Some(last) = last {
                    shared.durable.store(last.0, Ordering::Release);
                }
                for p in batch {
                    // The receiver may be gone (the caller dropped the future): nothing to do.
                    let _ = p.done.send(Ok(p.appended));
                }
                if buf.capacity() > KEEP_BUFFER_CAPACITY {
                    buf = Vec::new();
                }
            }
            Err(failure) => {
                error!(
                    dir = %shared.dir.display(),
                    error = %failure.to_log_error(),
                    "commit log write failed; the log accepts no more appends"
                );
                let queued: Vec<Pending> = {
                    let mut queue = lock(&shared.queue);
                    queue.state = State::Failed;
                    queue.queued_bytes = 0;
                    queue.pending.drain(..).collect()
                };
                shared.room.notify_waiters();
                for p in batch {
                    let _ = p.done.send(Err(failure.to_log_error()));
                }
                for p in queued {
                    let _ = p.done.send(Err(LogError::Closed));
                }
                break Err(failure);
            }
        }
    };
    drop(active);
    // Release the directory lock before announcing the exit, so that a reopen that follows a
    // completed close never finds the directory locked.
    drop(lock(&shared.dir_lock).take());
    exit.send_replace(Some(status));
}

/// Writes the records of `batch` and fsyncs them (steps 2 and 3); returns the last LSN written.
fn write_batch(
    shared: &Shared,
    active: &mut Active,
    batch: &[Pending],
    buf: &mut Vec<u8>,
) -> Result<Option<Lsn>, WriteError> {
    buf.clear();
    let mut index: u32 = 0;
    let mut last = None;
    let mut records = 0u64;
    for pending in batch {
        let mut lsn = pending.appended.first;
        for record in &pending.records {
            let size = frame_len(record.len());
            let segment_has_records = active.has_records || index > 0;
            if segment_has_records && active.len + buf.len() as u64 + size > shared.segment_size {
                if !buf.is_empty() {
                    flush(shared, active, buf)?;
                }
                roll(shared, active, lsn)?;
                index = 0;
            } else if index == u32::MAX {
                // A batch index must fit its field: start another write in the same segment.
                flush(shared, active, buf)?;
                index = 0;
            }
            encode_record(buf, lsn, index, record);
            index += 1;
            records += 1;
            last = Some(lsn);
            lsn = lsn.next();
        }
    }
    if !buf.is_empty() {
        flush(shared, active, buf)?;
    }
    shared
        .counters
        .records
        .fetch_add(records, Ordering::Relaxed);
    Ok(last)
}

/// Writes `buf` to the active segment in one call and fsyncs it.
fn flush(shared: &Shared, active: &mut Active, buf: &mut Vec<u8>) -> Result<(), WriteError> {
    let name = || active_name(shared);
    active
        .file
        .write_all_at(buf, active.len)
        .map_err(|e| WriteError::new(format!("write segment {}", name()), &e))?;
    shared.counters.writes.fetch_add(1, Ordering::Relaxed);
    shared
        .counters
        .bytes
        .fetch_add(buf.len() as u64, Ordering::Relaxed);
    if shared.fsync {
        let started = std::time::Instant::now();
        active
            .file
            .sync_data()
            .map_err(|e| WriteError::new(format!("fsync segment {}", name()), &e))?;
        let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        shared.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        shared
            .counters
            .fsync_nanos
            .fetch_add(took, Ordering::Relaxed);
    }
    active.len += buf.len() as u64;
    active.has_records = true;
    buf.clear();
    Ok(())
}

/// Starts a new segment whose first record is `first`. The previous one was fsynced by `flush`.
fn roll(shared: &Shared, active: &mut Active, first: Lsn) -> Result<(), WriteError> {
    let file = create_segment(&*shared.fs, &shared.dir, first)?;
    lock(&shared.segments).push(SegmentMeta {
        first,
        path: shared.dir.join(segment_file_name(first)),
    });
    *active = Active {
        file,
        len: super::format::SEGMENT_HEADER_LEN as u64,
        has_records: false,
    };
    Ok(())
}

fn active_name(shared: &Shared) -> String {
    lock(&shared.segments)
        .last()
        .map(|s| s.path.display().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::format::SEGMENT_HEADER_LEN;
    use crate::file::recovery::recover;
    use crate::vfs::RealFs;

    fn shared_for(dir: &std::path::Path, segment_size: u64) -> (Shared, Active) {
        let file = create_segment(&RealFs, dir, Lsn(1)).expect("create segment");
        let shared = Shared {
            fs: Arc::new(RealFs),
            dir: dir.to_path_buf(),
            segment_size,
            fsync: true,
            max_queued_bytes: u64::MAX,
            queue: Mutex::new(Queue {
                pending: VecDeque::new(),
                queued_bytes: 0,
                last_assigned: Lsn::ZERO,
                state: State::Open,
            }),
            queued: Condvar::new(),
            room: Notify::new(),
            durable: AtomicU64::new(0),
            segments: Mutex::new(vec![SegmentMeta {
                first: Lsn(1),
                path: dir.join(segment_file_name(Lsn(1))),
            }]),
            release: Mutex::new(()),
            counters: Counters::default(),
            dir_lock: Mutex::new(None),
        };
        let active = Active {
            file,
            len: SEGMENT_HEADER_LEN as u64,
            has_records: false,
        };
        (shared, active)
    }

    /// `appends` appends of `per_append` records of `size` bytes, LSNs from 1.
    fn batch(appends: u64, per_append: u64, size: usize) -> Vec<Pending> {
        (0..appends)
            .map(|i| {
                let first = Lsn(i * per_append + 1);
                Pending {
                    records: (0..per_append)
                        .map(|_| Bytes::from(vec![7u8; size]))
                        .collect(),
                    appended: Appended {
                        first,
                        last: Lsn(first.0 + per_append - 1),
                    },
                    done: oneshot::channel().0,
                }
            })
            .collect()
    }

    // Goal: everything queued by many appends costs one write and one fsync (group commit).
    #[test]
    fn one_batch_of_many_appends_costs_one_write_and_one_fsync() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (shared, mut active) = shared_for(dir.path(), 1 << 20);
        let pending = batch(100, 2, 50);
        let last = write_batch(&shared, &mut active, &pending, &mut Vec::new()).expect("write");
        assert_eq!(last, Some(Lsn(200)));
        assert_eq!(shared.counters.writes.load(Ordering::Relaxed), 1);
        assert_eq!(shared.counters.fsyncs.load(Ordering::Relaxed), 1);
        drop(active);
        let recovered = recover(&RealFs, dir.path()).expect("recover");
        assert_eq!(recovered.last_lsn, Lsn(200));
        assert!(recovered.torn_tail.is_none());
    }

    // Goal: a batch larger than a segment rolls inside the batch, syncing each part, and the
    // segments follow each other without a gap.
    #[test]
    fn batch_crossing_the_segment_size_rolls_without_a_gap() {
        let dir = tempfile::tempdir().expect("temp dir");
        // Each frame is 20 + 980 = 1000 bytes: 4 records fill a 4096-byte segment.
        let (shared, mut active) = shared_for(dir.path(), 4096);
        let pending = batch(10, 1, 980);
        let last = write_batch(&shared, &mut active, &pending, &mut Vec::new()).expect("write");
        assert_eq!(last, Some(Lsn(10)));
        let segments: Vec<Lsn> = lock(&shared.segments).iter().map(|s| s.first).collect();
        assert_eq!(segments, vec![Lsn(1), Lsn(5), Lsn(9)]);
        assert_eq!(shared.counters.writes.load(Ordering::Relaxed), 3);
        assert_eq!(shared.counters.fsyncs.load(Ordering::Relaxed), 3);
        drop(active);
        let recovered = recover(&RealFs, dir.path()).expect("recover");
        assert_eq!(recovered.last_lsn, Lsn(10));
        assert_eq!(recovered.segments.len(), 3);
    }
}
