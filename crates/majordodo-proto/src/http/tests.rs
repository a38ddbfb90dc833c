//! HTTP JSON tests: arbitrary bodies and queries never panic the parsers, requests and answers
//! round-trip, numbers are read from numbers and strings alike, and each bad input names its
//! field.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use majordodo_core::TaskStatus;

fn arb_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_.-]{1,16}"
}

fn arb_submission() -> impl Strategy<Value = TaskSubmission> {
    (
        (arb_name(), arb_name(), ".{0,40}"),
        (0..=MAX_ATTEMPTS_LIMIT, 0..=MAX_ATTEMPTS_LIMIT),
        (0..=MAX_TIMESTAMP, 0..=MAX_TIMESTAMP),
        (
            proptest::option::of(arb_name()),
            proptest::option::of(arb_name()),
            proptest::option::of(arb_name()),
            proptest::option::of(".{1,40}"),
        ),
        (
            -(crate::http::MAX_PRIORITY as i32)..=(crate::http::MAX_PRIORITY as i32),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("cpu".to_string()),
                    Just("memory".to_string()),
                    "[a-z:]{1,8}"
                ],
                1u64..=majordodo_core::quota::MAX_AMOUNT,
                0..4,
            )
            .prop_map(|m| m.into_iter().filter(|(d, _)| d != "tasks").collect()),
        ),
    )
        .prop_map(
            |(
                (task_type, user_id, data),
                (max_attempts, attempt),
                (start, deadline),
                (slot, codepool, mode, idempotency_key),
                (priority, needs),
            )| {
                TaskSubmission {
                    task_type,
                    user_id,
                    data,
                    max_attempts,
                    // Valid submissions only: a preset attempt stays below maxattempts.
                    attempt: if max_attempts == 0 {
                        attempt
                    } else {
                        attempt % max_attempts
                    },
                    requested_start_time: start,
                    deadline,
                    slot,
                    codepool,
                    mode,
                    idempotency_key,
                    transaction: None,
                    priority,
                    needs,
                }
            },
        )
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::from),
        prop_oneof![
            Just("submitTask"),
            Just("submitTasks"),
            Just("tasktype"),
            Just("maxattempts"),
            Just("-1"),
            Just("0"),
            Just("99999999999999999999")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("action".to_owned()),
                    Just("tasks".to_owned()),
                    Just("tasktype".to_owned()),
                    Just("userid".to_owned()),
                    Just("maxattempts".to_owned()),
                    Just("deadline".to_owned()),
                    Just("transaction".to_owned()),
                    ".{0,8}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_action_parser(body in proptest::collection::vec(any::<u8>(), 0..256)) {
        // Goal: outside bytes give a request or a field error, never a panic.
        let _ = parse_action(&body);
    }

    #[test]
    fn arbitrary_json_never_panics_the_action_parser(value in arb_json()) {
        // Goal: any JSON shape (including near-valid ones) gives a request or a field error.
        let body = serde_json::to_vec(&value).unwrap();
        let _ = parse_action(&body);
    }

    #[test]
    fn arbitrary_queries_never_panic_the_view_parser(
        pairs in proptest::collection::vec(
            (prop_oneof![Just("view".to_owned()), Just("taskId".to_owned()), Just("max".to_owned()),
                         Just("status".to_owned()), Just("filter".to_owned()), ".{0,6}"],
             prop_oneof![Just("tasks".to_owned()), Just("task".to_owned()), Just("tasksoverview".to_owned()), ".{0,12}"]),
            0..6)
    ) {
        // Goal: any query gives a view or a field error.
        let _ = parse_view(&pairs);
    }

    #[test]
    fn submissions_round_trip_through_json(task in arb_submission()) {
        // Goal: what a client encodes is what the broker decodes.
        let req = ActionRequest::SubmitTask(task);
        let body = serde_json::to_vec(&req.to_json()).unwrap();
        prop_assert_eq!(parse_action(&body).unwrap(), req);
    }

    #[test]
    fn batches_round_trip_through_json(tasks in proptest::collection::vec(arb_submission(), 0..8)) {
        // Goal: batches keep their order and every per-task field.
        let req = ActionRequest::SubmitTasks(tasks);
        let body = serde_json::to_vec(&req.to_json()).unwrap();
        prop_assert_eq!(parse_action(&body).unwrap(), req);
    }

    #[test]
    fn numbers_as_strings_read_as_numbers(task in arb_submission()) {
        // Goal: the Java client's string numbers mean the same as JSON numbers.
        let mut obj = task.to_json();
        for k in ["maxattempts", "attempt", "requestedStartTime", "deadline"] {
            let s = obj[k].to_string();
            obj.insert(k.into(), Value::String(s));
        }
        obj.insert("action".into(), "submitTask".into());
        let body = serde_json::to_vec(&obj).unwrap();
        prop_assert_eq!(parse_action(&body).unwrap(), ActionRequest::SubmitTask(task));
    }

    #[test]
    fn task_info_round_trips(id in 1..=MAX_TASK_ID, attempts in any::<u32>(), created in any::<i64>(),
                             result in proptest::option::of(".{0,10}"), mode in proptest::option::of(arb_name())) {
        // Goal: the views' task object decodes to what was encoded, optional fields included.
        let info = TaskInfo {
            task_id: id, user_id: "u".into(), task_type: "t".into(), status: "running".into(),
            data: "d".into(), result, worker_id: Some("w".into()), slot: None, attempts,
            maxattempts: 3, deadline: 0, requested_start_time: 5, created_timestamp: created,
            mode, codepool: None, resources: Some("a,b".into()),
        };
        let text = serde_json::to_string(&info).unwrap();
        prop_assert_eq!(serde_json::from_str::<TaskInfo>(&text).unwrap(), info);
    }

    #[test]
    fn tasks_queries_round_trip(max in proptest::option::of(0u32..100_000), status in 0usize..6,
                                worker in proptest::option::of(arb_name()), from in proptest::option::of(1..=MAX_TASK_ID)) {
        // Goal: the client's query pairs parse back to the same query.
        let q = TasksQuery {
            max,
            status: if status == 5 { StatusFilter::All } else { StatusFilter::Only(TaskStatus::ALL[status]) },
            worker_id: worker,
            task_type: Some("t".into()),
            slot: None,
            user_id: Some("u".into()),
            from_task_id: from,
        };
        let pairs: Vec<(String, String)> = q.to_pairs().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        prop_assert_eq!(parse_view(&pairs).unwrap(), ViewRequest::Tasks(q));
    }
}

