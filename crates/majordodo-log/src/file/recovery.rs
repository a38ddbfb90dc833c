//! Recovery at open: validate every segment, tell a torn tail from corruption, truncate the tail.
//!
//! Every segment is read in order; every header and record checksum is verified, and LSNs must
//! follow each other without a gap across segments. Only the last segment may end badly, and only
//! in one way: the remains of the last write, which was never acknowledged.
//!
//! # Torn tail or corruption?
//! The writer appends one write at a time and starts a write only after the previous one was
//! fsynced; each record stores its `batch_index`, its position inside its write, so
//! `lsn - batch_index` is the LSN where its write started. Let X be the offset of the first frame
//! in the last segment that is not the expected record (incomplete, bad checksum, wrong LSN or
//! wrong batch index) and E the LSN expected there.
//! - If a checksum-valid frame at or after X belongs to a write that started after E, that later
//!   write was only issued once the write holding E had been fsynced: the damage at X is in
//!   acknowledged data, and open fails with [`LogError::Corrupt`] naming the file and X.
//! - Otherwise everything from X on belongs to the last write (zeros, garbage, a cut frame, or
//!   even complete frames of that same write that reached the disk out of order): a torn tail.
//!   It was never acknowledged, so it is reported and truncated away.
//!
//! Limit: damage confined to the last fsynced write, with nothing written after it, looks exactly
//! like a torn write and is truncated; no format can tell them apart without a later write.

use std::path::Path;

use tracing::{info, warn};

use super::TornTail;
use super::format::{RECORD_HEADER_LEN, RecordHeader, SEGMENT_HEADER_LEN};
use super::segment::{
    Next, SegmentMeta, SegmentReader, create_segment, io_err, list_segments, sync_dir,
};
use crate::vfs::Fs;
use crate::{LogError, Lsn};

/// Size of the window read at once while looking for records after a bad frame.
const SCAN_WINDOW: usize = 1024 * 1024;

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

/// Validates the log in `dir`, truncates a torn tail, and creates the first segment of an empty
/// directory. The caller holds the directory lock.
///
/// # Errors
/// [`LogError::Corrupt`] naming the file and offset of damaged data; [`LogError::Io`].
pub(crate) fn recover(fs: &dyn Fs, dir: &Path) -> Result<Recovered, LogError> {
    let listing = list_segments(fs, dir)?;
    if !listing.temporaries.is_empty() {
        for tmp in &listing.temporaries {
            info!(file = %tmp.display(), "removing unfinished segment creation");
            fs.remove_file(tmp)
                .map_err(io_err(format!("remove {}", tmp.display())))?;
        }
        sync_dir(fs, dir)?;
    }
    if listing.segments.is_empty() {
        let first = Lsn(1);
        create_segment(fs, dir, first)?;
        let path = dir.join(super::segment::segment_file_name(first));
        return Ok(Recovered {
            segments: vec![SegmentMeta { first, path }],
            last_lsn: Lsn::ZERO,
            active_len: SEGMENT_HEADER_LEN as u64,
            torn_tail: None,
        });
    }

    let count = listing.segments.len();
    let mut expected = listing.segments[0].first;
    let mut active_len = SEGMENT_HEADER_LEN as u64;
    let mut torn_tail = None;
    for (i, segment) in listing.segments.iter().enumerate() {
        let is_last = i + 1 == count;
        let file = segment.path.display().to_string();
        let corrupt = |offset: u64, reason: String| LogError::Corrupt {
            file: file.clone(),
            offset,
            reason,
        };
        let mut reader = SegmentReader::open(fs, &segment.path)?;
        let first = reader.header().first_lsn;
        if first != segment.first {
            return Err(corrupt(
                0,
                format!(
                    "header names lsn {first} but the file name lsn {}",
                    segment.first
                ),
            ));
        }
        if first != expected {
            return Err(corrupt(
                0,
                format!("segment starts at lsn {first}, expected lsn {expected}"),
            ));
        }
        let mut previous_index: Option<u32> = None;
        let bad = loop {
            match reader.next()? {
                Next::End => break None,
                Next::Bad { offset, reason } => break Some((offset, reason)),
                Next::Record { header, offset, .. } => {
                    let index_follows = match previous_index {
                        None => header.batch_index == 0,
                        Some(p) => {
                            header.batch_index == 0 || Some(header.batch_index) == p.checked_add(1)
                        }
                    };
                    if header.lsn != expected {
                        break Some((
                            offset,
                            format!("record has lsn {}, expected lsn {expected}", header.lsn),
                        ));
                    }
                    if !index_follows {
                        break Some((
                            offset,
                            format!("record lsn {} has an out of order batch index", header.lsn),
                        ));
                    }
                    previous_index = Some(header.batch_index);
                    expected = Lsn(expected
                        .0
                        .checked_add(1)
                        .ok_or_else(|| corrupt(offset, "lsn overflows 64 bits".to_string()))?);
                }
            }
        };
        active_len = reader.offset();
        let Some((offset, reason)) = bad else {
            continue;
        };
        if !is_last {
            return Err(corrupt(offset, reason));
        }
        let file_len = reader.len();
        if let Some((later_offset, later)) =
            find_later_write(fs, &segment.path, offset, expected, file_len)?
        {
            return Err(corrupt(
                offset,
                format!(
                    "{reason}; record lsn {} of a later write follows at offset {later_offset}",
                    later.lsn
                ),
            ));
        }
        let dropped = file_len - offset;
        warn!(
            file = %segment.path.display(),
            offset,
            bytes_dropped = dropped,
            reason = %reason,
            "truncating torn tail of the log"
        );
        truncate(fs, &segment.path, offset)?;
        active_len = offset;
        torn_tail = Some(TornTail {
            file: segment.path.clone(),
            offset,
            bytes_dropped: dropped,
            reason,
        });
    }
    Ok(Recovered {
        segments: listing.segments,
        last_lsn: Lsn(expected.0 - 1),
        active_len,
        torn_tail,
    })
}

