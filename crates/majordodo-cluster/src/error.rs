//! Errors of the coordination layer.

use majordodo_log::LogError;

/// Why a ZooKeeper operation of the cluster failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CoordError {
    /// The cluster settings are unusable. Fix the configuration.
    #[error("invalid cluster settings: {0}")]
    Config(String),
    /// The ZooKeeper session expired or was closed: every ephemeral znode of this broker is
    /// gone, so it no longer leads. Not retryable on this session; connect again.
    #[error("ZooKeeper session expired")]
    SessionExpired,
    /// A compare-and-set lost: another broker changed the znode, so this one has been replaced
    /// as leader. Not retryable: step down.
    #[error("superseded by another broker: {0}")]
    Superseded(String),
    /// A znode holds something this build cannot read. An operator must look.
    #[error("malformed cluster metadata: {0}")]
    Format(String),
    /// Another ZooKeeper failure (connection loss, timeout). Retryable.
    #[error("{context}: {message}")]
    ZooKeeper {
        /// What was being done.
        context: String,
        /// ZooKeeper's error.
        message: String,
    },
}

impl CoordError {
    /// Wraps a ZooKeeper error with what was being done; session ends become
    /// [`CoordError::SessionExpired`].
    pub fn zk(context: impl Into<String>, e: zookeeper_client::Error) -> CoordError {
        use zookeeper_client::Error as E;
        match e {
            E::SessionExpired | E::ClientClosed | E::AuthFailed => CoordError::SessionExpired,
            other => CoordError::ZooKeeper {
                context: context.into(),
                message: other.to_string(),
            },
        }
    }

    /// Whether trying again (on this session) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CoordError::ZooKeeper { .. })
    }
}

impl From<CoordError> for LogError {
    fn from(e: CoordError) -> LogError {
        match e {
            CoordError::Superseded(why) => LogError::Fenced(why),
            CoordError::SessionExpired => {
                LogError::Fenced("the ZooKeeper session expired".to_owned())
            }
            other => LogError::Backend(other.to_string()),
        }
    }
}

/// Maps a BookKeeper error to the log's: a fenced or superseded writer is [`LogError::Fenced`].
pub(crate) fn bk_to_log(context: &str, e: bookkeeper_client::BkError) -> LogError {
    match e {
        bookkeeper_client::BkError::Fenced { ledger_id } => LogError::Fenced(format!(
            "{context}: ledger {ledger_id} was fenced by another broker"
        )),
        other => LogError::Backend(format!("{context}: {other}")),
    }
}
