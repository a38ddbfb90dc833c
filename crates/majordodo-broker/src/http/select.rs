//! The views' reads of the broker state: bounded, and answered from an index when the filters
//! allow it.
//!
//! These functions run inside the dispatcher (through [`crate::BrokerHandle::query`]), so each
//! one examines at most `scan_budget` candidates and copies at most `max` tasks (and
//! `max_response_bytes` of them) out of the state. Where candidates come from:
//!
//! | `status` filter | source | order of the answer |
//! |---|---|---|
//! | none / `all` | every task, from `fromTaskId` | task id |
//! | `waiting` | the waiting queues (task type checked without reading the task) | group, type, age |
//! | `delayed` | the delayed index | requested start time |
//! | `running` | the running sets of the matching workers | worker, then task id |
//! | `finished`, `error` | the ended index | creation time |

use std::collections::BTreeMap;
use std::sync::Arc;

use majordodo_core::quota::{QuotaTenant, Usage};
use majordodo_core::{BrokerState, Task, TaskId, TaskStatus};
use majordodo_proto::http::{
    BrokerStatusInfo, DelayedQueueList, DelayedTaskInfo, SlotsList, StatusFilter, TaskInfo,
    TasksOverviewQuery, TasksQuery, TransactionInfo, TransactionsList, WorkerInfo,
};

use crate::View;

/// Bounds of one listing.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Budget {
    /// Most tasks answered.
    pub(crate) max: usize,
    /// Most candidates examined.
    pub(crate) scan: usize,
    /// Most bytes of task objects (estimated) answered.
    pub(crate) bytes: usize,
}

/// A bounded listing of tasks.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    pub(crate) tasks: Vec<TaskInfo>,
    pub(crate) scanned: u64,
    /// The scan or byte budget stopped the search early.
    pub(crate) truncated: bool,
    /// Where an id-ordered listing continues.
    pub(crate) next_task_id: Option<u64>,
}

/// Bytes of a task object beyond its variable fields (names, numbers, punctuation).
const TASK_OVERHEAD_BYTES: usize = 256;

/// Filters shared by `tasks` and `tasksoverview`.
struct Filter<'a> {
    status: StatusFilter,
    worker_id: Option<&'a str>,
    task_type: Option<&'a str>,
    slot: Option<&'a str>,
    user_id: Option<&'a str>,
    from: u64,
    /// The only owner the caller may see (non-admins), compared exactly.
    owner: Option<&'a str>,
}

impl<'a> Filter<'a> {
    /// The filter of a `tasks` query, seen by a caller restricted to `owner`'s tasks (if any).
    fn of(q: &'a TasksQuery, owner: Option<&'a str>) -> Filter<'a> {
        Filter {
            status: q.status,
            worker_id: q.worker_id.as_deref(),
            task_type: q.task_type.as_deref(),
            slot: q.slot.as_deref(),
            user_id: q.user_id.as_deref(),
            from: q.from_task_id.unwrap_or(0),
            owner,
        }
    }
}

impl Filter<'_> {
    fn accepts(&self, t: &Task) -> bool {
        self.owner.is_none_or(|o| *t.user_id == *o)
            && t.id.0 >= self.from
            && self.status.accepts(t.status)
            && self
                .worker_id
                .is_none_or(|w| t.worker_id.as_deref().is_some_and(|x| eq_ci(x, w)))
            && self.task_type.is_none_or(|ty| eq_ci(&t.task_type, ty))
            && self
                .slot
                .is_none_or(|s| t.slot().is_some_and(|x| eq_ci(x, s)))
            && self.user_id.is_none_or(|u| eq_ci(&t.user_id, u))
    }
}

/// Case-insensitive equality, as the original's `equalsIgnoreCase`.
fn eq_ci(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
        || (!(a.is_ascii() && b.is_ascii()) && a.to_lowercase() == b.to_lowercase())
}

