//! The OpenAPI 3.1 description of the HTTP API, served at `GET /openapi.json`.
//!
//! It is built here from the code's own lists: the route paths, the views
//! ([`SUPPORTED_VIEWS`]), the actions
//! ([`majordodo_proto::http::request::SUPPORTED_ACTIONS`] and the extensions), the error
//! words of 503 answers ([`super::ERROR_CODES`]) and the tables below of each action's fields
//! and each view's parameters. `tests/openapi.rs` checks those tables against the real request
//! parser (every documented field is accepted, every field of another action is refused), so
//! the description cannot drift from what the broker accepts.

use majordodo_proto::http::request;
use majordodo_proto::http::view::SUPPORTED_VIEWS;
use majordodo_proto::http::{API_PATH, MAX_BATCH_TASKS};
use serde_json::{Map, Value, json};

use super::ops::{HEALTH_PATH, METRICS_PATH, READY_PATH};
use super::{BROKER_VERSION, ERROR_CODES, SNAPSHOT_PATH};

/// Where the description is served.
pub const OPENAPI_PATH: &str = "/openapi.json";

/// A field of a request: name, JSON schema, required, meaning.
type Field = (&'static str, fn() -> Value, bool, &'static str);

fn string() -> Value {
    json!({"type": "string"})
}
fn integer() -> Value {
    // Numbers may also be sent as numeric strings, as the original's clients do.
    json!({"type": ["integer", "string"], "description": "an integer, or a string of one"})
}
fn boolean() -> Value {
    json!({"type": "boolean"})
}
fn amounts() -> Value {
    json!({"type": "object", "additionalProperties": {"type": ["integer", "string"]},
           "description": "dimension name to amount"})
}
fn strings() -> Value {
    json!({"type": "array", "items": {"type": "string"}})
}
fn tasks() -> Value {
    json!({"type": "array", "maxItems": MAX_BATCH_TASKS,
           "items": {"$ref": "#/components/schemas/TaskSubmission"}})
}

/// The fields of one task (`submitTask` beside `action`, each element of `submitTasks`).
pub const TASK_FIELDS: &[Field] = &[
    (
        "tasktype",
        string,
        true,
        "task type: chooses the worker's executor",
    ),
    (
        "userid",
        string,
        true,
        "owner (tenant); a user of role user may name only itself",
    ),
    ("data", string, false, "payload handed to the executor"),
    (
        "maxattempts",
        integer,
        false,
        "most executions: 0 retries without limit, 1 runs at most once",
    ),
    (
        "attempt",
        integer,
        false,
        "attempts already made (usually 0)",
    ),
    (
        "requestedStartTime",
        integer,
        false,
        "earliest start, ms since the epoch (0: now)",
    ),
    (
        "deadline",
        integer,
        false,
        "ms since the epoch after which the task is not (re)scheduled",
    ),
    (
        "slot",
        string,
        false,
        "mutual-exclusion key held while waiting, delayed or running",
    ),
    (
        "codePoolId",
        string,
        false,
        "code pool providing the executor",
    ),
    ("mode", string, false, "execution mode"),
    (
        "transaction",
        integer,
        false,
        "prepare the task in this open transaction",
    ),
    (
        "idempotencyKey",
        string,
        false,
        "a resubmission with the same key answers the first task",
    ),
    (
        "priority",
        integer,
        false,
        "order inside the owner's queue, higher first",
    ),
    ("cpu", integer, false, "millicores each attempt needs"),
    ("memory", integer, false, "MiB each attempt needs"),
    ("needs", amounts, false, "named amounts each attempt needs"),
];

