//! `repair`: cutting a log that refuses to open at its first damaged record, after reporting
//! what the cut loses.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use majordodo_log::{CommitLog, FileLog, FileLogConfig, LogError, Lsn, repair};

/// Segment header length and record frame header length, as documented in the format (v2).
const SEGMENT_HEADER: u64 = 32;
const FRAME_HEADER: u64 = 24;

fn config() -> FileLogConfig {
    FileLogConfig {
        segment_size: 4096,
        ..FileLogConfig::default()
    }
}

fn record(tag: u64) -> Bytes {
    let mut bytes = tag.to_le_bytes().to_vec();
    bytes.resize(300, (tag % 251) as u8);
    Bytes::from(bytes)
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .expect("list dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    out.sort();
    out
}

/// Offsets and LSNs of the frames of a segment file, read with the documented layout.
fn frames(path: &Path) -> Vec<(u64, u64)> {
    let bytes = fs::read(path).expect("read segment");
    let mut out = Vec::new();
    let mut at = SEGMENT_HEADER as usize;
    while at + FRAME_HEADER as usize <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes")) as u64;
        let lsn = u64::from_le_bytes(bytes[at + 12..at + 20].try_into().expect("8 bytes"));
        out.push((at as u64, lsn));
        at += (FRAME_HEADER + len) as usize;
    }
    out
}

fn flip_byte(path: &Path, offset: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open for damage");
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset).expect("read byte");
    byte[0] ^= 0x40;
    file.write_all_at(&byte, offset).expect("write byte");
}

/// A closed log of `count` records in 4 KiB segments (a dozen records each).
async fn log_of(count: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let (log, _) = FileLog::open(dir.path(), config()).expect("open");
    for tag in 1..=count {
        log.append(vec![record(tag)]).await.expect("append");
    }
    log.close().await.expect("close");
    dir
}

async fn replay_all(log: &FileLog) -> Vec<(Lsn, Bytes)> {
    let mut out = Vec::new();
    let mut f = |lsn, bytes| {
        out.push((lsn, bytes));
        Ok(())
    };
    log.replay(Lsn::ZERO, &mut f).await.expect("replay");
    out
}

// Goal: after damage in a middle segment, inspect reports the file, offset and what is lost,
// truncate_log cuts there and deletes the later segments, and the log opens with every record
// before the damage and appends continuing from it.
#[tokio::test]
async fn repair_cuts_at_the_first_damage_and_the_log_opens_again() {
    let dir = log_of(40).await;
    let files = segments(dir.path());
    assert!(files.len() >= 3);
    let (offset, lsn) = frames(&files[1])[3];
    flip_byte(&files[1], offset + FRAME_HEADER + 9);
    assert!(matches!(
        FileLog::open(dir.path(), config()),
        Err(LogError::Corrupt { .. })
    ));
    let report = repair::inspect(dir.path())
        .expect("inspect")
        .expect("damage found");
    assert_eq!(report.file, files[1]);
    assert_eq!(report.offset, offset);
    assert_eq!(report.first_lost, Lsn(lsn));
    assert_eq!(
        report.records_dropped,
        40 - lsn,
        "every record after the damaged one"
    );
    assert_eq!(report.last_dropped, Some(Lsn(40)));
    assert_eq!(report.segments_deleted, files[2..].to_vec());
    assert!(report.reason.contains("checksum"), "{}", report.reason);
    let cut = repair::truncate_log(dir.path(), Lsn(lsn)).expect("repair");
    assert_eq!(cut, report);
    assert_eq!(segments(dir.path()), files[..2].to_vec());
    assert_eq!(fs::metadata(&files[1]).expect("stat").len(), offset);
    assert_eq!(repair::inspect(dir.path()).expect("inspect"), None);
    let (log, opened) = FileLog::open(dir.path(), config()).expect("opens after the repair");
    assert_eq!(opened.last_lsn, Lsn(lsn - 1));
    assert_eq!(replay_all(&log).await.len() as u64, lsn - 1);
    let appended = log.append(vec![record(99)]).await.expect("append");
    assert_eq!(appended.first, Lsn(lsn), "LSNs continue from the cut");
    log.close().await.expect("close");
}

// Goal: the repair only cuts what the operator confirmed, and never under an open log.
#[tokio::test]
async fn repair_refuses_an_unconfirmed_cut_a_healthy_log_and_an_open_log() {
    let dir = log_of(10).await;
    let refusal = |result: Result<repair::RepairReport, LogError>| match result {
        Err(LogError::Io { source, .. }) => source.kind(),
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(
        refusal(repair::truncate_log(dir.path(), Lsn(5))),
        io::ErrorKind::InvalidInput,
        "a healthy log has nothing to cut"
    );
    let last = segments(dir.path()).pop().expect("a segment");
    let (offset, lsn) = frames(&last)[1];
    flip_byte(&last, offset + FRAME_HEADER + 1);
    let len = fs::metadata(&last).expect("stat").len();
    assert_eq!(
        refusal(repair::truncate_log(dir.path(), Lsn(lsn + 1))),
        io::ErrorKind::InvalidInput,
        "the confirmed LSN must be the first damaged one"
    );
    assert_eq!(
        fs::metadata(&last).expect("stat").len(),
        len,
        "nothing was cut"
    );
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.path().join("LOCK"))
        .expect("open lock");
    lock.try_lock().expect("hold the lock like an open log");
    assert_eq!(
        refusal(repair::truncate_log(dir.path(), Lsn(lsn))),
        io::ErrorKind::WouldBlock,
        "an open log is not repaired"
    );
    drop(lock);
    repair::truncate_log(dir.path(), Lsn(lsn)).expect("repair");
    let (log, opened) = FileLog::open(dir.path(), config()).expect("open");
    assert_eq!(opened.last_lsn, Lsn(lsn - 1));
    log.close().await.expect("close");
}

// Goal: a damaged header of the first segment goes with the segment, replaced by an empty one
// starting at the same LSN, so LSNs keep counting after a release.
#[tokio::test]
async fn repair_of_a_damaged_first_segment_header_keeps_the_lsns() {
    let dir = log_of(40).await;
    let (log, _) = FileLog::open(dir.path(), config()).expect("open");
    log.release_before(Lsn(20)).await.expect("release");
    log.close().await.expect("close");
    let files = segments(dir.path());
    let first = frames(&files[0])[0].1;
    assert!(first > 1, "the front was released");
    flip_byte(&files[0], 14);
    assert!(matches!(
        FileLog::open(dir.path(), config()),
        Err(LogError::Corrupt { offset: 0, .. })
    ));
    let report = repair::inspect(dir.path())
        .expect("inspect")
        .expect("damage");
    assert_eq!((report.offset, report.first_lost), (0, Lsn(first)));
    repair::truncate_log(dir.path(), Lsn(first)).expect("repair");
    let (log, opened) = FileLog::open(dir.path(), config()).expect("open");
    assert_eq!(opened.last_lsn, Lsn(first - 1));
    assert_eq!(opened.segments, 1);
    let appended = log.append(vec![record(1)]).await.expect("append");
    assert_eq!(appended.first, Lsn(first));
    log.close().await.expect("close");
}
