//! Random schedules of submissions, worker connections, reconnections with pushes in flight,
//! crashes, reports and timers, with batches left in flight (pipelined) for random stretches.
//! After every step: no worker holds more than its capacity (applied plus in flight, per type and
//! for the `any` bucket), no task has an attempt beyond its maxattempts, and every task running on
//! a connected worker is known to it (it runs it, or it is in transit on its connection) or is
//! waiting in the leader's outbox for its session. Submissions reuse a few idempotency keys
//! (also while the first submission with a key is in flight, and after the key's window):
//! a submission with a key the leader knows is answered with that key's task and logs nothing,
//! one with an unknown key creates a task, and at every point a key names exactly one task.
//! Code pools are created (in chunks), deleted and expire while tasks name them: a live task's
//! pool always exists and is complete.
//! Transactions are begun by two users, tasks are prepared in them (also in ones that ended,
//! or by another user), committed, rolled back and abandoned (rolled back by their time to
//! live); tasks are cancelled at any point (waiting, delayed, being assigned, running) and
//! workers answer "retry later". After every step also: no prepared task is visible or
//! assigned, a slot is held by exactly one live or prepared task, a worker's cancelled
//! attempts count against its capacity until it reports them, no task is deferred more than
//! `max_deferrals` times and deferrals never use attempts.
//! Limits: no worker runs more of one user's tasks of one type than its per-user share, no
//! named resource is used beyond a worker's or the cluster's limit, counting assignments in
//! flight; service levels change at random (moving waiting tasks between groups and resources)
//! and so do waiting tasks' priorities.
//! Worker credentials are issued and revoked along the way (checked by `check_credentials`).
//! At the end: the leader's state passes every invariant (resource counters equal the sums over
//! the running tasks) and equals a replay of its log, a snapshot of it rebuilds it exactly, and
//! no cancelled task was assigned again or changed.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use majordodo_core::leader::{
    CANCELLED, Caller, FinishReport, NeedsRefusal, Outcome, SubmitOutcome, SubmitRequest,
};
use majordodo_core::model::ServiceLevel;
use majordodo_core::{
    BrokerState, DefaultGroupMapper, LeaderConfig, LogEntry, Millis, TaskId, TaskStatus,
    TransactionId, WorkerCapacity,
};
use proptest::prelude::*;
use support::{Batch, Sim};

#[derive(Clone, Debug)]
enum Op {
    Submit {
        user: u8,
        kind: u8,
        max_attempts: u8,
        attempts: u8,
        slot: Option<u8>,
        delay: bool,
        deadline: bool,
        /// One of a few idempotency keys, reused across submissions.
        key: Option<u8>,
    },
    Connect {
        worker: u8,
    },
    /// The worker drops its connection and opens a new one at once: the broker sees the new
    /// connection before the old one's loss, and what was in transit on the old one is lost.
    Reconnect {
        worker: u8,
    },
    /// The worker reads what is in transit on its connection.
    Receive {
        worker: u8,
    },
    Disconnect {
        worker: u8,
    },
    Crash {
        worker: u8,
    },
    Report {
        worker: u8,
        pick: u8,
        /// 0 finished, 1 error, 2 or 3 retry later.
        outcome: u8,
    },
    /// A report for one of `worker`'s running attempts arrives on a connection that does not
    /// hold it: another worker's (`via` names it) or a stale one of its own; it must change
    /// nothing.
    ForeignReport {
        worker: u8,
        via: u8,
        pick: u8,
        outcome: u8,
    },
    Begin {
        user: u8,
    },
    /// A task prepared in one of the transactions begun so far (maybe ended), by `user` (maybe
    /// not its owner) or an admin.
    Prepare {
        pick: u8,
        user: u8,
        admin: bool,
        slot: Option<u8>,
        delay: bool,
    },
    Commit {
        pick: u8,
        user: u8,
        admin: bool,
    },
    Rollback {
        pick: u8,
        user: u8,
        admin: bool,
    },
    Cancel {
        pick: u8,
        user: u8,
        admin: bool,
    },
    /// The worker stops the cancelled attempts it has received and reports them.
    StopCancelled {
        worker: u8,
    },
    Assign,
    Tick,
    Advance {
        ms: u16,
    },
    FlushOne,
    /// Creates code pool `p{pool}` (chunked), with a TTL or without.
    CreatePool {
        pool: u8,
        ttl: bool,
    },
    DeletePool {
        pool: u8,
    },
    SubmitWithPool {
        pool: u8,
        kind: u8,
    },
    /// An admin changes a user's service level (`None`: back to the default).
    SetLevel {
        user: u8,
        level: Option<(u8, u8)>,
    },
    /// An admin changes the priority of some task.
    SetPriority {
        pick: u8,
        priority: i8,
    },
    /// A task of one of three users sharing group 1 at weights 1, 2 and 3 (fair share).
    SubmitShared {
        user: u8,
        kind: u8,
    },
    /// A task that declares needs (see [`needs_of`]).
    SubmitNeeds {
        user: u8,
        kind: u8,
        needs: u8,
    },
    /// An admin sets (or removes) the quota of user `tenant` (0, 1) or group `tenant - 1`
    /// (2, 3): at most `tasks` running tasks and `cpu` × 500 millicores, when given.
    SetQuota {
        tenant: u8,
        quota: Option<(Option<u8>, Option<u8>)>,
    },
    /// An admin issues a credential for worker `w<worker>`.
    IssueCredential {
        worker: u8,
    },
    /// An admin revokes the `pick`-th credential issued so far (already revoked, or in
    /// flight, it is refused).
    RevokeCredential {
        pick: u8,
    },
}

