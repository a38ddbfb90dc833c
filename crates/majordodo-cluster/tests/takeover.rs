//! The replicated log against real bookies: taking the log over while the previous leader
//! still writes (the new log fences the old one, which can append nothing more, and holds
//! every record the old one acknowledged), compare-and-set on the ledger list, retention, and
//! group commit.

use bookkeeper_client::{BookKeeper, ClientConfig};
use bytes::Bytes;
use majordodo_cluster::{BkLogConfig, BookKeeperLog, CoordConfig, Coordinator};
use majordodo_log::{CommitLog, LogError, Lsn};
use majordodo_testkit::BkCluster;

async fn open(cluster: &BkCluster) -> BookKeeperLog {
    open_with(cluster, "/majordodo", |_| {}).await
}

async fn open_with(
    cluster: &BkCluster,
    base: &str,
    tune: impl FnOnce(&mut BkLogConfig),
) -> BookKeeperLog {
    let bk = BookKeeper::connect(
        ClientConfig::new(cluster.zk_connect_string()).with_ledgers_root(cluster.ledgers_root()),
    )
    .await
    .expect("connect to BookKeeper");
    let mut c = CoordConfig::new(cluster.zk_connect_string());
    c.base_path = base.to_owned();
    let coord = Coordinator::connect(&c)
        .await
        .expect("connect to ZooKeeper");
    let mut config = BkLogConfig::new(3, 2, 2);
    config.password = b"takeover".to_vec();
    tune(&mut config);
    BookKeeperLog::open(bk, coord, config)
        .await
        .expect("take the log over")
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_log_fences_the_old_writer_and_keeps_what_it_acknowledged() {
    // Goal: the old leader's next append fails as fenced (it never rewrites the list), and
    // the new log replays every record the old one acknowledged, then continues after them.
    let cluster = BkCluster::start(3).await.expect("start a 3-bookie cluster");
    let old = open(&cluster).await;
    for i in 0..50u32 {
        old.append(vec![Bytes::from(format!("r{i}"))])
            .await
            .expect("append before the takeover");
    }
    let new = open(&cluster).await;
    match old.append(vec![Bytes::from_static(b"late")]).await {
        Err(LogError::Fenced(_)) => {}
        other => panic!("the old writer was not fenced: {other:?}"),
    }
    let mut seen = Vec::new();
    let mut collect = |lsn: Lsn, bytes: Bytes| -> Result<(), String> {
        seen.push((lsn.0, String::from_utf8_lossy(&bytes).into_owned()));
        Ok(())
    };
    new.replay(Lsn::ZERO, &mut collect).await.expect("replay");
    let expected: Vec<(u64, String)> = (0..50u64).map(|i| (i + 1, format!("r{i}"))).collect();
    assert_eq!(seen, expected);
    let next = new
        .append(vec![Bytes::from_static(b"new")])
        .await
        .expect("the new log appends");
    assert_eq!(next.first, Lsn(51));
    new.close().await.expect("close");
}

async fn listed(cluster: &BkCluster, base: &str) -> Vec<i64> {
    let mut c = CoordConfig::new(cluster.zk_connect_string());
    c.base_path = base.to_owned();
    Coordinator::connect(&c)
        .await
        .expect("connect to ZooKeeper")
        .ledgers()
        .await
        .expect("read the ledger list")
        .info
        .active_ledgers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledgers_are_dropped_only_when_covered_and_past_retention() {
    // Goal: release_before drops no ledger younger than the retention period, and with no
    // retention drops only ledgers whose every record is covered, never the one being written;
    // a replay from before the dropped ledgers then fails with Released instead of skipping.
    let cluster = BkCluster::start(3).await.expect("start a 3-bookie cluster");
    let roll = |c: &mut BkLogConfig| c.roll_size = 256;
    let kept = open_with(&cluster, "/retained", |c| {
        roll(c);
        c.retention = std::time::Duration::from_secs(3600);
    })
    .await;
    for i in 0..30u32 {
        kept.append(vec![Bytes::from(format!("record {i:04} padding padding"))])
            .await
            .expect("append");
    }
    let before = listed(&cluster, "/retained").await;
    assert!(before.len() > 3, "small ledgers rolled: {before:?}");
    kept.release_before(Lsn(30)).await.expect("release");
    assert_eq!(
        listed(&cluster, "/retained").await,
        before,
        "nothing younger than an hour goes"
    );
    kept.close().await.expect("close");

    let dropped = open_with(&cluster, "/dropped", |c| {
        roll(c);
        c.retention = std::time::Duration::ZERO;
    })
    .await;
    for i in 0..30u32 {
        dropped
            .append(vec![Bytes::from(format!("record {i:04} padding padding"))])
            .await
            .expect("append");
    }
    let before = listed(&cluster, "/dropped").await;
    dropped.release_before(Lsn(15)).await.expect("release");
    let after = listed(&cluster, "/dropped").await;
    assert!(after.len() < before.len(), "covered ledgers were dropped");
    assert_eq!(
        after.last(),
        before.last(),
        "the ledger being written stays"
    );
    let mut seen = Vec::new();
    let mut collect = |lsn: Lsn, _: Bytes| -> Result<(), String> {
        seen.push(lsn.0);
        Ok(())
    };
    dropped
        .replay(Lsn(15), &mut collect)
        .await
        .expect("a replay after the released position works");
    assert_eq!(seen, (16..=30).collect::<Vec<u64>>());
    let mut ignore = |_: Lsn, _: Bytes| -> Result<(), String> { Ok(()) };
    assert!(matches!(
        dropped.replay(Lsn::ZERO, &mut ignore).await,
        Err(LogError::Released { .. })
    ));
    dropped.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_made_while_the_pipeline_is_full_share_entries() {
    // Goal: with one entry in flight, appends queued meanwhile are written together (fewer
    // entries than appends), no entry exceeds the entry size (records split across entries),
    // every append resolves with its own positions, in order, a barrier resolves with the
    // position before it, and the ledger holds every record once, in order.
    let cluster = BkCluster::start(3).await.expect("start a 3-bookie cluster");
    let max_entry = 4096;
    let log = open_with(&cluster, "/grouped", |c| {
        c.max_entries_in_flight = 1;
        c.max_entry_size = max_entry;
    })
    .await;
    let mut futures = Vec::new();
    let mut expected = Vec::new();
    for i in 0..300u32 {
        let records: Vec<Bytes> = if i % 50 == 7 {
            Vec::new()
        } else {
            // every tenth append is large: a few of them overflow one entry
            let size = if i % 10 == 3 { 3000 } else { 40 };
            (0..(1 + i % 3))
                .map(|j| Bytes::from(format!("{i}/{j}:{}", "x".repeat(size))))
                .collect()
        };
        expected.extend(records.iter().cloned());
        futures.push((records.len() as u64, log.append(records)));
    }
    let mut next = 1u64;
    for (count, future) in futures {
        let appended = future.await.expect("append");
        if count == 0 {
            assert_eq!(
                (appended.first, appended.last),
                (Lsn(next - 1), Lsn(next - 1))
            );
        } else {
            assert_eq!(
                (appended.first, appended.last),
                (Lsn(next), Lsn(next + count - 1))
            );
            next += count;
        }
    }
    let ledger = log.current_ledger();
    log.close().await.expect("close");

    let bk = BookKeeper::connect(
        ClientConfig::new(cluster.zk_connect_string()).with_ledgers_root(cluster.ledgers_root()),
    )
    .await
    .expect("connect to BookKeeper");
    let reader = bk
        .open_ledger(ledger, b"takeover", bookkeeper_client::OpenMode::NoRecovery)
        .await
        .expect("open the written ledger");
    let entries = reader
        .read(0..=reader.last_add_confirmed())
        .await
        .expect("read the ledger");
    let appends = 300 - 6;
    assert!(
        entries.len() < appends / 2,
        "{} entries for {appends} appends",
        entries.len()
    );
    let mut records = Vec::new();
    for entry in &entries {
        assert!(
            entry.data.len() <= max_entry,
            "entry of {} bytes",
            entry.data.len()
        );
        let decoded =
            majordodo_proto::cluster::decode_ledger_entry(&entry.data).expect("decode an entry");
        assert_eq!(decoded.first_lsn, records.len() as u64 + 1);
        records.extend(decoded.records);
    }
    assert_eq!(records, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_list_write_from_a_stale_view_is_refused_and_changes_nothing() {
    // Goal: the ledger list changes only by compare-and-set. A broker still holding the list
    // as it was before another broker took the log over (an old leader about to roll a
    // ledger) is refused as superseded, and the list the new writer made stays as it was.
    let cluster = BkCluster::start(3).await.expect("start a 3-bookie cluster");
    let base = "/stale-list";
    let old = open_with(&cluster, base, |_| {}).await;
    old.append(vec![Bytes::from_static(b"before")])
        .await
        .expect("append before the takeover");
    let mut c = CoordConfig::new(cluster.zk_connect_string());
    c.base_path = base.to_owned();
    let coord = Coordinator::connect(&c)
        .await
        .expect("connect to ZooKeeper");
    let stale = coord.ledgers().await.expect("read the list");
    let new = open_with(&cluster, base, |_| {}).await;
    let current = listed(&cluster, base).await;
    assert_eq!(current.len(), stale.info.active_ledgers.len() + 1);

    let mut rolled = stale.info.clone();
    rolled.push(999_999, 0, 2);
    match coord.set_ledgers(&rolled, stale.version).await {
        Err(majordodo_cluster::CoordError::Superseded(_)) => {}
        other => panic!("a write from a stale view was not refused: {other:?}"),
    }
    assert_eq!(listed(&cluster, base).await, current);
    new.append(vec![Bytes::from_static(b"after")])
        .await
        .expect("the new writer still appends");
    new.close().await.expect("close");
}
