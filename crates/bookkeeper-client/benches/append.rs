//! Append benchmark: this client against BookKeeper's Java client, same cluster, same workload.
//!
//! Starts a real 3-bookie cluster, then alternates runs of this client and of the Java client
//! (`BkBench` through the test harness): 1 KiB entries, ensemble 3, write quorum 2, ack quorum 2,
//! a bounded number of outstanding appends. Latency is measured per append from submission
//! (once the window has room) to acknowledgement; throughput from the first submission to the
//! last acknowledgement. Each run uses a fresh ledger after a warm-up on it. The Java client's
//! default rate limit of 5000 adds/s is turned off for its runs.
//!
//! ```text
//! cargo bench -p bookkeeper-client --bench append -- [--entries 20000] [--windows 100,1000]
//!     [--rounds 2] [--entry-size 1024] [--warmup 2000] [--no-journal-sync]
//! ```

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bookkeeper_client::{BookKeeper, ClientConfig, LedgerOptions};
use bytes::Bytes;
use hdrhistogram::Histogram;
use majordodo_testkit::tools::{BK_BENCH, events, json_lines, sized_payload};
use majordodo_testkit::{BkCluster, BkClusterOptions};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

/// JVM arguments of the Java runs: room for the latency samples, and the client's default add
/// rate limit (`throttle`, 5000 adds/s) turned off through system properties, so both clients
/// run unthrottled.
const JAVA_JVM_ARGS: [&str; 3] = [
    "-Xmx1g",
    "-Dorg.apache.bookkeeper.conf.readsystemproperties=true",
    "-Dthrottle=0",
];

/// Limit on one Java benchmark run, JVM start included.
const JAVA_TIMEOUT: Duration = Duration::from_secs(600);

struct Settings {
    entries: u64,
    windows: Vec<usize>,
    rounds: usize,
    entry_size: usize,
    warmup: u64,
    journal_sync: bool,
}

impl Settings {
    fn parse() -> anyhow::Result<Settings> {
        let mut settings = Settings {
            entries: 20_000,
            windows: vec![100, 1000],
            rounds: 2,
            entry_size: 1024,
            warmup: 2000,
            journal_sync: true,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--entries" => settings.entries = value()?.parse()?,
                "--windows" => {
                    settings.windows = value()?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()?
                }
                "--rounds" => settings.rounds = value()?.parse()?,
                "--entry-size" => settings.entry_size = value()?.parse()?,
                "--warmup" => settings.warmup = value()?.parse()?,
                "--no-journal-sync" => settings.journal_sync = false,
                // Passed by `cargo bench`.
                "--bench" => {}
                other => bail!("unknown argument {other}"),
            }
        }
        if settings.entries == 0 || settings.windows.contains(&0) || settings.rounds == 0 {
            bail!("entries, windows and rounds must be positive");
        }
        Ok(settings)
    }
}

