//! Power-loss crash test: a seeded workload runs a FileLog and a SnapshotStore on one simulated
//! disk (`vfs::SimFs`), the power goes off after a random number of file-system operations,
//! and what the disk kept is reopened and checked against everything that was acknowledged.
//!
//! The workload: appends of 1 to 5 records of random sizes (most small, some spanning 512-byte
//! sectors, some larger than a 4 KiB segment, so segments roll often), snapshots written
//! through the SnapshotStore followed by `release_before` of the older retained snapshot as the
//! broker does, other releases up to that point, and clean close-and-reopen cycles. Every
//! append is awaited before the next, so each is one write and one fsync and a seed replays
//! exactly: a dry run counts the operations T of the workload and where each step's operations
//! lie, then the real run cuts the power after K of them: half the time K is drawn from [0, T],
//! half the time from the operations of one step of a kind drawn at random (append, append that
//! rolls a segment, release, snapshot write, reopen), so the few operations of a release or a
//! roll are hit as often as the many of the appends. In a third of the runs the power goes off
//! again while the crashed disk is being recovered.
//!
//! Checks on the disk that survived: the log opens (a crash never looks like corruption); the
//! newest valid snapshot holds the state it was taken at; the log from that snapshot on replays
//! without a gap and covers every acknowledged record, with the same bytes at the same LSN;
//! what it holds beyond them is a prefix of the append that was cut; and it accepts new appends.
//!
//! `MAJORDODO_POWER_LOSS_SEEDS=<n>` runs n seeds (default 500) from a random base, printed;
//! `MAJORDODO_POWER_LOSS_BASE=<b>` fixes the base; `MAJORDODO_POWER_LOSS_SEED=<s>` replays one
//! seed. A failing seed is printed.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use majordodo_log::vfs::SimFs;
use majordodo_log::{CommitLog, FileLog, FileLogConfig, LogError, Lsn, SnapshotStore};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Number of seeds to run.
const SEEDS_ENV: &str = "MAJORDODO_POWER_LOSS_SEEDS";
/// First seed of the run.
const BASE_ENV: &str = "MAJORDODO_POWER_LOSS_BASE";
/// Replays one seed.
const SEED_ENV: &str = "MAJORDODO_POWER_LOSS_SEED";
/// Seeds of a normal `cargo test` run, each one crash point: enough that the rarest window
/// the test knows (a snapshot rename not yet made durable while the log was already released
/// past the older snapshot, hit by about 2% of seeds) is missed by a run with odds below 1 in
/// 10 000; a debug build runs them in well under a minute (about 7 s on an idle 2-core machine).
const DEFAULT_SEEDS: u64 = 500;
const LOG_DIR: &str = "/data/log";
const SNAPSHOT_DIR: &str = "/data/snapshots";
/// The smallest segment size, so that the workload rolls segments every few appends.
const SEGMENT_SIZE: u64 = 4096;

