//! A replicated cluster as ZooKeeper describes it, read without changing anything: the leader,
//! the live brokers and the ledger list (layout in `majordodo_proto::cluster`). Client commands
//! and workers find the leader here (`--zk`); `majordodo ledgers` and `dump-log` read the ledger
//! list.
//!
//! `majordodo_cluster::Coordinator` is not used: connecting it creates the cluster's znodes
//! when they are missing, which a tool that only looks must not do.

use std::time::Duration;

use anyhow::{Context, anyhow};
use majordodo_cluster::{DISCOVERY_DIR, LEADER_NODE, LEDGERS_NODE};
use majordodo_proto::cluster::{BrokerInfo, LedgersInfo};
use tokio::sync::watch;
use tracing::debug;
use zookeeper_client::{Client, Error as ZkError, EventType, SessionState};

use crate::error::usage;

/// Session timeout of the tools' ZooKeeper sessions: they hold no ephemeral node, so only how
/// soon a dead server is noticed depends on it.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a connection to ZooKeeper may take before the command gives up.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause before reading the leader znode again after a failed read, in the leader watch.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Checks `--zk` (host:port, comma-separated) and `--zk-path` (an absolute znode path).
///
/// # Errors
/// A usage error naming the flag.
pub(crate) fn check_args(zk: &str, zk_path: &str) -> anyhow::Result<()> {
    if zk.trim().is_empty() {
        return Err(usage(
            "--zk: empty; give the ZooKeeper servers as host:port[,host:port]",
        ));
    }
    for server in zk.split(',') {
        crate::config::broker::check_listen(server.trim())
            .map_err(|problem| usage(format!("--zk {zk:?}: {problem}")))?;
    }
    check_znode_path("--zk-path", zk_path)
}

/// Checks that `path` (given with `flag`) is an absolute znode path.
///
/// # Errors
/// A usage error naming the flag.
pub(crate) fn check_znode_path(flag: &str, path: &str) -> anyhow::Result<()> {
    if !path.starts_with('/') || path.len() < 2 || path.ends_with('/') {
        return Err(usage(format!(
            "{flag} {path:?}: must be an absolute znode path such as /majordodo"
        )));
    }
    Ok(())
}

/// A read-only ZooKeeper session on one cluster's znodes.
#[derive(Clone)]
pub(crate) struct ClusterZk {
    zk: Client,
    /// The cluster's base path (`--zk-path`).
    base: String,
    /// The connect string, for messages.
    connect: String,
}

