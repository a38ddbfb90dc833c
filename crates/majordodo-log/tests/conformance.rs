//! Runs the conformance suite against `MemoryLog` and `FileLog`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use majordodo_log::conformance::{LogBuilder, run_all};
use majordodo_log::{FileLog, FileLogConfig, LogError, MemoryLog, MemoryStore};
use rand::{Rng, SeedableRng};

struct MemoryBuilder;

impl LogBuilder for MemoryBuilder {
    type Log = MemoryLog;
    type Store = MemoryStore;

    async fn new_store(&self) -> MemoryStore {
        MemoryStore::new()
    }

    async fn open(&self, store: &MemoryStore) -> Result<MemoryLog, LogError> {
        Ok(MemoryLog::open(store))
    }

    async fn crash(&self, _store: &MemoryStore, log: MemoryLog) {
        // A memory log has nothing in flight: every append is durable once made.
        drop(log);
    }
}

/// Builds file logs in a temporary directory, with small segments so that rolling and
/// releasing happen in the suite.
struct FileBuilder {
    root: tempfile::TempDir,
    next: AtomicU64,
    config: FileLogConfig,
}

impl LogBuilder for FileBuilder {
    type Log = FileLog;
    type Store = PathBuf;

    async fn new_store(&self) -> PathBuf {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.root.path().join(format!("log-{n}"))
    }

    async fn open(&self, dir: &PathBuf) -> Result<FileLog, LogError> {
        let (log, _report) = FileLog::open(dir, self.config.clone())?;
        Ok(log)
    }

    /// Stops the writer as a crash would, then leaves garbage after the last record, as a
    /// torn write does.
    async fn crash(&self, dir: &PathBuf, log: FileLog) {
        log.crash().await;
        let seed = self.next.fetch_add(1, Ordering::Relaxed);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut segments: Vec<_> = std::fs::read_dir(dir)
            .expect("list log dir")
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        segments.sort();
        let last = segments.last().expect("a log has a segment");
        let garbage: Vec<u8> = (0..rng.random_range(1..200))
            .map(|_| rng.random())
            .collect();
        std::fs::OpenOptions::new()
            .append(true)
            .open(last)
            .expect("open last segment")
            .write_all(&garbage)
            .expect("append garbage");
    }
}

// Goal: the in-memory log honours the whole CommitLog contract.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_log_passes_the_conformance_suite() {
    run_all(MemoryBuilder).await;
}

// Goal: the file log honours the whole CommitLog contract, with segments small enough to roll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_log_passes_the_conformance_suite() {
    run_all(FileBuilder {
        root: tempfile::tempdir().expect("temp dir"),
        next: AtomicU64::new(0),
        config: FileLogConfig {
            segment_size: 64 * 1024,
            ..FileLogConfig::default()
        },
    })
    .await;
}
