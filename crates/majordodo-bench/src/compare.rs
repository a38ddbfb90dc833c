//! `compare`: our broker beside BullMQ and Celery (both on a Redis durable on acknowledgement,
//! `appendonly yes`, `appendfsync always`), measured the same way in the same run, rounds
//! interleaved (ours, bullmq, celery, ours, ...). Prints a Markdown table (median and range of
//! every figure, and the ratio ours/peer oriented so that > 1 means ours is better) and writes
//! it with the raw results (JSON) and a chart (PNG) under `--out`.
//!
//! Ours is the real dispatcher, file log (fsync on), HTTP API and worker port on 127.0.0.1 in
//! this process ([`InProcBroker`]), driven by the same code as the `burn-down` and `latency`
//! scenarios; the state-scale and many-workers figures use a broker process, as `scale` does.
//! Workload 7 runs workloads 1–3 again on a cluster of three broker processes over three real
//! bookies (one ZooKeeper and three bookies for the whole run, a fresh cluster path for every
//! workload), with the follower's lag during the burn-down and the failover time, through the
//! code of the `replicated` scenario.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use majordodo_core::LeaderConfig;
use majordodo_testkit::BkCluster;
use majordodo_worker::{TaskFailure, executor_fn};
use serde::Serialize;

use crate::cluster::{
    BrokerProcess, Target, Workers, majordodo_bin, noop, submit_all, submit_made, wait_finished,
};
use crate::e2e::{self, Common};
use crate::inproc::InProcBroker;
use crate::peers::{self, Peer, PeerList, Redis};
use crate::replicated::{self, Brokers, Lag};
use crate::report::pid_cpu_seconds;

/// Options of `compare`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct CompareArgs {
    /// Small sizes and one round: finishes in a few minutes (CI runs it; no thresholds).
    #[arg(long)]
    quick: bool,
    /// Rounds of every workload on every system, interleaved (default 3, or 1 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// Where the table (compare.md), raw results (compare.json), chart (compare.png) and the
    /// run's data go.
    #[arg(long, default_value = "bench-compare")]
    out: PathBuf,
    /// Peers to run beside ours, comma-separated (an empty value runs ours only).
    #[arg(long, default_value = "bullmq,celery", value_parser = PeerList::parse)]
    peers: PeerList,
    /// Where the peers are installed (Redis comes from the system).
    #[arg(long, env = "MAJORDODO_PEERS_DIR", default_value = "target/peers")]
    peers_dir: PathBuf,
    /// Skip workload 7 (replicated brokers over three bookies), which needs ZooKeeper and the
    /// BookKeeper jars of `scripts/test-deps`.
    #[arg(long)]
    no_replicated: bool,
    /// Keep the logs of our broker processes, ZooKeeper and the bookies in OUT/logs (the run's
    /// data itself is removed as it goes), to look into a figure afterwards.
    #[arg(long)]
    keep_logs: bool,
}

/// Where `--keep-logs` keeps the logs, and how many directories went there so far.
static KEPT_LOGS: std::sync::OnceLock<(PathBuf, std::sync::atomic::AtomicUsize)> =
    std::sync::OnceLock::new();

