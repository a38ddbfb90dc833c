//! FileLog on disk: recovery from torn tails, detection of corruption, rolling and releasing
//! segments, and the directory lock.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use majordodo_log::{CommitLog, FileLog, FileLogConfig, LogError, Lsn, OpenReport};

/// Segment header length and record frame header length, as documented in the format (v2).
const SEGMENT_HEADER: u64 = 32;
const FRAME_HEADER: u64 = 24;

fn config(segment_size: u64) -> FileLogConfig {
    FileLogConfig {
        segment_size,
        ..FileLogConfig::default()
    }
}

fn record(tag: u64, len: usize) -> Bytes {
    let mut bytes = tag.to_le_bytes().to_vec();
    bytes.resize(len.max(8), (tag % 251) as u8);
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
fn frames(path: &Path) -> Vec<(u64, u64, u64)> {
    let bytes = fs::read(path).expect("read segment");
    let mut out = Vec::new();
    let mut at = SEGMENT_HEADER as usize;
    while at + FRAME_HEADER as usize <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes")) as u64;
        let lsn = u64::from_le_bytes(bytes[at + 12..at + 20].try_into().expect("8 bytes"));
        out.push((at as u64, lsn, FRAME_HEADER + len));
        at += (FRAME_HEADER + len) as usize;
    }
    out
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

/// Appends `count` single-record appends of `len` bytes with tags from `from`.
async fn fill(log: &FileLog, from: u64, count: u64, len: usize) {
    for tag in from..from + count {
        log.append(vec![record(tag, len)]).await.expect("append");
    }
}

fn open(dir: &Path, segment_size: u64) -> Result<(FileLog, OpenReport), LogError> {
    FileLog::open(dir, config(segment_size))
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open")
        .write_all(bytes)
        .expect("append");
}

/// Zeroes the bytes from `offset` to the end of its 512-byte sector, as a sector of a write
/// that did not land reads; returns where the sector ends.
fn zero_sector_from(path: &Path, offset: u64) -> u64 {
    let end = (offset / 512 + 1) * 512;
    let file = OpenOptions::new().write(true).open(path).expect("open");
    file.write_all_at(&vec![0u8; (end - offset) as usize], offset)
        .expect("zero a sector");
    end
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

// Goal: a file named like the segment of lsn 0 (which no record has) is reported as a damaged
// segment, not a crash of the recovery (it computed the last lsn as 0 - 1). Found by the
// `log_segment` fuzz target; the input is in fuzz/seeds/log_segment.
#[test]
fn segment_named_after_lsn_0_is_corruption() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(format!("{:020}.log", 0));
    fs::write(
        &path,
        b"\xf6zP^\x00\xf6zP^\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
    )
    .expect("write");
    match open(dir.path(), 4096) {
        Err(LogError::Corrupt { file, offset, .. }) => {
            assert_eq!(file, path.display().to_string());
            assert_eq!(offset, 0);
        }
        other => panic!("a segment named lsn 0 gave {:?}", other.map(|r| r.1)),
    }
}

// Goal: a damaged record in a segment that is not the last is a hard error naming the file and
// the offset of the record; so is a damaged segment header.
#[tokio::test]
async fn corrupt_byte_in_a_middle_segment_is_reported_with_file_and_offset() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (log, _) = open(dir.path(), 4096).expect("open");
    fill(&log, 0, 40, 300).await;
    log.close().await.expect("close");
    let files = segments(dir.path());
    assert!(files.len() >= 3, "small segments rolled: {}", files.len());
    let middle = &files[1];
    let (offset, lsn, _) = frames(middle)[2];
    // A byte of the payload of the third record of the middle segment.
    flip_byte(middle, offset + FRAME_HEADER + 5);
    match open(dir.path(), 4096) {
        Err(LogError::Corrupt {
            file,
            offset: at,
            reason,
        }) => {
            assert_eq!(file, middle.display().to_string());
            assert_eq!(at, offset, "the offset of record {lsn}");
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("a damaged middle segment gave {:?}", other.map(|r| r.1)),
    }
    // Undo, then damage the header of the same segment.
    flip_byte(middle, offset + FRAME_HEADER + 5);
    flip_byte(middle, 14);
    match open(dir.path(), 4096) {
        Err(LogError::Corrupt { file, offset, .. }) => {
            assert_eq!(file, middle.display().to_string());
            assert_eq!(offset, 0);
        }
        other => panic!("a damaged header gave {:?}", other.map(|r| r.1)),
    }
}

// Goal: a missing middle segment (an LSN gap) is a hard error naming the segment after it.
#[tokio::test]
async fn missing_middle_segment_is_reported_as_a_gap() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (log, _) = open(dir.path(), 4096).expect("open");
    fill(&log, 0, 40, 300).await;
    log.close().await.expect("close");
    let files = segments(dir.path());
    fs::remove_file(&files[1]).expect("remove middle segment");
    match open(dir.path(), 4096) {
        Err(LogError::Corrupt {
            file,
            offset,
            reason,
        }) => {
            assert_eq!(file, files[2].display().to_string());
            assert_eq!(offset, 0);
            assert!(reason.contains("expected lsn"), "{reason}");
        }
        other => panic!("a gap gave {:?}", other.map(|r| r.1)),
    }
}

