//! [`MemoryLog`]: a commit log held in memory, for tests and embedding.
//!
//! Records live in a [`MemoryStore`] shared by every log opened on it, so a test can close (or
//! drop, as a crash) a log and open the store again. Appends are durable as soon as they are
//! made. Opening a store again fences the logs opened on it before, like a new leader fencing
//! the old one on a replicated log.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use futures_util::FutureExt;

use crate::file::DEFAULT_MAX_RECORD_SIZE;
use crate::{AppendFuture, Appended, BoxFuture, CommitLog, LogError, Lsn, ReplayFn, ReplayReport};

/// Records copied out of the store per lock during a replay, so appends are not held back by a
/// long replay and the callback never runs under the lock.
const REPLAY_CHUNK: usize = 1024;

/// The records of an in-memory log; cheap to clone (the clones share the records).
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<StoreInner>>,
}

#[derive(Debug)]
struct StoreInner {
    /// LSN of `records[0]` (or of the next record when `records` is empty).
    first: Lsn,
    /// Retained records in LSN order.
    records: VecDeque<Bytes>,
    /// Incremented by every open; a log whose epoch is older is fenced.
    epoch: u64,
}

impl Default for StoreInner {
    fn default() -> Self {
        StoreInner {
            first: Lsn(1),
            records: VecDeque::new(),
            epoch: 0,
        }
    }
}

impl StoreInner {
    fn last(&self) -> Lsn {
        Lsn(self.first.0 + self.records.len() as u64 - 1)
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// LSN of the last record appended to the store.
    pub fn last_lsn(&self) -> Lsn {
        self.lock().last()
    }

    fn lock(&self) -> MutexGuard<'_, StoreInner> {
        // Every critical section leaves the store consistent, so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A [`CommitLog`] in memory; see the module documentation.
#[derive(Debug)]
pub struct MemoryLog {
    store: MemoryStore,
    /// The store epoch this log was opened at.
    epoch: u64,
    closed: AtomicBool,
    max_record_size: usize,
}

impl MemoryLog {
    /// A log on a new, empty store.
    pub fn new() -> MemoryLog {
        MemoryLog::open(&MemoryStore::new())
    }

    /// Opens a log on `store`, fencing every log opened on it before: their appends then fail
    /// with [`LogError::Fenced`].
    pub fn open(store: &MemoryStore) -> MemoryLog {
        let epoch = {
            let mut inner = store.lock();
            inner.epoch += 1;
            inner.epoch
        };
        MemoryLog {
            store: store.clone(),
            epoch,
            closed: AtomicBool::new(false),
            max_record_size: DEFAULT_MAX_RECORD_SIZE,
        }
    }

    /// Sets the largest record accepted (default [`DEFAULT_MAX_RECORD_SIZE`]).
    pub fn with_max_record_size(mut self, max_record_size: usize) -> MemoryLog {
        self.max_record_size = max_record_size;
        self
    }

    /// The store, to open it again later.
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    fn check_open(&self, inner: &StoreInner) -> Result<(), LogError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        if inner.epoch != self.epoch {
            return Err(LogError::Fenced(
                "the memory store was opened by another log".to_string(),
            ));
        }
        Ok(())
    }

    fn append_now(&self, records: Vec<Bytes>) -> Result<Appended, LogError> {
        let mut inner = self.store.lock();
        self.check_open(&inner)?;
        if let Some(big) = records.iter().find(|r| r.len() > self.max_record_size) {
            return Err(LogError::RecordTooLarge {
                size: big.len(),
                limit: self.max_record_size,
            });
        }
        let before = inner.last();
        if records.is_empty() {
            return Ok(Appended {
                first: before,
                last: before,
            });
        }
        inner.records.extend(records);
        Ok(Appended {
            first: before.next(),
            last: inner.last(),
        })
    }
}

impl Default for MemoryLog {
    fn default() -> Self {
        MemoryLog::new()
    }
}

impl CommitLog for MemoryLog {
    fn append(&self, records: Vec<Bytes>) -> AppendFuture {
        std::future::ready(self.append_now(records)).boxed()
    }

    fn replay<'a>(
        &'a self,
        after: Lsn,
        f: &'a mut ReplayFn<'a>,
    ) -> BoxFuture<'a, Result<ReplayReport, LogError>> {
        Box::pin(async move {
            if self.closed.load(Ordering::Acquire) {
                return Err(LogError::Closed);
            }
            let last = self.store.last_lsn();
            let mut next = after.next();
            let mut records = 0;
            while next <= last {
                let chunk: Vec<Bytes> = {
                    let inner = self.store.lock();
                    if next < inner.first {
                        return Err(LogError::Released {
                            after,
                            first: inner.first,
                        });
                    }
                    let start = (next.0 - inner.first.0) as usize;
                    let count = ((last.0 - next.0 + 1) as usize).min(REPLAY_CHUNK);
                    inner.records.range(start..start + count).cloned().collect()
                };
                for payload in chunk {
                    f(next, payload).map_err(|reason| LogError::Replay { lsn: next, reason })?;
                    records += 1;
                    next = next.next();
                }
            }
            Ok(ReplayReport { records, last })
        })
    }

    fn last_lsn(&self) -> Lsn {
        self.store.last_lsn()
    }

    /// Drops the records with LSN ≤ `lsn` at once.
    fn release_before(&self, lsn: Lsn) -> BoxFuture<'_, Result<(), LogError>> {
        let result = if self.closed.load(Ordering::Acquire) {
            Err(LogError::Closed)
        } else {
            let mut inner = self.store.lock();
            while inner.first <= lsn && !inner.records.is_empty() {
                inner.records.pop_front();
                inner.first = inner.first.next();
            }
            Ok(())
        };
        std::future::ready(result).boxed()
    }

    fn max_record_size(&self) -> usize {
        self.max_record_size
    }

    fn close(&self) -> BoxFuture<'_, Result<(), LogError>> {
        self.closed.store(true, Ordering::Release);
        std::future::ready(Ok(())).boxed()
    }
}