/// Removes a directory of the run's data; with `--keep-logs`, first copies the `*.log` files
/// under it to `OUT/logs/<NNN>-<its name>/` (numbered in the order the run removed them, as a
/// workload's directory has the same name in every round).
fn discard(dir: &Path) {
    if let Some((logs, count)) = KEPT_LOGS.get() {
        let n = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let name = dir
            .file_name()
            .map_or_else(|| "data".to_string(), |n| n.to_string_lossy().into_owned());
        if let Err(e) = copy_logs(dir, &logs.join(format!("{n:03}-{name}"))) {
            println!(
                "compare: --keep-logs: logs of {} not kept: {e}",
                dir.display()
            );
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Copies every `*.log` file under `from` to the same place under `to`.
fn copy_logs(from: &Path, to: &Path) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(from) else {
        return Ok(()); // nothing was written there
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_logs(&path, &to.join(entry.file_name()))?;
        } else if kind.is_file() && path.extension().is_some_and(|e| e == "log") {
            std::fs::create_dir_all(to)?;
            std::fs::copy(&path, to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// Sizes of one kind of run.
struct Sizes {
    burn_down: u64,
    celery_burn_down: u64,
    submit_seq: u64,
    submit_c64: u64,
    submit_batch: u64,
    celery_submit: u64,
    latency_secs: u64,
    scale_many: u64,
    scale_measure: u64,
    many_workers_tasks: u64,
    idle_secs: u64,
    fsync_writes: u64,
    /// Seconds of the loopback probe.
    loopback_secs: u64,
    snapshot_sizes: Vec<u64>,
    /// Workloads 1–3 on the replicated cluster.
    replicated: Basic,
    /// Failovers per round.
    failovers: usize,
}

/// The sizes of workloads 1–3 on ours.
struct Basic {
    burn_down: u64,
    submit_seq: u64,
    submit_c64: u64,
    submit_batch: u64,
    latency_secs: u64,
}

impl Sizes {
    fn of(quick: bool) -> Sizes {
        if quick {
            Sizes {
                burn_down: 20_000,
                celery_burn_down: 2_000,
                submit_seq: 2_000,
                submit_c64: 10_000,
                submit_batch: 20_000,
                celery_submit: 1_000,
                latency_secs: 3,
                scale_many: 100_000,
                scale_measure: 20_000,
                many_workers_tasks: 20_000,
                idle_secs: 3,
                fsync_writes: 500,
                loopback_secs: 1,
                snapshot_sizes: vec![100_000],
                replicated: Basic {
                    burn_down: 10_000,
                    submit_seq: 200,
                    submit_c64: 2_000,
                    submit_batch: 20_000,
                    latency_secs: 2,
                },
                failovers: 1,
            }
        } else {
            Sizes {
                burn_down: 200_000,
                celery_burn_down: 10_000,
                submit_seq: 10_000,
                submit_c64: 50_000,
                submit_batch: 200_000,
                celery_submit: 5_000,
                latency_secs: 10,
                scale_many: 1_000_000,
                scale_measure: 200_000,
                many_workers_tasks: 200_000,
                idle_secs: 10,
                fsync_writes: 2_000,
                loopback_secs: 3,
                snapshot_sizes: vec![100_000, 1_000_000],
                replicated: Basic {
                    burn_down: 200_000,
                    submit_seq: 2_000,
                    submit_c64: 20_000,
                    submit_batch: 200_000,
                    latency_secs: 10,
                },
                failovers: 3,
            }
        }
    }

    /// The sizes of workloads 1–3 on the file log.
    fn file(&self) -> Basic {
        Basic {
            burn_down: self.burn_down,
            submit_seq: self.submit_seq,
            submit_c64: self.submit_c64,
            submit_batch: self.submit_batch,
            latency_secs: self.latency_secs,
        }
    }
}

/// Whether a larger value of a figure is better.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Better {
    Higher,
    Lower,
}

/// One figure: every round's value per system, and why a system has none.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Figure {
    pub(crate) key: String,
    pub(crate) workload: &'static str,
    pub(crate) label: String,
    pub(crate) unit: &'static str,
    pub(crate) better: Better,
    pub(crate) values: BTreeMap<String, Vec<f64>>,
    pub(crate) notes: BTreeMap<String, String>,
    /// The figure of ours this one is shown beside (a replicated figure: the same workload on
    /// the file log), round by round.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) versus: Option<String>,
}

/// The figures of a run, in table order.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Figures {
    pub(crate) list: Vec<Figure>,
}

impl Figures {
    fn define(
        &mut self,
        key: impl Into<String>,
        workload: &'static str,
        label: String,
        unit: &'static str,
        better: Better,
    ) {
        self.list.push(Figure {
            key: key.into(),
            workload,
            label,
            unit,
            better,
            values: BTreeMap::new(),
            notes: BTreeMap::new(),
            versus: None,
        });
    }

    fn get(&mut self, key: &str) -> &mut Figure {
        self.list
            .iter_mut()
            .find(|f| f.key == key)
            .unwrap_or_else(|| panic!("figure {key} is defined"))
    }

    fn record(&mut self, key: &str, system: &str, value: f64) {
        if value.is_finite() {
            self.get(key)
                .values
                .entry(system.to_string())
                .or_default()
                .push(value);
        }
    }

    fn note(&mut self, key: &str, system: &str, why: &str) {
        self.get(key)
            .notes
            .insert(system.to_string(), why.to_string());
    }
}

/// The workloads' names, in table order.
pub(crate) const WORKLOADS: &[&str] = &[
    "1 burn-down",
    "2 submit",
    "3 latency",
    "4 state scale",
    "5 snapshots",
    "6 many workers",
    "7 replicated",
    "machine",
];

fn define_figures(f: &mut Figures, s: &Sizes) {
    use Better::{Higher, Lower};
    let w = WORKLOADS;
    let many = crate::report::group(s.scale_many);
    let fixed: Vec<(String, &'static str, String, &'static str, Better)> = vec![
        (
            "burn_drain".into(),
            w[0],
            "drain (workers started -> last finish)".into(),
            "tasks/s",
            Higher,
        ),
        (
            "burn_total".into(),
            w[0],
            "first submit -> last finish".into(),
            "tasks/s",
            Higher,
        ),
        (
            "submit_seq".into(),
            w[1],
            "1 sequential client, 1 task per request".into(),
            "tasks/s",
            Higher,
        ),
        (
            "submit_c64".into(),
            w[1],
            "64 concurrent clients, 1 task per request".into(),
            "tasks/s",
            Higher,
        ),
        (
            "submit_batch".into(),
            w[1],
            "batches of 1 000".into(),
            "tasks/s",
            Higher,
        ),
    ];
    let mut all = fixed;
    for rate in [200, 1000] {
        for (q, name) in [
            ("p50", "p50"),
            ("p99", "p99"),
            ("p999", "p99.9"),
            ("max", "max"),
        ] {
            let label = format!("submit -> start at {rate}/s, {name}");
            all.push((format!("lat{rate}_{q}"), w[2], label, "ms", Lower));
        }
        let label = format!("submit rate achieved of {rate}/s offered");
        all.push((
            format!("lat{rate}_achieved"),
            w[2],
            label,
            "tasks/s",
            Higher,
        ));
    }
    all.extend([
        (
            "scale_rss".into(),
            w[3],
            format!("memory per waiting task at {many}"),
            "bytes",
            Lower,
        ),
        (
            "scale_many".into(),
            w[3],
            format!("assignment throughput, {many} waiting"),
            "tasks/s",
            Higher,
        ),
        (
            "scale_few".into(),
            w[3],
            "assignment throughput, 1 000 waiting".into(),
            "tasks/s",
            Higher,
        ),
    ]);
    for n in &s.snapshot_sizes {
        let at = crate::report::group(*n);
        all.extend([
            (
                format!("snap{n}_size"),
                w[4],
                format!("snapshot size, {at} tasks of 100 random bytes"),
                "MiB",
                Lower,
            ),
            (
                format!("snap{n}_ratio"),
                w[4],
                format!("snapshot size / raw task data, {at} tasks"),
                "ratio",
                Lower,
            ),
            (
                format!("snap{n}_write"),
                w[4],
                format!("snapshot write time, {at} tasks"),
                "ms",
                Lower,
            ),
            (
                format!("snap{n}_load"),
                w[4],
                format!("snapshot load (read + decode), {at} tasks"),
                "ms",
                Lower,
            ),
        ]);
    }
    let largest = crate::report::group(*s.snapshot_sizes.last().expect("a size"));
    all.extend([
        (
            "snap_boot".into(),
            w[4],
            format!("broker boot from the {largest}-task snapshot"),
            "ms",
            Lower,
        ),
        (
            "idle_cpu".into(),
            w[5],
            "broker CPU with 1 000 idle worker connections".into(),
            "% of a core",
            Lower,
        ),
        (
            "workers_1000".into(),
            w[5],
            "first submit -> last finish, 1 000 workers x 1 thread".into(),
            "tasks/s",
            Higher,
        ),
        (
            "workers_10".into(),
            w[5],
            "first submit -> last finish, 10 workers x 100 threads".into(),
            "tasks/s",
            Higher,
        ),
        (
            "workers_ratio".into(),
            w[5],
            "1 000 workers / 10 workers".into(),
            "ratio",
            Higher,
        ),
        (
            "fsync_p50".into(),
            w[7],
            "data disk: 4 KiB append + fdatasync, p50".into(),
            "ms",
            Lower,
        ),
        (
            "fsync_p99".into(),
            w[7],
            "data disk: 4 KiB append + fdatasync, p99".into(),
            "ms",
            Lower,
        ),
        (
            "fsync_rate".into(),
            w[7],
            "durable appends without batching (1 record per fdatasync)".into(),
            "appends/s",
            Higher,
        ),
        (
            "loopback_rate".into(),
            w[7],
            "loopback TCP: round trips of 64 bytes, 1 000 connections x 1 in flight".into(),
            "round trips/s",
            Higher,
        ),
        (
            "tasks_per_fsync".into(),
            w[7],
            "tasks per fsync in our burn-down".into(),
            "tasks",
            Higher,
        ),
    ]);
    for (key, workload, label, unit, better) in all {
        f.define(key, workload, label, unit, better);
    }
    // Workload 7, before the machine's figures: workloads 1–3 again, each beside its figure on
    // the file log, then the follower's lag and the failover time.
    let mut replicated: Vec<Figure> = f
        .list
        .iter()
        .filter(|g| w[..3].contains(&g.workload))
        .map(|g| Figure {
            key: format!("{REPLICATED}{}", g.key),
            workload: w[6],
            versus: Some(g.key.clone()),
            ..g.clone()
        })
        .collect();
    let mut extra = Figures::default();
    for (q, name) in [("p50", "p50"), ("p99", "p99"), ("max", "max")] {
        extra.define(
            format!("lag_{q}"),
            w[6],
            format!("follower lag behind the leader during the burn-down, {name}"),
            "ms",
            Lower,
        );
    }
    extra.define(
        "failover",
        w[6],
        format!(
            "failover: leader SIGKILL -> first submit acknowledged by the new leader ({} per round)",
            s.failovers
        ),
        "s",
        Lower,
    );
    replicated.extend(extra.list);
    let at = f
        .list
        .iter()
        .position(|g| g.workload == w[7])
        .unwrap_or(f.list.len());
    f.list.splice(at..at, replicated);
}

/// The prefix of the keys of the replicated figures of workloads 1–3.
const REPLICATED: &str = "repl_";

/// Everything written to compare.json.
#[derive(Serialize)]
struct Raw<'a> {
    flags: Vec<String>,
    rounds: usize,
    machine: BTreeMap<&'static str, String>,
    versions: Vec<(String, String)>,
    systems: Vec<String>,
    figures: &'a [Figure],
}

/// Raises this process's soft limit of open files to its hard limit: the many-workers workload
/// holds a thousand sockets here (its broker process inherits the limit too).
fn raise_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by pointer.
    #[allow(unsafe_code)]
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

pub(crate) async fn run(args: &CompareArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    raise_open_files();
    let sizes = Sizes::of(args.quick);
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let data = args.out.join(format!("data-{}", std::process::id()));
    if args.keep_logs {
        let logs = args.out.join("logs");
        if logs.exists() {
            println!(
                "compare: --keep-logs: replacing the logs of an earlier run in {}",
                logs.display()
            );
            std::fs::remove_dir_all(&logs).with_context(|| format!("remove {}", logs.display()))?;
        }
        println!("compare: --keep-logs: logs go to {}", logs.display());
        let _ = KEPT_LOGS.set((logs, std::sync::atomic::AtomicUsize::new(0)));
    }
    let mut peers_list = args.peers.0.clone();
    peers_list.sort();
    peers_list.dedup();
    if !peers_list.is_empty() {
        println!(
            "compare: checking the peers in {}",
            args.peers_dir.display()
        );
        peers::install(&args.peers_dir, &peers_list)?;
    }
    let peers_dir = std::path::absolute(&args.peers_dir)?;
    // Workload 7's ZooKeeper and bookies, for the whole run: started first, so that a machine
    // without them fails at once rather than after the other workloads.
    let bk = if args.no_replicated {
        println!("compare: --no-replicated: workload 7 (replicated brokers) is not run");
        None
    } else {
        Some(start_replicated().await?)
    };
    let redis = if peers_list.is_empty() {
        None
    } else {
        Some(Redis::start(&data.join("redis"))?)
    };
    let mut figures = Figures::default();
    define_figures(&mut figures, &sizes);
    let mut systems = vec!["ours".to_string()];
    systems.extend(peers_list.iter().map(|p| p.name().to_string()));
    notes_for_peers(&mut figures, &peers_list);
    // The cluster's brokers are processes: without the binary, workload 7 is not run, as
    // workloads 4 and 6.
    let not_run = match (&bk, majordodo_bin()) {
        (None, _) => Some("not run (--no-replicated)".to_string()),
        (Some(_), Err(e)) => Some(format!("not run: {e}")),
        (Some(_), Ok(_)) => None,
    };
    let bk = match not_run {
        Some(why) => {
            for key in replicated_keys(&figures) {
                figures.note(&key, "ours", &why);
            }
            None
        }
        None => bk,
    };

    let fsync = e2e::measure_fsync(&data.join("fsync"), sizes.fsync_writes)?;
    figures.record("fsync_p50", "ours", fsync.p50_ms);
    figures.record("fsync_p99", "ours", fsync.p99_ms);
    figures.record("fsync_rate", "ours", fsync.per_sec);
    let loopback =
        crate::loopback::measure(1_000, Duration::from_secs(sizes.loopback_secs)).await?;
    figures.record("loopback_rate", "ours", loopback);
    let mut machine = machine();
    machine.insert("fsync p50 ms", format!("{:.3}", fsync.p50_ms));
    machine.insert("fsync p99 ms", format!("{:.3}", fsync.p99_ms));
    let output = Output {
        out: args.out.clone(),
        flags: std::env::args().skip(2).collect(),
        machine,
        versions: if peers_list.is_empty() {
            Vec::new()
        } else {
            peers::versions(&peers_dir)
        },
        systems: systems.clone(),
    };

    for round in 1..=rounds {
        println!("compare: round {round} of {rounds}: ours");
        ours_round(&mut figures, &sizes, &data).await?;
        for &peer in &peers_list {
            println!("compare: round {round} of {rounds}: {}", peer.name());
            let redis = redis.as_ref().expect("started with the peers");
            peer_round(&mut figures, &sizes, &peers_dir, redis, peer)?;
        }
        println!("compare: round {round} of {rounds}: ours, snapshots");
        for &n in &sizes.snapshot_sizes {
            let boot = n == *sizes.snapshot_sizes.last().expect("a size");
            snapshots(&mut figures, &data, n, boot).await?;
        }
        println!("compare: round {round} of {rounds}: ours, state scale and many workers");
        ours_process_round(&mut figures, &sizes, &data).await?;
        if let Some(bk) = &bk {
            println!("compare: round {round} of {rounds}: ours, replicated (3 bookies)");
            replicated_round(&mut figures, &sizes, bk, &data, round).await?;
        }
        if round < rounds {
            // What is done so far stays if a later round fails.
            output.write(&figures, round)?;
        }
    }
    drop(redis);
    if let (Some(bk), Some((logs, _))) = (&bk, KEPT_LOGS.get()) {
        let kept = copy_logs(bk.dir(), &logs.join("bookkeeper")).and_then(|()| {
            let zk = bk.zk().log_path();
            if zk.starts_with(bk.dir()) || !zk.exists() {
                return Ok(());
            }
            std::fs::create_dir_all(logs.join("zookeeper"))?;
            std::fs::copy(&zk, logs.join("zookeeper").join("zookeeper.log")).map(|_| ())
        });
        if let Err(e) = kept {
            println!("compare: --keep-logs: logs of ZooKeeper and the bookies not kept: {e}");
        }
    }
    drop(bk);
    let _ = std::fs::remove_dir_all(&data);
    let table = output.write(&figures, rounds)?;
    println!("\n{table}");
    println!(
        "compare: wrote {}/compare.md, compare.json, compare.png in {:.0} s",
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What the outputs carry besides the figures.
struct Output {
    out: PathBuf,
    flags: Vec<String>,
    machine: BTreeMap<&'static str, String>,
    versions: Vec<(String, String)>,
    systems: Vec<String>,
}

impl Output {
    /// Writes the table, the raw results and the chart of the rounds done so far; returns the
    /// table.
    fn write(&self, figures: &Figures, rounds: usize) -> anyhow::Result<String> {
        let table = markdown(figures, &self.systems, rounds, &self.flags, &self.machine);
        std::fs::write(self.out.join("compare.md"), &table)?;
        let raw = Raw {
            flags: self.flags.clone(),
            rounds,
            machine: self.machine.clone(),
            versions: self.versions.clone(),
            systems: self.systems.clone(),
            figures: &figures.list,
        };
        std::fs::write(
            self.out.join("compare.json"),
            serde_json::to_string_pretty(&raw)?,
        )?;
        crate::chart::draw(&self.out.join("compare.png"), &figures.list, &self.systems)?;
        Ok(table)
    }
}

/// Why a peer has no value for the figures that are ours only.
fn notes_for_peers(figures: &mut Figures, peers: &[Peer]) {
    for peer in peers {
        let p = peer.name();
        if *peer == Peer::Celery {
            figures.note("submit_batch", p, "no bulk publish API");
        }
        for key in ["scale_many", "scale_few"] {
            figures.note(
                key,
                p,
                "not measured: a Redis list has no assignment step to load",
            );
        }
        if *peer == Peer::Celery {
            figures.note("scale_rss", p, "not measured");
        }
        let snapshot_keys = figures
            .list
            .iter()
            .filter(|f| f.key.starts_with("snap"))
            .map(|f| f.key.clone())
            .collect::<Vec<_>>();
        for key in snapshot_keys {
            figures.note(&key, p, "not measured (ours only)");
        }
        for key in ["idle_cpu", "workers_1000", "workers_10", "workers_ratio"] {
            figures.note(key, p, "not measured (ours only)");
        }
        for key in ["fsync_p50", "fsync_p99", "fsync_rate", "loopback_rate"] {
            figures.note(key, p, "the machine's, shared by all");
        }
        figures.note("tasks_per_fsync", p, "Redis does not report its fsyncs");
        for key in replicated_keys(figures) {
            figures.note(&key, p, "not measured: no replicated mode here (one Redis)");
        }
    }
}

/// The keys of workload 7's figures.
fn replicated_keys(figures: &Figures) -> Vec<String> {
    figures
        .list
        .iter()
        .filter(|f| f.workload == WORKLOADS[6])
        .map(|f| f.key.clone())
        .collect()
}

/// ZooKeeper and three bookies for workload 7.
async fn start_replicated() -> anyhow::Result<BkCluster> {
    let hint = "workload 7 (replicated brokers) needs ZooKeeper and the BookKeeper jars: run scripts/test-deps, or pass --no-replicated to skip it";
    println!("compare: starting ZooKeeper and 3 bookies for workload 7");
    replicated::start_bookies(&[], &[]).await.context(hint)
}

/// Where ours runs workloads 1–3: a fresh broker for every workload, in this process on its
/// file log, or a cluster of three broker processes over the shared bookies.
enum Ours<'a> {
    File {
        data: &'a Path,
    },
    Replicated {
        bk: &'a BkCluster,
        data: &'a Path,
        round: usize,
    },
}

/// What a workload on a fresh broker gave besides its own result: the file log's fsyncs, and
/// the follower's lag when asked for.
struct OnBroker<T> {
    out: T,
    fsyncs: Option<u64>,
    lag: Option<Lag>,
}

/// Where a workload runs our broker on its file log (a cluster's brokers are always processes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Inside the bench process, which then also counts the log's fsyncs.
    InBench,
    /// A broker process of its own, as Redis is for the peers, so that the timings of the
    /// load generator's tasks and the broker's do not share one runtime; in the bench process
    /// when the `majordodo` binary is missing (said on the terminal).
    Process,
}

impl Ours<'_> {
    /// Runs `work` on a fresh broker (its data removed afterwards) placed by `place`; on a
    /// cluster, samples the follower's lag meanwhile if `lag`.
    async fn with<T>(
        &self,
        name: &str,
        lag: bool,
        place: Place,
        work: impl AsyncFnOnce(&dyn Target) -> anyhow::Result<T>,
    ) -> anyhow::Result<OnBroker<T>> {
        let process = place == Place::Process
            && match majordodo_bin() {
                Ok(_) => true,
                Err(e) => {
                    println!("compare: {name} runs inside the bench process: {e}");
                    false
                }
            };
        match *self {
            Ours::File { data } if process => {
                let dir = data.join(name);
                let broker = BrokerProcess::start(&dir, "").await?;
                let out = work(&broker).await;
                broker.stop();
                discard(&dir);
                Ok(OnBroker {
                    out: out?,
                    fsyncs: None,
                    lag: None,
                })
            }
            Ours::File { data } => {
                let dir = data.join(name);
                let broker = InProcBroker::start(&dir, LeaderConfig::default()).await?;
                let before = broker.log_stats().fsyncs;
                let out = work(&broker).await;
                let fsyncs = broker.log_stats().fsyncs - before;
                broker.stop().await;
                discard(&dir);
                Ok(OnBroker {
                    out: out?,
                    fsyncs: Some(fsyncs),
                    lag: None,
                })
            }
            Ours::Replicated { bk, data, round } => {
                let dir = data.join(format!("replicated-{name}"));
                let base = format!("/compare-{}-{round}-{name}", std::process::id());
                let brokers =
                    Brokers::new(bk, &dir, &base, 3, replicated::BURN_DOWN_SESSION_TIMEOUT).await?;
                let measured = async {
                    let leader = brokers.wait_leader(Duration::from_secs(60)).await?;
                    let target = brokers.process(leader);
                    if lag {
                        replicated::with_follower_lag(&brokers, leader, work(target)).await
                    } else {
                        Ok((work(target).await?, None))
                    }
                }
                .await;
                brokers.stop();
                discard(&dir);
                let (out, lag) = measured?;
                Ok(OnBroker {
                    out,
                    fsyncs: None,
                    lag,
                })
            }
        }
    }
}

