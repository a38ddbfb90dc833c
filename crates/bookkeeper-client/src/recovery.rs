//! Opening a ledger with recovery: fence the writer, recover the last entries, close.
//!
//! Steps:
//! 1. Mark the metadata IN_RECOVERY (compare-and-set; a CLOSED ledger needs nothing).
//! 2. Fence: a FENCE read of the last entry on every bookie of the last ensemble, until every
//!    write set is covered. From then on the old writer cannot gather an ack quorum anywhere.
//!    The highest LAC carried by the returned entries is the starting point.
//! 3. For each entry after it, read it from its write set (reads also fence). Found: re-add it
//!    with RECOVERY_ADD to its write set and wait for an ack quorum. Declared absent only when
//!    at least `Qw - Qa + 1` bookies of its write set say they do not have it; anything else
//!    (timeouts, errors) fails the recovery, which stays retryable because nothing is closed.
//! 4. Close the metadata at the recovered LAC; if someone else closed it first, their metadata
//!    is the truth.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tracing::{debug, info, instrument};

use crate::bookie::BookieConnection;
use crate::client::ClientInner;
use crate::digest::Digester;
use crate::error::{BkError, BookieStatus};
use crate::frame::{self, ReadKind};
use crate::metadata::{LedgerMetadata, LedgerState};
use crate::metastore::CasOutcome;
use crate::quorum::Schedule;
use crate::reader::verify_entry;

/// Compare-and-set attempts per metadata transition; conflicts only come from concurrent
/// recoverers or the old writer, a handful at most.
const MAX_CAS_ATTEMPTS: usize = 8;

struct Recovery<'a> {
    client: &'a ClientInner,
    ledger_id: i64,
    digester: &'a Digester,
    master_key: &'a Bytes,
    schedule: Schedule,
    /// Connections of each segment's ensemble with the segment's first entry, in order.
    ensembles: Vec<(i64, Vec<Arc<BookieConnection>>)>,
}

/// What the write set of one entry says about it.
enum Probe {
    Found { length: i64, payload: Bytes },
    Absent,
}

/// Recovers an open ledger and returns its closed metadata and znode version.
#[instrument(skip_all, fields(ledger_id))]
pub(crate) async fn recover(
    client: &ClientInner,
    ledger_id: i64,
    metadata: LedgerMetadata,
    version: i32,
    digester: &Digester,
    master_key: &Bytes,
) -> Result<(LedgerMetadata, i32), BkError> {
    let (metadata, version) = mark_in_recovery(client, ledger_id, metadata, version).await?;
    if metadata.is_closed() {
        return Ok((metadata, version));
    }
    let recovery = Recovery {
        client,
        ledger_id,
        digester,
        master_key,
        schedule: Schedule {
            ensemble: metadata.ensemble_size,
            write_quorum: metadata.write_quorum,
            ack_quorum: metadata.ack_quorum,
        },
        ensembles: metadata
            .segments
            .iter()
            .map(|s| (s.first_entry_id, client.pool.ensemble(&s.bookies)))
            .collect(),
    };
    let fenced_lac = recovery.fence().await?;
    let mut lac = fenced_lac.max(metadata.last_segment().first_entry_id - 1);
    let mut length_at_lac = None;
    info!(
        ledger_id,
        lac, "fenced ledger, recovering entries after lac"
    );
    loop {
        let entry_id = lac + 1;
        match recovery.probe(entry_id).await? {
            Probe::Absent => break,
            Probe::Found { length, payload } => {
                recovery.re_add(entry_id, lac, length, payload).await?;
                lac = entry_id;
                length_at_lac = Some(length);
            }
        }
    }
    let length = match length_at_lac {
        Some(length) => length,
        None if lac < 0 => 0,
        None => match recovery.probe(lac).await? {
            Probe::Found { length, .. } => length,
            Probe::Absent => {
                return Err(BkError::RecoveryFailed {
                    ledger_id,
                    reason: format!("confirmed entry {lac} is missing from its write set"),
                });
            }
        },
    };
    let closed = close_recovered(client, ledger_id, metadata, version, lac, length).await?;
    info!(
        ledger_id,
        last_entry_id = closed.0.last_entry_id,
        "recovered and closed ledger"
    );
    Ok(closed)
}

