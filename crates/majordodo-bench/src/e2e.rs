//! End-to-end scenarios against a real broker process (file log, fsync on), everything on this
//! machine: HTTP submitters and worker agents in this process, the broker in its own.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hdrhistogram::Histogram;
use majordodo_proto::http::TaskSubmission;
use majordodo_worker::{TaskFailure, executor_fn};
use tokio::sync::Mutex;

use crate::cluster::{BrokerProcess, Target, Workers, noop, submit_all, wait_finished};
use crate::report::{Table, group, mib, per_sec, rss_bytes};

/// Options shared by the end-to-end scenarios.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Common {
    /// Directory for the brokers' data (one subdirectory per run, removed afterwards). Put it on
    /// the disk you want to measure.
    #[arg(long, default_value = "bench-data")]
    dir: PathBuf,
    /// Keep the brokers' data and logs after the run.
    #[arg(long)]
    keep: bool,
}

impl Common {
    /// Options for a data directory under `dir`, removed after each run.
    pub(crate) fn new(dir: PathBuf) -> Common {
        Common { dir, keep: false }
    }

    pub(crate) fn run_dir(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-{}", std::process::id()))
    }

    pub(crate) fn cleanup(&self, dir: &PathBuf) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Options of the `burn-down` scenario.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct BurnDownArgs {
    #[command(flatten)]
    common: Common,
    /// Tasks to submit and run.
    #[arg(long, default_value_t = 200_000)]
    tasks: u64,
    /// Tasks per `submitTasks` request.
    #[arg(long, default_value_t = 1_000)]
    batch: u64,
    /// Concurrent HTTP submitters.
    #[arg(long, default_value_t = 4)]
    clients: u64,
    /// Worker agents.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Capacity of each worker.
    #[arg(long, default_value_t = 256)]
    threads: u32,
}

/// What one burn-down measured.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BurnDown {
    /// Tasks submitted and run.
    pub(crate) tasks: u64,
    /// First submission to the last acknowledged.
    pub(crate) submit: Duration,
    /// Workers started to the last task finished (durable): the drain.
    pub(crate) drain: Duration,
    /// First submission to the last task finished.
    pub(crate) total: Duration,
}

impl BurnDown {
    /// Tasks per second of a part of the run.
    pub(crate) fn rate(&self, part: Duration) -> f64 {
        self.tasks as f64 / part.as_secs_f64()
    }
}

/// Submits `tasks` no-op tasks (batches of `batch` from `clients` concurrent clients) with no
/// worker connected, then connects `workers` workers of `threads` each and times until the
/// broker counts every task finished (durable).
pub(crate) async fn measure_burn_down(
    broker: &dyn Target,
    tasks: u64,
    batch: u64,
    clients: u64,
    workers: usize,
    threads: u32,
) -> anyhow::Result<BurnDown> {
    let client = broker.client()?;
    let first_submit = Instant::now();
    let submit = submit_all(broker, tasks, batch, clients).await?;
    let started = Instant::now();
    let workers = Workers::start(
        broker,
        workers,
        threads,
        executor_fn(|_| async { Ok::<_, TaskFailure>(String::new()) }),
    );
    let done = wait_finished(&client, tasks, Duration::from_secs(600)).await;
    workers.stop().await;
    let done = done?;
    Ok(BurnDown {
        tasks,
        submit,
        drain: done - started,
        total: done - first_submit,
    })
}

/// Submit everything with no worker connected, then connect the workers and time until every
/// task is finished (as the broker reports it: durable).
pub(crate) async fn burn_down(args: &BurnDownArgs) -> anyhow::Result<()> {
    let dir = args.common.run_dir("burn-down");
    // Every worker connects from 127.0.0.1: past the per-address bound (64 by default), lift it.
    let broker = if args.workers > 64 {
        let workers_toml = format!("max_connections_per_address = {}", args.workers + 16);
        BrokerProcess::start_with_workers(&dir, &workers_toml).await?
    } else {
        BrokerProcess::start(&dir, "").await?
    };
    let run = measure_burn_down(
        &broker,
        args.tasks,
        args.batch,
        args.clients,
        args.workers,
        args.threads,
    )
    .await?;
    let rss = rss_bytes(&broker.pid().to_string()).unwrap_or(0);
    broker.stop();
    args.common.cleanup(&dir);

    let mut t = Table::new(
        "burn-down: no-op tasks through a broker process (file log, fsync on), HTTP submit in batches, workers over TCP",
        &[
            "tasks",
            "batch x clients",
            "workers x threads",
            "submit s",
            "submit tasks/s",
            "burn-down s",
            "burn-down tasks/s",
            "first submit -> last finish tasks/s",
            "broker RSS after",
        ],
    );
    t.row(vec![
        group(args.tasks),
        format!("{} x {}", args.batch, args.clients),
        format!("{} x {}", args.workers, args.threads),
        format!("{:.2}", run.submit.as_secs_f64()),
        per_sec(run.rate(run.submit)),
        format!("{:.2}", run.drain.as_secs_f64()),
        per_sec(run.rate(run.drain)),
        per_sec(run.rate(run.total)),
        mib(rss),
    ]);
    t.print();
    Ok(())
}

