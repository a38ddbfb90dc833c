//! The operator's way out when [`FileLog::open`](crate::FileLog::open) refuses a damaged log:
//! cut the log at its first damaged record, after showing what will be lost.
//!
//! `majordodo log repair --dir <dir>` is meant to call [`inspect`], show the report (the file and
//! offset of the damage, the first LSN lost, how many readable records and bytes go), ask the
//! operator to confirm, and then call [`truncate_log`] with the LSN the report names. The
//! records from the cut on are lost, and some of them may have been acknowledged; the
//! alternative is to restore the log from a replica or a backup.
//!
//! The cut keeps LSNs counting: the log ends at `first_lost - 1`, and appends continue from
//! there. Snapshots are not touched: a broker boots from its newest snapshot and replays what
//! is left after it; a snapshot taken after the cut point describes records that are gone, so
//! check the snapshot directory too.

use std::io;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::file::format::SEGMENT_HEADER_LEN;
use crate::file::lock_dir;
use crate::file::recovery::{Scan, scan, truncate, valid_frames_after};
use crate::file::segment::{SegmentReader, create_segment, io_err, sync_dir};
use crate::vfs::{Fs, RealFs};
use crate::{LogError, Lsn};

/// What a cut of the log loses: the plan shown by [`inspect`], or what [`truncate_log`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairReport {
    /// The segment holding the first damage.
    pub file: PathBuf,
    /// Offset of the first damaged record in `file`, where the log is cut; 0 when the segment
    /// itself is unusable (bad header, or it does not follow the previous one) and goes whole.
    pub offset: u64,
    /// What is wrong there.
    pub reason: String,
    /// The first LSN the cut loses; the log keeps every record before it.
    pub first_lost: Lsn,
    /// Records after the cut whose checksums are still valid: at least this many records are
    /// lost besides the damaged one, possibly acknowledged ones.
    pub records_dropped: u64,
    /// The highest LSN among those records, if any: every record from `first_lost` to it is
    /// lost.
    pub last_dropped: Option<Lsn>,
    /// Bytes removed: the end of `file` and the later segments.
    pub bytes_dropped: u64,
    /// Later segments deleted whole (and `file` itself when `offset` is 0).
    pub segments_deleted: Vec<PathBuf>,
}

/// Looks for the first damaged record of the log in `dir` and reports what cutting the log
/// there would lose; changes nothing. `None` when every record is valid.
///
/// # Errors
/// [`LogError::UnsupportedFormat`] for a segment of another format version; [`LogError::Io`]
/// when the directory cannot be read.
pub fn inspect(dir: impl AsRef<Path>) -> Result<Option<RepairReport>, LogError> {
    let dir = dir.as_ref();
    plan(&RealFs, dir, &scan(&RealFs, dir)?)
}

/// Cuts the log in `dir` at its first damaged record, which must be the one whose LSN is
/// `first_lost` (from the report of [`inspect`], as the operator's confirmation), and returns
/// what was lost. Every record before `first_lost` stays; the damaged segment is truncated (or,
/// for a segment unusable as a whole, deleted, and when it was the first one replaced by an
/// empty segment starting at the same LSN) and every later segment is deleted. Each step is
/// durable, and a crash part way leaves the same first damage, so the repair can be run again.
///
/// # Errors
/// - [`LogError::Io`] of kind `WouldBlock` if the log is open (the message names the
///   directory): stop the broker first.
/// - [`LogError::Io`] of kind `InvalidInput` if the log has no damage, or its first damage is
///   not at `first_lost` (the log changed since it was inspected: inspect again).
/// - [`LogError::UnsupportedFormat`]; [`LogError::Io`] on file-system failures.
pub fn truncate_log(dir: impl AsRef<Path>, first_lost: Lsn) -> Result<RepairReport, LogError> {
    truncate_log_with(&RealFs, dir.as_ref(), first_lost)
}

fn refuse(dir: &Path, message: String) -> LogError {
    LogError::Io {
        context: format!("repair log directory {}", dir.display()),
        source: io::Error::new(io::ErrorKind::InvalidInput, message),
    }
}

