//! The file-system operations of [`FileLog`](crate::FileLog) and
//! [`SnapshotStore`](crate::SnapshotStore), behind a small trait, so that tests can run them on a
//! disk that loses power.
//!
//! - [`Fs`], [`FsFile`], [`FsLock`]: every operation the log and the snapshot store use (open,
//!   create, positional read and write, `set_len`, `sync_data`, `sync_all`, rename, remove, list,
//!   create a directory, fsync a directory, lock).
//! - [`RealFs`]: `std::fs`, what [`FileLog::open`](crate::FileLog::open) and
//!   [`SnapshotStore::open`](crate::SnapshotStore::open) use.
//! - [`SimFs`]: **a testing tool, not a storage backend**: an in-memory file system that keeps,
//!   next to what a process sees, what a disk would still hold after a power failure, and can
//!   produce that image (see its documentation for the model). Power-loss tests run the log on
//!   it, cut the power at a chosen operation and reopen what survived.
//!
//! The log calls one trait method per write and per fsync, so the indirection costs a virtual
//! call on the hot path and nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

/// Permissions of files we create: records hold task parameters and results, which are the
/// users' data, so only the broker's own user may read them.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Permissions of directories we create, for the same reason.
pub(crate) const DIR_MODE: u32 = 0o700;

/// A file system: the operations the log and the snapshot store perform on directories.
///
/// Errors are plain [`io::Error`]s with the kinds `std::fs` uses (`NotFound`, `AlreadyExists`,
/// `WouldBlock` for a lock held elsewhere); callers add the context.
pub trait Fs: fmt::Debug + Send + Sync + 'static {
    /// Opens an existing file for reading.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Opens an existing file for reading and writing.
    fn open_write(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Creates a file that must not exist yet (`AlreadyExists` otherwise), for reading and
    /// writing, readable by the owner only.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Creates a file, or empties an existing one, for reading and writing, readable by the owner
    /// only.
    fn create_truncate(&self, path: &Path) -> io::Result<Box<dyn FsFile>>;
    /// Renames `from` to `to` in one step, replacing `to` if it exists. Both are in the same
    /// directory.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// The names of the entries of a directory, in no particular order.
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<OsString>>;
    /// Creates one directory, readable by the owner only; its parent must exist
    /// (`NotFound` otherwise, `AlreadyExists` if the path exists).
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Makes the entries of a directory (files created, renamed or removed in it) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on the file `path`, creating it if needed; fails with
    /// `WouldBlock` while another holder has it. Dropping the returned guard releases it.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn FsLock>>;
}

/// An open file of an [`Fs`]. All reads and writes are positional: the log writes at the end it
/// keeps track of, so no cursor is shared.
pub trait FsFile: fmt::Debug + Send + Sync {
    /// The current length of the file in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Reads at `offset` into `buf`; returns the bytes read (0 at the end of the file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, extending the file if needed.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Cuts or extends (with zeros) the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the data and the length of the file durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the data, the length and the metadata of the file durable (`fsync`).
    fn sync_all(&self) -> io::Result<()>;

    /// Reads exactly `buf.len()` bytes at `offset`; `UnexpectedEof` if the file ends first.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A lock taken with [`Fs::lock`]; released when dropped.
pub trait FsLock: fmt::Debug + Send + Sync {}

/// Creates `dir` and its missing parents, and makes each creation durable by fsyncing the
/// parent directory of every component it created (a directory that exists is left alone).
pub(crate) fn create_dir_all_durable(fs: &dyn Fs, dir: &Path) -> io::Result<()> {
    match fs.create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) else {
                return Err(e);
            };
            create_dir_all_durable(fs, parent)?;
            match fs.create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    }
    fs.sync_dir(parent_of(dir))
}

/// The directory holding `path` (`.` for a bare name).
pub(crate) fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Reads an [`FsFile`] from a position, as a [`io::Read`] (and [`io::Seek`]).
#[derive(Debug)]
pub(crate) struct FileReader {
    file: Box<dyn FsFile>,
    pos: u64,
}

impl FileReader {
    pub(crate) fn new(file: Box<dyn FsFile>, pos: u64) -> FileReader {
        FileReader { file, pos }
    }
}

