//! The ledger writer: pipelined appends acknowledged in order, explicit LAC when idle, close,
//! and the "close at the last-add-confirmed" reaction to a failing bookie.
//!
//! Life of an append:
//! 1. `append` assigns the next entry id in call order and, while fewer than the outstanding
//!    window are on the wire, packages the entry (with the current LAC and cumulative length)
//!    and submits it to each bookie of its write set; otherwise it waits in a queue.
//! 2. Bookie replies arrive through [`ReplySink::deliver`]. An entry is quorum-complete when
//!    `Qa` distinct bookies of its write set answered EOK.
//! 3. While the oldest outstanding entry is quorum-complete it is popped, the LAC advances to
//!    it and its caller is answered: completion is strictly in entry order.
//! 4. When nothing is outstanding and the LAC moved since it was last sent (inside an entry or
//!    by WRITE_LAC), a WRITE_LAC goes to every bookie of the ensemble so that tailing readers
//!    see it.
//!
//! On the first failed reply (timeout, lost connection, error status) the writer stops sending,
//! waits until the oldest outstanding entry is decided (complete, or impossible because more than
//! `Qw - Qa` of its write set failed), then closes the ledger at its LAC with a compare-and-set on
//! the metadata. Every append not acknowledged by then fails with `LedgerClosed`, naming the
//! LAC and the cause, so the caller can roll to a new ledger. An EFENCED reply, or finding the
//! metadata in recovery or closed by someone else, fails everything with `Fenced` and leaves the
//! metadata untouched.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;
use tokio::sync::oneshot;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::bookie::{BookieConnection, Reply, ReplySink, Sink};
use crate::client::ClientInner;
use crate::digest::{self, Digester};
use crate::error::{BkError, BookieStatus};
use crate::frame;
use crate::metadata::{LedgerMetadata, LedgerState};
use crate::metastore::CasOutcome;
use crate::quorum::Schedule;

/// Compare-and-set attempts when closing; each retry follows a concurrent metadata change,
/// which for a single-writer ledger means at most a recoverer's one or two writes.
const MAX_CLOSE_ATTEMPTS: usize = 8;

/// Tag bit marking a WRITE_LAC reply (the rest of a tag is `entry << 8 | ensemble index`).
const LAC_TAG: u64 = 1 << 63;

fn tag(entry_id: i64, index: usize) -> u64 {
    ((entry_id as u64) << 8 | index as u64) & !LAC_TAG
}

/// An append waiting for its acknowledgement.
struct Outstanding {
    entry_id: i64,
    /// Cumulative ledger length including this entry.
    length: i64,
    /// Write set, as a mask of ensemble indices.
    write_set: u64,
    /// Ensemble indices that acknowledged.
    acked: u64,
    /// Ensemble indices that failed.
    failed: u64,
    done: Option<oneshot::Sender<Result<i64, BkError>>>,
}

/// An append waiting for room in the outstanding window.
struct Queued {
    data: Bytes,
    done: oneshot::Sender<Result<i64, BkError>>,
}

enum Phase {
    /// Accepting and sending appends.
    Open,
    /// No new sends (unless `flush` because the caller asked to close); close once the oldest
    /// outstanding entry is decided.
    Draining {
        cause: Option<Arc<BkError>>,
        flush: bool,
    },
    /// The metadata close is running.
    Closing { cause: Option<Arc<BkError>> },
    /// Closed at `lac`.
    Closed {
        lac: i64,
        cause: Option<Arc<BkError>>,
    },
    /// Another client fenced the ledger.
    Fenced,
    /// The metadata close failed; `close` may retry it.
    CloseFailed {
        cause: Option<Arc<BkError>>,
        error: BkError,
    },
}

struct State {
    phase: Phase,
    /// Id the next sent entry gets.
    next_entry_id: i64,
    /// Cumulative length of every sent entry.
    pushed_length: i64,
    /// Last add confirmed.
    lac: i64,
    /// Length of entries up to `lac`.
    confirmed_length: i64,
    /// Highest LAC bookies were told (in an entry header or by WRITE_LAC).
    lac_sent: i64,
    outstanding: VecDeque<Outstanding>,
    queued: VecDeque<Queued>,
    metadata: LedgerMetadata,
    version: i32,
    close_waiters: Vec<oneshot::Sender<Result<i64, BkError>>>,
}

struct Core {
    /// This core itself, to hand out as the reply sink of the requests it sends.
    me: Weak<Core>,
    client: Arc<ClientInner>,
    ledger_id: i64,
    schedule: Schedule,
    digester: Digester,
    master_key: Bytes,
    bookies: Vec<Arc<BookieConnection>>,
    state: Mutex<State>,
}

