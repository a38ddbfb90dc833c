//! [`SnapshotStore`]: snapshot files of the broker state in a local directory.
//!
//! A snapshot is opaque bytes (the broker encodes its state) taken at a log position: the state
//! after applying every record up to `lsn`. Files are named `snapshot-<lsn, 20 digits>.snap`:
//! ```text
//! header (48 bytes, little endian)
//! offset size field
//!      0    8 magic             b"MDODOSNP"
//!      8    2 version           SNAPSHOT_VERSION (1)
//!     10    1 compression       0 none, 1 gzip, 2 zstd (other values: a later format)
//!     11    1 reserved          0
//!     12    4 reserved          0
//!     16    8 lsn
//!     24    8 uncompressed_len  length of the snapshot bytes
//!     32    8 body_len          length of the body as stored
//!     40    4 body_crc          crc32c of the stored body
//!     44    4 header_crc        crc32c of bytes 0..44
//! body (body_len bytes, compressed as the header says)
//! ```
//!
//! Writing ([`SnapshotWriter`]), so that a crash leaves either the old set of snapshots or the
//! new one complete:
//! 1. create `snapshot-<lsn>.snap.tmp`, write a placeholder header and stream the compressed
//!    body;
//! 2. write the real header over the placeholder;
//! 3. fsync the temporary file;
//! 4. rename it to `snapshot-<lsn>.snap`;
//! 5. fsync the directory;
//! 6. delete all but the newest [`SNAPSHOTS_RETAINED`] snapshots, fsync the directory.
//!
//! Reading verifies the header, the file length and the body checksum in a first streaming
//! pass, then decompresses in a second streaming pass ([`SnapshotReader`]): a snapshot of any
//! size is read with constant memory. [`SnapshotStore::read_latest`] hands the decompressing
//! reader to a caller that consumes it as a stream (the broker's boot decodes from it, so the
//! decompressed body is never held whole); [`SnapshotStore::load_latest`] collects it into one
//! buffer (the snapshot size, once). If the newest snapshot is damaged, in its header, its
//! checksum or in what the caller finds while reading it, it is reported at WARN and the one
//! before is used.
//!
//! Every method does blocking file I/O: async code calls it through `spawn_blocking`.
//!
//! # Releasing the log
//! Two snapshots are kept so that a damaged newest one can fall back on the older one, which
//! then needs the log records after its own LSN. So the broker calls
//! `log.release_before(store.release_point()?)`: the LSN of the **older** retained snapshot,
//! never that of the newest.