/// Candidate tasks for a filter, from the cheapest source, and whether they come in id order.
fn candidates<'s>(
    state: &'s BrokerState,
    f: &Filter<'_>,
) -> (Box<dyn Iterator<Item = Option<&'s Task>> + 's>, bool) {
    let lookup = move |id: TaskId| state.task(id);
    match f.status {
        StatusFilter::All => (Box::new(state.tasks_from(TaskId(f.from)).map(Some)), true),
        StatusFilter::Only(TaskStatus::Waiting) => {
            let ty = f.task_type.map(str::to_owned);
            (
                Box::new(state.waiting_index().iter().map(move |(id, _, _, t)| {
                    // The queue knows the type: skip other types without reading the task.
                    match &ty {
                        Some(ty) if !eq_ci(t, ty) => None,
                        _ => lookup(id),
                    }
                })),
                false,
            )
        }
        StatusFilter::Only(TaskStatus::Delayed) => (
            Box::new(state.delayed().map(move |(_, id)| lookup(id))),
            false,
        ),
        StatusFilter::Only(TaskStatus::Running) => {
            let worker = f.worker_id.map(str::to_owned);
            let mut sets: Vec<(&str, Vec<TaskId>)> = state
                .running()
                .filter(|(w, _)| worker.as_deref().is_none_or(|x| eq_ci(w, x)))
                .map(|(w, set)| {
                    let mut ids: Vec<TaskId> = set.iter().collect();
                    ids.sort_unstable();
                    (w, ids)
                })
                .collect();
            sets.sort_unstable_by(|a, b| a.0.cmp(b.0));
            (
                Box::new(sets.into_iter().flat_map(|(_, ids)| ids).map(lookup)),
                false,
            )
        }
        StatusFilter::Only(TaskStatus::Finished | TaskStatus::Error) => (
            Box::new(state.ended().map(move |(_, id)| lookup(id))),
            false,
        ),
    }
}

/// The `tasks` view's listing.
pub(crate) fn list_tasks(
    state: &BrokerState,
    q: &TasksQuery,
    owner: Option<&str>,
    budget: Budget,
) -> Listing {
    page_tasks(state, q, owner, budget, 0)
}

/// A listing that leaves out the first `skip` matching tasks (the dashboard's pages of listings
/// not in id order); the skipped candidates count against the scan budget like the others.
pub(crate) fn page_tasks(
    state: &BrokerState,
    q: &TasksQuery,
    owner: Option<&str>,
    budget: Budget,
    mut skip: usize,
) -> Listing {
    let f = Filter::of(q, owner);
    let (source, id_ordered) = candidates(state, &f);
    let mut out = Listing::default();
    let mut bytes = 0usize;
    for candidate in source {
        if out.scanned as usize >= budget.scan {
            out.truncated = true;
            if id_ordered {
                out.next_task_id = candidate.map(|t| t.id.0);
            }
            break;
        }
        out.scanned += 1;
        let Some(task) = candidate.filter(|t| f.accepts(t)) else {
            continue;
        };
        if skip > 0 {
            skip -= 1;
            continue;
        }
        let size = estimated_size(task);
        let over_bytes = !out.tasks.is_empty() && bytes + size > budget.bytes;
        if out.tasks.len() >= budget.max || over_bytes {
            out.truncated = over_bytes;
            if id_ordered {
                out.next_task_id = Some(task.id.0);
            }
            break;
        }
        bytes += size;
        out.tasks.push(task_info(task));
    }
    out
}

/// The `tasksoverview` view's counts by task type: (counts, scanned, truncated).
pub(crate) fn count_by_type(
    state: &BrokerState,
    q: &TasksOverviewQuery,
    owner: Option<&str>,
    scan_budget: usize,
) -> (BTreeMap<String, u64>, u64, bool) {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut scanned = 0u64;
    // Waiting tasks of every worker and owner are counted from the queues alone.
    if q.status == StatusFilter::Only(TaskStatus::Waiting)
        && q.worker_id.is_none()
        && owner.is_none()
    {
        let mut by_type: BTreeMap<Arc<str>, u64> = BTreeMap::new();
        for (_, _, _, t) in state.waiting_index().iter() {
            if scanned as usize >= scan_budget {
                return (into_counts(by_type), scanned, true);
            }
            scanned += 1;
            if q.task_type.as_deref().is_none_or(|ty| eq_ci(t, ty)) {
                *by_type.entry(t.clone()).or_default() += 1;
            }
        }
        return (into_counts(by_type), scanned, false);
    }
    let f = Filter {
        status: q.status,
        worker_id: q.worker_id.as_deref(),
        task_type: q.task_type.as_deref(),
        slot: None,
        user_id: None,
        from: 0,
        owner,
    };
    let (source, _) = candidates(state, &f);
    for candidate in source {
        if scanned as usize >= scan_budget {
            return (counts, scanned, true);
        }
        scanned += 1;
        if let Some(task) = candidate.filter(|t| f.accepts(t)) {
            match counts.get_mut(&*task.task_type) {
                Some(n) => *n += 1,
                None => {
                    counts.insert(task.task_type.to_string(), 1);
                }
            }
        }
    }
    (counts, scanned, false)
}