/// Writes one ledger. Appends are queued in call order and acknowledged in that order.
///
/// Dropping the writer without [`LedgerWriter::close`] leaves the ledger open: a reader then
/// recovers it with [`crate::OpenMode::Recovery`].
pub struct LedgerWriter {
    core: Arc<Core>,
}

impl std::fmt::Debug for LedgerWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerWriter")
            .field("ledger_id", &self.core.ledger_id)
            .finish_non_exhaustive()
    }
}

impl LedgerWriter {
    pub(crate) fn new(
        client: Arc<ClientInner>,
        ledger_id: i64,
        metadata: LedgerMetadata,
        version: i32,
        password: &[u8],
    ) -> LedgerWriter {
        let segment = metadata.last_segment();
        let bookies = client.pool.ensemble(&segment.bookies);
        let schedule = Schedule {
            ensemble: metadata.ensemble_size,
            write_quorum: metadata.write_quorum,
            ack_quorum: metadata.ack_quorum,
        };
        let digester = Digester::new(metadata.digest_type.unwrap_or_default(), password);
        let state = State {
            phase: Phase::Open,
            next_entry_id: 0,
            pushed_length: 0,
            lac: -1,
            confirmed_length: 0,
            lac_sent: -1,
            outstanding: VecDeque::new(),
            queued: VecDeque::new(),
            metadata,
            version,
            close_waiters: Vec::new(),
        };
        LedgerWriter {
            core: Arc::new_cyclic(|me| Core {
                me: me.clone(),
                client,
                ledger_id,
                schedule,
                digester,
                master_key: Bytes::copy_from_slice(&digest::master_key(password)),
                bookies,
                state: Mutex::new(state),
            }),
        }
    }

    /// The ledger id.
    pub fn ledger_id(&self) -> i64 {
        self.core.ledger_id
    }

    /// The last entry acknowledged by an ack quorum (with every entry before it); -1 if none.
    pub fn last_add_confirmed(&self) -> i64 {
        self.core.lock().lac
    }

    /// Appends not yet acknowledged (on the wire or queued).
    pub fn pending_appends(&self) -> usize {
        let state = self.core.lock();
        state.outstanding.len() + state.queued.len()
    }

    /// The metadata as this writer last wrote or read it.
    pub fn metadata(&self) -> LedgerMetadata {
        self.core.lock().metadata.clone()
    }

    /// Queues `data` as the next entry and returns a future resolving to its entry id once an
    /// ack quorum stored it and every earlier entry.
    ///
    /// The entry is queued when this function is called, not when the future is first polled,
    /// so entries keep the order of the calls. At most `max_outstanding_adds` entries are on
    /// the wire; later ones wait in the writer, up to `max_queued_adds` (beyond that the ledger
    /// is closed as after a failure).
    ///
    /// Errors: `LedgerClosed { last_add_confirmed, cause }` when a bookie failure made the
    /// writer close the ledger (roll to a new ledger and re-submit the unacknowledged data),
    /// `Fenced` when another client recovered the ledger, `InvalidArgument` for an entry
    /// larger than `max_entry_size`, `WriterClosed` after `close` or a failed close.
    pub fn append(
        &self,
        data: Bytes,
    ) -> impl Future<Output = Result<i64, BkError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        self.core.enqueue(data, tx);
        async move {
            match rx.await {
                Ok(result) => result,
                Err(_) => Err(BkError::ClientClosed),
            }
        }
    }

    /// Stops accepting appends, waits for those already made to be acknowledged or to fail,
    /// and closes the ledger at its last-add-confirmed. Returns that entry id (-1 if empty).
    ///
    /// Safe to call again: a closed writer returns the same result. Errors: `Fenced` when
    /// another client took over the ledger (the metadata is left alone), ZooKeeper errors
    /// (retry `close`).
    pub async fn close(&self) -> Result<i64, BkError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.core.lock();
            match &state.phase {
                Phase::Open => {
                    state.phase = Phase::Draining {
                        cause: None,
                        flush: true,
                    };
                    state.close_waiters.push(tx);
                    self.core.advance(&mut state);
                }
                Phase::Draining { .. } | Phase::Closing { .. } => state.close_waiters.push(tx),
                Phase::Closed { lac, .. } => return Ok(*lac),
                Phase::Fenced => {
                    return Err(BkError::Fenced {
                        ledger_id: self.core.ledger_id,
                    });
                }
                Phase::CloseFailed { cause, .. } => {
                    let cause = cause.clone();
                    state.phase = Phase::Closing { cause };
                    state.close_waiters.push(tx);
                    self.core.spawn_close(&state);
                }
            }
        }
        rx.await.unwrap_or(Err(BkError::ClientClosed))
    }
}

