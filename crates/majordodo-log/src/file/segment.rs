//! Segment files on disk: naming, listing, creation, and reading records in order.

use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use bytes::BytesMut;

use super::format::{
    HeaderError, RECORD_HEADER_LEN, RecordHeader, SEGMENT_HEADER_LEN, SegmentHeader,
};
use crate::vfs::{FileReader, Fs, FsFile};
use crate::{LogError, Lsn};

/// Suffix of a segment file; the name before it is the first LSN, zero padded to 20 digits
/// (the width of `u64::MAX`), so that names sort like LSNs.
const SEGMENT_SUFFIX: &str = ".log";
/// Suffix of a segment being created; such a file never held a record and is deleted at open.
const TMP_SUFFIX: &str = ".log.tmp";
/// Number of digits of the LSN in a segment file name.
const NAME_DIGITS: usize = 20;
/// Read buffer of a segment reader: large enough to read a segment in few system calls.
const READ_BUFFER: usize = 256 * 1024;

/// Builds the closure that wraps an [`io::Error`] into [`LogError::Io`] with a context.
pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> LogError {
    let context = context.into();
    move |source| LogError::Io { context, source }
}

/// File name of the segment whose first record has LSN `first`.
pub(crate) fn segment_file_name(first: Lsn) -> String {
    format!("{:0width$}{SEGMENT_SUFFIX}", first.0, width = NAME_DIGITS)
}

/// The first LSN encoded in a segment file name, if `name` is one.
pub(crate) fn parse_segment_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Lsn)
}

/// A segment file of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SegmentMeta {
    /// LSN of its first record (from its name, checked against its header when read).
    pub(crate) first: Lsn,
    /// Its path.
    pub(crate) path: PathBuf,
}

/// What a log directory holds.
pub(crate) struct Listing {
    /// Segment files in LSN order.
    pub(crate) segments: Vec<SegmentMeta>,
    /// Leftovers of segment creations that did not finish.
    pub(crate) temporaries: Vec<PathBuf>,
}

/// Lists the segments of `dir`. Other files are ignored.
pub(crate) fn list_segments(fs: &dyn Fs, dir: &Path) -> Result<Listing, LogError> {
    let context = || format!("list log directory {}", dir.display());
    let mut segments = Vec::new();
    let mut temporaries = Vec::new();
    for name in fs.read_dir(dir).map_err(io_err(context()))? {
        let Some(name) = name.to_str() else { continue };
        if let Some(first) = parse_segment_name(name) {
            segments.push(SegmentMeta {
                first,
                path: dir.join(name),
            });
        } else if name
            .strip_suffix(TMP_SUFFIX)
            .and_then(|stem| parse_segment_name(&format!("{stem}{SEGMENT_SUFFIX}")))
            .is_some()
        {
            temporaries.push(dir.join(name));
        }
    }
    segments.sort_by_key(|s| s.first);
    Ok(Listing {
        segments,
        temporaries,
    })
}

/// Makes the entries of `dir` (created, renamed or deleted files) durable.
pub(crate) fn sync_dir(fs: &dyn Fs, dir: &Path) -> Result<(), LogError> {
    fs.sync_dir(dir)
        .map_err(io_err(format!("fsync directory {}", dir.display())))
}

/// Creates the segment whose first record will have LSN `first` and returns it opened for
/// writing; its valid length is [`SEGMENT_HEADER_LEN`].
///
/// Steps, so that a crash at any point leaves either no segment or a complete header:
/// 1. create `<name>.tmp` (failing if it exists), write the header;
/// 2. fsync the file;
/// 3. rename it to `<name>`;
/// 4. fsync the directory.
pub(crate) fn create_segment(
    fs: &dyn Fs,
    dir: &Path,
    first: Lsn,
) -> Result<Box<dyn FsFile>, LogError> {
    let name = segment_file_name(first);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    let file = fs
        .create_new(&tmp)
        .map_err(io_err(format!("create segment {}", tmp.display())))?;
    let header = SegmentHeader { first_lsn: first }.encode();
    file.write_all_at(&header, 0)
        .map_err(io_err(format!("write header of segment {}", tmp.display())))?;
    file.sync_all()
        .map_err(io_err(format!("fsync segment {}", tmp.display())))?;
    fs.rename(&tmp, &path).map_err(io_err(format!(
        "rename {} to {}",
        tmp.display(),
        path.display()
    )))?;
    sync_dir(fs, dir)?;
    Ok(file)
}

/// What is wrong with a frame that is not a valid record.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Damage {
    /// The file ends before a whole frame header.
    HeaderCut,
    /// The header checksum does not match.
    HeaderInvalid,
    /// The header is valid and its payload extends past the end of the file.
    PayloadCut(RecordHeader),
    /// The header is valid and the payload checksum does not match.
    PayloadInvalid(RecordHeader),
}

impl Damage {
    /// What is wrong, as a phrase.
    pub(crate) fn describe(&self) -> &'static str {
        match self {
            Damage::HeaderCut => "record header cut by the end of the file",
            Damage::HeaderInvalid => "record header checksum mismatch",
            Damage::PayloadCut(_) => "record extends past the end of the file",
            Damage::PayloadInvalid(_) => "record payload checksum mismatch",
        }
    }
}

