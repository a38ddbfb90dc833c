//! Code-pool archives: zip or tar.gz, read entry by entry with every safety rule checked.
//!
//! The broker calls [`validate`] when a pool is created and the worker calls [`walk`] again
//! when it unpacks one, so a pool that passes one passes the other, and a worker never trusts
//! the broker's check alone. The rules:
//!
//! - every path is relative and stays inside the pool: no leading `/`, no drive prefix, no `..`
//!   component, no backslash, no NUL, valid UTF-8;
//! - only plain files and directories: symbolic links, hard links, devices and FIFOs are
//!   refused, whether they point inside the pool or out of it;
//! - no path twice, and no path below a file;
//! - at most [`ArchiveLimits::max_files`] entries and [`ArchiveLimits::max_unpacked_bytes`]
//!   bytes once unpacked, counted on the bytes actually decompressed (a size field that lies does
//!   not help a zip bomb).
//!
//! Nothing here touches the file system: entries are handed to a visitor with a reader of their
//! content.

use std::collections::HashSet;
use std::io::{self, Cursor, Read};
use std::path::{Component, Path, PathBuf};

/// Default most entries in a pool: far more than a bundle of executables and libraries needs,
/// few enough that unpacking one stays quick.
pub const DEFAULT_MAX_FILES: usize = 10_000;

/// Default most bytes of a pool once unpacked (256 MiB): room for a runtime and its libraries,
/// and a bound on what a compressed archive may expand to on the workers' disks.
pub const DEFAULT_MAX_UNPACKED_BYTES: u64 = 256 * 1024 * 1024;

/// What an archive may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Most entries (files and directories).
    pub max_files: usize,
    /// Most bytes of file content once decompressed.
    pub max_unpacked_bytes: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        ArchiveLimits {
            max_files: DEFAULT_MAX_FILES,
            max_unpacked_bytes: DEFAULT_MAX_UNPACKED_BYTES,
        }
    }
}

/// The two archive formats a pool may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// A zip file (stored or deflated entries).
    Zip,
    /// A gzip-compressed tar file.
    TarGz,
}

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A plain file; `executable` when its mode has an execute bit.
    File {
        /// Whether to make it executable.
        executable: bool,
    },
}

/// One entry, its path checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveEntry {
    /// Relative path inside the pool, made of normal components only.
    pub path: PathBuf,
    /// File or directory.
    pub kind: EntryKind,
}

/// What a valid archive holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArchiveSummary {
    /// Entries (files and directories).
    pub entries: usize,
    /// Bytes of file content.
    pub bytes: u64,
}

/// Why bytes are not an acceptable pool archive. None is retryable: fix the archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Neither zip nor gzip.
    #[error("is not a zip or tar.gz archive")]
    UnknownFormat,
    /// The archive is damaged or uses a feature this reader does not support.
    #[error("is not a valid {format} archive: {reason}")]
    Malformed {
        /// `zip` or `tar.gz`.
        format: &'static str,
        /// The reader's complaint.
        reason: String,
    },
    /// An entry's path would land outside the pool, or is not a plain relative path.
    #[error("entry {path:?} is refused: {reason}")]
    UnsafePath {
        /// The path as the archive spells it.
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// An entry is a link, a device or a FIFO.
    #[error("entry {path:?} is a {kind}: only plain files and directories are allowed")]
    NotPlain {
        /// The path as the archive spells it.
        path: String,
        /// What it is.
        kind: &'static str,
    },
    /// More entries than allowed.
    #[error("holds more than {max} entries")]
    TooManyFiles {
        /// The limit.
        max: usize,
    },
    /// More content than allowed once decompressed.
    #[error("unpacks to more than {max} bytes")]
    TooLarge {
        /// The limit.
        max: u64,
    },
    /// The visitor failed (writing the entry out).
    #[error("entry {path:?}: {source}")]
    Visit {
        /// The entry.
        path: String,
        /// What failed.
        #[source]
        source: io::Error,
    },
}

/// The format of `bytes`, from its magic number.
pub fn detect(bytes: &[u8]) -> Option<ArchiveFormat> {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        Some(ArchiveFormat::Zip)
    } else if bytes.starts_with(&[0x1f, 0x8b]) {
        Some(ArchiveFormat::TarGz)
    } else {
        None
    }
}

/// Checks `bytes` against every rule, reading (and discarding) all content.
///
/// # Errors
/// [`ArchiveError`] naming the first rule broken.
pub fn validate(bytes: &[u8], limits: ArchiveLimits) -> Result<ArchiveSummary, ArchiveError> {
    walk(bytes, limits, |_, content| {
        io::copy(content, &mut io::sink()).map(|_| ())
    })
}

