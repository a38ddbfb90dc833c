//! The commit log conformance suite on the BookKeeper log, against real ZooKeeper and bookies.

use std::sync::atomic::{AtomicU64, Ordering};

use bookkeeper_client::{BookKeeper, ClientConfig};
use majordodo_cluster::{BkLogConfig, BookKeeperLog, CoordConfig, Coordinator};
use majordodo_log::LogError;
use majordodo_log::conformance::{LogBuilder, run_all};
use majordodo_testkit::BkCluster;

/// Each store is a base path of its own in one shared cluster; small entries and a small roll
/// size make the suite roll ledgers and split rounds over several entries.
/// One BookKeeper client and one ZooKeeper session serve every log of the suite, as they
/// would serve one broker (ZooKeeper limits the connections from one address).
struct Builder {
    _cluster: BkCluster,
    bk: BookKeeper,
    root: Coordinator,
    next: AtomicU64,
}

impl Builder {
    async fn parts(&self, base: &str) -> Result<(BookKeeper, Coordinator, BkLogConfig), LogError> {
        let coord = Coordinator::with_client(self.root.client().clone(), base).await?;
        let mut config = BkLogConfig::new(3, 2, 2);
        config.password = b"conformance".to_vec();
        config.roll_size = 64 * 1024;
        config.max_entry_size = 256 * 1024;
        config.retention = std::time::Duration::ZERO;
        config.broker_id = "conformance".into();
        Ok((self.bk.clone(), coord, config))
    }
}

impl LogBuilder for Builder {
    type Log = BookKeeperLog;
    type Store = String;

    async fn new_store(&self) -> String {
        format!("/conformance-{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    async fn open(&self, base: &String) -> Result<BookKeeperLog, LogError> {
        let (bk, coord, config) = self.parts(base).await?;
        let (log, _) = BookKeeperLog::open(bk, coord, config).await?;
        Ok(log)
    }

    async fn crash(&self, _base: &String, log: BookKeeperLog) {
        log.crash().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookkeeper_log_conforms() {
    // Goal: the replicated log keeps every point of the CommitLog contract, as the file log.
    let cluster = BkCluster::start(3).await.expect("start a 3-bookie cluster");
    let bk = BookKeeper::connect(
        ClientConfig::new(cluster.zk_connect_string()).with_ledgers_root(cluster.ledgers_root()),
    )
    .await
    .expect("connect to BookKeeper");
    let root = Coordinator::connect(&CoordConfig::new(cluster.zk_connect_string()))
        .await
        .expect("connect to ZooKeeper");
    run_all(Builder {
        _cluster: cluster,
        bk,
        root,
        next: AtomicU64::new(0),
    })
    .await;
}