/// The needs a `SubmitNeeds` may declare.
fn needs_of(i: u8) -> Vec<(String, u64)> {
    match i {
        0 => vec![("cpu".into(), 500)],
        1 => vec![("cpu".into(), 1500), ("memory".into(), 1500)],
        2 => vec![("db".into(), 1)],
        3 => vec![("cpu".into(), 5000)],
        _ => vec![("memory".into(), 600), ("db".into(), 2)],
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..4, 0u8..4, (0u8..4, 0u8..3), proptest::option::of(0u8..3), (any::<bool>(), any::<bool>()), proptest::option::weighted(0.6, 0u8..4))
            .prop_map(|(user, kind, (max_attempts, attempts), slot, (delay, deadline), key)| Op::Submit {
                user, kind, max_attempts, attempts, slot, delay, deadline, key
            }),
        2 => (0u8..3).prop_map(|worker| Op::Connect { worker }),
        2 => (0u8..3).prop_map(|worker| Op::Reconnect { worker }),
        6 => (0u8..3).prop_map(|worker| Op::Receive { worker }),
        1 => (0u8..3).prop_map(|worker| Op::Disconnect { worker }),
        1 => (0u8..3).prop_map(|worker| Op::Crash { worker }),
        6 => (0u8..3, any::<u8>(), 0u8..4).prop_map(|(worker, pick, outcome)| Op::Report { worker, pick, outcome }),
        2 => (0u8..3, 0u8..4, any::<u8>(), 0u8..3).prop_map(|(worker, via, pick, outcome)| Op::ForeignReport { worker, via, pick, outcome }),
        1 => (0u8..2).prop_map(|user| Op::Begin { user }),
        3 => (any::<u8>(), 0u8..2, any::<bool>(), proptest::option::of(0u8..3), any::<bool>())
            .prop_map(|(pick, user, admin, slot, delay)| Op::Prepare { pick, user, admin, slot, delay }),
        1 => (any::<u8>(), 0u8..2, any::<bool>()).prop_map(|(pick, user, admin)| Op::Commit { pick, user, admin }),
        1 => (any::<u8>(), 0u8..2, any::<bool>()).prop_map(|(pick, user, admin)| Op::Rollback { pick, user, admin }),
        2 => (any::<u8>(), 0u8..2, any::<bool>()).prop_map(|(pick, user, admin)| Op::Cancel { pick, user, admin }),
        2 => (0u8..3).prop_map(|worker| Op::StopCancelled { worker }),
        4 => Just(Op::Assign),
        2 => Just(Op::Tick),
        2 => (0u16..4000).prop_map(|ms| Op::Advance { ms }),
        4 => Just(Op::FlushOne),
        1 => (0u8..3, any::<bool>()).prop_map(|(pool, ttl)| Op::CreatePool { pool, ttl }),
        1 => (0u8..3).prop_map(|pool| Op::DeletePool { pool }),
        2 => (0u8..3, 0u8..4).prop_map(|(pool, kind)| Op::SubmitWithPool { pool, kind }),
        1 => (0u8..2, proptest::option::of((1u8..4, 0u8..4))).prop_map(|(user, level)| Op::SetLevel { user, level }),
        1 => (any::<u8>(), -2i8..3).prop_map(|(pick, priority)| Op::SetPriority { pick, priority }),
        3 => (0u8..2, 0u8..4, 0u8..5).prop_map(|(user, kind, needs)| Op::SubmitNeeds { user, kind, needs }),
        4 => (0u8..3, 0u8..3).prop_map(|(user, kind)| Op::SubmitShared { user, kind }),
        1 => (0u8..4, proptest::option::of((proptest::option::of(0u8..3), proptest::option::of(0u8..4))))
            .prop_map(|(tenant, quota)| Op::SetQuota { tenant, quota }),
        1 => (0u8..3).prop_map(|worker| Op::IssueCredential { worker }),
        1 => any::<u8>().prop_map(|pick| Op::RevokeCredential { pick }),
    ]
}

/// Credentials: every issue and revocation of the log is in the state as the log says (bound to
/// its worker id, revoked at the revocation's time), none is issued twice or revoked twice, a
/// revoked one never admits a worker, an active one admits only its own worker id, and a
/// revocation never precedes its issue.
fn check_credentials(sim: &Sim) {
    let mut issued: BTreeMap<String, (String, Option<Millis>)> = BTreeMap::new();
    for entry in &sim.log {
        match entry {
            LogEntry::AddWorkerCredential {
                credential_id,
                worker_id,
                ..
            } => {
                let old = issued.insert(credential_id.clone(), (worker_id.clone(), None));
                assert!(old.is_none(), "credential {credential_id} issued twice");
            }
            LogEntry::RevokeWorkerCredential {
                credential_id,
                timestamp,
            } => {
                let (_, revoked) = issued
                    .get_mut(credential_id)
                    .unwrap_or_else(|| panic!("{credential_id} revoked before it was issued"));
                assert!(
                    revoked.is_none(),
                    "credential {credential_id} revoked twice"
                );
                *revoked = Some(*timestamp);
            }
            _ => {}
        }
    }
    let state = sim.state();
    assert_eq!(state.credentials().count(), issued.len());
    for (id, (worker, revoked)) in &issued {
        let c = state.credential(id).expect("an issued credential is kept");
        assert_eq!((&c.worker_id, c.revoked), (worker, *revoked));
        for other in ["w0", "w1", "w2"] {
            let admits = state.credential_for(id, other).is_ok();
            assert_eq!(
                admits,
                revoked.is_none() && other == worker,
                "{id} as {other}"
            );
        }
    }
}

/// Worker capacities: differ per worker so per-type and group limits are exercised.
fn capacity(worker: u8) -> WorkerCapacity {
    let mut by_type = BTreeMap::new();
    let mut groups = vec![0];
    let mut percent = 0;
    let mut resource_limits = BTreeMap::new();
    match worker {
        0 => {
            by_type.insert("k0".to_string(), 1);
            by_type.insert("any".to_string(), 2);
            percent = 50;
            resource_limits.insert("r1".to_string(), 1);
        }
        1 => {
            by_type.insert("k1".to_string(), 2);
            groups = vec![2, 1];
            resource_limits.insert("r2".to_string(), 1);
        }
        _ => {}
    }
    WorkerCapacity {
        max_threads: 3,
        max_threads_by_task_type: by_type,
        groups,
        excluded_groups: if worker == 2 { vec![3] } else { vec![] },
        max_thread_per_user_per_task_type_percent: percent,
        resource_limits,
        amounts: match worker {
            0 => BTreeMap::from([("cpu".into(), 2000), ("memory".into(), 1000)]),
            1 => BTreeMap::from([
                ("cpu".into(), 1000),
                ("memory".into(), 4000),
                ("db".into(), 2),
            ]),
            _ => BTreeMap::from([("cpu".into(), 4000), ("memory".into(), 2000)]),
        },
        enforcement: String::new(),
    }
}

/// What a task declared: from the state, or from its creation in flight.
fn needs_in_sim(sim: &Sim, batch: &[LogEntry], id: TaskId, worker: &str) -> Placed {
    if let Some(t) = sim.state().task(id) {
        let needs = t.needs().iter().map(|(d, n)| (d.to_string(), *n)).collect();
        return (
            worker.to_string(),
            t.user_id.to_string(),
            needs,
            t.task_type.to_string(),
        );
    }
    sim.inflight
        .iter()
        .flat_map(|b| b.entries.iter())
        .chain(batch.iter())
        .find_map(|e| match e {
            LogEntry::AddTask(t) if t.id == id => Some((
                worker.to_string(),
                t.user_id.clone(),
                t.needs.clone(),
                t.task_type.clone(),
            )),
            _ => None,
        })
        .expect("an assigned task exists or is being created")
}