fn into_counts(by_type: BTreeMap<Arc<str>, u64>) -> BTreeMap<String, u64> {
    by_type
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

fn estimated_size(t: &Task) -> usize {
    TASK_OVERHEAD_BYTES
        + t.data.len()
        + t.result.as_deref().map_or(0, str::len)
        + t.task_type.len()
        + t.user_id.len()
        + t.slot().map_or(0, str::len)
}

/// A task as views show it.
pub(crate) fn task_info(t: &Task) -> TaskInfo {
    let resources = t.resources();
    TaskInfo {
        task_id: t.id.0,
        user_id: t.user_id.to_string(),
        task_type: t.task_type.to_string(),
        status: t.status.as_str().to_owned(),
        data: t.data.to_string(),
        result: t.result.as_deref().map(str::to_owned),
        worker_id: t.worker_id.as_deref().map(str::to_owned),
        slot: t.slot().map(str::to_owned),
        attempts: t.attempts,
        maxattempts: t.max_attempts,
        deadline: t.deadline,
        requested_start_time: t.requested_start_time,
        created_timestamp: t.created,
        mode: t.mode().map(str::to_owned),
        codepool: t.codepool().map(str::to_owned),
        resources: (!resources.is_empty()).then(|| resources.join(",")),
    }
}

/// The broker status object.
pub(crate) fn status_info(v: &View<'_>) -> BrokerStatusInfo {
    let s = v.state;
    BrokerStatusInfo {
        cluster_mode: v.role.as_str().to_owned(),
        // The newest listed ledger in a cluster; a file log has none.
        current_ledger_id: v.cluster.and_then(|c| c.current_ledger).unwrap_or(0),
        current_sequence_number: i64::try_from(s.last_lsn()).unwrap_or(i64::MAX),
        tasks: s.task_count() as u64,
        pending_tasks: 0,
        waiting_tasks: s.count(TaskStatus::Waiting),
        delayed_tasks: s.count(TaskStatus::Delayed),
        running_tasks: s.count(TaskStatus::Running),
        error_tasks: s.count(TaskStatus::Error),
        finished_tasks: s.count(TaskStatus::Finished),
    }
}

/// The cluster as this broker knows it: each live broker's position and its lag behind the
/// leader's published position.
pub(crate) fn cluster_status(
    c: &crate::handle::ClusterView,
) -> majordodo_proto::http::ClusterStatus {
    let leader_lsn = c
        .brokers
        .iter()
        .find(|(id, _, _)| Some(id) == c.leader_id.as_ref())
        .and_then(|(_, _, lsn)| *lsn);
    majordodo_proto::http::ClusterStatus {
        leader_id: c.leader_id.clone(),
        brokers: c
            .brokers
            .iter()
            .map(|(id, url, lsn)| majordodo_proto::http::ClusterBroker {
                broker_id: id.clone(),
                api_url: url.clone(),
                leader: Some(id) == c.leader_id.as_ref(),
                applied_lsn: *lsn,
                lag: leader_lsn.zip(*lsn).map(|(l, f)| l.saturating_sub(f)),
            })
            .collect(),
        ledgers: c.ledgers.clone(),
    }
}

/// Every known worker, by id, at most `max`.
/// Bytes of one entry of the `transactions`, `slots` and `delayedqueue` views beyond its
/// strings (names, numbers, punctuation).
const ENTRY_OVERHEAD_BYTES: usize = 96;

/// The `transactions` view: open transactions in id order (only the caller's for a non-admin),
/// at most `budget.max` of them and about `budget.bytes`; their prepared tasks are counted, and
/// at most `budget.scan` of them are read for their types.
pub(crate) fn transactions(
    state: &BrokerState,
    owner: Option<&str>,
    budget: Budget,
) -> TransactionsList {
    let mut out = TransactionsList {
        transactions: Vec::new(),
        truncated: false,
    };
    let mut bytes = 0usize;
    let mut scanned = 0usize;
    for t in state.transactions() {
        if owner.is_some_and(|o| t.owner.as_deref() != Some(o)) {
            scanned += 1;
            if scanned >= budget.scan {
                out.truncated = true;
                break;
            }
            continue;
        }
        if out.transactions.len() >= budget.max || bytes > budget.bytes || scanned >= budget.scan {
            out.truncated = true;
            break;
        }
        let mut types = std::collections::BTreeSet::new();
        for task in &t.prepared {
            if scanned >= budget.scan {
                out.truncated = true;
                break;
            }
            scanned += 1;
            types.insert(task.task_type.as_str());
        }
        let task_types: Vec<String> = types.into_iter().map(str::to_owned).collect();
        bytes += ENTRY_OVERHEAD_BYTES
            + task_types.iter().map(String::len).sum::<usize>()
            + t.owner.as_ref().map_or(0, String::len);
        out.transactions.push(TransactionInfo {
            transaction_id: t.id.0,
            creation_timestamp: t.created,
            prepared_tasks: t.prepared.len() as u64,
            task_types,
            owner: t.owner.clone(),
        });
    }
    out
}

/// The `slots` view: busy slots and their holders (for a non-admin, only slots held by its
/// visible tasks), at most `budget.max`, examining at most `budget.scan` slots.
pub(crate) fn slots(state: &BrokerState, owner: Option<&str>, budget: Budget) -> SlotsList {
    let mut out = SlotsList {
        busy_slots: BTreeMap::new(),
        truncated: false,
    };
    let mut bytes = 0usize;
    for (scanned, (slot, holder)) in state.slots().enumerate() {
        if scanned >= budget.scan || out.busy_slots.len() >= budget.max || bytes > budget.bytes {
            out.truncated = true;
            break;
        }
        if let Some(o) = owner
            && state.task(holder).is_none_or(|t| *t.user_id != *o)
        {
            continue;
        }
        bytes += ENTRY_OVERHEAD_BYTES + slot.len();
        out.busy_slots.insert(slot.to_owned(), holder.0);
    }
    out
}

/// The `delayedqueue` view: delayed tasks, soonest first (for a non-admin only its own), with
/// the time left from `now`, at most `budget.max`, examining at most `budget.scan`.
pub(crate) fn delayed_queue(
    state: &BrokerState,
    owner: Option<&str>,
    now: majordodo_core::Millis,
    budget: Budget,
) -> DelayedQueueList {
    let mut out = DelayedQueueList {
        tasks: Vec::new(),
        truncated: false,
    };
    for (scanned, (start, id)) in state.delayed().enumerate() {
        if scanned >= budget.scan
            || out.tasks.len() >= budget.max
            || out.tasks.len() * ENTRY_OVERHEAD_BYTES > budget.bytes
        {
            out.truncated = true;
            break;
        }
        if let Some(o) = owner
            && state.task(id).is_none_or(|t| *t.user_id != *o)
        {
            continue;
        }
        out.tasks.push(DelayedTaskInfo {
            task_id: id.0,
            delay: (start - now).max(0),
            requested_start_time: start,
        });
    }
    out
}

/// The workers of the `workers` and `overview` views. Only with `reveal` (an admin asks) do
/// they show each worker's process id and location: to a plain user those would map the
/// cluster's hosts and processes, so they are left empty.
pub(crate) fn workers(v: &View<'_>, max: usize, reveal: bool) -> Vec<WorkerInfo> {
    v.state
        .workers()
        .take(max)
        .map(|w| {
            let capacity = v.leader_core.and_then(|l| l.worker_capacity(&w.id));
            WorkerInfo {
                id: w.id.to_string(),
                process_id: if reveal {
                    w.process_id.clone()
                } else {
                    String::new()
                },
                status: w.status.as_str().to_owned(),
                location: if reveal {
                    w.location.clone()
                } else {
                    String::new()
                },
                last_connection_ts: w.last_connection,
                amounts: capacity.map(|c| c.amounts.clone()).unwrap_or_default(),
                enforcement: capacity.map(|c| c.enforcement.clone()).unwrap_or_default(),
            }
        })
        .collect()
}

/// Most resources listed by the `resources` view (a cluster names a handful; bounds the answer
/// if service levels were ever abused).
const MAX_RESOURCES_LISTED: usize = 10_000;

/// The `resources` view: every named resource in use or limited, with the tasks using it and
/// the limit that binds (`actualLimit`, 0 = none): the global limit, or with `worker_id` that
/// worker's declared limit and its running tasks.
pub(crate) fn resources(v: &crate::View<'_>, worker_id: Option<&str>) -> serde_json::Value {
    let mut rows: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    match worker_id {
        None => {
            for (r, n) in v.state.resources_in_use() {
                rows.entry(r.to_string()).or_default().0 = *n;
            }
            if let Some(leader) = v.leader_core {
                for (r, limit) in &leader.config().global_resource_limits {
                    rows.entry(r.clone()).or_default().1 = *limit;
                }
            }
        }
        Some(w) => {
            if let Some(set) = v.state.running_on(w) {
                for (r, n) in set.resources() {
                    rows.entry(r.to_string()).or_default().0 = n;
                }
            }
            if let Some(cap) = v.leader_core.and_then(|l| l.worker_capacity(w)) {
                for (r, limit) in &cap.resource_limits {
                    rows.entry(r.clone()).or_default().1 = *limit;
                }
            }
        }
    }
    serde_json::Value::Array(
        rows.into_iter()
            .take(MAX_RESOURCES_LISTED)
            .map(|(id, (running, limit))| {
                serde_json::json!({"id": id, "runningTasks": running, "actualLimit": limit})
            })
            .collect(),
    )
}

/// Amounts per dimension as JSON (`{"cpu": 500, "tasks": 2}`).
fn amounts_json<'a>(amounts: impl IntoIterator<Item = (&'a str, u64)>) -> serde_json::Value {
    serde_json::Value::Object(
        amounts
            .into_iter()
            .map(|(d, n)| (d.to_owned(), serde_json::Value::from(n)))
            .collect(),
    )
}