use std::io::{self, BufReader, BufWriter, Cursor, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use tracing::{info, warn};

use crate::Lsn;
use crate::vfs::{self, FileReader, FileWriter, Fs, RealFs};

/// Number of snapshots kept: the newest, and one to fall back on if the newest is damaged.
pub const SNAPSHOTS_RETAINED: usize = 2;
/// Magic bytes opening every snapshot file.
const SNAPSHOT_MAGIC: [u8; 8] = *b"MDODOSNP";
/// Version of the snapshot format written by this code; the only one it reads.
const SNAPSHOT_VERSION: u16 = 1;
/// Length of the snapshot header.
const HEADER_LEN: usize = 48;
/// gzip level: the fastest, since snapshots are taken while the broker runs and the log, not
/// the snapshot, is what grows.
const GZIP_LEVEL: u32 = 1;
/// zstd level: the fastest of the ordinary levels. On task data it compresses about as well as
/// gzip's fastest level, about three times as fast, and decompresses faster still.
const ZSTD_LEVEL: i32 = 1;
/// I/O buffer for streaming snapshot files.
const IO_BUFFER: usize = 256 * 1024;
/// Largest buffer reserved up front from a header's length when collecting a snapshot, beyond
/// [`PREALLOCATE_RATIO`] times the body's stored length: the length is checksummed but still
/// outside data, so a length past both grows the buffer as the bytes are really read.
const PREALLOCATE_LIMIT: u64 = 64 * 1024 * 1024;
/// How many times its stored length a body's bytes are reserved up front, at most (past
/// [`PREALLOCATE_LIMIT`]). Task data rarely compresses 30-fold; a snapshot of incompressible
/// data is reserved exactly, so collecting it copies nothing again.
const PREALLOCATE_RATIO: u64 = 32;
/// File name parts.
const NAME_PREFIX: &str = "snapshot-";
const NAME_SUFFIX: &str = ".snap";
const TMP_SUFFIX: &str = ".snap.tmp";
/// Digits of the LSN in a file name (the width of `u64::MAX`).
const NAME_DIGITS: usize = 20;

/// Errors of the snapshot store.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// An I/O operation failed. Retryable once the cause (disk full, permissions) is fixed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, as a verb phrase.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A snapshot failed validation (header, length, checksum, compressed data). Not
    /// retryable; [`SnapshotStore::load_latest`] skips such a file and uses an older one.
    #[error("corrupt snapshot {file}: {reason}")]
    Corrupt {
        /// The file (or `<memory>`).
        file: String,
        /// What was wrong.
        reason: String,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> SnapshotError {
    let context = context.into();
    move |source| SnapshotError::Io { context, source }
}

/// How a snapshot body is compressed.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// Stored as is.
    None,
    /// gzip (deflate) at a fast level: what earlier releases wrote; still read.
    Gzip,
    /// zstd at a fast level: what this release writes.
    #[default]
    Zstd,
}

impl Compression {
    fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Zstd => 2,
        }
    }

    fn from_code(code: u8) -> Option<Compression> {
        match code {
            0 => Some(Compression::None),
            1 => Some(Compression::Gzip),
            2 => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// The decoded header of a snapshot.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Header {
    compression: Compression,
    lsn: Lsn,
    uncompressed_len: u64,
    body_len: u64,
    body_crc: u32,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut buf = [0u8; HEADER_LEN];
        buf[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
        buf[8..10].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        buf[10] = self.compression.code();
        buf[16..24].copy_from_slice(&self.lsn.0.to_le_bytes());
        buf[24..32].copy_from_slice(&self.uncompressed_len.to_le_bytes());
        buf[32..40].copy_from_slice(&self.body_len.to_le_bytes());
        buf[40..44].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = crc32c::crc32c(&buf[0..44]);
        buf[44..48].copy_from_slice(&crc.to_le_bytes());
        buf
    }

    fn decode(buf: &[u8]) -> Result<Header, String> {
        let Some(buf) = buf.first_chunk::<HEADER_LEN>() else {
            return Err(format!(
                "header truncated: {} of {HEADER_LEN} bytes",
                buf.len()
            ));
        };
        if buf[0..8] != SNAPSHOT_MAGIC {
            return Err("bad magic".to_string());
        }
        let u32_at =
            |at: usize| u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[at..at + 8]);
            u64::from_le_bytes(b)
        };
        if crc32c::crc32c(&buf[0..44]) != u32_at(44) {
            return Err("header checksum mismatch".to_string());
        }
        let version = u16::from_le_bytes([buf[8], buf[9]]);
        if version != SNAPSHOT_VERSION {
            return Err(format!("unsupported snapshot format version {version}"));
        }
        let compression = Compression::from_code(buf[10])
            .ok_or_else(|| format!("unknown compression kind {}", buf[10]))?;
        if buf[11] != 0 || buf[12..16] != [0u8; 4] {
            return Err("unknown header flags".to_string());
        }
        Ok(Header {
            compression,
            lsn: Lsn(u64_at(16)),
            uncompressed_len: u64_at(24),
            body_len: u64_at(32),
            body_crc: u32_at(40),
        })
    }
}

/// A snapshot read back into memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The log position the snapshot was taken at.
    pub lsn: Lsn,
    /// The snapshot bytes, decompressed.
    pub data: Vec<u8>,
}

/// A snapshot file, as written or found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The log position the snapshot was taken at.
    pub lsn: Lsn,
    /// The file.
    pub path: PathBuf,
    /// Length of the snapshot bytes.
    pub uncompressed_len: u64,
    /// Length of the file.
    pub file_len: u64,
}

/// Streams the body of a snapshot: counts it and checksums it as stored, and compresses it.
struct BodyWriter<W: Write> {
    sink: Sink<W>,
    uncompressed_len: u64,
}

/// Counts and checksums the bytes that reach the inner writer (the stored body).
struct Checksummed<W: Write> {
    inner: W,
    len: u64,
    crc: u32,
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum Sink<W: Write> {
    Plain(Checksummed<W>),
    Gzip(GzEncoder<Checksummed<W>>),
    Zstd(zstd::stream::write::Encoder<'static, Checksummed<W>>),
}

impl<W: Write> BodyWriter<W> {
    fn new(inner: W, compression: Compression) -> BodyWriter<W> {
        let checksummed = Checksummed {
            inner,
            len: 0,
            crc: 0,
        };
        let sink = match compression {
            Compression::None => Sink::Plain(checksummed),
            Compression::Gzip => Sink::Gzip(GzEncoder::new(
                checksummed,
                flate2::Compression::new(GZIP_LEVEL),
            )),
            Compression::Zstd => Sink::Zstd(
                zstd::stream::write::Encoder::new(checksummed, ZSTD_LEVEL)
                    .expect("level 1 is a valid zstd level"),
            ),
        };
        BodyWriter {
            sink,
            uncompressed_len: 0,
        }
    }

    /// Ends the body; returns the inner writer and the header fields of the body.
    fn finish(self, lsn: Lsn, compression: Compression) -> io::Result<(W, Header)> {
        let checksummed = match self.sink {
            Sink::Plain(c) => c,
            Sink::Gzip(encoder) => encoder.finish()?,
            Sink::Zstd(encoder) => encoder.finish()?,
        };
        let header = Header {
            compression,
            lsn,
            uncompressed_len: self.uncompressed_len,
            body_len: checksummed.len,
            body_crc: checksummed.crc,
        };
        Ok((checksummed.inner, header))
    }
}

impl<W: Write> Write for BodyWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.sink {
            Sink::Plain(w) => w.write(buf)?,
            Sink::Gzip(w) => w.write(buf)?,
            Sink::Zstd(w) => w.write(buf)?,
        };
        self.uncompressed_len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.sink {
            Sink::Plain(w) => w.flush(),
            Sink::Gzip(w) => w.flush(),
            Sink::Zstd(w) => w.flush(),
        }
    }
}