/// A task running or being assigned: (worker, owner, needs, task type).
type Placed = (String, String, Vec<(String, u64)>, String);

/// Ids of the tasks some entry in flight (or earlier in `batch`) is about to change.
fn changing(sim: &Sim, batch: &[LogEntry]) -> std::collections::BTreeSet<TaskId> {
    sim.inflight
        .iter()
        .flat_map(|b| b.entries.iter())
        .chain(batch.iter())
        .filter_map(|e| match e {
            LogEntry::AssignTask { task_id, .. }
            | LogEntry::TaskStatusChange { task_id, .. }
            | LogEntry::SetTaskPriority { task_id, .. }
            | LogEntry::DeferTask { task_id, .. } => Some(*task_id),
            _ => None,
        })
        .collect()
}

/// Fair share, checked on each assignment of a task of user `u`: no user `v` of the same group
/// that could have taken the same thread had fewer running tasks relative to its weight. `v`
/// could have taken it when its waiting tasks of the same type need nothing, its level names no
/// resource, it has no quota of its own, none of those tasks is being changed, and the worker's
/// per-user share has room for it.
fn check_fair_share(
    sim: &Sim,
    live: &[Placed],
    placed: &Placed,
    changing: &std::collections::BTreeSet<TaskId>,
) {
    let state = sim.state();
    let (worker, u, _, task_type) = placed;
    let group = state.group_of_user(u);
    let running = |x: &str| live.iter().filter(|l| l.1 == x).count() as u64;
    let weight = |x: &str| u64::from(state.service_level_of(x).weight());
    let cap = capacity(worker[1..].parse().unwrap());
    let mut rivals: BTreeMap<String, bool> = BTreeMap::new();
    for t in state
        .tasks()
        .filter(|t| t.status == TaskStatus::Waiting && *t.task_type == **task_type)
        .filter(|t| *t.user_id != **u)
    {
        let ok = t.needs().is_empty() && !changing.contains(&t.id);
        *rivals.entry(t.user_id.to_string()).or_insert(true) &= ok;
    }
    for (v, eligible) in rivals {
        let level = state.service_level_of(&v);
        if !eligible
            || level.group != group
            || !level.resources.is_empty()
            || state
                .quotas()
                .get(&majordodo_core::quota::QuotaTenant::User(v.clone()))
                .is_some()
        {
            continue;
        }
        if let Some(share) = cap.user_share(task_type) {
            let here = live
                .iter()
                .filter(|l| l.0 == *worker && l.1 == v && l.3 == *task_type)
                .count() as u32;
            if here >= share {
                continue;
            }
        }
        assert!(
            running(u) * weight(&v) <= running(&v) * weight(u),
            "{u} (running {}, weight {}) got a thread of {worker} before {v} (running {}, weight {})",
            running(u),
            weight(u),
            running(&v),
            weight(&v)
        );
    }
}

/// Checked on every batch the leader decides: each assignment in it fits its worker's amounts and
/// its owner's and group's quotas, counting what runs and what is being assigned before it. A
/// quota lowered below the current use only stops new placements, so it is checked against
/// assignments, never against what already runs.
fn check_new_assignments(sim: &Sim, batch: &[LogEntry]) {
    use majordodo_core::quota::{QuotaTenant, need_of};
    // (worker, user, needs) of every task running or being assigned.
    let mut live: Vec<Placed> = Vec::new();
    for t in sim
        .state()
        .tasks()
        .filter(|t| t.status == TaskStatus::Running)
    {
        let needs = t.needs().iter().map(|(d, n)| (d.to_string(), *n)).collect();
        live.push((
            t.worker_id.as_deref().unwrap().to_string(),
            t.user_id.to_string(),
            needs,
            t.task_type.to_string(),
        ));
    }
    let assigns = |entries: &[LogEntry]| -> Vec<(TaskId, String)> {
        entries
            .iter()
            .filter_map(|e| match e {
                LogEntry::AssignTask {
                    task_id, worker_id, ..
                } => Some((*task_id, worker_id.clone())),
                _ => None,
            })
            .collect()
    };
    for b in &sim.inflight {
        for (id, worker) in assigns(&b.entries) {
            let waiting = sim
                .state()
                .task(id)
                .is_none_or(|t| t.status == TaskStatus::Waiting);
            if waiting {
                live.push(needs_in_sim(sim, batch, id, &worker));
            }
        }
    }
    let state = sim.state();
    for (i, (id, worker)) in assigns(batch).into_iter().enumerate() {
        let placed = needs_in_sim(sim, batch, id, &worker);
        let before: Vec<LogEntry> = batch
            .iter()
            .filter(|e| matches!(e, LogEntry::AssignTask { .. }))
            .take(i)
            .cloned()
            .collect();
        check_fair_share(sim, &live, &placed, &changing(sim, &before));
        let (_, user, needs, _) = placed.clone();
        let group = state.group_of_user(&user);
        let sum = |filter: &dyn Fn(&Placed) -> bool, d: &str| -> u64 {
            live.iter()
                .filter(|l| filter(l))
                .map(|l| {
                    if d == "tasks" {
                        1
                    } else {
                        l.2.iter().filter(|(n, _)| n == d).map(|(_, a)| *a).sum()
                    }
                })
                .sum()
        };
        let w: u8 = worker[1..].parse().unwrap();
        let cap = capacity(w);
        for (d, n) in &needs {
            let have = cap.amounts.get(d).copied().unwrap_or(0);
            let used = sum(&|l| l.0 == worker, d);
            assert!(
                used + n <= have,
                "task {id} needs {n} {d} on {worker}, which has {have} and runs {used}: {live:?}"
            );
        }
        let interned: Vec<(Arc<str>, u64)> = needs
            .iter()
            .map(|(d, n)| (Arc::from(d.as_str()), *n))
            .collect();
        for tenant in [QuotaTenant::User(user.clone()), QuotaTenant::Group(group)] {
            let Some(quota) = state.quotas().get(&tenant) else {
                continue;
            };
            for (d, limit) in quota.iter() {
                let need = need_of(&interned, d);
                if need == 0 {
                    continue;
                }
                let used = match &tenant {
                    QuotaTenant::User(u) => sum(&|l| &l.1 == u, d),
                    QuotaTenant::Group(g) => sum(&|l| state.group_of_user(&l.1) == *g, d),
                };
                assert!(
                    used + need <= *limit,
                    "task {id} of {user} assigned beyond the quota of {tenant}: {used} + {need} \
                     {d} > {limit}"
                );
            }
        }
        live.push(placed);
    }
}

