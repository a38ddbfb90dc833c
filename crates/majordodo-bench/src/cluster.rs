//! The system under test: a real `majordodo broker` process (file log, fsync on) on 127.0.0.1,
//! HTTP clients, and worker agents in this process connected over TCP.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use majordodo_client::{Auth, Client};
use majordodo_proto::http::TaskSubmission;
use majordodo_proto::worker::{Capacity, SharedSecret};
use majordodo_worker::{Executors, TaskExecutor, WorkerConfig};
use rand::Rng;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a broker may take to answer its first status request.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Finds the `majordodo` binary: `$MAJORDODO_BIN`, else next to this benchmark's executable.
pub(crate) fn majordodo_bin() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("MAJORDODO_BIN") {
        return Ok(PathBuf::from(path));
    }
    let me = std::env::current_exe().context("locate the benchmark executable")?;
    let bin = me.with_file_name("majordodo");
    if !bin.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p majordodo-cli) or set MAJORDODO_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(l.local_addr()?.port())
}

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

/// A broker process with everything needed to talk to it.
pub(crate) struct BrokerProcess {
    child: Child,
    /// The HTTP API.
    pub(crate) url: String,
    /// The worker port.
    pub(crate) worker_addr: String,
    /// The bearer token of the admin user.
    pub(crate) token: String,
    /// The workers' shared secret.
    pub(crate) secret: String,
}

/// Credentials shared by the brokers of one cluster.
#[derive(Clone, Debug)]
pub(crate) struct Credentials {
    /// The bearer token of the admin user.
    pub(crate) token: String,
    /// The workers' shared secret.
    pub(crate) secret: String,
}

impl Credentials {
    /// Fresh random credentials.
    pub(crate) fn random() -> Credentials {
        Credentials {
            token: random_hex(32),
            secret: random_hex(32),
        }
    }
}

impl BrokerProcess {
    /// Starts `majordodo broker` with its data under `dir` (created), and waits until it answers.
    pub(crate) async fn start(dir: &Path, extra_toml: &str) -> anyhow::Result<BrokerProcess> {
        BrokerProcess::start_as(dir, "bench", &Credentials::random(), extra_toml).await
    }

    /// Like [`BrokerProcess::start`] with a broker id and credentials shared with other brokers.
    pub(crate) async fn start_as(
        dir: &Path,
        broker_id: &str,
        credentials: &Credentials,
        extra_toml: &str,
    ) -> anyhow::Result<BrokerProcess> {
        BrokerProcess::start_full(dir, broker_id, credentials, "", extra_toml, true).await
    }

    /// Like [`BrokerProcess::start`] with a log that never fsyncs (`log.fsync = false`): not
    /// durable, only to show what the disk's flushes add to a figure.
    pub(crate) async fn start_without_fsync(dir: &Path) -> anyhow::Result<BrokerProcess> {
        BrokerProcess::start_full(dir, "bench", &Credentials::random(), "", "", false).await
    }

    /// Like [`BrokerProcess::start`] with more settings of the worker port (TOML lines of its
    /// `[workers]` table).
    pub(crate) async fn start_with_workers(
        dir: &Path,
        workers_toml: &str,
    ) -> anyhow::Result<BrokerProcess> {
        BrokerProcess::start_full(dir, "bench", &Credentials::random(), workers_toml, "", true)
            .await
    }

