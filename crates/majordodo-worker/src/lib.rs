//! The Majordodo worker agent: connects to a broker, runs the tasks it is assigned, and reports
//! how each ended until the broker acknowledges it.
//!
//! ```no_run
//! use majordodo_proto::worker::SharedSecret;
//! use majordodo_worker::{Executors, TaskFailure, WorkerConfig, executor_fn, run};
//!
//! # async fn example() -> Result<(), majordodo_worker::WorkerError> {
//! let config = WorkerConfig::new("broker.example:7363", SharedSecret::new("secret"));
//! let executors = Executors::new().with(
//!     "echo",
//!     executor_fn(|task| async move { Ok::<_, TaskFailure>(task.data) }),
//! );
//! let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! run(config, executors, async { let _ = stopped.await; }).await
//! # }
//! ```
//!
//! Behaviour:
//! - **Capacity.** The worker declares a [`Capacity`](majordodo_proto::worker::Capacity) and
//!   checks it again on every assignment: one beyond `max_threads`, beyond its type's limit
//!   (or the `any` limit, shared by every type without its own), of a type it does not accept,
//!   or without an executor is reported as an error whose text starts with `refused:`, and is
//!   never executed. The same holds for a task whose needs (`cpu`, `memory`, named amounts)
//!   do not fit the capacity's `amounts` left by the running tasks, or that needs an amount
//!   the worker does not declare. By default the amounts are this machine's cpu and memory
//!   ([`detected_amounts`]).
//! - **Enforcement.** The `process` executor holds a task to the cpu and memory it declared
//!   as [`Enforcement`] says (cgroup v2 per attempt, else RLIMIT_AS for memory and no cpu
//!   limit); the capacity's `enforcement` line tells the broker which applies.
//! - **Reports.** Finish reports go in batches of up to `max_reports`, or after `max_delay`
//!   (at once when nothing else runs), and are kept until the broker's `FinishedAck`; they are
//!   sent again after a reconnect (to whichever broker answers) and when the ack is overdue.
//! - **Keepalive.** The worker pings every keepalive interval with its live capacity, and
//!   drops a connection on which the broker sent nothing (not even a pong) for the idle
//!   timeout the broker announced. It reconnects with jittered, bounded exponential backoff,
//!   listing the tasks it still runs and those with unacknowledged reports. A broker that keeps
//!   refusing it for a reason that may pass (its worker id held by another live connection) is
//!   retried for `max_refused_time`, then `run` returns [`WorkerError::StillRefused`].
//! - **Finding the broker.** Before every connection attempt the worker asks its
//!   [`BrokerLocator`] (default: the fixed `broker_addr`) which broker to connect to, so after a
//!   lost connection it follows a new leader and re-sends its unacknowledged reports there. A
//!   broker refusing it as `broker_not_leader`, `recovery_in_progress` or `broker_not_started`
//!   is not a refusal of this worker: the worker locates the broker again after its backoff,
//!   for as long as it runs.
//! - **Code pools.** A task naming a code pool runs once the pool is unpacked in
//!   `codepools.dir/<sha256>`: fetched from the broker over the worker connection on first use,
//!   checked (size, SHA-256, every archive rule again) and unpacked atomically; the `process`
//!   executor runs it with the pool's directory as working directory.
//! - **Kill.** A `Kill` from the broker aborts every task and makes `run` return
//!   [`WorkerError::Killed`].
//! - **Graceful stop.** When the shutdown future completes the worker announces zero
//!   capacity, refuses new assignments, waits up to `shutdown_grace` for running tasks (then
//!   aborts them, reporting them as errors), delivers every report (up to `ack_timeout` more),
//!   sends `Shutdown` and closes.

mod agent;
mod codepools;
mod config;
mod executor;
mod limits;
mod locator;
mod process;
mod status;

pub use agent::{Worker, run};
pub use codepools::{
    CODEPOOL_PART_BYTES, CodePoolsConfig, DEFAULT_CODEPOOL_DOWNLOAD_TIMEOUT, unpack,
};
pub use config::{
    Backoff, DEFAULT_ACK_TIMEOUT, DEFAULT_CANCEL_GRACE, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_MAX_REFUSED_TIME, DEFAULT_MAX_REPORT_DELAY,
    DEFAULT_MAX_REPORTS_PER_BATCH, DEFAULT_MAX_THREADS, DEFAULT_RECONNECT_INITIAL,
    DEFAULT_RECONNECT_MAX, DEFAULT_SHUTDOWN_GRACE, MIN_MAX_FRAME_SIZE, ReportBatching,
    WorkerConfig, detected_amounts, hostname, new_process_id,
};
pub use executor::{CancelSignal, Executors, Task, TaskExecutor, TaskFailure, executor_fn};
pub use limits::{
    CPU_PERIOD_US, Enforcement, MAX_CPU_MILLIS, MAX_MEMORY_MIB, MAX_NAMED_AMOUNT, check_amount,
    detect_cpu_millis, detect_memory_mib, max_amount,
};
pub use locator::{BrokerLocator, LocateFuture, StaticBroker};
pub use process::{
    DEFAULT_CANCEL_GRACE_MS, DEFAULT_MAX_STDOUT_BYTES, DEFAULT_STDERR_TAIL_BYTES,
    DEFAULT_TIMEOUT_MS, ProcessConfigError, ProcessExecutor, ProcessExecutorConfig,
    RETRY_LATER_EXIT_CODE, process_executors,
};
pub use status::{StatusHandle, WorkerStatus};

/// Why the worker agent stopped with an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerError {
    /// A setting is wrong; fix the configuration. Not retryable.
    #[error("invalid worker config: {0}")]
    InvalidConfig(String),
    /// The broker refused this worker for good (wrong secret, unsupported protocol version,
    /// invalid identity). Fix the configuration; retrying as is fails again.
    #[error("rejected by the broker: {reason}")]
    Rejected {
        /// The broker's reason.
        reason: String,
    },
    /// The broker kept refusing this worker, for a reason that may pass, for longer than
    /// `max_refused_time`: another live process is connected under the same worker id. Give
    /// each worker process its own worker id, or stop the other process.
    #[error("refused by the broker for {}s: {reason}", .waited.as_secs())]
    StillRefused {
        /// The broker's last reason.
        reason: String,
        /// How long the refusals lasted.
        waited: std::time::Duration,
    },
    /// The broker could not prove it knows the shared secret: a wrong address or a secret that
    /// differs between broker and worker. Not retryable as is.
    #[error("broker {broker_id} failed to prove the shared secret")]
    BrokerAuthenticationFailed {
        /// The name the broker gave.
        broker_id: String,
    },
    /// The broker told this worker to exit; running tasks were aborted. Restart the worker if
    /// the cause is gone.
    #[error("killed by the broker: {reason}")]
    Killed {
        /// The broker's reason.
        reason: String,
    },
    /// A graceful stop ended before the broker acknowledged every finish report; the broker
    /// will treat those tasks as lost with the worker and retry them by its rules.
    #[error("{count} finish reports were not acknowledged before stopping")]
    ReportsLost {
        /// Reports not acknowledged.
        count: usize,
    },
}
