//! The worker agent's settings, with their defaults and the checks that tie them together.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use majordodo_proto::worker::{
    ANY_TASK_TYPE, CPU_MILLIS, Capacity, DEFAULT_MAX_FRAME_SIZE, MEMORY_MIB, SharedSecret,
};
use rand::Rng;

use crate::limits::{Enforcement, check_amount, detect_cpu_millis, detect_memory_mib};
use crate::locator::BrokerLocator;

/// Default ping interval; the broker's `Welcome` can only shorten it. The original system
/// pinged every 10 s.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Default most reports in one `Finished` frame: large enough that a busy worker sends few
/// frames, small enough that one batch is quick for the broker to make durable.
pub const DEFAULT_MAX_REPORTS_PER_BATCH: usize = 100;

/// Default longest a finished task's report waits for companions before it is sent. Every
/// report pays this latency when the worker is quiet, so it stays small; under load batches
/// fill before it expires.
pub const DEFAULT_MAX_REPORT_DELAY: Duration = Duration::from_millis(10);

/// Default time to wait for a `FinishedAck` before sending the batch again. The broker acks
/// once the reports are durable, which takes milliseconds; 30 s covers a leader change.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Default first reconnect delay.
pub const DEFAULT_RECONNECT_INITIAL: Duration = Duration::from_millis(100);

/// Default longest reconnect delay: a broker that comes back is found within 10 s, and a
/// thousand workers retrying cost the broker at most a hundred connections per second.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(10);

/// Default time to connect and complete the handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default longest the worker keeps reconnecting while the broker refuses it for a reason that
/// may pass: another live connection holds its worker id. A broker closes a connection that
/// stays silent for its idle time (30 s by default), so a worker replacing a crashed process of
/// its own gets in well within a minute; refused for longer, another live process uses the id.
pub const DEFAULT_MAX_REFUSED_TIME: Duration = Duration::from_secs(60);

/// Default time a graceful shutdown waits for running tasks before aborting them.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Default time a cancelled attempt's executor has to stop once told to, before the worker
/// drops it: 10 s lets a program clean up after SIGTERM, and bounds how long a cancelled
/// attempt holds its capacity.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(10);

/// Default most tasks at once, as the original standalone worker's `worker.maxthreads`.
pub const DEFAULT_MAX_THREADS: u32 = 100;

/// Growth factor of the reconnect delay.
const BACKOFF_FACTOR: u32 = 2;

/// How finish reports are grouped into `Finished` frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportBatching {
    /// Most reports in one frame; a full batch is sent at once.
    pub max_reports: usize,
    /// Longest the oldest unsent report waits before its batch is sent. Once no task runs, the
    /// batch goes at once: nothing else could join it.
    pub max_delay: Duration,
}

/// Reconnect delays: exponential from `initial` to `max`, each drawn uniformly from the upper
/// half of its step so that workers that lost the broker together do not return together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    /// Delay step after the first failure.
    pub initial: Duration,
    /// Largest delay step.
    pub max: Duration,
}

impl Backoff {
    /// The delay before attempt `failures + 1`, given `failures` consecutive failures (at
    /// least 1), jittered with `rng`.
    pub fn delay(&self, failures: u32, rng: &mut impl Rng) -> Duration {
        let exponent = failures.saturating_sub(1).min(31);
        let step = self
            .initial
            .saturating_mul(BACKOFF_FACTOR.saturating_pow(exponent))
            .min(self.max);
        let half = step / 2;
        half + half.mul_f64(rng.random::<f64>())
    }
}