fn truncate_log_with(fs: &dyn Fs, dir: &Path, first_lost: Lsn) -> Result<RepairReport, LogError> {
    let _lock = lock_dir(fs, dir)?;
    let scanned = scan(fs, dir)?;
    let Some(report) = plan(fs, dir, &scanned)? else {
        return Err(refuse(
            dir,
            "the log has no damaged record, there is nothing to cut".to_string(),
        ));
    };
    if report.first_lost != first_lost {
        return Err(refuse(
            dir,
            format!(
                "the first damaged record is lsn {}, not lsn {first_lost}: inspect the log again",
                report.first_lost
            ),
        ));
    }
    let problem = scanned
        .problem
        .as_ref()
        .expect("a plan comes from a problem");
    let segments = &scanned.listing.segments;
    // Newest first: a crash part way keeps an older prefix of them, behind the same damage.
    for later in segments[problem.segment + 1..].iter().rev() {
        remove(fs, &later.path)?;
    }
    sync_dir(fs, dir)?;
    let damaged = &segments[problem.segment];
    if problem.offset > 0 {
        truncate(fs, &damaged.path, problem.offset)?;
    } else if problem.segment == 0 {
        // Nothing before it: an empty segment under the same name keeps the LSNs counting. It
        // replaces the damaged file in one rename.
        for tmp in &scanned.listing.temporaries {
            remove(fs, tmp)?;
        }
        create_segment(fs, dir, damaged.first)?;
    } else {
        remove(fs, &damaged.path)?;
        sync_dir(fs, dir)?;
    }
    warn!(
        dir = %dir.display(),
        file = %report.file.display(),
        offset = report.offset,
        first_lost = report.first_lost.0,
        records_dropped = report.records_dropped,
        bytes_dropped = report.bytes_dropped,
        "cut the log at its first damaged record"
    );
    Ok(report)
}

fn remove(fs: &dyn Fs, path: &Path) -> Result<(), LogError> {
    match fs.remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("delete {}", path.display()))(e)),
    }
}

/// What cutting at the first problem of `scanned` loses.
fn plan(fs: &dyn Fs, dir: &Path, scanned: &Scan) -> Result<Option<RepairReport>, LogError> {
    let Some(problem) = &scanned.problem else {
        return Ok(None);
    };
    let segments = &scanned.listing.segments;
    let damaged = &segments[problem.segment];
    let mut dropped: Vec<Lsn> = Vec::new();
    let mut bytes_dropped = problem.file_len - problem.offset;
    let mut segments_deleted = Vec::new();
    // What is still readable from the cut on: frames after the damage, then later segments.
    let from = problem.offset.max(SEGMENT_HEADER_LEN as u64);
    dropped.extend(
        valid_frames_after(fs, &damaged.path, from, problem.file_len)?
            .iter()
            .map(|(_, h)| h.lsn),
    );
    if problem.offset == 0 && problem.segment > 0 {
        segments_deleted.push(damaged.path.clone());
    }
    for later in &segments[problem.segment + 1..] {
        let len = match SegmentReader::open(fs, &later.path) {
            Ok(reader) => reader.len(),
            Err(LogError::Corrupt { .. }) => fs
                .open_read(&later.path)
                .and_then(|f| f.size())
                .map_err(io_err(format!("stat segment {}", later.path.display())))?,
            Err(e) => return Err(e),
        };
        dropped.extend(
            valid_frames_after(fs, &later.path, SEGMENT_HEADER_LEN as u64, len)?
                .iter()
                .map(|(_, h)| h.lsn),
        );
        bytes_dropped += len;
        segments_deleted.push(later.path.clone());
    }
    let report = RepairReport {
        file: damaged.path.clone(),
        offset: problem.offset,
        reason: problem.kind.describe(),
        first_lost: problem.expected,
        records_dropped: dropped.len() as u64,
        last_dropped: dropped.iter().max().copied(),
        bytes_dropped,
        segments_deleted,
    };
    info!(
        dir = %dir.display(),
        file = %report.file.display(),
        offset = report.offset,
        first_lost = report.first_lost.0,
        records_dropped = report.records_dropped,
        "found the first damaged record of the log"
    );
    Ok(Some(report))
}
