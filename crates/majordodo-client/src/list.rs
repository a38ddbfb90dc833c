//! Listings longer than one answer of the `tasks` view.
//!
//! The broker examines at most `http.scan_budget` candidate tasks per request and answers at
//! most `http.tasks_max_limit` tasks, so one answer can be partial (`truncated`) or short of the
//! `max` asked for while more tasks match. [`Client::list_tasks`] pages on with
//! `fromTaskId = nextTaskId` until it has the tasks asked for or has examined every candidate,
//! within a bound on requests and on time, and says in [`ListEnd`] which of these ended it.
//!
//! Only listings in task id order can be continued. A listing filtered by status is answered
//! from that status's index, in the index's order; when that answer is cut short, the listing
//! starts again in id order over every task matching the other filters, and the status filter
//! is applied here ([`TaskList::in_id_order`] tells which order the tasks are in).

use std::time::{Duration, Instant};

use majordodo_proto::http::{StatusFilter, TaskInfo, TasksQuery};

use crate::{Client, ClientError};

/// Default most requests of one listing. With the broker's default scan budget (50 000) this
/// covers 50 million tasks, more than a broker holds in memory, so it stops only listings that
/// a misbehaving server keeps going.
pub const DEFAULT_LIST_MAX_REQUESTS: u32 = 1_000;

/// Default longest a listing keeps asking for more: a listing is an interactive read, and a
/// minute of pages means the filters should be narrower.
pub const DEFAULT_LIST_MAX_TIME: Duration = Duration::from_secs(60);

/// Tasks asked for per request while the status filter is applied here: the broker then answers
/// tasks of every status, most of which may be dropped, so a page larger than the tasks still
/// wanted saves requests.
const LOCAL_FILTER_PAGE: u32 = 1_000;

/// Bounds of [`Client::list_tasks`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListLimits {
    /// Most tasks returned.
    pub max_tasks: u32,
    /// Most requests sent.
    pub max_requests: u32,
    /// Longest time spent; checked before each request but the first, so at least one answer
    /// is always read (and `Duration::ZERO` means exactly one request).
    pub max_time: Duration,
}

impl Default for ListLimits {
    fn default() -> Self {
        ListLimits {
            max_tasks: majordodo_proto::http::DEFAULT_TASKS_MAX,
            max_requests: DEFAULT_LIST_MAX_REQUESTS,
            max_time: DEFAULT_LIST_MAX_TIME,
        }
    }
}

/// Why a listing ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListEnd {
    /// Every candidate was examined: the list holds every matching task.
    Complete,
    /// [`ListLimits::max_tasks`] tasks were found; more may match. In id order,
    /// `next_task_id` is the `from_task_id` that continues the listing; in index order there is
    /// none.
    MaxTasks {
        /// Where to continue, when the listing is in id order.
        next_task_id: Option<u64>,
    },
    /// [`ListLimits::max_requests`] requests were sent before the end: more may match.
    MaxRequests {
        /// The `from_task_id` that continues the listing.
        next_task_id: u64,
    },
    /// [`ListLimits::max_time`] passed before the end: more may match.
    MaxTime {
        /// The `from_task_id` that continues the listing.
        next_task_id: u64,
    },
}

impl ListEnd {
    /// Whether a bound on requests or time stopped the listing before it examined every
    /// candidate or found the tasks asked for.
    pub fn stopped_early(&self) -> bool {
        matches!(self, ListEnd::MaxRequests { .. } | ListEnd::MaxTime { .. })
    }
}

/// The tasks of a listing and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskList {
    /// The matching tasks found, at most [`ListLimits::max_tasks`].
    pub tasks: Vec<TaskInfo>,
    /// Candidates the broker examined, over every request.
    pub scanned: u64,
    /// Requests sent.
    pub requests: u32,
    /// Whether `tasks` are in task id order (always, without a status filter); otherwise they are
    /// in the order of the status's index (see `docs/http-api.md`).
    pub in_id_order: bool,
    /// Why the listing ended.
    pub end: ListEnd,
}

