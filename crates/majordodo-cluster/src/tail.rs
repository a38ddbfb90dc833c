//! [`LogFollower`]: how a follower reads the log while the leader writes it.
//!
//! It opens the ledger holding its next position without recovery (the writer is not
//! disturbed), tails it with long-poll reads, and when the ledger is closed (by its writer
//! rolling, or by a new leader's recovery) moves to the next ledger of the list, waiting on a
//! watch of the list when the next one is not published yet.

use std::time::Duration;

use bookkeeper_client::{BookKeeper, OpenMode, Tailer};
use bytes::Bytes;
use majordodo_log::{LogError, Lsn};
use tracing::debug;

use crate::bklog::entry_holding;
use crate::coord::Coordinator;
use crate::error::bk_to_log;

/// Pause before retrying after a failed read, so an unreachable bookie is not hammered.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Reads the log from a position on, following the leader; see the module documentation.
pub struct LogFollower {
    bk: BookKeeper,
    coord: Coordinator,
    password: Vec<u8>,
    /// The next position to hand out.
    next: u64,
    /// The ledger being tailed.
    current: Option<(i64, Tailer)>,
}

impl std::fmt::Debug for LogFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFollower")
            .field("next", &self.next)
            .field("ledger", &self.current.as_ref().map(|(id, _)| *id))
            .finish_non_exhaustive()
    }
}

impl LogFollower {
    /// A follower that hands out the records after `after`.
    pub fn new(bk: BookKeeper, coord: Coordinator, password: Vec<u8>, after: Lsn) -> LogFollower {
        LogFollower {
            bk,
            coord,
            password,
            next: after.0 + 1,
            current: None,
        }
    }

    /// The position of the next record [`LogFollower::next`] returns.
    pub fn next_lsn(&self) -> Lsn {
        Lsn(self.next)
    }

    /// The ledger being tailed, if one is open.
    pub fn ledger(&self) -> Option<i64> {
        self.current.as_ref().map(|(id, _)| *id)
    }

    /// The next records (those of one ledger entry), waiting for the leader to write them.
    /// Cancel-safe between entries: dropping the future loses nothing not yet returned.
    ///
    /// # Errors
    /// [`LogError::Released`] when the ledgers holding the next position were dropped (boot
    /// from a newer snapshot); [`LogError::Corrupt`] when the ledgers skip positions or hold
    /// something else; [`LogError::Backend`] on BookKeeper or ZooKeeper failures (retryable:
    /// call again).
    pub async fn next(&mut self) -> Result<Vec<(Lsn, Bytes)>, LogError> {
        loop {
            if self.current.is_none() {
                self.open_next().await?;
                continue;
            }
            let (ledger, tailer) = self.current.as_mut().expect("checked above");
            let ledger = *ledger;
            match tailer.next().await {
                Ok(Some(entry)) => {
                    let decoded = majordodo_proto::cluster::decode_ledger_entry(&entry.data)
                        .map_err(|e| LogError::Corrupt {
                            file: format!("ledger {ledger}"),
                            offset: entry.entry_id.max(0) as u64,
                            reason: e.to_string(),
                        })?;
                    if decoded.first_lsn > self.next {
                        return Err(LogError::Corrupt {
                            file: format!("ledger {ledger}"),
                            offset: entry.entry_id.max(0) as u64,
                            reason: format!(
                                "entry starts at position {}, expected {}",
                                decoded.first_lsn, self.next
                            ),
                        });
                    }
                    let out: Vec<(Lsn, Bytes)> = decoded
                        .records
                        .into_iter()
                        .enumerate()
                        .map(|(i, r)| (Lsn(decoded.first_lsn + i as u64), r))
                        .filter(|(lsn, _)| lsn.0 >= self.next)
                        .collect();
                    if let Some((last, _)) = out.last() {
                        self.next = last.0 + 1;
                        return Ok(out);
                    }
                }
                Ok(None) => {
                    debug!(
                        ledger,
                        next = self.next,
                        "ledger closed and read; moving on"
                    );
                    self.current = None;
                    self.wait_successor(ledger).await?;
                }
                Err(e) if e.is_retryable() => {
                    debug!(ledger, error = %e, "tail read failed; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => return Err(bk_to_log(&format!("tail ledger {ledger}"), e)),
            }
        }
    }

    /// Opens the ledger holding the next position, positioned at the entry holding it.
    async fn open_next(&mut self) -> Result<(), LogError> {
        let (listed, changed) = self.coord.watch_ledgers().await?;
        let ledgers: Vec<(i64, i64, u64)> = listed.info.ledgers().collect();
        let Some(first) = ledgers.first() else {
            changed.await; // nothing written yet
            return Ok(());
        };
        if self.next < first.2 {
            return Err(LogError::Released {
                after: Lsn(self.next - 1),
                first: Lsn(first.2),
            });
        }
        let index = ledgers
            .iter()
            .rposition(|(_, _, start)| *start <= self.next)
            .expect("the first ledger starts at or before the next position");
        let (id, _, start) = ledgers[index];
        let reader = self
            .bk
            .open_ledger(id, &self.password, OpenMode::NoRecovery)
            .await
            .map_err(|e| bk_to_log(&format!("open ledger {id}"), e))?;
        let lac = reader.last_add_confirmed();
        let from = if self.next > start && lac >= 0 {
            entry_holding(&reader, self.next, lac).await?
        } else {
            0
        };
        debug!(ledger = id, entry = from, next = self.next, "tailing");
        self.current = Some((id, reader.tail(from)));
        Ok(())
    }

    /// Waits until a ledger after `ledger` is listed.
    async fn wait_successor(&mut self, ledger: i64) -> Result<(), LogError> {
        loop {
            let (listed, changed) = self.coord.watch_ledgers().await?;
            let ids = &listed.info.active_ledgers;
            match ids.iter().position(|id| *id == ledger) {
                Some(i) if i + 1 < ids.len() => return Ok(()),
                Some(_) => changed.await,
                // Dropped from the list meanwhile: the position decides what comes next.
                None => return Ok(()),
            }
        }
    }
}
