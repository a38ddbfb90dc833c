//! `GET` query strings: which view (`?view=...`) and its parameters, validated.
//!
//! Parameters this API does not know are ignored (browsers and UIs add cache busters such as
//! `_=1699999999`); the known ones are checked and a bad value is a [`FieldError`] naming it.
//! An empty filter (`workerId=`) means "no filter", as in the original.

use majordodo_core::TaskStatus;

use super::lenient::parse_int;
use super::request::clip;
use super::{FieldError, MAX_NAME_BYTES, MAX_TASK_ID};

/// Views of the original API this broker implements.
pub const SUPPORTED_VIEWS: [&str; 15] = [
    "overview",
    "status",
    "task",
    "tasks",
    "tasksoverview",
    "workers",
    "codePool",
    "codePools",
    "transactions",
    "slots",
    "delayedqueue",
    "resources",
    "tasksheap",
    "tenants",
    "workerCredentials",
];

/// Views of the original API this broker does not implement yet: they are answered with a 4xx
/// error naming the view.
pub const UNSUPPORTED_VIEWS: [&str; 0] = [];

/// Which tasks a status filter keeps.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum StatusFilter {
    /// Every status (`all`, or no filter).
    #[default]
    All,
    /// One status.
    Only(TaskStatus),
}

impl StatusFilter {
    /// The filter's name in a query string.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusFilter::All => "all",
            StatusFilter::Only(s) => s.as_str(),
        }
    }

    /// Whether a task in `status` passes.
    pub fn accepts(self, status: TaskStatus) -> bool {
        match self {
            StatusFilter::All => true,
            StatusFilter::Only(s) => s == status,
        }
    }
}

/// Parameters of the `tasks` view. Text filters compare without regard to case, as the original.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TasksQuery {
    /// `max`: most tasks answered; `None` is the default ([`super::DEFAULT_TASKS_MAX`]). The
    /// broker lowers it to its hard cap.
    pub max: Option<u32>,
    /// `status`.
    pub status: StatusFilter,
    /// `workerId`: last worker of the task.
    pub worker_id: Option<String>,
    /// `tasktype`.
    pub task_type: Option<String>,
    /// `slot`.
    pub slot: Option<String>,
    /// `userId`.
    pub user_id: Option<String>,
    /// `fromTaskId` (an extension): only tasks with an id at least this; with the `nextTaskId` of
    /// an answer it pages through a listing in id order.
    pub from_task_id: Option<u64>,
}

impl TasksQuery {
    /// The query as `(name, value)` pairs, as a client sends it.
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let mut p = vec![("view", "tasks".to_owned())];
        if let Some(max) = self.max {
            p.push(("max", max.to_string()));
        }
        if self.status != StatusFilter::All {
            p.push(("status", self.status.as_str().to_owned()));
        }
        push_opt(&mut p, "workerId", &self.worker_id);
        push_opt(&mut p, "tasktype", &self.task_type);
        push_opt(&mut p, "slot", &self.slot);
        push_opt(&mut p, "userId", &self.user_id);
        if let Some(from) = self.from_task_id {
            p.push(("fromTaskId", from.to_string()));
        }
        p
    }
}

/// Parameters of the `tasksoverview` view (counts of tasks by type).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TasksOverviewQuery {
    /// `filter`: the status filter (named `filter` in this view, as in the original).
    pub status: StatusFilter,
    /// `workerId`.
    pub worker_id: Option<String>,
    /// `tasktype`.
    pub task_type: Option<String>,
}

impl TasksOverviewQuery {
    /// The query as `(name, value)` pairs, as a client sends it.
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let mut p = vec![("view", "tasksoverview".to_owned())];
        if self.status != StatusFilter::All {
            p.push(("filter", self.status.as_str().to_owned()));
        }
        push_opt(&mut p, "workerId", &self.worker_id);
        push_opt(&mut p, "tasktype", &self.task_type);
        p
    }
}