/// Workloads 1–3 against our broker on its file log, and the tasks per fsync of its burn-down.
async fn ours_round(figures: &mut Figures, s: &Sizes, data: &Path) -> anyhow::Result<()> {
    workloads_1_to_3(figures, &Ours::File { data }, &s.file(), "").await
}

/// Workload 7: workloads 1–3 on a replicated cluster, the follower's lag during the burn-down,
/// then `failovers` failovers on a cluster of their own.
async fn replicated_round(
    figures: &mut Figures,
    s: &Sizes,
    bk: &BkCluster,
    data: &Path,
    round: usize,
) -> anyhow::Result<()> {
    let ours = Ours::Replicated { bk, data, round };
    workloads_1_to_3(figures, &ours, &s.replicated, REPLICATED).await?;
    let runs = replicated::measure_failovers(
        bk,
        &data.join("failover"),
        &format!("/compare-{}-{round}-failover", std::process::id()),
        3,
        FAILOVER_SESSION_TIMEOUT,
        s.failovers,
    )
    .await?;
    discard(&data.join("failover"));
    for run in runs {
        figures.record("failover", "ours", run.secs);
    }
    Ok(())
}

/// The brokers' ZooKeeper session timeout in the failovers (the `replicated` scenario's
/// default): a leader is known dead this long after its last heartbeat.
const FAILOVER_SESSION_TIMEOUT: Duration = Duration::from_secs(2);

