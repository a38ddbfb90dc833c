//! The invariants a chaos run must keep, checked on what happened, each from two sides where
//! it can be: what the workers actually executed (their own records), the log the brokers
//! wrote (every ledger, read back with `majordodo dump-log --json`), the final state and what
//! the client was answered.
//!
//! - (a) every acknowledged submission exists exactly once: an id answered is that task's id,
//!   a "not created" left no task, and no two tasks carry the same submission;
//! - (b) no task had two live attempts at once: no two executions of a task overlap in time,
//!   no attempt ran twice, and the log never assigns a task that is running;
//! - (c) no slot was held by two live tasks at once: executions of tasks of one slot never
//!   overlap, and the log never adds a task whose slot a live task holds;
//! - (d) attempts never exceed `maxattempts`, in executions, in the log and at the end;
//! - and, tying the sides together: the log is one dense sequence of positions, ids are never
//!   reused and grow in submission order, every execution was an assignment in the log,
//!   replaying the log gives the final state, no delayed task ran before its start time, and
//!   every task ended.
//!
//! Every check returns violations as sentences; an empty list is a pass.

use std::collections::{BTreeMap, HashMap, HashSet};

use majordodo_client::TaskInfo;
use serde_json::Value;

use crate::workload::{Outcome, Submission, n_of};

/// One execution as a worker recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Execution {
    pub(crate) worker: String,
    pub(crate) task: u64,
    pub(crate) attempt: u32,
    /// The submission number in the task's data.
    pub(crate) n: u64,
    /// Nanoseconds since the epoch.
    pub(crate) start: u128,
    /// `None` when the worker never recorded its end.
    pub(crate) end: Option<u128>,
}

impl Execution {
    fn end_or_never(&self) -> u128 {
        self.end.unwrap_or(u128::MAX)
    }

    fn describe(&self) -> String {
        format!(
            "task {} attempt {} on {} [{} .. {}]",
            self.task,
            self.attempt,
            self.worker,
            self.start,
            self.end.map_or("no end".to_owned(), |e| e.to_string())
        )
    }
}

/// The executions in one worker's record (`start`/`end` lines, see the executor script).
pub(crate) fn parse_executions(
    worker: &str,
    text: &str,
    violations: &mut Vec<String>,
) -> Vec<Execution> {
    let mut out: Vec<Execution> = Vec::new();
    let mut open: HashMap<(u64, u32), usize> = HashMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let parsed = match fields.as_slice() {
            [kind, task, attempt, n, at] => (|| {
                Some((
                    *kind,
                    task.parse::<u64>().ok()?,
                    attempt.parse::<u32>().ok()?,
                    n.parse::<u64>().ok()?,
                    at.parse::<u128>().ok()?,
                ))
            })(),
            _ => None,
        };
        let Some((kind, task, attempt, n, at)) = parsed else {
            violations.push(format!("{worker} recorded an unreadable line {line:?}"));
            continue;
        };
        match kind {
            "start" => {
                open.insert((task, attempt), out.len());
                out.push(Execution {
                    worker: worker.to_owned(),
                    task,
                    attempt,
                    n,
                    start: at,
                    end: None,
                });
            }
            "end" => match open.remove(&(task, attempt)) {
                Some(i) => out[i].end = Some(at),
                None => violations.push(format!(
                    "{worker} recorded the end of task {task} attempt {attempt} without its start"
                )),
            },
            _ => violations.push(format!("{worker} recorded an unreadable line {line:?}")),
        }
    }
    out
}

/// Everything a run leaves to check.
pub(crate) struct Evidence<'a> {
    /// What the client submitted and was answered, in order.
    pub(crate) submissions: &'a [Submission],
    /// The leader's tasks at the end, every broker agreeing.
    pub(crate) tasks: &'a [TaskInfo],
    /// Every worker's executions.
    pub(crate) executions: &'a [Execution],
    /// The log's records in ledger order (`dump-log --json` objects).
    pub(crate) log: &'a [Value],
}

/// Every violation of the invariants.
pub(crate) fn check(e: &Evidence<'_>) -> Vec<String> {
    let mut v = Vec::new();
    check_submissions(e, &mut v);
    check_executions(e, &mut v);
    check_log(e, &mut v);
    v
}

