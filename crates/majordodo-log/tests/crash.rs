//! Crash test with a real process kill: a child process appends to a FileLog as fast as it can
//! and prints every acknowledged record; the parent kills it with SIGKILL at a random moment,
//! reopens the log and checks that every acknowledged record is there, whole, with the LSNs
//! dense from 1. Rounds repeat on the same directory, so torn tails left by one round are
//! recovered by the next.
//!
//! A SIGKILL leaves the page cache intact, so what the child wrote reaches the disk whole
//! unless the kill lands inside a `write` call. To also exercise what a power failure leaves, in
//! some rounds the parent then tears the last write as a power failure could: cuts the file
//! after the last acknowledged record and, when the last write had no acknowledged record,
//! zeroes some of its sectors. (`tests/power_loss.rs` simulates power failures exhaustively.)
//!
//! The child is this same test executable, re-run with `MAJORDODO_LOG_CRASH_CHILD` set. The
//! seed is printed; `MAJORDODO_CRASH_SEED=<seed>` replays the same kill delays and record
//! sizes (the exact kill point still depends on timing).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use majordodo_log::{CommitLog, FileLog, FileLogConfig, Lsn};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Set in the child: the log directory.
const CHILD_DIR_ENV: &str = "MAJORDODO_LOG_CRASH_CHILD";
/// Set in the child: the seed of its record sizes and contents.
const CHILD_SEED_ENV: &str = "MAJORDODO_LOG_CRASH_CHILD_SEED";
/// Replays a run.
const SEED_ENV: &str = "MAJORDODO_CRASH_SEED";
/// Kill rounds on one directory.
const ROUNDS: u32 = 10;
/// Concurrent appending tasks in the child.
const APPENDERS: u64 = 6;
/// Longest wait for the child to open its log.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// The child stops by itself after this, should the parent be gone.
const CHILD_LIFETIME: Duration = Duration::from_secs(30);
/// Segment header and frame header lengths, as documented in the file format (version 2).
const SEGMENT_HEADER: u64 = 32;
const FRAME_HEADER: u64 = 24;
/// The sector size of the torn-write model.
const SECTOR: u64 = 512;
/// Small segments, so that rounds roll segments and kills land around rolls too.
const SEGMENT_SIZE: u64 = 256 * 1024;

/// A record that can prove it is whole: `[len u32][crc32c of the rest u32][rest]`.
fn make_record(rng: &mut StdRng) -> Bytes {
    let len = if rng.random_bool(0.05) {
        rng.random_range(8_000..64_000)
    } else {
        rng.random_range(0..2_000)
    };
    let rest: Vec<u8> = (0..len).map(|_| rng.random()).collect();
    let mut out = Vec::with_capacity(8 + len);
    out.extend_from_slice(&((8 + len) as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&rest).to_le_bytes());
    out.extend_from_slice(&rest);
    Bytes::from(out)
}

/// Whether a record made by `make_record` is whole.
fn record_is_whole(bytes: &[u8]) -> bool {
    if bytes.len() < 8 {
        return false;
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    len == bytes.len() && crc32c::crc32c(&bytes[8..]) == crc
}

/// What the child prints for a record: its length and checksum.
fn fingerprint(bytes: &[u8]) -> (usize, u32) {
    (bytes.len(), crc32c::crc32c(bytes))
}

fn config() -> FileLogConfig {
    FileLogConfig {
        segment_size: SEGMENT_SIZE,
        ..FileLogConfig::default()
    }
}

/// The child: append from several tasks until killed, printing `ACK <lsn> <len> <crc>` for
/// every record once its append has resolved.
fn child(dir: &str) {
    let seed: u64 = std::env::var(CHILD_SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("the parent passes a seed");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let (log, report) = FileLog::open(dir, config()).expect("child opens the log");
        {
            let mut out = std::io::stdout().lock();
            // The leading newline ends the "test ... " line the harness leaves open.
            writeln!(out, "\nSTART {}", report.last_lsn).expect("stdout");
            out.flush().expect("stdout");
        }
        let log = std::sync::Arc::new(log);
        for task in 0..APPENDERS {
            let log = std::sync::Arc::clone(&log);
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed ^ (task + 1).wrapping_mul(0x9E37_79B9));
                loop {
                    let count = rng.random_range(1..=4);
                    let records: Vec<Bytes> = (0..count).map(|_| make_record(&mut rng)).collect();
                    let prints: Vec<(usize, u32)> =
                        records.iter().map(|r| fingerprint(r)).collect();
                    let appended = log.append(records).await.expect("append in child");
                    let mut out = std::io::stdout().lock();
                    for (i, (len, crc)) in prints.into_iter().enumerate() {
                        writeln!(out, "ACK {} {len} {crc}", appended.first.0 + i as u64)
                            .expect("stdout");
                    }
                    out.flush().expect("stdout");
                }
            });
        }
        tokio::time::sleep(CHILD_LIFETIME).await;
    });
}

