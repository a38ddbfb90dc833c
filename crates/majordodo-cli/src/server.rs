//! `majordodo broker`, and the broker runtime it shares with `standalone`: the file commit log
//! and snapshots in the data directory, the dispatcher, the worker port and the HTTP API, started
//! in that order and stopped in the reverse one.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use majordodo_broker::worker_listener::{self, ListenerConfig};
use majordodo_broker::{BootError, Broker, BrokerConfig, DispatcherError, OpeningLog, SystemClock};
use majordodo_core::DefaultGroupMapper;
use majordodo_log::{CommitLog, FileLog, FileLogConfig, SnapshotStore};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cli::BrokerArgs;
use crate::config::Origin;
use crate::config::broker::{BrokerFile, BrokerSettings, default_file};
use crate::config::cluster::ClusterConfig;
use crate::http_config::HttpSettings;
use crate::worker::absolute;
use majordodo_broker::replica::ClusterSettings;
use majordodo_proto::cluster::BrokerInfo;

/// Longest the network side (HTTP connections, worker connections) may take to close after a
/// stop: in-flight requests get this long to be answered.
const NETWORK_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest the dispatcher and the log may take to finish after the network side stopped: the
/// last rounds are already being written, so this is a handful of fsyncs.
const CORE_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Name of the commit log's directory inside the data directory.
pub(crate) const LOG_DIR: &str = "log";

/// Name of the snapshots' directory inside the data directory.
pub(crate) const SNAPSHOTS_DIR: &str = "snapshots";

/// Runs `majordodo broker`.
pub(crate) async fn run(args: BrokerArgs) -> anyhow::Result<()> {
    if args.print_default_config {
        print!("{}", default_file());
        return Ok(());
    }
    let settings = load(&args)?;
    let stop = crate::signal::stop_token()?;
    let broker = RunningBroker::serve(&settings, InUseHints::BROKER).await?;
    println!(
        "majordodo broker {} is running\n  HTTP API:    {}\n  worker port: {}\n  data dir:    {}",
        settings.broker.broker_id,
        broker.url(),
        broker.worker_addr,
        settings.data_dir.display()
    );
    if let Some(cluster) = &settings.cluster {
        println!(
            "  cluster:     ZooKeeper {} at {}, ledgers {}/{}/{} (leader or follower: see `majordodo status`)",
            cluster.coord.zk_connect,
            cluster.coord.base_path,
            cluster.log.ensemble,
            cluster.log.write_quorum,
            cluster.log.ack_quorum
        );
    }
    broker.run_until(stop).await
}

/// Reads the file, applies the flags and validates.
fn load(args: &BrokerArgs) -> anyhow::Result<BrokerSettings> {
    let (mut file, origin) = match &args.config {
        Some(path) => (BrokerFile::load(path)?, Origin::File(absolute(path)?)),
        None => (BrokerFile::default(), Origin::CommandLine),
    };
    if let Some(dir) = &args.data_dir {
        file.data_dir = Some(absolute(dir)?);
    }
    if let Some(listen) = &args.http_listen {
        file.http.listen = listen.clone();
    }
    if let Some(listen) = &args.worker_listen {
        file.workers.listen = listen.clone();
    }
    if let Some(id) = &args.broker_id {
        file.broker_id = Some(id.clone());
    }
    if let Some(path) = &args.shared_secret_file {
        file.workers.shared_secret = None;
        file.workers.shared_secret_file = Some(absolute(path)?);
    }
    apply_cluster_flags(args, &mut file.cluster)?;
    Ok(file.validate(&origin)?)
}

/// What to tell a user whose address is taken, per port: the flag (or key) that moves it.
#[derive(Copy, Clone, Debug)]
pub(crate) struct InUseHints {
    /// For the HTTP API.
    pub(crate) http: &'static str,
    /// For the worker port.
    pub(crate) workers: &'static str,
}

impl InUseHints {
    /// `majordodo broker`: the flags and keys of the two addresses.
    pub(crate) const BROKER: InUseHints = InUseHints {
        http: "choose another with --http-listen or http.listen (port 0 picks a free one)",
        workers: "choose another with --worker-listen or workers.listen (port 0 picks a free one)",
    };
}

/// How often a replicated broker publishes the position it has applied.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// The host to publish for a bound address: the address itself, or the host name for the
/// wildcard address.
fn advertised_host(ip: std::net::IpAddr) -> String {
    if ip.is_unspecified() {
        majordodo_worker::hostname()
    } else {
        ip.to_string()
    }
}

/// `https` when the API serves TLS, else `http`.
fn scheme(http: &HttpSettings) -> &'static str {
    if http.tls().is_some() {
        "https"
    } else {
        "http"
    }
}