/// (a), ids in submission order, every task ended and within its attempts.
fn check_submissions(e: &Evidence<'_>, v: &mut Vec<String>) {
    let mut by_n: BTreeMap<u64, Vec<&TaskInfo>> = BTreeMap::new();
    for t in e.tasks {
        match n_of(&t.data) {
            Some(n) => by_n.entry(n).or_default().push(t),
            None => v.push(format!(
                "task {} has data {:?} nobody submitted",
                t.task_id, t.data
            )),
        }
        if t.status != "finished" && t.status != "error" {
            v.push(format!("task {} did not end: {}", t.task_id, t.status));
        }
        if t.maxattempts > 0 && t.attempts > t.maxattempts {
            v.push(format!(
                "task {} ended after {} attempts, maxattempts {}",
                t.task_id, t.attempts, t.maxattempts
            ));
        }
        if t.status == "finished" {
            let expected = n_of(&t.data).map(|n| format!("done {n}"));
            if t.result.as_deref() != expected.as_deref() {
                v.push(format!(
                    "task {} finished with result {:?}, expected {expected:?}",
                    t.task_id, t.result
                ));
            }
        }
    }
    for (n, tasks) in &by_n {
        if tasks.len() > 1 {
            let ids: Vec<u64> = tasks.iter().map(|t| t.task_id).collect();
            v.push(format!(
                "submission {n} exists {} times: tasks {ids:?}",
                tasks.len()
            ));
        }
    }
    let submitted: HashSet<u64> = e.submissions.iter().map(|s| s.plan.n).collect();
    for n in by_n.keys() {
        if !submitted.contains(n) {
            v.push(format!("a task names submission {n}, which was never made"));
        }
    }
    let mut last_id = 0;
    for s in e.submissions {
        let n = s.plan.n;
        let found = by_n.get(&n).map(Vec::as_slice).unwrap_or_default();
        match &s.outcome {
            Outcome::Created(id) => match found {
                [] => v.push(format!(
                    "submission {n} was answered task {id}, which is missing"
                )),
                [t, ..] if t.task_id != *id => v.push(format!(
                    "submission {n} was answered task {id} but is task {}",
                    t.task_id
                )),
                [t, ..] => {
                    if t.data != s.plan.data() {
                        v.push(format!(
                            "task {id} has data {:?}, submitted {:?}",
                            t.data,
                            s.plan.data()
                        ));
                    }
                    if t.maxattempts != s.plan.max_attempts
                        || t.slot.as_deref() != s.plan.slot
                        || t.requested_start_time != s.start_at
                    {
                        v.push(format!(
                            "task {id} is not what submission {n} asked: {t:?} for {s:?}"
                        ));
                    }
                }
            },
            Outcome::NotCreated(why) => {
                if let [t, ..] = found {
                    v.push(format!(
                        "submission {n} was answered not created ({why}) but is task {}",
                        t.task_id
                    ));
                }
                if s.plan.slot.is_none() {
                    v.push(format!(
                        "submission {n} without a slot was not created: {why}"
                    ));
                }
            }
            Outcome::Unknown(_) => {}
            Outcome::Refused(why) => v.push(format!("submission {n} was refused: {why}")),
        }
        if let [t, ..] = found {
            if t.task_id <= last_id {
                v.push(format!(
                    "task ids do not grow in submission order: submission {n} is task {}, after \
                     task {last_id}",
                    t.task_id
                ));
            }
            last_id = t.task_id;
        }
    }
}

/// (b), (c), (d) from what the workers executed.
fn check_executions(e: &Evidence<'_>, v: &mut Vec<String>) {
    let tasks: HashMap<u64, &TaskInfo> = e.tasks.iter().map(|t| (t.task_id, t)).collect();
    let plans: HashMap<u64, &Submission> = e.submissions.iter().map(|s| (s.plan.n, s)).collect();
    let mut per_task: BTreeMap<u64, Vec<&Execution>> = BTreeMap::new();
    let mut per_slot: BTreeMap<&str, Vec<&Execution>> = BTreeMap::new();
    let mut seen: HashSet<(u64, u32)> = HashSet::new();
    for x in e.executions {
        if !seen.insert((x.task, x.attempt)) {
            v.push(format!(
                "attempt {} of task {} ran twice",
                x.attempt, x.task
            ));
        }
        if x.end.is_none() {
            v.push(format!("{} never ended", x.describe()));
        }
        per_task.entry(x.task).or_default().push(x);
        match tasks.get(&x.task) {
            None => v.push(format!(
                "{} ran a task the brokers do not have",
                x.describe()
            )),
            Some(t) => {
                if n_of(&t.data) != Some(x.n) {
                    v.push(format!(
                        "{} ran with the data of submission {}",
                        x.describe(),
                        x.n
                    ));
                }
                if t.maxattempts > 0 && x.attempt > t.maxattempts {
                    v.push(format!(
                        "{} ran beyond maxattempts {}",
                        x.describe(),
                        t.maxattempts
                    ));
                }
            }
        }
        if let Some(s) = plans.get(&x.n) {
            if s.start_at > 0 && (x.start / 1_000_000) < s.start_at as u128 {
                v.push(format!(
                    "{} started before its requested start time {}",
                    x.describe(),
                    s.start_at
                ));
            }
            if let Some(slot) = s.plan.slot {
                per_slot.entry(slot).or_default().push(x);
            }
        }
    }
    for (task, runs) in &mut per_task {
        if let Some(pair) = first_overlap(runs) {
            v.push(format!("task {task} had two live attempts at once: {pair}"));
        }
    }
    for (slot, runs) in &mut per_slot {
        if let Some(pair) = first_overlap(runs) {
            v.push(format!(
                "slot {slot} was held by two live tasks at once: {pair}"
            ));
        }
    }
}

