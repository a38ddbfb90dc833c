//! `POST` bodies: the actions (`submitTask`, `submitTasks`, the transactions, `cancelTask`),
//! parsed and validated field by field.
//!
//! The body is read by [`super::json`] without expanding it (the tasks of `submitTasks` one by
//! one, every other value size- and depth-capped, duplicate keys refused); each object is then
//! checked field by field so that every problem names its field (`tasks[3].maxattempts`) and
//! says what is wrong in words, which a derived deserializer cannot do. Everything that can be
//! wrong with outside data is a [`FieldError`]; nothing here panics.

use serde_json::{Map, Value};

use super::lenient::parse_int;
use super::{
    BODY_FIELD, FieldError, MAX_ATTEMPTS_LIMIT, MAX_IDEMPOTENCY_KEY_BYTES, MAX_NAME_BYTES,
    MAX_PRIORITY, MAX_TASK_ID, MAX_TIMESTAMP,
};
pub use majordodo_core::quota::QuotaTenant;
use majordodo_core::quota::{CPU, MAX_AMOUNT, MEMORY, normalize};
use majordodo_core::scheduler::MAX_WEIGHT;

/// Actions of the original API this broker implements.
pub const SUPPORTED_ACTIONS: [&str; 11] = [
    "submitTask",
    "submitTasks",
    "createCodePool",
    "deleteCodePool",
    "setServiceLevel",
    "setTaskPriority",
    "setQuota",
    "beginTransaction",
    "commitTransaction",
    "rollbackTransaction",
    "cancelTask",
];

/// Actions of the original API this broker does not implement yet: they are answered with a
/// 4xx error naming the action.
pub const UNSUPPORTED_ACTIONS: [&str; 0] = [];

/// Every action the parser accepts with the fields it accepts besides `action`; any other
/// field is refused naming it. The parser reads its field lists here, and so does the
/// broker's OpenAPI description, so the two cannot differ.
pub const ACTION_FIELDS: [(&str, &[&str]); 13] = [
    ("submitTask", &TASK_FIELDS),
    ("submitTasks", &["tasks", "transaction"]),
    ("createCodePool", &super::codepool::CREATE_FIELDS),
    ("deleteCodePool", &["id"]),
    (
        "setServiceLevel",
        &["userid", "group", "resources", "reset", "weight"],
    ),
    ("setQuota", &["userid", "group", "quota", "reset"]),
    ("addWorkerCredential", &["workerId", "comment"]),
    ("revokeWorkerCredential", &["credentialId"]),
    ("beginTransaction", &[]),
    ("commitTransaction", &["transaction"]),
    ("rollbackTransaction", &["transaction"]),
    ("cancelTask", &["taskId"]),
    ("setTaskPriority", &["taskId", "priority"]),
];

/// The fields `action` accepts besides `action` ([`ACTION_FIELDS`]); none for an unknown one.
pub fn fields_of(action: &str) -> &'static [&'static str] {
    ACTION_FIELDS
        .iter()
        .find(|(a, _)| *a == action)
        .map_or(&[], |(_, fields)| *fields)
}

/// Fields of one task, in `submitTask` (beside `action`) and in each element of `submitTasks`.
pub const TASK_FIELDS: [&str; 16] = [
    "tasktype",
    "userid",
    "data",
    "maxattempts",
    "attempt",
    "requestedStartTime",
    "deadline",
    "slot",
    "codePoolId",
    "mode",
    "transaction",
    "idempotencyKey",
    "priority",
    "cpu",
    "memory",
    "needs",
];

/// Whether `k` is a field of one task.
pub(super) fn is_task_field(k: &str) -> bool {
    TASK_FIELDS.contains(&k)
}

/// Fields the original read from the outer `submitTasks` object (a bug); here they belong to each
/// task and are refused outside, so a client relying on the bug learns it at once.
const PER_TASK_ONLY: [&str; 3] = ["requestedStartTime", "codePoolId", "mode"];

