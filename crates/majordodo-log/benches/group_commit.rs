//! Group commit benchmark of the file log: records/s, fsyncs/s and append latency for several
//! numbers of concurrent appenders and record sizes, with fsync on.
//!
//! Run: `cargo bench -p majordodo-log --bench group_commit`. Each case runs for
//! `MAJORDODO_BENCH_SECS` seconds (default 2) in a fresh log directory under
//! `MAJORDODO_BENCH_DIR` (default: the system temporary directory; put it on the disk to
//! measure).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use majordodo_log::{CommitLog, FileLog, FileLogConfig};

/// Concurrent appenders per case.
const APPENDERS: [usize; 3] = [1, 8, 64];
/// Record sizes per case, in bytes.
const SIZES: [usize; 2] = [100, 1024];

struct Outcome {
    records: u64,
    fsyncs: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

async fn run_case(appenders: usize, size: usize, duration: Duration) -> Outcome {
    let root = match std::env::var_os("MAJORDODO_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("bench directory");
    let (log, _) = FileLog::open(root.path(), FileLogConfig::default()).expect("open log");
    let log = Arc::new(log);
    let record = Bytes::from(vec![0x5Au8; size]);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..appenders {
        let log = Arc::clone(&log);
        let record = record.clone();
        tasks.spawn(async move {
            let mut latency = Histogram::<u64>::new(3).expect("histogram");
            let mut records = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                log.append(vec![record.clone()]).await.expect("append");
                latency
                    .record(t.elapsed().as_micros() as u64)
                    .expect("latency fits the histogram");
                records += 1;
            }
            (records, latency)
        });
    }
    let mut latency = Histogram::<u64>::new(3).expect("histogram");
    let mut records = 0;
    while let Some(done) = tasks.join_next().await {
        let (n, h) = done.expect("appender");
        records += n;
        latency.add(h).expect("merge histograms");
    }
    let elapsed = start.elapsed();
    let fsyncs = log.stats().fsyncs;
    log.close().await.expect("close");
    Outcome {
        records,
        fsyncs,
        elapsed,
        latency,
    }
}

fn main() {
    let secs: u64 = std::env::var("MAJORDODO_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("file log group commit, fsync on, {secs} s per case");
    println!(
        "{:>9} {:>7} {:>12} {:>10} {:>14} {:>10} {:>10}",
        "appenders", "bytes", "records/s", "fsyncs/s", "records/fsync", "p50 µs", "p99 µs"
    );
    for appenders in APPENDERS {
        for size in SIZES {
            let o = runtime.block_on(run_case(appenders, size, Duration::from_secs(secs)));
            let seconds = o.elapsed.as_secs_f64();
            println!(
                "{:>9} {:>7} {:>12.0} {:>10.0} {:>14.1} {:>10} {:>10}",
                appenders,
                size,
                o.records as f64 / seconds,
                o.fsyncs as f64 / seconds,
                o.records as f64 / o.fsyncs.max(1) as f64,
                o.latency.value_at_quantile(0.5),
                o.latency.value_at_quantile(0.99),
            );
        }
    }
}
