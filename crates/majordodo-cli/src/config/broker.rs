//! The broker's configuration file (`majordodo broker --config broker.toml`): its keys and
//! defaults ([`BrokerFile`]), the commented default file ([`default_file`]), and validation into
//! [`BrokerSettings`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use majordodo_broker::worker_listener::{
    DEFAULT_ADMISSION_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_ADDRESS, DEFAULT_MAX_HANDSHAKE_FRAME_SIZE,
    DEFAULT_MAX_WORKER_IDLE_TIME, DEFAULT_OUTBOUND_QUEUE, ListenerConfig, WorkerAuth,
};
use majordodo_broker::{BrokerConfig, DispatcherConfig};
use majordodo_core::LeaderConfig;
use majordodo_log::{
    DEFAULT_MAX_QUEUED_BYTES, DEFAULT_MAX_RECORD_SIZE, DEFAULT_SEGMENT_SIZE, FileLogConfig,
};
use majordodo_proto::worker::{DEFAULT_MAX_FRAME_SIZE, SharedSecret};
use serde::Deserialize;

use super::{ByteSize, ConfigError, HumanDuration, Origin, SecretSource, resolve_path};
use crate::http_config::{HttpFile, HttpSettings};

/// Default address of the HTTP API: loopback only, so a broker started without thinking is not
/// exposed; set `http.listen = "0.0.0.0:7364"` to serve other hosts. Port 7364 as the original.
pub(crate) const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7364";

/// Default address of the worker port: loopback only, as the HTTP API. Port 7363 as the original.
pub(crate) const DEFAULT_WORKER_LISTEN: &str = "127.0.0.1:7363";

/// Default data directory, relative to the configuration file (or the working directory).
pub(crate) const DEFAULT_DATA_DIR: &str = "majordodo-data";

/// In a replicated broker, the default of `http.max_body_size` and `workers.max_frame_size`: a
/// task filling a request, or a result filling a frame, must fit one BookKeeper entry.
pub(crate) const CLUSTER_MAX_MESSAGE_SIZE: u64 = 4 * 1024 * 1024;

/// Default `log.max_record_size`: the file log's default record limit plus room for the
/// framing of a request or a frame at their 16 MiB defaults, so the defaults pass the check
/// in [`least_record_size`].
pub(crate) const DEFAULT_LOG_MAX_RECORD_SIZE: u64 = DEFAULT_MAX_RECORD_SIZE as u64 + 1024 * 1024;

/// The smallest record limit that holds every record a request body of `max_body` bytes or a
/// worker frame of `max_frame` bytes can lead to: a task whose fields fill the whole body, or a
/// result that fills the whole frame, plus their fields' framing.
pub(crate) fn least_record_size(max_body: usize, max_frame: usize) -> usize {
    use majordodo_proto::record::record_len_bound;
    let task = record_len_bound([max_body, 0, 0, 0, 0, 0]);
    let result = record_len_bound([
        max_frame,
        majordodo_broker::worker_listener::MAX_IDENTITY_FIELD_LEN,
    ]);
    task.max(result)
}

/// The broker's TOML file. Every key is optional; see [`default_file`] for the meaning of each.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct BrokerFile {
    /// Name of this broker; default: the host name.
    pub(crate) broker_id: Option<String>,
    /// Directory of the commit log and the snapshots.
    pub(crate) data_dir: Option<PathBuf>,
    /// `[http]`.
    pub(crate) http: HttpFile,
    /// `[workers]`.
    pub(crate) workers: WorkersFile,
    /// `[log]`.
    pub(crate) log: LogFile,
    /// `[snapshots]`.
    pub(crate) snapshots: SnapshotsFile,
    /// `[tasks]`.
    pub(crate) tasks: TasksFile,
    /// `[scheduling]`.
    pub(crate) scheduling: SchedulingFile,
    /// `[tuning]`.
    pub(crate) tuning: TuningFile,
    /// `[cluster]`.
    pub(crate) cluster: super::cluster::ClusterFile,
}

/// `[workers]`: the port workers connect to, and how they are watched.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct WorkersFile {
    pub(crate) listen: String,
    pub(crate) tls_cert_file: Option<PathBuf>,
    pub(crate) tls_key_file: Option<PathBuf>,
    pub(crate) tls_client_ca_file: Option<PathBuf>,
    pub(crate) allow_plaintext: bool,
    pub(crate) auth: String,
    pub(crate) shared_secret: Option<String>,
    pub(crate) shared_secret_file: Option<PathBuf>,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_address: usize,
    pub(crate) max_handshake_frame_size: ByteSize,
    pub(crate) handshake_timeout: HumanDuration,
    pub(crate) admission_timeout: HumanDuration,
    pub(crate) keepalive_interval: HumanDuration,
    pub(crate) max_idle_time: HumanDuration,
    pub(crate) dead_after: HumanDuration,
    pub(crate) max_frame_size: ByteSize,
    pub(crate) outbound_queue: usize,
}

