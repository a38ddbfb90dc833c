//! Recovery at boot: newest valid snapshot, then replay of every log record after it.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use majordodo_core::{BrokerState, GroupMapper};
use majordodo_log::{CommitLog, LogError, Lsn, SnapshotError, SnapshotReader, SnapshotStore};
use majordodo_proto::record::decode_entry;
use majordodo_proto::snapshot::{SnapshotError as ContentError, decode_snapshot_from};
use tracing::info;

/// What recovery found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootReport {
    /// Position of the snapshot used, if any.
    pub snapshot_lsn: Option<u64>,
    /// Records replayed after it.
    pub replayed: u64,
    /// Position of the last record.
    pub last_lsn: u64,
    /// Tasks in the recovered state.
    pub tasks: usize,
    /// Time recovery took.
    pub elapsed: Duration,
}

/// Why the broker cannot recover its state. None of these is retryable without an operator.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Reading snapshots failed.
    #[error("read snapshots: {0}")]
    SnapshotStore(#[from] SnapshotError),
    /// The newest valid snapshot file holds content this build cannot read, or could not be
    /// read to its end.
    #[error("decode snapshot at lsn {lsn}: {source}")]
    Snapshot {
        /// The snapshot's position.
        lsn: u64,
        /// What was wrong.
        #[source]
        source: ContentError,
    },
    /// Replaying the log failed (corrupt record, unknown entry, entry that does not apply).
    #[error("replay log: {0}")]
    Log(#[from] LogError),
    /// The commit log could not be opened (damaged, unreadable, another format version).
    #[error("open the commit log in {}: {source}", dir.display())]
    OpenLog {
        /// The log's directory.
        dir: PathBuf,
        /// What was wrong.
        #[source]
        source: LogError,
    },
    /// ZooKeeper or BookKeeper failed, or a snapshot could not be downloaded.
    #[error("cluster: {0}")]
    Cluster(String),
    /// No state can be built: local snapshots (if any) are older than the first listed ledger,
    /// no snapshot could be downloaded, and old ledgers were dropped.
    #[error(
        "cannot boot: the ledgers start at lsn {first_lsn} and the history before it was \
         dropped; {}{}; copy a recent snapshot file from a running broker's snapshots \
         directory into this broker's, or start a leader first",
        match local {
            Some(lsn) => format!("the newest local snapshot covers only up to lsn {lsn}"),
            None => "there is no local snapshot".to_owned(),
        },
        match (leader, peer_token) {
            (None, _) => "; no leader runs to download a snapshot from".to_owned(),
            (Some(url), false) => format!(
                "; a leader runs at {url} but cluster.peer_token_file is not set, so its \
                 snapshot cannot be downloaded"
            ),
            (Some(url), true) => format!("; downloading from the leader at {url} was not possible"),
        }
    )]
    NoUsableSnapshot {
        /// First position the listed ledgers hold.
        first_lsn: u64,
        /// Position of the newest local snapshot.
        local: Option<u64>,
        /// The leader's API URL, if one runs.
        leader: Option<String>,
        /// Whether a token to download from the leader is configured.
        peer_token: bool,
    },
    /// The broker was stopped before its state was recovered.
    #[error("stopped before the state was recovered")]
    Stopped,
    /// The broker task ended abnormally while recovering.
    #[error("broker task failed: {0}")]
    Dispatcher(String),
    /// The log ends before the snapshot: the log does not belong to this snapshot.
    #[error(
        "the log ends at lsn {log_end} but the snapshot covers up to lsn {snapshot}: wrong or truncated log directory"
    )]
    LogBehindSnapshot {
        /// The snapshot's position.
        snapshot: u64,
        /// The log's last position.
        log_end: u64,
    },
}

/// A commit log being opened, read while the snapshot loads (see [`recover`]).
pub type OpeningLog =
    Pin<Box<dyn Future<Output = Result<Arc<dyn CommitLog>, BootError>> + Send + 'static>>;

