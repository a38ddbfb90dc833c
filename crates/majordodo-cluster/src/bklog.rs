//! [`BookKeeperLog`]: the replicated commit log, as a sequence of BookKeeper ledgers listed in
//! ZooKeeper.
//!
//! - **Group commit**: at most a few entries are in flight at once; appends that arrive
//!   meanwhile are gathered and written together, as one entry (or a few, when their records
//!   exceed one entry), when an acknowledgement frees room. So an idle log writes each append
//!   at once, and a busy one writes fewer, larger entries instead of queueing many small ones:
//!   the bookies and the tailing followers handle a request per entry, not per record. An
//!   append resolves once the entry holding its last record is acknowledged by the ack quorum
//!   (entries are acknowledged in order). Entries carry the log position of their first
//!   record, so positions stay dense across ledgers and leaders.
//! - **Opening takes the log over**: the last listed ledger is opened with recovery, which
//!   fences its writer (a previous leader) and fixes its end; then a new ledger is created and
//!   published by compare-and-set on the ledger list, **before** anything is written to it, so
//!   no acknowledged entry ever sits in an unlisted ledger.
//! - **Rolls**: on size or age the writer drains, closes its ledger and starts a new one; when
//!   a bookie fails, the BookKeeper writer closes the ledger at its last confirmed entry and the
//!   entries after it are re-submitted, in order, to a new ledger. Appends do not fail.
//! - **Fencing**: an add answered "fenced", or a lost compare-and-set on the ledger list, fails
//!   the log with [`LogError::Fenced`]: another broker took over; the caller steps down.
//! - **Retention**: `release_before` drops, from the oldest, ledgers whose records are all
//!   covered and that are older than the retention period: first from the list (by
//!   compare-and-set), then from BookKeeper.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bookkeeper_client::{
    BkError, BookKeeper, DigestType, LedgerOptions, LedgerReader, LedgerWriter, OpenMode,
};
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture as FutBox;
use majordodo_log::{
    AppendFuture, Appended, BoxFuture, CommitLog, LogError, Lsn, ReplayFn, ReplayReport,
};
use majordodo_proto::cluster::{
    LEDGER_ENTRY_OVERHEAD, LEDGER_ENTRY_PER_RECORD, LedgerEntry, LedgersInfo, decode_ledger_entry,
    encode_ledger_entry,
};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::coord::{Coordinator, VersionedLedgers};
use crate::error::bk_to_log;

/// Default size after which a ledger is rolled: the original's 256 MiB.
pub const DEFAULT_ROLL_SIZE: u64 = 256 * 1024 * 1024;
/// Default age after which a ledger is rolled, so retention can drop old history in steps.
pub const DEFAULT_ROLL_AGE: Duration = Duration::from_secs(3600);
/// Default retention: ledgers are dropped 24 h after their creation (the original's), once a
/// snapshot covers them.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Default bound on the bytes of entries written but not yet acknowledged before
/// [`CommitLog::ready`] makes producers wait: a few hundred rounds of a busy broker.
pub const DEFAULT_MAX_UNACKED_BYTES: u64 = 64 * 1024 * 1024;
/// Default bound on the entries written and not yet acknowledged: two keep the bookies busy
/// (one is being synced while the next travels) without splitting a busy broker's appends
/// into many small entries.
pub const DEFAULT_MAX_ENTRIES_IN_FLIGHT: usize = 2;
/// Pause between attempts at creating a ledger when bookies are missing.
const CREATE_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Entries read per request while replaying a ledger.
const REPLAY_BATCH: i64 = 1000;

/// Settings of the replicated log.
#[derive(Clone, Debug)]
pub struct BkLogConfig {
    /// Bookies each ledger is striped over.
    pub ensemble: usize,
    /// Bookies each entry is written to.
    pub write_quorum: usize,
    /// Acknowledgements that make an entry durable.
    pub ack_quorum: usize,
    /// Entry checksum.
    pub digest: DigestType,
    /// Ledger password: every broker of the cluster needs the same one.
    pub password: Vec<u8>,
    /// Bytes written to a ledger after which it is rolled.
    pub roll_size: u64,
    /// Age after which a ledger is rolled.
    pub roll_age: Duration,
    /// How long a covered ledger is kept after its creation before it may be dropped.
    pub retention: Duration,
    /// Largest ledger entry written, at most the BookKeeper client's limit.
    pub max_entry_size: usize,
    /// Bytes appended and not yet acknowledged beyond which [`CommitLog::ready`] waits.
    pub max_unacked_bytes: u64,
    /// Entries written and not yet acknowledged (at least 1); appends arriving meanwhile wait
    /// and are written together.
    pub max_entries_in_flight: usize,
    /// This broker's id, stored in the ledgers' custom metadata.
    pub broker_id: String,
}