impl Default for WorkersFile {
    fn default() -> Self {
        WorkersFile {
            listen: DEFAULT_WORKER_LISTEN.into(),
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            allow_plaintext: false,
            auth: WorkerAuth::default().as_str().into(),
            shared_secret: None,
            shared_secret_file: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            max_handshake_frame_size: ByteSize(DEFAULT_MAX_HANDSHAKE_FRAME_SIZE as u64),
            handshake_timeout: HumanDuration(DEFAULT_HANDSHAKE_TIMEOUT),
            admission_timeout: HumanDuration(DEFAULT_ADMISSION_TIMEOUT),
            keepalive_interval: HumanDuration(DEFAULT_KEEPALIVE_INTERVAL),
            max_idle_time: HumanDuration(DEFAULT_MAX_WORKER_IDLE_TIME),
            dead_after: HumanDuration(Duration::from_millis(
                LeaderConfig::default().max_worker_idle.unsigned_abs(),
            )),
            max_frame_size: ByteSize(DEFAULT_MAX_FRAME_SIZE as u64),
            outbound_queue: DEFAULT_OUTBOUND_QUEUE,
        }
    }
}

/// `[log]`: the commit log in `<data_dir>/log`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LogFile {
    pub(crate) segment_size: ByteSize,
    pub(crate) max_record_size: ByteSize,
    pub(crate) max_queued_bytes: ByteSize,
    pub(crate) fsync: bool,
}

impl Default for LogFile {
    fn default() -> Self {
        LogFile {
            segment_size: ByteSize(DEFAULT_SEGMENT_SIZE),
            max_record_size: ByteSize(DEFAULT_LOG_MAX_RECORD_SIZE),
            max_queued_bytes: ByteSize(DEFAULT_MAX_QUEUED_BYTES),
            fsync: true,
        }
    }
}

/// `[snapshots]`: snapshots in `<data_dir>/snapshots`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct SnapshotsFile {
    pub(crate) interval: HumanDuration,
}

impl Default for SnapshotsFile {
    fn default() -> Self {
        SnapshotsFile {
            interval: HumanDuration(
                DispatcherConfig::default()
                    .checkpoint_interval
                    .unwrap_or(Duration::ZERO),
            ),
        }
    }
}

/// `[tasks]`: what happens to tasks over time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TasksFile {
    pub(crate) finished_task_retention: HumanDuration,
    pub(crate) idempotency_window: HumanDuration,
    pub(crate) transactions_ttl: HumanDuration,
    pub(crate) max_open_transactions: usize,
    pub(crate) max_deferrals: u32,
}

impl Default for TasksFile {
    fn default() -> Self {
        TasksFile {
            finished_task_retention: HumanDuration(Duration::from_millis(
                LeaderConfig::default()
                    .finished_task_retention
                    .unsigned_abs(),
            )),
            idempotency_window: HumanDuration(Duration::from_millis(
                LeaderConfig::default().idempotency_window.unsigned_abs(),
            )),
            transactions_ttl: HumanDuration(Duration::from_millis(
                LeaderConfig::default().transactions_ttl.unsigned_abs(),
            )),
            max_open_transactions: LeaderConfig::default().max_open_transactions,
            max_deferrals: LeaderConfig::default().max_deferrals,
        }
    }
}

/// `[scheduling]`: groups and cluster-wide resource limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct SchedulingFile {
    pub(crate) groups: Vec<u32>,
    pub(crate) resource_limits: BTreeMap<String, u32>,
}

impl Default for SchedulingFile {
    fn default() -> Self {
        SchedulingFile {
            groups: LeaderConfig::default().groups.into_iter().collect(),
            resource_limits: BTreeMap::new(),
        }
    }
}

/// `[tuning]`: internal queues and round sizes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TuningFile {
    pub(crate) command_queue: usize,
    pub(crate) event_queue: usize,
    pub(crate) max_inputs_per_round: usize,
    pub(crate) max_rounds_in_flight: usize,
    pub(crate) max_assignments_per_round: usize,
    pub(crate) max_timer_changes_per_round: usize,
    pub(crate) noop_interval: HumanDuration,
}

