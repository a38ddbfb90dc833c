//! Helpers shared by the integration tests: clusters, client settings, payloads, Java tools.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, bail};
use bookkeeper_client::{BookKeeper, ClientConfig};
use bytes::Bytes;
use majordodo_testkit::BkCluster;
use majordodo_testkit::tools::{events, json_lines, unhex};

/// Limit on one Java tool run (a JVM start plus a small workload on a busy 2-core machine).
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Client settings for `cluster`, with a fixed seed so ensembles are reproducible.
pub fn config(cluster: &BkCluster) -> ClientConfig {
    let mut config =
        ClientConfig::new(cluster.zk_connect_string()).with_ledgers_root(cluster.ledgers_root());
    config.seed = Some(7);
    config
}

/// A client of `cluster` with default settings.
pub async fn client(cluster: &BkCluster) -> anyhow::Result<BookKeeper> {
    BookKeeper::connect(config(cluster))
        .await
        .context("connect client")
}

/// A payload that names its index, so a mix-up shows in the failure.
pub fn payload(tag: &str, index: u64) -> Bytes {
    Bytes::from(format!(
        "{tag}-{index:06}-{}",
        "x".repeat((index % 17) as usize)
    ))
}

/// Runs one named case of a suite, adding its name to any error.
pub async fn case<F>(name: &str, run: F) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>>,
{
    let started = std::time::Instant::now();
    let result = run.await.with_context(|| format!("case {name}"));
    eprintln!(
        "case {name}: {} in {:?}",
        if result.is_ok() { "ok" } else { "FAILED" },
        started.elapsed()
    );
    result
}

/// Entries printed by `BkRead` (or `BkWrite`): `(entry_id, payload)` in output order.
pub fn tool_entries(stdout: &[u8]) -> anyhow::Result<Vec<(i64, Vec<u8>)>> {
    let lines = json_lines(stdout)?;
    events(&lines, "entry")
        .map(|line| {
            let id = line["entry_id"].as_i64().context("entry_id")?;
            let hex = line["hex"].as_str().context("hex payload")?;
            Ok((id, unhex(hex).context("valid hex")?))
        })
        .collect()
}

/// Runs a Java tool and fails with its stderr when it exits non-zero.
pub async fn java_tool(cluster: &BkCluster, tool: &str, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let output = cluster.run_java_tool(tool, args, TOOL_TIMEOUT).await?;
    if !output.status.success() {
        bail!(
            "{tool} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

/// Polls `check` every 20 ms until it returns true or `limit` passes.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