/// Encodes a snapshot into bytes (header and body), for sending one elsewhere. Files are
/// written with [`SnapshotStore::write`] or [`SnapshotStore::writer`].
pub fn encode_snapshot(lsn: Lsn, data: &[u8], compression: Compression) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + data.len() / 2);
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    let mut body = BodyWriter::new(out, compression);
    body.write_all(data)
        .expect("writing to a Vec does not fail");
    let (mut out, header) = body
        .finish(lsn, compression)
        .expect("writing to a Vec does not fail");
    out[..HEADER_LEN].copy_from_slice(&header.encode());
    out
}

/// Decodes bytes made by [`encode_snapshot`] (or read from a snapshot file).
///
/// # Errors
/// [`SnapshotError::Corrupt`] if they do not validate.
pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    let reader = SnapshotReader::new(Cursor::new(bytes), bytes.len() as u64, "<memory>")?;
    reader.collect()
}

/// Writes one snapshot file; see the module documentation for the steps. Dropping it without
/// [`SnapshotWriter::finish`] removes the temporary file.
pub struct SnapshotWriter {
    body: Option<BodyWriter<BufWriter<FileWriter>>>,
    store: SnapshotStore,
    lsn: Lsn,
    tmp: PathBuf,
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.body {
            Some(body) => body.write(buf),
            None => Err(io::Error::other("snapshot writer already finished")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.body {
            Some(body) => body.flush(),
            None => Ok(()),
        }
    }
}

impl SnapshotWriter {
    /// Completes the snapshot (steps 2–6) and returns its file.
    ///
    /// # Errors
    /// [`SnapshotError::Io`] from steps 2–5; the previous snapshots are then untouched. A
    /// failure to delete old snapshots (step 6) is only logged.
    pub fn finish(mut self) -> Result<SnapshotInfo, SnapshotError> {
        let body = self.body.take().expect("finish consumes the writer");
        let tmp = self.tmp.display().to_string();
        let (buffered, header) = body
            .finish(self.lsn, self.store.compression)
            .map_err(io_err(format!("write snapshot {tmp}")))?;
        let file = buffered
            .into_inner()
            .map_err(|e| io_err(format!("write snapshot {tmp}"))(e.into_error()))?
            .into_file();
        file.write_all_at(&header.encode(), 0)
            .map_err(io_err(format!("write snapshot header {tmp}")))?;
        file.sync_all()
            .map_err(io_err(format!("fsync snapshot {tmp}")))?;
        drop(file);
        let store = &self.store;
        let path = store.dir.join(snapshot_file_name(self.lsn));
        store
            .fs
            .rename(&self.tmp, &path)
            .map_err(io_err(format!("rename {tmp} to {}", path.display())))?;
        sync_dir(&*store.fs, &store.dir)?;
        info!(
            file = %path.display(),
            lsn = self.lsn.0,
            uncompressed_len = header.uncompressed_len,
            file_len = HEADER_LEN as u64 + header.body_len,
            "wrote snapshot"
        );
        if let Err(e) = self.store.prune() {
            // The new snapshot is in place; old files left behind are only wasted space and
            // are pruned again after the next snapshot.
            warn!(error = %e, "could not delete old snapshots");
        }
        Ok(SnapshotInfo {
            lsn: self.lsn,
            path,
            uncompressed_len: header.uncompressed_len,
            file_len: HEADER_LEN as u64 + header.body_len,
        })
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if self.body.is_some() {
            // Abandoned before finish: the temporary file is of no use.
            let _ = self.store.fs.remove_file(&self.tmp);
        }
    }
}

/// Streams the bytes of one snapshot, decompressing; verified before the first byte is handed
/// out (see the module documentation). Reading fails with [`io::ErrorKind::InvalidData`] if the
/// decompressed length differs from the header's.
pub struct SnapshotReader<'a> {
    inner: Box<dyn Read + Send + 'a>,
    lsn: Lsn,
    expected: u64,
    /// Length of the body as stored.
    stored: u64,
    read: u64,
    name: String,
}

