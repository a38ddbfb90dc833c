//! The conformance suite every [`CommitLog`] implementation must pass.
//!
//! An implementation provides a [`LogBuilder`], which makes fresh storage and opens (or
//! reopens) a log on it, and calls [`run_all`] from a test:
//!
//! ```no_run
//! use majordodo_log::conformance::{LogBuilder, run_all};
//! use majordodo_log::{LogError, MemoryLog, MemoryStore};
//!
//! struct Builder;
//!
//! impl LogBuilder for Builder {
//!     type Log = MemoryLog;
//!     type Store = MemoryStore;
//!     async fn new_store(&self) -> MemoryStore {
//!         MemoryStore::new()
//!     }
//!     async fn open(&self, store: &MemoryStore) -> Result<MemoryLog, LogError> {
//!         Ok(MemoryLog::open(store))
//!     }
//!     async fn crash(&self, _store: &MemoryStore, log: MemoryLog) {
//!         drop(log);
//!     }
//! }
//!
//! // From a `#[tokio::test(flavor = "multi_thread")]`:
//! async fn memory_log_conforms() {
//!     run_all(Builder).await;
//! }
//! ```
//!
//! Each check names the contract point it covers; a failing check panics with its name. The
//! suite spawns tokio tasks (concurrent appenders, [`FaultyLog`]), so it runs inside a tokio
//! runtime, ideally a multi-threaded one. A random fault schedule prints its seed; set
//! `MAJORDODO_FAULT_SEED` to replay it.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::FutureExt;

use crate::{
    Appended, CommitLog, FaultMode, FaultSchedule, FaultyLog, LogError, Lsn, ReplayReport,
};

/// Makes storage for logs under test and opens logs on it.
pub trait LogBuilder: Send + Sync {
    /// The log under test.
    type Log: CommitLog;
    /// Where one log keeps its records (a directory, a shared memory store, a ledger list),
    /// so that it can be opened again.
    type Store: Send + Sync;

    /// Makes fresh, empty storage.
    fn new_store(&self) -> impl Future<Output = Self::Store> + Send;

    /// Opens the log on `store`. The first time it is empty; later it holds at least every
    /// record acknowledged before the previous log on it was closed or crashed.
    fn open(&self, store: &Self::Store)
    -> impl Future<Output = Result<Self::Log, LogError>> + Send;

    /// Abandons `log` the way a process crash would: no close, appends still queued may be
    /// lost, and what was not acknowledged may be damaged (a torn write). Once this resolves,
    /// `open` must succeed on `store`.
    fn crash(&self, store: &Self::Store, log: Self::Log) -> impl Future<Output = ()> + Send;
}

/// Runs every check against logs made by `builder`; panics on the first failure.
pub async fn run_all<B: LogBuilder>(builder: B) {
    let b = &builder;
    check(
        "lsns_are_dense_and_follow_call_order",
        lsns_are_dense_and_follow_call_order(b),
    )
    .await;
    check(
        "concurrent_appenders_keep_call_order",
        concurrent_appenders_keep_call_order(b),
    )
    .await;
    check(
        "futures_resolve_in_call_order",
        futures_resolve_in_call_order(b),
    )
    .await;
    check(
        "empty_batch_is_an_ordered_barrier",
        empty_batch_is_an_ordered_barrier(b),
    )
    .await;
    check(
        "max_size_record_is_accepted_and_larger_is_rejected",
        max_size_record_is_accepted_and_larger_is_rejected(b),
    )
    .await;
    check(
        "replay_after_any_lsn_returns_exactly_the_later_records",
        replay_after_any_lsn_returns_exactly_the_later_records(b),
    )
    .await;
    check(
        "replay_hands_each_record_exactly_once",
        replay_hands_each_record_exactly_once(b),
    )
    .await;
    check(
        "replay_stops_when_the_callback_refuses",
        replay_stops_when_the_callback_refuses(b),
    )
    .await;
    check(
        "replay_during_appends_returns_a_durable_prefix",
        replay_during_appends_returns_a_durable_prefix(b),
    )
    .await;
    check(
        "reopen_keeps_acknowledged_records",
        reopen_keeps_acknowledged_records(b),
    )
    .await;
    check(
        "close_flushes_queued_appends",
        close_flushes_queued_appends(b),
    )
    .await;
    check(
        "append_after_close_fails_with_closed",
        append_after_close_fails_with_closed(b),
    )
    .await;
    check(
        "crash_keeps_acknowledged_records",
        crash_keeps_acknowledged_records(b),
    )
    .await;
    check(
        "release_before_then_replay_and_reopen",
        release_before_then_replay_and_reopen(b),
    )
    .await;
    check(
        "ready_resolves_once_the_writer_drains",
        ready_resolves_once_the_writer_drains(b),
    )
    .await;
    check(
        "failed_append_fails_every_later_append",
        failed_append_fails_every_later_append(b, FaultMode::Lost),
    )
    .await;
    check(
        "failed_append_with_written_records_fails_every_later_append",
        failed_append_fails_every_later_append(b, FaultMode::Written),
    )
    .await;
    check(
        "failure_by_record_count_fails_the_crossing_append",
        failure_by_record_count_fails_the_crossing_append(b),
    )
    .await;
    check(
        "random_fault_schedule_keeps_the_contract",
        random_fault_schedule_keeps_the_contract(b),
    )
    .await;
}

