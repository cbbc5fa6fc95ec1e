//! The circuit breaker state machine of one dependency.
//!
//! Why: when Auto Scaling, EC2 or etcd is down, every invocation that keeps calling it burns its
//! own deadline and adds load to a service that is already failing. After enough consecutive
//! transient failures the breaker opens and calls fail at once, without a request, until the reset
//! timeout lets one probe through.
//!
//! The state sits behind a short `std::sync::Mutex` that is never held across an `.await`; time is
//! passed in (`now`) so the machine is a pure function of its inputs and is tested as a table.
//! A half-open probe is a [`Permit`] whose drop gives the probe slot back, so a cancelled or timed
//! out probe can never wedge the breaker in half-open.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// Thresholds of one breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive counted failures that open a closed circuit.
    pub failure_threshold: u32,
    /// How long an open circuit rejects calls before it admits a probe.
    pub reset_timeout: Duration,
    /// Successful probes that close a half-open circuit.
    pub success_threshold: u32,
}

/// The three states, as logged and reported in the invocation summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub const ALL: [State; 3] = [State::Closed, State::Open, State::HalfOpen];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "CLOSED",
            State::Open => "OPEN",
            State::HalfOpen => "HALF_OPEN",
        }
    }

    fn index(self) -> usize {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inner {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        successes: u32,
        probe_in_flight: bool,
    },
}

/// A call was refused because the circuit is open (or its one half-open probe is out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub retry_after: Duration,
}

/// A point-in-time view of a breaker, for logs and the invocation summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub dependency: &'static str,
    pub state: State,
    pub consecutive_failures: u32,
    /// Seconds until an open circuit admits a probe (0 unless open).
    pub retry_after_secs: u64,
}

/// One dependency's breaker. Shared behind an `Arc` by every invocation of the environment.
#[derive(Debug)]
pub struct Breaker {
    dependency: &'static str,
    config: BreakerConfig,
    inner: Mutex<Inner>,
    /// Transitions into each state since the last [`Breaker::take_transitions`], for metrics.
    transitions: [AtomicU64; 3],
}

impl Breaker {
    pub fn new(dependency: &'static str, config: BreakerConfig) -> Self {
        Self {
            dependency,
            config: BreakerConfig {
                failure_threshold: config.failure_threshold.max(1),
                success_threshold: config.success_threshold.max(1),
                ..config
            },
            inner: Mutex::new(Inner::Closed { failures: 0 }),
            transitions: Default::default(),
        }
    }

    pub fn dependency(&self) -> &'static str {
        self.dependency
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The critical sections below cannot panic, but a poisoned lock must not take the whole
        // execution environment down with it: the state is still consistent.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The state as seen at `now` (an open circuit whose timeout has passed reads as half-open).
    pub fn state(&self, now: Instant) -> State {
        match *self.lock() {
            Inner::Closed { .. } => State::Closed,
            Inner::Open { until } if now < until => State::Open,
            Inner::Open { .. } | Inner::HalfOpen { .. } => State::HalfOpen,
        }
    }

