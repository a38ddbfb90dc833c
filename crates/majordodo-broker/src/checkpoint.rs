//! Snapshots of the running broker (checkpoints).
//!
//! The dispatcher takes a copy-on-write copy of its state between two rounds (one pointer per
//! task: the only pause it takes), then a blocking
//! thread encodes the copy, writes it through the [`SnapshotStore`] (temp file, fsync, rename,
//! directory fsync) and lets the log drop what the older retained snapshot no longer needs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use majordodo_core::BrokerState;
use majordodo_log::{CommitLog, Lsn, SnapshotStore};
use majordodo_proto::snapshot::encode_snapshot;
use tracing::{info, warn};

use crate::handle::BrokerError;

/// Takes snapshots, one at a time.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    store: Arc<SnapshotStore>,
    busy: Arc<AtomicBool>,
    /// Log position of the last snapshot written (or found at boot), 0 for none.
    last: Arc<AtomicU64>,
}

impl Checkpointer {
    /// `last`: position of the newest snapshot the broker booted from, if any.
    pub(crate) fn new(store: Arc<SnapshotStore>, last: Option<u64>) -> Checkpointer {
        Checkpointer {
            store,
            busy: Arc::new(AtomicBool::new(false)),
            last: Arc::new(AtomicU64::new(last.unwrap_or(0))),
        }
    }

    /// Log position of the newest snapshot written or loaded (0 for none).
    pub(crate) fn last(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }

    /// Whether a snapshot is being written.
    pub(crate) fn busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// Starts a snapshot of `state` (cloned now); the future resolves with its log position.
    ///
    /// # Errors
    /// [`BrokerError::Overloaded`] when a snapshot is already being written.
    pub(crate) fn start(
        &mut self,
        state: &BrokerState,
        log: Option<Arc<dyn CommitLog>>,
    ) -> Result<impl Future<Output = Result<u64, BrokerError>> + Send + 'static, BrokerError> {
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err(BrokerError::Overloaded(
                "a snapshot is already being written",
            ));
        }
        let started = Instant::now();
        let copy = state.snapshot_source();
        let cloned_in = started.elapsed();
        let store = self.store.clone();
        let busy = self.busy.clone();
        let last = self.last.clone();
        Ok(async move {
            let lsn = copy.header.lsn;
            let tasks = copy.tasks.len();
            let written = tokio::task::spawn_blocking(move || {
                let bytes = encode_snapshot(&copy);
                drop(copy);
                store
                    .write(Lsn(lsn), &bytes)
                    .map(|info| (info, store.release_point()))
            })
            .await;
            let result = match written {
                Ok(Ok((info, release))) => {
                    info!(
                        lsn,
                        tasks,
                        bytes = info.file_len,
                        clone_ms = cloned_in.as_millis() as u64,
                        total_ms = started.elapsed().as_millis() as u64,
                        "snapshot written"
                    );
                    last.fetch_max(lsn, Ordering::AcqRel);
                    match (release, log) {
                        (Ok(Some(point)), Some(log)) => {
                            if let Err(e) = log.release_before(point).await {
                                warn!(error = %e, "could not release old log segments");
                            }
                        }
                        (Ok(_), _) => {}
                        (Err(e), _) => warn!(error = %e, "could not list snapshots"),
                    }
                    Ok(lsn)
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "snapshot failed");
                    Err(BrokerError::Snapshot(e.to_string()))
                }
                Err(e) => Err(BrokerError::Snapshot(format!("snapshot task failed: {e}"))),
            };
            busy.store(false, Ordering::Release);
            result
        })
    }
}
