//! Finding the leader through ZooKeeper, as the original's `ZookeeperDiscoveryService` does: the
//! leader publishes a [`BrokerInfo`] in the ephemeral znode `<base>/leader` (default base
//! [`DEFAULT_ZK_BASE_PATH`]); its `client.api.url` is the HTTP API, its `host`/`port` the worker
//! port. [`ZkDiscovery::leader`] reads the znode again on every call, so a caller that asks
//! after a failure finds a new leader as soon as it has published itself.
//!
//! The same lookup serves HTTP clients ([`crate::Client::discover`]) and workers (the
//! `majordodo worker --zk` locator uses [`BrokerInfo::worker_address`]). ZooKeeper stays out of
//! the per-request path: a client reads it only when it has no leader or its leader failed.

use std::time::Duration;

use majordodo_proto::cluster::{BrokerInfo, ClusterFormatError};
use tokio::sync::Mutex;
use tracing::debug;
use zookeeper_client as zk;

/// The original's default base path of a cluster's znodes.
pub const DEFAULT_ZK_BASE_PATH: &str = "/majordodo";

/// Name of the leader's znode under the base path (the original's).
pub const LEADER_NODE: &str = "leader";

/// Default ZooKeeper session timeout of a discovery session. The session only reads, so its
/// length matters little; 10 s is ZooKeeper's usual lower bound for a server's default range.
pub const DEFAULT_ZK_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Default time to open a ZooKeeper session before the lookup fails (retryably).
pub const DEFAULT_ZK_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the leader could not be found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The connect string or the base path is unusable. Fix the configuration; not retryable.
    #[error("invalid zookeeper setting {setting}: {problem}")]
    Invalid {
        /// Which setting (`connect string` or `base path`).
        setting: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// ZooKeeper could not be reached or answered with an error. Retryable.
    #[error("zookeeper at {connect} unavailable: {problem}")]
    Unreachable {
        /// The connect string.
        connect: String,
        /// What happened.
        problem: String,
    },
    /// The leader znode does not exist: no broker leads now (an election is under way, or no
    /// broker of this cluster runs). Retryable.
    #[error("no leader published at {path} (is a broker of this cluster running?)")]
    NoLeader {
        /// The leader znode's path.
        path: String,
    },
    /// The leader znode does not hold a broker's JSON, or lacks what the caller needs (the
    /// HTTP API's URL). Not retryable: a different cluster or format lives at that path.
    #[error("leader znode {path}: {problem}")]
    Malformed {
        /// The leader znode's path.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
}

impl DiscoveryError {
    /// Whether asking again later may find a leader.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            DiscoveryError::Unreachable { .. } | DiscoveryError::NoLeader { .. }
        )
    }
}

/// Reads the leader's znode of one cluster, through one ZooKeeper session opened on first use
/// and opened again after it failed.
pub struct ZkDiscovery {
    /// ZooKeeper connect string (`host:port,host:port[/chroot]`).
    connect: String,
    /// `<base>/leader`.
    leader_path: String,
    /// Session timeout asked of ZooKeeper.
    session_timeout: Duration,
    /// Longest a session takes to open.
    connect_timeout: Duration,
    /// The session, once opened; dropped after an error so the next lookup opens a new one
    /// (the old one may be expired or closed).
    session: Mutex<Option<zk::Client>>,
}

impl std::fmt::Debug for ZkDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZkDiscovery")
            .field("connect", &self.connect)
            .field("leader_path", &self.leader_path)
            .finish_non_exhaustive()
    }
}

impl ZkDiscovery {
    /// Discovery of the cluster under `base_path` (such as [`DEFAULT_ZK_BASE_PATH`]) in the
    /// ZooKeeper ensemble `connect`. Nothing is contacted yet.
    ///
    /// # Errors
    /// [`DiscoveryError::Invalid`] for an empty connect string or a base path that is not an
    /// absolute znode path.
    pub fn new(connect: impl Into<String>, base_path: &str) -> Result<ZkDiscovery, DiscoveryError> {
        let connect = connect.into();
        if connect.trim().is_empty() {
            return Err(DiscoveryError::Invalid {
                setting: "connect string",
                problem: "is empty (give host:port[,host:port...])".into(),
            });
        }
        let base = base_path.trim_end_matches('/');
        if !base.starts_with('/') || base.len() < 2 || base.contains("//") {
            return Err(DiscoveryError::Invalid {
                setting: "base path",
                problem: format!(
                    "{base_path:?} is not an absolute znode path such as {DEFAULT_ZK_BASE_PATH}"
                ),
            });
        }
        Ok(ZkDiscovery {
            connect,
            leader_path: format!("{base}/{LEADER_NODE}"),
            session_timeout: DEFAULT_ZK_SESSION_TIMEOUT,
            connect_timeout: DEFAULT_ZK_CONNECT_TIMEOUT,
            session: Mutex::new(None),
        })
    }