/// Workloads 1–3 on `ours` with sizes `n`, recorded under the keys prefixed with `prefix`.
async fn workloads_1_to_3(
    figures: &mut Figures,
    ours: &Ours<'_>,
    n: &Basic,
    prefix: &str,
) -> anyhow::Result<()> {
    let key = |k: &str| format!("{prefix}{k}");
    let burn = ours
        .with("burn-down", true, Place::InBench, async |b| {
            e2e::measure_burn_down(b, n.burn_down, 1_000, 4, 4, 256).await
        })
        .await?;
    let run = burn.out;
    figures.record(&key("burn_drain"), "ours", run.rate(run.drain));
    figures.record(&key("burn_total"), "ours", run.rate(run.total));
    if let Some(fsyncs) = burn.fsyncs {
        figures.record(
            "tasks_per_fsync",
            "ours",
            run.tasks as f64 / fsyncs.max(1) as f64,
        );
    }
    if let Some(lag) = burn.lag {
        figures.record("lag_p50", "ours", lag.p50());
        figures.record("lag_p99", "ours", lag.p99());
        figures.record("lag_max", "ours", lag.max());
    }
    for (k, total, clients, batch) in [
        ("submit_seq", n.submit_seq, 1, 1),
        ("submit_c64", n.submit_c64, 64, 1),
        ("submit_batch", n.submit_batch, 1, 1_000),
    ] {
        let secs = ours
            .with(k, false, Place::InBench, async |b| {
                let clients = (0..clients)
                    .map(|_| b.client())
                    .collect::<anyhow::Result<Vec<_>>>()?;
                submit_made(
                    clients,
                    total,
                    batch,
                    std::sync::Arc::new(|_| noop(String::new())),
                )
                .await
            })
            .await?
            .out;
        figures.record(&key(k), "ours", total as f64 / secs.as_secs_f64());
    }
    for rate in [200u64, 1000] {
        let lat = ours
            .with(
                &format!("latency-{rate}"),
                false,
                Place::Process,
                async |b| e2e::measure_latency(b, rate, n.latency_secs, 2, 64).await,
            )
            .await?
            .out;
        for (q, v) in [
            ("p50", lat.p50),
            ("p99", lat.p99),
            ("p999", lat.p999),
            ("max", lat.max),
        ] {
            figures.record(&key(&format!("lat{rate}_{q}")), "ours", v);
        }
        figures.record(&key(&format!("lat{rate}_achieved")), "ours", lat.achieved);
    }
    Ok(())
}

