//! The worker's configuration file (`majordodo worker --config worker.toml`, and the optional
//! `--worker-config` of `majordodo standalone`): its keys and defaults ([`WorkerFile`]), the
//! commented default file ([`default_file`]), and validation into [`WorkerSettings`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use majordodo_client::{DiscoveryError, ZkDiscovery};
use majordodo_proto::worker::{
    ANY_TASK_TYPE, CPU_MILLIS, Capacity, DEFAULT_MAX_FRAME_SIZE, MEMORY_MIB, SharedSecret,
};
use majordodo_worker::BrokerLocator;
use majordodo_worker::{
    Backoff, DEFAULT_ACK_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_MAX_REFUSED_TIME, DEFAULT_MAX_REPORT_DELAY, DEFAULT_MAX_REPORTS_PER_BATCH,
    DEFAULT_MAX_THREADS, DEFAULT_RECONNECT_INITIAL, DEFAULT_RECONNECT_MAX, DEFAULT_SHUTDOWN_GRACE,
    Enforcement, Executors, ProcessExecutor, ProcessExecutorConfig, ReportBatching, WorkerConfig,
    check_amount, detect_cpu_millis, detect_memory_mib,
};
use serde::Deserialize;
use std::sync::Arc;

use super::broker::{DEFAULT_WORKER_LISTEN, check_listen};
use super::{ByteSize, ConfigError, HumanDuration, Origin, SecretSource, resolve_path};
use crate::builtin::{self, Builtin};
use crate::zk::ZkBrokerLocator;

/// The worker's TOML file. Every key is optional except the secret (for `majordodo worker`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct WorkerFile {
    pub(crate) broker: String,
    pub(crate) zk: Option<String>,
    pub(crate) zk_path: String,
    pub(crate) worker_id: Option<String>,
    pub(crate) location: Option<String>,
    pub(crate) shared_secret: Option<String>,
    pub(crate) shared_secret_file: Option<PathBuf>,
    pub(crate) credential_file: Option<PathBuf>,
    pub(crate) tls: bool,
    pub(crate) tls_ca_file: Option<PathBuf>,
    pub(crate) tls_cert_file: Option<PathBuf>,
    pub(crate) tls_key_file: Option<PathBuf>,
    pub(crate) groups: Vec<u32>,
    pub(crate) excluded_groups: Vec<u32>,
    pub(crate) max_thread_per_user_per_task_type_percent: u32,
    pub(crate) resource_limits: BTreeMap<String, u32>,
    pub(crate) max_threads: u32,
    pub(crate) builtin_executors: Option<Vec<String>>,
    pub(crate) shutdown_grace: HumanDuration,
    pub(crate) cancel_grace: HumanDuration,
    pub(crate) task_type_limits: Option<BTreeMap<String, u32>>,
    pub(crate) capacity: BTreeMap<String, toml::Value>,
    pub(crate) process: ProcessFile,
    pub(crate) connection: ConnectionFile,
    pub(crate) reports: ReportsFile,
    pub(crate) codepools: CodePoolsFile,
    pub(crate) executors: BTreeMap<String, ProcessExecutorConfig>,
}

impl Default for WorkerFile {
    fn default() -> Self {
        WorkerFile {
            broker: DEFAULT_WORKER_LISTEN.into(),
            zk: None,
            zk_path: crate::cli::DEFAULT_ZK_PATH.into(),
            worker_id: None,
            location: None,
            shared_secret: None,
            shared_secret_file: None,
            credential_file: None,
            tls: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            groups: vec![0],
            excluded_groups: Vec::new(),
            max_thread_per_user_per_task_type_percent: 0,
            resource_limits: BTreeMap::new(),
            max_threads: DEFAULT_MAX_THREADS,
            builtin_executors: None,
            shutdown_grace: HumanDuration(DEFAULT_SHUTDOWN_GRACE),
            cancel_grace: HumanDuration(majordodo_worker::DEFAULT_CANCEL_GRACE),
            task_type_limits: None,
            capacity: BTreeMap::new(),
            process: ProcessFile::default(),
            connection: ConnectionFile::default(),
            reports: ReportsFile::default(),
            codepools: CodePoolsFile::default(),
            executors: BTreeMap::new(),
        }
    }
}

/// `[process]`: how the `process` executors enforce the cpu and memory a task declares.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ProcessFile {
    /// A cgroup v2 directory to make each attempt's cgroup in; `None` detects.
    pub(crate) cgroup_root: Option<PathBuf>,
}

/// `[codepools]`: where code pools are unpacked and what they may hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct CodePoolsFile {
    pub(crate) dir: Option<PathBuf>,
    pub(crate) max_files: usize,
    pub(crate) max_unpacked_size: crate::config::ByteSize,
    pub(crate) download_timeout: HumanDuration,
}

impl Default for CodePoolsFile {
    fn default() -> Self {
        let d = majordodo_worker::CodePoolsConfig::default();
        CodePoolsFile {
            dir: None,
            max_files: d.limits.max_files,
            max_unpacked_size: crate::config::ByteSize(d.limits.max_unpacked_bytes),
            download_timeout: HumanDuration(d.download_timeout),
        }
    }
}

