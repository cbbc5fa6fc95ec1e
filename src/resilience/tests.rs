use std::sync::atomic::AtomicU32;
use std::sync::Mutex;

use super::backoff::{Backoff, FixedJitter};
use super::*;

/// A failure whose class the test chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fail(Class);

impl Classify for Fail {
    fn class(&self) -> Class {
        self.0
    }
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} failure", self.0)
    }
}

const T: Fail = Fail(Class::Transient);
const P: Fail = Fail(Class::Permanent);

fn layer(max_attempts: u32, failure_threshold: u32) -> Resilience {
    Resilience::with_jitter(
        ResilienceConfig {
            retry: RetryPolicy {
                max_attempts,
                backoff: Backoff {
                    base: Duration::from_millis(200),
                    max: Duration::from_millis(5000),
                },
            },
            breaker: BreakerConfig {
                failure_threshold,
                reset_timeout: Duration::from_secs(60),
                success_threshold: 2,
            },
        },
        Box::new(FixedJitter(1.0)),
    )
}

fn minute() -> Deadline {
    Deadline::after(Duration::from_secs(60), Duration::from_secs(2))
}

/// Calls through `layer` with scripted outcomes, recording when each attempt started.
async fn scripted(
    layer: &Resilience,
    deadline: &Deadline,
    outcomes: &[Result<u32, Fail>],
) -> (Result<u32, CallError<Fail>>, Vec<Duration>) {
    let start = Instant::now();
    let calls = Mutex::new(Vec::new());
    let next = AtomicU32::new(0);
    let result = layer
        .call(Dependency::Autoscaling, deadline, || {
            calls.lock().unwrap().push(start.elapsed());
            let i = next.fetch_add(1, Ordering::SeqCst) as usize;
            let outcome = outcomes[i.min(outcomes.len() - 1)];
            async move { outcome }
        })
        .await;
    (result, calls.into_inner().unwrap())
}

fn ms(v: &[u64]) -> Vec<Duration> {
    v.iter().map(|&m| Duration::from_millis(m)).collect()
}

#[tokio::test(start_paused = true)]
async fn transient_failure_then_success_is_retried_after_backoff() {
    let layer = layer(4, 5);
    let (result, calls) = scripted(&layer, &minute(), &[Err(T), Err(T), Ok(7)]).await;
    assert_eq!(result.unwrap(), 7);
    assert_eq!(calls, ms(&[0, 200, 600]));
    assert_eq!(layer.take_retries(), 2);
}

#[tokio::test(start_paused = true)]
async fn permanent_failure_is_not_retried() {
    let layer = layer(4, 5);
    let (result, calls) = scripted(&layer, &minute(), &[Err(P), Ok(7)]).await;
    assert!(matches!(result, Err(CallError::Permanent { .. })));
    assert_eq!(calls.len(), 1);
    assert_eq!(
        layer
            .breaker(Dependency::Autoscaling)
            .snapshot(Instant::now())
            .consecutive_failures,
        0
    );
}

#[tokio::test(start_paused = true)]
async fn attempts_are_bounded() {
    let layer = layer(3, 10);
    let (result, calls) = scripted(&layer, &minute(), &[Err(T)]).await;
    match result {
        Err(CallError::Exhausted { attempts, .. }) => assert_eq!(attempts, 3),
        other => panic!("expected exhaustion, got {other:?}"),
    }
    assert_eq!(calls, ms(&[0, 200, 600]));
}

#[tokio::test(start_paused = true)]
async fn no_retry_sleeps_into_the_deadline_reserve() {
    let layer = layer(10, 100);
    // 3 s left with a 2 s reserve: sleeps of 200 + 400 fit in the 1 s budget, 800 more does not.
    let deadline = Deadline::after(Duration::from_secs(3), Duration::from_secs(2));
    let (result, calls) = scripted(&layer, &deadline, &[Err(T)]).await;
    assert!(matches!(
        result,
        Err(CallError::Exhausted { attempts: 3, .. })
    ));
    assert_eq!(calls, ms(&[0, 200, 600]));
    assert!(Instant::now() <= deadline.work_until());
}