/// Global resource limits of the simulated cluster.
fn global_limits() -> BTreeMap<String, u32> {
    BTreeMap::from([("r1".to_string(), 2), ("r3".to_string(), 1)])
}

/// Resource sets a service level may give (index from `Op::SetLevel`).
fn level_resources(i: u8) -> Vec<String> {
    match i {
        0 => vec![],
        1 => vec!["r1".into()],
        2 => vec!["r2".into(), "r3".into()],
        _ => vec!["r1".into(), "r3".into()],
    }
}

/// No worker runs (applied + in flight) more of one user's tasks of a type than its share, nor
/// more tasks using a resource than its limit; the cluster never runs more tasks using a
/// resource than the global limit.
fn check_limits(sim: &Sim) {
    // (worker, user, type, resources) of every task running or being assigned.
    let mut live: Vec<(String, String, String, Vec<String>)> = Vec::new();
    for task in sim
        .state()
        .tasks()
        .filter(|t| t.status == TaskStatus::Running)
    {
        live.push((
            task.worker_id.as_deref().unwrap().to_string(),
            task.user_id.to_string(),
            task.task_type.to_string(),
            task.resources().iter().map(|r| r.to_string()).collect(),
        ));
    }
    let mut new_tasks = BTreeMap::new();
    for Batch { entries, .. } in &sim.inflight {
        for e in entries {
            if let LogEntry::AddTask(t) = e {
                new_tasks.insert(t.id, (t.user_id.clone(), t.task_type.clone()));
            }
        }
    }
    for Batch { entries, .. } in &sim.inflight {
        for e in entries {
            if let LogEntry::AssignTask {
                task_id,
                worker_id,
                resources,
                ..
            } = e
            {
                let who = match sim.state().task(*task_id) {
                    Some(t) if t.status == TaskStatus::Waiting => {
                        Some((t.user_id.to_string(), t.task_type.to_string()))
                    }
                    Some(_) => None,
                    None => Some(new_tasks[task_id].clone()),
                };
                if let Some((user, task_type)) = who {
                    live.push((worker_id.clone(), user, task_type, resources.clone()));
                }
            }
        }
    }
    let mut global: BTreeMap<&str, u32> = BTreeMap::new();
    for (_, _, _, res) in &live {
        for r in res {
            *global.entry(r).or_default() += 1;
        }
    }
    for (r, limit) in global_limits() {
        let n = global.get(r.as_str()).copied().unwrap_or(0);
        assert!(
            n <= limit,
            "{n} tasks use {r} (global limit {limit}): {live:?}"
        );
    }
    for w in 0..3u8 {
        let name = format!("w{w}");
        let cap = capacity(w);
        let here: Vec<_> = live.iter().filter(|l| l.0 == name).collect();
        for (r, limit) in &cap.resource_limits {
            let n = here.iter().filter(|l| l.3.contains(r)).count() as u32;
            assert!(
                n <= *limit,
                "{name}: {n} tasks use {r} (limit {limit}): {here:?}"
            );
        }
        for (_, user, task_type, _) in &here {
            if let Some(share) = cap.user_share(task_type) {
                let n = here
                    .iter()
                    .filter(|l| &l.1 == user && &l.2 == task_type)
                    .count() as u32;
                assert!(
                    n <= share,
                    "{name}: user {user} runs {n} of {task_type} (share {share}): {here:?}"
                );
            }
        }
    }
}

/// No worker runs (applied + in flight) more than it declared, in total and per explicit type.
fn check_capacity(sim: &Sim) {
    let mut per_worker: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for task in sim
        .state()
        .tasks()
        .filter(|t| t.status == TaskStatus::Running)
    {
        per_worker
            .entry(task.worker_id.as_deref().unwrap().to_string())
            .or_default()
            .push(task.task_type.to_string());
    }
    // Types of tasks whose creation is still in flight (placed directly at submission).
    let mut new_types = BTreeMap::new();
    for Batch { entries, .. } in &sim.inflight {
        for e in entries {
            if let majordodo_core::LogEntry::AddTask(t) = e {
                new_types.insert(t.id, t.task_type.clone());
            }
        }
    }
    for Batch { entries, .. } in &sim.inflight {
        for e in entries {
            if let majordodo_core::LogEntry::AssignTask {
                task_id, worker_id, ..
            } = e
            {
                let task_type = match sim.state().task(*task_id) {
                    Some(t) if t.status == TaskStatus::Waiting => Some(t.task_type.to_string()),
                    Some(_) => None,
                    None => Some(new_types[task_id].clone()),
                };
                if let Some(task_type) = task_type {
                    per_worker
                        .entry(worker_id.clone())
                        .or_default()
                        .push(task_type);
                }
            }
        }
    }
    // Cancelled attempts the worker has not reported ended yet keep their capacity.
    for w in 0..3u8 {
        let worker = format!("w{w}");
        for (task, _) in sim.leader.cancelling_on(&worker) {
            let t = sim.state().task(task).expect("a cancelled task exists");
            assert_eq!(t.result.as_deref(), Some(CANCELLED));
            per_worker
                .entry(worker.clone())
                .or_default()
                .push(t.task_type.to_string());
        }
    }
    for (worker, types) in per_worker {
        let w: u8 = worker.trim_start_matches('w').parse().unwrap();
        let cap = capacity(w);
        // Only the current connection's capacity binds; tasks may outlive a reconnect, so
        // check the total only against what was declared (all connections declare the same).
        assert!(
            types.len() <= cap.max_threads as usize,
            "{worker} runs {types:?}"
        );
        for (t, limit) in &cap.max_threads_by_task_type {
            let n = if t == "any" {
                // The `any` bucket: every type without an entry of its own, counted together.
                types
                    .iter()
                    .filter(|x| !cap.max_threads_by_task_type.contains_key(*x))
                    .count()
            } else {
                types.iter().filter(|x| *x == t).count()
            };
            assert!(
                n <= *limit as usize,
                "{worker} runs {n} counted against {t} (limit {limit}): {types:?}"
            );
        }
    }
}