/// A tenant's use as JSON, `tasks` included.
fn usage_json(usage: Option<&Usage>) -> serde_json::Value {
    match usage {
        Some(u) => amounts_json(
            std::iter::once((majordodo_core::quota::TASKS, u.tasks))
                .chain(u.amounts.iter().map(|(d, n)| (&**d, *n))),
        ),
        None => amounts_json([(majordodo_core::quota::TASKS, 0)]),
    }
}

/// Whether a tenant's use has reached its quota in some dimension (no new task needing that
/// dimension starts).
fn at_quota(usage: Option<&Usage>, quota: &[(std::sync::Arc<str>, u64)]) -> bool {
    quota
        .iter()
        .any(|(d, limit)| usage.map_or(0, |u| u.get(d)) >= *limit)
}

/// The amounts part of the `resources` view: per dimension, what running tasks need together
/// (`used`) against what the connected workers declare (`capacity`; leader only, 0 elsewhere):
/// the cluster's, or with `worker_id` that worker's.
pub(crate) fn amounts(v: &crate::View<'_>, worker_id: Option<&str>) -> serde_json::Value {
    let mut rows: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let sets: Vec<&majordodo_core::scheduler::RunningSet> = match worker_id {
        Some(w) => v.state.running_on(w).into_iter().collect(),
        None => v
            .state
            .workers()
            .filter_map(|w| v.state.running_on(&w.id))
            .collect(),
    };
    for set in sets {
        for (d, n) in set.amounts() {
            rows.entry(d.to_string()).or_default().0 += n;
        }
    }
    if let Some(leader) = v.leader_core {
        for (w, cap) in leader.connected_capacities() {
            if worker_id.is_some_and(|id| id != w) {
                continue;
            }
            for (d, n) in &cap.amounts {
                rows.entry(d.clone()).or_default().1 += n;
            }
        }
    }
    serde_json::Value::Array(
        rows.into_iter()
            .take(MAX_RESOURCES_LISTED)
            .map(|(d, (used, capacity))| {
                serde_json::json!({"dimension": d, "used": used, "capacity": capacity})
            })
            .collect(),
    )
}

