//! Code pools on the worker: fetching a pool's archive from the broker, checking it, unpacking it
//! safely and keeping it.
//!
//! Transport: the worker's own authenticated connection to the leader. The agent sends
//! `CodePoolRequest { pool, offset, max_len }` frames and the broker answers `CodePoolData` with
//! the archive's size and SHA-256 and the bytes asked for, part by part (each part within the
//! frame limit).
//!
//! Before every task that names a pool, the worker asks for the pool's size and checksum (a
//! request of zero bytes). The pool is kept unpacked in `<dir>/<sha256 hex>`: if that directory
//! exists, it is used as is; otherwise the archive is downloaded, its size and SHA-256 are
//! checked, and it is unpacked into a fresh temporary directory under `<dir>` with every rule of
//! [`majordodo_proto::archive`] checked again (paths inside, no links, entry and size limits),
//! then renamed into place in one step, so a half-unpacked pool is never used. Naming the
//! directory after the content means a pool deleted and created again with other bytes is never
//! confused with the old one.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use majordodo_proto::archive::{ArchiveLimits, EntryKind, stays_inside, walk};
use majordodo_proto::worker::{CodePoolData, CodePoolRequest};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

/// Default time a pool's download may take, all parts together.
pub const DEFAULT_CODEPOOL_DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// Most bytes asked for in one part (the broker may send fewer): a quarter of the default
/// frame limit keeps a part far below it and leaves room for other frames in between.
pub const CODEPOOL_PART_BYTES: u32 = 4 * 1024 * 1024;

/// Code-pool settings of a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodePoolsConfig {
    /// Where pools are unpacked; `None` refuses tasks that name a pool.
    pub dir: Option<PathBuf>,
    /// What an archive may hold (checked again here, whatever the broker checked).
    pub limits: ArchiveLimits,
    /// Time a pool's download may take.
    pub download_timeout: Duration,
}

impl Default for CodePoolsConfig {
    fn default() -> Self {
        CodePoolsConfig {
            dir: None,
            limits: ArchiveLimits::default(),
            download_timeout: DEFAULT_CODEPOOL_DOWNLOAD_TIMEOUT,
        }
    }
}

/// A request from an execution to the agent, which owns the connection.
pub(crate) struct Fetch {
    pub(crate) request: CodePoolRequest,
    pub(crate) reply: oneshot::Sender<CodePoolData>,
}

/// What executions use to get a pool's directory.
#[derive(Clone)]
pub(crate) struct PoolCache {
    config: CodePoolsConfig,
    fetches: mpsc::Sender<Fetch>,
}

impl PoolCache {
    pub(crate) fn new(config: CodePoolsConfig, fetches: mpsc::Sender<Fetch>) -> PoolCache {
        PoolCache { config, fetches }
    }

    /// The unpacked directory of pool `id`, downloading and unpacking it if needed.
    ///
    /// # Errors
    /// A message for the task's result: no pool directory configured, the broker does not know
    /// the pool, the download failed or timed out, the checksum differs, the archive breaks a
    /// rule.
    pub(crate) async fn get(&self, id: &str) -> Result<PathBuf, String> {
        let Some(dir) = self.config.dir.clone() else {
            return Err(format!(
                "refused: task needs code pool {id:?} but this worker has no codepools.dir"
            ));
        };
        tokio::time::timeout(
            self.config.download_timeout,
            self.fetch_and_unpack(&dir, id),
        )
        .await
        .map_err(|_| {
            format!(
                "code pool {id:?}: not downloaded within {} s",
                self.config.download_timeout.as_secs()
            )
        })?
    }

    async fn ask(&self, id: &str, offset: u64, max_len: u32) -> Result<CodePoolData, String> {
        let (reply, answer) = oneshot::channel();
        let request = CodePoolRequest {
            request_id: 0, // set by the agent
            pool_id: id.to_owned(),
            offset,
            max_len,
        };
        self.fetches
            .send(Fetch { request, reply })
            .await
            .map_err(|_| "the worker is stopping".to_owned())?;
        let data = answer
            .await
            .map_err(|_| format!("code pool {id:?}: connection to the broker lost"))?;
        if !data.error.is_empty() {
            return Err(format!("code pool {id:?}: {}", data.error));
        }
        Ok(data)
    }