fn submit(v: Value) -> Result<ActionRequest, FieldError> {
    parse_action(&serde_json::to_vec(&v).unwrap())
}

fn field_of(v: Value) -> (String, String) {
    let e = submit(v).unwrap_err();
    (e.field, e.problem)
}

#[test]
fn java_client_shape_parses_with_defaults() {
    // Goal: the exact body the original Java client sends (string numbers, no attempt) parses
    // with the original's defaults.
    let req = submit(json!({
        "action": "submitTask", "userid": "u1", "tasktype": "t", "data": "x",
        "maxattempts": "0", "deadline": "1700000000000", "requestedStartTime": 1_700_000_001_000i64
    }))
    .unwrap();
    let ActionRequest::SubmitTask(t) = req else {
        panic!("single")
    };
    assert_eq!(t.max_attempts, 0);
    assert_eq!(t.attempt, 0);
    assert_eq!(t.deadline, 1_700_000_000_000);
    assert_eq!(t.requested_start_time, 1_700_000_001_000);
    let ActionRequest::SubmitTask(t) =
        submit(json!({"action": "submitTask", "userid": "u", "tasktype": "t"})).unwrap()
    else {
        panic!("single")
    };
    assert_eq!((t.max_attempts, t.attempt, t.data.as_str()), (1, 0, ""));
}