/// The first two executions of `runs` that overlap in time, described.
fn first_overlap(runs: &mut [&Execution]) -> Option<String> {
    runs.sort_by_key(|x| x.start);
    runs.windows(2).find_map(|w| {
        (w[0].end_or_never() > w[1].start)
            .then(|| format!("{} and {}", w[0].describe(), w[1].describe()))
    })
}

/// A task as the log's records leave it.
#[derive(Debug)]
struct Replayed {
    status: String,
    attempts: u32,
    max_attempts: u32,
    slot: Option<String>,
}

/// (b), (c), (d) from the log, and that replaying it gives the final state.
fn check_log(e: &Evidence<'_>, v: &mut Vec<String>) {
    let mut tasks: BTreeMap<u64, Replayed> = BTreeMap::new();
    let mut slots: HashMap<String, u64> = HashMap::new();
    let mut assigned: HashSet<(u64, u32, String)> = HashSet::new();
    let mut ever: HashSet<u64> = HashSet::new();
    let mut last_lsn = 0;
    let field = |r: &Value, k: &str| r[k].as_u64().unwrap_or(0);
    for r in e.log {
        let lsn = field(r, "lsn");
        if lsn != last_lsn + 1 {
            v.push(format!(
                "the log goes from lsn {last_lsn} to lsn {lsn}: {r}"
            ));
        }
        last_lsn = lsn;
        let id = field(r, "task");
        match r["kind"].as_str().unwrap_or_default() {
            "add_task" => {
                if !ever.insert(id) {
                    v.push(format!("lsn {lsn}: task id {id} is used again"));
                }
                let slot = r["slot"].as_str().map(str::to_owned);
                if let Some(slot) = &slot
                    && let Some(holder) = slots.get(slot)
                {
                    v.push(format!(
                        "lsn {lsn}: task {id} takes slot {slot}, held by live task {holder}"
                    ));
                }
                if let Some(slot) = &slot {
                    slots.insert(slot.clone(), id);
                }
                let delayed = field(r, "start_at") > field(r, "created");
                tasks.insert(
                    id,
                    Replayed {
                        status: if delayed { "delayed" } else { "waiting" }.to_owned(),
                        attempts: field(r, "attempts") as u32,
                        max_attempts: field(r, "max_attempts") as u32,
                        slot,
                    },
                );
            }
            "assign_task" => {
                let attempt = field(r, "attempt") as u32;
                let worker = r["worker"].as_str().unwrap_or_default().to_owned();
                let Some(t) = tasks.get_mut(&id) else {
                    v.push(format!("lsn {lsn}: assigns unknown task {id}"));
                    continue;
                };
                if t.status == "running" {
                    v.push(format!(
                        "lsn {lsn}: assigns task {id} attempt {attempt} while attempt {} is live",
                        t.attempts
                    ));
                } else if t.status != "waiting" {
                    v.push(format!(
                        "lsn {lsn}: assigns task {id}, which is {}",
                        t.status
                    ));
                }
                if attempt != t.attempts + 1 {
                    v.push(format!(
                        "lsn {lsn}: assigns task {id} attempt {attempt} after attempt {}",
                        t.attempts
                    ));
                }
                if t.max_attempts > 0 && attempt > t.max_attempts {
                    v.push(format!(
                        "lsn {lsn}: assigns task {id} attempt {attempt} beyond maxattempts {}",
                        t.max_attempts
                    ));
                }
                t.status = "running".into();
                t.attempts = attempt;
                assigned.insert((id, attempt, worker));
            }
            "task_status_change" => {
                let status = r["status"].as_str().unwrap_or_default().to_owned();
                let Some(t) = tasks.get_mut(&id) else {
                    v.push(format!("lsn {lsn}: changes unknown task {id}"));
                    continue;
                };
                if (status == "finished" || status == "error")
                    && let Some(slot) = &t.slot
                    && slots.get(slot) == Some(&id)
                {
                    slots.remove(slot);
                }
                t.status = status;
            }
            "purge_tasks" => {
                for id in r["tasks"].as_array().into_iter().flatten() {
                    tasks.remove(&id.as_u64().unwrap_or(0));
                }
            }
            "undecodable" => v.push(format!("lsn {lsn}: a record does not decode: {r}")),
            _ => {}
        }
    }
    for x in e.executions {
        if !assigned.contains(&(x.task, x.attempt, x.worker.clone())) {
            v.push(format!(
                "{} ran, but the log never assigned it",
                x.describe()
            ));
        }
    }
    let finals: BTreeMap<u64, &TaskInfo> = e.tasks.iter().map(|t| (t.task_id, t)).collect();
    for (id, t) in &tasks {
        match finals.get(id) {
            None => v.push(format!(
                "the log holds task {id} ({}), the brokers do not",
                t.status
            )),
            Some(f) if f.status != t.status || f.attempts != t.attempts => v.push(format!(
                "replaying the log leaves task {id} {} after {} attempts; the brokers have it {} \
                 after {}",
                t.status, t.attempts, f.status, f.attempts
            )),
            Some(_) => {}
        }
    }
    for id in finals.keys() {
        if !tasks.contains_key(id) {
            v.push(format!("the brokers hold task {id}, the log does not"));
        }
    }
}