fn push_opt(p: &mut Vec<(&'static str, String)>, name: &'static str, v: &Option<String>) {
    if let Some(v) = v {
        p.push((name, v.clone()));
    }
}

/// A parsed `GET` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViewRequest {
    /// `overview` (also the default): workers and broker status.
    Overview,
    /// `status`: flat broker status and task counts.
    Status,
    /// `task`: one task by `taskId`.
    Task {
        /// The task id.
        id: u64,
    },
    /// `tasks`: a filtered, bounded listing.
    Tasks(TasksQuery),
    /// `tasksoverview`: counts by task type.
    TasksOverview(TasksOverviewQuery),
    /// `workers`: known workers.
    Workers,
    /// `codePool`: one code pool by `codePoolId`.
    CodePool {
        /// The pool.
        id: String,
    },
    /// `codePools`: code pools in id order, from `fromCodePoolId`, at most `max`.
    CodePools {
        /// Most pools listed (default [`DEFAULT_TASKS_MAX`](super::DEFAULT_TASKS_MAX)).
        max: Option<u32>,
        /// First pool id listed.
        from: Option<String>,
    },
    /// `transactions`: open transactions, at most `max` (an extension; default
    /// [`super::DEFAULT_TASKS_MAX`]).
    Transactions {
        /// `max`.
        max: Option<u32>,
    },
    /// `slots`: busy slots and their holders, at most `max`.
    Slots {
        /// `max`.
        max: Option<u32>,
    },
    /// `delayedqueue`: delayed tasks, soonest first, at most `max`.
    DelayedQueue {
        /// `max`.
        max: Option<u32>,
    },
    /// `resources`: named resources in use against their limits, in the cluster or (with
    /// `workerId`) on one worker.
    Resources {
        /// `workerId`, if any.
        worker_id: Option<String>,
    },
    /// `tenants` (an extension): users and groups with their weights, use and quotas, users in
    /// name order from `fromUserId`, at most `max`.
    Tenants {
        /// `max`.
        max: Option<u32>,
        /// `fromUserId`.
        from: Option<String>,
    },
    /// `tasksheap`: waiting tasks in the order the scheduler considers them, at most `max`.
    TasksHeap {
        /// `max`.
        max: Option<u32>,
    },
    /// `workerCredentials` (admin only, an extension): worker credentials in id order, of
    /// worker `workerId` if given (never a secret or a verifier).
    WorkerCredentials {
        /// `workerId`, if any.
        worker_id: Option<String>,
    },
}

impl ViewRequest {
    /// The view's name.
    pub fn name(&self) -> &'static str {
        match self {
            ViewRequest::Overview => "overview",
            ViewRequest::Status => "status",
            ViewRequest::Task { .. } => "task",
            ViewRequest::Tasks(_) => "tasks",
            ViewRequest::TasksOverview(_) => "tasksoverview",
            ViewRequest::Workers => "workers",
            ViewRequest::CodePool { .. } => "codePool",
            ViewRequest::CodePools { .. } => "codePools",
            ViewRequest::Transactions { .. } => "transactions",
            ViewRequest::Slots { .. } => "slots",
            ViewRequest::DelayedQueue { .. } => "delayedqueue",
            ViewRequest::Resources { .. } => "resources",
            ViewRequest::TasksHeap { .. } => "tasksheap",
            ViewRequest::Tenants { .. } => "tenants",
            ViewRequest::WorkerCredentials { .. } => "workerCredentials",
        }
    }

    /// The request as `(name, value)` pairs, as a client sends it.
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        match self {
            ViewRequest::Tasks(q) => q.to_pairs(),
            ViewRequest::TasksOverview(q) => q.to_pairs(),
            ViewRequest::Task { id } => vec![("view", "task".into()), ("taskId", id.to_string())],
            ViewRequest::CodePool { id } => {
                vec![("view", "codePool".into()), ("codePoolId", id.clone())]
            }
            ViewRequest::CodePools { max, from } => {
                let mut p = vec![("view", "codePools".into())];
                if let Some(max) = max {
                    p.push(("max", max.to_string()));
                }
                if let Some(from) = from {
                    p.push(("fromCodePoolId", from.clone()));
                }
                p
            }
            ViewRequest::Resources { worker_id } => {
                let mut p = vec![("view", "resources".to_owned())];
                push_opt(&mut p, "workerId", worker_id);
                p
            }
            ViewRequest::WorkerCredentials { worker_id } => {
                let mut p = vec![("view", "workerCredentials".to_owned())];
                push_opt(&mut p, "workerId", worker_id);
                p
            }
            ViewRequest::Tenants { max, from } => {
                let mut p = vec![("view", "tenants".to_owned())];
                if let Some(max) = max {
                    p.push(("max", max.to_string()));
                }
                push_opt(&mut p, "fromUserId", from);
                p
            }
            ViewRequest::Transactions { max }
            | ViewRequest::Slots { max }
            | ViewRequest::DelayedQueue { max }
            | ViewRequest::TasksHeap { max } => {
                let mut p = vec![("view", self.name().into())];
                if let Some(max) = max {
                    p.push(("max", max.to_string()));
                }
                p
            }
            other => vec![("view", other.name().into())],
        }
    }
}