/// Options of the `latency` scenario.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct LatencyArgs {
    #[command(flatten)]
    common: Common,
    /// Submissions per second (one task per `submitTask` request, open loop).
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Measured seconds (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Worker agents.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Capacity of each worker.
    #[arg(long, default_value_t = 64)]
    threads: u32,
    /// Also measure a broker whose log never fsyncs (not durable): the difference is what the
    /// disk's flushes add to the latency. The two runs alternate, `--rounds` times.
    #[arg(long)]
    also_without_fsync: bool,
    /// Runs of each broker.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What one latency run measured; times in milliseconds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Latency {
    /// Submissions per second achieved.
    pub(crate) achieved: f64,
    /// Tasks measured (after the warm-up).
    pub(crate) samples: u64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
}

/// Open-loop single submissions at `rate` per second for one second of warm-up and `seconds`
/// measured; each task carries the time its request was sent, and the executor records the
/// delay when it starts.
pub(crate) async fn measure_latency(
    broker: &dyn Target,
    rate: u64,
    seconds: u64,
    workers: usize,
    threads: u32,
) -> anyhow::Result<Latency> {
    let histogram = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram bounds")?,
    ));
    let measuring_from = Arc::new(AtomicU64::new(u64::MAX));
    let executor = {
        let histogram = histogram.clone();
        let measuring_from = measuring_from.clone();
        executor_fn(move |task| {
            let histogram = histogram.clone();
            let measuring_from = measuring_from.clone();
            async move {
                let started = now_micros();
                if let Ok(sent) = task.data.parse::<u64>()
                    && sent >= measuring_from.load(Ordering::Relaxed)
                {
                    let _ = histogram
                        .lock()
                        .await
                        .record(started.saturating_sub(sent).max(1));
                }
                Ok::<_, TaskFailure>(String::new())
            }
        })
    };
    let workers = Workers::start(broker, workers, threads, executor);
    // Let the workers connect.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let offered = offer(broker, rate, seconds, &measuring_from).await;
    let finished = match &offered {
        Ok((total, _)) => wait_finished(&broker.client()?, *total, Duration::from_secs(60))
            .await
            .map(|_| ()),
        Err(_) => Ok(()),
    };
    workers.stop().await;
    let (_, achieved) = offered?;
    finished?;
    let h = histogram.lock().await;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(Latency {
        achieved,
        samples: h.len(),
        p50: ms(0.5),
        p90: ms(0.9),
        p99: ms(0.99),
        p999: ms(0.999),
        max: h.max() as f64 / 1000.0,
    })
}

/// Submits one task per request at `rate` per second for `seconds + 1` seconds (open loop: a
/// slow request never delays the next), marking the start of the measured part in
/// `measuring_from`; returns the tasks submitted and the rate achieved.
async fn offer(
    broker: &dyn Target,
    rate: u64,
    seconds: u64,
    measuring_from: &AtomicU64,
) -> anyhow::Result<(u64, f64)> {
    let client = Arc::new(broker.client()?);
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let warmup = rate;
    let total = rate * (seconds + 1);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 0..total {
        ticker.tick().await;
        if i == warmup {
            measuring_from.store(now_micros(), Ordering::Relaxed);
        }
        let client = client.clone();
        inflight.spawn(async move {
            let task: TaskSubmission = noop(now_micros().to_string());
            client.submit(&task).await
        });
        while let Some(done) = inflight.try_join_next() {
            done.context("submitter panicked")?.context("submit")?;
        }
    }
    while let Some(done) = inflight.join_next().await {
        done.context("submitter panicked")?.context("submit")?;
    }
    Ok((total, total as f64 / started.elapsed().as_secs_f64()))
}