#[cfg(test)]
mod tests {
    //! The checks catch what they are for: each test breaks one invariant in an otherwise
    //! clean history and expects the violation, so a chaos run that passes means something.

    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::workload::Plan;

    fn plan(n: u64, slot: Option<&'static str>, max_attempts: u32) -> Plan {
        Plan {
            n,
            slot,
            delay: None,
            max_attempts,
            runs_for: Duration::from_millis(100),
            succeeds_at: 1,
        }
    }

    fn submission(plan: Plan, outcome: Outcome) -> Submission {
        Submission {
            plan,
            start_at: 0,
            outcome,
            tries: 1,
        }
    }

    fn task(id: u64, plan: &Plan, status: &str, attempts: u32) -> TaskInfo {
        TaskInfo {
            task_id: id,
            user_id: "chaos".into(),
            task_type: "chaos".into(),
            status: status.into(),
            data: plan.data(),
            result: (status == "finished").then(|| format!("done {}", plan.n)),
            worker_id: Some("w1".into()),
            slot: plan.slot.map(str::to_owned),
            attempts,
            maxattempts: plan.max_attempts,
            deadline: 0,
            requested_start_time: 0,
            created_timestamp: 1,
            mode: None,
            codepool: None,
            resources: None,
        }
    }

    fn run(task: u64, attempt: u32, n: u64, start: u128, end: u128) -> Execution {
        Execution {
            worker: "w1".into(),
            task,
            attempt,
            n,
            start,
            end: Some(end),
        }
    }

    fn add(lsn: u64, task: u64, plan: &Plan) -> Value {
        let mut r = json!({"lsn": lsn, "kind": "add_task", "task": task,
            "max_attempts": plan.max_attempts, "created": 1, "data": plan.data()});
        if let Some(slot) = plan.slot {
            r["slot"] = slot.into();
        }
        r
    }

    fn assign(lsn: u64, task: u64, attempt: u32) -> Value {
        json!({"lsn": lsn, "kind": "assign_task", "task": task, "worker": "w1", "attempt": attempt})
    }

    fn change(lsn: u64, task: u64, status: &str, attempt: u32) -> Value {
        json!({"lsn": lsn, "kind": "task_status_change", "task": task, "status": status,
            "attempt": attempt})
    }

    /// Two tasks run one after the other, the second retried once: a clean history.
    struct History {
        submissions: Vec<Submission>,
        tasks: Vec<TaskInfo>,
        executions: Vec<Execution>,
        log: Vec<Value>,
    }

    fn clean() -> History {
        let (p1, p2) = (plan(1, Some("s0"), 1), plan(2, Some("s0"), 2));
        History {
            tasks: vec![task(10, &p1, "finished", 1), task(11, &p2, "finished", 2)],
            log: vec![
                add(1, 10, &p1),
                assign(2, 10, 1),
                change(3, 10, "finished", 1),
                add(4, 11, &p2),
                assign(5, 11, 1),
                change(6, 11, "waiting", 1),
                assign(7, 11, 2),
                change(8, 11, "finished", 2),
            ],
            executions: vec![
                run(10, 1, 1, 100, 200),
                run(11, 1, 2, 300, 400),
                run(11, 2, 2, 500, 600),
            ],
            submissions: vec![
                submission(p1, Outcome::Created(10)),
                submission(p2, Outcome::Created(11)),
            ],
        }
    }