/// Every quota with its tenant's use, users (by name) then groups, at most `max`.
pub(crate) fn quotas(state: &BrokerState, max: usize) -> serde_json::Value {
    let book = state.tenant_use();
    let rows: Vec<serde_json::Value> = state
        .quotas()
        .iter()
        .take(max)
        .map(|(tenant, quota)| {
            let usage = match &tenant {
                QuotaTenant::User(u) => book.user(u),
                QuotaTenant::Group(g) => book.group(*g),
            };
            let mut row = serde_json::json!({
                "use": usage_json(usage),
                "quota": amounts_json(quota.iter().map(|(d, n)| (&**d, *n))),
                "atQuota": at_quota(usage, quota),
            });
            match tenant {
                QuotaTenant::User(u) => row["userId"] = u.into(),
                QuotaTenant::Group(g) => row["group"] = g.into(),
            }
            row
        })
        .collect();
    serde_json::Value::Array(rows)
}

/// How many tenants have a quota, and how many of them have reached it.
pub(crate) fn quota_counts(state: &BrokerState) -> (usize, usize) {
    let book = state.tenant_use();
    let mut set = 0;
    let mut at = 0;
    for (tenant, quota) in state.quotas().iter() {
        set += 1;
        let usage = match &tenant {
            QuotaTenant::User(u) => book.user(u),
            QuotaTenant::Group(g) => book.group(*g),
        };
        if at_quota(usage, quota) {
            at += 1;
        }
    }
    (set, at)
}