/// `[connection]`: talking to the broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ConnectionFile {
    pub(crate) keepalive_interval: HumanDuration,
    pub(crate) connect_timeout: HumanDuration,
    pub(crate) ack_timeout: HumanDuration,
    pub(crate) reconnect_initial: HumanDuration,
    pub(crate) reconnect_max: HumanDuration,
    pub(crate) max_refused_time: HumanDuration,
    pub(crate) max_frame_size: ByteSize,
}

impl Default for ConnectionFile {
    fn default() -> Self {
        ConnectionFile {
            keepalive_interval: HumanDuration(DEFAULT_KEEPALIVE_INTERVAL),
            connect_timeout: HumanDuration(DEFAULT_CONNECT_TIMEOUT),
            ack_timeout: HumanDuration(DEFAULT_ACK_TIMEOUT),
            reconnect_initial: HumanDuration(DEFAULT_RECONNECT_INITIAL),
            reconnect_max: HumanDuration(DEFAULT_RECONNECT_MAX),
            max_refused_time: HumanDuration(DEFAULT_MAX_REFUSED_TIME),
            max_frame_size: ByteSize(DEFAULT_MAX_FRAME_SIZE as u64),
        }
    }
}

/// `[reports]`: batching of finish reports.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ReportsFile {
    pub(crate) max_batch: usize,
    pub(crate) max_delay: HumanDuration,
}

impl Default for ReportsFile {
    fn default() -> Self {
        ReportsFile {
            max_batch: DEFAULT_MAX_REPORTS_PER_BATCH,
            max_delay: HumanDuration(DEFAULT_MAX_REPORT_DELAY),
        }
    }
}

/// Where the worker's broker and secret come from.
pub(crate) enum Target {
    /// `majordodo worker`: from the file (and flags).
    FromFile,
    /// `majordodo standalone`: the in-process broker's address and secret; the file's `broker`
    /// and secret keys are ignored, and `builtin_executors` defaults to every built-in.
    Standalone {
        /// The local broker's worker port.
        broker: String,
        /// The standalone's secret.
        secret: SharedSecret,
    },
}

/// One executor of a worker, for the start-up summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExecutorSummary {
    /// The task type.
    pub(crate) task_type: String,
    /// `builtin` or the program.
    pub(crate) runs: String,
}

/// Everything a worker agent needs, validated.
#[derive(Debug)]
pub(crate) struct WorkerSettings {
    /// The agent's settings.
    pub(crate) config: WorkerConfig,
    /// Executors by task type.
    pub(crate) executors: Executors,
    /// What runs each type, for printing.
    pub(crate) summary: Vec<ExecutorSummary>,
    /// The amounts detected from the machine rather than configured: (key, where from).
    pub(crate) detected: Vec<(String, String)>,
}

impl WorkerFile {
    /// Reads `path`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key and the file.
    pub(crate) fn load(path: &Path) -> Result<WorkerFile, ConfigError> {
        super::load_toml(path)
    }

    /// The TLS client configuration toward the broker: `tls = true` or any `tls_*` file turns it
    /// on; the broker is verified against `tls_ca_file`, else the system's roots.
    fn client_tls(
        &self,
        origin: &Origin,
    ) -> Result<Option<Arc<majordodo_tls::ClientConfig>>, ConfigError> {
        let on = self.tls
            || self.tls_ca_file.is_some()
            || self.tls_cert_file.is_some()
            || self.tls_key_file.is_some();
        if !on {
            return Ok(None);
        }
        let files = majordodo_tls::ClientTlsFiles {
            ca_file: self.tls_ca_file.as_deref().map(|p| resolve_path(origin, p)),
            cert_file: self
                .tls_cert_file
                .as_deref()
                .map(|p| resolve_path(origin, p)),
            key_file: self
                .tls_key_file
                .as_deref()
                .map(|p| resolve_path(origin, p)),
        };
        majordodo_tls::client_config(&files)
            .map(Some)
            .map_err(|error| {
                let key = match &error {
                    majordodo_tls::TlsError::Read { path, .. }
                    | majordodo_tls::TlsError::Pem { path, .. }
                        if files.ca_file.as_ref() == Some(path) =>
                    {
                        "tls_ca_file"
                    }
                    majordodo_tls::TlsError::Read { path, .. }
                    | majordodo_tls::TlsError::Pem { path, .. }
                        if files.key_file.as_ref() == Some(path) =>
                    {
                        "tls_key_file"
                    }
                    _ if files.ca_file.is_none() && files.cert_file.is_none() => "tls_ca_file",
                    _ => "tls_cert_file",
                };
                ConfigError::invalid(origin, key, error.to_string())
            })
    }

