//! The client entry point: configuration, ledger creation, opening, deletion.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use tracing::{info, instrument};

use crate::bookie::{BookiePool, ConnectionConfig};
use crate::digest::{self, DigestType, Digester};
use crate::error::BkError;
use crate::frame::MAX_FRAME_LEN;
use crate::metadata::{LedgerMetadata, LedgerState, MAX_ENSEMBLE_SIZE, Segment};
use crate::metastore::{MetaResolver, MetaStore};
use crate::reader::LedgerReader;
use crate::recovery;
use crate::writer::LedgerWriter;

/// Default ZooKeeper session timeout (Java's `zkTimeout`).
pub const DEFAULT_ZK_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Default limit on establishing a bookie connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Default limit on one add or read request to one bookie (Java's `addEntryTimeoutSec` and
/// `readEntryTimeoutSec`).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Default time a read waits for a replica before also asking the next one (Java's
/// `speculativeReadTimeout`).
pub const DEFAULT_SPECULATIVE_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Default time a bookie may hold a long-poll request. Short enough that a tailer notices a
/// closed ledger quickly, long enough that idle tailing costs one request per second.
pub const DEFAULT_LONG_POLL_TIMEOUT: Duration = Duration::from_secs(1);

/// Default number of entries a writer has on the wire at once: enough to keep three bookies
/// busy with small entries, small enough that a failure fails few of them.
pub const DEFAULT_MAX_OUTSTANDING_ADDS: usize = 1000;

/// Default limit on entries queued in a writer beyond the outstanding window, so a caller that
/// never awaits its appends fails fast instead of growing memory without bound.
pub const DEFAULT_MAX_QUEUED_ADDS: usize = 100_000;

/// Default limit on requests awaiting replies on one bookie connection.
pub const DEFAULT_MAX_IN_FLIGHT_PER_BOOKIE: usize = 16 * 1024;

/// Default largest entry payload: the bookie's 5 MiB frame cap minus room for the envelope.
pub const DEFAULT_MAX_ENTRY_SIZE: usize = MAX_FRAME_LEN - 64 * 1024;

/// Client settings. Build with [`ClientConfig::new`] and adjust fields.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// ZooKeeper connect string, e.g. `"127.0.0.1:2181"`.
    pub zk_connect: String,
    /// Root znode of the cluster's metadata (default `/ledgers`).
    pub ledgers_root: String,
    /// ZooKeeper session timeout (default 10 s).
    pub zk_session_timeout: Duration,
    /// Limit on connecting to a bookie (default 5 s).
    pub connect_timeout: Duration,
    /// Limit on one add or read request to one bookie (default 5 s).
    pub request_timeout: Duration,
    /// Time a read waits for a replica before also asking the next one (default 2 s).
    pub speculative_read_timeout: Duration,
    /// Time a bookie may hold a tailing long poll (default 1 s).
    pub long_poll_timeout: Duration,
    /// Entries a writer has on the wire at once (default 1000).
    pub max_outstanding_adds: usize,
    /// Entries a writer may queue beyond the outstanding window (default 100 000); exceeding it
    /// closes the ledger like a bookie failure would.
    pub max_queued_adds: usize,
    /// Requests awaiting replies on one bookie connection (default 16 384).
    pub max_in_flight_per_bookie: usize,
    /// Largest entry payload accepted by `append` (default 5 MiB - 64 KiB).
    pub max_entry_size: usize,
    /// Whether writers send the last-add-confirmed explicitly when their pipeline goes idle, so
    /// tailing readers see the newest entry at once (default on).
    pub explicit_lac: bool,
    /// Seed of the random choices (ensembles, creator tokens); `None` seeds from the OS.
    pub seed: Option<u64>,
}

impl ClientConfig {
    /// Settings with defaults for the cluster at `zk_connect` under `/ledgers`.
    pub fn new(zk_connect: impl Into<String>) -> ClientConfig {
        ClientConfig {
            zk_connect: zk_connect.into(),
            ledgers_root: "/ledgers".to_string(),
            zk_session_timeout: DEFAULT_ZK_SESSION_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            speculative_read_timeout: DEFAULT_SPECULATIVE_READ_TIMEOUT,
            long_poll_timeout: DEFAULT_LONG_POLL_TIMEOUT,
            max_outstanding_adds: DEFAULT_MAX_OUTSTANDING_ADDS,
            max_queued_adds: DEFAULT_MAX_QUEUED_ADDS,
            max_in_flight_per_bookie: DEFAULT_MAX_IN_FLIGHT_PER_BOOKIE,
            max_entry_size: DEFAULT_MAX_ENTRY_SIZE,
            explicit_lac: true,
            seed: None,
        }
    }

    /// Sets the ledgers root.
    pub fn with_ledgers_root(mut self, root: impl Into<String>) -> ClientConfig {
        self.ledgers_root = root.into();
        self
    }