/// No task, applied or being assigned, is at an attempt beyond its maxattempts (deferred
/// attempts not counted), and none was deferred more than `max_deferrals` times.
fn check_attempts(sim: &Sim) {
    for task in sim.state().tasks() {
        assert!(
            task.max_attempts == 0 || task.counted_attempts() <= task.max_attempts,
            "task {} is at attempt {} of {} ({} deferred)",
            task.id,
            task.attempts,
            task.max_attempts,
            task.deferrals()
        );
        assert!(
            task.deferrals() <= sim.leader.config().max_deferrals,
            "task {} deferred {} times",
            task.id,
            task.deferrals()
        );
    }
    let mut max_of = BTreeMap::new();
    for batch in &sim.inflight {
        for e in &batch.entries {
            match e {
                majordodo_core::LogEntry::AddTask(t) => {
                    max_of.insert(t.id, t.max_attempts);
                }
                majordodo_core::LogEntry::AssignTask {
                    task_id, attempt, ..
                } => {
                    let (max, deferrals) = sim
                        .state()
                        .task(*task_id)
                        .map(|t| (t.max_attempts, t.deferrals()))
                        .or_else(|| max_of.get(task_id).map(|m| (*m, 0)))
                        .expect("an assigned task exists or is being created");
                    assert!(
                        max == 0 || attempt - deferrals <= max,
                        "task {task_id} assigned attempt {attempt} of {max} ({deferrals} deferred)"
                    );
                }
                _ => {}
            }
        }
    }
}

/// Every task running on a connected worker is known to that connection (the worker runs it or
/// it is in transit to it), is waiting in the leader's outbox for the session to open, or has a
/// change in flight. Without this, a task could hold its slot and capacity forever.
fn check_delivery(sim: &Sim) {
    for task in sim.state().tasks() {
        if task.status != TaskStatus::Running || sim.leader.change_in_flight(task.id) {
            continue;
        }
        let worker = task
            .worker_id
            .as_deref()
            .expect("a running task has a worker");
        let Some(conn) = sim.conns.get(worker) else {
            continue; // reconciled on reconnection, or failed when declared dead
        };
        let key = (task.id, task.attempts);
        let runs = sim.workers.get(worker).is_some_and(|s| s.contains(&key));
        let in_transit = conn.transit.contains(&key);
        let queued = sim.leader.unpushed(worker).contains(&key);
        assert!(
            runs || in_transit || queued,
            "task {} attempt {} runs on {worker} (connection {}, open: {}) but the worker does \
             not know it and nothing will push it",
            task.id,
            task.attempts,
            conn.id,
            conn.open
        );
    }
}

/// No prepared task is visible (a task of the state) or assigned (applied or in flight), and
/// every prepared task holds its slot.
fn check_prepared(sim: &Sim) {
    let open = sim.state().transactions().count();
    assert!(
        open <= sim.leader.config().max_open_transactions,
        "{open} transactions open"
    );
    let mut prepared = BTreeMap::new();
    for tx in sim.state().transactions() {
        for t in &tx.prepared {
            prepared.insert(t.id, tx.id);
            assert!(
                sim.state().task(t.id).is_none(),
                "prepared task {} of transaction {} is visible",
                t.id,
                tx.id
            );
            if let Some(slot) = &t.slot {
                assert_eq!(sim.state().slot_holder(slot), Some(t.id));
            }
        }
    }
    for e in sim.inflight.iter().flat_map(|b| &b.entries) {
        if let LogEntry::AssignTask { task_id, .. } = e {
            assert!(
                !prepared.contains_key(task_id),
                "prepared task {task_id} is being assigned"
            );
        }
    }
}

/// Over the durable log: after a task is cancelled, nothing assigns or changes it again.
fn check_cancelled_stay_cancelled(log: &[LogEntry]) {
    let mut cancelled = std::collections::BTreeSet::new();
    for e in log {
        match e {
            LogEntry::TaskStatusChange {
                task_id, result, ..
            } => {
                assert!(
                    !cancelled.contains(task_id),
                    "cancelled task {task_id} changed again"
                );
                if result.as_deref() == Some(CANCELLED) {
                    cancelled.insert(*task_id);
                }
            }
            LogEntry::AssignTask { task_id, .. } | LogEntry::DeferTask { task_id, .. } => {
                assert!(
                    !cancelled.contains(task_id),
                    "cancelled task {task_id} runs again"
                );
            }
            _ => {}
        }
    }
}

/// The AddTask entries with an idempotency key, logged or in flight, in log order: (user, key,
/// task).
fn keyed_adds(sim: &Sim) -> Vec<(String, String, TaskId)> {
    sim.log
        .iter()
        .chain(sim.inflight.iter().flat_map(|b| &b.entries))
        .filter_map(|e| match e {
            LogEntry::AddTask(t) => t
                .idempotency_key
                .clone()
                .map(|k| (t.user_id.clone(), k, t.id)),
            _ => None,
        })
        .collect()
}

/// Checks the leader's answer to a keyed submission against what is logged and in flight.
fn check_keyed_submit(
    sim: &Sim,
    user: &str,
    key: &str,
    outcome: &SubmitOutcome,
    entry: Option<&LogEntry>,
) {
    let adds = keyed_adds(sim);
    let mut with_key = adds
        .iter()
        .filter(|(u, k, _)| u == user && k == key)
        .map(|(_, _, id)| *id);
    let in_flight = |id: TaskId| {
        sim.inflight
            .iter()
            .flat_map(|b| &b.entries)
            .any(|e| matches!(e, LogEntry::AddTask(t) if t.id == id))
    };
    match (outcome, entry) {
        (SubmitOutcome::Accepted(id), None) => {
            let last = with_key.next_back();
            assert_eq!(
                last,
                Some(*id),
                "key {user}/{key} answered with task {id}, which is not its latest task"
            );
            assert!(
                sim.state().idempotency_key(user, key).map(|(t, _)| t) == Some(*id)
                    || in_flight(*id),
                "key {user}/{key} answered with task {id}, but the key is not known"
            );
        }
        (SubmitOutcome::Accepted(id), Some(LogEntry::AddTask(t))) => {
            assert_eq!(t.id, *id);
            assert_eq!(t.idempotency_key.as_deref(), Some(key));
            assert_eq!(
                sim.state().idempotency_key(user, key),
                None,
                "key {user}/{key} is known but a new task {id} was created"
            );
            assert!(
                with_key.all(|other| !in_flight(other)),
                "key {user}/{key} has a creation in flight but a new task {id} was created"
            );
        }
        (SubmitOutcome::NotCreated(_), None) => {}
        other => panic!("unexpected submission result {other:?}"),
    }
}

