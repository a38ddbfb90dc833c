//! Reading a ledger: last-add-confirmed with the coverage rule, entry ranges with fallback to
//! other replicas, long-poll for new entries, and a tailer that follows a ledger until it is
//! closed.
//!
//! An open ledger is never read beyond its last-add-confirmed: an entry above it may exist on
//! some bookie and still be dropped by recovery.

use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, FuturesUnordered, Stream, StreamExt, TryStreamExt};
use tokio::time::Instant;
use tracing::{debug, instrument};

use crate::bookie::{BookieConnection, read_body};
use crate::client::ClientInner;
use crate::digest::{DecodeError, DecodedEntry, Digester};
use crate::error::{BkError, BookieStatus};
use crate::frame::{self, ReadKind};
use crate::metadata::LedgerMetadata;
use crate::quorum::Schedule;

/// Entries read concurrently by one range read: enough to hide round trips, bounded so a huge
/// range does not flood the bookies.
const MAX_PARALLEL_READS: usize = 64;

/// Entries a tailer reads per batch once it knows they are confirmed.
const TAIL_BATCH: i64 = 256;

/// First pause before long-polling again a bookie that does not know the ledger yet (no entry
/// reached it): short, because the first entry should reach a tailer within tens of
/// milliseconds.
const POLL_RETRY_MIN: Duration = Duration::from_millis(4);

/// Longest pause between such polls, keeping an idle tailer of an empty ledger to a few dozen
/// requests per second per bookie while still seeing the first entry quickly.
const POLL_RETRY_MAX: Duration = Duration::from_millis(32);

/// Extra time the client waits for a long poll beyond what the bookie may hold it.
const LONG_POLL_MARGIN: Duration = Duration::from_secs(2);

/// One entry of a ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    /// The ledger.
    pub ledger_id: i64,
    /// The entry id.
    pub entry_id: i64,
    /// The payload.
    pub data: Bytes,
}

/// The answer of a long poll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LongPoll {
    /// The last-add-confirmed now known (not above the previous one when the poll timed out).
    pub last_add_confirmed: i64,
    /// Entry `previous + 1`, when the bookie attached it.
    pub entry: Option<LedgerEntry>,
}

struct ReaderState {
    metadata: LedgerMetadata,
    version: i32,
    lac: i64,
    /// Connections of each segment's ensemble, in segment order.
    ensembles: Vec<Vec<Arc<BookieConnection>>>,
}

struct ReaderCore {
    client: Arc<ClientInner>,
    ledger_id: i64,
    digester: Digester,
    state: Mutex<ReaderState>,
}

/// Reads one ledger. Cheap to clone.
#[derive(Clone)]
pub struct LedgerReader {
    core: Arc<ReaderCore>,
}

impl std::fmt::Debug for LedgerReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerReader")
            .field("ledger_id", &self.core.ledger_id)
            .finish_non_exhaustive()
    }
}

/// Checks a returned entry: digest, ledger id, and entry id unless `expected_entry` is `None`.
pub(crate) fn verify_entry(
    digester: &Digester,
    ledger_id: i64,
    expected_entry: Option<i64>,
    body: &Bytes,
    bookie: &str,
) -> Result<DecodedEntry, BkError> {
    let entry_hint = expected_entry.unwrap_or(-1);
    let decoded = digester.decode_entry(body).map_err(|e| match e {
        DecodeError::DigestMismatch => BkError::DigestMismatch {
            ledger_id,
            entry_id: entry_hint,
        },
        DecodeError::TooShort => BkError::Protocol {
            bookie: bookie.to_string(),
            detail: format!("entry {entry_hint} of ledger {ledger_id} is truncated"),
        },
    })?;
    if decoded.ledger_id != ledger_id || expected_entry.is_some_and(|e| e != decoded.entry_id) {
        return Err(BkError::Protocol {
            bookie: bookie.to_string(),
            detail: format!(
                "asked for entry {entry_hint} of ledger {ledger_id}, got entry {} of ledger {}",
                decoded.entry_id, decoded.ledger_id
            ),
        });
    }
    Ok(decoded)
}