/// Everything the worker agent needs to know.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The broker's worker port, as `host:port`; resolved again at every connection attempt.
    /// Used when `broker_locator` is `None`.
    pub broker_addr: String,
    /// Names the broker before every connection attempt (for example the leader published in
    /// ZooKeeper); `None` connects to `broker_addr`.
    pub broker_locator: Option<Arc<dyn BrokerLocator>>,
    /// Stable name of this worker; defaults to the host name.
    pub worker_id: String,
    /// This run of the process: the pid and a random suffix, so a restart is always told apart.
    pub process_id: String,
    /// Where the worker runs, for operators; defaults to the host name.
    pub location: String,
    /// The secret shared with the brokers (legacy mode); must not be empty unless
    /// `credential` is set, which then takes its place.
    pub shared_secret: SharedSecret,
    /// This worker's own credential (the file `majordodo worker-credentials add` wrote); its
    /// worker id must be `worker_id`. Preferred over the shared secret.
    pub credential: Option<majordodo_proto::worker::CredentialFile>,
    /// TLS toward the broker: how its certificate is verified and the client certificate
    /// presented; `None` connects with plain TCP.
    pub tls: Option<Arc<majordodo_tls::ClientConfig>>,
    /// What this worker accepts to run; assignments beyond it are refused.
    pub capacity: Capacity,
    /// Ping interval (the shorter of this and the broker's wins).
    pub keepalive_interval: Duration,
    /// Grouping of finish reports.
    pub report_batching: ReportBatching,
    /// Time to wait for a batch's acknowledgement before sending it again.
    pub ack_timeout: Duration,
    /// Delays between connection attempts.
    pub reconnect_backoff: Backoff,
    /// Time to connect and complete the handshake.
    pub connect_timeout: Duration,
    /// Longest the worker keeps trying while the broker refuses it for a reason that may pass
    /// (its worker id held by another live connection); then [`crate::WorkerError::StillRefused`].
    /// Zero gives up at the first refusal.
    pub max_refused_time: Duration,
    /// Largest frame body read or written; must match the broker's.
    pub max_frame_size: usize,
    /// Time a graceful shutdown waits for running tasks before aborting them.
    pub shutdown_grace: Duration,
    /// Time a cancelled attempt's executor has to stop (see [`crate::CancelSignal`]) before
    /// the worker drops its future (which kills a `process` executor's group at once).
    pub cancel_grace: Duration,
    /// Seed of the jitter of reconnect delays; `None` seeds from the OS (tests set it).
    pub rng_seed: Option<u64>,
    /// Code pools: where they are unpacked, their limits, the download timeout.
    pub codepools: crate::codepools::CodePoolsConfig,
}

impl WorkerConfig {
    /// A config with this module's defaults: the host name as worker id and location, a fresh
    /// process id, and a capacity of [`DEFAULT_MAX_THREADS`] tasks of any type in any group,
    /// with this machine's cpu and memory as amounts ([`detected_amounts`]) and the
    /// [`Enforcement::auto`] statement.
    pub fn new(broker_addr: impl Into<String>, shared_secret: SharedSecret) -> Self {
        let host = hostname();
        WorkerConfig {
            broker_addr: broker_addr.into(),
            broker_locator: None,
            worker_id: host.clone(),
            process_id: new_process_id(),
            location: host,
            shared_secret,
            credential: None,
            tls: None,
            capacity: Capacity {
                max_threads: DEFAULT_MAX_THREADS,
                max_threads_by_task_type: BTreeMap::from([(
                    ANY_TASK_TYPE.to_owned(),
                    DEFAULT_MAX_THREADS,
                )]),
                groups: vec![0],
                excluded_groups: vec![],
                amounts: detected_amounts(),
                enforcement: Enforcement::auto().describe(),
                ..Default::default()
            },
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            report_batching: ReportBatching {
                max_reports: DEFAULT_MAX_REPORTS_PER_BATCH,
                max_delay: DEFAULT_MAX_REPORT_DELAY,
            },
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            reconnect_backoff: Backoff {
                initial: DEFAULT_RECONNECT_INITIAL,
                max: DEFAULT_RECONNECT_MAX,
            },
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_refused_time: DEFAULT_MAX_REFUSED_TIME,
            cancel_grace: DEFAULT_CANCEL_GRACE,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            rng_seed: None,
            codepools: crate::codepools::CodePoolsConfig::default(),
        }
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// A message naming the first setting that is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let problem = if self.broker_addr.is_empty() && self.broker_locator.is_none() {
            "broker_addr must not be empty"
        } else if self.worker_id.is_empty() {
            "worker_id must not be empty"
        } else if self.credential.is_none() && self.shared_secret.is_empty() {
            "shared_secret must not be empty (or give a credential)"
        } else if self
            .credential
            .as_ref()
            .is_some_and(|c| c.worker_id != self.worker_id)
        {
            "worker_id must be the worker id of the credential"
        } else if self.keepalive_interval.is_zero() {
            "keepalive_interval must be positive"
        } else if self.report_batching.max_reports == 0 {
            "report_batching.max_reports must be at least 1"
        } else if self.ack_timeout.is_zero() || self.connect_timeout.is_zero() {
            "ack_timeout and connect_timeout must be positive"
        } else if self.reconnect_backoff.initial.is_zero()
            || self.reconnect_backoff.max < self.reconnect_backoff.initial
        {
            "reconnect_backoff needs 0 < initial <= max"
        } else if self.max_frame_size < MIN_MAX_FRAME_SIZE
            || self.max_frame_size > u32::MAX as usize
        {
            "max_frame_size must be between MIN_MAX_FRAME_SIZE and u32::MAX"
        } else if let Some(problem) = self.capacity.amounts.iter().find_map(|(key, value)| {
            check_amount(key, *value)
                .err()
                .map(|problem| format!("capacity.amounts {key:?}: {problem}"))
        }) {
            return Err(problem);
        } else {
            return Ok(());
        };
        Err(problem.to_owned())
    }
}