impl io::Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl io::Seek for FileReader {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let base = match to {
            io::SeekFrom::Start(at) => {
                self.pos = at;
                return Ok(at);
            }
            io::SeekFrom::End(delta) => (self.file.size()?, delta),
            io::SeekFrom::Current(delta) => (self.pos, delta),
        };
        self.pos = base
            .0
            .checked_add_signed(base.1)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek out of range"))?;
        Ok(self.pos)
    }
}

/// Writes an [`FsFile`] sequentially from a position, as a [`io::Write`].
#[derive(Debug)]
pub(crate) struct FileWriter {
    file: Box<dyn FsFile>,
    pos: u64,
}

impl FileWriter {
    pub(crate) fn new(file: Box<dyn FsFile>, pos: u64) -> FileWriter {
        FileWriter { file, pos }
    }

    pub(crate) fn into_file(self) -> Box<dyn FsFile> {
        self.file
    }
}

impl io::Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write_all_at(buf, self.pos)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// RealFs

/// The operating system's file system, through `std::fs`.
#[derive(Copy, Clone, Debug, Default)]
pub struct RealFs;

#[derive(Debug)]
struct RealFile(File);

#[derive(Debug)]
struct RealLock {
    /// Held for its lock, released when closed.
    _file: File,
}

impl FsLock for RealLock {}

impl FsFile for RealFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(&self.0, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.0, buf, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }
}

impl Fs for RealFs {
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        Ok(Box::new(RealFile(File::open(path)?)))
    }

    fn open_write(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Box::new(RealFile(file)))
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(path)?;
        Ok(Box::new(RealFile(file)))
    }

    fn create_truncate(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(path)?;
        Ok(Box::new(RealFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        fs::read_dir(dir)?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect()
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fs::DirBuilder::new().mode(DIR_MODE).create(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn FsLock>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(RealLock { _file: file })),
            Err(fs::TryLockError::WouldBlock) => Err(io::Error::from(io::ErrorKind::WouldBlock)),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SimFs

/// Sector size of the simulated disk: the smallest unit a disk writes whole. Real disks write
/// 512 or 4096 bytes at a time; 512 is the finer (harsher) of the two.
pub const SIM_SECTOR_SIZE: usize = 512;
/// Error message of every operation once the simulated power is off.
const POWER_LOST: &str = "simulated power loss";
/// Id of the root directory.
const ROOT: u64 = 0;

/// **Testing tool.** An in-memory file system that models what survives a power failure.
///
/// # The model
/// - Each file has a *current* image (what reads return) and a *durable* one (what a disk
///   holds). `sync_data` and `sync_all` make the file's data and size durable.
/// - Directory entries (a file created, renamed or removed, a directory created) change the
///   current view at once but stay pending until that directory is fsynced ([`Fs::sync_dir`]).
/// - [`SimFs::crash`] cuts the power: each pending entry operation of each directory survives
///   or not, independently of the others (a rename is atomic: the file is under its old name or
///   its new one); each file keeps either its durable size or its current one; every
///   [`SIM_SECTOR_SIZE`]-byte sector that differs from the durable image keeps either its new
///   content or its old one, independently (old content past the old durable size reads as
///   zeros). What a file no surviving entry names is gone. The result is a new `SimFs`, as a
///   rebooted machine would see the disk; [`SimFs::crash_durable_only`] is the outcome where
///   nothing pending survived.
/// - A crash point: [`SimFs::power_off_after`]`(k)` lets `k` more operations succeed; every
///   later one fails with an I/O error, so nothing after that point can be acknowledged.
/// - Every random choice comes from the seed given to [`SimFs::new`]: one seed, one outcome.
///
/// Every trait method call, and every call on an open file, counts as one operation (releasing
/// a lock does not). Only absolute or relative paths of plain names are supported (no `..`).
/// Clones share the same file system.
#[derive(Clone)]
pub struct SimFs {
    inner: Arc<SimShared>,
}

struct SimShared {
    state: Mutex<SimState>,
    /// Wakes operations waiting while the file system is paused.
    resumed: Condvar,
}

#[derive(Clone)]
struct SimState {
    seed: u64,
    /// Draws the fate of pending changes at a crash.
    rng: StdRng,
    /// Operations performed.
    ops: u64,
    /// Operations after which the power goes off.
    power_off_at: Option<u64>,
    powered_off: bool,
    paused: bool,
    /// Operations waiting for [`SimFs::resume`].
    waiting: usize,
    next_id: u64,
    files: BTreeMap<u64, SimFile>,
    dirs: BTreeMap<u64, SimDir>,
    locked: BTreeSet<u64>,
}

#[derive(Clone, Default)]
struct SimFile {
    durable: Vec<u8>,
    current: Vec<u8>,
}

/// One entry change of a directory: names set to an entry or removed. A rename is one change
/// of two names, so it survives a crash whole or not at all.
type DirChange = Vec<(OsString, Option<Entry>)>;

#[derive(Clone, Default)]
struct SimDir {
    durable: BTreeMap<OsString, Entry>,
    current: BTreeMap<OsString, Entry>,
    /// Changes since the last fsync of the directory, in order.
    pending: Vec<DirChange>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Entry {
    File(u64),
    Dir(u64),
}

impl fmt::Debug for SimFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("SimFs")
            .field("seed", &state.seed)
            .field("ops", &state.ops)
            .field("powered_off", &state.powered_off)
            .finish_non_exhaustive()
    }
}

fn unsupported(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, format!("SimFs: {what}"))
}

fn not_found() -> io::Error {
    io::Error::from(io::ErrorKind::NotFound)
}

/// The plain names of `path`.
fn names(path: &Path) -> io::Result<Vec<&OsStr>> {
    let mut out = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => out.push(name),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(unsupported("paths with .. or a prefix"));
            }
        }
    }
    Ok(out)
}