/// What [`SegmentReader::next`] found.
#[derive(Debug)]
pub(crate) enum Next {
    /// A record whose checksums are valid. Its LSN and batch index are not checked here.
    Record {
        /// Its header.
        header: RecordHeader,
        /// Offset of its frame in the file.
        offset: u64,
        /// Its payload.
        payload: bytes::Bytes,
    },
    /// The file ends exactly after the previous record.
    End,
    /// The bytes at `offset` are not a complete valid frame.
    Bad {
        /// Offset of the bad frame.
        offset: u64,
        /// What is wrong.
        damage: Damage,
    },
}

/// Reads the records of one segment file in order, one at a time (never the whole file).
pub(crate) struct SegmentReader {
    reader: BufReader<FileReader>,
    path: PathBuf,
    /// Offset of the next frame.
    offset: u64,
    /// Length of the file when opened; reading never goes past it.
    len: u64,
    header: SegmentHeader,
}

impl SegmentReader {
    /// Opens a segment and validates its header.
    ///
    /// # Errors
    /// [`LogError::Corrupt`] at offset 0 if the header is invalid;
    /// [`LogError::UnsupportedFormat`] for a valid header of another format version;
    /// [`LogError::Io`].
    pub(crate) fn open(fs: &dyn Fs, path: &Path) -> Result<SegmentReader, LogError> {
        let context = || format!("open segment {}", path.display());
        let file = fs.open_read(path).map_err(io_err(context()))?;
        let len = file.size().map_err(io_err(context()))?;
        let mut reader = BufReader::with_capacity(READ_BUFFER, FileReader::new(file, 0));
        let mut head = [0u8; SEGMENT_HEADER_LEN];
        let got = read_up_to(&mut reader, &mut head)
            .map_err(io_err(format!("read segment {}", path.display())))?;
        let header = SegmentHeader::decode(&head[..got]).map_err(|e| match e {
            HeaderError::Invalid(reason) => LogError::Corrupt {
                file: path.display().to_string(),
                offset: 0,
                reason,
            },
            HeaderError::Version(version) => unsupported_version(path, version),
        })?;
        Ok(SegmentReader {
            reader,
            path: path.to_path_buf(),
            offset: SEGMENT_HEADER_LEN as u64,
            len,
            header,
        })
    }

    /// The validated header.
    pub(crate) fn header(&self) -> SegmentHeader {
        self.header
    }

    /// Length of the file when it was opened.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Offset of the next frame (after the last record read).
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads the next frame. After [`Next::Bad`] the reader must not be used again.
    ///
    /// # Errors
    /// [`LogError::Io`] when reading fails.
    pub(crate) fn next(&mut self) -> Result<Next, LogError> {
        let remaining = self.len - self.offset;
        if remaining == 0 {
            return Ok(Next::End);
        }
        let bad = |offset, damage| Next::Bad { offset, damage };
        if remaining < RECORD_HEADER_LEN as u64 {
            return Ok(bad(self.offset, Damage::HeaderCut));
        }
        let context = || format!("read segment {}", self.path.display());
        let mut head = [0u8; RECORD_HEADER_LEN];
        self.reader
            .read_exact(&mut head)
            .map_err(io_err(context()))?;
        let Some(header) = RecordHeader::decode(&head) else {
            return Ok(bad(self.offset, Damage::HeaderInvalid));
        };
        if header.frame_len() > remaining {
            return Ok(bad(self.offset, Damage::PayloadCut(header)));
        }
        // The length was just checked against the file size, so this allocation is bounded by
        // what is really on disk.
        let mut payload = BytesMut::zeroed(header.len as usize);
        self.reader
            .read_exact(&mut payload)
            .map_err(io_err(context()))?;
        if !header.verify(&payload) {
            return Ok(bad(self.offset, Damage::PayloadInvalid(header)));
        }
        let offset = self.offset;
        self.offset += header.frame_len();
        Ok(Next::Record {
            header,
            offset,
            payload: payload.freeze(),
        })
    }
}

/// The error for a segment of format `version`, which this code does not read.
fn unsupported_version(path: &Path, version: u16) -> LogError {
    let reason = if version < super::format::SEGMENT_VERSION {
        format!(
            "segment format version {version} was written by an earlier release; this release \
             reads only version {}, and pre-1.0 releases change formats without migrating them: \
             run the release that wrote this log, or move the log directory aside and start a \
             new one",
            super::format::SEGMENT_VERSION
        )
    } else {
        format!(
            "segment format version {version} was written by a later release; this release \
             reads only version {}",
            super::format::SEGMENT_VERSION
        )
    };
    LogError::UnsupportedFormat {
        file: path.display().to_string(),
        reason,
    }
}

/// Reads until `buf` is full or the reader ends; returns the number of bytes read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: segment names sort like LSNs and parse back; look-alike names are not segments.
    #[test]
    fn segment_names_round_trip_and_sort() {
        let a = segment_file_name(Lsn(9));
        let b = segment_file_name(Lsn(10));
        assert!(a < b);
        assert_eq!(parse_segment_name(&a), Some(Lsn(9)));
        assert_eq!(
            parse_segment_name(&segment_file_name(Lsn(u64::MAX))),
            Some(Lsn(u64::MAX))
        );
        assert_eq!(parse_segment_name("1.log"), None);
        assert_eq!(parse_segment_name("0000000000000000000a.log"), None);
        assert_eq!(parse_segment_name("00000000000000000001.log.tmp"), None);
        assert_eq!(parse_segment_name("99999999999999999999.log"), None);
    }
}
