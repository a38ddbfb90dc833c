//! Weighted fair share under skewed load, end to end: many tenants (users of one group) submit
//! tasks that take a fixed time in the executor, one tenant most of them; some tenants have a
//! higher weight (`setServiceLevel`). Worker capacity is contended, so the broker has to split
//! it. Every `--sample-ms` the broker's state is read (running and waiting tasks per tenant);
//! over sliding windows each backlogged tenant's share of the running tasks of the backlogged
//! tenants is compared with its weight's share among them.
//!
//! Sizes: the small tenants' tasks are in proportion to their weights, so they stay backlogged
//! about equally long: roughly `tasks × (100 − heavy%) / 100 × task-ms / capacity`. With the
//! defaults (1 300 000 tasks, 90 % from one tenant, 4 × 64 threads, 50 ms) that is about 25 s;
//! the scenario stops once the small tenants have drained (or after `--max-secs`), leaving the
//! rest of the heavy tenant's backlog unrun.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use majordodo_core::LeaderConfig;
use majordodo_proto::http::TaskSubmission;
use majordodo_proto::worker::Capacity;
use majordodo_worker::{TaskFailure, executor_fn};

use crate::cluster::Workers;
use crate::e2e::Common;
use crate::inproc::InProcBroker;
use crate::report::{Table, group};

/// Options of the `fairness` scenario.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct FairnessArgs {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Tenants (users of group 1), the first one being the heavy one.
    #[arg(long, default_value_t = 100)]
    pub(crate) tenants: usize,
    /// Tasks submitted, all before the workers connect.
    #[arg(long, default_value_t = 1_300_000)]
    pub(crate) tasks: u64,
    /// Percent of the tasks that the heavy tenant submits (the others share the rest in
    /// proportion to their weights).
    #[arg(long, default_value_t = 90)]
    pub(crate) heavy_percent: u64,
    /// Tenants with weight 2 (after the heavy one, which has weight 1).
    #[arg(long, default_value_t = 10)]
    pub(crate) weight2: usize,
    /// Tenants with weight 3 (after those of weight 2).
    #[arg(long, default_value_t = 10)]
    pub(crate) weight3: usize,
    /// Time each task takes in the executor, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub(crate) task_ms: u64,
    /// Worker agents.
    #[arg(long, default_value_t = 4)]
    pub(crate) workers: usize,
    /// Capacity of each worker.
    #[arg(long, default_value_t = 64)]
    pub(crate) threads: u32,
    /// Interval between samples of the broker's state, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub(crate) sample_ms: u64,
    /// Length of a window, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) window_secs: f64,
    /// Step between windows, in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) step_secs: f64,
    /// Most seconds sampled (the scenario stops earlier once the small tenants drained).
    #[arg(long, default_value_t = 120)]
    pub(crate) max_secs: u64,
    /// Goal: every backlogged tenant within this many percent of its weight's share.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) tolerance_percent: f64,
}

/// The tenant's name: `tenant-007`. Not a number, so the default mapping puts it in group 1.
fn tenant_name(i: usize) -> String {
    format!("tenant-{i:03}")
}

/// One read of the broker's state.
struct Sample {
    /// Seconds since the workers started.
    at: f64,
    /// Running tasks per tenant (assigned, not ended).
    running: Vec<u64>,
    /// Waiting tasks per tenant.
    waiting: Vec<u64>,
}

/// What the windows found.
#[derive(Debug, Default)]
pub(crate) struct Deviations {
    /// Windows with at least two tenants backlogged throughout.
    pub(crate) windows: usize,
    /// Every (window, backlogged tenant) deviation, |share / expected − 1|, sorted.
    pub(crate) all: Vec<f64>,
}

impl Deviations {
    fn quantile(&self, q: f64) -> f64 {
        if self.all.is_empty() {
            return f64::NAN;
        }
        let i = ((self.all.len() as f64 - 1.0) * q).round() as usize;
        self.all[i.min(self.all.len() - 1)]
    }

    fn worst(&self) -> f64 {
        self.all.last().copied().unwrap_or(f64::NAN)
    }
}