fn config() -> FileLogConfig {
    FileLogConfig {
        segment_size: SEGMENT_SIZE,
        ..FileLogConfig::default()
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// What the workload did, to check the disk against.
#[derive(Default)]
struct Model {
    /// Every record appended, acknowledged or not: `appended[i]` went to LSN `i + 1`.
    appended: Vec<Bytes>,
    /// LSN of the last acknowledged record.
    acked: u64,
    /// `digests[l]`: checksum of the records up to LSN `l`, the "state" a snapshot at `l`
    /// holds.
    digests: Vec<u32>,
    /// Operation ranges `(before, after)` of the workload's steps, by kind: where the crash
    /// points that matter are.
    steps: [Vec<(u64, u64)>; STEP_KINDS],
}

/// Kinds of workload steps whose operations a crash point can target.
const STEP_KINDS: usize = 5;
const APPEND: usize = 0;
/// An append that rolled to a new segment (more than a write and an fsync).
const ROLLING_APPEND: usize = 1;
const RELEASE: usize = 2;
const SNAPSHOT: usize = 3;
const REOPEN: usize = 4;

impl Model {
    fn new() -> Model {
        Model {
            digests: vec![0],
            ..Model::default()
        }
    }

    /// The snapshot content of the state after LSN `lsn`.
    fn state(&self, lsn: u64) -> Vec<u8> {
        let mut out = lsn.to_le_bytes().to_vec();
        out.extend_from_slice(&self.digests[lsn as usize].to_le_bytes());
        out
    }

    fn step(&mut self, kind: usize, before: u64, after: u64) {
        self.steps[kind].push((before, after));
    }

    fn acknowledge(&mut self, last: Lsn) {
        while (self.digests.len() as u64) <= last.0 {
            let record = &self.appended[self.digests.len() - 1];
            let previous = *self.digests.last().expect("digest of lsn 0");
            self.digests.push(crc32c::crc32c_append(previous, record));
        }
        self.acked = last.0;
    }
}

/// A record: mostly small, some spanning sectors, a few larger than a segment; random bytes,
/// sometimes zeros.
fn make_record(rng: &mut StdRng) -> Bytes {
    let len = match rng.random_range(0..100) {
        0..55 => rng.random_range(0..120),
        55..90 => rng.random_range(300..1300),
        90..97 => rng.random_range(1300..3000),
        _ => rng.random_range(4000..9000),
    };
    if rng.random_bool(0.1) {
        Bytes::from(vec![0u8; len])
    } else {
        Bytes::from((0..len).map(|_| rng.random()).collect::<Vec<u8>>())
    }
}

/// Stops the workload on a failure caused by the power going off; any other failure is a bug.
macro_rules! or_power_off {
    ($fs:expr, $seed:expr, $what:expr, $result:expr) => {
        match $result {
            Ok(value) => value,
            Err(e) if $fs.is_powered_off() => {
                let _ = e;
                break;
            }
            Err(e) => panic!("seed {}: {} failed with the power on: {e}", $seed, $what),
        }
    };
}

/// Runs the workload of `seed` on `fs` until it ends or the power goes off.
async fn workload(seed: u64, fs: &SimFs) -> Model {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = Model::new();
    let disk = || Arc::new(fs.clone());
    let steps = rng.random_range(30..=80);
    let mut log: Option<FileLog> = None;
    let mut store: Option<SnapshotStore> = None;
    for _ in 0..steps {
        let before = fs.operations();
        let live = match &log {
            Some(log) => log,
            None => {
                let (opened, report) = or_power_off!(
                    fs,
                    seed,
                    "open the log",
                    FileLog::open_with(disk(), LOG_DIR, config())
                );
                model.step(REOPEN, before, fs.operations());
                assert_eq!(
                    report.last_lsn,
                    Lsn(model.acked),
                    "seed {seed}: clean reopen"
                );
                assert!(report.torn_tail.is_none(), "seed {seed}: clean reopen");
                log.insert(opened)
            }
        };
        let snapshots = match &store {
            Some(store) => store,
            None => store.insert(or_power_off!(
                fs,
                seed,
                "open the snapshot store",
                SnapshotStore::open_with(disk(), SNAPSHOT_DIR)
            )),
        };
        match rng.random_range(0..100) {
            0..76 => {
                let count = rng.random_range(1..=5);
                let records: Vec<Bytes> = (0..count).map(|_| make_record(&mut rng)).collect();
                model.appended.extend(records.iter().cloned());
                let before = fs.operations();
                let appended = or_power_off!(fs, seed, "append", live.append(records).await);
                assert_eq!(appended.last, Lsn(model.appended.len() as u64));
                model.acknowledge(appended.last);
                let after = fs.operations();
                // A write and an fsync, unless the append rolled a segment.
                let kind = if after - before > 2 {
                    ROLLING_APPEND
                } else {
                    APPEND
                };
                model.step(kind, before, after);
            }
            76..86 => {
                let lsn = model.acked;
                let before = fs.operations();
                or_power_off!(
                    fs,
                    seed,
                    "write a snapshot",
                    snapshots.write(Lsn(lsn), &model.state(lsn))
                );
                model.step(SNAPSHOT, before, fs.operations());
                let point = or_power_off!(fs, seed, "list snapshots", snapshots.release_point());
                if let Some(point) = point {
                    let before = fs.operations();
                    or_power_off!(fs, seed, "release", live.release_before(point).await);
                    model.step(RELEASE, before, fs.operations());
                }
            }
            86..92 => {
                let point = or_power_off!(fs, seed, "list snapshots", snapshots.release_point());
                if let Some(point) = point {
                    let lsn = Lsn(rng.random_range(0..=point.0));
                    let before = fs.operations();
                    or_power_off!(fs, seed, "release", live.release_before(lsn).await);
                    model.step(RELEASE, before, fs.operations());
                }
            }
            92..97 => {
                let closing = log.take().expect("the log is open");
                or_power_off!(fs, seed, "close the log", closing.close().await);
            }
            _ => {
                // Reopen the store too: it removes what an abandoned snapshot left.
                store = None;
            }
        }
    }
    if let Some(log) = log {
        // A dry run closes cleanly; after the power went off this fails, which is expected.
        let result = log.close().await;
        assert!(
            result.is_ok() || fs.is_powered_off(),
            "seed {seed}: close failed with the power on: {result:?}"
        );
    }
    model
}

/// Where the power goes off: half the time anywhere in the workload's `ops` operations, half
/// the time inside one step of a kind drawn at random (so the few operations of a release or a
/// segment roll are hit as often as the many of the appends).
fn crash_point(model: &Model, ops: u64, rng: &mut StdRng) -> u64 {
    let kinds: Vec<&Vec<(u64, u64)>> = model.steps.iter().filter(|s| !s.is_empty()).collect();
    if kinds.is_empty() || rng.random_bool(0.5) {
        return rng.random_range(0..=ops);
    }
    let steps = kinds[rng.random_range(0..kinds.len())];
    let (before, after) = steps[rng.random_range(0..steps.len())];
    rng.random_range(before..=after)
}

/// What one seed exercised, for the summary.
#[derive(Debug, Default)]
struct Outcome {
    ops: u64,
    crash_at: u64,
    acked: u64,
    recovered: Lsn,
    torn_tail: bool,
    recovery_crash: bool,
    replayed_from_snapshot: bool,
}

/// One seed: dry run, crash run, checks. Panics with the seed on a failure.
async fn run_seed(seed: u64) -> Outcome {
    let dry = SimFs::new(seed);
    let dry_model = workload(seed, &dry).await;
    let ops = dry.operations();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5EED_C8A5);
    let crash_at = crash_point(&dry_model, ops, &mut rng);
    let fs = SimFs::new(seed);
    fs.power_off_after(crash_at);
    let model = workload(seed, &fs).await;
    assert!(
        model.acked <= dry_model.acked,
        "seed {seed}: the crash run acknowledged more than the dry run"
    );
    let mut image = fs.crash();
    let recovery_crash = rng.random_bool(1.0 / 3.0);
    if recovery_crash {
        // Count the operations of the recovery on a copy, then cut the power during it.
        let probe = image.fork();
        if let Ok((log, _)) = FileLog::open_with(Arc::new(probe.clone()), LOG_DIR, config()) {
            drop(log);
        }
        image.power_off_after(rng.random_range(0..=probe.operations()));
        if let Ok((log, _)) = FileLog::open_with(Arc::new(image.clone()), LOG_DIR, config()) {
            drop(log);
        }
        image = image.crash();
    }
    let what = format!("seed {seed}, power off after {crash_at} of {ops} operations");
    let (log, report) = FileLog::open_with(Arc::new(image.clone()), LOG_DIR, config())
        .unwrap_or_else(|e| panic!("{what}: the log does not open after the crash: {e}"));
    let store = SnapshotStore::open_with(Arc::new(image.clone()), SNAPSHOT_DIR)
        .unwrap_or_else(|e| panic!("{what}: the snapshot store does not open: {e}"));
    let snapshot = store
        .load_latest()
        .unwrap_or_else(|e| panic!("{what}: load the newest snapshot: {e}"));
    let from = snapshot.as_ref().map_or(0, |s| s.lsn.0);
    if let Some(snapshot) = &snapshot {
        assert!(
            from <= model.acked,
            "{what}: snapshot at {from} is beyond lsn {}",
            model.acked
        );
        assert!(
            snapshot.data == model.state(from),
            "{what}: the snapshot at lsn {from} does not hold the state at {from}"
        );
    }
    assert!(
        report.last_lsn.0 >= model.acked,
        "{what}: the log ends at {} but lsn {} was acknowledged",
        report.last_lsn,
        model.acked
    );
    let mut expected = from + 1;
    {
        let mut check = |lsn: Lsn, bytes: Bytes| {
            if lsn.0 != expected {
                return Err(format!("lsn {lsn} where {expected} was expected"));
            }
            match model.appended.get(lsn.0 as usize - 1) {
                Some(appended) if *appended == bytes => {}
                Some(_) => return Err(format!("record {lsn} differs from what was appended")),
                None => return Err(format!("record {lsn} was never appended")),
            }
            expected += 1;
            Ok(())
        };
        let replayed = log.replay(Lsn(from), &mut check).await;
        match replayed {
            Ok(_) => {}
            Err(LogError::Released { first, .. }) => panic!(
                "{what}: the newest valid snapshot is at lsn {from} but the log starts at {first}: \
                 records {}..={} are covered by neither",
                from + 1,
                first.0 - 1
            ),
            Err(e) => panic!("{what}: replay after the snapshot at {from}: {e}"),
        }
    }
    let replayed_to = expected - 1;
    assert!(
        replayed_to >= model.acked,
        "{what}: acknowledged records up to {} but the log replays up to {replayed_to}",
        model.acked,
    );
    let last = report.last_lsn;
    let appended = log
        .append(vec![Bytes::from_static(b"after the crash")])
        .await
        .unwrap_or_else(|e| panic!("{what}: append after the crash: {e}"));
    assert_eq!(
        appended.first,
        last.next(),
        "{what}: appends continue the log"
    );
    let mut after = Vec::new();
    {
        let mut f = |lsn, bytes| {
            after.push((lsn, bytes));
            Ok(())
        };
        log.replay(last, &mut f)
            .await
            .expect("replay the new record");
    }
    assert_eq!(
        after,
        vec![(last.next(), Bytes::from_static(b"after the crash"))],
        "{what}"
    );
    log.close().await.expect("close");
    Outcome {
        ops,
        crash_at,
        acked: model.acked,
        recovered: last,
        torn_tail: report.torn_tail.is_some(),
        recovery_crash,
        replayed_from_snapshot: snapshot.is_some(),
    }
}

// Goal: after a power failure at any file-system operation of a workload of appends, segment
// rolls, snapshots, releases and reopens, every acknowledged record is recovered with the same
// bytes at the same LSN, nothing follows a gap, the log accepts appends, and the newest valid
// snapshot plus the log after it cover every acknowledged record.
#[test]
fn acknowledged_records_and_snapshots_survive_power_loss() {
    let seeds: Vec<u64> = match env_u64(SEED_ENV) {
        Some(seed) => vec![seed],
        None => {
            let count = env_u64(SEEDS_ENV).unwrap_or(DEFAULT_SEEDS);
            let base = env_u64(BASE_ENV).unwrap_or_else(rand::random);
            eprintln!(
                "power-loss test: {count} seeds from {base} (rerun with {BASE_ENV}={base} {SEEDS_ENV}={count})"
            );
            (0..count).map(|i| base.wrapping_add(i)).collect()
        }
    };
    let started = Instant::now();
    let mut outcomes = Vec::new();
    let mut failed: Vec<(u64, String)> = Vec::new();
    for seed in &seeds {
        let seed = *seed;
        // A runtime per seed, so that a failed seed leaves nothing behind for the next.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let outcome =
            std::panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(run_seed(seed))));
        match outcome {
            Ok(outcome) => {
                if seeds.len() == 1 {
                    eprintln!("power-loss test: seed {seed}: {outcome:?}");
                }
                outcomes.push(outcome);
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                eprintln!("power-loss test: seed {seed} failed (replay with {SEED_ENV}={seed})");
                failed.push((seed, message));
            }
        }
    }
    if let Some((seed, message)) = failed.first() {
        let seeds: Vec<u64> = failed.iter().map(|(seed, _)| *seed).collect();
        panic!(
            "{} of {} seeds failed: {seeds:?}; the first, seed {seed} (replay with \
             {SEED_ENV}={seed}): {message}",
            failed.len(),
            outcomes.len() + failed.len(),
        );
    }
    let count = outcomes.len();
    let torn = outcomes.iter().filter(|o| o.torn_tail).count();
    let recovery_crashes = outcomes.iter().filter(|o| o.recovery_crash).count();
    let from_snapshot = outcomes.iter().filter(|o| o.replayed_from_snapshot).count();
    let ops: u64 = outcomes.iter().map(|o| o.ops).sum();
    let mid_run = outcomes.iter().filter(|o| o.crash_at < o.ops).count();
    let acked: u64 = outcomes.iter().map(|o| o.acked).sum();
    let unacked_kept: u64 = outcomes.iter().map(|o| o.recovered.0 - o.acked).sum();
    eprintln!(
        "power-loss test: {count} seeds in {:.1} s; {} operations per workload on average; \
         {mid_run} crashes before the end; {acked} acknowledged records checked, \
         {unacked_kept} unacknowledged ones kept whole; {torn} unfinished writes cut; \
         {recovery_crashes} second crashes during recovery; {from_snapshot} recoveries from a \
         snapshot",
        started.elapsed().as_secs_f64(),
        ops / count.max(1) as u64,
    );
}
