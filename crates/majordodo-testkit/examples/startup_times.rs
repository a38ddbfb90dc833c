//! Measures how long the harness takes to start ZooKeeper and BookKeeper clusters on this
//! machine and prints a table (min / median / max over a few runs).
//!
//! ```text
//! cargo run -p majordodo-testkit --example startup_times [runs]
//! MAJORDODO_TESTKIT_CDS=0 cargo run -p majordodo-testkit --example startup_times   # no class-data archives
//! ```

use std::time::{Duration, Instant};

use majordodo_testkit::{BkCluster, BkClusterOptions, ZkServer};

/// Runs per row when no count is given: enough for a median, few enough for a 2-core machine.
const DEFAULT_RUNS: usize = 3;

fn row(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "| {name:<28} | {:>4} | {:>8.0} | {:>8.0} | {:>8.0} |",
        samples.len(),
        ms(samples[0]),
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1])
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let runs = std::env::args()
        .nth(1)
        .map(|n| n.parse::<usize>())
        .transpose()?
        .unwrap_or(DEFAULT_RUNS)
        .max(1);
    let cds = std::env::var(majordodo_testkit::CDS_ENV).map_or(true, |v| v != "0");
    println!("class-data archives: {}", if cds { "on" } else { "off" });
    println!("| {:<28} | runs | min (ms) | med (ms) | max (ms) |", "what");
    println!("|{:-<30}|------|----------|----------|----------|", "");

    let mut zk = Vec::new();
    for _ in 0..runs {
        let began = Instant::now();
        let server = ZkServer::start().await?;
        zk.push(began.elapsed());
        drop(server);
    }
    row("ZooKeeper", zk);

    for bookies in [1, 3] {
        let mut ready = Vec::new();
        let mut restart = Vec::new();
        let mut dropped = Vec::new();
        for _ in 0..runs {
            let began = Instant::now();
            let mut cluster = BkCluster::start_with(BkClusterOptions::new(bookies)).await?;
            ready.push(began.elapsed());
            let began = Instant::now();
            cluster.restart_bookie(0).await?;
            restart.push(began.elapsed());
            let began = Instant::now();
            drop(cluster);
            dropped.push(began.elapsed());
        }
        row(&format!("{bookies}-bookie cluster start"), ready);
        row(&format!("restart 1 bookie (of {bookies})"), restart);
        row(&format!("drop {bookies}-bookie cluster"), dropped);
    }
    Ok(())
}