impl BkLogConfig {
    /// Settings with the given quorums, CRC32C and the defaults above.
    pub fn new(ensemble: usize, write_quorum: usize, ack_quorum: usize) -> BkLogConfig {
        BkLogConfig {
            ensemble,
            write_quorum,
            ack_quorum,
            digest: DigestType::Crc32c,
            password: Vec::new(),
            roll_size: DEFAULT_ROLL_SIZE,
            roll_age: DEFAULT_ROLL_AGE,
            retention: DEFAULT_RETENTION,
            max_entry_size: bookkeeper_client::DEFAULT_MAX_ENTRY_SIZE,
            max_unacked_bytes: DEFAULT_MAX_UNACKED_BYTES,
            max_entries_in_flight: DEFAULT_MAX_ENTRIES_IN_FLIGHT,
            broker_id: String::new(),
        }
    }

    /// The largest record an entry can hold.
    pub fn max_record_size(&self) -> usize {
        self.max_entry_size
            .saturating_sub(LEDGER_ENTRY_OVERHEAD + LEDGER_ENTRY_PER_RECORD)
    }

    fn ledger_options(&self) -> LedgerOptions {
        let mut options = LedgerOptions::new(self.ensemble, self.write_quorum, self.ack_quorum)
            .with_digest(self.digest, self.password.clone());
        options
            .custom_metadata
            .insert("application".into(), b"majordodo".to_vec());
        options
            .custom_metadata
            .insert("component".into(), b"broker".to_vec());
        options
            .custom_metadata
            .insert("broker-id".into(), self.broker_id.as_bytes().to_vec());
        options
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What [`BookKeeperLog::open`] found when it took the log over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TakeOver {
    /// The ledger recovered (fenced), if any was listed.
    pub recovered_ledger: Option<i64>,
    /// The last log position the ledgers hold.
    pub last_lsn: Lsn,
    /// The ledger this broker now writes.
    pub ledger_id: i64,
}

/// Lifecycle of the log.
#[derive(Clone, Debug)]
enum Phase {
    Open,
    Closing,
    /// Failed for good; the message of the failure.
    Failed(LogFailure),
    Closed,
}

#[derive(Clone, Debug)]
enum LogFailure {
    Fenced(String),
    Other(String),
}

impl LogFailure {
    fn to_error(&self) -> LogError {
        match self {
            LogFailure::Fenced(why) => LogError::Fenced(why.clone()),
            LogFailure::Other(why) => LogError::Backend(why.clone()),
        }
    }

    fn of(e: &LogError) -> LogFailure {
        match e {
            LogError::Fenced(why) => LogFailure::Fenced(why.clone()),
            other => LogFailure::Other(other.to_string()),
        }
    }
}

struct Queue {
    phase: Phase,
    last_assigned: Lsn,
}

/// State shared by the handle and the writer task.
struct Shared {
    bk: BookKeeper,
    coord: Coordinator,
    config: BkLogConfig,
    queue: Mutex<Queue>,
    /// Last position acknowledged.
    durable: AtomicU64,
    /// The ledger being written and its last acknowledged entry, for replays of this log.
    current_ledger: AtomicI64,
    current_entry: AtomicI64,
    /// The ledger list as this log last wrote it.
    ledgers: tokio::sync::Mutex<VersionedLedgers>,
    /// Bytes of records appended and not acknowledged.
    unacked_bytes: AtomicU64,
    /// Signalled when acknowledgements free room.
    room: Notify,
}

enum Cmd {
    Append {
        appended: Appended,
        records: Vec<Bytes>,
        done: oneshot::Sender<Result<Appended, LogError>>,
    },
    Close(oneshot::Sender<Result<(), LogError>>),
}

/// The replicated commit log; see the module documentation.
pub struct BookKeeperLog {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Cmd>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for BookKeeperLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BookKeeperLog")
            .field(
                "ledger",
                &self.shared.current_ledger.load(Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

impl BookKeeperLog {
    /// Takes the log over and opens it for writing: fences and recovers the last listed
    /// ledger, creates this broker's ledger and publishes it by compare-and-set. Call it only
    /// while holding the leadership; replay what the state misses with [`CommitLog::replay`]
    /// before appending.
    ///
    /// # Errors
    /// [`LogError::Fenced`] when another broker changed the ledger list meanwhile;
    /// [`LogError::Backend`] on BookKeeper or ZooKeeper failures; [`LogError::Corrupt`] when a
    /// ledger holds something that is not a log entry.
    pub async fn open(
        bk: BookKeeper,
        coord: Coordinator,
        config: BkLogConfig,
    ) -> Result<(BookKeeperLog, TakeOver), LogError> {
        if config.max_entry_size > bookkeeper_client::DEFAULT_MAX_ENTRY_SIZE
            || config.max_record_size() == 0
        {
            return Err(LogError::Backend(format!(
                "max_entry_size {} must be within 1..={}",
                config.max_entry_size,
                bookkeeper_client::DEFAULT_MAX_ENTRY_SIZE
            )));
        }
        let listed = coord.ledgers().await?;
        let (recovered_ledger, end) = match listed.info.ledgers().last() {
            None => (None, Lsn::ZERO),
            Some((id, _, first)) => {
                let reader = bk
                    .open_ledger(id, &config.password, OpenMode::Recovery)
                    .await
                    .map_err(|e| bk_to_log(&format!("recover ledger {id}"), e))?;
                let lac = reader.last_add_confirmed();
                let end = if lac < 0 {
                    Lsn(first - 1)
                } else {
                    Lsn(read_entry(&reader, lac).await?.last_lsn())
                };
                info!(
                    ledger = id,
                    last_entry = lac,
                    last_lsn = end.0,
                    "recovered the last ledger"
                );
                (Some(id), end)
            }
        };
        let writer = create_ledger(&bk, &config).await?;
        let ledger_id = writer.ledger_id();
        let mut info = listed.info.clone();
        info.push(ledger_id, now_ms(), end.0 + 1);
        let version = match coord.set_ledgers(&info, listed.version).await {
            Ok(v) => v,
            Err(e) => {
                let _ = bk.delete_ledger(ledger_id).await;
                return Err(e.into());
            }
        };
        info!(
            ledger = ledger_id,
            first_lsn = end.0 + 1,
            "writing a new ledger"
        );
        let shared = Arc::new(Shared {
            bk,
            coord,
            config,
            queue: Mutex::new(Queue {
                phase: Phase::Open,
                last_assigned: end,
            }),
            durable: AtomicU64::new(end.0),
            current_ledger: AtomicI64::new(ledger_id),
            current_entry: AtomicI64::new(-1),
            ledgers: tokio::sync::Mutex::new(VersionedLedgers { info, version }),
            unacked_bytes: AtomicU64::new(0),
            room: Notify::new(),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Writer {
            shared: shared.clone(),
            rx,
            ledger: writer,
            ledger_bytes: 0,
            ledger_started: Instant::now(),
            inflight: VecDeque::new(),
            pending: VecDeque::new(),
        };
        let writer = tokio::spawn(task.run());
        Ok((
            BookKeeperLog {
                shared,
                tx,
                writer: Mutex::new(Some(writer)),
            },
            TakeOver {
                recovered_ledger,
                last_lsn: end,
                ledger_id,
            },
        ))
    }

    /// The ledger being written.
    pub fn current_ledger(&self) -> i64 {
        self.shared.current_ledger.load(Ordering::Acquire)
    }

    /// Stops the writer the way a process crash would: nothing more is written, the ledger is
    /// left open (the next leader recovers it), appends not acknowledged fail.
    pub async fn crash(&self) {
        lock(&self.shared.queue).phase = Phase::Failed(LogFailure::Other("crashed".into()));
        let writer = lock(&self.writer).take();
        if let Some(writer) = writer {
            writer.abort();
            let _ = writer.await;
        }
    }
}

/// Creates a ledger, retrying while too few bookies are available.
async fn create_ledger(bk: &BookKeeper, config: &BkLogConfig) -> Result<LedgerWriter, LogError> {
    let mut warned = false;
    loop {
        match bk.create_ledger(config.ledger_options()).await {
            Ok(writer) => return Ok(writer),
            Err(e @ BkError::NotEnoughBookies { .. }) | Err(e @ BkError::Timeout { .. }) => {
                if !warned {
                    warn!(error = %e, "cannot create a ledger yet; retrying until bookies are back");
                    warned = true;
                }
                tokio::time::sleep(CREATE_RETRY_PAUSE).await;
            }
            Err(e) if e.is_retryable() => {
                debug!(error = %e, "ledger creation failed; retrying");
                tokio::time::sleep(CREATE_RETRY_PAUSE).await;
            }
            Err(e) => return Err(bk_to_log("create a ledger", e)),
        }
    }
}

/// Reads and decodes entry `id` of `reader`.
async fn read_entry(reader: &LedgerReader, id: i64) -> Result<LedgerEntry, LogError> {
    let entries = reader
        .read(id..=id)
        .await
        .map_err(|e| bk_to_log(&format!("read ledger {} entry {id}", reader.ledger_id()), e))?;
    let entry = entries
        .into_iter()
        .next()
        .ok_or_else(|| LogError::Corrupt {
            file: format!("ledger {}", reader.ledger_id()),
            offset: id as u64,
            reason: "entry missing".into(),
        })?;
    decode(reader.ledger_id(), id, &entry.data)
}

fn decode(ledger: i64, entry: i64, data: &[u8]) -> Result<LedgerEntry, LogError> {
    decode_ledger_entry(data).map_err(|e| LogError::Corrupt {
        file: format!("ledger {ledger}"),
        offset: entry.max(0) as u64,
        reason: e.to_string(),
    })
}

/// The id of the entry holding position `lsn` in a ledger whose entries `0..=last` start at
/// increasing positions (binary search; the first entry if `lsn` comes before them all).
pub(crate) async fn entry_holding(
    reader: &LedgerReader,
    lsn: u64,
    last: i64,
) -> Result<i64, LogError> {
    let (mut lo, mut hi) = (0i64, last);
    while lo < hi {
        let mid = lo + (hi - lo + 1) / 2;
        if read_entry(reader, mid).await?.first_lsn <= lsn {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(lo)
}

/// An append waiting for an acknowledgement.
type Done = (oneshot::Sender<Result<Appended, LogError>>, Appended);

/// An entry submitted to the current ledger (or a barrier, with no data).
struct InFlight {
    /// The encoded entry, kept to re-submit it after a roll.
    data: Bytes,
    /// Bytes of the records it holds, counted in `unacked_bytes`.
    record_bytes: u64,
    /// Last position it holds.
    last_lsn: Lsn,
    /// Completes with its entry id.
    acked: FutBox<'static, Result<i64, BkError>>,
    /// The appends whose last record it holds.
    done: Vec<Done>,
}

/// An append received and not yet written.
struct PendingAppend {
    appended: Appended,
    records: Vec<Bytes>,
    done: oneshot::Sender<Result<Appended, LogError>>,
}

/// The writer task: owns the current ledger.
struct Writer {
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    ledger: LedgerWriter,
    ledger_bytes: u64,
    ledger_started: Instant,
    inflight: VecDeque<InFlight>,
    /// Appends waiting for room in the pipeline, in order.
    pending: VecDeque<PendingAppend>,
}

impl Writer {
    async fn run(mut self) {
        let mut closing: Option<oneshot::Sender<Result<(), LogError>>> = None;
        let result: Result<(), LogError> = loop {
            if closing.is_some() && self.inflight.is_empty() && self.pending.is_empty() {
                break self
                    .ledger
                    .close()
                    .await
                    .map(|_| ())
                    .map_err(|e| bk_to_log("close the ledger", e));
            }
            let due = !self.inflight.is_empty();
            tokio::select! {
                biased;
                acked = async { self.inflight.front_mut().expect("guarded").acked.as_mut().await }, if due => {
                    match acked {
                        Ok(entry_id) => {
                            if let Err(e) = self.on_acked(entry_id).await {
                                break Err(e);
                            }
                            self.flush();
                        }
                        Err(BkError::LedgerClosed { last_add_confirmed, cause, .. }) => {
                            warn!(
                                ledger = self.ledger.ledger_id(),
                                last_entry = last_add_confirmed,
                                cause = ?cause,
                                "ledger closed by a bookie failure; rolling to a new one"
                            );
                            if let Err(e) = self.roll(true).await {
                                break Err(e);
                            }
                            self.flush();
                        }
                        Err(e) => break Err(bk_to_log(&format!("append to ledger {}", self.ledger.ledger_id()), e)),
                    }
                }
                cmd = self.rx.recv(), if closing.is_none() => match cmd {
                    Some(Cmd::Append { appended, records, done }) => {
                        self.pending.push_back(PendingAppend { appended, records, done });
                        self.flush();
                    }
                    Some(Cmd::Close(reply)) => closing = Some(reply),
                    None => {
                        // The handle is gone without a close: finish what is in flight.
                        closing = Some(oneshot::channel().0);
                    }
                },
            }
        };
        self.finish(result, closing);
    }

    /// Entries (not barriers) written and not yet acknowledged.
    fn entries_in_flight(&self) -> usize {
        self.inflight.iter().filter(|e| !e.data.is_empty()).count()
    }

    /// Writes every pending append, as few entries as the entry size allows, unless the
    /// pipeline is full: then they wait for the next acknowledgement and more may join them.
    fn flush(&mut self) {
        if self.pending.is_empty()
            || self.entries_in_flight() >= self.shared.config.max_entries_in_flight.max(1)
        {
            return;
        }
        let max = self.shared.config.max_entry_size;
        let mut chunk: Vec<Bytes> = Vec::new();
        let mut chunk_first = 0u64;
        let mut size = LEDGER_ENTRY_OVERHEAD;
        let mut done: Vec<Done> = Vec::new();
        while let Some(append) = self.pending.pop_front() {
            if append.records.is_empty() {
                if chunk.is_empty() {
                    // A barrier with nothing before it in this batch: resolves after what is
                    // in flight, like an entry would.
                    self.inflight.push_back(InFlight {
                        data: Bytes::new(),
                        record_bytes: 0,
                        last_lsn: append.appended.last,
                        acked: futures_util::future::ready(Ok(-1)).boxed(),
                        done: vec![(append.done, append.appended)],
                    });
                } else {
                    done.push((append.done, append.appended));
                }
                continue;
            }
            for (lsn, record) in (append.appended.first.0..).zip(append.records) {
                let add = record.len() + LEDGER_ENTRY_PER_RECORD;
                if !chunk.is_empty() && size + add > max {
                    self.push_chunk(
                        chunk_first,
                        std::mem::take(&mut chunk),
                        std::mem::take(&mut done),
                    );
                    size = LEDGER_ENTRY_OVERHEAD;
                }
                if chunk.is_empty() {
                    chunk_first = lsn;
                }
                size += add;
                chunk.push(record);
            }
            done.push((append.done, append.appended));
        }
        if !chunk.is_empty() {
            self.push_chunk(chunk_first, chunk, done);
        }
    }

    /// Writes the records `chunk`, the first at position `first`, as one entry.
    fn push_chunk(&mut self, first: u64, chunk: Vec<Bytes>, done: Vec<Done>) {
        let record_bytes = chunk.iter().map(|r| r.len() as u64).sum();
        let data = Bytes::from(encode_ledger_entry(first, &chunk));
        let last_lsn = Lsn(first + chunk.len() as u64 - 1);
        self.push_entry(data, record_bytes, last_lsn, done);
    }

    fn push_entry(&mut self, data: Bytes, record_bytes: u64, last_lsn: Lsn, done: Vec<Done>) {
        self.ledger_bytes += data.len() as u64;
        let acked = self.ledger.append(data.clone()).boxed();
        self.inflight.push_back(InFlight {
            data,
            record_bytes,
            last_lsn,
            acked,
            done,
        });
    }

    async fn on_acked(&mut self, entry_id: i64) -> Result<(), LogError> {
        let entry = self.inflight.pop_front().expect("an entry was awaited");
        if !entry.data.is_empty() {
            self.shared
                .unacked_bytes
                .fetch_sub(entry.record_bytes, Ordering::AcqRel);
            self.shared.current_entry.store(entry_id, Ordering::Release);
            self.shared
                .durable
                .store(entry.last_lsn.0, Ordering::Release);
            self.shared.room.notify_waiters();
        }
        for (done, appended) in entry.done {
            let _ = done.send(Ok(appended));
        }
        let config = &self.shared.config;
        if self.inflight.is_empty()
            && (self.ledger_bytes >= config.roll_size
                || self.ledger_started.elapsed() >= config.roll_age)
        {
            self.roll(false).await?;
        }
        Ok(())
    }

    /// Starts a new ledger. With `failed`, the current ledger was closed by a bookie failure
    /// and every entry in flight is re-submitted to the new one; otherwise nothing is in
    /// flight and the current ledger is closed first.
    async fn roll(&mut self, failed: bool) -> Result<(), LogError> {
        let old = self.ledger.ledger_id();
        if !failed {
            self.ledger
                .close()
                .await
                .map_err(|e| bk_to_log(&format!("close ledger {old}"), e))?;
        }
        let next = create_ledger(&self.shared.bk, &self.shared.config).await?;
        let first = self.shared.durable.load(Ordering::Acquire) + 1;
        {
            let mut listed = self.shared.ledgers.lock().await;
            let mut info: LedgersInfo = listed.info.clone();
            info.push(next.ledger_id(), now_ms(), first);
            match self.shared.coord.set_ledgers(&info, listed.version).await {
                Ok(version) => *listed = VersionedLedgers { info, version },
                Err(e) => {
                    let _ = self.shared.bk.delete_ledger(next.ledger_id()).await;
                    return Err(e.into());
                }
            }
        }
        info!(
            from = old,
            to = next.ledger_id(),
            first_lsn = first,
            "rolled to a new ledger"
        );
        self.ledger = next;
        self.ledger_bytes = 0;
        self.ledger_started = Instant::now();
        self.shared
            .current_ledger
            .store(self.ledger.ledger_id(), Ordering::Release);
        self.shared.current_entry.store(-1, Ordering::Release);
        if failed {
            let pending: Vec<InFlight> = self.inflight.drain(..).collect();
            for entry in pending {
                if entry.data.is_empty() {
                    let acked = futures_util::future::ready(Ok(-1)).boxed();
                    self.inflight.push_back(InFlight { acked, ..entry });
                } else {
                    self.push_entry(entry.data, entry.record_bytes, entry.last_lsn, entry.done);
                }
            }
        }
        Ok(())
    }

    /// Ends the writer: answers everything still waiting.
    fn finish(
        mut self,
        result: Result<(), LogError>,
        closing: Option<oneshot::Sender<Result<(), LogError>>>,
    ) {
        let failure = result.as_ref().err().map(LogFailure::of);
        {
            let mut queue = lock(&self.shared.queue);
            queue.phase = match &failure {
                Some(f) => Phase::Failed(f.clone()),
                None => Phase::Closed,
            };
        }
        if let Some(f) = &failure {
            warn!(error = %f.to_error(), "replicated log failed; it accepts no more appends");
        }
        let error = failure.map_or(LogError::Closed, |f| f.to_error());
        for entry in self.inflight.drain(..) {
            for (done, _) in entry.done {
                let _ = done.send(Err(error_clone(&error)));
            }
        }
        for append in self.pending.drain(..) {
            let _ = append.done.send(Err(error_clone(&error)));
        }
        self.rx.close();
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Cmd::Append { done, .. } => {
                    let _ = done.send(Err(LogError::Closed));
                }
                Cmd::Close(reply) => {
                    let _ = reply.send(result.as_ref().map(|_| ()).map_err(error_clone));
                }
            }
        }
        if let Some(reply) = closing {
            let _ = reply.send(result);
        }
        self.shared.room.notify_waiters();
    }
}

/// A copy of a log error for another waiter.
fn error_clone(e: &LogError) -> LogError {
    match e {
        LogError::Fenced(why) => LogError::Fenced(why.clone()),
        LogError::Closed => LogError::Closed,
        other => LogError::Backend(other.to_string()),
    }
}

impl CommitLog for BookKeeperLog {
    fn append(&self, records: Vec<Bytes>) -> AppendFuture {
        let limit = self.shared.config.max_record_size();
        if let Some(big) = records.iter().find(|r| r.len() > limit) {
            return futures_util::future::ready(Err(LogError::RecordTooLarge {
                size: big.len(),
                limit,
            }))
            .boxed();
        }
        let mut queue = lock(&self.shared.queue);
        match &queue.phase {
            Phase::Open => {}
            Phase::Failed(_) | Phase::Closing | Phase::Closed => {
                return futures_util::future::ready(Err(LogError::Closed)).boxed();
            }
        }
        let count = records.len() as u64;
        let appended = if count == 0 {
            Appended {
                first: queue.last_assigned,
                last: queue.last_assigned,
            }
        } else {
            Appended {
                first: queue.last_assigned.next(),
                last: Lsn(queue.last_assigned.0 + count),
            }
        };
        let (done, rx) = oneshot::channel();
        let bytes: u64 = records.iter().map(|r| r.len() as u64).sum();
        if self
            .tx
            .send(Cmd::Append {
                appended,
                records,
                done,
            })
            .is_err()
        {
            return futures_util::future::ready(Err(LogError::Closed)).boxed();
        }
        self.shared.unacked_bytes.fetch_add(bytes, Ordering::AcqRel);
        queue.last_assigned = appended.last;
        drop(queue);
        rx.map(|r| r.unwrap_or(Err(LogError::Closed))).boxed()
    }

    fn replay<'a>(
        &'a self,
        after: Lsn,
        f: &'a mut ReplayFn<'a>,
    ) -> BoxFuture<'a, Result<ReplayReport, LogError>> {
        Box::pin(async move {
            let last = Lsn(self.shared.durable.load(Ordering::Acquire));
            if after >= last {
                return Ok(ReplayReport { records: 0, last });
            }
            let listed = self.shared.ledgers.lock().await.info.clone();
            let current = self.shared.current_ledger.load(Ordering::Acquire);
            let current_entry = self.shared.current_entry.load(Ordering::Acquire);
            let records = replay_ledgers(
                &self.shared.bk,
                &self.shared.config.password,
                &listed,
                after,
                last,
                Some((current, current_entry)),
                f,
            )
            .await?;
            Ok(ReplayReport { records, last })
        })
    }

    fn last_lsn(&self) -> Lsn {
        Lsn(self.shared.durable.load(Ordering::Acquire))
    }

    fn release_before(&self, lsn: Lsn) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(async move {
            let retention = self.shared.config.retention.as_millis() as i64;
            let horizon = now_ms() - retention;
            let current = self.shared.current_ledger.load(Ordering::Acquire);
            let doomed: Vec<i64> = {
                let mut listed = self.shared.ledgers.lock().await;
                let ledgers: Vec<(i64, i64, u64)> = listed.info.ledgers().collect();
                let count = ledgers
                    .windows(2)
                    .take_while(|pair| {
                        let (id, created, _) = pair[0];
                        let (_, _, next_first) = pair[1];
                        id != current && next_first - 1 <= lsn.0 && created <= horizon
                    })
                    .count();
                if count == 0 {
                    return Ok(());
                }
                let mut info = listed.info.clone();
                info.drop_oldest(count);
                let version = self.shared.coord.set_ledgers(&info, listed.version).await?;
                let doomed = ledgers[..count].iter().map(|(id, _, _)| *id).collect();
                *listed = VersionedLedgers { info, version };
                doomed
            };
            for id in &doomed {
                if let Err(e) = self.shared.bk.delete_ledger(*id).await {
                    warn!(ledger = id, error = %e, "could not delete a dropped ledger");
                }
            }
            info!(ledgers = ?doomed, released_before = lsn.0, "dropped old ledgers");
            Ok(())
        })
    }

    fn max_record_size(&self) -> usize {
        self.shared.config.max_record_size()
    }

    fn ready(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            loop {
                let notified = self.shared.room.notified();
                if self.shared.unacked_bytes.load(Ordering::Acquire)
                    <= self.shared.config.max_unacked_bytes
                    || !matches!(lock(&self.shared.queue).phase, Phase::Open)
                {
                    return;
                }
                notified.await;
            }
        })
    }

    fn close(&self) -> BoxFuture<'_, Result<(), LogError>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            {
                let mut queue = lock(&self.shared.queue);
                match &queue.phase {
                    Phase::Open => queue.phase = Phase::Closing,
                    Phase::Failed(f) => return Err(f.to_error()),
                    Phase::Closing | Phase::Closed => {}
                }
            }
            if self.tx.send(Cmd::Close(reply)).is_err() {
                return match &lock(&self.shared.queue).phase {
                    Phase::Failed(f) => Err(f.to_error()),
                    _ => Ok(()),
                };
            }
            rx.await.unwrap_or(Ok(()))
        })
    }
}