/// Celery's worker pool: threads, 64 of them, the fastest burn-down of prefork 2 (its default
/// on two cores), prefork 8, threads 16 and threads 64 on the machine of docs/benchmarks.md.
const CELERY_POOL: &str = "threads";
const CELERY_CONCURRENCY: u32 = 64;

/// Workloads 1–3 (and Redis's memory per waiting BullMQ job) through a peer's driver.
fn peer_round(
    figures: &mut Figures,
    s: &Sizes,
    dir: &Path,
    redis: &Redis,
    peer: Peer,
) -> anyhow::Result<()> {
    let p = peer.name();
    let limit = Duration::from_secs(900);
    let run = |args: &[String]| peers::run_driver(dir, peer, redis, args, limit);
    let num = |v: &serde_json::Value, k: &str| -> anyhow::Result<f64> {
        v.get(k)
            .and_then(serde_json::Value::as_f64)
            .with_context(|| format!("{p} driver result {v} has no number {k}"))
    };
    let (burn, submit_n) = match peer {
        Peer::BullMq => (s.burn_down, [s.submit_seq, s.submit_c64, s.submit_batch]),
        Peer::Celery => (
            s.celery_burn_down,
            [s.celery_submit, s.celery_submit * 2, 0],
        ),
    };
    let burn_args = match peer {
        Peer::BullMq => vec![
            "burn-down".into(),
            burn.to_string(),
            "4".into(),
            "256".into(),
        ],
        Peer::Celery => vec![
            "burn-down".into(),
            burn.to_string(),
            CELERY_POOL.into(),
            CELERY_CONCURRENCY.to_string(),
        ],
    };
    let r = run(&burn_args)?;
    figures.record("burn_drain", p, num(&r, "drain_per_s")?);
    figures.record("burn_total", p, num(&r, "total_per_s")?);
    for (key, mode, n) in [
        ("submit_seq", "seq", submit_n[0]),
        ("submit_c64", "c64", submit_n[1]),
        ("submit_batch", "batch", submit_n[2]),
    ] {
        if n == 0 {
            continue;
        }
        let r = run(&["submit".into(), mode.into(), n.to_string()])?;
        figures.record(key, p, num(&r, "per_s")?);
        if let Some(bytes) = r
            .get("used_memory_per_job")
            .and_then(serde_json::Value::as_f64)
        {
            figures.record("scale_rss", p, bytes);
            figures.note(
                "scale_rss",
                p,
                &format!(
                    "Redis used_memory per waiting job at {}",
                    crate::report::group(n)
                ),
            );
        }
    }
    for rate in [200u64, 1000] {
        let mut latency_args = vec![
            "latency".to_string(),
            rate.to_string(),
            s.latency_secs.to_string(),
        ];
        if peer == Peer::Celery {
            latency_args.extend([CELERY_POOL.to_string(), CELERY_CONCURRENCY.to_string()]);
        }
        let r = run(&latency_args)?;
        for (q, k) in [
            ("p50", "p50_ms"),
            ("p99", "p99_ms"),
            ("p999", "p999_ms"),
            ("max", "max_ms"),
        ] {
            figures.record(&format!("lat{rate}_{q}"), p, num(&r, k)?);
        }
        figures.record(
            &format!("lat{rate}_achieved"),
            p,
            num(&r, "achieved_per_s")?,
        );
    }
    Ok(())
}

