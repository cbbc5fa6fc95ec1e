//! What to retry and for how long: the retry policy and the invocation's deadline budget.
//!
//! The mechanism that loops, sleeps and calls lives in `mod.rs`; this file only decides. Keeping the
//! decision pure makes the deadline rule ("never start a wait that cannot finish before the reserve")
//! testable without a clock.

use std::time::Duration;
use tokio::time::Instant;

use super::backoff::{Backoff, Jitter};

/// Time kept after the finishing call to post the invocation's answer to the Runtime API.
pub const ANSWER_MARGIN: Duration = Duration::from_millis(200);

/// How long an invocation waits for the membership lock while another invocation's change is
/// under way (a removal with a leader move takes one to two seconds) before it holds. Short, so
/// a held invocation leaves time to heartbeat; shorter than one etcd request's timeout, so the
/// wait is ours and not the transport's.
pub const LOCK_WAIT: Duration = Duration::from_secs(4);

/// How long etcd's "not now" (a membership change refused as "unhealthy cluster", or "no
/// leader" during a short election) is tried again before it is reported. Covers the refusal a
/// follower may give right after a leader move (about 1.5 s); anything longer is the caller's
/// hold.
pub const REFUSAL_WAIT: Duration = Duration::from_secs(3);
/// Pause between two tries of a refused change.
pub const REFUSAL_PAUSE: Duration = Duration::from_millis(250);

/// A confirmed Spot interruption takes the instance this long after the notice, whatever the
/// hook says: the window in which an unsafe removal is tried again.
pub const SPOT_NOTICE: Duration = Duration::from_secs(120);
/// Pause between two tries of the removal of an interrupted Spot instance's member.
pub const SPOT_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// The invocation's time budget: the Lambda deadline and the part of it kept back for the final
/// heartbeat or completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// The hard deadline of the invocation (Lambda's `Context::deadline`).
    pub at: Instant,
    /// Time always kept before `at` to heartbeat or complete the lifecycle action.
    pub reserve: Duration,
}

impl Deadline {
    pub fn new(at: Instant, reserve: Duration) -> Self {
        Self { at, reserve }
    }

    /// A deadline `remaining` from now.
    pub fn after(remaining: Duration, reserve: Duration) -> Self {
        Self::new(Instant::now() + remaining, reserve)
    }

    /// The last instant at which new work (a retry, a wait, a membership change) may still end.
    pub fn work_until(&self) -> Instant {
        self.at.checked_sub(self.reserve).unwrap_or(self.at)
    }

    /// The budget of the call that finishes an action (heartbeat or completion): the reserve
    /// itself, up to [`ANSWER_MARGIN`] before the hard deadline, so the invocation can still post
    /// its answer in time.
    pub fn finishing(&self) -> Deadline {
        Deadline {
            at: self.at.checked_sub(ANSWER_MARGIN).unwrap_or(self.at),
            reserve: Duration::ZERO,
        }
    }

    /// Time left before the hard deadline.
    pub fn remaining(&self, now: Instant) -> Duration {
        self.at.saturating_duration_since(now)
    }

    /// How long to wait for the membership lock from `now`: [`LOCK_WAIT`], cut where the work
    /// window ends.
    pub fn lock_wait(&self, now: Instant) -> Duration {
        LOCK_WAIT.min(self.work_until().saturating_duration_since(now))
    }

    /// Until when etcd's "not now" is tried again from `now`: [`REFUSAL_WAIT`], cut where the
    /// work window ends.
    pub fn refusal_wait_until(&self, now: Instant) -> Instant {
        (now + REFUSAL_WAIT).min(self.work_until())
    }

    /// The time to live, in whole seconds, of a lease taken at `now`: never longer than the
    /// invocation has left, so a lock held by a function that dies ends with its deadline.
    pub fn lease_ttl_secs(&self, now: Instant) -> i64 {
        i64::try_from(self.remaining(now).as_secs()).unwrap_or(i64::MAX)
    }

