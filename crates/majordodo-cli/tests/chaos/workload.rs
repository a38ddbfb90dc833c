//! What the chaos test runs: the tasks its client submits (drawn from the seed) and the
//! worker executor that records every execution.
//!
//! Task `n` carries the data `"<n> <seconds to run> <first attempt that succeeds>"` and the
//! idempotency key `chaos-<seed>-<n>`; some hold one of a few slots (so they collide), some
//! start a few seconds late, and their `maxattempts` goes from 1 to 3. The client submits one
//! task at a time and records what became of each: a task id, "not created" (a busy slot),
//! or unknown (every try failed in a way that leaves it open). A failure that leaves the
//! outcome open (`outcome_unknown`, a lost connection, a leader that cannot be found) is
//! submitted again with the same key until [`RESUBMIT_FOR`] has passed.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use majordodo_client::{Client, ClientError, Submitted, TaskSubmission};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

/// The tasks' type; the workers run it with [`EXECUTOR_SCRIPT`].
pub(crate) const TASK_TYPE: &str = "chaos";

/// The tasks' user.
pub(crate) const USER: &str = "chaos";

/// Slots the tasks draw from: few, so that tasks holding one collide.
pub(crate) const SLOTS: [&str; 3] = ["s0", "s1", "s2"];

/// Longest one task is submitted again after failures that leave its outcome open. Covers a
/// takeover (a session timeout of a few seconds, then recovery) many times over.
pub(crate) const RESUBMIT_FOR: Duration = Duration::from_secs(60);

/// Pause before submitting a task again.
const RESUBMIT_PAUSE: Duration = Duration::from_millis(300);

/// Run by the workers' `process` executor (`sh -c`), with the task's data on stdin. It appends
/// `start <task> <attempt> <n> <ns>` and `end <task> <attempt> <n> <ns>` lines to
/// `$CHAOS_LOG` (one write each, the file closed after it), so what the workers ran survives
/// them; then it fails attempts below the task's third number.
pub(crate) const EXECUTOR_SCRIPT: &str = r#"read -r n seconds succeeds_at
echo "start $MAJORDODO_TASK_ID $MAJORDODO_ATTEMPT $n $(date +%s%N)" >> "$CHAOS_LOG"
sleep "$seconds"
echo "end $MAJORDODO_TASK_ID $MAJORDODO_ATTEMPT $n $(date +%s%N)" >> "$CHAOS_LOG"
if [ "$MAJORDODO_ATTEMPT" -lt "$succeeds_at" ]; then
  echo "attempt $MAJORDODO_ATTEMPT fails on purpose" >&2
  exit 1
fi
echo "done $n""#;

/// One task the client submits.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// Its number in the run, in its data.
    pub(crate) n: u64,
    pub(crate) slot: Option<&'static str>,
    /// How much later than its submission it may start.
    pub(crate) delay: Option<Duration>,
    pub(crate) max_attempts: u32,
    /// How long each execution takes.
    pub(crate) runs_for: Duration,
    /// The first attempt that succeeds (1: every attempt does).
    pub(crate) succeeds_at: u32,
}

impl Plan {
    pub(crate) fn data(&self) -> String {
        format!(
            "{} {:.3} {}",
            self.n,
            self.runs_for.as_secs_f64(),
            self.succeeds_at
        )
    }

    pub(crate) fn key(&self, seed: u64) -> String {
        format!("chaos-{seed}-{}", self.n)
    }
}

/// The `n` a task's data names.
pub(crate) fn n_of(data: &str) -> Option<u64> {
    data.split(' ').next()?.parse().ok()
}

/// What became of a submitted task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The broker answered with this task id (created, or created earlier under the same key).
    Created(u64),
    /// The broker answered that it did not create it (its slot was busy).
    NotCreated(String),
    /// No try got an answer that settles it; the task may exist.
    Unknown(String),
    /// The broker refused the request as wrong (4xx): a bug of the test or of the broker.
    Refused(String),
}

/// A submitted task and its outcome.
#[derive(Clone, Debug)]
pub(crate) struct Submission {
    pub(crate) plan: Plan,
    /// `requestedStartTime`, ms since the epoch (0: none).
    pub(crate) start_at: i64,
    pub(crate) outcome: Outcome,
    /// Submissions of it (1 when the first was answered).
    pub(crate) tries: u32,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn draw_plan(rng: &mut StdRng, n: u64) -> Plan {
    Plan {
        n,
        slot: rng
            .random_bool(0.35)
            .then(|| SLOTS[rng.random_range(0..SLOTS.len())]),
        delay: rng
            .random_bool(0.2)
            .then(|| Duration::from_millis(rng.random_range(1_000..5_000))),
        max_attempts: rng.random_range(1..=3),
        runs_for: Duration::from_millis(rng.random_range(100..600)),
        succeeds_at: match rng.random_range(0..10) {
            0 => 3,
            1 | 2 => 2,
            _ => 1,
        },
    }
}

/// Submits tasks one after the other, with short pauses, until `stop`; then finishes the task
/// under way and returns every submission in order.
pub(crate) async fn submit_until(
    client: Client,
    seed: u64,
    stop: CancellationToken,
) -> Vec<Submission> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x00c0_ffee_5eed);
    let mut done = Vec::new();
    for n in 1.. {
        if stop.is_cancelled() {
            break;
        }
        let plan = draw_plan(&mut rng, n);
        let start_at = plan.delay.map_or(0, |d| now_ms() + d.as_millis() as i64);
        let mut task =
            TaskSubmission::new(TASK_TYPE, USER, plan.data()).with_idempotency_key(plan.key(seed));
        task.max_attempts = plan.max_attempts;
        task.requested_start_time = start_at;
        task.slot = plan.slot.map(str::to_owned);
        let (outcome, tries) = submit_once(&client, &task).await;
        done.push(Submission {
            plan,
            start_at,
            outcome,
            tries,
        });
        let pause = Duration::from_millis(rng.random_range(50..250));
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
    }
    done
}

/// Submits `task` until an answer settles it or [`RESUBMIT_FOR`] has passed.
async fn submit_once(client: &Client, task: &TaskSubmission) -> (Outcome, u32) {
    let started = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        let error = match client.submit(task).await {
            Ok(Submitted::Created(id)) => return (Outcome::Created(id), tries),
            Ok(Submitted::NotCreated(why)) => return (Outcome::NotCreated(why), tries),
            Err(
                e @ (ClientError::BadRequest { .. }
                | ClientError::Forbidden { .. }
                | ClientError::Unauthorized(_)
                | ClientError::TooLarge(_)
                | ClientError::InvalidUrl { .. }),
            ) => return (Outcome::Refused(e.to_string()), tries),
            Err(e) => e,
        };
        if started.elapsed() >= RESUBMIT_FOR {
            return (Outcome::Unknown(error.to_string()), tries);
        }
        tokio::time::sleep(RESUBMIT_PAUSE).await;
    }
}