    /// Validates into settings.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first key that is wrong.
    pub(crate) fn validate(
        &self,
        origin: &Origin,
        target: Target,
    ) -> Result<WorkerSettings, ConfigError> {
        let invalid = |key: &str, problem: String| ConfigError::invalid(origin, key, problem);
        let target_builtins = match &target {
            Target::FromFile => None,
            Target::Standalone { .. } => Some(builtin::NAMES.map(str::to_owned).to_vec()),
        };
        let mut locator = None;
        let mut tls = None;
        let mut credential = None;
        let (broker, secret) = match target {
            Target::FromFile => {
                match &self.zk {
                    Some(zk) => {
                        let discovery =
                            ZkDiscovery::new(zk.clone(), &self.zk_path).map_err(|e| match e {
                                DiscoveryError::Invalid {
                                    setting: "base path",
                                    ..
                                } => invalid("zk_path", e.to_string()),
                                other => invalid("zk", other.to_string()),
                            })?;
                        let found: Arc<dyn BrokerLocator> = Arc::new(ZkBrokerLocator(discovery));
                        locator = Some(found);
                    }
                    None => check_listen(&self.broker).map_err(|p| invalid("broker", p))?,
                }
                let secret = match &self.credential_file {
                    Some(path) => {
                        if self.shared_secret.is_some() || self.shared_secret_file.is_some() {
                            return Err(invalid(
                                "credential_file",
                                "set either credential_file or shared_secret[_file], not both"
                                    .into(),
                            ));
                        }
                        let path = resolve_path(origin, path);
                        let c =
                            load_credential(&path).map_err(|e| invalid("credential_file", e))?;
                        if let Some(id) = &self.worker_id
                            && *id != c.worker_id
                        {
                            return Err(invalid(
                                "worker_id",
                                format!(
                                    "is {id:?}, but the credential file {} is for worker {:?} \
                                     (a credential connects only as its worker id)",
                                    path.display(),
                                    c.worker_id
                                ),
                            ));
                        }
                        credential = Some(c);
                        Vec::new()
                    }
                    None if self.shared_secret.is_none() && self.shared_secret_file.is_none() => {
                        return Err(invalid(
                            "credential_file",
                            "is required: this worker's credential file (majordodo \
                             worker-credentials add), or for a broker in legacy mode \
                             shared_secret_file"
                                .into(),
                        ));
                    }
                    None => SecretSource {
                        inline: self.shared_secret.clone(),
                        file: self.shared_secret_file.clone(),
                    }
                    .load(origin, "")?,
                };
                tls = self.client_tls(origin)?;
                (self.broker.clone(), SharedSecret::new(secret))
            }
            Target::Standalone { broker, secret } => (broker, secret),
        };
        let mut config = WorkerConfig::new(broker, secret);
        config.broker_locator = locator;
        config.tls = tls;
        if let Some(id) = &self.worker_id {
            if id.trim().is_empty() {
                return Err(invalid("worker_id", "must not be empty".into()));
            }
            config.worker_id = id.clone();
        }
        if let Some(c) = credential {
            config.worker_id = c.worker_id.clone();
            config.credential = Some(c);
        }
        if let Some(location) = &self.location {
            config.location = location.clone();
        }
        if self.max_thread_per_user_per_task_type_percent > 100 {
            return Err(invalid(
                "max_thread_per_user_per_task_type_percent",
                "must be from 0 to 100".into(),
            ));
        }
        if let Some(name) = self.resource_limits.keys().find(|k| k.is_empty()) {
            return Err(invalid(
                "resource_limits",
                format!("resource name {name:?} must not be empty"),
            ));
        }
        if self.max_threads == 0 {
            return Err(invalid("max_threads", "must be at least 1".into()));
        }
        if self.groups.is_empty() {
            return Err(invalid(
                "groups",
                "must list at least one group (0 stands for every group)".into(),
            ));
        }

        let (amounts, detected) = self.amounts(&invalid)?;
        let enforcement = match &self.process.cgroup_root {
            Some(root) if !root.is_absolute() => {
                return Err(invalid(
                    "process.cgroup_root",
                    format!("{} must be an absolute path", root.display()),
                ));
            }
            Some(root) => Arc::new(
                Enforcement::cgroup_v2(root).map_err(|p| invalid("process.cgroup_root", p))?,
            ),
            None => Enforcement::auto(),
        };

        let mut executors = Executors::new();
        let mut summary = Vec::new();
        let builtins: Vec<String> = match (&self.builtin_executors, &target_builtins) {
            (Some(list), _) => list.clone(),
            (None, Some(default)) => default.clone(),
            (None, None) => Vec::new(),
        };
        for name in &builtins {
            let Some(kind) = Builtin::parse(name) else {
                return Err(invalid(
                    "builtin_executors",
                    format!(
                        "unknown built-in executor {name:?}; available: {}",
                        builtin::NAMES.join(", ")
                    ),
                ));
            };
            executors.register(name.clone(), kind.executor());
            summary.push(ExecutorSummary {
                task_type: name.clone(),
                runs: format!("built-in ({})", kind.describe()),
            });
        }
        for (task_type, process) in &self.executors {
            let key = format!("executors.{task_type}");
            if task_type == ANY_TASK_TYPE {
                return Err(invalid(
                    &key,
                    format!("{ANY_TASK_TYPE:?} is reserved for the limit of every other type"),
                ));
            }
            if builtins.contains(task_type) {
                return Err(invalid(
                    &key,
                    format!("task type {task_type:?} also has a built-in executor"),
                ));
            }
            let executor = ProcessExecutor::new(process.clone())
                .map_err(|e| invalid(&key, e.0.to_owned()))?
                .with_enforcement(enforcement.clone());
            executors.register(task_type.clone(), std::sync::Arc::new(executor));
            summary.push(ExecutorSummary {
                task_type: task_type.clone(),
                runs: format!("process {:?}", process.argv),
            });
        }
        if summary.is_empty() {
            return Err(invalid(
                "executors",
                "no executor configured: add an [executors.<task type>] table or builtin_executors"
                    .into(),
            ));
        }
        let limits = match &self.task_type_limits {
            Some(limits) => {
                for (task_type, limit) in limits {
                    if *limit == 0 {
                        return Err(invalid(
                            &format!("task_type_limits.{task_type}"),
                            "must be at least 1 (leave the type out to refuse it)".into(),
                        ));
                    }
                }
                if limits.is_empty() {
                    return Err(invalid(
                        "task_type_limits",
                        "is empty: the worker would accept no task".into(),
                    ));
                }
                limits.clone()
            }
            // By default the worker takes exactly the types it can run.
            None => summary
                .iter()
                .map(|s| (s.task_type.clone(), self.max_threads))
                .collect(),
        };
        config.capacity = Capacity {
            max_threads: self.max_threads,
            max_threads_by_task_type: limits,
            groups: self.groups.clone(),
            excluded_groups: self.excluded_groups.clone(),
            max_thread_per_user_per_task_type_percent: self
                .max_thread_per_user_per_task_type_percent,
            resource_limits: self.resource_limits.clone(),
            amounts,
            enforcement: enforcement.describe(),
        };

        let c = &self.connection;
        config.keepalive_interval = c.keepalive_interval.0;
        config.connect_timeout = c.connect_timeout.0;
        config.max_refused_time = c.max_refused_time.0;
        config.ack_timeout = c.ack_timeout.0;
        config.reconnect_backoff = Backoff {
            initial: c.reconnect_initial.0,
            max: c.reconnect_max.0,
        };
        config.max_frame_size = usize::try_from(c.max_frame_size.0)
            .map_err(|_| invalid("connection.max_frame_size", "too large".into()))?;
        config.report_batching = ReportBatching {
            max_reports: self.reports.max_batch,
            max_delay: self.reports.max_delay.0,
        };
        config.shutdown_grace = self.shutdown_grace.0;
        let p = &self.codepools;
        if p.max_files == 0 || p.max_unpacked_size.0 == 0 || p.download_timeout.0.is_zero() {
            return Err(invalid(
                "codepools",
                "max_files, max_unpacked_size and download_timeout must be above 0".into(),
            ));
        }
        config.codepools = majordodo_worker::CodePoolsConfig {
            dir: p.dir.clone(),
            limits: majordodo_proto::archive::ArchiveLimits {
                max_files: p.max_files,
                max_unpacked_bytes: p.max_unpacked_size.0,
            },
            download_timeout: p.download_timeout.0,
        };
        config.cancel_grace = self.cancel_grace.0;
        config.validate().map_err(|problem| {
            let key = match problem.split_whitespace().next().unwrap_or("") {
                "keepalive_interval" => "connection.keepalive_interval",
                "report_batching.max_reports" => "reports.max_batch",
                "ack_timeout" => "connection.ack_timeout",
                "reconnect_backoff" => "connection.reconnect_initial",
                "max_frame_size" => "connection.max_frame_size",
                "worker_id" => "worker_id",
                "shared_secret" => "shared_secret",
                "broker_addr" => "broker",
                _ => "shared_secret",
            };
            invalid(key, problem)
        })?;
        Ok(WorkerSettings {
            config,
            executors,
            summary,
            detected,
        })
    }

