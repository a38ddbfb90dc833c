//! The one error type of the harness, named by what went wrong for the test author.

use std::path::PathBuf;
use std::time::Duration;

/// What a test author must do to get the missing pieces.
pub const RUN_TEST_DEPS: &str =
    "run scripts/test-deps (installs ZooKeeper and the BookKeeper jars)";

/// Why the harness could not start, control or query a cluster.
///
/// None of these is worth retrying blindly inside a test: each one means the machine or the
/// cluster is not in the state the test needs, and the test should fail with the message.
///
/// `Debug` prints the same text as `Display`, so that
/// `.expect("start cluster")` in a test shows the readable message and log tail.
#[derive(thiserror::Error)]
pub enum TestkitError {
    /// ZooKeeper, the BookKeeper jars or Java are not installed. Not retryable: run
    /// `scripts/test-deps`, which installs them.
    #[error("{what} not found ({looked_at}): {RUN_TEST_DEPS}")]
    MissingDependency {
        /// What is missing, e.g. "the Debian ZooKeeper jar".
        what: &'static str,
        /// Where the harness looked.
        looked_at: String,
    },

    /// A file or directory of the cluster could not be created, written or read. Usually a full
    /// or read-only temporary directory; not retryable.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing, as a verb phrase.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A server process (ZooKeeper or a bookie) exited or did not become ready in time. The
    /// message carries the last lines of its log; the whole log is at `log`.
    #[error("{name} failed to start: {reason}\n--- last lines of {} ---\n{log_tail}", log.display())]
    StartFailed {
        /// Which server, e.g. "bookie 2 (127.0.0.1:41234)".
        name: String,
        /// Why the harness gave up on it.
        reason: String,
        /// The process's stdout and stderr.
        log: PathBuf,
        /// The last lines of that log.
        log_tail: String,
    },

    /// A ZooKeeper request made by the harness itself (metadata set-up, registration checks)
    /// failed. The cluster's ZooKeeper is down or unreachable; not retryable.
    #[error("zookeeper: {context}: {source}")]
    ZooKeeper {
        /// What the harness asked for.
        context: String,
        /// The client error.
        #[source]
        source: zookeeper_client::Error,
    },

    /// A condition the harness waits for (a registration appearing or disappearing) did not
    /// happen within the time allowed.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// The awaited condition.
        what: String,
        /// How long the harness waited.
        timeout: Duration,
    },

    /// A Java tool ran longer than its timeout and was killed.
    #[error(
        "java tool {main_class} did not finish within {timeout:?} and was killed\n--- stderr tail ---\n{stderr_tail}"
    )]
    ToolTimedOut {
        /// The tool's main class.
        main_class: String,
        /// The timeout given to `run_java_tool`.
        timeout: Duration,
        /// The last lines of what the tool printed on stderr.
        stderr_tail: String,
    },

    /// A line of a tool's output that should be JSON is not. A bug in the tool or a JVM
    /// message on stdout; not retryable.
    #[error("line {line} of the tool output is not JSON: {source}")]
    BadToolOutput {
        /// 1-based line number in stdout.
        line: usize,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },

    /// The options passed to a constructor are inconsistent (e.g. zero bookies).
    #[error("invalid options: {0}")]
    InvalidOptions(String),
}

impl std::fmt::Debug for TestkitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // every message already names its source error
        write!(f, "{self}")
    }
}

impl TestkitError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        TestkitError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn zk(context: impl Into<String>, source: zookeeper_client::Error) -> Self {
        TestkitError::ZooKeeper {
            context: context.into(),
            source,
        }
    }
}
