//! Fault tests, each on its own real cluster: a bookie killed mid-stream, a bookie stopped with
//! SIGSTOP during writes and during recovery, and ZooKeeper session expiry.

mod common;

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use bookkeeper_client::{BkError, BookKeeper, LedgerOptions, LedgerState, LedgerWriter, OpenMode};
use bytes::Bytes;
use common::{config, payload, wait_until};
use majordodo_testkit::{BkCluster, BkClusterOptions};

/// Bookie ZooKeeper session long enough that pausing a bookie (or stopping ZooKeeper) for a few
/// seconds does not expire it: these tests are about the client, not about bookies re-registering.
const BOOKIE_ZK_TIMEOUT: Duration = Duration::from_secs(30);

/// Request timeout of the clients under test: short, so timeouts show within the test's time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

async fn fault_cluster() -> anyhow::Result<BkCluster> {
    common::init_tracing();
    BkCluster::start_with(BkClusterOptions::new(3).bookie_zk_timeout(BOOKIE_ZK_TIMEOUT))
        .await
        .context("start cluster")
}

async fn fast_client(cluster: &BkCluster) -> anyhow::Result<BookKeeper> {
    let mut config = config(cluster);
    config.request_timeout = REQUEST_TIMEOUT;
    config.speculative_read_timeout = Duration::from_millis(200);
    Ok(BookKeeper::connect(config).await?)
}

/// The cluster index of the bookie at `ensemble_index` of the writer's ensemble.
fn cluster_index(
    cluster: &BkCluster,
    writer: &LedgerWriter,
    ensemble_index: usize,
) -> anyhow::Result<usize> {
    let id = &writer.metadata().segments[0].bookies[ensemble_index];
    (0..cluster.bookie_count())
        .find(|&i| &cluster.bookie_id(i) == id)
        .with_context(|| format!("bookie {id} is not in the cluster"))
}

