//! `[cluster]` of the broker's file: a broker replicated through ZooKeeper and BookKeeper
//! instead of running alone on its file log.

use std::path::PathBuf;
use std::time::Duration;

use bookkeeper_client::DigestType;
use majordodo_cluster::{
    BkLogConfig, CoordConfig, DEFAULT_RETENTION, DEFAULT_ROLL_AGE, DEFAULT_ROLL_SIZE,
};
use serde::Deserialize;

use super::{ByteSize, ConfigError, HumanDuration, Origin, read_small_file, resolve_path};

/// Default base path of the cluster's znodes (the original's).
pub(crate) const DEFAULT_ZK_PATH: &str = "/majordodo";
/// Default BookKeeper metadata root in ZooKeeper (BookKeeper's own default).
pub(crate) const DEFAULT_LEDGERS_ROOT: &str = "/ledgers";
/// Default ZooKeeper session timeout: a dead leader is replaced after about this long.
pub(crate) const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// `[cluster]`: every key optional; replication is on when `zk` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ClusterFile {
    pub(crate) zk: Option<String>,
    pub(crate) zk_path: String,
    pub(crate) zk_digest_file: Option<PathBuf>,
    pub(crate) session_timeout: HumanDuration,
    pub(crate) ledgers_root: String,
    pub(crate) ensemble: usize,
    pub(crate) write_quorum: usize,
    pub(crate) ack_quorum: usize,
    pub(crate) digest: String,
    pub(crate) ledger_password_file: Option<PathBuf>,
    pub(crate) ledger_roll_size: ByteSize,
    pub(crate) ledger_roll_age: HumanDuration,
    pub(crate) ledger_retention: HumanDuration,
    pub(crate) advertise_host: Option<String>,
    pub(crate) peer_token_file: Option<PathBuf>,
}

impl Default for ClusterFile {
    fn default() -> Self {
        ClusterFile {
            zk: None,
            zk_path: DEFAULT_ZK_PATH.into(),
            zk_digest_file: None,
            session_timeout: HumanDuration(DEFAULT_SESSION_TIMEOUT),
            ledgers_root: DEFAULT_LEDGERS_ROOT.into(),
            ensemble: 3,
            write_quorum: 2,
            ack_quorum: 2,
            digest: "crc32c".into(),
            ledger_password_file: None,
            ledger_roll_size: ByteSize(DEFAULT_ROLL_SIZE),
            ledger_roll_age: HumanDuration(DEFAULT_ROLL_AGE),
            ledger_retention: HumanDuration(DEFAULT_RETENTION),
            advertise_host: None,
            peer_token_file: None,
        }
    }
}