impl SimState {
    fn fresh(seed: u64) -> SimState {
        let mut dirs = BTreeMap::new();
        dirs.insert(ROOT, SimDir::default());
        SimState {
            seed,
            rng: StdRng::seed_from_u64(seed),
            ops: 0,
            power_off_at: None,
            powered_off: false,
            paused: false,
            waiting: 0,
            next_id: ROOT + 1,
            files: BTreeMap::new(),
            dirs,
            locked: BTreeSet::new(),
        }
    }

    fn dir(&self, id: u64) -> &SimDir {
        self.dirs
            .get(&id)
            .expect("entries name existing directories")
    }

    fn lookup(&self, path: &Path) -> io::Result<Entry> {
        let mut at = Entry::Dir(ROOT);
        for name in names(path)? {
            let Entry::Dir(dir) = at else {
                return Err(io::Error::from(io::ErrorKind::NotADirectory));
            };
            at = *self.dir(dir).current.get(name).ok_or_else(not_found)?;
        }
        Ok(at)
    }

    /// The directory holding `path` and the last name of `path`.
    fn parent(&self, path: &Path) -> io::Result<(u64, OsString)> {
        let all = names(path)?;
        let (last, init) = all
            .split_last()
            .ok_or_else(|| unsupported("an operation on the root"))?;
        let parent: PathBuf = init.iter().collect();
        match self.lookup(&parent)? {
            Entry::Dir(dir) => Ok((dir, last.to_os_string())),
            Entry::File(_) => Err(io::Error::from(io::ErrorKind::NotADirectory)),
        }
    }

    fn file_id(&self, path: &Path) -> io::Result<u64> {
        match self.lookup(path)? {
            Entry::File(id) => Ok(id),
            Entry::Dir(_) => Err(io::Error::from(io::ErrorKind::IsADirectory)),
        }
    }

    fn change(&mut self, dir: u64, change: DirChange) {
        let dir = self
            .dirs
            .get_mut(&dir)
            .expect("entries name existing directories");
        for (name, entry) in &change {
            match entry {
                Some(entry) => dir.current.insert(name.clone(), *entry),
                None => dir.current.remove(name),
            };
        }
        dir.pending.push(change);
    }