#[tokio::test(start_paused = true)]
async fn circuit_opens_and_then_fails_fast_without_calling() {
    let layer = layer(1, 5);
    for _ in 0..5 {
        let (result, _) = scripted(&layer, &minute(), &[Err(T)]).await;
        assert!(result.is_err());
    }
    let (result, calls) = scripted(&layer, &minute(), &[Ok(1)]).await;
    let err = result.unwrap_err();
    assert!(calls.is_empty(), "no call while open");
    assert_eq!(
        err.to_string(),
        "circuit open for autoscaling; retry after 60s"
    );
    assert!(layer.ensure_closed(&[Dependency::Ec2]).is_ok());
    assert_eq!(
        layer
            .ensure_closed(&[Dependency::Ec2, Dependency::Autoscaling])
            .unwrap_err()
            .dependency,
        Dependency::Autoscaling
    );
}

#[tokio::test(start_paused = true)]
async fn the_retry_stops_when_its_failure_opens_the_circuit() {
    let layer = layer(10, 3);
    let (result, calls) = scripted(&layer, &minute(), &[Err(T)]).await;
    assert!(result.unwrap_err().circuit_open().is_some());
    assert_eq!(calls.len(), 3, "the third failure opened the circuit");
}

#[tokio::test(start_paused = true)]
async fn after_the_reset_timeout_probes_close_the_circuit() {
    let layer = layer(1, 2);
    for _ in 0..2 {
        let _ = scripted(&layer, &minute(), &[Err(T)]).await;
    }
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(scripted(&layer, &minute(), &[Ok(1)]).await.0.unwrap(), 1);
    assert_eq!(scripted(&layer, &minute(), &[Ok(2)]).await.0.unwrap(), 2);
    let states: Vec<State> = layer.snapshots().iter().map(|s| s.state).collect();
    assert_eq!(states, vec![State::Closed; 3]);
    let transitions = layer.take_transitions();
    assert!(transitions.contains(&(Dependency::Autoscaling, State::Open, 1)));
    assert!(transitions.contains(&(Dependency::Autoscaling, State::HalfOpen, 1)));
    assert!(transitions.contains(&(Dependency::Autoscaling, State::Closed, 1)));
}

#[tokio::test(start_paused = true)]
async fn a_call_cut_by_the_deadline_is_not_counted() {
    let layer = layer(4, 1);
    let deadline = Deadline::after(Duration::from_secs(1), Duration::ZERO);
    let result: Result<(), CallError<Fail>> = layer
        .call(Dependency::Etcd, &deadline, || async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        })
        .await;
    assert!(matches!(result, Err(CallError::DeadlineReached { .. })));
    assert_eq!(
        layer.breaker(Dependency::Etcd).state(Instant::now()),
        State::Closed
    );
}