    /// Sets the time to open a session (default [`DEFAULT_ZK_CONNECT_TIMEOUT`]).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> ZkDiscovery {
        self.connect_timeout = timeout;
        self
    }

    /// The ZooKeeper connect string.
    pub fn connect_string(&self) -> &str {
        &self.connect
    }

    /// The leader znode's path, `<base>/leader`.
    pub fn leader_path(&self) -> &str {
        &self.leader_path
    }

    /// Reads the leader znode now.
    ///
    /// # Errors
    /// [`DiscoveryError`]: ZooKeeper unreachable, no leader published, or a znode this build
    /// cannot read.
    pub async fn leader(&self) -> Result<BrokerInfo, DiscoveryError> {
        let mut session = self.session.lock().await;
        let client = match &*session {
            Some(client) => client.clone(),
            None => {
                let client = self.open().await?;
                *session = Some(client.clone());
                client
            }
        };
        match client.get_data(&self.leader_path).await {
            Ok((data, _)) => BrokerInfo::from_json(&data).map_err(|e| self.malformed(e)),
            Err(zk::Error::NoNode) => Err(DiscoveryError::NoLeader {
                path: self.leader_path.clone(),
            }),
            Err(error) => {
                // The session may be expired or closed: the next lookup opens a new one.
                *session = None;
                Err(self.unreachable(&error))
            }
        }
    }

    /// The leader's HTTP API URL, read from the leader znode now.
    ///
    /// # Errors
    /// As [`ZkDiscovery::leader`], and [`DiscoveryError::Malformed`] when the leader publishes
    /// no `client.api.url`.
    pub async fn leader_api_url(&self) -> Result<String, DiscoveryError> {
        let info = self.leader().await?;
        match info.api_url() {
            Some(url) if !url.is_empty() => Ok(url.to_owned()),
            _ => Err(DiscoveryError::Malformed {
                path: self.leader_path.clone(),
                problem: "the leader publishes no client.api.url".into(),
            }),
        }
    }

    async fn open(&self) -> Result<zk::Client, DiscoveryError> {
        debug!(connect = %self.connect, "opening a zookeeper session for discovery");
        let connect = zk::Client::connector()
            .with_session_timeout(self.session_timeout)
            .with_fail_eagerly()
            .connect(&self.connect);
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(error)) => Err(self.unreachable(&error)),
            Err(_) => Err(DiscoveryError::Unreachable {
                connect: self.connect.clone(),
                problem: format!("no session within {} ms", self.connect_timeout.as_millis()),
            }),
        }
    }

    fn unreachable(&self, error: &zk::Error) -> DiscoveryError {
        DiscoveryError::Unreachable {
            connect: self.connect.clone(),
            problem: error.to_string(),
        }
    }

    fn malformed(&self, error: ClusterFormatError) -> DiscoveryError {
        DiscoveryError::Malformed {
            path: self.leader_path.clone(),
            problem: error.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_before_anything_is_contacted() {
        // Goal: an empty connect string or a relative base path is refused by name; a trailing
        // slash is accepted.
        assert!(matches!(
            ZkDiscovery::new("", "/majordodo"),
            Err(DiscoveryError::Invalid {
                setting: "connect string",
                ..
            })
        ));
        for bad in ["majordodo", "/", "", "/a//b"] {
            assert!(
                matches!(
                    ZkDiscovery::new("h:2181", bad),
                    Err(DiscoveryError::Invalid {
                        setting: "base path",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        let d = ZkDiscovery::new("h:2181", "/cluster/a/").unwrap();
        assert_eq!(d.leader_path(), "/cluster/a/leader");
    }
}