/// Compares each tenant's share of the running tasks with its weight's share, over windows of
/// `window` seconds every `step` seconds. In each sample the active tenants are those with
/// waiting tasks; a tenant is judged in a window when it was active in every sample of it. Its
/// share is its running tasks summed over the window's samples over the active tenants' running
/// tasks summed the same way; its expected share is its weight over the active tenants' weights,
/// averaged over the samples weighted by their running tasks.
fn deviations(samples: &[Sample], weights: &[u32], window: f64, step: f64) -> Deviations {
    let mut out = Deviations::default();
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return out;
    };
    let mut from = first.at;
    while from + window <= last.at + 1e-9 {
        let inside: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.at >= from && s.at < from + window)
            .collect();
        from += step;
        let judged: Vec<usize> = (0..weights.len())
            .filter(|&i| !inside.is_empty() && inside.iter().all(|s| s.waiting[i] > 0))
            .collect();
        if judged.len() < 2 {
            continue;
        }
        let mut total = 0.0;
        let mut got = vec![0.0; weights.len()];
        let mut expected = vec![0.0; weights.len()];
        for s in &inside {
            let active = |i: &usize| s.waiting[*i] > 0;
            let running: u64 = (0..weights.len())
                .filter(active)
                .map(|i| s.running[i])
                .sum();
            let weight: u64 = (0..weights.len())
                .filter(active)
                .map(|i| u64::from(weights[i]))
                .sum();
            if running == 0 || weight == 0 {
                continue;
            }
            total += running as f64;
            for &i in &judged {
                got[i] += s.running[i] as f64;
                expected[i] += running as f64 * f64::from(weights[i]) / weight as f64;
            }
        }
        if total == 0.0 {
            continue;
        }
        out.windows += 1;
        for &i in &judged {
            out.all.push((got[i] / expected[i] - 1.0).abs());
        }
    }
    out.all.sort_by(f64::total_cmp);
    out
}

