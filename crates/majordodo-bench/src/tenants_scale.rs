//! The state machine alone, no I/O: what one assignment costs with many tenants, when many
//! tasks wait (`--many` over `--tenants` tenants) against when one task per tenant waits.
//!
//! Steady state, as in the `core` scenario: workers with a fixed capacity; every round the leader
//! assigns, the assigned tasks finish at once and each is replaced by a new task of the same
//! tenant, so every tenant keeps its backlog. The tenants are users of one group (names that are
//! not numbers), so the chooser weighs them against each other in one tier. The cost measured is
//! the time spent in `Leader::assign` per task it assigned; the whole round (assign, apply,
//! finish, refill) is shown beside it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use majordodo_core::leader::{FinishReport, Outcome, SubmitRequest, WorkerHello};
use majordodo_core::{
    BrokerState, DefaultGroupMapper, Leader, LeaderConfig, LogEntry, WorkerCapacity,
};

use crate::report::{Table, group};

/// Options of the `tenants-scale` scenario.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct TenantsScaleArgs {
    /// Tenants (users of group 1).
    #[arg(long, default_value_t = 1_000)]
    pub(crate) tenants: u64,
    /// Waiting tasks of the "many" run, spread evenly over the tenants.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) many: u64,
    /// Assignments measured in each run.
    #[arg(long, default_value_t = 300_000)]
    pub(crate) assignments: u64,
    /// Connected workers. Their total capacity should stay below `--tenants`, so that a round
    /// of the "few" run assigns as many tasks as one of the "many" run.
    #[arg(long, default_value_t = 10)]
    pub(crate) workers: u32,
    /// Capacity (max threads) of each worker.
    #[arg(long, default_value_t = 50)]
    pub(crate) threads: u32,
    /// Goal: the cost per assignment with many waiting at most this many times the cost with
    /// one per tenant.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) goal_ratio: f64,
}

struct Sim {
    leader: Leader,
    lsn: u64,
    now: i64,
    users: Vec<String>,
}

impl Sim {
    fn new(tenants: u64) -> Sim {
        let state = BrokerState::new(Arc::new(DefaultGroupMapper));
        let config = LeaderConfig {
            max_assignments_per_round: usize::MAX,
            ..LeaderConfig::default()
        };
        Sim {
            leader: Leader::new(state, config, 1),
            lsn: 0,
            now: 1,
            users: (0..tenants).map(|t| format!("tenant-{t}")).collect(),
        }
    }

    fn apply(&mut self, entries: Vec<LogEntry>) {
        for e in entries {
            self.lsn += 1;
            self.leader
                .apply(self.lsn, e)
                .expect("leader entries apply");
        }
    }

    /// Submits one task for each tenant index in `owners`, in rounds of at most 1 000.
    fn submit(&mut self, owners: impl IntoIterator<Item = usize>) {
        let mut entries = Vec::new();
        for (n, owner) in owners.into_iter().enumerate() {
            let (_, entry) = self.leader.submit(
                self.now,
                SubmitRequest {
                    task_type: "noop".into(),
                    user_id: self.users[owner].clone(),
                    data: String::new(),
                    max_attempts: 1,
                    ..Default::default()
                },
            );
            entries.extend(entry);
            if n % 1_000 == 999 {
                self.apply(std::mem::take(&mut entries));
            }
        }
        self.apply(entries);
    }

    fn connect(&mut self, workers: u32, threads: u32) {
        for w in 0..workers {
            let admission = self
                .leader
                .worker_connected(
                    self.now,
                    WorkerHello {
                        conn: u64::from(w),
                        worker_id: format!("worker-{w}"),
                        process_id: "p".into(),
                        location: "bench".into(),
                        capacity: WorkerCapacity::any(threads),
                        running: vec![],
                    },
                )
                .expect("workers are admitted");
            self.apply(admission.entries);
            let opened = self
                .leader
                .session_opened(&format!("worker-{w}"), u64::from(w));
            assert!(opened, "a worker's session opens once it is admitted");
        }
    }

    /// Rounds until `target` assignments: assign, finish everything assigned, give each
    /// finished task's tenant a new one. Returns (assigned, time in `assign`, whole time).
    fn steady_state(&mut self, target: u64) -> (u64, Duration, Duration) {
        let started = Instant::now();
        let mut in_assign = Duration::ZERO;
        let mut assigned = 0u64;
        let index: std::collections::HashMap<String, usize> = self
            .users
            .iter()
            .enumerate()
            .map(|(i, u)| (u.clone(), i))
            .collect();
        while assigned < target {
            self.now += 1;
            let t = Instant::now();
            let entries = self.leader.assign(self.now);
            in_assign += t.elapsed();
            let n = entries.len() as u64;
            assert!(n > 0, "workers have room and tasks wait");
            assigned += n;
            self.apply(entries);
            let mut owners = Vec::with_capacity(n as usize);
            for push in self.leader.take_pushes() {
                let reports: Vec<FinishReport> = push
                    .tasks
                    .iter()
                    .map(|(id, attempt)| {
                        let task = self.leader.state().task(*id).expect("assigned tasks exist");
                        owners.push(index[&*task.user_id]);
                        FinishReport {
                            task_id: *id,
                            attempt: *attempt,
                            outcome: Outcome::Finished,
                            result: String::new(),
                        }
                    })
                    .collect();
                let entries =
                    self.leader
                        .finish_reports(self.now, &push.worker_id, push.conn, &reports);
                self.apply(entries);
            }
            self.submit(owners);
        }
        (assigned, in_assign, started.elapsed())
    }
}

/// Runs the scenario.
pub(crate) fn run(args: &TenantsScaleArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.tenants > 0, "--tenants must be at least 1");
    let per_tenant = (args.many / args.tenants).max(1);
    let mut table = Table::new(
        "tenants-scale: cost of an assignment with many tenants in one tier, many waiting vs one per tenant (state machine only)",
        &[
            "tenants",
            "waiting",
            "workers x threads",
            "assignments",
            "assign us/task",
            "round us/task",
        ],
    );
    let mut costs = Vec::new();
    for per in [per_tenant, 1] {
        let mut sim = Sim::new(args.tenants);
        for _ in 0..per {
            sim.submit(0..args.tenants as usize);
        }
        sim.connect(args.workers, args.threads);
        // Fill the workers once, outside the measurement.
        sim.steady_state(u64::from(args.workers * args.threads));
        let (assigned, in_assign, whole) = sim.steady_state(args.assignments);
        let us = |d: Duration| d.as_secs_f64() * 1e6 / assigned.max(1) as f64;
        costs.push(us(in_assign));
        table.row(vec![
            group(args.tenants),
            group(sim.leader.state().waiting_index().len() as u64),
            format!("{} x {}", args.workers, args.threads),
            group(assigned),
            format!("{:.3}", us(in_assign)),
            format!("{:.3}", us(whole)),
        ]);
    }
    table.print();
    if let [many, few] = costs[..] {
        let ratio = many / few;
        let mut t = Table::new(
            "tenants-scale: assignment cost ratio",
            &[
                "many us/task",
                "few us/task",
                "ratio many/few",
                "goal",
                "result",
            ],
        );
        t.row(vec![
            format!("{many:.3}"),
            format!("{few:.3}"),
            format!("{ratio:.2}"),
            format!("<= {:.1}", args.goal_ratio),
            if ratio <= args.goal_ratio {
                "PASS"
            } else {
                "FAIL"
            }
            .to_string(),
        ]);
        t.print();
    }
    Ok(())
}
