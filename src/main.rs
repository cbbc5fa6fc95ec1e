//! Start-up only: logging, configuration, breakers created once, then the Lambda runtime loop.
//! Everything that decides lives in the library.
//!
//! The AWS SDK's configuration and clients are built on first use, not here
//! (`aws::on_first_use`): loading them reads and parses the system's root certificates (several
//! milliseconds), which an invocation that makes no AWS call (a test notification, bad input, an
//! open circuit) never needs. They are built once per execution environment all the same.

// The runtime's future nests the handler's, whose AWS calls now nest one more level: its layout
// needs a little more than the default query depth (128) to compute.
#![recursion_limit = "256"]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use etcd_lifecycle_hook::aws::autoscaling::AutoScalingLifecycle;
use etcd_lifecycle_hook::aws::ec2::Ec2Fleet;
use etcd_lifecycle_hook::aws::on_first_use::{self, OnFirstUse};
use etcd_lifecycle_hook::config::Config;
use etcd_lifecycle_hook::etcd::EtcdMembership;
use etcd_lifecycle_hook::handler::{check_reserve, deadline_from_epoch_ms, Handler, HandlerError};
use etcd_lifecycle_hook::metrics::stdout_sink;
use etcd_lifecycle_hook::resilience::Resilience;
use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde_json::Value;
use tokio::sync::OnceCell;
use tracing_subscriber::EnvFilter;

type LambdaHandler =
    Handler<OnFirstUse<Ec2Fleet>, OnFirstUse<AutoScalingLifecycle>, EtcdMembership>;

/// Whether `DEADLINE_RESERVE_MS` fits the function timeout, judged once per execution
/// environment from its first invocation's time (see `handler::check_reserve`).
type ReserveFits = OnceLock<Result<(), HandlerError>>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    init_tracing();
    let config = Arc::new(
        Config::from_env().inspect_err(|e| tracing::error!(error = %e, "bad configuration"))?,
    );
    // One layer per execution environment: the breakers live as long as it does.
    let resilience = Arc::new(Resilience::new(config.resilience()));
    let membership = EtcdMembership::new(&config, Arc::clone(&resilience))
        .inspect_err(|e| tracing::error!(error = %e, "bad etcd TLS configuration"))?;
    let sdk = Arc::new(OnceCell::new());
    let handler = Arc::new(Handler {
        fleet: on_first_use::fleet(&sdk, &resilience),
        lifecycle: on_first_use::lifecycle(&sdk, &resilience, config.lifecycle_hook_names.clone()),
        membership,
        metrics: stdout_sink(),
        function_name: std::env::var("AWS_LAMBDA_FUNCTION_NAME")
            .unwrap_or_else(|_| "etcd-lifecycle-hook".into()),
        resilience,
        config: Arc::clone(&config),
    });
    let reserve_fits: Arc<ReserveFits> = Arc::new(OnceLock::new());
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let (handler, reserve_fits) = (Arc::clone(&handler), Arc::clone(&reserve_fits));
        let reserve = config.deadline_reserve;
        async move { answer(&handler, &reserve_fits, reserve, event).await }
    }))
    .await
}

/// One invocation. A reserve that does not fit the timeout makes every invocation answer that
/// configuration error, after handling it all the same: with no time outside the reserve every
/// flow holds its actions (heartbeats), so none times out while the configuration is fixed.
async fn answer(
    handler: &LambdaHandler,
    reserve_fits: &ReserveFits,
    reserve: Duration,
    event: LambdaEvent<Value>,
) -> Result<Value, Diagnostic> {
    let deadline = deadline_from_epoch_ms(event.context.deadline, reserve);
    // A deadline already past is no timeout to judge by (a local emulator's, such as
    // cargo-lambda watch's 1970 one): the flows refuse work for it themselves.
    let available = deadline
        .at
        .saturating_duration_since(tokio::time::Instant::now());
    let refused = if available.is_zero() {
        None
    } else {
        reserve_fits
            .get_or_init(|| check_reserve(available, reserve))
            .as_ref()
            .err()
            .cloned()
    };
    let answer = handler.handle(&event.payload, deadline).await;
    // No socket stays open while the execution environment is frozen until the next event.
    handler.membership.release_connections();
    let answer = match refused {
        Some(e) => {
            tracing::error!(error = %e, "the deadline reserve does not fit the function timeout: actions held, configuration error answered");
            Err(e)
        }
        None => answer,
    };
    answer.map_err(|e| Diagnostic {
        error_type: e.kind().to_string(),
        error_message: e.to_string(),
    })
}

/// JSON lines on stdout (Lambda's JSON log format); the level from `AWS_LAMBDA_LOG_LEVEL` (set by
/// Lambda's advanced logging controls), else `RUST_LOG`, else `info`.
fn init_tracing() {
    let filter = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .ok()
        .map(|level| level.to_lowercase())
        .and_then(|level| EnvFilter::try_new(level).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .with_span_list(false)
        .flatten_event(true)
        .with_target(false)
        .with_ansi(false)
        .init();
}