impl std::fmt::Debug for ClusterZk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterZk")
            .field("connect", &self.connect)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl ClusterZk {
    /// Connects to `zk` for the cluster under `base`, giving up after [`CONNECT_TIMEOUT`].
    ///
    /// # Errors
    /// When the arguments are invalid (a usage error) or ZooKeeper does not answer.
    pub(crate) async fn connect(zk: &str, base: &str) -> anyhow::Result<ClusterZk> {
        check_args(zk, base)?;
        let connecting = Client::connector()
            .with_session_timeout(SESSION_TIMEOUT)
            .with_fail_eagerly()
            .connect(zk);
        let client = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                anyhow!(
                    "connect to ZooKeeper at {zk}: no answer within {}s (check --zk)",
                    CONNECT_TIMEOUT.as_secs()
                )
            })?
            .with_context(|| format!("connect to ZooKeeper at {zk} (check --zk)"))?;
        Ok(ClusterZk {
            zk: client,
            base: base.to_owned(),
            connect: zk.to_owned(),
        })
    }

    /// The connect string.
    pub(crate) fn connect_string(&self) -> &str {
        &self.connect
    }

    /// The cluster's base path.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    fn path(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    /// The current leader, if a broker holds the leader znode.
    ///
    /// # Errors
    /// When ZooKeeper fails or the znode is not a broker's JSON.
    pub(crate) async fn leader(&self) -> anyhow::Result<Option<BrokerInfo>> {
        let path = self.path(LEADER_NODE);
        match self.zk.get_data(&path).await {
            Ok((data, _)) => BrokerInfo::from_json(&data)
                .map(Some)
                .with_context(|| format!("read {path}")),
            Err(ZkError::NoNode) => Ok(None),
            Err(e) => Err(anyhow::Error::new(e).context(format!("read {path}"))),
        }
    }

    /// Every live broker as it last published itself, in the order they registered. Empty
    /// when the cluster's znodes do not exist.
    ///
    /// # Errors
    /// When ZooKeeper fails.
    pub(crate) async fn brokers(&self) -> anyhow::Result<Vec<BrokerInfo>> {
        let dir = self.path(DISCOVERY_DIR);
        let mut names = match self.zk.list_children(&dir).await {
            Ok(names) => names,
            Err(ZkError::NoNode) => return Ok(Vec::new()),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("list {dir}"))),
        };
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            match self.zk.get_data(&format!("{dir}/{name}")).await {
                Ok((data, _)) => match BrokerInfo::from_json(&data) {
                    Ok(info) => out.push(info),
                    Err(e) => {
                        debug!(znode = %name, error = %e, "skipping a malformed broker znode")
                    }
                },
                Err(ZkError::NoNode) => {} // gone meanwhile
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!("read {dir}/{name}")));
                }
            }
        }
        Ok(out)
    }

    /// The ledger list and its znode version; `None` when the cluster has no ledger list
    /// (no broker of it ever started under this path).
    ///
    /// # Errors
    /// When ZooKeeper fails or the list is malformed.
    pub(crate) async fn ledgers(&self) -> anyhow::Result<Option<(LedgersInfo, i32)>> {
        let path = self.path(LEDGERS_NODE);
        match self.zk.get_data(&path).await {
            Ok((data, stat)) => {
                let info = LedgersInfo::from_json(&data).with_context(|| format!("read {path}"))?;
                Ok(Some((info, stat.version)))
            }
            Err(ZkError::NoNode) => Ok(None),
            Err(e) => Err(anyhow::Error::new(e).context(format!("read {path}"))),
        }
    }

    /// Whether the session is over for good (then a new one is needed).
    fn session_lost(&self) -> bool {
        matches!(
            self.zk.state(),
            SessionState::Expired | SessionState::Closed | SessionState::AuthFailed
        )
    }

    /// Follows the leader znode in a background task (which ends when the receiver is
    /// dropped), with a new session when one expires: the receiver holds the current leader,
    /// `None` while there is none.
    pub(crate) fn watch_leader(&self) -> watch::Receiver<Option<BrokerInfo>> {
        let (tx, rx) = watch::channel(None);
        let mut zk = self.clone();
        tokio::spawn(async move {
            let path = zk.path(LEADER_NODE);
            while !tx.is_closed() {
                if zk.session_lost() {
                    match ClusterZk::connect(&zk.connect, &zk.base).await {
                        Ok(fresh) => zk = fresh,
                        Err(e) => {
                            debug!(error = %format!("{e:#}"), "cannot reconnect to ZooKeeper");
                            tokio::time::sleep(RETRY_PAUSE).await;
                            continue;
                        }
                    }
                }
                let watched = match zk.zk.check_and_watch_stat(&path).await {
                    Ok((stat, watcher)) => {
                        let leader = match stat {
                            Some(_) => zk.leader().await,
                            None => Ok(None),
                        };
                        leader.map(|leader| (leader, watcher))
                    }
                    Err(e) => Err(anyhow::Error::new(e)),
                };
                let (leader, watcher) = match watched {
                    Ok(found) => found,
                    Err(e) => {
                        debug!(error = %format!("{e:#}"), "cannot watch the leader znode");
                        tokio::time::sleep(RETRY_PAUSE).await;
                        continue;
                    }
                };
                tx.send_if_modified(|current| {
                    let modified = *current != leader;
                    *current = leader;
                    modified
                });
                tokio::select! {
                    event = watcher.changed() => {
                        if event.event_type == EventType::Session {
                            debug!(state = ?event.session_state, "session event on the leader watch");
                        }
                    }
                    () = tx.closed() => return,
                }
            }
        });
        rx
    }
}