#[tokio::test(start_paused = true)]
async fn probes_are_never_counted() {
    let layer = layer(4, 1);
    for _ in 0..5 {
        let r: Result<(), CallError<Fail>> = layer
            .probe(Dependency::Etcd, &minute(), async { Err(T) })
            .await;
        assert!(r.is_err());
    }
    assert_eq!(
        layer.breaker(Dependency::Etcd).state(Instant::now()),
        State::Closed
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// Start a call that will end with the given outcome (true = success) when settled.
        Begin(bool),
        /// Settle the oldest in-flight call.
        Settle,
        /// Drop the oldest in-flight call unsettled (cancelled).
        Cancel,
        /// Let time pass.
        Wait(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            any::<bool>().prop_map(Step::Begin),
            Just(Step::Settle),
            Just(Step::Cancel),
            (0u64..90).prop_map(Step::Wait),
        ]
    }

    proptest! {
        /// Whatever the interleaving of outcomes, cancellations and time, a half-open breaker
        /// never has two probes out, and an open one never admits a call.
        #[test]
        fn never_two_probes_never_a_call_while_open(steps in prop::collection::vec(step(), 1..200)) {
            let b = Arc::new(Breaker::new("etcd", BreakerConfig {
                failure_threshold: 3,
                reset_timeout: Duration::from_secs(30),
                success_threshold: 2,
            }));
            let mut now = Instant::now();
            let mut in_flight: std::collections::VecDeque<(breaker::Permit, bool)> = Default::default();
            for step in steps {
                match step {
                    Step::Begin(ok) => {
                        let before = b.state(now);
                        match b.acquire(now) {
                            Ok(permit) => {
                                prop_assert_ne!(before, State::Open, "admitted while open");
                                if permit.is_probe() {
                                    let probes = in_flight.iter().filter(|(p, _)| p.is_probe()).count();
                                    prop_assert_eq!(probes, 0, "second concurrent probe");
                                }
                                in_flight.push_back((permit, ok));
                            }
                            Err(_) => prop_assert_ne!(before, State::Closed, "closed circuit rejected"),
                        }
                    }
                    Step::Settle => if let Some((permit, ok)) = in_flight.pop_front() {
                        if ok { permit.success() } else { permit.failure(now) }
                    },
                    Step::Cancel => { in_flight.pop_front(); }
                    Step::Wait(secs) => now += Duration::from_secs(secs),
                }
            }
        }
    }
}

mod concurrency {
    use super::*;
    use std::sync::Barrier;

    fn open_breaker() -> (Arc<Breaker>, Instant) {
        let b = Arc::new(Breaker::new(
            "ec2",
            BreakerConfig {
                failure_threshold: 1,
                reset_timeout: Duration::from_secs(60),
                success_threshold: 1,
            },
        ));
        let now = Instant::now();
        b.acquire(now).unwrap().failure(now);
        (b, now + Duration::from_secs(60))
    }

    /// Sixteen threads race for the half-open probe: exactly one wins.
    #[test]
    fn threads_racing_for_the_half_open_probe_get_one_permit() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        for _ in 0..50 {
            let (b, later) = open_breaker();
            let barrier = Arc::new(Barrier::new(16));
            let permits: Vec<Option<breaker::Permit>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..16)
                    .map(|_| {
                        let (b, barrier) = (Arc::clone(&b), Arc::clone(&barrier));
                        s.spawn(move || {
                            barrier.wait();
                            b.acquire(later).ok()
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert_eq!(permits.iter().flatten().count(), 1);
            assert!(permits.iter().flatten().all(|p| p.is_probe()));
        }
    }

    /// Fifty concurrent invocations share the layer: while the one probe is in flight the others
    /// are refused without calling, and the probe's success is what closes the circuit.
    #[tokio::test(start_paused = true)]
    async fn concurrent_calls_send_one_probe() {
        let layer = Arc::new(layer(1, 1));
        let _ = scripted(&layer, &minute(), &[Err(T)]).await;
        tokio::time::advance(Duration::from_secs(61)).await;
        let calls = Arc::new(AtomicU32::new(0));
        let release = Arc::new(tokio::sync::Notify::new());
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (layer, calls, release) =
                    (Arc::clone(&layer), Arc::clone(&calls), Arc::clone(&release));
                tokio::spawn(async move {
                    layer
                        .call(Dependency::Autoscaling, &minute(), || {
                            calls.fetch_add(1, Ordering::SeqCst);
                            let release = Arc::clone(&release);
                            async move {
                                release.notified().await;
                                Ok::<_, Fail>(())
                            }
                        })
                        .await
                })
            })
            .collect();
        tokio::task::yield_now().await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        release.notify_waiters();
        let mut ok = 0;
        let mut refused = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(()) => ok += 1,
                Err(e) => {
                    assert!(e.circuit_open().is_some(), "{e}");
                    refused += 1;
                }
            }
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one probe reached the dependency"
        );
        assert_eq!((ok, refused), (1, 49));
    }
}