/// Reads complete lines from the child until it is gone; a last line cut by the kill is dropped.
fn read_lines(stdout: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.ends_with(b"\n") => {
                    let text = String::from_utf8_lossy(&line).trim_end().to_string();
                    if tx.send(text).is_err() {
                        break;
                    }
                }
                Ok(_) => break,
            }
        }
    });
    rx
}

/// Parses `ACK <lsn> <len> <crc>`.
fn parse_ack(line: &str) -> Option<(u64, (usize, u32))> {
    let mut parts = line.strip_prefix("ACK ")?.split(' ');
    let lsn = parts.next()?.parse().ok()?;
    let len = parts.next()?.parse().ok()?;
    let crc = parts.next()?.parse().ok()?;
    Some((lsn, (len, crc)))
}

/// Damages the unacknowledged tail of the log as a power failure could (the model of
/// `vfs::SimFs`): only the last write can be unfinished, and only if none of its records was
/// acknowledged; an unfinished write leaves the file cut anywhere after its start, and each
/// 512-byte sector it touched either written or reading as zeros from the write's start on.
/// A cut after the last acknowledged record is also tried when the last write was acknowledged
/// in part (the log cannot tell which of its records were reported). Returns a description.
fn lose_unacknowledged_tail(dir: &Path, last_acked: u64, rng: &mut StdRng) -> String {
    let mut segments: Vec<_> = std::fs::read_dir(dir)
        .expect("list log dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    let last = segments.last().expect("a log has a segment");
    let bytes = std::fs::read(last).expect("read last segment");
    // The end of the last acknowledged record if it is in this segment, else its header; and
    // the start of the last write (its frame with batch index 0).
    let mut floor = SEGMENT_HEADER;
    let mut write_start = SEGMENT_HEADER;
    let mut at = SEGMENT_HEADER as usize;
    while at + FRAME_HEADER as usize <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes")) as u64;
        let index = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().expect("4 bytes"));
        let lsn = u64::from_le_bytes(bytes[at + 12..at + 20].try_into().expect("8 bytes"));
        let end = at as u64 + FRAME_HEADER + len;
        if end > bytes.len() as u64 {
            break;
        }
        if lsn <= last_acked {
            floor = end;
        }
        if index == 0 {
            write_start = at as u64;
        }
        at = end as usize;
    }
    let file_len = bytes.len() as u64;
    let from = floor.max(write_start);
    let cut = if file_len > from && rng.random_bool(0.7) {
        rng.random_range(from..file_len)
    } else {
        file_len
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .expect("open last segment");
    file.set_len(cut).expect("cut last segment");
    let mut zeroed = 0;
    if floor <= write_start {
        // The last write was not acknowledged at all: it may not have landed sector by sector.
        let first = write_start / SECTOR * SECTOR;
        for sector in (first..cut).step_by(SECTOR as usize) {
            if rng.random_bool(0.3) {
                let start = sector.max(write_start);
                let end = (sector + SECTOR).min(cut);
                let zeros = vec![0u8; (end - start) as usize];
                std::os::unix::fs::FileExt::write_all_at(&file, &zeros, start)
                    .expect("zero a sector");
                zeroed += 1;
            }
        }
    }
    format!(
        "cut {} at {cut} of {file_len} (acknowledged data ends at {floor}, the last write starts at {write_start}), {zeroed} sectors zeroed",
        last.file_name().expect("name").to_string_lossy(),
    )
}