/// Runs the scenario.
pub(crate) async fn fairness(args: &FairnessArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.tenants >= 2, "--tenants must be at least 2");
    anyhow::ensure!(
        args.weight2 + args.weight3 < args.tenants,
        "--weight2 + --weight3 must leave the heavy tenant"
    );
    anyhow::ensure!(
        args.heavy_percent < 100,
        "--heavy-percent must be below 100"
    );
    let weights: Vec<u32> = (0..args.tenants)
        .map(|i| match i {
            0 => 1,
            i if i <= args.weight2 => 2,
            i if i <= args.weight2 + args.weight3 => 3,
            _ => 1,
        })
        .collect();
    let names: Vec<String> = (0..args.tenants).map(tenant_name).collect();
    // Tasks per tenant: the heavy one's percent, the rest by weight.
    let heavy = args.tasks * args.heavy_percent / 100;
    let small_total = args.tasks - heavy;
    let small_weight: u64 = weights[1..].iter().map(|w| u64::from(*w)).sum();
    let mut counts: Vec<u64> = weights
        .iter()
        .map(|w| small_total * u64::from(*w) / small_weight)
        .collect();
    counts[0] = heavy;
    let short = args.tasks - counts.iter().sum::<u64>();
    for i in 0..short as usize {
        counts[1 + i % (args.tenants - 1)] += 1;
    }

    let dir = args.common.run_dir("fairness");
    let broker = InProcBroker::start(&dir, LeaderConfig::default()).await?;
    let client = broker.client()?;
    for (name, w) in names.iter().zip(&weights) {
        if *w != 1 {
            client
                .set_service_level(name, Some((1, Vec::new())), *w)
                .await
                .with_context(|| format!("set the weight of {name}"))?;
        }
    }

    // Submit in batches that each hold every tenant's tasks in proportion to its total, so each
    // tenant's tasks are spread evenly over the submission order (and over task ids).
    let submit_started = Instant::now();
    let batches = args.tasks.div_ceil(1_000).max(1);
    let counts = Arc::new(counts);
    let names = Arc::new(names);
    let mut joins = Vec::new();
    let clients = 4u64;
    for c in 0..clients {
        let client = broker.client()?;
        let counts = counts.clone();
        let names = names.clone();
        joins.push(tokio::spawn(async move {
            let mut b = c;
            while b < batches {
                let mut tasks = Vec::new();
                for (i, n) in counts.iter().enumerate() {
                    let here = n * (b + 1) / batches - n * b / batches;
                    for _ in 0..here {
                        tasks.push(TaskSubmission::new("noop", &names[i], ""));
                    }
                }
                b += clients;
                if tasks.is_empty() {
                    continue;
                }
                let results = client.submit_many(&tasks).await?;
                anyhow::ensure!(
                    results.iter().all(|r| r.task_id().is_some()),
                    "a task was not created"
                );
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for j in joins {
        j.await.context("submitter panicked")??;
    }
    let submit_secs = submit_started.elapsed().as_secs_f64();

    let task_time = Duration::from_millis(args.task_ms);
    let workers = Workers::start_on(
        &broker.worker_addr,
        broker.secret(),
        args.workers,
        Capacity {
            max_threads: args.threads,
            groups: vec![0],
            ..Capacity::default()
        },
        executor_fn(move |_| async move {
            tokio::time::sleep(task_time).await;
            Ok::<_, TaskFailure>(String::new())
        }),
    );
    let started = Instant::now();
    let index: Arc<HashMap<String, usize>> = Arc::new(
        names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect(),
    );
    let capacity = u64::from(args.threads) * args.workers as u64;
    let mut samples: Vec<Sample> = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(args.sample_ms.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut filled = false;
    let mut drained_at = None;
    let mut tail = Vec::new();
    let limit = Duration::from_secs(args.max_secs);
    loop {
        ticker.tick().await;
        if started.elapsed() > limit {
            break;
        }
        let index = index.clone();
        let n = args.tenants;
        let (running, waiting) = broker
            .handle
            .query(move |v| {
                let mut running = vec![0u64; n];
                let mut waiting = vec![0u64; n];
                for (user, usage) in v.state.tenant_use().users() {
                    if let Some(i) = index.get(&**user) {
                        running[*i] = usage.tasks;
                    }
                }
                for (user, _, _, w) in v.state.waiting_index().tenants() {
                    if let Some(i) = index.get(&**user) {
                        waiting[*i] = w as u64;
                    }
                }
                (running, waiting)
            })
            .await
            .context("read the broker's state")?;
        let at = started.elapsed().as_secs_f64();
        // The measurement starts once the workers are full.
        filled = filled || running.iter().sum::<u64>() * 10 >= capacity * 9;
        if !filled {
            continue;
        }
        let small_backlogged = waiting[1..].iter().any(|w| *w > 0);
        if drained_at.is_none() && !small_backlogged {
            drained_at = Some(at);
        }
        if drained_at.is_some() {
            // Two seconds more: the heavy tenant alone should get every thread.
            tail.push((running[0], running.iter().sum::<u64>()));
            if at - drained_at.unwrap_or(at) >= 2.0 {
                break;
            }
            continue;
        }
        samples.push(Sample {
            at,
            running,
            waiting,
        });
    }
    workers.stop().await;
    broker.stop().await;
    args.common.cleanup(&dir);

    let d = deviations(&samples, &weights, args.window_secs, args.step_secs);
    let backlogged = samples
        .iter()
        .filter(|s| s.waiting[1..].iter().all(|w| *w > 0))
        .map(|s| s.at)
        .fold(None, |acc: Option<(f64, f64)>, at| match acc {
            None => Some((at, at)),
            Some((a, _)) => Some((a, at)),
        })
        .map_or(0.0, |(a, b)| b - a);
    let pct = |x: f64| format!("{:.1} %", x * 100.0);
    let pass = d.windows > 0 && d.worst() * 100.0 <= args.tolerance_percent;
    let mut t = Table::new(
        "fairness: share of running tasks vs weight share, backlogged tenants of one group, sliding windows (in-process broker, file log fsync on, workers over TCP)",
        &[
            "tenants (w1/w2/w3)",
            "tasks (heavy %)",
            "workers x threads",
            "task ms",
            "submit s",
            "all backlogged s",
            "samples",
            "windows",
            "worst dev",
            "p50 dev",
            "p99 dev",
            "goal",
            "result",
        ],
    );
    let w1 = weights.iter().filter(|w| **w == 1).count();
    t.row(vec![
        format!("{} ({w1}/{}/{})", args.tenants, args.weight2, args.weight3),
        format!("{} ({} %)", group(args.tasks), args.heavy_percent),
        format!("{} x {}", args.workers, args.threads),
        args.task_ms.to_string(),
        format!("{submit_secs:.1}"),
        format!("{backlogged:.1}"),
        group(samples.len() as u64),
        group(d.windows as u64),
        pct(d.worst()),
        pct(d.quantile(0.5)),
        pct(d.quantile(0.99)),
        format!(
            "<= {} % in every {} s window",
            args.tolerance_percent, args.window_secs
        ),
        if pass { "PASS" } else { "FAIL" }.to_string(),
    ]);
    t.print();

    // Per class, over the samples in which every tenant was backlogged: mean running tasks per
    // tenant against the weight's share of the running tasks.
    let all_active: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.waiting.iter().all(|w| *w > 0))
        .collect();
    let mut classes = Table::new(
        "fairness: mean running tasks per tenant while every tenant was backlogged",
        &[
            "class",
            "weight",
            "tenants",
            "expected",
            "mean",
            "lowest tenant",
            "highest tenant",
        ],
    );
    let total_weight: u32 = weights.iter().sum();
    for (label, members) in [
        ("heavy", vec![0usize]),
        (
            "weight 1",
            (1..args.tenants).filter(|i| weights[*i] == 1).collect(),
        ),
        (
            "weight 2",
            (1..args.tenants).filter(|i| weights[*i] == 2).collect(),
        ),
        (
            "weight 3",
            (1..args.tenants).filter(|i| weights[*i] == 3).collect(),
        ),
    ] {
        if members.is_empty() || all_active.is_empty() {
            continue;
        }
        let n = all_active.len() as f64;
        let w = weights[members[0]];
        let expected: f64 = all_active
            .iter()
            .map(|s| s.running.iter().sum::<u64>() as f64 * f64::from(w) / f64::from(total_weight))
            .sum::<f64>()
            / n;
        let means: Vec<f64> = members
            .iter()
            .map(|i| all_active.iter().map(|s| s.running[*i] as f64).sum::<f64>() / n)
            .collect();
        let mean = means.iter().sum::<f64>() / means.len() as f64;
        let lo = means.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = means.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        classes.row(vec![
            label.to_string(),
            w.to_string(),
            members.len().to_string(),
            format!("{expected:.2}"),
            format!("{mean:.2}"),
            format!("{lo:.2}"),
            format!("{hi:.2}"),
        ]);
    }
    classes.print();
    if !tail.is_empty() {
        let heavy: u64 = tail.iter().map(|(h, _)| h).sum();
        let all: u64 = tail.iter().map(|(_, a)| a).sum();
        println!(
            "after the small tenants drained: the heavy tenant ran {:.1} of {:.1} running tasks on average ({} samples; capacity {capacity})",
            heavy as f64 / tail.len() as f64,
            all as f64 / tail.len() as f64,
            tail.len()
        );
    } else {
        println!(
            "the small tenants were still backlogged after --max-secs {}",
            args.max_secs
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: f64, running: &[u64], waiting: &[u64]) -> Sample {
        Sample {
            at,
            running: running.to_vec(),
            waiting: waiting.to_vec(),
        }
    }

    #[test]
    fn exact_shares_deviate_by_nothing() {
        let samples: Vec<Sample> = (0..20)
            .map(|i| sample(f64::from(i) * 0.1, &[2, 4, 6], &[5, 5, 5]))
            .collect();
        let d = deviations(&samples, &[1, 2, 3], 1.0, 0.5);
        assert_eq!(d.windows, 2);
        assert_eq!(d.all.len(), 6);
        assert!(d.worst() < 1e-12, "{d:?}");
    }

    #[test]
    fn a_tenant_above_its_share_is_measured() {
        // Weights 1 and 1; the first holds 3 of 4 running tasks: 50 % above its share, the
        // second 50 % below.
        let samples: Vec<Sample> = (0..=10)
            .map(|i| sample(f64::from(i) * 0.1, &[3, 1], &[1, 1]))
            .collect();
        let d = deviations(&samples, &[1, 1], 1.0, 1.0);
        assert_eq!(d.windows, 1);
        assert!((d.worst() - 0.5).abs() < 1e-12, "{d:?}");
    }

    #[test]
    fn tenants_without_a_backlog_are_not_judged() {
        // The third tenant has nothing waiting: the first two split the running tasks between
        // them (by weight 1:1), whatever the third still runs.
        let samples: Vec<Sample> = (0..=10)
            .map(|i| sample(f64::from(i) * 0.1, &[2, 2, 7], &[1, 1, 0]))
            .collect();
        let d = deviations(&samples, &[1, 1, 5], 1.0, 1.0);
        assert_eq!(d.windows, 1);
        assert_eq!(d.all.len(), 2);
        assert!(d.worst() < 1e-12, "{d:?}");
    }

    #[test]
    fn windows_with_one_backlogged_tenant_are_skipped() {
        let samples: Vec<Sample> = (0..=10)
            .map(|i| sample(f64::from(i) * 0.1, &[4, 0], &[9, 0]))
            .collect();
        let d = deviations(&samples, &[1, 1], 1.0, 1.0);
        assert_eq!(d.windows, 0);
    }
}