/// Open-loop single submissions at a fixed rate, submit -> executor start.
pub(crate) async fn latency(args: &LatencyArgs) -> anyhow::Result<()> {
    let ms = |v: f64| format!("{v:.3}");
    let mut t = Table::new(
        "latency: submit (HTTP request sent) -> executor start, open loop, broker process with file log",
        &[
            "log",
            "round",
            "rate/s offered",
            "achieved/s",
            "samples",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
        ],
    );
    let kinds: &[bool] = if args.also_without_fsync {
        &[true, false]
    } else {
        &[true]
    };
    for round in 1..=args.rounds.max(1) {
        for &fsync in kinds {
            let dir = args.common.run_dir("latency");
            let broker = if fsync {
                BrokerProcess::start(&dir, "").await?
            } else {
                BrokerProcess::start_without_fsync(&dir).await?
            };
            let run =
                measure_latency(&broker, args.rate, args.seconds, args.workers, args.threads).await;
            broker.stop();
            args.common.cleanup(&dir);
            let run = run?;
            t.row(vec![
                if fsync {
                    "fsync on"
                } else {
                    "fsync off (not durable)"
                }
                .to_owned(),
                round.to_string(),
                group(args.rate),
                per_sec(run.achieved),
                group(run.samples),
                ms(run.p50),
                ms(run.p90),
                ms(run.p99),
                ms(run.p999),
                ms(run.max),
            ]);
        }
    }
    t.print();
    Ok(())
}

/// Options of the `scale` scenario.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ScaleArgs {
    #[command(flatten)]
    common: Common,
    /// Waiting tasks of the "many" run (and of the memory measurement).
    #[arg(long, default_value_t = 1_000_000)]
    many: u64,
    /// Waiting tasks of the "few" run.
    #[arg(long, default_value_t = 1_000)]
    few: u64,
    /// Tasks run (and refilled) in each measured window.
    #[arg(long, default_value_t = 200_000)]
    measure: u64,
    /// Worker agents.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Capacity of each worker.
    #[arg(long, default_value_t = 256)]
    threads: u32,
}

/// What the scale scenario measured.
#[derive(Clone, Debug)]
pub(crate) struct Scale {
    /// Waiting tasks of the memory reading.
    pub(crate) many: u64,
    /// Seconds to submit them.
    pub(crate) submit_secs: f64,
    /// The broker's RSS holding them.
    pub(crate) rss: u64,
    /// RSS growth over the idle broker, per waiting task.
    pub(crate) rss_per_task: u64,
    /// Steady-state runs, many then few: (backlog, waiting at the end, tasks, seconds).
    pub(crate) runs: Vec<(u64, u64, u64, f64)>,
}

impl Scale {
    /// Tasks per second of run `i` (0: many waiting, 1: few).
    pub(crate) fn rate(&self, i: usize) -> f64 {
        let (_, _, n, secs) = self.runs[i];
        n as f64 / secs
    }
}

