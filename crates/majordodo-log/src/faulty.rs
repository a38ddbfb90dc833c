//! [`FaultyLog`]: wraps any [`CommitLog`] and makes it fail on purpose, for tests.
//!
//! A [`FaultSchedule`] says which append fails (the Nth one, or the one that takes the record
//! count past N, or the next one on command), what happens to its records ([`FaultMode`]), and
//! how long appends are delayed. A schedule can be drawn from a seed, which is printed so that a
//! failing run can be replayed with `MAJORDODO_FAULT_SEED=<seed>`.
//!
//! The wrapper keeps the contract of [`CommitLog`]: the injected failure fails the log (every
//! later append fails with [`LogError::Closed`]), and futures still resolve in call order even
//! with random delays. It spawns one tokio task per append, so it must be used inside a tokio
//! runtime; delays use tokio time, so paused test time drives them.

use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::oneshot;

use crate::{AppendFuture, Appended, BoxFuture, CommitLog, LogError, Lsn, ReplayFn, ReplayReport};

/// Environment variable that fixes the seed of [`FaultSchedule::random_from_env`].
pub const FAULT_SEED_ENV: &str = "MAJORDODO_FAULT_SEED";

/// Appends after which a random schedule fails at the latest: keeps seeded test runs short.
const RANDOM_FAIL_WITHIN: u64 = 64;
/// Largest delay a random schedule draws: long enough to reorder completions if the wrapper did
/// not keep them in order, short enough for quick tests.
const RANDOM_MAX_DELAY: Duration = Duration::from_millis(3);

/// What an injected failure does with the records of the append that fails.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum FaultMode {
    /// The records never reach the inner log, like a write that failed before storing anything.
    #[default]
    Lost,
    /// The records reach the inner log and become durable, yet the append fails, like an fsync
    /// whose outcome is unknown. Contract point 3 allows a later replay to return them.
    Written,
}

/// When a [`FaultyLog`] fails and how it delays appends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultSchedule {
    /// Fail the Nth append (counting from 1 since the wrapper was made).
    pub fail_append: Option<u64>,
    /// Fail the append that would take the number of records appended above N.
    pub fail_after_records: Option<u64>,
    /// What happens to the records of the failing append.
    pub mode: FaultMode,
    /// Each append completes after an extra delay drawn uniformly up to this (zero: none).
    pub max_delay: Duration,
    /// Seed of the delays, and of the whole schedule when it was drawn at random.
    pub seed: u64,
}

impl FaultSchedule {
    /// A schedule that never fails and never delays (faults can still be commanded).
    pub fn none() -> FaultSchedule {
        FaultSchedule::default()
    }

    /// Fails the `n`th append.
    pub fn fail_append(n: u64) -> FaultSchedule {
        FaultSchedule {
            fail_append: Some(n),
            ..FaultSchedule::default()
        }
    }

    /// Fails the append that would take the number of records appended above `n`.
    pub fn fail_after_records(n: u64) -> FaultSchedule {
        FaultSchedule {
            fail_after_records: Some(n),
            ..FaultSchedule::default()
        }
    }

    /// Sets what happens to the failing append's records.
    pub fn with_mode(mut self, mode: FaultMode) -> FaultSchedule {
        self.mode = mode;
        self
    }

    /// Delays every append by up to `max_delay`, drawn from `seed`.
    pub fn with_delays(mut self, max_delay: Duration, seed: u64) -> FaultSchedule {
        self.max_delay = max_delay;
        self.seed = seed;
        self
    }

    /// A schedule drawn from `seed`: one failure within the first 64 appends (by append or by
    /// record count, in either mode) and random delays of up to 3 ms. Prints the seed.
    pub fn random(seed: u64) -> FaultSchedule {
        eprintln!("fault schedule seed {seed} (replay with {FAULT_SEED_ENV}={seed})");
        tracing::info!(seed, "random fault schedule");
        let mut rng = StdRng::seed_from_u64(seed);
        let at = rng.random_range(1..=RANDOM_FAIL_WITHIN);
        let by_records = rng.random_bool(0.5);
        let mode = if rng.random_bool(0.5) {
            FaultMode::Lost
        } else {
            FaultMode::Written
        };
        FaultSchedule {
            fail_append: (!by_records).then_some(at),
            fail_after_records: by_records.then_some(at),
            mode,
            max_delay: RANDOM_MAX_DELAY,
            seed,
        }
    }

    /// [`FaultSchedule::random`] with the seed from `MAJORDODO_FAULT_SEED` if set (and valid),
    /// otherwise a fresh one.
    pub fn random_from_env() -> FaultSchedule {
        let seed = std::env::var(FAULT_SEED_ENV)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(rand::random);
        FaultSchedule::random(seed)
    }
}

/// Wraps a [`CommitLog`] and injects failures and delays; see the module documentation.
pub struct FaultyLog<L> {
    inner: L,
    state: Mutex<FaultState>,
}