#[test]
fn bad_fields_are_named_with_their_problem() {
    // Goal: each kind of bad input names the field and says what is wrong.
    let base = || json!({"action": "submitTask", "userid": "u", "tasktype": "t"});
    let with = |k: &str, v: Value| {
        let mut b = base();
        b[k] = v;
        field_of(b)
    };
    assert_eq!(with("maxattempts", json!(-1)).0, "maxattempts");
    assert!(with("maxattempts", json!(-1)).1.contains("negative"));
    assert!(
        with("maxattempts", json!("1001"))
            .1
            .contains("at most 1000")
    );
    assert!(with("maxattempts", json!(1.5)).1.contains("integer"));
    assert!(with("maxattempts", json!("abc")).1.contains("integer"));
    assert!(with("maxattempts", json!(true)).1.contains("a boolean"));
    assert!(
        with("deadline", json!(MAX_TIMESTAMP + 1))
            .1
            .contains("at most")
    );
    assert!(
        with("deadline", json!("99999999999999999999"))
            .1
            .contains("at most")
    );
    assert!(
        with("deadline", json!("-99999999999999999999"))
            .1
            .contains("negative")
    );
    assert!(with("requestedStartTime", json!(-5)).1.contains("negative"));
    assert_eq!(
        with("tasktype", json!("")),
        ("tasktype".into(), "must not be empty".into())
    );
    assert_eq!(with("userid", json!(7)).0, "userid");
    assert_eq!(
        with("slot", json!("s".repeat(MAX_NAME_BYTES + 1))).0,
        "slot"
    );
    assert_eq!(
        with("bogus", json!(1)),
        ("bogus".into(), "is not a field of a task submission".into())
    );
    assert_eq!(with("transaction", json!(-5)).0, "transaction");
    assert!(
        with("transaction", json!("x"))
            .1
            .contains("a transaction id")
    );
    assert!(
        submit({
            let mut b = base();
            b["transaction"] = json!("0");
            b
        })
        .is_ok()
    );
    let mut missing = base();
    missing.as_object_mut().unwrap().remove("userid");
    assert_eq!(field_of(missing), ("userid".into(), "is required".into()));
}

#[test]
fn idempotency_keys_are_read_per_task_and_bad_ones_are_named() {
    // Goal: `idempotencyKey` is optional (the original's shape parses without it), kept exactly
    // as sent, read from each task of a batch, and refused when empty, too long or not a
    // string, naming the field (with its path in a batch).
    let one = |v: Value| {
        let mut b = json!({"action": "submitTask", "userid": "u", "tasktype": "t"});
        if !v.is_null() {
            b["idempotencyKey"] = v;
        }
        submit(b)
    };
    let key_of = |r: Result<ActionRequest, FieldError>| match r {
        Ok(ActionRequest::SubmitTask(t)) => t.idempotency_key,
        other => panic!("{other:?}"),
    };
    assert_eq!(key_of(one(Value::Null)), None);
    assert_eq!(key_of(one(json!(" k 1 "))), Some(" k 1 ".into()));
    let longest = "k".repeat(MAX_IDEMPOTENCY_KEY_BYTES);
    assert_eq!(key_of(one(json!(longest.clone()))), Some(longest));
    for (bad, problem) in [
        (json!(""), "must not be empty"),
        (
            json!("k".repeat(MAX_IDEMPOTENCY_KEY_BYTES + 1)),
            "at most 1024",
        ),
        (json!(12), "must be a string"),
    ] {
        let e = one(bad).unwrap_err();
        assert_eq!(e.field, "idempotencyKey");
        assert!(e.problem.contains(problem), "{e}");
    }
    let batch = submit(json!({"action": "submitTasks", "tasks": [
        {"userid": "u", "tasktype": "t", "idempotencyKey": "a"},
        {"userid": "u", "tasktype": "t"}]}))
    .unwrap();
    let ActionRequest::SubmitTasks(tasks) = batch else {
        panic!("batch")
    };
    assert_eq!(tasks[0].idempotency_key.as_deref(), Some("a"));
    assert_eq!(tasks[1].idempotency_key, None);
    let (f, _) = field_of(json!({"action": "submitTasks", "tasks": [
        {"userid": "u", "tasktype": "t", "idempotencyKey": "a"},
        {"userid": "u", "tasktype": "t", "idempotencyKey": ""}]}));
    assert_eq!(f, "tasks[1].idempotencyKey");
}

