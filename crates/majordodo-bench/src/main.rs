//! `majordodo-bench`: measures the broker and prints tables.
//!
//! Scenarios:
//! - `core`: the state machine alone (no I/O): memory held per waiting task and assignment
//!   throughput with many waiting tasks versus few.

mod core_bench;
mod report;

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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Core(args) => core_bench::run(&args),
    }
}
