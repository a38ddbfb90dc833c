//! Recovery at open: validate every segment; cut a damaged tail only once it is proven to be an
//! unfinished write; refuse everything else.
//!
//! Every segment is read in order; every header and record checksum is verified, and LSNs must
//! follow each other without a gap across segments. The first segment found is where the log
//! starts: `release_before` deletes segments from the oldest up, so a crash during a release
//! leaves a suffix of them. Only the last segment may end badly, and only in one way: with the
//! remains of a write that did not complete, and so was never acknowledged.
//!
//! # What a crash can leave
//! The writer issues one write at a time, at the end of the last segment, and acknowledges its
//! records only once the `fdatasync` that follows it has returned; the next write starts after
//! that. A completed `fdatasync` makes the write's data and the file's size durable. A crash
//! during a write leaves the file with its old size or the new one, and each 512-byte sector the
//! write touched with its new content or its old one, where old content past the old end of the
//! file reads as zeros. Nothing else: a sector holds no bytes that were never written to it.
//! This is the model `vfs::SimFs` simulates.
//!
//! # The rule
//! Let X be the offset of the first frame of the last segment that is not the expected record,
//! and E the LSN expected there. Everything before X is valid, so X lies in the last write, at or
//! after its start, which was the end of the file before it: any byte from X on that the write
//! did not land reads as zero. The damage at X is an unfinished write, cut off and reported as a
//! [`TornTail`], if and only if
//! - (a) the file ends inside the frame: fewer than a header's bytes remain, or the header is
//!   valid and its payload extends past the end of the file (the size of a completed write is
//!   durable, so the file cannot end inside an acknowledged frame); or
//! - (b) some 512-byte-aligned sector overlapping the frame (only its header when the header
//!   checksum fails, since the length is then unknown) holds nothing but zeros from X to the end
//!   of the sector or of the file: a sector the write did not land, which cannot happen once its
//!   `fdatasync` completed;
//!
//! and, in both cases, no checksum-valid frame of a *later* write follows X. Each record stores
//! its `batch_index`, its position inside its write, so `lsn - batch_index` is the LSN where its
//! write started; a later write (one starting after E) was only issued once the write holding E
//! was durable, so the damage at X is in acknowledged data. Frames of the last write itself may
//! follow the damage (its sectors can land in any order).
//!
//! Anything else is damage to written data (bit rot, a bad disk, a bug) that may have been
//! acknowledged: a frame whose sectors all hold data but whose checksum fails, a valid frame with
//! the wrong LSN or batch index (the writer never writes one), a bad segment header (a segment
//! is complete and fsynced before it is given its name), or damage in a segment followed by
//! another (a segment is complete before the next one is created). Open then fails with
//! [`LogError::Corrupt`] naming the file and the offset, with what the operator can do: restore
//! the log from a replica or a backup, or cut it at that offset with `majordodo log repair`
//! ([`crate::repair`]), losing the records from there on.
//!
//! Why zeros "from X on" rather than whole sectors: the first sector of a write usually also
//! holds the end of the previous one. If a crash keeps that sector's old content, the frame at X
//! reads as zeros while the sector as a whole does not.
//!
//! The format makes (b) sound for headers: a header is never all zeros (its checksum does not
//! match zeros, and a record's LSN is never 0), and the header checksum comes first, so even the
//! few bytes of a header that straddles a sector boundary start with checksum bytes.
//!
//! # Limits
//! - The proof takes a written sector never to read as zeros from X on. Payloads can hold zeros:
//!   a last record that has a whole aligned sector of zero bytes *and* is damaged elsewhere is
//!   taken for an unfinished write and cut. This needs bit rot in the very last record of the log
//!   and such a payload at once.
//! - A file system that can expose stale blocks after a crash (ext4 mounted with
//!   `data=writeback`) can leave bytes that were never written where a write did not land. That
//!   is refused as corruption; `majordodo log repair` cuts it.

use std::path::Path;

use tracing::{info, warn};