    /// `Some(retry_after)` when a call at `now` would be rejected because the circuit is open.
    /// Cheap enough to ask before every flow.
    pub fn open_for(&self, now: Instant) -> Option<Duration> {
        match *self.lock() {
            Inner::Open { until } if now < until => Some(until - now),
            _ => None,
        }
    }

    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let inner = *self.lock();
        let (state, consecutive_failures, retry_after) = match inner {
            Inner::Closed { failures } => (State::Closed, failures, Duration::ZERO),
            Inner::Open { until } if now < until => (State::Open, 0, until - now),
            Inner::Open { .. } | Inner::HalfOpen { .. } => (State::HalfOpen, 0, Duration::ZERO),
        };
        Snapshot {
            dependency: self.dependency,
            state,
            consecutive_failures,
            retry_after_secs: ceil_secs(retry_after),
        }
    }

    /// Asks to make one call at `now`. A half-open circuit admits one probe at a time.
    pub fn acquire(self: &Arc<Self>, now: Instant) -> Result<Permit, Rejected> {
        let mut inner = self.lock();
        let probe = match *inner {
            Inner::Closed { .. } => false,
            Inner::Open { until } if now < until => {
                return Err(Rejected {
                    retry_after: until - now,
                })
            }
            Inner::Open { .. } => {
                self.transition(
                    &mut inner,
                    Inner::HalfOpen {
                        successes: 0,
                        probe_in_flight: true,
                    },
                );
                true
            }
            Inner::HalfOpen {
                probe_in_flight: true,
                ..
            } => {
                // Another probe is out; its outcome decides. Ask again shortly.
                return Err(Rejected {
                    retry_after: Duration::from_secs(1),
                });
            }
            Inner::HalfOpen { successes, .. } => {
                *inner = Inner::HalfOpen {
                    successes,
                    probe_in_flight: true,
                };
                true
            }
        };
        Ok(Permit {
            breaker: Arc::clone(self),
            probe,
            settled: false,
        })
    }

    fn on_success(&self, probe: bool) {
        let mut inner = self.lock();
        match *inner {
            Inner::Closed { .. } => *inner = Inner::Closed { failures: 0 },
            Inner::HalfOpen { successes, .. } if probe => {
                let successes = successes + 1;
                if successes >= self.config.success_threshold {
                    self.transition(&mut inner, Inner::Closed { failures: 0 });
                } else {
                    *inner = Inner::HalfOpen {
                        successes,
                        probe_in_flight: false,
                    };
                }
            }
            // A call admitted while closed that finishes after the circuit opened says nothing
            // about the service now: the state moved on without it.
            Inner::HalfOpen { .. } | Inner::Open { .. } => {}
        }
    }

    fn on_failure(&self, probe: bool, now: Instant) {
        let mut inner = self.lock();
        let open = Inner::Open {
            until: now + self.config.reset_timeout,
        };
        match *inner {
            Inner::Closed { failures } => {
                let failures = failures + 1;
                if failures >= self.config.failure_threshold {
                    self.transition(&mut inner, open);
                } else {
                    *inner = Inner::Closed { failures };
                }
            }
            Inner::HalfOpen { .. } if probe => self.transition(&mut inner, open),
            Inner::HalfOpen { .. } | Inner::Open { .. } => {}
        }
    }

    /// The dependency answered, but with an error that says nothing about its health (a
    /// validation or permission error): it breaks a run of consecutive failures and frees a probe
    /// slot, without counting as a success.
    fn on_answer(&self, probe: bool) {
        let mut inner = self.lock();
        match *inner {
            Inner::Closed { .. } => *inner = Inner::Closed { failures: 0 },
            Inner::HalfOpen { successes, .. } if probe => {
                *inner = Inner::HalfOpen {
                    successes,
                    probe_in_flight: false,
                }
            }
            _ => {}
        }
    }

    fn release(&self, probe: bool) {
        if !probe {
            return;
        }
        let mut inner = self.lock();
        if let Inner::HalfOpen { successes, .. } = *inner {
            *inner = Inner::HalfOpen {
                successes,
                probe_in_flight: false,
            };
        }
    }

    fn transition(&self, inner: &mut MutexGuard<'_, Inner>, to: Inner) {
        let from = state_of(**inner);
        **inner = to;
        let to_state = state_of(to);
        self.transitions[to_state.index()].fetch_add(1, Ordering::Relaxed);
        match to_state {
            State::Open => tracing::warn!(
                dependency = self.dependency,
                from = %from,
                to = %to_state,
                reset_timeout_secs = self.config.reset_timeout.as_secs(),
                "circuit breaker opened: calls to {} fail fast until the reset timeout",
                self.dependency
            ),
            _ => tracing::info!(
                dependency = self.dependency,
                from = %from,
                to = %to_state,
                "circuit breaker state change"
            ),
        }
    }

    /// Transitions into each state since the last call, reset to zero. Each transition is
    /// reported exactly once even when invocations run concurrently.
    pub fn take_transitions(&self) -> Vec<(State, u64)> {
        State::ALL
            .iter()
            .map(|&s| (s, self.transitions[s.index()].swap(0, Ordering::Relaxed)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }
}

fn state_of(inner: Inner) -> State {
    match inner {
        Inner::Closed { .. } => State::Closed,
        Inner::Open { .. } => State::Open,
        Inner::HalfOpen { .. } => State::HalfOpen,
    }
}

/// Whole seconds, rounded up, so "retry after 0s" is never said of a circuit that is still open.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The right to make one call. Report its outcome with one of the consuming methods; dropping it
/// unreported (a cancelled or timed out call) gives a half-open probe slot back and counts nothing.
#[derive(Debug)]
#[must_use = "a permit must be settled with success/failure/answered, or dropped to release it"]
pub struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
    settled: bool,
}

impl Permit {
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    pub fn success(mut self) {
        self.settled = true;
        self.breaker.on_success(self.probe);
    }

    pub fn failure(mut self, now: Instant) {
        self.settled = true;
        self.breaker.on_failure(self.probe, now);
    }