impl Default for TuningFile {
    fn default() -> Self {
        let broker = BrokerConfig::default();
        TuningFile {
            command_queue: broker.command_queue,
            event_queue: broker.event_queue,
            max_inputs_per_round: broker.dispatcher.max_inputs_per_round,
            max_rounds_in_flight: broker.dispatcher.max_rounds_in_flight,
            max_assignments_per_round: broker.leader.max_assignments_per_round,
            max_timer_changes_per_round: broker.leader.max_timer_changes_per_round,
            noop_interval: HumanDuration(broker.dispatcher.noop_interval),
        }
    }
}

/// Everything `majordodo broker` needs, validated.
#[derive(Debug, Clone)]
pub(crate) struct BrokerSettings {
    /// Where the commit log (`log/`) and snapshots (`snapshots/`) live.
    pub(crate) data_dir: PathBuf,
    /// Address of the HTTP API.
    pub(crate) http_listen: String,
    /// Address of the worker port.
    pub(crate) worker_listen: String,
    /// The HTTP API's settings (users included).
    pub(crate) http: HttpSettings,
    /// The worker listener's settings (the shared secret included).
    pub(crate) listener: ListenerConfig,
    /// The broker runtime's settings.
    pub(crate) broker: BrokerConfig,
    /// The commit log's settings.
    pub(crate) log: FileLogConfig,
    /// Replication through ZooKeeper and BookKeeper, when `[cluster] zk` is set.
    pub(crate) cluster: Option<super::cluster::ClusterConfig>,
}

impl BrokerFile {
    /// Reads `path`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key and the file.
    pub(crate) fn load(path: &Path) -> Result<BrokerFile, ConfigError> {
        super::load_toml(path)
    }

