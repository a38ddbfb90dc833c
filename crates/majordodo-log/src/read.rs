//! Reading a file log's records without opening the log: for tools that show what a log holds
//! (`majordodo dump-log`), also while a broker writes it or after a crash.
//!
//! [`FileLogReader`] never writes, never takes the directory lock and never cuts anything: a
//! damaged or unfinished record is reported as [`LogError::Corrupt`] (file and offset) and
//! reading stops there. [`crate::FileLog::open`] is different: it cuts an unfinished last
//! write, so it must not be used to look at a log.
//!
//! The segments are listed once, when the reader is opened, and each segment is read up to the
//! length it had when the reader reached it: a log being written is seen as a prefix of what it
//! holds. A segment deleted meanwhile by a release fails the read with [`LogError::Io`].

use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::file::segment::{Next, SegmentMeta, SegmentReader, list_segments};
use crate::vfs::{Fs, RealFs};
use crate::{LogError, Lsn};

/// Reads the records of a file log directory in order, from a position on; see the module
/// documentation.
pub struct FileLogReader {
    fs: Box<dyn Fs>,
    segments: Vec<SegmentMeta>,
    /// Index of the segment read next, or being read.
    index: usize,
    current: Option<SegmentReader>,
    /// The LSN the next record must have.
    expected: Lsn,
    /// Records before this LSN are skipped.
    from: Lsn,
    /// Set once damage was reported: reading does not go on after it.
    stopped: bool,
}

