//! A cheap, cloneable view of what the agent is doing, for the CLI and for tests.

use tokio::sync::watch;

/// A snapshot of the agent's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStatus {
    /// Whether a broker accepted the current connection.
    pub connected: bool,
    /// The broker of the current (or last) connection.
    pub broker_id: Option<String>,
    /// How many handshakes succeeded since the start (a reconnect adds one).
    pub connections: u64,
    /// Tasks executing now.
    pub running: usize,
    /// Finish reports not yet acknowledged by the broker (unsent or awaiting their ack).
    pub pending_reports: usize,
    /// The last connection problem, such as a broker's rejection reason.
    pub last_error: Option<String>,
    /// Whether `run` has returned.
    pub stopped: bool,
}

/// Watches the agent's [`WorkerStatus`].
#[derive(Debug, Clone)]
pub struct StatusHandle {
    rx: watch::Receiver<WorkerStatus>,
}

impl StatusHandle {
    pub(crate) fn new(rx: watch::Receiver<WorkerStatus>) -> Self {
        StatusHandle { rx }
    }

    /// The current status.
    pub fn current(&self) -> WorkerStatus {
        self.rx.borrow().clone()
    }

    /// Waits until `predicate` holds, and returns the status that satisfied it; returns the
    /// last status if the agent is gone without it ever holding.
    pub async fn wait_for(
        &mut self,
        mut predicate: impl FnMut(&WorkerStatus) -> bool,
    ) -> WorkerStatus {
        let found = match self.rx.wait_for(|status| predicate(status)).await {
            Ok(status) => Some(status.clone()),
            Err(_) => None,
        };
        found.unwrap_or_else(|| self.rx.borrow().clone())
    }
}