    /// Validates into settings. `origin` is where the file came from (relative paths are
    /// resolved against its directory).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first key that is wrong.
    pub(crate) fn validate(&self, origin: &Origin) -> Result<BrokerSettings, ConfigError> {
        let clustered = self
            .cluster
            .zk
            .as_deref()
            .is_some_and(|z| !z.trim().is_empty());
        if clustered {
            // A replicated log's records are BookKeeper entries (about 5 MiB): the defaults of
            // what a request and a frame may carry shrink to fit, unless set by hand.
            let mut file = self.clone();
            let http_default = crate::http_config::HttpFile::default().max_body_size;
            if file.http.max_body_size == http_default {
                file.http.max_body_size = ByteSize(CLUSTER_MAX_MESSAGE_SIZE);
            }
            if file.workers.max_frame_size == WorkersFile::default().max_frame_size {
                file.workers.max_frame_size = ByteSize(CLUSTER_MAX_MESSAGE_SIZE);
            }
            if file.log.max_record_size == LogFile::default().max_record_size {
                file.log.max_record_size =
                    ByteSize(majordodo_cluster::BkLogConfig::new(1, 1, 1).max_record_size() as u64);
            }
            file.cluster.zk = None;
            let mut settings = file.validate(origin)?;
            settings.cluster = self.cluster.validate(
                origin,
                &settings.broker.broker_id,
                settings.log.max_record_size,
            )?;
            return Ok(settings);
        }
        let invalid = |key: &str, problem: String| ConfigError::invalid(origin, key, problem);
        let broker_id = match &self.broker_id {
            Some(id) if id.trim().is_empty() => {
                return Err(invalid("broker_id", "must not be empty".into()));
            }
            Some(id) => id.clone(),
            None => majordodo_worker::hostname(),
        };
        let data_dir = resolve_path(
            origin,
            self.data_dir
                .as_deref()
                .unwrap_or(Path::new(DEFAULT_DATA_DIR)),
        );
        check_listen(&self.http.listen).map_err(|p| invalid("http.listen", p))?;
        check_listen(&self.workers.listen).map_err(|p| invalid("workers.listen", p))?;
        let http_tls = super::tls::PortTls {
            table: "http",
            what: "HTTP API",
            listen: &self.http.listen,
            cert_file: self.http.tls_cert_file.as_ref(),
            key_file: self.http.tls_key_file.as_ref(),
            client_ca_file: None,
            allow_plaintext: self.http.allow_plaintext,
        }
        .load(origin)?;
        let worker_tls = super::tls::PortTls {
            table: "workers",
            what: "worker port",
            listen: &self.workers.listen,
            cert_file: self.workers.tls_cert_file.as_ref(),
            key_file: self.workers.tls_key_file.as_ref(),
            client_ca_file: self.workers.tls_client_ca_file.as_ref(),
            allow_plaintext: self.workers.allow_plaintext,
        }
        .load(origin)?;
        let http = self.http.validate(origin)?.with_tls(http_tls);

        let w = &self.workers;
        let auth = match w.auth.as_str() {
            "credentials" => WorkerAuth::Credentials,
            "credentials-or-shared-secret" => WorkerAuth::CredentialsOrSharedSecret,
            other => {
                return Err(invalid(
                    "workers.auth",
                    format!(
                        "unknown mode {other:?}: \"credentials\" (per-worker credentials only) or \
                         \"credentials-or-shared-secret\" (also the legacy shared secret)"
                    ),
                ));
            }
        };
        let secret = if auth.allows_shared_secret() {
            SecretSource {
                inline: w.shared_secret.clone(),
                file: w.shared_secret_file.clone(),
            }
            .load(origin, "workers.")?
        } else {
            if w.shared_secret.is_some() || w.shared_secret_file.is_some() {
                let key = if w.shared_secret.is_some() {
                    "workers.shared_secret"
                } else {
                    "workers.shared_secret_file"
                };
                return Err(invalid(
                    key,
                    "is set, but workers.auth = \"credentials\" refuses the shared secret: \
                     set workers.auth = \"credentials-or-shared-secret\" to accept it (legacy), \
                     or remove it and give each worker its own credential"
                        .into(),
                ));
            }
            Vec::new()
        };
        let max_frame_size = usize::try_from(w.max_frame_size.0)
            .map_err(|_| invalid("workers.max_frame_size", "too large".into()))?;
        let max_handshake_frame_size = usize::try_from(w.max_handshake_frame_size.0)
            .map_err(|_| invalid("workers.max_handshake_frame_size", "too large".into()))?;
        let listener = ListenerConfig {
            broker_id: broker_id.clone(),
            auth,
            shared_secret: SharedSecret::new(secret),
            max_connections: w.max_connections,
            max_connections_per_address: w.max_connections_per_address,
            max_handshake_frame_size,
            handshake_timeout: w.handshake_timeout.0,
            admission_timeout: w.admission_timeout.0,
            keepalive_interval: w.keepalive_interval.0,
            max_worker_idle_time: w.max_idle_time.0,
            max_frame_size,
            outbound_queue: w.outbound_queue,
            tls: worker_tls,
        };
        listener.validate().map_err(|e| {
            // The listener names its settings as this table does, minus two renames.
            let key =
                e.0.split_whitespace()
                    .next()
                    .unwrap_or("workers")
                    .replace("max_worker_idle_time", "max_idle_time");
            invalid(
                &format!("workers.{key}"),
                e.0.replace("max_worker_idle_time", "max_idle_time"),
            )
        })?;
        if w.dead_after.0 < w.max_idle_time.0 {
            return Err(invalid(
                "workers.dead_after",
                format!(
                    "must be at least workers.max_idle_time ({}): a worker must be disconnected \
                     before it can be declared dead",
                    w.max_idle_time
                ),
            ));
        }

        let l = &self.log;
        let log = FileLogConfig {
            segment_size: l.segment_size.0,
            max_record_size: usize::try_from(l.max_record_size.0)
                .map_err(|_| invalid("log.max_record_size", "too large".into()))?,
            max_queued_bytes: l.max_queued_bytes.0,
            fsync: l.fsync,
        };
        if log.segment_size < 4096 {
            return Err(invalid("log.segment_size", "must be at least 4KiB".into()));
        }
        if log.max_record_size == 0 || log.max_record_size > majordodo_log::MAX_RECORD_SIZE_LIMIT {
            return Err(invalid(
                "log.max_record_size",
                format!(
                    "must be between 1 and {}",
                    crate::units::format_bytes(majordodo_log::MAX_RECORD_SIZE_LIMIT as u64)
                ),
            ));
        }
        if log.max_queued_bytes == 0 {
            return Err(invalid("log.max_queued_bytes", "must be positive".into()));
        }
        // Every record a request or a worker frame can produce must fit, or the broker could
        // only refuse it after accepting it.
        let max_body = usize::try_from(self.http.max_body_size.0).unwrap_or(usize::MAX);
        let need = least_record_size(max_body, max_frame_size);
        if log.max_record_size < need {
            return Err(invalid(
                "log.max_record_size",
                format!(
                    "must be at least {need} bytes: a request of http.max_body_size ({}) or a \
                     worker frame of workers.max_frame_size ({}) can carry a task or a result \
                     that needs a record that large; raise it, or lower those two",
                    crate::units::format_bytes(self.http.max_body_size.0),
                    crate::units::format_bytes(max_frame_size as u64),
                ),
            ));
        }

        let t = &self.tuning;
        for (key, value) in [
            ("tuning.command_queue", t.command_queue),
            ("tuning.event_queue", t.event_queue),
            ("tuning.max_inputs_per_round", t.max_inputs_per_round),
            ("tuning.max_rounds_in_flight", t.max_rounds_in_flight),
            (
                "tuning.max_assignments_per_round",
                t.max_assignments_per_round,
            ),
            (
                "tuning.max_timer_changes_per_round",
                t.max_timer_changes_per_round,
            ),
            (
                "tasks.max_open_transactions",
                self.tasks.max_open_transactions,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1".into()));
            }
        }
        if t.noop_interval.0.is_zero() {
            return Err(invalid("tuning.noop_interval", "must be positive".into()));
        }
        if self.scheduling.groups.contains(&0) {
            return Err(invalid(
                "scheduling.groups",
                "0 is not a group (it means \"any group\" to workers)".into(),
            ));
        }
        if self.scheduling.resource_limits.keys().any(|k| k.is_empty()) {
            return Err(invalid(
                "scheduling.resource_limits",
                "a resource name must not be empty".into(),
            ));
        }
        let millis = |key: &str, d: Duration| {
            i64::try_from(d.as_millis()).map_err(|_| invalid(key, "too large".into()))
        };
        let broker = BrokerConfig {
            broker_id,
            leader: LeaderConfig {
                max_worker_idle: millis("workers.dead_after", w.dead_after.0)?,
                finished_task_retention: millis(
                    "tasks.finished_task_retention",
                    self.tasks.finished_task_retention.0,
                )?,
                max_assignments_per_round: t.max_assignments_per_round,
                max_timer_changes_per_round: t.max_timer_changes_per_round,
                idempotency_window: millis(
                    "tasks.idempotency_window",
                    self.tasks.idempotency_window.0,
                )?,
                transactions_ttl: millis("tasks.transactions_ttl", self.tasks.transactions_ttl.0)?,
                max_open_transactions: self.tasks.max_open_transactions,
                max_deferrals: self.tasks.max_deferrals,
                global_resource_limits: self.scheduling.resource_limits.clone(),
                groups: self.scheduling.groups.iter().copied().collect(),
            },
            dispatcher: DispatcherConfig {
                max_inputs_per_round: t.max_inputs_per_round,
                max_rounds_in_flight: t.max_rounds_in_flight,
                checkpoint_interval: Some(self.snapshots.interval.0).filter(|d| !d.is_zero()),
                noop_interval: t.noop_interval.0,
            },
            command_queue: t.command_queue,
            event_queue: t.event_queue,
        };
        Ok(BrokerSettings {
            data_dir,
            http_listen: self.http.listen.clone(),
            worker_listen: self.workers.listen.clone(),
            http,
            listener,
            broker,
            log,
            cluster: None,
        })
    }
}