    fn new_file(&mut self, dir: u64, name: OsString) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.files.insert(id, SimFile::default());
        self.change(dir, vec![(name, Some(Entry::File(id)))]);
        id
    }

    fn file(&mut self, id: u64) -> &mut SimFile {
        self.files.get_mut(&id).expect("open files keep their data")
    }

    /// What the disk holds after a power failure; `keep_pending` says whether pending changes
    /// are drawn at random (true) or all lost.
    fn image(&mut self, keep_pending: bool) -> SimState {
        let mut entries: BTreeMap<u64, BTreeMap<OsString, Entry>> = BTreeMap::new();
        for (id, dir) in &self.dirs {
            let mut names = dir.durable.clone();
            for change in &dir.pending {
                if keep_pending && self.rng.random_bool(0.5) {
                    for (name, entry) in change {
                        match entry {
                            Some(entry) => names.insert(name.clone(), *entry),
                            None => names.remove(name),
                        };
                    }
                }
            }
            entries.insert(*id, names);
        }
        // What the surviving entries reach from the root.
        let mut reached_dirs = BTreeSet::from([ROOT]);
        let mut reached_files = BTreeSet::new();
        let mut todo = vec![ROOT];
        while let Some(dir) = todo.pop() {
            for entry in entries[&dir].values() {
                match *entry {
                    Entry::Dir(id) if reached_dirs.insert(id) => todo.push(id),
                    Entry::Dir(_) => {}
                    Entry::File(id) => {
                        reached_files.insert(id);
                    }
                }
            }
        }
        let mut image = SimState::fresh(self.rng.next_u64());
        image.seed = self.seed;
        image.next_id = self.next_id;
        image.dirs = entries
            .into_iter()
            .filter(|(id, _)| reached_dirs.contains(id))
            .map(|(id, names)| {
                let dir = SimDir {
                    durable: names.clone(),
                    current: names,
                    pending: Vec::new(),
                };
                (id, dir)
            })
            .collect();
        for (id, file) in &self.files {
            if !reached_files.contains(id) {
                continue;
            }
            let data = if keep_pending {
                torn(&file.durable, &file.current, &mut self.rng)
            } else {
                file.durable.clone()
            };
            let file = SimFile {
                durable: data.clone(),
                current: data,
            };
            image.files.insert(*id, file);
        }
        image
    }
}

/// A file after a power failure: the durable or the current size, and each sector that differs
/// old or new (old bytes past the durable size are zeros).
fn torn(durable: &[u8], current: &[u8], rng: &mut StdRng) -> Vec<u8> {
    if durable == current {
        return durable.to_vec();
    }
    let len = if durable.len() == current.len() || rng.random_bool(0.5) {
        current.len()
    } else {
        durable.len()
    };
    let byte = |image: &[u8], at: usize| image.get(at).copied().unwrap_or(0);
    let mut out = vec![0u8; len];
    for start in (0..len).step_by(SIM_SECTOR_SIZE) {
        let end = (start + SIM_SECTOR_SIZE).min(len);
        let differs = (start..end).any(|at| byte(durable, at) != byte(current, at));
        let source = if differs && rng.random_bool(0.5) {
            durable
        } else {
            current
        };
        for (at, slot) in out[start..end].iter_mut().enumerate() {
            *slot = byte(source, start + at);
        }
    }
    out
}

impl SimFs {
    /// An empty file system (just a root directory) whose random choices come from `seed`.
    pub fn new(seed: u64) -> SimFs {
        SimFs::from_state(SimState::fresh(seed))
    }