    /// The `[capacity]` amounts, with `cpu` and `memory` detected when not configured, and
    /// which were detected (key, from what).
    fn amounts(
        &self,
        invalid: &impl Fn(&str, String) -> ConfigError,
    ) -> Result<AmountsAndOrigins, ConfigError> {
        let mut amounts = BTreeMap::new();
        for (name, value) in &self.capacity {
            let key = capacity_key(name);
            let toml::Value::Integer(number) = value else {
                return Err(invalid(
                    &key,
                    format!("must be a whole number, got {} {value}", value.type_str()),
                ));
            };
            let number =
                u64::try_from(*number).map_err(|_| invalid(&key, "must be positive".to_owned()))?;
            check_amount(name, number).map_err(|problem| invalid(&key, problem))?;
            amounts.insert(name.clone(), number);
        }
        let mut detected = Vec::new();
        if !amounts.contains_key(CPU_MILLIS) {
            let millis = detect_cpu_millis();
            amounts.insert(CPU_MILLIS.to_owned(), millis);
            detected.push((
                CPU_MILLIS.to_owned(),
                format!("{} usable cores × 1000", millis / 1000),
            ));
        }
        if !amounts.contains_key(MEMORY_MIB) {
            let Some((mib, source)) = detect_memory_mib() else {
                return Err(invalid(
                    "capacity.memory",
                    "cannot be detected (/proc/meminfo unreadable): set it".to_owned(),
                ));
            };
            amounts.insert(MEMORY_MIB.to_owned(), mib);
            detected.push((MEMORY_MIB.to_owned(), source));
        }
        Ok((amounts, detected))
    }
}