/// Looks in `path` from offset `from` to `file_len` for a checksum-valid frame of a write that
/// started after `expected`; returns its offset and header.
///
/// Every offset is tried, since the damaged bytes give no frame boundaries. The LSN of such a
/// frame is bounded (the records from `expected` on take at least a frame header each between
/// `from` and the frame), so a checksum is only computed for plausible headers.
fn find_later_write(
    fs: &dyn Fs,
    path: &Path,
    from: u64,
    expected: Lsn,
    file_len: u64,
) -> Result<Option<(u64, RecordHeader)>, LogError> {
    let context = || format!("read segment {}", path.display());
    let file = fs.open_read(path).map_err(io_err(context()))?;
    let header_len = RECORD_HEADER_LEN as u64;
    let mut window = vec![0u8; SCAN_WINDOW];
    let mut payload = Vec::new();
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
            let header = RecordHeader::decode(head);
            let max_lsn = expected
                .0
                .saturating_add((at - from) / header_len)
                .saturating_add(1);
            let plausible = header.write_start() > expected
                && header.lsn.0 <= max_lsn
                && u64::from(header.batch_index) < header.lsn.0
                && header.frame_len() <= file_len - at;
            if plausible {
                payload.resize(header.len as usize, 0);
                file.read_exact_at(&mut payload, at + header_len)
                    .map_err(io_err(context()))?;
                if header.verify(&payload) {
                    return Ok(Some((at, header)));
                }
            }
            i += 1;
        }
        pos += i as u64;
    }
    Ok(None)
}

/// Cuts `path` at `len` and makes the new length durable.
fn truncate(fs: &dyn Fs, path: &Path, len: u64) -> Result<(), LogError> {
    let context = || format!("truncate segment {} at {len}", path.display());
    let file = fs.open_write(path).map_err(io_err(context()))?;
    file.set_len(len).map_err(io_err(context()))?;
    file.sync_all().map_err(io_err(context()))
}