/// Replays the idempotency-key semantics over the durable log on its own: a key is live from
/// its task's creation until a forget entry passes its creation time; no live key is created
/// again. Returns the live keys, which must be the state's.
fn keys_of_log(log: &[LogEntry]) -> BTreeMap<(String, String), (TaskId, Millis)> {
    let mut live: BTreeMap<(String, String), (TaskId, Millis)> = BTreeMap::new();
    for e in log {
        match e {
            LogEntry::AddTask(t) => {
                if let Some(key) = &t.idempotency_key {
                    let previous = live.insert((t.user_id.clone(), key.clone()), (t.id, t.created));
                    assert!(
                        previous.is_none(),
                        "key {}/{key} names tasks {:?} and {}",
                        t.user_id,
                        previous,
                        t.id
                    );
                }
            }
            LogEntry::ForgetIdempotencyKeys { created_before, .. } => {
                live.retain(|_, (_, created)| *created >= *created_before);
            }
            _ => {}
        }
    }
    live
}

/// Every waiting, delayed or running task names a pool that exists and is complete: pools are
/// deleted (explicitly or by expiry) only once no live task names them.
fn check_pools(sim: &Sim) {
    for task in sim.state().tasks() {
        if !task.status.is_final()
            && let Some(pool) = task.codepool()
        {
            assert!(
                sim.state().codepool(pool).is_some_and(|p| p.is_complete()),
                "task {} names pool {pool}, which is gone or incomplete",
                task.id
            );
        }
    }
}