/// A path of an archive entry, checked: relative, inside the pool, normal components only.
/// `None` for the pool's root itself (`./`).
///
/// # Errors
/// [`ArchiveError::UnsafePath`] naming the problem.
pub fn safe_path(raw: &str) -> Result<Option<PathBuf>, ArchiveError> {
    let refuse = |reason| {
        Err(ArchiveError::UnsafePath {
            path: raw.to_owned(),
            reason,
        })
    };
    if raw.contains('\0') {
        return refuse("NUL in path");
    }
    if raw.contains('\\') {
        return refuse("backslash in path");
    }
    if raw.starts_with('/') {
        return refuse("absolute path");
    }
    let first = raw.split('/').next().unwrap_or("");
    if first.len() >= 2 && first.as_bytes()[1] == b':' {
        return refuse("drive prefix");
    }
    let mut out = PathBuf::new();
    for part in raw.split('/') {
        match part {
            "" | "." => continue,
            ".." => return refuse("`..` component"),
            _ => out.push(part),
        }
    }
    // Belt and braces: what we built is made of normal components only.
    if out.components().any(|c| !matches!(c, Component::Normal(_))) {
        return refuse("not a plain relative path");
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Counts the entries and paths seen, and the content bytes read, against the limits.
struct Tally {
    limits: ArchiveLimits,
    entries: usize,
    bytes: u64,
    files: HashSet<PathBuf>,
    dirs: HashSet<PathBuf>,
}

impl Tally {
    fn new(limits: ArchiveLimits) -> Tally {
        Tally {
            limits,
            entries: 0,
            bytes: 0,
            files: HashSet::new(),
            dirs: HashSet::new(),
        }
    }

    /// Admits one entry: count, no duplicate, nothing below a file.
    fn admit(&mut self, raw: &str, entry: &ArchiveEntry) -> Result<(), ArchiveError> {
        self.entries += 1;
        if self.entries > self.limits.max_files {
            return Err(ArchiveError::TooManyFiles {
                max: self.limits.max_files,
            });
        }
        let unsafe_path = |reason| ArchiveError::UnsafePath {
            path: raw.to_owned(),
            reason,
        };
        if entry
            .path
            .ancestors()
            .skip(1)
            .any(|a| self.files.contains(a))
        {
            return Err(unsafe_path("below a file of the archive"));
        }
        let fresh = match entry.kind {
            EntryKind::Dir => {
                // A directory may be listed again (or implied by a file before it).
                if self.files.contains(&entry.path) {
                    return Err(unsafe_path("listed twice"));
                }
                self.dirs.insert(entry.path.clone());
                true
            }
            EntryKind::File { .. } => {
                !self.dirs.contains(&entry.path) && self.files.insert(entry.path.clone())
            }
        };
        if !fresh {
            return Err(unsafe_path("listed twice"));
        }
        for a in entry.path.ancestors().skip(1) {
            if !a.as_os_str().is_empty() {
                self.dirs.insert(a.to_path_buf());
            }
        }
        Ok(())
    }
}

/// A reader that counts what it yields into the tally and fails past the byte limit.
struct Counted<'a, R> {
    inner: R,
    tally: &'a mut Tally,
    over: bool,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.tally.bytes += n as u64;
        if self.tally.bytes > self.tally.limits.max_unpacked_bytes {
            self.over = true;
            return Err(io::Error::other("unpacked size limit exceeded"));
        }
        Ok(n)
    }
}

/// Runs `visit` on every entry with a reader of its content, in archive order, after checking
/// the entry's path and kind; the content's size is checked while it is read. Whatever `visit`
/// leaves unread is read to the end (and counted) before the next entry.
///
/// # Errors
/// [`ArchiveError`]: the first broken rule, or the visitor's failure.
pub fn walk(
    bytes: &[u8],
    limits: ArchiveLimits,
    mut visit: impl FnMut(&ArchiveEntry, &mut dyn Read) -> io::Result<()>,
) -> Result<ArchiveSummary, ArchiveError> {
    let mut tally = Tally::new(limits);
    match detect(bytes).ok_or(ArchiveError::UnknownFormat)? {
        ArchiveFormat::Zip => walk_zip(bytes, &mut tally, &mut visit)?,
        ArchiveFormat::TarGz => walk_tar_gz(bytes, &mut tally, &mut visit)?,
    }
    Ok(ArchiveSummary {
        entries: tally.entries,
        bytes: tally.bytes,
    })
}