impl WorkerConfig {
    /// Where the broker is found, for operators: the locator's description, or `broker_addr`.
    pub fn broker_description(&self) -> String {
        match &self.broker_locator {
            Some(locator) => locator.describe(),
            None => self.broker_addr.clone(),
        }
    }
}

/// This machine's `cpu` (millicores) and `memory` (MiB), as [`detect_cpu_millis`] and
/// [`detect_memory_mib`] find them (memory left out if /proc/meminfo cannot be read).
pub fn detected_amounts() -> BTreeMap<String, u64> {
    let mut amounts = BTreeMap::from([(CPU_MILLIS.to_owned(), detect_cpu_millis())]);
    if let Some((mib, _)) = detect_memory_mib() {
        amounts.insert(MEMORY_MIB.to_owned(), mib);
    }
    amounts
}

/// Smallest accepted `max_frame_size`: the handshake frames must fit.
pub const MIN_MAX_FRAME_SIZE: usize = 4096;

/// The host name, from the kernel; `localhost` if it cannot be read.
pub fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_owned())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// A process id: the operating system's pid and 32 random bits, so two runs never share one
/// even when pids are reused (for example in containers, where the worker is often pid 1).
pub fn new_process_id() -> String {
    format!("{}-{:08x}", std::process::id(), rand::rng().random::<u32>())
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn backoff_grows_to_its_bound_within_jitter() {
        // Goal: each delay lies in the upper half of its exponential step, capped at max.
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        let mut rng = StdRng::seed_from_u64(7);
        for failures in 1..40 {
            let step = Duration::from_millis(100 * 2u64.pow((failures - 1).min(10)))
                .min(Duration::from_secs(2));
            let delay = backoff.delay(failures, &mut rng);
            assert!(delay >= step / 2 && delay <= step, "{failures}: {delay:?}");
        }
    }

    #[test]
    fn backoff_jitter_spreads_workers() {
        // Goal: two draws for the same step differ, so workers do not reconnect in lockstep.
        let backoff = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(1),
        };
        let mut rng = StdRng::seed_from_u64(1);
        let draws: Vec<_> = (0..8).map(|_| backoff.delay(3, &mut rng)).collect();
        assert!(draws.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn defaults_are_valid_and_process_ids_are_unique() {
        // Goal: the defaults pass validation and each new process id is fresh.
        let config = WorkerConfig::new("127.0.0.1:7363", SharedSecret::new("s"));
        assert_eq!(config.validate(), Ok(()));
        assert!(!config.worker_id.is_empty());
        assert_ne!(new_process_id(), new_process_id());
        let mut bad = config.clone();
        bad.shared_secret = SharedSecret::new("");
        assert!(bad.validate().is_err());
    }

    #[test]
    fn defaults_declare_this_machine_and_amounts_are_checked() {
        // Goal: the default capacity has the detected cpu and memory and the enforcement
        // statement; a zero or absurd amount fails validation naming it.
        let config = WorkerConfig::new("127.0.0.1:7363", SharedSecret::new("s"));
        assert_eq!(config.capacity.amounts, detected_amounts());
        assert_eq!(
            config.capacity.amounts[CPU_MILLIS],
            crate::detect_cpu_millis()
        );
        assert!(config.capacity.amounts[MEMORY_MIB] > 0);
        assert_eq!(config.capacity.enforcement, Enforcement::auto().describe());
        let mut bad = config.clone();
        bad.capacity.amounts.insert("db:orders".into(), 0);
        assert_eq!(
            bad.validate().unwrap_err(),
            "capacity.amounts \"db:orders\": must be positive"
        );
        bad.capacity.amounts.insert("db:orders".into(), 1);
        bad.capacity
            .amounts
            .insert(CPU_MILLIS.into(), crate::MAX_CPU_MILLIS + 1);
        assert!(bad.validate().unwrap_err().contains("\"cpu\""));
    }

    #[test]
    fn a_locator_stands_in_for_the_broker_address() {
        // Goal: without a locator the address is required; with one it may be empty, and the
        // description names the locator.
        let mut config = WorkerConfig::new("", SharedSecret::new("s"));
        assert!(config.validate().unwrap_err().contains("broker_addr"));
        config.broker_locator = Some(Arc::new(crate::StaticBroker("b:7363".into())));
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.broker_description(), "b:7363");
    }
}
