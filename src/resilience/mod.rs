//! The one path every call to Auto Scaling, EC2 and etcd takes: a circuit breaker per dependency
//! inside a jittered, deadline-aware retry.
//!
//! Why one path: retries that stack (ours on top of the SDK's) multiply load on a struggling
//! service, and a retry that sleeps past the Lambda deadline loses the lifecycle action. Here each
//! attempt is one call through the breaker and counts on its own; an open circuit stops the retry
//! at once; no sleep ends inside the deadline reserve.
//!
//! Time comes from tokio's clock (`tokio::time::Instant`), which tests pause and advance; the random
//! source is the injectable [`backoff::Jitter`].

pub mod backoff;
pub mod breaker;
pub mod classify;
pub mod policy;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use self::backoff::{Jitter, RandomJitter};
use self::breaker::{ceil_secs, Breaker, BreakerConfig, Permit, Snapshot, State};
use self::classify::{Class, Classify};
use self::policy::{Deadline, RetryPolicy};

/// The outside services the function depends on; one breaker each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dependency {
    Autoscaling,
    Ec2,
    Etcd,
}

impl Dependency {
    pub const ALL: [Dependency; 3] = [Dependency::Autoscaling, Dependency::Ec2, Dependency::Etcd];

    pub fn as_str(self) -> &'static str {
        match self {
            Dependency::Autoscaling => "autoscaling",
            Dependency::Ec2 => "ec2",
            Dependency::Etcd => "etcd",
        }
    }

    fn index(self) -> usize {
        match self {
            Dependency::Autoscaling => 0,
            Dependency::Ec2 => 1,
            Dependency::Etcd => 2,
        }
    }
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A dependency's circuit is open: no request was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit open for {dependency}; retry after {}s", ceil_secs(*.retry_after))]
pub struct CircuitOpen {
    pub dependency: Dependency,
    pub retry_after: Duration,
}

/// Why a call through the layer failed. Every variant's text starts with what failed, so the
/// top-level error Lambda reports still says it.
#[derive(Debug, thiserror::Error)]
pub enum CallError<E> {
    #[error(transparent)]
    CircuitOpen(#[from] CircuitOpen),
    /// The request was refused for a reason retrying cannot fix.
    #[error("{dependency} refused the request: {source}")]
    Permanent {
        dependency: Dependency,
        #[source]
        source: E,
    },
    /// Transient failures until the attempts or the time budget ran out.
    #[error("{dependency} kept failing after {attempts} attempt(s) (transient: throttling, 5xx, timeout or unreachable): {source}")]
    Exhausted {
        dependency: Dependency,
        attempts: u32,
        #[source]
        source: E,
    },
    /// The call was still in flight when its time budget ended.
    #[error("{dependency} did not answer within the invocation's time budget (deadline minus DEADLINE_RESERVE_MS)")]
    DeadlineReached { dependency: Dependency },
}

impl<E> CallError<E> {
    /// The open circuit behind this error, if that is what it is.
    pub fn circuit_open(&self) -> Option<CircuitOpen> {
        match self {
            CallError::CircuitOpen(open) => Some(*open),
            _ => None,
        }
    }

    /// The dependency's own error, when it answered one.
    pub fn source_error(&self) -> Option<&E> {
        match self {
            CallError::Permanent { source, .. } | CallError::Exhausted { source, .. } => {
                Some(source)
            }
            _ => None,
        }
    }
}

/// Settings of the whole layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResilienceConfig {
    pub retry: RetryPolicy,
    pub breaker: BreakerConfig,
}

/// The breakers and the retry policy of one execution environment. Built once at init and shared
/// by every invocation; a cold start builds a new one, so breakers reset with the environment.
pub struct Resilience {
    retry: RetryPolicy,
    breakers: [Arc<Breaker>; 3],
    jitter: Box<dyn Jitter>,
    retries: AtomicU64,
}

impl fmt::Debug for Resilience {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resilience")
            .field("retry", &self.retry)
            .field("breakers", &self.breakers)
            .finish_non_exhaustive()
    }
}

impl Resilience {
    pub fn new(config: ResilienceConfig) -> Self {
        Self::with_jitter(config, Box::new(RandomJitter))
    }

    pub fn with_jitter(config: ResilienceConfig, jitter: Box<dyn Jitter>) -> Self {
        let breaker = |d: Dependency| Arc::new(Breaker::new(d.as_str(), config.breaker));
        Self {
            retry: RetryPolicy {
                max_attempts: config.retry.max_attempts.max(1),
                ..config.retry
            },
            breakers: Dependency::ALL.map(breaker),
            jitter,
            retries: AtomicU64::new(0),
        }
    }

    pub fn breaker(&self, dependency: Dependency) -> &Arc<Breaker> {
        &self.breakers[dependency.index()]
    }