/// One task to submit, as validated from the request (or built by a client).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSubmission {
    /// `tasktype`: required, not empty.
    pub task_type: String,
    /// `userid`: required, not empty; the owner of the task.
    pub user_id: String,
    /// `data`: the payload (absent or null is empty).
    pub data: String,
    /// `maxattempts`: 0 = unlimited, 1 = at most once (the default), N = at most N executions.
    pub max_attempts: u32,
    /// `attempt`: attempts already made elsewhere (default 0).
    pub attempt: u32,
    /// `requestedStartTime`: ms since the epoch; 0 = now.
    pub requested_start_time: i64,
    /// `deadline`: absolute, ms since the epoch; 0 = none.
    pub deadline: i64,
    /// `slot`: mutual-exclusion key (blank is none).
    pub slot: Option<String>,
    /// `codePoolId`: code pool of the executor (blank is none).
    pub codepool: Option<String>,
    /// `mode`: execution mode (blank is none, which means `factory`).
    pub mode: Option<String>,
    /// `idempotencyKey` (an extension of this API): a client-chosen key, not empty, at most
    /// [`MAX_IDEMPOTENCY_KEY_BYTES`] bytes. While the broker keeps it (its
    /// `tasks.idempotency_window` from the task's creation), a submission of the same user with
    /// the same key creates nothing and is answered with the first one's task, so a submission
    /// can be sent again safely when its answer was lost.
    pub idempotency_key: Option<String>,
    /// `transaction`: prepare the task in this open transaction (a number or a string of
    /// digits; absent, null, 0 and `""` are none). It stays invisible until the commit.
    pub transaction: Option<u64>,
    /// `priority` (an extension): order inside the owner's queue, higher first, from
    /// -[`MAX_PRIORITY`] to [`MAX_PRIORITY`]; 0 (the default) keeps age order.
    pub priority: i32,
    /// What each attempt needs while it runs (an extension): `cpu` (millicores) and `memory`
    /// (MiB) fields and the `needs` object of named amounts (`{"db:orders": 1}`), merged and
    /// sorted by dimension, zero amounts left out.
    pub needs: Vec<(String, u64)>,
}

impl TaskSubmission {
    /// A task with the original's defaults: at most one attempt, start now, no deadline.
    pub fn new(
        task_type: impl Into<String>,
        user_id: impl Into<String>,
        data: impl Into<String>,
    ) -> TaskSubmission {
        TaskSubmission {
            task_type: task_type.into(),
            user_id: user_id.into(),
            data: data.into(),
            max_attempts: 1,
            attempt: 0,
            requested_start_time: 0,
            deadline: 0,
            slot: None,
            codepool: None,
            mode: None,
            idempotency_key: None,
            transaction: None,
            priority: 0,
            needs: Vec::new(),
        }
    }

    /// The same task, needing `amount` of `dimension` (`cpu` millicores, `memory` MiB, or a
    /// named amount) while it runs.
    pub fn needing(mut self, dimension: impl Into<String>, amount: u64) -> TaskSubmission {
        let dimension = dimension.into();
        self.needs.retain(|(d, _)| *d != dimension);
        self.needs.push((dimension, amount));
        self.needs.sort();
        self
    }

    /// The same task, prepared in transaction `id`.
    pub fn in_transaction(mut self, id: u64) -> TaskSubmission {
        self.transaction = Some(id);
        self
    }

    /// The same task with `key` as its idempotency key.
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> TaskSubmission {
        self.idempotency_key = Some(key.into());
        self
    }