async fn check(name: &str, test: impl Future<Output = ()>) {
    eprintln!("conformance: {name}");
    test.await;
}

/// A payload that names its tag, with a length derived from it (0 to 300 bytes).
fn payload(tag: u64) -> Bytes {
    let len = (tag.wrapping_mul(7919) % 301) as usize;
    let mut out = Vec::with_capacity(8 + len);
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend((0..len).map(|i| (tag as usize).wrapping_add(i) as u8));
    Bytes::from(out)
}

/// The tag of a payload made by [`payload`], checking that the payload is whole.
fn tag_of(lsn: Lsn, bytes: &Bytes) -> u64 {
    let tag_bytes = bytes
        .first_chunk::<8>()
        .unwrap_or_else(|| panic!("record {lsn} is shorter than its tag"));
    let tag = u64::from_le_bytes(*tag_bytes);
    assert_eq!(bytes, &payload(tag), "record {lsn} is not whole");
    tag
}

async fn open<B: LogBuilder>(b: &B, store: &B::Store) -> B::Log {
    b.open(store)
        .await
        .unwrap_or_else(|e| panic!("open log: {e}"))
}

async fn fresh<B: LogBuilder>(b: &B) -> (B::Store, B::Log) {
    let store = b.new_store().await;
    let log = open(b, &store).await;
    assert_eq!(log.last_lsn(), Lsn::ZERO, "a fresh log is empty");
    (store, log)
}

async fn append_ok(log: &impl CommitLog, records: Vec<Bytes>) -> Appended {
    let count = records.len();
    log.append(records)
        .await
        .unwrap_or_else(|e| panic!("append of {count} records: {e}"))
}

/// Replays everything after `after` into a vector.
async fn replay_all(
    log: &impl CommitLog,
    after: Lsn,
) -> Result<(Vec<(Lsn, Bytes)>, ReplayReport), LogError> {
    let mut out = Vec::new();
    let report = {
        let mut f = |lsn: Lsn, bytes: Bytes| {
            out.push((lsn, bytes));
            Ok(())
        };
        log.replay(after, &mut f).await?
    };
    assert_eq!(
        report.records,
        out.len() as u64,
        "report counts the records"
    );
    Ok((out, report))
}

/// Checks that `records` are exactly the records with tags `tags` at LSNs `after+1 ..`.
fn assert_records(records: &[(Lsn, Bytes)], after: Lsn, tags: &[u64]) {
    assert_eq!(records.len(), tags.len(), "number of records after {after}");
    for (i, ((lsn, bytes), tag)) in records.iter().zip(tags).enumerate() {
        assert_eq!(
            *lsn,
            Lsn(after.0 + 1 + i as u64),
            "records are dense and in order"
        );
        assert_eq!(
            tag_of(*lsn, bytes),
            *tag,
            "record {lsn} holds what was appended"
        );
    }
}