impl Core {
    fn me(&self) -> Arc<Core> {
        self.me
            .upgrade()
            .expect("a core is only reached through an Arc that keeps it alive")
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under this lock would be a bug here; the state is still consistent enough to
        // fail everything cleanly.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enqueue(&self, data: Bytes, done: oneshot::Sender<Result<i64, BkError>>) {
        let config = &self.client.config;
        if data.len() > config.max_entry_size {
            let error = BkError::InvalidArgument(format!(
                "entry of {} bytes exceeds the limit of {}",
                data.len(),
                config.max_entry_size
            ));
            drop(done.send(Err(error)));
            return;
        }
        let mut state = self.lock();
        match &state.phase {
            Phase::Open => {
                if state.queued.len() >= config.max_queued_adds {
                    let cause = BkError::WriterClosed {
                        ledger_id: self.ledger_id,
                        reason: format!("more than {} appends queued", config.max_queued_adds),
                    };
                    warn!(
                        ledger_id = self.ledger_id,
                        "append queue overflow, closing ledger"
                    );
                    state.phase = Phase::Draining {
                        cause: Some(Arc::new(cause)),
                        flush: false,
                    };
                    state.queued.push_back(Queued { data, done });
                    self.advance(&mut state);
                    return;
                }
                state.queued.push_back(Queued { data, done });
                self.advance(&mut state);
            }
            // The caller asked to close: nothing more is accepted.
            Phase::Draining { cause: None, .. } | Phase::Closing { cause: None } => {
                let error = BkError::WriterClosed {
                    ledger_id: self.ledger_id,
                    reason: "the ledger is being closed".to_string(),
                };
                drop(done.send(Err(error)));
            }
            // Closing after a failure: the final LAC is not known yet, these fail with it.
            Phase::Draining { .. } | Phase::Closing { .. } => {
                state.queued.push_back(Queued { data, done })
            }
            Phase::Closed { lac, cause } => {
                let error = BkError::LedgerClosed {
                    ledger_id: self.ledger_id,
                    last_add_confirmed: *lac,
                    cause: cause.clone(),
                };
                drop(done.send(Err(error)));
            }
            Phase::Fenced => drop(done.send(Err(BkError::Fenced {
                ledger_id: self.ledger_id,
            }))),
            Phase::CloseFailed { error, .. } => {
                let error = BkError::WriterClosed {
                    ledger_id: self.ledger_id,
                    reason: format!("closing the ledger failed: {error}"),
                };
                drop(done.send(Err(error)));
            }
        }
    }

    /// Sends queued entries while the window has room and the phase allows it.
    fn send_queued(&self, state: &mut State) {
        let window = self.client.config.max_outstanding_adds;
        loop {
            let may_send = match state.phase {
                Phase::Open => true,
                Phase::Draining { flush, .. } => flush,
                _ => false,
            };
            if !may_send || state.outstanding.len() >= window {
                return;
            }
            let Some(queued) = state.queued.pop_front() else {
                return;
            };
            self.send_entry(state, queued);
        }
    }

    fn send_entry(&self, state: &mut State, queued: Queued) {
        let entry_id = state.next_entry_id;
        state.next_entry_id += 1;
        state.pushed_length += queued.data.len() as i64;
        let body = self.digester.package_entry(
            self.ledger_id,
            entry_id,
            state.lac,
            state.pushed_length,
            &queued.data,
        );
        state.lac_sent = state.lac_sent.max(state.lac);
        state.outstanding.push_back(Outstanding {
            entry_id,
            length: state.pushed_length,
            write_set: self.schedule.write_set_mask(entry_id),
            acked: 0,
            failed: 0,
            done: Some(queued.done),
        });
        let timeout = self.client.config.request_timeout;
        for index in self.schedule.write_set(entry_id) {
            let sink = Sink::Callback(self.me(), tag(entry_id, index));
            let (ledger_id, key, body) = (self.ledger_id, self.master_key.clone(), body.clone());
            let build = move |txn| frame::add_request(txn, ledger_id, entry_id, key, body, false);
            if let Err((_, error)) = self.bookies[index].submit(build, "add", timeout, sink) {
                self.on_add_reply(state, entry_id, index, Err(error));
            }
        }
    }