    /// The task as a JSON object (numbers as JSON numbers, absent options left out), as a client
    /// sends it.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("tasktype".into(), self.task_type.clone().into());
        m.insert("userid".into(), self.user_id.clone().into());
        m.insert("data".into(), self.data.clone().into());
        m.insert("maxattempts".into(), self.max_attempts.into());
        m.insert("attempt".into(), self.attempt.into());
        m.insert(
            "requestedStartTime".into(),
            self.requested_start_time.into(),
        );
        m.insert("deadline".into(), self.deadline.into());
        if self.priority != 0 {
            m.insert("priority".into(), self.priority.into());
        }
        for (name, value) in [
            ("slot", &self.slot),
            ("codePoolId", &self.codepool),
            ("mode", &self.mode),
            ("idempotencyKey", &self.idempotency_key),
        ] {
            if let Some(v) = value {
                m.insert(name.into(), v.clone().into());
            }
        }
        if let Some(tx) = self.transaction {
            m.insert("transaction".into(), tx.into());
        }
        let mut named = Map::new();
        for (d, n) in &self.needs {
            match d.as_str() {
                CPU | MEMORY => {
                    m.insert(d.clone(), (*n).into());
                }
                _ => {
                    named.insert(d.clone(), (*n).into());
                }
            }
        }
        if !named.is_empty() {
            m.insert("needs".into(), named.into());
        }
        m
    }

    /// Reads a task from `obj`; `path` prefixes field names in errors (`""` or `"tasks[3]."`).
    /// Fields not in `allowed` are refused.
    pub(super) fn parse(
        obj: &Map<String, Value>,
        path: &str,
        allowed: &dyn Fn(&str) -> bool,
    ) -> Result<TaskSubmission, FieldError> {
        let f = Fields { obj, path };
        if let Some(unknown) = obj.keys().find(|k| !allowed(k)) {
            return Err(f.error(unknown, "is not a field of a task submission"));
        }
        let transaction = f.transaction("transaction")?;
        let task = TaskSubmission {
            task_type: f.required_name("tasktype")?,
            user_id: f.required_name("userid")?,
            data: f.string("data")?.unwrap_or_default(),
            max_attempts: f
                .int("maxattempts", MAX_ATTEMPTS_LIMIT.into())?
                .unwrap_or(1) as u32,
            attempt: f.int("attempt", MAX_ATTEMPTS_LIMIT.into())?.unwrap_or(0) as u32,
            requested_start_time: f.int("requestedStartTime", MAX_TIMESTAMP)?.unwrap_or(0),
            deadline: f.int("deadline", MAX_TIMESTAMP)?.unwrap_or(0),
            slot: f.optional_name("slot")?,
            codepool: f.optional_name("codePoolId")?,
            mode: f.optional_name("mode")?,
            idempotency_key: f.idempotency_key("idempotencyKey")?,
            transaction,
            priority: f.signed_int("priority", MAX_PRIORITY)?.unwrap_or(0) as i32,
            needs: parse_needs(&f)?,
        };
        if task.transaction.is_some() && task.idempotency_key.is_some() {
            return Err(f.error(
                "idempotencyKey",
                "cannot be used inside a transaction: commit the transaction again instead",
            ));
        }
        if task.max_attempts > 0 && task.attempt >= task.max_attempts {
            return Err(f.error(
                "attempt",
                format!(
                    "must be below maxattempts ({}): the task could never run",
                    task.max_attempts
                ),
            ));
        }
        Ok(task)
    }
}

/// `cpu`, `memory` and `needs` of a task submission, checked and merged.
fn parse_needs(f: &Fields<'_>) -> Result<Vec<(String, u64)>, FieldError> {
    let mut needs = Vec::new();
    for dimension in [CPU, MEMORY] {
        if let Some(n) = f.int(dimension, MAX_AMOUNT as i64)? {
            needs.push((dimension.to_string(), n as u64));
        }
    }
    let explicit = needs.len();
    for (dimension, amount) in f.amounts("needs")? {
        if needs[..explicit].iter().any(|(d, _)| *d == dimension) {
            return Err(f.error(
                &format!("needs.{dimension}"),
                format!("is given as the {dimension} field too; give it once"),
            ));
        }
        needs.push((dimension, amount));
    }
    normalize(needs, false).map_err(|e| {
        let field = match e.dimension.as_str() {
            "" => "needs".to_string(),
            d @ (CPU | MEMORY) if f.obj.contains_key(d) => d.to_string(),
            d => format!("needs.{d}"),
        };
        f.error(&field, e.problem)
    })
}

/// `setServiceLevel`: a user's group, resources and fair-share weight (admin only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceLevelChange {
    /// `userid`: the user.
    pub user_id: String,
    /// `group` and `resources`; `None` with `reset: true`, back to the configured default.
    pub level: Option<(u32, Vec<String>)>,
    /// `weight` (an extension): the user's share of running tasks inside its tier, relative to
    /// the other users' (1 to [`MAX_WEIGHT`]); 0 = the default, 1.
    pub weight: u32,
}

/// `setQuota` (an extension; admin only): what a user's or a group's running tasks may use
/// together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaChange {
    /// `userid`, or `group`.
    pub tenant: QuotaTenant,
    /// `quota`: amounts per dimension (`tasks`, `cpu`, `memory`, named); `None` with
    /// `reset: true`, no quota.
    pub quota: Option<Vec<(String, u64)>>,
}

/// `setTaskPriority`: the priority of a waiting or delayed task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriorityChange {
    /// `taskId`.
    pub task_id: u64,
    /// `priority`.
    pub priority: i32,
}

