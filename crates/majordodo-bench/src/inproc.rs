//! A standalone broker inside this process: the real dispatcher on a file commit log (fsync on)
//! under a data directory, its worker port and its HTTP API on 127.0.0.1, so a scenario can
//! drive it over HTTP and TCP like any client and worker, and also read its state directly
//! ([`BrokerHandle::query`]) to sample what the scheduler decided.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use majordodo_broker::http::auth::token_digest;
use majordodo_broker::http::{HttpConfig, UserConfig, UserRole};
use majordodo_broker::worker_listener::{self, ListenerConfig};
use majordodo_broker::{BootError, Broker, BrokerConfig, BrokerHandle, OpeningLog, SystemClock};
use majordodo_client::{Auth, Client};
use majordodo_core::{DefaultGroupMapper, LeaderConfig};
use majordodo_log::{CommitLog, FileLog, FileLogConfig, FileLogStats, SnapshotStore};
use majordodo_proto::worker::SharedSecret;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Credentials, Target};

/// A running in-process broker.
pub(crate) struct InProcBroker {
    /// Reads of the applied state.
    pub(crate) handle: BrokerHandle,
    /// The HTTP API.
    pub(crate) url: String,
    /// The worker port.
    pub(crate) worker_addr: String,
    credentials: Credentials,
    stop: CancellationToken,
    dispatcher: JoinHandle<()>,
    listener: JoinHandle<()>,
    http: JoinHandle<()>,
    log: Arc<FileLog>,
}

impl InProcBroker {
    /// Starts a broker with the decisions of `leader` and its log under `dir` (created).
    pub(crate) async fn start(dir: &Path, leader: LeaderConfig) -> anyhow::Result<InProcBroker> {
        InProcBroker::start_inner(dir, leader, None).await
    }

    /// Like [`InProcBroker::start`], with its snapshots in `dir/snapshots` as a broker process
    /// keeps them: it boots from the newest and [`BrokerHandle::checkpoint`] writes one.
    pub(crate) async fn start_with_snapshots(
        dir: &Path,
        leader: LeaderConfig,
    ) -> anyhow::Result<InProcBroker> {
        let snapshots = dir.join("snapshots");
        let store = tokio::task::spawn_blocking(move || SnapshotStore::open(&snapshots))
            .await
            .context("open the snapshots")?
            .context("open the snapshots")?;
        InProcBroker::start_inner(dir, leader, Some(Arc::new(store))).await
    }

    async fn start_inner(
        dir: &Path,
        leader: LeaderConfig,
        snapshots: Option<Arc<SnapshotStore>>,
    ) -> anyhow::Result<InProcBroker> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let log_dir = dir.join("log");
        // Claimed first, then read while the snapshot loads, as a broker process does.
        let claimed = tokio::task::spawn_blocking(move || {
            FileLog::claim(
                &log_dir,
                FileLogConfig {
                    // A request of a thousand tasks is one record.
                    max_record_size: 64 << 20,
                    ..FileLogConfig::default()
                },
            )
        })
        .await
        .context("open the commit log")?
        .context("open the commit log")?;
        let (opened_tx, opened) = tokio::sync::oneshot::channel();
        let opening: OpeningLog = Box::pin(async move {
            let dir = claimed.dir().to_path_buf();
            let (log, _) = tokio::task::spawn_blocking(move || claimed.open())
                .await
                .map_err(|e| BootError::Dispatcher(e.to_string()))?
                .map_err(|source| BootError::OpenLog { dir, source })?;
            let log = Arc::new(log);
            let _ = opened_tx.send(log.clone());
            Ok(log as Arc<dyn CommitLog>)
        });
        let stop = CancellationToken::new();
        let broker = Broker::launch_opening(
            BrokerConfig {
                broker_id: "bench".into(),
                leader,
                ..BrokerConfig::default()
            },
            opening,
            snapshots,
            Arc::new(DefaultGroupMapper),
            Arc::new(SystemClock),
            stop.clone().cancelled_owned(),
        )
        .recovered()
        .await
        .context("start the broker")?;
        let log = opened.await.context("the commit log was not opened")?;
        let credentials = Credentials::random();
        let workers = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the worker port")?;
        let worker_addr = workers.local_addr()?.to_string();
        let listener = tokio::spawn({
            let config =
                ListenerConfig::new("bench", SharedSecret::new(credentials.secret.clone()));
            let events = broker.worker_events();
            let stop = stop.clone();
            async move {
                if let Err(e) =
                    worker_listener::run(workers, config, events, stop.cancelled_owned()).await
                {
                    eprintln!("the worker port stopped: {e:?}");
                }
            }
        });
        let http = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind the HTTP API")?;
        let url = format!(
            "http://{}{}",
            http.local_addr()?,
            majordodo_proto::http::API_PATH
        );
        let settings = HttpConfig {
            max_body_bytes: 64 << 20,
            users: vec![UserConfig {
                name: "admin".into(),
                role: UserRole::Admin,
                password_hash: None,
                token_sha256: Some(token_digest(&credentials.token)),
            }],
            ..HttpConfig::default()
        }
        .validate()
        .context("HTTP settings")?;
        let handle = broker.handle();
        let http = tokio::spawn({
            let handle = handle.clone();
            let stop = stop.clone();
            async move {
                if let Err(e) =
                    majordodo_broker::http::serve(http, handle, settings, stop.cancelled_owned())
                        .await
                {
                    eprintln!("the HTTP API stopped: {e}");
                }
            }
        });
        let dispatcher = tokio::spawn(async move {
            if let Err(e) = broker.wait().await {
                eprintln!("the broker stopped: {e}");
            }
        });
        Ok(InProcBroker {
            handle,
            url,
            worker_addr,
            credentials,
            stop,
            dispatcher,
            listener,
            http,
            log,
        })
    }

    /// A client authenticated as admin.
    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        Client::builder(&self.url)
            .auth(Auth::bearer(self.credentials.token.clone()))
            .timeout(Duration::from_secs(120))
            .build()
            .context("build the HTTP client")
    }

    /// The workers' shared secret.
    pub(crate) fn secret(&self) -> &str {
        &self.credentials.secret
    }

    /// The commit log's counters (records written, fsyncs) since it was opened.
    pub(crate) fn log_stats(&self) -> FileLogStats {
        self.log.stats()
    }

    /// Stops the ports and the dispatcher, then closes the log.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            let _ = self.http.await;
            let _ = self.listener.await;
            let _ = self.dispatcher.await;
        })
        .await;
        let _ = self.log.close().await;
    }
}

impl Target for InProcBroker {
    fn client(&self) -> anyhow::Result<Client> {
        InProcBroker::client(self)
    }
    fn worker_addr(&self) -> &str {
        &self.worker_addr
    }
    fn secret(&self) -> &str {
        InProcBroker::secret(self)
    }
}
