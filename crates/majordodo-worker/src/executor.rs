//! What runs a task: the [`TaskExecutor`] trait and the [`Executors`] registry by task type.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use majordodo_proto::worker::Assignment;

/// One task attempt, as given to an executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// The task.
    pub task_id: u64,
    /// Which attempt this is, starting at 1.
    pub attempt: u32,
    /// The task type, which chose the executor.
    pub task_type: String,
    /// The task's owner.
    pub user_id: String,
    /// The payload.
    pub data: String,
    /// The code pool that provides the executor, if any.
    pub codepool: Option<String>,
    /// The execution mode, if not the default.
    pub mode: Option<String>,
    /// Resources the task holds while it runs (shared by the tasks that hold the same ones).
    pub resources: std::sync::Arc<[String]>,
    /// What the task declared it needs: `cpu` (millicores), `memory` (MiB), named amounts;
    /// empty when it declared nothing (shared by the tasks that declare the same). The
    /// `process` executor enforces cpu and memory.
    pub needs: std::sync::Arc<std::collections::BTreeMap<String, u64>>,
    /// Where the task's code pool is unpacked (set by the agent before the executor runs).
    pub codepool_dir: Option<std::path::PathBuf>,
    /// Fires when the broker cancels this attempt: stop soon (the worker drops the future
    /// after its `cancel_grace`).
    pub cancel: CancelSignal,
}

/// Tells an executor that its attempt was cancelled. Clones share the signal; all compare
/// equal (it is not part of a task's identity).
#[derive(Clone, Debug, Default)]
pub struct CancelSignal(tokio_util::sync::CancellationToken);

impl CancelSignal {
    /// A signal not fired yet.
    pub fn new() -> Self {
        CancelSignal::default()
    }

    /// Fires the signal.
    pub fn cancel(&self) {
        self.0.cancel();
    }

    /// Whether it fired.
    pub fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Completes once the signal fired.
    pub async fn cancelled(&self) {
        self.0.cancelled().await;
    }
}

impl PartialEq for CancelSignal {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for CancelSignal {}

impl From<Assignment> for Task {
    fn from(a: Assignment) -> Self {
        Task {
            task_id: a.task_id,
            attempt: a.attempt,
            task_type: a.task_type,
            user_id: a.user_id,
            data: a.data,
            codepool: a.codepool,
            mode: a.mode,
            resources: a.resources.into(),
            needs: std::sync::Arc::new(a.needs),
            codepool_dir: None,
            cancel: CancelSignal::new(),
        }
    }
}

/// A task attempt failed; the broker may retry the task, depending on its `maxattempts`.
/// The message becomes the task's result text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TaskFailure {
    message: String,
    retry_after: Option<std::time::Duration>,
}

impl TaskFailure {
    /// A failure described by `message`.
    pub fn new(message: impl Into<String>) -> Self {
        TaskFailure {
            message: message.into(),
            retry_after: None,
        }
    }

    /// Not a failure but "retry later": the task runs again after `delay`, and this attempt
    /// does not count against its `maxattempts` (the broker allows this a bounded number of
    /// times per task, `tasks.max_deferrals`; beyond, it counts as a failure).
    pub fn retry_after(delay: std::time::Duration, message: impl Into<String>) -> Self {
        TaskFailure {
            message: message.into(),
            retry_after: Some(delay),
        }
    }

    /// The delay asked for by [`TaskFailure::retry_after`].
    pub fn retry_delay(&self) -> Option<std::time::Duration> {
        self.retry_after
    }

    /// The description.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Runs tasks of some types. The future runs on its own tokio task; dropping it (worker
/// killed, shutdown grace over) must stop the work, as dropping a `tokio::process::Child`
/// with `kill_on_drop` does.
pub trait TaskExecutor: Send + Sync + 'static {
    /// Runs `task`: `Ok(result)` finishes the task with that result, `Err` fails the attempt.
    fn execute(&self, task: Task) -> BoxFuture<'static, Result<String, TaskFailure>>;
}

/// Wraps an async closure as a [`TaskExecutor`].
pub fn executor_fn<F, Fut>(f: F) -> Arc<dyn TaskExecutor>
where
    F: Fn(Task) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, TaskFailure>> + Send + 'static,
{
    Arc::new(FnExecutor(f))
}

struct FnExecutor<F>(F);

impl<F, Fut> TaskExecutor for FnExecutor<F>
where
    F: Fn(Task) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, TaskFailure>> + Send + 'static,
{
    fn execute(&self, task: Task) -> BoxFuture<'static, Result<String, TaskFailure>> {
        Box::pin((self.0)(task))
    }
}

/// Executors by task type, with an optional fallback for the types without their own.
#[derive(Clone, Default)]
pub struct Executors {
    /// The executor of each type.
    by_type: HashMap<String, Arc<dyn TaskExecutor>>,
    /// The executor of every other type; without it those tasks fail.
    fallback: Option<Arc<dyn TaskExecutor>>,
}

impl Executors {
    /// An empty registry: every task fails with "no executor".
    pub fn new() -> Self {
        Executors::default()
    }

    /// Registers `executor` for `task_type`, replacing any previous one.
    pub fn register(&mut self, task_type: impl Into<String>, executor: Arc<dyn TaskExecutor>) {
        self.by_type.insert(task_type.into(), executor);
    }

    /// [`Executors::register`], by value.
    pub fn with(mut self, task_type: impl Into<String>, executor: Arc<dyn TaskExecutor>) -> Self {
        self.register(task_type, executor);
        self
    }

    /// Sets the executor of the types without their own.
    pub fn with_fallback(mut self, executor: Arc<dyn TaskExecutor>) -> Self {
        self.fallback = Some(executor);
        self
    }

    /// The executor for `task_type`, if any.
    pub fn get(&self, task_type: &str) -> Option<&Arc<dyn TaskExecutor>> {
        self.by_type.get(task_type).or(self.fallback.as_ref())
    }
}

impl fmt::Debug for Executors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut types: Vec<_> = self.by_type.keys().collect();
        types.sort();
        f.debug_struct("Executors")
            .field("types", &types)
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}