/// Memory of a broker holding `many` waiting tasks, then steady-state throughput with many versus
/// `few` waiting: workers run tasks, and every finished task is replaced by a new submission, so
/// the backlog stays constant and both runs do exactly the same work (`measure` tasks each).
/// Throughput counts tasks whose finish the broker made durable, read from its status view.
pub(crate) async fn measure_scale(
    common: &Common,
    many: u64,
    few: u64,
    measure: u64,
    workers_n: usize,
    threads: u32,
) -> anyhow::Result<Scale> {
    let mut out = Scale {
        many,
        submit_secs: 0.0,
        rss: 0,
        rss_per_task: 0,
        runs: Vec::new(),
    };
    for (label, backlog) in [("many", many), ("few", few)] {
        let dir = common.run_dir(&format!("scale-{label}"));
        let broker = BrokerProcess::start(&dir, "").await?;
        let idle_rss = rss_bytes(&broker.pid().to_string()).unwrap_or(0);
        let submit = submit_all(&broker, backlog, 1_000, 4).await?;
        if label == "many" {
            // Let allocator activity settle before reading RSS.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let rss = rss_bytes(&broker.pid().to_string()).unwrap_or(0);
            out.submit_secs = submit.as_secs_f64();
            out.rss = rss;
            out.rss_per_task = rss.saturating_sub(idle_rss) / backlog.max(1);
        }
        let workers = Workers::start(
            &broker,
            workers_n,
            threads,
            executor_fn(|_| async { Ok::<_, TaskFailure>(String::new()) }),
        );
        // Refill: replace every finished task, in batches, until `warm + measure` finished.
        // Finished means made durable by the broker: its status view counts the applied state,
        // in which a finish exists only once its log entry is durable (a task an executor
        // started, or reported but not yet written to the log, does not count).
        let warm = u64::from(threads) * workers_n as u64;
        let target = warm + measure;
        let client = broker.client()?;
        let mut refilled = 0u64;
        let mut window_start = None;
        let mut finished;
        loop {
            finished = client
                .status()
                .await
                .context("read the finished count")?
                .finishedtasks;
            if window_start.is_none() && finished >= warm {
                window_start = Some((Instant::now(), finished));
            }
            if finished >= target {
                break;
            }
            let owed = finished.saturating_sub(refilled);
            // The same policy in both runs: replace in batches of 100 to 1 000.
            if owed >= 100 {
                let n = owed.min(1_000);
                let tasks: Vec<TaskSubmission> = (0..n).map(|_| noop(String::new())).collect();
                client.submit_many(&tasks).await.context("refill")?;
                refilled += n;
            } else {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let (t0, f0) = window_start.context("the warm-up never ended")?;
        let secs = t0.elapsed().as_secs_f64();
        let n = finished - f0;
        let waiting = client.status().await.map(|s| s.waitingtasks).unwrap_or(0);
        workers.stop().await;
        broker.stop();
        common.cleanup(&dir);
        out.runs.push((backlog, waiting, n, secs));
    }
    Ok(out)
}

/// Memory with many waiting tasks, then throughput with many versus few waiting.
pub(crate) async fn scale(args: &ScaleArgs) -> anyhow::Result<()> {
    let run = measure_scale(
        &args.common,
        args.many,
        args.few,
        args.measure,
        args.workers,
        args.threads,
    )
    .await?;
    let mut memory = Table::new(
        "scale: broker process RSS holding waiting tasks (file log, fsync on)",
        &["waiting tasks", "submit s", "RSS", "RSS bytes/task"],
    );
    memory.row(vec![
        group(run.many),
        format!("{:.2}", run.submit_secs),
        mib(run.rss),
        group(run.rss_per_task),
    ]);
    let mut rates = Table::new(
        "scale: steady-state throughput with a constant backlog (each finished task is replaced)",
        &["waiting", "tasks measured", "seconds", "tasks/s"],
    );
    for (i, (backlog, waiting, n, secs)) in run.runs.iter().enumerate() {
        rates.row(vec![
            format!("{} (now {})", group(*backlog), group(*waiting)),
            group(*n),
            format!("{secs:.2}"),
            per_sec(run.rate(i)),
        ]);
    }
    memory.print();
    rates.print();
    println!("ratio many/few: {:.2}", run.rate(0) / run.rate(1));
    Ok(())
}

/// Options of the `fsync` scenario.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct FsyncArgs {
    #[command(flatten)]
    common: Common,
    /// Writes of 4 KiB, each followed by fdatasync.
    #[arg(long, default_value_t = 2_000)]
    writes: u64,
}

/// What the fsync probe measured.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fsync {
    /// Writes made, each followed by its own fdatasync.
    pub(crate) writes: u64,
    /// Durable appends per second without batching.
    pub(crate) per_sec: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

/// Appends `writes` blocks of 4 KiB to a file under `dir` (created), each followed by
/// `fdatasync`, and times each.
pub(crate) fn measure_fsync(dir: &Path, writes: u64) -> anyhow::Result<Fsync> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let path = dir.join("probe");
    let mut file = std::fs::File::create(&path)?;
    let block = vec![7u8; 4096];
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram")?;
    let started = Instant::now();
    for _ in 0..writes {
        let t = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        h.record((t.elapsed().as_micros() as u64).max(1))?;
    }
    let secs = started.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(Fsync {
        writes,
        per_sec: writes as f64 / secs,
        p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

/// The disk's own speed, for context: how long one small write plus `fdatasync` takes here.
pub(crate) fn fsync(args: &FsyncArgs) -> anyhow::Result<()> {
    let dir = args.common.run_dir("fsync");
    let run = measure_fsync(&dir, args.writes);
    args.common.cleanup(&dir);
    let run = run?;
    let mut t = Table::new(
        "disk: 4 KiB append + fdatasync, one at a time (the ceiling without group commit)",
        &["writes", "syncs/s", "p50 ms", "p99 ms"],
    );
    t.row(vec![
        group(run.writes),
        per_sec(run.per_sec),
        format!("{:.3}", run.p50_ms),
        format!("{:.3}", run.p99_ms),
    ]);
    t.print();
    Ok(())
}