/// Contract 1: LSNs start at 1, are consecutive inside a batch and across calls.
async fn lsns_are_dense_and_follow_call_order<B: LogBuilder>(b: &B) {
    let (_store, log) = fresh(b).await;
    let mut tags = Vec::new();
    let mut next = 1;
    for batch in [1u64, 3, 1, 5, 2] {
        let batch_tags: Vec<u64> = (0..batch).map(|i| 100 + tags.len() as u64 + i).collect();
        let appended = append_ok(&log, batch_tags.iter().map(|t| payload(*t)).collect()).await;
        assert_eq!(
            appended,
            Appended {
                first: Lsn(next),
                last: Lsn(next + batch - 1)
            },
            "batch of {batch} gets the next consecutive LSNs"
        );
        assert!(
            log.last_lsn() >= appended.last,
            "last_lsn covers an acknowledged append"
        );
        next += batch;
        tags.extend(batch_tags);
    }
    assert_eq!(log.last_lsn(), Lsn(next - 1));
    let (records, report) = replay_all(&log, Lsn::ZERO).await.expect("replay");
    assert_records(&records, Lsn::ZERO, &tags);
    assert_eq!(report.last, Lsn(next - 1));
    log.close().await.expect("close");
}

/// Contract 1: appends racing from many tasks are logged in the order of the calls, each
/// batch on consecutive LSNs.
async fn concurrent_appenders_keep_call_order<B: LogBuilder>(b: &B) {
    const TASKS: u64 = 16;
    const APPENDS_PER_TASK: u64 = 25;
    let (_store, log) = fresh(b).await;
    let log = Arc::new(log);
    // The ticket lock makes call order observable: under it a task takes the next ticket and
    // calls `append`; the future is awaited outside it.
    let tickets = Arc::new(Mutex::new(0u64));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let log = Arc::clone(&log);
        let tickets = Arc::clone(&tickets);
        tasks.spawn(async move {
            let mut results = Vec::new();
            for i in 0..APPENDS_PER_TASK {
                let count = 1 + (task + i) % 3;
                let (ticket, future) = {
                    let mut next = tickets.lock().expect("ticket lock");
                    let ticket = *next;
                    *next += 1;
                    let records = (0..count).map(|k| payload(ticket * 4 + k)).collect();
                    (ticket, log.append(records))
                };
                let appended = future.await.expect("concurrent append");
                results.push((ticket, count, appended));
                tokio::task::yield_now().await;
            }
            results
        });
    }
    let mut results = Vec::new();
    while let Some(done) = tasks.join_next().await {
        results.extend(done.expect("appender task"));
    }
    results.sort_by_key(|(ticket, _, _)| *ticket);
    let mut next = 1;
    let mut tags = Vec::new();
    for (ticket, count, appended) in &results {
        assert_eq!(
            *appended,
            Appended {
                first: Lsn(next),
                last: Lsn(next + count - 1)
            },
            "append with ticket {ticket} follows the previous call"
        );
        next += count;
        tags.extend((0..*count).map(|k| ticket * 4 + k));
    }
    let (records, _) = replay_all(&*log, Lsn::ZERO).await.expect("replay");
    assert_records(&records, Lsn::ZERO, &tags);
    log.close().await.expect("close");
}