use super::TornTail;
use super::format::{RECORD_HEADER_LEN, RecordHeader, SEGMENT_HEADER_LEN};
use super::segment::{
    Damage, Listing, Next, SegmentMeta, SegmentReader, create_segment, io_err, list_segments,
    segment_file_name, sync_dir,
};
use crate::vfs::{Fs, FsFile};
use crate::{LogError, Lsn};

/// Size of the window read at once while looking for records after a bad frame.
const SCAN_WINDOW: usize = 1024 * 1024;
/// Sector size of the rule: the smallest unit a disk writes whole. A device that writes 4 KiB at
/// a time leaves 4 KiB unwritten, which is eight 512-byte sectors of zeros, so checking 512-byte
/// sectors finds those too.
pub(crate) const SECTOR: u64 = 512;

/// The state of a log directory after recovery.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// Segments in LSN order; the last is the active one. Never empty.
    pub(crate) segments: Vec<SegmentMeta>,
    /// LSN of the last valid record (`first - 1` of the first segment if there is none).
    pub(crate) last_lsn: Lsn,
    /// Length of the valid part of the active segment, where the next write goes.
    pub(crate) active_len: u64,
    /// The torn tail that was truncated, if any.
    pub(crate) torn_tail: Option<TornTail>,
}

/// The first place where a log directory is not a valid sequence of records.
#[derive(Clone, Debug)]
pub(crate) struct Problem {
    /// Index of the segment in the listing.
    pub(crate) segment: usize,
    /// Offset of the bad frame; 0 when the segment itself is unusable.
    pub(crate) offset: u64,
    /// The LSN expected at `offset`: the first one the log lacks.
    pub(crate) expected: Lsn,
    /// Length of the segment file.
    pub(crate) file_len: u64,
    /// What is wrong.
    pub(crate) kind: ProblemKind,
}

/// What is wrong at a [`Problem`].
#[derive(Clone, Debug)]
pub(crate) enum ProblemKind {
    /// The segment header is invalid or names another LSN, or the segment does not follow the
    /// previous one.
    Segment(String),
    /// A frame that is not a valid record.
    Frame(Damage),
    /// A valid record with the wrong LSN or batch index.
    Unexpected(String),
}

impl ProblemKind {
    /// What is wrong, as a phrase.
    pub(crate) fn describe(&self) -> String {
        match self {
            ProblemKind::Segment(reason) | ProblemKind::Unexpected(reason) => reason.clone(),
            ProblemKind::Frame(damage) => damage.describe().to_string(),
        }
    }
}

/// A read-only pass over a log directory.
pub(crate) struct Scan {
    /// What the directory holds.
    pub(crate) listing: Listing,
    /// LSN of the last valid record before the first problem, or of the last record.
    pub(crate) last_lsn: Lsn,
    /// Length of the valid part of the last segment read.
    pub(crate) end_offset: u64,
    /// The first problem, if any; the scan stops there.
    pub(crate) problem: Option<Problem>,
}

