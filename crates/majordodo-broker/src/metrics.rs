//! The broker's metrics, served at `/metrics` in the Prometheus text format (0.0.4).
//!
//! Two sources, so that nothing is added to the hot path but a few relaxed atomic increments:
//! - [`BrokerMetrics`]: counters and histograms the dispatcher bumps as it applies durable
//!   rounds on the leader (submits, assignments, ends of attempts, queue and run times, append
//!   latency and batch size). Every one is an [`AtomicU64`]; nothing locks or allocates.
//! - [`Sample`]: what is read from the state the broker already keeps, once per scrape, by a
//!   read that runs between two rounds like any view (tasks by status, user and type, workers
//!   and their free slots, the log position, the replication lag).
//!
//! [`encode`] renders both with the `prometheus-client` crate. Users and task types are
//! labels, so their number is bounded: the `top_n` with the most tasks are named, the rest are
//! summed under `other` (a user or type really named `other` is counted there too).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use majordodo_core::TaskStatus;
use majordodo_log::{CommitLog, SyncStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::handle::{Role, View};

/// The label value under which users and task types beyond the top N are summed.
pub const OTHER: &str = "other";

/// Content type of the Prometheus text format the endpoint answers.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bounds (seconds) of the queue-time and run-time histograms: from a millisecond to a day.
const TASK_SECONDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0,
    86400.0,
];

/// Bounds (seconds) of the append-latency and fsync histograms: from 100 µs to 10 s.
const APPEND_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// Bounds (entries) of the batch-size histogram, up to the dispatcher's round sizes.
const BATCH_ENTRIES: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];

/// A histogram of fixed buckets made of atomics: [`Histogram::observe`] is three relaxed
/// increments and never locks. Values are recorded as integers of `unit` (a millisecond, a
/// microsecond, one entry), so the sum is exact.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds of the buckets, in the exposed unit (seconds, entries), increasing.
    bounds: &'static [f64],
    /// One exposed unit per recorded integer times this (1e-3 for milliseconds).
    unit: f64,
    /// Observations per bucket (not cumulative); the last one is above every bound.
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    /// Sum of the recorded integers.
    sum: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64], unit: f64) -> Histogram {
        Histogram {
            bounds,
            unit,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    /// Records `raw` units (milliseconds, microseconds or entries, by histogram).
    pub fn observe(&self, raw: u64) {
        let value = raw as f64 * self.unit;
        let i = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(raw, Ordering::Relaxed);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// (sum, count, observations per bucket) as the encoder takes them: it writes each
    /// bucket as the count of every observation at or below its bound.
    fn read(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut count = 0;
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Ordering::Relaxed);
            count += n;
            let bound = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, n));
        }
        let sum = self.sum.load(Ordering::Relaxed) as f64 * self.unit;
        (sum, count, buckets)
    }
}

/// How an attempt that was running ended, as the `outcome` label of
/// `majordodo_task_attempts_ended_total`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The task finished.
    Finished,
    /// The task failed for good.
    Error,
    /// The attempt failed and the task waits for another one.
    Retried,
    /// The worker asked to run it later; it is delayed.
    Deferred,
}

impl Ended {
    const ALL: [Ended; 4] = [
        Ended::Finished,
        Ended::Error,
        Ended::Retried,
        Ended::Deferred,
    ];

    fn label(self) -> &'static str {
        match self {
            Ended::Finished => "finished",
            Ended::Error => "error",
            Ended::Retried => "retried",
            Ended::Deferred => "deferred",
        }
    }

    /// The end of a running attempt whose task moves to `status`.
    pub(crate) fn of(status: TaskStatus) -> Option<Ended> {
        match status {
            TaskStatus::Finished => Some(Ended::Finished),
            TaskStatus::Error => Some(Ended::Error),
            TaskStatus::Waiting => Some(Ended::Retried),
            TaskStatus::Delayed => Some(Ended::Deferred),
            TaskStatus::Running => None,
        }
    }
}