/// Workload 5 in `figures`: see [`measure_snapshot`].
async fn snapshots(figures: &mut Figures, data: &Path, n: u64, boot: bool) -> anyhow::Result<()> {
    let m = measure_snapshot(data, n, boot).await?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    figures.record(
        &format!("snap{n}_size"),
        "ours",
        m.size as f64 / (1024.0 * 1024.0),
    );
    figures.record(&format!("snap{n}_ratio"), "ours", m.ratio());
    figures.record(&format!("snap{n}_write"), "ours", ms(m.write));
    figures.record(&format!("snap{n}_load"), "ours", ms(m.load));
    if let Some(b) = m.boot {
        figures.record("snap_boot", "ours", ms(b));
    }
    Ok(())
}

/// Bytes of random data per task of workload 5.
pub(crate) const SNAPSHOT_DATA_BYTES: usize = 100;

/// What workload 5 measured at one size.
pub(crate) struct SnapshotFigures {
    /// Tasks in the snapshot.
    pub(crate) tasks: u64,
    /// Its size on disk.
    pub(crate) size: u64,
    /// The broker's checkpoint.
    pub(crate) write: Duration,
    /// Read and decode, as a booting broker does.
    pub(crate) load: Duration,
    /// A broker's boot from it, until its HTTP API answers, if measured.
    pub(crate) boot: Option<Duration>,
}