/// Claims the file commit log in `<data_dir>/log` (a second broker on the same directory is
/// refused here, at once) and returns the rest of its opening, which reads every segment, for
/// the broker to run while its snapshot loads.
async fn claim_file_log(data_dir: &Path, config: FileLogConfig) -> anyhow::Result<OpeningLog> {
    let log_dir = data_dir.join(LOG_DIR);
    if !config.fsync {
        warn!("log.fsync is false: acknowledged tasks can be lost on a power failure");
    }
    let claimed = tokio::task::spawn_blocking({
        let log_dir = log_dir.clone();
        move || FileLog::claim(&log_dir, config)
    })
    .await
    .context("open the commit log")?
    .with_context(|| format!("open the commit log in {}", log_dir.display()))?;
    Ok(Box::pin(async move {
        let (log, report) = tokio::task::spawn_blocking(move || claimed.open())
            .await
            .map_err(|e| BootError::Dispatcher(format!("the commit log's opening failed: {e}")))?
            .map_err(|source| BootError::OpenLog {
                dir: log_dir,
                source,
            })?;
        if let Some(torn) = &report.torn_tail {
            warn!(
                file = %torn.file.display(),
                offset = torn.offset,
                bytes = torn.bytes_dropped,
                "the log ended with an unfinished write (a crash); it was cut there"
            );
        }
        Ok(Arc::new(log) as Arc<dyn CommitLog>)
    }))
}

/// Applies the `--zk` and other cluster flags over the file's `[cluster]`.
fn apply_cluster_flags(
    args: &BrokerArgs,
    c: &mut crate::config::cluster::ClusterFile,
) -> anyhow::Result<()> {
    use crate::config::{ByteSize, HumanDuration};
    let duration = |flag: &str, v: &str| {
        crate::units::parse_duration(v)
            .map(HumanDuration)
            .map_err(|e| crate::error::usage(format!("--{flag} {v:?}: {e}")))
    };
    let size = |flag: &str, v: &str| {
        crate::units::parse_bytes(v)
            .map(ByteSize)
            .map_err(|e| crate::error::usage(format!("--{flag} {v:?}: {e}")))
    };
    if let Some(v) = &args.zk {
        c.zk = Some(v.clone());
    }
    if let Some(v) = &args.zk_path {
        c.zk_path = v.clone();
    }
    if let Some(v) = &args.zk_session_timeout {
        c.session_timeout = duration("zk-session-timeout", v)?;
    }
    if let Some(v) = args.ensemble {
        c.ensemble = v;
    }
    if let Some(v) = args.write_quorum {
        c.write_quorum = v;
    }
    if let Some(v) = args.ack_quorum {
        c.ack_quorum = v;
    }
    if let Some(v) = &args.digest {
        c.digest = v.clone();
    }
    if let Some(v) = &args.zk_digest_file {
        c.zk_digest_file = Some(absolute(v)?);
    }
    if let Some(v) = &args.ledger_password_file {
        c.ledger_password_file = Some(absolute(v)?);
    }
    if let Some(v) = &args.ledger_roll_size {
        c.ledger_roll_size = size("ledger-roll-size", v)?;
    }
    if let Some(v) = &args.ledger_roll_age {
        c.ledger_roll_age = duration("ledger-roll-age", v)?;
    }
    if let Some(v) = &args.ledger_retention {
        c.ledger_retention = duration("ledger-retention", v)?;
    }
    if let Some(v) = &args.advertise_host {
        c.advertise_host = Some(v.clone());
    }
    if let Some(v) = &args.peer_token_file {
        c.peer_token_file = Some(absolute(v)?);
    }
    Ok(())
}

/// Binds `addr` for `what`; an address in use gets `in_use_hint`.
pub(crate) async fn bind(addr: &str, what: &str, in_use_hint: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|error| {
        let context = if error.kind() == std::io::ErrorKind::AddrInUse {
            format!("listen for the {what} on {addr}: the address is in use; {in_use_hint}")
        } else {
            format!("listen for the {what} on {addr}")
        };
        anyhow::Error::new(error).context(context)
    })
}

/// What [`RunningBroker::start`] needs besides the sockets.
pub(crate) struct Parts<'a> {
    /// Where the log and snapshots live (created if missing).
    pub(crate) data_dir: &'a Path,
    /// The runtime's settings.
    pub(crate) broker: BrokerConfig,
    /// The commit log's settings.
    pub(crate) log: FileLogConfig,
    /// The worker port's settings.
    pub(crate) listener: ListenerConfig,
    /// The HTTP API's settings.
    pub(crate) http: HttpSettings,
    /// Replication, instead of the file log, when set.
    pub(crate) cluster: Option<ClusterConfig>,
}