impl std::fmt::Debug for SnapshotReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotReader")
            .field("name", &self.name)
            .field("lsn", &self.lsn)
            .finish_non_exhaustive()
    }
}

impl<'a> SnapshotReader<'a> {
    /// Validates the header and body checksum of `source` (of `total_len` bytes) and prepares
    /// the decompressing reader.
    fn new<R: Read + Seek + Send + 'a>(
        mut source: R,
        total_len: u64,
        name: &str,
    ) -> Result<SnapshotReader<'a>, SnapshotError> {
        let corrupt = |reason: String| SnapshotError::Corrupt {
            file: name.to_string(),
            reason,
        };
        let read_context = || format!("read snapshot {name}");
        let mut head = Vec::with_capacity(HEADER_LEN);
        (&mut source)
            .take(HEADER_LEN as u64)
            .read_to_end(&mut head)
            .map_err(io_err(read_context()))?;
        let header = Header::decode(&head).map_err(corrupt)?;
        if total_len.checked_sub(HEADER_LEN as u64) != Some(header.body_len) {
            return Err(corrupt(format!(
                "{total_len} bytes long, the header says {} of body",
                header.body_len
            )));
        }
        let mut crc = 0u32;
        let mut body = (&mut source).take(header.body_len);
        let mut buf = vec![0u8; IO_BUFFER];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(read_context())(e)),
            };
            crc = crc32c::crc32c_append(crc, &buf[..n]);
        }
        if crc != header.body_crc {
            return Err(corrupt("body checksum mismatch".to_string()));
        }
        source
            .seek(SeekFrom::Start(HEADER_LEN as u64))
            .map_err(io_err(read_context()))?;
        let body = BufReader::with_capacity(
            IO_BUFFER,
            Tagged {
                inner: source.take(header.body_len),
            },
        );
        let inner: Box<dyn Read + Send + 'a> = match header.compression {
            Compression::None => Box::new(body),
            Compression::Gzip => Box::new(GzDecoder::new(body)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(body)
                    .map_err(io_err(format!("start decompressing snapshot {name}")))?,
            ),
        };
        Ok(SnapshotReader {
            inner,
            lsn: header.lsn,
            expected: header.uncompressed_len,
            stored: header.body_len,
            read: 0,
            name: name.to_string(),
        })
    }

    /// The log position the snapshot was taken at.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// Length of the snapshot bytes, as the (checksummed) header says.
    pub fn len(&self) -> u64 {
        self.expected
    }

    /// Whether the snapshot holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.expected == 0
    }

    /// Reads the whole snapshot into memory.
    ///
    /// # Errors
    /// [`SnapshotError::Corrupt`] if the body does not decompress to the header's length;
    /// [`SnapshotError::Io`] on read failures.
    pub fn collect(mut self) -> Result<Snapshot, SnapshotError> {
        let bound = PREALLOCATE_LIMIT.max(self.stored.saturating_mul(PREALLOCATE_RATIO));
        let mut data = Vec::with_capacity(self.expected.min(bound) as usize);
        match self.read_to_end(&mut data) {
            Ok(_) => Ok(Snapshot {
                lsn: self.lsn,
                data,
            }),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(SnapshotError::Corrupt {
                file: self.name.clone(),
                reason: e.to_string(),
            }),
            Err(e) => Err(io_err(format!("read snapshot {}", self.name))(e)),
        }
    }
}

/// An I/O error of the snapshot's source, marked so that it is not mistaken for a
/// decompression error.
#[derive(Debug)]
struct SourceError(io::Error);

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Marks the errors of the source reader with [`SourceError`].
struct Tagged<R> {
    inner: R,
}

impl<R: Read> Read for Tagged<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), SourceError(e)))
    }
}

impl Read for SnapshotReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.get_ref().is_some_and(|inner| inner.is::<SourceError>()) => {
                return Err(e);
            }
            // Whatever else the decompressor reports is about the data.
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("body does not decompress: {e}"),
                ));
            }
        };
        self.read += n as u64;
        if self.read > self.expected {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("body is longer than the {} bytes announced", self.expected),
            ));
        }
        if n == 0 && !buf.is_empty() && self.read != self.expected {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "body ends after {} of the {} bytes announced",
                    self.read, self.expected
                ),
            ));
        }
        Ok(n)
    }
}

/// Snapshot files in one directory; see the module documentation.
#[derive(Clone, Debug)]
pub struct SnapshotStore {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    compression: Compression,
}