/// Hands every record with position in `(after, last]` of the ledgers of `listed` to `f`;
/// returns how many. `writing` is this broker's own ledger and its last acknowledged entry,
/// which may be beyond what the bookies report as confirmed.
pub(crate) async fn replay_ledgers(
    bk: &BookKeeper,
    password: &[u8],
    listed: &LedgersInfo,
    after: Lsn,
    last: Lsn,
    writing: Option<(i64, i64)>,
    f: &mut ReplayFn<'_>,
) -> Result<u64, LogError> {
    let ledgers: Vec<(i64, i64, u64)> = listed.ledgers().collect();
    let wanted = after.0 + 1;
    if ledgers.is_empty() || wanted < ledgers[0].2 {
        return Err(LogError::Released {
            after,
            first: Lsn(ledgers.first().map_or(1, |l| l.2)),
        });
    }
    let start = ledgers
        .iter()
        .rposition(|(_, _, first)| *first <= wanted)
        .expect("the first ledger starts at or before the wanted position");
    let mut next = wanted;
    let mut count = 0u64;
    for &(id, _, first) in &ledgers[start..] {
        if next > last.0 {
            break;
        }
        if first > next {
            return Err(LogError::Corrupt {
                file: format!("ledger {id}"),
                offset: 0,
                reason: format!("starts at position {first}, expected {next}"),
            });
        }
        let reader = bk
            .open_ledger(id, password, OpenMode::NoRecovery)
            .await
            .map_err(|e| bk_to_log(&format!("open ledger {id}"), e))?;
        let end = match writing {
            Some((ledger, entry)) if ledger == id => entry.max(reader.last_add_confirmed()),
            _ => reader.last_add_confirmed(),
        };
        if end < 0 {
            continue;
        }
        let mut entry_id = if next > first {
            entry_holding(&reader, next, end).await?
        } else {
            0
        };
        while entry_id <= end && next <= last.0 {
            let upto = end.min(entry_id + REPLAY_BATCH - 1);
            let entries = reader
                .read(entry_id..=upto)
                .await
                .map_err(|e| bk_to_log(&format!("read ledger {id}"), e))?;
            for e in entries {
                if next > last.0 {
                    break; // entries acknowledged after the replay started
                }
                let entry = decode(id, e.entry_id, &e.data)?;
                if entry.first_lsn > next {
                    return Err(LogError::Corrupt {
                        file: format!("ledger {id}"),
                        offset: e.entry_id as u64,
                        reason: format!(
                            "entry starts at position {}, expected {next}",
                            entry.first_lsn
                        ),
                    });
                }
                for (i, record) in entry.records.into_iter().enumerate() {
                    let lsn = entry.first_lsn + i as u64;
                    if lsn < next || lsn > last.0 {
                        continue;
                    }
                    f(Lsn(lsn), record).map_err(|reason| LogError::Replay {
                        lsn: Lsn(lsn),
                        reason,
                    })?;
                    count += 1;
                    next = lsn + 1;
                }
            }
            entry_id = upto + 1;
        }
    }
    if next <= last.0 {
        return Err(LogError::Corrupt {
            file: "ledgers".into(),
            offset: next,
            reason: format!("the ledgers end before position {}", last.0),
        });
    }
    Ok(count)
}