/// `[cluster]` validated; what the broker needs besides its bound addresses.
#[derive(Clone)]
pub(crate) struct ClusterConfig {
    pub(crate) coord: CoordConfig,
    pub(crate) bookkeeper: bookkeeper_client::ClientConfig,
    pub(crate) log: BkLogConfig,
    /// Host other brokers, workers and clients reach this broker on; `None`: the listen host.
    pub(crate) advertise_host: Option<String>,
    pub(crate) peer_token: Option<String>,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("zk", &self.coord.zk_connect)
            .field("zk_path", &self.coord.base_path)
            .field(
                "quorums",
                &(
                    self.log.ensemble,
                    self.log.write_quorum,
                    self.log.ack_quorum,
                ),
            )
            .field("ledger_password", &"<redacted>")
            .field(
                "peer_token",
                &self.peer_token.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

impl ClusterFile {
    /// `None` when `zk` is not set (a standalone broker on its file log).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the `cluster.` key at fault.
    pub(crate) fn validate(
        &self,
        origin: &Origin,
        broker_id: &str,
        max_record_size: usize,
    ) -> Result<Option<ClusterConfig>, ConfigError> {
        let invalid = |key: &str, problem: String| {
            ConfigError::invalid(origin, format!("cluster.{key}"), problem)
        };
        let Some(zk) = self.zk.as_deref().map(str::trim).filter(|z| !z.is_empty()) else {
            return Ok(None);
        };
        for server in zk.split(',') {
            super::broker::check_listen(server.trim()).map_err(|p| invalid("zk", p))?;
        }
        for (key, path) in [
            ("zk_path", &self.zk_path),
            ("ledgers_root", &self.ledgers_root),
        ] {
            if !path.starts_with('/') || path.len() < 2 || path.ends_with('/') {
                return Err(invalid(
                    key,
                    format!("{path:?} must be an absolute znode path such as /majordodo"),
                ));
            }
        }
        if self.session_timeout.0 < Duration::from_secs(1) {
            return Err(invalid("session_timeout", "must be at least 1s".into()));
        }
        if self.ack_quorum == 0
            || self.ack_quorum > self.write_quorum
            || self.write_quorum > self.ensemble
        {
            return Err(invalid(
                "ack_quorum",
                format!(
                    "quorums must satisfy 1 <= ack_quorum <= write_quorum <= ensemble, got {}/{}/{}",
                    self.ack_quorum, self.write_quorum, self.ensemble
                ),
            ));
        }
        let digest = match self.digest.as_str() {
            "crc32c" => DigestType::Crc32c,
            "crc32" => DigestType::Crc32,
            "hmac-sha1" => DigestType::Hmac,
            "dummy" => DigestType::Dummy,
            other => {
                return Err(invalid(
                    "digest",
                    format!("{other:?} is not one of crc32c, crc32, hmac-sha1, dummy"),
                ));
            }
        };
        let password = match &self.ledger_password_file {
            None => Vec::new(),
            Some(file) => {
                let path = resolve_path(origin, file);
                let text = read_small_file(&path).map_err(|e| {
                    invalid(
                        "ledger_password_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                text.trim_end_matches(['\n', '\r']).as_bytes().to_vec()
            }
        };
        let peer_token = match &self.peer_token_file {
            None => None,
            Some(file) => {
                let path = resolve_path(origin, file);
                let text = read_small_file(&path).map_err(|e| {
                    invalid(
                        "peer_token_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                Some(text.trim().to_owned()).filter(|t| !t.is_empty())
            }
        };
        if self.ledger_roll_size.0 == 0 {
            return Err(invalid("ledger_roll_size", "must be positive".into()));
        }
        if self.ledger_roll_age.0.is_zero() {
            return Err(invalid("ledger_roll_age", "must be positive".into()));
        }
        let mut log = BkLogConfig::new(self.ensemble, self.write_quorum, self.ack_quorum);
        log.digest = digest;
        log.password = password;
        log.roll_size = self.ledger_roll_size.0;
        log.roll_age = self.ledger_roll_age.0;
        log.retention = self.ledger_retention.0;
        log.broker_id = broker_id.to_owned();
        if log.max_record_size() < max_record_size {
            return Err(ConfigError::invalid(
                origin,
                "log.max_record_size",
                format!(
                    "a replicated broker's records are at most {} bytes (one BookKeeper entry): \
                     lower log.max_record_size, http.max_body_size and workers.max_frame_size \
                     to fit",
                    log.max_record_size()
                ),
            ));
        }
        let mut coord = CoordConfig::new(zk);
        coord.base_path = self.zk_path.clone();
        if let Some(file) = &self.zk_digest_file {
            let path = resolve_path(origin, file);
            let text = read_small_file(&path).map_err(|e| {
                invalid(
                    "zk_digest_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            coord.digest = Some(
                majordodo_cluster::ZkDigest::parse(&text)
                    .map_err(|e| invalid("zk_digest_file", format!("{}: {e}", path.display())))?,
            );
        }
        coord.session_timeout = self.session_timeout.0;
        let mut bookkeeper =
            bookkeeper_client::ClientConfig::new(zk).with_ledgers_root(self.ledgers_root.clone());
        bookkeeper.zk_session_timeout = self.session_timeout.0;
        Ok(Some(ClusterConfig {
            coord,
            bookkeeper,
            log,
            advertise_host: self.advertise_host.clone().filter(|h| !h.trim().is_empty()),
            peer_token,
        }))
    }
}

/// The `[cluster]` section of the default file.
pub(crate) fn default_section() -> String {
    let c = ClusterFile::default();
    format!(
        r#"[cluster]
# ZooKeeper servers (host:port,host:port). Set it to replicate this broker through BookKeeper
# with the other brokers of the same zk and zk_path; unset, the broker runs alone on its file
# log ([log]). In a cluster, data_dir holds only the snapshots.
# zk = "127.0.0.1:2181"
# Base path of the cluster's znodes (leader, discovery, ledger list).
zk_path = "{zk_path}"
# File holding ZooKeeper digest credentials, user:password (the same on every broker); never
# printed. Set, the brokers authenticate with them and the cluster's znodes can be changed only
# by that identity (anyone may still read them, to find the leader). Unset: open znodes.
# zk_digest_file = "zk.digest"
# ZooKeeper session timeout: a leader that stops answering is replaced after about this long.
session_timeout = "{session_timeout}"
# BookKeeper's metadata root in the same ZooKeeper.
ledgers_root = "{ledgers_root}"
# Bookies each ledger is striped over, bookies each entry is written to, and acknowledgements
# that make an entry durable (1 <= ack_quorum <= write_quorum <= ensemble).
ensemble = {ensemble}
write_quorum = {write_quorum}
ack_quorum = {ack_quorum}
# Entry checksum: crc32c, crc32, hmac-sha1 or dummy.
digest = "{digest}"
# File holding the ledgers' password (the same on every broker); never printed. Unset: empty.
# ledger_password_file = "ledger.password"
# A ledger is closed and a new one started after this many bytes, or this long.
ledger_roll_size = "{roll_size}"
ledger_roll_age = "{roll_age}"
# Ledgers are dropped this long after their creation, once a snapshot covers them.
ledger_retention = "{retention}"
# Host that other brokers, workers and clients reach this broker on. Default: the host of
# http.listen and workers.listen.
# advertise_host = "broker-1.example.com"
# File holding the bearer token of an admin user of the other brokers, to download a snapshot
# from the leader when this broker boots without a usable one.
# peer_token_file = "peer.token"
"#,
        zk_path = c.zk_path,
        session_timeout = c.session_timeout,
        ledgers_root = c.ledgers_root,
        ensemble = c.ensemble,
        write_quorum = c.write_quorum,
        ack_quorum = c.ack_quorum,
        digest = c.digest,
        roll_size = c.ledger_roll_size,
        roll_age = c.ledger_roll_age,
        retention = c.ledger_retention,
    )
}