    fn from_state(state: SimState) -> SimFs {
        SimFs {
            inner: Arc::new(SimShared {
                state: Mutex::new(state),
                resumed: Condvar::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, SimState> {
        // Every critical section leaves the state consistent, so a poisoned lock is usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts one operation: waits while paused, fails once the power is off, counts it.
    fn begin(&self) -> io::Result<MutexGuard<'_, SimState>> {
        let mut state = self.state();
        while state.paused {
            state.waiting += 1;
            state = self
                .inner
                .resumed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            state.waiting -= 1;
        }
        if state.powered_off || state.power_off_at.is_some_and(|at| state.ops >= at) {
            state.powered_off = true;
            return Err(io::Error::other(POWER_LOST));
        }
        state.ops += 1;
        Ok(state)
    }

    /// The seed of the random choices.
    pub fn seed(&self) -> u64 {
        self.state().seed
    }

    /// Operations performed so far (those that failed because the power was off excluded).
    pub fn operations(&self) -> u64 {
        self.state().ops
    }

    /// Sets the crash point: the next `ops` operations succeed, every later one fails with an
    /// I/O error as if the power had gone off.
    pub fn power_off_after(&self, ops: u64) {
        let mut state = self.state();
        state.power_off_at = Some(state.ops.saturating_add(ops));
    }

    /// Whether an operation found the power off (or [`SimFs::crash`] was called).
    pub fn is_powered_off(&self) -> bool {
        self.state().powered_off
    }

    /// Cuts the power now and returns the disk as it comes back: see the model in the type's
    /// documentation. This file system fails every later operation.
    pub fn crash(&self) -> SimFs {
        let mut state = self.state();
        state.powered_off = true;
        SimFs::from_state(state.image(true))
    }

    /// Like [`SimFs::crash`], with the outcome where nothing that was not durable survived:
    /// every pending directory change is lost and every file is back to its durable image.
    pub fn crash_durable_only(&self) -> SimFs {
        let mut state = self.state();
        state.powered_off = true;
        SimFs::from_state(state.image(false))
    }

    /// An independent copy of this file system, pending changes, durable images, operation
    /// count, crash point and random state included (locks excluded: they belong to the
    /// processes using this one). To try something on the copy and then do it for real.
    pub fn fork(&self) -> SimFs {
        let mut state = self.state().clone();
        state.locked.clear();
        state.paused = false;
        state.waiting = 0;
        SimFs::from_state(state)
    }

    /// Makes every operation wait until [`SimFs::resume`], to hold a writer in the middle of its
    /// work. The thread that resumes must not use the file system while it is paused.
    pub fn pause(&self) {
        self.state().paused = true;
    }

    /// How many operations are waiting for [`SimFs::resume`] (so a test knows a writer is
    /// held).
    pub fn waiting(&self) -> usize {
        self.state().waiting
    }

    /// Lets paused operations go on.
    pub fn resume(&self) {
        self.state().paused = false;
        self.inner.resumed.notify_all();
    }

    fn open(&self, path: &Path, writable: bool) -> io::Result<Box<dyn FsFile>> {
        let state = self.begin()?;
        let id = state.file_id(path)?;
        drop(state);
        Ok(Box::new(SimHandle {
            fs: self.clone(),
            id,
            writable,
        }))
    }
}

impl Fs for SimFs {
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        self.open(path, false)
    }

    fn open_write(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        self.open(path, true)
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let mut state = self.begin()?;
        let (dir, name) = state.parent(path)?;
        if state.dir(dir).current.contains_key(&name) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let id = state.new_file(dir, name);
        drop(state);
        Ok(Box::new(SimHandle {
            fs: self.clone(),
            id,
            writable: true,
        }))
    }

    fn create_truncate(&self, path: &Path) -> io::Result<Box<dyn FsFile>> {
        let mut state = self.begin()?;
        let (dir, name) = state.parent(path)?;
        let id = match state.dir(dir).current.get(&name) {
            Some(Entry::File(id)) => {
                let id = *id;
                state.file(id).current.clear();
                id
            }
            Some(Entry::Dir(_)) => return Err(io::Error::from(io::ErrorKind::IsADirectory)),
            None => state.new_file(dir, name),
        };
        drop(state);
        Ok(Box::new(SimHandle {
            fs: self.clone(),
            id,
            writable: true,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.begin()?;
        let (dir, from_name) = state.parent(from)?;
        let (to_dir, to_name) = state.parent(to)?;
        if dir != to_dir {
            return Err(unsupported("a rename across directories"));
        }
        let entry = *state
            .dir(dir)
            .current
            .get(&from_name)
            .ok_or_else(not_found)?;
        if from_name != to_name {
            state.change(dir, vec![(from_name, None), (to_name, Some(entry))]);
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.begin()?;
        let (dir, name) = state.parent(path)?;
        match state.dir(dir).current.get(&name) {
            Some(Entry::File(_)) => {}
            Some(Entry::Dir(_)) => return Err(io::Error::from(io::ErrorKind::IsADirectory)),
            None => return Err(not_found()),
        }
        state.change(dir, vec![(name, None)]);
        Ok(())
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        let state = self.begin()?;
        match state.lookup(dir)? {
            Entry::Dir(id) => Ok(state.dir(id).current.keys().cloned().collect()),
            Entry::File(_) => Err(io::Error::from(io::ErrorKind::NotADirectory)),
        }
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = self.begin()?;
        if names(path)?.is_empty() {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let (dir, name) = state.parent(path)?;
        if state.dir(dir).current.contains_key(&name) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let id = state.next_id;
        state.next_id += 1;
        state.dirs.insert(id, SimDir::default());
        state.change(dir, vec![(name, Some(Entry::Dir(id)))]);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.begin()?;
        let Entry::Dir(id) = state.lookup(dir)? else {
            return Err(io::Error::from(io::ErrorKind::NotADirectory));
        };
        let dir = state
            .dirs
            .get_mut(&id)
            .expect("entries name existing directories");
        dir.durable = dir.current.clone();
        dir.pending.clear();
        Ok(())
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn FsLock>> {
        let mut state = self.begin()?;
        let id = match state.lookup(path) {
            Ok(Entry::File(id)) => id,
            Ok(Entry::Dir(_)) => return Err(io::Error::from(io::ErrorKind::IsADirectory)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let (dir, name) = state.parent(path)?;
                state.new_file(dir, name)
            }
            Err(e) => return Err(e),
        };
        if !state.locked.insert(id) {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        drop(state);
        Ok(Box::new(SimLock {
            fs: self.clone(),
            id,
        }))
    }
}

/// An open file of a [`SimFs`]; it keeps working after the file is removed, as on Unix.
struct SimHandle {
    fs: SimFs,
    id: u64,
    writable: bool,
}

impl fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimHandle")
            .field("id", &self.id)
            .field("writable", &self.writable)
            .finish()
    }
}

impl SimHandle {
    fn check_writable(&self) -> io::Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "file opened read-only",
            ))
        }
    }

    fn sync(&self) -> io::Result<()> {
        let mut state = self.fs.begin()?;
        let file = state.file(self.id);
        file.durable.clone_from(&file.current);
        Ok(())
    }
}

impl FsFile for SimHandle {
    fn size(&self) -> io::Result<u64> {
        let mut state = self.fs.begin()?;
        Ok(state.file(self.id).current.len() as u64)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut state = self.fs.begin()?;
        let data = &state.file(self.id).current;
        let Some(start) = usize::try_from(offset).ok().filter(|s| *s < data.len()) else {
            return Ok(0);
        };
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.check_writable()?;
        let mut state = self.fs.begin()?;
        let start = usize::try_from(offset).map_err(|_| unsupported("offsets above usize"))?;
        let end = start + buf.len();
        let data = &mut state.file(self.id).current;
        if data.len() < end {
            data.resize(end, 0);
        }
        data[start..end].copy_from_slice(buf);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check_writable()?;
        let mut state = self.fs.begin()?;
        let len = usize::try_from(len).map_err(|_| unsupported("lengths above usize"))?;
        state.file(self.id).current.resize(len, 0);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync()
    }
}

/// A lock of a [`SimFs`] file.
struct SimLock {
    fs: SimFs,
    id: u64,
}

impl fmt::Debug for SimLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimLock").field("id", &self.id).finish()
    }
}

impl FsLock for SimLock {}

impl Drop for SimLock {
    fn drop(&mut self) {
        self.fs.state().locked.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(fs: &SimFs, path: &str) -> io::Result<Vec<u8>> {
        let file = fs.open_read(Path::new(path))?;
        let mut out = vec![0u8; file.size()? as usize];
        file.read_exact_at(&mut out, 0)?;
        Ok(out)
    }

    fn names_in(fs: &SimFs, dir: &str) -> Vec<String> {
        let mut out: Vec<String> = fs
            .read_dir(Path::new(dir))
            .expect("list")
            .into_iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        out.sort();
        out
    }

    // Goal: what a process sees is the current image; only synced data and fsynced entries
    // are sure to survive, and the outcome where nothing pending survives loses the rest.
    #[test]
    fn only_synced_data_and_fsynced_entries_are_durable() {
        let fs = SimFs::new(1);
        fs.create_dir(Path::new("/d")).expect("mkdir");
        fs.sync_dir(Path::new("/")).expect("fsync root");
        let synced = fs.create_new(Path::new("/d/synced")).expect("create");
        synced.write_all_at(b"kept", 0).expect("write");
        synced.sync_data().expect("sync");
        fs.sync_dir(Path::new("/d")).expect("fsync dir");
        synced.write_all_at(b" and more", 4).expect("write");
        let unsynced = fs.create_new(Path::new("/d/unsynced")).expect("create");
        unsynced.write_all_at(b"lost", 0).expect("write");
        unsynced.sync_data().expect("sync");
        assert_eq!(read(&fs, "/d/synced").expect("read"), b"kept and more");
        let after = fs.crash_durable_only();
        assert_eq!(read(&after, "/d/synced").expect("read"), b"kept");
        assert_eq!(
            names_in(&after, "/d"),
            vec!["synced"],
            "an entry never fsynced is lost"
        );
        assert!(fs.is_powered_off());
        assert!(fs.read_dir(Path::new("/d")).is_err(), "the old disk is off");
    }

    // Goal: at a crash each differing sector is old or new on its own, the size is old or new,
    // and old bytes past the durable size read as zeros; across seeds both outcomes occur.
    #[test]
    fn crash_tears_unsynced_writes_by_sector() {
        let mut sector_outcomes = BTreeSet::new();
        let mut sizes = BTreeSet::new();
        for seed in 0..64 {
            let fs = SimFs::new(seed);
            let file = fs.create_new(Path::new("/f")).expect("create");
            file.write_all_at(&[1u8; 100], 0).expect("write");
            file.sync_data().expect("sync");
            fs.sync_dir(Path::new("/")).expect("fsync");
            // Unsynced: overwrite inside the durable part, extend over three sectors.
            file.write_all_at(&[2u8; 1400], 50).expect("write");
            let after = read(&fs.crash(), "/f").expect("read");
            sizes.insert(after.len());
            assert!(after.len() == 100 || after.len() == 1450);
            assert!(
                after[..50].iter().all(|b| *b == 1),
                "bytes never rewritten stay"
            );
            for sector in after.chunks(SIM_SECTOR_SIZE).skip(1) {
                let old = sector.iter().all(|b| *b == 0);
                let new = sector.iter().all(|b| *b == 2);
                assert!(old || new, "a sector is whole old or whole new");
                sector_outcomes.insert(new);
            }
        }
        assert_eq!(sizes.len(), 2, "both sizes occur");
        assert_eq!(sector_outcomes.len(), 2, "both sector contents occur");
    }

    // Goal: pending entry changes survive independently, and a rename is atomic: the file is
    // under one of its names, never both nor neither (once its creation is durable).
    #[test]
    fn pending_entry_changes_survive_independently_and_renames_are_atomic() {
        let mut outcomes = BTreeSet::new();
        for seed in 0..64 {
            let fs = SimFs::new(seed);
            let file = fs.create_new(Path::new("/a.tmp")).expect("create");
            file.write_all_at(b"x", 0).expect("write");
            file.sync_all().expect("sync");
            fs.sync_dir(Path::new("/")).expect("fsync");
            fs.rename(Path::new("/a.tmp"), Path::new("/a"))
                .expect("rename");
            fs.create_new(Path::new("/b")).expect("create");
            let after = fs.crash();
            let names = names_in(&after, "/");
            assert!(
                names.contains(&"a".to_string()) != names.contains(&"a.tmp".to_string()),
                "seed {seed}: {names:?}"
            );
            outcomes.insert(names);
        }
        assert_eq!(outcomes.len(), 4, "each change survives on its own");
    }

    // Goal: after the crash point every operation fails, and what it would have done is not
    // in the crash image.
    #[test]
    fn operations_fail_after_the_crash_point() {
        let fs = SimFs::new(3);
        let file = fs.create_new(Path::new("/f")).expect("create");
        fs.sync_dir(Path::new("/")).expect("fsync");
        fs.power_off_after(2);
        file.write_all_at(b"one", 0).expect("first op");
        file.sync_data().expect("second op");
        assert!(file.write_all_at(b"two", 3).is_err());
        assert!(file.sync_data().is_err());
        assert!(fs.read_dir(Path::new("/")).is_err());
        assert!(fs.is_powered_off());
        assert_eq!(read(&fs.crash(), "/f").expect("read"), b"one");
    }

    // Goal: one seed gives one outcome.
    #[test]
    fn same_seed_same_crash_image() {
        let run = |seed| {
            let fs = SimFs::new(seed);
            let file = fs.create_new(Path::new("/f")).expect("create");
            file.write_all_at(&[9u8; 5000], 0).expect("write");
            fs.create_new(Path::new("/g")).expect("create");
            let after = fs.crash();
            (names_in(&after, "/"), read(&after, "/f").ok())
        };
        for seed in 0..8 {
            assert_eq!(run(seed), run(seed));
        }
    }

    // Goal: a lock is exclusive until its guard is dropped, and a directory's files are gone
    // with its own entry.
    #[test]
    fn locks_are_exclusive_and_a_lost_directory_takes_its_files() {
        let fs = SimFs::new(4);
        fs.create_dir(Path::new("/d")).expect("mkdir");
        let guard = fs.lock(Path::new("/d/LOCK")).expect("lock");
        let again = fs.lock(Path::new("/d/LOCK")).map(|_| ());
        assert_eq!(again.expect_err("locked").kind(), io::ErrorKind::WouldBlock);
        drop(guard);
        let _guard = fs.lock(Path::new("/d/LOCK")).expect("lock again");
        let file = fs.create_new(Path::new("/d/f")).expect("create");
        file.sync_all().expect("sync");
        fs.sync_dir(Path::new("/d")).expect("fsync d");
        let after = fs.crash_durable_only();
        assert_eq!(
            after
                .read_dir(Path::new("/d"))
                .map(|_| ())
                .expect_err("gone")
                .kind(),
            io::ErrorKind::NotFound,
            "/d itself was never made durable in /"
        );
    }

    // Goal: a fork is independent of its origin and crashes the same way for the same state.
    #[test]
    fn fork_is_an_independent_copy() {
        let fs = SimFs::new(7);
        let file = fs.create_new(Path::new("/f")).expect("create");
        file.write_all_at(&[5u8; 3000], 0).expect("write");
        let fork = fs.fork();
        fs.create_new(Path::new("/only-in-origin")).expect("create");
        assert_eq!(names_in(&fork, "/"), vec!["f"]);
        let a = read(&fs.fork().crash(), "/f").ok();
        let b = read(&fs.crash(), "/f").ok();
        assert_eq!(a, b, "same state, same crash");
        assert!(
            !fork.is_powered_off(),
            "crashing the origin leaves the fork on"
        );
    }

    // Goal: pausing holds operations until resumed.
    #[test]
    fn pause_holds_operations_until_resumed() {
        let fs = SimFs::new(5);
        fs.pause();
        let worker = {
            let fs = fs.clone();
            std::thread::spawn(move || fs.create_dir(Path::new("/d")))
        };
        while fs.waiting() == 0 {
            std::thread::yield_now();
        }
        assert!(!worker.is_finished(), "a paused operation waits");
        assert_eq!(fs.operations(), 0);
        fs.resume();
        worker.join().expect("join").expect("mkdir after resume");
        assert_eq!(fs.operations(), 1);
    }

    // Goal: creating nested directories fsyncs the parent of each one created, so they all
    // survive a crash; existing directories are left alone.
    #[test]
    fn create_dir_all_durable_survives_a_crash() {
        let fs = SimFs::new(6);
        create_dir_all_durable(&fs, Path::new("/a/b/c")).expect("create");
        create_dir_all_durable(&fs, Path::new("/a/b/c")).expect("exists");
        let after = fs.crash_durable_only();
        assert!(after.read_dir(Path::new("/a/b/c")).is_ok());
    }
}