/// The counters and histograms the dispatcher keeps while it leads (one per broker, shared
/// with the HTTP API). They count what this process decided since it started, as Prometheus
/// counters do; a scrape of another broker counts its own.
pub struct BrokerMetrics {
    /// Tasks added (durable `AddTask` entries).
    submitted: AtomicU64,
    /// Assignments (durable `AssignTask` entries).
    assigned: AtomicU64,
    /// Running attempts that ended, by [`Ended`].
    ended: [AtomicU64; 4],
    /// From submission (or the requested start time) to the first assignment.
    pub(crate) queue_time: Histogram,
    /// From assignment to the end of the attempt, for attempts this broker assigned.
    pub(crate) run_time: Histogram,
    /// From handing a round to the log to its being durable.
    pub(crate) append_latency: Histogram,
    /// Entries per round written.
    pub(crate) append_batch: Histogram,
    /// The log the leader writes, for its fsync counters; set when leading starts.
    log: Mutex<Option<Arc<dyn CommitLog>>>,
}

impl Default for BrokerMetrics {
    fn default() -> Self {
        BrokerMetrics {
            submitted: AtomicU64::new(0),
            assigned: AtomicU64::new(0),
            ended: Default::default(),
            queue_time: Histogram::new(TASK_SECONDS, 1e-3),
            run_time: Histogram::new(TASK_SECONDS, 1e-3),
            append_latency: Histogram::new(APPEND_SECONDS, 1e-6),
            append_batch: Histogram::new(BATCH_ENTRIES, 1.0),
            log: Mutex::new(None),
        }
    }
}

impl std::fmt::Debug for BrokerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerMetrics")
            .field("submitted", &self.submitted)
            .field("assigned", &self.assigned)
            .finish_non_exhaustive()
    }
}

