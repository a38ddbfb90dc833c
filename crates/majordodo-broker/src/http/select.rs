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

use majordodo_core::{BrokerState, Task, TaskId, TaskStatus};
use majordodo_proto::http::{
    BrokerStatusInfo, StatusFilter, TaskInfo, TasksOverviewQuery, TasksQuery, WorkerInfo,
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
                Box::new(state.waiting_index().iter().map(move |(id, _, t)| {
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
    let f = Filter {
        status: q.status,
        worker_id: q.worker_id.as_deref(),
        task_type: q.task_type.as_deref(),
        slot: q.slot.as_deref(),
        user_id: q.user_id.as_deref(),
        from: q.from_task_id.unwrap_or(0),
        owner,
    };
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
        for (_, _, t) in state.waiting_index().iter() {
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
        // This log has no ledgers; the position is the sequence number.
        current_ledger_id: 0,
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

/// Every known worker, by id, at most `max`.
pub(crate) fn workers(state: &BrokerState, max: usize) -> Vec<WorkerInfo> {
    state
        .workers()
        .take(max)
        .map(|w| WorkerInfo {
            id: w.id.to_string(),
            process_id: w.process_id.clone(),
            status: w.status.as_str().to_owned(),
            location: w.location.clone(),
            last_connection_ts: w.last_connection,
        })
        .collect()
}