impl std::fmt::Debug for FileLogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLogReader")
            .field("segments", &self.segments.len())
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl FileLogReader {
    /// Lists the segments of `dir` and positions the reader at the first record whose LSN is
    /// at least `from` (the first segment that can hold it is the first one read).
    ///
    /// # Errors
    /// [`LogError::Io`] when the directory cannot be listed (it does not exist, for one).
    pub fn open(dir: impl AsRef<Path>, from: Lsn) -> Result<FileLogReader, LogError> {
        FileLogReader::open_with(Box::new(RealFs), dir.as_ref(), from)
    }

    /// [`FileLogReader::open`] on the file system `fs`.
    ///
    /// # Errors
    /// As [`FileLogReader::open`].
    pub fn open_with(fs: Box<dyn Fs>, dir: &Path, from: Lsn) -> Result<FileLogReader, LogError> {
        let segments = list_segments(&*fs, dir)?.segments;
        let index = segments.iter().rposition(|s| s.first <= from).unwrap_or(0);
        let expected = segments.get(index).map_or(Lsn(1), |s| s.first);
        Ok(FileLogReader {
            fs,
            segments,
            index,
            current: None,
            expected,
            from,
            stopped: false,
        })
    }

    /// The first LSN the directory holds (`None` for a directory without segments).
    pub fn first_lsn(&self) -> Option<Lsn> {
        self.segments.first().map(|s| s.first)
    }

    /// The segment files, in LSN order, as listed when the reader was opened.
    pub fn segments(&self) -> impl Iterator<Item = &Path> {
        self.segments.iter().map(|s| s.path.as_path())
    }

    /// The segment being read, if any.
    pub fn current_file(&self) -> Option<PathBuf> {
        self.segments.get(self.index).map(|s| s.path.clone())
    }

    /// The next record at or after `from`, or `None` at the end of the log.
    ///
    /// # Errors
    /// [`LogError::Corrupt`] naming the file and offset where the log stops being a valid
    /// sequence of records (damage, an unfinished write, a gap between segments); reading
    /// stops there and later calls return `None`. [`LogError::UnsupportedFormat`] for a
    /// segment of another format version; [`LogError::Io`].
    pub fn next_record(&mut self) -> Result<Option<(Lsn, Bytes)>, LogError> {
        loop {
            if self.stopped || self.index >= self.segments.len() {
                return Ok(None);
            }
            let segment = &self.segments[self.index];
            let corrupt = |offset: u64, reason: String| LogError::Corrupt {
                file: segment.path.display().to_string(),
                offset,
                reason,
            };
            if self.current.is_none() {
                let reader = match SegmentReader::open(&*self.fs, &segment.path) {
                    Ok(reader) => reader,
                    Err(e) => {
                        self.stopped = true;
                        return Err(e);
                    }
                };
                let first = reader.header().first_lsn;
                let problem = if first != segment.first {
                    Some(format!(
                        "header names lsn {first} but the file name lsn {}",
                        segment.first
                    ))
                } else if first != self.expected {
                    Some(format!(
                        "segment starts at lsn {first}, expected lsn {}",
                        self.expected
                    ))
                } else {
                    None
                };
                if let Some(reason) = problem {
                    self.stopped = true;
                    return Err(corrupt(0, reason));
                }
                self.current = Some(reader);
            }
            let reader = self.current.as_mut().expect("opened above");
            match reader.next() {
                Err(e) => {
                    self.stopped = true;
                    return Err(e);
                }
                Ok(Next::End) => {
                    self.current = None;
                    self.index += 1;
                }
                Ok(Next::Bad { offset, damage }) => {
                    self.stopped = true;
                    return Err(corrupt(
                        offset,
                        format!("{} (expected lsn {})", damage.describe(), self.expected),
                    ));
                }
                Ok(Next::Record {
                    header,
                    offset,
                    payload,
                }) => {
                    if header.lsn != self.expected {
                        self.stopped = true;
                        return Err(corrupt(
                            offset,
                            format!(
                                "record has lsn {}, expected lsn {}",
                                header.lsn, self.expected
                            ),
                        ));
                    }
                    self.expected = self.expected.next();
                    if header.lsn >= self.from {
                        return Ok(Some((header.lsn, payload)));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CommitLog, FileLog, FileLogConfig};

    /// Writes `count` records `r<lsn>-...` in `dir`, rolling segments on the way.
    async fn write(dir: &Path, count: u64) {
        let config = FileLogConfig {
            segment_size: 4096,
            ..FileLogConfig::default()
        };
        let (log, _) = FileLog::open(dir, config).unwrap();
        for i in 1..=count {
            let payload = Bytes::from(format!("r{i}-{}", "x".repeat(200)));
            log.append(vec![payload]).await.unwrap();
        }
        log.close().await.unwrap();
    }

    fn read_all(dir: &Path, from: u64) -> (Vec<u64>, Option<LogError>) {
        let mut reader = FileLogReader::open(dir, Lsn(from)).unwrap();
        let mut lsns = Vec::new();
        loop {
            match reader.next_record() {
                Ok(Some((lsn, payload))) => {
                    assert!(payload.starts_with(format!("r{}-", lsn.0).as_bytes()));
                    lsns.push(lsn.0);
                }
                Ok(None) => return (lsns, None),
                Err(e) => return (lsns, Some(e)),
            }
        }
    }

    #[tokio::test]
    async fn reads_every_record_from_a_position_across_segments() {
        // Goal: the reader hands out the records in order from `from` on, across segments.
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 60).await;
        let reader = FileLogReader::open(dir.path(), Lsn(1)).unwrap();
        assert!(
            reader.segments().count() > 2,
            "the test needs several segments"
        );
        assert_eq!(reader.first_lsn(), Some(Lsn(1)));
        for (from, expected) in [
            (1, (1..=60).collect()),
            (45, (45..=60).collect()),
            (61, vec![]),
        ] {
            let (lsns, error) = read_all(dir.path(), from);
            assert!(error.is_none(), "{error:?}");
            assert_eq!(lsns, expected);
        }
    }

    #[tokio::test]
    async fn a_damaged_tail_is_reported_and_left_as_it_is() {
        // Goal: a torn last record stops the read with its file and offset, and the reader
        // changes nothing: the file keeps its length (FileLog::open would cut it).
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 10).await;
        let last = FileLogReader::open(dir.path(), Lsn(1))
            .unwrap()
            .segments()
            .last()
            .unwrap()
            .to_path_buf();
        let len = std::fs::metadata(&last).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&last)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let (lsns, error) = read_all(dir.path(), 1);
        assert_eq!(lsns, (1..=9).collect::<Vec<_>>());
        match error {
            Some(LogError::Corrupt { file, reason, .. }) => {
                assert_eq!(file, last.display().to_string());
                assert!(reason.contains("expected lsn 10"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::metadata(&last).unwrap().len(), len - 3);
    }
}
