//! Throughput over the last minutes, for the overview's chart.
//!
//! A sampler reads a few counters of the broker state every [`SAMPLE_INTERVAL`] (one constant
//! time read through [`crate::BrokerHandle::query`]) and keeps the last [`MAX_SAMPLES`]. From
//! two consecutive samples:
//! - *submitted* per second is the growth of the highest task id (ids are given in order, one
//!   per created task);
//! - *ended* per second is the growth of the finished and failed counts, plus the tasks purged
//!   meanwhile (created ones minus the growth of the task count: only ended tasks are purged);
//! - *log* per second is the growth of the last applied log position.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use majordodo_core::{BrokerState, TaskStatus};
use serde::Serialize;

/// Time between two samples.
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);

/// Samples kept: ten minutes.
pub(crate) const MAX_SAMPLES: usize = 300;

/// The counters read at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Broker clock, ms since the epoch.
    pub(crate) at: i64,
    pub(crate) max_task_id: u64,
    pub(crate) tasks: u64,
    pub(crate) ended: u64,
    pub(crate) lsn: u64,
}

impl Counters {
    /// Reads the counters of `state` at `at`.
    pub(crate) fn of(state: &BrokerState, at: i64) -> Counters {
        Counters {
            at,
            max_task_id: state.max_task_id(),
            tasks: state.task_count() as u64,
            ended: state.count(TaskStatus::Finished) + state.count(TaskStatus::Error),
            lsn: state.last_lsn(),
        }
    }
}

/// Rates between two samples, per second, at the later one's time.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub(crate) struct Rate {
    /// ms since the epoch.
    pub(crate) t: i64,
    pub(crate) submitted: f64,
    pub(crate) ended: f64,
    pub(crate) log: f64,
}

/// The rate between `a` and a later `b`; `None` when no time passed or the state went back
/// (a broker that restarted from an older snapshot).
pub(crate) fn rate(a: &Counters, b: &Counters) -> Option<Rate> {
    let secs = (b.at - a.at) as f64 / 1000.0;
    if secs <= 0.0 || b.max_task_id < a.max_task_id || b.lsn < a.lsn {
        return None;
    }
    let created = b.max_task_id - a.max_task_id;
    let purged = (a.tasks + created).saturating_sub(b.tasks);
    let ended = (b.ended + purged).saturating_sub(a.ended);
    Some(Rate {
        t: b.at,
        submitted: created as f64 / secs,
        ended: ended as f64 / secs,
        log: (b.lsn - a.lsn) as f64 / secs,
    })
}

/// The last samples.
#[derive(Default)]
pub(crate) struct History {
    samples: Mutex<VecDeque<Counters>>,
}

impl History {
    /// Adds a sample, forgetting the oldest beyond [`MAX_SAMPLES`].
    pub(crate) fn push(&self, c: Counters) {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() >= MAX_SAMPLES {
            s.pop_front();
        }
        s.push_back(c);
    }

    /// The rates between consecutive samples, oldest first.
    pub(crate) fn rates(&self) -> Vec<Rate> {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        s.iter()
            .zip(s.iter().skip(1))
            .filter_map(|(a, b)| rate(a, b))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(at: i64, max_task_id: u64, tasks: u64, ended: u64, lsn: u64) -> Counters {
        Counters {
            at,
            max_task_id,
            tasks,
            ended,
            lsn,
        }
    }

    #[test]
    fn rates_count_created_ended_and_purged_tasks() {
        // Goal: 10 tasks created and 4 ended in 2 s are 5/s and 2/s; ended tasks that were
        // purged meanwhile still count as ended; time or counters going back give no rate.
        let a = c(1_000, 100, 50, 20, 500);
        let b = c(3_000, 110, 60, 24, 530);
        let r = rate(&a, &b).unwrap();
        assert_eq!((r.submitted, r.ended, r.log, r.t), (5.0, 2.0, 15.0, 3_000));
        // 3 ended tasks purged: the task count grows by 7 only, the ended count by 1.
        let b = c(3_000, 110, 57, 21, 530);
        assert_eq!(rate(&a, &b).unwrap().ended, 2.0);
        assert!(rate(&a, &a).is_none());
        assert!(rate(&b, &a).is_none());
    }

    #[test]
    fn the_history_is_bounded() {
        // Goal: at most MAX_SAMPLES samples are kept, so MAX_SAMPLES - 1 rates.
        let h = History::default();
        for i in 0..(MAX_SAMPLES as u64 + 50) {
            h.push(c(i as i64 * 2_000, i, 0, 0, i));
        }
        let rates = h.rates();
        assert_eq!(rates.len(), MAX_SAMPLES - 1);
        assert!(rates.iter().all(|r| r.submitted == 0.5));
    }
}
