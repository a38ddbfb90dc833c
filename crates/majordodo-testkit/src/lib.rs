//! Test-only launchers for real ZooKeeper and BookKeeper clusters on 127.0.0.1, and the Java
//! tools (official BookKeeper client) that let Rust tests compare against the reference
//! implementation.
//!
//! - [`ZkServer`]: one ZooKeeper (the Debian package's jar) on a free port.
//! - [`BkCluster`]: its own [`ZkServer`] plus N bookies, each in its own JVM, with kill, pause,
//!   resume and restart of single bookies, and [`BkCluster::run_java_tool`] to run `BkWrite`,
//!   `BkRead`, `BkBench` or `BookieShell` against the cluster.
//!
//! Everything runs as real processes: run `scripts/test-deps` once to install ZooKeeper and
//! cache the BookKeeper jars. Processes die with the test process (see `process`), and
//! directories are removed on drop (set `MAJORDODO_TESTKIT_KEEP=1` to keep them).
//!
//! [`certs`] (feature `certs`) issues test CAs and certificates for TLS tests.
//!
//! [`archives`] builds zip and tar.gz code-pool archives for tests, malicious ones included.
//!
//! [`spawn_tied_to_process`] and [`terminate`] give the same guarantee to the children of other
//! programs (the brokers of `majordodo local-cluster`).
//!
//! This crate depends on no majordodo crate and not on `bookkeeper-client`, so that the
//! BookKeeper client's own tests can use it.

pub mod archives;
mod bk;
#[cfg(feature = "certs")]
pub mod certs;
mod deps;
mod error;
mod process;
pub mod tools;
mod zk;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use bk::{BOOKIE_START_TIMEOUT, BkCluster, BkClusterOptions, DEFAULT_BOOKIE_ZK_TIMEOUT};
pub use deps::{BOOKKEEPER_VERSION, CACHE_ENV, CDS_ENV, bookkeeper_dir, cache_root};
pub use error::{RUN_TEST_DEPS, TestkitError};
pub use process::{spawn_tied_to_process, terminate};
pub use zk::{ZK_START_TIMEOUT, ZkServer};

/// Environment variable: when set to `1`, cluster directories (data and logs) are kept after
/// the test and their path is printed.
pub const KEEP_DIRS_ENV: &str = "MAJORDODO_TESTKIT_KEEP";

/// Environment variable: how many [`BkCluster`]s may be alive at once in one test binary.
pub const MAX_CLUSTERS_ENV: &str = "MAJORDODO_TESTKIT_MAX_CLUSTERS";

/// Default for [`MAX_CLUSTERS_ENV`]. A 3-bookie cluster is 4 JVMs; on a 2-core machine two
/// clusters starting at once already stretch start-up to several seconds each, and more only
/// make every test slower and start-up timeouts likelier.
pub const DEFAULT_MAX_CLUSTERS: usize = 2;

/// The process-wide limit on live clusters; a [`BkCluster`] holds one permit until dropped.
fn cluster_slots() -> Arc<Semaphore> {
    static SLOTS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    SLOTS
        .get_or_init(|| {
            let max = std::env::var(MAX_CLUSTERS_ENV)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|&n| n > 0)
                .unwrap_or(DEFAULT_MAX_CLUSTERS);
            Arc::new(Semaphore::new(max))
        })
        .clone()
}

/// How long a cluster waits for a slot before it starts without one. Bounded so that tests
/// which each hold several clusters at once slow down instead of deadlocking each other.
const SLOT_WAIT_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Waits for a cluster slot (see [`MAX_CLUSTERS_ENV`]); `None` after [`SLOT_WAIT_LIMIT`].
async fn acquire_cluster_slot() -> Option<OwnedSemaphorePermit> {
    let wait = cluster_slots().acquire_owned();
    match tokio::time::timeout(SLOT_WAIT_LIMIT, wait).await {
        Ok(permit) => {
            Some(permit.expect("the cluster semaphore lives in a static and is never closed"))
        }
        Err(_) => {
            eprintln!(
                "majordodo-testkit: no cluster slot free after {SLOT_WAIT_LIMIT:?}, starting \
                 anyway (do tests hold several clusters at once? see {MAX_CLUSTERS_ENV})"
            );
            None
        }
    }
}

/// A fresh temporary directory, removed on drop unless [`KEEP_DIRS_ENV`] is set.
#[derive(Debug)]
struct TempDir {
    inner: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TempDir {
    fn new(prefix: &str) -> Result<TempDir, TestkitError> {
        let inner = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .map_err(|e| TestkitError::io("create a temporary directory", e))?;
        let path = inner.path().to_owned();
        Ok(TempDir {
            inner: Some(inner),
            path,
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let keep = std::env::var(KEEP_DIRS_ENV).is_ok_and(|v| v == "1");
        // without KEEP, dropping `inner` removes the directory
        if let Some(inner) = self.inner.take()
            && keep
        {
            let path = inner.keep();
            eprintln!("majordodo-testkit: keeping {}", path.display());
        }
    }
}