// Goal: missing segments at the front (a release whose deletions were cut short by a crash
// keeps a suffix) are no error: the first segment found is where the log starts.
#[tokio::test]
async fn missing_front_segments_start_the_log_at_the_first_one_found() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (log, _) = open(dir.path(), 4096).expect("open");
    fill(&log, 0, 40, 300).await;
    log.close().await.expect("close");
    let files = segments(dir.path());
    fs::remove_file(&files[0]).expect("remove first segment");
    fs::remove_file(&files[1]).expect("remove second segment");
    let first = frames(&files[2])[0].1;
    let (log, report) = open(dir.path(), 4096).expect("a gap at the front opens");
    assert_eq!(report.first_lsn, Lsn(first));
    assert_eq!(report.last_lsn, Lsn(40));
    let mut count = 0;
    let mut f = |_, _| {
        count += 1;
        Ok(())
    };
    log.replay(Lsn(first - 1), &mut f).await.expect("replay");
    assert_eq!(count, 40 - (first - 1));
    log.close().await.expect("close");
}

// Goal: cutting the last segment anywhere inside its last record is a torn tail: reported,
// truncated to the previous record, and appends continue from there.
#[tokio::test]
async fn torn_tail_at_every_offset_of_the_last_record_is_truncated() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (log, _) = open(dir.path(), 1 << 20).expect("open");
    fill(&log, 0, 5, 40).await;
    log.close().await.expect("close");
    let last_segment = segments(dir.path()).pop().expect("a segment");
    let (start, lsn, frame_len) = *frames(&last_segment).last().expect("records");
    assert_eq!(lsn, 5);
    let pristine = fs::read(&last_segment).expect("read segment");
    for cut in start + 1..start + frame_len {
        fs::write(&last_segment, &pristine[..cut as usize]).expect("cut segment");
        let (log, report) = open(dir.path(), 1 << 20).expect("a torn tail is tolerated");
        let torn = report
            .torn_tail
            .unwrap_or_else(|| panic!("cut at {cut} not reported"));
        assert_eq!(torn.file, last_segment);
        assert_eq!(torn.offset, start);
        assert_eq!(torn.bytes_dropped, cut - start);
        assert_eq!(report.last_lsn, Lsn(4));
        assert_eq!(
            fs::metadata(&last_segment).expect("stat").len(),
            start,
            "cut at {cut}: the tail was truncated"
        );
        let appended = log.append(vec![record(99, 40)]).await.expect("append");
        assert_eq!(appended.first, Lsn(5));
        log.close().await.expect("close");
        let (log, report) = open(dir.path(), 1 << 20).expect("reopen");
        assert!(
            report.torn_tail.is_none(),
            "cut at {cut}: clean after repair"
        );
        let records = replay_all(&log).await;
        assert_eq!(records.len(), 5);
        assert_eq!(records[4].1, record(99, 40));
        log.close().await.expect("close");
    }
    // A cut exactly at a record boundary is no tear at all.
    fs::write(&last_segment, &pristine[..start as usize]).expect("cut segment");
    let (log, report) = open(dir.path(), 1 << 20).expect("open");
    assert!(report.torn_tail.is_none());
    assert_eq!(report.last_lsn, Lsn(4));
    log.close().await.expect("close");
}