/// Reads every segment of `dir` in order, up to the first problem. Changes nothing.
///
/// # Errors
/// [`LogError::UnsupportedFormat`] for a segment of another format version; [`LogError::Io`].
pub(crate) fn scan(fs: &dyn Fs, dir: &Path) -> Result<Scan, LogError> {
    let listing = list_segments(fs, dir)?;
    let mut expected = listing.segments.first().map_or(Lsn(1), |s| s.first);
    let mut end_offset = SEGMENT_HEADER_LEN as u64;
    let mut problem = None;
    'segments: for (index, segment) in listing.segments.iter().enumerate() {
        let found = |offset, expected, file_len, kind| {
            Some(Problem {
                segment: index,
                offset,
                expected,
                file_len,
                kind,
            })
        };
        let mut reader = match SegmentReader::open(fs, &segment.path) {
            Ok(reader) => reader,
            Err(LogError::Corrupt { reason, .. }) => {
                let file_len = fs
                    .open_read(&segment.path)
                    .and_then(|f| f.size())
                    .map_err(io_err(format!("stat segment {}", segment.path.display())))?;
                problem = found(0, expected, file_len, ProblemKind::Segment(reason));
                break;
            }
            Err(e) => return Err(e),
        };
        let first = reader.header().first_lsn;
        let segment_problem = if first != segment.first {
            Some(format!(
                "header names lsn {first} but the file name lsn {}",
                segment.first
            ))
        } else if first != expected {
            Some(format!(
                "segment starts at lsn {first}, expected lsn {expected}"
            ))
        } else {
            None
        };
        if let Some(reason) = segment_problem {
            problem = found(0, expected, reader.len(), ProblemKind::Segment(reason));
            break;
        }
        let mut previous_index: Option<u32> = None;
        loop {
            let offset = reader.offset();
            let unexpected = match reader.next()? {
                Next::End => break,
                Next::Bad { offset, damage } => {
                    problem = found(offset, expected, reader.len(), ProblemKind::Frame(damage));
                    break 'segments;
                }
                Next::Record { header, .. } => {
                    let index_follows = match previous_index {
                        None => header.batch_index == 0,
                        Some(p) => {
                            header.batch_index == 0 || Some(header.batch_index) == p.checked_add(1)
                        }
                    };
                    if header.lsn != expected {
                        Some(format!(
                            "record has lsn {}, expected lsn {expected}",
                            header.lsn
                        ))
                    } else if !index_follows {
                        Some(format!(
                            "record lsn {} has an out of order batch index",
                            header.lsn
                        ))
                    } else if let Some(next) = expected.0.checked_add(1) {
                        previous_index = Some(header.batch_index);
                        expected = Lsn(next);
                        None
                    } else {
                        Some("lsn overflows 64 bits".to_string())
                    }
                }
            };
            if let Some(reason) = unexpected {
                problem = found(
                    offset,
                    expected,
                    reader.len(),
                    ProblemKind::Unexpected(reason),
                );
                break 'segments;
            }
        }
        end_offset = reader.offset();
    }
    // A first segment named after lsn 0 (never a record's) makes `expected` 0; its header is
    // then refused, so a problem is reported rather than a wrapped-around last lsn.
    let last_lsn = match &problem {
        Some(p) => Lsn(p.expected.0.saturating_sub(1)),
        None => Lsn(expected.0.saturating_sub(1)),
    };
    Ok(Scan {
        listing,
        last_lsn,
        end_offset,
        problem,
    })
}

/// Validates the log in `dir`, truncates a torn tail, and creates the first segment of an empty
/// directory. The caller holds the directory lock.
///
/// # Errors
/// [`LogError::Corrupt`] naming the file and offset of damaged data, with what the operator can
/// do; [`LogError::UnsupportedFormat`]; [`LogError::Io`].
pub(crate) fn recover(fs: &dyn Fs, dir: &Path) -> Result<Recovered, LogError> {
    let Scan {
        listing,
        last_lsn,
        end_offset,
        problem,
    } = scan(fs, dir)?;
    if !listing.temporaries.is_empty() {
        for tmp in &listing.temporaries {
            info!(file = %tmp.display(), "removing unfinished segment creation");
            fs.remove_file(tmp)
                .map_err(io_err(format!("remove {}", tmp.display())))?;
        }
        sync_dir(fs, dir)?;
    }
    let segments = listing.segments;
    if segments.is_empty() {
        let first = Lsn(1);
        create_segment(fs, dir, first)?;
        let path = dir.join(segment_file_name(first));
        return Ok(Recovered {
            segments: vec![SegmentMeta { first, path }],
            last_lsn: Lsn::ZERO,
            active_len: SEGMENT_HEADER_LEN as u64,
            torn_tail: None,
        });
    }
    let Some(problem) = problem else {
        return Ok(Recovered {
            segments,
            last_lsn,
            active_len: end_offset,
            torn_tail: None,
        });
    };
    let path = &segments[problem.segment].path;
    let is_last = problem.segment + 1 == segments.len();
    let what = problem.kind.describe();
    let proof = match &problem.kind {
        ProblemKind::Frame(damage) if is_last => unfinished_write(fs, path, &problem, *damage)?,
        _ => None,
    };
    let Some(proof) = proof else {
        let why = match &problem.kind {
            ProblemKind::Frame(_) if is_last => {
                format!("{what}, and every sector of the record holds written data")
            }
            ProblemKind::Frame(_) => {
                format!("{what}, in a segment that was complete before the next one was created")
            }
            _ => what,
        };
        return Err(corrupt_at_open(dir, path, &problem, &why));
    };
    if let Some((later_offset, later)) =
        find_later_write(fs, path, problem.offset, problem.expected, problem.file_len)?
    {
        let why = format!(
            "{what}; record lsn {} of a later write follows at offset {later_offset}",
            later.lsn
        );
        return Err(corrupt_at_open(dir, path, &problem, &why));
    }
    let reason = format!("{what}: {proof}");
    let dropped = problem.file_len - problem.offset;
    warn!(
        file = %path.display(),
        offset = problem.offset,
        bytes_dropped = dropped,
        reason = %reason,
        "truncating the unfinished last write of the log"
    );
    truncate(fs, path, problem.offset)?;
    let torn_tail = TornTail {
        file: path.clone(),
        offset: problem.offset,
        bytes_dropped: dropped,
        reason,
    };
    Ok(Recovered {
        segments,
        last_lsn,
        active_len: problem.offset,
        torn_tail: Some(torn_tail),
    })
}

