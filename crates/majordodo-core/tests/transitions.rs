//! Every task transition of the state machine, as in the original Majordodo, driven through the leader as the broker
//! drives it, plus the entries' own validation.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use majordodo_core::entry::NewTask;
use majordodo_core::leader::{DEADLINE_EXPIRED, Outcome, SubmitOutcome, SubmitRequest};
use majordodo_core::{
    ApplyError, BrokerState, DefaultGroupMapper, LeaderConfig, LogEntry, TaskId, TaskStatus,
    TransactionId, WorkerCapacity, WorkerStatus,
};
use support::Sim;

fn config() -> LeaderConfig {
    LeaderConfig {
        max_worker_idle: 5_000,
        finished_task_retention: 60_000,
        ..LeaderConfig::default()
    }
}

fn status(sim: &Sim, id: TaskId) -> TaskStatus {
    sim.state().task(id).expect("task exists").status
}

#[test]
fn submitted_task_waits_then_runs_then_finishes_with_its_result() {
    // Goal: waiting → running (attempts 1, worker set) → finished with the executor's result.
    let mut sim = Sim::new(config());
    let id = sim.submit_simple("alice", "mail", 1);
    sim.flush();
    assert_eq!(status(&sim, id), TaskStatus::Waiting);
    assert_eq!(sim.state().task(id).unwrap().created, sim.now);

    sim.connect("w1", WorkerCapacity::any(4)).unwrap();
    sim.settle();
    let task = sim.state().task(id).unwrap();
    assert_eq!(task.status, TaskStatus::Running);
    assert_eq!(task.attempts, 1);
    assert_eq!(task.worker_id.as_deref(), Some("w1"));
    assert_eq!(sim.running_of("w1"), vec![(id, 1)]);

    sim.report("w1", id, 1, Outcome::Finished, "sent");
    sim.flush();
    let task = sim.state().task(id).unwrap();
    assert_eq!(task.status, TaskStatus::Finished);
    assert_eq!(task.result.as_deref(), Some("sent"));
    sim.state().check_invariants().unwrap();
}

#[test]
fn task_submitted_to_an_idle_worker_is_created_and_assigned_in_one_write() {
    // Goal: with nothing waiting, a submission is placed directly: its creation and its
    // assignment travel in the same batch (one fsync from submission to execution).
    let mut sim = Sim::new(config());
    sim.connect("w1", WorkerCapacity::any(1)).unwrap();
    sim.flush();
    let req = || SubmitRequest {
        task_type: "t".into(),
        user_id: "u".into(),
        max_attempts: 1,
        ..Default::default()
    };
    let (first, batch) = sim.submit_in_round(req());
    let SubmitOutcome::Accepted(first) = first else {
        panic!("accepted")
    };
    assert!(matches!(batch[0], LogEntry::AddTask(_)));
    assert!(
        matches!(&batch[1], LogEntry::AssignTask { task_id, attempt: 1, .. } if *task_id == first),
        "{batch:?}"
    );
    // The worker is full: the next one waits in the queue, and so does a third one submitted
    // while the second is still in flight, behind it.
    let (_, batch) = sim.submit_in_round(req());
    assert_eq!(batch.len(), 1, "queued, not placed");
    sim.flush();
    assert_eq!(sim.running_of("w1"), vec![(first, 1)]);
    assert_eq!(sim.state().waiting_index().len(), 1);
    sim.report("w1", first, 1, Outcome::Finished, "ok");
    let (third, batch) = sim.submit_in_round(req());
    assert_eq!(
        batch.len(),
        1,
        "an older task waits: the new one queues behind it"
    );
    let SubmitOutcome::Accepted(third) = third else {
        panic!("accepted")
    };
    sim.settle();
    let second = TaskId(first.0 + 1);
    assert_eq!(
        sim.running_of("w1"),
        vec![(second, 1)],
        "the older task runs first"
    );
    assert_eq!(status(&sim, third), TaskStatus::Waiting);
}

#[test]
fn failed_attempt_is_retried_while_attempts_remain() {
    // Goal: an error with attempts left puts the task back to waiting (result kept), it runs again
    // as attempt 2 and can finish.
    let mut sim = Sim::new(config());
    let id = sim.submit_simple("u", "t", 0);
    sim.connect("w1", WorkerCapacity::any(1)).unwrap();
    sim.settle();
    sim.report("w1", id, 1, Outcome::Error, "boom");
    sim.flush();
    let task = sim.state().task(id).unwrap();
    assert_eq!(task.status, TaskStatus::Waiting);
    assert_eq!(task.result.as_deref(), Some("boom"));
    sim.settle();
    assert_eq!(sim.running_of("w1"), vec![(id, 2)]);
    sim.report("w1", id, 2, Outcome::Finished, "ok");
    sim.flush();
    assert_eq!(status(&sim, id), TaskStatus::Finished);
}

#[test]
fn at_most_once_task_ends_in_error_on_first_failure() {
    // Goal: maxattempts 1 means one execution only.
    let mut sim = Sim::new(config());
    let id = sim.submit_simple("u", "t", 1);
    sim.connect("w1", WorkerCapacity::any(1)).unwrap();
    sim.settle();
    sim.report("w1", id, 1, Outcome::Error, "boom");
    sim.settle();
    let task = sim.state().task(id).unwrap();
    assert_eq!(task.status, TaskStatus::Error);
    assert_eq!(task.result.as_deref(), Some("boom"));
    assert!(sim.running_of("w1").is_empty());
}