async fn mark_in_recovery(
    client: &ClientInner,
    ledger_id: i64,
    mut metadata: LedgerMetadata,
    mut version: i32,
) -> Result<(LedgerMetadata, i32), BkError> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        if metadata.state != LedgerState::Open {
            // Closed: nothing to do; in recovery: a previous recoverer stopped, continue its work.
            return Ok((metadata, version));
        }
        let mut marked = metadata.clone();
        marked.state = LedgerState::InRecovery;
        match client
            .meta
            .write_ledger(ledger_id, &marked, version)
            .await?
        {
            CasOutcome::Written(new_version) => return Ok((marked, new_version)),
            CasOutcome::Conflict => {
                (metadata, version) = client.meta.read_ledger(ledger_id).await?
            }
        }
    }
    Err(BkError::MetadataVersion {
        ledger_id,
        detail: "metadata kept changing while marking recovery".into(),
    })
}

async fn close_recovered(
    client: &ClientInner,
    ledger_id: i64,
    mut metadata: LedgerMetadata,
    mut version: i32,
    lac: i64,
    length: i64,
) -> Result<(LedgerMetadata, i32), BkError> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        match metadata.state {
            // Someone else finished first: the closed metadata is the only truth.
            LedgerState::Closed => return Ok((metadata, version)),
            LedgerState::Open => {
                return Err(BkError::MetadataVersion {
                    ledger_id,
                    detail: "ledger reopened during recovery".into(),
                });
            }
            LedgerState::InRecovery => {}
        }
        let mut closed = metadata.clone();
        closed.state = LedgerState::Closed;
        closed.last_entry_id = lac;
        closed.length = length;
        match client
            .meta
            .write_ledger(ledger_id, &closed, version)
            .await?
        {
            CasOutcome::Written(new_version) => return Ok((closed, new_version)),
            CasOutcome::Conflict => {
                (metadata, version) = client.meta.read_ledger(ledger_id).await?
            }
        }
    }
    Err(BkError::MetadataVersion {
        ledger_id,
        detail: "metadata kept changing while closing".into(),
    })
}