struct Row {
    client: &'static str,
    entries: u64,
    window: usize,
    entries_per_sec: f64,
    mb_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Appends `count` entries keeping at most `window` outstanding; returns per-append latencies
/// (µs) and the time from the first submission to the last acknowledgement.
async fn run_appends(
    writer: Arc<bookkeeper_client::LedgerWriter>,
    payload: Bytes,
    count: u64,
    window: usize,
) -> anyhow::Result<(Histogram<u64>, Duration)> {
    let slots = Arc::new(Semaphore::new(window));
    let (tx, mut rx) = mpsc::channel(window);
    // Awaits acknowledgements in order (they complete in order) and frees window slots.
    let collector = tokio::spawn(async move {
        let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let mut last = None;
        while let Some((submitted, add, slot)) = rx.recv().await {
            let add: std::pin::Pin<Box<dyn Future<Output = _> + Send>> = add;
            add.await?;
            let now = Instant::now();
            drop(slot);
            latencies.record(now.duration_since(submitted).as_micros().max(1) as u64)?;
            last = Some(now);
        }
        anyhow::Ok((latencies, last))
    });
    let start = Instant::now();
    for _ in 0..count {
        let slot = slots.clone().acquire_owned().await?;
        let submitted = Instant::now();
        let add = Box::pin(writer.append(payload.clone()));
        if tx.send((submitted, add, slot)).await.is_err() {
            break;
        }
    }
    drop(tx);
    let (latencies, last) = collector.await??;
    let elapsed = last.context("no append completed")?.duration_since(start);
    Ok((latencies, elapsed))
}

async fn rust_run(bk: &BookKeeper, settings: &Settings, window: usize) -> anyhow::Result<Row> {
    let writer = Arc::new(bk.create_ledger(LedgerOptions::new(3, 2, 2)).await?);
    let payload = Bytes::from(sized_payload(0, settings.entry_size));
    if settings.warmup > 0 {
        run_appends(writer.clone(), payload.clone(), settings.warmup, window).await?;
    }
    let (latencies, elapsed) =
        run_appends(writer.clone(), payload, settings.entries, window).await?;
    writer.close().await?;
    let seconds = elapsed.as_secs_f64();
    Ok(Row {
        client: "rust",
        entries: settings.entries,
        window,
        entries_per_sec: settings.entries as f64 / seconds,
        mb_per_sec: (settings.entries * settings.entry_size as u64) as f64 / 1e6 / seconds,
        p50_ms: latencies.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: latencies.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

async fn java_run(cluster: &BkCluster, settings: &Settings, window: usize) -> anyhow::Result<Row> {
    let (entries, warmup, size) = (
        settings.entries.to_string(),
        settings.warmup.to_string(),
        settings.entry_size.to_string(),
    );
    let window_arg = window.to_string();
    let args = [
        "--entry-size",
        &size,
        "--ensemble",
        "3",
        "--write-quorum",
        "2",
        "--ack-quorum",
        "2",
        "--max-outstanding",
        &window_arg,
        "--count",
        &entries,
        "--warmup-count",
        &warmup,
    ];
    let output = cluster
        .run_java_tool_with_jvm_args(BK_BENCH, &JAVA_JVM_ARGS, &args, JAVA_TIMEOUT)
        .await?;
    if !output.status.success() {
        bail!(
            "BkBench failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let lines = json_lines(&output.stdout)?;
    let result = events(&lines, "bench_result")
        .next()
        .context("bench_result line")?;
    let number = |key: &str| {
        result[key]
            .as_f64()
            .with_context(|| format!("{key} in {result}"))
    };
    Ok(Row {
        client: "java",
        entries: result["entries"].as_u64().context("entries")?,
        window,
        entries_per_sec: number("entries_per_sec")?,
        mb_per_sec: number("mb_per_sec")?,
        p50_ms: number("p50_ms")?,
        p99_ms: number("p99_ms")?,
    })
}

fn print_row(row: &Row) {
    println!(
        "| {:<6} | {:>8} | {:>6} | {:>12.0} | {:>7.2} | {:>8.2} | {:>8.2} |",
        row.client,
        row.entries,
        row.window,
        row.entries_per_sec,
        row.mb_per_sec,
        row.p50_ms,
        row.p99_ms
    );
}

fn main() -> anyhow::Result<()> {
    let settings = Settings::parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let options = BkClusterOptions::new(3).journal_sync(settings.journal_sync);
        let cluster = BkCluster::start_with(options).await.context("start cluster")?;
        let config = ClientConfig::new(cluster.zk_connect_string()).with_ledgers_root(cluster.ledgers_root());
        let bk = BookKeeper::connect(config).await?;
        println!(
            "append benchmark: {} B entries, E=3 Qw=2 Qa=2, journal sync {}, {} warm-up entries per run",
            settings.entry_size, settings.journal_sync, settings.warmup
        );
        println!("| client | entries  | window | entries/s    | MB/s    | p50 ms   | p99 ms   |");
        println!("|--------|----------|--------|--------------|---------|----------|----------|");
        let mut rows = Vec::new();
        for &window in &settings.windows {
            for _ in 0..settings.rounds {
                let row = rust_run(&bk, &settings, window).await?;
                print_row(&row);
                rows.push(row);
                let row = java_run(&cluster, &settings, window).await?;
                print_row(&row);
                rows.push(row);
            }
        }
        println!();
        println!("| client | window | best entries/s | median p99 ms |");
        println!("|--------|--------|----------------|---------------|");
        for &window in &settings.windows {
            for client in ["rust", "java"] {
                let mut runs: Vec<&Row> = rows.iter().filter(|r| r.client == client && r.window == window).collect();
                let best = runs.iter().map(|r| r.entries_per_sec).fold(0.0, f64::max);
                runs.sort_by(|a, b| a.p99_ms.total_cmp(&b.p99_ms));
                println!("| {:<6} | {:>6} | {:>14.0} | {:>13.2} |", client, window, best, runs[runs.len() / 2].p99_ms);
            }
        }
        anyhow::Ok(())
    })
}