/// The [`LogError::Corrupt`] that refuses to open the log at `problem`, saying what to do.
pub(crate) fn corrupt_at_open(dir: &Path, path: &Path, problem: &Problem, why: &str) -> LogError {
    LogError::Corrupt {
        file: path.display().to_string(),
        offset: problem.offset,
        reason: format!(
            "{why}; this is not the unfinished write of a crash, so acknowledged records may be \
             damaged and the log was not opened: restore it from a replica or a backup, or run \
             `majordodo log repair --dir {}` to cut the log at this offset, which loses every \
             record from lsn {} on",
            dir.display(),
            problem.expected
        ),
    }
}

/// Whether the damaged frame at `problem` is proven to be an unfinished write by rule (a) or
/// (b) of the module documentation; returns the proof, as a phrase.
fn unfinished_write(
    fs: &dyn Fs,
    path: &Path,
    problem: &Problem,
    damage: Damage,
) -> Result<Option<String>, LogError> {
    let extent = match damage {
        Damage::HeaderCut | Damage::PayloadCut(_) => {
            return Ok(Some("the file ends inside it".to_string()));
        }
        Damage::HeaderInvalid => RECORD_HEADER_LEN as u64,
        Damage::PayloadInvalid(header) => header.frame_len(),
    };
    let file = fs
        .open_read(path)
        .map_err(io_err(format!("open segment {}", path.display())))?;
    let end = problem.offset.saturating_add(extent);
    let sector = unwritten_sector(&*file, problem.offset, end, problem.file_len)
        .map_err(io_err(format!("read segment {}", path.display())))?;
    Ok(sector.map(|at| format!("the sector at offset {at} was never written")))
}

/// The first 512-byte-aligned sector overlapping `[from, to)` whose bytes from `from` on (to
/// the end of the sector or of the file) are all zeros.
fn unwritten_sector(
    file: &dyn FsFile,
    from: u64,
    to: u64,
    file_len: u64,
) -> std::io::Result<Option<u64>> {
    let mut piece = [0u8; SECTOR as usize];
    let mut sector = from - from % SECTOR;
    while sector < to.min(file_len) {
        let start = sector.max(from);
        let end = (sector + SECTOR).min(file_len);
        let bytes = &mut piece[..(end - start) as usize];
        file.read_exact_at(bytes, start)?;
        if bytes.iter().all(|b| *b == 0) {
            return Ok(Some(sector));
        }
        sector += SECTOR;
    }
    Ok(None)
}

