//! What the scheduling rules cost: the burn-down of no-op tasks on a plain broker against the
//! same burn-down with every rule on, rounds alternated in one run (plain, rules, plain, ...),
//! each on a fresh in-process broker (file log, fsync on) with workers over TCP.
//!
//! With the rules on, every task has its own slot and needs cpu and memory; its owner (one of
//! `--tenants` users of group 1, with weights 1, 2, 3, 1, 2, ...) has a service level with a named
//! resource, limited per worker and globally; every user and the group have quotas of tasks,
//! cpu and memory. Every limit is high enough never to hold a task back, so both runs do the
//! same work and the difference is the cost of checking and bookkeeping.
//!
//! Each round also reports the process's CPU time during the burn-down (broker, workers and
//! clients share the process): on a shared machine the CPU time per task is steadier than the
//! wall-clock rate, and its ratio says how much work the rules add.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use majordodo_core::LeaderConfig;
use majordodo_core::quota::QuotaTenant;
use majordodo_proto::http::TaskSubmission;
use majordodo_proto::worker::Capacity;
use majordodo_worker::{TaskFailure, executor_fn};

use crate::cluster::{Workers, submit_made, wait_finished};
use crate::e2e::Common;
use crate::inproc::InProcBroker;
use crate::report::{Table, group, per_sec, process_cpu_seconds, profile_phase};

/// The named resource of the rules run.
const RESOURCE: &str = "bench-db";
/// Millicores each task of the rules run needs.
const TASK_CPU: u64 = 100;
/// MiB each task of the rules run needs.
const TASK_MEMORY: u64 = 64;

/// Options of the `rules-cost` scenario.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct RulesCostArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Tasks of each burn-down.
    #[arg(long, default_value_t = 200_000)]
    pub(crate) tasks: u64,
    /// Tasks per `submitTasks` request.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) batch: u64,
    /// Concurrent HTTP submitters.
    #[arg(long, default_value_t = 4)]
    pub(crate) clients: u64,
    /// Worker agents.
    #[arg(long, default_value_t = 4)]
    pub(crate) workers: usize,
    /// Capacity of each worker.
    #[arg(long, default_value_t = 256)]
    pub(crate) threads: u32,
    /// Rounds of each kind, alternated.
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: usize,
    /// Tenants of the rules run.
    #[arg(long, default_value_t = 8)]
    pub(crate) tenants: u64,
    /// The rules of the rules run, comma-separated (all by default; fewer to find what costs):
    /// slots, resources, quotas, needs, weights.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "slots,resources,quotas,needs,weights"
    )]
    pub(crate) rules: Vec<Rule>,
    /// Run only one kind of round (to profile it, for example under `perf stat`); the medians
    /// table then compares nothing.
    #[arg(long, value_enum)]
    pub(crate) only: Option<Kind>,
    /// Goal: the rules run's throughput at least this percent of the plain run's (medians).
    #[arg(long, default_value_t = 80.0)]
    pub(crate) goal_percent: f64,
    /// Measure the state machine alone instead (no log, network or workers): each rule of
    /// `--rules` by itself and all of them, against plain, in microseconds per task.
    #[arg(long)]
    pub(crate) state_machine: bool,
}

/// A kind of round.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// No rule.
    Plain,
    /// The rules of `--rules`.
    Rules,
}

/// A rule the rules run turns on.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rule {
    /// Each task its own slot.
    Slots,
    /// A service level naming a resource, limited per worker and globally.
    Resources,
    /// Quotas per user and for the group.
    Quotas,
    /// cpu and memory needs, with worker amounts.
    Needs,
    /// Several users with weights 1 to 3 (else one user, as the plain run).
    Weights,
}

/// What the rules run sets up, for the end-to-end burn-down and for `--state-machine` alike.
/// With no rule on, it describes the plain run: one user, nothing declared.
pub(crate) struct Setup {
    rules: Vec<Rule>,
    tenants: u64,
}

impl Setup {
    pub(crate) fn new(rules: &[Rule], tenants: u64) -> Setup {
        let tenants = if rules.contains(&Rule::Weights) {
            tenants.max(1)
        } else {
            1
        };
        Setup {
            rules: rules.to_vec(),
            tenants,
        }
    }

    pub(crate) fn on(&self, r: Rule) -> bool {
        self.rules.contains(&r)
    }

    pub(crate) fn tenants(&self) -> u64 {
        self.tenants
    }