/// A parsed `POST` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActionRequest {
    /// `submitTask`: one task.
    SubmitTask(TaskSubmission),
    /// `submitTasks`: a batch, submitted as one log write, answered per task in order.
    SubmitTasks(Vec<TaskSubmission>),
    /// `createCodePool` (admin only).
    CreateCodePool(super::codepool::CreateCodePool),
    /// `deleteCodePool` (admin only): the pool's id.
    DeleteCodePool(String),
    /// `beginTransaction`: opens a transaction owned by the caller.
    BeginTransaction,
    /// `commitTransaction`: publishes the prepared tasks of transaction `transaction` at once.
    CommitTransaction(u64),
    /// `rollbackTransaction`: discards the prepared tasks of transaction `transaction`.
    RollbackTransaction(u64),
    /// `cancelTask`: ends task `taskId` in `error` with result `cancelled`.
    CancelTask(u64),
    /// `setServiceLevel`.
    SetServiceLevel(ServiceLevelChange),
    /// `setTaskPriority`.
    SetTaskPriority(PriorityChange),
    /// `setQuota`.
    SetQuota(QuotaChange),
    /// `addWorkerCredential` (admin only): issue a credential for worker `workerId`.
    AddWorkerCredential {
        /// `workerId`.
        worker_id: String,
        /// `comment`, if any.
        comment: Option<String>,
    },
    /// `revokeWorkerCredential` (admin only): revoke credential `credentialId`.
    RevokeWorkerCredential {
        /// `credentialId`.
        credential_id: String,
    },
}

impl ActionRequest {
    /// The action's name.
    pub fn action(&self) -> &'static str {
        match self {
            ActionRequest::SubmitTask(_) => "submitTask",
            ActionRequest::SubmitTasks(_) => "submitTasks",
            ActionRequest::CreateCodePool(_) => "createCodePool",
            ActionRequest::DeleteCodePool(_) => "deleteCodePool",
            ActionRequest::BeginTransaction => "beginTransaction",
            ActionRequest::CommitTransaction(_) => "commitTransaction",
            ActionRequest::RollbackTransaction(_) => "rollbackTransaction",
            ActionRequest::CancelTask(_) => "cancelTask",
            ActionRequest::SetServiceLevel(_) => "setServiceLevel",
            ActionRequest::SetTaskPriority(_) => "setTaskPriority",
            ActionRequest::SetQuota(_) => "setQuota",
            ActionRequest::AddWorkerCredential { .. } => "addWorkerCredential",
            ActionRequest::RevokeWorkerCredential { .. } => "revokeWorkerCredential",
        }
    }

    /// The request as the JSON body a client sends.
    pub fn to_json(&self) -> Value {
        let mut m = match self {
            ActionRequest::SubmitTask(task) => task.to_json(),
            ActionRequest::SubmitTasks(tasks) => {
                let mut m = Map::new();
                m.insert(
                    "tasks".into(),
                    Value::Array(tasks.iter().map(|t| Value::Object(t.to_json())).collect()),
                );
                m
            }
            ActionRequest::BeginTransaction => Map::new(),
            ActionRequest::CommitTransaction(tx) | ActionRequest::RollbackTransaction(tx) => {
                let mut m = Map::new();
                m.insert("transaction".into(), (*tx).into());
                m
            }
            ActionRequest::CancelTask(id) => {
                let mut m = Map::new();
                m.insert("taskId".into(), (*id).into());
                m
            }
            ActionRequest::CreateCodePool(c) => c.to_json(),
            ActionRequest::DeleteCodePool(id) => {
                let mut m = Map::new();
                m.insert("id".into(), id.as_str().into());
                m
            }
            ActionRequest::SetServiceLevel(c) => {
                let mut m = Map::new();
                m.insert("userid".into(), c.user_id.clone().into());
                match &c.level {
                    Some((group, resources)) => {
                        m.insert("group".into(), (*group).into());
                        m.insert("resources".into(), resources.clone().into());
                    }
                    None => {
                        m.insert("reset".into(), true.into());
                    }
                }
                if c.weight != 0 && c.level.is_some() {
                    m.insert("weight".into(), c.weight.into());
                }
                m
            }
            ActionRequest::SetQuota(c) => {
                let mut m = Map::new();
                match &c.tenant {
                    QuotaTenant::User(u) => {
                        m.insert("userid".into(), u.clone().into());
                    }
                    QuotaTenant::Group(g) => {
                        m.insert("group".into(), (*g).into());
                    }
                }
                match &c.quota {
                    Some(q) => {
                        let amounts: Map<String, Value> =
                            q.iter().map(|(d, n)| (d.clone(), (*n).into())).collect();
                        m.insert("quota".into(), amounts.into());
                    }
                    None => {
                        m.insert("reset".into(), true.into());
                    }
                }
                m
            }
            ActionRequest::SetTaskPriority(c) => {
                let mut m = Map::new();
                m.insert("taskId".into(), c.task_id.into());
                m.insert("priority".into(), c.priority.into());
                m
            }
            ActionRequest::AddWorkerCredential { worker_id, comment } => {
                let mut m = Map::new();
                m.insert("workerId".into(), worker_id.clone().into());
                if let Some(c) = comment {
                    m.insert("comment".into(), c.clone().into());
                }
                m
            }
            ActionRequest::RevokeWorkerCredential { credential_id } => {
                let mut m = Map::new();
                m.insert("credentialId".into(), credential_id.clone().into());
                m
            }
        };
        m.insert("action".into(), self.action().into());
        Value::Object(m)
    }
}