/// Every action: name, summary, admins only, fields beside `action`.
pub const ACTIONS: &[(&str, &str, bool, &[Field])] = &[
    (
        "submitTask",
        "Submit one task; answered once durable",
        false,
        TASK_FIELDS,
    ),
    (
        "submitTasks",
        "Submit a batch of tasks in one log write",
        false,
        &[
            ("tasks", tasks, true, "the tasks"),
            (
                "transaction",
                integer,
                false,
                "transaction of the tasks that name none",
            ),
        ],
    ),
    (
        "beginTransaction",
        "Open a transaction owned by the caller",
        false,
        &[],
    ),
    (
        "commitTransaction",
        "Publish a transaction's prepared tasks at once",
        false,
        &[(
            "transaction",
            integer,
            true,
            "the id beginTransaction answered",
        )],
    ),
    (
        "rollbackTransaction",
        "Discard a transaction's prepared tasks",
        false,
        &[(
            "transaction",
            integer,
            true,
            "the id beginTransaction answered",
        )],
    ),
    (
        "cancelTask",
        "End a waiting, delayed or running task in error with result cancelled",
        false,
        &[("taskId", integer, true, "the task")],
    ),
    (
        "setTaskPriority",
        "Change the priority of a waiting or delayed task (its owner or an admin)",
        false,
        &[
            ("taskId", integer, true, "the task"),
            ("priority", integer, true, "the new priority"),
        ],
    ),
    (
        "createCodePool",
        "Create a code pool from a zip or tar archive",
        true,
        &[
            ("id", string, true, "the pool's id"),
            ("ttl", integer, false, "ms to live (0: forever)"),
            ("data", string, true, "the archive, base64"),
        ],
    ),
    (
        "deleteCodePool",
        "Delete a code pool no task uses",
        true,
        &[("id", string, true, "the pool's id")],
    ),
    (
        "setServiceLevel",
        "Set or reset a user's group, resources and weight",
        true,
        &[
            ("userid", string, true, "the user"),
            (
                "group",
                integer,
                false,
                "one of the broker's scheduling groups",
            ),
            (
                "resources",
                strings,
                false,
                "named resources the user's tasks hold",
            ),
            ("reset", boolean, false, "remove the user's service level"),
            (
                "weight",
                integer,
                false,
                "share in fair scheduling (at least 1)",
            ),
        ],
    ),
    (
        "setQuota",
        "Set or remove a user's or a group's quota",
        true,
        &[
            ("userid", string, false, "the user (or group)"),
            ("group", integer, false, "the group (or userid)"),
            (
                "quota",
                amounts,
                false,
                "most of each dimension the tenant's running tasks hold",
            ),
            ("reset", boolean, false, "remove the quota"),
        ],
    ),
    (
        "addWorkerCredential",
        "Issue a credential for a worker id; the secret is answered once",
        true,
        &[
            ("workerId", string, true, "the worker id it binds"),
            ("comment", string, false, "free text"),
        ],
    ),
    (
        "revokeWorkerCredential",
        "Revoke a worker credential and close its connections",
        true,
        &[("credentialId", string, true, "the credential")],
    ),
];

/// A query parameter of the views: name, schema, meaning, the views that read it.
type Parameter = (
    &'static str,
    fn() -> Value,
    &'static str,
    &'static [&'static str],
);

/// Query parameters of the views.
pub const VIEW_PARAMETERS: &[Parameter] = &[
    ("taskId", integer, "the task (required)", &["task"]),
    (
        "max",
        integer,
        "most entries answered",
        &[
            "tasks",
            "tasksheap",
            "tenants",
            "codePools",
            "transactions",
            "slots",
            "delayedqueue",
        ],
    ),
    (
        "status",
        string,
        "status filter: all, waiting, delayed, running, error, finished",
        &["tasks"],
    ),
    (
        "filter",
        string,
        "status filter, as status",
        &["tasksoverview"],
    ),
    (
        "workerId",
        string,
        "only this worker's",
        &["tasks", "tasksoverview", "resources", "workerCredentials"],
    ),
    (
        "tasktype",
        string,
        "only this task type",
        &["tasks", "tasksoverview"],
    ),
    (
        "slot",
        string,
        "only the task holding this slot",
        &["tasks"],
    ),
    ("userId", string, "only this owner's tasks", &["tasks"]),
    (
        "fromTaskId",
        integer,
        "page on from this task id",
        &["tasks"],
    ),
    ("fromUserId", string, "page on from this user", &["tenants"]),
    ("codePoolId", string, "the pool (required)", &["codePool"]),
    (
        "fromCodePoolId",
        string,
        "page on from this pool id",
        &["codePools"],
    ),
];