    pub fn answered(mut self) {
        self.settled = true;
        self.breaker.on_answer(self.probe);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.release(self.probe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESET: Duration = Duration::from_secs(60);

    fn breaker() -> Arc<Breaker> {
        Arc::new(Breaker::new(
            "autoscaling",
            BreakerConfig {
                failure_threshold: 3,
                reset_timeout: RESET,
                success_threshold: 2,
            },
        ))
    }

    #[derive(Debug, Clone, Copy)]
    enum Event {
        Success,
        Failure,
        Answered,
        Dropped,
        /// Time passes beyond the reset timeout.
        Elapse,
    }

    /// Drives `breaker` into `start`, then applies `event` and returns the resulting state.
    fn step(start: State, event: Event) -> State {
        let b = breaker();
        let mut now = Instant::now();
        match start {
            State::Closed => {}
            State::Open => {
                for _ in 0..3 {
                    b.acquire(now).unwrap().failure(now);
                }
            }
            State::HalfOpen => {
                for _ in 0..3 {
                    b.acquire(now).unwrap().failure(now);
                }
                now += RESET;
            }
        }
        assert_eq!(b.state(now), start, "setup reached {start}");
        match event {
            Event::Elapse => now += RESET,
            other => match b.acquire(now) {
                Ok(permit) => match other {
                    Event::Success => permit.success(),
                    Event::Failure => permit.failure(now),
                    Event::Answered => permit.answered(),
                    Event::Dropped => drop(permit),
                    Event::Elapse => unreachable!(),
                },
                Err(_) => assert_eq!(start, State::Open, "only an open circuit rejects"),
            },
        }
        b.state(now)
    }

    #[tokio::test(start_paused = true)]
    async fn transition_table() {
        use Event::*;
        use State::*;
        let table = [
            // One failure does not open a closed circuit (threshold 3).
            (Closed, Success, Closed),
            (Closed, Failure, Closed),
            (Closed, Answered, Closed),
            (Closed, Dropped, Closed),
            (Closed, Elapse, Closed),
            // Open rejects everything until the reset timeout.
            (Open, Success, Open),
            (Open, Failure, Open),
            (Open, Answered, Open),
            (Open, Dropped, Open),
            (Open, Elapse, HalfOpen),
            // One success of two needed keeps it half-open; a failure reopens.
            (HalfOpen, Success, HalfOpen),
            (HalfOpen, Failure, Open),
            (HalfOpen, Answered, HalfOpen),
            (HalfOpen, Dropped, HalfOpen),
            (HalfOpen, Elapse, HalfOpen),
        ];
        for (start, event, expected) in table {
            assert_eq!(step(start, event), expected, "{start} + {event:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_consecutive_failures_only() {
        let b = breaker();
        let now = Instant::now();
        b.acquire(now).unwrap().failure(now);
        b.acquire(now).unwrap().failure(now);
        b.acquire(now).unwrap().answered(); // a permanent error breaks the run
        b.acquire(now).unwrap().failure(now);
        b.acquire(now).unwrap().failure(now);
        assert_eq!(b.state(now), State::Closed);
        b.acquire(now).unwrap().failure(now);
        assert_eq!(b.state(now), State::Open);
        assert_eq!(b.open_for(now), Some(RESET));
        let rejected = b.acquire(now + Duration::from_millis(1500)).unwrap_err();
        assert_eq!(rejected.retry_after, RESET - Duration::from_millis(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_one_probe_and_closes_after_successes() {
        let b = breaker();
        let mut now = Instant::now();
        for _ in 0..3 {
            b.acquire(now).unwrap().failure(now);
        }
        now += RESET;
        let probe = b.acquire(now).unwrap();
        assert!(probe.is_probe());
        assert!(
            b.acquire(now).is_err(),
            "a second concurrent probe is refused"
        );
        probe.success();
        assert_eq!(b.state(now), State::HalfOpen);
        b.acquire(now).unwrap().success();
        assert_eq!(b.state(now), State::Closed);
        assert_eq!(
            b.take_transitions(),
            vec![(State::Closed, 1), (State::Open, 1), (State::HalfOpen, 1)]
        );
        assert!(b.take_transitions().is_empty(), "counters drain");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_gives_its_slot_back() {
        let b = breaker();
        let mut now = Instant::now();
        for _ in 0..3 {
            b.acquire(now).unwrap().failure(now);
        }
        now += RESET;
        drop(b.acquire(now).unwrap());
        assert!(b.acquire(now).is_ok(), "slot released by the drop guard");
    }

    #[tokio::test(start_paused = true)]
    async fn snapshot_rounds_retry_after_up() {
        let b = breaker();
        let now = Instant::now();
        for _ in 0..3 {
            b.acquire(now).unwrap().failure(now);
        }
        let snap = b.snapshot(now + Duration::from_millis(500));
        assert_eq!(snap.state, State::Open);
        assert_eq!(snap.retry_after_secs, 60);
    }
}
