//! The client HTTP API's JSON, compatible with the original Majordodo's `/majordodo` endpoint.
//!
//! - [`request`]: parsing and validating `POST` bodies (`submitTask`, `submitTasks`): every
//!   problem is a [`FieldError`] naming the field, numbers are accepted as JSON numbers and as
//!   strings of digits, and every number is bounded (see the limits below).
//! - [`codepool`]: the code-pool actions (`createCodePool`, `deleteCodePool`) and views
//!   (`codePool`, `codePools`).
//! - [`view`]: parsing `GET` query strings (`?view=...` and the view's filters).
//! - [`response`]: the JSON answers (submissions, views, errors), shaped as the original's so
//!   its Java client works unchanged, deserializable leniently (numbers or strings) by clients.
//!
//! The broker's router lives in `majordodo-broker`; the typed client in `majordodo-client`.

pub mod codepool;
mod json;
pub(crate) mod lenient;
pub mod request;
pub mod response;
pub mod view;

#[cfg(test)]
mod tests;

pub use json::{MAX_JSON_DEPTH, MAX_JSON_VALUES};
pub use request::{ActionRequest, TaskSubmission, parse_action};
pub use response::{
    BrokerStatusInfo, ClusterBroker, ClusterLedger, ClusterStatus, ErrorBody, LeaderHint,
    OverviewView, StatusView, SubmitResult, SubmitTaskResponse, SubmitTasksResponse, TaskInfo,
    TaskView, TasksOverviewView, TasksView, WorkerInfo, WorkersView,
};
pub use response::{
    CancelTaskResponse, DelayedQueueList, DelayedQueueView, DelayedTaskInfo, SlotsList, SlotsView,
    TransactionInfo, TransactionResponse, TransactionsList, TransactionsView,
};
pub use view::{StatusFilter, TasksOverviewQuery, TasksQuery, ViewRequest, parse_view};

/// The path of the API, as in the original (`http://host:port/majordodo`).
pub const API_PATH: &str = "/majordodo";

/// Version of this JSON API. Sent in the [`API_VERSION_HEADER`] response header so that clients
/// can tell a broker of this implementation (and which revision of the API) from the original.
pub const API_VERSION: u32 = 1;

/// Response header carrying [`API_VERSION`].
pub const API_VERSION_HEADER: &str = "majordodo-api-version";

/// Path, under the API's, where the leader serves a snapshot it takes on request (admin only):
/// how brokers boot without a usable local snapshot, and how an operator takes a backup.
pub const SNAPSHOT_SUBPATH: &str = "/snapshot";

/// Response header naming the log position a downloaded snapshot covers.
pub const SNAPSHOT_LSN_HEADER: &str = "majordodo-snapshot-lsn";

/// Highest accepted `maxattempts` (and `attempt`). The original accepted any `int`; a retry
/// budget above a thousand executions is a mistake in practice (a task that must be retried
/// forever uses 0 = unlimited), so larger values are refused as absurd.
pub const MAX_ATTEMPTS_LIMIT: u32 = 1_000;

/// Highest accepted timestamp (`requestedStartTime`, `deadline`): 9999-12-31T23:59:59.999Z in
/// milliseconds since the epoch. Anything later is certainly a unit error (micro- or
/// nanoseconds), and refusing it keeps every timestamp printable as a calendar date.
pub const MAX_TIMESTAMP: i64 = 253_402_300_799_999;

/// Highest accepted task id (in `taskId`, `fromTaskId`): ids are Java `long`s in the original.
pub const MAX_TASK_ID: u64 = i64::MAX as u64;

/// Longest accepted name field (`tasktype`, `userid`, `slot`, `codePoolId`, `mode`, and every
/// view filter), in bytes. Names are interned and indexed by the broker; 1 KiB is far above any
/// real name and keeps indexes and logs small. Payloads (`data`) are bounded by the body limit and
/// the log's record limit instead.
pub const MAX_NAME_BYTES: usize = 1_024;

/// Longest accepted `idempotencyKey`, in bytes (the log reserves room for it in every task's
/// record).
pub use crate::record::MAX_IDEMPOTENCY_KEY_BYTES;

/// Most tasks in one `submitTasks` request. One request becomes one batch in the broker's log;
/// ten thousand tasks keep that batch (and the answer) a few megabytes at most.
pub const MAX_BATCH_TASKS: usize = 10_000;

/// Largest task priority accepted, and its opposite the smallest: plenty of levels for any
/// scheme, far from the integer limits.
pub const MAX_PRIORITY: i64 = 1_000_000;

/// Default `max` of the `tasks` view, as in the original.
pub const DEFAULT_TASKS_MAX: u32 = 100;

/// Name of the file, in a standalone broker's data directory, holding the bearer token of its
/// administrator (one line, mode 0600). Clients on the same host read it to authenticate.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Name given to the whole body in a [`FieldError`] about the body itself (not JSON, not UTF-8,
/// not an object, too large).
pub const BODY_FIELD: &str = "body";

/// A problem with one field of a request: the 4xx answer names `field` and says `problem`.
///
/// Not retryable: the request must be corrected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// The field, as a path into the request (`maxattempts`, `tasks[3].userid`, `view`), or
    /// [`BODY_FIELD`] for the body as a whole.
    pub field: String,
    /// What is wrong, lowercase, without a trailing period.
    pub problem: String,
}

impl FieldError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}