/// The `tenants` view: users with waiting or running tasks, a service level or a quota, in
/// name order from `from`, at most `max` (a `user` sees only itself), each with its group,
/// weight, waiting and running tasks, use and quota; and every group with a use or a quota.
pub(crate) fn tenants(
    state: &BrokerState,
    owner: Option<&str>,
    from: Option<&str>,
    max: usize,
) -> serde_json::Value {
    let book = state.tenant_use();
    let mut waiting: BTreeMap<&str, usize> = BTreeMap::new();
    let mut names: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    for (u, _, _, n) in state.waiting_index().tenants() {
        waiting.insert(u, n);
        names.insert(u);
    }
    names.extend(book.users().map(|(u, _)| &**u));
    names.extend(state.quotas().users.keys().map(|u| &**u));
    names.extend(state.service_levels().map(|(u, _)| u));
    let mut users = Vec::new();
    let mut next = None;
    for name in names
        .into_iter()
        .filter(|n| owner.is_none_or(|o| o == *n))
        .filter(|n| from.is_none_or(|f| *n >= f))
    {
        if users.len() >= max {
            next = Some(name.to_owned());
            break;
        }
        let level = state.service_level_of(name);
        let usage = book.user(name);
        let quota = state.quotas().users.get(name);
        users.push(serde_json::json!({
            "userId": name,
            "group": level.group,
            "weight": level.weight(),
            "waitingTasks": waiting.get(name).copied().unwrap_or(0),
            "runningTasks": usage.map_or(0, |u| u.tasks),
            "use": usage_json(usage),
            "quota": quota.map(|q| amounts_json(q.iter().map(|(d, n)| (&**d, *n)))),
            "atQuota": quota.is_some_and(|q| at_quota(usage, q)),
        }));
    }
    let mut groups: BTreeMap<u32, serde_json::Value> = BTreeMap::new();
    if owner.is_none() {
        let ids: std::collections::BTreeSet<u32> = book
            .groups()
            .map(|(g, _)| g)
            .chain(state.quotas().groups.keys().copied())
            .collect();
        for g in ids.into_iter().take(MAX_RESOURCES_LISTED) {
            let usage = book.group(g);
            let quota = state.quotas().groups.get(&g);
            groups.insert(
                g,
                serde_json::json!({
                    "group": g,
                    "runningTasks": usage.map_or(0, |u| u.tasks),
                    "use": usage_json(usage),
                    "quota": quota.map(|q| amounts_json(q.iter().map(|(d, n)| (&**d, *n)))),
                    "atQuota": quota.is_some_and(|q| at_quota(usage, q)),
                }),
            );
        }
    }
    let mut out = serde_json::json!({
        "users": users,
        "groups": groups.into_values().collect::<Vec<_>>(),
        "truncated": next.is_some(),
    });
    if let Some(next) = next {
        out["nextUserId"] = next.into();
    }
    out
}

/// The `tasksheap` view: waiting tasks in the order the scheduler walks them (group by group,
/// tenant by tenant, each queue by priority then age), at most `max`, examining at most
/// `scan_budget` entries; `owner` limits it to one user's tasks.
pub(crate) fn tasks_heap(
    state: &BrokerState,
    owner: Option<&str>,
    max: usize,
    scan_budget: usize,
) -> serde_json::Value {
    let mut tasks = Vec::new();
    let mut truncated = false;
    for (scanned, (id, group, user, task_type)) in state.waiting_index().iter().enumerate() {
        if tasks.len() >= max || scanned >= scan_budget {
            truncated = true;
            break;
        }
        if owner.is_some_and(|o| **user != *o) {
            continue;
        }
        let priority = state.task(id).map_or(0, |t| t.priority());
        tasks.push(serde_json::json!({
            "taskId": id.0,
            "taskType": &**task_type,
            "group": group,
            "userId": &**user,
            "priority": priority,
        }));
    }
    serde_json::json!({
        "tasks": tasks,
        "count": tasks.len(),
        "waitingTasks": state.waiting_index().len(),
        "truncated": truncated,
    })
}

#[cfg(test)]
mod tests {
    //! The indexed sources must find exactly what a scan of every task finds.

    use std::collections::BTreeSet;

