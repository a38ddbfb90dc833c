//! Behaviour of the client against one real 3-bookie cluster shared by every case (starting
//! JVMs is slow): round trips, interoperability with the Java client in both directions for
//! every digest type, tailing, fencing by recovery, and metadata operations.
//!
//! The cases run one after the other in a single test so they share the cluster; each is a
//! named function whose first line states its goal, and a failing case does not stop the
//! others.

mod common;

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use bookkeeper_client::{BkError, BookKeeper, DigestType, LedgerOptions, LedgerState, OpenMode};
use bytes::Bytes;
use common::{case, client, java_tool, payload, tool_entries};
use majordodo_testkit::BkCluster;
use majordodo_testkit::tools::{BK_READ, BK_WRITE, events, json_lines, sized_payload};
use tokio::time::Instant;

/// Each digest type with the name the Java tools use for it.
const DIGESTS: [(DigestType, &str); 4] = [
    (DigestType::Crc32c, "crc32c"),
    (DigestType::Crc32, "crc32"),
    (DigestType::Hmac, "mac"),
    (DigestType::Dummy, "dummy"),
];

/// Bound on the median delay between the writer's acknowledgement and a tailing reader seeing
/// the entry: an entry seen only through a later entry, a timer or the close would take the
/// writer's pacing (10 to 30 ms per entry) many times over.
const VISIBILITY_MEDIAN: Duration = Duration::from_millis(50);
/// Bound on the same delay for every entry, loose enough for a machine busy with other work.
const VISIBILITY_WORST: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_behaviour_on_a_shared_cluster() -> anyhow::Result<()> {
    // Goal: every case below passes against real bookies and a real ZooKeeper.
    common::init_tracing();
    let cluster = BkCluster::start(3).await.context("start cluster")?;
    let bk = client(&cluster).await?;
    let results = vec![
        case(
            "appended_entries_read_back_in_order",
            appended_entries_read_back_in_order(&bk),
        )
        .await,
        case(
            "closed_writer_refuses_appends",
            closed_writer_refuses_appends(&bk),
        )
        .await,
        case(
            "append_queue_overflow_closes_the_ledger",
            append_queue_overflow_closes_the_ledger(&cluster),
        )
        .await,
        case(
            "refused_sends_close_the_ledger",
            refused_sends_close_the_ledger(&cluster),
        )
        .await,
        case(
            "refused_send_with_nothing_outstanding_closes_the_ledger",
            refused_send_with_nothing_outstanding_closes_the_ledger(&cluster),
        )
        .await,
        case(
            "ledgers_written_here_are_read_by_java",
            ledgers_written_here_are_read_by_java(&cluster, &bk),
        )
        .await,
        case(
            "ledgers_written_by_java_are_read_here",
            ledgers_written_by_java_are_read_here(&cluster, &bk),
        )
        .await,
        case(
            "open_java_ledger_is_recovered_here",
            open_java_ledger_is_recovered_here(&cluster, &bk),
        )
        .await,
        case(
            "tailing_reader_sees_each_entry_quickly",
            tailing_reader_sees_each_entry_quickly(&cluster, &bk),
        )
        .await,
        case(
            "recovery_fences_the_writer",
            recovery_fences_the_writer(&cluster, &bk),
        )
        .await,
        case(
            "empty_ledger_recovers_to_empty",
            empty_ledger_recovers_to_empty(&bk),
        )
        .await,
        case(
            "wrong_password_is_unauthorized",
            wrong_password_is_unauthorized(&bk),
        )
        .await,
        case("deleted_ledger_is_gone", deleted_ledger_is_gone(&bk)).await,
        case(
            "too_large_ensemble_needs_more_bookies",
            too_large_ensemble_needs_more_bookies(&bk),
        )
        .await,
        case("large_entries_round_trip", large_entries_round_trip(&bk)).await,
    ];
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err())
        .map(|e| format!("{e:#}"))
        .collect();
    if !failures.is_empty() {
        bail!(
            "{} case(s) failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    Ok(())
}

async fn write_entries(
    bk: &BookKeeper,
    options: LedgerOptions,
    tag: &str,
    count: u64,
) -> anyhow::Result<(i64, Vec<Bytes>)> {
    let writer = bk.create_ledger(options).await?;
    let data: Vec<Bytes> = (0..count).map(|i| payload(tag, i)).collect();
    let pending: Vec<_> = data.iter().map(|d| writer.append(d.clone())).collect();
    for (expected, add) in pending.into_iter().enumerate() {
        ensure!(add.await? == expected as i64, "entry ids follow call order");
    }
    ensure!(writer.close().await? == count as i64 - 1);
    Ok((writer.ledger_id(), data))
}

async fn appended_entries_read_back_in_order(bk: &BookKeeper) -> anyhow::Result<()> {
    // Goal: pipelined appends get ids in call order, and a reader gets exactly those bytes back.
    let (ledger_id, data) = write_entries(bk, LedgerOptions::new(3, 2, 2), "order", 300).await?;
    let metadata = bk.ledger_metadata(ledger_id).await?;
    ensure!(metadata.state == LedgerState::Closed && metadata.last_entry_id == 299);
    ensure!(
        metadata.length == data.iter().map(|d| d.len() as i64).sum::<i64>(),
        "closed length is the payload total"
    );
    let reader = bk.open_ledger(ledger_id, b"", OpenMode::NoRecovery).await?;
    ensure!(reader.is_closed() && reader.last_add_confirmed() == 299);
    let entries = reader.read(0..=299).await?;
    ensure!(
        entries.iter().map(|e| e.entry_id).eq(0..=299),
        "entries come in id order"
    );
    ensure!(
        entries.iter().zip(&data).all(|(e, d)| e.data == *d),
        "payloads match"
    );
    let middle = reader.read(100..=102).await?;
    ensure!(middle.iter().map(|e| e.entry_id).eq(100..=102));
    ensure!(matches!(
        reader.read(299..=300).await,
        Err(BkError::NoSuchEntry { entry_id: 300, .. })
    ));
    Ok(())
}

async fn closed_writer_refuses_appends(bk: &BookKeeper) -> anyhow::Result<()> {
    // Goal: after close, appends fail with LedgerClosed at the final entry and close is idempotent.
    let writer = bk.create_ledger(LedgerOptions::new(3, 3, 2)).await?;
    let pending: Vec<_> = (0..5)
        .map(|i| writer.append(payload("closed", i)))
        .collect();
    ensure!(
        writer.close().await? == 4,
        "close waits for appends made before it"
    );
    for (i, add) in pending.into_iter().enumerate() {
        ensure!(add.await? == i as i64);
    }
    match writer.append(Bytes::from_static(b"late")).await {
        Err(BkError::LedgerClosed {
            last_add_confirmed: 4,
            cause: None,
            ..
        }) => {}
        other => bail!("append after close gave {other:?}"),
    }
    ensure!(
        writer.close().await? == 4,
        "a second close reports the same entry"
    );
    Ok(())
}

async fn append_queue_overflow_closes_the_ledger(cluster: &BkCluster) -> anyhow::Result<()> {
    // Goal: appending far beyond the queue limit without awaiting closes the ledger after what
    // was acknowledged, instead of growing memory without bound.
    let mut settings = common::config(cluster);
    settings.max_outstanding_adds = 1;
    settings.max_queued_adds = 10;
    let bk = BookKeeper::connect(settings).await?;
    let writer = bk.create_ledger(LedgerOptions::new(3, 2, 2)).await?;
    let pending: Vec<_> = (0..50)
        .map(|i| writer.append(payload("overflow", i)))
        .collect();
    let mut outcomes = Vec::new();
    for add in pending {
        outcomes.push(add.await);
    }
    ensure!(
        matches!(outcomes[0], Ok(0)),
        "the entry on the wire is acknowledged"
    );
    for outcome in &outcomes[1..] {
        match outcome {
            Err(BkError::LedgerClosed {
                last_add_confirmed: 0,
                cause: Some(cause),
                ..
            }) if matches!(**cause, BkError::WriterClosed { .. }) => {}
            other => bail!("queued append gave {other:?}"),
        }
    }
    let metadata = bk.ledger_metadata(writer.ledger_id()).await?;
    ensure!(metadata.state == LedgerState::Closed && metadata.last_entry_id == 0);
    Ok(())
}

async fn refused_sends_close_the_ledger(cluster: &BkCluster) -> anyhow::Result<()> {
    // Goal: adds the client refuses to put on the wire (per-bookie in-flight limit) close the
    // ledger after the acknowledged entries, like a bookie failure does.
    let mut settings = common::config(cluster);
    settings.max_in_flight_per_bookie = 2;
    let bk = BookKeeper::connect(settings).await?;
    let writer = bk.create_ledger(LedgerOptions::new(3, 3, 3)).await?;
    let pending: Vec<_> = (0..50)
        .map(|i| writer.append(payload("refused", i)))
        .collect();
    let mut acked = Vec::new();
    let mut failures = Vec::new();
    for add in pending {
        match add.await {
            Ok(id) => acked.push(id),
            Err(e) => failures.push(e),
        }
    }
    let lac = acked.len() as i64 - 1;
    ensure!(
        acked.iter().copied().eq(0..=lac),
        "acknowledged entries are a prefix"
    );
    ensure!(!failures.is_empty(), "no append was refused");
    for failure in &failures {
        match failure {
            BkError::LedgerClosed {
                last_add_confirmed,
                cause: Some(cause),
                ..
            } if *last_add_confirmed == lac && cause.is_retryable() => {}
            other => bail!("refused append gave {other:?}"),
        }
    }
    let metadata = bk.ledger_metadata(writer.ledger_id()).await?;
    ensure!(metadata.state == LedgerState::Closed && metadata.last_entry_id == lac);
    Ok(())
}

async fn refused_send_with_nothing_outstanding_closes_the_ledger(
    cluster: &BkCluster,
) -> anyhow::Result<()> {
    // Goal: an append refused on every bookie while nothing else is outstanding (no reply will
    // come to wake the writer) still closes the ledger instead of hanging.
    let mut settings = common::config(cluster);
    settings.max_in_flight_per_bookie = 1;
    let bk = BookKeeper::connect(settings).await?;
    let writer = bk.create_ledger(LedgerOptions::new(3, 3, 3)).await?;
    ensure!(writer.append(payload("refused-first", 0)).await? == 0);
    // With one slot per bookie, requests still finishing (explicit LAC, LAC reads) may refuse
    // these: retry until the reader knows entry 0.
    let deadline = Instant::now() + Duration::from_secs(10);
    let reader = loop {
        match bk
            .open_ledger(writer.ledger_id(), b"", OpenMode::NoRecovery)
            .await
        {
            Ok(opened) if opened.last_add_confirmed() == 0 => break opened,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            other => bail!("no reader that knows entry 0: {other:?}"),
        }
    };
    // A long poll that waits on every bookie takes each connection's only slot.
    let mut attempts = 0;
    let poll = loop {
        let mut poll = Box::pin(reader.read_lac_long_poll(0, Duration::from_secs(20)));
        if futures_util::future::poll_immediate(&mut poll)
            .await
            .is_none()
        {
            break poll;
        }
        attempts += 1;
        ensure!(attempts < 50, "the long poll never got every slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        writer.append(payload("refused-first", 1)),
    )
    .await
    .context("the refused append hangs")?;
    match refused {
        Err(BkError::LedgerClosed {
            last_add_confirmed: 0,
            cause: Some(_),
            ..
        }) => {}
        other => bail!("refused append gave {other:?}"),
    }
    drop(poll);
    ensure!(bk.ledger_metadata(writer.ledger_id()).await?.last_entry_id == 0);
    Ok(())
}

async fn ledgers_written_here_are_read_by_java(
    cluster: &BkCluster,
    bk: &BookKeeper,
) -> anyhow::Result<()> {
    // Goal: for every digest type, the Java client reads our ledger entry by entry, byte for
    // byte, and BookieShell reads our metadata.
    let mut last_ledger = -1;
    for (digest, name) in DIGESTS {
        let options = LedgerOptions::new(3, 2, 2).with_digest(digest, b"secret".to_vec());
        let (ledger_id, data) = write_entries(bk, options, name, 40).await?;
        let id = ledger_id.to_string();
        let stdout = java_tool(
            cluster,
            BK_READ,
            &["--ledger-id", &id, "--digest", name, "--password", "secret"],
        )
        .await?;
        let lines = json_lines(&stdout)?;
        let opened = events(&lines, "opened").next().context("opened line")?;
        ensure!(
            opened["closed"].as_bool() == Some(true),
            "{name}: Java sees the ledger closed: {opened}"
        );
        let entries = tool_entries(&stdout)?;
        ensure!(
            entries.len() == data.len(),
            "{name}: Java read {} entries",
            entries.len()
        );
        for ((id, bytes), expected) in entries.iter().zip(&data) {
            ensure!(bytes[..] == expected[..], "{name}: entry {id} differs");
        }
        last_ledger = ledger_id;
    }
    // BookKeeper's own admin shell parses our metadata (as bookies' garbage collection does).
    let id = last_ledger.to_string();
    let output = cluster
        .bookie_shell(&["ledgermetadata", "-ledgerid", &id], common::TOOL_TIMEOUT)
        .await?;
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "BookieShell ledgermetadata failed: {text}"
    );
    ensure!(
        text.contains("CLOSED") && text.contains("lastEntryId=39"),
        "BookieShell shows the closed metadata: {text}"
    );
    Ok(())
}

async fn ledgers_written_by_java_are_read_here(
    cluster: &BkCluster,
    bk: &BookKeeper,
) -> anyhow::Result<()> {
    // Goal: for every digest type, a ledger the Java client wrote and closed reads back here.
    for (_, name) in DIGESTS {
        let stdout = java_tool(
            cluster,
            BK_WRITE,
            &[
                "--digest",
                name,
                "--password",
                "pw",
                "--count",
                "25",
                "--entry-size",
                "300",
            ],
        )
        .await?;
        let lines = json_lines(&stdout)?;
        let ledger_id = events(&lines, "created").next().context("created line")?["ledger_id"]
            .as_i64()
            .context("id")?;
        let written = tool_entries(&stdout)?;
        let reader = bk
            .open_ledger(ledger_id, b"pw", OpenMode::NoRecovery)
            .await?;
        ensure!(
            reader.is_closed() && reader.last_add_confirmed() == 24,
            "{name}: closed at 24"
        );
        let entries = reader.read(0..=24).await?;
        for (entry, (id, bytes)) in entries.iter().zip(&written) {
            ensure!(
                entry.entry_id == *id && entry.data[..] == bytes[..],
                "{name}: entry {id} differs"
            );
            ensure!(
                entry.data[..] == sized_payload(*id as u64, 300)[..],
                "{name}: entry {id} is not BkWrite's payload"
            );
        }
    }
    Ok(())
}

async fn open_java_ledger_is_recovered_here(
    cluster: &BkCluster,
    bk: &BookKeeper,
) -> anyhow::Result<()> {
    // Goal: a ledger the Java writer left open is fenced, recovered and closed here with every
    // entry the Java writer saw acknowledged, and Java then reads it as closed.
    let stdout = java_tool(
        cluster,
        BK_WRITE,
        &["--count", "30", "--entry-size", "64", "--leave-open"],
    )
    .await?;
    let lines = json_lines(&stdout)?;
    let ledger_id = events(&lines, "created").next().context("created")?["ledger_id"]
        .as_i64()
        .context("id")?;
    ensure!(bk.ledger_metadata(ledger_id).await?.state == LedgerState::Open);
    let reader = bk.open_ledger(ledger_id, b"", OpenMode::Recovery).await?;
    ensure!(
        reader.is_closed() && reader.last_add_confirmed() == 29,
        "recovered up to the last acknowledged entry"
    );
    let entries = reader.read(0..=29).await?;
    ensure!(
        entries
            .iter()
            .all(|e| e.data[..] == sized_payload(e.entry_id as u64, 64)[..])
    );
    let id = ledger_id.to_string();
    let stdout = java_tool(cluster, BK_READ, &["--ledger-id", &id]).await?;
    let lines = json_lines(&stdout)?;
    let opened = events(&lines, "opened").next().context("opened")?;
    ensure!(
        opened["closed"].as_bool() == Some(true),
        "Java sees our close: {opened}"
    );
    ensure!(tool_entries(&stdout)?.len() == 30);
    Ok(())
}

async fn tailing_reader_sees_each_entry_quickly(
    cluster: &BkCluster,
    bk: &BookKeeper,
) -> anyhow::Result<()> {
    // Goal: a no-recovery reader sees each entry soon after its acknowledgement (median within
    // VISIBILITY_MEDIAN, every one within VISIBILITY_WORST), not only when a later entry or the
    // close comes, and sees the end once the writer closes the ledger.
    const ENTRIES: u64 = 60;
    let writer = bk.create_ledger(LedgerOptions::new(3, 2, 2)).await?;
    let reader_client = client(cluster).await?;
    let reader = reader_client
        .open_ledger(writer.ledger_id(), b"", OpenMode::NoRecovery)
        .await?;
    let tail = tokio::spawn(async move {
        let mut tailer = reader.tail(0);
        let mut seen = Vec::new();
        while let Some(entry) = tailer.next().await? {
            seen.push((entry.entry_id, entry.data, Instant::now()));
        }
        Ok::<_, BkError>((seen, Instant::now()))
    });
    let mut acked = Vec::new();
    for i in 0..ENTRIES {
        let data = payload("tail", i);
        let id = writer.append(data.clone()).await?;
        acked.push((id, data, Instant::now()));
        // Pace the writer so every entry is the newest for a while: the case where only an
        // explicit LAC or a long poll can make it visible.
        tokio::time::sleep(Duration::from_millis(10 + i % 3 * 10)).await;
    }
    let closed_at = writer.close().await?;
    let closed_instant = Instant::now();
    let (seen, end_seen) = tokio::time::timeout(Duration::from_secs(30), tail)
        .await
        .context("tailer sees the end")???;
    eprintln!(
        "tailing: end seen {:?} after the close",
        end_seen.saturating_duration_since(closed_instant)
    );
    ensure!(closed_at == ENTRIES as i64 - 1);
    ensure!(
        seen.len() == acked.len(),
        "tailer saw {} of {} entries",
        seen.len(),
        acked.len()
    );
    let mut delays = Vec::new();
    for ((id, data, at), (seen_id, seen_data, seen_at)) in acked.iter().zip(&seen) {
        ensure!(id == seen_id && data == seen_data, "entry {id} differs");
        let delay = seen_at.saturating_duration_since(*at);
        ensure!(
            delay <= VISIBILITY_WORST,
            "entry {id} became visible {delay:?} after its acknowledgement"
        );
        delays.push(delay);
    }
    delays.sort();
    let median = delays[delays.len() / 2];
    eprintln!(
        "tailing: visibility delay median {median:?}, worst {:?} over {ENTRIES} entries",
        delays[delays.len() - 1]
    );
    ensure!(
        median <= VISIBILITY_MEDIAN,
        "entries became visible {median:?} after their acknowledgement (median)"
    );
    Ok(())
}

async fn recovery_fences_the_writer(cluster: &BkCluster, bk: &BookKeeper) -> anyhow::Result<()> {
    // Goal: recovery by another client fences the writer (its next append fails with Fenced),
    // keeps every acknowledged entry, reads nothing that was not written, and the fenced writer
    // never rewrites the metadata.
    let writer = bk
        .create_ledger(LedgerOptions::new(3, 2, 2).with_digest(DigestType::Crc32c, "pw"))
        .await?;
    let data: Vec<Bytes> = (0..40).map(|i| payload("fence", i)).collect();
    for (i, d) in data.iter().take(30).enumerate() {
        ensure!(writer.append(d.clone()).await? == i as i64);
    }
    // Ten more in flight while the other client recovers.
    let in_flight: Vec<_> = data[30..]
        .iter()
        .map(|d| writer.append(d.clone()))
        .collect();

    let recoverer = client(cluster).await?;
    let reader = recoverer
        .open_ledger(writer.ledger_id(), b"pw", OpenMode::Recovery)
        .await?;
    let last = reader.last_add_confirmed();
    let version_after_recovery = recoverer
        .ledger_metadata_version(writer.ledger_id())
        .await?;

    let mut acknowledged = 29;
    for (offset, add) in in_flight.into_iter().enumerate() {
        match add.await {
            Ok(id) => {
                ensure!(id == 30 + offset as i64);
                acknowledged = id;
            }
            Err(BkError::Fenced { .. }) => {}
            Err(other) => bail!("in-flight append failed with {other} instead of Fenced"),
        }
    }
    ensure!(
        last >= acknowledged,
        "recovered up to {last}, but {acknowledged} was acknowledged"
    );
    ensure!(
        last < data.len() as i64,
        "recovered {last}, beyond anything written"
    );
    match writer.append(Bytes::from_static(b"after")).await {
        Err(BkError::Fenced { .. }) => {}
        other => bail!("append after recovery gave {other:?} instead of Fenced"),
    }
    ensure!(
        matches!(writer.close().await, Err(BkError::Fenced { .. })),
        "close of a fenced writer"
    );
    let entries = reader.read(0..=last).await?;
    ensure!(
        entries.iter().zip(&data).all(|(e, d)| e.data == *d),
        "recovered entries are the written ones"
    );
    let metadata = recoverer.ledger_metadata(writer.ledger_id()).await?;
    ensure!(metadata.state == LedgerState::Closed && metadata.last_entry_id == last);
    ensure!(
        recoverer
            .ledger_metadata_version(writer.ledger_id())
            .await?
            == version_after_recovery,
        "the fenced writer changed the metadata"
    );
    Ok(())
}

async fn empty_ledger_recovers_to_empty(bk: &BookKeeper) -> anyhow::Result<()> {
    // Goal: recovering a ledger nobody wrote to closes it with no entries.
    let writer = bk.create_ledger(LedgerOptions::new(3, 3, 2)).await?;
    let reader = bk
        .open_ledger(writer.ledger_id(), b"", OpenMode::Recovery)
        .await?;
    ensure!(reader.is_closed() && reader.last_add_confirmed() == -1);
    let metadata = reader.metadata();
    ensure!(metadata.last_entry_id == -1 && metadata.length == 0);
    ensure!(matches!(
        writer.append(Bytes::from_static(b"late")).await,
        Err(BkError::Fenced { .. })
    ));
    Ok(())
}

async fn wrong_password_is_unauthorized(bk: &BookKeeper) -> anyhow::Result<()> {
    // Goal: a wrong password is refused before anything is fenced.
    let writer = bk
        .create_ledger(LedgerOptions::new(2, 2, 2).with_digest(DigestType::Hmac, "right"))
        .await?;
    writer.append(Bytes::from_static(b"one")).await?;
    for mode in [OpenMode::NoRecovery, OpenMode::Recovery] {
        match bk.open_ledger(writer.ledger_id(), b"wrong", mode).await {
            Err(BkError::Unauthorized { .. }) => {}
            other => bail!("{mode:?} with a wrong password gave {other:?}"),
        }
    }
    ensure!(
        writer.append(Bytes::from_static(b"two")).await? == 1,
        "writer is untouched"
    );
    writer.close().await?;
    Ok(())
}

async fn deleted_ledger_is_gone(bk: &BookKeeper) -> anyhow::Result<()> {
    // Goal: after delete the ledger cannot be opened, and a second delete says so.
    let (ledger_id, _) = write_entries(bk, LedgerOptions::new(3, 2, 1), "delete", 5).await?;
    bk.delete_ledger(ledger_id).await?;
    ensure!(matches!(
        bk.ledger_metadata(ledger_id).await,
        Err(BkError::NoSuchLedger { .. })
    ));
    ensure!(matches!(
        bk.open_ledger(ledger_id, b"", OpenMode::NoRecovery).await,
        Err(BkError::NoSuchLedger { .. })
    ));
    ensure!(matches!(
        bk.delete_ledger(ledger_id).await,
        Err(BkError::NoSuchLedger { .. })
    ));
    // Ids keep growing and new ledgers still work where the old parents were removed.
    let (next, _) = write_entries(bk, LedgerOptions::new(3, 2, 1), "after-delete", 2).await?;
    ensure!(next > ledger_id);
    Ok(())
}

async fn too_large_ensemble_needs_more_bookies(bk: &BookKeeper) -> anyhow::Result<()> {
    // Goal: an ensemble larger than the registered bookies, or bad quorums, are refused.
    match bk.create_ledger(LedgerOptions::new(4, 2, 2)).await {
        Err(
            e @ BkError::NotEnoughBookies {
                needed: 4,
                available: 3,
            },
        ) => ensure!(e.is_retryable()),
        other => bail!("ensemble of 4 on 3 bookies gave {other:?}"),
    }
    ensure!(matches!(
        bk.create_ledger(LedgerOptions::new(3, 2, 3)).await,
        Err(BkError::InvalidArgument(_))
    ));
    Ok(())
}

async fn large_entries_round_trip(bk: &BookKeeper) -> anyhow::Result<()> {
    // Goal: entries up to the size limit are stored whole, and larger ones are refused.
    let writer = bk.create_ledger(LedgerOptions::new(3, 2, 2)).await?;
    let big = Bytes::from(
        (0..1024 * 1024)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    ensure!(writer.append(big.clone()).await? == 0);
    let limit = bookkeeper_client::DEFAULT_MAX_ENTRY_SIZE;
    ensure!(matches!(
        writer.append(Bytes::from(vec![0u8; limit + 1])).await,
        Err(BkError::InvalidArgument(_))
    ));
    ensure!(writer.append(Bytes::from(vec![7u8; limit])).await? == 1);
    writer.close().await?;
    let entries = bk
        .open_ledger(writer.ledger_id(), b"", OpenMode::NoRecovery)
        .await?
        .read(0..=1)
        .await?;
    ensure!(entries[0].data == big && entries[1].data.len() == limit);
    Ok(())
}