struct FaultState {
    schedule: FaultSchedule,
    rng: StdRng,
    /// Appends seen (those too large for the inner log are not counted).
    appends: u64,
    /// Records of appends passed on.
    records: u64,
    /// Set by [`FaultyLog::fail_next_append`].
    fail_next: bool,
    /// Whether a failure was injected: every later append fails.
    failed: bool,
    /// Signalled once the previous append's future has its result, so that results are handed
    /// out in call order whatever the delays.
    previous: Option<oneshot::Receiver<()>>,
}

/// What happens to one append.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Fate {
    Pass,
    Inject(FaultMode),
    AlreadyFailed,
}

impl<L: CommitLog> FaultyLog<L> {
    /// Wraps `inner` with `schedule`.
    pub fn new(inner: L, schedule: FaultSchedule) -> FaultyLog<L> {
        let rng = StdRng::seed_from_u64(schedule.seed);
        FaultyLog {
            inner,
            state: Mutex::new(FaultState {
                schedule,
                rng,
                appends: 0,
                records: 0,
                fail_next: false,
                failed: false,
                previous: None,
            }),
        }
    }

    /// The wrapped log.
    pub fn inner(&self) -> &L {
        &self.inner
    }

    /// Unwraps the log (to close or crash it as its own type).
    pub fn into_inner(self) -> L {
        self.inner
    }

    /// Makes the next append fail, in the schedule's mode.
    pub fn fail_next_append(&self) {
        self.lock().fail_next = true;
    }

    /// Whether a failure has been injected.
    pub fn has_failed(&self) -> bool {
        self.lock().failed
    }

    fn lock(&self) -> MutexGuard<'_, FaultState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn injected() -> LogError {
    LogError::Io {
        context: "append (fault injected by FaultyLog)".to_string(),
        source: io::Error::other("injected fault"),
    }
}

impl<L: CommitLog> CommitLog for FaultyLog<L> {
    fn append(&self, records: Vec<Bytes>) -> AppendFuture {
        let limit = self.inner.max_record_size();
        if records.iter().any(|r| r.len() > limit) {
            // Size errors are the inner log's to report; they are not faults.
            return self.inner.append(records);
        }
        let mut state = self.lock();
        state.appends += 1;
        let count = records.len() as u64;
        let fate = if state.failed {
            Fate::AlreadyFailed
        } else if state.fail_next
            || state.schedule.fail_append == Some(state.appends)
            || state
                .schedule
                .fail_after_records
                .is_some_and(|n| state.records + count > n)
        {
            state.failed = true;
            Fate::Inject(state.schedule.mode)
        } else {
            Fate::Pass
        };
        if fate == Fate::Pass {
            state.records += count;
        }
        let delay = if state.schedule.max_delay.is_zero() {
            Duration::ZERO
        } else {
            let max = u64::try_from(state.schedule.max_delay.as_micros()).unwrap_or(u64::MAX);
            Duration::from_micros(state.rng.random_range(0..=max))
        };
        let previous = state.previous.take();
        let (turn_tx, turn_rx) = oneshot::channel();
        state.previous = Some(turn_rx);
        // The inner append is made now, under the lock, so call order stays log order.
        let inner = match fate {
            Fate::Pass | Fate::Inject(FaultMode::Written) => Some(self.inner.append(records)),
            Fate::Inject(FaultMode::Lost) | Fate::AlreadyFailed => None,
        };
        drop(state);
        let (result_tx, result_rx) = oneshot::channel();
        tokio::spawn(async move {
            let outcome = match inner {
                Some(append) => append.await,
                None => Ok(Appended {
                    first: Lsn::ZERO,
                    last: Lsn::ZERO,
                }),
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if let Some(previous) = previous {
                // An error means the previous task is gone; its turn is over either way.
                let _ = previous.await;
            }
            let result = match fate {
                Fate::Pass => outcome,
                Fate::Inject(_) => Err(injected()),
                Fate::AlreadyFailed => Err(LogError::Closed),
            };
            let _ = result_tx.send(result);
            let _ = turn_tx.send(());
        });
        result_rx
            .map(|r| r.unwrap_or(Err(LogError::Closed)))
            .boxed()
    }

    fn replay<'a>(
        &'a self,
        after: Lsn,
        f: &'a mut ReplayFn<'a>,
    ) -> BoxFuture<'a, Result<ReplayReport, LogError>> {
        self.inner.replay(after, f)
    }

    fn last_lsn(&self) -> Lsn {
        self.inner.last_lsn()
    }

    fn release_before(&self, lsn: Lsn) -> BoxFuture<'_, Result<(), LogError>> {
        self.inner.release_before(lsn)
    }

    fn max_record_size(&self) -> usize {
        self.inner.max_record_size()
    }

    fn ready(&self) -> BoxFuture<'_, ()> {
        self.inner.ready()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), LogError>> {
        self.inner.close()
    }
}