// Goal: zeros after the last record (sectors of a write that did not land, behind a file size
// that did) are a torn tail, whether shorter than a header or several sectors long.
#[tokio::test]
async fn zeros_after_the_last_record_are_a_torn_tail() {
    for zeros in [5usize, 100, 5000] {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, _) = open(dir.path(), 1 << 20).expect("open");
        fill(&log, 0, 10, 100).await;
        log.close().await.expect("close");
        let last_segment = segments(dir.path()).pop().expect("a segment");
        let end = fs::metadata(&last_segment).expect("stat").len();
        append_bytes(&last_segment, &vec![0u8; zeros]);
        let (log, report) = open(dir.path(), 1 << 20).expect("a zero tail is torn");
        let torn = report.torn_tail.expect("reported");
        assert_eq!((torn.offset, torn.bytes_dropped), (end, zeros as u64));
        assert_eq!(report.last_lsn, Lsn(10));
        assert_eq!(replay_all(&log).await.len(), 10);
        log.close().await.expect("close");
    }
}

// Goal: bytes after the last record that no crash of the writer can leave (random bytes in
// sectors that were written) are refused, not cut: they are not proven to be an unfinished
// write.
#[tokio::test]
async fn random_bytes_after_the_last_record_are_refused() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let dir = tempfile::tempdir().expect("temp dir");
    let (log, _) = open(dir.path(), 1 << 20).expect("open");
    fill(&log, 0, 10, 100).await;
    log.close().await.expect("close");
    let last_segment = segments(dir.path()).pop().expect("a segment");
    let end = fs::metadata(&last_segment).expect("stat").len();
    let garbage: Vec<u8> = (0..5000).map(|_| rng.random()).collect();
    append_bytes(&last_segment, &garbage);
    match open(dir.path(), 1 << 20) {
        Err(LogError::Corrupt { file, offset, .. }) => {
            assert_eq!(file, last_segment.display().to_string());
            assert_eq!(offset, end);
        }
        other => panic!(
            "random bytes after the last record gave {:?}",
            other.map(|r| r.1)
        ),
    }
    assert_eq!(
        fs::metadata(&last_segment).expect("stat").len(),
        end + 5000,
        "nothing was cut"
    );
}

// Goal: bit rot in the last record of the log, which was fsynced and acknowledged, is refused
// with an error naming the file, the offset and what the operator can do, and nothing is
// truncated (regression: damage confined to the last write was cut away as a torn tail,
// dropping acknowledged records).
#[tokio::test]
async fn bit_rot_in_the_acknowledged_last_record_is_refused_not_truncated() {
    for (what, at) in [("payload", FRAME_HEADER + 17), ("header", 6)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, _) = open(dir.path(), 1 << 20).expect("open");
        fill(&log, 0, 5, 700).await;
        log.close().await.expect("close");
        let last_segment = segments(dir.path()).pop().expect("a segment");
        let (offset, lsn, _) = *frames(&last_segment).last().expect("records");
        let len = fs::metadata(&last_segment).expect("stat").len();
        flip_byte(&last_segment, offset + at);
        match open(dir.path(), 1 << 20) {
            Err(
                e @ LogError::Corrupt {
                    offset: reported, ..
                },
            ) => {
                assert_eq!(reported, offset, "{what}: the offset of record {lsn}");
                let message = e.to_string();
                for needle in [
                    last_segment.display().to_string(),
                    format!("majordodo log repair --dir {}", dir.path().display()),
                    format!("lsn {lsn} on"),
                    "replica or a backup".to_string(),
                ] {
                    assert!(message.contains(&needle), "{what}: {message}");
                }
            }
            other => panic!(
                "{what}: rot in the last record gave {:?}",
                other.map(|r| r.1)
            ),
        }
        assert_eq!(fs::metadata(&last_segment).expect("stat").len(), len);
    }
}

// Goal: damage in the last segment that looks unfinished (a sector of zeros) but is followed
// by a record of a later write is corruption, not a torn tail: the later write proves the
// damaged one had been fsynced.
#[tokio::test]
async fn damage_followed_by_a_later_write_is_corruption() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (log, _) = open(dir.path(), 1 << 20).expect("open");
    // Separate awaited appends: each is its own write.
    fill(&log, 0, 12, 64).await;
    log.close().await.expect("close");
    let last_segment = segments(dir.path()).pop().expect("a segment");
    let (offset, lsn, _) = frames(&last_segment)[2];
    assert_eq!(lsn, 3);
    zero_sector_from(&last_segment, offset);
    match open(dir.path(), 1 << 20) {
        Err(LogError::Corrupt {
            file,
            offset: at,
            reason,
        }) => {
            assert_eq!(file, last_segment.display().to_string());
            assert_eq!(at, offset);
            assert!(reason.contains("later write"), "{reason}");
        }
        other => panic!("damage before a later write gave {:?}", other.map(|r| r.1)),
    }
}

