//! When and how long the client tries a request again.
//!
//! Only failures in which the broker did nothing are retried: `broker_not_leader`,
//! `recovery_in_progress`, `broker_not_started`, `broker_overloaded` (503, `retryable`), a body
//! timeout (408), a leader that cannot be found yet, and connection failures. A connection that
//! fails after the request was sent may have carried it out, so a submission is retried after
//! such a failure only when every task carries an idempotency key (then the broker answers a
//! repeat with the first task). `outcome_unknown` and every 4xx are never retried.
//!
//! Delays grow exponentially from [`RetryPolicy::initial_delay`] to
//! [`RetryPolicy::max_delay`], each drawn from the upper half of its step so that clients that
//! failed together do not come back together, and the retries of one request stop once
//! [`RetryPolicy::max_elapsed`] would be exceeded.

use std::time::Duration;

use rand::Rng;

/// Default first delay: a new leader is usually elected and recovered within seconds, and
/// overload clears within a round; 100 ms keeps the first retry quick.
pub const DEFAULT_RETRY_INITIAL_DELAY: Duration = Duration::from_millis(100);

/// Default longest delay between two attempts.
pub const DEFAULT_RETRY_MAX_DELAY: Duration = Duration::from_secs(5);

/// Default longest time spent retrying one request: covers a leader change (a ZooKeeper
/// session timeout of 10 s, then the new leader's recovery) with room to spare.
pub const DEFAULT_RETRY_MAX_ELAPSED: Duration = Duration::from_secs(60);

/// Growth factor of the delay.
const FACTOR: u32 = 2;

/// How a [`crate::Client`] retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay step after the first failure.
    pub initial_delay: Duration,
    /// Largest delay step.
    pub max_delay: Duration,
    /// No retry starts later than this after the first attempt; zero never retries.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_delay: DEFAULT_RETRY_INITIAL_DELAY,
            max_delay: DEFAULT_RETRY_MAX_DELAY,
            max_elapsed: DEFAULT_RETRY_MAX_ELAPSED,
        }
    }
}

impl RetryPolicy {
    /// Never retry: every failure is returned at once.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            max_elapsed: Duration::ZERO,
            ..RetryPolicy::default()
        }
    }

    /// The default delays, retrying for at most `max_elapsed`.
    pub fn for_at_most(max_elapsed: Duration) -> RetryPolicy {
        RetryPolicy {
            max_elapsed,
            ..RetryPolicy::default()
        }
    }

    /// The delay before the attempt that follows `failures` consecutive failures (at least 1).
    pub fn delay(&self, failures: u32, rng: &mut impl Rng) -> Duration {
        let exponent = failures.saturating_sub(1).min(31);
        let step = self
            .initial_delay
            .saturating_mul(FACTOR.saturating_pow(exponent))
            .min(self.max_delay);
        let half = step / 2;
        half + half.mul_f64(rng.random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn delays_grow_to_the_bound_within_jitter() {
        // Goal: each delay lies in the upper half of its exponential step, capped at max_delay.
        let policy = RetryPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_elapsed: Duration::from_secs(10),
        };
        let mut rng = StdRng::seed_from_u64(3);
        for failures in 1..40u32 {
            let step = Duration::from_millis(100 * 2u64.pow((failures - 1).min(10)))
                .min(Duration::from_secs(1));
            let delay = policy.delay(failures, &mut rng);
            assert!(delay >= step / 2 && delay <= step, "{failures}: {delay:?}");
        }
    }
}