    /// The name of tenant `t`.
    pub(crate) fn user(&self, t: u64) -> String {
        if self.on(Rule::Weights) {
            format!("tenant-{t}")
        } else {
            "bench".to_string()
        }
    }

    /// The global resource limits of the broker.
    pub(crate) fn global_limits(&self) -> BTreeMap<String, u32> {
        if self.on(Rule::Resources) {
            BTreeMap::from([(RESOURCE.to_string(), 1_000_000_u32)])
        } else {
            BTreeMap::new()
        }
    }

    /// Tenant `t`'s service level as (resources, weight) in group 1; None: it has none.
    pub(crate) fn level(&self, t: u64) -> Option<(Vec<String>, u32)> {
        if !(self.on(Rule::Resources) || self.on(Rule::Weights)) {
            return None;
        }
        let resources = if self.on(Rule::Resources) {
            vec![RESOURCE.to_string()]
        } else {
            Vec::new()
        };
        let weight = if self.on(Rule::Weights) {
            1 + (t % 3) as u32
        } else {
            1
        };
        Some((resources, weight))
    }

    /// The quota of every user and of group 1, too high to hold a task back; None: no quota.
    pub(crate) fn quota(&self) -> Option<Vec<(String, u64)>> {
        self.on(Rule::Quotas).then(|| {
            vec![
                ("cpu".to_string(), 1_u64 << 39),
                ("memory".to_string(), 1 << 39),
                ("tasks".to_string(), 1 << 39),
            ]
        })
    }

    /// Task `i`: its owner, its slot and its needs.
    pub(crate) fn task(&self, i: u64) -> (String, Option<String>, Vec<(String, u64)>) {
        let slot = self.on(Rule::Slots).then(|| format!("slot-{i}"));
        let needs = if self.on(Rule::Needs) {
            vec![
                ("cpu".to_string(), TASK_CPU),
                ("memory".to_string(), TASK_MEMORY),
            ]
        } else {
            Vec::new()
        };
        (self.user(i % self.tenants), slot, needs)
    }

    /// A worker's named-resource limits: exactly as many tasks of the resource as threads.
    pub(crate) fn resource_limits(&self, threads: u32) -> BTreeMap<String, u32> {
        if self.on(Rule::Resources) {
            BTreeMap::from([(RESOURCE.to_string(), threads)])
        } else {
            BTreeMap::new()
        }
    }

    /// A worker's amounts: twice the cpu and memory the tasks need when every thread is busy.
    pub(crate) fn amounts(&self, threads: u32) -> BTreeMap<String, u64> {
        if self.on(Rule::Needs) {
            BTreeMap::from([
                ("cpu".to_string(), 2 * TASK_CPU * u64::from(threads)),
                ("memory".to_string(), 2 * TASK_MEMORY * u64::from(threads)),
            ])
        } else {
            BTreeMap::new()
        }
    }
}

/// What one burn-down measured.
struct Measured {
    submit_secs: f64,
    burn_secs: f64,
    /// CPU time of the whole process (broker, workers, clients) during the burn-down.
    burn_cpu_secs: Option<f64>,
}

