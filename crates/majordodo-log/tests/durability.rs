//! FileLog and SnapshotStore on a simulated disk (`vfs::SimFs`): what each makes durable before
//! it answers, checked by cutting the power at the worst moments and reopening what survived.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use majordodo_log::vfs::{Fs, SimFs};
use majordodo_log::{CommitLog, FileLog, FileLogConfig, Lsn, SnapshotStore};

const LOG_DIR: &str = "/data/broker/log";
const SNAPSHOT_DIR: &str = "/data/broker/snapshots";

fn config() -> FileLogConfig {
    FileLogConfig {
        segment_size: 4096,
        ..FileLogConfig::default()
    }
}

fn record(tag: u64, len: usize) -> Bytes {
    let mut bytes = tag.to_le_bytes().to_vec();
    bytes.resize(len.max(8), (tag % 251) as u8);
    Bytes::from(bytes)
}

fn open(fs: &SimFs) -> FileLog {
    let (log, _) = FileLog::open_with(Arc::new(fs.clone()), LOG_DIR, config()).expect("open log");
    log
}

async fn replay_all(log: &FileLog, after: Lsn) -> Vec<(Lsn, Bytes)> {
    let mut out = Vec::new();
    let mut f = |lsn, bytes| {
        out.push((lsn, bytes));
        Ok(())
    };
    log.replay(after, &mut f).await.expect("replay");
    out
}

fn segment_count(fs: &SimFs) -> usize {
    fs.read_dir(Path::new(LOG_DIR))
        .expect("list log dir")
        .iter()
        .filter(|n| n.to_string_lossy().ends_with(".log"))
        .count()
}

// Goal: a log created in directories that did not exist, with an acknowledged record, survives
// a power failure that keeps nothing that was not made durable (regression: the parent of a
// created directory was never fsynced, so the whole log could vanish with its entry).
#[tokio::test]
async fn new_log_directory_survives_a_power_failure() {
    let fs = SimFs::new(1);
    let log = open(&fs);
    log.append(vec![record(1, 100)]).await.expect("append");
    let after = fs.crash_durable_only();
    drop(log);
    let (log, report) =
        FileLog::open_with(Arc::new(after), LOG_DIR, config()).expect("reopen after crash");
    assert_eq!(report.last_lsn, Lsn(1), "the acknowledged record survived");
    assert_eq!(replay_all(&log, Lsn::ZERO).await[0].1, record(1, 100));
    log.close().await.expect("close");
}

// Goal: a snapshot store created in directories that did not exist keeps a written snapshot
// across a power failure that keeps nothing that was not made durable.
#[test]
fn new_snapshot_directory_survives_a_power_failure() {
    let fs = SimFs::new(2);
    let store = SnapshotStore::open_with(Arc::new(fs.clone()), SNAPSHOT_DIR).expect("open");
    store.write(Lsn(7), b"state at 7").expect("write");
    let after = fs.crash_durable_only();
    let store = SnapshotStore::open_with(Arc::new(after), SNAPSHOT_DIR).expect("reopen");
    let loaded = store
        .load_latest()
        .expect("load")
        .expect("the snapshot survived");
    assert_eq!((loaded.lsn, loaded.data), (Lsn(7), b"state at 7".to_vec()));
}

/// Fills a log on `fs` with `records` single-record appends of 1000 bytes (four per 4 KiB
/// segment) and closes it.
async fn filled(fs: &SimFs, records: u64) {
    let log = open(fs);
    for tag in 1..=records {
        log.append(vec![record(tag, 1000)]).await.expect("append");
    }
    log.close().await.expect("close");
}

// Goal: whatever subset of its deletions a power failure keeps, a release_before of several
// segments leaves a log that opens, still holds every record after the release point, and
// starts at a segment boundary (regression: all segments were unlinked before one fsync, so a
// crash could keep a later deletion and lose an earlier one, leaving a gap that refused to
// boot).
#[tokio::test]
async fn release_before_is_crash_safe_at_every_operation() {
    const RECORDS: u64 = 24;
    const RELEASE: Lsn = Lsn(17);
    // Count the operations of the release on a run without a crash.
    let fs = SimFs::new(0);
    filled(&fs, RECORDS).await;
    let log = open(&fs);
    let segments_before = segment_count(&fs);
    let before = fs.operations();
    log.release_before(RELEASE).await.expect("release");
    let release_ops = fs.operations() - before;
    assert!(
        segments_before - segment_count(&fs) >= 3,
        "the release deletes several segments"
    );
    log.close().await.expect("close");
    let mut outcomes = std::collections::BTreeSet::new();
    for seed in 0..32 {
        for crash_at in 0..=release_ops {
            let fs = SimFs::new(seed);
            filled(&fs, RECORDS).await;
            let log = open(&fs);
            fs.power_off_after(crash_at);
            let released = log.release_before(RELEASE).await;
            assert!(released.is_ok() || crash_at < release_ops);
            let after = fs.crash();
            drop(log);
            let (log, report) = FileLog::open_with(Arc::new(after), LOG_DIR, config())
                .unwrap_or_else(|e| {
                    panic!("seed {seed}, crash after {crash_at} operations: reopen: {e}")
                });
            assert_eq!(report.last_lsn, Lsn(RECORDS));
            assert!(report.first_lsn <= RELEASE.next());
            let records = replay_all(&log, RELEASE).await;
            assert_eq!(records.len() as u64, RECORDS - RELEASE.0);
            outcomes.insert(report.first_lsn);
            log.close().await.expect("close");
        }
    }
    assert!(
        outcomes.len() >= 3,
        "crashes kept different prefixes: {outcomes:?}"
    );
}

// Goal: release_before does its deletions and fsyncs off the caller's thread: with the disk
// stalled, the single thread of the caller's runtime keeps running other tasks (regression: the
// unlinks and the fsync ran inside the call, on the async thread).
#[test]
fn release_before_does_not_block_the_callers_thread() {
    let fs = SimFs::new(3);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(filled(&fs, 24));
    let (running, still_running) = std::sync::mpsc::channel();
    let caller = {
        let fs = fs.clone();
        std::thread::spawn(move || {
            runtime.block_on(async {
                let log = Arc::new(open(&fs));
                fs.pause();
                let release = tokio::spawn({
                    let log = Arc::clone(&log);
                    async move { log.release_before(Lsn(17)).await }
                });
                // Let the release task run; a blocking release would never give the thread back.
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
                let _ = running.send(release.is_finished());
                fs.resume();
                release.await.expect("release task").expect("release");
                log.close().await.expect("close");
            });
        })
    };
    // A deadline for a thread that may be stuck, not a pause.
    let outcome = still_running.recv_timeout(std::time::Duration::from_secs(10));
    fs.resume();
    assert_eq!(
        outcome,
        Ok(false),
        "the caller's runtime thread was blocked by release_before"
    );
    caller.join().expect("caller thread");
}