    fn violations(h: &History) -> Vec<String> {
        check(&Evidence {
            submissions: &h.submissions,
            tasks: &h.tasks,
            executions: &h.executions,
            log: &h.log,
        })
    }

    fn assert_caught(h: &History, needle: &str) {
        let found = violations(h);
        assert!(
            found.iter().any(|v| v.contains(needle)),
            "expected {needle:?} in {found:#?}"
        );
    }

    #[test]
    fn a_clean_history_passes() {
        // Goal: no false alarm on a history that keeps every invariant.
        assert_eq!(violations(&clean()), Vec::<String>::new());
    }

    #[test]
    fn overlapping_attempts_of_one_task_are_caught() {
        // Goal: (b) from the executions: attempt 2 starting before attempt 1 ended.
        let mut h = clean();
        h.executions[2].start = 350;
        assert_caught(&h, "task 11 had two live attempts at once");
        h.executions[2] = run(11, 1, 2, 700, 800);
        assert_caught(&h, "attempt 1 of task 11 ran twice");
    }

    #[test]
    fn an_assignment_of_a_running_task_is_caught() {
        // Goal: (b) from the log: a second assignment while the first is live.
        let mut h = clean();
        h.log[5] = json!({"lsn": 6, "kind": "noop"});
        assert_caught(&h, "assigns task 11 attempt 2 while attempt 1 is live");
    }

    #[test]
    fn a_slot_held_by_two_live_tasks_is_caught() {
        // Goal: (c) from the executions and from the log.
        let mut h = clean();
        h.executions[1].start = 150;
        assert_caught(&h, "slot s0 was held by two live tasks at once");
        let mut h = clean();
        h.log.swap(2, 3);
        h.log[2]["lsn"] = 3.into();
        h.log[3]["lsn"] = 4.into();
        assert_caught(&h, "task 11 takes slot s0, held by live task 10");
    }

    #[test]
    fn attempts_beyond_maxattempts_are_caught() {
        // Goal: (d) in the executions, the log and the final state.
        let mut h = clean();
        h.tasks[0].attempts = 2;
        h.log.insert(3, change(4, 10, "waiting", 1));
        h.log.insert(4, assign(5, 10, 2));
        for (i, r) in h.log.iter_mut().enumerate() {
            r["lsn"] = (i as u64 + 1).into();
        }
        h.executions.push(run(10, 2, 1, 250, 260));
        assert_caught(&h, "assigns task 10 attempt 2 beyond maxattempts 1");
        assert_caught(&h, "ran beyond maxattempts 1");
        assert_caught(&h, "task 10 ended after 2 attempts, maxattempts 1");
    }

    #[test]
    fn lost_and_doubled_submissions_are_caught() {
        // Goal: (a): an acknowledged task missing, a submission twice, a "not created" task
        // that exists.
        let mut h = clean();
        h.tasks.remove(0);
        assert_caught(&h, "submission 1 was answered task 10, which is missing");
        let mut h = clean();
        let again = task(12, &h.submissions[1].plan, "finished", 1);
        h.tasks.push(again);
        assert_caught(&h, "submission 2 exists 2 times");
        let mut h = clean();
        h.submissions[1].outcome = Outcome::NotCreated("slot s0 already assigned".into());
        assert_caught(
            &h,
            "was answered not created (slot s0 already assigned) but is task 11",
        );
    }

    #[test]
    fn a_log_that_does_not_replay_to_the_state_is_caught() {
        // Goal: gaps in positions, reused ids, executions the log never assigned, and a final
        // state the log does not lead to.
        let mut h = clean();
        h.log.remove(7);
        assert_caught(
            &h,
            "replaying the log leaves task 11 running after 2 attempts",
        );
        let mut h = clean();
        h.log[4]["lsn"] = 9.into();
        assert_caught(&h, "the log goes from lsn 4 to lsn 9");
        let mut h = clean();
        h.executions.push(run(11, 3, 2, 900, 950));
        assert_caught(
            &h,
            "task 11 attempt 3 on w1 [900 .. 950] ran, but the log never assigned it",
        );
        let mut h = clean();
        h.log[3]["task"] = 10.into();
        assert_caught(&h, "task id 10 is used again");
    }
}
