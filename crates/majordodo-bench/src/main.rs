//! `majordodo-bench`: measures Majordodo and prints tables.
//!
//! Scenarios (each prints its own table; `all` runs them in one go so ratios compare runs made
//! side by side on the same machine at the same time):
//! - `core`: the state machine alone (no I/O): memory per waiting task and assignment throughput
//!   with many waiting tasks versus few.
//! - `burn-down`: submit no-op tasks over HTTP in batches, then run them all with workers.
//! - `latency`: submit → executor start, one task per request at a fixed rate.
//! - `scale`: broker RSS with a million waiting tasks, and throughput with a million waiting
//!   versus a thousand.
//! - `snapshots`: snapshot size, write and load time with tasks of 100 random bytes, and the
//!   boot time from the largest (workload 5 of `compare` alone).
//! - `fsync`: the disk's own small-write + fdatasync speed, for context.
//! - `loopback`: the machine's round trips of small messages over loopback TCP with a
//!   thousand connections, the ceiling of a burn-down on workers of one thread.
//! - `replicated`: the burn-down on the file log and on a cluster over three bookies (rounds
//!   alternated), the followers' lag meanwhile, and the failover time.
//! - `fairness`: weighted fair share under skewed load (one tenant submits most tasks), each
//!   backlogged tenant's share of the running tasks against its weight's share.
//! - `rules-cost`: the burn-down with slots, named resources, quotas, needs and weights on
//!   against the plain burn-down (rounds alternated).
//! - `compare`: ours beside BullMQ and Celery on a Redis durable on acknowledgement (installed
//!   on first use), and ours replicated over three bookies beside its file log, rounds
//!   interleaved; a Markdown table, raw JSON and a PNG chart.
//! - `tenants-scale`: the state machine's cost per assignment with many tenants, many tasks
//!   waiting against one per tenant.
//!
//! `fairness` and `rules-cost` run a broker inside this process (file log, fsync on) with its
//! HTTP API and worker port on 127.0.0.1. The other end-to-end scenarios start the `majordodo` binary found next to this one (build both
//! with `cargo build --release -p majordodo-cli -p majordodo-bench`), or `$MAJORDODO_BIN`.

mod chart;
mod cluster;
mod compare;
mod core_bench;
mod e2e;
mod fairness;
mod inproc;
mod loopback;
mod peers;
mod replicated;
mod report;
mod rules_core;
mod rules_cost;
mod snapshots;
mod tenants_scale;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Benchmarks of Majordodo; every scenario prints a table"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// The state machine alone: memory per waiting task and assignment throughput versus the
    /// number of waiting tasks.
    Core(core_bench::Args),
    /// Submit no-op tasks in batches over HTTP, then run them with workers; tasks/s.
    BurnDown(e2e::BurnDownArgs),
    /// Submit → start latency at a fixed submission rate.
    Latency(e2e::LatencyArgs),
    /// Broker memory with many waiting tasks; throughput with many versus few waiting.
    Scale(e2e::ScaleArgs),
    /// The disk's small-write + fdatasync speed.
    Fsync(e2e::FsyncArgs),
    /// Round trips of small messages over loopback TCP, one in flight per connection (the
    /// ceiling of a burn-down on workers of one thread).
    Loopback(loopback::LoopbackArgs),
    /// Snapshot size, write and load time with tasks of 100 random bytes, and the boot time
    /// from the largest snapshot (workload 5 of `compare`).
    Snapshots(snapshots::SnapshotsArgs),
    /// File log vs replicated burn-down, follower lag, failover time (needs scripts/test-deps).
    Replicated(replicated::ReplicatedArgs),
    /// Weighted fair share under skewed load: each backlogged tenant's share of the running
    /// tasks against its weight's share, over sliding windows.
    Fairness(fairness::FairnessArgs),
    /// The burn-down with every scheduling rule on against the plain burn-down.
    RulesCost(rules_cost::RulesCostArgs),
    /// The state machine's cost per assignment with many tenants: many waiting versus one per
    /// tenant.
    TenantsScale(tenants_scale::TenantsScaleArgs),
    /// Ours beside BullMQ and Celery (installed if missing), and ours replicated beside its file
    /// log (needs scripts/test-deps), interleaved rounds; writes a Markdown table, raw JSON and a
    /// PNG chart.
    Compare(compare::CompareArgs),
    /// Every scenario with its defaults, one after the other.
    All {
        /// Directory for the brokers' data.
        #[arg(long, default_value = "bench-data")]
        dir: std::path::PathBuf,
    },
}

/// The allocator of the `majordodo` binary, so in-process brokers cost what it costs.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Core(args) => core_bench::run(&args),
        Scenario::BurnDown(args) => e2e::burn_down(&args).await,
        Scenario::Latency(args) => e2e::latency(&args).await,
        Scenario::Scale(args) => e2e::scale(&args).await,
        Scenario::Fsync(args) => e2e::fsync(&args),
        Scenario::Loopback(args) => loopback::run(&args).await,
        Scenario::Snapshots(args) => snapshots::run(&args).await,
        Scenario::Replicated(args) => replicated::run(&args).await,
        Scenario::Fairness(args) => fairness::fairness(&args).await,
        Scenario::RulesCost(args) => rules_cost::rules_cost(&args).await,
        Scenario::TenantsScale(args) => tenants_scale::run(&args),
        Scenario::Compare(args) => compare::run(&args).await,
        Scenario::All { dir } => {
            let d = dir.display().to_string();
            let parse = |args: &[&str]| Cli::parse_from(args.iter().copied());
            for argv in [
                vec!["bench", "fsync", "--dir", &d],
                vec!["bench", "loopback"],
                vec!["bench", "core"],
                vec!["bench", "burn-down", "--dir", &d],
                vec!["bench", "latency", "--dir", &d],
                vec!["bench", "scale", "--dir", &d],
                vec!["bench", "snapshots", "--dir", &d],
                vec!["bench", "replicated", "--dir", &d],
                vec!["bench", "tenants-scale"],
                vec!["bench", "rules-cost", "--dir", &d],
                vec!["bench", "fairness", "--dir", &d],
            ] {
                match parse(&argv).scenario {
                    Scenario::Core(a) => core_bench::run(&a)?,
                    Scenario::BurnDown(a) => e2e::burn_down(&a).await?,
                    Scenario::Latency(a) => e2e::latency(&a).await?,
                    Scenario::Scale(a) => e2e::scale(&a).await?,
                    Scenario::Snapshots(a) => snapshots::run(&a).await?,
                    Scenario::Fsync(a) => e2e::fsync(&a)?,
                    Scenario::Loopback(a) => loopback::run(&a).await?,
                    Scenario::Replicated(a) => replicated::run(&a).await?,
                    Scenario::Fairness(a) => fairness::fairness(&a).await?,
                    Scenario::RulesCost(a) => rules_cost::rules_cost(&a).await?,
                    Scenario::TenantsScale(a) => tenants_scale::run(&a)?,
                    Scenario::All { .. } | Scenario::Compare(_) => {
                        unreachable!("not in the list")
                    }
                }
            }
            Ok(())
        }
    }
}