/// Amounts by key, and the keys detected with where from.
type AmountsAndOrigins = (BTreeMap<String, u64>, Vec<(String, String)>);

/// The key of `[capacity]`'s entry `name` as a user writes it: quoted unless a bare TOML key.
fn capacity_key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        format!("capacity.{name}")
    } else {
        format!("capacity.{name:?}")
    }
}

/// The default worker file, every key commented with its meaning and default.
pub(crate) fn default_file() -> String {
    let c = ConnectionFile::default();
    let r = ReportsFile::default();
    format!(
        r#"# Configuration of `majordodo worker`. Every key is optional unless marked REQUIRED; the
# values shown are the defaults. Durations are strings with units (ms, s, m, h, d: "1h30m");
# sizes are numbers of bytes or strings with units (B, KiB, MiB, GiB, KB, MB, GB).
# Relative paths are relative to the directory of this file.

# The broker's worker port (its [workers] listen address), as host:port. Ignored with `zk`.
broker = "{broker}"
# Find the broker through ZooKeeper instead: the leader published in <zk_path>/leader by a
# replicated cluster, read again before every connection attempt (host:port,... of the
# ensemble). Default: none, connect to `broker`.
# zk = "zk1:2181,zk2:2181,zk3:2181"
# Base path of the cluster's znodes in ZooKeeper, with `zk`.
zk_path = "{zk_path}"
# REQUIRED: this worker's credential file, written by `majordodo worker-credentials add
# <worker-id> --output FILE` (mode 0600); the worker connects as the credential's worker id.
credential_file = "worker.credential"
# Instead, for a broker in legacy mode (workers.auth = "credentials-or-shared-secret"): the
# secret shared with the broker (its workers.shared_secret_file), in a file readable only by the
# worker's user (mode 0600), or inline with `shared_secret = "..."`.
# shared_secret_file = "worker.secret"
# Connect to the broker with TLS, verifying its certificate (valid for the host of `broker`, or
# of the leader found in ZooKeeper) against the system's root certificates, or against
# tls_ca_file. Setting any tls_* file turns TLS on too.
tls = false
# PEM certificates of the CA(s) to trust for the broker instead of the system's.
# tls_ca_file = "ca.crt"
# A client certificate and its key, for a broker that requires them (workers.tls_client_ca_file):
# its subjectAltName must name this worker's worker_id as a DNS name.
# tls_cert_file = "worker.crt"
# tls_key_file = "worker.key"
# Stable name of this worker; the broker fails its running tasks if it stays away. Default: the
# host name.
# worker_id = "worker-1"
# Where the worker runs, shown to operators. Default: the host name.
# location = "rack-3"
# Groups served, highest priority first; 0 stands for every group not excluded.
groups = [0]
# Groups never served, even through 0.
excluded_groups = []
# Most tasks of one type one user may run here at once, in percent of that type's limit (at
# least 1 task); 0 = no per-user share.
max_thread_per_user_per_task_type_percent = 0
# Named resource -> most tasks using it that may run here at once (the broker's service levels
# say which resources the tasks of each user use), e.g. {{ "db:orders" = 2 }}.
resource_limits = {{}}
# Most tasks running at once, all types together.
max_threads = {max_threads}
# Executors built into the binary, for trying things out: "echo" (the result is the data),
# "noop" (empty result), "sleep" (sleeps for the duration in the data, e.g. "2s"), "fail" (fails
# with the data as the error). Default: none for `majordodo worker`, all four for the local
# worker of `majordodo standalone`.
# builtin_executors = ["echo", "noop", "sleep", "fail"]
# Time a graceful stop (SIGTERM, Ctrl-C) waits for running tasks before aborting them.
shutdown_grace = "{shutdown_grace}"
# Time a cancelled task's executor has to stop before the worker drops it (a process executor
# gets SIGTERM at once and SIGKILL after its cancel_grace_ms).
cancel_grace = "{cancel_grace}"

# Most tasks of one type running at once. The key "any" is one limit shared by every type without
# its own entry. A type that has no entry (and no "any") is not accepted. Default: every type
# that has an executor, each up to max_threads.
# [task_type_limits]
# render = 4
# any = 10

# What this worker has, per dimension: the broker places a task here only when each amount it
# declares fits what the running tasks leave. "cpu" is in millicores (1000 = one core) and
# "memory" in MiB; any other key is a named amount (e.g. "db:orders" = 10, storage-iops = 500).
# cpu and memory are detected when not set: usable cores x 1000, and MemTotal of /proc/meminfo
# lowered to this process's cgroup memory limit. Named amounts: none unless set.
[capacity]
# cpu = 4000
# memory = 8192
# "db:orders" = 10

# How `process` executors hold a task to the cpu and memory it declares (the task also gets
# MAJORDODO_CPU_MILLIS / MAJORDODO_MEMORY_MIB). With a writable cgroup v2 that has the cpu and
# memory controllers, each attempt runs in a cgroup of its own (memory.max, cpu.max), removed
# when it ends; otherwise memory limits the address space (RLIMIT_AS) and cpu is not limited.
# The worker logs which applies at start and reports it to the broker.
[process]
# A cgroup v2 directory (absolute) to make the attempts' cgroups in; the worker enables cpu and
# memory for its children. Default: the worker's own cgroup v2, when delegated (cpu and memory
# already enabled for its children and writable), else rlimits.
# cgroup_root = "/sys/fs/cgroup/majordodo.slice"

[connection]
# Ping interval (the broker may ask for a shorter one).
keepalive_interval = "{keepalive_interval}"
# Time to connect and complete the handshake.
connect_timeout = "{connect_timeout}"
# Time to wait for the broker to acknowledge a batch of reports before sending it again.
ack_timeout = "{ack_timeout}"
# First and largest delay between connection attempts (exponential, with jitter).
reconnect_initial = "{reconnect_initial}"
reconnect_max = "{reconnect_max}"
# Longest the worker keeps trying while the broker refuses it because another live process is
# connected with the same worker_id; then it stops with an error (exit status 1).
max_refused_time = "{max_refused_time}"
# Largest frame exchanged with the broker; must be the same as the broker's.
max_frame_size = "{max_frame_size}"

[reports]
# Most finish reports in one message to the broker.
max_batch = {max_batch}
# Longest a finished task's report waits for others before it is sent (it goes at once when
# no task is left running).
max_delay = "{max_delay}"

[codepools]
# Where code pools are unpacked (<dir>/<sha256 of the archive>), fetched from the broker on first
# use. Without it, tasks that name a code pool fail. A task with a pool runs with the pool's
# directory as working directory (MAJORDODO_CODEPOOL_DIR names it too).
# dir = "/var/lib/majordodo/codepools"
# Most entries of a pool's archive.
max_files = {cp_max_files}
# Most bytes a pool may unpack to.
max_unpacked_size = "{cp_max_unpacked}"
# Longest a pool's download may take.
download_timeout = "{cp_timeout}"

# One table per task type run as a program. The program gets the task's data on stdin and its
# stdout (without one trailing newline) becomes the result; exit status 0 finishes the task,
# anything else fails the attempt with the end of stderr as the error. No shell is involved:
# write ["sh", "-c", "..."] to use one. Environment: the worker's, plus `env`, plus
# MAJORDODO_TASK_ID, MAJORDODO_TASK_TYPE, MAJORDODO_USER_ID, MAJORDODO_ATTEMPT (and, for a task
# that declared them, MAJORDODO_CPU_MILLIS, MAJORDODO_MEMORY_MIB; see [process]).
# Every key but argv is shown with its default.
# [executors.render]
# argv = ["/usr/local/bin/render", "--fast"]  # REQUIRED in each table
# env = {{}}                  # variables added, e.g. {{ RENDER_CACHE = "/var/cache/render" }}
# working_dir: the worker's, unless set (working_dir = "/srv/render")
# timeout_ms = {timeout_ms}        # one hour, then the process group is killed
# max_stdout_bytes = {max_stdout}  # larger output fails the attempt
# stderr_tail_bytes = {stderr_tail}     # end of stderr quoted in error texts
# cancel_grace_ms = {cancel_grace_ms}       # from SIGTERM to SIGKILL of a cancelled task's group
# Exit status 75 with a number of milliseconds on stdout: retry the task after that delay
# without using an attempt.
"#,
        broker = DEFAULT_WORKER_LISTEN,
        zk_path = crate::cli::DEFAULT_ZK_PATH,
        max_threads = DEFAULT_MAX_THREADS,
        shutdown_grace = HumanDuration(DEFAULT_SHUTDOWN_GRACE),
        cancel_grace = HumanDuration(majordodo_worker::DEFAULT_CANCEL_GRACE),
        cancel_grace_ms = majordodo_worker::DEFAULT_CANCEL_GRACE_MS,
        keepalive_interval = c.keepalive_interval,
        connect_timeout = c.connect_timeout,
        ack_timeout = c.ack_timeout,
        reconnect_initial = c.reconnect_initial,
        reconnect_max = c.reconnect_max,
        max_refused_time = c.max_refused_time,
        max_frame_size = c.max_frame_size,
        max_batch = r.max_batch,
        max_delay = r.max_delay,
        cp_max_files = CodePoolsFile::default().max_files,
        cp_max_unpacked = CodePoolsFile::default().max_unpacked_size,
        cp_timeout = CodePoolsFile::default().download_timeout,
        timeout_ms = majordodo_worker::DEFAULT_TIMEOUT_MS,
        max_stdout = majordodo_worker::DEFAULT_MAX_STDOUT_BYTES,
        stderr_tail = majordodo_worker::DEFAULT_STDERR_TAIL_BYTES,
    )
}

