//! Exponential backoff with full jitter.
//!
//! Full jitter (a uniformly random delay between zero and the capped exponential step) spreads the
//! retries of many concurrent invocations instead of synchronising them into waves that hit a
//! throttled API together. The random source is a trait so tests can pin it.

use std::time::Duration;

/// A source of uniformly distributed fractions in `[0, 1)`.
pub trait Jitter: Send + Sync {
    fn fraction(&self) -> f64;
}

/// The production random source: `fastrand`'s thread-local generator, seeded from the OS.
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomJitter;

impl Jitter for RandomJitter {
    fn fraction(&self) -> f64 {
        fastrand::f64()
    }
}

/// A fixed fraction, for deterministic schedules in tests and benches.
#[derive(Debug, Clone, Copy)]
pub struct FixedJitter(pub f64);

impl Jitter for FixedJitter {
    fn fraction(&self) -> f64 {
        self.0.clamp(0.0, 1.0)
    }
}

/// The shape of the schedule: `delay(n) = random(0, min(max, base * 2^n))` for retry `n` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The ceiling of the jittered delay before retry number `retry` (0 = the first retry).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The delay before retry number `retry`, drawn from `jitter`.
    pub fn delay(&self, retry: u32, jitter: &dyn Jitter) -> Duration {
        self.ceiling(retry)
            .mul_f64(jitter.fraction().clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> Backoff {
        Backoff {
            base: Duration::from_millis(200),
            max: Duration::from_millis(5000),
        }
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let ceilings: Vec<u128> = (0..7).map(|n| backoff().ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, vec![200, 400, 800, 1600, 3200, 5000, 5000]);
    }

    #[test]
    fn huge_retry_numbers_saturate_at_the_cap() {
        assert_eq!(backoff().ceiling(1_000), Duration::from_millis(5000));
    }

    #[test]
    fn full_jitter_scales_the_ceiling() {
        assert_eq!(
            backoff().delay(2, &FixedJitter(0.5)),
            Duration::from_millis(400)
        );
        assert_eq!(backoff().delay(2, &FixedJitter(0.0)), Duration::ZERO);
    }

    #[test]
    fn random_jitter_stays_within_the_ceiling() {
        for retry in 0..8 {
            for _ in 0..200 {
                assert!(backoff().delay(retry, &RandomJitter) <= backoff().ceiling(retry));
            }
        }
    }
}