fn run(ops: Vec<Op>) {
    let mut sim = Sim::new(LeaderConfig {
        max_worker_idle: 3_000,
        finished_task_retention: 20_000,
        max_assignments_per_round: 5,
        max_timer_changes_per_round: 3,
        idempotency_window: 8_000,
        transactions_ttl: 6_000,
        max_open_transactions: 4,
        max_deferrals: 1,
        global_resource_limits: global_limits(),
        groups: [1, 2, 3].into(),
    });
    sim.auto_receive = false;
    sim.on_push = Some(check_new_assignments);
    let mut credentials_issued: u32 = 0;
    for (user, weight) in [("a0", 1), ("a1", 2), ("a2", 3)] {
        let level = ServiceLevel {
            group: 1,
            resources: Vec::new(),
            weight,
        };
        let entry = sim
            .leader
            .set_service_level(sim.now, user, Some(level))
            .unwrap();
        sim.push(vec![entry]);
    }
    let mut txs: Vec<TransactionId> = Vec::new();
    let caller = |user: u8, admin: bool| Caller {
        name: format!("{}", user % 2),
        admin,
    };
    for op in ops {
        match op {
            Op::Submit {
                user,
                kind,
                max_attempts,
                attempts,
                slot,
                delay,
                deadline,
                key,
            } => {
                let user = format!("{}", user % 2);
                let key = key.map(|k| format!("key{k}"));
                let (outcome, entry) = sim.leader.submit(
                    sim.now,
                    SubmitRequest {
                        task_type: format!("k{kind}"),
                        user_id: user.clone(),
                        data: "x".into(),
                        max_attempts: max_attempts.into(),
                        attempts: attempts.into(),
                        slot: slot.map(|s| format!("s{s}")),
                        requested_start_time: if delay { sim.now + 2_000 } else { 0 },
                        deadline: if deadline { sim.now + 5_000 } else { 0 },
                        idempotency_key: key.clone(),
                        priority: i32::from(kind % 3) - 1,
                        ..Default::default()
                    },
                );
                if let Some(key) = &key {
                    check_keyed_submit(&sim, &user, key, &outcome, entry.as_ref());
                }
                sim.push(entry.into_iter().collect());
            }
            Op::Connect { worker } => {
                let id = format!("w{worker}");
                if !sim.conns.contains_key(&id) {
                    let _ = sim.connect(&id, capacity(worker));
                }
            }
            Op::Reconnect { worker } => {
                let id = format!("w{worker}");
                if let Some(old) = sim.conns.remove(&id) {
                    let _ = sim.connect(&id, capacity(worker));
                    // The old connection's loss arrives after the new connection.
                    let entries = sim.leader.worker_disconnected(sim.now, &id, old.id);
                    assert!(
                        entries.is_empty(),
                        "a replaced connection's loss logs nothing"
                    );
                }
            }
            Op::Receive { worker } => sim.receive(&format!("w{worker}")),
            Op::Disconnect { worker } => sim.disconnect(&format!("w{worker}")),
            Op::Crash { worker } => sim.crash(&format!("w{worker}")),
            Op::Report {
                worker,
                pick,
                outcome,
            } => {
                let id = format!("w{worker}");
                let running = sim.running_of(&id);
                if !running.is_empty() {
                    let (task, attempt) = running[pick as usize % running.len()];
                    let outcome = match outcome {
                        0 => Outcome::Finished,
                        1 => Outcome::Error,
                        _ => Outcome::RetryLater(300),
                    };
                    sim.report(&id, task, attempt, outcome, "r");
                }
            }
            Op::ForeignReport {
                worker,
                via,
                pick,
                outcome,
            } => {
                let id = format!("w{worker}");
                // What the worker runs, and what the state has running on it (assigned, maybe
                // not received yet).
                let mut running = sim.running_of(&id);
                if let Some(set) = sim.state().running_on(&id) {
                    for t in set.iter() {
                        if let Some(task) = sim.state().task(t) {
                            running.push((t, task.attempts));
                        }
                    }
                }
                if running.is_empty() {
                    continue;
                }
                let (task, attempt) = running[pick as usize % running.len()];
                // `via` 3 is a connection id no current connection has (the oldest ones are
                // replaced or closed); 0..3 is another worker's current connection.
                let conn = match sim.conns.get(&format!("w{via}")) {
                    Some(c) if via != worker && via < 3 => c.id,
                    _ => 0,
                };
                let before = sim.state().clone();
                let outcome = match outcome {
                    0 => Outcome::Finished,
                    1 => Outcome::Error,
                    _ => Outcome::RetryLater(300),
                };
                let entries = sim.leader.finish_reports(
                    sim.now,
                    &id,
                    conn,
                    &[FinishReport {
                        task_id: task,
                        attempt,
                        outcome,
                        result: "forged".into(),
                    }],
                );
                assert!(
                    entries.is_empty(),
                    "a report from connection {conn}, not {id}'s, decided {entries:?}"
                );
                // The other worker on its own connection, naming this worker's attempt.
                if conn != 0 {
                    let forger = format!("w{via}");
                    let forged = [FinishReport {
                        task_id: task,
                        attempt,
                        outcome,
                        result: "forged".into(),
                    }];
                    // While the state gives the attempt to `id`, no other worker may report it.
                    let owned = sim.state().task(task).is_some_and(|t| {
                        t.attempts == attempt && t.worker_id.as_deref() == Some(id.as_str())
                    });
                    assert!(
                        !owned || !sim.leader.may_report(&forger, conn, &forged),
                        "{forger} may report {id}'s attempt"
                    );
                    let entries = sim.leader.finish_reports(
                        sim.now,
                        &forger,
                        conn,
                        &[FinishReport {
                            task_id: task,
                            attempt,
                            outcome,
                            result: "forged".into(),
                        }],
                    );
                    assert!(
                        entries.is_empty(),
                        "{forger} reported {id}'s attempt and decided {entries:?}"
                    );
                }
                assert!(
                    *sim.state() == before,
                    "a report from a non-holder changed the state"
                );
            }
            Op::Begin { user } => match sim.leader.begin_transaction(sim.now, &caller(user, false))
            {
                Ok((id, entry)) => {
                    txs.push(id);
                    sim.push(vec![entry]);
                }
                Err(e) => assert!(
                    matches!(
                        e,
                        majordodo_core::leader::ActionError::TooManyTransactions(4)
                    ),
                    "{e}"
                ),
            },
            Op::Prepare {
                pick,
                user,
                admin,
                slot,
                delay,
            } => {
                if txs.is_empty() {
                    continue;
                }
                let tx = txs[pick as usize % txs.len()];
                let who = caller(user, admin);
                let (outcome, entry) = sim.leader.submit_as(
                    sim.now,
                    SubmitRequest {
                        task_type: format!("k{}", pick % 3),
                        user_id: who.name.clone(),
                        data: "p".into(),
                        max_attempts: 2,
                        slot: slot.map(|s| format!("s{s}")),
                        requested_start_time: if delay { sim.now + 2_000 } else { 0 },
                        transaction: Some(tx),
                        ..Default::default()
                    },
                    &who,
                );
                let open = sim.state().transaction(tx);
                if let SubmitOutcome::Accepted(_) = outcome {
                    let owner = open.and_then(|t| t.owner.clone());
                    assert!(
                        admin || owner.as_deref() == Some(who.name.as_str()),
                        "{} prepared into transaction {tx} of {owner:?}",
                        who.name
                    );
                    assert!(
                        matches!(entry, Some(LogEntry::PrepareAddTask { .. })),
                        "{entry:?}"
                    );
                } else {
                    assert!(entry.is_none());
                }
                sim.push(entry.into_iter().collect());
            }
            Op::Commit { pick, user, admin } | Op::Rollback { pick, user, admin } => {
                if txs.is_empty() {
                    continue;
                }
                let tx = txs[pick as usize % txs.len()];
                let who = caller(user, admin);
                let decided = if matches!(op, Op::Commit { .. }) {
                    sim.leader.commit_transaction(sim.now, tx, &who)
                } else {
                    sim.leader.rollback_transaction(sim.now, tx, &who)
                };
                match decided {
                    Ok(entry) => {
                        let owner = sim.state().transaction(tx).and_then(|t| t.owner.clone());
                        assert!(admin || owner.as_deref() == Some(who.name.as_str()));
                        sim.push(vec![entry]);
                    }
                    Err(_) => {
                        // Refused: it is over (or ending), somebody else's, or its begin is
                        // still in flight.
                    }
                }
            }
            Op::Cancel { pick, user, admin } => {
                let max = sim.state().max_task_id();
                if max == 0 {
                    continue;
                }
                let id = TaskId(1 + u64::from(pick) % max);
                let who = caller(user, admin);
                let before = sim
                    .state()
                    .task(id)
                    .map(|t| (t.status, t.user_id.to_string()));
                match sim.leader.cancel_task(sim.now, id, &who) {
                    Ok(entries) => {
                        let (status, owner) = before.expect("a cancelled task exists");
                        assert!(!status.is_final(), "task {id} cancelled while {status}");
                        assert!(
                            admin || owner == who.name,
                            "{} cancelled {owner}'s task",
                            who.name
                        );
                        sim.push(entries);
                    }
                    Err(_) => {
                        if let Some((status, owner)) = before
                            && !status.is_final()
                            && (admin || owner == who.name)
                        {
                            assert!(
                                sim.leader.change_in_flight(id),
                                "cancel of {status} task {id} refused without a change in flight"
                            );
                        }
                    }
                }
            }
            Op::StopCancelled { worker } => sim.stop_cancelled(&format!("w{worker}")),
            Op::Assign => sim.assign(),
            Op::Tick => sim.tick(),
            Op::Advance { ms } => sim.advance(ms.into()),
            Op::FlushOne => {
                sim.flush_one();
            }
            Op::CreatePool { pool, ttl } => {
                let data: Vec<u8> = (0..(50 + pool as usize * 40)).map(|i| i as u8).collect();
                let ttl = if ttl { 3_000 } else { 0 };
                if let Ok(entries) =
                    sim.leader
                        .create_code_pool(sim.now, &format!("p{pool}"), ttl, &data, 32)
                {
                    sim.push(entries);
                }
            }
            Op::DeletePool { pool } => {
                if let Ok(entry) = sim.leader.delete_code_pool(sim.now, &format!("p{pool}")) {
                    sim.push(vec![entry]);
                }
            }
            Op::SubmitWithPool { pool, kind } => {
                let (_, entry) = sim.leader.submit(
                    sim.now,
                    SubmitRequest {
                        task_type: format!("k{kind}"),
                        user_id: "1".into(),
                        max_attempts: 2,
                        codepool: Some(format!("p{pool}")),
                        ..Default::default()
                    },
                );
                sim.push(entry.into_iter().collect());
            }
            Op::SetLevel { user, level } => {
                let level = level.map(|(group, res)| ServiceLevel {
                    group: group.into(),
                    resources: level_resources(res),
                    weight: u32::from(res % 3) + 1,
                });
                let entry = sim
                    .leader
                    .set_service_level(sim.now, &format!("{}", user % 2), level)
                    .expect("levels of the simulation name known groups");
                sim.push(vec![entry]);
            }
            Op::SetPriority { pick, priority } => {
                let ids: Vec<TaskId> = sim.state().tasks().map(|t| t.id).collect();
                if !ids.is_empty() {
                    let id = ids[pick as usize % ids.len()];
                    let status = sim.state().task(id).unwrap().status;
                    if let Ok(entry) = sim.leader.set_task_priority(sim.now, id, priority.into()) {
                        assert!(matches!(status, TaskStatus::Waiting | TaskStatus::Delayed));
                        sim.push(vec![entry]);
                    }
                }
            }
            Op::SubmitShared { user, kind } => {
                let (_, entry) = sim.leader.submit(
                    sim.now,
                    SubmitRequest {
                        task_type: format!("k{kind}"),
                        user_id: format!("a{user}"),
                        max_attempts: 3,
                        ..Default::default()
                    },
                );
                sim.push(entry.into_iter().collect());
            }
            Op::SubmitNeeds { user, kind, needs } => {
                let user = format!("{}", user % 2);
                match sim.leader.check_needs(&user, needs_of(needs)) {
                    Ok(needs) => {
                        let (_, entry) = sim.leader.submit(
                            sim.now,
                            SubmitRequest {
                                task_type: format!("k{kind}"),
                                user_id: user,
                                max_attempts: 3,
                                needs,
                                ..Default::default()
                            },
                        );
                        sim.push(entry.into_iter().collect());
                    }
                    // Refused only when it could never run: more than any connected worker
                    // has, or more than a whole quota.
                    Err(NeedsRefusal::NoWorker { .. }) => {
                        let wanted: Vec<(Arc<str>, u64)> = needs_of(needs)
                            .into_iter()
                            .map(|(d, n)| (Arc::from(d.as_str()), n))
                            .collect();
                        let connected: Vec<u8> = (0..3u8)
                            .filter(|w| sim.conns.contains_key(&format!("w{w}")))
                            .collect();
                        assert!(
                            connected.iter().all(|w| !capacity(*w).could_hold(&wanted)),
                            "refused although a connected worker could hold it"
                        );
                    }
                    Err(NeedsRefusal::OverQuota { amount, quota, .. }) => assert!(amount > quota),
                    Err(other) => panic!("simulated needs are valid: {other}"),
                }
            }
            Op::SetQuota { tenant, quota } => {
                let who = if tenant < 2 {
                    majordodo_core::quota::QuotaTenant::User(format!("{tenant}"))
                } else {
                    majordodo_core::quota::QuotaTenant::Group(u32::from(tenant) - 1)
                };
                let quota = quota.map(|(tasks, cpu)| {
                    let mut q = Vec::new();
                    if let Some(t) = tasks {
                        q.push(("tasks".to_string(), u64::from(t)));
                    }
                    if let Some(c) = cpu {
                        q.push(("cpu".to_string(), u64::from(c) * 500));
                    }
                    q
                });
                let entry = sim
                    .leader
                    .set_quota(sim.now, who, quota)
                    .expect("simulated quotas are valid");
                sim.push(vec![entry]);
            }
            Op::IssueCredential { worker } => {
                credentials_issued += 1;
                let id = format!("c{credentials_issued}");
                let key = [credentials_issued as u8; 32];
                let entry = sim
                    .leader
                    .add_worker_credential(sim.now, &id, &format!("w{worker}"), (key, key), None)
                    .expect("a fresh credential id is accepted");
                sim.push(vec![entry]);
            }
            Op::RevokeCredential { pick } => {
                if credentials_issued > 0 {
                    let id = format!("c{}", 1 + u32::from(pick) % credentials_issued);
                    let state = sim.leader.state().credential(&id).map(|c| c.is_active());
                    match sim.leader.revoke_worker_credential(sim.now, &id) {
                        Ok(entry) => {
                            assert_eq!(state, Some(true), "{id} revoked while not active");
                            sim.push(vec![entry]);
                        }
                        // Revoked already, or its issue or revocation still in flight.
                        Err(_) => assert_ne!(
                            (state, sim.leader.has_pending()),
                            (Some(true), false),
                            "an active credential with nothing in flight is revocable"
                        ),
                    }
                }
            }
        }
        check_credentials(&sim);
        check_pools(&sim);
        check_limits(&sim);
        check_capacity(&sim);
        check_attempts(&sim);
        check_delivery(&sim);
        check_prepared(&sim);
    }
    sim.flush();
    check_delivery(&sim);
    check_prepared(&sim);
    check_cancelled_stay_cancelled(&sim.log);
    assert!(
        !sim.leader.has_pending(),
        "every reservation is released once applied"
    );
    sim.state().check_invariants().unwrap();
    let live = keys_of_log(&sim.log);
    let kept: BTreeMap<(String, String), (TaskId, Millis)> = sim
        .state()
        .idempotency_keys()
        .map(|k| {
            (
                (k.user_id.to_string(), k.key.to_string()),
                (k.task_id, k.created),
            )
        })
        .collect();
    assert_eq!(
        kept, live,
        "the state keeps exactly the keys the log leaves live"
    );
    let replayed = sim.replay();
    assert_eq!(replayed, *sim.state(), "replay gives the leader's state");
    // Replaying twice gives the same state again.
    assert_eq!(sim.replay(), replayed);
    let rebuilt =
        BrokerState::from_snapshot(sim.state().to_snapshot(), Arc::new(DefaultGroupMapper))
            .unwrap();
    assert_eq!(rebuilt, *sim.state(), "a snapshot rebuilds the state");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_pipelined_schedules_replay_to_the_same_state(ops in proptest::collection::vec(op(), 1..300)) {
        run(ops);
    }
}

#[test]
fn long_schedule_drains_every_task() {
    // Goal: with workers that always succeed, every submitted task ends finished and the queues
    // are empty (liveness of the event-driven assignment).
    let mut sim = Sim::new(LeaderConfig::default());
    for w in 0..3u8 {
        sim.connect(&format!("w{w}"), capacity(w)).unwrap();
    }
    for i in 0..500u32 {
        sim.submit(SubmitRequest {
            task_type: format!("k{}", i % 3),
            user_id: format!("{}", i % 4),
            data: "x".into(),
            max_attempts: 1,
            ..Default::default()
        });
    }
    for _ in 0..1_000 {
        sim.settle();
        let mut any = false;
        for w in 0..3u8 {
            let id = format!("w{w}");
            for (task, attempt) in sim.running_of(&id) {
                sim.report(&id, task, attempt, Outcome::Finished, "ok");
                any = true;
            }
        }
        if !any {
            break;
        }
    }
    sim.flush();
    // Group 3 is excluded by w2 and not listed by w0/w1 (they serve 0), so all groups are served.
    assert_eq!(sim.state().count(TaskStatus::Finished), 500);
    assert!(sim.state().waiting_index().is_empty());
    assert_eq!(sim.replay(), *sim.state());
}