// Goal: a sector of the last write that did not land, even with complete records of that same
// write after it (sectors reaching the disk out of order), is a torn tail: none of it was
// acknowledged.
#[tokio::test]
async fn unwritten_sector_inside_the_last_write_is_a_torn_tail() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (log, _) = open(dir.path(), 1 << 20).expect("open");
    fill(&log, 0, 3, 64).await;
    // One append of eight records: one write.
    log.append((3..11).map(|t| record(t, 64)).collect())
        .await
        .expect("append batch");
    log.close().await.expect("close");
    let last_segment = segments(dir.path()).pop().expect("a segment");
    let all = frames(&last_segment);
    let (hole, lsn, _) = all[4];
    assert_eq!(lsn, 5, "second record of the last write");
    let sector_end = zero_sector_from(&last_segment, hole);
    assert!(
        all.iter().any(|(at, _, _)| *at >= sector_end),
        "records of the last write follow the unwritten sector"
    );
    let (log, report) = open(dir.path(), 1 << 20).expect("a hole in the last write is torn");
    let torn = report.torn_tail.expect("reported");
    assert_eq!(torn.offset, hole);
    assert!(torn.reason.contains("never written"), "{}", torn.reason);
    assert_eq!(report.last_lsn, Lsn(4));
    let records = replay_all(&log).await;
    assert_eq!(records.len(), 4, "nothing after the hole is returned");
    log.close().await.expect("close");
}

// Goal: a segment of format version 1 is refused with an error that names the file and says
// what to do, not reported as damage.
#[tokio::test]
async fn version_1_segment_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (log, _) = open(dir.path(), 1 << 20).expect("open");
    fill(&log, 0, 3, 64).await;
    log.close().await.expect("close");
    let segment = segments(dir.path()).pop().expect("a segment");
    let mut bytes = fs::read(&segment).expect("read");
    bytes[8..10].copy_from_slice(&1u16.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[0..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    fs::write(&segment, &bytes).expect("write a version 1 header");
    match open(dir.path(), 1 << 20) {
        Err(e @ LogError::UnsupportedFormat { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains(&segment.display().to_string()),
                "{message}"
            );
            assert!(message.contains("version 1"), "{message}");
            assert!(message.contains("pre-1.0"), "{message}");
            assert!(!e.is_retryable());
        }
        other => panic!("a version 1 segment gave {:?}", other.map(|r| r.1)),
    }
}

// Goal: segments roll at the configured size, are named by their first LSN, and
// release_before deletes exactly the segments whose records are all released, never the
// active one.
#[tokio::test]
async fn release_before_deletes_whole_released_segments_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (log, _) = open(dir.path(), 4096).expect("open");
    fill(&log, 0, 30, 500).await;
    let before = segments(dir.path());
    let firsts: Vec<u64> = before.iter().map(|p| frames(p)[0].1).collect();
    for (path, first) in before.iter().zip(&firsts) {
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        assert_eq!(name, format!("{first:020}.log"));
        assert!(fs::metadata(path).expect("stat").len() <= 4096);
    }
    // Release up to the last record of the second segment: the first two go.
    let release = Lsn(firsts[2] - 1);
    log.release_before(release).await.expect("release");
    assert_eq!(segments(dir.path()), before[2..].to_vec());
    // One LSN short of the end of a segment keeps it.
    log.release_before(Lsn(firsts[3] - 2))
        .await
        .expect("release");
    assert_eq!(segments(dir.path()), before[2..].to_vec());
    // Releasing everything keeps the active segment.
    log.release_before(Lsn(30)).await.expect("release");
    assert_eq!(
        segments(dir.path()),
        vec![before.last().expect("active").clone()]
    );
    log.close().await.expect("close");
    let (log, report) = open(dir.path(), 4096).expect("reopen");
    assert_eq!(report.last_lsn, Lsn(30));
    assert_eq!(report.first_lsn, Lsn(*firsts.last().expect("active")));
    log.close().await.expect("close");
}