impl SnapshotStore {
    /// Opens the store in `dir`, creating the directory if needed and removing temporary files
    /// left by an interrupted write.
    ///
    /// # Errors
    /// [`SnapshotError::Io`].
    pub fn open(dir: impl AsRef<Path>) -> Result<SnapshotStore, SnapshotError> {
        SnapshotStore::open_with(Arc::new(RealFs), dir)
    }

    /// [`SnapshotStore::open`] on the file system `fs` ([`vfs::RealFs`] is what `open` uses;
    /// [`vfs::SimFs`] simulates power failures in tests).
    ///
    /// # Errors
    /// [`SnapshotError::Io`].
    pub fn open_with(
        fs: Arc<dyn Fs>,
        dir: impl AsRef<Path>,
    ) -> Result<SnapshotStore, SnapshotError> {
        let dir = dir.as_ref().to_path_buf();
        vfs::create_dir_all_durable(&*fs, &dir).map_err(io_err(format!(
            "create snapshot directory {}",
            dir.display()
        )))?;
        let context = || format!("list snapshot directory {}", dir.display());
        let mut removed = false;
        for name in fs.read_dir(&dir).map_err(io_err(context()))? {
            let is_tmp = name
                .to_str()
                .is_some_and(|n| n.starts_with(NAME_PREFIX) && n.ends_with(TMP_SUFFIX));
            if is_tmp {
                let path = dir.join(&name);
                info!(file = %path.display(), "removing unfinished snapshot");
                fs.remove_file(&path)
                    .map_err(io_err(format!("remove {}", path.display())))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(&*fs, &dir)?;
        }
        Ok(SnapshotStore {
            fs,
            dir,
            compression: Compression::default(),
        })
    }

    /// Sets the compression of snapshots written from now on (default gzip).
    pub fn with_compression(mut self, compression: Compression) -> SnapshotStore {
        self.compression = compression;
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts writing the snapshot taken at `lsn`; write its bytes, then call
    /// [`SnapshotWriter::finish`]. A snapshot of the same LSN is replaced.
    ///
    /// # Errors
    /// [`SnapshotError::Io`].
    pub fn writer(&self, lsn: Lsn) -> Result<SnapshotWriter, SnapshotError> {
        let tmp = self.dir.join(format!("{}.tmp", snapshot_file_name(lsn)));
        let file = self
            .fs
            .create_truncate(&tmp)
            .map_err(io_err(format!("create snapshot {}", tmp.display())))?;
        file.write_all_at(&[0u8; HEADER_LEN], 0)
            .map_err(io_err(format!("write snapshot {}", tmp.display())))?;
        let body = FileWriter::new(file, HEADER_LEN as u64);
        Ok(SnapshotWriter {
            body: Some(BodyWriter::new(
                BufWriter::with_capacity(IO_BUFFER, body),
                self.compression,
            )),
            store: self.clone(),
            lsn,
            tmp,
        })
    }

    /// Writes the snapshot `data` taken at `lsn` (see [`SnapshotStore::writer`]).
    ///
    /// # Errors
    /// [`SnapshotError::Io`].
    pub fn write(&self, lsn: Lsn, data: &[u8]) -> Result<SnapshotInfo, SnapshotError> {
        let mut writer = self.writer(lsn)?;
        writer
            .write_all(data)
            .map_err(io_err(format!("write snapshot {}", writer.tmp.display())))?;
        writer.finish()
    }

    /// The LSNs of the snapshot files present, newest first (not validated).
    ///
    /// # Errors
    /// [`SnapshotError::Io`].
    pub fn list(&self) -> Result<Vec<Lsn>, SnapshotError> {
        let context = || format!("list snapshot directory {}", self.dir.display());
        let mut lsns = Vec::new();
        for name in self.fs.read_dir(&self.dir).map_err(io_err(context()))? {
            if let Some(lsn) = name.to_str().and_then(parse_snapshot_name) {
                lsns.push(lsn);
            }
        }
        lsns.sort_unstable_by(|a, b| b.cmp(a));
        Ok(lsns)
    }

    /// The position up to which the log may be released: the LSN of the older of the
    /// [`SNAPSHOTS_RETAINED`] snapshots kept, so that falling back on it still finds its log.
    /// `None` while fewer snapshots exist (then the log must be kept whole).
    ///
    /// # Errors
    /// [`SnapshotError::Io`].
    pub fn release_point(&self) -> Result<Option<Lsn>, SnapshotError> {
        let lsns = self.list()?;
        Ok(lsns.get(SNAPSHOTS_RETAINED - 1).copied())
    }

    /// Opens the newest snapshot that validates, for streaming. Damaged snapshots are skipped
    /// with a WARN. Decompression problems can still surface while reading (as
    /// [`io::ErrorKind::InvalidData`]), too late to fall back: use
    /// [`SnapshotStore::load_latest`] when the snapshot fits in memory.
    ///
    /// # Errors
    /// [`SnapshotError::Io`] when a file cannot be read at all.
    pub fn open_latest(&self) -> Result<Option<SnapshotReader<'static>>, SnapshotError> {
        for lsn in self.list()? {
            match self.open_snapshot(lsn) {
                Ok(reader) => return Ok(Some(reader)),
                Err(SnapshotError::Corrupt { file, reason }) => {
                    warn!(file = %file, reason = %reason, "skipping damaged snapshot");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Reads the newest snapshot that validates completely into memory. Damaged snapshots are
    /// skipped with a WARN and the one before is used. Memory: the snapshot size, once.
    ///
    /// # Errors
    /// [`SnapshotError::Io`] when a file cannot be read at all.
    pub fn load_latest(&self) -> Result<Option<Snapshot>, SnapshotError> {
        Ok(self
            .read_latest(SnapshotReader::collect, |e| match e {
                SnapshotError::Corrupt { reason, .. } => Some(reason.clone()),
                _ => None,
            })?
            .map(|(_, snapshot)| snapshot))
    }

    /// Reads the newest snapshot that validates with `read`, which consumes its stream (to
    /// decode it as it decompresses, for example), and gives its position and what `read`
    /// made of it. A snapshot whose header or checksum is wrong is skipped with a WARN before
    /// `read` sees it; one whose body turns out damaged while `read` consumes it (`damage`
    /// gives the reason for such an error of `read`, typically an [`io::ErrorKind::InvalidData`]
    /// of the stream) is skipped too, and the one before is read. Any other error of `read`
    /// ends the search and is returned.
    ///
    /// # Errors
    /// [`SnapshotError::Io`] when a file cannot be read at all; the errors of `read`.
    pub fn read_latest<T, E: From<SnapshotError>>(
        &self,
        mut read: impl FnMut(SnapshotReader<'static>) -> Result<T, E>,
        damage: impl Fn(&E) -> Option<String>,
    ) -> Result<Option<(Lsn, T)>, E> {
        for lsn in self.list()? {
            let reader = match self.open_snapshot(lsn) {
                Ok(reader) => reader,
                Err(SnapshotError::Corrupt { file, reason }) => {
                    warn!(file = %file, reason = %reason, "skipping damaged snapshot");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let file = reader.name.clone();
            match read(reader) {
                Ok(value) => return Ok(Some((lsn, value))),
                Err(e) => match damage(&e) {
                    Some(reason) => {
                        warn!(file = %file, reason = %reason, "skipping damaged snapshot");
                    }
                    None => return Err(e),
                },
            }
        }
        Ok(None)
    }

    fn open_snapshot(&self, lsn: Lsn) -> Result<SnapshotReader<'static>, SnapshotError> {
        let path = self.dir.join(snapshot_file_name(lsn));
        let name = path.display().to_string();
        let file = self
            .fs
            .open_read(&path)
            .map_err(io_err(format!("open snapshot {name}")))?;
        let len = file
            .size()
            .map_err(io_err(format!("stat snapshot {name}")))?;
        SnapshotReader::new(FileReader::new(file, 0), len, &name)
    }

    /// The file of the snapshot taken at `lsn` (which may not exist).
    pub fn path_of(&self, lsn: Lsn) -> PathBuf {
        self.dir.join(snapshot_file_name(lsn))
    }

    /// Adopts a snapshot file received from elsewhere (another broker): `received` must be a
    /// file in this store's directory, written through the same file system, whose name is not
    /// a snapshot's. It is validated (header, length, body checksum), fsynced, renamed to its
    /// snapshot name, and the directory is fsynced; older snapshots are then pruned.
    ///
    /// # Errors
    /// [`SnapshotError::Corrupt`] if it does not validate (it is left in place for the caller
    /// to delete); [`SnapshotError::Io`].
    pub fn import(&self, received: &Path) -> Result<SnapshotInfo, SnapshotError> {
        let name = received.display().to_string();
        let file = self
            .fs
            .open_read(received)
            .map_err(io_err(format!("open snapshot {name}")))?;
        let len = file
            .size()
            .map_err(io_err(format!("stat snapshot {name}")))?;
        let reader = SnapshotReader::new(FileReader::new(file, 0), len, &name)?;
        let (lsn, uncompressed_len) = (reader.lsn(), reader.len());
        drop(reader);
        let file = self
            .fs
            .open_write(received)
            .map_err(io_err(format!("open snapshot {name}")))?;
        file.sync_all()
            .map_err(io_err(format!("fsync snapshot {name}")))?;
        drop(file);
        let path = self.path_of(lsn);
        self.fs
            .rename(received, &path)
            .map_err(io_err(format!("rename {name} to {}", path.display())))?;
        sync_dir(&*self.fs, &self.dir)?;
        info!(file = %path.display(), lsn = lsn.0, "imported snapshot");
        if let Err(e) = self.prune() {
            warn!(error = %e, "could not delete old snapshots");
        }
        Ok(SnapshotInfo {
            lsn,
            path,
            uncompressed_len,
            file_len: len,
        })
    }

    /// Deletes all but the newest [`SNAPSHOTS_RETAINED`] snapshots.
    fn prune(&self) -> Result<(), SnapshotError> {
        let lsns = self.list()?;
        let old = lsns.get(SNAPSHOTS_RETAINED..).unwrap_or_default();
        if old.is_empty() {
            return Ok(());
        }
        for lsn in old {
            let path = self.dir.join(snapshot_file_name(*lsn));
            match self.fs.remove_file(&path) {
                Ok(()) => info!(file = %path.display(), "deleted old snapshot"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(format!("delete snapshot {}", path.display()))(e)),
            }
        }
        sync_dir(&*self.fs, &self.dir)
    }
}

/// Reads a snapshot file from anywhere (a backup taken with `majordodo backup`), validating
/// its header, length, body checksum and decompression. Changes nothing.
///
/// # Errors
/// [`SnapshotError::Corrupt`] when it does not validate; [`SnapshotError::Io`] when it cannot
/// be read.
pub fn read_snapshot_file(path: impl AsRef<Path>) -> Result<Snapshot, SnapshotError> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(io_err(format!("open snapshot {name}")))?;
    let len = file
        .metadata()
        .map_err(io_err(format!("stat snapshot {name}")))?
        .len();
    SnapshotReader::new(file, len, &name)?.collect()
}

/// What [`inspect_snapshots`] found about one snapshot file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotCheck {
    /// The log position in the file's name.
    pub lsn: Lsn,
    /// The file.
    pub path: PathBuf,
    /// Its length.
    pub file_len: u64,
    /// `Ok` when its header and body checksum validate (a broker could boot from it), else
    /// what is wrong.
    pub validity: Result<(), String>,
}

/// The snapshot files of `dir`, newest first, each checked (header, length, body checksum)
/// without changing anything: unlike [`SnapshotStore::open`], which creates the directory and
/// removes unfinished snapshots. A broker booting with this directory uses the newest one that
/// validates.
///
/// # Errors
/// [`SnapshotError::Io`] when the directory cannot be listed; a file that cannot be read is
/// reported in its [`SnapshotCheck::validity`].
pub fn inspect_snapshots(dir: impl AsRef<Path>) -> Result<Vec<SnapshotCheck>, SnapshotError> {
    let dir = dir.as_ref();
    let fs = RealFs;
    let mut lsns: Vec<Lsn> = fs
        .read_dir(dir)
        .map_err(io_err(format!("list snapshot directory {}", dir.display())))?
        .iter()
        .filter_map(|name| name.to_str().and_then(parse_snapshot_name))
        .collect();
    lsns.sort_unstable_by(|a, b| b.cmp(a));
    let mut out = Vec::with_capacity(lsns.len());
    for lsn in lsns {
        let path = dir.join(snapshot_file_name(lsn));
        let name = path.display().to_string();
        let checked = fs.open_read(&path).and_then(|file| {
            let len = file.size()?;
            Ok((file, len))
        });
        let (file_len, validity) = match checked {
            Err(e) => (0, Err(format!("cannot read it: {e}"))),
            Ok((file, len)) => {
                let validity = match SnapshotReader::new(FileReader::new(file, 0), len, &name) {
                    Ok(reader) if reader.lsn() == lsn => Ok(()),
                    Ok(reader) => Err(format!(
                        "its header names lsn {}, its file name lsn {lsn}",
                        reader.lsn()
                    )),
                    Err(SnapshotError::Corrupt { reason, .. }) => Err(reason),
                    Err(e) => Err(e.to_string()),
                };
                (len, validity)
            }
        };
        out.push(SnapshotCheck {
            lsn,
            path,
            file_len,
            validity,
        });
    }
    Ok(out)
}

fn snapshot_file_name(lsn: Lsn) -> String {
    format!(
        "{NAME_PREFIX}{:0width$}{NAME_SUFFIX}",
        lsn.0,
        width = NAME_DIGITS
    )
}

fn parse_snapshot_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_prefix(NAME_PREFIX)?.strip_suffix(NAME_SUFFIX)?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Lsn)
}

fn sync_dir(fs: &dyn Fs, dir: &Path) -> Result<(), SnapshotError> {
    fs.sync_dir(dir)
        .map_err(io_err(format!("fsync directory {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn inspection_reports_each_snapshot_and_changes_nothing() {
        // Goal: every snapshot file is listed newest first with whether it validates; an
        // unfinished `.tmp` file stays (SnapshotStore::open would remove it).
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        store.write(Lsn(7), b"older").unwrap();
        store.write(Lsn(9), b"newer").unwrap();
        let newest = store.path_of(Lsn(9));
        let mut bytes = std::fs::read(&newest).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&newest, bytes).unwrap();
        let tmp = dir.path().join("snapshot-00000000000000000011.snap.tmp");
        std::fs::write(&tmp, b"unfinished").unwrap();
        let found = inspect_snapshots(dir.path()).unwrap();
        let summary: Vec<(u64, bool)> = found
            .iter()
            .map(|c| (c.lsn.0, c.validity.is_ok()))
            .collect();
        assert_eq!(summary, vec![(9, false), (7, true)]);
        assert!(found[0].validity.as_ref().unwrap_err().contains("checksum"));
        assert!(tmp.exists());
    }

    fn compression() -> impl Strategy<Value = Compression> {
        prop_oneof![
            Just(Compression::None),
            Just(Compression::Gzip),
            Just(Compression::Zstd)
        ]
    }

    proptest! {
        // Goal: decoding arbitrary bytes as a snapshot never panics (and is not accepted
        // unless it is a real encoding).
        #[test]
        fn decode_of_arbitrary_bytes_does_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_snapshot(&bytes);
            let _ = Header::decode(&bytes);
        }

        // Goal: encode → decode round-trips for both compressions.
        #[test]
        fn snapshot_round_trips(
            lsn in any::<u64>(),
            data in proptest::collection::vec(any::<u8>(), 0..4096),
            compression in compression(),
        ) {
            let bytes = encode_snapshot(Lsn(lsn), &data, compression);
            let decoded = decode_snapshot(&bytes).expect("valid encoding decodes");
            prop_assert_eq!(decoded, Snapshot { lsn: Lsn(lsn), data });
        }

        // Goal: a flipped bit or a cut anywhere in an encoded snapshot is reported as corrupt.
        #[test]
        fn damaged_snapshot_is_rejected(
            data in proptest::collection::vec(any::<u8>(), 0..1024),
            compression in compression(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
            cut in any::<prop::sample::Index>(),
        ) {
            let bytes = encode_snapshot(Lsn(7), &data, compression);
            let mut flipped = bytes.clone();
            flipped[flip.index(bytes.len())] ^= 1 << bit;
            let flipped_result = decode_snapshot(&flipped);
            prop_assert!(matches!(flipped_result, Err(SnapshotError::Corrupt { .. })), "{:?}", flipped_result);
            let cut_result = decode_snapshot(&bytes[..cut.index(bytes.len())]);
            prop_assert!(matches!(cut_result, Err(SnapshotError::Corrupt { .. })), "{:?}", cut_result);
        }
    }

    // Goal: a header whose body checksum is right but whose compressed data is invalid or of
    // the wrong length is still reported as corrupt, not returned.
    #[test]
    fn body_that_does_not_decompress_to_the_announced_length_is_corrupt() {
        for compression in [Compression::Gzip, Compression::Zstd] {
            let mut bytes = encode_snapshot(Lsn(3), b"hello snapshot", Compression::None);
            // Rewrite the header to announce compression while the body is plain: checksums
            // stay valid.
            let mut header = Header::decode(&bytes).expect("valid header");
            header.compression = compression;
            bytes[..HEADER_LEN].copy_from_slice(&header.encode());
            let result = decode_snapshot(&bytes);
            assert!(
                matches!(result, Err(SnapshotError::Corrupt { .. })),
                "{compression:?}: {result:?}"
            );
            let mut bytes = encode_snapshot(Lsn(3), b"hello snapshot", compression);
            let mut header = Header::decode(&bytes).expect("valid header");
            header.uncompressed_len += 1;
            bytes[..HEADER_LEN].copy_from_slice(&header.encode());
            let result = decode_snapshot(&bytes);
            assert!(
                matches!(result, Err(SnapshotError::Corrupt { .. })),
                "{compression:?}: {result:?}"
            );
        }
    }

    // Goal: snapshot file names sort like LSNs and parse back.
    #[test]
    fn snapshot_names_round_trip() {
        let name = snapshot_file_name(Lsn(42));
        assert_eq!(name, "snapshot-00000000000000000042.snap");
        assert_eq!(parse_snapshot_name(&name), Some(Lsn(42)));
        assert_eq!(parse_snapshot_name("snapshot-42.snap"), None);
        assert_eq!(parse_snapshot_name(&format!("{name}.tmp")), None);
    }
}