    fn validate(&self) -> Result<(), BkError> {
        let positive = [
            ("zk_session_timeout", self.zk_session_timeout),
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("speculative_read_timeout", self.speculative_read_timeout),
            ("long_poll_timeout", self.long_poll_timeout),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return Err(BkError::InvalidArgument(format!("{name} must be positive")));
            }
        }
        if self.max_outstanding_adds == 0 || self.max_in_flight_per_bookie == 0 {
            return Err(BkError::InvalidArgument(
                "in-flight limits must be positive".into(),
            ));
        }
        if self.max_entry_size == 0 || self.max_entry_size > DEFAULT_MAX_ENTRY_SIZE {
            return Err(BkError::InvalidArgument(format!(
                "max_entry_size must be within 1..={DEFAULT_MAX_ENTRY_SIZE}"
            )));
        }
        Ok(())
    }
}

/// Settings of a new ledger.
#[derive(Clone, Debug)]
pub struct LedgerOptions {
    /// Bookies the ledger is striped over (E).
    pub ensemble: usize,
    /// Bookies each entry is written to (Qw).
    pub write_quorum: usize,
    /// Acknowledgements that make an entry durable (Qa).
    pub ack_quorum: usize,
    /// Entry checksum.
    pub digest: DigestType,
    /// Password: readers that recover the ledger need the same one.
    pub password: Vec<u8>,
    /// Application key/values stored in the metadata.
    pub custom_metadata: BTreeMap<String, Vec<u8>>,
}

impl LedgerOptions {
    /// A ledger over `ensemble` bookies with the given quorums, CRC32C digest, empty password.
    pub fn new(ensemble: usize, write_quorum: usize, ack_quorum: usize) -> LedgerOptions {
        LedgerOptions {
            ensemble,
            write_quorum,
            ack_quorum,
            digest: DigestType::Crc32c,
            password: Vec::new(),
            custom_metadata: BTreeMap::new(),
        }
    }

    /// Sets the digest type and password.
    pub fn with_digest(
        mut self,
        digest: DigestType,
        password: impl Into<Vec<u8>>,
    ) -> LedgerOptions {
        self.digest = digest;
        self.password = password.into();
        self
    }
}

/// How to open an existing ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Read (and tail) without disturbing the writer.
    NoRecovery,
    /// Fence the writer, recover the last entries and close the ledger; the reader then sees
    /// the final content.
    Recovery,
}

/// State shared by a client and its ledger handles.
pub(crate) struct ClientInner {
    pub(crate) config: ClientConfig,
    pub(crate) meta: Arc<MetaStore>,
    pub(crate) pool: BookiePool,
    rng: Mutex<StdRng>,
}

impl ClientInner {
    fn random_u64(&self) -> u64 {
        self.rng.lock().unwrap_or_else(|p| p.into_inner()).random()
    }
}

/// A BookKeeper client: one ZooKeeper session and one connection per bookie, shared by every
/// ledger it creates or opens. Cheap to clone.
#[derive(Clone)]
pub struct BookKeeper {
    inner: Arc<ClientInner>,
}

impl std::fmt::Debug for BookKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BookKeeper")
            .field("zk_connect", &self.inner.config.zk_connect)
            .finish_non_exhaustive()
    }
}

impl BookKeeper {
    /// Connects to ZooKeeper and checks the cluster layout. Bookies are connected lazily.
    ///
    /// Errors: `InvalidArgument` for bad settings, `ZooKeeper`/`SessionExpired` when ZooKeeper is
    /// unreachable, `UnsupportedLayout` when the cluster uses another ledger manager.
    #[instrument(skip_all, fields(zk = %config.zk_connect, root = %config.ledgers_root))]
    pub async fn connect(config: ClientConfig) -> Result<BookKeeper, BkError> {
        config.validate()?;
        let meta = Arc::new(
            MetaStore::connect(
                &config.zk_connect,
                &config.ledgers_root,
                config.zk_session_timeout,
            )
            .await?,
        );
        let pool = BookiePool::new(
            ConnectionConfig {
                connect_timeout: config.connect_timeout,
                max_in_flight: config.max_in_flight_per_bookie,
            },
            Arc::new(MetaResolver(meta.clone())),
        );
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Ok(BookKeeper {
            inner: Arc::new(ClientInner {
                config,
                meta,
                pool,
                rng: Mutex::new(rng),
            }),
        })
    }

    /// Whether the ZooKeeper session expired; the client must then be rebuilt with
    /// [`BookKeeper::connect`] (open writers can still append but cannot close).
    pub fn session_expired(&self) -> bool {
        self.inner.meta.session_expired()
    }

    /// Ids of the bookies currently registered as writable.
    pub async fn writable_bookies(&self) -> Result<Vec<String>, BkError> {
        self.inner.meta.writable_bookies().await
    }

