//! The JSON answers of the API, with the original's field names and shapes.
//!
//! Every type serializes as the broker sends it and deserializes leniently (numbers given as
//! strings, `"ok":"true"`), so a client can read this broker and the original alike.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::lenient;

/// Answer to `submitTask`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitTaskResponse {
    /// Echo of the action (`submitTask`).
    #[serde(default)]
    pub action: String,
    /// The new task's id; 0 when no task was created (see `result`).
    #[serde(rename = "taskId", deserialize_with = "lenient::u64")]
    pub task_id: u64,
    /// Why no task was created (`slot x already assigned`), else null.
    #[serde(default)]
    pub result: Option<String>,
    /// The same as `result`: the original's Java client reads this name.
    #[serde(default)]
    pub outcome: Option<String>,
    /// Empty when `ok`.
    #[serde(default, deserialize_with = "lenient::string_or_null")]
    pub error: String,
    /// Whether the request was carried out (a task not created because of its slot is still ok).
    #[serde(deserialize_with = "lenient::bool")]
    pub ok: bool,
    /// Echo of the request's `transaction`, when it named one.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_u64"
    )]
    pub transaction: Option<u64>,
}

/// One element of the answer to `submitTasks`, in request order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitResult {
    /// The new task's id; 0 when no task was created.
    #[serde(rename = "taskId", deserialize_with = "lenient::u64")]
    pub task_id: u64,
    /// Why no task was created, else null.
    #[serde(default)]
    pub result: Option<String>,
    /// The same as `result`, for the original's Java client.
    #[serde(default)]
    pub outcome: Option<String>,
    /// The task's transaction, when it named one.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_u64"
    )]
    pub transaction: Option<u64>,
}

/// Answer to `submitTasks`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitTasksResponse {
    /// Echo of the action (`submitTasks`).
    #[serde(default)]
    pub action: String,
    /// One result per submitted task, in request order.
    pub results: Vec<SubmitResult>,
    /// Empty when `ok`.
    #[serde(default, deserialize_with = "lenient::string_or_null")]
    pub error: String,
    /// Whether the batch was carried out.
    #[serde(deserialize_with = "lenient::bool")]
    pub ok: bool,
}

/// A task as views show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// Task id.
    #[serde(rename = "taskId", deserialize_with = "lenient::u64")]
    pub task_id: u64,
    /// Owner.
    #[serde(
        rename = "userId",
        default,
        deserialize_with = "lenient::string_or_null"
    )]
    pub user_id: String,
    /// Task type.
    #[serde(
        rename = "tasktype",
        default,
        deserialize_with = "lenient::string_or_null"
    )]
    pub task_type: String,
    /// `waiting`, `delayed`, `running`, `finished` or `error`.
    pub status: String,
    /// Payload.
    #[serde(default, deserialize_with = "lenient::string_or_null")]
    pub data: String,
    /// Result of the last execution, or why the task ended (`deadline_expired`, `worker x died`).
    #[serde(default)]
    pub result: Option<String>,
    /// Last worker the task was assigned to.
    #[serde(rename = "workerId", default)]
    pub worker_id: Option<String>,
    /// Mutual-exclusion key.
    #[serde(default)]
    pub slot: Option<String>,
    /// Executions so far.
    #[serde(deserialize_with = "lenient::u32")]
    pub attempts: u32,
    /// 0 = unlimited.
    #[serde(deserialize_with = "lenient::u32")]
    pub maxattempts: u32,
    /// Absolute deadline in ms since the epoch; 0 = none.
    #[serde(deserialize_with = "lenient::i64")]
    pub deadline: i64,
    /// Requested start in ms since the epoch; 0 = at submission.
    #[serde(rename = "requestedStartTime", deserialize_with = "lenient::i64")]
    pub requested_start_time: i64,
    /// Submission time in ms since the epoch.
    #[serde(rename = "createdTimestamp", deserialize_with = "lenient::i64")]
    pub created_timestamp: i64,
    /// Execution mode; absent means `factory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Code pool.
    #[serde(
        rename = "codePoolId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub codepool: Option<String>,
    /// Resources recorded at the last assignment, comma-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<String>,
}

/// A worker as views show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Worker id.
    pub id: String,
    /// Id of its current (or last) process.
    #[serde(
        rename = "processId",
        default,
        deserialize_with = "lenient::string_or_null"
    )]
    pub process_id: String,
    /// `CONNECTED`, `DISCONNECTED` or `DEAD`.
    pub status: String,
    /// Where it runs.
    #[serde(default, deserialize_with = "lenient::string_or_null")]
    pub location: String,
    /// When it last connected, ms since the epoch.
    #[serde(rename = "lastConnectionTs", deserialize_with = "lenient::i64")]
    pub last_connection_ts: i64,
    /// What a connected worker declared it has per dimension (`cpu` millicores, `memory` MiB,
    /// named amounts; an extension, leader only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub amounts: BTreeMap<String, u64>,
    /// How its `process` executor enforces cpu and memory, as it states it (an extension,
    /// leader only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub enforcement: String,
}

