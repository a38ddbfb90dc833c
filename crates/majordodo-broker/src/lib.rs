//! The Majordodo broker runtime.
//!
//! - [`Broker`]: recovers the state from a snapshot and the commit log, then runs the dispatcher.
//! - [`handle`]: [`BrokerHandle`], through which the HTTP API submits and reads.
//! - [`worker_listener`]: accepts worker connections and turns their frames into events.
//! - [`dispatcher`]: the actor that owns the state, builds rounds of log entries, and answers
//!   once they are durable.
//!
//! Wiring (what `majordodo broker` does): open a [`majordodo_log::CommitLog`] and a
//! [`majordodo_log::SnapshotStore`], call [`Broker::start`], run
//! [`worker_listener::run`] with [`Broker::worker_events`], and serve the HTTP API with
//! [`Broker::handle`].

pub mod boot;
mod checkpoint;
pub mod clock;
pub mod dispatcher;
pub mod handle;
pub mod http;
pub mod worker_listener;

use std::sync::Arc;

use majordodo_core::{GroupMapper, Leader, LeaderConfig};
use majordodo_log::{CommitLog, SnapshotStore};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use boot::{BootError, BootReport};
pub use clock::{Clock, ManualClock, SystemClock};
pub use dispatcher::{DispatcherConfig, DispatcherError};
pub use handle::{BrokerError, BrokerHandle, Role, View};

use crate::checkpoint::Checkpointer;
use crate::worker_listener::WorkerEvent;

/// Settings of a broker.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// This broker's id (in logs, in the worker handshake).
    pub broker_id: String,
    /// Decisions: worker idle time, retention, round budgets.
    pub leader: LeaderConfig,
    /// The dispatcher's rounds, snapshots and NOOPs.
    pub dispatcher: DispatcherConfig,
    /// Capacity of the queue of submissions and reads; when full, callers wait (backpressure).
    pub command_queue: usize,
    /// Capacity of the queue of worker events.
    pub event_queue: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            broker_id: "broker".into(),
            leader: LeaderConfig::default(),
            dispatcher: DispatcherConfig::default(),
            // Enough for thousands of concurrent HTTP clients; each command may carry a batch.
            command_queue: 4_096,
            event_queue: 8_192,
        }
    }
}

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    handle: BrokerHandle,
    events: mpsc::Sender<WorkerEvent>,
    join: JoinHandle<Result<(), DispatcherError>>,
    report: BootReport,
}

impl Broker {
    /// Recovers the state (newest valid snapshot in `snapshots`, then the log after it) and
    /// starts the dispatcher as leader. It runs until `shutdown` completes or the log fails.
    ///
    /// # Errors
    /// [`BootError`] when the state cannot be recovered.
    pub async fn start(
        config: BrokerConfig,
        log: Arc<dyn CommitLog>,
        snapshots: Option<Arc<SnapshotStore>>,
        mapper: Arc<dyn GroupMapper>,
        clock: Arc<dyn Clock>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Broker, BootError> {
        let (state, report) = boot::recover(log.as_ref(), snapshots.as_deref(), mapper).await?;
        let leader = Leader::new(state, config.leader.clone(), clock.now());
        let broker_id: Arc<str> = Arc::from(config.broker_id.as_str());
        let (tx, commands) = mpsc::channel(config.command_queue);
        let (events, events_rx) = mpsc::channel(config.event_queue);
        let dispatcher = dispatcher::Dispatcher::new(
            leader,
            log,
            clock,
            config.dispatcher.clone(),
            broker_id.clone(),
            snapshots.map(Checkpointer::new),
        );
        let join = tokio::spawn(dispatcher.run(commands, events_rx, shutdown));
        Ok(Broker {
            handle: BrokerHandle { tx, broker_id },
            events,
            join,
            report,
        })
    }

    /// The handle for submissions and reads.
    pub fn handle(&self) -> BrokerHandle {
        self.handle.clone()
    }

    /// Where the worker listener sends its events.
    pub fn worker_events(&self) -> mpsc::Sender<WorkerEvent> {
        self.events.clone()
    }

    /// What recovery found at start.
    pub fn boot_report(&self) -> &BootReport {
        &self.report
    }

    /// Waits until the dispatcher stops (after shutdown, or on a log failure).
    ///
    /// # Errors
    /// [`DispatcherError`] when it stopped because the log failed.
    pub async fn wait(self) -> Result<(), DispatcherError> {
        drop(self.events);
        drop(self.handle);
        match self.join.await {
            Ok(result) => result,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}