    /// Creates a ledger on a random ensemble of writable bookies and returns its writer.
    ///
    /// Errors: `InvalidArgument` for quorums not satisfying E >= Qw >= Qa >= 1,
    /// `NotEnoughBookies` when fewer than E bookies are writable, ZooKeeper errors.
    #[instrument(skip_all, fields(ensemble = options.ensemble, wq = options.write_quorum, aq = options.ack_quorum))]
    pub async fn create_ledger(&self, options: LedgerOptions) -> Result<LedgerWriter, BkError> {
        let (e, qw, qa) = (options.ensemble, options.write_quorum, options.ack_quorum);
        if !(e >= qw && qw >= qa && qa >= 1) || e > MAX_ENSEMBLE_SIZE {
            return Err(BkError::InvalidArgument(format!(
                "quorums must satisfy {MAX_ENSEMBLE_SIZE} >= E >= Qw >= Qa >= 1, got {e}/{qw}/{qa}"
            )));
        }
        let available = self.inner.meta.writable_bookies().await?;
        if available.len() < e {
            return Err(BkError::NotEnoughBookies {
                needed: e,
                available: available.len(),
            });
        }
        let ensemble: Vec<String> = {
            let mut rng = self.inner.rng.lock().unwrap_or_else(|p| p.into_inner());
            available.choose_multiple(&mut *rng, e).cloned().collect()
        };
        // Java keeps creator tokens non-negative.
        let token = (self.inner.random_u64() >> 1) as i64;
        let metadata = LedgerMetadata {
            ensemble_size: e,
            write_quorum: qw,
            ack_quorum: qa,
            state: LedgerState::Open,
            last_entry_id: -1,
            length: 0,
            segments: vec![Segment {
                first_entry_id: 0,
                bookies: ensemble,
            }],
            digest_type: Some(options.digest),
            password: Some(options.password.clone()),
            ctime: None,
            custom_metadata: options.custom_metadata,
            creator_token: Some(token),
        };
        let ledger_id = self.inner.meta.create_ledger(&metadata).await?;
        info!(ledger_id, bookies = ?metadata.segments[0].bookies, "created ledger");
        Ok(LedgerWriter::new(
            self.inner.clone(),
            ledger_id,
            metadata,
            0,
            &options.password,
        ))
    }

    /// Opens a ledger for reading, optionally recovering it first (see [`OpenMode`]).
    ///
    /// Errors: `NoSuchLedger`, `Unauthorized` for a wrong password, and for recovery
    /// `RecoveryFailed`/`Timeout`/`BookieUnavailable` (retryable: the ledger stays in recovery).
    #[instrument(skip(self, password))]
    pub async fn open_ledger(
        &self,
        ledger_id: i64,
        password: &[u8],
        mode: OpenMode,
    ) -> Result<LedgerReader, BkError> {
        let (metadata, version) = self.inner.meta.read_ledger(ledger_id).await?;
        if metadata
            .password
            .as_deref()
            .is_some_and(|stored| stored != password)
        {
            return Err(BkError::Unauthorized { ledger_id });
        }
        let digester = Digester::new(metadata.digest_type.unwrap_or_default(), password);
        let master_key = Bytes::copy_from_slice(&digest::master_key(password));
        let (metadata, version) = match mode {
            OpenMode::NoRecovery => (metadata, version),
            OpenMode::Recovery if metadata.is_closed() => (metadata, version),
            OpenMode::Recovery => {
                recovery::recover(
                    &self.inner,
                    ledger_id,
                    metadata,
                    version,
                    &digester,
                    &master_key,
                )
                .await?
            }
        };
        let reader = LedgerReader::new(self.inner.clone(), ledger_id, metadata, version, digester);
        if mode == OpenMode::NoRecovery && !reader.is_closed() {
            reader.read_last_add_confirmed().await?;
        }
        Ok(reader)
    }

    /// Deletes a ledger's metadata; bookies reclaim its data in their next garbage collection.
    ///
    /// Errors: `NoSuchLedger` when it does not exist, ZooKeeper errors.
    #[instrument(skip(self))]
    pub async fn delete_ledger(&self, ledger_id: i64) -> Result<(), BkError> {
        self.inner.meta.delete_ledger(ledger_id).await?;
        info!(ledger_id, "deleted ledger");
        Ok(())
    }

    /// The current metadata of a ledger.
    pub async fn ledger_metadata(&self, ledger_id: i64) -> Result<LedgerMetadata, BkError> {
        Ok(self.inner.meta.read_ledger(ledger_id).await?.0)
    }

    /// The znode version of a ledger's metadata (it changes on every metadata write).
    pub async fn ledger_metadata_version(&self, ledger_id: i64) -> Result<i32, BkError> {
        Ok(self.inner.meta.read_ledger(ledger_id).await?.1)
    }
}