/// The broker status object embedded in most views (`"status": {...}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerStatusInfo {
    /// `LEADER`, `FOLLOWER`, `RECOVERY` or `CLOSED`.
    pub cluster_mode: String,
    /// Ledger of the log position (0 for logs without ledgers).
    #[serde(deserialize_with = "lenient::i64")]
    pub current_ledger_id: i64,
    /// Position of the last applied log entry.
    #[serde(deserialize_with = "lenient::i64")]
    pub current_sequence_number: i64,
    /// Tasks held (every status).
    #[serde(deserialize_with = "lenient::u64")]
    pub tasks: u64,
    /// Always 0, as in the original (which never maintained it).
    #[serde(deserialize_with = "lenient::u64")]
    pub pending_tasks: u64,
    /// Waiting tasks.
    #[serde(deserialize_with = "lenient::u64")]
    pub waiting_tasks: u64,
    /// Delayed tasks.
    #[serde(deserialize_with = "lenient::u64")]
    pub delayed_tasks: u64,
    /// Running tasks.
    #[serde(deserialize_with = "lenient::u64")]
    pub running_tasks: u64,
    /// Tasks ended in error.
    #[serde(deserialize_with = "lenient::u64")]
    pub error_tasks: u64,
    /// Tasks finished.
    #[serde(deserialize_with = "lenient::u64")]
    pub finished_tasks: u64,
}

/// The `status` view: flat, with lowercase count names (as the original, plus `delayedtasks`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    /// Always true on success.
    #[serde(deserialize_with = "lenient::bool")]
    pub ok: bool,
    /// The cluster mode (`LEADER`, ...).
    pub status: String,
    /// As in [`BrokerStatusInfo`], as a string (the original's shape).
    #[serde(rename = "currentLedgerId", deserialize_with = "string_of_int")]
    pub current_ledger_id: String,
    /// As in [`BrokerStatusInfo`], as a string (the original's shape).
    #[serde(rename = "currentSequenceNumber", deserialize_with = "string_of_int")]
    pub current_sequence_number: String,
    /// Broker version.
    #[serde(default, deserialize_with = "lenient::string_or_null")]
    pub version: String,
    /// Tasks held.
    #[serde(deserialize_with = "lenient::u64")]
    pub tasks: u64,
    /// Always 0.
    #[serde(deserialize_with = "lenient::u64")]
    pub pendingtasks: u64,
    /// Running tasks.
    #[serde(deserialize_with = "lenient::u64")]
    pub runningtasks: u64,
    /// Tasks in error.
    #[serde(deserialize_with = "lenient::u64")]
    pub errortasks: u64,
    /// Waiting tasks.
    #[serde(deserialize_with = "lenient::u64")]
    pub waitingtasks: u64,
    /// Finished tasks.
    #[serde(deserialize_with = "lenient::u64")]
    pub finishedtasks: u64,
    /// Delayed tasks (missing in the original's answer).
    #[serde(default, deserialize_with = "lenient::u64")]
    pub delayedtasks: u64,
    /// In a replicated cluster: the leader and every live broker with its position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
    /// Tenants (users and groups) with a quota (an extension).
    #[serde(default)]
    pub quotas: u64,
    /// Of those, how many have reached their quota in some dimension: no new task needing it
    /// starts until running ones end (an extension).
    #[serde(default, rename = "tenantsAtQuota")]
    pub tenants_at_quota: u64,
}

/// What a broker of a replicated cluster knows of it (in the `status` view).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The leader's broker id, when known.
    #[serde(default, rename = "leaderId")]
    pub leader_id: Option<String>,
    /// Every live broker, as it last published itself.
    #[serde(default)]
    pub brokers: Vec<ClusterBroker>,
    /// The ledgers holding the log, oldest first; the last one is being written.
    #[serde(default)]
    pub ledgers: Vec<ClusterLedger>,
}

/// One ledger of a cluster's log, as the ledger list in ZooKeeper names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterLedger {
    /// Its BookKeeper ledger id.
    #[serde(rename = "ledgerId")]
    pub ledger_id: i64,
    /// When it was created, in ms since the epoch.
    #[serde(default, rename = "createdAt")]
    pub created_at: i64,
    /// The log position of its first record.
    #[serde(default, rename = "firstLsn")]
    pub first_lsn: u64,
}