    async fn fetch_and_unpack(&self, dir: &Path, id: &str) -> Result<PathBuf, String> {
        let head = self.ask(id, 0, 0).await?;
        let sha: [u8; 32] = head
            .sha256
            .as_slice()
            .try_into()
            .map_err(|_| format!("code pool {id:?}: the broker sent no checksum"))?;
        let name: String = sha.iter().map(|b| format!("{b:02x}")).collect();
        let target = dir.join(&name);
        if target.is_dir() {
            return Ok(target);
        }
        let size = head.size;
        // An archive is never much larger than its content; a megabyte covers the headers.
        let cap = self
            .config
            .limits
            .max_unpacked_bytes
            .saturating_add(1 << 20);
        if size > cap {
            return Err(format!(
                "code pool {id:?}: archive of {size} bytes is over this worker's limit of {cap}"
            ));
        }
        let mut archive = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        while (archive.len() as u64) < size {
            let part = self
                .ask(id, archive.len() as u64, CODEPOOL_PART_BYTES)
                .await?;
            if part.offset != archive.len() as u64
                || part.data.is_empty()
                || part.sha256 != head.sha256
            {
                return Err(format!(
                    "code pool {id:?} changed or answered out of order while downloading"
                ));
            }
            archive.extend_from_slice(&part.data);
            if archive.len() as u64 > size {
                return Err(format!("code pool {id:?}: more bytes than its size"));
            }
        }
        let got: [u8; 32] = Sha256::digest(&archive).into();
        if got != sha {
            return Err(format!("code pool {id:?}: checksum mismatch"));
        }
        let limits = self.config.limits;
        let dir = dir.to_owned();
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || unpack(&archive, &dir, &name, limits))
            .await
            .map_err(|_| format!("code pool {id:?}: unpacking panicked"))?
            .map_err(|e| format!("code pool {id:?}: {e}"))
    }
}

/// Unpacks `archive` into `<dir>/<name>` atomically: into a temporary directory first, renamed
/// once complete. A concurrent unpack of the same pool that finished first wins; this one's
/// copy is removed.
///
/// # Errors
/// The archive's first broken rule, or the file system's error.
pub fn unpack(
    archive: &[u8],
    dir: &Path,
    name: &str,
    limits: ArchiveLimits,
) -> Result<PathBuf, String> {
    fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let target = dir.join(name);
    let tmp =
        tempdir_in(dir).map_err(|e| format!("create a directory in {}: {e}", dir.display()))?;
    let result = walk(archive, limits, |entry, content| {
        // `walk` checked the path; never write outside the temporary directory regardless.
        if !stays_inside(&entry.path) {
            return Err(io::Error::other("path leaves the pool"));
        }
        let path = tmp.join(&entry.path);
        match entry.kind {
            EntryKind::Dir => fs::create_dir_all(&path),
            EntryKind::File { executable } => {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent)?;
                }
                // `create_new` never follows or replaces anything already there.
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                io::copy(&mut content.take(u64::MAX), &mut file)?;
                file.flush()?;
                let mode = if executable { 0o755 } else { 0o644 };
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            }
        }
    });
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e.to_string());
    }
    match fs::rename(&tmp, &target) {
        Ok(()) => Ok(target),
        Err(_) if target.is_dir() => {
            let _ = fs::remove_dir_all(&tmp);
            Ok(target)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(format!("rename into {}: {e}", target.display()))
        }
    }
}

/// A new, empty directory `<dir>/.unpack-<random>`.
fn tempdir_in(dir: &Path) -> io::Result<PathBuf> {
    for _ in 0..16 {
        let path = dir.join(format!(".unpack-{:016x}", rand::random::<u64>()));
        match fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free temporary name"))
}
