//! Workload 5 of `compare` on its own: snapshot size, write time and load time with tasks of
//! 100 random bytes, and the boot time of a broker from the largest snapshot.

use std::path::PathBuf;
use std::time::Duration;

use crate::compare::{SNAPSHOT_DATA_BYTES, measure_snapshot};
use crate::report::{Table, group, mib};

/// Options of the `snapshots` scenario.
#[derive(clap::Args, Debug)]
pub(crate) struct SnapshotsArgs {
    /// Directory for the brokers' data (one subdirectory per size, removed afterwards). Put it
    /// on the disk you want to measure.
    #[arg(long, default_value = "bench-data")]
    dir: PathBuf,
    /// Tasks per snapshot, comma-separated; a broker boots from the largest.
    #[arg(long, value_delimiter = ',', default_values_t = [100_000u64, 1_000_000])]
    tasks: Vec<u64>,
    /// Rounds of every size.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
}

/// Runs the sizes, smallest first, and prints one row per size and round.
pub(crate) async fn run(args: &SnapshotsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.tasks.is_empty() && args.tasks.iter().all(|&n| n > 0),
        "--tasks: give at least one size, each above 0"
    );
    anyhow::ensure!(args.rounds > 0, "--rounds: at least 1");
    let mut sizes = args.tasks.clone();
    sizes.sort_unstable();
    let largest = *sizes.last().expect("a size");
    let mut t = Table::new(
        &format!(
            "snapshots: tasks of {SNAPSHOT_DATA_BYTES} random bytes, each with an idempotency key"
        ),
        &[
            "tasks",
            "round",
            "size",
            "size / raw data",
            "write ms",
            "load ms",
            "boot ms",
        ],
    );
    let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1000.0);
    for round in 1..=args.rounds {
        for &n in &sizes {
            println!(
                "snapshots: round {round} of {}: {} tasks",
                args.rounds,
                group(n)
            );
            let m = measure_snapshot(&args.dir, n, n == largest).await?;
            t.row(vec![
                group(n),
                round.to_string(),
                mib(m.size),
                format!("{:.3}", m.ratio()),
                ms(m.write),
                ms(m.load),
                m.boot.map_or_else(|| "-".into(), ms),
            ]);
        }
    }
    t.print();
    Ok(())
}
