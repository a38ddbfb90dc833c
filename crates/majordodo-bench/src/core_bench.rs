//! The state machine alone, no I/O: how much memory a waiting task costs, and how fast the
//! leader assigns tasks when many wait versus when few wait.
//!
//! Assignment throughput is measured in steady state: workers with a fixed capacity; every
//! round the leader assigns, the assigned tasks finish at once and as many new tasks are
//! submitted, so the number waiting stays constant. Both runs do exactly the same work per task;
//! only the number of waiting tasks differs.

use std::sync::Arc;
use std::time::Instant;

use majordodo_core::leader::{
    FinishReport, Outcome, SubmitRequest, WorkerAssignments, WorkerHello,
};
use majordodo_core::{
    BrokerState, DefaultGroupMapper, Leader, LeaderConfig, LogEntry, WorkerCapacity,
};

use crate::report::{Table, group, mib, per_sec, rss_bytes};

/// Options of the `core` scenario.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Waiting tasks for the memory measurement and the "many waiting" run.
    #[arg(long, default_value_t = 1_000_000)]
    many: u64,
    /// Waiting tasks of the "few waiting" run.
    #[arg(long, default_value_t = 1_000)]
    few: u64,
    /// Assignments measured in each run.
    #[arg(long, default_value_t = 300_000)]
    assignments: u64,
    /// Connected workers.
    #[arg(long, default_value_t = 100)]
    workers: u32,
    /// Capacity (max threads) of each worker.
    #[arg(long, default_value_t = 50)]
    threads: u32,
    /// Distinct task types.
    #[arg(long, default_value_t = 10)]
    types: u32,
    /// Distinct groups the users map to (users are numbered, and the default mapper uses the
    /// number as the group).
    #[arg(long, default_value_t = 1)]
    groups: u32,
    /// Bytes of data per task.
    #[arg(long, default_value_t = 32)]
    data_bytes: usize,
}

struct Sim {
    leader: Leader,
    lsn: u64,
    now: i64,
    submitted: u64,
    args_types: u32,
    args_groups: u32,
    data: String,
}

impl Sim {
    fn new(args: &Args) -> Sim {
        let state = BrokerState::new(Arc::new(DefaultGroupMapper));
        let config = LeaderConfig {
            max_assignments_per_round: usize::MAX,
            ..LeaderConfig::default()
        };
        Sim {
            leader: Leader::new(state, config, 1),
            lsn: 0,
            now: 1,
            submitted: 0,
            args_types: args.types,
            args_groups: args.groups,
            data: "x".repeat(args.data_bytes),
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

    /// Submits `n` tasks in rounds of at most 1 000, as a broker would.
    fn submit(&mut self, n: u64) {
        let mut left = n;
        while left > 0 {
            let batch = left.min(1_000);
            left -= batch;
            self.submit_round(batch);
        }
    }

    fn submit_round(&mut self, n: u64) {
        let mut entries = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let i = self.submitted;
            self.submitted += 1;
            let (_, entry) = self.leader.submit(
                self.now,
                SubmitRequest {
                    task_type: format!("type{}", i % u64::from(self.args_types)),
                    user_id: format!("{}", 1 + i % u64::from(self.args_groups)),
                    data: self.data.clone(),
                    max_attempts: 1,
                    ..Default::default()
                },
            );
            entries.extend(entry);
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

    /// Runs rounds until `target` assignments: assign, finish everything assigned, refill.
    fn steady_state(&mut self, target: u64) -> (u64, f64) {
        let started = Instant::now();
        let mut assigned = 0u64;
        while assigned < target {
            self.now += 1;
            let entries = self.leader.assign(self.now);
            let n = entries.len() as u64;
            assert!(n > 0, "workers have room and tasks wait");
            assigned += n;
            self.apply(entries);
            for push in self.leader.take_pushes() {
                let reports = finished(&push);
                let entries =
                    self.leader
                        .finish_reports(self.now, &push.worker_id, push.conn, &reports);
                self.apply(entries);
            }
            self.submit(n);
        }
        (assigned, started.elapsed().as_secs_f64())
    }
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let me = std::process::id().to_string();

    // Memory per waiting task.
    let before = rss_bytes(&me).unwrap_or(0);
    let mut sim = Sim::new(args);
    let started = Instant::now();
    sim.submit(args.many);
    let submit_secs = started.elapsed().as_secs_f64();
    let after = rss_bytes(&me).unwrap_or(0);
    let mut memory = Table::new(
        "core: memory of waiting tasks (state machine only, no log)",
        &[
            "waiting tasks",
            "data bytes/task",
            "RSS growth",
            "bytes/task",
            "submit+apply rate/s",
        ],
    );
    memory.row(vec![
        group(args.many),
        args.data_bytes.to_string(),
        mib(after.saturating_sub(before)),
        group(after.saturating_sub(before) / args.many.max(1)),
        per_sec(args.many as f64 / submit_secs),
    ]);
    memory.print();

    // Assignment throughput, many waiting versus few waiting, in the same run.
    let mut table = Table::new(
        "core: steady-state assignment throughput (assign + finish + refill per task)",
        &[
            "waiting",
            "workers x threads",
            "types",
            "groups",
            "assignments",
            "seconds",
            "assignments/s",
        ],
    );
    let mut rates = Vec::new();
    for (label, waiting, sim) in [("many", args.many, Some(sim)), ("few", args.few, None)] {
        let mut sim = match sim {
            Some(s) => s,
            None => {
                let mut s = Sim::new(args);
                s.submit(waiting);
                s
            }
        };
        sim.connect(args.workers, args.threads);
        // Fill the workers once, outside the measurement.
        sim.steady_state(u64::from(args.workers * args.threads));
        let (assigned, secs) = sim.steady_state(args.assignments);
        let rate = assigned as f64 / secs;
        rates.push((label, rate));
        table.row(vec![
            group(sim.leader.state().waiting_index().len() as u64),
            format!("{} x {}", args.workers, args.threads),
            args.types.to_string(),
            args.groups.to_string(),
            group(assigned),
            format!("{secs:.2}"),
            per_sec(rate),
        ]);
    }
    table.print();
    if let [(_, many), (_, few)] = rates[..] {
        println!("ratio many/few: {:.2}", many / few);
    }
    Ok(())
}

/// The reports of a worker that ran every task of `push` to a finish with no result.
pub(crate) fn finished(push: &WorkerAssignments) -> Vec<FinishReport> {
    push.tasks
        .iter()
        .map(|(id, attempt)| FinishReport {
            task_id: *id,
            attempt: *attempt,
            outcome: Outcome::Finished,
            result: String::new(),
        })
        .collect()
}
