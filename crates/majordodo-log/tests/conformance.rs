//! Runs the conformance suite against `MemoryLog`, and `FileLog` on a real and on a simulated
//! disk.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use majordodo_log::conformance::{LogBuilder, run_all};
use majordodo_log::vfs::SimFs;
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

    /// Stops the writer as a crash would, then leaves after the last record what an unfinished
    /// write can leave: zeros (sectors that did not land), or the start of the next record's
    /// frame cut by the end of the file.
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
        let tail: Vec<u8> = if rng.random_bool(0.5) {
            vec![0; rng.random_range(1..2000)]
        } else {
            let payload: Vec<u8> = (0..rng.random_range(1..600))
                .map(|_| rng.random())
                .collect();
            let frame = frame(next_lsn(last), &payload);
            frame[..rng.random_range(1..frame.len())].to_vec()
        };
        std::fs::OpenOptions::new()
            .append(true)
            .open(last)
            .expect("open last segment")
            .write_all(&tail)
            .expect("append the torn tail");
    }
}

/// Segment header and frame header lengths, as documented in the file format (version 2).
const SEGMENT_HEADER: usize = 32;
const FRAME_HEADER: usize = 24;

/// A record frame as the file format documents it.
fn frame(lsn: u64, payload: &[u8]) -> Vec<u8> {
    let mut head = vec![0u8; FRAME_HEADER];
    head[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    head[12..20].copy_from_slice(&lsn.to_le_bytes());
    head[20..24].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    let crc = crc32c::crc32c(&head[4..24]);
    head[0..4].copy_from_slice(&crc.to_le_bytes());
    head.extend_from_slice(payload);
    head
}

/// The LSN after the last record of a segment file (read with the documented layout).
fn next_lsn(path: &std::path::Path) -> u64 {
    let bytes = std::fs::read(path).expect("read segment");
    let mut next = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let mut at = SEGMENT_HEADER;
    while at + FRAME_HEADER <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        next = u64::from_le_bytes(bytes[at + 12..at + 20].try_into().expect("8 bytes")) + 1;
        at += FRAME_HEADER + len;
    }
    next
}

/// Builds file logs on a simulated disk ([`SimFs`]); a crash there is a power failure, and the
/// log reopens on what the disk kept.
struct SimBuilder {
    next: AtomicU64,
    config: FileLogConfig,
}

/// The disk of one log; a crash replaces it with what survived.
struct SimStore {
    fs: Mutex<SimFs>,
}

impl SimStore {
    fn fs(&self) -> SimFs {
        self.fs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Where the simulated logs live: nested, so that creating them creates directories.
const SIM_DIR: &str = "/var/lib/majordodo/log";

impl LogBuilder for SimBuilder {
    type Log = FileLog;
    type Store = SimStore;

    async fn new_store(&self) -> SimStore {
        let seed = self.next.fetch_add(1, Ordering::Relaxed);
        SimStore {
            fs: Mutex::new(SimFs::new(seed)),
        }
    }

    async fn open(&self, store: &SimStore) -> Result<FileLog, LogError> {
        let (log, _report) =
            FileLog::open_with(Arc::new(store.fs()), SIM_DIR, self.config.clone())?;
        Ok(log)
    }

    /// Stops the writer as a crash would, then cuts the power: what was not durable may be
    /// lost or torn, as the disk model allows.
    async fn crash(&self, store: &SimStore, log: FileLog) {
        log.crash().await;
        let mut fs = store.fs.lock().unwrap_or_else(PoisonError::into_inner);
        *fs = fs.crash();
    }
}

// Goal: the in-memory log honours the whole CommitLog contract.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_log_passes_the_conformance_suite() {
    run_all(MemoryBuilder).await;
}

// Goal: the file log honours the whole CommitLog contract, with segments small enough to roll
// and a queue bound small enough for back-pressure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_log_passes_the_conformance_suite() {
    run_all(FileBuilder {
        root: tempfile::tempdir().expect("temp dir"),
        next: AtomicU64::new(0),
        config: FileLogConfig {
            segment_size: 64 * 1024,
            // Small, so that the suite's check of `ready` goes over it.
            max_queued_bytes: 1024 * 1024,
            ..FileLogConfig::default()
        },
    })
    .await;
}

// Goal: the file log honours the whole CommitLog contract on a simulated disk too, where a
// crash is a power failure that keeps only what was made durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_log_on_a_simulated_disk_passes_the_conformance_suite() {
    run_all(SimBuilder {
        next: AtomicU64::new(0),
        config: FileLogConfig {
            segment_size: 64 * 1024,
            max_queued_bytes: 1024 * 1024,
            ..FileLogConfig::default()
        },
    })
    .await;
}
