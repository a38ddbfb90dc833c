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
pub mod metrics;
pub mod replica;
pub mod worker_listener;

use std::sync::Arc;

use majordodo_core::{GroupMapper, Leader, LeaderConfig};
use majordodo_log::{CommitLog, SnapshotStore};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use boot::{BootError, BootReport, OpeningLog};
pub use clock::{Clock, ManualClock, SystemClock};
pub use dispatcher::{DispatcherConfig, DispatcherError};
pub use handle::{AdminChange, AdminRefusal, BrokerError, BrokerHandle, Role, View};

use crate::handle::Command;

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
pub struct Broker {
    handle: BrokerHandle,
    events: mpsc::Sender<WorkerEvent>,
    join: JoinHandle<Result<(), DispatcherError>>,
    report: BootReport,
    log: Option<Arc<dyn CommitLog>>,
}

/// A broker recovering its state (see [`Broker::launch`]): its handle already answers, writes
/// with [`BrokerError::Recovering`] and reads with the same error, so a client can tell "starting"
/// from "down".
pub struct BootingBroker {
    handle: BrokerHandle,
    events: mpsc::Sender<WorkerEvent>,
    join: JoinHandle<Result<(), DispatcherError>>,
    recovered: oneshot::Receiver<Booted>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("handle", &self.handle)
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for BootingBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootingBroker")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Starts a broker in the background and returns at once: it recovers its state (newest
    /// valid snapshot in `snapshots`, then the log after it), then runs the dispatcher as leader
    /// until `shutdown` completes or the log fails. While it recovers, requests are answered
    /// with [`BrokerError::Recovering`] and workers are refused (retryable).
    pub fn launch(
        config: BrokerConfig,
        log: Arc<dyn CommitLog>,
        snapshots: Option<Arc<SnapshotStore>>,
        mapper: Arc<dyn GroupMapper>,
        clock: Arc<dyn Clock>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> BootingBroker {
        Broker::launch_opening(
            config,
            boot::opened(log),
            snapshots,
            mapper,
            clock,
            shutdown,
        )
    }

    /// [`Broker::launch`] with a log still to open: `log` runs while the snapshot loads, and
    /// its error fails the boot. [`Broker::log`] gives the log once recovered.
    pub fn launch_opening(
        config: BrokerConfig,
        log: OpeningLog,
        snapshots: Option<Arc<SnapshotStore>>,
        mapper: Arc<dyn GroupMapper>,
        clock: Arc<dyn Clock>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> BootingBroker {
        spawn_broker(
            config,
            snapshots,
            mapper,
            clock,
            move |parts, commands, events, recovered| {
                serve(parts, log, commands, events, shutdown, recovered)
            },
        )
    }

    /// Like [`Broker::launch`] for a broker of a replicated cluster: it boots from a local
    /// snapshot, a snapshot downloaded from the leader or the ledgers, follows the leader,
    /// stands for election and leads when elected (see [`replica`]). Reads are answered from
    /// its copy in both roles; writes only while it leads.
    pub fn launch_replicated(
        config: BrokerConfig,
        cluster: replica::ClusterSettings,
        snapshots: Option<Arc<SnapshotStore>>,
        mapper: Arc<dyn GroupMapper>,
        clock: Arc<dyn Clock>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> BootingBroker {
        spawn_broker(
            config,
            snapshots,
            mapper,
            clock,
            move |parts, commands, events, recovered| {
                replica::serve_replicated(parts, cluster, commands, events, shutdown, recovered)
            },
        )
    }

    /// [`Broker::launch`], then waits until the state is recovered.
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
        Broker::launch(config, log, snapshots, mapper, clock, shutdown)
            .recovered()
            .await
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

    /// The commit log of a broker launched with one ([`Broker::launch`],
    /// [`Broker::launch_opening`]), for its owner to close after the broker stops; `None` for
    /// a replicated broker, which manages its ledgers itself.
    pub fn log(&self) -> Option<Arc<dyn CommitLog>> {
        self.log.clone()
    }

    /// Waits until the dispatcher stops (after shutdown, or on a log failure).
    ///
    /// # Errors
    /// [`DispatcherError`] when it stopped because the log failed.
    pub async fn wait(self) -> Result<(), DispatcherError> {
        drop(self.events);
        drop(self.handle);
        join(self.join).await
    }
}

impl BootingBroker {
    /// The handle for submissions and reads (answered with [`BrokerError::Recovering`] until
    /// the state is recovered).
    pub fn handle(&self) -> BrokerHandle {
        self.handle.clone()
    }

    /// Where the worker listener sends its events.
    pub fn worker_events(&self) -> mpsc::Sender<WorkerEvent> {
        self.events.clone()
    }

    /// Waits until the state is recovered and the broker serves as leader.
    ///
    /// # Errors
    /// [`BootError`] when the state cannot be recovered (the broker has stopped), or
    /// [`BootError::Stopped`] when it was shut down first.
    pub async fn recovered(self) -> Result<Broker, BootError> {
        match self.recovered.await {
            Ok(Ok((report, log))) => Ok(Broker {
                handle: self.handle,
                events: self.events,
                join: self.join,
                report,
                log,
            }),
            Ok(Err(e)) => {
                let _ = join(self.join).await;
                Err(e)
            }
            Err(_) => match join(self.join).await {
                Ok(()) => Err(BootError::Stopped),
                Err(e) => Err(BootError::Dispatcher(e.to_string())),
            },
        }
    }
}

/// Waits for the dispatcher task, passing a panic on.
async fn join(join: JoinHandle<Result<(), DispatcherError>>) -> Result<(), DispatcherError> {
    match join.await {
        Ok(result) => result,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// What the broker task tells [`BootingBroker::recovered`]: the report and the log it opened.
pub(crate) type Booted = Result<(BootReport, Option<Arc<dyn CommitLog>>), BootError>;

/// What the broker task owns.
pub(crate) struct Parts {
    pub(crate) config: BrokerConfig,
    pub(crate) snapshots: Option<Arc<SnapshotStore>>,
    pub(crate) mapper: Arc<dyn GroupMapper>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) broker_id: Arc<str>,
    /// Counted by the dispatcher while it leads, read by `/metrics`.
    pub(crate) metrics: Arc<metrics::BrokerMetrics>,
}

/// Makes the channels and the handle, and spawns the broker task `run` builds.
fn spawn_broker<F, Fut>(
    config: BrokerConfig,
    snapshots: Option<Arc<SnapshotStore>>,
    mapper: Arc<dyn GroupMapper>,
    clock: Arc<dyn Clock>,
    run: F,
) -> BootingBroker
where
    F: FnOnce(
        Parts,
        mpsc::Receiver<Command>,
        mpsc::Receiver<WorkerEvent>,
        oneshot::Sender<Booted>,
    ) -> Fut,
    Fut: Future<Output = Result<(), DispatcherError>> + Send + 'static,
{
    let broker_id: Arc<str> = Arc::from(config.broker_id.as_str());
    let (tx, commands) = mpsc::channel(config.command_queue);
    let (events, events_rx) = mpsc::channel(config.event_queue);
    let (recovered_tx, recovered) = oneshot::channel();
    let metrics = Arc::new(metrics::BrokerMetrics::default());
    let handle = BrokerHandle {
        tx,
        broker_id: broker_id.clone(),
        snapshots: snapshots.clone(),
        metrics: metrics.clone(),
    };
    let parts = Parts {
        config,
        snapshots,
        mapper,
        clock,
        broker_id,
        metrics,
    };
    let join = tokio::spawn(run(parts, commands, events_rx, recovered_tx));
    BootingBroker {
        handle,
        events,
        join,
        recovered,
    }
}

/// The broker task: recovers, answering requests with "recovering" meanwhile, then dispatches.
async fn serve(
    parts: Parts,
    log: OpeningLog,
    mut commands: mpsc::Receiver<Command>,
    mut events: mpsc::Receiver<WorkerEvent>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    recovered: oneshot::Sender<Booted>,
) -> Result<(), DispatcherError> {
    tokio::pin!(shutdown);
    let recovery = boot::recover(log, parts.snapshots.clone(), parts.mapper.clone());
    tokio::pin!(recovery);
    let outcome = loop {
        tokio::select! {
            biased;
            outcome = &mut recovery => break outcome,
            () = &mut shutdown => return Ok(()),
            Some(command) = commands.recv() => command.refuse(BrokerError::Recovering),
            Some(event) = events.recv() => dispatcher::refuse_event(event, &BrokerError::Recovering),
        }
    };
    let (log, state, report) = match outcome {
        Ok(recovered_state) => recovered_state,
        Err(e) => {
            let message = e.to_string();
            let _ = recovered.send(Err(e));
            return Err(DispatcherError::Boot(message));
        }
    };
    let leader = Leader::new(state, parts.config.leader.clone(), parts.clock.now());
    let checkpointer = parts
        .snapshots
        .map(|store| Checkpointer::new(store, report.snapshot_lsn));
    let dispatcher = dispatcher::Dispatcher::new(
        leader,
        log.clone(),
        parts.clock,
        parts.config.dispatcher.clone(),
        parts.broker_id,
        checkpointer,
    )
    .with_metrics(parts.metrics);
    let _ = recovered.send(Ok((report, Some(log))));
    let mut dispatcher = dispatcher;
    let stop = async {
        shutdown.await;
        dispatcher::Stop::Shutdown
    };
    dispatcher
        .run(&mut commands, &mut events, stop)
        .await
        .map(|_| ())
}