/// Parses and validates a `POST` body.
///
/// # Errors
/// A [`FieldError`] naming the first problem found: [`BODY_FIELD`] when the body is not UTF-8,
/// not JSON or not an object; `action` when it is missing, unknown or not supported yet; the
/// field (with its path inside `tasks`) otherwise.
pub fn parse_action(body: &[u8]) -> Result<ActionRequest, FieldError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        FieldError::new(
            BODY_FIELD,
            format!(
                "is not valid UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })?;
    let super::json::Body { obj, tasks } = super::json::read_body(text)?;
    let action = match obj.get("action") {
        None | Some(Value::Null) => return Err(FieldError::new("action", "is required")),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(FieldError::new("action", "must be a string")),
    };
    match action {
        "submitTask" => {
            let allowed = |k: &str| k == "action" || fields_of("submitTask").contains(&k);
            TaskSubmission::parse(&obj, "", &allowed).map(ActionRequest::SubmitTask)
        }
        "submitTasks" => parse_submit_tasks(&obj, tasks).map(ActionRequest::SubmitTasks),
        "createCodePool" => super::codepool::parse_create(&obj).map(ActionRequest::CreateCodePool),
        "deleteCodePool" => super::codepool::parse_delete(&obj).map(ActionRequest::DeleteCodePool),
        "setServiceLevel" => parse_service_level(&obj).map(ActionRequest::SetServiceLevel),
        "setQuota" => parse_quota(&obj).map(ActionRequest::SetQuota),
        "addWorkerCredential" => {
            let f = Fields {
                obj: &obj,
                path: "",
            };
            f.only_fields_of("addWorkerCredential")?;
            let worker_id = f.required_name("workerId")?;
            majordodo_core::credential::check_name("workerId", &worker_id)
                .map_err(|e| f.error("workerId", e))?;
            let comment = f.string("comment")?.filter(|c| !c.is_empty());
            if let Some(c) = &comment {
                majordodo_core::credential::check_comment(c).map_err(|e| f.error("comment", e))?;
            }
            Ok(ActionRequest::AddWorkerCredential { worker_id, comment })
        }
        "revokeWorkerCredential" => {
            let f = Fields {
                obj: &obj,
                path: "",
            };
            f.only_fields_of("revokeWorkerCredential")?;
            let credential_id = f.required_name("credentialId")?;
            majordodo_core::credential::check_name("credentialId", &credential_id)
                .map_err(|e| f.error("credentialId", e))?;
            Ok(ActionRequest::RevokeWorkerCredential { credential_id })
        }
        "beginTransaction" => {
            Fields {
                obj: &obj,
                path: "",
            }
            .only_fields_of("beginTransaction")?;
            Ok(ActionRequest::BeginTransaction)
        }
        "commitTransaction" | "rollbackTransaction" => {
            let f = Fields {
                obj: &obj,
                path: "",
            };
            f.only_fields_of(action)?;
            let tx = f.transaction("transaction")?.ok_or_else(|| {
                f.error(
                    "transaction",
                    "is required: the id beginTransaction answered",
                )
            })?;
            Ok(if action == "commitTransaction" {
                ActionRequest::CommitTransaction(tx)
            } else {
                ActionRequest::RollbackTransaction(tx)
            })
        }
        "cancelTask" => {
            let f = Fields {
                obj: &obj,
                path: "",
            };
            f.only_fields_of("cancelTask")?;
            match f.int("taskId", i64::MAX)? {
                None => Err(f.error("taskId", "is required")),
                Some(0) => Err(f.error("taskId", "must be a task id (0 is none)")),
                Some(id) => Ok(ActionRequest::CancelTask(id as u64)),
            }
        }
        "setTaskPriority" => {
            let f = Fields {
                obj: &obj,
                path: "",
            };
            f.only_fields_of("setTaskPriority")?;
            let task_id = match f.int("taskId", MAX_TASK_ID as i64)? {
                None => return Err(f.error("taskId", "is required")),
                Some(0) => return Err(f.error("taskId", "must be a task id (at least 1)")),
                Some(id) => id as u64,
            };
            let priority =
                f.signed_int("priority", MAX_PRIORITY)?
                    .ok_or_else(|| f.error("priority", "is required"))? as i32;
            Ok(ActionRequest::SetTaskPriority(PriorityChange {
                task_id,
                priority,
            }))
        }
        a if UNSUPPORTED_ACTIONS.contains(&a) => Err(FieldError::new(
            "action",
            format!("action {a} is not supported by this broker yet"),
        )),
        a => Err(FieldError::new(
            "action",
            format!(
                "unknown action {}; supported: {}",
                clip(a),
                SUPPORTED_ACTIONS.join(", ")
            ),
        )),
    }
}

fn parse_service_level(obj: &Map<String, Value>) -> Result<ServiceLevelChange, FieldError> {
    let f = Fields { obj, path: "" };
    f.only_fields_of("setServiceLevel")?;
    let user_id = f.required_name("userid")?;
    let weight = match f.int("weight", MAX_WEIGHT.into())? {
        Some(0) => return Err(f.error("weight", "must be at least 1")),
        Some(w) => w as u32,
        None => 0,
    };
    let reset = match obj.get("reset") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(other) => {
            return Err(f.error(
                "reset",
                format!("must be true or false, not {}", kind(other)),
            ));
        }
    };
    if reset {
        for field in ["group", "resources", "weight"] {
            if obj.get(field).is_some_and(|v| !v.is_null()) {
                return Err(f.error(field, "must not be set with reset"));
            }
        }
        return Ok(ServiceLevelChange {
            user_id,
            level: None,
            weight: 0,
        });
    }
    let group = match f.int("group", u32::MAX.into())? {
        None => return Err(f.error("group", "is required (or reset: true)")),
        Some(g) => g as u32,
    };
    let resources = match obj.get("resources") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) if !s.is_empty() && s.len() <= MAX_NAME_BYTES => Ok(s.clone()),
                Value::String(_) => Err(FieldError::new(
                    format!("resources[{i}]"),
                    format!("must be 1 to {MAX_NAME_BYTES} bytes long"),
                )),
                other => Err(FieldError::new(
                    format!("resources[{i}]"),
                    format!("must be a string, not {}", kind(other)),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(f.error(
                "resources",
                format!("must be an array of names, not {}", kind(other)),
            ));
        }
    };
    Ok(ServiceLevelChange {
        user_id,
        level: Some((group, resources)),
        weight,
    })
}