impl SnapshotFigures {
    /// Size over the raw task data.
    pub(crate) fn ratio(&self) -> f64 {
        self.size as f64 / (self.tasks as f64 * SNAPSHOT_DATA_BYTES as f64)
    }
}

/// Workload 5: `n` tasks of 100 random bytes each wait in a broker (submitted by the client,
/// which gives each an idempotency key); the broker writes a snapshot (its own checkpoint),
/// which is then read and decoded as a broker does at boot, and, if `boot`, a broker boots from
/// it (until its HTTP API answers).
pub(crate) async fn measure_snapshot(
    data: &Path,
    n: u64,
    boot: bool,
) -> anyhow::Result<SnapshotFigures> {
    use rand::Rng;
    const DATA_BYTES: usize = SNAPSHOT_DATA_BYTES;
    let dir = data.join(format!("snapshot-{n}"));
    let measured = async {
        let broker = InProcBroker::start_with_snapshots(&dir, LeaderConfig::default()).await?;
        let written = async {
            let clients = (0..4)
                .map(|_| broker.client())
                .collect::<anyhow::Result<Vec<_>>>()?;
            let random = std::sync::Arc::new(|_| {
                let mut rng = rand::rng();
                // Printable, so it travels as JSON as it is: 100 bytes of random letters and digits.
                let data: String = (0..DATA_BYTES)
                    .map(|_| rng.sample(rand::distr::Alphanumeric) as char)
                    .collect();
                noop(data)
            });
            submit_made(clients, n, 1_000, random).await?;
            let t = Instant::now();
            let lsn = broker.handle.checkpoint().await.context("checkpoint")?;
            Ok::<_, anyhow::Error>((lsn, t.elapsed()))
        }
        .await;
        broker.stop().await;
        let (lsn, write) = written?;
        let store = majordodo_log::SnapshotStore::open(dir.join("snapshots"))?;
        let size = std::fs::metadata(store.path_of(majordodo_log::Lsn(lsn)))
            .context("the snapshot file")?
            .len();
        let t = Instant::now();
        crate::report::profile_phase(true);
        let loaded = tokio::task::spawn_blocking(move || {
            let (_, state) = majordodo_broker::boot::load_snapshot(
                &store,
                std::sync::Arc::new(majordodo_core::DefaultGroupMapper),
            )?
            .context("no snapshot")?;
            Ok::<_, anyhow::Error>(state.task_count())
        })
        .await
        .context("snapshot loader")??;
        let load = t.elapsed();
        crate::report::profile_phase(false);
        anyhow::ensure!(
            loaded as u64 == n,
            "the snapshot holds {loaded} tasks, not {n}"
        );
        let mut boot_time = None;
        if boot {
            let t = Instant::now();
            let broker = InProcBroker::start_with_snapshots(&dir, LeaderConfig::default()).await?;
            let answered = broker.client()?.status().await;
            let elapsed = t.elapsed();
            let waiting = answered.as_ref().map(|s| s.waitingtasks).unwrap_or(0);
            broker.stop().await;
            answered.context("status after boot")?;
            anyhow::ensure!(waiting == n, "{waiting} tasks waiting after boot, not {n}");
            boot_time = Some(elapsed);
        }
        Ok::<_, anyhow::Error>((size, write, load, boot_time))
    }
    .await;
    discard(&dir);
    let (size, write, load, boot) = measured?;
    Ok(SnapshotFigures {
        tasks: n,
        size,
        write,
        load,
        boot,
    })
}

/// Workloads 4 and 6 on a broker process (its RSS and CPU are its own), when the `majordodo`
/// binary is there.
async fn ours_process_round(figures: &mut Figures, s: &Sizes, data: &Path) -> anyhow::Result<()> {
    if let Err(e) = majordodo_bin() {
        for key in [
            "scale_rss",
            "scale_many",
            "scale_few",
            "idle_cpu",
            "workers_1000",
            "workers_10",
            "workers_ratio",
        ] {
            figures.note(key, "ours", &format!("not run: {e}"));
        }
        return Ok(());
    }
    let common = Common::new(data.to_path_buf());
    let scale = e2e::measure_scale(&common, s.scale_many, 1_000, s.scale_measure, 4, 256).await?;
    figures.record("scale_rss", "ours", scale.rss_per_task as f64);
    figures.record("scale_many", "ours", scale.rate(0));
    figures.record("scale_few", "ours", scale.rate(1));

    let (idle, many) = connected_burn_down(data, 1_000, 1, s, true).await?;
    let (_, ten) = connected_burn_down(data, 10, 100, s, false).await?;
    figures.record("idle_cpu", "ours", idle);
    figures.record("workers_1000", "ours", many);
    figures.record("workers_10", "ours", ten);
    figures.record("workers_ratio", "ours", many / ten);
    Ok(())
}