    /// Fails with the first open circuit among `dependencies`, so a flow can stop before its
    /// first call instead of half-way through.
    pub fn ensure_closed(&self, dependencies: &[Dependency]) -> Result<(), CircuitOpen> {
        let now = Instant::now();
        for &dependency in dependencies {
            if let Some(retry_after) = self.breaker(dependency).open_for(now) {
                return Err(CircuitOpen {
                    dependency,
                    retry_after,
                });
            }
        }
        Ok(())
    }

    /// Every breaker's state, for logs and the invocation summary.
    pub fn snapshots(&self) -> Vec<Snapshot> {
        let now = Instant::now();
        self.breakers.iter().map(|b| b.snapshot(now)).collect()
    }

    /// Breaker transitions since the last call, as (dependency, state entered, count).
    pub fn take_transitions(&self) -> Vec<(Dependency, State, u64)> {
        Dependency::ALL
            .iter()
            .flat_map(|&d| {
                self.breaker(d)
                    .take_transitions()
                    .into_iter()
                    .map(move |(s, n)| (d, s, n))
            })
            .collect()
    }

    /// Retries made since the last call.
    pub fn take_retries(&self) -> u64 {
        self.retries.swap(0, Ordering::Relaxed)
    }

    /// Calls `op` through `dependency`'s breaker, retrying transient failures with jittered
    /// backoff while attempts and the deadline allow. An open circuit fails at once, without
    /// calling `op`, and stops a retry in progress.
    pub async fn call<T, E, F, Fut>(
        &self,
        dependency: Dependency,
        deadline: &Deadline,
        mut op: F,
    ) -> Result<T, CallError<E>>
    where
        E: Classify,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let breaker = self.breaker(dependency);
        let mut attempts = 0u32;
        loop {
            let permit = breaker
                .acquire(Instant::now())
                .map_err(|rejected| CircuitOpen {
                    dependency,
                    retry_after: rejected.retry_after,
                })?;
            attempts += 1;
            // Work stops where the reserve begins, so the reserve is left whole for the heartbeat
            // or completion (which run under `Deadline::finishing`). The permit is dropped
            // unsettled if the deadline cuts the call: that neither counts against the dependency
            // nor keeps a half-open probe slot.
            let outcome = match tokio::time::timeout_at(deadline.work_until(), op()).await {
                Ok(outcome) => outcome,
                Err(_) => return Err(CallError::DeadlineReached { dependency }),
            };
            let error = match outcome {
                Ok(value) => {
                    permit.success();
                    return Ok(value);
                }
                Err(error) => error,
            };
            let delay = self.retry_delay(dependency, deadline, permit, attempts, error)?;
            self.note_retry(dependency, attempts, delay);
            tokio::time::sleep(delay).await;
        }
    }

    /// Settles a failed attempt's permit and decides whether a retry can still help: a permanent
    /// error, a circuit this failure opened, or no attempt or time left all end the call here,
    /// so the only way back into the loop is a delay that fits the deadline.
    fn retry_delay<E: Classify>(
        &self,
        dependency: Dependency,
        deadline: &Deadline,
        permit: Permit,
        attempts: u32,
        error: E,
    ) -> Result<Duration, CallError<E>> {
        if error.class() == Class::Permanent {
            permit.answered();
            return Err(CallError::Permanent {
                dependency,
                source: error,
            });
        }
        let now = Instant::now();
        permit.failure(now);
        // Stop at once rather than retry if this failure opened the circuit.
        if let Some(retry_after) = self.breaker(dependency).open_for(now) {
            return Err(CallError::CircuitOpen(CircuitOpen {
                dependency,
                retry_after,
            }));
        }
        self.retry
            .next_delay(attempts, now, deadline, self.jitter.as_ref())
            .ok_or(CallError::Exhausted {
                dependency,
                attempts,
                source: error,
            })
    }

    /// Each retry is logged and counted for the invocation's metrics: a run of them shows a
    /// struggling dependency before its circuit opens.
    fn note_retry(&self, dependency: Dependency, attempts: u32, delay: Duration) {
        tracing::debug!(
            dependency = dependency.as_str(),
            attempt = attempts,
            delay_ms = delay.as_millis() as u64,
            "transient failure; retrying"
        );
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// One attempt whose failure is information about the target, not about the dependency (a
    /// member's status during the quorum check): never retried and never counted by the breaker.
    /// It still makes no request while the dependency's circuit is open.
    pub async fn probe<T, E, Fut>(
        &self,
        dependency: Dependency,
        deadline: &Deadline,
        op: Fut,
    ) -> Result<T, CallError<E>>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        self.ensure_closed(&[dependency])?;
        match tokio::time::timeout_at(deadline.work_until(), op).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(CallError::Permanent { dependency, source }),
            Err(_) => Err(CallError::DeadlineReached { dependency }),
        }
    }
}

#[cfg(test)]
mod tests;