fn parse_quota(obj: &Map<String, Value>) -> Result<QuotaChange, FieldError> {
    let f = Fields { obj, path: "" };
    f.only_fields_of("setQuota")?;
    let user = f.optional_name("userid")?;
    let group = f.int("group", u32::MAX.into())?;
    let tenant = match (user, group) {
        (Some(_), Some(_)) => {
            return Err(f.error("group", "give userid or group, not both"));
        }
        (Some(u), None) => QuotaTenant::User(u),
        (None, Some(0)) => {
            return Err(f.error(
                "group",
                "group 0 means \"any group\" to workers and has no users",
            ));
        }
        (None, Some(g)) => QuotaTenant::Group(g as u32),
        (None, None) => return Err(f.error("userid", "userid or group is required")),
    };
    let reset = match obj.get("reset") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(other) => {
            return Err(f.error(
                "reset",
                format!("must be true or false, not {}", kind(other)),
            ));
        }
    };
    if reset {
        if obj.get("quota").is_some_and(|v| !v.is_null()) {
            return Err(f.error("quota", "must not be set with reset"));
        }
        return Ok(QuotaChange {
            tenant,
            quota: None,
        });
    }
    if obj.get("quota").is_none_or(Value::is_null) {
        return Err(f.error("quota", "is required (or reset: true)"));
    }
    let amounts = f.amounts("quota")?;
    let quota = normalize(amounts, true).map_err(|e| {
        let field = if e.dimension.is_empty() {
            "quota".to_string()
        } else {
            format!("quota.{}", e.dimension)
        };
        f.error(&field, e.problem)
    })?;
    Ok(QuotaChange {
        tenant,
        quota: Some(quota),
    })
}