    use majordodo_core::{LogEntry, NewTask};
    use proptest::prelude::*;

    use super::*;

    const NOW: i64 = 1_000_000;
    const TYPES: [&str; 3] = ["a", "B", "c"];
    const USERS: [&str; 3] = ["u1", "U1", "u2"];
    const WORKERS: [&str; 2] = ["w1", "W2"];
    const SLOTS: [Option<&str>; 3] = [None, Some("s1"), Some("S2")];
    const STATUSES: [&str; 6] = ["all", "waiting", "delayed", "running", "finished", "error"];

    /// What becomes of a generated task.
    #[derive(Clone, Copy, Debug)]
    enum Fate {
        Wait,
        Delay,
        Run(usize),
        Finish(usize),
        Fail(usize),
    }

    fn arb_fate() -> impl Strategy<Value = Fate> {
        prop_oneof![
            Just(Fate::Wait),
            Just(Fate::Delay),
            (0usize..2).prop_map(Fate::Run),
            (0usize..2).prop_map(Fate::Finish),
            (0usize..2).prop_map(Fate::Fail),
        ]
    }

    /// (type, user, slot, fate) indexes of one task.
    type Spec = (usize, usize, usize, Fate);

    fn arb_tasks() -> impl Strategy<Value = Vec<Spec>> {
        proptest::collection::vec((0usize..3, 0usize..3, 0usize..3, arb_fate()), 0..40)
    }

    fn build(tasks: &[Spec]) -> BrokerState {
        let mut s = BrokerState::default();
        let mut lsn = 0;
        let mut apply = |s: &mut BrokerState, e: LogEntry| {
            lsn += 1;
            s.apply(lsn, e).expect("generated entries apply");
        };
        for w in WORKERS {
            apply(
                &mut s,
                LogEntry::WorkerConnected {
                    worker_id: w.into(),
                    location: "here".into(),
                    process_id: "p".into(),
                    timestamp: NOW,
                },
            );
        }
        for (i, &(ty, user, slot, fate)) in tasks.iter().enumerate() {
            let id = TaskId(i as u64 + 1);
            // A slot is held by one live task at a time: later claimants go without.
            let slot = SLOTS[slot]
                .filter(|x| s.slot_holder(x).is_none())
                .map(str::to_owned);
            apply(
                &mut s,
                LogEntry::AddTask(NewTask {
                    id,
                    task_type: TYPES[ty].into(),
                    user_id: USERS[user].into(),
                    data: format!("data {i}"),
                    max_attempts: 1,
                    attempts: 0,
                    requested_start_time: if matches!(fate, Fate::Delay) {
                        NOW + 10
                    } else {
                        0
                    },
                    deadline: 0,
                    slot,
                    codepool: None,
                    mode: None,
                    created: NOW - i as i64,
                    idempotency_key: None,
                    priority: 0,
                    needs: Vec::new(),
                }),
            );
            let (worker, end) = match fate {
                Fate::Wait | Fate::Delay => continue,
                Fate::Run(w) => (w, None),
                Fate::Finish(w) => (w, Some(TaskStatus::Finished)),
                Fate::Fail(w) => (w, Some(TaskStatus::Error)),
            };
            apply(
                &mut s,
                LogEntry::AssignTask {
                    task_id: id,
                    worker_id: WORKERS[worker].into(),
                    attempt: 1,
                    resources: vec![],
                    timestamp: NOW,
                },
            );
            if let Some(status) = end {
                apply(
                    &mut s,
                    LogEntry::TaskStatusChange {
                        task_id: id,
                        status,
                        attempt: 1,
                        worker_id: Some(WORKERS[worker].into()),
                        result: Some("r".into()),
                        timestamp: NOW,
                    },
                );
            }
        }
        s
    }

