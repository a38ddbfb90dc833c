//! What each scheduling rule costs the state machine alone: the same burn-down as `rules-cost`
//! (tasks submitted, then four workers of 256 threads connected, then assign → finish rounds
//! until every task ended), driven straight through the leader with no log, network or
//! workers. One thread and no I/O, so the figures are steadier than the end-to-end burn-down
//! and show which rule costs what. Every entry goes through the record format (encoded and
//! decoded) as a broker's entries do.

use std::sync::Arc;
use std::time::Instant;

use majordodo_core::leader::{FinishReport, SubmitRequest, WorkerHello};
use majordodo_core::model::ServiceLevel;
use majordodo_core::quota::QuotaTenant;
use majordodo_core::{
    BrokerState, DefaultGroupMapper, Leader, LeaderConfig, LogEntry, WorkerCapacity,
};

use crate::core_bench::finished;
use crate::report::{Table, profile_phase};
use crate::rules_cost::{Kind, Rule, RulesCostArgs, Setup, median};

/// The leader with its applied log position.
struct Sim {
    leader: Leader,
    lsn: u64,
    now: i64,
}

impl Sim {
    fn apply(&mut self, entries: Vec<LogEntry>) -> anyhow::Result<()> {
        for e in entries {
            self.lsn += 1;
            let e =
                majordodo_proto::record::decode_entry(&majordodo_proto::record::encode_entry(&e))?;
            self.leader.apply(self.lsn, e)?;
        }
        Ok(())
    }
}

/// One burn-down with `rules` on; the time per task of the drain, in microseconds.
fn burn_down(args: &RulesCostArgs, rules: &[Rule]) -> anyhow::Result<f64> {
    let setup = Setup::new(rules, args.tenants);
    let config = LeaderConfig {
        global_resource_limits: setup.global_limits(),
        ..LeaderConfig::default()
    };
    let state = BrokerState::new(Arc::new(DefaultGroupMapper));
    let mut sim = Sim {
        leader: Leader::new(state, config, 1),
        lsn: 0,
        now: 1,
    };
    for t in 0..setup.tenants() {
        if let Some((resources, weight)) = setup.level(t) {
            let level = ServiceLevel {
                group: 1,
                resources,
                weight,
            };
            let e = sim
                .leader
                .set_service_level(sim.now, &setup.user(t), Some(level))?;
            sim.apply(vec![e])?;
        }
        if let Some(quota) = setup.quota() {
            let e = sim
                .leader
                .set_quota(sim.now, QuotaTenant::User(setup.user(t)), Some(quota))?;
            sim.apply(vec![e])?;
        }
    }
    if let Some(quota) = setup.quota() {
        let e = sim
            .leader
            .set_quota(sim.now, QuotaTenant::Group(1), Some(quota))?;
        sim.apply(vec![e])?;
    }
    let mut entries = Vec::new();
    for i in 0..args.tasks {
        let (user_id, slot, needs) = setup.task(i);
        let req = SubmitRequest {
            task_type: "noop".into(),
            user_id,
            max_attempts: 1,
            slot,
            needs,
            ..Default::default()
        };
        let (_, e) = sim.leader.submit(sim.now, req);
        entries.extend(e);
        if entries.len() >= args.batch as usize {
            sim.apply(std::mem::take(&mut entries))?;
        }
    }
    sim.apply(entries)?;
    for w in 0..args.workers as u64 {
        let mut capacity = WorkerCapacity::any(args.threads);
        capacity.resource_limits = setup.resource_limits(args.threads);
        capacity.amounts = setup.amounts(args.threads);
        let worker_id = format!("worker-{w}");
        let admission = sim
            .leader
            .worker_connected(
                sim.now,
                WorkerHello {
                    conn: w,
                    worker_id: worker_id.clone(),
                    process_id: "bench".into(),
                    location: "bench".into(),
                    capacity,
                    running: vec![],
                },
            )
            .map_err(|e| anyhow::anyhow!("worker refused: {e:?}"))?;
        sim.apply(admission.entries)?;
        anyhow::ensure!(
            sim.leader.session_opened(&worker_id, w),
            "the worker's session opens"
        );
    }
    profile_phase(true);
    let started = Instant::now();
    let mut done = 0_u64;
    // What the workers run: finished one round after they got it, reported 16 at a time.
    let mut running: Vec<(String, u64, Vec<FinishReport>)> = Vec::new();
    let mut idle_rounds = 0;
    while done < args.tasks {
        sim.now += 1;
        let assigned = sim.leader.assign(sim.now);
        let progress = !assigned.is_empty() || !running.is_empty();
        sim.apply(assigned)?;
        for (worker, conn, reports) in running.drain(..) {
            for chunk in reports.chunks(16) {
                let ended = sim.leader.finish_reports(sim.now, &worker, conn, chunk);
                done += ended.len() as u64;
                sim.apply(ended)?;
            }
        }
        for push in sim.leader.take_pushes() {
            running.push((push.worker_id.to_string(), push.conn, finished(&push)));
        }
        idle_rounds = if progress { 0 } else { idle_rounds + 1 };
        anyhow::ensure!(idle_rounds < 3, "the burn-down stalled at {done} tasks");
    }
    let elapsed = started.elapsed();
    profile_phase(false);
    Ok(elapsed.as_secs_f64() * 1e6 / args.tasks as f64)
}

/// Runs the scenario: each rule alone and all of them, each against a plain burn-down in
/// alternated rounds.
pub(crate) fn state_machine(args: &RulesCostArgs) -> anyhow::Result<()> {
    let mut sets: Vec<(String, Vec<Rule>)> = args
        .rules
        .iter()
        .map(|r| (format!("{r:?}").to_lowercase(), vec![*r]))
        .collect();
    if args.rules.len() > 1 {
        sets.push(("all of them".into(), args.rules.clone()));
    }
    let mut t = Table::new(
        "rules-cost --state-machine: the drain through the leader alone, medians of alternated rounds",
        &[
            "rules",
            "tasks",
            "rounds",
            "plain us/task",
            "rules us/task",
            "added us/task",
            "ratio",
        ],
    );
    for (name, rules) in sets {
        let (mut plain, mut with) = (Vec::new(), Vec::new());
        for _ in 0..args.rounds.max(1) {
            // `--only` runs one kind of round (to profile it); the other column is then NaN.
            if args.only != Some(Kind::Rules) {
                plain.push(burn_down(args, &[])?);
            }
            if args.only != Some(Kind::Plain) {
                with.push(burn_down(args, &rules)?);
            }
        }
        let (p, r) = (median(plain), median(with));
        t.row(vec![
            name,
            crate::report::group(args.tasks),
            args.rounds.max(1).to_string(),
            format!("{p:.2}"),
            format!("{r:.2}"),
            format!("{:.2}", r - p),
            format!("{:.2}", p / r),
        ]);
    }
    t.print();
    Ok(())
}