/// Whether an error only says "this bookie does not have it".
pub(crate) fn is_absent(error: &BkError) -> bool {
    matches!(error, BkError::NoSuchEntry { .. })
}

/// Picks the error to report after every replica failed: a real failure over "absent".
pub(crate) fn worse(current: Option<BkError>, new: BkError) -> Option<BkError> {
    match current {
        Some(current) if !is_absent(&current) => Some(current),
        _ => Some(new),
    }
}

/// Status of a read response mapped to an error, or the response's body when EOK.
fn read_outcome(
    response: &crate::proto::Response,
    bookie: &str,
    ledger_id: i64,
    entry_id: i64,
) -> Result<Option<Bytes>, BkError> {
    match BookieStatus::from_code(response.effective_status()) {
        BookieStatus::Ok => Ok(read_body(response)),
        status => Err(BkError::from_status(status, bookie, ledger_id, entry_id)),
    }
}

impl LedgerReader {
    pub(crate) fn new(
        client: Arc<ClientInner>,
        ledger_id: i64,
        metadata: LedgerMetadata,
        version: i32,
        digester: Digester,
    ) -> LedgerReader {
        let ensembles = metadata
            .segments
            .iter()
            .map(|s| client.pool.ensemble(&s.bookies))
            .collect();
        let lac = if metadata.is_closed() {
            metadata.last_entry_id
        } else {
            -1
        };
        LedgerReader {
            core: Arc::new(ReaderCore {
                client,
                ledger_id,
                digester,
                state: Mutex::new(ReaderState {
                    metadata,
                    version,
                    lac,
                    ensembles,
                }),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ReaderState> {
        self.core.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ledger id.
    pub fn ledger_id(&self) -> i64 {
        self.core.ledger_id
    }

    /// The metadata as last read.
    pub fn metadata(&self) -> LedgerMetadata {
        self.lock().metadata.clone()
    }

    /// Whether the ledger was closed when its metadata was last read.
    pub fn is_closed(&self) -> bool {
        self.lock().metadata.is_closed()
    }

    /// The highest entry known to be readable: the last entry of a closed ledger, else the
    /// last-add-confirmed learnt so far (-1 if none).
    pub fn last_add_confirmed(&self) -> i64 {
        self.lock().lac
    }

    fn raise_lac(&self, lac: i64) {
        let mut state = self.lock();
        if !state.metadata.is_closed() && lac > state.lac {
            state.lac = lac;
        }
    }

    /// Re-reads the metadata (to learn that the ledger was closed). Returns whether it is
    /// closed.
    pub async fn refresh_metadata(&self) -> Result<bool, BkError> {
        let (metadata, version) = self
            .core
            .client
            .meta
            .read_ledger(self.core.ledger_id)
            .await?;
        Ok(self.apply_metadata(metadata, version))
    }

    /// Re-reads the metadata and returns a future that completes when it changes next.
    async fn refresh_and_watch(&self) -> Result<BoxFuture<'static, ()>, BkError> {
        let (metadata, version, changed) = self
            .core
            .client
            .meta
            .watch_ledger(self.core.ledger_id)
            .await?;
        self.apply_metadata(metadata, version);
        Ok(changed)
    }

    /// Adopts metadata read at `version` unless newer metadata is already known; returns
    /// whether the ledger is closed.
    fn apply_metadata(&self, metadata: LedgerMetadata, version: i32) -> bool {
        let mut state = self.lock();
        if version >= state.version {
            if metadata.segments != state.metadata.segments {
                state.ensembles = metadata
                    .segments
                    .iter()
                    .map(|s| self.core.client.pool.ensemble(&s.bookies))
                    .collect();
            }
            if metadata.is_closed() {
                state.lac = metadata.last_entry_id;
            }
            state.metadata = metadata;
            state.version = version;
        }
        state.metadata.is_closed()
    }

    fn schedule(metadata: &LedgerMetadata) -> Schedule {
        Schedule {
            ensemble: metadata.ensemble_size,
            write_quorum: metadata.write_quorum,
            ack_quorum: metadata.ack_quorum,
        }
    }

    /// Asks the bookies of the current ensemble for the last-add-confirmed (READ_LAC), and
    /// returns it once every write set is covered. A closed ledger answers from its metadata.
    ///
    /// Errors: `Unauthorized`, or the last bookie error when coverage cannot be reached.
    #[instrument(skip(self), fields(ledger_id = self.core.ledger_id))]
    pub async fn read_last_add_confirmed(&self) -> Result<i64, BkError> {
        let (schedule, conns) = {
            let state = self.lock();
            if state.metadata.is_closed() {
                return Ok(state.lac);
            }
            let last = state.ensembles.last().cloned().unwrap_or_default();
            (Self::schedule(&state.metadata), last)
        };
        let ledger_id = self.core.ledger_id;
        let timeout = self.core.client.config.request_timeout;
        let mut replies: FuturesUnordered<_> = conns
            .iter()
            .enumerate()
            .map(|(index, conn)| {
                let conn = conn.clone();
                async move {
                    let reply = conn
                        .call(
                            |txn| frame::read_lac_request(txn, ledger_id),
                            "read lac",
                            timeout,
                        )
                        .await;
                    (index, conn, reply)
                }
            })
            .collect();
        let mut answered = 0u64;
        let mut best = -1i64;
        let mut last_error = None;
        while let Some((index, conn, reply)) = replies.next().await {
            match self.lac_candidate(&conn, reply) {
                Ok(candidate) => {
                    answered |= 1 << index;
                    best = best.max(candidate);
                    if schedule.is_covered(answered) {
                        self.raise_lac(best);
                        return Ok(self.last_add_confirmed());
                    }
                }
                Err(error @ BkError::Unauthorized { .. }) => return Err(error),
                Err(error) => {
                    debug!(bookie = conn.bookie_id(), %error, "read lac failed");
                    last_error = Some(error);
                }
            }
        }
        Err(last_error
            .unwrap_or_else(|| BkError::InvalidArgument("ledger has an empty ensemble".into())))
    }

    /// The LAC one READ_LAC reply vouches for (-1 when the bookie has nothing).
    fn lac_candidate(
        &self,
        conn: &BookieConnection,
        reply: crate::bookie::Reply,
    ) -> Result<i64, BkError> {
        let ledger_id = self.core.ledger_id;
        let response = reply?;
        match BookieStatus::from_code(response.effective_status()) {
            BookieStatus::Ok => {}
            BookieStatus::NoEntry | BookieStatus::NoLedger => return Ok(-1),
            status => {
                return Err(BkError::from_status(
                    status,
                    conn.bookie_id(),
                    ledger_id,
                    -1,
                ));
            }
        }
        let Some(lac) = response.read_lac_response else {
            return Err(BkError::Protocol {
                bookie: conn.bookie_id().to_string(),
                detail: "read lac without body".into(),
            });
        };
        let mut candidate = -1;
        if let Some(blob) = &lac.lac_body {
            let (blob_ledger, value) =
                self.core
                    .digester
                    .decode_lac(blob)
                    .map_err(|_| BkError::DigestMismatch {
                        ledger_id,
                        entry_id: -1,
                    })?;
            if blob_ledger != ledger_id {
                return Err(BkError::Protocol {
                    bookie: conn.bookie_id().to_string(),
                    detail: format!("lac record of ledger {blob_ledger}"),
                });
            }
            candidate = candidate.max(value);
        }
        if let Some(body) = &lac.last_entry_body {
            let entry = verify_entry(&self.core.digester, ledger_id, None, body, conn.bookie_id())?;
            candidate = candidate.max(entry.last_add_confirmed);
        }
        Ok(candidate)
    }

    /// Reads the entries in `range`, in order. Each entry comes from the first replica of its
    /// write set that answers with a valid entry; a replica that fails, or does not answer
    /// within the speculative timeout, is backed up by the next.
    ///
    /// Errors: `NoSuchEntry` when the range goes beyond the last-add-confirmed (after asking the
    /// bookies once) or no replica has an entry, `DigestMismatch`, bookie errors.
    #[instrument(skip(self), fields(ledger_id = self.core.ledger_id))]
    pub async fn read(&self, range: RangeInclusive<i64>) -> Result<Vec<LedgerEntry>, BkError> {
        let (first, last) = (*range.start(), *range.end());
        let ledger_id = self.core.ledger_id;
        if first < 0 || first > last {
            return Err(BkError::InvalidArgument(format!(
                "invalid entry range {first}..={last}"
            )));
        }
        if last > self.last_add_confirmed() && !self.is_closed() {
            self.read_last_add_confirmed().await?;
        }
        if last > self.last_add_confirmed() {
            return Err(BkError::NoSuchEntry {
                ledger_id,
                entry_id: last,
            });
        }
        stream::iter(first..=last)
            .map(|entry_id| self.read_entry(entry_id))
            .buffered(MAX_PARALLEL_READS)
            .try_collect()
            .await
    }

    /// Reads one entry known to be confirmed.
    async fn read_entry(&self, entry_id: i64) -> Result<LedgerEntry, BkError> {
        let (replicas, ledger_id) = {
            let state = self.lock();
            let metadata = &state.metadata;
            let position = metadata
                .segments
                .iter()
                .rposition(|s| s.first_entry_id <= entry_id)
                .unwrap_or(0);
            let ensemble = &state.ensembles[position];
            let replicas: Vec<_> = Self::schedule(metadata)
                .write_set(entry_id)
                .map(|i| ensemble[i].clone())
                .collect();
            (replicas, self.core.ledger_id)
        };
        let config = &self.core.client.config;
        let timeout = config.request_timeout;
        let speculative = config.speculative_read_timeout;
        let mut in_flight = FuturesUnordered::new();
        let mut next_replica = 0usize;
        let mut error: Option<BkError> = None;
        let launch = |conn: Arc<BookieConnection>| async move {
            let reply = conn
                .call(
                    |txn| frame::read_request(txn, ledger_id, entry_id, ReadKind::Plain),
                    "read",
                    timeout,
                )
                .await;
            (conn, reply)
        };
        in_flight.push(launch(replicas[0].clone()));
        next_replica += 1;
        loop {
            let backup = tokio::time::sleep(speculative);
            tokio::select! {
                finished = in_flight.next() => {
                    let Some((conn, reply)) = finished else { break };
                    match self.entry_from_reply(&conn, entry_id, reply) {
                        Ok(entry) => return Ok(entry),
                        Err(e) => {
                            debug!(bookie = conn.bookie_id(), entry_id, error = %e, "read from replica failed");
                            error = worse(error, e);
                            if next_replica < replicas.len() {
                                in_flight.push(launch(replicas[next_replica].clone()));
                                next_replica += 1;
                            } else if in_flight.is_empty() {
                                break;
                            }
                        }
                    }
                }
                _ = backup, if next_replica < replicas.len() => {
                    in_flight.push(launch(replicas[next_replica].clone()));
                    next_replica += 1;
                }
            }
        }
        Err(error.unwrap_or(BkError::NoSuchEntry {
            ledger_id,
            entry_id,
        }))
    }

    fn entry_from_reply(
        &self,
        conn: &BookieConnection,
        entry_id: i64,
        reply: crate::bookie::Reply,
    ) -> Result<LedgerEntry, BkError> {
        let ledger_id = self.core.ledger_id;
        let response = reply?;
        let body =
            read_outcome(&response, conn.bookie_id(), ledger_id, entry_id)?.ok_or_else(|| {
                BkError::Protocol {
                    bookie: conn.bookie_id().to_string(),
                    detail: "read answer without entry".into(),
                }
            })?;
        if let Some(max_lac) = response.read_response.as_ref().and_then(|r| r.max_lac) {
            self.raise_lac(max_lac);
        }
        let entry = verify_entry(
            &self.core.digester,
            ledger_id,
            Some(entry_id),
            &body,
            conn.bookie_id(),
        )?;
        Ok(LedgerEntry {
            ledger_id,
            entry_id,
            data: entry.payload,
        })
    }

    /// Waits until the last-add-confirmed exceeds `previous` or `timeout` passes. Returns at
    /// once when the answer is already known locally.
    ///
    /// Every bookie of the current ensemble is polled at once and the first answer showing
    /// progress wins. A single poll is not enough: a bookie wakes a waiting poll only on the
    /// first change of its LAC after the poll arrived, and drops the poll (until it times out)
    /// when that change does not exceed `previous`, which happens whenever that bookie was
    /// lagging. A bookie that does not know the ledger yet is asked again, backing off from
    /// 4 ms to 32 ms, until the deadline.
    ///
    /// Errors: `NoSuchEntry` when no bookie knows the ledger (nothing written yet), bookie
    /// errors when every bookie failed, `Unauthorized`.
    pub async fn read_lac_long_poll(
        &self,
        previous: i64,
        timeout: Duration,
    ) -> Result<LongPoll, BkError> {
        let ensemble = {
            let state = self.lock();
            if state.metadata.is_closed() || state.lac > previous {
                return Ok(LongPoll {
                    last_add_confirmed: state.lac,
                    entry: None,
                });
            }
            state.ensembles.last().cloned().unwrap_or_default()
        };
        let deadline = Instant::now() + timeout;
        let mut polls: FuturesUnordered<_> = ensemble
            .into_iter()
            .map(|conn| self.poll_bookie(conn, previous, deadline))
            .collect();
        let mut timed_out = false;
        let mut error = None;
        while let Some(outcome) = polls.next().await {
            match outcome {
                Ok(poll) if poll.last_add_confirmed > previous || poll.entry.is_some() => {
                    self.raise_lac(poll.last_add_confirmed);
                    return Ok(LongPoll {
                        last_add_confirmed: self.last_add_confirmed().max(poll.last_add_confirmed),
                        entry: poll.entry,
                    });
                }
                Ok(_) => timed_out = true,
                Err(e @ BkError::Unauthorized { .. }) => return Err(e),
                Err(e) => error = worse(error, e),
            }
        }
        if timed_out {
            return Ok(LongPoll {
                last_add_confirmed: self.last_add_confirmed(),
                entry: None,
            });
        }
        Err(error.unwrap_or(BkError::NoSuchEntry {
            ledger_id: self.core.ledger_id,
            entry_id: previous + 1,
        }))
    }

    /// Long-polls one bookie until it shows progress, times out, fails, or `deadline` passes;
    /// re-asks (with backoff) while it does not know the ledger.
    async fn poll_bookie(
        &self,
        conn: Arc<BookieConnection>,
        previous: i64,
        deadline: Instant,
    ) -> Result<LongPoll, BkError> {
        let ledger_id = self.core.ledger_id;
        let mut retry = POLL_RETRY_MIN;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let timeout_ms = i64::try_from(remaining.as_millis())
                .unwrap_or(i64::MAX)
                .max(1);
            let kind = ReadKind::LongPoll {
                previous_lac: previous,
                timeout_ms,
            };
            let reply = conn
                .call(
                    |txn| frame::read_request(txn, ledger_id, -1, kind),
                    "long poll",
                    remaining + LONG_POLL_MARGIN,
                )
                .await;
            match self.long_poll_outcome(&conn, previous, reply) {
                Err(e) if is_absent(&e) && Instant::now() + retry < deadline => {
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(POLL_RETRY_MAX);
                }
                Err(e) => {
                    debug!(bookie = conn.bookie_id(), error = %e, "long poll failed");
                    return Err(e);
                }
                Ok(poll) => return Ok(poll),
            }
        }
    }

    fn long_poll_outcome(
        &self,
        conn: &BookieConnection,
        previous: i64,
        reply: crate::bookie::Reply,
    ) -> Result<LongPoll, BkError> {
        let ledger_id = self.core.ledger_id;
        let response = reply?;
        let body = read_outcome(&response, conn.bookie_id(), ledger_id, previous + 1)?;
        let read = response.read_response.as_ref();
        let max_lac = read.and_then(|r| r.max_lac).unwrap_or(previous);
        let mut entry = None;
        match (body, read) {
            (Some(body), Some(read)) if read.entry_id == previous + 1 && !body.is_empty() => {
                let decoded = verify_entry(
                    &self.core.digester,
                    ledger_id,
                    Some(previous + 1),
                    &body,
                    conn.bookie_id(),
                )?;
                if max_lac > previous {
                    entry = Some(LedgerEntry {
                        ledger_id,
                        entry_id: previous + 1,
                        data: decoded.payload,
                    });
                }
            }
            _ => {}
        }
        Ok(LongPoll {
            last_add_confirmed: max_lac,
            entry,
        })
    }

    /// A tailer returning every entry from `from` on, waiting for new ones, until the ledger is
    /// closed and fully read.
    pub fn tail(&self, from: i64) -> Tailer {
        Tailer {
            reader: self.clone(),
            next: from.max(0),
            ready: Default::default(),
            metadata_changed: None,
        }
    }
}

/// Follows a ledger: see [`LedgerReader::tail`].
///
/// It long-polls the bookies for new entries and keeps a ZooKeeper watch on the ledger's
/// metadata, so it sees the ledger closed as soon as that happens.
pub struct Tailer {
    reader: LedgerReader,
    next: i64,
    ready: std::collections::VecDeque<LedgerEntry>,
    /// Completes when the ledger's metadata changes; `None` until armed (or after it fired).
    metadata_changed: Option<BoxFuture<'static, ()>>,
}

impl std::fmt::Debug for Tailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tailer")
            .field("ledger_id", &self.reader.ledger_id())
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl Tailer {
    /// The id of the next entry this tailer returns.
    pub fn next_entry_id(&self) -> i64 {
        self.next
    }

    /// The next entry, waiting for it if needed; `None` once the ledger is closed and every
    /// entry was returned. An error leaves the tailer usable: call again to retry.
    pub async fn next(&mut self) -> Result<Option<LedgerEntry>, BkError> {
        let poll_timeout = self.reader.core.client.config.long_poll_timeout;
        loop {
            if let Some(entry) = self.ready.pop_front() {
                self.next = entry.entry_id + 1;
                return Ok(Some(entry));
            }
            let lac = self.reader.last_add_confirmed();
            if self.next <= lac {
                let last = lac.min(self.next + TAIL_BATCH - 1);
                self.ready = self.reader.read(self.next..=last).await?.into();
                continue;
            }
            if self.reader.is_closed() {
                return Ok(None);
            }
            let Some(metadata_changed) = self.metadata_changed.as_mut() else {
                // (Re-)read the metadata with a watch: it may be closed by now.
                self.metadata_changed = Some(self.reader.refresh_and_watch().await?);
                continue;
            };
            tokio::select! {
                outcome = self.reader.read_lac_long_poll(self.next - 1, poll_timeout) => match outcome {
                    Ok(poll) => self.ready.extend(poll.entry),
                    // Nothing written yet: poll again (each poll lasts up to its timeout).
                    Err(error) if is_absent(&error) => {}
                    Err(error) => return Err(error),
                },
                _ = metadata_changed => self.metadata_changed = None,
            }
        }
    }

    /// The tailer as a stream of entries; it ends after the last entry of a closed ledger, and
    /// after the first error.
    pub fn into_stream(self) -> impl Stream<Item = Result<LedgerEntry, BkError>> + Send {
        stream::unfold(Some(self), |tailer| async move {
            let mut tailer = tailer?;
            match tailer.next().await {
                Ok(Some(entry)) => Some((Ok(entry), Some(tailer))),
                Ok(None) => None,
                Err(error) => Some((Err(error), None)),
            }
        })
    }
}