/// The schema of an object whose properties are the fields the parser accepts (`accepted`),
/// described by `fields`; closed, as the parser refuses any other. A field without a
/// description is still listed (and fails the unit test below).
fn object(accepted: &[&str], fields: &[Field], action: Option<&str>) -> Value {
    let mut properties = Map::new();
    let mut required: Vec<&str> = Vec::new();
    if let Some(a) = action {
        properties.insert("action".into(), json!({"const": a}));
        required.push("action");
    }
    for name in accepted {
        let (schema, needed, about) = match fields.iter().find(|(n, ..)| n == name) {
            Some((_, schema, needed, about)) => (schema(), *needed, *about),
            None => (json!({}), false, "undocumented"),
        };
        let mut s = schema;
        if let Some(o) = s.as_object_mut() {
            o.insert("description".into(), about.into());
        }
        properties.insert((*name).into(), s);
        if needed {
            required.push(name);
        }
    }
    json!({"type": "object", "properties": properties, "required": required,
           "additionalProperties": false})
}

fn error_responses(codes: &[&str]) -> Map<String, Value> {
    let mut m = Map::new();
    for code in codes {
        m.insert(
            (*code).into(),
            json!({"description": error_meaning(code),
                   "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    m
}

fn error_meaning(code: &str) -> &'static str {
    match code {
        "400" => "a field is missing, malformed or out of range (field names it)",
        "401" => "no valid credentials",
        "403" => "not allowed (not an admin, another user's tasks, a foreign Origin)",
        "404" => "what a field names does not exist",
        "405" => "method not allowed",
        "408" => "the body did not arrive in time",
        "409" => "the state does not allow the action",
        "413" => "the body, or a task in it, is too large",
        "415" => "the body is not declared application/json",
        "429" => "a limit is reached, or password logins are locked out",
        "500" => "the outcome is unknown (outcome_unknown) or an internal error",
        "503" => "the broker cannot serve now (retryable)",
        _ => "an error",
    }
}

fn ok_json(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

/// The whole description.
pub fn document() -> Value {
    let mut schemas = Map::new();
    schemas.insert(
        "Error".into(),
        json!({"type": "object", "required": ["ok", "error"], "properties": {
            "ok": {"const": false},
            "error": {"type": "string", "description": format!(
                "what is wrong; for 503 one of the original's words: {}", ERROR_CODES.join(", "))},
            "field": {"type": "string", "description": "the request field at fault"}}}),
    );
    schemas.insert(
        "TaskSubmission".into(),
        object(&request::TASK_FIELDS, TASK_FIELDS, None),
    );
    let mut one_of = Vec::new();
    let mut mapping = Map::new();
    for (name, accepted) in request::ACTION_FIELDS {
        let (summary, admin, fields) = ACTIONS
            .iter()
            .find(|(n, ..)| *n == name)
            .map_or(("", false, &[][..]), |(_, s, a, f)| (*s, *a, *f));
        let key = format!("Action_{name}");
        let mut schema = object(accepted, fields, Some(name));
        schema["description"] = Value::from(if admin {
            format!("{summary} (admins only)")
        } else {
            summary.to_owned()
        });
        schemas.insert(key.clone(), schema);
        let reference = format!("#/components/schemas/{key}");
        one_of.push(json!({"$ref": reference}));
        mapping.insert((*name).into(), reference.into());
    }
    let mut parameters = vec![json!({
        "name": "view", "in": "query", "required": false,
        "description": "the view; none or empty is overview",
        "schema": {"type": "string", "enum": SUPPORTED_VIEWS},
    })];
    for (name, schema, about, views) in VIEW_PARAMETERS {
        parameters.push(json!({
            "name": name, "in": "query", "required": false,
            "description": format!("{about} (views: {})", views.join(", ")),
            "schema": schema(),
        }));
    }
    let api_errors = error_responses(&[
        "400", "401", "403", "404", "408", "409", "413", "415", "429", "500", "503",
    ]);
    let mut get_responses = api_errors.clone();
    get_responses.insert(
        "200".into(),
        ok_json(
            "the view, with ok = true and the broker's status",
            json!({"type": "object"}),
        ),
    );
    let mut post_responses = api_errors;
    post_responses.insert(
        "200".into(),
        ok_json(
            "the action's answer, with ok = true",
            json!({"type": "object"}),
        ),
    );
    let open: Value = json!([]);
    let probe = json!({"type": "object", "properties": {
        "ok": {"type": "boolean"}, "status": {"type": "string"}, "brokerId": {"type": "string"},
        "role": {"type": "string", "enum": ["LEADER", "FOLLOWER", "RECOVERY", "CLOSED"]},
        "lag": {"type": "integer"}, "error": {"type": "string"}}});
    let mut paths = Map::new();
    paths.insert(
        API_PATH.into(),
        json!({
            "get": {"summary": "Read a view", "operationId": "view",
                    "parameters": parameters, "responses": get_responses},
            "post": {"summary": "Carry out an action", "operationId": "action",
                     "requestBody": {"required": true, "content": {"application/json": {"schema": {
                         "oneOf": one_of,
                         "discriminator": {"propertyName": "action", "mapping": mapping}}}}},
                     "responses": post_responses},
            "options": {"summary": "CORS preflight", "operationId": "preflight", "security": open,
                        "responses": {"204": {"description": "no content"}}},
        }),
    );
    paths.insert(
        SNAPSHOT_PATH.into(),
        json!({"get": {"summary": "Download a fresh snapshot of the leader's state (admins only)",
            "operationId": "snapshot",
            "responses": {
                "200": {"description": "the snapshot file; its log position in the majordodo-snapshot-lsn header",
                        "content": {"application/octet-stream": {}}},
                "401": {"description": "no valid credentials"},
                "403": {"description": "not an admin"},
                "503": {"description": "not the leader, or no snapshot can be taken now"}}}}),
    );
    paths.insert(
        HEALTH_PATH.into(),
        json!({"get": {"summary": "Liveness: 200 while the process runs", "operationId": "health",
            "security": open, "responses": {"200": ok_json("alive", probe.clone())}}}),
    );
    paths.insert(
        READY_PATH.into(),
        json!({"get": {"summary": "Readiness: a leader, or a follower within http.ready_max_lag",
            "operationId": "ready", "security": open, "responses": {
                "200": ok_json("ready", probe.clone()),
                "503": ok_json("not ready, with the reason", probe)}}}),
    );
    paths.insert(
        METRICS_PATH.into(),
        json!({"get": {"summary": "Metrics in the Prometheus text format (access: http.metrics_access)",
            "operationId": "metrics",
            "security": [{}, {"basic": []}, {"bearer": []}],
            "responses": {
                "200": {"description": "the metrics", "content": {"text/plain": {}}},
                "401": {"description": "credentials required from this address"},
                "403": {"description": "not an admin"}}}}),
    );
    paths.insert(
        OPENAPI_PATH.into(),
        json!({"get": {"summary": "This description", "operationId": "openapi", "security": open,
            "responses": {"200": ok_json("the OpenAPI description", json!({"type": "object"}))}}}),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Majordodo broker HTTP API",
            "version": BROKER_VERSION,
            "description": "The Majordodo-compatible API at /majordodo (views by GET, actions by POST), \
                the snapshot download between brokers and the operations endpoints. See docs/http-api.md.",
        },
        "security": [{"basic": []}, {"bearer": []}],
        "components": {
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
            "schemas": schemas,
        },
        "paths": paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use majordodo_proto::http::request::SUPPORTED_ACTIONS;

    #[test]
    fn every_action_field_and_view_the_parser_accepts_is_described() {
        // Goal: the description's tables name exactly the actions and fields of the parser's
        // (request::ACTION_FIELDS, request::TASK_FIELDS) and its views (SUPPORTED_VIEWS).
        let documented: std::collections::BTreeSet<&str> =
            ACTIONS.iter().map(|(n, ..)| *n).collect();
        let parsed: std::collections::BTreeSet<&str> =
            request::ACTION_FIELDS.iter().map(|(n, _)| *n).collect();
        assert_eq!(documented, parsed, "the actions");
        for a in SUPPORTED_ACTIONS {
            assert!(documented.contains(&a), "action {a} is not described");
        }
        for (name, _, _, fields) in ACTIONS {
            let mut mine: Vec<&str> = fields.iter().map(|(f, ..)| *f).collect();
            let mut theirs = request::fields_of(name).to_vec();
            mine.sort_unstable();
            theirs.sort_unstable();
            assert_eq!(mine, theirs, "fields of {name}");
        }
        let doc = document();
        let views = &doc["paths"][API_PATH]["get"]["parameters"][0]["schema"]["enum"];
        assert_eq!(views, &json!(SUPPORTED_VIEWS));
        for (_, _, views) in VIEW_PARAMETERS.iter().map(|(n, _, a, v)| (n, a, v)) {
            for v in *views {
                assert!(SUPPORTED_VIEWS.contains(v), "parameter of unknown view {v}");
            }
        }
    }
}