// Goal: a second log on the same directory is refused with an error naming the directory,
// and the directory opens again once the first log is closed.
#[tokio::test]
async fn second_open_of_a_directory_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (log, _) = open(dir.path(), 1 << 20).expect("open");
    match open(dir.path(), 1 << 20) {
        Err(e @ LogError::Io { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains(&dir.path().display().to_string()),
                "{message}"
            );
            assert!(message.contains("already open"), "{message}");
        }
        other => panic!("a second open gave {:?}", other.map(|r| r.1)),
    }
    log.close().await.expect("close");
    let (log, _) = open(dir.path(), 1 << 20).expect("open after close");
    log.close().await.expect("close");
}

// Goal: a claimed directory (locked, not read yet) refuses another log as an open one does,
// opens to the same log `open` gives, and is free again once the claim is dropped unopened.
#[tokio::test]
async fn a_claimed_directory_is_locked_until_opened_and_closed_or_dropped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (log, _) = open(dir.path(), 1 << 20).expect("open");
    fill(&log, 0, 3, 10).await;
    log.close().await.expect("close");
    drop(log);

    let claimed = FileLog::claim(dir.path(), config(1 << 20)).expect("claim");
    assert_eq!(claimed.dir(), dir.path());
    match open(dir.path(), 1 << 20) {
        Err(e @ LogError::Io { .. }) => {
            assert!(e.to_string().contains("already open"), "{e}");
        }
        other => panic!(
            "an open of a claimed directory gave {:?}",
            other.map(|r| r.1)
        ),
    }
    assert!(
        FileLog::claim(dir.path(), config(1 << 20)).is_err(),
        "a second claim is refused"
    );
    drop(claimed);

    let claimed = FileLog::claim(dir.path(), config(1 << 20)).expect("claim after a drop");
    let (log, report) = claimed.open().expect("open the claim");
    assert_eq!((report.first_lsn, report.last_lsn), (Lsn(1), Lsn(3)));
    assert!(open(dir.path(), 1 << 20).is_err(), "still locked once open");
    log.close().await.expect("close");
}

// Goal: the leftover of an interrupted segment creation is removed at open and does not
// count as a segment.
#[tokio::test]
async fn unfinished_segment_creation_is_removed_at_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (log, _) = open(dir.path(), 1 << 20).expect("open");
    fill(&log, 0, 3, 10).await;
    log.close().await.expect("close");
    let tmp = dir.path().join("00000000000000000004.log.tmp");
    fs::write(&tmp, b"half a header").expect("write tmp");
    let (log, report) = open(dir.path(), 1 << 20).expect("open");
    assert!(!tmp.exists());
    assert_eq!(report.last_lsn, Lsn(3));
    assert_eq!(
        log.append(vec![record(3, 10)]).await.expect("append").first,
        Lsn(4)
    );
    log.close().await.expect("close");
}

// Goal: files and the directory are created private to the owner.
#[tokio::test]
async fn log_files_are_private_to_the_owner() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().expect("temp dir");
    let dir = root.path().join("log");
    let (log, _) = open(&dir, 1 << 20).expect("open");
    log.close().await.expect("close");
    let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&dir) & 0o077, 0);
    for file in segments(&dir) {
        assert_eq!(mode(&file) & 0o077, 0);
    }
}

#[tokio::test]
async fn a_log_created_after_a_position_continues_from_it() {
    // Goal: a directory prepared to continue after lsn 41 (a restore from a snapshot at 41)
    // opens empty with its last lsn 41, takes its first append at 42, keeps it across a
    // reopen, and a second preparation of the same directory is refused without touching it.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("log");
    FileLog::create_after(&path, Lsn(41)).expect("prepare");
    let (log, report) = open(&path, 1 << 20).expect("open the prepared log");
    assert_eq!((report.first_lsn, report.last_lsn), (Lsn(42), Lsn(41)));
    let appended = log.append(vec![record(7, 40)]).await.expect("append");
    assert_eq!(appended.last, Lsn(42));
    log.close().await.expect("close");
    let refused = FileLog::create_after(&path, Lsn(41)).expect_err("a log is never overwritten");
    assert!(
        matches!(&refused, LogError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists),
        "{refused}"
    );
    let (log, report) = open(&path, 1 << 20).expect("reopen");
    assert_eq!(report.last_lsn, Lsn(42));
    let mut records = Vec::new();
    let mut f = |lsn, bytes| {
        records.push((lsn, bytes));
        Ok(())
    };
    log.replay(Lsn(41), &mut f)
        .await
        .expect("replay after the snapshot");
    assert_eq!(records, vec![(Lsn(42), record(7, 40))]);
    log.close().await.expect("close");
}
