//! Replicated brokers beside the file log, in one run: the burn-down on a broker process with
//! its file log and on a cluster of broker processes over three bookies (rounds alternated),
//! the followers' lag during the replicated burn-down, and the failover time (SIGKILL of the
//! leader to the first submission acknowledged by the new leader).
//!
//! ZooKeeper and the bookies are real processes started through `majordodo-testkit` (run
//! `scripts/test-deps` once); journals are fsynced, as in production.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use majordodo_client::retry::RetryPolicy;
use majordodo_client::{Auth, Client, ZkDiscovery};
use majordodo_testkit::{BkCluster, BkClusterOptions};
use tokio::sync::Mutex;

use crate::cluster::{BrokerProcess, Credentials};
use crate::report::{Table, group, per_sec};

/// Options of the `replicated` scenario.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ReplicatedArgs {
    /// Directory for the brokers' data (removed afterwards unless --keep).
    #[arg(long, default_value = "bench-data")]
    dir: PathBuf,
    /// Keep the brokers' data and logs.
    #[arg(long)]
    keep: bool,
    /// Tasks of each burn-down.
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
    /// Burn-down rounds of each kind, alternated (file, replicated, file, ...).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Brokers of the cluster.
    #[arg(long, default_value_t = 3)]
    brokers: usize,
    /// Failovers measured.
    #[arg(long, default_value_t = 10)]
    failovers: usize,
    /// The brokers' ZooKeeper session timeout.
    #[arg(long, default_value = "2s", value_parser = parse_secs)]
    session_timeout: Duration,
    /// A bookie setting, KEY=VALUE, over the bench's own (repeatable).
    #[arg(long = "bookie-conf", value_parser = parse_setting)]
    bookie_conf: Vec<(String, String)>,
    /// A bookie JVM argument, after the bench's own (repeatable; start it with `=`, as in
    /// `--bookie-jvm-arg=-Xmx1g`).
    #[arg(long = "bookie-jvm-arg", allow_hyphen_values = true)]
    bookie_jvm_args: Vec<String>,
}

fn parse_setting(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let n: f64 = s
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds such as 2s"))?;
    Ok(Duration::from_secs_f64(n))
}

/// One broker of the cluster: its directory and process, when running.
struct Member {
    id: String,
    dir: PathBuf,
    process: Option<BrokerProcess>,
}

/// A cluster of broker processes over a shared bookie cluster, under its own base path.
struct Brokers {
    members: Vec<Member>,
    credentials: Credentials,
    zk: String,
    base: String,
    session_timeout: Duration,
}

impl Brokers {
    fn toml(&self) -> String {
        format!(
            "[cluster]\nzk = \"{}\"\nzk_path = \"{}\"\nsession_timeout = \"{}ms\"\nensemble = 3\nwrite_quorum = 2\nack_quorum = 2\n",
            self.zk,
            self.base,
            self.session_timeout.as_millis()
        )
    }

    async fn new(
        bk: &BkCluster,
        dir: &Path,
        base: &str,
        count: usize,
        session_timeout: Duration,
    ) -> anyhow::Result<Brokers> {
        let mut brokers = Brokers {
            members: (0..count)
                .map(|i| Member {
                    id: format!("b{}", i + 1),
                    dir: dir.join(format!("b{}", i + 1)),
                    process: None,
                })
                .collect(),
            credentials: Credentials::random(),
            zk: bk.zk_connect_string(),
            base: base.to_owned(),
            session_timeout,
        };
        for i in 0..count {
            brokers.start(i).await?;
            if i == 0 {
                brokers.wait_leader(Duration::from_secs(60)).await?;
            }
        }
        Ok(brokers)
    }