fn parse_submit_tasks(
    obj: &Map<String, Value>,
    tasks: Option<Vec<TaskSubmission>>,
) -> Result<Vec<TaskSubmission>, FieldError> {
    let outer = Fields { obj, path: "" };
    for key in obj.keys() {
        if PER_TASK_ONLY.contains(&key.as_str()) {
            return Err(outer.error(key, "must be set on each element of tasks"));
        }
        if key != "action" && !fields_of("submitTasks").contains(&key.as_str()) {
            return Err(outer.error(key, "is not a field of submitTasks"));
        }
    }
    // A transaction given beside `tasks` applies to each task that names none.
    let outer_tx = outer.transaction("transaction")?;
    let mut tasks = match (obj.contains_key("tasks"), tasks) {
        (false, _) => return Err(FieldError::new("tasks", "is required")),
        (true, None) => return Err(FieldError::new("tasks", "must be an array of task objects")),
        (true, Some(tasks)) => tasks,
    };
    for (i, t) in tasks.iter_mut().enumerate() {
        if t.transaction.is_none() && outer_tx.is_some() {
            if t.idempotency_key.is_some() {
                return Err(FieldError::new(
                    format!("tasks[{i}].idempotencyKey"),
                    "cannot be used inside a transaction: commit the transaction again instead",
                ));
            }
            t.transaction = outer_tx;
        }
    }
    Ok(tasks)
}

/// Typed reads of the fields of one JSON object, with errors naming `path` + field.
pub(super) struct Fields<'a> {
    pub(super) obj: &'a Map<String, Value>,
    pub(super) path: &'a str,
}