    async fn start_full(
        dir: &Path,
        broker_id: &str,
        credentials: &Credentials,
        workers_toml: &str,
        extra_toml: &str,
        fsync: bool,
    ) -> anyhow::Result<BrokerProcess> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let http_port = free_port()?;
        let worker_port = free_port()?;
        let token = credentials.token.clone();
        let secret = credentials.secret.clone();
        let token_sha256 = format!("{:x}", Sha256::digest(token.as_bytes()));
        let config = format!(
            r#"broker_id = "{broker_id}"
data_dir = "{data}"

[http]
listen = "127.0.0.1:{http_port}"
{max_body}

[[http.users]]
name = "admin"
role = "admin"
token_sha256 = "{token_sha256}"

[workers]
listen = "127.0.0.1:{worker_port}"
auth = "credentials-or-shared-secret"
shared_secret = "{secret}"
{workers_toml}

[log]
fsync = {fsync}
{max_record}
{extra_toml}
"#,
            data = dir.join("data").display(),
            // A replicated broker's messages must fit one BookKeeper entry: keep its default.
            max_body = if extra_toml.contains("[cluster]") {
                ""
            } else {
                "max_body_size = \"64MiB\""
            },
            // A record holds a task that fills a whole request.
            max_record = if extra_toml.contains("[cluster]") {
                ""
            } else {
                "max_record_size = \"65MiB\""
            },
        );
        let config_path = dir.join("broker.toml");
        std::fs::write(&config_path, config).context("write broker.toml")?;
        let log = std::fs::File::create(dir.join("broker.log")).context("create broker.log")?;
        let child = Command::new(majordodo_bin()?)
            .arg("broker")
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start majordodo broker")?;
        let broker = BrokerProcess {
            child,
            url: format!("http://127.0.0.1:{http_port}/majordodo"),
            worker_addr: format!("127.0.0.1:{worker_port}"),
            token,
            secret,
        };
        let client = broker.client()?;
        let started = Instant::now();
        let mut broker = broker;
        loop {
            if client.status().await.is_ok() {
                return Ok(broker);
            }
            if let Ok(Some(status)) = broker.child.try_wait() {
                bail!(
                    "broker exited with {status}; see {}",
                    dir.join("broker.log").display()
                );
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "broker did not answer within {START_TIMEOUT:?}; see {}",
                    dir.join("broker.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client authenticated as admin.
    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        Client::builder(&self.url)
            .auth(Auth::bearer(self.token.clone()))
            .timeout(Duration::from_secs(120))
            .build()
            .context("build the HTTP client")
    }

    /// The broker's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it at once (SIGKILL), as a crash.
    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it (SIGTERM, then SIGKILL after a grace period).
    pub(crate) fn stop(mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A broker the scenarios drive: its HTTP API and its worker port.
pub(crate) trait Target {
    /// A client authenticated as admin.
    fn client(&self) -> anyhow::Result<Client>;
    /// The worker port.
    fn worker_addr(&self) -> &str;
    /// The workers' shared secret.
    fn secret(&self) -> &str;
}

impl Target for BrokerProcess {
    fn client(&self) -> anyhow::Result<Client> {
        BrokerProcess::client(self)
    }
    fn worker_addr(&self) -> &str {
        &self.worker_addr
    }
    fn secret(&self) -> &str {
        &self.secret
    }
}

/// Worker agents running in this process.
pub(crate) struct Workers {
    stop: CancellationToken,
    joins: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` workers of `threads` each, running `executor` for task type `noop`.
    pub(crate) fn start(
        broker: &dyn Target,
        count: usize,
        threads: u32,
        executor: Arc<dyn TaskExecutor>,
    ) -> Workers {
        Workers::start_on(
            broker.worker_addr(),
            broker.secret(),
            count,
            Capacity {
                max_threads: threads,
                groups: vec![0],
                ..Capacity::default()
            },
            executor,
        )
    }

    /// Starts `count` workers with `capacity` on the worker port `addr`, running `executor`
    /// for task type `noop`.
    pub(crate) fn start_on(
        addr: &str,
        secret: &str,
        count: usize,
        capacity: Capacity,
        executor: Arc<dyn TaskExecutor>,
    ) -> Workers {
        let stop = CancellationToken::new();
        let mut joins = Vec::new();
        for w in 0..count {
            let mut config =
                WorkerConfig::new(addr.to_string(), SharedSecret::new(secret.to_string()));
            config.worker_id = format!("bench-worker-{w}");
            config.capacity = capacity.clone();
            // Reports leave as soon as a batch fills or 1 ms passes: low latency, still batched.
            config.report_batching.max_reports = 1_000;
            config.report_batching.max_delay = Duration::from_millis(1);
            let executors = Executors::new().with("noop", executor.clone());
            let s = stop.clone();
            joins.push(tokio::spawn(async move {
                if let Err(e) = majordodo_worker::run(config, executors, s.cancelled_owned()).await
                {
                    eprintln!("worker {w} stopped: {e}");
                }
            }));
        }
        Workers { stop, joins }
    }

    /// Stops every worker gracefully.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        for j in self.joins {
            let _ = j.await;
        }
    }
}

/// A no-op task.
pub(crate) fn noop(data: String) -> TaskSubmission {
    TaskSubmission::new("noop", "bench", data)
}

/// Submits `total` no-op tasks in batches of `batch` from `clients` concurrent clients; returns
/// the elapsed time.
pub(crate) async fn submit_all(
    broker: &dyn Target,
    total: u64,
    batch: u64,
    clients: u64,
) -> anyhow::Result<Duration> {
    let clients = (0..clients.max(1))
        .map(|_| broker.client())
        .collect::<anyhow::Result<Vec<_>>>()?;
    submit_made(clients, total, batch, Arc::new(|_| noop(String::new()))).await
}

/// Submits `total` tasks, the `i`-th made by `make(i)`, in batches of `batch`, one submitter
/// per client in `clients` (each a contiguous range of `i`); returns the elapsed time.
pub(crate) async fn submit_made(
    clients: Vec<Client>,
    total: u64,
    batch: u64,
    make: Arc<dyn Fn(u64) -> TaskSubmission + Send + Sync>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let n_clients = clients.len().max(1) as u64;
    let per_client = total / n_clients;
    let mut joins = Vec::new();
    for (c, client) in clients.into_iter().enumerate() {
        let c = c as u64;
        let from = per_client * c;
        let to = if c == n_clients - 1 {
            total
        } else {
            from + per_client
        };
        let make = make.clone();
        joins.push(tokio::spawn(async move {
            let mut next = from;
            while next < to {
                let n = (to - next).min(batch.max(1));
                let tasks: Vec<TaskSubmission> = (next..next + n).map(|i| make(i)).collect();
                next += n;
                let results = client.submit_many(&tasks).await?;
                if let Some(r) = results.iter().find(|r| r.task_id().is_none()) {
                    bail!("a task was not created: {r:?}");
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for j in joins {
        j.await.context("submitter panicked")??;
    }
    Ok(started.elapsed())
}

/// Waits until the broker counts at least `n` finished tasks; returns when it saw it.
pub(crate) async fn wait_finished(
    client: &Client,
    n: u64,
    limit: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        let status = client.status().await.context("read status")?;
        if status.finishedtasks >= n {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} tasks finished within {limit:?}",
                status.finishedtasks
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