#[test]
fn task_with_five_attempts_errors_after_the_fifth_failure() {
    // Goal: maxattempts N allows exactly N executions (as the original's TaskExecutionRecoveryTooManyErrorsTest).
    let mut sim = Sim::new(config());
    let id = sim.submit_simple("u", "t", 5);
    sim.connect("w1", WorkerCapacity::any(1)).unwrap();
    for attempt in 1..=5 {
        sim.settle();
        assert_eq!(sim.running_of("w1"), vec![(id, attempt)]);
        sim.report("w1", id, attempt, Outcome::Error, "fail");
    }
    sim.settle();
    assert_eq!(status(&sim, id), TaskStatus::Error);
    assert_eq!(sim.state().task(id).unwrap().attempts, 5);
}

#[test]
fn failure_after_the_deadline_is_final() {
    // Goal: a failing attempt is not retried once the deadline passed.
    let mut sim = Sim::new(config());
    let deadline = sim.now + 1_000;
    let SubmitOutcome::Accepted(id) = sim.submit(SubmitRequest {
        task_type: "t".into(),
        user_id: "u".into(),
        deadline,
        ..Default::default()
    }) else {
        panic!("accepted")
    };
    sim.connect("w1", WorkerCapacity::any(1)).unwrap();
    sim.settle();
    sim.advance(2_000);
    sim.report("w1", id, 1, Outcome::Error, "late");
    sim.flush();
    assert_eq!(status(&sim, id), TaskStatus::Error);
}

#[test]
fn waiting_task_past_its_deadline_expires_and_frees_its_slot() {
    // Goal: deadline expiry sets error `deadline_expired`, removes it from the queues, frees the slot.
    let mut sim = Sim::new(config());
    let SubmitOutcome::Accepted(id) = sim.submit(SubmitRequest {
        task_type: "t".into(),
        user_id: "u".into(),
        deadline: sim.now + 500,
        slot: Some("s1".into()),
        ..Default::default()
    }) else {
        panic!("accepted")
    };
    sim.flush();
    assert_eq!(sim.leader.next_timer(), Some(sim.now + 500));
    sim.advance(500);
    sim.tick();
    sim.flush();
    let task = sim.state().task(id).unwrap();
    assert_eq!(task.status, TaskStatus::Error);
    assert_eq!(task.result.as_deref(), Some(DEADLINE_EXPIRED));
    assert!(sim.state().waiting_index().is_empty());
    assert_eq!(sim.state().slot_holder("s1"), None);
    // An expired task is never assigned.
    sim.connect("w1", WorkerCapacity::any(1)).unwrap();
    sim.settle();
    assert!(sim.running_of("w1").is_empty());
}

#[test]
fn delayed_task_becomes_waiting_at_its_start_time_and_keeps_its_slot() {
    // Goal: a future start time makes the task delayed (slot held), then waiting at that time.
    let mut sim = Sim::new(config());
    let start = sim.now + 10_000;
    let SubmitOutcome::Accepted(id) = sim.submit(SubmitRequest {
        task_type: "t".into(),
        user_id: "u".into(),
        requested_start_time: start,
        slot: Some("s".into()),
        ..Default::default()
    }) else {
        panic!("accepted")
    };
    sim.connect("w1", WorkerCapacity::any(1)).unwrap();
    sim.settle();
    assert_eq!(status(&sim, id), TaskStatus::Delayed);
    assert!(
        sim.running_of("w1").is_empty(),
        "a delayed task does not run"
    );
    let again = sim.submit(SubmitRequest {
        task_type: "t".into(),
        user_id: "u".into(),
        slot: Some("s".into()),
        ..Default::default()
    });
    assert_eq!(
        again,
        SubmitOutcome::NotCreated("slot s already assigned".into())
    );
    assert_eq!(sim.leader.next_timer(), Some(start));
    sim.advance(10_000);
    sim.settle();
    assert_eq!(status(&sim, id), TaskStatus::Running);
}

#[test]
fn delayed_task_whose_deadline_passes_first_is_not_resumed() {
    // Goal: fixes the original's resurrection of expired delayed tasks.
    let mut sim = Sim::new(config());
    let SubmitOutcome::Accepted(id) = sim.submit(SubmitRequest {
        task_type: "t".into(),
        user_id: "u".into(),
        requested_start_time: sim.now + 2_000,
        deadline: sim.now + 1_000,
        ..Default::default()
    }) else {
        panic!("accepted")
    };
    sim.flush();
    sim.advance(5_000);
    sim.settle();
    let task = sim.state().task(id).unwrap();
    assert_eq!(task.status, TaskStatus::Error);
    assert_eq!(task.result.as_deref(), Some(DEADLINE_EXPIRED));
    assert_eq!(sim.state().delayed().count(), 0);
}

#[test]
fn busy_slot_refuses_a_second_task_until_the_first_ends() {
    // Goal: slot semantics: task id 0 with `slot <name> already assigned`, released at the end.
    let mut sim = Sim::new(config());
    let req = || SubmitRequest {
        task_type: "t".into(),
        user_id: "u".into(),
        slot: Some("lock".into()),
        max_attempts: 1,
        ..Default::default()
    };
    let SubmitOutcome::Accepted(first) = sim.submit(req()) else {
        panic!("accepted")
    };
    // Still in flight: the reservation already holds the slot.
    assert_eq!(
        sim.submit(req()),
        SubmitOutcome::NotCreated("slot lock already assigned".into())
    );
    sim.connect("w1", WorkerCapacity::any(1)).unwrap();
    sim.settle();
    assert!(matches!(sim.submit(req()), SubmitOutcome::NotCreated(_)));
    sim.report("w1", first, 1, Outcome::Error, "x");
    sim.flush();
    assert_eq!(status(&sim, first), TaskStatus::Error);
    assert!(matches!(sim.submit(req()), SubmitOutcome::Accepted(_)));
}