impl Recovery<'_> {
    /// The ensemble storing `entry_id`.
    fn ensemble_for(&self, entry_id: i64) -> &[Arc<BookieConnection>] {
        let position = self
            .ensembles
            .iter()
            .rposition(|(first, _)| *first <= entry_id)
            .unwrap_or(0);
        &self.ensembles[position].1
    }

    fn timeout(&self) -> std::time::Duration {
        self.client.config.request_timeout
    }

    /// Fences every bookie of the ensemble until covered; returns the highest LAC the last
    /// entries carry (-1 when no bookie has an entry).
    async fn fence(&self) -> Result<i64, BkError> {
        let (ledger_id, timeout) = (self.ledger_id, self.timeout());
        let last = &self
            .ensembles
            .last()
            .expect("validated metadata has a segment")
            .1;
        let mut replies: FuturesUnordered<_> = last
            .iter()
            .enumerate()
            .map(|(index, conn)| {
                let conn = conn.clone();
                let key = self.master_key.clone();
                async move {
                    let build = |txn| frame::read_request(txn, ledger_id, -1, ReadKind::Fence(key));
                    (index, conn.call(build, "fence read", timeout).await, conn)
                }
            })
            .collect();
        let mut answered = 0u64;
        let mut lac = -1i64;
        let mut last_error = None;
        while let Some((index, reply, conn)) = replies.next().await {
            let outcome = reply.and_then(|response| {
                match BookieStatus::from_code(response.effective_status()) {
                    BookieStatus::Ok => {
                        let body = crate::bookie::read_body(&response).unwrap_or_default();
                        if body.is_empty() {
                            return Ok(-1);
                        }
                        let entry =
                            verify_entry(self.digester, ledger_id, None, &body, conn.bookie_id())?;
                        Ok(entry.last_add_confirmed)
                    }
                    BookieStatus::NoEntry | BookieStatus::NoLedger => Ok(-1),
                    status => Err(BkError::from_status(
                        status,
                        conn.bookie_id(),
                        ledger_id,
                        -1,
                    )),
                }
            });
            match outcome {
                Ok(candidate) => {
                    answered |= 1 << index;
                    lac = lac.max(candidate);
                    if self.schedule.is_covered(answered) {
                        return Ok(lac);
                    }
                }
                Err(error @ BkError::Unauthorized { .. }) => return Err(error),
                Err(error) => {
                    debug!(bookie = conn.bookie_id(), %error, "fence read failed");
                    last_error = Some(error);
                }
            }
        }
        Err(BkError::RecoveryFailed {
            ledger_id,
            reason: match last_error {
                Some(error) => format!("cannot fence enough bookies: {error}"),
                None => "cannot fence enough bookies".into(),
            },
        })
    }

    /// Asks the whole write set of `entry_id` (fencing reads) whether it holds the entry.
    async fn probe(&self, entry_id: i64) -> Result<Probe, BkError> {
        let (ledger_id, timeout) = (self.ledger_id, self.timeout());
        let mut replies: FuturesUnordered<_> = self
            .schedule
            .write_set(entry_id)
            .map(|index| {
                let conn = self.ensemble_for(entry_id)[index].clone();
                let key = self.master_key.clone();
                async move {
                    let build =
                        |txn| frame::read_request(txn, ledger_id, entry_id, ReadKind::Fence(key));
                    (conn.call(build, "recovery read", timeout).await, conn)
                }
            })
            .collect();
        let mut absent = 0usize;
        let mut last_error = None;
        while let Some((reply, conn)) = replies.next().await {
            let outcome = reply.and_then(|response| {
                match BookieStatus::from_code(response.effective_status()) {
                    BookieStatus::Ok => {
                        let body = crate::bookie::read_body(&response).unwrap_or_default();
                        let entry = verify_entry(
                            self.digester,
                            ledger_id,
                            Some(entry_id),
                            &body,
                            conn.bookie_id(),
                        )?;
                        Ok(Some(entry))
                    }
                    BookieStatus::NoEntry | BookieStatus::NoLedger => Ok(None),
                    status => Err(BkError::from_status(
                        status,
                        conn.bookie_id(),
                        ledger_id,
                        entry_id,
                    )),
                }
            });
            match outcome {
                Ok(Some(entry)) => {
                    return Ok(Probe::Found {
                        length: entry.length,
                        payload: entry.payload,
                    });
                }
                Ok(None) => absent += 1,
                Err(error @ BkError::Unauthorized { .. }) => return Err(error),
                Err(error) => {
                    debug!(bookie = conn.bookie_id(), entry_id, %error, "recovery read failed");
                    last_error = Some(error);
                }
            }
        }
        if absent >= self.schedule.absent_threshold() {
            return Ok(Probe::Absent);
        }
        Err(BkError::RecoveryFailed {
            ledger_id,
            reason: match last_error {
                Some(error) => format!("cannot decide whether entry {entry_id} exists: {error}"),
                None => format!("cannot decide whether entry {entry_id} exists"),
            },
        })
    }

    /// Writes a recovered entry back to its write set with RECOVERY_ADD, waiting for Qa acks.
    async fn re_add(
        &self,
        entry_id: i64,
        lac: i64,
        length: i64,
        payload: Bytes,
    ) -> Result<(), BkError> {
        let (ledger_id, timeout) = (self.ledger_id, self.timeout());
        let body = self
            .digester
            .package_entry(ledger_id, entry_id, lac, length, &payload);
        let mut replies: FuturesUnordered<_> = self
            .schedule
            .write_set(entry_id)
            .map(|index| {
                let conn = self.ensemble_for(entry_id)[index].clone();
                let (key, body) = (self.master_key.clone(), body.clone());
                async move {
                    let build = |txn| frame::add_request(txn, ledger_id, entry_id, key, body, true);
                    (conn.call(build, "recovery add", timeout).await, conn)
                }
            })
            .collect();
        let (mut acks, mut last_error) = (0usize, None);
        while let Some((reply, conn)) = replies.next().await {
            let outcome = reply.and_then(|response| {
                match BookieStatus::from_code(response.effective_status()) {
                    BookieStatus::Ok => Ok(()),
                    status => Err(BkError::from_status(
                        status,
                        conn.bookie_id(),
                        ledger_id,
                        entry_id,
                    )),
                }
            });
            match outcome {
                Ok(()) => {
                    acks += 1;
                    if acks >= self.schedule.ack_quorum {
                        return Ok(());
                    }
                }
                Err(error @ BkError::Unauthorized { .. }) => return Err(error),
                Err(error) => {
                    debug!(bookie = conn.bookie_id(), entry_id, %error, "recovery add failed");
                    last_error = Some(error);
                }
            }
        }
        Err(BkError::RecoveryFailed {
            ledger_id,
            reason: match last_error {
                Some(error) => format!("cannot re-replicate entry {entry_id}: {error}"),
                None => format!("cannot re-replicate entry {entry_id}"),
            },
        })
    }
}