/// Reads the whole closed ledger with a fresh client and checks it holds `data`.
async fn check_content(cluster: &BkCluster, ledger_id: i64, data: &[Bytes]) -> anyhow::Result<()> {
    let reader = fast_client(cluster)
        .await?
        .open_ledger(ledger_id, b"", OpenMode::NoRecovery)
        .await?;
    ensure!(reader.is_closed(), "ledger {ledger_id} is closed");
    ensure!(
        reader.last_add_confirmed() == data.len() as i64 - 1,
        "last entry is {}",
        reader.last_add_confirmed()
    );
    if data.is_empty() {
        return Ok(());
    }
    let entries = reader.read(0..=data.len() as i64 - 1).await?;
    for (entry, expected) in entries.iter().zip(data) {
        ensure!(entry.data == *expected, "entry {} differs", entry.entry_id);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_bookie_closes_ledger_at_lac_without_losing_acknowledged_entries()
-> anyhow::Result<()> {
    // Goal: with E=3 Qw=2 Qa=2, killing a bookie mid-stream makes the writer close the ledger at
    // its LAC and say so; every acknowledged entry is then readable, nothing else is in the ledger.
    const WINDOW: usize = 200;
    const KILL_AFTER: u64 = 500;
    const MAX_ENTRIES: u64 = 20_000;
    let mut cluster = fault_cluster().await?;
    let bk = fast_client(&cluster).await?;
    let writer = bk.create_ledger(LedgerOptions::new(3, 2, 2)).await?;
    let victim = cluster_index(&cluster, &writer, 1)?;

    let mut data = Vec::new();
    let mut pending = VecDeque::new();
    let mut acked = Vec::new();
    let mut errors = Vec::new();
    let mut next = 0u64;
    while next < MAX_ENTRIES && errors.is_empty() {
        if next == KILL_AFTER {
            // Appends are in flight while the bookie dies.
            cluster.kill_bookie(victim).await;
        }
        data.push(payload("kill", next));
        pending.push_back(writer.append(data[next as usize].clone()));
        next += 1;
        if pending.len() >= WINDOW {
            match pending.pop_front().context("a pending append")?.await {
                Ok(id) => acked.push(id),
                Err(e) => errors.push(e),
            }
        }
    }
    while let Some(add) = pending.pop_front() {
        match add.await {
            Ok(id) => acked.push(id),
            Err(e) => errors.push(e),
        }
    }
    ensure!(
        !errors.is_empty(),
        "no append failed after the bookie was killed"
    );
    let lac = match &errors[0] {
        BkError::LedgerClosed {
            last_add_confirmed,
            cause: Some(cause),
            ..
        } => {
            eprintln!("ledger closed at {last_add_confirmed} after: {cause}");
            *last_add_confirmed
        }
        other => bail!("first failure is {other:?}, not LedgerClosed with a cause"),
    };
    for error in &errors {
        ensure!(
            matches!(error, BkError::LedgerClosed { last_add_confirmed, .. } if *last_add_confirmed == lac),
            "every failed append reports the same close: {error:?}"
        );
    }
    ensure!(
        acked.iter().copied().eq(0..=lac),
        "acknowledged entries are exactly 0..={lac}"
    );
    ensure!(
        lac >= KILL_AFTER as i64 - WINDOW as i64,
        "entries before the kill were acknowledged"
    );
    ensure!(writer.close().await? == lac, "close reports the same LAC");
    let metadata = bk.ledger_metadata(writer.ledger_id()).await?;
    ensure!(metadata.state == LedgerState::Closed && metadata.last_entry_id == lac);
    let length: usize = data[..=lac as usize].iter().map(Bytes::len).sum();
    ensure!(
        metadata.length == length as i64,
        "closed length {} is the acknowledged payload",
        metadata.length
    );
    check_content(&cluster, writer.ledger_id(), &data[..=lac as usize]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_bookie_times_out_then_recovery_completes() -> anyhow::Result<()> {
    // Goal: a SIGSTOPped bookie makes adds time out (the writer closes at its LAC); recovery
    // that needs it fails retryably and succeeds after SIGCONT; recovery that does not need it
    // succeeds with the remaining bookies.
    let mut cluster = fault_cluster().await?;
    let bk = fast_client(&cluster).await?;

    // Writes: the next entry's first bookie stops answering.
    let writer = bk.create_ledger(LedgerOptions::new(3, 2, 2)).await?;
    let data: Vec<Bytes> = (0..21).map(|i| payload("pause-write", i)).collect();
    for d in &data[..20] {
        writer.append(d.clone()).await?;
    }
    let paused = cluster_index(&cluster, &writer, 20 % 3)?;
    cluster.pause_bookie(paused);
    let outcome = writer.append(data[20].clone()).await;
    cluster.resume_bookie(paused);
    match &outcome {
        Err(BkError::LedgerClosed {
            last_add_confirmed: 19,
            cause: Some(cause),
            ..
        }) if matches!(**cause, BkError::Timeout { .. }) => {}
        other => bail!(
            "append to a paused bookie gave {other:?}, not LedgerClosed at 19 after a timeout"
        ),
    }
    check_content(&cluster, writer.ledger_id(), &data[..20]).await?;

    // Recovery that must re-replicate the last entry to the paused bookie.
    let crashed = bk.create_ledger(LedgerOptions::new(3, 2, 2)).await?;
    let data: Vec<Bytes> = (0..30).map(|i| payload("pause-recover", i)).collect();
    for d in &data {
        crashed.append(d.clone()).await?;
    }
    let paused = cluster_index(&cluster, &crashed, 29 % 3)?;
    cluster.pause_bookie(paused);
    let recoverer = fast_client(&cluster).await?;
    let attempt = recoverer
        .open_ledger(crashed.ledger_id(), b"", OpenMode::Recovery)
        .await;
    let state_after_attempt = recoverer.ledger_metadata(crashed.ledger_id()).await?.state;
    cluster.resume_bookie(paused);
    match attempt {
        Err(e) if e.is_retryable() => eprintln!("recovery with the bookie paused: {e}"),
        other => bail!("recovery needing a paused bookie gave {other:?}, not a retryable error"),
    }
    ensure!(
        state_after_attempt == LedgerState::InRecovery,
        "the failed recovery left {state_after_attempt:?}"
    );
    let reader = recoverer
        .open_ledger(crashed.ledger_id(), b"", OpenMode::Recovery)
        .await?;
    ensure!(
        reader.last_add_confirmed() == 29,
        "recovered up to {}",
        reader.last_add_confirmed()
    );
    check_content(&cluster, crashed.ledger_id(), &data).await?;
    ensure!(matches!(
        crashed.append(Bytes::from_static(b"late")).await,
        Err(BkError::Fenced { .. })
    ));

    // Recovery that the remaining bookies can finish on their own.
    let crashed = bk.create_ledger(LedgerOptions::new(3, 2, 2)).await?;
    let data: Vec<Bytes> = (0..30).map(|i| payload("pause-remaining", i)).collect();
    for d in &data {
        crashed.append(d.clone()).await?;
    }
    // Not in the write set of the last entry (29 -> {2, 0}), so no re-add needs it.
    let paused = cluster_index(&cluster, &crashed, 1)?;
    cluster.pause_bookie(paused);
    let recovered = recoverer
        .open_ledger(crashed.ledger_id(), b"", OpenMode::Recovery)
        .await;
    let content = match &recovered {
        Ok(reader) => reader
            .read(0..=29)
            .await
            .map(|entries| entries.into_iter().map(|e| e.data).collect::<Vec<_>>()),
        Err(_) => Ok(Vec::new()),
    };
    cluster.resume_bookie(paused);
    let reader = recovered.context("recovery with one bookie paused")?;
    ensure!(
        reader.last_add_confirmed() == 29,
        "recovered up to {}",
        reader.last_add_confirmed()
    );
    ensure!(content? == data, "entries read with the bookie paused");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_session_is_reported_and_client_can_be_rebuilt() -> anyhow::Result<()> {
    // Goal: when ZooKeeper is away longer than the session timeout the client reports
    // SessionExpired (not retryable), its writer still appends to bookies but cannot close, and a
    // rebuilt client recovers the ledger with every acknowledged entry.
    let mut cluster = fault_cluster().await?;
    let mut settings = config(&cluster);
    settings.zk_session_timeout = Duration::from_secs(2);
    let bk = BookKeeper::connect(settings).await?;
    let writer = bk.create_ledger(LedgerOptions::new(3, 2, 2)).await?;
    let data: Vec<Bytes> = (0..20).map(|i| payload("expiry", i)).collect();
    for d in &data[..10] {
        writer.append(d.clone()).await?;
    }

    cluster.zk_mut().stop().await;
    for d in &data[10..] {
        writer
            .append(d.clone())
            .await
            .context("append while ZooKeeper is down")?;
    }
    wait_until(Duration::from_secs(20), "the session to expire", || {
        let bk = bk.clone();
        async move { bk.session_expired() }
    })
    .await?;
    cluster
        .zk_mut()
        .restart()
        .await
        .context("restart ZooKeeper")?;

    match bk.ledger_metadata(writer.ledger_id()).await {
        Err(e @ BkError::SessionExpired) => ensure!(!e.is_retryable()),
        other => bail!("metadata read on an expired session gave {other:?}"),
    }
    ensure!(matches!(
        bk.create_ledger(LedgerOptions::new(3, 2, 2)).await,
        Err(BkError::SessionExpired)
    ));
    ensure!(
        matches!(writer.close().await, Err(BkError::SessionExpired)),
        "close needs ZooKeeper"
    );

    let rebuilt = BookKeeper::connect(config(&cluster))
        .await
        .context("rebuild the client")?;
    let reader = rebuilt
        .open_ledger(writer.ledger_id(), b"", OpenMode::Recovery)
        .await?;
    ensure!(
        reader.last_add_confirmed() == 19,
        "recovered up to {}",
        reader.last_add_confirmed()
    );
    check_content(&cluster, writer.ledger_id(), &data).await?;
    let fresh = rebuilt.create_ledger(LedgerOptions::new(3, 2, 2)).await?;
    ensure!(fresh.append(Bytes::from_static(b"works")).await? == 0);
    fresh.close().await?;
    Ok(())
}
