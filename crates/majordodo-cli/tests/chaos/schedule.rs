//! The faults of one seed, in order, with the pauses between them, all drawn from the seed
//! before the run starts: a seed names one schedule, printed in full, and replays it.
//!
//! Every schedule holds each kind of fault once, in a random order, plus up to
//! [`MAX_EXTRA_STEPS`] more drawn at random, so that even a couple of seeds exercise them all.
//! Which broker "the leader" or "a follower" is gets decided when the fault is injected.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Steps beyond one of each kind; bounds a seed's run time.
pub(crate) const MAX_EXTRA_STEPS: usize = 1;

/// Which broker a fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The broker the leader znode names when the fault starts.
    Leader,
    /// A running follower; `pick` chooses among them (modulo their number).
    Follower { pick: usize },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Leader => f.write_str("leader"),
            Target::Follower { .. } => f.write_str("follower"),
        }
    }
}

/// One fault. Each ends with everything it broke restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// SIGKILL the leader, then start it again on its data directory after `down`: it boots
    /// as a follower.
    KillLeader { down: Duration },
    /// SIGSTOP a broker for `frozen`, longer than the session timeout, then SIGCONT: a frozen
    /// leader loses its session (and its leadership) and wakes up behind.
    Freeze { target: Target, frozen: Duration },
    /// SIGKILL a bookie, then start it again on its data after `down`.
    KillBookie { bookie: usize, down: Duration },
    /// Cut a broker off ZooKeeper alone for `cut`, longer than the session timeout: its session
    /// expires while it runs on, still reaching the bookies, workers and clients.
    ExpireSession { target: Target, cut: Duration },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = |d: &Duration| format!("{:.1}s", d.as_secs_f64());
        match self {
            Fault::KillLeader { down } => {
                write!(f, "kill -9 the leader, restart after {}", s(down))
            }
            Fault::Freeze { target, frozen } => write!(f, "SIGSTOP a {target} for {}", s(frozen)),
            Fault::KillBookie { bookie, down } => {
                write!(f, "kill -9 bookie {bookie}, restart after {}", s(down))
            }
            Fault::ExpireSession { target, cut } => {
                write!(f, "cut a {target} off ZooKeeper for {}", s(cut))
            }
        }
    }
}

/// A fault and the pause before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Step {
    pub(crate) pause: Duration,
    pub(crate) fault: Fault,
}

/// The steps of one seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Schedule {
    pub(crate) steps: Vec<Step>,
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.steps.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "+{:.1}s {}", step.pause.as_secs_f64(), step.fault)?;
        }
        Ok(())
    }
}

/// Milliseconds in `low..high`.
fn millis(rng: &mut StdRng, low: u64, high: u64) -> Duration {
    Duration::from_millis(rng.random_range(low..high))
}

fn target(rng: &mut StdRng) -> Target {
    if rng.random_bool(0.5) {
        Target::Leader
    } else {
        Target::Follower {
            pick: rng.random_range(0..16),
        }
    }
}

/// A fault of kind `kind` (0 to 3).
fn fault(rng: &mut StdRng, kind: usize, session_timeout: Duration, bookies: usize) -> Fault {
    let beyond_session = |rng: &mut StdRng| session_timeout + millis(rng, 1_000, 3_000);
    match kind {
        0 => Fault::KillLeader {
            down: millis(rng, 1_000, 5_000),
        },
        1 => Fault::Freeze {
            target: target(rng),
            frozen: beyond_session(rng),
        },
        2 => Fault::KillBookie {
            bookie: rng.random_range(0..bookies),
            down: millis(rng, 1_000, 4_000),
        },
        _ => Fault::ExpireSession {
            target: target(rng),
            cut: beyond_session(rng),
        },
    }
}

/// The schedule of `seed` for brokers with this session timeout and this many bookies.
pub(crate) fn draw(seed: u64, session_timeout: Duration, bookies: usize) -> Schedule {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut kinds: Vec<usize> = (0..4).collect();
    kinds.shuffle(&mut rng);
    for _ in 0..rng.random_range(0..=MAX_EXTRA_STEPS) {
        kinds.insert(rng.random_range(0..=kinds.len()), rng.random_range(0..4));
    }
    let steps = kinds
        .into_iter()
        .map(|kind| Step {
            pause: millis(&mut rng, 1_000, 4_000),
            fault: fault(&mut rng, kind, session_timeout, bookies),
        })
        .collect();
    Schedule { steps }
}

#[test]
fn a_seed_names_one_schedule_with_every_kind_of_fault() {
    // Goal: the same seed draws the same schedule; every schedule has each kind of fault and
    // stays within its bounds.
    let timeout = Duration::from_secs(3);
    for seed in 0..200 {
        let schedule = draw(seed, timeout, 3);
        assert_eq!(schedule, draw(seed, timeout, 3));
        let n = schedule.steps.len();
        assert!((4..=4 + MAX_EXTRA_STEPS).contains(&n), "{schedule}");
        let has = |f: fn(&Fault) -> bool| schedule.steps.iter().any(|s| f(&s.fault));
        assert!(has(|f| matches!(f, Fault::KillLeader { .. })), "{schedule}");
        assert!(has(|f| matches!(f, Fault::Freeze { .. })), "{schedule}");
        assert!(has(|f| matches!(f, Fault::KillBookie { .. })), "{schedule}");
        assert!(
            has(|f| matches!(f, Fault::ExpireSession { .. })),
            "{schedule}"
        );
        for step in &schedule.steps {
            match step.fault {
                Fault::Freeze { frozen: d, .. } | Fault::ExpireSession { cut: d, .. } => {
                    assert!(d > timeout, "{schedule}")
                }
                Fault::KillBookie { bookie, .. } => assert!(bookie < 3),
                Fault::KillLeader { .. } => {}
            }
        }
    }
    assert_ne!(draw(1, timeout, 3), draw(2, timeout, 3));
}
