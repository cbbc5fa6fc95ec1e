//! The cost of the resilience layer itself: `call` on the closed path (over a bare call of the same
//! ready operation) and the rejection of a call while the circuit is open.
//!
//! Run: `cargo bench --bench resilience`

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use etcd_lifecycle_hook::config::Config;
use etcd_lifecycle_hook::resilience::classify::{Class, Classify};
use etcd_lifecycle_hook::resilience::policy::Deadline;
use etcd_lifecycle_hook::resilience::{Dependency, Resilience};
use tokio::time::Instant;

#[derive(Debug)]
struct Unavailable;

impl Classify for Unavailable {
    fn class(&self) -> Class {
        Class::Transient
    }
}

async fn ready_op(n: u64) -> Result<u64, Unavailable> {
    Ok(black_box(n))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime")
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    // One attempt per call, so opening the circuit below takes no backoff sleeps.
    let config = Config {
        retry_max_attempts: 1,
        ..Config::default()
    };
    let layer = Resilience::new(config.resilience());
    let deadline =
        rt.block_on(async { Deadline::after(Duration::from_secs(3600), Duration::from_secs(2)) });

    let mut group = c.benchmark_group("resilience");
    group.bench_function("bare_call", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    black_box(ready_op(i).await.ok());
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("closed_path_call", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    black_box(
                        layer
                            .call(Dependency::Autoscaling, &deadline, || ready_op(i))
                            .await
                            .ok(),
                    );
                }
                start.elapsed()
            })
        })
    });

    // Open the etcd circuit, then measure the rejection.
    rt.block_on(async {
        for _ in 0..config.breaker_failure_threshold {
            let _ = layer
                .call(
                    Dependency::Etcd,
                    &Deadline::after(Duration::from_secs(1), Duration::ZERO),
                    || async { Err::<u64, _>(Unavailable) },
                )
                .await;
        }
    });
    assert!(
        layer.ensure_closed(&[Dependency::Etcd]).is_err(),
        "the etcd circuit is open"
    );
    group.bench_function("open_path_rejection", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    black_box(
                        layer
                            .call(Dependency::Etcd, &deadline, || ready_op(i))
                            .await
                            .is_err(),
                    );
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