    /// Records one bookie's answer to an add.
    fn on_add_reply(&self, state: &mut State, entry_id: i64, index: usize, reply: Reply) {
        let Some(front) = state.outstanding.front() else {
            return;
        };
        let Ok(position) = usize::try_from(entry_id - front.entry_id) else {
            return;
        };
        let Some(add) = state.outstanding.get_mut(position) else {
            return;
        };
        let bit = 1u64 << index;
        let failure = match reply {
            Ok(response) => match BookieStatus::from_code(response.effective_status()) {
                BookieStatus::Ok => {
                    add.acked |= bit;
                    None
                }
                BookieStatus::Fenced => {
                    self.fence(state);
                    return;
                }
                status => Some(BkError::from_status(
                    status,
                    self.bookies[index].bookie_id(),
                    self.ledger_id,
                    entry_id,
                )),
            },
            Err(error) => Some(error),
        };
        if let Some(error) = failure {
            add.failed |= bit;
            if matches!(state.phase, Phase::Open) {
                warn!(ledger_id = self.ledger_id, entry_id, bookie = self.bookies[index].bookie_id(), %error,
                    "add failed, closing ledger at its last-add-confirmed");
                state.phase = Phase::Draining {
                    cause: Some(Arc::new(error)),
                    flush: false,
                };
            } else if let Phase::Draining { flush, cause } = &mut state.phase {
                // A failure while flushing for close: stop sending more, keep the first cause.
                *flush = false;
                if cause.is_none() {
                    *cause = Some(Arc::new(error));
                }
            }
        }
    }

    /// Another client fenced the ledger: fail everything, never touch the metadata.
    fn fence(&self, state: &mut State) {
        if matches!(state.phase, Phase::Fenced) {
            return;
        }
        warn!(
            ledger_id = self.ledger_id,
            lac = state.lac,
            "ledger fenced by another client"
        );
        state.phase = Phase::Fenced;
        let error = BkError::Fenced {
            ledger_id: self.ledger_id,
        };
        self.fail_pending(state, &error);
        for waiter in state.close_waiters.drain(..) {
            drop(waiter.send(Err(error.clone())));
        }
    }

    fn fail_pending(&self, state: &mut State, error: &BkError) {
        for mut add in state.outstanding.drain(..) {
            if let Some(done) = add.done.take() {
                drop(done.send(Err(error.clone())));
            }
        }
        for queued in state.queued.drain(..) {
            drop(queued.done.send(Err(error.clone())));
        }
    }

    /// Completes what can be completed, refills the window, sends an explicit LAC when idle,
    /// and starts the close once a draining writer has decided its oldest entry.
    fn advance(&self, state: &mut State) {
        let qa = self.schedule.ack_quorum as u32;
        while let Some(front) = state.outstanding.front() {
            if front.acked.count_ones() < qa {
                break;
            }
            let mut add = state.outstanding.pop_front().expect("front exists");
            state.lac = add.entry_id;
            state.confirmed_length = add.length;
            if let Some(done) = add.done.take() {
                drop(done.send(Ok(add.entry_id)));
            }
        }
        // Sending may fail at once (a refused request) and start draining: decide after it.
        self.send_queued(state);
        let max_failures = (self.schedule.write_quorum - self.schedule.ack_quorum) as u32;
        let close_cause = match &state.phase {
            Phase::Open => {
                if self.client.config.explicit_lac
                    && state.outstanding.is_empty()
                    && state.queued.is_empty()
                    && state.lac > state.lac_sent
                {
                    self.send_explicit_lac(state);
                }
                None
            }
            Phase::Draining { cause, flush } => {
                let decided = match state.outstanding.front() {
                    None => state.queued.is_empty() || !*flush,
                    Some(front) => (front.failed & front.write_set).count_ones() > max_failures,
                };
                decided.then(|| cause.clone())
            }
            _ => None,
        };
        if let Some(cause) = close_cause {
            state.phase = Phase::Closing { cause };
            self.spawn_close(state);
        }
    }

    /// Sends WRITE_LAC to every bookie of the ensemble (not only the write set of the LAC, as
    /// Java does): a bookie wakes a waiting long poll only on the first change of its LAC, and
    /// drops the poll if that change does not exceed what the poller knows. Keeping every
    /// bookie's LAC current while the writer is idle makes the next change the one pollers
    /// wait for, so tailing readers see each new entry at once.
    fn send_explicit_lac(&self, state: &mut State) {
        let lac = state.lac;
        state.lac_sent = lac;
        let body = self.digester.encode_lac(self.ledger_id, lac);
        let timeout = self.client.config.request_timeout;
        for (index, bookie) in self.bookies.iter().enumerate() {
            let sink = Sink::Callback(self.me(), tag(lac, index) | LAC_TAG);
            let (ledger_id, key, body) = (self.ledger_id, self.master_key.clone(), body.clone());
            let build = move |txn| frame::write_lac_request(txn, ledger_id, lac, key, body);
            if let Err((_, error)) = bookie.submit(build, "write lac", timeout, sink) {
                debug!(ledger_id, lac, %error, "cannot send explicit lac");
            }
        }
    }