#[test]
fn batch_errors_carry_the_task_index() {
    // Goal: in submitTasks, the field path says which task is wrong.
    let (f, _) = field_of(json!({"action": "submitTasks", "tasks": [
        {"userid": "u", "tasktype": "t"}, {"userid": "u", "tasktype": "t", "maxattempts": "-2"}]}));
    assert_eq!(f, "tasks[1].maxattempts");
    assert_eq!(
        field_of(json!({"action": "submitTasks", "tasks": [1]})).0,
        "tasks[0]"
    );
    assert_eq!(field_of(json!({"action": "submitTasks"})).0, "tasks");
    assert_eq!(
        field_of(json!({"action": "submitTasks", "tasks": {}})).0,
        "tasks"
    );
    let (f, p) = field_of(json!({"action": "submitTasks", "requestedStartTime": "5", "tasks": []}));
    assert_eq!(
        (f.as_str(), p.as_str()),
        ("requestedStartTime", "must be set on each element of tasks")
    );
    let many: Vec<Value> = (0..=MAX_BATCH_TASKS)
        .map(|_| json!({"userid": "u", "tasktype": "t"}))
        .collect();
    assert_eq!(
        field_of(json!({"action": "submitTasks", "tasks": many})).0,
        "tasks"
    );
}

#[test]
fn transaction_and_cancel_actions_parse_and_bad_ids_are_named() {
    // Goal: the transaction actions and cancelTask read their id as a number or a string,
    // refuse a missing, zero, negative or malformed one and unknown fields, naming the field;
    // a submit carries its transaction (also from the outer object of submitTasks) and may
    // not combine it with an idempotency key.
    let p = |v: Value| parse_action(&serde_json::to_vec(&v).unwrap());
    assert_eq!(
        p(json!({"action": "beginTransaction"})).unwrap(),
        ActionRequest::BeginTransaction
    );
    assert_eq!(
        p(json!({"action": "commitTransaction", "transaction": "12"})).unwrap(),
        ActionRequest::CommitTransaction(12)
    );
    assert_eq!(
        p(json!({"action": "rollbackTransaction", "transaction": 3})).unwrap(),
        ActionRequest::RollbackTransaction(3)
    );
    assert_eq!(
        p(json!({"action": "cancelTask", "taskId": "9"})).unwrap(),
        ActionRequest::CancelTask(9)
    );
    for (bad, field) in [
        (json!({"action": "commitTransaction"}), "transaction"),
        (
            json!({"action": "commitTransaction", "transaction": 0}),
            "transaction",
        ),
        (
            json!({"action": "commitTransaction", "transaction": -1}),
            "transaction",
        ),
        (
            json!({"action": "rollbackTransaction", "transaction": "x"}),
            "transaction",
        ),
        (
            json!({"action": "beginTransaction", "userid": "u"}),
            "userid",
        ),
        (json!({"action": "cancelTask"}), "taskId"),
        (json!({"action": "cancelTask", "taskId": 0}), "taskId"),
        (json!({"action": "cancelTask", "taskId": "-3"}), "taskId"),
        (json!({"action": "cancelTask", "taskId": 1, "x": 1}), "x"),
        (
            json!({"action": "submitTask", "userid": "u", "tasktype": "t", "transaction": 2, "idempotencyKey": "k"}),
            "idempotencyKey",
        ),
        (
            json!({"action": "submitTasks", "transaction": 2, "tasks": [{"userid": "u", "tasktype": "t", "idempotencyKey": "k"}]}),
            "tasks[0].idempotencyKey",
        ),
    ] {
        assert_eq!(p(bad.clone()).unwrap_err().field, field, "{bad}");
    }
    let batch = p(
        json!({"action": "submitTasks", "transaction": "4", "tasks": [
            {"userid": "u", "tasktype": "t"},
            {"userid": "u", "tasktype": "t", "transaction": 5},
        ]}),
    )
    .unwrap();
    match batch {
        ActionRequest::SubmitTasks(tasks) => {
            assert_eq!(tasks[0].transaction, Some(4));
            assert_eq!(tasks[1].transaction, Some(5));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn body_and_action_problems_are_named() {
    // Goal: bodies that are not UTF-8 JSON objects, and unknown actions, are
    // refused with the field that explains it.
    assert_eq!(parse_action(b"\xff\xfe").unwrap_err().field, BODY_FIELD);
    assert_eq!(parse_action(b"{").unwrap_err().field, BODY_FIELD);
    assert_eq!(parse_action(b"[1]").unwrap_err().field, BODY_FIELD);
    assert_eq!(
        parse_action(b"{}").unwrap_err(),
        FieldError::new("action", "is required")
    );
    // Every action of the original is supported: a code pool action without its fields is
    // refused naming the missing one, not the action.
    let e = parse_action(br#"{"action":"createCodePool"}"#).unwrap_err();
    assert_eq!(e.field, "id");
    let e = parse_action(br#"{"action":"frobnicate"}"#).unwrap_err();
    assert!(e.problem.starts_with("unknown action frobnicate"), "{e}");
}

#[test]
fn a_code_pool_archive_of_blanks_is_as_empty_as_no_archive() {
    // Goal: blank base64 decodes to no bytes, so it is refused as an empty archive is (a
    // fuzzer found it accepted while "" was refused).
    for data in ["", " ", "\n\t ", "   "] {
        let body = json!({"action": "createCodePool", "id": "p", "data": data});
        let e = parse_action(body.to_string().as_bytes()).unwrap_err();
        assert_eq!(
            e,
            FieldError::new("data", "must not be empty"),
            "data {data:?}"
        );
    }
    let body = json!({"action": "createCodePool", "id": "p", "data": " AA== "});
    assert!(parse_action(body.to_string().as_bytes()).is_ok());
}

#[test]
fn views_parse_with_filters_and_refuse_bad_values() {
    // Goal: every supported view parses; bad or unsupported values name their parameter.
    let p = |pairs: &[(&str, &str)]| {
        parse_view(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(p(&[]).unwrap(), ViewRequest::Overview);
    assert_eq!(
        p(&[("view", "status"), ("_", "123")]).unwrap(),
        ViewRequest::Status
    );
    assert_eq!(
        p(&[("view", "task"), ("taskId", "42")]).unwrap(),
        ViewRequest::Task { id: 42 }
    );
    assert_eq!(
        p(&[("view", "task"), ("taskId", "0")]).unwrap_err().field,
        "taskId"
    );
    assert_eq!(
        p(&[("view", "task"), ("taskId", "-3")]).unwrap_err().field,
        "taskId"
    );
    assert_eq!(p(&[("view", "task")]).unwrap_err().field, "taskId");
    assert_eq!(
        p(&[("view", "task"), ("taskId", "x")]).unwrap_err().field,
        "taskId"
    );
    assert_eq!(
        p(&[
            ("view", "tasks"),
            ("status", "RUNNING"),
            ("workerId", ""),
            ("max", "5")
        ])
        .unwrap(),
        ViewRequest::Tasks(TasksQuery {
            max: Some(5),
            status: StatusFilter::Only(TaskStatus::Running),
            ..Default::default()
        })
    );
    assert_eq!(
        p(&[("view", "tasks"), ("max", "-1")]).unwrap_err().field,
        "max"
    );
    assert_eq!(
        p(&[("view", "tasks"), ("max", "3000000000")])
            .unwrap_err()
            .field,
        "max"
    );
    assert_eq!(
        p(&[("view", "tasks"), ("status", "sleeping")])
            .unwrap_err()
            .field,
        "status"
    );
    assert_eq!(
        p(&[("view", "tasksoverview"), ("filter", "nope")])
            .unwrap_err()
            .field,
        "filter"
    );
    assert_eq!(
        p(&[("view", "tasksheap")]).unwrap(),
        ViewRequest::TasksHeap { max: None }
    );
    assert_eq!(
        p(&[("view", "slots"), ("max", "7")]).unwrap(),
        ViewRequest::Slots { max: Some(7) }
    );
    assert_eq!(
        p(&[("view", "transactions")]).unwrap(),
        ViewRequest::Transactions { max: None }
    );
    assert_eq!(
        p(&[("view", "delayedqueue"), ("max", "-1")])
            .unwrap_err()
            .field,
        "max"
    );
    assert!(
        p(&[("view", "heap")])
            .unwrap_err()
            .problem
            .starts_with("unknown view heap")
    );
}

#[test]
fn answers_read_leniently_like_the_original_s() {
    // Goal: the client types read the original's shapes: "ok":"true", string numbers, `{}` task.
    let v: TaskView = serde_json::from_value(json!({
        "ok": "true", "task": {}, "status": {"clusterMode": "LEADER", "currentLedgerId": 3,
        "currentSequenceNumber": 9, "tasks": 0, "pendingTasks": 0, "waitingTasks": 0,
        "delayedTasks": 0, "runningTasks": 0, "errorTasks": 0, "finishedTasks": 0}
    }))
    .unwrap();
    assert!(v.ok);
    assert_eq!(v.task, None);
    let s: StatusView = serde_json::from_value(json!({
        "ok": "true", "status": "LEADER", "currentLedgerId": "3", "currentSequenceNumber": "9",
        "version": "0.23.0", "tasks": 5, "pendingtasks": 0, "runningtasks": "1", "errortasks": 0,
        "waitingtasks": 4, "finishedtasks": 0
    }))
    .unwrap();
    assert_eq!(
        (s.runningtasks, s.delayedtasks, s.current_ledger_id.as_str()),
        (1, 0, "3")
    );
    let r: SubmitTaskResponse =
        serde_json::from_value(json!({"taskId": "12", "result": null, "error": "", "ok": true}))
            .unwrap();
    assert_eq!(r.task_id, 12);
    let none = TaskView {
        ok: true,
        task: None,
        status: BrokerStatusInfo::default(),
    };
    assert_eq!(serde_json::to_value(&none).unwrap()["task"], json!({}));
}

#[test]
fn a_leader_hint_is_read_from_any_error_body() {
    // Goal: the `leader` URL is found in an error body that has it, and its absence, a wrong
    // type or a body that is not JSON give none.
    let body = br#"{"ok":false,"error":"broker_not_leader","retryable":true,"leader":"http://b:7364/majordodo"}"#;
    assert_eq!(
        LeaderHint::of_body(body).as_deref(),
        Some("http://b:7364/majordodo")
    );
    for body in [
        &br#"{"ok":false,"error":"broker_not_leader"}"#[..],
        br#"{"ok":false,"leader":7}"#,
        br#"{"leader":""}"#,
        b"<html>",
    ] {
        assert_eq!(LeaderHint::of_body(body), None);
    }
}

#[test]
fn needs_and_quotas_parse_and_bad_ones_name_their_field() {
    // Goal: cpu, memory and named needs merge into one sorted list; setQuota takes a user or a
    // group; each bad amount is refused naming the dimension's field.
    let submit = |extra: Value| {
        let mut body = json!({"action": "submitTask", "tasktype": "t", "userid": "u"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        parse_action(body.to_string().as_bytes())
    };
    let ok = submit(json!({"cpu": 500, "memory": "256", "needs": {"db:orders": 1, "zero": 0}}));
    let ActionRequest::SubmitTask(t) = ok.unwrap() else {
        panic!("not a submission")
    };
    assert_eq!(
        t.needs,
        vec![
            ("cpu".to_string(), 500),
            ("db:orders".to_string(), 1),
            ("memory".to_string(), 256)
        ]
    );
    let field = |extra: Value| submit(extra).unwrap_err().field;
    assert_eq!(field(json!({"cpu": -1})), "cpu");
    assert_eq!(field(json!({"memory": "lots"})), "memory");
    assert_eq!(field(json!({"needs": [1]})), "needs");
    assert_eq!(field(json!({"needs": {"db": -2}})), "needs.db");
    assert_eq!(field(json!({"needs": {"db": null}})), "needs.db");
    assert_eq!(field(json!({"needs": {"tasks": 1}})), "needs.tasks");
    assert_eq!(field(json!({"cpu": 1, "needs": {"cpu": 2}})), "needs.cpu");
    assert_eq!(field(json!({"needs": {"": 2}})), "needs");
    let quota = |body: Value| parse_action(body.to_string().as_bytes());
    assert_eq!(
        quota(json!({"action": "setQuota", "group": 2, "quota": {"tasks": 10, "cpu": 0}})).unwrap(),
        ActionRequest::SetQuota(request::QuotaChange {
            tenant: majordodo_core::quota::QuotaTenant::Group(2),
            quota: Some(vec![("tasks".to_string(), 10)]),
        })
    );
    let qfield = |body: Value| quota(body).unwrap_err().field;
    assert_eq!(
        qfield(json!({"action": "setQuota", "quota": {"cpu": 1}})),
        "userid"
    );
    assert_eq!(
        qfield(json!({"action": "setQuota", "userid": "a", "group": 1, "quota": {}})),
        "group"
    );
    assert_eq!(
        qfield(json!({"action": "setQuota", "group": 0, "quota": {}})),
        "group"
    );
    assert_eq!(
        qfield(json!({"action": "setQuota", "userid": "a"})),
        "quota"
    );
    assert_eq!(
        qfield(json!({"action": "setQuota", "userid": "a", "quota": {"cpu": 1}, "reset": true})),
        "quota"
    );
    assert_eq!(
        qfield(json!({"action": "setQuota", "userid": "a", "quota": {"cpu": -5}})),
        "quota.cpu"
    );
    assert_eq!(
        qfield(json!({"action": "setServiceLevel", "userid": "a", "group": 1, "weight": 0})),
        "weight"
    );
    assert_eq!(
        qfield(json!({"action": "setServiceLevel", "userid": "a", "group": 1, "weight": 10001})),
        "weight"
    );
}

#[test]
fn duplicate_keys_are_refused_naming_the_key_at_every_level() {
    // Goal: a key given twice is refused (400 naming it) instead of the last one silently
    // winning, in the body, in a task of submitTasks and inside needs.
    let e = parse_action(br#"{"action":"submitTask","userid":"a","tasktype":"t","userid":"b"}"#)
        .unwrap_err();
    assert_eq!(e.field, "userid", "{e}");
    assert!(e.problem.contains("twice"), "{e}");
    let e = parse_action(
        br#"{"action":"submitTasks","tasks":[{"userid":"a","tasktype":"t"},{"userid":"a","tasktype":"t","tasktype":"u"}]}"#,
    )
    .unwrap_err();
    assert_eq!(e.field, "tasks[1].tasktype", "{e}");
    let e = parse_action(
        br#"{"action":"submitTask","userid":"a","tasktype":"t","needs":{"db":1,"db":2}}"#,
    )
    .unwrap_err();
    assert_eq!(e.field, "needs.db", "{e}");
    let e = parse_action(br#"{"action":"submitTask","action":"submitTask"}"#).unwrap_err();
    assert_eq!(e.field, "action", "{e}");
}

#[test]
fn numeric_strings_accept_digits_only() {
    // Goal: a numeric field given as a string holds ASCII digits (and a leading minus where the
    // field is signed) and nothing else: "+3", " 3", "3 " and "٣" are refused naming the field.
    let submit = |field: &str, v: &str| {
        parse_action(
            json!({"action": "submitTask", "userid": "u", "tasktype": "t", field: v})
                .to_string()
                .as_bytes(),
        )
    };
    for bad in ["+3", " 3", "3 ", "\u{663}", "3.0", "0x3", ""] {
        let e = submit("maxattempts", bad).unwrap_err();
        assert_eq!(e.field, "maxattempts", "{bad:?}: {e}");
        let e = submit("priority", bad).unwrap_err();
        assert_eq!(e.field, "priority", "{bad:?}: {e}");
    }
    let e = submit("maxattempts", "+3").unwrap_err();
    assert!(e.problem.contains("\"+3\""), "{e}");
    let ok = submit("maxattempts", "3").unwrap();
    assert!(matches!(ok, ActionRequest::SubmitTask(t) if t.max_attempts == 3));
    let ok = submit("priority", "-3").unwrap();
    assert!(matches!(ok, ActionRequest::SubmitTask(t) if t.priority == -3));
    let e = parse_action(br#"{"action":"cancelTask","taskId":"+7"}"#).unwrap_err();
    assert_eq!(e.field, "taskId");
    assert!(
        parse_view(&[
            ("view".into(), "task".into()),
            ("taskId".into(), "+7".into())
        ])
        .is_err()
    );
}

#[test]
fn bodies_are_read_without_expansion_and_nesting_is_capped() {
    // Goal: a body whose shape would expand (many tiny values, deep nesting) is refused at the
    // first value out of bounds, naming the field, and a batch over the task limit is refused
    // while it is read.
    let deep = format!(
        r#"{{"action":"submitTask","userid":"u","tasktype":"t","needs":{}{}}}"#,
        "[".repeat(MAX_JSON_DEPTH + 2),
        "]".repeat(MAX_JSON_DEPTH + 2)
    );
    let e = parse_action(deep.as_bytes()).unwrap_err();
    assert!(e.field.starts_with("needs"), "{e}");
    assert!(e.problem.contains("nests too deep"), "{e}");
    let wide = format!(
        r#"{{"action":"setServiceLevel","userid":"u","group":1,"resources":[{}]}}"#,
        vec!["0"; MAX_JSON_VALUES + 1].join(",")
    );
    let e = parse_action(wide.as_bytes()).unwrap_err();
    assert!(e.field.starts_with("resources"), "{e}");
    assert!(e.problem.contains("too many values"), "{e}");
    // Tiny arrays in place of tasks: refused at the first one.
    let arrays = format!(
        r#"{{"action":"submitTasks","tasks":[{}]}}"#,
        vec!["[]"; 100_000].join(",")
    );
    let e = parse_action(arrays.as_bytes()).unwrap_err();
    assert_eq!(e, FieldError::new("tasks[0]", "must be an object"));
    let task = r#"{"userid":"u","tasktype":"t"}"#;
    let many = format!(
        r#"{{"action":"submitTasks","tasks":[{}]}}"#,
        vec![task; MAX_BATCH_TASKS + 1].join(",")
    );
    let e = parse_action(many.as_bytes()).unwrap_err();
    assert_eq!(e.field, "tasks", "{e}");
    let at_limit = format!(
        r#"{{"action":"submitTasks","tasks":[{}]}}"#,
        vec![task; MAX_BATCH_TASKS].join(",")
    );
    assert!(
        matches!(parse_action(at_limit.as_bytes()).unwrap(), ActionRequest::SubmitTasks(t) if t.len() == MAX_BATCH_TASKS)
    );
    // `tasks` before `action` and in another action.
    assert!(parse_action(br#"{"tasks":[],"action":"submitTasks"}"#).is_ok());
    let e = parse_action(br#"{"tasks":[],"action":"submitTask","userid":"u","tasktype":"t"}"#)
        .unwrap_err();
    assert_eq!(e.field, "tasks", "{e}");
    let e = parse_action(br#"{"action":"submitTasks","tasks":{}}"#).unwrap_err();
    assert_eq!(e.field, "tasks", "{e}");
    let e = parse_action(br#"{"action":"submitTasks","tasks":null}"#).unwrap_err();
    assert_eq!(e, FieldError::new("tasks", "is required"));
    let e = parse_action(br#"{"action":"submitTasks"} x"#).unwrap_err();
    assert_eq!(e.field, BODY_FIELD, "{e}");
}

#[test]
fn worker_credential_requests_parse_round_trip_and_name_the_bad_field() {
    // Goal: the credential actions and view parse to what `to_json` / `to_pairs` sent; bad
    // worker ids, comments and credential ids are refused naming the field.
    let parse = |body: Value| parse_action(body.to_string().as_bytes());
    for request in [
        ActionRequest::AddWorkerCredential {
            worker_id: "w-1.a:b@c_d".into(),
            comment: Some("rack 4, row 2".into()),
        },
        ActionRequest::AddWorkerCredential {
            worker_id: "w2".into(),
            comment: None,
        },
        ActionRequest::RevokeWorkerCredential {
            credential_id: "wc-0123".into(),
        },
    ] {
        assert_eq!(parse(request.to_json()).unwrap(), request);
    }
    let field = |body: Value| parse(body).unwrap_err().field;
    for (body, f) in [
        (json!({"action": "addWorkerCredential"}), "workerId"),
        (
            json!({"action": "addWorkerCredential", "workerId": ""}),
            "workerId",
        ),
        (
            json!({"action": "addWorkerCredential", "workerId": "a b"}),
            "workerId",
        ),
        (
            json!({"action": "addWorkerCredential", "workerId": "é"}),
            "workerId",
        ),
        (
            json!({"action": "addWorkerCredential", "workerId": 3}),
            "workerId",
        ),
        (
            json!({"action": "addWorkerCredential", "workerId": "w", "comment": "\n"}),
            "comment",
        ),
        (
            json!({"action": "addWorkerCredential", "workerId": "w", "secret": "x"}),
            "secret",
        ),
        (json!({"action": "revokeWorkerCredential"}), "credentialId"),
        (
            json!({"action": "revokeWorkerCredential", "credentialId": "x/y"}),
            "credentialId",
        ),
    ] {
        assert_eq!(field(body), f);
    }
    let view = ViewRequest::WorkerCredentials {
        worker_id: Some("w2".into()),
    };
    let pairs: Vec<(String, String)> = view
        .to_pairs()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert_eq!(parse_view(&pairs).unwrap(), view);
}