    fn pick<'a>(names: &[&'a str], i: usize) -> Option<&'a str> {
        names.get(i).copied()
    }

    fn arb_query() -> impl Strategy<Value = (TasksQuery, Option<usize>)> {
        (
            0usize..6,
            0usize..4,
            0usize..5,
            0usize..4,
            0usize..5,
            proptest::option::of(1u64..45),
            proptest::option::of(0usize..3),
        )
            .prop_map(|(st, w, ty, sl, u, from, owner)| {
                let status = match STATUSES[st] {
                    "all" => StatusFilter::All,
                    s => StatusFilter::Only(TaskStatus::parse(s).expect("a status")),
                };
                let lower = |s: &str| s.to_ascii_lowercase();
                let q = TasksQuery {
                    max: None,
                    status,
                    worker_id: pick(&WORKERS, w).map(lower),
                    task_type: pick(&["a", "b", "C", "zz"], ty).map(str::to_owned),
                    slot: pick(&["S1", "s2", "nope"], sl).map(str::to_owned),
                    user_id: pick(&["u1", "U2", "x", "U1"], u).map(str::to_owned),
                    from_task_id: from,
                };
                (q, owner)
            })
    }

    /// What a scan of every task keeps.
    fn naive(state: &BrokerState, q: &TasksQuery, owner: Option<&str>) -> BTreeSet<u64> {
        let f = Filter::of(q, owner);
        state
            .tasks()
            .filter(|t| f.accepts(t))
            .map(|t| t.id.0)
            .collect()
    }

    const UNBOUNDED: Budget = Budget {
        max: usize::MAX,
        scan: usize::MAX,
        bytes: usize::MAX,
    };

    proptest! {
        #[test]
        fn indexed_listing_finds_what_a_full_scan_finds(tasks in arb_tasks(), (q, owner) in arb_query()) {
            // Goal: whichever index answers, an unbounded listing equals the naive filter.
            let state = build(&tasks);
            let owner = owner.map(|i| USERS[i]);
            let got: BTreeSet<u64> =
                list_tasks(&state, &q, owner, UNBOUNDED).tasks.iter().map(|t| t.task_id).collect();
            prop_assert_eq!(got, naive(&state, &q, owner));
        }

        #[test]
        fn bounded_listing_is_a_correct_prefix(tasks in arb_tasks(), (q, owner) in arb_query(),
                                               max in 0usize..6, scan in 1usize..30) {
            // Goal: with small budgets the answer holds only matching tasks, at most max; it is
            // complete when it says it was not cut and did not reach max; nextTaskId continues
            // an id-ordered listing without losing a task.
            let state = build(&tasks);
            let owner = owner.map(|i| USERS[i]);
            let all = naive(&state, &q, owner);
            let budget = Budget { max, scan, bytes: usize::MAX };
            let l = list_tasks(&state, &q, owner, budget);
            let got: BTreeSet<u64> = l.tasks.iter().map(|t| t.task_id).collect();
            prop_assert!(got.len() <= max);
            prop_assert!(got.is_subset(&all));
            prop_assert!(l.scanned as usize <= scan);
            if !l.truncated && got.len() < max {
                prop_assert_eq!(&got, &all);
            }
            if q.status == StatusFilter::All {
                // Page through with nextTaskId: the pages together are the whole answer.
                let mut seen = got.clone();
                let mut next = l.next_task_id;
                let mut pages = 0;
                while let Some(from) = next {
                    pages += 1;
                    prop_assert!(pages < 200, "paging must end");
                    let page = list_tasks(
                        &state,
                        &TasksQuery { from_task_id: Some(from), ..q.clone() },
                        owner,
                        Budget { max: max.max(1), ..budget },
                    );
                    seen.extend(page.tasks.iter().map(|t| t.task_id));
                    next = page.next_task_id;
                }
                prop_assert_eq!(seen, all);
            }
        }

        #[test]
        fn counts_by_type_match_a_full_scan(tasks in arb_tasks(), st in 0usize..6,
                                            w in 0usize..3, ty in 0usize..4, owner in proptest::option::of(0usize..3)) {
            // Goal: tasksoverview counts (from the queues when possible) equal a naive count.
            let state = build(&tasks);
            let owner = owner.map(|i| USERS[i]);
            let q = TasksOverviewQuery {
                status: match STATUSES[st] {
                    "all" => StatusFilter::All,
                    s => StatusFilter::Only(TaskStatus::parse(s).expect("a status")),
                },
                worker_id: pick(&WORKERS, w).map(str::to_owned),
                task_type: pick(&["A", "b", "c"], ty).map(str::to_owned),
            };
            let (counts, _, truncated) = count_by_type(&state, &q, owner, usize::MAX);
            prop_assert!(!truncated);
            let tq = TasksQuery {
                status: q.status,
                worker_id: q.worker_id.clone(),
                task_type: q.task_type.clone(),
                ..TasksQuery::default()
            };
            let mut want: BTreeMap<String, u64> = BTreeMap::new();
            for id in naive(&state, &tq, owner) {
                let t = state.task(TaskId(id)).expect("listed");
                *want.entry(t.task_type.to_string()).or_default() += 1;
            }
            prop_assert_eq!(counts, want);
        }
    }
}