/// Awaits `futures` (in call order) so as to check contract 2: it awaits every `stride`-th one
/// first and then requires every earlier one to be resolved already. Returns the results in
/// call order.
async fn await_checking_order(
    futures: Vec<crate::AppendFuture>,
    stride: usize,
    what: &str,
) -> Vec<Result<Appended, LogError>> {
    let count = futures.len();
    let mut futures: Vec<Option<crate::AppendFuture>> = futures.into_iter().map(Some).collect();
    let mut results: Vec<Option<Result<Appended, LogError>>> = (0..count).map(|_| None).collect();
    let mut checkpoints: Vec<usize> = (stride.saturating_sub(1)..count)
        .step_by(stride.max(1))
        .collect();
    if checkpoints.last() != Some(&(count.saturating_sub(1))) && count > 0 {
        checkpoints.push(count - 1);
    }
    for checkpoint in checkpoints {
        let future = futures[checkpoint]
            .take()
            .expect("each future is awaited once");
        results[checkpoint] = Some(future.await);
        for (i, earlier) in futures[..checkpoint].iter_mut().enumerate() {
            if let Some(future) = earlier.take() {
                match future.now_or_never() {
                    Some(result) => results[i] = Some(result),
                    None => panic!("{what}: append {i} resolved after append {checkpoint}"),
                }
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.expect("every result was collected"))
        .collect()
}

/// Contract 2: once a future has resolved, every earlier one has too.
async fn futures_resolve_in_call_order<B: LogBuilder>(b: &B) {
    let (_store, log) = fresh(b).await;
    let mut tags = Vec::new();
    for (round, stride) in [40usize, 7, 3].into_iter().enumerate() {
        let round_tags: Vec<u64> = (0..40u64).map(|i| round as u64 * 100 + i).collect();
        let futures = round_tags
            .iter()
            .map(|t| log.append(vec![payload(*t)]))
            .collect();
        let results = await_checking_order(futures, stride, "futures_resolve_in_call_order").await;
        for (i, result) in results.into_iter().enumerate() {
            let appended = result.expect("append");
            assert_eq!(appended.first, Lsn(tags.len() as u64 + i as u64 + 1));
        }
        tags.extend(round_tags);
    }
    let (records, _) = replay_all(&log, Lsn::ZERO).await.expect("replay");
    assert_records(&records, Lsn::ZERO, &tags);
    log.close().await.expect("close");
}

/// Trait doc of `append`: an empty batch writes nothing, resolves in order with the last LSN
/// queued before it, and fails on a failed log.
async fn empty_batch_is_an_ordered_barrier<B: LogBuilder>(b: &B) {
    let (_store, log) = fresh(b).await;
    let empty = append_ok(&log, Vec::new()).await;
    assert_eq!(
        empty,
        Appended {
            first: Lsn::ZERO,
            last: Lsn::ZERO
        }
    );
    let first = log.append(vec![payload(1), payload(2)]);
    let barrier = log.append(Vec::new());
    let barrier = barrier.await.expect("empty append");
    assert_eq!(
        barrier,
        Appended {
            first: Lsn(2),
            last: Lsn(2)
        }
    );
    assert!(
        first.now_or_never().is_some(),
        "an empty append resolved before the append queued ahead of it"
    );
    assert_eq!(log.last_lsn(), Lsn(2), "an empty append adds no record");
    let next = append_ok(&log, vec![payload(3)]).await;
    assert_eq!(next.first, Lsn(3), "an empty append uses no LSN");
    let (records, _) = replay_all(&log, Lsn::ZERO).await.expect("replay");
    assert_records(&records, Lsn::ZERO, &[1, 2, 3]);
    log.close().await.expect("close");
}

/// Contract 6: the limit is inclusive, a larger record fails only its own append, and a batch
/// holding one is rejected whole.
async fn max_size_record_is_accepted_and_larger_is_rejected<B: LogBuilder>(b: &B) {
    let (store, log) = fresh(b).await;
    let max = log.max_record_size();
    let big = Bytes::from(vec![0xA5u8; max]);
    let appended = append_ok(&log, vec![big.clone()]).await;
    assert_eq!(appended.first, Lsn(1));
    match log.append(vec![Bytes::from(vec![0u8; max + 1])]).await {
        Err(LogError::RecordTooLarge { size, limit }) => {
            assert_eq!((size, limit), (max + 1, max));
        }
        other => panic!("a record of max + 1 bytes gave {other:?}"),
    }
    match log
        .append(vec![payload(5), Bytes::from(vec![0u8; max + 1])])
        .await
    {
        Err(LogError::RecordTooLarge { .. }) => {}
        other => panic!("a batch with an oversized record gave {other:?}"),
    }
    let after = append_ok(&log, vec![payload(6)]).await;
    assert_eq!(
        after.first,
        Lsn(2),
        "the log still works and no LSN was used by rejects"
    );
    log.close().await.expect("close");
    let log = open(b, &store).await;
    let (records, _) = replay_all(&log, Lsn::ZERO).await.expect("replay");
    assert_eq!(records.len(), 2);
    assert!(records[0].1 == big, "the max-size record comes back whole");
    assert_eq!(tag_of(Lsn(2), &records[1].1), 6);
    log.close().await.expect("close");
}

/// Contract 4: `replay(after)` returns exactly the records after `after`, for every `after`.
async fn replay_after_any_lsn_returns_exactly_the_later_records<B: LogBuilder>(b: &B) {
    let (_store, log) = fresh(b).await;
    let empty = replay_all(&log, Lsn::ZERO)
        .await
        .expect("replay of an empty log");
    assert_eq!(
        empty.1,
        ReplayReport {
            records: 0,
            last: Lsn::ZERO
        }
    );
    let mut tags = Vec::new();
    for batch in [4u64, 1, 7, 2, 6] {
        let batch_tags: Vec<u64> = (0..batch).map(|i| 1000 + tags.len() as u64 + i).collect();
        append_ok(&log, batch_tags.iter().map(|t| payload(*t)).collect()).await;
        tags.extend(batch_tags);
    }
    let last = tags.len() as u64;
    for after in 0..=last + 2 {
        let (records, report) = replay_all(&log, Lsn(after)).await.expect("replay");
        let expected = tags.get(after as usize..).unwrap_or_default();
        assert_records(&records, Lsn(after), expected);
        assert_eq!(report.last, Lsn(last), "report names the last record");
    }
    log.close().await.expect("close");
}

/// Contract 4: each record is handed over once per replay, and replays repeat.
async fn replay_hands_each_record_exactly_once<B: LogBuilder>(b: &B) {
    let (_store, log) = fresh(b).await;
    for i in 0..50u64 {
        append_ok(&log, vec![payload(i), payload(i + 1000)]).await;
    }
    let (first, _) = replay_all(&log, Lsn::ZERO).await.expect("replay");
    let distinct: HashSet<Lsn> = first.iter().map(|(lsn, _)| *lsn).collect();
    assert_eq!(
        distinct.len(),
        first.len(),
        "no record is handed over twice"
    );
    assert_eq!(first.len(), 100);
    let (second, _) = replay_all(&log, Lsn::ZERO).await.expect("replay again");
    assert_eq!(first, second, "a second replay hands over the same records");
    log.close().await.expect("close");
}

/// `ReplayFn`: a refusal stops the replay with `LogError::Replay` naming the record.
async fn replay_stops_when_the_callback_refuses<B: LogBuilder>(b: &B) {
    let (_store, log) = fresh(b).await;
    append_ok(&log, (1..=6).map(payload).collect()).await;
    let mut seen = Vec::new();
    let result = {
        let mut f = |lsn: Lsn, _bytes: Bytes| {
            seen.push(lsn);
            if lsn == Lsn(3) {
                Err("refused".to_string())
            } else {
                Ok(())
            }
        };
        log.replay(Lsn::ZERO, &mut f).await
    };
    match result {
        Err(LogError::Replay { lsn, reason }) => {
            assert_eq!(lsn, Lsn(3));
            assert_eq!(reason, "refused");
        }
        other => panic!("a refusing callback gave {other:?}"),
    }
    assert_eq!(
        seen,
        vec![Lsn(1), Lsn(2), Lsn(3)],
        "nothing is handed over after a refusal"
    );
    let (records, _) = replay_all(&log, Lsn::ZERO)
        .await
        .expect("replay after a refusal");
    assert_eq!(records.len(), 6);
    log.close().await.expect("close");
}

/// Contract 4 (followers): a replay running while appends go on hands over a dense prefix of
/// the log that includes everything acknowledged before it started.
async fn replay_during_appends_returns_a_durable_prefix<B: LogBuilder>(b: &B) {
    let (_store, log) = fresh(b).await;
    let log = Arc::new(log);
    let writer = {
        let log = Arc::clone(&log);
        tokio::spawn(async move {
            for i in 0..200u64 {
                log.append(vec![payload(i)])
                    .await
                    .expect("append while replaying");
            }
        })
    };
    let mut replays = 0;
    while !writer.is_finished() || replays == 0 {
        let acknowledged = log.last_lsn();
        let (records, report) = replay_all(&*log, Lsn::ZERO).await.expect("replay");
        assert!(
            report.last >= acknowledged,
            "replay covers what was durable at its start"
        );
        let tags: Vec<u64> = (0..records.len() as u64).collect();
        assert_records(&records, Lsn::ZERO, &tags);
        replays += 1;
        tokio::task::yield_now().await;
    }
    writer.await.expect("writer task");
    log.close().await.expect("close");
}

/// Contracts 2 and 4: records acknowledged before a close are there after a reopen, and new
/// appends follow them.
async fn reopen_keeps_acknowledged_records<B: LogBuilder>(b: &B) {
    let (store, log) = fresh(b).await;
    for i in 0..10u64 {
        append_ok(&log, vec![payload(i)]).await;
    }
    log.close().await.expect("close");
    let log = open(b, &store).await;
    assert_eq!(log.last_lsn(), Lsn(10));
    let (records, _) = replay_all(&log, Lsn::ZERO).await.expect("replay");
    assert_records(&records, Lsn::ZERO, &(0..10).collect::<Vec<_>>());
    let appended = append_ok(&log, vec![payload(10)]).await;
    assert_eq!(
        appended.first,
        Lsn(11),
        "appends after a reopen continue the LSNs"
    );
    log.close().await.expect("close");
    let log = open(b, &store).await;
    let (records, _) = replay_all(&log, Lsn::ZERO).await.expect("replay");
    assert_records(&records, Lsn::ZERO, &(0..11).collect::<Vec<_>>());
    log.close().await.expect("close");
}

/// `close`: what was queued before close is written and acknowledged.
async fn close_flushes_queued_appends<B: LogBuilder>(b: &B) {
    let (store, log) = fresh(b).await;
    let futures: Vec<_> = (0..20u64).map(|i| log.append(vec![payload(i)])).collect();
    log.close().await.expect("close");
    for (i, future) in futures.into_iter().enumerate() {
        let appended = future
            .await
            .unwrap_or_else(|e| panic!("append {i} queued before close: {e}"));
        assert_eq!(appended.first, Lsn(i as u64 + 1));
    }
    let log = open(b, &store).await;
    let (records, _) = replay_all(&log, Lsn::ZERO).await.expect("replay");
    assert_records(&records, Lsn::ZERO, &(0..20).collect::<Vec<_>>());
    log.close().await.expect("close");
}

/// `close`: later appends, empty ones included, fail with `Closed`.
async fn append_after_close_fails_with_closed<B: LogBuilder>(b: &B) {
    let (_store, log) = fresh(b).await;
    append_ok(&log, vec![payload(1)]).await;
    log.close().await.expect("close");
    assert!(matches!(
        log.append(vec![payload(2)]).await,
        Err(LogError::Closed)
    ));
    assert!(matches!(
        log.append(Vec::new()).await,
        Err(LogError::Closed)
    ));
    log.close().await.expect("a second close is harmless");
}

/// Contracts 2 and 3 across a crash: everything acknowledged survives; what was in flight is
/// either there whole, in order, or not at all, and nothing follows a missing record.
async fn crash_keeps_acknowledged_records<B: LogBuilder>(b: &B) {
    let (store, log) = fresh(b).await;
    for i in 0..20u64 {
        append_ok(&log, vec![payload(i)]).await;
    }
    let in_flight: Vec<_> = (20..60u64).map(|i| log.append(vec![payload(i)])).collect();
    b.crash(&store, log).await;
    let mut acknowledged = 20;
    for (i, future) in in_flight.into_iter().enumerate() {
        if let Some(Ok(_)) = future.now_or_never() {
            assert_eq!(acknowledged, 20 + i as u64, "acknowledgements are a prefix");
            acknowledged += 1;
        }
    }
    let log = open(b, &store).await;
    let last = log.last_lsn();
    assert!(
        last.0 >= acknowledged,
        "log ends at {last}, {acknowledged} were acknowledged"
    );
    assert!(last.0 <= 60, "no record appears that was never appended");
    let (records, _) = replay_all(&log, Lsn::ZERO)
        .await
        .expect("replay after a crash");
    assert_records(&records, Lsn::ZERO, &(0..last.0).collect::<Vec<_>>());
    let appended = append_ok(&log, vec![payload(last.0)]).await;
    assert_eq!(
        appended.first,
        last.next(),
        "appends continue after the recovered tail"
    );
    log.close().await.expect("close");
}

/// Contract 5: after `release_before(lsn)`, replays from `lsn` on still work, earlier ones
/// either work fully or fail with `Released`, and LSNs keep counting, across a reopen too.
async fn release_before_then_replay_and_reopen<B: LogBuilder>(b: &B) {
    let (store, log) = fresh(b).await;
    // Large enough records for a segmented log to have released something.
    let big = |tag: u64| {
        let mut bytes = payload(tag).to_vec();
        bytes.resize(2048, 0);
        let mut out = tag.to_le_bytes().to_vec();
        out.extend_from_slice(&bytes[8..]);
        Bytes::from(out)
    };
    for i in 0..100u64 {
        append_ok(&log, vec![big(i), big(i + 1000)]).await;
    }
    let released = Lsn(120);
    log.release_before(released).await.expect("release_before");
    assert_eq!(log.last_lsn(), Lsn(200), "release does not move the end");
    let check_after = |records: &[(Lsn, Bytes)], after: Lsn| {
        for (i, (lsn, bytes)) in records.iter().enumerate() {
            assert_eq!(*lsn, Lsn(after.0 + 1 + i as u64));
            assert!(bytes == &expected_big(*lsn, &big), "record {lsn} is intact");
        }
        assert_eq!(records.len() as u64, 200 - after.0);
    };
    for after in [120u64, 150, 199, 200] {
        let (records, _) = replay_all(&log, Lsn(after))
            .await
            .expect("replay after the release point");
        check_after(&records, Lsn(after));
    }
    for after in [0u64, 50, 119] {
        match replay_all(&log, Lsn(after)).await {
            Ok((records, _)) => check_after(&records, Lsn(after)),
            Err(LogError::Released { after: a, first }) => {
                assert_eq!(a, Lsn(after));
                assert!(first > Lsn(after + 1) && first <= released.next());
            }
            Err(e) => panic!("replay after {after} below the release point gave {e}"),
        }
    }
    let appended = append_ok(&log, vec![big(100)]).await;
    assert_eq!(appended.first, Lsn(201));
    log.close().await.expect("close");
    let log = open(b, &store).await;
    assert_eq!(log.last_lsn(), Lsn(201));
    let (records, _) = replay_all(&log, released)
        .await
        .expect("replay after reopen");
    assert_eq!(records.len(), 81);
    // Releasing everything still keeps the LSNs counting after a reopen.
    log.release_before(Lsn(201)).await.expect("release all");
    log.close().await.expect("close");
    let log = open(b, &store).await;
    assert_eq!(
        log.last_lsn(),
        Lsn(201),
        "a released log keeps its last LSN"
    );
    let appended = append_ok(&log, vec![big(101)]).await;
    assert_eq!(appended.first, Lsn(202));
    let (records, _) = replay_all(&log, Lsn(201)).await.expect("replay");
    assert_eq!(records.len(), 1);
    log.close().await.expect("close");
}

/// Longest wait for `ready` once nothing is queued any more: generous for a slow disk, and a
/// failure instead of a hang when `ready` never resolves.
const READY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Contract 7: `ready` resolves on an idle log; appends made while it may be pending still
/// queue at once and in order; once they are durable it resolves; and it does not hang on a
/// closed log.
async fn ready_resolves_once_the_writer_drains<B: LogBuilder>(b: &B) {
    // Enough queued bytes (8 MiB) to be over the bound of a log with a small one.
    const APPENDS: u64 = 2048;
    const RECORD: usize = 4096;
    let (_store, log) = fresh(b).await;
    let ready = |log| async move {
        tokio::time::timeout(READY_DEADLINE, CommitLog::ready(log))
            .await
            .is_ok()
    };
    assert!(ready(&log).await, "an idle log is ready");
    let record = |tag: u64| {
        let mut bytes = tag.to_le_bytes().to_vec();
        bytes.resize(RECORD, 0x5A);
        Bytes::from(bytes)
    };
    let mut futures: Vec<_> = (0..APPENDS).map(|i| log.append(vec![record(i)])).collect();
    let pending_ready = log.ready();
    futures.push(log.append(vec![record(APPENDS)]));
    for (i, future) in futures.into_iter().enumerate() {
        let appended = future
            .await
            .unwrap_or_else(|e| panic!("append {i} while ready may be pending: {e}"));
        assert_eq!(appended.first, Lsn(i as u64 + 1), "appends keep call order");
    }
    assert!(
        tokio::time::timeout(READY_DEADLINE, pending_ready)
            .await
            .is_ok(),
        "ready resolves once the queued appends are durable"
    );
    assert!(ready(&log).await, "the drained log is ready");
    log.close().await.expect("close");
    assert!(ready(&log).await, "ready does not hang on a closed log");
}

/// What the `release_before` check stored at `lsn`: two records per append, tags `i` and
/// `i + 1000`.
fn expected_big(lsn: Lsn, big: &impl Fn(u64) -> Bytes) -> Bytes {
    let index = lsn.0 - 1;
    let tag = if lsn.0 > 200 {
        100 + (lsn.0 - 201)
    } else if index.is_multiple_of(2) {
        index / 2
    } else {
        index / 2 + 1000
    };
    big(tag)
}

/// Contract 3: the failing append and every later one fail; after a reopen the log holds the
/// acknowledged records, then at most the failed append's records, whole.
async fn failed_append_fails_every_later_append<B: LogBuilder>(b: &B, mode: FaultMode) {
    let (store, log) = fresh(b).await;
    let log = FaultyLog::new(log, FaultSchedule::fail_append(3).with_mode(mode));
    append_ok(&log, vec![payload(0)]).await;
    append_ok(&log, vec![payload(1), payload(2)]).await;
    let failing = log.append(vec![payload(3), payload(4)]);
    let later = log.append(vec![payload(5)]);
    let empty = log.append(Vec::new());
    assert!(
        matches!(failing.await, Err(LogError::Io { .. })),
        "the injected failure is an I/O error"
    );
    assert!(
        matches!(later.await, Err(LogError::Closed)),
        "appends after a failure fail"
    );
    assert!(
        matches!(empty.await, Err(LogError::Closed)),
        "so do empty ones"
    );
    assert!(log.has_failed());
    log.close().await.expect("close");
    let log = open(b, &store).await;
    let (records, _) = replay_all(&log, Lsn::ZERO).await.expect("replay");
    let expected: &[u64] = match mode {
        FaultMode::Lost => &[0, 1, 2],
        FaultMode::Written => &[0, 1, 2, 3, 4],
    };
    assert_records(&records, Lsn::ZERO, expected);
    log.close().await.expect("close");
}

/// `FaultSchedule::fail_after_records`: the append that crosses the count fails.
async fn failure_by_record_count_fails_the_crossing_append<B: LogBuilder>(b: &B) {
    let (store, log) = fresh(b).await;
    let log = FaultyLog::new(log, FaultSchedule::fail_after_records(4));
    append_ok(&log, vec![payload(0), payload(1), payload(2)]).await;
    assert!(
        log.append(vec![payload(3), payload(4)]).await.is_err(),
        "crosses 4 records"
    );
    assert!(
        log.append(vec![payload(5)]).await.is_err(),
        "later appends fail"
    );
    log.close().await.expect("close");
    let log = open(b, &store).await;
    let (records, _) = replay_all(&log, Lsn::ZERO).await.expect("replay");
    assert_records(&records, Lsn::ZERO, &[0, 1, 2]);
    log.close().await.expect("close");
}

/// Contracts 2 and 3 under a seeded random schedule with delays: results come in call order,
/// successes form a prefix, and the reopened log holds every acknowledged record, then at most
/// the failed append's records, with nothing after a missing one.
async fn random_fault_schedule_keeps_the_contract<B: LogBuilder>(b: &B) {
    let (store, log) = fresh(b).await;
    let schedule = FaultSchedule::random_from_env();
    let seed = schedule.seed;
    let log = FaultyLog::new(log, schedule);
    let mut futures = Vec::new();
    let mut counts = Vec::new();
    let mut tag = 0u64;
    for i in 0..80u64 {
        let count = 1 + i % 3;
        futures.push(log.append((0..count).map(|k| payload(tag + k)).collect()));
        counts.push(count);
        tag += count;
    }
    let what = format!("random fault schedule, seed {seed}");
    let results = await_checking_order(futures, 5, &what).await;
    let acknowledged = results.iter().take_while(|r| r.is_ok()).count();
    let acknowledged_records: u64 = counts[..acknowledged].iter().sum();
    for (i, result) in results.iter().enumerate().skip(acknowledged) {
        let expected_io = i == acknowledged;
        match result {
            Err(LogError::Io { .. }) if expected_io => {}
            Err(LogError::Closed) if !expected_io => {}
            other => panic!("{what}: append {i} after the failure gave {other:?}"),
        }
    }
    log.close().await.expect("close");
    let log = open(b, &store).await;
    let (records, _) = replay_all(&log, Lsn::ZERO).await.expect("replay");
    let tags: Vec<u64> = records
        .iter()
        .map(|(lsn, bytes)| tag_of(*lsn, bytes))
        .collect();
    let expected: Vec<u64> = (0..tags.len() as u64).collect();
    assert_eq!(
        tags, expected,
        "{what}: the log is a dense prefix of what was appended"
    );
    let failed_records = counts.get(acknowledged).copied().unwrap_or(0);
    let held = tags.len() as u64;
    assert!(
        held == acknowledged_records || held == acknowledged_records + failed_records,
        "{what}: {held} records after {acknowledged_records} acknowledged ones"
    );
    log.close().await.expect("close");
}