/// One live broker of a cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterBroker {
    /// Its id.
    #[serde(rename = "brokerId")]
    pub broker_id: String,
    /// Its HTTP API.
    #[serde(default, rename = "apiUrl")]
    pub api_url: String,
    /// Whether it leads.
    #[serde(default)]
    pub leader: bool,
    /// The last log position it applied (published about once a second).
    #[serde(default, rename = "appliedLsn")]
    pub applied_lsn: Option<u64>,
    /// Positions it is behind the leader, as published.
    #[serde(default)]
    pub lag: Option<u64>,
}

/// The `overview` view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverviewView {
    /// Always true on success.
    #[serde(deserialize_with = "lenient::bool")]
    pub ok: bool,
    /// Known workers.
    pub workers: Vec<WorkerInfo>,
    /// Broker status.
    pub status: BrokerStatusInfo,
}

/// The `workers` view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkersView {
    /// Always true on success.
    #[serde(deserialize_with = "lenient::bool")]
    pub ok: bool,
    /// Known workers, by id.
    pub workers: Vec<WorkerInfo>,
    /// Broker status.
    pub status: BrokerStatusInfo,
}

/// The `task` view. An unknown task (or one the caller may not see) is `"task": {}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    /// Always true on success.
    #[serde(deserialize_with = "lenient::bool")]
    pub ok: bool,
    /// The task, or `{}`.
    #[serde(serialize_with = "task_or_empty", deserialize_with = "task_or_none")]
    pub task: Option<TaskInfo>,
    /// Broker status.
    pub status: BrokerStatusInfo,
}

/// The `tasks` view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TasksView {
    /// Always true on success.
    #[serde(deserialize_with = "lenient::bool")]
    pub ok: bool,
    /// The tasks found.
    pub tasks: Vec<TaskInfo>,
    /// Number of tasks in `tasks`.
    #[serde(deserialize_with = "lenient::u64")]
    pub count: u64,
    /// The `max` applied (the requested one, lowered to the broker's cap).
    #[serde(deserialize_with = "lenient::u32")]
    pub max: u32,
    /// Candidates examined (an extension).
    #[serde(default, deserialize_with = "lenient::u64")]
    pub scanned: u64,
    /// True when the broker's scan or answer budget stopped the search before `max` tasks were
    /// found and before every candidate was examined: narrow the filters or page with
    /// `fromTaskId` (an extension).
    #[serde(default, deserialize_with = "lenient::bool")]
    pub truncated: bool,
    /// When the listing was in id order and stopped early: the `fromTaskId` that continues it
    /// (an extension).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_u64"
    )]
    pub next_task_id: Option<u64>,
    /// Broker status.
    pub status: BrokerStatusInfo,
}

/// The `tasksoverview` view: counts by task type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TasksOverviewView {
    /// Always true on success.
    #[serde(deserialize_with = "lenient::bool")]
    pub ok: bool,
    /// Task type → number of tasks.
    pub tasks: BTreeMap<String, u64>,
    /// Sum of the counts.
    #[serde(deserialize_with = "lenient::u64")]
    pub count: u64,
    /// Candidates examined (an extension).
    #[serde(default, deserialize_with = "lenient::u64")]
    pub scanned: u64,
    /// True when the scan budget stopped the count early: the counts are partial (an
    /// extension).
    #[serde(default, deserialize_with = "lenient::bool")]
    pub truncated: bool,
    /// Broker status.
    pub status: BrokerStatusInfo,
}

/// Every error answer: `{"ok":false,"error":"<problem>","field":"<name>"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Always false.
    #[serde(deserialize_with = "lenient::bool")]
    pub ok: bool,
    /// What went wrong. For retryable broker conditions it starts with the original's words
    /// (`broker_not_leader`, `recovery_in_progress`, `broker_not_started`).
    #[serde(default, deserialize_with = "lenient::string_or_null")]
    pub error: String,
    /// The request field at fault, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// True when the same request may succeed later (the broker is unavailable, not the request
    /// wrong).
    #[serde(
        default,
        skip_serializing_if = "std::ops::Not::not",
        deserialize_with = "lenient::bool"
    )]
    pub retryable: bool,
    /// With `broker_not_leader`: the leader's API URL, when this broker knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

/// The `leader` field a broker may add to a `broker_not_leader` error: the HTTP API URL of the
/// broker it knows as leader, where a client should send the request instead. Read apart from
/// [`ErrorBody`] so that any error body, with or without it, can be read for it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderHint {
    /// The leader's API URL, when the broker knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

impl LeaderHint {
    /// The leader URL of an error body, if it has a string `leader` field.
    pub fn of_body(body: &[u8]) -> Option<String> {
        serde_json::from_slice::<LeaderHint>(body)
            .ok()
            .and_then(|h| h.leader)
            .filter(|url| !url.is_empty())
    }
}

fn task_or_empty<S: Serializer>(task: &Option<TaskInfo>, s: S) -> Result<S::Ok, S::Error> {
    match task {
        Some(t) => t.serialize(s),
        None => serde_json::Map::new().serialize(s),
    }
}