/// Reopens the log and checks it against every acknowledgement so far; returns whether a torn
/// tail was repaired and the last LSN.
fn verify(dir: &Path, acked: &BTreeMap<u64, (usize, u32)>, seed: u64, round: u32) -> (bool, Lsn) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (log, report) = FileLog::open(dir, config())
            .unwrap_or_else(|e| panic!("seed {seed} round {round}: reopen after kill: {e}"));
        let mut expected = Lsn(1);
        let mut found = BTreeMap::new();
        {
            let mut f = |lsn: Lsn, bytes: Bytes| {
                if lsn != expected {
                    return Err(format!("lsn {lsn} where {expected} was expected"));
                }
                if !record_is_whole(&bytes) {
                    return Err(format!("record {lsn} is not whole"));
                }
                expected = expected.next();
                if acked.contains_key(&lsn.0) {
                    found.insert(lsn.0, fingerprint(&bytes));
                }
                Ok(())
            };
            log.replay(Lsn::ZERO, &mut f)
                .await
                .unwrap_or_else(|e| panic!("seed {seed} round {round}: replay: {e}"));
        }
        let last = log.last_lsn();
        assert_eq!(
            last,
            Lsn(expected.0 - 1),
            "seed {seed} round {round}: replay reached the end"
        );
        for (lsn, print) in acked {
            assert_eq!(
                found.get(lsn),
                Some(print),
                "seed {seed} round {round}: acknowledged record {lsn} is missing or different"
            );
        }
        log.close().await.expect("close");
        (report.torn_tail.is_some(), last)
    })
}

// Goal: every record acknowledged before a SIGKILL is recovered whole, LSNs stay dense from 1,
// and no partial record is ever returned, over repeated kills on one directory.
#[test]
fn acknowledged_records_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_DIR_ENV) {
        child(&dir);
        return;
    }
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash test seed {seed} (replay with {SEED_ENV}={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("test executable");
    let mut acked: BTreeMap<u64, (usize, u32)> = BTreeMap::new();
    let mut torn_tails = 0;
    for round in 0..ROUNDS {
        let kill_after = Duration::from_millis(rng.random_range(5..250));
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "acknowledged_records_survive_sigkill",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_ENV, dir.path())
            .env(CHILD_SEED_ENV, rng.random::<u64>().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let lines = read_lines(child.stdout.take().expect("piped stdout"));
        let deadline = Instant::now() + START_DEADLINE;
        let started = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.starts_with("START ") => break true,
                Ok(_) => {}
                Err(_) => break false,
            }
        };
        if !started {
            let _ = child.kill();
            let _ = child.wait();
            panic!("seed {seed} round {round}: the child did not open the log in time");
        }
        // The random moment of the kill: this sleep is the test input, not a wait.
        std::thread::sleep(kill_after);
        child.kill().expect("SIGKILL the child");
        child.wait().expect("reap the child");
        let mut round_acks = 0;
        for line in lines.iter() {
            if let Some((lsn, print)) = parse_ack(&line) {
                let previous = acked.insert(lsn, print);
                assert!(
                    previous.is_none() || previous == Some(print),
                    "seed {seed} round {round}: lsn {lsn} acknowledged twice with different records"
                );
                round_acks += 1;
            }
        }
        let damage = if rng.random_bool(0.6) {
            let last_acked = acked.keys().next_back().copied().unwrap_or(0);
            lose_unacknowledged_tail(dir.path(), last_acked, &mut rng)
        } else {
            "no simulated power loss".to_string()
        };
        let (torn, last) = verify(dir.path(), &acked, seed, round);
        torn_tails += u32::from(torn);
        eprintln!(
            "round {round}: killed after {kill_after:?}, {round_acks} acknowledged; {damage}; log ends at {last}, torn tail repaired: {torn}"
        );
    }
    assert!(
        acked.len() as u32 >= ROUNDS,
        "seed {seed}: the children acknowledged only {} records; the test did not exercise the log",
        acked.len()
    );
    eprintln!(
        "{} records acknowledged over {ROUNDS} kills, {torn_tails} torn tails repaired",
        acked.len()
    );
}