/// Reads a credential file, warning when other users may read it.
fn load_credential(path: &Path) -> Result<majordodo_proto::worker::CredentialFile, String> {
    use std::os::unix::fs::PermissionsExt;
    let text = crate::config::read_small_file(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(file = %path.display(), "credential file is readable by other users; run chmod 600 on it");
    }
    majordodo_proto::worker::CredentialFile::parse(&text)
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_toml;

    fn validate(text: &str) -> Result<WorkerSettings, ConfigError> {
        let path = Path::new("/etc/majordodo/worker.toml");
        let file: WorkerFile = parse_toml(text, path)?;
        file.validate(&Origin::File(path.to_path_buf()), Target::FromFile)
    }

    #[test]
    fn the_default_file_documents_exactly_the_defaults() {
        // Goal: parsing the printed default file gives the built-in defaults.
        let mut parsed: WorkerFile = parse_toml(&default_file(), Path::new("w.toml")).unwrap();
        assert_eq!(parsed.credential_file, Some("worker.credential".into()));
        parsed.credential_file = None;
        assert_eq!(
            format!("{parsed:?}"),
            format!("{:?}", WorkerFile::default())
        );
    }

    #[test]
    fn by_default_a_worker_takes_exactly_the_types_it_can_run() {
        // Goal: without task_type_limits, each executor's type is accepted up to max_threads
        // and nothing else; process and built-in executors are both registered.
        let s = validate(
            r#"
shared_secret = "s"
max_threads = 8
builtin_executors = ["echo"]
[executors.cat]
argv = ["sh", "-c", "cat; echo"]
"#,
        )
        .unwrap();
        let limits = &s.config.capacity.max_threads_by_task_type;
        assert_eq!(
            limits,
            &BTreeMap::from([("cat".to_owned(), 8), ("echo".to_owned(), 8)])
        );
        assert!(s.executors.get("cat").is_some());
        assert!(s.executors.get("echo").is_some());
        assert!(s.executors.get("other").is_none());
    }

    #[test]
    fn explicit_limits_and_connection_settings_are_kept() {
        // Goal: task_type_limits replaces the default, and [connection]/[reports] reach the
        // agent's config.
        let s = validate(
            r#"
shared_secret = "s"
groups = [3, 0]
builtin_executors = ["noop"]
[task_type_limits]
any = 5
[connection]
keepalive_interval = "2s"
[reports]
max_batch = 7
max_delay = "5ms"
"#,
        )
        .unwrap();
        assert_eq!(
            s.config.capacity.max_threads_by_task_type,
            BTreeMap::from([("any".to_owned(), 5)])
        );
        assert_eq!(s.config.capacity.groups, vec![3, 0]);
        assert_eq!(
            s.config.keepalive_interval,
            std::time::Duration::from_secs(2)
        );
        assert_eq!(s.config.report_batching.max_reports, 7);
    }

    #[test]
    fn zk_makes_the_worker_follow_the_leader_instead_of_broker() {
        // Goal: with `zk`, the agent gets a ZooKeeper locator (under `zk_path`) and the broker
        // key is not used; without it, the fixed broker.
        let s = validate(
            "shared_secret = \"s\"\nbuiltin_executors = [\"echo\"]\nbroker = \"not checked\"\nzk = \"zk1:2181,zk2:2181\"\nzk_path = \"/cluster-a\"\n",
        )
        .unwrap();
        assert_eq!(
            s.config.broker_description(),
            "the leader in zookeeper zk1:2181,zk2:2181 /cluster-a/leader"
        );
        let s = validate("shared_secret = \"s\"\nbuiltin_executors = [\"echo\"]\n").unwrap();
        assert!(s.config.broker_locator.is_none());
        assert_eq!(s.config.broker_description(), DEFAULT_WORKER_LISTEN);
    }

    #[test]
    fn capacity_amounts_are_configured_or_detected() {
        // Goal: configured amounts are declared as given; cpu and memory not configured are
        // detected from the machine and said to be; named amounts are only the configured
        // ones; the enforcement statement is the process executors'.
        let s = validate(
            "shared_secret = \"s\"\nbuiltin_executors = [\"echo\"]\n[capacity]\ncpu = 4000\n\"db:orders\" = 10\n",
        )
        .unwrap();
        let amounts = &s.config.capacity.amounts;
        assert_eq!(amounts[CPU_MILLIS], 4000);
        assert_eq!(amounts["db:orders"], 10);
        assert_eq!(amounts[MEMORY_MIB], detect_memory_mib().unwrap().0);
        assert_eq!(amounts.len(), 3);
        assert_eq!(
            s.detected
                .iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>(),
            [MEMORY_MIB]
        );
        assert_eq!(
            s.config.capacity.enforcement,
            Enforcement::auto().describe()
        );

        let s = validate("shared_secret = \"s\"\nbuiltin_executors = [\"echo\"]\n").unwrap();
        assert_eq!(
            s.config.capacity.amounts,
            BTreeMap::from([
                (CPU_MILLIS.to_owned(), detect_cpu_millis()),
                (MEMORY_MIB.to_owned(), detect_memory_mib().unwrap().0),
            ])
        );
        assert_eq!(s.detected.len(), 2);
        let s = validate(
            "shared_secret = \"s\"\nbuiltin_executors = [\"echo\"]\n[capacity]\ncpu = 500\nmemory = 64\n",
        )
        .unwrap();
        assert!(s.detected.is_empty());
        assert_eq!(s.config.capacity.amounts[MEMORY_MIB], 64);
    }

    #[test]
    fn invalid_files_name_the_key_at_fault() {
        // Goal: each kind of mistake is reported against the key a user must change.
        let ok = "shared_secret = \"s\"\nbuiltin_executors = [\"echo\"]\n";
        let cases = [
            (format!("{ok}max_thread = 3"), "max_thread"),
            (format!("{ok}max_threads = \"3\""), "max_threads"),
            (format!("{ok}max_threads = 0"), "max_threads"),
            (
                "builtin_executors = [\"echo\"]".to_owned(),
                "credential_file",
            ),
            ("shared_secret = \"s\"".to_owned(), "executors"),
            (
                "shared_secret = \"s\"\nbuiltin_executors = [\"bash\"]".to_owned(),
                "builtin_executors",
            ),
            (
                format!("{ok}[connection]\nack_timeout = \"soon\""),
                "connection.ack_timeout",
            ),
            (format!("{ok}[executors.x]\nargv = []"), "executors.x"),
            (
                format!("{ok}[executors.x]\nargv = [\"a\"]\nshell = true"),
                "executors.x.shell",
            ),
            (
                format!("{ok}[task_type_limits]\necho = 0"),
                "task_type_limits.echo",
            ),
            (format!("{ok}broker = \"localhost\""), "broker"),
            (format!("{ok}zk = \"\""), "zk"),
            (
                format!("{ok}zk = \"h:2181\"\nzk_path = \"majordodo\""),
                "zk_path",
            ),
            (format!("{ok}[capacity]\ncpu = 0"), "capacity.cpu"),
            (format!("{ok}[capacity]\nmemory = -5"), "capacity.memory"),
            (format!("{ok}[capacity]\ncpu = 1.5"), "capacity.cpu"),
            (format!("{ok}[capacity]\ncpu = \"4000\""), "capacity.cpu"),
            (
                format!("{ok}[capacity]\nmemory = 99999999999999"),
                "capacity.memory",
            ),
            (
                format!("{ok}[capacity]\n\"db:orders\" = 0"),
                "capacity.\"db:orders\"",
            ),
            (
                format!("{ok}[capacity]\nstorage-iops = 2000000000000"),
                "capacity.storage-iops",
            ),
            (
                format!("{ok}[process]\ncgroup_root = \"relative\""),
                "process.cgroup_root",
            ),
            (
                format!("{ok}[process]\ncgroup_root = \"/nonexistent-cgroup\""),
                "process.cgroup_root",
            ),
            (format!("{ok}[process]\ncgroup = 1"), "process.cgroup"),
        ];
        for (text, key) in cases {
            let error = validate(&text).unwrap_err().to_string();
            assert!(error.contains(&format!("`{key}`")), "{key}: {error}");
        }
    }

    #[test]
    fn a_credential_file_names_the_worker_and_conflicts_are_refused() {
        // Goal: the worker id comes from the credential file; a different worker_id, or a
        // shared secret as well, is refused naming the key; a bad file names credential_file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w2.credential");
        let file = majordodo_proto::worker::CredentialFile {
            credential_id: "wc-1".into(),
            worker_id: "w2".into(),
            secret: [7; 32],
        };
        std::fs::write(&path, file.to_text()).unwrap();
        let base = format!(
            "credential_file = \"{}\"\nbuiltin_executors = [\"echo\"]\n",
            path.display()
        );
        let s = validate(&base).unwrap();
        assert_eq!(s.config.worker_id, "w2");
        assert_eq!(s.config.credential.as_ref(), Some(&file));
        assert!(validate(&format!("{base}worker_id = \"w2\"\n")).is_ok());
        let cases = [
            (format!("{base}worker_id = \"w1\"\n"), "worker_id"),
            (format!("{base}shared_secret = \"s\"\n"), "credential_file"),
            (
                "credential_file = \"/nonexistent.credential\"\nbuiltin_executors = [\"echo\"]\n"
                    .to_owned(),
                "credential_file",
            ),
        ];
        for (text, key) in cases {
            let error = validate(&text).unwrap_err().to_string();
            assert!(error.contains(&format!("`{key}`")), "{key}: {error}");
        }
        std::fs::write(&path, "not a credential").unwrap();
        let error = validate(&base).unwrap_err().to_string();
        assert!(error.contains("not a worker credential file"), "{error}");
    }
}