/// On a fresh broker process: connects `count` workers of `threads` each, waits until the
/// broker lists them all, reads the broker's CPU over the idle window if `idle` (in % of one
/// core), then submits the burn-down's tasks and returns the rate from the first submission to
/// the last finish (the workers were connected before, so connecting is not timed).
async fn connected_burn_down(
    data: &Path,
    count: usize,
    threads: u32,
    s: &Sizes,
    idle: bool,
) -> anyhow::Result<(f64, f64)> {
    let dir = data.join(format!("workers-{count}"));
    // Every worker connects from 127.0.0.1: lift the per-address bound (64 by default).
    let broker =
        BrokerProcess::start_with_workers(&dir, "max_connections_per_address = 4096").await?;
    let workers = Workers::start(
        &broker,
        count,
        threads,
        executor_fn(|_| async { Ok::<_, TaskFailure>(String::new()) }),
    );
    let measured = async {
        let client = broker.client()?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let connected = client
                .workers()
                .await
                .context("read the workers view")?
                .iter()
                .filter(|w| w.status == "CONNECTED")
                .count();
            if connected >= count {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {connected} of {count} workers connected within 120 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let the connection burst settle.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut cpu = f64::NAN;
        if idle {
            let pid = broker.pid();
            let before = pid_cpu_seconds(pid).context("read the broker's CPU time")?;
            let t0 = Instant::now();
            tokio::time::sleep(Duration::from_secs(s.idle_secs)).await;
            let after = pid_cpu_seconds(pid).context("read the broker's CPU time")?;
            cpu = (after - before) / t0.elapsed().as_secs_f64() * 100.0;
        }
        let started = Instant::now();
        submit_all(&broker, s.many_workers_tasks, 1_000, 4).await?;
        let done = wait_finished(&client, s.many_workers_tasks, Duration::from_secs(600)).await?;
        Ok::<_, anyhow::Error>((
            cpu,
            s.many_workers_tasks as f64 / (done - started).as_secs_f64(),
        ))
    }
    .await;
    workers.stop().await;
    broker.stop();
    discard(&dir);
    measured
}

/// The machine: CPU model, cores, kernel, memory.
fn machine() -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "?".into());
    m.insert("cpu", model);
    m.insert(
        "cores",
        std::thread::available_parallelism()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into()),
    );
    m.insert(
        "kernel",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into()),
    );
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    if let Some(kb) = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
    {
        m.insert("memory", format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0));
    }
    m
}

/// Median, minimum and maximum.
pub(crate) fn summary(values: &[f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((median, v[0], v[n - 1]))
}

/// The median of `values` and, when there are several, their range: `12 [10–14]`.
fn median_range(values: &[f64]) -> Option<String> {
    let (m, lo, hi) = summary(values)?;
    Some(if values.len() > 1 {
        format!("{} [{}–{}]", fmt(m), fmt(lo), fmt(hi))
    } else {
        fmt(m)
    })
}

/// For a figure shown beside another of ours: that figure's values, and the ratio of this
/// figure's value over that one's, round by round.
pub(crate) fn versus<'a>(figures: &'a Figures, f: &Figure) -> Option<(&'a [f64], Vec<f64>)> {
    let base = figures
        .list
        .iter()
        .find(|g| Some(&g.key) == f.versus.as_ref())?;
    let file = base.values.get("ours")?;
    let ratios = f
        .values
        .get("ours")?
        .iter()
        .zip(file)
        .filter(|(_, b)| **b > 0.0)
        .map(|(v, b)| v / b)
        .collect();
    Some((file, ratios))
}

/// A number with three significant digits at least, thousands grouped.
pub(crate) fn fmt(v: f64) -> String {
    let a = v.abs();
    if a >= 1_000.0 {
        crate::report::per_sec(v)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn markdown(
    figures: &Figures,
    systems: &[String],
    rounds: usize,
    flags: &[String],
    machine: &BTreeMap<&'static str, String>,
) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "`majordodo-bench compare {}`: median [min–max] of {rounds} round(s), interleaved; ratios are ours/peer oriented so that > 1 means ours is better\n\n",
        flags.join(" ")
    ));
    out.push_str(
        "7 replicated: ours on a cluster of 3 broker processes over 3 bookies (ensemble 3, write quorum 2, ack quorum 2, journals fsynced), beside the same workload on the file log (workloads 1–3 above) and the ratio replicated/file of each round, median [min–max], as is (< 1 for a rate, > 1 for a time means the cluster is slower); the peers have no replicated mode here\n\n",
    );
    out.push_str(&format!(
        "machine: {}\n\n",
        machine
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut header = vec!["workload".to_string(), "figure".into(), "unit".into()];
    for s in systems {
        header.push(s.clone());
        if s != "ours" {
            header.push(format!("ours/{s} (> 1: ours better)"));
        }
    }
    out.push_str(&format!("| {} |\n", header.join(" | ")));
    out.push_str(&format!("|{}|\n", vec!["---"; header.len()].join("|")));
    for f in &figures.list {
        let mut row = vec![f.workload.to_string(), f.label.clone(), f.unit.to_string()];
        let ours = f.values.get("ours").and_then(|v| summary(v));
        for s in systems {
            let cell = match f.values.get(s).and_then(|v| median_range(v)) {
                Some(cell) => cell,
                None => format!(
                    "– ({})",
                    f.notes.get(s).map(String::as_str).unwrap_or("no value")
                ),
            };
            let cell = match (f.values.contains_key(s), f.notes.get(s)) {
                (true, Some(note)) => format!("{cell} ({note})"),
                _ => cell,
            };
            let cell = match versus(figures, f) {
                Some((file, ratios)) if s == "ours" && f.values.contains_key(s) => {
                    format!(
                        "{cell} (file log {}; replicated/file {}×)",
                        median_range(file).unwrap_or_else(|| "–".into()),
                        median_range(&ratios).unwrap_or_else(|| "–".into())
                    )
                }
                _ => cell,
            };
            row.push(cell);
            if s != "ours" {
                let peer = f.values.get(s).and_then(|v| summary(v));
                row.push(match (ours, peer) {
                    (Some((o, _, _)), Some((p, _, _))) if o > 0.0 && p > 0.0 => {
                        let r = if f.better == Better::Higher {
                            o / p
                        } else {
                            p / o
                        };
                        format!("{}×", fmt(r))
                    }
                    _ => "–".into(),
                });
            }
        }
        out.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    out
}