impl BrokerMetrics {
    pub(crate) fn task_submitted(&self) {
        self.submitted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn task_assigned(&self) {
        self.assigned.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn attempt_ended(&self, how: Ended) {
        self.ended[how as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Records the log now written (at the start of leading, not per append).
    pub(crate) fn set_log(&self, log: Option<Arc<dyn CommitLog>>) {
        if let Ok(mut slot) = self.log.lock() {
            *slot = log;
        }
    }

    fn sync_stats(&self) -> Option<SyncStats> {
        self.log.lock().ok()?.as_ref()?.sync_stats()
    }
}

/// A named count with `other` for the rest.
pub(crate) type Ranked = Vec<(String, u64)>;

/// What one scrape reads from the state (inside the dispatcher, bounded work).
#[derive(Debug, Default)]
pub struct Sample {
    /// Tasks by status, exact.
    by_status: Vec<(&'static str, u64)>,
    /// Tasks by owner: the top N, then `other`.
    by_user: Ranked,
    /// Tasks by type: the top N, then `other`.
    by_type: Ranked,
    /// Tasks examined for `by_user` and `by_type`.
    scanned: u64,
    /// Whether the scan stopped at its budget (the two families then count part of the tasks).
    truncated: bool,
    /// Workers by status.
    workers: Vec<(&'static str, u64)>,
    /// Task slots declared by connected workers, and those not taken.
    slots: u64,
    free_slots: u64,
    /// Last applied log position.
    lsn: u64,
    /// Ledger being written or tailed.
    ledger: Option<i64>,
    /// Entries behind the leader (0 on the leader); `None` outside a cluster or when unknown.
    lag: Option<u64>,
}

/// Entries this follower is behind the leader's published position; 0 on the leader; `None`
/// outside a cluster or while the leader or its position is unknown.
pub(crate) fn replication_lag(v: &View<'_>) -> Option<u64> {
    let cluster = v.cluster?;
    if v.role == Role::Leader {
        return Some(0);
    }
    let leader = cluster.leader_id.as_deref()?;
    let (_, _, applied) = cluster.brokers.iter().find(|(id, _, _)| id == leader)?;
    Some(applied.as_ref()?.saturating_sub(v.state.last_lsn()))
}

/// The `top_n` keys with the highest counts (ties by name), then `other` with the rest.
fn rank(counts: HashMap<&str, u64>, top_n: usize) -> Ranked {
    let mut rest = counts.get(OTHER).copied().unwrap_or(0);
    let mut named: Vec<(&str, u64)> = counts.into_iter().filter(|(k, _)| *k != OTHER).collect();
    named.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut ranked: Ranked = Vec::with_capacity(top_n.min(named.len()) + 1);
    for (i, (k, n)) in named.into_iter().enumerate() {
        if i < top_n {
            ranked.push((k.to_owned(), n));
        } else {
            rest += n;
        }
    }
    ranked.push((OTHER.to_owned(), rest));
    ranked
}

impl Sample {
    /// Reads the sample from a view: every count but `by_user`/`by_type` is kept by the state;
    /// those two examine at most `scan_budget` tasks.
    pub(crate) fn take(v: &View<'_>, top_n: usize, scan_budget: usize) -> Sample {
        let state = v.state;
        let by_status = TaskStatus::ALL
            .iter()
            .map(|s| (s.as_str(), state.count(*s)))
            .collect();
        let mut users: HashMap<&str, u64> = HashMap::new();
        let mut types: HashMap<&str, u64> = HashMap::new();
        let mut scanned = 0u64;
        let mut truncated = false;
        for t in state.tasks() {
            if scanned as usize >= scan_budget {
                truncated = true;
                break;
            }
            scanned += 1;
            *users.entry(&t.user_id).or_default() += 1;
            *types.entry(&t.task_type).or_default() += 1;
        }
        let mut workers: Vec<(&'static str, u64)> = Vec::new();
        let (mut slots, mut free_slots) = (0u64, 0u64);
        for w in state.workers() {
            let status = w.status.as_str();
            match workers.iter_mut().find(|(s, _)| *s == status) {
                Some((_, n)) => *n += 1,
                None => workers.push((status, 1)),
            }
            if let Some(capacity) = v.leader_core.and_then(|l| l.worker_capacity(&w.id)) {
                let max = u64::from(capacity.max_threads);
                let running = state.running_on(&w.id).map_or(0, |r| r.len() as u64);
                slots += max;
                free_slots += max.saturating_sub(running);
            }
        }
        Sample {
            by_status,
            by_user: rank(users, top_n),
            by_type: rank(types, top_n),
            scanned,
            truncated,
            workers,
            slots,
            free_slots,
            lsn: state.last_lsn(),
            ledger: v.cluster.and_then(|c| c.current_ledger),
            lag: replication_lag(v),
        }
    }
}

/// Everything one scrape exposes.
#[derive(Debug)]
pub(crate) struct Exposition {
    /// The broker's role (`None`: the broker is gone).
    pub(crate) role: Option<Role>,
    /// From the state; `None` while the broker recovers.
    pub(crate) sample: Option<Sample>,
    pub(crate) metrics: Arc<BrokerMetrics>,
    pub(crate) auth: crate::http::AuthCounters,
    /// Seconds since the newest snapshot file was written.
    pub(crate) snapshot_age: Option<f64>,
}

/// Writes one metric of a single value.
fn single<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric: M,
) -> Result<(), std::fmt::Error> {
    let e = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(e)
}

/// Writes one gauge per label value.
fn gauges<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut e = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (value, n) in values {
        let labels = [(label, value)];
        ConstGauge::new(n as i64).encode(e.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes a histogram.
fn histogram(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    h: &Histogram,
) -> Result<(), std::fmt::Error> {
    let (sum, count, buckets) = h.read();
    let mut e = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    e.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        let roles = [Role::Recovering, Role::Leader, Role::Follower, Role::Closed];
        gauges(
            e,
            "majordodo_broker_role",
            "The broker's role: 1 for the current one",
            "role",
            roles
                .iter()
                .map(|r| (role_label(*r), u64::from(self.role == Some(*r)))),
        )?;
        let m = &self.metrics;
        single(
            e,
            "majordodo_tasks_submitted",
            "Tasks added by this broker as leader",
            ConstCounter::new(m.submitted.load(Ordering::Relaxed)),
        )?;
        single(
            e,
            "majordodo_task_assignments",
            "Task attempts assigned to workers by this broker as leader",
            ConstCounter::new(m.assigned.load(Ordering::Relaxed)),
        )?;
        {
            let mut family = e.encode_descriptor(
                "majordodo_task_attempts_ended",
                "Running attempts that ended, by outcome (finished, error, retried, deferred)",
                None,
                MetricType::Counter,
            )?;
            for how in Ended::ALL {
                let labels = [("outcome", how.label())];
                ConstCounter::new(m.ended[how as usize].load(Ordering::Relaxed))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        histogram(
            e,
            "majordodo_task_queue_seconds",
            "From submission (or the requested start time) to the first assignment",
            &m.queue_time,
        )?;
        histogram(
            e,
            "majordodo_task_run_seconds",
            "From assignment to the end of the attempt",
            &m.run_time,
        )?;
        histogram(
            e,
            "majordodo_log_append_seconds",
            "From handing a round of entries to the commit log to its being durable",
            &m.append_latency,
        )?;
        histogram(
            e,
            "majordodo_log_append_batch_entries",
            "Log entries per round written",
            &m.append_batch,
        )?;
        if let Some(sync) = m.sync_stats() {
            single(
                e,
                "majordodo_log_fsyncs",
                "Data syncs (fdatasync) of the commit log",
                ConstCounter::new(sync.syncs),
            )?;
            single(
                e,
                "majordodo_log_fsync_seconds",
                "Time spent in data syncs of the commit log",
                ConstCounter::new(sync.sync_nanos as f64 / 1e9),
            )?;
        }
        {
            let a = &self.auth;
            let mut family = e.encode_descriptor(
                "majordodo_http_auth_failures",
                "Refused HTTP logins, by reason",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in [
                ("bad_password", a.failed_logins),
                ("bad_token", a.bad_tokens),
                ("missing_credentials", a.missing_credentials),
                ("locked_out", a.refused_while_locked),
                ("queue_full", a.refused_queue_full),
            ] {
                let labels = [("reason", reason)];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        single(
            e,
            "majordodo_http_auth_lockouts",
            "Lock-outs of an address or a user after repeated failed logins",
            ConstCounter::new(self.auth.lockouts),
        )?;
        if let Some(age) = self.snapshot_age {
            single(
                e,
                "majordodo_snapshot_age_seconds",
                "Seconds since the newest local snapshot was written",
                ConstGauge::new(age),
            )?;
        }
        let Some(s) = &self.sample else {
            return Ok(());
        };
        gauges(
            e,
            "majordodo_tasks",
            "Tasks in the broker's state, by status",
            "status",
            s.by_status.iter().map(|(k, n)| (*k, *n)),
        )?;
        gauges(
            e,
            "majordodo_tasks_by_user",
            "Tasks in the state by owner: the users with the most, then other",
            "user",
            s.by_user.iter().map(|(k, n)| (k.as_str(), *n)),
        )?;
        gauges(
            e,
            "majordodo_tasks_by_type",
            "Tasks in the state by type: the types with the most, then other",
            "tasktype",
            s.by_type.iter().map(|(k, n)| (k.as_str(), *n)),
        )?;
        single(
            e,
            "majordodo_tasks_scanned",
            "Tasks examined for the by-user and by-type counts (http.scan_budget at most)",
            ConstGauge::new(s.scanned as i64),
        )?;
        single(
            e,
            "majordodo_tasks_scan_truncated",
            "1 when the by-user and by-type counts stopped at http.scan_budget",
            ConstGauge::new(i64::from(s.truncated)),
        )?;
        let statuses = ["CONNECTED", "DISCONNECTED", "DEAD"];
        gauges(
            e,
            "majordodo_workers",
            "Workers known to the state, by status",
            "status",
            statuses.iter().map(|st| {
                let n = s
                    .workers
                    .iter()
                    .find(|(k, _)| k == st)
                    .map_or(0, |(_, n)| *n);
                (*st, n)
            }),
        )?;
        single(
            e,
            "majordodo_worker_slots",
            "Task slots (max threads) declared by the connected workers (leader only)",
            ConstGauge::new(s.slots as i64),
        )?;
        single(
            e,
            "majordodo_worker_free_slots",
            "Task slots of the connected workers not taken by a running task (leader only)",
            ConstGauge::new(s.free_slots as i64),
        )?;
        single(
            e,
            "majordodo_log_applied_lsn",
            "Position of the last log entry applied to the state",
            ConstGauge::new(s.lsn as i64),
        )?;
        if let Some(ledger) = s.ledger {
            single(
                e,
                "majordodo_cluster_current_ledger",
                "The BookKeeper ledger being written (leader) or tailed (follower)",
                ConstGauge::new(ledger),
            )?;
        }
        if let Some(lag) = s.lag {
            single(
                e,
                "majordodo_replication_lag_entries",
                "Log entries this broker is behind the leader's published position (0 on the leader)",
                ConstGauge::new(lag as i64),
            )?;
        }
        Ok(())
    }
}

/// The `role` label of a role.
fn role_label(role: Role) -> &'static str {
    match role {
        Role::Recovering => "recovering",
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Closed => "closed",
    }
}

/// Renders `exposition` in the Prometheus text format.
pub(crate) fn encode(exposition: Exposition) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(exposition));
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would be ours and yields what was
    // written so far.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exposes one histogram, as the broker's exposition does.
    struct OneHistogram(Histogram);

    impl std::fmt::Debug for OneHistogram {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("OneHistogram")
        }
    }

    impl Collector for OneHistogram {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            histogram(&mut encoder, "h_seconds", "help", &self.0)
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_the_sum_exact() {
        // Goal: an observation lands in the first bucket whose bound holds it; the text
        // format's buckets count every observation at or below their bound, so the +Inf
        // bucket is the count.
        let h = Histogram::new(TASK_SECONDS, 1e-3);
        h.observe(1); // 1 ms: first bucket
        h.observe(700); // 0.7 s: the 1 s bucket
        h.observe(100_000_000); // beyond a day: +Inf only
        let mut registry = Registry::default();
        registry.register_collector(Box::new(OneHistogram(h)));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        let sample = |name: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
                .unwrap_or_else(|| panic!("no {name} in\n{text}"));
            line[name.len()..].trim().parse().unwrap()
        };
        assert_eq!(sample("h_seconds_count"), 3.0, "{text}");
        assert!(
            (sample("h_seconds_sum") - 100_000.701).abs() < 1e-6,
            "{text}"
        );
        assert_eq!(sample("h_seconds_bucket{le=\"0.001\"}"), 1.0, "{text}");
        assert_eq!(sample("h_seconds_bucket{le=\"0.5\"}"), 1.0, "{text}");
        assert_eq!(sample("h_seconds_bucket{le=\"1\"}"), 2.0, "{text}");
        assert_eq!(sample("h_seconds_bucket{le=\"+Inf\"}"), 3.0, "{text}");
    }

    #[test]
    fn ranking_keeps_the_top_n_and_sums_the_rest_under_other() {
        // Goal: at most N named values plus `other`, the largest first; a key named `other`
        // joins the rest instead of appearing twice.
        let counts: HashMap<&str, u64> =
            [("a", 5), ("b", 9), ("c", 1), ("other", 2), ("d", 5)].into();
        let ranked = rank(counts, 2);
        assert_eq!(
            ranked,
            vec![("b".into(), 9), ("a".into(), 5), ("other".into(), 8)]
        );
        assert_eq!(rank(HashMap::new(), 3), vec![("other".into(), 0)]);
    }
}