#[test]
fn dead_worker_tasks_are_retried_with_worker_died_result() {
    // Goal: a worker gone for longer than the idle time is declared dead; its tasks go back to
    // waiting (attempts left) or error (none left) with result `worker <id> died`.
    let mut sim = Sim::new(config());
    let retry = sim.submit_simple("u", "t", 0);
    let once = sim.submit_simple("u", "t", 1);
    sim.connect("w1", WorkerCapacity::any(2)).unwrap();
    sim.settle();
    assert_eq!(sim.running_of("w1").len(), 2);
    sim.crash("w1");
    sim.flush();
    assert_eq!(
        sim.state().worker("w1").unwrap().status,
        WorkerStatus::Disconnected
    );
    assert_eq!(status(&sim, retry), TaskStatus::Running, "not dead yet");
    sim.advance(4_999);
    sim.tick();
    sim.flush();
    assert_eq!(
        status(&sim, retry),
        TaskStatus::Running,
        "still within the idle time"
    );
    sim.advance(1);
    sim.tick();
    sim.flush();
    assert_eq!(sim.state().worker("w1").unwrap().status, WorkerStatus::Dead);
    let r = sim.state().task(retry).unwrap();
    assert_eq!(r.status, TaskStatus::Waiting);
    assert_eq!(r.result.as_deref(), Some("worker w1 died"));
    let o = sim.state().task(once).unwrap();
    assert_eq!(o.status, TaskStatus::Error);
    assert_eq!(o.result.as_deref(), Some("worker w1 died"));
    // Another worker picks the retried task up as attempt 2.
    sim.connect("w2", WorkerCapacity::any(2)).unwrap();
    sim.settle();
    assert_eq!(sim.running_of("w2"), vec![(retry, 2)]);
    sim.state().check_invariants().unwrap();
}

#[test]
fn reconnecting_worker_keeps_listed_tasks_and_loses_the_others() {
    // Goal: reconciliation: tasks the worker lists keep running (their result is accepted later),
    // tasks it does not list fail as `worker <id> died`.
    let mut sim = Sim::new(config());
    let kept = sim.submit_simple("u", "t", 0);
    let lost = sim.submit_simple("u", "t", 0);
    sim.connect("w1", WorkerCapacity::any(2)).unwrap();
    sim.settle();
    sim.disconnect("w1");
    sim.workers.get_mut("w1").unwrap().remove(&(lost, 1));
    sim.advance(1_000);
    sim.connect("w1", WorkerCapacity::any(1)).unwrap();
    sim.flush();
    assert_eq!(status(&sim, kept), TaskStatus::Running);
    let l = sim.state().task(lost).unwrap();
    assert_eq!(l.status, TaskStatus::Waiting);
    assert_eq!(l.result.as_deref(), Some("worker w1 died"));
    sim.report("w1", kept, 1, Outcome::Finished, "done");
    sim.settle();
    assert_eq!(status(&sim, kept), TaskStatus::Finished);
}

#[test]
fn stale_and_duplicate_reports_are_ignored() {
    // Goal: a report for an old attempt, from another worker, or repeated, changes nothing.
    let mut sim = Sim::new(config());
    let id = sim.submit_simple("u", "t", 0);
    sim.connect("w1", WorkerCapacity::any(1)).unwrap();
    sim.connect("w2", WorkerCapacity::any(0)).unwrap();
    sim.settle();
    sim.report("w1", id, 1, Outcome::Error, "e1");
    sim.settle();
    assert_eq!(sim.running_of("w1"), vec![(id, 2)]);
    let before = sim.log.len();
    sim.report("w1", id, 1, Outcome::Finished, "late");
    sim.report("w2", id, 2, Outcome::Finished, "wrong worker");
    assert!(sim.inflight.is_empty(), "no entry for ignored reports");
    sim.report("w1", id, 2, Outcome::Finished, "ok");
    sim.report("w1", id, 2, Outcome::Finished, "duplicate while in flight");
    sim.flush();
    assert_eq!(sim.log.len(), before + 1);
    assert_eq!(sim.state().task(id).unwrap().result.as_deref(), Some("ok"));
}

#[test]
fn reports_are_accepted_only_from_the_connection_holding_the_assignment() {
    // Goal: a report arriving on a replaced connection of the worker, or on another worker's
    // connection, changes nothing; the same report on the holder's connection is accepted.
    let mut sim = Sim::new(config());
    let id = sim.submit_simple("u", "t", 0);
    sim.connect("w1", WorkerCapacity::any(1)).unwrap();
    sim.connect("w2", WorkerCapacity::any(0)).unwrap();
    sim.settle();
    let old = sim.conns["w1"].id;
    let other = sim.conns["w2"].id;
    // The same process reconnects (listing the task): the old connection is replaced.
    sim.connect("w1", WorkerCapacity::any(1)).unwrap();
    sim.flush();
    let current = sim.conns["w1"].id;
    assert_ne!(old, current);
    assert!(!sim.leader.holds_assignments("w1", old));
    assert!(!sim.leader.holds_assignments("w1", other));
    assert!(sim.leader.holds_assignments("w1", current));
    let report = |result: &str| majordodo_core::leader::FinishReport {
        task_id: id,
        attempt: 1,
        outcome: Outcome::Finished,
        result: result.into(),
    };
    let before = sim.state().clone();
    for conn in [old, other, 0] {
        let entries = sim
            .leader
            .finish_reports(sim.now, "w1", conn, &[report("forged")]);
        assert!(entries.is_empty(), "conn {conn}: {entries:?}");
    }
    // w2 on its own connection, reporting w1's attempt.
    assert!(!sim.leader.may_report("w2", other, &[report("forged")]));
    let entries = sim
        .leader
        .finish_reports(sim.now, "w2", other, &[report("forged")]);
    assert!(entries.is_empty(), "{entries:?}");
    assert!(*sim.state() == before);
    assert_eq!(status(&sim, id), TaskStatus::Running);
    let entries = sim
        .leader
        .finish_reports(sim.now, "w1", current, &[report("done")]);
    assert_eq!(entries.len(), 1);
    sim.push(entries);
    sim.flush();
    assert_eq!(
        sim.state().task(id).unwrap().result.as_deref(),
        Some("done")
    );
}