impl Client {
    /// Lists the tasks matching `query` (its `max` is ignored: `limits.max_tasks` counts), over
    /// as many requests as needed. Starts at `query.from_task_id` when set.
    ///
    /// # Errors
    /// [`ClientError`] of any request; [`ClientError::Decode`] when the broker's paging does
    /// not advance.
    pub async fn list_tasks(
        &self,
        query: &TasksQuery,
        limits: ListLimits,
    ) -> Result<TaskList, ClientError> {
        let started = Instant::now();
        let want = limits.max_tasks as usize;
        let mut list = TaskList {
            tasks: Vec::new(),
            scanned: 0,
            requests: 0,
            in_id_order: true,
            end: ListEnd::MaxTasks { next_task_id: None },
        };
        if want == 0 {
            return Ok(list);
        }
        if query.status != StatusFilter::All {
            let page = self
                .tasks(&TasksQuery {
                    max: Some(limits.max_tasks),
                    ..query.clone()
                })
                .await?;
            list.requests = 1;
            list.scanned = page.scanned;
            let whole = !page.truncated;
            if whole && (page.tasks.len() >= want || page.tasks.len() < page.max as usize) {
                list.end = if page.tasks.len() >= want {
                    ListEnd::MaxTasks { next_task_id: None }
                } else {
                    ListEnd::Complete
                };
                list.tasks = page.tasks;
                list.tasks.truncate(want);
                list.in_id_order = false;
                return Ok(list);
            }
            // Cut by the scan budget or the broker's cap on `max`: the index cannot be paged,
            // so go over every task in id order instead.
        }

        let status = query.status;
        let mut from = query.from_task_id;
        loop {
            if list.requests > 0 {
                let next_task_id = from.unwrap_or(1);
                if list.requests >= limits.max_requests {
                    list.end = ListEnd::MaxRequests { next_task_id };
                    return Ok(list);
                }
                if started.elapsed() >= limits.max_time {
                    list.end = ListEnd::MaxTime { next_task_id };
                    return Ok(list);
                }
            }
            let left = (want - list.tasks.len()) as u32;
            let ask = match status {
                StatusFilter::All => left,
                StatusFilter::Only(_) => left.max(LOCAL_FILTER_PAGE),
            };
            let page = self
                .tasks(&TasksQuery {
                    max: Some(ask),
                    status: StatusFilter::All,
                    from_task_id: from,
                    ..query.clone()
                })
                .await?;
            list.requests += 1;
            list.scanned += page.scanned;
            for task in page.tasks {
                if !has_status(status, &task) {
                    continue;
                }
                if list.tasks.len() == want {
                    list.end = ListEnd::MaxTasks {
                        next_task_id: Some(task.task_id),
                    };
                    return Ok(list);
                }
                list.tasks.push(task);
            }
            let Some(next) = page.next_task_id else {
                if page.truncated {
                    return Err(ClientError::Decode(
                        "a tasks answer in id order was truncated without nextTaskId".into(),
                    ));
                }
                list.end = ListEnd::Complete;
                return Ok(list);
            };
            if next == 0 || from.is_some_and(|f| next <= f) {
                return Err(ClientError::Decode(format!(
                    "nextTaskId {next} does not advance past fromTaskId {}",
                    from.unwrap_or(0)
                )));
            }
            if list.tasks.len() == want {
                list.end = ListEnd::MaxTasks {
                    next_task_id: Some(next),
                };
                return Ok(list);
            }
            from = Some(next);
        }
    }
}

/// Whether `task` passes the status filter (the broker names statuses in lowercase; compared
/// without regard to case, as its filters are).
fn has_status(filter: StatusFilter, task: &TaskInfo) -> bool {
    match filter {
        StatusFilter::All => true,
        StatusFilter::Only(status) => task.status.eq_ignore_ascii_case(status.as_str()),
    }
}