    async fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let toml = self.toml();
        let m = &mut self.members[i];
        m.process = Some(BrokerProcess::start_as(&m.dir, &m.id, &self.credentials, &toml).await?);
        Ok(())
    }

    /// The index of the broker that answers as the leader, waiting for one.
    async fn wait_leader(&self, limit: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + limit;
        loop {
            for (i, m) in self.members.iter().enumerate() {
                if let Some(p) = &m.process
                    && let Ok(status) = p.client()?.status().await
                    && status.status == "LEADER"
                {
                    return Ok(i);
                }
            }
            if Instant::now() > deadline {
                bail!("no broker leads after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn discovery_client(&self, retry: RetryPolicy) -> anyhow::Result<Client> {
        Client::discover(ZkDiscovery::new(self.zk.clone(), &self.base)?)
            .auth(Auth::bearer(self.credentials.token.clone()))
            .timeout(Duration::from_secs(30))
            .retry(retry)
            .build()
            .context("build the discovering client")
    }

    fn stop(mut self) {
        for m in &mut self.members {
            if let Some(p) = m.process.take() {
                p.stop();
            }
        }
    }
}

/// Samples a broker's applied position as fast as its status view answers.
async fn sample_positions(client: Client, until: Arc<Mutex<bool>>) -> Vec<(Instant, u64)> {
    let mut out = Vec::new();
    loop {
        if *until.lock().await {
            return out;
        }
        if let Ok(status) = client.status().await
            && let Ok(lsn) = status.current_sequence_number.parse::<u64>()
        {
            out.push((Instant::now(), lsn));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// For each position the leader was seen at, how much later the follower was first seen at
/// or beyond it, in ms.
fn lags(leader: &[(Instant, u64)], follower: &[(Instant, u64)]) -> Vec<f64> {
    let mut out = Vec::new();
    let mut j = 0;
    let mut last = 0;
    for &(t, lsn) in leader {
        if lsn <= last {
            continue;
        }
        last = lsn;
        while j < follower.len() && follower[j].1 < lsn {
            j += 1;
        }
        let Some(&(seen, _)) = follower.get(j) else {
            break;
        };
        out.push(seen.saturating_duration_since(t).as_secs_f64() * 1000.0);
    }
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One burn-down: submit everything, then time the workers until every task is finished.
async fn burn_down(
    broker: &BrokerProcess,
    args: &ReplicatedArgs,
) -> anyhow::Result<(Duration, Duration)> {
    let run = crate::e2e::measure_burn_down(
        broker,
        args.tasks,
        args.batch,
        args.clients,
        args.workers,
        args.threads,
    )
    .await?;
    Ok((run.submit, run.drain))
}

pub(crate) async fn run(args: &ReplicatedArgs) -> anyhow::Result<()> {
    let dir = args.dir.join(format!("replicated-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // Journals are fsynced before every acknowledgement; a journal whose queue empties is
    // flushed at once instead of waiting for more adds to group with.
    let mut options = BkClusterOptions::new(3).bookie_conf("journalFlushWhenQueueEmpty", "true");
    for (key, value) in &args.bookie_conf {
        options = options.bookie_conf(key, value);
    }
    for arg in &args.bookie_jvm_args {
        options = options.bookie_jvm_arg(arg);
    }
    let bk = BkCluster::start_with(options)
        .await
        .context("start ZooKeeper and 3 bookies (run scripts/test-deps first)")?;
    let mut burn = Table::new(
        "burn-down, file log vs replicated (3 bookies, ensemble 3, write quorum 2, ack quorum 2, journals fsynced), no-op tasks, rounds alternated",
        &[
            "round",
            "log",
            "tasks",
            "submit tasks/s",
            "burn-down tasks/s",
            "follower lag p50 ms",
            "p99 ms",
            "max ms",
        ],
    );
    let mut ratios = Vec::new();
    for round in 1..=args.rounds {
        let file_dir = dir.join(format!("file-{round}"));
        let broker = BrokerProcess::start(&file_dir, "").await?;
        let (fs, fb) = burn_down(&broker, args).await?;
        broker.stop();
        burn.row(vec![
            round.to_string(),
            "file".into(),
            group(args.tasks),
            per_sec(args.tasks as f64 / fs.as_secs_f64()),
            per_sec(args.tasks as f64 / fb.as_secs_f64()),
            "-".into(),
            "-".into(),
            "-".into(),
        ]);

        let brokers = Brokers::new(
            &bk,
            &dir.join(format!("cluster-{round}")),
            &format!("/bench-{round}"),
            args.brokers,
            Duration::from_secs(10),
        )
        .await?;
        let leader = brokers.wait_leader(Duration::from_secs(60)).await?;
        let follower = (0..brokers.members.len()).find(|i| *i != leader);
        let stop = Arc::new(Mutex::new(false));
        let sampled = match follower {
            Some(f) => {
                let l = brokers.members[leader]
                    .process
                    .as_ref()
                    .expect("running")
                    .client()?;
                let fc = brokers.members[f]
                    .process
                    .as_ref()
                    .expect("running")
                    .client()?;
                Some((
                    tokio::spawn(sample_positions(l, stop.clone())),
                    tokio::spawn(sample_positions(fc, stop.clone())),
                ))
            }
            None => None,
        };
        let (rs, rb) = burn_down(
            brokers.members[leader].process.as_ref().expect("running"),
            args,
        )
        .await?;
        *stop.lock().await = true;
        let (p50, p99, max) = match sampled {
            Some((l, f)) => {
                let mut lag = lags(&l.await?, &f.await?);
                lag.sort_by(|a, b| a.total_cmp(b));
                (
                    format!("{:.1}", percentile(&lag, 50.0)),
                    format!("{:.1}", percentile(&lag, 99.0)),
                    format!("{:.1}", lag.last().copied().unwrap_or(f64::NAN)),
                )
            }
            None => ("-".into(), "-".into(), "-".into()),
        };
        brokers.stop();
        burn.row(vec![
            round.to_string(),
            "replicated".into(),
            group(args.tasks),
            per_sec(args.tasks as f64 / rs.as_secs_f64()),
            per_sec(args.tasks as f64 / rb.as_secs_f64()),
            p50,
            p99,
            max,
        ]);
        ratios.push(fb.as_secs_f64() / rb.as_secs_f64());
    }
    burn.print();
    let mut sorted = ratios.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    println!(
        "replicated / file burn-down throughput: median {:.2} (rounds: {})",
        percentile(&sorted, 50.0),
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    failover(&bk, &dir, args).await?;
    drop(bk);
    if !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// SIGKILL of the leader to the first submission acknowledged by the new leader, `failovers`
/// times; the killed broker is restarted (as a follower) before the next run.
async fn failover(bk: &BkCluster, dir: &Path, args: &ReplicatedArgs) -> anyhow::Result<()> {
    let mut brokers = Brokers::new(
        bk,
        &dir.join("failover"),
        "/bench-failover",
        args.brokers.max(2),
        args.session_timeout,
    )
    .await?;
    let retry = RetryPolicy {
        initial_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_elapsed: Duration::from_secs(120),
    };
    let client = brokers.discovery_client(retry)?;
    let mut times = Vec::new();
    let mut table = Table::new(
        &format!(
            "failover: SIGKILL of the leader to the first acknowledged submission on the new leader ({} brokers, ZooKeeper session timeout {:?})",
            brokers.members.len(),
            args.session_timeout
        ),
        &["run", "killed", "new leader", "seconds"],
    );
    for run in 1..=args.failovers {
        let leader = brokers.wait_leader(Duration::from_secs(60)).await?;
        client
            .submit(&crate::cluster::noop(format!("warm-{run}")))
            .await
            .context("submit before the kill")?;
        let killed = brokers.members[leader].id.clone();
        let process = brokers.members[leader]
            .process
            .take()
            .expect("the leader runs");
        let started = Instant::now();
        process.kill();
        client
            .submit(&crate::cluster::noop(format!("after-{run}")))
            .await
            .context("submit after the kill")?;
        let elapsed = started.elapsed();
        let now = brokers.wait_leader(Duration::from_secs(60)).await?;
        table.row(vec![
            run.to_string(),
            killed,
            brokers.members[now].id.clone(),
            format!("{:.2}", elapsed.as_secs_f64()),
        ]);
        times.push(elapsed.as_secs_f64());
        brokers.start(leader).await?;
    }
    table.print();
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "failover seconds: p50 {:.2}, max {:.2} over {} runs",
        percentile(&times, 50.0),
        times.last().copied().unwrap_or(f64::NAN),
        times.len()
    );
    brokers.stop();
    Ok(())
}