/// A log already open, as an [`OpeningLog`].
pub fn opened(log: Arc<dyn CommitLog>) -> OpeningLog {
    Box::pin(std::future::ready(Ok(log)))
}

/// Rebuilds the state from `store`'s newest valid snapshot and the log after it. The log is
/// opened (`log` is awaited) while the snapshot is read and decoded on a blocking thread, so a
/// log that reads its files at open costs no time of its own; the replay yields between
/// chunks, so the task running this stays responsive. Returns the log, the state and the
/// report.
///
/// # Errors
/// [`BootError`]: the log's when both fail.
pub async fn recover(
    log: OpeningLog,
    store: Option<Arc<SnapshotStore>>,
    mapper: Arc<dyn GroupMapper>,
) -> Result<(Arc<dyn CommitLog>, BrokerState, BootReport), BootError> {
    let started = Instant::now();
    let mut report = BootReport::default();
    let load = async {
        match store {
            Some(store) => {
                let mapper = mapper.clone();
                tokio::task::spawn_blocking(move || load_snapshot(&store, mapper))
                    .await
                    .map_err(|e| BootError::Dispatcher(format!("snapshot loader failed: {e}")))?
            }
            None => Ok(None),
        }
    };
    let (log, loaded) = tokio::join!(log, load);
    let (log, loaded) = (log?, loaded?);
    let mut state = match loaded {
        Some((lsn, state)) => {
            report.snapshot_lsn = Some(lsn);
            state
        }
        None => BrokerState::new(mapper.clone()),
    };
    let after = state.last_lsn();
    if log.last_lsn().0 < after {
        return Err(BootError::LogBehindSnapshot {
            snapshot: after,
            log_end: log.last_lsn().0,
        });
    }
    let mut apply = |lsn: Lsn, bytes: bytes::Bytes| -> Result<(), String> {
        let entry = decode_entry(&bytes).map_err(|e| e.to_string())?;
        state.apply(lsn.0, entry).map_err(|e| e.to_string())
    };
    let replay = log.replay(Lsn(after), &mut apply).await?;
    report.replayed = replay.records;
    report.last_lsn = replay.last.0.max(after);
    report.tasks = state.task_count();
    report.elapsed = started.elapsed();
    info!(
        snapshot_lsn = ?report.snapshot_lsn,
        replayed = report.replayed,
        last_lsn = report.last_lsn,
        tasks = report.tasks,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "state recovered"
    );
    Ok((log, state, report))
}

/// Reads and decodes the newest valid snapshot of `store`, if any: (its position, the state).
/// The snapshot is decoded as it is decompressed, on a thread of its own for a large one, so
/// that the decompression overlaps the building of the state and the decompressed bytes are
/// never held whole. A snapshot whose body turns out damaged while it is read is skipped for
/// the one before, as one that fails its checksum is.
///
/// # Errors
/// [`BootError::SnapshotStore`] when the snapshot files cannot be read,
/// [`BootError::Snapshot`] when the newest valid one cannot be decoded.
pub fn load_snapshot(
    store: &SnapshotStore,
    mapper: Arc<dyn GroupMapper>,
) -> Result<Option<(u64, BrokerState)>, BootError> {
    let decode = |reader: SnapshotReader<'static>| {
        let (lsn, len) = (reader.lsn().0, reader.len());
        decode_snapshot_from(reader, len, mapper.clone())
            .map_err(|source| BootError::Snapshot { lsn, source })
    };
    let damage = |e: &BootError| match e {
        BootError::Snapshot {
            source: ContentError::Read(e),
            ..
        } if e.kind() == std::io::ErrorKind::InvalidData => Some(e.to_string()),
        _ => None,
    };
    let Some((lsn, state)) = store.read_latest(decode, damage)? else {
        return Ok(None);
    };
    info!(lsn = lsn.0, tasks = state.task_count(), "snapshot loaded");
    Ok(Some((lsn.0, state)))
}