/// Checks that `addr` looks like `host:port` (the host is resolved when binding).
pub(crate) fn check_listen(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} is not host:port"));
    };
    if host.is_empty() {
        return Err(format!(
            "{addr:?} has no host; use 0.0.0.0:{port} for every interface"
        ));
    }
    port.parse::<u16>()
        .map(|_| ())
        .map_err(|_| format!("{addr:?} has no valid port"))
}

/// The default configuration file, every key commented with its meaning and default. Parsing
/// it gives [`BrokerFile::default`] plus the placeholders it asks to fill (secret, users).
pub(crate) fn default_file() -> String {
    let w = WorkersFile::default();
    let l = LogFile::default();
    let s = SnapshotsFile::default();
    let t = TasksFile::default();
    let u = TuningFile::default();
    let http = crate::http_config::default_section();
    let cluster = super::cluster::default_section();
    format!(
        r#"# Configuration of `majordodo broker`. Every key is optional unless marked REQUIRED; the
# values shown are the defaults. Durations are strings with units (ms, s, m, h, d: "1h30m");
# sizes are numbers of bytes or strings with units (B, KiB, MiB, GiB, KB, MB, GB).
# Relative paths are relative to the directory of this file.

# Name of this broker, in logs and in the worker handshake. Default: the host name.
# broker_id = "broker-1"

# Directory of the commit log (<data_dir>/log) and the snapshots (<data_dir>/snapshots).
data_dir = "{data_dir}"

{http}
[workers]
# Address of the port workers connect to. An address that is not loopback needs TLS
# (tls_cert_file, tls_key_file) or allow_plaintext = true.
listen = "{worker_listen}"
# TLS: the port's PEM certificate chain and private key; reloaded when the files change or on
# SIGHUP. Unset, the port is plain TCP.
# tls_cert_file = "broker.crt"
# tls_key_file = "broker.key"
# With TLS: the PEM certificates of the CA issuing workers' client certificates. Set, every worker
# must present one, and its subjectAltName must name (as a DNS name) the worker id it connects as.
# tls_client_ca_file = "workers-ca.crt"
# Serve plain TCP on an address that is not loopback (without TLS, refused by default).
allow_plaintext = {worker_allow_plaintext}
# How workers authenticate: "credentials" (each worker proves its own credential, issued with
# `majordodo worker-credentials add`) or "credentials-or-shared-secret" (also the legacy secret
# shared by every worker, which lets any holder connect as any worker id).
auth = "{worker_auth}"
# Legacy mode only: the secret workers without a credential must prove they know (the same in
# every such worker's file). Put it in a file readable only by the broker's user (mode 0600), or
# inline with `shared_secret = "..."`.
# shared_secret_file = "worker.secret"
# Most worker connections served at once.
max_connections = {max_connections}
# Most connections from one IP address (authenticated or not); more are closed on accept.
max_connections_per_address = {max_connections_per_address}
# Largest handshake frame read before the worker is authenticated (it lists the running tasks).
max_handshake_frame_size = "{max_handshake_frame_size}"
# Time a worker has to complete the handshake.
handshake_timeout = "{handshake_timeout}"
# Time the broker takes at most to admit a worker (the connection is logged first).
admission_timeout = "{admission_timeout}"
# Ping interval asked of workers; must be below max_idle_time.
keepalive_interval = "{keepalive_interval}"
# A connection silent this long (no frame, not even a ping) is closed.
max_idle_time = "{max_idle_time}"
# A worker disconnected this long is declared dead, and its running tasks fail (and are retried
# within their maxattempts). At least max_idle_time.
dead_after = "{dead_after}"
# Largest frame exchanged with workers; must be the same in the workers' files.
max_frame_size = "{max_frame_size}"
# Pushes queued per connection before a slow worker is reported as falling behind.
outbound_queue = {outbound_queue}

[log]
# Size at which a commit-log segment file is closed and a new one started (at least 4KiB).
segment_size = "{segment_size}"
# Largest log record: bounds one task's payload or result.
max_record_size = "{max_record_size}"
# Bytes waiting for the log writer before new writes wait (backpressure).
max_queued_bytes = "{max_queued_bytes}"
# fsync every write before acknowledging it. Setting false may LOSE acknowledged tasks on a
# power failure or kernel crash; for benchmarks only.
fsync = {fsync}

[snapshots]
# Period of the snapshot of the whole state, after which older log segments are deleted.
# "0" disables periodic snapshots (the log then grows forever).
interval = "{snapshot_interval}"

[tasks]
# Finished and failed tasks are forgotten this long after their creation. "0" keeps them forever.
finished_task_retention = "{retention}"
# A submission's idempotency key is kept this long after its task's creation (even if the task
# was purged sooner): a submission sent again with the same key and user within it creates
# nothing and is answered with the first task. "0" keeps keys forever.
idempotency_window = "{idempotency_window}"
# An open transaction neither committed nor rolled back this long after its begin is rolled
# back (its prepared tasks vanish, their slots are freed). "0" keeps open transactions.
transactions_ttl = "{transactions_ttl}"
# Most transactions open at once; beginTransaction is refused (429) beyond it.
max_open_transactions = {max_open_transactions}
# Most times one task may answer "retry later" without using an attempt; beyond it, the answer
# counts as a failed attempt.
max_deferrals = {max_deferrals}

[scheduling]
# Groups a service level (action setServiceLevel) may name; 0 is not a group ("any group" to
# workers). Users without a service level are in the group their id reads as a number, else 1.
groups = [1]
# Named resource -> most tasks using it that may run at once in the whole cluster, e.g.
# {{ "db:orders" = 10 }}. Default: none.
resource_limits = {{}}

[tuning]
# Requests (submissions, reads) queued for the dispatcher before callers wait.
command_queue = {command_queue}
# Worker events queued for the dispatcher before connections wait.
event_queue = {event_queue}
# Most requests and events taken into one round of log writes.
max_inputs_per_round = {max_inputs_per_round}
# Most rounds being written at once before the dispatcher stops taking input.
max_rounds_in_flight = {max_rounds_in_flight}
# Most task assignments decided in one round.
max_assignments_per_round = {max_assignments_per_round}
# Most timer-driven changes (delayed tasks starting, deadlines, purges, idempotency keys
# forgotten) in one round.
max_timer_changes_per_round = {max_timer_changes_per_round}
# Period of the empty log entry proving the log is writable when nothing else happens.
noop_interval = "{noop_interval}"

{cluster}"#,
        data_dir = DEFAULT_DATA_DIR,
        worker_listen = w.listen,
        worker_allow_plaintext = w.allow_plaintext,
        worker_auth = w.auth,
        max_connections = w.max_connections,
        max_connections_per_address = w.max_connections_per_address,
        max_handshake_frame_size = w.max_handshake_frame_size,
        handshake_timeout = w.handshake_timeout,
        admission_timeout = w.admission_timeout,
        keepalive_interval = w.keepalive_interval,
        max_idle_time = w.max_idle_time,
        dead_after = w.dead_after,
        max_frame_size = w.max_frame_size,
        outbound_queue = w.outbound_queue,
        segment_size = l.segment_size,
        max_record_size = l.max_record_size,
        max_queued_bytes = l.max_queued_bytes,
        fsync = l.fsync,
        snapshot_interval = s.interval,
        retention = t.finished_task_retention,
        idempotency_window = t.idempotency_window,
        transactions_ttl = t.transactions_ttl,
        max_open_transactions = t.max_open_transactions,
        max_deferrals = t.max_deferrals,
        command_queue = u.command_queue,
        event_queue = u.event_queue,
        max_inputs_per_round = u.max_inputs_per_round,
        max_rounds_in_flight = u.max_rounds_in_flight,
        max_assignments_per_round = u.max_assignments_per_round,
        max_timer_changes_per_round = u.max_timer_changes_per_round,
        noop_interval = u.noop_interval,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_toml;

    const TOKEN_DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn with_users(extra: &str) -> String {
        format!(
            "{extra}\n[[http.users]]\nname = \"admin\"\nrole = \"admin\"\ntoken_sha256 = \"{TOKEN_DIGEST}\"\n"
        )
    }

    fn validate(text: &str) -> Result<BrokerSettings, ConfigError> {
        let path = Path::new("/etc/majordodo/broker.toml");
        let file: BrokerFile = parse_toml(text, path)?;
        file.validate(&Origin::File(path.to_path_buf()))
    }

    #[test]
    fn the_default_file_documents_exactly_the_defaults() {
        // Goal: parsing the printed default file gives the built-in defaults, so the file and
        // the code cannot drift apart (the placeholders the user must fill aside).
        let mut parsed: BrokerFile = parse_toml(&default_file(), Path::new("broker.toml")).unwrap();
        assert_eq!(parsed.http.users.len(), 1);
        assert_eq!(parsed.workers.auth, "credentials");
        parsed.http.users.clear();
        let expected = BrokerFile {
            data_dir: Some(DEFAULT_DATA_DIR.into()),
            ..BrokerFile::default()
        };
        assert_eq!(format!("{parsed:?}"), format!("{expected:?}"));
    }

    #[test]
    fn a_complete_file_becomes_the_runtime_settings() {
        // Goal: values with units reach the typed configs, paths resolve against the file's
        // directory, and a zero snapshot interval disables snapshots.
        let text = with_users(
            r#"
broker_id = "b1"
data_dir = "data"
[workers]
auth = "credentials-or-shared-secret"
shared_secret = "s3cret"
dead_after = "1m"
max_frame_size = "1MiB"
[log]
segment_size = "8MiB"
fsync = false
[snapshots]
interval = "0"
[tasks]
finished_task_retention = "2h"
idempotency_window = "90m"
"#,
        );
        let s = validate(&text).unwrap();
        assert_eq!(s.data_dir, Path::new("/etc/majordodo/data"));
        assert_eq!(s.broker.broker_id, "b1");
        assert_eq!(s.broker.leader.max_worker_idle, 60_000);
        assert_eq!(s.broker.leader.finished_task_retention, 7_200_000);
        assert_eq!(s.broker.leader.idempotency_window, 5_400_000);
        assert_eq!(s.broker.dispatcher.checkpoint_interval, None);
        assert_eq!(s.listener.max_frame_size, 1 << 20);
        assert_eq!(s.listener.shared_secret.as_bytes(), b"s3cret");
        assert_eq!(s.log.segment_size, 8 << 20);
        assert!(!s.log.fsync);
        assert_eq!(s.http_listen, DEFAULT_HTTP_LISTEN);
    }

    #[test]
    fn invalid_files_name_the_key_at_fault() {
        // Goal: each kind of mistake is reported against the key a user must change.
        let cases = [
            (
                with_users(
                    "[workers]\nauth = \"credentials-or-shared-secret\"\nshared_secret = \"s\"\nbogus = 1",
                ),
                "workers.bogus",
            ),
            (
                with_users(
                    "[workers]\nauth = \"credentials-or-shared-secret\"\nshared_secret = \"s\"\nmax_connections = \"many\"",
                ),
                "workers.max_connections",
            ),
            (
                with_users(
                    "[workers]\nauth = \"credentials-or-shared-secret\"\nshared_secret = \"s\"\nkeepalive_interval = \"10 parsecs\"",
                ),
                "workers.keepalive_interval",
            ),
            (
                with_users("[workers]\nshared_secret = \"s\""),
                "workers.shared_secret",
            ),
            (
                with_users("[workers]\nshared_secret_file = \"worker.secret\""),
                "workers.shared_secret_file",
            ),
            (with_users("[workers]\nauth = \"legacy\""), "workers.auth"),
            (
                with_users("[workers]\nauth = \"credentials-or-shared-secret\""),
                "workers.shared_secret",
            ),
            (
                with_users(
                    "[workers]\nauth = \"credentials-or-shared-secret\"\nshared_secret = \"s\"\ndead_after = \"1s\"",
                ),
                "workers.dead_after",
            ),
            (
                with_users(
                    "[workers]\nauth = \"credentials-or-shared-secret\"\nshared_secret = \"s\"\nkeepalive_interval = \"1m\"",
                ),
                "workers.keepalive_interval",
            ),
            (
                with_users(
                    "[workers]\nauth = \"credentials-or-shared-secret\"\nshared_secret = \"s\"\nlisten = \"nowhere\"",
                ),
                "workers.listen",
            ),
            (
                with_users(
                    "[workers]\nauth = \"credentials-or-shared-secret\"\nshared_secret = \"s\"\n[log]\nsegment_size = 10",
                ),
                "log.segment_size",
            ),
            (
                "[workers]\nauth = \"credentials-or-shared-secret\"\nshared_secret = \"s\"\n"
                    .to_owned(),
                "http.users",
            ),
            (
                with_users(
                    "[workers]\nauth = \"credentials-or-shared-secret\"\nshared_secret = \"s\"\n[http]\nmax_body_size = 0",
                ),
                "http.max_body_size",
            ),
            (
                with_users(
                    "[workers]\nauth = \"credentials-or-shared-secret\"\nshared_secret = \"s\"\n[log]\nmax_record_size = \"16MiB\"",
                ),
                "log.max_record_size",
            ),
            (
                with_users(
                    "[workers]\nauth = \"credentials-or-shared-secret\"\nshared_secret = \"s\"\nmax_frame_size = \"32MiB\"",
                ),
                "log.max_record_size",
            ),
        ];
        for (text, key) in cases {
            let error = validate(&text).unwrap_err().to_string();
            assert!(error.contains(&format!("`{key}`")), "{key}: {error}");
            assert!(error.contains("broker.toml"), "{error}");
        }
    }

    #[test]
    fn record_limit_must_hold_what_requests_and_frames_let_in() {
        // Goal: a record limit below a full request or a full frame is refused, one that holds
        // both is accepted, and the defaults pass.
        let base = "[workers]\nauth = \"credentials-or-shared-secret\"\nshared_secret = \"s\"\nmax_frame_size = \"1MiB\"\n[http]\nmax_body_size = \"1MiB\"\n";
        let need = least_record_size(1 << 20, 1 << 20);
        assert!(need > 1 << 20 && need < (1 << 20) + 4096, "{need}");
        let at = |limit: usize| with_users(&format!("{base}[log]\nmax_record_size = {limit}"));
        assert!(validate(&at(need)).is_ok());
        let error = validate(&at(need - 1)).unwrap_err().to_string();
        assert!(
            error.contains("`log.max_record_size`") && error.contains(&need.to_string()),
            "{error}"
        );
        assert!(
            validate(&with_users(
                "[workers]\nauth = \"credentials-or-shared-secret\"\nshared_secret = \"s\""
            ))
            .is_ok()
        );
        // Per-worker credentials (the default) need no secret at all.
        let s = validate(&with_users("")).unwrap();
        assert_eq!(s.listener.auth, WorkerAuth::Credentials);
    }

    #[test]
    fn settings_never_show_the_secret() {
        // Goal: the validated settings can be logged without leaking the shared secret.
        let text = with_users(
            "[workers]\nauth = \"credentials-or-shared-secret\"\nshared_secret = \"hunter2-secret\"",
        );
        let s = validate(&text).unwrap();
        assert!(!format!("{s:?}").contains("hunter2-secret"));
    }
}
