//! FileLog and SnapshotStore on a simulated disk (`vfs::SimFs`): what each makes durable before
//! it answers, checked by cutting the power at the worst moments and reopening what survived.

use std::sync::Arc;

use bytes::Bytes;
use majordodo_log::vfs::SimFs;
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