/// A broker serving its two ports.
pub(crate) struct RunningBroker {
    /// Address the HTTP API is bound to.
    pub(crate) http_addr: SocketAddr,
    /// Address the worker port is bound to.
    pub(crate) worker_addr: SocketAddr,
    /// Whether the HTTP API serves HTTPS.
    https: bool,
    /// Stops the listeners and the dispatcher.
    stop: CancellationToken,
    /// The dispatcher; ends on stop, or on its own when the log fails. `None` once awaited.
    dispatcher: Option<JoinHandle<Result<(), DispatcherError>>>,
    /// The worker port.
    listener: JoinHandle<()>,
    /// The HTTP API.
    http: JoinHandle<()>,
    /// The file commit log, closed last (a replicated broker closes its ledger itself).
    log: Option<Arc<dyn CommitLog>>,
    /// The broker's handle (what the HTTP API uses).
    handle: majordodo_broker::BrokerHandle,
}

impl RunningBroker {
    /// Binds both addresses of `settings` and starts the broker on them (see
    /// [`RunningBroker::start`]). An address in use is reported with the hint of `hints`.
    ///
    /// # Errors
    /// When an address cannot be bound, or as [`RunningBroker::start`].
    pub(crate) async fn serve(
        settings: &BrokerSettings,
        hints: InUseHints,
    ) -> anyhow::Result<RunningBroker> {
        let http = bind(&settings.http_listen, "HTTP API", hints.http).await?;
        let workers = bind(&settings.worker_listen, "worker port", hints.workers).await?;
        RunningBroker::start(
            Parts {
                data_dir: &settings.data_dir,
                broker: settings.broker.clone(),
                log: settings.log.clone(),
                listener: settings.listener.clone(),
                http: settings.http.clone(),
                cluster: settings.cluster.clone(),
            },
            http,
            workers,
        )
        .await
    }

    /// Opens the log and snapshots, recovers the state, and serves both sockets.
    ///
    /// # Errors
    /// When the data directory, the log or the snapshots cannot be opened, or recovery fails.
    pub(crate) async fn start(
        parts: Parts<'_>,
        http: TcpListener,
        workers: TcpListener,
    ) -> anyhow::Result<RunningBroker> {
        let http_addr = http.local_addr().context("read the HTTP API's address")?;
        let worker_addr = workers
            .local_addr()
            .context("read the worker port's address")?;
        std::fs::create_dir_all(parts.data_dir)
            .with_context(|| format!("create the data directory {}", parts.data_dir.display()))?;
        let log = match &parts.cluster {
            Some(_) => None,
            None => Some(claim_file_log(parts.data_dir, parts.log.clone()).await?),
        };
        let snapshots_dir = parts.data_dir.join(SNAPSHOTS_DIR);
        let snapshots = tokio::task::spawn_blocking({
            let dir = snapshots_dir.clone();
            move || SnapshotStore::open(&dir)
        })
        .await
        .context("open the snapshots")?
        .with_context(|| format!("open the snapshots in {}", snapshots_dir.display()))?;
        let stop = CancellationToken::new();
        // The network side serves while the state is recovered: clients are told
        // `recovery_in_progress` and workers are refused (retryably) until then.
        let booting = match (log, parts.cluster) {
            (Some(log), _) => Broker::launch_opening(
                parts.broker,
                log,
                Some(Arc::new(snapshots)),
                Arc::new(DefaultGroupMapper),
                Arc::new(SystemClock),
                stop.clone().cancelled_owned(),
            ),
            (None, Some(cluster)) => {
                let host = cluster
                    .advertise_host
                    .clone()
                    .unwrap_or_else(|| advertised_host(http_addr.ip()));
                let api_url = format!(
                    "{}://{}:{}{}",
                    scheme(&parts.http),
                    host,
                    http_addr.port(),
                    majordodo_proto::http::API_PATH
                );
                let mut me =
                    BrokerInfo::new(&host, worker_addr.port(), &api_url, &parts.broker.broker_id);
                // The original's flag telling workers that the worker port speaks TLS.
                if parts.listener.tls.is_some() {
                    me.ssl = "true".to_owned();
                }
                Broker::launch_replicated(
                    parts.broker,
                    ClusterSettings {
                        coord: cluster.coord,
                        bookkeeper: cluster.bookkeeper,
                        log: cluster.log,
                        me,
                        peer_token: cluster.peer_token,
                        publish_interval: PUBLISH_INTERVAL,
                    },
                    Some(Arc::new(snapshots)),
                    Arc::new(DefaultGroupMapper),
                    Arc::new(SystemClock),
                    stop.clone().cancelled_owned(),
                )
            }
            (None, None) => unreachable!("a broker without a file log is replicated"),
        };
        let handle = booting.handle();
        let own_handle = handle.clone();
        let events = booting.worker_events();
        let tls: Vec<_> = [parts.http.tls().cloned(), parts.listener.tls.clone()]
            .into_iter()
            .flatten()
            .collect();
        crate::signal::reload_tls_on_change(&tls, &stop)?;
        let listener = tokio::spawn({
            let stop = stop.clone();
            let config = parts.listener;
            async move {
                if let Err(error) =
                    worker_listener::run(workers, config, events, stop.cancelled_owned()).await
                {
                    tracing::error!(%error, "the worker port stopped");
                }
            }
        });
        let https = parts.http.tls().is_some();
        let http = tokio::spawn({
            let stop = stop.clone();
            let settings = parts.http;
            async move {
                if let Err(error) =
                    majordodo_broker::http::serve(http, handle, settings, stop.cancelled_owned())
                        .await
                {
                    tracing::error!(%error, "the HTTP API stopped");
                }
            }
        });
        let broker = match booting.recovered().await {
            Ok(broker) => broker,
            Err(error) => {
                stop.cancel();
                let _ = tokio::time::timeout(NETWORK_STOP_TIMEOUT, async {
                    let _ = http.await;
                    let _ = listener.await;
                })
                .await;
                // The log's own error names its directory, as a failure to claim it does.
                return Err(match error {
                    BootError::OpenLog { .. } => anyhow::Error::new(error),
                    _ => anyhow::Error::new(error).context("recover the broker state"),
                });
            }
        };
        let log = broker.log();
        let dispatcher = tokio::spawn(broker.wait());
        Ok(RunningBroker {
            http_addr,
            worker_addr,
            https,
            stop,
            dispatcher: Some(dispatcher),
            listener,
            http,
            log,
            handle: own_handle,
        })
    }