    /// Runs the metadata close in the background; its outcome settles every pending append.
    fn spawn_close(&self, state: &State) {
        let core = self.me();
        let (lac, length) = (state.lac, state.confirmed_length);
        let span = info_span!("close_ledger", ledger_id = self.ledger_id, lac);
        tokio::spawn(
            async move {
                let (metadata, version) = {
                    let state = core.lock();
                    (state.metadata.clone(), state.version)
                };
                let outcome = core.write_closed(metadata, version, lac, length).await;
                core.finish_close(outcome, lac);
            }
            .instrument(span),
        );
    }

    /// Compare-and-set loop writing CLOSED at `lac`.
    async fn write_closed(
        &self,
        mut metadata: LedgerMetadata,
        mut version: i32,
        lac: i64,
        length: i64,
    ) -> Result<(LedgerMetadata, i32), BkError> {
        let meta = &self.client.meta;
        let ledger_id = self.ledger_id;
        let ours = metadata.segments.clone();
        for _ in 0..MAX_CLOSE_ATTEMPTS {
            match metadata.state {
                LedgerState::InRecovery => return Err(BkError::Fenced { ledger_id }),
                LedgerState::Closed => {
                    if metadata.last_entry_id == lac && metadata.length == length {
                        return Ok((metadata, version));
                    }
                    return Err(BkError::Fenced { ledger_id });
                }
                LedgerState::Open if metadata.segments != ours => {
                    return Err(BkError::MetadataVersion {
                        ledger_id,
                        detail: "ensemble changed by another client".into(),
                    });
                }
                LedgerState::Open => {}
            }
            let mut closed = metadata.clone();
            closed.state = LedgerState::Closed;
            closed.last_entry_id = lac;
            closed.length = length;
            match meta.write_ledger(ledger_id, &closed, version).await? {
                CasOutcome::Written(new_version) => return Ok((closed, new_version)),
                CasOutcome::Conflict => {
                    (metadata, version) = meta.read_ledger(ledger_id).await?;
                }
            }
        }
        Err(BkError::MetadataVersion {
            ledger_id,
            detail: "metadata kept changing during close".into(),
        })
    }

    fn finish_close(&self, outcome: Result<(LedgerMetadata, i32), BkError>, lac: i64) {
        let mut state = self.lock();
        let cause = match &state.phase {
            Phase::Closing { cause } => cause.clone(),
            // Fenced meanwhile: everything already failed.
            _ => return,
        };
        match outcome {
            Ok((metadata, version)) => {
                info!(ledger_id = self.ledger_id, lac, "closed ledger");
                state.metadata = metadata;
                state.version = version;
                state.phase = Phase::Closed {
                    lac,
                    cause: cause.clone(),
                };
                let error = BkError::LedgerClosed {
                    ledger_id: self.ledger_id,
                    last_add_confirmed: lac,
                    cause,
                };
                self.fail_pending(&mut state, &error);
                for waiter in state.close_waiters.drain(..) {
                    drop(waiter.send(Ok(lac)));
                }
            }
            Err(BkError::Fenced { .. }) => self.fence(&mut state),
            Err(error) => {
                warn!(ledger_id = self.ledger_id, %error, "cannot close ledger");
                let pending_error = BkError::WriterClosed {
                    ledger_id: self.ledger_id,
                    reason: format!("closing the ledger failed: {error}"),
                };
                self.fail_pending(&mut state, &pending_error);
                for waiter in state.close_waiters.drain(..) {
                    drop(waiter.send(Err(error.clone())));
                }
                state.phase = Phase::CloseFailed { cause, error };
            }
        }
    }
}

impl ReplySink for Core {
    fn deliver(&self, tag: u64, reply: Reply) {
        if tag & LAC_TAG != 0 {
            let ok = matches!(&reply, Ok(r) if r.effective_status() == 0);
            if !ok {
                debug!(
                    ledger_id = self.ledger_id,
                    ?reply,
                    "explicit lac not stored"
                );
            }
            return;
        }
        let entry_id = (tag >> 8) as i64;
        let index = (tag & 0xff) as usize;
        let mut state = self.lock();
        self.on_add_reply(&mut state, entry_id, index, reply);
        self.advance(&mut state);
    }
}