/// Parses the decoded query parameters of a `GET`. For a repeated parameter the first value
/// counts, as in the original servlet.
///
/// # Errors
/// A [`FieldError`] naming the parameter: `view` when unknown or not supported yet, the filter or
/// number that is malformed or out of range otherwise.
pub fn parse_view(pairs: &[(String, String)]) -> Result<ViewRequest, FieldError> {
    let q = Params(pairs);
    let view = q.get("view").unwrap_or("");
    Ok(match view {
        "" | "overview" => ViewRequest::Overview,
        "status" => ViewRequest::Status,
        "workers" => ViewRequest::Workers,
        "task" => match q.id("taskId")? {
            Some(id) => ViewRequest::Task { id },
            None => return Err(FieldError::new("taskId", "is required")),
        },
        "tasks" => ViewRequest::Tasks(TasksQuery {
            max: q.max()?,
            status: q.status("status")?,
            worker_id: q.filter("workerId")?,
            task_type: q.filter("tasktype")?,
            slot: q.filter("slot")?,
            user_id: q.filter("userId")?,
            from_task_id: q.id("fromTaskId")?,
        }),
        "resources" => ViewRequest::Resources {
            worker_id: q.filter("workerId")?,
        },
        "tasksheap" => ViewRequest::TasksHeap { max: q.max()? },
        "workerCredentials" => ViewRequest::WorkerCredentials {
            worker_id: q.filter("workerId")?,
        },
        "tenants" => ViewRequest::Tenants {
            max: q.max()?,
            from: q.filter("fromUserId")?,
        },
        "tasksoverview" => ViewRequest::TasksOverview(TasksOverviewQuery {
            status: q.status("filter")?,
            worker_id: q.filter("workerId")?,
            task_type: q.filter("tasktype")?,
        }),
        "codePool" => match q.filter("codePoolId")? {
            Some(id) => ViewRequest::CodePool { id },
            None => return Err(FieldError::new("codePoolId", "is required")),
        },
        "codePools" => ViewRequest::CodePools {
            max: q.max()?,
            from: q.filter("fromCodePoolId")?,
        },
        "transactions" => ViewRequest::Transactions { max: q.max()? },
        "slots" => ViewRequest::Slots { max: q.max()? },
        "delayedqueue" => ViewRequest::DelayedQueue { max: q.max()? },
        v if UNSUPPORTED_VIEWS.contains(&v) => {
            return Err(FieldError::new(
                "view",
                format!("view {v} is not supported by this broker yet"),
            ));
        }
        v => {
            return Err(FieldError::new(
                "view",
                format!(
                    "unknown view {}; supported: {}",
                    clip(v),
                    SUPPORTED_VIEWS.join(", ")
                ),
            ));
        }
    })
}

struct Params<'a>(&'a [(String, String)]);

impl Params<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A text filter; empty is no filter.
    fn filter(&self, name: &str) -> Result<Option<String>, FieldError> {
        match self.get(name) {
            None | Some("") => Ok(None),
            Some(v) if v.len() > MAX_NAME_BYTES => Err(FieldError::new(
                name,
                format!(
                    "is {} bytes long; at most {MAX_NAME_BYTES} are accepted",
                    v.len()
                ),
            )),
            Some(v) => Ok(Some(v.to_owned())),
        }
    }

    fn status(&self, name: &str) -> Result<StatusFilter, FieldError> {
        match self.get(name) {
            None | Some("") => Ok(StatusFilter::All),
            Some(v) if v.eq_ignore_ascii_case("all") => Ok(StatusFilter::All),
            Some(v) => TaskStatus::parse(v).map(StatusFilter::Only).ok_or_else(|| {
                FieldError::new(
                    name,
                    format!(
                        "unknown status {:?}; one of all, waiting, delayed, running, error, finished",
                        clip(v)
                    ),
                )
            }),
        }
    }

    /// A task id: an integer in `1..=MAX_TASK_ID`.
    fn id(&self, name: &str) -> Result<Option<u64>, FieldError> {
        let Some(v) = self.get(name).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        match integer(name, v)? {
            n if n < 1 => Err(FieldError::new(name, "must be a task id (1 or more)")),
            n if n as u64 > MAX_TASK_ID => Err(FieldError::new(
                name,
                format!("must be at most {MAX_TASK_ID}"),
            )),
            n => Ok(Some(n as u64)),
        }
    }

    /// `max`: a non-negative 32-bit integer (the original's `int`).
    fn max(&self) -> Result<Option<u32>, FieldError> {
        let Some(v) = self.get("max").filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        match integer("max", v)? {
            n if n < 0 => Err(FieldError::new("max", "must not be negative")),
            n if n > i64::from(i32::MAX) => Err(FieldError::new(
                "max",
                format!("must be at most {}", i32::MAX),
            )),
            n => Ok(Some(n as u32)),
        }
    }
}

fn integer(name: &str, v: &str) -> Result<i64, FieldError> {
    parse_int(v).ok_or_else(|| {
        let unsigned = v.strip_prefix(['-', '+']).unwrap_or(v);
        if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
            if v.starts_with('-') {
                FieldError::new(name, "must not be negative")
            } else {
                FieldError::new(name, "is too large")
            }
        } else {
            FieldError::new(name, format!("must be an integer, not {:?}", clip(v)))
        }
    })
}