    /// The broker's handle, for changes made in-process (standalone's local worker credential).
    pub(crate) fn handle(&self) -> &majordodo_broker::BrokerHandle {
        &self.handle
    }

    /// The API's URL.
    pub(crate) fn url(&self) -> String {
        format!(
            "{}://{}{}",
            if self.https { "https" } else { "http" },
            self.http_addr,
            majordodo_proto::http::API_PATH
        )
    }

    /// Serves until `stop` is cancelled (then stops gracefully) or the dispatcher fails.
    ///
    /// # Errors
    /// When the dispatcher failed (the log failed), or a step of the stop timed out.
    pub(crate) async fn run_until(mut self, stop: CancellationToken) -> anyhow::Result<()> {
        tokio::select! {
            () = stop.cancelled() => self.stop().await,
            error = self.failure() => {
                self.stop_network().await;
                Err(error)
            }
        }
    }

    /// Waits until the dispatcher stops on its own (the log failed) and says why. Cancel-safe.
    pub(crate) async fn failure(&mut self) -> anyhow::Error {
        let Some(dispatcher) = self.dispatcher.as_mut() else {
            return std::future::pending().await;
        };
        let result = dispatcher.await;
        self.dispatcher = None;
        match result {
            Ok(Ok(())) => anyhow!("the broker stopped unexpectedly"),
            Ok(Err(error)) => anyhow::Error::new(error).context("the broker stopped"),
            Err(join) => anyhow!("the broker crashed: {join}"),
        }
    }

    /// Stops the listeners and waits (bounded) for their connections to close.
    async fn stop_network(&mut self) {
        self.stop.cancel();
        let closed = tokio::time::timeout(NETWORK_STOP_TIMEOUT, async {
            let _ = (&mut self.http).await;
            let _ = (&mut self.listener).await;
        })
        .await;
        if closed.is_err() {
            warn!(
                timeout_s = NETWORK_STOP_TIMEOUT.as_secs(),
                "connections did not close in time; dropping them"
            );
            self.http.abort();
            self.listener.abort();
        }
    }

    /// Stops the network side, then the dispatcher, then closes the log; each step bounded.
    ///
    /// # Errors
    /// When a step times out or the dispatcher reports a log failure.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        info!("stopping the broker");
        self.stop_network().await;
        if let Some(dispatcher) = self.dispatcher.take() {
            let ended = tokio::time::timeout(CORE_STOP_TIMEOUT, dispatcher)
                .await
                .map_err(|_| {
                    anyhow!(
                        "the dispatcher did not stop within {}s",
                        CORE_STOP_TIMEOUT.as_secs()
                    )
                })?;
            match ended {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    return Err(anyhow::Error::new(error).context("the broker failed"));
                }
                Err(join) => return Err(anyhow!("the broker crashed: {join}")),
            }
        }
        if let Some(log) = &self.log {
            tokio::time::timeout(CORE_STOP_TIMEOUT, log.close())
                .await
                .map_err(|_| anyhow!("the commit log did not close in time"))?
                .context("close the commit log")?;
        }
        info!("broker stopped");
        Ok(())
    }
}