#[test]
fn second_process_with_the_same_worker_id_is_refused_while_the_first_is_connected() {
    // Goal: one live connection per worker id; the same process may replace its connection.
    let mut sim = Sim::new(config());
    sim.connect("w1", WorkerCapacity::any(1)).unwrap();
    sim.flush();
    let err = sim
        .leader
        .worker_connected(
            sim.now,
            majordodo_core::leader::WorkerHello {
                conn: 99,
                worker_id: "w1".into(),
                process_id: "another".into(),
                location: String::new(),
                capacity: WorkerCapacity::any(1),
                running: vec![],
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("already connected"), "{err}");
    // The same process reconnecting replaces its old connection.
    let old = sim.conns.get("w1").unwrap().id;
    let admission = sim
        .leader
        .worker_connected(
            sim.now,
            majordodo_core::leader::WorkerHello {
                conn: 100,
                worker_id: "w1".into(),
                process_id: "w1-process".into(),
                location: String::new(),
                capacity: WorkerCapacity::any(1),
                running: vec![],
            },
        )
        .unwrap();
    assert_eq!(admission.replaced, Some(old));
}

#[test]
fn ended_tasks_are_purged_after_the_retention_through_the_log() {
    // Goal: purging is an entry, so a replay does not bring purged tasks back.
    let mut sim = Sim::new(config());
    let id = sim.submit_simple("u", "t", 1);
    sim.connect("w1", WorkerCapacity::any(1)).unwrap();
    sim.settle();
    sim.report("w1", id, 1, Outcome::Finished, "r");
    sim.flush();
    sim.advance(59_999);
    sim.settle();
    assert!(sim.state().task(id).is_some());
    sim.advance(1);
    sim.settle();
    assert!(sim.state().task(id).is_none());
    assert!(sim.replay().task(id).is_none());
    assert_eq!(sim.replay(), *sim.state());
}

fn new_task(id: u64, slot: Option<&str>, created: i64, start: i64) -> NewTask {
    NewTask {
        id: TaskId(id),
        task_type: "t".into(),
        user_id: "u".into(),
        data: "d".into(),
        max_attempts: 1,
        attempts: 0,
        requested_start_time: start,
        deadline: 0,
        slot: slot.map(str::to_string),
        codepool: None,
        mode: None,
        created,
        idempotency_key: None,
        priority: 0,
        needs: Vec::new(),
    }
}

#[test]
fn transaction_tasks_are_invisible_until_commit_and_rollback_frees_slots() {
    // Goal: prepared tasks hold their slot but are not tasks until commit; rollback discards them.
    let mut s = BrokerState::new(Arc::new(DefaultGroupMapper));
    let tx = TransactionId(1);
    s.apply(
        1,
        LogEntry::BeginTransaction {
            transaction_id: tx,
            timestamp: 10,
            owner: None,
        },
    )
    .unwrap();
    s.apply(
        2,
        LogEntry::PrepareAddTask {
            transaction_id: tx,
            task: new_task(1, Some("a"), 10, 0),
        },
    )
    .unwrap();
    s.apply(
        3,
        LogEntry::PrepareAddTask {
            transaction_id: tx,
            task: new_task(2, None, 10, 50),
        },
    )
    .unwrap();
    assert_eq!(s.task_count(), 0);
    assert_eq!(s.slot_holder("a"), Some(TaskId(1)));
    let clash = LogEntry::AddTask(new_task(3, Some("a"), 11, 0));
    assert!(matches!(
        s.apply(4, clash),
        Err(ApplyError::SlotBusy { .. })
    ));
    s.apply(
        4,
        LogEntry::CommitTransaction {
            transaction_id: tx,
            timestamp: 12,
        },
    )
    .unwrap();
    assert_eq!(s.task(TaskId(1)).unwrap().status, TaskStatus::Waiting);
    assert_eq!(s.task(TaskId(2)).unwrap().status, TaskStatus::Delayed);
    assert_eq!(s.slot_holder("a"), Some(TaskId(1)));

    let tx2 = TransactionId(2);
    s.apply(
        5,
        LogEntry::BeginTransaction {
            transaction_id: tx2,
            timestamp: 13,
            owner: None,
        },
    )
    .unwrap();
    s.apply(
        6,
        LogEntry::PrepareAddTask {
            transaction_id: tx2,
            task: new_task(4, Some("b"), 13, 0),
        },
    )
    .unwrap();
    s.apply(
        7,
        LogEntry::RollbackTransaction {
            transaction_id: tx2,
            timestamp: 14,
        },
    )
    .unwrap();
    assert_eq!(s.slot_holder("b"), None);
    assert!(s.task(TaskId(4)).is_none());
    assert_eq!(s.max_transaction_id(), 2);
    assert_eq!(s.max_task_id(), 4);
    s.check_invariants().unwrap();
}

#[test]
fn code_pools_are_created_once_and_deleted() {
    // Goal: create fails on an existing id, delete fails on a missing one.
    let mut s = BrokerState::default();
    let create = LogEntry::CreateCodePool {
        id: "p".into(),
        timestamp: 1,
        ttl: 0,
        data: vec![1, 2],
    };
    s.apply(1, create.clone()).unwrap();
    assert!(matches!(
        s.apply(2, create),
        Err(ApplyError::CodePool { .. })
    ));
    s.apply(
        2,
        LogEntry::DeleteCodePool {
            id: "p".into(),
            timestamp: 2,
        },
    )
    .unwrap();
    assert!(
        s.apply(
            3,
            LogEntry::DeleteCodePool {
                id: "p".into(),
                timestamp: 3
            }
        )
        .is_err()
    );
}

#[test]
fn refused_entries_leave_the_state_unchanged() {
    // Goal: apply validates before it mutates, and positions only increase.
    let mut s = BrokerState::default();
    s.apply(
        1,
        LogEntry::AddTask(NewTask {
            idempotency_key: Some("k".into()),
            ..new_task(1, None, 1, 0)
        }),
    )
    .unwrap();
    let before = s.clone();
    let bad = [
        LogEntry::AddTask(new_task(1, None, 1, 0)),
        LogEntry::AddTask(NewTask {
            idempotency_key: Some("k".into()),
            ..new_task(2, None, 1, 0)
        }),
        LogEntry::AssignTask {
            task_id: TaskId(1),
            worker_id: "w".into(),
            attempt: 5,
            resources: vec![],
            timestamp: 2,
        },
        LogEntry::AssignTask {
            task_id: TaskId(9),
            worker_id: "w".into(),
            attempt: 1,
            resources: vec![],
            timestamp: 2,
        },
        LogEntry::TaskStatusChange {
            task_id: TaskId(1),
            status: TaskStatus::Finished,
            attempt: 0,
            worker_id: None,
            result: None,
            timestamp: 2,
        },
        LogEntry::WorkerDied {
            worker_id: "nobody".into(),
            timestamp: 2,
        },
        LogEntry::CommitTransaction {
            transaction_id: TransactionId(7),
            timestamp: 2,
        },
        LogEntry::PurgeTasks {
            task_ids: vec![TaskId(1)],
            timestamp: 2,
        },
    ];
    for entry in bad {
        let kind = entry.kind();
        assert!(s.apply(2, entry).is_err(), "{kind} must be refused");
        assert_eq!(s, before, "{kind} changed the state");
    }
    assert!(matches!(
        s.apply(1, LogEntry::Noop { timestamp: 3 }),
        Err(ApplyError::OutOfOrder { .. })
    ));
}

#[test]
fn snapshot_round_trip_rebuilds_every_index() {
    // Goal: a state rebuilt from its snapshot equals it, indexes included.
    let mut sim = Sim::new(config());
    let mut caps = BTreeMap::new();
    caps.insert("t".to_string(), 1);
    for i in 0..20 {
        sim.submit(SubmitRequest {
            task_type: if i % 2 == 0 { "t".into() } else { "x".into() },
            user_id: format!("{}", i % 3),
            idempotency_key: (i % 3 == 0).then(|| format!("key{i}")),
            slot: (i % 5 == 0).then(|| format!("slot{i}")),
            deadline: if i % 4 == 0 { sim.now + 100_000 } else { 0 },
            requested_start_time: if i % 7 == 0 { sim.now + 50_000 } else { 0 },
            ..Default::default()
        });
    }
    sim.connect(
        "w1",
        WorkerCapacity {
            max_threads: 3,
            max_threads_by_task_type: caps,
            groups: vec![0],
            ..WorkerCapacity::default()
        },
    )
    .unwrap();
    sim.settle();
    let running = sim.running_of("w1");
    sim.report("w1", running[0].0, running[0].1, Outcome::Finished, "r");
    sim.flush();
    let snap = sim.state().to_snapshot();
    assert_eq!(snap.idempotency_keys.len(), 7);
    let rebuilt = BrokerState::from_snapshot(snap.clone(), Arc::new(DefaultGroupMapper)).unwrap();
    assert_eq!(rebuilt, *sim.state());
    assert_eq!(rebuilt.to_snapshot(), snap);
}

#[test]
fn workers_shown_connected_when_a_leader_takes_over_are_logged_disconnected() {
    // Goal: no worker can be connected to a leader that just started, so the first tick logs
    // the disconnection of workers the state still shows connected (the previous broker
    // stopped before logging it), except those that reconnected first.
    let mut sim = Sim::new(config());
    sim.connect("w1", WorkerCapacity::any(1)).unwrap();
    sim.connect("w2", WorkerCapacity::any(1)).unwrap();
    sim.flush();
    let state = sim.state().clone();
    let mut leader = majordodo_core::Leader::new(state, config(), sim.now);
    assert_eq!(
        leader.next_timer(),
        Some(sim.now),
        "the first tick is due at once"
    );
    leader
        .worker_connected(
            sim.now,
            majordodo_core::leader::WorkerHello {
                conn: 50,
                worker_id: "w2".into(),
                process_id: "w2-process".into(),
                location: String::new(),
                capacity: WorkerCapacity::any(1),
                running: vec![],
            },
        )
        .unwrap();
    let entries = leader.tick(sim.now);
    let disconnected: Vec<&str> = entries
        .iter()
        .filter_map(|e| match e {
            majordodo_core::LogEntry::WorkerDisconnected { worker_id, .. } => {
                Some(worker_id.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(disconnected, vec!["w1"]);
    assert!(leader.tick(sim.now).is_empty(), "logged once");
}

#[test]
fn task_ids_are_never_reused_after_the_highest_task_is_purged() {
    // Goal: a new leader (after a replay, or from a snapshot) allocates above every id ever
    // handed out, even when the task with the highest id is gone.
    let mut sim = Sim::new(config());
    sim.submit_simple("u", "t", 1);
    let last = sim.submit_simple("u", "t", 1);
    sim.connect("w1", WorkerCapacity::any(2)).unwrap();
    sim.settle();
    for (task, attempt) in sim.running_of("w1") {
        sim.report("w1", task, attempt, Outcome::Finished, "ok");
    }
    sim.flush();
    sim.advance(60_000);
    sim.settle();
    assert!(
        sim.state().task(last).is_none(),
        "the highest task was purged"
    );
    for state in [
        sim.replay(),
        BrokerState::from_snapshot(sim.state().to_snapshot(), Arc::new(DefaultGroupMapper))
            .unwrap(),
    ] {
        let mut leader = majordodo_core::Leader::new(state, config(), sim.now);
        let (outcome, _) = leader.submit(
            sim.now,
            SubmitRequest {
                task_type: "t".into(),
                user_id: "u".into(),
                max_attempts: 1,
                ..Default::default()
            },
        );
        assert_eq!(outcome, SubmitOutcome::Accepted(TaskId(last.0 + 1)));
    }
}

fn keyed(user: &str, key: &str) -> SubmitRequest {
    SubmitRequest {
        task_type: "t".into(),
        user_id: user.into(),
        data: format!("{user}/{key}"),
        max_attempts: 1,
        idempotency_key: Some(key.into()),
        ..Default::default()
    }
}

fn accepted(outcome: SubmitOutcome) -> TaskId {
    match outcome {
        SubmitOutcome::Accepted(id) => id,
        SubmitOutcome::NotCreated(why) => panic!("not created: {why}"),
    }
}

#[test]
fn a_submission_with_a_known_key_is_answered_with_the_first_task_and_logs_nothing() {
    // Goal: once a keyed task is applied, the same key of the same user gets that task's id
    // and no entry, whatever the rest of the request says.
    let mut sim = Sim::new(config());
    let first = accepted(sim.submit(keyed("alice", "k1")));
    sim.flush();
    let log_len = sim.log.len();
    let (outcome, entry) = sim.leader.submit(
        sim.now,
        SubmitRequest {
            data: "different payload".into(),
            ..keyed("alice", "k1")
        },
    );
    assert_eq!(outcome, SubmitOutcome::Accepted(first));
    assert_eq!(entry, None, "nothing is logged for a known key");
    assert_eq!(sim.log.len(), log_len);
    assert_eq!(sim.state().task_count(), 1);
    assert_eq!(
        sim.state().idempotency_key("alice", "k1"),
        Some((first, sim.now))
    );
    // A submission without a key is never deduplicated.
    let other = sim.submit(SubmitRequest {
        idempotency_key: None,
        ..keyed("alice", "k1")
    });
    assert_ne!(other, SubmitOutcome::Accepted(first));
}

#[test]
fn a_key_in_flight_is_answered_with_its_task_also_within_one_batch() {
    // Goal: a key whose creation is not durable yet (same batch, or an earlier batch still in
    // flight) is answered with the task being created; one task is created per key.
    let mut sim = Sim::new(config());
    let (a, entry_a) = sim.leader.submit(sim.now, keyed("u", "same"));
    let (b, entry_b) = sim.leader.submit(sim.now, keyed("u", "same"));
    assert_eq!(a, b, "the same key twice in one batch gives the same id");
    assert!(entry_a.is_some() && entry_b.is_none());
    sim.push(entry_a.into_iter().collect());
    // The batch is still in flight: a retry is answered with the same task.
    assert_eq!(sim.submit(keyed("u", "same")), a);
    sim.flush();
    assert_eq!(sim.submit(keyed("u", "same")), a);
    sim.flush();
    assert_eq!(sim.state().task_count(), 1);
    assert!(!sim.leader.has_pending());
}

#[test]
fn keys_are_scoped_by_user() {
    // Goal: two users choosing the same key get two tasks; neither sees the other's.
    let mut sim = Sim::new(config());
    let alice = accepted(sim.submit(keyed("alice", "order-1")));
    let bob = accepted(sim.submit(keyed("bob", "order-1")));
    assert_ne!(alice, bob);
    sim.flush();
    assert_eq!(
        sim.submit(keyed("bob", "order-1")),
        SubmitOutcome::Accepted(bob)
    );
    assert_eq!(sim.state().idempotency_key_count(), 2);
}

#[test]
fn keys_outlive_a_purge_and_are_forgotten_through_the_log_after_the_window() {
    // Goal: a key is kept for the window from its task's creation even when the task is
    // purged earlier; the leader's timer knows when the window ends, forgets the key with a
    // logged entry, and only then does the same key create a new task. Replay agrees.
    let config = LeaderConfig {
        finished_task_retention: 10_000,
        idempotency_window: 30_000,
        ..config()
    };
    let mut sim = Sim::new(config);
    let created = sim.now;
    let first = accepted(sim.submit(keyed("u", "k")));
    sim.connect("w1", WorkerCapacity::any(1)).unwrap();
    sim.settle();
    sim.report("w1", first, 1, Outcome::Finished, "done");
    sim.flush();
    sim.advance(10_000);
    sim.settle();
    assert!(sim.state().task(first).is_none(), "purged after retention");
    assert_eq!(
        sim.submit(keyed("u", "k")),
        SubmitOutcome::Accepted(first),
        "the key outlives its task"
    );
    assert_eq!(sim.leader.next_timer(), Some(created + 30_000));
    sim.now = created + 30_000 - 1;
    assert!(
        !sim.leader
            .tick(sim.now)
            .iter()
            .any(|e| matches!(e, LogEntry::ForgetIdempotencyKeys { .. })),
        "not before the window ends"
    );
    sim.now = created + 30_000;
    let entries = sim.leader.tick(sim.now);
    assert_eq!(
        entries,
        vec![LogEntry::ForgetIdempotencyKeys {
            created_before: created + 1,
            timestamp: sim.now,
        }]
    );
    assert_eq!(sim.leader.next_timer(), None, "nothing else to forget");
    assert!(sim.leader.tick(sim.now).is_empty(), "decided once");
    sim.push(entries);
    sim.flush();
    assert_eq!(sim.state().idempotency_key("u", "k"), None);
    let second = accepted(sim.submit(keyed("u", "k")));
    assert!(second > first);
    sim.flush();
    assert_eq!(sim.replay(), *sim.state());
}

#[test]
fn forgetting_keys_is_bounded_per_round() {
    // Goal: at most max_timer_changes_per_round keys are forgotten by one entry, the next
    // tick goes on where the entry in flight stops, and a millisecond holding more keys than
    // the budget is forgotten whole rather than never.
    let config = LeaderConfig {
        max_timer_changes_per_round: 3,
        idempotency_window: 1_000,
        ..config()
    };
    let mut sim = Sim::new(config);
    let start = sim.now;
    for i in 0..5 {
        sim.submit(keyed("u", &format!("same-ms-{i}")));
    }
    for i in 0..4 {
        sim.advance(1);
        sim.submit(keyed("u", &format!("later-{i}")));
    }
    sim.flush();
    assert_eq!(sim.state().idempotency_key_count(), 9);
    sim.now = start + 10_000;
    let first = sim.leader.tick(sim.now);
    assert_eq!(
        first,
        vec![LogEntry::ForgetIdempotencyKeys {
            created_before: start + 1,
            timestamp: sim.now
        }],
        "the five keys of one millisecond go together"
    );
    let second = sim.leader.tick(sim.now);
    assert_eq!(
        second,
        vec![LogEntry::ForgetIdempotencyKeys {
            created_before: start + 4,
            timestamp: sim.now
        }],
        "then three more, after the entry in flight"
    );
    sim.push(first);
    sim.push(second);
    sim.flush();
    assert_eq!(sim.state().idempotency_key_count(), 1);
    assert!(sim.state().idempotency_key("u", "later-3").is_some());
    let third = sim.leader.tick(sim.now);
    sim.push(third);
    sim.flush();
    assert_eq!(sim.state().idempotency_key_count(), 0);
    assert!(!sim.leader.has_pending());
    assert_eq!(sim.replay(), *sim.state());
}

#[test]
fn a_zero_window_keeps_keys_forever() {
    // Goal: with idempotency_window 0 no key is ever forgotten and no timer is set for keys.
    let config = LeaderConfig {
        idempotency_window: 0,
        finished_task_retention: 0,
        ..config()
    };
    let mut sim = Sim::new(config);
    let first = accepted(sim.submit(keyed("u", "k")));
    sim.flush();
    assert_eq!(sim.leader.next_timer(), None);
    sim.advance(1_000_000_000);
    assert!(sim.leader.tick(sim.now).is_empty());
    assert_eq!(sim.submit(keyed("u", "k")), SubmitOutcome::Accepted(first));
}

#[test]
fn cancelled_running_attempt_keeps_its_worker_capacity_until_the_worker_reports_it() {
    // Goal: a running task cancelled ends in error `cancelled` at once; the cancellation is
    // handed out for its worker; until the worker reports the attempt ended, no other task
    // takes its place on a worker of capacity 1 (queued or submitted fresh); the report
    // changes nothing of the task and frees the capacity.
    let mut sim = Sim::new(config());
    sim.connect("w1", WorkerCapacity::any(1)).unwrap();
    sim.settle();
    let first = sim.submit_simple("alice", "t", 1);
    sim.settle();
    assert_eq!(status(&sim, first), TaskStatus::Running);
    let admin = majordodo_core::leader::Caller::admin("admin");
    let entries = sim.leader.cancel_task(sim.now, first, &admin).unwrap();
    sim.push(entries);
    sim.flush();
    let task = sim.state().task(first).unwrap();
    assert_eq!(task.status, TaskStatus::Error);
    assert_eq!(
        task.result.as_deref(),
        Some(majordodo_core::leader::CANCELLED)
    );
    assert_eq!(sim.cancelled.get("w1").map(|c| c.len()), Some(1));
    assert_eq!(sim.leader.cancelling_on("w1"), vec![(first, 1)]);
    let (outcome, batch) = sim.submit_in_round(SubmitRequest {
        task_type: "t".into(),
        user_id: "alice".into(),
        max_attempts: 1,
        ..Default::default()
    });
    let SubmitOutcome::Accepted(second) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(
        !batch
            .iter()
            .any(|e| matches!(e, LogEntry::AssignTask { .. })),
        "placed at submission on a worker still stopping a cancelled attempt: {batch:?}"
    );
    sim.settle();
    assert_eq!(
        status(&sim, second),
        TaskStatus::Waiting,
        "the worker still stops the cancelled attempt"
    );
    sim.report("w1", first, 1, Outcome::Finished, "late");
    sim.settle();
    assert_eq!(
        sim.state().task(first).unwrap().result.as_deref(),
        Some(majordodo_core::leader::CANCELLED)
    );
    assert!(sim.leader.cancelling_on("w1").is_empty());
    assert_eq!(status(&sim, second), TaskStatus::Running);
    sim.state().check_invariants().unwrap();
    assert_eq!(sim.replay(), *sim.state());
}

#[test]
fn retry_later_uses_no_attempt_until_the_deferral_bound_then_fails() {
    // Goal: with maxattempts 1 and max_deferrals 2, two "retry later" answers delay the task
    // and run it again (attempts 2 and 3, none counted); the third answer counts as the
    // failure of its only attempt, with a text naming the bound.
    let mut sim = Sim::new(LeaderConfig {
        max_deferrals: 2,
        ..config()
    });
    sim.connect("w1", WorkerCapacity::any(1)).unwrap();
    sim.settle();
    let id = sim.submit_simple("alice", "t", 1);
    sim.settle();
    for attempt in 1..=2u32 {
        assert_eq!(sim.running_of("w1"), vec![(id, attempt)]);
        sim.report("w1", id, attempt, Outcome::RetryLater(1_000), "busy");
        sim.flush();
        let task = sim.state().task(id).unwrap();
        assert_eq!(task.status, TaskStatus::Delayed);
        assert_eq!(task.requested_start_time, sim.now + 1_000);
        assert_eq!(task.deferrals(), attempt);
        assert_eq!(task.counted_attempts(), 0);
        sim.advance(1_000);
        sim.settle();
    }
    assert_eq!(sim.running_of("w1"), vec![(id, 3)]);
    sim.report("w1", id, 3, Outcome::RetryLater(1_000), "busy");
    sim.flush();
    let task = sim.state().task(id).unwrap();
    assert_eq!(task.status, TaskStatus::Error);
    assert!(
        task.result
            .as_deref()
            .unwrap()
            .contains("tasks.max_deferrals")
    );
    // A deferred attempt does not count when a later one fails: with maxattempts 2, one
    // deferral and one failure leave a retry.
    let two = sim.submit_simple("alice", "t", 2);
    sim.settle();
    sim.report("w1", two, 1, Outcome::RetryLater(10), "busy");
    sim.flush();
    sim.advance(10);
    sim.settle();
    sim.report("w1", two, 2, Outcome::Error, "boom");
    sim.flush();
    assert_eq!(
        status(&sim, two),
        TaskStatus::Waiting,
        "the failure of its first counted attempt is retried"
    );
    assert_eq!(sim.replay(), *sim.state());
    let rebuilt =
        BrokerState::from_snapshot(sim.state().to_snapshot(), Arc::new(DefaultGroupMapper))
            .unwrap();
    assert_eq!(rebuilt, *sim.state());
}

/// A leader whose group 1 may run `quota` tasks at a time, running one task of user "1" (in
/// group 1 by default) on worker w1, which has room for more.
fn group_one_running_one(quota: u64) -> (Sim, TaskId) {
    let mut sim = Sim::new(config());
    let quota = sim
        .leader
        .set_quota(
            sim.now,
            majordodo_core::quota::QuotaTenant::Group(1),
            Some(vec![("tasks".into(), quota)]),
        )
        .unwrap();
    sim.push(vec![quota]);
    sim.connect("w1", WorkerCapacity::any(4)).unwrap();
    sim.flush();
    let first = sim.submit_simple("1", "t", 1);
    sim.settle();
    assert_eq!(sim.running_of("w1"), vec![(first, 1)]);
    (sim, first)
}

/// The entry moving `user` to group 1.
fn into_group_one(sim: &mut Sim, user: &str) -> LogEntry {
    let level = majordodo_core::model::ServiceLevel {
        group: 1,
        resources: Vec::new(),
        weight: 1,
    };
    sim.leader
        .set_service_level(sim.now, user, Some(level))
        .unwrap()
}

#[test]
fn an_assignment_in_flight_counts_in_the_group_its_owner_just_joined() {
    // Goal: a user moved into a group while one of its assignments is in flight brings that
    // assignment into the group's quota at once.
    let (mut sim, first) = group_one_running_one(2);
    sim.advance(1);
    let moved = sim.submit_simple("2", "t", 1);
    sim.flush();
    let level = into_group_one(&mut sim, "2");
    sim.push(vec![level]);
    // Assigned while user 2 is still in group 2 (its default, without quota); the assignment
    // is logged behind the level change.
    sim.assign();
    assert_eq!(sim.inflight.len(), 2, "the level, then the assignment");
    sim.flush_one();
    // User 2 is in group 1 now, with its assignment in flight: with the first task, group 1
    // has its two, and a task of user 1 submitted now, still in that window, must wait.
    sim.advance(1);
    let req = SubmitRequest {
        task_type: "t".into(),
        user_id: "1".into(),
        max_attempts: 1,
        ..Default::default()
    };
    let (third, _) = sim.submit_in_round(req);
    let third = accepted(third);
    sim.settle();
    assert_eq!(
        sim.running_of("w1"),
        vec![(first, 1), (moved, 1)],
        "group 1 may run two tasks; task {third} must wait"
    );
    assert_eq!(status(&sim, third), TaskStatus::Waiting);
}

#[test]
fn a_fresh_placement_charges_the_group_its_owner_is_in_when_it_is_placed() {
    // Goal: a submission decided while its owner was in another group, and placed after the
    // owner joined a full group, is held by that group's quota.
    let (mut sim, first) = group_one_running_one(1);
    let level = into_group_one(&mut sim, "2");
    sim.push(vec![level]);
    sim.advance(1);
    let late = sim.submit_simple("2", "t", 1);
    sim.flush_one();
    sim.assign();
    sim.settle();
    assert_eq!(
        sim.running_of("w1"),
        vec![(first, 1)],
        "group 1 may run one task; task {late} must wait"
    );
    assert_eq!(status(&sim, late), TaskStatus::Waiting);
}