fn task_or_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TaskInfo>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    match &v {
        serde_json::Value::Object(m) if m.get("taskId").is_some_and(|id| !id.is_null()) => {
            TaskInfo::deserialize(v)
                .map(Some)
                .map_err(serde::de::Error::custom)
        }
        serde_json::Value::Object(_) | serde_json::Value::Null => Ok(None),
        _ => Err(serde::de::Error::custom("task must be an object")),
    }
}

fn string_of_int<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    lenient::i64(d).map(|v| v.to_string())
}

/// Answer to `beginTransaction`, `commitTransaction` and `rollbackTransaction`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionResponse {
    /// Echo of the action.
    #[serde(default)]
    pub action: String,
    /// The transaction: the new one's id for `beginTransaction`, else the one named.
    #[serde(deserialize_with = "lenient::u64")]
    pub transaction: u64,
    /// Empty when `ok`.
    #[serde(default, deserialize_with = "lenient::string_or_null")]
    pub error: String,
    /// Whether the action was carried out.
    #[serde(deserialize_with = "lenient::bool")]
    pub ok: bool,
}

/// Answer to `cancelTask`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelTaskResponse {
    /// Echo of the action (`cancelTask`).
    #[serde(default)]
    pub action: String,
    /// The cancelled task.
    #[serde(rename = "taskId", deserialize_with = "lenient::u64")]
    pub task_id: u64,
    /// What it was doing when cancelled: `waiting`, `delayed` or `running` (a running task is
    /// being stopped on its worker).
    #[serde(rename = "previousStatus", default)]
    pub previous_status: String,
    /// Empty when `ok`.
    #[serde(default, deserialize_with = "lenient::string_or_null")]
    pub error: String,
    /// Whether the task was cancelled.
    #[serde(deserialize_with = "lenient::bool")]
    pub ok: bool,
}

/// One open transaction in the `transactions` view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransactionInfo {
    /// Its id.
    #[serde(deserialize_with = "lenient::u64")]
    pub transaction_id: u64,
    /// When it was begun, ms since the epoch.
    #[serde(deserialize_with = "lenient::i64")]
    pub creation_timestamp: i64,
    /// How many tasks are prepared in it.
    #[serde(deserialize_with = "lenient::u64")]
    pub prepared_tasks: u64,
    /// The distinct task types of its prepared tasks, sorted.
    #[serde(default)]
    pub task_types: Vec<String>,
    /// The user who began it (an extension; absent for transactions of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// The `transactions` payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionsList {
    /// Open transactions, oldest id first.
    pub transactions: Vec<TransactionInfo>,
    /// True when `max` or the answer budget stopped the listing (an extension).
    #[serde(default, deserialize_with = "lenient::bool")]
    pub truncated: bool,
}

/// The `transactions` view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionsView {
    /// Always true on success.
    #[serde(deserialize_with = "lenient::bool")]
    pub ok: bool,
    /// The open transactions.
    pub transactions: TransactionsList,
    /// Broker status.
    pub status: BrokerStatusInfo,
}

/// The `slots` payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlotsList {
    /// Busy slot → the task holding it (waiting, delayed, running or prepared in a
    /// transaction).
    pub busy_slots: BTreeMap<String, u64>,
    /// True when `max` or the answer budget stopped the listing (an extension).
    #[serde(default, deserialize_with = "lenient::bool")]
    pub truncated: bool,
}

/// The `slots` view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotsView {
    /// Always true on success.
    #[serde(deserialize_with = "lenient::bool")]
    pub ok: bool,
    /// The busy slots.
    pub slots: SlotsList,
    /// Broker status.
    pub status: BrokerStatusInfo,
}

/// One delayed task in the `delayedqueue` view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DelayedTaskInfo {
    /// The task.
    #[serde(deserialize_with = "lenient::u64")]
    pub task_id: u64,
    /// Milliseconds until it may run (0 when due).
    #[serde(deserialize_with = "lenient::i64")]
    pub delay: i64,
    /// When it may run, ms since the epoch (an extension).
    #[serde(default, deserialize_with = "lenient::i64")]
    pub requested_start_time: i64,
}

/// The `delayedqueue` payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelayedQueueList {
    /// Delayed tasks, soonest first.
    pub tasks: Vec<DelayedTaskInfo>,
    /// True when `max` or the answer budget stopped the listing (an extension).
    #[serde(default, deserialize_with = "lenient::bool")]
    pub truncated: bool,
}

/// The `delayedqueue` view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelayedQueueView {
    /// Always true on success.
    #[serde(deserialize_with = "lenient::bool")]
    pub ok: bool,
    /// The delayed tasks.
    pub delayedqueue: DelayedQueueList,
    /// Broker status.
    pub status: BrokerStatusInfo,
}
