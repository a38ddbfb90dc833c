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
pub(crate) struct Member {
    id: String,
    dir: PathBuf,
    process: Option<BrokerProcess>,
}

/// A cluster of broker processes over a shared bookie cluster, under its own base path.
pub(crate) struct Brokers {
    pub(crate) members: Vec<Member>,
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

    /// Starts `count` brokers with their data under `dir` and their cluster under the ZooKeeper
    /// path `base`, the first one leading.
    pub(crate) async fn new(
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
    pub(crate) async fn wait_leader(&self, limit: Duration) -> anyhow::Result<usize> {
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

    /// The running broker `i`.
    pub(crate) fn process(&self, i: usize) -> &BrokerProcess {
        self.members[i].process.as_ref().expect("the broker runs")
    }

    /// Stops every broker.
    pub(crate) fn stop(mut self) {
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

/// The value at percentile `p` (0–100) of `sorted`, NaN when empty.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A follower's lag behind the leader over a run, in ms, sorted: for every position the
/// leader's status view was seen at, the delay until the follower's was seen at or beyond it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Lag {
    pub(crate) sorted_ms: Vec<f64>,
}

impl Lag {
    pub(crate) fn p50(&self) -> f64 {
        percentile(&self.sorted_ms, 50.0)
    }
    pub(crate) fn p99(&self) -> f64 {
        percentile(&self.sorted_ms, 99.0)
    }
    pub(crate) fn max(&self) -> f64 {
        self.sorted_ms.last().copied().unwrap_or(f64::NAN)
    }
}

/// Runs `work` against the leader `leader` of `brokers` while sampling the positions of the
/// leader and of one follower; returns its result and the follower's lag (`None` without a
/// follower).
pub(crate) async fn with_follower_lag<T>(
    brokers: &Brokers,
    leader: usize,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, Option<Lag>)> {
    let follower = (0..brokers.members.len()).find(|i| *i != leader);
    let stop = Arc::new(Mutex::new(false));
    let sampled = match follower {
        Some(f) => Some((
            tokio::spawn(sample_positions(
                brokers.process(leader).client()?,
                stop.clone(),
            )),
            tokio::spawn(sample_positions(brokers.process(f).client()?, stop.clone())),
        )),
        None => None,
    };
    let out = work.await;
    *stop.lock().await = true;
    let lag = match sampled {
        Some((l, f)) => {
            let mut sorted_ms = lags(&l.await?, &f.await?);
            sorted_ms.sort_by(f64::total_cmp);
            Some(Lag { sorted_ms })
        }
        None => None,
    };
    Ok((out?, lag))
}

/// Starts ZooKeeper and three bookies whose journals are fsynced before every acknowledgement
/// (a journal whose queue empties is flushed at once instead of waiting for more adds to group
/// with), with `conf` and `jvm_args` over the bench's own settings.
pub(crate) async fn start_bookies(
    conf: &[(String, String)],
    jvm_args: &[String],
) -> anyhow::Result<BkCluster> {
    let mut options = BkClusterOptions::new(3).bookie_conf("journalFlushWhenQueueEmpty", "true");
    for (key, value) in conf {
        options = options.bookie_conf(key, value);
    }
    for arg in jvm_args {
        options = options.bookie_jvm_arg(arg);
    }
    BkCluster::start_with(options)
        .await
        .context("start ZooKeeper and 3 bookies (run scripts/test-deps first)")
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
    let bk = start_bookies(&args.bookie_conf, &args.bookie_jvm_args).await?;
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
            BURN_DOWN_SESSION_TIMEOUT,
        )
        .await?;
        let leader = brokers.wait_leader(Duration::from_secs(60)).await?;
        let measured =
            with_follower_lag(&brokers, leader, burn_down(brokers.process(leader), args)).await;
        brokers.stop();
        let ((rs, rb), lag) = measured?;
        let (p50, p99, max) = match lag {
            Some(lag) => (
                format!("{:.1}", lag.p50()),
                format!("{:.1}", lag.p99()),
                format!("{:.1}", lag.max()),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
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

    let runs = measure_failovers(
        &bk,
        &dir.join("failover"),
        "/bench-failover",
        args.brokers.max(2),
        args.session_timeout,
        args.failovers,
    )
    .await?;
    let mut table = Table::new(
        &format!(
            "failover: SIGKILL of the leader to the first acknowledged submission on the new leader ({} brokers, ZooKeeper session timeout {:?})",
            args.brokers.max(2),
            args.session_timeout
        ),
        &["run", "killed", "new leader", "seconds"],
    );
    for (i, run) in runs.iter().enumerate() {
        table.row(vec![
            (i + 1).to_string(),
            run.killed.clone(),
            run.new_leader.clone(),
            format!("{:.2}", run.secs),
        ]);
    }
    table.print();
    let mut times: Vec<f64> = runs.iter().map(|r| r.secs).collect();
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "failover seconds: p50 {:.2}, max {:.2} over {} runs",
        percentile(&times, 50.0),
        times.last().copied().unwrap_or(f64::NAN),
        times.len()
    );
    drop(bk);
    if !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// The ZooKeeper session timeout of the brokers of a burn-down: long, so that a broker slowed
/// by the load on a small machine does not lose its session (and its leadership) mid-run.
pub(crate) const BURN_DOWN_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// One failover: who was killed, who took over, and how long it took.
#[derive(Clone, Debug)]
pub(crate) struct Failover {
    pub(crate) killed: String,
    pub(crate) new_leader: String,
    pub(crate) secs: f64,
}

/// On a fresh cluster of `count` brokers under `dir` and the ZooKeeper path `base`: SIGKILL
/// of the leader to the first submission acknowledged by the new leader (found by a client
/// that discovers the leader through ZooKeeper), `failovers` times; the killed broker is
/// restarted (as a follower) before the next run.
pub(crate) async fn measure_failovers(
    bk: &BkCluster,
    dir: &Path,
    base: &str,
    count: usize,
    session_timeout: Duration,
    failovers: usize,
) -> anyhow::Result<Vec<Failover>> {
    let mut brokers = Brokers::new(bk, dir, base, count.max(2), session_timeout).await?;
    let measured = async {
        let retry = RetryPolicy {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            max_elapsed: Duration::from_secs(120),
        };
        let client = brokers.discovery_client(retry)?;
        let mut runs = Vec::new();
        for run in 1..=failovers {
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
            let secs = started.elapsed().as_secs_f64();
            let now = brokers.wait_leader(Duration::from_secs(60)).await?;
            runs.push(Failover {
                killed,
                new_leader: brokers.members[now].id.clone(),
                secs,
            });
            brokers.start(leader).await?;
        }
        Ok::<_, anyhow::Error>(runs)
    }
    .await;
    brokers.stop();
    measured
}