fn run_entry(
    tally: &mut Tally,
    raw: &str,
    entry: &ArchiveEntry,
    content: &mut dyn Read,
    visit: &mut dyn FnMut(&ArchiveEntry, &mut dyn Read) -> io::Result<()>,
) -> Result<(), ArchiveError> {
    tally.admit(raw, entry)?;
    let mut counted = Counted {
        inner: content,
        tally,
        over: false,
    };
    let result = visit(entry, &mut counted)
        .and_then(|()| io::copy(&mut counted, &mut io::sink()).map(|_| ()));
    if counted.over {
        return Err(ArchiveError::TooLarge {
            max: counted.tally.limits.max_unpacked_bytes,
        });
    }
    result.map_err(|source| ArchiveError::Visit {
        path: raw.to_owned(),
        source,
    })
}

fn walk_zip(
    bytes: &[u8],
    tally: &mut Tally,
    visit: &mut dyn FnMut(&ArchiveEntry, &mut dyn Read) -> io::Result<()>,
) -> Result<(), ArchiveError> {
    let malformed = |e: zip::result::ZipError| ArchiveError::Malformed {
        format: "zip",
        reason: e.to_string(),
    };
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(malformed)?;
    if zip.len() > tally.limits.max_files {
        return Err(ArchiveError::TooManyFiles {
            max: tally.limits.max_files,
        });
    }
    for i in 0..zip.len() {
        let mut file = zip.by_index(i).map_err(malformed)?;
        let raw = std::str::from_utf8(file.name_raw())
            .map_err(|_| ArchiveError::UnsafePath {
                path: String::from_utf8_lossy(file.name_raw()).into_owned(),
                reason: "not UTF-8",
            })?
            .to_owned();
        let mode = file.unix_mode().unwrap_or(0);
        let kind = match mode & 0o170_000 {
            0o120_000 => "symbolic link",
            0o020_000 | 0o060_000 => "device",
            0o010_000 => "fifo",
            0o140_000 => "socket",
            _ => "",
        };
        if !kind.is_empty() {
            return Err(ArchiveError::NotPlain { path: raw, kind });
        }
        let Some(path) = safe_path(&raw)? else {
            continue;
        };
        let entry = ArchiveEntry {
            path,
            kind: if file.is_dir() {
                EntryKind::Dir
            } else {
                EntryKind::File {
                    executable: mode & 0o111 != 0,
                }
            },
        };
        run_entry(tally, &raw, &entry, &mut file, visit)?;
    }
    Ok(())
}

fn walk_tar_gz(
    bytes: &[u8],
    tally: &mut Tally,
    visit: &mut dyn FnMut(&ArchiveEntry, &mut dyn Read) -> io::Result<()>,
) -> Result<(), ArchiveError> {
    let malformed = |e: io::Error| ArchiveError::Malformed {
        format: "tar.gz",
        reason: e.to_string(),
    };
    // Decompression is counted too: the tar stream cannot be larger than the content limit plus
    // its headers, so a gzip bomb of padding stops here.
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    for entry in archive.entries().map_err(malformed)? {
        let mut entry = entry.map_err(malformed)?;
        let raw = std::str::from_utf8(&entry.path_bytes())
            .map_err(|_| ArchiveError::UnsafePath {
                path: String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
                reason: "not UTF-8",
            })?
            .to_owned();
        let header = entry.header();
        let kind = header.entry_type();
        let plain = match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File {
                executable: header.mode().unwrap_or(0) & 0o111 != 0,
            },
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => {
                return Err(ArchiveError::NotPlain {
                    path: raw,
                    kind: "symbolic link",
                });
            }
            tar::EntryType::Link => {
                return Err(ArchiveError::NotPlain {
                    path: raw,
                    kind: "hard link",
                });
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(ArchiveError::NotPlain {
                    path: raw,
                    kind: "device",
                });
            }
            tar::EntryType::Fifo => {
                return Err(ArchiveError::NotPlain {
                    path: raw,
                    kind: "fifo",
                });
            }
            // Metadata records of other tar dialects (global headers, volume labels): no
            // content lands on disk.
            _ => continue,
        };
        let Some(path) = safe_path(&raw)? else {
            continue;
        };
        let entry_info = ArchiveEntry { path, kind: plain };
        run_entry(tally, &raw, &entry_info, &mut entry, visit)?;
    }
    Ok(())
}

/// Whether `path` stays inside the directory it is joined to (used by unpackers as a last
/// check): relative and made of normal components only.
pub fn stays_inside(path: &Path) -> bool {
    path.is_relative() && path.components().all(|c| matches!(c, Component::Normal(_)))
}

#[cfg(test)]
mod tests;