    /// Whether the time left is already inside the reserve: only the finishing call may run.
    pub fn in_reserve(&self, now: Instant) -> bool {
        now >= self.work_until()
    }
}

/// The retry policy shared by every dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    pub backoff: Backoff,
}

impl RetryPolicy {
    /// The sleep before the next attempt after `attempts_made` attempts failed transiently, or
    /// `None` when no attempt is left or the sleep would end past `deadline.work_until()`.
    pub fn next_delay(
        &self,
        attempts_made: u32,
        now: Instant,
        deadline: &Deadline,
        jitter: &dyn Jitter,
    ) -> Option<Duration> {
        if attempts_made >= self.max_attempts {
            return None;
        }
        let delay = self.backoff.delay(attempts_made.saturating_sub(1), jitter);
        (now + delay <= deadline.work_until()).then_some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::backoff::FixedJitter;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            backoff: Backoff {
                base: Duration::from_millis(200),
                max: Duration::from_millis(5000),
            },
        }
    }

    #[tokio::test(start_paused = true)]
    async fn schedule_grows_until_attempts_run_out() {
        let now = Instant::now();
        let deadline = Deadline::new(now + Duration::from_secs(60), Duration::from_secs(2));
        let delays: Vec<Option<u128>> = (1..=5)
            .map(|made| {
                policy()
                    .next_delay(made, now, &deadline, &FixedJitter(0.999_999))
                    .map(|d| d.as_millis())
            })
            .collect();
        assert_eq!(delays, vec![Some(199), Some(399), Some(799), None, None]);
    }

    #[tokio::test(start_paused = true)]
    async fn no_sleep_may_end_inside_the_reserve() {
        let now = Instant::now();
        // 2.5 s left, 2 s reserve: 500 ms of budget. The second retry's 400 ms fits, the third's
        // 800 ms does not.
        let deadline = Deadline::new(now + Duration::from_millis(2500), Duration::from_secs(2));
        let jitter = FixedJitter(0.999_999);
        assert!(policy().next_delay(2, now, &deadline, &jitter).is_some());
        assert_eq!(policy().next_delay(3, now, &deadline, &jitter), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_finishing_call_gets_the_reserve_but_not_the_answer_margin() {
        let now = Instant::now();
        let deadline = Deadline::new(now + Duration::from_secs(10), Duration::from_secs(2));
        assert_eq!(deadline.work_until(), now + Duration::from_secs(8));
        let finishing = deadline.finishing();
        assert_eq!(
            finishing.work_until(),
            now + Duration::from_secs(10) - ANSWER_MARGIN
        );
        assert!(!finishing.in_reserve(now + Duration::from_secs(9)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_lock_is_waited_for_briefly_and_leased_no_longer_than_the_invocation() {
        let now = Instant::now();
        let deadline = Deadline::new(now + Duration::from_millis(30_900), Duration::from_secs(2));
        assert_eq!(deadline.lock_wait(now), LOCK_WAIT);
        assert_eq!(deadline.refusal_wait_until(now), now + REFUSAL_WAIT);
        let short = Deadline::new(now + Duration::from_secs(3), Duration::from_secs(2));
        assert_eq!(short.refusal_wait_until(now), short.work_until());
        assert_eq!(
            deadline.lease_ttl_secs(now),
            30,
            "rounded down, never past the deadline"
        );
        let late = now + Duration::from_millis(27_000);
        assert_eq!(deadline.lock_wait(late), Duration::from_millis(1_900));
        let inside = now + Duration::from_secs(29);
        assert_eq!(deadline.lock_wait(inside), Duration::ZERO);
        assert_eq!(deadline.lease_ttl_secs(now + Duration::from_secs(40)), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn reserve_larger_than_the_time_left_means_no_retry() {
        let now = Instant::now();
        let deadline = Deadline::new(now + Duration::from_secs(1), Duration::from_secs(2));
        assert!(deadline.in_reserve(now));
        assert_eq!(
            policy().next_delay(1, now, &deadline, &FixedJitter(0.0)),
            None
        );
    }
}