impl Fields<'_> {
    pub(super) fn error(&self, field: &str, problem: impl Into<String>) -> FieldError {
        FieldError::new(format!("{}{}", self.path, clip(field)), problem)
    }

    /// A string field; absent or null is `None`.
    pub(super) fn string(&self, name: &str) -> Result<Option<String>, FieldError> {
        match self.obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.error(name, format!("must be a string, not {}", kind(other)))),
        }
    }

    /// A bounded name that must be present and not empty.
    pub(super) fn required_name(&self, name: &str) -> Result<String, FieldError> {
        match self.string(name)? {
            None => Err(self.error(name, "is required")),
            Some(s) if s.is_empty() => Err(self.error(name, "must not be empty")),
            Some(s) => self.bounded(name, s),
        }
    }

    /// A bounded optional name; blank (empty or only spaces) is `None`, as in the original.
    fn optional_name(&self, name: &str) -> Result<Option<String>, FieldError> {
        match self.string(name)? {
            Some(s) if !s.trim().is_empty() => self.bounded(name, s).map(Some),
            _ => Ok(None),
        }
    }

    /// An idempotency key: absent or null is `None`; else a non-empty string of at most
    /// [`MAX_IDEMPOTENCY_KEY_BYTES`] bytes, kept exactly as sent (not trimmed: the key is the
    /// client's, compared byte for byte).
    fn idempotency_key(&self, name: &str) -> Result<Option<String>, FieldError> {
        match self.string(name)? {
            None => Ok(None),
            Some(s) if s.is_empty() => Err(self.error(name, "must not be empty")),
            Some(s) if s.len() > MAX_IDEMPOTENCY_KEY_BYTES => Err(self.error(
                name,
                format!(
                    "is {} bytes long; at most {MAX_IDEMPOTENCY_KEY_BYTES} are accepted",
                    s.len()
                ),
            )),
            Some(s) => Ok(Some(s)),
        }
    }

    fn bounded(&self, name: &str, s: String) -> Result<String, FieldError> {
        if s.len() > MAX_NAME_BYTES {
            return Err(self.error(
                name,
                format!(
                    "is {} bytes long; at most {MAX_NAME_BYTES} are accepted",
                    s.len()
                ),
            ));
        }
        Ok(s)
    }

    /// Refuses any field not in `allowed`.
    /// Refuses a field that is neither `action` nor one of `action`'s ([`fields_of`]).
    fn only_fields_of(&self, action: &str) -> Result<(), FieldError> {
        let allowed = fields_of(action);
        match self
            .obj
            .keys()
            .find(|k| *k != "action" && !allowed.contains(&k.as_str()))
        {
            Some(unknown) => Err(self.error(unknown, "is not a field of this action")),
            None => Ok(()),
        }
    }

    /// An object of dimension → amount (each an integer in `0..=MAX_AMOUNT`, as a number or a
    /// string); absent or null is empty. Field errors name `name.<dimension>`.
    fn amounts(&self, name: &str) -> Result<Vec<(String, u64)>, FieldError> {
        let obj = match self.obj.get(name) {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Object(o)) => o,
            Some(other) => {
                return Err(self.error(
                    name,
                    format!(
                        "must be an object of names and amounts, not {}",
                        kind(other)
                    ),
                ));
            }
        };
        let path = format!("{}{name}.", self.path);
        let inner = Fields { obj, path: &path };
        obj.keys()
            .map(|d| {
                let n = inner
                    .int(d, MAX_AMOUNT as i64)?
                    .ok_or_else(|| inner.error(d, "must be an amount, not null"))?;
                Ok((d.clone(), n as u64))
            })
            .collect()
    }

    /// An integer in `-max..=max`, given as a JSON number or a string; absent or null is `None`.
    fn signed_int(&self, name: &str, max: i64) -> Result<Option<i64>, FieldError> {
        let value = match self.obj.get(name) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Number(n)) => n.as_i64(),
            // Digits only, an optional minus sign first: no spaces, no plus sign.
            Some(Value::String(s)) => parse_int(s),
            Some(other) => {
                return Err(self.error(name, format!("must be an integer, not {}", kind(other))));
            }
        };
        match value {
            Some(v) if (-max..=max).contains(&v) => Ok(Some(v)),
            _ => Err(self.error(name, format!("must be an integer from -{max} to {max}"))),
        }
    }

    /// An integer in `0..=max`, given as a JSON number or a string of digits; absent or null is
    /// `None`.
    pub(super) fn int(&self, name: &str, max: i64) -> Result<Option<i64>, FieldError> {
        let value = match self.obj.get(name) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(v) => v,
                // Integers beyond 64 bits arrive as u64 or as floats of large magnitude.
                None if n.is_u64() || n.as_f64().is_some_and(|f| f >= 9.2e18) => {
                    return Err(self.error(name, format!("must be at most {max}")));
                }
                None if n.as_f64().is_some_and(|f| f <= -9.2e18) => {
                    return Err(self.error(name, "must not be negative"));
                }
                None => return Err(self.error(name, format!("must be an integer, not {n}"))),
            },
            Some(Value::String(s)) => match parse_int(s) {
                Some(v) => v,
                None => {
                    let unsigned = s.strip_prefix('-').unwrap_or(s);
                    let digits =
                        !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit());
                    let problem = if digits && s.starts_with('-') {
                        "must not be negative".to_owned()
                    } else if digits {
                        format!("must be at most {max}")
                    } else {
                        format!(
                            "must be an integer (a number or a string of digits), not {:?}",
                            clip(s)
                        )
                    };
                    return Err(self.error(name, problem));
                }
            },
            Some(other) => {
                return Err(self.error(
                    name,
                    format!(
                        "must be an integer (a number or a string of digits), not {}",
                        kind(other)
                    ),
                ));
            }
        };
        if value < 0 {
            return Err(self.error(name, "must not be negative"));
        }
        if value > max {
            return Err(self.error(name, format!("must be at most {max}")));
        }
        Ok(Some(value))
    }

    /// A transaction id: a positive integer as a number or a string of digits. Null, 0, `"0"`
    /// and an empty string mean "no transaction", as in the original.
    fn transaction(&self, name: &str) -> Result<Option<u64>, FieldError> {
        if let Some(Value::String(s)) = self.obj.get(name)
            && s.is_empty()
        {
            return Ok(None);
        }
        match self.int(name, i64::MAX) {
            Ok(None | Some(0)) => Ok(None),
            Ok(Some(id)) => Ok(Some(id as u64)),
            Err(e) => Err(FieldError::new(
                e.field,
                format!(
                    "{} (a transaction id, as beginTransaction answered it)",
                    e.problem
                ),
            )),
        }
    }
}

/// The JSON kind of a value, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Caps outside text quoted in messages, so an error never echoes a huge value.
pub fn clip(s: &str) -> &str {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s;
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
