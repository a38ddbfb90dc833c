//! Taking the log over while the previous leader still writes: the new log fences the old
//! one, which can append nothing more, and holds every record the old one acknowledged.

use bookkeeper_client::{BookKeeper, ClientConfig};
use bytes::Bytes;
use majordodo_cluster::{BkLogConfig, BookKeeperLog, CoordConfig, Coordinator};
use majordodo_log::{CommitLog, LogError, Lsn};
use majordodo_testkit::BkCluster;

async fn open(cluster: &BkCluster) -> BookKeeperLog {
    let bk = BookKeeper::connect(
        ClientConfig::new(cluster.zk_connect_string()).with_ledgers_root(cluster.ledgers_root()),
    )
    .await
    .expect("connect to BookKeeper");
    let coord = Coordinator::connect(&CoordConfig::new(cluster.zk_connect_string()))
        .await
        .expect("connect to ZooKeeper");
    let mut config = BkLogConfig::new(3, 2, 2);
    config.password = b"takeover".to_vec();
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