/// One burn-down: submit everything, then connect the workers and time until every task is
/// finished (durable).
async fn burn_down(args: &RulesCostArgs, rules: bool, round: usize) -> anyhow::Result<Measured> {
    let kind = if rules { "rules" } else { "plain" };
    let setup = Arc::new(Setup::new(
        if rules { &args.rules } else { &[] },
        args.tenants,
    ));
    let dir = args.common.run_dir(&format!("rules-cost-{kind}-{round}"));
    let threads = args.threads;
    let leader = LeaderConfig {
        global_resource_limits: setup.global_limits(),
        ..LeaderConfig::default()
    };
    let broker = InProcBroker::start(&dir, leader).await?;
    let client = broker.client()?;
    for t in 0..setup.tenants() {
        let user = setup.user(t);
        if let Some((resources, weight)) = setup.level(t) {
            client
                .set_service_level(&user, Some((1, resources)), weight)
                .await
                .context("setServiceLevel")?;
        }
        if let Some(quota) = setup.quota() {
            client
                .set_quota(QuotaTenant::User(user), Some(quota))
                .await
                .context("setQuota of a user")?;
        }
    }
    if let Some(quota) = setup.quota() {
        client
            .set_quota(QuotaTenant::Group(1), Some(quota))
            .await
            .context("setQuota of the group")?;
    }
    let tasks = setup.clone();
    let make: Arc<dyn Fn(u64) -> TaskSubmission + Send + Sync> = Arc::new(move |i| {
        let (owner, slot, needs) = tasks.task(i);
        let mut t = TaskSubmission::new("noop", owner, "");
        for (d, n) in needs {
            t = t.needing(d, n);
        }
        t.slot = slot;
        t
    });
    let clients = (0..args.clients.max(1))
        .map(|_| broker.client())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let submit = submit_made(clients, args.tasks, args.batch, make).await?;
    let capacity = Capacity {
        max_threads: threads,
        groups: vec![0],
        resource_limits: setup.resource_limits(threads),
        amounts: setup.amounts(threads),
        ..Capacity::default()
    };
    let started = Instant::now();
    let cpu_before = process_cpu_seconds();
    profile_phase(true);
    let workers = Workers::start_on(
        &broker.worker_addr,
        broker.secret(),
        args.workers,
        capacity,
        executor_fn(|_| async { Ok::<_, TaskFailure>(String::new()) }),
    );
    let done = wait_finished(&client, args.tasks, Duration::from_secs(600)).await;
    let burn = started.elapsed();
    profile_phase(false);
    let burn_cpu_secs = process_cpu_seconds()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    workers.stop().await;
    broker.stop().await;
    args.common.cleanup(&dir);
    done?;
    Ok(Measured {
        submit_secs: submit.as_secs_f64(),
        burn_secs: burn.as_secs_f64(),
        burn_cpu_secs,
    })
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs the scenario.
pub(crate) async fn rules_cost(args: &RulesCostArgs) -> anyhow::Result<()> {
    if args.state_machine {
        return crate::rules_core::state_machine(args);
    }
    let mut rounds = Table::new(
        "rules-cost: burn-down rounds, alternated (in-process broker, file log fsync on, HTTP submit in batches, workers over TCP)",
        &[
            "round",
            "rules",
            "tasks",
            "submit s",
            "submit tasks/s",
            "burn-down s",
            "burn-down tasks/s",
            "burn-down CPU s",
            "CPU us/task",
        ],
    );
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut submit_rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut cpu_per_task: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..args.rounds.max(1) {
        for rules in [false, true] {
            if args.only.is_some_and(|k| (k == Kind::Rules) != rules) {
                continue;
            }
            let m = burn_down(args, rules, round).await?;
            let (submit, burn) = (m.submit_secs, m.burn_secs);
            let rate = args.tasks as f64 / burn;
            let cpu_us = m.burn_cpu_secs.map(|c| c * 1e6 / args.tasks as f64);
            if let Some(us) = cpu_us {
                cpu_per_task[usize::from(rules)].push(us);
            }
            rates[usize::from(rules)].push(rate);
            submit_rates[usize::from(rules)].push(args.tasks as f64 / submit);
            rounds.row(vec![
                (round + 1).to_string(),
                if rules {
                    args.rules
                        .iter()
                        .map(|r| format!("{r:?}").to_lowercase())
                        .collect::<Vec<_>>()
                        .join(", ")
                } else {
                    "none".to_string()
                },
                group(args.tasks),
                format!("{submit:.2}"),
                per_sec(args.tasks as f64 / submit),
                format!("{burn:.2}"),
                per_sec(rate),
                m.burn_cpu_secs
                    .map_or_else(|| "-".to_string(), |c| format!("{c:.2}")),
                cpu_us.map_or_else(|| "-".to_string(), |us| format!("{us:.1}")),
            ]);
        }
    }
    rounds.print();
    if args.only.is_some() {
        return Ok(());
    }
    let [plain, with_rules] = rates.map(median);
    let [plain_submit, rules_submit] = submit_rates.map(median);
    let [plain_cpu, rules_cpu] = cpu_per_task.map(median);
    let ratio = with_rules / plain;
    let pass = ratio * 100.0 >= args.goal_percent;
    let mut t = Table::new(
        "rules-cost: medians, rules on against plain",
        &[
            "rounds",
            "workers x threads",
            "plain tasks/s",
            "rules tasks/s",
            "ratio",
            "CPU/task ratio",
            "submit ratio",
            "goal",
            "result",
        ],
    );
    t.row(vec![
        args.rounds.max(1).to_string(),
        format!("{} x {}", args.workers, args.threads),
        per_sec(plain),
        per_sec(with_rules),
        format!("{ratio:.2}"),
        format!("{:.2}", plain_cpu / rules_cpu),
        format!("{:.2}", rules_submit / plain_submit),
        format!("ratio >= {:.2}", args.goal_percent / 100.0),
        if pass { "PASS" } else { "FAIL" }.to_string(),
    ]);
    t.print();
    Ok(())
}