/// Looks in `path` from offset `from` to `file_len` for a checksum-valid frame of a write that
/// started after `expected`; returns its offset and header.
///
/// Every offset is tried, since the damaged bytes give no frame boundaries. The LSN of such a
/// frame is bounded (the records from `expected` on take at least a frame header each between
/// `from` and the frame), so checksums are only computed for plausible headers.
pub(crate) fn find_later_write(
    fs: &dyn Fs,
    path: &Path,
    from: u64,
    expected: Lsn,
    file_len: u64,
) -> Result<Option<(u64, RecordHeader)>, LogError> {
    let found = scan_frames(fs, path, from, file_len, false, |at, lsn, batch_index| {
        let max_lsn = expected
            .0
            .saturating_add((at - from) / RECORD_HEADER_LEN as u64)
            .saturating_add(1);
        lsn.saturating_sub(u64::from(batch_index)) > expected.0 && lsn <= max_lsn
    })?;
    Ok(found.into_iter().next())
}

/// Checksum-valid frames in `path` between `from` and `file_len`, trying every offset (a frame
/// found is skipped whole); `plausible(offset, lsn, batch_index)` filters candidates before any
/// checksum is computed. Stops at the first frame found unless `all`.
fn scan_frames(
    fs: &dyn Fs,
    path: &Path,
    from: u64,
    file_len: u64,
    all: bool,
    mut plausible: impl FnMut(u64, u64, u32) -> bool,
) -> Result<Vec<(u64, RecordHeader)>, LogError> {
    let context = || format!("read segment {}", path.display());
    let file = fs.open_read(path).map_err(io_err(context()))?;
    let header_len = RECORD_HEADER_LEN as u64;
    let mut window = vec![0u8; SCAN_WINDOW];
    let mut payload = Vec::new();
    let mut found = Vec::new();
    let mut pos = from;
    while pos + header_len <= file_len {
        let want = usize::try_from(file_len - pos).map_or(SCAN_WINDOW, |n| n.min(SCAN_WINDOW));
        file.read_exact_at(&mut window[..want], pos)
            .map_err(io_err(context()))?;
        let mut i = 0;
        while i + RECORD_HEADER_LEN <= want {
            let at = pos + i as u64;
            let head = window[i..i + RECORD_HEADER_LEN]
                .first_chunk::<RECORD_HEADER_LEN>()
                .expect("slice has the header length");
            let lsn = u64::from_le_bytes(head[12..20].try_into().expect("8 bytes"));
            let batch_index = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
            let candidate = plausible(at, lsn, batch_index)
                .then(|| RecordHeader::decode(head))
                .flatten()
                .filter(|h| h.frame_len() <= file_len - at);
            if let Some(header) = candidate {
                payload.resize(header.len as usize, 0);
                file.read_exact_at(&mut payload, at + header_len)
                    .map_err(io_err(context()))?;
                if header.verify(&payload) {
                    found.push((at, header));
                    if !all {
                        return Ok(found);
                    }
                    // Skip the frame; reread the window from its end.
                    i += header.frame_len() as usize;
                    if i + RECORD_HEADER_LEN > want {
                        break;
                    }
                    continue;
                }
            }
            i += 1;
        }
        if i == 0 {
            break;
        }
        pos += i as u64;
    }
    Ok(found)
}

/// Every checksum-valid frame in `path` between `from` and `file_len` (frames found are skipped
/// whole; other offsets are tried one by one).
pub(crate) fn valid_frames_after(
    fs: &dyn Fs,
    path: &Path,
    from: u64,
    file_len: u64,
) -> Result<Vec<(u64, RecordHeader)>, LogError> {
    scan_frames(fs, path, from, file_len, true, |_, lsn, batch_index| {
        lsn != 0 && u64::from(batch_index) < lsn
    })
}

/// Cuts `path` at `len` and makes the new length durable.
pub(crate) fn truncate(fs: &dyn Fs, path: &Path, len: u64) -> Result<(), LogError> {
    let context = || format!("truncate segment {} at {len}", path.display());
    let file = fs.open_write(path).map_err(io_err(context()))?;
    file.set_len(len).map_err(io_err(context()))?;
    file.sync_all().map_err(io_err(context()))
}
